//! Group snapshots against the in-memory pool: the order of suspends, messages and resumes, one
//! commit point for the whole group, idempotency and every refusal, every failure path leaving the
//! pool as before, deletion whole, and recovery of a crash at each step: whole or nothing.

use nix::errno::Errno;

use super::group::{member_name, MadeGroup};
use super::*;
use crate::dm::memory::MemoryPool;
use crate::store::Intent;

const GIB: u64 = 1 << 30;

fn limits() -> Limits {
    Limits { overprovision_ratio: 2.0, data_fill_limit_pct: 90.0, meta_fill_limit_pct: 80.0 }
}

/// An engine with volumes a, b, c of 1 GiB; a and c active (as a mounted volume is).
fn engine() -> (Engine<MemoryPool>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(MemoryPool::new(10 * GIB), Store::open(dir.path()).unwrap(), limits()).unwrap();
    for v in ["a", "b", "c"] {
        e.create_volume(v, GIB, None).unwrap();
    }
    e.activate(Kind::Volume, "a").unwrap();
    e.activate(Kind::Volume, "c").unwrap();
    (e, dir)
}

fn id_of(e: &Engine<MemoryPool>, kind: Kind, name: &str) -> ThinId {
    e.get(kind, name).unwrap().unwrap().thin_id
}

