//! The pool-change transaction protocol (ARCHITECTURE.md, "A pool change is a transaction"):
//!
//! 1. intent + id in one store transaction;
//! 2. the dm message;
//! 3. `set_transaction_id T T+1`, the commit point;
//! 4. record change + intent cleared in one store transaction.
//!
//! Recovery of an interrupted change (at start-up, or before the next change) follows
//! `recovery::decide`.

use nix::errno::Errno;

use super::crash;
use super::error::EngineError;
use super::recovery::{decide, Action};
use super::Engine;
use crate::dm::{DmError, PoolStatus, ThinPool};
use crate::store::{Intent, Kind, Record};
use crate::units::ThinId;

/// How a delete ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteOutcome {
    Deleted,
    /// The device is open; the delete is finished in the background once it is closed.
    Deferred,
    /// There was nothing to delete.
    NotFound,
}

fn tolerate(r: Result<(), DmError>, errno: Errno) -> Result<(), DmError> {
    match r {
        Err(e) if e.errno() == Some(errno) => {
            tracing::warn!(error = %e, "tolerated during recovery");
            Ok(())
        }
        other => other,
    }
}

impl<P: ThinPool> Engine<P> {
    /// The pool's transaction id (from a no-flush status).
    pub(super) fn pool_tid(&self) -> Result<u64, EngineError> {
        match self.pool.status()? {
            PoolStatus::Working(s) => Ok(s.transaction_id),
            PoolStatus::Fail => Err(EngineError::ResourceExhausted(super::error::Refusal::PoolFailed)),
        }
    }

    /// Creates a thin device (a snapshot of `origin` when given) for the record `make` builds.
    pub(super) fn create_device(
        &self,
        label: &str,
        origin: Option<ThinId>,
        make: impl FnOnce(ThinId) -> Record,
    ) -> Result<Record, EngineError> {
        let t = self.pool_tid()?;
        let intent = self.store.begin_create(t + 1, origin, make)?;
        let id = intent.record.thin_id;
        crash::point(label, "after-intent");
        let sent = match origin {
            None => self.pool.create_thin(id),
            Some(o) => self.pool.create_snap(id, o),
        };
        if let Err(e) = sent {
            // A failed message changes nothing in the pool; drop the intent and free the id.
            self.store.abort(&intent)?;
            return Err(e.into());
        }
        crash::point(label, "after-message");
        if let Err(e) = self.pool.set_transaction_id(t, t + 1) {
            self.recover_intent(&intent)?;
            return Err(e.into());
        }
        crash::point(label, "after-commit-point");
        self.store.commit(&intent)?;
        Ok(intent.record)
    }

    /// Deletes a record from the deleting table: deactivate, then the journaled `delete`.
    pub(super) fn finish_delete(&self, record: Record) -> Result<DeleteOutcome, EngineError> {
        let id = record.thin_id;
        match self.pool.deactivate(id) {
            Ok(()) => {}
            Err(DmError::Busy(_)) => return Ok(DeleteOutcome::Deferred),
            Err(e) => return Err(e.into()),
        }
        let t = self.pool_tid()?;
        let intent = self.store.begin_delete(t + 1, record)?;
        crash::point("delete", "after-intent");
        match tolerate(self.pool.delete_thin(id), Errno::ENODATA) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                self.store.abort(&intent)?;
                return Ok(DeleteOutcome::Deferred);
            }
            Err(e) => {
                self.store.abort(&intent)?;
                return Err(e.into());
            }
        }
        crash::point("delete", "after-message");
        if let Err(e) = self.pool.set_transaction_id(t, t + 1) {
            self.recover_intent(&intent)?;
            return Err(e.into());
        }
        crash::point("delete", "after-commit-point");
        self.store.commit(&intent)?;
        Ok(DeleteOutcome::Deleted)
    }

    /// Finishes or undoes one interrupted change, by the decision table.
    pub(super) fn recover_intent(&self, intent: &Intent) -> Result<Action, EngineError> {
        let t = self.pool_tid()?;
        let id = intent.record.thin_id;
        let action = decide(intent.op, t, intent.tid);
        tracing::info!(op = ?intent.op, name = %intent.record.name, thin_id = %id, pool_tid = t, intent_tid = intent.tid, ?action, "recovering an interrupted pool change");
        match action {
            Action::RollForward => self.store.commit(intent)?,
            Action::RollBack => {
                self.pool.deactivate(id)?;
                tolerate(self.pool.delete_thin(id), Errno::ENODATA)?;
                self.store.abort(intent)?;
            }
            Action::Redo => {
                let gone = self.pool.deactivate(id).and_then(|()| tolerate(self.pool.delete_thin(id), Errno::ENODATA));
                match gone {
                    Ok(()) => {
                        self.pool.set_transaction_id(t, intent.tid)?;
                        self.store.commit(intent)?;
                    }
                    // Still open: the record stays in the deleting table for a later try.
                    Err(e) if e.errno() == Some(Errno::EBUSY) => self.store.abort(intent)?,
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Conflict => {
                return Err(EngineError::Inconsistent(format!(
                    "an interrupted {:?} of {} {} expected pool transaction id {} or {}, but the pool is at {t}; \
                     something else changed the pool. Inspect it with `thinpool-csi pool check` before going on",
                    intent.op,
                    intent.record.kind,
                    intent.record.name,
                    intent.tid - 1,
                    intent.tid
                )))
            }
        }
        Ok(action)
    }

    /// Recovers every open intent (there is at most one when only this engine writes).
    pub(super) fn recover_open_intents(&self) -> Result<usize, EngineError> {
        let intents = self.store.intents()?;
        for intent in &intents {
            self.recover_intent(intent)?;
        }
        Ok(intents.len())
    }

    /// Moves a record to the deleting table and deletes it.
    pub(super) fn delete_record(&self, kind: Kind, record: &Record) -> Result<DeleteOutcome, EngineError> {
        let record = self.store.mark_deleting(kind, &record.name)?;
        self.finish_delete(record)
    }
}
