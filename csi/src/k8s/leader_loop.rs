//! The capacity controller's main loop: leader-elected through a Lease; the leader reconciles the
//! `CSIStorageCapacity` objects at once on any change to ThinPools, StorageClasses or the objects
//! it owns (watches), and on a short resync that also catches pools going stale. Pool state
//! changes become Kubernetes Events on the ThinPool.
//!
//! The Lease is renewed on its own timer, beside the work, as client-go's leader election does
//! (retry 2 s, renew deadline 10 s, duration 15 s): a pass that takes long on a slow API server
//! does not let the Lease lapse, and a pass still running when this replica can no longer be sure
//! it leads (no renewal for the renew deadline) is cut off there, before another replica may take
//! the Lease, so two replicas never write at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use kube::runtime::events::{Event, Recorder};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::{watch as signal, Notify};
use tokio::time::Instant;

use super::capacity::{LABEL_MANAGED_BY, MANAGED_BY};
use super::controller::{pool_events, pool_reference, publish_events as publish, reconcile};
use super::controller_metrics::ControllerMetrics;
use super::crd::ThinPool;
use super::expansion_pass::expansion_pass;
use super::lease::LeaseKeeper;
use super::snapshot_contents::label_pass;
use super::status;
use crate::shared::chain;

/// Who this replica is and where it keeps its objects.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Namespace of the CSIStorageCapacity objects and of the Lease.
    pub namespace: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    pub lease_name: String,
    /// A pool whose node has not reported for this many seconds is Stale.
    pub stale_after: i64,
    /// Do the expansion bookkeeping of claims (`expansion`), instead of an external-resizer.
    pub expand_claims: bool,
    /// Label pre-provisioned VolumeSnapshotContents and every VolumeGroupSnapshotContent of this
    /// driver with their node (`snapshot_contents`).
    pub label_snapshot_contents: bool,
}

fn event(warning: bool, reason: String, note: String) -> Event {
    super::controller::event(warning, reason, note, "Reconcile")
}

/// Rings `trigger` on every event of a watched resource.
fn watch<K>(api: Api<K>, config: watcher::Config, trigger: Arc<Notify>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        // Backoff between failed attempts: without it an unreachable API server is retried in a
        // hot loop.
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => trigger.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch failed; the watcher retries"),
            }
        }
    });
}

/// Rings `trigger` when the Lease is released (no holder), and only then: the leader renews it
/// every few seconds, and ringing on every renewal would make it renew in a tight loop.
fn watch_released(api: Api<Lease>, config: watcher::Config, trigger: Arc<Notify>) {
    tokio::spawn(async move {
        let mut leases = watcher(api, config).default_backoff().applied_objects().boxed();
        while let Some(lease) = leases.next().await {
            match lease {
                Ok(l) if is_released(&l) => trigger.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watching the Lease failed; the watcher retries"),
            }
        }
    });
}

fn is_released(lease: &Lease) -> bool {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).unwrap_or("").is_empty()
}

/// One pass as the leader: the capacity objects and the pools' Events, then (opt-in) the claims'
/// expansion bookkeeping.
async fn lead(
    client: &Client,
    cfg: &LoopConfig,
    metrics: &ControllerMetrics,
    recorder: &Recorder,
    last_states: &mut BTreeMap<String, String>,
) {
    let start = Instant::now();
    let r = match reconcile(client, &cfg.namespace, cfg.stale_after, &status::now()).await {
        Ok(r) => r,
        Err(e) => {
            metrics.errors.inc();
            tracing::warn!(error = %chain(&e), "reconcile failed");
            return;
        }
    };
    metrics.record(&r, start.elapsed().as_secs_f64());
    let pool_events = pool_events(last_states, &r.states)
        .into_iter()
        .map(|(pool, warning, reason, note)| (pool_reference(&pool, r.uids.get(&pool)), event(warning, reason, note)));
    publish(recorder, pool_events).await;
    *last_states = r.states.iter().cloned().collect();
    for pool in &r.newly_stale {
        tracing::warn!(pool = %pool, "pool marked Stale: its node stopped reporting");
    }
    if r.created + r.updated + r.deleted > 0 {
        tracing::info!(created = r.created, updated = r.updated, deleted = r.deleted, "capacity objects written");
    }
    if cfg.label_snapshot_contents {
        match label_pass(client, &r.nodes).await {
            Ok(labelled) => {
                for (kind, content, node) in labelled {
                    tracing::info!(kind = ?kind, content = %content, node = %node, "snapshot content labelled with its node for its csi-snapshotter");
                }
            }
            Err(e) => {
                metrics.errors.inc();
                tracing::warn!(error = %chain(&e), "labelling snapshot contents failed");
            }
        }
    }
    if cfg.expand_claims {
        match expansion_pass(client, &r.room, &r.classes, &status::now()).await {
            Ok(x) => {
                let events = x.events.into_iter().map(|(o, e)| (o, event(e.warning, e.reason.to_owned(), e.note)));
                publish(recorder, events).await;
            }
            Err(e) => {
                metrics.errors.inc();
                tracing::warn!(error = %chain(&e), "expansion pass failed");
            }
        }
    }
}

