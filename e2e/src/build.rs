//! Builds what the guest runs, on the host: the `thinpool-csi` binary and the suite's test or
//! bench executables (their paths from cargo's JSON messages).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cargo <args> --message-format=json` and returns the executable of target `name` of
/// `kind` (`bin`, `test`, `bench`) that it built.
fn cargo_executable(args: &[&str], name: &str, kind: &str) -> Result<PathBuf> {
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
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &msg["target"];
        let is_kind = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == kind));
        if target["name"] == name && is_kind {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built no {kind} executable named {name}")
}

pub fn csi_binary(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "-p", "thinpool-csi", "--bin", "thinpool-csi"];
    if release {
        args.push("--release");
    }
    cargo_executable(&args, "thinpool-csi", "bin")
}

pub fn kernel_suite() -> Result<PathBuf> {
    cargo_executable(&["test", "-p", "thinpool-e2e", "--test", "kernel", "--no-run"], "kernel", "test")
}

/// The benchmark executable: optimised (`cargo bench`), or built with the test profile (`cargo
/// test`), which shares the VM suite's compiled dependencies.
pub fn bench(optimised: bool) -> Result<PathBuf> {
    let command = if optimised { "bench" } else { "test" };
    cargo_executable(&[command, "-p", "thinpool-e2e", "--bench", "pool", "--no-run"], "pool", "bench")
}

/// Builds csi-sanity (the kubernetes-csi conformance suite) at the version `e2e/sanity/go.mod`
/// pins, into `target/tools/`; Go's module and build caches stay in the user's cache.
pub fn csi_sanity() -> Result<PathBuf> {
    let out = workspace().join("target/tools/csi-sanity");
    let status = Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(&out)
        .arg("github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity")
        .current_dir(workspace().join("e2e/sanity"))
        .env("CGO_ENABLED", "0")
        .status()
        .context("running go (Go 1.24 or newer builds csi-sanity from its module; install Go)")?;
    if !status.success() {
        bail!("go build of csi-sanity failed");
    }
    Ok(out)
}
