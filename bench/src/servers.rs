//! Unmodified server programs (nginx, redis, memcached) for the benchmark
//! rows that compare them: one configuration and command line for every
//! side, the hoststack daemon the LD_PRELOAD library attaches to, the
//! load generators run from the lab's namespace and their output parsed.
//!
//! On hoststack's side the program runs under `libhoststack_preload.so`
//! (found beside the `hoststack` binary) on `hoststack run`, the daemon,
//! with 256 KiB fifos; on the kernel's it is the same binary with nothing
//! preloaded. Which side runs what, and the rows, are in
//! [`crate::suite`]; this module only starts and reads programs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hoststack_lab::Lab;

use crate::env::{self, Managed};

/// An unmodified server program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Debian's nginx: 1 worker process, epoll, sendfile on, a 4 KiB file.
    Nginx,
    /// `redis-server`, persistence off.
    Redis,
    /// `memcached -t 1`, TCP only.
    Memcached,
}

/// The file nginx serves, and its size.
pub const NGINX_FILE: &str = "4k.bin";
const NGINX_FILE_SIZE: usize = 4096;

impl Program {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Program::Nginx => "nginx",
            Program::Redis => "redis-server",
            Program::Memcached => "memcached",
        }
    }

    /// The TCP port it listens on (every address).
    pub fn port(self) -> u16 {
        match self {
            Program::Nginx => 8080,
            Program::Redis => 6379,
            Program::Memcached => 11211,
        }
    }

    /// Writes what it needs into `dir` (configuration, content) and
    /// returns its arguments.
    fn prepare(self, dir: &Path) -> Result<Vec<String>> {
        let d = dir.display();
        let port = self.port();
        Ok(match self {
            Program::Nginx => {
                std::fs::write(dir.join(NGINX_FILE), vec![b'x'; NGINX_FILE_SIZE])?;
                let conf = dir.join("nginx.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
events {{ use epoll; worker_connections 4096; }}\n\
http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 10000000;\n\
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
  server {{ listen {port}; root {d}; }}\n}}\n"
                    ),
                )?;
                vec!["-c".into(), conf.display().to_string()]
            }
            Program::Redis => [
                "--port",
                &port.to_string(),
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &d.to_string(),
            ]
            .map(String::from)
            .to_vec(),
            Program::Memcached => [
                "-u",
                "root",
                "-t",
                "1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-l",
                "0.0.0.0",
            ]
            .map(String::from)
            .to_vec(),
        })
    }

    /// Whether it answers on `host` yet: a request from the namespace.
    fn answers(self, lab: &Lab, host: IpAddr) -> bool {
        let port = self.port();
        match self {
            Program::Nginx => load(
                lab,
                None,
                "curl",
                &[
                    "-s",
                    "-f",
                    "-m",
                    "1",
                    "-o",
                    "/dev/null",
                    &format!("http://{host}:{port}/{NGINX_FILE}"),
                ],
            )
            .is_ok(),
            Program::Redis => load(
                lab,
                None,
                "redis-cli",
                &["-h", &host.to_string(), "-p", &port.to_string(), "ping"],
            )
            .is_ok_and(|o| o.contains("PONG")),
            Program::Memcached => load(
                lab,
                None,
                "memcstat",
                &[&format!("--servers={host}:{port}")],
            )
            .is_ok(),
        }
    }
}

/// A directory for one run's files, removed when dropped.
#[derive(Debug)]
pub struct Workdir(PathBuf);

impl Workdir {
    /// A fresh, empty `hs-bench-<tag>` directory under the temp dir.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("hs-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The preload library beside the `hoststack` binary, checked.
pub fn preload_library(hoststack: &Path) -> Result<PathBuf> {
    let lib = hoststack.with_file_name("libhoststack_preload.so");
    if !lib.is_file() {
        bail!(
            "{} is missing: cargo build --release -p hoststack-preload",
            lib.display()
        );
    }
    Ok(lib)
}

/// How the hoststack daemon runs for a preloaded program.
#[derive(Debug, Clone)]
pub struct Daemon<'a> {
    /// The `hoststack` binary.
    pub hoststack: &'a Path,
    /// Its worker mode (`poll`, `interrupt`, `adaptive`).
    pub mode: &'a str,
    /// The core of its one worker.
    pub core: Option<usize>,
    /// Its TCP engine (None: its default).
    pub tcp_engine: Option<&'a str>,
}

impl Daemon<'_> {
    /// Starts `hoststack run` on the lab's host end with its runtime
    /// directory (and app socket, `app.sock`) in `dir`: `ready` once up.
    pub fn start(&self, lab: &Lab, dir: &Path) -> Result<Managed> {
        let addresses: Vec<String> = lab
            .host_addresses()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let mut config = format!(
            "[daemon]\nruntime_dir = \"{}\"\n\n[[interface]]\nname = \"{}\"\naddresses = [{}]\n",
            dir.display(),
            lab.host_if,
            addresses.join(", "),
        );
        // Cores are listed per queue, so the queues are named with them:
        // the lab's veth has one.
        if let Some(c) = self.core {
            config.push_str(&format!("queues = 1\n\n[workers]\ncores = [{c}]\n\n"));
        } else {
            config.push('\n');
        }
        config.push_str(&format!(
            "[session]\nworker_mode = \"{}\"\nrx_fifo_size = \"256K\"\ntx_fifo_size = \"256K\"\n",
            self.mode
        ));
        if let Some(e) = self.tcp_engine {
            config.push_str(&format!("\n[tcp]\nengine = \"{e}\"\n"));
        }
        let path = dir.join("hoststack.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let mut cmd = Command::new(self.hoststack);
        cmd.arg("run").arg("--config").arg(&path);
        Managed::start(cmd, "hoststack run", "ready")
    }
}

