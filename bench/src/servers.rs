//! Unmodified servers (nginx, redis, memcached) on hoststack through the
//! LD_PRELOAD library, beside the same server binary on the kernel: the
//! same configuration, the same load generator from the lab's namespace,
//! one fresh lab per side and run.
//!
//! Placement: the load (wrk, redis-benchmark, memcaslap) on core 0; the
//! server on core 1, and on the hoststack side the daemon's stack worker
//! there too, in interrupt mode (the server process sleeps on its
//! eventfd as it sleeps in epoll on the kernel). CPU per request is the
//! user + system time of the server's processes (and, on the hoststack
//! side, of the daemon: the stack's work is part of the price) over the
//! measured window, divided by the requests served in it.
//!
//! Rows (each hoststack beside the kernel, as a ratio):
//! - `nginx`: requests/s with keep-alive (4 KiB file), p99; connections/s
//!   with `Connection: close`, p99; CPU µs per request for both.
//! - `redis`: SET and GET ops/s (redis-benchmark, 50 clients); CPU per op.
//! - `memcached`: ops/s of memcaslap's get/set mix (16 connections); CPU
//!   per op.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hoststack_lab::Lab;

use crate::env::{self, Managed};
use crate::suite::{Outcome, Row, Settings};

/// Runs server benchmark `name` (listed in `suite::BENCHMARKS`); `None`
/// when `name` is not one of them.
pub fn run(name: &str, s: &Settings) -> Option<Result<Outcome>> {
    let r = match name {
        "nginx" => nginx(s),
        "redis" => redis(s),
        "memcached" => memcached(s),
        _ => return None,
    };
    Some(r.with_context(|| format!("benchmark {name}")))
}

/// Which side serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Hoststack,
    Kernel,
}

impl Side {
    const BOTH: [Side; 2] = [Side::Hoststack, Side::Kernel];
    fn name(self) -> &'static str {
        match self {
            Side::Hoststack => "hoststack",
            Side::Kernel => "kernel",
        }
    }
}

const SERVER_CORE: &str = "1";
const LOAD_CORE: &str = "0";

/// A lab with one side ready to serve: for hoststack, a daemon with an
/// app socket; for the kernel, the host end's address in the kernel.
struct Stage {
    lab: Lab,
    dir: PathBuf,
    daemon: Option<Managed>,
    side: Side,
    preload: PathBuf,
}

impl Stage {
    fn new(s: &Settings, side: Side, tag: &str) -> Result<Self> {
        let lab = env::fresh_lab(&s.lab, s.subnet, s.mtu)?;
        let dir = std::env::temp_dir().join(format!("hs-bench-{tag}-{}", lab.cfg.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let preload = s.hoststack.with_file_name("libhoststack_preload.so");
        let mut daemon = None;
        match side {
            Side::Kernel => env::kernel_owns_host_end(&lab)?,
            Side::Hoststack => {
                if !preload.exists() {
                    bail!(
                        "{} is missing: cargo build --release -p hoststack-preload",
                        preload.display()
                    );
                }
                let config = dir.join("hoststack.toml");
                std::fs::write(
                    &config,
                    format!(
                        "[daemon]\nruntime_dir = \"{}\"\n\n[[interface]]\nname = \"{}\"\naddresses = [\"{}\"]\n\n[workers]\ncores = [{SERVER_CORE}]\n\n[session]\nworker_mode = \"interrupt\"\nrx_fifo_size = \"256K\"\ntx_fifo_size = \"256K\"\n",
                        dir.display(),
                        lab.host_if,
                        lab.cfg.host4,
                    ),
                )?;
                let mut cmd = Command::new(&s.hoststack);
                cmd.arg("run").arg("--config").arg(&config);
                daemon = Some(Managed::start(cmd, "hoststack run", "ready")?);
            }
        }
        Ok(Self {
            lab,
            dir,
            daemon,
            side,
            preload,
        })
    }

    fn host(&self) -> String {
        self.lab.cfg.host4.addr.to_string()
    }

    /// `program args` pinned to the server core, on this side.
    fn server(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", SERVER_CORE, program]).args(args);
        cmd.current_dir(&self.dir);
        if self.side == Side::Hoststack {
            cmd.env("LD_PRELOAD", &self.preload)
                .env("HOSTSTACK_APP_SOCKET", self.dir.join("app.sock"));
        }
        cmd
    }

    /// A load generator in the namespace, pinned to the load core.
    fn load(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c",
            LOAD_CORE,
            "ip",
            "netns",
            "exec",
            &self.lab.netns,
            program,
        ])
        .args(args)
        .env_remove("LD_PRELOAD");
        env::run(&mut cmd).with_context(|| format!("{program} {args:?}"))
    }

