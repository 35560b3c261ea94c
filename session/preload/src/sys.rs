//! The C library underneath: the real functions this library interposes,
//! found with `dlsym(RTLD_NEXT)`, and small safe wrappers over the few
//! system calls the safe layers above need.
//!
//! This is one of the two modules that may use `unsafe` (with
//! [`crate::exports`]). Every real function is looked up once into an
//! atomic, all of them when the library is loaded (an `.init_array`
//! constructor) and lazily for a call that comes before that (another
//! library's constructor): the pass-through path is one atomic load and an
//! indirect call, with no allocation and no lock, so it is safe in early
//! initialisation and in signal handlers.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void, epoll_event, pollfd, size_t, sockaddr, socklen_t, ssize_t};

/// An errno value.
pub type Errno = c_int;

/// A result whose error is an errno value.
pub type SysResult<T> = Result<T, Errno>;

/// The calling thread's errno.
pub fn errno() -> Errno {
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the thread's lifetime.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's errno.
pub fn set_errno(e: Errno) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e }
}

/// Looks `name` up in the libraries after this one; 0 when absent.
fn resolve(slot: &AtomicUsize, name: &CStr) -> usize {
    let cached = slot.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name is always
    // sound; it returns a function address or null.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(f, Ordering::Relaxed);
    f
}

macro_rules! real_fns {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {
        /// The real C library functions (the next definition after ours).
        pub mod real {
            #![allow(clippy::missing_safety_doc)]
            use super::*;

            /// Where each function's address is cached (0: not yet looked up).
            #[allow(non_upper_case_globals)]
            mod slots {
                use std::sync::atomic::AtomicUsize;
                $( pub(super) static $name: AtomicUsize = AtomicUsize::new(0); )*
            }

            /// Looks every function up now, so that no later call (in a
            /// signal handler, say) has to call `dlsym`.
            pub fn resolve_all() {
                $( resolve(&slots::$name, name_of(concat!(stringify!($name), "\0"))); )*
            }

            $(
                /// The next definition of this function (usually libc's);
                /// `ENOSYS` and -1 when there is none.
                ///
                /// # Safety
                /// The caller upholds the C function's own contract.
                pub unsafe fn $name($($arg: $ty),*) -> $ret {
                    let f = resolve(&slots::$name, name_of(concat!(stringify!($name), "\0")));
                    if f == 0 {
                        set_errno(libc::ENOSYS);
                        return -1 as $ret;
                    }
                    // SAFETY: `f` is the address dlsym gave for this symbol,
                    // whose C prototype is this signature.
                    let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(f) };
                    // SAFETY: the caller's contract is the function's own.
                    unsafe { f($($arg),*) }
                }
            )*
        }
    };
}

/// A symbol name from its NUL-terminated spelling.
const fn name_of(s: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(s.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("bad symbol name"),
    }
}

