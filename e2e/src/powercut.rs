//! `thinpool-e2e powercut`: power cuts on the real kernel. The guest's two disks are raw files
//! under `target/vm/powercut/` that outlive it; each boot checks what the ledger says the earlier
//! boots were told and reads back every filesystem, then runs a seeded workload
//! (e2e/tests/kernel/powercut.rs) until the harness kills qemu at a seeded random moment. A boot
//! counts as cut only when the guest had not yet written its exit code; boots are made until the
//! asked number of cuts happened (at most twice that many). A last boot only checks.
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

/// What one boot of the run turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Killed while the guest was still working (no exit code written yet): a real cut.
    Cut,
    /// A cycle boot whose workload ended (exit code 0) before the harness killed it: no cut.
    WorkloadEnded,
    /// The last boot checked everything and passed.
    Verified,
}

/// Judges one boot from how it ended and what the guest printed (`output`). The guest's exit code
/// is read every time: a cycle boot killed after it wrote one is no cut, and fails when it is not 0.
/// A cut that lands after the workload reported a failure, just before the exit code, fails too.
pub fn classify(outcome: Outcome, last: bool, output: &str) -> std::result::Result<Verdict, String> {
    let failed = output.lines().find(|l| l.contains("powercut: FAILED") || l.contains("panicked at"));
    match outcome {
        Outcome::Cut if last => Err("the last check was cut, though no cut was asked for".into()),
        Outcome::Cut => match failed {
            Some(line) => Err(format!("the workload failed before the cut: {}", line.trim())),
            None => Ok(Verdict::Cut),
        },
        Outcome::Exited(0) if last => Ok(Verdict::Verified),
        Outcome::Exited(0) => Ok(Verdict::WorkloadEnded),
        Outcome::Exited(code) => Err(format!("failed (exit code {code})")),
        Outcome::TimedOut => Err("did not finish within its time limit".into()),
        Outcome::NoExitCode => Err("the guest died without an exit code".into()),
    }
}

/// The next boot after `boots` cycle boots of which `cut` were really cut: another cycle until
/// `cuts` cuts happened, then the last check. Boots whose workload ended before the cut do not
/// count, so more boots are made, up to twice `cuts`; past that, the run fails.
pub fn next_is_last(cuts: u32, cut: u32, boots: u32) -> std::result::Result<bool, String> {
    if cut >= cuts {
        return Ok(true);
    }
    if boots >= cuts.saturating_mul(2) {
        return Err(format!(
            "only {cut} of {cuts} boots were cut in {boots} boots (the workload ended before the cut in the others)"
        ));
    }
    Ok(false)
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
    let (mut cut, mut boots) = (0u32, 0u32);
    loop {
        let last = next_is_last(cuts, cut, boots).map_err(|e| anyhow::anyhow!("powercut: {e}; seed {seed}"))?;
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
            format!("boot {} (cut {} of {cuts}), cut {delay:?} after arming", boots + 1, cut + 1)
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
        let share = vm::target_dir().join("vm/runs/powercut");
        let lines = std::fs::read_to_string(share.join("ledger")).unwrap_or_default();
        std::fs::OpenOptions::new().append(true).open(&ledger)?.write_all(lines.as_bytes())?;
        let output = std::fs::read_to_string(share.join("output.txt")).unwrap_or_default();
        match classify(outcome, last, &output) {
            Ok(Verdict::Verified) => break,
            Ok(Verdict::Cut) => {
                cut += 1;
                *landed.entry(landed_in(&lines)).or_default() += 1;
            }
            Ok(Verdict::WorkloadEnded) => {
                *landed.entry("no cut (the workload ended first)".into()).or_default() += 1;
            }
            Err(e) => bail!("powercut: {what}: {e}; seed {seed}"),
        }
        boots += 1;
    }
    let ops = std::fs::read_to_string(&ledger)?.lines().filter(|l| l.starts_with("ok ")).count();
    println!(
        "powercut: {cut} cuts survived in {boots} boots, {ops} operations acknowledged, seed {seed}, {} s; boots ended in:",
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
    use super::{classify, landed_in, next_is_last, Verdict};
    use crate::vm::qemu::Outcome;

    #[test]
    fn every_boot_is_judged_by_how_it_ended() {
        let ok = "powercut: checked in 3.1 s: both pools consistent\n";
        assert_eq!(classify(Outcome::Cut, false, ok), Ok(Verdict::Cut));
        assert_eq!(classify(Outcome::Exited(0), false, ok), Ok(Verdict::WorkloadEnded));
        assert_eq!(classify(Outcome::Exited(0), true, ok), Ok(Verdict::Verified));
        for last in [false, true] {
            assert!(classify(Outcome::Exited(1), last, ok).unwrap_err().contains("exit code 1"));
            assert!(classify(Outcome::Exited(101), last, ok).is_err());
            assert!(classify(Outcome::TimedOut, last, ok).is_err());
            assert!(classify(Outcome::NoExitCode, last, ok).is_err());
        }
        assert!(classify(Outcome::Cut, true, ok).is_err());
        // The workload failed and the cut came before its exit code was written.
        let failed = "powercut: checked in 3.1 s\npowercut: FAILED: `csi create c7` failed: ...\n";
        assert!(classify(Outcome::Cut, false, failed).unwrap_err().contains("csi create c7"));
        let panicked = "thread 'main' panicked at e2e/tests/kernel/powercut.rs:1:1:\n";
        assert!(classify(Outcome::Cut, false, panicked).is_err());
    }

    #[test]
    fn the_run_boots_until_the_cuts_happened_and_no_longer_than_twice_that() {
        assert_eq!(next_is_last(3, 0, 0), Ok(false));
        assert_eq!(next_is_last(3, 2, 2), Ok(false));
        assert_eq!(next_is_last(3, 3, 3), Ok(true));
        // Boots that were not cut are made up for, up to 2 × cuts boots.
        assert_eq!(next_is_last(3, 2, 5), Ok(false));
        assert_eq!(next_is_last(3, 3, 6), Ok(true));
        assert!(next_is_last(3, 2, 6).unwrap_err().contains("only 2 of 3"));
        assert!(next_is_last(3, 0, 6).is_err());
        assert_eq!(next_is_last(0, 0, 0), Ok(true));
    }

    #[test]
    fn a_cut_lands_in_the_operation_begun_last() {
        assert_eq!(landed_in("begin 1 lvm create v1 16\nok 1\nbegin 2 csi snap s2 c1\n"), "csi snap");
        assert_eq!(landed_in("begin 1 lvm create v1 16\nok 1\n"), "between operations");
        assert_eq!(landed_in(""), "between operations");
    }
}
