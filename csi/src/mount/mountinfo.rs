//! `/proc/self/mountinfo` parsed by pure code: which paths are mount points, and what is mounted
//! there. Fields (proc(5)): `id parent major:minor root mount-point options [optional...] - fstype
//! source super-options`; paths escape space, tab, newline and backslash as octal (`\040`).

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub major_minor: String,
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') as u32 * 64 + (bytes[i + 2] - b'0') as u32 * 8 + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line; `None` for a line that does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 2 {
        return None;
    }
    Some(MountEntry {
        major_minor: l[2].to_owned(),
        root: PathBuf::from(unescape(l[3])),
        mount_point: PathBuf::from(unescape(l[4])),
        options: l[5].split(',').map(str::to_owned).collect(),
        fstype: r[0].to_owned(),
        source: unescape(r[1]),
    })
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The last (topmost) mount at `path`, if `path` is a mount point.
pub fn find<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:32 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw,size=1024k
90 22 253:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/thinpool.csi.io/ab12/globalmount rw,relatime shared:50 - xfs /dev/dm-3 rw,nouuid
91 22 253:3 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv\\040one/mount ro,relatime shared:50 - xfs /dev/dm-3 rw
92 22 0:5 /dm-4 /var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv/pod rw shared:2 - devtmpfs udev rw
";

    #[test]
    fn parses_mounts_binds_and_escapes() {
        let e = parse(SAMPLE);
        assert_eq!(e.len(), 5);
        assert_eq!(e[2].fstype, "xfs");
        assert_eq!(e[2].source, "/dev/dm-3");
        let pv = find(&e, Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv one/mount")).unwrap();
        assert!(pv.read_only());
        assert_eq!(
            find(&e, Path::new("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv/pod"))
                .unwrap()
                .root,
            PathBuf::from("/dm-4")
        );
        assert!(find(&e, Path::new("/nope")).is_none());
    }

    #[test]
    fn ignores_malformed_lines() {
        assert!(parse_line("garbage").is_none());
        assert!(parse_line("1 2 3 - ext4").is_none());
        assert_eq!(unescape("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
