#!/bin/bash
# Runs in the VM guest once e2e/guest/cluster.sh has the one-node cluster up: installs the chart as
# the cluster suite does (a loop pool) and runs the named shards of Kubernetes' storage e2e suite
# (e2e.test from e2e/upstream/build.sh, this folder's test-driver.yaml) against it, one after the
# other. Each shard's JUnit report and log land in $THINPOOL_E2E_OUT/upstream/SHARD/, which the host
# keeps (target/vm/runs/upstream/upstream/) and e2e/upstream/report.py turns into RESULTS.md.
#
# Environment (set by e2e/guest/cluster.sh and `thinpool-e2e upstream`):
#   THINPOOL_E2E_WS               the workspace
#   THINPOOL_E2E_OUT              the run's share on the host
#   THINPOOL_E2E_UPSTREAM_SHARDS  shard names (e2e/upstream/shards.sh), separated by spaces
#   KUBECONFIG                    the cluster's admin
set -euo pipefail
WS=$THINPOOL_E2E_WS
cd "$WS"
# shellcheck source=e2e/upstream/shards.sh
. e2e/upstream/shards.sh
# shellcheck source=e2e/tools.sh
. e2e/tools.sh
E2E_TEST=$WS/target/upstream/bin/e2e.test
OUT=$THINPOOL_E2E_OUT/upstream
NS=thinpool-csi
T0=$(date +%s)
say() { echo "upstream: [$(($(date +%s) - T0)) s] $*"; }

# The chart as the cluster suite installs it, with a pool large enough for the specs that hold
# several volumes at once (sparse: it costs the guest's memory only what volumes write).
say "installing the chart (release thinpool-csi in $NS)"
"$HELM" upgrade --install thinpool-csi charts/thinpool-csi -n "$NS" --create-namespace --wait --timeout 900s \
	--set "nodeGroups[0].name=e2e" --set "nodeGroups[0].pool.kind=loop" \
	--set "nodeGroups[0].pool.loop.dataSize=20Gi" --set controller.staleAfter=120 >/dev/null
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
kubectl wait --for=jsonpath='{.status.mode}'=rw "thinpool/$node" --timeout=600s >/dev/null
# The scheduler places WaitForFirstConsumer claims only where a capacity object says there is room.
for _ in $(seq 300); do
	[[ $(kubectl get csistoragecapacities -A -o name | wc -l) -ge 2 ]] && break
	sleep 2
done
say "chart installed: ThinPool $node rw, $(kubectl get csistoragecapacities -A -o name | wc -l) capacity objects"

# diagnose FILE: what the driver and the cluster looked like (kept beside the shard's report): the
# ThinPool, the capacity objects, every pod with its restarts and why its containers last ended,
# the driver's events and the logs of its containers (the previous ones too).
diagnose() {
	{
		set +e
		echo "--- $(date -u +%FT%TZ)"
		kubectl get thinpools -o yaml
		kubectl get storageclasses,csistoragecapacities -A -o wide
		kubectl get leases -n "$NS" -o wide
		kubectl get pods -A -o wide
		kubectl get pods -n "$NS" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{range .status.containerStatuses[*]}  {.name}: restarts {.restartCount}, last ended {.lastState.terminated.reason} (exit {.lastState.terminated.exitCode}) at {.lastState.terminated.finishedAt}{"\n"}{end}{end}'
		kubectl get events -n "$NS" --sort-by=.lastTimestamp
		local pod c
		for pod in $(kubectl get pods -n "$NS" -o name); do
			for c in $(kubectl get -n "$NS" "$pod" -o jsonpath='{.spec.containers[*].name}'); do
				echo "--- $pod $c (previous)"
				kubectl logs -n "$NS" "$pod" -c "$c" --previous --tail=100 2>&1
				echo "--- $pod $c"
				kubectl logs -n "$NS" "$pod" -c "$c" --tail=300 2>&1
			done
		done
	} >"$1" 2>&1
}

failed=0
for shard in $THINPOOL_E2E_UPSTREAM_SHARDS; do
	shard_args "$shard" # sets FOCUS, SKIP and LIMIT_MIN, or fails on an unknown name
	dir=$OUT/$shard
	mkdir -p "$dir"
	say "shard $shard: focus '$FOCUS', skip '$SKIP', at most $LIMIT_MIN min"
	start=$(date +%s)
	rc=0
	# Every 2 minutes, the pool's state, its capacity objects and the driver's restarts (watch.txt):
	# when a shard goes wrong, when it started to.
	(while sleep 120; do
		{
			date -u +%FT%TZ
			kubectl get thinpools --no-headers 2>&1
			kubectl get csistoragecapacities -n "$NS" --no-headers -o custom-columns=CLASS:.storageClassName,CAPACITY:.capacity 2>&1
			kubectl get pods -n "$NS" --no-headers 2>&1
		} >>"$dir/watch.txt"
	done) &
	watcher=$!
	# -ginkgo.timeout: the whole shard (ginkgo's default is one hour); -report-dir: junit_01.xml.
	"$E2E_TEST" -kubeconfig="$KUBECONFIG" -storage.testdriver="$WS/e2e/upstream/test-driver.yaml" \
		-ginkgo.focus="$FOCUS" -ginkgo.skip="$SKIP" -ginkgo.timeout="${LIMIT_MIN}m" \
		-ginkgo.no-color -ginkgo.v -report-dir="$dir" -minStartupPods=0 \
		>"$dir/e2e.log" 2>&1 || rc=$?
	kill "$watcher" 2>/dev/null || true
	echo "$rc $(($(date +%s) - start)) $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$dir/outcome"
	say "shard $shard: exit $rc after $(($(date +%s) - start)) s; $(grep -c '^•' "$dir/e2e.log" || true) specs reported"
	grep -E '^(Ran |FAIL!|SUCCESS!|PASS|FAIL)' "$dir/e2e.log" | tail -3 || true
	diagnose "$dir/diagnostics.txt"
	[[ $rc == 0 ]] || failed=1
done
say "done"
exit "$failed"
