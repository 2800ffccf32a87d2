//! A pool that grows itself (opt-in, LVM-backed pools only): a thread of the node plugin waits
//! for the pool's device-mapper events (low-water mark, mode changes, resumes) and checks its fill
//! at least every few seconds; when data or metadata reaches the threshold and the volume group
//! has free extents, it grows that part with `lvextend` ([`plan`] decides by how much). No
//! dmeventd is needed. Each growth is logged, counted in metrics, shown in the ThinPool status
//! and raised as an Event (the publisher posts the [`Notice`]s this module leaves).

pub mod plan;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use plan::{Decision, Fill, Growth, Policy, VgRoom, Want};
use serde::{Deserialize, Serialize};

use crate::dm::status::{NoSpacePolicy, PoolStatus, META_BLOCK_BYTES};
use crate::dm::{DmError, ThinPool};
use crate::engine::Engine;

/// After a failed `lvextend`, the next attempt waits this long (events keep coming meanwhile).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What the ThinPool status shows of automatic extension.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The policy, for people: `at 80% fill, by 20%, data up to 100Gi`.
    pub policy: String,
    /// Growths done since the node plugin started.
    pub extensions: u32,
    /// The last growth: `2026-11-30T12:00:00Z data 10Gi → 12Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_extension: Option<String>,
    /// Why the pool cannot grow right now (at its maximum, no free extent, lvextend failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// An Event to raise on the ThinPool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

pub const REASON_EXTENDED: &str = "PoolExtended";
pub const REASON_BLOCKED: &str = "PoolExtensionBlocked";
pub const REASON_FAILED: &str = "PoolExtensionFailed";

/// Notices kept for a publisher that cannot post them (no API server): the oldest go first.
const MAX_NOTICES: usize = 50;

fn push(notices: &mut Vec<Notice>, n: Notice) {
    if notices.len() >= MAX_NOTICES {
        notices.remove(0);
    }
    notices.push(n);
}

/// Shared between the extension thread and the ThinPool publisher.
#[derive(Debug, Default)]
pub struct GrowLog {
    inner: Mutex<(Summary, Vec<Notice>)>,
}

impl GrowLog {
    pub fn new(policy: &Policy) -> Self {
        GrowLog { inner: Mutex::new((Summary { policy: policy.to_string(), ..Default::default() }, Vec::new())) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut (Summary, Vec<Notice>)) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn summary(&self) -> Summary {
        self.with(|(s, _)| s.clone())
    }

    /// Leaves a notice as the extender would (tests of the publisher).
    #[cfg(test)]
    pub fn push_for_test(&self, n: Notice) {
        self.with(|(_, notices)| push(notices, n));
    }

    /// The Events not yet posted (the publisher takes them).
    pub fn take_notices(&self) -> Vec<Notice> {
        self.with(|(_, n)| std::mem::take(n))
    }
}

/// The side of the volume group: its room, and growing the pool's LVs.
pub trait Grower {
    fn room(&self) -> Result<VgRoom, DmError>;
    fn extend(&self, growth: &Growth) -> Result<(), DmError>;
    /// Sets what the pool does with a write that finds no free block.
    fn when_full(&self, policy: NoSpacePolicy) -> Result<(), DmError>;
}

/// The real one: `vgs` and `lvextend` on the pool `vg/lv`.
pub struct Lvm {
    pub vg: String,
    pub lv: String,
}

impl Grower for Lvm {
    fn room(&self) -> Result<VgRoom, DmError> {
        crate::dm::lvm::vg_room(&self.vg)
    }
    fn extend(&self, growth: &Growth) -> Result<(), DmError> {
        crate::dm::lvm::extend(&self.vg, &self.lv, growth)
    }
    fn when_full(&self, policy: NoSpacePolicy) -> Result<(), DmError> {
        crate::dm::lvm::set_when_full(&self.vg, &self.lv, policy)
    }
}

/// What one check did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Nothing to do (below the threshold, waiting after a failure, or a failed pool).
    Nothing,
    Grew(Vec<Growth>),
    /// Above the threshold and unable to grow (said once per change).
    Stuck,
    Failed,
}

