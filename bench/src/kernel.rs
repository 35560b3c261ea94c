//! The Linux kernel's side of every comparison, in Rust (no python in the
//! measured path): a `sendmmsg` UDP sender, a `recvmmsg` receiver, TCP
//! discard and echo servers, and the TCP clients (bulk, request/response,
//! connection rate) that drive either the kernel's servers or hoststack's.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, setsockopt,
    sockopt,
};

/// Runs `f` on a new thread that first enters network namespace `netns`
/// (None: stays) and pins itself to `core` (None: unpinned).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    netns: Option<&str>,
    core: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let netns = netns.map(str::to_string);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(ns) = &netns {
                hoststack_lab::enter_netns(ns)?;
            }
            if let Some(c) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                    bail!("cannot pin a thread to core {c}");
                }
            }
            f()
        })
        .with_context(|| format!("spawning thread {name}"))
}

/// Joins a thread started by [`spawn_in`].
pub fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow!("a benchmark thread panicked"))?
}

/// A UDP socket on an ephemeral port of the right family, connected to `dst`.
fn connected_udp(dst: SocketAddr, what: &str) -> Result<UdpSocket> {
    let bind: SocketAddr = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("valid any address");
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding the {what}"))?;
    sock.connect(dst)
        .with_context(|| format!("connecting the {what} to {dst}"))?;
    Ok(sock)
}

/// Sends `payload`-byte UDP datagrams to `dst` with `sendmmsg`, `batch`
/// per call, until `stop`; counts what the kernel accepted in `sent`.
pub fn udp_sendmmsg(
    dst: SocketAddr,
    payload: usize,
    batch: usize,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    let sock = connected_udp(dst, "UDP sender")?;
    let buf: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = (0..batch).map(|_| [IoSlice::new(&buf)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = vec![None; batch];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let cmsgs: [ControlMessage<'_>; 0] = [];
    let fd = sock.as_raw_fd();
    while !stop.load(Relaxed) {
        match sendmmsg(fd, &mut hdrs, &iovs, &addrs, cmsgs, MsgFlags::empty()) {
            Ok(r) => {
                sent.fetch_add(r.count() as u64, Relaxed);
            }
            // A full qdisc or an unresolved neighbour: try again.
            Err(Errno::ENOBUFS | Errno::EAGAIN | Errno::ECONNREFUSED | Errno::EHOSTUNREACH) => {}
            Err(e) => return Err(anyhow!(e).context("sendmmsg")),
        }
    }
    Ok(())
}

/// Sends full-size UDP datagrams to `dst` as fast as the kernel takes
/// them, `segments` per `send` through UDP GSO (`UDP_SEGMENT`), the
/// cheapest way the kernel has to put MTU-sized frames on a wire; counts
/// frames in `sent`.
pub fn udp_gso_sender(
    dst: SocketAddr,
    segment: usize,
    segments: usize,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    let sock = connected_udp(dst, "UDP GSO sender")?;
    setsockopt(&sock, sockopt::UdpGsoSegment, &(segment as i32)).context("setting UDP_SEGMENT")?;
    let buf = vec![0x33u8; segment * segments];
    while !stop.load(Relaxed) {
        match sock.send(&buf) {
            Ok(_) => {
                sent.fetch_add(segments as u64, Relaxed);
            }
            Err(e) if transient(&e) => {}
            Err(e) => return Err(anyhow!(e).context("UDP GSO send")),
        }
    }
    Ok(())
}

/// A send error worth retrying: a full queue, or an ICMP error from an
/// earlier datagram.
fn transient(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::ENOBUFS,
            Errno::EAGAIN,
            Errno::ECONNREFUSED,
            Errno::EHOSTUNREACH,
        ]
        .iter()
        .any(|x| *x as i32 == n)
    })
}

