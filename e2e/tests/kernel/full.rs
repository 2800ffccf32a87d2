//! A pool that runs out of data space, on the real kernel: what the user is promised
//! (docs/troubleshooting.md, "The pool is full").

use std::future::Future;
use std::time::{Duration, Instant};

use thinpool_csi::csi::proto;
use tonic::Code;

use crate::csi::{
    block_cap, code, create, http_get, id, metric, publish_block, rt, save_scrape, unpublish_block, Plugin,
};
use crate::fixture::*;

/// Longer than any CSI call may take on a full pool: past it, the call counts as hung.
const CALL_LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, call: impl Future<Output = T>) -> Result<T> {
    let start = Instant::now();
    let out = tokio::time::timeout(CALL_LIMIT, call).await.map_err(|_| format!("{what} hung (over {CALL_LIMIT:?})"))?;
    println!("  {what}: answered in {:.2} s", start.elapsed().as_secs_f64());
    Ok(out)
}

/// The pool's mode as the plugin's metrics report it.
pub(crate) fn scraped_mode(port: u16) -> Result<String> {
    let (_, text) = http_get(port, "/metrics")?;
    ["rw", "ro", "out_of_data_space", "needs_check", "fail"]
        .into_iter()
        .find(|m| metric(&text, &format!("thinpool_pool_mode{{mode=\"{m}\"}}")) == Some(1.0))
        .map(str::to_owned)
        .ok_or_else(|| "no thinpool_pool_mode series is 1".into())
}

/// Writes `mib` MiB of zeros to `path` with direct I/O; the time taken and dd's complaint, if any.
pub(crate) fn write_zeros(path: &str, mib: u64) -> (Duration, Option<String>) {
    write_zeros_at(path, 0, mib)
}

/// As [`write_zeros`], from `seek_mib` MiB into the device.
pub(crate) fn write_zeros_at(path: &str, seek_mib: u64, mib: u64) -> (Duration, Option<String>) {
    let start = Instant::now();
    let out = sh(&format!(
        "dd if=/dev/zero of={path} bs=1M seek={seek_mib} count={mib} oflag=direct conv=fsync,notrunc status=none 2>&1"
    ));
    (start.elapsed(), out.err().map(|e| e.to_string()))
}

/// The pool fills up under a writer: the write fails at once (`error_if_no_space`) instead of
/// hanging, no CSI call hangs, CreateVolume answers RESOURCE_EXHAUSTED saying what to do, the
/// metrics and /readyz show it while /healthz stays up (a full pool is not a crash). Then the
/// pool is grown as an operator does (a larger `--loop-data-size`, the plugin's pod replaced): it
/// returns to rw by itself and the same published volume takes writes again.
pub fn full_pool_fails_fast_then_grows_back() -> Result {
    let mut p = Plugin::start_sized("full-data", "256Mi", &[])?;
    let (staging, target) = (p.staging("fill"), p.block_target("fill"));
    rt()?.block_on(async {
        let (mut identity, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create("fill", 1 << 30, block_cap(), None)).await?;
        ctl.create_volume(create("spare", 64 << 20, block_cap(), None)).await?;
        publish_block(&mut node, "fill", &staging, &target).await?;
        save_scrape(p.metrics_port, "healthy")?;
        let (took, complaint) = write_zeros(&target, 400);
        let complaint = complaint.ok_or("400 MiB fit into a 256 MiB pool")?;
        println!("  400 MiB into a 256 MiB pool failed after {:.1} s: {}", took.as_secs_f64(), complaint.trim());
        ensure(took < Duration::from_secs(120), format!("the failing write took {took:?}: it queued"))?;
        ensure(scraped_mode(p.metrics_port)? == "out_of_data_space", "metrics do not show out_of_data_space")?;
        save_scrape(p.metrics_port, "full-data")?;

        let refused = within("CreateVolume", ctl.create_volume(create("more", 16 << 20, block_cap(), None))).await?;
        let status = refused.err().ok_or("CreateVolume succeeded on a full pool")?;
        ensure(status.code() == Code::ResourceExhausted, format!("CreateVolume answered {status:?}"))?;
        ensure(status.message().contains("grow the pool"), format!("the refusal does not say what to do: {status:?}"))?;
        let capacity = within("GetCapacity", ctl.get_capacity(proto::GetCapacityRequest::default())).await??;
        ensure(capacity.into_inner().available_capacity == 0, "GetCapacity offers room on a full pool")?;
        let probe = within("Probe", identity.probe(proto::ProbeRequest {})).await?;
        ensure(code(probe) == Code::FailedPrecondition, "Probe is ready on a full pool")?;
        let stats = within(
            "NodeGetVolumeStats",
            node.node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
                volume_id: id("fill"),
                volume_path: target.clone(),
                staging_target_path: String::new(),
            }),
        )
        .await?;
        ensure(code(stats) == Code::Ok, "NodeGetVolumeStats on a full pool")?;
        let listed = within("ListVolumes", ctl.list_volumes(proto::ListVolumesRequest::default())).await??;
        ensure(listed.into_inner().entries.len() == 2, "ListVolumes on a full pool")?;
        let deleted = within(
            "DeleteVolume",
            ctl.delete_volume(proto::DeleteVolumeRequest { volume_id: id("spare"), ..Default::default() }),
        )
        .await?;
        ensure(code(deleted) == Code::Ok, "DeleteVolume on a full pool")?;
        ensure(http_get(p.metrics_port, "/healthz")?.0 == 200, "/healthz fails on a full pool (it is not a crash)")?;
        let (ready, why) = http_get(p.metrics_port, "/readyz")?;
        ensure(ready == 503, format!("/readyz answered {ready} on a full pool"))?;
        println!("  /readyz: {}", why.trim());
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    p.data_size = "1Gi".into();
    p.replace()?;
    let start = Instant::now();
    loop {
        // The metrics listener may come up a moment after the CSI socket.
        match scraped_mode(p.metrics_port) {
            Ok(mode) if mode == "rw" => break,
            seen => ensure(
                start.elapsed() < Duration::from_secs(60),
                format!("the grown pool did not return to rw (last seen: {seen:?}); plugin log:\n{}", p.log()),
            )?,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, text) = http_get(p.metrics_port, "/metrics")?;
    let total = metric(&text, "thinpool_pool_data_total_bytes").unwrap_or(0.0);
    ensure(total == GIB as f64, format!("data total after growing is {total} bytes"))?;
    let (took, complaint) = write_zeros(&target, 400);
    ensure(complaint.is_none(), format!("writing after the pool grew: {complaint:?}"))?;
    println!("  grown to 1 GiB: rw again, 400 MiB written in {:.1} s", took.as_secs_f64());
    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        ctl.create_volume(create("more", 16 << 20, block_cap(), None)).await?;
        unpublish_block(&mut node, "fill", &staging, &target).await?;
        for v in ["fill", "more"] {
            ctl.delete_volume(proto::DeleteVolumeRequest { volume_id: id(v), ..Default::default() }).await?;
        }
        Ok(())
    })
}
