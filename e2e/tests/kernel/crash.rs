//! Crash safety: the process is killed (abort) at every crash point of create, snapshot, delete
//! and group snapshot; a restart must recover so that no thin id is in the pool without a record, no record
//! is without its thin id, and the pool's transaction id equals the store's.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use thinpool_csi::engine::crash::POINTS;
use thinpool_csi::engine::group::GROUP_POINTS;
use thinpool_csi::store::Kind;

use crate::fixture::*;

pub const CHILD_ENV: &str = "THINPOOL_E2E_CRASH_CHILD";
const TEST: &str = "crash";

fn fixture() -> LoopFixture {
    LoopFixture::new(TEST, GIB)
}

/// In the child: open the engine on the parent's pool and run one operation, which the crash
/// point aborts. Reaching the end means the crash point was never hit.
pub fn child_main() -> ExitCode {
    let op = std::env::var(CHILD_ENV).unwrap_or_default();
    let point = std::env::var("THINPOOL_E2E_CRASH_POINT").unwrap_or_default();
    let config = LoopFixture::config_for(TEST, GIB);
    let run = || -> Result {
        let (e, _) = thinpool_csi::open::open_engine(&config)?;
        match op.as_str() {
            "create" => drop(e.create_volume(&format!("new-{point}"), 64 * MIB, None)?),
            "snapshot" => drop(e.create_snapshot(&format!("snap-{point}"), "base")?),
            "delete" => drop(e.delete(Kind::Volume, &format!("victim-{point}"))?),
            "group" => drop(e.create_group_snapshot(&format!("g-{point}"), &group_sources())?),
            other => return Err(format!("unknown child op {other}").into()),
        }
        Ok(())
    };
    match run() {
        Ok(()) => {
            eprintln!("crash child: {op} finished without reaching its crash point");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("crash child: {op} failed before its crash point: {e}");
            ExitCode::from(4)
        }
    }
}

/// Runs `op` in a child process that must be killed at its crash point `point`.
fn crash_child(op: &str, point: &str) -> Result {
    let status = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, op)
        .env("THINPOOL_E2E_CRASH_POINT", point)
        .env("THINPOOL_CSI_CRASH_AT", format!("{op}:{point}"))
        .status()?;
    if status.signal() != Some(nix::libc::SIGABRT) {
        return Err(format!("{op}:{point}: the child was not killed at its crash point ({status})").into());
    }
    Ok(())
}

pub fn loop_crash_at_every_point() -> Result {
    let f = fixture();
    {
        let e = f.engine()?;
        e.create_volume("base", 64 * MIB, None)?;
        for point in POINTS {
            e.create_volume(&format!("victim-{point}"), 64 * MIB, None)?;
        }
    }
    for op in ["create", "snapshot", "delete"] {
        for point in POINTS {
            crash_child(op, point)?;
            let (e, report) = thinpool_csi::open::open_engine(&f.config)?;
            let check = report.check.clone().ok_or("start-up did not sweep the pool")?;
            if report.recovered_intents != 1 || !check.is_clean() {
                return Err(format!("{op}:{point}: after restart {report:?}").into());
            }
            let records = e.list(Kind::Volume)?.len() + e.list(Kind::Snapshot)?.len();
            let in_pool = e.pool_thin_count()?;
            if records != in_pool {
                return Err(format!("{op}:{point}: {records} records, {in_pool} thin devices").into());
            }
            let committed = point == "after-commit-point";
            let (kind, name, want) = match op {
                "create" => (Kind::Volume, format!("new-{point}"), committed),
                "snapshot" => (Kind::Snapshot, format!("snap-{point}"), committed),
                // A begun delete is always carried through.
                _ => (Kind::Volume, format!("victim-{point}"), false),
            };
            let exists = e.get(kind, &name)?.is_some();
            if exists != want {
                return Err(format!("{op}:{point}: {kind} {name} exists={exists}, want {want}").into());
            }
            println!(
                "  {op}:{point}: killed, recovered ({:?}), consistent",
                if want {
                    "rolled forward"
                } else if op == "delete" {
                    "carried through"
                } else {
                    "rolled back"
                }
            );
        }
    }
    Ok(())
}

/// The volumes a crash-test group snapshot holds (active, so they are suspended at the crash).
fn group_sources() -> Vec<String> {
    ["ga", "gb", "gc"].iter().map(|s| s.to_string()).collect()
}

/// The process is killed at every crash point of a group snapshot of three active volumes; after
/// a restart the whole group exists (killed after the commit point) or none of it, no source is
/// left suspended, and the pool and the records agree.
pub fn loop_group_crash_at_every_point() -> Result {
    let f = fixture();
    {
        let e = f.engine()?;
        for v in group_sources() {
            e.create_volume(&v, 64 * MIB, None)?;
            e.activate(Kind::Volume, &v)?;
        }
    }
    for point in GROUP_POINTS {
        crash_child("group", point)?;
        let (e, report) = thinpool_csi::open::open_engine(&f.config)?;
        let check = report.check.clone().ok_or("start-up did not sweep the pool")?;
        if report.recovered_intents != 3 || !check.is_clean() {
            return Err(format!("group:{point}: after restart {report:?}").into());
        }
        // Only between the first suspend and the last resume are the sources held.
        let held = point == "after-first-member";
        let resumed = !report.resumed_devices.is_empty();
        if held != resumed {
            return Err(format!("group:{point}: resumed {:?} at start-up", report.resumed_devices).into());
        }
        use thinpool_csi::dm::ThinPool;
        if let Some(d) = e.pool().active_devices()?.iter().find(|d| d.suspended) {
            return Err(format!("group:{point}: thin device {} still suspended after start-up", d.id).into());
        }
        let committed = point == "after-commit-point";
        let members = e.list(Kind::Snapshot)?.into_iter().filter(|s| s.group.is_some()).count();
        let group = e.get_group(&format!("g-{point}"))?;
        let want = if committed { 3 } else { 0 };
        if members != want || group.as_ref().map_or(0, |g| g.members.len()) != want {
            return Err(format!("group:{point}: {members} member records, group {group:?}; want {want}").into());
        }
        if let Some(g) = group {
            e.delete_group(g.record.name.as_str())?;
        }
        println!(
            "  group:{point}: killed{}, recovered ({}), consistent",
            if report.resumed_devices.is_empty() { "" } else { " with its sources suspended" },
            if committed { "whole group rolled forward" } else { "nothing of it left" }
        );
    }
    Ok(())
}

trait ThinCount {
    fn pool_thin_count(&self) -> Result<usize>;
}

impl ThinCount for thinpool_csi::engine::Engine<thinpool_csi::dm::kernel::KernelPool> {
    fn pool_thin_count(&self) -> Result<usize> {
        use thinpool_csi::dm::ThinPool;
        Ok(self.pool().thin_ids()?.len())
    }
}
