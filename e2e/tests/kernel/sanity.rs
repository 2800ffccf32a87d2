//! The kubernetes-csi conformance suite, csi-sanity (csi-test, at the version pinned in
//! `e2e/sanity/go.mod`), against the real `thinpool-csi node` on a loop pool: one pass with mount
//! access (ext4), one with block access. Every spec that applies to the capabilities we claim must
//! pass; the skipped ones are counted by their reason (capabilities we do not claim).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::csi::Plugin;
use crate::fixture::*;

const VOLUME_BYTES: u64 = 128 << 20;
const EXPAND_BYTES: u64 = 256 << 20;

pub fn csi_sanity_mount() -> Result {
    run("sanity-mount", "mount", "csi.storage.k8s.io/fstype: ext4\n")
}

pub fn csi_sanity_block() -> Result {
    run("sanity-block", "block", "{}\n")
}

/// One spec's outcome, from ginkgo's JSON report.
struct Spec {
    name: String,
    state: String,
    message: String,
}

fn specs(report: &Path) -> Result<Vec<Spec>> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report)?)?;
    let mut out = Vec::new();
    for suite in json.as_array().ok_or("ginkgo report is not a list")? {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue; // suite-level setup and teardown nodes
            }
            let mut name: Vec<String> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            name.push(spec["LeafNodeText"].as_str().unwrap_or("").to_owned());
            out.push(Spec {
                name: name.join(" / "),
                state: spec["State"].as_str().unwrap_or("").to_owned(),
                message: spec["Failure"]["Message"].as_str().unwrap_or("").lines().next().unwrap_or("").to_owned(),
            });
        }
    }
    Ok(out)
}

fn run(test: &str, access: &str, volume_parameters: &str) -> Result {
    let sanity = std::env::var("THINPOOL_CSI_SANITY").map_err(|_| "THINPOOL_CSI_SANITY is not set")?;
    let plugin = Plugin::start(test)?;
    let work = Path::new("/tmp/e2e").join(format!("{test}-run"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let params = work.join("volume-parameters.yaml");
    std::fs::write(&params, volume_parameters)?;
    // Snapshot parameters a VolumeSnapshotClass may carry; the driver takes none and ignores them.
    let snap_params = work.join("snapshot-parameters.yaml");
    std::fs::write(&snap_params, "csi.storage.k8s.io/snapshotter-secret-name: unused\n")?;
    let report = work.join("report.json");
    // Staging and target paths must lie under the kubelet directory, as the kubelet's do.
    // csi-sanity makes the two directories itself, but not their parent.
    let base = plugin.kubelet.join("sanity");
    std::fs::create_dir_all(&base)?;
    let out = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", plugin.socket.display()))
        .arg(format!("--csi.mountdir={}", base.join("mount").display()))
        .arg(format!("--csi.stagingdir={}", base.join("staging").display()))
        .arg(format!("--csi.testvolumeaccesstype={access}"))
        .arg(format!("--csi.testvolumesize={VOLUME_BYTES}"))
        .arg(format!("--csi.testvolumeexpandsize={EXPAND_BYTES}"))
        .arg(format!("--csi.testvolumeparameters={}", params.display()))
        .arg(format!("--csi.testsnapshotparameters={}", snap_params.display()))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg("--ginkgo.no-color")
        .output()?;
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    std::fs::write(work.join("csi-sanity.log"), &log)?;
    let specs = specs(&report).map_err(|e| format!("reading csi-sanity's report: {e}\n{log}"))?;
    let count = |state: &str| specs.iter().filter(|s| s.state == state).count();
    let (passed, skipped, pending) = (count("passed"), count("skipped"), count("pending"));
    // Pending specs are the ones csi-test itself disables (XIt); everything else must pass or be
    // skipped for a capability we do not claim.
    let failed = specs.len() - passed - skipped - pending;
    println!(
        "  csi-sanity ({access}): {} specs, ran {}, passed {passed}, failed {failed}, skipped {skipped}, pending {pending} (disabled upstream)",
        specs.len(),
        passed + failed
    );
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for s in specs.iter().filter(|s| s.state == "skipped") {
        *reasons.entry(s.message.as_str()).or_default() += 1;
    }
    for (why, n) in &reasons {
        println!("    skipped {n}: {why}");
    }
    let failures: Vec<String> = specs
        .iter()
        .filter(|s| !["passed", "skipped", "pending"].contains(&s.state.as_str()))
        .map(|s| format!("{} [{}]: {}", s.name, s.state, s.message))
        .collect();
    for f in &failures {
        println!("    FAILED {f}");
    }
    ensure(
        failures.is_empty() && out.status.success(),
        format!("csi-sanity ({access}): {failed} failed\n{}", plugin.log()),
    )?;
    ensure(passed > 0, "csi-sanity ran no spec")?;
    same_as_expected(access, &specs)
}

/// The outcome must be the committed one, spec by spec (`sanity-expected/ACCESS.txt`): a spec that
/// passed before and is now skipped (a capability silently dropped) fails the test, as does a
/// spec more or less. The outcome is written to the run's share for review
/// (`target/vm/runs/kernel-suite/sanity-ACCESS.txt`).
fn same_as_expected(access: &str, specs: &[Spec]) -> Result {
    let expected = match access {
        "mount" => include_str!("sanity-expected/mount.txt"),
        _ => include_str!("sanity-expected/block.txt"),
    };
    let got = outcome_lines(specs);
    if let Some(out) = std::env::var_os("THINPOOL_E2E_OUT") {
        std::fs::write(Path::new(&out).join(format!("sanity-{access}.txt")), got.join("\n") + "\n")?;
    }
    let want: Vec<&str> = expected.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let missing: Vec<&&str> = want.iter().filter(|w| !got.iter().any(|g| g == **w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    for m in &missing {
        println!("    EXPECTED {m}");
    }
    for e in &extra {
        println!("    GOT      {e}");
    }
    ensure(
        missing.is_empty() && extra.is_empty(),
        format!(
            "csi-sanity ({access}): the outcome differs from e2e/tests/kernel/sanity-expected/{access}.txt in {} specs \
             (lines above); if the change is meant, copy target/vm/runs/kernel-suite/sanity-{access}.txt there",
            missing.len() + extra.len()
        ),
    )
}

/// One line per spec, `STATE NAME`, sorted: what `sanity-expected/*.txt` holds.
fn outcome_lines(specs: &[Spec]) -> Vec<String> {
    let mut lines: Vec<String> = specs.iter().map(|s| format!("{} {}", s.state, s.name)).collect();
    lines.sort();
    lines
}
