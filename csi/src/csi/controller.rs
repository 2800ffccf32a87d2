//! CSI Controller, run on the node that owns the pool (the provisioner and snapshotter sidecars
//! in node-deployment mode). Volumes and snapshots are named by the CO; ids are `<name>@<node>`
//! and every volume carries this node's topology, so deletes are routed back here.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::CsiError;
use super::ids::ObjectId;
use super::proto::{self, controller_server::Controller, volume_content_source as vcs};
use super::validate::{self, AccessKind};
use super::{observed, pagination, Driver, TOPOLOGY_KEY};
use crate::dm::ThinPool;
use crate::engine::PoolState;
use crate::mount::{FsType, Mounter};
use crate::names::Name;
use crate::store::{Kind, Record, Source};

pub struct ControllerService<P: ThinPool, M: Mounter> {
    pub driver: Arc<Driver<P, M>>,
}

fn timestamp(unix: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: i64::try_from(unix).unwrap_or(i64::MAX), nanos: 0 }
}

fn bytes_i64(b: u64) -> i64 {
    i64::try_from(b).unwrap_or(i64::MAX)
}

/// The snapshot or volume a new volume starts from, and its node.
fn content_source(src: Option<&proto::VolumeContentSource>) -> Result<Option<(Source, String)>, CsiError> {
    let Some(t) = src.and_then(|s| s.r#type.as_ref()) else {
        return Ok(None);
    };
    Ok(Some(match t {
        vcs::Type::Snapshot(s) => {
            let id = ObjectId::parse(&s.snapshot_id)?;
            (Source::Snapshot(id.name), id.node)
        }
        vcs::Type::Volume(v) => {
            let id = ObjectId::parse(&v.volume_id)?;
            (Source::Volume(id.name), id.node)
        }
    }))
}

impl<P: ThinPool + 'static, M: Mounter + 'static> ControllerService<P, M> {
    fn volume(
        &self,
        r: &Record,
        context: HashMap<String, String>,
        source: Option<proto::VolumeContentSource>,
    ) -> Result<proto::Volume, CsiError> {
        Ok(proto::Volume {
            capacity_bytes: bytes_i64(r.size_bytes),
            volume_id: ObjectId::format(&r.name, &self.driver.node_id)?,
            volume_context: context,
            content_source: source,
            accessible_topology: vec![validate::this_node(&self.driver.node_id)],
        })
    }

    fn snapshot(&self, r: &Record) -> Result<proto::Snapshot, CsiError> {
        let source = match &r.source {
            Some(Source::Volume(v)) => ObjectId::format(v, &self.driver.node_id)?,
            _ => String::new(),
        };
        Ok(proto::Snapshot {
            size_bytes: bytes_i64(r.size_bytes),
            snapshot_id: ObjectId::format(&r.name, &self.driver.node_id)?,
            source_volume_id: source,
            creation_time: Some(timestamp(r.created_unix)),
            ready_to_use: true,
        })
    }

    /// An id that must name an object on this node.
    fn local(&self, id: &str, what: &str) -> Result<Name, CsiError> {
        let id = ObjectId::parse(id)?;
        if id.node != self.driver.node_id {
            return Err(CsiError::FailedPrecondition(format!(
                "{what} {}@{} lives on node {}, not on {}",
                id.name, id.node, id.node, self.driver.node_id
            )));
        }
        Ok(id.name)
    }

    fn condition(&self) -> Result<proto::VolumeCondition, CsiError> {
        Ok(match self.driver.engine.pool_state()? {
            PoolState::Rw => proto::VolumeCondition { abnormal: false, message: "pool is rw".into() },
            s => proto::VolumeCondition { abnormal: true, message: format!("the node's thin pool is {s}") },
        })
    }
}

