//! Two hoststack instances joined by the in-memory pair: the whole stack
//! (ARP/ND, TCP, UDP) with no kernel and no root.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hoststack_drivers::memory_pair::{MemoryPairConfig, memory_pair};
use hoststack_stack::echo::{EchoStats, TcpEchoServer, UdpEchoServer};
use hoststack_stack::service::Service;
use hoststack_stack::transfer::{TcpTransferClient, TransferReport, UdpReport, UdpTransferClient};
use hoststack_stack::{Stack, StackConfig, WorkerMode};
use smoltcp::wire::{IpAddress, IpEndpoint};

fn wait<T: Clone>(slot: &Mutex<Option<T>>, what: &str) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = slot.lock().unwrap().clone() {
            return Ok(v);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{what} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_pair(
    server_addr: &str,
    client_addr: &str,
    server_ip: IpAddress,
    mode: WorkerMode,
) -> Result<()> {
    let (a, b) = memory_pair(MemoryPairConfig::default())?;
    let server_cfg = StackConfig::new(
        "mem0",
        vec![server_addr.parse().map_err(anyhow::Error::msg)?],
    );
    let client_cfg = StackConfig::new(
        "mem1",
        vec![client_addr.parse().map_err(anyhow::Error::msg)?],
    );
    let tcp_stats = Arc::new(EchoStats::default());
    let server: Vec<Box<dyn Service>> = vec![
        Box::new(TcpEchoServer::new(7, tcp_stats.clone())),
        Box::new(UdpEchoServer::new(7, Arc::default())),
    ];
    let server = Stack::start_with_driver(a, &server_cfg, mode, server)?;
    let tcp: Arc<Mutex<Option<TransferReport>>> = Arc::default();
    let udp: Arc<Mutex<Option<UdpReport>>> = Arc::default();
    let client: Vec<Box<dyn Service>> = vec![
        Box::new(TcpTransferClient::new(
            IpEndpoint::new(server_ip, 7),
            8 << 20,
            3,
            tcp.clone(),
        )),
        Box::new(UdpTransferClient::new(
            IpEndpoint::new(server_ip, 7),
            300,
            udp.clone(),
        )),
    ];
    let client = Stack::start_with_driver(b, &client_cfg, mode, client)?;
    let t = wait(&tcp, "TCP transfer")?;
    let u = wait(&udp, "UDP exchange")?;
    client.stop()?;
    server.stop()?;
    assert_eq!(t.error, None);
    assert_eq!(t.verified, 8 << 20);
    assert_eq!(u.error, None);
    assert_eq!(u.echoed, 300);
    assert_eq!(
        tcp_stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        8 << 20
    );
    Ok(())
}

#[test]
fn two_stacks_over_the_memory_pair_move_tcp_and_udp_over_ipv4() -> Result<()> {
    run_pair(
        "10.9.0.1/24",
        "10.9.0.2/24",
        IpAddress::v4(10, 9, 0, 1),
        WorkerMode::Interrupt,
    )
}

#[test]
fn two_stacks_over_the_memory_pair_move_tcp_and_udp_over_ipv6() -> Result<()> {
    run_pair(
        "fd09::1/64",
        "fd09::2/64",
        IpAddress::v6(0xfd09, 0, 0, 0, 0, 0, 0, 1),
        WorkerMode::Interrupt,
    )
}

#[test]
fn two_stacks_over_the_memory_pair_in_polling_mode() -> Result<()> {
    run_pair(
        "10.9.1.1/24",
        "10.9.1.2/24",
        IpAddress::v4(10, 9, 1, 1),
        WorkerMode::Poll,
    )
}
