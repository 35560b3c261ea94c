//! `mq_scaling`: hoststack on 1 and 2 queues beside the Linux kernel on 1
//! and 2 queues (RPS off and on), in one run, on a two-queue veth lab.
//!
//! ```text
//! mq_scaling [--streams 8] [--stream-mib 64] [--rr-conns 8] [--rr-rounds 20000]
//!            [--udp-secs 3] [--udp-sockets 16] [--json PATH]
//! ```
//!
//! Rows: 8-stream TCP bulk (each stream echoes its bytes, checked, so both
//! directions carry it; Gbit/s each way), 64-byte round trips on 8
//! connections (per second), UDP receive of 64-byte datagrams from many
//! source ports (per second), and per-queue balance: the slowest bulk
//! stream's rate over the fastest's. hoststack serves queue 0 alone (the
//! kernel's end sending on one queue, `--traffic-steered`) or both; the
//! kernel's echo server (`kernel_echo`, epoll, SO_REUSEPORT, a pinned
//! thread per queue) and UDP receivers (one SO_REUSEPORT socket and pinned
//! thread per queue) run on the same veth end with its receive queues set
//! to 1 or 2 and RPS off or on, and the better RPS setting is taken. The
//! kernel-side clients are `kernel_conns` and a UDP sender in the lab's
//! namespace.
//!
//! A self-contained addition beside `hoststack-bench run` (whose suite is
//! being reworked): it uses only the `hoststack`, `kernel_conns` and
//! `kernel_echo` binaries built next to it and the lab. Needs root.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use hoststack_lab::{Lab, LabConfig, enter_netns};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Bulk streams.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// MiB each bulk stream sends (and gets back).
    #[arg(long, default_value_t = 64)]
    stream_mib: usize,
    /// Round-trip connections.
    #[arg(long, default_value_t = 8)]
    rr_conns: usize,
    /// 64-byte round trips per connection.
    #[arg(long, default_value_t = 20_000)]
    rr_rounds: usize,
    /// Seconds of UDP flood.
    #[arg(long, default_value_t = 3)]
    udp_secs: u64,
    /// UDP source sockets (ports), spread by the kernel's hash.
    #[arg(long, default_value_t = 16)]
    udp_sockets: usize,
    /// hoststack's worker mode. The load generators share the machine's
    /// cores, so busy-polling workers starve them: interrupt (the default)
    /// sleeps when a worker runs out of work.
    #[arg(long, default_value = "interrupt")]
    mode: String,
    /// Lab name.
    #[arg(long, default_value = "mqbench")]
    lab: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The figures of one configuration.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    bulk_gbit: f64,
    balance: f64,
    rr_per_sec: f64,
    udp_per_sec: f64,
}

impl Figures {
    fn json(&self) -> Value {
        json!({
            "tcp_bulk_gbit_each_way": self.bulk_gbit,
            "balance_slowest_over_fastest": self.balance,
            "rr_64b_per_sec": self.rr_per_sec,
            "udp_rx_64b_per_sec": self.udp_per_sec,
        })
    }
}

fn tool(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(name);
    ensure!(
        p.exists(),
        "{} is missing: cargo build --release --bins",
        p.display()
    );
    Ok(p)
}

fn run(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    ensure!(st.success(), "`{}` failed", args.join(" "));
    Ok(())
}

/// A child killed when dropped; its stdout lines are kept as they come.
struct Kid {
    child: Child,
    name: &'static str,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    ready: std::sync::mpsc::Receiver<()>,
}

