//! CSI Node: stage (activate the thin device; format only a blank device, never reformat data;
//! mount), publish (bind mount, or bind the device node onto a file for block access), stats,
//! online expansion. Every call is idempotent, and every path must lie under the kubelet directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::CsiError;
use super::lookup::{locate, Where};
use super::proto::{self, node_server::Node};
use super::validate::{self, Access, AccessKind};
use super::{observed, Driver};
use crate::dm::ThinPool;
use crate::engine::{EngineError, PoolState};
use crate::mount::{mount_options, FsType, MountError, Mounter};
use crate::shared::ids::ObjectId;
use crate::store::Kind;

pub struct NodeService<P: ThinPool, M: Mounter> {
    pub driver: Arc<Driver<P, M>>,
}

/// What NodeStage/NodePublish need, validated.
struct Target {
    id: ObjectId,
    access: Access,
    fs: FsType,
}

impl<P: ThinPool + 'static, M: Mounter + 'static> NodeService<P, M> {
    /// A volume id for this node. The Node service sees only its own node's volumes: another
    /// node's id, or one not of our form, is `NOT_FOUND`.
    fn here(&self, volume_id: &str) -> Result<ObjectId, CsiError> {
        match locate(volume_id, &self.driver.node_id, "volume_id")? {
            Where::Here(o) => Ok(o),
            Where::Elsewhere(o) => Err(CsiError::NotFound(format!(
                "volume {volume_id} lives on node {}, not on {}",
                o.node_label(),
                self.driver.node_id
            ))),
            Where::Nowhere(why) => Err(CsiError::NotFound(format!("volume {volume_id} not found: {why}"))),
        }
    }

    /// The path of a volume that must already be there (stats, expansion): empty is
    /// `INVALID_ARGUMENT`; a path where none of our volumes can be (outside the kubelet
    /// directory, relative) is `NOT_FOUND`, as the spec asks for a volume not at that path.
    fn volume_path(&self, path: &str) -> Result<PathBuf, CsiError> {
        if path.is_empty() {
            return Err(CsiError::invalid("volume_path is empty"));
        }
        validate::path_under(&self.driver.kubelet_dir, path, "volume_path")
            .map_err(|e| CsiError::NotFound(format!("no volume of this driver can be at {path:?}: {e}")))
    }

    fn path(&self, path: &str, what: &str) -> Result<PathBuf, CsiError> {
        validate::path_under(&self.driver.kubelet_dir, path, what)
    }

    fn target(
        &self,
        volume_id: &str,
        cap: Option<&proto::VolumeCapability>,
        context: &std::collections::HashMap<String, String>,
    ) -> Result<Target, CsiError> {
        if volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is empty"));
        }
        let access = validate::capability(cap.ok_or_else(|| CsiError::invalid("volume_capability is missing"))?)?;
        let fs = match &access.kind {
            AccessKind::Mount { fs: Some(f), .. } => *f,
            _ => match context.get("fsType") {
                Some(f) => FsType::parse(f)
                    .ok_or_else(|| CsiError::invalid(format!("volume_context fsType {f:?}: use ext4 or xfs")))?,
                None => FsType::Ext4,
            },
        };
        let id = self.here(volume_id)?;
        Ok(Target { id, access, fs })
    }
}

/// Formats a blank device; accepts one that already holds `fs`; refuses anything else.
fn ensure_filesystem(m: &dyn Mounter, dev: &Path, fs: FsType) -> Result<(), MountError> {
    match m.signature(dev)? {
        None => m.format(dev, fs),
        Some(found) if found == fs.as_str() => Ok(()),
        Some(found) => {
            Err(MountError::WrongFilesystem { device: dev.display().to_string(), found, wanted: fs.as_str().into() })
        }
    }
}

