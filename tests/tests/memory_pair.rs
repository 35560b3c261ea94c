//! Two hoststack instances joined by the in-memory pair: the whole stack
//! (ARP/ND, TCP, UDP, the session layer and builtin apps) with no kernel
//! and no root.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::options::AppOptions;
use hoststack_drivers::memory_pair::{MemoryPairConfig, memory_pair};
use hoststack_stack::builtin_apps::{DatagramClient, EchoServer, StreamClient, wait_report};
use hoststack_stack::{Stack, StackConfig, WorkerMode};

fn fifos(size: u32) -> AppOptions {
    AppOptions {
        rx_fifo_size: size,
        tx_fifo_size: size,
        ..AppOptions::default()
    }
}

struct Pair {
    server: Stack,
    client: Stack,
    echo: EchoServer,
    server_ip: IpAddr,
}

impl Pair {
    /// A client app streaming `total` bytes to the echo server and checking
    /// them as they come back.
    fn stream_client(&self, name: &str, fifo: u32, total: u64, seed: u64) -> Result<StreamClient> {
        let remote = Endpoint {
            ip: self.server_ip,
            port: 7,
        };
        Ok(StreamClient::start(
            self.client.control(),
            name,
            fifos(fifo),
            remote,
            total,
            seed,
        )?)
    }
}

fn pair(server_addr: &str, client_addr: &str, mode: WorkerMode, fifo: u32) -> Result<Pair> {
    lossy_pair(server_addr, client_addr, mode, fifo, 0)
}

/// A pair whose server stack drops `loss` % of its frames each way.
fn lossy_pair(
    server_addr: &str,
    client_addr: &str,
    mode: WorkerMode,
    fifo: u32,
    loss: u8,
) -> Result<Pair> {
    let (a, b) = memory_pair(MemoryPairConfig::default())?;
    let mut server_cfg = StackConfig::new(
        "mem0",
        vec![server_addr.parse().map_err(anyhow::Error::msg)?],
    );
    server_cfg.inject_loss = loss;
    server_cfg.seed = 42;
    let client_cfg = StackConfig::new(
        "mem1",
        vec![client_addr.parse().map_err(anyhow::Error::msg)?],
    );
    let server = Stack::start_with_driver(a, &server_cfg, mode)?;
    let client = Stack::start_with_driver(b, &client_cfg, mode)?;
    let echo = EchoServer::attach(server.control(), "echo", fifos(fifo), 1)?;
    let server_ip = server_cfg.addresses[0].addr;
    let any = Endpoint {
        ip: server_ip,
        port: 7,
    };
    echo.listen(server.control(), TransportProto::Tcp, any)?;
    echo.listen(server.control(), TransportProto::Udp, any)?;
    Ok(Pair {
        server,
        client,
        echo,
        server_ip,
    })
}

fn run_pair(server_addr: &str, client_addr: &str, mode: WorkerMode) -> Result<()> {
    let p = pair(server_addr, client_addr, mode, 256 << 10)?;
    let remote = Endpoint {
        ip: p.server_ip,
        port: 7,
    };
    let tcp = StreamClient::start(
        p.client.control(),
        "tcp",
        fifos(256 << 10),
        remote,
        8 << 20,
        3,
    )?;
    let udp = DatagramClient::start(
        p.client.control(),
        "udp",
        AppOptions::default(),
        remote,
        300,
    )?;
    let t =
        wait_report(&tcp.report, Duration::from_secs(60)).context("TCP transfer did not finish")?;
    let u =
        wait_report(&udp.report, Duration::from_secs(60)).context("UDP exchange did not finish")?;
    assert_eq!(t.error, None);
    assert_eq!(t.verified, 8 << 20);
    assert_eq!(u.error, None);
    assert_eq!(u.verified, 300);
    assert_eq!(p.echo.stats.bytes.load(Ordering::Relaxed), 8 << 20);
    assert_eq!(p.echo.stats.datagrams.load(Ordering::Relaxed), 300);
    p.client.stop()?;
    p.server.stop()?;
    Ok(())
}

