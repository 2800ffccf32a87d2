//! [`Mounter`] on Linux: mount(2)/umount2(2)/statvfs(3) through `nix`; mkfs, resize2fs,
//! xfs_growfs and blkid through `tools`.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{mountinfo, FsStats, FsType, MountError, Mounted, Mounter};
use crate::tools;

pub struct LinuxMounter;

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError::Sys { op, path: path.to_owned(), source }
}

/// Splits options into mount(2) flags and the filesystem's data string.
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            other => data.push(other.to_owned()),
        }
    }
    (flags, data.join(","))
}

impl Mounter for LinuxMounter {
    fn mounted(&self, target: &Path) -> Result<Option<Mounted>, MountError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|source| MountError::Io { what: "reading /proc/self/mountinfo".into(), source })?;
        let entries = mountinfo::parse(&text);
        Ok(mountinfo::find(&entries, target).map(|e| Mounted {
            source: e.source.clone(),
            fstype: e.fstype.clone(),
            read_only: e.read_only(),
        }))
    }

    fn signature(&self, device: &Path) -> Result<Option<String>, MountError> {
        Ok(tools::signature(&device.to_string_lossy())?)
    }

    fn format(&self, device: &Path, fs: FsType) -> Result<(), MountError> {
        let dev = device.to_string_lossy();
        match fs {
            // lazy_itable_init: do not zero inode tables up front (the pool reads unwritten
            // blocks as zeros anyway); nodiscard: a new thin device has nothing to discard.
            FsType::Ext4 => tools::run("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=1,nodiscard", &dev])?,
            FsType::Xfs => tools::run("mkfs.xfs", &["-q", "-f", "-K", &dev])?,
        };
        Ok(())
    }

    fn mount(&self, device: &Path, target: &Path, fs: FsType, options: &[String]) -> Result<(), MountError> {
        let (flags, data) = split_options(options);
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(Some(device), target, Some(fs.as_str()), flags, data).map_err(sys("mount", target))
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys("bind mount", target))?;
        if read_only {
            // A bind mount takes MS_RDONLY only on a remount.
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                let _ = umount2(target, MntFlags::empty());
                return Err(sys("read-only remount", target)(e));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        if self.mounted(target)?.is_none() {
            return Ok(());
        }
        umount2(target, MntFlags::empty()).map_err(sys("unmount", target))
    }

    fn grow(&self, device: &Path, mount_path: &Path, fs: FsType) -> Result<(), MountError> {
        match fs {
            FsType::Ext4 => tools::run("resize2fs", &[&device.to_string_lossy()])?,
            FsType::Xfs => tools::run("xfs_growfs", &[&mount_path.to_string_lossy()])?,
        };
        Ok(())
    }

    fn stats(&self, path: &Path) -> Result<FsStats, MountError> {
        let s = nix::sys::statvfs::statvfs(path).map_err(sys("statvfs", path))?;
        let frsize = s.fragment_size() as u64;
        let total = s.blocks() as u64 * frsize;
        let free = s.blocks_free() as u64 * frsize;
        let avail = s.blocks_available() as u64 * frsize;
        Ok(FsStats {
            total_bytes: total,
            available_bytes: avail,
            used_bytes: total.saturating_sub(free),
            total_inodes: s.files() as u64,
            free_inodes: s.files_free() as u64,
            used_inodes: (s.files() as u64).saturating_sub(s.files_free() as u64),
        })
    }

    fn device_size(&self, device: &Path) -> Result<u64, MountError> {
        use std::io::Seek;
        let mut f = std::fs::File::open(device)
            .map_err(|source| MountError::Io { what: format!("opening {}", device.display()), source })?;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|source| MountError::Io { what: format!("sizing {}", device.display()), source })
    }

    fn make_dir(&self, path: &Path) -> Result<(), MountError> {
        std::fs::create_dir_all(path)
            .map_err(|source| MountError::Io { what: format!("creating {}", path.display()), source })
    }

    fn make_file(&self, path: &Path) -> Result<(), MountError> {
        let io = |source| MountError::Io { what: format!("creating {}", path.display()), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|source| MountError::Io { what: format!("creating {}", path.display()), source })
    }

    fn remove_target(&self, path: &Path) -> Result<(), MountError> {
        let r = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => std::fs::remove_dir(path),
            Ok(_) => std::fs::remove_file(path),
        };
        r.map_err(|source| MountError::Io { what: format!("removing {}", path.display()), source })
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = split_options(&["ro".into(), "noatime".into(), "nouuid".into(), "discard".into()]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        assert_eq!(d, "nouuid,discard");
        let (f, d) = split_options(&[]);
        assert!(f.is_empty());
        assert_eq!(d, "");
    }
}
