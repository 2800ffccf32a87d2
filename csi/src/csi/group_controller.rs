//! CSI GroupController: volume group snapshots (`CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT`). Every
//! source volume must be on this node's pool; the engine cuts all members at one instant
//! (`engine::group`). Group and member ids are `<name>@<node>` like every other id.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::controller::{snapshot, timestamp};
use super::error::CsiError;
use super::lookup::{locate, Where};
use super::proto::{self, group_controller_server::GroupController};
use super::{observed, Driver};
use crate::dm::ThinPool;
use crate::engine::{Group, MadeGroup};
use crate::mount::Mounter;
use crate::names::Name;
use crate::shared::ids::{NameRef, ObjectId};
use crate::store::Kind;

/// Parameters reserved for the CO (`csi.storage.k8s.io/…`): the sidecars strip theirs, any other
/// is ignored as the spec allows. The driver itself takes none.
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";

pub struct GroupControllerService<P: ThinPool, M: Mounter> {
    pub driver: Arc<Driver<P, M>>,
}

/// The one capability: create, delete and get group snapshots.
pub fn capabilities() -> Vec<proto::GroupControllerServiceCapability> {
    use proto::group_controller_service_capability::{self as gcc, rpc::Type};
    vec![proto::GroupControllerServiceCapability {
        r#type: Some(gcc::Type::Rpc(gcc::Rpc { r#type: Type::CreateDeleteGetVolumeGroupSnapshot as i32 })),
    }]
}

