//! thinpool-csi: node-local thin-provisioned volumes for Kubernetes on a device-mapper thin pool.
//!
//! `app` wires each process (the node plugin, the capacity controller) in one file. Layers, each
//! calling only those below it (see docs/architecture.md): `csi` (the gRPC services) → `engine`
//! (volume lifecycle, journaled pool changes) → `store` (durable records), `dm` (the thin pool over
//! ioctls) and `mount` (filesystems and mounts). Beside them: `k8s` (the ThinPool resource, its
//! publisher and the capacity controller), `grow` (automatic extension of LVM-backed pools),
//! `shared` (names both `csi` and `k8s` use), `metrics`, `config`, `names`, `units`, `tools`
//! (every external program) and `cli` (operator commands). `app` and `k8s` are the `kubernetes`
//! feature (on by default; the fuzz targets build without it).

#[cfg(feature = "kubernetes")]
pub mod app;
pub mod cli;
pub mod config;
pub mod csi;
pub mod dm;
pub mod engine;
pub mod grow;
#[cfg(feature = "kubernetes")]
pub mod k8s;
pub mod kubelet;
pub mod metrics;
pub mod mount;
pub mod names;
pub mod open;
pub mod shared;
pub mod store;
pub mod tools;
pub mod units;
