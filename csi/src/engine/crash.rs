//! Crash points: places inside a pool transaction where the VM suite kills the process to prove
//! recovery. Compiled in only with the `crash-points` feature (test builds); elsewhere a no-op.
//! With the feature, `THINPOOL_CSI_CRASH_AT=<op>:<point>` aborts the process at that point.

/// The points of each operation, in order.
pub const POINTS: [&str; 3] = ["after-intent", "after-message", "after-commit-point"];

#[cfg(feature = "crash-points")]
pub fn point(op: &str, at: &str) {
    if let Ok(want) = std::env::var("THINPOOL_CSI_CRASH_AT") {
        if want == format!("{op}:{at}") {
            eprintln!("crash point {want}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_op: &str, _at: &str) {}
