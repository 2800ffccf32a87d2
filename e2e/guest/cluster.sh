#!/bin/bash
# Runs in the VM guest (as root, the host's root read-only over 9p, real device-mapper): brings up a
# one-node Kubernetes cluster from the binaries e2e/cluster/build.sh made and the images
# e2e/cluster/images.sh made, installs the snapshot CRDs and snapshot-controller and thinpool-csi
# the way docs/install.md says, then runs the cluster suite (e2e/cluster/run.sh) against it.
#
# The guest has no network device: a dummy interface holds the node's address and the default
# route; node, pod and service ranges come from 198.18.0.0/15 and exist only in this kernel.
#   node 198.18.0.2   pods 198.18.128.0/17 (bridge cni0)   services 198.19.0.0/16
#
# Environment (set by `thinpool-e2e cluster` and `thinpool-e2e upstream`):
#   THINPOOL_E2E_WS     the workspace (the repository), as seen in the guest
#   THINPOOL_E2E_KROOT  the unpacked kernel package (for modprobe -d)
#   THINPOOL_E2E_UPSTREAM_SHARDS  when set, Kubernetes' storage e2e suite runs these shards
#                       (e2e/upstream/guest.sh) instead of the cluster suite
set -euo pipefail
WS=$THINPOOL_E2E_WS
BIN=$WS/target/cluster/bin
MANIFESTS=$WS/target/cluster/manifests
export PATH=$BIN:$PATH
NODE=thinpool-e2e
NODE_IP=198.18.0.2
SERVICE_RANGE=198.19.0.0/16
POD_RANGE=198.18.128.0/17
E2E=/var/lib/thinpool-e2e
PKI=$E2E/pki
LOGS=/var/log/cluster
T0=$(date +%s)

