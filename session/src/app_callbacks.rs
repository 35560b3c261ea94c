//! A builtin app's callbacks, and [`AppContext`]: what a callback may do on
//! the stack thread that calls it.
//!
//! Builtin apps run inside the stack process. Instead of an event queue they
//! give the session layer a table of callbacks (VPP's session callback
//! vector); the stack thread that owns a session calls them with a context
//! that reads and writes that session's fifos. The context is a trait so
//! this module sits below everything that implements or stores it.

use std::fmt;
use std::sync::Arc;

use hoststack_app_proto::endpoint::FiveTuple;
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{AppWorkerIndex, SessionHandle};

use crate::session_info::SessionInfo;
use crate::transport::DatagramMeta;

/// Work to finish after a lock is released or a poll is over: a builtin
/// app's callbacks never run under the session layer's lock.
pub type Deferred = Box<dyn FnOnce() + Send>;

/// What a builtin app's callback may do, on the thread that called it.
/// Every call on a session checks that the app worker being called owns it
/// (`NotOwner`, `NoSession` otherwise).
pub trait AppContext {
    /// The app worker being called.
    fn app_worker(&self) -> AppWorkerIndex;

    /// The stack thread the callback runs on.
    fn thread(&self) -> u32;

    /// A session's summary.
    fn info(&mut self, h: SessionHandle) -> SessionResult<SessionInfo>;

    /// Bytes waiting in the rx fifo.
    fn rx_available(&mut self, h: SessionHandle) -> SessionResult<usize>;

    /// Room in the tx fifo.
    fn tx_space(&mut self, h: SessionHandle) -> SessionResult<usize>;

    /// Reads from the rx fifo.
    fn read(&mut self, h: SessionHandle, buf: &mut [u8]) -> SessionResult<usize>;

    /// Copies rx bytes at `offset` without consuming them.
    fn peek(&mut self, h: SessionHandle, offset: u32, buf: &mut [u8]) -> SessionResult<usize>;

    /// Consumes `n` rx bytes.
    fn consume(&mut self, h: SessionHandle, n: u32) -> SessionResult<u32>;

    /// Writes to the tx fifo and lets the stack (or a cut-through peer)
    /// know. Returns the bytes taken; fewer than `data.len()` means the fifo
    /// is full (ask for [`want_tx_space`](Self::want_tx_space)).
    fn write(&mut self, h: SessionHandle, data: &[u8]) -> SessionResult<usize>;

    /// Asks for a tx-space event once the tx fifo drains.
    fn want_tx_space(&mut self, h: SessionHandle) -> SessionResult<()>;

    /// Reads one datagram: its addresses and payload length. `Ok(None)`
    /// when none is waiting; a payload larger than `buf` is truncated.
    fn recv_datagram(
        &mut self,
        h: SessionHandle,
        buf: &mut [u8],
    ) -> SessionResult<Option<(usize, DatagramMeta)>>;

    /// Queues one datagram to `meta.remote`; false when the tx fifo lacks
    /// room for it.
    fn send_datagram(
        &mut self,
        h: SessionHandle,
        meta: DatagramMeta,
        payload: &[u8],
    ) -> SessionResult<bool>;

    /// Closes the session (after its queued data is sent).
    fn disconnect(&mut self, h: SessionHandle) -> SessionResult<()>;

    /// The session's peer for cut-through, its tuple otherwise.
    fn tuple(&mut self, h: SessionHandle) -> SessionResult<Option<FiveTuple>>;
}

/// A session callback of a builtin app.
pub type SessionCallback = Arc<dyn Fn(&mut dyn AppContext, SessionHandle) + Send + Sync>;
/// The connected callback: the session, or why the connect failed, and the
/// opaque value the connect carried.
pub type ConnectedCallback =
    Arc<dyn Fn(&mut dyn AppContext, Result<SessionHandle, SessionError>, u64) + Send + Sync>;
/// A segment callback: segment index and size (0 on removal).
pub type SegmentCallback = Arc<dyn Fn(u32, usize) + Send + Sync>;
/// Called when a cert/key pair the app registered interest in is deleted.
pub type CertCallback = Arc<dyn Fn(u32) + Send + Sync>;

/// The callbacks of a builtin app; every one is optional, and attaching
/// without accept, connected, disconnect or reset logs a warning (the app
/// will miss those events).
#[derive(Clone, Default)]
pub struct AppCallbacks {
    /// A session was accepted on one of the app's listeners.
    pub accept: Option<SessionCallback>,
    /// A connect finished.
    pub connected: Option<ConnectedCallback>,
    /// The peer closed the session.
    pub disconnect: Option<SessionCallback>,
    /// The peer reset the session.
    pub reset: Option<SessionCallback>,
    /// Data arrived in the session's rx fifo.
    pub rx: Option<SessionCallback>,
    /// Room appeared in the session's tx fifo.
    pub tx: Option<SessionCallback>,
    /// A segment was added to one of the app's workers.
    pub add_segment: Option<SegmentCallback>,
    /// A segment was removed.
    pub del_segment: Option<SegmentCallback>,
    /// A cert/key pair the app cared about was deleted.
    pub cert_deleted: Option<CertCallback>,
}

impl fmt::Debug for AppCallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCallbacks")
            .field("accept", &self.accept.is_some())
            .field("connected", &self.connected.is_some())
            .field("disconnect", &self.disconnect.is_some())
            .field("reset", &self.reset.is_some())
            .field("rx", &self.rx.is_some())
            .field("tx", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl AppCallbacks {
    /// Names of the callbacks VPP warns about when missing.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.accept.is_none() {
            m.push("accept");
        }
        if self.connected.is_none() {
            m.push("connected");
        }
        if self.disconnect.is_none() {
            m.push("disconnect");
        }
        if self.reset.is_none() {
            m.push("reset");
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_callbacks_are_listed() {
        let cbs = AppCallbacks::default();
        assert_eq!(
            cbs.missing(),
            vec!["accept", "connected", "disconnect", "reset"]
        );
        let cbs = AppCallbacks {
            accept: Some(Arc::new(|_, _| {})),
            ..Default::default()
        };
        assert_eq!(cbs.missing(), vec!["connected", "disconnect", "reset"]);
    }
}
