//! Expansion bookkeeping for claims of this driver (what external-resizer does for a driver whose
//! volumes grow on the node), as a pure plan: claim + volume + class + the pool's room in, the
//! writes out. thinpool-csi has no ControllerExpandVolume (the pool is on the node), so a bound
//! claim that asks for more than it holds is marked for the kubelet: the PersistentVolume's
//! capacity is raised, the claim records `allocatedResources` and `allocatedResourceStatuses`
//! `NodeResizePending` (Kubernetes >= 1.34, where recovery from expansion failure is GA) and the
//! `FileSystemResizePending` condition, and the kubelet then calls NodeExpandVolume on the node,
//! online or at the next stage. Events carry the upstream reasons, so `kubectl describe pvc` reads
//! the same. A request the pool cannot hold, or a class without `allowVolumeExpansion`, ends once
//! as a Warning and `ControllerResizeInfeasible` on the claim: the user may lower the request
//! (above the old size) and it is planned again, never retried in a loop.
//!
//! What a claim holds is its `status.capacity`, which only the kubelet raises, once the node has
//! grown the volume; the PersistentVolume's capacity is this controller's own mark and may be ahead
//! of it. The two writes of a mark are not atomic (a restart, or an old leader's last pass, can
//! fall between them), so every plan is made again from both: a claim whose volume was raised but
//! whose status was not written is marked again, a claim marked whose volume was not raised gets
//! its volume raised, and neither is ever taken as done before the kubelet says so.
use crate::units::human_bytes;

/// The claim's resize status values (`status.allocatedResourceStatuses["storage"]`).
pub const NODE_RESIZE_PENDING: &str = "NodeResizePending";
pub const RESIZE_INFEASIBLE: &str = "ControllerResizeInfeasible";
/// Set by the kubelet while it runs NodeExpandVolume, and after a final failure.
pub const NODE_RESIZE_IN_PROGRESS: &str = "NodeResizeInProgress";
pub const NODE_RESIZE_FAILED: &str = "NodeResizeFailed";
pub const NODE_RESIZE_INFEASIBLE: &str = "NodeResizeInfeasible";
/// The claim condition the kubelet clears once the filesystem has grown.
pub const FS_RESIZE_PENDING: &str = "FileSystemResizePending";
/// Event reasons, as external-resizer writes them.
pub const EVENT_RESIZING: &str = "Resizing";
pub const EVENT_FS_RESIZE_REQUIRED: &str = "FileSystemResizeRequired";
pub const EVENT_RESIZE_FAILED: &str = "VolumeResizeFailed";

/// What the plan reads of a PersistentVolumeClaim (sizes in bytes, read by value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub bound: bool,
    pub volume_name: Option<String>,
    pub storage_class: Option<String>,
    /// `spec.resources.requests.storage`.
    pub requested: u64,
    /// `status.capacity.storage`: what the claim holds (the kubelet raises it after NodeExpandVolume).
    pub capacity: Option<u64>,
    /// `status.allocatedResources.storage`, if set.
    pub allocated: Option<u64>,
    /// `status.allocatedResourceStatuses.storage`, if set.
    pub resize_status: Option<String>,
}

/// What the plan reads of the claim's PersistentVolume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// Whether `spec.csi.driver` is this driver.
    pub ours: bool,
    /// `spec.capacity.storage` (raised by this controller when it marks a claim).
    pub capacity: u64,
    /// The node its pool is on (from the volume's node affinity), if known.
    pub node: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Class {
    pub allow_expansion: bool,
}

/// One Event to raise on the claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do: not ours, not bound, no growth asked, or already marked for this request.
    Nothing,
    /// Mark the claim for the kubelet's NodeExpandVolume (raise the volume, then the claim's
    /// status). `events` is empty when the claim was marked already and only its volume lags.
    Expand { volume: String, bytes: u64, events: Vec<ClaimEvent> },
    /// Refuse this request once, with why.
    Infeasible { volume: String, requested: u64, event: ClaimEvent },
    /// The user lowered a refused request back to what the volume holds: clear the refusal.
    ClearInfeasible { volume: String, capacity: u64 },
}

