#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests (real gateway processes,
# real filters over loopback, the Python example filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --locked -p sekisho-cli --bin sekisho
cargo test --workspace --locked
