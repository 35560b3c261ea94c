//! Offloads a device may do for the stack, and the `virtio_net_hdr` a TAP
//! with `IFF_VNET_HDR` puts in front of every frame to carry them.
//!
//! Receiving, the header says whether the frame's L4 checksum is partial
//! (only the pseudo-header sum is in the field: the kernel left the rest to
//! the device) or already verified, and whether the frame is a GSO
//! super-frame: one TCP segment of up to 64 KB standing for many wire
//! segments of `gso_size` payload bytes each, or a train of UDP datagrams of
//! `gso_size` bytes each sharing one set of headers. Transmitting, the
//! stack asks for the same two things with a [`TxOffload`], and the driver
//! writes the header.
//!
//! A TCP super-frame is a valid TCP segment and goes to the TCP engine
//! whole; a UDP train is not one datagram, so [`UdpGso`] cuts it into its
//! datagrams. Everything here is plain data: parsing never panics on what
//! the kernel (or anyone writing to the TAP's queue) hands over, it returns
//! an [`OffloadError`].

use thiserror::Error;

use crate::checksum::{self, RxChecksumHint};

/// Bytes of the `virtio_net_hdr` the TAP driver uses (the legacy header
/// without `num_buffers`; the kernel's default for `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// The largest IP packet a GSO super-frame may carry (its length fields are
/// 16 bits).
pub const MAX_GSO_PACKET: usize = 65_535;

const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
#[cfg(test)]
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// Why a vnet header or a GSO frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OffloadError {
    /// Fewer bytes than a vnet header.
    #[error("frame shorter than its vnet header")]
    Truncated,
    /// A GSO type this stack does not handle (UFO, or unknown).
    #[error("unsupported GSO type {0:#04x}")]
    UnsupportedGso(u8),
    /// A GSO frame with a segment size of zero.
    #[error("GSO frame without a segment size")]
    ZeroGsoSize,
    /// A partial checksum whose start or field lies outside the frame.
    #[error("partial checksum at {start}+{offset} outside a {len}-byte frame")]
    ChecksumOutside {
        /// Start of the summed region.
        start: u16,
        /// Field offset inside it.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// A UDP GSO frame whose headers do not hold together.
    #[error("UDP GSO frame with broken headers")]
    BadUdpGso,
}

/// The kind of a GSO super-frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (TSO4).
    Tcp4,
    /// TCP over IPv6 (TSO6).
    Tcp6,
    /// UDP datagrams of equal size over either family (USO).
    Udp,
}

/// A `virtio_net_hdr` as it sits in front of a TAP frame (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Bytes of headers (Ethernet to L4) of a GSO frame.
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO frame.
    pub gso_size: u16,
    /// Where the checksummed region starts (partial checksums).
    pub csum_start: u16,
    /// Where the checksum field sits inside that region.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header from the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<Self, OffloadError> {
        let b = b.get(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8; VNET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// What the device said about one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxOffload {
    /// The L4 checksum's state.
    pub checksum: RxChecksumHint,
    /// A GSO super-frame: its kind and payload bytes per segment.
    pub gso: Option<(GsoKind, u16)>,
}

impl RxOffload {
    /// Reads the offload state of a frame of `frame_len` bytes (without the
    /// header) from its vnet header.
    pub fn from_vnet(h: &VnetHdr, frame_len: usize) -> Result<Self, OffloadError> {
        let checksum = if h.flags & F_NEEDS_CSUM != 0 {
            let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
            if end > frame_len {
                return Err(OffloadError::ChecksumOutside {
                    start: h.csum_start,
                    offset: h.csum_offset,
                    len: frame_len,
                });
            }
            RxChecksumHint::Partial {
                start: h.csum_start,
                offset: h.csum_offset,
            }
        } else if h.flags & F_DATA_VALID != 0 {
            RxChecksumHint::DeviceVerified
        } else {
            RxChecksumHint::None
        };
        let kind = match h.gso_type & !GSO_ECN {
            GSO_NONE => None,
            GSO_TCPV4 => Some(GsoKind::Tcp4),
            GSO_TCPV6 => Some(GsoKind::Tcp6),
            GSO_UDP_L4 => Some(GsoKind::Udp),
            other => return Err(OffloadError::UnsupportedGso(other)),
        };
        let gso = match kind {
            None => None,
            Some(_) if h.gso_size == 0 => return Err(OffloadError::ZeroGsoSize),
            Some(k) => Some((k, h.gso_size)),
        };
        Ok(Self { checksum, gso })
    }

