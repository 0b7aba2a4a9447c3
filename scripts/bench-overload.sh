#!/usr/bin/env bash
# An image filter under more load than it can serve, its callers giving each call a
# deadline: calls answered in time per second, for two builds side by side in
# alternating rounds (BENCHMARKS.md (d) quotes it). A caller whose deadline passes goes
# away; a filter that still runs its queued item spends its cores on answers nobody
# reads, and every later item waits behind those.
#   scripts/bench-overload.sh OLD_BINARY NEW_BINARY [rounds]
# Environment: FILTER (ng-image; face-detect, qr-code), RATE (calls started a second,
# whatever the answers: callers arriving on their own, 120; RATE=closed for CONCURRENCY (64) calls in flight,
# each sent when the last ended), TIMEOUT (each call's deadline, 300ms), SECS per round
# (10), PHOTO (default: chelsea.png of the samples), PIN (1: the filter on the last core,
# the load generator on the others, so that they do not share cores), POISSON (1: calls
# started at random at RATE, the same sequence each round, not evenly spaced), MODEL
# (the filter's --model), MAX_BATCH (its --max-batch).
# The filter runs `--workers 2 --intra-threads 1`, as in scripts/bench-images.sh (qr-code:
# its default slots, two per core); the load generator is NEW_BINARY's `bench images --timeout` on
# both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,17p "$0" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-3}
filter=${FILTER:-ng-image} c=${CONCURRENCY:-64} rate=${RATE:-120} timeout=${TIMEOUT:-300ms} secs=${SECS:-10}
export SEKISHO_LOG=warn,ort=error RUST_BACKTRACE=0
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
photo=${PHOTO:-}
pin_filter=() pin_load=()
if [ "${PIN:-0}" = 1 ]; then
  last=$(($(nproc) - 1))
  pin_filter=(taskset -c "$last") pin_load=(taskset -c "0-$((last - 1))")
fi
if [ -z "$photo" ]; then
  python3 filters/images/reference/reference.py samples "$tmp/photos" > /dev/null
  photo=$tmp/photos/chelsea.png
fi

one() { # binary -> "answered-in-time/s late/s abandoned"
  local bin=$1
  local layout=(--workers 2 --intra-threads 1)
  [ "$filter" = qr-code ] && layout=()
  [ -n "${MODEL:-}" ] && layout+=(--model "$MODEL")
  [ -n "${MAX_BATCH:-}" ] && layout+=(--max-batch "$MAX_BATCH")
  "${pin_filter[@]}" "$bin" filter "$filter" --listen 127.0.0.1:51097 --metrics-listen 127.0.0.1:51098 \
    "${layout[@]}" > "$tmp/filter.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$tmp/filter.log" && break; sleep 0.2; done
  local pace=(--rate "$rate")
  [ "$rate" = closed ] && pace=(--concurrency "$c")
  [ "${POISSON:-0}" = 1 ] && pace+=(--poisson)
  "${pin_load[@]}" "$new" bench images --filter http://127.0.0.1:51097 "${pace[@]}" --timeout "$timeout" \
    --duration "${secs}s" --warmup 2s --json "$photo" 2> /dev/null | tail -1 > "$tmp/r.json"
  local abandoned
  abandoned=$(curl -s http://127.0.0.1:51098/metrics \
    | awk '/^sekisho_filter_abandoned_total/ {s += $NF} END {print s + 0}')
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$tmp/r.json" "$secs" "$abandoned" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
secs = float(sys.argv[2])
print(f"{r['requests_per_s']:.1f} {r['errors'] / secs:.1f} {sys.argv[3]} {r['first_error'] or '-'}")
PY
}

: > "$tmp/rows"
for r in $(seq "$rounds"); do
  echo "old $(one "$old")" >> "$tmp/rows"
  echo "new $(one "$new")" >> "$tmp/rows"
done
how="$rate calls started a second"
[ "${POISSON:-0}" = 1 ] && how="$how, at random"
[ "$rate" = closed ] && how="$c calls in flight"
python3 - "$tmp/rows" "$filter" "$c" "$timeout" "$secs" "$how" <<'PY'
import sys
rows = {"old": [], "new": []}
for line in open(sys.argv[1]):
    side, ok, late, abandoned, *err = line.split(maxsplit=4)
    rows[side].append((float(ok), float(late), abandoned, " ".join(err)))
print(f"{sys.argv[2]}, {sys.argv[6]}, each call's deadline {sys.argv[4]}, "
      f"{sys.argv[5]} s rounds (incl. 2 s warm-up: abandoned counts both)")
for side, vs in rows.items():
    ok = [v[0] for v in vs]
    print(f"{side}: answered in time {sum(ok) / len(ok):.1f}/s {ok}; not answered in time (refused, expired or late) "
          f"{[v[1] for v in vs]}/s; abandoned unrun {[v[2] for v in vs]}; first error {vs[0][3]}")
new_ok = sum(v[0] for v in rows["new"]) / len(rows["new"])
old_ok = sum(v[0] for v in rows["old"]) / len(rows["old"])
print(f"new / old: {new_ok / old_ok:.2f}x" if old_ok else "old answered none in time")
PY
