#!/usr/bin/env bash
# thinpool-csi's entry points. Works on a fresh Debian 12 machine with a Rust toolchain:
#   e2e/run.sh demo    a volume, a snapshot and a restore on a loop pool, in a VM with real dm-thin
#   e2e/run.sh test    every test: format, lints, unit tests, chart checks, the VM suite, the chart's
#                      alerts on its scrapes, 50 power cuts, a seeded fuzz run, and the cluster
#                      suite when KUBECONFIG is set
#   e2e/run.sh bench   thinpool-csi vs LVM latency table (OPS=200 by default)
#   e2e/run.sh cluster a one-node Kubernetes in the VM (built from Go modules), the chart installed
#                      with Helm, and the cluster suite against it (not yet part of `test`)
set -euo pipefail
cd "$(dirname "$0")/.."
e2e/install-deps.sh
# Builds Kubernetes, containerd, etcd, the sidecars and every image first (never beside the VM: it
# needs both cores), then boots the cluster in the VM and runs e2e/cluster/run.sh in it.
run_cluster() {
  echo "== cluster: binaries (e2e/cluster/build.sh)"; bash e2e/cluster/build.sh
  echo "== cluster: images (e2e/cluster/images.sh)"; bash e2e/cluster/images.sh
  # shellcheck source=e2e/tools.sh
  . e2e/tools.sh
  ensure_helm # the guest has no network: helm is installed here, used there
  echo "== cluster: Kubernetes in the VM, the chart, the cluster suite"
  cargo run -q -p thinpool-e2e -- cluster
}
case "${1:-}" in
  demo)
    [ -x target/debug/thinpool-csi ] ||
      echo "demo: building thinpool-csi and the VM harness first: several minutes on a new machine, seconds afterwards" >&2
    cargo run -q -p thinpool-e2e -- demo
    ;;
  test)
    echo "== format"; cargo fmt --all --check
    echo "== lints"; cargo clippy -q --workspace --all-targets -- -D warnings
    echo "== unit tests (no root)"; cargo test -q --workspace
    echo "== chart and manifests"; bash e2e/chart/check.sh
    echo "== VM suite (real device-mapper)"; cargo run -q -p thinpool-e2e -- vm
    echo "== the chart's alerts, evaluated by Prometheus's rule engine on the VM suite's scrapes"
    (cd e2e/alerts && go test -count=1 ./...)
    # CUTS, FUZZ_SECONDS and SEED change the defaults below (the seed is printed either way).
    echo "== power cuts (the VM killed at random moments, persistent disks)"
    cargo run -q -p thinpool-e2e -- powercut --cuts "${CUTS:-50}" ${SEED:+--seed "$SEED"}
    echo "== fuzz (every target, seeded, from the committed corpus)"
    SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}" bash e2e/fuzz.sh
    # The cluster in the VM (e2e/run.sh cluster) is not part of this yet: with its cold Go and image
    # builds it would take CI past its 90 minutes (README, "CI"). The suite runs here against a
    # cluster of yours when KUBECONFIG is set.
    echo "== cluster suite (needs KUBECONFIG)"; bash e2e/cluster/run.sh
    ;;
  cluster)
    run_cluster
    ;;
  bench)
    # SMOKE=1: an unoptimised build, only to see that it runs (CI).
    cargo run -q -p thinpool-e2e -- bench --ops "${OPS:-200}" ${SMOKE:+--smoke}
    ;;
  *)
    echo "usage: e2e/run.sh demo|test|bench|cluster" >&2
    exit 2
    ;;
esac
