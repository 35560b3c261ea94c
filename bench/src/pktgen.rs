//! pktgen: UDP frames through AF_XDP queues, as fast as the medium takes
//! them or at a set rate; a receiver that counts; and latency probes with
//! timestamps in the payload.
//!
//! Transmit never formats a frame on the hot path. Before the first send,
//! every free UMEM frame of the queue is taken, written once with a
//! template (sizes x flows, in sending order) and kept in a FIFO; frames
//! come back from the completion ring with their bytes untouched, so the
//! loop only restores each frame's length, which it reads from the IP
//! header the frame already carries. Batches are sized to the ring.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hoststack_drivers::afxdp::{XdpAttachMode, XdpConfig, XdpFrame, XdpQueue};
use hoststack_drivers::{DriverCounters, DriverCountersSnapshot, MacAddr, PacketIo};

use crate::frames::{self, FlowSpec, SizeMix, TemplateSet};

/// Which AF_XDP queues to open and how.
#[derive(Debug, Clone)]
pub struct QueueOpts {
    /// Interface name.
    pub ifname: String,
    /// Network namespace the interface lives in (None: the caller's).
    pub netns: Option<String>,
    /// Queues 0..queues, one thread each.
    pub queues: u32,
    /// XDP attach mode.
    pub xdp_mode: XdpAttachMode,
    /// Size of each AF_XDP ring.
    pub ring_size: u32,
    /// UMEM frames per queue.
    pub frame_count: u32,
    /// Frames per burst.
    pub batch: usize,
    /// Cores to pin queue threads to (queue q on `cores[q % len]`); empty: no pinning.
    pub cores: Vec<usize>,
}

