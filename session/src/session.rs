//! A session: one connection (or one datagram endpoint) between a transport
//! and an app worker, with its rx and tx fifos.
//!
//! The stack thread owning the session writes the rx fifo and reads the tx
//! fifo; the app reads rx and writes tx. A cut-through session has no
//! transport: its fifos are shared crosswise with its peer session (one
//! side's tx is the other's rx).

use std::sync::Arc;

use crate::app_worker::{AppWorkerCounters, AppWorkerShare, EventSink, OwnedPair};
use crate::session_info::{SessionInfo, SessionState};
use crate::transport::TransportConnId;
use hoststack_app_proto::app_event::FifoLocation;
use hoststack_app_proto::endpoint::SessionKey;
use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::handle::{AppIndex, AppWorkerIndex, ListenerHandle, SessionHandle};
use hoststack_shm::fifo::{Fifo, FifoConsumer, FifoProducer};

/// What carries the session's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A transport connection (TCP) or bound socket (UDP).
    Transport(Option<TransportConnId>),
    /// A cut-through pair: no transport, the peer session shares the fifos.
    CutThrough {
        /// The other half.
        peer: SessionHandle,
    },
}

/// One session on one stack thread.
pub struct Session {
    /// Its handle (thread, index).
    pub handle: SessionHandle,
    /// Protocol.
    pub proto: TransportProto,
    /// Life state.
    pub state: SessionState,
    /// Transport or cut-through.
    pub kind: SessionKind,
    /// Our end.
    pub local: Endpoint,
    /// The peer.
    pub remote: Endpoint,
    /// Owning app.
    pub app: AppIndex,
    /// Owning app worker.
    pub app_worker: AppWorkerIndex,
    /// The listener it came from, for accepted sessions.
    pub listener: Option<ListenerHandle>,
    /// The fifo pair this session frees when it goes (the server side of a
    /// cut-through pair owns the shared pair; the client side owns none).
    pub owned_pair: Option<OwnedPair>,
    /// Its app worker, as threads hold it.
    pub share: Arc<AppWorkerShare>,
    /// Where the fifos live, for external apps.
    pub fifo_location: FifoLocation,
    /// Stack side of the rx fifo.
    pub rx_in: FifoProducer,
    /// Stack side of the tx fifo.
    pub tx_out: FifoConsumer,
    /// App side of the rx fifo (used for builtin apps).
    pub app_rx: FifoConsumer,
    /// App side of the tx fifo (used for builtin apps).
    pub app_tx: FifoProducer,
    /// How events reach the app worker.
    pub sink: EventSink,
    /// The app worker's counters.
    pub counters: Arc<AppWorkerCounters>,
    /// Its entry in the established table, when it has one.
    pub lookup_key: Option<SessionKey>,
    /// The transport saw the peer's FIN (bytes before it may still wait in
    /// the transport until the rx fifo has room).
    pub peer_finished: bool,
    /// The rx fifo was full; the transport is not read until it drains.
    pub rx_blocked: bool,
    /// The tx fifo has data the transport has not taken.
    pub tx_pending: bool,
    /// The app was told the peer closed.
    pub disconnect_notified: bool,
    /// The connect's opaque value.
    pub opaque: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handle", &self.handle)
            .field("proto", &self.proto)
            .field("state", &self.state)
            .field("kind", &self.kind)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("app_worker", &self.app_worker)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The transport connection, if any.
    pub fn conn(&self) -> Option<TransportConnId> {
        match self.kind {
            SessionKind::Transport(c) => c,
            SessionKind::CutThrough { .. } => None,
        }
    }

    /// The fifos seen from the stack: (rx, tx).
    pub fn fifos(&self) -> (&Fifo, &Fifo) {
        (self.rx_in.fifo(), self.tx_out.fifo())
    }
}

impl Session {
    /// Its summary.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            handle: self.handle,
            proto: self.proto,
            state: self.state,
            local: self.local,
            remote: self.remote,
            app: self.app,
            app_worker: self.app_worker,
            rx_fill: self.rx_in.fifo().max_dequeue().unwrap_or(0),
            tx_fill: self.tx_out.fifo().max_dequeue().unwrap_or(0),
            cut_through: matches!(self.kind, SessionKind::CutThrough { .. }),
            listener: self.listener,
            transport: Vec::new(),
        }
    }
}
