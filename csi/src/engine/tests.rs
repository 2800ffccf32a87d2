//! Engine unit tests against the in-memory pool: idempotency, admission, bad input, the
//! transaction protocol under injected failures, and recovery of every interrupted step.

use nix::errno::Errno;

use super::*;
use crate::dm::memory::MemoryPool;
use crate::dm::PoolMode;
use crate::store::Intent;

const GIB: u64 = 1 << 30;

fn engine_with(pool: MemoryPool) -> (Engine<MemoryPool>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let limits = Limits { overprovision_ratio: 2.0, data_fill_limit_pct: 90.0, meta_fill_limit_pct: 80.0 };
    let (e, report) = Engine::open(pool, store, limits).unwrap();
    assert!(report.adopted_new_pool);
    (e, dir)
}

fn engine() -> (Engine<MemoryPool>, tempfile::TempDir) {
    engine_with(MemoryPool::new(10 * GIB))
}

fn assert_clean(e: &Engine<MemoryPool>) {
    let c = e.check().unwrap();
    assert!(c.is_clean(), "{c:?}");
}

#[test]
fn create_is_idempotent_by_name_and_parameters() {
    let (e, _d) = engine();
    let a = e.create_volume("v1", GIB, None).unwrap();
    assert!(matches!(a, Made::Created(_)));
    let b = e.create_volume("v1", GIB, None).unwrap();
    assert_eq!(b, Made::Existing(a.record().clone()));
    assert!(matches!(e.create_volume("v1", 2 * GIB, None), Err(EngineError::AlreadyExists { .. })));
    let other_source = Some(Source::Volume(Name::new("v1").unwrap()));
    assert!(matches!(e.create_volume("v1", GIB, other_source), Err(EngineError::AlreadyExists { .. })));
    assert_eq!(e.pool().transaction_id(), 1);
    assert_clean(&e);
}

#[test]
fn snapshot_restore_clone_and_delete() {
    let (e, _d) = engine();
    let v = e.create_volume("base", GIB, None).unwrap().record().clone();
    let s = e.create_snapshot("snap", "base").unwrap().record().clone();
    assert_eq!(s.size_bytes, GIB);
    assert_eq!(s.source, Some(Source::Volume(v.name.clone())));
    assert!(matches!(e.create_snapshot("snap", "base"), Ok(Made::Existing(_))));
    e.create_volume("other", GIB, None).unwrap();
    assert!(matches!(e.create_snapshot("snap", "other"), Err(EngineError::AlreadyExists { .. })));
    assert!(matches!(e.create_snapshot("s2", "missing"), Err(EngineError::NotFound { .. })));

    let from_snap = Some(Source::Snapshot(Name::new("snap").unwrap()));
    let r = e.create_volume("restored", 2 * GIB, from_snap.clone()).unwrap();
    assert_eq!(r.record().size_bytes, 2 * GIB);
    assert!(matches!(e.create_volume("small", GIB / 2, from_snap), Err(EngineError::InvalidSize { .. })));
    let clone = Some(Source::Volume(Name::new("base").unwrap()));
    e.create_volume("clone", GIB, clone).unwrap();

    // A snapshot outlives its origin.
    assert_eq!(e.delete(Kind::Volume, "base").unwrap(), DeleteOutcome::Deleted);
    assert!(e.get(Kind::Snapshot, "snap").unwrap().is_some());
    assert_eq!(e.delete(Kind::Volume, "base").unwrap(), DeleteOutcome::NotFound);
    assert_eq!(e.delete(Kind::Snapshot, "snap").unwrap(), DeleteOutcome::Deleted);
    assert_clean(&e);
    assert_eq!(e.list(Kind::Volume).unwrap().len(), 3);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (e, _d) = engine();
    let before = e.pool().message_count();
    for size in [0, 1, 511, 513, MAX_DEVICE_BYTES + 512] {
        assert!(matches!(e.create_volume("v", size, None), Err(EngineError::InvalidSize { .. })), "{size}");
    }
    for name in ["", "a/b", "..", "a\0b", &"x".repeat(129)] {
        assert!(matches!(e.create_volume(name, GIB, None), Err(EngineError::InvalidName(_))), "{name:?}");
        assert!(matches!(e.create_snapshot(name, "v"), Err(EngineError::InvalidName(_))));
        assert!(matches!(e.delete(Kind::Volume, name), Err(EngineError::InvalidName(_))));
    }
    // Larger than the pool's budget (10 GiB data x 2).
    assert!(matches!(
        e.create_volume("huge", 64 * GIB, None),
        Err(EngineError::ResourceExhausted(Refusal::Budget { .. }))
    ));
    assert_eq!(e.pool().message_count(), before);
    assert!(e.list(Kind::Volume).unwrap().is_empty());
    assert_clean(&e);
}

