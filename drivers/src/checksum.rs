//! Receive-side L4 checksum policy.
//!
//! On a real NIC every TCP and UDP checksum is verified. On a veth the kernel
//! peer, with TX checksum offload on (the default), hands over frames whose
//! checksum field holds only the folded pseudo-header sum (`CHECKSUM_PARTIAL`
//! that nothing completes), and the kernel's own receiver accepts them because
//! nothing on a veth can corrupt a frame. [`RxChecksumPolicy::TrustPartial`]
//! does what the kernel does there: a frame whose field equals its
//! pseudo-header sum is accepted unverified (and counted); any other frame is
//! verified in full, so garbage is still caught.
//!
//! The layer above turns L4 verification off in its own stack and calls
//! [`check_rx`] once per frame instead.

/// How L4 receive checksums are treated on a medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksumPolicy {
    /// Verify every TCP and UDP checksum (real NICs, TAP).
    VerifyAll,
    /// Accept a veth peer's partial checksum unverified; verify the rest.
    TrustPartial,
}

/// What [`check_rx`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksumVerdict {
    /// A TCP/UDP checksum was verified and is right.
    Verified,
    /// A partial checksum accepted without verification.
    Unverified,
    /// Not TCP or UDP, a fragment, or a UDP datagram without checksum:
    /// nothing for this layer to check.
    NotApplicable,
    /// The checksum is wrong: drop the frame.
    Bad,
    /// Headers are truncated or inconsistent: drop the frame.
    Malformed,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const ETH_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero), added to `acc` without folding.
