//! Loss detection and repair: SACK generation (RFC 2018), SACK-based recovery (RFC 6675),
//! RACK-TLP (RFC 8985), retransmission timeouts (RFC 6298).

mod util;

use hoststack_tcp::{CongestionAlgorithmKind, Duration, ResetReason, TcpConfig, TcpEvent};
use util::*;

/// Drops the data segments (by order of first appearance of their sequence number) whose
/// index is in `which`; retransmissions of them pass.
fn drop_data(which: &'static [usize]) -> Filter {
    let mut seen: Vec<u32> = Vec::new();
    Box::new(move |p: &Packet| {
        let r = p.repr();
        if r.payload.is_empty() {
            return true;
        }
        let seq = r.seq_number.0 as u32;
        if seen.contains(&seq) {
            return true;
        }
        seen.push(seq);
        !which.contains(&(seen.len() - 1))
    })
}

fn nodelay_pair(seed: u64) -> (Pair, hoststack_tcp::ConnHandle, hoststack_tcp::ConnHandle) {
    let mut pair = Pair::new(TcpConfig::default(), TcpConfig::default(), seed);
    let (c, s) = pair.established();
    pair.client.set_nodelay(c, true).unwrap();
    // Get an RTT sample and leave quick-ACK mode behind, as in steady state.
    transfer(&mut pair, true, c, s, &pattern(40_000, 1), 1000);
    pair.settle(Duration::from_secs(1));
    (pair, c, s)
}

#[test]
fn out_of_order_data_is_answered_with_sack_blocks() {
    let (mut pair, c, s) = nodelay_pair(1);
    // A rate limit spaces the segments so each one draws its own ACK.
    pair.link_to_server().rate = Some(10_000_000);
    pair.log(true);
    pair.filter_to_server(Some(drop_data(&[2])));
    let mss = pair.client.info(c).unwrap().mss as u32;
    let before = pair.server.info(s).unwrap().irs; // unused but shows the API
    let _ = before;
    let data = pattern(8 * mss as usize, 2);
    transfer(&mut pair, true, c, s, &data, 1000);
    let acks: Vec<_> = pair
        .sent_to_client()
        .iter()
        .filter(|p| p.repr().sack_ranges[0].is_some())
        .map(|p| p.repr().sack_ranges)
        .collect();
    assert!(!acks.is_empty(), "dup ACKs carry SACK blocks");
    let first = acks[0][0].unwrap();
    assert_eq!(
        first.1.wrapping_sub(first.0),
        mss,
        "one segment past the hole"
    );
    let later = acks.last().unwrap()[0].unwrap();
    assert_eq!(
        later.1.wrapping_sub(later.0),
        5 * mss,
        "blocks grow as data arrives"
    );
    assert!(pair.client.info(c).unwrap().sack_blocks_received >= acks.len() as u64);
}

#[test]
fn one_loss_in_a_flight_is_repaired_by_sack_recovery_without_a_timeout() {
    for cc in [
        CongestionAlgorithmKind::Cubic,
        CongestionAlgorithmKind::NewReno,
    ] {
        let config = TcpConfig {
            congestion: cc,
            ..TcpConfig::default()
        };
        let mut pair = Pair::new(config, TcpConfig::default(), 2);
        let (c, s) = pair.established();
        pair.filter_to_server(Some(drop_data(&[20])));
        let before = pair.client.info(c).unwrap().cwnd;
        let data = pattern(300_000, 3);
        transfer(&mut pair, true, c, s, &data, 10_000);
        let counters = pair.client.counters();
        assert_eq!(counters.fast_recoveries, 1, "{cc:?}");
        assert_eq!(counters.retransmits, 1, "{cc:?}");
        assert_eq!(counters.rto_timeouts, 0, "{cc:?}");
        let info = pair.client.info(c).unwrap();
        assert!(
            info.ssthresh < u32::MAX && info.ssthresh >= 2 * before / 10,
            "{info:?}"
        );
        pair.client.debug_check_invariants();
    }
}

#[test]
fn without_sack_three_duplicate_acks_trigger_fast_retransmit() {
    let config = TcpConfig {
        sack: false,
        ..TcpConfig::default()
    };
    let mut pair = Pair::new(config, TcpConfig::default(), 3);
    let (c, s) = pair.established();
    assert!(!pair.client.info(c).unwrap().sack);
    pair.filter_to_server(Some(drop_data(&[15, 40])));
    let data = pattern(300_000, 4);
    transfer(&mut pair, true, c, s, &data, 10_000);
    let counters = pair.client.counters();
    assert!(counters.fast_recoveries >= 1, "{counters:?}");
    assert_eq!(counters.retransmits, 2);
    assert_eq!(counters.rto_timeouts, 0, "{counters:?}");
}

