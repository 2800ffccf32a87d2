//! The operator CLI, usable on a node without Kubernetes: `pool status|check|setup`,
//! `volumes list|create|delete|expand|snapshot|activate|deactivate`, `snapshots list|delete`.
//! Tables for people, `--output json` for scripts. A command is the same code whether this
//! process opens the pool ([`Local`]) or the running node plugin runs it on its own engine
//! ([`remote`]: the plugin holds the records while it runs, so a command on its node goes to it).

pub mod remote;
mod table;

use std::fmt::Write as _;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::PoolArgs;
use crate::dm::{lvm, ThinPool};
use crate::engine::{Engine, EngineError, PoolReport};
use crate::store::{Kind, Record, Source};
use crate::units::{human_bytes, parse_size};
use table::Table;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

const POOL_FLAGS_HELP: &str =
    "Each of these commands takes the pool flags (--state-dir, --pool loop|direct-lvm|device, \
--lvm-pool VG/LV, --device, --pool-name, --loop-dir, --loop-data-size, --overprovision-ratio, --data-fill-limit, \
--metadata-fill-limit, ...; also as THINPOOL_CSI_* environment variables) and --output json: see \
`thinpool-csi pool status --help`. While the node plugin runs, it holds the records: the command then \
runs in the plugin, on its own pool, reached at $CSI_ENDPOINT (default unix:///csi/csi.sock, as in \
its container).";

/// The operator commands.
#[derive(Subcommand, Debug)]
pub enum Operator {
    /// The node's thin pool.
    #[command(subcommand, after_help = POOL_FLAGS_HELP)]
    Pool(PoolCommand),
    /// Volumes in the pool.
    #[command(subcommand, after_help = POOL_FLAGS_HELP)]
    Volumes(VolumesCommand),
    /// Snapshots in the pool.
    #[command(subcommand, after_help = POOL_FLAGS_HELP)]
    Snapshots(SnapshotsCommand),
}

