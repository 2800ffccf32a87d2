//! Registration with the kubelet, as node-driver-registrar did it, from inside the node plugin:
//! the kubelet's plugin-registration service (`pluginregistration.Registration`) on a socket in
//! its `plugins_registry` directory. The kubelet finds the socket, asks `GetInfo` (type
//! `CSIPlugin`, our driver name, the CSI endpoint as it sees it, the CSI versions), registers the
//! driver, reports back with `NotifyRegistrationStatus`, then calls `NodeGetInfo` and writes the
//! `CSINode` object. `registration` holds the state and the service; `socket` keeps the socket
//! there (re-created when deleted, removed on clean shutdown); `authority` fixes the `:authority`
//! the kubelet sends on that socket, which our HTTP/2 server would otherwise refuse.

pub mod authority;
pub mod registration;
pub mod socket;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("pluginregistration");
}
