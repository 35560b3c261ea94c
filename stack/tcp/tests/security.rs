//! Defences against blind attackers and stale segments: RFC 5961 challenge ACKs, RFC 7323
//! PAWS, RFC 6528 ISNs, RFC 4987 SYN cookies.

mod util;

use hoststack_tcp::{ListenOptions, TcpConfig, TcpEvent, TcpState};
use smoltcp::wire::TcpControl;
use util::*;

struct Attack {
    pair: Pair,
    server: hoststack_tcp::ConnHandle,
    /// Next sequence number the server expects from the client.
    rcv_nxt: u32,
    /// Next sequence number the server will send.
    snd_nxt: u32,
}

fn attack(config: TcpConfig) -> Attack {
    let mut pair = Pair::new(TcpConfig::default(), config, 3);
    let (_, s) = pair.established();
    pair.settle(hoststack_tcp::Duration::from_secs(1));
    let info = pair.server.info(s).unwrap();
    Attack {
        rcv_nxt: info.irs.wrapping_add(1),
        snd_nxt: info.iss.wrapping_add(1),
        server: s,
        pair,
    }
}

fn from_client() -> Craft {
    Craft::new(client_addr(40_000), server_addr())
}

#[test]
fn in_window_rst_earns_a_challenge_ack_and_the_connection_survives() {
    let mut a = attack(TcpConfig::default());
    let mut rst = from_client();
    rst.control = TcpControl::Rst;
    rst.seq = a.rcv_nxt.wrapping_add(1000);
    rst.send_to(&mut a.pair.server, a.pair.now);
    let out = drain(&mut a.pair.server, a.pair.now);
    assert_eq!(out.len(), 1);
    let ack = out[0].repr();
    assert_eq!(ack.control, TcpControl::None);
    assert_eq!(ack.ack_number.unwrap().0 as u32, a.rcv_nxt);
    assert_eq!(a.pair.server.counters().challenge_acks, 1);
    assert_eq!(
        a.pair.server.info(a.server).unwrap().state,
        TcpState::Established
    );
    // Outside the window it is ignored silently.
    rst.seq = a.rcv_nxt.wrapping_add(100_000_000);
    rst.send_to(&mut a.pair.server, a.pair.now);
    assert!(drain(&mut a.pair.server, a.pair.now).is_empty());
    assert_eq!(a.pair.server.counters().rst_ignored, 1);
    // The exact sequence number resets.
    rst.seq = a.rcv_nxt;
    rst.send_to(&mut a.pair.server, a.pair.now);
    assert!(events(&mut a.pair.server).contains(&TcpEvent::Reset {
        conn: a.server,
        reason: hoststack_tcp::ResetReason::Peer
    }));
    assert!(a.pair.server.info(a.server).is_none());
}

#[test]
fn syn_on_an_established_connection_earns_a_challenge_ack() {
    let mut a = attack(TcpConfig::default());
    let mut syn = from_client();
    syn.control = TcpControl::Syn;
    syn.seq = a.rcv_nxt.wrapping_add(5);
    syn.send_to(&mut a.pair.server, a.pair.now);
    let out = drain(&mut a.pair.server, a.pair.now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].repr().control, TcpControl::None);
    assert_eq!(a.pair.server.counters().challenge_acks, 1);
    assert_eq!(
        a.pair.server.info(a.server).unwrap().state,
        TcpState::Established
    );
}

#[test]
fn blind_data_with_an_unacceptable_ack_is_dropped_with_a_challenge_ack() {
    let mut a = attack(TcpConfig::default());
    let mut data = from_client();
    data.seq = a.rcv_nxt;
    data.ack = Some(a.snd_nxt.wrapping_sub(1 << 30));
    data.payload = b"injected".to_vec();
    data.send_to(&mut a.pair.server, a.pair.now);
    let out = drain(&mut a.pair.server, a.pair.now);
    assert_eq!(out.len(), 1);
    assert_eq!(a.pair.server.recv_available(a.server).unwrap(), 0);
    assert_eq!(a.pair.server.counters().bad_ack, 1);
    assert_eq!(a.pair.server.counters().challenge_acks, 1);
    // Acknowledging data never sent is refused the same way.
    data.ack = Some(a.snd_nxt.wrapping_add(10_000));
    data.send_to(&mut a.pair.server, a.pair.now);
    assert_eq!(a.pair.server.recv_available(a.server).unwrap(), 0);
    assert_eq!(a.pair.server.counters().bad_ack, 2);
    // With a good ACK the same bytes are accepted.
    data.ack = Some(a.snd_nxt);
    data.send_to(&mut a.pair.server, a.pair.now);
    assert_eq!(a.pair.server.recv_available(a.server).unwrap(), 8);
}

