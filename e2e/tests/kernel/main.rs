//! The VM suite: thinpool-csi on real device-mapper, inside the guest that `thinpool-e2e vm`
//! boots. Outside it (no `THINPOOL_E2E_IN_VM`), every test is reported skipped.
//!
//! Usage inside the guest: `kernel [FILTER]`; the crash tests re-run this binary as a child.

mod concurrent;
mod crash;
mod csi;
mod fixture;
mod full;
mod group;
mod grow;
mod isolation;
mod lifecycle;
mod lvm;
mod powercut;
mod sanity;

use std::process::ExitCode;
use std::time::Instant;

use fixture::Result;

type Test = (&'static str, fn() -> Result);

const TESTS: &[Test] = &[
    ("loop_seed_demonstration", lifecycle::loop_seed_demonstration),
    ("loop_delete_returns_data_blocks", lifecycle::loop_delete_returns_data_blocks),
    ("loop_expand_grows_an_active_device", lifecycle::loop_expand_grows_an_active_device),
    ("loop_busy_delete_is_deferred", lifecycle::loop_busy_delete_is_deferred),
    ("loop_reopen_after_pool_deactivation", lifecycle::loop_reopen_after_pool_deactivation),
    ("loop_bad_input_changes_nothing", lifecycle::loop_bad_input_changes_nothing),
    ("loop_not_a_thin_pool", lifecycle::loop_not_a_thin_pool),
    ("loop_churn_200", lifecycle::loop_churn_200),
    ("loop_crash_at_every_point", crash::loop_crash_at_every_point),
    ("loop_group_crash_at_every_point", crash::loop_group_crash_at_every_point),
    ("group_snapshot_holds_one_instant", group::group_snapshot_holds_one_instant),
    ("group_snapshot_hold_times", group::group_snapshot_hold_times),
    ("loop_data_isolation", isolation::loop_data_isolation),
    ("loop_unzeroed_pool_leaks_control", isolation::loop_unzeroed_pool_leaks_control),
    ("lvm_setup_refuses_signatures", lvm::lvm_setup_refuses_signatures),
    ("lvm_seed_demonstration", lvm::lvm_seed_demonstration),
    ("lvm_adoption_refusals", lvm::lvm_adoption_refusals),
    ("lvm_device_pool", lvm::lvm_device_pool),
    ("csi_identity_and_probe", csi::csi_identity_and_probe),
    ("csi_filesystem_lifecycle_ext4_and_xfs", csi::csi_filesystem_lifecycle_ext4_and_xfs),
    ("csi_block_volume", csi::csi_block_volume),
    ("csi_restart_between_stage_and_publish", csi::csi_restart_between_stage_and_publish),
    ("csi_bad_input_changes_nothing", csi::csi_bad_input_changes_nothing),
    ("csi_pagination", csi::csi_pagination),
    ("csi_metrics_scrape", csi::csi_metrics_scrape),
    ("csi_kubelet_registration", csi::csi_kubelet_registration),
    ("full_pool_fails_fast_then_grows_back", full::full_pool_fails_fast_then_grows_back),
    ("metadata_full_then_grown_back", full::metadata_full_then_grown_back),
    ("needs_check_pool_is_reported", full::needs_check_pool_is_reported),
    ("lvm_pool_grows_itself_under_a_writer", grow::lvm_pool_grows_itself_under_a_writer),
    ("fifty_concurrent_clients", concurrent::fifty_concurrent_clients),
    ("csi_sanity_mount", sanity::csi_sanity_mount),
    ("csi_sanity_block", sanity::csi_sanity_block),
];

fn main() -> ExitCode {
    if std::env::var_os(crash::CHILD_ENV).is_some() {
        return crash::child_main();
    }
    if std::env::var_os(powercut::ENV).is_some() {
        return powercut::cycle_main();
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<&Test> =
        TESTS.iter().filter(|(n, _)| filter.as_ref().is_none_or(|f| n.contains(f.as_str()))).collect();
    if selected.is_empty() {
        // A filter that matches nothing would otherwise report "0 passed, 0 failed" as a success.
        let names: Vec<&str> = TESTS.iter().map(|(n, _)| *n).collect();
        println!("kernel: no test name contains {:?}; the tests are: {}", filter.unwrap_or_default(), names.join(", "));
        return ExitCode::FAILURE;
    }
    if std::env::var_os("THINPOOL_E2E_IN_VM").is_none() {
        println!(
            "kernel suite: {} tests skipped: they need real device-mapper; run `cargo run -p thinpool-e2e -- vm`",
            selected.len()
        );
        return ExitCode::SUCCESS;
    }
    // Scrapes of an earlier run must not stand in for this one's (e2e/alerts reads them).
    if let Some(out) = std::env::var_os("THINPOOL_E2E_OUT") {
        let _ = std::fs::remove_dir_all(std::path::Path::new(&out).join("metrics"));
    }
    let (mut passed, mut failed) = (0, 0);
    let mut failures = Vec::new();
    for (name, test) in selected {
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(test);
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => {
                passed += 1;
                println!("test {name} ... ok ({secs:.1}s)");
            }
            Ok(Err(e)) => {
                failed += 1;
                println!("test {name} ... FAILED ({secs:.1}s): {}", e.to_string().escape_debug());
                failures.push(*name);
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED ({secs:.1}s): panicked");
                failures.push(*name);
            }
        }
    }
    if !failures.is_empty() {
        println!("failures: {}", failures.join(", "));
    }
    println!("kernel: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
