//! The volume lifecycle on one pool: create, delete, snapshot, group snapshot (`group`), restore,
//! clone, expand, list, get, keyed by caller-chosen names and idempotent (the same name with the same parameters returns
//! the existing object; with other parameters it is `AlreadyExists`). One writer at a time.
//! Every pool change is a journaled transaction (`txn`), and start-up recovery runs in
//! [`Engine::open`] before anything is served.

pub mod capacity;
pub mod crash;
pub mod deferred;
pub mod error;
pub mod group;
pub mod recovery;
mod txn;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use capacity::{Capacity, Limits, PoolState};
pub use error::{EngineError, Refusal};
pub use group::{Group, MadeGroup};
pub use txn::DeleteOutcome;

use crate::dm::{PoolInfo, PoolStatus, ThinPool};
use crate::names::Name;
use crate::store::{Kind, Record, Source, Store};
use crate::units::{ThinId, SECTOR};

/// The largest virtual size of a thin device we accept (dm-thin's limit is far above; this keeps
/// sector arithmetic well inside u64).
pub const MAX_DEVICE_BYTES: u64 = 1 << 56;

/// Whether a call made something or found it made already.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "record", rename_all = "snake_case")]
pub enum Made {
    Created(Record),
    Existing(Record),
}

impl Made {
    pub fn record(&self) -> &Record {
        match self {
            Made::Created(r) | Made::Existing(r) => r,
        }
    }
}

/// What start-up found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StartupReport {
    pub adopted_new_pool: bool,
    pub recovered_intents: usize,
    pub resumed_devices: Vec<ThinId>,
    pub deferred_deletes_finished: usize,
    pub check: Option<CheckReport>,
}

/// Pool and records compared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub pool_transaction_id: u64,
    pub store_transaction_id: Option<u64>,
    /// Thin ids in the pool with no record (kept; reported).
    pub orphan_thin_ids: Vec<ThinId>,
    /// Records whose thin id is not in the pool.
    pub missing_thin_ids: Vec<ThinId>,
    pub open_intents: usize,
    /// Group snapshots whose record and snapshots disagree (half made or half deleted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inconsistent_groups: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.orphan_thin_ids.is_empty()
            && self.missing_thin_ids.is_empty()
            && self.open_intents == 0
            && self.inconsistent_groups.is_empty()
            && self.store_transaction_id == Some(self.pool_transaction_id)
    }
}

/// The pool as a whole, for status output.
#[derive(Clone, Debug, Serialize)]
pub struct PoolReport {
    pub info: PoolInfo,
    pub status: PoolStatus,
    pub capacity: Capacity,
    pub volumes: usize,
    pub snapshots: usize,
    pub deleting: usize,
}

pub struct Engine<P: ThinPool> {
    pool: P,
    store: Store,
    limits: Limits,
    writer: Mutex<()>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn check_size(bytes: u64) -> Result<(), EngineError> {
    let reason = if bytes == 0 {
        "a volume needs at least one sector"
    } else if !bytes.is_multiple_of(SECTOR) {
        "sizes are whole 512-byte sectors"
    } else if bytes > MAX_DEVICE_BYTES {
        "larger than the 64 PiB a thin device may be"
    } else {
        return Ok(());
    };
    Err(EngineError::InvalidSize { bytes, reason: reason.to_owned() })
}

/// Logs one line for an operation with its name, outcome and duration.
fn logged<T>(op: &str, name: &str, f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    let start = Instant::now();
    let r = f();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match &r {
        Ok(_) => tracing::info!(op, name, duration_ms = ms, "ok"),
        Err(e) => tracing::warn!(op, name, duration_ms = ms, error = %e, "failed"),
    }
    r
}

impl<P: ThinPool> Engine<P> {
    /// Opens the engine: adopts a new pool or checks it is the store's, recovers interrupted
    /// changes, resumes devices a crash left suspended, retries deferred deletes, and sweeps.
    pub fn open(pool: P, store: Store, limits: Limits) -> Result<(Self, StartupReport), EngineError> {
        let engine = Engine { pool, store, limits, writer: Mutex::new(()) };
        let report = engine.start_up()?;
        Ok((engine, report))
    }

