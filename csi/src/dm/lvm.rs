//! direct-lvm: adopting an existing LVM thin pool, and building one on an empty block device the
//! way Docker's direct-lvm guide does. LVM runs here only, never per volume.
//!
//! LVM treats a pool whose transaction id is 0 and which holds no LVM thin LVs as externally
//! managed; once an LVM thin LV exists it checks the transaction id and would fail activation
//! after we changed it. So a pool holding LVM thin LVs is refused.

use serde::Serialize;

use super::kernel::KernelPool;
use super::{DmError, PoolKind};
use crate::tools;

/// dm's escaping of LVM names: `-` inside a VG or LV name is doubled.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// LVs of `vg` whose pool is `lv` (its LVM thin volumes), from `lvs` output lines `name pool`.
pub fn thin_lvs_of(lvs_output: &str, lv: &str) -> Vec<String> {
    lvs_output
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            (f.next()? == lv).then(|| name.to_owned())
        })
        .collect()
}

/// Opens the LVM thin pool `vg/lv`, refusing one that is not ours to manage.
pub fn adopt(vg: &str, lv: &str) -> Result<KernelPool, DmError> {
    let pool = format!("{vg}/{lv}");
    let segtype = tools::lvm("lvs", &["--noheadings", "-o", "segtype", &pool])?;
    if segtype.trim() != "thin-pool" {
        return Err(DmError::NotAThinPool { name: pool, found: segtype.trim().to_owned() });
    }
    let lvs = tools::lvm("lvs", &["--noheadings", "-o", "lv_name,pool_lv", vg])?;
    let thin = thin_lvs_of(&lvs, lv);
    if !thin.is_empty() {
        return Err(DmError::PoolHasLvmThinVolumes { pool, lvs: thin.join(", ") });
    }
    let base = dm_name(vg, lv);
    let open = |name: &str| KernelPool::open(name, PoolKind::DirectLvm, pool.clone());
    let kp = match open(&format!("{base}-tpool")).or_else(|_| open(&base)) {
        Err(DmError::NoSuchPool(_)) => {
            tools::lvm("lvchange", &["-ay", &pool])?;
            open(&format!("{base}-tpool")).or_else(|_| open(&base))?
        }
        other => other?,
    };
    if !super::ThinPool::info(&kp).zeroes_new_blocks {
        return Err(DmError::UnzeroedPool { pool });
    }
    Ok(kp)
}

/// `(pv_name, vg_name)` pairs from `pvs --noheadings -o pv_name,vg_name` (a PV in no VG has "").
pub fn pvs_of(pvs_output: &str) -> Vec<(String, String)> {
    pvs_output
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pv = f.next()?;
            Some((pv.to_owned(), f.next().unwrap_or("").to_owned()))
        })
        .collect()
}

/// What `--pool device` does with a device, decided from the PVs LVM knows about (paths already
/// resolved, so `/dev/disk/by-id/...` and `/dev/sdb` compare equal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceDecision {
    /// The device already carries our VG: adopt its pool.
    Adopt,
    /// The device is in no VG and our VG does not exist: build the pool (after a signature check).
    Setup,
    /// The device belongs to another VG, or our VG lives on other devices.
    Refuse(String),
}

pub fn device_decision(device: &str, vg: &str, pvs: &[(String, String)]) -> DeviceDecision {
    if let Some((_, owner)) = pvs.iter().find(|(pv, _)| pv == device) {
        return match owner.as_str() {
            o if o == vg => DeviceDecision::Adopt,
            "" => DeviceDecision::Refuse(format!(
                "{device} is an LVM physical volume in no volume group; remove it (pvremove) or point --lvm-pool at its pool"
            )),
            o => DeviceDecision::Refuse(format!("{device} belongs to volume group {o}, not {vg}")),
        };
    }
    let others: Vec<&str> = pvs.iter().filter(|(_, o)| o == vg).map(|(pv, _)| pv.as_str()).collect();
    if !others.is_empty() {
        return DeviceDecision::Refuse(format!(
            "volume group {vg} already exists on {}, not on {device}; choose another --lvm-pool VG name",
            others.join(", ")
        ));
    }
    DeviceDecision::Setup
}

