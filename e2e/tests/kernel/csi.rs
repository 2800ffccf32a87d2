//! CSI conformance over the real socket: the real `thinpool-csi node` binary on a loop pool in
//! the VM, driven by a gRPC client as the kubelet and the sidecars would drive it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thinpool_csi::csi::proto::{
    self,
    controller_client::ControllerClient,
    identity_client::IdentityClient,
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume},
    volume_content_source as vcs,
};
use tonic::transport::Channel;
use tonic::Code;

use crate::fixture::*;

const NODE: &str = "vm-node";
const GIB: i64 = 1 << 30;
const MIB_I: i64 = 1 << 20;

/// One client of each service, on one connection.
pub type Clients = (IdentityClient<Channel>, ControllerClient<Channel>, NodeClient<Channel>);

pub struct Plugin {
    child: Option<Child>,
    root: PathBuf,
    pool: String,
    pub kubelet: PathBuf,
    /// The CSI socket (`unix://` + this is the endpoint).
    pub socket: PathBuf,
    pub metrics_port: u16,
    /// The loop pool's data size (`--loop-data-size`); a restart with a larger one grows the pool.
    pub data_size: String,
    /// An LVM thin pool `vg/lv` to adopt (`--pool direct-lvm`) instead of the loop pool.
    lvm_pool: Option<String>,
    /// Flags beyond the fixture's own (a change takes effect at the next `replace`).
    pub extra: Vec<String>,
}

/// Each plugin gets its own metrics port, so a restarted one never waits for the old socket.
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(19102);

impl Plugin {
    pub fn start(test: &str) -> Result<Self> {
        Self::start_with(test, &[])
    }

    pub fn start_with(test: &str, extra: &[String]) -> Result<Self> {
        Self::start_sized(test, "2Gi", extra)
    }

    pub fn start_sized(test: &str, data_size: &str, extra: &[String]) -> Result<Self> {
        Self::start_on(test, data_size, None, extra)
    }

    /// The plugin on the LVM thin pool `vg_lv` (direct-lvm).
    pub fn start_lvm(test: &str, vg_lv: &str, extra: &[String]) -> Result<Self> {
        Self::start_on(test, "2Gi", Some(vg_lv.to_owned()), extra)
    }

    fn start_on(test: &str, data_size: &str, lvm_pool: Option<String>, extra: &[String]) -> Result<Self> {
        let root = Path::new("/tmp/e2e").join(test);
        let pool = format!("e2e-{test}");
        teardown_pool(&pool);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("kubelet"))?;
        let metrics_port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut p = Plugin {
            child: None,
            kubelet: root.join("kubelet"),
            socket: root.join("csi.sock"),
            root,
            pool,
            metrics_port,
            data_size: data_size.to_owned(),
            lvm_pool,
            extra: extra.to_vec(),
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result {
        let bin = std::env::var("THINPOOL_CSI_BIN").map_err(|_| "THINPOOL_CSI_BIN is not set")?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.join("plugin.log"))?;
        let child = Command::new(bin)
            .args(["node", "--node-id", NODE, "--deferred-delete-interval", "1"])
            .args(self.pool_flags())
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--kubelet-dir")
            .arg(&self.kubelet)
            .arg("--metrics-address")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let start = Instant::now();
        // The old socket file may still be there after a kill: wait until the new process answers.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("the plugin did not create its socket: {}", self.log()).into());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("the plugin exited ({status}): {}", self.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The pool flags the plugin runs with (state directory, pool kind and size).
    fn pool_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = match &self.lvm_pool {
            Some(vg_lv) => vec!["--pool".into(), "direct-lvm".into(), "--lvm-pool".into(), vg_lv.clone()],
            None => vec!["--pool".into(), "loop".into(), "--loop-data-size".into(), self.data_size.clone()],
        };
        flags.extend(["--state-dir".into(), self.root.join("state").display().to_string()]);
        flags.extend(["--pool-name".into(), self.pool.clone()]);
        flags
    }

