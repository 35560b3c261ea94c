//! The kernel's servers, written the way a careful user writes them: one
//! epoll event loop per worker thread, each pinned to its core, nonblocking
//! sockets, `TCP_NODELAY` on every connection, `SO_REUSEPORT` listeners
//! (one per worker) when there are several workers, `recvmmsg`/`sendmmsg`
//! in batches for UDP. No sleeps and no thread per connection anywhere.
//!
//! Two modes:
//! - default: `epoll_wait` blocks until something is ready;
//! - busy polling: `epoll_wait` with a zero timeout in a loop, so the
//!   worker never sleeps (the kernel's `net.core.busy_read`/`busy_poll`
//!   and idle CPUs polling are held by the benchmark around it, see
//!   [`crate::tuning`]).
//!
//! SIGTERM or SIGINT stop it: the signal writes to a pipe every worker's
//! epoll watches, so even a blocked worker wakes at once; no periodic
//! wakeup exists.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::io::Errno as RErrno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

/// What the server does with TCP (or Unix stream) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Send back what arrives.
    Echo,
    /// Read and drop.
    Discard,
}

/// Where a stream listener listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// A stream listener and what it does.
    pub stream: Option<(Listen, StreamKind)>,
    /// A UDP echo on this address.
    pub udp_echo: Option<SocketAddr>,
    /// Spin in `epoll_wait(0)` instead of blocking.
    pub busy_poll: bool,
    /// One worker per core, pinned (empty: one unpinned worker).
    pub cores: Vec<usize>,
    /// `SO_REUSEPORT` listeners even with one worker, so several server
    /// processes can share the port (a process may hold only as many
    /// connections as its open-file limit allows).
    pub reuseport: bool,
}

/// Totals over the server's life.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ServerTotals {
    /// Stream connections accepted.
    pub connections: u64,
    /// Stream bytes received.
    pub bytes: u64,
    /// UDP datagrams echoed.
    pub datagrams: u64,
}

const STOP: u64 = 0;
const STREAM_LISTENER: u64 = 1;
const UDP: u64 = 2;
/// Connections are keyed by fd + this.
const CONN_BASE: u64 = 16;
const UDP_BATCH: usize = 64;

fn io(e: RErrno, what: &str) -> anyhow::Error {
    anyhow!(std::io::Error::from(e)).context(what.to_string())
}

fn family(a: &SocketAddr) -> AddressFamily {
    if a.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    }
}

fn stream_listener(l: &Listen, reuseport: bool) -> Result<OwnedFd> {
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let fd = match l {
        Listen::Tcp(a) => {
            let fd = rustix::net::socket_with(family(a), SocketType::STREAM, flags, None)
                .map_err(|e| io(e, "TCP socket"))?;
            sockopt::set_socket_reuseaddr(&fd, true).map_err(|e| io(e, "SO_REUSEADDR"))?;
            if reuseport {
                sockopt::set_socket_reuseport(&fd, true).map_err(|e| io(e, "SO_REUSEPORT"))?;
            }
            rustix::net::bind(&fd, a).map_err(|e| io(e, &format!("binding {a}")))?;
            fd
        }
        Listen::Unix(p) => {
            if !reuseport {
                let _ = std::fs::remove_file(p);
            }
            let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)
                .map_err(|e| io(e, "Unix socket"))?;
            let addr = rustix::net::SocketAddrUnix::new(p.as_path())
                .map_err(|e| io(e, "Unix socket path"))?;
            rustix::net::bind(&fd, &addr)
                .map_err(|e| io(e, &format!("binding {}", p.display())))?;
            fd
        }
    };
    rustix::net::listen(&fd, 4096).map_err(|e| io(e, "listen"))?;
    Ok(fd)
}