const LEASE_SECS: i32 = 15;
/// How long after a renewal began this replica still counts as the leader: well inside the
/// Lease's duration, so it stops before any other replica may take over.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);

/// Until when this replica leads (`None`: it does not), as the renewal loop last established.
type Leading = signal::Receiver<Option<Instant>>;

fn valid(until: Option<Instant>) -> bool {
    until.is_some_and(|u| u > Instant::now())
}

fn leads(leading: &Leading) -> bool {
    valid(*leading.borrow())
}

/// Completes when this replica no longer leads: the Lease was lost, or no renewal succeeded before
/// the last one's deadline.
async fn lost(mut leading: Leading) {
    loop {
        let until = *leading.borrow_and_update();
        let Some(until) = until.filter(|u| *u > Instant::now()) else { return };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            changed = leading.changed() => if changed.is_err() { return },
        }
    }
}

/// Runs `work` while this replica leads; `None` when it was cut off.
async fn while_leading<T>(leading: &Leading, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        out = work => Some(out),
        _ = lost(leading.clone()) => None,
    }
}

/// Takes or renews the Lease every [`RETRY`] (at once when it is released or its holder's term
/// ends), and publishes until
/// when this replica leads; rings `elected` when it starts leading.
async fn keep_lease(
    keeper: &LeaseKeeper,
    leading: signal::Sender<Option<Instant>>,
    released: Arc<Notify>,
    elected: Arc<Notify>,
    metrics: &ControllerMetrics,
    healthy: &AtomicBool,
) {
    loop {
        let start = Instant::now();
        let look = match keeper.look().await {
            Ok(look) => {
                healthy.store(true, Ordering::Relaxed);
                look
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "renewing the Lease failed");
                super::lease::Look { held: false, until: None }
            }
        };
        let held = look.held;
        if held {
            let was = valid(*leading.borrow());
            // A renewal that took past its own deadline proves nothing: leave the old one to run out.
            let until = start + RENEW_DEADLINE;
            if until > Instant::now() {
                leading.send_replace(Some(until));
                if !was {
                    tracing::info!(identity = %keeper.identity, "leading");
                    elected.notify_one();
                }
            }
        } else if leading.borrow().is_some() {
            leading.send_replace(None);
            tracing::info!(identity = %keeper.identity, "no longer leading");
        }
        metrics.leader.set(i64::from(valid(*leading.borrow())));
        let wait = super::lease::next_look(k8s_openapi::jiff::Timestamp::now(), look.until, RETRY);
        tokio::select! {
            _ = released.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs the controller until `shutdown` completes, then gives the Lease up (when held) so a
/// follower takes over at once. `healthy` is true while the API is reachable.
pub async fn run(
    client: Client,
    cfg: LoopConfig,
    metrics: Arc<ControllerMetrics>,
    healthy: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let trigger = Arc::new(Notify::new());
    watch(Api::<ThinPool>::all(client.clone()), watcher::Config::default(), trigger.clone());
    watch(Api::<StorageClass>::all(client.clone()), watcher::Config::default(), trigger.clone());
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    watch(Api::<CSIStorageCapacity>::namespaced(client.clone(), &cfg.namespace), owned, trigger.clone());
    // A released Lease is taken at once, not at the next retry.
    let released = Arc::new(Notify::new());
    let lease = watcher::Config::default().fields(&format!("metadata.name={}", cfg.lease_name));
    watch_released(Api::<Lease>::namespaced(client.clone(), &cfg.namespace), lease, released.clone());
    if cfg.expand_claims {
        watch(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default(), trigger.clone());
        watch(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default(), trigger.clone());
    }
    let keeper = LeaseKeeper {
        api: Api::namespaced(client.clone(), &cfg.namespace),
        name: cfg.lease_name.clone(),
        identity: cfg.identity.clone(),
        duration_secs: LEASE_SECS,
    };
    tracing::info!(identity = %cfg.identity, namespace = %cfg.namespace, "controller started");
    let recorder = Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "thinpool-csi-controller".into(),
            instance: Some(cfg.identity.clone()),
        },
    );
    let (leading_tx, leading) = signal::channel(None);
    let elected = Arc::new(Notify::new());
    let renew = keep_lease(&keeper, leading_tx, released, elected.clone(), &metrics, &healthy);
    let mut last_states = BTreeMap::new();
    let work = async {
        loop {
            if leads(&leading)
                && while_leading(&leading, lead(&client, &cfg, &metrics, &recorder, &mut last_states)).await.is_none()
            {
                tracing::warn!("pass cut off: the Lease was not renewed in time, another replica may lead now");
            }
            // React at once to watched changes and to being elected; otherwise resync every 5 s.
            tokio::select! {
                _ = trigger.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
                _ = elected.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    };
    tokio::select! {
        _ = renew => {}
        _ = work => {}
        _ = shutdown => {}
    }
    metrics.leader.set(0);
    match tokio::time::timeout(Duration::from_secs(5), keeper.release()).await {
        Ok(Ok(true)) => tracing::info!(identity = %cfg.identity, "Lease released"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed; it expires in 15 s"),
        Err(_) => tracing::warn!("releasing the Lease timed out; it expires in 15 s"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    use super::*;

    #[test]
    fn only_a_released_lease_wakes_the_followers() {
        let held = |holder: Option<&str>| Lease {
            spec: Some(LeaseSpec { holder_identity: holder.map(str::to_owned), ..Default::default() }),
            ..Default::default()
        };
        assert!(is_released(&held(None)));
        assert!(is_released(&held(Some(""))));
        assert!(!is_released(&held(Some("replica-a"))), "a renewal must not wake the loop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_runs_while_the_lease_is_renewed_and_is_cut_off_when_it_is_not() {
        let (tx, leading) = signal::channel(None);
        assert!(!leads(&leading));
        // Renewed every 2 s: a 30-second pass runs to its end.
        tx.send_replace(Some(Instant::now() + RENEW_DEADLINE));
        let renewer = async {
            for _ in 0..20 {
                tokio::time::sleep(RETRY).await;
                tx.send_replace(Some(Instant::now() + RENEW_DEADLINE));
            }
        };
        let pass = while_leading(&leading, tokio::time::sleep(Duration::from_secs(30)));
        let (done, ()) = tokio::join!(pass, renewer);
        assert_eq!(done, Some(()));
        // No renewal any more: cut off at the last deadline, before the Lease could lapse.
        let start = Instant::now();
        let cut = while_leading(&leading, tokio::time::sleep(Duration::from_secs(30))).await;
        assert_eq!(cut, None);
        assert!(start.elapsed() <= RENEW_DEADLINE && RENEW_DEADLINE < Duration::from_secs(LEASE_SECS as u64));
        assert!(!leads(&leading));
        // Lost outright: cut off at once.
        tx.send_replace(Some(Instant::now() + RENEW_DEADLINE));
        let lose = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(None);
        };
        let start = Instant::now();
        let (cut, ()) = tokio::join!(while_leading(&leading, tokio::time::sleep(Duration::from_secs(30))), lose);
        assert_eq!(cut, None);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
