//! A stack's validated configuration: which driver on which interface,
//! how many queues and on which cores, the addresses the stack owns, and
//! TCP tuning.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use hoststack_drivers::afxdp::{XdpAttachMode, XdpCopyMode};
use hoststack_drivers::uring_tap::{RxMode, TapOffload};
use smoltcp::wire::{IpAddress, IpCidr};

use crate::error::{StackError, StackResult};

/// An address with its prefix, as given on the command line (`10.77.0.1/24`,
/// `fd77::1/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrPrefix {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl FromStr for AddrPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not ADDRESS/PREFIX (e.g. 10.77.0.1/24)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("'{p}' is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(format!("'{addr}' cannot be an interface address"));
        }
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for AddrPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl AddrPrefix {
    /// As smoltcp's CIDR.
    pub fn cidr(&self) -> IpCidr {
        IpCidr::new(IpAddress::from(self.addr), self.prefix)
    }
}

/// Which datapath a stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverKind {
    /// AF_XDP on a NIC (or veth) queue.
    #[default]
    AfXdp,
    /// io_uring on a TAP device.
    UringTap,
}

impl FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "afxdp" | "af_xdp" | "xdp" => Ok(Self::AfXdp),
            "uring-tap" | "tap" | "io_uring" => Ok(Self::UringTap),
            _ => Err(format!(
                "unknown driver '{s}' (expected afxdp or uring-tap)"
            )),
        }
    }
}

/// Which TCP runs the stack's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpEngineKind {
    /// hoststack's own engine (`hoststack-tcp`): SACK, RACK-TLP, CUBIC, a
    /// 200 ms RTO floor, SYN cookies, a listen backlog, O(1) per segment.
    #[default]
    Hoststack,
    /// smoltcp's TCP sockets (one per connection, scanned each poll).
    Smoltcp,
}

impl FromStr for TcpEngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hoststack" => Ok(Self::Hoststack),
            "smoltcp" => Ok(Self::Smoltcp),
            _ => Err(format!(
                "unknown TCP engine '{s}' (expected hoststack or smoltcp)"
            )),
        }
    }
}

impl std::fmt::Display for TcpEngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hoststack => "hoststack",
            Self::Smoltcp => "smoltcp",
        })
    }
}

/// TCP tuning applied to every connection.
#[derive(Debug, Clone)]
pub struct TcpTuning {
    /// Which engine.
    pub engine: TcpEngineKind,
    /// Receive and send buffer bytes per connection (the most each grows
    /// to, with hoststack's engine; allocated up front with smoltcp's).
    pub buffer: usize,
    /// Listening sockets kept ready per port beyond the SYNs in flight.
    pub listen_spare: usize,
    /// Upper bound of listening sockets per port (the backlog).
    pub listen_max: usize,
    /// Nagle's algorithm.
    pub nagle: bool,
    /// Delayed ACK; `None` acks at once.
    pub ack_delay: Option<Duration>,
    /// Floor of the retransmission timeout (hoststack's engine).
    pub rto_min: Duration,
    /// Half-open connections a listener keeps before answering with SYN
    /// cookies (hoststack's engine).
    pub syn_backlog: u32,
    /// Established connections waiting for the session layer per listener
    /// (hoststack's engine).
    pub accept_backlog: u32,
    /// Congestion control (hoststack's engine): CUBIC or NewReno.
    pub congestion: hoststack_tcp::CongestionAlgorithmKind,
}

impl Default for TcpTuning {
    fn default() -> Self {
        Self {
            engine: TcpEngineKind::default(),
            buffer: 1 << 20,
            listen_spare: 8,
            listen_max: 4096,
            nagle: false,
            ack_delay: None,
            rto_min: Duration::from_millis(200),
            syn_backlog: 4096,
            accept_backlog: 4096,
            congestion: hoststack_tcp::CongestionAlgorithmKind::Cubic,
        }
    }
}

impl TcpTuning {
    /// The engine config for an interface of IP MTU `mtu`, with `secret`
    /// keying its initial sequence numbers and SYN cookies.
    pub fn engine_config(&self, mtu: usize, secret: u128) -> hoststack_tcp::TcpConfig {
        let buffer = self.buffer.min(u32::MAX as usize) as u32;
        hoststack_tcp::TcpConfig {
            mtu: mtu.min(usize::from(u16::MAX)) as u16,
            rto_min: hoststack_tcp::Duration::from_micros(self.rto_min.as_micros() as u64),
            delayed_ack: self.ack_delay.map_or(hoststack_tcp::Duration::ZERO, |d| {
                hoststack_tcp::Duration::from_micros(d.as_micros() as u64)
            }),
            congestion: self.congestion,
            send_buffer: buffer,
            recv_buffer: buffer,
            secret,
            ..hoststack_tcp::TcpConfig::default()
        }
    }

    /// The listen options of every listener.
    pub fn listen_options(&self) -> hoststack_tcp::ListenOptions {
        hoststack_tcp::ListenOptions {
            syn_backlog: self.syn_backlog,
            accept_backlog: self.accept_backlog,
            conn: self.conn_options(),
        }
    }

    /// The options of every connection.
    pub fn conn_options(&self) -> hoststack_tcp::ConnOptions {
        hoststack_tcp::ConnOptions {
            nodelay: !self.nagle,
            ..hoststack_tcp::ConnOptions::default()
        }
    }
}

/// Most queues one interface may have served.
pub const MAX_QUEUES: u32 = 64;

