//! Kubernetes: the `ThinPool` custom resource, its status computed from the pool (pure), and the
//! desired `CSIStorageCapacity` objects for the scheduler (pure), and the node's status publisher.

#[cfg(test)]
mod alert_rules_tests;
pub mod capacity;
pub mod controller;
pub mod controller_metrics;
#[cfg(test)]
mod controller_tests;
pub mod crd;
pub mod expansion;
pub mod expansion_pass;
pub mod leader_loop;
pub mod lease;
pub mod orphans;
pub mod publisher;
pub mod snapshot_contents;
pub mod status;