impl Kid {
    fn spawn(mut cmd: Command, name: &'static str) -> Result<Self> {
        use std::io::BufRead;
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, ready) = std::sync::mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if l.starts_with("ready") {
                    let _ = tx.send(());
                }
                keep.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        Ok(Self {
            child,
            name,
            lines,
            ready,
        })
    }

    /// Waits for its `ready` line.
    fn wait_ready(&mut self) -> Result<()> {
        self.ready
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow::anyhow!("{} was not ready within 30 s", self.name))
    }

    /// SIGTERM, then the last JSON line it printed.
    fn stop_json(mut self) -> Result<Value> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.child.wait()?;
        // The reader thread sees EOF right after the exit.
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let line = lines
            .iter()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("no JSON report")?;
        Ok(serde_json::from_str(line)?)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kernel_conns` in the lab against `target`; its report.
fn kernel_conns(
    lab: &Lab,
    target: SocketAddr,
    conns: usize,
    bytes: usize,
    rounds: usize,
) -> Result<Value> {
    let out = lab
        .command(tool("kernel_conns")?.to_str().context("path")?)
        .args(["--target", &target.to_string()])
        .args(["--conns", &conns.to_string(), "--bytes", &bytes.to_string()])
        .args([
            "--rounds",
            &rounds.to_string(),
            "--per-conn",
            "--connect-first",
        ])
        .args(["--timeout", "300"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.lines().next().context("no report")?)?;
    ensure!(v["failed"] == 0, "kernel_conns: {v}");
    Ok(v)
}

/// Bulk and round trips against the echo server at `target`.
fn tcp_rows(a: &Args, lab: &Lab, target: SocketAddr, f: &mut Figures) -> Result<()> {
    let bytes = a.stream_mib << 20;
    let v = kernel_conns(lab, target, a.streams, bytes, 1)?;
    let secs: Vec<f64> = v["echo_secs"]
        .as_array()
        .context("echo_secs")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let slowest = secs.iter().copied().fold(0.0, f64::max);
    let fastest = secs.iter().copied().fold(f64::MAX, f64::min);
    f.bulk_gbit = (a.streams * bytes * 8) as f64 / slowest / 1e9;
    f.balance = fastest / slowest;
    let v = kernel_conns(lab, target, a.rr_conns, 64, a.rr_rounds)?;
    let secs = v["echo_secs"]
        .as_array()
        .context("echo_secs")?
        .iter()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    f.rr_per_sec = (a.rr_conns * a.rr_rounds) as f64 / secs;
    Ok(())
}

/// Floods `target` with 64-byte datagrams from `sockets` source ports for
/// `secs` seconds from the lab's namespace; returns how many were sent.
fn udp_flood(lab: &Lab, target: SocketAddr, sockets: usize, secs: u64) -> Result<u64> {
    let ns = lab.netns.clone();
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let ns = ns.clone();
            std::thread::spawn(move || -> Result<u64> {
                enter_netns(&ns)?;
                let socks: Vec<UdpSocket> = (0..sockets / 2)
                    .map(|_| UdpSocket::bind("0.0.0.0:0"))
                    .collect::<std::io::Result<_>>()?;
                let payload = [t as u8; 64];
                let end = Instant::now() + Duration::from_secs(secs);
                let mut sent = 0u64;
                while Instant::now() < end {
                    for s in &socks {
                        for _ in 0..32 {
                            if s.send_to(&payload, target).is_ok() {
                                sent += 1;
                            }
                        }
                    }
                }
                Ok(sent)
            })
        })
        .collect();
    let mut sent = 0;
    for h in handles {
        sent += h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    Ok(sent)
}

fn hoststack(a: &Args, lab: &Lab, queues: u32) -> Result<Figures> {
    let mut f = Figures::default();
    lab.set_peer_tx_queues(queues)?;
    let start = |extra: &[&str]| -> Result<Kid> {
        let mut c = Command::new(tool("hoststack")?);
        c.args(["echo-server", "--interface", &lab.host_if]);
        c.args(["--address", &lab.cfg.host4.to_string()]);
        c.args(["--queues", &queues.to_string(), "--mode", &a.mode]);
        if queues < lab.cfg.queues {
            c.arg("--traffic-steered");
        }
        c.args(extra);
        let mut k = Kid::spawn(c, "hoststack echo-server")?;
        k.wait_ready()?;
        Ok(k)
    };
    let server = start(&["--udp-port", "0"])?;
    tcp_rows(a, lab, SocketAddr::new(lab.cfg.host4.addr, 7), &mut f)?;
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    let sink = start(&["--tcp-port", "0", "--udp-port", "9", "--discard"])?;
    udp_flood(
        lab,
        SocketAddr::new(lab.cfg.host4.addr, 9),
        a.udp_sockets,
        a.udp_secs,
    )?;
    let report = sink.stop_json()?;
    f.udp_per_sec = report["udp_datagrams"].as_f64().unwrap_or(0.0) / a.udp_secs as f64;
    std::thread::sleep(Duration::from_millis(300));
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
            if let Some(c) = core_affinity::get_core_ids().and_then(|ids| ids.get(t).copied()) {
                core_affinity::set_for_current(c);
            }
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if rustix::net::recv(&fd, &mut buf[..], rustix::net::RecvFlags::empty()).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Ok((hs, count))
}

/// The kernel on the same veth end: `queues` receive queues, RPS on or
/// off.
fn kernel(a: &Args, lab: &Lab, queues: u32, rps: bool) -> Result<Figures> {
    let mut f = Figures::default();
    let q = queues.to_string();
    lab.set_peer_tx_queues(queues)?;
    run(&["ethtool", "-L", &lab.host_if, "rx", &q])?;
    for i in 0..queues {
        let path = format!("/sys/class/net/{}/queues/rx-{i}/rps_cpus", lab.host_if);
        std::fs::write(&path, if rps { "3" } else { "0" }).with_context(|| path.clone())?;
    }
    let host = lab.cfg.host4.addr;
    let cores: Vec<String> = (0..queues).map(|c| c.to_string()).collect();
    let mut c = Command::new(tool("kernel_echo")?);
    c.args([
        "--listen",
        &format!("{host}:7"),
        "--threads",
        &q,
        "--cores",
        &cores.join(","),
    ]);
    let mut echo = Kid::spawn(c, "kernel_echo")?;
    echo.wait_ready()?;
    tcp_rows(a, lab, SocketAddr::new(host, 7), &mut f)?;
    drop(echo);
    let stop = Arc::new(AtomicBool::new(false));
    let (threads, count) =
        kernel_udp_sink(SocketAddr::new(host, 9), queues as usize, stop.clone())?;
    udp_flood(lab, SocketAddr::new(host, 9), a.udp_sockets, a.udp_secs)?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    f.udp_per_sec = count.load(Ordering::Relaxed) as f64 / a.udp_secs as f64;
    Ok(f)
}

/// A table row: its name, the figure and the unit it is printed in.
type Row = (&'static str, fn(&Figures) -> f64, f64);

fn best(x: Figures, y: Figures) -> Figures {
    Figures {
        bulk_gbit: x.bulk_gbit.max(y.bulk_gbit),
        balance: x.balance.max(y.balance),
        rr_per_sec: x.rr_per_sec.max(y.rr_per_sec),
        udp_per_sec: x.udp_per_sec.max(y.udp_per_sec),
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    ensure!(
        rustix::process::geteuid().is_root(),
        "mq_scaling builds a network namespace and AF_XDP sockets: run it as root"
    );
    let mut cfg = LabConfig::new(&a.lab);
    cfg.queues = 2;
    let lab = Lab::up(cfg)?;
    let hs1 = hoststack(&a, &lab, 1)?;
    let hs2 = hoststack(&a, &lab, 2)?;
    // The kernel gets the host end's address for its own runs.
    run(&[
        "ip",
        "addr",
        "add",
        &lab.cfg.host4.to_string(),
        "dev",
        &lab.host_if,
    ])?;
    let k = |q, rps| kernel(&a, &lab, q, rps);
    let (k1_off, k1_on) = (k(1, false)?, k(1, true)?);
    let (k2_off, k2_on) = (k(2, false)?, k(2, true)?);
    let (k1, k2) = (best(k1_off, k1_on), best(k2_off, k2_on));
    let rows: [Row; 4] = [
        (
            "TCP bulk, 8 streams (Gbit/s each way)",
            |f| f.bulk_gbit,
            1.0,
        ),
        ("64 B round trips, 8 conns (k/s)", |f| f.rr_per_sec, 1e3),
        ("UDP receive, 64 B (kpps)", |f| f.udp_per_sec, 1e3),
        ("balance: slowest/fastest stream", |f| f.balance, 1.0),
    ];
    println!(
        "{:<40}{:>10}{:>10}{:>8}{:>12}{:>12}{:>8}",
        "", "hs 1q", "hs 2q", "2q/1q", "kernel 1q", "kernel 2q", "2q/1q"
    );
    for (name, get, unit) in rows {
        println!(
            "{:<40}{:>10.2}{:>10.2}{:>8.2}{:>12.2}{:>12.2}{:>8.2}",
            name,
            get(&hs1) / unit,
            get(&hs2) / unit,
            get(&hs2) / get(&hs1),
            get(&k1) / unit,
            get(&k2) / unit,
            get(&k2) / get(&k1)
        );
    }
    let report = json!({
        "hoststack_mode": a.mode,
        "hoststack": {"1": hs1.json(), "2": hs2.json()},
        "kernel": {
            "1": {"rps_off": k1_off.json(), "rps_on": k1_on.json()},
            "2": {"rps_off": k2_off.json(), "rps_on": k2_on.json()},
        },
    });
    println!("{report}");
    if let Some(p) = &a.json {
        std::fs::write(p, format!("{report}\n"))?;
    }
    Ok(())
}
