//! `thinpool-csi controller`: checks the flags, serves the capability endpoint for the resizer,
//! `/metrics`, `/healthz` and `/readyz` (ready while it can reach the API), and runs the
//! leader-elected capacity controller (`k8s::leader_loop`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use clap::Args;
use kube::Client;

use crate::cli::OutputFormat;
use crate::csi::capability_endpoint;
use crate::csi::server::socket_path;
use crate::k8s::controller_metrics::ControllerMetrics;
use crate::k8s::leader_loop::{self, LoopConfig};

#[derive(Args, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerArgs {
    /// Namespace of the CSIStorageCapacity objects and of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "thinpool-csi-controller")]
    pub identity: String,
    #[arg(long, default_value = "thinpool-csi-controller")]
    pub lease_name: String,
    /// A pool whose node has not reported for this many seconds is Stale (zero capacity).
    #[arg(long, default_value_t = 120)]
    pub stale_after: i64,
    /// Address of /metrics, /healthz and /readyz ("" turns them off).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:9103")]
    pub metrics_address: String,
    /// Also serve the plugin's capabilities on this CSI endpoint (`unix:///csi/csi.sock`), for the
    /// external-resizer in the same pod ("" turns it off).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "")]
    pub csi_endpoint: String,
    /// Do the expansion bookkeeping of claims of this driver's classes (raise the volume's
    /// capacity, mark the claim NodeResizePending for the kubelet's NodeExpandVolume, refuse what
    /// the pool cannot hold), instead of an external-resizer. Never together with one.
    #[arg(long, env = "EXPAND_CLAIMS", default_value_t = false, action = clap::ArgAction::Set)]
    pub expand_claims: bool,
    /// Label VolumeSnapshotContents an operator created for a snapshot of this driver
    /// (`source.snapshotHandle`) and every VolumeGroupSnapshotContent of this driver with the node
    /// their handles name, so that node's csi-snapshotter (distributed snapshotting) takes them up.
    /// Needs list and patch on volumesnapshotcontents and volumegroupsnapshotcontents.
    #[arg(long, env = "LABEL_SNAPSHOT_CONTENTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub label_snapshot_contents: bool,
    /// Check the flags, print what they mean (`--output json` for scripts), and exit without
    /// contacting the API server.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
}

/// What `--check-config` shows.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckedController<'a> {
    #[serde(flatten)]
    args: &'a ControllerArgs,
    metrics_address: Option<SocketAddr>,
    capability_socket: Option<&'a std::path::Path>,
}

impl CheckedController<'_> {
    fn render(&self, output: OutputFormat) -> Result<String, serde_json::Error> {
        if output == OutputFormat::Json {
            return Ok(serde_json::to_string_pretty(self)? + "\n");
        }
        let a = self.args;
        let rows = [
            ("namespace", a.namespace.clone()),
            ("identity", a.identity.clone()),
            ("Lease", format!("{}/{}", a.namespace, a.lease_name)),
            ("stale after", format!("{} s without a ThinPool heartbeat", a.stale_after)),
            ("metrics", self.metrics_address.map_or("off".to_owned(), |m| format!("http://{m}/metrics"))),
            ("capability socket", self.capability_socket.map_or("off".to_owned(), |p| p.display().to_string())),
            (
                "claim expansion",
                if a.expand_claims { "done here".to_owned() } else { "left to an external-resizer".to_owned() },
            ),
            (
                "pre-provisioned and group snapshot contents",
                if a.label_snapshot_contents {
                    "labelled with their node".to_owned()
                } else {
                    "left unlabelled (label them yourself)".to_owned()
                },
            ),
        ];
        Ok(super::summary("configuration ok (the API server was not contacted)", &rows))
    }
}

pub fn run_controller(args: ControllerArgs, output: OutputFormat) -> anyhow::Result<()> {
    let metrics_addr: Option<SocketAddr> = match args.metrics_address.as_str() {
        "" => None,
        a => Some(a.parse().map_err(|_| anyhow::anyhow!("--metrics-address {a:?} is not host:port"))?),
    };
    let capability_socket = match args.csi_endpoint.as_str() {
        "" => None,
        e => Some(socket_path(e)?),
    };
    if args.stale_after < 1 {
        anyhow::bail!("--stale-after {} must be at least 1 second", args.stale_after);
    }
    if args.check_config {
        let checked = CheckedController {
            args: &args,
            metrics_address: metrics_addr,
            capability_socket: capability_socket.as_deref(),
        };
        print!("{}", checked.render(output)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let Some(path) = capability_socket {
            // Bound before anything else so the resizer finds it even while the API is down.
            let listener = capability_endpoint::listen(&path)?;
            tokio::spawn(async move {
                if let Err(e) = capability_endpoint::serve(listener, std::future::pending()).await {
                    tracing::error!(error = %e, "capability endpoint failed");
                }
            });
        }
        let client = Client::try_default().await?;
        let metrics = Arc::new(ControllerMetrics::new()?);
        let healthy = Arc::new(AtomicBool::new(false));
        if let Some(addr) = metrics_addr {
            let (m, h) = (metrics.clone(), healthy.clone());
            let app = Router::new()
                .route("/metrics", get(move || async move { m.render() }))
                .route("/healthz", get(|| async { "ok\n" }))
                .route(
                    "/readyz",
                    get(move || async move {
                        if h.load(Ordering::Relaxed) {
                            (axum::http::StatusCode::OK, "ready\n")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "the API server is not reachable\n")
                        }
                    }),
                );
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let cfg = LoopConfig {
            namespace: args.namespace,
            identity: args.identity,
            lease_name: args.lease_name,
            stale_after: args.stale_after,
            expand_claims: args.expand_claims,
            label_snapshot_contents: args.label_snapshot_contents,
        };
        leader_loop::run(client, cfg, metrics, healthy, super::terminated()).await;
        Ok(())
    })
}
