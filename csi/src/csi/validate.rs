//! Request validation, pure: capabilities, capacity ranges, parameters, paths, topology.
//! Each returns a typed value or `INVALID_ARGUMENT` (or `OUT_OF_RANGE` for an unsatisfiable
//! range) with a message that says what to fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::CsiError;
use super::lookup::{locate, Where};
use super::proto::volume_content_source as vcs;
use super::proto::{self, volume_capability::access_mode::Mode, volume_capability::AccessType};
use crate::mount::FsType;
use crate::names::Name;
use crate::shared::ids::ObjectId;
use crate::shared::TOPOLOGY_KEY;
use crate::store::Kind;
use crate::units::SECTOR;

/// Size of a volume created with no capacity range.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Mount { fs: Option<FsType>, flags: Vec<String> },
    Block,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    pub read_only: bool,
}

pub fn capability(cap: &proto::VolumeCapability) -> Result<Access, CsiError> {
    let mode = cap.access_mode.as_ref().ok_or_else(|| CsiError::invalid("volume capability has no access_mode"))?;
    let read_only = match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter) => false,
        Ok(Mode::SingleNodeReaderOnly) => true,
        Ok(m @ (Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter)) => {
            return Err(CsiError::invalid(format!(
                "access mode {} is not supported: thinpool-csi volumes live on one node; use ReadWriteOnce, ReadWriteOncePod or ReadOnlyMany on one node",
                m.as_str_name()
            )))
        }
        _ => return Err(CsiError::invalid(format!("access mode {} is unknown", mode.mode))),
    };
    let kind = match &cap.access_type {
        Some(AccessType::Block(_)) => AccessKind::Block,
        Some(AccessType::Mount(m)) => {
            if !m.volume_mount_group.is_empty() {
                // Only for a node that reports VOLUME_MOUNT_GROUP: the kubelet applies fsGroup itself.
                return Err(CsiError::invalid(format!(
                    "volume_mount_group {:?} is not supported: the kubelet applies fsGroup itself",
                    m.volume_mount_group
                )));
            }
            let fs = match m.fs_type.as_str() {
                "" => None,
                other => Some(FsType::parse(other).ok_or_else(|| {
                    CsiError::invalid(format!("filesystem {other:?} is not supported; use ext4 or xfs"))
                })?),
            };
            AccessKind::Mount { fs, flags: m.mount_flags.clone() }
        }
        None => return Err(CsiError::invalid("volume capability has neither block nor mount access_type")),
    };
    Ok(Access { kind, read_only })
}

pub fn capabilities(caps: &[proto::VolumeCapability]) -> Result<Vec<Access>, CsiError> {
    if caps.is_empty() {
        return Err(CsiError::invalid("volume_capabilities is empty"));
    }
    caps.iter().map(capability).collect()
}

/// The filesystem named by StorageClass parameters: `csi.storage.k8s.io/fstype` or `fsType`.
/// Other parameters are ignored.
pub fn fs_param(params: &HashMap<String, String>) -> Result<Option<FsType>, CsiError> {
    let mut found = None;
    for key in ["csi.storage.k8s.io/fstype", "fsType"] {
        if let Some(v) = params.get(key).filter(|v| !v.is_empty()) {
            let fs =
                FsType::parse(v).ok_or_else(|| CsiError::invalid(format!("parameter {key}={v:?}: use ext4 or xfs")))?;
            if found.is_some_and(|f| f != fs) {
                return Err(CsiError::invalid("parameters csi.storage.k8s.io/fstype and fsType disagree"));
            }
            found = Some(fs);
        }
    }
    Ok(found)
}

