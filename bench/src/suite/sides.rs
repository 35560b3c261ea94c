//! The servers a benchmark compares, each started as its user would start
//! it, and the loop that measures them in turn.
//!
//! - hoststack's builtin echo app: `hoststack echo-server`;
//! - hoststack with an external app: `hoststack serve --app-socket` and the
//!   `echo_server` example attached over the app socket (what a user's own
//!   program gets);
//! - an unmodified server program ([`crate::servers`]: nginx, redis,
//!   memcached) under the LD_PRELOAD library on `hoststack run`;
//! - the kernel: `hoststack-bench kernel-server`, an epoll server
//!   ([`crate::kserver`]), or the same unmodified program with nothing
//!   preloaded, by default and busy-polling.
//!
//! Idle CPUs are kept polling (`/dev/cpu_dma_latency` = 0) for the
//! configurations that spend CPU for latency: hoststack in poll mode and
//! the busy-polling kernel. The default kernel and hoststack's interrupt
//! and adaptive modes run with the machine as it is.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use hoststack_lab::Lab;

use super::{Figure, Row, Settings, ip4, progress};
use crate::env::{self, Managed};
use crate::servers::{self, Program, Workdir};
use crate::tuning::Held;

/// A hoststack worker mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Busy loop.
    Poll,
    /// Sleep until work arrives.
    Interrupt,
    /// Switch by load.
    Adaptive,
}

impl Mode {
    /// The `--mode` argument.
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Interrupt => "interrupt",
            Mode::Adaptive => "adaptive",
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `hoststack echo-server` (builtin echo app).
    Builtin(Mode),
    /// `hoststack serve` + the external `echo_server` app.
    External(Mode),
    /// An unmodified program under `libhoststack_preload.so` on
    /// `hoststack run` (only for [`Service::Program`]).
    Preload(Mode),
    /// The kernel's epoll server (or the unmodified program), blocking in
    /// `epoll_wait`.
    Kernel,
    /// The kernel's epoll server spinning (an unmodified program as it
    /// is), socket busy polling on, idle CPUs polling.
    KernelBusy,
}

impl Side {
    /// Long label.
    pub fn label(self) -> String {
        match self {
            Side::Builtin(m) => format!("hoststack: builtin echo app, {} mode", m.arg()),
            Side::External(m) => format!(
                "hoststack: external app over the app socket, {} mode",
                m.arg()
            ),
            Side::Preload(m) => format!(
                "hoststack: unmodified server under the LD_PRELOAD library, {} mode",
                m.arg()
            ),
            Side::Kernel => "kernel: epoll server".into(),
            Side::KernelBusy => "kernel: epoll server, busy-polling".into(),
        }
    }

    /// Short label (chart).
    pub fn short(self) -> String {
        match self {
            Side::Builtin(m) => format!("builtin, {}", m.arg()),
            Side::External(m) => format!("external app, {}", m.arg()),
            Side::Preload(m) => format!("preload, {}", m.arg()),
            Side::Kernel => "kernel".into(),
            Side::KernelBusy => "kernel busy-poll".into(),
        }
    }

    /// A kernel configuration.
    pub fn is_kernel(self) -> bool {
        matches!(self, Side::Kernel | Side::KernelBusy)
    }

    fn idle_poll(self) -> bool {
        matches!(
            self,
            Side::Builtin(Mode::Poll)
                | Side::External(Mode::Poll)
                | Side::Preload(Mode::Poll)
                | Side::KernelBusy
        )
    }
}

/// What the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// TCP echo on [`ECHO_PORT`].
    TcpEcho,
    /// TCP discard on [`BULK_PORT`].
    TcpDiscard,
    /// UDP echo on [`ECHO_PORT`].
    UdpEcho,
    /// An unmodified server program, the same binary and configuration on
    /// every side.
    Program(Program),
}

/// TCP and UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// TCP discard port.
pub const BULK_PORT: u16 = 5001;

/// `program args` pinned to `core` with taskset (unpinned when None).
pub fn pinned(core: Option<usize>, program: &Path, args: &[&str]) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string()]).arg(program).args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// `hoststack-bench kernel-server ARGS` on `core`: `ready` once listening.
pub fn kernel_server(core: Option<usize>, args: &[&str]) -> Result<Managed> {
    kernel_server_on(&core.into_iter().collect::<Vec<_>>(), args)
}

