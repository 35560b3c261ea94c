//! `kernel_conns`: many kernel TCP connections from one process, for the
//! tests and benchmarks that open thousands of them against hoststack (or
//! against the kernel's own server, to compare).
//!
//! ```text
//! kernel_conns --target IP:PORT --conns N [--sources IP,IP,...] [--bytes B]
//!              [--rounds R] [--concurrency C] [--connect-first] [--hold]
//!              [--per-conn] [--timeout SECS]
//! ```
//!
//! Opens `N` connections (source addresses taken in turn from `--sources`,
//! so more than one port range's worth can reach one server), at most `C`
//! connecting at a time, sends `B` bytes on each (a pattern unique to the
//! connection) and checks every byte of the echo. It prints one JSON line
//! once all are done: how many connected, how many verified, the first
//! error, and how long opening and echoing took. With `--connect-first`
//! no connection sends until all are connected, so the server sees every
//! one of them busy at once. With `--hold` the
//! connections then stay open until a line (or EOF) arrives on stdin, and a
//! second JSON line reports the close. With `--rounds R` each connection
//! sends its `B` bytes, waits for their echo, and does so `R` times (64-byte
//! round trips: `--bytes 64 --rounds 10000`); `--per-conn` adds each
//! connection's echo time to the report, for how evenly they were served.
//! Run it inside the peer's namespace
//! (`ip netns exec`); a process may hold about 20,000 sockets here, so
//! 100,000 connections take several processes.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType, sockopt};

struct Args {
    target: SocketAddr,
    conns: usize,
    sources: Vec<IpAddr>,
    bytes: usize,
    rounds: usize,
    concurrency: usize,
    connect_first: bool,
    hold: bool,
    per_conn: bool,
    timeout: Duration,
}

const USAGE: &str = "usage: kernel_conns --target IP:PORT --conns N [--sources IP,IP,...] \
[--bytes B] [--rounds R] [--concurrency C] [--connect-first] [--hold] [--per-conn] \
[--timeout SECS]";

fn usage_error(why: &str) -> ! {
    eprintln!("kernel_conns: {why}\n{USAGE}");
    std::process::exit(2)
}

fn parsed<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage_error(&format!("{flag}: cannot parse {v:?}")))
}

fn args() -> Args {
    let mut a = Args {
        target: SocketAddr::from(([0, 0, 0, 0], 0)),
        conns: 0,
        sources: Vec::new(),
        bytes: 1,
        rounds: 1,
        concurrency: 1024,
        connect_first: false,
        hold: false,
        per_conn: false,
        timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage_error(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--target" => a.target = parsed(&k, &v()),
            "--conns" => a.conns = parsed(&k, &v()),
            "--sources" => {
                a.sources = v().split(',').map(|s| parsed(&k, s)).collect();
            }
            "--bytes" => a.bytes = parsed::<usize>(&k, &v()).max(1),
            "--rounds" => a.rounds = parsed::<usize>(&k, &v()).max(1),
            "--per-conn" => a.per_conn = true,
            "--concurrency" => a.concurrency = parsed::<usize>(&k, &v()).max(1),
            "--timeout" => a.timeout = Duration::from_secs(parsed(&k, &v())),
            "--hold" => a.hold = true,
            "--connect-first" => a.connect_first = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            _ => usage_error(&format!("unknown argument {k}")),
        }
    }
    if a.target.port() == 0 || a.conns == 0 {
        usage_error("--target and --conns are required");
    }
    a
}

/// The byte at `offset` of connection `id`'s stream.
fn pattern(id: usize, offset: usize) -> u8 {
    let x = (id as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(offset as u64);
    (x ^ (x >> 29))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9)
        .to_le_bytes()[7]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Connected, waiting for the others (`--connect-first`).
    Connected,
    Echoing,
    Done,
}

