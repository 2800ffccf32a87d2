//! The orphan report (pure): volumes on this node that no PersistentVolume references, and
//! PersistentVolumes of this driver that point at a volume this node does not have. Reported in
//! the ThinPool status and a metric. Nothing is deleted because of it unless the operator opts in
//! (`--delete-orphans-after`): then a volume that stayed orphaned for that long without a break
//! is deleted ([`OrphanTracker`]). A volume is briefly "orphaned" between CreateVolume and the
//! provisioner creating its PV, hence the long minimum.

use std::collections::{BTreeMap, BTreeSet};

use crate::names::Name;
use crate::shared::ids::ObjectId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Volume names on this node without a PersistentVolume.
    pub orphaned: Vec<String>,
    /// Volume handles of PersistentVolumes for this node whose volume is not here.
    pub missing: Vec<String>,
}

/// `volumes`: names on this node; `pv_handles`: `volumeHandle`s of PVs whose driver is ours.
/// A volume is referenced when a handle is its id on this node (readable or compact).
pub fn report(node: &str, volumes: &[String], pv_handles: &[String]) -> OrphanReport {
    let referenced: BTreeSet<&str> =
        pv_handles.iter().filter(|h| ObjectId::parse(h).is_ok_and(|id| id.is_on(node))).map(String::as_str).collect();
    let ids: Vec<(&String, Option<String>)> =
        volumes.iter().map(|v| (v, Name::new(v).ok().map(|n| ObjectId::format(&n, node)))).collect();
    let have: BTreeSet<&str> = ids.iter().filter_map(|(_, id)| id.as_deref()).collect();
    OrphanReport {
        orphaned: ids
            .iter()
            .filter(|(_, id)| !id.as_deref().is_some_and(|id| referenced.contains(id)))
            .map(|(v, _)| (*v).clone())
            .collect(),
        missing: referenced.iter().filter(|h| !have.contains(*h)).map(|h| (*h).to_owned()).collect(),
    }
}

/// The shortest grace `--delete-orphans-after` accepts, in seconds: far beyond the moment
/// between CreateVolume and the provisioner writing the PersistentVolume.
pub const MIN_ORPHAN_GRACE_SECS: u64 = 600;

/// When each volume was first seen orphaned, across reports. A volume leaves the tracker as soon as
/// one report does not list it (a PV appeared, or the PV list could not be read and the report
/// was empty), so only an unbroken run of orphaned reports can make it due.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    first_seen: BTreeMap<String, u64>,
}

impl OrphanTracker {
    /// Records a report taken at `now` (seconds) and returns the volumes orphaned in every report
    /// for at least `grace` seconds.
    pub fn due(&mut self, now: u64, orphaned: &[String], grace: u64) -> Vec<String> {
        let current: BTreeSet<&String> = orphaned.iter().collect();
        self.first_seen.retain(|name, _| current.contains(name));
        for name in orphaned {
            self.first_seen.entry(name.clone()).or_insert(now);
        }
        self.first_seen
            .iter()
            .filter(|(_, &since)| now.saturating_sub(since) >= grace)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Forgets a volume (deleted).
    pub fn forget(&mut self, name: &str) {
        self.first_seen.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_an_unbroken_orphan_run_becomes_due() {
        let mut t = OrphanTracker::default();
        assert!(t.due(0, &names(&["a", "b"]), 600).is_empty());
        assert!(t.due(599, &names(&["a", "b"]), 600).is_empty());
        // b got its PV at 300 s in between? Not here: b is still listed. a is due at 600.
        assert_eq!(t.due(600, &names(&["a", "b"]), 600), names(&["a", "b"]));
        // One report without b (its PV appeared, or the list failed) resets it.
        assert_eq!(t.due(700, &names(&["a"]), 600), names(&["a"]));
        assert!(t.due(800, &names(&["a", "b"]), 600).contains(&"a".to_owned()));
        assert!(!t.due(900, &names(&["a", "b"]), 600).contains(&"b".to_owned()));
        t.forget("a");
        assert!(t.due(1000, &names(&["a"]), 600).is_empty());
        // An empty report (PV list failed) clears everything.
        assert!(t.due(5000, &[], 600).is_empty());
        assert!(t.due(5001, &names(&["b"]), 600).is_empty());
    }

    #[test]
    fn orphans_and_missing_volumes() {
        let volumes = vec!["pvc-a".to_owned(), "pvc-b".to_owned(), "pvc-c".to_owned()];
        let handles = vec!["pvc-a@n1".to_owned(), "pvc-x@n1".to_owned(), "pvc-b@n2".to_owned(), "garbage".to_owned()];
        let r = report("n1", &volumes, &handles);
        assert_eq!(r.orphaned, vec!["pvc-b", "pvc-c"]);
        assert_eq!(r.missing, vec!["pvc-x@n1"]);
        assert_eq!(report("n1", &[], &[]), OrphanReport::default());
        // Compact ids (a 128-byte name) are matched too.
        let long = "v".repeat(128);
        let id = ObjectId::format(&Name::new(&long).unwrap(), "n1");
        assert!(id.len() <= 128);
        let r = report("n1", std::slice::from_ref(&long), &[id]);
        assert_eq!(r, OrphanReport::default());
    }
}