    /// Wire segments this frame stands for, given its L4 payload length
    /// (1 for a frame that is not GSO).
    pub fn segments(&self, payload: usize) -> u64 {
        match self.gso {
            Some((_, size)) if payload > 0 => payload.div_ceil(usize::from(size)) as u64,
            _ => 1,
        }
    }
}

/// What the stack asks the device to do for one frame it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxOffload {
    /// Complete a partial checksum: the field at `offset` inside the region
    /// starting at `start` (offsets from the Ethernet header) holds the
    /// pseudo-header sum.
    pub checksum: Option<(u16, u16)>,
    /// Cut the frame into wire segments: kind, payload bytes per segment,
    /// and the bytes of headers (Ethernet to L4 with options) each gets.
    pub gso: Option<(GsoKind, u16, u16)>,
}

impl TxOffload {
    /// The vnet header asking for this.
    pub fn vnet(&self) -> VnetHdr {
        let mut h = VnetHdr::default();
        if let Some((start, offset)) = self.checksum {
            h.flags = F_NEEDS_CSUM;
            h.csum_start = start;
            h.csum_offset = offset;
        }
        if let Some((kind, size, hdr_len)) = self.gso {
            h.gso_type = match kind {
                GsoKind::Tcp4 => GSO_TCPV4,
                GsoKind::Tcp6 => GSO_TCPV6,
                GsoKind::Udp => GSO_UDP_L4,
            };
            h.gso_size = size;
            h.hdr_len = hdr_len;
        }
        h
    }
}

/// Offloads a queue has on, as negotiated with the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Frames carry a vnet header at all.
    pub vnet_hdr: bool,
    /// Checksums may be left partial both ways (`TUN_F_CSUM`).
    pub checksum: bool,
    /// TCP super-frames both ways, IPv4 (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCP super-frames both ways, IPv6 (`TUN_F_TSO6`).
    pub tso6: bool,
    /// UDP trains from the kernel (`TUN_F_USO4 | TUN_F_USO6`).
    pub uso: bool,
}

impl Offloads {
    /// `csum tso4 tso6 uso`, or `none`.
    pub fn describe(&self) -> String {
        let on: Vec<&str> = [
            (self.checksum, "csum"),
            (self.tso4, "tso4"),
            (self.tso6, "tso6"),
            (self.uso, "uso"),
        ]
        .iter()
        .filter(|(b, _)| *b)
        .map(|(_, n)| *n)
        .collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join(" ")
        }
    }
}

const PROTO_UDP: u8 = 17;

/// A UDP GSO frame (a train of equal datagrams behind one set of headers),
/// ready to be cut into its datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpGso {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the UDP header.
    l4: usize,
    ipv4: bool,
    /// Payload bytes of the whole train.
    payload: usize,
    gso_size: usize,
}

impl UdpGso {
    /// Reads the headers of a UDP GSO `frame` (Ethernet, IPv4 without
    /// fragmentation or IPv6 without extension headers, UDP).
    pub fn parse(frame: &[u8], gso_size: u16) -> Result<Self, OffloadError> {
        let bad = OffloadError::BadUdpGso;
        if gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let be16 = |at: usize| -> Result<usize, OffloadError> {
            Ok(usize::from(u16::from_be_bytes([
                *frame.get(at).ok_or(bad)?,
                *frame.get(at + 1).ok_or(bad)?,
            ])))
        };
        let l3 = 14;
        let (l4, end, ipv4) = match be16(12)? {
            0x0800 => {
                let ihl = usize::from(frame.get(l3).ok_or(bad)? & 0x0f) * 4;
                let total = be16(l3 + 2)?;
                let frag = be16(l3 + 6)?;
                if frame[l3] >> 4 != 4
                    || ihl < 20
                    || total < ihl + 8
                    || l3 + total > frame.len()
                    || frag & 0x3fff != 0
                    || frame[l3 + 9] != PROTO_UDP
                {
                    return Err(bad);
                }
                (l3 + ihl, l3 + total, true)
            }
            0x86dd => {
                let payload = be16(l3 + 4)?;
                if frame.len() < l3 + 40
                    || frame[l3] >> 4 != 6
                    || frame[l3 + 6] != PROTO_UDP
                    || payload < 8
                    || l3 + 40 + payload > frame.len()
                {
                    return Err(bad);
                }
                (l3 + 40, l3 + 40 + payload, false)
            }
            _ => return Err(bad),
        };
        Ok(Self {
            l3,
            l4,
            ipv4,
            payload: end - l4 - 8,
            gso_size: usize::from(gso_size),
        })
    }

