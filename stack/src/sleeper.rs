//! How an interrupt-mode worker sleeps: one `io_uring` per worker waits on
//! every source of work at once — the NIC queue's fd, the worker's control
//! eventfd (commands, configuration, stop), each external app's rx-queue
//! eventfd — with the transports' next deadline as the wait's timeout.
//!
//! Every source is a multishot poll that stays armed across sleeps, so a
//! source that fires while the worker is awake is not lost: its completion
//! waits in the ring and [`Sleeper::reap`] reports it on the next loop.
//! Registering and unregistering app queues happens on the worker itself
//! (it processes the command that asks for it), so the ring is never
//! touched from two threads.

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::Duration;

use hashbrown::HashMap;
use io_uring::{IoUring, opcode, types};

use crate::error::{StackError, StackResult};

/// What woke the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeSource {
    /// The NIC queue has frames.
    Device,
    /// A command or stop request.
    Control,
    /// An app's rx queue was signalled.
    AppQueue(u32),
}

const TAG_DEVICE: u64 = 1;
const TAG_CONTROL: u64 = 2;
const TAG_QUEUE: u64 = 3 << 56;
const TAG_REMOVE: u64 = 4 << 56;
const TAG_KIND: u64 = 0xff << 56;

/// One worker's sleep ring.
pub struct Sleeper {
    ring: IoUring,
    device_fd: RawFd,
    control_fd: RawFd,
    /// Armed app queues: id -> (fd, generation in the tag).
    queues: HashMap<u32, (RawFd, u32)>,
    generation: u32,
    unsubmitted: bool,
}

impl std::fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeper")
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

fn queue_tag(id: u32, generation: u32) -> u64 {
    TAG_QUEUE | (u64::from(generation & 0x00ff_ffff) << 32) | u64::from(id)
}

impl Sleeper {
    /// A ring watching the NIC queue's fd and the control eventfd.
    pub fn new(device_fd: RawFd, control_fd: RawFd) -> StackResult<Self> {
        let ring =
            IoUring::new(256).map_err(|e| StackError::os("creating the worker's sleep ring", e))?;
        let mut s = Self {
            ring,
            device_fd,
            control_fd,
            queues: HashMap::new(),
            generation: 0,
            unsubmitted: false,
        };
        s.arm(device_fd, TAG_DEVICE)?;
        s.arm(control_fd, TAG_CONTROL)?;
        s.submit()?;
        Ok(s)
    }

