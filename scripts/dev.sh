#!/usr/bin/env bash
# Fetches what is needed, builds, and starts `sekisho dev`: the whole product on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --locked --release -p sekisho-cli --bin sekisho -- dev "$@"
