//! The `thinpool-csi` binary: the node plugin (`node`) and the operator commands. Errors end
//! the process with a message that says what to fix, never a backtrace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use thinpool_csi::app::controller::{run_controller, ControllerArgs};
use thinpool_csi::app::node::{run_node, NodeArgs};
use thinpool_csi::cli::{self, Operator, OutputFormat};

#[derive(Parser, Debug)]
#[command(name = "thinpool-csi", version, about = "Node-local thin-provisioned volumes on a device-mapper thin pool")]
struct Cli {
    /// Output format of the operator commands and of `--check-config`.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the CSI Identity, Controller and Node services for this node's pool.
    Node(NodeArgs),
    /// Keep CSIStorageCapacity objects true for every (StorageClass, ThinPool); leader-elected.
    Controller(ControllerArgs),
    #[command(flatten)]
    Operator(Operator),
    /// Print the ThinPool CustomResourceDefinition as YAML.
    Crdgen,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => run_node(args, cli.output),
        Command::Controller(args) => run_controller(args, cli.output),
        Command::Operator(op) => operator(op, cli.output),
        Command::Crdgen => {
            print!("{}", thinpool_csi::k8s::crd::crd_yaml()?);
            Ok(())
        }
    }
}

/// An operator command: run here, or, when the node plugin holds the records, in the plugin.
fn operator(op: Operator, output: OutputFormat) -> anyhow::Result<()> {
    let mut out = String::new();
    let outcome = cli::run(op, output, &cli::Local, &mut out);
    print!("{out}");
    match outcome {
        Err(e) if e.locked_store().is_some() => {
            let state_dir = e.locked_store().and_then(std::path::Path::parent).unwrap_or(std::path::Path::new("/"));
            let reply = cli::remote::forward(&cli::remote::endpoint(), std::env::args().skip(1).collect(), state_dir)?;
            print!("{}", reply.output);
            if reply.exit_code == 0 {
                Ok(())
            } else {
                Err(anyhow::anyhow!(reply.error))
            }
        }
        other => Ok(other?),
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
