//! The socket calls on hoststack fds, in safe Rust. [`crate::exports`]
//! calls these only for fds the fd table says are ours (or, for the
//! calls that create fds, for the families and types we take); every
//! function returns the errno a kernel socket would give.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoststack_app::TransportProto;
use libc::{epoll_event, pollfd};

use crate::fdtable::{self, Entry};
use crate::sockaddr;
use crate::state::{self, Epoll, Inner, Kind, Listener, Reg, Sock, Waker, ev};
use crate::sys::{self, Errno, SysResult};

type Guard = std::sync::MutexGuard<'static, Option<Inner>>;

fn inner(g: &mut Guard) -> &mut Inner {
    g.get_or_insert_with(|| unreachable!("state::lock creates the state"))
}

fn sock_id(fd: RawFd) -> SysResult<u32> {
    match fdtable::get(fd) {
        Entry::Sock(s) => Ok(s),
        _ => Err(libc::EBADF),
    }
}

fn sock(st: &mut Inner, fd: RawFd) -> SysResult<(u32, &mut Sock)> {
    let sid = sock_id(fd)?;
    let s = st.socks.get_mut(sid as usize).ok_or(libc::EBADF)?;
    Ok((sid, s))
}

fn endpoint_addr(e: state::Endpoint) -> SocketAddr {
    SocketAddr::new(e.ip, e.port)
}

thread_local! {
    static WAKER: RefCell<Option<(i32, Arc<Waker>)>> = const { RefCell::new(None) };
    /// A staging buffer per thread (sendfile's file reads, datagrams
    /// scattered over several buffers), grown once, never zeroed again.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's staging buffer, at least `len` bytes.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0);
        }
        f(&mut s[..len])
    })
}

/// This thread's waker (a new one in a forked child).
fn thread_waker() -> SysResult<Arc<Waker>> {
    let pid = sys::getpid();
    WAKER.with(|w| {
        let mut w = w.borrow_mut();
        if let Some((p, k)) = w.as_ref() {
            if *p == pid {
                return Ok(k.clone());
            }
        }
        let k = Arc::new(Waker::new()?);
        *w = Some((pid, k.clone()));
        Ok(k)
    })
}

/// Whether `(domain, ty, protocol)` is a socket hoststack takes: a TCP
/// stream or a UDP datagram socket over IPv4 or IPv6.
pub fn takes(domain: i32, ty: i32, protocol: i32) -> bool {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    (domain == libc::AF_INET || domain == libc::AF_INET6)
        && ((base == libc::SOCK_STREAM && (protocol == 0 || protocol == libc::IPPROTO_TCP))
            || (base == libc::SOCK_DGRAM && (protocol == 0 || protocol == libc::IPPROTO_UDP)))
}

/// socket(2) for a type [`takes`] accepts: a kernel placeholder socket
/// reserves the fd (and holds the options the library does not use);
/// `None` when the library is disabled (the caller creates a kernel
/// socket).
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Option<SysResult<RawFd>> {
    let mut g = state::lock();
    let st = inner(&mut g);
    if st.disabled {
        return None;
    }
    Some((|| {
        let fd = sys::socket(domain, ty, protocol)?;
        let mut sock = Sock::new(domain, ty & libc::SOCK_NONBLOCK != 0);
        sock.dgram = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) == libc::SOCK_DGRAM;
        let sid = st.socks.insert(sock) as u32;
        if let Err(e) = fdtable::set(fd, Entry::Sock(sid)) {
            st.socks.remove(sid as usize);
            let _ = sys::close(fd);
            return Err(e);
        }
        Ok(fd)
    })())
}

/// Hands socket `fd` to the kernel (fallback): binds its placeholder
/// where it was bound and forgets it.
fn to_kernel(st: &mut Inner, fd: RawFd, sid: u32) -> SysResult<()> {
    let bound = st.socks.get(sid as usize).and_then(|s| s.bound);
    fdtable::clear(fd);
    st.release(sid);
    if let Some(b) = bound {
        sys::bind(fd, &b)?;
    }
    Ok(())
}

/// bind(2).
pub fn bind(fd: RawFd, addr: &[u8]) -> SysResult<()> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (sid, s) = sock(st, fd)?;
    let a = sockaddr::decode(addr, s.family)?;
    match s.kind {
        Kind::Fresh if s.dgram => match dgram_bind(st, sid, a) {
            Err(_) if st.disabled => {
                fdtable::clear(fd);
                st.release(sid);
                sys::bind(fd, &a)
            }
            r => r,
        },
        Kind::Fresh if s.bound.is_none() => {
            s.bound = Some(a);
            Ok(())
        }
        _ => Err(libc::EINVAL),
    }
}

/// Listens at the stack on `want` with `proto` (an ephemeral port for
/// port 0, as the kernel picks one); the handle and where it listens.
fn listen_at(
    st: &mut Inner,
    proto: TransportProto,
    want: SocketAddr,
) -> SysResult<(hoststack_app::ListenerHandle, SocketAddr)> {
    let Some(a) = st.attached.as_mut() else {
        return Err(libc::EIO);
    };
    let mut chosen = want;
    let result = if want.port() != 0 {
        a.worker
            .listen_proto(proto, want)
            .map_err(|e| state::errno_of(&e))
    } else {
        // Each pick starts elsewhere: in a process that binds port 0 often
        // the walk would otherwise retry the same taken ports every time.
        static PICKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = (sys::getpid() as u32).wrapping_mul(2_654_435_761)
            ^ clock
            ^ PICKS
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(40_503);
        let mut r = Err(libc::EADDRINUSE);
        for i in 0..64u32 {
            let port = 32768 + (seed.wrapping_add(i.wrapping_mul(7919)) % 28232) as u16;
            chosen.set_port(port);
            match a.worker.listen_proto(proto, chosen) {
                Ok(h) => {
                    r = Ok(h);
                    break;
                }
                Err(e) if state::errno_of(&e) == libc::EADDRINUSE => continue,
                Err(e) => {
                    r = Err(state::errno_of(&e));
                    break;
                }
            }
        }
        r
    };
    st.rearm();
    result.map(|h| (h, chosen))
}

