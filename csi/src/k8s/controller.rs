//! The capacity controller's reconcile pass: reads every `ThinPool`, the StorageClasses of this
//! driver and the `CSIStorageCapacity` objects it owns, marks pools whose node stopped reporting
//! `Stale`, and creates, updates or deletes capacity objects until there is exactly one true
//! object per (class, pool). Capacity objects are owned by their StorageClass, so deleting the
//! class garbage-collects them even while no controller runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};

use super::capacity::{self, Action, CapacityObject, PoolView, LABEL_CLASS, LABEL_MANAGED_BY, LABEL_NODE, MANAGED_BY};
use super::crd::ThinPool;
use super::expansion::Class;
use super::status;
use crate::shared::{PLUGIN_NAME, TOPOLOGY_KEY};

pub const FIELD_MANAGER: &str = "thinpool-csi-controller";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_on_state_changes_only() {
        let cur = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let mut prev = BTreeMap::new();
        let e = pool_events(&prev, &cur(&[("n1", "Ready"), ("n2", "DataPressure")]));
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0.as_str(), e[0].1, e[0].2.as_str()), ("n2", true, "DataPressure"));
        prev.insert("n1".to_owned(), "Ready".to_owned());
        prev.insert("n2".to_owned(), "DataPressure".to_owned());
        assert!(pool_events(&prev, &cur(&[("n1", "Ready"), ("n2", "DataPressure")])).is_empty());
        let e = pool_events(&prev, &cur(&[("n1", "Stale"), ("n2", "Ready")]));
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].1, e[0].2.as_str()), (true, "Stale"));
        assert_eq!((e[1].1, e[1].2.as_str()), (false, "Recovered"));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("marking pool {pool} stale: {source}")]
    MarkStale {
        pool: String,
        #[source]
        source: kube::Error,
    },
    #[error("{verb} CSIStorageCapacity {name}: {source}")]
    Write {
        verb: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind}s: {source}")]
    ListContents {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("labelling {kind} {name} with its node: {source}")]
    LabelContent {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{verb} {name}: {source}")]
    Expansion {
        verb: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub pools: usize,
    pub stale_pools: usize,
    pub newly_stale: Vec<String>,
    /// Each pool's one-word state after this pass (name, state).
    pub states: Vec<(String, String)>,
    /// Each pool's uid, for the Events about it (`kubectl describe` shows only Events whose
    /// reference carries the object's uid).
    pub uids: BTreeMap<String, String>,
    /// How much more each node's pool may provision (fresh pools only), for expansion plans.
    pub room: BTreeMap<String, u64>,
    /// The node of every pool, stale or not.
    pub nodes: Vec<String>,
    /// Every StorageClass by name, as the expansion plans read it.
    pub classes: BTreeMap<String, Class>,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

fn quantity(bytes: u64) -> Quantity {
    Quantity(bytes.to_string())
}

/// The bytes a Quantity stands for, in any form the API server may return it in (it
/// canonicalises `5000000000` to `5G`): plain, decimal and binary suffixes, exponents. A value
/// that is missing or unreadable is `u64::MAX`, which never equals a planned size, so the object
/// is rewritten with a value we wrote.
pub fn bytes_of(q: Option<&Quantity>) -> u64 {
    q.and_then(|q| kube_quantity::ParsedQuantity::try_from(q).ok()).and_then(|p| p.to_bytes_u64()).unwrap_or(u64::MAX)
}

/// A capacity object we own, as the pure planner sees it (`None` for one without our labels).
fn view(obj: &CSIStorageCapacity) -> Option<CapacityObject> {
    let labels = obj.metadata.labels.as_ref()?;
    Some(CapacityObject {
        name: obj.metadata.name.clone()?,
        storage_class: obj.storage_class_name.clone(),
        node: labels.get(LABEL_NODE)?.clone(),
        capacity: bytes_of(obj.capacity.as_ref()),
        maximum_volume_size: bytes_of(obj.maximum_volume_size.as_ref()),
    })
}

fn object(d: &CapacityObject, namespace: &str, owner: Option<&StorageClass>) -> CSIStorageCapacity {
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_CLASS.to_owned(), d.storage_class.clone()),
        (LABEL_NODE.to_owned(), d.node.clone()),
    ]);
    let owner_references = owner.and_then(|c| {
        Some(vec![OwnerReference {
            api_version: "storage.k8s.io/v1".into(),
            kind: "StorageClass".into(),
            name: c.metadata.name.clone()?,
            uid: c.metadata.uid.clone()?,
            ..Default::default()
        }])
    });
    CSIStorageCapacity {
        metadata: ObjectMeta {
            name: Some(d.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references,
            ..Default::default()
        },
        storage_class_name: d.storage_class.clone(),
        node_topology: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(TOPOLOGY_KEY.to_owned(), d.node.clone())])),
            ..Default::default()
        }),
        capacity: Some(quantity(d.capacity)),
        maximum_volume_size: Some(quantity(d.maximum_volume_size)),
    }
}

pub(crate) fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// The reference an Event about a pool carries: with the pool's uid, without which
/// `kubectl describe thinpool` does not show the Event.
pub fn pool_reference(pool: &str, uid: Option<&String>) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", ThinPool::group(&()), ThinPool::version(&()))),
        kind: Some(ThinPool::kind(&()).into_owned()),
        name: Some(pool.to_owned()),
        uid: uid.cloned(),
        ..Default::default()
    }
}

