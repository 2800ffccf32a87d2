//! [`ThinPool`] over the kernel: ioctls on `/dev/mapper/control` through the `devicemapper` crate's
//! `DM` calls (not its `ThinDev`, which leaves ids behind and origins suspended on error).

use std::path::PathBuf;

use devicemapper::{DevId, DmError as LibError, DmFlags, DmName, DmOptions, DmUuid, DM};
use nix::errno::Errno;

use super::naming::{parse_thin_uuid, pool_tag, thin_name, thin_uuid};
use super::status::{PoolStatus, PoolTable};
use super::{ActiveThin, DmError, PoolInfo, PoolKind, ThinPool};
use crate::units::ThinId;

/// Maps a `devicemapper` error to ours, keeping the kernel's errno where there is one.
pub(crate) fn lib_err(op: impl Into<String>) -> impl FnOnce(LibError) -> DmError {
    let op = op.into();
    move |e| match &e {
        LibError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => DmError::Kernel { op, errno: **errno },
        _ => DmError::Library { op, source: e },
    }
}

pub(crate) fn dm_name(name: &str) -> Result<&DmName, DmError> {
    DmName::new(name).map_err(lib_err(format!("name {name:?}")))
}

/// Reads a device's single target: (length in sectors, target type, params), with or without the
/// table flag.
fn single_target(dm: &DM, name: &str, table: bool) -> Result<(u64, String, String), DmError> {
    let mut flags = DmFlags::DM_NOFLUSH;
    if table {
        flags |= DmFlags::DM_STATUS_TABLE;
    }
    let (_, targets) = dm.table_status(&DevId::Name(dm_name(name)?), DmOptions::default().set_flags(flags)).map_err(
        |e| match lib_err(format!("status of {name}"))(e) {
            DmError::Kernel { errno: Errno::ENXIO, .. } => DmError::NoSuchPool(name.to_owned()),
            other => other,
        },
    )?;
    match targets.as_slice() {
        [(_, length, kind, params)] => Ok((*length, kind.clone(), params.clone())),
        _ => Err(DmError::NotAThinPool { name: name.to_owned(), found: format!("{} targets", targets.len()) }),
    }
}

/// An active pool's table and its length in sectors.
pub(crate) fn pool_table(dm: &DM, name: &str) -> Result<(u64, PoolTable), DmError> {
    match single_target(dm, name, true)? {
        (length, kind, params) if kind == "thin-pool" => Ok((length, params.parse()?)),
        (_, kind, _) => Err(DmError::NotAThinPool { name: name.to_owned(), found: kind }),
    }
}

/// An active pool's status, read without flushing.
pub(crate) fn pool_status(dm: &DM, name: &str) -> Result<PoolStatus, DmError> {
    match single_target(dm, name, false)? {
        (_, kind, params) if kind == "thin-pool" => Ok(params.parse()?),
        (_, kind, _) => Err(DmError::NotAThinPool { name: name.to_owned(), found: kind }),
    }
}

/// Resolves a `major:minor` from a table line to its device node via sysfs.
pub fn devnode_of(majmin: &str) -> Result<PathBuf, DmError> {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{majmin}/uevent"))
        .map_err(DmError::io(format!("reading sysfs for block device {majmin}")))?;
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| DmError::Config(format!("block device {majmin} has no DEVNAME in sysfs")))?;
    Ok(PathBuf::from("/dev").join(name))
}

pub struct KernelPool {
    dm: DM,
    info: PoolInfo,
    /// `major:minor` of the pool device, as thin tables name it.
    pool_dev: String,
    meta_dev: String,
    tag: String,
}

impl KernelPool {
    /// Opens an existing, active thin-pool dm device by name.
    pub fn open(dm_name_str: &str, kind: PoolKind, source: String) -> Result<Self, DmError> {
        let dm = DM::new().map_err(lib_err("opening /dev/mapper/control (is dm_mod loaded and are we root?)"))?;
        let (_, table) = pool_table(&dm, dm_name_str)?;
        let info = dm.device_info(&DevId::Name(dm_name(dm_name_str)?)).map_err(lib_err("device info"))?;
        let dev = info.device();
        Ok(KernelPool {
            dm,
            info: PoolInfo {
                kind,
                dm_name: dm_name_str.to_owned(),
                source,
                block_sectors: table.block_sectors,
                zeroes_new_blocks: table.zeroes_new_blocks(),
            },
            pool_dev: format!("{}:{}", dev.major, dev.minor),
            meta_dev: table.meta_dev,
            tag: pool_tag(dm_name_str),
        })
    }

