//! The controller and lease glue against kube's mock API service: each scenario scripts the API
//! server's answers and checks the requests the controller makes.

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{json, Value};

use super::controller::reconcile;
use super::crd::ThinPoolStatus;
use super::lease::LeaseKeeper;

/// One expected request and the answer to give.
struct Step {
    method: Method,
    path: &'static str,
    status: StatusCode,
    reply: Value,
}

fn step(method: Method, path: &'static str, reply: Value) -> Step {
    Step { method, path, status: StatusCode::OK, reply }
}

/// Serves `steps` in order on a mock client; returns the request bodies received.
fn mock(steps: Vec<Step>) -> (Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut bodies = vec![];
        for s in steps {
            let (req, send) = handle.next_request().await.expect("the controller made fewer requests than expected");
            let uri = req.uri().to_string();
            assert_eq!(req.method(), s.method, "{uri}");
            assert!(uri.starts_with(s.path), "request {uri} does not start with {}", s.path);
            // Every write names its field manager, so `kubectl get -o yaml --show-managed-fields`
            // says who wrote what.
            if [Method::POST, Method::PUT, Method::PATCH].contains(req.method()) {
                assert!(
                    uri.contains("fieldManager=thinpool-csi-controller"),
                    "{} {uri} has no field manager",
                    req.method()
                );
            }
            let raw = req.into_body().collect_bytes().await.unwrap();
            bodies.push(serde_json::from_slice(&raw).unwrap_or(Value::Null));
            send.send_response(
                Response::builder().status(s.status).body(Body::from(serde_json::to_vec(&s.reply).unwrap())).unwrap(),
            );
        }
        bodies
    });
    (Client::new(service, "kube-system"), server)
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

fn pool(node: &str, allowed: u64, heartbeat: i64) -> Value {
    let status = ThinPoolStatus {
        node: node.into(),
        allowed_new_bytes: allowed,
        state: "Ready".into(),
        last_heartbeat: Some(Time(Timestamp::from_second(heartbeat).unwrap())),
        ..Default::default()
    };
    json!({"apiVersion": "thinpool.csi.io/v1alpha1", "kind": "ThinPool", "metadata": {"name": node}, "spec": {"nodeName": node}, "status": status})
}

fn class(name: &str, provisioner: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name, "uid": format!("uid-{name}")}, "provisioner": provisioner})
}

fn capacity_obj(class: &str, node: &str, bytes: u64) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
        "metadata": {"name": super::capacity::object_name(class, node), "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": "thinpool-csi-controller", "thinpool.csi.io/storage-class": class, "thinpool.csi.io/node": node}},
        "storageClassName": class,
        "nodeTopology": {"matchLabels": {"topology.thinpool.csi.io/node": node}},
        "capacity": bytes.to_string(), "maximumVolumeSize": bytes.to_string()
    })
}

const POOLS: &str = "/apis/thinpool.csi.io/v1alpha1/thinpools?";
const CLASSES: &str = "/apis/storage.k8s.io/v1/storageclasses?";
const CAPS: &str = "/apis/storage.k8s.io/v1/namespaces/kube-system/csistoragecapacities";
const NOW: i64 = 10_000;

fn now() -> Time {
    Time(Timestamp::from_second(NOW).unwrap())
}

#[tokio::test]
async fn a_new_pool_gets_one_capacity_object_per_class() {
    let (client, server) = mock(vec![
        step(Method::GET, POOLS, list("ThinPool", vec![pool("node-1", 5 << 30, NOW - 5)])),
        step(
            Method::GET,
            CLASSES,
            list("StorageClass", vec![class("thin-ext4", "thinpool.csi.io"), class("other", "ebs.csi.aws.com")]),
        ),
        step(Method::GET, CAPS, list("CSIStorageCapacity", vec![])),
        step(Method::POST, CAPS, capacity_obj("thin-ext4", "node-1", 5 << 30)),
    ]);
    let report = reconcile(&client, "kube-system", 60, &now()).await.unwrap();
    assert_eq!((report.created, report.updated, report.deleted, report.stale_pools), (1, 0, 0, 0));
    let bodies = server.await.unwrap();
    let created = &bodies[3];
    assert_eq!(created["storageClassName"], "thin-ext4");
    assert_eq!(created["capacity"], (5u64 << 30).to_string());
    assert_eq!(created["maximumVolumeSize"], (5u64 << 30).to_string());
    assert_eq!(created["nodeTopology"]["matchLabels"]["topology.thinpool.csi.io/node"], "node-1");
    assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-thin-ext4");
}

