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
//!
//! A device that says more about a frame (a TAP with `IFF_VNET_HDR`) passes
//! its word along as an [`RxChecksumHint`] to [`check_rx_hinted`]: a frame
//! marked partial carries only the pseudo-header sum in its checksum field
//! (the kernel left the rest to the device), so that seed, the place it sits
//! and the headers around it are checked instead of the payload; a frame
//! marked verified was checked by the kernel. [`complete_partial`] turns a
//! partial checksum into the full one, for a stack that verifies every
//! checksum itself.

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
    /// A partial checksum (the device's word): the seed equals the
    /// pseudo-header sum and sits in the TCP/UDP checksum field; the payload
    /// was not summed (nothing between the kernel and here can corrupt it).
    Partial,
    /// The device (the kernel, for a TAP) verified the checksum.
    DeviceVerified,
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

/// What the device said about a received frame's L4 checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RxChecksumHint {
    /// Nothing: the frame carries a full checksum (or none).
    #[default]
    None,
    /// The checksum is partial: the field at `start + offset` (from the
    /// start of the Ethernet frame) holds the pseudo-header sum, and the sum
    /// from `start` to the end of the packet was left to the device.
    Partial {
        /// Where the summed region (the L4 header) starts.
        start: u16,
        /// Where the checksum field sits inside it.
        offset: u16,
    },
    /// The sender verified the checksum already.
    DeviceVerified,
}

/// The TCP or UDP header of a frame: where it is and what covers it.
#[derive(Debug, Clone, Copy)]
struct L4 {
    proto: u8,
    /// Offset of the L4 header in the frame.
    start: usize,
    /// End of the IP packet in the frame (Ethernet padding excluded).
    end: usize,
    /// Offset of the checksum field inside the L4 header.
    field_at: usize,
    /// The pseudo-header sum, unfolded.
    pseudo: u64,
    ipv4: bool,
}

/// Finds the TCP/UDP header of an Ethernet frame: `Err` when the headers
/// are truncated or inconsistent, `Ok(None)` when there is nothing to check
/// (not TCP or UDP, a fragment).
fn locate(frame: &[u8]) -> Result<Option<L4>, ()> {
    let mut ethertype = be16(frame, 12).ok_or(())?;
    let mut l3 = ETH_HEADER;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16).ok_or(())?;
        l3 += 4;
    }
    let ip = frame.get(l3..).ok_or(())?;
    let (proto, l4_start, l4_end, pseudo, ipv4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let &vihl = ip.first().ok_or(())?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            let (total, frag) = (be16(ip, 2).ok_or(())?, be16(ip, 6).ok_or(())?);
            let total = usize::from(total);
            if vihl >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
                return Err(());
            }
            // Any fragment (more-fragments set or a non-zero offset) is
            // checked, if at all, after reassembly.
            if frag & 0x3fff != 0 {
                return Ok(None);
            }
            let proto = ip[9];
            let len = total - ihl;
            let pseudo = sum_words(0, &ip[12..20]) + u64::from(proto) + len as u64;
            (proto, ihl, total, pseudo, true)
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6_HEADER || ip[0] >> 4 != 6 {
                return Err(());
            }
            let end = IPV6_HEADER + usize::from(be16(ip, 4).ok_or(())?);
            if end > ip.len() {
                return Err(());
            }
            let proto = ip[6];
            // Extension headers are left to the stack (which then verifies
            // nothing for them either); hoststack only emits and expects bare
            // TCP/UDP.
            let len = end - IPV6_HEADER;
            let pseudo = sum_words(0, &ip[8..40]) + u64::from(proto) + len as u64;
            (proto, IPV6_HEADER, end, pseudo, false)
        }
        _ => return Ok(None),
    };
    let field_at = match proto {
        PROTO_TCP if l4_end - l4_start >= 20 => 16,
        PROTO_UDP if l4_end - l4_start >= 8 => 6,
        PROTO_TCP | PROTO_UDP => return Err(()),
        _ => return Ok(None),
    };
    if proto == PROTO_UDP {
        let udp_len = usize::from(be16(ip, l4_start + 4).ok_or(())?);
        if udp_len < 8 || udp_len > l4_end - l4_start {
            return Err(());
        }
    }
    Ok(Some(L4 {
        proto,
        start: l3 + l4_start,
        end: l3 + l4_end,
        field_at,
        pseudo,
        ipv4,
    }))
}

