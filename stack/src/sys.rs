//! The few system calls the stack makes itself (eventfds and poll), through
//! rustix's safe wrappers.

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::EventfdFlags;

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