/// An Event of ours: Warning or Normal, with its reason, note and action.
pub fn event(warning: bool, reason: String, note: String, action: &str) -> Event {
    Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason,
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

/// Publishes Events; one the API refuses is logged, never fatal.
pub async fn publish_events(recorder: &Recorder, events: impl IntoIterator<Item = (ObjectReference, Event)>) {
    for (reference, e) in events {
        if let Err(err) = recorder.publish(&e, &reference).await {
            tracing::warn!(error = %err, object = ?reference.name, reason = %e.reason, "publishing an event");
        }
    }
}

/// An Event to raise for a pool: (pool, warning?, reason, note).
pub type PoolEvent = (String, bool, String, String);

/// Events for pools whose state changed since the last pass (or that are first seen unhealthy):
/// a Warning when a pool enters Stale, NeedsCheck, ReadOnly, DataPressure or MetadataPressure,
/// a Normal `Recovered` when it is Ready again.
pub fn pool_events(previous: &BTreeMap<String, String>, current: &[(String, String)]) -> Vec<PoolEvent> {
    let mut out = Vec::new();
    for (pool, state) in current {
        let before = previous.get(pool).map(String::as_str);
        if before == Some(state.as_str()) || state.is_empty() {
            continue;
        }
        match state.as_str() {
            status::READY => {
                if before.is_some_and(|b| b != status::READY) {
                    out.push((pool.clone(), false, "Recovered".to_owned(), format!("pool {pool} is Ready again")));
                }
            }
            s => {
                let note = match s {
                    status::STALE => {
                        format!("the node of pool {pool} stopped reporting; no new volumes are placed there")
                    }
                    status::NEEDS_CHECK => {
                        format!("pool {pool} needs a metadata check (thin_check) and takes no new volumes")
                    }
                    status::READ_ONLY => format!("pool {pool} is read-only or out of data space"),
                    status::DATA_PRESSURE => {
                        format!("pool {pool} data fill is above its limit; no new volumes are placed there")
                    }
                    _ => format!("pool {pool} metadata fill is above its limit; no new volumes are placed there"),
                };
                out.push((pool.clone(), true, s.to_owned(), note));
            }
        }
    }
    out
}

/// One reconcile pass over the whole cluster.
pub async fn reconcile(
    client: &Client,
    namespace: &str,
    stale_after_secs: i64,
    now: &Time,
) -> Result<PassReport, ControllerError> {
    let pools_api: Api<ThinPool> = Api::all(client.clone());
    let classes_api: Api<StorageClass> = Api::all(client.clone());
    let caps_api: Api<CSIStorageCapacity> = Api::namespaced(client.clone(), namespace);
    let pools = pools_api
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::List { what: "ThinPools", source })?
        .items;
    let all_classes = classes_api
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::List { what: "StorageClasses", source })?
        .items;
    // Every class, for the expansion pass (a claim's class decides whether it may grow).
    let expansion_classes = all_classes
        .iter()
        .filter_map(|c| {
            Some((c.metadata.name.clone()?, Class { allow_expansion: c.allow_volume_expansion == Some(true) }))
        })
        .collect();
    let classes: Vec<StorageClass> = all_classes.into_iter().filter(|c| c.provisioner == PLUGIN_NAME).collect();
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let existing = caps_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ControllerError::List { what: "CSIStorageCapacities", source })?
        .items;

    let mut report = PassReport { pools: pools.len(), classes: expansion_classes, ..Default::default() };
    let mut views = Vec::new();
    for pool in &pools {
        let Some(name) = pool.metadata.name.clone() else { continue };
        let stale = status::is_stale(pool.status.as_ref(), now, stale_after_secs);
        if stale {
            report.stale_pools += 1;
            let already = pool.status.as_ref().is_some_and(|s| s.state == status::STALE);
            if !already {
                let marked = status::mark_stale(&pool.status.clone().unwrap_or_default(), now, stale_after_secs);
                let patch = serde_json::json!({ "status": marked });
                pools_api
                    .patch_status(&name, &patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| ControllerError::MarkStale { pool: name.clone(), source })?;
                report.newly_stale.push(name.clone());
            }
        }
        let state = if stale {
            status::STALE.to_owned()
        } else {
            pool.status.as_ref().map_or_else(String::new, |s| s.state.clone())
        };
        report.states.push((name.clone(), state));
        report.nodes.push(pool.spec.node_name.clone());
        if let Some(uid) = &pool.metadata.uid {
            report.uids.insert(name.clone(), uid.clone());
        }
        if !stale {
            if let Some(s) = &pool.status {
                report.room.insert(pool.spec.node_name.clone(), s.allowed_new_bytes);
            }
        }
        views.push(PoolView {
            node: pool.spec.node_name.clone(),
            allowed_new_bytes: pool.status.as_ref().map_or(0, |s| s.allowed_new_bytes),
            stale,
        });
    }
    let class_names: Vec<String> = classes.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let desired = capacity::desired(&class_names, &views);
    let current: Vec<CapacityObject> = existing.iter().filter_map(view).collect();
    for action in capacity::plan(&desired, &current) {
        match action {
            Action::Create(d) => {
                let owner = classes.iter().find(|c| c.metadata.name.as_deref() == Some(d.storage_class.as_str()));
                caps_api
                    .create(
                        &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                        &object(&d, namespace, owner),
                    )
                    .await
                    .map_err(|source| ControllerError::Write { verb: "creating", name: d.name.clone(), source })?;
                report.created += 1;
            }
            Action::Update(d) => {
                let patch = serde_json::json!({ "capacity": d.capacity.to_string(), "maximumVolumeSize": d.maximum_volume_size.to_string() });
                caps_api
                    .patch(&d.name, &patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| ControllerError::Write { verb: "updating", name: d.name.clone(), source })?;
                report.updated += 1;
            }
            Action::Delete { name } => {
                match caps_api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    // Gone already (e.g. garbage-collected with its class): done.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(source) => return Err(ControllerError::Write { verb: "deleting", name, source }),
                }
                report.deleted += 1;
            }
        }
    }
    Ok(report)
}
