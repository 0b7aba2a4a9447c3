#!/usr/bin/env bash
# BENCHMARKS.md (e''): what a filter's retry pushback saves at the gateway. Two qr-code
# replicas of unequal capacity on the same cores (`--workers 1` and the default, two
# slots per core), two gateways on them that differ only in `outlier.max_rest` (0s, the
# default: pushbacks ignored; 1s: honoured), the same open-loop load of images through each
# (`bench images --chain`, RATE calls a second, each with TIMEOUT), alternating rounds.
# Each call's outcome: APPROVE (qr-code answered), REVIEW filter_error (it did not, even
# after the retry), or no answer in time; and the calls each replica refused.
#   scripts/bench-pushback.sh [rounds] [seconds]
# Environment: BALANCE (round_robin; p2c, p2c_in_flight), RATE (300), TIMEOUT (300ms),
# PHOTO (default: chelsea.png of the samples), PIN (1: replicas on the last core, the
# rest on the others), SEKISHO_BIN (a build to run instead of building this tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-8}
balance=${BALANCE:-round_robin} rate=${RATE:-300} timeout=${TIMEOUT:-300ms}
. scripts/bench-lib.sh
photo=${PHOTO:-}
if [ -z "$photo" ]; then
  python3 filters/images/reference/reference.py samples "$tmp/photos" > /dev/null
  photo=$tmp/photos/chelsea.png
fi
# PIN=1: the replicas on the last core, the gateways and the load generator on the
# others, so that the searches cannot starve the gateways whose choices are measured.
pin_rest=()
if [ "${PIN:-0}" = 1 ]; then
  last=$(($(nproc) - 1))
  pin=(taskset -c "$last") pin_rest=(taskset -c "0-$((last - 1))")
fi
start small.log filter qr-code --listen 127.0.0.1:19071 --metrics-listen 127.0.0.1:19081 --workers 1
start large.log filter qr-code --listen 127.0.0.1:19072 --metrics-listen 127.0.0.1:19082
pin=("${pin_rest[@]}")
for rest in 0s 1s; do
  port=$([ "$rest" = 0s ] && echo 18191 || echo 18192)
  cat > "$tmp/gw-$rest.yaml" <<YAML
listen: 127.0.0.1:$port
chains_dir: bench/pushback
balance: $balance
outlier: {max_rest: $rest}
filters:
  qr-code: {endpoints: [http://127.0.0.1:19071, http://127.0.0.1:19072]}
YAML
  start "gw-$rest.log" gateway --config "$tmp/gw-$rest.yaml"
done
refused() { # metrics port -> calls the replica refused so far
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^sekisho_filter_(deadline_refused|queue_full)_total/ {s += $NF}
    /^sekisho_filter_abandoned_total/ {s += $NF} END {print s + 0}'
}
: > "$tmp/rows"
for r in $(seq "$rounds"); do
  for rest in 0s 1s; do
    port=$([ "$rest" = 0s ] && echo 18191 || echo 18192)
    a0=$(refused 19081) b0=$(refused 19082)
    "${pin[@]}" "$bin" bench images --filter "http://127.0.0.1:$port" --chain bench-qr-replicas \
      --rate "$rate" --timeout "$timeout" --duration "${secs}s" --warmup 1s --json "$photo" \
      2> /dev/null | tail -1 > "$tmp/r.json"
    a1=$(refused 19081) b1=$(refused 19082)
    echo "$rest $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$tmp/r.json") $((a1 - a0)) $((b1 - b0))" >> "$tmp/rows"
  done
done
python3 - "$tmp/rows" "$secs" "$balance" "$rate" "$timeout" <<'PY'
import json, sys
secs = float(sys.argv[2])
print(f"qr-code x2 (--workers 1, default), {sys.argv[3]}, {sys.argv[4]} images/s, deadline {sys.argv[5]}, {secs:.0f} s rounds (+1 s warm-up)")
rows = {"0s": [], "1s": []}
for line in open(sys.argv[1]):
    rest, rest_line = line.split(" ", 1)
    j, small, large = rest_line.rsplit(" ", 2)
    r = json.loads(j)
    by = {(o["decision"], o["reason"]): o["count"] for o in r["outcomes"]}
    approve = sum(n for (d, _), n in by.items() if d == "APPROVE")
    review = sum(n for (d, why), n in by.items() if d == "REVIEW")
    rows[rest].append((approve / secs, review / secs, r["errors"] / secs, int(small) / (secs + 1), int(large) / (secs + 1)))
for rest, name in [("0s", "pushbacks ignored (max_rest 0s)"), ("1s", "pushbacks honoured (max_rest 1s)")]:
    xs = rows[rest]
    mean = lambda i: sum(x[i] for x in xs) / len(xs)
    print(f"{name:34} answered {mean(0):6.1f}/s {[round(x[0], 1) for x in xs]}  REVIEW {mean(1):5.1f}/s  "
          f"no answer in time {mean(2):5.1f}/s  refused by small {mean(3):5.1f}/s, large {mean(4):5.1f}/s")
print(f"answered, honoured / ignored: {sum(x[0] for x in rows['1s']) / max(1e-9, sum(x[0] for x in rows['0s'])):.2f}x")
PY
