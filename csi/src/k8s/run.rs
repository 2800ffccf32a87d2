//! `thinpool-csi controller`: leader-elected through a Lease; the leader reconciles the
//! `CSIStorageCapacity` objects at once on any change to ThinPools, StorageClasses or the objects
//! it owns (watches), and on a short resync that also catches pools going stale. Serves
//! `/metrics`, `/healthz` and `/readyz` (ready while it can reach the API).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::sync::Notify;

use super::capacity::{LABEL_MANAGED_BY, MANAGED_BY};
use super::controller::{pool_events, reconcile, PassReport};
use super::crd::ThinPool;
use super::lease::LeaseKeeper;
use super::status;

#[derive(Args, Debug, Clone)]
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
    /// Check the flags, print them, and exit without contacting the API server.
    #[arg(long)]
    pub check_config: bool,
}

struct Metrics {
    registry: Registry,
    pools: IntGauge,
    stale: IntGauge,
    leader: IntGauge,
    writes: IntCounterVec,
    seconds: Histogram,
    errors: IntCounter,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let pools = IntGauge::new("thinpool_controller_pools", "ThinPools known.")?;
        let stale = IntGauge::new("thinpool_controller_stale_pools", "ThinPools whose node stopped reporting.")?;
        let leader = IntGauge::new("thinpool_controller_leader", "1 while this replica holds the Lease.")?;
        let writes = IntCounterVec::new(
            Opts::new("thinpool_controller_capacity_writes_total", "CSIStorageCapacity writes by operation."),
            &["op"],
        )?;
        let seconds = Histogram::with_opts(HistogramOpts::new(
            "thinpool_controller_reconcile_duration_seconds",
            "Reconcile pass latency.",
        ))?;
        let errors = IntCounter::new("thinpool_controller_reconcile_errors_total", "Reconcile passes that failed.")?;
        registry.register(Box::new(pools.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Metrics { registry, pools, stale, leader, writes, seconds, errors })
    }

    fn record(&self, r: &PassReport, secs: f64) {
        self.pools.set(r.pools as i64);
        self.stale.set(r.stale_pools as i64);
        self.seconds.observe(secs);
        for (op, n) in [("create", r.created), ("update", r.updated), ("delete", r.deleted)] {
            self.writes.with_label_values(&[op]).inc_by(n as u64);
        }
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Rings `trigger` on every event of a watched resource.
fn watch<K>(api: Api<K>, config: watcher::Config, trigger: Arc<Notify>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => trigger.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch failed; the watcher retries"),
            }
        }
    });
}

