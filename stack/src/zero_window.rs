//! Keeps ACKs flowing while a connection advertises a zero window.
//!
//! RFC 9293 (3.10.7.4): "If the RCV.WND is zero, no segments will be
//! acceptable, but special allowance should be made to accept valid ACKs,
//! URGs, and RSTs." smoltcp 0.14 makes no such allowance: a segment it
//! cannot accept into a zero window is answered with an ACK and dropped
//! before its ACK number and window are read. When both ends' windows close
//! at once (an echo server whose peer reads slowly), the peer's window
//! update then never registers, and the connection deadlocks: both sides
//! hold full buffers and wait for each other.
//!
//! The guard watches the segments the stack sends. While the last one on a
//! connection advertised a zero window, every incoming segment of that
//! connection that smoltcp would refuse (it carries data, or its sequence
//! number is not the one we expect next) is handed to smoltcp as a bare ACK
//! at the expected sequence number: its data is dropped as the zero window
//! demands (the peer resends it), its ACK and window are processed.

use std::net::IpAddr;

use hashbrown::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
}

/// Where the fields of one TCP segment sit in an Ethernet frame.
#[derive(Debug)]
struct TcpView {
    l3: usize,
    v4: bool,
    l4: usize,
    tcp_len: usize,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    window: u16,
    payload: usize,
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

fn parse(f: &[u8]) -> Option<TcpView> {
    let l3 = 14;
    let (v4, l4, end, src, dst) = match be16(f, 12)? {
        0x0800 => {
            let ihl = usize::from(*f.get(l3)? & 0x0f) * 4;
            let total = usize::from(be16(f, l3 + 2)?);
            if *f.get(l3 + 9)? != 6 || ihl < 20 || be16(f, l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            let s: [u8; 4] = f.get(l3 + 12..l3 + 16)?.try_into().ok()?;
            let d: [u8; 4] = f.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            (true, l3 + ihl, l3 + total, IpAddr::from(s), IpAddr::from(d))
        }
        0x86dd => {
            if *f.get(l3 + 6)? != 6 {
                return None;
            }
            let plen = usize::from(be16(f, l3 + 4)?);
            let s: [u8; 16] = f.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            let d: [u8; 16] = f.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            (
                false,
                l3 + 40,
                l3 + 40 + plen,
                IpAddr::from(s),
                IpAddr::from(d),
            )
        }
        _ => return None,
    };
    let tcp_len = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    if tcp_len < 20 || end > f.len() || l4 + tcp_len > end {
        return None;
    }
    Some(TcpView {
        l3,
        v4,
        l4,
        tcp_len,
        src,
        dst,
        sport: be16(f, l4)?,
        dport: be16(f, l4 + 2)?,
        seq: be32(f, l4 + 4)?,
        flags: *f.get(l4 + 13)?,
        window: be16(f, l4 + 14)?,
        payload: end - l4 - tcp_len,
    })
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut it = data.chunks_exact(2);
    for c in &mut it {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = it.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// The zero-window ACK guard of one worker.
#[derive(Debug, Default)]
pub struct ZeroWindowGuard {
    /// Connections whose last segment from us advertised a zero window,
    /// with the sequence number we expect next (our last ACK number).
    closed: HashMap<FlowKey, u32>,
    /// Segments turned into bare ACKs.
    pub salvaged: u64,
}

impl ZeroWindowGuard {
    /// Notes a frame the stack sends.
    pub fn observe_tx(&mut self, frame: &[u8]) {
        let Some(v) = parse(frame) else { return };
        if v.flags & ACK == 0 {
            return;
        }
        let key = FlowKey {
            local: (v.src, v.sport),
            remote: (v.dst, v.dport),
        };
        if v.window == 0 {
            let Some(ack) = be32(frame, v.l4 + 8) else {
                return;
            };
            self.closed.insert(key, ack);
        } else if !self.closed.is_empty() {
            self.closed.remove(&key);
        }
        if v.flags & (FIN | RST) != 0 {
            self.closed.remove(&key);
        }
    }

    /// When `frame` is a segment smoltcp would drop unread into a zero
    /// window, writes the bare ACK to hand it instead into `out` and returns
    /// true.
    pub fn rewrite_rx(&mut self, frame: &[u8], out: &mut Vec<u8>) -> bool {
        if self.closed.is_empty() {
            return false;
        }
        let Some(v) = parse(frame) else { return false };
        if v.flags & (SYN | RST) != 0 || v.flags & ACK == 0 {
            return false;
        }
        let key = FlowKey {
            local: (v.dst, v.dport),
            remote: (v.src, v.sport),
        };
        let Some(&expected) = self.closed.get(&key) else {
            return false;
        };
        if v.payload == 0 && v.seq == expected && v.flags & FIN == 0 {
            return false;
        }
        let end = v.l4 + v.tcp_len;
        out.clear();
        out.extend_from_slice(&frame[..end]);
        // TCP: expected sequence number, no data, no PSH/FIN.
        out[v.l4 + 4..v.l4 + 8].copy_from_slice(&expected.to_be_bytes());
        out[v.l4 + 13] &= !(PSH | FIN);
        out[v.l4 + 16..v.l4 + 18].copy_from_slice(&[0, 0]);
        let tcp_len = v.tcp_len as u64;
        let (src, dst) = match (v.src, v.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
            (s, d) => (to16(s).to_vec(), to16(d).to_vec()),
        };
        let mut acc = sum(sum(0, &src), &dst) + 6 + tcp_len;
        acc = sum(acc, &out[v.l4..end]);
        out[v.l4 + 16..v.l4 + 18].copy_from_slice(&(!fold(acc)).to_be_bytes());
        // IP: new length (and header checksum for IPv4).
        if v.v4 {
            let total = (end - v.l3) as u16;
            out[v.l3 + 2..v.l3 + 4].copy_from_slice(&total.to_be_bytes());
            out[v.l3 + 10..v.l3 + 12].copy_from_slice(&[0, 0]);
            let ihl = v.l4 - v.l3;
            let c = !fold(sum(0, &out[v.l3..v.l3 + ihl]));
            out[v.l3 + 10..v.l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            out[v.l3 + 4..v.l3 + 6].copy_from_slice(&(v.tcp_len as u16).to_be_bytes());
        }
        self.salvaged += 1;
        true
    }
}

fn to16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoststack_drivers::checksum::{RxChecksumPolicy, RxChecksumVerdict, check_rx};

    /// An IPv4 TCP frame from `sport` to `dport` with the given fields.
    #[allow(clippy::too_many_arguments)]
    fn frame(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        win: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let total = 20 + 20 + payload.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = !fold(sum(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&win.to_be_bytes());
        tcp.extend_from_slice(payload);
        let c = hoststack_drivers::checksum::l4_checksum(&src, &dst, 6, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&tcp);
        f
    }

    const US: [u8; 4] = [10, 77, 0, 1];
    const PEER: [u8; 4] = [10, 77, 0, 2];

    #[test]
    fn segments_pass_untouched_while_our_window_is_open() {
        let mut g = ZeroWindowGuard::default();
        g.observe_tx(&frame(US, PEER, 7, 40000, 100, 5000, ACK, 512, b""));
        let mut out = Vec::new();
        assert!(!g.rewrite_rx(
            &frame(PEER, US, 40000, 7, 5000, 100, ACK, 512, b"data"),
            &mut out
        ));
    }

    #[test]
    fn data_into_our_zero_window_becomes_a_bare_ack_at_the_expected_sequence() {
        let mut g = ZeroWindowGuard::default();
        g.observe_tx(&frame(US, PEER, 7, 40000, 100, 5000, ACK, 0, b""));
        let mut out = Vec::new();
        // Data past what we expect (the peer already sent it once).
        let incoming = frame(PEER, US, 40000, 7, 6460, 300, ACK | PSH, 900, &[7u8; 1460]);
        assert!(g.rewrite_rx(&incoming, &mut out));
        let v = parse(&out).unwrap();
        assert_eq!(
            (v.seq, v.payload, v.flags & (PSH | FIN), v.window),
            (5000, 0, 0, 900)
        );
        assert_eq!(
            be32(&out, v.l4 + 8),
            Some(300),
            "the ACK number must survive"
        );
        assert_eq!(
            check_rx(&out, RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::Verified
        );
        assert_eq!(g.salvaged, 1);
        // A bare ACK already at the expected sequence is left alone.
        assert!(!g.rewrite_rx(
            &frame(PEER, US, 40000, 7, 5000, 300, ACK, 900, b""),
            &mut out
        ));
    }

    #[test]
    fn reopening_our_window_stops_the_rewriting_and_other_flows_are_untouched() {
        let mut g = ZeroWindowGuard::default();
        g.observe_tx(&frame(US, PEER, 7, 40000, 100, 5000, ACK, 0, b""));
        let mut out = Vec::new();
        assert!(!g.rewrite_rx(&frame(PEER, US, 40001, 7, 1, 1, ACK, 9, b"x"), &mut out));
        g.observe_tx(&frame(US, PEER, 7, 40000, 100, 5000, ACK, 64, b""));
        assert!(!g.rewrite_rx(
            &frame(PEER, US, 40000, 7, 6000, 100, ACK, 9, b"x"),
            &mut out
        ));
    }

    #[test]
    fn resets_and_garbage_are_never_rewritten() {
        let mut g = ZeroWindowGuard::default();
        g.observe_tx(&frame(US, PEER, 7, 40000, 100, 5000, ACK, 0, b""));
        let mut out = Vec::new();
        assert!(!g.rewrite_rx(
            &frame(PEER, US, 40000, 7, 9999, 100, RST | ACK, 0, b""),
            &mut out
        ));
        let f = frame(PEER, US, 40000, 7, 6000, 100, ACK, 9, b"xyz");
        for len in 0..f.len() {
            let _ = g.rewrite_rx(&f[..len], &mut out);
        }
    }
}
