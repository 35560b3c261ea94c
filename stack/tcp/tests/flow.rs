//! Flow control, timers and segment sizing: zero windows and persist probes, Nagle, delayed
//! and quick ACKs, keepalive, window scaling and MSS negotiation, TSO bursts.

mod util;

use std::net::SocketAddr;

use hoststack_tcp::{
    ConnOptions, Duration, KeepaliveConfig, ListenOptions, ResetReason, TcpConfig, TcpEndpoint,
    TcpEvent, TcpState,
};
use util::*;

fn established_with(
    server: ListenOptions,
    client: TcpConfig,
    server_config: TcpConfig,
) -> (Pair, hoststack_tcp::ConnHandle, hoststack_tcp::ConnHandle) {
    let mut pair = Pair::new(client, server_config, 21);
    let listener = pair.listen(server);
    let c = pair.connect(40_000);
    let mut s = None;
    pair.run_until(1000, |p| {
        s = s.or_else(|| p.server.accept(listener).unwrap());
        s.is_some() && p.client_saw(TcpEvent::Connected { conn: c })
    });
    (pair, c, s.unwrap())
}

#[test]
fn a_reader_that_stops_closes_the_window_and_reading_reopens_it() {
    let opts = ListenOptions {
        conn: ConnOptions {
            recv_buffer: Some(16 * 1024),
            ..ConnOptions::default()
        },
        ..ListenOptions::default()
    };
    let (mut pair, c, s) = established_with(opts, TcpConfig::default(), TcpConfig::default());
    let data = pattern(100_000, 1);
    let mut sent = pair.client.send(c, &data).unwrap();
    pair.advance(Duration::from_secs(10));
    assert_eq!(pair.server.recv_available(s).unwrap(), 16 * 1024);
    let info = pair.client.info(c).unwrap();
    assert_eq!(info.snd_wnd, 0, "the window closed");
    let probes = pair.client.counters().zero_window_probes;
    assert!(
        probes >= 3,
        "persist timer probes the closed window: {probes}"
    );
    assert_eq!(info.state, TcpState::Established);
    // Reading reopens the window; the sender learns it from a window update.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    pair.run_until(10_000, |p| {
        if sent < data.len() {
            sent += p.client.send(c, &data[sent..]).unwrap();
        }
        loop {
            let n = p.server.recv(s, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == data.len()
    });
    assert!(got == data);
    assert!(pair.server.counters().window_updates >= 1);
}

#[test]
fn nagle_holds_a_second_small_segment_until_the_first_is_acked() {
    for nodelay in [false, true] {
        let mut pair = Pair::default_pair();
        let (c, _) = pair.established();
        pair.client.set_nodelay(c, nodelay).unwrap();
        pair.log(true);
        let start = pair.now;
        pair.client.send(c, &[1; 100]).unwrap();
        pair.client.send(c, &[2; 100]).unwrap();
        pair.flush();
        pair.client.send(c, &[3; 100]).unwrap();
        pair.settle(Duration::from_secs(1));
        let data: Vec<(u64, usize)> = pair
            .sent_to_server()
            .iter()
            .filter(|p| !p.repr().payload.is_empty())
            .map(|p| ((p.at - start).total_millis(), p.repr().payload.len()))
            .collect();
        if nodelay {
            assert_eq!(data, vec![(0, 200), (0, 100)], "no-delay sends at once");
        } else {
            assert_eq!(data, vec![(0, 200), (10, 100)], "Nagle waits one RTT");
        }
    }
}

