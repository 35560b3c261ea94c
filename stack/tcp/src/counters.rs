//! Engine-wide counters: every segment refused or dropped is counted by reason, and so is
//! every recovery action. Plain `u64`s the stack reads; nothing on a per-segment path logs.

/// Declares the counters once: the struct and the list of names the stack shows and exports.
macro_rules! tcp_counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Counters of one endpoint since it was created.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct TcpCounters {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl TcpCounters {
            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$((stringify!($name), self.$name),)*].into_iter()
            }

            /// Each counter's name and its one-line description, in declaration order.
            pub fn descriptions() -> &'static [(&'static str, &'static str)] {
                &[$((stringify!($name), concat!($($doc),*)),)*]
            }
        }
    };
}

tcp_counters! {
    /// Segments handed to `handle_segment`.
    segments_in,
    /// Segments written by `poll_transmit`.
    segments_out,
    /// Payload bytes accepted in order.
    bytes_in,
    /// Payload bytes sent, retransmissions included.
    bytes_out,
    /// Segments with a wrong checksum.
    bad_checksum,
    /// Segments too short, with bad header length or options, or impossible flag sets.
    malformed,
    /// Segments for no connection and no listener.
    no_listener,
    /// RSTs sent in reply to segments that matched nothing.
    rst_sent,
    /// RSTs not sent because of the rate limit.
    rst_suppressed,
    /// RSTs received that ended a connection or half-open entry.
    rst_received,
    /// RSTs received outside the window (ignored).
    rst_ignored,
    /// SYNs answered with a cookie because the SYN queue was full.
    syn_cookies_sent,
    /// Connections established through a valid cookie.
    syn_cookies_accepted,
    /// ACKs that carried an invalid or expired cookie.
    bad_cookies,
    /// Final ACKs dropped because the accept queue was full.
    accept_queue_full,
    /// Connections accepted by listeners.
    passive_opens,
    /// Connections started by `connect`.
    active_opens,
    /// Connects that failed (refused, timed out, reset).
    connect_failed,
    /// SYN-ACK retransmissions for half-open entries.
    synack_retransmits,
    /// Half-open entries dropped after their last SYN-ACK retransmission.
    half_open_timeouts,
    /// SYN retransmissions of connects.
    syn_retransmits,
    /// Challenge ACKs sent (RFC 5961).
    challenge_acks,
    /// Challenge ACKs not sent because of the rate limit.
    challenge_acks_suppressed,
    /// Segments refused by PAWS (RFC 7323 §5).
    paws_rejected,
    /// Segments outside the receive window.
    out_of_window,
    /// Segments whose ACK acknowledges unsent data or lies too far back (RFC 5961 §5).
    bad_ack,
    /// Segments without the ACK flag on a synchronized connection (dropped, RFC 9293).
    missing_ack,
    /// Calls with a stale or unknown handle.
    stale_handle,
    /// Segments retransmitted (any reason).
    retransmits,
    /// Retransmission timeouts.
    rto_timeouts,
    /// Entries into SACK or dupack-based fast recovery.
    fast_recoveries,
    /// Tail loss probes sent.
    tlp_probes,
    /// Bytes marked lost by RACK's time rule.
    rack_lost_bytes,
    /// Bytes marked lost by RFC 6675's SACK rule or three duplicate ACKs.
    sack_lost_bytes,
    /// D-SACK blocks received: the peer got something twice (RFC 2883).
    dsacks_received,
    /// Loss reactions undone because the retransmission proved spurious.
    spurious_retransmits,
    /// Connections reset after too many retransmission timeouts.
    retransmit_timeouts,
    /// Zero-window probes sent.
    zero_window_probes,
    /// Keepalive probes sent.
    keepalive_probes,
    /// Connections reset because keepalive probes went unanswered.
    keepalive_timeouts,
    /// ACKs sent by the delayed-ACK timer.
    delayed_acks,
    /// Window updates sent after the application read.
    window_updates,
    /// Segments that arrived out of order.
    out_of_order,
    /// Connections moved to TIME-WAIT.
    time_wait_entered,
    /// Connections closed because the peer's FIN never came in FIN-WAIT-2.
    fin_wait2_timeouts,
    /// TIME-WAIT entries reused by a newer SYN (RFC 6191).
    time_wait_reused,
    /// Segments answered or dropped by a TIME-WAIT entry.
    time_wait_segments,
    /// Stateless replies dropped because their queue was full.
    reply_queue_full,
    /// RSTs sent by `abort`.
    aborts,
    /// Accepted connections reset before the application accepted them.
    reset_before_accept,
}
