//! The C ABI: every symbol this library interposes. Each function asks
//! the fd table (lock-free) whether the fd is ours; a kernel fd goes
//! straight to the real function with no allocation and no lock, a
//! hoststack one to the safe code in [`crate::ops`] with the C pointers
//! turned into slices here.
//!
//! This is one of the two modules that may use `unsafe` (with
//! [`crate::sys`]): every pointer the caller passes is used only within
//! the bounds its C contract gives it.

#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use std::net::SocketAddr;

use libc::{
    c_int, c_uint, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr, nfds_t, off_t, off64_t,
    pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::fdtable::{self, Entry};
use crate::ops::{self, DupTo};
use crate::sockaddr as addr_codec;
use crate::sys::{self, SysResult, real, set_errno};

fn ret_int(r: SysResult<c_int>) -> c_int {
    match r {
        Ok(v) => v,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn ret_unit(r: SysResult<()>) -> c_int {
    ret_int(r.map(|()| 0))
}

fn ret_size(r: SysResult<usize>) -> ssize_t {
    match r {
        Ok(v) => v as ssize_t,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn is_sock(fd: c_int) -> bool {
    matches!(fdtable::get(fd), Entry::Sock(_))
}

/// The caller's socket address bytes.
unsafe fn addr_bytes<'a>(addr: *const sockaddr, len: socklen_t) -> SysResult<&'a [u8]> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller passes `len` readable bytes at `addr`.
    Ok(unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len as usize) })
}

/// Writes `a` as getsockname(2) does: at most `*len` bytes, `*len` set to
/// the full length.
unsafe fn put_addr(addr: *mut sockaddr, len: *mut socklen_t, a: &SocketAddr) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let (raw, full) = addr_codec::encode(a);
    // SAFETY: `len` is the caller's in/out length.
    let cap = unsafe { *len } as usize;
    let n = cap.min(full as usize);
    // SAFETY: the caller gave `cap` writable bytes at `addr`.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), addr.cast::<u8>(), n);
        *len = full;
    }
}

unsafe fn slice_mut<'a>(buf: *mut c_void, n: size_t) -> &'a mut [u8] {
    if buf.is_null() || n == 0 {
        return &mut [];
    }
    // SAFETY: the caller gave `n` writable bytes at `buf`.
    unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n) }
}

unsafe fn slice<'a>(buf: *const c_void, n: size_t) -> &'a [u8] {
    if buf.is_null() || n == 0 {
        return &[];
    }
    // SAFETY: the caller gave `n` readable bytes at `buf`.
    unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) }
}

unsafe fn iovecs_mut<'a>(iov: *const iovec, n: usize) -> Vec<&'a mut [u8]> {
    (0..n)
        .map(|i| {
            // SAFETY: the caller gave `n` iovecs, each describing its
            // own writable buffer.
            unsafe {
                let v = &*iov.add(i);
                slice_mut(v.iov_base, v.iov_len)
            }
        })
        .collect()
}

unsafe fn iovecs<'a>(iov: *const iovec, n: usize) -> Vec<&'a [u8]> {
    (0..n)
        .map(|i| {
            // SAFETY: as in `iovecs_mut`, readable buffers.
            unsafe {
                let v = &*iov.add(i);
                slice(v.iov_base, v.iov_len)
            }
        })
        .collect()
}

fn chk_fail() -> ! {
    sys::stderr("*** buffer overflow detected ***: terminated\n");
    std::process::abort()
}