impl Operator {
    /// Whether the command may change the pool (the plugin then refreshes its ThinPool).
    pub fn changes_pool(&self) -> bool {
        !matches!(
            self,
            Operator::Pool(PoolCommand::Status(_) | PoolCommand::Check(_))
                | Operator::Volumes(VolumesCommand::List(_))
                | Operator::Snapshots(SnapshotsCommand::List(_))
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Show the pool's fill, mode, provisioning and capacity.
    Status(PoolArgs),
    /// Compare the pool's thin devices and transaction id with the node's records.
    Check(PoolArgs),
    /// Build a direct-lvm thin pool on an empty block device (data 95%, metadata 1%, chunk 512K).
    Setup(SetupArgs),
}

#[derive(Args, Debug)]
pub struct SetupArgs {
    /// The empty block device to use, e.g. /dev/sdb.
    #[arg(long)]
    pub device: String,
    #[arg(long, default_value = "thinpool-csi")]
    pub vg: String,
    #[arg(long, default_value = "thinpool")]
    pub lv: String,
    /// Wipe the device even if it holds a filesystem, partition table or LVM signature.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum VolumesCommand {
    /// List volumes.
    List(PoolArgs),
    /// Create a volume, empty or from a snapshot or volume.
    Create {
        /// Name of the new volume: letters, digits, '-', '_', '.', ':'; at most 128 bytes.
        name: String,
        /// Size, e.g. 1Gi, 512Mi, 10G.
        #[arg(long)]
        size: String,
        /// Restore from this snapshot.
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        /// Clone this volume.
        #[arg(long)]
        from_volume: Option<String>,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Delete a volume (its snapshots stay).
    Delete {
        /// The volume to delete.
        name: String,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Grow a volume's thin device.
    Expand {
        /// The volume to grow.
        name: String,
        /// Its new size, e.g. 2Gi (volumes never shrink).
        #[arg(long)]
        size: String,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Snapshot a volume.
    Snapshot {
        /// Name of the new snapshot.
        name: String,
        /// The volume to snapshot.
        #[arg(long)]
        volume: String,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Activate a volume's (or, with --snapshot, a snapshot's) device and print its path.
    Activate {
        /// The volume (or snapshot) to activate.
        name: String,
        /// NAME is a snapshot.
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Deactivate a volume's or snapshot's device.
    Deactivate {
        /// The volume (or snapshot) to deactivate.
        name: String,
        /// NAME is a snapshot.
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        pool: PoolArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCommand {
    /// List snapshots.
    List(PoolArgs),
    /// Delete a snapshot.
    Delete {
        /// The snapshot to delete.
        name: String,
        #[command(flatten)]
        pool: PoolArgs,
    },
}

/// Errors a CLI command can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Dm(#[from] crate::dm::DmError),
    #[error(transparent)]
    Size(#[from] crate::units::SizeParseError),
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the pool and the records disagree (see above)")]
    CheckFailed,
    #[error(
        "no records in {0}: thinpool-csi has not managed a pool with this state directory yet \
         (check --state-dir and the pool flags); nothing was created"
    )]
    NoState(std::path::PathBuf),
    #[error("{0}")]
    Refused(String),
}

impl CliError {
    /// The state store another process holds (the node plugin, while it runs).
    pub fn locked_store(&self) -> Option<&std::path::Path> {
        match self {
            CliError::Engine(EngineError::Store(crate::store::StoreError::Locked { path })) => Some(path),
            _ => None,
        }
    }
}

/// What a command may do to the node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only looks: on a node without records it creates nothing (no state directory, no loop
    /// files, no adoption) and says so.
    Read,
    /// Changes the pool: opens or creates it, as the node plugin does.
    Write,
}

/// Where a command finds the pool's engine.
pub trait Open {
    type Pool: ThinPool;
    fn engine(&self, args: &PoolArgs, access: Access) -> Result<Arc<Engine<Self::Pool>>, CliError>;
    /// Whether `pool setup` (which builds a pool, never opens one) may run here.
    fn may_set_up(&self) -> bool;
}

/// This process opens the pool and the records itself (no plugin running on them).
pub struct Local;

impl Open for Local {
    type Pool = crate::dm::kernel::KernelPool;

    fn engine(&self, args: &PoolArgs, access: Access) -> Result<Arc<Engine<Self::Pool>>, CliError> {
        let cfg = args.validate()?;
        if access == Access::Read && !crate::store::Store::exists(&cfg.state_dir) {
            return Err(CliError::NoState(cfg.state_dir));
        }
        let (engine, _report) = crate::open::open_engine(&cfg)?;
        Ok(Arc::new(engine))
    }

    fn may_set_up(&self) -> bool {
        true
    }
}

fn print<T: Serialize>(
    format: OutputFormat,
    w: &mut String,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => {
            let _ = writeln!(w, "{}", serde_json::to_string_pretty(value)?);
        }
        OutputFormat::Table => w.push_str(&table()),
    }
    Ok(())
}

/// Runs one operator command on the engine `open` gives, its output appended to `w`.
pub fn run<O: Open>(cmd: Operator, out: OutputFormat, open: &O, w: &mut String) -> Result<(), CliError> {
    match cmd {
        Operator::Pool(c) => pool(c, out, open, w),
        Operator::Volumes(c) => volumes(c, out, open, w),
        Operator::Snapshots(c) => snapshots(c, out, open, w),
    }
}

fn created(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn records_table(records: &[Record]) -> String {
    let mut t = Table::new(&["NAME", "SIZE", "THIN-ID", "SOURCE", "CREATED"]);
    for r in records {
        t.row(record_row(r));
    }
    t.render()
}

fn record_row(r: &Record) -> Vec<String> {
    vec![
        r.name.to_string(),
        human_bytes(r.size_bytes),
        r.thin_id.to_string(),
        r.source.as_ref().map_or("-".to_owned(), |s| s.to_string()),
        created(r.created_unix),
    ]
}

/// Snapshots, with the group snapshot each was taken in (`-` for one taken alone).
fn snapshots_table(records: &[Record]) -> String {
    let mut t = Table::new(&["NAME", "SIZE", "THIN-ID", "SOURCE", "CREATED", "GROUP"]);
    for r in records {
        let mut row = record_row(r);
        row.push(r.group.as_ref().map_or("-".to_owned(), |g| g.to_string()));
        t.row(row);
    }
    t.render()
}

fn pool_table(r: &PoolReport) -> String {
    let c = &r.capacity;
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let rows: Vec<(&str, String)> = vec![
        ("pool", format!("{} ({})", r.info.dm_name, r.info.kind)),
        ("source", r.info.source.clone()),
        ("state", c.state.to_string()),
        ("transaction id", c.transaction_id.map_or("-".to_owned(), |t| t.to_string())),
        ("chunk size", human_bytes(r.info.block_bytes())),
        (
            "data",
            format!(
                "{} / {} ({:.1}%)",
                human_bytes(c.data_used_bytes),
                human_bytes(c.data_total_bytes),
                c.data_fill_pct()
            ),
        ),
        (
            "metadata",
            format!(
                "{} / {} ({:.1}%)",
                human_bytes(c.metadata_used_bytes),
                human_bytes(c.metadata_total_bytes),
                c.metadata_fill_pct()
            ),
        ),
        ("provisioned", format!("{} ({:.0}% of data)", human_bytes(c.provisioned_bytes), c.overprovision_pct())),
        ("allowed new", human_bytes(c.allowed_new_bytes)),
        ("volumes", r.volumes.to_string()),
        ("snapshots", r.snapshots.to_string()),
        ("deleting", r.deleting.to_string()),
        ("blocked because", c.refusal.as_ref().map_or("-".to_owned(), |x| x.to_string())),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_owned(), v]);
    }
    t.render()
}

fn pool<O: Open>(cmd: PoolCommand, out: OutputFormat, open: &O, w: &mut String) -> Result<(), CliError> {
    match cmd {
        PoolCommand::Status(args) => {
            let report = open.engine(&args, Access::Read)?.report()?;
            print(out, w, &report, || pool_table(&report))
        }
        PoolCommand::Check(args) => {
            let check = open.engine(&args, Access::Read)?.check()?;
            print(out, w, &check, || {
                format!(
                    "pool transaction id: {}\nrecords' transaction id: {}\norphan thin ids (in the pool, no record): {:?}\nmissing thin ids (recorded, not in the pool): {:?}\nopen intents: {}\ngroup snapshots half made or half deleted: {:?}\nverdict: {}\n",
                    check.pool_transaction_id,
                    check.store_transaction_id.map_or("none".into(), |t| t.to_string()),
                    check.orphan_thin_ids.iter().map(|i| i.get()).collect::<Vec<_>>(),
                    check.missing_thin_ids.iter().map(|i| i.get()).collect::<Vec<_>>(),
                    check.open_intents,
                    check.inconsistent_groups,
                    if check.is_clean() { "consistent" } else { "INCONSISTENT" }
                )
            })?;
            if check.is_clean() {
                Ok(())
            } else {
                Err(CliError::CheckFailed)
            }
        }
        PoolCommand::Setup(_) if !open.may_set_up() => {
            Err(CliError::Refused("pool setup builds a pool on the node itself; it never runs in the plugin".into()))
        }
        PoolCommand::Setup(a) => {
            let report = lvm::setup(&a.device, &a.vg, &a.lv, a.force)?;
            print(out, w, &report, || {
                format!(
                    "built thin pool {vg}/{lv} on {dev}: data 95% of the VG, metadata {meta}, chunk {chunk}, zeroing on\n\
                     use it with: thinpool-csi --pool direct-lvm --lvm-pool {vg}/{lv} ...\n",
                    vg = report.vg,
                    lv = report.lv,
                    dev = report.device,
                    meta = human_bytes(report.plan.meta_bytes),
                    chunk = human_bytes(report.plan.chunk_bytes)
                )
            })
        }
    }
}

fn volumes<O: Open>(cmd: VolumesCommand, out: OutputFormat, open: &O, w: &mut String) -> Result<(), CliError> {
    match cmd {
        VolumesCommand::List(args) => {
            let list = open.engine(&args, Access::Read)?.list(Kind::Volume)?;
            print(out, w, &list, || records_table(&list))
        }
        VolumesCommand::Create { name, size, from_snapshot, from_volume, pool } => {
            let size = parse_size(&size)?;
            let source = match (from_snapshot, from_volume) {
                (Some(s), _) => Some(Source::Snapshot(crate::names::Name::new(&s).map_err(EngineError::from)?)),
                (None, Some(v)) => Some(Source::Volume(crate::names::Name::new(&v).map_err(EngineError::from)?)),
                (None, None) => None,
            };
            let made = open.engine(&pool, Access::Write)?.create_volume(&name, size, source)?;
            print(out, w, &made, || {
                let verb = if matches!(made, crate::engine::Made::Created(_)) { "created" } else { "exists" };
                format!("volume {name} {verb}\n{}", records_table(std::slice::from_ref(made.record())))
            })
        }
        VolumesCommand::Delete { name, pool } => {
            let outcome = open.engine(&pool, Access::Write)?.delete(Kind::Volume, &name)?;
            print(out, w, &outcome, || format!("volume {name}: {outcome:?}\n").to_lowercase())
        }
        VolumesCommand::Expand { name, size, pool } => {
            let size = parse_size(&size)?;
            let r = open.engine(&pool, Access::Write)?.expand_volume(&name, size)?;
            print(out, w, &r, || format!("volume {name} is now {}\n", human_bytes(r.size_bytes)))
        }
        VolumesCommand::Snapshot { name, volume, pool } => {
            let made = open.engine(&pool, Access::Write)?.create_snapshot(&name, &volume)?;
            print(out, w, &made, || {
                let verb = if matches!(made, crate::engine::Made::Created(_)) { "created" } else { "exists" };
                format!("snapshot {name} of {volume} {verb}\n{}", records_table(std::slice::from_ref(made.record())))
            })
        }
        VolumesCommand::Activate { name, snapshot, pool } => {
            let kind = if snapshot { Kind::Snapshot } else { Kind::Volume };
            let path = open.engine(&pool, Access::Write)?.activate(kind, &name)?;
            print(out, w, &path, || format!("{}\n", path.display()))
        }
        VolumesCommand::Deactivate { name, snapshot, pool } => {
            let kind = if snapshot { Kind::Snapshot } else { Kind::Volume };
            open.engine(&pool, Access::Write)?.deactivate(kind, &name)?;
            print(out, w, &"deactivated", || format!("{kind} {name} deactivated\n"))
        }
    }
}

fn snapshots<O: Open>(cmd: SnapshotsCommand, out: OutputFormat, open: &O, w: &mut String) -> Result<(), CliError> {
    match cmd {
        SnapshotsCommand::List(args) => {
            let list = open.engine(&args, Access::Read)?.list(Kind::Snapshot)?;
            print(out, w, &list, || snapshots_table(&list))
        }
        SnapshotsCommand::Delete { name, pool } => {
            let outcome = open.engine(&pool, Access::Write)?.delete(Kind::Snapshot, &name)?;
            print(out, w, &outcome, || format!("snapshot {name}: {outcome:?}\n").to_lowercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        pool: PoolArgs,
    }

    fn args(flags: &[&str]) -> PoolArgs {
        Flags::try_parse_from(std::iter::once("test").chain(flags.iter().copied())).unwrap().pool
    }

    /// A look at a node that has no records creates nothing: no state directory, no loop files.
    #[test]
    fn read_only_commands_create_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let loops = dir.path().join("loop");
        let (s, l) = (state.to_str().unwrap(), loops.to_str().unwrap());
        for kind in [["--pool", "loop", "--loop-dir", l], ["--pool", "device", "--device", "/dev/does-not-exist"]] {
            let flags = [&["--state-dir", s][..], &kind[..]].concat();
            let mut w = String::new();
            let err = pool(PoolCommand::Status(args(&flags)), OutputFormat::Table, &Local, &mut w).unwrap_err();
            assert!(matches!(err, CliError::NoState(_)), "{err}");
            assert!(err.to_string().contains("nothing was created"), "{err}");
            assert!(volumes(VolumesCommand::List(args(&flags)), OutputFormat::Json, &Local, &mut w).is_err());
            assert!(snapshots(SnapshotsCommand::List(args(&flags)), OutputFormat::Json, &Local, &mut w).is_err());
            assert!(pool(PoolCommand::Check(args(&flags)), OutputFormat::Json, &Local, &mut w).is_err());
            assert!(w.is_empty(), "{w}");
            assert!(!state.exists(), "{kind:?} created {}", state.display());
            assert!(!loops.exists(), "{kind:?} created {}", loops.display());
        }
    }

    #[test]
    fn the_snapshot_list_shows_each_snapshot_s_group() {
        let record = |name: &str, group: Option<&str>| Record {
            name: crate::names::Name::new(name).unwrap(),
            kind: Kind::Snapshot,
            thin_id: crate::units::ThinId::new(7).unwrap(),
            size_bytes: 1 << 30,
            requested_bytes: 1 << 30,
            source: Some(Source::Volume(crate::names::Name::new("db-data").unwrap())),
            created_unix: 0,
            group: group.map(|g| crate::names::Name::new(g).unwrap()),
        };
        let table = snapshots_table(&[record("g1:0", Some("g1")), record("alone", None)]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].trim_end().ends_with("GROUP"), "{table}");
        assert!(lines[1].starts_with("g1:0") && lines[1].trim_end().ends_with("g1"), "{table}");
        assert!(lines[2].starts_with("alone") && lines[2].trim_end().ends_with('-'), "{table}");
    }

    /// A command that would change the pool but cannot open it leaves no state behind either.
    #[test]
    fn a_pool_that_cannot_be_opened_leaves_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let flags = ["--state-dir", state.to_str().unwrap(), "--pool", "device", "--device", "/dev/does-not-exist"];
        let cmd = VolumesCommand::Delete { name: "v".into(), pool: args(&flags) };
        assert!(volumes(cmd, OutputFormat::Table, &Local, &mut String::new()).is_err());
        assert!(!state.exists());
    }
}
