//! The volume lifecycle on a real loop pool: the seed demonstration, space returned on delete,
//! expansion, deferred deletes, reopening, bad input, churn.

use std::path::Path;

use thinpool_csi::dm::kernel::KernelPool;
use thinpool_csi::dm::{DmError, PoolKind, ThinPool};
use thinpool_csi::engine::{DeleteOutcome, Engine, EngineError, Made, Refusal};
use thinpool_csi::names::Name;
use thinpool_csi::store::{Kind, Source};

use crate::fixture::*;

/// Create, mkfs, mount, write, snapshot, change the origin, read the snapshot, restore, read.
pub fn seed_demonstration(e: &Engine<KernelPool>, tag: &str) -> Result {
    let base = "hello world, I am a base";
    let mnt = format!("/tmp/mnt-{tag}");
    e.create_volume("base", 256 * MIB, None)?;
    let dev = e.activate(Kind::Volume, "base")?;
    sh(&format!("mkfs.ext4 -q -F {}", dev.display()))?;
    mount(&dev, &mnt, "rw")?;
    std::fs::write(format!("{mnt}/hello.txt"), base)?;
    umount(&mnt)?;

    e.create_snapshot("base-snap", "base")?;
    mount(&dev, &mnt, "rw")?;
    std::fs::write(format!("{mnt}/hello.txt"), "I was changed after the snapshot")?;
    umount(&mnt)?;

    let snap = e.activate(Kind::Snapshot, "base-snap")?;
    mount(&snap, &mnt, "ro,noload")?;
    let read = std::fs::read_to_string(format!("{mnt}/hello.txt"))?;
    umount(&mnt)?;
    e.deactivate(Kind::Snapshot, "base-snap")?;
    if read != base {
        return Err(format!("snapshot reads {read:?}, want {base:?}").into());
    }

    let from = Some(Source::Snapshot(Name::new("base-snap")?));
    e.create_volume("restored", 512 * MIB, from)?;
    let r = e.activate(Kind::Volume, "restored")?;
    mount(&r, &mnt, "rw")?;
    // Grow online to the larger volume, as NodeStageVolume does.
    sh(&format!("resize2fs {} >/dev/null", r.display()))?;
    let read = std::fs::read_to_string(format!("{mnt}/hello.txt"))?;
    let size = sh(&format!("df -B1 --output=size {mnt} | tail -1"))?;
    umount(&mnt)?;
    if read != base {
        return Err(format!("restored volume reads {read:?}, want {base:?}").into());
    }
    if size.trim().parse::<u64>()? < 400 * MIB {
        return Err(format!("restored filesystem was not grown to 512 MiB: {size}").into());
    }
    mount(&dev, &mnt, "ro")?;
    let now = std::fs::read_to_string(format!("{mnt}/hello.txt"))?;
    umount(&mnt)?;
    if now != "I was changed after the snapshot" {
        return Err(format!("origin reads {now:?}").into());
    }
    for (k, n) in [(Kind::Volume, "restored"), (Kind::Volume, "base")] {
        e.deactivate(k, n)?;
    }
    let check = e.check()?;
    if !check.is_clean() {
        return Err(format!("pool and records disagree: {check:?}").into());
    }
    Ok(())
}

pub fn loop_seed_demonstration() -> Result {
    let f = LoopFixture::new("seed", 2 * GIB);
    let e = f.engine()?;
    assert_eq!(e.pool().info().kind, PoolKind::Loop);
    assert!(e.pool().info().zeroes_new_blocks);
    seed_demonstration(&e, "loop")
}

/// Writes `bytes` of non-zero data at the start of a device.
fn fill(dev: &Path, bytes: u64) -> Result {
    sh(&format!("dd if=/dev/urandom of={} bs=1M count={} oflag=direct status=none", dev.display(), bytes / MIB))?;
    Ok(())
}