// ---- sockets ----------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    if ops::takes(domain, ty, protocol) {
        if let Some(r) = ops::socket(domain, ty, protocol) {
            return ret_int(r);
        }
    }
    // SAFETY: pass-through.
    unsafe { real::socket(domain, ty, protocol) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    // SAFETY: pass-through (never a hoststack socket).
    unsafe { real::socketpair(domain, ty, protocol, sv) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::bind(fd, addr, len) };
    }
    // SAFETY: the caller's address.
    ret_unit(unsafe { addr_bytes(addr, len) }.and_then(|a| ops::bind(fd, a)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::listen(fd, backlog) };
    }
    ret_unit(ops::listen(fd, backlog))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::accept4(fd, addr, len, flags) };
    }
    match ops::accept(fd, flags) {
        Ok((nfd, peer)) => {
            // SAFETY: the caller's address buffer.
            unsafe { put_addr(addr, len, &peer) };
            nfd
        }
        Err(e) => ret_int(Err(e)),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::accept(fd, addr, len) };
    }
    // SAFETY: same contract.
    unsafe { accept4(fd, addr, len, 0) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::connect(fd, addr, len) };
    }
    // SAFETY: the caller's address.
    ret_unit(unsafe { addr_bytes(addr, len) }.and_then(|a| ops::connect(fd, a)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::shutdown(fd, how) };
    }
    ret_unit(ops::shutdown(fd, how))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !fdtable::is_ours(fd) {
        // SAFETY: pass-through.
        return unsafe { real::close(fd) };
    }
    ret_unit(ops::close(fd))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        ops::forget_range(first, last);
    }
    // SAFETY: pass-through.
    unsafe { real::close_range(first, last, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::getsockname(fd, addr, len) };
    }
    if addr.is_null() || len.is_null() {
        return ret_int(Err(libc::EFAULT));
    }
    match ops::local_addr(fd) {
        // SAFETY: the caller's buffer.
        Ok(a) => unsafe {
            put_addr(addr, len, &a);
            0
        },
        Err(e) => ret_int(Err(e)),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::getpeername(fd, addr, len) };
    }
    if addr.is_null() || len.is_null() {
        return ret_int(Err(libc::EFAULT));
    }
    match ops::peer_addr(fd) {
        // SAFETY: the caller's buffer.
        Ok(a) => unsafe {
            put_addr(addr, len, &a);
            0
        },
        Err(e) => ret_int(Err(e)),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if is_sock(fd) {
        if let Some(r) = ops::getsockopt(fd, level, name) {
            let v = match r {
                Ok(v) => v,
                Err(e) => return ret_int(Err(e)),
            };
            if val.is_null() || len.is_null() {
                return ret_int(Err(libc::EFAULT));
            }
            let bytes = v.to_ne_bytes();
            // SAFETY: the caller's in/out buffer of `*len` bytes.
            unsafe {
                let n = (*len as usize).min(4);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), val.cast::<u8>(), n);
                *len = n as socklen_t;
            }
            return 0;
        }
    }
    // SAFETY: pass-through (for ours: the placeholder socket holds the option).
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: pass-through; for ours the placeholder validates and keeps it.
    let rc = unsafe { real::setsockopt(fd, level, name, val, len) };
    if rc == 0 && is_sock(fd) {
        // SAFETY: the kernel just read `len` bytes at `val`.
        ops::setsockopt(fd, level, name, unsafe { slice(val, len as usize) });
    }
    rc
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    if fdtable::is_ours(fd) {
        match cmd {
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
                return ret_int(ops::dup(
                    fd,
                    DupTo::AtLeast(arg as c_int, cmd == libc::F_DUPFD_CLOEXEC),
                ));
            }
            libc::F_SETFL => {
                // SAFETY: F_SETFL takes an int.
                let rc = unsafe { sys::real_fcntl(fd, cmd, arg) };
                if rc == 0 {
                    ops::set_nonblock(fd, arg as c_int & libc::O_NONBLOCK != 0);
                }
                return rc;
            }
            _ => {}
        }
    }
    // SAFETY: pass-through with the caller's argument.
    unsafe { sys::real_fcntl(fd, cmd, arg) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { fcntl(fd, cmd, arg) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int {
    if is_sock(fd) {
        match req {
            libc::FIONREAD => {
                return match ops::readable(fd) {
                    Ok(n) if arg != 0 => {
                        // SAFETY: FIONREAD writes an int at `arg`.
                        unsafe { *(arg as *mut c_int) = n };
                        0
                    }
                    Ok(_) => ret_int(Err(libc::EFAULT)),
                    Err(e) => ret_int(Err(e)),
                };
            }
            libc::FIONBIO if arg != 0 => {
                // SAFETY: FIONBIO takes an int pointer; the placeholder keeps the flag.
                let rc = unsafe { sys::real_ioctl(fd, req, arg) };
                if rc == 0 {
                    // SAFETY: as above.
                    ops::set_nonblock(fd, unsafe { *(arg as *const c_int) } != 0);
                }
                return rc;
            }
            _ => {}
        }
    }
    // SAFETY: pass-through.
    unsafe { sys::real_ioctl(fd, req, arg) }
}

// ---- data -------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::read(fd, buf, n) };
    }
    // SAFETY: the caller's buffer.
    ret_size(ops::recv_from(fd, &mut [unsafe { slice_mut(buf, n) }], 0).map(|r| r.copied))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { read(fd, buf, n) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::readv(fd, iov, n) };
    }
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return ret_size(Err(libc::EINVAL));
    }
    // SAFETY: the caller's iovecs.
    let mut v = unsafe { iovecs_mut(iov, n as usize) };
    ret_size(ops::recv_from(fd, &mut v, 0).map(|r| r.copied))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::recv(fd, buf, n, flags) };
    }
    // SAFETY: the caller's buffer.
    ret_size(
        ops::recv_from(fd, &mut [unsafe { slice_mut(buf, n) }], flags).map(|r| received(&r, flags)),
    )
}