fn udp_socket(a: &SocketAddr, reuseport: bool) -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        family(a),
        SocketType::DGRAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io(e, "UDP socket"))?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true).map_err(|e| io(e, "SO_REUSEPORT"))?;
    }
    // Room for a burst: a careful user raises the receive buffer.
    let _ = sockopt::set_socket_recv_buffer_size_force(&fd, 4 << 20);
    rustix::net::bind(&fd, a).map_err(|e| io(e, &format!("binding UDP {a}")))?;
    Ok(fd)
}

struct Conn {
    fd: OwnedFd,
    /// Echo bytes the socket did not take yet.
    pending: Vec<u8>,
}

/// One worker's sockets and loop.
struct Worker {
    ep: OwnedFd,
    stop: UnixStream,
    listener: Option<OwnedFd>,
    kind: StreamKind,
    udp: Option<OwnedFd>,
    conns: HashMap<RawFd, Conn>,
    busy_poll: bool,
    totals: ServerTotals,
}

impl Worker {
    fn new(opts: &ServerOpts, reuseport: bool, stop: UnixStream) -> Result<Self> {
        let ep = epoll::create(CreateFlags::CLOEXEC).map_err(|e| io(e, "epoll_create"))?;
        stop.set_nonblocking(true)?;
        epoll::add(&ep, &stop, EventData::new_u64(STOP), EventFlags::IN)
            .map_err(|e| io(e, "epoll add"))?;
        let (listener, kind) = match &opts.stream {
            Some((l, k)) => (Some(stream_listener(l, reuseport)?), *k),
            None => (None, StreamKind::Echo),
        };
        if let Some(l) = &listener {
            epoll::add(&ep, l, EventData::new_u64(STREAM_LISTENER), EventFlags::IN)
                .map_err(|e| io(e, "epoll add"))?;
        }
        let udp = opts
            .udp_echo
            .as_ref()
            .map(|a| udp_socket(a, reuseport))
            .transpose()?;
        if let Some(u) = &udp {
            epoll::add(&ep, u, EventData::new_u64(UDP), EventFlags::IN)
                .map_err(|e| io(e, "epoll add"))?;
        }
        Ok(Self {
            ep,
            stop,
            listener,
            kind,
            udp,
            conns: HashMap::new(),
            busy_poll: opts.busy_poll,
            totals: ServerTotals::default(),
        })
    }

    fn run(mut self) -> Result<ServerTotals> {
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout = self.busy_poll.then_some(&zero);
        let mut events: Vec<Event> = Vec::with_capacity(256);
        let mut udp = UdpBufs::new();
        let mut buf = vec![
            0u8;
            match self.kind {
                StreamKind::Discard => 256 << 10,
                StreamKind::Echo => 64 << 10,
            }
        ];
        loop {
            events.clear();
            match epoll::wait(&self.ep, spare_capacity(&mut events), timeout) {
                Ok(_) => {}
                Err(RErrno::INTR) => continue,
                Err(e) => return Err(io(e, "epoll_wait")),
            }
            for ev in &events {
                let (key, flags) = (ev.data.u64(), ev.flags);
                match key {
                    STOP => {
                        let mut b = [0u8; 16];
                        let _ = std::io::Read::read(&mut &self.stop, &mut b);
                        return Ok(self.totals);
                    }
                    STREAM_LISTENER => self.accept()?,
                    UDP => self.udp_echo(&mut udp)?,
                    k => self.conn_ready(k, flags, &mut buf)?,
                }
            }
        }
    }

