#!/usr/bin/env bash
# The cluster suite: thinpool-csi on a real Kubernetes cluster (any cluster KUBECONFIG points at;
# e2e/cluster/README.md shows kind with a loop pool). Skipped with a message when KUBECONFIG is unset.
#
#   KUBECONFIG=~/.kube/config THINPOOL_CSI_IMAGE=thinpool-csi:dev bash e2e/cluster/run.sh
#
# Steps: install the chart -> every node's ThinPool is rw (`kubectl get thinpools`) -> capacity
# objects exist -> PVC -> pod -> write -> snapshot -> restore and read back -> expand online ->
# delete everything and see the pool return to its first count. Prints how long the capacity
# controller took to follow a ThinPool change (measured, not asserted).
#
# Environment:
#   KUBECONFIG               the cluster (required; the suite is skipped without it)
#   THINPOOL_CSI_IMAGE       image the nodes can pull or already have (default: the chart's)
#   THINPOOL_E2E_NAMESPACE   namespace of the release (default thinpool-csi-e2e; deleted afterwards
#                            when the suite created it, or when it is the default)
#   THINPOOL_E2E_RELEASE     name of the release (default thinpool-csi)
#   THINPOOL_E2E_KEEP=1      leave the release (and its namespace) installed afterwards
#   THINPOOL_E2E_LOOP_SIZE   loop pool size per node (default 4Gi)
#   THINPOOL_E2E_WORKLOAD_IMAGE  image of the test pods, with sh, dd and df (default busybox:1.36)
#   THINPOOL_E2E_PATIENCE    how many times longer than on an ordinary cluster every wait may take
#                            (default 1; e2e/guest/cluster.sh sets 4 for the emulated VM, where a
#                            pod takes a minute or two to start and a snapshot two to three)
#   THINPOOL_E2E_NODE_DIAGNOSTICS  a command printing what only the node shows (mounts, processes);
#                            run on a failure, before anything is cleaned up (e2e/guest/cluster.sh
#                            sets it for the cluster in the VM)
# -E: the ERR trap (diagnostics) fires for a failing command inside a helper function too.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${KUBECONFIG:-}" ]; then
  echo "cluster suite: skipped: KUBECONFIG is not set. Point it at a cluster (e.g. kind) to run it;" \
       "see e2e/cluster/README.md."
  exit 0
fi
command -v kubectl >/dev/null || { echo "cluster suite: kubectl is not installed" >&2; exit 1; }

PATIENCE=${THINPOOL_E2E_PATIENCE:-1}
case "$PATIENCE" in
  "" | *[!0-9]* | 0*) echo "cluster suite: THINPOOL_E2E_PATIENCE must be a whole number of at least 1, not '$PATIENCE'" >&2; exit 2 ;;
esac
# patient SECONDS: a wait's limit, in seconds, scaled by the patience.
patient() { echo $(( $1 * PATIENCE )); }
NS=${THINPOOL_E2E_NAMESPACE:-thinpool-csi-e2e}
APP=thinpool-e2e-app
WORKLOAD=${THINPOOL_E2E_WORKLOAD_IMAGE:-busybox:1.36}
RELEASE=${THINPOOL_E2E_RELEASE:-thinpool-csi}
# shellcheck source=e2e/tools.sh
. e2e/tools.sh
ensure_helm
START=$(date +%s)
passed=0