/// What a receive returns: the bytes copied, or with MSG_TRUNC a
/// datagram's whole length (as Linux does).
fn received(r: &ops::Received, flags: c_int) -> usize {
    if flags & libc::MSG_TRUNC != 0 {
        r.len
    } else {
        r.copied
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { recv(fd, buf, n, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::recvfrom(fd, buf, n, flags, addr, len) };
    }
    // SAFETY: the caller's buffer.
    let r = ops::recv_from(fd, &mut [unsafe { slice_mut(buf, n) }], flags);
    if let Ok(got) = &r {
        match got.from {
            // SAFETY: the caller's address buffer.
            Some(a) => unsafe { put_addr(addr, len, &a) },
            // A stream socket reports no source address (Linux sets 0).
            None if !addr.is_null() && !len.is_null() => {
                // SAFETY: the caller's length.
                unsafe { *len = 0 }
            }
            None => {}
        }
    }
    ret_size(r.map(|got| received(&got, flags)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

unsafe fn recvmsg_ours(fd: c_int, msg: *mut msghdr, flags: c_int) -> SysResult<usize> {
    if msg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's msghdr.
    let m = unsafe { &mut *msg };
    if m.msg_iovlen > libc::UIO_MAXIOV as usize {
        return Err(libc::EMSGSIZE);
    }
    // SAFETY: its iovecs.
    let mut v = unsafe { iovecs_mut(m.msg_iov, m.msg_iovlen) };
    let got = ops::recv_from(fd, &mut v, flags)?;
    match got.from {
        Some(a) if !m.msg_name.is_null() => {
            let mut l = m.msg_namelen;
            // SAFETY: the caller's name buffer of `msg_namelen` bytes.
            unsafe { put_addr(m.msg_name.cast(), &mut l, &a) };
            m.msg_namelen = l;
        }
        _ => m.msg_namelen = 0,
    }
    m.msg_controllen = 0;
    m.msg_flags = if got.len > got.copied {
        libc::MSG_TRUNC
    } else {
        0
    };
    Ok(received(&got, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::recvmsg(fd, msg, flags) };
    }
    // SAFETY: the caller's msghdr.
    ret_size(unsafe { recvmsg_ours(fd, msg, flags) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    n: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::recvmmsg(fd, msgs, n, flags, timeout) };
    }
    let mut done = 0;
    for i in 0..n as usize {
        let f = if i > 0 && flags & libc::MSG_WAITFORONE != 0 {
            (flags & !libc::MSG_WAITFORONE) | libc::MSG_DONTWAIT
        } else {
            flags & !libc::MSG_WAITFORONE
        };
        // SAFETY: the caller's array of `n` messages.
        let m = unsafe { &mut *msgs.add(i) };
        // SAFETY: its header.
        match unsafe { recvmsg_ours(fd, &mut m.msg_hdr, f) } {
            Ok(len) => {
                m.msg_len = len as c_uint;
                done += 1;
                if len == 0 {
                    break;
                }
            }
            Err(e) if done == 0 => return ret_int(Err(e)),
            Err(_) => break,
        }
    }
    done
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::write(fd, buf, n) };
    }
    // SAFETY: the caller's buffer.
    ret_size(ops::send_to(fd, &[unsafe { slice(buf, n) }], 0, None))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::writev(fd, iov, n) };
    }
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return ret_size(Err(libc::EINVAL));
    }
    // SAFETY: the caller's iovecs.
    let v = unsafe { iovecs(iov, n as usize) };
    ret_size(ops::send_to(fd, &v, 0, None))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::send(fd, buf, n, flags) };
    }
    // SAFETY: the caller's buffer.
    ret_size(ops::send_to(fd, &[unsafe { slice(buf, n) }], flags, None))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::sendto(fd, buf, n, flags, addr, len) };
    }
    // A stream ignores the address (as Linux TCP does); a datagram goes
    // there.
    let to = if addr.is_null() {
        None
    } else {
        // SAFETY: the caller's address of `len` bytes.
        match unsafe { addr_bytes(addr, len) } {
            Ok(a) => Some(a),
            Err(e) => return ret_size(Err(e)),
        }
    };
    // SAFETY: the caller's buffer.
    ret_size(ops::send_to(fd, &[unsafe { slice(buf, n) }], flags, to))
}

