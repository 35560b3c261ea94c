//! Many connections in one endpoint: idle ones cost no work, busy ones cost the same as in a
//! small endpoint.

mod util;

use std::time::Instant as WallClock;

use hoststack_tcp::{ConnHandle, Duration, ListenOptions, TcpConfig, TcpEvent};
use util::*;

const MANY: usize = 10_000;

/// Opens `n` connections between the pair (client ports from 10,000 up).
fn open(pair: &mut Pair, n: usize) -> Vec<(ConnHandle, ConnHandle)> {
    let listener = pair.listen(ListenOptions {
        syn_backlog: 65_536,
        accept_backlog: 65_536,
        ..ListenOptions::default()
    });
    let clients: Vec<ConnHandle> = (0..n).map(|i| pair.connect(10_000 + i as u16)).collect();
    let mut servers = Vec::new();
    pair.run_until(10_000, |p| {
        while let Some(s) = p.server.accept(listener).unwrap() {
            servers.push(s);
        }
        servers.len() == n
    });
    pair.settle(Duration::from_secs(1));
    pair.client_events.clear();
    pair.server_events.clear();
    clients.into_iter().zip(servers).collect()
}

/// Wall time of `rounds` 64-byte echo round trips on one connection, driving the endpoints
/// directly (no simulator overhead).
fn echo_cost(pair: &mut Pair, c: ConnHandle, s: ConnHandle, rounds: usize) -> std::time::Duration {
    let mut buf = vec![0u8; 2048];
    let mut data = [0u8; 64];
    let now = pair.now;
    let start = WallClock::now();
    for _ in 0..rounds {
        pair.client.send(c, &data).unwrap();
        deliver(&mut pair.client, &mut pair.server, now, &mut buf);
        while pair.server.poll_event().is_some() {}
        let n = pair.server.recv(s, &mut data).unwrap();
        pair.server.send(s, &data[..n]).unwrap();
        deliver(&mut pair.server, &mut pair.client, now, &mut buf);
        while pair.client.poll_event().is_some() {}
        assert_eq!(pair.client.recv(c, &mut data).unwrap(), 64);
    }
    start.elapsed()
}

#[test]
fn ten_thousand_connections_cost_nothing_while_idle_and_nothing_extra_when_busy() {
    let mut small = Pair::new(TcpConfig::default(), TcpConfig::default(), 1);
    let few = open(&mut small, 10);
    let mut big = Pair::new(TcpConfig::default(), TcpConfig::default(), 1);
    let many = open(&mut big, MANY);
    assert_eq!(big.client.connection_count(), MANY);
    assert_eq!(big.server.connection_count(), MANY);
    // Idle connections arm no timers and wait on no list.
    assert_eq!(big.server.poll_timeout(), None);
    let mut buf = vec![0u8; 2048];
    assert!(big.server.poll_transmit(big.now, &mut buf).is_none());
    assert_eq!(big.server.buffer_chunks_in_use(), 0);
    // Warm up, then compare a busy connection's cost in both endpoints.
    echo_cost(&mut small, few[5].0, few[5].1, 200);
    echo_cost(&mut big, many[5000].0, many[5000].1, 200);
    let t_small = echo_cost(&mut small, few[5].0, few[5].1, 2000);
    let t_big = echo_cost(&mut big, many[5000].0, many[5000].1, 2000);
    println!(
        "echo round trip: {:?} with 10 connections, {:?} with {MANY}",
        t_small / 2000,
        t_big / 2000
    );
    assert!(
        t_big < t_small * 4 + std::time::Duration::from_millis(20),
        "{t_big:?} vs {t_small:?}"
    );
    big.server.debug_check_invariants();
}

#[test]
fn a_hundred_thousand_idle_connections_arm_nothing_and_hold_no_buffers() {
    const HUNDRED_K: usize = 100_000;
    let mut pair = Pair::new(TcpConfig::default(), TcpConfig::default(), 3);
    let listener = pair.listen(ListenOptions {
        syn_backlog: 1 << 17,
        accept_backlog: 1 << 17,
        ..ListenOptions::default()
    });
    // Ports run out at 64 Ki per address: spread the clients over four addresses. Connect
    // in batches the size of the reply queue, as a stack polling between bursts would.
    let mut accepted = 0;
    for batch in 0..HUNDRED_K / 2000 {
        for i in batch * 2000..(batch + 1) * 2000 {
            let ip = std::net::Ipv4Addr::new(10, 0, 1, (i / 25_000) as u8 + 1);
            let local = std::net::SocketAddr::new(ip.into(), 20_000 + (i % 25_000) as u16);
            pair.client
                .connect(
                    pair.now,
                    0,
                    local,
                    server_addr(),
                    hoststack_tcp::ConnOptions::default(),
                )
                .unwrap();
        }
        pair.run_until(10_000, |p| {
            while p.server.accept(listener).unwrap().is_some() {
                accepted += 1;
            }
            accepted == (batch + 1) * 2000
        });
    }
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.server.connection_count(), HUNDRED_K);
    assert_eq!(pair.server.poll_timeout(), None);
    assert_eq!(pair.client.poll_timeout(), None);
    assert_eq!(pair.server.buffer_chunks_in_use(), 0);
    assert_eq!(pair.server.half_open_count(), 0);
}

#[test]
fn ten_thousand_connections_close_into_time_wait_entries() {
    let mut pair = Pair::new(TcpConfig::default(), TcpConfig::default(), 2);
    let conns = open(&mut pair, MANY);
    for &(c, s) in &conns {
        pair.client.close(c).unwrap();
        pair.server.close(s).unwrap();
    }
    pair.run_until(10_000, |p| {
        p.client_events
            .iter()
            .filter(|e| matches!(e, TcpEvent::Closed { .. }))
            .count()
            == MANY
    });
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.client.connection_count(), 0);
    assert_eq!(
        pair.client.time_wait_count() + pair.server.time_wait_count(),
        2 * MANY
    );
    pair.advance(Duration::from_secs(61));
    assert_eq!(pair.client.time_wait_count(), 0);
    assert_eq!(pair.server.time_wait_count(), 0);
}