#[test]
fn quick_acks_at_the_start_then_delayed_acks_every_second_segment() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.client.set_nodelay(c, true).unwrap();
    // Quick-ACK mode: the first segments are acknowledged at once.
    transfer(&mut pair, true, c, s, &pattern(1000, 1), 100);
    assert_eq!(pair.server.counters().delayed_acks, 0);
    for _ in 0..20 {
        transfer(&mut pair, true, c, s, &pattern(100, 2), 100);
        pair.settle(Duration::from_secs(1));
    }
    // Now a lone small segment waits for the 40 ms delayed-ACK timer.
    pair.log(true);
    let delayed = pair.server.counters().delayed_acks;
    let start = pair.now;
    pair.client.send(c, b"lonely").unwrap();
    pair.settle(Duration::from_secs(1));
    let ack_at = pair
        .sent_to_client()
        .iter()
        .map(|p| (p.at - start).total_millis())
        .next()
        .unwrap();
    assert_eq!(ack_at, 45, "5 ms link + 40 ms delay");
    assert_eq!(pair.server.counters().delayed_acks, delayed + 1);
    // Two full segments are acknowledged immediately.
    pair.clear_logs();
    let mss = pair.client.info(c).unwrap().mss as usize;
    let start = pair.now;
    pair.client.send(c, &pattern(2 * mss, 3)).unwrap();
    pair.settle(Duration::from_secs(1));
    let ack_at = (pair.sent_to_client()[0].at - start).total_millis();
    assert_eq!(ack_at, 5);
    assert_eq!(pair.server.counters().delayed_acks, delayed + 1);
}

#[test]
fn keepalive_probes_an_idle_peer_and_resets_a_dead_one() {
    let keepalive = KeepaliveConfig {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        probes: 3,
    };
    let mut pair = Pair::default_pair();
    let (c, _) = pair.established();
    pair.client.set_keepalive(c, Some(keepalive)).unwrap();
    pair.advance(Duration::from_secs(35));
    assert!(pair.client.counters().keepalive_probes >= 3);
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::Established);
    // The peer vanishes: three unanswered probes later the connection is reset.
    pair.filter_to_client(Some(Box::new(|_| false)));
    let start = pair.now;
    pair.run_until(1000, |p| {
        p.client_saw(TcpEvent::Reset {
            conn: c,
            reason: ResetReason::KeepaliveTimeout,
        })
    });
    assert!(pair.now - start <= Duration::from_secs(14));
    assert_eq!(pair.client.counters().keepalive_timeouts, 1);
}

#[test]
fn keepalive_is_off_by_default() {
    let mut pair = Pair::default_pair();
    let (c, _) = pair.established();
    pair.advance(Duration::from_secs(3 * 3600));
    assert_eq!(pair.client.counters().keepalive_probes, 0);
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::Established);
    assert_eq!(
        pair.client.poll_timeout(),
        None,
        "an idle connection arms no timer"
    );
}

#[test]
fn window_scaling_is_negotiated_only_when_both_sides_offer_it() {
    let off = TcpConfig {
        window_scaling: false,
        ..TcpConfig::default()
    };
    for (client, server, want) in [
        (TcpConfig::default(), TcpConfig::default(), 7),
        (TcpConfig::default(), off.clone(), 0),
        (off.clone(), TcpConfig::default(), 0),
    ] {
        let (mut pair, c, s) = established_with(ListenOptions::default(), client, server);
        let ci = pair.client.info(c).unwrap();
        let si = pair.server.info(s).unwrap();
        assert_eq!((ci.rcv_wscale, ci.snd_wscale), (want, want));
        assert_eq!((si.rcv_wscale, si.snd_wscale), (want, want));
        let data = pattern(500_000, 4);
        transfer(&mut pair, true, c, s, &data, 10_000);
        if want == 0 {
            assert!(pair.client.info(c).unwrap().snd_wnd <= 65535);
        } else {
            assert!(pair.client.info(c).unwrap().snd_wnd > 65535);
        }
    }
}

#[test]
fn mss_follows_the_mtu_and_is_clamped_by_the_peer() {
    let jumbo = TcpConfig {
        mtu: 9000,
        ..TcpConfig::default()
    };
    let (pair, c, s) = established_with(ListenOptions::default(), jumbo, TcpConfig::default());
    // The peer offered 1460: both send 1460 minus 12 bytes of timestamp option.
    assert_eq!(pair.client.info(c).unwrap().mss, 1448);
    assert_eq!(pair.server.info(s).unwrap().mss, 1448);
    let small = TcpConfig {
        mtu: 1280,
        timestamps: false,
        ..TcpConfig::default()
    };
    let (pair, c, s) = established_with(ListenOptions::default(), small, TcpConfig::default());
    assert_eq!(pair.client.info(c).unwrap().mss, 1240);
    assert_eq!(pair.server.info(s).unwrap().mss, 1240);
}