# step TITLE: a new step, with the seconds since the suite started (where a slow cluster spends its time).
step() { echo; echo "== [$(( $(date +%s) - START )) s] $*"; }
ok() { passed=$((passed + 1)); echo "ok   $*"; }
# show COMMAND...: run a diagnostic command; its failure (a resource the cluster does not have, a
# namespace never created) is printed and does not stop the other diagnostics.
show() { echo "\$ $*"; "$@" 2>&1 || true; }
have_snapshot_api() {
  kubectl api-resources --api-group=snapshot.storage.k8s.io -o name 2>/dev/null | grep -q '^volumesnapshots\.'
}
diagnostics() {
  echo "--- diagnostics"
  show kubectl get thinpools -o wide
  show kubectl -n "$NS" get pods -o wide
  show kubectl -n "$APP" get pvc,pods -o wide
  # Expansion as the API records it: the request, what each claim holds, what it was marked with.
  show kubectl -n "$APP" get pvc -o custom-columns='CLAIM:.metadata.name,REQUEST:.spec.resources.requests.storage,HOLDS:.status.capacity.storage,ALLOCATED:.status.allocatedResources.storage,RESIZE:.status.allocatedResourceStatuses.storage,VOLUME:.spec.volumeName'
  show kubectl get pv -o custom-columns='VOLUME:.metadata.name,CAPACITY:.spec.capacity.storage,CLAIM:.spec.claimRef.name'
  if have_snapshot_api; then
    show kubectl -n "$APP" get volumesnapshots,volumesnapshotcontents -o wide
  else
    echo "(the snapshot CRDs are not installed: no VolumeSnapshots to show)"
  fi
  local ns
  for ns in "$NS" "$APP"; do
    # In time order, the latest 30: `kubectl events` (kubectl 1.26+) by last seen, else by first seen.
    echo "\$ kubectl -n $ns events (last 30)"
    { kubectl -n "$ns" events 2>/dev/null ||
        kubectl -n "$ns" get events --sort-by=.metadata.creationTimestamp 2>&1; } | tail -30 || true
  done
  # Every container of the driver's pods: the plugin and the controller, and the sidecars.
  local p c
  for p in $(kubectl -n "$NS" get pods -o name 2>/dev/null || true); do
    for c in $(kubectl -n "$NS" get "$p" -o jsonpath='{.spec.containers[*].name}' 2>/dev/null || true); do
      show kubectl -n "$NS" logs "$p" -c "$c" --tail=30
    done
  done
  # The snapshot-controller (external-snapshotter's manifests put it in kube-system), when present.
  if have_snapshot_api; then
    show kubectl -n kube-system logs -l app.kubernetes.io/name=snapshot-controller --tail=30 --prefix
  fi
  if [ -n "${THINPOOL_E2E_NODE_DIAGNOSTICS:-}" ]; then
    echo "\$ $THINPOOL_E2E_NODE_DIAGNOSTICS"
    $THINPOOL_E2E_NODE_DIAGNOSTICS 2>&1 || true
  fi
}
die() {
  echo "FAIL $*" >&2
  diagnostics >&2
  exit 1
}
# stop MESSAGE: end the suite before it has changed anything (nothing to diagnose).
stop() {
  echo "cluster suite: $*" >&2
  exit 1
}
# elapsed SINCE: seconds since SINCE (date +%s.%N), one decimal.
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
timings=()
timing() { timings+=("$(printf '%-44s %6s s' "$1" "$2")"); echo "time $1: $2 s"; }
# bytes QUANTITY: a Kubernetes quantity (512Mi, 5G, 1073741824) in bytes.
bytes() {
  awk -v q="$1" 'BEGIN {
    n = q; sub(/[A-Za-z]+$/, "", n); u = substr(q, length(n) + 1)
    m["Ki"]=2^10; m["Mi"]=2^20; m["Gi"]=2^30; m["Ti"]=2^40; m["k"]=1e3; m["M"]=1e6; m["G"]=1e9; m["T"]=1e12; m[""]=1
    if (!(u in m)) exit 1
    printf "%.0f", n * m[u] }'
}
# quantity_is WANT KUBECTL-ARGS...: the quantity `kubectl ARGS` prints equals WANT by value (the API
# server may write 1073741824 as 1Gi).
quantity_is() { local want=$1; shift; [ "$(bytes "$(kubectl "$@")")" = "$(bytes "$want")" ]; }
# pod_on NAME CLAIM [COMMAND]: a pod of the workload image with CLAIM mounted at /data.
pod_on() {
  local cmd=${3:-sleep 3600}
  kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: $WORKLOAD, command: ["sh", "-c", "$cmd"], volumeMounts: [{name: d, mountPath: /data}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: $2}}]
EOF
}
# claim NAME SIZE [CLASS] [EXTRA SPEC LINES]: a PersistentVolumeClaim.
claim() {
  kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1}
spec:
  storageClassName: ${3:-thinpool-ext4}
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: $2}}
${4:-}
EOF
}
ready() { kubectl -n "$APP" wait --for=condition=Ready "pod/$1" --timeout="$(patient "${2:-180}")s" >/dev/null || die "pod $1 not Ready"; }
# until_ok SECONDS DESCRIPTION COMMAND...: retry COMMAND every 2 s for SECONDS (times the patience).
# (Each try starts kubectl: on an emulated node that costs more than a CPU-second, so tries are spaced.)
until_ok() {
  local limit; limit=$(patient "$1"); local what=$2; shift 2
  local deadline=$(( $(date +%s) + limit )) last
  until last=$("$@" 2>&1); do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what (waited ${limit}s; the last try said: ${last:-nothing})"
    sleep 2
  done
}
# watch_until SECONDS DESCRIPTION JSONPATH VALUE OBJECT...: wait until the field JSONPATH of OBJECT
# (kubectl get arguments) reads VALUE, on a watch (`kubectl wait --for=jsonpath`: one process, no
# polling). kubectl wait fails at once while the object does not exist yet: then it is tried again.
watch_until() {
  local limit; limit=$(patient "$1"); local what=$2 path=$3 value=$4; shift 4
  local deadline=$(( $(date +%s) + limit )) left
  while left=$(( deadline - $(date +%s) )); [ "$left" -gt 0 ]; do
    kubectl wait "$@" --for=jsonpath="$path"="$value" --timeout="${left}s" >/dev/null 2>&1 && return 0
    sleep 2
  done
  die "$what (waited ${limit}s; it reads '$(kubectl get "$@" -o jsonpath="$path" 2>&1)')"
}
# helm_retrying ARGS...: helm, tried again (3 tries in all) when it failed on a transient API error:
# a slow API server (an emulated one, a loaded one) can time out helm's OpenAPI download.
helm_retrying() {
  local try out
  for try in 1 2 3; do
    if out=$("$HELM" "$@" 2>&1); then
      echo "$out"
      return 0
    fi
    echo "$out" >&2
    grep -qE 'context deadline exceeded|Please retry|request canceled|i/o timeout|connection refused' <<<"$out" ||
      return 1
    [ "$try" = 3 ] || { echo "helm: a transient API error; trying again in 10 s" >&2; sleep 10; }
  done
  return 1
}
installed=0   # set once the suite runs helm: only then is there a release of its own to remove
created_ns=0  # the suite created $NS
cleanup() {
  [ "$installed" = 1 ] || return 0
  kubectl delete namespace "$APP" --ignore-not-found --wait=true --timeout="$(patient 180)s" >/dev/null 2>&1 ||
    echo "cleanup: namespace $APP is still terminating after $(patient 180) s" >&2
  if [ "${THINPOOL_E2E_KEEP:-0}" = 1 ]; then
    echo "cleanup: keeping release $RELEASE in namespace $NS (THINPOOL_E2E_KEEP=1)" >&2
    return 0
  fi
  "$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout "$(patient 180)s" >/dev/null 2>&1 ||
    echo "cleanup: helm uninstall $RELEASE -n $NS failed or timed out" >&2
  # A namespace the user named and made beforehand is theirs to keep.
  if [ "$created_ns" = 1 ] || [ "$NS" = thinpool-csi-e2e ]; then
    kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout="$(patient 120)s" >/dev/null 2>&1 ||
      echo "cleanup: namespace $NS is still terminating after $(patient 120) s" >&2
  fi
}
trap cleanup EXIT
# Any other command that fails ends the suite with the same diagnostics as a failed check.
trap 'rc=$?; echo "FAIL line $LINENO: a command failed (exit $rc)" >&2; diagnostics >&2; exit "$rc"' ERR
# Interrupted or killed: exit through the EXIT trap, which cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

