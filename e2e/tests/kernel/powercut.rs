//! The guest's side of the power-cut suite (`thinpool-e2e powercut`): one boot of a guest whose
//! disks survive while its qemu process is killed at a random moment.
//!
//! Each boot first checks everything the previous boots were told (the ledger), then arms the cut
//! and runs a seeded workload until the host kills it. Two pools, both on persistent virtio disks:
//! `/dev/vda` is a `device` pool (direct-lvm built on the empty disk at the first boot, adopted
//! afterwards) driven through the engine; `/dev/vdb` holds an ext4 filesystem with a loop pool's
//! files and both state directories, driven through the CSI socket of a real `thinpool-csi node`.
//!
//! The ledger: before an operation the guest appends `begin SEQ POOL OP ARGS...`, after its success
//! `ok SEQ`, each line synced to the host (the run share) before going on. A check after a cut
//! resolves the one operation that may have been in flight (`resolved SEQ done|undone`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thinpool_csi::config::{NodeConfig, PoolSpec};
use thinpool_csi::csi::proto;
use thinpool_csi::dm::loopback::LoopSpec;
use thinpool_csi::engine::Limits;
use thinpool_csi::engine::{Engine, StartupReport};
use thinpool_csi::store::{Kind, Source};

use crate::csi::{create, mount_cap, unix_channel};
use crate::fixture::*;

pub const ENV: &str = "THINPOOL_E2E_POWERCUT";
/// Where the ext4 disk is mounted (the guest's root is read-only; /tmp is its own tmpfs).
const PERSIST: &str = "/tmp/persist";
const KUBELET: &str = "/tmp/kubelet";
const SOCKET: &str = "/tmp/powercut-csi.sock";
const NODE: &str = "vm-node";
/// At most this many volumes and snapshots per pool: the workload deletes more once there.
const MAX_OBJECTS: usize = 10;

/// One object a pool should hold, as the ledger says.
#[derive(Clone, Debug, PartialEq, Default)]
struct Object {
    size: u64,
    /// CSI volumes: the filesystem they are made for.
    fs: Option<String>,
    /// A filesystem was made on it (a staging operation was acknowledged).
    formatted: bool,
    /// The token last written into its filesystem.
    token: Option<String>,
    /// Its first format was cut short: its content is unknown, it is never staged again.
    unknown: bool,
}

/// What each pool holds, by (kind, name), after replaying the ledger.
#[derive(Default, Debug)]
struct Model {
    pools: BTreeMap<String, BTreeMap<Key, Object>>,
    /// The operation begun and never acknowledged nor resolved: the cut landed in it.
    in_flight: Option<(u64, Vec<String>)>,
    next_seq: u64,
}

/// A record's key: `vol` or `snap`, and its name.
type Key = (&'static str, String);
const VOL: &str = "vol";
const SNAP: &str = "snap";

/// `vol` or `snap` as the ledger writes it.
fn kind_word(s: &str) -> &'static str {
    if s == SNAP {
        SNAP
    } else {
        VOL
    }
}

fn kind_of(s: &str) -> Kind {
    if s == SNAP {
        Kind::Snapshot
    } else {
        Kind::Volume
    }
}

/// Operations that stage a CSI volume (format, mount, write or grow, unmount).
fn stages(op: &[String]) -> bool {
    op[0] == "csi" && matches!(op[1].as_str(), "fill" | "expand")
}

impl Model {
    fn object(&mut self, pool: &str, kind: &'static str, name: &str) -> Option<&mut Object> {
        self.pools.get_mut(pool)?.get_mut(&(kind, name.to_owned()))
    }

    /// Applies operation `op` (the words after `begin SEQ`) as having happened.
    fn apply(&mut self, op: &[String]) {
        let pool = self.pools.entry(op[0].clone()).or_default();
        let arg = |i: usize| op.get(i).cloned().unwrap_or_default();
        match op[1].as_str() {
            "create" => {
                let fs = op.get(4).cloned();
                pool.insert((VOL, arg(2)), Object { size: arg(3).parse().unwrap_or(0), fs, ..Object::default() });
            }
            "snap" => {
                if let Some(src) = pool.get(&(VOL, arg(3))).cloned() {
                    pool.insert((SNAP, arg(2)), src);
                }
            }
            "restore" => {
                if let Some(src) = pool.get(&(SNAP, arg(3))).cloned() {
                    pool.insert((VOL, arg(2)), src);
                }
            }
            "expand" => {
                if let Some(o) = pool.get_mut(&(VOL, arg(2))) {
                    o.size = arg(3).parse().unwrap_or(o.size);
                    o.formatted |= op[0] == "csi";
                }
            }
            "fill" => {
                if let Some(o) = pool.get_mut(&(VOL, arg(2))) {
                    o.token = Some(arg(3));
                    o.formatted = true;
                }
            }
            "delete" => {
                pool.remove(&(kind_word(&arg(2)), arg(3)));
            }
            _ => {}
        }
    }

