#!/usr/bin/env bash
# thinpool-csi's entry points. Works on a fresh Debian 12 machine with a Rust toolchain:
#   e2e/run.sh demo    a volume, a snapshot and a restore on a loop pool, in a VM with real dm-thin
#   e2e/run.sh test    every test: format, lints, unit tests, chart checks, the VM suite, the chart's
#                      alerts on its scrapes, 50 power cuts, a seeded fuzz run, and the cluster
#                      suite against KUBECONFIG when it is set; VM_CLUSTER=1 adds the cluster in
#                      the VM and the upstream e2e smoke shard (as `cluster` and `upstream smoke`
#                      below: about 70 more minutes, too many for CI, see README "CI")
#   e2e/run.sh bench   thinpool-csi vs LVM latency table (OPS=200 by default)
#   e2e/run.sh cluster a one-node Kubernetes in the VM (built from Go modules), the chart installed
#                      with Helm, and the cluster suite against it
#   e2e/run.sh upstream [SHARD...]  the same cluster judged by Kubernetes' own storage e2e suite
#                      (e2e/upstream/README.md; `upstream list` names the shards), results kept
#                      in e2e/upstream/RESULTS.md
# The cluster suite against a cluster of yours: KUBECONFIG=... bash e2e/cluster/run.sh
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
# phase NAME COMMAND...: one part of `test`, timed; the times are listed at the end.
phases=()
phase() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  phases+=("$(printf '%6d s  %s' $((SECONDS - start)) "$name")")
}
case "${1:-}" in
  demo)
    [ -x target/debug/thinpool-csi ] ||
      echo "demo: building thinpool-csi and the VM harness first: several minutes on a new machine, seconds afterwards" >&2
    cargo run -q -p thinpool-e2e -- demo
    ;;
  test)
    start=$SECONDS
    phase "format" cargo fmt --all --check
    phase "lints" cargo clippy -q --workspace --all-targets -- -D warnings
    # The control-plane tier (e2e/tests/apiserver, run with the unit tests) needs etcd and
    # kube-apiserver v1.36.3, built from their Go modules (cold: a few minutes; kept: nothing).
    phase "control-plane binaries (kube-apiserver, etcd) and thinpool-csi" \
      bash -c 'bash e2e/cluster/build.sh apiserver && cargo build -q -p thinpool-csi --bin thinpool-csi'
    phase "unit tests (no root) and the control-plane tier" \
      env THINPOOL_APISERVER_REQUIRED=1 cargo test -q --workspace
    phase "chart and manifests" bash e2e/chart/check.sh
    phase "documentation links" python3 e2e/docs/check-links.py
    phase "csi.proto is the CSI spec's own (its Go module)" bash csi/proto/fetch.sh --check
    # VM_CLUSTER=1: the cluster in the VM too. Its builds take both cores and come before its VM
    # boots, which needs both too.
    if [ "${VM_CLUSTER:-0}" = 1 ]; then
      phase "cluster: Kubernetes in the VM, the chart installed with Helm, the cluster suite" run_cluster
      # About ten specs of Kubernetes' own storage e2e suite, one from each of its test suites, on
      # a cluster booted afresh (e2e/upstream/README.md): 15 to 20 more minutes.
      phase "upstream e2e smoke shard on the VM cluster" bash e2e/upstream/run.sh smoke
    fi
    phase "VM suite (real device-mapper)" cargo run -q -p thinpool-e2e -- vm
    phase "the chart's alerts, evaluated by Prometheus's rule engine on the VM suite's scrapes" \
      bash -c 'cd e2e/alerts && go test -count=1 ./...'
    # CUTS, FUZZ_SECONDS and SEED change the defaults below (the seed is printed either way).
    phase "power cuts (the VM killed at random moments, persistent disks)" \
      cargo run -q -p thinpool-e2e -- powercut --cuts "${CUTS:-50}" ${SEED:+--seed "$SEED"}
    phase "fuzz (every target, seeded, from the committed corpus)" \
      env SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}" bash e2e/fuzz.sh
    phase "cluster suite (needs KUBECONFIG; the VM cluster: e2e/run.sh cluster)" bash e2e/cluster/run.sh
    echo "== times"
    printf '%s\n' "${phases[@]}"
    printf '%6d s  %s\n' $((SECONDS - start)) "e2e/run.sh test"
    ;;
  cluster)
    run_cluster
    ;;
  upstream)
    shift
    bash e2e/upstream/run.sh "$@"
    ;;
  bench)
    # SMOKE=1: an unoptimised build, only to see that it runs (CI).
    cargo run -q -p thinpool-e2e -- bench --ops "${OPS:-200}" ${SMOKE:+--smoke}
    ;;
  *)
    echo "usage: e2e/run.sh demo|test|bench|cluster|upstream [SHARD...]" >&2
    exit 2
    ;;
esac
