#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md: gateway + no-op filters (`sekisho dev`, one process)
# and the load generator (another process) on this machine, then h2load as an
# independent cross-check of the 3×3 throughput.
#   scripts/bench.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release --locked -p sekisho-cli --bin sekisho
bin=target/release/sekisho
port=18080
url=http://127.0.0.1:$port
tmp=$(mktemp -d)
SEKISHO_LOG=warn $bin dev --listen 127.0.0.1:$port --chains bench/chains --data-dir "$tmp" > "$tmp/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$tmp/dev.log" && break; sleep 0.2; done

echo "== (a) overhead: bench-1x1 through the gateway vs the noop filter directly, concurrency 1"
$bin bench overhead --gateway $url --chain bench-1x1 --filter noop --concurrency 1 --duration ${secs}s --rounds 3

echo "== (b) throughput: bench-3x3 (9 filter calls per item), concurrency 64"
$bin bench moderate --gateway $url --chain bench-3x3 --concurrency 64 --connections 4 --duration ${secs}s

if command -v h2load >/dev/null; then
  echo "== (b') h2load cross-check: bench-3x3, 4 connections x 16 streams"
  $bin bench body --chain bench-3x3 --out "$tmp/req.bin" > /dev/null
  h2load -D "$secs" -c 4 -m 16 -t 1 --warm-up-time=1 \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$tmp/req.bin" "$url/sekisho.gateway.v1.Gateway/Moderate" | grep -E "finished in|requests:|status codes|time for request" || true
fi

echo "== (c) chain update -> first gateway response using it (sekisho dev with its chainstore)"
SEKISHO_LOG=warn $bin dev --listen 127.0.0.1:18090 --chainstore-listen 127.0.0.1:17090 --data-dir "$tmp/store" > "$tmp/dev2.log" 2>&1 &
dev2=$!
trap 'kill $dev $dev2 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$tmp/dev2.log" && break; sleep 0.2; done
$bin bench reload --gateway http://127.0.0.1:18090 --chainstore http://127.0.0.1:17090 --chain comment-text --updates 100
