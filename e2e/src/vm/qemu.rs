//! Boots the guest under qemu's software emulation, streams its console, and ends the run with
//! a clear failure when the guest hangs (a time limit) or dies before reporting an exit code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::kernel::Kernel;

pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    /// A host directory mounted read-write in the guest at the same path; holds guest.sh.
    pub share: PathBuf,
    pub memory_mib: u32,
    /// Disk images attached as virtio disks, copy-on-write (`snapshot=on`: the guest's writes go to
    /// a temporary file and the image never changes).
    pub disks: &'a [PathBuf],
    /// Disk images attached after those, written for real: they outlive the guest (the power-cut
    /// suite). What the guest handed to its virtual disk is in the host's page cache and survives a
    /// kill of qemu; what it had not yet handed over is lost.
    pub persistent: &'a [PathBuf],
    /// Kill qemu (SIGKILL, a power cut) this long after the guest creates `armed` in the share.
    pub cut: Option<Duration>,
    /// The host directory holding everything the guest runs (the workspace); kept visible
    /// even when it lies under /tmp, which the guest replaces with its own tmpfs.
    pub workspace: PathBuf,
    pub timeout: Duration,
    /// Show the kernel's own console lines (`[   1.234] ...`); the demo hides them.
    pub kernel_lines: bool,
}

/// Whether a console line is one of the kernel's (`[    33.872348] reboot: Power down`).
fn is_kernel_line(line: &str) -> bool {
    line.strip_prefix('[').and_then(|rest| rest.split_once(']')).is_some_and(|(stamp, _)| {
        !stamp.trim().is_empty() && stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

/// Prints what the guest appended to its output file since `shown` bytes; returns the new count.
fn show_new_output(file: &Path, shown: usize) -> usize {
    use std::io::Write;
    let Ok(bytes) = std::fs::read(file) else { return shown };
    if bytes.len() > shown {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&bytes[shown..]);
        let _ = out.flush();
    }
    bytes.len().max(shown)
}

/// Drops the firmware's banner and terminal-reset sequences from a console line.
fn strip_firmware_noise(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    if line.contains("SeaBIOS") || line.contains("Booting from ROM") {
        return String::new();
    }
    line.replace("\x1bc", "").replace("\x1b[?7l", "").replace("\x1b[2J", "").replace("\x1b[0m\x1b", "\x1b")
}

/// How a guest run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest's script ended with this exit code (read from its exit-code file). Also what a
    /// kill asked for by `Guest::cut` gives when the script had already ended: the workload ended
    /// first, and that is no power cut.
    Exited(i32),
    TimedOut,
    NoExitCode,
    /// Killed by the harness as asked (`Guest::cut`) while the guest's script was still running
    /// (it had written no exit code).
    Cut,
}

/// The exit code the guest wrote to `file` after its script ended; `None` when it wrote none.
/// A file that holds no number (a kill while the guest was writing it) is an error: the script
/// had ended, and how is unknown.
fn read_exit_code(file: &Path) -> Result<Option<i32>> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
            format!("the guest's exit-code file {} holds {s:?}, not an exit code", file.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the guest's exit-code file {}", file.display())),
    }
}

/// What a kill asked for by `Guest::cut` was: a cut only while the guest's script still ran;
/// once it had written its exit code, the script's own end (whatever its code says).
fn after_cut(exit_file: &Path) -> Result<Outcome> {
    Ok(read_exit_code(exit_file)?.map_or(Outcome::Cut, Outcome::Exited))
}

