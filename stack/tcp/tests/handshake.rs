//! Connection setup and teardown: the RFC 9293 state machine end to end.

mod util;

use hoststack_tcp::{
    ConnHandle, ConnOptions, ConnectFailure, Duration, ListenOptions, TcpConfig, TcpError,
    TcpEvent, TcpState,
};
use smoltcp::wire::TcpControl;
use util::*;

#[test]
fn handshake_establishes_both_sides_and_moves_data() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::Established);
    assert_eq!(pair.server.info(s).unwrap().state, TcpState::Established);
    let data = pattern(100_000, 1);
    transfer(&mut pair, true, c, s, &data, 10_000);
    let back = pattern(50_000, 2);
    transfer(&mut pair, false, s, c, &back, 10_000);
    pair.server.debug_check_invariants();
    pair.client.debug_check_invariants();
    assert_eq!(pair.server.counters().passive_opens, 1);
    assert_eq!(pair.client.counters().active_opens, 1);
}

#[test]
fn the_app_hears_of_a_passive_connection_only_once_established() {
    let mut pair = Pair::default_pair();
    let listener = pair.listen(ListenOptions::default());
    pair.connect(40_000);
    // SYN reaches the server: a half-open entry, no connection, no event.
    pair.flush();
    pair.step();
    assert_eq!(pair.server.half_open_count(), 1);
    assert_eq!(pair.server.connection_count(), 0);
    assert!(pair.server_events.is_empty());
    pair.run_until(100, |p| p.server.connection_count() == 1);
    assert!(pair.server_saw(TcpEvent::AcceptReady { listener }));
    assert_eq!(pair.server.half_open_count(), 0);
}

/// Both sides connect to each other at once: their SYNs cross.
fn connect_both_ways(pair: &mut Pair) -> (ConnHandle, ConnHandle) {
    let c = pair.connect(40_000);
    let s = pair
        .server
        .connect(
            pair.now,
            0,
            server_addr(),
            client_addr(40_000),
            ConnOptions::default(),
        )
        .unwrap();
    (c, s)
}

#[test]
fn simultaneous_open_reaches_established_on_both_sides() {
    let mut pair = Pair::default_pair();
    let (c, s) = connect_both_ways(&mut pair);
    pair.run_until(1000, |p| {
        p.client_saw(TcpEvent::Connected { conn: c })
            && p.server_saw(TcpEvent::Connected { conn: s })
    });
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::Established);
    assert_eq!(pair.server.info(s).unwrap().state, TcpState::Established);
    let data = pattern(20_000, 3);
    transfer(&mut pair, true, c, s, &data, 10_000);
    transfer(&mut pair, false, s, c, &data, 10_000);
}

#[test]
fn close_during_a_simultaneous_open_sends_the_fin_once_established() {
    let mut pair = Pair::default_pair();
    let (c, s) = connect_both_ways(&mut pair);
    pair.client.send(c, b"early").unwrap();
    pair.flush();
    pair.step();
    // Both sides are in SYN-RECEIVED now; the client closes before the handshake ends.
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::SynReceived);
    pair.client.close(c).unwrap();
    pair.run_until(1000, |p| p.server_saw(TcpEvent::RemoteClosed { conn: s }));
    let mut buf = [0u8; 16];
    assert_eq!(pair.server.recv(s, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"early");
    pair.server.close(s).unwrap();
    close_both(&mut pair, c, s);
}

fn close_both(pair: &mut Pair, c: ConnHandle, s: ConnHandle) {
    pair.run_until(10_000, |p| {
        let mut buf = [0u8; 1024];
        let _ = p.client.recv(c, &mut buf);
        let _ = p.server.recv(s, &mut buf);
        p.client_saw(TcpEvent::Closed { conn: c }) && p.server_saw(TcpEvent::Closed { conn: s })
    });
}

#[test]
fn active_close_goes_through_fin_wait_and_leaves_time_wait_on_the_closer() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.client.close(c).unwrap();
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::FinWait1);
    pair.run_until(100, |p| p.server_saw(TcpEvent::RemoteClosed { conn: s }));
    assert_eq!(pair.server.info(s).unwrap().state, TcpState::CloseWait);
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::FinWait2);
    // Half-close: the server can still send, the client can still read.
    let data = pattern(5000, 4);
    transfer(&mut pair, false, s, c, &data, 1000);
    pair.server.close(s).unwrap();
    assert_eq!(pair.server.info(s).unwrap().state, TcpState::LastAck);
    close_both(&mut pair, c, s);
    assert_eq!(pair.client.time_wait_count(), 1);
    assert_eq!(pair.server.time_wait_count(), 0);
    assert_eq!(pair.client.connection_count(), 0);
    assert_eq!(pair.server.connection_count(), 0);
    let stale = pair.client.counters().stale_handle;
    assert_eq!(pair.client.send(c, b"x"), Err(TcpError::StaleHandle));
    assert_eq!(pair.client.counters().stale_handle, stale + 1);
    // TIME-WAIT lasts 2 MSL and then goes away.
    pair.advance(Duration::from_secs(61));
    assert_eq!(pair.client.time_wait_count(), 0);
}

