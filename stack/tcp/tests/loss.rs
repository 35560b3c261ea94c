//! Bulk transfer under loss: byte-exact and in bounded virtual time.

mod util;

use hoststack_tcp::{Duration, TcpConfig};
use util::*;

fn lossy_transfer(loss: f64, seed: u64, bytes: usize) -> (Duration, Pair) {
    let mut pair = Pair::new(TcpConfig::default(), TcpConfig::default(), seed);
    let link = Link {
        delay: Duration::from_millis(10),
        loss,
        rate: Some(100_000_000),
        queue_limit: 400,
        ..Link::default()
    };
    pair.set_links(link.clone(), link);
    let (c, s) = pair.established();
    let data = pattern(bytes, seed);
    let took = transfer(&mut pair, true, c, s, &data, 2_000_000);
    pair.client.debug_check_invariants();
    pair.server.debug_check_invariants();
    (took, pair)
}

#[test]
fn bulk_transfer_is_byte_exact_under_half_percent_loss() {
    let (took, pair) = lossy_transfer(0.005, 11, 4 << 20);
    println!("0.5%: {took} {:?}", pair.client.counters());
    assert!(took < Duration::from_secs(20), "took {took}");
}

#[test]
fn bulk_transfer_is_byte_exact_under_two_percent_loss() {
    let (took, pair) = lossy_transfer(0.02, 12, 4 << 20);
    println!("2%: {took} {:?}", pair.client.counters());
    assert!(took < Duration::from_secs(40), "took {took}");
}

#[test]
fn bulk_transfer_is_byte_exact_under_five_percent_loss() {
    let (took, pair) = lossy_transfer(0.05, 13, 2 << 20);
    println!("5%: {took} {:?}", pair.client.counters());
    assert!(took < Duration::from_secs(60), "took {took}");
}