/// Binds UDP socket `sid` at the stack (a UDP listener) and waits for its
/// datagram session.
fn dgram_bind(st: &mut Inner, sid: u32, want: SocketAddr) -> SysResult<()> {
    st.ensure_attached()?;
    let (h, local) = listen_at(st, TransportProto::Udp, want)?;
    if let Some(s) = st.socks.get_mut(sid as usize) {
        s.bound = Some(local);
        s.kind = Kind::Dgram(state::Dgram {
            handle: h,
            local,
            sessions: Vec::new(),
            peer: None,
            pending: Default::default(),
        });
    }
    st.listener_add(h, sid);
    // The stack hands the listener's session over at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        st.pump();
        if let Some(Kind::Dgram(d)) = st.socks.get(sid as usize).map(|s| &s.kind) {
            if !d.sessions.is_empty() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(libc::EIO);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// listen(2).
pub fn listen(fd: RawFd, backlog: i32) -> SysResult<()> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (sid, s) = sock(st, fd)?;
    if s.dgram {
        return Err(libc::EOPNOTSUPP);
    }
    match s.kind {
        Kind::Listener(_) => return Ok(()),
        Kind::Fresh | Kind::Failed => {}
        Kind::Inherited => return Err(libc::EOPNOTSUPP),
        _ => return Err(libc::EINVAL),
    }
    let family = s.family;
    let bound = s.bound;
    if let Err(e) = st.ensure_attached() {
        if st.disabled {
            to_kernel(st, fd, sid)?;
            return sys::listen(fd, backlog);
        }
        return Err(e);
    }
    let want = bound.unwrap_or_else(|| sockaddr::unspecified(family));
    let reuseport =
        sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT).is_ok_and(|v| v != 0);
    // SO_REUSEPORT on both: this sock shares its sibling's stack listener
    // (the process's connections are spread over the two).
    let sibling = if reuseport && want.port() != 0 {
        st.reuseport_sibling(want, family)
    } else {
        None
    };
    let (h, chosen) = match sibling {
        Some(h) => (h, want),
        None => listen_at(st, TransportProto::Tcp, want)?,
    };
    let s = st.socks.get_mut(sid as usize).ok_or(libc::EBADF)?;
    s.bound = Some(chosen);
    s.kind = Kind::Listener(Listener {
        handle: h,
        endpoint: chosen,
        active: true,
        used: false,
        parent_worker: None,
        backlog: Default::default(),
        reuseport,
        dead: false,
    });
    st.listener_add(h, sid);
    Ok(())
}

/// accept4(2): the new fd and the peer.
pub fn accept(fd: RawFd, flags: i32) -> SysResult<(RawFd, SocketAddr)> {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Err(libc::EINVAL);
    }
    loop {
        {
            let mut g = state::lock();
            let st = inner(&mut g);
            let sid = sock_id(fd)?;
            st.use_listener(sid);
            st.pump();
            let s = st.socks.get_mut(sid as usize).ok_or(libc::EBADF)?;
            let family = s.family;
            let nonblock = s.nonblock;
            if s.dgram {
                return Err(libc::EOPNOTSUPP);
            }
            let Kind::Listener(l) = &mut s.kind else {
                return Err(libc::EINVAL);
            };
            if l.dead {
                return Err(libc::ECONNABORTED);
            }
            if let Some(stream) = l.backlog.pop_front() {
                let ty = libc::SOCK_STREAM | (flags & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC));
                let pfd = match sys::socket(family, ty, 0) {
                    Ok(p) => p,
                    Err(e) => {
                        l.backlog.push_front(stream);
                        return Err(e);
                    }
                };
                let Some(sess) = stream.session.as_ref() else {
                    let _ = sys::close(pfd);
                    continue;
                };
                let remote = sockaddr::for_family(endpoint_addr(sess.remote()), family);
                let key = sess.handle().as_u64();
                let mut ns = Sock::new(family, flags & libc::SOCK_NONBLOCK != 0);
                ns.kind = Kind::Stream(stream);
                let nid = st.socks.insert(ns) as u32;
                if let Err(e) = fdtable::set(pfd, Entry::Sock(nid)) {
                    let _ = sys::close(pfd);
                    st.release(nid);
                    return Err(e);
                }
                st.by_session.insert(key, nid);
                return Ok((pfd, remote));
            }
            if nonblock {
                return Err(libc::EAGAIN);
            }
        }
        wait_fd(fd, libc::POLLIN, None)?;
    }
}

/// connect(2); `EINPROGRESS` for a non-blocking socket.
pub fn connect(fd: RawFd, addr: &[u8]) -> SysResult<()> {
    let timeout;
    {
        let mut g = state::lock();
        let st = inner(&mut g);
        let (sid, s) = sock(st, fd)?;
        if s.dgram {
            return dgram_connect(st, sid, addr);
        }
        let remote = sockaddr::decode(addr, s.family)?;
        match &s.kind {
            Kind::Connecting(_) => return Err(libc::EALREADY),
            Kind::Stream(_) => return Err(libc::EISCONN),
            Kind::Listener(_) => return Err(libc::EISCONN),
            Kind::Inherited | Kind::Dgram(_) => return Err(libc::EOPNOTSUPP),
            Kind::Fresh | Kind::Failed => {}
        }
        let nonblock = s.nonblock;
        timeout = s.snd_timeout;
        if let Err(e) = st.ensure_attached() {
            if st.disabled {
                to_kernel(st, fd, sid)?;
                return sys::connect(fd, &remote);
            }
            return Err(e);
        }
        let Some(a) = st.attached.as_mut() else {
            return Err(libc::EIO);
        };
        let req = a
            .worker
            .start_connect(TransportProto::Tcp, remote)
            .map_err(|e| state::errno_of(&e))?;
        st.connecting.insert(req, sid);
        if let Some(s) = st.socks.get_mut(sid as usize) {
            s.kind = Kind::Connecting(req);
            s.so_error = 0;
        }
        if nonblock {
            return Err(libc::EINPROGRESS);
        }
    }
    loop {
        match wait_fd(fd, libc::POLLOUT, timeout) {
            Ok(()) => {}
            Err(libc::EAGAIN) => return Err(libc::EINPROGRESS),
            Err(e) => return Err(e),
        }
        let mut g = state::lock();
        let st = inner(&mut g);
        let (_, s) = sock(st, fd)?;
        match s.kind {
            Kind::Stream(_) => return Ok(()),
            Kind::Failed => {
                let e = std::mem::take(&mut s.so_error);
                return Err(if e == 0 { libc::ECONNREFUSED } else { e });
            }
            _ => {}
        }
    }
}

/// connect(2) of a UDP socket: binds it if it is not, sets the default
/// destination and the only source it receives from (AF_UNSPEC clears
/// them).
fn dgram_connect(st: &mut Inner, sid: u32, addr: &[u8]) -> SysResult<()> {
    let family = st.socks.get(sid as usize).map_or(0, |s| s.family);
    let unspec =
        addr.len() >= 2 && i32::from(u16::from_ne_bytes([addr[0], addr[1]])) == libc::AF_UNSPEC;
    let peer = if unspec {
        None
    } else {
        Some(sockaddr::decode(addr, family)?)
    };
    if matches!(
        st.socks.get(sid as usize).map(|s| &s.kind),
        Some(Kind::Fresh)
    ) {
        if peer.is_none() {
            return Ok(());
        }
        dgram_bind(st, sid, sockaddr::unspecified(family))?;
    }
    match st.socks.get_mut(sid as usize).map(|s| &mut s.kind) {
        Some(Kind::Dgram(d)) => {
            d.peer = peer;
            Ok(())
        }
        Some(Kind::Inherited) => Err(libc::EOPNOTSUPP),
        _ => Err(libc::EINVAL),
    }
}