#[test]
fn admission_follows_budget_fill_and_mode() {
    let (e, _d) = engine();
    e.create_volume("a", 15 * GIB, None).unwrap();
    // 20 GiB budget, 15 provisioned: a 6 GiB snapshot of nothing fits no more.
    assert!(matches!(e.create_volume("b", 6 * GIB, None), Err(EngineError::ResourceExhausted(_))));
    assert!(matches!(e.create_snapshot("s", "a"), Err(EngineError::ResourceExhausted(_))));
    e.create_volume("b", 5 * GIB, None).unwrap();
    assert_eq!(e.capacity().unwrap().allowed_new_bytes, 0);
    e.delete(Kind::Volume, "b").unwrap();
    assert_eq!(e.capacity().unwrap().allowed_new_bytes, 5 * GIB);

    e.pool().set_data_used_blocks(10 * GIB / (64 << 10) * 95 / 100);
    assert!(matches!(e.create_volume("c", GIB, None), Err(EngineError::ResourceExhausted(Refusal::DataFill { .. }))));
    e.pool().set_data_used_blocks(0);
    e.pool().set_meta_used_blocks(900);
    assert!(matches!(
        e.create_volume("c", GIB, None),
        Err(EngineError::ResourceExhausted(Refusal::MetadataFill { .. }))
    ));
    e.pool().set_meta_used_blocks(10);
    e.pool().set_mode(PoolMode::Ro);
    assert!(matches!(e.create_volume("c", GIB, None), Err(EngineError::ResourceExhausted(Refusal::PoolMode { .. }))));
    e.pool().set_mode(PoolMode::Rw);
    e.pool().set_needs_check(true);
    assert!(matches!(e.create_volume("c", GIB, None), Err(EngineError::ResourceExhausted(Refusal::NeedsCheck))));
}

#[test]
fn expand_grows_and_refuses_to_shrink() {
    let (e, _d) = engine();
    e.create_volume("v", GIB, None).unwrap();
    e.create_snapshot("s", "v").unwrap();
    e.activate(Kind::Volume, "v").unwrap();
    assert_eq!(e.expand_volume("v", 2 * GIB).unwrap().size_bytes, 2 * GIB);
    assert_eq!(e.expand_volume("v", 2 * GIB).unwrap().size_bytes, 2 * GIB);
    assert!(matches!(e.expand_volume("v", GIB), Err(EngineError::InvalidSize { .. })));
    assert!(matches!(e.expand_volume("v", 100 * GIB), Err(EngineError::ResourceExhausted(_))));
    assert!(matches!(e.expand_volume("nope", 2 * GIB), Err(EngineError::NotFound { .. })));
    // The requested size still identifies the create call.
    assert!(matches!(e.create_volume("v", GIB, None), Ok(Made::Existing(_))));
}

#[test]
fn deletes_of_open_devices_are_deferred_and_finished_later() {
    let (e, _d) = engine();
    e.create_volume("v", GIB, None).unwrap();
    let id = e.get(Kind::Volume, "v").unwrap().unwrap().thin_id;
    e.activate(Kind::Volume, "v").unwrap();
    e.pool().set_open(id, 1);
    assert!(matches!(e.deactivate(Kind::Volume, "v"), Err(EngineError::Busy { .. })));
    assert_eq!(e.delete(Kind::Volume, "v").unwrap(), DeleteOutcome::Deferred);
    // The name is free at once; the old device is still counted until it is gone.
    assert!(e.get(Kind::Volume, "v").unwrap().is_none());
    assert_eq!(e.provisioned_bytes().unwrap(), GIB);
    let again = e.create_volume("v", GIB, None).unwrap();
    assert_ne!(again.record().thin_id, id);
    assert_eq!(e.retry_deferred().unwrap(), 0);
    e.pool().set_open(id, 0);
    assert_eq!(e.retry_deferred().unwrap(), 1);
    assert_eq!(e.provisioned_bytes().unwrap(), GIB);
    assert_clean(&e);
}

#[test]
fn a_failed_message_leaves_nothing_behind() {
    let (e, _d) = engine();
    e.pool().fail_next("create_thin", Errno::ENOSPC);
    assert!(matches!(e.create_volume("v", GIB, None), Err(EngineError::Dm(_))));
    assert!(e.store.intents().unwrap().is_empty());
    assert_eq!(e.pool().transaction_id(), 0);
    e.create_volume("v", GIB, None).unwrap();
    assert_clean(&e);
}

#[test]
fn a_failed_commit_point_is_rolled_back_at_once() {
    let (e, _d) = engine();
    e.pool().fail_next("set_transaction_id", Errno::EIO);
    assert!(e.create_volume("v", GIB, None).is_err());
    assert!(e.store.intents().unwrap().is_empty());
    assert!(e.pool().thin_ids().unwrap().is_empty());
    assert_clean(&e);
}

