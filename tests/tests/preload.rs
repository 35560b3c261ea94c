//! Unmodified servers on hoststack through `libhoststack_preload.so`:
//! socket semantics (errno values, exact epoll readiness, dup, fork,
//! SIGPIPE) from a python script, a threaded python echo server, a plain
//! tokio echo server, nginx (two workers, sendfile on and off, curl and
//! wrk, a reload under load), redis (redis-benchmark with BGSAVE forks)
//! and memcached (four threads, memccapable as on the kernel, memcslap).
//! Each test builds its own lab and daemon; the servers are Debian's
//! packages (`ci/setup` installs them). Needs root.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hoststack_lab::enter_netns;

use hoststack_tests::{Daemon, Lab, Proc, hoststack_bin};

/// A lab and an interrupt-mode hoststack daemon on it, stopped and removed
/// when dropped.
struct Stack {
    daemon: Daemon,
    /// The daemon's runtime directory (its app socket, the servers' files).
    dir: PathBuf,
}

impl Stack {
    fn start(tag: &str) -> Result<Self> {
        let daemon = Daemon::start(tag, |_| "[session]\nworker_mode = \"interrupt\"\n".into())?;
        Ok(Self {
            dir: daemon.path(""),
            daemon,
        })
    }

    fn host(&self) -> String {
        self.daemon.lab.cfg.host4.addr.to_string()
    }

    /// `program` with the preload library and this daemon's app socket.
    fn preloaded(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("LD_PRELOAD", preload_lib())
            .env("HOSTSTACK_APP_SOCKET", self.dir.join("app.sock"))
            .current_dir(&self.dir);
        c
    }

    /// `program` run by the kernel in the lab's namespace.
    fn peer(&self, program: &str) -> Command {
        let mut c = self.daemon.lab.command(program);
        c.env_remove("LD_PRELOAD");
        c
    }

