//! Queue scaling on a two-queue veth lab: hoststack serving 1 and 2 of its
//! queues beside the kernel on 1 and 2 receive queues with RPS off and
//! on, in one run: 8-stream TCP bulk (each stream echoes its bytes,
//! checked, so both directions carry it), 64-byte round trips on 8
//! connections, UDP receive of 64-byte datagrams from many source ports,
//! and the per-queue balance (the slowest bulk stream's rate over the
//! fastest's).
//!
//! hoststack runs its builtin echo app in interrupt mode: the load
//! generators share the machine's two cores with its two workers, and
//! busy-polling workers would starve them. With one queue served the
//! kernel's end sends on one queue (`--traffic-steered`). The kernel's
//! echo server has a worker per queue (queue q's on core q, SO_REUSEPORT),
//! its UDP receivers a SO_REUSEPORT socket and pinned thread per queue.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_lab::Lab;
use serde_json::Value;

use super::sides::{ECHO_PORT, Medium, Mode, Service, Side, Tuning};
use super::{Figure, Outcome, Row, Settings, progress};
use crate::env;
use crate::kernel;
use crate::stats::Spread;

/// Bulk streams, and connections of the round trips.
const STREAMS: usize = 8;
/// UDP source sockets (ports), spread by the kernel's hash.
const UDP_SOCKETS: usize = 16;
/// The lab's queues.
const LAB_QUEUES: u32 = 2;

/// The figures of one configuration's run.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    bulk_gbit: f64,
    balance: f64,
    rr_per_sec: f64,
    udp_per_sec: f64,
}

/// One configuration: hoststack on `queues`, or the kernel on `queues`
/// receive queues with RPS on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Hoststack { queues: u32 },
    Kernel { queues: u32, rps: bool },
}

impl Config {
    fn queues(self) -> u32 {
        match self {
            Config::Hoststack { queues } | Config::Kernel { queues, .. } => queues,
        }
    }

    fn label(self) -> String {
        match self {
            Config::Hoststack { queues } => {
                format!("hoststack: builtin echo app, interrupt mode, {queues} queue(s) served")
            }
            Config::Kernel { queues, rps } => format!(
                "kernel: epoll server, {queues} receive queue(s), RPS {}",
                if rps { "on" } else { "off" }
            ),
        }
    }

    fn short(self) -> String {
        match self {
            Config::Hoststack { queues } => format!("builtin, interrupt, {queues}q"),
            Config::Kernel { queues, rps } => {
                format!("kernel {queues}q RPS {}", if rps { "on" } else { "off" })
            }
        }
    }
}

const CONFIGS: [Config; 6] = [
    Config::Hoststack { queues: 1 },
    Config::Hoststack { queues: 2 },
    Config::Kernel {
        queues: 1,
        rps: false,
    },
    Config::Kernel {
        queues: 1,
        rps: true,
    },
    Config::Kernel {
        queues: 2,
        rps: false,
    },
    Config::Kernel {
        queues: 2,
        rps: true,
    },
];

/// MiB each bulk stream echoes, and round trips per connection.
fn sizes(s: &Settings) -> (usize, usize) {
    if s.quick { (4, 1_000) } else { (64, 20_000) }
}

