//! Seeded fuzzing: real traffic over a hostile network, plus arbitrary and mutated segments
//! thrown at connections and listeners, plus random application calls. Nothing may panic and
//! the engine's invariants (SND.UNA <= SND.NXT, scoreboard totals, buffer accounting, the
//! receive window's right edge) must hold after every step.

mod util;

use hoststack_tcp::{ChecksumMode, Duration, ListenOptions, TcpConfig, TcpEndpoint};
use smoltcp::wire::{TcpPacket, TcpSeqNumber};
use util::*;

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    match rng.below(8) {
        0 => {
            // Random bytes anywhere.
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next_u64() as u8;
            }
        }
        1 => {
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            let delta = (rng.next_u64() as i32) >> rng.below(31);
            p.set_seq_number(TcpSeqNumber(p.seq_number().0.wrapping_add(delta)));
        }
        2 => {
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            let delta = (rng.next_u64() as i32) >> rng.below(31);
            p.set_ack_number(TcpSeqNumber(p.ack_number().0.wrapping_add(delta)));
            p.set_ack(true);
        }
        3 => bytes[13] = rng.next_u64() as u8,
        4 => {
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            p.set_window_len(rng.next_u64() as u16);
        }
        5 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
        6 => {
            // Garbage options: grow the header over random bytes.
            bytes[12] = ((5 + rng.below(11) as u8) << 4) | (bytes[12] & 0x0F);
            for b in bytes.iter_mut().skip(20).take(40) {
                if rng.chance(0.5) {
                    *b = rng.next_u64() as u8;
                }
            }
        }
        _ => {
            // Point it at another port: the listener, or nothing.
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            p.set_dst_port(if rng.chance(0.5) {
                80
            } else {
                rng.next_u64() as u16
            });
            p.set_src_port(rng.next_u64() as u16);
        }
    }
    bytes
}

fn inject(rng: &mut Rng, pair: &mut Pair) {
    let log: Vec<Packet> = pair
        .sent_to_server()
        .iter()
        .chain(pair.sent_to_client())
        .rev()
        .take(64)
        .cloned()
        .collect();
    if log.is_empty() {
        return;
    }
    let packet = &log[rng.below(log.len() as u64) as usize];
    let bytes = if rng.chance(0.1) {
        (0..rng.below(80)).map(|_| rng.next_u64() as u8).collect()
    } else {
        mutate(rng, &packet.bytes)
    };
    // Deliver to whichever side the packet was heading to (or the other, at random).
    let to_server = (packet.dst == SERVER_IP) != rng.chance(0.2);
    let ep: &mut TcpEndpoint = if to_server {
        &mut pair.server
    } else {
        &mut pair.client
    };
    let (src, dst) = if to_server {
        (CLIENT_IP, SERVER_IP)
    } else {
        (SERVER_IP, CLIENT_IP)
    };
    let mode = if rng.chance(0.8) {
        ChecksumMode::AlreadyVerified
    } else {
        ChecksumMode::Verify
    };
    ep.handle_segment(pair.now, 0, src, dst, &bytes, mode);
}

fn app_action(rng: &mut Rng, pair: &mut Pair, conns: &mut [(bool, hoststack_tcp::ConnHandle)]) {
    if conns.is_empty() {
        return;
    }
    let (client, h) = conns[rng.below(conns.len() as u64) as usize];
    let ep = if client {
        &mut pair.client
    } else {
        &mut pair.server
    };
    let mut buf = vec![0u8; 3000];
    let _ = match rng.below(20) {
        0..=7 => ep
            .send(h, &pattern(rng.below(5000) as usize, rng.next_u64()))
            .map(|_| ()),
        8..=14 => ep.recv(h, &mut buf).map(|_| ()),
        15 => ep.close(h),
        16 if rng.chance(0.2) => ep.abort(h),
        17 => ep.set_nodelay(h, rng.chance(0.5)),
        _ => ep
            .info(h)
            .map(|_| ())
            .ok_or(hoststack_tcp::TcpError::StaleHandle),
    };
}

fn run(seed: u64, steps: usize) {
    let mut config = TcpConfig::default();
    if seed % 3 == 1 {
        config.timestamps = false;
    }
    if seed % 4 == 2 {
        config.sack = false;
        config.recv_buffer = 8192;
        config.send_buffer = 8192;
    }
    let mut pair = Pair::new(config.clone(), config, seed);
    let lossy = Link {
        delay: Duration::from_millis(1 + seed % 7),
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.05,
        ..Link::default()
    };
    pair.set_links(lossy.clone(), lossy);
    let listener = pair.listen(ListenOptions {
        syn_backlog: 2,
        accept_backlog: 4,
        ..ListenOptions::default()
    });
    pair.log(true);
    let mut rng = Rng::new(seed ^ 0xF00D);
    let mut conns: Vec<(bool, hoststack_tcp::ConnHandle)> = Vec::new();
    for step in 0..steps {
        if step % 50 == 0 && conns.len() < 16 {
            let port = 20_000 + rng.below(40) as u16;
            if let Ok(c) = pair.client.connect(
                pair.now,
                0,
                client_addr(port),
                server_addr(),
                hoststack_tcp::ConnOptions::default(),
            ) {
                conns.push((true, c));
            }
        }
        while let Ok(Some(s)) = pair.server.accept(listener) {
            conns.push((false, s));
        }
        for _ in 0..rng.below(3) {
            inject(&mut rng, &mut pair);
        }
        app_action(&mut rng, &mut pair, &mut conns);
        if !pair.step() {
            pair.advance(Duration::from_millis(100));
        }
        pair.client.debug_check_invariants();
        pair.server.debug_check_invariants();
        if pair.sent_to_server().len() > 4096 {
            pair.clear_logs();
        }
        conns.retain(|&(client, h)| {
            let ep = if client { &pair.client } else { &pair.server };
            ep.info(h).is_some()
        });
    }
    // Everything still winds down: close all, jump past every timer.
    for &(client, h) in &conns {
        let ep = if client {
            &mut pair.client
        } else {
            &mut pair.server
        };
        let _ = ep.abort(h);
    }
    pair.advance(Duration::from_secs(300));
    pair.client.debug_check_invariants();
    pair.server.debug_check_invariants();
    assert_eq!(pair.client.connection_count(), 0);
    assert_eq!(pair.server.connection_count(), 0);
    assert_eq!(pair.client.buffer_chunks_in_use(), 0);
    assert_eq!(pair.server.buffer_chunks_in_use(), 0);
}

#[test]
fn random_and_mutated_segments_never_panic_or_break_invariants() {
    for seed in 1..=32 {
        run(seed, 2000);
    }
}

#[test]
fn pure_garbage_is_counted_and_dropped() {
    let mut ep = TcpEndpoint::new(TcpConfig::default(), start_time());
    ep.listen(0, server_addr(), ListenOptions::default())
        .unwrap();
    let mut rng = Rng::new(7);
    for _ in 0..20_000 {
        let len = rng.below(100) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        ep.handle_segment(
            start_time(),
            0,
            CLIENT_IP,
            SERVER_IP,
            &bytes,
            ChecksumMode::Verify,
        );
        let _ = drain(&mut ep, start_time());
    }
    let c = ep.counters();
    assert!(c.malformed + c.bad_checksum >= 19_000, "{c:?}");
    assert_eq!(ep.connection_count(), 0);
    ep.debug_check_invariants();
}
