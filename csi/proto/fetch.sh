#!/usr/bin/env bash
# csi/proto/csi.proto is the CSI spec's own file, byte for byte, from the spec's Go module
# (github.com/container-storage-interface/spec, served by the Go module proxy).
#   bash csi/proto/fetch.sh          copy it from the module at CSI_SPEC_VERSION
#   bash csi/proto/fetch.sh --check  fail when the committed file differs from the module's
set -euo pipefail
cd "$(dirname "$0")"
# v1.12.0, not the newest (v1.14.0): v1.13.0 removed VolumeCondition (an alpha API; its fields are
# `reserved 2` since), which the driver serves in NodeGetVolumeStats, ControllerGetVolume and
# ListVolumes and the kubelet v1.36 reads (it is built against spec v1.9.0): taking v1.13 or v1.14
# would change the wire format of what the driver serves. The GroupController and SnapshotMetadata
# messages are the same in v1.12.0 and v1.14.0 (only alpha additions differ), and both sidecars
# (external-provisioner v6.3.0, external-snapshotter v8.6.0) are built against v1.12.0.
CSI_SPEC_VERSION=v1.12.0
module=github.com/container-storage-interface/spec@$CSI_SPEC_VERSION
dir=$(GOFLAGS=-mod=mod go mod download -json "$module" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
if [[ ${1:-} == --check ]]; then
	if ! cmp -s "$dir/csi.proto" csi.proto; then
		echo "csi/proto/csi.proto differs from csi.proto of $module: run bash csi/proto/fetch.sh" >&2
		exit 1
	fi
	echo "ok   csi/proto/csi.proto is csi.proto of $module"
else
	install -m 0644 "$dir/csi.proto" csi.proto
	echo "csi/proto/csi.proto: csi.proto of $module"
fi