    /// Datagrams in the train.
    pub fn count(&self) -> usize {
        self.payload.div_ceil(self.gso_size).max(1)
    }

    /// Bytes of datagram `i` as a frame.
    pub fn segment_len(&self, i: usize) -> usize {
        self.l4 + 8 + self.chunk(i).len()
    }

    fn chunk(&self, i: usize) -> std::ops::Range<usize> {
        let start = (i * self.gso_size).min(self.payload);
        let end = (start + self.gso_size).min(self.payload);
        let base = self.l4 + 8;
        base + start..base + end
    }

    /// Writes datagram `i` of `frame` as a whole frame into `out` (at least
    /// [`segment_len`](Self::segment_len) bytes): the headers with lengths,
    /// IPv4 identification and checksums of its own, and its slice of the
    /// payload. Returns the bytes written.
    pub fn write_segment(&self, frame: &[u8], i: usize, out: &mut [u8]) -> usize {
        let chunk = self.chunk(i);
        let n = self.segment_len(i);
        let out = &mut out[..n];
        out[..self.l4 + 8].copy_from_slice(&frame[..self.l4 + 8]);
        out[self.l4 + 8..].copy_from_slice(&frame[chunk]);
        let udp_len = (n - self.l4) as u16;
        let (src, dst) = if self.ipv4 {
            let h = &mut out[self.l3..self.l4];
            let total = (n - self.l3) as u16;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            // Each datagram of the train gets the next identification, as
            // the kernel's own segmentation does.
            let id = u16::from_be_bytes([h[4], h[5]]).wrapping_add(i as u16);
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = !ipv4_header_sum(h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            (self.l3 + 12..self.l3 + 16, self.l3 + 16..self.l3 + 20)
        } else {
            out[self.l3 + 4..self.l3 + 6].copy_from_slice(&udp_len.to_be_bytes());
            (self.l3 + 8..self.l3 + 24, self.l3 + 24..self.l3 + 40)
        };
        let l4 = self.l4;
        out[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let (s, d) = (out[src].to_vec(), out[dst].to_vec());
        let mut c = checksum::l4_checksum(&s, &d, PROTO_UDP, &out[l4..]);
        if c == 0 {
            c = 0xffff;
        }
        out[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        n
    }
}

/// One's-complement sum of an IPv4 header, folded.
fn ipv4_header_sum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in h.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{RxChecksumPolicy, RxChecksumVerdict, check_rx};

    #[test]
    fn vnet_headers_round_trip_little_endian() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 0x0102,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(&b[..4], &[1, 4, 2, 1]);
        assert_eq!(VnetHdr::parse(&b).unwrap(), h);
        assert_eq!(VnetHdr::parse(&b[..9]), Err(OffloadError::Truncated));
    }

    #[test]
    fn rx_offload_reads_checksum_state_and_gso_and_refuses_nonsense() {
        let mut h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 66,
        };
        let o = RxOffload::from_vnet(&h, 60_000).unwrap();
        assert_eq!(o.gso, Some((GsoKind::Tcp4, 1448)));
        assert_eq!(
            o.checksum,
            RxChecksumHint::Partial {
                start: 34,
                offset: 16
            }
        );
        assert_eq!(o.segments(1448 * 3 + 1), 4);
        assert_eq!(
            RxOffload::from_vnet(&h, 40),
            Err(OffloadError::ChecksumOutside {
                start: 34,
                offset: 16,
                len: 40
            })
        );
        h.gso_size = 0;
        assert_eq!(
            RxOffload::from_vnet(&h, 60_000),
            Err(OffloadError::ZeroGsoSize)
        );
        h.gso_type = GSO_UDP;
        assert_eq!(
            RxOffload::from_vnet(&h, 60_000),
            Err(OffloadError::UnsupportedGso(GSO_UDP))
        );
        let valid = VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        };
        let o = RxOffload::from_vnet(&valid, 60).unwrap();
        assert_eq!(
            (o.checksum, o.gso, o.segments(10)),
            (RxChecksumHint::DeviceVerified, None, 1)
        );
    }

    #[test]
    fn tx_offload_writes_the_header_the_kernel_reads() {
        let t = TxOffload {
            checksum: Some((34, 16)),
            gso: Some((GsoKind::Tcp4, 1448, 66)),
        };
        let h = t.vnet();
        let back = RxOffload::from_vnet(&h, 65_000).unwrap();
        assert_eq!(back.gso, Some((GsoKind::Tcp4, 1448)));
        assert_eq!(h.hdr_len, 66);
        assert_eq!(TxOffload::default().vnet(), VnetHdr::default());
        assert_eq!(
            Offloads {
                vnet_hdr: true,
                checksum: true,
                tso4: true,
                tso6: true,
                uso: false
            }
            .describe(),
            "csum tso4 tso6"
        );
        assert_eq!(Offloads::default().describe(), "none");
    }

    /// A UDP GSO frame the way the kernel hands it over: one set of
    /// headers, lengths of the whole train, a partial checksum.
    fn udp_train(v6: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
        let udp_len = 8 + payload.len();
        if v6 {
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            ip[6] = PROTO_UDP;
            ip[7] = 64;
            ip[8] = 0xfd;
            ip[23] = 2;
            ip[24] = 0xfd;
            ip[39] = 1;
            f.extend_from_slice(&ip);
        } else {
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
            ip[8] = 64;
            ip[9] = PROTO_UDP;
            ip[12..16].copy_from_slice(&[10, 77, 0, 2]);
            ip[16..20].copy_from_slice(&[10, 77, 0, 1]);
            let c = !ipv4_header_sum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&7u16.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_udp_train_is_cut_into_datagrams_with_their_own_headers() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
            let f = udp_train(v6, &payload);
            let g = UdpGso::parse(&f, 1200).unwrap();
            assert_eq!(g.count(), 3);
            let mut got = Vec::new();
            let mut ids = Vec::new();
            for i in 0..g.count() {
                let mut out = vec![0u8; 2000];
                let n = g.write_segment(&f, i, &mut out);
                out.truncate(n);
                assert_eq!(n, g.segment_len(i));
                assert_eq!(
                    check_rx(&out, RxChecksumPolicy::VerifyAll),
                    RxChecksumVerdict::Verified,
                    "v6 {v6} segment {i}"
                );
                let l4 = if v6 { 54 } else { 34 };
                let udp_len = usize::from(u16::from_be_bytes([out[l4 + 4], out[l4 + 5]]));
                assert_eq!(udp_len, n - l4);
                if !v6 {
                    assert_eq!(ipv4_header_sum(&out[14..34]), 0xffff, "header checksum");
                    ids.push(u16::from_be_bytes([out[18], out[19]]));
                }
                got.extend_from_slice(&out[l4 + 8..]);
            }
            assert_eq!(got, payload, "v6 {v6}");
            if !v6 {
                assert_eq!(ids, vec![0xfff0, 0xfff1, 0xfff2]);
            }
        }
    }

    #[test]
    fn broken_udp_trains_are_refused_not_panics() {
        let f = udp_train(false, &[1u8; 100]);
        assert_eq!(UdpGso::parse(&f, 0), Err(OffloadError::ZeroGsoSize));
        for len in 0..f.len() {
            assert!(UdpGso::parse(&f[..len], 40).is_err(), "len {len}");
        }
        let mut tcp = f.clone();
        tcp[14 + 9] = 6;
        assert_eq!(UdpGso::parse(&tcp, 40), Err(OffloadError::BadUdpGso));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut g = f.clone();
            let at = (x as usize) % g.len();
            g[at] = (x >> 32) as u8;
            if let Ok(u) = UdpGso::parse(&g, (x >> 40) as u16 % 64 + 1) {
                let mut out = vec![0u8; g.len()];
                for i in 0..u.count() {
                    let _ = u.write_segment(&g, i, &mut out);
                }
            }
        }
    }
}
