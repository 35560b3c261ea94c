//! Unmodified servers: nginx, redis and memcached, the same binary and
//! configuration on both sides, under the LD_PRELOAD library on
//! hoststack's and with nothing preloaded on the kernel's, driven by their
//! usual load generators from the lab's namespace ([`crate::servers`]
//! starts and reads them).

use anyhow::{Context, Result};
use hoststack_lab::Lab;

use super::sides::{self, Mode, Server, Service, Side};
use super::{Outcome, Row, Settings};
use crate::cpu::{self, ServerMeter};
use crate::servers::{self, NGINX_FILE, Program, Wrk};

/// hoststack's daemon sleeps in interrupt mode, as the program itself
/// sleeps in epoll_wait on both sides (a polling worker would share the
/// program's core); the kernel by default and busy-polling.
const SIDES: [Side; 3] = [
    Side::Preload(Mode::Interrupt),
    Side::Kernel,
    Side::KernelBusy,
];

/// The server's processes and all their descendants (nginx's workers):
/// on hoststack's side the daemon too, whose work is part of the price.
fn server_pids(server: &Server) -> Vec<u32> {
    let all = cpu::Process::all();
    let mut pids: Vec<u32> = server
        .pids()
        .into_iter()
        .flat_map(|p| cpu::tree_of(p, &all))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Server CPU (its processes + every CPU's irq and softirq) per request
/// over a load run, µs; and the load's output.
fn metered(
    s: &Settings,
    server: &Server,
    requests: impl FnOnce(&str) -> Result<f64>,
    run: impl FnOnce() -> Result<String>,
) -> Result<(String, f64)> {
    let (_, core) = s.cores();
    let m = ServerMeter::start(&server_pids(server), core)?;
    let out = run()?;
    let c = m.finish()?;
    let n = requests(&out)?;
    Ok((out, c.total_s() / n.max(1.0) * 1e6))
}

/// The window as a load generator's whole seconds (at least 1).
fn whole_seconds(d: std::time::Duration) -> u64 {
    (d.as_secs_f64().ceil() as u64).max(1)
}

/// One nginx run: (keep-alive, Connection: close), each wrk's figures and
/// CPU µs per request.
type NginxRun = [(Wrk, f64); 2];

fn wrk(s: &Settings, lab: &Lab, url: &str, secs: u64, close: bool) -> Result<String> {
    let (load_core, _) = s.cores();
    let d = format!("{secs}s");
    let mut args = vec!["-t1", "-c32", "-d", &d, "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    servers::load(lab, load_core, "wrk", &args)
}

fn nginx_run(s: &Settings, lab: &Lab, server: &Server) -> Result<NginxRun> {
    let (host, _) = super::ip4(lab);
    let url = format!("http://{host}:{}/{NGINX_FILE}", Program::Nginx.port());
    if !s.warmup.is_zero() {
        wrk(s, lab, &url, whole_seconds(s.warmup), false)?;
    }
    let secs = whole_seconds(s.duration);
    let mut out = Vec::new();
    for close in [false, true] {
        s.check()?;
        let (text, cpu_us) = metered(
            s,
            server,
            |o| Ok(servers::parse_wrk(o)?.requests),
            || wrk(s, lab, &url, secs, close),
        )?;
        let w = servers::parse_wrk(&text).with_context(|| text.clone())?;
        out.push((w, cpu_us));
    }
    Ok([out[0], out[1]])
}

pub(super) fn nginx(s: &Settings) -> Result<Outcome> {
    const B: &str = "nginx";
    let results = sides::alternate(
        s,
        B,
        &sides::plain(&SIDES),
        Service::Program(Program::Nginx),
        nginx_run,
        |r| {
            format!(
                "keep-alive {:.0} req/s, p99 {:.0} us, {:.1} us CPU/request; close {:.0} req/s, p99 {:.0} us, {:.1} us CPU/request",
                r[0].0.rate, r[0].0.p99_us, r[0].1, r[1].0.rate, r[1].0.p99_us, r[1].1
            )
        },
    )?;
    let row = |metric: &str, unit: &str, higher: bool, label: &str, f: fn(&NginxRun) -> f64| {
        Row::of(B, metric, unit, higher, &results, sides::all, f).labelled(label)
    };
    Ok(Outcome {
        rows: vec![
            row(
                "HTTP keep-alive, 4 KiB file, 32 connections",
                "req/s",
                true,
                "nginx keep-alive",
                |r| r[0].0.rate,
            ),
            row(
                "HTTP keep-alive latency, p99",
                "us",
                false,
                "nginx keep-alive p99",
                |r| r[0].0.p99_us,
            ),
            row(
                "HTTP with Connection: close (a connection per request), 4 KiB file",
                "req/s",
                true,
                "nginx close",
                |r| r[1].0.rate,
            ),
            row(
                "HTTP Connection: close latency, p99",
                "us",
                false,
                "nginx close p99",
                |r| r[1].0.p99_us,
            ),
            row(
                "server CPU per keep-alive request",
                "us",
                false,
                "nginx CPU/request",
                |r| r[0].1,
            )
            .unchart(),
            row(
                "server CPU per Connection: close request",
                "us",
                false,
                "nginx CPU/close request",
                |r| r[1].1,
            )
            .unchart(),
        ],
        notes: Vec::new(),
    })
}

/// Requests of each of redis-benchmark's two tests: 50,000 per second of
/// the window, at least 10,000.
fn redis_requests(s: &Settings) -> u64 {
    ((s.duration.as_secs_f64() * 50_000.0) as u64).max(10_000)
}

fn redis_benchmark(s: &Settings, lab: &Lab, tests: &str, n: u64) -> Result<String> {
    let (load_core, _) = s.cores();
    let (host, _) = super::ip4(lab);
    let (h, p, n) = (
        host.to_string(),
        Program::Redis.port().to_string(),
        n.to_string(),
    );
    servers::load(
        lab,
        load_core,
        "redis-benchmark",
        &[
            "-h", &h, "-p", &p, "-t", tests, "-n", &n, "-c", "50", "--csv",
        ],
    )
}

/// (SET/s, GET/s, CPU µs per request).
fn redis_run(s: &Settings, lab: &Lab, server: &Server) -> Result<[f64; 3]> {
    if !s.warmup.is_zero() {
        let n = ((s.warmup.as_secs_f64() * 50_000.0) as u64).max(1_000);
        redis_benchmark(s, lab, "set", n)?;
    }
    let n = redis_requests(s);
    let (out, cpu_us) = metered(
        s,
        server,
        |_| Ok(2.0 * n as f64),
        || redis_benchmark(s, lab, "set,get", n),
    )?;
    Ok([
        servers::parse_redis_rate(&out, "SET")?,
        servers::parse_redis_rate(&out, "GET")?,
        cpu_us,
    ])
}

pub(super) fn redis(s: &Settings) -> Result<Outcome> {
    const B: &str = "redis";
    let results = sides::alternate(
        s,
        B,
        &sides::plain(&SIDES),
        Service::Program(Program::Redis),
        redis_run,
        |r| {
            format!(
                "SET {:.0}/s, GET {:.0}/s, {:.1} us CPU/request",
                r[0], r[1], r[2]
            )
        },
    )?;
    let row = |metric: &str, unit: &str, higher: bool, label: &str, i: usize| {
        Row::of(B, metric, unit, higher, &results, sides::all, move |r| r[i]).labelled(label)
    };
    Ok(Outcome {
        rows: vec![
            row("SET, 50 clients", "req/s", true, "redis SET", 0),
            row("GET, 50 clients", "req/s", true, "redis GET", 1),
            row(
                "server CPU per request",
                "us",
                false,
                "redis CPU/request",
                2,
            )
            .unchart(),
        ],
        notes: vec![format!(
            "redis: {} SET then {} GET requests per run",
            redis_requests(s),
            redis_requests(s)
        )],
    })
}

fn memcaslap(s: &Settings, lab: &Lab, secs: u64) -> Result<String> {
    let (load_core, _) = s.cores();
    let (host, _) = super::ip4(lab);
    let (target, t) = (
        format!("{host}:{}", Program::Memcached.port()),
        format!("{secs}s"),
    );
    servers::load(
        lab,
        load_core,
        "memcaslap",
        &["-s", &target, "-t", &t, "-T", "1", "-c", "16"],
    )
}

/// (ops/s, CPU µs per op).
fn memcached_run(s: &Settings, lab: &Lab, server: &Server) -> Result<[f64; 2]> {
    if !s.warmup.is_zero() {
        memcaslap(s, lab, whole_seconds(s.warmup))?;
    }
    let (out, cpu_us) = metered(
        s,
        server,
        |o| Ok(servers::parse_memcaslap(o)?.1),
        || memcaslap(s, lab, whole_seconds(s.duration)),
    )?;
    Ok([servers::parse_memcaslap(&out)?.0, cpu_us])
}

pub(super) fn memcached(s: &Settings) -> Result<Outcome> {
    const B: &str = "memcached";
    let results = sides::alternate(
        s,
        B,
        &sides::plain(&SIDES),
        Service::Program(Program::Memcached),
        memcached_run,
        |r| format!("{:.0} ops/s, {:.1} us CPU/op", r[0], r[1]),
    )?;
    Ok(Outcome {
        rows: vec![
            Row::of(
                B,
                "memcaslap get/set 9:1, 16 connections",
                "ops/s",
                true,
                &results,
                sides::all,
                |r| r[0],
            )
            .labelled("memcached ops/s"),
            Row::of(
                B,
                "server CPU per op",
                "us",
                false,
                &results,
                sides::all,
                |r| r[1],
            )
            .labelled("memcached CPU/op")
            .unchart(),
        ],
        notes: Vec::new(),
    })
}