pub struct Extender<G> {
    policy: Policy,
    grower: G,
    log: Arc<GrowLog>,
    metrics: Option<Arc<crate::metrics::NodeMetrics>>,
    /// The problem last reported, so that it is reported once, not at every check.
    problem: Option<String>,
    retry_at: Option<Instant>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl<G: Grower> Extender<G> {
    pub fn new(
        policy: Policy,
        grower: G,
        log: Arc<GrowLog>,
        metrics: Option<Arc<crate::metrics::NodeMetrics>>,
    ) -> Self {
        Extender { policy, grower, log, metrics, problem: None, retry_at: None }
    }

    /// Reports a problem once per change: a warning log line, an Event and the status.
    fn problem(&mut self, reason: &'static str, why: String) {
        if let Some(m) = &self.metrics {
            m.set_extension_blocked(true);
        }
        if self.problem.as_deref() == Some(why.as_str()) {
            return;
        }
        tracing::warn!(problem = %why, "the pool cannot grow by itself");
        self.log.with(|(s, n)| {
            s.problem = Some(why.clone());
            push(n, Notice { warning: true, reason, note: why.clone() });
        });
        self.problem = Some(why);
    }

    fn clear_problem(&mut self) {
        if let Some(m) = &self.metrics {
            m.set_extension_blocked(false);
        }
        if self.problem.take().is_some() {
            self.log.with(|(s, _)| s.problem = None);
        }
    }

    fn failed(&mut self, e: DmError) -> Checked {
        if let Some(m) = &self.metrics {
            m.extension_failed();
        }
        self.retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
        self.problem(REASON_FAILED, format!("growing the pool failed: {e}"));
        Checked::Failed
    }

    /// Looks at the pool once and grows it if the policy says so. Growing holds the engine's
    /// writer lock, so no pool change meets the suspend LVM does.
    pub fn check<P: ThinPool>(&mut self, engine: &Engine<P>) -> Checked {
        let s = match engine.pool().status() {
            Ok(PoolStatus::Working(s)) => s,
            // A failed pool is the operator's to repair; growing it would not help.
            Ok(PoolStatus::Fail) => return Checked::Nothing,
            Err(e) => {
                tracing::warn!(error = %e, "reading the pool's status for automatic extension");
                return Checked::Nothing;
            }
        };
        let block = engine.pool().info().block_bytes();
        let fill = Fill {
            data_total: s.data_total.saturating_mul(block),
            data_used: s.data_used.saturating_mul(block),
            meta_total: s.meta_total.saturating_mul(META_BLOCK_BYTES),
            meta_used: s.meta_used.saturating_mul(META_BLOCK_BYTES),
        };
        if plan::wants(&self.policy, &fill) == (Want::Nothing, Want::Nothing) {
            self.clear_problem();
            self.when_full(engine, s.no_space, NoSpacePolicy::Queue);
            return Checked::Nothing;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Checked::Nothing;
        }
        let room = match self.grower.room() {
            Ok(r) => r,
            Err(e) => return self.failed(e),
        };
        let growths = match plan::decide(&self.policy, &fill, &room) {
            Decision::Nothing => return Checked::Nothing,
            Decision::Stuck(why) => {
                self.problem(REASON_BLOCKED, why);
                self.when_full(engine, s.no_space, NoSpacePolicy::Error);
                return Checked::Stuck;
            }
            Decision::Extend(g) => g,
        };
        for g in &growths {
            let start = Instant::now();
            if let Err(e) = engine.exclusive(|| self.grower.extend(g)) {
                return self.failed(e);
            }
            tracing::info!(pool = %engine.pool().info().source, growth = %g, policy = %self.policy, elapsed_ms = start.elapsed().as_millis() as u64, "pool grown");
            if let Some(m) = &self.metrics {
                m.extended(g.part);
            }
            let at = now_rfc3339();
            self.log.with(|(s, n)| {
                s.extensions = s.extensions.saturating_add(1);
                s.last_extension = Some(format!("{at} {g}"));
                push(
                    n,
                    Notice {
                        warning: false,
                        reason: REASON_EXTENDED,
                        note: format!("{g} ({}% full; policy {})", fill_pct(&fill, g.part), self.policy),
                    },
                );
            });
        }
        self.retry_at = None;
        self.clear_problem();
        self.when_full(engine, s.no_space, NoSpacePolicy::Queue);
        Checked::Grew(growths)
    }

    /// While the pool can grow, a write that finds no free block waits for the growth (queue);
    /// once it cannot, the write fails at once (error) instead of hanging for the kernel's 60 s
    /// `no_space_timeout`. Changed only when the pool's table says otherwise, under the writer lock
    /// (`lvchange` reloads the table); a failure is logged and tried again at the next check.
    fn when_full<P: ThinPool>(&mut self, engine: &Engine<P>, now: NoSpacePolicy, want: NoSpacePolicy) {
        if now == want {
            return;
        }
        match engine.exclusive(|| self.grower.when_full(want)) {
            Ok(()) => {
                tracing::info!(pool = %engine.pool().info().source, policy = ?want, "the pool's behaviour when full changed: {}", match want {
                    NoSpacePolicy::Error => "writes needing new space fail at once (it cannot grow)",
                    NoSpacePolicy::Queue => "writes needing new space wait for it to grow",
                })
            }
            Err(e) => tracing::warn!(error = %e, policy = ?want, "setting the pool's behaviour when full"),
        }
    }
}

fn fill_pct(fill: &Fill, part: plan::Part) -> u64 {
    let (used, total) = match part {
        plan::Part::Data => (fill.data_used, fill.data_total),
        plan::Part::Metadata => (fill.meta_used, fill.meta_total),
    };
    (u128::from(used) * 100 / u128::from(total.max(1))) as u64
}

/// How often the pool is looked at when no event comes.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the extender on a thread of its own for the life of the process: a check at every pool
/// event and at least every [`CHECK_EVERY`]; `changed` is rung after every check that changed
/// the pool or the status, so that the ThinPool status and capacity follow at once.
pub fn spawn<P, G>(
    engine: Arc<Engine<P>>,
    mut extender: Extender<G>,
    changed: Arc<tokio::sync::Notify>,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    P: ThinPool + 'static,
    G: Grower + Send + 'static,
{
    std::thread::Builder::new().name("auto-extend".into()).spawn(move || {
        let name = engine.pool().info().dm_name.clone();
        let mut events = match crate::dm::events::PoolEvents::open(&name) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, pool = %name, every = ?CHECK_EVERY, "no pool events: checking on a timer only");
                None
            }
        };
        tracing::info!(pool = %name, policy = %extender.policy, "automatic extension on");
        loop {
            let before = extender.log.summary();
            extender.check(&engine);
            if extender.log.summary() != before {
                changed.notify_one();
            }
            match events.as_mut().map(|e| e.wait(CHECK_EVERY)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "waiting for pool events");
                    std::thread::sleep(CHECK_EVERY);
                }
                None => std::thread::sleep(CHECK_EVERY),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::memory::MemoryPool;
    use crate::engine::Limits;
    use crate::store::Store;
    use std::cell::RefCell;

    const MIB: u64 = 1 << 20;

    /// A VG double: its room, the growths asked for, and an optional failure.
    struct FakeVg {
        room: RefCell<VgRoom>,
        asked: RefCell<Vec<Growth>>,
        fail: RefCell<Option<String>>,
        when_full: RefCell<Vec<NoSpacePolicy>>,
    }

    impl Grower for &FakeVg {
        fn room(&self) -> Result<VgRoom, DmError> {
            Ok(*self.room.borrow())
        }
        fn extend(&self, g: &Growth) -> Result<(), DmError> {
            if let Some(why) = self.fail.borrow().clone() {
                return Err(DmError::Config(why));
            }
            self.asked.borrow_mut().push(*g);
            Ok(())
        }
        fn when_full(&self, policy: NoSpacePolicy) -> Result<(), DmError> {
            self.when_full.borrow_mut().push(policy);
            Ok(())
        }
    }

    fn engine() -> (Engine<MemoryPool>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        // 1 GiB of 64 KiB blocks.
        let (e, _) =
            Engine::open(MemoryPool::new(1 << 30), Store::open(dir.path()).unwrap(), Limits::default()).unwrap();
        (e, dir)
    }

    fn vg(free_extents: u64) -> FakeVg {
        FakeVg {
            room: RefCell::new(VgRoom { extent_bytes: 4 * MIB, free_extents }),
            asked: RefCell::new(Vec::new()),
            fail: RefCell::new(None),
            when_full: RefCell::new(Vec::new()),
        }
    }

    const POLICY: Policy = Policy { threshold_pct: 80, step_pct: 25, max_data_bytes: None };

    #[test]
    fn grows_at_the_threshold_and_says_so() {
        let (e, _d) = engine();
        let fake = vg(1000);
        let log = Arc::new(GrowLog::new(&POLICY));
        let mut x = Extender::new(POLICY, &fake, log.clone(), None);
        e.pool().set_data_used_blocks(13107); // just under 80 % of 16384 blocks
        assert_eq!(x.check(&e), Checked::Nothing);
        assert!(fake.asked.borrow().is_empty());
        e.pool().set_data_used_blocks(13108);
        let Checked::Grew(g) = x.check(&e) else { panic!("did not grow") };
        assert_eq!(g, vec![Growth { part: plan::Part::Data, from_bytes: 1 << 30, to_bytes: (1 << 30) + (256 << 20) }]);
        assert_eq!(*fake.asked.borrow(), g);
        let s = log.summary();
        assert_eq!(s.extensions, 1);
        assert!(s.last_extension.as_deref().unwrap().ends_with("data 1Gi → 1280Mi"), "{s:?}");
        assert_eq!(s.policy, "at 80% fill, by 25%, as far as the volume group allows");
        let n = log.take_notices();
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].warning, n[0].reason), (false, REASON_EXTENDED));
        assert!(n[0].note.starts_with("data 1Gi → 1280Mi (80% full"), "{}", n[0].note);
        assert!(log.take_notices().is_empty(), "notices are taken once");
    }

    #[test]
    fn a_stuck_pool_is_reported_once_and_cleared_when_it_drains() {
        let (e, _d) = engine();
        let fake = vg(0);
        let log = Arc::new(GrowLog::new(&POLICY));
        let mut x = Extender::new(POLICY, &fake, log.clone(), None);
        e.pool().set_data_used_blocks(16000);
        assert_eq!(x.check(&e), Checked::Stuck);
        // A pool that cannot grow fails writes at once instead of holding them for 60 s.
        assert_eq!(*fake.when_full.borrow(), vec![NoSpacePolicy::Error]);
        e.pool().set_no_space(NoSpacePolicy::Error); // what lvchange did to the table
        assert_eq!(x.check(&e), Checked::Stuck);
        assert_eq!(fake.when_full.borrow().len(), 1, "changed only when the table says otherwise");
        let n = log.take_notices();
        assert_eq!(n.len(), 1, "one Event per problem, not one per check: {n:?}");
        assert_eq!((n[0].warning, n[0].reason), (true, REASON_BLOCKED));
        assert!(log.summary().problem.unwrap().contains("no free extent"));
        // Volumes deleted: below the threshold again, the problem is gone and writes wait for
        // growth again.
        e.pool().set_data_used_blocks(100);
        assert_eq!(x.check(&e), Checked::Nothing);
        assert_eq!(log.summary().problem, None);
        assert_eq!(*fake.when_full.borrow(), vec![NoSpacePolicy::Error, NoSpacePolicy::Queue]);
    }

    #[test]
    fn a_pool_that_grows_waits_for_the_growth_when_full() {
        let (e, _d) = engine();
        let fake = vg(1000);
        let log = Arc::new(GrowLog::new(&POLICY));
        let mut x = Extender::new(POLICY, &fake, log, None);
        e.pool().set_no_space(NoSpacePolicy::Error); // left so by an earlier run that was stuck
        e.pool().set_data_used_blocks(16000);
        assert!(matches!(x.check(&e), Checked::Grew(_)));
        assert_eq!(*fake.when_full.borrow(), vec![NoSpacePolicy::Queue]);
    }

    #[test]
    fn a_failed_lvextend_waits_before_the_next_try() {
        let (e, _d) = engine();
        let fake = vg(1000);
        *fake.fail.borrow_mut() = Some("lvextend exited 5".into());
        let log = Arc::new(GrowLog::new(&POLICY));
        let mut x = Extender::new(POLICY, &fake, log.clone(), None);
        e.pool().set_data_used_blocks(16000);
        assert_eq!(x.check(&e), Checked::Failed);
        // Within the back-off nothing is tried, even though the pool is still full.
        *fake.fail.borrow_mut() = None;
        assert_eq!(x.check(&e), Checked::Nothing);
        assert!(fake.asked.borrow().is_empty());
        let n = log.take_notices();
        assert_eq!((n.len(), n[0].reason), (1, REASON_FAILED));
        assert!(n[0].note.contains("lvextend exited 5"), "{}", n[0].note);
        // After it, the next check grows the pool and clears the problem.
        x.retry_at = Some(Instant::now());
        assert!(matches!(x.check(&e), Checked::Grew(_)));
        assert_eq!(log.summary().problem, None);
    }

    #[test]
    fn metadata_grows_too() {
        let (e, _d) = engine();
        let fake = vg(1000);
        let log = Arc::new(GrowLog::new(&POLICY));
        let mut x = Extender::new(POLICY, &fake, log, None);
        let meta_total = match e.pool().status().unwrap() {
            PoolStatus::Working(s) => s.meta_total,
            PoolStatus::Fail => unreachable!(),
        };
        e.pool().set_meta_used_blocks(meta_total * 9 / 10);
        let Checked::Grew(g) = x.check(&e) else { panic!("did not grow") };
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].part, plan::Part::Metadata);
        assert!(g[0].to_bytes > g[0].from_bytes);
    }

    #[test]
    fn out_of_data_space_is_when_growing_helps() {
        let (e, _d) = engine();
        let fake = vg(1000);
        let mut x = Extender::new(POLICY, &fake, Arc::new(GrowLog::new(&POLICY)), None);
        e.pool().set_data_used_blocks(16384);
        e.pool().set_mode(crate::dm::PoolMode::OutOfDataSpace);
        // Out of data space is exactly when growing helps.
        assert!(matches!(x.check(&e), Checked::Grew(_)));
    }
}
