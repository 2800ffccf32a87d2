//! Snapshot contents no node's csi-snapshotter would read: the node label they need.
//!
//! With distributed snapshotting (what a node-local driver runs), each node's csi-snapshotter
//! watches only the (group) snapshot contents labelled `snapshot.storage.kubernetes.io/managed-by:
//! <its node>` (external-snapshotter v8.6.0). The snapshot-controller sets that label only on the
//! VolumeSnapshotContents it creates for dynamic snapshots, so two kinds are never read:
//!
//! - a VolumeSnapshotContent an operator creates with `source.snapshotHandle` (a pre-provisioned
//!   snapshot: to bring a snapshot back after its objects were deleted, or into another
//!   namespace): its VolumeSnapshot never becomes ready;
//! - every VolumeGroupSnapshotContent, dynamic (`source.volumeHandles`) or pre-provisioned
//!   (`source.groupSnapshotHandles`): no group snapshot is ever cut.
//!
//! Every handle this driver hands out names its node (`<name>@<node>`), so the leader labels those
//! contents of this driver with it. A content that has the label already is left as it is,
//! whatever it says: it is the operator's.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch};
use serde_json::json;

use super::controller::{patch_params, ControllerError};
use crate::shared::ids::{NodeRef, ObjectId};
use crate::shared::PLUGIN_NAME;

/// The label each node's csi-snapshotter selects its contents by.
pub const LABEL_MANAGED_BY: &str = "snapshot.storage.kubernetes.io/managed-by";

/// The two kinds of content a node's csi-snapshotter selects by its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    Snapshot,
    GroupSnapshot,
}

impl ContentKind {
    pub const ALL: [ContentKind; 2] = [ContentKind::Snapshot, ContentKind::GroupSnapshot];

    pub fn resource(self) -> ApiResource {
        let (group, kind, plural) = match self {
            ContentKind::Snapshot => ("snapshot.storage.k8s.io", "VolumeSnapshotContent", "volumesnapshotcontents"),
            ContentKind::GroupSnapshot => {
                ("groupsnapshot.storage.k8s.io", "VolumeGroupSnapshotContent", "volumegroupsnapshotcontents")
            }
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
    }

    /// The handles of a content's spec that name its node: a pre-provisioned snapshot's handle;
    /// a group's volumes, or its own handle when pre-provisioned. A dynamic VolumeSnapshotContent
    /// has none here: the snapshot-controller labels it (or, for a member of a group, no sidecar
    /// needs to read it).
    fn handles(self, spec: &serde_json::Value) -> Vec<String> {
        let text = |v: Option<&serde_json::Value>| v.and_then(|h| h.as_str()).map(str::to_owned);
        match self {
            ContentKind::Snapshot => text(spec.pointer("/source/snapshotHandle")).into_iter().collect(),
            ContentKind::GroupSnapshot => {
                let volumes = spec.pointer("/source/volumeHandles").and_then(|v| v.as_array());
                let mut out: Vec<String> = volumes.into_iter().flatten().filter_map(|h| text(Some(h))).collect();
                out.extend(text(spec.pointer("/source/groupSnapshotHandles/volumeGroupSnapshotHandle")));
                out
            }
        }
    }
}

/// A (group) snapshot content as the planner reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    pub name: String,
    pub driver: String,
    /// The handles that name its node ([`ContentKind::handles`]).
    pub handles: Vec<String>,
    /// The value of the `managed-by` label, if any.
    pub managed_by: Option<String>,
}

/// A label to add: (content name, node).
pub type Labelling = (String, String);

/// The contents of this driver that carry no node label and have a handle naming their node, with
/// that node (the first handle's that does: the volumes of a group are on one node, and when they
/// are not, that node's sidecar gets the driver's refusal and shows it). A long node name is only a
/// digest in a handle: it is matched against the nodes that have a pool (`nodes`); a content whose
/// digest matches none waits for its pool. A handle this driver never hands out is left alone.
pub fn plan(contents: &[Content], nodes: &[String]) -> Vec<Labelling> {
    contents
        .iter()
        .filter(|c| c.driver == PLUGIN_NAME && c.managed_by.is_none())
        .filter_map(|c| {
            let node = c.handles.iter().find_map(|h| {
                let id = ObjectId::parse(h).ok()?;
                match &id.node {
                    NodeRef::Full(n) => Some(n.clone()),
                    NodeRef::Digest(_) => nodes.iter().find(|n| id.is_on(n)).cloned(),
                }
            })?;
            Some((c.name.clone(), node))
        })
        .collect()
}

fn view(kind: ContentKind, obj: &DynamicObject) -> Option<Content> {
    let spec = obj.data.get("spec")?;
    Some(Content {
        name: obj.metadata.name.clone()?,
        driver: spec.get("driver")?.as_str()?.to_owned(),
        handles: kind.handles(spec),
        managed_by: obj.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).cloned(),
    })
}

/// Labels this driver's contents of both kinds with their node; the labels it added (kind, content,
/// node). A cluster without a kind's CRD has nothing of it to label.
pub async fn label_pass(
    client: &kube::Client,
    nodes: &[String],
) -> Result<Vec<(ContentKind, String, String)>, ControllerError> {
    let mut out = Vec::new();
    for kind in ContentKind::ALL {
        for (name, node) in label_kind(client, kind, nodes).await? {
            out.push((kind, name, node));
        }
    }
    Ok(out)
}

