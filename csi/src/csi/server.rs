//! The CSI services, and the operator commands run in the plugin, on one unix socket. A stale socket is removed only when it is a socket;
//! the new one is private (0600). The node process (`app::node`) binds it only after start-up
//! recovery, so nothing is served from a pool that has not been checked.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::controller::ControllerService;
use super::group_controller::GroupControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::proto::{
    controller_server::ControllerServer, group_controller_server::GroupControllerServer,
    identity_server::IdentityServer, node_server::NodeServer,
};
use super::Driver;
use crate::cli::remote::{proto::admin_server::AdminServer, AdminService};
use crate::dm::ThinPool;
use crate::mount::Mounter;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--endpoint {0:?} must be unix:///absolute/path")]
    Endpoint(String),
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a `unix://` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| ServeError::Endpoint(endpoint.to_owned()))?;
    let p = Path::new(path);
    if !p.is_absolute() || p.file_name().is_none() {
        return Err(ServeError::Endpoint(endpoint.to_owned()));
    }
    Ok(p.to_owned())
}

/// Binds the socket: removes a stale socket (never another kind of file), makes it private.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |what, source| ServeError::Io { what, path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(|e| io("removing stale socket", e))?,
        Ok(_) => return Err(ServeError::NotASocket { path: path.to_owned() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the socket directory", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("making private", e))?;
    Ok(listener)
}

/// Serves the CSI services on `listener` until `shutdown` completes, and beside them the operator
/// commands (`cli::remote`) on the records in `state_dir`.
pub async fn serve<P: ThinPool + 'static, M: Mounter + 'static>(
    driver: Arc<Driver<P, M>>,
    state_dir: PathBuf,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let admin = AdminService { engine: driver.engine.clone(), state_dir, changed: driver.changed.clone() };
    tonic::transport::Server::builder()
        .add_service(AdminServer::new(admin))
        .add_service(IdentityServer::new(IdentityService { driver: driver.clone() }))
        .add_service(ControllerServer::new(Arc::new(ControllerService { driver: driver.clone() })))
        .add_service(GroupControllerServer::new(Arc::new(GroupControllerService { driver: driver.clone() })))
        .add_service(NodeServer::new(Arc::new(NodeService { driver })))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("unix:/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
        assert!(socket_path("unix:///").is_err());
    }

    #[tokio::test]
    async fn binds_privately_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        drop(bind(&sock).unwrap());
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A stale socket from an earlier run is replaced.
        drop(bind(&sock).unwrap());
        let file = dir.path().join("precious");
        std::fs::write(&file, "data").unwrap();
        assert!(matches!(bind(&file), Err(ServeError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    }
}
