//! Engine configuration and per-socket options.
//!
//! [`TcpConfig::default`] gives Linux-like values; [`TcpConfig::validate`] refuses settings the
//! engine cannot honour, naming the field. Listen and connect options refine the per-connection
//! parts.

use smoltcp::time::Duration;

use crate::error::TcpError;

/// Congestion control algorithm for new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionAlgorithmKind {
    /// CUBIC (RFC 9438), Linux's default.
    #[default]
    Cubic,
    /// NewReno (RFC 5681, RFC 6582).
    NewReno,
}

impl core::str::FromStr for CongestionAlgorithmKind {
    type Err = TcpError;
    fn from_str(s: &str) -> Result<Self, TcpError> {
        match s {
            "cubic" => Ok(Self::Cubic),
            "newreno" | "reno" => Ok(Self::NewReno),
            _ => Err(TcpError::InvalidOption(
                "congestion control must be cubic or newreno",
            )),
        }
    }
}

impl core::fmt::Display for CongestionAlgorithmKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Cubic => "cubic",
            Self::NewReno => "newreno",
        })
    }
}

/// How the checksum of an outgoing segment is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxChecksum {
    /// The full checksum, computed here.
    #[default]
    Full,
    /// Only the pseudo-header sum (folded, not complemented): the device
    /// completes it (checksum offload, and TSO, which recomputes it per wire
    /// segment). The payload is never summed here.
    Partial,
}

/// TCP keepalive probing (RFC 9293 §3.8.4), off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection is reset.
    pub probes: u8,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            probes: 9,
        }
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// IP MTU of the path; MSS is MTU − 40 for IPv4 and MTU − 60 for IPv6.
    pub mtu: u16,
    /// Floor of the retransmission timeout.
    pub rto_min: Duration,
    /// Ceiling of the retransmission timeout, backoff included.
    pub rto_max: Duration,
    /// RTO before the first RTT sample (RFC 6298: 1 s).
    pub initial_rto: Duration,
    /// Longest an ACK is delayed; zero acknowledges every segment at once.
    pub delayed_ack: Duration,
    /// SYN retransmissions before a connect fails.
    pub max_syn_retries: u8,
    /// SYN-ACK retransmissions before a half-open entry is dropped.
    pub max_synack_retries: u8,
    /// Consecutive retransmission timeouts before a connection is reset.
    pub max_retransmits: u8,
    /// Time spent in TIME-WAIT (2·MSL).
    pub time_wait: Duration,
    /// Longest a connection waits in FIN-WAIT-2 for the peer's FIN after ours was
    /// acknowledged (Linux's `tcp_fin_timeout`); a peer that never closes cannot keep it.
    pub fin_wait2_timeout: Duration,
    /// Keepalive for new connections; `None` disables it.
    pub keepalive: Option<KeepaliveConfig>,
    /// Congestion control for new connections.
    pub congestion: CongestionAlgorithmKind,
    /// Default largest send buffer per connection, bytes.
    pub send_buffer: u32,
    /// Default largest receive buffer (and so advertised window) per connection, bytes.
    pub recv_buffer: u32,
    /// Offer and accept RFC 7323 timestamps.
    pub timestamps: bool,
    /// Offer and accept RFC 2018 selective acknowledgements.
    pub sack: bool,
    /// Offer and accept RFC 7323 window scaling.
    pub window_scaling: bool,
    /// Secret seed for initial sequence numbers, timestamp offsets and SYN cookies.
    pub secret: u128,
    /// Largest TSO burst in segments; 1 emits only MTU-sized segments.
    pub max_tso_segments: u16,
    /// Full checksums, or partial ones for a device that completes them.
    pub tx_checksum: TxChecksum,
    /// Challenge ACKs (RFC 5961) allowed per second across the endpoint.
    pub challenge_ack_limit: u32,
    /// Stateless RSTs allowed per second across the endpoint.
    pub rst_limit: u32,
    /// Capacity of the queue of stateless replies (RSTs, challenge ACKs, SYN-ACKs).
    pub reply_queue: usize,
    /// Ephemeral port range for [`crate::TcpEndpoint::pick_local_port`], inclusive.
    pub ephemeral_ports: (u16, u16),
    /// Free buffer chunks kept for reuse before memory is returned to the allocator.
    pub idle_chunks: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(120),
            initial_rto: Duration::from_secs(1),
            delayed_ack: Duration::from_millis(40),
            max_syn_retries: 6,
            max_synack_retries: 5,
            max_retransmits: 15,
            time_wait: Duration::from_secs(60),
            fin_wait2_timeout: Duration::from_secs(60),
            keepalive: None,
            congestion: CongestionAlgorithmKind::Cubic,
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            timestamps: true,
            sack: true,
            window_scaling: true,
            secret: 0x6a09_e667_f3bc_c908_bb67_ae85_84ca_a73b,
            max_tso_segments: 1,
            tx_checksum: TxChecksum::Full,
            challenge_ack_limit: 1000,
            rst_limit: 1000,
            reply_queue: 4096,
            ephemeral_ports: (32768, 60999),
            idle_chunks: 4096,
        }
    }
}

