//! The control-plane tier: what thinpool-csi writes to and reads from Kubernetes, against a real
//! etcd and kube-apiserver (v1.36.3, started on loopback by [`server`]; no VM, no kubelet), where
//! kube's mock API cannot say what the API server really does:
//!
//! - the ThinPool CRD as the API server serves it: established, its printer columns and their
//!   cells as `kubectl get thinpools` shows them;
//! - the chart's node-restriction ValidatingAdmissionPolicy evaluated by the API server: a node
//!   plugin's token bound to a pod on node-1 may write ThinPool node-1 and nothing else;
//! - the controller (the real `thinpool-csi controller` under the chart's RBAC, two replicas) keeps
//!   one CSIStorageCapacity per class for a pool the node publishes, follows a change, writes
//!   with its field manager, reads quantities back by value (the API server rewrites 5000000000 as
//!   5G), and another replica takes over when the leader is SIGTERMed;
//! - a pre-provisioned VolumeSnapshotContent of this driver gets its node's label from the
//!   controller (the snapshot CRDs from the external-snapshotter module), no other content does.
//!
//! Needs `target/cluster/bin/{etcd,kube-apiserver,kubectl}` (`e2e/cluster/build.sh apiserver`) and
//! the `thinpool-csi` binary; prints "skipped" without the first unless `THINPOOL_APISERVER_REQUIRED`
//! is set (e2e/run.sh test sets it).

mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::storage::v1::CSIStorageCapacity;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::Discovery;
use serde::Deserialize;
use server::ControlPlane;
use thinpool_csi::k8s::controller::bytes_of;
use thinpool_csi::k8s::crd::{ThinPool, ThinPoolStatus};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NS: &str = "thinpool-csi";
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn ensure(cond: bool, what: impl Into<String>) -> Result {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// A pool's status as a node plugin publishes it.
fn pool_status(node: &str, allowed: u64) -> ThinPoolStatus {
    ThinPoolStatus {
        node: node.into(),
        pool_kind: "loop".into(),
        device: "/var/lib/thinpool-csi/loop".into(),
        data_total_bytes: 10 << 30,
        data_used_bytes: 1 << 30,
        metadata_total_bytes: 64 << 20,
        metadata_used_bytes: 4 << 20,
        chunk_size_bytes: 64 << 10,
        provisioned_bytes: 3 << 30,
        provisioned: "3Gi".into(),
        overprovision_ratio: 5.0,
        allowed_new_bytes: allowed,
        data_percent: 10.0,
        metadata_percent: 6.25,
        volumes: 3,
        snapshots: 1,
        mode: "rw".into(),
        transaction_id: 7,
        state: "Ready".into(),
        last_heartbeat: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())),
        ..Default::default()
    }
}

/// Applies every object of a YAML stream whose kind is not in `skip`, server-side.
async fn apply(client: &kube::Client, yaml: &str, skip: &[&str]) -> Result<Vec<String>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut applied = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj.types.clone().ok_or("an object without apiVersion and kind")?;
        if skip.contains(&types.kind.as_str()) {
            continue;
        }
        let gvk = kube::api::GroupVersionKind::try_from(&types)?;
        let (resource, caps) =
            discovery.resolve_gvk(&gvk).ok_or_else(|| format!("the API server serves no {gvk:?}"))?;
        let name = obj.metadata.name.clone().ok_or("an object without a name")?;
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (kube::discovery::Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
            (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &PatchParams::apply("thinpool-e2e").force(), &Patch::Apply(&obj)).await?;
        applied.push(format!("{}/{name}", types.kind));
    }
    Ok(applied)
}

/// A ServiceAccount token (TokenRequest), bound to `pod` (name, uid) when given.
async fn token(client: &kube::Client, sa: &str, pod: Option<(&str, &str)>) -> Result<String> {
    let mut spec = serde_json::json!({ "audiences": [], "expirationSeconds": 3600 });
    if let Some((name, uid)) = pod {
        spec["boundObjectRef"] = serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid });
    }
    let body = serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec });
    let req = http::Request::post(format!("/api/v1/namespaces/{NS}/serviceaccounts/{sa}/token"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body)?)?;
    let answer: serde_json::Value = client.request(req).await?;
    Ok(answer["status"]["token"].as_str().ok_or("TokenRequest answered no token")?.to_owned())
}