/// The driver takes no group snapshot parameters: one it does not know is refused, so that a
/// typo in a VolumeGroupSnapshotClass is seen at once.
fn check_parameters(parameters: &std::collections::HashMap<String, String>) -> Result<(), CsiError> {
    let mut unknown: Vec<&str> =
        parameters.keys().map(String::as_str).filter(|k| !k.starts_with(RESERVED_PREFIX)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(CsiError::invalid(format!(
        "parameters {}: thinpool.csi.io takes no group snapshot parameters; remove them from the VolumeGroupSnapshotClass",
        unknown.join(", ")
    )))
}

/// A group snapshot as CSI describes it; each member carries the group's id.
fn group_message(g: &Group, node: &str) -> proto::VolumeGroupSnapshot {
    proto::VolumeGroupSnapshot {
        group_snapshot_id: ObjectId::format(&g.record.name, node),
        snapshots: g.members.iter().map(|m| snapshot(m, node)).collect(),
        creation_time: Some(timestamp(g.record.created_unix)),
        ready_to_use: true,
    }
}

/// The group `id` names on this node (`None`: no such group, or an id that names nothing here).
/// Another node's group cannot be served here: `FAILED_PRECONDITION`. Blocking.
fn find<P: ThinPool, M: Mounter>(d: &Driver<P, M>, id: &str) -> Result<Option<Group>, CsiError> {
    let o = match locate(id, &d.node_id, "group_snapshot_id")? {
        Where::Here(o) => o,
        Where::Elsewhere(o) => {
            return Err(CsiError::FailedPrecondition(format!(
                "group snapshot {id} lives on node {}, not on {}",
                o.node_label(),
                d.node_id
            )))
        }
        Where::Nowhere(_) => return Ok(None),
    };
    Ok(match &o.name {
        NameRef::Full(name) => d.engine.get_group(name.as_str())?,
        NameRef::Digest { .. } => d.engine.list_groups()?.into_iter().find(|g| o.names(&g.record.name, &d.node_id)),
    })
}

/// `snapshot_ids`, when given, must be exactly the group's members (in any order).
fn check_members(g: &Group, node: &str, snapshot_ids: &[String]) -> Result<(), CsiError> {
    if snapshot_ids.is_empty() {
        return Ok(());
    }
    let mut have: Vec<String> = g.members.iter().map(|m| ObjectId::format(&m.name, node)).collect();
    let mut given = snapshot_ids.to_vec();
    have.sort();
    given.sort();
    if have == given {
        return Ok(());
    }
    Err(CsiError::invalid(format!(
        "snapshot_ids [{}] are not the snapshots of group snapshot {} [{}]",
        given.join(", "),
        g.record.name,
        have.join(", ")
    )))
}

#[tonic::async_trait]
impl<P: ThinPool + 'static, M: Mounter + 'static> GroupController for Arc<GroupControllerService<P, M>> {
    async fn group_controller_get_capabilities(
        &self,
        _req: Request<proto::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::GroupControllerGetCapabilitiesResponse>, Status> {
        observed(&self.driver, "GroupControllerGetCapabilities", "", async {
            Ok(proto::GroupControllerGetCapabilitiesResponse { capabilities: capabilities() })
        })
        .await
    }

    async fn create_volume_group_snapshot(
        &self,
        req: Request<proto::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<proto::CreateVolumeGroupSnapshotResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "CreateVolumeGroupSnapshot", &req.name.clone(), async {
            if req.name.is_empty() {
                return Err(CsiError::invalid("name is empty"));
            }
            let name = Name::new(&req.name).map_err(|e| CsiError::invalid(format!("name: {e}")))?;
            if req.source_volume_ids.is_empty() {
                return Err(CsiError::invalid("source_volume_ids is empty"));
            }
            check_parameters(&req.parameters)?;
            // Every source on this node: a group is cut in one pool.
            let mut sources = Vec::with_capacity(req.source_volume_ids.len());
            for id in &req.source_volume_ids {
                match locate(id, &self.driver.node_id, "source_volume_ids")? {
                    Where::Here(o) => sources.push(o),
                    Where::Elsewhere(o) => {
                        return Err(CsiError::FailedPrecondition(format!(
                            "source volume {id} lives on node {}, not on {}: a group snapshot's volumes must all be on one node",
                            o.node_label(),
                            self.driver.node_id
                        )))
                    }
                    Where::Nowhere(why) => return Err(CsiError::NotFound(format!("volume {id} not found: {why}"))),
                }
            }
            let _guard = self.driver.in_flight.claim(Kind::Snapshot, &ObjectId::format(&name, &self.driver.node_id))?;
            let made = self
                .driver
                .blocking(move |d| {
                    let mut names = Vec::with_capacity(sources.len());
                    for o in &sources {
                        names.push(d.must_resolve(Kind::Volume, o)?.to_string());
                    }
                    Ok(d.engine.create_group_snapshot(name.as_str(), &names)?)
                })
                .await?;
            if let MadeGroup::Created(g, held) = &made {
                tracing::debug!(group = %g.record.name, members = g.members.len(), "group snapshot made");
                self.driver.metrics.observe_group_hold(held.as_secs_f64());
            }
            let group = group_message(made.group(), &self.driver.node_id);
            Ok(proto::CreateVolumeGroupSnapshotResponse { group_snapshot: Some(group) })
        })
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        req: Request<proto::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<proto::DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "DeleteVolumeGroupSnapshot", &req.group_snapshot_id.clone(), async {
            if req.group_snapshot_id.is_empty() {
                return Err(CsiError::invalid("group_snapshot_id is empty"));
            }
            let _guard = self.driver.in_flight.claim(Kind::Snapshot, &req.group_snapshot_id)?;
            self.driver
                .blocking(move |d| {
                    // Gone already, or never ours: done (the spec's idempotent delete).
                    let Some(g) = find(d, &req.group_snapshot_id)? else { return Ok(()) };
                    check_members(&g, &d.node_id, &req.snapshot_ids)?;
                    d.engine.delete_group(g.record.name.as_str())?;
                    Ok(())
                })
                .await?;
            Ok(proto::DeleteVolumeGroupSnapshotResponse {})
        })
        .await
    }

    async fn get_volume_group_snapshot(
        &self,
        req: Request<proto::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<proto::GetVolumeGroupSnapshotResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "GetVolumeGroupSnapshot", &req.group_snapshot_id.clone(), async {
            if req.group_snapshot_id.is_empty() {
                return Err(CsiError::invalid("group_snapshot_id is empty"));
            }
            let id = req.group_snapshot_id.clone();
            let g = self
                .driver
                .blocking(move |d| {
                    let g = find(d, &req.group_snapshot_id)?;
                    if let Some(g) = &g {
                        check_members(g, &d.node_id, &req.snapshot_ids)?;
                    }
                    Ok(g)
                })
                .await?
                .ok_or_else(|| CsiError::NotFound(format!("group snapshot {id} not found")))?;
            Ok(proto::GetVolumeGroupSnapshotResponse { group_snapshot: Some(group_message(&g, &self.driver.node_id)) })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reserved_parameters_pass() {
        let p = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(check_parameters(&p(&[])).is_ok());
        assert!(check_parameters(&p(&[("csi.storage.k8s.io/group-snapshotter-secret-name", "s")])).is_ok());
        let e = check_parameters(&p(&[("zeta", "1"), ("alpha", "2")])).unwrap_err();
        assert!(matches!(&e, CsiError::InvalidArgument(m) if m.starts_with("parameters alpha, zeta:")), "{e}");
    }
}