/// `hoststack-bench kernel-server ARGS` with a worker pinned to each of
/// `cores` (none: one unpinned worker).
pub fn kernel_server_on(cores: &[usize], args: &[&str]) -> Result<Managed> {
    let me = std::env::current_exe()?;
    let mut cmd = Command::new(me);
    cmd.arg("kernel-server").args(args);
    if !cores.is_empty() {
        let list: Vec<String> = cores.iter().map(usize::to_string).collect();
        cmd.args(["--cores", &list.join(",")]);
    }
    Managed::start(cmd, "hoststack-bench kernel-server", "ready")
}

/// The cores of a server on `queues` queues: queue q's worker on core q,
/// or the core under test for one queue (None: unpinned).
fn queue_cores(queues: Option<u32>, core: Option<usize>) -> Vec<usize> {
    match (queues, core) {
        (Some(q), Some(_)) if q > 1 => (0..q as usize).collect(),
        (_, c) => c.into_iter().collect(),
    }
}

/// The external examples' directory, checked.
pub fn example(s: &Settings, name: &str) -> Result<std::path::PathBuf> {
    let p = env::examples_dir(&s.hoststack).join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build the examples (cargo build --release -p hoststack-app --examples)",
            p.display()
        );
    }
    Ok(p)
}

/// How hoststack reaches the lab: AF_XDP on the veth's host end, or
/// io_uring on a TAP (the lab's namespace holds the TAP and the kernel
/// peer; hoststack enters it to open the TAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// AF_XDP on a veth.
    Veth,
    /// io_uring on a TAP, with its vnet-header offloads (`--offload auto`)
    /// or without (`--offload off`).
    Tap {
        /// Checksum and segmentation offloads on.
        offloads: bool,
    },
}

/// The stack's arguments for a lab's host end (`queues`: serve that many
/// of the interface's queues, one pinned worker each).
fn stack_args(
    s: &Settings,
    lab: &Lab,
    mode: Mode,
    core: Option<usize>,
    medium: Medium,
    queues: Option<u32>,
) -> Vec<String> {
    let mut a = vec!["--interface".to_string(), lab.host_if.clone()];
    if let Medium::Tap { offloads } = medium {
        a.extend(["--driver", "uring-tap", "--netns", &lab.netns].map(String::from));
        a.extend([
            "--offload".into(),
            if offloads { "auto" } else { "off" }.into(),
        ]);
    }
    if let Some(e) = &s.tcp_engine {
        a.extend(["--tcp-engine".into(), e.clone()]);
    }
    for addr in lab.host_addresses() {
        a.extend(["--address".into(), addr.to_string()]);
    }
    a.extend(["--mode".into(), mode.arg().into()]);
    if let Some(q) = queues {
        a.extend(["--queues".into(), q.to_string()]);
        if q < lab.cfg.queues {
            a.push("--traffic-steered".into());
        }
    }
    let cores: Vec<String> = queue_cores(queues, core)
        .iter()
        .map(usize::to_string)
        .collect();
    if !cores.is_empty() {
        a.extend(["--cores".into(), cores.join(",")]);
    }
    a
}

/// A running server side, stopped by [`Server::stop`] (or on drop).
#[derive(Debug)]
pub struct Server {
    /// Processes in the order they were started (the stack first).
    procs: Vec<Managed>,
    /// Whether the first process reports: prints a JSON line when it
    /// stops and must exit cleanly (hoststack, the kernel server); an
    /// unmodified program only has to stop.
    reports: bool,
    /// The app socket to remove afterwards.
    socket: Option<std::path::PathBuf>,
    /// The run's files (an unmodified program's), removed last.
    _dir: Option<Workdir>,
    _held: Held,
}

impl Server {
    /// The server's process ids (stack and app, or the kernel server).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Managed::pid).collect()
    }

    /// Stops the apps, then the stack; returns the stack's (or the kernel
    /// server's) last JSON line.
    pub fn stop(mut self) -> Result<Option<serde_json::Value>> {
        let mut first = None;
        let mut result = Ok(());
        while let Some(p) = self.procs.pop() {
            if self.procs.is_empty() && self.reports {
                first = Some(p.stop());
            } else if let Err(e) = p.terminate() {
                result = Err(e);
            }
        }
        if let Some(s) = self.socket.take() {
            let _ = std::fs::remove_file(s);
        }
        result?;
        first.unwrap_or(Ok(None))
    }
}