    fn arm(&mut self, fd: RawFd, tag: u64) -> StackResult<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(tag);
        // SAFETY: a poll entry points at no user memory; the fd is owned by
        // the worker (NIC queue, control eventfd) or by the app queue it
        // registers, and the kernel holds its own file reference while the
        // poll is armed.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring
                .submit()
                .map_err(|e| StackError::os("submitting to the sleep ring", e))?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| {
                StackError::Config("the sleep ring's submission queue is full".into())
            })?;
        }
        self.unsubmitted = true;
        Ok(())
    }

    fn submit(&mut self) -> StackResult<()> {
        if self.unsubmitted {
            self.ring
                .submit()
                .map_err(|e| StackError::os("submitting to the sleep ring", e))?;
            self.unsubmitted = false;
        }
        Ok(())
    }

    /// Watches an app rx queue's eventfd under `id`.
    pub fn add_queue(&mut self, id: u32, fd: RawFd) -> StackResult<()> {
        self.remove_queue(id)?;
        self.generation = self.generation.wrapping_add(1);
        self.queues.insert(id, (fd, self.generation));
        self.arm(fd, queue_tag(id, self.generation))?;
        self.submit()
    }

    /// Stops watching queue `id`; a completion still in flight for it is
    /// ignored (its generation no longer matches).
    pub fn remove_queue(&mut self, id: u32) -> StackResult<()> {
        let Some((_, generation)) = self.queues.remove(&id) else {
            return Ok(());
        };
        let entry = opcode::PollRemove::new(queue_tag(id, generation))
            .build()
            .user_data(TAG_REMOVE);
        // SAFETY: a poll-remove entry carries only the target's user_data.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.unsubmitted = true;
        }
        self.submit()
    }

    /// Collects what fired since the last call, without waiting.
    pub fn reap(&mut self, out: &mut Vec<WakeSource>) -> StackResult<()> {
        let mut rearm = Vec::new();
        for cqe in self.ring.completion() {
            let tag = cqe.user_data();
            let more = io_uring::cqueue::more(cqe.flags());
            let source = match tag & TAG_KIND {
                0 if tag == TAG_DEVICE => Some((WakeSource::Device, self.device_fd, tag)),
                0 if tag == TAG_CONTROL => Some((WakeSource::Control, self.control_fd, tag)),
                TAG_QUEUE => {
                    let id = (tag & 0xffff_ffff) as u32;
                    match self.queues.get(&id) {
                        Some(&(fd, g)) if queue_tag(id, g) == tag => {
                            Some((WakeSource::AppQueue(id), fd, tag))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some((src, fd, tag)) = source {
                if cqe.result() >= 0 && !out.contains(&src) {
                    out.push(src);
                }
                // A multishot poll that ended (overflow, error) must be armed
                // again or its source goes silent.
                if !more {
                    rearm.push((fd, tag));
                }
            }
        }
        for (fd, tag) in rearm {
            self.arm(fd, tag)?;
        }
        self.submit()
    }

    /// Waits up to `timeout` for any source, then collects what fired.
    pub fn sleep(&mut self, timeout: Duration, out: &mut Vec<WakeSource>) -> StackResult<()> {
        self.submit()?;
        if self.ring.completion().is_empty() {
            let ts = types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(StackError::os("waiting on the sleep ring", e)),
            }
        }
        self.reap(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn efd() -> std::os::fd::OwnedFd {
        crate::sys::eventfd().unwrap()
    }

    #[test]
    fn a_signalled_source_wakes_the_sleep_and_is_named() {
        let (dev, ctl, q) = (efd(), efd(), efd());
        let mut s = Sleeper::new(dev.as_raw_fd(), ctl.as_raw_fd()).unwrap();
        s.add_queue(7, q.as_raw_fd()).unwrap();
        let mut out = Vec::new();
        crate::sys::eventfd_signal(&q);
        s.sleep(Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out, vec![WakeSource::AppQueue(7)]);
        crate::sys::eventfd_drain(&q);
        out.clear();
        crate::sys::eventfd_signal(&ctl);
        crate::sys::eventfd_signal(&dev);
        s.sleep(Duration::from_secs(5), &mut out).unwrap();
        assert!(
            out.contains(&WakeSource::Control) && out.contains(&WakeSource::Device),
            "{out:?}"
        );
    }

    #[test]
    fn nothing_fires_until_the_timeout() {
        let (dev, ctl) = (efd(), efd());
        let mut s = Sleeper::new(dev.as_raw_fd(), ctl.as_raw_fd()).unwrap();
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        s.sleep(Duration::from_millis(50), &mut out).unwrap();
        assert!(out.is_empty());
        assert!(t.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn a_removed_queue_no_longer_wakes() {
        let (dev, ctl, q) = (efd(), efd(), efd());
        let mut s = Sleeper::new(dev.as_raw_fd(), ctl.as_raw_fd()).unwrap();
        s.add_queue(1, q.as_raw_fd()).unwrap();
        s.remove_queue(1).unwrap();
        crate::sys::eventfd_signal(&q);
        let mut out = Vec::new();
        s.sleep(Duration::from_millis(50), &mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_source_that_fired_while_awake_is_reaped_later() {
        let (dev, ctl) = (efd(), efd());
        let mut s = Sleeper::new(dev.as_raw_fd(), ctl.as_raw_fd()).unwrap();
        crate::sys::eventfd_signal(&ctl);
        std::thread::sleep(Duration::from_millis(10));
        let mut out = Vec::new();
        s.reap(&mut out).unwrap();
        assert_eq!(out, vec![WakeSource::Control]);
    }
}
