#!/usr/bin/env bash
# BENCHMARKS.md (f'): from the change that announces a new filter replica to the first
# call the gateway sends it, by discovery source, in one run: etcd (real, Debian's
# etcd-server), Kubernetes (the fake API server of the tests: no API server runs here)
# and DNS (real, Debian's dnsmasq) at each interval in DNS_INTERVALS.
#   scripts/bench-discovery.sh            # REPLICAS=20 DNS_INTERVALS=1s,5s by default
# Needs what scripts/test.sh installs (etcd-server, dnsmasq-base).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SEKISHO_BIN:-}" ]; then
  cargo build --release --locked -p sekisho-cli --bin sekisho
  SEKISHO_BIN=$PWD/target/release/sekisho
fi
export SEKISHO_BIN SEKISHO_LOG=${SEKISHO_LOG:-error}
cargo bench --locked -p sekisho-tests --bench discovery