fn sum_words(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a wide sum with end-around carry into 16 bits. The result is never
/// 0 for a non-zero input: one's-complement zero comes out as 0xffff.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// True when two 16-bit one's-complement values are equal (0 and 0xffff
/// are both zero).
fn ones_eq(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

/// Checks the L4 checksum of one Ethernet frame under `policy`.
pub fn check_rx(frame: &[u8], policy: RxChecksumPolicy) -> RxChecksumVerdict {
    let Some(mut ethertype) = be16(frame, 12) else {
        return RxChecksumVerdict::Malformed;
    };
    let mut l3 = ETH_HEADER;
    if ethertype == ETHERTYPE_VLAN {
        let Some(inner) = be16(frame, 16) else {
            return RxChecksumVerdict::Malformed;
        };
        ethertype = inner;
        l3 += 4;
    }
    let Some(ip) = frame.get(l3..) else {
        return RxChecksumVerdict::Malformed;
    };
    match ethertype {
        ETHERTYPE_IPV4 => check_ipv4(ip, policy),
        ETHERTYPE_IPV6 => check_ipv6(ip, policy),
        _ => RxChecksumVerdict::NotApplicable,
    }
}

fn check_ipv4(ip: &[u8], policy: RxChecksumPolicy) -> RxChecksumVerdict {
    let Some(&vihl) = ip.first() else {
        return RxChecksumVerdict::Malformed;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let (Some(total), Some(frag)) = (be16(ip, 2), be16(ip, 6)) else {
        return RxChecksumVerdict::Malformed;
    };
    let total = usize::from(total);
    if vihl >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return RxChecksumVerdict::Malformed;
    }
    // Any fragment (more-fragments set or a non-zero offset) is checked, if
    // at all, after reassembly.
    if frag & 0x3fff != 0 {
        return RxChecksumVerdict::NotApplicable;
    }
    let proto = ip[9];
    let l4 = &ip[ihl..total];
    let mut pseudo = sum_words(0, &ip[12..20]);
    pseudo += u64::from(proto) + l4.len() as u64;
    check_l4(proto, l4, pseudo, policy, true)
}

fn check_ipv6(ip: &[u8], policy: RxChecksumPolicy) -> RxChecksumVerdict {
    if ip.len() < IPV6_HEADER || ip[0] >> 4 != 6 {
        return RxChecksumVerdict::Malformed;
    }
    let Some(payload_len) = be16(ip, 4) else {
        return RxChecksumVerdict::Malformed;
    };
    let end = IPV6_HEADER + usize::from(payload_len);
    if end > ip.len() {
        return RxChecksumVerdict::Malformed;
    }
    let proto = ip[6];
    // Extension headers are left to the stack (which then verifies nothing
    // for them either); hoststack only emits and expects bare TCP/UDP.
    let l4 = &ip[IPV6_HEADER..end];
    let mut pseudo = sum_words(0, &ip[8..40]);
    pseudo += u64::from(proto) + l4.len() as u64;
    check_l4(proto, l4, pseudo, policy, false)
}

fn check_l4(
    proto: u8,
    l4: &[u8],
    pseudo: u64,
    policy: RxChecksumPolicy,
    ipv4: bool,
) -> RxChecksumVerdict {
    let field_at = match proto {
        PROTO_TCP if l4.len() >= 20 => 16,
        PROTO_UDP if l4.len() >= 8 => 6,
        PROTO_TCP | PROTO_UDP => return RxChecksumVerdict::Malformed,
        _ => return RxChecksumVerdict::NotApplicable,
    };
    let field = u16::from_be_bytes([l4[field_at], l4[field_at + 1]]);
    if proto == PROTO_UDP {
        let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
        if udp_len < 8 || udp_len > l4.len() {
            return RxChecksumVerdict::Malformed;
        }
        // Zero means "no checksum" for UDP over IPv4 only.
        if ipv4 && field == 0 {
            return RxChecksumVerdict::NotApplicable;
        }
    }
    if policy == RxChecksumPolicy::TrustPartial && ones_eq(field, fold(pseudo)) {
        return RxChecksumVerdict::Unverified;
    }
    if fold(sum_words(pseudo, l4)) == 0xffff {
        RxChecksumVerdict::Verified
    } else {
        RxChecksumVerdict::Bad
    }
}

/// Computes the L4 checksum field value for a TCP/UDP segment (with its
/// checksum field zeroed) under the given pseudo-header. Test helper for
/// building frames; the stack computes its own.
pub fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut acc = sum_words(0, src);
    acc = sum_words(acc, dst);
    acc += u64::from(proto) + l4.len() as u64;
    !fold(sum_words(acc, l4))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an Ethernet + IPv4 + TCP frame with `payload`, its checksum
    /// field set by `csum` (given the correct full checksum and the
    /// pseudo-header sum).
    fn ipv4_tcp(payload: &[u8], csum: impl Fn(u16, u16) -> u16) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 20 + payload.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&[10, 77, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 77, 0, 2]);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&7u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp.extend_from_slice(payload);
        let full = l4_checksum(&ip[12..16], &ip[16..20], PROTO_TCP, &tcp);
        let pseudo = fold(sum_words(0, &ip[12..20]) + u64::from(PROTO_TCP) + tcp.len() as u64);
        tcp[16..18].copy_from_slice(&csum(full, pseudo).to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn full_checksum_verifies_under_both_policies() {
        let f = ipv4_tcp(b"hello", |full, _| full);
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::Verified
        );
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::TrustPartial),
            RxChecksumVerdict::Verified
        );
    }

    #[test]
    fn partial_checksum_is_unverified_on_veth_and_bad_elsewhere() {
        let f = ipv4_tcp(b"hello", |_, pseudo| pseudo);
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::TrustPartial),
            RxChecksumVerdict::Unverified
        );
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::Bad
        );
    }

    #[test]
    fn wrong_checksum_is_bad_under_both_policies() {
        let f = ipv4_tcp(b"hello", |full, _| full.wrapping_add(1));
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::Bad
        );
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::TrustPartial),
            RxChecksumVerdict::Bad
        );
    }

    #[test]
    fn checksum_0xffff_and_0_both_verify_when_the_sum_is_zero() {
        // Search payloads until the correct checksum is one's-complement
        // zero: then a sender may write 0x0000 or 0xffff and both are legal.
        let mut found = 0;
        for i in 0u32..400_000 {
            let payload = i.to_be_bytes();
            let f = ipv4_tcp(&payload, |full, _| full);
            let field = u16::from_be_bytes([f[14 + 20 + 16], f[14 + 20 + 17]]);
            if field != 0 && field != 0xffff {
                continue;
            }
            found += 1;
            for v in [0u16, 0xffff] {
                let g = ipv4_tcp(&payload, |_, _| v);
                assert_eq!(
                    check_rx(&g, RxChecksumPolicy::VerifyAll),
                    RxChecksumVerdict::Verified,
                    "payload {i:#x} with field {v:#06x}"
                );
            }
        }
        assert!(found > 0, "no payload produced a zero checksum");
    }

    #[test]
    fn truncated_frames_are_malformed_not_panics() {
        let f = ipv4_tcp(b"0123456789", |full, _| full);
        for len in 0..f.len() {
            let v = check_rx(&f[..len], RxChecksumPolicy::VerifyAll);
            assert!(
                matches!(
                    v,
                    RxChecksumVerdict::Malformed | RxChecksumVerdict::NotApplicable
                ),
                "len {len}: {v:?}"
            );
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let mut f: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if f.len() > 14 {
                f[12] = if x & 1 == 0 { 0x08 } else { 0x86 };
                f[13] = if x & 1 == 0 { 0x00 } else { 0xdd };
            }
            let _ = check_rx(&f, RxChecksumPolicy::TrustPartial);
        }
    }

    #[test]
    fn udp_ipv4_without_checksum_is_not_applicable() {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[14 + 9] = PROTO_UDP;
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            check_rx(&f, RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::NotApplicable
        );
    }

    #[test]
    fn ipv6_udp_partial_and_full() {
        let src = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&7u16.to_be_bytes());
        udp[4..6].copy_from_slice(&12u16.to_be_bytes());
        udp.extend_from_slice(b"ping");
        let full = l4_checksum(&src, &dst, PROTO_UDP, &udp);
        let build = |c: u16| {
            let mut u = udp.clone();
            u[6..8].copy_from_slice(&c.to_be_bytes());
            let mut f = vec![0u8; 14];
            f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(u.len() as u16).to_be_bytes());
            ip[6] = PROTO_UDP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src);
            ip[24..40].copy_from_slice(&dst);
            f.extend_from_slice(&ip);
            f.extend_from_slice(&u);
            f
        };
        assert_eq!(
            check_rx(&build(full), RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::Verified
        );
        let mut acc = sum_words(0, &src);
        acc = sum_words(acc, &dst);
        let pseudo = fold(acc + u64::from(PROTO_UDP) + udp.len() as u64);
        assert_eq!(
            check_rx(&build(pseudo), RxChecksumPolicy::TrustPartial),
            RxChecksumVerdict::Unverified
        );
        assert_eq!(
            check_rx(&build(pseudo), RxChecksumPolicy::VerifyAll),
            RxChecksumVerdict::Bad
        );
    }
}
