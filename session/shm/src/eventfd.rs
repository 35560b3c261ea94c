//! `EventFd`: the eventfd(2) kernel object that wakes a sleeping side of a
//! message queue.
//!
//! This module owns the eventfd file descriptor and the raw syscalls on it
//! (`eventfd`, `read`, `write`, `poll`, `fcntl`); it is one of the few
//! modules of the crate allowed to use `unsafe`. Every eventfd here is
//! created with `EFD_CLOEXEC | EFD_NONBLOCK`, so no call on it ever blocks
//! except the explicit [`EventFd::wait`].
//!
//! Semantics, as the kernel defines them: the eventfd holds a 64-bit
//! counter. A write adds to it, a read returns the whole counter and resets
//! it to zero, and the fd is readable (for poll, epoll, io_uring) whenever
//! the counter is non-zero. So any number of [`EventFd::notify`] calls
//! before a [`EventFd::drain`] collapse into a single wakeup.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::{ShmError, ShmResult};

/// An eventfd(2) counter used as a wakeup signal between threads or
/// processes.
///
/// Non-blocking and close-on-exec. The fd can be sent to another process
/// (SCM_RIGHTS) and rebuilt there with [`EventFd::from_owned_fd`].
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a new eventfd with a zero counter,
    /// `EFD_CLOEXEC | EFD_NONBLOCK`.
    pub fn new() -> ShmResult<Self> {
        // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(ShmError::os("eventfd create", &io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Wraps an eventfd received from elsewhere (e.g. over a unix socket).
    ///
    /// The fd is switched to non-blocking mode (the flag lives in the shared
    /// open file description, which the sender created non-blocking anyway).
    /// The kernel gives no cheap way to check that the fd really is an
    /// eventfd; a wrong fd makes later calls fail with an `Os` error, never
    /// misbehave.
    pub fn from_owned_fd(fd: OwnedFd) -> ShmResult<Self> {
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL on an fd we own; no pointers involved.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            return Err(ShmError::os(
                "eventfd get flags",
                &io::Error::last_os_error(),
            ));
        }
        if flags & libc::O_NONBLOCK == 0 {
            // SAFETY: F_SETFL on an fd we own, with an integer argument.
            let rc = unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) };
            if rc < 0 {
                return Err(ShmError::os(
                    "eventfd set non-blocking",
                    &io::Error::last_os_error(),
                ));
            }
        }
        Ok(Self { fd })
    }

    /// Signals the eventfd (adds 1 to its counter).
    ///
    /// If the counter is already at its maximum the write would block
    /// (EAGAIN); the fd is then already readable, so this counts as success.
    pub fn notify(&self) -> ShmResult<()> {
        let one: u64 = 1;
        loop {
            // SAFETY: writes exactly 8 bytes from a live local u64 to an fd
            // this struct owns.
            let rc = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    (&raw const one).cast::<libc::c_void>(),
                    std::mem::size_of::<u64>(),
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => return Err(ShmError::os("eventfd notify", &err)),
            }
        }
    }

    /// Reads and resets the counter; returns how many notifications were
    /// pending (0 if none).
    pub fn drain(&self) -> ShmResult<u64> {
        let mut count: u64 = 0;
        loop {
            // SAFETY: reads at most 8 bytes into a live local u64 from an fd
            // this struct owns.
            let rc = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&raw mut count).cast::<libc::c_void>(),
                    std::mem::size_of::<u64>(),
                )
            };
            if rc >= 0 {
                return Ok(count);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(ShmError::os("eventfd drain", &err)),
            }
        }
    }

    /// Blocks until the eventfd is readable or `timeout` passes (`None`:
    /// wait forever). Returns whether it is readable. Does not drain it.
    pub fn wait(&self, timeout: Option<Duration>) -> ShmResult<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let timeout_ms = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Round up so a sub-millisecond wait does not spin.
                    let ms = left.as_nanos().div_ceil(1_000_000);
                    i32::try_from(ms).unwrap_or(i32::MAX)
                }
            };
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, count 1, living across the call.
            let rc = unsafe { libc::poll(&raw mut pollfd, 1, timeout_ms) };
            if rc > 0 {
                if pollfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                    return Err(ShmError::os(
                        "eventfd wait",
                        &io::Error::from(io::ErrorKind::InvalidInput),
                    ));
                }
                return Ok(pollfd.revents & libc::POLLIN != 0);
            }
            if rc == 0 {
                return Ok(false);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(ShmError::os("eventfd wait", &err));
            }
        }
    }

    /// Duplicates the fd (close-on-exec); both handles signal the same
    /// counter.
    pub fn try_clone(&self) -> ShmResult<Self> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| ShmError::os("eventfd clone", &e))?;
        Ok(Self { fd })
    }

    /// Gives up the wrapper and returns the owned fd (e.g. to send it).
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn drain_returns_zero_when_nothing_pending() {
        let efd = EventFd::new().unwrap();
        assert_eq!(efd.drain().unwrap(), 0);
    }

    #[test]
    fn notifications_collapse_into_one_drain() {
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        efd.notify().unwrap();
        efd.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), 3);
        assert_eq!(efd.drain().unwrap(), 0);
    }

    #[test]
    fn notify_on_saturated_counter_is_success() {
        let efd = EventFd::new().unwrap();
        // Push the counter to its maximum (u64::MAX - 1) by hand.
        let max: u64 = u64::MAX - 1;
        // SAFETY: writes 8 bytes from a live local u64 to an fd we own.
        let rc = unsafe {
            libc::write(
                efd.as_raw_fd(),
                (&raw const max).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        assert_eq!(rc, 8);
        efd.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), max);
    }

    #[test]
    fn fd_is_cloexec_and_nonblocking() {
        let efd = EventFd::new().unwrap();
        // SAFETY: fcntl queries on an fd we own.
        let fd_flags = unsafe { libc::fcntl(efd.as_raw_fd(), libc::F_GETFD) };
        // SAFETY: as above.
        let fl_flags = unsafe { libc::fcntl(efd.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert_ne!(fl_flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn wait_times_out_when_not_signalled() {
        let efd = EventFd::new().unwrap();
        let start = Instant::now();
        assert!(!efd.wait(Some(Duration::from_millis(20))).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wait_returns_immediately_when_signalled_and_does_not_drain() {
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        assert!(efd.wait(Some(Duration::from_secs(5))).unwrap());
        assert_eq!(efd.drain().unwrap(), 1);
    }

    #[test]
    fn wait_wakes_on_notify_from_another_thread() {
        let efd = Arc::new(EventFd::new().unwrap());
        let signaller = {
            let efd = Arc::clone(&efd);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(10));
                efd.notify().unwrap();
            })
        };
        assert!(efd.wait(None).unwrap());
        signaller.join().unwrap();
    }

    #[test]
    fn clone_signals_the_same_counter() {
        let efd = EventFd::new().unwrap();
        let clone = efd.try_clone().unwrap();
        assert_ne!(efd.as_raw_fd(), clone.as_raw_fd());
        clone.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), 1);
    }

    #[test]
    fn from_owned_fd_makes_a_received_fd_nonblocking() {
        // SAFETY: eventfd without EFD_NONBLOCK, like a peer might send.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let efd = EventFd::from_owned_fd(owned).unwrap();
        // Would block forever if the fd were still blocking.
        assert_eq!(efd.drain().unwrap(), 0);
        efd.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), 1);
    }
}
