//! `hoststack demo`: the whole datapath in one command on a fresh machine.
//!
//! Builds a veth lab, runs hoststack on the host end over AF_XDP with two
//! builtin apps on its session layer — an echo server (TCP and UDP, two app
//! workers) and an outbound TCP client — drives them from the kernel side in
//! the namespace with real kernel sockets, prints what moved, and tears the
//! lab down — also on Ctrl-C or error.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hoststack_session::application::AppOptions;
use hoststack_session::builtin_apps::{EchoServer, StreamClient};
use hoststack_session::endpoint::{Endpoint, TransportProto};
use serde_json::Value;

use crate::cli::Shutdown;
use crate::config::StackConfig;
use crate::error::{StackError, StackResult};
use crate::lab::{Lab, LabConfig};
use crate::runtime::Stack;
use crate::worker::WorkerMode;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Lab name.
    pub lab: String,
    /// Bytes the kernel client streams through the TCP echo.
    pub stream_bytes: u64,
    /// 64-byte request/response exchanges.
    pub round_trips: u32,
    /// Bytes hoststack sends to the kernel echo server and verifies.
    pub outbound_bytes: u64,
    /// Worker mode.
    pub mode: WorkerMode,
}

const ECHO_PORT: u16 = 7;
const KERNEL_ECHO_PORT: u16 = 9007;

