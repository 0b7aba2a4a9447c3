#!/usr/bin/env bash
# BENCHMARKS.md (j): per-caller limits on, never reached, next to off. Two release
# gateways on one noop filter and the 1-stage chain bench-1x1; one without `callers:`,
# one with limits so high that every request takes a place and a token and none is shed.
# Alternating rounds (`sekisho bench compare`) with no caller named (every request is
# `anonymous`'s: one bucket, one semaphore), then spread over 1,000 callers (all of them
# tracked) and over 20,000 (twice `max_callers`: the table stays full, so idle callers
# are swept every 100 ms and new names share the overflow state meanwhile).
#   scripts/bench-callers.sh [seconds-per-run] [rounds] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
conc=${3:-32}
. scripts/bench-lib.sh
start f.log filter noop --listen 127.0.0.1:19071
for mode in off on; do
  port=$([ $mode = off ] && echo 18191 || echo 18192)
  {
    echo "listen: 127.0.0.1:$port"
    echo "chains_dir: bench/chains"
    echo "filters: {noop: {endpoints: [http://127.0.0.1:19071]}}"
    if [ $mode = on ]; then
      echo "callers: {default: {max_in_flight: 100000, rate: 1000000000}, max_callers: 10000}"
    fi
  } > "$tmp/$mode.yaml"
  start "gw-$mode.log" gateway --config "$tmp/$mode.yaml"
done
for callers in ${CALLERS:-0 1000 20000}; do
  echo "== callers $callers, concurrency $conc"
  $bin bench compare --gateway http://127.0.0.1:18191 --against http://127.0.0.1:18192 \
    --labels off,on --chain bench-1x1 --concurrency "$conc" --connections 2 \
    --duration "${secs}s" --rounds "$rounds" --callers "$callers"
done
# Nothing was shed or made to wait: the limits were in force but never reached.
curl -s http://127.0.0.1:18192/metrics | grep -E '^sekisho_gateway_caller_(shed|waits)_total' ||
  echo "(no caller was shed or made to wait)"
