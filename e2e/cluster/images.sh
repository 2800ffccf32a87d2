#!/usr/bin/env bash
# Makes every image the in-VM cluster runs, without a container engine, as docker-archive tars in
# target/cluster/images/, under the names the chart uses (so `helm install` needs no image values),
# and imports them into the containerd image store the guest mounts (image_store below):
#   ghcr.io/thinpool-csi/thinpool-csi:<appVersion>  from the project's own Dockerfile, built by
#       buildah (Debian's, daemonless: chroot isolation, vfs storage under target/cluster/buildah);
#       its two FROM images are made here from Debian packages (see base_images below)
#   registry.k8s.io/sig-storage/csi-provisioner:v6.3.0, csi-snapshotter:v8.6.0,
#       snapshot-controller:v8.6.0  the Go binaries of e2e/cluster/build.sh, one file each
#   thinpool-csi.local/pause:busybox   the pod sandbox (containerd's pinned sandbox image): sleeps
#   thinpool-csi.local/busybox:debian  the test pods' workload: Debian's busybox-static
#   the images Kubernetes' storage e2e suite (e2e/upstream) starts, under the names it asks for
#       (`e2e.test --list-images`): agnhost:2.63.0 is Debian's busybox-static plus the agnhost
#       binary of e2e/upstream/build.sh as its entrypoint; busybox, nginx, glibc-dns-testing and
#       pause are the busybox image above tagged with their names (the storage specs only run
#       shell commands in them; see e2e/upstream/README.md)
# Run e2e/cluster/build.sh first. Never run this while the test VM runs: it takes both cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$root/target/cluster/bin"
out="$root/target/cluster/images"
state="$root/target/cluster/buildah"
mkdir -p "$out" "$state"

# Everything buildah keeps lives under target/: no system-wide image store is touched.
BUILDAH=(buildah --root "$state/root" --runroot "$state/run" --storage-driver vfs)

app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/thinpool-csi/Chart.yaml")
THINPOOL_CSI_IMAGE=ghcr.io/thinpool-csi/thinpool-csi:$app_version
PROVISIONER_IMAGE=registry.k8s.io/sig-storage/csi-provisioner:v6.3.0
SNAPSHOTTER_IMAGE=registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0
SNAPSHOT_CONTROLLER_IMAGE=registry.k8s.io/sig-storage/snapshot-controller:v8.6.0
PAUSE_IMAGE=thinpool-csi.local/pause:busybox
WORKLOAD_IMAGE=thinpool-csi.local/busybox:debian
# The Dockerfile's FROM lines, made locally (no registry is reachable).
RUST_BASE=docker.io/library/rust:1.95-bookworm
DEBIAN_BASE=docker.io/library/debian:bookworm-slim
RUST_TOOLCHAIN=1.95.0

# shellcheck source=e2e/cluster/step.sh
. "$here/step.sh"

have_image() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# export IMAGE FILE: writes IMAGE as a docker-archive (its name in the archive's RepoTags).
export_image() {
	rm -f "$2"
	"${BUILDAH[@]}" push -q "$1" "docker-archive:$2:$1" >/dev/null
}

# from_rootfs IMAGE TAR ENV...: an image whose one layer is the root filesystem in TAR.
from_rootfs() {
	local image=$1 tar=$2 c
	shift 2
	c=$("${BUILDAH[@]}" from scratch)
	"${BUILDAH[@]}" add "$c" "$tar" / >/dev/null
	local kv
	for kv in "$@"; do "${BUILDAH[@]}" config --env "$kv" "$c"; done
	"${BUILDAH[@]}" config --cmd '["bash"]' "$c"
	"${BUILDAH[@]}" commit -q --rm "$c" "$image" >/dev/null
}

# Debian bookworm's minimal system, set up as docker.io's Debian images are: documentation left
# out (as in -slim), and apt keeping no package cache in the image (their apt.conf.d/docker-clean).
# mmdebstrap leaves these options in the image's dpkg.cfg.d and apt.conf.d, so the Dockerfile's own
# `apt-get install` obeys them too.
apt_clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
SLIM_DPKG_OPTS=(
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--aptopt="DPkg::Post-Invoke { $apt_clean };"
	--aptopt="APT::Update::Post-Invoke { $apt_clean };"
	--aptopt='Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";'
	--aptopt='Acquire::Languages "none";'
)

