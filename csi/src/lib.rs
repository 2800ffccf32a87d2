//! thinpool-csi: node-local thin-provisioned volumes for Kubernetes on a device-mapper thin pool.
//!
//! Layers of the node plugin, each calling only those below it (see ARCHITECTURE.md):
//! `engine` (volume lifecycle, journaled pool changes) → `store` (durable records) →
//! `dm` (the thin pool over ioctls). Beside them: `config`, `names`, `units`, `tools`
//! (every external program), `cli` (the operator commands), `csi` (the gRPC services) and
//! `mount` (filesystems and mounts for the Node service).

pub mod cli;
pub mod config;
pub mod csi;
pub mod dm;
pub mod engine;
pub mod k8s;
pub mod metrics;
pub mod mount;
pub mod names;
pub mod open;
pub mod store;
pub mod tools;
pub mod units;
