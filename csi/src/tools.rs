//! Every external program the driver runs, in one place: LVM (only to adopt or build a pool,
//! never per volume), `blkid` (signature checks), `thin_dump` (listing thin ids from a metadata
//! snapshot). A failure names the program and carries its stderr, so the message says what to fix.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {program}: {source} (is it installed? {hint})")]
    Missing {
        program: String,
        hint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed { program: String, args: String, status: String, stderr: String },
}

/// What a finished program printed.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Every program the driver runs, with the Debian package that provides it: the runtime
/// dependencies of `thinpool-csi node`. The container image (Dockerfile) installs exactly these
/// packages; a test checks both that every program run in the source is listed here and that the
/// Dockerfile installs every package.
pub const RUNTIME_PROGRAMS: &[(&str, &str)] = &[
    ("lvs", "lvm2"),
    ("pvs", "lvm2"),
    ("vgs", "lvm2"),
    ("lvchange", "lvm2"),
    ("pvcreate", "lvm2"),
    ("vgcreate", "lvm2"),
    ("lvcreate", "lvm2"),
    ("lvconvert", "lvm2"),
    ("lvextend", "lvm2"),
    ("blkid", "util-linux"),
    ("wipefs", "util-linux"),
    ("thin_dump", "thin-provisioning-tools"),
    ("mkfs.ext4", "e2fsprogs"),
    ("resize2fs", "e2fsprogs"),
    ("mkfs.xfs", "xfsprogs"),
    ("xfs_growfs", "xfsprogs"),
];

fn hint(program: &str) -> String {
    match RUNTIME_PROGRAMS.iter().find(|(p, _)| *p == program) {
        Some((_, package)) => format!("package {package}"),
        None => "not a program thinpool-csi is known to need".to_owned(),
    }
}

/// Runs `program args` and returns its output whatever its exit code.
pub fn run_any(program: &str, args: &[&str]) -> Result<Output, ToolError> {
    let out = Command::new(program).args(args).output().map_err(|source| ToolError::Missing {
        program: program.to_owned(),
        hint: hint(program),
        source,
    })?;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The first `n` lines of a program's stderr (the cause; usage text after it is noise).
fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    let mut out = lines.iter().take(n).copied().collect::<Vec<_>>().join("; ");
    if lines.len() > n {
        out.push_str(" ...");
    }
    out
}

/// Runs `program args` and fails unless it exits 0.
pub fn run(program: &str, args: &[&str]) -> Result<String, ToolError> {
    let out = run_any(program, args)?;
    if out.code != Some(0) {
        return Err(ToolError::Failed {
            program: program.to_owned(),
            args: args.join(" "),
            status: out.code.map_or("killed by a signal".to_owned(), |c| format!("exit code {c}")),
            stderr: first_lines(&out.stderr, 4),
        });
    }
    Ok(out.stdout)
}

/// Extra `--config` text for every LVM command (from `THINPOOL_CSI_LVM_CONFIG`), e.g. to turn off
/// udev synchronisation inside a container or a VM without udev.
fn lvm_config() -> Option<String> {
    std::env::var("THINPOOL_CSI_LVM_CONFIG").ok().filter(|s| !s.trim().is_empty())
}

/// Runs an LVM command (`lvs`, `pvcreate`, ...) with the configured `--config` text.
pub fn lvm(command: &str, args: &[&str]) -> Result<String, ToolError> {
    let config = lvm_config();
    let mut all: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(c) = config.as_deref() {
        all.extend(["--config", c]);
    }
    all.extend_from_slice(args);
    run(command, &all)
}

/// The filesystem or partition-table signature on `device`, if any (`blkid -p`).
pub fn signature(device: &str) -> Result<Option<String>, ToolError> {
    let out = run_any("blkid", &["-p", "-o", "export", device])?;
    match out.code {
        Some(0) => {
            let kind = out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("TYPE=").or_else(|| l.strip_prefix("PTTYPE=")))
                .unwrap_or("unknown");
            Ok(Some(kind.to_owned()))
        }
        // blkid exits 2 when it finds nothing.
        Some(2) => Ok(None),
        code => Err(ToolError::Failed {
            program: "blkid".into(),
            args: format!("-p -o export {device}"),
            status: format!("{code:?}"),
            stderr: first_lines(&out.stderr, 4),
        }),
    }
}

/// `thin_dump` of the held metadata snapshot of a pool's metadata device.
pub fn thin_dump_metadata_snap(meta_device: &str) -> Result<String, ToolError> {
    run("thin_dump", &["--metadata-snap", meta_device])
}

#[cfg(test)]
mod tests {
    use super::RUNTIME_PROGRAMS;

    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }

    /// Every `tools::run("x"`, `run_any("x"`, `lvm("x"` and multi-line `lvm(\n "x"` in the source names a listed program.
    #[test]
    fn every_program_run_is_a_listed_runtime_dependency() {
        let mut files = Vec::new();
        sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut seen = 0;
        for (path, text) in files {
            for call in ["run(", "run_any(", "lvm("] {
                for (i, _) in text.match_indices(call) {
                    let rest = text[i + call.len()..].trim_start();
                    let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else { continue };
                    let line_start = text[..i].rfind('\n').map_or(0, |n| n + 1);
                    if text[line_start..i].trim_start().starts_with("//") || name.contains(' ') {
                        continue;
                    }
                    seen += 1;
                    assert!(
                        RUNTIME_PROGRAMS.iter().any(|(p, _)| *p == name),
                        "{path} runs {name:?}, which RUNTIME_PROGRAMS does not list"
                    );
                }
            }
        }
        assert!(seen >= 12, "found only {seen} program calls: the scan is broken");
    }

    #[test]
    fn the_image_installs_every_runtime_package() {
        let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).unwrap();
        let runtime = dockerfile.split("AS runtime").nth(1).expect("a runtime stage");
        for (program, package) in RUNTIME_PROGRAMS {
            assert!(
                runtime.split_whitespace().any(|w| w == *package),
                "the Dockerfile's runtime stage does not install {package} (for {program})"
            );
        }
    }
}
