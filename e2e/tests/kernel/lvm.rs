//! direct-lvm: `pool setup` on an empty device, adoption, and the seed demonstration on an LVM
//! thin pool built in the guest; adoption refusals.

use thinpool_csi::config::{NodeConfig, PoolSpec};
use thinpool_csi::dm::{lvm, DmError, PoolKind, ThinPool};
use thinpool_csi::engine::EngineError;
use thinpool_csi::engine::Limits;

use crate::fixture::*;

fn config(test: &str, vg: &str) -> NodeConfig {
    NodeConfig {
        state_dir: format!("/tmp/e2e/{test}/state").into(),
        pool: PoolSpec::DirectLvm { vg: vg.into(), lv: "pool".into() },
        limits: Limits::default(),
    }
}

pub fn lvm_setup_refuses_signatures() -> Result {
    let d = LvmFixture::device("lvm-sig", 512 * MIB)?;
    sh(&format!("mkfs.ext4 -q -F {}", d.loopdev))?;
    match lvm::setup(&d.loopdev, &d.vg, "pool", false) {
        Err(DmError::DeviceHasSignature { signature, .. }) if signature == "ext4" => {}
        Err(e) => return Err(format!("wrong refusal: {e}").into()),
        Ok(_) => return Err("setup overwrote an ext4 filesystem without --force".into()),
    }
    if d.lvm(&format!("vgs {}", d.vg)).is_ok() {
        return Err("a refused setup still created the VG".into());
    }
    lvm::setup(&d.loopdev, &d.vg, "pool", true)?;
    let pool = lvm::adopt(&d.vg, "pool")?;
    assert_eq!(pool.info().kind, PoolKind::DirectLvm);
    assert_eq!(pool.info().block_bytes(), 512 << 10);
    assert!(pool.info().zeroes_new_blocks);
    Ok(())
}

pub fn lvm_seed_demonstration() -> Result {
    let d = LvmFixture::device("lvm-seed", 2 * GIB)?;
    lvm::setup(&d.loopdev, &d.vg, "pool", false)?;
    let _ = std::fs::remove_dir_all("/tmp/e2e/lvm-seed");
    let (e, report) = thinpool_csi::open::open_engine(&config("lvm-seed", &d.vg))?;
    assert!(report.adopted_new_pool);
    crate::lifecycle::seed_demonstration(&e, "lvm")?;
    // The records survive a restart of the engine on the same LVM pool.
    drop(e);
    let (e, _) = thinpool_csi::open::open_engine(&config("lvm-seed", &d.vg))?;
    assert_eq!(e.list(thinpool_csi::store::Kind::Volume)?.len(), 2);
    Ok(())
}

pub fn lvm_adoption_refusals() -> Result {
    let d = LvmFixture::device("lvm-refuse", GIB)?;
    d.lvm(&format!("pvcreate -y {}", d.loopdev))?;
    d.lvm(&format!("vgcreate {} {}", d.vg, d.loopdev))?;
    // A plain LV is not a thin pool.
    d.lvm(&format!("lvcreate -y -n plain -L 64M {}", d.vg))?;
    match lvm::adopt(&d.vg, "plain") {
        Err(DmError::NotAThinPool { .. }) => {}
        Err(e) => return Err(format!("plain LV: wrong refusal: {e}").into()),
        Ok(_) => return Err("a plain LV was adopted as a thin pool".into()),
    }
    // A pool without zeroing could leak a deleted volume's data.
    d.lvm(&format!("lvcreate -y --zero n -c 64K -T -L 128M {}/pool", d.vg))?;
    match lvm::adopt(&d.vg, "pool") {
        Err(DmError::UnzeroedPool { .. }) => {}
        Err(e) => return Err(format!("unzeroed pool: wrong refusal: {e}").into()),
        Ok(_) => return Err("a pool without block zeroing was adopted".into()),
    }
    // A pool holding LVM thin volumes is LVM's, not ours.
    d.lvm(&format!("lvcreate -y --zero y -c 64K -T -L 128M {}/pool2", d.vg))?;
    d.lvm(&format!("lvcreate -y -V 32M -T {}/pool2 -n thinlv", d.vg))?;
    match lvm::adopt(&d.vg, "pool2") {
        Err(DmError::PoolHasLvmThinVolumes { lvs, .. }) if lvs.contains("thinlv") => {}
        Err(e) => return Err(format!("LVM thin LVs: wrong refusal: {e}").into()),
        Ok(_) => return Err("a pool with LVM thin volumes was adopted".into()),
    }
    // Through the engine, with the records left untouched.
    match thinpool_csi::open::open_engine(&config("lvm-refuse", &d.vg)) {
        Err(EngineError::Dm(DmError::UnzeroedPool { .. })) => {}
        Err(e) => return Err(format!("engine: wrong refusal: {e}").into()),
        Ok(_) => return Err("the engine adopted an unzeroed pool".into()),
    }
    let _ = d.lvm(&format!("lvremove -y {}/thinlv", d.vg));
    Ok(())
}

/// `--pool device`: built on an empty disk at first start, adopted (not rebuilt) afterwards with
/// its volumes; a disk holding a filesystem or another VG is refused and left as it was.
pub fn lvm_device_pool() -> Result {
    let d = LvmFixture::device("lvm-device", GIB)?;
    let _ = std::fs::remove_dir_all("/tmp/e2e/lvm-device");
    let cfg = NodeConfig {
        pool: PoolSpec::Device { device: d.loopdev.clone(), vg: d.vg.clone(), lv: "pool".into() },
        ..config("lvm-device", &d.vg)
    };
    let (e, report) = thinpool_csi::open::open_engine(&cfg)?;
    assert!(report.adopted_new_pool);
    assert_eq!(e.pool().info().kind, PoolKind::DirectLvm);
    e.create_volume("kept", 64 * MIB, None)?;
    drop(e);
    let (e, report) = thinpool_csi::open::open_engine(&cfg)?;
    assert!(!report.adopted_new_pool, "the second start rebuilt the pool");
    assert_eq!(e.list(thinpool_csi::store::Kind::Volume)?.len(), 1);
    drop(e);

    let used = LvmFixture::device("lvm-device-used", 512 * MIB)?;
    sh(&format!("mkfs.ext4 -q -F {}", used.loopdev))?;
    match lvm::open_on_device(&used.loopdev, &used.vg, "pool") {
        Err(DmError::DeviceInUse { why, .. }) if why.contains("ext4") => {}
        Err(e) => return Err(format!("ext4 disk: wrong refusal: {e}").into()),
        Ok(_) => return Err("a disk with an ext4 filesystem was turned into a pool".into()),
    }
    if !sh(&format!("blkid -o value -s TYPE {}", used.loopdev))?.contains("ext4") {
        return Err("the refused disk lost its filesystem".into());
    }
    // The first disk, asked for under another VG name, belongs to our VG: refused.
    match lvm::open_on_device(&d.loopdev, "othervg", "pool") {
        Err(DmError::DeviceInUse { why, .. }) if why.contains(&d.vg) => {}
        Err(e) => return Err(format!("disk of another VG: wrong refusal: {e}").into()),
        Ok(_) => return Err("a disk of another volume group was used".into()),
    }
    Ok(())
}
