//! CSI services against the in-memory engine and mounter: request validation and codes,
//! idempotency, topology, pagination, capacity, and that bad input changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Code, Request};

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};
use super::proto::{self, controller_server::Controller, identity_server::Identity, node_server::Node};
use super::{validate, Driver};
use crate::dm::memory::MemoryPool;
use crate::dm::PoolMode;
use crate::mount::memory::MemoryMounter;
use crate::mount::Mounter;
use crate::shared::TOPOLOGY_KEY;

const NODE: &str = "node-1";
const KUBELET: &str = "/var/lib/kubelet";
const GIB: i64 = 1 << 30;

type D = Driver<MemoryPool, MemoryMounter>;

struct Fixture {
    driver: Arc<D>,
    identity: IdentityService<MemoryPool, MemoryMounter>,
    ctl: Arc<ControllerService<MemoryPool, MemoryMounter>>,
    node: Arc<NodeService<MemoryPool, MemoryMounter>>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_on(NODE)
}

fn fixture_on(node: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let h = super::fuzzing::Harness::on(dir.path(), node).unwrap();
    Fixture { driver: h.driver, identity: h.identity, ctl: h.ctl, node: h.node, _dir: dir }
}

fn mount_cap(fs: &str) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
    }
}

fn block_cap() -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

fn create_req(name: &str, bytes: i64) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(proto::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![mount_cap("ext4")],
        ..Default::default()
    }
}

fn id(name: &str) -> String {
    format!("{name}@{NODE}")
}

impl Fixture {
    async fn create(&self, req: proto::CreateVolumeRequest) -> Result<proto::Volume, tonic::Status> {
        Ok(self.ctl.create_volume(Request::new(req)).await?.into_inner().volume.unwrap())
    }

    async fn capacity(&self) -> i64 {
        self.ctl.get_capacity(Request::new(Default::default())).await.unwrap().into_inner().available_capacity
    }

    fn state(&self) -> (u64, Vec<crate::store::Record>, usize) {
        let e = &self.driver.engine;
        (e.pool().message_count(), e.list(crate::store::Kind::Volume).unwrap(), self.driver.mounter.mount_count())
    }
}

