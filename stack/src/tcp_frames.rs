//! TCP segments in and out of Ethernet frames, for the worker's own TCP
//! engine: which received frames carry a TCP segment for us (those skip
//! smoltcp and go straight to the engine), and the Ethernet and IP headers
//! around a segment the engine wrote.
//!
//! A frame goes to the engine only when nothing about it needs smoltcp: it
//! is addressed to our Ethernet address, carries IPv4 without options
//! trouble and without fragmentation (a valid header checksum) or IPv6
//! whose next header is TCP, and its destination is one of our addresses.
//! Everything else (fragments, extension headers, other protocols, other
//! destinations) goes to smoltcp as before.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hoststack_drivers::MacAddr;

use crate::neighbors::Routes;

const ETH: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;
const TCP: u8 = 6;

/// A TCP segment found in a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInFrame<'a> {
    /// IP source.
    pub src: IpAddr,
    /// IP destination (one of ours).
    pub dst: IpAddr,
    /// The TCP header and payload.
    pub segment: &'a [u8],
}

fn ipv4_header_ok(h: &[u8]) -> bool {
    let mut sum = 0u32;
    for w in h.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The TCP segment `frame` carries for the engine, if it carries one.
pub fn tcp_segment<'a>(
    frame: &'a [u8],
    our_mac: &MacAddr,
    routes: &Routes,
) -> Option<TcpInFrame<'a>> {
    if frame.len() < ETH + IPV4 || frame[0..6] != our_mac[..] {
        return None;
    }
    let ip = &frame[ETH..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            // Version 4, a sane header, the whole packet here, no fragment
            // (MF clear, offset 0), protocol TCP.
            if ip[0] >> 4 != 4
                || ihl < IPV4
                || total < ihl
                || total > ip.len()
                || frag & 0x3fff != 0
                || ip[9] != TCP
                || !ipv4_header_ok(&ip[..ihl])
            {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            routes.is_local(dst).then_some(TcpInFrame {
                src,
                dst,
                segment: &ip[ihl..total],
            })
        }
        0x86dd => {
            if ip.len() < IPV6 || ip[0] >> 4 != 6 || ip[6] != TCP {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if IPV6 + payload > ip.len() {
                return None;
            }
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&ip[at..at + 16]);
                Ipv6Addr::from(a)
            };
            let (src, dst) = (IpAddr::V6(addr(8)), IpAddr::V6(addr(24)));
            routes.is_local(dst).then_some(TcpInFrame {
                src,
                dst,
                segment: &ip[IPV6..IPV6 + payload],
            })
        }
        _ => None,
    }
}

/// Bytes in front of a segment of family `v6`: Ethernet plus IP header.
pub fn header_room(v6: bool) -> usize {
    ETH + if v6 { IPV6 } else { IPV4 }
}

