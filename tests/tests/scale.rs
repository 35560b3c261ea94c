//! hoststack at scale: 100,000 concurrent kernel connections to an external
//! echo server on the daemon, each echoing its own bytes, held open
//! together, then closed, with every table back where it started. Needs
//! root; a process may hold 20,000 files here, so the connections come from
//! several client processes and source addresses.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_lab::HeldConns;
use hoststack_tests::{Daemon, lab_bin};

const CONNECTIONS: usize = 100_000;

/// Connections to open: 100,000 unless `HOSTSTACK_SCALE_CONNECTIONS` says
/// otherwise (for probing by hand).
fn connections() -> usize {
    std::env::var("HOSTSTACK_SCALE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CONNECTIONS)
}
const CLIENTS: usize = 6;

/// One `kernel_conns --hold` client per source address.
fn client(d: &Daemon, source: IpAddr, conns: usize) -> Result<HeldConns> {
    let target = SocketAddr::new(d.lab.cfg.host4.addr, 7);
    let extra = ["--bytes", "64", "--concurrency", "250", "--timeout", "200"];
    Ok(HeldConns::start(
        &d.lab,
        &lab_bin("kernel_conns"),
        target,
        source,
        conns,
        &extra,
    )?)
}

/// TCP connections in the daemon's engines.
fn tcp_connections(d: &Daemon) -> Result<u64> {
    let ifs = d.show_json("interface")?;
    Ok(ifs
        .as_array()
        .context("interfaces")?
        .iter()
        .map(|i| i["tcp"]["connections"].as_u64().unwrap_or(0))
        .sum())
}

/// The app's fifos and sessions, as `show app 0` counts them.
fn app_tables(d: &Daemon) -> Result<(u64, u64)> {
    let a = d.show_json("app 0")?;
    let workers = a["workers"].as_array().context("workers")?;
    let sum = |k: &str| workers.iter().map(|w| w[k].as_u64().unwrap_or(0)).sum();
    Ok((sum("fifos"), sum("sessions")))
}

/// The kernel side's counters of transmissions that failed or gave up.
fn kernel_tcp_counters(ns: &str) -> String {
    let Ok(o) = Command::new("ip")
        .args(["netns", "exec", ns, "nstat", "-az"])
        .output()
    else {
        return "nstat failed".into();
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let wanted = [
        "TcpRetransSegs",
        "TcpExtTCPRetransFail",
        "TcpExtTCPAbortOnTimeout",
    ];
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, value) = (w.next()?, w.next()?);
            wanted.contains(&name).then(|| format!("{name} {value}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmRSS")
}

#[test]
fn a_hundred_thousand_kernel_connections_echo_their_own_bytes_and_leave_nothing_behind()
-> Result<()> {
    let d = Daemon::start("hk", |_| {
        "[tcp]\nbuffer = \"16K\"\n\n[session]\nrx_fifo_size = \"4K\"\ntx_fifo_size = \"4K\"\n"
            .into()
    })?;
    let ns = &d.lab.netns;
    let sources = d.lab.add_client_sources(CLIENTS)?;
    let mut app = d.echo_app(
        "app.sock",
        &["--listen", "0.0.0.0:7", "--fifo-size", "4096"],
    )?;
    app.discard_stdout();
    let daemon_pid = d.pid().context("daemon pid")?;
    let conns0 = tcp_connections(&d)?;
    let (fifos0, sessions0) = app_tables(&d)?;
    let rss0 = rss(daemon_pid)?;

    let t = Instant::now();
    let per = connections() / CLIENTS;
    let mut clients = sources
        .iter()
        .map(|s| client(&d, *s, per))
        .collect::<Result<Vec<_>>>()?;
    let mut verified = 0;
    for c in &mut clients {
        let r = c.report()?;
        if r["failed"].as_u64() != Some(0) {
            let ifs = d.show("interface").unwrap_or_default();
            let nstat = Command::new("ip")
                .args(["netns", "exec", ns, "nstat", "-az"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let nstat: Vec<&str> = nstat
                .lines()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    (l.contains("syn")
                        || l.contains("fail")
                        || l.contains("timeout")
                        || l.contains("drop")
                        || l.contains("overflow"))
                        && l.split_whitespace().nth(1).is_none_or(|v| v != "0")
                })
                .collect();
            bail!("a client failed: {r}\n{ifs}\nclient side: {nstat:?}");
        }
        verified += r["verified"].as_u64().unwrap_or(0);
    }
    let opened = t.elapsed();
    let n = (per * CLIENTS) as u64;
    assert_eq!(verified, n, "connections echoed byte-exact");
    // The engines publish their tables about once a second.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut conns = tcp_connections(&d)?;
    while conns - conns0 != n && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
        conns = tcp_connections(&d)?;
    }
    let (_, sessions) = app_tables(&d)?;
    let rss1 = rss(daemon_pid)?;
    eprintln!(
        "{n} connections opened and echoed in {:.2} s; daemon RSS {} -> {} MB ({} bytes per connection)",
        opened.as_secs_f64(),
        rss0 >> 20,
        rss1 >> 20,
        (rss1 - rss0) / n
    );
    assert_eq!(sessions - sessions0, n, "sessions while all are open");
    assert_eq!(conns - conns0, n, "TCP connections while all are open");
    assert!(
        (rss1 - rss0) / n <= 16 << 10,
        "more than 16 KiB per idle connection"
    );

    for c in &mut clients {
        let r = c.close()?;
        assert_eq!(r["closed"].as_u64(), Some(per as u64), "{r}");
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let now = (tcp_connections(&d)?, app_tables(&d)?);
        let before = (conns0, (fifos0, sessions0));
        if now == before {
            eprintln!("closed; kernel side: {}", kernel_tcp_counters(ns));
            break;
        }
        if Instant::now() > end {
            // What is left, to say why.
            let left = d.show("session verbose").unwrap_or_default();
            let head: Vec<&str> = left.lines().take(30).collect();
            eprintln!("sessions left:\n{}", head.join("\n"));
            eprintln!("{}", d.show("interface").unwrap_or_default());
            eprintln!("kernel side: {}", kernel_tcp_counters(ns));
            bail!("after closing: connections, (fifos, sessions) {now:?}, before {before:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