#[test]
fn fin_wait_1_straight_to_time_wait_when_the_fin_acks_ours() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.server.set_nodelay(s, true).unwrap();
    // The server closes as soon as it sees our FIN, so its FIN carries the ACK of ours
    // (delayed-ACK merging): FIN-WAIT-1 -> TIME-WAIT without FIN-WAIT-2.
    pair.client.close(c).unwrap();
    pair.flush();
    let mut server_closed = false;
    pair.run_until(1000, |p| {
        if !server_closed && p.server_saw(TcpEvent::RemoteClosed { conn: s }) {
            p.server.close(s).unwrap();
            server_closed = true;
        }
        p.client_saw(TcpEvent::Closed { conn: c }) && p.server_saw(TcpEvent::Closed { conn: s })
    });
    assert_eq!(pair.client.time_wait_count(), 1);
    assert_eq!(pair.client.counters().time_wait_entered, 1);
}

#[test]
fn simultaneous_close_passes_closing_and_both_sides_time_wait() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.client.close(c).unwrap();
    pair.server.close(s).unwrap();
    pair.flush();
    // Both FINs are in flight: each side receives a FIN that does not ack its own.
    pair.step();
    let cs = pair.client.info(c).map(|i| i.state);
    assert!(
        matches!(
            cs,
            Some(TcpState::Closing) | Some(TcpState::TimeWait) | None
        ),
        "{cs:?}"
    );
    close_both(&mut pair, c, s);
    assert_eq!(pair.client.time_wait_count(), 1);
    assert_eq!(pair.server.time_wait_count(), 1);
}

#[test]
fn unread_data_keeps_the_connection_until_the_app_reads_it() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.server.send(s, b"last words").unwrap();
    pair.server.close(s).unwrap();
    pair.client.close(c).unwrap();
    pair.settle(Duration::from_secs(1));
    // The client is in TIME-WAIT but still holds the data: no Closed yet.
    assert_eq!(pair.client.info(c).unwrap().state, TcpState::TimeWait);
    assert!(!pair.client_saw(TcpEvent::Closed { conn: c }));
    let mut buf = [0u8; 64];
    assert_eq!(pair.client.recv(c, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"last words");
    pair.flush();
    assert!(pair.client_saw(TcpEvent::Closed { conn: c }));
    assert_eq!(pair.client.time_wait_count(), 1);
}

#[test]
fn time_wait_is_reused_by_a_syn_with_a_newer_timestamp() {
    let mut pair = Pair::default_pair();
    let listener = pair.listen(ListenOptions::default());
    let c = pair.connect(40_000);
    let mut s = None;
    pair.run_until(100, |p| {
        s = s.or_else(|| p.server.accept(listener).unwrap());
        s.is_some()
    });
    let s = s.unwrap();
    // The server closes first, so the TIME-WAIT entry sits next to the listener.
    pair.server.close(s).unwrap();
    pair.run_until(100, |p| p.client_saw(TcpEvent::RemoteClosed { conn: c }));
    pair.client.close(c).unwrap();
    close_both(&mut pair, c, s);
    assert_eq!(pair.server.time_wait_count(), 1);
    pair.advance(Duration::from_secs(1));
    // Same 4-tuple again, well within 2 MSL: its SYN carries a newer TSval.
    let c2 = pair.connect(40_000);
    let mut s2 = None;
    pair.run_until(100, |p| {
        s2 = s2.or_else(|| p.server.accept(listener).unwrap());
        s2.is_some()
    });
    assert_eq!(pair.server.counters().time_wait_reused, 1);
    assert_eq!(pair.server.time_wait_count(), 0);
    let s2 = s2.unwrap();
    let old_iss = pair.server.info(s2).unwrap().iss;
    let data = pattern(10_000, 9);
    transfer(&mut pair, true, c2, s2, &data, 1000);
    assert_ne!(old_iss, 0);
}

