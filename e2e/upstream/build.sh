#!/usr/bin/env bash
# Builds Kubernetes' own storage e2e suite and what it needs, from the Go module proxy, into
# target/upstream/bin/:
#   e2e.test  `go test -c k8s.io/kubernetes/test/e2e` at v1.36.3 (the release the VM cluster runs)
#   agnhost   k8s.io/kubernetes/test/images/agnhost, the suite's helper binary (its image: images.sh)
#   ginkgo    github.com/onsi/ginkgo/v2/ginkgo at v2.28.1, the version Kubernetes v1.36.3 pins
# from this folder's module (go.mod: Kubernetes v1.36.3 with its 33 staging modules replaced by
# their v0.36.3 releases, as e2e/cluster/kube does; deps.go names what e2e_test.go imports). The
# version strings are set as build.sh sets them for the cluster binaries, so the suite reports
# v1.36.3 and compares it with the API server's. Static, -trimpath, stripped; an output made from
# the same go.mod, go.sum, this script and Go version is skipped (FORCE=1 rebuilds).
# `build.sh agnhost` builds agnhost alone (e2e/cluster/images.sh makes its image from it).
# Never run this while the test VM runs: it takes both cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$root/target/upstream/bin"
mkdir -p "$bin"

KUBE_VERSION=v1.36.3
KUBE_BUILD_DATE=2026-07-22T18:07:38Z # as e2e/cluster/build.sh: the tag's time on the module proxy
export CGO_ENABLED=0

# shellcheck source=e2e/cluster/step.sh
. "$root/e2e/cluster/step.sh"
inputs=$(inputs_of "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" -- "$(go env GOVERSION)")

major=${KUBE_VERSION#v}
major=${major%%.*}
minor=${KUBE_VERSION#v*.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$KUBE_BUILD_DATE"
done

build_e2e_test() {
	if fresh "$bin/e2e.test" "$inputs"; then
		echo "up to date: e2e.test"
		return
	fi
	(cd "$here" && go test -c -trimpath -ldflags "$ldflags" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e)
	made "$bin/e2e.test" "$inputs"
}

build_tools() {
	local cmd pkg
	for cmd in "$@"; do
		case $cmd in
		agnhost) pkg=k8s.io/kubernetes/test/images/agnhost ;;
		ginkgo) pkg=github.com/onsi/ginkgo/v2/ginkgo ;;
		esac
		if fresh "$bin/$cmd" "$inputs"; then
			echo "up to date: $cmd"
			continue
		fi
		(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "$pkg")
		made "$bin/$cmd" "$inputs"
	done
}

case ${1:-all} in
agnhost) build_tools agnhost ;;
all)
	total=$SECONDS
	step "e2e.test (k8s.io/kubernetes/test/e2e $KUBE_VERSION)" build_e2e_test
	step "agnhost and ginkgo" build_tools agnhost ginkgo
	echo "==> all: $((SECONDS - total)) s, in $bin"
	;;
*)
	echo "usage: e2e/upstream/build.sh [all|agnhost]" >&2
	exit 2
	;;
esac
