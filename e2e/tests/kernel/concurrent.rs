//! Many clients at once on the real plugin: 50 clients, each on its own connection, issue
//! creates, snapshots, restores, deletes and expansions over a few shared names, so that they
//! collide all the time. No call may hang, every answer must be one the call documents (or
//! `ABORTED` for a name already in flight), and afterwards, with the plugin stopped, `pool check`
//! must be clean and the records must hold exactly what the clients were told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thinpool_csi::csi::fuzzing::Call;
use thinpool_csi::csi::proto::{self, volume_content_source as vcs};
use thinpool_csi::store::Kind;
use tonic::Code;

use crate::csi::{block_cap, create, id, rt, Plugin};
use crate::fixture::*;

const CLIENTS: u64 = 50;
const OPS_PER_CLIENT: usize = 8;
const VOLUMES: u64 = 8;
const SNAPSHOTS: u64 = 4;
/// Longer than any call may take on this pool, even under software emulation: past it, a hang.
const CALL_LIMIT: Duration = Duration::from_secs(120);
const MIB_I: i64 = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Create { name: String, bytes: i64 },
    Restore { name: String, snapshot: String, bytes: i64 },
    Snapshot { name: String, source: String },
    DeleteVolume { name: String },
    DeleteSnapshot { name: String },
    Expand { name: String, bytes: i64 },
}

impl Op {
    fn call(&self) -> Call {
        match self {
            Op::Create { .. } | Op::Restore { .. } => Call::CreateVolume,
            Op::Snapshot { .. } => Call::CreateSnapshot,
            Op::DeleteVolume { .. } => Call::DeleteVolume,
            Op::DeleteSnapshot { .. } => Call::DeleteSnapshot,
            Op::Expand { .. } => Call::NodeExpandVolume,
        }
    }

    /// What an acknowledged call says of one name: (its kind, the name, present afterwards).
    fn presence(&self) -> Option<(Kind, &str, bool)> {
        match self {
            Op::Create { name, .. } | Op::Restore { name, .. } => Some((Kind::Volume, name, true)),
            Op::DeleteVolume { name } => Some((Kind::Volume, name, false)),
            Op::Snapshot { name, .. } => Some((Kind::Snapshot, name, true)),
            Op::DeleteSnapshot { name } => Some((Kind::Snapshot, name, false)),
            Op::Expand { .. } => None,
        }
    }

    fn random(rng: &mut StdRng) -> Op {
        let v = format!("v{}", rng.random_range(0..VOLUMES));
        let s = format!("s{}", rng.random_range(0..SNAPSHOTS));
        match rng.random_range(0..10) {
            0..=2 => Op::Create { name: v, bytes: [64, 96][rng.random_range(0..2)] * MIB_I },
            3 => Op::Restore { name: v, snapshot: s, bytes: 256 * MIB_I },
            4..=5 => Op::Snapshot { name: s, source: v },
            6 => Op::DeleteVolume { name: v },
            7 => Op::DeleteSnapshot { name: s },
            _ => Op::Expand { name: v, bytes: [128, 192][rng.random_range(0..2)] * MIB_I },
        }
    }
}

/// One answered call: what it was, its code, when it started and ended.
struct Answer {
    op: Op,
    code: Code,
    start: Instant,
    end: Instant,
}