    fn message(&self, msg: &str) -> Result<(), DmError> {
        let start = std::time::Instant::now();
        let r = self
            .dm
            .target_msg(&DevId::Name(dm_name(&self.info.dm_name)?), None, msg)
            .map(|_| ())
            .map_err(lib_err(format!("message {msg:?} to {}", self.info.dm_name)));
        let kind = msg.split(' ').next().unwrap_or(msg);
        crate::metrics::DM_MESSAGE_SECONDS.with_label_values(&[kind]).observe(start.elapsed().as_secs_f64());
        tracing::debug!(pool = %self.info.dm_name, msg, elapsed_us = start.elapsed().as_micros() as u64, ok = r.is_ok(), "dm message");
        r
    }

    fn thin_table(&self, id: ThinId, sectors: u64) -> Vec<(u64, u64, String, String)> {
        vec![(0, sectors, "thin".to_owned(), format!("{} {}", self.pool_dev, id))]
    }

    fn name_of(&self, id: ThinId) -> String {
        thin_name(&self.tag, id)
    }

    /// Device info of an active thin device, or `None` when it is not active.
    fn thin_info(&self, id: ThinId) -> Result<Option<devicemapper::DeviceInfo>, DmError> {
        let name = self.name_of(id);
        match self.dm.device_info(&DevId::Name(dm_name(&name)?)) {
            Ok(i) => Ok(Some(i)),
            Err(e) => match lib_err("device info")(e) {
                DmError::Kernel { errno: Errno::ENXIO, .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    fn suspend(&self, name: &str, suspend: bool) -> Result<(), DmError> {
        let opts = if suspend { DmOptions::default().set_flags(DmFlags::DM_SUSPEND) } else { DmOptions::default() };
        self.dm
            .device_suspend(&DevId::Name(dm_name(name)?), opts)
            .map(|_| ())
            .map_err(lib_err(format!("{} {name}", if suspend { "suspend" } else { "resume" })))
    }
}

impl ThinPool for KernelPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn status(&self) -> Result<PoolStatus, DmError> {
        pool_status(&self.dm, &self.info.dm_name)
    }

    fn create_thin(&self, id: ThinId) -> Result<(), DmError> {
        self.message(&format!("create_thin {id}"))
    }

    fn create_snap(&self, id: ThinId, origin: ThinId) -> Result<(), DmError> {
        let origin_name = self.name_of(origin);
        let active = self.thin_info(origin)?.is_some();
        if active {
            self.suspend(&origin_name, true)?;
        }
        let sent = self.message(&format!("create_snap {id} {origin}"));
        // The origin is resumed whatever the message did.
        let resumed = if active { self.suspend(&origin_name, false) } else { Ok(()) };
        sent.and(resumed)
    }

    fn suspend_thin(&self, id: ThinId) -> Result<bool, DmError> {
        if self.thin_info(id)?.is_none() {
            return Ok(false);
        }
        // DM_SUSPEND without DM_NOFLUSH: in-flight writes complete before the device stops.
        self.suspend(&self.name_of(id), true)?;
        Ok(true)
    }

    fn create_snap_held(&self, id: ThinId, origin: ThinId) -> Result<(), DmError> {
        self.message(&format!("create_snap {id} {origin}"))
    }

    fn delete_thin(&self, id: ThinId) -> Result<(), DmError> {
        self.message(&format!("delete {id}"))
    }

    fn set_transaction_id(&self, current: u64, new: u64) -> Result<(), DmError> {
        self.message(&format!("set_transaction_id {current} {new}"))
    }

    fn activate(&self, id: ThinId, sectors: u64) -> Result<PathBuf, DmError> {
        if let Some(info) = self.thin_info(id)? {
            let d = info.device();
            return Ok(PathBuf::from(format!("/dev/dm-{}", d.minor)));
        }
        let name = self.name_of(id);
        let uuid = thin_uuid(&self.tag, id);
        let dm_uuid = DmUuid::new(&uuid).map_err(lib_err(format!("uuid {uuid:?}")))?;
        let info = self
            .dm
            .device_create(dm_name(&name)?, Some(dm_uuid), DmOptions::default())
            .map_err(lib_err(format!("create {name}")))?;
        let loaded = self
            .dm
            .table_load(&DevId::Name(dm_name(&name)?), &self.thin_table(id, sectors), DmOptions::default())
            .map_err(lib_err(format!("load thin table for {name}")))
            .and_then(|_| self.suspend(&name, false));
        if let Err(e) = loaded {
            // Leave nothing half-made behind.
            let _ = self.dm.device_remove(&DevId::Name(dm_name(&name)?), DmOptions::default());
            return Err(e);
        }
        Ok(PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
    }

    fn deactivate(&self, id: ThinId) -> Result<(), DmError> {
        let Some(info) = self.thin_info(id)? else {
            return Ok(());
        };
        if info.open_count() > 0 {
            return Err(DmError::Busy(id));
        }
        let name = self.name_of(id);
        match self.dm.device_remove(&DevId::Name(dm_name(&name)?), DmOptions::default()) {
            Ok(_) => Ok(()),
            Err(e) => match lib_err(format!("remove {name}"))(e) {
                DmError::Kernel { errno: Errno::ENXIO, .. } => Ok(()),
                DmError::Kernel { errno: Errno::EBUSY, .. } => Err(DmError::Busy(id)),
                other => Err(other),
            },
        }
    }

    fn resize(&self, id: ThinId, sectors: u64) -> Result<(), DmError> {
        if self.thin_info(id)?.is_none() {
            return Ok(());
        }
        let name = self.name_of(id);
        self.dm
            .table_load(&DevId::Name(dm_name(&name)?), &self.thin_table(id, sectors), DmOptions::default())
            .map_err(lib_err(format!("reload thin table for {name}")))?;
        // Resuming swaps in the new table; a thin target has no size of its own, so this grows it.
        self.suspend(&name, true)?;
        self.suspend(&name, false)
    }

    fn resume(&self, id: ThinId) -> Result<(), DmError> {
        self.suspend(&self.name_of(id), false)
    }

    fn active_devices(&self) -> Result<Vec<ActiveThin>, DmError> {
        let devices = self.dm.list_devices().map_err(lib_err("list devices"))?;
        let mut out = Vec::new();
        for (name, _, _) in devices {
            let Ok(info) = self.dm.device_info(&DevId::Name(&name)) else {
                continue;
            };
            let Some(uuid) = info.uuid() else { continue };
            if let Some(id) = parse_thin_uuid(&self.tag, &uuid.to_string()) {
                out.push(ActiveThin {
                    id,
                    suspended: info.flags().contains(DmFlags::DM_SUSPEND),
                    open_count: info.open_count(),
                });
            }
        }
        out.sort_by_key(|a| a.id);
        Ok(out)
    }

    fn mapped_sectors(&self, id: ThinId) -> Result<Option<u64>, DmError> {
        if self.thin_info(id)?.is_none() {
            return Ok(None);
        }
        let (_, _, params) = single_target(&self.dm, &self.name_of(id), false)?;
        Ok(super::status::parse_thin_mapped_sectors(&params))
    }

    fn thin_ids(&self) -> Result<Vec<ThinId>, DmError> {
        let meta = devnode_of(&self.meta_dev)?;
        let held = matches!(self.status()?, PoolStatus::Working(ref s) if s.held_root.is_some());
        if !held {
            self.message("reserve_metadata_snap")?;
        }
        let dump = crate::tools::thin_dump_metadata_snap(&meta.to_string_lossy());
        if !held {
            self.message("release_metadata_snap")?;
        }
        parse_thin_dump_ids(&dump?)
    }
}

/// The `dev_id`s of the `<device>` elements in `thin_dump` XML output.
pub fn parse_thin_dump_ids(xml: &str) -> Result<Vec<ThinId>, DmError> {
    let mut ids = Vec::new();
    for line in xml.lines().map(str::trim).filter(|l| l.starts_with("<device ")) {
        let id = line
            .split("dev_id=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|n| n.parse::<u32>().ok())
            .and_then(|n| ThinId::new(n).ok())
            .ok_or_else(|| {
                DmError::Config(format!("thin_dump printed a device line without a valid dev_id: {line}"))
            })?;
        ids.push(id);
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_dump_ids() {
        let xml = r#"<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="10">
  <device dev_id="3" mapped_blocks="0" transaction="0" creation_time="0" snap_time="1">
  </device>
  <device dev_id="1" mapped_blocks="2" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
  </device>
</superblock>"#;
        let ids: Vec<u32> = parse_thin_dump_ids(xml).unwrap().into_iter().map(|i| i.get()).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(parse_thin_dump_ids("<device mapped_blocks=\"0\">").is_err());
        assert!(parse_thin_dump_ids("<superblock></superblock>").unwrap().is_empty());
    }
}
