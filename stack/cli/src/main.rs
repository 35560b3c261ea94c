//! The `hoststack` command: the daemon, the demo, the datapath commands
//! (`echo-server`, `serve`, `tcp-client`, `udp-client`) and the lab.

#![forbid(unsafe_code)]

mod cli;
mod daemon;
mod demo;

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::cli::{Shutdown, StackArgs};
use crate::daemon::config::DEFAULT_CONTROL_SOCKET;
use crate::daemon::control::{self, Request};
use crate::daemon::show::parse_show;
use crate::daemon::{Daemon, DaemonConfig};
use crate::demo::{DemoConfig, run_demo};
use anyhow::Context;
use clap::{Parser, Subcommand};
use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::handle::AppIndex;
use hoststack_app_proto::options::AppOptions;
use hoststack_lab::enter_netns;
use hoststack_lab::{Lab, LabAddr, LabConfig};
use hoststack_session::app_socket::{AppSocketConfig, AppSocketServer};
use hoststack_stack::builtin_apps::{
    DATAGRAM_RESEND_AFTER, DatagramClient, EchoServer, ReportSlot, StreamClient, TransferReport,
};
use hoststack_stack::{AddrPrefix, Stack, WorkerMode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// hoststack: a user-space TCP/UDP host stack on AF_XDP and io_uring.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing filter);
    /// default warn, or the config file's daemon.log for `run`.
    #[arg(long, global = true, env = "HOSTSTACK_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the stack on the configured interface, app sockets,
    /// the control socket `show` talks to, until SIGINT/SIGTERM.
    Run {
        /// The TOML config (hoststack.toml.example documents every key).
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Ask the running daemon: app [INDEX] [server|client] [mq] [verbose],
    /// app certificate, session [verbose], interface, worker, namespace.
    Show {
        /// What to show, e.g. `app 1 verbose` or `session`.
        #[arg(required = true, num_args = 1..)]
        what: Vec<String>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Add or delete app namespaces of the running daemon.
    Namespace {
        #[command(subcommand)]
        action: NamespaceAction,
    },
    /// Add or delete cert/key pairs in the running daemon's store.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Capture the running daemon's frames to a pcap file.
    Pcap {
        #[command(subcommand)]
        action: PcapAction,
    },
    /// Build a veth lab, start the daemon with an external echo app and
    /// builtin apps, drive them from the kernel side, show apps and
    /// sessions mid-run, print the figures, tear everything down.
    Demo {
        /// Lab name.
        #[arg(long, default_value = "demo")]
        lab: String,
        /// Bytes the kernel client streams through the TCP echo.
        #[arg(long, default_value_t = 64 << 20)]
        stream_bytes: u64,
        /// 64-byte round trips.
        #[arg(long, default_value_t = 20_000)]
        round_trips: u32,
        /// Bytes hoststack sends to the kernel echo server.
        #[arg(long, default_value_t = 16 << 20)]
        outbound_bytes: u64,
        /// Worker mode: poll or interrupt.
        #[arg(long, default_value = "poll")]
        mode: WorkerMode,
    },
    /// Run TCP and UDP echo servers until SIGINT/SIGTERM.
    EchoServer {
        #[command(flatten)]
        stack: StackArgs,
        /// TCP echo port (0: none).
        #[arg(long, default_value_t = 7)]
        tcp_port: u16,
        /// UDP echo port (0: none).
        #[arg(long, default_value_t = 7)]
        udp_port: u16,
        /// App workers sessions are spread over (round robin).
        #[arg(long, default_value_t = 1)]
        app_workers: u32,
        /// rx and tx fifo size per session, bytes.
        #[arg(long, default_value_t = 512 * 1024)]
        fifo_size: u32,
        /// Swallow what arrives instead of echoing it (a sink).
        #[arg(long)]
        discard: bool,
    },
    /// Run the stack and serve external apps on --app-socket until
    /// SIGINT/SIGTERM (no builtin app).
    Serve {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Connect out, send a seeded stream, verify the echo, print a JSON report.
    TcpClient {
        #[command(flatten)]
        stack: StackArgs,
        /// Server to connect to, IP:PORT.
        #[arg(long)]
        connect: SocketAddr,
        /// Bytes to send (and verify back).
        #[arg(long, default_value_t = 16 << 20)]
        bytes: u64,
        /// Stream seed (connection i uses seed + i).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Concurrent connections, each sending (and verifying) --bytes;
        /// the session layer spreads them over the workers in turn.
        #[arg(long, default_value_t = 1)]
        connections: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Send COUNT datagrams to a UDP echo server, 32 in flight, verify each
    /// echo, send again what goes unanswered for 200 ms, print a JSON
    /// report ("resent" counts the datagrams sent again).
    UdpClient {
        #[command(flatten)]
        stack: StackArgs,
        /// Server to send to, IP:PORT.
        #[arg(long)]
        connect: SocketAddr,
        /// Datagrams to exchange (per session).
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Sessions, each with its own local port, exchanging --count
        /// datagrams; the session layer spreads them over the workers in
        /// turn.
        #[arg(long, default_value_t = 1)]
        connections: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Create or remove a veth lab.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

/// How to reach the running daemon and how to print its answer.
#[derive(Debug, Clone, clap::Args)]
struct DaemonArgs {
    /// The daemon's control socket.
    #[arg(long, env = "HOSTSTACK_CONTROL", default_value = DEFAULT_CONTROL_SOCKET)]
    control: PathBuf,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum NamespaceAction {
    /// Add a namespace and start its app socket.
    Add {
        /// Namespace id.
        #[arg(long)]
        id: String,
        /// Secret apps must present to attach.
        #[arg(long, default_value_t = 0)]
        secret: u64,
        /// Bind it to the daemon's interface (give its name).
        #[arg(long)]
        interface: Option<String>,
        /// FIB (table) index.
        #[arg(long, default_value_t = 0)]
        table: u32,
        /// Its app socket (default: the daemon's runtime dir, app-ID.sock).
        #[arg(long)]
        app_socket: Option<PathBuf>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Delete a namespace (refused while apps are attached to it).
    Del {
        /// Namespace id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Add a cert/key pair from two files; prints its index.
    Add {
        /// Certificate file (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
        /// Key file (PEM or DER).
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Delete a cert/key pair (apps that registered interest are told).
    Del {
        /// Its index (0 is the reserved default).
        #[arg(long)]
        index: u32,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PcapAction {
    /// Start writing every frame in and out of the interface to FILE.
    Start {
        /// The daemon's interface.
        #[arg(long, short = 'i')]
        interface: String,
        /// Output pcap file (replaced).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Stop after this many frames (0: no limit).
        #[arg(long, default_value_t = 0)]
        max: u64,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Stop the capture and close the file.
    Stop {
        /// The daemon's interface.
        #[arg(long, short = 'i')]
        interface: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LabAction {
    /// Create namespace hs-NAME with veth hsNAMEh (host) / hsNAMEp (peer).
    Up {
        /// Lab name (1-11 letters, digits, '-').
        #[arg(long, default_value = "lab0")]
        name: String,
        /// hoststack's IPv4 address (owned by hoststack on the host end).
        #[arg(long, default_value = "10.77.0.1/24")]
        host4: AddrPrefix,
        /// The kernel peer's IPv4 address.
        #[arg(long, default_value = "10.77.0.2/24")]
        peer4: AddrPrefix,
        /// hoststack's IPv6 address.
        #[arg(long, default_value = "fd77::1/64")]
        host6: AddrPrefix,
        /// The kernel peer's IPv6 address.
        #[arg(long, default_value = "fd77::2/64")]
        peer6: AddrPrefix,
        /// MTU of both ends.
        #[arg(long)]
        mtu: Option<usize>,
        /// Turn TSO off on the peer (needed with --xdp-mode generic).
        #[arg(long)]
        peer_tso_off: bool,
        /// Queues per veth end (with --tap: above 1 makes a multi-queue TAP).
        #[arg(long, default_value_t = 1)]
        queues: u32,
        /// A TAP device in the namespace instead of a veth pair.
        #[arg(long)]
        tap: bool,
    },
    /// Remove lab NAME.
    Down {
        /// Lab name.
        #[arg(long, default_value = "lab0")]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` reads its config before logging starts: the file may set the
    // log filter, and a bad file is reported as it is, line and all.
    let daemon_cfg = match &cli.command {
        Command::Run { config } => match DaemonConfig::load(config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("hoststack: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let log = cli
        .log
        .clone()
        .or_else(|| daemon_cfg.as_ref().and_then(|c| c.log.clone()))
        .unwrap_or_else(|| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(cfg) = daemon_cfg {
        return exit(run_daemon(cfg));
    }
    exit(run(cli.command))
}

fn exit(r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hoststack: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { .. } => unreachable!("run is handled before"),
        Command::Show { what, daemon } => {
            let show = match parse_show(&what) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hoststack: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            ask(&daemon, &Request::Show { show })
        }
        Command::Namespace { action } => match action {
            NamespaceAction::Add {
                id,
                secret,
                interface,
                table,
                app_socket,
                daemon,
            } => {
                let app_socket = app_socket.map(|p| absolute(&p)).transpose()?;
                ask(
                    &daemon,
                    &Request::NamespaceAdd {
                        id,
                        secret,
                        interface,
                        table,
                        app_socket,
                    },
                )
            }
            NamespaceAction::Del { id, daemon } => ask(&daemon, &Request::NamespaceDel { id }),
        },
        Command::Cert { action } => match action {
            CertAction::Add { cert, key, daemon } => {
                let cert = std::fs::read(&cert)
                    .with_context(|| format!("reading the certificate {}", cert.display()))?;
                let key = std::fs::read(&key)
                    .with_context(|| format!("reading the key {}", key.display()))?;
                ask(&daemon, &Request::CertAdd { cert, key })
            }
            CertAction::Del { index, daemon } => ask(&daemon, &Request::CertDel { index }),
        },
        Command::Pcap { action } => match action {
            PcapAction::Start {
                interface,
                file,
                max,
                daemon,
            } => {
                let file = absolute(&file)?;
                ask(
                    &daemon,
                    &Request::PcapStart {
                        interface,
                        file,
                        max,
                    },
                )
            }
            PcapAction::Stop { interface, daemon } => {
                ask(&daemon, &Request::PcapStop { interface })
            }
        },
        Command::Demo {
            lab,
            stream_bytes,
            round_trips,
            outbound_bytes,
            mode,
        } => {
            let shutdown = Shutdown::install()?;
            let cfg = DemoConfig {
                lab,
                stream_bytes,
                round_trips,
                outbound_bytes,
                mode,
            };
            run_demo(&cfg, &shutdown).context("demo")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::EchoServer {
            stack,
            tcp_port,
            udp_port,
            app_workers,
            fifo_size,
            discard,
        } => echo_server(&stack, tcp_port, udp_port, app_workers, fifo_size, discard),
        Command::TcpClient {
            stack,
            connect,
            bytes,
            seed,
            connections,
            timeout,
        } => tcp_client(
            &stack,
            connect,
            (bytes, connections),
            seed,
            Duration::from_secs(timeout),
        ),
        Command::UdpClient {
            stack,
            connect,
            count,
            connections,
            timeout,
        } => udp_client(
            &stack,
            connect,
            (count, connections),
            Duration::from_secs(timeout),
        ),
        Command::Serve { stack } => serve(&stack),
        Command::Lab { action } => lab(action),
    }
}

/// `path` made absolute against the current directory (the daemon has
/// its own).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Sends one request to the daemon and prints its answer: the text, or
/// the JSON with `--json`; an error the daemon reports goes to stderr and
/// exits 1.
fn ask(daemon: &DaemonArgs, req: &Request) -> anyhow::Result<ExitCode> {
    let r = control::request(&daemon.control, req, Duration::from_secs(30))?;
    if !r.ok {
        eprintln!(
            "hoststack: {}",
            r.error.as_deref().unwrap_or("the daemon refused")
        );
        return Ok(ExitCode::FAILURE);
    }
    if daemon.json {
        println!("{}", serde_json::to_string_pretty(&r.data)?);
    } else {
        print!("{}", r.text);
    }
    Ok(ExitCode::SUCCESS)
}

/// `hoststack run`: the daemon until SIGINT/SIGTERM.
fn run_daemon(cfg: DaemonConfig) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install()?;
    let daemon = Daemon::start(&cfg).context("starting the daemon")?;
    for w in daemon.stack().workers() {
        eprintln!(
            "hoststack: running on {} queue {} ({}), {} mode",
            w.info.name, w.info.queue, w.info.mode, cfg.mode
        );
    }
    let metrics = daemon
        .metrics_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    // The line scripts and tests wait for.
    println!(
        "ready control={} app-socket={} metrics={metrics}",
        daemon.control_socket().display(),
        daemon.app_socket().display()
    );
    let mut worker_died = false;
    while !shutdown.wait(Duration::from_millis(200)) {
        if daemon.stack().any_worker_exited() {
            worker_died = true;
            break;
        }
    }
    let report = daemon.stop().context("stopping the daemon")?;
    eprintln!(
        "hoststack: stopped ({} apps detached, {} sessions closed)",
        report.apps_detached,
        report.sessions - report.sessions_left.min(report.sessions)
    );
    if worker_died {
        anyhow::bail!("a worker stopped unexpectedly; the daemon shut down");
    }
    Ok(ExitCode::SUCCESS)
}

fn start_stack(args: &StackArgs) -> anyhow::Result<(Stack, Shutdown, Option<AppSocketServer>)> {
    let shutdown = Shutdown::install()?;
    if let Some(ns) = &args.netns {
        enter_netns(ns)?;
    }
    let cfg = args.config()?;
    let stack = Stack::start(&cfg, args.mode)?;
    let apps = match &args.app_socket {
        Some(path) => Some(
            stack
                .serve_apps(AppSocketConfig::new(path))
                .context("starting the app socket")?,
        ),
        None => None,
    };
    Ok((stack, shutdown, apps))
}

fn serve(args: &StackArgs) -> anyhow::Result<ExitCode> {
    if args.app_socket.is_none() {
        anyhow::bail!("serve needs --app-socket PATH (where external apps attach)");
    }
    let (stack, shutdown, apps) = start_stack(args)?;
    for w in stack.workers() {
        eprintln!(
            "hoststack: serving on {} queue {} ({})",
            w.info.name, w.info.queue, w.info.mode
        );
    }
    println!(
        "ready app-socket={}",
        args.app_socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    while !shutdown.wait(Duration::from_millis(200)) {
        if stack.any_worker_exited() {
            break;
        }
    }
    drop(apps);
    let counters = stack.control().call(|l| l.counters()).ok();
    let result = stack.stop();
    println!(
        "{}",
        serde_json::json!({ "layer": format!("{counters:?}") })
    );
    result?;
    Ok(ExitCode::SUCCESS)
}

fn any_ip(port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port,
    }
}

fn echo_server(
    args: &StackArgs,
    tcp_port: u16,
    udp_port: u16,
    app_workers: u32,
    fifo: u32,
    discard: bool,
) -> anyhow::Result<ExitCode> {
    if tcp_port == 0 && udp_port == 0 {
        anyhow::bail!("nothing to serve: both --tcp-port and --udp-port are 0");
    }
    let (stack, shutdown, _apps) = start_stack(args)?;
    let control = stack.control().clone();
    let opts = AppOptions {
        rx_fifo_size: fifo,
        tx_fifo_size: fifo,
        ..AppOptions::default()
    };
    let server = EchoServer::attach_with(&control, "echo-server", opts, app_workers, discard)
        .context("attaching the echo app")?;
    if tcp_port != 0 {
        server
            .listen(&control, TransportProto::Tcp, any_ip(tcp_port))
            .context("TCP listen")?;
    }
    if udp_port != 0 {
        server
            .listen(&control, TransportProto::Udp, any_ip(udp_port))
            .context("UDP listen")?;
    }
    for w in stack.workers() {
        eprintln!(
            "hoststack: echo server on {} queue {} ({})",
            w.info.name, w.info.queue, w.info.mode
        );
    }
    // The line tests wait for.
    println!("ready tcp={tcp_port} udp={udp_port}");
    while !shutdown.wait(Duration::from_millis(200)) {
        if stack.any_worker_exited() {
            break;
        }
    }
    let per_worker = server.accepted_per_worker(&control).unwrap_or_default();
    let _ = control.detach(server.app);
    let workers: Vec<_> = stack.workers().iter().map(|w| w.stats.clone()).collect();
    let per_queue = per_queue_report(&stack);
    let queues: Vec<_> = stack.workers().iter().map(|w| w.counters.clone()).collect();
    let result = stack.stop();
    // Read after the workers stopped: their last frames are counted.
    let queue_counts: Vec<_> = queues.iter().map(|c| c.snapshot()).collect();
    let mut totals = hoststack_drivers::DriverCountersSnapshot::default();
    for q in &queue_counts {
        totals.add(q);
    }
    let zero_window_acks: u64 = workers
        .iter()
        .map(|s| s.zero_window_acks.load(Relaxed))
        .sum();
    let injected_rx_drops: u64 = workers
        .iter()
        .map(|s| s.injected_rx_drops.load(Relaxed))
        .sum();
    let injected_tx_drops: u64 = workers
        .iter()
        .map(|s| s.injected_tx_drops.load(Relaxed))
        .sum();
    // hoststack's TCP engine, summed over the workers (empty with smoltcp's).
    let mut tcp_engine = std::collections::BTreeMap::<&str, u64>::new();
    for w in &workers {
        if let Some(t) = w.tcp.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            for (k, v) in t.counters.fields() {
                *tcp_engine.entry(k).or_default() += v;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "tcp_engine": tcp_engine,
            "tcp_connections": server.stats.streams.load(Relaxed),
            "tcp_bytes": server.stats.bytes.load(Relaxed),
            "udp_datagrams": server.stats.datagrams.load(Relaxed),
            "accepted_per_app_worker": per_worker,
            "rx_frames": totals.rx_frames,
            "tx_frames": totals.tx_frames,
            "rx_bad_checksum": totals.rx_bad_checksum,
            "rx_malformed": totals.rx_malformed,
            "rx_checksum_unverified": totals.rx_checksum_unverified,
            "rx_kernel_drops": totals.rx_kernel_drops,
            "rx_frames_per_queue": queue_counts.iter().map(|q| q.rx_frames).collect::<Vec<_>>(),
            "tx_frames_per_queue": queue_counts.iter().map(|q| q.tx_frames).collect::<Vec<_>>(),
            "rx_csum_partial": totals.rx_csum_partial,
            "rx_csum_device_verified": totals.rx_csum_device_verified,
            "tx_csum_offloaded": totals.tx_csum_offloaded,
            "rx_gso_frames": totals.rx_gso_frames,
            "rx_gso_segments": totals.rx_gso_segments,
            "tx_gso_frames": totals.tx_gso_frames,
            "tx_gso_segments": totals.tx_gso_segments,
            "rx_gso_split": totals.rx_gso_split,
            "rx_bad_offload": totals.rx_bad_offload,
            "rx_no_buffers": totals.rx_no_buffers,
            "tx_errors": totals.tx_errors,
            "zero_window_acks": zero_window_acks,
            "injected_rx_drops": injected_rx_drops,
            "injected_tx_drops": injected_tx_drops,
            "per_queue": per_queue(),
        })
    );
    result?;
    Ok(ExitCode::SUCCESS)
}

/// How often a waiting command runs its clients' tick.
const TICK: Duration = DATAGRAM_RESEND_AFTER;

/// Waits for a client's report, a signal, a dead worker or the timeout,
/// running `tick` every [`TICK`].
fn wait_client(
    stack: &Stack,
    shutdown: &Shutdown,
    slot: &ReportSlot,
    timeout: Duration,
    tick: &dyn Fn(),
) -> TransferReport {
    let started = std::time::Instant::now();
    let mut ticked = started;
    loop {
        if let Some(r) = slot.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return r;
        }
        if ticked.elapsed() >= TICK {
            ticked = std::time::Instant::now();
            tick();
        }
        if shutdown.wait(Duration::from_millis(20))
            || started.elapsed() > timeout
            || stack.any_worker_exited()
        {
            return TransferReport {
                sent: 0,
                verified: 0,
                elapsed: started.elapsed(),
                error: Some("timed out or interrupted".into()),
                resent: 0,
            };
        }
    }
}

/// The app name of a command's `i`-th client: `kind`, then `kind-1`, ...
fn client_name(kind: &str, i: u32) -> String {
    if i == 0 {
        kind.to_string()
    } else {
        format!("{kind}-{i}")
    }
}

/// Waits for every client's report (within `timeout` in all), then
/// detaches the clients.
fn wait_clients<'a>(
    stack: &Stack,
    shutdown: &Shutdown,
    clients: impl Iterator<Item = (AppIndex, &'a ReportSlot)>,
    timeout: Duration,
    tick: &dyn Fn(),
) -> Vec<TransferReport> {
    let started = std::time::Instant::now();
    let mut apps = Vec::new();
    let outcomes = clients
        .map(|(app, report)| {
            apps.push(app);
            let left = timeout.saturating_sub(started.elapsed());
            wait_client(stack, shutdown, report, left, tick)
        })
        .collect();
    for app in apps {
        let _ = stack.control().detach(app);
    }
    outcomes
}

/// Each worker's queue with its frames and hand-offs, for the commands'
/// final reports.
fn per_queue_report(stack: &Stack) -> impl FnOnce() -> serde_json::Value + use<> {
    let probes: Vec<_> = stack
        .workers()
        .iter()
        .map(|w| (w.info.queue, w.counters.clone(), w.stats.clone()))
        .collect();
    move || {
        serde_json::Value::Array(
            probes
                .iter()
                .map(|(q, c, s)| {
                    let c = c.snapshot();
                    serde_json::json!({
                        "queue": q,
                        "rx_frames": c.rx_frames,
                        "tx_frames": c.tx_frames,
                        "rx_kernel_drops": c.rx_kernel_drops,
                        "rx_gso_frames": c.rx_gso_frames,
                        "tx_gso_frames": c.tx_gso_frames,
                        "tcp_segments_in": s.tcp_segments_in.load(Relaxed),
                        "handoff_sent": s.handoff.sent.load(Relaxed),
                        "handoff_received": s.handoff.received.load(Relaxed),
                        "handoff_dropped": s.handoff.dropped.load(Relaxed),
                        "neighbor_answers": s.neighbor_answers.load(Relaxed),
                    })
                })
                .collect(),
        )
    }
}

fn tcp_client(
    args: &StackArgs,
    connect: SocketAddr,
    (bytes, connections): (u64, u32),
    seed: u64,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (stack, shutdown, _apps) = start_stack(args)?;
    let opts = AppOptions {
        rx_fifo_size: 1 << 20,
        tx_fifo_size: 1 << 20,
        ..AppOptions::default()
    };
    let remote = Endpoint {
        ip: connect.ip(),
        port: connect.port(),
    };
    let mut clients = Vec::new();
    for i in 0..connections.max(1) {
        clients.push(StreamClient::start(
            stack.control(),
            &client_name("tcp-client", i),
            opts.clone(),
            remote,
            bytes,
            seed.wrapping_add(u64::from(i)),
        )?);
    }
    let started = std::time::Instant::now();
    let outcomes = wait_clients(
        &stack,
        &shutdown,
        clients.iter().map(|c| (c.app, &c.report)),
        timeout,
        &|| {},
    );
    let per_queue = per_queue_report(&stack);
    stack.stop()?;
    let verified: u64 = outcomes.iter().map(|o| o.verified).sum();
    let error = outcomes.iter().find_map(|o| o.error.clone());
    let ok = error.is_none() && outcomes.iter().all(|o| o.verified == bytes);
    println!(
        "{}",
        serde_json::json!({
            "connections": outcomes.len(),
            "sent": outcomes.iter().map(|o| o.sent).sum::<u64>(),
            "verified": verified,
            "verified_each": outcomes.iter().map(|o| o.verified).collect::<Vec<_>>(),
            "seconds": started.elapsed().as_secs_f64(),
            "ok": ok,
            "error": error,
            "per_queue": per_queue(),
        })
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn udp_client(
    args: &StackArgs,
    connect: SocketAddr,
    (count, connections): (u64, u32),
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (stack, shutdown, _apps) = start_stack(args)?;
    let remote = Endpoint {
        ip: connect.ip(),
        port: connect.port(),
    };
    let mut clients = Vec::new();
    for i in 0..connections.max(1) {
        clients.push(DatagramClient::start(
            stack.control(),
            &client_name("udp-client", i),
            AppOptions::default(),
            remote,
            count,
        )?);
    }
    let outcomes = wait_clients(
        &stack,
        &shutdown,
        clients.iter().map(|c| (c.app, &c.report)),
        timeout,
        // Unanswered datagrams go again.
        &|| {
            for c in &clients {
                c.kick(stack.control());
            }
        },
    );
    let per_queue = per_queue_report(&stack);
    stack.stop()?;
    let error = outcomes.iter().find_map(|o| o.error.clone());
    let ok = error.is_none() && outcomes.iter().all(|o| o.verified == count);
    println!(
        "{}",
        serde_json::json!({
            "sessions": outcomes.len(),
            "sent": outcomes.iter().map(|o| o.sent).sum::<u64>(),
            "echoed": outcomes.iter().map(|o| o.verified).sum::<u64>(),
            "echoed_each": outcomes.iter().map(|o| o.verified).collect::<Vec<_>>(),
            "resent": outcomes.iter().map(|o| o.resent).sum::<u64>(),
            "ok": ok,
            "error": error,
            "per_queue": per_queue(),
        })
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn lab(action: LabAction) -> anyhow::Result<ExitCode> {
    match action {
        LabAction::Up {
            name,
            host4,
            peer4,
            host6,
            peer6,
            mtu,
            peer_tso_off,
            queues,
            tap,
        } => {
            let lab_addr = |p: AddrPrefix| LabAddr {
                addr: p.addr,
                prefix: p.prefix,
            };
            let cfg = LabConfig {
                name,
                host4: lab_addr(host4),
                peer4: lab_addr(peer4),
                host6: lab_addr(host6),
                peer6: lab_addr(peer6),
                mtu,
                peer_tso_off,
                queues,
                tap,
            };
            let lab = Lab::up(cfg)?;
            println!("namespace {}", lab.netns);
            println!(
                "hoststack interface {} ({} and {})",
                lab.host_if, lab.cfg.host4, lab.cfg.host6
            );
            println!(
                "kernel peer {} in {} ({} and {})",
                lab.peer_if, lab.netns, lab.cfg.peer4, lab.cfg.peer6
            );
            lab.keep();
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Down { name } => {
            if Lab::down(&name)? {
                println!("lab {name} removed");
            } else {
                println!("no lab named {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
