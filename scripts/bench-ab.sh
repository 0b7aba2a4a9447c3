#!/usr/bin/env bash
# Two builds of `sekisho` side by side on one image filter, alternating rounds so that
# both see the same machine (BENCHMARKS.md (d) quotes its figures as "alternating the
# binaries"):
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY FILTER PHOTO...
# Keep a build with `cp target/release/sekisho /tmp/sekisho-old` before changing the
# code. Environment:
#   MODE=rate     (default) images/s through gRPC, CONCURRENCY in flight (8), the filter
#                 with `--workers 2 --intra-threads 1` as in scripts/bench-images.sh;
#   MODE=outside  the time per image outside the model, from the filter's own metrics
#                 (request − inference − queue wait), 1 in flight, one worker;
#   ROUNDS (4), SECS per round (8), MODEL (the filter's --model; empty: its default).
# The load generator is NEW_BINARY's `bench images` on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n 2,14p "$0" >&2; exit 2; }
old=$1 new=$2 filter=$3
shift 3
mode=${MODE:-rate} rounds=${ROUNDS:-4} secs=${SECS:-8} c=${CONCURRENCY:-8}
export SEKISHO_LOG=warn,ort=error RUST_BACKTRACE=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

one() { # binary photo... -> one figure
  local bin=$1 workers=2 inflight=$c
  shift
  [ "$mode" = outside ] && workers=1 inflight=1
  "$bin" filter "$filter" --listen 127.0.0.1:51087 --metrics-listen 127.0.0.1:51088 \
    --workers $workers --intra-threads 1 ${MODEL:+--model "$MODEL"} > "$log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.2; done
  local rate
  rate=$("$new" bench images --filter http://127.0.0.1:51087 --concurrency $inflight \
    --duration "${secs}s" --warmup 2s --json "$@" | tail -1 \
    | python3 -c 'import json, sys; d = json.load(sys.stdin); assert d["errors"] == 0, d["first_error"]; print(round(d["requests_per_s"], 1))')
  if [ "$mode" = outside ]; then
    curl -s http://127.0.0.1:51088/metrics | python3 -c '
import re, sys
v = {}
for l in sys.stdin:
    m = re.match(r"sekisho_filter_(request_duration|inference|queue_wait)_seconds_(sum|count)\{[^}]*\} (\S+)", l)
    if m:
        v[m.group(1) + "_" + m.group(2)] = float(m.group(3))
n = v["request_duration_count"]
outside = (v["request_duration_sum"] - v["queue_wait_sum"]) / n - v["inference_sum"] / v["inference_count"]
print(round(outside * 1e3, 2))'
  else
    echo "$rate"
  fi
  kill $pid
  wait $pid 2>/dev/null || true
}

a=() b=()
for r in $(seq "$rounds"); do
  a+=("$(one "$old" "$@")")
  b+=("$(one "$new" "$@")")
  echo "round $r: old ${a[-1]}  new ${b[-1]}"
done
python3 - "$mode" "${a[*]}" "${b[*]}" <<'PY'
import sys
mode, a, b = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ma, mb = sum(a) / len(a), sum(b) / len(b)
unit = "ms per image outside the model" if mode == "outside" else "images/s"
print(f"old {ma:.1f} {a}  new {mb:.1f} {b}  ({unit})  new/old {mb / ma:.3f}")
PY
