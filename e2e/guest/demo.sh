#!/bin/sh
# The demonstration run by `thinpool-e2e demo` inside the VM: the operator CLI on the embedded
# default pool (sparse files on loop devices), a real volume, a snapshot and a restore.
set -eu
T="$THINPOOL_CSI"
export THINPOOL_CSI_STATE_DIR=/tmp/demo/state THINPOOL_CSI_LOOP_DATA_SIZE=2Gi
# Only the demo's own lines on the console: no kernel messages between them.
dmesg -n 1 2>/dev/null || true
# Bold headings only when the host prints to a terminal (the harness says so).
if [ "${THINPOOL_DEMO_COLOR:-0}" = 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
show() { printf '$ %s\n' "$*"; "$@"; }
note() { printf '   (%s)\n' "$*"; }

step "Create a 256 MiB volume; the first change creates the loop pool (2 GiB sparse data file, block zeroing on)"
show "$T" volumes create base --size 256Mi
show "$T" pool status
note "allowed new = overprovision ratio (5) x data size (2 GiB) - provisioned (256 MiB): how much more may be provisioned; zero when a fill limit is crossed"

step "Put ext4 on volume base, mount it at /tmp/demo/base, write a file"
DEV=$("$T" volumes activate base)
note "volume base is the thin device $DEV"
show mkfs.ext4 -q "$DEV"
mkdir -p /tmp/demo/base /tmp/demo/restored
show mount "$DEV" /tmp/demo/base
echo "hello world, I am a base" > /tmp/demo/base/hello.txt
note "reading volume base"
show cat /tmp/demo/base/hello.txt
show umount /tmp/demo/base

step "Snapshot volume base, then change base"
show "$T" volumes snapshot base-snap --volume base
show mount "$DEV" /tmp/demo/base
echo "I was changed after the snapshot" > /tmp/demo/base/hello.txt
note "reading volume base after the change"
show cat /tmp/demo/base/hello.txt
show umount /tmp/demo/base

step "Restore a new 512 MiB volume 'restored' from the snapshot, mount it at /tmp/demo/restored"
show "$T" volumes create restored --size 512Mi --from-snapshot base-snap
RDEV=$("$T" volumes activate restored)
note "volume restored is the thin device $RDEV"
show mount "$RDEV" /tmp/demo/restored
note "growing its ext4 online to the larger volume, as NodeStageVolume does"
resize2fs "$RDEV" >/tmp/demo/resize.log 2>&1 || { cat /tmp/demo/resize.log; exit 1; }
note "reading volume restored: the text from before the change"
show cat /tmp/demo/restored/hello.txt
show df -h /tmp/demo/restored
show umount /tmp/demo/restored

step "What the node holds now"
show "$T" volumes list
show "$T" snapshots list
show "$T" pool status

step "Clean up: deletes return the pool's blocks"
"$T" volumes deactivate base
"$T" volumes deactivate restored
show "$T" volumes delete base
show "$T" volumes delete restored
show "$T" snapshots delete base-snap
show "$T" pool check
echo
echo "demo: a volume, a snapshot and a restore on real device-mapper: OK"