    /// Replays a ledger: acknowledged operations happen, resolved ones as resolved.
    fn replay(text: &str) -> Self {
        let mut m = Model::default();
        let mut ops: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut open: Vec<u64> = Vec::new();
        for line in text.lines() {
            let w: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            let Some(seq) = w.get(1).and_then(|s| s.parse::<u64>().ok()) else { continue };
            m.next_seq = m.next_seq.max(seq + 1);
            let op = ops.get(&seq).cloned();
            match (w[0].as_str(), op) {
                ("begin", _) if w.len() > 3 => {
                    ops.insert(seq, w[2..].to_vec());
                    open.push(seq);
                }
                ("ok" | "done", Some(op)) => {
                    open.retain(|s| *s != seq);
                    m.apply(&op);
                }
                ("undone", Some(_)) => open.retain(|s| *s != seq),
                // What a cut staging operation left in the filesystem (`-`: no token file).
                ("content", Some(op)) => {
                    if let Some(o) = m.object(&op[0], VOL, &op[2]) {
                        o.token = w.get(2).filter(|t| *t != "-").cloned();
                        o.formatted = true;
                    }
                }
                ("unknown", Some(op)) => {
                    if let Some(o) = m.object(&op[0], VOL, &op[2]) {
                        o.unknown = true;
                    }
                }
                _ => {}
            }
        }
        m.in_flight = open.last().map(|s| (*s, ops[s].clone()));
        m
    }
}

/// This boot's ledger lines, each synced to the host before the guest goes on.
struct Ledger {
    file: std::fs::File,
}

impl Ledger {
    fn open(out: &Path) -> Result<Self> {
        Ok(Ledger { file: std::fs::OpenOptions::new().create(true).append(true).open(out.join("ledger"))? })
    }
    fn line(&mut self, text: &str) -> Result {
        writeln!(self.file, "{text}")?;
        self.file.sync_data()?;
        Ok(())
    }
}

fn lvm_config() -> NodeConfig {
    NodeConfig {
        state_dir: PathBuf::from(PERSIST).join("lvm-state"),
        pool: PoolSpec::Device { device: "/dev/vda".into(), vg: "powercut".into(), lv: "pool".into() },
        limits: Limits { overprovision_ratio: 10.0, data_fill_limit_pct: 95.0, meta_fill_limit_pct: 95.0 },
    }
}

/// The CSI plugin's pool, as its flags below describe it (opened here only to check it).
fn csi_config() -> NodeConfig {
    NodeConfig {
        state_dir: PathBuf::from(PERSIST).join("csi-state"),
        pool: PoolSpec::Loop(LoopSpec {
            dir: PathBuf::from(PERSIST).join("loop"),
            name: "powercut-loop".into(),
            data_bytes: 2 * GIB,
            meta_bytes: 16 * MIB,
            block_bytes: 64 << 10,
        }),
        limits: Limits { overprovision_ratio: 10.0, data_fill_limit_pct: 95.0, meta_fill_limit_pct: 95.0 },
    }
}