/// Simulates a crash after each step of a create, snapshot and delete by replaying the steps by
/// hand up to that point, then reopening the engine on the same store and pool.
#[test]
fn recovery_after_every_step() {
    for op in ["create", "snapshot", "delete"] {
        for step in 1..=3 {
            let pool = MemoryPool::new(10 * GIB);
            let dir = tempfile::tempdir().unwrap();
            let limits = Limits::default();
            let (e, _) = Engine::open(pool, Store::open(dir.path()).unwrap(), limits).unwrap();
            e.create_volume("base", GIB, None).unwrap();
            let base = e.get(Kind::Volume, "base").unwrap().unwrap();
            let t = e.pool().transaction_id();
            let intent: Intent = match op {
                "delete" => {
                    let r = e.store.mark_deleting(Kind::Volume, &base.name).unwrap();
                    e.store.begin_delete(t + 1, r).unwrap()
                }
                _ => {
                    let origin = (op == "snapshot").then_some(base.thin_id);
                    e.store
                        .begin_create(t + 1, origin, |thin_id| Record {
                            name: Name::new("new").unwrap(),
                            kind: if origin.is_some() { Kind::Snapshot } else { Kind::Volume },
                            thin_id,
                            size_bytes: GIB,
                            requested_bytes: GIB,
                            source: None,
                            created_unix: 0,
                            group: None,
                        })
                        .unwrap()
                }
            };
            let id = intent.record.thin_id;
            if step >= 2 {
                match (op, intent.origin) {
                    ("delete", _) => e.pool().delete_thin(id).unwrap(),
                    (_, Some(o)) => e.pool().create_snap(id, o).unwrap(),
                    _ => e.pool().create_thin(id).unwrap(),
                }
            }
            if step >= 3 {
                e.pool().set_transaction_id(t, t + 1).unwrap();
            }
            // "Crash": drop the engine and reopen on the same store and pool.
            let Engine { pool, store, .. } = e;
            drop(store);
            let (e, report) = Engine::open(pool, Store::open(dir.path()).unwrap(), limits).unwrap();
            assert_eq!(report.recovered_intents, 1, "{op} step {step}");
            assert_clean(&e);
            let new_exists =
                e.get(Kind::Volume, "new").unwrap().is_some() || e.get(Kind::Snapshot, "new").unwrap().is_some();
            let base_exists = e.get(Kind::Volume, "base").unwrap().is_some();
            match op {
                "delete" => assert!(!base_exists, "a begun delete is carried through (step {step})"),
                _ => assert_eq!(new_exists, step == 3, "{op} step {step}"),
            }
            assert!(e.store.intents().unwrap().is_empty());
        }
    }
}

#[test]
fn refuses_a_pool_changed_behind_its_back() {
    let pool = MemoryPool::new(10 * GIB);
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(pool, Store::open(dir.path()).unwrap(), Limits::default()).unwrap();
    e.create_volume("v", GIB, None).unwrap();
    let Engine { pool, store, .. } = e;
    drop(store);
    pool.force_transaction_id(7);
    let r = Engine::open(pool, Store::open(dir.path()).unwrap(), Limits::default());
    assert!(matches!(r, Err(EngineError::Inconsistent(_))));
}

#[test]
fn refuses_to_adopt_a_pool_with_unrecorded_data() {
    let pool = MemoryPool::new(10 * GIB);
    pool.force_transaction_id(3);
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Engine::open(pool, Store::open(dir.path()).unwrap(), Limits::default()),
        Err(EngineError::ForeignPool(_))
    ));
    let pool = MemoryPool::new(10 * GIB);
    pool.set_data_used_blocks(5);
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Engine::open(pool, Store::open(dir.path()).unwrap(), Limits::default()),
        Err(EngineError::ForeignPool(_))
    ));
}

#[test]
fn orphans_are_reported_not_deleted() {
    let (e, _d) = engine();
    e.pool().force_create(ThinId::new(999).unwrap());
    let c = e.check().unwrap();
    assert_eq!(c.orphan_thin_ids, vec![ThinId::new(999).unwrap()]);
    assert!(!c.is_clean());
    assert!(e.pool().thin_ids().unwrap().contains(&ThinId::new(999).unwrap()));
}

#[test]
fn thin_ids_are_not_reused_before_the_delete_commits() {
    let (e, _d) = engine();
    let a = e.create_volume("a", GIB, None).unwrap().record().thin_id;
    e.delete(Kind::Volume, "a").unwrap();
    let b = e.create_volume("b", GIB, None).unwrap().record().thin_id;
    assert_ne!(a, b);
}
