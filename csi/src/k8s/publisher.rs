//! The node's `ThinPool` publisher: server-side applies the pool's object and status under its own
//! field manager on every pool change and on a heartbeat. It runs on its own task: CSI calls only
//! ring a `Notify`, so an unreachable API server never blocks them; failures are retried with a
//! capped backoff and the next success catches up.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::Api;
use tokio::sync::Notify;

use super::crd::{ThinPool, ThinPoolStatus};
use super::status;
use crate::dm::ThinPool as Pool;
use crate::engine::Engine;
use crate::engine::Limits;

pub const FIELD_MANAGER: &str = "thinpool-csi-node";

/// Applies the pool's object (named after the node) and then its status; returns the object's
/// uid (Events about the pool need it).
pub async fn publish(api: &Api<ThinPool>, node: &str, status: &ThinPoolStatus) -> Result<Option<String>, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let object = serde_json::json!({
        "apiVersion": "thinpool.csi.io/v1alpha1",
        "kind": "ThinPool",
        "metadata": { "name": node },
        "spec": { "nodeName": node },
    });
    let uid = api.patch(node, &params, &Patch::Apply(&object)).await?.metadata.uid;
    let with_status = serde_json::json!({
        "apiVersion": "thinpool.csi.io/v1alpha1",
        "kind": "ThinPool",
        "metadata": { "name": node },
        "status": status,
    });
    api.patch_status(node, &params, &Patch::Apply(&with_status)).await?;
    Ok(uid)
}

/// What the publisher reports besides the pool itself.
#[derive(Clone, Default)]
pub struct Reporting {
    pub metrics: Option<Arc<crate::metrics::NodeMetrics>>,
    /// Automatic extension, when it is on: its status, and its Events to post.
    pub grow: Option<Arc<crate::grow::GrowLog>>,
}

/// Posts the automatic extension's Events on the pool; one the API refuses is logged and dropped.
async fn post_notices(recorder: &Recorder, reference: &ObjectReference, notices: Vec<crate::grow::Notice>) {
    let events = notices
        .into_iter()
        .map(|n| (reference.clone(), super::controller::event(n.warning, n.reason.to_owned(), n.note, "Extend")));
    super::controller::publish_events(recorder, events).await;
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Opt-in: delete a volume that stayed orphaned (no PersistentVolume) this long.
    pub delete_orphans_after: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(30),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            delete_orphans_after: None,
        }
    }
}

/// This node's volumes against the cluster's PersistentVolumes of this driver. Without access to
/// PVs (RBAC, API down) the report is empty rather than wrong.
async fn orphan_report<P: Pool + 'static>(
    api: &Api<ThinPool>,
    node: &str,
    engine: &Arc<Engine<P>>,
) -> super::orphans::OrphanReport {
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(api.clone().into_client());
    let handles: Vec<String> = match pvs.list(&Default::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|pv| pv.spec?.csi)
            .filter(|csi| csi.driver == crate::shared::PLUGIN_NAME)
            .map(|csi| csi.volume_handle)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing PersistentVolumes for the orphan report");
            return Default::default();
        }
    };
    let e = engine.clone();
    let volumes = match tokio::task::spawn_blocking(move || e.list(crate::store::Kind::Volume)).await {
        Ok(Ok(v)) => v.into_iter().map(|r| r.name.as_str().to_owned()).collect::<Vec<_>>(),
        _ => return Default::default(),
    };
    super::orphans::report(node, &volumes, &handles)
}

/// The opt-in orphan cleanup: deletes the volumes the tracker finds due. The next report (rung
/// by the caller's loop) shows them gone.
async fn delete_orphans<P: Pool + 'static>(
    engine: &Arc<Engine<P>>,
    tracker: &mut super::orphans::OrphanTracker,
    orphaned: &[String],
    grace: Duration,
) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for name in tracker.due(now, orphaned, grace.as_secs()) {
        let e = engine.clone();
        let n = name.clone();
        match tokio::task::spawn_blocking(move || e.delete(crate::store::Kind::Volume, &n)).await {
            Ok(Ok(outcome)) => {
                tracker.forget(&name);
                tracing::warn!(volume = %name, ?outcome, after_secs = grace.as_secs(), "deleted an orphaned volume (--delete-orphans-after)");
            }
            Ok(Err(err)) => tracing::warn!(volume = %name, error = %err, "deleting an orphaned volume"),
            Err(err) => tracing::warn!(volume = %name, error = %err, "orphan cleanup task failed"),
        }
    }
}