    /// The configuration those flags mean, for opening the plugin's pool and records in the test
    /// once the plugin has stopped (as `thinpool-csi pool check` would).
    pub fn config(&self) -> Result<thinpool_csi::config::NodeConfig> {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            pool: thinpool_csi::config::PoolArgs,
        }
        let args = std::iter::once("plugin".to_owned()).chain(self.pool_flags());
        Ok(Flags::try_parse_from(args)?.pool.validate()?)
    }

    /// Stops the plugin as the kubelet does a pod: SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) -> Result {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
            let start = Instant::now();
            while c.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    return Err("the plugin did not stop within 20 s of SIGTERM".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("plugin.log")).unwrap_or_default()
    }

    /// Stops the plugin with SIGTERM and starts it again, as a changed DaemonSet replaces its pod.
    pub fn replace(&mut self) -> Result {
        self.stop()?;
        self.spawn()
    }

    /// Kills the plugin (SIGKILL, as a crash or an OOM kill would) and starts it again.
    pub fn restart(&mut self) -> Result {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn()
    }

    pub async fn clients(&self) -> Result<Clients> {
        let channel = unix_channel(self.socket.clone()).await?;
        Ok((IdentityClient::new(channel.clone()), ControllerClient::new(channel.clone()), NodeClient::new(channel)))
    }

    /// The thin-pool table the kernel holds for the plugin's pool (`dmsetup table`): for an LVM
    /// pool the `-tpool` device when LVM made one, else the pool LV's own device.
    pub fn pool_table(&self) -> Result<thinpool_csi::dm::PoolTable> {
        let names = match &self.lvm_pool {
            Some(vg_lv) => {
                let (vg, lv) = vg_lv.split_once('/').ok_or("the LVM pool is not vg/lv")?;
                let base = thinpool_csi::dm::lvm::dm_name(vg, lv);
                vec![format!("{base}-tpool"), base]
            }
            None => vec![self.pool.clone()],
        };
        for name in &names {
            let Ok(table) = sh(&format!("dmsetup table {name}")) else { continue };
            // `start length thin-pool metadata data block low-water [count features...]`
            let f: Vec<&str> = table.split_whitespace().collect();
            if f.get(2) == Some(&"thin-pool") {
                return Ok(f[3..].join(" ").parse()?);
            }
        }
        Err(format!("none of {names:?} is an active thin-pool device").into())
    }

    pub fn pool_tid(&self) -> Result<u64> {
        let status = sh(&format!("dmsetup status {}", self.pool))?;
        Ok(status.split_whitespace().nth(3).ok_or("pool status")?.parse()?)
    }

    /// Where the kubelet would publish the block volume `name` for a pod.
    pub fn block_target(&self, name: &str) -> String {
        format!("{}/plugins/kubernetes.io/csi/volumeDevices/publish/{name}/pod-1", self.kubelet.display())
    }

    pub fn staging(&self, name: &str) -> String {
        format!("{}/plugins/kubernetes.io/csi/thinpool.csi.io/{name}/globalmount", self.kubelet.display())
    }

    pub fn target(&self, name: &str, pod: &str) -> String {
        format!("{}/pods/{pod}/volumes/kubernetes.io~csi/{name}/mount", self.kubelet.display())
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&format!(
            "grep ' {}' /proc/mounts | awk '{{print $2}}' | sort -r | xargs -r -n1 umount",
            self.kubelet.display()
        ));
        teardown_pool(&self.pool);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A gRPC channel over a unix socket, as the sidecars and the kubelet dial the plugin.
pub(crate) async fn unix_channel(path: PathBuf) -> Result<Channel> {
    Ok(tonic::transport::Endpoint::try_from("http://[::1]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?)
}

pub(crate) fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub(crate) fn mount_cap(fs: &str) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
    }
}

pub(crate) fn block_cap() -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

pub(crate) fn id(name: &str) -> String {
    format!("{name}@{NODE}")
}

pub(crate) fn create(
    name: &str,
    bytes: i64,
    cap: proto::VolumeCapability,
    source: Option<vcs::Type>,
) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(proto::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![cap],
        volume_content_source: source.map(|t| proto::VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    }
}

/// Stages and publishes the block volume `name` at `staging` and `target`, as the kubelet does.
pub(crate) async fn publish_block(node: &mut NodeClient<Channel>, name: &str, staging: &str, target: &str) -> Result {
    node.node_stage_volume(proto::NodeStageVolumeRequest {
        volume_id: id(name),
        staging_target_path: staging.into(),
        volume_capability: Some(block_cap()),
        ..Default::default()
    })
    .await?;
    node.node_publish_volume(proto::NodePublishVolumeRequest {
        volume_id: id(name),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: Some(block_cap()),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Creates the block volume `name` of `bytes` and publishes it as the kubelet would; its staging
/// and target paths.
pub(crate) fn create_published_block(p: &Plugin, name: &str, bytes: i64) -> Result<(String, String)> {
    let (staging, target) = (p.staging(name), p.block_target(name));
    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create(name, bytes, block_cap(), None)).await?;
        publish_block(&mut node, name, &staging, &target).await
    })?;
    Ok((staging, target))
}

/// Undoes [`publish_block`].
pub(crate) async fn unpublish_block(node: &mut NodeClient<Channel>, name: &str, staging: &str, target: &str) -> Result {
    node.node_unpublish_volume(proto::NodeUnpublishVolumeRequest { volume_id: id(name), target_path: target.into() })
        .await?;
    node.node_unstage_volume(proto::NodeUnstageVolumeRequest {
        volume_id: id(name),
        staging_target_path: staging.into(),
    })
    .await?;
    Ok(())
}

