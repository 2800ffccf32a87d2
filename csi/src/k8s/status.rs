//! The `ThinPool` status and its conditions, computed from the engine's pool report (pure).
//!
//! Conditions: `Ready` (the pool is rw, fresh and admits new volumes), `DataPressure` and
//! `MetadataPressure` (fill above the admission limit), `ReadOnly` (`ro` or `out_of_data_space`),
//! `NeedsCheck` (`needs_check` or `Fail`), `Stale` (no heartbeat within the limit; set by the
//! controller). A condition's `lastTransitionTime` changes only when its status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::ThinPoolStatus;
use crate::engine::Limits;
use crate::engine::{PoolReport, PoolState};
use crate::units::human_bytes;

pub const READY: &str = "Ready";
pub const DATA_PRESSURE: &str = "DataPressure";
pub const METADATA_PRESSURE: &str = "MetadataPressure";
pub const READ_ONLY: &str = "ReadOnly";
pub const NEEDS_CHECK: &str = "NeedsCheck";
pub const STALE: &str = "Stale";

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A condition, keeping the previous transition time when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: None,
    }
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// The one-word state: the first true of Stale, NeedsCheck, ReadOnly, DataPressure,
/// MetadataPressure, else Ready.
pub fn summary(conditions: &[Condition]) -> String {
    for t in [STALE, NEEDS_CHECK, READ_ONLY, DATA_PRESSURE, METADATA_PRESSURE] {
        if is_true(conditions, t) {
            return t.to_owned();
        }
    }
    READY.to_owned()
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The status a node publishes for its pool.
pub fn from_report(
    node: &str,
    report: &PoolReport,
    limits: &Limits,
    orphans: super::orphans::OrphanReport,
    previous: Option<&ThinPoolStatus>,
    now: &Time,
) -> ThinPoolStatus {
    let c = &report.capacity;
    let prev = previous.map_or(&[][..], |p| p.conditions.as_slice());
    let data_pct = c.data_fill_pct();
    let meta_pct = c.metadata_fill_pct();
    let data_pressure = data_pct > limits.data_fill_limit_pct;
    let meta_pressure = meta_pct > limits.meta_fill_limit_pct;
    let read_only = matches!(c.state, PoolState::Ro | PoolState::OutOfDataSpace);
    let needs_check = matches!(c.state, PoolState::NeedsCheck | PoolState::Fail);
    let ready = c.refusal.is_none();
    let conditions = vec![
        condition(
            prev,
            READY,
            ready,
            if ready { "PoolWritable" } else { "ProvisioningBlocked" },
            c.refusal
                .as_ref()
                .map_or_else(|| format!("{} may be provisioned", human_bytes(c.allowed_new_bytes)), |r| r.to_string()),
            now,
        ),
        condition(
            prev,
            DATA_PRESSURE,
            data_pressure,
            "DataFill",
            format!("data {data_pct:.1}% full, limit {}%", limits.data_fill_limit_pct),
            now,
        ),
        condition(
            prev,
            METADATA_PRESSURE,
            meta_pressure,
            "MetadataFill",
            format!("metadata {meta_pct:.1}% full, limit {}%", limits.meta_fill_limit_pct),
            now,
        ),
        condition(prev, READ_ONLY, read_only, "PoolMode", format!("pool mode {}", c.state), now),
        condition(prev, NEEDS_CHECK, needs_check, "PoolMode", format!("pool mode {}", c.state), now),
        condition(prev, STALE, false, "Heartbeat", "the node reports".to_owned(), now),
    ];
    ThinPoolStatus {
        node: node.to_owned(),
        pool_kind: report.info.kind.to_string(),
        device: report.info.source.clone(),
        data_total_bytes: c.data_total_bytes,
        data_used_bytes: c.data_used_bytes,
        metadata_total_bytes: c.metadata_total_bytes,
        metadata_used_bytes: c.metadata_used_bytes,
        chunk_size_bytes: report.info.block_bytes(),
        provisioned_bytes: c.provisioned_bytes,
        provisioned: human_bytes(c.provisioned_bytes),
        overprovision_ratio: limits.overprovision_ratio,
        allowed_new_bytes: c.allowed_new_bytes,
        data_percent: round1(data_pct),
        metadata_percent: round1(meta_pct),
        volumes: u32::try_from(report.volumes).unwrap_or(u32::MAX),
        snapshots: u32::try_from(report.snapshots).unwrap_or(u32::MAX),
        mode: c.state.to_string(),
        transaction_id: c.transaction_id.unwrap_or(0),
        state: summary(&conditions),
        last_heartbeat: Some(now.clone()),
        orphaned_volumes: orphans.orphaned,
        missing_volumes: orphans.missing,
        conditions,
        auto_extend: None,
    }
}

/// Whether the node's last heartbeat is older than `limit_secs` (or missing).
pub fn is_stale(status: Option<&ThinPoolStatus>, now: &Time, limit_secs: i64) -> bool {
    match status.and_then(|s| s.last_heartbeat.as_ref()) {
        None => true,
        Some(hb) => now.0.as_second() - hb.0.as_second() > limit_secs,
    }
}

/// The status the controller writes for a pool whose node stopped reporting: nothing may be
/// provisioned there until it reports again.
pub fn mark_stale(status: &ThinPoolStatus, now: &Time, limit_secs: i64) -> ThinPoolStatus {
    let mut s = status.clone();
    let since = s.last_heartbeat.as_ref().map_or("never".to_owned(), |t| t.0.to_string());
    s.allowed_new_bytes = 0;
    s.conditions.retain(|c| c.type_ != STALE && c.type_ != READY);
    let stale = condition(
        &status.conditions,
        STALE,
        true,
        "NoHeartbeat",
        format!("no heartbeat for over {limit_secs}s (last: {since})"),
        now,
    );
    let ready = condition(&status.conditions, READY, false, "Stale", "the node does not report".to_owned(), now);
    s.conditions.push(ready);
    s.conditions.push(stale);
    s.state = summary(&s.conditions);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::status::{Discard, NoSpacePolicy, PoolMode, PoolStatus, WorkingStatus};
    use crate::dm::{PoolInfo, PoolKind};
    use crate::engine::capacity::capacity;

    fn report(data_used: u64, meta_used: u64, mode: PoolMode, needs_check: bool) -> PoolReport {
        let status = PoolStatus::Working(WorkingStatus {
            transaction_id: 9,
            meta_used,
            meta_total: 1000,
            data_used,
            data_total: 1000,
            held_root: None,
            mode,
            discard: Discard::Passdown,
            no_space: NoSpacePolicy::Queue,
            needs_check,
            meta_low_water: None,
        });
        let info = PoolInfo {
            kind: PoolKind::Loop,
            dm_name: "p".into(),
            source: "/x".into(),
            block_sectors: 128,
            zeroes_new_blocks: true,
        };
        PoolReport {
            capacity: capacity(&status, 64 << 10, 100 << 20, &Limits::default()),
            info,
            status,
            volumes: 3,
            snapshots: 1,
            deleting: 0,
        }
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cond<'a>(s: &'a ThinPoolStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_healthy_pool_is_ready() {
        let s = from_report(
            "n1",
            &report(100, 100, PoolMode::Rw, false),
            &Limits::default(),
            Default::default(),
            None,
            &at(100),
        );
        assert_eq!(s.state, "Ready");
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!((s.data_percent, s.volumes, s.transaction_id, s.mode.as_str()), (10.0, 3, 9, "rw"));
        assert_eq!(s.provisioned, "100 MiB");
        assert!(s.allowed_new_bytes > 0);
    }

    #[test]
    fn condition_rules() {
        let l = Limits::default();
        let data = from_report("n", &report(950, 100, PoolMode::Rw, false), &l, Default::default(), None, &at(1));
        assert_eq!((data.state.as_str(), cond(&data, READY).status.as_str()), ("DataPressure", "False"));
        let meta = from_report("n", &report(10, 850, PoolMode::Rw, false), &l, Default::default(), None, &at(1));
        assert_eq!(meta.state, "MetadataPressure");
        let ro = from_report("n", &report(10, 10, PoolMode::Ro, false), &l, Default::default(), None, &at(1));
        assert_eq!(ro.state, "ReadOnly");
        let oods =
            from_report("n", &report(1000, 10, PoolMode::OutOfDataSpace, false), &l, Default::default(), None, &at(1));
        assert_eq!(oods.state, "ReadOnly");
        assert_eq!(cond(&oods, DATA_PRESSURE).status, "True");
        let nc = from_report("n", &report(10, 10, PoolMode::Ro, true), &l, Default::default(), None, &at(1));
        assert_eq!(nc.state, "NeedsCheck");
        assert_eq!(nc.allowed_new_bytes, 0);
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let l = Limits::default();
        let first = from_report("n", &report(10, 10, PoolMode::Rw, false), &l, Default::default(), None, &at(100));
        let same =
            from_report("n", &report(20, 10, PoolMode::Rw, false), &l, Default::default(), Some(&first), &at(200));
        assert_eq!(cond(&same, READY).last_transition_time, at(100));
        let full =
            from_report("n", &report(950, 10, PoolMode::Rw, false), &l, Default::default(), Some(&same), &at(300));
        assert_eq!(cond(&full, DATA_PRESSURE).last_transition_time, at(300));
        assert_eq!(cond(&full, READ_ONLY).last_transition_time, at(100));
    }

    #[test]
    fn staleness() {
        let s = from_report(
            "n",
            &report(10, 10, PoolMode::Rw, false),
            &Limits::default(),
            Default::default(),
            None,
            &at(1000),
        );
        assert!(!is_stale(Some(&s), &at(1050), 60));
        assert!(is_stale(Some(&s), &at(1061), 60));
        assert!(is_stale(None, &at(0), 60));
        let stale = mark_stale(&s, &at(1100), 60);
        assert_eq!((stale.state.as_str(), stale.allowed_new_bytes), ("Stale", 0));
        assert_eq!(cond(&stale, STALE).status, "True");
        assert_eq!(cond(&stale, READY).status, "False");
        assert_eq!(stale.conditions.iter().filter(|c| c.type_ == STALE).count(), 1);
    }
}
