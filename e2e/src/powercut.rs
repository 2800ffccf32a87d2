//! `thinpool-e2e powercut`: power cuts on the real kernel. The guest's two disks are raw files
//! under `target/vm/powercut/` that outlive it; each boot checks what the ledger says the earlier
//! boots were told, then runs a seeded workload (e2e/tests/kernel/powercut.rs) until the harness
//! kills qemu at a seeded random moment. A last boot only checks, reading back every filesystem.
//!
//! What a kill of qemu drops is what a power cut drops from the guest's side: its page cache, the
//! kernel's unflushed buffers and writes not yet handed to the virtual disk. Writes the virtual disk
//! had accepted survive (they are in the host's page cache): a drive whose own volatile cache loses
//! accepted writes is not simulated.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::build;
use crate::vm::{self, qemu::Outcome, Boot};

/// Size of each sparse disk image (the LVM disk and the ext4 disk with the loop pool).
const DISK_BYTES: u64 = 4 << 30;

/// Where a cut landed, from the last lines of a boot's ledger: the operation begun and not
/// acknowledged (`create`, `csi snap`, ...), or between two operations.
pub fn landed_in(ledger: &str) -> String {
    let mut open: BTreeMap<u64, String> = BTreeMap::new();
    for line in ledger.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(seq) = w.get(1).and_then(|s| s.parse::<u64>().ok()) else { continue };
        match w[0] {
            "begin" if w.len() > 3 => {
                open.insert(seq, format!("{} {}", w[2], w[3]));
            }
            "ok" => {
                open.remove(&seq);
            }
            _ => {}
        }
    }
    open.into_values().next_back().unwrap_or_else(|| "between operations".into())
}

pub fn run(cuts: u32, seed: u64) -> Result<()> {
    let suite = build::kernel_suite()?;
    let csi = build::csi_binary(false)?;
    let dir = vm::target_dir().join("vm/powercut");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let disks = [dir.join("lvm.img"), dir.join("files.img")];
    for d in &disks {
        std::fs::File::create(d)?.set_len(DISK_BYTES).with_context(|| format!("creating {}", d.display()))?;
    }
    let ledger = dir.join("ledger");
    std::fs::write(&ledger, "")?;
    println!("powercut: seed {seed}, {cuts} cuts (replay: thinpool-e2e powercut --cuts {cuts} --seed {seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut landed: BTreeMap<String, u32> = BTreeMap::new();
    let start = Instant::now();
    for i in 0..=cuts {
        let last = i == cuts;
        let cycle_seed: u64 = rng.random();
        let delay = Duration::from_millis(rng.random_range(200..5_000));
        let script = format!(
            "export THINPOOL_CSI_BIN={}\nexport THINPOOL_POWERCUT_LEDGER={}\nexport THINPOOL_POWERCUT_SEED={cycle_seed}\n\
             export THINPOOL_E2E_POWERCUT={}\n{}",
            csi.display(),
            ledger.display(),
            if last { "verify" } else { "cycle" },
            suite.display()
        );
        let what = if last {
            "the last check".to_owned()
        } else {
            format!("boot {} of {cuts}, cut {delay:?} after arming", i + 1)
        };
        println!("== powercut: {what}");
        let boot = Boot {
            name: "powercut",
            script: &script,
            timeout: Duration::from_secs(600),
            kernel_lines: false,
            memory_mib: 3072,
            disks: &[],
            persistent: &disks,
            cut: (!last).then_some(delay),
        };
        let outcome = boot.run()?;
        let share = vm::target_dir().join("vm/runs/powercut/ledger");
        let lines = std::fs::read_to_string(&share).unwrap_or_default();
        std::fs::OpenOptions::new().append(true).open(&ledger)?.write_all(lines.as_bytes())?;
        match outcome {
            Outcome::Cut => *landed.entry(landed_in(&lines)).or_default() += 1,
            Outcome::Exited(0) if last => {}
            Outcome::Exited(0) => *landed.entry("no cut (the workload ended first)".into()).or_default() += 1,
            Outcome::Exited(code) => bail!("powercut: {what} failed (exit code {code}); seed {seed}"),
            Outcome::TimedOut => bail!("powercut: {what} did not finish within 600 s; seed {seed}"),
            Outcome::NoExitCode => bail!("powercut: {what}: the guest died without an exit code; seed {seed}"),
        }
    }
    let ops = std::fs::read_to_string(&ledger)?.lines().filter(|l| l.starts_with("ok ")).count();
    println!(
        "powercut: {cuts} cuts survived, {ops} operations acknowledged, seed {seed}, {} s; cuts landed in:",
        start.elapsed().as_secs()
    );
    for (kind, n) in &landed {
        println!("  {n:>4}  {kind}");
    }
    let _ = std::fs::remove_file(&disks[0]);
    let _ = std::fs::remove_file(&disks[1]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::landed_in;

    #[test]
    fn a_cut_lands_in_the_operation_begun_last() {
        assert_eq!(landed_in("begin 1 lvm create v1 16\nok 1\nbegin 2 csi snap s2 c1\n"), "csi snap");
        assert_eq!(landed_in("begin 1 lvm create v1 16\nok 1\n"), "between operations");
        assert_eq!(landed_in(""), "between operations");
    }
}
