# shellcheck shell=bash
# The shards of Kubernetes' storage e2e suite that `e2e/run.sh upstream` runs, each short enough
# for one run in the emulated VM (at most 75 minutes), and what every shard leaves out. Sourced by
# e2e/upstream/run.sh (host) and e2e/upstream/guest.sh (guest).

# Every spec of this driver is named "External Storage [Driver: thinpool.csi.io] [Testpattern: P]
# [tags] SUITE ...": a shard is one test suite (SUITE, as the spec names spell it), or part of one.
SPEC_PREFIX='External Storage \[Driver: thinpool\.csi\.io\] \[Testpattern: [^]]*\]'

# Left out of every shard (the reasons, spec by spec, are in e2e/upstream/README.md):
#   [Disruptive]          restarts the kubelet or the node over SSH; the VM cluster has no SSH
#   [Feature:SELinux*]    the VM's kernel runs without SELinux
#   [Feature:Windows]     ntfs on Windows nodes; thinpool-csi runs on Linux nodes only
#   snapshotmetadata      the client pod runs `go install ...@main` (no internet here); issue 26
#   [Serial] (main shards) these run alone, in the `serial` shard
BASE_SKIP='\[Disruptive\]|\[Feature:SELinux|\[Feature:Windows\]|\] snapshotmetadata'

# All shards, in the order `e2e/run.sh upstream` runs them when none is named.
SHARDS=(provisioning volumes volumeMode volume-expand snapshottable group-snapshots capacity multiVolume-1
	multiVolume-2 subPath fsgroupchangepolicy ephemeral volumeIO read-write-once-pod topology other serial)

# suite NAME[|NAME...] [PATTERN-REGEX]: the main-pass shard of those test suites (optionally only
# test patterns matching PATTERN-REGEX).
suite() {
	FOCUS="External Storage \\[Driver: thinpool\\.csi\\.io\\] \\[Testpattern: ${2:-[^]]*}\\]( \\[[^]]*\\])* ($1) "
	SKIP="$BASE_SKIP|\\[Serial\\]"
}

# shard_args NAME: sets FOCUS, SKIP and LIMIT_MIN (minutes) for e2e.test; fails on an unknown name.
shard_args() {
	LIMIT_MIN=75
	case $1 in
	provisioning | volumes | volumeMode | volume-expand | snapshottable | capacity | fsgroupchangepolicy | \
		ephemeral | volumeIO | read-write-once-pod | topology | subPath)
		suite "$1" ;;
	# 45 specs, 36 of them on dynamic volumes: split by test pattern so each part fits in one run.
	multiVolume-1) suite multiVolume 'Dynamic PV \((block|filesystem) volmode\)' ;;
	multiVolume-2) suite multiVolume '(Dynamic PV \((ext4|xfs)\)|Pre-provisioned PV [^]]*)' ;;
	# VolumeGroupSnapshots (issue 25); the VolumeGroupSnapshotClass specs are [Serial]: `serial`.
	group-snapshots) suite 'volumegroupsnapshottable|volumegroupsnapshottable-stress' ;;
	# The suites with one to ten specs that need a capability the driver does not claim
	# (VolumeAttributesClass, volume limits) or are stress and performance runs.
	other) suite 'volumeLimits|volume-modify|volume-modify-stress|volume-lifecycle-performance|pvc-deletion-performance|volume-stress|snapshottable-stress|volumegroupsnapshotclass' ;;
	# The [Serial] specs that need neither a second node nor SSH ([Disruptive] stays out).
	serial)
		FOCUS="${SPEC_PREFIX}.*\\[Serial\\]"
		SKIP=$BASE_SKIP
		;;
	# About ten specs, one from each of the main suites: `VM_CLUSTER=1 e2e/run.sh test` runs it.
	smoke)
		FOCUS=$SMOKE_FOCUS
		SKIP="$BASE_SKIP|\\[Serial\\]"
		LIMIT_MIN=45
		;;
	*)
		echo "upstream: no shard named '$1'; the shards are: ${SHARDS[*]} smoke" >&2
		return 1
		;;
	esac
}

