//! What the operator sees: RFC 9293 state names, flow tuples and per-connection figures.

use core::fmt;
use core::net::SocketAddr;

use smoltcp::time::Duration;

/// A connection's identity: the routing table it lives in and its two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// FIB index the stack demultiplexes by.
    pub table: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl fmt::Display for FlowTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} -> {}", self.table, self.local, self.remote)
    }
}

/// RFC 9293 connection states (LISTEN belongs to listeners, not connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
    Closed,
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynReceived => "SYN-RECEIVED",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::Closing => "CLOSING",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Closed => "CLOSED",
        };
        f.write_str(name)
    }
}

/// A snapshot of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    pub state: TcpState,
    pub tuple: FlowTuple,
    /// Congestion window, bytes.
    pub cwnd: u32,
    /// Slow-start threshold, bytes (`u32::MAX` until the first loss).
    pub ssthresh: u32,
    pub srtt: Option<Duration>,
    pub rttvar: Duration,
    pub min_rtt: Option<Duration>,
    /// Current retransmission timeout, backoff included.
    pub rto: Duration,
    /// RFC 6675 pipe: bytes believed in the network.
    pub bytes_in_flight: u32,
    /// Bytes sent and not cumulatively acknowledged.
    pub bytes_unacked: u32,
    /// Segments retransmitted on this connection.
    pub retransmits: u64,
    /// SACK blocks received.
    pub sack_blocks_received: u64,
    /// Peer's window, scaled, bytes.
    pub snd_wnd: u32,
    /// Window we last advertised, bytes.
    pub rcv_wnd: u32,
    /// Payload bytes per segment we send.
    pub mss: u16,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub timestamps: bool,
    pub sack: bool,
    pub in_recovery: bool,
    /// Bytes queued in the send buffer (unsent plus unacknowledged).
    pub send_queued: usize,
    /// Readable bytes in the receive buffer.
    pub recv_queued: usize,
    /// Our initial sequence number.
    pub iss: u32,
    /// The peer's initial sequence number.
    pub irs: u32,
}
