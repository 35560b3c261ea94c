//! The crate's one error type.

use thiserror::Error;

/// Everything an engine call can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TcpError {
    /// The connection handle is unknown or refers to a connection that has ended.
    #[error("stale or unknown connection handle")]
    StaleHandle,
    /// The listener id is unknown or was removed.
    #[error("stale or unknown listener id")]
    StaleListener,
    /// Another listener already owns this table, address and port.
    #[error("address already has a listener")]
    AlreadyListening,
    /// The 4-tuple is taken by a live connection or TIME-WAIT entry.
    #[error("address in use")]
    AddressInUse,
    /// The addresses cannot form a connection (unspecified, port 0, mixed families, ...).
    #[error("invalid address")]
    InvalidAddress,
    /// No ephemeral port is free for this remote.
    #[error("no free local port")]
    NoFreePort,
    /// The connection cannot send any more: close was called or the peer reset it.
    #[error("connection is closing")]
    Closing,
    /// The connection is not established yet.
    #[error("connection not yet established")]
    NotConnected,
    /// A configuration value is out of range; the text names the field.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A listen or connect option is out of range; the text names the field.
    #[error("invalid option: {0}")]
    InvalidOption(&'static str),
}
