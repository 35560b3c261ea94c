//! Which fds are this library's: a two-level table indexed by fd number,
//! read with atomic loads only (no lock, no allocation), so the check on
//! every pass-through call is safe anywhere, signal handlers included.
//!
//! An entry is 0 for a kernel fd, else a tagged index into the state's
//! slabs: a hoststack socket or an epoll instance that watches one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

const CHUNK: usize = 4096;
const CHUNKS: usize = 256;

/// Largest fd number the library can take over (higher fds stay kernel
/// fds: a socket created there is refused with `EMFILE`).
pub const MAX_FD: usize = CHUNK * CHUNKS;

static TABLE: [OnceLock<Box<[AtomicU32]>>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];

const EPOLL_TAG: u32 = 1 << 31;
const IDLE_TAG: u32 = 1 << 30;

/// What an fd is to the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A kernel fd: pass through.
    Kernel,
    /// A hoststack socket (its index in the state).
    Sock(u32),
    /// An epoll instance that watches hoststack sockets.
    Epoll(u32),
    /// An epoll instance that never watched one (waits pass through).
    EpollIdle(u32),
}

fn slot(fd: i32) -> Option<&'static AtomicU32> {
    let fd = usize::try_from(fd).ok()?;
    let chunk = TABLE.get(fd / CHUNK)?.get()?;
    chunk.get(fd % CHUNK)
}

/// What `fd` is (lock-free).
pub fn get(fd: i32) -> Entry {
    match slot(fd).map(|s| s.load(Ordering::Acquire)) {
        None | Some(0) => Entry::Kernel,
        Some(v) if v & EPOLL_TAG != 0 && v & IDLE_TAG != 0 => {
            Entry::EpollIdle((v & !(EPOLL_TAG | IDLE_TAG)) - 1)
        }
        Some(v) if v & EPOLL_TAG != 0 => Entry::Epoll((v & !EPOLL_TAG) - 1),
        Some(v) => Entry::Sock(v - 1),
    }
}

/// True when `fd` is a hoststack socket or an epoll fd the library
/// watches (lock-free).
pub fn is_ours(fd: i32) -> bool {
    get(fd) != Entry::Kernel
}

/// Records what `fd` is; `EMFILE` past [`MAX_FD`]. Only the state's
/// owner (under its lock) calls this.
pub fn set(fd: i32, e: Entry) -> Result<(), i32> {
    let n = usize::try_from(fd).map_err(|_| libc::EBADF)?;
    if n >= MAX_FD {
        return Err(libc::EMFILE);
    }
    let v = match e {
        Entry::Kernel => 0,
        Entry::Sock(i) => i + 1,
        Entry::Epoll(i) => (i + 1) | EPOLL_TAG,
        Entry::EpollIdle(i) => (i + 1) | EPOLL_TAG | IDLE_TAG,
    };
    let chunk = TABLE[n / CHUNK].get_or_init(|| (0..CHUNK).map(|_| AtomicU32::new(0)).collect());
    chunk[n % CHUNK].store(v, Ordering::Release);
    Ok(())
}

/// Forgets `fd` (it is a kernel fd again).
pub fn clear(fd: i32) {
    if let Some(s) = slot(fd) {
        s.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        assert_eq!(get(100_000), Entry::Kernel);
        set(100_000, Entry::Sock(7)).unwrap();
        assert_eq!(get(100_000), Entry::Sock(7));
        set(100_000, Entry::Epoll(0)).unwrap();
        assert_eq!(get(100_000), Entry::Epoll(0));
        set(100_000, Entry::EpollIdle(5)).unwrap();
        assert_eq!(get(100_000), Entry::EpollIdle(5));
        clear(100_000);
        assert_eq!(get(100_000), Entry::Kernel);
        assert_eq!(get(-1), Entry::Kernel);
        assert_eq!(set(MAX_FD as i32, Entry::Sock(0)), Err(libc::EMFILE));
    }
}
