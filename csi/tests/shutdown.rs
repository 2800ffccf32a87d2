//! Long-running commands stop on SIGTERM, also as PID 1 of their container, where the kernel
//! gives SIGTERM no default action: without a handler the pod would wait out its grace period.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_thinpool-csi");

/// A kubeconfig whose API server refuses connections: the controller runs its loop and retries.
fn kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    path
}

fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

/// Starts `thinpool-csi controller` (under `prefix`), lets it run, sends SIGTERM to the process
/// `target` picks, and returns the exit status and stderr.
fn controller_stops_on_sigterm(prefix: &[&str], target: impl Fn(u32) -> i32) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(BIN));
    cmd.args(prefix.get(1..).unwrap_or_default());
    if !prefix.is_empty() {
        cmd.arg(BIN);
    }
    let mut child = cmd
        .args(["controller", "--metrics-address", "", "--identity", "shutdown-test"])
        .env("KUBECONFIG", kubeconfig(dir.path()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the controller exited early: {}", stderr_of(&mut child));
    kill(Pid::from_raw(target(child.id())), Signal::SIGTERM).unwrap();
    let Some(status) = wait(&mut child, Duration::from_secs(10)) else {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        panic!("the controller ignored SIGTERM for 10 s: {}", stderr_of(&mut child));
    };
    (status, stderr_of(&mut child))
}

#[test]
fn the_controller_stops_on_sigterm() {
    let (status, stderr) = controller_stops_on_sigterm(&[], |pid| pid as i32);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

/// As PID 1 of a new PID namespace (what a container gives it), SIGTERM from outside is delivered
/// only because the process handles it.
#[test]
fn the_controller_stops_on_sigterm_as_pid_1() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for unshare --pid (CI runs as root)");
        return;
    }
    let (status, stderr) = controller_stops_on_sigterm(&["unshare", "--pid", "--fork"], |unshare| {
        // The controller is unshare's only child; in its namespace it is PID 1.
        let start = Instant::now();
        loop {
            let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
            if let Some(pid) = children.split_whitespace().next() {
                let pid: i32 = pid.parse().unwrap();
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap().to_owned();
                assert!(nspid.split_whitespace().last() == Some("1"), "not PID 1 in its namespace: {nspid}");
                return pid;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "unshare started no child");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}