/// Receives UDP datagrams on `bind` with `recvmmsg`, `batch` per call,
/// until `stop`; counts them in `got`. Calls `ready` once bound.
pub fn udp_recvmmsg(
    bind: SocketAddr,
    batch: usize,
    stop: &AtomicBool,
    got: &AtomicU64,
    ready: impl FnOnce(),
) -> Result<()> {
    let sock =
        UdpSocket::bind(bind).with_context(|| format!("binding the UDP receiver to {bind}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let _ = setsockopt(&sock, sockopt::RcvBufForce, &(8 << 20));
    ready();
    let mut bufs = vec![[0u8; 2048]; batch];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let fd = sock.as_raw_fd();
    while !stop.load(Relaxed) {
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        match recvmmsg(
            fd,
            &mut hdrs,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(r) => {
                got.fetch_add(r.count() as u64, Relaxed);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(anyhow!(e).context("recvmmsg")),
        }
    }
    Ok(())
}

/// What a kernel TCP server does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Read and drop everything; close after the client does.
    Discard,
    /// Send back what arrives.
    Echo,
}

/// A kernel TCP server on its own threads.
#[derive(Debug)]
pub struct KernelServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    /// Bytes it received.
    pub bytes: Arc<AtomicU64>,
}

impl KernelServer {
    /// Listens on `addr` and serves each connection on a thread pinned to
    /// `core`.
    pub fn start(addr: SocketAddr, kind: ServerKind, core: Option<usize>) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("kernel server: binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        let thread = spawn_in("kernel-server", None, core, move || {
            let mut conns = Vec::new();
            while !s.load(Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (s, b) = (s.clone(), b.clone());
                        conns.push(spawn_in("kernel-conn", None, core, move || {
                            serve(c, kind, &s, &b)
                        })?);
                        conns.retain(|h| !h.is_finished());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => return Err(anyhow!(e).context("accept")),
                }
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            bytes,
        })
    }

    /// Stops accepting and waits for the connection threads.
    pub fn stop(mut self) -> Result<()> {
        self.stop.store(true, Relaxed);
        match self.thread.take() {
            Some(t) => join(t),
            None => Ok(()),
        }
    }
}

impl Drop for KernelServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(c: TcpStream, kind: ServerKind, stop: &AtomicBool, bytes: &AtomicU64) -> Result<()> {
    c.set_nonblocking(false)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_millis(100)))?;
    serve_stream(c, kind, stop, bytes)
}

/// Serves one connected stream (TCP or Unix) whose read timeout is set.
fn serve_stream<S: Read + Write>(
    mut c: S,
    kind: ServerKind,
    stop: &AtomicBool,
    bytes: &AtomicU64,
) -> Result<()> {
    let mut buf = vec![
        0u8;
        if kind == ServerKind::Discard {
            256 << 10
        } else {
            64 << 10
        }
    ];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                bytes.fetch_add(n as u64, Relaxed);
                if kind == ServerKind::Echo && c.write_all(&buf[..n]).is_err() {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Relaxed) {
                    return Ok(());
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Where a kernel server process listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(std::path::PathBuf),
}

/// The body of `hoststack-bench kernel-server`: a kernel server in its own
/// process (so its CPU time and its copies are its own), one thread per
/// connection. Prints `ready` once listening and, when `stop` is set, a
/// JSON line with the bytes it received.
pub fn server_process(listen: &Listen, kind: ServerKind, stop: &AtomicBool) -> Result<()> {
    let bytes = Arc::new(AtomicU64::new(0));
    let stop_all = Arc::new(AtomicBool::new(false));
    let mut conns: Vec<JoinHandle<Result<()>>> = Vec::new();
    enum L {
        Tcp(TcpListener),
        Unix(std::os::unix::net::UnixListener),
    }
    let l = match listen {
        Listen::Tcp(a) => L::Tcp(TcpListener::bind(a).with_context(|| format!("binding {a}"))?),
        Listen::Unix(p) => {
            let _ = std::fs::remove_file(p);
            L::Unix(
                std::os::unix::net::UnixListener::bind(p)
                    .with_context(|| format!("binding {}", p.display()))?,
            )
        }
    };
    match &l {
        L::Tcp(t) => t.set_nonblocking(true)?,
        L::Unix(u) => u.set_nonblocking(true)?,
    }
    println!("ready");
    // Sleep in poll(2) until a client comes (waking 10 times a second to
    // see the stop flag), as a kernel server would: its idle CPU is the
    // idle-cpu benchmark's baseline.
    let tick = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Relaxed) {
        {
            use std::os::fd::AsFd;
            let fd = match &l {
                L::Tcp(t) => t.as_fd(),
                L::Unix(u) => u.as_fd(),
            };
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&tick)) {
                Ok(0) => continue,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(anyhow!(std::io::Error::from(e)).context("poll")),
            }
        }
        let (b, st) = (bytes.clone(), stop_all.clone());
        let accepted = match &l {
            L::Tcp(t) => t
                .accept()
                .map(|(c, _)| std::thread::spawn(move || serve(c, kind, &st, &b))),
            L::Unix(u) => u.accept().map(|(c, _)| {
                std::thread::spawn(move || -> Result<()> {
                    c.set_nonblocking(false)?;
                    c.set_read_timeout(Some(Duration::from_millis(100)))?;
                    serve_stream(c, kind, &st, &b)
                })
            }),
        };
        match accepted {
            Ok(h) => {
                conns.push(h);
                conns.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(anyhow!(e).context("accept")),
        }
    }
    stop_all.store(true, Relaxed);
    for c in conns {
        let _ = c.join();
    }
    if let Listen::Unix(p) = listen {
        let _ = std::fs::remove_file(p);
    }
    println!("{}", serde_json::json!({ "bytes": bytes.load(Relaxed) }));
    Ok(())
}

