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
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${KUBECONFIG:-}" ]; then
  echo "cluster suite: skipped: KUBECONFIG is not set. Point it at a cluster (e.g. kind) to run it;" \
       "see e2e/cluster/README.md."
  exit 0
fi
command -v kubectl >/dev/null || { echo "cluster suite: kubectl is not installed" >&2; exit 1; }

NS=${THINPOOL_E2E_NAMESPACE:-thinpool-csi-e2e}
APP=thinpool-e2e-app
RELEASE=${THINPOOL_E2E_RELEASE:-thinpool-csi}
# shellcheck source=e2e/tools.sh
. e2e/tools.sh
ensure_helm
START=$(date +%s)
passed=0

step() { echo; echo "== $*"; }
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
  local p
  for p in $(kubectl -n "$NS" get pods -l app.kubernetes.io/component=node -o name 2>/dev/null || true); do
    show kubectl -n "$NS" logs "$p" -c thinpool-csi --tail=30
  done
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
# until SECONDS DESCRIPTION COMMAND...: retry COMMAND every second until it succeeds.
until_ok() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what (waited ${limit}s)"
    sleep 1
  done
}
installed=0   # set once the suite runs helm: only then is there a release of its own to remove
created_ns=0  # the suite created $NS
cleanup() {
  [ "$installed" = 1 ] || return 0
  kubectl delete namespace "$APP" --ignore-not-found --wait=true --timeout=180s >/dev/null 2>&1 ||
    echo "cleanup: namespace $APP is still terminating after 180 s" >&2
  if [ "${THINPOOL_E2E_KEEP:-0}" = 1 ]; then
    echo "cleanup: keeping release $RELEASE in namespace $NS (THINPOOL_E2E_KEEP=1)" >&2
    return 0
  fi
  "$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout 3m >/dev/null 2>&1 ||
    echo "cleanup: helm uninstall $RELEASE -n $NS failed or timed out" >&2
  # A namespace the user named and made beforehand is theirs to keep.
  if [ "$created_ns" = 1 ] || [ "$NS" = thinpool-csi-e2e ]; then
    kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 ||
      echo "cleanup: namespace $NS is still terminating after 120 s" >&2
  fi
}
trap cleanup EXIT
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
"$HELM" upgrade --install "$RELEASE" charts/thinpool-csi -n "$NS" --create-namespace --wait --timeout 5m \
  "${set_image[@]}" \
  --set "nodeGroups[0].name=e2e" --set "nodeGroups[0].pool.kind=loop" \
  --set "nodeGroups[0].pool.loop.dataSize=${THINPOOL_E2E_LOOP_SIZE:-4Gi}" \
  --set controller.staleAfter=60 || die "helm install"
ok "helm install"

step "every node with a plugin has a rw ThinPool"
nodes=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=node -o jsonpath='{.items[*].spec.nodeName}')
[ -n "$nodes" ] || die "no node plugin pods"
for n in $nodes; do
  until_ok 120 "ThinPool $n in state rw" \
    bash -c "kubectl get thinpool '$n' -o jsonpath='{.status.mode}' | grep -qx rw"
done
kubectl get thinpools
counts_of() { kubectl get thinpool "$1" -o jsonpath='{.status.volumes}/{.status.snapshots}'; }
declare -A baseline
for n in $nodes; do baseline[$n]=$(counts_of "$n"); done
ok "ThinPools: $nodes"

step "capacity objects for every (class, node)"
classes=$(kubectl get storageclass -o jsonpath='{range .items[?(@.provisioner=="thinpool.csi.io")]}{.metadata.name}{" "}{end}')
want=$(( $(wc -w <<<"$nodes") * $(wc -w <<<"$classes") ))
until_ok 60 "$want CSIStorageCapacity objects" \
  bash -c "[ \$(kubectl -n '$NS' get csistoragecapacities -l app.kubernetes.io/managed-by=thinpool-csi-controller -o name | wc -l) -ge $want ]"
kubectl -n "$NS" get csistoragecapacities -l app.kubernetes.io/managed-by=thinpool-csi-controller \
  -o custom-columns=NAME:.metadata.name,CLASS:.storageClassName,CAPACITY:.capacity,MAX:.maximumVolumeSize
