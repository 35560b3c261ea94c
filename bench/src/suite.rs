//! The side-by-side benchmarks. Each one measures hoststack and the Linux
//! kernel on the same work, in the same invocation, on a veth lab built
//! fresh for every measurement (so offload changes, ARP entries or
//! TIME_WAIT sockets of one side never leak into the other), alternating
//! hoststack and kernel run by run.
//!
//! Placement on the 2-core machine: the load (client, sender) runs on core
//! 0 inside the lab's namespace; the side under test (hoststack's worker
//! or pktgen queue, the kernel's server or receiver thread) on core 1.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_lab::Lab;
use serde::Serialize;

use crate::env::{self, HoststackServer, Managed};
use crate::frames::SizeMix;
use crate::kernel::{self, KernelServer, ServerKind};
use crate::pktgen::{self, FlowTemplate, QueueOpts, RxOpts, TxOpts};
use crate::stats::{Spread, percentile};

/// The benchmarks that exist, in the order they run.
pub const BENCHMARKS: &[(&str, &str)] = &[
    (
        "udp-tx-64",
        "UDP 64-byte TX: hoststack pktgen vs kernel sendmmsg (batch 64), counted at the peer",
    ),
    (
        "udp-rx-64",
        "UDP 64-byte RX: hoststack AF_XDP receiver vs kernel recvmmsg, same pktgen sender",
    ),
    (
        "tcp-bulk",
        "TCP bulk, one stream: kernel client -> hoststack vs -> kernel (default offloads, and TSO/GSO/GRO off), beside the AF_XDP medium ceiling",
    ),
    (
        "tcp-rr-64",
        "TCP 64-byte request/response on one connection: transactions/s, p50, p99",
    ),
    (
        "tcp-connrate",
        "TCP connection rate: connect, 64-byte exchange, close",
    ),
    (
        "cut-through",
        "cut-through between two processes (external apps, local scope): GB/s vs a Unix socket pair and vs kernel TCP over 127.0.0.1",
    ),
    (
        "idle-cpu",
        "idle CPU and 64-byte round-trip latency per worker mode (poll, interrupt, adaptive) vs a blocking kernel echo server",
    ),
    (
        "nginx",
        "nginx through libhoststack_preload.so vs the same nginx on the kernel: keep-alive req/s, Connection: close conn/s, p99, CPU per request",
    ),
    (
        "redis",
        "redis-server through libhoststack_preload.so vs on the kernel: SET and GET ops/s, CPU per op",
    ),
    (
        "memcached",
        "memcached through libhoststack_preload.so vs on the kernel: memcaslap ops/s, CPU per op",
    ),
];

/// Benchmarks the issue asks for that cannot run yet, and why (none left:
/// the list stays for the next ones).
pub const NOT_YET: &[(&str, &str)] = &[];

const LOAD_CORE: usize = 0;
const TEST_CORE: usize = 1;
const UDP_PORT: u16 = 9;
const BULK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 7;

/// How a whole run is configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs per side (median, min, max over them).
    pub runs: usize,
    /// Measured window of each packet-rate, request/response and
    /// connection-rate run.
    pub duration: Duration,
    /// Length of each TCP bulk stream.
    pub bulk_duration: Duration,
    /// Time before the window opens.
    pub warmup: Duration,
    /// Lab name.
    pub lab: String,
    /// Lab subnet (10.77.N.0/24).
    pub subnet: u8,
    /// Lab MTU (None: 1500).
    pub mtu: Option<usize>,
    /// The `hoststack` binary.
    pub hoststack: PathBuf,
    /// Set by SIGINT/SIGTERM.
    pub interrupted: Arc<AtomicBool>,
}

/// One figure: hoststack beside the kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Benchmark name.
    pub bench: String,
    /// What is measured.
    pub metric: String,
    /// Unit of both figures.
    pub unit: String,
    /// True when more is better (rates); false for latencies.
    pub higher_is_better: bool,
    /// hoststack's runs.
    pub hoststack: Spread,
    /// What the kernel side is.
    pub kernel_label: String,
    /// The kernel's runs.
    pub kernel: Spread,
    /// hoststack's advantage: hoststack/kernel for rates, kernel/hoststack
    /// for latencies and costs (above 1: hoststack better), from the
    /// medians; None when hoststack's figure is zero and the kernel's is
    /// not (no finite ratio).
    pub ratio: Option<f64>,
    /// Short label for the chart.
    pub label: String,
    /// Whether the chart shows it.
    #[serde(skip)]
    pub chart: bool,
}

impl Row {
    pub(crate) fn new(
        bench: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        hs: &[f64],
        kernel_label: &str,
        k: &[f64],
    ) -> Self {
        let (hoststack, kernel) = (Spread::of(hs), Spread::of(k));
        let ratio = match (higher_is_better, hoststack.median, kernel.median) {
            (_, h, k) if h == 0.0 && k == 0.0 => Some(1.0),
            (true, h, k) if k > 0.0 => Some(h / k),
            (false, h, k) if h > 0.0 => Some(k / h),
            _ => None,
        };
        Self {
            bench: bench.into(),
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better,
            hoststack,
            kernel_label: kernel_label.into(),
            kernel,
            ratio,
            label: format!("{bench} {unit}"),
            chart: true,
        }
    }