/// What a receive took: bytes copied, the datagram's whole length, and
/// its source (datagram sockets only).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes copied into the buffers.
    pub copied: usize,
    /// The datagram's length (more than `copied` when truncated).
    pub len: usize,
    /// Where it came from.
    pub from: Option<SocketAddr>,
}

/// recvfrom/recvmsg: a stream's bytes, or one datagram with its source.
pub fn recv_from(fd: RawFd, bufs: &mut [&mut [u8]], flags: i32) -> SysResult<Received> {
    let dgram = {
        let mut g = state::lock();
        let st = inner(&mut g);
        sock(st, fd)?.1.dgram
    };
    if !dgram {
        let n = recv(fd, bufs, flags)?;
        return Ok(Received {
            copied: n,
            len: n,
            from: None,
        });
    }
    if flags & MSG_PEEK != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    with_scratch(total, |tmp| recv_datagram_into(fd, bufs, flags, tmp))
}

fn recv_datagram_into(
    fd: RawFd,
    bufs: &mut [&mut [u8]],
    flags: i32,
    tmp: &mut [u8],
) -> SysResult<Received> {
    loop {
        let timeout;
        {
            let mut g = state::lock();
            let st = inner(&mut g);
            // A port bound for both families: every datagram goes to its
            // family's socket first, so that this one never reads the
            // other's (its Readable event may not have been taken yet).
            st.sort_datagrams(sock_id(fd)?);
            let (_, s) = sock(st, fd)?;
            let (nonblock, t) = wait_policy(s, flags, true);
            timeout = t;
            let family = s.family;
            match &mut s.kind {
                Kind::Dgram(d) => {
                    let peer = d.peer;
                    let mut next = d.pending.pop_front().map(|(data, dg)| {
                        let n = data.len().min(tmp.len());
                        tmp[..n].copy_from_slice(&data[..n]);
                        (n, dg)
                    });
                    let mut sessions = d.sessions.iter_mut();
                    loop {
                        let (n, dg) = match next.take() {
                            Some(x) => x,
                            None => {
                                let Some(sess) = sessions.next() else {
                                    break;
                                };
                                match sess.recv_datagram(tmp).map_err(|_| libc::EIO)? {
                                    Some(x) => x,
                                    None => continue,
                                }
                            }
                        };
                        {
                            if dg.remote.ip.is_ipv6() != (family == libc::AF_INET6)
                                && family == libc::AF_INET
                            {
                                continue;
                            }
                            let from = sockaddr::for_family(endpoint_addr(dg.remote), family);
                            if peer.is_some_and(|p| sockaddr::for_family(p, family) != from) {
                                continue;
                            }
                            let mut off = 0;
                            for b in bufs.iter_mut() {
                                let k = b.len().min(n - off);
                                b[..k].copy_from_slice(&tmp[off..off + k]);
                                off += k;
                                if off == n {
                                    break;
                                }
                            }
                            return Ok(Received {
                                copied: n,
                                len: dg.len,
                                from: Some(from),
                            });
                        }
                    }
                }
                Kind::Fresh => {}
                _ => return Err(libc::EOPNOTSUPP),
            }
            if nonblock {
                return Err(libc::EAGAIN);
            }
        }
        wait_fd(fd, libc::POLLIN, timeout)?;
    }
}

/// send/sendto/sendmsg: a stream's bytes (the address is ignored, as
/// Linux TCP does), or one datagram to `to` (or the connected peer).
pub fn send_to(fd: RawFd, bufs: &[&[u8]], flags: i32, to: Option<&[u8]>) -> SysResult<usize> {
    let (dgram, family) = {
        let mut g = state::lock();
        let st = inner(&mut g);
        let (_, s) = sock(st, fd)?;
        (s.dgram, s.family)
    };
    if !dgram {
        return send(fd, bufs, flags);
    }
    let payload: Vec<u8> = bufs.concat();
    if payload.len() > 65507 {
        return Err(libc::EMSGSIZE);
    }
    let dest = match to {
        Some(a) => Some(sockaddr::decode(a, family)?),
        None => None,
    };
    loop {
        let timeout;
        {
            let mut g = state::lock();
            let st = inner(&mut g);
            let (sid, s) = sock(st, fd)?;
            if matches!(s.kind, Kind::Fresh) {
                if dest.is_none() {
                    return Err(libc::EDESTADDRREQ);
                }
                dgram_bind(st, sid, sockaddr::unspecified(family))?;
            }
            let (_, s) = sock(st, fd)?;
            let (nonblock, t) = wait_policy(s, flags, false);
            timeout = t;
            let Kind::Dgram(d) = &mut s.kind else {
                return Err(libc::EOPNOTSUPP);
            };
            let Some(remote) = dest.or(d.peer) else {
                return Err(libc::EDESTADDRREQ);
            };
            let Some(sess) = d.sessions.first_mut() else {
                return Err(libc::EAGAIN);
            };
            let local = state::Endpoint {
                ip: sockaddr::unspecified(if remote.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                })
                .ip(),
                port: 0,
            };
            let r = state::Endpoint {
                ip: remote.ip(),
                port: remote.port(),
            };
            match sess.send_datagram(r, local, &payload) {
                Ok(true) => return Ok(payload.len()),
                Ok(false) => {
                    if sess.want_writable().map_err(|_| libc::EIO)? {
                        continue;
                    }
                }
                Err(_) => return Err(libc::EIO),
            }
            if nonblock {
                return Err(libc::EAGAIN);
            }
        }
        wait_fd(fd, libc::POLLOUT, timeout)?;
    }
}

/// Waits until `fd` (ours) polls `events`, up to `timeout`: `EAGAIN`
/// when it passes, `EINTR` on a signal.
fn wait_fd(fd: RawFd, events: i16, timeout: Option<Duration>) -> SysResult<()> {
    let mut p = [pollfd {
        fd,
        events,
        revents: 0,
    }];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    match poll(&mut p, ms, None)? {
        0 => Err(libc::EAGAIN),
        _ => Ok(()),
    }
}

/// Whether a call with `flags` on `s` must not block, and how long a
/// blocking one may wait (SO_RCVTIMEO for receives, SO_SNDTIMEO for sends).
fn wait_policy(s: &Sock, flags: i32, receive: bool) -> (bool, Option<Duration>) {
    let nonblock = s.nonblock || flags & libc::MSG_DONTWAIT != 0;
    (
        nonblock,
        if receive {
            s.rcv_timeout
        } else {
            s.snd_timeout
        },
    )
}

/// What a non-blocking call that moved `done` bytes returns when it
/// cannot move more.
fn would_block(done: usize) -> SysResult<usize> {
    if done > 0 {
        Ok(done)
    } else {
        Err(libc::EAGAIN)
    }
}

