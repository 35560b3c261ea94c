//! A NIC's receive-side scaling: which queue a flow's frames arrive on.
//!
//! Most multi-queue NICs hash a received TCP/UDP frame's addresses and
//! ports with the Toeplitz function under a secret key, and pick the queue
//! from an indirection table indexed by the hash's low bits. Both are
//! readable (`ethtool -x`), so a stack that opens a connection can pick a
//! source port whose replies land on the queue of the worker that opened
//! it, as mTCP and F-Stack do. [`Rss::read`] returns the NIC's setup only
//! when it is exactly that (Toeplitz, no symmetric transform, the 4-tuple
//! hashed for TCP over IPv4 and IPv6); a veth, a TAP or a NIC with another
//! hash gives `None`, and the stack then cannot choose where replies land.

use std::net::IpAddr;

use crate::sys;

/// `ETH_RSS_HASH_TOP`: the Toeplitz hash function.
const HASH_TOP: u8 = 1 << 0;
/// `TCP_V4_FLOW` and `TCP_V6_FLOW`.
const TCP_V4_FLOW: u32 = 0x01;
const TCP_V6_FLOW: u32 = 0x05;
/// `RXH_IP_SRC | RXH_IP_DST | RXH_L4_B_0_1 | RXH_L4_B_2_3`.
const FOUR_TUPLE: u64 = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7);

/// A NIC's Toeplitz key and indirection table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rss {
    key: Vec<u8>,
    indir: Vec<u32>,
}

/// The Toeplitz hash of `input` under `key` (Microsoft's RSS definition:
/// for each set bit of the input, XOR in the 32 key bits starting at that
/// bit's position).
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let bit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |b| u32::from(b >> (7 - i % 8) & 1))
    };
    let mut window: u32 = (0..32).fold(0, |w, i| w << 1 | bit(i));
    let mut hash = 0;
    for (n, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                hash ^= window;
            }
            window = window << 1 | bit(n * 8 + b + 32);
        }
    }
    hash
}

impl Rss {
    /// An RSS setup from its parts (for tests and for NICs read elsewhere).
    pub fn new(key: Vec<u8>, indir: Vec<u32>) -> Self {
        Self { key, indir }
    }

    /// The interface's RSS setup, when it hashes TCP 4-tuples with
    /// Toeplitz and says so; `None` otherwise (veth, TAP, other hashes).
    pub fn read(ifname: &str) -> Option<Self> {
        let (indir, key, hfunc, input_xfrm) = sys::rss_config(ifname).ok()?;
        if indir.is_empty() || key.len() < 16 || hfunc != HASH_TOP || input_xfrm != 0 {
            return None;
        }
        for flow in [TCP_V4_FLOW, TCP_V6_FLOW] {
            let fields = sys::rss_hash_fields(ifname, flow).ok()?;
            if fields & FOUR_TUPLE != FOUR_TUPLE {
                return None;
            }
        }
        Some(Self { key, indir })
    }

    /// The hash of a frame from `src`:`sport` to `dst`:`dport`.
    pub fn hash(&self, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Option<u32> {
        let mut input = [0u8; 36];
        let n = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                input[..4].copy_from_slice(&s.octets());
                input[4..8].copy_from_slice(&d.octets());
                8
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                input[..16].copy_from_slice(&s.octets());
                input[16..32].copy_from_slice(&d.octets());
                32
            }
            _ => return None,
        };
        input[n..n + 2].copy_from_slice(&sport.to_be_bytes());
        input[n + 2..n + 4].copy_from_slice(&dport.to_be_bytes());
        Some(toeplitz(&self.key, &input[..n + 4]))
    }

    /// The queue a frame from `src`:`sport` to `dst`:`dport` arrives on.
    pub fn queue(&self, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Option<u32> {
        let h = self.hash(src, dst, sport, dport)?;
        self.indir.get(h as usize % self.indir.len()).copied()
    }

    /// Whether the queues `0..n` are all in the indirection table.
    pub fn spreads_over(&self, n: u32) -> bool {
        (0..n).all(|q| self.indir.contains(&q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of Microsoft's "Verifying the RSS Hash Calculation".
    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn toeplitz_matches_the_published_ipv4_tcp_vectors() {
        let rss = Rss::new(KEY.to_vec(), vec![0]);
        // (source, source port, destination, destination port, hash)
        let vectors = [
            ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x51cc_c178),
            ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xc626_b0ea),
            ("24.19.198.95", 12898, "12.22.207.184", 38024, 0x5c2b_394a),
            ("38.27.205.30", 48228, "209.142.163.6", 2217, 0xafc7_327f),
            ("153.39.163.191", 44251, "202.188.127.2", 1303, 0x10e8_28a2),
        ];
        for (s, sp, d, dp, want) in vectors {
            assert_eq!(rss.hash(ip(s), ip(d), sp, dp), Some(want), "{s} -> {d}");
        }
    }

    #[test]
    fn toeplitz_matches_the_published_ipv6_tcp_vector() {
        let rss = Rss::new(KEY.to_vec(), vec![0]);
        assert_eq!(
            rss.hash(
                ip("3ffe:2501:200:1fff::7"),
                ip("3ffe:2501:200:3::1"),
                2794,
                1766
            ),
            Some(0x4020_7d3d)
        );
        assert_eq!(rss.hash(ip("10.0.0.1"), ip("::1"), 1, 2), None);
    }

    #[test]
    fn the_indirection_table_picks_the_queue_from_the_low_bits() {
        let rss = Rss::new(KEY.to_vec(), vec![0, 1, 2, 3]);
        let h = rss.hash(ip("66.9.149.187"), ip("161.142.100.80"), 2794, 1766);
        assert_eq!(
            rss.queue(ip("66.9.149.187"), ip("161.142.100.80"), 2794, 1766),
            h.map(|h| h % 4)
        );
        assert!(rss.spreads_over(4) && !rss.spreads_over(5));
        // Some port of any range reaches each queue.
        for q in 0..4 {
            assert!(
                (32768..33000u16)
                    .any(|p| rss.queue(ip("10.0.0.2"), ip("10.0.0.1"), 80, p) == Some(q)),
                "queue {q}"
            );
        }
    }
}
