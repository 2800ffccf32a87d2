//! An in-memory [`Mounter`]: a test double for the Node service (never a mode a user can run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{FsStats, FsType, MountError, Mounted, Mounter};

#[derive(Default)]
struct State {
    mounts: BTreeMap<PathBuf, Mounted>,
    signatures: BTreeMap<PathBuf, String>,
    paths: BTreeSet<PathBuf>,
    sizes: BTreeMap<PathBuf, u64>,
    formats: u32,
    grows: u32,
}

#[derive(Default)]
pub struct MemoryMounter {
    state: Mutex<State>,
}

impl MemoryMounter {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn set_signature(&self, device: &Path, sig: &str) {
        self.st().signatures.insert(device.to_owned(), sig.to_owned());
    }
    pub fn set_device_size(&self, device: &Path, bytes: u64) {
        self.st().sizes.insert(device.to_owned(), bytes);
    }
    pub fn formats(&self) -> u32 {
        self.st().formats
    }
    pub fn grows(&self) -> u32 {
        self.st().grows
    }
    /// Every mount, signature, path and size it holds, and its format and grow counts: equal
    /// fingerprints mean nothing was changed in between.
    pub fn fingerprint(&self) -> String {
        let st = self.st();
        format!(
            "mounts={:?} signatures={:?} paths={:?} sizes={:?} formats={} grows={}",
            st.mounts, st.signatures, st.paths, st.sizes, st.formats, st.grows
        )
    }
    pub fn mount_count(&self) -> usize {
        self.st().mounts.len()
    }
}

impl Mounter for MemoryMounter {
    fn mounted(&self, target: &Path) -> Result<Option<Mounted>, MountError> {
        Ok(self.st().mounts.get(target).cloned())
    }
    fn signature(&self, device: &Path) -> Result<Option<String>, MountError> {
        Ok(self.st().signatures.get(device).cloned())
    }
    fn format(&self, device: &Path, fs: FsType) -> Result<(), MountError> {
        let mut st = self.st();
        st.formats += 1;
        st.signatures.insert(device.to_owned(), fs.as_str().to_owned());
        Ok(())
    }
    fn mount(&self, device: &Path, target: &Path, fs: FsType, options: &[String]) -> Result<(), MountError> {
        let mounted = Mounted {
            source: device.display().to_string(),
            fstype: fs.as_str().to_owned(),
            read_only: options.iter().any(|o| o == "ro"),
        };
        self.st().mounts.insert(target.to_owned(), mounted);
        Ok(())
    }
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let mut st = self.st();
        let fstype = st.mounts.get(source).map_or("devtmpfs".to_owned(), |m| m.fstype.clone());
        st.mounts.insert(target.to_owned(), Mounted { source: source.display().to_string(), fstype, read_only });
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        self.st().mounts.remove(target);
        Ok(())
    }
    fn grow(&self, _device: &Path, _mount_path: &Path, _fs: FsType) -> Result<(), MountError> {
        self.st().grows += 1;
        Ok(())
    }
    fn stats(&self, _path: &Path) -> Result<FsStats, MountError> {
        Ok(FsStats {
            total_bytes: 1 << 30,
            available_bytes: 1 << 29,
            used_bytes: 1 << 29,
            total_inodes: 100,
            free_inodes: 90,
            used_inodes: 10,
        })
    }
    fn device_size(&self, device: &Path) -> Result<u64, MountError> {
        Ok(self.st().sizes.get(device).copied().unwrap_or(0))
    }
    fn make_dir(&self, path: &Path) -> Result<(), MountError> {
        self.st().paths.insert(path.to_owned());
        Ok(())
    }
    fn make_file(&self, path: &Path) -> Result<(), MountError> {
        self.st().paths.insert(path.to_owned());
        Ok(())
    }
    fn remove_target(&self, path: &Path) -> Result<(), MountError> {
        self.st().paths.remove(path);
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        self.st().paths.contains(path)
    }
}
