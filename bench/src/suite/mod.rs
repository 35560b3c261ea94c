//! The side-by-side benchmarks. Each one measures hoststack and the Linux
//! kernel on the same work, in the same invocation, on a veth lab built
//! fresh for every measurement (so offload changes, ARP entries or
//! TIME_WAIT sockets of one side never leak into the other), alternating
//! the sides run by run.
//!
//! A benchmark is one entry of [`BENCHMARKS`]: its name, what each side
//! runs (printed under the table, in the JSON and by `list --markdown` for
//! bench/README.md) and the function that measures it. A row of the table
//! is one metric with a line per side: hoststack's configurations and the
//! kernel's (by default an epoll server, and the same server busy-polling
//! with idle CPUs kept polling); every hoststack line's ratio is taken
//! against the better kernel line. [`sides`] starts the servers,
//! [`sides::alternate`] runs a client against each side in turn and
//! [`Row::of`] turns the runs into a row: a new benchmark is a function
//! built from those three and an entry in the list.
//!
//! Unmodified servers (nginx, redis, memcached) are a service like the
//! echo servers: [`sides::Side::Preload`] runs them under the LD_PRELOAD
//! library on the daemon, the kernel sides run the same binary as it is.
//!
//! Placement on the 2-core machine: the load (client, sender) runs on core
//! 0 inside the lab's namespace; the side under test (hoststack's worker
//! and its app, the kernel's server threads, pktgen's queue) on core 1.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_lab::Lab;
use serde::Serialize;

use crate::cpu::{BusyPolicy, Watch};
use crate::env;
use crate::stats::Spread;

mod bulk;
mod cpu_efficiency;
mod cut_through;
mod flood;
mod loss;
mod modes;
mod pktgen_row;
mod queues;
mod rr;
mod scale;
pub mod sides;
mod udp;
mod unmodified;

/// One benchmark: what both sides run, and how it is measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bench {
    /// Its name on the command line and in the table.
    pub name: &'static str,
    /// One line on what it measures.
    pub title: &'static str,
    /// What hoststack's side runs: server, app, mode, pinning.
    pub hoststack: &'static str,
    /// What the kernel's side runs.
    pub kernel: &'static str,
    /// The client or load, and where the figure is counted.
    pub measured: &'static str,
    #[serde(skip)]
    run: fn(&Settings) -> Result<Outcome>,
}

const KERNEL_ECHO: &str = "TCP echo on `hoststack-bench kernel-server` (its own process): one epoll loop on a thread pinned to core 1, nonblocking sockets, TCP_NODELAY on every connection (SO_REUSEPORT listeners when several workers); twice: default (blocking epoll_wait), and busy-polling (epoll_wait with zero timeout in a loop, net.core.busy_read and busy_poll at 50 us, idle CPUs held in their polling state through /dev/cpu_dma_latency = 0)";

const KERNEL_UDP_ECHO: &str = "UDP echo on `hoststack-bench kernel-server` (its own process): one socket (4 MiB receive buffer) in an epoll loop on a thread pinned to core 1, recvmmsg/sendmmsg in batches of 64; twice: default (blocking epoll_wait), and busy-polling (epoll_wait with zero timeout in a loop, net.core.busy_read and busy_poll at 50 us, idle CPUs held polling through /dev/cpu_dma_latency = 0)";

const KERNEL_PROGRAM: &str = "the same binary and configuration with nothing preloaded, pinned to core 1; twice: as it is, and with net.core.busy_read and busy_poll at 50 us and idle CPUs held polling through /dev/cpu_dma_latency = 0 (the program's own loop cannot be made to spin)";