    fn start_up(&self) -> Result<StartupReport, EngineError> {
        let _w = self.lock();
        let mut report = StartupReport::default();
        let info = self.pool.info().clone();
        if !info.zeroes_new_blocks {
            return Err(crate::dm::DmError::UnzeroedPool { pool: info.source.clone() }.into());
        }
        let identity = format!("{}:{}", info.kind, info.source);
        let status = match self.pool.status()? {
            PoolStatus::Working(s) => s,
            PoolStatus::Fail => return Err(Refusal::PoolFailed.into()),
        };
        match self.store.pool_identity()? {
            None => {
                if status.transaction_id != 0 || status.data_used != 0 {
                    return Err(EngineError::ForeignPool(format!(
                        "pool {} holds data we have no record of (transaction id {}, {} data blocks used); \
                         give thinpool-csi an empty pool, or the state directory that belongs to this one",
                        info.source, status.transaction_id, status.data_used
                    )));
                }
                self.store.adopt_pool(&identity, 0)?;
                report.adopted_new_pool = true;
            }
            Some(known) if known != identity => {
                return Err(EngineError::ForeignPool(format!(
                    "the state directory belongs to pool {known}, not {identity}; use the matching --state-dir"
                )))
            }
            Some(_) => {}
        }
        report.recovered_intents = self.recover_open_intents()?;
        let t = self.pool_tid()?;
        let s = self.store.pool_tid()?;
        if s != Some(t) {
            return Err(EngineError::Inconsistent(format!(
                "the pool's transaction id is {t} but the records match {}; something else changed the pool. \
                 Inspect it with `thinpool-csi pool check` before going on",
                s.map_or("none".to_owned(), |s| s.to_string())
            )));
        }
        for dev in self.pool.active_devices()? {
            if dev.suspended {
                self.pool.resume(dev.id)?;
                report.resumed_devices.push(dev.id);
            }
        }
        report.deferred_deletes_finished = self.retry_deferred_locked()?;
        match self.check_locked() {
            Ok(check) => {
                if !check.orphan_thin_ids.is_empty() {
                    tracing::warn!(ids = ?check.orphan_thin_ids, "thin devices in the pool without a record (kept)");
                }
                if !check.missing_thin_ids.is_empty() {
                    tracing::error!(ids = ?check.missing_thin_ids, "records whose thin device is missing from the pool");
                }
                report.check = Some(check);
            }
            // The sweep is a report; a missing thin_dump must not stop the node.
            Err(e) => tracing::warn!(error = %e, "could not sweep the pool for orphans"),
        }
        Ok(report)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// Runs `f` while no pool change is in progress and none can start: for steps outside the
    /// engine that suspend the pool (LVM growing it), so that no message meets a suspended pool.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.lock();
        f()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Every record that holds a thin device: volumes, snapshots and devices not yet deleted.
    fn all_records(&self) -> Result<Vec<Record>, EngineError> {
        let mut all = self.store.list(Kind::Volume)?;
        all.extend(self.store.list(Kind::Snapshot)?);
        all.extend(self.store.deleting()?);
        Ok(all)
    }

    /// Sum of the virtual sizes of every volume, snapshot and not yet deleted device.
    pub fn provisioned_bytes(&self) -> Result<u64, EngineError> {
        Ok(self.all_records()?.iter().fold(0u64, |sum, r| sum.saturating_add(r.size_bytes)))
    }

    fn capacity_with(&self, status: &PoolStatus, provisioned: u64) -> Capacity {
        capacity::capacity(status, self.pool.info().block_bytes(), provisioned, &self.limits)
    }

    /// The pool's state (rw, ro, ...) from one status read, without reading the records.
    pub fn pool_state(&self) -> Result<PoolState, EngineError> {
        Ok(capacity::state_of(&self.pool.status()?))
    }

    pub fn capacity(&self) -> Result<Capacity, EngineError> {
        Ok(self.capacity_with(&self.pool.status()?, self.provisioned_bytes()?))
    }

    /// The pool as a whole, from one status read and one read of the records.
    pub fn report(&self) -> Result<PoolReport, EngineError> {
        let status = self.pool.status()?;
        let (volumes, snapshots) = (self.store.list(Kind::Volume)?, self.store.list(Kind::Snapshot)?);
        let deleting = self.store.deleting()?;
        let provisioned =
            volumes.iter().chain(&snapshots).chain(&deleting).fold(0u64, |sum, r| sum.saturating_add(r.size_bytes));
        Ok(PoolReport {
            info: self.pool.info().clone(),
            capacity: self.capacity_with(&status, provisioned),
            status,
            volumes: volumes.len(),
            snapshots: snapshots.len(),
            deleting: deleting.len(),
        })
    }

    fn admit(&self, bytes: u64) -> Result<(), EngineError> {
        Ok(self.capacity()?.admit(bytes)?)
    }

    fn must_get(&self, kind: Kind, name: &Name) -> Result<Record, EngineError> {
        self.store.get(kind, name)?.ok_or_else(|| EngineError::NotFound { kind, name: name.clone() })
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, EngineError> {
        Ok(self.store.get(kind, &Name::new(name)?)?)
    }

    pub fn list(&self, kind: Kind) -> Result<Vec<Record>, EngineError> {
        Ok(self.store.list(kind)?)
    }

    /// Creates volume `name` of `size_bytes`: empty, or from `source` (restore from a snapshot,
    /// clone of a volume; the size may be larger than the source's).
    pub fn create_volume(&self, name: &str, size_bytes: u64, source: Option<Source>) -> Result<Made, EngineError> {
        logged("create_volume", name, || {
            let name = Name::new(name)?;
            check_size(size_bytes)?;
            let _w = self.lock();
            self.recover_open_intents()?;
            if let Some(existing) = self.store.get(Kind::Volume, &name)? {
                if existing.requested_bytes == size_bytes && existing.source == source {
                    return Ok(Made::Existing(existing));
                }
                return Err(EngineError::AlreadyExists {
                    kind: Kind::Volume,
                    name,
                    reason: format!(
                        "it was made with size {} from {}",
                        existing.requested_bytes,
                        Source::describe(existing.source.as_ref())
                    ),
                });
            }
            let origin = match &source {
                None => None,
                Some(src) => {
                    let (kind, src_name) = match src {
                        Source::Snapshot(n) => (Kind::Snapshot, n),
                        Source::Volume(n) => (Kind::Volume, n),
                    };
                    let r = self.must_get(kind, src_name)?;
                    if size_bytes < r.size_bytes {
                        return Err(EngineError::InvalidSize {
                            bytes: size_bytes,
                            reason: format!("smaller than its source {src} ({} bytes)", r.size_bytes),
                        });
                    }
                    Some(r.thin_id)
                }
            };
            self.admit(size_bytes)?;
            let created = now_unix();
            let record = self.create_device("create", origin, |thin_id| Record {
                name,
                kind: Kind::Volume,
                thin_id,
                size_bytes,
                requested_bytes: size_bytes,
                source,
                created_unix: created,
                group: None,
            })?;
            Ok(Made::Created(record))
        })
    }

    /// Snapshots volume `source` as `name` (a thin snapshot; it outlives its origin).
    pub fn create_snapshot(&self, name: &str, source: &str) -> Result<Made, EngineError> {
        logged("create_snapshot", name, || {
            let name = Name::new(name)?;
            let source = Name::new(source)?;
            let _w = self.lock();
            self.recover_open_intents()?;
            let wanted = Some(Source::Volume(source.clone()));
            if let Some(existing) = self.store.get(Kind::Snapshot, &name)? {
                if existing.source == wanted {
                    return Ok(Made::Existing(existing));
                }
                return Err(EngineError::AlreadyExists {
                    kind: Kind::Snapshot,
                    name,
                    reason: format!("it is a snapshot of {}", Source::describe(existing.source.as_ref())),
                });
            }
            let origin = self.must_get(Kind::Volume, &source)?;
            self.admit(origin.size_bytes)?;
            let created = now_unix();
            let record = self.create_device("snapshot", Some(origin.thin_id), |thin_id| Record {
                name,
                kind: Kind::Snapshot,
                thin_id,
                size_bytes: origin.size_bytes,
                requested_bytes: origin.size_bytes,
                source: wanted,
                created_unix: created,
                group: None,
            })?;
            Ok(Made::Created(record))
        })
    }

    /// Deletes a volume or snapshot. Unknown names are success (`NotFound` outcome); an open
    /// device is deleted later (`Deferred`), and its name is free at once.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<DeleteOutcome, EngineError> {
        logged(if kind == Kind::Volume { "delete_volume" } else { "delete_snapshot" }, name, || {
            let name = Name::new(name)?;
            let _w = self.lock();
            self.recover_open_intents()?;
            match self.store.get(kind, &name)? {
                None => Ok(DeleteOutcome::NotFound),
                Some(Record { group: Some(group), .. }) => Err(EngineError::GroupMember { name, group }),
                Some(record) => self.delete_record(kind, &record),
            }
        })
    }

    /// Grows volume `name` to `size_bytes` (the thin device; the filesystem is the node's job).
    pub fn expand_volume(&self, name: &str, size_bytes: u64) -> Result<Record, EngineError> {
        logged("expand_volume", name, || {
            let name = Name::new(name)?;
            check_size(size_bytes)?;
            let _w = self.lock();
            let record = self.must_get(Kind::Volume, &name)?;
            if size_bytes < record.size_bytes {
                return Err(EngineError::InvalidSize {
                    bytes: size_bytes,
                    reason: format!("volumes cannot shrink (it is {} bytes)", record.size_bytes),
                });
            }
            if size_bytes == record.size_bytes {
                return Ok(record);
            }
            self.admit(size_bytes - record.size_bytes)?;
            let record = self.store.set_size(Kind::Volume, &name, size_bytes)?;
            self.pool.resize(record.thin_id, size_bytes / SECTOR)?;
            Ok(record)
        })
    }

    /// Activates a volume's or snapshot's thin device; returns its device node.
    pub fn activate(&self, kind: Kind, name: &str) -> Result<PathBuf, EngineError> {
        logged("activate", name, || {
            let name = Name::new(name)?;
            let _w = self.lock();
            let r = self.must_get(kind, &name)?;
            Ok(self.pool.activate(r.thin_id, r.size_bytes / SECTOR)?)
        })
    }

    /// Deactivates a volume's or snapshot's thin device (idempotent); `Busy` while it is open.
    pub fn deactivate(&self, kind: Kind, name: &str) -> Result<(), EngineError> {
        logged("deactivate", name, || {
            let name = Name::new(name)?;
            let _w = self.lock();
            let r = self.must_get(kind, &name)?;
            self.pool.deactivate(r.thin_id).map_err(|e| match e {
                crate::dm::DmError::Busy(_) => EngineError::Busy { kind, name: name.clone() },
                e => e.into(),
            })
        })
    }

    /// Tries the deletes that were deferred because their device was open.
    pub fn retry_deferred(&self) -> Result<usize, EngineError> {
        let _w = self.lock();
        self.recover_open_intents()?;
        self.retry_deferred_locked()
    }

    fn retry_deferred_locked(&self) -> Result<usize, EngineError> {
        let mut done = 0;
        for record in self.store.deleting()? {
            if self.finish_delete(record)? == DeleteOutcome::Deleted {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Compares the pool's thin ids and transaction id with the records.
    pub fn check(&self) -> Result<CheckReport, EngineError> {
        let _w = self.lock();
        self.check_locked()
    }

    fn check_locked(&self) -> Result<CheckReport, EngineError> {
        let in_pool: std::collections::BTreeSet<ThinId> = self.pool.thin_ids()?.into_iter().collect();
        let recorded: std::collections::BTreeSet<ThinId> = self.all_records()?.iter().map(|r| r.thin_id).collect();
        let intents = self.store.intents()?;
        // An open create's id may or may not be in the pool yet: neither orphan nor missing.
        let pending: std::collections::BTreeSet<ThinId> = intents.iter().map(|i| i.record.thin_id).collect();
        Ok(CheckReport {
            pool_transaction_id: self.pool_tid()?,
            store_transaction_id: self.store.pool_tid()?,
            orphan_thin_ids: in_pool
                .iter()
                .filter(|i| !recorded.contains(i) && !pending.contains(i))
                .copied()
                .collect(),
            missing_thin_ids: recorded
                .iter()
                .filter(|i| !in_pool.contains(i) && !pending.contains(i))
                .copied()
                .collect(),
            open_intents: intents.len(),
            inconsistent_groups: self.inconsistent_groups()?,
        })
    }

    /// Mapped (written) bytes of an active device, from its thin target status.
    pub fn mapped_bytes(&self, kind: Kind, name: &str) -> Result<Option<u64>, EngineError> {
        self.mapped_bytes_of(&self.must_get(kind, &Name::new(name)?)?)
    }

    /// Mapped bytes of a record already read (no store read).
    pub fn mapped_bytes_of(&self, record: &Record) -> Result<Option<u64>, EngineError> {
        Ok(self.pool.mapped_sectors(record.thin_id)?.map(|s| s * SECTOR))
    }
}

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod tests;
