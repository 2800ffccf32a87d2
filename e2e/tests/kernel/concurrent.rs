//! Many clients at once on the real plugin: 50 clients, each on its own connection, issue
//! creates, snapshots, restores, deletes and expansions over a few shared names, so that they
//! collide all the time. No call may hang, every answer must be one the call documents (or
//! `ABORTED` for a name already in flight), and afterwards, with the plugin stopped, `pool check`
//! must be clean and the records must hold exactly what the clients were told.
//!
//! "What the clients were told", per volume or snapshot name: its final state (present or not,
//! size, requested size, source) is what the acknowledged (OK) calls on it leave, applied one at a
//! time in their order of acknowledgement, with one allowance below. Each call takes two numbers
//! from one counter: when it is sent and when its answer arrives. The driver applies calls one at a time (the engine's lock), but two
//! calls in flight together may be applied in either order, and the answer of the first applied
//! may arrive last: the driver's per-name guard (`ABORTED` for a name in flight) does not help, it
//! is released before the answer is sent, and it keys CreateVolume and CreateSnapshot by name but
//! DeleteVolume, NodeExpandVolume and DeleteSnapshot by id (`v1` and `v1@vm-node`), so a create and
//! an expansion or delete of one volume may even run at once. So the rule: a call acknowledged
//! before another was sent was applied before it; calls that overlapped may be applied in either
//! order. The final state must be one that some such order gives, with every acknowledged call
//! possible where it lands (an expansion of a volume that is not there was not acknowledged). When
//! no two acknowledged calls on a name overlapped, that is exactly the last acknowledged one's
//! effect. Calls that failed changed nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thinpool_csi::csi::fuzzing::Call;
use thinpool_csi::csi::proto::{self, volume_content_source as vcs};
use thinpool_csi::store::{Kind, Record, Source};
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

    /// The name the call acts on, and its kind.
    fn target(&self) -> (Kind, &str) {
        match self {
            Op::Create { name, .. }
            | Op::Restore { name, .. }
            | Op::Expand { name, .. }
            | Op::DeleteVolume { name } => (Kind::Volume, name),
            Op::Snapshot { name, .. } | Op::DeleteSnapshot { name } => (Kind::Snapshot, name),
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

/// One answered call: what it was, its code, when it started and ended; `sent` and `acked` come
/// from one counter ([`CLOCK`]): a call acknowledged before another was sent has a smaller
/// `acked` than the other's `sent`.
struct Answer {
    op: Op,
    code: Code,
    start: Instant,
    end: Instant,
    sent: u64,
    acked: u64,
}

/// The order in which calls were sent and answers arrived, across all clients.
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// A name's state as the records hold it: absent, or a volume's (size, requested size, source)
/// or a snapshot's (source volume).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct State {
    size: u64,
    requested: u64,
    source: Option<String>,
}

impl State {
    fn of(r: &Record) -> Self {
        let source = r.source.as_ref().map(|s| match s {
            Source::Snapshot(n) => format!("snapshot {}", n.as_str()),
            Source::Volume(n) => format!("volume {}", n.as_str()),
        });
        // A snapshot's size is its source's at the time: not modelled here.
        let (size, requested) = if r.kind == Kind::Volume { (r.size_bytes, r.requested_bytes) } else { (0, 0) };
        State { size, requested, source }
    }
}

/// The effect of an acknowledged call on its name's state `s` (`None`: absent), as the driver
/// applies it; `Err` when the driver could not have acknowledged it in that state. A create or
/// restore makes a volume of the size asked (restores ask 256 MiB, more than any snapshot), or,
/// when the volume is there, answers OK only for the same size and source and changes nothing.
/// An expansion grows (never shrinks) a volume that is there; a delete removes.
fn step(s: &Option<State>, op: &Op) -> std::result::Result<Option<State>, ()> {
    let made = |bytes: &i64, source: Option<String>| {
        let want = State { size: *bytes as u64, requested: *bytes as u64, source };
        match s {
            None => Ok(Some(want)),
            Some(v) if v.requested == want.requested && v.source == want.source => Ok(s.clone()),
            Some(_) => Err(()),
        }
    };
    match op {
        Op::Create { bytes, .. } => made(bytes, None),
        Op::Restore { snapshot, bytes, .. } => made(bytes, Some(format!("snapshot {snapshot}"))),
        Op::Expand { bytes, .. } => match s {
            Some(v) => Ok(Some(State { size: v.size.max(*bytes as u64), ..v.clone() })),
            None => Err(()),
        },
        Op::Snapshot { source, .. } => {
            let want = State { size: 0, requested: 0, source: Some(format!("volume {source}")) };
            match s {
                Some(v) if *v != want => Err(()),
                _ => Ok(Some(want)),
            }
        }
        Op::DeleteVolume { .. } | Op::DeleteSnapshot { .. } => Ok(None),
    }
}

/// Linearizations explored per name before giving up (far more than 50 clients on 8 names make).
const MAX_EXPLORED: usize = 2_000_000;

/// Every final state the acknowledged calls on one name can leave: the calls applied one at a
/// time, each after every call acknowledged before it was sent, each possible where it lands.
/// With no two calls overlapping, that is the one state the ack order gives.
fn final_states(acks: &[&Answer]) -> std::result::Result<BTreeSet<Option<State>>, String> {
    let n = acks.len();
    // The calls that must come before each: acknowledged before it was sent.
    let after: Vec<Vec<usize>> = acks.iter().map(|a| (0..n).filter(|&j| acks[j].acked < a.sent).collect()).collect();
    let mut finals = BTreeSet::new();
    let mut seen: BTreeSet<(Vec<bool>, Option<State>)> = BTreeSet::new();
    let mut stack = vec![(vec![false; n], None::<State>)];
    while let Some((done, state)) = stack.pop() {
        if seen.contains(&(done.clone(), state.clone())) {
            continue;
        }
        ensure_explorable(seen.len())?;
        seen.insert((done.clone(), state.clone()));
        if done.iter().all(|d| *d) {
            finals.insert(state);
            continue;
        }
        for i in (0..n).filter(|&i| !done[i] && after[i].iter().all(|&j| done[j])) {
            if let Ok(next) = step(&state, &acks[i].op) {
                let mut d = done.clone();
                d[i] = true;
                stack.push((d, next));
            }
        }
    }
    Ok(finals)
}

fn ensure_explorable(explored: usize) -> std::result::Result<(), String> {
    if explored >= MAX_EXPLORED {
        return Err(format!("over {MAX_EXPLORED} orders of the acknowledged calls to explore"));
    }
    Ok(())
}

/// Whether `name` of `kind` ending as `now` is what the acknowledged calls on it allow.
fn check_name(ok: &[&Answer], kind: Kind, name: &str, now: Option<State>) -> Result {
    let mut acks: Vec<&Answer> = ok.iter().copied().filter(|a| a.op.target() == (kind, name)).collect();
    acks.sort_by_key(|a| a.acked);
    let finals = final_states(&acks).map_err(|e| format!("{kind:?} {name}: {e}"))?;
    if finals.contains(&now) {
        return Ok(());
    }
    let t0 = acks.first().map(|a| a.start);
    let calls: Vec<String> = acks
        .iter()
        .map(|a| {
            let at = |t: Instant| t0.map_or(0.0, |t0| t.duration_since(t0).as_secs_f64());
            format!("\n    sent #{} acked #{} ({:.2}..{:.2} s): {:?}", a.sent, a.acked, at(a.start), at(a.end), a.op)
        })
        .collect();
    Err(format!(
        "{kind:?} {name} ends as {now:?}; the acknowledged calls on it, in ack order, allow only {finals:?}:{}",
        calls.concat()
    )
    .into())
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
                    let sent = CLOCK.fetch_add(1, Ordering::SeqCst);
                    let code = tokio::time::timeout(CALL_LIMIT, send(p, &mut clients, &op))
                        .await
                        .map_err(|_| format!("client {c}: {op:?} hung (over {CALL_LIMIT:?})"))?;
                    let acked = CLOCK.fetch_add(1, Ordering::SeqCst);
                    out.push(Answer { op, code, start, end: Instant::now(), sent, acked });
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
    let volumes: BTreeMap<String, State> =
        engine.list(Kind::Volume)?.iter().map(|r| (r.name.as_str().to_owned(), State::of(r))).collect();
    let snapshots: BTreeMap<String, State> =
        engine.list(Kind::Snapshot)?.iter().map(|r| (r.name.as_str().to_owned(), State::of(r))).collect();
    for v in (0..VOLUMES).map(|i| format!("v{i}")) {
        check_name(&ok, Kind::Volume, &v, volumes.get(&v).cloned())?;
    }
    for s in (0..SNAPSHOTS).map(|i| format!("s{i}")) {
        check_name(&ok, Kind::Snapshot, &s, snapshots.get(&s).cloned())?;
    }
    let overlapping = ok
        .iter()
        .filter(|a| {
            ok.iter()
                .any(|b| a.op.target() == b.op.target() && b.sent < a.acked && a.sent < b.acked && b.acked != a.acked)
        })
        .count();
    println!("  {} acknowledged calls, {overlapping} of them overlapping another on the same name", ok.len());
    println!(
        "  afterwards: pool check clean; {} volumes and {} snapshots, each (size, source) as the acknowledged calls leave it",
        volumes.len(),
        snapshots.len()
    );
    Ok(())
}
