//! CSI Controller, run on the node that owns the pool (the provisioner and snapshotter sidecars
//! in node-deployment mode). Volumes and snapshots are named by the CO; ids are `<name>@<node>`
//! and every volume carries this node's topology, so deletes are routed back here.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::CsiError;
use super::lookup::{locate, Where};
use super::proto::{self, controller_server::Controller};
use super::validate;
use super::{observed, pagination, Driver};
use crate::dm::ThinPool;
use crate::engine::PoolState;
use crate::mount::Mounter;
use crate::names::Name;
use crate::shared::ids::ObjectId;
use crate::shared::TOPOLOGY_KEY;
use crate::store::{Kind, Record, Source};

pub struct ControllerService<P: ThinPool, M: Mounter> {
    pub driver: Arc<Driver<P, M>>,
}

pub(super) fn timestamp(unix: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: i64::try_from(unix).unwrap_or(i64::MAX), nanos: 0 }
}

fn bytes_i64(b: u64) -> i64 {
    i64::try_from(b).unwrap_or(i64::MAX)
}

impl<P: ThinPool + 'static, M: Mounter + 'static> ControllerService<P, M> {
    fn volume(
        &self,
        r: &Record,
        context: HashMap<String, String>,
        source: Option<proto::VolumeContentSource>,
    ) -> proto::Volume {
        proto::Volume {
            capacity_bytes: bytes_i64(r.size_bytes),
            volume_id: ObjectId::format(&r.name, &self.driver.node_id),
            volume_context: context,
            content_source: source,
            accessible_topology: vec![validate::this_node(&self.driver.node_id)],
        }
    }

    fn snapshot(&self, r: &Record) -> proto::Snapshot {
        snapshot(r, &self.driver.node_id)
    }

    /// An id (the request's `field`) of an object on this node; `None` when it names nothing.
    /// Another node's object cannot be served here: `FAILED_PRECONDITION`.
    fn local(&self, id: &str, field: &str) -> Result<Option<ObjectId>, CsiError> {
        match locate(id, &self.driver.node_id, field)? {
            Where::Here(o) => Ok(Some(o)),
            Where::Elsewhere(o) => Err(CsiError::FailedPrecondition(format!(
                "{id} lives on node {}, not on {}",
                o.node_label(),
                self.driver.node_id
            ))),
            Where::Nowhere(_) => Ok(None),
        }
    }

    /// Like `local`, but an id that names nothing is `NOT_FOUND`.
    fn must_local(&self, id: &str, field: &str, kind: Kind) -> Result<ObjectId, CsiError> {
        self.local(id, field)?.ok_or_else(|| CsiError::NotFound(format!("{kind} {id} not found")))
    }

    fn condition(&self) -> Result<proto::VolumeCondition, CsiError> {
        Ok(match self.driver.engine.pool_state()? {
            PoolState::Rw => proto::VolumeCondition { abnormal: false, message: "pool is rw".into() },
            s => proto::VolumeCondition { abnormal: true, message: format!("the node's thin pool is {s}") },
        })
    }
}

/// A snapshot as CSI describes it; a member of a group snapshot carries the group's id.
pub(super) fn snapshot(r: &Record, node: &str) -> proto::Snapshot {
    let source = match &r.source {
        Some(Source::Volume(v)) => ObjectId::format(v, node),
        _ => String::new(),
    };
    proto::Snapshot {
        size_bytes: bytes_i64(r.size_bytes),
        snapshot_id: ObjectId::format(&r.name, node),
        source_volume_id: source,
        creation_time: Some(timestamp(r.created_unix)),
        ready_to_use: true,
        group_snapshot_id: r.group.as_ref().map(|g| ObjectId::format(g, node)).unwrap_or_default(),
    }
}

/// Deletes what `id` names on this node; nothing there is success (the spec's idempotent delete).
fn delete<P: ThinPool, M: Mounter>(d: &Driver<P, M>, kind: Kind, id: &ObjectId) -> Result<(), CsiError> {
    if let Some(name) = d.resolve(kind, id)? {
        d.engine.delete(kind, name.as_str())?;
    }
    Ok(())
}

