//! Transport endpoints and the tuples that key sessions.
//!
//! An [`Endpoint`] is an ip and a port, IPv4 or IPv6. A [`FiveTuple`] adds
//! the transport and the remote end; a [`SessionKey`] adds the FIB the
//! session lives in, so that two FIBs that reuse the same addresses never
//! collide in a lookup table (VPP's 6-tuple).
//!
//! The family of an address is the family of its [`IpAddr`] variant: an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is IPv6 here, as it is on
//! the wire.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{SessionError, SessionResult};
use crate::handle::FibIndex;

/// The transports the session layer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportProto {
    /// TCP, connection oriented.
    Tcp,
    /// UDP, datagrams.
    Udp,
}

impl fmt::Display for TransportProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub const fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The zero (wildcard) address of the family: `0.0.0.0` or `::`.
    pub const fn zero_addr(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Self::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ip4",
            Self::V6 => "ip6",
        })
    }
}

/// An ip and a port. Displays as `1.2.3.4:80` or `[::1]:80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address; the zero address means "any address of this family".
    pub ip: IpAddr,
    /// The port; 0 lets the transport choose one.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from its parts.
    pub const fn new(ip: IpAddr, port: u16) -> Self {
        Self { ip, port }
    }

    /// The wildcard endpoint of a family on a port (`0.0.0.0:port` or
    /// `[::]:port`).
    pub const fn zero(family: IpFamily, port: u16) -> Self {
        Self {
            ip: family.zero_addr(),
            port,
        }
    }

    /// Whether the ip is the zero address of its family.
    pub fn is_zero_ip(&self) -> bool {
        self.ip.is_unspecified()
    }

    /// Whether the ip is a loopback address (`127/8` or `::1`).
    pub fn is_loopback(&self) -> bool {
        self.ip.is_loopback()
    }

    /// The address family of the ip.
    pub const fn family(&self) -> IpFamily {
        IpFamily::of(&self.ip)
    }

    /// The same port on the wildcard address of the same family.
    pub const fn to_wildcard(&self) -> Self {
        Self::zero(self.family(), self.port)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr.ip(), addr.port())
    }
}

impl From<Endpoint> for SocketAddr {
    fn from(ep: Endpoint) -> Self {
        SocketAddr::new(ep.ip, ep.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

/// Transport, local end and remote end of a session. Both ends are always
/// of the same family ([`FiveTuple::new`] checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    proto: TransportProto,
    local: Endpoint,
    remote: Endpoint,
}

impl FiveTuple {
    /// A tuple from its parts. A remote end of another family than the
    /// local end is [`SessionError::InvalidRemoteIp`].
    pub fn new(proto: TransportProto, local: Endpoint, remote: Endpoint) -> SessionResult<Self> {
        if local.family() != remote.family() {
            return Err(SessionError::InvalidRemoteIp(format!(
                "{remote} is not of the same family as the local end {local}"
            )));
        }
        Ok(Self {
            proto,
            local,
            remote,
        })
    }

    /// The transport.
    pub const fn proto(&self) -> TransportProto {
        self.proto
    }

    /// The local end.
    pub const fn local(&self) -> Endpoint {
        self.local
    }

    /// The remote end.
    pub const fn remote(&self) -> Endpoint {
        self.remote
    }

    /// The family both ends share.
    pub const fn family(&self) -> IpFamily {
        self.local.family()
    }

    /// The same tuple seen from the other end (local and remote swapped).
    pub const fn reversed(&self) -> Self {
        Self {
            proto: self.proto,
            local: self.remote,
            remote: self.local,
        }
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.proto, self.local, self.remote)
    }
}

/// A [`FiveTuple`] in a given FIB: the key of an established session in
/// the lookup tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The FIB (table) the session's local address belongs to.
    pub fib: FibIndex,
    /// Transport and both ends.
    pub tuple: FiveTuple,
}

impl SessionKey {
    /// A key from a FIB and a tuple.
    pub const fn new(fib: FibIndex, tuple: FiveTuple) -> Self {
        Self { fib, tuple }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[fib {}] {}", self.fib, self.tuple)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> Endpoint {
        Endpoint::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    fn v6(s: &str, port: u16) -> Endpoint {
        Endpoint::new(s.parse().expect("test address"), port)
    }

    #[test]
    fn zero_ip_is_zero_in_both_families() {
        assert!(Endpoint::zero(IpFamily::V4, 80).is_zero_ip());
        assert!(Endpoint::zero(IpFamily::V6, 80).is_zero_ip());
        assert!(!v4(10, 0, 0, 1, 80).is_zero_ip());
        assert!(!v6("fe80::1", 80).is_zero_ip());
    }

    #[test]
    fn family_follows_the_address_variant() {
        assert_eq!(v4(1, 2, 3, 4, 1).family(), IpFamily::V4);
        assert_eq!(v6("2001:db8::1", 1).family(), IpFamily::V6);
        assert_eq!(v6("::ffff:1.2.3.4", 1).family(), IpFamily::V6);
    }

    #[test]
    fn wildcard_keeps_family_and_port() {
        assert_eq!(v4(1, 2, 3, 4, 443).to_wildcard(), v4(0, 0, 0, 0, 443));
        assert_eq!(v6("2001:db8::1", 443).to_wildcard(), v6("::", 443));
    }

    #[test]
    fn endpoints_display_like_socket_addresses() {
        assert_eq!(v4(1, 2, 3, 4, 80).to_string(), "1.2.3.4:80");
        assert_eq!(v6("::1", 80).to_string(), "[::1]:80");
    }

    #[test]
    fn mixed_family_tuple_is_invalid_remote_ip() {
        let err = FiveTuple::new(TransportProto::Tcp, v4(1, 2, 3, 4, 80), v6("::1", 9))
            .expect_err("mixed families");
        assert!(matches!(err, SessionError::InvalidRemoteIp(_)));
    }

    #[test]
    fn reversed_swaps_the_ends() {
        let t =
            FiveTuple::new(TransportProto::Udp, v6("::1", 1), v6("::2", 2)).expect("same family");
        let r = t.reversed();
        assert_eq!((r.local(), r.remote()), (t.remote(), t.local()));
        assert_eq!(r.reversed(), t);
        assert_eq!(t.to_string(), "UDP [::1]:1 -> [::2]:2");
    }

    #[test]
    fn same_tuple_in_two_fibs_is_two_keys() {
        let t = FiveTuple::new(TransportProto::Tcp, v4(1, 1, 1, 1, 1), v4(2, 2, 2, 2, 2))
            .expect("same family");
        assert_ne!(
            SessionKey::new(FibIndex(0), t),
            SessionKey::new(FibIndex(1), t)
        );
    }
}