/// What a benchmark changes in the servers it starts.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// More arguments of hoststack's stack (`--tcp-buffer 16384`).
    pub stack: Vec<String>,
    /// More arguments of the external `echo_server` app (`--fifo-size 4096`).
    pub app: Vec<String>,
    /// More arguments of the builtin `hoststack echo-server` app.
    pub builtin: Vec<String>,
    /// Kernel server processes sharing the port through SO_REUSEPORT (0 or
    /// 1: one process), for more connections than one process may hold
    /// files.
    pub kernel_processes: usize,
    /// Queues of a multi-queue lab to serve: hoststack's `--queues`, and
    /// as many kernel server workers, queue q's on core q (None: the
    /// defaults, one worker on the core under test).
    pub queues: Option<u32>,
}

impl Side {
    /// Starts this side's server for `svc` on the lab's host end (over
    /// `medium`, for hoststack's sides).
    pub fn start(self, s: &Settings, lab: &Lab, svc: Service, medium: Medium) -> Result<Server> {
        self.start_with(s, lab, svc, medium, &Tuning::default())
    }

    /// [`Side::start`] with a benchmark's `tuning`.
    pub fn start_with(
        self,
        s: &Settings,
        lab: &Lab,
        svc: Service,
        medium: Medium,
        tuning: &Tuning,
    ) -> Result<Server> {
        let (_, core) = s.cores();
        let held = Held::new(self.idle_poll(), self == Side::KernelBusy)?;
        if let Service::Program(p) = svc {
            return self.start_program(s, lab, p, core, held);
        }
        match self {
            Side::Preload(_) => bail!("{} runs only unmodified server programs", self.label()),
            Side::Kernel | Side::KernelBusy => {
                env::kernel_owns_host_end(lab)?;
                let host = lab.cfg.host4.addr;
                let tcp = |port| SocketAddr::new(host, port).to_string();
                let mut args = match svc {
                    Service::TcpEcho => vec!["--tcp".into(), tcp(ECHO_PORT), "--echo".into()],
                    Service::TcpDiscard => vec!["--tcp".into(), tcp(BULK_PORT)],
                    Service::UdpEcho => vec!["--udp-echo".into(), tcp(ECHO_PORT)],
                    Service::Program(_) => unreachable!("started above"),
                };
                if self == Side::KernelBusy {
                    args.push("--busy-poll".into());
                }
                let processes = tuning.kernel_processes.max(1);
                if processes > 1 {
                    args.push("--reuseport".into());
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let cores = queue_cores(tuning.queues, core);
                let procs = (0..processes)
                    .map(|_| kernel_server_on(&cores, &args))
                    .collect::<Result<_>>()?;
                Ok(Server {
                    procs,
                    reports: true,
                    socket: None,
                    _dir: None,
                    _held: held,
                })
            }
            Side::Builtin(mode) => {
                let mut args = stack_args(s, lab, mode, core, medium, tuning.queues);
                let port = |p: u16| p.to_string();
                let svc_args = match svc {
                    Service::TcpEcho => ["--tcp-port", &port(ECHO_PORT), "--udp-port", "0"]
                        .map(String::from)
                        .to_vec(),
                    Service::TcpDiscard => [
                        "--discard",
                        "--tcp-port",
                        &port(BULK_PORT),
                        "--udp-port",
                        "0",
                    ]
                    .map(String::from)
                    .to_vec(),
                    Service::UdpEcho => ["--tcp-port", "0", "--udp-port", &port(ECHO_PORT)]
                        .map(String::from)
                        .to_vec(),
                    Service::Program(_) => unreachable!("started above"),
                };
                args.extend(svc_args);
                args.extend(tuning.stack.iter().chain(&tuning.builtin).cloned());
                let mut cmd = Command::new(&s.hoststack);
                cmd.arg("echo-server").args(&args);
                Ok(Server {
                    procs: vec![Managed::start(cmd, "hoststack echo-server", "ready")?],
                    reports: true,
                    socket: None,
                    _dir: None,
                    _held: held,
                })
            }
            Side::External(mode) => {
                let app = example(s, "echo_server")?;
                let sock = std::env::temp_dir().join(format!(
                    "hsbench-{}-{}.sock",
                    std::process::id(),
                    s.lab
                ));
                let sock_s = sock.display().to_string();
                let mut cmd = Command::new(&s.hoststack);
                cmd.arg("serve")
                    .args(stack_args(s, lab, mode, core, medium, tuning.queues))
                    .args(&tuning.stack)
                    .args(["--app-socket", &sock_s]);
                let serve = Managed::start(cmd, "hoststack serve", "ready")?;
                let mut args = vec!["--socket", &sock_s, "--quiet"];
                let (listen, udp);
                match svc {
                    Service::TcpEcho => {
                        listen = format!("0.0.0.0:{ECHO_PORT}");
                        args.extend(["--listen", &listen]);
                    }
                    Service::TcpDiscard => {
                        listen = format!("0.0.0.0:{BULK_PORT}");
                        args.extend(["--listen", &listen, "--discard"]);
                    }
                    Service::UdpEcho => {
                        listen = format!("0.0.0.0:{ECHO_PORT}");
                        udp = format!("0.0.0.0:{ECHO_PORT}");
                        args.extend(["--listen", &listen, "--udp", &udp]);
                    }
                    Service::Program(_) => unreachable!("started above"),
                }
                args.extend(tuning.app.iter().map(String::as_str));
                let app = Managed::start(
                    pinned(core, &app, &args),
                    "the echo_server example",
                    "ready",
                )?;
                Ok(Server {
                    procs: vec![serve, app],
                    reports: true,
                    socket: Some(sock),
                    _dir: None,
                    _held: held,
                })
            }
        }
    }
}

impl Side {
    /// Starts unmodified `program` on this side: on the kernel with
    /// nothing preloaded, or under the preload library on a fresh
    /// `hoststack run`; returns once it answers.
    fn start_program(
        self,
        s: &Settings,
        lab: &Lab,
        program: Program,
        core: Option<usize>,
        held: Held,
    ) -> Result<Server> {
        let dir = Workdir::new(&format!("{}-{}", program.name(), s.lab))?;
        let (host, _) = ip4(lab);
        let mut procs = Vec::new();
        match self {
            Side::Kernel | Side::KernelBusy => {
                env::kernel_owns_host_end(lab)?;
                procs.push(servers::start(program, lab, host, dir.path(), core, None)?);
            }
            Side::Preload(mode) => {
                let lib = servers::preload_library(&s.hoststack)?;
                let daemon = servers::Daemon {
                    hoststack: &s.hoststack,
                    mode: mode.arg(),
                    core,
                    tcp_engine: s.tcp_engine.as_deref(),
                };
                procs.push(daemon.start(lab, dir.path())?);
                let socket = servers::app_socket(dir.path());
                procs.push(servers::start(
                    program,
                    lab,
                    host,
                    dir.path(),
                    core,
                    Some((&lib, &socket)),
                )?);
            }
            Side::Builtin(_) | Side::External(_) => bail!(
                "{} serves only the echo services, not {}",
                self.label(),
                program.name()
            ),
        }
        Ok(Server {
            procs,
            reports: matches!(self, Side::Preload(_)),
            socket: None,
            _dir: Some(dir),
            _held: held,
        })
    }
}

/// One configuration of a benchmark: a side, whether the lab's offloads
/// (TSO, GSO, GRO) are turned off on both ends first, and for hoststack's
/// sides whether it runs on the veth (AF_XDP) or a TAP (io_uring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The side.
    pub side: Side,
    /// Offloads off on both veth ends; on a TAP, hoststack asks for none
    /// (no vnet header: the kernel segments and checksums in software).
    pub offloads_off: bool,
    /// hoststack on a TAP lab instead of the veth.
    pub tap: bool,
}