/// The benchmarks, in the order they run.
pub const BENCHMARKS: &[Bench] = &[
    Bench {
        name: "udp-rr-64",
        title: "UDP 64-byte request/response, one flow: transactions/s, p50, p99",
        hoststack: "UDP sessions and an app, 1 worker pinned to core 1 in poll mode (idle CPUs held polling, as for the busy-polling kernel): the builtin echo app (`hoststack echo-server --udp-port 7`), and the external echo app (`hoststack serve --app-socket` + `echo_server --udp 0.0.0.0:7 --quiet`, pinned to core 1, over the app socket and shared-memory fifos). Both again on a TAP lab (the TAP and the kernel peer in the namespace): `--driver uring-tap --netns`, io_uring with vnet offloads on",
        kernel: KERNEL_UDP_ECHO,
        measured: "one kernel UDP socket in the namespace (core 0): send 64 bytes, wait for the echo (200 ms timeout, counted lost), again; round trips over the window",
        run: udp::udp_rr_64,
    },
    Bench {
        name: "udp-echo-64",
        title: "UDP echo rate, 64-byte frames: datagrams echoed per second with the client sending flat out",
        hoststack: "the builtin echo app and the external echo app on UDP sessions, as in udp-rr-64 (poll mode, core 1, idle CPUs polling)",
        kernel: KERNEL_UDP_ECHO,
        measured: "a kernel sendmmsg sender (batch 64, 18-byte payloads = 64-byte frames) in the namespace on core 0; echoes counted at the peer interface's rx_packets and dropped at its nftables ingress hook (before the client's socket)",
        run: udp::udp_echo_64,
    },
    Bench {
        name: "tcp-rr-64",
        title: "TCP 64-byte request/response on one connection: transactions/s, p50, p99",
        hoststack: "`hoststack serve --app-socket` (1 worker pinned to core 1, poll mode, idle CPUs held polling) with the external `echo_server --quiet` app pinned to core 1, and as a second line the builtin echo app (`hoststack echo-server`, same worker). Both again on a TAP lab (the TAP and the kernel peer in the namespace): `--driver uring-tap --netns`, io_uring with vnet offloads on",
        kernel: KERNEL_ECHO,
        measured: "a Rust kernel client in the namespace on core 0, TCP_NODELAY: write 64 bytes, read the 64-byte echo, one connection; transactions/s, p50, p99 over the window",
        run: rr::tcp_rr_64,
    },
    Bench {
        name: "tcp-connrate",
        title: "TCP connection rate: connect, 64-byte exchange, close",
        hoststack: "as in tcp-rr-64: the external echo app over the app socket, and the builtin echo app (poll mode, core 1, idle CPUs polling)",
        kernel: KERNEL_ECHO,
        measured: "a Rust kernel client in the namespace on core 0: connect, 64-byte exchange, close, one at a time; the namespace sets tcp_max_tw_buckets=0 so ports are free again at once (the FIN exchange still happens)",
        run: rr::tcp_connrate,
    },
    Bench {
        name: "tcp-bulk",
        title: "TCP bulk, one stream into the server: goodput",
        hoststack: "external `echo_server --discard` on `hoststack serve`, and the builtin `hoststack echo-server --discard` (poll mode, core 1); the peer keeps the veth's offloads. Then on a TAP lab (`--driver uring-tap`, io_uring): both apps with vnet offloads on (checksums, TSO/USO super-frames both ways; beside the kernel with offloads on), and the external app with `--offload off` (no vnet header: the kernel segments and checksums in software; beside the kernel with TSO/GSO/GRO off)",
        kernel: "a discard server (the same epoll server, 256 KiB reads), default and busy-polling: with the veth's default offloads, and with TSO/GSO/GRO off on both ends",
        measured: "a Rust kernel client in the namespace on core 0 writes 128 KiB at a time for --bulk-duration; bytes over the time until the server closed after the client's FIN. The AF_XDP medium ceiling (pktgen and UDP GSO into an AF_XDP receiver) is measured in the same run and given as a note",
        run: bulk::tcp_bulk,
    },
    Bench {
        name: "cpu-efficiency",
        title: "UDP echo per server CPU-second, at a fixed offered rate and flat out",
        hoststack: "the external echo app on `hoststack serve` (both on core 1), in poll mode (idle CPUs polling) and in interrupt mode (machine as it is)",
        kernel: KERNEL_UDP_ECHO,
        measured: "the udp-echo-64 sender paced to --cpu-load datagrams/s, then flat out, on the same server; echoes counted at the peer. Server CPU = user+system time of the server's processes (/proc/PID/stat) + irq and softirq time of every CPU (/proc/stat; on a veth the receive softirq of the server's traffic runs on the sender's core)",
        run: cpu_efficiency::cpu_efficiency,
    },
    Bench {
        name: "worker-modes",
        title: "Idle CPU and TCP 64-byte round trips per hoststack worker mode (poll, interrupt, adaptive)",
        hoststack: "`hoststack serve --mode poll|interrupt|adaptive` (core 1) with the external echo app (core 1); idle CPUs held polling in poll mode only",
        kernel: KERNEL_ECHO,
        measured: "CPU of the server's processes over a window with no traffic (/proc, 10 ms ticks), then the tcp-rr-64 client",
        run: modes::worker_modes,
    },
    Bench {
        name: "cut-through",
        title: "Cut-through between two processes: one-way stream",
        hoststack: "the `throughput_client --one-way` (core 0) and `echo_server --discard` (core 1) examples attached with local scope to `hoststack serve --mode interrupt`: fifos in a shared memfd segment (4 MiB), no transport",
        kernel: "the same stream over a Unix socket pair (4 MiB send buffer), and over TCP on 127.0.0.1, the reader an epoll discard server in its own process on core 1",
        measured: "64 KiB writes; bytes over the time until the reader has taken the last one",
        run: cut_through::cut_through,
    },
    Bench {
        name: "pktgen-tx-64",
        title: "Packet generator: 64-byte UDP frames transmitted, no stack on either side",
        hoststack: "`pktgen` on the host end, AF_XDP (copy mode on a veth), pre-built frames, bursts of 256, pinned to core 1",
        kernel: "an AF_PACKET raw socket bound to the host end with PACKET_QDISC_BYPASS, the same pre-built frames sent with sendmmsg in batches of 64, pinned to core 1",
        measured: "the peer's rx_packets; the peer drops UDP/9 at its nftables ingress hook",
        run: pktgen_row::pktgen_tx_64,
    },
    Bench {
        name: "nginx",
        title: "nginx, unmodified: HTTP requests/s and p99 for a 4 KiB file with keep-alive and with Connection: close, server CPU per request",
        hoststack: "Debian's nginx (1 worker process, epoll, sendfile on, access log off) pinned to core 1 under `libhoststack_preload.so`, on `hoststack run` (the daemon): 1 worker pinned to core 1, interrupt mode (the program sleeps on its eventfd as it sleeps in epoll_wait on the kernel), 256 KiB fifos",
        kernel: KERNEL_PROGRAM,
        measured: "`wrk -t1 -c32 --latency` in the namespace on core 0 for the window (whole seconds, at least 1) after a warm-up, then again with `Connection: close`: requests/s and p99 of each. Server CPU per request = user+system time of the server's processes (nginx's master and worker; on hoststack's side the daemon too) + irq and softirq time of every CPU, over the wrk run, / requests",
        run: unmodified::nginx,
    },
    Bench {
        name: "redis",
        title: "redis, unmodified: SET and GET requests/s, server CPU per request",
        hoststack: "`redis-server` (persistence off) pinned to core 1 under the library on `hoststack run`, as for nginx (interrupt mode, core 1)",
        kernel: KERNEL_PROGRAM,
        measured: "`redis-benchmark -t set,get -c 50 --csv` in the namespace on core 0, 50,000 requests of each per second of the window, after a warm-up of SETs; server CPU per request as for nginx",
        run: unmodified::redis,
    },
    Bench {
        name: "memcached",
        title: "memcached, unmodified: memcaslap's get/set mix, ops/s and server CPU per op",
        hoststack: "`memcached -t 1` (TCP only) pinned to core 1 under the library on `hoststack run`, as for nginx (interrupt mode, core 1)",
        kernel: KERNEL_PROGRAM,
        measured: "`memcaslap -T 1 -c 16` (its 9:1 get/set mix) in the namespace on core 0 for the window (whole seconds, at least 1) after a warm-up: its TPS; server CPU per op as for nginx",
        run: unmodified::memcached,
    },
    Bench {
        name: "loss-sweep",
        title: "TCP goodput under 0, 0.5, 1, 2 and 5 % loss each way, 1 stream and 8 streams, offloads off",
        hoststack: "external `echo_server --discard` on `hoststack serve` (poll mode, core 1, the binary's default engine unless --tcp-engine); TSO/GSO/GRO off on both veth ends",
        kernel: "a discard server (the epoll server, 256 KiB reads), default and busy-polling, TSO/GSO/GRO off on both veth ends",
        measured: "nftables rules in the namespace drop N of every 1000 packets in its input and output hooks (the data and the ACKs), all rates in turn against one server; 1 and 8 Rust kernel clients on core 0 each write 128 KiB at a time for --bulk-duration; goodput = the streams' bytes over the time until the slowest one's server side closed after its FIN. Plots of goodput against loss under the chart",
        run: loss::loss_sweep,
    },
    Bench {
        name: "syn-flood",
        title: "A fresh client's connects during a spoofed SYN flood: success, connect time p50/p99, server memory growth",
        hoststack: "the external echo app on `hoststack serve` (poll mode, core 1, the binary's default engine: its SYN queue, accept queue and SYN cookies)",
        kernel: "TCP echo on `hoststack-bench kernel-server`, default and busy-polling as in tcp-rr-64, with the machine's SYN cookies setting (1, its default, here); its SYN-ACKs to the spoofed sources routed back into the lab by a policy rule for the host address",
        measured: "`hping3 -S --flood --rand-source -p 7` in the namespace on core 0 from --warmup before the window to its end; during the window a Rust kernel client (core 0) connects (2 s timeout), echoes 64 bytes and closes, every 10 ms, at least 5 times; server memory = RSS of the server processes (kernel: + /proc/meminfo Slab) at the end of the window less before the flood",
        run: flood::syn_flood,
    },
    Bench {
        name: "idle-conn-sweep",
        title: "TCP 64-byte round trips on one connection while 0, 1,000, 10,000 and 100,000 others sit idle (rate, p50, p99), and the time to open them",
        hoststack: "`hoststack serve --app-socket --tcp-buffer 16384` (1 worker pinned to core 1, poll mode, idle CPUs held polling) with the external `echo_server --quiet --fifo-size 4096` app pinned to core 1",
        kernel: "TCP echo on `hoststack-bench kernel-server`, default and busy-polling as in tcp-rr-64, each process raising RLIMIT_NOFILE to its hard limit; when the hard limit (20,000 here) is below the connections, several server processes on core 1 share the port through SO_REUSEPORT, and then only by default (several busy-polling processes would take turns spinning on the one core)",
        measured: "`kernel_conns --hold` processes in the namespace (at most 15,000 connections each, each from its own source address in the namespace, port range 1024-65535) open the idle connections step by step (--idle-conns), every connection echoing 64 bytes checked; after each step the tcp-rr-64 client on a connection of its own. Time to open = the steps' wall time summed; a plot of p50 against the count is drawn under the chart",
        run: scale::idle_conn_sweep,
    },
    Bench {
        name: "mem-per-conn",
        title: "Memory per established, idle TCP connection at the sweep's largest count (100,000)",
        hoststack: "as in idle-conn-sweep: `hoststack serve` (16 KiB TCP buffers) and the external echo app (4 KiB fifos); growth of both processes' proportional set (PSS: the shared-memory segments counted once), and the segments resident in the stack's process",
        kernel: "as in idle-conn-sweep (the epoll server, default and busy-polling): growth of /proc/meminfo's Slab and of the TCP socket memory (/proc/net/sockstat), less the clients' own share (the same growth in hoststack's runs, where the kernel holds only the clients' sockets), plus the server processes' PSS growth",
        measured: "read before the first idle connection and with all of them open; from idle-conn-sweep's runs when both run in one invocation (the same connections), else its own runs at the largest count. A second row gives the whole machine's growth on each side, clients included",
        run: scale::mem_per_conn,
    },
    Bench {
        name: "queue-scaling",
        title: "1 and 2 queues: 8-stream TCP bulk, 64-byte round trips on 8 connections, UDP receive, per-queue balance",
        hoststack: "the builtin echo app (`hoststack echo-server`) on a two-queue veth lab, interrupt mode (the load shares both cores with its workers), serving queue 0 alone (`--queues 1 --traffic-steered`, the kernel's end sending on one queue) or both (`--queues 2`, queue q's worker on core q); UDP through the same app with `--discard`",
        kernel: "the epoll echo server (`hoststack-bench kernel-server`, default mode) with a worker per queue (queue q's on core q, SO_REUSEPORT) on the same veth end with 1 or 2 receive queues (`ethtool -L`), RPS off and on (rps_cpus 0 or 3); UDP receive by a SO_REUSEPORT socket and pinned thread per queue",
        measured: "`kernel_conns` in the namespace: 8 streams each echoing 64 MiB (checked) at once, Gbps each way over the slowest stream, and the slowest stream's rate over the fastest's (balance); 8 connections of 20,000 64-byte round trips each; then 64-byte datagrams from 16 source ports in two threads for --duration, counted by the server. Scaling rows: 2 queues over 1, run by run (the kernel's better RPS setting on each count)",
        run: queues::queue_scaling,
    },
];