    /// CPU seconds of the daemon (hoststack side) so far.
    fn daemon_cpu(&self) -> f64 {
        self.daemon
            .as_ref()
            .and_then(|d| env::cpu_seconds(d.pid()).ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU seconds of process `root` and all its descendants.
fn tree_cpu(root: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let procs: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(procs.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.iter().filter_map(|p| env::cpu_seconds(*p).ok()).sum()
}

/// Waits until `probe` succeeds (the server answers).
fn wait_ready(mut probe: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..100 {
        if probe() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the server never answered")
}

/// (requests/s, p99 µs, requests) from wrk --latency output.
fn parse_wrk(out: &str) -> Result<(f64, f64, f64)> {
    let mut rate = None;
    let mut p99 = None;
    let mut n = None;
    for l in out.lines().map(str::trim) {
        if let Some(r) = l.strip_prefix("Requests/sec:") {
            rate = r.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = duration_us(v.trim());
        } else if l.contains("requests in") {
            n = l.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    Ok((
        rate.context("no Requests/sec")?,
        p99.context("no 99% latency")?,
        n.context("no request count")?,
    ))
}

fn duration_us(v: &str) -> Option<f64> {
    let (num, mul) = if let Some(x) = v.strip_suffix("us") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1e3)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1e6)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * mul)
}

fn nginx_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
events {{ use epoll; worker_connections 4096; }}\n\
http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 10000000;\n\
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
  server {{ listen {port}; root {d}; }}\n}}\n"
    )
}

/// The nginx rows.
pub fn nginx(s: &Settings) -> Result<Outcome> {
    const B: &str = "nginx";
    let secs = format!("{}s", s.duration.as_secs().max(1));
    // [keep-alive rate, keep-alive p99, close rate, close p99, cpu ka, cpu close] per side
    let mut fig: [[Vec<f64>; 6]; 2] = Default::default();
    for run in 1..=s.runs {
        for (si, side) in Side::BOTH.into_iter().enumerate() {
            let st = Stage::new(s, side, "ngx")?;
            std::fs::write(st.dir.join("4k.bin"), vec![b'x'; 4096])?;
            let conf = st.dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&st.dir, 8080))?;
            let cmd = st.server("nginx", &["-c", conf.to_str().unwrap_or_default()]);
            let server = Managed::start(cmd, "nginx", "")?;
            let url = format!("http://{}:8080/4k.bin", st.host());
            wait_ready(|| {
                st.load("curl", &["-s", "-f", "-o", "/dev/null", &url])
                    .is_ok()
            })?;
            for (i, close) in [false, true].into_iter().enumerate() {
                let mut args = vec!["-t1", "-c32", "-d", &secs, "--latency"];
                if close {
                    args.extend(["-H", "Connection: close"]);
                }
                args.push(&url);
                let cpu0 = tree_cpu(server.pid()) + st.daemon_cpu();
                let out = st.load("wrk", &args)?;
                let cpu = tree_cpu(server.pid()) + st.daemon_cpu() - cpu0;
                let (rate, p99, n) = parse_wrk(&out).with_context(|| out.clone())?;
                let per_req = cpu / n.max(1.0) * 1e6;
                crate::suite::progress(
                    B,
                    run,
                    s.runs,
                    side.name(),
                    format!(
                        "{} {rate:.0} req/s, p99 {p99:.0} us, {per_req:.1} us CPU/request",
                        if close { "close" } else { "keep-alive" }
                    ),
                );
                fig[si][i * 2].push(rate);
                fig[si][i * 2 + 1].push(p99);
                fig[si][4 + i].push(per_req);
            }
            server.terminate()?;
        }
    }
    let k = "same nginx on the kernel";
    let [h, kf] = &fig;
    Ok(Outcome {
        rows: vec![
            Row::new(B, "keep-alive requests/s, 4 KiB, 32 connections", "req/s", true, &h[0], k, &kf[0]),
            Row::new(B, "keep-alive latency p99", "us", false, &h[1], k, &kf[1]),
            Row::new(B, "Connection: close, connections/s, 4 KiB", "conn/s", true, &h[2], k, &kf[2]),
            Row::new(B, "Connection: close latency p99", "us", false, &h[3], k, &kf[3]),
            Row::new(B, "CPU per keep-alive request (server + stack)", "us", false, &h[4], k, &kf[4]),
            Row::new(B, "CPU per close request (server + stack)", "us", false, &h[5], k, &kf[5]),
        ],
        notes: vec!["nginx: 1 worker process pinned to core 1, sendfile on, wrk -t1 -c32 on core 0; hoststack side through libhoststack_preload.so".into()],
    })
}