#[tonic::async_trait]
impl<P: ThinPool + 'static, M: Mounter + 'static> Controller for Arc<ControllerService<P, M>> {
    async fn create_volume(
        &self,
        req: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "CreateVolume", &req.name, async {
            let v = validate::new_volume(&req, &self.driver.node_id)?;
            let _guard = self.driver.in_flight.claim(Kind::Volume, &ObjectId::format(&v.name, &self.driver.node_id))?;
            let context = v.context();
            let record = self
                .driver
                .blocking(move |d| {
                    let source = match &v.source {
                        None => None,
                        Some((kind, id)) => Some(d.must_find(*kind, id)?),
                    };
                    let block = d.engine.pool().info().block_bytes();
                    let size = validate::volume_size(
                        v.range.as_ref(),
                        block,
                        source.as_ref().map(|r| r.size_bytes),
                        v.min_bytes(),
                    )?;
                    let from = source.map(|r| match r.kind {
                        Kind::Snapshot => Source::Snapshot(r.name),
                        Kind::Volume => Source::Volume(r.name),
                    });
                    Ok(d.engine.create_volume(v.name.as_str(), size, from)?.record().clone())
                })
                .await?;
            Ok(proto::CreateVolumeResponse {
                volume: Some(self.volume(&record, context, req.volume_content_source.clone())),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        req: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "DeleteVolume", &req.volume_id.clone(), async {
            // An id that names nothing names a volume that does not exist: deleted already.
            let Some(id) = self.local(&req.volume_id, "volume_id")? else {
                return Ok(proto::DeleteVolumeResponse {});
            };
            let _guard = self.driver.in_flight.claim(Kind::Volume, &req.volume_id)?;
            self.driver.blocking(move |d| delete(d, Kind::Volume, &id)).await?;
            Ok(proto::DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<proto::ControllerPublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerPublishVolumeResponse>, Status> {
        Err(CsiError::Unimplemented(
            "volumes are node-local; there is no controller publish (attachRequired: false)".into(),
        )
        .into())
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<proto::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerUnpublishVolumeResponse>, Status> {
        Err(CsiError::Unimplemented(
            "volumes are node-local; there is no controller unpublish (attachRequired: false)".into(),
        )
        .into())
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<proto::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<proto::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "ValidateVolumeCapabilities", &req.volume_id.clone(), async {
            let id = self.must_local(&req.volume_id, "volume_id", Kind::Volume)?;
            if req.volume_capabilities.is_empty() {
                return Err(CsiError::invalid("volume_capabilities is empty"));
            }
            self.driver
                .blocking(move |d| {
                    d.must_find(Kind::Volume, &id)?;
                    Ok(())
                })
                .await?;
            if let Err(e) = validate::fs_param(&req.parameters) {
                return Ok(proto::ValidateVolumeCapabilitiesResponse { confirmed: None, message: e.to_string() });
            }
            if !req.mutable_parameters.is_empty() {
                let message = "thinpool.csi.io takes no mutable parameters (VolumeAttributesClass is not supported)";
                return Ok(proto::ValidateVolumeCapabilitiesResponse { confirmed: None, message: message.into() });
            }
            Ok(match validate::capabilities(&req.volume_capabilities) {
                Err(e) => proto::ValidateVolumeCapabilitiesResponse { confirmed: None, message: e.to_string() },
                Ok(_) => proto::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(proto::validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: Default::default(),
                    }),
                    message: String::new(),
                },
            })
        })
        .await
    }

    async fn list_volumes(
        &self,
        req: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "ListVolumes", "", async {
            let me = self.clone();
            let (records, condition) =
                self.driver.blocking(move |d| Ok((d.engine.list(Kind::Volume)?, me.condition()?))).await?;
            let mut entries = Vec::new();
            for r in &records {
                entries.push(proto::list_volumes_response::Entry {
                    volume: Some(self.volume(r, HashMap::new(), None)),
                    status: Some(proto::list_volumes_response::VolumeStatus {
                        published_node_ids: vec![],
                        volume_condition: Some(condition.clone()),
                    }),
                });
            }
            let key = |e: &proto::list_volumes_response::Entry| {
                e.volume.as_ref().map_or("", |v| v.volume_id.as_str()).to_owned()
            };
            let keyed: Vec<(String, proto::list_volumes_response::Entry)> =
                entries.into_iter().map(|e| (key(&e), e)).collect();
            let (page, next) = pagination::page(keyed, |(k, _)| k.as_str(), &req.starting_token, req.max_entries)?;
            Ok(proto::ListVolumesResponse { entries: page.into_iter().map(|(_, e)| e).collect(), next_token: next })
        })
        .await
    }

    async fn get_capacity(
        &self,
        req: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "GetCapacity", "", async {
            validate::fs_param(&req.parameters)?;
            let zero = proto::GetCapacityResponse {
                available_capacity: 0,
                maximum_volume_size: Some(0),
                minimum_volume_size: None,
            };
            if let Some(t) = &req.accessible_topology {
                if t.segments.get(TOPOLOGY_KEY) != Some(&self.driver.node_id) {
                    return Ok(zero);
                }
            }
            if req.volume_capabilities.iter().any(|c| validate::capability(c).is_err()) {
                return Ok(zero);
            }
            let cap = self.driver.blocking(|d| Ok(d.engine.capacity()?)).await?;
            let bytes = bytes_i64(cap.allowed_new_bytes);
            Ok(proto::GetCapacityResponse {
                available_capacity: bytes,
                maximum_volume_size: Some(bytes),
                minimum_volume_size: None,
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        observed(&self.driver, "ControllerGetCapabilities", "", async {
            Ok(proto::ControllerGetCapabilitiesResponse { capabilities: super::capabilities::controller() })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        req: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "CreateSnapshot", &req.source_volume_id.clone(), async {
            if req.name.is_empty() {
                return Err(CsiError::invalid("name is empty"));
            }
            let name = Name::new(&req.name).map_err(|e| CsiError::invalid(format!("name: {e}")))?;
            if req.source_volume_id.is_empty() {
                return Err(CsiError::invalid("source_volume_id is empty"));
            }
            let source = self.must_local(&req.source_volume_id, "source_volume_id", Kind::Volume)?;
            let _guard = self.driver.in_flight.claim(Kind::Snapshot, &ObjectId::format(&name, &self.driver.node_id))?;
            let record = self
                .driver
                .blocking(move |d| {
                    let source = d.must_resolve(Kind::Volume, &source)?;
                    Ok(d.engine.create_snapshot(name.as_str(), source.as_str())?.record().clone())
                })
                .await?;
            Ok(proto::CreateSnapshotResponse { snapshot: Some(self.snapshot(&record)) })
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "DeleteSnapshot", &req.snapshot_id.clone(), async {
            let Some(id) = self.local(&req.snapshot_id, "snapshot_id")? else {
                return Ok(proto::DeleteSnapshotResponse {});
            };
            let _guard = self.driver.in_flight.claim(Kind::Snapshot, &req.snapshot_id)?;
            self.driver.blocking(move |d| delete(d, Kind::Snapshot, &id)).await?;
            Ok(proto::DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        req: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "ListSnapshots", &req.source_volume_id.clone(), async {
            let mut records = self.driver.blocking(|d| Ok(d.engine.list(Kind::Snapshot)?)).await?;
            let node = &self.driver.node_id;
            if !req.snapshot_id.is_empty() {
                // An id that is not ours, or unknown, lists nothing.
                let want = ObjectId::parse(&req.snapshot_id).ok();
                records.retain(|r| want.as_ref().is_some_and(|w| w.names(&r.name, node)));
            }
            if !req.source_volume_id.is_empty() {
                let want = ObjectId::parse(&req.source_volume_id).ok();
                records.retain(|r| match (&want, &r.source) {
                    (Some(w), Some(Source::Volume(v))) => w.names(v, node),
                    _ => false,
                });
            }
            let mut keyed = Vec::new();
            for r in &records {
                let s = self.snapshot(r);
                keyed.push((s.snapshot_id.clone(), proto::list_snapshots_response::Entry { snapshot: Some(s) }));
            }
            let (page, next) = pagination::page(keyed, |(k, _)| k.as_str(), &req.starting_token, req.max_entries)?;
            Ok(proto::ListSnapshotsResponse { entries: page.into_iter().map(|(_, e)| e).collect(), next_token: next })
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        _req: Request<proto::ControllerExpandVolumeRequest>,
    ) -> Result<Response<proto::ControllerExpandVolumeResponse>, Status> {
        Err(CsiError::Unimplemented(
            "expansion happens on the node (NodeExpandVolume): the pool is node-local and the resizer runs elsewhere"
                .into(),
        )
        .into())
    }

    async fn controller_get_volume(
        &self,
        req: Request<proto::ControllerGetVolumeRequest>,
    ) -> Result<Response<proto::ControllerGetVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "ControllerGetVolume", &req.volume_id.clone(), async {
            let id = self.must_local(&req.volume_id, "volume_id", Kind::Volume)?;
            let me = self.clone();
            let (record, condition) =
                self.driver.blocking(move |d| Ok((d.must_find(Kind::Volume, &id)?, me.condition()?))).await?;
            Ok(proto::ControllerGetVolumeResponse {
                volume: Some(self.volume(&record, HashMap::new(), None)),
                status: Some(proto::controller_get_volume_response::VolumeStatus {
                    published_node_ids: vec![],
                    volume_condition: Some(condition),
                }),
            })
        })
        .await
    }
}
