//! External applications: separate processes (the `hoststack-session`
//! examples) attach to a hoststack running in this test process over its
//! app socket, map its segments and move data through shared-memory fifos.
//! Needs root (AF_XDP on a veth lab; the TAP variants, io_uring on a TAP).

#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_app::App;
use hoststack_app_proto::app_wire::{AppRequest, encode_request};
use hoststack_app_proto::error::SessionError;
use hoststack_app_proto::options::AppOptions;
use hoststack_lab::enter_netns;
use hoststack_session::app_socket::{AppSocketConfig, AppSocketServer};
use hoststack_session::app_worker::EventSink;
use hoststack_session::namespace::NamespaceConfig;
use hoststack_session::session_layer::LayerCounters;
use hoststack_stack::{DriverKind, Stack, StackConfig, WorkerMode};
use hoststack_tests::{
    Lab, Medium, Proc, example_bin, kernel_conns, last_json, memscan, on_veth_and_tap, peer,
    stack_addresses,
};

/// A lab, hoststack on its host end, and an app socket.
struct Host {
    apps: Option<AppSocketServer>,
    stack: Option<Stack>,
    socket: PathBuf,
    lab: Lab,
}

impl Host {
    fn new(tag: &str) -> Result<Self> {
        Self::on(Medium::Veth, tag)
    }

    /// hoststack on a lab of `medium`.
    fn on(medium: Medium, tag: &str) -> Result<Self> {
        Self::with_config(medium, tag, WorkerMode::Poll, true, |_| {})
    }

    /// With `private_rx_queues` false, apps get no rx queues and send
    /// their messages over the app socket.
    fn with_rx_queues(tag: &str, mode: WorkerMode, private_rx_queues: bool) -> Result<Self> {
        Self::with_config(Medium::Veth, tag, mode, private_rx_queues, |_| {})
    }

    /// With `tune` applied to the stack's config first.
    fn with_config(
        medium: Medium,
        tag: &str,
        mode: WorkerMode,
        private_rx_queues: bool,
        tune: impl FnOnce(&mut StackConfig),
    ) -> Result<Self> {
        let lab = medium.lab(tag)?;
        let mut cfg = StackConfig::new(&lab.host_if, stack_addresses(&lab));
        if let Medium::Tap { offload, queues } = medium {
            cfg.driver = DriverKind::UringTap;
            cfg.tap_offload = offload.parse().map_err(anyhow::Error::msg)?;
            cfg.queues = Some(queues);
        }
        tune(&mut cfg);
        let stack = if lab.cfg.tap {
            // The TAP lives in the lab's namespace: open it (and start the
            // workers) from a thread that moved there, as `--netns` does,
            // leaving the test's own thread where it is.
            let netns = lab.netns.clone();
            std::thread::scope(|s| {
                s.spawn(|| -> Result<Stack> {
                    enter_netns(&netns)?;
                    Ok(Stack::start(&cfg, mode)?)
                })
                .join()
                .expect("stack start thread")
            })?
        } else {
            Stack::start(&cfg, mode)?
        };
        stack
            .control()
            .call(move |l| l.private_rx_queues = private_rx_queues)
            .map_err(anyhow::Error::msg)?;
        let socket = std::env::temp_dir().join(format!("{}.sock", lab.netns));
        let apps = stack.serve_apps(AppSocketConfig::new(&socket))?;
        Ok(Self {
            apps: Some(apps),
            stack: Some(stack),
            socket,
            lab,
        })
    }

    fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("stack running")
    }

    /// What the layer holds. The count of log lines held back is left
    /// out: it is the process's, and other tests running beside this one
    /// move it.
    fn counters(&self) -> LayerCounters {
        let c = self
            .stack()
            .control()
            .call(|l| l.counters())
            .expect("control plane");
        LayerCounters {
            log_lines_suppressed: 0,
            ..c
        }
    }

    fn wait_counters(&self, want: LayerCounters, timeout: Duration) -> LayerCounters {
        let end = Instant::now() + timeout;
        loop {
            let c = self.counters();
            if c == want || Instant::now() > end {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn echo_server(&self, args: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new(example_bin("echo_server"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        let mut p = Proc::spawn("external echo server", cmd)?;
        p.wait_for_line("ready", Duration::from_secs(20))?;
        Ok(p)
    }

    fn client(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut cmd = Command::new(example_bin("throughput_client"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        let (ok, out) = Proc::spawn("external client", cmd)?.wait(Duration::from_secs(180))?;
        let v = last_json(&out)?;
        if !ok || v["ok"] != true {
            bail!("client failed: {v}");
        }
        Ok(v)
    }
}

impl Host {
    /// An echo through the local-scope server on port 9, checked.
    fn cut_through_client(&self, total: u64) -> Result<serde_json::Value> {
        let v = self.client(&[
            "--connect",
            "127.0.0.1:9",
            "--local-scope",
            "--bytes",
            &total.to_string(),
        ])?;
        assert_eq!(v["verified"].as_u64(), Some(total), "{v}");
        Ok(v)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.apps.take());
        if let Some(s) = self.stack.take() {
            let _ = s.stop();
        }
    }
}

on_veth_and_tap!(an_external_echo_server_serves_a_kernel_client_64mib_byte_identical);

fn an_external_echo_server_serves_a_kernel_client_64mib_byte_identical(
    medium: Medium,
) -> Result<()> {
    let h = Host::on(medium, "xe")?;
    let _server = h.echo_server(&["--listen", "0.0.0.0:7"])?;
    let host = h.lab.cfg.host4.addr.to_string();
    let v = peer(&h.lab, &["stream", &host, "7", &(64u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    Ok(())
}

on_veth_and_tap!(an_external_echo_server_echoes_kernel_udp_datagrams_whole_over_ipv4_and_ipv6);

fn an_external_echo_server_echoes_kernel_udp_datagrams_whole_over_ipv4_and_ipv6(
    medium: Medium,
) -> Result<()> {
    let h = Host::on(medium, "xu")?;
    let _server = h.echo_server(&["--listen", "0.0.0.0:7", "--udp", "0.0.0.0:5007"])?;
    for host in [h.lab.cfg.host4.addr, h.lab.cfg.host6.addr] {
        let v = peer(&h.lab, &["udp", &host.to_string(), "5007", "300"])?;
        assert_eq!(v["ok"], true, "{host}: {v}");
    }
    Ok(())
}

/// One-way throughput of a Unix-domain socket pair in this process, for
/// comparison with cut-through.
fn unix_pair_gbytes_per_s(total: usize) -> Result<f64> {
    use std::io::Read;
    let (mut a, mut b) = UnixStream::pair()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            let n = b.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    });
    let buf = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        a.write_all(&buf)?;
        sent += buf.len();
    }
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    assert_eq!(got, total);
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e9)
}

#[test]
fn two_external_processes_cut_through_1gib_with_no_syscall_per_write() -> Result<()> {
    let h = Host::new("xc")?;
    let _server = h.echo_server(&[
        "--listen",
        "0.0.0.0:9",
        "--local-scope",
        "--name",
        "ct-echo",
    ])?;
    let v = h.cut_through_client(1 << 30)?;
    let writes = v["writes"].as_u64().unwrap_or(0);
    let syscalls = v["data_path_syscalls"].as_u64().unwrap_or(u64::MAX);
    assert!(writes > 10_000, "{v}");
    assert!(
        syscalls * 20 < writes,
        "reads and writes made system calls: {v}"
    );
    h.assert_cut_through_segments_gone(&[_server.pid().context("server pid")?])?;
    let unix = unix_pair_gbytes_per_s(1 << 30)?;
    eprintln!(
        "cut-through echo: {:.2} GB/s each way ({writes} writes, {syscalls} syscalls); Unix socket pair one way: {unix:.2} GB/s",
        v["gbytes_per_s"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// What the memfd of every cut-through segment is named after (an app's
/// own segments are `hs-NAME-...`).
const CT_SEGMENT: &str = "memfd:hsct-";

/// Waits until no mapping of a cut-through segment is left in process
/// `pid` (the stack's when it is this process); returns those left.
fn wait_no_cut_through_mappings(pid: u32, timeout: Duration) -> Result<Vec<String>> {
    let end = Instant::now() + timeout;
    loop {
        let left: Vec<String> = memscan::mappings(pid)?
            .into_iter()
            .filter(|m| m.path.contains(CT_SEGMENT))
            .map(|m| m.path)
            .collect();
        if left.is_empty() || Instant::now() > end {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Host {
    /// Checks that no cut-through segment is left: in the session layer,
    /// mapped in this (the stack's) process, and mapped in each of `apps`.
    fn assert_cut_through_segments_gone(&self, apps: &[u32]) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(10);
        let pairs = loop {
            let pairs = self
                .stack()
                .control()
                .call(|l| l.cut_through_segments())
                .map_err(anyhow::Error::msg)?;
            if pairs.iter().all(|(_, s)| s.is_empty()) || Instant::now() > end {
                break pairs;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            pairs.iter().all(|(_, s)| s.is_empty()),
            "cut-through segments outlived their sessions: {pairs:?}"
        );
        for pid in std::iter::once(std::process::id()).chain(apps.iter().copied()) {
            let left = wait_no_cut_through_mappings(pid, Duration::from_secs(10))?;
            assert!(left.is_empty(), "process {pid} still maps {left:?}");
        }
        Ok(())
    }
}

/// A kernel client streams a random 1 MiB marker, lap after lap, over the
/// network through an external echo server; a local-scope client of the
/// same server, cut through, holds its session open while every byte of
/// every mapping it has is searched for the marker. It holds none of it,
/// yet its own cut-through data is found in its cut-through segment (the
/// search works), and the server, which does carry the marker, is found
/// holding it. After the cut-through session closes, its segment is gone
/// from the stack, the server and the client.
#[test]
fn a_cut_through_client_maps_no_byte_of_another_session() -> Result<()> {
    use rand::RngCore;
    let h = Host::new("xi")?;
    let server = h.echo_server(&[
        "--listen",
        "0.0.0.0:9",
        "--local-scope",
        "--name",
        "iso-echo",
        // Its network sessions' fifos then sit in its first segment, with
        // its event queue: where cut-through pairs once were too.
        "--prealloc-fifo-pairs",
        "4",
    ])?;
    let server_pid = server.pid().context("server pid")?;
    let dir = std::env::temp_dir().join(format!("{}-iso", h.lab.netns));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let mut marker = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut marker);
    let marker_file = dir.join("marker");
    std::fs::write(&marker_file, &marker)?;
    let stop = dir.join("stop");
    let host = h.lab.cfg.host4.addr.to_string();
    let mut kernel = h.lab.command("python3");
    kernel
        .arg("-c")
        .arg(MARKER_STREAMER)
        .args([&host, "9"])
        .arg(&marker_file)
        .arg(&stop);
    let mut kernel = Proc::spawn("kernel marker streamer", kernel)?;
    kernel.wait_for_line("{\"lap\"", Duration::from_secs(20))?;
    let hold = dir.join("hold");
    let own_total: u64 = 1 << 20;
    let mut cmd = Command::new(example_bin("throughput_client"));
    cmd.arg("--socket")
        .arg(&h.socket)
        .args(["--connect", "127.0.0.1:9", "--local-scope", "--bytes"])
        .arg(own_total.to_string())
        .arg("--hold")
        .arg(&hold);
    let mut client = Proc::spawn("cut-through client", cmd)?;
    client.wait_for_line("{\"holding\"", Duration::from_secs(60))?;
    let client_pid = client.pid().context("client pid")?;
    // The marker is still on its way through the server.
    kernel.wait_for_line("{\"lap\"", Duration::from_secs(20))?;
    kernel.discard_stdout();
    // It maps its own segments and its cut-through segment, nothing of
    // the server's.
    let foreign: Vec<String> = memscan::mappings(client_pid)?
        .into_iter()
        .map(|m| m.path)
        .filter(|p| p.contains("memfd:"))
        .filter(|p| !p.contains("memfd:hs-throughput-client-") && !p.contains(CT_SEGMENT))
        .collect();
    assert!(foreign.is_empty(), "the client maps {foreign:?}");
    let marker = memscan::Needle::new(marker);
    let (hits, read) = memscan::search(client_pid, &marker, |_| true)?;
    assert!(read >= 1 << 20, "read only {read} bytes of the client");
    assert!(
        hits.is_empty(),
        "the cut-through client maps another session's bytes: {hits:?}"
    );
    let mut own = vec![0u8; own_total as usize];
    hoststack_app_proto::pattern::PatternStream::new(5).fill(&mut own);
    let own = memscan::Needle::new(own);
    let (hits, _) = memscan::search(client_pid, &own, |m| m.path.contains(CT_SEGMENT))?;
    assert!(
        !hits.is_empty(),
        "the search missed the client's own data in its cut-through segment"
    );
    let (hits, _) = memscan::search(server_pid, &marker, |m| m.path.contains("memfd:"))?;
    assert!(
        !hits.is_empty(),
        "the search missed the marker in the server's segments"
    );
    eprintln!("searched {read} bytes of the cut-through client: no marker");
    // Close the cut-through session: its segment goes everywhere.
    std::fs::write(&hold, b"")?;
    client.wait_for_line("{\"closed\"", Duration::from_secs(20))?;
    h.assert_cut_through_segments_gone(&[server_pid, client_pid])?;
    std::fs::remove_file(&hold)?;
    let (ok, out) = client.wait(Duration::from_secs(30))?;
    let v = last_json(&out)?;
    assert!(ok && v["ok"] == true, "{v}");
    std::fs::write(&stop, b"")?;
    let (ok, out) = kernel.wait(Duration::from_secs(30))?;
    assert!(ok, "kernel streamer: {out}");
    Ok(())
}

/// Removes a directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kernel client: `HOST PORT MARKER_FILE STOP_FILE`. Sends the marker
/// lap after lap (reading the echo), printing `{"lap": N}` after each,
/// until STOP_FILE exists.
const MARKER_STREAMER: &str = r#"
import json, os, socket, sys, threading
host, port, path, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
marker = open(path, "rb").read()
s = socket.create_connection((host, port), timeout=30)
def drain():
    while s.recv(1 << 20):
        pass
threading.Thread(target=drain, daemon=True).start()
lap = 0
while not os.path.exists(stop):
    s.sendall(marker)
    lap += 1
    print(json.dumps({"lap": lap}), flush=True)
s.shutdown(socket.SHUT_WR)
s.close()
"#;

/// `private_rx_queues = false`: the apps get no rx queues; listen,
/// connect and every io notification travel over the app socket, and
/// everything still arrives.
#[test]
fn apps_without_private_rx_queues_send_everything_over_the_app_socket() -> Result<()> {
    let h = Host::with_rx_queues("xs", WorkerMode::Interrupt, false)?;
    let _echo = h.echo_server(&["--listen", "0.0.0.0:7", "--workers", "2"])?;
    let host = h.lab.cfg.host4.addr.to_string();
    let v = peer(&h.lab, &["stream", &host, "7", &(16u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "kernel client through the app: {v}");
    let _local = h.echo_server(&["--listen", "0.0.0.0:9", "--local-scope", "--name", "ct"])?;
    let v = h.cut_through_client(64 << 20)?;
    // Every notification is a socket send now: the counter shows it.
    let notes = v["notifications"].as_u64().unwrap_or(0);
    let syscalls = v["data_path_syscalls"].as_u64().unwrap_or(0);
    assert!(notes > 0 && syscalls >= notes, "{v}");
    let mut kernel = Proc::spawn("kernel echo server", h.lab.peer(&["echo-server", "9007"]))?;
    kernel.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    let peer_addr = format!("{}:9007", h.lab.cfg.peer4.addr);
    let v = h.client(&[
        "--connect",
        &peer_addr,
        "--bytes",
        &(4u64 << 20).to_string(),
    ])?;
    assert_eq!(v["verified"].as_u64(), Some(4 << 20), "connect out: {v}");
    let queues = h
        .stack()
        .control()
        .call(|l| {
            l.apps()
                .filter_map(|a| a.external.as_ref())
                .map(|e| e.rx_info.queues.len())
                .sum::<usize>()
        })
        .map_err(anyhow::Error::msg)?;
    assert_eq!(queues, 0, "an app got rx queues");
    Ok(())
}

#[test]
fn an_external_client_connects_out_to_a_kernel_server_16mib_both_ways() -> Result<()> {
    let h = Host::new("xo")?;
    let mut kernel = Proc::spawn("kernel echo server", h.lab.peer(&["echo-server", "9007"]))?;
    kernel.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    let remote = format!("{}:9007", h.lab.cfg.peer4.addr);
    let v = h.client(&["--connect", &remote, "--bytes", &(16u64 << 20).to_string()])?;
    assert_eq!(v["verified"].as_u64(), Some(16 << 20), "{v}");
    Ok(())
}

#[test]
fn a_four_worker_external_server_gets_400_connections_round_robin() -> Result<()> {
    let h = Host::new("x4")?;
    let mut server = h.echo_server(&["--listen", "0.0.0.0:7", "--workers", "4"])?;
    let host = h.lab.cfg.host4.addr.to_string();
    let v = peer(&h.lab, &["many", &host, "7", "400", "4096"])?;
    assert_eq!(v["ok"], true, "{v}");
    let lines = server.read_lines_until(Duration::from_secs(20), |l| l.ends_with("total=400"))?;
    let mut per = [0u32; 4];
    for l in &lines {
        if let Some(w) = l
            .strip_prefix("accepted worker=")
            .and_then(|r| r.split(' ').next())
        {
            per[w.parse::<usize>()?] += 1;
        }
    }
    assert_eq!(per.iter().sum::<u32>(), 400, "{lines:?}");
    let (min, max) = (
        per.iter().min().copied().unwrap_or(0),
        per.iter().max().copied().unwrap_or(0),
    );
    assert!(max - min <= 1, "not round robin: {per:?}");
    Ok(())
}

#[test]
fn kill9_of_an_external_server_mid_transfer_frees_it_and_spares_its_neighbour() -> Result<()> {
    let h = Host::new("xk")?;
    let baseline = h.counters();
    let victim = h.echo_server(&["--listen", "0.0.0.0:7", "--name", "victim"])?;
    let neighbour = h.echo_server(&["--listen", "0.0.0.0:8", "--name", "neighbour"])?;
    let host = h.lab.cfg.host4.addr.to_string();
    // The neighbour's transfer runs throughout; the victim's is cut short.
    let (lab_ns, host2) = (h.lab.netns.clone(), host.clone());
    let neighbour_run = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab_ns,
                "python3",
                "-c",
                hoststack_lab::PEER_SCRIPT,
                "stream",
                &host2,
                "8",
            ])
            .arg((256u64 << 20).to_string())
            .output()
    });
    let mut victim_client = Proc::spawn(
        "victim client",
        h.lab
            .peer(&["stream", &host, "7", &(1u64 << 30).to_string()]),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    victim.kill9();
    // Its port can be listened on again within a second.
    let start = Instant::now();
    let again = loop {
        let opts = AppOptions {
            use_eventfd: true,
            ..AppOptions::default()
        };
        let mut app = App::attach(&h.socket, "successor", opts)?;
        let mut w = app.worker().context("worker")?;
        match w.listen("0.0.0.0:7".parse()?) {
            Ok(_) => break start.elapsed(),
            Err(SessionError::AlreadyListening(_)) if start.elapsed() < Duration::from_secs(1) => {
                drop(w);
                app.detach()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => bail!(
                "port 7 still taken {:?} after the kill: {e}",
                start.elapsed()
            ),
        }
    };
    eprintln!("port listenable again {again:?} after kill -9");
    let out = neighbour_run
        .join()
        .map_err(|_| anyhow::anyhow!("neighbour thread"))??;
    let v = last_json(&String::from_utf8_lossy(&out.stdout))?;
    assert_eq!(v["ok"], true, "the neighbour's transfer suffered: {v}");
    let _ = victim_client.wait_for_line("{", Duration::from_secs(30));
    drop(victim_client);
    drop(neighbour);
    // The successor app went with the `app` above; everything else too.
    let after = h.wait_counters(baseline, Duration::from_secs(10));
    assert_eq!(
        after, baseline,
        "segments, sessions or apps were left behind"
    );
    Ok(())
}

#[test]
fn a_64_slot_event_queue_serves_10000_sessions_postponing_and_losing_nothing() -> Result<()> {
    // Small transport buffers: 10,000 connections of the default size
    // would be 20 GiB.
    let h = Host::with_config(Medium::Veth, "xq", WorkerMode::Poll, true, |c| {
        c.tcp.buffer = 16 << 10
    })?;
    let baseline = h.counters();
    let mut server = h.echo_server(&[
        "--listen",
        "0.0.0.0:7",
        "--event-queue-size",
        "64",
        "--fifo-size",
        "16384",
    ])?;
    // It prints a line per session.
    server.discard_stdout();
    let target = format!("{}:7", h.lab.cfg.host4.addr);
    let v = kernel_conns(
        &h.lab,
        &[
            "--target",
            &target,
            "--conns",
            "10000",
            "--bytes",
            "4096",
            "--concurrency",
            "1000",
            // All 10,000 are open before any sends: every one is busy at
            // once.
            "--connect-first",
        ],
        Duration::from_secs(120),
    )?;
    assert_eq!(v["verified"].as_u64(), Some(10_000), "{v}");
    let (postponed, dropped) = h
        .stack()
        .control()
        .call(|l| {
            let mut totals = (0, 0);
            for a in l.apps() {
                for wi in a.workers.values() {
                    let Some(w) = l.app_worker(*wi) else { continue };
                    if let EventSink::Queue(q) = w.sink() {
                        totals.0 += q.counters().postponed.load(Ordering::Relaxed);
                    }
                    totals.1 += w.counters().events_dropped.load(Ordering::Relaxed);
                }
            }
            totals
        })
        .map_err(anyhow::Error::msg)?;
    eprintln!("{postponed} events postponed, {dropped} dropped: {v}");
    assert!(
        postponed > 0,
        "10,000 sessions never filled a 64-slot queue"
    );
    assert_eq!(dropped, 0, "events were dropped");
    drop(server);
    let after = h.wait_counters(baseline, Duration::from_secs(20));
    assert_eq!(after, baseline, "sessions, fifos or segments leaked");
    Ok(())
}

#[test]
fn typed_errors_reach_the_library() -> Result<()> {
    let h = Host::new("xt")?;
    h.stack().control().call(|l| {
        l.namespaces.add(
            "blue",
            NamespaceConfig {
                secret: 42,
                ..Default::default()
            },
        )
    })??;
    let blue_path = std::env::temp_dir().join(format!("{}-blue.sock", h.lab.netns));
    let _blue = AppSocketServer::start(
        AppSocketConfig {
            path: blue_path.clone(),
            namespace: "blue".into(),
            ..AppSocketConfig::new(&blue_path)
        },
        h.stack().control().clone(),
    )?;
    let ns = |id: &str, secret| AppOptions {
        namespace_id: id.into(),
        namespace_secret: secret,
        ..AppOptions::default()
    };
    let e = App::attach(&blue_path, "wrong-secret", ns("blue", 41)).unwrap_err();
    assert!(matches!(e, SessionError::WrongNamespaceSecret(_)), "{e}");
    let e = App::attach(&blue_path, "unknown-ns", ns("nope", 0)).unwrap_err();
    assert!(matches!(e, SessionError::InvalidNamespace(_)), "{e}");
    let _blue_ok = App::attach(&blue_path, "blue-app", ns("blue", 42))?;

    let local = AppOptions {
        scope_local: true,
        scope_global: true,
        use_eventfd: true,
        ..AppOptions::default()
    };
    let mut a = App::attach(&h.socket, "holder", local.clone())?;
    let e = App::attach(&h.socket, "holder", local.clone()).unwrap_err();
    assert!(matches!(e, SessionError::AlreadyAttached(_)), "{e}");
    let mut aw = a.worker().context("worker")?;
    aw.listen("0.0.0.0:6000".parse()?)?;
    let mut b = App::attach(&h.socket, "intruder", local.clone())?;
    let mut bw = b.worker().context("worker")?;
    let e = bw.listen("0.0.0.0:6000".parse()?).unwrap_err();
    assert!(matches!(e, SessionError::AlreadyListening(_)), "{e}");
    // A third app connects (cut through) to the holder; the intruder may
    // not close that session.
    let mut c = App::attach(&h.socket, "owner", local)?;
    let mut cw = c.worker().context("worker")?;
    let s = cw.connect("127.0.0.1:6000".parse()?)?;
    let e = bw.disconnect(s.handle()).unwrap_err();
    assert!(matches!(e, SessionError::NotOwner(_)), "{e}");
    cw.disconnect(s.handle())?;
    Ok(())
}

#[test]
fn ten_thousand_hostile_messages_leave_the_stack_up_and_an_honest_app_finishes() -> Result<()> {
    let h = Host::new("xf")?;
    let _server = h.echo_server(&[
        "--listen",
        "0.0.0.0:9",
        "--local-scope",
        "--name",
        "honest-echo",
    ])?;
    let stop = Arc::new(AtomicBool::new(false));
    let (socket, st) = (h.socket.clone(), stop.clone());
    let fuzzer = std::thread::spawn(move || -> Result<u32> {
        let mut sent = 0u32;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = [
            encode_request(1, &AppRequest::attach("fuzz", &AppOptions::default())),
            encode_request(2, &AppRequest::AddWorker),
            encode_request(3, &AppRequest::DelWorker { worker: 3 }),
            encode_request(4, &AppRequest::Detach),
        ];
        while sent < 10_000 && !st.load(Ordering::Relaxed) {
            let Ok(mut conn) = UnixStream::connect(&socket) else {
                continue;
            };
            conn.set_write_timeout(Some(Duration::from_millis(200)))?;
            for _ in 0..50 {
                let r = next();
                let mut msg = match r % 4 {
                    0 => (0..(next() % 300))
                        .map(|_| next() as u8)
                        .collect::<Vec<u8>>(),
                    _ => valid[(next() % 4) as usize].clone(),
                };
                // Mutate: flip bytes, truncate, or extend.
                for _ in 0..(next() % 4) {
                    if !msg.is_empty() {
                        let i = (next() as usize) % msg.len();
                        msg[i] ^= next() as u8 | 1;
                    }
                }
                if next() % 5 == 0 {
                    msg.truncate((next() as usize) % (msg.len() + 1));
                }
                if next() % 7 == 0 {
                    msg.extend((0..(next() % 64)).map(|_| next() as u8));
                }
                sent += 1;
                if conn.write_all(&msg).is_err() {
                    break;
                }
            }
        }
        Ok(sent)
    });
    let total = 256u64 << 20;
    let v = h.client(&[
        "--connect",
        "127.0.0.1:9",
        "--local-scope",
        "--bytes",
        &total.to_string(),
        "--name",
        "honest",
    ])?;
    let sent = fuzzer
        .join()
        .map_err(|_| anyhow::anyhow!("fuzzer panicked"))??;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(v["verified"].as_u64(), Some(total), "{v}");
    assert!(sent >= 10_000, "only {sent} hostile messages were sent");
    // Still up: a new app attaches and listens.
    let mut app = App::attach(
        &h.socket,
        "after-the-storm",
        AppOptions {
            use_eventfd: true,
            ..AppOptions::default()
        },
    )?;
    let mut w = app.worker().context("worker")?;
    w.listen("0.0.0.0:7777".parse()?)?;
    Ok(())
}
