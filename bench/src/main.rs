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
use hoststack_bench::{cpu, env, frames, kserver, pktgen, report, suite, tuning};

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
    /// List the benchmarks (with --markdown: the table of what both sides
    /// run, for bench/README.md), and the ones not possible yet.
    List {
        /// Print the markdown table instead.
        #[arg(long)]
        markdown: bool,
    },
    /// (internal) The kernel's epoll server in its own process, used by the
    /// benchmarks; prints `ready`, and its totals as JSON on SIGTERM.
    #[command(hide = true)]
    KernelServer {
        /// Serve TCP on this address.
        #[arg(long, conflicts_with = "unix")]
        tcp: Option<std::net::SocketAddr>,
        /// Serve a Unix stream socket at this path.
        #[arg(long)]
        unix: Option<PathBuf>,
        /// Echo stream bytes back (default: discard them).
        #[arg(long)]
        echo: bool,
        /// Echo UDP datagrams on this address.
        #[arg(long)]
        udp_echo: Option<std::net::SocketAddr>,
        /// Spin in epoll_wait(0) instead of blocking.
        #[arg(long)]
        busy_poll: bool,
        /// One worker per core, pinned (SO_REUSEPORT when several).
        #[arg(long, value_delimiter = ',')]
        cores: Vec<usize>,
        /// SO_REUSEPORT even with one worker: several server processes
        /// share the port.
        #[arg(long)]
        reuseport: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Benchmarks to run (default: all available).
    names: Vec<String>,
    /// Runs per side; the table shows the median and min-max.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Measured seconds of each packet-rate, request/response and
    /// connection-rate run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of each TCP bulk stream.
    #[arg(long, default_value_t = 5.0)]
    bulk_duration: f64,
    /// Seconds of load before a measured window opens.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Offered datagrams/s of the CPU efficiency row's fixed load.
    #[arg(long, default_value_t = 20_000.0)]
    cpu_load: f64,
    /// Seconds of the check before each benchmark that nothing else uses
    /// the CPUs.
    #[arg(long, default_value_t = 1.0)]
    quiet_window: f64,
    /// CPU (% of one core) other processes may use during that check.
    #[arg(long, default_value_t = 10.0)]
    busy_threshold: f64,
    /// Run even when other processes use the CPUs; the table and the JSON
    /// then say the figures were taken on a busy machine, and by what.
    #[arg(long)]
    allow_busy: bool,
    /// hoststack's TCP engine for every hoststack side (`--tcp-engine` of
    /// the hoststack binary; default: the binary's default).
    #[arg(long)]
    tcp_engine: Option<String>,
    /// Write the report as JSON to this file (default when every
    /// benchmark runs: bench/results/latest.json in the source tree).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG bar chart of the ratios to this file (default when
    /// every benchmark runs: bench/results/latest.png).
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
    /// Idle connection counts of idle-conn-sweep (and mem-per-conn, at the
    /// largest), comma-separated (default 0,1000,10000,100000; with
    /// --quick 0,1000).
    #[arg(long, value_delimiter = ',')]
    idle_conns: Option<Vec<usize>>,
    /// A check that every row runs, not figures: one run per side, 0.3 s
    /// windows and bulk streams, 0.1 s warm-up, a 0.2 s quiet-window
    /// check (these override --runs, --duration, --bulk-duration,
    /// --warmup and --quiet-window) and small connection counts.
    #[arg(long)]
    quick: bool,
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
        Command::List { markdown } => {
            if markdown {
                print!("{}", suite::markdown());
                return Ok(ExitCode::SUCCESS);
            }
            for b in suite::BENCHMARKS {
                println!("{:<15} {}", b.name, b.title);
            }
            for (n, why) in suite::NOT_YET {
                println!("{n:<15} (not possible yet) {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_benchmarks(args),
        Command::KernelServer {
            tcp,
            unix,
            echo,
            udp_echo,
            busy_poll,
            cores,
            reuseport,
        } => {
            let kind = if echo {
                kserver::StreamKind::Echo
            } else {
                kserver::StreamKind::Discard
            };
            let stream = match (tcp, unix) {
                (Some(a), None) => Some((kserver::Listen::Tcp(a), kind)),
                (None, Some(p)) => Some((kserver::Listen::Unix(p), kind)),
                _ => None,
            };
            let totals = kserver::serve(&kserver::ServerOpts {
                stream,
                udp_echo,
                busy_poll,
                cores,
                reuseport,
            })?;
            println!("{}", serde_json::to_string(&totals)?);
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

fn run_benchmarks(mut args: RunArgs) -> Result<ExitCode> {
    if args.quick {
        args.runs = 1;
        (args.duration, args.bulk_duration) = (0.3, 0.3);
        (args.warmup, args.quiet_window) = (0.1, 0.2);
    }
    let idle_conns = args.idle_conns.clone().unwrap_or_else(|| {
        if args.quick {
            vec![0, 1000]
        } else {
            vec![0, 1000, 10_000, 100_000]
        }
    });
    let names: Vec<String> = if args.names.is_empty() {
        suite::BENCHMARKS
            .iter()
            .map(|b| b.name.to_string())
            .collect()
    } else {
        args.names.clone()
    };
    suite::validate(&names)?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(args.cpu_load.is_finite() && args.cpu_load > 0.0) {
        bail!("--cpu-load must be a positive rate");
    }
    if let Some(done) = tuning::restore_leftovers()? {
        eprintln!("restored sysctls an interrupted run had changed: {done}");
    }
    let settings = suite::Settings {
        runs: args.runs,
        duration: secs(args.duration, "--duration")?,
        bulk_duration: secs(args.bulk_duration, "--bulk-duration")?,
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        cpu_load: args.cpu_load,
        tcp_engine: args.tcp_engine.clone(),
        lab: args.lab.clone(),
        subnet: args.subnet,
        mtu: args.mtu,
        hoststack: env::hoststack_binary(args.hoststack.as_deref())?,
        idle_conns,
        quick: args.quick,
        interrupted: interrupted_flag()?,
        busy: cpu::BusyPolicy {
            threshold: args.busy_threshold,
            allow: args.allow_busy,
            log: Default::default(),
        },
    };
    let quiet_window = secs(args.quiet_window, "--quiet-window")?;
    let mut report = report::Report {
        finished_unix: 0,
        machine: env::Machine::read(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: serde_json::json!({
            "runs": settings.runs,
            "duration_s": settings.duration.as_secs_f64(),
            "bulk_duration_s": settings.bulk_duration.as_secs_f64(),
            "warmup_s": settings.warmup.as_secs_f64(),
            "cpu_load": settings.cpu_load,
            "tcp_engine": settings.tcp_engine.as_deref().unwrap_or("the hoststack binary's default"),
            "lab": settings.lab,
            "subnet": format!("10.77.{}.0/24", settings.subnet),
            "mtu": settings.mtu.unwrap_or(1500),
            "idle_conns": settings.idle_conns,
            "quick": settings.quick,
            "hoststack": settings.hoststack.display().to_string(),
            "placement": "load (clients, senders) on core 0 in the lab namespace; side under test on core 1",
            "commit": source_commit(),
            "quiet_window_s": quiet_window.as_secs_f64(),
            "busy_threshold_percent": args.busy_threshold,
            "allow_busy": args.allow_busy,
        }),
        benchmarks: Vec::new(),
        rows: Vec::new(),
        notes: Vec::new(),
        busy: Vec::new(),
        not_available: report::Report::not_yet(),
        failed: Vec::new(),
    };
    let started = Instant::now();
    for name in &names {
        if settings.interrupted.load(Relaxed) {
            break;
        }
        // Nothing of ours runs between benchmarks: whatever uses the CPUs
        // now is someone else's.
        let activity = cpu::foreign_activity(quiet_window)?;
        if let Err(e) = settings.busy.judge(name, "before it started", activity) {
            eprintln!("[{name}] {e:#}");
            report.failed.push(report::Failed {
                name: name.clone(),
                error: format!("{e:#}"),
            });
            break;
        }
        eprintln!("[{name}] starting");
        if let Some(b) = suite::find(name) {
            report.benchmarks.push(*b);
        }
        match suite::run_named(name, &settings) {
            Ok(o) => {
                report.rows.extend(o.rows);
                report.notes.extend(o.notes);
            }
            Err(e) => {
                eprintln!("[{name}] FAILED: {e:#}");
                let refused = e.downcast_ref::<cpu::Refused>().is_some();
                report.failed.push(report::Failed {
                    name: name.clone(),
                    error: format!("{e:#}"),
                });
                if refused {
                    break;
                }
            }
        }
    }
    report.busy = settings.busy.notes();
    report.finished_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!("all done in {:.0} s", started.elapsed().as_secs_f64());
    print!("{}", report::table(&report));
    // The whole suite is what bench/README.md publishes: written there
    // unless told otherwise; a run of some benchmarks only writes when asked.
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    // Never over a published table with a failed or busy one.
    let whole = args.names.is_empty()
        && report.failed.is_empty()
        && report.busy.is_empty()
        && !settings.interrupted.load(Relaxed);
    if args.names.is_empty() && !whole && (args.json.is_none() || args.chart.is_none()) {
        eprintln!(
            "not writing {}: the run failed, was interrupted or ran on a busy machine (--json and --chart write anyway)",
            results.display()
        );
    }
    let json = args
        .json
        .clone()
        .or_else(|| whole.then(|| results.join("latest.json")));
    let chart = args
        .chart
        .clone()
        .or_else(|| whole.then(|| results.join("latest.png")));
    if let Some(p) = &json {
        report::write_json(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &chart {
        report::write_chart(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(
        if report.failed.is_empty() && !settings.interrupted.load(Relaxed) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The commit of the source tree this binary was built from, when it is
/// a git checkout (what the figures belong to).
fn source_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
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
