#!/usr/bin/env bash
# Installs what Sekisho's build and tests need on a fresh Debian machine with Rust:
# Python packages for the example filter. protoc comes from a crate; nothing else is
# downloaded at build time.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r filters/examples/python/requirements.txt