/// The size to create for a capacity range: `required` rounded up to the pool's block size, or
/// the default; never above `limit`.
pub fn size_from_range(range: Option<&proto::CapacityRange>, block_bytes: u64) -> Result<u64, CsiError> {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if required < 0 || limit < 0 {
        return Err(CsiError::invalid(format!("capacity range {required}..{limit} has a negative bound")));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit != 0 && required > limit {
        return Err(CsiError::invalid(format!("capacity range is inverted: required {required} > limit {limit}")));
    }
    let unit = block_bytes.max(SECTOR);
    let wanted =
        if required == 0 { DEFAULT_VOLUME_BYTES.min(if limit == 0 { u64::MAX } else { limit }) } else { required };
    let rounded = wanted
        .div_ceil(unit)
        .checked_mul(unit)
        .ok_or_else(|| CsiError::OutOfRange(format!("{wanted} bytes is too large")))?;
    if limit == 0 || rounded <= limit {
        return Ok(rounded);
    }
    // The block-rounded size overshoots the limit: a whole number of sectors still fits.
    let sectors = wanted.div_ceil(SECTOR) * SECTOR;
    if sectors <= limit && sectors > 0 {
        return Ok(sectors);
    }
    Err(CsiError::OutOfRange(format!("no size of whole 512-byte sectors lies in {required}..{limit}")))
}

/// A CreateVolume request, checked: what to create and from what.
#[derive(Clone, Debug)]
pub struct NewVolume {
    pub name: Name,
    /// The filesystem of a mount volume (`None` for block-only volumes).
    pub fs: Option<FsType>,
    /// The snapshot or volume to start from, on this node.
    pub source: Option<(Kind, ObjectId)>,
    pub range: Option<proto::CapacityRange>,
}

impl NewVolume {
    /// The smallest volume its filesystem can live on.
    pub fn min_bytes(&self) -> u64 {
        self.fs.map_or(0, FsType::min_bytes)
    }

    /// The volume context handed to NodeStage: the filesystem of a mount volume.
    pub fn context(&self) -> HashMap<String, String> {
        self.fs.iter().map(|f| ("fsType".to_owned(), f.as_str().to_owned())).collect()
    }
}

/// Checks a CreateVolume request for a volume on `node`: name, capabilities, filesystem
/// (parameter and capabilities must agree; ext4 when neither says), topology (the requisite list
/// must hold this node, else `RESOURCE_EXHAUSTED` so the provisioner reschedules) and source
/// (on another node: `RESOURCE_EXHAUSTED` likewise).
pub fn new_volume(req: &proto::CreateVolumeRequest, node: &str) -> Result<NewVolume, CsiError> {
    if req.name.is_empty() {
        return Err(CsiError::invalid("name is empty"));
    }
    let name = Name::new(&req.name).map_err(|e| CsiError::invalid(format!("name: {e}")))?;
    let caps = capabilities(&req.volume_capabilities)?;
    let mut fs = fs_param(&req.parameters)?;
    for c in &caps {
        if let AccessKind::Mount { fs: Some(f), .. } = c.kind {
            if fs.is_some_and(|p| p != f) {
                return Err(CsiError::invalid("the mount capability's fs_type and the fsType parameter disagree"));
            }
            fs = Some(f);
        }
    }
    let wants_mount = caps.iter().any(|c| matches!(c.kind, AccessKind::Mount { .. }));
    if !topology_admits(req.accessibility_requirements.as_ref(), node) {
        return Err(CsiError::ResourceExhausted(format!(
            "the requisite topology does not include this node ({TOPOLOGY_KEY}={node})"
        )));
    }
    let source = content_source(req.volume_content_source.as_ref(), node)?;
    Ok(NewVolume { name, fs: wants_mount.then(|| fs.unwrap_or(FsType::Ext4)), source, range: req.capacity_range })
}

/// The snapshot or volume a new volume starts from: it must be on this node (another node's is
/// `RESOURCE_EXHAUSTED`, so the provisioner reschedules to it); an id not of our form names
/// nothing (`NOT_FOUND`).
fn content_source(src: Option<&proto::VolumeContentSource>, node: &str) -> Result<Option<(Kind, ObjectId)>, CsiError> {
    let Some(t) = src.and_then(|s| s.r#type.as_ref()) else {
        return Ok(None);
    };
    let (kind, id, field) = match t {
        vcs::Type::Snapshot(s) => (Kind::Snapshot, &s.snapshot_id, "volume_content_source.snapshot.snapshot_id"),
        vcs::Type::Volume(v) => (Kind::Volume, &v.volume_id, "volume_content_source.volume.volume_id"),
    };
    match locate(id, node, field)? {
        Where::Here(o) => Ok(Some((kind, o))),
        Where::Elsewhere(o) => Err(CsiError::ResourceExhausted(format!(
            "source {kind} {id} lives on node {}; the volume must be provisioned there",
            o.node_label()
        ))),
        Where::Nowhere(why) => Err(CsiError::NotFound(format!("source {kind} {id} not found: {why}"))),
    }
}

/// The size of a new volume: the range's size (see `size_from_range`), raised to its source's
/// size when the range's limit allows, and to the filesystem's minimum (`OUT_OF_RANGE` when the
/// limit is below that minimum).
pub fn volume_size(
    range: Option<&proto::CapacityRange>,
    block_bytes: u64,
    source_bytes: Option<u64>,
    min_bytes: u64,
) -> Result<u64, CsiError> {
    let mut size = size_from_range(range, block_bytes)?;
    let limit = range.map_or(0, |r| r.limit_bytes as u64);
    if let Some(from) = source_bytes {
        // A volume is at least as large as its source, when the range allows it.
        if from > size && (limit == 0 || from <= limit) {
            size = from;
        }
    }
    if size < min_bytes {
        if limit != 0 && limit < min_bytes {
            return Err(CsiError::OutOfRange(format!(
                "the filesystem needs a volume of at least {min_bytes} bytes, above the limit {limit}"
            )));
        }
        size = min_bytes;
    }
    Ok(size)
}

/// An absolute, normalized path under `root` (the kubelet directory); anything else is refused.
pub fn path_under(root: &Path, path: &str, what: &str) -> Result<PathBuf, CsiError> {
    if path.is_empty() {
        return Err(CsiError::invalid(format!("{what} is empty")));
    }
    if path.contains('\0') {
        return Err(CsiError::invalid(format!("{what} contains NUL")));
    }
    let p = Path::new(path);
    // Checked on the text: `Path::components` silently drops inner `.` segments.
    if !p.is_absolute() || path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(CsiError::invalid(format!("{what} {path:?} must be an absolute path without '.' or '..'")));
    }
    if !p.starts_with(root) || p == root {
        return Err(CsiError::invalid(format!("{what} {path:?} is outside the kubelet directory {}", root.display())));
    }
    Ok(p.to_owned())
}