# The smoke shard's specs, one from each main suite but volumeIO (its 100 MiB writes take long
# under emulation), each named whole after the driver (as in specs.txt).
SMOKE_SPECS=(
	'[Testpattern: Dynamic PV (default fs)] provisioning should provision storage with snapshot data source [Feature:VolumeSnapshotDataSource]'
	'[Testpattern: Dynamic PV (ext4)] volumes should store data'
	'[Testpattern: Dynamic PV (block volmode)] volumeMode should not mount / map unused volumes in a pod [LinuxOnly]'
	'[Testpattern: Dynamic PV (default fs)(allowExpansion)] volume-expand should resize volume when PVC is edited while pod is using it'
	'[Testpattern: Dynamic Snapshot (delete policy)] snapshottable [Feature:VolumeSnapshotDataSource] volume snapshot controller should check snapshot fields, check restore correctly works after modifying source data, check deletion (persistent)'
	'[Testpattern: Dynamic PV (default fs)] capacity provides storage capacity information'
	'[Testpattern: Dynamic PV (filesystem volmode)] multiVolume [Slow] should concurrently access the single volume from pods on the same node'
	'[Testpattern: Dynamic PV (default fs)] subPath should support existing directory'
	'[Testpattern: Dynamic PV (default fs)] fsgroupchangepolicy (OnRootMismatch)[LinuxOnly], pod created with an initial fsgroup, new pod fsgroup applied to volume contents'
	'[Testpattern: Generic Ephemeral-volume (default fs) (late-binding)] ephemeral should create read/write inline ephemeral volume'
	'[Testpattern: Dynamic PV (default fs)] read-write-once-pod should block a second pod from using an in-use ReadWriteOncePod volume on the same node'
	'[Testpattern: Dynamic PV (delayed binding)] topology should provision a volume and schedule a pod with AllowedTopologies'
)
# regex_quote TEXT: TEXT as a regular expression that matches it literally.
regex_quote() { sed 's/[][(){}.*+?^$|\\]/\\&/g' <<<"$1"; }
SMOKE_FOCUS=$(for spec in "${SMOKE_SPECS[@]}"; do printf '%s|' "$(regex_quote "thinpool.csi.io] $spec")"; done)
SMOKE_FOCUS="(${SMOKE_FOCUS%|})"

# list_specs E2E_TEST DRIVER_FILE: the External Storage specs of this driver that the main and
# serial shards may run (`-list-tests`, the BASE_SKIP expressions applied), sorted.
list_specs() {
	"$1" -list-tests -storage.testdriver="$2" 2>/dev/null |
		sed -n 's/^ *\(.*External Storage \[Driver: thinpool\.csi\.io\].*\)$/\1/p' |
		sed 's/^.*\(External Storage \[Driver\)/\1/' | grep -Ev "$BASE_SKIP" | LC_ALL=C sort
}

# check_shards SPECS_FILE: every spec of SPECS_FILE is in exactly one shard (the smoke shard
# aside); prints each that is in none or in several, and fails then.
check_shards() {
	local s counted
	counted=$(for s in "${SHARDS[@]}"; do
		shard_args "$s"
		grep -E -- "$FOCUS" "$1" | grep -Ev -- "$SKIP" || true
	done | LC_ALL=C sort | uniq -c)
	local none several
	none=$(LC_ALL=C comm -23 "$1" <(sed 's/^ *[0-9]* //' <<<"$counted" | LC_ALL=C sort -u))
	several=$(awk '$1 > 1' <<<"$counted")
	[[ -z $none && -z $several ]] && return 0
	[[ -z $none ]] || printf 'in no shard:      %s\n' "$none" >&2
	[[ -z $several ]] || printf 'in several shards: %s\n' "$several" >&2
	return 1
}
