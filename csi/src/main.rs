//! The `thinpool-csi` binary: the node plugin (`node`) and the operator commands. Errors end
//! the process with a message that says what to fix, never a backtrace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use thinpool_csi::app::controller::{run_controller, ControllerArgs};
use thinpool_csi::app::node::{run_node, NodeArgs};
use thinpool_csi::cli::{self, OutputFormat, PoolCommand, SnapshotsCommand, VolumesCommand};

#[derive(Parser, Debug)]
#[command(name = "thinpool-csi", version, about = "Node-local thin-provisioned volumes on a device-mapper thin pool")]
struct Cli {
    /// Output format of the operator commands and of `--check-config`.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

const POOL_FLAGS_HELP: &str =
    "Each of these commands takes the pool flags (--state-dir, --pool loop|direct-lvm|device, \
--lvm-pool VG/LV, --device, --pool-name, --loop-dir, --loop-data-size, --overprovision-ratio, --data-fill-limit, \
--metadata-fill-limit, ...; also as THINPOOL_CSI_* environment variables) and --output json: see \
`thinpool-csi pool status --help`.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the CSI Identity, Controller and Node services for this node's pool.
    Node(NodeArgs),
    /// Keep CSIStorageCapacity objects true for every (StorageClass, ThinPool); leader-elected.
    Controller(ControllerArgs),
    /// The node's thin pool.
    #[command(subcommand, after_help = POOL_FLAGS_HELP)]
    Pool(PoolCommand),
    /// Volumes in the pool.
    #[command(subcommand, after_help = POOL_FLAGS_HELP)]
    Volumes(VolumesCommand),
    /// Snapshots in the pool.
    #[command(subcommand, after_help = POOL_FLAGS_HELP)]
    Snapshots(SnapshotsCommand),
    /// Print the ThinPool CustomResourceDefinition as YAML.
    Crdgen,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => run_node(args, cli.output),
        Command::Controller(args) => run_controller(args, cli.output),
        Command::Pool(c) => Ok(cli::pool(c, cli.output)?),
        Command::Volumes(c) => Ok(cli::volumes(c, cli.output)?),
        Command::Snapshots(c) => Ok(cli::snapshots(c, cli.output)?),
        Command::Crdgen => {
            print!("{}", thinpool_csi::k8s::crd::crd_yaml()?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Node(_) | Command::Controller(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in container logs or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", thinpool_csi::shared::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
