//! Builds the guest's initramfs: static busybox, the virtio/9p modules (insmod, in dependency
//! order, since busybox does not resolve dependencies) and `init`, which mounts this machine's
//! root read-only over 9p, mounts the run's read-write share, and runs `guest.sh` in a chroot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::kernel::Kernel;

/// Modules needed before the 9p root can be mounted, in insert order.
const EARLY_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "9pnet",
    "9pnet_virtio",
    "netfs",
    "fscache",
    "9p",
];

const INIT: &str = include_str!("../../guest/init");

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let file = format!("{name}.ko");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == file.as_str()) {
                return Some(path);
            }
        }
    }
    None
}

/// Returns the cached initramfs for `kernel`, building it when missing or older than `init`.
pub fn ensure(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let out = cache.join(format!("initramfs-{}.cpio.gz", kernel.version));
    let stamp = cache.join(format!("initramfs-{}.init", kernel.version));
    if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == INIT) {
        return Ok(out);
    }
    let stage = cache.join("initramfs-stage");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "modules", "proc", "sys", "dev", "host"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no static busybox: apt-get install busybox-static")?;
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", stage.join("bin/sh"))?;
    let mut order = String::new();
    for m in EARLY_MODULES {
        // A module that is missing here is built into this kernel.
        if let Some(path) = find_module(&kernel.modules_dir(), m) {
            std::fs::copy(&path, stage.join("modules").join(format!("{m}.ko")))?;
            order.push_str(m);
            order.push('\n');
        }
    }
    std::fs::write(stage.join("modules/order"), order)?;
    let init = stage.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let cmd = format!(
        "cd {} && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > {}",
        stage.display(),
        out.display()
    );
    let status = Command::new("sh").arg("-c").arg(&cmd).stdout(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "building the initramfs failed: {cmd}");
    std::fs::write(&stamp, INIT)?;
    std::fs::remove_dir_all(&stage)?;
    Ok(out)
}
