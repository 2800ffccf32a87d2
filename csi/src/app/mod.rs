//! The processes, each wired in one place: `node` (the node plugin) and `controller` (the
//! capacity controller). Everything else in the crate is a library these two put together;
//! shutdown (signals, draining) lives here too.

pub mod controller;
pub mod node;

/// What `--check-config` prints for a person: a heading, then one aligned row per setting.
fn summary(heading: &str, rows: &[(&str, String)]) -> String {
    let mut out = format!("{heading}\n");
    for (k, v) in rows {
        out.push_str(&format!("  {k:<17} {v}\n"));
    }
    out
}

/// Completes on the first SIGTERM or SIGINT. A process that is PID 1 in its container gets no
/// default action for SIGTERM, so every long-running command must wait on this.
pub async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