async fn label_kind(
    client: &kube::Client,
    kind: ContentKind,
    nodes: &[String],
) -> Result<Vec<Labelling>, ControllerError> {
    let resource = kind.resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    // Only the unlabelled ones: the snapshot-controller labels every content it creates, so this
    // stays small however many snapshots the cluster holds.
    let unlabelled = ListParams::default().labels(&format!("!{LABEL_MANAGED_BY}"));
    let items = match api.list(&unlabelled).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(vec![]),
        Err(source) => return Err(ControllerError::ListContents { kind: resource.kind.clone(), source }),
    };
    let contents: Vec<Content> = items.iter().filter_map(|o| view(kind, o)).collect();
    let labelled = plan(&contents, nodes);
    for (name, node) in &labelled {
        let patch = json!({ "metadata": { "labels": { LABEL_MANAGED_BY: node } } });
        match api.patch(name, &patch_params(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Deleted since the list: nothing to label.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(ControllerError::LabelContent { kind: resource.kind.clone(), name: name.clone(), source });
            }
        }
    }
    Ok(labelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    fn content(name: &str, driver: &str, handles: &[&str], label: Option<&str>) -> Content {
        Content {
            name: name.into(),
            driver: driver.into(),
            handles: handles.iter().map(|h| h.to_string()).collect(),
            managed_by: label.map(Into::into),
        }
    }

    #[test]
    fn labels_only_unlabelled_contents_of_this_driver_with_a_handle() {
        let contents = [
            content("pre", PLUGIN_NAME, &["snap-1@node-a"], None),
            content("dynamic", PLUGIN_NAME, &[], None),
            content("labelled", PLUGIN_NAME, &["snap-2@node-a"], Some("node-b")),
            content("other-driver", "hostpath.csi.k8s.io", &["snap-3@node-a"], None),
            content("foreign-handle", PLUGIN_NAME, &["0f3a-uuid"], None),
            // A group: the first volume whose handle names a node.
            content("group", PLUGIN_NAME, &["not-ours", "pvc-1@node-b", "pvc-2@node-b"], None),
        ];
        assert_eq!(
            plan(&contents, &[]),
            vec![("pre".to_owned(), "node-a".to_owned()), ("group".to_owned(), "node-b".to_owned())]
        );
    }

    #[test]
    fn a_digested_node_is_found_among_the_pools() {
        let long = format!("node-{}", "x".repeat(120));
        let handle = ObjectId::format(&Name::new("snap-1").unwrap(), &long);
        assert!(!handle.contains(&long), "{handle} should carry a digest of the node");
        let contents = [content("pre", PLUGIN_NAME, &[&handle], None)];
        assert_eq!(plan(&contents, &["node-a".into(), long.clone()]), vec![("pre".to_owned(), long)]);
        // No pool has that node (yet): nothing to label, nothing guessed.
        assert!(plan(&contents, &["node-a".into()]).is_empty());
    }

    #[test]
    fn reads_each_kind_as_the_api_server_returns_it() {
        let obj = |v: serde_json::Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
        let pre = obj(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": "pre", "labels": {"app": "db"}},
            "spec": {
                "driver": PLUGIN_NAME,
                "deletionPolicy": "Retain",
                "source": {"snapshotHandle": "snap-1@node-a"},
                "volumeSnapshotRef": {"name": "restore", "namespace": "default"}
            }
        }));
        assert_eq!(view(ContentKind::Snapshot, &pre), Some(content("pre", PLUGIN_NAME, &["snap-1@node-a"], None)));
        let dynamic = obj(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": "dyn"},
            "spec": {"driver": PLUGIN_NAME, "deletionPolicy": "Delete", "source": {"volumeHandle": "pvc-1@node-a"},
                     "volumeSnapshotRef": {"name": "s", "namespace": "default"}}
        }));
        assert_eq!(view(ContentKind::Snapshot, &dynamic), Some(content("dyn", PLUGIN_NAME, &[], None)));
        let group = obj(json!({
            "apiVersion": "groupsnapshot.storage.k8s.io/v1",
            "kind": "VolumeGroupSnapshotContent",
            "metadata": {"name": "g"},
            "spec": {"driver": PLUGIN_NAME, "deletionPolicy": "Delete",
                     "source": {"volumeHandles": ["pvc-1@node-a", "pvc-2@node-a"]},
                     "volumeGroupSnapshotRef": {"name": "g", "namespace": "default"}}
        }));
        assert_eq!(
            view(ContentKind::GroupSnapshot, &group),
            Some(content("g", PLUGIN_NAME, &["pvc-1@node-a", "pvc-2@node-a"], None))
        );
        let pre_group = obj(json!({
            "apiVersion": "groupsnapshot.storage.k8s.io/v1",
            "kind": "VolumeGroupSnapshotContent",
            "metadata": {"name": "pg"},
            "spec": {"driver": PLUGIN_NAME, "deletionPolicy": "Retain",
                     "source": {"groupSnapshotHandles": {"volumeGroupSnapshotHandle": "g1@node-a",
                                                         "volumeSnapshotHandles": ["g1:0@node-a"]}},
                     "volumeGroupSnapshotRef": {"name": "pg", "namespace": "default"}}
        }));
        assert_eq!(
            view(ContentKind::GroupSnapshot, &pre_group),
            Some(content("pg", PLUGIN_NAME, &["g1@node-a"], None))
        );
    }
}