# The two images the Dockerfile starts FROM. docker.io's are Debian bookworm plus, for rust:, the
# official Rust toolchain; ours are bookworm from deb.debian.org (mmdebstrap) plus, for rust:, this
# machine's rustup toolchain 1.95.0 (Debian's own rustc is 1.63, too old for the crate).
base_images() {
	# Made again when this recipe changes.
	local stamp="$state/bases.stamp" recipe
	recipe=$({ declare -f base_images; printf '%s\n' "${SLIM_DPKG_OPTS[@]}"; } | sha256sum)
	if [[ $(cat "$stamp" 2>/dev/null) != "$recipe" ]]; then
		"${BUILDAH[@]}" rmi -f "$DEBIAN_BASE" "$RUST_BASE" >/dev/null 2>&1 || true
	fi
	make_bases
	echo "$recipe" >"$stamp"
}

make_bases() {
	if have_image "$DEBIAN_BASE"; then
		echo "up to date: $DEBIAN_BASE"
	else
		mmdebstrap --quiet --variant=minbase "${SLIM_DPKG_OPTS[@]}" bookworm "$out/debian-base.tar" \
			http://deb.debian.org/debian
		from_rootfs "$DEBIAN_BASE" "$out/debian-base.tar" \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		rm -f "$out/debian-base.tar"
	fi
	if have_image "$RUST_BASE"; then
		echo "up to date: $RUST_BASE"
	else
		local toolchain
		toolchain=$(rustc +"$RUST_TOOLCHAIN" --print sysroot)
		[[ -x $toolchain/bin/cargo ]] || {
			echo "images: no Rust $RUST_TOOLCHAIN toolchain with cargo at $toolchain (rustup toolchain install $RUST_TOOLCHAIN)" >&2
			return 1
		}
		# The toolchain's bin, lib and libexec (no documentation) at /usr/local/rust, on PATH
		# through /usr/local/cargo/bin as in the official image.
		mmdebstrap --quiet --variant=minbase "${SLIM_DPKG_OPTS[@]}" \
			--include=gcc,libc6-dev,ca-certificates,git \
			--customize-hook='mkdir -p "$1/usr/local/rust" "$1/usr/local/cargo/bin"' \
			--customize-hook="copy-in $toolchain/bin $toolchain/lib $toolchain/libexec /usr/local/rust" \
			--customize-hook='for b in cargo rustc rustdoc; do ln -s ../../rust/bin/$b "$1/usr/local/cargo/bin/$b"; done' \
			bookworm "$out/rust-base.tar" http://deb.debian.org/debian
		from_rootfs "$RUST_BASE" "$out/rust-base.tar" \
			PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			CARGO_HOME=/usr/local/cargo RUST_VERSION="$RUST_TOOLCHAIN"
		rm -f "$out/rust-base.tar"
	fi
}