struct Conn {
    fd: OwnedFd,
    id: usize,
    phase: Phase,
    sent: usize,
    verified: usize,
    /// When it started echoing.
    echo_from: Option<Instant>,
}

struct Run {
    poll: OwnedFd,
    conns: Vec<Option<Conn>>,
    waiting: VecDeque<usize>,
    in_flight: usize,
    connected: usize,
    verified: usize,
    failed: usize,
    first_error: Option<String>,
    opened_at: Option<Instant>,
    /// Each connection's echo time, by id (with `--per-conn`).
    echo_secs: Vec<f64>,
}

impl Run {
    fn fail(&mut self, slot: usize, why: String) {
        if let Some(c) = self.conns[slot].take() {
            if c.phase == Phase::Connecting {
                self.in_flight -= 1;
            }
            let _ = epoll::delete(&self.poll, &c.fd);
        }
        self.failed += 1;
        self.first_error.get_or_insert(why);
    }
}

fn open(a: &Args, id: usize, run: &mut Run) -> Result<(), String> {
    let family = if a.target.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let _ = sockopt::set_tcp_nodelay(&fd, true);
    if !a.sources.is_empty() {
        // Each source has its own ephemeral port range (widen it with
        // net.ipv4.ip_local_port_range for more than ~28,000 per source).
        let src = SocketAddr::new(a.sources[id % a.sources.len()], 0);
        rustix::net::bind(&fd, &src).map_err(|e| format!("bind {src}: {e}"))?;
    }
    match rustix::net::connect(&fd, &a.target) {
        Ok(()) | Err(Errno::INPROGRESS) => {}
        Err(e) => return Err(format!("connect: {e}")),
    }
    epoll::add(
        &run.poll,
        &fd,
        epoll::EventData::new_u64(id as u64),
        epoll::EventFlags::OUT | epoll::EventFlags::IN | epoll::EventFlags::ET,
    )
    .map_err(|e| format!("epoll add: {e}"))?;
    run.conns[id] = Some(Conn {
        fd,
        id,
        phase: Phase::Connecting,
        sent: 0,
        verified: 0,
        echo_from: None,
    });
    run.in_flight += 1;
    Ok(())
}

/// Moves connection `slot` as far as its socket allows.
fn drive(a: &Args, slot: usize, run: &mut Run, buf: &mut [u8]) {
    let Some(c) = run.conns[slot].as_mut() else {
        return;
    };
    if c.phase == Phase::Connecting {
        match sockopt::socket_error(&c.fd) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return run.fail(slot, format!("connect: {e}")),
            Err(e) => return run.fail(slot, format!("SO_ERROR: {e}")),
        }
        if rustix::net::getpeername(&c.fd).is_err() {
            return; // not connected yet
        }
        c.phase = if a.connect_first {
            Phase::Connected
        } else {
            Phase::Echoing
        };
        run.in_flight -= 1;
        run.connected += 1;
    }
    if c.phase != Phase::Echoing {
        return;
    }
    let id = c.id;
    let total = a.bytes * a.rounds;
    c.echo_from.get_or_insert_with(Instant::now);
    // One round in flight: the next starts once this one's echo is back.
    'rounds: loop {
        let round_end = ((c.verified / a.bytes + 1) * a.bytes).min(total);
        while c.sent < round_end {
            let n = (round_end - c.sent).min(buf.len());
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(id, c.sent + i);
            }
            match rustix::io::write(&c.fd, &buf[..n]) {
                Ok(w) => c.sent += w,
                Err(Errno::AGAIN) => break,
                Err(e) => return run.fail(slot, format!("write: {e}")),
            }
        }
        while c.verified < c.sent {
            match rustix::io::read(&c.fd, &mut *buf) {
                Ok(0) => return run.fail(slot, "the server closed before echoing".into()),
                Ok(n) => {
                    for (i, &b) in buf[..n].iter().enumerate() {
                        if b != pattern(id, c.verified + i) {
                            let at = c.verified + i;
                            return run.fail(slot, format!("connection {id}: byte {at} differs"));
                        }
                    }
                    c.verified += n;
                }
                Err(Errno::AGAIN) => break 'rounds,
                Err(e) => return run.fail(slot, format!("read: {e}")),
            }
        }
        // Echoed all that was sent: on to the next round if this one is
        // complete; else the socket was not writable, so wait for it.
        if c.verified < round_end || c.verified >= total {
            break;
        }
    }
    if c.verified >= total {
        c.phase = Phase::Done;
        run.verified += 1;
        if a.per_conn {
            run.echo_secs[id] = c.echo_from.map_or(0.0, |t| t.elapsed().as_secs_f64());
        }
        if !a.hold {
            let _ = epoll::delete(&run.poll, &c.fd);
            run.conns[slot] = None;
        }
    }
}