impl QueueOpts {
    /// Defaults for `ifname`: one queue, auto attach, 2048-entry rings,
    /// 8192 frames, bursts of 256.
    pub fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.into(),
            netns: None,
            queues: 1,
            xdp_mode: XdpAttachMode::Auto,
            ring_size: 2048,
            frame_count: 8192,
            batch: 256,
            cores: Vec::new(),
        }
    }

    fn xdp_config(&self, queue: u32) -> XdpConfig {
        let mut c = XdpConfig::new(&self.ifname, queue);
        c.attach = self.xdp_mode;
        c.ring_size = self.ring_size;
        c.frame_count = self.frame_count;
        c
    }

    /// Enters the namespace, pins the thread and opens queue `q`.
    fn open(&self, q: u32) -> Result<XdpQueue> {
        if let Some(ns) = &self.netns {
            hoststack_lab::enter_netns(ns)?;
        }
        if !self.cores.is_empty() {
            let core = self.cores[q as usize % self.cores.len()];
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                bail!("cannot pin the queue {q} thread to core {core}");
            }
        }
        XdpQueue::open(&self.xdp_config(q))
            .with_context(|| format!("opening AF_XDP on {} queue {q}", self.ifname))
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct TxOpts {
    /// Queues.
    pub queues: QueueOpts,
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// Addresses and ports (the source MAC is the interface's).
    pub flows: FlowTemplate,
    /// Frame sizes.
    pub sizes: SizeMix,
    /// Frames per second over all queues (None: as fast as possible).
    pub rate: Option<f64>,
    /// Stop after this many frames over all queues.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// The addresses of a stream, without the MACs (known once the queue is
/// open); also the `pktgen` command-line flags that set them.
#[derive(Debug, Clone, clap::Args)]
pub struct FlowTemplate {
    /// First source address (IPv4 or IPv6).
    #[arg(long)]
    pub src_ip: std::net::IpAddr,
    /// Number of source addresses (src-ip, src-ip+1, ...).
    #[arg(long, default_value_t = 1)]
    pub src_ip_count: u32,
    /// Destination address.
    #[arg(long)]
    pub dst_ip: std::net::IpAddr,
    /// First source port.
    #[arg(long, default_value_t = 9000)]
    pub src_port: u16,
    /// Number of source ports (flows = addresses x ports).
    #[arg(long, default_value_t = 1)]
    pub src_port_count: u16,
    /// Destination port.
    #[arg(long, default_value_t = 9)]
    pub dst_port: u16,
}

impl FlowTemplate {
    fn spec(&self, src_mac: MacAddr, dst_mac: MacAddr) -> FlowSpec {
        FlowSpec {
            src_mac,
            dst_mac,
            src_ip: self.src_ip,
            src_ip_count: self.src_ip_count,
            dst_ip: self.dst_ip,
            src_port: self.src_port,
            src_port_count: self.src_port_count,
            dst_port: self.dst_port,
        }
    }
}

/// Nanoseconds since the first call in this process (the probes' clock).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Threads running on queues, with their live counters.
#[derive(Debug)]
pub struct Running {
    threads: Vec<JoinHandle<Result<()>>>,
    /// Driver counters of each queue.
    pub counters: Vec<Arc<DriverCounters>>,
    /// Frames the receive loops matched (UDP to the watched port).
    pub matched: Arc<AtomicU64>,
    /// Mean frame size with FCS of what is sent (0 for receivers).
    pub mean_frame: f64,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl Running {
    /// Totals over the queues now.
    pub fn totals(&self) -> DriverCountersSnapshot {
        let mut t = DriverCountersSnapshot::default();
        for c in &self.counters {
            t.add(&c.snapshot());
        }
        t
    }

    /// True once every thread has returned (count or duration reached).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Asks the threads to stop and waits for them.
    pub fn stop(self) -> Result<(DriverCountersSnapshot, Duration)> {
        self.stop.store(true, Relaxed);
        let elapsed = self.started.elapsed();
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a pktgen thread panicked"));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut t = DriverCountersSnapshot::default();
        for c in &self.counters {
            t.add(&c.snapshot());
        }
        Ok((t, elapsed))
    }
}

/// The threads of the queues, each returning how its loop ended.
type QueueThreads = Vec<JoinHandle<Result<()>>>;

/// Starts one thread per queue and waits until every queue is open.
fn spawn_queues(
    q: &QueueOpts,
    stop: &Arc<AtomicBool>,
    body: impl Fn(u32, XdpQueue, Arc<AtomicBool>) -> Result<()> + Send + Sync + 'static,
) -> Result<(QueueThreads, Vec<Arc<DriverCounters>>)> {
    let body = Arc::new(body);
    let mut threads = Vec::new();
    let mut counters = Vec::new();
    // One queue after the other: the first socket attaches the XDP
    // program the others join, and concurrent attaches race.
    for i in 0..q.queues {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (q, stop2, body) = (q.clone(), stop.clone(), body.clone());
        let thread = std::thread::Builder::new()
            .name(format!("pktgen-q{i}"))
            .spawn(move || {
                let io = match q.open(i) {
                    Ok(io) => io,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(msg.clone()));
                        return Err(anyhow!(msg));
                    }
                };
                let _ = ready_tx.send(Ok(io.counters().clone()));
                body(i, io, stop2)
            })
            .context("spawning a pktgen thread")?;
        threads.push(thread);
        let outcome = ready_rx.recv_timeout(Duration::from_secs(20));
        match outcome {
            Ok(Ok(c)) => counters.push(c),
            Ok(Err(e)) => {
                stop.store(true, Relaxed);
                for t in threads {
                    let _ = t.join();
                }
                bail!("{e}");
            }
            Err(_) => {
                stop.store(true, Relaxed);
                bail!("pktgen queue {i} did not open within 20 s");
            }
        }
    }
    Ok((threads, counters))
}

/// Starts transmitting; returns once every queue sends.
pub fn start_tx(opts: &TxOpts) -> Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let queues = opts.queues.queues.max(1);
    let per_queue_rate = opts.rate.map(|r| r / f64::from(queues));
    let count = opts.count;
    let deadline_after = opts.duration;
    // A burst never exceeds what the ring holds.
    let (flows, dst_mac, sizes, batch) = (
        opts.flows.clone(),
        opts.dst_mac,
        opts.sizes.clone(),
        opts.queues.batch.min(opts.queues.ring_size as usize),
    );
    let mean = Arc::new(AtomicU64::new(0));
    let mean_w = mean.clone();
    let (threads, counters) = spawn_queues(&opts.queues, &stop, move |i, mut io, stop| {
        let spec = flows.spec(io.info().mac, dst_mac);
        let limit =
            count.map(|c| c / u64::from(queues) + u64::from(u64::from(i) < c % u64::from(queues)));
        let deadline = deadline_after.map(|d| Instant::now() + d);
        tx_loop(
            &mut io,
            &spec,
            &sizes,
            per_queue_rate,
            limit,
            deadline,
            batch,
            &stop,
            &mean_w,
        )
    })?;
    // The templates are built right after open; wait for their mean size.
    let t0 = Instant::now();
    while mean.load(Relaxed) == 0 && t0.elapsed() < Duration::from_secs(5) {
        if threads.iter().all(JoinHandle::is_finished) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Running {
        threads,
        counters,
        matched: Arc::default(),
        mean_frame: f64::from_bits(mean.load(Relaxed)),
        stop,
        started: Instant::now(),
    })
}

