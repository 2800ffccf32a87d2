//! The orphan report (pure): volumes on this node that no PersistentVolume references, and
//! PersistentVolumes of this driver that point at a volume this node does not have. Reported in
//! the ThinPool status and a metric; nothing is ever deleted because of it. A volume is briefly
//! "orphaned" between CreateVolume and the provisioner creating its PV.

use std::collections::BTreeSet;

use crate::csi::ids::ObjectId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Volume names on this node without a PersistentVolume.
    pub orphaned: Vec<String>,
    /// Volume handles of PersistentVolumes for this node whose volume is not here.
    pub missing: Vec<String>,
}

/// `volumes`: names on this node; `pv_handles`: `volumeHandle`s of PVs whose driver is ours.
pub fn report(node: &str, volumes: &[String], pv_handles: &[String]) -> OrphanReport {
    let referenced: BTreeSet<String> = pv_handles
        .iter()
        .filter_map(|h| ObjectId::parse(h).ok())
        .filter(|id| id.node == node)
        .map(|id| id.name.as_str().to_owned())
        .collect();
    let have: BTreeSet<&String> = volumes.iter().collect();
    OrphanReport {
        orphaned: volumes.iter().filter(|v| !referenced.contains(*v)).cloned().collect(),
        missing: referenced.iter().filter(|n| !have.contains(n)).map(|n| format!("{n}@{node}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_and_missing_volumes() {
        let volumes = vec!["pvc-a".to_owned(), "pvc-b".to_owned(), "pvc-c".to_owned()];
        let handles = vec!["pvc-a@n1".to_owned(), "pvc-x@n1".to_owned(), "pvc-b@n2".to_owned(), "garbage".to_owned()];
        let r = report("n1", &volumes, &handles);
        assert_eq!(r.orphaned, vec!["pvc-b", "pvc-c"]);
        assert_eq!(r.missing, vec!["pvc-x@n1"]);
        assert_eq!(report("n1", &[], &[]), OrphanReport::default());
    }
}
