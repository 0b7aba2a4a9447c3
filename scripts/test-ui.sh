#!/usr/bin/env bash
# The UI's tests: unit tests (Vitest), then end to end in Debian's Chromium driven by
# playwright-core against a real `sekisho dev` (target/debug/sekisho; built first).
# Screenshots of each main page land in ui/test-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d ui/node_modules ] || scripts/build-ui.sh
cargo build --quiet --locked -p sekisho-cli --bin sekisho
cd ui
npx --no-install vitest run
node e2e/run.mjs
