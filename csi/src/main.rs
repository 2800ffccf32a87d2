//! The `thinpool-csi` binary: operator commands now; the node and controller services come as
//! subcommands of the same binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use thinpool_csi::cli::{self, OutputFormat, PoolCommand, SnapshotsCommand, VolumesCommand};

#[derive(Parser, Debug)]
#[command(
    name = "thinpool-csi",
    version,
    about = "Node-local thin-provisioned volumes on a device-mapper thin pool"
)]
struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The node's thin pool.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Volumes in the pool.
    #[command(subcommand)]
    Volumes(VolumesCommand),
    /// Snapshots in the pool.
    #[command(subcommand)]
    Snapshots(SnapshotsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Pool(c) => cli::pool(c, cli.output),
        Command::Volumes(c) => cli::volumes(c, cli.output),
        Command::Snapshots(c) => cli::snapshots(c, cli.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its sources, each said once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
