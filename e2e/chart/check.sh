#!/usr/bin/env bash
# Chart and manifest checks (e2e/chart/check.py), with helm, kubernetes-validate and cel-python
# from e2e/tools.sh.
#   bash e2e/chart/check.sh          check
#   bash e2e/chart/check.sh --write  regenerate manifests/thinpool-csi.yaml from the chart, then check
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=e2e/tools.sh
. e2e/tools.sh
ensure_helm
ensure_kubernetes_validate
ensure_cel_python
cargo build -q -p thinpool-csi --bin thinpool-csi
"$VENV/bin/python" e2e/chart/check.py --helm "$HELM" --validate "$VENV/bin/kubernetes-validate" \
  --binary target/debug/thinpool-csi "$@"