fn start_plugin() -> Result<Child> {
    let bin = std::env::var("THINPOOL_CSI_BIN").map_err(|_| "THINPOOL_CSI_BIN is not set")?;
    let _ = std::fs::remove_file(SOCKET);
    let log = std::fs::File::create("/tmp/powercut-plugin.log")?;
    let child = Command::new(bin)
        .args(["node", "--node-id", NODE, "--pool", "loop", "--pool-name", "powercut-loop"])
        .args(["--loop-data-size", "2Gi", "--loop-metadata-size", "16Mi", "--kubelet-dir", KUBELET])
        .arg("--loop-dir")
        .arg(Path::new(PERSIST).join("loop"))
        .arg("--state-dir")
        .arg(Path::new(PERSIST).join("csi-state"))
        .args(["--metrics-address", ""])
        .args(["--overprovision-ratio", "10", "--data-fill-limit", "95", "--metadata-fill-limit", "95"])
        .arg("--endpoint")
        .arg(format!("unix://{SOCKET}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(SOCKET).is_err() {
        ensure(start.elapsed() < Duration::from_secs(120), "the plugin did not open its socket")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn staging(name: &str) -> String {
    format!("{KUBELET}/plugins/kubernetes.io/csi/thinpool.csi.io/{name}/globalmount")
}

type Clients = (
    proto::controller_client::ControllerClient<tonic::transport::Channel>,
    proto::node_client::NodeClient<tonic::transport::Channel>,
);

async fn clients() -> Result<Clients> {
    let channel = unix_channel(SOCKET.into()).await?;
    Ok((proto::controller_client::ControllerClient::new(channel.clone()), proto::node_client::NodeClient::new(channel)))
}

fn vid(name: &str) -> String {
    format!("{name}@{NODE}")
}

/// Stages `name` with `fs`, then reads (`write: None`) or writes its token file.
async fn with_staged(c: &mut Clients, name: &str, fs: &str, write: Option<&str>) -> Result<Option<String>> {
    let path = staging(name);
    c.1.node_stage_volume(proto::NodeStageVolumeRequest {
        volume_id: vid(name),
        staging_target_path: path.clone(),
        volume_capability: Some(mount_cap(fs)),
        ..Default::default()
    })
    .await?;
    let file = format!("{path}/token");
    let read = match write {
        Some(token) => {
            let mut f = std::fs::File::create(&file)?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            None
        }
        None => std::fs::read_to_string(&file).ok(),
    };
    c.1.node_unstage_volume(proto::NodeUnstageVolumeRequest { volume_id: vid(name), staging_target_path: path })
        .await?;
    Ok(read)
}

/// First boot: a filesystem on the empty second disk. Every boot: that disk mounted at PERSIST.
fn prepare_disks() -> Result {
    lvm_env();
    sh("modprobe -d \"$THINPOOL_E2E_KROOT\" virtio_blk && for i in $(seq 50); do [ -b /dev/vdb ] && break; sleep 0.1; done")?;
    let fs = sh("blkid -o value -s TYPE /dev/vdb || true")?;
    if fs.trim().is_empty() {
        sh("mkfs.ext4 -q /dev/vdb")?;
        println!("powercut: first boot: ext4 made on /dev/vdb");
    }
    std::fs::create_dir_all(PERSIST)?;
    sh(&format!("mount /dev/vdb {PERSIST}"))?;
    std::fs::create_dir_all(KUBELET)?;
    Ok(())
}

/// The records of a pool, as (`vol`|`snap`, name) -> size.
fn records<P: thinpool_csi::dm::ThinPool>(e: &Engine<P>) -> Result<BTreeMap<Key, u64>> {
    let mut out = BTreeMap::new();
    for (kind, word) in [(Kind::Volume, VOL), (Kind::Snapshot, SNAP)] {
        for r in e.list(kind)? {
            out.insert((word, r.name.as_str().to_owned()), r.size_bytes);
        }
    }
    Ok(out)
}

/// Whether the in-flight operation happened, judged from what the pool holds now.
fn happened(op: &[String], now: &BTreeMap<Key, u64>) -> Result<bool> {
    let has = |k: &'static str, i: usize| now.contains_key(&(k, op[i].clone()));
    Ok(match op[1].as_str() {
        "create" | "restore" => has(VOL, 2),
        "snap" => has(SNAP, 2),
        "delete" => !has(kind_word(&op[2]), 3),
        "expand" => {
            let size = now.get(&(VOL, op[2].clone())).ok_or("the volume being expanded is gone")?;
            size.to_string() == op[3]
        }
        // A fill changes no record: its content is judged once the volume is staged.
        "fill" => false,
        other => return Err(format!("unknown operation {other}").into()),
    })
}

/// Checks one pool after a boot: start-up recovery left it consistent, and its records are what
/// the ledger says, with the one in-flight operation (when it was this pool's) done or undone.
fn check_pool<P: thinpool_csi::dm::ThinPool>(
    pool: &str,
    e: &Engine<P>,
    startup: StartupReport,
    model: &mut Model,
    ledger: &mut Ledger,
) -> Result {
    // The check start-up ran after recovery, under the same lock (run again only if it could not).
    let check = match startup.check {
        Some(check) => check,
        None => e.check()?,
    };
    ensure(check.is_clean(), format!("{pool}: `pool check` after recovery: {check:?}"))?;
    let now = records(e)?;
    if let Some((seq, op)) = model.in_flight.clone().filter(|(_, op)| op[0] == pool) {
        let done = happened(&op, &now)?;
        if done {
            model.apply(&op);
        }
        ledger.line(&format!("{} {seq}", if done { "done" } else { "undone" }))?;
        if !stages(&op) {
            model.in_flight = None;
        }
    }
    let want: BTreeMap<Key, u64> =
        model.pools.get(pool).map(|p| p.iter().map(|(k, o)| (k.clone(), o.size)).collect()).unwrap_or_default();
    ensure(
        now == want,
        format!("{pool}: the records are not what was acknowledged:\n  records: {now:?}\n  ledger:  {want:?}"),
    )
}

/// The guest's main: check, arm, run the workload until the power goes.
pub fn cycle_main() -> ExitCode {
    match cycle() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("powercut: FAILED: {e}");
            if let Ok(log) = std::fs::read_to_string("/tmp/powercut-plugin.log") {
                println!("plugin log:\n{log}");
            }
            ExitCode::FAILURE
        }
    }
}

fn cycle() -> Result {
    let out = PathBuf::from(std::env::var("THINPOOL_E2E_OUT")?);
    let history = std::fs::read_to_string(std::env::var("THINPOOL_POWERCUT_LEDGER")?).unwrap_or_default();
    let seed: u64 = std::env::var("THINPOOL_POWERCUT_SEED")?.parse()?;
    let verify_only = std::env::var(ENV)? == "verify";
    let mut model = Model::replay(&history);
    let mut ledger = Ledger::open(&out)?;
    prepare_disks()?;

    let t = Instant::now();
    // The two pools share nothing: open them (LVM activation or loop set-up, then recovery) side
    // by side, and check them in a fixed order, so the ledger reads the same on every replay.
    let (lvm, csi) = std::thread::scope(|s| {
        let lvm = s.spawn(|| thinpool_csi::open::open_engine(&lvm_config()));
        let csi = thinpool_csi::open::open_engine(&csi_config());
        (lvm.join(), csi)
    });
    let (lvm, lvm_startup) = lvm.map_err(|_| "opening the lvm pool panicked")??;
    check_pool("lvm", &lvm, lvm_startup, &mut model, &mut ledger)?;
    {
        let (csi, csi_startup) = csi?;
        check_pool("csi", &csi, csi_startup, &mut model, &mut ledger)?;
    }
    let mut plugin = start_plugin()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let result = rt.block_on(async {
        let mut c = clients().await?;
        // A staging operation cut short: the filesystem mounts and holds the old or the new token.
        if let Some((seq, op)) = model.in_flight.take() {
            let o = model.object("csi", VOL, &op[2]).cloned().ok_or("the staged volume is gone")?;
            let fs = op.get(4).cloned().unwrap_or_default();
            match with_staged(&mut c, &op[2], &fs, None).await {
                Ok(read) => {
                    let read = read.filter(|t| !t.is_empty());
                    // A fill may have left the old token, the new one or none (the file is
                    // rewritten); a grow leaves the token alone.
                    let allowed = if op[1] == "fill" {
                        vec![o.token.clone(), Some(op[3].clone()), None]
                    } else {
                        vec![o.token.clone()]
                    };
                    ensure(
                        allowed.contains(&read),
                        format!(
                            "csi volume {} ({fs}) holds {read:?} after a cut `{}` (was {:?})",
                            op[2],
                            op[1..].join(" "),
                            o.token
                        ),
                    )?;
                    ledger.line(&format!("content {seq} {}", read.as_deref().unwrap_or("-")))?;
                    if let Some(obj) = model.object("csi", VOL, &op[2]) {
                        obj.token = read;
                        obj.formatted = true;
                    }
                    println!("powercut: the {fs} filesystem cut in `{}` mounted", op[1..].join(" "));
                }
                Err(e) if !o.formatted => {
                    // Its first mkfs was cut: the device holds part of a filesystem.
                    ledger.line(&format!("unknown {seq}"))?;
                    if let Some(obj) = model.object("csi", VOL, &op[2]) {
                        obj.unknown = true;
                    }
                    println!("powercut: {} ({fs}) does not stage after its first format was cut: {e}", op[2]);
                }
                Err(e) => return Err(format!("csi volume {} ({fs}) no longer stages after a cut: {e}", op[2]).into()),
            }
        }
        // Every filesystem the ledger acknowledges reads back, at every boot: each CSI volume
        // formatted by an acknowledged operation holds the token last written (or no token file).
        let read_start = Instant::now();
        let formatted: Vec<(String, String, Option<String>)> = model
            .pools
            .get("csi")
            .into_iter()
            .flatten()
            .filter(|((k, _), o)| *k == VOL && o.formatted && !o.unknown)
            .filter_map(|((_, n), o)| Some((n.clone(), o.fs.clone()?, o.token.clone())))
            .collect();
        for (name, fs, token) in &formatted {
            let read = with_staged(&mut c, name, fs, None)
                .await
                .map_err(|e| format!("csi volume {name} ({fs}) does not stage to be read back: {e}"))?
                // An empty token file is what a cut fill may leave; the ledger has it as none.
                .filter(|t| !t.is_empty());
            ensure(read == *token, format!("csi volume {name} ({fs}) reads {read:?}, want {token:?}"))?;
        }
        println!(
            "powercut: checked in {:.1} s: both pools consistent, records as acknowledged, {} filesystems read back in {:.1} s",
            t.elapsed().as_secs_f64(),
            formatted.len(),
            read_start.elapsed().as_secs_f64()
        );
        if verify_only {
            return Ok(());
        }
        std::fs::write(out.join("armed"), "")?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            let seq = model.next_seq;
            let Some(op) = pick(&mut rng, &model, seq) else { continue };
            model.next_seq += 1;
            ledger.line(&format!("begin {seq} {}", op.join(" ")))?;
            run(&lvm, &mut c, &op).await.map_err(|e| format!("`{}` failed: {e}", op.join(" ")))?;
            ledger.line(&format!("ok {seq}"))?;
            model.apply(&op);
        }
        println!("powercut: the workload ran 90 s without a cut");
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    let _ = plugin.kill();
    let _ = plugin.wait();
    result
}

/// The next operation, chosen so that every kind happens on both pools and neither overflows.
fn pick(rng: &mut StdRng, model: &Model, seq: u64) -> Option<Vec<String>> {
    let pool = if rng.random_bool(0.5) { "lvm" } else { "csi" };
    let empty = BTreeMap::new();
    let objects = model.pools.get(pool).unwrap_or(&empty);
    let of = |k: &str| -> Vec<(String, Object)> {
        objects.iter().filter(|((kk, _), _)| *kk == k).map(|((_, n), o)| (n.clone(), o.clone())).collect()
    };
    let (vols, snaps) = (of(VOL), of(SNAP));
    let stageable: Vec<(String, Object)> = vols.iter().filter(|(_, o)| !o.unknown).cloned().collect();
    let one = |v: &[(String, Object)], rng: &mut StdRng| v[rng.random_range(0..v.len())].clone();
    let words = |w: &[&str]| Some(w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let name = format!("{}{seq}", if pool == "lvm" { "v" } else { "c" });
    let roll = rng.random_range(0..100);
    if objects.len() >= MAX_OBJECTS {
        return match roll {
            0..=39 if !snaps.is_empty() => words(&[pool, "delete", "snap", &one(&snaps, rng).0]),
            _ if !vols.is_empty() => words(&[pool, "delete", "vol", &one(&vols, rng).0]),
            _ => words(&[pool, "delete", "snap", &one(&snaps, rng).0]),
        };
    }
    match roll {
        0..=24 if pool == "csi" => {
            let (fs, size) = if rng.random_bool(0.3) { ("xfs", 320 * MIB) } else { ("ext4", 48 * MIB) };
            words(&[pool, "create", &name, &size.to_string(), fs])
        }
        0..=24 => words(&[pool, "create", &name, &(rng.random_range(1..=8u64) * 16 * MIB).to_string()]),
        25..=44 if pool == "csi" && !stageable.is_empty() => {
            let (v, o) = one(&stageable, rng);
            words(&[pool, "fill", &v, &format!("t{seq}"), o.fs.as_deref()?])
        }
        25..=54 if !vols.is_empty() => words(&[pool, "snap", &format!("s{seq}"), &one(&vols, rng).0]),
        55..=69 if pool == "csi" && !snaps.is_empty() => {
            let (snap, o) = one(&snaps, rng);
            words(&[pool, "restore", &name, &snap, o.fs.as_deref()?, &o.size.to_string()])
        }
        55..=69 if !snaps.is_empty() => words(&[pool, "restore", &name, &one(&snaps, rng).0]),
        70..=79 if pool == "lvm" && !vols.is_empty() => {
            let (v, o) = one(&vols, rng);
            words(&[pool, "expand", &v, &(o.size + 16 * MIB).to_string()])
        }
        70..=79 if !stageable.is_empty() => {
            let (v, o) = one(&stageable, rng);
            words(&[pool, "expand", &v, &(o.size + 16 * MIB).to_string(), o.fs.as_deref()?])
        }
        80..=89 if !snaps.is_empty() => words(&[pool, "delete", "snap", &one(&snaps, rng).0]),
        90..=99 if !vols.is_empty() => words(&[pool, "delete", "vol", &one(&vols, rng).0]),
        _ => None,
    }
}

/// Does one operation on its pool: the `lvm` pool through the engine, `csi` through the socket.
async fn run(lvm: &Engine<thinpool_csi::dm::kernel::KernelPool>, c: &mut Clients, op: &[String]) -> Result {
    let arg = |i: usize| op.get(i).cloned().unwrap_or_default();
    let size = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    if op[0] == "lvm" {
        match op[1].as_str() {
            "create" => drop(lvm.create_volume(&arg(2), size(3), None)?),
            "snap" => drop(lvm.create_snapshot(&arg(2), &arg(3))?),
            "restore" => {
                let snap = lvm.get(Kind::Snapshot, &arg(3))?.ok_or("restore: no such snapshot")?;
                drop(lvm.create_volume(&arg(2), snap.size_bytes, Some(Source::Snapshot(snap.name)))?)
            }
            "expand" => drop(lvm.expand_volume(&arg(2), size(3))?),
            "delete" => drop(lvm.delete(kind_of(&arg(2)), &arg(3))?),
            other => return Err(format!("unknown operation {other}").into()),
        }
        return Ok(());
    }
    match op[1].as_str() {
        "create" => drop(c.0.create_volume(create(&arg(2), size(3) as i64, mount_cap(&arg(4)), None)).await?),
        "snap" => drop(
            c.0.create_snapshot(proto::CreateSnapshotRequest {
                name: arg(2),
                source_volume_id: vid(&arg(3)),
                ..Default::default()
            })
            .await?,
        ),
        "restore" => {
            use proto::volume_content_source::{SnapshotSource, Type};
            let source = Type::Snapshot(SnapshotSource { snapshot_id: vid(&arg(3)) });
            // The claim asks for the snapshot's size (with none, the driver may pick a larger
            // default) and the filesystem the snapshot's volume was made with.
            drop(c.0.create_volume(create(&arg(2), size(5) as i64, mount_cap(&arg(4)), Some(source))).await?)
        }
        "fill" => drop(with_staged(c, &arg(2), &arg(4), Some(&arg(3))).await?),
        "expand" => {
            // As the kubelet grows a volume in use: staged, NodeExpandVolume, then unstaged.
            let path = staging(&arg(2));
            let fs = arg(4);
            c.1.node_stage_volume(proto::NodeStageVolumeRequest {
                volume_id: vid(&arg(2)),
                staging_target_path: path.clone(),
                volume_capability: Some(mount_cap(&fs)),
                ..Default::default()
            })
            .await?;
            c.1.node_expand_volume(proto::NodeExpandVolumeRequest {
                volume_id: vid(&arg(2)),
                volume_path: path.clone(),
                staging_target_path: path.clone(),
                capacity_range: Some(proto::CapacityRange { required_bytes: size(3) as i64, limit_bytes: 0 }),
                volume_capability: Some(mount_cap(&fs)),
                ..Default::default()
            })
            .await?;
            c.1.node_unstage_volume(proto::NodeUnstageVolumeRequest {
                volume_id: vid(&arg(2)),
                staging_target_path: path,
            })
            .await?;
        }
        "delete" if arg(2) == "snap" => drop(
            c.0.delete_snapshot(proto::DeleteSnapshotRequest { snapshot_id: vid(&arg(3)), ..Default::default() })
                .await?,
        ),
        "delete" => {
            drop(c.0.delete_volume(proto::DeleteVolumeRequest { volume_id: vid(&arg(3)), ..Default::default() }).await?)
        }
        other => return Err(format!("unknown operation {other}").into()),
    }
    Ok(())
}
