//! Connect latency of a fresh client while `hping3 -S --flood
//! --rand-source` floods the server port with spoofed SYNs, and what the
//! flood costs the server in memory.
//!
//! The spoofed sources are anywhere in IPv4. The kernel's answers (SYN-ACKs
//! with SYN cookies, its default) would follow the root namespace's
//! default route out of the machine; a policy rule for the lab's host
//! address sends them back into the lab instead, where the peer drops
//! them, and is removed afterwards.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_lab::Lab;

use super::sides::{self, ECHO_PORT, Mode, Server, Service, Side};
use super::{Outcome, Row, Settings, ip4};
use crate::env::{self, Managed};
use crate::kernel;
use crate::memory;
use crate::stats::percentile;

/// How long one connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One run: the fresh client's connects and the server's growth.
#[derive(Debug, Clone)]
pub(super) struct Flooded {
    /// Connect times of the attempts that echoed, ns, sorted.
    connects: Vec<u64>,
    /// Attempts (connect + 64-byte echo + close).
    attempts: u64,
    /// Memory the server side grew by during the flood, bytes: its
    /// processes' resident sets, and on the kernel's side the slab.
    grown: f64,
    /// SYN cookies the kernel sent (root namespace's counter).
    cookies: u64,
    /// SYNs hping3 said it sent, when it said.
    sent: Option<u64>,
}

impl Flooded {
    fn ok(&self) -> u64 {
        self.connects.len() as u64
    }
    fn success(&self) -> f64 {
        100.0 * self.ok() as f64 / self.attempts.max(1) as f64
    }
    fn ms(&self, p: f64) -> f64 {
        percentile(&self.connects, p) as f64 / 1e6
    }
}

/// The kernel's answers from the host address go back into the lab.
struct Routed {
    table: String,
    from: String,
}

impl Routed {
    fn new(lab: &Lab, s: &Settings) -> Result<Self> {
        let table = (20_000 + u32::from(s.subnet)).to_string();
        let from = lab.cfg.host4.addr.to_string();
        let peer = lab.cfg.peer4.addr.to_string();
        env::run(Command::new("ip").args([
            "route",
            "replace",
            "default",
            "via",
            &peer,
            "dev",
            &lab.host_if,
            "onlink",
            "table",
            &table,
        ]))?;
        env::run(Command::new("ip").args(["rule", "add", "from", &from, "lookup", &table]))?;
        Ok(Self { table, from })
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        let _ = env::run(Command::new("ip").args([
            "rule",
            "del",
            "from",
            &self.from,
            "lookup",
            &self.table,
        ]));
        let _ = env::run(Command::new("ip").args(["route", "flush", "table", &self.table]));
    }
}

/// `TcpExt: SyncookiesSent` of /proc/net/netstat (this namespace).
fn syncookies_sent() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("/proc/net/netstat")?;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        bail!("no TcpExt lines in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "SyncookiesSent")
        .and_then(|(_, v)| v.parse().ok())
        .context("no SyncookiesSent")
}

fn server_memory(server: &Server, kernel: bool) -> Result<u64> {
    let mut m = 0;
    for p in server.pids() {
        m += memory::rss(p)?;
    }
    if kernel {
        m += memory::slab()?;
    }
    Ok(m)
}

/// One connect, 64-byte echo and close; the connect's time.
fn attempt(dst: SocketAddr) -> Result<Duration> {
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)?;
    let took = t.elapsed();
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let msg = [0x42u8; 64];
    c.write_all(&msg)?;
    let mut back = [0u8; 64];
    c.read_exact(&mut back)?;
    if back != msg {
        bail!("the echo came back different");
    }
    Ok(took)
}

