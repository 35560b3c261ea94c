//! UDP frame templates for pktgen: Ethernet + IPv4/IPv6 + UDP, built once
//! before the hot path and reused unchanged.
//!
//! Sizes follow the usual pktgen convention: a "64-byte frame" counts the
//! 4-byte FCS the NIC appends, so its buffer holds 60 bytes. IPv6 headers
//! need 62 bytes, so the smallest IPv6 frame is 66.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use hoststack_drivers::MacAddr;
use hoststack_drivers::checksum::l4_checksum;

/// Bytes of FCS counted in a frame size but not in the buffer.
pub const FCS: usize = 4;
const ETH: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;
const UDP: usize = 8;

/// Magic at the start of a latency probe's UDP payload.
pub const PROBE_MAGIC: [u8; 4] = *b"HSLT";
/// Bytes of a latency probe: magic, sequence (u64), send time in ns (u64).
pub const PROBE_LEN: usize = 20;

/// Frame sizes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeMix {
    /// Every frame this size (FCS included).
    Fixed(usize),
    /// Simple IMIX: 64, 594 and 1518-byte frames in the ratio 7:4:1.
    Imix,
}

impl std::str::FromStr for SizeMix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Self::Imix);
        }
        s.parse::<usize>()
            .map(Self::Fixed)
            .map_err(|_| format!("frame size '{s}' is neither a number nor 'imix'"))
    }
}

impl SizeMix {
    /// The repeating pattern of frame sizes (FCS included).
    pub fn pattern(&self) -> Vec<usize> {
        match self {
            Self::Fixed(n) => vec![*n],
            // Interleaved so short windows keep the ratio too.
            Self::Imix => vec![64, 594, 64, 64, 594, 64, 1518, 64, 594, 64, 594, 64],
        }
    }
}

/// Addresses and ports of one generated stream.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Source MAC (the sending interface's).
    pub src_mac: MacAddr,
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// First source address; both addresses must be the same family.
    pub src_ip: IpAddr,
    /// Source addresses used: `src_ip`, `src_ip + 1`, ...
    pub src_ip_count: u32,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// First source port.
    pub src_port: u16,
    /// Source ports used: `src_port`, `src_port + 1`, ...
    pub src_port_count: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowSpec {
    /// Number of distinct flows (source address x source port).
    pub fn flows(&self) -> usize {
        self.src_ip_count as usize * self.src_port_count as usize
    }

    fn is_v6(&self) -> bool {
        self.dst_ip.is_ipv6()
    }

    /// Bytes of Ethernet + IP + UDP headers.
    pub fn header_len(&self) -> usize {
        ETH + if self.is_v6() { IPV6 } else { IPV4 } + UDP
    }

    /// Smallest frame size (FCS included) this family allows.
    pub fn min_size(&self) -> usize {
        (self.header_len() + FCS).max(64)
    }

    fn check(&self) -> Result<()> {
        if self.src_ip.is_ipv6() != self.dst_ip.is_ipv6() {
            bail!(
                "source {} and destination {} are of different IP families",
                self.src_ip,
                self.dst_ip
            );
        }
        if self.src_ip_count == 0 || self.src_port_count == 0 {
            bail!("source address and port counts must be at least 1");
        }
        if u32::from(self.src_port) + u32::from(self.src_port_count) > 65536 {
            bail!(
                "source ports {}+{} run past 65535",
                self.src_port,
                self.src_port_count
            );
        }
        Ok(())
    }

    /// Source address and port of flow `i`.
    fn flow(&self, i: usize) -> (IpAddr, u16) {
        let port = self.src_port + (i % self.src_port_count as usize) as u16;
        let ip_off = (i / self.src_port_count as usize) as u32 % self.src_ip_count;
        let ip = match self.src_ip {
            IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(ip_off).into()),
            IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(u128::from(ip_off)).into()),
        };
        (ip, port)
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// IPv4 header checksum over `hdr` (checksum field zero).
fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for w in hdr.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Builds one complete frame (no FCS) of `size` bytes (FCS included) from
/// `src` to the spec's destination; the payload is a counting pattern.
pub fn build_frame(spec: &FlowSpec, src: (IpAddr, u16), size: usize) -> Result<Vec<u8>> {
    spec.check()?;
    if size < spec.min_size() {
        bail!(
            "frame size {size} is below the minimum {} for this family",
            spec.min_size()
        );
    }
    let len = size - FCS;
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&spec.dst_mac);
    f[6..12].copy_from_slice(&spec.src_mac);
    let (src_b, dst_b) = (ip_bytes(src.0), ip_bytes(spec.dst_ip));
    let l4_off = if spec.is_v6() {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let ip = &mut f[ETH..ETH + IPV6];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((len - ETH - IPV6) as u16).to_be_bytes());
        ip[6] = 17;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src_b);
        ip[24..40].copy_from_slice(&dst_b);
        ETH + IPV6
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[ETH..ETH + IPV4];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((len - ETH) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src_b);
        ip[16..20].copy_from_slice(&dst_b);
        let c = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ETH + IPV4
    };
    let udp_len = len - l4_off;
    {
        let udp = &mut f[l4_off..];
        udp[0..2].copy_from_slice(&src.1.to_be_bytes());
        udp[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        for (i, b) in udp[UDP..].iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    set_udp_checksum(&mut f, l4_off, &src_b, &dst_b);
    Ok(f)
}

fn set_udp_checksum(f: &mut [u8], l4_off: usize, src: &[u8], dst: &[u8]) {
    f[l4_off + 6..l4_off + 8].fill(0);
    let mut c = l4_checksum(src, dst, 17, &f[l4_off..]);
    if c == 0 {
        c = 0xffff;
    }
    f[l4_off + 6..l4_off + 8].copy_from_slice(&c.to_be_bytes());
}

/// The frame length (no FCS) a template-built frame declares in its IP
/// header, read from its first bytes; None when they are not one of ours.
pub fn declared_len(head: &[u8]) -> Option<usize> {
    if head.len() < ETH + 6 {
        return None;
    }
    match u16::from_be_bytes([head[12], head[13]]) {
        0x0800 => Some(ETH + usize::from(u16::from_be_bytes([head[16], head[17]]))),
        0x86dd => Some(ETH + IPV6 + usize::from(u16::from_be_bytes([head[18], head[19]]))),
        _ => None,
    }
}

/// Where the UDP header of a frame starts and which port it is sent to,
/// when the frame is UDP over IPv4 (no options) or IPv6 (no extension
/// headers).
pub fn udp_dst(frame: &[u8]) -> Option<(usize, u16)> {
    if frame.len() < ETH + IPV4 + UDP {
        return None;
    }
    let off = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if frame[ETH] == 0x45 && frame[ETH + 9] == 17 => ETH + IPV4,
        0x86dd if frame[ETH + 6] == 17 && frame.len() >= ETH + IPV6 + UDP => ETH + IPV6,
        _ => return None,
    };
    Some((off, u16::from_be_bytes([frame[off + 2], frame[off + 3]])))
}