/// Whether a topology requirement admits this node: its requisite list (when given) must hold
/// a segment `topology.thinpool.csi.io/node=<node>`.
pub fn topology_admits(req: Option<&proto::TopologyRequirement>, node: &str) -> bool {
    match req {
        None => true,
        Some(r) if r.requisite.is_empty() => true,
        Some(r) => r.requisite.iter().any(|t| t.segments.get(TOPOLOGY_KEY).is_some_and(|n| n == node)),
    }
}

pub fn this_node(node: &str) -> proto::Topology {
    proto::Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node.to_owned())]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, access: Option<AccessType>) -> proto::VolumeCapability {
        proto::VolumeCapability { access_mode: Some(AccessMode { mode: mode as i32 }), access_type: access }
    }

    fn mount(fs: &str) -> Option<AccessType> {
        Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: vec!["noatime".into()],
            ..Default::default()
        }))
    }

    #[test]
    fn capabilities_single_node_only() {
        assert_eq!(
            capability(&cap(Mode::SingleNodeWriter, mount("xfs"))).unwrap(),
            Access {
                kind: AccessKind::Mount { fs: Some(FsType::Xfs), flags: vec!["noatime".into()] },
                read_only: false
            }
        );
        assert!(
            capability(&cap(Mode::SingleNodeReaderOnly, Some(AccessType::Block(BlockVolume {})))).unwrap().read_only
        );
        assert!(capability(&cap(Mode::SingleNodeSingleWriter, mount(""))).is_ok());
        for bad in [Mode::MultiNodeMultiWriter, Mode::MultiNodeReaderOnly, Mode::MultiNodeSingleWriter, Mode::Unknown] {
            assert!(matches!(capability(&cap(bad, mount("ext4"))), Err(CsiError::InvalidArgument(_))), "{bad:?}");
        }
        assert!(matches!(capability(&cap(Mode::SingleNodeWriter, mount("btrfs"))), Err(CsiError::InvalidArgument(_))));
        assert!(matches!(capability(&cap(Mode::SingleNodeWriter, None)), Err(CsiError::InvalidArgument(_))));
        let no_mode = proto::VolumeCapability { access_mode: None, access_type: mount("ext4") };
        assert!(capability(&no_mode).is_err());
        let unknown = proto::VolumeCapability { access_mode: Some(AccessMode { mode: 99 }), access_type: mount("") };
        assert!(capability(&unknown).is_err());
        assert!(capabilities(&[]).is_err());
    }

    #[test]
    fn fs_parameters() {
        let p = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(fs_param(&HashMap::new()).unwrap(), None);
        assert_eq!(fs_param(&p("fsType", "xfs")).unwrap(), Some(FsType::Xfs));
        assert_eq!(fs_param(&p("csi.storage.k8s.io/fstype", "ext4")).unwrap(), Some(FsType::Ext4));
        assert!(fs_param(&p("fsType", "ntfs")).is_err());
        assert_eq!(fs_param(&p("unknownParameter", "whatever")).unwrap(), None);
        let both = HashMap::from([
            ("fsType".to_owned(), "xfs".to_owned()),
            ("csi.storage.k8s.io/fstype".to_owned(), "ext4".to_owned()),
        ]);
        assert!(fs_param(&both).is_err());
    }

    #[test]
    fn capacity_ranges() {
        let r = |req: i64, lim: i64| Some(proto::CapacityRange { required_bytes: req, limit_bytes: lim });
        let block = 64 << 10;
        assert_eq!(size_from_range(None, block).unwrap(), DEFAULT_VOLUME_BYTES);
        assert_eq!(size_from_range(r(1, 0).as_ref(), block).unwrap(), block);
        assert_eq!(size_from_range(r(100 << 20, 0).as_ref(), block).unwrap(), 100 << 20);
        assert_eq!(size_from_range(r(0, 10 << 20).as_ref(), block).unwrap(), 10 << 20);
        assert_eq!(size_from_range(r(1000, 4096).as_ref(), block).unwrap(), 1024);
        assert!(matches!(size_from_range(r(-1, 0).as_ref(), block), Err(CsiError::InvalidArgument(_))));
        assert!(matches!(size_from_range(r(0, -5).as_ref(), block), Err(CsiError::InvalidArgument(_))));
        assert!(matches!(size_from_range(r(10, 5).as_ref(), block), Err(CsiError::InvalidArgument(_))));
        assert!(matches!(size_from_range(r(1000, 1000).as_ref(), block), Err(CsiError::OutOfRange(_))));
        assert!(matches!(size_from_range(r(i64::MAX, 0).as_ref(), block), Ok(_) | Err(CsiError::OutOfRange(_))));
    }

    #[test]
    fn volume_sizes_follow_source_and_filesystem() {
        let r = |req: i64, lim: i64| Some(proto::CapacityRange { required_bytes: req, limit_bytes: lim });
        let block = 64 << 10;
        // A restore is at least its source's size, unless the limit forbids it.
        assert_eq!(volume_size(r(1 << 20, 0).as_ref(), block, Some(8 << 20), 0).unwrap(), 8 << 20);
        assert_eq!(volume_size(r(1 << 20, 4 << 20).as_ref(), block, Some(8 << 20), 0).unwrap(), 1 << 20);
        // A filesystem's minimum raises the size, or the request is out of range.
        assert_eq!(volume_size(r(1 << 20, 0).as_ref(), block, None, 300 << 20).unwrap(), 300 << 20);
        assert!(matches!(
            volume_size(r(1 << 20, 2 << 20).as_ref(), block, None, 300 << 20),
            Err(CsiError::OutOfRange(_))
        ));
    }

    #[test]
    fn create_requests_become_typed_values() {
        let caps = vec![cap(Mode::SingleNodeWriter, mount("xfs"))];
        let req = proto::CreateVolumeRequest { name: "pvc-1".into(), volume_capabilities: caps, ..Default::default() };
        let v = new_volume(&req, "n1").unwrap();
        assert_eq!((v.name.as_str(), v.fs), ("pvc-1", Some(FsType::Xfs)));
        assert_eq!(v.context().get("fsType").map(String::as_str), Some("xfs"));
        let block = proto::CreateVolumeRequest {
            volume_capabilities: vec![cap(Mode::SingleNodeWriter, Some(AccessType::Block(BlockVolume {})))],
            ..req.clone()
        };
        assert_eq!(new_volume(&block, "n1").unwrap().fs, None);
        let disagree = proto::CreateVolumeRequest {
            parameters: HashMap::from([("fsType".to_owned(), "ext4".to_owned())]),
            ..req.clone()
        };
        assert!(matches!(new_volume(&disagree, "n1"), Err(CsiError::InvalidArgument(_))));
        let elsewhere = proto::CreateVolumeRequest {
            accessibility_requirements: Some(proto::TopologyRequirement {
                requisite: vec![this_node("n2")],
                preferred: vec![],
            }),
            ..req
        };
        assert!(matches!(new_volume(&elsewhere, "n1"), Err(CsiError::ResourceExhausted(_))));
    }

    #[test]
    fn paths_stay_under_the_kubelet_dir() {
        let root = Path::new("/var/lib/kubelet");
        assert!(path_under(root, "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount", "target").is_ok());
        for bad in [
            "",
            "relative/x",
            "/etc/passwd",
            "/var/lib/kubelet",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubelet/./x",
            "/var/lib/kubeletX/y",
            "/var/lib/kubelet/a\0b",
        ] {
            assert!(matches!(path_under(root, bad, "target"), Err(CsiError::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn topology() {
        let t = |n: &str| this_node(n);
        assert!(topology_admits(None, "n1"));
        let req = proto::TopologyRequirement { requisite: vec![t("n2"), t("n1")], preferred: vec![] };
        assert!(topology_admits(Some(&req), "n1"));
        let req = proto::TopologyRequirement { requisite: vec![t("n2")], preferred: vec![t("n1")] };
        assert!(!topology_admits(Some(&req), "n1"));
        let other_key = proto::Topology { segments: HashMap::from([("zone".to_owned(), "n1".to_owned())]) };
        let req = proto::TopologyRequirement { requisite: vec![other_key], preferred: vec![] };
        assert!(!topology_admits(Some(&req), "n1"));
    }
}