# The chart's cluster-wide objects (CSIDriver, StorageClasses, ClusterRoles) exist once per cluster:
# a thinpool-csi installed under another release or namespace makes the install fail. Say so first.
owner=$(kubectl get csidriver thinpool.csi.io \
  -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}/{.metadata.annotations.meta\.helm\.sh/release-namespace}' \
  2>/dev/null || true)
case "$owner" in
  "" | "$RELEASE/$NS") ;;  # not installed, or this suite's release kept from an earlier run
  /) stop "the CSIDriver thinpool.csi.io exists but no Helm release owns it (applied from manifests/?)." \
          "Remove that installation first (kubectl delete -f manifests/thinpool-csi.yaml) or use another cluster." ;;
  *) stop "thinpool-csi is already installed on this cluster: Helm release ${owner%%/*} in namespace ${owner#*/}." \
          "The suite installs its own release ($RELEASE in $NS) and the two would clash. Uninstall it first" \
          "(helm uninstall ${owner%%/*} -n ${owner#*/}), or use another cluster. If it is a release this suite" \
          "left with THINPOOL_E2E_KEEP=1, run again with THINPOOL_E2E_RELEASE=${owner%%/*}" \
          "THINPOOL_E2E_NAMESPACE=${owner#*/} to reuse it (the suite upgrades it with its own values)." ;;
esac
kubectl get namespace "$NS" >/dev/null 2>&1 || created_ns=1

step "install the chart into $NS (release $RELEASE)"
set_image=()
if [ -n "${THINPOOL_CSI_IMAGE:-}" ]; then
  set_image=(--set "image.repository=${THINPOOL_CSI_IMAGE%:*}" --set "image.tag=${THINPOOL_CSI_IMAGE##*:}"
             --set image.pullPolicy=IfNotPresent)
fi
installed=1
t_install=$(date +%s.%N)
install_values=("${set_image[@]}"
  --set "nodeGroups[0].name=e2e" --set "nodeGroups[0].pool.kind=loop"
  --set "nodeGroups[0].pool.loop.dataSize=${THINPOOL_E2E_LOOP_SIZE:-4Gi}"
  --set controller.staleAfter=60)
helm_retrying upgrade --install "$RELEASE" charts/thinpool-csi -n "$NS" --create-namespace --wait --timeout "$(patient 300)s" \
  "${install_values[@]}" || die "helm install"
timing "helm install --wait" "$(elapsed "$t_install")"
ok "helm install"

step "every node with a plugin has a rw ThinPool"
nodes=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=node -o jsonpath='{.items[*].spec.nodeName}')
[ -n "$nodes" ] || die "no node plugin pods"
for n in $nodes; do
  watch_until 120 "ThinPool $n in state rw" '{.status.mode}' rw thinpool "$n"
done
kubectl get thinpools
counts_of() { kubectl get thinpool "$1" -o jsonpath='{.status.volumes}/{.status.snapshots}'; }
declare -A baseline
for n in $nodes; do baseline[$n]=$(counts_of "$n"); done
ok "ThinPools: $nodes"

step "each ThinPool's numbers are its pool's, as the operator CLI reads the kernel and the records"
# plugin_on NODE: the node plugin pod on NODE.
plugin_on() {
  kubectl -n "$NS" get pods -l app.kubernetes.io/component=node --field-selector "spec.nodeName=$1" \
    -o jsonpath='{.items[0].metadata.name}'
}
# cli NODE ARGS...: the operator CLI in NODE's plugin container; it runs in the plugin, which holds
# the records (docs/troubleshooting.md).
cli() { local n=$1; shift; kubectl -n "$NS" exec "$(plugin_on "$n")" -c thinpool-csi -- thinpool-csi "$@"; }
# json_number JSON KEY: the first number under "KEY" in the CLI's JSON (pretty, one field a line).
json_number() { grep -o "\"$2\": *[0-9]*" <<<"$1" | head -n1 | grep -o '[0-9]*$'; }
# pool_is_published NODE: every number of the ThinPool equals the pool's (retried: the plugin
# publishes on a change and every heartbeat).
pool_is_published() {
  local js f mine theirs
  js=$(cli "$1" -o json pool status) || { echo "  pool status in $1's plugin failed"; return 1; }
  for f in data_total_bytes:dataTotalBytes data_used_bytes:dataUsedBytes metadata_total_bytes:metadataTotalBytes \
    metadata_used_bytes:metadataUsedBytes provisioned_bytes:provisionedBytes allowed_new_bytes:allowedNewBytes \
    transaction_id:transactionId volumes:volumes snapshots:snapshots; do
    mine=$(json_number "$js" "${f%%:*}")
    theirs=$(kubectl get thinpool "$1" -o jsonpath="{.status.${f#*:}}")
    [ -n "$mine" ] && [ "$mine" = "$theirs" ] || { echo "  $1: ${f%%:*} $mine in the pool, ${f#*:} '$theirs' in the ThinPool"; return 1; }
  done
}
loop_size=${THINPOOL_E2E_LOOP_SIZE:-4Gi}
for n in $nodes; do
  until_ok 90 "ThinPool $n holds its pool's numbers" pool_is_published "$n"
  # The loop pool is as large as the chart was told, to the byte.
  case $loop_size in
    *Gi) [ "$(kubectl get thinpool "$n" -o jsonpath='{.status.dataTotalBytes}')" -eq $(( ${loop_size%Gi} << 30 )) ] ||
      die "ThinPool $n: dataTotalBytes is not the $loop_size loop pool the chart was given" ;;
  esac