say() { echo "cluster: [$(($(date +%s) - T0)) s] $*"; }
# On any failure: the last lines of every cluster process's log (klog's info lines left out).
show_logs() {
	echo "--- cluster processes (last lines of each log in $LOGS)"
	local log
	for log in "$LOGS"/*.log; do
		[[ -e $log ]] || continue
		echo "--- $(basename "$log")"
		grep -v '^I[0-9]' "$log" | tail -20
	done
	echo "--- kubelet.log: plugin registration"
	grep -E 'plugin_watcher|RegisterPlugin|reconciler.go|csi_plugin|nodeinfomanager' "$LOGS/kubelet.log" | tail -30
	free -m
}
# Every log (cluster processes and pods) is copied to the run's share, which outlives the guest:
# target/vm/runs/cluster/logs/ on the host.
keep_logs() {
	mkdir -p "$THINPOOL_E2E_OUT/logs"
	cp -r "$LOGS" /var/log/pods "$THINPOOL_E2E_OUT/logs/" 2>/dev/null || true
}
# Where the guest's two emulated CPUs went: busy and idle time (since boot, and during the suite),
# then each process's CPU seconds, its own and those of the children it waited for (the suite's
# kubectl calls are counted under this script).
cpu_busy_idle() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
cpu_report() {
	local hz busy idle
	hz=$(getconf CLK_TCK)
	read -r busy idle < <(cpu_busy_idle)
	echo "--- guest CPU: $(nproc) vCPUs, up $(cut -d' ' -f1 /proc/uptime) s"
	awk -v hz="$hz" -v b="$busy" -v i="$idle" -v b0="${SUITE_CPU[0]:-$busy}" -v i0="${SUITE_CPU[1]:-$idle}" 'BEGIN {
		printf "since boot: busy %.0f s, idle %.0f s\n", b / hz, i / hz
		if (b > b0) printf "during the suite: busy %.0f s, idle %.0f s (%.0f%% busy)\n", (b - b0) / hz, (i - i0) / hz, 100 * (b - b0) / (b - b0 + i - i0) }'
	echo "--- CPU seconds by process (own + waited-for children), the 25 largest"
	python3 - "$hz" <<-'PY'
		import os, sys
		hz = int(sys.argv[1])
		rows = []
		for pid in filter(str.isdigit, os.listdir("/proc")):
		    try:
		        stat = open(f"/proc/{pid}/stat").read()
		        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
		    except OSError:
		        continue
		    f = stat[stat.rindex(")") + 2:].split()
		    own, kids = (int(f[11]) + int(f[12])) / hz, (int(f[13]) + int(f[14])) / hz
		    name = os.path.basename(argv[0].decode(errors="replace")) if argv[0] else stat[stat.index("(") + 1:stat.rindex(")")]
		    if name in ("bash", "sh", "python3") and len(argv) > 1:
		        name += " " + os.path.basename(argv[1].decode(errors="replace"))
		    rows.append((own + kids, own, kids, pid, name))
		for total, own, kids, pid, name in sorted(rows, reverse=True)[:25]:
		    print(f"{total:8.1f} s  own {own:8.1f}  children {kids:8.1f}  {pid:>6}  {name}")
	PY
}
on_exit() {
	local rc=$?
	keep_logs
	cpu_report
	[[ $rc == 0 ]] || { say "failed (exit $rc); all logs: $THINPOOL_E2E_OUT/logs"; show_logs; }
}
trap on_exit EXIT

# --- the node: writable /var/lib and /var/log, cgroup v2, shared mounts, modules, addresses
hostname "$NODE"
mount -t tmpfs -o mode=0755 varlib /var/lib
mount -t tmpfs -o mode=0755 varlog /var/log
mkdir -p "$E2E" "$PKI" "$LOGS" /var/lib/kubelet /var/log/pods /var/lib/cni/net.d
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpuset +cpu +io +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
mount --make-rshared /
for m in overlay br_netfilter bridge veth dummy nf_conntrack nf_nat nf_tables nft_compat nft_chain_nat \
	nft_ct ip_tables ip6_tables iptable_nat iptable_filter ip6table_nat ip6table_filter xt_conntrack \
	xt_MASQUERADE xt_addrtype xt_comment xt_mark xt_nat xt_tcpudp xt_statistic xt_multiport xt_physdev \
	xt_nfacct xt_set xt_recent; do
	modprobe -d "$THINPOOL_E2E_KROOT" "$m" 2>/dev/null || echo "cluster: kernel module $m not loaded"
done
ip link add dummy0 type dummy
ip link set dummy0 up
ip addr add "$NODE_IP/16" dev dummy0
ip route add default dev dummy0
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1

# --- certificates: one CA, EC P-256 keys (quick to make under emulation)
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key" 2>/dev/null; }
# cert NAME SUBJECT [SANS]: a certificate signed by the CA.
cert() {
	key "$1"
	printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$PKI/$1.ext"
	[[ -z ${3:-} ]] || echo "subjectAltName=$3" >>"$PKI/$1.ext"
	openssl req -new -key "$PKI/$1.key" -subj "$2" 2>/dev/null |
		openssl x509 -req -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 7 \
			-extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
}
key ca
openssl req -x509 -new -key "$PKI/ca.key" -subj /CN=thinpool-e2e-ca -days 7 -out "$PKI/ca.crt"
cert apiserver /CN=kube-apiserver \
	"IP:198.19.0.1,IP:$NODE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=thinpool-e2e-admin"
cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert kubelet "/O=system:nodes/CN=system:node:$NODE" "IP:$NODE_IP,DNS:$NODE"
cert controller-manager /CN=system:kube-controller-manager
cert scheduler /CN=system:kube-scheduler
cert proxy /CN=system:kube-proxy
key service-accounts
openssl pkey -in "$PKI/service-accounts.key" -pubout -out "$PKI/service-accounts.pub"
kubeconfig() {
	cat >"$E2E/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://$NODE_IP:6443", certificate-authority: $PKI/ca.crt}}]
users: [{name: $1, user: {client-certificate: $PKI/$1.crt, client-key: $PKI/$1.key}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $1}}]
current-context: e2e
EOF
}
for c in admin kubelet controller-manager scheduler proxy; do kubeconfig "$c"; done
chmod 0600 "$E2E"/*.kubeconfig
export KUBECONFIG=$E2E/admin.kubeconfig

# background NAME COMMAND...: a cluster process, its output in $LOGS/NAME.log.
background() {
	local name=$1
	shift
	"$@" >"$LOGS/$name.log" 2>&1 &
}
# wait_for SECONDS WHAT COMMAND...: retries COMMAND every second.
wait_for() {
	local limit=$1 what=$2 deadline
	shift 2
	deadline=$(($(date +%s) + limit))
	while (($(date +%s) < deadline)); do
		timeout 60 "$@" >/dev/null 2>&1 && return 0
		sleep 1
	done
	say "$what did not happen within $limit s"
	return 1
}

# --- control plane
background etcd etcd --name e2e --data-dir /var/lib/etcd --log-level warn \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster e2e=http://127.0.0.1:2380
background kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
	--advertise-address="$NODE_IP" --secure-port=6443 --allow-privileged=true \
	--service-cluster-ip-range="$SERVICE_RANGE" \
	--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC \
	--kubelet-client-certificate="$PKI/apiserver-kubelet.crt" --kubelet-client-key="$PKI/apiserver-kubelet.key" \
	--kubelet-preferred-address-types=InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$PKI/service-accounts.pub" \
	--service-account-signing-key-file="$PKI/service-accounts.key"
wait_for 300 "the API server answering" kubectl get --raw /readyz
say "API server ready ($(kubectl version -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -1))"
# Controllers for what this cluster never has (quotas, autoscalers, jobs, cloud load balancers and
# routes, CSRs: every certificate is made above, DRA) are left off: each costs the emulated CPUs
# watches and periodic passes (the quota controller's API discovery every 30 s). Everything the chart
# and the suites use (deployments, daemon sets, stateful sets (the upstream group snapshot specs),
# PDBs, PV binding, expansion, attach/detach, garbage collection, namespaces, service accounts and
# tokens) stays on.
unused_controllers=(resourcequota horizontal-pod-autoscaler cronjob job ttl-after-finished
	replicationcontroller endpointslice-mirroring service-lb node-route cloud-node-lifecycle
	certificatesigningrequest-approving certificatesigningrequest-cleaner certificatesigningrequest-signing
	legacy-serviceaccount-token-cleaner storage-version-migrator storageversion-garbage-collector
	resourceclaim device-taint-eviction resourcepoolstatusrequest podcertificaterequest-cleaner
	podgroup-protection)
controllers="*$(printf ',-%s-controller' "${unused_controllers[@]}")"
background kube-controller-manager kube-controller-manager --kubeconfig="$E2E/controller-manager.kubeconfig" \
	--controllers="$controllers" \
	--leader-elect=false --use-service-account-credentials=true \
	--service-account-private-key-file="$PKI/service-accounts.key" --root-ca-file="$PKI/ca.crt" \
	--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
	--allocate-node-cidrs=false --bind-address=127.0.0.1
background kube-scheduler kube-scheduler --kubeconfig="$E2E/scheduler.kubeconfig" --leader-elect=false \
	--bind-address=127.0.0.1

# --- containerd, its image store on /dev/vda: every image the cluster runs, imported and unpacked by
# e2e/cluster/images.sh (nothing is pulled; the disk is copy-on-write, so every run starts alike)
cat >"$E2E/containerd.toml" <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "thinpool-csi.local/pause:busybox"
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "/var/lib/cni/net.d"
EOF
cat >/var/lib/cni/net.d/10-e2e.conflist <<EOF
{"cniVersion": "1.0.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_RANGE"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
modprobe -d "$THINPOOL_E2E_KROOT" virtio_blk
wait_for 30 "the image disk /dev/vda" test -b /dev/vda
mkdir -p /var/lib/containerd
mount -t ext4 /dev/vda /var/lib/containerd
# The driver's state directory (the chart's stateDir: records and the loop pool's files) on its
# own disk, as on a real node: in the guest's memory it would share a tmpfs with everything else.
wait_for 30 "the pool disk /dev/vdb" test -b /dev/vdb
mkdir -p /var/lib/thinpool-csi
mount -t ext4 /dev/vdb /var/lib/thinpool-csi
background containerd containerd --config "$E2E/containerd.toml"
wait_for 60 "containerd answering" ctr version
say "containerd ready: $(ctr -n k8s.io images ls -q | grep -cv '^sha256:') images"

# --- kubelet and kube-proxy
cat >"$E2E/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: ""
localStorageCapacityIsolation: false
volumePluginDir: /var/lib/kubelet/volumeplugins
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
# The images were imported, not pulled: never collect them. The guest's disk is memory.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
# Pods are synced every 20 s instead of every minute: the kubelet notices a grown claim of a
# running pod (online expansion) at its next sync of that pod.
syncFrequency: 20s
EOF
background kubelet kubelet --config="$E2E/kubelet.yaml" --kubeconfig="$E2E/kubelet.kubeconfig" \
	--hostname-override="$NODE" --node-ip="$NODE_IP" --root-dir=/var/lib/kubelet --v=2
background kube-proxy kube-proxy --kubeconfig="$E2E/proxy.kubeconfig" --hostname-override="$NODE" \
	--cluster-cidr="$POD_RANGE" --proxy-mode=iptables --conntrack-max-per-core=0
say "kubelet and kube-proxy started"
wait_for 300 "node $NODE Ready" kubectl wait --for=condition=Ready "node/$NODE" --timeout=1s
say "node $NODE Ready"

# --- what docs/install.md asks for before the chart: the snapshot and group snapshot CRDs and the
# snapshot-controller with distributed snapshotting and group snapshots (external-snapshotter
# v8.6.0's own manifests, its image our build)
kubectl apply -f "$MANIFESTS/snapshot-crds/" >/dev/null
kubectl apply -f "$MANIFESTS/snapshot-controller/" >/dev/null
kubectl -n kube-system patch deployment snapshot-controller --type=json -p '[
  {"op": "replace", "path": "/spec/replicas", "value": 1},
  {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "registry.k8s.io/sig-storage/snapshot-controller:v8.6.0"},
  {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--enable-distributed-snapshotting"},
  {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--feature-gates=CSIVolumeGroupSnapshot=true"}]' >/dev/null
# Distributed snapshotting reads Nodes: the rule the stock RBAC leaves commented out (docs/install.md).
kubectl patch clusterrole snapshot-controller-runner --type=json -p '[
  {"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}}]' >/dev/null
say "snapshot CRDs and snapshot-controller applied"
# Helm validates the chart against the API server's OpenAPI document, which the emulated API
# server takes long to build the first time (a cold request once timed out inside helm install).
wait_for 300 "the API server's OpenAPI document" kubectl get --raw /openapi/v2 --request-timeout=120s
say "OpenAPI document served"

# --- Kubernetes' storage e2e suite instead of ours (`thinpool-e2e upstream`), which installs the
# chart itself
if [[ -n ${THINPOOL_E2E_UPSTREAM_SHARDS:-} ]]; then
	read -r -a SUITE_CPU < <(cpu_busy_idle)
	bash "$WS/e2e/upstream/guest.sh"
	say "done"
	exit 0
fi

# --- the cluster suite, which installs the chart with helm
export THINPOOL_E2E_WORKLOAD_IMAGE=thinpool-csi.local/busybox:debian
# Everything under emulation takes minutes: a pod starts in 1-2 min, a snapshot is ready in 2-3.
export THINPOOL_E2E_PATIENCE=4
export THINPOOL_E2E_NODE_DIAGNOSTICS="bash $WS/e2e/guest/node-diagnostics.sh"
# The node plugin's scrape with orphaned and missing volumes, for e2e/alerts/scrapes.
export THINPOOL_E2E_SCRAPES="$THINPOOL_E2E_OUT/metrics"
read -r -a SUITE_CPU < <(cpu_busy_idle)
bash "$WS/e2e/cluster/run.sh"
say "done"