/// Checks the L4 checksum of one Ethernet frame under `policy`.
pub fn check_rx(frame: &[u8], policy: RxChecksumPolicy) -> RxChecksumVerdict {
    let l4 = match locate(frame) {
        Err(()) => return RxChecksumVerdict::Malformed,
        Ok(None) => return RxChecksumVerdict::NotApplicable,
        Ok(Some(l4)) => l4,
    };
    let field = u16::from_be_bytes([
        frame[l4.start + l4.field_at],
        frame[l4.start + l4.field_at + 1],
    ]);
    // Zero means "no checksum" for UDP over IPv4 only.
    if l4.proto == PROTO_UDP && l4.ipv4 && field == 0 {
        return RxChecksumVerdict::NotApplicable;
    }
    if policy == RxChecksumPolicy::TrustPartial && ones_eq(field, fold(l4.pseudo)) {
        return RxChecksumVerdict::Unverified;
    }
    if fold(sum_words(l4.pseudo, &frame[l4.start..l4.end])) == 0xffff {
        RxChecksumVerdict::Verified
    } else {
        RxChecksumVerdict::Bad
    }
}

/// Checks one frame's L4 checksum with what the device said about it: a
/// partial checksum must be the pseudo-header sum, in the TCP/UDP checksum
/// field, of a frame whose headers hold together (anything else is `Bad`,
/// or `Malformed` for broken headers); a frame the device verified needs
/// sane headers only; a frame with no hint is checked under `policy`.
pub fn check_rx_hinted(
    frame: &[u8],
    policy: RxChecksumPolicy,
    hint: RxChecksumHint,
) -> RxChecksumVerdict {
    match hint {
        RxChecksumHint::None => check_rx(frame, policy),
        RxChecksumHint::DeviceVerified => match locate(frame) {
            Err(()) => RxChecksumVerdict::Malformed,
            Ok(None) => RxChecksumVerdict::NotApplicable,
            Ok(Some(_)) => RxChecksumVerdict::DeviceVerified,
        },
        RxChecksumHint::Partial { start, offset } => match locate(frame) {
            Err(()) => RxChecksumVerdict::Malformed,
            // Partial where no TCP/UDP checksum exists: a lying header.
            Ok(None) => RxChecksumVerdict::Bad,
            Ok(Some(l4)) => {
                let (start, offset) = (usize::from(start), usize::from(offset));
                if start != l4.start || offset != l4.field_at {
                    return RxChecksumVerdict::Bad;
                }
                let at = l4.start + l4.field_at;
                let field = u16::from_be_bytes([frame[at], frame[at + 1]]);
                if ones_eq(field, fold(l4.pseudo)) {
                    RxChecksumVerdict::Partial
                } else {
                    RxChecksumVerdict::Bad
                }
            }
        },
    }
}

/// True when `frame` carries a TCP segment (not a fragment).
pub fn is_tcp(frame: &[u8]) -> bool {
    matches!(locate(frame), Ok(Some(l4)) if l4.proto == PROTO_TCP)
}

/// Turns a frame's partial TCP/UDP checksum (already accepted by
/// [`check_rx_hinted`]) into the full one, in place, so a stack that
/// verifies checksums itself accepts it. False when the frame has no
/// TCP/UDP header to complete.
pub fn complete_partial(frame: &mut [u8]) -> bool {
    let Ok(Some(l4)) = locate(frame) else {
        return false;
    };
    // The field holds the pseudo-header sum, so summing the L4 bytes as
    // they are covers header, payload and pseudo-header at once.
    let sum = !fold(sum_words(0, &frame[l4.start..l4.end]));
    // 0 is "no checksum" for UDP; 0xffff is the same value in one's
    // complement and is what a sender writes instead.
    let value = if sum == 0 { 0xffff } else { sum };
    let at = l4.start + l4.field_at;
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    true
}