done
ok "every ThinPool's data, metadata, provisioning, budget, transaction id and counts are its pool's ($loop_size)"

step "the kubelet registered the driver through the plugin's own socket"
for n in $nodes; do
  until_ok 60 "CSINode $n lists thinpool.csi.io with its topology key" \
    bash -c "kubectl get csinode '$n' -o jsonpath='{.spec.drivers[?(@.name==\"thinpool.csi.io\")].topologyKeys}' | grep -q topology.thinpool.csi.io/node"
done
# pods_run COMPONENT CONTAINERS: every pod of the component runs exactly these containers.
pods_run() {
  local pod got
  while read -r pod got; do
    [ "$got" = "$2" ] || die "pod $pod runs '$got', not '$2'"
  done < <(kubectl -n "$NS" get pods -l "app.kubernetes.io/component=$1" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.containers[*].name}{"\n"}{end}')
}
pods_run node "thinpool-csi csi-provisioner csi-snapshotter"
pods_run controller "thinpool-csi"
ok "CSINode lists thinpool.csi.io with topology.thinpool.csi.io/node; every node pod: thinpool-csi csi-provisioner csi-snapshotter; every controller pod: thinpool-csi"

step "capacity objects for every (class, node)"
classes=$(kubectl get storageclass -o jsonpath='{range .items[?(@.provisioner=="thinpool.csi.io")]}{.metadata.name}{" "}{end}')
want=$(( $(wc -w <<<"$nodes") * $(wc -w <<<"$classes") ))
# Exactly one per (class, node): a duplicate or a left-over object is as wrong as a missing one.
until_ok 60 "exactly $want CSIStorageCapacity objects" \
  bash -c "[ \$(kubectl -n '$NS' get csistoragecapacities -l app.kubernetes.io/managed-by=thinpool-csi-controller -o name | wc -l) -eq $want ]"
kubectl -n "$NS" get csistoragecapacities -l app.kubernetes.io/managed-by=thinpool-csi-controller \
  -o custom-columns=NAME:.metadata.name,CLASS:.storageClassName,CAPACITY:.capacity,MAX:.maximumVolumeSize
ok "$want capacity objects"

step "PVC -> pod -> write"
kubectl create namespace "$APP" >/dev/null
t_claim=$(date +%s.%N)
kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  storageClassName: thinpool-ext4
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 512Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  containers:
    - name: c
      image: $WORKLOAD
      command: ["sh", "-c", "echo written-by-writer > /data/hello && sync && sleep 3600"]
      volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
EOF
kubectl -n "$APP" wait --for=condition=Ready pod/writer --timeout="$(patient 180)s" >/dev/null || die "writer pod not Ready"
timing "claim created -> pod Running (ext4)" "$(elapsed "$t_claim")"
until_ok 30 "the file is written" kubectl -n "$APP" exec writer -- grep -q written-by-writer /data/hello
node=$(kubectl -n "$APP" get pod writer -o jsonpath='{.spec.nodeName}')
pv=$(kubectl -n "$APP" get pvc data -o jsonpath='{.spec.volumeName}')
handle=$(kubectl get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
case "$handle" in *@"$node") ;; *) die "volume handle $handle does not name node $node" ;; esac
ok "PVC bound on $node ($handle), file written"

step "capacity follows the pool"
# Time from the ThinPool status changing to the CSIStorageCapacity following it, on a new volume.
cap_of() { kubectl -n "$NS" get csistoragecapacities -l "app.kubernetes.io/managed-by=thinpool-csi-controller,thinpool.csi.io/node=$node,thinpool.csi.io/storage-class=thinpool-ext4" -o jsonpath='{.items[0].capacity}'; }
allowed_of() { kubectl get thinpool "$node" -o jsonpath='{.status.allowedNewBytes}'; }
before_pool=$(allowed_of); before_cap=$(cap_of)
kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: probe}
spec:
  storageClassName: thinpool-ext4
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 256Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In, values: [$node]}]}]
  containers: [{name: c, image: $WORKLOAD, command: ["sleep", "3600"], volumeMounts: [{name: d, mountPath: /d}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: probe}}]
EOF
t_pool=""; t_cap=""; deadline=$(( $(date +%s) + $(patient 120) ))
while [ -z "$t_cap" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  [ -n "$t_pool" ] || { [ "$(allowed_of)" != "$before_pool" ] && t_pool=$(date +%s.%N); }
  [ -n "$t_pool" ] && [ "$(cap_of)" != "$before_cap" ] && t_cap=$(date +%s.%N)
  sleep 0.5
done
if [ -n "$t_cap" ]; then
  timing "ThinPool change -> CSIStorageCapacity" "$(elapsed "$t_pool")"
  echo "capacity followed the ThinPool change within $(awk "BEGIN{printf \"%.1f\", $t_cap - $t_pool}") s" \
       "(polling every 0.5 s, kubectl round trips included)"
  ok "capacity object updated after a new volume"
else
  die "the CSIStorageCapacity for $node never changed after a new volume (ThinPool changed: ${t_pool:+yes})"
fi

step "snapshot -> restore"
if ! kubectl api-resources --api-group=snapshot.storage.k8s.io -o name | grep -q '^volumesnapshots'; then
  die "the snapshot CRDs are not installed (see e2e/cluster/README.md)"
fi
t_snap=$(date +%s.%N)
kubectl -n "$APP" apply -f - >/dev/null <<'EOF'
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap}
spec:
  volumeSnapshotClassName: thinpool-snapshots
  source: {persistentVolumeClaimName: data}