/// Benchmarks the open issues ask for that cannot run yet, and why.
pub const NOT_YET: &[(&str, &str)] = &[];

/// The benchmark called `name`.
pub fn find(name: &str) -> Option<&'static Bench> {
    BENCHMARKS.iter().find(|b| b.name == name)
}

const LOAD_CORE: usize = 0;
const TEST_CORE: usize = 1;

/// How a whole run is configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs per side (median, min, max over them).
    pub runs: usize,
    /// Measured window of each rate, request/response and CPU run.
    pub duration: Duration,
    /// Length of each TCP bulk stream.
    pub bulk_duration: Duration,
    /// Time before the window opens.
    pub warmup: Duration,
    /// The fixed offered load of the CPU efficiency row, datagrams/s.
    pub cpu_load: f64,
    /// `--tcp-engine` for hoststack (None: its default).
    pub tcp_engine: Option<String>,
    /// Lab name.
    pub lab: String,
    /// Lab subnet (10.77.N.0/24).
    pub subnet: u8,
    /// Lab MTU (None: 1500).
    pub mtu: Option<usize>,
    /// The `hoststack` binary.
    pub hoststack: PathBuf,
    /// Idle connection counts of the connection-count sweep, ascending.
    pub idle_conns: Vec<usize>,
    /// A check that the rows run (`--quick`): shorter streams and floods.
    pub quick: bool,
    /// Set by SIGINT/SIGTERM.
    pub interrupted: Arc<AtomicBool>,
    /// What to do when other processes use the CPUs.
    pub busy: BusyPolicy,
}