/// Streams `bytes` one way through `s` in 64 KiB writes (as the hoststack
/// throughput client does), closes its side and waits until the reader
/// closes too; returns the time from the first write.
pub fn stream_one_way<S: Read + Write>(
    mut s: S,
    bytes: u64,
    shutdown: impl FnOnce(&S) -> std::io::Result<()>,
) -> Result<Duration> {
    let buf = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = buf.len().min((bytes - sent) as usize);
        s.write_all(&buf[..n]).context("stream write")?;
        sent += n as u64;
    }
    shutdown(&s)?;
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(anyhow!(e).context("waiting for the reader to close")),
        }
    }
    Ok(start.elapsed())
}

/// Connects, retrying for a few seconds while the server comes up.
pub fn connect(dst: SocketAddr) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(anyhow!(e).context(format!("connecting to {dst}"))),
        }
    }
}

/// One stream of bulk data: bytes delivered and the time until the server
/// had all of them (it closes after the client's FIN).
#[derive(Debug, Clone, Copy)]
pub struct BulkResult {
    /// Bytes written.
    pub bytes: u64,
    /// From the first write to the server's close.
    pub elapsed: Duration,
}

impl BulkResult {
    /// Goodput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Writes to `dst` for `duration`, then closes its side and waits until
/// the server closes too.
pub fn tcp_bulk(dst: SocketAddr, duration: Duration, stop: &AtomicBool) -> Result<BulkResult> {
    let mut s = connect(dst)?;
    let buf = vec![0x5au8; 128 << 10];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration && !stop.load(Relaxed) {
        s.write_all(&buf).context("bulk write")?;
        bytes += buf.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(
                    anyhow!(e).context("waiting for the server to close after the bulk stream")
                );
            }
        }
    }
    Ok(BulkResult {
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Request/response on one connection.
#[derive(Debug, Clone)]
pub struct RrResult {
    /// Exchanges in the measured window.
    pub count: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Each exchange's round trip, ns, sorted.
    pub samples: Vec<u64>,
}

/// `size`-byte exchanges on one connection: `warmup`, then `duration`
/// measured.
pub fn tcp_rr(
    dst: SocketAddr,
    size: usize,
    warmup: Duration,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<RrResult> {
    let mut s = connect(dst)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let msg: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let mut measuring = None;
    loop {
        let now = Instant::now();
        match measuring {
            None if now - start >= warmup => measuring = Some(now),
            Some(m) if now - m >= duration => break,
            _ => {}
        }
        if stop.load(Relaxed) {
            break;
        }
        let t0 = Instant::now();
        s.write_all(&msg).context("rr write")?;
        s.read_exact(&mut back).context("rr read")?;
        if measuring.is_some() {
            samples.push(t0.elapsed().as_nanos() as u64);
        }
    }
    if back != msg {
        bail!("the echo came back different");
    }
    let elapsed = measuring.map_or(Duration::ZERO, |m| m.elapsed());
    samples.sort_unstable();
    Ok(RrResult {
        count: samples.len() as u64,
        elapsed,
        samples,
    })
}

/// Connection rate.
#[derive(Debug, Clone, Copy)]
pub struct ConnResult {
    /// Connections that completed connect, exchange and close.
    pub ok: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Time spent.
    pub elapsed: Duration,
}

/// Connect, one `size`-byte exchange, close, again and again for `duration`.
pub fn tcp_connrate(
    dst: SocketAddr,
    size: usize,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<ConnResult> {
    // The first connection waits for the server to come up.
    drop(connect(dst)?);
    let msg = vec![0x42u8; size];
    let mut back = vec![0u8; size];
    let (mut ok, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration && !stop.load(Relaxed) {
        let mut one = || -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            Ok(())
        };
        match one() {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        if failed > 100 && failed > ok {
            bail!("{failed} of {} connections to {dst} failed", ok + failed);
        }
    }
    Ok(ConnResult {
        ok,
        failed,
        elapsed: start.elapsed(),
    })
}
