#!/usr/bin/env bash
# Builds the in-VM cluster's binaries from the Go module proxy into target/cluster/bin/:
#   Kubernetes v1.36.3 (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#   kube-proxy, kubectl) from e2e/cluster/kube/, etcd v3.6.8 from e2e/cluster/etcd/, and
#   containerd v2.4.2 (containerd, containerd-shim-runc-v2, ctr) with `go install`, and the CSI
#   sidecars the chart runs (csi-provisioner v6.3.0, csi-snapshotter and snapshot-controller v8.6.0)
#   from e2e/cluster/sidecars/.
# All static (CGO_ENABLED=0), -trimpath, stripped. A binary made from the same go.mod, go.sum,
# this script and Go version (the hash in BINARY.inputs) is skipped; FORCE=1 rebuilds everything.
# Go's build cache makes a forced rebuild cost only the links.
# `build.sh apiserver` builds only kube-apiserver, kubectl and etcd (the control-plane tier).
# Never run this while the test VM runs: it takes both cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$root/target/cluster/bin"
mkdir -p "$bin"

KUBE_VERSION=v1.36.3
KUBE_BUILD_DATE=2026-07-22T18:07:38Z # the tag's time on the module proxy, for reproducible output
CONTAINERD_VERSION=v2.4.2
PROVISIONER_VERSION=v6.3.0 # e2e/cluster/sidecars/go.mod pins the same
SNAPSHOTTER_VERSION=v8.6.0

export CGO_ENABLED=0

# shellcheck source=e2e/cluster/step.sh
. "$here/step.sh"
# go_inputs FILE...: what a binary is made from: FILEs, this script and the Go toolchain.
go_inputs() { inputs_of "$@" "${BASH_SOURCE[0]}" -- "$(go env GOVERSION)"; }

kube_major=${KUBE_VERSION#v}
kube_major=${kube_major%%.*}
kube_minor=${KUBE_VERSION#v*.}
kube_minor=${kube_minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION"
	kube_ldflags+=" -X $pkg.gitMajor=$kube_major"
	kube_ldflags+=" -X $pkg.gitMinor=$kube_minor"
	kube_ldflags+=" -X $pkg.gitTreeState=clean"
	kube_ldflags+=" -X $pkg.buildDate=$KUBE_BUILD_DATE"
done

# build_kube [CMD...]: the Kubernetes commands (all six when none is named).
build_kube() {
	local mod="$here/kube" todo=() cmd inputs
	inputs=$(go_inputs "$mod/go.mod" "$mod/go.sum")
	local cmds=("$@")
	((${#cmds[@]})) || cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
	for cmd in "${cmds[@]}"; do
		if fresh "$bin/$cmd" "$inputs"; then
			echo "up to date: $cmd"
		else
			todo+=("k8s.io/kubernetes/cmd/$cmd")
		fi
	done
	((${#todo[@]})) || return 0
	# One `go build` for all of them: the packages they share compile once, in parallel.
	(cd "$mod" && go build -trimpath -ldflags "$kube_ldflags" -o "$bin/" "${todo[@]}")
	for cmd in "${cmds[@]}"; do made "$bin/$cmd" "$inputs"; done
}

build_etcd() {
	local mod="$here/etcd" inputs
	inputs=$(go_inputs "$mod/go.mod" "$mod/go.sum" "$mod/main.go")
	if fresh "$bin/etcd" "$inputs"; then
		echo "up to date: etcd"
	else
		(cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
		made "$bin/etcd" "$inputs"
	fi
}

build_containerd() {
	local todo=() cmd inputs
	inputs=$(go_inputs)
	for cmd in containerd containerd-shim-runc-v2 ctr; do
		if fresh "$bin/$cmd" "$inputs"; then
			echo "up to date: $cmd"
		else
			todo+=("github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION")
		fi
	done
	((${#todo[@]})) || return 0
	# containerd has no replace lines, so `go install pkg@version` builds it with its own
	# go.mod/go.sum (checked against the checksum database). no_btrfs: no cgo headers needed.
	(cd "$root" && GOBIN="$bin" go install -trimpath -tags no_btrfs \
		-ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
		"${todo[@]}")
	for cmd in containerd containerd-shim-runc-v2 ctr; do made "$bin/$cmd" "$inputs"; done
}

build_sidecars() {
	local mod="$here/sidecars" todo=() cmd pkg inputs
	declare -A pkgs=(
		[csi-provisioner]=github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
		[csi-snapshotter]=github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
		[snapshot-controller]=github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
	)
	inputs=$(go_inputs "$mod/go.mod" "$mod/go.sum")
	for cmd in csi-provisioner csi-snapshotter snapshot-controller; do
		if fresh "$bin/$cmd" "$inputs"; then
			echo "up to date: $cmd"
		else
			todo+=("$cmd")
		fi
	done
	for cmd in "${todo[@]}"; do
		pkg=${pkgs[$cmd]}
		# Their own version strings (main.version), as their release images carry them.
		case $cmd in
		csi-provisioner) version=$PROVISIONER_VERSION ;;
		*) version=$SNAPSHOTTER_VERSION ;;
		esac
		(cd "$mod" && go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$bin/$cmd" "$pkg")
		made "$bin/$cmd" "$inputs"
	done
}

# The snapshot CRDs and the snapshot-controller's RBAC and Deployment, from the modules the
# sidecars were built from (what a user applies from the external-snapshotter repository).
copy_manifests() {
	local mod="$here/sidecars" client snapshotter dest="$root/target/cluster/manifests"
	# Only the two modules' sources (no build): CI's apiserver tier needs the CRDs too.
	(cd "$mod" && go mod download github.com/kubernetes-csi/external-snapshotter/client/v8 \
		github.com/kubernetes-csi/external-snapshotter/v8)
	client=$(cd "$mod" && go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)
	snapshotter=$(cd "$mod" && go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/v8)
	rm -rf "$dest"
	mkdir -p "$dest/snapshot-crds" "$dest/snapshot-controller"
	cp "$client"/config/crd/snapshot.storage.k8s.io_*.yaml "$client"/config/crd/groupsnapshot.storage.k8s.io_*.yaml \
		"$dest/snapshot-crds/"
	cp "$snapshotter"/deploy/kubernetes/snapshot-controller/{rbac,setup}-snapshot-controller.yaml \
		"$dest/snapshot-controller/"
	chmod -R u+w "$dest"
}

total=$SECONDS
case ${1:-all} in
# The control-plane tier (e2e/tests/apiserver) needs only these: CI builds no more.
apiserver)
	step "kube-apiserver and kubectl $KUBE_VERSION" build_kube kube-apiserver kubectl
	step "etcd" build_etcd
	step "snapshot manifests" copy_manifests
	;;
all)
	step "kubernetes $KUBE_VERSION" build_kube
	step "etcd" build_etcd
	step "containerd $CONTAINERD_VERSION" build_containerd
	step "sidecars" build_sidecars
	step "snapshot manifests" copy_manifests
	;;
*)
	echo "usage: e2e/cluster/build.sh [all|apiserver]" >&2
	exit 2
	;;
esac
echo "==> $((SECONDS - total)) s, in $bin"