/// The partial checksum (pseudo-header sum, folded) a sender writes into the
/// checksum field of an L4 segment of `l4_len` bytes when the device
/// completes the sum: what a TAP with checksum offload expects.
pub fn partial_seed(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u16 {
    let acc = sum_words(sum_words(0, src), dst);
    fold(acc + u64::from(proto) + l4_len as u64)
}

/// Computes the L4 checksum field value for a TCP/UDP segment (with its
/// checksum field zeroed) under the given pseudo-header: for frames built
/// here (segments split from a UDP GSO frame) and for tests; the stack
/// computes its own.
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

    const TCP_AT: u16 = 14 + 20;

    #[test]
    fn a_partial_seed_in_the_right_place_is_accepted_without_summing() {
        let f = ipv4_tcp(b"partial payload", |_, pseudo| pseudo);
        let hint = RxChecksumHint::Partial {
            start: TCP_AT,
            offset: 16,
        };
        assert_eq!(
            check_rx_hinted(&f, RxChecksumPolicy::VerifyAll, hint),
            RxChecksumVerdict::Partial
        );
        // The same seed computed the way a sender does.
        let l4_len = f.len() - usize::from(TCP_AT);
        let seed = partial_seed(&f[26..30], &f[30..34], PROTO_TCP, l4_len);
        assert!(ones_eq(
            seed,
            u16::from_be_bytes([f[usize::from(TCP_AT) + 16], f[usize::from(TCP_AT) + 17]])
        ));
    }

    #[test]
    fn a_wrong_seed_or_a_misplaced_partial_checksum_is_bad() {
        let f = ipv4_tcp(b"partial payload", |_, pseudo| pseudo ^ 0x0101);
        let hint = RxChecksumHint::Partial {
            start: TCP_AT,
            offset: 16,
        };
        assert_eq!(
            check_rx_hinted(&f, RxChecksumPolicy::VerifyAll, hint),
            RxChecksumVerdict::Bad
        );
        let good = ipv4_tcp(b"partial payload", |_, pseudo| pseudo);
        for (start, offset) in [(TCP_AT + 2, 16), (TCP_AT, 6), (0, 16)] {
            let hint = RxChecksumHint::Partial { start, offset };
            assert_eq!(
                check_rx_hinted(&good, RxChecksumPolicy::VerifyAll, hint),
                RxChecksumVerdict::Bad,
                "start {start} offset {offset}"
            );
        }
        // A partial hint on a frame with no TCP/UDP header.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let hint = RxChecksumHint::Partial {
            start: 14,
            offset: 6,
        };
        assert_eq!(
            check_rx_hinted(&arp, RxChecksumPolicy::VerifyAll, hint),
            RxChecksumVerdict::Bad
        );
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        for len in [0usize, 1, 5, 64, 1400] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let full = ipv4_tcp(&payload, |full, _| full);
            let mut f = ipv4_tcp(&payload, |_, pseudo| pseudo);
            assert!(complete_partial(&mut f));
            assert_eq!(f, full, "payload of {len} bytes");
            assert_eq!(
                check_rx(&f, RxChecksumPolicy::VerifyAll),
                RxChecksumVerdict::Verified
            );
        }
        // Nothing to complete in a frame without TCP/UDP.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!complete_partial(&mut arp));
    }

    #[test]
    fn a_device_verified_frame_needs_sane_headers_only() {
        let f = ipv4_tcp(b"x", |full, _| full.wrapping_add(9));
        assert_eq!(
            check_rx_hinted(
                &f,
                RxChecksumPolicy::VerifyAll,
                RxChecksumHint::DeviceVerified
            ),
            RxChecksumVerdict::DeviceVerified
        );
        assert_eq!(
            check_rx_hinted(
                &f[..30],
                RxChecksumPolicy::VerifyAll,
                RxChecksumHint::DeviceVerified
            ),
            RxChecksumVerdict::Malformed
        );
    }

    #[test]
    fn hinted_checks_never_panic_on_garbage() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 120) as usize;
            let mut f: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if f.len() > 14 {
                f[12] = 0x08;
                f[13] = 0x00;
            }
            let hint = RxChecksumHint::Partial {
                start: (x >> 8) as u16 % 80,
                offset: (x >> 24) as u16 % 24,
            };
            let _ = check_rx_hinted(&f, RxChecksumPolicy::VerifyAll, hint);
            let _ = complete_partial(&mut f);
        }
    }
}