real_fns! {
    socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    shutdown(fd: c_int, how: c_int) -> c_int;
    close(fd: c_int) -> c_int;
    close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int;
    getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t;
    write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t;
    pread(fd: c_int, buf: *mut c_void, n: size_t, off: libc::off_t) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t;
    recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t;
    sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int;
    sendfile(out: c_int, inp: c_int, off: *mut libc::off_t, n: size_t) -> ssize_t;
    sendfile64(out: c_int, inp: c_int, off: *mut libc::off64_t, n: size_t) -> ssize_t;
    poll(fds: *mut pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    ppoll(fds: *mut pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, t: *mut libc::timeval) -> c_int;
    pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, t: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    epoll_create(size: c_int) -> c_int;
    epoll_create1(flags: c_int) -> c_int;
    epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int;
    epoll_wait(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    epoll_pwait2(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(fd: c_int, new: c_int) -> c_int;
    dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
    fork() -> libc::pid_t;
    socketpair(domain: c_int, ty: c_int, protocol: c_int, sv: *mut c_int) -> c_int;
}

/// Runs when the library is loaded, before the program's `main`: every
/// real function is looked up once, so pass-through calls never need
/// `dlsym` later (in a signal handler, say).
#[used]
#[unsafe(link_section = ".init_array")]
static RESOLVE_AT_LOAD: extern "C" fn() = resolve_at_load;

extern "C" fn resolve_at_load() {
    real::resolve_all();
    let _ = resolve(&FCNTL, c"fcntl");
    let _ = resolve(&IOCTL, c"ioctl");
}

static FCNTL: AtomicUsize = AtomicUsize::new(0);
static IOCTL: AtomicUsize = AtomicUsize::new(0);

/// The real `fcntl` (C-variadic; its third argument is an int or a
/// pointer, passed as a machine word).
///
/// # Safety
/// As for `fcntl(2)`: `arg` is what `cmd` expects.
pub unsafe fn real_fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let f = resolve(&FCNTL, c"fcntl");
    if f == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: the address of libc's fcntl, which is C-variadic.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = unsafe { std::mem::transmute(f) };
    // SAFETY: the caller's contract.
    unsafe { f(fd, cmd, arg) }
}

/// The real `ioctl` (C-variadic, one word argument).
///
/// # Safety
/// As for `ioctl(2)`.
pub unsafe fn real_ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int {
    let f = resolve(&IOCTL, c"ioctl");
    if f == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: the address of libc's ioctl, which is C-variadic.
    let f: unsafe extern "C" fn(c_int, libc::c_ulong, ...) -> c_int =
        unsafe { std::mem::transmute(f) };
    // SAFETY: the caller's contract.
    unsafe { f(fd, req, arg) }
}

fn check(rc: c_int) -> SysResult<c_int> {
    if rc < 0 { Err(errno()) } else { Ok(rc) }
}

/// A kernel socket (the placeholder that reserves a hoststack fd).
pub fn socket(domain: c_int, ty: c_int, protocol: c_int) -> SysResult<RawFd> {
    // SAFETY: no pointers.
    check(unsafe { real::socket(domain, ty, protocol) })
}

/// Closes a kernel fd.
pub fn close(fd: RawFd) -> SysResult<()> {
    // SAFETY: no pointers; the caller owns `fd`.
    check(unsafe { real::close(fd) }).map(|_| ())
}

/// dup(2).
pub fn dup(fd: RawFd) -> SysResult<RawFd> {
    // SAFETY: no pointers.
    check(unsafe { real::dup(fd) })
}

/// dup3(2) (`flags` 0 or O_CLOEXEC); `dup2` semantics when `flags` is None.
pub fn dup_to(fd: RawFd, new: RawFd, flags: Option<c_int>) -> SysResult<RawFd> {
    // SAFETY: no pointers.
    check(unsafe {
        match flags {
            Some(f) => real::dup3(fd, new, f),
            None => real::dup2(fd, new),
        }
    })
}

/// fcntl(2) with an integer argument.
pub fn fcntl_int(fd: RawFd, cmd: c_int, arg: c_int) -> SysResult<c_int> {
    // SAFETY: the commands used with an int argument take an int.
    check(unsafe { real_fcntl(fd, cmd, arg as usize) })
}

/// setsockopt(2) with the option's bytes.
pub fn setsockopt(fd: RawFd, level: c_int, name: c_int, val: &[u8]) -> SysResult<()> {
    // SAFETY: `val` is valid for its length.
    check(unsafe { real::setsockopt(fd, level, name, val.as_ptr().cast(), val.len() as socklen_t) })
        .map(|_| ())
}

/// getsockopt(2) of an int option.
pub fn getsockopt_int(fd: RawFd, level: c_int, name: c_int) -> SysResult<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `len` are live locals of the sizes given.
    check(unsafe { real::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) })?;
    Ok(v)
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> SysResult<RawFd> {
    // SAFETY: no pointers.
    check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
}

/// Adds 1 to an eventfd (a full counter is already readable: ignored).
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local.
    unsafe { real::write(fd, (&raw const one).cast(), 8) };
}

/// Reads an eventfd's count to zero (non-blocking).
pub fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local.
    unsafe { real::read(fd, (&raw mut v).cast(), 8) };
}

/// epoll_ctl(2) on a kernel fd.
pub fn epoll_ctl(epfd: RawFd, op: c_int, fd: RawFd, events: u32, data: u64) -> SysResult<()> {
    let mut ev = epoll_event { events, u64: data };
    // SAFETY: `ev` is a live local.
    check(unsafe { real::epoll_ctl(epfd, op, fd, &mut ev) }).map(|_| ())
}