fn main() {
    let a = args();
    let started = Instant::now();
    let mut run = Run {
        poll: epoll::create(epoll::CreateFlags::CLOEXEC).unwrap_or_else(|e| {
            eprintln!("kernel_conns: epoll_create: {e}");
            std::process::exit(1)
        }),
        conns: (0..a.conns).map(|_| None).collect(),
        waiting: (0..a.conns).collect(),
        in_flight: 0,
        connected: 0,
        verified: 0,
        failed: 0,
        first_error: None,
        opened_at: None,
        echo_secs: if a.per_conn {
            vec![0.0; a.conns]
        } else {
            Vec::new()
        },
    };
    let mut buf = vec![0u8; 16 << 10];
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4096);
    let tick = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while run.verified + run.failed < a.conns {
        while run.in_flight < a.concurrency {
            let Some(id) = run.waiting.pop_front() else {
                break;
            };
            if let Err(e) = open(&a, id, &mut run) {
                run.failed += 1;
                run.first_error.get_or_insert(e);
            }
        }
        if run.opened_at.is_none() && run.connected + run.failed >= a.conns {
            run.opened_at = Some(Instant::now());
            if a.connect_first {
                for slot in 0..a.conns {
                    if let Some(c) = run.conns[slot].as_mut() {
                        c.phase = Phase::Echoing;
                        drive(&a, slot, &mut run, &mut buf);
                    }
                }
            }
        }
        if started.elapsed() > a.timeout {
            let left = a.conns - run.verified - run.failed;
            run.failed += left;
            run.first_error.get_or_insert(format!(
                "{left} connections still busy after {:?}",
                a.timeout
            ));
            break;
        }
        events.clear();
        if let Err(e) = epoll::wait(&run.poll, spare_capacity(&mut events), Some(&tick)) {
            if e != Errno::INTR {
                eprintln!("kernel_conns: epoll_wait: {e}");
                std::process::exit(1);
            }
        }
        let ready: Vec<usize> = events.iter().map(|e| e.data.u64() as usize).collect();
        for slot in ready {
            drive(&a, slot, &mut run, &mut buf);
        }
    }
    let opened = run.opened_at.unwrap_or_else(Instant::now) - started;
    let mut report = serde_json::json!({
        "conns": a.conns,
        "connected": run.connected,
        "verified": run.verified,
        "failed": run.failed,
        "open_secs": opened.as_secs_f64(),
        "total_secs": started.elapsed().as_secs_f64(),
        "first_error": run.first_error,
    });
    if a.per_conn {
        report["echo_secs"] = serde_json::json!(run.echo_secs);
    }
    println!("{report}");
    if a.hold {
        let _ = std::io::stdin().lock().read_line(&mut String::new());
        let closing = Instant::now();
        let open = run.conns.iter().filter(|c| c.is_some()).count();
        // Dropping a connection closes its socket.
        run.conns.clear();
        let report = serde_json::json!({
            "closed": open,
            "close_secs": closing.elapsed().as_secs_f64(),
        });
        println!("{report}");
    }
    std::process::exit(i32::from(run.failed > 0));
}