impl Config {
    /// `side` on the lab as it comes.
    pub fn plain(side: Side) -> Self {
        Self {
            side,
            offloads_off: false,
            tap: false,
        }
    }

    /// hoststack's `side` on a TAP, its offloads on.
    pub fn tap(side: Side) -> Self {
        Self {
            tap: true,
            ..Self::plain(side)
        }
    }

    /// `side` with the offloads off.
    pub fn offloads_off(self) -> Self {
        Self {
            offloads_off: true,
            ..self
        }
    }

    /// What hoststack's side runs on.
    pub fn medium(&self) -> Medium {
        if self.tap {
            Medium::Tap {
                offloads: !self.offloads_off,
            }
        } else {
            Medium::Veth
        }
    }

    /// Long label.
    pub fn label(&self) -> String {
        let side = if self.tap {
            self.side
                .label()
                .replacen("hoststack:", "hoststack on a TAP (io_uring):", 1)
        } else {
            self.side.label()
        };
        match (self.offloads_off, self.tap) {
            (false, false) => side,
            (true, false) => format!("{side}, TSO/GSO/GRO off"),
            (false, true) => format!("{side}, vnet offloads on"),
            (true, true) => format!("{side}, offloads off"),
        }
    }

    /// Short label.
    pub fn short(&self) -> String {
        let side = if self.tap {
            format!("TAP {}", self.side.short())
        } else {
            self.side.short()
        };
        if self.offloads_off {
            format!("{side}, offloads off")
        } else {
            side
        }
    }
}

