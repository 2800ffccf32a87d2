//! Group snapshots: snapshots of several volumes that hold one instant, made and deleted whole.
//!
//! One pool transaction for the whole group: every member's intent is written in one store
//! transaction (all committing as the same pool transaction id); every active source is suspended
//! with a flush, in a fixed order (ascending thin id), so no write reaches any of them while the
//! snapshots are cut; one `create_snap` per member; every source resumed (on every path, in reverse
//! order); then `set_transaction_id` once, the commit point, and every record and the group's in
//! one store transaction. Recovery's decision table then treats all members alike: a crash before
//! the commit point rolls every member back, after it rolls every one forward.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::crash;
use super::error::EngineError;
use super::{logged, now_unix, DeleteOutcome, Engine};
use crate::dm::{DmError, ThinPool};
use crate::names::{Name, MAX_NAME_LEN};
use crate::store::{GroupRecord, Intent, Kind, Record, Source};
use crate::units::ThinId;

/// The crash points of a group snapshot, in order (the VM suite kills the process at each).
pub const GROUP_POINTS: [&str; 4] = ["after-intent", "after-first-member", "after-messages", "after-commit-point"];

/// A group snapshot and its snapshots (sorted by name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub record: GroupRecord,
    pub members: Vec<Record>,
}

impl Group {
    /// The volumes it holds snapshots of.
    pub fn sources(&self) -> BTreeSet<Name> {
        self.members
            .iter()
            .filter_map(|m| match &m.source {
                Some(Source::Volume(v)) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn size_bytes(&self) -> u64 {
        self.members.iter().fold(0u64, |s, m| s.saturating_add(m.size_bytes))
    }
}

/// Whether a group snapshot call made the group or found it made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MadeGroup {
    /// Made now; writers were held this long.
    Created(Group, Duration),
    Existing(Group),
}

impl MadeGroup {
    pub fn group(&self) -> &Group {
        match self {
            MadeGroup::Created(g, _) | MadeGroup::Existing(g) => g,
        }
    }
}

/// The name of the `index`th member of `group` (sources in name order): `<group>:<index>`, or,
/// when that would be too long for a name, `g<digest of the group name>:<index>`.
pub fn member_name(group: &Name, index: usize) -> Name {
    let readable = format!("{group}:{index}");
    let text = if readable.len() <= MAX_NAME_LEN {
        readable
    } else {
        let digest = Sha256::digest(group.as_str().as_bytes());
        let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
        format!("g{hex}:{index}")
    };
    // Letters, digits, ':' and what a valid group name holds: always a valid name.
    Name::new(&text).unwrap_or_else(|_| group.clone())
}

/// The plan of a group: (member name, source volume) for each source, sources in name order.
/// No source, or one named twice, is refused.
pub fn plan(group: &Name, sources: &[Name]) -> Result<Vec<(Name, Name)>, EngineError> {
    if sources.is_empty() {
        return Err(EngineError::InvalidGroup("a group snapshot needs at least one source volume".into()));
    }
    let sorted: BTreeSet<&Name> = sources.iter().collect();
    if sorted.len() != sources.len() {
        return Err(EngineError::InvalidGroup("a source volume is named more than once".into()));
    }
    Ok(sorted.into_iter().enumerate().map(|(i, s)| (member_name(group, i), s.clone())).collect())
}

fn tolerate_gone(r: Result<(), DmError>) -> Result<(), DmError> {
    match r {
        Err(e) if e.errno() == Some(Errno::ENODATA) => Ok(()),
        other => other,
    }
}

impl<P: ThinPool> Engine<P> {
    /// Snapshots every volume of `sources` at one instant, as group `name` (idempotent on the
    /// name and the set of sources).
    pub fn create_group_snapshot(&self, name: &str, sources: &[String]) -> Result<MadeGroup, EngineError> {
        logged("create_group_snapshot", name, || {
            let name = Name::new(name)?;
            let sources = sources.iter().map(|s| Name::new(s)).collect::<Result<Vec<_>, _>>()?;
            let plan = plan(&name, &sources)?;
            let _w = self.lock();
            self.recover_open_intents()?;
            if let Some(existing) = self.group_locked(&name)? {
                let wanted: BTreeSet<Name> = sources.into_iter().collect();
                let had = existing.sources();
                if had == wanted {
                    return Ok(MadeGroup::Existing(existing));
                }
                let had: Vec<&str> = had.iter().map(Name::as_str).collect();
                return Err(EngineError::GroupExists {
                    name,
                    reason: format!("it holds snapshots of {}", had.join(", ")),
                });
            }
            for (member, _) in &plan {
                if let Some(r) = self.store.get(Kind::Snapshot, member)? {
                    return Err(EngineError::AlreadyExists {
                        kind: Kind::Snapshot,
                        name: member.clone(),
                        reason: format!(
                            "group snapshot {name} names its snapshots {name}:N, and this one is a snapshot of {}",
                            Source::describe(r.source.as_ref())
                        ),
                    });
                }
            }
            let origins =
                plan.iter().map(|(_, src)| self.must_get(Kind::Volume, src)).collect::<Result<Vec<_>, _>>()?;
            self.admit(origins.iter().fold(0u64, |s, r| s.saturating_add(r.size_bytes)))?;
            let created = now_unix();
            let t = self.pool_tid()?;
            let makers = plan
                .iter()
                .zip(&origins)
                .map(|((member, source), origin)| {
                    let (member, source, group, size) =
                        (member.clone(), source.clone(), name.clone(), origin.size_bytes);
                    let make: crate::store::MakeRecord = Box::new(move |thin_id| Record {
                        name: member,
                        kind: Kind::Snapshot,
                        thin_id,
                        size_bytes: size,
                        requested_bytes: size,
                        source: Some(Source::Volume(source)),
                        created_unix: created,
                        group: Some(group),
                    });
                    (origin.thin_id, make)
                })
                .collect();
            let intents = self.store.begin_group_create(t + 1, makers)?;
            crash::point("group", "after-intent");
            let held = self.cut_group(&intents)?;
            crash::point("group", "after-messages");
            if let Err(e) = self.pool.set_transaction_id(t, t + 1) {
                for intent in &intents {
                    self.recover_intent(intent)?;
                }
                return Err(e.into());
            }
            crash::point("group", "after-commit-point");
            self.store.commit_all(&intents)?;
            tracing::info!(
                group = %name,
                members = intents.len(),
                writers_held_ms = held.as_secs_f64() * 1000.0,
                "group snapshot cut"
            );
            let mut members: Vec<Record> = intents.into_iter().map(|i| i.record).collect();
            members.sort_by(|a, b| a.name.cmp(&b.name));
            let record =
                GroupRecord { name, members: members.iter().map(|m| m.name.clone()).collect(), created_unix: created };
            Ok(MadeGroup::Created(Group { record, members }, held))
        })
    }

    /// Suspends every active source (ascending thin id, each once), cuts every member's snapshot,
    /// resumes every source it suspended (reverse order), also when something failed. On failure
    /// the snapshots cut are deleted and every intent dropped: the pool is as before. Returns how
    /// long the first source was held.
    fn cut_group(&self, intents: &[Intent]) -> Result<Duration, EngineError> {
        let origins: BTreeSet<ThinId> = intents.iter().filter_map(|i| i.origin).collect();
        let start = Instant::now();
        let mut held = Vec::new();
        let mut failure: Option<DmError> = None;
        for origin in &origins {
            match self.pool.suspend_thin(*origin) {
                Ok(true) => held.push(*origin),
                Ok(false) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut cut = Vec::new();
        if failure.is_none() {
            for intent in intents {
                let Some(origin) = intent.origin else { continue };
                if let Err(e) = self.pool.create_snap_held(intent.record.thin_id, origin) {
                    failure = Some(e);
                    break;
                }
                cut.push(intent.record.thin_id);
                if cut.len() == 1 {
                    crash::point("group", "after-first-member");
                }
            }
        }
        for origin in held.iter().rev() {
            if let Err(e) = self.pool.resume(*origin) {
                tracing::error!(thin_id = %origin, error = %e, "resuming a group snapshot's source failed");
                failure.get_or_insert(e);
            }
        }
        let held_for = start.elapsed();
        let Some(e) = failure else { return Ok(held_for) };
        for id in cut {
            tolerate_gone(self.pool.delete_thin(id))?;
        }
        self.store.abort_all(intents)?;
        Err(e.into())
    }

    fn group_locked(&self, name: &Name) -> Result<Option<Group>, EngineError> {
        self.store.group(name)?.map(|record| self.with_members(record)).transpose()
    }

    /// A group record with its members' records.
    fn with_members(&self, record: GroupRecord) -> Result<Group, EngineError> {
        let mut members = Vec::new();
        for m in &record.members {
            members.extend(self.store.get(Kind::Snapshot, m)?);
        }
        Ok(Group { record, members })
    }

    pub fn get_group(&self, name: &str) -> Result<Option<Group>, EngineError> {
        self.group_locked(&Name::new(name)?)
    }

    /// Every group snapshot, by name.
    pub fn list_groups(&self) -> Result<Vec<Group>, EngineError> {
        self.store.groups()?.into_iter().map(|record| self.with_members(record)).collect()
    }

    /// Deletes group snapshot `name` and all its snapshots: the group's record goes and every
    /// member moves to the deleting table in one store transaction, then each member's delete is
    /// carried through (a busy one later, as any deferred delete). Unknown names are success.
    pub fn delete_group(&self, name: &str) -> Result<DeleteOutcome, EngineError> {
        logged("delete_group_snapshot", name, || {
            let name = Name::new(name)?;
            let _w = self.lock();
            self.recover_open_intents()?;
            let Some(members) = self.store.mark_group_deleting(&name)? else { return Ok(DeleteOutcome::NotFound) };
            let mut outcome = DeleteOutcome::Deleted;
            for record in members {
                if self.finish_delete(record)? == DeleteOutcome::Deferred {
                    outcome = DeleteOutcome::Deferred;
                }
            }
            Ok(outcome)
        })
    }

    /// Group snapshots whose record and snapshots disagree (a member missing, or a snapshot that
    /// names a group which does not list it): what `pool check` reports as inconsistent.
    pub(super) fn inconsistent_groups(&self) -> Result<Vec<String>, EngineError> {
        let groups = self.store.groups()?;
        let snapshots = self.store.list(Kind::Snapshot)?;
        let mut out = BTreeSet::new();
        for g in &groups {
            for m in &g.members {
                if !snapshots.iter().any(|s| &s.name == m && s.group.as_ref() == Some(&g.name)) {
                    out.insert(g.name.to_string());
                }
            }
        }
        for s in snapshots.iter().filter(|s| s.group.is_some()) {
            let group = s.group.as_ref().map(Name::as_str).unwrap_or_default();
            if !groups.iter().any(|g| g.name.as_str() == group && g.members.contains(&s.name)) {
                out.insert(group.to_owned());
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn members_are_named_after_the_group_in_source_order() {
        let p = plan(&n("g1"), &[n("vol-b"), n("vol-a")]).unwrap();
        assert_eq!(p, vec![(n("g1:0"), n("vol-a")), (n("g1:1"), n("vol-b"))]);
        // Any order of the same sources plans the same members.
        assert_eq!(plan(&n("g1"), &[n("vol-a"), n("vol-b")]).unwrap(), p);
    }

    #[test]
    fn a_long_group_name_gets_digested_member_names() {
        let long = n(&"g".repeat(MAX_NAME_LEN));
        let m = member_name(&long, 31);
        assert!(m.as_str().len() <= MAX_NAME_LEN);
        assert!(m.as_str().ends_with(":31"), "{m}");
        assert_ne!(member_name(&n(&"h".repeat(MAX_NAME_LEN)), 31), m, "another group, other names");
    }

    #[test]
    fn no_source_or_a_repeated_one_is_refused() {
        assert!(matches!(plan(&n("g"), &[]), Err(EngineError::InvalidGroup(_))));
        assert!(matches!(plan(&n("g"), &[n("a"), n("a")]), Err(EngineError::InvalidGroup(_))));
    }
}
