//! Benchmark, run in the VM by `thinpool-e2e bench`: p50/p99 latency of create, snapshot and
//! delete through the engine, side by side with the LVM commands other drivers run for the same
//! job (`lvcreate --thin -V`, `lvcreate -s`, `lvremove`), on two thin pools of one VG built the
//! same way (chunk 512 KiB, zeroing on). Reports; asserts nothing.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use thinpool_csi::config::{NodeConfig, PoolSpec};
use thinpool_csi::engine::DeleteOutcome;
use thinpool_csi::engine::Limits;
use thinpool_csi::store::Kind;

const LVM_CONFIG: &str = "backup{backup=0 archive=0} devices{obtain_device_list_from_udev=0 scan_lvs=0} \
     activation{udev_sync=0 udev_rules=0 monitoring=0} global{use_lvmpolld=0}";
const VG: &str = "benchvg";

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        return Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lvm(args: &str) -> Result<String> {
    sh(&format!("{args} --config '{LVM_CONFIG}'"))
}

fn timed(f: impl FnOnce() -> Result) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn deleted(outcome: DeleteOutcome) -> Result {
    match outcome {
        DeleteOutcome::Deleted => Ok(()),
        other => Err(format!("delete ended {other:?}").into()),
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

struct Row {
    op: &'static str,
    ours: Vec<Duration>,
    lvm: Vec<Duration>,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn peak_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|u| u.max_rss()).unwrap_or(-1)
}

fn run(ops: u32) -> Result {
    std::env::set_var("THINPOOL_CSI_LVM_CONFIG", LVM_CONFIG);
    std::fs::create_dir_all("/run/lvm")?;
    std::fs::create_dir_all("/run/lock/lvm")?;
    sh("truncate -s 8G /tmp/bench.img")?;
    let dev = sh("losetup -f --show /tmp/bench.img")?.trim().to_owned();
    lvm(&format!("pvcreate -y {dev}"))?;
    lvm(&format!("vgcreate {VG} {dev}"))?;
    for pool in ["ours", "theirs"] {
        lvm(&format!("lvcreate -y -Wy -n {pool} -L 3G {VG}"))?;
        lvm(&format!("lvcreate -y -Wy -n {pool}meta -L 64M {VG}"))?;
        lvm(&format!("lvconvert -y --zero y -c 512k --thinpool {VG}/{pool} --poolmetadata {VG}/{pool}meta"))?;
    }
    let config = NodeConfig {
        state_dir: "/tmp/bench-state".into(),
        pool: PoolSpec::DirectLvm { vg: VG.into(), lv: "ours".into() },
        limits: Limits { overprovision_ratio: 1000.0, data_fill_limit_pct: 100.0, meta_fill_limit_pct: 100.0 },
    };
    let (engine, _) = thinpool_csi::open::open_engine(&config)?;
    let mut rows = vec![
        Row { op: "create (+activate)", ours: vec![], lvm: vec![] },
        Row { op: "snapshot", ours: vec![], lvm: vec![] },
        Row { op: "delete snapshot", ours: vec![], lvm: vec![] },
        Row { op: "delete volume", ours: vec![], lvm: vec![] },
    ];
    let size = 1u64 << 30;
    for i in 0..ops {
        let v = format!("v{i}");
        let s = format!("s{i}");
        rows[0].ours.push(timed(|| {
            engine.create_volume(&v, size, None)?;
            engine.activate(Kind::Volume, &v)?;
            Ok(())
        })?);
        rows[1].ours.push(timed(|| engine.create_snapshot(&s, &v).map(drop).map_err(Into::into))?);
        rows[0].lvm.push(timed(|| lvm(&format!("lvcreate -y -n {v} -V 1G --thin {VG}/theirs")).map(drop))?);
        rows[1].lvm.push(timed(|| lvm(&format!("lvcreate -y -n {s} -s {VG}/{v}")).map(drop))?);
    }
    for i in 0..ops {
        let v = format!("v{i}");
        let s = format!("s{i}");
        rows[2].ours.push(timed(|| deleted(engine.delete(Kind::Snapshot, &s)?))?);
        rows[2].lvm.push(timed(|| lvm(&format!("lvremove -y {VG}/{s}")).map(drop))?);
        rows[3].ours.push(timed(|| deleted(engine.delete(Kind::Volume, &v)?))?);
        rows[3].lvm.push(timed(|| lvm(&format!("lvremove -y {VG}/{v}")).map(drop))?);
    }
    let check = engine.check()?;
    if !check.is_clean() {
        return Err(format!("the engine left the pool inconsistent: {check:?}").into());
    }
    println!("\n### {ops} operations each, Debian {} under qemu TCG, 2 vCPU", sh("uname -r")?.trim());
    println!("| operation | thinpool-csi p50 | thinpool-csi p99 | LVM p50 | LVM p99 | LVM / thinpool-csi (p50) |");
    println!("|---|---|---|---|---|---|");
    for r in &mut rows {
        let (o50, o99) = (percentile(&mut r.ours, 0.5), percentile(&mut r.ours, 0.99));
        let (l50, l99) = (percentile(&mut r.lvm, 0.5), percentile(&mut r.lvm, 0.99));
        let ratio = l50.as_secs_f64() / o50.as_secs_f64().max(1e-9);
        println!("| {} | {} | {} | {} | {} | {ratio:.0}x |", r.op, ms(o50), ms(o99), ms(l50), ms(l99));
    }
    println!("\nengine process peak RSS: {} MiB", peak_rss_kib() / 1024);
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os("THINPOOL_E2E_IN_VM").is_none() {
        println!("bench: skipped: needs real device-mapper; run `cargo run -p thinpool-e2e -- bench`");
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().collect();
    let ops = args
        .iter()
        .position(|a| a == "--ops")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    match run(ops) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