pub(crate) fn code<T>(r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

pub fn csi_identity_and_probe() -> Result {
    let p = Plugin::start("csi-identity")?;
    rt()?.block_on(async {
        let (mut ident, mut ctl, mut node) = p.clients().await?;
        let info = ident.get_plugin_info(proto::GetPluginInfoRequest {}).await?.into_inner();
        ensure(info.name == "thinpool.csi.io" && !info.vendor_version.is_empty(), format!("{info:?}"))?;
        ensure(ident.probe(proto::ProbeRequest {}).await?.into_inner().ready == Some(true), "probe not ready")?;
        ensure(
            ident
                .get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len()
                == 4,
            "plugin caps: controller, group controller, topology, online expansion",
        )?;
        ensure(
            !ctl.controller_get_capabilities(proto::ControllerGetCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .is_empty(),
            "ctl caps",
        )?;
        ensure(
            !node
                .node_get_capabilities(proto::NodeGetCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .is_empty(),
            "node caps",
        )?;
        let info = node.node_get_info(proto::NodeGetInfoRequest {}).await?.into_inner();
        ensure(info.node_id == NODE, "node id")?;
        Ok(())
    })
}

/// A filesystem volume through its whole life, on one filesystem.
async fn filesystem_lifecycle(p: &Plugin, fs: &str) -> Result {
    let (_, mut ctl, mut node) = p.clients().await?;
    let cap0 = ctl.get_capacity(proto::GetCapacityRequest::default()).await?.into_inner().available_capacity;
    let v = format!("vol-{fs}");
    let req = create(&v, 256 * MIB_I, mount_cap(fs), None);
    let made = ctl.create_volume(req.clone()).await?.into_inner().volume.ok_or("no volume")?;
    ensure(ctl.create_volume(req).await?.into_inner().volume == Some(made.clone()), "CreateVolume is not idempotent")?;
    ensure(made.accessible_topology.len() == 1, "no topology")?;
    let cap1 = ctl.get_capacity(proto::GetCapacityRequest::default()).await?.into_inner().available_capacity;
    ensure(
        cap1 == cap0 - made.capacity_bytes,
        format!("capacity {cap0} -> {cap1} after creating {} bytes", made.capacity_bytes),
    )?;

    let stage = proto::NodeStageVolumeRequest {
        volume_id: id(&v),
        staging_target_path: p.staging(&v),
        volume_capability: Some(mount_cap(fs)),
        volume_context: made.volume_context.clone(),
        ..Default::default()
    };
    node.node_stage_volume(stage.clone()).await?;
    node.node_stage_volume(stage.clone()).await?;
    let publish = proto::NodePublishVolumeRequest {
        volume_id: id(&v),
        staging_target_path: p.staging(&v),
        target_path: p.target(&v, "pod-a"),
        volume_capability: Some(mount_cap(fs)),
        ..Default::default()
    };
    node.node_publish_volume(publish.clone()).await?;
    node.node_publish_volume(publish.clone()).await?;
    std::fs::write(format!("{}/hello.txt", p.target(&v, "pod-a")), "hello world, I am a base")?;
    sh("sync")?;

    let stats = node
        .node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
            volume_id: id(&v),
            volume_path: p.target(&v, "pod-a"),
            staging_target_path: String::new(),
        })
        .await?
        .into_inner();
    ensure(stats.usage.len() == 2 && stats.usage[0].total > 0 && stats.usage[1].total > 0, format!("stats {stats:?}"))?;
    ensure(stats.volume_condition.is_some_and(|c| !c.abnormal), "condition")?;

    // Online expansion of the mounted filesystem.
    let expand = proto::NodeExpandVolumeRequest {
        volume_id: id(&v),
        volume_path: p.target(&v, "pod-a"),
        capacity_range: Some(proto::CapacityRange { required_bytes: 512 * MIB_I, limit_bytes: 0 }),
        volume_capability: Some(mount_cap(fs)),
        ..Default::default()
    };
    let grown = node.node_expand_volume(expand.clone()).await?.into_inner().capacity_bytes;
    ensure(grown == 512 * MIB_I, format!("expanded to {grown}"))?;
    node.node_expand_volume(expand).await?;
    let size: u64 = sh(&format!("df -B1 --output=size {} | tail -1", p.target(&v, "pod-a")))?.trim().parse()?;
    ensure(size > 400 * MIB, format!("{fs} did not grow online: {size} bytes"))?;

    // Snapshot, change the origin, restore and clone; read each.
    let snap =
        proto::CreateSnapshotRequest { name: format!("snap-{fs}"), source_volume_id: id(&v), ..Default::default() };
    let s = ctl.create_snapshot(snap.clone()).await?.into_inner().snapshot.ok_or("no snapshot")?;
    ensure(s.ready_to_use && s.size_bytes == 512 * MIB_I, format!("{s:?}"))?;
    ensure(
        ctl.create_snapshot(snap).await?.into_inner().snapshot == Some(s.clone()),
        "CreateSnapshot is not idempotent",
    )?;
    std::fs::write(format!("{}/hello.txt", p.target(&v, "pod-a")), "changed")?;
    sh("sync")?;
    let sources = [
        (
            format!("restored-{fs}"),
            vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: s.snapshot_id.clone() }),
            "hello world, I am a base",
        ),
        (format!("clone-{fs}"), vcs::Type::Volume(vcs::VolumeSource { volume_id: id(&v) }), "changed"),
    ];
    for (name, src, want) in sources {
        ctl.create_volume(create(&name, GIB, mount_cap(fs), Some(src))).await?;
        node.node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id(&name),
            staging_target_path: p.staging(&name),
            volume_capability: Some(mount_cap(fs)),
            ..Default::default()
        })
        .await?;
        node.node_publish_volume(proto::NodePublishVolumeRequest {
            volume_id: id(&name),
            staging_target_path: p.staging(&name),
            target_path: p.target(&name, "pod-b"),
            volume_capability: Some(mount_cap(fs)),
            readonly: true,
            ..Default::default()
        })
        .await?;
        let read = std::fs::read_to_string(format!("{}/hello.txt", p.target(&name, "pod-b")))?;
        ensure(read == want, format!("{name} reads {read:?}, want {want:?}"))?;
        let size: u64 = sh(&format!("df -B1 --output=size {} | tail -1", p.target(&name, "pod-b")))?.trim().parse()?;
        ensure(size > 900 * MIB, format!("{name}: the filesystem was not grown to its 1 GiB volume: {size}"))?;
        ensure(
            std::fs::write(format!("{}/x", p.target(&name, "pod-b")), "x").is_err(),
            "a read-only publish is writable",
        )?;
    }

    // Tear everything down, twice each, and the capacity comes back.
    for name in [v.clone(), format!("restored-{fs}"), format!("clone-{fs}")] {
        for _ in 0..2 {
            for pod in ["pod-a", "pod-b"] {
                node.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
                    volume_id: id(&name),
                    target_path: p.target(&name, pod),
                })
                .await?;
            }
            node.node_unstage_volume(proto::NodeUnstageVolumeRequest {
                volume_id: id(&name),
                staging_target_path: p.staging(&name),
            })
            .await?;
        }
        for _ in 0..2 {
            ctl.delete_volume(proto::DeleteVolumeRequest { volume_id: id(&name), ..Default::default() }).await?;
        }
    }
    ensure(!Path::new(&p.target(&v, "pod-a")).exists(), "the target path was left behind")?;
    let cap_snap = ctl.get_capacity(proto::GetCapacityRequest::default()).await?.into_inner().available_capacity;
    ensure(
        cap_snap == cap0 - 512 * MIB_I,
        format!("capacity with only the snapshot left: {cap_snap}, want {}", cap0 - 512 * MIB_I),
    )?;
    for _ in 0..2 {
        ctl.delete_snapshot(proto::DeleteSnapshotRequest { snapshot_id: s.snapshot_id.clone(), ..Default::default() })
            .await?;
    }
    let cap2 = ctl.get_capacity(proto::GetCapacityRequest::default()).await?.into_inner().available_capacity;
    ensure(cap2 == cap0, format!("capacity {cap0} before, {cap2} after deleting everything"))?;
    Ok(())
}