#[test]
fn challenge_acks_are_rate_limited() {
    let config = TcpConfig {
        challenge_ack_limit: 5,
        ..TcpConfig::default()
    };
    let mut a = attack(config);
    let mut rst = from_client();
    rst.control = TcpControl::Rst;
    let mut acks = 0;
    for i in 0..20u32 {
        rst.seq = a.rcv_nxt.wrapping_add(100 + i);
        rst.send_to(&mut a.pair.server, a.pair.now);
        acks += drain(&mut a.pair.server, a.pair.now).len();
    }
    assert_eq!(acks, 5);
    assert_eq!(a.pair.server.counters().challenge_acks, 5);
    assert_eq!(a.pair.server.counters().challenge_acks_suppressed, 15);
}

#[test]
fn paws_rejects_a_segment_with_an_old_timestamp() {
    let mut a = attack(TcpConfig::default());
    a.pair.log(true);
    a.pair.server.send(a.server, b"ping").unwrap();
    a.pair.settle(hoststack_tcp::Duration::from_secs(1));
    let last = a.pair.sent_to_server().last().unwrap().repr();
    let (tsval, tsecr) = {
        let ts = last.timestamp.unwrap();
        (ts.tsval, ts.tsecr)
    };
    let mut old = from_client();
    old.seq = a.rcv_nxt;
    old.ack = Some(a.snd_nxt.wrapping_add(4));
    old.payload = b"replayed".to_vec();
    old.timestamp = Some((tsval.wrapping_sub(10_000), tsecr));
    old.send_to(&mut a.pair.server, a.pair.now);
    assert_eq!(a.pair.server.counters().paws_rejected, 1);
    assert_eq!(a.pair.server.recv_available(a.server).unwrap(), 0);
    // A current timestamp gets through.
    old.timestamp = Some((tsval, tsecr));
    old.send_to(&mut a.pair.server, a.pair.now);
    assert_eq!(a.pair.server.recv_available(a.server).unwrap(), 8);
}

#[test]
fn isns_differ_per_flow_and_per_secret_and_advance_with_time() {
    let mut pair = Pair::default_pair();
    pair.listen(ListenOptions::default());
    let a = pair.connect(40_000);
    let b = pair.connect(40_001);
    let isn_a = pair.client.info(a).unwrap().iss;
    let isn_b = pair.client.info(b).unwrap().iss;
    assert_ne!(isn_a, isn_b);
    let mut other = Pair::new(
        TcpConfig {
            secret: 12345,
            ..TcpConfig::default()
        },
        TcpConfig::default(),
        1,
    );
    let c = other.connect(40_000);
    assert_ne!(other.client.info(c).unwrap().iss, isn_a);
    // Same flow, same secret, one second later: 250,000 ticks of the 4 µs clock further.
    pair.client.abort(a).unwrap();
    pair.advance(hoststack_tcp::Duration::from_secs(1));
    let again = pair.connect(40_000);
    let later = pair.client.info(again).unwrap().iss;
    assert_eq!(later.wrapping_sub(isn_a), 250_000);
}

fn cookie_pair(client: TcpConfig) -> (Pair, hoststack_tcp::ListenerId) {
    let mut pair = Pair::new(client, TcpConfig::default(), 4);
    let listener = pair.listen(ListenOptions {
        syn_backlog: 0,
        ..ListenOptions::default()
    });
    (pair, listener)
}

fn accept_one(pair: &mut Pair, listener: hoststack_tcp::ListenerId) -> hoststack_tcp::ConnHandle {
    let mut s = None;
    pair.run_until(200, |p| {
        s = s.or_else(|| p.server.accept(listener).unwrap());
        s.is_some()
    });
    s.unwrap()
}

#[test]
fn syn_queue_full_answers_with_a_cookie_that_establishes_with_timestamps() {
    let (mut pair, listener) = cookie_pair(TcpConfig::default());
    let c = pair.connect(40_000);
    let s = accept_one(&mut pair, listener);
    assert_eq!(pair.server.counters().syn_cookies_sent, 1);
    assert_eq!(pair.server.counters().syn_cookies_accepted, 1);
    assert_eq!(pair.server.half_open_count(), 0);
    let si = pair.server.info(s).unwrap();
    let ci = pair.client.info(c).unwrap();
    assert!(
        si.timestamps && si.sack,
        "the TSval carried SACK permission"
    );
    assert_eq!(
        si.snd_wscale, ci.rcv_wscale,
        "the TSval carried the window scale"
    );
    assert_eq!(si.rcv_wscale, ci.snd_wscale);
    assert_eq!(si.mss, 1448);
    let data = pattern(300_000, 5);
    transfer(&mut pair, true, c, s, &data, 10_000);
    transfer(&mut pair, false, s, c, &data, 10_000);
}

