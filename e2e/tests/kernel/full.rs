//! A pool that runs out of data space, on the real kernel: what the user is promised
//! (docs/troubleshooting.md, "The pool is full").

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use thinpool_csi::csi::proto;
use tonic::Code;

use crate::csi::{
    block_cap, code, create, create_published_block, http_get, id, metric, publish_block, rt, save_scrape,
    unpublish_block, Plugin,
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

/// Waits up to 60 s for the plugin's metrics to show the pool in `mode` (the metrics listener may
/// come up a moment after the CSI socket); else fails saying `what`, with the plugin's log.
pub(crate) fn wait_for_mode(p: &Plugin, mode: &str, what: &str) -> Result {
    let start = Instant::now();
    loop {
        match scraped_mode(p.metrics_port) {
            Ok(m) if m == mode => return Ok(()),
            seen => ensure(
                start.elapsed() < Duration::from_secs(60),
                format!("{what} (last seen: {seen:?}); plugin log:\n{}", p.log()),
            )?,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A write that finds the pool full must fail within this: well under the kernel's
/// `no_space_timeout` (60 s), for which a pool with `queue_if_no_space` holds it.
pub(crate) const FAIL_FAST: Duration = Duration::from_secs(10);

/// The plugin's pool is loaded with `error_if_no_space` (its thin-pool table, from the kernel).
pub(crate) fn ensure_error_if_no_space(p: &Plugin, when: &str) -> Result {
    let table = p.pool_table()?;
    ensure(
        table.features.iter().any(|f| f == "error_if_no_space"),
        format!("{when}, the pool's table has no error_if_no_space (a full pool queues writes for 60 s): {table}"),
    )
}

/// Writes 1 MiB at `seek_mib` of `path`, a block no write reached yet, on a pool that is full: the
/// write must fail, within [`FAIL_FAST`]. Returns how long it took to fail.
pub(crate) fn ensure_write_fails_fast(path: &str, seek_mib: u64) -> Result<Duration> {
    let (took, complaint) = write_zeros_at(path, seek_mib, 1);
    let complaint = complaint.ok_or_else(|| format!("a new block at {seek_mib} MiB was written on a full pool"))?;
    ensure(
        took < FAIL_FAST,
        format!(
            "the write on a full pool failed only after {took:?} (limit {FAIL_FAST:?}): it queued; {}",
            complaint.trim()
        ),
    )?;
    Ok(took)
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

/// The pool fills up under a writer: its table has `error_if_no_space`, and a write that finds it
/// full fails at once (within [`FAIL_FAST`], timed) instead of queueing for 60 s; no CSI call
/// hangs, CreateVolume answers RESOURCE_EXHAUSTED saying what to do, the metrics and /readyz show
/// it while /healthz stays up (a full pool is not a crash). Then the pool is grown as an operator
/// does (a larger `--loop-data-size`, the plugin's pod replaced): it returns to rw by itself, still
/// with `error_if_no_space`, and the same published volume takes writes again.
pub fn full_pool_fails_fast_then_grows_back() -> Result {
    let mut p = Plugin::start_sized("full-data", "256Mi", &[])?;
    ensure_error_if_no_space(&p, "at start")?;
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
        // The pool is full now: a write to a block not yet provisioned fails at once.
        let failed_in = ensure_write_fails_fast(&target, 800)?;
        println!("  a new block on the full pool: the write failed in {:.2} s", failed_in.as_secs_f64());
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
    wait_for_mode(&p, "rw", "the grown pool did not return to rw")?;
    let (_, text) = http_get(p.metrics_port, "/metrics")?;
    let total = metric(&text, "thinpool_pool_data_total_bytes").unwrap_or(0.0);
    ensure(total == GIB as f64, format!("data total after growing is {total} bytes"))?;
    ensure_error_if_no_space(&p, "after the pool grew")?;
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

/// Writes 64 KiB at every 16th MiB from `first_mib` to 512 MiB into `path`, then fsyncs: one block
/// under each of many mapping-tree leaves, so that after a snapshot each write copies a leaf.
fn scatter(path: &str, first_mib: u64, fill: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let block = vec![fill; 64 << 10];
    for at in (first_mib..512).step_by(16) {
        f.write_all_at(&block, at << 20)?;
    }
    f.sync_all()
}

/// Metadata runs out (a 2 MiB metadata device, snapshots of a written volume each followed by
/// writes that copy mapping-tree leaves): first CreateSnapshot is refused at the metadata fill
/// limit (80 %) saying so; with the limit lifted the pool runs out, turns read-only and writes fail,
/// while every CSI call still answers. The way out, as docs/troubleshooting.md gives it for a loop
/// pool: a larger `--loop-metadata-size` and the plugin's pod replaced; the pool is `rw` again by
/// itself, with every volume and snapshot, and takes writes and snapshots.
pub fn metadata_full_then_grown_back() -> Result {
    // Every snapshot counts the base's 1 GiB against the budget: a ratio that never stops them.
    let flags = ["--loop-metadata-size", "2Mi", "--overprovision-ratio", "200"].map(str::to_owned);
    let mut p = Plugin::start_sized("full-meta", "1Gi", &flags)?;
    let (staging, target) = create_published_block(&p, "base", 1 << 30)?;
    let (_, complaint) = write_zeros(&target, 512);
    ensure(complaint.is_none(), format!("writing the base volume: {complaint:?}"))?;
    let meta_pct = |port: u16| -> Result<f64> {
        let (_, text) = http_get(port, "/metrics")?;
        let used = metric(&text, "thinpool_pool_metadata_used_bytes").ok_or("no metadata metric")?;
        Ok(100.0 * used / metric(&text, "thinpool_pool_metadata_total_bytes").ok_or("no metadata metric")?)
    };
    let mut refused = false;
    let mut snapshots = 0;
    let mut full = None;
    for cycle in 0..80 {
        let answer = rt()?.block_on(async {
            let (_, mut ctl, _) = p.clients().await?;
            let req = proto::CreateSnapshotRequest {
                source_volume_id: id("base"),
                name: format!("s{cycle}"),
                ..Default::default()
            };
            within("CreateSnapshot", ctl.create_snapshot(req)).await
        })?;
        match answer {
            Ok(_) => snapshots += 1,
            Err(s) if s.code() == Code::ResourceExhausted && !refused => {
                ensure(s.message().contains("metadata"), format!("the refusal does not name metadata: {s:?}"))?;
                println!("  at {:.0}% metadata: CreateSnapshot refused: {}", meta_pct(p.metrics_port)?, s.message());
                save_scrape(p.metrics_port, "metadata-near-full")?;
                refused = true;
                // Lift the limit, as if the pool's own writes went on filling it.
                p.extra.extend(["--metadata-fill-limit".into(), "100".into()]);
                p.replace()?;
                continue;
            }
            Err(s) => println!("  cycle {cycle}: CreateSnapshot answered {:?}: {}", s.code(), s.message()),
        }
        if let Err(e) = scatter(&target, 0, cycle as u8) {
            full = Some(e.to_string());
            break;
        }
        let mode = scraped_mode(p.metrics_port)?;
        if mode != "rw" {
            full = Some(format!("pool mode {mode}"));
            break;
        }
    }
    ensure(refused, "CreateSnapshot was never refused at the metadata fill limit")?;
    let how = full.ok_or("80 snapshot-and-write cycles did not fill 2 MiB of metadata")?;
    let mode = scraped_mode(p.metrics_port)?;
    println!(
        "  metadata full after {snapshots} snapshots ({how}); pool mode {mode}, {:.0}% metadata",
        meta_pct(p.metrics_port)?
    );
    ensure(mode == "ro" || mode == "needs_check", format!("a pool out of metadata is in mode {mode}"))?;
    rt()?.block_on(async {
        let (mut identity, mut ctl, _) = p.clients().await?;
        let refused = within("CreateVolume", ctl.create_volume(create("more", 16 << 20, block_cap(), None))).await?;
        ensure(code(refused) == Code::ResourceExhausted, "CreateVolume on a pool out of metadata")?;
        ensure(
            code(within("Probe", identity.probe(proto::ProbeRequest {})).await?) == Code::FailedPrecondition,
            "Probe is ready",
        )?;
        ensure(
            code(within("ListSnapshots", ctl.list_snapshots(proto::ListSnapshotsRequest::default())).await?)
                == Code::Ok,
            "ListSnapshots",
        )?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // Blocks every snapshot still shares need new mappings: those writes fail now.
    ensure(scatter(&target, 8, 0x55).is_err(), "writes needing new mappings succeeded with no metadata left")?;
    ensure(http_get(p.metrics_port, "/healthz")?.0 == 200, "/healthz fails on a pool out of metadata")?;
    save_scrape(p.metrics_port, "metadata-full")?;

    // The way out for a loop pool: more metadata, the plugin's pod replaced.
    for f in p.extra.iter_mut().filter(|f| f.as_str() == "2Mi") {
        *f = "8Mi".into();
    }
    p.replace()?;
    wait_for_mode(&p, "rw", "the pool did not return to rw with more metadata")?;
    println!("  with 8 MiB of metadata: rw again at {:.0}% metadata", meta_pct(p.metrics_port)?);
    scatter(&target, 8, 0xee)?;
    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        let req =
            proto::CreateSnapshotRequest { source_volume_id: id("base"), name: "after".into(), ..Default::default() };
        ctl.create_snapshot(req).await?;
        unpublish_block(&mut node, "base", &staging, &target).await
    })?;
    p.stop()?;
    let (engine, _) = thinpool_csi::open::open_engine(&p.config()?)?;
    let check = engine.check()?;
    ensure(check.is_clean(), format!("`pool check` after the metadata ran out and grew: {check:?}"))?;
    let kept = engine.list(thinpool_csi::store::Kind::Snapshot)?.len();
    ensure(kept == snapshots + 1, format!("{kept} snapshots recorded, {} acknowledged", snapshots + 1))?;
    println!("  pool check clean; {kept} snapshots, each acknowledged one kept");
    Ok(())
}

/// A pool whose metadata carries the kernel's `needs_check` flag, as dm-thin leaves it after a
/// failed metadata operation and as only `thin_check`/`thin_repair` clear it: the kernel keeps the
/// pool read-only and says `needs_check`. The plugin still starts and answers, reports the mode,
/// refuses new volumes naming the check to run, and is not ready; the scrape is the alerts test's
/// `needs-check` (ThinPoolNeedsCheck). docs/troubleshooting.md gives the way out.
pub fn needs_check_pool_is_reported() -> Result {
    let mut p = Plugin::start_sized("needs-check", "1Gi", &[])?;
    rt()?.block_on(async {
        let (_, mut ctl, _) = p.clients().await?;
        within("CreateVolume", ctl.create_volume(create("kept", 16 << 20, block_cap(), None))).await??;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    wait_for_mode(&p, "rw", "the new pool is not rw")?;
    // The flag set offline, through the metadata tools: dump, flags="1" (THIN_METADATA_NEEDS_CHECK),
    // restore onto the loop device that holds the metadata, the pool's table gone.
    p.stop()?;
    teardown_pool("e2e-needs-check");
    let thinpool_csi::config::PoolSpec::Loop(spec) = p.config()?.pool else {
        return Err("the fixture's pool is not a loop pool".into());
    };
    // The tools open with O_DIRECT, which the guest's tmpfs refuses: through a loop device of our
    // own (the pool's were detached with it).
    let file = spec.dir.join("metadata.img");
    let meta = sh(&format!("losetup -f --show {}", file.display()))?.trim().to_owned();
    let xml = sh(&format!("thin_dump {meta}"))?;
    let flagged = match xml.find("flags=\"") {
        Some(at) => {
            let end = xml[at + 7..].find('"').ok_or("thin_dump's flags attribute does not end")? + at + 7;
            format!("{}flags=\"1\"{}", &xml[..at], &xml[end + 1..])
        }
        None => xml.replacen("<superblock ", "<superblock flags=\"1\" ", 1),
    };
    ensure(flagged != xml, "thin_dump printed no superblock to flag")?;
    let dump = Path::new("/tmp/e2e/needs-check/flagged.xml");
    std::fs::write(dump, &flagged)?;
    sh(&format!("thin_restore -i {} -o {meta}", dump.display()))?;
    ensure(sh(&format!("thin_dump {meta}"))?.contains("flags=\"1\""), "thin_restore did not keep the flag")?;
    sh(&format!("losetup -d {meta}"))?;

    p.replace()?;
    wait_for_mode(&p, "needs_check", "the flagged pool is not reported as needs_check")?;
    let table = sh("dmsetup status e2e-needs-check")?;
    ensure(table.contains("needs_check"), format!("the kernel's status does not say needs_check: {table}"))?;
    println!("  kernel: {}", table.trim());
    rt()?.block_on(async {
        let (mut identity, mut ctl, _) = p.clients().await?;
        let refused = within("CreateVolume", ctl.create_volume(create("more", 16 << 20, block_cap(), None))).await?;
        let status = refused.err().ok_or("CreateVolume succeeded on a pool that needs a check")?;
        ensure(
            status.code() == Code::ResourceExhausted && status.message().contains("thin_check"),
            format!("CreateVolume on a pool that needs a check answered {status:?}"),
        )?;
        ensure(
            code(within("Probe", identity.probe(proto::ProbeRequest {})).await?) == Code::FailedPrecondition,
            "Probe is ready on a pool that needs a check",
        )?;
        ensure(
            code(within("ListVolumes", ctl.list_volumes(proto::ListVolumesRequest::default())).await?) == Code::Ok,
            "ListVolumes",
        )?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    save_scrape(p.metrics_port, "needs-check")?;
    p.stop()?;
    teardown_pool("e2e-needs-check");
    Ok(())
}