EOF
watch_until 120 "VolumeSnapshot ready" '{.status.readyToUse}' true -n "$APP" volumesnapshot snap
timing "VolumeSnapshot created -> readyToUse" "$(elapsed "$t_snap")"
kubectl -n "$APP" exec writer -- sh -c 'echo changed-after-snapshot > /data/hello && sync'
t_restore=$(date +%s.%N)
kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored}
spec:
  storageClassName: thinpool-ext4
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 512Mi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers:
    - name: c
      image: $WORKLOAD
      command: ["sleep", "3600"]
      volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: restored}}]
EOF
kubectl -n "$APP" wait --for=condition=Ready pod/reader --timeout="$(patient 180)s" >/dev/null || die "reader pod not Ready"
timing "restore claim created -> pod Running" "$(elapsed "$t_restore")"
got=$(kubectl -n "$APP" exec reader -- cat /data/hello)
[ "$got" = "written-by-writer" ] || die "restored volume holds '$got', not the snapshot's 'written-by-writer'"
ok "restored volume holds the snapshot's data (and not the later write)"

step "group snapshot: two claims chosen by label, one instant, each member restored"
kubectl api-resources --api-group=groupsnapshot.storage.k8s.io -o name | grep -q '^volumegroupsnapshots' ||
  die "the group snapshot CRDs are not installed (see e2e/cluster/README.md)"
for c in grp-a grp-b; do
  claim "$c" 64Mi
  kubectl -n "$APP" label pvc "$c" thinpool-e2e/group=db >/dev/null
  pod_on "$c" "$c" "echo before-$c > /data/f && sync && sleep 3600"
done
for c in grp-a grp-b; do ready "$c"; done
for c in grp-a grp-b; do until_ok 30 "$c wrote its file" kubectl -n "$APP" exec "$c" -- grep -qx "before-$c" /data/f; done
snaps_before=$(kubectl get thinpool "$node" -o jsonpath='{.status.snapshots}')
t_group=$(date +%s.%N)
kubectl -n "$APP" apply -f - >/dev/null <<'EOF'
apiVersion: groupsnapshot.storage.k8s.io/v1
kind: VolumeGroupSnapshot
metadata: {name: grp}
spec:
  volumeGroupSnapshotClassName: thinpool-group-snapshots
  source: {selector: {matchLabels: {thinpool-e2e/group: db}}}
EOF
watch_until 180 "VolumeGroupSnapshot ready" '{.status.readyToUse}' true -n "$APP" volumegroupsnapshot grp
timing "VolumeGroupSnapshot created -> readyToUse" "$(elapsed "$t_group")"
# Its members: one VolumeSnapshot per claim, made by the snapshot-controller (claim=snapshot=ready).
members() {
  kubectl -n "$APP" get volumesnapshots \
    -o jsonpath='{range .items[?(@.status.volumeGroupSnapshotName=="grp")]}{.spec.source.persistentVolumeClaimName}={.metadata.name}={.status.readyToUse}{"\n"}{end}' |
    sort
}
members_ready() { [ "$(members | cut -d= -f1,3 | tr '\n' ' ')" = "grp-a=true grp-b=true " ]; }
until_ok 120 "one ready member of grp for each claim" members_ready
echo "members of grp (claim=snapshot=ready):"; members
pool_snapshots_are() { [ "$(kubectl get thinpool "$node" -o jsonpath='{.status.snapshots}')" -eq "$1" ]; }
until_ok 60 "the ThinPool counts the two members" pool_snapshots_are $((snaps_before + 2))
ok "group snapshot grp of grp-a and grp-b ready, one member each (pool snapshots $snaps_before -> $((snaps_before + 2)))"
for c in grp-a grp-b; do
  kubectl -n "$APP" exec "$c" -- sh -c "echo after-$c > /data/f && sync"
  snap=$(members | awk -F= -v c="$c" '$1 == c {print $2}')
  claim "$c-restored" 64Mi thinpool-ext4 "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: $snap}"
  pod_on "$c-restored" "$c-restored"
done
for c in grp-a grp-b; do
  ready "$c-restored"
  got=$(kubectl -n "$APP" exec "$c-restored" -- cat /data/f)
  [ "$got" = "before-$c" ] || die "$c restored from its group member holds '$got', not 'before-$c'"
done
ok "each member, restored into a new claim, holds its claim's data at the group's instant"
kubectl -n "$APP" delete pod grp-a-restored grp-b-restored grp-a grp-b --wait=true >/dev/null
kubectl -n "$APP" delete pvc grp-a-restored grp-b-restored --wait=true >/dev/null
kubectl -n "$APP" delete volumegroupsnapshot grp --wait=true --timeout="$(patient 180)s" >/dev/null
until_ok 180 "the group's members are gone from the pool" pool_snapshots_are "$snaps_before"
[ -z "$(members)" ] || die "member VolumeSnapshots left after their group was deleted: $(members | tr '\n' ' ')"
ok "deleting the VolumeGroupSnapshot deletes its members, in Kubernetes and in the pool"

