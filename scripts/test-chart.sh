#!/usr/bin/env bash
# The Helm chart's checks: lint and render with Helm's own engine (helm-python-sdk, no helm
# binary), every manifest validated against the Kubernetes schemas (kubernetes-validate),
# and the rendered gateway and ui configurations checked by the sekisho binary.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r charts/tests/requirements.txt
[ -x target/debug/sekisho ] || cargo build --locked -p sekisho-cli --bin sekisho
python3 charts/tests/check.py target/debug/sekisho
