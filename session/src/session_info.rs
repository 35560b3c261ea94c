//! What a session looks like from outside its stack thread: its state and
//! the summary `show session`, the daemon's snapshots and builtin apps read.

use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::handle::{AppIndex, AppWorkerIndex, ListenerHandle, SessionHandle};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// A connect is under way.
    Connecting,
    /// Data flows.
    Ready,
    /// The peer finished sending; the app was (or will be) told.
    RemoteClosed,
    /// The app closed; queued data drains, then the transport closes.
    Closing,
    /// The transport is closing; waiting for it to forget the connection.
    TransportClosing,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connecting => "CONNECTING",
            Self::Ready => "READY",
            Self::RemoteClosed => "REMOTE-CLOSED",
            Self::Closing => "CLOSING",
            Self::TransportClosing => "TRANSPORT-CLOSING",
        })
    }
}

/// A summary of a session for `show session` and for apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Handle.
    pub handle: SessionHandle,
    /// Protocol.
    pub proto: TransportProto,
    /// State.
    pub state: SessionState,
    /// Our end.
    pub local: Endpoint,
    /// The peer.
    pub remote: Endpoint,
    /// Owning app.
    pub app: AppIndex,
    /// Owning app worker.
    pub app_worker: AppWorkerIndex,
    /// Bytes waiting in the rx fifo.
    pub rx_fill: u32,
    /// Bytes waiting in the tx fifo.
    pub tx_fill: u32,
    /// Cut-through or not.
    pub cut_through: bool,
    /// The listener it was accepted on; `None` for a session the app
    /// connected (what `show app client` lists).
    pub listener: Option<ListenerHandle>,
    /// The transport's view of the connection (state, windows, timers),
    /// when asked for.
    pub transport: Vec<(&'static str, String)>,
}