impl Settings {
    /// Runs one measurement while watching the other processes on the
    /// machine; refuses its figure (or, with --allow-busy, notes it) when
    /// they used more than the threshold.
    fn guarded<T>(&self, bench: &str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let w = Watch::start();
        let r = f()?;
        self.busy
            .judge(bench, &format!("during {what}"), w.finish())?;
        Ok(r)
    }

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

    /// A fresh TAP lab: the TAP and the kernel peer in the namespace.
    fn tap_lab(&self) -> Result<Lab> {
        env::fresh_tap_lab(&self.lab, self.subnet, self.mtu)
    }

    /// (load core, core under test), None on a 1-core machine.
    fn cores(&self) -> (Option<usize>, Option<usize>) {
        if std::thread::available_parallelism().map_or(1, usize::from) >= 2 {
            (Some(LOAD_CORE), Some(TEST_CORE))
        } else {
            (None, None)
        }
    }
}

fn progress(bench: &str, run: usize, runs: usize, side: &str, figure: &str) {
    eprintln!("[{bench}] run {run}/{runs} {side}: {figure}");
}

fn ip4(lab: &Lab) -> (IpAddr, IpAddr) {
    (lab.cfg.host4.addr, lab.cfg.peer4.addr)
}

/// One side's figure in a row.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// What this side runs, e.g. "hoststack: external app, poll".
    pub side: String,
    /// Short form for the chart.
    pub short: String,
    /// A kernel configuration (else hoststack's).
    pub kernel: bool,
    /// The runs.
    pub runs: Spread,
    /// hoststack lines: the advantage over the best kernel line,
    /// hoststack/kernel for rates and kernel/hoststack for latencies and
    /// costs (above 1: hoststack better), from the medians; None when no
    /// finite ratio exists.
    pub ratio: Option<f64>,
    /// Kernel lines: the one the ratios are taken against.
    pub base: bool,
}