#[tonic::async_trait]
impl<P: ThinPool + 'static, M: Mounter + 'static> Controller for Arc<ControllerService<P, M>> {
    async fn create_volume(
        &self,
        req: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        let name = req.name.clone();
        observed(&self.driver, "CreateVolume", &name, async {
            if req.name.is_empty() {
                return Err(CsiError::invalid("name is empty"));
            }
            let name = Name::new(&req.name).map_err(|e| CsiError::invalid(format!("name: {e}")))?;
            let _guard = self.driver.in_flight.claim(name.as_str())?;
            let caps = validate::capabilities(&req.volume_capabilities)?;
            let param_fs = validate::fs_param(&req.parameters)?;
            let mut fs = param_fs;
            for c in &caps {
                if let AccessKind::Mount { fs: Some(f), .. } = c.kind {
                    if fs.is_some_and(|p| p != f) {
                        return Err(CsiError::invalid(
                            "the mount capability's fs_type and the fsType parameter disagree",
                        ));
                    }
                    fs = Some(f);
                }
            }
            let wants_mount = caps.iter().any(|c| matches!(c.kind, AccessKind::Mount { .. }));
            if !validate::topology_admits(req.accessibility_requirements.as_ref(), &self.driver.node_id) {
                return Err(CsiError::ResourceExhausted(format!(
                    "the requisite topology does not include this node ({TOPOLOGY_KEY}={})",
                    self.driver.node_id
                )));
            }
            let source = content_source(req.volume_content_source.as_ref())?;
            if let Some((src, node)) = &source {
                if *node != self.driver.node_id {
                    return Err(CsiError::ResourceExhausted(format!(
                        "source {src} lives on node {node}; the volume must be provisioned there"
                    )));
                }
            }
            ObjectId::format(&name, &self.driver.node_id)?;
            let min_bytes = if wants_mount { fs.unwrap_or(FsType::Ext4).min_bytes() } else { 0 };
            let me = self.clone();
            let range = req.capacity_range;
            let content = req.volume_content_source.clone();
            let record = self
                .driver
                .blocking(move |d| {
                    let block = d.engine.pool().info().block_bytes();
                    let mut size = validate::size_from_range(range.as_ref(), block)?;
                    let src = source.map(|(s, _)| s);
                    if let Some(s) = &src {
                        let (kind, n) = match s {
                            Source::Snapshot(n) => (Kind::Snapshot, n),
                            Source::Volume(n) => (Kind::Volume, n),
                        };
                        let from = d
                            .engine
                            .get(kind, n.as_str())?
                            .ok_or_else(|| CsiError::NotFound(format!("source {s} not found")))?;
                        let limit = range.map_or(0, |r| r.limit_bytes as u64);
                        // A volume is at least as large as its source, when the range allows it.
                        if from.size_bytes > size && (limit == 0 || from.size_bytes <= limit) {
                            size = from.size_bytes;
                        }
                    }
                    if size < min_bytes {
                        let limit = range.map_or(0, |r| r.limit_bytes as u64);
                        if limit != 0 && limit < min_bytes {
                            return Err(CsiError::OutOfRange(format!(
                                "the filesystem needs a volume of at least {min_bytes} bytes, above the limit {limit}"
                            )));
                        }
                        size = min_bytes;
                    }
                    Ok(d.engine.create_volume(name.as_str(), size, src)?.record().clone())
                })
                .await?;
            let mut context = HashMap::new();
            if wants_mount {
                context.insert("fsType".to_owned(), fs.unwrap_or(FsType::Ext4).as_str().to_owned());
            }
            Ok(proto::CreateVolumeResponse { volume: Some(me.volume(&record, context, content)?) })
        })
        .await
    }

    async fn delete_volume(
        &self,
        req: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "DeleteVolume", &req.volume_id.clone(), async {
            let name = self.local(&req.volume_id, "volume")?;
            let _guard = self.driver.in_flight.claim(&req.volume_id)?;
            self.driver.blocking(move |d| Ok(d.engine.delete(Kind::Volume, name.as_str())?)).await?;
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
            let name = self.local(&req.volume_id, "volume")?;
            if req.volume_capabilities.is_empty() {
                return Err(CsiError::invalid("volume_capabilities is empty"));
            }
            let exists =
                self.driver.blocking(move |d| Ok(d.engine.get(Kind::Volume, name.as_str())?.is_some())).await?;
            if !exists {
                return Err(CsiError::NotFound(format!("volume {} not found", req.volume_id)));
            }
            if let Err(e) = validate::fs_param(&req.parameters) {
                return Ok(proto::ValidateVolumeCapabilitiesResponse { confirmed: None, message: e.to_string() });
            }
            Ok(match validate::capabilities(&req.volume_capabilities) {
                Err(e) => proto::ValidateVolumeCapabilitiesResponse { confirmed: None, message: e.to_string() },
                Ok(_) => proto::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(proto::validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
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
                    volume: Some(self.volume(r, HashMap::new(), None)?),
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
            let source = self.local(&req.source_volume_id, "volume")?;
            ObjectId::format(&name, &self.driver.node_id)?;
            let _guard = self.driver.in_flight.claim(name.as_str())?;
            let record = self
                .driver
                .blocking(move |d| Ok(d.engine.create_snapshot(name.as_str(), source.as_str())?.record().clone()))
                .await?;
            Ok(proto::CreateSnapshotResponse { snapshot: Some(self.snapshot(&record)?) })
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "DeleteSnapshot", &req.snapshot_id.clone(), async {
            let name = self.local(&req.snapshot_id, "snapshot")?;
            let _guard = self.driver.in_flight.claim(&req.snapshot_id)?;
            self.driver.blocking(move |d| Ok(d.engine.delete(Kind::Snapshot, name.as_str())?)).await?;
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
            if !req.snapshot_id.is_empty() {
                // An id that is not ours, or unknown, lists nothing.
                let want = ObjectId::parse(&req.snapshot_id).ok().filter(|id| id.node == self.driver.node_id);
                records.retain(|r| want.as_ref().is_some_and(|w| w.name == r.name));
            }
            if !req.source_volume_id.is_empty() {
                let want = ObjectId::parse(&req.source_volume_id).ok().filter(|id| id.node == self.driver.node_id);
                records.retain(|r| want.as_ref().is_some_and(|w| r.source == Some(Source::Volume(w.name.clone()))));
            }
            let mut keyed = Vec::new();
            for r in &records {
                let s = self.snapshot(r)?;
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
            let name = self.local(&req.volume_id, "volume")?;
            let me = self.clone();
            let (record, condition) = self
                .driver
                .blocking(move |d| {
                    let r = d.engine.get(Kind::Volume, name.as_str())?;
                    Ok((r, me.condition()?))
                })
                .await?;
            let record = record.ok_or_else(|| CsiError::NotFound(format!("volume {} not found", req.volume_id)))?;
            Ok(proto::ControllerGetVolumeResponse {
                volume: Some(self.volume(&record, HashMap::new(), None)?),
                status: Some(proto::controller_get_volume_response::VolumeStatus {
                    published_node_ids: vec![],
                    volume_condition: Some(condition),
                }),
            })
        })
        .await
    }
}
