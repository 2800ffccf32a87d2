//! An in-memory [`ThinPool`]: a test double for the engine and CSI layers, with the kernel's
//! errors (EEXIST, ENODATA, EBUSY, EINVAL on a stale transaction id, EOPNOTSUPP when not rw)
//! and failure injection. Never a mode a user can run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::errno::Errno;

use super::status::{Discard, NoSpacePolicy, PoolMode, PoolStatus, WorkingStatus};
use super::{ActiveThin, DmError, PoolInfo, PoolKind, ThinPool};
use crate::units::ThinId;

#[derive(Debug, Default)]
struct State {
    tid: u64,
    thins: BTreeSet<ThinId>,
    active: BTreeMap<ThinId, (u64, i32)>,
    data_used: u64,
    meta_used: u64,
    mode: Option<PoolMode>,
    no_space: Option<NoSpacePolicy>,
    needs_check: bool,
    /// (op, calls of it to let through first, errno).
    fail_next: Vec<(&'static str, u32, Errno)>,
    /// Active devices held suspended.
    suspended: BTreeSet<ThinId>,
    /// Suspends, resumes and snapshot messages in the order they happened ("suspend 3",
    /// "create_snap 9 3", "resume 3"), for tests of a group snapshot's order.
    log: Vec<String>,
    messages: u64,
    /// Status calls take this long, as a hung pool's ioctl would.
    status_delay: std::time::Duration,
}

pub struct MemoryPool {
    info: PoolInfo,
    data_blocks: u64,
    meta_blocks: u64,
    state: Mutex<State>,
}

impl MemoryPool {
    /// A pool of `data_bytes` with 64 KiB blocks.
    pub fn new(data_bytes: u64) -> Self {
        MemoryPool {
            info: PoolInfo {
                kind: PoolKind::Loop,
                dm_name: "memory".into(),
                source: "memory".into(),
                block_sectors: 128,
                zeroes_new_blocks: true,
            },
            data_blocks: data_bytes / (64 << 10),
            meta_blocks: 1024,
            state: Mutex::new(State { meta_used: 10, ..State::default() }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call of `op` fails with `errno` (after no effect).
    pub fn fail_next(&self, op: &'static str, errno: Errno) {
        self.fail_later(op, 0, errno);
    }
    /// The call of `op` after the next `skip` ones fails with `errno` (after no effect).
    pub fn fail_later(&self, op: &'static str, skip: u32, errno: Errno) {
        self.st().fail_next.push((op, skip, errno));
    }
    /// Every status call takes `delay` (a pool whose ioctls hang).
    pub fn set_status_delay(&self, delay: std::time::Duration) {
        self.st().status_delay = delay;
    }
    pub fn set_mode(&self, mode: PoolMode) {
        self.st().mode = Some(mode);
    }
    pub fn set_needs_check(&self, v: bool) {
        self.st().needs_check = v;
    }
    pub fn set_data_used_blocks(&self, blocks: u64) {
        self.st().data_used = blocks;
    }
    pub fn set_meta_used_blocks(&self, blocks: u64) {
        self.st().meta_used = blocks;
    }
    /// What the pool does with a write that finds no free block (`error_if_no_space` or not).
    pub fn set_no_space(&self, policy: NoSpacePolicy) {
        self.st().no_space = Some(policy);
    }
    pub fn set_open(&self, id: ThinId, open: i32) {
        if let Some(a) = self.st().active.get_mut(&id) {
            a.1 = open;
        }
    }
    pub fn transaction_id(&self) -> u64 {
        self.st().tid
    }
    pub fn message_count(&self) -> u64 {
        self.st().messages
    }
    /// Everything a pool change alters (transaction id, thin ids, active devices, message count):
    /// equal fingerprints mean nothing was changed in between.
    pub fn fingerprint(&self) -> String {
        let st = self.st();
        format!("tid={} messages={} thins={:?} active={:?}", st.tid, st.messages, st.thins, st.active)
    }
    /// Suspends, resumes and snapshot messages so far, in order.
    pub fn log(&self) -> Vec<String> {
        self.st().log.clone()
    }
    pub fn is_suspended(&self, id: ThinId) -> bool {
        self.st().suspended.contains(&id)
    }
    pub fn is_active(&self, id: ThinId) -> bool {
        self.st().active.contains_key(&id)
    }
    /// Changes the pool behind the engine's back, as another tool would.
    pub fn force_transaction_id(&self, tid: u64) {
        self.st().tid = tid;
    }
    pub fn force_create(&self, id: ThinId) {
        self.st().thins.insert(id);
    }

    fn step(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, State>, DmError> {
        let mut st = self.st();
        if let Some(pos) = st.fail_next.iter().position(|(o, _, _)| *o == op) {
            if st.fail_next[pos].1 > 0 {
                st.fail_next[pos].1 -= 1;
            } else {
                let (_, _, errno) = st.fail_next.remove(pos);
                return Err(DmError::Kernel { op: op.to_owned(), errno });
            }
        }
        Ok(st)
    }

    fn message(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, State>, DmError> {
        let mut st = self.step(op)?;
        if st.mode.unwrap_or(PoolMode::Rw) != PoolMode::Rw {
            return Err(DmError::Kernel { op: op.to_owned(), errno: Errno::EOPNOTSUPP });
        }
        st.messages += 1;
        Ok(st)
    }
}

fn kernel(op: &str, errno: Errno) -> DmError {
    DmError::Kernel { op: op.to_owned(), errno }
}

impl ThinPool for MemoryPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn status(&self) -> Result<PoolStatus, DmError> {
        let delay = self.st().status_delay;
        std::thread::sleep(delay);
        let st = self.step("status")?;
        Ok(PoolStatus::Working(WorkingStatus {
            transaction_id: st.tid,
            meta_used: st.meta_used,
            meta_total: self.meta_blocks,
            data_used: st.data_used,
            data_total: self.data_blocks,
            held_root: None,
            mode: st.mode.unwrap_or(PoolMode::Rw),
            discard: Discard::Passdown,
            no_space: st.no_space.unwrap_or(NoSpacePolicy::Queue),
            needs_check: st.needs_check,
            meta_low_water: Some(self.meta_blocks / 10),
        }))
    }

    fn create_thin(&self, id: ThinId) -> Result<(), DmError> {
        let mut st = self.message("create_thin")?;
        if !st.thins.insert(id) {
            return Err(kernel("create_thin", Errno::EEXIST));
        }
        Ok(())
    }

    fn create_snap(&self, id: ThinId, origin: ThinId) -> Result<(), DmError> {
        let mut st = self.message("create_snap")?;
        if !st.thins.contains(&origin) {
            return Err(kernel("create_snap", Errno::ENODATA));
        }
        if !st.thins.insert(id) {
            return Err(kernel("create_snap", Errno::EEXIST));
        }
        Ok(())
    }

    fn suspend_thin(&self, id: ThinId) -> Result<bool, DmError> {
        let mut st = self.step("suspend")?;
        if !st.active.contains_key(&id) {
            return Ok(false);
        }
        st.suspended.insert(id);
        st.log.push(format!("suspend {id}"));
        Ok(true)
    }

    fn create_snap_held(&self, id: ThinId, origin: ThinId) -> Result<(), DmError> {
        let mut st = self.message("create_snap")?;
        // The kernel would take it, but the snapshot would not hold one instant with the others.
        if st.active.contains_key(&origin) && !st.suspended.contains(&origin) {
            return Err(kernel("create_snap of an active origin not held suspended", Errno::EINVAL));
        }
        if !st.thins.contains(&origin) {
            return Err(kernel("create_snap", Errno::ENODATA));
        }
        if !st.thins.insert(id) {
            return Err(kernel("create_snap", Errno::EEXIST));
        }
        st.log.push(format!("create_snap {id} {origin}"));
        Ok(())
    }

    fn delete_thin(&self, id: ThinId) -> Result<(), DmError> {
        let mut st = self.message("delete")?;
        if st.active.get(&id).is_some_and(|a| a.1 > 0) {
            return Err(kernel("delete", Errno::EBUSY));
        }
        if !st.thins.remove(&id) {
            return Err(kernel("delete", Errno::ENODATA));
        }
        Ok(())
    }

    fn set_transaction_id(&self, current: u64, new: u64) -> Result<(), DmError> {
        let mut st = self.message("set_transaction_id")?;
        if st.tid != current {
            return Err(kernel("set_transaction_id", Errno::EINVAL));
        }
        st.tid = new;
        Ok(())
    }

    fn activate(&self, id: ThinId, sectors: u64) -> Result<PathBuf, DmError> {
        let mut st = self.step("activate")?;
        if !st.thins.contains(&id) {
            return Err(kernel("activate", Errno::ENODATA));
        }
        st.active.entry(id).or_insert((sectors, 0));
        Ok(PathBuf::from(format!("/dev/memory/{id}")))
    }

    fn deactivate(&self, id: ThinId) -> Result<(), DmError> {
        let mut st = self.step("deactivate")?;
        match st.active.get(&id) {
            Some((_, open)) if *open > 0 => Err(DmError::Busy(id)),
            _ => {
                st.active.remove(&id);
                Ok(())
            }
        }
    }

    fn resize(&self, id: ThinId, sectors: u64) -> Result<(), DmError> {
        let mut st = self.step("resize")?;
        if let Some(a) = st.active.get_mut(&id) {
            a.0 = sectors;
        }
        Ok(())
    }

    fn resume(&self, id: ThinId) -> Result<(), DmError> {
        let mut st = self.step("resume")?;
        if st.suspended.remove(&id) {
            st.log.push(format!("resume {id}"));
        }
        Ok(())
    }

    fn active_devices(&self) -> Result<Vec<ActiveThin>, DmError> {
        let st = self.step("active_devices")?;
        Ok(st
            .active
            .iter()
            .map(|(id, (_, open))| ActiveThin { id: *id, suspended: st.suspended.contains(id), open_count: *open })
            .collect())
    }

    fn mapped_sectors(&self, id: ThinId) -> Result<Option<u64>, DmError> {
        let st = self.step("mapped_sectors")?;
        Ok(st.active.get(&id).map(|_| 0))
    }

    fn thin_ids(&self) -> Result<Vec<ThinId>, DmError> {
        let st = self.step("thin_ids")?;
        Ok(st.thins.iter().copied().collect())
    }
}