/// One side's runs before they become a line.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Long label.
    pub side: String,
    /// Short label.
    pub short: String,
    /// A kernel configuration.
    pub kernel: bool,
    /// One value per run.
    pub values: Vec<f64>,
}

/// One metric, a line per side.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Benchmark name.
    pub bench: String,
    /// What is measured.
    pub metric: String,
    /// Unit of every line.
    pub unit: String,
    /// True when more is better (rates); false for latencies and costs.
    pub higher_is_better: bool,
    /// hoststack's lines first, then the kernel's.
    pub lines: Vec<Line>,
    /// Short label for the chart.
    pub label: String,
    /// Whether the chart shows it.
    #[serde(skip)]
    pub chart: bool,
    /// A point of a line plot (one series per side, the medians against
    /// `x`) drawn under the ratio chart.
    pub plot: Option<PlotPoint>,
}

/// Where a row sits in a line plot.
#[derive(Debug, Clone, Serialize)]
pub struct PlotPoint {
    /// The plot's title (rows with the same title make one plot).
    pub title: String,
    /// What x counts.
    pub x_label: String,
    /// This row's x.
    pub x: f64,
}

fn ratio(higher_is_better: bool, h: f64, k: f64) -> Option<f64> {
    match (higher_is_better, h, k) {
        (_, h, k) if h == 0.0 && k == 0.0 => Some(1.0),
        (true, h, k) if k > 0.0 => Some(h / k),
        (false, h, k) if h > 0.0 => Some(k / h),
        _ => None,
    }
}