fn field(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn parse(json: &str) -> StackResult<Value> {
    serde_json::from_str(json.lines().last().unwrap_or(""))
        .map_err(|e| StackError::Lab(format!("peer said '{json}': {e}")))
}

fn check_signal(shutdown: &Shutdown) -> StackResult<()> {
    if shutdown.requested() {
        return Err(StackError::Lab("interrupted".into()));
    }
    Ok(())
}

/// Runs the demo; the lab is removed however this returns.
pub fn run_demo(cfg: &DemoConfig, shutdown: &Shutdown) -> StackResult<()> {
    println!(
        "hoststack demo: building lab '{}' (veth pair + network namespace)",
        cfg.lab
    );
    let lab = Lab::up(LabConfig::new(&cfg.lab))?;
    println!(
        "  hoststack owns {} and {} on {}; the kernel peer is {} / {} in namespace {}",
        lab.cfg.host4,
        lab.cfg.host6,
        lab.host_if,
        lab.cfg.peer4.addr,
        lab.cfg.peer6.addr,
        lab.netns
    );

    // The kernel echo server hoststack's client will connect to.
    let mut kernel_echo = lab
        .peer(&["echo-server", &KERNEL_ECHO_PORT.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| StackError::Lab(format!("starting the kernel echo server: {e}")))?;
    let result = run_with_lab(cfg, &lab, shutdown);
    let _ = kernel_echo.kill();
    let _ = kernel_echo.wait();
    drop(lab);
    println!("lab removed");
    result
}

fn run_with_lab(cfg: &DemoConfig, lab: &Lab, shutdown: &Shutdown) -> StackResult<()> {
    let stack_cfg = StackConfig::new(&lab.host_if, lab.host_addresses());
    // Give the kernel echo server a moment to listen.
    std::thread::sleep(Duration::from_millis(300));
    let stack = Stack::start(&stack_cfg, cfg.mode)?;
    let control = stack.control().clone();
    let session_err = |e: hoststack_session::SessionError| StackError::Socket(e.to_string());
    let fifos = AppOptions {
        rx_fifo_size: 512 << 10,
        tx_fifo_size: 512 << 10,
        ..AppOptions::default()
    };
    let echo =
        EchoServer::attach(&control, "echo-server", fifos.clone(), 2).map_err(session_err)?;
    let any = |port| Endpoint {
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port,
    };
    echo.listen(&control, TransportProto::Tcp, any(ECHO_PORT))
        .map_err(session_err)?;
    echo.listen(&control, TransportProto::Udp, any(ECHO_PORT))
        .map_err(session_err)?;
    let peer_ep = Endpoint {
        ip: lab.cfg.peer4.addr,
        port: KERNEL_ECHO_PORT,
    };
    let w = &stack.workers()[0];
    println!(
        "  stack up: {} queue {} ({}), {:?} mode",
        w.info.name, w.info.queue, w.info.mode, cfg.mode
    );
    let host4 = lab.cfg.host4.addr.to_string();
    let host6 = lab.cfg.host6.addr.to_string();
    let port = ECHO_PORT.to_string();

    check_signal(shutdown)?;
    println!(
        "\n[1] hoststack TCP client -> kernel TCP echo server, {} MiB",
        cfg.outbound_bytes >> 20
    );
    let client = StreamClient::start(
        &control,
        "tcp-client",
        fifos,
        peer_ep,
        cfg.outbound_bytes,
        7,
    )
    .map_err(session_err)?;
    let started = Instant::now();
    let report = loop {
        if let Some(r) = client
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            break r;
        }
        if shutdown.wait(Duration::from_millis(50)) || started.elapsed() > Duration::from_secs(60) {
            return Err(StackError::Lab("outbound transfer did not finish".into()));
        }
    };
    if let Some(e) = &report.error {
        return Err(StackError::Lab(format!("outbound transfer failed: {e}")));
    }
    println!(
        "    {} bytes sent and verified back, {:.2} s",
        report.verified,
        report.elapsed.as_secs_f64()
    );

    check_signal(shutdown)?;
    println!(
        "\n[2] kernel TCP client -> hoststack TCP echo, {} MiB of random data",
        cfg.stream_bytes >> 20
    );
    let v = parse(&lab.run_peer(&["stream", &host4, &port, &cfg.stream_bytes.to_string()])?)?;
    let secs = field(&v, "seconds");
    println!(
        "    {} bytes each way, byte-identical (sha256 {}), {:.2} s, {:.2} Gbit/s each way",
        cfg.stream_bytes,
        &v["sha256"].as_str().unwrap_or("?")[..16],
        secs,
        cfg.stream_bytes as f64 * 8.0 / secs / 1e9
    );

    check_signal(shutdown)?;
    println!(
        "\n[3] 64-byte request/response over TCP, {} exchanges",
        cfg.round_trips
    );
    let v = parse(&lab.run_peer(&["rr", &host4, &port, &cfg.round_trips.to_string(), "64"])?)?;
    println!(
        "    {:.0} round trips/s, p50 {:.1} us, p99 {:.1} us (python client: its own overhead is included)",
        field(&v, "rate"),
        field(&v, "p50_us"),
        field(&v, "p99_us")
    );

    check_signal(shutdown)?;
    println!("\n[4] UDP echo over IPv4 and IPv6, datagram boundaries checked");
    for host in [&host4, &host6] {
        let v = parse(&lab.run_peer(&["udp", host, &port, "300"])?)?;
        println!(
            "    {host}: {} of {} datagrams echoed intact",
            v["echoed"], v["count"]
        );
    }

    let c = stack.totals();
    let r = std::sync::atomic::Ordering::Relaxed;
    let per_worker = echo.accepted_per_worker(&control).unwrap_or_default();
    println!("\nhoststack counters");
    println!(
        "    frames rx {} tx {}, bytes rx {} tx {}",
        c.rx_frames, c.tx_frames, c.rx_bytes, c.tx_bytes
    );
    println!(
        "    echo app: {} TCP sessions, {} bytes, {} datagrams; sessions per app worker (round robin): {:?}",
        echo.stats.streams.load(r),
        echo.stats.bytes.load(r),
        echo.stats.datagrams.load(r),
        per_worker
    );
    println!(
        "    checksums left unverified (veth partial): {}, bad: {}, malformed: {}, kernel drops: {}",
        c.rx_checksum_unverified, c.rx_bad_checksum, c.rx_malformed, c.rx_kernel_drops
    );
    let _ = control.detach(client.app);
    let _ = control.detach(echo.app);
    stack.stop()?;
    Ok(())
}
