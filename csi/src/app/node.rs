//! `thinpool-csi node`: checks the flags, opens and recovers the pool, starts the deferred-delete
//! retrier, the metrics endpoint and the ThinPool publisher, then serves CSI until SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::cli::OutputFormat;
use crate::config::{AutoExtendArgs, NodeConfig, PoolArgs, PoolSpec};
use crate::csi::server::{bind, serve, socket_path};
use crate::csi::Driver;
use crate::engine::deferred::DeferredRetrier;
use crate::k8s::orphans::MIN_ORPHAN_GRACE_SECS;
use crate::kubelet::registration::Registrar;
use crate::kubelet::socket::{self as kubelet_socket, socket_in};
use crate::mount::linux::LinuxMounter;
use crate::shared::ids::valid_node_name;

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The CSI endpoint, `unix:///path/to/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT", default_value = crate::cli::remote::DEFAULT_ENDPOINT)]
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
    /// The kubelet's plugin registry directory: serve the kubelet's plugin registration there
    /// ("" turns it off, for a node-driver-registrar sidecar to do it).
    #[arg(long, env = "REGISTRATION_DIR", default_value = "")]
    pub registration_dir: String,
    /// The CSI socket as the kubelet sees it (node-driver-registrar's --kubelet-registration-path).
    #[arg(
        long,
        env = "KUBELET_REGISTRATION_PATH",
        default_value = "/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock"
    )]
    pub kubelet_registration_path: PathBuf,
    /// Check the flags and the pool configuration, print what they mean (`--output json` for
    /// scripts), and exit without touching the node.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub grow: AutoExtendArgs,
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
    #[error("--registration-dir {0:?} must be an absolute path (the kubelet's plugins_registry) or empty")]
    RegistrationDir(String),
    #[error("--kubelet-registration-path {0:?} must be the absolute path of the CSI socket as the kubelet sees it")]
    RegistrationPath(PathBuf),
}

/// How often the registration socket is checked for having been deleted.
const REGISTRATION_CHECK: Duration = Duration::from_secs(5);

/// What `--check-config` shows: what a person checks before starting the node plugin.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckedNode<'a> {
    node: &'a str,
    socket: &'a Path,
    kubelet_dir: &'a Path,
    config: &'a NodeConfig,
    metrics_address: Option<SocketAddr>,
    publish_status: bool,
    heartbeat_secs: u64,
    delete_orphans_after_secs: u64,
    registration_socket: Option<&'a Path>,
    kubelet_registration_path: &'a Path,
    auto_extend: Option<crate::grow::plan::Policy>,
}

impl CheckedNode<'_> {
    fn render(&self, output: OutputFormat) -> Result<String, serde_json::Error> {
        if output == OutputFormat::Json {
            return Ok(serde_json::to_string_pretty(self)? + "\n");
        }
        let orphans = match self.delete_orphans_after_secs {
            0 => "reported, never deleted".to_owned(),
            n => format!("deleted after {n} s without a PersistentVolume"),
        };
        let rows = [
            ("node", self.node.to_owned()),
            ("CSI socket", self.socket.display().to_string()),
            ("kubelet dir", self.kubelet_dir.display().to_string()),
            ("state dir", self.config.state_dir.display().to_string()),
            ("pool", self.config.pool.to_string()),
            ("limits", self.config.limits.to_string()),
            ("metrics", self.metrics_address.map_or("off".to_owned(), |a| format!("http://{a}/metrics"))),
            (
                "ThinPool status",
                if self.publish_status {
                    format!("published, heartbeat every {} s", self.heartbeat_secs)
                } else {
                    "not published".to_owned()
                },
            ),
            ("orphaned volumes", orphans),
            ("automatic extension", self.auto_extend.map_or("off".to_owned(), |p| p.to_string())),
            (
                "kubelet registration",
                self.registration_socket
                    .map_or("off (a node-driver-registrar sidecar registers the driver)".to_owned(), |p| {
                        format!("served at {}, announcing {}", p.display(), self.kubelet_registration_path.display())
                    }),
            ),
        ];
        Ok(super::summary("configuration ok (nothing was touched)", &rows))
    }
}

/// `thinpool-csi node`: opens and recovers the pool, then serves until SIGTERM.
pub fn run_node(args: NodeArgs, output: OutputFormat) -> anyhow::Result<()> {
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
    let registration_socket = match args.registration_dir.as_str() {
        "" => None,
        d if Path::new(d).is_absolute() => Some(socket_in(Path::new(d))),
        d => return Err(NodeArgsError::RegistrationDir(d.to_owned()).into()),
    };
    if !args.kubelet_registration_path.is_absolute() {
        return Err(NodeArgsError::RegistrationPath(args.kubelet_registration_path).into());
    }
    let config = args.pool.validate()?;
    let auto_extend = args.grow.validate(&config.pool)?;
    if args.check_config {
        let checked = CheckedNode {
            node: &args.node_id,
            socket: &socket,
            kubelet_dir: &args.kubelet_dir,
            config: &config,
            metrics_address: metrics_addr,
            publish_status: args.publish_status,
            heartbeat_secs: args.heartbeat_interval,
            delete_orphans_after_secs: args.delete_orphans_after,
            registration_socket: registration_socket.as_deref(),
            kubelet_registration_path: &args.kubelet_registration_path,
            auto_extend,
        };
        print!("{}", checked.render(output)?);
        return Ok(());
    }
    let (engine, report) = crate::open::open_node_engine(&config)?;
    tracing::info!(?report, node = %args.node_id, "pool open and recovered");
    let engine = Arc::new(engine);
    let _retrier = DeferredRetrier::start(engine.clone(), Duration::from_secs(args.deferred_delete_interval.max(1)))?;
    let metrics = Arc::new(crate::metrics::NodeMetrics::new()?);
    let changed = Arc::new(tokio::sync::Notify::new());
    let grow_log = match (auto_extend, &config.pool) {
        (Some(policy), PoolSpec::DirectLvm { vg, lv } | PoolSpec::Device { vg, lv, .. }) => {
            let log = Arc::new(crate::grow::GrowLog::new(&policy));
            let lvm = crate::grow::Lvm { vg: vg.clone(), lv: lv.clone() };
            let extender = crate::grow::Extender::new(policy, lvm, log.clone(), Some(metrics.clone()));
            crate::grow::spawn(engine.clone(), extender, changed.clone())?;
            Some(log)
        }
        _ => None,
    };
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
                        crate::k8s::publisher::Reporting { metrics: Some(metrics.clone()), grow: grow_log },
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no Kubernetes API configuration: ThinPool status is not published")
                }
            }
        }
        // One shutdown for every server: SIGTERM or SIGINT.
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tokio::spawn(async move {
            super::terminated().await;
            let _ = stop.send(true);
        });
        let registrar = registration_socket.as_ref().map(|_| {
            Arc::new(Registrar::new(args.kubelet_registration_path.display().to_string(), Some(metrics.clone())))
        });
        let listener = bind(&socket)?;
        tracing::info!(socket = %socket.display(), "serving CSI");
        // Registered only once the CSI socket answers: the kubelet calls NodeGetInfo right away.
        let registration = match (&registrar, registration_socket) {
            (Some(r), Some(path)) => {
                Some(tokio::spawn(kubelet_socket::serve(r.clone(), path, REGISTRATION_CHECK, stopped())))
            }
            _ => None,
        };
        if let Some(addr) = metrics_addr {
            let health =
                crate::metrics::Health { registration: registrar.map(|r| r as Arc<dyn crate::metrics::ReadyCheck>) };
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(addr, metrics, engine, health).await {
                    tracing::error!(error = %e, %addr, "metrics endpoint failed");
                }
            });
        }
        let served = serve(driver, config.state_dir.clone(), listener, stopped()).await;
        if let Some(task) = registration {
            // Removes the registration socket, so the kubelet unregisters the driver.
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "kubelet registration"),
                Err(e) => tracing::warn!(error = %e, "kubelet registration task"),
            }
        }
        served
    })?;
    Ok(())
}
