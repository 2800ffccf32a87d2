//! Waiting for a pool's device-mapper events: the thin-pool target raises one when data fill
//! crosses its low-water mark, when its mode changes (out of data space, read-only, needs_check)
//! and at every resume (a table reload, a grown LV). Uses the control device's poll interface
//! (dm ioctl 4.37+): arm, then `poll` until any device raised an event or the timeout passed; the
//! caller looks at the pool either way, so a missed or foreign event only costs one status read.

use std::os::fd::AsFd;
use std::time::Duration;

use devicemapper::{DevId, DM};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::kernel::{dm_name, lib_err};
use super::DmError;

pub struct PoolEvents {
    dm: DM,
    name: String,
    last: Option<u32>,
}

impl PoolEvents {
    /// Watches the dm device `name` (the pool), on a control handle of its own.
    pub fn open(name: &str) -> Result<Self, DmError> {
        let dm = DM::new().map_err(lib_err("opening /dev/mapper/control for pool events"))?;
        Ok(PoolEvents { dm, name: name.to_owned(), last: None })
    }

    /// The pool's event counter.
    fn counter(&self) -> Result<u32, DmError> {
        let info = self.dm.device_info(&DevId::Name(dm_name(&self.name)?)).map_err(lib_err("pool device info"))?;
        Ok(info.event_nr())
    }

    /// Arms the poll, then waits up to `timeout` for an event. True when the pool's own event
    /// counter moved since the last call (the first call counts as an event).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, DmError> {
        self.dm.arm_poll().map_err(lib_err("arming device-mapper event polling"))?;
        let before = self.counter()?;
        if self.last != Some(before) {
            self.last = Some(before);
            return Ok(true);
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.dm.file().as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(DmError::Kernel { op: "poll on /dev/mapper/control".into(), errno }),
        }
        let after = self.counter()?;
        let moved = after != before;
        self.last = Some(after);
        Ok(moved)
    }
}
