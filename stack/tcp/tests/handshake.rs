//! Connection setup and teardown: the RFC 9293 state machine end to end.

mod util;

use hoststack_tcp::TcpState;
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
}
