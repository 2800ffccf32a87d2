#!/usr/bin/env bash
# Chart and manifest checks (e2e/chart/check.py), with Helm 4 and Helm 3 (built from their Go
# modules), kubernetes-validate and cel-python from e2e/tools.sh.
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
# Every check with the Helm users run: Helm 4 (which also writes manifests/ with --write) and the
# late Helm 3, which must render manifests/thinpool-csi.yaml alike (only Helm 4 writes it).
check() {
  echo "chart: helm $("$1" version --template '{{.Version}}')"
  "$VENV/bin/python" e2e/chart/check.py --helm "$1" --validate "$VENV/bin/kubernetes-validate" \
    --binary target/debug/thinpool-csi "${@:2}"
}
check "$HELM" "$@"
check "$HELM3"
