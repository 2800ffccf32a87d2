//! Prometheus metrics of the node plugin, and its `/metrics`, `/healthz` and `/readyz` endpoints.
//! Names start with `thinpool_`; labels are bounded (method, gRPC code, message kind, pool mode,
//! volume name), never error text. Pool gauges are refreshed at each scrape from the engine.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::dm::ThinPool;
use crate::engine::{Engine, PoolReport, PoolState};
use crate::store::Kind;

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Latency of device-mapper pool messages by kind (`create_thin`, `create_snap`, `delete`,
/// `set_transaction_id`, ...). Process-wide, because the dm layer sits below everything else.
pub static DM_MESSAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new("thinpool_dm_message_duration_seconds", "Latency of device-mapper thin-pool messages.")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["message"],
    )
    .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"))
});

pub struct NodeMetrics {
    registry: Registry,
    data_total: IntGauge,
    data_used: IntGauge,
    metadata_total: IntGauge,
    metadata_used: IntGauge,
    provisioned: IntGauge,
    allowed_new: IntGauge,
    volumes: IntGauge,
    snapshots: IntGauge,
    pool_mode: IntGaugeVec,
    volume_mapped: IntGaugeVec,
    csi_seconds: HistogramVec,
    csi_calls: IntCounterVec,
    group_hold: prometheus::Histogram,
    orphaned: IntGauge,
    missing: IntGauge,
    registered: IntGauge,
    registration_failures: IntCounter,
    extensions: IntCounterVec,
    extension_failures: IntCounter,
    extension_blocked: IntGauge,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

const MODES: [PoolState; 5] =
    [PoolState::Rw, PoolState::Ro, PoolState::OutOfDataSpace, PoolState::NeedsCheck, PoolState::Fail];

impl NodeMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let pool_mode = IntGaugeVec::new(
            Opts::new("thinpool_pool_mode", "1 for the pool's current mode, 0 for the others."),
            &["mode"],
        )?;
        let volume_mapped = IntGaugeVec::new(
            Opts::new(
                "thinpool_volume_mapped_bytes",
                "Bytes a volume has written (mapped blocks), for active volumes.",
            ),
            &["volume"],
        )?;
        let csi_seconds = HistogramVec::new(
            HistogramOpts::new("thinpool_csi_call_duration_seconds", "Latency of CSI calls by method.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )?;
        let csi_calls = IntCounterVec::new(
            Opts::new("thinpool_csi_calls_total", "CSI calls by method and gRPC code."),
            &["method", "code"],
        )?;
        for c in [
            Box::new(pool_mode.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(volume_mapped.clone()),
            Box::new(csi_seconds.clone()),
            Box::new(csi_calls.clone()),
            Box::new(DM_MESSAGE_SECONDS.clone()),
        ] {
            r.register(c)?;
        }
        let group_hold = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "thinpool_group_snapshot_writers_held_seconds",
                "How long a group snapshot held its volumes' writers (from the first suspend to the last resume).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(group_hold.clone()))?;
        let registration_failures = IntCounter::new(
            "thinpool_kubelet_registration_failures_total",
            "Times the kubelet refused to register the driver (NotifyRegistrationStatus false).",
        )?;
        r.register(Box::new(registration_failures.clone()))?;
        let extensions = IntCounterVec::new(
            Opts::new(
                "thinpool_pool_extensions_total",
                "Automatic growths of the pool's LVs, by part (data, metadata).",
            ),
            &["part"],
        )?;
        r.register(Box::new(extensions.clone()))?;
        let extension_failures = IntCounter::new(
            "thinpool_pool_extension_failures_total",
            "Automatic growths that failed (vgs or lvextend).",
        )?;
        r.register(Box::new(extension_failures.clone()))?;
        Ok(NodeMetrics {
            extension_blocked: gauge(
                &r,
                "thinpool_pool_extension_blocked",
                "1 while the pool is above its auto-extend threshold and cannot grow (at its maximum, no free extent, lvextend failing).",
            )?,
            extensions,
            extension_failures,
            group_hold,
            registered: gauge(&r, "thinpool_kubelet_registered", "1 while the kubelet has the driver registered.")?,
            registration_failures,
            data_total: gauge(&r, "thinpool_pool_data_total_bytes", "Size of the pool's data device.")?,
            data_used: gauge(&r, "thinpool_pool_data_used_bytes", "Data bytes in use in the pool.")?,
            metadata_total: gauge(&r, "thinpool_pool_metadata_total_bytes", "Size of the pool's metadata device.")?,
            metadata_used: gauge(&r, "thinpool_pool_metadata_used_bytes", "Metadata bytes in use in the pool.")?,
            provisioned: gauge(
                &r,
                "thinpool_pool_provisioned_bytes",
                "Sum of the virtual sizes of volumes and snapshots.",
            )?,
            allowed_new: gauge(
                &r,
                "thinpool_pool_allowed_new_bytes",
                "Bytes that may still be provisioned (the scheduler's capacity).",
            )?,
            volumes: gauge(&r, "thinpool_volumes", "Volumes in the pool.")?,
            snapshots: gauge(&r, "thinpool_snapshots", "Snapshots in the pool.")?,
            orphaned: gauge(
                &r,
                "thinpool_orphaned_volumes",
                "Volumes on this node that no PersistentVolume references.",
            )?,
            missing: gauge(
                &r,
                "thinpool_missing_volumes",
                "PersistentVolumes for this node whose volume the node does not have.",
            )?,
            registry: r,
            pool_mode,
            volume_mapped,
            csi_seconds,
            csi_calls,
        })
    }

    /// Records the orphan report (from the ThinPool publisher).
    pub fn set_orphans(&self, orphaned: usize, missing: usize) {
        self.orphaned.set(i64::try_from(orphaned).unwrap_or(i64::MAX));
        self.missing.set(i64::try_from(missing).unwrap_or(i64::MAX));
    }

    /// Records one CSI call.
    pub fn observe_call(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.csi_seconds.with_label_values(&[method]).observe(seconds);
        self.csi_calls.with_label_values(&[method, &format!("{code:?}")]).inc();
    }

    /// Records how long a group snapshot held its volumes' writers.
    pub fn observe_group_hold(&self, seconds: f64) {
        self.group_hold.observe(seconds);
    }

    fn set_pool(&self, r: &PoolReport) {
        let c = &r.capacity;
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.data_total.set(i(c.data_total_bytes));
        self.data_used.set(i(c.data_used_bytes));
        self.metadata_total.set(i(c.metadata_total_bytes));
        self.metadata_used.set(i(c.metadata_used_bytes));
        self.provisioned.set(i(c.provisioned_bytes));
        self.allowed_new.set(i(c.allowed_new_bytes));
        self.volumes.set(i(r.volumes as u64));
        self.snapshots.set(i(r.snapshots as u64));
        for m in MODES {
            self.pool_mode.with_label_values(&[&m.to_string()]).set(i64::from(m == c.state));
        }
    }

    /// Refreshes the pool gauges from the engine (blocking: ioctls and store reads).
    pub fn refresh<P: ThinPool>(&self, engine: &Engine<P>) -> Result<(), crate::engine::EngineError> {
        self.set_pool(&engine.report()?);
        self.volume_mapped.reset();
        for v in engine.list(Kind::Volume)? {
            if let Some(bytes) = engine.mapped_bytes_of(&v)? {
                self.volume_mapped.with_label_values(&[v.name.as_str()]).set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }

    pub fn set_registered(&self, registered: bool) {
        self.registered.set(i64::from(registered));
    }

    pub fn registration_failed(&self) {
        self.registration_failures.inc();
    }

    /// One automatic growth of `part`.
    pub fn extended(&self, part: crate::grow::plan::Part) {
        self.extensions.with_label_values(&[&part.to_string()]).inc();
    }

    pub fn extension_failed(&self) {
        self.extension_failures.inc();
    }

    pub fn set_extension_blocked(&self, blocked: bool) {
        self.extension_blocked.set(i64::from(blocked));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Something besides the pool that the node plugin needs before it is ready: `Ok`, or why not.
/// The kubelet registration is one (`kubelet::registration::Registrar`); the metrics only read it.
pub trait ReadyCheck: Send + Sync {
    fn ready(&self) -> Result<(), String>;
}

/// What the health endpoints look at besides the pool.
#[derive(Clone, Default)]
pub struct Health {
    /// The kubelet registration, when the plugin registers itself.
    pub registration: Option<Arc<dyn ReadyCheck>>,
}

/// How long the liveness check may take: a pool whose status ioctl hangs fails it.
pub const LIVENESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

struct HttpState<P: ThinPool> {
    metrics: Arc<NodeMetrics>,
    engine: Arc<Engine<P>>,
    health: Health,
}

async fn metrics_handler<P: ThinPool + 'static>(State(s): State<Arc<HttpState<P>>>) -> (StatusCode, String) {
    let st = s.clone();
    match tokio::task::spawn_blocking(move || st.metrics.refresh(&st.engine)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "refreshing pool metrics"),
        Err(e) => tracing::warn!(error = %e, "refreshing pool metrics"),
    }
    (StatusCode::OK, s.metrics.render())
}

/// Liveness: the pool's status and the record store can be read within the deadline, what the
/// CSI Probe reads too. A full or read-only pool is alive (a restart would not help); a hung one
/// is not.
pub async fn alive<P: ThinPool + 'static>(
    engine: Arc<Engine<P>>,
    deadline: std::time::Duration,
) -> Result<PoolState, String> {
    let check = tokio::task::spawn_blocking(move || engine.report().map(|r| r.capacity.state));
    match tokio::time::timeout(deadline, check).await {
        Ok(Ok(Ok(state))) => Ok(state),
        Ok(Ok(Err(e))) => Err(format!("reading the pool and its records: {e}")),
        Ok(Err(e)) => Err(format!("the check failed: {e}")),
        Err(_) => Err(format!("the pool or its records did not answer within {deadline:?}")),
    }
}

async fn health_handler<P: ThinPool + 'static>(State(s): State<Arc<HttpState<P>>>) -> (StatusCode, String) {
    match alive(s.engine.clone(), LIVENESS_DEADLINE).await {
        Ok(state) => (StatusCode::OK, format!("ok (pool {state})\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Readiness: alive, the pool is `rw`, and (when the plugin registers itself) the kubelet has the
/// driver registered.
async fn ready_handler<P: ThinPool + 'static>(State(s): State<Arc<HttpState<P>>>) -> (StatusCode, String) {
    match alive(s.engine.clone(), LIVENESS_DEADLINE).await {
        Ok(PoolState::Rw) => {}
        Ok(state) => return (StatusCode::SERVICE_UNAVAILABLE, format!("pool is {state}\n")),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
    match s.health.registration.as_ref().map(|r| r.ready()) {
        Some(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        _ => (StatusCode::OK, "ready\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` (liveness: the pool and records answer) and `/readyz` (the pool
/// is rw and the driver registered) on `addr`.
pub async fn serve<P: ThinPool + 'static>(
    addr: SocketAddr,
    metrics: Arc<NodeMetrics>,
    engine: Arc<Engine<P>>,
    health: Health,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler::<P>))
        .route("/healthz", get(health_handler::<P>))
        .route("/readyz", get(ready_handler::<P>))
        .with_state(Arc::new(HttpState { metrics, engine, health }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::memory::MemoryPool;
    use crate::engine::Limits;
    use crate::store::Store;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Liveness answers what a restart would fix: a hung pool fails it within the deadline, a full
    /// or read-only one does not.
    #[tokio::test]
    async fn liveness_fails_for_a_hung_pool_only() {
        use crate::dm::PoolMode;
        let dir = tempfile::tempdir().unwrap();
        let (e, _) =
            Engine::open(MemoryPool::new(1 << 30), Store::open(dir.path()).unwrap(), Limits::default()).unwrap();
        let e = Arc::new(e);
        let deadline = std::time::Duration::from_millis(200);
        assert_eq!(alive(e.clone(), deadline).await, Ok(PoolState::Rw));
        e.pool().set_mode(PoolMode::OutOfDataSpace);
        assert_eq!(alive(e.clone(), deadline).await, Ok(PoolState::OutOfDataSpace));
        e.pool().set_mode(PoolMode::Ro);
        assert!(alive(e.clone(), deadline).await.is_ok());
        e.pool().set_status_delay(std::time::Duration::from_secs(2));
        let start = std::time::Instant::now();
        let err = alive(e.clone(), deadline).await.unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        e.pool().set_status_delay(std::time::Duration::ZERO);
    }

    #[test]
    fn pool_gauges_follow_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) =
            Engine::open(MemoryPool::new(10 << 30), Store::open(dir.path()).unwrap(), Limits::default()).unwrap();
        e.create_volume("a", 1 << 30, None).unwrap();
        e.create_volume("b", 2 << 30, None).unwrap();
        e.create_snapshot("s", "a").unwrap();
        e.activate(Kind::Volume, "a").unwrap();
        let m = NodeMetrics::new().unwrap();
        m.observe_call("CreateVolume", tonic::Code::Ok, 0.01);
        m.observe_call("CreateVolume", tonic::Code::ResourceExhausted, 0.02);
        m.refresh(&e).unwrap();
        let text = m.render();
        assert_eq!(value(&text, "thinpool_pool_data_total_bytes"), Some((10u64 << 30) as f64));
        assert_eq!(value(&text, "thinpool_pool_provisioned_bytes"), Some((4u64 << 30) as f64));
        assert_eq!(value(&text, "thinpool_pool_allowed_new_bytes"), Some((46u64 << 30) as f64));
        assert_eq!(value(&text, "thinpool_volumes"), Some(2.0));
        assert_eq!(value(&text, "thinpool_snapshots"), Some(1.0));
        assert_eq!(value(&text, "thinpool_pool_mode{mode=\"rw\"}"), Some(1.0));
        assert_eq!(value(&text, "thinpool_pool_mode{mode=\"ro\"}"), Some(0.0));
        assert_eq!(value(&text, "thinpool_volume_mapped_bytes{volume=\"a\"}"), Some(0.0));
        assert_eq!(
            value(&text, "thinpool_csi_calls_total{code=\"ResourceExhausted\",method=\"CreateVolume\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "thinpool_csi_call_duration_seconds_count{method=\"CreateVolume\"}"), Some(2.0));
        assert!(text.contains("# TYPE thinpool_csi_call_duration_seconds histogram"));
        assert!(text.contains("# TYPE thinpool_pool_data_used_bytes gauge"));
        assert!(text.contains("# TYPE thinpool_csi_calls_total counter"));
        // Every metric is ours.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("thinpool_"), "{line}");
        }
    }
}