#[test]
fn two_stacks_over_the_memory_pair_move_tcp_and_udp_over_ipv4() -> Result<()> {
    run_pair("10.9.0.1/24", "10.9.0.2/24", WorkerMode::Interrupt)
}

#[test]
fn two_stacks_over_the_memory_pair_move_tcp_and_udp_over_ipv6() -> Result<()> {
    run_pair("fd09::1/64", "fd09::2/64", WorkerMode::Interrupt)
}

#[test]
fn two_stacks_over_the_memory_pair_in_polling_mode() -> Result<()> {
    run_pair("10.9.1.1/24", "10.9.1.2/24", WorkerMode::Poll)
}

/// A full rx fifo closes the TCP window; draining it reopens the window and
/// the transfer finishes byte-identical.
#[test]
fn a_reader_that_stops_until_its_fifo_is_full_then_drains_completes_byte_identical() -> Result<()> {
    let p = pair(
        "10.9.2.1/24",
        "10.9.2.2/24",
        WorkerMode::Interrupt,
        64 << 10,
    )?;
    let total = 32u64 << 20;
    let client = p.stream_client("slow", 64 << 10, total, 9)?;
    client.paused.store(true, Ordering::SeqCst);
    // Wait until the client's rx fifo is full and the whole pipe stalls:
    // echo bytes stop growing.
    let mut last = u64::MAX;
    let mut stalled_for = 0;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(20));
        let now = p.echo.stats.bytes.load(Ordering::Relaxed);
        if now == last {
            stalled_for += 1;
            if stalled_for >= 10 {
                break;
            }
        } else {
            stalled_for = 0;
        }
        last = now;
    }
    assert!(
        stalled_for >= 10,
        "the transfer never stalled while the reader was paused"
    );
    assert!(
        last < total,
        "everything was echoed although the reader never read"
    );
    let full = p
        .client
        .control()
        .call(|l| l.counters().sessions)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(full, 1);
    // Hold it a while with the window closed, then drain.
    std::thread::sleep(Duration::from_millis(300));
    client.resume()?;
    let r = wait_report(&client.report, Duration::from_secs(60))
        .context("did not finish after resuming")?;
    assert_eq!(r.error, None);
    assert_eq!(r.verified, total);
    p.client.stop()?;
    p.server.stop()?;
    Ok(())
}

/// smoltcp's fault injector drops frames each way on the server's side;
/// retransmissions still deliver every byte, and the drops are counted.
#[test]
fn a_transfer_through_injected_loss_each_way_completes_byte_identical() -> Result<()> {
    let p = lossy_pair(
        "10.9.3.1/24",
        "10.9.3.2/24",
        WorkerMode::Interrupt,
        256 << 10,
        1,
    )?;
    let remote = Endpoint {
        ip: p.server_ip,
        port: 7,
    };
    let total = 512u64 << 10;
    let tcp = StreamClient::start(
        p.client.control(),
        "tcp",
        fifos(256 << 10),
        remote,
        total,
        5,
    )?;
    let t = wait_report(&tcp.report, Duration::from_secs(120))
        .context("TCP transfer through loss did not finish")?;
    assert_eq!(t.error, None);
    assert_eq!(t.verified, total);
    let stats: Vec<_> = p.server.workers().iter().map(|w| w.stats.clone()).collect();
    p.client.stop()?;
    p.server.stop()?;
    let rx: u64 = stats
        .iter()
        .map(|s| s.injected_rx_drops.load(Ordering::Relaxed))
        .sum();
    let tx: u64 = stats
        .iter()
        .map(|s| s.injected_tx_drops.load(Ordering::Relaxed))
        .sum();
    assert!(rx > 0 && tx > 0, "no loss injected: rx {rx} tx {tx}");
    eprintln!("{total} bytes echoed through {rx} received and {tx} sent frames dropped");
    Ok(())
}
