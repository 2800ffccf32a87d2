//! Fetches Debian's own kernel package once and caches it, unpacked and with `modules.dep`,
//! under `target/vm/kernel/<version>/`. A later run finds it there and does not touch apt.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// An unpacked Debian kernel: `root` holds `boot/vmlinuz-<version>` and `lib/modules/<version>`.
pub struct Kernel {
    pub version: String,
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.version))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// The real package behind the `linux-image-amd64` meta package, e.g. `linux-image-6.1.0-56-amd64`.
fn resolve_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache (is this a Debian machine?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .context("apt-cache names no linux-image package for linux-image-amd64: run `apt-get update` first")
}

/// Returns the cached kernel, fetching it with `apt-get download` the first time.
pub fn ensure(cache: &Path) -> Result<Kernel> {
    let dir = cache.join("kernel");
    std::fs::create_dir_all(&dir)?;
    let marker = dir.join("current");
    if let Ok(version) = std::fs::read_to_string(&marker) {
        let kernel = Kernel { version: version.trim().to_owned(), root: dir.join(version.trim()) };
        if kernel.vmlinuz().exists() && kernel.modules_dir().join("modules.dep").exists() {
            return Ok(kernel);
        }
    }
    let package = match std::env::var("THINPOOL_E2E_KERNEL_PACKAGE") {
        Ok(p) => p,
        Err(_) => resolve_package()?,
    };
    let version = package.trim_start_matches("linux-image-").to_owned();
    eprintln!("e2e: fetching kernel package {package} (once; cached in {})", dir.display());
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    run(Command::new("apt-get").arg("download").arg(&package).current_dir(&download))?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    let root = dir.join(&version);
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    std::fs::remove_dir_all(&download)?;
    std::fs::write(&marker, &version)?;
    let kernel = Kernel { version, root };
    if !kernel.vmlinuz().exists() {
        bail!("{} has no {}", package, kernel.vmlinuz().display());
    }
    Ok(kernel)
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
