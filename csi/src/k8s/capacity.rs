//! The `CSIStorageCapacity` objects the scheduler should see (pure): exactly one per
//! (StorageClass of this driver, ThinPool), with `nodeTopology` selecting the pool's node,
//! `capacity` and `maximumVolumeSize` = the pool's allowed new provisioning (zero when stale).
//! [`plan`] turns desired and existing objects into creates, updates and deletes; the immutable
//! fields (`storageClassName`, `nodeTopology`) are never patched: such an object is replaced.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Label keys on the objects we own, so they can be found and matched again.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "thinpool-csi-controller";
pub const LABEL_CLASS: &str = "thinpool.csi.io/storage-class";
pub const LABEL_NODE: &str = "thinpool.csi.io/node";

/// What the controller knows of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolView {
    pub node: String,
    pub allowed_new_bytes: u64,
    pub stale: bool,
}

/// One CSIStorageCapacity object, desired or existing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityObject {
    pub name: String,
    pub storage_class: String,
    pub node: String,
    pub capacity: u64,
    pub maximum_volume_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create(CapacityObject),
    /// Patch `capacity` and `maximumVolumeSize` of the named object.
    Update(CapacityObject),
    Delete {
        name: String,
    },
}

/// A stable, valid object name for (class, node): `tpcsi-` and 20 hex digits of a SHA-256.
pub fn object_name(storage_class: &str, node: &str) -> String {
    let mut h = Sha256::new();
    h.update(storage_class.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("tpcsi-{hex}")
}

/// The desired objects for every (class, pool) pair.
pub fn desired(classes: &[String], pools: &[PoolView]) -> Vec<CapacityObject> {
    let mut out = Vec::new();
    for class in classes {
        for pool in pools {
            let bytes = if pool.stale { 0 } else { pool.allowed_new_bytes };
            out.push(CapacityObject {
                name: object_name(class, &pool.node),
                storage_class: class.clone(),
                node: pool.node.clone(),
                capacity: bytes,
                maximum_volume_size: bytes,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What to do so that the existing objects become the desired ones.
pub fn plan(desired: &[CapacityObject], existing: &[CapacityObject]) -> Vec<Action> {
    let want: BTreeMap<(&str, &str), &CapacityObject> =
        desired.iter().map(|d| ((d.storage_class.as_str(), d.node.as_str()), d)).collect();
    let mut actions = Vec::new();
    let mut kept: BTreeMap<(&str, &str), &CapacityObject> = BTreeMap::new();
    for e in existing {
        let key = (e.storage_class.as_str(), e.node.as_str());
        match want.get(&key) {
            // Exactly one object per pair: a duplicate, or one whose pair is gone, is deleted.
            Some(_) if !kept.contains_key(&key) => {
                kept.insert(key, e);
            }
            _ => actions.push(Action::Delete { name: e.name.clone() }),
        }
    }
    for (key, d) in &want {
        match kept.get(key) {
            None => actions.push(Action::Create((*d).clone())),
            Some(e) if e.capacity != d.capacity || e.maximum_volume_size != d.maximum_volume_size => {
                actions.push(Action::Update(CapacityObject { name: e.name.clone(), ..(*d).clone() }))
            }
            Some(_) => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(node: &str, bytes: u64, stale: bool) -> PoolView {
        PoolView { node: node.into(), allowed_new_bytes: bytes, stale }
    }

    fn classes(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_stable_and_valid() {
        let n = object_name("thinpool-ext4", "node-1");
        assert_eq!(n, object_name("thinpool-ext4", "node-1"));
        assert_ne!(n, object_name("thinpool-ext4", "node-2"));
        assert_ne!(object_name("a", "bc"), object_name("ab", "c"));
        assert_eq!(n.len(), 26);
        assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }

    #[test]
    fn one_object_per_class_and_pool_zero_when_stale() {
        let d = desired(&classes(&["ext4", "xfs"]), &[pool("n1", 100, false), pool("n2", 50, true)]);
        assert_eq!(d.len(), 4);
        assert!(d.iter().filter(|o| o.node == "n2").all(|o| o.capacity == 0 && o.maximum_volume_size == 0));
        assert!(d.iter().filter(|o| o.node == "n1").all(|o| o.capacity == 100));
    }

    #[test]
    fn new_pool_fills_up_class_deleted() {
        let pools = [pool("n1", 100, false)];
        // A new pool: create.
        let d1 = desired(&classes(&["ext4"]), &pools);
        assert_eq!(plan(&d1, &[]), vec![Action::Create(d1[0].clone())]);
        // Nothing changed: nothing to do.
        assert!(plan(&d1, &d1).is_empty());
        // The pool fills up: update in place.
        let d2 = desired(&classes(&["ext4"]), &[pool("n1", 0, false)]);
        assert_eq!(plan(&d2, &d1), vec![Action::Update(d2[0].clone())]);
        // The class is deleted: delete.
        assert_eq!(plan(&[], &d1), vec![Action::Delete { name: d1[0].name.clone() }]);
        // The pool is gone: delete.
        let gone = desired(&classes(&["ext4"]), &[]);
        assert_eq!(plan(&gone, &d1), vec![Action::Delete { name: d1[0].name.clone() }]);
    }

    #[test]
    fn duplicates_and_foreign_names_converge_to_one() {
        let d = desired(&classes(&["ext4"]), &[pool("n1", 100, false)]);
        let mut other = d[0].clone();
        other.name = "someone-made-this".into();
        let actions = plan(&d, &[other.clone(), d[0].clone()]);
        // The first seen is kept (and updated if needed), the other deleted.
        assert_eq!(actions, vec![Action::Delete { name: d[0].name.clone() }]);
        let mut stale_copy = d[0].clone();
        stale_copy.capacity = 5;
        let actions = plan(&d, &[stale_copy.clone()]);
        assert_eq!(actions, vec![Action::Update(d[0].clone())]);
    }
}