step "a volume whose PersistentVolume is gone, a PersistentVolume whose volume is gone: reported, then cleaned up"
claim lost 64Mi
pod_on lost lost
ready lost
lost_pv=$(kubectl -n "$APP" get pvc lost -o jsonpath='{.spec.volumeName}')
lost_handle=$(kubectl get pv "$lost_pv" -o jsonpath='{.spec.csi.volumeHandle}')
lost_volume=${lost_handle%@*}
# An operator's Retain, then the claim and the PersistentVolume deleted: the volume stays, orphaned.
kubectl patch pv "$lost_pv" -p '{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}' >/dev/null
kubectl -n "$APP" delete pod lost --wait=true >/dev/null
kubectl -n "$APP" delete pvc lost --wait=true >/dev/null
kubectl delete pv "$lost_pv" --wait=true >/dev/null
# A PersistentVolume naming a volume this node does not have (a pre-provisioned one, mistyped).
ghost="ghost-e2e@$node"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: ghost-e2e}
spec:
  capacity: {storage: 64Mi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  csi: {driver: thinpool.csi.io, volumeHandle: "$ghost", fsType: ext4}
EOF
# reported ORPHANED MISSING: the ThinPool lists exactly these (JSON lists) and the plugin counts them.
# (An empty list reads as [], or as nothing when the field is left out.)
reported() {
  local orphaned missing
  orphaned=$(kubectl get thinpool "$node" -o jsonpath='{.status.orphanedVolumes}')
  missing=$(kubectl get thinpool "$node" -o jsonpath='{.status.missingVolumes}')
  [ "${orphaned:-[]}" = "$1" ] && [ "${missing:-[]}" = "$2" ] || { echo "orphaned ${orphaned:-[]}, missing ${missing:-[]}"; return 1; }
}
metrics_of() { kubectl get --raw "/api/v1/namespaces/$NS/pods/$(plugin_on "$1"):9102/proxy/metrics"; }
# One heartbeat (30 s) at most: deleting a PersistentVolume changes nothing in the pool.
until_ok 90 "ThinPool $node reports $lost_volume orphaned and $ghost missing" reported "[\"$lost_volume\"]" "[\"$ghost\"]"
scrape=$(metrics_of "$node")
for m in thinpool_orphaned_volumes thinpool_missing_volumes; do
  grep -qx "$m 1" <<<"$scrape" || die "the plugin's metrics do not count one for $m: $(grep "^$m" <<<"$scrape")"
done
# Kept for the alerts test (e2e/alerts/scrapes/orphaned-missing.prom, e2e/guest/cluster.sh).
if [ -n "${THINPOOL_E2E_SCRAPES:-}" ]; then
  mkdir -p "$THINPOOL_E2E_SCRAPES"
  { echo "# the node plugin with one orphaned and one missing volume: e2e/cluster/run.sh, $(date -u +%Y-%m-%d)"
    echo "$scrape"; } >"$THINPOOL_E2E_SCRAPES/orphaned-missing.prom"
fi
ok "ThinPool and metrics report the orphaned $lost_volume and the missing $ghost"
# The way out docs/troubleshooting.md gives: the CLI in the plugin's container deletes the volume.
cli "$node" volumes delete "$lost_volume"
kubectl delete pv ghost-e2e --wait=true >/dev/null
until_ok 90 "ThinPool $node reports nothing orphaned or missing" reported "[]" "[]"
ok "the orphan deleted with the operator CLI (run in the plugin), the PersistentVolume removed: nothing reported"

step "clone, raw block, xfs and ReadWriteOncePod, side by side"
claim clone 512Mi thinpool-ext4 '  dataSource: {kind: PersistentVolumeClaim, name: data}'
pod_on cloned clone
claim block 64Mi thinpool-ext4 '  volumeMode: Block'
kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: block}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: $WORKLOAD
      command: ["sh", "-c", "echo raw-block-data | dd of=/dev/xvda bs=512 count=1 conv=sync,fsync 2>/dev/null && sleep 3600"]
      volumeDevices: [{name: d, devicePath: /dev/xvda}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: block}}]
EOF
claim xfs 512Mi thinpool-xfs
pod_on xfs xfs 'echo on-xfs > /data/f && sync && sleep 3600'
kubectl -n "$APP" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: once}
spec:
  storageClassName: thinpool-ext4
  accessModes: [ReadWriteOncePod]
  resources: {requests: {storage: 64Mi}}
EOF
pod_on once-a once
for p in cloned block xfs once-a; do ready "$p"; done
got=$(kubectl -n "$APP" exec cloned -- cat /data/hello)
[ "$got" = changed-after-snapshot ] || die "the clone holds '$got', not its source's 'changed-after-snapshot'"
ok "the clone holds its source's data"
until_ok 30 "the raw block device holds what was written" \
  bash -c "kubectl -n '$APP' exec block -- dd if=/dev/xvda bs=512 count=1 2>/dev/null | grep -q raw-block-data"
kubectl -n "$APP" exec block -- sh -c 'grep -q " /dev/xvda " /proc/mounts' && die "the block volume is mounted as a filesystem"
ok "raw block volume written and read back through /dev/xvda"
fstype=$(kubectl -n "$APP" exec xfs -- awk '$2 == "/data" {print $3}' /proc/mounts)
[ "$fstype" = xfs ] || die "the thinpool-xfs volume is mounted as '$fstype'"
until_ok 30 "the xfs volume is written" kubectl -n "$APP" exec xfs -- grep -q on-xfs /data/f
ok "xfs volume mounted as xfs and written"
pod_on once-b once
until_ok 60 "the second pod of a ReadWriteOncePod claim is refused by the scheduler" \
  bash -c "kubectl -n '$APP' get pod once-b -o jsonpath='{.status.conditions[?(@.type==\"PodScheduled\")].message}' | grep -q ReadWriteOncePod"
