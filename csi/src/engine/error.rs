//! The engine's typed errors. The CSI layer maps each variant to a gRPC code in one place;
//! the operator CLI prints them as they are.

use serde::Serialize;

use crate::dm::DmError;
use crate::names::{Name, NameError};
use crate::store::{Kind, StoreError};

/// Why a new volume or snapshot does not fit.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    #[error("{requested} bytes asked, {allowed} bytes of provisioning left (overprovision budget); free space or raise --overprovision-ratio")]
    Budget { requested: u64, allowed: u64 },
    #[error("pool data is {fill_pct:.1}% full, above the {limit_pct}% limit; delete volumes or grow the pool")]
    DataFill { fill_pct: f64, limit_pct: f64 },
    #[error("pool metadata is {fill_pct:.1}% full, above the {limit_pct}% limit; grow the metadata device")]
    MetadataFill { fill_pct: f64, limit_pct: f64 },
    #[error("pool ran out of data space (out_of_data_space): writes that need new blocks fail; grow the pool (lvextend for direct-lvm, a larger loop data size) or delete volumes and snapshots")]
    OutOfDataSpace,
    #[error("pool is in {mode} mode, not rw; see `thinpool-csi pool status`")]
    PoolMode { mode: String },
    #[error("pool needs a metadata check (needs_check); run thin_check/thin_repair on it offline")]
    NeedsCheck,
    #[error("pool has failed (status Fail); it needs repair offline")]
    PoolFailed,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    #[error("invalid size {bytes} bytes: {reason}")]
    InvalidSize { bytes: u64, reason: String },
    #[error("{kind} {name} not found")]
    NotFound { kind: Kind, name: Name },
    #[error("{kind} {name} already exists with other parameters: {reason}")]
    AlreadyExists { kind: Kind, name: Name, reason: String },
    #[error("invalid group snapshot: {0}")]
    InvalidGroup(String),
    #[error("group snapshot {name} already exists with other source volumes: {reason}")]
    GroupExists { name: Name, reason: String },
    #[error("snapshot {name} belongs to group snapshot {group} and is deleted with it, never alone: delete the group snapshot")]
    GroupMember { name: Name, group: Name },
    #[error("not enough room in the pool: {0}")]
    ResourceExhausted(#[from] Refusal),
    #[error("{kind} {name} is in use (open or mounted); unmount it first")]
    Busy { kind: Kind, name: Name },
    #[error("pool and records disagree: {0}")]
    Inconsistent(String),
    #[error("refusing to adopt the pool: {0}")]
    ForeignPool(String),
    #[error(transparent)]
    Dm(#[from] DmError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
