//! Opens the node's engine from its configuration: the pool (loop or direct-lvm), the store in
//! the state directory, then start-up recovery.

use crate::config::{NodeConfig, PoolSpec};
use crate::dm::kernel::KernelPool;
use crate::dm::{loopback, lvm, DmError};
use crate::engine::{Engine, EngineError, StartupReport};
use crate::store::Store;

/// Opens the pool; `grow` (the node plugin only) grows a loop pool to its configured data size.
pub fn open_pool(spec: &PoolSpec, grow: bool) -> Result<KernelPool, DmError> {
    match spec {
        PoolSpec::Loop(l) => loopback::open_or_create(l, grow),
        PoolSpec::DirectLvm { vg, lv } => lvm::adopt(vg, lv),
        PoolSpec::Device { device, vg, lv } => lvm::open_on_device(device, vg, lv),
    }
}

/// Opens the pool first: a pool that cannot be opened leaves no state directory behind. Never
/// changes the pool's size (operator commands, tests).
pub fn open_engine(cfg: &NodeConfig) -> Result<(Engine<KernelPool>, StartupReport), EngineError> {
    open(cfg, false)
}

/// The node plugin's open: as [`open_engine`], but a loop pool whose configured data size was
/// raised is grown to it first (the operator's way to grow a loop pool).
pub fn open_node_engine(cfg: &NodeConfig) -> Result<(Engine<KernelPool>, StartupReport), EngineError> {
    open(cfg, true)
}

/// Records that exist are opened before the pool, so that a process finding them held by another
/// (the running plugin) stops before it touches the pool; new records only after the pool opened.
fn open(cfg: &NodeConfig, grow: bool) -> Result<(Engine<KernelPool>, StartupReport), EngineError> {
    let existing = Store::exists(&cfg.state_dir).then(|| Store::open(&cfg.state_dir)).transpose()?;
    let pool = open_pool(&cfg.pool, grow)?;
    let store = match existing {
        Some(store) => store,
        None => Store::open(&cfg.state_dir)?,
    };
    Engine::open(pool, store, cfg.limits)
}
