//! Pre-provisioned snapshots: the node label their csi-snapshotter needs.
//!
//! With distributed snapshotting (what a node-local driver runs), each node's csi-snapshotter
//! watches only the VolumeSnapshotContents labelled `snapshot.storage.kubernetes.io/managed-by:
//! <its node>`. The snapshot-controller sets that label on the contents it creates, but not on one
//! an operator creates with `source.snapshotHandle` (to bring back a snapshot after its objects
//! were deleted, or to move it to another namespace): no sidecar ever reads such a content, and its
//! VolumeSnapshot never becomes ready. The snapshot handle names the node (`<name>@<node>`), so the
//! leader labels those contents of this driver with it. A content that has the label already is
//! left as it is, whatever it says: it is the operator's.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch};
use serde_json::json;

use super::controller::{patch_params, ControllerError};
use crate::shared::ids::{NodeRef, ObjectId};
use crate::shared::PLUGIN_NAME;

/// The label each node's csi-snapshotter selects its contents by.
pub const LABEL_MANAGED_BY: &str = "snapshot.storage.kubernetes.io/managed-by";

/// A VolumeSnapshotContent as the planner reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    pub name: String,
    pub driver: String,
    /// `spec.source.snapshotHandle`: set only on a pre-provisioned content.
    pub snapshot_handle: Option<String>,
    /// The value of the `managed-by` label, if any.
    pub managed_by: Option<String>,
}

/// A label to add: (content name, node).
pub type Labelling = (String, String);

/// The contents of this driver that were pre-provisioned and carry no node label, with the node
/// their handle names. A long node name is only a digest in the handle: it is matched against
/// the nodes that have a pool (`nodes`); a content whose digest matches none waits for its pool.
/// A handle this driver never hands out is left alone (the csi-snapshotter reports it).
pub fn plan(contents: &[Content], nodes: &[String]) -> Vec<Labelling> {
    contents
        .iter()
        .filter(|c| c.driver == PLUGIN_NAME && c.managed_by.is_none())
        .filter_map(|c| {
            let id = ObjectId::parse(c.snapshot_handle.as_deref()?).ok()?;
            let node = match &id.node {
                NodeRef::Full(n) => n.clone(),
                NodeRef::Digest(_) => nodes.iter().find(|n| id.is_on(n))?.clone(),
            };
            Some((c.name.clone(), node))
        })
        .collect()
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent"),
        "volumesnapshotcontents",
    )
}

fn view(obj: &DynamicObject) -> Option<Content> {
    let spec = obj.data.get("spec")?;
    Some(Content {
        name: obj.metadata.name.clone()?,
        driver: spec.get("driver")?.as_str()?.to_owned(),
        snapshot_handle: spec.pointer("/source/snapshotHandle").and_then(|h| h.as_str()).map(str::to_owned),
        managed_by: obj.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).cloned(),
    })
}

/// Labels this driver's pre-provisioned contents with their node; the labels it added. A cluster
/// without the snapshot CRDs has nothing to label.
pub async fn label_pass(client: &kube::Client, nodes: &[String]) -> Result<Vec<Labelling>, ControllerError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    // Only the unlabelled ones: the snapshot-controller labels every content it creates, so this
    // stays small however many snapshots the cluster holds.
    let unlabelled = ListParams::default().labels(&format!("!{LABEL_MANAGED_BY}"));
    let items = match api.list(&unlabelled).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(vec![]),
        Err(source) => return Err(ControllerError::List { what: "VolumeSnapshotContents", source }),
    };
    let contents: Vec<Content> = items.iter().filter_map(view).collect();
    let labelled = plan(&contents, nodes);
    for (name, node) in &labelled {
        let patch = json!({ "metadata": { "labels": { LABEL_MANAGED_BY: node } } });
        match api.patch(name, &patch_params(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Deleted since the list: nothing to label.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(ControllerError::LabelContent { name: name.clone(), source });
            }
        }
    }
    Ok(labelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    fn content(name: &str, driver: &str, handle: Option<&str>, label: Option<&str>) -> Content {
        Content {
            name: name.into(),
            driver: driver.into(),
            snapshot_handle: handle.map(Into::into),
            managed_by: label.map(Into::into),
        }
    }

    #[test]
    fn labels_only_unlabelled_preprovisioned_contents_of_this_driver() {
        let contents = [
            content("pre", PLUGIN_NAME, Some("snap-1@node-a"), None),
            content("dynamic", PLUGIN_NAME, None, None),
            content("labelled", PLUGIN_NAME, Some("snap-2@node-a"), Some("node-b")),
            content("other-driver", "hostpath.csi.k8s.io", Some("snap-3@node-a"), None),
            content("foreign-handle", PLUGIN_NAME, Some("0f3a-uuid"), None),
        ];
        assert_eq!(plan(&contents, &[]), vec![("pre".to_owned(), "node-a".to_owned())]);
    }

    #[test]
    fn a_digested_node_is_found_among_the_pools() {
        let long = format!("node-{}", "x".repeat(120));
        let handle = ObjectId::format(&Name::new("snap-1").unwrap(), &long);
        assert!(!handle.contains(&long), "{handle} should carry a digest of the node");
        let contents = [content("pre", PLUGIN_NAME, Some(&handle), None)];
        assert_eq!(plan(&contents, &["node-a".into(), long.clone()]), vec![("pre".to_owned(), long)]);
        // No pool has that node (yet): nothing to label, nothing guessed.
        assert!(plan(&contents, &["node-a".into()]).is_empty());
    }

    #[test]
    fn reads_the_content_as_the_api_server_returns_it() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": "pre", "labels": {"app": "db"}},
            "spec": {
                "driver": PLUGIN_NAME,
                "deletionPolicy": "Retain",
                "source": {"snapshotHandle": "snap-1@node-a"},
                "volumeSnapshotRef": {"name": "restore", "namespace": "default"}
            }
        }))
        .unwrap();
        assert_eq!(view(&obj), Some(content("pre", PLUGIN_NAME, Some("snap-1@node-a"), None)));
    }
}
