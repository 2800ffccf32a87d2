//! The registration state and the `pluginregistration.Registration` service. A kubelet that
//! refuses us (`plugin_registered: false`) is logged with its error, counted, and makes the node
//! plugin unready until a later registration succeeds; a kubelet that restarts simply dials the
//! socket again and registers us anew.

use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

use super::proto::{self, registration_server::Registration};
use crate::metrics::NodeMetrics;
use crate::shared::PLUGIN_NAME;

/// What the kubelet calls a CSI driver's plugin type.
pub const PLUGIN_TYPE: &str = "CSIPlugin";
/// The CSI spec versions this driver speaks (the kubelet wants a 1.x).
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The socket is there; the kubelet has not reported yet.
    Waiting,
    Registered,
    /// The kubelet refused the registration, with its error.
    Refused(String),
}

pub struct Registrar {
    /// The CSI endpoint as the kubelet sees it, e.g. `/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock`.
    endpoint: String,
    state: Mutex<State>,
    metrics: Option<Arc<NodeMetrics>>,
}

impl Registrar {
    pub fn new(endpoint: impl Into<String>, metrics: Option<Arc<NodeMetrics>>) -> Self {
        let r = Registrar { endpoint: endpoint.into(), state: Mutex::new(State::Waiting), metrics };
        r.publish(&State::Waiting);
        r
    }

    pub fn state(&self) -> State {
        self.state.lock().map_or(State::Waiting, |s| s.clone())
    }

    fn set(&self, next: State) {
        self.publish(&next);
        if let Ok(mut s) = self.state.lock() {
            *s = next;
        }
    }

    fn publish(&self, state: &State) {
        if let Some(m) = &self.metrics {
            m.set_registered(*state == State::Registered);
        }
    }

    /// What `GetInfo` answers.
    pub fn info(&self) -> proto::PluginInfo {
        proto::PluginInfo {
            r#type: PLUGIN_TYPE.to_owned(),
            name: PLUGIN_NAME.to_owned(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    /// The kubelet's report on our registration.
    pub fn notified(&self, status: &proto::RegistrationStatus) {
        if status.plugin_registered {
            tracing::info!(driver = PLUGIN_NAME, endpoint = %self.endpoint, "registered with the kubelet");
            self.set(State::Registered);
        } else {
            tracing::error!(
                driver = PLUGIN_NAME,
                endpoint = %self.endpoint,
                kubelet_error = %status.error,
                "the kubelet refused to register the driver"
            );
            if let Some(m) = &self.metrics {
                m.registration_failed();
            }
            self.set(State::Refused(status.error.clone()));
        }
    }

    /// The socket was made anew: the kubelet will register us again.
    pub fn reset(&self) {
        self.set(State::Waiting);
    }
}

impl crate::metrics::ReadyCheck for Registrar {
    /// Readiness: registered with the kubelet, or why not.
    fn ready(&self) -> Result<(), String> {
        match self.state() {
            State::Registered => Ok(()),
            State::Waiting => Err("not registered with the kubelet yet".to_owned()),
            State::Refused(e) => Err(format!("the kubelet refused to register the driver: {e}")),
        }
    }
}

/// The service the kubelet dials.
pub struct RegistrationService(pub Arc<Registrar>);

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _req: Request<proto::InfoRequest>) -> Result<Response<proto::PluginInfo>, Status> {
        tracing::info!("the kubelet asked for the plugin info");
        Ok(Response::new(self.0.info()))
    }

    async fn notify_registration_status(
        &self,
        req: Request<proto::RegistrationStatus>,
    ) -> Result<Response<proto::RegistrationStatusResponse>, Status> {
        self.0.notified(&req.into_inner());
        Ok(Response::new(proto::RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ReadyCheck;

    fn status(ok: bool, error: &str) -> proto::RegistrationStatus {
        proto::RegistrationStatus { plugin_registered: ok, error: error.into() }
    }

    #[test]
    fn info_is_what_the_kubelet_validates() {
        let r = Registrar::new("/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock", None);
        let info = r.info();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "thinpool.csi.io");
        assert_eq!(info.endpoint, "/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock");
        assert_eq!(info.supported_versions, vec!["1.0.0"]);
    }

    #[test]
    fn registration_states() {
        let metrics = Arc::new(NodeMetrics::new().unwrap());
        let r = Registrar::new("/e", Some(metrics.clone()));
        assert_eq!(r.state(), State::Waiting);
        assert!(r.ready().unwrap_err().contains("not registered"));
        r.notified(&status(false, "driver name thinpool.csi.io already registered with a newer version"));
        assert_eq!(
            r.state(),
            State::Refused("driver name thinpool.csi.io already registered with a newer version".into())
        );
        assert!(r.ready().unwrap_err().contains("already registered"));
        let text = metrics.render();
        assert!(text.contains("thinpool_kubelet_registration_failures_total 1"), "{text}");
        assert!(text.contains("thinpool_kubelet_registered 0"), "{text}");
        r.notified(&status(true, ""));
        assert_eq!(r.ready(), Ok(()));
        assert!(metrics.render().contains("thinpool_kubelet_registered 1"));
        // The socket was deleted and made anew: wait for the kubelet again.
        r.reset();
        assert!(r.ready().is_err());
        assert!(metrics.render().contains("thinpool_kubelet_registered 0"));
    }
}