pub fn csi_filesystem_lifecycle_ext4_and_xfs() -> Result {
    let p = Plugin::start("csi-fs")?;
    rt()?.block_on(async {
        filesystem_lifecycle(&p, "ext4").await?;
        filesystem_lifecycle(&p, "xfs").await
    })?;
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("CreateVolume") && l.contains("vol-ext4"))
        .ok_or("no log line for CreateVolume")?;
    ensure(line.contains("duration_ms") && line.contains("code"), format!("log line lacks code or duration: {line}"))
}

pub fn csi_block_volume() -> Result {
    let p = Plugin::start("csi-block")?;
    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create("blk", 64 * MIB_I, block_cap(), None)).await?;
        let staging = p.staging("blk");
        node.node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id("blk"),
            staging_target_path: staging.clone(),
            volume_capability: Some(block_cap()),
            ..Default::default()
        })
        .await?;
        let target = format!("{}/plugins/kubernetes.io/csi/volumeDevices/publish/blk/pod-1", p.kubelet.display());
        let publish = proto::NodePublishVolumeRequest {
            volume_id: id("blk"),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(block_cap()),
            ..Default::default()
        };
        node.node_publish_volume(publish.clone()).await?;
        node.node_publish_volume(publish).await?;
        sh(&format!("printf 'raw block data' | dd of={target} conv=fsync status=none"))?;
        let back = sh(&format!("head -c 14 {target}"))?;
        ensure(back == "raw block data", format!("block device reads {back:?}"))?;
        ensure(sh(&format!("blkid -p {target} || true"))?.trim().is_empty(), "a block volume was formatted")?;
        let stats = node
            .node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
                volume_id: id("blk"),
                volume_path: target.clone(),
                staging_target_path: String::new(),
            })
            .await?
            .into_inner();
        ensure(stats.usage.first().is_some_and(|u| u.total == 64 * MIB_I), format!("block stats {stats:?}"))?;
        let grown = node
            .node_expand_volume(proto::NodeExpandVolumeRequest {
                volume_id: id("blk"),
                volume_path: target.clone(),
                capacity_range: Some(proto::CapacityRange { required_bytes: 128 * MIB_I, limit_bytes: 0 }),
                volume_capability: Some(block_cap()),
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure(grown.capacity_bytes == 128 * MIB_I, "block expand")?;
        let size: u64 = sh(&format!("blockdev --getsize64 {target}"))?.trim().parse()?;
        ensure(size == 128 * MIB, format!("the published block device is {size} bytes after expansion"))?;
        node.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
            volume_id: id("blk"),
            target_path: target.clone(),
        })
        .await?;
        node.node_unstage_volume(proto::NodeUnstageVolumeRequest {
            volume_id: id("blk"),
            staging_target_path: staging,
        })
        .await?;
        ctl.delete_volume(proto::DeleteVolumeRequest { volume_id: id("blk"), ..Default::default() }).await?;
        ensure(!Path::new(&target).exists(), "block target file left behind")
    })
}