pub fn loop_delete_returns_data_blocks() -> Result {
    let f = LoopFixture::new("delete-blocks", GIB);
    let e = f.engine()?;
    let before = data_used(e.pool())?;
    e.create_volume("v", 256 * MIB, None)?;
    let dev = e.activate(Kind::Volume, "v")?;
    fill(&dev, 64 * MIB)?;
    let during = data_used(e.pool())?;
    let block = e.pool().info().block_bytes();
    if during < before + 64 * MIB / block {
        return Err(format!("writing 64 MiB used only {} blocks", during - before).into());
    }
    let mapped = e.mapped_bytes(Kind::Volume, "v")?.unwrap_or(0);
    if mapped < 64 * MIB {
        return Err(format!("thin status maps {mapped} bytes after writing 64 MiB").into());
    }
    assert_eq!(e.delete(Kind::Volume, "v")?, DeleteOutcome::Deleted);
    let after = data_used(e.pool())?;
    if after != before {
        return Err(format!("data blocks used: {before} before, {during} with the volume, {after} after delete").into());
    }
    Ok(())
}

fn sectors_of(dev: &Path) -> Result<u64> {
    let name = dev.file_name().ok_or("device path")?.to_string_lossy().into_owned();
    Ok(std::fs::read_to_string(format!("/sys/block/{name}/size"))?.trim().parse()?)
}

pub fn loop_expand_grows_an_active_device() -> Result {
    let f = LoopFixture::new("expand", GIB);
    let e = f.engine()?;
    e.create_volume("v", 128 * MIB, None)?;
    e.create_snapshot("s", "v")?;
    let dev = e.activate(Kind::Volume, "v")?;
    assert_eq!(sectors_of(&dev)?, 128 * MIB / 512);
    sh(&format!("mkfs.ext4 -q -F {}", dev.display()))?;
    mount(&dev, "/tmp/mnt-expand", "rw")?;
    e.expand_volume("v", 384 * MIB)?;
    assert_eq!(sectors_of(&dev)?, 384 * MIB / 512);
    sh(&format!("resize2fs {} >/dev/null 2>&1", dev.display()))?;
    let size: u64 = sh("df -B1 --output=size /tmp/mnt-expand | tail -1")?.trim().parse()?;
    umount("/tmp/mnt-expand")?;
    if size < 300 * MIB {
        return Err(format!("filesystem did not grow online: {size}").into());
    }
    assert!(matches!(e.expand_volume("v", 64 * MIB), Err(EngineError::InvalidSize { .. })));
    // Expanded with a snapshot present; both still delete.
    e.deactivate(Kind::Volume, "v")?;
    assert_eq!(e.delete(Kind::Volume, "v")?, DeleteOutcome::Deleted);
    assert_eq!(e.delete(Kind::Snapshot, "s")?, DeleteOutcome::Deleted);
    Ok(())
}

pub fn loop_busy_delete_is_deferred() -> Result {
    let f = LoopFixture::new("deferred", GIB);
    let e = f.engine()?;
    e.create_volume("v", 128 * MIB, None)?;
    let dev = e.activate(Kind::Volume, "v")?;
    sh(&format!("mkfs.ext4 -q -F {}", dev.display()))?;
    mount(&dev, "/tmp/mnt-deferred", "rw")?;
    assert!(matches!(e.deactivate(Kind::Volume, "v"), Err(EngineError::Busy { .. })));
    assert_eq!(e.delete(Kind::Volume, "v")?, DeleteOutcome::Deferred);
    assert_eq!(e.retry_deferred()?, 0);
    umount("/tmp/mnt-deferred")?;
    assert_eq!(e.retry_deferred()?, 1);
    let c = e.check()?;
    if !c.is_clean() || !e.pool().thin_ids()?.is_empty() {
        return Err(format!("left behind: {c:?}").into());
    }
    Ok(())
}

pub fn loop_reopen_after_pool_deactivation() -> Result {
    let f = LoopFixture::new("reopen", GIB);
    {
        let e = f.engine()?;
        e.create_volume("keep", 64 * MIB, None)?;
        let dev = e.activate(Kind::Volume, "keep")?;
        sh(&format!("echo persisted | dd of={} conv=fsync status=none", dev.display()))?;
        e.deactivate(Kind::Volume, "keep")?;
    }
    // As after a reboot: the pool device goes, the files stay.
    thinpool_csi::dm::loopback::deactivate_pool(&f.name)?;
    let e = f.engine()?;
    let dev = e.activate(Kind::Volume, "keep")?;
    let head = sh(&format!("head -c 9 {}", dev.display()))?;
    e.deactivate(Kind::Volume, "keep")?;
    if head != "persisted" {
        return Err(format!("after reopening the pool the volume reads {head:?}").into());
    }
    assert!(e.check()?.is_clean());
    Ok(())
}