impl Row {
    /// A row from its figures; hoststack's ratios against the best kernel
    /// figure (highest median for rates, lowest for latencies and costs).
    pub fn new(
        bench: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        figures: Vec<Figure>,
    ) -> Self {
        let (mut hs, mut k): (Vec<Line>, Vec<Line>) = figures
            .into_iter()
            .map(|f| Line {
                side: f.side,
                short: f.short,
                kernel: f.kernel,
                runs: Spread::of(&f.values),
                ratio: None,
                base: false,
            })
            .partition(|l| !l.kernel);
        let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
        let best = (0..k.len()).reduce(|b, i| {
            if better(k[i].runs.median, k[b].runs.median) {
                i
            } else {
                b
            }
        });
        if let Some(b) = best {
            k[b].base = true;
            let base = k[b].runs.median;
            for l in &mut hs {
                l.ratio = ratio(higher_is_better, l.runs.median, base);
            }
        }
        hs.extend(k);
        Self {
            bench: bench.into(),
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better,
            lines: hs,
            label: format!("{bench} {unit}"),
            chart: true,
            plot: None,
        }
    }

    /// Makes the row point `x` of line plot `title`.
    pub fn plotted(mut self, title: &str, x_label: &str, x: f64) -> Self {
        self.plot = Some(PlotPoint {
            title: title.into(),
            x_label: x_label.into(),
            x,
        });
        self
    }

