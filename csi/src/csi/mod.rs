//! The CSI services (Identity, Controller, GroupController, Node) on one tonic server over a unix
//! socket.
//! Handlers are thin: validate the request into typed values (`validate`, `ids`), call the engine
//! or the mounter on a blocking thread, build the response. Codes are chosen in `error` only.

pub mod capabilities;
pub mod capability_endpoint;
pub mod controller;
pub mod error;
#[cfg(any(test, feature = "test-double"))]
pub mod fuzzing;
pub mod group_controller;
#[cfg(test)]
mod group_tests;
pub mod guard;
pub mod identity;
pub mod lookup;
pub mod node;
pub mod pagination;
pub mod server;
#[cfg(test)]
mod tests;
pub mod validate;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::dm::ThinPool;
use crate::engine::Engine;
use crate::mount::Mounter;
use error::CsiError;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// What every service shares.
pub struct Driver<P: ThinPool, M: Mounter> {
    pub engine: Arc<Engine<P>>,
    pub mounter: Arc<M>,
    pub node_id: String,
    pub kubelet_dir: PathBuf,
    pub max_volumes_per_node: i64,
    pub in_flight: guard::InFlight,
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// Rung after every call that may change the pool, for the ThinPool publisher.
    pub changed: Arc<tokio::sync::Notify>,
}

/// Calls after which the pool's published status is refreshed.
const CHANGES_POOL: &[&str] = &[
    "CreateVolume",
    "DeleteVolume",
    "CreateSnapshot",
    "DeleteSnapshot",
    "CreateVolumeGroupSnapshot",
    "DeleteVolumeGroupSnapshot",
    "NodeExpandVolume",
    "NodeStageVolume",
];

impl<P: ThinPool + 'static, M: Mounter + 'static> Driver<P, M> {
    /// Runs blocking work (ioctls, store transactions, mkfs) off the async runtime.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, CsiError> + Send + 'static,
    ) -> Result<T, CsiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| CsiError::Internal(format!("worker thread failed: {e}")))?
    }
}

/// Runs one call, logs one line with its method, volume id, code and duration, and counts it.
pub async fn observed<P: ThinPool, M: Mounter, T>(
    driver: &Driver<P, M>,
    method: &'static str,
    volume: &str,
    call: impl Future<Output = Result<T, CsiError>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let start = Instant::now();
    let result = call.await;
    let secs = start.elapsed().as_secs_f64();
    let ms = secs * 1000.0;
    match result {
        Ok(v) => {
            driver.metrics.observe_call(method, tonic::Code::Ok, secs);
            if CHANGES_POOL.contains(&method) {
                driver.changed.notify_one();
            }
            tracing::info!(method, volume, code = "OK", duration_ms = ms, "csi call");
            Ok(tonic::Response::new(v))
        }
        Err(e) => {
            let code = e.code();
            driver.metrics.observe_call(method, code, secs);
            tracing::warn!(method, volume, code = ?code, duration_ms = ms, error = %e, "csi call");
            Err(e.into())
        }
    }
}