pub fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let metrics_addr: Option<SocketAddr> = match args.metrics_address.as_str() {
        "" => None,
        a => Some(a.parse().map_err(|_| anyhow::anyhow!("--metrics-address {a:?} is not host:port"))?),
    };
    let capability_socket = match args.csi_endpoint.as_str() {
        "" => None,
        e => Some(crate::csi::server::socket_path(e)?),
    };
    if args.stale_after < 1 {
        anyhow::bail!("--stale-after {} must be at least 1 second", args.stale_after);
    }
    if args.check_config {
        println!("configuration ok: {args:?}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let Some(path) = capability_socket {
            // Bound before anything else so the resizer finds it even while the API is down.
            let listener = crate::csi::capability_endpoint::listen(&path)?;
            tokio::spawn(async move {
                if let Err(e) = crate::csi::capability_endpoint::serve(listener, std::future::pending()).await {
                    tracing::error!(error = %e, "capability endpoint failed");
                }
            });
        }
        let client = Client::try_default().await?;
        let metrics = Arc::new(Metrics::new()?);
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
        let trigger = Arc::new(Notify::new());
        watch(Api::<ThinPool>::all(client.clone()), watcher::Config::default(), trigger.clone());
        watch(Api::<StorageClass>::all(client.clone()), watcher::Config::default(), trigger.clone());
        let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        watch(Api::<CSIStorageCapacity>::namespaced(client.clone(), &args.namespace), owned, trigger.clone());
        let keeper = LeaseKeeper {
            api: Api::namespaced(client.clone(), &args.namespace),
            name: args.lease_name.clone(),
            identity: args.identity.clone(),
            duration_secs: 15,
        };
        tracing::info!(identity = %args.identity, namespace = %args.namespace, "controller started");
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "thinpool-csi-controller".into(),
                instance: Some(args.identity.clone()),
            },
        );
        let mut last_states = std::collections::BTreeMap::new();
        loop {
            let leader = match keeper.tick().await {
                Ok(l) => {
                    healthy.store(true, Ordering::Relaxed);
                    l
                }
                Err(e) => {
                    healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "renewing the Lease failed");
                    false
                }
            };
            metrics.leader.set(i64::from(leader));
            if leader {
                let start = Instant::now();
                match reconcile(&client, &args.namespace, args.stale_after, &status::now()).await {
                    Ok(r) => {
                        metrics.record(&r, start.elapsed().as_secs_f64());
                        for (pool, warning, reason, note) in pool_events(&last_states, &r.states) {
                            let event = kube::runtime::events::Event {
                                type_: if warning {
                                    kube::runtime::events::EventType::Warning
                                } else {
                                    kube::runtime::events::EventType::Normal
                                },
                                reason,
                                note: Some(note),
                                action: "Reconcile".into(),
                                secondary: None,
                            };
                            let reference = k8s_openapi::api::core::v1::ObjectReference {
                                api_version: Some("thinpool.csi.io/v1alpha1".into()),
                                kind: Some("ThinPool".into()),
                                name: Some(pool.clone()),
                                ..Default::default()
                            };
                            if let Err(e) = recorder.publish(&event, &reference).await {
                                tracing::warn!(error = %e, pool = %pool, "publishing an event");
                            }
                        }
                        last_states = r.states.iter().cloned().collect();
                        for pool in &r.newly_stale {
                            tracing::warn!(pool = %pool, "pool marked Stale: its node stopped reporting");
                        }
                        if r.created + r.updated + r.deleted > 0 {
                            tracing::info!(
                                created = r.created,
                                updated = r.updated,
                                deleted = r.deleted,
                                "capacity objects written"
                            );
                        }
                    }
                    Err(e) => {
                        metrics.errors.inc();
                        tracing::warn!(error = %crate::csi::error::chain(&e), "reconcile failed");
                    }
                }
            }
            // Renew well within the Lease duration; react at once to watched changes.
            tokio::select! {
                _ = trigger.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    })
}

/// The controller's metrics after one pass, as exported (for the alert-rule checks).
#[cfg(test)]
pub(crate) fn controller_metrics_text() -> String {
    let m = Metrics::new().unwrap();
    m.record(&PassReport { pools: 1, created: 1, updated: 1, deleted: 1, ..Default::default() }, 0.01);
    m.errors.inc();
    m.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_metrics_after_a_pass() {
        let m = Metrics::new().unwrap();
        m.leader.set(1);
        let pass = PassReport { pools: 3, stale_pools: 1, created: 2, updated: 1, deleted: 0, ..Default::default() };
        m.record(&pass, 0.02);
        m.errors.inc();
        let text = m.render();
        for (series, value) in [
            ("thinpool_controller_pools", "3"),
            ("thinpool_controller_stale_pools", "1"),
            ("thinpool_controller_leader", "1"),
            ("thinpool_controller_capacity_writes_total{op=\"create\"}", "2"),
            ("thinpool_controller_capacity_writes_total{op=\"update\"}", "1"),
            ("thinpool_controller_reconcile_errors_total", "1"),
            ("thinpool_controller_reconcile_duration_seconds_count", "1"),
        ] {
            assert!(text.lines().any(|l| l == format!("{series} {value}")), "{series} {value} missing in:\n{text}");
        }
        assert!(text.contains("# TYPE thinpool_controller_reconcile_duration_seconds histogram"));
        assert!(text.contains("# TYPE thinpool_controller_capacity_writes_total counter"));
    }
}
