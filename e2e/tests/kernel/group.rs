//! Group snapshots on real dm-thin: one instant across every member, shown against a writer; the
//! same writer against one snapshot after another shows the check can fail; how long writers are
//! held for groups of 2, 8 and 32 volumes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thinpool_csi::dm::kernel::KernelPool;
use thinpool_csi::engine::{Engine, MadeGroup};
use thinpool_csi::store::Kind;

use crate::fixture::*;

/// One aligned block, for O_DIRECT.
#[repr(align(4096))]
struct Block([u8; 4096]);

fn open_direct(dev: &Path) -> Result<File> {
    Ok(OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_DIRECT | nix::libc::O_DSYNC).open(dev)?)
}

fn write_seq(f: &File, seq: u64) -> Result {
    let mut b = Block([0; 4096]);
    b.0[..8].copy_from_slice(&seq.to_le_bytes());
    f.write_all_at(&b.0, 0)?;
    Ok(())
}

fn read_seq(dev: &Path) -> Result<u64> {
    let f = open_direct(dev)?;
    let mut b = Block([0; 4096]);
    f.read_exact_at(&mut b.0, 0)?;
    Ok(u64::from_le_bytes(b.0[..8].try_into()?))
}

/// Writes 1, 2, 3, … to the volumes in turn (each write acknowledged by the device before the
/// next volume's), until `stop`; how many rounds it wrote.
fn writer(
    devices: Vec<std::path::PathBuf>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<std::result::Result<u64, String>> {
    std::thread::spawn(move || {
        let run = || -> Result<u64> {
            let files = devices.iter().map(|d| open_direct(d)).collect::<Result<Vec<_>>>()?;
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                for f in &files {
                    write_seq(f, seq)?;
                }
            }
            Ok(seq)
        };
        run().map_err(|e| e.to_string())
    })
}

/// Whether sequence numbers read from the volumes (in writing order) can be one instant of the
/// writer: no volume ahead of one written before it, and at most one round between first and last.
fn one_instant(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[0] >= w[1]) && seqs.first().zip(seqs.last()).is_some_and(|(a, z)| a - z <= 1)
}

/// The sequence numbers each snapshot holds.
fn read_members(e: &Engine<KernelPool>, members: &[String]) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for m in members {
        let dev = e.activate(Kind::Snapshot, m)?;
        out.push(read_seq(&dev)?);
        e.deactivate(Kind::Snapshot, m)?;
    }
    Ok(out)
}

fn volumes(e: &Engine<KernelPool>, prefix: &str, n: usize) -> Result<(Vec<String>, Vec<std::path::PathBuf>)> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:02}")).collect();
    let mut devs = Vec::new();
    for v in &names {
        e.create_volume(v, 64 * MIB, None)?;
        devs.push(e.activate(Kind::Volume, v)?);
    }
    Ok((names, devs))
}

pub fn group_snapshot_holds_one_instant() -> Result {
    let f = LoopFixture::new("group", GIB);
    let e = f.engine()?;
    let (names, devs) = volumes(&e, "db", 3)?;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(devs, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    // Group snapshots: every one must hold one instant.
    let mut groups = Vec::new();
    for round in 0..10 {
        let made = e.create_group_snapshot(&format!("g{round}"), &names)?;
        let members: Vec<String> = made.group().members.iter().map(|m| m.name.to_string()).collect();
        groups.push(members);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The control: one snapshot after another, with the same writer. If those never show two
    // instants, the check above proves nothing.
    let mut singles = Vec::new();
    for round in 0..10 {
        let members: Vec<String> = names.iter().map(|v| format!("s{round}-{v}")).collect();
        for (m, v) in members.iter().zip(&names) {
            e.create_snapshot(m, v)?;
        }
        singles.push(members);
    }
    stop.store(true, Ordering::Relaxed);
    let written = w.join().map_err(|_| "the writer panicked")??;
    let mut grouped_seen = Vec::new();
    for members in &groups {
        let seqs = read_members(&e, members)?;
        ensure(seqs[0] > 0, format!("group {members:?} was cut before the writer started: {seqs:?}"))?;
        ensure(one_instant(&seqs), format!("group snapshot {members:?} holds {seqs:?}: not one instant"))?;
        grouped_seen.push(seqs);
    }
    let mut torn = 0;
    for members in &singles {
        if !one_instant(&read_members(&e, members)?) {
            torn += 1;
        }
    }
    ensure(torn > 0, "10 rounds of single snapshots under the writer all held one instant: the check cannot fail")?;
    println!(
        "  {written} rounds written; 10 group snapshots, each one instant (e.g. {:?}); one snapshot after another: {torn} of 10 torn",
        grouped_seen.last().unwrap_or(&vec![])
    );
    for (i, _) in groups.iter().enumerate() {
        e.delete_group(&format!("g{i}"))?;
    }
    ensure(e.list_groups()?.is_empty(), "groups left after deleting them all")?;
    ensure(e.check()?.is_clean(), "the pool is not clean after the groups were deleted")?;
    Ok(())
}

/// Writers held by a group snapshot of 2, 8 and 32 volumes, each under a writer (min / median /
/// max of 5); printed for docs/performance.md, never asserted.
pub fn group_snapshot_hold_times() -> Result {
    let f = LoopFixture::new("grouphold", 4 * GIB);
    let e = f.engine()?;
    for n in [2usize, 8, 32] {
        let (names, devs) = volumes(&e, &format!("h{n}-"), n)?;
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(devs, stop.clone());
        let mut held = Vec::new();
        let mut total = Vec::new();
        for round in 0..5 {
            let start = Instant::now();
            match e.create_group_snapshot(&format!("h{n}-g{round}"), &names)? {
                MadeGroup::Created(_, h) => held.push(h),
                MadeGroup::Existing(_) => return Err("a new group name found a group".into()),
            }
            total.push(start.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        w.join().map_err(|_| "the writer panicked")??;
        held.sort();
        total.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {n:2} volumes: writers held {:.1} / {:.1} / {:.1} ms (min / median / max of 5); whole call median {:.1} ms",
            ms(&held[0]),
            ms(&held[2]),
            ms(&held[4]),
            ms(&total[2])
        );
    }
    Ok(())
}