/// A blocking call that moved `done` bytes waits for more: `Some(done)`
/// when the wait ends it (timeout or signal after progress), `None` to go
/// on.
fn wait_more(
    fd: RawFd,
    events: i16,
    timeout: Option<Duration>,
    done: usize,
) -> SysResult<Option<usize>> {
    match wait_fd(fd, events, timeout) {
        Ok(()) => Ok(None),
        Err(e) if done > 0 && (e == libc::EAGAIN || e == libc::EINTR) => Ok(Some(done)),
        Err(e) => Err(e),
    }
}

/// recv flags we act on.
const MSG_PEEK: i32 = libc::MSG_PEEK;

/// recv(2) into several buffers (readv, recvmsg); returns the bytes read.
pub fn recv(fd: RawFd, bufs: &mut [&mut [u8]], flags: i32) -> SysResult<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let peek = flags & MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let mut done = 0usize;
    loop {
        let timeout;
        {
            let mut g = state::lock();
            let st = inner(&mut g);
            let (_, s) = sock(st, fd)?;
            let (nonblock, t) = wait_policy(s, flags, true);
            timeout = t;
            match &mut s.kind {
                Kind::Stream(t) => {
                    if t.reset && !t.reset_reported {
                        t.reset_reported = true;
                        if done == 0 {
                            return Err(libc::ECONNRESET);
                        }
                        return Ok(done);
                    }
                    if t.shut_rd || total == 0 {
                        return Ok(done);
                    }
                    if let Some(sess) = t.session.as_mut() {
                        let mut off = done;
                        for b in bufs.iter_mut() {
                            if off >= b.len() {
                                off -= b.len();
                                continue;
                            }
                            let dst = &mut b[off..];
                            off = 0;
                            let n = if peek {
                                sess.peek(done as u32, dst)
                            } else {
                                sess.read(dst)
                            }
                            .map_err(|_| libc::EIO)?;
                            done += n;
                            if n < dst.len() {
                                break;
                            }
                        }
                    }
                    if done > 0 && (!waitall || done == total) {
                        return Ok(done);
                    }
                    if t.peer_closed || t.reset || t.session.is_none() {
                        return Ok(done);
                    }
                }
                Kind::Connecting(_) => {}
                Kind::Inherited => return Err(libc::EOPNOTSUPP),
                _ => return Err(libc::ENOTCONN),
            }
            if nonblock {
                return would_block(done);
            }
        }
        if let Some(n) = wait_more(fd, libc::POLLIN, timeout, done)? {
            return Ok(n);
        }
    }
}

/// What a send on a broken stream gives, and whether SIGPIPE goes too.
fn broken(flags: i32) -> Errno {
    if flags & libc::MSG_NOSIGNAL == 0 {
        sys::raise_sigpipe();
    }
    libc::EPIPE
}

/// send(2) from several buffers (writev, sendmsg); returns bytes sent.
/// A blocking socket sends everything (or fails); a non-blocking one
/// what fits.
pub fn send(fd: RawFd, bufs: &[&[u8]], flags: i32) -> SysResult<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut done = 0usize;
    loop {
        let timeout;
        let mut pipe = false;
        {
            let mut g = state::lock();
            let st = inner(&mut g);
            let (_, s) = sock(st, fd)?;
            let (nonblock, t) = wait_policy(s, flags, false);
            timeout = t;
            match &mut s.kind {
                Kind::Stream(t) => {
                    if t.reset {
                        if !t.reset_reported {
                            t.reset_reported = true;
                            return if done > 0 {
                                Ok(done)
                            } else {
                                Err(libc::ECONNRESET)
                            };
                        }
                        pipe = true;
                    } else if t.shut_wr || t.session.is_none() {
                        pipe = true;
                    } else if let Some(sess) = t.session.as_mut() {
                        let mut off = done;
                        for b in bufs {
                            if off >= b.len() {
                                off -= b.len();
                                continue;
                            }
                            let src = &b[off..];
                            off = 0;
                            // An error means this write took nothing;
                            // what earlier ones took is reported.
                            let n = match sess.write(src) {
                                Ok(n) => n,
                                Err(_) if done > 0 => return Ok(done),
                                Err(_) => return Err(libc::EPIPE),
                            };
                            done += n;
                            if n < src.len() {
                                break;
                            }
                        }
                        if done == total {
                            return Ok(done);
                        }
                        // Full: ask to hear when room appears.
                        match sess.want_writable() {
                            Ok(true) => continue,
                            Ok(false) => t.want_tx = true,
                            Err(_) => return Err(libc::EPIPE),
                        }
                    }
                }
                Kind::Connecting(_) => {}
                Kind::Inherited => return Err(libc::EOPNOTSUPP),
                _ => pipe = true,
            }
            if !pipe && nonblock {
                return would_block(done);
            }
        }
        if pipe {
            // Outside the lock: a SIGPIPE handler may call back in.
            return if done > 0 {
                Ok(done)
            } else {
                Err(broken(flags))
            };
        }
        if let Some(n) = wait_more(fd, libc::POLLOUT, timeout, done)? {
            return Ok(n);
        }
    }
}

/// sendfile(2) to a hoststack socket: reads `in_fd` (at `*offset` when
/// given, advancing it; else at its file offset) into the tx fifo.
pub fn sendfile(
    out: RawFd,
    in_fd: RawFd,
    offset: Option<&mut i64>,
    count: usize,
) -> SysResult<usize> {
    with_scratch(count.clamp(1, 256 << 10), |buf| {
        sendfile_with(out, in_fd, offset, count, buf)
    })
}

fn sendfile_with(
    out: RawFd,
    in_fd: RawFd,
    offset: Option<&mut i64>,
    count: usize,
    buf: &mut [u8],
) -> SysResult<usize> {
    let mut off = offset.as_ref().map(|o| **o);
    let mut sent = 0usize;
    let result = loop {
        if sent == count {
            break Ok(sent);
        }
        let timeout;
        {
            let mut g = state::lock();
            let st = inner(&mut g);
            let (_, s) = sock(st, out)?;
            let nonblock = s.nonblock;
            timeout = s.snd_timeout;
            let Kind::Stream(t) = &mut s.kind else {
                break Err(libc::EPIPE);
            };
            if t.reset || t.shut_wr || t.session.is_none() {
                drop(g);
                break if sent > 0 { Ok(sent) } else { Err(broken(0)) };
            }
            let Some(sess) = t.session.as_mut() else {
                break Err(libc::EPIPE);
            };
            let room = sess.write_space().min(count - sent).min(buf.len());
            if room > 0 {
                let n = match sys::read_file(in_fd, &mut buf[..room], off) {
                    Ok(n) => n,
                    Err(e) => break if sent > 0 { Ok(sent) } else { Err(e) },
                };
                if n == 0 {
                    break Ok(sent);
                }
                let w = match sess.write(&buf[..n]) {
                    Ok(w) => w,
                    Err(_) => {
                        // Nothing of this chunk went: give its bytes back
                        // to the file and report what did.
                        if off.is_none() {
                            sys::seek_cur(in_fd, -(n as i64));
                        }
                        break if sent > 0 { Ok(sent) } else { Err(libc::EPIPE) };
                    }
                };
                if w < n && off.is_none() {
                    sys::seek_cur(in_fd, w as i64 - n as i64);
                }
                sent += w;
                if let Some(o) = off.as_mut() {
                    *o += w as i64;
                }
                continue;
            }
            match sess.want_writable() {
                Ok(true) => continue,
                Ok(false) => t.want_tx = true,
                Err(_) => break Err(libc::EPIPE),
            }
            if nonblock {
                break would_block(sent);
            }
        }
        match wait_more(out, libc::POLLOUT, timeout, sent) {
            Ok(None) => {}
            Ok(Some(n)) => break Ok(n),
            Err(e) => break Err(e),
        }
    };
    if let (Some(o), Some(v)) = (offset, off) {
        *o = v;
    }
    result
}