    fn accept(&mut self) -> Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        loop {
            match rustix::net::accept_with(l, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    // Not a TCP socket (Unix): nothing to set.
                    let _ = sockopt::set_tcp_nodelay(&fd, true);
                    let raw = fd.as_raw_fd();
                    epoll::add(
                        &self.ep,
                        &fd,
                        EventData::new_u64(CONN_BASE + raw as u64),
                        EventFlags::IN,
                    )
                    .map_err(|e| io(e, "epoll add"))?;
                    self.conns.insert(
                        raw,
                        Conn {
                            fd,
                            pending: Vec::new(),
                        },
                    );
                    self.totals.connections += 1;
                }
                Err(RErrno::AGAIN) => return Ok(()),
                Err(RErrno::INTR | RErrno::CONNABORTED) => {}
                // Out of descriptors or memory: serve what is open.
                Err(RErrno::MFILE | RErrno::NFILE | RErrno::NOBUFS | RErrno::NOMEM) => {
                    return Ok(());
                }
                Err(e) => return Err(io(e, "accept")),
            }
        }
    }

    fn close(&mut self, raw: RawFd) {
        if let Some(c) = self.conns.remove(&raw) {
            let _ = epoll::delete(&self.ep, &c.fd);
        }
    }

    fn conn_ready(&mut self, key: u64, flags: EventFlags, buf: &mut [u8]) -> Result<()> {
        let raw = (key - CONN_BASE) as RawFd;
        let kind = self.kind;
        let Some(c) = self.conns.get_mut(&raw) else {
            return Ok(());
        };
        if flags.contains(EventFlags::OUT) && !c.pending.is_empty() {
            match rustix::io::write(&c.fd, &c.pending) {
                Ok(n) => {
                    c.pending.drain(..n);
                }
                Err(RErrno::AGAIN | RErrno::INTR) => {}
                Err(_) => {
                    self.close(raw);
                    return Ok(());
                }
            }
            if c.pending.is_empty() {
                epoll::modify(&self.ep, &c.fd, EventData::new_u64(key), EventFlags::IN)
                    .map_err(|e| io(e, "epoll modify"))?;
            } else {
                return Ok(());
            }
        }
        // One read per event, a second only when the buffer came back full
        // (level-triggered epoll reports what is left).
        loop {
            match rustix::io::read(&c.fd, &mut *buf) {
                Ok(0) => {
                    self.close(raw);
                    return Ok(());
                }
                Ok(n) => {
                    self.totals.bytes += n as u64;
                    if kind == StreamKind::Echo && !echo_stream(&self.ep, c, key, &buf[..n])? {
                        self.close(raw);
                        return Ok(());
                    }
                    if n < buf.len() || !c.pending.is_empty() {
                        return Ok(());
                    }
                }
                Err(RErrno::AGAIN) => return Ok(()),
                Err(RErrno::INTR) => {}
                Err(_) => {
                    self.close(raw);
                    return Ok(());
                }
            }
        }
    }

    fn udp_echo(&mut self, b: &mut UdpBufs) -> Result<()> {
        let Some(u) = &self.udp else {
            return Ok(());
        };
        let fd = u.as_raw_fd();
        let cmsgs: [ControlMessage<'_>; 0] = [];
        loop {
            b.got.clear();
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                    b.bufs.iter_mut().map(|x| [IoSliceMut::new(x)]).collect();
                match recvmmsg(
                    fd,
                    &mut b.rhdrs,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(r) => b.got.extend(r.map(|m| (m.bytes, m.address))),
                    Err(Errno::EAGAIN | Errno::EINTR) => return Ok(()),
                    Err(e) => return Err(anyhow!(e).context("recvmmsg")),
                }
            }
            if b.got.is_empty() {
                return Ok(());
            }
            let iovs: Vec<[IoSlice<'_>; 1]> = b
                .got
                .iter()
                .zip(&b.bufs)
                .map(|((n, _), x)| [IoSlice::new(&x[..*n])])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = b.got.iter().map(|(_, a)| *a).collect();
            let mut off = 0;
            // sendmmsg may take fewer than offered; a full socket buffer
            // drops the rest, as a UDP server's would.
            while off < iovs.len() {
                match sendmmsg(
                    fd,
                    &mut b.shdrs,
                    &iovs[off..],
                    &addrs[off..],
                    cmsgs,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(r) => {
                        let n = r.count();
                        self.totals.datagrams += n as u64;
                        if n == 0 {
                            break;
                        }
                        off += n;
                    }
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            if b.got.len() < UDP_BATCH {
                return Ok(());
            }
        }
    }
}

/// A worker's UDP batch: buffers and message headers, allocated once.
struct UdpBufs {
    bufs: Vec<[u8; 2048]>,
    rhdrs: MultiHeaders<SockaddrStorage>,
    shdrs: MultiHeaders<SockaddrStorage>,
    got: Vec<(usize, Option<SockaddrStorage>)>,
}

impl UdpBufs {
    fn new() -> Self {
        Self {
            bufs: vec![[0u8; 2048]; UDP_BATCH],
            rhdrs: MultiHeaders::preallocate(UDP_BATCH, None),
            shdrs: MultiHeaders::preallocate(UDP_BATCH, None),
            got: Vec::with_capacity(UDP_BATCH),
        }
    }
}

/// Writes `data` back; what the socket does not take waits for EPOLLOUT.
/// False when the connection failed.
fn echo_stream(ep: &OwnedFd, c: &mut Conn, key: u64, data: &[u8]) -> Result<bool> {
    if !c.pending.is_empty() {
        c.pending.extend_from_slice(data);
        return Ok(true);
    }
    let mut off = 0;
    while off < data.len() {
        match rustix::io::write(&c.fd, &data[off..]) {
            Ok(n) => off += n,
            Err(RErrno::INTR) => {}
            Err(RErrno::AGAIN) => {
                c.pending.extend_from_slice(&data[off..]);
                epoll::modify(
                    ep,
                    &c.fd,
                    EventData::new_u64(key),
                    EventFlags::IN | EventFlags::OUT,
                )
                .map_err(|e| io(e, "epoll modify"))?;
                return Ok(true);
            }
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// Raises this process's open-file limit to its hard limit (a process
/// cannot go beyond it without CAP_SYS_RESOURCE).
fn raise_open_files() -> Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        setrlimit(Resource::Nofile, l).map_err(|e| io(e, "raising RLIMIT_NOFILE"))?;
    }
    Ok(())
}

/// The hard limit of open files per process (None: unlimited).
pub fn open_files_hard_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum
}

/// The body of `hoststack-bench kernel-server`: builds every worker (so
/// any bind error shows before `ready`), prints `ready`, serves until
/// SIGTERM/SIGINT, then prints its totals as one JSON line.
pub fn serve(opts: &ServerOpts) -> Result<ServerTotals> {
    if opts.stream.is_none() && opts.udp_echo.is_none() {
        bail!("nothing to serve");
    }
    let cores: Vec<Option<usize>> = if opts.cores.is_empty() {
        vec![None]
    } else {
        opts.cores.iter().copied().map(Some).collect()
    };
    let reuseport = opts.reuseport || cores.len() > 1;
    raise_open_files()?;
    let mut workers = Vec::new();
    for _ in &cores {
        let (r, w) = UnixStream::pair().context("stop pipe")?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(sig, w.try_clone()?)
                .context("registering the stop signal")?;
        }
        workers.push(Worker::new(opts, reuseport, r)?);
    }
    let threads: Vec<_> = workers
        .into_iter()
        .zip(cores)
        .enumerate()
        .map(|(i, (w, core))| {
            std::thread::Builder::new()
                .name(format!("kserver-{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                            bail!("cannot pin a server worker to core {c}");
                        }
                    }
                    w.run()
                })
                .context("spawning a server worker")
        })
        .collect::<Result<_>>()?;
    println!("ready");
    let mut totals = ServerTotals::default();
    for t in threads {
        let w = t
            .join()
            .map_err(|_| anyhow!("a server worker panicked"))??;
        totals.connections += w.connections;
        totals.bytes += w.bytes;
        totals.datagrams += w.datagrams;
    }
    if let Some((Listen::Unix(p), _)) = &opts.stream {
        let _ = std::fs::remove_file(p);
    }
    Ok(totals)
}
