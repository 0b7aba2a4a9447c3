#!/usr/bin/env bash
# BENCHMARKS.md (e): three replicas of the noop filter, one of them 10x slower (1 ms vs
# 10 ms a call); three gateways on the same replicas, balancing with p2c (peak-EWMA
# latency x calls in flight, the default), p2c by calls in flight only, and round
# robin; the same chain through each, alternating rounds.
# (e') repeats (e) with h2load as the load generator, when it is installed.
# Then (f): time from a replica's etcd registration to the first call it serves.
#   scripts/bench-balance.sh [seconds-per-run] [rounds] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
conc=${3:-32}
. scripts/bench-lib.sh
start f1.log filter noop --listen 127.0.0.1:19061
start f2.log filter noop --listen 127.0.0.1:19062
start f3.log filter noop --listen 127.0.0.1:19063 --extra-delay 9ms
port=18180
for mode in p2c p2c_in_flight round_robin; do
  port=$((port + 1))
  cat > "$tmp/$mode.yaml" <<YAML
listen: 127.0.0.1:$port
chains_dir: bench/balance
balance: $mode
filters:
  noop: {endpoints: [http://127.0.0.1:19061, http://127.0.0.1:19062, http://127.0.0.1:19063]}
YAML
  start "gw-$mode.log" gateway --config "$tmp/$mode.yaml"
done
echo "== (e) 3 noop replicas, one 10x slower: p2c, p2c by in-flight, round robin; concurrency $conc"
$bin bench compare --gateway http://127.0.0.1:18181 --against http://127.0.0.1:18182 \
  --against http://127.0.0.1:18183 --labels p2c,p2c_in_flight,round_robin \
  --chain bench-replicas --concurrency "$conc" --connections 2 \
  --duration "${secs}s" --rounds "$rounds"
for port in 18181 18182 18183; do
  echo "calls per replica via :$port:"
  curl -s "http://127.0.0.1:$port/v1/filters" > "$tmp/filters.json"
  python3 - "$tmp/filters.json" <<'PY'
import json, sys
for f in json.load(open(sys.argv[1])).get("filters", []):
    for e in f.get("endpoints", []):
        print("  ", e["address"], e.get("calls", 0))
PY
done

if command -v h2load >/dev/null; then
  # (e') the same three gateways driven by h2load (Debian nghttp2-client), an independent
  # load generator: the same request bytes, the same streams in flight, alternating rounds;
  # latency quantiles from its per-request log.
  echo "== (e') h2load cross-check: $conc streams on 2 connections, alternating rounds"
  $bin bench body --chain bench-replicas --out "$tmp/req.bin" > /dev/null
  for r in $(seq "$rounds"); do
    for i in 1 2 3; do
      h2load -D "$secs" -c 2 -m $((conc / 2)) -t 1 --warm-up-time=1 \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$tmp/req.bin" \
        --log-file "$tmp/h2-$i-$r.log" \
        "http://127.0.0.1:$((18180 + i))/sekisho.gateway.v1.Gateway/Moderate" > "$tmp/h2-$i-$r.out"
    done
  done
  python3 - "$tmp" "$rounds" "$secs" <<'PY'
import sys
tmp, rounds, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i, mode in enumerate(["p2c", "p2c_in_flight", "round_robin"], 1):
    lat, done = [], 0
    for r in range(1, rounds + 1):
        rows = [l.split("\t") for l in open(f"{tmp}/h2-{i}-{r}.log") if l.strip()]
        lat += [int(x[2]) for x in rows if x[1] == "200"]
        done += len(rows)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000
    print(f"  {mode:14} {len(lat) / (rounds * secs):8.0f} req/s  p50 {q(0.5):6.2f} ms  "
          f"p90 {q(0.9):6.2f} ms  p99 {q(0.99):6.2f} ms  ({len(lat)}/{done} HTTP 200)")
PY
fi

if command -v etcd >/dev/null; then
  echo "== (f) etcd registration -> first call the new replica serves"
  etcd --data-dir "$tmp/etcd" --listen-client-urls http://127.0.0.1:12379 \
    --advertise-client-urls http://127.0.0.1:12379 --listen-peer-urls http://127.0.0.1:12380 \
    --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster default=http://127.0.0.1:12380 > "$tmp/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf http://127.0.0.1:12379/health > /dev/null && break; sleep 0.1; done
  cat > "$tmp/etcd-gw.yaml" <<YAML
listen: 127.0.0.1:18184
chains_dir: bench/balance
discovery: {etcd: {endpoints: [http://127.0.0.1:12379]}}
YAML
  start gw-etcd.log gateway --config "$tmp/etcd-gw.yaml"
  $bin bench join --etcd http://127.0.0.1:12379 --gateway http://127.0.0.1:18184 \
    --chain bench-replicas --filter noop --replicas 20
fi