/// shutdown(2).
pub fn shutdown(fd: RawFd, how: i32) -> SysResult<()> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (sid, s) = sock(st, fd)?;
    if !matches!(how, libc::SHUT_RD | libc::SHUT_WR | libc::SHUT_RDWR) {
        return Err(libc::EINVAL);
    }
    let Kind::Stream(t) = &mut s.kind else {
        return Err(libc::ENOTCONN);
    };
    if how != libc::SHUT_WR {
        t.shut_rd = true;
    }
    if how != libc::SHUT_RD && !t.shut_wr {
        t.shut_wr = true;
        // The stack has no half-close: the session closes after its
        // queued data (reads then end).
        if let Some(sess) = t.session.take() {
            st.by_session.remove(&sess.handle().as_u64());
            let _ = sess.close();
        }
    }
    st.touch(sid);
    Ok(())
}

/// close(2) of one of our fds.
pub fn close(fd: RawFd) -> SysResult<()> {
    let mut g = state::lock();
    let st = inner(&mut g);
    match fdtable::get(fd) {
        Entry::Sock(sid) => {
            fdtable::clear(fd);
            let r = sys::close(fd);
            st.release(sid);
            r
        }
        Entry::Epoll(eid) | Entry::EpollIdle(eid) => {
            fdtable::clear(fd);
            let r = sys::close(fd);
            drop_epoll_fd(st, eid, fd);
            r
        }
        Entry::Kernel => sys::close(fd),
    }
}

fn drop_epoll_fd(st: &mut Inner, eid: u32, fd: RawFd) {
    let Some(ep) = st.epolls.get_mut(eid as usize) else {
        return;
    };
    ep.fds.retain(|f| *f != fd);
    if !ep.fds.is_empty() {
        return;
    }
    let ep = st.epolls.remove(eid as usize);
    for (sid, f) in ep.regs.keys() {
        if let Some(s) = st.socks.get_mut(*sid as usize) {
            s.watchers.retain(|w| *w != (eid, *f));
        }
    }
}

/// close_range(2): forgets our fds in the range first.
pub fn forget_range(first: u32, last: u32) {
    let mut g = state::lock();
    let st = inner(&mut g);
    let end = (last as usize).min(fdtable::MAX_FD - 1);
    for fd in first as usize..=end {
        match fdtable::get(fd as i32) {
            Entry::Sock(sid) => {
                fdtable::clear(fd as i32);
                st.release(sid);
            }
            Entry::Epoll(eid) | Entry::EpollIdle(eid) => {
                fdtable::clear(fd as i32);
                drop_epoll_fd(st, eid, fd as i32);
            }
            Entry::Kernel => {}
        }
    }
}

/// How a dup names its new fd.
#[derive(Debug, Clone, Copy)]
pub enum DupTo {
    /// dup(2).
    Any,
    /// fcntl(F_DUPFD / F_DUPFD_CLOEXEC).
    AtLeast(i32, bool),
    /// dup2(2) (`None`) or dup3(2) with its flags.
    Exactly(i32, Option<i32>),
}

/// dup, dup2, dup3, F_DUPFD where the old or the new fd is ours.
pub fn dup(fd: RawFd, to: DupTo) -> SysResult<RawFd> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let old = fdtable::get(fd);
    if let DupTo::Exactly(new, flags) = to {
        if new == fd {
            return match flags {
                Some(_) => Err(libc::EINVAL),
                None => sys::fcntl_int(fd, libc::F_GETFD, 0).map(|_| fd),
            };
        }
    }
    let newfd = match to {
        DupTo::Any => sys::dup(fd)?,
        DupTo::AtLeast(min, cloexec) => sys::fcntl_int(
            fd,
            if cloexec {
                libc::F_DUPFD_CLOEXEC
            } else {
                libc::F_DUPFD
            },
            min,
        )?,
        DupTo::Exactly(new, flags) => {
            let replaced = fdtable::get(new);
            let n = sys::dup_to(fd, new, flags)?;
            fdtable::clear(new);
            match replaced {
                Entry::Sock(sid) => st.release(sid),
                Entry::Epoll(eid) | Entry::EpollIdle(eid) => drop_epoll_fd(st, eid, new),
                Entry::Kernel => {}
            }
            n
        }
    };
    match old {
        Entry::Sock(sid) => {
            if let Some(s) = st.socks.get_mut(sid as usize) {
                s.refs += 1;
            }
        }
        Entry::Epoll(eid) | Entry::EpollIdle(eid) => {
            if let Some(ep) = st.epolls.get_mut(eid as usize) {
                ep.fds.push(newfd);
            }
        }
        Entry::Kernel => return Ok(newfd),
    }
    if let Err(e) = fdtable::set(newfd, old) {
        let _ = sys::close(newfd);
        match old {
            Entry::Sock(sid) => st.release(sid),
            Entry::Epoll(eid) | Entry::EpollIdle(eid) => drop_epoll_fd(st, eid, newfd),
            Entry::Kernel => {}
        }
        return Err(e);
    }
    Ok(newfd)
}

/// Records O_NONBLOCK (after the placeholder took it).
pub fn set_nonblock(fd: RawFd, on: bool) {
    let mut g = state::lock();
    let st = inner(&mut g);
    if let Ok((_, s)) = sock(st, fd) {
        s.nonblock = on;
    }
}

/// getsockname(2).
pub fn local_addr(fd: RawFd) -> SysResult<SocketAddr> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (_, s) = sock(st, fd)?;
    let fam = s.family;
    Ok(match &s.kind {
        Kind::Listener(l) => l.endpoint,
        Kind::Dgram(d) => d.local,
        Kind::Stream(t) => match &t.session {
            Some(x) => sockaddr::for_family(endpoint_addr(x.local()), fam),
            None => s.bound.unwrap_or_else(|| sockaddr::unspecified(fam)),
        },
        _ => s.bound.unwrap_or_else(|| sockaddr::unspecified(fam)),
    })
}