#[tokio::test]
async fn a_pool_that_fills_up_is_updated_in_place() {
    let (client, server) = mock(vec![
        step(Method::GET, POOLS, list("ThinPool", vec![pool("node-1", 0, NOW - 5)])),
        step(Method::GET, CLASSES, list("StorageClass", vec![class("thin-ext4", "thinpool.csi.io")])),
        step(Method::GET, CAPS, list("CSIStorageCapacity", vec![capacity_obj("thin-ext4", "node-1", 5 << 30)])),
        step(Method::PATCH, CAPS, capacity_obj("thin-ext4", "node-1", 0)),
    ]);
    let report = reconcile(&client, "kube-system", 60, &now()).await.unwrap();
    assert_eq!((report.created, report.updated, report.deleted), (0, 1, 0));
    let bodies = server.await.unwrap();
    assert_eq!(bodies[3], json!({"capacity": "0", "maximumVolumeSize": "0"}));
}

#[tokio::test]
async fn a_deleted_class_takes_its_objects_along() {
    let (client, server) = mock(vec![
        step(Method::GET, POOLS, list("ThinPool", vec![pool("node-1", 1 << 30, NOW - 5)])),
        step(Method::GET, CLASSES, list("StorageClass", vec![])),
        step(Method::GET, CAPS, list("CSIStorageCapacity", vec![capacity_obj("thin-ext4", "node-1", 1 << 30)])),
        step(Method::DELETE, CAPS, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
    ]);
    let report = reconcile(&client, "kube-system", 60, &now()).await.unwrap();
    assert_eq!(report.deleted, 1);
    server.await.unwrap();
}

#[tokio::test]
async fn a_stale_pool_is_marked_and_gets_zero_capacity() {
    let mut stale_reply = pool("node-1", 1 << 30, NOW - 600);
    stale_reply["status"]["state"] = json!("Stale");
    let (client, server) = mock(vec![
        step(Method::GET, POOLS, list("ThinPool", vec![pool("node-1", 1 << 30, NOW - 600)])),
        step(Method::GET, CLASSES, list("StorageClass", vec![class("thin-ext4", "thinpool.csi.io")])),
        step(Method::GET, CAPS, list("CSIStorageCapacity", vec![capacity_obj("thin-ext4", "node-1", 1 << 30)])),
        step(Method::PATCH, "/apis/thinpool.csi.io/v1alpha1/thinpools/node-1/status", stale_reply),
        step(Method::PATCH, CAPS, capacity_obj("thin-ext4", "node-1", 0)),
    ]);
    let report = reconcile(&client, "kube-system", 60, &now()).await.unwrap();
    assert_eq!((report.stale_pools, report.newly_stale.len(), report.updated), (1, 1, 1));
    let bodies = server.await.unwrap();
    assert_eq!(bodies[3]["status"]["state"], "Stale");
    assert_eq!(bodies[3]["status"]["allowedNewBytes"], 0);
    assert_eq!(bodies[4]["capacity"], "0");
}

#[tokio::test]
async fn api_errors_surface_as_typed_errors() {
    let (client, server) = mock(vec![Step {
        method: Method::GET,
        path: POOLS,
        status: StatusCode::FORBIDDEN,
        reply: json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "message": "no RBAC", "code": 403}),
    }]);
    let err = reconcile(&client, "kube-system", 60, &now()).await.unwrap_err();
    assert!(err.to_string().contains("listing ThinPools"), "{err}");
    server.await.unwrap();
}

fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let renewed = Timestamp::now().as_second() - renewed_secs_ago;
    let t = Timestamp::from_second(renewed).unwrap();
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "thinpool-csi-controller", "namespace": "kube-system", "resourceVersion": "7"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": t.to_string()}})
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/thinpool-csi-controller";

fn keeper(client: Client) -> LeaseKeeper {
    LeaseKeeper {
        api: Api::namespaced(client, "kube-system"),
        name: "thinpool-csi-controller".into(),
        identity: "replica-a".into(),
        duration_secs: 15,
    }
}

#[tokio::test]
async fn a_replica_follows_a_live_lease_and_takes_an_expired_one() {
    let (client, server) = mock(vec![step(Method::GET, LEASE, lease("replica-b", 2))]);
    assert!(!keeper(client).look().await.unwrap().held, "took a lease another replica holds");
    server.await.unwrap();

    let (client, server) =
        mock(vec![step(Method::GET, LEASE, lease("replica-b", 60)), step(Method::PUT, LEASE, lease("replica-a", 0))]);
    assert!(keeper(client).look().await.unwrap().held, "did not take an expired lease");
    let bodies = server.await.unwrap();
    assert_eq!(bodies[1]["spec"]["holderIdentity"], "replica-a");
    assert_eq!(bodies[1]["metadata"]["resourceVersion"], "7");
}

