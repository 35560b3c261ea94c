//! The few system calls the stack makes itself (eventfds and poll), through
//! rustix's safe wrappers.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use crate::error::{StackError, StackResult};

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> StackResult<OwnedFd> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| StackError::os("creating an eventfd", e.into()))
}

/// Adds one to an eventfd (already signalled is fine).
pub(crate) fn eventfd_signal(fd: impl AsFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Clears an eventfd.
pub(crate) fn eventfd_drain(fd: impl AsFd) {
    let mut v = [0u8; 8];
    let _ = rustix::io::read(fd, &mut v);
}

/// Waits up to `timeout` for any of `fds` to turn readable; true if one did.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> StackResult<bool> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(&mut pfds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(true),
        Err(e) => Err(StackError::os("poll", e.into())),
    }
}
