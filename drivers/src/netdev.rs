//! Facts about a kernel network interface: index, address, MTU, driver,
//! queues, and for a veth its peer.

use std::fs;

use crate::error::{DriverError, DriverResult};
use crate::{MacAddr, sys};

/// A kernel interface as hoststack sees it.
#[derive(Debug, Clone)]
pub struct Netdev {
    /// Interface name.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// Its Ethernet address.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: usize,
    /// Kernel driver name (`veth`, `tun`, ...), empty when unknown.
    pub driver: String,
    /// Receive queues.
    pub rx_queues: u32,
}

/// The other end of a veth, as far as this namespace can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VethPeer {
    /// The peer is in this namespace.
    Here {
        /// Its name.
        name: String,
        /// Whether TSO is on.
        tso: bool,
    },
    /// The peer is in another network namespace.
    Elsewhere {
        /// Its ifindex inside that namespace.
        ifindex: u32,
    },
}

fn sysfs(name: &str, file: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/class/net/{name}/{file}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Netdev {
    /// Looks the interface up in the current network namespace.
    pub fn lookup(name: &str) -> DriverResult<Self> {
        let ifindex =
            sys::ifindex(name).ok_or_else(|| DriverError::NoSuchInterface(name.into()))?;
        let (mac, mtu) = sys::hwaddr_and_mtu(name).map_err(|e| match e.kind() {
            std::io::ErrorKind::Unsupported => DriverError::InvalidConfig(format!(
                "'{name}' has no Ethernet address (is it a TUN or an IP-only link?)"
            )),
            _ => DriverError::os(format!("reading the address of '{name}'"), e),
        })?;
        let driver = sys::driver_name(name).unwrap_or_default();
        let rx_queues = sys::rx_channels(name)
            .ok()
            .filter(|&n| n > 0)
            .or_else(|| {
                fs::read_dir(format!("/sys/class/net/{name}/queues"))
                    .ok()
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                            .count() as u32
                    })
            })
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            name: name.into(),
            ifindex,
            mac,
            mtu,
            driver,
            rx_queues,
        })
    }

    /// True for a veth.
    pub fn is_veth(&self) -> bool {
        self.driver == "veth"
    }

    /// The veth's peer, when this is a veth.
    pub fn veth_peer(&self) -> Option<VethPeer> {
        if !self.is_veth() {
            return None;
        }
        let peer_index: u32 = sysfs(&self.name, "iflink")?.parse().ok()?;
        // A peer in another namespace has an index that may or may not exist
        // here; link-netnsid in `ip -d link` tells, sysfs does not. Compare
        // the candidate's own iflink: a true peer points back at us.
        for entry in fs::read_dir("/sys/class/net").ok()?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let idx = sysfs(&name, "ifindex").and_then(|s| s.parse::<u32>().ok());
            let back = sysfs(&name, "iflink").and_then(|s| s.parse::<u32>().ok());
            if idx == Some(peer_index) && back == Some(self.ifindex) && name != self.name {
                let tso = sys::tso_enabled(&name).unwrap_or(true);
                return Some(VethPeer::Here { name, tso });
            }
        }
        Some(VethPeer::Elsewhere {
            ifindex: peer_index,
        })
    }

    /// Sets the interface up.
    pub fn set_up(&self) -> DriverResult<()> {
        sys::set_up(&self.name)
            .map_err(|e| DriverError::os(format!("setting '{}' up", self.name), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs_and_rejects_garbage() {
        assert_eq!(parse_mac("02:00:0a:4d:00:01"), Some([2, 0, 10, 77, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:4d:00"), None);
        assert_eq!(parse_mac("02:00:0a:4d:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:4d:00:01"), None);
    }

    #[test]
    fn missing_interface_is_a_named_error() {
        let err = Netdev::lookup("hs-no-such-if").unwrap_err();
        assert!(matches!(err, DriverError::NoSuchInterface(ref n) if n == "hs-no-such-if"));
        assert!(err.to_string().contains("hoststack lab up"));
    }
}