/// `--pool device`: the pool `vg/lv` on `device`. Built there on first start (only when the
/// device holds no signature at all), adopted on every later start. A device with anything else
/// on it is refused, never wiped.
pub fn open_on_device(device: &str, vg: &str, lv: &str) -> Result<KernelPool, DmError> {
    let real = |p: &str| std::fs::canonicalize(p).map(|p| p.display().to_string()).unwrap_or_else(|_| p.to_owned());
    let dev = std::fs::canonicalize(device).map_err(DmError::io(format!("device {device}")))?.display().to_string();
    let pvs_out = tools::lvm("pvs", &["--noheadings", "-o", "pv_name,vg_name"])?;
    let pvs: Vec<(String, String)> = pvs_of(&pvs_out).into_iter().map(|(pv, o)| (real(&pv), o)).collect();
    match device_decision(&dev, vg, &pvs) {
        DeviceDecision::Adopt => {}
        DeviceDecision::Refuse(why) => return Err(DmError::DeviceInUse { device: device.to_owned(), why }),
        DeviceDecision::Setup => {
            let report = setup(device, vg, lv, false).map_err(|e| match e {
                DmError::DeviceHasSignature { device, signature } => DmError::DeviceInUse {
                    why: format!(
                        "it holds a {signature} signature and the driver only builds a pool on an empty disk; \
                         if its data may go, wipe it (wipefs -a {device}) and restart the plugin"
                    ),
                    device,
                },
                e => e,
            })?;
            tracing::info!(?report, "built a direct-lvm thin pool on an empty device");
        }
    }
    adopt(vg, lv)
}

/// The sizes `pool setup` gives LVM, from the VG's size: data 95 % of the VG, metadata 1 %
/// capped at 16 GiB, chunk 512 KiB (the Docker direct-lvm guide's numbers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetupPlan {
    pub data_percent_of_vg: u8,
    pub meta_bytes: u64,
    pub chunk_bytes: u64,
}

pub fn setup_plan(vg_bytes: u64) -> SetupPlan {
    let meta = (vg_bytes / 100).clamp(4 << 20, 16 << 30);
    SetupPlan { data_percent_of_vg: 95, meta_bytes: meta.div_ceil(1 << 20) << 20, chunk_bytes: 512 << 10 }
}

#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    pub device: String,
    pub vg: String,
    pub lv: String,
    pub plan: SetupPlan,
}

/// Builds a direct-lvm thin pool `vg/lv` on `device`, refusing a device with a signature
/// (filesystem, partition table, LVM) unless `force`.
pub fn setup(device: &str, vg: &str, lv: &str, force: bool) -> Result<SetupReport, DmError> {
    let meta = std::fs::metadata(device).map_err(DmError::io(device.to_owned()))?;
    if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        return Err(DmError::Config(format!("{device} is not a block device")));
    }
    if let Some(signature) = tools::signature(device)? {
        if !force {
            return Err(DmError::DeviceHasSignature { device: device.to_owned(), signature });
        }
        tools::run("wipefs", &["-a", device])?;
    }
    let pv_args: &[&str] = if force { &["-y", "-ff", device] } else { &["-y", device] };
    tools::lvm("pvcreate", pv_args)?;
    tools::lvm("vgcreate", &[vg, device])?;
    let vg_size = tools::lvm("vgs", &["--noheadings", "--nosuffix", "--units", "b", "-o", "vg_size", vg])?;
    let vg_bytes: u64 = vg_size
        .trim()
        .parse()
        .map_err(|_| DmError::Config(format!("vgs printed an unreadable VG size {vg_size:?}")))?;
    let plan = setup_plan(vg_bytes);
    let meta_lv = format!("{lv}meta");
    tools::lvm("lvcreate", &["-y", "-Wy", "-n", lv, "-l", &format!("{}%VG", plan.data_percent_of_vg), vg])?;
    tools::lvm("lvcreate", &["-y", "-Wy", "-n", &meta_lv, "-L", &format!("{}b", plan.meta_bytes), vg])?;
    tools::lvm(
        "lvconvert",
        &[
            "-y",
            "--zero",
            "y",
            "-c",
            &format!("{}k", plan.chunk_bytes >> 10),
            "--thinpool",
            &format!("{vg}/{lv}"),
            "--poolmetadata",
            &format!("{vg}/{meta_lv}"),
        ],
    )?;
    Ok(SetupReport { device: device.to_owned(), vg: vg.to_owned(), lv: lv.to_owned(), plan })
}

/// The VG's extent size and free extents, from `vgs --units b -o vg_extent_size,vg_free_count`.
pub fn parse_vg_room(vgs_output: &str) -> Option<crate::grow::plan::VgRoom> {
    let mut f = vgs_output.split_whitespace();
    let extent_bytes = f.next()?.parse().ok().filter(|&e: &u64| e > 0)?;
    let free_extents = f.next()?.parse().ok()?;
    Some(crate::grow::plan::VgRoom { extent_bytes, free_extents })
}

/// How much room `vg` has for its pool to grow.
pub fn vg_room(vg: &str) -> Result<crate::grow::plan::VgRoom, DmError> {
    let out =
        tools::lvm("vgs", &["--noheadings", "--nosuffix", "--units", "b", "-o", "vg_extent_size,vg_free_count", vg])?;
    parse_vg_room(&out)
        .ok_or_else(|| DmError::Config(format!("vgs printed an unreadable extent size or free count {out:?}")))
}

