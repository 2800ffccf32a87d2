//! Kubernetes: the `ThinPool` custom resource, its status computed from the pool (pure), and the
//! desired `CSIStorageCapacity` objects for the scheduler (pure), and the node's status publisher.

pub mod capacity;
pub mod crd;
pub mod publisher;
pub mod status;
