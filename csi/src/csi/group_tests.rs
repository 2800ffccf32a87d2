//! The GroupController service against the in-memory engine: the capability, every code the spec
//! names, idempotency, member ids carrying their group, and deletion of the whole group only.

use std::sync::Arc;

use tonic::{Code, Request};

use super::group_controller::GroupControllerService;
use super::proto::{
    self, controller_server::Controller, group_controller_server::GroupController, identity_server::Identity,
};
use crate::dm::memory::MemoryPool;
use crate::mount::memory::MemoryMounter;

const NODE: &str = "node-1";

struct Fixture {
    h: super::fuzzing::Harness,
    groups: Arc<GroupControllerService<MemoryPool, MemoryMounter>>,
    _dir: tempfile::TempDir,
}

fn id(name: &str) -> String {
    format!("{name}@{NODE}")
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let h = super::fuzzing::Harness::on(dir.path(), NODE).unwrap();
    for v in ["a", "b"] {
        h.driver.engine.create_volume(v, 1 << 30, None).unwrap();
    }
    let groups = Arc::new(GroupControllerService { driver: h.driver.clone() });
    Fixture { h, groups, _dir: dir }
}

fn create(name: &str, sources: &[&str]) -> proto::CreateVolumeGroupSnapshotRequest {
    proto::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

impl Fixture {
    async fn create(
        &self,
        req: proto::CreateVolumeGroupSnapshotRequest,
    ) -> Result<proto::VolumeGroupSnapshot, tonic::Status> {
        Ok(self.groups.create_volume_group_snapshot(Request::new(req)).await?.into_inner().group_snapshot.unwrap())
    }

    async fn get(&self, group: &str, snapshot_ids: &[String]) -> Result<proto::VolumeGroupSnapshot, tonic::Status> {
        let req = proto::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.into(),
            snapshot_ids: snapshot_ids.to_vec(),
            ..Default::default()
        };
        Ok(self.groups.get_volume_group_snapshot(Request::new(req)).await?.into_inner().group_snapshot.unwrap())
    }

    async fn delete(&self, group: &str, snapshot_ids: &[String]) -> Result<(), tonic::Status> {
        let req = proto::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.into(),
            snapshot_ids: snapshot_ids.to_vec(),
            ..Default::default()
        };
        self.groups.delete_volume_group_snapshot(Request::new(req)).await.map(|_| ())
    }

    fn messages(&self) -> u64 {
        self.h.driver.engine.pool().message_count()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

#[tokio::test]
async fn the_service_is_advertised_with_its_one_capability() {
    let f = fixture().await;
    let plugin = f.h.identity.get_plugin_capabilities(Request::new(Default::default())).await.unwrap().into_inner();
    let group_service = proto::plugin_capability::service::Type::GroupControllerService as i32;
    assert!(plugin.capabilities.iter().any(|c| matches!(
        &c.r#type,
        Some(proto::plugin_capability::Type::Service(s)) if s.r#type == group_service
    )));
    let caps = f.groups.group_controller_get_capabilities(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(caps.capabilities, super::group_controller::capabilities());
    assert_eq!(caps.capabilities.len(), 1);
}

#[tokio::test]
async fn create_get_list_and_delete_a_group() {
    let f = fixture().await;
    let g = f.create(create("g1", &[&id("b"), &id("a")])).await.unwrap();
    assert_eq!(g.group_snapshot_id, id("g1"));
    assert!(g.ready_to_use && g.creation_time.is_some());
    let members: Vec<(String, String, String)> = g
        .snapshots
        .iter()
        .map(|s| (s.snapshot_id.clone(), s.source_volume_id.clone(), s.group_snapshot_id.clone()))
        .collect();
    assert_eq!(
        members,
        vec![(id("g1:0"), id("a"), id("g1")), (id("g1:1"), id("b"), id("g1"))],
        "members in source order, each with its group"
    );
    // Idempotent: the same name and sources, in any order.
    let messages = f.messages();
    assert_eq!(f.create(create("g1", &[&id("a"), &id("b")])).await.unwrap(), g);
    assert_eq!(f.messages(), messages, "a repeated create sends no message");
    // ListSnapshots shows the members with their group id.
    let listed = f.h.ctl.list_snapshots(Request::new(Default::default())).await.unwrap().into_inner();
    let groups: Vec<String> =
        listed.entries.iter().map(|e| e.snapshot.as_ref().unwrap().group_snapshot_id.clone()).collect();
    assert_eq!(groups, vec![id("g1"), id("g1")]);
    // Get, with and without the member list.
    let ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    assert_eq!(f.get(&id("g1"), &[]).await.unwrap(), g);
    assert_eq!(f.get(&id("g1"), &ids.iter().rev().cloned().collect::<Vec<_>>()).await.unwrap(), g);
    assert_eq!(code(f.get(&id("g1"), &ids[..1]).await), Code::InvalidArgument, "a mismatched member list");
    // A member cannot be deleted alone (the spec's DeleteSnapshot: INVALID_ARGUMENT).
    let alone = f.h.ctl.delete_snapshot(Request::new(proto::DeleteSnapshotRequest {
        snapshot_id: ids[0].clone(),
        ..Default::default()
    }));
    let status = alone.await.expect_err("a member deleted alone");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("delete the group snapshot"), "{}", status.message());
    // Delete: a wrong member list is refused and changes nothing; then the group goes whole.
    assert_eq!(code(f.delete(&id("g1"), &[id("g1:0"), id("other")]).await), Code::InvalidArgument);
    assert!(f.get(&id("g1"), &[]).await.is_ok());
    f.delete(&id("g1"), &ids).await.unwrap();
    assert_eq!(code(f.get(&id("g1"), &[]).await), Code::NotFound);
    f.delete(&id("g1"), &ids).await.unwrap();
    let listed = f.h.ctl.list_snapshots(Request::new(Default::default())).await.unwrap().into_inner();
    assert!(listed.entries.is_empty());
}

#[tokio::test]
async fn every_refusal_has_its_code_and_changes_nothing() {
    let f = fixture().await;
    f.create(create("g1", &[&id("a")])).await.unwrap();
    let messages = f.messages();
    let cases: Vec<(proto::CreateVolumeGroupSnapshotRequest, Code)> = vec![
        (create("", &[&id("a")]), Code::InvalidArgument),
        (create("g2", &[]), Code::InvalidArgument),
        (create("bad/name", &[&id("a")]), Code::InvalidArgument),
        (create("g2", &[&id("a"), &id("a")]), Code::InvalidArgument),
        (create("g2", &[""]), Code::InvalidArgument),
        // Another node's volume: a group is cut in one pool.
        (create("g2", &[&id("a"), "b@node-2"]), Code::FailedPrecondition),
        (create("g2", &[&id("a"), &id("missing")]), Code::NotFound),
        (create("g2", &[&id("a"), "not-one-of-ours"]), Code::NotFound),
        // The same name with other sources.
        (create("g1", &[&id("a"), &id("b")]), Code::AlreadyExists),
        (
            proto::CreateVolumeGroupSnapshotRequest {
                parameters: [("speed".to_owned(), "fast".to_owned())].into(),
                ..create("g2", &[&id("a")])
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, want) in cases {
        let what = format!("{req:?}");
        assert_eq!(code(f.create(req).await), want, "{what}");
    }
    assert_eq!(f.messages(), messages, "no refused call sent a message");
    // Get and delete of ids that name nothing; an empty id.
    assert_eq!(code(f.get("fake-vol-id", &[]).await), Code::NotFound);
    assert_eq!(code(f.get(&id("nope"), &[]).await), Code::NotFound);
    assert_eq!(code(f.get("", &[]).await), Code::InvalidArgument);
    assert_eq!(code(f.get("g1@node-2", &[]).await), Code::FailedPrecondition);
    assert!(f.delete("fake-vol-id", &[]).await.is_ok());
    assert_eq!(code(f.delete("", &[]).await), Code::InvalidArgument);
    // The pool's room: more than it may provision is RESOURCE_EXHAUSTED.
    for i in 0..17 {
        f.h.driver.engine.create_volume(&format!("fill{i}"), 1 << 30, None).unwrap();
    }
    assert_eq!(code(f.create(create("g3", &[&id("a"), &id("b")])).await), Code::ResourceExhausted);
}
