//! The seam between the session layer and a transport protocol.
//!
//! The session layer never sees a packet: each stack thread hands its
//! [`SessionWorker`](crate::session_worker::SessionWorker) something that
//! implements [`Transport`] (in hoststack, smoltcp's TCP and UDP sockets of
//! that thread's interface). The session worker asks it to listen, connect,
//! move bytes between its buffers and the session fifos, and close; the
//! transport reports what happened on the wire as [`TransportEvent`]s.
//!
//! Connections are named by an opaque [`TransportConnId`] the transport
//! chooses; listeners by the [`ListenerHandle`] the session layer gave.

use hoststack_app_proto::endpoint::{Endpoint, FiveTuple, TransportProto};
use hoststack_app_proto::error::SessionResult;
use hoststack_app_proto::handle::{ListenerHandle, SessionHandle};

/// A transport's name for one connection (or one bound datagram socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportConnId(pub u64);

/// What a transport reports from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A connection arrived on a listener (TCP), or a listener's datagram
    /// socket is ready on this thread (UDP).
    Accepted {
        /// The listener it arrived on.
        listener: ListenerHandle,
        /// The new connection.
        conn: TransportConnId,
        /// Its addresses (for UDP: local endpoint, remote zero).
        tuple: FiveTuple,
    },
    /// A connect the session layer started completed.
    Connected {
        /// The session that asked.
        session: SessionHandle,
        /// The connection.
        conn: TransportConnId,
        /// Its addresses.
        tuple: FiveTuple,
    },
    /// A connect failed (refused, timed out, unreachable).
    ConnectFailed {
        /// The session that asked.
        session: SessionHandle,
        /// Why.
        reason: String,
    },
    /// The peer finished sending (FIN); buffered data may still be read.
    RemoteClosed {
        /// The connection.
        conn: TransportConnId,
    },
    /// The peer reset the connection.
    Reset {
        /// The connection.
        conn: TransportConnId,
    },
    /// The connection is fully closed and the transport forgot it.
    Closed {
        /// The connection.
        conn: TransportConnId,
    },
    /// Bytes (or datagrams) arrived on the connection.
    Readable {
        /// The connection.
        conn: TransportConnId,
    },
    /// Room appeared in the connection's send buffer after a
    /// [`Transport::send`] or [`Transport::send_datagram`] took less than it
    /// was offered.
    Writable {
        /// The connection.
        conn: TransportConnId,
    },
}

/// Addresses of one datagram, stored in front of it in a datagram fifo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramMeta {
    /// The far end (source on receive, destination on send).
    pub remote: Endpoint,
    /// Our address it arrived on (receive) or should leave from (send,
    /// zero = the transport's choice).
    pub local: Endpoint,
}

/// One protocol's transport on one stack thread.
///
/// The session layer services a connection only when something happened to
/// it, so a transport must report it: [`TransportEvent::Readable`] whenever
/// bytes or datagrams arrive (the session layer then reads until
/// [`recv_available`](Self::recv_available) is 0 or its fifo is full), and
/// [`TransportEvent::Writable`] once room appears after a send took less
/// than it was offered. Spurious reports are harmless; missing ones stall
/// the connection.
pub trait Transport {
    /// The protocol.
    fn proto(&self) -> TransportProto;

    /// True for transports whose listeners are not entered in the global
    /// lookup table (VPP's "no lookup" transports).
    fn no_lookup(&self) -> bool {
        false
    }

    /// Starts listening on `endpoint` for `listener`.
    fn listen(&mut self, listener: ListenerHandle, endpoint: Endpoint) -> SessionResult<()>;

    /// Stops listening for `listener` (connections already accepted stay).
    fn unlisten(&mut self, listener: ListenerHandle);

    /// Starts a connection to `remote` on behalf of `session`; completion is
    /// reported as [`TransportEvent::Connected`] or
    /// [`TransportEvent::ConnectFailed`].
    fn connect(
        &mut self,
        session: SessionHandle,
        remote: Endpoint,
    ) -> SessionResult<TransportConnId>;

    /// Bytes (stream) waiting to be read on `conn`.
    fn recv_available(&self, conn: TransportConnId) -> usize;

    /// Hands up to `max` received bytes of `conn` to `sink`, which returns
    /// how many it took; returns that number.
    fn recv(
        &mut self,
        conn: TransportConnId,
        max: usize,
        sink: &mut dyn FnMut(&[u8]) -> usize,
    ) -> usize;

    /// Bytes `conn` can take for sending now.
    fn send_space(&self, conn: TransportConnId) -> usize;

    /// Lets `source` fill up to `max` bytes of `conn`'s send buffer; it
    /// returns how many it wrote, which this returns. Taking less than `max`
    /// arms a [`TransportEvent::Writable`].
    fn send(
        &mut self,
        conn: TransportConnId,
        max: usize,
        source: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> usize;

    /// Takes one received datagram of `conn`: `sink` gets its addresses and
    /// payload and returns false to leave it queued (no room). Returns
    /// whether one was taken.
    fn recv_datagram(
        &mut self,
        conn: TransportConnId,
        sink: &mut dyn FnMut(DatagramMeta, &[u8]) -> bool,
    ) -> bool;

    /// Queues one datagram on `conn`; false when the transport has no room
    /// (which arms a [`TransportEvent::Writable`]).
    fn send_datagram(&mut self, conn: TransportConnId, meta: DatagramMeta, payload: &[u8]) -> bool;

    /// Closes `conn` gracefully (FIN after queued data).
    fn close(&mut self, conn: TransportConnId);

    /// Aborts `conn` (RST).
    fn reset(&mut self, conn: TransportConnId);

    /// The next thing that happened on the wire.
    fn poll_event(&mut self) -> Option<TransportEvent>;

    /// What the operator sees of `conn` (state, windows, timers), as named
    /// values for `show session verbose`; nothing by default.
    fn conn_details(&self, conn: TransportConnId) -> Vec<(&'static str, String)> {
        let _ = conn;
        Vec::new()
    }
}