/// The app socket of a daemon started in `dir`.
pub fn app_socket(dir: &Path) -> PathBuf {
    dir.join("app.sock")
}

/// Starts `program` pinned to `core` with its files in `dir`, under the
/// preload library `preload` = (library, app socket) when given, and
/// waits until it answers on `host` from the lab's namespace.
pub fn start(
    program: Program,
    lab: &Lab,
    host: IpAddr,
    dir: &Path,
    core: Option<usize>,
    preload: Option<(&Path, &Path)>,
) -> Result<Managed> {
    let args = program.prepare(dir)?;
    let mut cmd = match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), program.name()]);
            cmd
        }
        None => Command::new(program.name()),
    };
    cmd.args(&args).current_dir(dir);
    if let Some((lib, socket)) = preload {
        cmd.env("LD_PRELOAD", lib)
            .env("HOSTSTACK_APP_SOCKET", socket);
    }
    let mut server = Managed::start(cmd, program.name(), "")?;
    for _ in 0..100 {
        if program.answers(lab, host) {
            return Ok(server);
        }
        if let Some(status) = server.exited() {
            bail!("{} exited with {status} before it answered", program.name());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = server.said();
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    bail!(
        "{} never answered on {host}:{}: {said} {log}",
        program.name(),
        program.port()
    )
}

/// Runs a load generator in the lab's namespace, pinned to `core`, and
/// returns its stdout (failing with its stderr).
pub fn load(lab: &Lab, core: Option<usize>, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string()]);
            cmd
        }
        None => Command::new("env"),
    };
    cmd.args(["ip", "netns", "exec", &lab.netns, program])
        .args(args)
        .env_remove("LD_PRELOAD");
    env::run(&mut cmd).with_context(|| format!("{program} {args:?}"))
}

/// What `wrk --latency` reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wrk {
    /// Requests/s.
    pub rate: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Requests completed.
    pub requests: f64,
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Result<Wrk> {
    let (mut rate, mut p99, mut n) = (None, None, None);
    for l in out.lines().map(str::trim) {
        if let Some(r) = l.strip_prefix("Requests/sec:") {
            rate = r.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = duration_us(v.trim());
        } else if l.contains("requests in") {
            n = l.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    Ok(Wrk {
        rate: rate.context("no Requests/sec")?,
        p99_us: p99.context("no 99% latency")?,
        requests: n.context("no request count")?,
    })
}

/// "1.23ms" and friends in µs.
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

/// The requests/s of test `name` ("SET", "GET") in `redis-benchmark
/// --csv` output.
pub fn parse_redis_rate(out: &str, name: &str) -> Result<f64> {
    out.lines()
        .find(|l| l.starts_with(&format!("\"{name}\"")))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .with_context(|| format!("no {name} rate in:\n{out}"))
}

/// (ops/s, ops) of memcaslap's summary line.
pub fn parse_memcaslap(out: &str) -> Result<(f64, f64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("Run time:"))
        .with_context(|| format!("no memcaslap summary:\n{out}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let field = |k: &str| -> Option<f64> {
        w.iter()
            .position(|x| *x == k)
            .and_then(|i| w.get(i + 1)?.parse().ok())
    };
    Ok((
        field("TPS:").context("no TPS in memcaslap's summary")?,
        field("Ops:").context("no Ops in memcaslap's summary")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let out = "Running 1s test @ http://10.77.177.1:8080/4k.bin\n  1 threads and 32 connections\n  Latency Distribution\n     50%  310.00us\n     75%  400.00us\n     90%  600.00us\n     99%    1.25ms\n  12345 requests in 1.00s, 50.00MB read\nRequests/sec:  12300.50\nTransfer/sec:     49.90MB\n";
        let w = parse_wrk(out).expect("parses");
        assert_eq!(w.rate, 12300.5);
        assert_eq!(w.p99_us, 1250.0);
        assert_eq!(w.requests, 12345.0);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn parses_redis_benchmark_csv_and_memcaslap_summary() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"81234.50\",\"0.3\"\n\"GET\",\"90000.00\",\"0.2\"\n";
        assert_eq!(parse_redis_rate(csv, "SET").ok(), Some(81234.5));
        assert_eq!(parse_redis_rate(csv, "GET").ok(), Some(90000.0));
        assert!(parse_redis_rate(csv, "INCR").is_err());
        let mc =
            "servers : 10.77.177.1:11211\nRun time: 1.0s Ops: 45678 TPS: 45600 Net_rate: 5.1M/s\n";
        assert_eq!(parse_memcaslap(mc).ok(), Some((45600.0, 45678.0)));
    }
}
