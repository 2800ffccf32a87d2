//! A pool that grows itself: the real plugin on an LVM thin pool in a volume group with room,
//! with automatic extension on, while a writer fills a volume.

use std::time::{Duration, Instant};

use crate::csi::{create_published_block, http_get, id, metric, rt, save_scrape, unpublish_block, Plugin};
use crate::fixture::*;
use crate::full::{
    ensure_error_if_no_space, ensure_write_fails_fast, scraped_mode, write_zeros, write_zeros_at, FAIL_FAST,
};
use thinpool_csi::csi::proto;

/// The pool LV's size in bytes, as LVM sees it.
fn lv_bytes(d: &LvmFixture, lv: &str) -> Result<u64> {
    Ok(d.lvm(&format!("lvs --noheadings --nosuffix --units b -o lv_size {}/{lv}", d.vg))?.trim().parse()?)
}

fn scraped(port: u16, series: &str) -> Result<f64> {
    let (_, text) = http_get(port, "/metrics")?;
    metric(&text, series).ok_or_else(|| format!("no {series} in the metrics").into())
}

/// 256 MiB of data in a 2 GiB VG, grown at 60 % by 50 % up to 640 MiB. A writer puts 480 MiB on a
/// volume in one go (LVM's default `queue_if_no_space`, as users have it): it must finish without
/// an I/O error, the pool having grown under it in steps (256 → 384 → 576 → 640 MiB, each the
/// moment an event or the 5 s check saw the fill). Then, at the 640 MiB maximum and reported as
/// blocked, the pool's table has `error_if_no_space` (the plugin's doing: the test sets nothing on
/// the LV), a write past it fails within [`FAIL_FAST`], and the pool stays at its maximum.
pub fn lvm_pool_grows_itself_under_a_writer() -> Result {
    let d = LvmFixture::device("grow", 2 * GIB)?;
    d.lvm(&format!("pvcreate -y {}", d.loopdev))?;
    d.lvm(&format!("vgcreate {} {}", d.vg, d.loopdev))?;
    d.lvm(&format!("lvcreate -y --zero y -c 64K -T -L 256M --poolmetadatasize 8M {}/pool", d.vg))?;
    let flags: Vec<String> =
        ["--auto-extend-threshold", "60", "--auto-extend-percent", "50", "--auto-extend-max-size", "640Mi"]
            .map(str::to_owned)
            .to_vec();
    let mut p = Plugin::start_lvm("grow", &format!("{}/pool", d.vg), &flags)?;
    let (staging, target) = create_published_block(&p, "big", 1 << 30)?;

    let (took, complaint) = write_zeros(&target, 480);
    ensure(complaint.is_none(), format!("the writer got an error: {complaint:?}\nplugin log:\n{}", p.log()))?;
    let grown = lv_bytes(&d, "pool")?;
    let data_extensions = scraped(p.metrics_port, "thinpool_pool_extensions_total{part=\"data\"}")?;
    println!(
        "  480 MiB written in {:.1} s without an error; the pool grew {data_extensions} times to {} MiB",
        took.as_secs_f64(),
        grown / MIB
    );
    ensure(grown >= 480 * MIB, format!("the pool is only {grown} bytes after 480 MiB were written"))?;
    ensure(data_extensions >= 2.0, format!("{data_extensions} data extensions, expected at least 2"))?;
    let log = p.log();
    ensure(log.contains("pool grown"), "the plugin log has no \"pool grown\" line")?;
    for line in log.lines().filter(|l| l.contains("pool grown")) {
        println!("  log: {}", line.trim());
    }

    // Let the last growth land (the writer may finish just before the fill check that caps it),
    // then the plugin sees the pool above its threshold at its maximum: blocked.
    let start = Instant::now();
    while lv_bytes(&d, "pool")? < 640 * MIB {
        ensure(start.elapsed() < Duration::from_secs(30), "the pool did not reach its 640 MiB maximum")?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let start = Instant::now();
    while scraped(p.metrics_port, "thinpool_pool_extension_blocked")? != 1.0 {
        ensure(start.elapsed() < Duration::from_secs(30), "thinpool_pool_extension_blocked did not become 1")?;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Past the maximum, a full pool must fail writes at once: the plugin's own setting, nothing
    // set here (LVM's default for the LV is queue_if_no_space). A plugin that switches the pool
    // when it is blocked gets a few seconds to do it.
    let start = Instant::now();
    while ensure_error_if_no_space(&p, "blocked at its maximum").is_err() && start.elapsed() < FAIL_FAST {
        std::thread::sleep(Duration::from_millis(500));
    }
    ensure_error_if_no_space(&p, &format!("{:?} after the pool was blocked at its maximum", start.elapsed()))?;
    let (_, past) = write_zeros_at(&target, 480, 300);
    ensure(past.is_some(), "300 MiB more fit into a pool capped at 640 MiB")?;
    let failed_in = ensure_write_fails_fast(&target, 900)?;
    let capped = lv_bytes(&d, "pool")?;
    ensure(capped == 640 * MIB, format!("the pool is {capped} bytes, not its 640 MiB maximum"))?;
    ensure(p.log().contains("at its maximum of 640Mi"), "the plugin did not say why the pool cannot grow")?;
    save_scrape(p.metrics_port, "grow-blocked")?;
    println!(
        "  past the 640 MiB maximum: error_if_no_space, a new block failed in {:.2} s, the pool stayed at 640 MiB, blocked = 1",
        failed_in.as_secs_f64()
    );

    // The operator's way out of a full LVM pool: lvextend by hand. It returns to rw by itself.
    ensure(scraped_mode(p.metrics_port)? == "out_of_data_space", "the capped pool is not out_of_data_space")?;
    d.lvm(&format!("lvextend -L +256M {}/pool", d.vg))?;
    let start = Instant::now();
    while scraped_mode(p.metrics_port)? != "rw" {
        ensure(start.elapsed() < Duration::from_secs(30), "the pool did not return to rw after lvextend")?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, after) = write_zeros_at(&target, 640, 128);
    ensure(after.is_none(), format!("writing after lvextend: {after:?}"))?;
    println!("  lvextend -L +256M by hand: rw again by itself, 128 MiB more written");

    rt()?.block_on(async {
        let (_, mut ctl, mut node) = p.clients().await?;
        unpublish_block(&mut node, "big", &staging, &target).await?;
        ctl.delete_volume(proto::DeleteVolumeRequest { volume_id: id("big"), ..Default::default() }).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    p.stop()
}
