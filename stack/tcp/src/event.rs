//! Handles and events: what the stack holds and what the engine tells it.

/// A connection. Its generation makes a handle to an ended connection stale, never a handle to
/// whatever reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnHandle {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnHandle {
    /// Slot index, dense from 0: suitable for the stack's own per-connection tables.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The handle as one number (generation above index), for a caller that names
    /// connections by integers; [`ConnHandle::from_bits`] is its inverse.
    pub fn to_bits(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// A handle from [`ConnHandle::to_bits`]. Any number makes a handle; one the engine never
    /// issued is stale, never another connection.
    pub fn from_bits(bits: u64) -> Self {
        Self {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

/// A listener, generation-checked like [`ConnHandle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// Why a connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The peer answered the SYN with a RST.
    Refused,
    /// No answer after the configured SYN retransmissions.
    TimedOut,
    /// Reset during a simultaneous open.
    Reset,
}

/// Why an established connection ended abruptly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The peer sent an acceptable RST.
    Peer,
    /// Too many consecutive retransmission timeouts.
    RetransmitTimeout,
    /// Keepalive probes went unanswered.
    KeepaliveTimeout,
}

/// Something the stack should act on. Events are queued in order and never dropped. Every
/// connection ends with exactly one of `ConnectFailed`, `Reset` or `Closed`; its handle is
/// stale afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEvent {
    /// The listener's accept queue went from empty to non-empty.
    AcceptReady { listener: ListenerId },
    /// An active open reached ESTABLISHED.
    Connected { conn: ConnHandle },
    /// An active open failed.
    ConnectFailed {
        conn: ConnHandle,
        reason: ConnectFailure,
    },
    /// New in-order data arrived and none was announced since the last read.
    Readable { conn: ConnHandle },
    /// Send space reopened after a `send` was cut short.
    Writable { conn: ConnHandle },
    /// The peer's FIN arrived; all data before it is readable.
    RemoteClosed { conn: ConnHandle },
    /// The connection was reset; unread data is gone.
    Reset {
        conn: ConnHandle,
        reason: ResetReason,
    },
    /// Both directions are closed and everything was read, or the connection was aborted.
    Closed { conn: ConnHandle },
}
