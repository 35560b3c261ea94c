//! The session layer's data plane on one stack thread.
//!
//! A `SessionWorker` owns the sessions of its thread. Each
//! [`poll`](SessionWorker::poll) it: runs the commands the control plane
//! sent, turns transport events into session changes and app events, moves
//! received bytes from the transports into rx fifos (stopping at a full
//! fifo, which closes the TCP window, until the app drains it), moves bytes
//! apps wrote into tx fifos to the transports, and delivers app events —
//! to external apps through their event queues as they happen, to builtin
//! apps by calling their callbacks from a queue at the end of the poll (so a
//! callback that writes to a cut-through peer never recurses into the
//! peer's callback).
//!
//! Builtin callbacks get an [`AppCx`]: read and write fifos, disconnect,
//! look sessions up, all on this thread and without locks.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;
use slab::Slab;
use tracing::{debug, warn};

use crate::app_callbacks::AppContext;
use crate::app_callbacks::Deferred;
use crate::app_event_queue::Backlogs;
use crate::app_listener::ThreadListener;
use crate::app_socket_outbox::AppSocketOutbox;
use crate::app_worker::EventSink;
use crate::app_worker::{AppWorkerShare, OwnedPair};
use crate::corruption_verdict::CorruptionVerdict;
use crate::dirty_sessions::DirtySessions;
use crate::session::{Session, SessionKind};
use crate::session_info::{SessionInfo, SessionState};

use crate::session_layer::{NewSessionParts, SessionLayer, WorkerCommand};
use crate::session_owners::SessionOwners;
use crate::stalled_queues::{StallCheck, StalledQueues};
use crate::transport::{DatagramMeta, Transport, TransportConnId, TransportEvent};
use hoststack_app_proto::app_event::{AppEvent, DGRAM_HEADER_SIZE};
use hoststack_app_proto::app_rx_queue::{AppRxQueue, ControlMessage, IoMessage, RxMessage};
use hoststack_app_proto::datagram::{peek_datagram, read_datagram, write_datagram};
use hoststack_app_proto::endpoint::{Endpoint, FiveTuple, SessionKey, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{
    AppIndex, AppWorkerIndex, FibIndex, ListenerHandle, SessionHandle,
};
use hoststack_shm::message_queue::HeadState;

/// The builtin-app events a worker dispatches as callbacks.
#[derive(Debug, Clone)]
enum BuiltinEvent {
    Accept(SessionHandle),
    Connected(Result<SessionHandle, SessionError>, u64),
    Disconnect(SessionHandle),
    Reset(SessionHandle),
    Rx(SessionHandle),
    Tx(SessionHandle),
}

/// Bytes moved per session per direction in one poll, so one busy session
/// cannot hold the thread.
const MAX_BYTES_PER_POLL: usize = 1 << 20;

/// Transport events handled per protocol per poll.
const TRANSPORT_EVENTS_PER_POLL: usize = 256;

/// Messages taken from one app rx queue per turn, so one chatty app cannot
/// starve the others.
pub const APP_QUEUE_BATCH: usize = 64;

/// The transports of one thread, by protocol.
pub trait TransportSet {
    /// The transport for `proto`, if the thread has one.
    fn transport(&mut self, proto: TransportProto) -> Option<&mut dyn Transport>;
}

/// A thread without transports (cut-through only).
#[derive(Debug, Default)]
pub struct NoTransports;

impl TransportSet for NoTransports {
    fn transport(&mut self, _proto: TransportProto) -> Option<&mut dyn Transport> {
        None
    }
}

/// A change to the set of app rx queues a thread serves, for whoever
/// sleeps on their eventfds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChange {
    /// Watch `fd` for queue `id`.
    Added {
        /// Queue id (the app index).
        id: u32,
        /// Its eventfd.
        fd: std::os::fd::RawFd,
    },
    /// Stop watching queue `id`.
    Removed {
        /// Queue id.
        id: u32,
    },
}

/// Pings one app sent a thread, as the thread saw them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    /// Pings handled.
    pub count: u64,
    /// Longest a ping waited between being sent and being handled.
    pub max_wait_ns: u64,
    /// Sum of the waits.
    pub total_wait_ns: u64,
}

/// Counters of one thread's session work, readable from anywhere.
#[derive(Debug, Default)]
pub struct SessionWorkerStats {
    /// Messages taken from app rx queues.
    pub app_messages: std::sync::atomic::AtomicU64,
    /// Batches served from the pending list.
    pub batches: std::sync::atomic::AtomicU64,
    /// App rx queues left on the pending list after the last round
    /// (postponed ones), a gauge for `show worker`.
    pub pending_queues: std::sync::atomic::AtomicU64,
    /// App rx queues this thread serves, a gauge for `show worker`.
    pub app_queues: std::sync::atomic::AtomicU64,
    /// Received datagrams dropped because they are larger than their
    /// session's rx fifo.
    pub datagrams_too_big: std::sync::atomic::AtomicU64,
    /// Pings per app.
    pub pings: Mutex<HashMap<u32, PingStats>>,
}

impl SessionWorkerStats {
    /// The pings app `app` sent this thread.
    pub fn pings_of(&self, app: u32) -> PingStats {
        self.pings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&app)
            .copied()
            .unwrap_or_default()
    }
}

/// One thread's sessions.
pub struct SessionWorker {
    thread: u32,
    commands: Receiver<WorkerCommand>,
    sessions: Slab<Session>,
    by_conn: HashMap<(TransportProto, TransportConnId), u32>,
    builtin: VecDeque<(
        Arc<crate::app_callbacks::AppCallbacks>,
        AppWorkerIndex,
        BuiltinEvent,
    )>,
    scratch: Vec<u8>,
    deferred: Vec<Deferred>,
    pending_disconnects: Vec<SessionHandle>,
    pending: crate::pending_rx_queues::PendingRxQueues,
    queue_changes: Vec<QueueChange>,
    app_queues: HashMap<u32, AppRxQueue>,
    stats: Arc<SessionWorkerStats>,
    dirty: DirtySessions,
    backlogs: Arc<Backlogs>,
    /// The last poll stopped at its event budget: transport events wait.
    events_left: bool,
    /// This thread's copies of the listeners it carries: the workers their
    /// sessions go to.
    listeners: HashMap<ListenerHandle, ThreadListener<Arc<AppWorkerShare>>>,
    /// Who owns this thread's sessions (the control plane checks it).
    owners: Arc<SessionOwners>,
    /// Established sessions by 6-tuple.
    established: HashMap<SessionKey, SessionHandle>,
    /// Where fds of segments this thread adds go.
    outbox: Arc<AppSocketOutbox>,
    /// Where a dying app worker's last session is reported.
    reaper: Sender<AppWorkerIndex>,
    /// Where an app found corrupting its shared memory is reported.
    verdicts: Sender<CorruptionVerdict>,
    /// Apps this thread reported (so once each), until the app is gone and
    /// its index free for another.
    condemned: hashbrown::HashSet<AppIndex>,
    /// Generation of each session slot, bumped when the slot is freed.
    generations: Vec<u16>,
    /// App rx queues whose head slot was seen claimed and unpublished.
    stalled: StalledQueues,
    /// Queues the check before a sleep found not plainly empty (scratch).
    idle_heads: Vec<(u32, HeadState)>,
}