    /// Sets the chart label.
    pub fn labelled(mut self, label: &str) -> Self {
        self.label = label.into();
        self
    }

    /// Keeps the row off the chart.
    pub fn unchart(mut self) -> Self {
        self.chart = false;
        self
    }

    /// The kernel line the ratios are taken against.
    pub fn base(&self) -> Option<&Line> {
        self.lines.iter().find(|l| l.base)
    }
}

/// What one benchmark produced.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    /// Figures.
    pub rows: Vec<Row>,
    /// Extra facts (medium ceiling, offered load, losses).
    pub notes: Vec<String>,
}

/// Checks the names before anything runs.
pub fn validate(names: &[String]) -> Result<()> {
    for n in names {
        if find(n).is_none() {
            if let Some((_, why)) = NOT_YET.iter().find(|(b, _)| b == n) {
                bail!("benchmark {n} is not possible yet: {why}");
            }
            bail!(
                "no benchmark named {n} (known: {})",
                BENCHMARKS
                    .iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// Runs benchmark `name`.
pub fn run_named(name: &str, s: &Settings) -> Result<Outcome> {
    validate(&[name.to_string()])?;
    let b = find(name).context("validated")?;
    (b.run)(s).with_context(|| format!("benchmark {name}"))
}

/// What each benchmark runs, as markdown for bench/README.md: a heading
/// per benchmark, then its hoststack side, kernel side and load.
pub fn markdown() -> String {
    let mut out = String::new();
    for b in BENCHMARKS {
        out.push_str(&format!(
            "### `{}`\n\n{}.\n\n- **hoststack**: {}\n- **kernel**: {}\n- **load, and where it is counted**: {}\n\n",
            b.name, b.title, b.hoststack, b.kernel, b.measured
        ));
    }
    for (n, why) in NOT_YET {
        out.push_str(&format!("- not yet, `{n}`: {why}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(side: &str, kernel: bool, v: &[f64]) -> Figure {
        Figure {
            side: side.into(),
            short: side.into(),
            kernel,
            values: v.to_vec(),
        }
    }

    #[test]
    fn ratios_are_taken_against_the_better_kernel_line() {
        let r = Row::new(
            "b",
            "rate",
            "x/s",
            true,
            vec![
                fig("hs", false, &[120.0]),
                fig("k default", true, &[50.0]),
                fig("k busy", true, &[100.0]),
            ],
        );
        assert_eq!(r.base().map(|l| l.side.as_str()), Some("k busy"));
        assert_eq!(r.lines[0].ratio, Some(1.2));
        let lat = Row::new(
            "b",
            "p50",
            "us",
            false,
            vec![
                fig("hs", false, &[20.0]),
                fig("k default", true, &[30.0]),
                fig("k busy", true, &[40.0]),
            ],
        );
        assert_eq!(lat.base().map(|l| l.side.as_str()), Some("k default"));
        assert_eq!(lat.lines[0].ratio, Some(1.5));
    }

    #[test]
    fn every_benchmark_has_a_unique_name_and_says_what_both_sides_run() {
        for (i, b) in BENCHMARKS.iter().enumerate() {
            assert!(
                !b.hoststack.is_empty() && !b.kernel.is_empty() && !b.measured.is_empty(),
                "{}",
                b.name
            );
            assert!(BENCHMARKS[..i].iter().all(|o| o.name != b.name));
            assert!(NOT_YET.iter().all(|(n, _)| *n != b.name));
        }
        assert!(validate(&["nope".into()]).is_err());
        assert_eq!(markdown().matches("### ").count(), BENCHMARKS.len());
    }
}