unsafe fn sendmsg_ours(fd: c_int, msg: *const msghdr, flags: c_int) -> SysResult<usize> {
    if msg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's msghdr.
    let m = unsafe { &*msg };
    if m.msg_iovlen > libc::UIO_MAXIOV as usize {
        return Err(libc::EMSGSIZE);
    }
    // SAFETY: its iovecs.
    let v = unsafe { iovecs(m.msg_iov, m.msg_iovlen) };
    let to = if m.msg_name.is_null() || m.msg_namelen == 0 {
        None
    } else {
        // SAFETY: the caller's name of `msg_namelen` bytes.
        Some(unsafe { addr_bytes(m.msg_name.cast(), m.msg_namelen) }?)
    };
    ops::send_to(fd, &v, flags, to)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::sendmsg(fd, msg, flags) };
    }
    // SAFETY: the caller's msghdr.
    ret_size(unsafe { sendmsg_ours(fd, msg, flags) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int {
    if !is_sock(fd) {
        // SAFETY: pass-through.
        return unsafe { real::sendmmsg(fd, msgs, n, flags) };
    }
    let mut done = 0;
    for i in 0..n as usize {
        // SAFETY: the caller's array of `n` messages.
        let m = unsafe { &mut *msgs.add(i) };
        // SAFETY: its header.
        match unsafe { sendmsg_ours(fd, &m.msg_hdr, flags) } {
            Ok(len) => {
                m.msg_len = len as c_uint;
                done += 1;
            }
            Err(e) if done == 0 => return ret_int(Err(e)),
            Err(_) => break,
        }
    }
    done
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t {
    if !is_sock(out) && !is_sock(inp) {
        // SAFETY: pass-through.
        return unsafe { real::sendfile(out, inp, off, n) };
    }
    if is_sock(inp) {
        return ret_size(Err(libc::EINVAL));
    }
    // SAFETY: `off` is null or the caller's offset.
    let off = unsafe { off.as_mut() };
    ret_size(ops::sendfile(out, inp, off, n))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out: c_int,
    inp: c_int,
    off: *mut off64_t,
    n: size_t,
) -> ssize_t {
    if !is_sock(out) && !is_sock(inp) {
        // SAFETY: pass-through.
        return unsafe { real::sendfile64(out, inp, off, n) };
    }
    if is_sock(inp) {
        return ret_size(Err(libc::EINVAL));
    }
    // SAFETY: `off` is null or the caller's offset.
    let off = unsafe { off.as_mut() };
    ret_size(ops::sendfile(out, inp, off, n))
}

// ---- readiness ------------------------------------------------------

unsafe fn any_sock_in(fds: *const pollfd, n: nfds_t) -> bool {
    if fds.is_null() {
        return false;
    }
    // SAFETY: the caller's array of `n` pollfds.
    (0..n as usize).any(|i| is_sock(unsafe { (*fds.add(i)).fd }))
}

fn ts_ms(ts: *const timespec) -> c_int {
    // SAFETY: null or the caller's timespec.
    match unsafe { ts.as_ref() } {
        None => -1,
        Some(t) => {
            let ms = t.tv_sec.saturating_mul(1000) + (t.tv_nsec + 999_999) / 1_000_000;
            ms.clamp(0, i64::from(c_int::MAX)) as c_int
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the caller's array.
    if !unsafe { any_sock_in(fds, n) } {
        // SAFETY: pass-through.
        return unsafe { real::poll(fds, n, timeout) };
    }
    // SAFETY: the caller's array of `n` pollfds.
    let v = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    ret_int(ops::poll(v, timeout, None).map(|n| n as c_int))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if fdslen / std::mem::size_of::<pollfd>() < n as usize {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { poll(fds, n, timeout) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's array.
    if !unsafe { any_sock_in(fds, n) } {
        // SAFETY: pass-through.
        return unsafe { real::ppoll(fds, n, ts, mask) };
    }
    // SAFETY: the caller's array of `n` pollfds; `mask` null or live.
    let (v, m) = unsafe {
        (
            std::slice::from_raw_parts_mut(fds, n as usize),
            mask.as_ref(),
        )
    };
    ret_int(ops::poll(v, ts_ms(ts), m).map(|n| n as c_int))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
    fdslen: size_t,
) -> c_int {
    if fdslen / std::mem::size_of::<pollfd>() < n as usize {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { ppoll(fds, n, ts, mask) }
}

unsafe fn fd_isset(fd: c_int, set: *const fd_set) -> bool {
    // SAFETY: null or the caller's fd_set; fd < FD_SETSIZE checked by the caller.
    !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
}

unsafe fn select_ours(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout_ms: c_int,
    mask: Option<&sigset_t>,
) -> SysResult<c_int> {
    let mut p = Vec::new();
    for fd in 0..nfds.min(libc::FD_SETSIZE as c_int) {
        let mut events = 0;
        // SAFETY: the caller's sets.
        unsafe {
            if fd_isset(fd, r) {
                events |= libc::POLLIN;
            }
            if fd_isset(fd, w) {
                events |= libc::POLLOUT;
            }
            if fd_isset(fd, e) {
                events |= libc::POLLPRI;
            }
        }
        if events != 0 {
            p.push(pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    ops::poll(&mut p, timeout_ms, mask)?;
    if p.iter().any(|x| x.revents & libc::POLLNVAL != 0) {
        return Err(libc::EBADF);
    }
    // SAFETY: the caller's sets, cleared then filled with what is ready.
    unsafe {
        for s in [r, w, e] {
            if !s.is_null() {
                libc::FD_ZERO(s);
            }
        }
        let mut count = 0;
        for x in &p {
            if x.events & libc::POLLIN != 0
                && x.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            {
                libc::FD_SET(x.fd, r);
                count += 1;
            }
            if x.events & libc::POLLOUT != 0 && x.revents & (libc::POLLOUT | libc::POLLERR) != 0 {
                libc::FD_SET(x.fd, w);
                count += 1;
            }
            if x.events & libc::POLLPRI != 0 && x.revents & libc::POLLPRI != 0 {
                libc::FD_SET(x.fd, e);
                count += 1;
            }
        }
        Ok(count)
    }
}

unsafe fn any_sock_in_sets(
    nfds: c_int,
    r: *const fd_set,
    w: *const fd_set,
    e: *const fd_set,
) -> bool {
    (0..nfds.min(libc::FD_SETSIZE as c_int)).any(|fd| {
        // SAFETY: the caller's sets.
        is_sock(fd) && unsafe { fd_isset(fd, r) || fd_isset(fd, w) || fd_isset(fd, e) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    t: *mut timeval,
) -> c_int {
    // SAFETY: the caller's sets.
    if nfds < 0 || !unsafe { any_sock_in_sets(nfds, r, w, e) } {
        // SAFETY: pass-through.
        return unsafe { real::select(nfds, r, w, e, t) };
    }
    // SAFETY: null or the caller's timeval.
    let ms = match unsafe { t.as_ref() } {
        None => -1,
        Some(tv) => {
            (tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000).clamp(0, i64::from(c_int::MAX)) as c_int
        }
    };
    // SAFETY: the caller's sets.
    ret_int(unsafe { select_ours(nfds, r, w, e, ms, None) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    t: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's sets.
    if nfds < 0 || !unsafe { any_sock_in_sets(nfds, r, w, e) } {
        // SAFETY: pass-through.
        return unsafe { real::pselect(nfds, r, w, e, t, mask) };
    }
    // SAFETY: the caller's sets; `mask` null or live.
    ret_int(unsafe { select_ours(nfds, r, w, e, ts_ms(t), mask.as_ref()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    if is_sock(fd) || matches!(fdtable::get(epfd), Entry::Epoll(_)) {
        // SAFETY: null or the caller's event.
        let e = unsafe { event.as_ref() }.map(|e| (e.events, e.u64));
        if let Some(r) = ops::epoll_ctl(epfd, op, fd, e) {
            return ret_unit(r);
        }
    }
    // SAFETY: pass-through.
    unsafe { real::epoll_ctl(epfd, op, fd, event) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: pass-through.
    let fd = unsafe { real::epoll_create(size) };
    if fd >= 0 {
        ops::epoll_created(fd);
    }
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: pass-through.
    let fd = unsafe { real::epoll_create1(flags) };
    if fd >= 0 {
        ops::epoll_created(fd);
    }
    fd
}

/// A wait on an idle epoll instance: the kernel's, then hidden wakeups
/// filtered if the instance started watching a hoststack socket meanwhile.
unsafe fn epoll_wait_idle(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: pass-through.
    let n = unsafe { real::epoll_pwait(epfd, evs, max, timeout, mask) };
    if n <= 0 || !matches!(fdtable::get(epfd), Entry::Epoll(_)) {
        return n;
    }
    // SAFETY: the kernel filled `n` of the caller's `max` events; `mask`
    // null or live.
    let (v, m) = unsafe {
        (
            std::slice::from_raw_parts_mut(evs, max as usize),
            mask.as_ref(),
        )
    };
    ret_int(ops::epoll_after_passthrough(epfd, v, n as usize, timeout, m).map(|n| n as c_int))
}

unsafe fn epoll_wait_ours(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    if max <= 0 || evs.is_null() {
        return ret_int(Err(if max <= 0 { libc::EINVAL } else { libc::EFAULT }));
    }
    // SAFETY: the caller's array of `max` events; `mask` null or live.
    let (v, m) = unsafe {
        (
            std::slice::from_raw_parts_mut(evs, max as usize),
            mask.as_ref(),
        )
    };
    ret_int(ops::epoll_wait(epfd, v, timeout, m).map(|n| n as c_int))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    if matches!(fdtable::get(epfd), Entry::EpollIdle(_)) {
        // SAFETY: same contract.
        return unsafe { epoll_wait_idle(epfd, evs, max, timeout, std::ptr::null()) };
    }
    if !matches!(fdtable::get(epfd), Entry::Epoll(_)) {
        // SAFETY: pass-through.
        return unsafe { real::epoll_wait(epfd, evs, max, timeout) };
    }
    // SAFETY: same contract.
    unsafe { epoll_wait_ours(epfd, evs, max, timeout, std::ptr::null()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    if matches!(fdtable::get(epfd), Entry::EpollIdle(_)) {
        // SAFETY: same contract.
        return unsafe { epoll_wait_idle(epfd, evs, max, timeout, mask) };
    }
    if !matches!(fdtable::get(epfd), Entry::Epoll(_)) {
        // SAFETY: pass-through.
        return unsafe { real::epoll_pwait(epfd, evs, max, timeout, mask) };
    }
    // SAFETY: same contract.
    unsafe { epoll_wait_ours(epfd, evs, max, timeout, mask) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    if matches!(fdtable::get(epfd), Entry::EpollIdle(_)) {
        // SAFETY: same contract.
        return unsafe { epoll_wait_idle(epfd, evs, max, ts_ms(timeout), mask) };
    }
    if !matches!(fdtable::get(epfd), Entry::Epoll(_)) {
        // SAFETY: pass-through.
        return unsafe { real::epoll_pwait2(epfd, evs, max, timeout, mask) };
    }
    // SAFETY: same contract.
    unsafe { epoll_wait_ours(epfd, evs, max, ts_ms(timeout), mask) }
}

// ---- fds and processes ------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    if !fdtable::is_ours(fd) {
        // SAFETY: pass-through.
        return unsafe { real::dup(fd) };
    }
    ret_int(ops::dup(fd, DupTo::Any))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    if !fdtable::is_ours(fd) && !fdtable::is_ours(new) {
        // SAFETY: pass-through.
        return unsafe { real::dup2(fd, new) };
    }
    ret_int(ops::dup(fd, DupTo::Exactly(new, None)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    if !fdtable::is_ours(fd) && !fdtable::is_ours(new) {
        // SAFETY: pass-through.
        return unsafe { real::dup3(fd, new, flags) };
    }
    ret_int(ops::dup(fd, DupTo::Exactly(new, Some(flags))))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // The fork handlers (registered with the state) do the work.
    // SAFETY: pass-through.
    unsafe { real::fork() }
}

/// vfork is fork here: a vfork child shares its parent's memory, and a
/// child that touched a hoststack fd (closing it before exec, say) would
/// change the parent's state. POSIX lets vfork be fork.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    // SAFETY: pass-through to fork.
    unsafe { real::fork() }
}
