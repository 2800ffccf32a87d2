//! Drives the CSI services with requests decoded from arbitrary bytes, over the in-memory pool and
//! mounter, and checks what every answer must satisfy: no panic, no hang, only the codes the CSI
//! spec and the README document for that call, and nothing changed by a call that failed.
//!
//! An input is a sequence of frames `[call][length: u16 LE][protobuf request]`, so one input can
//! create a volume, stage it, snapshot it and delete it. The fuzz targets in `fuzz/` and a unit
//! test over their committed corpus both run inputs through [`Harness::run`]. Test double only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Request};

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::proto::{self, controller_server::Controller, identity_server::Identity, node_server::Node};
use super::Driver;
use crate::dm::memory::MemoryPool;
use crate::engine::Engine;
use crate::engine::Limits;
use crate::mount::memory::MemoryMounter;
use crate::store::{Kind, Store};

/// The node the harness's plugin runs on (volume ids end in `@fuzz-node`).
pub const NODE: &str = "fuzz-node";
/// Longer than any call may take on the in-memory pool: past it the call counts as hung.
const HANG: Duration = Duration::from_secs(10);

/// Every CSI call, in the order of the input's call byte (`byte % CALLS.len()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    GetPluginInfo,
    GetPluginCapabilities,
    Probe,
    CreateVolume,
    DeleteVolume,
    ControllerPublishVolume,
    ControllerUnpublishVolume,
    ValidateVolumeCapabilities,
    ListVolumes,
    GetCapacity,
    ControllerGetCapabilities,
    CreateSnapshot,
    DeleteSnapshot,
    ListSnapshots,
    ControllerExpandVolume,
    ControllerGetVolume,
    NodeStageVolume,
    NodeUnstageVolume,
    NodePublishVolume,
    NodeUnpublishVolume,
    NodeGetVolumeStats,
    NodeExpandVolume,
    NodeGetCapabilities,
    NodeGetInfo,
}

pub const CALLS: [Call; 24] = [
    Call::GetPluginInfo,
    Call::GetPluginCapabilities,
    Call::Probe,
    Call::CreateVolume,
    Call::DeleteVolume,
    Call::ControllerPublishVolume,
    Call::ControllerUnpublishVolume,
    Call::ValidateVolumeCapabilities,
    Call::ListVolumes,
    Call::GetCapacity,
    Call::ControllerGetCapabilities,
    Call::CreateSnapshot,
    Call::DeleteSnapshot,
    Call::ListSnapshots,
    Call::ControllerExpandVolume,
    Call::ControllerGetVolume,
    Call::NodeStageVolume,
    Call::NodeUnstageVolume,
    Call::NodePublishVolume,
    Call::NodeUnpublishVolume,
    Call::NodeGetVolumeStats,
    Call::NodeExpandVolume,
    Call::NodeGetCapabilities,
    Call::NodeGetInfo,
];

use Code::{Aborted, FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted};
use Code::{AlreadyExists, Unimplemented as Unimpl};

impl Call {
    /// The codes other than OK this call may answer on a healthy pool with one caller at a time:
    /// the CSI spec's list for the call, `INVALID_ARGUMENT` for bad input, and what the README's
    /// "Codes" paragraph adds. `INTERNAL`, `UNKNOWN` and `UNAVAILABLE` are never allowed here.
    pub fn allowed(self) -> &'static [Code] {
        match self {
            Call::GetPluginInfo | Call::GetPluginCapabilities | Call::Probe => &[],
            Call::ControllerGetCapabilities | Call::NodeGetCapabilities | Call::NodeGetInfo => &[],
            Call::ControllerPublishVolume | Call::ControllerUnpublishVolume | Call::ControllerExpandVolume => &[Unimpl],
            Call::CreateVolume => &[InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, OutOfRange],
            // FAILED_PRECONDITION: an id of another node's object, which this node cannot serve.
            Call::DeleteVolume | Call::DeleteSnapshot => &[InvalidArgument, FailedPrecondition],
            Call::ValidateVolumeCapabilities | Call::ControllerGetVolume => {
                &[InvalidArgument, NotFound, FailedPrecondition]
            }
            Call::ListVolumes | Call::ListSnapshots => &[InvalidArgument, Aborted],
            Call::GetCapacity => &[InvalidArgument],
            Call::CreateSnapshot => &[InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, FailedPrecondition],
            Call::NodeStageVolume | Call::NodePublishVolume => {
                &[InvalidArgument, NotFound, AlreadyExists, FailedPrecondition]
            }
            Call::NodeUnstageVolume | Call::NodeUnpublishVolume | Call::NodeGetVolumeStats => {
                &[InvalidArgument, NotFound]
            }
            Call::NodeExpandVolume => &[InvalidArgument, NotFound, OutOfRange, ResourceExhausted, FailedPrecondition],
        }
    }
}

