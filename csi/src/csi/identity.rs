//! CSI Identity: plugin name and version, capabilities, and Probe (ready only when the pool is
//! open, recovered and `rw`; the engine is only built after start-up recovery).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::CsiError;
use super::proto::{self, identity_server::Identity};
use super::{observed, Driver};
use crate::dm::ThinPool;
use crate::engine::PoolState;
use crate::mount::Mounter;

pub struct IdentityService<P: ThinPool, M: Mounter> {
    pub driver: Arc<Driver<P, M>>,
}

#[tonic::async_trait]
impl<P: ThinPool + 'static, M: Mounter + 'static> Identity for IdentityService<P, M> {
    async fn get_plugin_info(
        &self,
        _req: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        observed(&self.driver, "GetPluginInfo", "", async { Ok(super::capabilities::info()) }).await
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        observed(&self.driver, "GetPluginCapabilities", "", async {
            Ok(proto::GetPluginCapabilitiesResponse { capabilities: super::capabilities::plugin() })
        })
        .await
    }

    async fn probe(&self, _req: Request<proto::ProbeRequest>) -> Result<Response<proto::ProbeResponse>, Status> {
        observed(&self.driver, "Probe", "", async {
            let state = self.driver.blocking(|d| Ok(d.engine.pool_state()?)).await?;
            if state != PoolState::Rw {
                return Err(CsiError::FailedPrecondition(format!("the pool is {state}, not rw")));
            }
            Ok(proto::ProbeResponse { ready: Some(true) })
        })
        .await
    }
}