impl std::fmt::Debug for SessionWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWorker")
            .field("thread", &self.thread)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl SessionWorker {
    /// The worker of stack thread `thread`, receiving `commands`.
    pub fn new(
        thread: u32,
        layer: Arc<Mutex<SessionLayer>>,
        commands: Receiver<WorkerCommand>,
    ) -> Self {
        let (backlogs, owners, outbox, reaper, verdicts) = {
            // A panic elsewhere under the lock leaves tables that are
            // consistent per operation.
            let l = layer.lock().unwrap_or_else(|p| p.into_inner());
            let owners = l.owners(thread as usize).unwrap_or_default();
            (
                l.backlogs(),
                owners,
                l.outbox(),
                l.reaper(),
                l.verdict_sink(),
            )
        };
        Self {
            thread,
            commands,
            sessions: Slab::new(),
            by_conn: HashMap::new(),
            builtin: VecDeque::new(),
            scratch: vec![0u8; 64 * 1024],
            deferred: Vec::new(),
            pending_disconnects: Vec::new(),
            pending: crate::pending_rx_queues::PendingRxQueues::new(),
            queue_changes: Vec::new(),
            app_queues: HashMap::new(),
            stats: Arc::default(),
            dirty: DirtySessions::new(),
            backlogs,
            events_left: false,
            listeners: HashMap::new(),
            owners,
            established: HashMap::new(),
            outbox,
            reaper,
            verdicts,
            condemned: hashbrown::HashSet::new(),
            generations: Vec::new(),
            stalled: StalledQueues::default(),
            idle_heads: Vec::new(),
        }
    }

    /// The thread's counters.
    pub fn stats(&self) -> Arc<SessionWorkerStats> {
        self.stats.clone()
    }

    /// The thread index.
    pub fn thread(&self) -> u32 {
        self.thread
    }

    /// Sessions alive on this thread.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// True while app events wait for dispatch or app queues are pending:
    /// the thread must not sleep.
    pub fn has_pending_work(&self) -> bool {
        !self.builtin.is_empty()
            || !self.pending.is_empty()
            || !self.dirty.is_empty()
            || self.events_left
    }

    /// How soon a sleeping thread must wake to retry postponed events: an
    /// app gives no signal when it frees room in its event queue, and a
    /// thread that spun instead would burn a core on an app that is slow.
    /// It must also wake when a stalled queue's limit passes.
    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let backlog = self
            .backlogs
            .next_retry()
            .map(|at| at.saturating_duration_since(now));
        let stall = self
            .stalled
            .next_deadline()
            .map(|at| at.saturating_duration_since(now));
        match (backlog, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The lost-wakeup check before sleeping: true when every app rx queue
    /// is empty after a fence that pairs with the producers' (so a message
    /// published now is either seen here or signals its eventfd).
    ///
    /// The heads of queues found empty are judged on the way (the loads
    /// are the ones just made, plus `tail`): a broken one is a verdict, a
    /// head slot claimed and unpublished becomes a suspect.
    pub fn queues_empty_before_sleep(&mut self) -> bool {
        let mut heads = std::mem::take(&mut self.idle_heads);
        let mut empty = true;
        for (&id, q) in &self.app_queues {
            if !q.empty_before_sleep() {
                empty = false;
                break;
            }
            let head = q.head_state();
            if head != HeadState::Empty || !self.stalled.is_empty() {
                heads.push((id, head));
            }
        }
        if !empty {
            self.queues_awake();
        }
        for (id, head) in heads.drain(..) {
            self.judge_idle_head(id, head);
        }
        self.idle_heads = heads;
        empty
    }

    /// Looks at the head of every app rx queue with nothing ready, for a
    /// thread that does not sleep (polling), which the check before a
    /// sleep never reaches: call it about once a second, never per event.
    pub fn judge_idle_queues(&mut self) {
        let mut heads = std::mem::take(&mut self.idle_heads);
        for (&id, q) in &self.app_queues {
            let head = q.head_state();
            if !matches!(head, HeadState::Empty | HeadState::Ready) {
                heads.push((id, head));
            }
        }
        for (id, head) in heads.drain(..) {
            self.judge_idle_head(id, head);
        }
        self.idle_heads = heads;
    }

    /// Queue `id` had nothing to receive and its head looked like `head`:
    /// broken is a verdict now, a head slot claimed and unpublished one
    /// once the same slot has stayed so past the limit.
    fn judge_idle_head(&mut self, id: u32, head: HeadState) {
        let now = std::time::Instant::now();
        let what = match head {
            HeadState::Corrupted(what) => what,
            HeadState::Unpublished(p) => match self.stalled.observe(id, Some(p), now) {
                StallCheck::Stalled(d) => format!(
                    "head slot {} claimed and not published for {} ms",
                    p & !(1 << 63),
                    d.as_millis()
                ),
                StallCheck::Fine => return,
            },
            HeadState::Ready | HeadState::Empty => {
                self.stalled.observe(id, None, now);
                return;
            }
        };
        self.condemn_app(AppIndex(id), format!("rx queue: {what}"));
    }

    /// Looks again at the stalled suspects whose limit has passed.
    fn recheck_stalled(&mut self) {
        let Some(at) = self.stalled.next_deadline() else {
            return;
        };
        let now = std::time::Instant::now();
        if now < at {
            return;
        }
        for id in self.stalled.expired(now) {
            match self.app_queues.get(&id).map(AppRxQueue::head_state) {
                Some(head) => self.judge_idle_head(id, head),
                None => self.stalled.forget(id),
            }
        }
    }

    /// After a sleep: apps stop writing the queues' eventfds.
    pub fn queues_awake(&self) {
        for q in self.app_queues.values() {
            q.awake();
        }
    }

    /// An app rx queue's eventfd fired.
    /// One that fired with nothing ready has its head judged.
    pub fn queue_signalled(&mut self, id: u32) {
        let Some(q) = self.app_queues.get(&id) else {
            return;
        };
        if q.has_ready() {
            let _ = self.pending.signal(id, true);
        } else {
            let head = q.head_state();
            self.judge_idle_head(id, head);
        }
    }

    /// External apps whose rx queue this thread serves.
    pub fn app_queue_count(&self) -> usize {
        self.app_queues.len()
    }

    /// App rx queues added or removed since the last call.
    pub fn take_queue_changes(&mut self) -> Vec<QueueChange> {
        std::mem::take(&mut self.queue_changes)
    }

    /// Summaries of this thread's sessions.
    pub fn session_infos(&self) -> Vec<SessionInfo> {
        self.sessions.iter().map(|(_, s)| s.info()).collect()
    }

    /// The handle of live session `idx` (its slot's current generation).
    fn handle(&self, idx: u32) -> SessionHandle {
        SessionHandle::with_generation(self.thread, idx, self.generation(idx))
    }

    fn generation(&self, idx: u32) -> u16 {
        self.generations.get(idx as usize).copied().unwrap_or(0)
    }

    /// Slot `idx` was freed: the next session in it gets another handle.
    fn bump_generation(&mut self, idx: u32) {
        let i = idx as usize;
        if self.generations.len() <= i {
            self.generations.resize(i + 1, 0);
        }
        self.generations[i] = self.generations[i].wrapping_add(1);
    }

    /// The live session `h` names: its thread, slot and generation.
    fn session_mut(&mut self, h: SessionHandle) -> Option<&mut Session> {
        if h.thread() != self.thread {
            return None;
        }
        self.sessions
            .get_mut(h.index() as usize)
            .filter(|s| s.handle == h)
    }

    // ---- events to apps ---------------------------------------------

    fn emit(
        &mut self,
        sink: &EventSink,
        counters: &crate::app_worker::AppWorkerCounters,
        wi: AppWorkerIndex,
        ev: BuiltinEvent,
        wire: impl FnOnce() -> AppEvent,
    ) -> Option<String> {
        match sink {
            EventSink::Builtin(cbs) => self.builtin.push_back((cbs.clone(), wi, ev)),
            EventSink::Queue(_) => {
                // A full queue postpones (the sink counts and retries); a
                // queue the app broke is reported to the caller.
                if let Err(SessionError::Corrupted(what)) = sink.post(&wire(), counters) {
                    return Some(what);
                }
            }
        }
        None
    }

    fn emit_for(&mut self, idx: u32, ev: BuiltinEvent) {
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        let (sink, counters, wi) = (s.sink.clone(), s.counters.clone(), s.app_worker);
        let (h, app) = (s.handle, s.app);
        let wire = match &ev {
            BuiltinEvent::Disconnect(_) => AppEvent::Disconnected { session: h },
            BuiltinEvent::Reset(_) => AppEvent::Reset { session: h },
            BuiltinEvent::Rx(_) => AppEvent::Rx { session: h },
            BuiltinEvent::Tx(_) => AppEvent::TxSpace { session: h },
            BuiltinEvent::Accept(_) => AppEvent::Accepted {
                session: h,
                listener: s.listener.unwrap_or(ListenerHandle::from_u64(u64::MAX)),
                proto: s.proto,
                local: s.local,
                remote: s.remote,
                fifos: s.fifo_location,
            },
            BuiltinEvent::Connected(_, opaque) => AppEvent::Connected {
                session: h,
                opaque: *opaque,
                error: 0,
                local: s.local,
                remote: s.remote,
                fifos: s.fifo_location,
            },
        };
        if let Some(what) = self.emit(&sink, &counters, wi, ev, || wire) {
            self.condemn_app(app, format!("event queue: {what}"));
        }
    }

    /// Tells the app data is waiting, once per batch (the fifo's event flag
    /// dedups until the app clears it).
    fn notify_rx(&mut self, idx: u32) {
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        if s.rx_in.fifo().set_event() {
            let h = s.handle;
            self.emit_for(idx, BuiltinEvent::Rx(h));
        }
    }

    // ---- session birth and death -------------------------------------

    fn insert_session(
        &mut self,
        parts: NewSessionParts,
        proto: TransportProto,
        state: SessionState,
        kind: SessionKind,
        local: Endpoint,
        remote: Endpoint,
    ) -> u32 {
        let idx = self.sessions.vacant_key() as u32;
        let handle = self.handle(idx);
        let entry = self.sessions.vacant_entry();
        self.owners.insert(handle, parts.share.index);
        let (rx, tx) = parts.fifos;
        entry.insert(Session {
            handle,
            proto,
            state,
            kind,
            local,
            remote,
            app: parts.share.app,
            app_worker: parts.share.index,
            listener: None,
            owned_pair: parts.owned_pair,
            fifo_location: parts.location,
            rx_in: rx.producer(),
            tx_out: tx.consumer(),
            app_rx: rx.consumer(),
            app_tx: tx.producer(),
            sink: parts.share.sink.clone(),
            counters: parts.share.counters.clone(),
            share: parts.share,
            lookup_key: None,
            peer_finished: false,
            rx_blocked: false,
            tx_pending: false,
            disconnect_notified: false,
            opaque: 0,
        });
        idx
    }

    /// Forgets session `idx`: transport index, tables, fifos.
    fn free_session(&mut self, idx: u32) {
        if !self.sessions.contains(idx as usize) {
            return;
        }
        let mut s = self.sessions.remove(idx as usize);
        self.bump_generation(idx);
        if let Some(conn) = s.conn() {
            self.by_conn.remove(&(s.proto, conn));
        }
        // A cut-through half whose peer lives on hands the shared fifos over
        // so they are freed only when neither half can touch them.
        if let SessionKind::CutThrough { peer } = s.kind {
            if let Some(p) = self.session_mut(peer) {
                p.kind = SessionKind::CutThrough {
                    peer: SessionHandle::from_u64(u64::MAX),
                };
                if p.owned_pair.is_none() {
                    p.owned_pair = s.owned_pair.take();
                }
            }
        }
        let handle = s.handle;
        if let EventSink::Queue(_) = s.sink {
            let _ = s
                .sink
                .post(&AppEvent::Cleanup { session: handle }, &s.counters);
        }
        self.release(handle, &s.share, s.lookup_key, s.owned_pair.take());
    }

    /// A session's share of the tables goes: its owner and established
    /// entry, its fifos, and its count in its app worker (the control
    /// thread frees a dying worker whose last session this was).
    fn release(
        &mut self,
        handle: SessionHandle,
        share: &AppWorkerShare,
        key: Option<SessionKey>,
        pair: Option<OwnedPair>,
    ) {
        self.owners.remove(handle);
        if let Some(k) = key {
            if self.established.get(&k) == Some(&handle) {
                self.established.remove(&k);
                self.owners.set_established(self.established.len());
            }
        }
        if let Some(pair) = pair {
            pair.free(&self.outbox, &mut self.deferred);
        }
        if share.session_ended() {
            let _ = self.reaper.send(share.index);
        }
    }

    /// Enters an established session in this thread's table.
    /// Enters an established session in this thread's table; `None` when
    /// the 6-tuple is already another session's (which keeps it).
    fn add_established(
        &mut self,
        handle: SessionHandle,
        fib: FibIndex,
        tuple: FiveTuple,
    ) -> Option<SessionKey> {
        let key = SessionKey::new(fib, tuple);
        match self.established.entry(key) {
            hashbrown::hash_map::Entry::Occupied(e) => {
                warn!(%handle, other = %e.get(), "established table: 6-tuple taken");
                return None;
            }
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(handle);
            }
        }
        self.owners.set_established(self.established.len());
        Some(key)
    }

    /// Fifos for a new session of `share`, in this thread's segments.
    fn alloc_parts(&mut self, share: &Arc<AppWorkerShare>) -> SessionResult<NewSessionParts> {
        let f = share.alloc_fifos(Some(self.thread as usize), &self.outbox, &mut self.deferred)?;
        share.session_started();
        Ok(NewSessionParts {
            share: share.clone(),
            fifos: f.fifos,
            location: f.location,
            owned_pair: Some(f.owned),
        })
    }

    /// The parts of a session `listener` accepted: its next app worker in
    /// round robin, fifos from that worker's segments for this thread. No
    /// lock but the segment manager's, which only this thread takes.
    fn accept_parts(&mut self, listener: ListenerHandle) -> SessionResult<NewSessionParts> {
        let share = self
            .listeners
            .get_mut(&listener)
            .ok_or_else(|| SessionError::NoListener(listener.to_string()))?
            .select()
            .ok_or_else(|| SessionError::NoListener(listener.to_string()))?
            .clone();
        self.alloc_parts(&share)
    }

    // ---- commands from the control plane -----------------------------

    fn run_command(&mut self, cmd: WorkerCommand, tp: &mut dyn TransportSet) {
        match cmd {
            WorkerCommand::Listen {
                listener,
                proto,
                endpoint,
                workers,
                ack,
            } => {
                // The app hears of a failure through the ack: no log line.
                let Some(t) = tp.transport(proto) else {
                    ack.report(Err(SessionError::Transport(format!(
                        "no {proto} transport on thread {}",
                        self.thread
                    ))));
                    return;
                };
                match t.listen(listener, endpoint) {
                    Ok(()) => {
                        self.listeners
                            .insert(listener, ThreadListener::new(by_map_index(workers)));
                        ack.report(Ok(()));
                    }
                    Err(e) => {
                        debug!(thread = self.thread, %endpoint, "transport listen failed: {e}");
                        ack.report(Err(e));
                    }
                }
            }
            WorkerCommand::ListenerWorkers { listener, workers } => {
                if let Some(l) = self.listeners.get_mut(&listener) {
                    l.set_workers(by_map_index(workers));
                }
            }
            WorkerCommand::Unlisten { listener, proto } => {
                if self.listeners.remove(&listener).is_some() {
                    if let Some(t) = tp.transport(proto) {
                        t.unlisten(listener);
                    }
                }
                // Datagram sessions of a UDP listener go with it.
                let dgram: Vec<u32> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.listener == Some(listener) && s.proto == TransportProto::Udp)
                    .map(|(i, _)| i as u32)
                    .collect();
                for i in dgram {
                    if let Some(conn) = self.sessions[i as usize].conn() {
                        if let Some(t) = tp.transport(TransportProto::Udp) {
                            t.close(conn);
                        }
                    }
                    self.free_session(i);
                }
            }
            WorkerCommand::Connect {
                share,
                proto,
                remote,
                opaque,
            } => self.start_connect(share, proto, remote, opaque, tp),
            WorkerCommand::CutThrough(plan) => self.start_cut_through(*plan),
            WorkerCommand::Disconnect { session } => self.app_disconnect(session, tp),
            WorkerCommand::WakeSession { session } => {
                if self.session_mut(session).is_some() {
                    let idx = session.index();
                    self.dirty.mark(idx);
                    self.emit_for(idx, BuiltinEvent::Rx(session));
                    self.emit_for(idx, BuiltinEvent::Tx(session));
                }
            }
            WorkerCommand::ShowSessions { details, reply } => {
                let mut infos = Vec::with_capacity(self.sessions.len());
                for (_, s) in &self.sessions {
                    let mut info = s.info();
                    if details {
                        if let (Some(conn), Some(t)) = (s.conn(), tp.transport(s.proto)) {
                            info.transport = t.conn_details(conn);
                        }
                    }
                    infos.push(info);
                }
                let _ = reply.send((self.thread, infos));
            }
            WorkerCommand::AppMessage { app, message } => {
                self.stats.app_messages.fetch_add(1, Relaxed);
                self.app_message(app, message, tp);
            }
            WorkerCommand::AddAppQueue { app, queue } => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(queue.eventfd());
                self.app_queues.insert(app.0, *queue);
                self.queue_changes
                    .push(QueueChange::Added { id: app.0, fd });
                // Messages may already wait: look at it once.
                self.queue_signalled(app.0);
            }
            WorkerCommand::RemoveAppQueue { app } => {
                // The app is gone (its sessions here closed before this
                // command): its index may name the next app, which starts
                // with a clean record.
                self.condemned.remove(&app);
                self.stalled.forget(app.0);
                self.pending.remove(app.0);
                if self.app_queues.remove(&app.0).is_some() {
                    self.queue_changes.push(QueueChange::Removed { id: app.0 });
                }
            }
            WorkerCommand::CloseAppWorkerSessions { app_worker } => {
                let mine: Vec<u32> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.app_worker == app_worker)
                    .map(|(i, _)| i as u32)
                    .collect();
                for i in mine {
                    self.abort_session(i, tp);
                }
            }
        }
    }

    fn start_connect(
        &mut self,
        share: Arc<AppWorkerShare>,
        proto: TransportProto,
        remote: Endpoint,
        opaque: u64,
        tp: &mut dyn TransportSet,
    ) {
        let parts = match self.alloc_parts(&share) {
            Ok(p) => p,
            Err(e) => {
                // Tell the app; it has no session to hang the error on.
                self.emit_connect_failed(
                    &share.sink,
                    &share.counters,
                    share.index,
                    opaque,
                    remote,
                    e,
                );
                return;
            }
        };
        let zero = Endpoint {
            ip: hoststack_app_proto::endpoint::IpFamily::of(&remote.ip).zero_addr(),
            port: 0,
        };
        let idx = self.insert_session(
            parts,
            proto,
            SessionState::Connecting,
            SessionKind::Transport(None),
            zero,
            remote,
        );
        let handle = self.handle(idx);
        self.sessions[idx as usize].opaque = opaque;
        let result = match tp.transport(proto) {
            Some(t) => t.connect(handle, remote),
            None => Err(SessionError::Transport(format!(
                "no {proto} transport on thread {}",
                self.thread
            ))),
        };
        match result {
            Ok(conn) => {
                self.sessions[idx as usize].kind = SessionKind::Transport(Some(conn));
                self.by_conn.insert((proto, conn), idx);
            }
            Err(e) => self.connect_failed(idx, e),
        }
    }

    /// Tells app worker `wi` its connect `opaque` to `remote` failed.
    fn emit_connect_failed(
        &mut self,
        sink: &EventSink,
        counters: &crate::app_worker::AppWorkerCounters,
        wi: AppWorkerIndex,
        opaque: u64,
        remote: Endpoint,
        e: SessionError,
    ) {
        let wire = AppEvent::Connected {
            session: SessionHandle::from_u64(u64::MAX),
            opaque,
            error: hoststack_app_proto::error::ErrorCode::of(&e) as u32,
            local: remote,
            remote,
            fifos: Default::default(),
        };
        // No session to name the app by: a broken queue is logged by the
        // sink, and the app's next session event brings the verdict.
        let _ = self.emit(
            sink,
            counters,
            wi,
            BuiltinEvent::Connected(Err(e), opaque),
            || wire,
        );
    }

    fn connect_failed(&mut self, idx: u32, e: SessionError) {
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        let (sink, counters, wi, opaque, remote) = (
            s.sink.clone(),
            s.counters.clone(),
            s.app_worker,
            s.opaque,
            s.remote,
        );
        self.emit_connect_failed(&sink, &counters, wi, opaque, remote, e);
        // No cleanup event: the app never saw this session.
        if let Some(mut s) =
            (self.sessions.contains(idx as usize)).then(|| self.sessions.remove(idx as usize))
        {
            self.bump_generation(idx);
            if let Some(conn) = s.conn() {
                self.by_conn.remove(&(s.proto, conn));
            }
            let pair = s.owned_pair.take();
            self.release(s.handle, &s.share, None, pair);
        }
    }

    fn start_cut_through(&mut self, plan: crate::session_layer::CutThroughPlan) {
        let crate::session_layer::CutThroughPlan {
            proto,
            listener,
            server,
            client,
            server_endpoint,
            opaque,
        } = plan;
        let client_ep = Endpoint {
            ip: server_endpoint.ip,
            port: 0,
        };
        let s_idx = self.insert_session(
            server,
            proto,
            SessionState::Ready,
            SessionKind::CutThrough {
                peer: SessionHandle::from_u64(u64::MAX),
            },
            server_endpoint,
            client_ep,
        );
        let c_idx = self.insert_session(
            client,
            proto,
            SessionState::Ready,
            SessionKind::CutThrough {
                peer: SessionHandle::from_u64(u64::MAX),
            },
            client_ep,
            server_endpoint,
        );
        let (sh, ch) = (self.handle(s_idx), self.handle(c_idx));
        self.sessions[s_idx as usize].kind = SessionKind::CutThrough { peer: ch };
        self.sessions[s_idx as usize].listener = Some(listener);
        self.sessions[c_idx as usize].kind = SessionKind::CutThrough { peer: sh };
        self.sessions[c_idx as usize].opaque = opaque;
        self.sessions[s_idx as usize]
            .counters
            .accepted
            .fetch_add(1, Relaxed);
        self.sessions[c_idx as usize]
            .counters
            .connected
            .fetch_add(1, Relaxed);
        self.emit_for(s_idx, BuiltinEvent::Accept(sh));
        self.emit_for(c_idx, BuiltinEvent::Connected(Ok(ch), opaque));
    }

    /// The app closes `session`: queued tx data drains first.
    fn app_disconnect(&mut self, session: SessionHandle, tp: &mut dyn TransportSet) {
        if session.thread() != self.thread {
            return;
        }
        let idx = session.index();
        // A stale handle (the slot was reused) names nothing.
        let Some(s) = self
            .sessions
            .get_mut(idx as usize)
            .filter(|s| s.handle == session)
        else {
            return;
        };
        match s.kind {
            SessionKind::CutThrough { peer } => {
                let peer_alive = self
                    .session_mut(peer)
                    .map(|p| !p.disconnect_notified)
                    .unwrap_or(false);
                if peer_alive {
                    if let Some(p) = self.session_mut(peer) {
                        p.disconnect_notified = true;
                        p.state = SessionState::RemoteClosed;
                    }
                    self.emit_for(peer.index(), BuiltinEvent::Disconnect(peer));
                }
                self.free_session(idx);
            }
            SessionKind::Transport(None) => self.free_session(idx),
            SessionKind::Transport(Some(_)) => {
                if matches!(
                    s.state,
                    SessionState::Closing | SessionState::TransportClosing
                ) {
                    return;
                }
                s.state = SessionState::Closing;
                self.flush_tx(idx, tp);
            }
        }
    }

    /// Resets a session now (app worker deleted).
    fn abort_session(&mut self, idx: u32, tp: &mut dyn TransportSet) {
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        match s.kind {
            SessionKind::Transport(Some(conn)) => {
                let proto = s.proto;
                if let Some(t) = tp.transport(proto) {
                    if proto == TransportProto::Tcp {
                        t.reset(conn);
                    } else {
                        t.close(conn);
                    }
                }
                self.free_session(idx);
            }
            SessionKind::Transport(None) => self.free_session(idx),
            SessionKind::CutThrough { peer } => {
                // The peer is reset and goes too, as a transport session
                // the network resets does: apps take a reset as the end
                // (they never close it), so a half left behind would hold
                // the pair's segment until its app went. A peer already
                // told of a close is its app's to close.
                let mut reset_peer = false;
                if let Some(p) = self.session_mut(peer) {
                    if !p.disconnect_notified {
                        p.disconnect_notified = true;
                        p.state = SessionState::RemoteClosed;
                        reset_peer = true;
                    }
                }
                if reset_peer {
                    self.emit_for(peer.index(), BuiltinEvent::Reset(peer));
                }
                self.free_session(idx);
                if reset_peer {
                    self.free_session(peer.index());
                }
            }
        }
    }

    // ---- transport events ---------------------------------------------

    fn transport_event(
        &mut self,
        proto: TransportProto,
        ev: TransportEvent,
        tp: &mut dyn TransportSet,
    ) {
        match ev {
            TransportEvent::Accepted {
                listener,
                conn,
                tuple,
            } => {
                let parts = match self.accept_parts(listener) {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(thread = self.thread, "refusing a connection: {e}");
                        if let Some(t) = tp.transport(proto) {
                            t.reset(conn);
                        }
                        return;
                    }
                };
                let fib = parts.share.fib;
                let idx = self.insert_session(
                    parts,
                    proto,
                    SessionState::Ready,
                    SessionKind::Transport(Some(conn)),
                    tuple.local(),
                    tuple.remote(),
                );
                let handle = self.handle(idx);
                self.by_conn.insert((proto, conn), idx);
                let key = (proto == TransportProto::Tcp)
                    .then(|| self.add_established(handle, fib, tuple))
                    .flatten();
                let s = &mut self.sessions[idx as usize];
                s.lookup_key = key;
                s.listener = Some(listener);
                s.counters.accepted.fetch_add(1, Relaxed);
                // Data may have come with the handshake.
                self.dirty.mark(idx);
                self.emit_for(idx, BuiltinEvent::Accept(handle));
            }
            TransportEvent::Connected {
                session,
                conn,
                tuple,
            } => {
                let idx = session.index();
                let Some(s) = self.session_mut(session) else {
                    if let Some(t) = tp.transport(proto) {
                        t.reset(conn);
                    }
                    return;
                };
                s.state = SessionState::Ready;
                s.local = tuple.local();
                s.remote = tuple.remote();
                s.kind = SessionKind::Transport(Some(conn));
                s.counters.connected.fetch_add(1, Relaxed);
                let (fib, opaque) = (s.share.fib, s.opaque);
                self.by_conn.insert((proto, conn), idx);
                let key = (proto == TransportProto::Tcp)
                    .then(|| self.add_established(session, fib, tuple))
                    .flatten();
                self.sessions[idx as usize].lookup_key = key;
                // The app may have written before the connect completed.
                self.dirty.mark(idx);
                self.emit_for(idx, BuiltinEvent::Connected(Ok(session), opaque));
            }
            TransportEvent::ConnectFailed { session, reason } => {
                if self.session_mut(session).is_some() {
                    self.connect_failed(session.index(), SessionError::Transport(reason));
                }
            }
            TransportEvent::RemoteClosed { conn } => {
                // The session becomes REMOTE-CLOSED only once every byte the
                // peer sent is in the rx fifo (see `service_session`): an
                // app that sees the state may trust the fifo holds the rest.
                if let Some(&idx) = self.by_conn.get(&(proto, conn)) {
                    self.sessions[idx as usize].peer_finished = true;
                    self.dirty.mark(idx);
                }
            }
            TransportEvent::Readable { conn } | TransportEvent::Writable { conn } => {
                if let Some(&idx) = self.by_conn.get(&(proto, conn)) {
                    self.dirty.mark(idx);
                }
            }
            TransportEvent::Reset { conn } => {
                if let Some(&idx) = self.by_conn.get(&(proto, conn)) {
                    let h = self.handle(idx);
                    let told = self.sessions[idx as usize].state == SessionState::TransportClosing;
                    if !told {
                        self.emit_for(idx, BuiltinEvent::Reset(h));
                    }
                    self.free_session(idx);
                }
            }
            TransportEvent::Closed { conn } => {
                if let Some(&idx) = self.by_conn.get(&(proto, conn)) {
                    let h = self.handle(idx);
                    let s = &self.sessions[idx as usize];
                    // Closed without the app having closed: it must hear of
                    // it before its session disappears.
                    if !matches!(
                        s.state,
                        SessionState::Closing | SessionState::TransportClosing
                    ) && !s.disconnect_notified
                    {
                        self.emit_for(idx, BuiltinEvent::Reset(h));
                    }
                    self.free_session(idx);
                }
            }
        }
    }

    // ---- moving bytes ---------------------------------------------------

    /// Transport -> rx fifo for one stream session; returns bytes moved.
    /// An error is a fifo the app corrupted.
    fn pull_stream(&mut self, idx: u32, t: &mut dyn Transport) -> SessionResult<usize> {
        let s = &mut self.sessions[idx as usize];
        let Some(conn) = s.conn() else { return Ok(0) };
        let mut moved = 0;
        loop {
            let avail = t.recv_available(conn);
            if avail == 0 {
                break;
            }
            let room = s.rx_in.max_enqueue()? as usize;
            if room == 0 {
                // Full: stop reading, which lets the transport close its
                // window; ask the app to say when it made room. Room that
                // appeared before the request was seen means go on.
                if s.rx_in.request_dequeue_notification()? > 0 {
                    continue;
                }
                s.rx_blocked = true;
                break;
            }
            let want = room.min(avail).min(MAX_BYTES_PER_POLL - moved);
            let rx = &mut s.rx_in;
            let mut fault = None;
            let n = t.recv(conn, want, &mut |data| {
                rx.enqueue(data).unwrap_or_else(|e| {
                    fault = Some(e);
                    0
                })
            });
            if let Some(e) = fault {
                return Err(e.into());
            }
            moved += n;
            if n == 0 || moved >= MAX_BYTES_PER_POLL {
                break;
            }
        }
        Ok(moved)
    }

    /// Transport -> rx fifo for a datagram session: header + payload per
    /// datagram, never split.
    fn pull_datagrams(&mut self, idx: u32, t: &mut dyn Transport) -> SessionResult<usize> {
        let s = &mut self.sessions[idx as usize];
        let Some(conn) = s.conn() else { return Ok(0) };
        let capacity = s.rx_in.fifo().size() as usize;
        let mut moved = 0;
        let mut too_big = 0;
        let mut fault = None;
        for _ in 0..256 {
            let rx = &mut s.rx_in;
            let mut need = 0;
            let took = t.recv_datagram(conn, &mut |meta, payload| {
                if DGRAM_HEADER_SIZE + payload.len() > capacity {
                    // It can never fit: drop it rather than stall the rest.
                    too_big += 1;
                    return true;
                }
                match write_datagram(rx, &meta.remote, &meta.local, payload) {
                    Ok(true) => {
                        moved += DGRAM_HEADER_SIZE + payload.len();
                        true
                    }
                    Ok(false) => {
                        need = DGRAM_HEADER_SIZE + payload.len();
                        false
                    }
                    Err(e) => {
                        fault = Some(e);
                        false
                    }
                }
            });
            if let Some(e) = fault.take() {
                return Err(e);
            }
            if need > 0 {
                // Room that appeared before the request was seen: go on.
                if s.rx_in.request_dequeue_notification()? as usize >= need {
                    continue;
                }
                s.rx_blocked = true;
                break;
            }
            if !took {
                break;
            }
        }
        if too_big > 0 {
            self.stats.datagrams_too_big.fetch_add(too_big, Relaxed);
        }
        Ok(moved)
    }

    /// tx fifo -> transport for one session; returns bytes moved.
    fn push_tx(&mut self, idx: u32, t: &mut dyn Transport) -> SessionResult<usize> {
        let s = &mut self.sessions[idx as usize];
        let Some(conn) = s.conn() else { return Ok(0) };
        let mut moved = 0;
        if s.proto == TransportProto::Udp {
            // A datagram header the app garbled is an error like any other
            // invalid value in its fifo.
            while let Some(d) = peek_datagram(&s.tx_out)? {
                let len = usize::from(d.len);
                self.scratch.resize(len.max(self.scratch.len()), 0);
                let got = s
                    .tx_out
                    .peek(DGRAM_HEADER_SIZE as u32, &mut self.scratch[..len])?;
                let meta = DatagramMeta {
                    remote: d.remote,
                    local: d.local,
                };
                if got < len || !t.send_datagram(conn, meta, &self.scratch[..len]) {
                    break;
                }
                s.tx_out.drop_bytes((DGRAM_HEADER_SIZE + len) as u32)?;
                moved += DGRAM_HEADER_SIZE + len;
            }
        } else {
            // Offer everything: a send that takes less arms the transport's
            // Writable, which brings the session back here.
            loop {
                let avail = s.tx_out.max_dequeue()? as usize;
                let want = avail.min(MAX_BYTES_PER_POLL - moved);
                if want == 0 {
                    break;
                }
                let tx = &mut s.tx_out;
                let mut fault = None;
                let n = t.send(conn, want, &mut |buf| {
                    tx.dequeue(buf).unwrap_or_else(|e| {
                        fault = Some(e);
                        0
                    })
                });
                if let Some(e) = fault {
                    return Err(e.into());
                }
                moved += n;
                if n == 0 {
                    break;
                }
            }
        }
        s.tx_pending = s.tx_out.max_dequeue()? > 0;
        let below_low = moved > 0 && s.tx_out.crossed_below_low_watermark()?;
        if moved > 0 && (s.tx_out.take_dequeue_notification_request() | below_low) {
            let h = s.handle;
            self.emit_for(idx, BuiltinEvent::Tx(h));
        }
        Ok(moved)
    }

    fn flush_tx(&mut self, idx: u32, tp: &mut dyn TransportSet) {
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        let proto = s.proto;
        let Some(t) = tp.transport(proto) else { return };
        if let Err(e) = self.push_tx(idx, t) {
            self.fifo_corrupted(idx, e, tp);
            return;
        }
        let s = &mut self.sessions[idx as usize];
        if s.state == SessionState::Closing && !s.tx_pending {
            if let Some(conn) = s.conn() {
                s.state = SessionState::TransportClosing;
                t.close(conn);
            }
        }
    }

    // ---- the poll -------------------------------------------------------

    /// One round of session work; returns true when anything happened.
    pub fn poll(&mut self, tp: &mut dyn TransportSet) -> bool {
        let mut work = false;
        while let Ok(cmd) = self.commands.try_recv() {
            work = true;
            self.run_command(cmd, tp);
        }
        self.events_left = false;
        for proto in [TransportProto::Tcp, TransportProto::Udp] {
            // A bounded batch: the thread must get back to its NIC queue
            // before the ring overflows; the rest waits for the next poll.
            let mut handled = 0;
            while let Some(ev) = tp.transport(proto).and_then(|t| t.poll_event()) {
                work = true;
                self.transport_event(proto, ev, tp);
                handled += 1;
                if handled == TRANSPORT_EVENTS_PER_POLL {
                    self.events_left = true;
                    break;
                }
            }
        }
        work |= self.serve_app_queues(tp);
        // Events that found a queue full, oldest first, before new ones.
        work |= self.backlogs.retry(std::time::Instant::now()) > 0;
        self.stats
            .pending_queues
            .store(self.pending.len() as u64, Relaxed);
        self.stats
            .app_queues
            .store(self.app_queues.len() as u64, Relaxed);
        // Only sessions something happened to; what they mark while being
        // serviced waits for the next round.
        for _ in 0..self.dirty.len() {
            let Some(idx) = self.dirty.pop() else { break };
            work |= self.service_session(idx, tp);
        }
        loop {
            work |= self.dispatch_builtin();
            if self.pending_disconnects.is_empty() {
                break;
            }
            for h in std::mem::take(&mut self.pending_disconnects) {
                self.app_disconnect(h, tp);
            }
        }
        for d in self.deferred.drain(..) {
            d();
        }
        work
    }

    /// Serves the pending app rx queues in order, a bounded batch each; a
    /// queue with messages left goes back to the tail, postponed. Queues
    /// are also looked at directly (cheap), so a polling thread needs no
    /// eventfd.
    fn serve_app_queues(&mut self, tp: &mut dyn TransportSet) -> bool {
        self.recheck_stalled();
        if self.app_queues.is_empty() {
            return false;
        }
        // Only a published message counts: a slot claimed and never
        // published, or rewritten indices, must not keep the thread awake.
        for (&id, q) in &self.app_queues {
            if q.has_ready() {
                self.pending.signal(id, true);
            }
        }
        let turns = self.pending.len();
        let mut work = false;
        for _ in 0..turns {
            let Some(turn) = self.pending.pop() else {
                break;
            };
            let Some(mut q) = self.app_queues.remove(&turn.queue) else {
                continue;
            };
            if !turn.postponed {
                let _ = q.eventfd().drain();
            }
            self.stats.batches.fetch_add(1, Relaxed);
            let mut fault = None;
            for _ in 0..APP_QUEUE_BATCH {
                match q.recv() {
                    Ok(Some(m)) => {
                        work = true;
                        self.stats.app_messages.fetch_add(1, Relaxed);
                        self.app_message(AppIndex(turn.queue), m, tp);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        fault = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = fault {
                // The queue is not served again: the verdict detaches the
                // app.
                self.app_queues.insert(turn.queue, q);
                self.condemn_app(AppIndex(turn.queue), format!("rx queue: {e}"));
                continue;
            }
            let left = q.has_ready();
            self.app_queues.insert(turn.queue, q);
            self.pending.finish(turn.queue, left);
        }
        work
    }

    /// One message an external app sent this thread.
    fn app_message(&mut self, app: AppIndex, m: RxMessage, tp: &mut dyn TransportSet) {
        if let RxMessage::Io(IoMessage::Ping { sent_ns }) = m {
            let wait = hoststack_app_proto::app_rx_queue::monotonic_ns().saturating_sub(sent_ns);
            let mut pings = self.stats.pings.lock().unwrap_or_else(|p| p.into_inner());
            let p = pings.entry(app.0).or_default();
            p.count += 1;
            p.max_wait_ns = p.max_wait_ns.max(wait);
            p.total_wait_ns += wait;
            return;
        }
        let session = match &m {
            RxMessage::Io(io) => SessionHandle::from_u64(io.session()),
            RxMessage::Control(ControlMessage::Disconnect { session, .. }) => {
                SessionHandle::from_u64(*session)
            }
            RxMessage::Control(other) => {
                crate::warn_limited!(
                    "control message on a worker thread's queue",
                    thread = self.thread,
                    app = app.0,
                    "control message {other:?} sent to a worker thread; ignored"
                );
                return;
            }
        };
        let Some(s) = self.session_mut(session) else {
            return;
        };
        if s.app != app {
            crate::warn_limited!(
                "app named a session it does not own",
                thread = self.thread,
                app = app.0,
                %session,
                "app named a session it does not own; ignored"
            );
            return;
        }
        let idx = session.index();
        match m {
            RxMessage::Io(IoMessage::Tx { .. }) => match s.kind {
                SessionKind::CutThrough { peer } => {
                    self.emit_for(peer.index(), BuiltinEvent::Rx(peer))
                }
                SessionKind::Transport(_) => {
                    s.tx_out.fifo().clear_event();
                    s.tx_pending = true;
                    self.dirty.mark(idx);
                }
            },
            RxMessage::Io(IoMessage::DequeueNotify { .. }) => match s.kind {
                SessionKind::CutThrough { peer } => {
                    self.emit_for(peer.index(), BuiltinEvent::Tx(peer))
                }
                SessionKind::Transport(_) => {
                    s.rx_blocked = false;
                    self.dirty.mark(idx);
                }
            },
            RxMessage::Io(IoMessage::Ping { .. }) => {}
            RxMessage::Io(IoMessage::Disconnect { .. }) | RxMessage::Control(_) => {
                let _ = idx;
                self.app_disconnect(session, tp);
            }
        }
    }

    /// Moves one session's bytes both ways and raises the events they
    /// cause.
    fn service_session(&mut self, idx: u32, tp: &mut dyn TransportSet) -> bool {
        match self.service_session_checked(idx, tp) {
            Ok(work) => work,
            Err(e) => {
                self.fifo_corrupted(idx, e, tp);
                true
            }
        }
    }

    /// [`SessionWorker::service_session`]; an error is an invalid value in
    /// one of the session's fifos.
    fn service_session_checked(
        &mut self,
        idx: u32,
        tp: &mut dyn TransportSet,
    ) -> SessionResult<bool> {
        let Some(s) = self.sessions.get_mut(idx as usize) else {
            return Ok(false);
        };
        if matches!(s.kind, SessionKind::CutThrough { .. }) || s.conn().is_none() {
            return Ok(false);
        }
        let proto = s.proto;
        let mut work = false;
        if s.rx_blocked && s.rx_in.max_enqueue()? > 0 {
            s.rx_blocked = false;
            work = true;
        }
        let pulling = !s.rx_blocked
            && matches!(
                s.state,
                SessionState::Ready | SessionState::RemoteClosed | SessionState::Closing
            );
        let Some(t) = tp.transport(proto) else {
            return Ok(false);
        };
        // A session that used its whole budget comes back next round.
        let mut more = false;
        if pulling {
            let moved = if proto == TransportProto::Udp {
                self.pull_datagrams(idx, t)?
            } else {
                self.pull_stream(idx, t)?
            };
            if moved > 0 {
                work = true;
                more |= moved >= MAX_BYTES_PER_POLL;
                self.notify_rx(idx);
            }
        }
        let has_tx = self.sessions[idx as usize].tx_out.max_dequeue()? > 0;
        if has_tx {
            let moved = self.push_tx(idx, t)?;
            work |= moved > 0;
            more |= moved >= MAX_BYTES_PER_POLL;
        }
        if more {
            self.dirty.mark(idx);
        }
        let s = &mut self.sessions[idx as usize];
        if s.state == SessionState::Closing && !s.tx_pending {
            if let Some(conn) = s.conn() {
                s.state = SessionState::TransportClosing;
                t.close(conn);
                work = true;
            }
        }
        // The peer closed and every byte it sent reached the fifo: tell the
        // app once.
        if s.peer_finished && !s.disconnect_notified {
            if let Some(conn) = s.conn() {
                if t.recv_available(conn) == 0 {
                    if s.state == SessionState::Ready {
                        s.state = SessionState::RemoteClosed;
                    }
                    s.disconnect_notified = true;
                    let h = s.handle;
                    self.emit_for(idx, BuiltinEvent::Disconnect(h));
                    work = true;
                }
            }
        }
        Ok(work)
    }

    /// A session's fifo held an invalid value: the verdict on its app, and
    /// the session reset now (the app's others go when it is detached).
    fn fifo_corrupted(&mut self, idx: u32, e: SessionError, tp: &mut dyn TransportSet) {
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        let (app, h) = (s.app, s.handle);
        self.condemn_app(app, format!("session {h}: fifo: {e}"));
        self.abort_session(idx, tp);
    }

    /// Reports app `app` for corrupting its shared memory (once per app on
    /// this thread) and stops serving its rx queue here.
    fn condemn_app(&mut self, app: AppIndex, what: String) {
        if !self.condemned.insert(app) {
            return;
        }
        self.pending.remove(app.0);
        self.stalled.forget(app.0);
        if self.app_queues.remove(&app.0).is_some() {
            self.queue_changes.push(QueueChange::Removed { id: app.0 });
        }
        let _ = self.verdicts.send(CorruptionVerdict {
            app,
            thread: self.thread,
            what,
        });
    }

    fn dispatch_builtin(&mut self) -> bool {
        let mut any = false;
        // Callbacks may queue more events (a cut-through write wakes the
        // peer); bound the rounds so two chatty apps cannot spin forever in
        // one poll.
        let mut budget = 4096;
        while let Some((cbs, wi, ev)) = self.builtin.pop_front() {
            any = true;
            let mut cx = AppCx {
                worker: self,
                app_worker: wi,
            };
            match ev {
                BuiltinEvent::Accept(h) => {
                    if let Some(f) = &cbs.accept {
                        f(&mut cx, h);
                    }
                }
                BuiltinEvent::Connected(r, opaque) => {
                    if let Some(f) = &cbs.connected {
                        f(&mut cx, r, opaque);
                    }
                }
                BuiltinEvent::Disconnect(h) => {
                    if let Some(f) = &cbs.disconnect {
                        f(&mut cx, h);
                    }
                }
                BuiltinEvent::Reset(h) => {
                    if let Some(f) = &cbs.reset {
                        f(&mut cx, h);
                    }
                }
                BuiltinEvent::Rx(h) => {
                    if let Some(s) = cx.worker.session_mut(h) {
                        s.app_rx.fifo().clear_event();
                    }
                    if let Some(f) = &cbs.rx {
                        f(&mut cx, h);
                    }
                }
                BuiltinEvent::Tx(h) => {
                    if let Some(f) = &cbs.tx {
                        f(&mut cx, h);
                    }
                }
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
        any
    }
}

/// The [`AppContext`] a builtin app's callback gets: the session worker of
/// the calling thread and the app worker being called.
pub struct AppCx<'a> {
    worker: &'a mut SessionWorker,
    app_worker: AppWorkerIndex,
}

impl AppCx<'_> {
    fn own(&mut self, h: SessionHandle) -> SessionResult<&mut Session> {
        let wi = self.app_worker;
        match self.worker.session_mut(h) {
            Some(s) if s.app_worker == wi => Ok(s),
            Some(_) => Err(SessionError::NotOwner(h.as_u64())),
            None => Err(SessionError::NoSession(h.as_u64())),
        }
    }

    fn after_read(&mut self, h: SessionHandle) {
        let Ok(s) = self.own(h) else { return };
        // The producer of this fifo asked to hear when room appears: the
        // stack (it stopped reading the transport) or a cut-through peer
        // (its tx fifo was full).
        if s.app_rx.take_dequeue_notification_request() {
            match s.kind {
                SessionKind::CutThrough { peer } => {
                    self.worker.emit_for(peer.index(), BuiltinEvent::Tx(peer))
                }
                SessionKind::Transport(_) => {
                    s.rx_blocked = false;
                    self.worker.dirty.mark(h.index());
                }
            }
        }
    }
}

impl AppContext for AppCx<'_> {
    fn app_worker(&self) -> AppWorkerIndex {
        self.app_worker
    }

    fn thread(&self) -> u32 {
        self.worker.thread
    }

    fn info(&mut self, h: SessionHandle) -> SessionResult<SessionInfo> {
        Ok(self.own(h)?.info())
    }

    fn rx_available(&mut self, h: SessionHandle) -> SessionResult<usize> {
        Ok(self.own(h)?.app_rx.max_dequeue()? as usize)
    }

    fn tx_space(&mut self, h: SessionHandle) -> SessionResult<usize> {
        Ok(self.own(h)?.app_tx.max_enqueue()? as usize)
    }

    fn read(&mut self, h: SessionHandle, buf: &mut [u8]) -> SessionResult<usize> {
        let n = self.own(h)?.app_rx.dequeue(buf)?;
        if n > 0 {
            self.after_read(h);
        }
        Ok(n)
    }

    fn peek(&mut self, h: SessionHandle, offset: u32, buf: &mut [u8]) -> SessionResult<usize> {
        Ok(self.own(h)?.app_rx.peek(offset, buf)?)
    }

    fn consume(&mut self, h: SessionHandle, n: u32) -> SessionResult<u32> {
        let n = self.own(h)?.app_rx.drop_bytes(n)?;
        if n > 0 {
            self.after_read(h);
        }
        Ok(n)
    }

    fn write(&mut self, h: SessionHandle, data: &[u8]) -> SessionResult<usize> {
        let s = self.own(h)?;
        let n = s.app_tx.enqueue(data)?;
        if n > 0 {
            // Arms the low-watermark tx-space event.
            let _ = s.app_tx.crossed_above_high_watermark();
            s.tx_pending = true;
            match s.kind {
                SessionKind::Transport(_) => {
                    self.worker.dirty.mark(h.index());
                }
                SessionKind::CutThrough { peer } => {
                    if let Some(p) = self.worker.session_mut(peer) {
                        let pi = p.handle.index();
                        if p.app_rx.fifo().set_event() {
                            self.worker.emit_for(pi, BuiltinEvent::Rx(peer));
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    fn want_tx_space(&mut self, h: SessionHandle) -> SessionResult<()> {
        let s = self.own(h)?;
        s.app_tx.request_dequeue_notification()?;
        Ok(())
    }

    fn recv_datagram(
        &mut self,
        h: SessionHandle,
        buf: &mut [u8],
    ) -> SessionResult<Option<(usize, DatagramMeta)>> {
        let Some((n, d)) = read_datagram(&mut self.own(h)?.app_rx, buf)? else {
            return Ok(None);
        };
        self.after_read(h);
        let meta = DatagramMeta {
            remote: d.remote,
            local: d.local,
        };
        Ok(Some((n, meta)))
    }

    fn send_datagram(
        &mut self,
        h: SessionHandle,
        meta: DatagramMeta,
        payload: &[u8],
    ) -> SessionResult<bool> {
        let s = self.own(h)?;
        let queued = write_datagram(&mut s.app_tx, &meta.remote, &meta.local, payload)?;
        s.tx_pending |= queued;
        if queued {
            self.worker.dirty.mark(h.index());
        }
        Ok(queued)
    }

    fn disconnect(&mut self, h: SessionHandle) -> SessionResult<()> {
        self.own(h)?;
        self.worker.pending_disconnects.push(h);
        Ok(())
    }

    fn tuple(&mut self, h: SessionHandle) -> SessionResult<Option<FiveTuple>> {
        let s = self.own(h)?;
        Ok(FiveTuple::new(s.proto, s.local, s.remote).ok())
    }
}

/// A listener's workers as a thread keeps them: by map index.
fn by_map_index(
    workers: Vec<Arc<AppWorkerShare>>,
) -> Vec<(
    hoststack_app_proto::handle::WorkerMapIndex,
    Arc<AppWorkerShare>,
)> {
    workers.into_iter().map(|w| (w.map_index, w)).collect()
}