/// One input frame: a call and its encoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub call: Call,
    pub request: Vec<u8>,
}

/// Splits an input into frames; a truncated last frame takes what is left.
pub fn frames(mut input: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while let [call, rest @ ..] = input {
        let call = CALLS[*call as usize % CALLS.len()];
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (u16::from_le_bytes([*lo, *hi]) as usize, rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        out.push(Frame { call, request: rest[..len].to_vec() });
        input = &rest[len..];
    }
    out
}

/// Encodes frames as an input (the inverse of [`frames`], for seeds).
pub fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let call = CALLS.iter().position(|c| *c == f.call).unwrap_or(0) as u8;
        out.push(call);
        out.extend_from_slice(&(f.request.len().min(u16::MAX as usize) as u16).to_le_bytes());
        out.extend_from_slice(&f.request[..f.request.len().min(u16::MAX as usize)]);
    }
    out
}

/// A broken promise, with what is needed to see why.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("{call:?} did not answer within {HANG:?} (hung)")]
    Hung { call: Call },
    #[error("{call:?} answered {code:?}, which it may not ({message})")]
    Code { call: Call, code: Code, message: String },
    #[error("{call:?} failed with {code:?} ({message}) but changed state:\n before: {before}\n after:  {after}")]
    Changed { call: Call, code: Code, message: String, before: String, after: String },
    #[error("setting up the harness: {0}")]
    Setup(String),
}

type D = Driver<MemoryPool, MemoryMounter>;

/// A node plugin over a fresh in-memory pool and mounter, its records in `dir`.
pub struct Harness {
    pub(crate) driver: Arc<D>,
    pub(crate) identity: IdentityService<MemoryPool, MemoryMounter>,
    pub(crate) ctl: Arc<ControllerService<MemoryPool, MemoryMounter>>,
    pub(crate) node: Arc<NodeService<MemoryPool, MemoryMounter>>,
}

impl Harness {
    /// A 10 GiB pool, overprovisioning 2x, records in `dir` (which must be empty), on [`NODE`].
    pub fn new(dir: &Path) -> Result<Self, Violation> {
        Self::on(dir, NODE)
    }

    /// [`Harness::new`] on node `node` (the CSI unit tests' fixture too).
    pub(crate) fn on(dir: &Path, node: &str) -> Result<Self, Violation> {
        let store = Store::open(dir).map_err(|e| Violation::Setup(e.to_string()))?;
        let limits = Limits { overprovision_ratio: 2.0, data_fill_limit_pct: 90.0, meta_fill_limit_pct: 80.0 };
        let (engine, _) =
            Engine::open(MemoryPool::new(10 << 30), store, limits).map_err(|e| Violation::Setup(e.to_string()))?;
        let driver = Arc::new(Driver {
            engine: Arc::new(engine),
            mounter: Arc::new(MemoryMounter::default()),
            node_id: node.into(),
            kubelet_dir: "/var/lib/kubelet".into(),
            max_volumes_per_node: 1000,
            in_flight: Default::default(),
            metrics: Arc::new(crate::metrics::NodeMetrics::new().map_err(|e| Violation::Setup(e.to_string()))?),
            changed: Default::default(),
        });
        Ok(Harness {
            identity: IdentityService { driver: driver.clone() },
            ctl: Arc::new(ControllerService { driver: driver.clone() }),
            node: Arc::new(NodeService { driver: driver.clone() }),
            driver,
        })
    }

    /// Everything a call may change: the pool, the records, the mounter.
    pub fn state(&self) -> String {
        let e = &self.driver.engine;
        let records = |k| e.list(k).map_or_else(|err| format!("unreadable: {err}"), |r| format!("{r:?}"));
        format!(
            "pool: {}\nvolumes: {}\nsnapshots: {}\nmounter: {}",
            e.pool().fingerprint(),
            records(Kind::Volume),
            records(Kind::Snapshot),
            self.driver.mounter.fingerprint()
        )
    }

