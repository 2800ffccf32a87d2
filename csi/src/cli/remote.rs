//! Operator commands through the running node plugin. While the plugin runs it holds the node's
//! records (the state store is locked), so a command run beside it on the node (`kubectl exec` into
//! its container, or on the host) is sent to the plugin on its CSI socket and run there by
//! [`AdminService`], on the plugin's own engine: the same code as a local command, the same output.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use super::{Access, CliError, Open, Operator, OutputFormat};
use crate::config::PoolArgs;
use crate::dm::ThinPool;
use crate::engine::Engine;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("thinpool.admin.v1");
}

/// Where the plugin serves CSI in its container, and the commands look for it by default.
pub const DEFAULT_ENDPOINT: &str = "unix:///csi/csi.sock";

/// The plugin's endpoint: `$CSI_ENDPOINT` (the variable the plugin reads too), else the default.
pub fn endpoint() -> String {
    std::env::var("CSI_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
}

/// A command line as the plugin parses it: the operator commands and `--output`.
#[derive(Parser, Debug)]
#[command(name = "thinpool-csi", no_binary_name = true)]
pub struct Forwarded {
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: Operator,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "the records in {} are held by another process, and no node plugin answers at {endpoint} ({reason}); \
         set CSI_ENDPOINT to the plugin's socket (on the host: <kubelet-dir>/plugins/thinpool.csi.io/csi.sock) \
         or stop the other thinpool-csi process",
        state_dir.display()
    )]
    Unreachable { state_dir: PathBuf, endpoint: String, reason: String },
    #[error("the node plugin at {endpoint} refused the command: {}", status.message())]
    Refused { endpoint: String, status: Status },
}

/// Sends `args` (the command line after the program name) to the plugin at `endpoint` and returns
/// its answer; `state_dir`: the records found held, for the message when no plugin answers.
pub fn forward(endpoint: &str, args: Vec<String>, state_dir: &Path) -> Result<proto::RunReply, RemoteError> {
    let endpoint = endpoint.to_owned();
    let unreachable = |reason: String| RemoteError::Unreachable {
        state_dir: state_dir.to_owned(),
        endpoint: endpoint.clone(),
        reason,
    };
    let path = endpoint
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .ok_or_else(|| unreachable("the endpoint is not unix:///absolute/path".into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("no runtime: {e}")))?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_static("http://plugin")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(|e| unreachable(crate::shared::chain(&e)))?;
        let answer = proto::admin_client::AdminClient::new(channel).run(proto::RunRequest { args }).await;
        match answer {
            Ok(reply) => Ok(reply.into_inner()),
            // A plugin from before this service answers UNIMPLEMENTED.
            Err(status) => Err(RemoteError::Refused { endpoint: endpoint.clone(), status }),
        }
    })
}

/// The plugin's side: runs a forwarded command on its engine.
pub struct AdminService<P: ThinPool> {
    pub engine: Arc<Engine<P>>,
    /// The plugin's records: a command naming other ones is refused.
    pub state_dir: PathBuf,
    /// Rung after a command that may have changed the pool (the ThinPool publisher listens).
    pub changed: Arc<Notify>,
}

/// The plugin's engine, for the records it holds only.
struct Plugin<P: ThinPool> {
    engine: Arc<Engine<P>>,
    state_dir: PathBuf,
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

impl<P: ThinPool> Open for Plugin<P> {
    type Pool = P;

    fn engine(&self, args: &PoolArgs, _access: Access) -> Result<Arc<Engine<P>>, CliError> {
        if !same_dir(&args.state_dir, &self.state_dir) {
            return Err(CliError::Refused(format!(
                "--state-dir {} is not the records of the plugin at this socket ({}); the command names another pool",
                args.state_dir.display(),
                self.state_dir.display()
            )));
        }
        Ok(self.engine.clone())
    }

    fn may_set_up(&self) -> bool {
        false
    }
}

#[tonic::async_trait]
impl<P: ThinPool + 'static> proto::admin_server::Admin for AdminService<P> {
    async fn run(&self, request: Request<proto::RunRequest>) -> Result<Response<proto::RunReply>, Status> {
        let args = request.into_inner().args;
        let line = args.join(" ");
        let parsed = Forwarded::try_parse_from(&args)
            .map_err(|e| Status::invalid_argument(format!("thinpool-csi {line}: {}", e.render())))?;
        let changes = parsed.command.changes_pool();
        let open = Plugin { engine: self.engine.clone(), state_dir: self.state_dir.clone() };
        let start = Instant::now();
        let (output, outcome) = tokio::task::spawn_blocking(move || {
            let mut w = String::new();
            let outcome = super::run(parsed.command, parsed.output, &open, &mut w);
            (w, outcome)
        })
        .await
        .map_err(|e| Status::internal(format!("the command's task failed: {e}")))?;
        if changes {
            self.changed.notify_one();
        }
        let error = outcome.as_ref().err().map(|e| crate::shared::chain(e)).unwrap_or_default();
        let ms = start.elapsed().as_millis() as u64;
        if error.is_empty() {
            tracing::info!(command = %line, duration_ms = ms, "operator command run in the plugin");
        } else {
            tracing::warn!(command = %line, duration_ms = ms, %error, "operator command run in the plugin failed");
        }
        Ok(Response::new(proto::RunReply { output, exit_code: i32::from(!error.is_empty()), error }))
    }
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