#[allow(clippy::too_many_arguments)]
fn tx_loop(
    io: &mut XdpQueue,
    spec: &FlowSpec,
    sizes: &SizeMix,
    rate: Option<f64>,
    limit: Option<u64>,
    deadline: Option<Instant>,
    batch: usize,
    stop: &AtomicBool,
    mean: &AtomicU64,
) -> Result<()> {
    let mtu = io.info().mtu;
    let max_size = mtu + 14 + frames::FCS;
    for s in sizes.pattern() {
        if s > max_size {
            bail!(
                "frame size {s} does not fit the MTU {mtu} of {} (at most {max_size})",
                io.info().name
            );
        }
    }
    // Take every free frame and write the templates once.
    let mut all = Vec::new();
    io.alloc_tx(&mut all, usize::MAX);
    let templates = TemplateSet::build(spec, sizes, all.len())?;
    let whole = all.len() / templates.frames.len() * templates.frames.len();
    let mut parked = all.split_off(whole);
    for (i, f) in all.iter_mut().enumerate() {
        let t = &templates.frames[i % templates.frames.len()];
        io.write_frame(f, t.len(), |b| b.copy_from_slice(t))
            .context("template larger than a UMEM frame")?;
    }
    mean.store(templates.mean_size().to_bits(), Relaxed);
    let mut ready: VecDeque<XdpFrame> = all.into();
    let mut burst: Vec<XdpFrame> = Vec::with_capacity(batch);
    let mut back: Vec<XdpFrame> = Vec::with_capacity(ready.len());
    let batch = batch.min(ready.len()).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut spins = 0u32;
    let result = loop {
        if stop.load(Relaxed) {
            break Ok(());
        }
        if spins & 63 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            break Ok(());
        }
        spins = spins.wrapping_add(1);
        let queued = sent + burst.len() as u64;
        if limit.is_some_and(|l| sent >= l) {
            break Ok(());
        }
        let mut want = batch - burst.len();
        if let Some(l) = limit {
            want = want.min(l.saturating_sub(queued) as usize);
        }
        if let Some(r) = rate {
            let due = (start.elapsed().as_secs_f64() * r) as u64 + 1;
            want = want.min(due.saturating_sub(queued) as usize);
            if want == 0 && burst.is_empty() {
                let next = Duration::from_secs_f64((queued as f64) / r);
                let wait = next.saturating_sub(start.elapsed());
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
        }
        if ready.len() < want {
            io.alloc_tx(&mut back, usize::MAX);
            ready.extend(back.drain(..));
        }
        for _ in 0..want.min(ready.len()) {
            let Some(mut f) = ready.pop_front() else {
                break;
            };
            // The frame still holds its template: restore its length.
            let len = io
                .write_frame(&mut f, 64, |b| frames::declared_len(b))
                .flatten();
            match len {
                Some(len) => {
                    io.write_frame(&mut f, len, |_| ());
                    burst.push(f);
                }
                None => {
                    parked.push(f);
                }
            }
        }
        if burst.is_empty() {
            continue;
        }
        match io.tx_burst(&mut burst) {
            Ok(n) => sent += n as u64,
            Err(e) => break Err(anyhow!(e).context("transmitting")),
        }
    };
    // Let the kernel finish what is in the ring, then give everything back.
    let t = Instant::now();
    while io.tx_pending() > 0 && t.elapsed() < Duration::from_millis(200) {
        let _ = io.tx_burst(&mut burst);
    }
    io.refresh_stats();
    io.release(&mut burst);
    let mut rest: Vec<XdpFrame> = ready.into();
    io.release(&mut rest);
    io.release(&mut parked);
    result
}