    /// Runs every frame of `input` in order; stops at the first broken promise. Frames whose bytes
    /// are not a protobuf message of their call are skipped (the gRPC layer refuses them before
    /// any service sees them).
    pub async fn run(&self, input: &[u8]) -> Result<Vec<(Call, Code)>, Violation> {
        let mut answers = Vec::new();
        for frame in frames(input) {
            let before = self.state();
            let Some(answer) = tokio::time::timeout(HANG, self.call(frame.call, &frame.request))
                .await
                .map_err(|_| Violation::Hung { call: frame.call })?
            else {
                continue;
            };
            let call = frame.call;
            let Err(status) = answer else {
                answers.push((call, Code::Ok));
                continue;
            };
            let (code, message) = (status.code(), status.message().to_owned());
            if !call.allowed().contains(&code) {
                return Err(Violation::Code { call, code, message });
            }
            let after = self.state();
            if after != before {
                return Err(Violation::Changed { call, code, message, before, after });
            }
            answers.push((call, code));
        }
        Ok(answers)
    }

    /// One call; `None` when the bytes do not decode as its request.
    async fn call(&self, call: Call, bytes: &[u8]) -> Option<Result<(), tonic::Status>> {
        macro_rules! on {
            ($service:expr, $method:ident, $request:ty) => {{
                let request = <$request>::decode(bytes).ok()?;
                Some($service.$method(Request::new(request)).await.map(drop))
            }};
        }
        match call {
            Call::GetPluginInfo => on!(self.identity, get_plugin_info, proto::GetPluginInfoRequest),
            Call::GetPluginCapabilities => {
                on!(self.identity, get_plugin_capabilities, proto::GetPluginCapabilitiesRequest)
            }
            Call::Probe => on!(self.identity, probe, proto::ProbeRequest),
            Call::CreateVolume => on!(self.ctl, create_volume, proto::CreateVolumeRequest),
            Call::DeleteVolume => on!(self.ctl, delete_volume, proto::DeleteVolumeRequest),
            Call::ControllerPublishVolume => {
                on!(self.ctl, controller_publish_volume, proto::ControllerPublishVolumeRequest)
            }
            Call::ControllerUnpublishVolume => {
                on!(self.ctl, controller_unpublish_volume, proto::ControllerUnpublishVolumeRequest)
            }
            Call::ValidateVolumeCapabilities => {
                on!(self.ctl, validate_volume_capabilities, proto::ValidateVolumeCapabilitiesRequest)
            }
            Call::ListVolumes => on!(self.ctl, list_volumes, proto::ListVolumesRequest),
            Call::GetCapacity => on!(self.ctl, get_capacity, proto::GetCapacityRequest),
            Call::ControllerGetCapabilities => {
                on!(self.ctl, controller_get_capabilities, proto::ControllerGetCapabilitiesRequest)
            }
            Call::CreateSnapshot => on!(self.ctl, create_snapshot, proto::CreateSnapshotRequest),
            Call::DeleteSnapshot => on!(self.ctl, delete_snapshot, proto::DeleteSnapshotRequest),
            Call::ListSnapshots => on!(self.ctl, list_snapshots, proto::ListSnapshotsRequest),
            Call::ControllerExpandVolume => {
                on!(self.ctl, controller_expand_volume, proto::ControllerExpandVolumeRequest)
            }
            Call::ControllerGetVolume => on!(self.ctl, controller_get_volume, proto::ControllerGetVolumeRequest),
            Call::NodeStageVolume => on!(self.node, node_stage_volume, proto::NodeStageVolumeRequest),
            Call::NodeUnstageVolume => on!(self.node, node_unstage_volume, proto::NodeUnstageVolumeRequest),
            Call::NodePublishVolume => on!(self.node, node_publish_volume, proto::NodePublishVolumeRequest),
            Call::NodeUnpublishVolume => on!(self.node, node_unpublish_volume, proto::NodeUnpublishVolumeRequest),
            Call::NodeGetVolumeStats => on!(self.node, node_get_volume_stats, proto::NodeGetVolumeStatsRequest),
            Call::NodeExpandVolume => on!(self.node, node_expand_volume, proto::NodeExpandVolumeRequest),
            Call::NodeGetCapabilities => on!(self.node, node_get_capabilities, proto::NodeGetCapabilitiesRequest),
            Call::NodeGetInfo => on!(self.node, node_get_info, proto::NodeGetInfoRequest),
        }
    }
}