#[tokio::test]
async fn identity() {
    let f = fixture();
    let info = f.identity.get_plugin_info(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(info.name, "thinpool.csi.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = f.identity.get_plugin_capabilities(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(caps.capabilities.len(), 4, "controller, group controller, topology, online expansion");
    let probe = f.identity.probe(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    f.driver.engine.pool().set_mode(PoolMode::Ro);
    let err = f.identity.probe(Request::new(Default::default())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn create_volume_is_idempotent_and_carries_topology() {
    let f = fixture();
    let v = f.create(create_req("pvc-1", GIB)).await.unwrap();
    assert_eq!(v.volume_id, id("pvc-1"));
    assert_eq!(v.capacity_bytes, GIB);
    assert_eq!(v.accessible_topology, vec![validate::this_node(NODE)]);
    assert_eq!(v.volume_context.get("fsType").map(String::as_str), Some("ext4"));
    assert_eq!(f.create(create_req("pvc-1", GIB)).await.unwrap(), v);
    let err = f.create(create_req("pvc-1", 2 * GIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Rounded up to the pool's 64 KiB block.
    assert_eq!(f.create(create_req("pvc-2", 1000)).await.unwrap().capacity_bytes, 64 << 10);
    // XFS needs 300 MiB: a smaller request is rounded up, or refused when the limit forbids it.
    let mut x = create_req("pvc-x", 100 << 20);
    x.volume_capabilities = vec![mount_cap("xfs")];
    assert_eq!(f.create(x.clone()).await.unwrap().capacity_bytes, 300 << 20);
    x.name = "pvc-y".into();
    x.capacity_range = Some(proto::CapacityRange { required_bytes: 100 << 20, limit_bytes: 200 << 20 });
    assert_eq!(f.create(x).await.unwrap_err().code(), Code::OutOfRange);
}

#[tokio::test]
async fn bad_create_requests_get_their_codes_and_change_nothing() {
    let f = fixture();
    f.create(create_req("existing", GIB)).await.unwrap();
    let before = f.state();
    let mut cases: Vec<(proto::CreateVolumeRequest, Code)> = vec![];
    for name in ["", "a/b", "..", "x\0y", &"x".repeat(129)] {
        cases.push((create_req(name, GIB), Code::InvalidArgument));
    }
    let mut r = create_req("v", GIB);
    r.volume_capabilities.clear();
    cases.push((r, Code::InvalidArgument));
    let mut r = create_req("v", GIB);
    r.volume_capabilities[0].access_mode = Some(AccessMode { mode: Mode::MultiNodeMultiWriter as i32 });
    cases.push((r, Code::InvalidArgument));
    let mut r = create_req("v", GIB);
    r.volume_capabilities[0].access_type = None;
    cases.push((r, Code::InvalidArgument));
    cases.push((
        proto::CreateVolumeRequest { volume_capabilities: vec![mount_cap("btrfs")], ..create_req("v", GIB) },
        Code::InvalidArgument,
    ));
    cases.push((create_req("v", -1), Code::InvalidArgument));
    let mut r = create_req("v", GIB);
    r.capacity_range = Some(proto::CapacityRange { required_bytes: 2 * GIB, limit_bytes: GIB });
    cases.push((r, Code::InvalidArgument));
    let mut r = create_req("v", GIB);
    r.parameters = HashMap::from([("fsType".into(), "zfs".into())]);
    cases.push((r, Code::InvalidArgument));
    let mut r = create_req("v", GIB);
    r.accessibility_requirements =
        Some(proto::TopologyRequirement { requisite: vec![validate::this_node("other")], preferred: vec![] });
    cases.push((r, Code::ResourceExhausted));
    let mut r = create_req("v", GIB);
    r.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Snapshot(proto::volume_content_source::SnapshotSource {
            snapshot_id: "snap@other-node".into(),
        })),
    });
    cases.push((r, Code::ResourceExhausted));
    let mut r = create_req("v", GIB);
    r.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Snapshot(proto::volume_content_source::SnapshotSource {
            snapshot_id: id("no-such-snap"),
        })),
    });
    cases.push((r, Code::NotFound));
    let mut r = create_req("v", GIB);
    r.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Volume(proto::volume_content_source::VolumeSource {
            volume_id: "../x@node-1".into(),
        })),
    });
    // An id not of our form names no volume: the spec's NOT_FOUND for a missing source.
    cases.push((r, Code::NotFound));
    let mut r = create_req("v", GIB);
    r.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Snapshot(proto::volume_content_source::SnapshotSource {
            snapshot_id: "reallyfakesnapshotid".into(),
        })),
    });
    cases.push((r, Code::NotFound));
    cases.push((create_req("too-big", 100 * GIB), Code::ResourceExhausted));
    for (req, code) in cases {
        let what = format!("{:?}", req.name);
        let err = f.create(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty());
    }
    assert_eq!(f.state(), before, "bad input changed the pool, records or mounts");
}

