//! Builds what the guest runs, on the host: the `thinpool-csi` binary and the suite's test or
//! bench executables (their paths from cargo's JSON messages).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cargo <args> --message-format=json` and returns the executables it built.
fn cargo_executables(args: &[&str]) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(exe) = msg.get("executable").and_then(|e| e.as_str()) {
            exes.push(PathBuf::from(exe));
        }
    }
    Ok(exes)
}

fn one(exes: Vec<PathBuf>, what: &str) -> Result<PathBuf> {
    exes.into_iter().next().with_context(|| format!("cargo built no {what} executable"))
}

pub fn csi_binary(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "-p", "thinpool-csi", "--bin", "thinpool-csi"];
    if release {
        args.push("--release");
    }
    one(cargo_executables(&args)?, "thinpool-csi")
}

pub fn kernel_suite() -> Result<PathBuf> {
    one(cargo_executables(&["test", "-p", "thinpool-e2e", "--test", "kernel", "--no-run"])?, "kernel suite")
}

pub fn bench() -> Result<PathBuf> {
    one(cargo_executables(&["bench", "-p", "thinpool-e2e", "--bench", "pool", "--no-run"])?, "bench")
}