/// Seeds: a user's whole path (create, stage, publish, stats, expand, snapshot, restore, clone,
/// list, unpublish, unstage, delete) and the documented refusals, as frames.
pub fn seeds() -> Vec<(&'static str, Vec<Frame>)> {
    use proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};
    fn f(call: Call, m: impl Message) -> Frame {
        Frame { call, request: m.encode_to_vec() }
    }
    let cap = |fs: &str| proto::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
    };
    let block = proto::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let id = |name: &str| format!("{name}@{NODE}");
    let range = |bytes: i64| Some(proto::CapacityRange { required_bytes: bytes, limit_bytes: 0 });
    let create = |name: &str, c: &proto::VolumeCapability, source: Option<proto::VolumeContentSource>| {
        f(
            Call::CreateVolume,
            proto::CreateVolumeRequest {
                name: name.into(),
                capacity_range: range(1 << 30),
                volume_capabilities: vec![c.clone()],
                volume_content_source: source,
                ..Default::default()
            },
        )
    };
    let staging = "/var/lib/kubelet/plugins/kubernetes.io/csi/thinpool.csi.io/x/globalmount";
    let target = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc-1/mount";
    let stage = |v: &str, c: &proto::VolumeCapability| {
        f(
            Call::NodeStageVolume,
            proto::NodeStageVolumeRequest {
                volume_id: id(v),
                staging_target_path: staging.into(),
                volume_capability: Some(c.clone()),
                ..Default::default()
            },
        )
    };
    let publish = |v: &str, c: &proto::VolumeCapability| {
        f(
            Call::NodePublishVolume,
            proto::NodePublishVolumeRequest {
                volume_id: id(v),
                staging_target_path: staging.into(),
                target_path: target.into(),
                volume_capability: Some(c.clone()),
                ..Default::default()
            },
        )
    };
    use proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let from_snapshot =
        Some(proto::VolumeContentSource { r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id: id("snap-1") })) });
    let from_volume =
        Some(proto::VolumeContentSource { r#type: Some(Type::Volume(VolumeSource { volume_id: id("pvc-1") })) });
    let ext4 = cap("ext4");
    vec![
        (
            "lifecycle",
            vec![
                create("pvc-1", &ext4, None),
                stage("pvc-1", &ext4),
                publish("pvc-1", &ext4),
                f(
                    Call::NodeGetVolumeStats,
                    proto::NodeGetVolumeStatsRequest {
                        volume_id: id("pvc-1"),
                        volume_path: target.into(),
                        ..Default::default()
                    },
                ),
                f(
                    Call::CreateSnapshot,
                    proto::CreateSnapshotRequest {
                        source_volume_id: id("pvc-1"),
                        name: "snap-1".into(),
                        ..Default::default()
                    },
                ),
                create("pvc-2", &ext4, from_snapshot),
                create("pvc-3", &ext4, from_volume),
                f(Call::ListVolumes, proto::ListVolumesRequest { max_entries: 1, ..Default::default() }),
                f(
                    Call::ListSnapshots,
                    proto::ListSnapshotsRequest { source_volume_id: id("pvc-1"), ..Default::default() },
                ),
                f(Call::ControllerGetVolume, proto::ControllerGetVolumeRequest { volume_id: id("pvc-2") }),
                f(
                    Call::NodeExpandVolume,
                    proto::NodeExpandVolumeRequest {
                        volume_id: id("pvc-1"),
                        volume_path: target.into(),
                        capacity_range: range(2 << 30),
                        ..Default::default()
                    },
                ),
                f(
                    Call::NodeUnpublishVolume,
                    proto::NodeUnpublishVolumeRequest { volume_id: id("pvc-1"), target_path: target.into() },
                ),
                f(
                    Call::NodeUnstageVolume,
                    proto::NodeUnstageVolumeRequest { volume_id: id("pvc-1"), staging_target_path: staging.into() },
                ),
                f(
                    Call::DeleteSnapshot,
                    proto::DeleteSnapshotRequest { snapshot_id: id("snap-1"), ..Default::default() },
                ),
                f(Call::DeleteVolume, proto::DeleteVolumeRequest { volume_id: id("pvc-1"), ..Default::default() }),
            ],
        ),
        (
            "block-and-xfs",
            vec![
                create("blk", &block, None),
                stage("blk", &block),
                publish("blk", &block),
                create("xfs", &cap("xfs"), None),
                stage("xfs", &cap("ext4")),
                f(
                    Call::GetCapacity,
                    proto::GetCapacityRequest { volume_capabilities: vec![cap("xfs")], ..Default::default() },
                ),
                f(
                    Call::ValidateVolumeCapabilities,
                    proto::ValidateVolumeCapabilitiesRequest {
                        volume_id: id("xfs"),
                        volume_capabilities: vec![block.clone()],
                        ..Default::default()
                    },
                ),
            ],
        ),
        (
            "refusals",
            vec![
                create("pvc-1", &ext4, None),
                f(
                    Call::CreateVolume,
                    proto::CreateVolumeRequest {
                        name: "pvc-1".into(),
                        capacity_range: range(3 << 30),
                        volume_capabilities: vec![ext4.clone()],
                        ..Default::default()
                    },
                ),
                f(
                    Call::CreateVolume,
                    proto::CreateVolumeRequest {
                        name: "huge".into(),
                        capacity_range: range(1 << 50),
                        volume_capabilities: vec![ext4.clone()],
                        ..Default::default()
                    },
                ),
                f(
                    Call::ListVolumes,
                    proto::ListVolumesRequest { starting_token: "garbage".into(), ..Default::default() },
                ),
                stage("missing", &ext4),
                publish("pvc-1", &ext4),
                f(
                    Call::ControllerExpandVolume,
                    proto::ControllerExpandVolumeRequest { volume_id: id("pvc-1"), ..Default::default() },
                ),
                f(Call::Probe, proto::ProbeRequest {}),
                f(Call::GetPluginInfo, proto::GetPluginInfoRequest {}),
                f(Call::NodeGetInfo, proto::NodeGetInfoRequest {}),
            ],
        ),
    ]
}

/// Every parser of text the driver is handed (the kernel's status and table lines, thin_dump's
/// XML, /proc's mountinfo, object ids, names, sizes): none panics on any text, and what parses
/// prints back to the same value. Panics on a broken promise (for the fuzz target).
pub fn check_parsers(text: &str) {
    use crate::dm::status::parse_thin_mapped_sectors;
    use crate::dm::{PoolStatus, PoolTable};
    use crate::shared::ids::ObjectId;
    if let Ok(status) = text.parse::<PoolStatus>() {
        let printed = status.to_string();
        assert_eq!(printed.parse::<PoolStatus>().as_ref(), Ok(&status), "status {text:?} printed as {printed:?}");
    }
    if let Ok(table) = text.parse::<PoolTable>() {
        let printed = table.to_string();
        assert_eq!(printed.parse::<PoolTable>().as_ref(), Ok(&table), "table {text:?} printed as {printed:?}");
    }
    let _ = parse_thin_mapped_sectors(text);
    let _ = crate::dm::kernel::parse_thin_dump_ids(text);
    let _ = crate::mount::mountinfo::parse(text);
    if let Ok(id) = ObjectId::parse(text) {
        assert_eq!(id.to_string(), text, "an id prints as it was given");
    }
    if let Ok(name) = crate::names::Name::new(text) {
        assert_eq!(name.as_str(), text);
    }
    let _ = crate::units::parse_size(text);
}

/// Texts of every kind the parsers take, for the parsers' corpus.
pub fn parser_seeds() -> Vec<&'static str> {
    vec![
        "1 10/1024 20/2048 - rw discard_passdown queue_if_no_space - 256",
        "7 300/4096 16384/16384 12 out_of_data_space no_discard_passdown error_if_no_space needs_check",
        "Fail",
        "253:1 253:2 128 32768 1 skip_block_zeroing",
        "7:0 7:1 128 3276 1 error_if_no_space",
        "2048 4095",
        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        "<superblock uuid=\"\" time=\"0\" transaction=\"3\"><device dev_id=\"1\" mapped_blocks=\"0\"/></superblock>",
        "pvc-1@node-1",
        "pvc-0123456789abcdef~0123456789ab@~0123456789abcdef",
        "512Mi",
        "10G",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_tolerate_truncation() {
        let fs = vec![
            Frame { call: Call::CreateVolume, request: vec![1, 2, 3] },
            Frame { call: Call::NodeGetInfo, request: vec![] },
        ];
        assert_eq!(frames(&encode(&fs)), fs);
        assert_eq!(frames(&[3, 9, 0, 7]), vec![Frame { call: Call::CreateVolume, request: vec![7] }]);
        assert_eq!(frames(&[3]), vec![Frame { call: Call::CreateVolume, request: vec![] }]);
        assert_eq!(frames(&[3 + CALLS.len() as u8, 0, 0])[0].call, Call::CreateVolume);
    }

    /// The seeds keep every promise, and the lifecycle seed really goes through (so the fuzzer
    /// starts from inputs that reach deep into each call).
    #[tokio::test]
    async fn seeds_keep_every_promise() {
        for (name, seed) in seeds() {
            let dir = tempfile::tempdir().unwrap();
            let h = Harness::new(dir.path()).unwrap();
            let answers = h.run(&encode(&seed)).await.unwrap_or_else(|v| panic!("seed {name}: {v}"));
            assert_eq!(answers.len(), seed.len(), "seed {name}: every frame decodes");
            if name == "lifecycle" {
                assert!(answers.iter().all(|(_, c)| *c == Code::Ok), "{answers:?}");
            }
        }
    }

    /// A harness that cannot fail would prove nothing: a code outside a call's list is caught
    /// (Probe on a read-only pool; a kernel error on a snapshot answers INTERNAL).
    #[tokio::test]
    async fn violations_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::new(dir.path()).unwrap();
        h.driver.engine.pool().set_mode(crate::dm::PoolMode::Ro);
        let probe = encode(&[Frame { call: Call::Probe, request: vec![] }]);
        assert!(matches!(h.run(&probe).await, Err(Violation::Code { call: Call::Probe, .. })));
        h.driver.engine.pool().set_mode(crate::dm::PoolMode::Rw);
        let seed = &seeds()[0].1;
        h.run(&encode(&seed[..1])).await.unwrap();
        h.driver.engine.pool().fail_next("create_snap", nix::errno::Errno::EIO);
        let snap = seed.iter().find(|f| f.call == Call::CreateSnapshot).unwrap().clone();
        let v = h.run(&encode(&[snap])).await.unwrap_err();
        assert!(matches!(v, Violation::Code { code: Code::Internal, .. }), "{v}");
    }

    /// Every input of the committed corpus (`fuzz/corpus/`) replays without a broken promise, so
    /// what the fuzzer found and kept is a regression test here, without the fuzzer.
    #[tokio::test]
    async fn committed_corpus_keeps_every_promise() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let read = |target: &str| -> Vec<(std::path::PathBuf, Vec<u8>)> {
            let dir = corpus.join(target);
            let mut inputs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
                .collect();
            inputs.sort();
            assert!(inputs.len() >= 10, "{}: only {} inputs", dir.display(), inputs.len());
            inputs
        };
        for (path, input) in read("csi_requests") {
            let dir = tempfile::tempdir().unwrap();
            let h = Harness::new(dir.path()).unwrap();
            h.run(&input).await.unwrap_or_else(|v| panic!("{}: {v}", path.display()));
        }
        for (_, input) in read("parsers") {
            check_parsers(&String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn parsers_keep_their_promises_on_their_seeds() {
        for text in parser_seeds() {
            check_parsers(text);
        }
    }

    /// The corpus holds every seed as `fuzz_seeds` writes it (so the seeds cannot drift from the
    /// requests the services take).
    #[test]
    fn every_seed_is_in_the_corpus() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, frames) in seeds() {
            let path = corpus.join("csi_requests").join(format!("seed-{name}"));
            assert_eq!(
                std::fs::read(&path).ok(),
                Some(encode(&frames)),
                "{} (run the fuzz_seeds example)",
                path.display()
            );
        }
        for (i, text) in parser_seeds().iter().enumerate() {
            let path = corpus.join("parsers").join(format!("seed-{i}"));
            assert_eq!(std::fs::read(&path).ok(), Some(text.as_bytes().to_vec()), "{}", path.display());
        }
    }
}