# The thinpool-csi image from the Dockerfile users build. Mounted into every RUN step, not kept in
# the image: this machine's CA bundle (the registries are reached through a TLS-inspecting egress
# proxy whose CA only the host trusts: the same as building behind a corporate proxy), this
# machine's crate download cache (the crates `cargo test` already fetched) and a target directory,
# so that a second build recompiles only what changed (docker's `--mount=type=cache` would do the
# same; the Dockerfile stays plain).
thinpool_csi_image() {
	local cargo_cache="${CARGO_HOME:-$HOME/.cargo}/registry" target_cache="$root/target/cluster/image-target"
	local ca=/etc/ssl/certs/ca-certificates.crt inputs
	# What the Dockerfile COPYs (as .dockerignore filters it), and the Dockerfile: built again only
	# when one of them changed (a build with nothing to do still costs two minutes of layer copies).
	local -a ignored
	mapfile -t ignored < <(sed -n 's|^\([^#].*\)/*$|:(exclude,glob)\1|p' "$root/.dockerignore" | sed 's|/*$||')
	inputs=$(cd "$root" && git ls-files -co --exclude-standard -- Dockerfile .dockerignore Cargo.toml Cargo.lock \
		rustfmt.toml csi e2e "${ignored[@]}" | LC_ALL=C sort | xargs sha256sum | sha256sum)
	if fresh "$out/thinpool-csi.tar" "$inputs"; then
		echo "up to date: $THINPOOL_CSI_IMAGE"
		return
	fi
	mkdir -p "$cargo_cache" "$target_cache"
	(cd "$root" && "${BUILDAH[@]}" bud -q --isolation chroot --network host --layers \
		--volume "$ca:$ca:ro" \
		--volume "$cargo_cache:/usr/local/cargo/registry" --volume "$target_cache:/src/target" \
		-f Dockerfile -t "$THINPOOL_CSI_IMAGE" .) >/dev/null
	"${BUILDAH[@]}" run --isolation chroot "$("${BUILDAH[@]}" from -q "$THINPOOL_CSI_IMAGE")" \
		/usr/local/bin/thinpool-csi --version
	"${BUILDAH[@]}" rm -a >/dev/null
	export_image "$THINPOOL_CSI_IMAGE" "$out/thinpool-csi.tar"
	made "$out/thinpool-csi.tar" "$inputs"
}

# single_binary IMAGE FILE BINARY ENTRYPOINT...: an image holding one static binary.
single_binary() {
	local image=$1 file=$2 binary=$3 c inputs
	shift 3
	inputs=$(inputs_of "$binary" "${BASH_SOURCE[0]}" -- "$@")
	if fresh "$file" "$inputs"; then
		echo "up to date: $image"
		return
	fi
	c=$("${BUILDAH[@]}" from scratch)
	"${BUILDAH[@]}" copy --chmod 0755 "$c" "$binary" "/$(basename "$binary")"
	local entry
	entry=$(printf '"%s",' "$@")
	"${BUILDAH[@]}" config --entrypoint "[${entry%,}]" "$c"
	"${BUILDAH[@]}" commit -q --rm "$c" "$image" >/dev/null
	export_image "$image" "$file"
	made "$file" "$inputs"
}

sidecar_images() {
	single_binary "$PROVISIONER_IMAGE" "$out/csi-provisioner.tar" "$bin/csi-provisioner" /csi-provisioner
	single_binary "$SNAPSHOTTER_IMAGE" "$out/csi-snapshotter.tar" "$bin/csi-snapshotter" /csi-snapshotter
	single_binary "$SNAPSHOT_CONTROLLER_IMAGE" "$out/snapshot-controller.tar" "$bin/snapshot-controller" \
		/snapshot-controller
}

# busybox_container: a new working container holding Debian's static busybox and its applets in
# /bin; prints its name.
busybox_container() {
	local c
	c=$("${BUILDAH[@]}" from scratch)
	"${BUILDAH[@]}" copy --chmod 0755 "$c" /bin/busybox /bin/busybox >/dev/null
	"${BUILDAH[@]}" run --isolation chroot "$c" /bin/busybox --install -s /bin
	echo "$c"
}

# Debian's static busybox: the pod sandbox (it only has to hold the pod's namespaces) and the
# workload of the test pods (sh, dd, sleep, stat, blockdev).
busybox_images() {
	single_binary "$PAUSE_IMAGE" "$out/pause.tar" /bin/busybox /busybox sleep 2147483647
	local file="$out/busybox.tar" c inputs
	inputs=$(inputs_of /bin/busybox "${BASH_SOURCE[0]}")
	if fresh "$file" "$inputs"; then
		echo "up to date: $WORKLOAD_IMAGE"
		return
	fi
	c=$(busybox_container)
	"${BUILDAH[@]}" config --cmd '["sh"]' "$c"
	"${BUILDAH[@]}" commit -q --rm "$c" "$WORKLOAD_IMAGE" >/dev/null
	export_image "$WORKLOAD_IMAGE" "$file"
	made "$file" "$inputs"
}

