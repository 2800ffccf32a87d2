//! Operator commands through the plugin: a real tonic server on a unix socket in front of the
//! in-memory engine, reached by the same client a command on the node uses.

use std::sync::Arc;

use tokio::sync::Notify;

use super::proto::admin_server::AdminServer;
use super::*;
use crate::dm::memory::MemoryPool;
use crate::engine::Limits;
use crate::store::{Kind, Store};

struct Plugin {
    engine: Arc<Engine<MemoryPool>>,
    changed: Arc<Notify>,
    socket: PathBuf,
    state_dir: PathBuf,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

/// A plugin with volume `kept`, serving the admin service on a socket in a temporary directory.
fn plugin() -> Plugin {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let limits = Limits { overprovision_ratio: 2.0, data_fill_limit_pct: 90.0, meta_fill_limit_pct: 80.0 };
    let (engine, _) = Engine::open(MemoryPool::new(10 << 30), Store::open(&state_dir).unwrap(), limits).unwrap();
    engine.create_volume("kept", 1 << 20, None).unwrap();
    let engine = Arc::new(engine);
    let changed = Arc::new(Notify::new());
    let socket = dir.path().join("csi.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = AdminService { engine: engine.clone(), state_dir: state_dir.clone(), changed: changed.clone() };
    let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket) }).unwrap();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    Plugin { engine, changed, socket, state_dir, _dir: dir, _runtime: runtime }
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// `forward` as a command on the node calls it, the endpoint naming the plugin's socket.
fn forward_to(p: &Plugin, line: &str) -> Result<proto::RunReply, RemoteError> {
    forward(&format!("unix://{}", p.socket.display()), args(line), &p.state_dir)
}

#[test]
fn a_listing_runs_on_the_plugin_s_engine() {
    let p = plugin();
    let dir = p.state_dir.display().to_string();
    let reply = forward_to(&p, &format!("-o json volumes list --state-dir {dir}")).unwrap();
    assert_eq!((reply.exit_code, reply.error.as_str()), (0, ""), "{reply:?}");
    let listed: serde_json::Value = serde_json::from_str(&reply.output).unwrap();
    assert_eq!(listed[0]["name"], "kept", "{}", reply.output);
    let table = forward_to(&p, &format!("pool status --state-dir {dir}")).unwrap();
    assert!(
        table.output.contains("volumes") && table.output.lines().any(|l| l.contains("volumes") && l.contains('1')),
        "{}",
        table.output
    );
}

#[test]
fn a_change_is_made_and_the_publisher_rung() {
    let p = plugin();
    let rung = p.changed.clone();
    let dir = p.state_dir.display().to_string();
    let reply = forward_to(&p, &format!("volumes delete kept --state-dir {dir}")).unwrap();
    assert_eq!(reply.exit_code, 0, "{reply:?}");
    assert!(p.engine.list(Kind::Volume).unwrap().is_empty());
    // notify_one stores a permit when nobody waits: the publisher's next wait returns at once.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(1), rung.notified()).await })
        .expect("the ThinPool publisher was not rung after a delete");
}

#[test]
fn other_records_setup_and_bad_lines_change_nothing() {
    let p = plugin();
    let other = tempfile::tempdir().unwrap();
    let reply = forward_to(&p, &format!("volumes delete kept --state-dir {}", other.path().display())).unwrap();
    assert_eq!(reply.exit_code, 1);
    assert!(reply.error.contains("not the records of the plugin"), "{}", reply.error);
    let reply = forward_to(&p, "pool setup --device /dev/sdz").unwrap();
    assert_eq!(reply.exit_code, 1);
    assert!(reply.error.contains("never runs in the plugin"), "{}", reply.error);
    match forward_to(&p, "volumes delete") {
        Err(RemoteError::Refused { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("<NAME>"), "{}", status.message());
        }
        other => panic!("a command without its volume name: {other:?}"),
    }
    assert_eq!(p.engine.list(Kind::Volume).unwrap().len(), 1, "kept was touched");
}

#[test]
fn no_plugin_says_where_it_looked_and_what_to_do() {
    let p = plugin();
    let gone = Plugin { socket: p.socket.with_file_name("nothing.sock"), ..p };
    let err = forward_to(&gone, "volumes list").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{msg}");
    assert!(msg.contains("nothing.sock") && msg.contains("CSI_ENDPOINT"), "{msg}");
}

#[test]
fn only_looking_commands_leave_the_pool_unchanged() {
    let parse = |line: &str| Forwarded::try_parse_from(args(line)).unwrap().command;
    for line in ["pool status", "pool check", "volumes list", "snapshots list"] {
        assert!(!parse(line).changes_pool(), "{line}");
    }
    for line in ["volumes delete a", "volumes create a --size 1Mi", "snapshots delete s", "volumes expand a --size 2Mi"]
    {
        assert!(parse(line).changes_pool(), "{line}");
    }
}
