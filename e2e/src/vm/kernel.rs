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

    /// What qemu boots: the kernel unpacked once (`vmlinux-<version>`, an ELF that qemu starts
    /// through its PVH entry), so the guest does not spend seconds of emulated CPU unpacking itself
    /// at every boot; the packaged `vmlinuz` when it cannot be unpacked or has no PVH entry (tried
    /// once: the reason is kept beside it, so later boots do not try again).
    pub fn boot_image(&self) -> PathBuf {
        let unpacked = self.root.join("boot").join(format!("vmlinux-{}", self.version));
        let refused = unpacked.with_file_name(format!("vmlinux-{}.unusable", self.version));
        if unpacked.exists() {
            return unpacked;
        }
        if !refused.exists() {
            match unpack(&self.vmlinuz(), &unpacked) {
                Ok(()) => return unpacked,
                Err(e) => {
                    eprintln!("e2e: booting the packaged vmlinuz from now on: {e:#}");
                    let _ = std::fs::write(&refused, format!("{e:#}\n"));
                }
            }
        }
        self.vmlinuz()
    }
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// Whether an ELF kernel has the PVH entry note (`Xen`, `XEN_ELFNOTE_PHYS32_ENTRY` = 18) that qemu
/// needs to boot it directly.
fn has_pvh_entry(elf: &[u8]) -> bool {
    elf.starts_with(b"\x7fELF")
        && [4u32, 8].iter().any(|descsz| {
            let mut note = Vec::with_capacity(16);
            for word in [4u32, *descsz, 18] {
                note.extend_from_slice(&word.to_le_bytes());
            }
            note.extend_from_slice(b"Xen\0");
            elf.windows(note.len()).any(|w| w == note.as_slice())
        })
}

/// Unpacks the xz payload of a bzImage into `to` (written beside it, then renamed).
fn unpack(bz_image: &Path, to: &Path) -> Result<()> {
    let image = std::fs::read(bz_image)?;
    let start =
        image.windows(XZ_MAGIC.len()).position(|w| w == XZ_MAGIC).context("no xz payload in the kernel image")?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running xz (apt-get install xz-utils)")?;
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let payload = image[start..].to_vec();
    let feed = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let out = xz.wait_with_output()?;
    // xz stops reading after the first stream: a broken pipe for the rest is expected.
    let _ = feed.join();
    if !out.status.success() {
        bail!("xz could not unpack {}: {}", bz_image.display(), out.status);
    }
    if !has_pvh_entry(&out.stdout) {
        bail!("the unpacked kernel has no PVH entry");
    }
    let tmp = to.with_file_name(format!("{}.partial", to.file_name().and_then(|n| n.to_str()).unwrap_or("vmlinux")));
    std::fs::write(&tmp, &out.stdout)?;
    std::fs::rename(&tmp, to)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn note(descsz: u32, kind: u32) -> Vec<u8> {
        let mut n = Vec::new();
        for w in [4u32, descsz, kind] {
            n.extend_from_slice(&w.to_le_bytes());
        }
        n.extend_from_slice(b"Xen\0");
        n
    }

    #[test]
    fn the_pvh_entry_note_is_found_only_in_an_elf_that_has_it() {
        for descsz in [4, 8] {
            let elf = [b"\x7fELF".as_slice(), &[0; 60], &note(descsz, 18), &[0; 8]].concat();
            assert!(has_pvh_entry(&elf));
        }
        let other_note = [b"\x7fELF".as_slice(), &note(8, 17)].concat();
        assert!(!has_pvh_entry(&other_note));
        assert!(!has_pvh_entry(&note(8, 18)), "not an ELF");
    }
}
