//! The loop pool: sparse data and metadata files on loop devices, like Docker's loop-lvm, for
//! trying the driver out. Opening is idempotent: an active pool of that name is adopted; otherwise
//! the files are created (new pool) or reattached (existing pool). Only the node plugin, which owns
//! the pool, opens it with `grow`: then a configured data or metadata size larger than the pool's
//! grows it in place (an operator command run with other flags never does). The thin-pool table is loaded with
//! block zeroing on and `error_if_no_space`: a write that finds the pool full fails at once instead of
//! queueing for the kernel's `no_space_timeout` (60 s), so nothing waits on a pool that cannot grow
//! by itself (docs/troubleshooting.md, "Pool or metadata full").

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use devicemapper::{DevId, DmName, DmOptions, DmUuid, DM};
use loopdev::{LoopControl, LoopDevice};

use super::kernel::{devnode_of, dm_name, lib_err, pool_status, pool_table, KernelPool};
use super::status::{PoolStatus, PoolTable, META_BLOCK_BYTES};
use super::{DmError, PoolKind};
use crate::units::SECTOR;

/// A loop pool: its files' directory, its device-mapper name and its sizes (the node's flags set
/// them, `config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LoopSpec {
    pub dir: PathBuf,
    pub name: String,
    pub data_bytes: u64,
    pub meta_bytes: u64,
    pub block_bytes: u64,
}

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

/// Opens the loop pool named in `spec`, creating its files the first time; with `grow`, grows it
/// to `spec.data_bytes` when that is larger than the pool.
pub fn open_or_create(spec: &LoopSpec, grow: bool) -> Result<KernelPool, DmError> {
    match KernelPool::open(&spec.name, PoolKind::Loop, source_of(spec)) {
        Err(DmError::NoSuchPool(_)) => {}
        Ok(pool) => {
            if grow {
                grow_active(spec)?;
            }
            return Ok(pool);
        }
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
        if len < size && (fresh || grow) {
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
        low_water_blocks: low_water(data_sectors, block_sectors),
        features: vec![ERROR_IF_NO_SPACE.to_owned()],
    };
    create_pool_device(&spec.name, data_sectors, &table)?;
    tracing::info!(pool = %spec.name, fresh, data_bytes = data_len, "loop pool activated");
    // The loop devices autoclear: the pool device holds them open, and they go when it goes.
    drop((meta_dev, data_dev));
    KernelPool::open(&spec.name, PoolKind::Loop, source_of(spec))
}

/// The thin-pool feature that fails writes at once when the pool is full (see the module doc).
pub const ERROR_IF_NO_SPACE: &str = "error_if_no_space";

/// Low-water mark: 10 % of the data blocks (the kernel raises an event below it).
fn low_water(data_sectors: u64, block_sectors: u64) -> u64 {
    data_sectors / block_sectors / 10
}

/// Grows an active loop pool to `spec.data_bytes` and `spec.meta_bytes` when they are now larger
/// (the operator raised `--loop-data-size` or `--loop-metadata-size`, the chart's
/// `pool.loop.dataSize`): the file is extended, its loop device re-reads its size
/// (LOOP_SET_CAPACITY), and the pool's table is reloaded (with the new length for data) and resumed.
/// On that resume dm-thin takes the new space and leaves `out_of_data_space`, or the read-only mode
/// it enters when metadata runs out, so writes go on without anything else restarting. Never
/// shrinks. A pool whose device is not this spec's file is left as it is, with a warning.
fn grow_active(spec: &LoopSpec) -> Result<(), DmError> {
    let dm = DM::new().map_err(lib_err("opening /dev/mapper/control"))?;
    let (sectors, table) = pool_table(&dm, &spec.name)?;
    let block_sectors = table.block_sectors.max(1);
    let wanted = spec.data_bytes / SECTOR / block_sectors * block_sectors;
    // The pool takes new space at a reload, so a reload is due whenever the pool is smaller than
    // asked, even if the file and the loop device grew before (a crash in between).
    let data = wanted > sectors && extend_backing(&table.data_dev, &spec.dir.join("data.img"), spec.data_bytes, spec)?;
    let meta_in_pool = match pool_status(&dm, &spec.name)? {
        PoolStatus::Working(s) => s.meta_total * META_BLOCK_BYTES,
        PoolStatus::Fail => u64::MAX,
    };
    let meta = meta_in_pool < spec.meta_bytes.min(META_MAX_BYTES)
        && extend_backing(&table.meta_dev, &spec.dir.join("metadata.img"), spec.meta_bytes, spec)?;
    if !data && !meta {
        return Ok(());
    }
    let length = if data { wanted } else { sectors };
    let grown = PoolTable { low_water_blocks: low_water(length, block_sectors), ..table };
    let id = DevId::Name(dm_name(&spec.name)?);
    dm.table_load(&id, &[(0, length, "thin-pool".to_owned(), grown.to_string())], DmOptions::default())
        .map_err(lib_err(format!("load grown table {grown} into {}", spec.name)))?;
    // Resuming a device with a loaded table suspends it, swaps the tables and resumes it.
    if let Err(e) = dm.device_suspend(&id, DmOptions::default()) {
        let _ = dm.table_clear(&id);
        return Err(lib_err(format!("resume {} with its grown table", spec.name))(e));
    }
    tracing::info!(
        pool = %spec.name,
        data_from_bytes = sectors * SECTOR,
        data_to_bytes = length * SECTOR,
        metadata_grown_to_bytes = meta.then_some(spec.meta_bytes),
        "loop pool grown"
    );
    Ok(())
}

/// The most metadata dm-thin uses: 255 × (2^14 − 64) blocks of 4 KiB (a larger device is fine,
/// the rest stays unused).
const META_MAX_BYTES: u64 = 255 * ((1 << 14) - 64) * META_BLOCK_BYTES;

/// Makes the loop device `majmin` at least `bytes` long when its backing file is `file`: extends
/// the file and tells the loop device when they are shorter. True when the device is backed by
/// `file` (and now long enough); false, with a warning, when it is not.
fn extend_backing(majmin: &str, file: &Path, bytes: u64, spec: &LoopSpec) -> Result<bool, DmError> {
    let sysfs = format!("/sys/dev/block/{majmin}/loop/backing_file");
    let backing = std::fs::read_to_string(&sysfs).map_err(DmError::io(format!("reading {sysfs}")))?;
    if Path::new(backing.trim()) != file {
        tracing::warn!(
            pool = %spec.name,
            device = majmin,
            backing = backing.trim(),
            expected = %file.display(),
            "the active pool's device is not this pool's file: not growing it"
        );
        return Ok(false);
    }
    let size = format!("/sys/dev/block/{majmin}/size");
    let device_sectors: u64 = std::fs::read_to_string(&size)
        .map_err(DmError::io(format!("reading {size}")))?
        .trim()
        .parse()
        .map_err(|_| DmError::Config(format!("{size} is not a number of sectors")))?;
    if device_sectors * SECTOR >= bytes {
        return Ok(true);
    }
    let f = OpenOptions::new().write(true).open(file).map_err(DmError::io(format!("opening {}", file.display())))?;
    let len = f.metadata().map_err(DmError::io(format!("stat {}", file.display())))?.len();
    if len < bytes {
        f.set_len(bytes).map_err(DmError::io(format!("growing {}", file.display())))?;
        f.sync_all().map_err(DmError::io(format!("syncing {}", file.display())))?;
    }
    let node = devnode_of(majmin)?;
    LoopDevice::open(&node)
        .and_then(|d| d.set_capacity())
        .map_err(DmError::io(format!("telling {} its new size", node.display())))?;
    Ok(true)
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