#[test]
fn time_wait_without_timestamps_reuses_only_for_a_higher_sequence_number() {
    let config = TcpConfig {
        timestamps: false,
        ..TcpConfig::default()
    };
    let mut pair = Pair::new(config.clone(), config, 5);
    let listener = pair.listen(ListenOptions::default());
    let c = pair.connect(40_000);
    let mut s = None;
    pair.run_until(100, |p| {
        s = s.or_else(|| p.server.accept(listener).unwrap());
        s.is_some()
    });
    let s = s.unwrap();
    let client_isn = pair.client.info(c).unwrap().iss;
    pair.server.close(s).unwrap();
    pair.run_until(100, |p| p.client_saw(TcpEvent::RemoteClosed { conn: c }));
    pair.client.close(c).unwrap();
    close_both(&mut pair, c, s);
    assert_eq!(pair.server.time_wait_count(), 1);
    // An old SYN (sequence number below the old connection's) is answered, not accepted.
    let mut syn = Craft::new(client_addr(40_000), server_addr());
    syn.control = TcpControl::Syn;
    syn.seq = client_isn.wrapping_sub(1000);
    syn.send_to(&mut pair.server, pair.now);
    let out = drain(&mut pair.server, pair.now);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].repr().control,
        TcpControl::None,
        "an ACK, not a SYN-ACK"
    );
    assert_eq!(pair.server.time_wait_count(), 1);
    // A fresh connect uses a later ISN (the 4 µs clock moved on) and reuses the entry.
    pair.advance(Duration::from_secs(2));
    let c2 = pair.connect(40_000);
    pair.run_until(100, |p| p.client_saw(TcpEvent::Connected { conn: c2 }));
    assert_eq!(pair.server.counters().time_wait_reused, 1);
}

#[test]
fn connect_to_a_closed_port_is_refused_by_rst() {
    let mut pair = Pair::default_pair();
    let c = pair.connect(40_000);
    pair.run_until(100, |p| !p.client_events.is_empty());
    assert_eq!(
        pair.client_events,
        vec![TcpEvent::ConnectFailed {
            conn: c,
            reason: ConnectFailure::Refused
        }]
    );
    assert_eq!(pair.server.counters().no_listener, 1);
    assert_eq!(pair.server.counters().rst_sent, 1);
    assert_eq!(pair.client.connection_count(), 0);
    assert!(pair.client.info(c).is_none());
}

#[test]
fn connect_times_out_after_the_configured_syn_retries() {
    let mut pair = Pair::default_pair();
    pair.filter_to_server(Some(Box::new(|_| false)));
    pair.log(true);
    let start = pair.now;
    let c = pair.connect(40_000);
    pair.run_until(1000, |p| !p.client_events.is_empty());
    assert_eq!(
        pair.client_events,
        vec![TcpEvent::ConnectFailed {
            conn: c,
            reason: ConnectFailure::TimedOut
        }]
    );
    // One SYN plus six retransmissions, 1 s apart doubling: 1+2+4+8+16+32+64 s.
    let syns: Vec<_> = pair.sent_to_server().iter().map(|p| p.at - start).collect();
    assert_eq!(syns.len(), 7);
    let gaps: Vec<u64> = syns
        .windows(2)
        .map(|w| (w[1] - w[0]).total_millis())
        .collect();
    assert_eq!(gaps, vec![1000, 2000, 4000, 8000, 16000, 32000]);
    assert_eq!((pair.now - start).total_millis(), 127_000);
    assert_eq!(pair.client.counters().syn_retransmits, 6);
}

#[test]
fn half_open_entries_retransmit_the_syn_ack_then_time_out() {
    let mut pair = Pair::default_pair();
    pair.listen(ListenOptions::default());
    let mut syn = Craft::new(client_addr(1234), server_addr());
    syn.control = TcpControl::Syn;
    syn.seq = 777;
    syn.mss = Some(1460);
    syn.send_to(&mut pair.server, pair.now);
    let mut synacks = drain(&mut pair.server, pair.now).len();
    assert_eq!(pair.server.half_open_count(), 1);
    for _ in 0..100 {
        let Some(t) = pair.server.poll_timeout() else {
            break;
        };
        pair.now = t;
        pair.server.handle_timeout(t);
        synacks += drain(&mut pair.server, pair.now).len();
    }
    assert_eq!(synacks, 6, "the first SYN-ACK and five retransmissions");
    assert_eq!(pair.server.half_open_count(), 0);
    assert_eq!(pair.server.counters().half_open_timeouts, 1);
    assert_eq!(pair.server.counters().synack_retransmits, 5);
}

#[test]
fn duplicate_listen_is_an_error_and_unlisten_frees_the_address() {
    let mut pair = Pair::default_pair();
    let l = pair.listen(ListenOptions::default());
    assert_eq!(
        pair.server
            .listen(0, server_addr(), ListenOptions::default()),
        Err(TcpError::AlreadyListening)
    );
    // A wildcard listener on the same port is a different key; another table too.
    let any = "0.0.0.0:80".parse().unwrap();
    pair.server
        .listen(0, any, ListenOptions::default())
        .unwrap();
    pair.server
        .listen(1, server_addr(), ListenOptions::default())
        .unwrap();
    pair.server.unlisten(l).unwrap();
    assert_eq!(pair.server.unlisten(l), Err(TcpError::StaleListener));
    pair.server
        .listen(0, server_addr(), ListenOptions::default())
        .unwrap();
}