echo "once-b: $(kubectl -n "$APP" get pod once-b -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')"
kubectl -n "$APP" delete pod once-a once-b --wait=true >/dev/null
ok "ReadWriteOncePod: a second pod stays Pending while the first holds the claim"

step "expand online (the controller's bookkeeping, NodeExpandVolume on the mounted volume)"
kubectl -n "$APP" patch pvc data --type=merge -p '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}' >/dev/null
until_ok 180 "PVC data reports 1Gi" quantity_is 1Gi -n "$APP" get pvc data -o jsonpath='{.status.capacity.storage}'
size_kb=$(kubectl -n "$APP" exec writer -- df -k /data | awk 'NR==2 {print $2}')
[ "$size_kb" -gt 900000 ] || die "the filesystem is still ${size_kb} KiB after expansion"
ok "filesystem grew to ${size_kb} KiB while mounted"

step "expand offline: an unmounted volume grows at its next use"
kubectl -n "$APP" delete pod probe --wait=true >/dev/null
kubectl -n "$APP" patch pvc probe --type=merge -p '{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}' >/dev/null
probe_pv=$(kubectl -n "$APP" get pvc probe -o jsonpath='{.spec.volumeName}')
until_ok 60 "PV $probe_pv grows to 512Mi" quantity_is 512Mi get pv "$probe_pv" -o jsonpath='{.spec.capacity.storage}'
status=$(kubectl -n "$APP" get pvc probe -o jsonpath='{.status.allocatedResourceStatuses.storage}/{.status.conditions[*].type}')
echo "claim probe while unmounted: $status"
case "$status" in NodeResizePending/*FileSystemResizePending*) ;; *) die "claim probe: expected NodeResizePending and FileSystemResizePending, got $status" ;; esac
pod_on probe2 probe
ready probe2
until_ok 120 "PVC probe reports 512Mi after its next mount" \
  quantity_is 512Mi -n "$APP" get pvc probe -o jsonpath='{.status.capacity.storage}'
size_kb=$(kubectl -n "$APP" exec probe2 -- df -k /data | awk 'NR==2 {print $2}')
[ "$size_kb" -gt 450000 ] || die "the filesystem is still ${size_kb} KiB after offline expansion"
ok "grew to ${size_kb} KiB at the next mount"

step "a request the pool cannot hold ends with its reason on the claim, and can be taken back"
kubectl -n "$APP" patch pvc probe --type=merge -p '{"spec":{"resources":{"requests":{"storage":"100Ti"}}}}' >/dev/null
until_ok 60 "claim probe marked ControllerResizeInfeasible" \
  bash -c "kubectl -n '$APP' get pvc probe -o jsonpath='{.status.allocatedResourceStatuses.storage}' | grep -qx ControllerResizeInfeasible"
reason=$(kubectl -n "$APP" get events --field-selector involvedObject.name=probe,reason=VolumeResizeFailed -o jsonpath='{.items[-1:].message}')
[ -n "$reason" ] || die "no VolumeResizeFailed event on claim probe"
echo "VolumeResizeFailed: $reason"
# The reason names the pool's room and what to do, as the controller writes it.
case "$reason" in
  *"the thin pool on $node may provision only"*"lower the request"*) ;;
  *) die "the VolumeResizeFailed event does not say why (the pool's room) and what to do: $reason" ;;
esac
# Kubernetes accepts a lowered request only above the claim's current capacity (512Mi here), so
# the request taken back is one the pool can hold, and it is carried out.
kubectl -n "$APP" patch pvc probe --type=merge -p '{"spec":{"resources":{"requests":{"storage":"640Mi"}}}}' >/dev/null
until_ok 60 "the infeasible mark cleared after the request was lowered" \
  bash -c "! kubectl -n '$APP' get pvc probe -o jsonpath='{.status.allocatedResourceStatuses.storage}' | grep -q Infeasible"
until_ok 180 "PVC probe reports the lowered request, 640Mi" \
  quantity_is 640Mi -n "$APP" get pvc probe -o jsonpath='{.status.capacity.storage}'
ok "refused once with a reason; a lowered request clears it and is carried out"

step "WaitForFirstConsumer with capacity: too large stays Pending, then fits once space is freed"
room=$(bytes "$(cap_of)")
filler=$(( room * 6 / 10 / 1048576 ))Mi
echo "room for new volumes on $node: $room bytes; filler and big claims: $filler each"
claim filler "$filler"
pod_on filler filler
ready filler
capacity_below() { [ "$(bytes "$(cap_of)")" -lt "$1" ]; }
until_ok 60 "the capacity drops below the second claim" capacity_below $(( room * 6 / 10 ))
claim big "$filler"
pod_on big big
until_ok 90 "pod big reported unschedulable for storage" \
  bash -c "kubectl -n '$APP' get pod big -o jsonpath='{.status.conditions[?(@.type==\"PodScheduled\")].message}' | grep -q 'enough free storage'"
echo "big: $(kubectl -n "$APP" get pod big -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')"
[ "$(kubectl -n "$APP" get pvc big -o jsonpath='{.status.phase}')" = Pending ] || die "claim big is not Pending"
t_free=$(date +%s.%N)
kubectl -n "$APP" delete pod filler --wait=true >/dev/null
kubectl -n "$APP" delete pvc filler --wait=true >/dev/null
ready big 180
timing "space freed -> waiting pod Running" "$(elapsed "$t_free")"
kubectl -n "$APP" delete pod big --wait=true >/dev/null
kubectl -n "$APP" delete pvc big --wait=true >/dev/null
ok "a claim larger than the room stayed Pending ('enough free storage') and was placed after space was freed"

step "the node plugin's pod is deleted while a workload has its volume mounted"
plugin=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=node --field-selector "spec.nodeName=$node" -o name)
kubectl -n "$NS" delete "$plugin" --wait=false >/dev/null
t_plugin=$(date +%s.%N)
# The workload writes every 2 s until a new plugin pod is Ready; each write notes whether any
# thinpool-csi container on the node was ready just before it. At least one must have been made
# while none was: the plugin down, not merely terminating.
plugin_up() {
  kubectl -n "$NS" get pods -l app.kubernetes.io/component=node --field-selector "spec.nodeName=$node" \
    -o jsonpath='{.items[*].status.containerStatuses[?(@.name=="thinpool-csi")].ready}' | grep -q true
}
new_plugin_ready() {
  kubectl -n "$NS" get pods -l app.kubernetes.io/component=node --field-selector "spec.nodeName=$node" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    grep -v "^${plugin#pod/} " | grep -q ' True$'
}
writes=0 writes_down=0 deadline=$(( $(date +%s) + $(patient 180) ))
until new_plugin_ready; do
  [ "$(date +%s)" -lt "$deadline" ] || die "no new plugin pod Ready $(patient 180) s after the old one was deleted"
  up=1; plugin_up || up=0
  writes=$((writes + 1))
  kubectl -n "$APP" exec writer -- sh -c "echo during-restart-$writes >> /data/log && sync" ||
    die "the workload could not write while the plugin restarted (write $writes)"
  [ "$up" = 1 ] || writes_down=$((writes_down + 1))
  sleep 2
done
timing "plugin pod deleted -> new one Ready" "$(elapsed "$t_plugin")"
echo "writes during the restart: $writes, of which $writes_down with no thinpool-csi container ready"
[ "$writes_down" -ge 1 ] || die "no write happened while the plugin was down ($writes writes, all with a plugin container ready)"
watch_until 60 "ThinPool $node rw again" '{.status.mode}' rw thinpool "$node"
[ "$(kubectl -n "$APP" exec writer -- grep -c during-restart /data/log)" = "$writes" ] ||
  die "the $writes writes made during the restart are not all there"
ok "the workload wrote $writes times while the plugin restarted ($writes_down with the plugin down); the new plugin pod is Ready and the pool rw"

step "the controller's leader pod is deleted: capacity keeps following the pools"
lease_holder() { kubectl -n "$NS" get lease thinpool-csi-controller -o jsonpath='{.spec.holderIdentity}'; }
leader=$(lease_holder)
[ -n "$leader" ] || die "the Lease thinpool-csi-controller has no holder"
t_failover=$(date +%s.%N)
kubectl -n "$NS" delete pod "$leader" --wait=false >/dev/null
until_ok 120 "another replica holds the Lease" bash -c "h=\$(kubectl -n '$NS' get lease thinpool-csi-controller -o jsonpath='{.spec.holderIdentity}'); [ -n \"\$h\" ] && [ \"\$h\" != '$leader' ]"
timing "leader pod deleted -> new leader" "$(elapsed "$t_failover")"
echo "leader $leader -> $(lease_holder)"
before_cap=$(cap_of)
claim after-failover 256Mi
pod_on after-failover after-failover
ready after-failover
capacity_changed() { [ "$(cap_of)" != "$1" ]; }
until_ok 60 "the new leader updates capacity after a pool change" capacity_changed "$before_cap"
ok "capacity followed a new volume after the failover"

step "helm upgrade with the same chart"
helm_retrying upgrade "$RELEASE" charts/thinpool-csi -n "$NS" --reuse-values --wait --timeout "$(patient 300)s" >/dev/null || die "helm upgrade"
watch_until 60 "ThinPool $node rw" '{.status.mode}' rw thinpool "$node"
kubectl -n "$APP" exec writer -- grep -q changed-after-snapshot /data/hello || die "data unreadable after the upgrade"
ok "upgraded in place; volumes still mounted and readable"

step "helm uninstall with volumes present loses nothing; a reinstall finds them"
"$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout "$(patient 180)s" >/dev/null || die "helm uninstall"
kubectl -n "$APP" exec writer -- sh -c 'echo while-uninstalled >> /data/log && sync' || die "the mounted volume stopped working without the driver"
helm_retrying install "$RELEASE" charts/thinpool-csi -n "$NS" --wait --timeout "$(patient 300)s" "${install_values[@]}" >/dev/null ||
  die "helm install after uninstall"
watch_until 120 "ThinPool $node rw after the reinstall" '{.status.mode}' rw thinpool "$node"
pod_on reread data
ready reread
[ "$(kubectl -n "$APP" exec reread -- tail -1 /data/log)" = while-uninstalled ] || die "the data written while uninstalled is not there"
kubectl -n "$APP" exec reread -- grep -q changed-after-snapshot /data/hello || die "the data written before the uninstall is gone"
ok "reinstalled: the volume mounts again in a new pod with everything written before and during"

step "delete everything; the pools return to their first counts"
kubectl delete namespace "$APP" --wait=true --timeout="$(patient 300)s" >/dev/null || die "deleting the workload namespace"
for n in $nodes; do
  until_ok 120 "ThinPool $n back to ${baseline[$n]} volumes/snapshots" \
    bash -c "[ \"\$(kubectl get thinpool '$n' -o jsonpath='{.status.volumes}/{.status.snapshots}')\" = '${baseline[$n]}' ]"
done
kubectl get thinpools
ok "volumes and snapshots deleted"

echo
echo "timings (emulated 2-vCPU VM unless said otherwise):"
printf '  %s\n' "${timings[@]}"
echo "cluster: $passed passed, 0 failed ($(( $(date +%s) - START )) s)"
