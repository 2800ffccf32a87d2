//! The chart's alerting rules and Grafana dashboard (charts/thinpool-csi/files) are PromQL over
//! our metrics: every expression must parse, and every metric and `mode` label value it names
//! must be one the node plugin or the controller exports, so that a renamed metric cannot leave
//! an alert silently matching nothing.

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};

const ALERTS: &str = include_str!("../../../charts/thinpool-csi/files/alerts.yaml");
const DASHBOARD: &str = include_str!("../../../charts/thinpool-csi/files/dashboard.json");

/// A label matcher: label, operator, value.
type Matcher = (String, MatchOp, String);

/// Every selector of an expression: metric name and its matchers.
#[derive(Default)]
struct Selectors(Vec<(String, Vec<Matcher>)>);

impl ExprVisitor for Selectors {
    type Error = String;
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        let vs = match e {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(vs) = vs {
            let name = vs.name.clone().ok_or("a selector without a metric name")?;
            let matchers =
                vs.matchers.matchers.iter().map(|m| (m.name.clone(), m.op.clone(), m.value.clone())).collect();
            self.0.push((name, matchers));
        }
        Ok(true)
    }
}

/// Series names (with histogram suffixes) and `mode` label values the two processes export.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    // Vectors are only exported once a series exists: drive both through a known sequence.
    let dir = tempfile::tempdir().unwrap();
    let pool = crate::dm::memory::MemoryPool::new(10 << 30);
    let store = crate::store::Store::open(dir.path()).unwrap();
    let (e, _) = crate::engine::Engine::open(pool, store, crate::engine::Limits::default()).unwrap();
    e.create_volume("a", 1 << 30, None).unwrap();
    e.activate(crate::store::Kind::Volume, "a").unwrap();
    let node = crate::metrics::NodeMetrics::new().unwrap();
    node.observe_call("CreateVolume", tonic::Code::Ok, 0.01);
    node.refresh(&e).unwrap();
    let mut text = node.render();
    text.push_str(&super::controller_metrics::controller_metrics_text());
    let mut names = BTreeSet::new();
    let mut modes = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            let (name, kind) = (f.next().unwrap(), f.next().unwrap());
            names.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if let Some(i) = line.find("mode=\"") {
            modes.insert(line[i + 6..].split('"').next().unwrap().to_owned());
        }
    }
    (names, modes)
}

fn check(what: &str, expr: &str, names: &BTreeSet<String>, modes: &BTreeSet<String>) {
    let ast = parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {expr:?} does not parse: {e}"));
    let mut sel = Selectors::default();
    walk_expr(&mut sel, &ast).unwrap();
    assert!(!sel.0.is_empty(), "{what}: no metric in {expr:?}");
    for (name, matchers) in sel.0 {
        assert!(names.contains(&name), "{what}: {name} is not a metric we export ({names:?})");
        for (label, op, value) in matchers {
            if label != "mode" {
                continue;
            }
            let values: Vec<&str> = match op {
                MatchOp::Re(_) | MatchOp::NotRe(_) => value.split('|').collect(),
                _ => vec![value.as_str()],
            };
            for v in values {
                assert!(modes.contains(v), "{what}: mode {v:?} is not a pool mode ({modes:?})");
            }
        }
    }
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let (names, modes) = exported();
    assert!(modes.contains("needs_check") && names.contains("thinpool_controller_stale_pools"));
    let doc: serde_yaml::Value = serde_yaml::from_str(ALERTS).unwrap();
    let mut alerts = BTreeSet::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            assert!(alerts.insert(alert.to_owned()), "alert {alert} twice");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert}: no summary");
            assert!(["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()));
            check(alert, rule["expr"].as_str().unwrap(), &names, &modes);
        }
    }
    // What the chart promises (docs/monitoring.md): data and metadata at 80 and 95 %,
    // read-only or needs-check, stale pools, orphaned volumes.
    for a in [
        "ThinPoolDataFillHigh",
        "ThinPoolDataFillCritical",
        "ThinPoolMetadataFillHigh",
        "ThinPoolMetadataFillCritical",
        "ThinPoolReadOnly",
        "ThinPoolNeedsCheck",
        "ThinPoolAutoExtendBlocked",
        "ThinPoolStale",
        "ThinPoolOrphanedVolumes",
    ] {
        assert!(alerts.contains(a), "alert {a} missing");
    }
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let (names, modes) = exported();
    let doc: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = doc["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            check(p["title"].as_str().unwrap(), t["expr"].as_str().unwrap(), &names, &modes);
        }
    }
}

#[test]
fn the_check_catches_a_renamed_metric() {
    let (names, modes) = exported();
    let r = std::panic::catch_unwind(|| check("t", "thinpool_pool_data_used > 1", &names, &modes));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(|| check("t", "thinpool_pool_mode{mode=\"readonly\"} == 1", &names, &modes));
    assert!(r.is_err());
}
