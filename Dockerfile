# thinpool-csi container image: one binary for the node plugin (`thinpool-csi node`) and the
# controller (`thinpool-csi controller`).
#
#   docker build -t ghcr.io/thinpool-csi/thinpool-csi:0.1.0 .
#
# The runtime packages are the programs csi/src/tools.rs lists in RUNTIME_PROGRAMS (a unit test
# keeps the two in step). The node plugin runs privileged; the controller runs as uid 65532.

# --- build (the binary is stripped: the release profile keeps line tables for profiling, the image
# needs none): the Rust toolchain plus what the devicemapper crate needs (libdevmapper, bindgen's libclang)
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libdevmapper-dev libclang-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY csi csi
COPY e2e e2e
RUN cargo build --release --locked -p thinpool-csi --bin thinpool-csi \
 && install -s -m 0755 target/release/thinpool-csi /usr/local/bin/thinpool-csi

# --- runtime: Debian with the tools the driver runs, and libdevmapper's shared library
FROM docker.io/library/debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libdevmapper1.02.1 \
      lvm2 \
      thin-provisioning-tools \
      e2fsprogs \
      xfsprogs \
      util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/thinpool-csi /usr/local/bin/thinpool-csi
ENTRYPOINT ["/usr/local/bin/thinpool-csi"]