pub fn loop_bad_input_changes_nothing() -> Result {
    let f = LoopFixture::new("bad-input", GIB);
    let e = f.engine()?;
    e.create_volume("existing", 64 * MIB, None)?;
    let before = (e.pool().thin_ids()?, e.check()?, e.list(Kind::Volume)?);
    let long = "x".repeat(129);
    let bad_names = ["a/b", "..", "../etc", "a\0b", long.as_str(), ""];
    for name in bad_names {
        assert!(matches!(e.create_volume(name, 64 * MIB, None), Err(EngineError::InvalidName(_))), "{name:?}");
        assert!(matches!(e.create_snapshot(name, "existing"), Err(EngineError::InvalidName(_))));
        assert!(matches!(e.create_snapshot("s", name), Err(EngineError::InvalidName(_))));
        assert!(matches!(e.delete(Kind::Volume, name), Err(EngineError::InvalidName(_))));
    }
    for size in [0, 100, 513, 64 * MIB + 1] {
        assert!(matches!(e.create_volume("v", size, None), Err(EngineError::InvalidSize { .. })), "{size}");
    }
    // The loop pool is 1 GiB with ratio 10: 64 GiB does not fit.
    assert!(matches!(
        e.create_volume("v", 64 * GIB, None),
        Err(EngineError::ResourceExhausted(Refusal::Budget { .. }))
    ));
    assert!(matches!(e.create_volume("existing", 128 * MIB, None), Err(EngineError::AlreadyExists { .. })));
    assert!(matches!(e.create_volume("existing", 64 * MIB, None), Ok(Made::Existing(_))));
    let from = Some(Source::Snapshot(Name::new("no-such-snap")?));
    assert!(matches!(e.create_volume("v", 64 * MIB, from), Err(EngineError::NotFound { .. })));
    let after = (e.pool().thin_ids()?, e.check()?, e.list(Kind::Volume)?);
    if before != after {
        return Err(format!("bad input changed the pool or records: {before:?} -> {after:?}").into());
    }
    Ok(())
}

pub fn loop_not_a_thin_pool() -> Result {
    let f = LoopFixture::new("not-pool", GIB);
    drop(f.engine()?);
    // A device of another target type is not a thin pool.
    sh("dmsetup create e2e-linear --table '0 2048 error'")?;
    let r = KernelPool::open("e2e-linear", PoolKind::Loop, "test".into());
    let _ = sh("dmsetup remove e2e-linear");
    match r {
        Err(DmError::NotAThinPool { found, .. }) if found == "error" => {}
        Err(e) => return Err(format!("wrong error for an error target: {e}").into()),
        Ok(_) => return Err("an error target was opened as a thin pool".into()),
    }
    match KernelPool::open("e2e-no-such-device", PoolKind::Loop, "test".into()) {
        Err(DmError::NoSuchPool(_)) => Ok(()),
        Err(e) => Err(format!("wrong error for a missing device: {e}").into()),
        Ok(_) => Err("a missing device opened".into()),
    }
}

pub fn loop_churn_200() -> Result {
    let f = LoopFixture::new("churn", 2 * GIB);
    let e = f.engine()?;
    let before = data_used(e.pool())?;
    for i in 0..200 {
        let v = format!("churn-{i}");
        e.create_volume(&v, 64 * MIB, None)?;
        if i % 10 == 0 {
            let dev = e.activate(Kind::Volume, &v)?;
            sh(&format!("dd if=/dev/urandom of={} bs=64K count=4 oflag=direct status=none", dev.display()))?;
        }
        e.create_snapshot(&format!("{v}-snap"), &v)?;
        assert_eq!(e.delete(Kind::Volume, &v)?, DeleteOutcome::Deleted);
        assert_eq!(e.delete(Kind::Snapshot, &format!("{v}-snap"))?, DeleteOutcome::Deleted);
    }
    let left = (e.list(Kind::Volume)?, e.list(Kind::Snapshot)?, e.pool().thin_ids()?, e.pool().active_devices()?);
    if !(left.0.is_empty() && left.1.is_empty() && left.2.is_empty() && left.3.is_empty()) {
        return Err(format!("left behind: {left:?}").into());
    }
    let after = data_used(e.pool())?;
    let check = e.check()?;
    if after != before || !check.is_clean() || check.pool_transaction_id != 800 {
        return Err(format!("data blocks {before} -> {after}; {check:?}").into());
    }
    Ok(())
}