/// Every template of a stream: the sizes of `mix` crossed with the flows
/// of `spec`, in the order they should go out.
#[derive(Debug, Clone)]
pub struct TemplateSet {
    /// Frames (no FCS), in sending order.
    pub frames: Vec<Vec<u8>>,
}

impl TemplateSet {
    /// Builds the templates. Their number is the least common multiple of
    /// the size pattern and the flow count, capped at `max_frames` (the
    /// sizes stay in ratio; every flow appears as long as there are no more
    /// flows than `max_frames`).
    pub fn build(spec: &FlowSpec, mix: &SizeMix, max_frames: usize) -> Result<Self> {
        spec.check()?;
        let pattern = mix.pattern();
        let min = spec.min_size();
        let flows = spec.flows();
        if flows > max_frames {
            bail!(
                "{flows} flows need at least {flows} frames in flight; this queue has {max_frames}"
            );
        }
        let period = lcm(pattern.len(), flows);
        let n = if period <= max_frames {
            period
        } else {
            // Whole size patterns, covering every flow at least once.
            max_frames / pattern.len() * pattern.len()
        };
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            let size = pattern[i % pattern.len()].max(min);
            frames.push(
                build_frame(spec, spec.flow(i % flows), size)
                    .with_context(|| format!("template {i}"))?,
            );
        }
        Ok(Self { frames })
    }

    /// Average frame size with FCS, for Gbps figures.
    pub fn mean_size(&self) -> f64 {
        let total: usize = self.frames.iter().map(|f| f.len() + FCS).sum();
        total as f64 / self.frames.len().max(1) as f64
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// Writes a latency probe (sequence and send time) into a template copy and
/// fixes its UDP checksum. `frame` must be a template at least
/// `header_len + PROBE_LEN` long.
pub fn stamp_probe(frame: &mut [u8], seq: u64, sent_ns: u64) -> Option<()> {
    let (off, _) = udp_dst(frame)?;
    let p = off + UDP;
    if frame.len() < p + PROBE_LEN {
        return None;
    }
    frame[p..p + 4].copy_from_slice(&PROBE_MAGIC);
    frame[p + 4..p + 12].copy_from_slice(&seq.to_be_bytes());
    frame[p + 12..p + 20].copy_from_slice(&sent_ns.to_be_bytes());
    let (src, dst) = if off == ETH + IPV4 {
        (frame[26..30].to_vec(), frame[30..34].to_vec())
    } else {
        (frame[22..38].to_vec(), frame[38..54].to_vec())
    };
    set_udp_checksum(frame, off, &src, &dst);
    Some(())
}

/// Reads a latency probe back: (sequence, send time in ns).
pub fn read_probe(frame: &[u8]) -> Option<(u64, u64)> {
    let (off, _) = udp_dst(frame)?;
    let p = off + UDP;
    let b = frame.get(p..p + PROBE_LEN)?;
    if b[0..4] != PROBE_MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(b[4..12].try_into().ok()?);
    let ts = u64::from_be_bytes(b[12..20].try_into().ok()?);
    Some((seq, ts))
}

/// The answer to an ARP request or IPv6 neighbour solicitation for `ip`,
/// so a peer can reach a pktgen that owns no kernel address (AF_XDP takes
/// every frame of its queue, neighbour discovery included).
pub fn neighbor_reply(frame: &[u8], mac: MacAddr, ip: IpAddr) -> Option<Vec<u8>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match (ethertype, ip) {
        (0x0806, IpAddr::V4(me)) => {
            let a = frame.get(ETH..ETH + 28)?;
            // Ethernet/IPv4 request for our address.
            if a[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] || a[24..28] != me.octets() {
                return None;
            }
            let mut r = vec![0u8; 60];
            r[0..6].copy_from_slice(&a[8..14]);
            r[6..12].copy_from_slice(&mac);
            r[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            let b = &mut r[ETH..ETH + 28];
            b[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            b[8..14].copy_from_slice(&mac);
            b[14..18].copy_from_slice(&me.octets());
            b[18..24].copy_from_slice(&a[8..14]);
            b[24..28].copy_from_slice(&a[14..18]);
            Some(r)
        }
        (0x86dd, IpAddr::V6(me)) => {
            let ip6 = frame.get(ETH..ETH + IPV6)?;
            let icmp = frame.get(ETH + IPV6..ETH + IPV6 + 24)?;
            if ip6[6] != 58 || icmp[0] != 135 || icmp[8..24] != me.octets() {
                return None;
            }
            let src = &ip6[8..24];
            if src.iter().all(|b| *b == 0) {
                return None; // duplicate address detection: not for us to answer
            }
            let mut r = vec![0u8; ETH + IPV6 + 32];
            r[0..6].copy_from_slice(&frame[6..12]);
            r[6..12].copy_from_slice(&mac);
            r[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            {
                let h = &mut r[ETH..ETH + IPV6];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&32u16.to_be_bytes());
                h[6] = 58;
                h[7] = 255;
                h[8..24].copy_from_slice(&me.octets());
                h[24..40].copy_from_slice(src);
            }
            let na = &mut r[ETH + IPV6..];
            na[0] = 136;
            na[4] = 0x60; // solicited, override
            na[8..24].copy_from_slice(&me.octets());
            na[24] = 2; // target link-layer address
            na[25] = 1;
            na[26..32].copy_from_slice(&mac);
            let c = l4_checksum(&me.octets(), src, 58, &r[ETH + IPV6..]);
            r[ETH + IPV6 + 2..ETH + IPV6 + 4].copy_from_slice(&c.to_be_bytes());
            Some(r)
        }
        _ => None,
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<MacAddr> {
    hoststack_drivers::netdev::parse_mac(s).with_context(|| format!("'{s}' is not a MAC address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoststack_drivers::{RxChecksumPolicy, RxChecksumVerdict, checksum::check_rx};

    fn spec(v6: bool) -> FlowSpec {
        let (s, d): (IpAddr, IpAddr) = if v6 {
            ("fd77::2".parse().unwrap(), "fd77::1".parse().unwrap())
        } else {
            ("10.77.0.2".parse().unwrap(), "10.77.0.1".parse().unwrap())
        };
        FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_ip: s,
            src_ip_count: 3,
            dst_ip: d,
            src_port: 9000,
            src_port_count: 4,
            dst_port: 9,
        }
    }

    #[test]
    fn frames_are_valid_udp_with_correct_checksums_both_families() {
        for v6 in [false, true] {
            let s = spec(v6);
            for size in [s.min_size(), 128, 1518] {
                let f = build_frame(&s, s.flow(5), size).unwrap();
                assert_eq!(f.len() + FCS, size);
                assert_eq!(declared_len(&f), Some(f.len()));
                assert_eq!(udp_dst(&f).map(|d| d.1), Some(9));
                assert_eq!(
                    check_rx(&f, RxChecksumPolicy::VerifyAll),
                    RxChecksumVerdict::Verified
                );
            }
        }
        let s = spec(false);
        let f = build_frame(&s, s.flow(0), 64).unwrap();
        assert_eq!(
            ipv4_checksum(&f[14..34]),
            0,
            "IPv4 header checksum must verify"
        );
    }

    #[test]
    fn too_small_frames_and_mixed_families_are_refused() {
        assert!(build_frame(&spec(true), spec(true).flow(0), 64).is_err());
        let mut s = spec(false);
        s.dst_ip = "fd77::1".parse().unwrap();
        assert!(build_frame(&s, s.flow(0), 64).is_err());
    }

    #[test]
    fn flows_cover_every_address_and_port() {
        let s = spec(false);
        let mut seen: Vec<_> = (0..s.flows()).map(|i| s.flow(i)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 12);
        assert_eq!(s.flow(11), ("10.77.0.4".parse().unwrap(), 9003));
    }

    #[test]
    fn imix_templates_keep_the_7_4_1_ratio() {
        let mut s = spec(false);
        s.src_ip_count = 1;
        s.src_port_count = 5;
        let t = TemplateSet::build(&s, &SizeMix::Imix, 6000).unwrap();
        assert_eq!(t.frames.len(), 60);
        let count = |n: usize| t.frames.iter().filter(|f| f.len() + FCS == n).count();
        assert_eq!((count(64), count(594), count(1518)), (35, 20, 5));
        assert!(TemplateSet::build(&s, &SizeMix::Fixed(64), 4).is_err());
    }

    #[test]
    fn arp_requests_for_our_address_get_a_reply() {
        let me: IpAddr = "10.77.0.2".parse().unwrap();
        let mut req = vec![0u8; 60];
        req[0..6].fill(0xff);
        req[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        req[12..14].copy_from_slice(&[8, 6]);
        req[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        req[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        req[28..32].copy_from_slice(&[10, 77, 0, 1]);
        req[38..42].copy_from_slice(&[10, 77, 0, 2]);
        let r = neighbor_reply(&req, [2, 0, 0, 0, 0, 2], me).unwrap();
        assert_eq!(&r[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[28..32], &[10, 77, 0, 2]);
        assert_eq!(&r[38..42], &[10, 77, 0, 1]);
        req[41] = 9;
        assert!(neighbor_reply(&req, [2, 0, 0, 0, 0, 2], me).is_none());
    }

    #[test]
    fn neighbour_solicitations_for_our_address_get_a_valid_advert() {
        let me: std::net::Ipv6Addr = "fd77::2".parse().unwrap();
        let peer: std::net::Ipv6Addr = "fd77::1".parse().unwrap();
        let mut ns = vec![0u8; ETH + IPV6 + 24];
        ns[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        ns[12..14].copy_from_slice(&[0x86, 0xdd]);
        ns[14] = 0x60;
        ns[20] = 58;
        ns[22..38].copy_from_slice(&peer.octets());
        ns[54] = 135;
        ns[62..78].copy_from_slice(&me.octets());
        let r = neighbor_reply(&ns, [2, 0, 0, 0, 0, 2], IpAddr::V6(me)).unwrap();
        assert_eq!(r[54], 136);
        assert_eq!(&r[38..54], &peer.octets());
        let sum = l4_checksum(&me.octets(), &peer.octets(), 58, &r[54..]);
        assert_eq!(sum, 0, "the advert's checksum must verify");
    }

    #[test]
    fn probes_round_trip_and_keep_the_checksum_valid() {
        for v6 in [false, true] {
            let s = spec(v6);
            let mut f = build_frame(&s, s.flow(0), 128).unwrap();
            stamp_probe(&mut f, 42, 123_456_789).unwrap();
            assert_eq!(read_probe(&f), Some((42, 123_456_789)));
            assert_eq!(
                check_rx(&f, RxChecksumPolicy::VerifyAll),
                RxChecksumVerdict::Verified
            );
        }
        let s = spec(false);
        let f = build_frame(&s, s.flow(0), 64).unwrap();
        assert_eq!(read_probe(&f), None);
    }
}