fn flooded(s: &Settings, lab: &Lab, server: &Server, kernel_side: bool) -> Result<Flooded> {
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let _routed = Routed::new(lab, s)?;
    let cookies0 = syncookies_sent()?;
    let mem0 = server_memory(server, kernel_side)?;
    let mut cmd = lab.command("taskset");
    cmd.args(["-c", &load_core.unwrap_or(0).to_string()])
        .args(["hping3", "-S", "--flood", "--rand-source", "-q"])
        .args(["-p", &ECHO_PORT.to_string(), &host.to_string()]);
    let mut flood = Managed::start(cmd, "hping3 (is it installed? ci/setup installs it)", "")?;
    s.sleep(s.warmup.max(Duration::from_millis(200)))?;
    if let Some(st) = flood.exited() {
        bail!("hping3 exited at once ({st}): {}", flood.said());
    }
    let dst = SocketAddr::new(host, ECHO_PORT);
    let (d, stop) = (s.duration, s.interrupted.clone());
    let t = kernel::spawn_in("flood-client", Some(&lab.netns), load_core, move || {
        let end = Instant::now() + d;
        let (mut ok, mut attempts) = (Vec::new(), 0u64);
        while (Instant::now() < end || attempts < 5)
            && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            attempts += 1;
            if let Ok(took) = attempt(dst) {
                ok.push(took.as_nanos() as u64);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ok.sort_unstable();
        Ok((ok, attempts))
    })?;
    let (connects, attempts) = kernel::join(t)?;
    let mem1 = server_memory(server, kernel_side)?;
    let cookies = syncookies_sent()?.saturating_sub(cookies0);
    // SIGINT makes hping3 print its statistics.
    let _ = Command::new("kill")
        .args(["-INT", &flood.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while flood.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // "N packets transmitted, ..." (dropping `flood` stops it if it has not).
    let said = flood.said();
    let sent = said
        .split(" packets transmitted")
        .next()
        .and_then(|h| h.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    Ok(Flooded {
        connects,
        attempts,
        grown: mem1 as f64 - mem0 as f64,
        cookies,
        sent,
    })
}

pub(super) fn syn_flood(s: &Settings) -> Result<Outcome> {
    const B: &str = "syn-flood";
    let configs = sides::plain(&[Side::External(Mode::Poll), Side::Kernel, Side::KernelBusy]);
    // `alternate` measures the configurations in this order, run by run.
    let mut kernel_side = configs.iter().map(|c| c.side.is_kernel()).cycle();
    let results = sides::alternate(
        s,
        B,
        &configs,
        Service::TcpEcho,
        |s, lab, server| flooded(s, lab, server, kernel_side.next().unwrap_or(false)),
        |r| {
            format!(
                "{}/{} connects, p50 {:.2} ms, p99 {:.2} ms, server grew {:.1} MB, {} SYN cookies",
                r.ok(),
                r.attempts,
                r.ms(0.5),
                r.ms(0.99),
                r.grown / 1e6,
                r.cookies
            )
        },
    )?;
    let rows = vec![
        Row::of(
            B,
            "fresh client's connects that echoed 64 bytes during the flood",
            "%",
            true,
            &results,
            sides::all,
            Flooded::success,
        ),
        Row::of(
            B,
            "fresh client's connect time during the flood, p50",
            "ms",
            false,
            &results,
            sides::all,
            |r| r.ms(0.5),
        )
        .labelled(&format!("{B} connect p50")),
        Row::of(
            B,
            "fresh client's connect time during the flood, p99",
            "ms",
            false,
            &results,
            sides::all,
            |r| r.ms(0.99),
        )
        .labelled(&format!("{B} connect p99"))
        .unchart(),
        Row::of(
            B,
            "server memory growth during the flood (hoststack: its processes' RSS; kernel: server RSS + slab)",
            "MB",
            false,
            &results,
            sides::all,
            |r| r.grown.max(0.0) / 1e6,
        )
        .labelled(&format!("{B} memory growth"))
        .unchart(),
    ];
    let cookies = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mut notes = vec![format!(
        "{B}: hping3 -S --flood --rand-source at port {ECHO_PORT} from the namespace on the load core, from --warmup before the client's window to its end; the kernel's net.ipv4.tcp_syncookies = {cookies}; its answers to the spoofed sources are routed back into the lab (a policy rule for the host address), where the peer drops them; a connect that takes over {CONNECT_TIMEOUT:?} counts as failed"
    )];
    for (c, runs) in &results {
        let sent: Vec<String> = runs
            .iter()
            .map(|(r, _)| r.sent.map_or("?".into(), |n| n.to_string()))
            .collect();
        let cookies: Vec<String> = runs.iter().map(|(r, _)| r.cookies.to_string()).collect();
        notes.push(format!(
            "{B}: {}: SYNs hping3 sent per run {}; SYN cookies the kernel sent per run {}",
            c.label(),
            sent.join(", "),
            cookies.join(", ")
        ));
    }
    Ok(Outcome { rows, notes })
}
