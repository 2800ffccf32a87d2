//! Deferred deletes, retried in the background: a delete that met an open device (EBUSY) left
//! its record in the deleting table; this thread finishes it once the device is closed, the way
//! Docker's devicemapper driver retried deferred deletions on a ticker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Engine;
use crate::dm::ThinPool;

/// A running retrier; dropping it stops the thread.
pub struct DeferredRetrier {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DeferredRetrier {
    /// Retries deferred deletes of `engine` every `interval`.
    pub fn start<P: ThinPool + 'static>(engine: Arc<Engine<P>>, interval: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name("deferred-deletes".into()).spawn(move || {
            let tick = Duration::from_millis(50).min(interval);
            let mut waited = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited < interval {
                    continue;
                }
                waited = Duration::ZERO;
                match engine.retry_deferred() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(finished = n, "deferred deletes finished"),
                    Err(e) => tracing::warn!(error = %e, "retrying deferred deletes failed"),
                }
            }
        })?;
        Ok(DeferredRetrier { stop, handle: Some(handle) })
    }
}

impl Drop for DeferredRetrier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::memory::MemoryPool;
    use crate::engine::DeleteOutcome;
    use crate::engine::Limits;
    use crate::store::{Kind, Store};

    #[test]
    fn finishes_a_deferred_delete_once_the_device_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) =
            Engine::open(MemoryPool::new(1 << 30), Store::open(dir.path()).unwrap(), Limits::default()).unwrap();
        let e = Arc::new(e);
        let id = e.create_volume("v", 1 << 20, None).unwrap().record().thin_id;
        e.activate(Kind::Volume, "v").unwrap();
        e.pool().set_open(id, 1);
        assert_eq!(e.delete(Kind::Volume, "v").unwrap(), DeleteOutcome::Deferred);
        let retrier = DeferredRetrier::start(e.clone(), Duration::from_millis(10)).unwrap();
        e.pool().set_open(id, 0);
        // Wait (bounded) for the background thread; no timing is asserted.
        for _ in 0..500 {
            if e.store.deleting().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(retrier);
        assert!(e.store.deleting().unwrap().is_empty(), "the deferred delete was not finished");
        assert!(e.pool().thin_ids().unwrap().is_empty());
    }
}