/// `kernel_conns` in the lab against `target`; its report.
fn kernel_conns(
    s: &Settings,
    lab: &Lab,
    target: SocketAddr,
    bytes: usize,
    rounds: usize,
) -> Result<Value> {
    let program = env::tool_beside(&s.hoststack, "kernel_conns")?;
    let out = lab
        .command(program.to_str().context("path")?)
        .args(["--target", &target.to_string()])
        .args([
            "--conns",
            &STREAMS.to_string(),
            "--bytes",
            &bytes.to_string(),
        ])
        .args([
            "--rounds",
            &rounds.to_string(),
            "--per-conn",
            "--connect-first",
        ])
        .args(["--timeout", "300"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.lines().next().context("no report")?)?;
    if v["failed"] != 0 {
        bail!("kernel_conns: {v}");
    }
    Ok(v)
}

/// Bulk, balance and round trips against the echo server at `target`.
fn tcp_figures(s: &Settings, lab: &Lab, target: SocketAddr, f: &mut Figures) -> Result<()> {
    let (mib, rounds) = sizes(s);
    let bytes = mib << 20;
    let secs = |v: &Value| -> Result<Vec<f64>> {
        Ok(v["echo_secs"]
            .as_array()
            .context("echo_secs")?
            .iter()
            .filter_map(Value::as_f64)
            .collect())
    };
    let bulk = secs(&kernel_conns(s, lab, target, bytes, 1)?)?;
    let slowest = bulk.iter().copied().fold(0.0, f64::max);
    let fastest = bulk.iter().copied().fold(f64::MAX, f64::min);
    f.bulk_gbit = (STREAMS * bytes * 8) as f64 / slowest.max(1e-9) / 1e9;
    f.balance = fastest / slowest.max(1e-9);
    let rr = secs(&kernel_conns(s, lab, target, 64, rounds)?)?;
    f.rr_per_sec = (STREAMS * rounds) as f64 / rr.iter().copied().fold(1e-9, f64::max);
    Ok(())
}

/// Floods `target` with 64-byte datagrams from [`UDP_SOCKETS`] source
/// ports for the window, from two threads in the lab's namespace; returns
/// how long it sent.
fn udp_flood(s: &Settings, lab: &Lab, target: SocketAddr) -> Result<Duration> {
    let d = s.duration;
    let threads = (0..2)
        .map(|t| {
            let stop = s.interrupted.clone();
            kernel::spawn_in(&format!("mq-udp-{t}"), Some(&lab.netns), None, move || {
                let socks: Vec<UdpSocket> = (0..UDP_SOCKETS / 2)
                    .map(|_| UdpSocket::bind("0.0.0.0:0"))
                    .collect::<std::io::Result<_>>()?;
                let payload = [t as u8; 64];
                let end = Instant::now() + d;
                while Instant::now() < end && !stop.load(Relaxed) {
                    for u in &socks {
                        for _ in 0..32 {
                            let _ = u.send_to(&payload, target);
                        }
                    }
                }
                Ok(())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    for t in threads {
        kernel::join(t)?;
    }
    Ok(t0.elapsed())
}

fn tuning(queues: u32, builtin: &[&str]) -> Tuning {
    Tuning {
        builtin: builtin.iter().map(|a| a.to_string()).collect(),
        queues: Some(queues),
        ..Tuning::default()
    }
}

fn hoststack(s: &Settings, lab: &Lab, queues: u32) -> Result<Figures> {
    let mut f = Figures::default();
    let side = Side::Builtin(Mode::Interrupt);
    let target = SocketAddr::new(lab.cfg.host4.addr, ECHO_PORT);
    let server = side.start_with(s, lab, Service::TcpEcho, Medium::Veth, &tuning(queues, &[]))?;
    let r = tcp_figures(s, lab, target, &mut f);
    server.stop()?;
    r?;
    // The builtin app swallows what arrives on its UDP port.
    let sink = side.start_with(
        s,
        lab,
        Service::UdpEcho,
        Medium::Veth,
        &tuning(queues, &["--discard"]),
    )?;
    let took = udp_flood(s, lab, target);
    let report = sink.stop()?;
    let got = report
        .as_ref()
        .and_then(|j| j["udp_datagrams"].as_f64())
        .context("the UDP sink's report has no udp_datagrams")?;
    f.udp_per_sec = got / took?.as_secs_f64();
    Ok(f)
}

/// Counts datagrams on `addr` with one SO_REUSEPORT socket and pinned
/// thread per queue until `stop`.
fn kernel_udp_sink(
    addr: SocketAddr,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<std::thread::JoinHandle<()>>, Arc<AtomicU64>)> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let count = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for t in 0..threads {
        let fd = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
        sockopt::set_socket_reuseport(&fd, true)?;
        rustix::net::bind(&fd, &addr)?;
        sockopt::set_socket_timeout(
            &fd,
            sockopt::Timeout::Recv,
            Some(Duration::from_millis(100)),
        )?;
        let (count, stop) = (count.clone(), stop.clone());
        hs.push(std::thread::spawn(move || {
            core_affinity::set_for_current(core_affinity::CoreId { id: t });
            let mut buf = [0u8; 2048];
            while !stop.load(Relaxed) {
                if rustix::net::recv(&fd, &mut buf[..], rustix::net::RecvFlags::empty()).is_ok() {
                    count.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    Ok((hs, count))
}

/// The kernel on the same veth end: `queues` receive queues, RPS on or
/// off.
fn kernel(s: &Settings, lab: &Lab, queues: u32, rps: bool) -> Result<Figures> {
    let mut f = Figures::default();
    let host = lab.cfg.host4.addr;
    let server =
        Side::Kernel.start_with(s, lab, Service::TcpEcho, Medium::Veth, &tuning(queues, &[]))?;
    env::run(std::process::Command::new("ethtool").args([
        "-L",
        &lab.host_if,
        "rx",
        &queues.to_string(),
    ]))?;
    for i in 0..queues {
        let path = format!("/sys/class/net/{}/queues/rx-{i}/rps_cpus", lab.host_if);
        std::fs::write(&path, if rps { "3" } else { "0" }).with_context(|| path.clone())?;
    }
    let r = tcp_figures(s, lab, SocketAddr::new(host, ECHO_PORT), &mut f);
    server.stop()?;
    r?;
    let stop = Arc::new(AtomicBool::new(false));
    let sink = SocketAddr::new(host, ECHO_PORT);
    let (threads, count) = kernel_udp_sink(sink, queues as usize, stop.clone())?;
    let took = udp_flood(s, lab, sink);
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    f.udp_per_sec = count.load(Relaxed) as f64 / took?.as_secs_f64();
    Ok(f)
}

fn measure(s: &Settings, lab: &Lab, c: Config) -> Result<Figures> {
    lab.set_peer_tx_queues(c.queues())?;
    match c {
        Config::Hoststack { queues } => hoststack(s, lab, queues),
        Config::Kernel { queues, rps } => kernel(s, lab, queues, rps),
    }
}

type Metric = (&'static str, &'static str, fn(&Figures) -> f64);

const METRICS: [Metric; 4] = [
    (
        "TCP bulk, 8 streams each echoing its bytes, each way",
        "Gbps",
        |f| f.bulk_gbit,
    ),
    ("TCP 64-byte round trips, 8 connections", "trans/s", |f| {
        f.rr_per_sec
    }),
    (
        "UDP receive, 64-byte datagrams from 16 source ports",
        "dgrams/s",
        |f| f.udp_per_sec,
    ),
    (
        "per-queue balance: slowest bulk stream's rate over the fastest's",
        "ratio",
        |f| f.balance,
    ),
];

pub(super) fn queue_scaling(s: &Settings) -> Result<Outcome> {
    const B: &str = "queue-scaling";
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); CONFIGS.len()];
    for run in 1..=s.runs {
        for (i, c) in CONFIGS.iter().enumerate() {
            s.check()?;
            let lab = env::fresh_lab_queues(&s.lab, s.subnet, s.mtu, LAB_QUEUES)?;
            let what = format!("run {run} of {}", c.label());
            let f = s.guarded(B, &what, || measure(s, &lab, *c))?;
            progress(
                B,
                run,
                s.runs,
                &c.label(),
                &format!(
                    "bulk {:.2} Gbps (balance {:.2}), {:.0} trans/s, UDP {:.0} dgrams/s",
                    f.bulk_gbit, f.balance, f.rr_per_sec, f.udp_per_sec
                ),
            );
            runs[i].push(f);
        }
    }
    let figure = |i: usize, get: fn(&Figures) -> f64| Figure {
        side: CONFIGS[i].label(),
        short: CONFIGS[i].short(),
        kernel: matches!(CONFIGS[i], Config::Kernel { .. }),
        values: runs[i].iter().map(get).collect(),
    };
    let mut rows: Vec<Row> = METRICS
        .iter()
        .map(|&(metric, unit, get)| {
            let figures = (0..CONFIGS.len()).map(|i| figure(i, get)).collect();
            Row::new(B, metric, unit, true, figures)
                .labelled(&format!("{B} {}", unit_label(metric)))
        })
        .collect();
    // Scaling from 1 to 2 queues, run by run: hoststack's own, and the
    // kernel's with the better RPS setting on each queue count.
    let at = |c: Config| CONFIGS.iter().position(|x| *x == c).unwrap_or(0);
    let best = |q: u32, r: usize, get: fn(&Figures) -> f64| {
        [false, true]
            .map(|rps| get(&runs[at(Config::Kernel { queues: q, rps })][r]))
            .into_iter()
            .fold(0.0, f64::max)
    };
    let mut notes = Vec::new();
    for &(metric, _, get) in &METRICS[..3] {
        let hs: Vec<f64> = (0..s.runs)
            .map(|r| {
                get(&runs[at(Config::Hoststack { queues: 2 })][r])
                    / get(&runs[at(Config::Hoststack { queues: 1 })][r]).max(1e-9)
            })
            .collect();
        let k: Vec<f64> = (0..s.runs)
            .map(|r| best(2, r, get) / best(1, r, get).max(1e-9))
            .collect();
        notes.push(format!(
            "{B}: {metric}, 2 queues over 1: hoststack {:.2}x, kernel (better RPS setting) {:.2}x",
            Spread::of(&hs).median,
            Spread::of(&k).median
        ));
        rows.push(
            Row::new(
                B,
                &format!("{metric}: 2 queues over 1"),
                "x",
                true,
                vec![
                    Figure {
                        side: "hoststack: 2 queues over 1".into(),
                        short: "builtin, interrupt, 2q/1q".into(),
                        kernel: false,
                        values: hs,
                    },
                    Figure {
                        side: "kernel: 2 receive queues over 1, the better RPS setting of each"
                            .into(),
                        short: "kernel 2q/1q".into(),
                        kernel: true,
                        values: k,
                    },
                ],
            )
            .labelled(&format!("{B} 2q/1q {}", unit_label(metric)))
            .unchart(),
        );
    }
    let (mib, rounds) = sizes(s);
    notes.push(format!(
        "{B}: a two-queue veth lab; {STREAMS} bulk streams of {mib} MiB echoed (kernel_conns --connect-first --per-conn), {STREAMS} connections of {rounds} 64-byte round trips, UDP from {UDP_SOCKETS} source ports in two threads for --duration; hoststack's lines are compared with the best kernel line of any queue count"
    ));
    Ok(Outcome { rows, notes })
}

/// A short chart label from a metric's first words.
fn unit_label(metric: &str) -> String {
    metric
        .split([',', ':'])
        .next()
        .unwrap_or(metric)
        .to_string()
}