#[test]
fn ipv6_uses_mtu_minus_60() {
    let now = start_time();
    let mut a = TcpEndpoint::new(TcpConfig::default(), now);
    let mut b = TcpEndpoint::new(TcpConfig::default(), now);
    let server: SocketAddr = "[fd00::2]:80".parse().unwrap();
    let client: SocketAddr = "[fd00::1]:5000".parse().unwrap();
    let l = b.listen(0, server, ListenOptions::default()).unwrap();
    let c = a
        .connect(now, 0, client, server, ConnOptions::default())
        .unwrap();
    let mut buf = vec![0u8; 2000];
    for _ in 0..3 {
        deliver(&mut a, &mut b, now, &mut buf);
        deliver(&mut b, &mut a, now, &mut buf);
    }
    let s = b.accept(l).unwrap().unwrap();
    assert_eq!(a.info(c).unwrap().mss, 1428);
    assert_eq!(b.info(s).unwrap().mss, 1428);
}

#[test]
fn tso_bursts_carry_several_segments_and_arrive_byte_exact() {
    let tso = TcpConfig {
        max_tso_segments: 16,
        ..TcpConfig::default()
    };
    let (mut pair, c, s) = established_with(ListenOptions::default(), tso, TcpConfig::default());
    pair.log(true);
    let data = pattern(1 << 20, 5);
    transfer(&mut pair, true, c, s, &data, 10_000);
    let packets = pair.sent_to_server().len() as u64;
    let transmits = pair.client.counters().segments_out;
    assert!(
        transmits * 3 < packets,
        "{transmits} transmits for {packets} wire segments"
    );
    assert!(pair.sent_to_server().iter().all(|p| p.bytes.len() <= 1480));
}

#[test]
fn writable_fires_when_a_full_send_buffer_drains() {
    let mut pair = Pair::default_pair();
    let listener = pair.listen(ListenOptions::default());
    let c = pair
        .client
        .connect(
            pair.now,
            0,
            client_addr(40_000),
            server_addr(),
            ConnOptions {
                send_buffer: Some(8192),
                ..ConnOptions::default()
            },
        )
        .unwrap();
    let data = pattern(100_000, 6);
    assert_eq!(
        pair.client.send(c, &data).unwrap(),
        8192,
        "queued before connected"
    );
    assert_eq!(pair.client.send_space(c).unwrap(), 0);
    pair.run_until(1000, |p| p.client_saw(TcpEvent::Writable { conn: c }));
    assert!(pair.client.send_space(c).unwrap() > 0);
    let s = pair.server.accept(listener).unwrap().unwrap();
    let mut buf = vec![0u8; 10_000];
    pair.run_until(100, |p| p.server.recv_available(s).unwrap() == 8192);
    assert_eq!(pair.server.recv(s, &mut buf).unwrap(), 8192);
    assert_eq!(&buf[..8192], &data[..8192]);
}

#[test]
fn recv_with_offers_data_in_place() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    let data = pattern(20_000, 7);
    pair.client.send(c, &data).unwrap();
    pair.run_until(100, |p| p.server.recv_available(s).unwrap() == data.len());
    let mut got = Vec::new();
    // Take 1000 bytes, then stop: the rest stays readable.
    let taken = pair
        .server
        .recv_with(s, |chunk| {
            let n = chunk.len().min(1000 - got.len());
            got.extend_from_slice(&chunk[..n]);
            n
        })
        .unwrap();
    assert_eq!(taken, 1000);
    assert_eq!(pair.server.recv_available(s).unwrap(), data.len() - 1000);
    pair.server
        .recv_with(s, |chunk| {
            got.extend_from_slice(chunk);
            chunk.len()
        })
        .unwrap();
    assert!(got == data);
    assert_eq!(
        pair.server.buffer_chunks_in_use(),
        0,
        "drained buffers hold no memory"
    );
}