/// Node objects and a pod of the node plugin's ServiceAccount on `node` (stored only: no kubelet
/// runs it); a token bound to that pod carries the node's name, as the plugin's does.
async fn node_plugin_token(plane: &ControlPlane, admin: &kube::Client, node: &str) -> Result<kube::Client> {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let nodes: Api<Node> = Api::all(admin.clone());
    let n: Node = serde_json::from_value(serde_json::json!({ "metadata": { "name": node } }))?;
    nodes.patch(node, &PatchParams::apply("thinpool-e2e").force(), &Patch::Apply(&n)).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let name = format!("plugin-{node}");
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "nodeName": node, "serviceAccountName": "thinpool-csi-node",
                  "containers": [{ "name": "thinpool-csi", "image": "thinpool-csi:e2e" }] }
    }))?;
    let pod = pods.patch(&name, &PatchParams::apply("thinpool-e2e").force(), &Patch::Apply(&p)).await?;
    let uid = pod.metadata.uid.ok_or("the pod has no uid")?;
    let t = token(admin, "thinpool-csi-node", Some((&name, &uid))).await?;
    plane.write_kubeconfig(node, &t)?;
    plane.client(node).await
}

/// Waits until the CRD `name` is established: before that its kind is not served.
async fn established(admin: &kube::Client, name: &str) -> Result {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    let start = Instant::now();
    loop {
        let c = crds.get(name).await?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        ensure(start.elapsed() < Duration::from_secs(30), format!("the CRD {name} was not established within 30 s"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn forbidden(r: std::result::Result<Option<String>, kube::Error>, says: &str) -> Result {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(says) => Ok(()),
        Err(e) => Err(format!("refused, but not as expected (403 saying {says:?}): {e}").into()),
        Ok(_) => Err(format!("allowed; expected 403 saying {says:?}").into()),
    }
}

async fn crd_as_served(plane: &ControlPlane) -> Result {
    let admin = plane.client("admin").await?;
    let api: Api<ThinPool> = Api::all(admin.clone());
    thinpool_csi::k8s::publisher::publish(&api, "table-node", &pool_status("table-node", 5 << 30)).await?;
    let req = http::Request::get("/apis/thinpool.csi.io/v1alpha1/thinpools/table-node")
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())?;
    let table: serde_json::Value = admin.request(req).await?;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .ok_or("no columnDefinitions")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure(
        columns == ["Name", "Node", "Data%", "Meta%", "Provisioned", "Volumes", "State", "Age"],
        format!("columns as served: {columns:?}"),
    )?;
    let cells = &table["rows"][0]["cells"];
    let want = serde_json::json!(["table-node", "table-node", 10.0, 6.25, "3Gi", 3, "Ready"]);
    for (i, w) in want.as_array().ok_or("want")?.iter().enumerate() {
        ensure(
            cells[i] == *w || cells[i].as_f64().zip(w.as_f64()).is_some_and(|(a, b)| a == b),
            format!("cell {i}: {} (want {w})", cells[i]),
        )?;
    }
    println!("  kubectl get thinpools: {columns:?} / {cells}");
    api.delete("table-node", &Default::default()).await?;
    Ok(())
}

async fn node_restriction(plane: &ControlPlane) -> Result {
    let admin = plane.client("admin").await?;
    let node1 = node_plugin_token(plane, &admin, "node-1").await?;
    let api: Api<ThinPool> = Api::all(node1.clone());
    let publish = |node: &'static str| {
        let api = api.clone();
        async move { thinpool_csi::k8s::publisher::publish(&api, node, &pool_status(node, 1 << 30)).await }
    };
    publish("node-1").await.map_err(|e| format!("node-1's plugin writing its own ThinPool: {e}"))?;
    // A new policy takes effect once the API server's admission plugin has loaded it (its informer
    // runs beside the request path): the first refusal is waited for, at most 30 s.
    let start = Instant::now();
    loop {
        let r = publish("node-2").await;
        if matches!(&r, Err(kube::Error::Api(s)) if s.code == 403) || start.elapsed() > Duration::from_secs(30) {
            forbidden(r, "may write only the ThinPool node-1, not node-2")?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  the policy refused its first write {:.2} s after it was applied", start.elapsed().as_secs_f64());
    // The API server type-checks the policy's expressions against the ThinPool schema.
    let policies: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
        )),
    );
    let policy = policies.get("thinpool-csi-node-restriction").await?;
    let warnings = &policy.data["status"]["typeChecking"]["expressionWarnings"];
    ensure(
        warnings.is_null() || warnings.as_array().is_some_and(Vec::is_empty),
        format!("type-checking warnings: {warnings}"),
    )?;
    // spec.nodeName is what the controller publishes capacity for.
    let moved = serde_json::json!({ "spec": { "nodeName": "node-2" } });
    let r = api.patch("node-1", &PatchParams::default(), &Patch::Merge(&moved)).await.map(|_| None);
    forbidden(r, "may not set spec.nodeName to node-2")?;
    // A token of the same ServiceAccount bound to no pod carries no node.
    let loose = token(&admin, "thinpool-csi-node", None).await?;
    plane.write_kubeconfig("unbound", &loose)?;
    let unbound: Api<ThinPool> = Api::all(plane.client("unbound").await?);
    forbidden(
        thinpool_csi::k8s::publisher::publish(&unbound, "node-1", &pool_status("node-1", 1)).await,
        "is not bound to a pod on a node",
    )?;
    // The administrator is not matched by the policy.
    let admin_api: Api<ThinPool> = Api::all(admin);
    thinpool_csi::k8s::publisher::publish(&admin_api, "node-2", &pool_status("node-2", 1)).await?;
    admin_api.delete("node-2", &Default::default()).await?;
    println!("  own ThinPool written; another node's, a moved spec.nodeName and an unbound token refused (403)");
    Ok(())
}

