//! Pools for the VM suite. Each fixture names its devices after the test so leftovers can be
//! found, and always tears down: thin devices first, then the pool.

use std::path::{Path, PathBuf};
use std::process::Command;

use thinpool_csi::config::{NodeConfig, PoolSpec};
use thinpool_csi::dm::kernel::KernelPool;
use thinpool_csi::dm::loopback::LoopSpec;
use thinpool_csi::dm::{PoolStatus, ThinPool};
use thinpool_csi::engine::Engine;
use thinpool_csi::engine::Limits;

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Runs a shell command; fails with its output when it fails.
/// `Ok` when `cond` holds, else an error saying `what`.
pub fn ensure(cond: bool, what: impl Into<String>) -> Result {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub const LVM_CONFIG: &str = "backup{backup=0 archive=0} devices{obtain_device_list_from_udev=0 scan_lvs=0} \
     activation{udev_sync=0 udev_rules=0 monitoring=0} global{use_lvmpolld=0}";

pub fn lvm_env() {
    std::env::set_var("THINPOOL_CSI_LVM_CONFIG", LVM_CONFIG);
    std::fs::create_dir_all("/run/lvm").ok();
    std::fs::create_dir_all("/run/lock/lvm").ok();
}

pub struct LoopFixture {
    pub name: String,
    pub root: PathBuf,
    pub config: NodeConfig,
}

impl LoopFixture {
    pub fn new(test: &str, data_bytes: u64) -> Self {
        let config = Self::config_for(test, data_bytes);
        let root = Path::new("/tmp/e2e").join(test);
        let _ = std::fs::remove_dir_all(&root);
        teardown_pool(&format!("e2e-{test}"));
        LoopFixture { name: format!("e2e-{test}"), root, config }
    }

    /// The configuration of test `test`'s pool (also used by crash-test children).
    pub fn config_for(test: &str, data_bytes: u64) -> NodeConfig {
        let name = format!("e2e-{test}");
        let root = Path::new("/tmp/e2e").join(test);
        NodeConfig {
            state_dir: root.join("state"),
            pool: PoolSpec::Loop(LoopSpec {
                dir: root.join("loop"),
                name: name.clone(),
                data_bytes,
                meta_bytes: 16 * MIB,
                block_bytes: 64 << 10,
            }),
            limits: Limits { overprovision_ratio: 10.0, data_fill_limit_pct: 100.0, meta_fill_limit_pct: 100.0 },
        }
    }

    pub fn engine(&self) -> Result<Engine<KernelPool>> {
        Ok(thinpool_csi::open::open_engine(&self.config)?.0)
    }
}

impl Drop for LoopFixture {
    fn drop(&mut self) {
        teardown_pool(&self.name);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Removes the thin devices of pool `dm_name` (their names start with `tpcsi-<tag>-`).
pub fn remove_thins(dm_name: &str) {
    let tag = thinpool_csi::dm::naming::pool_tag(dm_name);
    let _ = sh(&format!(
        "for d in $(dmsetup ls 2>/dev/null | awk '{{print $1}}' | grep '^tpcsi-{tag}-'); do dmsetup remove --retry $d; done; true"
    ));
}

/// Removes the pool's thin devices, then the pool device.
pub fn teardown_pool(dm_name: &str) {
    remove_thins(dm_name);
    let _ = sh(&format!("dmsetup remove --retry {dm_name} 2>/dev/null; true"));
}

pub fn data_used(pool: &impl ThinPool) -> Result<u64> {
    match pool.status()? {
        PoolStatus::Working(s) => Ok(s.data_used),
        PoolStatus::Fail => Err("pool failed".into()),
    }
}

pub fn mount(dev: &Path, at: &str, opts: &str) -> Result {
    std::fs::create_dir_all(at)?;
    sh(&format!("mount -o {opts} {} {at}", dev.display()))?;
    Ok(())
}

pub fn umount(at: &str) -> Result {
    sh(&format!("umount {at}"))?;
    Ok(())
}

/// A loop-backed LVM volume group on a sparse file, for direct-lvm tests.
pub struct LvmFixture {
    pub vg: String,
    pub file: PathBuf,
    pub loopdev: String,
}

impl LvmFixture {
    /// An empty loop device of `bytes` (no VG yet).
    pub fn device(test: &str, bytes: u64) -> Result<Self> {
        lvm_env();
        let file = PathBuf::from(format!("/tmp/e2e-{test}.img"));
        let _ = std::fs::remove_file(&file);
        std::fs::File::create(&file)?.set_len(bytes)?;
        let loopdev = sh(&format!("losetup -f --show {}", file.display()))?.trim().to_owned();
        Ok(LvmFixture { vg: format!("e2e{}", test.replace(['-', '_'], "")), file, loopdev })
    }

    pub fn lvm(&self, args: &str) -> Result<String> {
        sh(&format!("{args} --config '{LVM_CONFIG}'"))
    }
}

impl Drop for LvmFixture {
    fn drop(&mut self) {
        remove_thins(&thinpool_csi::dm::lvm::dm_name(&self.vg, "pool"));
        remove_thins(&format!("{}-tpool", thinpool_csi::dm::lvm::dm_name(&self.vg, "pool")));
        let _ = self.lvm(&format!("vgchange -an {}", self.vg));
        let _ = self.lvm(&format!("vgremove -ff -y {}", self.vg));
        let _ = sh(&format!("losetup -d {}", self.loopdev));
        let _ = std::fs::remove_file(&self.file);
    }
}
