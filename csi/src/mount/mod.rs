//! Filesystems and mounts for the Node service: format, mount, bind, unmount, grow, stats.
//! [`Mounter`] is the narrow OS interface; [`linux::LinuxMounter`] does it with `nix` syscalls
//! (mkfs, resize and blkid are the only programs run); [`memory::MemoryMounter`] is the test double.

pub mod linux;
#[cfg(any(test, feature = "test-double"))]
pub mod memory;
pub mod mountinfo;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::tools::ToolError;

/// Filesystems the driver formats and mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// The smallest device `mkfs` accepts for this filesystem (mkfs.xfs refuses under 300 MB).
    pub fn min_bytes(self) -> u64 {
        match self {
            FsType::Ext4 => 0,
            FsType::Xfs => 300 << 20,
        }
    }
}

/// Usage of a mounted filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FsStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// What is mounted at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub source: String,
    pub fstype: String,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{device} holds {found}, not a {wanted} filesystem; it will not be reformatted")]
    WrongFilesystem { device: String, found: String, wanted: String },
}

pub trait Mounter: Send + Sync {
    /// What is mounted at `target`, if it is a mount point.
    fn mounted(&self, target: &Path) -> Result<Option<Mounted>, MountError>;
    /// The filesystem (or other) signature on a device, `None` when it is blank.
    fn signature(&self, device: &Path) -> Result<Option<String>, MountError>;
    fn format(&self, device: &Path, fs: FsType) -> Result<(), MountError>;
    /// Mounts a filesystem with `options` (the caller's flags plus `ro` when asked).
    fn mount(&self, device: &Path, target: &Path, fs: FsType, options: &[String]) -> Result<(), MountError>;
    /// Bind-mounts `source` onto `target`, read-only when asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError>;
    /// Unmounts `target`; not mounted is success.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// Grows the filesystem mounted at `mount_path` (from `device`) to fill the device.
    fn grow(&self, device: &Path, mount_path: &Path, fs: FsType) -> Result<(), MountError>;
    fn stats(&self, path: &Path) -> Result<FsStats, MountError>;
    /// Size of a block device in bytes.
    fn device_size(&self, device: &Path) -> Result<u64, MountError>;
    /// Creates a directory (and its parents) to mount on.
    fn make_dir(&self, path: &Path) -> Result<(), MountError>;
    /// Creates an empty file (and its parent directories) to bind a block device onto.
    fn make_file(&self, path: &Path) -> Result<(), MountError>;
    /// Removes a mount target (an empty directory or a file); a missing path is success.
    fn remove_target(&self, path: &Path) -> Result<(), MountError>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
}

/// Mount options for `fs`: XFS clones and restores carry their origin's UUID, so XFS is always
/// mounted with `nouuid` (FACTS.md), which lets a clone be mounted beside its origin.
pub fn mount_options(fs: FsType, flags: &[String], read_only: bool) -> Vec<String> {
    let mut out: Vec<String> = flags.iter().filter(|f| !f.is_empty()).cloned().collect();
    if fs == FsType::Xfs && !out.iter().any(|o| o == "nouuid") {
        out.push("nouuid".into());
    }
    if read_only && !out.iter().any(|o| o == "ro") {
        out.push("ro".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfs_gets_nouuid_and_read_only_gets_ro() {
        assert_eq!(mount_options(FsType::Xfs, &[], false), vec!["nouuid"]);
        assert_eq!(mount_options(FsType::Ext4, &["noatime".into()], true), vec!["noatime", "ro"]);
        assert_eq!(mount_options(FsType::Xfs, &["nouuid".into(), "ro".into()], true), vec!["nouuid", "ro"]);
        assert_eq!(FsType::parse("ext4"), Some(FsType::Ext4));
        assert_eq!(FsType::parse("btrfs"), None);
    }
}