#[tokio::test]
async fn a_lost_race_for_the_lease_means_following() {
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "message": "changed", "code": 409});
    let (client, server) = mock(vec![
        step(Method::GET, LEASE, lease("replica-b", 60)),
        Step { method: Method::PUT, path: LEASE, status: StatusCode::CONFLICT, reply: conflict },
    ]);
    assert!(!keeper(client).look().await.unwrap().held);
    server.await.unwrap();
}

/// The API server returns quantities in canonical form; the controller compares meanings.
#[test]
fn quantities_in_every_form_the_api_server_returns() {
    use super::controller::bytes_of;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let b = |s: &str| bytes_of(Some(&Quantity(s.to_owned())));
    assert_eq!(b("5000000000"), 5_000_000_000);
    assert_eq!(b("5G"), 5_000_000_000);
    assert_eq!(b("4Gi"), 4 << 30);
    assert_eq!(b("1e9"), 1_000_000_000);
    assert_eq!(b("500M"), 500_000_000);
    assert_eq!(b("1536Mi"), 1536 << 20);
    assert_eq!(b("12884901888"), 12 << 30);
    assert_eq!(b("0"), 0);
    assert_eq!(b("garbage"), u64::MAX);
    assert_eq!(bytes_of(None), u64::MAX);
}

/// The API server returns `5G` for the `5000000000` we wrote: that is the same capacity, so the
/// controller writes nothing (it used to rewrite the object on every pass).
#[tokio::test]
async fn a_canonicalised_capacity_is_left_alone() {
    let mut existing = capacity_obj("thin-ext4", "node-1", 5_000_000_000);
    existing["capacity"] = json!("5G");
    existing["maximumVolumeSize"] = json!("5G");
    let (client, server) = mock(vec![
        step(Method::GET, POOLS, list("ThinPool", vec![pool("node-1", 5_000_000_000, NOW - 5)])),
        step(Method::GET, CLASSES, list("StorageClass", vec![class("thin-ext4", "thinpool.csi.io")])),
        step(Method::GET, CAPS, list("CSIStorageCapacity", vec![existing])),
    ]);
    let report = reconcile(&client, "kube-system", 60, &now()).await.unwrap();
    assert_eq!((report.created, report.updated, report.deleted), (0, 0, 0));
    server.await.unwrap();
}

/// Events about a pool carry its uid: `kubectl describe thinpool` shows no Event without it.
#[tokio::test]
async fn events_reference_the_pool_with_its_uid() {
    let mut p = pool("node-1", 1 << 30, NOW - 5);
    p["metadata"]["uid"] = json!("0b5e-uid");
    let (client, server) = mock(vec![
        step(Method::GET, POOLS, list("ThinPool", vec![p])),
        step(Method::GET, CLASSES, list("StorageClass", vec![])),
        step(Method::GET, CAPS, list("CSIStorageCapacity", vec![])),
    ]);
    let report = reconcile(&client, "kube-system", 60, &now()).await.unwrap();
    server.await.unwrap();
    let reference = super::controller::pool_reference("node-1", report.uids.get("node-1"));
    assert_eq!(reference.uid.as_deref(), Some("0b5e-uid"));
    assert_eq!(reference.kind.as_deref(), Some("ThinPool"));
    assert_eq!(reference.api_version.as_deref(), Some("thinpool.csi.io/v1alpha1"));
    assert_eq!(reference.name.as_deref(), Some("node-1"));
}

/// On the way out the leader gives the Lease up, so a follower takes it at once; a Lease held by
/// another replica is left alone.
#[tokio::test]
async fn the_leader_releases_the_lease_on_the_way_out() {
    let (client, server) =
        mock(vec![step(Method::GET, LEASE, lease("replica-a", 1)), step(Method::PUT, LEASE, lease("", 0))]);
    assert!(keeper(client).release().await.unwrap());
    let bodies = server.await.unwrap();
    assert!(bodies[1]["spec"]["holderIdentity"].is_null(), "{}", bodies[1]);
    assert_eq!(bodies[1]["metadata"]["resourceVersion"], "7");
    let released = bodies[1]["spec"].clone();
    let released: k8s_openapi::api::coordination::v1::LeaseSpec = serde_json::from_value(released).unwrap();
    assert_eq!(
        super::lease::decide(Some(&released), "replica-b", Timestamp::now()),
        super::lease::LeaseAction::Take { transition: true }
    );

    let (client, server) = mock(vec![step(Method::GET, LEASE, lease("replica-b", 1))]);
    assert!(!keeper(client).release().await.unwrap());
    server.await.unwrap();
}