#[test]
fn rack_marks_a_loss_with_fewer_than_three_sacked_segments_after_the_reorder_window() {
    // RFC 8985 §3.4 example: P1, P2, P3 sent, P1 lost, P2 and P3 SACKed. DupThresh is not
    // reached, but P1 was sent before P3 which was delivered: after RTT + reo_wnd RACK
    // declares it lost, long before an RTO.
    let (mut pair, c, s) = nodelay_pair(4);
    pair.filter_to_server(Some(drop_data(&[0])));
    let mss = pair.client.info(c).unwrap().mss as usize;
    let data = pattern(3 * mss, 5);
    let took = transfer(&mut pair, true, c, s, &data, 1000);
    let counters = pair.client.counters();
    assert!(counters.rack_lost_bytes >= mss as u64, "{counters:?}");
    assert_eq!(counters.rto_timeouts, 0);
    assert_eq!(counters.retransmits, 1);
    assert!(
        took < Duration::from_millis(60),
        "repaired in about two RTTs: {took}"
    );
}

/// Sends three segments of which the first is held back by `delay`.
fn three_segments_first_delayed(seed: u64, delay: Duration) -> Pair {
    let (mut pair, c, s) = nodelay_pair(seed);
    let mut first = true;
    pair.delay_to_server(Some(Box::new(move |p: &Packet| {
        if !p.repr().payload.is_empty() && first {
            first = false;
            return delay;
        }
        Duration::ZERO
    })));
    let mss = pair.client.info(c).unwrap().mss as usize;
    transfer(&mut pair, true, c, s, &pattern(3 * mss, seed), 1000);
    pair.settle(Duration::from_secs(1));
    pair
}

#[test]
fn rack_does_not_retransmit_a_segment_reordered_within_the_window() {
    // The first of three segments arrives 1 ms after the others: reordering, not loss, since
    // RACK's window is a quarter of the 10 ms minimum RTT.
    let pair = three_segments_first_delayed(5, Duration::from_millis(1));
    let counters = pair.client.counters();
    assert_eq!(counters.retransmits, 0, "{counters:?}");
    assert_eq!(counters.rack_lost_bytes, 0);
}

#[test]
fn rack_repairs_reordering_beyond_the_window_and_learns_from_it() {
    // Held back 8 ms (more than RTT/4), the segment is declared lost and resent; the late
    // original then arrives below the SACKed data, which shows reordering to RACK.
    let pair = three_segments_first_delayed(6, Duration::from_millis(8));
    let counters = pair.client.counters();
    assert_eq!(counters.retransmits, 1, "{counters:?}");
    assert_eq!(counters.rto_timeouts, 0);
    // The receiver got the segment twice and said so with a D-SACK block.
    assert_eq!(counters.dsacks_received, 1, "{counters:?}");
}

#[test]
fn a_lost_tail_is_repaired_by_a_loss_probe_not_an_rto() {
    let (mut pair, c, s) = nodelay_pair(7);
    // Ten segments, the last one lost: no later segment can be SACKed, so only a probe
    // (or an RTO) can reveal the loss.
    pair.filter_to_server(Some(drop_data(&[9])));
    let mss = pair.client.info(c).unwrap().mss as usize;
    let data = pattern(10 * mss, 8);
    let took = transfer(&mut pair, true, c, s, &data, 1000);
    let counters = pair.client.counters();
    assert_eq!(counters.tlp_probes, 1, "{counters:?}");
    assert_eq!(counters.rto_timeouts, 0);
    // With one segment in flight the PTO includes the worst-case delayed ACK (RFC 8985
    // §7.2), so it matches the 200 ms RTO floor here; what matters is that a probe, not a
    // timeout, repaired the loss and the window did not collapse.
    assert!(took < Duration::from_millis(250), "{took}");
    assert!(pair.client.info(c).unwrap().cwnd > 2 * mss as u32);
}