# The storage e2e suite's helper image: its host-exec pods run busybox's nsenter and sh, subPath's
# containers run `/agnhost mounttest ...` through the entrypoint (as the real image's).
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.63.0
# Names the storage specs ask for that any image with a POSIX shell serves (each spec gives the
# command): tagged onto the busybox workload image in the store.
UPSTREAM_SHELL_IMAGES=(registry.k8s.io/e2e-test-images/busybox:1.37.0-1 registry.k8s.io/e2e-test-images/nginx:1.15-4
	registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0 registry.k8s.io/pause:3.10.2)
upstream_images() {
	bash "$root/e2e/upstream/build.sh" agnhost
	local agnhost="$root/target/upstream/bin/agnhost" file="$out/agnhost.tar" c inputs
	inputs=$(inputs_of /bin/busybox "$agnhost" "${BASH_SOURCE[0]}")
	if fresh "$file" "$inputs"; then
		echo "up to date: $AGNHOST_IMAGE"
		return
	fi
	c=$(busybox_container)
	"${BUILDAH[@]}" copy --chmod 0755 "$c" "$agnhost" /agnhost
	"${BUILDAH[@]}" config --entrypoint '["/agnhost"]' --cmd '["pause"]' "$c"
	"${BUILDAH[@]}" commit -q --rm "$c" "$AGNHOST_IMAGE" >/dev/null
	export_image "$AGNHOST_IMAGE" "$file"
	made "$file" "$inputs"
}

# The guest's containerd image store, made here at native speed: containerd (the one build.sh made)
# imports every archive into a store under target/, unpacked for its overlayfs snapshotter, and the
# store becomes an ext4 disk image that the VM attaches copy-on-write (the file never changes) and
# mounts at /var/lib/containerd. Importing the same archives inside the emulated guest took 6 min.
image_store() {
	local disk="$root/target/cluster/images.ext4" store="$state/containerd" tar inputs
	# The archives' own stamps stand for their contents (hashing them again would take seconds).
	inputs=$(inputs_of "$out"/*.tar.inputs "${BASH_SOURCE[0]}")
	if fresh "$disk" "$inputs"; then
		echo "up to date: $disk"
		return
	fi
	rm -rf "$store"
	mkdir -p "$store/root" "$store/state"
	# Only the image store and the snapshotter: no container runs here.
	cat >"$store/config.toml" <<-TOML
		version = 3
		root = "$store/root"
		state = "$store/state"
		disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images",
		  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri"]
		[grpc]
		  address = "$store/containerd.sock"
		[ttrpc]
		  address = "$store/containerd.sock.ttrpc"
	TOML
	"$bin/containerd" --config "$store/config.toml" >"$store/containerd.log" 2>&1 &
	local pid=$! i
	for ((i = 0; i < 50; i++)); do
		"$bin/ctr" -a "$store/containerd.sock" version >/dev/null 2>&1 && break
		sleep 0.2
	done
	for tar in "$out"/*.tar; do
		if ! "$bin/ctr" -a "$store/containerd.sock" -n k8s.io images import --platform linux/amd64 "$tar" >/dev/null; then
			kill "$pid"
			echo "images: importing $tar failed; containerd's log: $store/containerd.log" >&2
			return 1
		fi
	done
	local name
	for name in "${UPSTREAM_SHELL_IMAGES[@]}"; do
		"$bin/ctr" -a "$store/containerd.sock" -n k8s.io images tag "$WORKLOAD_IMAGE" "$name" >/dev/null
	done
	"$bin/ctr" -a "$store/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:'
	kill "$pid"
	wait "$pid" || true
	# Room for the containers' own writes beside the images; sparse, so it costs only what is used.
	local size_mib
	size_mib=$(($(du -sm "$store/root" | cut -f1) + 2048))
	rm -f "$disk"
	mke2fs -q -t ext4 -L tpcsi-images -d "$store/root" "$disk" "${size_mib}M"
	rm -rf "$store"
	made "$disk" "$inputs"
}

total=$SECONDS
step "base images" base_images
step "thinpool-csi image (Dockerfile)" thinpool_csi_image
step "sidecar images" sidecar_images
step "busybox images" busybox_images
step "the storage e2e suite's images" upstream_images
step "containerd image store (target/cluster/images.ext4)" image_store
# Images a rebuild replaced (vfs keeps a full copy of every layer).
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
echo "==> all: $((SECONDS - total)) s, in $out"
ls -l "$out"