/// Publishes forever: at once, on every `changed` notification, and every heartbeat.
pub async fn run<P: Pool + 'static>(
    api: Api<ThinPool>,
    node: String,
    engine: Arc<Engine<P>>,
    limits: Limits,
    changed: Arc<Notify>,
    timing: Timing,
    reporting: Reporting,
) {
    let recorder = Recorder::new(
        api.clone().into_client(),
        Reporter { controller: FIELD_MANAGER.into(), instance: Some(node.clone()) },
    );
    let mut previous: Option<ThinPoolStatus> = None;
    let mut backoff = timing.retry_min;
    let mut tracker = super::orphans::OrphanTracker::default();
    loop {
        let e = engine.clone();
        let wait = match tokio::task::spawn_blocking(move || e.report()).await {
            Ok(Ok(report)) => {
                let orphans = orphan_report(&api, &node, &engine).await;
                if let Some(grace) = timing.delete_orphans_after {
                    delete_orphans(&engine, &mut tracker, &orphans.orphaned, grace).await;
                }
                if let Some(m) = &reporting.metrics {
                    m.set_orphans(orphans.orphaned.len(), orphans.missing.len());
                }
                let mut s = status::from_report(&node, &report, &limits, orphans, previous.as_ref(), &status::now());
                s.auto_extend = reporting.grow.as_ref().map(|g| g.summary());
                match publish(&api, &node, &s).await {
                    Ok(uid) => {
                        if let Some(g) = &reporting.grow {
                            let notices = g.take_notices();
                            if !notices.is_empty() {
                                let reference = super::controller::pool_reference(&node, uid.as_ref());
                                post_notices(&recorder, &reference, notices).await;
                            }
                        }
                        previous = Some(s);
                        backoff = timing.retry_min;
                        timing.heartbeat
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in = ?backoff, "publishing ThinPool status failed");
                        let w = backoff;
                        backoff = (backoff * 2).min(timing.retry_max);
                        w
                    }
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reading the pool for its ThinPool status");
                timing.retry_max
            }
            Err(err) => {
                tracing::warn!(error = %err, "pool report task failed");
                timing.retry_max
            }
        };
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::memory::MemoryPool;
    use crate::store::Store;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use kube::Client;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn engine() -> (Arc<Engine<MemoryPool>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) =
            Engine::open(MemoryPool::new(10 << 30), Store::open(dir.path()).unwrap(), Limits::default()).unwrap();
        (Arc::new(e), dir)
    }

    async fn expect(handle: &mut Handle, path: &str, reply: StatusCode) -> serde_json::Value {
        let (req, send) = handle.next_request().await.expect("the publisher made no request");
        let uri = req.uri().to_string();
        assert!(uri.starts_with(path), "{uri} does not start with {path}");
        if req.method() == Method::GET {
            let pvs = serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {"resourceVersion": "1"}, "items": [
                {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
                 "spec": {"csi": {"driver": "thinpool.csi.io", "volumeHandle": "gone@node-1"}}}
            ]});
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&pvs).unwrap())).unwrap());
            return serde_json::Value::Null;
        }
        assert_eq!(req.method(), Method::PATCH);
        assert!(uri.contains("fieldManager=thinpool-csi-node") && uri.contains("force=true"), "{uri}");
        let body: serde_json::Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let answer = if reply.is_success() {
            serde_json::json!({"apiVersion": "thinpool.csi.io/v1alpha1", "kind": "ThinPool", "metadata": {"name": "node-1", "uid": "uid-1"}, "spec": {"nodeName": "node-1"}})
        } else {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd is down", "reason": "InternalError", "code": reply.as_u16()})
        };
        send.send_response(
            Response::builder().status(reply).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
        );
        body
    }

    const PVS: &str = "/api/v1/persistentvolumes?";
    const OBJ: &str = "/apis/thinpool.csi.io/v1alpha1/thinpools/node-1?";
    const STATUS: &str = "/apis/thinpool.csi.io/v1alpha1/thinpools/node-1/status?";

    #[tokio::test]
    async fn publishes_object_then_status_and_retries_after_a_failure() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ThinPool> = Api::all(Client::new(mock, "default"));
        let (e, _dir) = engine();
        e.create_volume("v", 1 << 30, None).unwrap();
        let changed = Arc::new(Notify::new());
        let timing = Timing {
            heartbeat: Duration::from_secs(3600),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            delete_orphans_after: None,
        };
        let task = tokio::spawn(run(
            api,
            "node-1".into(),
            e.clone(),
            Limits::default(),
            changed.clone(),
            timing,
            Reporting::default(),
        ));

        // The API fails first; the publisher retries on its own.
        expect(&mut handle, PVS, StatusCode::OK).await;
        expect(&mut handle, OBJ, StatusCode::INTERNAL_SERVER_ERROR).await;
        expect(&mut handle, PVS, StatusCode::OK).await;
        let spec = expect(&mut handle, OBJ, StatusCode::OK).await;
        assert_eq!(spec["spec"]["nodeName"], "node-1");
        let status = expect(&mut handle, STATUS, StatusCode::OK).await;
        assert_eq!(status["status"]["volumes"], 1);
        assert_eq!(status["status"]["state"], "Ready");
        assert_eq!(status["status"]["provisionedBytes"], 1u64 << 30);
        // The orphan report: "v" has no PV; the PV "gone@node-1" has no volume.
        assert_eq!(status["status"]["orphanedVolumes"], serde_json::json!(["v"]));
        assert_eq!(status["status"]["missingVolumes"], serde_json::json!(["gone@node-1"]));

        // A pool change is published without waiting for the heartbeat.
        e.create_volume("w", 1 << 30, None).unwrap();
        changed.notify_one();
        expect(&mut handle, PVS, StatusCode::OK).await;
        expect(&mut handle, OBJ, StatusCode::OK).await;
        let status = expect(&mut handle, STATUS, StatusCode::OK).await;
        assert_eq!(status["status"]["volumes"], 2);
        task.abort();
    }

    #[tokio::test]
    async fn automatic_extension_shows_in_the_status_and_as_events_on_the_pool() {
        use crate::grow::{GrowLog, Notice, REASON_EXTENDED};
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ThinPool> = Api::all(Client::new(mock, "default"));
        let (e, _dir) = engine();
        let policy = crate::grow::plan::Policy { threshold_pct: 80, step_pct: 20, max_data_bytes: None };
        let log = Arc::new(GrowLog::new(&policy));
        log.push_for_test(Notice { warning: false, reason: REASON_EXTENDED, note: "data 1Gi → 1280Mi".into() });
        let reporting = Reporting { metrics: None, grow: Some(log.clone()) };
        let timing = Timing { heartbeat: Duration::from_secs(3600), ..Timing::default() };
        let task = tokio::spawn(run(api, "node-1".into(), e, Limits::default(), Arc::default(), timing, reporting));
        expect(&mut handle, PVS, StatusCode::OK).await;
        expect(&mut handle, OBJ, StatusCode::OK).await;
        let status = expect(&mut handle, STATUS, StatusCode::OK).await;
        assert_eq!(status["status"]["autoExtend"]["policy"], "at 80% fill, by 20%, as far as the volume group allows");
        // The Event goes on the pool, with its uid (else `kubectl describe thinpool` hides it).
        let (req, send) = handle.next_request().await.expect("no Event was posted");
        assert_eq!(req.method(), Method::POST);
        assert!(req.uri().path().starts_with("/apis/events.k8s.io/v1/namespaces/"), "{}", req.uri());
        let event: serde_json::Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(event["reason"], REASON_EXTENDED);
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["note"], "data 1Gi → 1280Mi");
        assert_eq!(event["regarding"]["kind"], "ThinPool");
        assert_eq!(event["regarding"]["uid"], "uid-1");
        send.send_response(
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Body::from(serde_json::to_vec(&event).unwrap()))
                .unwrap(),
        );
        assert!(log.take_notices().is_empty(), "a posted notice is not posted again");
        task.abort();
    }

    #[tokio::test]
    async fn opt_in_cleanup_deletes_only_volumes_without_a_pv() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ThinPool> = Api::all(Client::new(mock, "default"));
        let (e, _dir) = engine();
        e.create_volume("orphan", 1 << 30, None).unwrap();
        e.create_volume("gone", 1 << 30, None).unwrap(); // the mock's PV references gone@node-1
        let timing = Timing { delete_orphans_after: Some(Duration::ZERO), ..Timing::default() };
        let task = tokio::spawn(run(
            api,
            "node-1".into(),
            e.clone(),
            Limits::default(),
            Arc::default(),
            timing,
            Reporting::default(),
        ));
        expect(&mut handle, PVS, StatusCode::OK).await;
        expect(&mut handle, OBJ, StatusCode::OK).await;
        expect(&mut handle, STATUS, StatusCode::OK).await;
        let left: Vec<String> =
            e.list(crate::store::Kind::Volume).unwrap().into_iter().map(|r| r.name.as_str().to_owned()).collect();
        assert_eq!(left, vec!["gone"], "the orphan is deleted, the volume with a PV is kept");
        task.abort();
    }

    #[tokio::test]
    async fn a_hung_api_server_blocks_nothing_else() {
        let (mock, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ThinPool> = Api::all(Client::new(mock, "default"));
        let (e, _dir) = engine();
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            api,
            "node-1".into(),
            e.clone(),
            Limits::default(),
            changed.clone(),
            Timing::default(),
            Reporting::default(),
        ));
        // The mock never answers; the engine and the notification still work at once.
        for i in 0..5 {
            let e2 = e.clone();
            tokio::task::spawn_blocking(move || e2.create_volume(&format!("v{i}"), 1 << 20, None).unwrap())
                .await
                .unwrap();
            changed.notify_one();
        }
        assert_eq!(e.list(crate::store::Kind::Volume).unwrap().len(), 5);
        task.abort();
    }
}
