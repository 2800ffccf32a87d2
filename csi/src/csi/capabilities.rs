//! What the plugin declares: its name and version, and its plugin, controller and node
//! capabilities, in one place, so the node plugin and the controller's capability endpoint (for
//! the external-resizer) cannot disagree.

use super::proto::{self, controller_service_capability as csc, node_service_capability as nsc, plugin_capability};

/// GetPluginInfo: the driver name and this build's version.
pub fn info() -> proto::GetPluginInfoResponse {
    proto::GetPluginInfoResponse {
        name: crate::shared::PLUGIN_NAME.into(),
        vendor_version: env!("CARGO_PKG_VERSION").into(),
        manifest: Default::default(),
    }
}

fn service(t: plugin_capability::service::Type) -> proto::PluginCapability {
    proto::PluginCapability {
        r#type: Some(plugin_capability::Type::Service(plugin_capability::Service { r#type: t as i32 })),
    }
}

/// Controller service (runs on each node, see the README), group snapshots, topology, online
/// expansion.
pub fn plugin() -> Vec<proto::PluginCapability> {
    use plugin_capability::service::Type as S;
    vec![
        service(S::ControllerService),
        service(S::GroupControllerService),
        service(S::VolumeAccessibilityConstraints),
        proto::PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                r#type: plugin_capability::volume_expansion::Type::Online as i32,
            })),
        },
    ]
}

/// No EXPAND_VOLUME here: expansion is done by the node (NodeExpandVolume), which makes the
/// external-resizer use its trivial resizer.
pub fn controller() -> Vec<proto::ControllerServiceCapability> {
    use csc::rpc::Type as T;
    [
        T::CreateDeleteVolume,
        T::CreateDeleteSnapshot,
        T::ListSnapshots,
        T::CloneVolume,
        T::ListVolumes,
        T::GetCapacity,
        T::GetVolume,
        T::VolumeCondition,
        T::SingleNodeMultiWriter,
    ]
    .into_iter()
    .map(|t| proto::ControllerServiceCapability { r#type: Some(csc::Type::Rpc(csc::Rpc { r#type: t as i32 })) })
    .collect()
}

pub fn node() -> Vec<proto::NodeServiceCapability> {
    use nsc::rpc::Type as T;
    [T::StageUnstageVolume, T::GetVolumeStats, T::ExpandVolume, T::VolumeCondition, T::SingleNodeMultiWriter]
        .into_iter()
        .map(|t| proto::NodeServiceCapability { r#type: Some(nsc::Type::Rpc(nsc::Rpc { r#type: t as i32 })) })
        .collect()
}
