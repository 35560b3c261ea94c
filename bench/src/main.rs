//! `hoststack-bench`: pktgen over AF_XDP, and benchmarks that put every
//! hoststack figure beside the Linux kernel's on the same veth lab in the
//! same invocation.
//!
//! The library (`hoststack_bench`) holds the machinery; this file is the
//! command line.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hoststack_drivers::afxdp::XdpAttachMode;

use hoststack_bench::frames::SizeMix;
use hoststack_bench::pktgen::{FlowTemplate, LatencyOpts, QueueOpts, RxOpts, TxOpts};
use hoststack_bench::{env, frames, kernel, pktgen, report, servers, suite};

/// hoststack benchmarks and pktgen: every figure beside the Linux kernel's.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// UDP packet generator over AF_XDP (transmit, receive/count, latency).
    Pktgen {
        #[command(subcommand)]
        mode: PktgenMode,
    },
    /// Run benchmarks side by side with the kernel (all when none named);
    /// prints a table, optionally writes JSON and a PNG chart of the ratios.
    Run(RunArgs),
    /// List the benchmarks, and the ones not possible yet.
    List,
    /// (internal) A kernel TCP or Unix-socket server in its own process,
    /// used by the benchmarks; prints `ready`, and its byte count on SIGTERM.
    #[command(hide = true)]
    KernelServer {
        /// Listen on this TCP address.
        #[arg(long, conflicts_with = "unix")]
        tcp: Option<std::net::SocketAddr>,
        /// Listen on this Unix socket path.
        #[arg(long)]
        unix: Option<PathBuf>,
        /// Echo what arrives instead of discarding it.
        #[arg(long)]
        echo: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Benchmarks to run (default: all available).
    names: Vec<String>,
    /// Runs per side; the table shows the median and min-max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds of each packet-rate, request/response and
    /// connection-rate run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of each TCP bulk stream.
    #[arg(long, default_value_t = 10.0)]
    bulk_duration: f64,
    /// Seconds of load before a measured window opens.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG bar chart of the ratios to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Lab name (namespace hs-NAME, veth hsNAMEh / hsNAMEp), rebuilt for
    /// every measurement.
    #[arg(long, default_value = "bench")]
    lab: String,
    /// Lab subnet N: 10.77.N.0/24 (hoststack .1, kernel peer .2).
    #[arg(long, default_value_t = 177)]
    subnet: u8,
    /// MTU of the lab's veth (default 1500).
    #[arg(long)]
    mtu: Option<usize>,
    /// The hoststack binary (default: next to this one, or target/release).
    #[arg(long)]
    hoststack: Option<PathBuf>,
}

/// Which AF_XDP queues to use.
#[derive(Debug, Clone, Args)]
struct QueueArgs {
    /// Interface to send or receive on.
    #[arg(long, short = 'i')]
    interface: String,
    /// Network namespace of the interface (from `ip netns`).
    #[arg(long)]
    netns: Option<String>,
    /// Queues 0..N, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// XDP attach mode: auto, native or generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: XdpAttachMode,
    /// Entries of each AF_XDP ring (power of two).
    #[arg(long, default_value_t = 2048)]
    ring_size: u32,
    /// UMEM frames per queue (at least twice the ring size).
    #[arg(long, default_value_t = 8192)]
    frames: u32,
    /// Frames per burst.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Cores for the queue threads, comma-separated (queue q on the q-th).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
}

impl QueueArgs {
    fn opts(&self) -> QueueOpts {
        let mut q = QueueOpts::new(&self.interface);
        q.netns = self.netns.clone();
        q.queues = self.queues.max(1);
        q.xdp_mode = self.xdp_mode;
        q.ring_size = self.ring_size;
        q.frame_count = self.frames;
        q.batch = self.batch.max(1);
        q.cores = self.cores.clone();
        q
    }
}

/// Addresses and ports of the generated stream.
#[derive(Debug, Clone, Args)]
struct FlowArgs {
    /// Destination MAC address (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    dst_mac: String,
    #[command(flatten)]
    addresses: FlowTemplate,
}

