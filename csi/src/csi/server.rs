//! `thinpool-csi node`: the three CSI services on one unix socket. A stale socket is removed only
//! when it is a socket; the new one is private (0600). Start-up recovery has run before the socket
//! exists, so nothing is served from a pool that has not been checked.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::proto::{controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer};
use super::Driver;
use crate::config::PoolArgs;
use crate::dm::ThinPool;
use crate::engine::deferred::DeferredRetrier;
use crate::mount::linux::LinuxMounter;
use crate::mount::Mounter;

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The CSI endpoint, `unix:///path/to/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (the Kubernetes node name); volumes carry it as their topology.
    #[arg(long, env = "NODE_NAME")]
    pub node_id: String,
    /// The kubelet's root directory: every staging and target path must lie under it.
    #[arg(long, env = "KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Most volumes the scheduler may place on this node (0: no limit).
    #[arg(long, default_value_t = 1000)]
    pub max_volumes_per_node: i64,
    /// Address of the /metrics, /healthz and /readyz endpoints ("" turns them off).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:9102")]
    pub metrics_address: String,
    /// Publish this pool's ThinPool status to the Kubernetes API (in-cluster or kubeconfig).
    #[arg(long, env = "PUBLISH_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub publish_status: bool,
    /// Seconds between ThinPool heartbeats (status is also published on every change).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_interval: u64,
    /// Delete a volume no PersistentVolume has referenced for this many seconds without a break
    /// (0: never, the default; at least 600 otherwise). Off by default: orphans are only reported.
    #[arg(long, env = "DELETE_ORPHANS_AFTER", default_value_t = 0)]
    pub delete_orphans_after: u64,
    /// How often deletes deferred by an open device are retried, in seconds.
    #[arg(long, default_value_t = 10)]
    pub deferred_delete_interval: u64,
    /// Check the flags and the pool configuration, print them, and exit without touching the node.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub pool: PoolArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--endpoint {0:?} must be unix:///absolute/path")]
    Endpoint(String),
    #[error("--node-id {0:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.')")]
    NodeId(String),
    #[error("--kubelet-dir {0:?} must be an absolute path")]
    KubeletDir(PathBuf),
    #[error("--delete-orphans-after {0} is too short: use 0 (never) or at least {min} seconds", min = crate::k8s::orphans::MIN_ORPHAN_GRACE_SECS)]
    OrphanGrace(u64),
    #[error("--metrics-address {0:?} is not host:port")]
    MetricsAddress(String),
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a `unix://` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| ServeError::Endpoint(endpoint.to_owned()))?;
    let p = Path::new(path);
    if !p.is_absolute() || p.file_name().is_none() {
        return Err(ServeError::Endpoint(endpoint.to_owned()));
    }
    Ok(p.to_owned())
}

/// Binds the socket: removes a stale socket (never another kind of file), makes it private.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |what, source| ServeError::Io { what, path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(|e| io("removing stale socket", e))?,
        Ok(_) => return Err(ServeError::NotASocket { path: path.to_owned() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the socket directory", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("making private", e))?;
    Ok(listener)
}

/// Serves the three services on `listener` until `shutdown` completes.
pub async fn serve<P: ThinPool + 'static, M: Mounter + 'static>(
    driver: Arc<Driver<P, M>>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService { driver: driver.clone() }))
        .add_service(ControllerServer::new(Arc::new(ControllerService { driver: driver.clone() })))
        .add_service(NodeServer::new(Arc::new(NodeService { driver })))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// `thinpool-csi node`: opens and recovers the pool, then serves until SIGTERM.
pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if !super::ids::valid_node_name(&args.node_id) {
        return Err(ServeError::NodeId(args.node_id).into());
    }
    if !args.kubelet_dir.is_absolute() {
        return Err(ServeError::KubeletDir(args.kubelet_dir).into());
    }
    let socket = socket_path(&args.endpoint)?;
    let metrics_addr: Option<std::net::SocketAddr> = match args.metrics_address.as_str() {
        "" => None,
        a => Some(a.parse().map_err(|_| ServeError::MetricsAddress(a.to_owned()))?),
    };
    if args.delete_orphans_after != 0 && args.delete_orphans_after < crate::k8s::orphans::MIN_ORPHAN_GRACE_SECS {
        return Err(ServeError::OrphanGrace(args.delete_orphans_after).into());
    }
    let config = args.pool.validate()?;
    if args.check_config {
        println!(
            "configuration ok: node {} socket {} kubelet dir {} {config:?}",
            args.node_id,
            socket.display(),
            args.kubelet_dir.display()
        );
        return Ok(());
    }
    let (engine, report) = crate::open::open_engine(&config)?;
    tracing::info!(?report, node = %args.node_id, "pool open and recovered");
    let engine = Arc::new(engine);
    let _retrier = DeferredRetrier::start(engine.clone(), Duration::from_secs(args.deferred_delete_interval.max(1)))?;
    let metrics = Arc::new(crate::metrics::NodeMetrics::new()?);
    let changed = Arc::new(tokio::sync::Notify::new());
    let limits = config.limits;
    let node_name = args.node_id.clone();
    let driver = Arc::new(Driver {
        engine: engine.clone(),
        mounter: Arc::new(LinuxMounter),
        node_id: args.node_id,
        kubelet_dir: args.kubelet_dir,
        max_volumes_per_node: args.max_volumes_per_node,
        in_flight: Default::default(),
        metrics: metrics.clone(),
        changed: changed.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if args.publish_status {
            match kube::Client::try_default().await {
                Ok(client) => {
                    let timing = crate::k8s::publisher::Timing {
                        heartbeat: Duration::from_secs(args.heartbeat_interval.max(1)),
                        delete_orphans_after: (args.delete_orphans_after > 0)
                            .then(|| Duration::from_secs(args.delete_orphans_after)),
                        ..Default::default()
                    };
                    let api = kube::Api::all(client);
                    tokio::spawn(crate::k8s::publisher::run(
                        api,
                        node_name,
                        engine.clone(),
                        limits,
                        changed,
                        timing,
                        Some(metrics.clone()),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no Kubernetes API configuration: ThinPool status is not published")
                }
            }
        }
        if let Some(addr) = metrics_addr {
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(addr, metrics, engine).await {
                    tracing::error!(error = %e, %addr, "metrics endpoint failed");
                }
            });
        }
        let listener = bind(&socket)?;
        tracing::info!(socket = %socket.display(), "serving CSI");
        serve(driver, listener, terminated()).await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("unix:/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
        assert!(socket_path("unix:///").is_err());
    }

    #[tokio::test]
    async fn binds_privately_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        drop(bind(&sock).unwrap());
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A stale socket from an earlier run is replaced.
        drop(bind(&sock).unwrap());
        let file = dir.path().join("precious");
        std::fs::write(&file, "data").unwrap();
        assert!(matches!(bind(&file), Err(ServeError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    }
}
