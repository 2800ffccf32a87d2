//! The `ThinPool` custom resource (`thinpool.csi.io/v1alpha1`, cluster-scoped, one per node pool,
//! named after the node). The node plugin writes its status; the controller reads it to keep the
//! scheduler's `CSIStorageCapacity` objects true. `thinpool-csi crdgen` prints the CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Names the pool's node; everything else is status.
// Each printcolumn repeats the same keys, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "thinpool.csi.io",
    version = "v1alpha1",
    kind = "ThinPool",
    plural = "thinpools",
    shortname = "tp",
    status = "ThinPoolStatus",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Data%", type_ = "number", json_path = ".status.dataPercent", description = "pool data fill"),
    printcolumn(
        name = "Meta%",
        type_ = "number",
        json_path = ".status.metadataPercent",
        description = "pool metadata fill"
    ),
    printcolumn(
        name = "Provisioned",
        type_ = "string",
        json_path = ".status.provisioned",
        description = "virtual size of volumes and snapshots"
    ),
    printcolumn(name = "Volumes", type_ = "integer", json_path = ".status.volumes"),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "Ready, DataPressure, MetadataPressure, ReadOnly, NeedsCheck or Stale"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ThinPoolSpec {
    /// The node whose pool this is.
    pub node_name: String,
}

/// The pool as its node last saw it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThinPoolStatus {
    pub node: String,
    /// `loop` or `direct-lvm`.
    pub pool_kind: String,
    /// The loop files' directory or `vg/lv`.
    pub device: String,
    pub data_total_bytes: u64,
    pub data_used_bytes: u64,
    pub metadata_total_bytes: u64,
    pub metadata_used_bytes: u64,
    pub chunk_size_bytes: u64,
    /// Sum of the virtual sizes of volumes and snapshots.
    pub provisioned_bytes: u64,
    /// `provisioned_bytes` for people (`12Gi`).
    pub provisioned: String,
    pub overprovision_ratio: f64,
    /// What may still be provisioned: the `capacity` of the CSIStorageCapacity objects.
    pub allowed_new_bytes: u64,
    pub data_percent: f64,
    pub metadata_percent: f64,
    pub volumes: u32,
    pub snapshots: u32,
    /// The pool's mode: `rw`, `ro`, `out_of_data_space`, `needs_check` or `fail`.
    pub mode: String,
    pub transaction_id: u64,
    /// A one-word summary for `kubectl get`: the first true of Stale, NeedsCheck, ReadOnly,
    /// DataPressure, MetadataPressure, else Ready.
    pub state: String,
    pub last_heartbeat: Option<Time>,
    /// Volumes no PersistentVolume references (reported, never deleted unless configured).
    #[serde(default)]
    pub orphaned_volumes: Vec<String>,
    /// PersistentVolumes of this driver for this node whose volume the node does not have.
    #[serde(default)]
    pub missing_volumes: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Automatic extension of an LVM-backed pool, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_extend: Option<crate::grow::Summary>,
}

/// The CRD as YAML.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = serde_yaml::to_value(ThinPool::crd())?;
    drop_unknown_formats(&mut crd);
    serde_yaml::to_string(&crd)
}

/// Removes the schema `format`s the API server does not know (schemars names Rust's unsigned
/// integers `uint64`, `uint32`, ...), each of which made every `kubectl apply` and `helm install`
/// of the CRD print `unrecognized format "uint64"`. The `minimum: 0` beside them stays.
fn drop_unknown_formats(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            if map.get("format").and_then(|f| f.as_str()).is_some_and(|f| f.starts_with("uint")) {
                map.remove("format");
            }
            map.values_mut().for_each(drop_unknown_formats);
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(drop_unknown_formats),
        _ => {}
    }
}

/// Where the generated CRD is committed, relative to the workspace.
pub const COMMITTED_CRD: &str = "manifests/crds/thinpool.csi.io_thinpools.yaml";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn the_crd_names_only_formats_the_api_server_knows() {
        let yaml = crd_yaml().expect("crd");
        let formats: Vec<&str> = yaml.lines().filter_map(|l| l.trim().strip_prefix("format: ")).collect();
        assert!(!formats.is_empty(), "the signed integers keep theirs");
        for f in formats {
            assert!(["int32", "int64", "float", "double", "date-time"].contains(&f), "format {f} in the CRD");
        }
    }

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(COMMITTED_CRD);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml().unwrap(),
            "{} differs from the CRD generated from the Rust types; regenerate it with `cargo run -q -p thinpool-csi -- crdgen > {COMMITTED_CRD}`",
            path.display()
        );
    }

    #[test]
    fn crd_is_cluster_scoped_with_printer_columns() {
        let crd = ThinPool::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "thinpool.csi.io");
        assert_eq!(ThinPool::api_version(&()), "thinpool.csi.io/v1alpha1");
        let v = &crd.spec.versions[0];
        let cols: Vec<&str> = v.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cols, ["Node", "Data%", "Meta%", "Provisioned", "Volumes", "State", "Age"]);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let yaml = crd_yaml().unwrap();
        assert!(yaml.contains("name: thinpools.thinpool.csi.io"));
        assert!(yaml.contains("allowedNewBytes"));
    }
}
