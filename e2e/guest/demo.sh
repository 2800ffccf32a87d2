#!/bin/sh
# The demonstration run by `thinpool-e2e demo` inside the VM: the operator CLI on the embedded
# default pool (sparse files on loop devices), a real volume, a snapshot and a restore.
set -eu
T="$THINPOOL_CSI"
export THINPOOL_CSI_STATE_DIR=/tmp/demo/state THINPOOL_CSI_LOOP_DATA_SIZE=2Gi
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "A new loop pool (2 GiB sparse data file, block zeroing on)"
show "$T" pool status

step "Create a 256 MiB volume, put ext4 on it, write a file"
show "$T" volumes create base --size 256Mi
DEV=$("$T" volumes activate base)
mkfs.ext4 -q "$DEV"
mkdir -p /tmp/demo/mnt
mount "$DEV" /tmp/demo/mnt
echo "hello world, I am a base" > /tmp/demo/mnt/hello.txt
show cat /tmp/demo/mnt/hello.txt
umount /tmp/demo/mnt

step "Snapshot it, then change the original"
show "$T" volumes snapshot base-snap --volume base
mount "$DEV" /tmp/demo/mnt
echo "I was changed after the snapshot" > /tmp/demo/mnt/hello.txt
show cat /tmp/demo/mnt/hello.txt
umount /tmp/demo/mnt

step "Restore a new 512 MiB volume from the snapshot and read it"
show "$T" volumes create restored --size 512Mi --from-snapshot base-snap
RDEV=$("$T" volumes activate restored)
mount "$RDEV" /tmp/demo/mnt
# Grow the restored filesystem online to the larger volume, as NodeStageVolume does.
resize2fs "$RDEV" >/tmp/demo/resize.log 2>&1 || { cat /tmp/demo/resize.log; exit 1; }
show cat /tmp/demo/mnt/hello.txt
show df -h /tmp/demo/mnt
umount /tmp/demo/mnt

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