/// Smallest buffer the engine accepts (one chunk).
pub(crate) const MIN_BUFFER: u32 = 4096;
/// Largest buffer: window scaling tops out at 2^30.
pub(crate) const MAX_BUFFER: u32 = 1 << 30;

impl TcpConfig {
    /// Checks every field; the error names the first that is out of range.
    pub fn validate(&self) -> Result<(), TcpError> {
        let bad = TcpError::InvalidConfig;
        if self.mtu < 128 {
            return Err(bad("mtu must be at least 128"));
        }
        if self.rto_min == Duration::ZERO {
            return Err(bad("rto_min must be positive"));
        }
        if self.rto_min > self.rto_max {
            return Err(bad("rto_min must not exceed rto_max"));
        }
        if self.initial_rto < self.rto_min || self.initial_rto > self.rto_max {
            return Err(bad("initial_rto must lie between rto_min and rto_max"));
        }
        if self.delayed_ack > Duration::from_millis(500) {
            return Err(bad("delayed_ack must not exceed 500 ms (RFC 9293)"));
        }
        if self.max_syn_retries == 0 || self.max_retransmits == 0 {
            return Err(bad("retry limits must be positive"));
        }
        if self.time_wait > Duration::from_secs(600) {
            return Err(bad("time_wait must not exceed 10 minutes"));
        }
        if let Some(k) = &self.keepalive {
            validate_keepalive(k)
                .map_err(|_| bad("keepalive idle and interval must be positive"))?;
        }
        for size in [self.send_buffer, self.recv_buffer] {
            if !(MIN_BUFFER..=MAX_BUFFER).contains(&size) {
                return Err(bad("buffers must be between 4 KiB and 1 GiB"));
            }
        }
        if self.max_tso_segments == 0 || self.max_tso_segments > 64 {
            return Err(bad("max_tso_segments must be 1 to 64"));
        }
        if self.reply_queue == 0 {
            return Err(bad("reply_queue must be positive"));
        }
        let (lo, hi) = self.ephemeral_ports;
        if lo == 0 || lo > hi {
            return Err(bad("ephemeral_ports must be a non-empty range above 0"));
        }
        Ok(())
    }

    /// Our MSS for a family: the MTU less IP and TCP headers.
    pub(crate) fn mss(&self, ipv6: bool) -> u16 {
        if ipv6 {
            self.mtu.saturating_sub(60)
        } else {
            self.mtu.saturating_sub(40)
        }
    }
}

pub(crate) fn validate_keepalive(k: &KeepaliveConfig) -> Result<(), TcpError> {
    if k.idle == Duration::ZERO || k.interval == Duration::ZERO || k.probes == 0 {
        return Err(TcpError::InvalidOption(
            "keepalive idle, interval and probes must be positive",
        ));
    }
    Ok(())
}

/// Per-connection options, given to `connect` or to a listener for the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnOptions {
    /// Disable Nagle's algorithm.
    pub nodelay: bool,
    /// Send buffer limit; `None` takes the engine default.
    pub send_buffer: Option<u32>,
    /// Receive buffer limit; `None` takes the engine default.
    pub recv_buffer: Option<u32>,
    /// Keepalive; `None` takes the engine default.
    pub keepalive: Option<KeepaliveConfig>,
}

impl ConnOptions {
    pub(crate) fn validate(&self) -> Result<(), TcpError> {
        for size in [self.send_buffer, self.recv_buffer].into_iter().flatten() {
            if !(MIN_BUFFER..=MAX_BUFFER).contains(&size) {
                return Err(TcpError::InvalidOption(
                    "buffers must be between 4 KiB and 1 GiB",
                ));
            }
        }
        if let Some(k) = &self.keepalive {
            validate_keepalive(k)?;
        }
        Ok(())
    }
}

/// Listener backlog sizes and the options of the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// Half-open (SYN-RECEIVED) entries before SYN cookies take over.
    pub syn_backlog: u32,
    /// Established connections waiting for `accept` before final ACKs are dropped.
    pub accept_backlog: u32,
    /// Options for accepted connections.
    pub conn: ConnOptions,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            syn_backlog: 1024,
            accept_backlog: 128,
            conn: ConnOptions::default(),
        }
    }
}

impl ListenOptions {
    pub(crate) fn validate(&self) -> Result<(), TcpError> {
        if self.accept_backlog == 0 {
            return Err(TcpError::InvalidOption("accept_backlog must be positive"));
        }
        self.conn.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_linux_like() {
        let c = TcpConfig::default();
        c.validate().unwrap();
        assert_eq!(c.mss(false), 1460);
        assert_eq!(c.mss(true), 1440);
        assert_eq!(c.rto_min, Duration::from_millis(200));
    }

    #[test]
    fn nonsense_is_refused_by_field() {
        let mut c = TcpConfig {
            rto_min: Duration::from_secs(200),
            ..TcpConfig::default()
        };
        assert!(matches!(c.validate(), Err(TcpError::InvalidConfig(m)) if m.contains("rto_min")));
        c = TcpConfig {
            ephemeral_ports: (5, 4),
            ..TcpConfig::default()
        };
        assert!(c.validate().is_err());
        c = TcpConfig {
            recv_buffer: 10,
            ..TcpConfig::default()
        };
        assert!(c.validate().is_err());
        c = TcpConfig {
            max_tso_segments: 0,
            ..TcpConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