fn sources(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn assert_clean(e: &Engine<MemoryPool>) {
    let c = e.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
}

#[test]
fn every_active_source_is_held_while_all_snapshots_are_cut_and_one_commit_point() {
    let (e, _d) = engine();
    let t = e.pool().transaction_id();
    let made = e.create_group_snapshot("g1", &sources(&["c", "a", "b"])).unwrap();
    let MadeGroup::Created(g, _) = &made else { panic!("{made:?}") };
    let (a, c) = (id_of(&e, Kind::Volume, "a"), id_of(&e, Kind::Volume, "c"));
    let m: Vec<ThinId> = ["g1:0", "g1:1", "g1:2"].iter().map(|n| id_of(&e, Kind::Snapshot, n)).collect();
    let b = id_of(&e, Kind::Volume, "b");
    // Suspends in ascending thin id (b is not active: nothing can write to it), every snapshot
    // cut while both are held, resumes in reverse order.
    assert_eq!(
        e.pool().log(),
        vec![
            format!("suspend {a}"),
            format!("suspend {c}"),
            format!("create_snap {} {a}", m[0]),
            format!("create_snap {} {b}", m[1]),
            format!("create_snap {} {c}", m[2]),
            format!("resume {c}"),
            format!("resume {a}"),
        ]
    );
    assert_eq!(e.pool().transaction_id(), t + 1, "one commit point for the whole group");
    assert!(!e.pool().is_suspended(a) && !e.pool().is_suspended(c));
    assert_eq!(
        g.record.members,
        vec![member_name(&g.record.name, 0), member_name(&g.record.name, 1), member_name(&g.record.name, 2)]
    );
    for (member, source) in g.members.iter().zip(["a", "b", "c"]) {
        assert_eq!(member.group.as_ref().map(Name::as_str), Some("g1"));
        assert_eq!(member.source, Some(Source::Volume(Name::new(source).unwrap())));
        assert_eq!(member.size_bytes, GIB);
    }
    // A member restores like any snapshot.
    let restored = e.create_volume("r", GIB, Some(Source::Snapshot(Name::new("g1:1").unwrap()))).unwrap();
    assert_eq!(restored.record().source, Some(Source::Snapshot(Name::new("g1:1").unwrap())));
    assert_clean(&e);
}

#[test]
fn idempotent_on_name_and_sources_and_each_refusal() {
    let (e, _d) = engine();
    let first = e.create_group_snapshot("g1", &sources(&["a", "b"])).unwrap();
    let again = e.create_group_snapshot("g1", &sources(&["b", "a"])).unwrap();
    assert_eq!(again, MadeGroup::Existing(first.group().clone()));
    let tid = e.pool().transaction_id();
    assert!(matches!(e.create_group_snapshot("g1", &sources(&["a", "c"])), Err(EngineError::GroupExists { .. })));
    assert!(matches!(e.create_group_snapshot("g2", &sources(&["a", "nope"])), Err(EngineError::NotFound { .. })));
    assert!(matches!(e.create_group_snapshot("g2", &sources(&[])), Err(EngineError::InvalidGroup(_))));
    assert!(matches!(e.create_group_snapshot("g2", &sources(&["a", "a"])), Err(EngineError::InvalidGroup(_))));
    assert!(matches!(e.create_group_snapshot("bad/name", &sources(&["a"])), Err(EngineError::InvalidName(_))));
    // A snapshot already holds a member's name: refused, naming it.
    e.create_snapshot("g3:0", "a").unwrap();
    let tid_after_snap = e.pool().transaction_id();
    match e.create_group_snapshot("g3", &sources(&["a"])) {
        Err(EngineError::AlreadyExists { kind: Kind::Snapshot, name, .. }) => assert_eq!(name.as_str(), "g3:0"),
        other => panic!("{other:?}"),
    }
    assert_eq!(tid + 1, tid_after_snap, "no refusal changed the pool");
    // More than the pool may provision: 2.0 × 10 GiB, of which 3 + 2 + 1 GiB are taken.
    for i in 0..12 {
        e.create_volume(&format!("big{i}"), GIB, None).unwrap();
    }
    assert!(matches!(
        e.create_group_snapshot("g4", &sources(&["a", "b", "c"])),
        Err(EngineError::ResourceExhausted(Refusal::Budget { .. }))
    ));
    assert_clean(&e);
}

#[test]
fn a_failure_at_any_step_leaves_the_pool_as_before_and_nothing_suspended() {
    // (the failing call, how many calls of it succeed first, its error)
    for (op, skip, errno) in [
        ("suspend", 1, Errno::EIO),
        ("create_snap", 1, Errno::ENOSPC),
        ("resume", 0, Errno::EIO),
        ("set_transaction_id", 0, Errno::EIO),
    ] {
        let (e, _d) = engine();
        let before = e.pool().thin_ids().unwrap();
        let tid = e.pool().transaction_id();
        e.pool().fail_later(op, skip, errno);
        let r = e.create_group_snapshot("g1", &sources(&["a", "b", "c"]));
        assert!(r.is_err(), "{op}: {r:?}");
        assert_eq!(e.pool().thin_ids().unwrap(), before, "{op}: no snapshot left in the pool");
        assert_eq!(e.pool().transaction_id(), tid, "{op}: no commit");
        for v in ["a", "c"] {
            let id = id_of(&e, Kind::Volume, v);
            assert!(!e.pool().is_suspended(id) || op == "resume", "{op}: {v} left suspended");
        }
        assert!(e.store.intents().unwrap().is_empty(), "{op}");
        assert!(e.list_groups().unwrap().is_empty(), "{op}");
        assert!(e.list(Kind::Snapshot).unwrap().is_empty(), "{op}");
        // Nothing half-made blocks the next try.
        if op == "resume" {
            for v in ["a", "c"] {
                e.pool().resume(id_of(&e, Kind::Volume, v)).unwrap();
            }
        }
        let made = e.create_group_snapshot("g1", &sources(&["a", "b", "c"])).unwrap();
        assert!(matches!(made, MadeGroup::Created(..)), "{op}");
        assert_clean(&e);
    }
}

#[test]
fn members_are_deleted_with_their_group_only() {
    let (e, _d) = engine();
    e.create_group_snapshot("g1", &sources(&["a", "b"])).unwrap();
    let before = e.pool().thin_ids().unwrap().len();
    match e.delete(Kind::Snapshot, "g1:0") {
        Err(EngineError::GroupMember { name, group }) => assert_eq!((name.as_str(), group.as_str()), ("g1:0", "g1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.pool().thin_ids().unwrap().len(), before, "the refused delete changed nothing");
    // A member in use (restoring from it, say) is deleted later; the group is gone at once.
    let m1 = id_of(&e, Kind::Snapshot, "g1:1");
    e.activate(Kind::Snapshot, "g1:1").unwrap();
    e.pool().set_open(m1, 1);
    assert_eq!(e.delete_group("g1").unwrap(), DeleteOutcome::Deferred);
    assert!(e.get_group("g1").unwrap().is_none());
    assert!(e.get(Kind::Snapshot, "g1:0").unwrap().is_none() && e.get(Kind::Snapshot, "g1:1").unwrap().is_none());
    assert_eq!(e.pool().thin_ids().unwrap().len(), before - 1);
    e.pool().set_open(m1, 0);
    assert_eq!(e.retry_deferred().unwrap(), 1);
    assert_eq!(e.pool().thin_ids().unwrap().len(), before - 2);
    assert_eq!(e.delete_group("g1").unwrap(), DeleteOutcome::NotFound);
    assert_clean(&e);
}

/// A crash after each step of a group snapshot, replayed by hand up to that step, then the
/// engine reopened on the same store and pool: the whole group or none of it.
#[test]
fn recovery_after_every_step_is_whole_or_nothing() {
    // 1 intents written; 2 one member cut; 3 every member cut; 4 commit point.
    for step in 1..=4 {
        let (e, dir) = engine();
        let t = e.pool().transaction_id();
        let group = Name::new("g1").unwrap();
        let makers = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let origin = id_of(&e, Kind::Volume, v);
                let (group, source) = (group.clone(), Name::new(v).unwrap());
                let make: crate::store::MakeRecord = Box::new(move |thin_id| Record {
                    name: member_name(&group, i),
                    kind: Kind::Snapshot,
                    thin_id,
                    size_bytes: GIB,
                    requested_bytes: GIB,
                    source: Some(Source::Volume(source)),
                    created_unix: 0,
                    group: Some(group),
                });
                (origin, make)
            })
            .collect();
        let intents: Vec<Intent> = e.store.begin_group_create(t + 1, makers).unwrap();
        let held: Vec<ThinId> = intents.iter().filter_map(|i| i.origin).collect();
        for o in &held {
            e.pool().suspend_thin(*o).unwrap();
        }
        let cut = match step {
            1 => 0,
            2 => 1,
            _ => 3,
        };
        for i in intents.iter().take(cut) {
            e.pool().create_snap_held(i.record.thin_id, i.origin.unwrap()).unwrap();
        }
        if step == 4 {
            e.pool().set_transaction_id(t, t + 1).unwrap();
        }
        // "Crash" with the sources still suspended.
        let Engine { pool, store, .. } = e;
        drop(store);
        let (e, report) = Engine::open(pool, Store::open(dir.path()).unwrap(), limits()).unwrap();
        assert_eq!(report.recovered_intents, 3, "step {step}");
        assert_eq!(report.resumed_devices.len(), 2, "step {step}: both active sources resumed");
        assert_clean(&e);
        let members = e.list(Kind::Snapshot).unwrap().len();
        let group = e.get_group("g1").unwrap();
        if step == 4 {
            assert_eq!(members, 3, "step {step}");
            assert_eq!(group.map(|g| g.members.len()), Some(3), "step {step}");
        } else {
            assert_eq!(members, 0, "step {step}");
            assert!(group.is_none(), "step {step}");
        }
    }
}

#[test]
fn check_counts_a_half_made_group_as_inconsistent() {
    let (e, _d) = engine();
    e.create_group_snapshot("g1", &sources(&["a", "b"])).unwrap();
    assert_clean(&e);
    // A member's record lost (a store edited by hand): the group is half made.
    e.store.mark_deleting(Kind::Snapshot, &Name::new("g1:1").unwrap()).unwrap();
    let c = e.check().unwrap();
    assert_eq!(c.inconsistent_groups, vec!["g1".to_owned()]);
    assert!(!c.is_clean());
}