/// Plans the expansion of `claim`. `room` is how much more the volume's pool may provision (its
/// ThinPool's allowed new bytes), `None` when it is not known (the node still refuses what does not
/// fit, at NodeExpandVolume).
pub fn plan(claim: &Claim, volume: Option<&Volume>, class: Option<&Class>, room: Option<u64>) -> Plan {
    let Some(v) = volume.filter(|v| v.ours && claim.bound && claim.volume_name.as_deref() == Some(v.name.as_str()))
    else {
        return Plan::Nothing;
    };
    // Bound but without a recorded size yet: the binder writes it, and the next pass plans.
    let Some(held) = claim.capacity else { return Plan::Nothing };
    let status = claim.resize_status.as_deref();
    if claim.requested <= held {
        // Nothing to grow; a refused request the user lowered again is cleared.
        if status == Some(RESIZE_INFEASIBLE) {
            return Plan::ClearInfeasible { volume: v.name.clone(), capacity: held };
        }
        return Plan::Nothing;
    }
    let expand = |events: Vec<ClaimEvent>| Plan::Expand { volume: v.name.clone(), bytes: claim.requested, events };
    if claim.allocated == Some(claim.requested) {
        match status {
            // The kubelet's turn; its volume must say so too, or the kubelet never starts.
            Some(NODE_RESIZE_PENDING | NODE_RESIZE_IN_PROGRESS) if v.capacity < claim.requested => {
                return expand(Vec::new())
            }
            Some(NODE_RESIZE_PENDING | NODE_RESIZE_IN_PROGRESS) => return Plan::Nothing,
            // Refused, here or on the node, until the request changes: never retried in a loop.
            Some(RESIZE_INFEASIBLE | NODE_RESIZE_INFEASIBLE | NODE_RESIZE_FAILED) => return Plan::Nothing,
            _ => {}
        }
    }
    let refuse = |note: String| Plan::Infeasible {
        volume: v.name.clone(),
        requested: claim.requested,
        event: ClaimEvent { warning: true, reason: EVENT_RESIZE_FAILED, note },
    };
    if !class.is_some_and(|c| c.allow_expansion) {
        let class = claim.storage_class.as_deref().unwrap_or("(none)");
        return refuse(format!(
            "StorageClass {class} does not allow volume expansion (allowVolumeExpansion: true); the volume stays {}",
            human_bytes(held)
        ));
    }
    let growth = claim.requested - held;
    if let Some(room) = room.filter(|&r| r < growth) {
        let node = v.node.as_deref().unwrap_or("its node");
        return refuse(format!(
            "growing {} from {} to {} needs {} more, but the thin pool on {node} may provision only {} more; \
             lower the request (it must stay above {}) or free space in the pool",
            v.name,
            human_bytes(held),
            human_bytes(claim.requested),
            human_bytes(growth),
            human_bytes(room),
            human_bytes(held)
        ));
    }
    expand(vec![
        ClaimEvent {
            warning: false,
            reason: EVENT_RESIZING,
            note: format!("External resizer is resizing volume {}", v.name),
        },
        ClaimEvent {
            warning: false,
            reason: EVENT_FS_RESIZE_REQUIRED,
            note: "Require file system resize of volume on node".to_owned(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn claim(requested: u64) -> Claim {
        Claim {
            namespace: "apps".into(),
            name: "data".into(),
            bound: true,
            volume_name: Some("pvc-1".into()),
            storage_class: Some("thinpool-ext4".into()),
            requested,
            capacity: Some(GI),
            allocated: None,
            resize_status: None,
        }
    }

    fn volume(capacity: u64) -> Volume {
        Volume { name: "pvc-1".into(), ours: true, capacity, node: Some("node-1".into()) }
    }

    const CLASS: Class = Class { allow_expansion: true };

    #[test]
    fn a_bigger_request_is_marked_for_the_node() {
        let p = plan(&claim(2 * GI), Some(&volume(GI)), Some(&CLASS), Some(10 * GI));
        let Plan::Expand { volume: name, bytes, events } = p else { panic!("{p:?}") };
        assert_eq!((name.as_str(), bytes), ("pvc-1", 2 * GI));
        let reasons: Vec<&str> = events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Resizing", "FileSystemResizeRequired"]);
        assert!(events.iter().all(|e| !e.warning));
        // Room unknown: the node enforces it.
        assert!(matches!(plan(&claim(2 * GI), Some(&volume(GI)), Some(&CLASS), None), Plan::Expand { .. }));
    }

    #[test]
    fn nothing_to_do() {
        let v = volume(GI);
        // Same size, smaller (volumes never shrink), not bound, another volume, not ours, no volume.
        assert_eq!(plan(&claim(GI), Some(&v), Some(&CLASS), None), Plan::Nothing);
        assert_eq!(plan(&claim(GI / 2), Some(&v), Some(&CLASS), None), Plan::Nothing);
        assert_eq!(plan(&Claim { bound: false, ..claim(2 * GI) }, Some(&v), Some(&CLASS), None), Plan::Nothing);
        let other = Claim { volume_name: Some("pvc-2".into()), ..claim(2 * GI) };
        assert_eq!(plan(&other, Some(&v), Some(&CLASS), None), Plan::Nothing);
        assert_eq!(plan(&claim(2 * GI), Some(&Volume { ours: false, ..v.clone() }), Some(&CLASS), None), Plan::Nothing);
        assert_eq!(plan(&claim(2 * GI), None, Some(&CLASS), None), Plan::Nothing);
        // Already marked for this request, its volume raised: the kubelet's turn, whatever the room.
        let pending =
            Claim { allocated: Some(2 * GI), resize_status: Some(NODE_RESIZE_PENDING.into()), ..claim(2 * GI) };
        assert_eq!(plan(&pending, Some(&volume(2 * GI)), Some(&CLASS), Some(0)), Plan::Nothing);
        assert_eq!(plan(&pending, Some(&volume(2 * GI)), Some(&CLASS), None), Plan::Nothing);
    }

    #[test]
    fn a_request_the_pool_cannot_hold_is_refused_once() {
        let p = plan(&claim(8 * GI), Some(&volume(GI)), Some(&CLASS), Some(3 * GI));
        let Plan::Infeasible { requested, event, .. } = &p else { panic!("{p:?}") };
        assert_eq!(*requested, 8 * GI);
        assert!(event.warning);
        assert_eq!(event.reason, "VolumeResizeFailed");
        assert!(event.note.contains("may provision only 3 GiB more"), "{}", event.note);
        assert!(event.note.contains("node-1"), "{}", event.note);
        // Recorded: not planned again for the same request (no loop).
        let refused = Claim { allocated: Some(8 * GI), resize_status: Some(RESIZE_INFEASIBLE.into()), ..claim(8 * GI) };
        assert_eq!(plan(&refused, Some(&volume(GI)), Some(&CLASS), Some(3 * GI)), Plan::Nothing);
        // The user lowers the request, still above the old size: planned anew and it fits.
        let lowered = Claim { requested: 3 * GI, ..refused.clone() };
        assert!(
            matches!(plan(&lowered, Some(&volume(GI)), Some(&CLASS), Some(3 * GI)), Plan::Expand { bytes, .. } if bytes == 3 * GI)
        );
        // Or back to the old size: the refusal is cleared.
        let back = Claim { requested: GI, ..refused };
        assert_eq!(
            plan(&back, Some(&volume(GI)), Some(&CLASS), Some(3 * GI)),
            Plan::ClearInfeasible { volume: "pvc-1".into(), capacity: GI }
        );
    }

    #[test]
    fn a_class_without_expansion_is_refused() {
        for class in [None, Some(&Class { allow_expansion: false })] {
            let p = plan(&claim(2 * GI), Some(&volume(GI)), class, Some(10 * GI));
            let Plan::Infeasible { event, .. } = &p else { panic!("{p:?}") };
            assert!(event.note.contains("does not allow volume expansion"), "{}", event.note);
        }
    }

    /// The two writes of a mark are not atomic: whichever of them is missing (a restart between
    /// them, or an old leader's last pass writing over the new leader's), the next pass makes the
    /// claim whole again, and nothing is taken as done before the claim's own capacity says so.
    #[test]
    fn a_half_written_mark_is_written_again() {
        const MI: u64 = 1 << 20;
        let held = |requested: u64| Claim { capacity: Some(512 * MI), ..claim(requested) };
        // The volume raised, the claim's status never written (or cleared by a stale pass).
        for status in [None, Some(RESIZE_INFEASIBLE)] {
            let lost = Claim { allocated: Some(100 << 40), resize_status: status.map(Into::into), ..held(640 * MI) };
            let p = plan(&lost, Some(&volume(640 * MI)), Some(&CLASS), Some(10 * GI));
            assert!(
                matches!(&p, Plan::Expand { bytes, events, .. } if *bytes == 640 * MI && events.len() == 2),
                "{p:?}"
            );
            let cleared = Claim { allocated: Some(640 * MI), resize_status: None, ..held(640 * MI) };
            let p = plan(&cleared, Some(&volume(640 * MI)), Some(&CLASS), Some(10 * GI));
            assert!(matches!(&p, Plan::Expand { bytes, .. } if *bytes == 640 * MI), "{p:?}");
        }
        // The claim marked, its volume not raised: the volume is raised, without new Events.
        for status in [NODE_RESIZE_PENDING, NODE_RESIZE_IN_PROGRESS] {
            let marked = Claim { allocated: Some(640 * MI), resize_status: Some(status.into()), ..held(640 * MI) };
            let p = plan(&marked, Some(&volume(512 * MI)), Some(&CLASS), Some(10 * GI));
            assert_eq!(p, Plan::Expand { volume: "pvc-1".into(), bytes: 640 * MI, events: Vec::new() });
            assert_eq!(plan(&marked, Some(&volume(640 * MI)), Some(&CLASS), Some(10 * GI)), Plan::Nothing);
        }
        // The room asked for is what the claim holds now, not what its volume was marked with.
        let p = plan(&held(640 * MI), Some(&volume(640 * MI)), Some(&CLASS), Some(100 * MI));
        assert!(
            matches!(&p, Plan::Infeasible { event, .. } if event.note.contains("from 512 MiB to 640 MiB")),
            "{p:?}"
        );
        // Bound without a recorded size yet: the next pass plans it.
        let fresh = Claim { capacity: None, ..claim(2 * GI) };
        assert_eq!(plan(&fresh, Some(&volume(GI)), Some(&CLASS), Some(10 * GI)), Plan::Nothing);
    }

    /// A final failure on the node (NodeResizeFailed, NodeResizeInfeasible) stays until the user
    /// changes the request, as a refusal here does.
    #[test]
    fn a_failure_on_the_node_is_not_retried_in_a_loop() {
        for status in [NODE_RESIZE_FAILED, NODE_RESIZE_INFEASIBLE] {
            let failed = Claim { allocated: Some(2 * GI), resize_status: Some(status.into()), ..claim(2 * GI) };
            assert_eq!(plan(&failed, Some(&volume(2 * GI)), Some(&CLASS), Some(10 * GI)), Plan::Nothing);
            let changed = Claim { requested: 3 * GI, ..failed };
            assert!(
                matches!(plan(&changed, Some(&volume(2 * GI)), Some(&CLASS), Some(10 * GI)), Plan::Expand { bytes, .. } if bytes == 3 * GI)
            );
        }
    }
}