/// What the receiver counts.
#[derive(Debug, Clone)]
pub struct RxOpts {
    /// Queues.
    pub queues: QueueOpts,
    /// Count as matched only UDP frames to this port (None: every frame).
    pub udp_port: Option<u16>,
    /// Stop after this many matched frames.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Starts receiving (busy polling); returns once every queue is open.
pub fn start_rx(opts: &RxOpts) -> Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let matched = Arc::new(AtomicU64::new(0));
    let m = matched.clone();
    let (port, count, duration, batch) =
        (opts.udp_port, opts.count, opts.duration, opts.queues.batch);
    let (threads, counters) = spawn_queues(&opts.queues, &stop, move |_, mut io, stop| {
        let deadline = duration.map(|d| Instant::now() + d);
        rx_loop(&mut io, port, count, deadline, batch, &stop, &m)
    })?;
    Ok(Running {
        threads,
        counters,
        matched,
        mean_frame: 0.0,
        stop,
        started: Instant::now(),
    })
}

fn rx_loop(
    io: &mut XdpQueue,
    port: Option<u16>,
    count: Option<u64>,
    deadline: Option<Instant>,
    batch: usize,
    stop: &AtomicBool,
    matched: &AtomicU64,
) -> Result<()> {
    let mut q = VecDeque::with_capacity(batch);
    let mut done = Vec::with_capacity(batch);
    let mut last_stats = Instant::now();
    let mut idle = 0u32;
    loop {
        if stop.load(Relaxed) {
            break;
        }
        let n = io.rx_burst(&mut q, batch).context("receiving")?;
        if n == 0 {
            idle = idle.wrapping_add(1);
            if idle & 1023 == 0 {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                if now.duration_since(last_stats) > Duration::from_millis(500) {
                    io.refresh_stats();
                    last_stats = now;
                }
            }
            std::hint::spin_loop();
            continue;
        }
        let mut hits = 0u64;
        for f in q.drain(..) {
            let hit = match port {
                None => true,
                Some(p) => frames::udp_dst(io.rx_bytes(&f)).is_some_and(|(_, d)| d == p),
            };
            hits += u64::from(hit);
            done.push(f);
        }
        io.release(&mut done);
        let total = matched.fetch_add(hits, Relaxed) + hits;
        if count.is_some_and(|c| total >= c) {
            break;
        }
    }
    io.refresh_stats();
    Ok(())
}

/// Latency probes.
#[derive(Debug, Clone)]
pub struct LatencyOpts {
    /// The sending queue (queue 0 of it).
    pub tx: QueueOpts,
    /// A second interface that receives the probes one way (a veth's other
    /// end); None: they come back on the sending queue (a UDP echo
    /// server at the destination returns them).
    pub rx: Option<QueueOpts>,
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// Addresses and ports.
    pub flows: FlowTemplate,
    /// Probe frame size, FCS included.
    pub size: usize,
    /// Probes per second.
    pub rate: f64,
    /// Probes to send.
    pub count: u64,
}

/// What the probes measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyReport {
    /// Probes sent.
    pub sent: u64,
    /// Probes received back.
    pub received: u64,
    /// Latencies in ns, sorted.
    #[serde(skip)]
    pub samples: Vec<u64>,
    /// Median, us.
    pub p50_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
    /// 99.9th percentile, us.
    pub p999_us: f64,
    /// Largest, us.
    pub max_us: f64,
}

/// Receives what arrived: records probe latencies, answers neighbour
/// discovery for `me`.
fn receive_probes(
    io: &mut XdpQueue,
    me: std::net::IpAddr,
    q: &mut VecDeque<XdpFrame>,
    done: &mut Vec<XdpFrame>,
    samples: &mut Vec<u64>,
) -> Result<()> {
    io.rx_burst(q, 64).context("receiving probes")?;
    let now = now_ns();
    let mut replies = Vec::new();
    for f in q.drain(..) {
        let b = io.rx_bytes(&f);
        if let Some((_, ts)) = frames::read_probe(b) {
            samples.push(now.saturating_sub(ts));
        } else if let Some(r) = frames::neighbor_reply(b, io.info().mac, me) {
            replies.push(r);
        }
        done.push(f);
    }
    io.release(done);
    for r in replies {
        let mut one = Vec::with_capacity(1);
        if io.alloc_tx(&mut one, 1) == 1 {
            io.write_frame(&mut one[0], r.len(), |b| b.copy_from_slice(&r));
            io.tx_burst(&mut one)
                .context("answering neighbour discovery")?;
            io.release(&mut one);
        }
    }
    Ok(())
}