fn our_pv(name: &str, capacity: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
           "spec": {"capacity": {"storage": capacity}, "csi": {"driver": "thinpool.csi.io", "volumeHandle": format!("{name}@{node}")},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "topology.thinpool.csi.io/node", "operator": "In", "values": [node]}]}]}}}})
}

fn bound_claim(requested: &str, volume: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "data", "namespace": "apps", "uid": "claim-uid"},
           "spec": {"storageClassName": "thin-ext4", "volumeName": volume, "resources": {"requests": {"storage": requested}}},
           "status": {"phase": "Bound", "capacity": {"storage": "1Gi"},
                      "conditions": [{"type": "ModifyingVolume", "status": "True"}]}})
}

const PVS: &str = "/api/v1/persistentvolumes?";

/// The claims' class, which allows expansion (as the capacity pass read it).
fn expandable() -> std::collections::BTreeMap<String, super::expansion::Class> {
    std::collections::BTreeMap::from([("thin-ext4".to_owned(), super::expansion::Class { allow_expansion: true })])
}
const PVCS: &str = "/api/v1/persistentvolumeclaims?";

/// A bound claim that asks for more is marked for the kubelet as external-resizer does it: the
/// volume's capacity raised, the claim NodeResizePending with FileSystemResizePending, two Events.
#[tokio::test]
async fn a_grown_claim_is_marked_for_node_expansion() {
    let (client, server) = mock(vec![
        step(Method::GET, PVS, list("PersistentVolume", vec![our_pv("pvc-1", "1Gi", "node-1")])),
        step(Method::GET, PVCS, list("PersistentVolumeClaim", vec![bound_claim("2Gi", "pvc-1")])),
        step(Method::PATCH, "/api/v1/persistentvolumes/pvc-1", our_pv("pvc-1", "2Gi", "node-1")),
        step(Method::PATCH, "/api/v1/namespaces/apps/persistentvolumeclaims/data/status", bound_claim("2Gi", "pvc-1")),
    ]);
    let room = std::collections::BTreeMap::from([("node-1".to_owned(), 10u64 << 30)]);
    let report = super::expansion_pass::expansion_pass(&client, &room, &expandable(), &now()).await.unwrap();
    let bodies = server.await.unwrap();
    assert_eq!(report.expanded, 1);
    assert_eq!(bodies[2]["spec"]["capacity"]["storage"], (2u64 << 30).to_string());
    let status = &bodies[3]["status"];
    assert_eq!(status["allocatedResources"]["storage"], (2u64 << 30).to_string());
    assert_eq!(status["allocatedResourceStatuses"]["storage"], "NodeResizePending");
    let types: Vec<&str> =
        status["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ModifyingVolume", "FileSystemResizePending"], "other conditions are kept");
    let reasons: Vec<&str> = report.events.iter().map(|(_, e)| e.reason).collect();
    assert_eq!(reasons, ["Resizing", "FileSystemResizeRequired"]);
    assert_eq!(report.events[0].0.uid.as_deref(), Some("claim-uid"));
}

/// A request the pool cannot hold is refused once: ControllerResizeInfeasible and a Warning, and the
/// volume is left alone.
#[tokio::test]
async fn a_claim_the_pool_cannot_hold_is_refused() {
    let (client, server) = mock(vec![
        step(Method::GET, PVS, list("PersistentVolume", vec![our_pv("pvc-1", "1Gi", "node-1")])),
        step(Method::GET, PVCS, list("PersistentVolumeClaim", vec![bound_claim("100Gi", "pvc-1")])),
        step(
            Method::PATCH,
            "/api/v1/namespaces/apps/persistentvolumeclaims/data/status",
            bound_claim("100Gi", "pvc-1"),
        ),
    ]);
    let room = std::collections::BTreeMap::from([("node-1".to_owned(), 5u64 << 30)]);
    let report = super::expansion_pass::expansion_pass(&client, &room, &expandable(), &now()).await.unwrap();
    let bodies = server.await.unwrap();
    assert_eq!((report.expanded, report.refused), (0, 1));
    assert_eq!(bodies[2]["status"]["allocatedResourceStatuses"]["storage"], "ControllerResizeInfeasible");
    let (_, event) = &report.events[0];
    assert!(event.warning && event.reason == "VolumeResizeFailed", "{event:?}");
    assert!(event.note.contains("may provision only 5 GiB more"), "{}", event.note);
}