/// getpeername(2).
pub fn peer_addr(fd: RawFd) -> SysResult<SocketAddr> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (_, s) = sock(st, fd)?;
    let fam = s.family;
    match &s.kind {
        Kind::Stream(t) => match &t.session {
            Some(x) => Ok(sockaddr::for_family(endpoint_addr(x.remote()), fam)),
            None => Err(libc::ENOTCONN),
        },
        Kind::Dgram(d) => d
            .peer
            .map(|p| sockaddr::for_family(p, fam))
            .ok_or(libc::ENOTCONN),
        _ => Err(libc::ENOTCONN),
    }
}

/// getsockopt(2) options the library answers itself (`None`: ask the
/// placeholder).
pub fn getsockopt(fd: RawFd, level: i32, name: i32) -> Option<SysResult<i32>> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (_, s) = match sock(st, fd) {
        Ok(x) => x,
        Err(e) => return Some(Err(e)),
    };
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => Some(Ok(std::mem::take(&mut s.so_error))),
        (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
            Some(Ok(i32::from(matches!(s.kind, Kind::Listener(_)))))
        }
        _ => None,
    }
}

/// setsockopt(2), after the placeholder accepted it: what the library
/// itself keeps (receive and send timeouts).
pub fn setsockopt(fd: RawFd, level: i32, name: i32, val: &[u8]) {
    let mut g = state::lock();
    let st = inner(&mut g);
    let Ok((_, s)) = sock(st, fd) else {
        return;
    };
    if level == libc::SOL_SOCKET && (name == libc::SO_RCVTIMEO || name == libc::SO_SNDTIMEO) {
        let t = timeval(val);
        if name == libc::SO_RCVTIMEO {
            s.rcv_timeout = t;
        } else {
            s.snd_timeout = t;
        }
    }
}

fn timeval(b: &[u8]) -> Option<Duration> {
    if b.len() < 16 {
        return None;
    }
    let sec = i64::from_ne_bytes(b[0..8].try_into().ok()?);
    let usec = i64::from_ne_bytes(b[8..16].try_into().ok()?);
    let d = Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.max(0) as u64);
    (!d.is_zero()).then_some(d)
}

/// ioctl(FIONREAD): bytes waiting.
pub fn readable(fd: RawFd) -> SysResult<i32> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let (_, s) = sock(st, fd)?;
    match &s.kind {
        Kind::Stream(t) => Ok(t.session.as_ref().map_or(0, |x| x.readable()) as i32),
        Kind::Listener(_) => Err(libc::EINVAL),
        Kind::Dgram(d) => Ok(d.sessions.iter().map(|x| x.readable()).sum::<usize>() as i32),
        _ => Ok(0),
    }
}

// ---- readiness: poll, select, epoll ---------------------------------

fn request_tx(s: &mut Sock) -> bool {
    if let Kind::Stream(t) = &mut s.kind {
        if t.want_tx || t.shut_wr {
            return false;
        }
        if let Some(sess) = t.session.as_mut() {
            match sess.want_writable() {
                Ok(true) => return true,
                Ok(false) => t.want_tx = true,
                Err(_) => {}
            }
        }
    }
    false
}

