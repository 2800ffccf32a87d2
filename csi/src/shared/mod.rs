//! Names every process and layer shares: the driver name, the topology key, the CSI id scheme,
//! and how an error chain is printed. The only module both `csi` and `k8s` import.

pub mod ids;

/// The CSI driver name.
pub const PLUGIN_NAME: &str = "thinpool.csi.io";
/// The topology key every volume carries.
pub const TOPOLOGY_KEY: &str = "topology.thinpool.csi.io/node";

/// The error's message followed by its sources, each said once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
