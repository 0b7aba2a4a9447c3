#!/usr/bin/env bash
# What a freshly started ng-image filter's first calls cost, by `--warm-up`: the time
# from starting the process to its listening, then one call alone and one burst of
# --max-batch calls at once, each first right after the start and then again (warm).
# Times are the caller's (`sekisho bench images --requests`) and the model's (the
# filter's `sekisho_filter_inference_seconds`, per batch). BENCHMARKS.md (d) quotes it.
#
#   scripts/bench-cold.sh [provider] [rounds]
#
# Environment: SEKISHO_BIN (default target/release/sekisho), OLD_BIN (a build from
# before the model check and warm-up, compared as `none`; optional), MODEL (default:
# the cache's open-nsfw.onnx), PHOTO (default: chelsea.png of the sample photos),
# MAX_BATCH (8), WORKERS (1), MODES (default: `check all`; a mode `all:heuristic` also
# passes `--cudnn-conv-search heuristic`, which matters on CUDA only, and one ending in
# `/SIZES` passes `--batch-sizes SIZES`: `all/every`, `all:heuristic/1,2,4,8`).
set -euo pipefail
provider=${1:-cpu}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
bin=${SEKISHO_BIN:-$here/../target/release/sekisho}
model=${MODEL:-${SEKISHO_CACHE:-$here/../.sekisho/cache}/models/open-nsfw.onnx}
batch=${MAX_BATCH:-8}
workers=${WORKERS:-1}
modes=${MODES:-check all}
[ -n "${OLD_BIN:-}" ] && modes="none $modes"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
export SEKISHO_LOG=warn,ort=error RUST_BACKTRACE=0
photo=${PHOTO:-}
if [ -z "$photo" ]; then
  python3 "$here/../filters/images/reference/reference.py" samples "$tmp/photos" > /dev/null
  photo=$tmp/photos/chelsea.png
fi
onmissing=refuse
[ "$provider" = cpu ] && onmissing=fallback

# Sum and count of the model-time histogram, from the filter's /metrics.
model_time() {
  python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
s = c = 0.0
for line in text.splitlines():
    if line.startswith("sekisho_filter_inference_seconds_sum{"):
        s += float(line.rsplit(" ", 1)[1])
    elif line.startswith("sekisho_filter_inference_seconds_count{"):
        c += float(line.rsplit(" ", 1)[1])
print(s, c)
PY
}
# One step: N calls, N at once; prints "caller-max-ms model-ms-per-batch batches".
step() {
  local n=$1 before after
  before=$(model_time 127.0.0.1:51301)
  "$bin" bench images --filter http://127.0.0.1:51300 --concurrency "$n" --requests "$n" \
    --json "$photo" | tail -1 > "$tmp/step.json"
  after=$(model_time 127.0.0.1:51301)
  python3 - "$tmp/step.json" "$before" "$after" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"] == 0, r["first_error"]
(s0, c0), (s1, c1) = ([float(x) for x in a.split()] for a in sys.argv[2:4])
print(f"{r['max_us'] / 1e3:.1f} {(s1 - s0) / max(c1 - c0, 1) * 1e3:.1f} {int(c1 - c0)}")
PY
}

: > "$tmp/rows"
for r in $(seq "$rounds"); do
  for mode in $modes; do
    if [ "$mode" = none ]; then
      cmd=("$OLD_BIN" filter ng-image)
    else
      base=${mode%%/*}
      cmd=("$bin" filter ng-image --warm-up "${base%%:*}")
      [[ $base == *:* ]] && cmd+=(--cudnn-conv-search "${base#*:}")
      [[ $mode == */* ]] && cmd+=(--batch-sizes "${mode#*/}")
    fi
    t0=$(date +%s%N)
    "${cmd[@]}" --listen 127.0.0.1:51300 --metrics-listen 127.0.0.1:51301 --model "$model" \
      --provider "$provider" --on-missing-cuda $onmissing --workers "$workers" \
      --intra-threads 1 --max-batch "$batch" --max-wait 50ms > "$tmp/filter.log" 2>&1 &
    pid=$!
    # Up to 10 minutes: on CUDA, `all` runs cuDNN's search for every batch size (untimed).
    for _ in $(seq 12000); do
      grep -q "listening on" "$tmp/filter.log" && break
      kill -0 $pid 2>/dev/null || break
      sleep 0.05
    done
    grep -q "listening on" "$tmp/filter.log" || { cat "$tmp/filter.log"; exit 1; }
    start_ms=$((($(date +%s%N) - t0) / 1000000))
    echo "$mode $start_ms $(step 1) $(step "$batch") $(step 1) $(step "$batch")" >> "$tmp/rows"
    kill $pid; wait $pid 2>/dev/null || true
  done
done
python3 - "$tmp/rows" "$provider" "$batch" "$workers" <<'PY'
import sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    mode, *v = line.split()
    rows[mode].append([float(x) for x in v])
provider, batch, workers = sys.argv[2:5]
print(f"ng-image on {provider}, {workers} worker(s), max-batch {batch}: medians of "
      f"{len(next(iter(rows.values())))} starts; ms, caller's time (model's per batch)")
w = max(8, *(len(m) for m in rows))
print(f"{'warm-up':<{w}} {'start':>7} | {'1st call':>17} {'again':>17} | "
      f"{'1st ' + batch + ' at once':>22} {'again':>22}")
med = lambda xs: sorted(xs)[len(xs) // 2]
for mode, vs in rows.items():
    c = [med([v[i] for v in vs]) for i in range(13)]
    cell = lambda i: f"{c[i]:7.1f} ({c[i + 1]:6.1f})"
    burst = lambda i: f"{c[i]:7.1f} ({c[i + 1]:6.1f} ×{c[i + 2]:.0f})"
    print(f"{mode:<{w}} {c[0]:7.0f} | {cell(1):>17} {cell(7):>17} | {burst(4):>22} {burst(10):>22}")
PY
