//! The controller pod's CSI endpoint for the external-resizer, which has no node mode and must
//! talk to a CSI socket in its own pod. It answers only what the resizer asks at start-up and
//! on each resize: plugin name, plugin/controller/node capabilities and Probe. The capabilities
//! are the node plugin's own (`capabilities`), so the resizer picks its trivial resizer and the
//! kubelet expands the filesystem through NodeExpandVolume on the volume's node. Every other
//! call answers UNIMPLEMENTED: volumes live on the nodes and are served there.

use std::path::Path;

use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use super::capabilities;
use super::proto::{
    self, controller_server::Controller, controller_server::ControllerServer, identity_server::Identity,
    identity_server::IdentityServer, node_server::Node, node_server::NodeServer,
};
use super::server::{bind, ServeError};

#[derive(Clone, Copy, Default)]
pub struct CapabilityEndpoint;

#[tonic::async_trait]
impl Identity for CapabilityEndpoint {
    async fn get_plugin_info(
        &self,
        _req: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(capabilities::info()))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::GetPluginCapabilitiesResponse { capabilities: capabilities::plugin() }))
    }

    async fn probe(&self, _req: Request<proto::ProbeRequest>) -> Result<Response<proto::ProbeResponse>, Status> {
        Ok(Response::new(proto::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Controller for CapabilityEndpoint {
    async fn controller_get_capabilities(
        &self,
        _req: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::ControllerGetCapabilitiesResponse { capabilities: capabilities::controller() }))
    }
}

#[tonic::async_trait]
impl Node for CapabilityEndpoint {
    async fn node_get_capabilities(
        &self,
        _req: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::NodeGetCapabilitiesResponse { capabilities: capabilities::node() }))
    }
}

/// Binds the capability endpoint's unix socket (see [`bind`]).
pub fn listen(path: &Path) -> Result<UnixListener, ServeError> {
    let listener = bind(path)?;
    tracing::info!(socket = %path.display(), "serving the capability endpoint for the external-resizer");
    Ok(listener)
}

/// Serves the capability endpoint on `listener` until `shutdown` completes.
pub async fn serve(listener: UnixListener, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(CapabilityEndpoint))
        .add_service(ControllerServer::new(CapabilityEndpoint))
        .add_service(NodeServer::new(CapabilityEndpoint))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::{
        controller_client::ControllerClient, identity_client::IdentityClient, node_client::NodeClient,
    };

    /// What the external-resizer asks, over a real socket: the endpoint declares node-only
    /// expansion (so the trivial resizer is chosen), and refuses volume calls.
    #[tokio::test]
    async fn answers_what_the_resizer_asks_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = listen(&sock).unwrap();
        let server = tokio::spawn(serve(listener, async { drop(stopped.await) }));
        while !sock.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
                }
            }))
            .await
            .unwrap();
        let mut id = IdentityClient::new(channel.clone());
        let info = id.get_plugin_info(proto::GetPluginInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.name, crate::shared::PLUGIN_NAME);
        let caps = id.get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
        assert_eq!(caps.capabilities, capabilities::plugin());
        assert_eq!(id.probe(proto::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));

        use proto::controller_service_capability::{rpc::Type as C, Type as CT};
        use proto::node_service_capability::{rpc::Type as N, Type as NT};
        let mut ctl = ControllerClient::new(channel.clone());
        let ccaps = ctl.controller_get_capabilities(proto::ControllerGetCapabilitiesRequest {}).await.unwrap();
        let ccaps: Vec<i32> = ccaps
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| match c.r#type {
                Some(CT::Rpc(r)) => Some(r.r#type),
                _ => None,
            })
            .collect();
        assert!(ccaps.contains(&(C::CreateDeleteVolume as i32)));
        assert!(!ccaps.contains(&(C::ExpandVolume as i32)), "expansion must be node-only");
        let mut node = NodeClient::new(channel);
        let ncaps = node.node_get_capabilities(proto::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
        assert!(ncaps
            .capabilities
            .iter()
            .any(|c| matches!(c.r#type, Some(NT::Rpc(r)) if r.r#type == N::ExpandVolume as i32)));

        let err = ctl.create_volume(proto::CreateVolumeRequest { name: "v".into(), ..Default::default() }).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Unimplemented);
        let err = node.node_stage_volume(proto::NodeStageVolumeRequest::default()).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Unimplemented);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