#[tokio::test]
async fn snapshots_restore_and_clone() {
    let f = fixture();
    f.create(create_req("base", GIB)).await.unwrap();
    let snap_req =
        proto::CreateSnapshotRequest { name: "snap-1".into(), source_volume_id: id("base"), ..Default::default() };
    let s = f.ctl.create_snapshot(Request::new(snap_req.clone())).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!((s.snapshot_id.as_str(), s.size_bytes, s.ready_to_use), (id("snap-1").as_str(), GIB, true));
    assert!(s.creation_time.is_some());
    let again = f.ctl.create_snapshot(Request::new(snap_req)).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again, s);
    let missing =
        proto::CreateSnapshotRequest { name: "snap-2".into(), source_volume_id: id("nope"), ..Default::default() };
    assert_eq!(f.ctl.create_snapshot(Request::new(missing)).await.unwrap_err().code(), Code::NotFound);
    let other =
        proto::CreateSnapshotRequest { name: "snap-1".into(), source_volume_id: id("other"), ..Default::default() };
    f.create(create_req("other", GIB)).await.unwrap();
    assert_eq!(f.ctl.create_snapshot(Request::new(other)).await.unwrap_err().code(), Code::AlreadyExists);

    // Restore, larger than the snapshot; and a restore asking less gets the snapshot's size.
    let mut r = create_req("restored", 2 * GIB);
    r.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Snapshot(proto::volume_content_source::SnapshotSource {
            snapshot_id: id("snap-1"),
        })),
    });
    let v = f.create(r.clone()).await.unwrap();
    assert_eq!(v.capacity_bytes, 2 * GIB);
    assert_eq!(v.content_source, r.volume_content_source);
    r.name = "small".into();
    r.capacity_range = Some(proto::CapacityRange { required_bytes: GIB / 2, limit_bytes: 0 });
    assert_eq!(f.create(r.clone()).await.unwrap().capacity_bytes, GIB);
    r.name = "limited".into();
    r.capacity_range = Some(proto::CapacityRange { required_bytes: GIB / 2, limit_bytes: GIB / 2 });
    assert_eq!(f.create(r).await.unwrap_err().code(), Code::OutOfRange);

    // Clone.
    let mut c = create_req("clone", GIB);
    c.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Volume(proto::volume_content_source::VolumeSource {
            volume_id: id("base"),
        })),
    });
    f.create(c).await.unwrap();

    // List by id, by source; delete the origin, the snapshot stays.
    let by_id = proto::ListSnapshotsRequest { snapshot_id: id("snap-1"), ..Default::default() };
    assert_eq!(f.ctl.list_snapshots(Request::new(by_id)).await.unwrap().into_inner().entries.len(), 1);
    let by_src = proto::ListSnapshotsRequest { source_volume_id: id("base"), ..Default::default() };
    assert_eq!(f.ctl.list_snapshots(Request::new(by_src)).await.unwrap().into_inner().entries.len(), 1);
    let unknown = proto::ListSnapshotsRequest { snapshot_id: "garbage".into(), ..Default::default() };
    assert!(f.ctl.list_snapshots(Request::new(unknown)).await.unwrap().into_inner().entries.is_empty());
    f.ctl
        .delete_volume(Request::new(proto::DeleteVolumeRequest { volume_id: id("base"), ..Default::default() }))
        .await
        .unwrap();
    let all = f.ctl.list_snapshots(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(all.entries.len(), 1);
    for _ in 0..2 {
        f.ctl
            .delete_snapshot(Request::new(proto::DeleteSnapshotRequest {
                snapshot_id: id("snap-1"),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn delete_list_and_capacity() {
    let f = fixture();
    let before = f.capacity().await;
    for i in 0..5 {
        f.create(create_req(&format!("v{i}"), GIB)).await.unwrap();
    }
    assert_eq!(f.capacity().await, before - 5 * GIB);
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = f
            .ctl
            .list_volumes(Request::new(proto::ListVolumesRequest { max_entries: 2, starting_token: token.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen, (0..5).map(|i| id(&format!("v{i}"))).collect::<Vec<_>>());
    let bad = proto::ListVolumesRequest { max_entries: 2, starting_token: "bogus".into() };
    assert_eq!(f.ctl.list_volumes(Request::new(bad)).await.unwrap_err().code(), Code::Aborted);
    let neg = proto::ListVolumesRequest { max_entries: -1, starting_token: String::new() };
    assert_eq!(f.ctl.list_volumes(Request::new(neg)).await.unwrap_err().code(), Code::InvalidArgument);

    for _ in 0..2 {
        f.ctl
            .delete_volume(Request::new(proto::DeleteVolumeRequest { volume_id: id("v0"), ..Default::default() }))
            .await
            .unwrap();
    }
    assert_eq!(f.capacity().await, before - 4 * GIB);
    let other = proto::DeleteVolumeRequest { volume_id: "v1@other-node".into(), ..Default::default() };
    assert_eq!(f.ctl.delete_volume(Request::new(other)).await.unwrap_err().code(), Code::FailedPrecondition);
    let empty = proto::DeleteVolumeRequest::default();
    assert_eq!(f.ctl.delete_volume(Request::new(empty)).await.unwrap_err().code(), Code::InvalidArgument);
    // Ids not of our form name no volume: deleting them succeeds and changes nothing (a static
    // PV with a stray handle and reclaim policy Delete must not be retried forever).
    let left = f.capacity().await;
    for foreign in ["v1", "a/b@node-1", "..@node-1", "fake-vol-id", "x~0123@node-1"] {
        let r = proto::DeleteVolumeRequest { volume_id: foreign.into(), ..Default::default() };
        f.ctl.delete_volume(Request::new(r)).await.unwrap_or_else(|e| panic!("{foreign:?}: {e}"));
        let r = proto::DeleteSnapshotRequest { snapshot_id: foreign.into(), ..Default::default() };
        f.ctl.delete_snapshot(Request::new(r)).await.unwrap_or_else(|e| panic!("{foreign:?}: {e}"));
    }
    assert_eq!(f.capacity().await, left);

    // GetCapacity for another node's topology is zero.
    let t = proto::Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), "other".to_owned())]) };
    let r = proto::GetCapacityRequest { accessible_topology: Some(t), ..Default::default() };
    assert_eq!(f.ctl.get_capacity(Request::new(r)).await.unwrap().into_inner().available_capacity, 0);
    let get = proto::ControllerGetVolumeRequest { volume_id: id("v1") };
    let got = f.ctl.controller_get_volume(Request::new(get)).await.unwrap().into_inner();
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
    let get = proto::ControllerGetVolumeRequest { volume_id: id("v0") };
    assert_eq!(f.ctl.controller_get_volume(Request::new(get)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn validate_volume_capabilities() {
    let f = fixture();
    f.create(create_req("v", GIB)).await.unwrap();
    let ok = proto::ValidateVolumeCapabilitiesRequest {
        volume_id: id("v"),
        volume_capabilities: vec![mount_cap("xfs")],
        ..Default::default()
    };
    assert!(f.ctl.validate_volume_capabilities(Request::new(ok)).await.unwrap().into_inner().confirmed.is_some());
    let mut multi = mount_cap("ext4");
    multi.access_mode = Some(AccessMode { mode: Mode::MultiNodeReaderOnly as i32 });
    let no = proto::ValidateVolumeCapabilitiesRequest {
        volume_id: id("v"),
        volume_capabilities: vec![multi],
        ..Default::default()
    };
    let r = f.ctl.validate_volume_capabilities(Request::new(no)).await.unwrap().into_inner();
    assert!(r.confirmed.is_none() && !r.message.is_empty());
    let missing = proto::ValidateVolumeCapabilitiesRequest {
        volume_id: id("nope"),
        volume_capabilities: vec![mount_cap("")],
        ..Default::default()
    };
    assert_eq!(f.ctl.validate_volume_capabilities(Request::new(missing)).await.unwrap_err().code(), Code::NotFound);
    let empty = proto::ValidateVolumeCapabilitiesRequest { volume_id: id("v"), ..Default::default() };
    assert_eq!(
        f.ctl.validate_volume_capabilities(Request::new(empty)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

fn stage_req(name: &str, cap: proto::VolumeCapability) -> proto::NodeStageVolumeRequest {
    proto::NodeStageVolumeRequest {
        volume_id: id(name),
        staging_target_path: format!("{KUBELET}/plugins/kubernetes.io/csi/thinpool.csi.io/{name}/globalmount"),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

fn publish_req(name: &str, cap: proto::VolumeCapability, ro: bool) -> proto::NodePublishVolumeRequest {
    proto::NodePublishVolumeRequest {
        volume_id: id(name),
        staging_target_path: format!("{KUBELET}/plugins/kubernetes.io/csi/thinpool.csi.io/{name}/globalmount"),
        target_path: format!("{KUBELET}/pods/uid/volumes/kubernetes.io~csi/{name}/mount"),
        volume_capability: Some(cap),
        readonly: ro,
        ..Default::default()
    }
}

#[tokio::test]
async fn node_stage_publish_is_idempotent_and_never_reformats() {
    let f = fixture();
    f.create(create_req("v", GIB)).await.unwrap();
    let m = f.driver.mounter.clone();
    for _ in 0..2 {
        f.node.node_stage_volume(Request::new(stage_req("v", mount_cap("ext4")))).await.unwrap();
    }
    assert_eq!(m.formats(), 1);
    for _ in 0..2 {
        f.node.node_publish_volume(Request::new(publish_req("v", mount_cap("ext4"), false))).await.unwrap();
    }
    let ro = f.node.node_publish_volume(Request::new(publish_req("v", mount_cap("ext4"), true))).await.unwrap_err();
    assert_eq!(ro.code(), Code::AlreadyExists);
    let stats = proto::NodeGetVolumeStatsRequest {
        volume_id: id("v"),
        volume_path: publish_req("v", mount_cap(""), false).target_path,
        staging_target_path: String::new(),
    };
    let s = f.node.node_get_volume_stats(Request::new(stats)).await.unwrap().into_inner();
    assert_eq!(s.usage.len(), 2);
    assert!(!s.volume_condition.unwrap().abnormal);
    let expand = proto::NodeExpandVolumeRequest {
        volume_id: id("v"),
        volume_path: publish_req("v", mount_cap(""), false).target_path,
        capacity_range: Some(proto::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        ..Default::default()
    };
    assert_eq!(
        f.node.node_expand_volume(Request::new(expand.clone())).await.unwrap().into_inner().capacity_bytes,
        2 * GIB
    );
    assert_eq!(f.node.node_expand_volume(Request::new(expand)).await.unwrap().into_inner().capacity_bytes, 2 * GIB);
    assert!(m.grows() >= 2);
    for _ in 0..2 {
        let r = proto::NodeUnpublishVolumeRequest {
            volume_id: id("v"),
            target_path: publish_req("v", mount_cap(""), false).target_path,
        };
        f.node.node_unpublish_volume(Request::new(r)).await.unwrap();
        let r = proto::NodeUnstageVolumeRequest {
            volume_id: id("v"),
            staging_target_path: stage_req("v", mount_cap("")).staging_target_path,
        };
        f.node.node_unstage_volume(Request::new(r)).await.unwrap();
    }
    assert_eq!(m.mount_count(), 0);

    // A device holding another filesystem is never reformatted.
    f.create(create_req("w", GIB)).await.unwrap();
    let dev = f.driver.engine.activate(crate::store::Kind::Volume, "w").unwrap();
    m.set_signature(&dev, "xfs");
    let err = f.node.node_stage_volume(Request::new(stage_req("w", mount_cap("ext4")))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(m.formats(), 1);
    // Publishing an unstaged filesystem volume is refused.
    let err = f.node.node_publish_volume(Request::new(publish_req("w", mount_cap("xfs"), false))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn node_block_volumes_and_bad_paths() {
    let f = fixture();
    let mut r = create_req("b", GIB);
    r.volume_capabilities = vec![block_cap()];
    let v = f.create(r).await.unwrap();
    assert!(v.volume_context.is_empty());
    f.node.node_stage_volume(Request::new(stage_req("b", block_cap()))).await.unwrap();
    let mut p = publish_req("b", block_cap(), false);
    p.target_path = format!("{KUBELET}/plugins/kubernetes.io/csi/volumeDevices/publish/b/pod");
    f.node.node_publish_volume(Request::new(p.clone())).await.unwrap();
    assert!(f.driver.mounter.exists(std::path::Path::new(&p.target_path)));
    assert_eq!(f.driver.mounter.formats(), 0);

    let before = f.state();
    let outside = ["/etc/passwd", "/var/lib/kubelet/../../etc", "relative", "", "/var/lib/kubeletX/a"];
    for path in outside {
        let mut s = stage_req("b", mount_cap("ext4"));
        s.staging_target_path = path.into();
        assert_eq!(
            f.node.node_stage_volume(Request::new(s)).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{path:?}"
        );
        let mut p = publish_req("b", mount_cap("ext4"), false);
        p.target_path = path.into();
        assert_eq!(
            f.node.node_publish_volume(Request::new(p)).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{path:?}"
        );
    }
    let mut s = stage_req("b", mount_cap("ext4"));
    s.volume_capability = None;
    assert_eq!(f.node.node_stage_volume(Request::new(s)).await.unwrap_err().code(), Code::InvalidArgument);
    let mut s = stage_req("b", mount_cap("ext4"));
    s.volume_id = "b@other-node".into();
    assert_eq!(f.node.node_stage_volume(Request::new(s)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(f.state(), before);

    let info = f.node.node_get_info(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(info.node_id, NODE);
    assert_eq!(info.accessible_topology, Some(validate::this_node(NODE)));
}

#[tokio::test]
async fn a_second_call_for_a_busy_volume_is_aborted() {
    let f = fixture();
    f.create(create_req("v", GIB)).await.unwrap();
    let held = f.driver.in_flight.claim(crate::store::Kind::Volume, &id("v")).unwrap();
    let err = f.node.node_stage_volume(Request::new(stage_req("v", mount_cap("ext4")))).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = f
        .ctl
        .delete_volume(Request::new(proto::DeleteVolumeRequest { volume_id: id("v"), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    // A create of the same name claims the id the volume has: it meets the calls that carry it.
    assert_eq!(f.create(create_req("v", GIB)).await.unwrap_err().code(), Code::Aborted);
    drop(held);
    assert!(f.create(create_req("v", GIB)).await.is_ok(), "idempotent once the other call ended");
}

#[tokio::test]
async fn unimplemented_calls_say_why() {
    let f = fixture();
    let e = f.ctl.controller_expand_volume(Request::new(Default::default())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("NodeExpandVolume"));
    let e = f.ctl.controller_publish_volume(Request::new(Default::default())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

fn source(kind: crate::store::Kind, id: &str) -> Option<proto::VolumeContentSource> {
    use proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    Some(proto::VolumeContentSource {
        r#type: Some(match kind {
            crate::store::Kind::Snapshot => Type::Snapshot(SnapshotSource { snapshot_id: id.into() }),
            crate::store::Kind::Volume => Type::Volume(VolumeSource { volume_id: id.into() }),
        }),
    })
}

/// CSI allows names of 128 bytes and ids of 128 bytes; Kubernetes allows node names of 253.
/// Every such name on every such node works end to end, with ids within the limit.
#[tokio::test]
async fn maximum_length_names_on_a_maximum_length_node() {
    use crate::store::Kind;
    let node = format!("{}.example", "n".repeat(245));
    assert_eq!(node.len(), 253);
    let f = fixture_on(&node);
    let name = "v".repeat(128);
    let vol = f.create(create_req(&name, GIB)).await.unwrap();
    assert!(vol.volume_id.len() <= 128, "{}", vol.volume_id);
    assert_eq!(f.create(create_req(&name, GIB)).await.unwrap(), vol);
    let snap_name = "s".repeat(128);
    let snap = f
        .ctl
        .create_snapshot(Request::new(proto::CreateSnapshotRequest {
            name: snap_name.clone(),
            source_volume_id: vol.volume_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.snapshot_id.len() <= 128);
    assert_eq!(snap.source_volume_id, vol.volume_id);
    let mut restore = create_req(&"r".repeat(128), GIB);
    restore.volume_content_source = source(Kind::Snapshot, &snap.snapshot_id);
    f.create(restore).await.unwrap();
    let mut clone = create_req(&"c".repeat(100), GIB);
    clone.volume_content_source = source(Kind::Volume, &vol.volume_id);
    f.create(clone).await.unwrap();
    let listed = f
        .ctl
        .list_snapshots(Request::new(proto::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let by_source = proto::ListSnapshotsRequest { source_volume_id: vol.volume_id.clone(), ..Default::default() };
    assert_eq!(f.ctl.list_snapshots(Request::new(by_source)).await.unwrap().into_inner().entries.len(), 1);
    let get = proto::ControllerGetVolumeRequest { volume_id: vol.volume_id.clone() };
    assert_eq!(f.ctl.controller_get_volume(Request::new(get)).await.unwrap().into_inner().volume.unwrap(), {
        let mut v = vol.clone();
        v.volume_context.clear();
        v
    });
    // The same names on another long node are "elsewhere", not "missing".
    let other = crate::shared::ids::ObjectId::format(
        &crate::names::Name::new(&snap_name).unwrap(),
        &format!("{}.example", "m".repeat(245)),
    );
    let mut elsewhere = create_req("x", GIB);
    elsewhere.volume_content_source = source(Kind::Snapshot, &other);
    assert_eq!(f.create(elsewhere).await.unwrap_err().code(), Code::ResourceExhausted);
    f.ctl
        .delete_snapshot(Request::new(proto::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        }))
        .await
        .unwrap();
    f.ctl
        .delete_volume(Request::new(proto::DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let names: Vec<String> =
        f.driver.engine.list(Kind::Volume).unwrap().into_iter().map(|r| r.name.to_string()).collect();
    assert!(!names.contains(&name), "{names:?}");
    assert!(f.driver.engine.list(Kind::Snapshot).unwrap().is_empty());
}

/// NodeGetVolumeStats and NodeExpandVolume answer about the volume before the path.
#[tokio::test]
async fn node_calls_report_a_missing_volume_first() {
    let f = fixture();
    let vol = f.create(create_req("pvc-1", GIB)).await.unwrap();
    let stats = |volume_id: &str, volume_path: &str| proto::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: volume_path.into(),
        ..Default::default()
    };
    for (req, code) in [
        (stats("", "some/path"), Code::InvalidArgument),
        (stats(&id("pvc-1"), ""), Code::InvalidArgument),
        (stats("fake-vol-id", "some/path"), Code::NotFound),
        (stats(&id("no-such"), "some/path"), Code::NotFound),
        (stats(&vol.volume_id, "some/path"), Code::NotFound),
        (stats(&vol.volume_id, "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv/mount"), Code::NotFound),
    ] {
        let what = format!("{req:?}");
        assert_eq!(f.node.node_get_volume_stats(Request::new(req)).await.unwrap_err().code(), code, "{what}");
    }
    let expand = |volume_id: &str, volume_path: &str| proto::NodeExpandVolumeRequest {
        volume_id: volume_id.into(),
        volume_path: volume_path.into(),
        capacity_range: Some(proto::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        ..Default::default()
    };
    let before = f.state();
    for (req, code) in [
        (expand("", "some/path"), Code::InvalidArgument),
        (expand(&vol.volume_id, ""), Code::InvalidArgument),
        (expand("fake-vol-id", "some/path"), Code::NotFound),
        (expand(&id("no-such"), "some/path"), Code::NotFound),
        (expand(&vol.volume_id, "some/path"), Code::NotFound),
    ] {
        let what = format!("{req:?}");
        assert_eq!(f.node.node_expand_volume(Request::new(req)).await.unwrap_err().code(), code, "{what}");
    }
    assert_eq!(f.state(), before, "a refused expansion changes nothing");
    // Node calls with an id not of our form, or of another node, say NOT_FOUND.
    for bad in ["fake-vol-id", "pvc-1@other-node"] {
        let mut r = stage_req("pvc-1", mount_cap("ext4"));
        r.volume_id = bad.into();
        assert_eq!(f.node.node_stage_volume(Request::new(r)).await.unwrap_err().code(), Code::NotFound, "{bad}");
    }
}
