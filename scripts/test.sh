#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests (real gateway processes,
# real filters over loopback, the Python example filter, SQLite and a throwaway
# PostgreSQL for the chainstore's storage suite, a throwaway etcd and dnsmasq for
# discovery), the JSON APIs against their OpenAPI documents, the Helm chart's checks,
# then the UI's unit tests and its end-to-end tests in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/debian-packages.sh
scripts/setup.sh
# onnxruntime-gpu's library too: without a GPU its CUDA provider fails to load, which a
# test checks is said, and its CPU sessions serve as the CPU wheel's do.
scripts/fetch-models.sh --gpu
export SEKISHO_REQUIRE_ORT_GPU=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --locked -p sekisho-cli --bin sekisho
pg=$(mktemp -d)
trap 'scripts/postgres.sh stop "$pg/cluster"; rm -rf "$pg"' EXIT
SEKISHO_TEST_POSTGRES_URL=$(scripts/postgres.sh start "$pg/cluster")
export SEKISHO_TEST_POSTGRES_URL SEKISHO_REQUIRE_POSTGRES=1
cargo test --workspace --locked
scripts/test-api.sh
scripts/test-chart.sh
scripts/test-ui.sh