#[test]
fn cookie_without_timestamps_falls_back_to_no_scaling_and_no_sack() {
    let (mut pair, listener) = cookie_pair(TcpConfig {
        timestamps: false,
        ..TcpConfig::default()
    });
    let c = pair.connect(40_000);
    let s = accept_one(&mut pair, listener);
    let si = pair.server.info(s).unwrap();
    assert!(!si.timestamps && !si.sack);
    assert_eq!((si.snd_wscale, si.rcv_wscale), (0, 0));
    assert_eq!(pair.client.info(c).unwrap().snd_wscale, 0);
    assert_eq!(si.mss, 1460);
    let data = pattern(200_000, 6);
    transfer(&mut pair, true, c, s, &data, 10_000);
}

#[test]
fn a_bad_cookie_is_refused_with_rst() {
    let (mut pair, _) = cookie_pair(TcpConfig::default());
    pair.connect(40_000);
    pair.flush();
    pair.step();
    assert_eq!(pair.server.counters().syn_cookies_sent, 1);
    let mut forged = Craft::new(client_addr(40_001), server_addr());
    forged.seq = 1000;
    forged.ack = Some(0xdead_beef);
    forged.send_to(&mut pair.server, pair.now);
    assert_eq!(pair.server.counters().bad_cookies, 1);
    assert_eq!(pair.server.connection_count(), 0);
    let out = drain(&mut pair.server, pair.now);
    assert!(out.iter().any(|p| p.repr().control == TcpControl::Rst));
}

#[test]
fn an_ack_to_a_listener_that_never_sent_cookies_gets_rst_not_a_cookie_check() {
    let mut pair = Pair::default_pair();
    pair.listen(ListenOptions::default());
    let mut ack = from_client();
    ack.seq = 1;
    ack.ack = Some(1);
    ack.send_to(&mut pair.server, pair.now);
    assert_eq!(pair.server.counters().bad_cookies, 0);
    assert_eq!(pair.server.counters().rst_sent, 1);
}

#[test]
fn accept_queue_full_drops_the_final_ack_until_the_app_accepts() {
    let mut pair = Pair::default_pair();
    let listener = pair.listen(ListenOptions {
        accept_backlog: 1,
        ..ListenOptions::default()
    });
    let first = pair.connect(40_000);
    let second = pair.connect(40_001);
    pair.run_until(200, |p| {
        p.client_saw(TcpEvent::Connected { conn: first })
            && p.client_saw(TcpEvent::Connected { conn: second })
    });
    pair.settle(hoststack_tcp::Duration::from_millis(100));
    assert_eq!(pair.server.accept_queue_len(listener).unwrap(), 1);
    assert!(pair.server.counters().accept_queue_full >= 1);
    assert_eq!(
        pair.server.half_open_count(),
        1,
        "the second stays half-open"
    );
    // The client believes it is connected and sends; the server only takes the data once
    // the queue has room and a retransmission arrives.
    pair.client.send(second, b"hello").unwrap();
    let s1 = pair.server.accept(listener).unwrap().unwrap();
    let mut s2 = None;
    pair.run_until(10_000, |p| {
        s2 = s2.or_else(|| p.server.accept(listener).unwrap());
        s2.is_some()
    });
    let s2 = s2.unwrap();
    assert_ne!(s1, s2);
    pair.run_until(1000, |p| p.server.recv_available(s2).unwrap() == 5);
}

#[test]
fn a_syn_flood_is_absorbed_by_cookies_while_real_clients_connect() {
    let mut pair = Pair::default_pair();
    let listener = pair.listen(ListenOptions {
        syn_backlog: 64,
        accept_backlog: 1024,
        ..ListenOptions::default()
    });
    let mut rng = Rng::new(99);
    for i in 0..20_000u32 {
        let src = std::net::SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 | (i & 0xFFFF))),
            (1024 + rng.below(60_000)) as u16,
        );
        let mut syn = Craft::new(src, server_addr());
        syn.control = TcpControl::Syn;
        syn.seq = rng.next_u64() as u32;
        syn.mss = Some(1460);
        syn.send_to(&mut pair.server, pair.now);
        let _ = drain(&mut pair.server, pair.now);
    }
    assert_eq!(pair.server.half_open_count(), 64);
    assert!(pair.server.counters().syn_cookies_sent > 19_000);
    let c = pair.connect(40_000);
    let s = accept_one(&mut pair, listener);
    transfer(&mut pair, true, c, s, &pattern(10_000, 1), 1000);
}