#[derive(Debug, Subcommand)]
enum PktgenMode {
    /// Transmit pre-built UDP frames; per-second progress on stderr, a
    /// summary (pps, Gbps, drops, wakeups) on stdout.
    Tx {
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        flow: FlowArgs,
        /// Frame size with FCS (64-1518, more with a larger MTU) or "imix" (64/594/1518, 7:4:1).
        #[arg(long, default_value = "64")]
        size: SizeMix,
        /// Frames per second over all queues, or "max".
        #[arg(long, default_value = "max")]
        rate: Rate,
        /// Stop after this many frames.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (default 10 when no count is given).
        #[arg(long)]
        duration: Option<f64>,
        /// Also print the summary as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Receive and count frames (busy polling); per-second progress, a summary.
    Rx {
        #[command(flatten)]
        queue: QueueArgs,
        /// Count only UDP frames to this port (default: every frame).
        #[arg(long)]
        udp_port: Option<u16>,
        /// Stop after this many counted frames.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (default 10 when no count is given).
        #[arg(long)]
        duration: Option<f64>,
        /// Also print the summary as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Send timestamped probes and measure their latency: one way to a
    /// second interface (--rx-interface), or the round trip through a UDP
    /// echo server at the destination.
    Latency {
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        flow: FlowArgs,
        /// Receive the probes on this interface instead (one way).
        #[arg(long)]
        rx_interface: Option<String>,
        /// Namespace of --rx-interface.
        #[arg(long)]
        rx_netns: Option<String>,
        /// Probe frame size with FCS.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Probes per second.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Probes to send.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Also print the summary as one JSON line.
        #[arg(long)]
        json: bool,
    },
}

/// A rate: "max" or frames per second.
#[derive(Debug, Clone, Copy)]
struct Rate(Option<f64>);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Self(None));
        }
        match s.parse::<f64>() {
            Ok(v) if v > 0.0 => Ok(Self(Some(v))),
            _ => Err(format!("rate '{s}' is neither 'max' nor a positive number")),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hoststack-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn interrupted_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    Ok(flag)
}

fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::List => {
            for (n, d) in suite::BENCHMARKS {
                println!("{n:<14} {d}");
            }
            for (n, why) in suite::NOT_YET {
                println!("{n:<14} (not possible yet) {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_benchmarks(args),
        Command::KernelServer { tcp, unix, echo } => {
            let listen = match (tcp, unix) {
                (Some(a), None) => kernel::Listen::Tcp(a),
                (None, Some(p)) => kernel::Listen::Unix(p),
                _ => bail!("give --tcp ADDR or --unix PATH"),
            };
            let kind = if echo {
                kernel::ServerKind::Echo
            } else {
                kernel::ServerKind::Discard
            };
            let stop = interrupted_flag()?;
            kernel::server_process(&listen, kind, &stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pktgen { mode } => pktgen_cmd(mode),
    }
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn run_benchmarks(args: RunArgs) -> Result<ExitCode> {
    let names: Vec<String> = if args.names.is_empty() {
        suite::BENCHMARKS.iter().map(|b| b.0.to_string()).collect()
    } else {
        args.names.clone()
    };
    suite::validate(&names)?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let settings = suite::Settings {
        runs: args.runs,
        duration: secs(args.duration, "--duration")?,
        bulk_duration: secs(args.bulk_duration, "--bulk-duration")?,
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        lab: args.lab.clone(),
        subnet: args.subnet,
        mtu: args.mtu,
        hoststack: env::hoststack_binary(args.hoststack.as_deref())?,
        interrupted: interrupted_flag()?,
    };
    let mut report = report::Report {
        finished_unix: 0,
        machine: env::Machine::read(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: serde_json::json!({
            "runs": settings.runs,
            "duration_s": settings.duration.as_secs_f64(),
            "bulk_duration_s": settings.bulk_duration.as_secs_f64(),
            "warmup_s": settings.warmup.as_secs_f64(),
            "lab": settings.lab,
            "subnet": format!("10.77.{}.0/24", settings.subnet),
            "mtu": settings.mtu.unwrap_or(1500),
            "hoststack": settings.hoststack.display().to_string(),
            "placement": "load (clients, senders) on core 0 in the lab namespace; side under test on core 1",
        }),
        rows: Vec::new(),
        notes: Vec::new(),
        not_available: report::Report::not_yet(),
        failed: Vec::new(),
    };
    let busy = cpu_busy_percent(Duration::from_millis(500));
    if busy > 10.0 {
        eprintln!(
            "warning: the CPUs were {busy:.0} % busy just before starting: other work on this machine will distort the figures"
        );
    }
    report.settings["cpu_busy_percent_before_start"] = serde_json::json!(busy);
    let started = Instant::now();
    for name in &names {
        eprintln!("[{name}] starting");
        let outcome =
            servers::run(name, &settings).unwrap_or_else(|| suite::run_named(name, &settings));
        match outcome {
            Ok(o) => {
                report.rows.extend(o.rows);
                report.notes.extend(o.notes);
            }
            Err(e) => {
                eprintln!("[{name}] FAILED: {e:#}");
                report.failed.push(report::Failed {
                    name: name.clone(),
                    error: format!("{e:#}"),
                });
                if settings.interrupted.load(Relaxed) {
                    break;
                }
            }
        }
    }
    report.finished_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!("all done in {:.0} s", started.elapsed().as_secs_f64());
    print!("{}", report::table(&report));
    if let Some(p) = &args.json {
        report::write_json(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.chart {
        report::write_chart(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How busy all CPUs were over `window`, from /proc/stat (0 when unreadable).
fn cpu_busy_percent(window: Duration) -> f64 {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4)?;
        Some((v.iter().sum(), idle))
    };
    let Some((t1, i1)) = sample() else { return 0.0 };
    std::thread::sleep(window);
    let Some((t2, i2)) = sample() else { return 0.0 };
    let total = t2.saturating_sub(t1).max(1) as f64;
    100.0 * (1.0 - i2.saturating_sub(i1) as f64 / total)
}

fn stop_after(
    count: Option<u64>,
    duration: Option<f64>,
) -> Result<(Option<u64>, Option<Duration>)> {
    let d = match (count, duration) {
        (_, Some(d)) => Some(secs(d, "--duration")?),
        (None, None) => Some(Duration::from_secs(10)),
        (Some(_), None) => None,
    };
    Ok((count, d))
}

/// Prints per-second progress until the threads finish or a signal comes.
fn watch(run: &pktgen::Running, interrupted: &AtomicBool, tx: bool, mean_frame: f64) -> Result<()> {
    let mut last = run.totals();
    let mut last_m = run.matched.load(Relaxed);
    let start = Instant::now();
    let mut tick = start;
    while !run.finished() && !interrupted.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let dt = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let now = run.totals();
        let m = run.matched.load(Relaxed);
        if tx {
            let pps = (now.tx_frames - last.tx_frames) as f64 / dt;
            eprintln!(
                "{:6.1} s  tx {:8.3} Mpps  {:7.3} Gbps  ring-full {}  wakeups {}",
                start.elapsed().as_secs_f64(),
                pps / 1e6,
                pps * mean_frame * 8.0 / 1e9,
                now.tx_ring_full - last.tx_ring_full,
                now.kicks - last.kicks
            );
        } else {
            let pps = (now.rx_frames - last.rx_frames) as f64 / dt;
            eprintln!(
                "{:6.1} s  rx {:8.3} Mpps  {:7.3} Gbps  counted {:8.3} Mpps  kernel-drops {}",
                start.elapsed().as_secs_f64(),
                pps / 1e6,
                (now.rx_bytes - last.rx_bytes) as f64 * 8.0 / dt / 1e9,
                (m - last_m) as f64 / dt / 1e6,
                now.rx_kernel_drops - last.rx_kernel_drops
            );
        }
        last = now;
        last_m = m;
    }
    Ok(())
}

fn pktgen_cmd(mode: PktgenMode) -> Result<ExitCode> {
    let interrupted = interrupted_flag()?;
    match mode {
        PktgenMode::Tx {
            queue,
            flow,
            size,
            rate,
            count,
            duration,
            json,
        } => {
            let (count, duration) = stop_after(count, duration)?;
            let opts = TxOpts {
                queues: queue.opts(),
                dst_mac: frames::parse_mac(&flow.dst_mac)?,
                flows: flow.addresses.clone(),
                sizes: size,
                rate: rate.0,
                count,
                duration,
            };
            let before = env::link_stats(queue.netns.as_deref(), &queue.interface).ok();
            let running = pktgen::start_tx(&opts)?;
            let mean = running.mean_frame;
            watch(&running, &interrupted, true, mean)?;
            let (t, elapsed) = running.stop()?;
            let after = env::link_stats(queue.netns.as_deref(), &queue.interface).ok();
            let dropped = match (before, after) {
                (Some(b), Some(a)) => a.tx_dropped - b.tx_dropped,
                _ => 0,
            };
            let secs = elapsed.as_secs_f64();
            let pps = t.tx_frames as f64 / secs;
            println!(
                "sent {} frames in {secs:.3} s: {:.3} Mpps, {:.3} Gbps (mean frame {mean:.0} B with FCS); dropped by the interface {dropped}; ring full {} times; wakeups {}",
                t.tx_frames,
                pps / 1e6,
                pps * mean * 8.0 / 1e9,
                t.tx_ring_full,
                t.kicks
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({"mode": "tx", "frames": t.tx_frames, "seconds": secs, "pps": pps,
                        "gbps": pps * mean * 8.0 / 1e9, "mean_frame": mean, "interface_tx_dropped": dropped,
                        "ring_full": t.tx_ring_full, "wakeups": t.kicks})
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PktgenMode::Rx {
            queue,
            udp_port,
            count,
            duration,
            json,
        } => {
            let (count, duration) = stop_after(count, duration)?;
            let running = pktgen::start_rx(&RxOpts {
                queues: queue.opts(),
                udp_port,
                count,
                duration,
            })?;
            watch(&running, &interrupted, false, 0.0)?;
            let matched = running.matched.clone();
            let (t, elapsed) = running.stop()?;
            let secs = elapsed.as_secs_f64();
            let counted = matched.load(Relaxed);
            println!(
                "received {} frames ({counted} counted) in {secs:.3} s: {:.3} Mpps, {:.3} Gbps; dropped by the kernel before the ring {}",
                t.rx_frames,
                t.rx_frames as f64 / secs / 1e6,
                t.rx_bytes as f64 * 8.0 / secs / 1e9,
                t.rx_kernel_drops
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({"mode": "rx", "frames": t.rx_frames, "counted": counted, "seconds": secs,
                        "pps": t.rx_frames as f64 / secs, "gbps": t.rx_bytes as f64 * 8.0 / secs / 1e9,
                        "kernel_drops": t.rx_kernel_drops})
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PktgenMode::Latency {
            queue,
            flow,
            rx_interface,
            rx_netns,
            size,
            rate,
            count,
            json,
        } => {
            let tx = queue.opts();
            let rx = rx_interface.map(|i| {
                let mut q = tx.clone();
                q.ifname = i;
                q.netns = rx_netns;
                q.cores = Vec::new();
                q
            });
            let one_way = rx.is_some();
            let r = pktgen::run_latency(
                &LatencyOpts {
                    tx,
                    rx,
                    dst_mac: frames::parse_mac(&flow.dst_mac)?,
                    flows: flow.addresses.clone(),
                    size,
                    rate,
                    count,
                },
                &interrupted,
            )?;
            println!(
                "{} latency of {} of {} probes: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
                if one_way { "one-way" } else { "round-trip" },
                r.received,
                r.sent,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(if r.received > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