    /// Runs a command in the namespace; its stdout, failing on a non-zero exit.
    fn peer_output(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .peer(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in the lab"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "{program} {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }
}

/// Kills a process group (a server and the children it forked) when
/// dropped.
struct GroupKill(u32);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

fn preload_lib() -> PathBuf {
    let lib = hoststack_bin().with_file_name("libhoststack_preload.so");
    assert!(
        lib.exists(),
        "{} is missing: build it first (cargo build --release -p hoststack-preload)",
        lib.display()
    );
    lib
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
        || Path::new(program).exists();
    assert!(found, "{program} is missing: ci/setup installs it");
}

/// Several concurrent echo clients, each with its own random data.
fn echo_clients(lab: &Lab, to: SocketAddr, clients: usize, bytes: usize) -> Result<()> {
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
            let ns = lab.netns.clone();
            std::thread::spawn(move || -> Result<()> {
                let back = echo_from_ns(&ns, to, data.clone())?;
                ensure!(back == data, "echoed bytes differ");
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(())
}

/// A kernel TCP client in namespace `ns` (this thread enters it):
/// connects to `to`, sends `data`, reads back as many bytes.
fn echo_from_ns(ns: &str, to: SocketAddr, data: Vec<u8>) -> Result<Vec<u8>> {
    enter_netns(ns)?;
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let len = data.len();
    let writer = std::thread::spawn(move || w.write_all(&data));
    let mut back = vec![0u8; len];
    s.read_exact(&mut back)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(back)
}

#[test]
fn preload_socket_semantics() -> Result<()> {
    let st = Stack::start("ps")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/preload_semantics.py");
    let mut cmd = st.preloaded("python3");
    cmd.arg(&script)
        .arg(st.host())
        .arg(st.daemon.lab.cfg.peer4.addr.to_string())
        .arg(&st.daemon.lab.netns)
        .arg(st.daemon.lab.cfg.host6.addr.to_string());
    let p = Proc::spawn("preload_semantics.py", cmd)?;
    let (ok, out) = p.wait(Duration::from_secs(60))?;
    print!("{out}");
    ensure!(
        ok && out.contains("all ok"),
        "semantics script failed:\n{out}"
    );
    Ok(())
}

const PY_ECHO: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn preload_threaded_python_echo() -> Result<()> {
    let st = Stack::start("py")?;
    let mut cmd = st.preloaded("python3");
    cmd.args(["-c", PY_ECHO, "7100"]);
    let mut p = Proc::spawn("python echo", cmd)?;
    p.wait_for_line("ready", Duration::from_secs(20))?;
    let to: SocketAddr = format!("{}:7100", st.host()).parse()?;
    echo_clients(&st.daemon.lab, to, 8, 1 << 20)?;
    let ns = st.daemon.lab.netns.clone();
    let back = std::thread::spawn(move || echo_from_ns(&ns, to, b"one more".to_vec()))
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    ensure!(back == b"one more");
    Ok(())
}

#[test]
fn preload_tokio_echo() -> Result<()> {
    let st = Stack::start("tk")?;
    let mut cmd = st.preloaded(env!("CARGO_BIN_EXE_tokio_echo"));
    cmd.arg("0.0.0.0:7200");
    let mut p = Proc::spawn("tokio echo", cmd)?;
    p.wait_for_line("ready", Duration::from_secs(20))?;
    let to: SocketAddr = format!("{}:7200", st.host()).parse()?;
    echo_clients(&st.daemon.lab, to, 16, 256 << 10)?;
    Ok(())
}

fn nginx_conf(dir: &Path, sendfile: bool, port: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes 2;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
events {{ use epoll; worker_connections 1024; }}\n\
http {{\n  access_log off;\n  sendfile {};\n  keepalive_requests 1000000;\n\
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
  server {{ listen {port}; root {d}/www; }}\n}}\n",
        if sendfile { "on" } else { "off" }
    )
}

/// wrk from the lab: (requests, socket errors + non-2xx, requests/s).
fn wrk(st: &Stack, url: &str, conns: u32, secs: u32, close: bool) -> Result<(u64, u64, f64)> {
    let (c, d) = (format!("-c{conns}"), format!("-d{secs}s"));
    let mut args = vec!["-t2", c.as_str(), d.as_str(), "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = st.peer_output("wrk", &args)?;
    parse_wrk(&out).with_context(|| format!("wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<(u64, u64, f64)> {
    let mut requests = None;
    let mut errors = 0u64;
    let mut rate = 0.0;
    for l in out.lines() {
        let l = l.trim();
        if l.contains("requests in") {
            requests = l.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|f| f.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(r) = l.strip_prefix("Requests/sec:") {
            rate = r.trim().parse().unwrap_or(0.0);
        }
    }
    Ok((requests.context("no request count")?, errors, rate))
}

fn curl_body(st: &Stack, url: &str) -> Result<Vec<u8>> {
    curl_within(st, url, 10)
}

/// curl with a time limit of `secs` seconds.
fn curl_within(st: &Stack, url: &str, secs: u32) -> Result<Vec<u8>> {
    let m = secs.to_string();
    let out = st
        .peer("curl")
        .args(["-s", "-f", "-m", &m, url])
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn random_file(path: &Path, len: usize) -> Result<Vec<u8>> {
    let data: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    std::fs::write(path, &data)?;
    Ok(data)
}

#[test]
fn preload_nginx() -> Result<()> {
    require("nginx");
    require("wrk");
    let st = Stack::start("ng")?;
    let www = st.dir.join("www");
    std::fs::create_dir_all(&www)?;
    let small = random_file(&www.join("4k.bin"), 4096)?;
    let big = random_file(&www.join("1m.bin"), 1 << 20)?;
    for (i, sendfile) in [true, false].into_iter().enumerate() {
        let port = 8080 + i as u16;
        let conf = st.dir.join(format!("nginx-{port}.conf"));
        std::fs::write(&conf, nginx_conf(&st.dir, sendfile, port))?;
        let mut cmd = st.preloaded("nginx");
        // The library's lines (attach, join, listener take-over) go to
        // nginx's error log, shown if nginx fails to answer.
        cmd.env("HOSTSTACK_DEBUG", "1");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(st.dir.join("nginx-error.log"));
        // Its own process group, so that its workers go with it whatever
        // happens to the test.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let nginx = Proc::spawn("nginx", cmd)?;
        let _group = nginx.pid().map(GroupKill);
        let base = format!("http://{}:{port}", st.host());
        // Short tries: a connection that comes before the workers took
        // the listener over waits in the master's queue (see the README).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match curl_within(&st, &format!("{base}/4k.bin"), 1) {
                Ok(b) => {
                    ensure!(b == small, "4 KiB body differs (sendfile {sendfile})");
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    let log =
                        std::fs::read_to_string(st.dir.join("nginx-error.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    return Err(e.context(format!(
                        "nginx never answered; its error log ends:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        ensure!(
            curl_body(&st, &format!("{base}/1m.bin"))? == big,
            "1 MiB body differs (sendfile {sendfile})"
        );
        for (file, conns) in [("4k.bin", 20), ("1m.bin", 8)] {
            let (n, errors, rate) = wrk(&st, &format!("{base}/{file}"), conns, 2, false)?;
            println!(
                "nginx sendfile {sendfile} {file} keep-alive: {n} requests, {rate:.0}/s, {errors} errors"
            );
            ensure!(
                n > 100 && errors == 0,
                "wrk {file}: {n} requests, {errors} errors"
            );
        }
        let (n, errors, rate) = wrk(&st, &format!("{base}/4k.bin"), 8, 2, true)?;
        println!(
            "nginx sendfile {sendfile} 4k.bin Connection: close: {n} requests, {rate:.0}/s, {errors} errors"
        );
        ensure!(
            n > 100 && errors == 0,
            "wrk close: {n} requests, {errors} errors"
        );
        if sendfile {
            // A reload under load: new workers start and take the
            // listener, old ones finish and close theirs.
            let load = {
                let url = format!("{base}/4k.bin");
                let cmd_ns = st.daemon.lab.netns.clone();
                std::thread::spawn(move || -> Result<String> {
                    let out = Command::new("ip")
                        .args(["netns", "exec", &cmd_ns, "wrk", "-t2", "-c8", "-d4s", &url])
                        .env_remove("LD_PRELOAD")
                        .output()?;
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                })
            };
            std::thread::sleep(Duration::from_secs(1));
            let pid = std::fs::read_to_string(st.dir.join("nginx.pid"))?;
            let status = Command::new("kill").args(["-HUP", pid.trim()]).status()?;
            ensure!(status.success(), "kill -HUP nginx");
            let out = load
                .join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
            let (n, errors, _) = parse_wrk(&out)?;
            // Old workers close their idle keep-alive connections as they
            // quit, so wrk counts a few read errors here on the kernel too.
            println!("nginx reload under load: {n} requests, {errors} errors");
            ensure!(n > 100, "load during the reload stalled: {out}");
            // Every listener still answers after the old workers left.
            std::thread::sleep(Duration::from_millis(500));
            for _ in 0..20 {
                ensure!(
                    curl_body(&st, &format!("{base}/4k.bin"))? == small,
                    "body differs after the reload"
                );
            }
            let (n, errors, _) = wrk(&st, &format!("{base}/4k.bin"), 8, 1, false)?;
            ensure!(
                n > 100 && errors == 0,
                "after the reload: {n} requests, {errors} errors"
            );
        }
        nginx.terminate()?;
    }
    Ok(())
}

fn redis_cli(st: &Stack, args: &[&str]) -> Result<String> {
    let h = st.host();
    let mut a = vec!["-h", h.as_str()];
    a.extend_from_slice(args);
    Ok(st.peer_output("redis-cli", &a)?.trim().to_string())
}

#[test]
fn preload_redis() -> Result<()> {
    require("redis-server");
    require("redis-benchmark");
    let st = Stack::start("rd")?;
    // No config file: redis's default save rules.
    let mut cmd = st.preloaded("redis-server");
    cmd.args([
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
    ])
    .arg("--dir")
    .arg(&st.dir)
    .arg("--logfile")
    .arg(st.dir.join("redis.log"));
    let _redis = Proc::spawn("redis-server", cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(&st, &["ping"]).ok().as_deref() != Some("PONG") {
        ensure!(Instant::now() < deadline, "redis never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // BGSAVE forks while the SET phase runs.
    let saver = {
        let ns = st.daemon.lab.netns.clone();
        let h = st.host();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            Command::new("ip")
                .args(["netns", "exec", &ns, "redis-cli", "-h", &h, "bgsave"])
                .env_remove("LD_PRELOAD")
                .output()
        })
    };
    let h = st.host();
    let out = st.peer_output(
        "redis-benchmark",
        &["-h", &h, "-t", "set,get,lpush", "-n", "100000", "-q"],
    )?;
    let _ = saver.join();
    let rates: Vec<&str> = out
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .collect();
    println!("{}", rates.join("\n"));
    ensure!(
        rates.len() == 3,
        "redis-benchmark did not finish its three tests:\n{out}"
    );
    ensure!(redis_cli(&st, &["set", "preload-key", "preload-value"])? == "OK");
    let before = redis_cli(&st, &["lastsave"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = redis_cli(&st, &["bgsave"])?;
        if r.contains("started") {
            break;
        }
        ensure!(Instant::now() < deadline, "bgsave refused: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    while redis_cli(&st, &["lastsave"])? == before {
        ensure!(Instant::now() < deadline, "BGSAVE never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        redis_cli(&st, &["get", "preload-key"])? == "preload-value",
        "GET after BGSAVE"
    );
    let log = std::fs::read_to_string(st.dir.join("redis.log"))?;
    ensure!(
        log.contains("Background saving terminated with success"),
        "no BGSAVE in the log:\n{log}"
    );
    Ok(())
}

/// memccapable's verdict per test, in order.
fn memccapable(st: &Stack, host: &str, port: u16) -> Result<Vec<String>> {
    let p = port.to_string();
    let out = st
        .peer("memccapable")
        .args(["-h", host, "-p", &p])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains('[') && l.contains(']'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if lines.is_empty() {
        bail!(
            "memccapable printed no results:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(lines)
}

#[test]
fn preload_memcached() -> Result<()> {
    require("memcached");
    require("memccapable");
    require("memcslap");
    let st = Stack::start("mc")?;
    let mut cmd = st.preloaded("memcached");
    cmd.args([
        "-u", "root", "-t", "4", "-p", "11211", "-U", "0", "-l", "0.0.0.0",
    ]);
    let _mc = Proc::spawn("memcached on hoststack", cmd)?;
    // The same memcached on the kernel, in the lab's namespace.
    let mut kcmd = st.peer("memcached");
    kcmd.args([
        "-u",
        "root",
        "-t",
        "4",
        "-p",
        "11311",
        "-U",
        "0",
        "-l",
        "127.0.0.1",
    ]);
    let _kmc = Proc::spawn("memcached on the kernel", kcmd)?;
    std::thread::sleep(Duration::from_millis(500));
    let ours = memccapable(&st, &st.host(), 11211)?;
    let kernel = memccapable(&st, "127.0.0.1", 11311)?;
    println!(
        "memccapable on hoststack: {} results, {} pass",
        ours.len(),
        ours.iter().filter(|l| l.ends_with("[pass]")).count()
    );
    ensure!(
        ours == kernel,
        "memccapable differs from the kernel's:\nhoststack: {ours:#?}\nkernel: {kernel:#?}"
    );
    let server = format!("--servers={}:11211", st.host());
    let out = st.peer_output(
        "memcslap",
        &[&server, "--concurrency=8", "--execute-number=2000"],
    )?;
    println!("{out}");
    ensure!(
        out.contains("Time total"),
        "memcslap did not finish:\n{out}"
    );
    Ok(())
}

/// The app socket's join (what a forked child does): a wrong token is
/// `NoApp`; the right one adds a worker of the same app over another
/// connection, which may listen where the app listens (another app may
/// not); when that connection closes its worker goes and the app's
/// listener stays with the first worker.
#[test]
fn a_second_connection_joins_an_app_with_its_share_token() -> Result<()> {
    use hoststack_app::{App, AppOptions, Event, SessionError};
    let st = Stack::start("jn")?;
    let path = st.dir.join("app.sock");
    let opts = AppOptions {
        use_eventfd: true,
        ..AppOptions::default()
    };
    let mut a = App::attach(&path, "join-parent", opts.clone())?;
    let mut wa = a.worker().context("first worker")?;
    let ep: SocketAddr = "0.0.0.0:7600".parse()?;
    wa.listen(ep)?;
    let token = a.share_token()?;
    match App::join(&path, a.index(), token ^ 1) {
        Err(SessionError::NoApp(_)) => {}
        other => bail!("a wrong token gave {other:?}"),
    }
    let mut b = App::join(&path, a.index(), token)?;
    let mut wb = b.worker().context("joined worker")?;
    ensure!(b.index() == a.index() && wb.index() != wa.index());
    wb.listen(ep)?;
    let mut c = App::attach(&path, "join-other", opts)?;
    match c.worker().context("other worker")?.listen(ep) {
        Err(SessionError::AlreadyListening(_)) => {}
        other => bail!("another app listening on the endpoint gave {other:?}"),
    }
    drop(wb);
    drop(b);
    // Give the stack a moment to see the joined connection close.
    std::thread::sleep(Duration::from_millis(300));
    let to: SocketAddr = format!("{}:7600", st.host()).parse()?;
    let ns = st.daemon.lab.netns.clone();
    let clients = std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        enter_netns(&ns)?;
        (0..3)
            .map(|_| Ok(TcpStream::connect_timeout(&to, Duration::from_secs(5))?))
            .collect()
    });
    let mut accepted = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted < 3 && Instant::now() < deadline {
        for e in wa.wait(Some(Duration::from_millis(200)))? {
            if matches!(e, Event::Accepted(_)) {
                accepted += 1;
            }
        }
    }
    let _conns = clients
        .join()
        .map_err(|_| anyhow::anyhow!("clients panicked"))??;
    ensure!(
        accepted == 3,
        "the parent's worker accepted {accepted} of 3 after the joined one left"
    );
    Ok(())
}

const PY_UDP_ECHO: &str = r#"
import socket, sys, threading
bound = threading.Semaphore(0)
def serve(fam, host, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host, port))
    bound.release()
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(d, a)
for fam, host in [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]:
    threading.Thread(target=serve, args=(fam, host, int(sys.argv[1])), daemon=True).start()
# Ready once both sockets are bound (a failed bind kills its thread, and
# the test then times out waiting for this line).
bound.acquire(); bound.acquire()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A UDP exchange with resends, for the scripts below (python; needs
/// `socket` and `time` imported).
const PY_UDP_EXCHANGE: &str = r#"
# UDP may drop a datagram (a busy peer's full socket buffer): send again
# after 2 s, up to 3 times; an echo of an earlier try is skipped.
def exchange(sock, d, addr, tries=3):
    for _ in range(tries):
        sock.sendto(d, addr)
        deadline = time.time() + 2
        while (left := deadline - time.time()) > 0:
            sock.settimeout(left)
            try:
                r, a = sock.recvfrom(65536)
            except TimeoutError:
                break
            if r == d:
                return a
    raise AssertionError(f"no echo of {len(d)} bytes to {addr} in {tries} tries")
"#;

/// A preloaded UDP client: unbound sendto (an implicit bind), connect +
/// send/recv, EDESTADDRREQ, MSG_TRUNC, against a kernel echo in the lab.
const PY_UDP_CLIENT: &str = r#"
import errno, os, socket, sys, time
peer, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
try:
    s.send(b"x"); sys.exit("send without a destination worked")
except OSError as e:
    assert e.errno == errno.EDESTADDRREQ, e
for n in (1, 512, 1400, 20000):
    a = exchange(s, os.urandom(n), (peer, port))
    assert a == (peer, port), (n, a)
s.settimeout(5)
assert s.getsockname()[1] != 0
s.connect((peer, port))
assert s.getpeername() == (peer, port)
s.send(b"connected")
assert s.recv(100) == b"connected"
s.send(b"0123456789")
buf = bytearray(4)
assert s.recv_into(buf, 4, socket.MSG_TRUNC) == 10 and bytes(buf) == b"0123"
s.send(b"0123456789")
assert s.recv(4) == b"0123"
print("udp client ok", flush=True)
"#;

const PY_KERNEL_UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(65536)
    s.sendto(d, a)
"#;

#[test]
fn preload_udp() -> Result<()> {
    let st = Stack::start("ud")?;
    let mut cmd = st.preloaded("python3");
    cmd.args(["-c", PY_UDP_ECHO, "7800"]);
    let mut p = Proc::spawn("python udp echo", cmd)?;
    p.wait_for_line("ready", Duration::from_secs(20))?;
    // Kernel clients in the lab: IPv4 (fragmented sizes too) and IPv6.
    let check = PY_UDP_EXCHANGE.to_string()
        + &format!(
            r#"
import os, socket, time
for fam, h, sizes in [(socket.AF_INET, "{}", (1, 100, 1400, 8000, 30000)), (socket.AF_INET6, "{}", (1, 100, 1200))]:
    c = socket.socket(fam, socket.SOCK_DGRAM)
    for n in sizes:
        exchange(c, os.urandom(n), (h, 7800))
print("udp echo ok")
"#,
            st.host(),
            st.daemon.lab.cfg.host6.addr
        );
    let out = st.peer_output("python3", &["-c", &check]).map_err(|e| {
        // What the stack holds, for a failure that only a busy machine shows.
        let show = |w: &str| st.daemon.show(w).unwrap_or_else(|e| e.to_string());
        anyhow::anyhow!(
            "{e}\nshow session:\n{}\nshow interface:\n{}\nshow app:\n{}",
            show("session"),
            show("interface"),
            show("app")
        )
    })?;
    ensure!(out.contains("udp echo ok"), "{out}");
    // A preloaded client against a kernel echo in the lab.
    let peer = st.daemon.lab.cfg.peer4.addr.to_string();
    let mut k = st.peer("python3");
    k.args(["-c", PY_KERNEL_UDP_ECHO, &peer, "7801"]);
    let mut kp = Proc::spawn("kernel udp echo", k)?;
    kp.wait_for_line("ready", Duration::from_secs(10))?;
    let mut c = st.preloaded("python3");
    let client = format!("{PY_UDP_EXCHANGE}{PY_UDP_CLIENT}");
    c.args(["-c", &client, &peer, "7801"]);
    let (ok, out) = Proc::spawn("preloaded udp client", c)?.wait(Duration::from_secs(30))?;
    ensure!(ok && out.contains("udp client ok"), "udp client: {out}");
    Ok(())
}

const PY_HANG: &str = r#"
import socket, time
s = socket.socket(); s.bind(("0.0.0.0", 7900)); s.listen(4)
print("ready", flush=True)
c, a = s.accept()
print("accepted", flush=True)
try:
    print("recv returned", c.recv(100), flush=True)
except OSError as e:
    print("recv raised", e.errno, flush=True)
try:
    s.accept()
    print("accept returned", flush=True)
except OSError as e:
    print("accept raised", e.errno, flush=True)
"#;

/// A daemon that dies (`kill -9`, no goodbye) wakes a thread blocked in
/// a hoststack `recv`: the app socket hangs up, every session is reset
/// (`ECONNRESET`), and the next `accept` on a listener is `ECONNABORTED`.
#[test]
fn a_dead_daemon_resets_blocked_sessions() -> Result<()> {
    let mut st = Stack::start("dd")?;
    let mut cmd = st.preloaded("python3");
    cmd.args(["-c", PY_HANG]);
    let mut p = Proc::spawn("python blocked in recv", cmd)?;
    p.wait_for_line("ready", Duration::from_secs(20))?;
    let to: SocketAddr = format!("{}:7900", st.host()).parse()?;
    let ns = st.daemon.lab.netns.clone();
    let client = std::thread::spawn(move || -> Result<TcpStream> {
        enter_netns(&ns)?;
        Ok(TcpStream::connect_timeout(&to, Duration::from_secs(5))?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client panicked"))??;
    p.wait_for_line("accepted", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(200));
    st.daemon.kill9()?;
    let mut seen = 0;
    let mut lines = p.read_lines_until(Duration::from_secs(10), |l| {
        seen += usize::from(l.starts_with("accept") || l.starts_with("recv"));
        seen == 2
    })?;
    lines.retain(|l| l.starts_with("accept") || l.starts_with("recv"));
    lines.sort();
    let want = [
        format!(
            "accept raised {}",
            rustix::io::Errno::CONNABORTED.raw_os_error()
        ),
        format!(
            "recv raised {}",
            rustix::io::Errno::CONNRESET.raw_os_error()
        ),
    ];
    ensure!(lines == want, "after the daemon died: {lines:?}");
    drop(client);
    Ok(())
}