/// Every configuration's runs: the measured values and the server's last
/// JSON line of each.
pub type Results<T> = Vec<(Config, Vec<(T, Option<serde_json::Value>)>)>;

/// For each run, each configuration in turn: a fresh lab, its server for
/// `svc`, `measure` against it, the server stopped. `show` formats a
/// result for the progress line.
pub fn alternate<T>(
    s: &Settings,
    bench: &str,
    configs: &[Config],
    svc: Service,
    measure: impl FnMut(&Settings, &Lab, &Server) -> Result<T>,
    show: impl Fn(&T) -> String,
) -> Result<Results<T>> {
    alternate_with(s, bench, configs, svc, &Tuning::default(), measure, show)
}

/// [`alternate`] with the servers started with `tuning`.
pub fn alternate_with<T>(
    s: &Settings,
    bench: &str,
    configs: &[Config],
    svc: Service,
    tuning: &Tuning,
    mut measure: impl FnMut(&Settings, &Lab, &Server) -> Result<T>,
    show: impl Fn(&T) -> String,
) -> Result<Results<T>> {
    let mut out: Results<T> = configs.iter().map(|c| (*c, Vec::new())).collect();
    for run in 1..=s.runs {
        for (config, runs) in &mut out {
            s.check()?;
            let lab = if config.tap { s.tap_lab()? } else { s.lab()? };
            if config.offloads_off && !config.tap {
                env::set_offloads(&lab, false, false)?;
                env::set_offloads(&lab, true, false)?;
            }
            let what = format!("run {run} of {}", config.label());
            let (r, json) = s.guarded(bench, &what, || {
                let server = config
                    .side
                    .start_with(s, &lab, svc, config.medium(), tuning)?;
                let r = measure(s, &lab, &server);
                let stopped = server.stop();
                Ok((r?, stopped?))
            })?;
            progress(bench, run, s.runs, &config.label(), &show(&r));
            runs.push((r, json));
        }
    }
    Ok(out)
}

/// The same sides on the lab as it comes.
pub fn plain(sides: &[Side]) -> Vec<Config> {
    sides.iter().copied().map(Config::plain).collect()
}

/// The sides on the lab as it comes, then hoststack's sides again on a TAP
/// (io_uring, vnet offloads on).
pub fn plain_and_tap(sides: &[Side]) -> Vec<Config> {
    let tap = sides
        .iter()
        .copied()
        .filter(|s| !s.is_kernel())
        .map(Config::tap);
    plain(sides).into_iter().chain(tap).collect()
}

impl Row {
    /// A row of `metric` from the results of the configurations `keep`
    /// accepts, `value` picking the figure out of each run.
    pub fn of<T>(
        bench: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        results: &Results<T>,
        keep: impl Fn(&Config) -> bool,
        value: impl Fn(&T) -> f64,
    ) -> Row {
        let figures = results
            .iter()
            .filter(|(c, _)| keep(c))
            .map(|(c, runs)| Figure {
                side: c.label(),
                short: c.short(),
                kernel: c.side.is_kernel(),
                values: runs.iter().map(|(t, _)| value(t)).collect(),
            })
            .collect();
        Row::new(bench, metric, unit, higher_is_better, figures)
    }
}

/// The sum of `f` over every run of every configuration.
pub fn total<T>(results: &Results<T>, f: impl Fn(&T) -> u64) -> u64 {
    results
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(r, _)| f(r)))
        .sum()
}

/// Keeps every configuration.
pub fn all(_: &Config) -> bool {
    true
}