fn csi_binary() -> PathBuf {
    std::env::var_os("THINPOOL_CSI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(WORKSPACE).join("target/debug/thinpool-csi"))
}

struct Replica {
    name: String,
    child: std::process::Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller replica as the chart starts it; `metrics`: the port of its /metrics on loopback.
fn start_replica(plane: &ControlPlane, kubeconfig: &Path, name: &str, metrics: Option<u16>) -> Result<Replica> {
    let log = std::fs::File::create(plane.dir.path().join(format!("{name}.log")))?;
    let address = metrics.map_or(String::new(), |port| format!("127.0.0.1:{port}"));
    let child = std::process::Command::new(csi_binary())
        .args(["controller", "--namespace", NS, "--identity", name, "--metrics-address", &address])
        // As the chart starts it.
        .args(["--expand-claims", "true", "--label-snapshot-contents", "true"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", csi_binary().display()))?;
    Ok(Replica { name: name.into(), child })
}

/// node-1's CSIStorageCapacity objects: class -> (capacity in bytes, the text the API server returns).
async fn capacities(api: &Api<CSIStorageCapacity>, node: &str) -> Result<BTreeMap<String, (u64, String)>> {
    let mut out = BTreeMap::new();
    for c in api.list(&ListParams::default()).await?.items {
        let on = c
            .node_topology
            .as_ref()
            .and_then(|t| t.match_labels.as_ref())
            .and_then(|l| l.get(thinpool_csi::shared::TOPOLOGY_KEY));
        if on.map(String::as_str) == Some(node) {
            let text = c.capacity.as_ref().map_or(String::new(), |q| q.0.clone());
            out.insert(c.storage_class_name.clone(), (bytes_of(c.capacity.as_ref()), text));
        }
    }
    Ok(out)
}

/// Waits until every class's capacity for `node` is `bytes`; the time it took.
async fn capacity_becomes(
    api: &Api<CSIStorageCapacity>,
    node: &str,
    classes: usize,
    bytes: u64,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let caps = capacities(api, node).await?;
        if caps.len() == classes && caps.values().all(|(b, _)| *b == bytes) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("capacity for {node} did not become {bytes} bytes in {limit:?}: {caps:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn controller_end_to_end(plane: &ControlPlane) -> Result {
    let admin = plane.client("admin").await?;
    let controller_token = token(&admin, "thinpool-csi-controller", None).await?;
    let kubeconfig = plane.write_kubeconfig("controller", &controller_token)?;
    let node1 = plane.client("node-1").await?;
    let pools: Api<ThinPool> = Api::all(node1);
    let caps: Api<CSIStorageCapacity> = Api::namespaced(admin.clone(), NS);
    let classes = 2; // thinpool-ext4 and thinpool-xfs, from the manifests
                     // 5000000000 bytes: the API server returns the quantity as 5G.
    thinpool_csi::k8s::publisher::publish(&pools, "node-1", &pool_status("node-1", 5_000_000_000)).await?;
    let mut replicas = vec![
        start_replica(plane, &kubeconfig, "replica-a", None)?,
        start_replica(plane, &kubeconfig, "replica-b", None)?,
    ];
    let first = capacity_becomes(&caps, "node-1", classes, 5_000_000_000, Duration::from_secs(60)).await;
    let first = first.map_err(|e| format!("{e}; replica-a's log:\n{}", plane.log_tail("replica-a")))?;
    let read = capacities(&caps, "node-1").await?;
    println!(
        "  capacity written in {:.2} s after start: {:?}",
        first.as_secs_f64(),
        read.values().map(|(_, t)| t).collect::<Vec<_>>()
    );
    for c in caps.list(&ListParams::default()).await?.items {
        let managers: Vec<String> =
            c.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
        ensure(
            managers.iter().any(|m| m == thinpool_csi::k8s::controller::FIELD_MANAGER),
            format!("{:?} is managed by {managers:?}", c.metadata.name),
        )?;
    }
    // A change of the pool reaches both capacity objects.
    thinpool_csi::k8s::publisher::publish(&pools, "node-1", &pool_status("node-1", 3 << 30)).await?;
    let followed = capacity_becomes(&caps, "node-1", classes, 3 << 30, Duration::from_secs(30)).await?;
    println!("  a pool change reached its capacity objects in {:.2} s", followed.as_secs_f64());
    // The leader is SIGTERMed (as a pod deletion does): the other replica leads and follows.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(admin, NS);
    let lease = leases.get("thinpool-csi-controller").await?;
    let holder = lease.spec.and_then(|s| s.holder_identity).ok_or("no Lease holder")?;
    let at = replicas
        .iter()
        .position(|r| r.name == holder)
        .ok_or_else(|| format!("the Lease holder {holder} is no replica"))?;
    let mut leader = replicas.remove(at);
    let stopped = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(leader.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
    let _ = leader.child.wait();
    thinpool_csi::k8s::publisher::publish(&pools, "node-1", &pool_status("node-1", 2 << 30)).await?;
    capacity_becomes(&caps, "node-1", classes, 2 << 30, Duration::from_secs(60)).await?;
    println!(
        "  leader {holder} SIGTERMed: {} led and capacity followed a change {:.2} s later",
        replicas[0].name,
        stopped.elapsed().as_secs_f64()
    );
    // The new leader is killed (SIGKILL: no release): a follower takes over when the Lease runs
    // out (15 s after the last renewal, at most 2 s before the kill), then follows a change.
    let follower = start_replica(plane, &kubeconfig, "replica-e", None)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut leader = replicas.remove(0);
    let killed = Instant::now();
    leader.child.kill()?;
    let _ = leader.child.wait();
    thinpool_csi::k8s::publisher::publish(&pools, "node-1", &pool_status("node-1", 1 << 30)).await?;
    capacity_becomes(&caps, "node-1", classes, 1 << 30, Duration::from_secs(60))
        .await
        .map_err(|e| format!("{e}; replica-e's log:\n{}", plane.log_tail("replica-e")))?;
    println!(
        "  leader {} SIGKILLed: {} led and capacity followed a change {:.2} s later (Lease 15 s)",
        leader.name,
        follower.name,
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A VolumeSnapshotContent as an operator writes it (`handle`: a pre-provisioned one) or as the
/// snapshot-controller does (`volume`: a dynamic one).
fn snapshot_content(
    name: &str,
    driver: &str,
    source: serde_json::Value,
    labels: serde_json::Value,
) -> Result<DynamicObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "driver": driver,
            "deletionPolicy": "Retain",
            "source": source,
            "volumeSnapshotRef": { "name": format!("snap-{name}"), "namespace": "default" }
        }
    }))?)
}

/// Pre-provisioned snapshots: the controller, under the chart's RBAC, labels a content an operator
/// created with a snapshot handle of this driver with the node the handle names (what each node's
/// csi-snapshotter selects by), and leaves every other content as it is.
async fn preprovisioned_snapshot_contents(plane: &ControlPlane) -> Result {
    let admin = plane.client("admin").await?;
    let crds = Path::new(WORKSPACE).join("target/cluster/manifests/snapshot-crds");
    for kind in ["volumesnapshotcontents", "volumesnapshots", "volumesnapshotclasses"] {
        let file = crds.join(format!("snapshot.storage.k8s.io_{kind}.yaml"));
        let yaml = std::fs::read_to_string(&file).map_err(|e| {
            format!("{}: {e} (e2e/cluster/build.sh apiserver copies the snapshot CRDs)", file.display())
        })?;
        apply(&admin, &yaml, &[]).await?;
        established(&admin, &format!("{kind}.snapshot.storage.k8s.io")).await?;
    }
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent"),
        "volumesnapshotcontents",
    );
    let contents: Api<DynamicObject> = Api::all_with(admin.clone(), &resource);
    let driver = thinpool_csi::shared::PLUGIN_NAME;
    let label = thinpool_csi::k8s::snapshot_contents::LABEL_MANAGED_BY;
    let handle = |h: &str| serde_json::json!({ "snapshotHandle": h });
    let objects = [
        snapshot_content("pre", driver, handle("snap-1@node-1"), serde_json::json!({}))?,
        snapshot_content("pre-labelled", driver, handle("snap-2@node-1"), serde_json::json!({ label: "node-2" }))?,
        snapshot_content(
            "dynamic",
            driver,
            serde_json::json!({ "volumeHandle": "vol-1@node-1" }),
            serde_json::json!({}),
        )?,
        snapshot_content("other-driver", "hostpath.csi.k8s.io", handle("snap-3@node-1"), serde_json::json!({}))?,
    ];
    for o in &objects {
        contents.create(&kube::api::PostParams::default(), o).await?;
    }
    let controller_token = token(&admin, "thinpool-csi-controller", None).await?;
    let kubeconfig = plane.write_kubeconfig("controller", &controller_token)?;
    let _replica = start_replica(plane, &kubeconfig, "replica-c", None)?;
    let labels = |o: &DynamicObject| o.metadata.labels.clone().unwrap_or_default();
    // The Lease the last check's replicas held must run out first (15 s).
    let start = Instant::now();
    loop {
        let pre = contents.get("pre").await?;
        if let Some(node) = labels(&pre).get(label) {
            ensure(node == "node-1", format!("content pre labelled {label}={node}, not node-1"))?;
            println!(
                "  pre-provisioned content labelled with its node {:.1} s after the replica started",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "content pre was not labelled within 60 s; replica-c's log:\n{}",
                plane.log_tail("replica-c")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more pass at least (every 5 s), then nothing else may have changed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let expect = [("pre-labelled", Some("node-2")), ("dynamic", None), ("other-driver", None)];
    for (name, want) in expect {
        let got = labels(&contents.get(name).await?).get(label).cloned();
        ensure(got.as_deref() == want, format!("content {name}: {label} is {got:?}, expected {want:?}"))?;
    }
    for o in &objects {
        contents.delete(o.metadata.name.as_deref().unwrap_or_default(), &Default::default()).await?;
    }
    Ok(())
}

/// Where the checks keep the controller's scrapes for the alerts test (e2e/alerts).
fn scrapes_dir() -> PathBuf {
    Path::new(WORKSPACE).join("target/apiserver/metrics")
}

/// What the controller serves at /metrics on loopback `port`.
fn scrape(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("an HTTP answer without a body")?;
    ensure(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), format!("/metrics: {head}"))?;
    Ok(body.to_owned())
}

/// The value of an unlabelled series in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A node that stops reporting: the controller marks its ThinPool Stale (condition, no capacity
/// allowed there), posts a Warning Event on it and counts it in `thinpool_controller_stale_pools`.
/// The scrapes before and after are the alerts test's `controller-healthy` and `controller-stale`.
async fn stale_pool(plane: &ControlPlane) -> Result {
    let admin = plane.client("admin").await?;
    let pools: Api<ThinPool> = Api::all(admin.clone());
    for p in pools.list(&ListParams::default()).await?.items {
        pools.delete(p.metadata.name.as_deref().unwrap_or_default(), &Default::default()).await?;
    }
    thinpool_csi::k8s::publisher::publish(&pools, "node-1", &pool_status("node-1", 1 << 30)).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let token = token(&admin, "thinpool-csi-controller", None).await?;
    let kubeconfig = plane.write_kubeconfig("controller", &token)?;
    let _replica = start_replica(plane, &kubeconfig, "replica-d", Some(port))?;
    let log = || plane.log_tail("replica-d");
    // Leading (the last check's Lease runs out first) and one pass done over node-1 alone.
    let start = Instant::now();
    let healthy = loop {
        let text = scrape(port).unwrap_or_default();
        if sample(&text, "thinpool_controller_leader") == Some(1.0)
            && sample(&text, "thinpool_controller_pools") == Some(1.0)
        {
            break text;
        }
        ensure(start.elapsed() < Duration::from_secs(60), format!("replica-d did not lead within 60 s:\n{}", log()))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure(sample(&healthy, "thinpool_controller_stale_pools") == Some(0.0), "a stale pool counted with none stale")?;
    std::fs::create_dir_all(scrapes_dir())?;
    std::fs::write(scrapes_dir().join("controller-healthy.prom"), &healthy)?;

    // node-3's plugin last reported ten minutes ago (the chart's limit: 120 s).
    let mut old = pool_status("node-3", 1 << 30);
    old.last_heartbeat = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(600),
    ));
    thinpool_csi::k8s::publisher::publish(&pools, "node-3", &old).await?;
    let start = Instant::now();
    let stale = loop {
        let text = scrape(port).unwrap_or_default();
        if sample(&text, "thinpool_controller_stale_pools") == Some(1.0) {
            break text;
        }
        ensure(start.elapsed() < Duration::from_secs(30), format!("no stale pool counted within 30 s:\n{}", log()))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    std::fs::write(scrapes_dir().join("controller-stale.prom"), &stale)?;
    let status = pools.get("node-3").await?.status.ok_or("node-3 has no status")?;
    let stale_condition = status.conditions.iter().any(|c| c.type_ == "Stale" && c.status == "True");
    ensure(
        status.state == "Stale" && stale_condition && status.allowed_new_bytes == 0,
        format!(
            "node-3: state {}, conditions {:?}, allowed {}",
            status.state, status.conditions, status.allowed_new_bytes
        ),
    )?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(admin.clone());
    let start = Instant::now();
    let event = loop {
        let found = events.list(&ListParams::default()).await?.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("node-3")
                && e.reason.as_deref() == Some("Stale")
        });
        if let Some(e) = found {
            break e;
        }
        ensure(start.elapsed() < Duration::from_secs(30), format!("no Stale Event on node-3 within 30 s:\n{}", log()))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure(event.type_.as_deref() == Some("Warning"), format!("the Stale Event is {:?}, not a Warning", event.type_))?;
    println!("  node-3 marked Stale, Event: {}", event.note.unwrap_or_default());
    let caps: Api<CSIStorageCapacity> = Api::namespaced(admin, NS);
    let on_node3 = capacities(&caps, "node-3").await?;
    ensure(
        !on_node3.is_empty() && on_node3.values().all(|(bytes, _)| *bytes == 0),
        format!("node-3's capacity objects: {on_node3:?}, expected one per class, each 0"),
    )?;
    pools.delete("node-3", &Default::default()).await?;
    Ok(())
}

type Check = for<'a> fn(&'a ControlPlane) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result> + 'a>>;

const CHECKS: &[(&str, Check)] = &[
    ("crd_as_served", |p| Box::pin(crd_as_served(p))),
    ("node_restriction_policy", |p| Box::pin(node_restriction(p))),
    ("controller_end_to_end", |p| Box::pin(controller_end_to_end(p))),
    ("preprovisioned_snapshot_contents", |p| Box::pin(preprovisioned_snapshot_contents(p))),
    ("stale_pool", |p| Box::pin(stale_pool(p))),
];

fn main() -> ExitCode {
    let Some(bin) = server::binaries() else {
        if std::env::var_os("THINPOOL_APISERVER_REQUIRED").is_some() {
            println!("apiserver: target/cluster/bin has no etcd and kube-apiserver (e2e/cluster/build.sh apiserver)");
            return ExitCode::FAILURE;
        }
        println!(
            "apiserver suite: {} checks skipped: no etcd and kube-apiserver (bash e2e/cluster/build.sh apiserver)",
            CHECKS.len()
        );
        return ExitCode::SUCCESS;
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            println!("apiserver: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plane = match ControlPlane::start(&bin) {
        Ok(p) => p,
        Err(e) => {
            println!("apiserver: the control plane did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scrapes of an earlier run must not stand in for this one's (e2e/alerts reads them).
    let _ = std::fs::remove_dir_all(scrapes_dir());
    let (mut passed, mut failed) = (0, 0);
    let setup = runtime.block_on(async {
        let admin = plane.client("admin").await?;
        let crd = std::fs::read_to_string(Path::new(WORKSPACE).join("manifests/crds/thinpool.csi.io_thinpools.yaml"))?;
        apply(&admin, &crd, &[]).await?;
        established(&admin, "thinpools.thinpool.csi.io").await?;
        // The chart as users install it (manifests/thinpool-csi.yaml): RBAC, classes, CSIDriver and
        // the node-restriction policy; the workloads have no kubelet to run on.
        let chart = std::fs::read_to_string(Path::new(WORKSPACE).join("manifests/thinpool-csi.yaml"))?;
        // The snapshot classes need the snapshot CRDs, which the checks that use them install.
        let skip =
            ["DaemonSet", "Deployment", "PodDisruptionBudget", "VolumeSnapshotClass", "VolumeGroupSnapshotClass"];
        let applied = apply(&admin, &chart, &skip).await?;
        println!("  applied the CRD and {} objects of manifests/thinpool-csi.yaml", applied.len());
        Result::Ok(())
    });
    if let Err(e) = setup {
        println!("apiserver: setting up the chart's objects failed: {e}\n{}", plane.log_tail("kube-apiserver"));
        return ExitCode::FAILURE;
    }
    for (name, check) in CHECKS {
        let start = Instant::now();
        match runtime.block_on(check(&plane)) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1}s)", start.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED ({:.1}s): {e}", start.elapsed().as_secs_f64());
            }
        }
    }
    println!("apiserver: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