/// Writes the Ethernet and IP headers in front of a TCP segment of
/// `segment_len` bytes that already sits at `header_room(dst.is_ipv6())` in
/// `frame`; returns the frame's length. `id` is the IPv4 identification.
pub fn write_headers(
    frame: &mut [u8],
    src_mac: &MacAddr,
    dst_mac: &MacAddr,
    src: IpAddr,
    dst: IpAddr,
    segment_len: usize,
    id: u16,
) -> usize {
    frame[0..6].copy_from_slice(dst_mac);
    frame[6..12].copy_from_slice(src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let h = &mut frame[ETH..ETH + IPV4];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&((IPV4 + segment_len) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            h[8] = 64;
            h[9] = TCP;
            h[10..12].copy_from_slice(&[0, 0]);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let mut sum = 0u32;
            for w in h.chunks_exact(2) {
                sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            ETH + IPV4 + segment_len
        }
        (s, d) => {
            let (s, d) = (v6(s), v6(d));
            frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let h = &mut frame[ETH..ETH + IPV6];
            h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            h[4..6].copy_from_slice(&(segment_len as u16).to_be_bytes());
            h[6] = TCP;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            ETH + IPV6 + segment_len
        }
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// The IP packet (header and segment) of an engine segment, for smoltcp to
/// send when the next hop's Ethernet address is not known yet.
pub fn ip_packet(src: IpAddr, dst: IpAddr, segment: &[u8], id: u16, out: &mut Vec<u8>) {
    let room = header_room(dst.is_ipv6());
    out.clear();
    out.resize(room + segment.len(), 0);
    out[room..].copy_from_slice(segment);
    write_headers(out, &[0; 6], &[0; 6], src, dst, segment.len(), id);
    out.drain(..ETH);
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet};

    const US: MacAddr = [2, 0, 0, 0, 0, 1];
    const PEER: MacAddr = [2, 0, 0, 0, 0, 2];

    fn routes() -> Routes {
        Routes::new(
            &[
                "10.77.0.1/24".parse().unwrap(),
                "fd77::1/64".parse().unwrap(),
            ],
            None,
        )
    }

    fn frame(src: &str, dst: &str, segment: &[u8]) -> Vec<u8> {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let room = header_room(dst.is_ipv6());
        let mut f = vec![0u8; room + segment.len()];
        f[room..].copy_from_slice(segment);
        let n = write_headers(&mut f, &PEER, &US, src, dst, segment.len(), 7);
        f.truncate(n);
        f
    }

    #[test]
    fn headers_written_here_parse_as_valid_ipv4_and_ipv6() {
        let f = frame("10.77.0.1", "10.77.0.2", &[0xab; 33]);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.total_len(), ip.dont_frag(), ip.hop_limit()),
            (53, true, 64)
        );
        let f = frame("fd77::1", "fd77::2", &[0xab; 33]);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.payload_len(), 33);
    }

    #[test]
    fn our_tcp_frames_are_found_with_their_segment() {
        let seg = [0x11u8; 24];
        let f = frame("10.77.0.2", "10.77.0.1", &seg);
        let t = tcp_segment(&f, &US, &routes()).unwrap();
        assert_eq!(t.segment, &seg[..]);
        assert_eq!(t.src, "10.77.0.2".parse::<IpAddr>().unwrap());
        // Ethernet padding after the IP packet is not part of the segment.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(
            tcp_segment(&padded, &US, &routes()).unwrap().segment,
            &seg[..]
        );
        let f6 = frame("fd77::2", "fd77::1", &seg);
        assert_eq!(tcp_segment(&f6, &US, &routes()).unwrap().segment, &seg[..]);
    }

    #[test]
    fn everything_else_is_left_to_smoltcp() {
        let seg = [0x11u8; 24];
        let r = routes();
        // Not our destination address.
        assert!(tcp_segment(&frame("10.77.0.2", "10.77.0.9", &seg), &US, &r).is_none());
        // Not our Ethernet address.
        let mut f = frame("10.77.0.2", "10.77.0.1", &seg);
        f[0] = 0x02;
        f[5] = 0x99;
        assert!(tcp_segment(&f, &US, &r).is_none());
        // A fragment.
        let mut f = frame("10.77.0.2", "10.77.0.1", &seg);
        f[ETH + 6] |= 0x20;
        assert!(tcp_segment(&f, &US, &r).is_none());
        // A bad header checksum.
        let mut f = frame("10.77.0.2", "10.77.0.1", &seg);
        f[ETH + 10] ^= 1;
        assert!(tcp_segment(&f, &US, &r).is_none());
        // UDP.
        let mut f = frame("10.77.0.2", "10.77.0.1", &seg);
        f[ETH + 9] = 17;
        assert!(tcp_segment(&f, &US, &r).is_none());
        // A length beyond the frame.
        let mut f = frame("10.77.0.2", "10.77.0.1", &seg);
        f.truncate(f.len() - 4);
        assert!(tcp_segment(&f, &US, &r).is_none());
        // Truncated garbage.
        assert!(tcp_segment(&[0u8; 20], &US, &r).is_none());
    }

    #[test]
    fn an_ip_packet_for_smoltcp_is_header_and_segment() {
        let mut out = Vec::new();
        ip_packet(
            "10.77.0.1".parse().unwrap(),
            "10.77.0.2".parse().unwrap(),
            &[5u8; 10],
            3,
            &mut out,
        );
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.payload(), &[5u8; 10]);
    }
}
