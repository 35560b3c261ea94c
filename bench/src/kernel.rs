//! The clients every benchmark drives either side with, in Rust (no python
//! in the measured path), all on kernel sockets in the lab's namespace: a
//! `sendmmsg` UDP sender (flat out or paced), a UDP GSO sender, UDP and
//! TCP request/response, TCP bulk and connection rate, and a one-way
//! stream for the cut-through row. The kernel's servers are in
//! [`crate::kserver`].

use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg, setsockopt, sockopt,
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
/// per call, until `stop`: as fast as the kernel takes them, or paced to
/// `rate` datagrams per second (the sender sleeps between batches, the
/// batch shrinking so a burst stays under a millisecond of the rate).
/// Counts what the kernel accepted in `sent`.
pub fn udp_sendmmsg(
    dst: SocketAddr,
    payload: usize,
    batch: usize,
    rate: Option<f64>,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    let sock = connected_udp(dst, "UDP sender")?;
    let batch = match rate {
        Some(r) => batch.min((r / 1000.0).ceil().max(1.0) as usize),
        None => batch,
    };
    let buf: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = (0..batch).map(|_| [IoSlice::new(&buf)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = vec![None; batch];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let cmsgs: [ControlMessage<'_>; 0] = [];
    let fd = sock.as_raw_fd();
    let start = Instant::now();
    let mut total = 0u64;
    while !stop.load(Relaxed) {
        let mut n = batch;
        if let Some(r) = rate {
            let due = (start.elapsed().as_secs_f64() * r) as u64;
            if due <= total {
                let next = Duration::from_secs_f64((total + batch as u64) as f64 / r);
                std::thread::sleep(next.saturating_sub(start.elapsed()));
                continue;
            }
            n = n.min((due - total) as usize);
        }
        match sendmmsg(
            fd,
            &mut hdrs,
            &iovs[..n],
            &addrs[..n],
            cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(r) => {
                let n = r.count() as u64;
                total += n;
                sent.fetch_add(n, Relaxed);
            }
            // A full qdisc or an unresolved neighbour: try again.
            Err(Errno::ENOBUFS | Errno::EAGAIN | Errno::ECONNREFUSED | Errno::EHOSTUNREACH) => {
                if rate.is_some() {
                    // Paced: a datagram the kernel refused counts as offered.
                    total += n as u64;
                }
            }
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
    /// Requests that got no answer (UDP only).
    pub lost: u64,
}

impl RrResult {
    /// The result of a window that opened at `opened` (None: never).
    fn new(mut samples: Vec<u64>, opened: Option<Instant>, lost: u64) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len() as u64,
            elapsed: opened.map_or(Duration::ZERO, |m| m.elapsed()),
            samples,
            lost,
        }
    }
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
    Ok(RrResult::new(samples, measuring, 0))
}

/// `size`-byte datagram exchanges with a UDP echo server at `dst`, one
/// in flight: `warmup`, then `duration` measured. A datagram not echoed
/// within 200 ms is counted lost and the next one sent.
pub fn udp_rr(
    dst: SocketAddr,
    size: usize,
    warmup: Duration,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<RrResult> {
    let sock = connected_udp(dst, "UDP request/response client")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut msg: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let mut back = vec![0u8; size + 1];
    let mut samples = Vec::with_capacity(1 << 20);
    let (mut lost, mut seq) = (0u64, 0u32);
    // The server may still be coming up: its first echo may take a while.
    let ready_by = Instant::now() + Duration::from_secs(10);
    let start = Instant::now();
    let mut measuring = None;
    loop {
        let now = Instant::now();
        match measuring {
            None if now - start >= warmup && seq > 0 => measuring = Some(now),
            Some(m) if now - m >= duration => break,
            _ => {}
        }
        if stop.load(Relaxed) {
            break;
        }
        seq = seq.wrapping_add(1);
        msg[..4].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        sock.send(&msg).context("udp rr send")?;
        // Skip late echoes of earlier datagrams.
        let got = loop {
            match sock.recv(&mut back) {
                Ok(n) if n == size && back[..4] == msg[..4] => break true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false;
                }
                Err(e) if transient(&e) => break false,
                Err(e) => return Err(anyhow!(e).context("udp rr recv")),
            }
        };
        if !got {
            if measuring.is_some() {
                lost += 1;
            } else if Instant::now() > ready_by {
                bail!("no echo from {dst} within 10 s");
            }
            continue;
        }
        if measuring.is_some() {
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        if back[..size] != msg[..] {
            bail!("the echo came back different");
        }
    }
    Ok(RrResult::new(samples, measuring, lost))
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
