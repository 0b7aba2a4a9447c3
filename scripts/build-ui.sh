#!/usr/bin/env bash
# Builds the web UI into ui/dist (served by `sekisho ui` and `sekisho dev`; embedded in
# release binaries): installs the locked npm packages, generates the API client from
# ui/openapi/*.json, type-checks, bundles.
set -euo pipefail
cd "$(dirname "$0")/../ui"
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
  else
    echo "Building the UI needs Node.js (20.19 or later) and npm: sudo apt-get install nodejs npm" >&2
    exit 1
  fi
fi
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
