//! Engine-wide counters: every segment refused or dropped is counted by reason, and so is
//! every recovery action. Plain `u64`s the stack reads; nothing on a per-segment path logs.

/// Counters of one endpoint since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpCounters {
    /// Segments handed to `handle_segment`.
    pub segments_in: u64,
    /// Segments written by `poll_transmit`.
    pub segments_out: u64,
    /// Payload bytes accepted in order.
    pub bytes_in: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_out: u64,
    /// Segments with a wrong checksum.
    pub bad_checksum: u64,
    /// Segments too short, with bad header length or options, or impossible flag sets.
    pub malformed: u64,
    /// Segments for no connection and no listener.
    pub no_listener: u64,
    /// RSTs sent in reply to segments that matched nothing.
    pub rst_sent: u64,
    /// RSTs not sent because of the rate limit.
    pub rst_suppressed: u64,
    /// RSTs received that ended a connection or half-open entry.
    pub rst_received: u64,
    /// RSTs received outside the window (ignored).
    pub rst_ignored: u64,
    /// SYNs answered with a cookie because the SYN queue was full.
    pub syn_cookies_sent: u64,
    /// Connections established through a valid cookie.
    pub syn_cookies_accepted: u64,
    /// ACKs that carried an invalid or expired cookie.
    pub bad_cookies: u64,
    /// Final ACKs dropped because the accept queue was full.
    pub accept_queue_full: u64,
    /// Connections accepted by listeners.
    pub passive_opens: u64,
    /// Connections started by `connect`.
    pub active_opens: u64,
    /// Connects that failed (refused, timed out, reset).
    pub connect_failed: u64,
    /// SYN-ACK retransmissions for half-open entries.
    pub synack_retransmits: u64,
    /// Half-open entries dropped after their last SYN-ACK retransmission.
    pub half_open_timeouts: u64,
    /// SYN retransmissions of connects.
    pub syn_retransmits: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Challenge ACKs not sent because of the rate limit.
    pub challenge_acks_suppressed: u64,
    /// Segments refused by PAWS (RFC 7323 §5).
    pub paws_rejected: u64,
    /// Segments outside the receive window.
    pub out_of_window: u64,
    /// Segments whose ACK acknowledges unsent data or lies too far back (RFC 5961 §5).
    pub bad_ack: u64,
    /// Segments without the ACK flag on a synchronized connection (dropped, RFC 9293).
    pub missing_ack: u64,
    /// Calls with a stale or unknown handle.
    pub stale_handle: u64,
    /// Segments retransmitted (any reason).
    pub retransmits: u64,
    /// Retransmission timeouts.
    pub rto_timeouts: u64,
    /// Entries into SACK or dupack-based fast recovery.
    pub fast_recoveries: u64,
    /// Tail loss probes sent.
    pub tlp_probes: u64,
    /// Bytes marked lost by RACK's time rule.
    pub rack_lost_bytes: u64,
    /// Bytes marked lost by RFC 6675's SACK rule or three duplicate ACKs.
    pub sack_lost_bytes: u64,
    /// D-SACK blocks received: the peer got something twice (RFC 2883).
    pub dsacks_received: u64,
    /// Loss reactions undone because the retransmission proved spurious.
    pub spurious_retransmits: u64,
    /// Connections reset after too many retransmission timeouts.
    pub retransmit_timeouts: u64,
    /// Zero-window probes sent.
    pub zero_window_probes: u64,
    /// Keepalive probes sent.
    pub keepalive_probes: u64,
    /// Connections reset because keepalive probes went unanswered.
    pub keepalive_timeouts: u64,
    /// ACKs sent by the delayed-ACK timer.
    pub delayed_acks: u64,
    /// Window updates sent after the application read.
    pub window_updates: u64,
    /// Segments that arrived out of order.
    pub out_of_order: u64,
    /// Connections moved to TIME-WAIT.
    pub time_wait_entered: u64,
    /// TIME-WAIT entries reused by a newer SYN (RFC 6191).
    pub time_wait_reused: u64,
    /// Segments answered or dropped by a TIME-WAIT entry.
    pub time_wait_segments: u64,
    /// Stateless replies dropped because their queue was full.
    pub reply_queue_full: u64,
    /// RSTs sent by `abort`.
    pub aborts: u64,
    /// Accepted connections reset before the application accepted them.
    pub reset_before_accept: u64,
}