async fn send(p: &Plugin, clients: &mut crate::csi::Clients, op: &Op) -> Code {
    let (_, ctl, node) = clients;
    let result = match op.clone() {
        Op::Create { name, bytes } => ctl.create_volume(create(&name, bytes, block_cap(), None)).await.map(|_| ()),
        Op::Restore { name, snapshot, bytes } => {
            let source = vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: id(&snapshot) });
            ctl.create_volume(create(&name, bytes, block_cap(), Some(source))).await.map(|_| ())
        }
        Op::Snapshot { name, source } => ctl
            .create_snapshot(proto::CreateSnapshotRequest { source_volume_id: id(&source), name, ..Default::default() })
            .await
            .map(|_| ()),
        Op::DeleteVolume { name } => ctl
            .delete_volume(proto::DeleteVolumeRequest { volume_id: id(&name), ..Default::default() })
            .await
            .map(|_| ()),
        Op::DeleteSnapshot { name } => ctl
            .delete_snapshot(proto::DeleteSnapshotRequest { snapshot_id: id(&name), ..Default::default() })
            .await
            .map(|_| ()),
        Op::Expand { name, bytes } => node
            .node_expand_volume(proto::NodeExpandVolumeRequest {
                volume_id: id(&name),
                // Not staged: the thin device grows, no filesystem is touched.
                volume_path: p.staging(&name),
                capacity_range: Some(proto::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// What a name must look like at the end, from the acknowledged (OK) calls on it: the effect of
/// the last one to finish; when the last two overlapped in time, either order is possible.
fn expected_presence(acks: &[(&Answer, bool)]) -> BTreeSet<bool> {
    let mut sorted: Vec<&(&Answer, bool)> = acks.iter().collect();
    sorted.sort_by_key(|(a, _)| a.end);
    match sorted.as_slice() {
        [] => BTreeSet::from([false]),
        [.., (last, present)] => {
            let mut out = BTreeSet::from([*present]);
            // Any acknowledged call still running when the last one started may have been
            // applied after it.
            for (a, p) in sorted.iter().rev().skip(1) {
                if a.end > last.start {
                    out.insert(*p);
                }
            }
            out
        }
    }
}

/// Whether `name` of `kind` being `present` at the end is what the acknowledged calls allow.
fn check_presence(ok: &[&Answer], kind: Kind, name: &str, present: bool) -> Result {
    let acks: Vec<(&Answer, bool)> = ok
        .iter()
        .filter_map(|a| match a.op.presence() {
            Some((k, n, p)) if k == kind && n == name => Some((*a, p)),
            _ => None,
        })
        .collect();
    ensure(
        expected_presence(&acks).contains(&present),
        format!("{kind:?} {name}: present = {present}, but the acknowledged calls on it say otherwise"),
    )
}

pub fn fifty_concurrent_clients() -> Result {
    let seed: u64 = match std::env::var("THINPOOL_E2E_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
    };
    println!("  seed {seed} (replay: THINPOOL_E2E_SEED={seed})");
    let mut p = Plugin::start("concurrent")?;
    let started = Instant::now();
    let answers: Vec<Answer> = rt()?.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let mut clients = p.clients().await?;
            let p = &p;
            tasks.push(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (c.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                let mut out = Vec::new();
                for _ in 0..OPS_PER_CLIENT {
                    let op = Op::random(&mut rng);
                    let start = Instant::now();
                    let code = tokio::time::timeout(CALL_LIMIT, send(p, &mut clients, &op))
                        .await
                        .map_err(|_| format!("client {c}: {op:?} hung (over {CALL_LIMIT:?})"))?;
                    out.push(Answer { op, code, start, end: Instant::now() });
                }
                Ok::<_, String>(out)
            });
        }
        let mut all = Vec::new();
        // Each client's calls run one after another; the 50 clients run at once.
        for r in futures::future::join_all(tasks).await {
            all.extend(r?);
        }
        Ok::<_, Box<dyn std::error::Error>>(all)
    })?;
    let took = started.elapsed();

    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        *by_code.entry(format!("{:?} {:?}", a.op.call(), a.code)).or_default() += 1;
        let allowed = a.code == Code::Ok || a.code == Code::Aborted || a.op.call().allowed().contains(&a.code);
        ensure(allowed, format!("{:?} answered {:?}, which it does not document", a.op, a.code))?;
    }
    let slowest = answers.iter().map(|a| a.end - a.start).max().unwrap_or_default();
    println!(
        "  {} calls from {CLIENTS} clients in {:.1} s ({:.1} per second, slowest {:.2} s)",
        answers.len(),
        took.as_secs_f64(),
        answers.len() as f64 / took.as_secs_f64(),
        slowest.as_secs_f64()
    );
    for (k, n) in &by_code {
        println!("    {k}: {n}");
    }

    // The records against what the clients were told, with the plugin stopped.
    p.stop()?;
    let (engine, _) = thinpool_csi::open::open_engine(&p.config()?)?;
    let check = engine.check()?;
    ensure(check.is_clean(), format!("`pool check` after the clients: {check:?}"))?;
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.code == Code::Ok).collect();
    let volumes: BTreeMap<String, u64> =
        engine.list(Kind::Volume)?.into_iter().map(|r| (r.name.as_str().to_owned(), r.size_bytes)).collect();
    let snapshots: BTreeSet<String> =
        engine.list(Kind::Snapshot)?.into_iter().map(|r| r.name.as_str().to_owned()).collect();
    for v in (0..VOLUMES).map(|i| format!("v{i}")) {
        check_presence(&ok, Kind::Volume, &v, volumes.contains_key(&v))?;
        if let Some(size) = volumes.get(&v) {
            // Its size is one some client was told: a create's, a restore's or an expansion's.
            let told: BTreeSet<u64> = ok
                .iter()
                .filter_map(|a| match &a.op {
                    Op::Create { name, bytes } | Op::Restore { name, bytes, .. } | Op::Expand { name, bytes }
                        if *name == v =>
                    {
                        Some(*bytes as u64)
                    }
                    _ => None,
                })
                .collect();
            ensure(told.contains(size), format!("volume {v} is {size} bytes; the clients were told {told:?}"))?;
        }
    }
    for s in (0..SNAPSHOTS).map(|i| format!("s{i}")) {
        check_presence(&ok, Kind::Snapshot, &s, snapshots.contains(&s))?;
    }
    println!(
        "  afterwards: pool check clean; {} volumes and {} snapshots, each as the clients were told",
        volumes.len(),
        snapshots.len()
    );
    Ok(())
}