/// The `lvextend` arguments that grow the pool `vg/lv` as planned (sizes are whole extents).
pub fn extend_args(vg: &str, lv: &str, growth: &crate::grow::plan::Growth) -> Vec<String> {
    use crate::grow::plan::Part;
    let pool = format!("{vg}/{lv}");
    match growth.part {
        Part::Data => vec!["-L".into(), format!("{}b", growth.to_bytes), pool],
        Part::Metadata => vec!["--poolmetadatasize".into(), format!("{}b", growth.to_bytes), pool],
    }
}

/// Grows one part of the pool with `lvextend`: LVM resizes the LV and reloads the pool's table
/// (a suspend and resume the kernel makes safe for the thin devices on it).
pub fn extend(vg: &str, lv: &str, growth: &crate::grow::plan::Growth) -> Result<(), DmError> {
    let args = extend_args(vg, lv, growth);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tools::lvm("lvextend", &args)?;
    Ok(())
}

/// What the pool `vg/lv` does with a write that finds no free block: fail it at once
/// (`error_if_no_space`) or hold it until the pool grows or the kernel's 60 s run out. `lvchange`
/// reloads the pool's table (a suspend and resume).
pub fn set_when_full(vg: &str, lv: &str, policy: crate::dm::status::NoSpacePolicy) -> Result<(), DmError> {
    let flag = match policy {
        crate::dm::status::NoSpacePolicy::Error => "y",
        crate::dm::status::NoSpacePolicy::Queue => "n",
    };
    tools::lvm("lvchange", &["--errorwhenfull", flag, &format!("{vg}/{lv}")])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_escape_dashes() {
        assert_eq!(dm_name("docker", "thinpool"), "docker-thinpool");
        assert_eq!(dm_name("my-vg", "thin-pool"), "my--vg-thin--pool");
    }

    #[test]
    fn finds_lvm_thin_volumes_of_the_pool() {
        let out = "  thinpool            \n  lv1      thinpool\n  other    otherpool\n  lv2 thinpool\n";
        assert_eq!(thin_lvs_of(out, "thinpool"), vec!["lv1", "lv2"]);
        assert!(thin_lvs_of("  thinpool\n", "thinpool").is_empty());
    }

    #[test]
    fn device_decisions() {
        let pvs = pvs_of("  /dev/sdb   thinpool-csi\n  /dev/sdc\n  /dev/sdd   data\n");
        assert_eq!(pvs[1], ("/dev/sdc".to_owned(), String::new()));
        assert_eq!(device_decision("/dev/sdb", "thinpool-csi", &pvs), DeviceDecision::Adopt);
        assert_eq!(device_decision("/dev/sde", "fresh", &pvs), DeviceDecision::Setup);
        for (dev, vg, says) in [
            ("/dev/sdd", "thinpool-csi", "belongs to volume group data"),
            ("/dev/sdc", "thinpool-csi", "in no volume group"),
            ("/dev/sde", "thinpool-csi", "already exists on /dev/sdb"),
        ] {
            match device_decision(dev, vg, &pvs) {
                DeviceDecision::Refuse(why) => assert!(why.contains(says), "{why}"),
                d => panic!("{dev}: {d:?}"),
            }
        }
    }

    #[test]
    fn vg_room_and_extend_arguments() {
        use crate::grow::plan::{Growth, Part, VgRoom};
        assert_eq!(parse_vg_room("  4194304   12\n"), Some(VgRoom { extent_bytes: 4 << 20, free_extents: 12 }));
        assert_eq!(parse_vg_room("  0 12"), None);
        assert_eq!(parse_vg_room("  4194304"), None);
        assert_eq!(parse_vg_room(""), None);
        let data = Growth { part: Part::Data, from_bytes: 1 << 30, to_bytes: 2 << 30 };
        assert_eq!(extend_args("vg", "pool", &data), ["-L", "2147483648b", "vg/pool"]);
        let meta = Growth { part: Part::Metadata, from_bytes: 4 << 20, to_bytes: 8 << 20 };
        assert_eq!(extend_args("vg", "pool", &meta), ["--poolmetadatasize", "8388608b", "vg/pool"]);
    }

    #[test]
    fn setup_plan_follows_the_docker_guide() {
        let p = setup_plan(100 << 30);
        assert_eq!(p.data_percent_of_vg, 95);
        assert_eq!(p.meta_bytes, 1024 << 20);
        assert_eq!(p.chunk_bytes, 512 << 10);
        assert_eq!(setup_plan(100 << 40).meta_bytes, 16 << 30);
        assert_eq!(setup_plan(100 << 20).meta_bytes, 4 << 20);
    }
}