/// Everything a [`crate::Stack`] needs.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Interface (NIC, veth or TAP) name.
    pub interface: String,
    /// Datapath.
    pub driver: DriverKind,
    /// XDP attach mode (AF_XDP only).
    pub xdp_mode: XdpAttachMode,
    /// Copy or zero-copy (AF_XDP only).
    pub xdp_copy: XdpCopyMode,
    /// Offloads asked of a TAP (uring-tap only).
    pub tap_offload: TapOffload,
    /// How a TAP's frames are read (uring-tap only).
    pub tap_rx: RxMode,
    /// Queues served, one worker each: queues 0..n. `None` serves every
    /// receive queue the interface has (see `queues`).
    pub queues: Option<u32>,
    /// Traffic is steered away from the queues not served (RSS indirection,
    /// ntuple rules, a veth peer with fewer tx queues): serving fewer
    /// queues than the interface has is intended.
    pub traffic_steered: bool,
    /// Core for each worker; empty means thread `t` on core `t % cores`.
    pub cores: Vec<usize>,
    /// Addresses the stack owns.
    pub addresses: Vec<AddrPrefix>,
    /// Default gateway, if any.
    pub gateway: Option<IpAddr>,
    /// TCP tuning.
    pub tcp: TcpTuning,
    /// Seed for ISNs and ephemeral ports; 0 picks one from the clock.
    pub seed: u64,
    /// Percent of frames dropped on purpose in each direction (testing).
    pub inject_loss: u8,
    /// The FIB (table) index the interface belongs to: sessions of app
    /// namespaces with this table use it.
    pub table: u32,
}

impl StackConfig {
    /// The key of the TCP engine's initial sequence numbers and SYN cookies
    /// (RFC 6528: unguessable): from the kernel's random source, or derived
    /// from `seed` when one is set (reproducible test runs).
    pub fn tcp_secret(&self) -> StackResult<u128> {
        if self.seed != 0 {
            let s = u128::from(self.seed);
            return Ok(s << 64 | (s.wrapping_mul(0x9e37_79b9_7f4a_7c15) & u128::from(u64::MAX)));
        }
        let mut key = [0u8; 16];
        let n = rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty())
            .map_err(|e| StackError::os("reading the TCP secret from getrandom", e.into()))?;
        if n != key.len() {
            return Err(StackError::Config(
                "getrandom returned too few bytes".into(),
            ));
        }
        Ok(u128::from_le_bytes(key))
    }

    /// A config for `interface` with `addresses` and defaults otherwise.
    pub fn new(interface: &str, addresses: Vec<AddrPrefix>) -> Self {
        Self {
            interface: interface.into(),
            driver: DriverKind::AfXdp,
            xdp_mode: XdpAttachMode::Auto,
            xdp_copy: XdpCopyMode::Auto,
            tap_offload: TapOffload::Auto,
            tap_rx: RxMode::Auto,
            queues: None,
            traffic_steered: false,
            cores: Vec::new(),
            addresses,
            gateway: None,
            tcp: TcpTuning::default(),
            seed: 0,
            inject_loss: 0,
            table: 0,
        }
    }

    /// Checks the values that do not need the interface.
    pub fn validate(&self) -> StackResult<()> {
        if self.addresses.is_empty() {
            return Err(StackError::Config(
                "at least one --address is needed".into(),
            ));
        }
        if let Some(q) = self.queues {
            if q == 0 || q > MAX_QUEUES {
                return Err(StackError::Config(format!(
                    "--queues {q} is outside 1..={MAX_QUEUES}"
                )));
            }
            if !self.cores.is_empty() && self.cores.len() != q as usize {
                return Err(StackError::Config(format!(
                    "{} cores given for {q} queues",
                    self.cores.len(),
                )));
            }
        }
        if self.tcp.buffer < 4096 || self.tcp.buffer > (1 << 30) {
            return Err(StackError::Config(format!(
                "TCP buffer {} is outside 4 KiB..1 GiB",
                self.tcp.buffer
            )));
        }
        if self.inject_loss > 50 {
            return Err(StackError::Config(format!(
                "--inject-loss {} is above 50 %",
                self.inject_loss
            )));
        }
        if self.tcp.listen_spare == 0 || self.tcp.listen_max < self.tcp.listen_spare {
            return Err(StackError::Config(
                "listen pool: spare must be >= 1 and <= max".into(),
            ));
        }
        if self.tcp.engine == TcpEngineKind::Hoststack {
            self.tcp
                .engine_config(1500, 1)
                .validate()
                .map_err(|e| StackError::Config(format!("TCP: {e}")))?;
            if self.tcp.syn_backlog == 0 || self.tcp.accept_backlog == 0 {
                return Err(StackError::Config(
                    "the SYN and accept backlogs must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_say_why() {
        let a: AddrPrefix = "10.77.0.1/24".parse().unwrap();
        assert_eq!(a.to_string(), "10.77.0.1/24");
        assert!("fd77::1/64".parse::<AddrPrefix>().is_ok());
        assert!(
            "10.77.0.1"
                .parse::<AddrPrefix>()
                .unwrap_err()
                .contains("ADDRESS/PREFIX")
        );
        assert!(
            "10.77.0.1/33"
                .parse::<AddrPrefix>()
                .unwrap_err()
                .contains("longer")
        );
        assert!("0.0.0.0/0".parse::<AddrPrefix>().is_err());
        assert!("nonsense/8".parse::<AddrPrefix>().is_err());
    }

    #[test]
    fn config_without_address_is_refused() {
        let c = StackConfig::new("eth0", vec![]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn cores_must_match_queues() {
        let mut c = StackConfig::new("eth0", vec!["10.0.0.1/24".parse().unwrap()]);
        c.queues = Some(2);
        c.cores = vec![0];
        assert!(c.validate().is_err());
        c.cores = vec![0, 1];
        assert!(c.validate().is_ok());
    }
}