/// epoll_pwait(2) into `evs`.
pub fn epoll_wait(
    epfd: RawFd,
    evs: &mut [epoll_event],
    timeout: c_int,
    mask: Option<&libc::sigset_t>,
) -> SysResult<usize> {
    let mask = mask.map_or(std::ptr::null(), |m| m as *const _);
    // SAFETY: `evs` is valid for its length; `mask` is null or live.
    let n = unsafe {
        real::epoll_pwait(
            epfd,
            evs.as_mut_ptr(),
            evs.len().min(c_int::MAX as usize) as c_int,
            timeout,
            mask,
        )
    };
    check(n).map(|n| n as usize)
}

/// ppoll(2) over `fds` with a millisecond timeout (negative: forever).
pub fn poll(
    fds: &mut [pollfd],
    timeout_ms: c_int,
    mask: Option<&libc::sigset_t>,
) -> SysResult<usize> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::from(timeout_ms.max(0) / 1000),
        tv_nsec: libc::c_long::from(timeout_ms.max(0) % 1000) * 1_000_000,
    };
    let tsp = if timeout_ms < 0 {
        std::ptr::null()
    } else {
        &raw const ts
    };
    let mask = mask.map_or(std::ptr::null(), |m| m as *const _);
    // SAFETY: `fds` is valid for its length; `tsp` and `mask` null or live.
    let n = unsafe { real::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tsp, mask) };
    check(n).map(|n| n as usize)
}

/// pread(2), or read(2) with no offset.
pub fn read_file(fd: RawFd, buf: &mut [u8], offset: Option<i64>) -> SysResult<usize> {
    // SAFETY: `buf` is valid for its length.
    let n = unsafe {
        match offset {
            Some(o) => real::pread(fd, buf.as_mut_ptr().cast(), buf.len(), o),
            None => real::read(fd, buf.as_mut_ptr().cast(), buf.len()),
        }
    };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// Moves a file's offset (after a sendfile read more than it sent).
pub fn seek_cur(fd: RawFd, delta: i64) {
    // SAFETY: no pointers.
    unsafe { libc::lseek(fd, delta, libc::SEEK_CUR) };
}

/// bind(2) of a kernel socket (the kernel fallback).
pub fn bind(fd: RawFd, addr: &std::net::SocketAddr) -> SysResult<()> {
    let (sa, len) = crate::sockaddr::encode(addr);
    // SAFETY: `sa` holds `len` valid bytes of a sockaddr.
    check(unsafe { real::bind(fd, (&raw const sa).cast(), len) }).map(|_| ())
}

/// listen(2) of a kernel socket (the kernel fallback).
pub fn listen(fd: RawFd, backlog: c_int) -> SysResult<()> {
    // SAFETY: no pointers.
    check(unsafe { real::listen(fd, backlog) }).map(|_| ())
}

/// connect(2) of a kernel socket (the kernel fallback).
pub fn connect(fd: RawFd, addr: &std::net::SocketAddr) -> SysResult<()> {
    let (sa, len) = crate::sockaddr::encode(addr);
    // SAFETY: `sa` holds `len` valid bytes of a sockaddr.
    check(unsafe { real::connect(fd, (&raw const sa).cast(), len) }).map(|_| ())
}

/// Sends SIGPIPE to the calling thread (what a write on a closed stream
/// does without MSG_NOSIGNAL).
pub fn raise_sigpipe() {
    // SAFETY: no pointers.
    unsafe { libc::raise(libc::SIGPIPE) };
}

/// Registers the fork handlers (once).
pub fn register_atfork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: the handlers are plain functions that live forever.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// The process id.
pub fn getpid() -> i32 {
    // SAFETY: no pointers.
    unsafe { libc::getpid() }
}

/// Writes a whole message to stderr with the real `write` (no allocation
/// beyond the caller's, no recursion).
pub fn stderr(msg: &str) {
    // SAFETY: `msg` is valid for its length.
    unsafe { real::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Whether fds `a` and `b` refer to the same open file (kcmp(2)).
pub fn same_file(a: RawFd, b: RawFd) -> bool {
    let pid = getpid();
    // SAFETY: kcmp takes no pointers; KCMP_FILE is 0.
    unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, 0, a, b) == 0 }
}

/// The other fds of this process that refer to the same epoll instance
/// as `fd` (an epoll fd duplicated before the library watched it: mio
/// does that).
pub fn epoll_aliases(fd: RawFd) -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&other| other != fd)
        .filter(|&other| {
            std::fs::read_link(format!("/proc/self/fd/{other}"))
                .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter(|&other| same_file(fd, other))
        .collect()
}