/// poll(2)/ppoll(2) over fds of which some are ours.
pub fn poll(
    fds: &mut [pollfd],
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> SysResult<usize> {
    let deadline =
        (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    let waker = thread_waker()?;
    let mut kernel_hit = false;
    loop {
        let mut g = state::lock();
        let st = inner(&mut g);
        st.pump();
        let mut ready = 0usize;
        let mut ours = Vec::new();
        let mut kernel = Vec::new();
        for (i, p) in fds.iter_mut().enumerate() {
            p.revents = 0;
            if let Entry::Sock(sid) = fdtable::get(p.fd) {
                ours.push((i, sid));
                st.use_listener(sid);
                let Some(s) = st.socks.get_mut(sid as usize) else {
                    p.revents = libc::POLLNVAL;
                    ready += 1;
                    continue;
                };
                let want = p.events as u16 as u32 | ev::ERR | ev::HUP;
                let mut r = s.readiness() & want;
                if r & ev::OUT == 0 && p.events & libc::POLLOUT != 0 && request_tx(s) {
                    r = s.readiness() & want;
                }
                p.revents = r as u16 as i16;
                if r != 0 {
                    ready += 1;
                }
            } else {
                kernel.push(i);
            }
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if ready > 0 || kernel_hit || expired {
            if !kernel.is_empty() {
                let mut k: Vec<pollfd> = kernel.iter().map(|&i| fds[i]).collect();
                sys::poll(&mut k, 0, None)?;
                for (p, &i) in k.iter().zip(&kernel) {
                    fds[i].revents = p.revents;
                    if p.revents != 0 {
                        ready += 1;
                    }
                }
            }
            if ready > 0 || expired {
                return Ok(ready);
            }
            kernel_hit = false;
        }
        if !st.begin_sleep() {
            continue;
        }
        for (_, sid) in &ours {
            if let Some(s) = st.socks.get_mut(*sid as usize) {
                s.wakers.push(waker.clone());
            }
        }
        let mut k: Vec<pollfd> = kernel.iter().map(|&i| fds[i]).collect();
        let wfd = st.worker_fd();
        if let Some(w) = wfd {
            k.push(pollfd {
                fd: w,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let sfd = st.app_socket_fd();
        if let Some(f) = sfd {
            k.push(pollfd {
                fd: f,
                events: libc::POLLRDHUP,
                revents: 0,
            });
        }
        k.push(pollfd {
            fd: waker.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = st.sleep_ms(wait_ms(deadline));
        drop(g);
        let r = sys::poll(&mut k, ms, mask);
        let mut g = state::lock();
        let st = inner(&mut g);
        for (_, sid) in &ours {
            if let Some(s) = st.socks.get_mut(*sid as usize) {
                s.wakers.retain(|w| !Arc::ptr_eq(w, &waker));
            }
        }
        let n_kernel = kernel.len();
        let fired = wfd.is_some() && k[n_kernel].revents != 0;
        let hung_up = sfd.is_some() && k[n_kernel + usize::from(wfd.is_some())].revents != 0;
        st.end_sleep(fired);
        waker.clear();
        if hung_up {
            st.stack_hung_up();
        }
        r?;
        kernel_hit = k[..n_kernel].iter().any(|p| p.revents != 0);
    }
}

fn new_cookie(fd: RawFd) -> u64 {
    let t = Instant::now().elapsed().as_nanos() as u64;
    (0x6873_7461_636b_0000u64
        ^ (fd as u64).rotate_left(32)
        ^ t.rotate_left(17)
        ^ (sys::getpid() as u64).rotate_left(48))
        & !1
}

fn new_epoll(st: &mut Inner, epfd: RawFd) -> SysResult<u32> {
    let waker = Waker::new()?;
    let eid = st.epolls.insert(Epoll {
        fds: vec![epfd],
        waker,
        cookie: new_cookie(epfd),
        worker_fd: None,
        socket_fd: None,
        regs: Default::default(),
        ready: Default::default(),
        waiters: 0,
        woken: false,
    }) as u32;
    Ok(eid)
}

/// epoll_create(2) made `fd`: track it (and its duplicates) so that the
/// instance can watch hoststack sockets later. Its waits pass through
/// until then.
pub fn epoll_created(fd: RawFd) {
    let mut g = state::lock();
    let st = inner(&mut g);
    if let Ok(eid) = new_epoll(st, fd) {
        if fdtable::set(fd, Entry::EpollIdle(eid)).is_err() {
            st.epolls.remove(eid as usize);
        }
    }
}

/// The epoll state of `epfd`, armed (its waker in the kernel set, its
/// fds marked) when it first watches one of our sockets.
fn epoll_of(st: &mut Inner, epfd: RawFd) -> SysResult<u32> {
    let eid = match fdtable::get(epfd) {
        Entry::Epoll(eid) => return Ok(eid),
        Entry::EpollIdle(eid) => eid,
        Entry::Sock(_) => return Err(libc::EINVAL),
        Entry::Kernel => {
            // An epoll fd made behind our back (a raw system call): the
            // kernel says whether it is one; its earlier duplicates are
            // found through kcmp.
            let eid = new_epoll(st, epfd)?;
            for alias in sys::epoll_aliases(epfd) {
                if fdtable::get(alias) == Entry::Kernel {
                    if let Some(ep) = st.epolls.get_mut(eid as usize) {
                        ep.fds.push(alias);
                    }
                }
            }
            eid
        }
    };
    let ep = st.epolls.get_mut(eid as usize).ok_or(libc::EBADF)?;
    if let Err(e) = sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, ep.waker.fd(), ev::IN, ep.cookie) {
        if fdtable::get(epfd) == Entry::Kernel {
            st.epolls.remove(eid as usize);
        }
        return Err(e);
    }
    for &fd in &ep.fds {
        let _ = fdtable::set(fd, Entry::Epoll(eid));
    }
    // A thread may be asleep in a wait that passed through before this
    // instance watched a hoststack socket: wake it, so that it comes
    // back through the library (which hides the wakeup).
    ep.woken = true;
    ep.waker.wake();
    Ok(eid)
}

/// Puts the worker's eventfd (and the app socket, for a hang-up) in the
/// kernel set once the process has them.
fn epoll_arm_worker(st: &mut Inner, eid: u32) {
    let (Some(w), sock) = (st.worker_fd(), st.app_socket_fd()) else {
        return;
    };
    let Some(ep) = st.epolls.get_mut(eid as usize) else {
        return;
    };
    if ep.worker_fd != Some(w) {
        // Exclusive: one sleeping epoll wakes per event batch; it takes
        // the events and wakes the others that got work through their
        // wakers.
        if sys::epoll_ctl(
            ep.kfd(),
            libc::EPOLL_CTL_ADD,
            w,
            ev::IN | ev::EXCLUSIVE,
            ep.cookie | 1,
        )
        .is_ok()
        {
            ep.worker_fd = Some(w);
        }
    }
    if let Some(fd) = sock {
        if ep.socket_fd != Some(fd)
            && sys::epoll_ctl(ep.kfd(), libc::EPOLL_CTL_ADD, fd, ev::RDHUP, ep.cookie | 2).is_ok()
        {
            ep.socket_fd = Some(fd);
        }
    }
}

fn recookie(ep: &mut Epoll) {
    let c = new_cookie(ep.kfd() ^ ep.cookie as i32);
    let _ = sys::epoll_ctl(ep.kfd(), libc::EPOLL_CTL_MOD, ep.waker.fd(), ev::IN, c);
    if let Some(w) = ep.worker_fd {
        // An exclusive registration cannot be modified: re-add it.
        let _ = sys::epoll_ctl(ep.kfd(), libc::EPOLL_CTL_DEL, w, 0, 0);
        let _ = sys::epoll_ctl(
            ep.kfd(),
            libc::EPOLL_CTL_ADD,
            w,
            ev::IN | ev::EXCLUSIVE,
            c | 1,
        );
    }
    ep.cookie = c;
}

const EXCLUSIVE_OK: u32 = ev::IN
    | ev::OUT
    | ev::ERR
    | ev::HUP
    | ev::WAKEUP
    | ev::ET
    | ev::EXCLUSIVE
    | ev::RDNORM
    | ev::WRNORM;

/// epoll_ctl(2) where `fd` is ours: our own registration. `None` when the
/// kernel should do it (a kernel fd; we only keep our cookies unique).
pub fn epoll_ctl(
    epfd: RawFd,
    op: i32,
    fd: RawFd,
    event: Option<(u32, u64)>,
) -> Option<SysResult<()>> {
    let mut g = state::lock();
    let st = inner(&mut g);
    let Entry::Sock(sid) = fdtable::get(fd) else {
        if let Entry::Epoll(eid) = fdtable::get(epfd) {
            if let (Some(ep), Some((_, data))) = (st.epolls.get_mut(eid as usize), event) {
                if op != libc::EPOLL_CTL_DEL && ep.collides(data) {
                    recookie(ep);
                }
            }
        }
        return None;
    };
    Some((|| {
        if epfd == fd {
            return Err(libc::EINVAL);
        }
        let need_event = op != libc::EPOLL_CTL_DEL;
        let (events, data) = match (need_event, event) {
            (true, None) => return Err(libc::EFAULT),
            (_, e) => e.unwrap_or((0, 0)),
        };
        if !matches!(
            op,
            libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL
        ) {
            return Err(libc::EINVAL);
        }
        if events & ev::EXCLUSIVE != 0 && (op == libc::EPOLL_CTL_MOD || events & !EXCLUSIVE_OK != 0)
        {
            return Err(libc::EINVAL);
        }
        let eid = epoll_of(st, epfd)?;
        let key = (sid, fd);
        let ep = st.epolls.get_mut(eid as usize).ok_or(libc::EBADF)?;
        if ep.collides(data) {
            recookie(ep);
        }
        match op {
            libc::EPOLL_CTL_ADD => {
                if ep.regs.contains_key(&key) {
                    return Err(libc::EEXIST);
                }
                ep.regs.insert(
                    key,
                    Reg {
                        events,
                        data,
                        queued: false,
                        disabled: false,
                    },
                );
                if let Some(s) = st.socks.get_mut(sid as usize) {
                    s.watchers.push((eid, fd));
                }
            }
            libc::EPOLL_CTL_MOD => {
                let r = ep.regs.get_mut(&key).ok_or(libc::ENOENT)?;
                if r.events & ev::EXCLUSIVE != 0 {
                    return Err(libc::EINVAL);
                }
                r.events = events;
                r.data = data;
                r.disabled = false;
            }
            _ => {
                ep.regs.remove(&key).ok_or(libc::ENOENT)?;
                if let Some(s) = st.socks.get_mut(sid as usize) {
                    s.watchers.retain(|w| *w != (eid, fd));
                }
                return Ok(());
            }
        }
        st.use_listener(sid);
        epoll_arm_worker(st, eid);
        // Like the kernel: a registration that is ready now is reported.
        st.touch(sid);
        Ok(())
    })())
}

/// Moves ready registrations of epoll `eid` into `out`.
fn collect(st: &mut Inner, eid: u32, out: &mut [epoll_event]) -> usize {
    let Some(ep) = st.epolls.get_mut(eid as usize) else {
        return 0;
    };
    let mut n = 0;
    // Each listed entry once: a level-triggered one goes back to the tail.
    let mut rounds = ep.ready.len();
    while n < out.len() && rounds > 0 {
        rounds -= 1;
        let Some(key) = ep.ready.pop_front() else {
            break;
        };
        let Some(reg) = ep.regs.get_mut(&key) else {
            continue;
        };
        reg.queued = false;
        if reg.disabled {
            continue;
        }
        let Some(s) = st.socks.get_mut(key.0 as usize) else {
            continue;
        };
        let want = reg.events | ev::ERR | ev::HUP;
        let mut r = s.readiness() & want;
        if r & ev::OUT == 0 && reg.events & ev::OUT != 0 && request_tx(s) {
            r = s.readiness() & want;
        }
        if r == 0 {
            continue;
        }
        out[n] = epoll_event {
            events: r,
            u64: reg.data,
        };
        n += 1;
        if reg.events & ev::ONESHOT != 0 {
            reg.disabled = true;
        } else if reg.events & ev::ET == 0 {
            reg.queued = true;
            ep.ready.push_back(key);
        }
    }
    n
}

/// Drops our own fds' entries from kernel results; returns how many user
/// entries are left at the front.
fn filter_internal(st: &mut Inner, eid: u32, evs: &mut [epoll_event]) -> usize {
    let Some(ep) = st.epolls.get_mut(eid as usize) else {
        return evs.len();
    };
    let mut keep = 0;
    let mut hung_up = false;
    for i in 0..evs.len() {
        let d = evs[i].u64;
        if d == ep.cookie {
            ep.waker.clear();
            ep.woken = false;
            continue;
        }
        if d == ep.cookie | 1 {
            continue;
        }
        if d == ep.cookie | 2 {
            // The app socket hung up: watched no more (it stays so).
            if let Some(fd) = ep.socket_fd.take() {
                let _ = sys::epoll_ctl(ep.kfd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
            }
            hung_up = true;
            continue;
        }
        evs[keep] = evs[i];
        keep += 1;
    }
    if hung_up {
        st.stack_hung_up();
    }
    keep
}

/// After a wait on `epfd` that passed through (the instance was idle) and
/// returned `n` events: if the instance started watching hoststack
/// sockets meanwhile, our own wakeups are hidden and the wait goes on
/// through the library.
pub fn epoll_after_passthrough(
    epfd: RawFd,
    evs: &mut [epoll_event],
    n: usize,
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> SysResult<usize> {
    {
        let mut g = state::lock();
        let st = inner(&mut g);
        let Entry::Epoll(eid) = fdtable::get(epfd) else {
            return Ok(n);
        };
        let k = filter_internal(st, eid, &mut evs[..n]);
        if k > 0 {
            st.pump();
            let more = if k < evs.len() {
                collect(st, eid, &mut evs[k..])
            } else {
                0
            };
            return Ok(k + more);
        }
    }
    epoll_wait(epfd, evs, timeout_ms, mask)
}

/// epoll_wait(2) family on an epoll fd that watches our sockets.
pub fn epoll_wait(
    epfd: RawFd,
    evs: &mut [epoll_event],
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> SysResult<usize> {
    if evs.is_empty() {
        return Err(libc::EINVAL);
    }
    let deadline =
        (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    let mut kernel_hit = false;
    let mut spin_until: Option<Instant> = None;
    loop {
        let mut g = state::lock();
        let st = inner(&mut g);
        let Entry::Epoll(eid) = fdtable::get(epfd) else {
            drop(g);
            let n = sys::epoll_wait(epfd, evs, timeout_ms, mask)?;
            return epoll_after_passthrough(epfd, evs, n, timeout_ms, mask);
        };
        st.pump();
        epoll_arm_worker(st, eid);
        let cap = if evs.len() > 1 { evs.len() - 1 } else { 1 };
        let mine = collect(st, eid, &mut evs[..cap]);
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let kfd = st.epolls.get(eid as usize).map_or(epfd, |e| e.kfd());
        if mine > 0 || kernel_hit || expired {
            let mut total = mine;
            if mine < evs.len() {
                let k = sys::epoll_wait(kfd, &mut evs[mine..], 0, None)?;
                total += filter_internal(st, eid, &mut evs[mine..mine + k]);
            }
            if total > 0 || expired {
                return Ok(total);
            }
            kernel_hit = false;
        }
        // Under load the next event is microseconds away: look again for
        // a while (HOSTSTACK_SPIN_US) before paying for a sleep.
        if timeout_ms != 0 && !st.cfg.spin.is_zero() {
            let until = *spin_until.get_or_insert_with(|| Instant::now() + st.cfg.spin);
            if Instant::now() < until {
                drop(g);
                std::hint::spin_loop();
                continue;
            }
        }
        if !st.begin_sleep() {
            continue;
        }
        let cookie = match st.epolls.get_mut(eid as usize) {
            Some(ep) => {
                ep.waiters += 1;
                ep.cookie
            }
            None => 0,
        };
        let ms = st.sleep_ms(wait_ms(deadline));
        drop(g);
        let r = sys::epoll_wait(kfd, evs, ms, mask);
        let mut g = state::lock();
        let st = inner(&mut g);
        let fired = r
            .as_ref()
            .is_ok_and(|&n| evs[..n].iter().any(|e| e.u64 == cookie | 1));
        st.end_sleep(fired);
        if let Some(ep) = st.epolls.get_mut(eid as usize) {
            ep.waiters = ep.waiters.saturating_sub(1);
        }
        let n = r?;
        let k = filter_internal(st, eid, &mut evs[..n]);
        if k > 0 {
            st.pump();
            let more = if k < evs.len() {
                collect(st, eid, &mut evs[k..])
            } else {
                0
            };
            return Ok(k + more);
        }
    }
}

/// Milliseconds until `deadline` for poll(2) and epoll_wait(2), rounded up
/// (-1: no deadline).
fn wait_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
                + 1
        }
    }
}
