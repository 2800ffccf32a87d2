//! The loop pool: sparse data and metadata files on loop devices, like Docker's loop-lvm, for
//! trying the driver out. Opening is idempotent: an active pool of that name is adopted as is;
//! otherwise the files are created (new pool) or reattached (existing pool) and the thin-pool
//! table is loaded with block zeroing on.

use std::fs::OpenOptions;
use std::path::Path;

use devicemapper::{DevId, DmName, DmOptions, DmUuid, DM};
use loopdev::{LoopControl, LoopDevice};

use super::kernel::{lib_err, KernelPool};
use super::status::PoolTable;
use super::{DmError, PoolKind};
use crate::config::LoopSpec;
use crate::units::SECTOR;

fn attach(file: &Path) -> Result<LoopDevice, DmError> {
    let ctl = LoopControl::open().map_err(DmError::io("opening /dev/loop-control (is the loop module loaded?)"))?;
    let dev = ctl.next_free().map_err(DmError::io("finding a free loop device"))?;
    dev.with()
        .autoclear(true)
        .attach(file)
        .map_err(DmError::io(format!("attaching {} to a loop device", file.display())))?;
    Ok(dev)
}

fn majmin(dev: &LoopDevice) -> Result<String, DmError> {
    let major = dev.major().map_err(DmError::io("loop device number"))?;
    let minor = dev.minor().map_err(DmError::io("loop device number"))?;
    Ok(format!("{major}:{minor}"))
}

fn source_of(spec: &LoopSpec) -> String {
    spec.dir.display().to_string()
}

/// Opens the loop pool named in `spec`, creating its files the first time.
pub fn open_or_create(spec: &LoopSpec) -> Result<KernelPool, DmError> {
    match KernelPool::open(&spec.name, PoolKind::Loop, source_of(spec)) {
        Err(DmError::NoSuchPool(_)) => {}
        other => return other,
    }
    std::fs::create_dir_all(&spec.dir).map_err(DmError::io(format!("creating {}", spec.dir.display())))?;
    let data = spec.dir.join("data.img");
    let meta = spec.dir.join("metadata.img");
    let fresh = !meta.exists();
    if fresh && data.exists() {
        return Err(DmError::Config(format!(
            "{} exists without its metadata file {}; move it away to start a new pool",
            data.display(),
            meta.display()
        )));
    }
    for (path, size) in [(&data, spec.data_bytes), (&meta, spec.meta_bytes)] {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(DmError::io(format!("opening {}", path.display())))?;
        let len = f.metadata().map_err(DmError::io(format!("stat {}", path.display())))?.len();
        if len < size {
            // A new file is sparse and reads as zeros: that is a valid empty metadata device.
            f.set_len(size).map_err(DmError::io(format!("sizing {}", path.display())))?;
        }
    }
    let data_len = std::fs::metadata(&data).map_err(DmError::io("stat data file"))?.len();
    let block_sectors = spec.block_bytes / SECTOR;
    let data_sectors = data_len / SECTOR / block_sectors * block_sectors;
    let meta_dev = attach(&meta)?;
    let data_dev = attach(&data)?;
    let table = PoolTable {
        meta_dev: majmin(&meta_dev)?,
        data_dev: majmin(&data_dev)?,
        block_sectors,
        // Low-water mark: 10 % of the data blocks.
        low_water_blocks: data_sectors / block_sectors / 10,
        features: vec![],
    };
    create_pool_device(&spec.name, data_sectors, &table)?;
    tracing::info!(pool = %spec.name, fresh, data_bytes = data_len, "loop pool activated");
    // The loop devices autoclear: the pool device holds them open, and they go when it goes.
    drop((meta_dev, data_dev));
    KernelPool::open(&spec.name, PoolKind::Loop, source_of(spec))
}

/// Creates and resumes a thin-pool dm device with `table`.
fn create_pool_device(name: &str, sectors: u64, table: &PoolTable) -> Result<(), DmError> {
    let dm = DM::new().map_err(lib_err("opening /dev/mapper/control"))?;
    let dm_name = DmName::new(name).map_err(lib_err(format!("pool name {name:?}")))?;
    let uuid = format!("{}POOL-{name}", super::naming::UUID_PREFIX);
    let dm_uuid = DmUuid::new(&uuid).map_err(lib_err(format!("uuid {uuid:?}")))?;
    dm.device_create(dm_name, Some(dm_uuid), DmOptions::default()).map_err(lib_err(format!("create {name}")))?;
    let id = DevId::Name(dm_name);
    let loaded = dm
        .table_load(&id, &[(0, sectors, "thin-pool".to_owned(), table.to_string())], DmOptions::default())
        .and_then(|_| dm.device_suspend(&id, DmOptions::default()))
        .map_err(lib_err(format!("load thin-pool table {table} into {name}")));
    if loaded.is_err() {
        let _ = dm.device_remove(&id, DmOptions::default());
    }
    loaded.map(|_| ())
}

/// Removes the loop pool's dm device (its loop devices autoclear). For tests and tear-down; the
/// files, and so every volume, stay.
pub fn deactivate_pool(name: &str) -> Result<(), DmError> {
    let dm = DM::new().map_err(lib_err("opening /dev/mapper/control"))?;
    let dm_name = DmName::new(name).map_err(lib_err(format!("pool name {name:?}")))?;
    dm.device_remove(&DevId::Name(dm_name), DmOptions::default()).map_err(lib_err(format!("remove {name}")))?;
    Ok(())
}