ok "$want capacity objects"

step "PVC -> pod -> write"
kubectl create namespace "$APP" >/dev/null
kubectl -n "$APP" apply -f - >/dev/null <<'EOF'
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
      image: busybox:1.36
      command: ["sh", "-c", "echo written-by-writer > /data/hello && sync && sleep 3600"]
      volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
EOF
kubectl -n "$APP" wait --for=condition=Ready pod/writer --timeout=180s >/dev/null || die "writer pod not Ready"
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
  containers: [{name: c, image: busybox:1.36, command: ["sleep", "3600"], volumeMounts: [{name: d, mountPath: /d}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: probe}}]
EOF
t_pool=""; t_cap=""; deadline=$(( $(date +%s) + 120 ))
while [ -z "$t_cap" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  [ -n "$t_pool" ] || { [ "$(allowed_of)" != "$before_pool" ] && t_pool=$(date +%s.%N); }
  [ -n "$t_pool" ] && [ "$(cap_of)" != "$before_cap" ] && t_cap=$(date +%s.%N)
  sleep 0.1
done
if [ -n "$t_cap" ]; then
  echo "capacity followed the ThinPool change within $(awk "BEGIN{printf \"%.1f\", $t_cap - $t_pool}") s" \
       "(polling every 0.1 s, kubectl round trips included)"
  ok "capacity object updated after a new volume"
else
  die "the CSIStorageCapacity for $node never changed after a new volume (ThinPool changed: ${t_pool:+yes})"
fi

step "snapshot -> restore"
if ! kubectl api-resources --api-group=snapshot.storage.k8s.io -o name | grep -q '^volumesnapshots'; then
  die "the snapshot CRDs are not installed (see e2e/cluster/README.md)"
fi
kubectl -n "$APP" apply -f - >/dev/null <<'EOF'
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap}
spec:
  volumeSnapshotClassName: thinpool-snapshots
  source: {persistentVolumeClaimName: data}
EOF
until_ok 120 "VolumeSnapshot ready" \
  bash -c "kubectl -n '$APP' get volumesnapshot snap -o jsonpath='{.status.readyToUse}' | grep -qx true"
kubectl -n "$APP" exec writer -- sh -c 'echo changed-after-snapshot > /data/hello && sync'
kubectl -n "$APP" apply -f - >/dev/null <<'EOF'
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
      image: busybox:1.36
      command: ["sleep", "3600"]
      volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: restored}}]
EOF
kubectl -n "$APP" wait --for=condition=Ready pod/reader --timeout=180s >/dev/null || die "reader pod not Ready"
got=$(kubectl -n "$APP" exec reader -- cat /data/hello)
[ "$got" = "written-by-writer" ] || die "restored volume holds '$got', not the snapshot's 'written-by-writer'"
ok "restored volume holds the snapshot's data (and not the later write)"

step "expand online"
kubectl -n "$APP" patch pvc data --type=merge -p '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}' >/dev/null
until_ok 180 "PVC data reports 1Gi" \
  bash -c "kubectl -n '$APP' get pvc data -o jsonpath='{.status.capacity.storage}' | grep -qx 1Gi"
size_kb=$(kubectl -n "$APP" exec writer -- df -k /data | awk 'NR==2 {print $2}')
[ "$size_kb" -gt 900000 ] || die "the filesystem is still ${size_kb} KiB after expansion"
ok "filesystem grew to ${size_kb} KiB while mounted"

step "delete everything; the pools return to their first counts"
kubectl delete namespace "$APP" --wait=true --timeout=180s >/dev/null || die "deleting the workload namespace"
for n in $nodes; do
  until_ok 120 "ThinPool $n back to ${baseline[$n]} volumes/snapshots" \
    bash -c "[ \"\$(kubectl get thinpool '$n' -o jsonpath='{.status.volumes}/{.status.snapshots}')\" = '${baseline[$n]}' ]"
done
kubectl get thinpools
ok "volumes and snapshots deleted"

echo
echo "cluster: $passed passed, 0 failed ($(( $(date +%s) - START )) s)"