    fn labelled(mut self, label: &str) -> Self {
        self.label = label.into();
        self
    }
}

/// What one benchmark produced.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    /// Figures.
    pub rows: Vec<Row>,
    /// Extra facts (medium ceiling, offered load).
    pub notes: Vec<String>,
}

impl Settings {
    fn check(&self) -> Result<()> {
        if self.interrupted.load(Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// Warm up, then the per-second rate of `read` over the window.
    fn window(&self, mut read: impl FnMut() -> Result<u64>) -> Result<f64> {
        self.sleep(self.warmup)?;
        let (a, t0) = (read()?, Instant::now());
        self.sleep(self.duration)?;
        let (b, t1) = (read()?, Instant::now());
        Ok(b.saturating_sub(a) as f64 / (t1 - t0).as_secs_f64())
    }

    fn lab(&self) -> Result<Lab> {
        env::fresh_lab(&self.lab, self.subnet, self.mtu)
    }

    fn cores(&self) -> (Option<usize>, Option<usize>) {
        if std::thread::available_parallelism().map_or(1, usize::from) >= 2 {
            (Some(LOAD_CORE), Some(TEST_CORE))
        } else {
            (None, None)
        }
    }
}

pub(crate) fn progress(bench: &str, run: usize, runs: usize, side: &str, figure: String) {
    eprintln!("[{bench}] run {run}/{runs} {side}: {figure}");
}

fn ip4(lab: &Lab) -> (IpAddr, IpAddr) {
    (lab.cfg.host4.addr, lab.cfg.peer4.addr)
}

/// Runs benchmark `name`.
pub fn run(name: &str, s: &Settings) -> Result<Outcome> {
    match name {
        "udp-tx-64" => udp_tx_64(s),
        "udp-rx-64" => udp_rx_64(s),
        "tcp-bulk" => tcp_bulk(s),
        "tcp-rr-64" => tcp_rr_64(s),
        "tcp-connrate" => tcp_connrate(s),
        "cut-through" => cut_through(s),
        "idle-cpu" => idle_cpu(s),
        // Listed here, run by `servers::run` (which builds on this module).
        "nginx" | "redis" | "memcached" => bail!("{name} is run by servers::run"),
        other => match NOT_YET.iter().find(|(n, _)| *n == other) {
            Some((_, why)) => bail!("benchmark {other} is not possible yet: {why}"),
            None => bail!(
                "no benchmark named {other} (known: {})",
                BENCHMARKS
                    .iter()
                    .map(|b| b.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

fn queue(ifname: &str, netns: Option<&str>, core: Option<usize>) -> QueueOpts {
    let mut q = QueueOpts::new(ifname);
    q.netns = netns.map(str::to_string);
    q.cores = core.into_iter().collect();
    q
}

fn udp_flow(src: IpAddr, dst: IpAddr) -> FlowTemplate {
    FlowTemplate {
        src_ip: src,
        src_ip_count: 1,
        dst_ip: dst,
        src_port: 9000,
        src_port_count: 1,
        dst_port: UDP_PORT,
    }
}

// ---- UDP TX ---------------------------------------------------------------

fn udp_tx_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "udp-tx-64";
    let (_, test_core) = s.cores();
    let (mut hs, mut k) = (Vec::new(), Vec::new());
    for run in 1..=s.runs {
        s.check()?;
        {
            let lab = s.lab()?;
            env::peer_udp_sink(&lab, UDP_PORT)?;
            let (host, peer) = ip4(&lab);
            let opts = TxOpts {
                queues: queue(&lab.host_if, None, test_core),
                dst_mac: env::mac_of(Some(&lab.netns), &lab.peer_if)?,
                flows: udp_flow(host, peer),
                sizes: SizeMix::Fixed(64),
                rate: None,
                count: None,
                duration: None,
            };
            let sender = pktgen::start_tx(&opts)?;
            let rate = s.window(|| Ok(env::link_stats(Some(&lab.netns), &lab.peer_if)?.rx_packets));
            sender.stop()?;
            let mpps = rate? / 1e6;
            progress(
                B,
                run,
                s.runs,
                "hoststack pktgen",
                format!("{mpps:.3} Mpps at the peer"),
            );
            hs.push(mpps);
        }
        s.check()?;
        {
            let lab = s.lab()?;
            env::peer_udp_sink(&lab, UDP_PORT)?;
            env::kernel_owns_host_end(&lab)?;
            let (_, peer) = ip4(&lab);
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let (st, se) = (stop.clone(), sent.clone());
            let dst = SocketAddr::new(peer, UDP_PORT);
            // 64-byte frames: 60 bytes before the FCS, 42 of them headers.
            let t = kernel::spawn_in("sendmmsg", None, test_core, move || {
                kernel::udp_sendmmsg(dst, 18, 64, &st, &se)
            })?;
            let rate = s.window(|| Ok(env::link_stats(Some(&lab.netns), &lab.peer_if)?.rx_packets));
            stop.store(true, Relaxed);
            kernel::join(t)?;
            let mpps = rate? / 1e6;
            progress(
                B,
                run,
                s.runs,
                "kernel sendmmsg",
                format!("{mpps:.3} Mpps at the peer"),
            );
            k.push(mpps);
        }
    }
    Ok(Outcome {
        rows: vec![Row::new(
            B,
            "UDP TX, 64-byte frames, counted at the peer",
            "Mpps",
            true,
            &hs,
            "sendmmsg batch 64",
            &k,
        )],
        notes: Vec::new(),
    })
}

// ---- UDP RX ---------------------------------------------------------------

/// Starts a pktgen receiver on the host end counting UDP to `UDP_PORT`.
fn host_receiver(lab: &Lab, core: Option<usize>) -> Result<pktgen::Running> {
    pktgen::start_rx(&RxOpts {
        queues: queue(&lab.host_if, None, core),
        udp_port: Some(UDP_PORT),
        count: None,
        duration: None,
    })
}

/// Starts the pktgen sender inside the lab namespace, towards the host end.
fn namespace_sender(lab: &Lab, s: &Settings, size: usize) -> Result<pktgen::Running> {
    let (load_core, _) = s.cores();
    let (host, peer) = ip4(lab);
    let opts = TxOpts {
        queues: queue(&lab.peer_if, Some(&lab.netns), load_core),
        dst_mac: env::mac_of(None, &lab.host_if)?,
        flows: udp_flow(peer, host),
        sizes: SizeMix::Fixed(size),
        rate: None,
        count: None,
        duration: None,
    };
    pktgen::start_tx(&opts)
}

fn udp_rx_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "udp-rx-64";
    let (_, test_core) = s.cores();
    let (mut hs, mut k, mut offered) = (Vec::new(), Vec::new(), Vec::new());
    let mut offered_k = Vec::new();
    for run in 1..=s.runs {
        s.check()?;
        {
            let lab = s.lab()?;
            let rx = host_receiver(&lab, test_core)?;
            let sender = namespace_sender(&lab, s, 64)?;
            let matched = rx.matched.clone();
            let sent0 = sender.totals().tx_frames;
            let t0 = Instant::now();
            let rate = s.window(|| Ok(matched.load(Relaxed)));
            offered.push(
                (sender.totals().tx_frames - sent0) as f64 / t0.elapsed().as_secs_f64() / 1e6,
            );
            sender.stop()?;
            rx.stop()?;
            let mpps = rate? / 1e6;
            progress(
                B,
                run,
                s.runs,
                "hoststack AF_XDP receiver",
                format!("{mpps:.3} Mpps received"),
            );
            hs.push(mpps);
        }
        s.check()?;
        {
            let lab = s.lab()?;
            env::kernel_owns_host_end(&lab)?;
            let (host, _) = ip4(&lab);
            let stop = Arc::new(AtomicBool::new(false));
            let got = Arc::new(AtomicU64::new(0));
            let (st, g) = (stop.clone(), got.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let t = kernel::spawn_in("recvmmsg", None, test_core, move || {
                kernel::udp_recvmmsg(SocketAddr::new(host, UDP_PORT), 64, &st, &g, move || {
                    let _ = ready_tx.send(());
                })
            })?;
            if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                stop.store(true, Relaxed);
                kernel::join(t)?;
                bail!("the recvmmsg receiver did not start");
            }
            let sender = namespace_sender(&lab, s, 64)?;
            let sent0 = sender.totals().tx_frames;
            let t0 = Instant::now();
            let rate = s.window(|| Ok(got.load(Relaxed)));
            offered_k.push(
                (sender.totals().tx_frames - sent0) as f64 / t0.elapsed().as_secs_f64() / 1e6,
            );
            sender.stop()?;
            stop.store(true, Relaxed);
            kernel::join(t)?;
            let mpps = rate? / 1e6;
            progress(
                B,
                run,
                s.runs,
                "kernel recvmmsg",
                format!("{mpps:.3} Mpps received"),
            );
            k.push(mpps);
        }
    }
    Ok(Outcome {
        rows: vec![Row::new(
            B,
            "UDP RX, 64-byte frames, received by the application",
            "Mpps",
            true,
            &hs,
            "recvmmsg batch 64",
            &k,
        )],
        notes: vec![format!(
            "udp-rx-64: the pktgen sender offered {:.3} Mpps (median) while hoststack received, {:.3} Mpps while the kernel did (on a veth the receive path runs on the sender's core)",
            Spread::of(&offered).median,
            Spread::of(&offered_k).median
        )],
    })
}

// ---- TCP bulk -------------------------------------------------------------

fn bulk_client(lab: &Lab, s: &Settings) -> Result<kernel::BulkResult> {
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (d, stop) = (s.bulk_duration, s.interrupted.clone());
    let t = kernel::spawn_in("bulk-client", Some(&lab.netns), load_core, move || {
        kernel::tcp_bulk(SocketAddr::new(host, BULK_PORT), d, &stop)
    })?;
    kernel::join(t)
}

fn kernel_bulk(s: &Settings, offloads: bool) -> Result<kernel::BulkResult> {
    let lab = s.lab()?;
    if !offloads {
        env::set_offloads(&lab, false, false)?;
        env::set_offloads(&lab, true, false)?;
    }
    env::kernel_owns_host_end(&lab)?;
    let (host, _) = ip4(&lab);
    let (_, test_core) = s.cores();
    let server = KernelServer::start(
        SocketAddr::new(host, BULK_PORT),
        ServerKind::Discard,
        test_core,
    )?;
    let r = bulk_client(&lab, s);
    server.stop()?;
    r
}

fn tcp_bulk(s: &Settings) -> Result<Outcome> {
    const B: &str = "tcp-bulk";
    let (_, test_core) = s.cores();
    let core_arg = test_core.map(|c| c.to_string());
    let (mut ceiling, mut hs, mut k_on, mut k_off) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gso_ceiling = Vec::new();
    let mtu = s.mtu.unwrap_or(1500);
    for run in 1..=s.runs {
        s.check()?;
        {
            // The medium: full-size frames from the namespace into an AF_XDP
            // receiver on the host end, the path TCP data takes to
            // hoststack; sent by pktgen, then by the kernel's cheapest
            // sender (UDP GSO), since copy-mode AF_XDP transmit may be the
            // slower end.
            let lab = s.lab()?;
            let rx = host_receiver(&lab, test_core)?;
            let matched = rx.matched.clone();
            let sender = namespace_sender(&lab, s, mtu + 18)?;
            let rate = s.window(|| Ok(matched.load(Relaxed)));
            sender.stop()?;
            let gbps = rate? * mtu as f64 * 8.0 / 1e9;
            progress(
                B,
                run,
                s.runs,
                "medium ceiling, pktgen -> AF_XDP",
                format!("{gbps:.2} Gbps of IP packets"),
            );
            ceiling.push(gbps);
            // The kernel cannot resolve the host end while AF_XDP takes
            // every frame: give it the neighbour entry.
            let host_mac = env::mac_of(None, &lab.host_if)?;
            let mac = host_mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            env::run(lab.command("ip").args([
                "neigh",
                "replace",
                &lab.cfg.host4.addr.to_string(),
                "lladdr",
                &mac,
                "dev",
                &lab.peer_if,
            ]))?;
            let (host, _) = ip4(&lab);
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let (st, se) = (stop.clone(), sent.clone());
            let (load_core, _) = s.cores();
            let t = kernel::spawn_in("gso-sender", Some(&lab.netns), load_core, move || {
                kernel::udp_gso_sender(SocketAddr::new(host, UDP_PORT), mtu - 28, 44, &st, &se)
            })?;
            let rate = s.window(|| Ok(matched.load(Relaxed)));
            stop.store(true, Relaxed);
            kernel::join(t)?;
            rx.stop()?;
            let gbps = rate? * mtu as f64 * 8.0 / 1e9;
            progress(
                B,
                run,
                s.runs,
                "medium ceiling, kernel UDP GSO -> AF_XDP",
                format!("{gbps:.2} Gbps of IP packets"),
            );
            gso_ceiling.push(gbps);
        }
        s.check()?;
        {
            let lab = s.lab()?;
            let mut args = vec!["--discard", "--tcp-port", "5001", "--udp-port", "0"];
            if let Some(c) = &core_arg {
                args.extend(["--cores", c.as_str()]);
            }
            let server = HoststackServer::start(&s.hoststack, &lab, &args)?;
            let r = bulk_client(&lab, s);
            let counters = server.stop()?;
            let r = r?;
            let got = counters["tcp_bytes"].as_u64().unwrap_or(0);
            if got < r.bytes {
                bail!(
                    "hoststack counted {got} bytes of the {} the client sent",
                    r.bytes
                );
            }
            progress(B, run, s.runs, "hoststack", format!("{:.2} Gbps", r.gbps()));
            hs.push(r.gbps());
        }
        for (offloads, side, figures) in [
            (true, "kernel, default offloads", &mut k_on),
            (false, "kernel, TSO/GSO/GRO off", &mut k_off),
        ] {
            s.check()?;
            let r = kernel_bulk(s, offloads)?;
            progress(B, run, s.runs, side, format!("{:.2} Gbps", r.gbps()));
            figures.push(r.gbps());
        }
    }
    let share = |v: &[f64], c: &[f64]| {
        v.iter()
            .zip(c)
            .map(|(x, c)| 100.0 * x / c)
            .collect::<Vec<_>>()
    };
    let mut share_pktgen = Row::new(
        B,
        "TCP bulk as % of the pktgen -> AF_XDP ceiling",
        "%",
        true,
        &share(&hs, &ceiling),
        "kernel, offloads off",
        &share(&k_off, &ceiling),
    );
    share_pktgen.chart = false;
    let mut share_gso = Row::new(
        B,
        "TCP bulk as % of the kernel GSO -> AF_XDP ceiling",
        "%",
        true,
        &share(&hs, &gso_ceiling),
        "kernel, offloads off",
        &share(&k_off, &gso_ceiling),
    );
    share_gso.chart = false;
    let (c, g, h) = (
        Spread::of(&ceiling),
        Spread::of(&gso_ceiling),
        Spread::of(&hs),
    );
    let pct = |x: f64, of: f64| 100.0 * x / of.max(f64::MIN_POSITIVE);
    Ok(Outcome {
        rows: vec![
            Row::new(
                B,
                "TCP bulk, 1 stream, goodput",
                "Gbps",
                true,
                &hs,
                "kernel, default offloads",
                &k_on,
            )
            .labelled("tcp-bulk Gbps vs kernel offloads on"),
            Row::new(
                B,
                "TCP bulk, 1 stream, goodput",
                "Gbps",
                true,
                &hs,
                "kernel, TSO/GSO/GRO off",
                &k_off,
            )
            .labelled("tcp-bulk Gbps vs kernel offloads off"),
            share_pktgen,
            share_gso,
        ],
        notes: vec![format!(
            "tcp-bulk: medium ceiling (MTU {mtu}, {}-byte frames from the namespace into AF_XDP copy mode on the host end, Gbps of IP packets): {:.2} ({:.2}-{:.2}) with pktgen sending, {:.2} ({:.2}-{:.2}) with a kernel UDP GSO sender; hoststack's TCP goodput is {:.0} % and {:.0} % of them",
            mtu + 14,
            c.median,
            c.min,
            c.max,
            g.median,
            g.min,
            g.max,
            pct(h.median, c.median),
            pct(h.median, g.median),
        )],
    })
}

// ---- TCP request/response and connection rate ---------------------------

fn hoststack_echo(s: &Settings, lab: &Lab) -> Result<HoststackServer> {
    let (_, test_core) = s.cores();
    let core_arg = test_core.map(|c| c.to_string());
    let mut args = vec!["--tcp-port", "7", "--udp-port", "0"];
    if let Some(c) = &core_arg {
        args.extend(["--cores", c.as_str()]);
    }
    HoststackServer::start(&s.hoststack, lab, &args)
}

fn kernel_echo(s: &Settings, lab: &Lab) -> Result<KernelServer> {
    env::kernel_owns_host_end(lab)?;
    let (host, _) = ip4(lab);
    let (_, test_core) = s.cores();
    KernelServer::start(
        SocketAddr::new(host, ECHO_PORT),
        ServerKind::Echo,
        test_core,
    )
}

fn rr_client(s: &Settings, lab: &Lab) -> Result<kernel::RrResult> {
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (w, d, stop) = (s.warmup, s.duration, s.interrupted.clone());
    let t = kernel::spawn_in("rr-client", Some(&lab.netns), load_core, move || {
        kernel::tcp_rr(SocketAddr::new(host, ECHO_PORT), 64, w, d, &stop)
    })?;
    kernel::join(t)
}

/// One side of an echo benchmark: a fresh lab, that side's echo server on
/// the host end, `client` run against it from the namespace.
#[derive(Clone, Copy, PartialEq)]
enum EchoSide {
    Hoststack,
    Kernel,
}

impl EchoSide {
    const BOTH: [EchoSide; 2] = [EchoSide::Hoststack, EchoSide::Kernel];

    fn name(self) -> &'static str {
        match self {
            EchoSide::Hoststack => "hoststack",
            EchoSide::Kernel => "kernel",
        }
    }

    /// The client's result, and hoststack's counters when it was that side.
    fn measure<T>(
        self,
        s: &Settings,
        client: impl FnOnce(&Settings, &Lab) -> Result<T>,
    ) -> Result<(T, Option<serde_json::Value>)> {
        s.check()?;
        let lab = s.lab()?;
        match self {
            EchoSide::Hoststack => {
                let server = hoststack_echo(s, &lab)?;
                let r = client(s, &lab);
                let counters = server.stop()?;
                Ok((r?, Some(counters)))
            }
            EchoSide::Kernel => {
                let server = kernel_echo(s, &lab)?;
                let r = client(s, &lab);
                server.stop()?;
                Ok((r?, None))
            }
        }
    }
}

fn tcp_rr_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "tcp-rr-64";
    let mut hs = [Vec::new(), Vec::new(), Vec::new()];
    let mut k = [Vec::new(), Vec::new(), Vec::new()];
    for run in 1..=s.runs {
        for side in EchoSide::BOTH {
            let (r, _) = side.measure(s, rr_client)?;
            let f = [
                r.count as f64 / r.elapsed.as_secs_f64().max(1e-9),
                percentile(&r.samples, 0.50) as f64 / 1000.0,
                percentile(&r.samples, 0.99) as f64 / 1000.0,
            ];
            progress(
                B,
                run,
                s.runs,
                side.name(),
                format!(
                    "{:.0} trans/s, p50 {:.1} us, p99 {:.1} us",
                    f[0], f[1], f[2]
                ),
            );
            let figures = if side == EchoSide::Hoststack {
                &mut hs
            } else {
                &mut k
            };
            for (v, x) in figures.iter_mut().zip(f) {
                v.push(x);
            }
        }
    }
    let label = "kernel echo server";
    Ok(Outcome {
        rows: vec![
            Row::new(
                B,
                "TCP 64-byte request/response, 1 connection",
                "trans/s",
                true,
                &hs[0],
                label,
                &k[0],
            ),
            Row::new(
                B,
                "TCP 64-byte round trip, p50",
                "us",
                false,
                &hs[1],
                label,
                &k[1],
            )
            .labelled("tcp-rr-64 p50 latency"),
            Row::new(
                B,
                "TCP 64-byte round trip, p99",
                "us",
                false,
                &hs[2],
                label,
                &k[2],
            )
            .labelled("tcp-rr-64 p99 latency"),
        ],
        notes: Vec::new(),
    })
}

fn connrate_client(s: &Settings, lab: &Lab) -> Result<kernel::ConnResult> {
    // The client closes first; without TIME_WAIT buckets its ports are
    // free again at once (the FIN exchange still happens in full).
    env::sysctl_in_lab(lab, "net.ipv4.tcp_max_tw_buckets", "0")?;
    env::sysctl_in_lab(lab, "net.ipv4.ip_local_port_range", "1024 65535")?;
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (d, stop) = (s.duration, s.interrupted.clone());
    let t = kernel::spawn_in("conn-client", Some(&lab.netns), load_core, move || {
        kernel::tcp_connrate(SocketAddr::new(host, ECHO_PORT), 64, d, &stop)
    })?;
    kernel::join(t)
}

fn tcp_connrate(s: &Settings) -> Result<Outcome> {
    const B: &str = "tcp-connrate";
    let (mut hs, mut k) = (Vec::new(), Vec::new());
    let mut failures = 0;
    for run in 1..=s.runs {
        for side in EchoSide::BOTH {
            let (r, counters) = side.measure(s, connrate_client)?;
            failures += r.failed;
            let rate = r.ok as f64 / r.elapsed.as_secs_f64();
            let accepted = counters
                .map(|c| format!("; server accepted {}", c["tcp_connections"]))
                .unwrap_or_default();
            progress(
                B,
                run,
                s.runs,
                side.name(),
                format!("{rate:.0} conn/s ({} failed{accepted})", r.failed),
            );
            if side == EchoSide::Hoststack {
                hs.push(rate);
            } else {
                k.push(rate);
            }
        }
    }
    let mut notes = Vec::new();
    if failures > 0 {
        notes.push(format!(
            "tcp-connrate: {failures} connection(s) failed over all runs"
        ));
    }
    Ok(Outcome {
        rows: vec![Row::new(
            B,
            "TCP connect + 64-byte exchange + close",
            "conn/s",
            true,
            &hs,
            "kernel echo server",
            &k,
        )],
        notes,
    })
}

// ---- cut-through and worker modes ---------------------------------------

/// `program args` pinned to `core` with taskset (unpinned when None).
fn pinned(core: Option<usize>, program: &std::path::Path, args: &[&str]) -> std::process::Command {
    match core {
        Some(c) => {
            let mut cmd = std::process::Command::new("taskset");
            cmd.args(["-c", &c.to_string()]).arg(program).args(args);
            cmd
        }
        None => {
            let mut cmd = std::process::Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// A kernel server in its own process (`hoststack-bench kernel-server`).
fn kernel_server_process(core: Option<usize>, listen: &[&str], echo: bool) -> Result<Managed> {
    let me = std::env::current_exe().context("locating hoststack-bench")?;
    let mut args = vec!["kernel-server"];
    args.extend_from_slice(listen);
    if echo {
        args.push("--echo");
    }
    Managed::start(pinned(core, &me, &args), "kernel server process", "ready")
}

fn gbytes(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// Fifo size of both cut-through apps, and the Unix socket's send buffer:
/// with less, a reader faster than its writer empties the fifo after every
/// few writes and each refill costs a wakeup through the stack's worker.
const CUT_THROUGH_BUFFER: usize = 4 << 20;
const CUT_THROUGH_BUFFER_ARG: &str = "4194304";

fn cut_through(s: &Settings) -> Result<Outcome> {
    const B: &str = "cut-through";
    let (load_core, test_core) = s.cores();
    let bytes = ((s.duration.as_secs_f64() * 2.0 * f64::from(1u32 << 30)) as u64).max(64 << 20);
    let ex = env::examples_dir(&s.hoststack);
    let (sink_bin, client_bin) = (ex.join("echo_server"), ex.join("throughput_client"));
    for b in [&sink_bin, &client_bin] {
        if !b.is_file() {
            bail!(
                "{} is missing: build the examples (cargo build --release -p hoststack-app --examples)",
                b.display()
            );
        }
    }
    let tmp = std::env::temp_dir();
    let id = format!("{}-{}", std::process::id(), s.lab);
    let (mut hs, mut unix, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=s.runs {
        s.check()?;
        {
            // Two external apps in one app namespace with local scope: the
            // fifos sit in a segment both map, the stack only relays
            // notifications (its worker sleeps in interrupt mode).
            let lab = s.lab()?;
            let sock = tmp.join(format!("hsbench-{id}.sock"));
            let sock_s = sock.display().to_string();
            let mut cmd = std::process::Command::new(&s.hoststack);
            cmd.args([
                "serve",
                "--interface",
                &lab.host_if,
                "--address",
                &lab.cfg.host4.to_string(),
            ])
            .args(["--app-socket", &sock_s, "--mode", "interrupt"]);
            if let Some(c) = test_core {
                cmd.args(["--cores", &c.to_string()]);
            }
            let serve = Managed::start(cmd, "hoststack serve", "ready")?;
            let sink = Managed::start(
                pinned(
                    test_core,
                    &sink_bin,
                    &[
                        "--socket",
                        &sock_s,
                        "--listen",
                        "0.0.0.0:9",
                        "--local-scope",
                        "--discard",
                        "--fifo-size",
                        CUT_THROUGH_BUFFER_ARG,
                    ],
                ),
                "the echo_server example (discarding)",
                "ready",
            )?;
            let client = Managed::start(
                pinned(
                    load_core,
                    &client_bin,
                    &[
                        "--socket",
                        &sock_s,
                        "--connect",
                        "127.0.0.1:9",
                        "--local-scope",
                        "--one-way",
                        "--bytes",
                        &bytes.to_string(),
                        "--fifo-size",
                        CUT_THROUGH_BUFFER_ARG,
                    ],
                ),
                "the throughput_client example",
                "",
            )?;
            let report = client
                .wait(Duration::from_secs(300))?
                .context("throughput_client printed no JSON")?;
            sink.terminate()?;
            serve.stop()?;
            if report["ok"] != true {
                bail!("the cut-through transfer failed: {report}");
            }
            let v = report["gbytes_per_s"].as_f64().context("no gbytes_per_s")?;
            progress(
                B,
                run,
                s.runs,
                "hoststack cut-through",
                format!("{v:.2} GB/s"),
            );
            hs.push(v);
        }
        s.check()?;
        {
            let path = tmp.join(format!("hsbench-{id}-unix.sock"));
            let server =
                kernel_server_process(test_core, &["--unix", &path.display().to_string()], false)?;
            let t = kernel::spawn_in("unix-client", None, load_core, move || {
                let c = std::os::unix::net::UnixStream::connect(&path)
                    .context("connecting to the Unix socket")?;
                // A Unix stream queues on the sender's buffer: give it what
                // the fifos get (the kernel caps it at wmem_max, then doubles).
                nix::sys::socket::setsockopt(
                    &c,
                    nix::sys::socket::sockopt::SndBuf,
                    &CUT_THROUGH_BUFFER,
                )
                .context("setting SO_SNDBUF on the Unix socket")?;
                kernel::stream_one_way(c, bytes, |c| c.shutdown(std::net::Shutdown::Write))
            })?;
            let d = kernel::join(t);
            server.stop()?;
            let v = gbytes(bytes, d?);
            progress(B, run, s.runs, "kernel Unix socket", format!("{v:.2} GB/s"));
            unix.push(v);
        }
        s.check()?;
        {
            let addr: SocketAddr = "127.0.0.1:47091".parse().expect("valid address");
            let server = kernel_server_process(test_core, &["--tcp", &addr.to_string()], false)?;
            let t = kernel::spawn_in("loopback-client", None, load_core, move || {
                let c = kernel::connect(addr)?;
                kernel::stream_one_way(c, bytes, |c| c.shutdown(std::net::Shutdown::Write))
            })?;
            let d = kernel::join(t);
            server.stop()?;
            let v = gbytes(bytes, d?);
            progress(
                B,
                run,
                s.runs,
                "kernel TCP over 127.0.0.1",
                format!("{v:.2} GB/s"),
            );
            tcp.push(v);
        }
    }
    let metric = "one-way stream between two processes";
    Ok(Outcome {
        rows: vec![
            Row::new(B, metric, "GB/s", true, &hs, "Unix socket pair", &unix)
                .labelled("cut-through GB/s vs Unix socket"),
            Row::new(B, metric, "GB/s", true, &hs, "TCP over 127.0.0.1", &tcp)
                .labelled("cut-through GB/s vs TCP loopback"),
        ],
        notes: vec![format!(
            "cut-through: {} MiB per run in 64 KiB writes, {} MiB fifos and Unix send buffer; hoststack = the throughput_client and echo_server --discard examples attached with local scope to `hoststack serve --mode interrupt`",
            bytes >> 20,
            CUT_THROUGH_BUFFER >> 20
        )],
    })
}

/// CPU the server process uses while nothing happens, % of one core.
fn idle_percent(s: &Settings, pid: u32) -> Result<f64> {
    s.sleep(s.warmup)?;
    let (c0, t0) = (env::cpu_seconds(pid)?, Instant::now());
    s.sleep(s.duration)?;
    let (c1, t1) = (env::cpu_seconds(pid)?, Instant::now());
    Ok(100.0 * (c1 - c0) / (t1 - t0).as_secs_f64())
}

fn idle_cpu(s: &Settings) -> Result<Outcome> {
    const B: &str = "idle-cpu";
    const MODES: [&str; 3] = ["poll", "interrupt", "adaptive"];
    let (_, test_core) = s.cores();
    let core_arg = test_core.map(|c| c.to_string());
    let mut hs = vec![[Vec::new(), Vec::new(), Vec::new()]; MODES.len()];
    let mut k = [Vec::new(), Vec::new(), Vec::new()];
    let lat = |r: &kernel::RrResult| {
        (
            percentile(&r.samples, 0.50) as f64 / 1000.0,
            percentile(&r.samples, 0.99) as f64 / 1000.0,
        )
    };
    for run in 1..=s.runs {
        for (m, mode) in MODES.iter().enumerate() {
            s.check()?;
            let lab = s.lab()?;
            let mut args = vec!["--tcp-port", "7", "--udp-port", "0", "--mode", mode];
            if let Some(c) = &core_arg {
                args.extend(["--cores", c.as_str()]);
            }
            let server = HoststackServer::start(&s.hoststack, &lab, &args)?;
            let idle = idle_percent(s, server.pid());
            let r = idle.and_then(|i| rr_client(s, &lab).map(|r| (i, r)));
            server.stop()?;
            let (idle, r) = r?;
            let (p50, p99) = lat(&r);
            progress(
                B,
                run,
                s.runs,
                &format!("hoststack {mode} mode"),
                format!("idle {idle:.1} % of a core, p50 {p50:.1} us, p99 {p99:.1} us"),
            );
            for (v, x) in hs[m].iter_mut().zip([idle, p50, p99]) {
                v.push(x);
            }
        }
        s.check()?;
        let lab = s.lab()?;
        env::kernel_owns_host_end(&lab)?;
        let (host, _) = ip4(&lab);
        let server = kernel_server_process(
            test_core,
            &["--tcp", &SocketAddr::new(host, ECHO_PORT).to_string()],
            true,
        )?;
        let idle = idle_percent(s, server.pid());
        let r = idle.and_then(|i| rr_client(s, &lab).map(|r| (i, r)));
        server.stop()?;
        let (idle, r) = r?;
        let (p50, p99) = lat(&r);
        progress(
            B,
            run,
            s.runs,
            "kernel",
            format!("idle {idle:.1} % of a core, p50 {p50:.1} us, p99 {p99:.1} us"),
        );
        for (v, x) in k.iter_mut().zip([idle, p50, p99]) {
            v.push(x);
        }
    }
    let label = "kernel echo server (blocking)";
    let mut rows = Vec::new();
    for (m, mode) in MODES.iter().enumerate() {
        let metrics = [
            (format!("idle CPU, {mode} mode"), "% of a core"),
            (format!("TCP 64-byte round trip p50, {mode} mode"), "us"),
            (format!("TCP 64-byte round trip p99, {mode} mode"), "us"),
        ];
        for (i, (metric, unit)) in metrics.iter().enumerate() {
            let row = Row::new(B, metric, unit, false, &hs[m][i], label, &k[i]);
            // Only the p99 goes on the chart: a ratio of idle CPU against a
            // blocking server's zero means nothing.
            rows.push(if i == 2 {
                row.labelled(&format!("idle-cpu p99 latency, {mode} mode"))
            } else {
                Row {
                    chart: false,
                    ..row
                }
            });
        }
    }
    Ok(Outcome {
        rows,
        notes: vec![
            "idle-cpu: idle CPU is the server process's user+system time over the window with no traffic, from /proc (10 ms resolution)".into(),
        ],
    })
}

/// Checks the names before anything runs.
pub fn validate(names: &[String]) -> Result<()> {
    for n in names {
        if !BENCHMARKS.iter().any(|(b, _)| b == n) {
            if let Some((_, why)) = NOT_YET.iter().find(|(b, _)| b == n) {
                bail!("benchmark {n} is not possible yet: {why}");
            }
            bail!(
                "no benchmark named {n} (known: {})",
                BENCHMARKS
                    .iter()
                    .map(|b| b.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// Context for a failed benchmark.
pub fn run_named(name: &str, s: &Settings) -> Result<Outcome> {
    run(name, s).with_context(|| format!("benchmark {name}"))
}
