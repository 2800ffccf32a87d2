#!/usr/bin/env bash
# Kubernetes' own storage e2e suite ("External Storage", e2e.test v1.36.3) against thinpool-csi on
# the one-node cluster in the VM: `e2e/run.sh upstream [SHARD...]` (every shard when none is named;
# e2e/upstream/shards.sh lists them, `e2e/run.sh upstream list` prints them).
#
# 1. Builds everything first (the cluster's binaries and images, e2e.test, agnhost, ginkgo): the
#    emulated VM needs both cores, so nothing builds beside it.
# 2. Checks every key of the driver file against the suite's source (check-driver.py: a misspelt
#    capability is ignored silently and its specs skip), that e2e.test lists exactly the specs on
#    record (specs.txt, from `e2e.test -list-tests` less the skip list; UPDATE_SPECS=1 writes the
#    new list instead), and that every one of them is in exactly one shard.
# 3. Boots the cluster (e2e/guest/cluster.sh), installs the chart and runs the shards one after the
#    other (e2e/upstream/guest.sh), at most 75 minutes each.
# 4. Records each shard's JUnit report in results/SHARD.json and writes RESULTS.md from every shard
#    on record (report.py), also when a shard failed; exits non-zero when any spec failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=e2e/upstream/shards.sh
. e2e/upstream/shards.sh

if [[ ${1:-} == list ]]; then
	for s in "${SHARDS[@]}"; do
		shard_args "$s"
		printf '%-22s %s\n' "$s" "$FOCUS"
	done
	exit 0
fi
shards=("$@")
((${#shards[@]})) || shards=("${SHARDS[@]}")
for s in "${shards[@]}"; do shard_args "$s" >/dev/null; done # an unknown name fails before any build

echo "== upstream: builds (cluster binaries, e2e.test, images)"
bash e2e/cluster/build.sh
bash e2e/upstream/build.sh
bash e2e/cluster/images.sh
# shellcheck source=e2e/tools.sh
. e2e/tools.sh
ensure_helm # the guest has no network: helm is installed here, used there

echo "== upstream: the driver file and the specs it selects"
# Every key of the driver file must be one the suite reads (unknown keys are ignored silently).
python3 e2e/upstream/check-driver.py e2e/upstream/test-driver.yaml \
	"$(cd e2e/upstream && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
listed=$(mktemp)
trap 'rm -f "$listed"' EXIT
list_specs target/upstream/bin/e2e.test e2e/upstream/test-driver.yaml >"$listed"
if [[ ${UPDATE_SPECS:-0} == 1 ]]; then
	cp "$listed" e2e/upstream/specs.txt
	echo "upstream: wrote e2e/upstream/specs.txt ($(wc -l <"$listed") specs)"
elif ! diff -u e2e/upstream/specs.txt "$listed"; then
	echo "upstream: e2e.test lists other specs than e2e/upstream/specs.txt (diff above): a new" \
		"e2e.test or skip list. If the change is meant, run again with UPDATE_SPECS=1, review and" \
		"commit the new list, and give each new spec a shard." >&2
	exit 1
fi
# Every spec in exactly one shard, so that all shards together run each once.
check_shards e2e/upstream/specs.txt
echo "upstream: $(wc -l <"$listed") External Storage specs, each in one shard; running: ${shards[*]}"

echo "== upstream: the cluster in the VM, the chart, the shards"
rc=0
cargo run -q -p thinpool-e2e -- upstream "${shards[@]}" || rc=$?
run=target/vm/runs/upstream/upstream
if [[ -d $run ]]; then
	python3 e2e/upstream/report.py "$run"
else
	echo "upstream: the guest left no reports ($run is missing)" >&2
	[[ $rc != 0 ]] || rc=1
fi
exit "$rc"