/// What NodeGetVolumeStats reports for a volume at `path`: bytes and inodes of a mounted
/// filesystem, the size of a block volume; abnormal when the pool is not `rw` or nothing is
/// mounted there.
fn usage_at(
    m: &dyn Mounter,
    path: &Path,
    size_bytes: u64,
    pool: PoolState,
) -> Result<(Vec<proto::VolumeUsage>, proto::VolumeCondition), MountError> {
    use proto::volume_usage::Unit;
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut condition = match pool {
        PoolState::Rw => proto::VolumeCondition { abnormal: false, message: "healthy".into() },
        s => proto::VolumeCondition { abnormal: true, message: format!("the node's thin pool is {s}") },
    };
    let usage = match m.mounted(path)? {
        None => {
            condition =
                proto::VolumeCondition { abnormal: true, message: format!("{} is not mounted", path.display()) };
            vec![]
        }
        Some(mounted) if FsType::parse(&mounted.fstype).is_some() => {
            let s = m.stats(path)?;
            vec![
                proto::VolumeUsage {
                    available: i(s.available_bytes),
                    total: i(s.total_bytes),
                    used: i(s.used_bytes),
                    unit: Unit::Bytes as i32,
                },
                proto::VolumeUsage {
                    available: i(s.free_inodes),
                    total: i(s.total_inodes),
                    used: i(s.used_inodes),
                    unit: Unit::Inodes as i32,
                },
            ]
        }
        Some(_) => vec![proto::VolumeUsage { available: 0, total: i(size_bytes), used: 0, unit: Unit::Bytes as i32 }],
    };
    Ok((usage, condition))
}

