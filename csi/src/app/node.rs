//! `thinpool-csi node`: checks the flags, opens and recovers the pool, starts the deferred-delete
//! retrier, the metrics endpoint and the ThinPool publisher, then serves CSI until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::PoolArgs;
use crate::csi::server::{bind, serve, socket_path};
use crate::csi::Driver;
use crate::engine::deferred::DeferredRetrier;
use crate::k8s::orphans::MIN_ORPHAN_GRACE_SECS;
use crate::mount::linux::LinuxMounter;
use crate::shared::ids::valid_node_name;

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
pub enum NodeArgsError {
    #[error("--node-id {0:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.')")]
    NodeId(String),
    #[error("--kubelet-dir {0:?} must be an absolute path")]
    KubeletDir(PathBuf),
    #[error("--delete-orphans-after {0} is too short: use 0 (never) or at least {MIN_ORPHAN_GRACE_SECS} seconds")]
    OrphanGrace(u64),
    #[error("--metrics-address {0:?} is not host:port")]
    MetricsAddress(String),
}

/// `thinpool-csi node`: opens and recovers the pool, then serves until SIGTERM.
pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if !valid_node_name(&args.node_id) {
        return Err(NodeArgsError::NodeId(args.node_id).into());
    }
    if !args.kubelet_dir.is_absolute() {
        return Err(NodeArgsError::KubeletDir(args.kubelet_dir).into());
    }
    let socket = socket_path(&args.endpoint)?;
    let metrics_addr: Option<SocketAddr> = match args.metrics_address.as_str() {
        "" => None,
        a => Some(a.parse().map_err(|_| NodeArgsError::MetricsAddress(a.to_owned()))?),
    };
    if args.delete_orphans_after != 0 && args.delete_orphans_after < MIN_ORPHAN_GRACE_SECS {
        return Err(NodeArgsError::OrphanGrace(args.delete_orphans_after).into());
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
        serve(driver, listener, super::terminated()).await
    })?;
    Ok(())
}
