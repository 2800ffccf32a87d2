//! Keeps the registration socket in the kubelet's `plugins_registry` directory: bound at start
//! (a stale socket from an earlier run is replaced), checked every few seconds and made anew when
//! something deleted or replaced it (the kubelet then registers us again), and removed on a clean
//! shutdown so the kubelet unregisters the driver.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::DuplexStream;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::authority;

use super::proto::registration_server::RegistrationServer;
use super::registration::{Registrar, RegistrationService};
use crate::csi::server::{bind, ServeError};
use crate::shared::PLUGIN_NAME;

/// The socket's path in the kubelet's plugin registry directory.
pub fn socket_in(registry_dir: &Path) -> PathBuf {
    registry_dir.join(format!("{PLUGIN_NAME}-reg.sock"))
}

/// The socket file's identity (device and inode), or `None` when it is gone.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Accepts connections on `listener` and hands the server one in-memory stream per connection,
/// each joined to its client through [`authority::front`] (the kubelet's `:authority` fixed).
fn fronted(listener: UnixListener) -> (ReceiverStream<std::io::Result<DuplexStream>>, JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let accepting = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    let (ours, theirs) = tokio::io::duplex(64 * 1024);
                    if tx.send(Ok(theirs)).await.is_err() {
                        return;
                    }
                    tokio::spawn(async move {
                        if let Err(e) = authority::front(client, ours).await {
                            tracing::warn!(error = %e, "a registration connection was dropped");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the registration socket");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    (ReceiverStream::new(rx), accepting)
}

/// How long connections to a socket that is gone or being closed may take to end.
pub const OLD_CONNECTIONS_GRACE: Duration = Duration::from_secs(5);

/// Waits for a stopped server's connections to end, at most [`OLD_CONNECTIONS_GRACE`], then
/// drops it.
async fn finish(server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let abort = server.abort_handle();
    match tokio::time::timeout(OLD_CONNECTIONS_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "registration server"),
        Ok(Err(e)) => tracing::warn!(error = %e, "registration server task"),
        Err(_) => {
            tracing::warn!(grace = ?OLD_CONNECTIONS_GRACE, "a kubelet connection stayed open after the registration socket closed; dropping it");
            abort.abort();
        }
    }
}

/// Serves registration on `path` until `shutdown` completes; then removes the socket.
pub async fn serve(
    registrar: Arc<Registrar>,
    path: PathBuf,
    check_every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    tokio::pin!(shutdown);
    loop {
        let listener = bind(&path)?;
        let ours = identity(&path);
        tracing::info!(socket = %path.display(), "serving kubelet plugin registration");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (connections, accepting) = fronted(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(RegistrationService(registrar.clone())))
                .serve_with_incoming_shutdown(connections, async {
                    let _ = stopped.await;
                }),
        );
        let removed = loop {
            tokio::select! {
                _ = &mut shutdown => break false,
                _ = tokio::time::sleep(check_every) => {
                    if identity(&path) != ours {
                        break true;
                    }
                }
            }
        };
        let _ = stop.send(());
        accepting.abort();
        // The old server ends once its connections have (it sends them GOAWAY). A client that never
        // closes its connection must not keep the socket from being made anew, nor the plugin from
        // stopping: the new socket does not wait for the old server, and the old one is given
        // OLD_CONNECTIONS_GRACE before it is dropped with whatever it still holds.
        let finishing = tokio::spawn(finish(server));
        if !removed {
            let _ = finishing.await;
            if identity(&path) == ours {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(error = %e, socket = %path.display(), "removing the registration socket");
                }
            }
            return Ok(());
        }
        tracing::warn!(socket = %path.display(), "the registration socket was removed or replaced; making it anew");
        registrar.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{registration_client::RegistrationClient, InfoRequest, RegistrationStatus};
    use super::super::registration::State;
    use super::*;

    async fn client(path: &Path) -> RegistrationClient<tonic::transport::Channel> {
        let path = path.to_owned();
        let channel = tonic::transport::Endpoint::try_from("http://[::1]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .unwrap();
        RegistrationClient::new(channel)
    }

    async fn wait_for(what: &str, ok: impl Fn() -> bool) {
        for _ in 0..300 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never happened");
    }

    /// Whether a server answers on the socket (a stale socket refuses connections).
    fn answers(path: &Path) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }

    /// A client that connects, speaks HTTP/2 and then neither closes nor reads (it never sees the
    /// GOAWAY) keeps neither the socket from being made anew nor the plugin from stopping.
    #[tokio::test]
    async fn a_connection_left_open_blocks_nothing() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(dir.path());
        let registrar = Arc::new(Registrar::new("/e", None));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(registrar, path.clone(), Duration::from_millis(20), async {
            let _ = stopped.await;
        }));
        wait_for("the socket", || answers(&path)).await;
        let mut idle = tokio::net::UnixStream::connect(&path).await.unwrap();
        idle.write_all(super::super::authority::PREFACE).await.unwrap();
        idle.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // an empty SETTINGS frame
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::remove_file(&path).unwrap();
        wait_for("the socket made anew while the old connection stays open", || answers(&path)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(OLD_CONNECTIONS_GRACE * 2, task)
            .await
            .expect("the plugin stopped within the grace")
            .unwrap()
            .unwrap();
        assert!(!path.exists(), "the socket is removed at shutdown");
        drop(idle);
    }

    /// What the kubelet does, and what the registrar survives: a stale socket from an earlier run,
    /// GetInfo, both NotifyRegistrationStatus answers, the socket deleted under it, shutdown.
    #[tokio::test]
    async fn the_kubelet_registers_us_and_the_socket_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(dir.path());
        // A stale socket left by a plugin that was killed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let registrar = Arc::new(Registrar::new("/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock", None));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(registrar.clone(), path.clone(), Duration::from_millis(20), async {
            let _ = stopped.await;
        }));
        wait_for("the stale socket replaced", || answers(&path)).await;

        let mut kubelet = client(&path).await;
        let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!((info.r#type.as_str(), info.name.as_str()), ("CSIPlugin", "thinpool.csi.io"));
        let refused = RegistrationStatus { plugin_registered: false, error: "version mismatch".into() };
        kubelet.notify_registration_status(refused).await.unwrap();
        assert_eq!(registrar.state(), State::Refused("version mismatch".into()));
        let ok = RegistrationStatus { plugin_registered: true, error: String::new() };
        kubelet.notify_registration_status(ok.clone()).await.unwrap();
        assert_eq!(registrar.state(), State::Registered);

        // Deleted under us: made anew, and the kubelet registers us again through it.
        std::fs::remove_file(&path).unwrap();
        // Made anew (the state is reset before the new socket is bound).
        wait_for("the socket made anew", || answers(&path)).await;
        assert_eq!(registrar.state(), State::Waiting);
        let mut kubelet = client(&path).await;
        assert_eq!(kubelet.get_info(InfoRequest {}).await.unwrap().into_inner().name, "thinpool.csi.io");
        kubelet.notify_registration_status(ok).await.unwrap();
        assert_eq!(registrar.state(), State::Registered);

        // A clean shutdown removes the socket, so the kubelet unregisters the driver.
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert!(!path.exists());
    }
}
