//! The thin pool: the narrow set of device-mapper operations the engine needs, behind the
//! [`ThinPool`] trait. [`kernel::KernelPool`] does them with ioctls through the `devicemapper`
//! crate; [`loopback`] and [`lvm`] open or build the pool it works on; [`memory::MemoryPool`]
//! is an in-memory test double for the layers above (never a mode a user can run).

pub mod events;
pub mod kernel;
pub mod loopback;
pub mod lvm;
#[cfg(any(test, feature = "test-double"))]
pub mod memory;
pub mod naming;
pub mod status;

use std::path::PathBuf;

use nix::errno::Errno;
use serde::Serialize;

use crate::tools::ToolError;
use crate::units::ThinId;
pub use status::{PoolMode, PoolStatus, PoolTable, WorkingStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKind {
    /// Sparse files on loop devices, for trying the driver out.
    Loop,
    /// An LVM thin pool LV adopted by the driver.
    DirectLvm,
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolKind::Loop => "loop",
            PoolKind::DirectLvm => "direct-lvm",
        })
    }
}

/// What is fixed about an open pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolInfo {
    pub kind: PoolKind,
    /// The pool's dm device name.
    pub dm_name: String,
    /// Where the pool lives, for people: the loop files or `vg/lv`.
    pub source: String,
    /// Data block (chunk) size in 512-byte sectors.
    pub block_sectors: u64,
    /// Whether the pool zeroes newly provisioned blocks.
    pub zeroes_new_blocks: bool,
}

impl PoolInfo {
    pub fn block_bytes(&self) -> u64 {
        self.block_sectors * crate::units::SECTOR
    }
}

/// An active thin device of ours (found by its dm uuid prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveThin {
    pub id: ThinId,
    pub suspended: bool,
    pub open_count: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("device-mapper {op} failed: {errno} ({desc})", desc = errno.desc())]
    Kernel { op: String, errno: Errno },
    #[error("device-mapper {op} failed")]
    Library {
        op: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error(transparent)]
    Status(#[from] status::StatusParseError),
    #[error("no device-mapper device named {0:?}: is the pool active?")]
    NoSuchPool(String),
    #[error("{name:?} is a {found:?} device, not a thin-pool: point the driver at a thin pool")]
    NotAThinPool { name: String, found: String },
    #[error("thin device {0} is open (mounted or in use); unmount it first")]
    Busy(ThinId),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("LVM pool {pool} holds LVM thin volumes ({lvs}); thinpool-csi manages thin devices itself and must have a pool of its own")]
    PoolHasLvmThinVolumes { pool: String, lvs: String },
    #[error("pool {pool} does not zero new blocks (skip_block_zeroing), so a new volume could expose a deleted volume's data; enable zeroing with `lvchange --zero y {pool}`")]
    UnzeroedPool { pool: String },
    #[error("device {device} holds a {signature} signature; refusing to overwrite it (pass --force to wipe it)")]
    DeviceHasSignature { device: String, signature: String },
    #[error("device {device} cannot hold the pool: {why}")]
    DeviceInUse { device: String, why: String },
    #[error("invalid pool configuration: {0}")]
    Config(String),
}

impl DmError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            DmError::Kernel { errno, .. } => Some(*errno),
            DmError::Busy(_) => Some(Errno::EBUSY),
            _ => None,
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DmError {
        let what = what.into();
        move |source| DmError::Io { what, source }
    }
}

/// The pool operations the engine needs. Every method is a single kernel-level step; the engine
/// composes them into journaled transactions.
pub trait ThinPool: Send + Sync {
    fn info(&self) -> &PoolInfo;
    /// Pool status, read with the no-flush flag so that reading it commits nothing.
    fn status(&self) -> Result<PoolStatus, DmError>;
    /// `create_thin <id>`.
    fn create_thin(&self, id: ThinId) -> Result<(), DmError>;
    /// `create_snap <id> <origin>`, with the origin suspended while it is active and always resumed.
    fn create_snap(&self, id: ThinId, origin: ThinId) -> Result<(), DmError>;
    /// Suspends thin device `id` if it is active, waiting for its in-flight writes to complete
    /// (a flushing suspend): from then on its contents cannot change until [`resume`](Self::resume).
    /// `false` when it is not active (nothing can write to it).
    fn suspend_thin(&self, id: ThinId) -> Result<bool, DmError>;
    /// `create_snap <id> <origin>` alone, for an origin the caller holds suspended (or that is not
    /// active): a group snapshot suspends every member first, so all snapshots hold one instant.
    fn create_snap_held(&self, id: ThinId, origin: ThinId) -> Result<(), DmError>;
    /// `delete <id>`.
    fn delete_thin(&self, id: ThinId) -> Result<(), DmError>;
    /// `set_transaction_id <current> <new>`: the commit point of a pool change.
    fn set_transaction_id(&self, current: u64, new: u64) -> Result<(), DmError>;
    /// Activates thin device `id` with `sectors` sectors (idempotent); returns its device node.
    fn activate(&self, id: ThinId, sectors: u64) -> Result<PathBuf, DmError>;
    /// Removes the thin device's dm device if present; [`DmError::Busy`] while it is open.
    fn deactivate(&self, id: ThinId) -> Result<(), DmError>;
    /// Reloads an active thin device's table with a new size; does nothing when inactive.
    fn resize(&self, id: ThinId, sectors: u64) -> Result<(), DmError>;
    /// Resumes a suspended thin device (one a group snapshot holds, or one a crash left suspended).
    fn resume(&self, id: ThinId) -> Result<(), DmError>;
    /// Our active thin devices.
    fn active_devices(&self) -> Result<Vec<ActiveThin>, DmError>;
    /// Mapped sectors of an active thin device (from its thin target status).
    fn mapped_sectors(&self, id: ThinId) -> Result<Option<u64>, DmError>;
    /// Every thin id in the pool's metadata (read from a metadata snapshot).
    fn thin_ids(&self) -> Result<Vec<ThinId>, DmError>;
}
