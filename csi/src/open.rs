//! Opens the node's engine from its configuration: the pool (loop or direct-lvm), the store in
//! the state directory, then start-up recovery.

use crate::config::{NodeConfig, PoolSpec};
use crate::dm::kernel::KernelPool;
use crate::dm::{loopback, lvm, DmError};
use crate::engine::{Engine, EngineError, StartupReport};
use crate::store::Store;

pub fn open_pool(spec: &PoolSpec) -> Result<KernelPool, DmError> {
    match spec {
        PoolSpec::Loop(l) => loopback::open_or_create(l),
        PoolSpec::DirectLvm { vg, lv } => lvm::adopt(vg, lv),
        PoolSpec::Device { device, vg, lv } => lvm::open_on_device(device, vg, lv),
    }
}

/// Opens the pool first: a pool that cannot be opened leaves no state directory behind.
pub fn open_engine(cfg: &NodeConfig) -> Result<(Engine<KernelPool>, StartupReport), EngineError> {
    let pool = open_pool(&cfg.pool)?;
    let store = Store::open(&cfg.state_dir)?;
    Engine::open(pool, store, cfg.limits)
}