impl Guest<'_> {
    /// Runs `script` (a shell script body) in the guest as root with real device-mapper.
    pub fn run(&self, script: &str) -> Result<Outcome> {
        std::fs::create_dir_all(&self.share)?;
        let exit_file = self.share.join("exit-code");
        let _ = std::fs::remove_file(&exit_file);
        let share = self.share.canonicalize()?;
        let body = format!(
            "#!/bin/sh\n\
             export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             export HOME=/tmp DM_DISABLE_UDEV=1 LANG=C.UTF-8 RUST_BACKTRACE=1\n\
             export THINPOOL_E2E_IN_VM=1 THINPOOL_E2E_KROOT={kroot} THINPOOL_E2E_OUT={share}\n\
             ln -sf /proc/self/fd /dev/fd 2>/dev/null\n\
             modprobe -d {kroot} -a dm-thin-pool dm-snapshot loop ext4 xfs ||\n\
             for m in dm-thin-pool dm-snapshot loop ext4 xfs; do\n\
               modprobe -d {kroot} $m || echo \"guest: modprobe $m failed\"\n\
             done\n\
             (\n{script}\n) > {share}/output.txt 2>&1\n\
             echo $? > {share}/exit-code\n",
            kroot = self.kernel.root.display(),
            share = share.display(),
        );
        std::fs::write(share.join("guest.sh"), body)?;
        let virtfs_root = "local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap";
        let virtfs_out =
            format!("local,path={},mount_tag=out,security_model=passthrough,multidevs=remap", share.display());
        let mut qemu = Command::new("qemu-system-x86_64");
        for disk in self.disks {
            qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio,snapshot=on", disk.display()));
        }
        for disk in self.persistent {
            // `unsafe`: the guest's flushes are not passed on as host syncs. A kill of qemu keeps
            // what qemu wrote either way (the host's page cache survives it), so the cut is the
            // same and only the host's disk syncs go.
            qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()));
        }
        // `tsc=reliable clocksource=tsc`: under TCG the guest kernel finds the vCPUs' TSCs
        // "unsynchronized" and falls back to the emulated HPET, which makes every clock read a
        // syscall and a device exit (about 4 µs). The TSC qemu emulates follows the host's, which
        // is synchronized; read through the vDSO it made a Go binary's start-up twice as fast
        // here (`kube-apiserver --version` 1.1 s instead of 2.1 s).
        let mut child = qemu
            .args(["-machine", "q35", "-cpu", "max", "-accel", "tcg,thread=multi"])
            .args(["-smp", "2", "-m", &self.memory_mib.to_string()])
            .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
            .arg("-kernel")
            .arg(self.kernel.boot_image())
            .arg("-initrd")
            .arg(self.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 loglevel=3 tsc=reliable clocksource=tsc tpcsi.out={} tpcsi.ws={}",
                share.display(),
                self.workspace.display()
            ))
            .args(["-virtfs", virtfs_root, "-virtfs", &virtfs_out])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let kernel_lines = self.kernel_lines;
        let pump = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        let l = strip_firmware_noise(&l);
                        if !l.is_empty() && (kernel_lines || !is_kernel_line(&l)) {
                            println!("{l}");
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        // The command's output comes through a file on the run share, not the serial console
        // (which carries kernel messages and can drop lines).
        let output_file = share.join("output.txt");
        let _ = std::fs::remove_file(&output_file);
        let mut shown = 0usize;
        let start = Instant::now();
        let armed_file = share.join("armed");
        let _ = std::fs::remove_file(&armed_file);
        let mut armed: Option<Instant> = None;
        let ended = loop {
            shown = show_new_output(&output_file, shown);
            if child.try_wait()?.is_some() {
                show_new_output(&output_file, shown);
                break None;
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break Some(Ok(Outcome::TimedOut));
            }
            if let Some(delay) = self.cut {
                if armed.is_none() && armed_file.exists() {
                    armed = Some(Instant::now());
                }
                if armed.is_some_and(|t| t.elapsed() >= delay) {
                    let _ = child.kill();
                    let _ = child.wait();
                    show_new_output(&output_file, shown);
                    break Some(after_cut(&exit_file));
                }
            }
            std::thread::sleep(Duration::from_millis(if armed.is_some() { 10 } else { 100 }));
        };
        let _ = pump.join();
        if let Some(outcome) = ended {
            return outcome;
        }
        Ok(read_exit_code(&exit_file)?.map_or(Outcome::NoExitCode, Outcome::Exited))
    }
}

impl Outcome {
    /// Turns the outcome into the harness's verdict.
    pub fn check(self, what: &str, timeout: Duration) -> Result<()> {
        match self {
            Outcome::Exited(0) => Ok(()),
            Outcome::Exited(code) => bail!("{what} failed in the VM (exit code {code})"),
            Outcome::TimedOut => bail!("{what}: the VM did not finish within {}s and was killed", timeout.as_secs()),
            Outcome::Cut => bail!("{what}: the VM was cut off"),
            Outcome::NoExitCode => bail!(
                "{what}: the VM stopped without reporting an exit code (guest crash or panic; see the console above)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{after_cut, is_kernel_line, read_exit_code, Outcome};

    #[test]
    fn a_kill_is_a_cut_only_before_the_guest_wrote_its_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exit-code");
        assert_eq!(after_cut(&file).unwrap(), Outcome::Cut);
        std::fs::write(&file, "0\n").unwrap();
        assert_eq!(after_cut(&file).unwrap(), Outcome::Exited(0));
        std::fs::write(&file, "1\n").unwrap();
        assert_eq!(after_cut(&file).unwrap(), Outcome::Exited(1));
        // Killed while the guest was writing it: the script had ended, its code is lost.
        std::fs::write(&file, "").unwrap();
        assert!(after_cut(&file).is_err());
        assert!(read_exit_code(&file).is_err());
        std::fs::remove_file(&file).unwrap();
        assert_eq!(read_exit_code(&file).unwrap(), None);
    }

    #[test]
    fn kernel_console_lines_are_told_apart() {
        assert!(is_kernel_line("[   33.872348] reboot: Power down"));
        assert!(is_kernel_line("[12345.000001] EXT4-fs (dm-1): mounted filesystem"));
        assert!(!is_kernel_line("$ cat /tmp/demo/base/hello.txt"));
        assert!(!is_kernel_line("[ok] something"));
        assert!(!is_kernel_line("== step"));
    }
}