#[test]
fn wildcard_listener_accepts_when_no_specific_one_matches() {
    let mut pair = Pair::default_pair();
    let any = "0.0.0.0:80".parse().unwrap();
    let l = pair
        .server
        .listen(0, any, ListenOptions::default())
        .unwrap();
    pair.connect(40_000);
    pair.run_until(100, |p| p.server.accept_queue_len(l).unwrap() == 1);
    assert!(pair.server.accept(l).unwrap().is_some());
}

#[test]
fn ephemeral_ports_are_unique_and_honour_the_predicate() {
    let mut pair = Pair::default_pair();
    pair.listen(ListenOptions::default());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let port = pair
            .client
            .pick_local_port(0, CLIENT_IP, server_addr(), |p| p % 4 == 1)
            .unwrap();
        assert_eq!(port % 4, 1);
        pair.client
            .connect(
                pair.now,
                0,
                client_addr(port),
                server_addr(),
                ConnOptions::default(),
            )
            .unwrap();
        assert!(seen.insert(port));
    }
    // A predicate nothing satisfies ends the search instead of looping.
    assert_eq!(
        pair.client
            .pick_local_port(0, CLIENT_IP, server_addr(), |_| false),
        None
    );
    assert_eq!(
        pair.client.connect(
            pair.now,
            0,
            client_addr(*seen.iter().next().unwrap()),
            server_addr(),
            ConnOptions::default()
        ),
        Err(TcpError::AddressInUse)
    );
}

#[test]
fn abort_sends_rst_and_the_peer_sees_reset() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.client.abort(c).unwrap();
    assert!(pair.client.info(c).is_none());
    pair.run_until(100, |p| {
        p.server_saw(TcpEvent::Reset {
            conn: s,
            reason: hoststack_tcp::ResetReason::Peer,
        })
    });
    assert!(pair.client_saw(TcpEvent::Closed { conn: c }));
    assert_eq!(pair.server.connection_count(), 0);
}

#[test]
fn fin_wait_2_gives_up_on_a_peer_that_never_closes() {
    let mut pair = Pair::default_pair();
    let (c, s) = pair.established();
    pair.client.close(c).unwrap();
    pair.flush();
    pair.run_until(1000, |p| p.server_saw(TcpEvent::RemoteClosed { conn: s }));
    pair.settle(Duration::from_secs(1));
    assert_eq!(
        pair.client.info(c).map(|i| i.state),
        Some(TcpState::FinWait2),
        "the server never closes its side"
    );
    pair.run_until(1000, |p| p.client_saw(TcpEvent::Closed { conn: c }));
    assert_eq!(pair.client.counters().fin_wait2_timeouts, 1);
    assert!(
        pair.client.info(c).is_none(),
        "the handle is stale once Closed"
    );
    assert_eq!(pair.client.connection_count(), 0);
}

#[test]
fn the_flow_removal_log_names_every_tuple_that_goes_away() {
    let mut pair = Pair::default_pair();
    pair.client.set_flow_removal_log(true);
    pair.server.set_flow_removal_log(true);
    let (c, s) = pair.established();
    let tuple = |local, remote| hoststack_tcp::FlowTuple {
        table: 0,
        local,
        remote,
    };
    let on_server = tuple(server_addr(), pair.client.info(c).unwrap().tuple.local);
    let on_client = tuple(on_server.remote, server_addr());
    assert!(pair.server.has_flow(&on_server) && pair.client.has_flow(&on_client));
    // The half-open entry went away when the handshake promoted it, but the
    // tuple is still held.
    let mut gone = Vec::new();
    pair.server.take_removed_flows(&mut gone);
    assert_eq!(gone, vec![on_server]);
    assert!(pair.server.has_flow(&on_server));
    gone.clear();
    pair.client.close(c).unwrap();
    pair.run_until(100, |p| p.server_saw(TcpEvent::RemoteClosed { conn: s }));
    pair.server.close(s).unwrap();
    close_both(&mut pair, c, s);
    // The server's connection is gone; the client's waits in TIME-WAIT.
    pair.server.take_removed_flows(&mut gone);
    assert_eq!(gone, vec![on_server]);
    assert!(!pair.server.has_flow(&on_server));
    gone.clear();
    pair.client.take_removed_flows(&mut gone);
    assert_eq!(gone, vec![on_client]);
    assert!(pair.client.has_flow(&on_client));
    gone.clear();
    pair.advance(Duration::from_secs(61));
    pair.client.take_removed_flows(&mut gone);
    assert_eq!(gone, vec![on_client]);
    assert!(!pair.client.has_flow(&on_client));
    // Off: nothing is recorded.
    pair.client.set_flow_removal_log(false);
    gone.clear();
    pair.client.take_removed_flows(&mut gone);
    assert!(gone.is_empty());
}