/// Sends `count` probes at `rate` and measures how long each takes to
/// arrive (one way) or come back (echo).
pub fn run_latency(opts: &LatencyOpts, interrupted: &AtomicBool) -> Result<LatencyReport> {
    now_ns();
    let stop = Arc::new(AtomicBool::new(false));
    let one_way = match &opts.rx {
        None => None,
        Some(rx) => {
            let mut rx = rx.clone();
            rx.queues = 1;
            let (tx_samples, rx_samples) = mpsc::channel();
            let me = opts.flows.dst_ip;
            let (threads, _) = spawn_queues(&rx, &stop, move |_, mut io, stop| {
                let mut q = VecDeque::with_capacity(64);
                let mut done = Vec::with_capacity(64);
                let mut samples = Vec::new();
                while !stop.load(Relaxed) {
                    receive_probes(&mut io, me, &mut q, &mut done, &mut samples)?;
                }
                let _ = tx_samples.send(samples);
                Ok(())
            })?;
            Some((threads, rx_samples))
        }
    };
    let mut txq = opts.tx.clone();
    txq.queues = 1;
    let o = opts.clone();
    let s2 = stop.clone();
    let echo = one_way.is_none();
    let sender = std::thread::spawn(move || -> Result<(u64, Vec<u64>)> {
        let mut io = txq.open(0)?;
        let spec = o.flows.spec(io.info().mac, o.dst_mac);
        if o.size < spec.header_len() + frames::PROBE_LEN + frames::FCS {
            bail!(
                "probe frames must be at least {} bytes",
                spec.header_len() + frames::PROBE_LEN + frames::FCS
            );
        }
        let template = frames::build_frame(&spec, (spec.src_ip, spec.src_port), o.size)?;
        let mut scratch = template.clone();
        let interval = Duration::from_secs_f64(1.0 / o.rate.max(1.0));
        let mut q = VecDeque::with_capacity(64);
        let mut done = Vec::with_capacity(64);
        let mut one = Vec::with_capacity(1);
        let mut samples = Vec::new();
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < o.count && !s2.load(Relaxed) {
            let due = start + interval * sent as u32;
            if Instant::now() >= due {
                if one.is_empty() && io.alloc_tx(&mut one, 1) == 0 {
                    io.release(&mut done);
                }
                if let Some(f) = one.first_mut() {
                    frames::stamp_probe(&mut scratch, sent, now_ns())
                        .context("stamping a probe")?;
                    io.write_frame(f, scratch.len(), |b| b.copy_from_slice(&scratch));
                    sent += io.tx_burst(&mut one).context("sending a probe")? as u64;
                }
            }
            if echo {
                receive_probes(&mut io, spec.src_ip, &mut q, &mut done, &mut samples)?;
            }
        }
        // Wait for the last answers.
        let t = Instant::now();
        while echo && (samples.len() as u64) < sent && t.elapsed() < Duration::from_millis(300) {
            receive_probes(&mut io, spec.src_ip, &mut q, &mut done, &mut samples)?;
        }
        Ok((sent, samples))
    });
    let (sent, mut samples) = loop {
        if sender.is_finished() {
            break sender
                .join()
                .map_err(|_| anyhow!("the probe sender panicked"))??;
        }
        if interrupted.load(Relaxed) {
            stop.store(true, Relaxed);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some((threads, rx)) = one_way {
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Relaxed);
        for t in threads {
            t.join()
                .map_err(|_| anyhow!("the probe receiver panicked"))??;
        }
        samples = rx.recv().unwrap_or_default();
    }
    samples.sort_unstable();
    let us = |p: f64| crate::stats::percentile(&samples, p) as f64 / 1000.0;
    Ok(LatencyReport {
        sent,
        received: samples.len() as u64,
        p50_us: us(0.50),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: samples.last().copied().unwrap_or(0) as f64 / 1000.0,
        samples,
    })
}
