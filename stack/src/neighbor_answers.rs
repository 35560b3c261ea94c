//! Answers to smoltcp's own address resolution, from the interface's shared
//! neighbour table.
//!
//! Every worker's smoltcp interface keeps its own neighbour cache and fills
//! it only from ARP and neighbour discovery it receives itself. With several
//! queues, the answer to a worker's ARP request or neighbour solicitation
//! lands on whatever queue the peer's hash picks, so the asking worker may
//! never see it, and its datagrams wait forever (smoltcp asks again once a
//! second, and the peer's hash sends every answer to the same other queue).
//! So each worker gives its smoltcp every entry the shared table gains or
//! sees move, whichever worker learned it, as an answer built here: an ARP
//! reply or a neighbour advertisement from that neighbour, received like
//! any frame. smoltcp fills its cache from it and sends what waited. The
//! device also notes the target of every request smoltcp sends
//! ([`solicited_target`]), and a target the table already knows is answered
//! at once (smoltcp's entries expire after a minute, the table's do not).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hoststack_drivers::MacAddr;

const ETH: usize = 14;
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const ICMPV6: u8 = 58;
const NS: u8 = 135;
const NA: u8 = 136;

/// The address an outgoing frame asks for: the target of an ARP request or
/// of a neighbour solicitation.
pub fn solicited_target(frame: &[u8]) -> Option<IpAddr> {
    if frame.len() < ETH {
        return None;
    }
    let p = &frame[ETH..];
    match [frame[12], frame[13]] {
        ETHERTYPE_ARP if p.len() >= 28 && p[0..8] == [0, 1, 8, 0, 6, 4, 0, 1] => {
            Some(IpAddr::V4(Ipv4Addr::new(p[24], p[25], p[26], p[27])))
        }
        ETHERTYPE_IPV6 if p.len() >= 40 + 24 && p[6] == ICMPV6 && p[40] == NS => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[48..64]);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

/// An ARP reply from `peer` (at `peer_mac`) to `us` (at `our_mac`).
pub fn arp_reply(our_mac: MacAddr, us: Ipv4Addr, peer_mac: MacAddr, peer: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH + 28);
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&ETHERTYPE_ARP);
    // Ethernet, IPv4, 6-byte and 4-byte addresses, reply.
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&peer.octets());
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&us.octets());
    f
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A solicited, overriding neighbour advertisement from `peer` (at
/// `peer_mac`) to `us` (at `our_mac`), with its target link-layer option.
pub fn neighbor_advert(
    our_mac: MacAddr,
    us: Ipv6Addr,
    peer_mac: MacAddr,
    peer: Ipv6Addr,
) -> Vec<u8> {
    let icmp_len = 24 + 8;
    let mut f = Vec::with_capacity(ETH + 40 + icmp_len);
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&ETHERTYPE_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    f.extend_from_slice(&[ICMPV6, 255]);
    f.extend_from_slice(&peer.octets());
    f.extend_from_slice(&us.octets());
    let icmp_at = f.len();
    // Type, code, checksum (later), flags: solicited and override.
    f.extend_from_slice(&[NA, 0, 0, 0, 0x60, 0, 0, 0]);
    f.extend_from_slice(&peer.octets());
    // Target link-layer address option.
    f.extend_from_slice(&[2, 1]);
    f.extend_from_slice(&peer_mac);
    let mut sum = 0u32;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    };
    add(&peer.octets());
    add(&us.octets());
    add(&(icmp_len as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(&f[icmp_at..]);
    let c = fold(sum);
    f[icmp_at + 2..icmp_at + 4].copy_from_slice(&c.to_be_bytes());
    f
}

/// The answer to a request for `peer` (known at `peer_mac`), addressed to
/// `us`; None when the families differ.
pub fn answer(our_mac: MacAddr, us: IpAddr, peer_mac: MacAddr, peer: IpAddr) -> Option<Vec<u8>> {
    match (us, peer) {
        (IpAddr::V4(u), IpAddr::V4(p)) => Some(arp_reply(our_mac, u, peer_mac, p)),
        (IpAddr::V6(u), IpAddr::V6(p)) => Some(neighbor_advert(our_mac, u, peer_mac, p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, Icmpv6Packet, Icmpv6Repr, Ipv6Packet,
        NdiscRepr,
    };

    const US: MacAddr = [2, 0, 0, 0, 0, 1];
    const PEER: MacAddr = [2, 0, 0, 0, 0, 2];

    #[test]
    fn an_arp_reply_parses_as_the_peer_answering_us() {
        let f = arp_reply(
            US,
            "10.77.0.1".parse().unwrap(),
            PEER,
            "10.77.0.2".parse().unwrap(),
        );
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.dst_addr().0, US);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        match arp {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr.0, PEER);
                assert_eq!(source_protocol_addr.to_string(), "10.77.0.2");
                assert_eq!(target_protocol_addr.to_string(), "10.77.0.1");
            }
            _ => panic!("not IPv4 ARP"),
        }
        assert!(solicited_target(&f).is_none(), "a reply asks for nothing");
    }

    #[test]
    fn a_neighbor_advertisement_has_a_valid_checksum_and_the_peers_address() {
        let (us, peer): (Ipv6Addr, Ipv6Addr) =
            ("fd77::1".parse().unwrap(), "fd77::2".parse().unwrap());
        let f = neighbor_advert(US, us, PEER, peer);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv6Repr::parse(&peer, &us, &icmp, &ChecksumCapabilities::default()).unwrap();
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                target_addr,
                lladdr,
                ..
            }) => {
                assert_eq!(target_addr, peer);
                assert_eq!(lladdr.unwrap().as_bytes(), &PEER);
            }
            other => panic!("not an advertisement: {other:?}"),
        }
    }

    #[test]
    fn requests_name_their_target() {
        // An ARP request for 10.77.0.2.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&US);
        arp.extend_from_slice(&ETHERTYPE_ARP);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&US);
        arp.extend_from_slice(&[10, 77, 0, 1]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 77, 0, 2]);
        assert_eq!(solicited_target(&arp), Some("10.77.0.2".parse().unwrap()));
        // A neighbour solicitation for fd77::2 (an advertisement is no
        // request).
        let mut ns = neighbor_advert(
            US,
            "fd77::1".parse().unwrap(),
            PEER,
            "fd77::2".parse().unwrap(),
        );
        assert!(solicited_target(&ns).is_none());
        ns[ETH + 40] = NS;
        assert_eq!(solicited_target(&ns), Some("fd77::2".parse().unwrap()));
        assert!(solicited_target(&[0u8; 10]).is_none());
    }
}