/// The redis rows.
pub fn redis(s: &Settings) -> Result<Outcome> {
    const B: &str = "redis";
    let n = (s.duration.as_secs().max(1) * 50_000).to_string();
    let mut fig: [[Vec<f64>; 3]; 2] = Default::default();
    for run in 1..=s.runs {
        for (si, side) in Side::BOTH.into_iter().enumerate() {
            let st = Stage::new(s, side, "redis")?;
            let dir = st.dir.to_string_lossy().into_owned();
            let cmd = st.server(
                "redis-server",
                &[
                    "--port",
                    "6379",
                    "--bind",
                    "0.0.0.0",
                    "--protected-mode",
                    "no",
                    "--save",
                    "",
                    "--dir",
                    &dir,
                ],
            );
            let server = Managed::start(cmd, "redis-server", "")?;
            let h = st.host();
            wait_ready(|| {
                st.load("redis-cli", &["-h", &h, "ping"])
                    .is_ok_and(|o| o.contains("PONG"))
            })?;
            let cpu0 = tree_cpu(server.pid()) + st.daemon_cpu();
            let out = st.load(
                "redis-benchmark",
                &["-h", &h, "-t", "set,get", "-n", &n, "-c", "50", "--csv"],
            )?;
            let cpu = tree_cpu(server.pid()) + st.daemon_cpu() - cpu0;
            let rate = |name: &str| -> Result<f64> {
                out.lines()
                    .find(|l| l.starts_with(&format!("\"{name}\"")))
                    .and_then(|l| l.split(',').nth(1))
                    .and_then(|v| v.trim_matches('"').parse().ok())
                    .with_context(|| format!("no {name} rate in:\n{out}"))
            };
            let (set, get) = (rate("SET")?, rate("GET")?);
            let total: f64 = 2.0 * n.parse::<f64>().unwrap_or(1.0);
            let per_op = cpu / total * 1e6;
            crate::suite::progress(
                B,
                run,
                s.runs,
                side.name(),
                format!("SET {set:.0}/s GET {get:.0}/s, {per_op:.1} us CPU/op"),
            );
            fig[si][0].push(set);
            fig[si][1].push(get);
            fig[si][2].push(per_op);
            server.terminate()?;
        }
    }
    let k = "same redis-server on the kernel";
    let [h, kf] = &fig;
    Ok(Outcome {
        rows: vec![
            Row::new(B, "SET ops/s, 50 clients", "ops/s", true, &h[0], k, &kf[0]),
            Row::new(B, "GET ops/s, 50 clients", "ops/s", true, &h[1], k, &kf[1]),
            Row::new(B, "CPU per op (server + stack)", "us", false, &h[2], k, &kf[2]),
        ],
        notes: vec!["redis: redis-server pinned to core 1, persistence off for the figures, redis-benchmark -c 50 on core 0".into()],
    })
}

/// The memcached rows.
pub fn memcached(s: &Settings) -> Result<Outcome> {
    const B: &str = "memcached";
    let t = format!("{}s", s.duration.as_secs().max(1));
    let mut fig: [[Vec<f64>; 2]; 2] = Default::default();
    for run in 1..=s.runs {
        for (si, side) in Side::BOTH.into_iter().enumerate() {
            let st = Stage::new(s, side, "mc")?;
            let cmd = st.server(
                "memcached",
                &[
                    "-u", "root", "-t", "1", "-p", "11211", "-U", "0", "-l", "0.0.0.0",
                ],
            );
            let server = Managed::start(cmd, "memcached", "")?;
            let target = format!("{}:11211", st.host());
            wait_ready(|| {
                st.load("memcstat", &[&format!("--servers={target}")])
                    .is_ok()
            })?;
            let cpu0 = tree_cpu(server.pid()) + st.daemon_cpu();
            let out = st.load(
                "memcaslap",
                &["-s", &target, "-t", &t, "-T", "1", "-c", "16"],
            )?;
            let cpu = tree_cpu(server.pid()) + st.daemon_cpu() - cpu0;
            let line = out
                .lines()
                .find(|l| l.starts_with("Run time:"))
                .with_context(|| format!("no memcaslap summary:\n{out}"))?;
            let field = |k: &str| -> Option<f64> {
                let w: Vec<&str> = line.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == k)
                    .and_then(|i| w.get(i + 1)?.parse().ok())
            };
            let (tps, ops) = (field("TPS:").context("TPS")?, field("Ops:").context("Ops")?);
            let per_op = cpu / ops.max(1.0) * 1e6;
            crate::suite::progress(
                B,
                run,
                s.runs,
                side.name(),
                format!("{tps:.0} ops/s, {per_op:.1} us CPU/op"),
            );
            fig[si][0].push(tps);
            fig[si][1].push(per_op);
            server.terminate()?;
        }
    }
    let k = "same memcached on the kernel";
    let [h, kf] = &fig;
    Ok(Outcome {
        rows: vec![
            Row::new(
                B,
                "ops/s, memcaslap get/set 9:1, 16 connections",
                "ops/s",
                true,
                &h[0],
                k,
                &kf[0],
            ),
            Row::new(
                B,
                "CPU per op (server + stack)",
                "us",
                false,
                &h[1],
                k,
                &kf[1],
            ),
        ],
        notes: vec!["memcached: 1 thread pinned to core 1, memcaslap -T 1 -c 16 on core 0".into()],
    })
}