fn not_found_is_ok(r: Result<(), EngineError>) -> Result<(), CsiError> {
    match r {
        Ok(()) | Err(EngineError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[tonic::async_trait]
impl<P: ThinPool + 'static, M: Mounter + 'static> Node for Arc<NodeService<P, M>> {
    async fn node_stage_volume(
        &self,
        req: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "NodeStageVolume", &req.volume_id.clone(), async {
            let staging = self.path(&req.staging_target_path, "staging_target_path")?;
            let t = self.target(&req.volume_id, req.volume_capability.as_ref(), &req.volume_context)?;
            let _guard = self.driver.in_flight.claim(Kind::Volume, &req.volume_id)?;
            self.driver
                .blocking(move |d| {
                    let name = d.must_resolve(Kind::Volume, &t.id)?;
                    let dev = d.engine.activate(Kind::Volume, name.as_str())?;
                    let AccessKind::Mount { flags, .. } = &t.access.kind else {
                        return Ok(());
                    };
                    let m = d.mounter.as_ref();
                    if let Some(mounted) = m.mounted(&staging)? {
                        if mounted.source == dev.display().to_string() {
                            return Ok(());
                        }
                        return Err(CsiError::AlreadyExists(format!(
                            "{} already holds {}, not this volume's device {}",
                            staging.display(),
                            mounted.source,
                            dev.display()
                        )));
                    }
                    m.make_dir(&staging)?;
                    ensure_filesystem(m, &dev, t.fs)?;
                    m.mount(&dev, &staging, t.fs, &mount_options(t.fs, flags, t.access.read_only))?;
                    if !t.access.read_only {
                        // A restore or clone larger than its source: grow the filesystem to the device.
                        m.grow(&dev, &staging, t.fs)?;
                    }
                    Ok(())
                })
                .await?;
            Ok(proto::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "NodeUnstageVolume", &req.volume_id.clone(), async {
            let staging = self.path(&req.staging_target_path, "staging_target_path")?;
            let id = self.here(&req.volume_id)?;
            let _guard = self.driver.in_flight.claim(Kind::Volume, &req.volume_id)?;
            self.driver
                .blocking(move |d| {
                    d.mounter.unmount(&staging)?;
                    match d.resolve(Kind::Volume, &id)? {
                        Some(name) => not_found_is_ok(d.engine.deactivate(Kind::Volume, name.as_str())),
                        None => Ok(()),
                    }
                })
                .await?;
            Ok(proto::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "NodePublishVolume", &req.volume_id.clone(), async {
            let target = self.path(&req.target_path, "target_path")?;
            let t = self.target(&req.volume_id, req.volume_capability.as_ref(), &req.volume_context)?;
            let staging = self.path(&req.staging_target_path, "staging_target_path")?;
            let read_only = req.readonly || t.access.read_only;
            let _guard = self.driver.in_flight.claim(Kind::Volume, &req.volume_id)?;
            self.driver
                .blocking(move |d| {
                    let m = d.mounter.as_ref();
                    if let Some(mounted) = m.mounted(&target)? {
                        if mounted.read_only == read_only {
                            return Ok(());
                        }
                        return Err(CsiError::AlreadyExists(format!(
                            "{} is already published {}",
                            target.display(),
                            if mounted.read_only { "read-only" } else { "read-write" }
                        )));
                    }
                    let name = d.must_resolve(Kind::Volume, &t.id)?;
                    match t.access.kind {
                        AccessKind::Block => {
                            let dev = d.engine.activate(Kind::Volume, name.as_str())?;
                            m.make_file(&target)?;
                            m.bind(&dev, &target, read_only)?;
                        }
                        AccessKind::Mount { .. } => {
                            if m.mounted(&staging)?.is_none() {
                                return Err(CsiError::FailedPrecondition(format!(
                                    "volume {} is not staged at {}",
                                    t.id,
                                    staging.display()
                                )));
                            }
                            m.make_dir(&target)?;
                            m.bind(&staging, &target, read_only)?;
                        }
                    }
                    Ok(())
                })
                .await?;
            Ok(proto::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "NodeUnpublishVolume", &req.volume_id.clone(), async {
            let target = self.path(&req.target_path, "target_path")?;
            self.here(&req.volume_id)?;
            let _guard = self.driver.in_flight.claim(Kind::Volume, &req.volume_id)?;
            self.driver
                .blocking(move |d| {
                    d.mounter.unmount(&target)?;
                    d.mounter.remove_target(&target)?;
                    Ok(())
                })
                .await?;
            Ok(proto::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<proto::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<proto::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "NodeGetVolumeStats", &req.volume_id.clone(), async {
            if req.volume_path.is_empty() {
                return Err(CsiError::invalid("volume_path is empty"));
            }
            let id = self.here(&req.volume_id)?;
            let me = self.clone();
            self.driver
                .blocking(move |d| {
                    let record = d.must_find(Kind::Volume, &id)?;
                    let path = me.volume_path(&req.volume_path)?;
                    let m = d.mounter.as_ref();
                    if !m.exists(&path) && m.mounted(&path)?.is_none() {
                        return Err(CsiError::NotFound(format!("volume path {} does not exist", path.display())));
                    }
                    let (usage, condition) = usage_at(m, &path, record.size_bytes, d.engine.pool_state()?)?;
                    Ok(proto::NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) })
                })
                .await
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<proto::NodeExpandVolumeRequest>,
    ) -> Result<Response<proto::NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        observed(&self.driver, "NodeExpandVolume", &req.volume_id.clone(), async {
            if req.volume_path.is_empty() {
                return Err(CsiError::invalid("volume_path is empty"));
            }
            let id = self.here(&req.volume_id)?;
            if let Some(cap) = &req.volume_capability {
                validate::capability(cap)?;
            }
            let _guard = self.driver.in_flight.claim(Kind::Volume, &req.volume_id)?;
            let range = req.capacity_range;
            let me = self.clone();
            let size = self
                .driver
                .blocking(move |d| {
                    let current = d.must_find(Kind::Volume, &id)?;
                    let name = current.name.clone();
                    let path = me.volume_path(&req.volume_path)?;
                    let block = d.engine.pool().info().block_bytes();
                    let wanted = validate::size_from_range(range.as_ref(), block)?;
                    let record = if wanted > current.size_bytes {
                        d.engine.expand_volume(name.as_str(), wanted)?
                    } else {
                        current
                    };
                    let m = d.mounter.as_ref();
                    if let Some(mounted) = m.mounted(&path)? {
                        if let Some(fs) = FsType::parse(&mounted.fstype) {
                            let dev = d.engine.activate(Kind::Volume, name.as_str())?;
                            m.grow(&dev, &path, fs)?;
                        }
                    }
                    Ok(record.size_bytes)
                })
                .await?;
            Ok(proto::NodeExpandVolumeResponse { capacity_bytes: i64::try_from(size).unwrap_or(i64::MAX) })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        observed(&self.driver, "NodeGetCapabilities", "", async {
            Ok(proto::NodeGetCapabilitiesResponse { capabilities: super::capabilities::node() })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _req: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        observed(&self.driver, "NodeGetInfo", "", async {
            Ok(proto::NodeGetInfoResponse {
                node_id: self.driver.node_id.clone(),
                max_volumes_per_node: self.driver.max_volumes_per_node,
                accessible_topology: Some(validate::this_node(&self.driver.node_id)),
            })
        })
        .await
    }
}
