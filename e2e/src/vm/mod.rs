//! The VM harness: Debian's kernel under qemu (TCG), this machine's files over 9p, a command run
//! as root in the guest with real device-mapper, its exit code brought back.

pub mod initramfs;
pub mod kernel;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

/// The workspace's `target/` directory, where the kernel, initramfs and run shares are cached.
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// Boots a guest and runs `script` in it; fails when the script fails, hangs or the guest dies.
/// `kernel_lines` shows the kernel's console lines too (the demo hides them).
pub fn run_in_vm(name: &str, script: &str, timeout: Duration, kernel_lines: bool) -> Result<()> {
    run_in_vm_with(name, script, timeout, kernel_lines, 3072, &[])
}

/// [`run_in_vm`] with the guest's memory given (the cluster needs more than the suites) and disk
/// images attached copy-on-write as virtio disks (`/dev/vda`, `/dev/vdb`, ... in that order).
pub fn run_in_vm_with(
    name: &str,
    script: &str,
    timeout: Duration,
    kernel_lines: bool,
    memory_mib: u32,
    disks: &[PathBuf],
) -> Result<()> {
    let boot = Boot { name, script, timeout, kernel_lines, memory_mib, disks, persistent: &[], cut: None };
    boot.run()?.check(name, timeout)
}

/// One boot of the guest, with everything [`run_in_vm_with`] takes plus persistent disks and a
/// power cut (the power-cut suite).
pub struct Boot<'a> {
    pub name: &'a str,
    pub script: &'a str,
    pub timeout: Duration,
    pub kernel_lines: bool,
    pub memory_mib: u32,
    pub disks: &'a [PathBuf],
    pub persistent: &'a [PathBuf],
    pub cut: Option<Duration>,
}

impl Boot<'_> {
    /// Boots, runs the script, and says how the guest ended.
    pub fn run(&self) -> Result<qemu::Outcome> {
        let Boot { name, script, timeout, kernel_lines, memory_mib, disks, persistent, cut } = *self;
        let cache = target_dir().join("vm");
        std::fs::create_dir_all(&cache)?;
        let cache = cache.canonicalize()?;
        let kernel = kernel::ensure(&cache)?;
        let initramfs = initramfs::ensure(&cache, &kernel)?;
        let share = cache.join("runs").join(name);
        let _ = std::fs::remove_dir_all(&share);
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
        let guest = qemu::Guest {
            kernel: &kernel,
            initramfs: &initramfs,
            share,
            memory_mib,
            disks,
            persistent,
            cut,
            timeout,
            workspace,
            kernel_lines,
        };
        eprintln!(
            "e2e: booting Debian kernel {} under qemu for `{name}` (limit {}s)",
            kernel.version,
            timeout.as_secs()
        );
        guest.run(script)
    }
}
