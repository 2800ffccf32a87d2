//! A control plane of two processes on loopback: etcd and kube-apiserver, the v1.36.3 binaries
//! `e2e/cluster/build.sh` makes (`THINPOOL_APISERVER_BIN`, default `target/cluster/bin`). The API
//! server makes its own serving certificate, knows an administrator by a static token and signs
//! ServiceAccount tokens with a key made here; both stop when the [`ControlPlane`] is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub url: String,
    children: Vec<Child>,
}

/// The token the administrator (`system:masters`) presents.
const ADMIN_TOKEN: &str = "thinpool-e2e-admin-token";

/// A port the kernel has just handed out on loopback (free again once the listener closes).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cmd.get_program().to_string_lossy()))?;
    Ok(child)
}

fn openssl(args: &[&str]) -> Result {
    let out = Command::new("openssl").args(args).output().map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Where the binaries are; `None` when they were not built.
pub fn binaries() -> Option<PathBuf> {
    let dir = std::env::var_os("THINPOOL_APISERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cluster/bin"));
    (dir.join("kube-apiserver").is_file() && dir.join("etcd").is_file()).then_some(dir)
}

impl ControlPlane {
    pub fn start(bin: &Path) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("thinpool-apiserver-").tempdir()?;
        let d = dir.path();
        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        let sa_key = d.join("sa.key");
        let sa_pub = d.join("sa.pub");
        let key = sa_key.to_string_lossy().into_owned();
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key])?;
        openssl(&["pkey", "-in", &key, "-pubout", "-out", &sa_pub.to_string_lossy()])?;
        std::fs::write(d.join("tokens.csv"), format!("{ADMIN_TOKEN},thinpool-e2e-admin,admin-uid,system:masters\n"))?;
        let mut children = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{client}");
        children.push(spawn(
            d,
            "etcd",
            Command::new(bin.join("etcd"))
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .args(["--name", "e2e", "--log-level", "warn"])
                .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &format!("e2e=http://127.0.0.1:{peer}")]),
        )?);
        children.push(spawn(
            d,
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers={etcd_url}"))
                .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
                .arg(format!("--secure-port={secure}"))
                .arg(format!("--cert-dir={}", d.join("certs").display()))
                .arg(format!("--token-auth-file={}", d.join("tokens.csv").display()))
                .arg("--authorization-mode=RBAC")
                // Only the loopback address: no Endpoints for the kubernetes Service to keep.
                .arg("--endpoint-reconciler-type=none")
                .arg("--service-cluster-ip-range=198.19.0.0/16")
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!("--service-account-key-file={}", sa_pub.display()))
                .arg(format!("--service-account-signing-key-file={}", sa_key.display())),
        )?);
        let url = format!("https://127.0.0.1:{secure}");
        let plane = ControlPlane { dir, url, children };
        plane.write_kubeconfig("admin", ADMIN_TOKEN)?;
        plane.wait_ready(Duration::from_secs(120))?;
        println!("  control plane ready in {:.1} s at {}", started.elapsed().as_secs_f64(), plane.url);
        Ok(plane)
    }

    /// A kubeconfig for `token` at `DIR/NAME.kubeconfig` (the serving certificate is the API
    /// server's own, self-signed: not verified).
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: \"{}\", insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: {name}, user: {{token: \"{token}\"}}}}]\n\
                 contexts: [{{name: e2e, context: {{cluster: e2e, user: {name}}}}}]\ncurrent-context: e2e\n",
                self.url
            ),
        )?;
        Ok(path)
    }

    fn wait_ready(&self, limit: Duration) -> Result {
        let start = Instant::now();
        let admin = self.dir.path().join("admin.kubeconfig");
        while start.elapsed() < limit {
            let out = Command::new(binaries().map_or_else(|| PathBuf::from("kubectl"), |b| b.join("kubectl")))
                .arg(format!("--kubeconfig={}", admin.display()))
                .args(["get", "--raw", "/readyz"])
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("kube-apiserver was not ready within {limit:?}; its log: {}", self.log_tail("kube-apiserver"))
            .into())
    }

    pub fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub async fn client(&self, name: &str) -> Result<kube::Client> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