pub fn csi_restart_between_stage_and_publish() -> Result {
    let mut p = Plugin::start("csi-restart")?;
    let runtime = rt()?;
    runtime.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create("r", 128 * MIB_I, mount_cap("ext4"), None)).await?;
        node.node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id("r"),
            staging_target_path: p.staging("r"),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await?;
        std::fs::write(format!("{}/kept.txt", p.staging("r")), "survives a plugin restart")?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    p.restart()?;
    runtime.block_on(async {
        let (mut ident, _, mut node) = p.clients().await?;
        ensure(ident.probe(proto::ProbeRequest {}).await?.into_inner().ready == Some(true), "not ready after restart")?;
        // The kubelet may repeat the stage after a restart: still idempotent.
        node.node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id("r"),
            staging_target_path: p.staging("r"),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await?;
        node.node_publish_volume(proto::NodePublishVolumeRequest {
            volume_id: id("r"),
            staging_target_path: p.staging("r"),
            target_path: p.target("r", "pod"),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await?;
        let read = std::fs::read_to_string(format!("{}/kept.txt", p.target("r", "pod")))?;
        ensure(read == "survives a plugin restart", format!("read {read:?}"))
    })
}

pub fn csi_bad_input_changes_nothing() -> Result {
    let p = Plugin::start("csi-bad")?;
    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create("good", 64 * MIB_I, mount_cap("ext4"), None)).await?;
        let snapshot = |ctl: &mut ControllerClient<Channel>| {
            let mut c = ctl.clone();
            async move {
                let v = c.list_volumes(proto::ListVolumesRequest::default()).await?.into_inner();
                let s = c.list_snapshots(proto::ListSnapshotsRequest::default()).await?.into_inner();
                let cap = c.get_capacity(proto::GetCapacityRequest::default()).await?.into_inner();
                Ok::<_, tonic::Status>(format!("{v:?}{s:?}{cap:?}"))
            }
        };
        let before = (snapshot(&mut ctl).await?, p.pool_tid()?);
        let long = "x".repeat(129);
        let mut checks: Vec<(String, Code, Code)> = vec![];
        for name in ["", long.as_str(), "a/b", "..", "a\0b"] {
            checks.push((
                format!("create {name:?}"),
                code(ctl.create_volume(create(name, GIB, mount_cap("ext4"), None)).await),
                Code::InvalidArgument,
            ));
        }
        let mut no_caps = create("v", GIB, mount_cap("ext4"), None);
        no_caps.volume_capabilities.clear();
        checks.push(("no capabilities".into(), code(ctl.create_volume(no_caps).await), Code::InvalidArgument));
        let mut no_type = create("v", GIB, mount_cap("ext4"), None);
        no_type.volume_capabilities[0].access_type = None;
        checks.push(("unknown access type".into(), code(ctl.create_volume(no_type).await), Code::InvalidArgument));
        checks.push((
            "negative capacity".into(),
            code(ctl.create_volume(create("v", -5, mount_cap("ext4"), None)).await),
            Code::InvalidArgument,
        ));
        let mut inverted = create("v", GIB, mount_cap("ext4"), None);
        inverted.capacity_range = Some(proto::CapacityRange { required_bytes: GIB, limit_bytes: MIB_I });
        checks.push(("inverted capacity".into(), code(ctl.create_volume(inverted).await), Code::InvalidArgument));
        checks.push((
            "over budget".into(),
            code(ctl.create_volume(create("v", 1 << 40, mount_cap("ext4"), None)).await),
            Code::ResourceExhausted,
        ));
        checks.push((
            "same name, other size".into(),
            code(ctl.create_volume(create("good", 2 * GIB, mount_cap("ext4"), None)).await),
            Code::AlreadyExists,
        ));
        let mut topo = create("v", GIB, mount_cap("ext4"), None);
        topo.accessibility_requirements = Some(proto::TopologyRequirement {
            requisite: vec![proto::Topology {
                segments: HashMap::from([("topology.thinpool.csi.io/node".into(), "elsewhere".into())]),
            }],
            preferred: vec![],
        });
        checks.push(("requisite elsewhere".into(), code(ctl.create_volume(topo).await), Code::ResourceExhausted));
        let other_snap = vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: "s@elsewhere".into() });
        checks.push((
            "source on another node".into(),
            code(ctl.create_volume(create("v", GIB, mount_cap("ext4"), Some(other_snap))).await),
            Code::ResourceExhausted,
        ));
        // Empty and over-long ids are bad input; an id not of our form names no volume, so
        // deleting it succeeds (the spec's idempotent delete) and changes nothing.
        for (bad_id, want) in [
            ("", Code::InvalidArgument),
            (long.as_str(), Code::InvalidArgument),
            ("a/b@vm-node", Code::Ok),
            ("..@vm-node", Code::Ok),
            ("noat", Code::Ok),
        ] {
            checks.push((
                format!("delete {bad_id:?}"),
                code(
                    ctl.delete_volume(proto::DeleteVolumeRequest { volume_id: bad_id.into(), ..Default::default() })
                        .await,
                ),
                want,
            ));
        }
        checks.push((
            "snapshot of unknown volume".into(),
            code(
                ctl.create_snapshot(proto::CreateSnapshotRequest {
                    name: "s".into(),
                    source_volume_id: id("nope"),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ));
        checks.push((
            "bad page token".into(),
            code(ctl.list_volumes(proto::ListVolumesRequest { max_entries: 1, starting_token: "zzz".into() }).await),
            Code::Aborted,
        ));
        for path in ["/etc", "/tmp/e2e/csi-bad/kubelet/../../../etc", "relative/path"] {
            let stage = proto::NodeStageVolumeRequest {
                volume_id: id("good"),
                staging_target_path: path.into(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            };
            checks.push((format!("stage at {path}"), code(node.node_stage_volume(stage).await), Code::InvalidArgument));
            let publish = proto::NodePublishVolumeRequest {
                volume_id: id("good"),
                staging_target_path: p.staging("good"),
                target_path: path.into(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            };
            checks.push((
                format!("publish at {path}"),
                code(node.node_publish_volume(publish).await),
                Code::InvalidArgument,
            ));
        }
        let stage = proto::NodeStageVolumeRequest {
            volume_id: id("good"),
            staging_target_path: p.staging("good"),
            volume_capability: None,
            ..Default::default()
        };
        checks.push((
            "stage without capability".into(),
            code(node.node_stage_volume(stage).await),
            Code::InvalidArgument,
        ));
        let wrong: Vec<String> = checks
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(w, got, want)| format!("{w}: got {got:?}, want {want:?}"))
            .collect();
        ensure(wrong.is_empty(), wrong.join("; "))?;
        let after = (snapshot(&mut ctl).await?, p.pool_tid()?);
        ensure(before == after, "bad input changed the pool or the records")?;
        println!("  {} bad requests, each with its code; pool transaction id and records unchanged", checks.len());
        Ok(())
    })
}

pub fn csi_pagination() -> Result {
    let p = Plugin::start("csi-pages")?;
    rt()?.block_on(async {
        let (_, mut ctl, _) = p.clients().await?;
        for i in 0..7 {
            ctl.create_volume(create(&format!("p{i}"), 16 * MIB_I, mount_cap("ext4"), None)).await?;
            ctl.create_snapshot(proto::CreateSnapshotRequest {
                name: format!("ps{i}"),
                source_volume_id: id(&format!("p{i}")),
                ..Default::default()
            })
            .await?;
        }
        let mut seen = vec![];
        let mut token = String::new();
        loop {
            let page = ctl
                .list_volumes(proto::ListVolumesRequest { max_entries: 3, starting_token: token.clone() })
                .await?
                .into_inner();
            ensure(page.entries.len() <= 3, "page too long")?;
            seen.extend(page.entries.into_iter().filter_map(|e| e.volume.map(|v| v.volume_id)));
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        ensure(seen.len() == 7, format!("volumes seen over pages: {seen:?}"))?;
        let mut snaps = 0;
        let mut token = String::new();
        loop {
            let page = ctl
                .list_snapshots(proto::ListSnapshotsRequest {
                    max_entries: 2,
                    starting_token: token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            snaps += page.entries.len();
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        ensure(snaps == 7, format!("snapshots seen over pages: {snaps}"))?;
        let by_source = ctl
            .list_snapshots(proto::ListSnapshotsRequest { source_volume_id: id("p3"), ..Default::default() })
            .await?
            .into_inner();
        ensure(by_source.entries.len() == 1, "list by source")
    })
}

/// GET over plain HTTP/1.0 on loopback: (status code, body).
pub(crate) fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let code = text.split_whitespace().nth(1).ok_or("no status line")?.parse()?;
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    Ok((code, body))
}

/// Saves what the plugin serves at /metrics as `$THINPOOL_E2E_OUT/metrics/<case>.prom`: the chart's
/// alerts are evaluated on it afterwards (e2e/alerts).
pub(crate) fn save_scrape(port: u16, case: &str) -> Result {
    let (_, text) = http_get(port, "/metrics")?;
    let dir = PathBuf::from(std::env::var("THINPOOL_E2E_OUT")?).join("metrics");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{case}.prom")), text)?;
    Ok(())
}

pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// What a scraped value must satisfy.
type Check = Box<dyn Fn(f64) -> bool>;

pub fn csi_metrics_scrape() -> Result {
    let p = Plugin::start("csi-metrics")?;
    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create("m1", 128 * MIB_I, mount_cap("ext4"), None)).await?;
        ctl.create_volume(create("m2", 64 * MIB_I, mount_cap("ext4"), None)).await?;
        ctl.create_snapshot(proto::CreateSnapshotRequest {
            name: "ms".into(),
            source_volume_id: id("m1"),
            ..Default::default()
        })
        .await?;
        let _ = ctl.create_volume(create("too-big", 1 << 40, mount_cap("ext4"), None)).await;
        node.node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id("m1"),
            staging_target_path: p.staging("m1"),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    ensure(http_get(p.metrics_port, "/healthz")?.0 == 200, "/healthz")?;
    ensure(http_get(p.metrics_port, "/readyz")?.0 == 200, "/readyz")?;
    let (code, text) = http_get(p.metrics_port, "/metrics")?;
    ensure(code == 200, format!("/metrics answered {code}"))?;
    let checks: Vec<(&str, Check)> = vec![
        ("thinpool_volumes", Box::new(|v| v == 2.0)),
        ("thinpool_snapshots", Box::new(|v| v == 1.0)),
        ("thinpool_pool_provisioned_bytes", Box::new(|v| v == (320u64 << 20) as f64)),
        ("thinpool_pool_data_total_bytes", Box::new(|v| v == (2u64 << 30) as f64)),
        ("thinpool_pool_data_used_bytes", Box::new(|v| v > 0.0)),
        ("thinpool_pool_metadata_used_bytes", Box::new(|v| v > 0.0)),
        ("thinpool_pool_allowed_new_bytes", Box::new(|v| v > 0.0)),
        ("thinpool_pool_mode{mode=\"rw\"}", Box::new(|v| v == 1.0)),
        ("thinpool_volume_mapped_bytes{volume=\"m1\"}", Box::new(|v| v > 0.0)),
        ("thinpool_csi_calls_total{code=\"Ok\",method=\"CreateVolume\"}", Box::new(|v| v == 2.0)),
        ("thinpool_csi_calls_total{code=\"ResourceExhausted\",method=\"CreateVolume\"}", Box::new(|v| v == 1.0)),
        ("thinpool_csi_call_duration_seconds_count{method=\"NodeStageVolume\"}", Box::new(|v| v == 1.0)),
        ("thinpool_dm_message_duration_seconds_count{message=\"create_thin\"}", Box::new(|v| v == 2.0)),
        ("thinpool_dm_message_duration_seconds_count{message=\"create_snap\"}", Box::new(|v| v == 1.0)),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(series, ok)| !metric(&text, series).is_some_and(ok))
        .map(|(series, _)| format!("{series} = {:?}", metric(&text, series)))
        .collect();
    ensure(wrong.is_empty(), format!("unexpected metrics: {}", wrong.join(", ")))
}

/// The kubelet's client on the registration socket, on the wire as the kubelet's grpc-go client
/// is: dialled with the socket's bare path as its target, it sends that path as every request's
/// HTTP/2 `:authority` (the plugin's `kubelet::authority` rewrites it; hyper's HTTP/2 server
/// refuses it as it is). tonic cannot send it: its `:authority` comes from an `http::Uri`, whose
/// authority holds no `/` (percent-encoded, the path would be an authority the server takes as it
/// is, and the test would no longer need the rewrite). So the requests are written by hand: the
/// header block as HPACK literals, the message in one DATA frame. An answer carrying a message is
/// OK (a gRPC error has none, only trailers); a reset stream or a GOAWAY fails the call.
struct KubeletConn {
    sock: std::os::unix::net::UnixStream,
    authority: String,
    next_stream: u32,
    /// One encoder for the connection, as its peer keeps one decoder (HPACK's dynamic table).
    hpack: loona_hpack::Encoder<'static>,
}

use thinpool_csi::kubelet::authority::{
    END_HEADERS as H2_END_HEADERS, HEADERS as H2_HEADERS, PADDED as H2_PADDED, PREFACE as H2_PREFACE,
};
const H2_DATA: u8 = 0x0;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
/// END_STREAM on DATA and HEADERS, ACK on SETTINGS and PING (the same bit).
const H2_END_STREAM_OR_ACK: u8 = thinpool_csi::kubelet::authority::END_STREAM;

fn h2_write(w: &mut impl std::io::Write, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result {
    let len = u32::try_from(payload.len())?.to_be_bytes();
    w.write_all(&len[1..])?;
    w.write_all(&[kind, flags])?;
    w.write_all(&stream.to_be_bytes())?;
    w.write_all(payload)?;
    Ok(())
}

/// One frame: its type, flags, stream and payload.
fn h2_read(r: &mut impl std::io::Read) -> Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok((head[3], head[4], stream, payload))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl KubeletConn {
    fn dial(path: &Path) -> Result<Self> {
        let mut sock = std::os::unix::net::UnixStream::connect(path)?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        std::io::Write::write_all(&mut sock, H2_PREFACE)?;
        h2_write(&mut sock, H2_SETTINGS, 0, 0, &[])?;
        Ok(KubeletConn {
            sock,
            authority: path.display().to_string(),
            next_stream: 1,
            hpack: loona_hpack::Encoder::new(),
        })
    }

    /// A unary call of `pluginregistration.Registration/{method}`; the answer's message bytes.
    fn call(&mut self, method: &str, message: &[u8]) -> Result<Vec<u8>> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let path = format!("/pluginregistration.Registration/{method}");
        let block = self.hpack.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", self.authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]);
        h2_write(&mut self.sock, H2_HEADERS, H2_END_HEADERS, stream, &block)?;
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        body.extend_from_slice(message);
        h2_write(&mut self.sock, H2_DATA, H2_END_STREAM_OR_ACK, stream, &body)?;
        let mut data = Vec::new();
        loop {
            let (kind, flags, id, payload) =
                h2_read(&mut self.sock).map_err(|e| format!("{method}: no complete answer: {e}"))?;
            let ack = flags & H2_END_STREAM_OR_ACK != 0;
            match kind {
                H2_SETTINGS if !ack => h2_write(&mut self.sock, H2_SETTINGS, H2_END_STREAM_OR_ACK, 0, &[])?,
                H2_PING if !ack => h2_write(&mut self.sock, H2_PING, H2_END_STREAM_OR_ACK, 0, &payload)?,
                H2_GOAWAY => {
                    return Err(format!(
                        "{method}: the plugin closed the connection (GOAWAY, error code {:?}): {}",
                        u32_at(&payload, 4),
                        String::from_utf8_lossy(payload.get(8..).unwrap_or_default())
                    )
                    .into())
                }
                H2_RST_STREAM if id == stream => {
                    return Err(format!(
                        "{method}: the plugin reset the request (RST_STREAM, error code {:?}; 1 is PROTOCOL_ERROR, \
                         what hyper answers to the socket path as :authority)",
                        u32_at(&payload, 0)
                    )
                    .into())
                }
                H2_DATA if id == stream => {
                    let body = if flags & H2_PADDED != 0 {
                        let pad = usize::from(*payload.first().ok_or("an empty padded DATA frame")?);
                        payload.get(1..payload.len().saturating_sub(pad)).ok_or("bad DATA padding")?
                    } else {
                        &payload[..]
                    };
                    data.extend_from_slice(body);
                }
                _ => {}
            }
            if id == stream && ack && (kind == H2_DATA || kind == H2_HEADERS) {
                break;
            }
        }
        // A gRPC message: not compressed, its length, its bytes.
        ensure(data.len() >= 5, format!("{method}: the answer holds no message (a gRPC error status)"))?;
        let len = u32_at(&data, 1).ok_or("a short gRPC frame")? as usize;
        ensure(data[0] == 0 && data.len() == 5 + len, format!("{method}: a malformed gRPC message {data:?}"))?;
        Ok(data[5..].to_vec())
    }

    fn get_info(&mut self) -> Result<thinpool_csi::kubelet::proto::PluginInfo> {
        use prost::Message;
        let request = thinpool_csi::kubelet::proto::InfoRequest {}.encode_to_vec();
        Ok(thinpool_csi::kubelet::proto::PluginInfo::decode(self.call("GetInfo", &request)?.as_slice())?)
    }

    fn notify(&mut self, registered: bool, error: &str) -> Result {
        use prost::Message;
        let status =
            thinpool_csi::kubelet::proto::RegistrationStatus { plugin_registered: registered, error: error.into() };
        let reply = self.call("NotifyRegistrationStatus", &status.encode_to_vec())?;
        thinpool_csi::kubelet::proto::RegistrationStatusResponse::decode(reply.as_slice())?;
        Ok(())
    }
}

/// The kubelet's side of plugin registration, done as the kubelet does it: dial the socket in
/// plugins_registry (its path as the requests' `:authority`, see [`KubeletConn`]), GetInfo, then NotifyRegistrationStatus refused and accepted (readiness and
/// the failure metric follow), the socket deleted and made anew, a clean stop removing it, and a
/// restart over a stale socket.
pub fn csi_kubelet_registration() -> Result {
    let registry = Path::new("/tmp/e2e/csi-registration-registry");
    let _ = std::fs::remove_dir_all(registry);
    let extra = vec![
        "--registration-dir".to_owned(),
        registry.display().to_string(),
        "--kubelet-registration-path".to_owned(),
        "/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock".to_owned(),
    ];
    let mut p = Plugin::start_with("csi-registration", &extra)?;
    let socket = registry.join("thinpool.csi.io-reg.sock");
    let wait_socket = |present: bool| -> Result {
        let start = Instant::now();
        while socket.exists() != present {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "{} {} within 20 s",
                    socket.display(),
                    if present { "did not appear" } else { "stayed" }
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    let scraped = |series: &str| -> Result<f64> {
        let (_, text) = http_get(p.metrics_port, "/metrics")?;
        Ok(metric(&text, series).ok_or(format!("no {series} in /metrics"))?)
    };
    wait_socket(true)?;
    let mut k = KubeletConn::dial(&socket)?;
    let info = k.get_info()?;
    ensure(info.r#type == "CSIPlugin", format!("type {}", info.r#type))?;
    ensure(info.name == "thinpool.csi.io", format!("name {}", info.name))?;
    ensure(
        info.endpoint == "/var/lib/kubelet/plugins/thinpool.csi.io/csi.sock",
        format!("endpoint {}", info.endpoint),
    )?;
    ensure(info.supported_versions == ["1.0.0"], format!("versions {:?}", info.supported_versions))?;
    let (code, why) = http_get(p.metrics_port, "/readyz")?;
    ensure(code == 503 && why.contains("not registered"), format!("/readyz before registration: {code} {why}"))?;
    ensure(http_get(p.metrics_port, "/healthz")?.0 == 200, "/healthz while unregistered")?;
    // On the same connection, as the kubelet does.
    k.notify(false, "e2e says no")?;
    let (code, why) = http_get(p.metrics_port, "/readyz")?;
    ensure(code == 503 && why.contains("e2e says no"), format!("/readyz after a refusal: {code} {why}"))?;
    ensure(scraped("thinpool_kubelet_registration_failures_total")? == 1.0, "failure not counted")?;
    ensure(p.log().contains("e2e says no"), "the kubelet's error is not in the log")?;
    KubeletConn::dial(&socket)?.notify(true, "")?;
    ensure(http_get(p.metrics_port, "/readyz")?.0 == 200, "/readyz after registration")?;
    ensure(scraped("thinpool_kubelet_registered")? == 1.0, "registered gauge")?;
    // Deleted under the plugin: made anew (checked every 5 s), and registration starts over.
    std::fs::remove_file(&socket)?;
    wait_socket(true)?;
    ensure(http_get(p.metrics_port, "/readyz")?.0 == 503, "/readyz after the socket was made anew")?;
    let mut k = KubeletConn::dial(&socket)?;
    ensure(k.get_info()?.name == "thinpool.csi.io", "GetInfo on the new socket")?;
    k.notify(true, "")?;
    drop(k);
    ensure(http_get(p.metrics_port, "/readyz")?.0 == 200, "/readyz after registering again")?;
    // A clean stop removes the socket, so the kubelet unregisters the driver.
    p.stop()?;
    ensure(!socket.exists(), "the registration socket outlived a clean stop")?;
    // A killed plugin leaves its socket; the next one replaces it.
    drop(std::os::unix::net::UnixListener::bind(&socket)?);
    p.restart()?;
    let start = Instant::now();
    loop {
        // Until the new plugin has replaced the stale socket, dialing it is refused.
        let answer = KubeletConn::dial(&socket).and_then(|mut k| k.get_info());
        match answer {
            Ok(info) if info.name == "thinpool.csi.io" => break,
            answer => ensure(
                start.elapsed() < Duration::from_secs(20),
                format!("GetInfo after a restart over a stale socket: {answer:?}"),
            )?,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  with the socket path as :authority: GetInfo, refused and accepted registration, socket re-created, \
         removed on SIGTERM, stale socket replaced"
    );
    Ok(())
}
