//! The capacity controller's metrics, served on its `/metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::controller::PassReport;

pub struct ControllerMetrics {
    registry: Registry,
    pools: IntGauge,
    stale: IntGauge,
    pub leader: IntGauge,
    writes: IntCounterVec,
    seconds: Histogram,
    pub errors: IntCounter,
}

impl ControllerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
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
        Ok(ControllerMetrics { registry, pools, stale, leader, writes, seconds, errors })
    }

    pub fn record(&self, r: &PassReport, secs: f64) {
        self.pools.set(r.pools as i64);
        self.stale.set(r.stale_pools as i64);
        self.seconds.observe(secs);
        for (op, n) in [("create", r.created), ("update", r.updated), ("delete", r.deleted)] {
            self.writes.with_label_values(&[op]).inc_by(n as u64);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The controller's metrics after one pass, as exported (for the alert-rule checks).
#[cfg(test)]
pub(crate) fn controller_metrics_text() -> String {
    let m = ControllerMetrics::new().unwrap();
    m.record(&PassReport { pools: 1, created: 1, updated: 1, deleted: 1, ..Default::default() }, 0.01);
    m.errors.inc();
    m.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_metrics_after_a_pass() {
        let m = ControllerMetrics::new().unwrap();
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