#[test]
fn two_lost_tail_segments_are_repaired_by_one_probe_and_rack() {
    let (mut pair, c, s) = nodelay_pair(8);
    pair.filter_to_server(Some(drop_data(&[8, 9])));
    let mss = pair.client.info(c).unwrap().mss as usize;
    let data = pattern(10 * mss, 9);
    let took = transfer(&mut pair, true, c, s, &data, 1000);
    let counters = pair.client.counters();
    assert_eq!(counters.tlp_probes, 1, "{counters:?}");
    assert_eq!(counters.rto_timeouts, 0);
    assert!(
        took < Duration::from_millis(100),
        "PTO is 2 SRTT with two in flight: {took}"
    );
}

/// Sends a little data into a path that drops everything for `span`; returns the send times
/// (ms from the first) of every copy and the gaps between them.
fn blackhole_gaps(
    pair: &mut Pair,
    c: hoststack_tcp::ConnHandle,
    span: Duration,
) -> (Vec<u64>, Vec<u64>) {
    pair.log(true);
    pair.clear_logs();
    let start = pair.now;
    pair.filter_to_server(Some(Box::new(|_| false)));
    pair.client.send(c, b"hello").unwrap();
    pair.advance(span);
    let times: Vec<u64> = pair
        .sent_to_server()
        .iter()
        .map(|p| (p.at - start).total_millis())
        .collect();
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    (times, gaps)
}

#[test]
fn rto_backs_off_exponentially_from_the_floor() {
    let (mut pair, c, _) = nodelay_pair(9);
    let (times, gaps) = blackhole_gaps(&mut pair, c, Duration::from_secs(30));
    // srtt is ~10 ms, so the RTO sits on the 200 ms floor; the probe comes at min(PTO, RTO).
    assert_eq!(&gaps[..6], &[200, 200, 400, 800, 1600, 3200], "{times:?}");
    let info = pair.client.info(c).unwrap();
    assert!(info.rto >= Duration::from_millis(6400));
    assert!(pair.client.counters().rto_timeouts >= 5);
    assert_eq!(info.cwnd, info.mss as u32, "loss window of one segment");
}

#[test]
fn the_rto_floor_and_ceiling_are_configurable() {
    let config = TcpConfig {
        rto_min: Duration::from_millis(50),
        rto_max: Duration::from_millis(400),
        ..TcpConfig::default()
    };
    let mut pair = Pair::new(config, TcpConfig::default(), 12);
    let (c, s) = pair.established();
    pair.client.set_nodelay(c, true).unwrap();
    transfer(&mut pair, true, c, s, &pattern(40_000, 1), 1000);
    pair.settle(Duration::from_secs(1));
    let (_, gaps) = blackhole_gaps(&mut pair, c, Duration::from_secs(3));
    // RTO = srtt (10 ms) + 4 rttvar, above the 50 ms floor here; it doubles up to 400 ms.
    let first = pair.client.info(c).unwrap().rto;
    assert_eq!(first, Duration::from_millis(400));
    assert!(
        gaps[1] < 100,
        "the first timeout comes well before Linux's 200 ms: {gaps:?}"
    );
    assert!(gaps.iter().all(|&g| g <= 400), "{gaps:?}");
    assert!(gaps.ends_with(&[400, 400]), "{gaps:?}");
}

#[test]
fn too_many_timeouts_reset_the_connection() {
    let config = TcpConfig {
        max_retransmits: 3,
        ..TcpConfig::default()
    };
    let mut pair = Pair::new(config, TcpConfig::default(), 10);
    let (c, _) = pair.established();
    pair.filter_to_server(Some(Box::new(|_| false)));
    pair.client.send(c, b"hello").unwrap();
    pair.run_until(1000, |p| {
        p.client_saw(TcpEvent::Reset {
            conn: c,
            reason: ResetReason::RetransmitTimeout,
        })
    });
    assert_eq!(pair.client.counters().retransmit_timeouts, 1);
    assert_eq!(pair.client.connection_count(), 0);
}

#[test]
fn a_spurious_timeout_is_undone_by_timestamps() {
    let (mut pair, c, s) = nodelay_pair(11);
    let cwnd = pair.client.info(c).unwrap().cwnd;
    // Delay the ACKs, not the data, well past the RTO: the retransmission was unnecessary
    // and the echoed TSval proves it.
    pair.link_to_client().delay = Duration::from_millis(700);
    let data = pattern(2000, 12);
    transfer(&mut pair, true, c, s, &data, 1000);
    pair.settle(Duration::from_secs(3));
    let counters = pair.client.counters();
    assert!(counters.rto_timeouts >= 1, "{counters:?}");
    assert!(counters.spurious_retransmits >= 1, "{counters:?}");
    assert!(pair.client.info(c).unwrap().cwnd >= cwnd);
}
