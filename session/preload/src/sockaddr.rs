//! Socket addresses as the C ABI lays them out (`sockaddr_in`,
//! `sockaddr_in6`), parsed from and written to plain bytes so that no
//! pointer cast is needed above the ABI modules.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Bytes of the largest address we write (`sockaddr_in6`).
pub const MAX_LEN: usize = 28;

/// A socket address in its C layout, with its length.
pub type Raw = ([u8; MAX_LEN], libc::socklen_t);

/// The C layout of `addr` (AF_INET or AF_INET6).
pub fn encode(addr: &SocketAddr) -> Raw {
    let mut b = [0u8; MAX_LEN];
    match addr {
        SocketAddr::V4(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            (b, 16)
        }
        SocketAddr::V6(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            (b, 28)
        }
    }
}

/// `addr` as a socket of `family` reports it: an IPv4 address on an
/// AF_INET6 socket is v4-mapped.
pub fn for_family(addr: SocketAddr, family: i32) -> SocketAddr {
    match (addr, family) {
        (SocketAddr::V4(a), libc::AF_INET6) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        _ => addr,
    }
}

/// Parses a C socket address; `EINVAL` for a short one, `EAFNOSUPPORT`
/// for another family than `family` allows (an AF_INET6 socket takes
/// only AF_INET6 addresses; v4-mapped ones come back as IPv4).
pub fn decode(b: &[u8], family: i32) -> Result<SocketAddr, i32> {
    if b.len() < 2 {
        return Err(libc::EINVAL);
    }
    let fam = i32::from(u16::from_ne_bytes([b[0], b[1]]));
    if fam != family {
        return Err(if family == libc::AF_INET && fam != libc::AF_INET {
            libc::EAFNOSUPPORT
        } else {
            libc::EINVAL
        });
    }
    match fam {
        libc::AF_INET => {
            if b.len() < 16 {
                return Err(libc::EINVAL);
            }
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 => {
            if b.len() < 24 {
                return Err(libc::EINVAL);
            }
            let port = u16::from_be_bytes([b[2], b[3]]);
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            let ip = Ipv6Addr::from(a);
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Ok(SocketAddr::V4(SocketAddrV4::new(v4, port)));
            }
            let scope = if b.len() >= 28 {
                u32::from_ne_bytes([b[24], b[25], b[26], b[27]])
            } else {
                0
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
        }
        _ => Err(libc::EAFNOSUPPORT),
    }
}

/// The unspecified address of `family`, port 0 (what an unbound socket's
/// getsockname reports).
pub fn unspecified(family: i32) -> SocketAddr {
    if family == libc::AF_INET6 {
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for a in ["10.1.2.3:80", "[fd00::7]:9000"] {
            let a: SocketAddr = a.parse().unwrap();
            let fam = if a.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let (b, len) = encode(&a);
            assert_eq!(decode(&b[..len as usize], fam).unwrap(), a);
        }
    }

    #[test]
    fn mapped_and_bad_addresses() {
        let m = for_family("10.0.0.1:5".parse().unwrap(), libc::AF_INET6);
        let (b, len) = encode(&m);
        assert_eq!(
            decode(&b[..len as usize], libc::AF_INET6).unwrap(),
            "10.0.0.1:5".parse().unwrap()
        );
        assert_eq!(decode(&b[..3], libc::AF_INET6), Err(libc::EINVAL));
        assert_eq!(
            decode(&b[..len as usize], libc::AF_INET),
            Err(libc::EAFNOSUPPORT)
        );
    }
}
