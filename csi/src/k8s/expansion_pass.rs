//! One expansion pass over the API: reads this driver's PersistentVolumes and the claims bound to
//! them (the StorageClasses come from the capacity pass that just listed them), plans each claim (`expansion::plan`) and writes the plan: the
//! volume's capacity, the claim's status (allocated size, resize status, the
//! `FileSystemResizePending` condition). The Events to raise are returned to the caller, which holds
//! the recorder. Sizes are compared by value, as the API server may rewrite quantities.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::controller::{bytes_of, ControllerError, FIELD_MANAGER};
use super::expansion::{
    self, Claim, ClaimEvent, Class, Plan, Volume, FS_RESIZE_PENDING, NODE_RESIZE_PENDING, RESIZE_INFEASIBLE,
};
use crate::shared::{PLUGIN_NAME, TOPOLOGY_KEY};

/// What one pass did, and the Events to raise (on the claim each reference names).
#[derive(Debug, Default)]
pub struct ExpansionReport {
    pub expanded: usize,
    pub refused: usize,
    pub events: Vec<(ObjectReference, ClaimEvent)>,
}

fn storage(map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>) -> Option<u64> {
    map.and_then(|m| m.get("storage")).map(|q| bytes_of(Some(q)))
}

/// The node a volume of ours lives on: its required node affinity on our topology key.
fn node_of(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == TOPOLOGY_KEY && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

fn volume_view(pv: &PersistentVolume) -> Option<Volume> {
    let spec = pv.spec.as_ref()?;
    Some(Volume {
        name: pv.metadata.name.clone()?,
        ours: spec.csi.as_ref().is_some_and(|c| c.driver == PLUGIN_NAME),
        capacity: storage(spec.capacity.as_ref()).unwrap_or(0),
        node: node_of(pv),
    })
}

fn claim_view(pvc: &PersistentVolumeClaim) -> Claim {
    let spec = pvc.spec.clone().unwrap_or_default();
    let status = pvc.status.clone().unwrap_or_default();
    Claim {
        namespace: pvc.metadata.namespace.clone().unwrap_or_default(),
        name: pvc.metadata.name.clone().unwrap_or_default(),
        bound: status.phase.as_deref() == Some("Bound"),
        volume_name: spec.volume_name.clone(),
        storage_class: spec.storage_class_name.clone(),
        requested: spec.resources.as_ref().and_then(|r| storage(r.requests.as_ref())).unwrap_or(0),
        capacity: storage(status.capacity.as_ref()),
        allocated: storage(status.allocated_resources.as_ref()),
        resize_status: status.allocated_resource_statuses.as_ref().and_then(|s| s.get("storage").cloned()),
    }
}

fn reference(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: pvc.metadata.name.clone(),
        namespace: pvc.metadata.namespace.clone(),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The claim's conditions with `FileSystemResizePending` set (and any earlier one replaced).
fn conditions_with_fs_pending(pvc: &PersistentVolumeClaim, now: &Time) -> Vec<PersistentVolumeClaimCondition> {
    let mut conditions: Vec<PersistentVolumeClaimCondition> = pvc
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != FS_RESIZE_PENDING && c.type_ != "Resizing")
        .collect();
    conditions.push(PersistentVolumeClaimCondition {
        type_: FS_RESIZE_PENDING.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        message: Some("Waiting for user to (re-)start a pod to finish file system resize of volume on node.".into()),
        ..Default::default()
    });
    conditions
}

fn write_err(verb: &'static str, name: String) -> impl FnOnce(kube::Error) -> ControllerError {
    move |source| ControllerError::Expansion { verb, name, source }
}

fn params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// Merge-patches a claim's status subresource.
async fn patch_claim(
    api: &Api<PersistentVolumeClaim>,
    name: &str,
    status: serde_json::Value,
    verb: &'static str,
    who: &str,
) -> Result<(), ControllerError> {
    api.patch_status(name, &params(), &Patch::Merge(status)).await.map_err(write_err(verb, who.to_owned()))?;
    Ok(())
}

/// One pass. `room` is each node's allowed new provisioning (fresh pools only); `classes` every
/// StorageClass by name.
pub async fn expansion_pass(
    client: &Client,
    room: &BTreeMap<String, u64>,
    classes: &BTreeMap<String, Class>,
    now: &Time,
) -> Result<ExpansionReport, ControllerError> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: BTreeMap<String, Volume> = pvs
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::List { what: "PersistentVolumes", source })?
        .items
        .iter()
        .filter_map(volume_view)
        .filter(|v| v.ours)
        .map(|v| (v.name.clone(), v))
        .collect();
    if volumes.is_empty() {
        return Ok(ExpansionReport::default());
    }
    let all_claims = claims
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::List { what: "PersistentVolumeClaims", source })?
        .items;
    let mut report = ExpansionReport::default();
    for pvc in &all_claims {
        let claim = claim_view(pvc);
        let Some(volume) = claim.volume_name.as_ref().and_then(|n| volumes.get(n)) else { continue };
        let class = claim.storage_class.as_ref().and_then(|c| classes.get(c));
        let pool_room = volume.node.as_ref().and_then(|n| room.get(n)).copied();
        let claims_ns: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
        let who = format!("{}/{}", claim.namespace, claim.name);
        match expansion::plan(&claim, Some(volume), class, pool_room) {
            Plan::Nothing => {}
            Plan::Expand { volume, bytes, events } => {
                let size = bytes.to_string();
                pvs.patch(&volume, &params(), &Patch::Merge(json!({ "spec": { "capacity": { "storage": size } } })))
                    .await
                    .map_err(write_err("expanding", volume.clone()))?;
                let status = json!({ "status": {
                    "allocatedResources": { "storage": size },
                    "allocatedResourceStatuses": { "storage": NODE_RESIZE_PENDING },
                    "conditions": conditions_with_fs_pending(pvc, now),
                }});
                patch_claim(&claims_ns, &claim.name, status, "marking for node expansion", &who).await?;
                if events.is_empty() {
                    tracing::info!(claim = %who, volume = %volume, bytes, "volume raised to the size its claim was marked with");
                } else {
                    tracing::info!(claim = %who, volume = %volume, bytes, "claim marked for expansion on its node");
                }
                report.expanded += 1;
                report.events.extend(events.into_iter().map(|e| (reference(pvc), e)));
            }
            Plan::Infeasible { volume, requested, event } => {
                let status = json!({ "status": {
                    "allocatedResources": { "storage": requested.to_string() },
                    "allocatedResourceStatuses": { "storage": RESIZE_INFEASIBLE },
                }});
                patch_claim(&claims_ns, &claim.name, status, "refusing expansion of", &who).await?;
                tracing::warn!(claim = %who, volume = %volume, reason = %event.note, "expansion refused");
                report.refused += 1;
                report.events.push((reference(pvc), event));
            }
            Plan::ClearInfeasible { capacity, .. } => {
                let status = json!({ "status": {
                    "allocatedResources": { "storage": capacity.to_string() },
                    "allocatedResourceStatuses": { "storage": null },
                }});
                patch_claim(&claims_ns, &claim.name, status, "clearing the refused expansion of", &who).await?;
                tracing::info!(claim = %who, bytes = capacity, "refused expansion cleared: the request is back to what the claim holds");
            }
        }
    }
    Ok(report)
}
