//! App workers: one per thread of an application, each with its segments
//! (the first one protected, holding the event queue), its event delivery
//! (a builtin app's callbacks, or an external app's shared-memory event
//! queue with an optional eventfd) and counters.
//!
//! The part stack threads need lives in an [`AppWorkerShare`] every thread
//! holds an `Arc` of, so a session is born and dies on its thread without
//! the session layer's lock: the thread picks the worker from its own copy
//! of the listener, allocates the fifos in the worker's segment manager for
//! that thread (a mutex only that thread takes, but for `show` and detach),
//! and counts the session in an atomic. A dying worker is freed by the
//! control thread once that count reaches zero.

use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use crate::app_callbacks::{AppCallbacks, Deferred};
use crate::app_event_queue::AppEventQueue;
use crate::app_socket_outbox::{AppSocketOutbox, PendingSegmentFd};
use crate::segment_manager::{FifoPair, SegmentEvent, SegmentManager, SegmentManagerConfig};
use hoststack_app_proto::app_event::{AppEvent, FifoLocation};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{
    AppIndex, AppWorkerIndex, FibIndex, ListenerHandle, WorkerMapIndex,
};
use hoststack_shm::fifo::Fifo;

/// How events reach an app worker.
#[derive(Clone)]
pub enum EventSink {
    /// A builtin app: callbacks called on the session's thread.
    Builtin(Arc<AppCallbacks>),
    /// An external app: its event queue in shared memory, with the
    /// backlog of events that found it full.
    Queue(Arc<AppEventQueue>),
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(_) => f.write_str("Builtin"),
            Self::Queue(q) => write!(f, "Queue({} slots)", q.queue().capacity()),
        }
    }
}

/// Counters of one app worker, readable from anywhere.
#[derive(Debug, Default)]
pub struct AppWorkerCounters {
    /// Sessions accepted on its listeners.
    pub accepted: AtomicU64,
    /// Connects that completed (successfully).
    pub connected: AtomicU64,
    /// Sessions that ended.
    pub closed: AtomicU64,
    /// Events delivered.
    pub events: AtomicU64,
    /// Events dropped: the backlog overflowed (the app stopped reading its
    /// queue) or the queue is corrupted. A full queue only postpones.
    pub events_dropped: AtomicU64,
}

/// Which segment manager a fifo pair came from, so it goes back there.
#[derive(Debug, Clone)]
pub enum PairOrigin {
    /// The first segment's (control operations, preallocated pairs).
    First,
    /// Stack thread `n`'s.
    Thread(usize),
    /// Segments two workers share, which free their own pairs (a
    /// cut-through pair's: `cut_through_segments`).
    Shared(Arc<dyn SharedSegments>),
}

/// Segments of more than one app worker that take their pairs back
/// themselves, telling every worker concerned.
pub trait SharedSegments: std::fmt::Debug + Send + Sync {
    /// Frees `pair`; segment changes are announced through `outbox` and
    /// `deferred`.
    fn free(&self, pair: &FifoPair, outbox: &AppSocketOutbox, deferred: &mut Vec<Deferred>);
}

/// A fifo pair a session frees when it goes.
#[derive(Debug)]
pub struct OwnedPair {
    /// The app worker whose segments hold it.
    pub share: Arc<AppWorkerShare>,
    /// The pair.
    pub pair: FifoPair,
    /// Where it came from.
    pub origin: PairOrigin,
}

impl OwnedPair {
    /// Gives the pair back; the segment changes that causes are announced
    /// to the app (`deferred` takes a builtin app's callbacks).
    pub fn free(self, outbox: &AppSocketOutbox, deferred: &mut Vec<Deferred>) {
        if let PairOrigin::Shared(segments) = &self.origin {
            segments.free(&self.pair, outbox, deferred);
            return;
        }
        let events = self.share.free_pair(&self.origin, &self.pair);
        self.share.announce(events, outbox, deferred);
    }
}

/// A new session's fifos, allocated in an app worker's segments.
#[derive(Debug)]
pub struct SessionFifos {
    /// (rx, tx) seen from the stack.
    pub fifos: (Fifo, Fifo),
    /// Where they are, for an external app.
    pub location: FifoLocation,
    /// What to free when the session goes.
    pub owned: OwnedPair,
}

/// What every stack thread holds of an app worker.
pub struct AppWorkerShare {
    /// Global index.
    pub index: AppWorkerIndex,
    /// Its app.
    pub app: AppIndex,
    /// Its number inside the app.
    pub map_index: WorkerMapIndex,
    /// The FIB of its app's namespace (its sessions' lookup keys).
    pub fib: FibIndex,
    /// Where its events go.
    pub sink: EventSink,
    /// Counters.
    pub counters: Arc<AppWorkerCounters>,
    /// Api client that registered it (external apps).
    pub api_client: Option<u32>,
    sessions: AtomicUsize,
    dying: AtomicBool,
    first: Mutex<SegmentManager>,
    /// One manager per stack thread, made by that thread for its first
    /// session; `None` settings: every pair comes from the first segment's
    /// (the app preallocates there, or may add no segment).
    threads: Box<[Mutex<Option<SegmentManager>>]>,
    thread_config: Option<SegmentManagerConfig>,
    name: String,
    segment_ids: Arc<AtomicU32>,
    /// Tx fifo watermarks, percent.
    watermarks: (u8, u8),
}

impl std::fmt::Debug for AppWorkerShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppWorkerShare")
            .field("index", &self.index)
            .field("app", &self.app)
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How to build an [`AppWorkerShare`].
#[derive(Debug)]
pub struct AppWorkerSpec {
    /// Global index.
    pub index: AppWorkerIndex,
    /// Its app.
    pub app: AppIndex,
    /// Its number inside the app.
    pub map_index: WorkerMapIndex,
    /// Its namespace's FIB.
    pub fib: FibIndex,
    /// Where its events go.
    pub sink: EventSink,
    /// Api client (external apps).
    pub api_client: Option<u32>,
    /// Its first segment's manager.
    pub first: SegmentManager,
    /// Stack threads.
    pub threads: usize,
    /// Prefix of its segments' names.
    pub name: String,
    /// Where segment indices come from.
    pub segment_ids: Arc<AtomicU32>,
    /// Tx fifo watermarks, percent (high, low).
    pub watermarks: (u8, u8),
}

impl AppWorkerShare {
    /// A share over `spec`'s first segment manager.
    pub fn new(spec: AppWorkerSpec) -> Arc<Self> {
        let c = spec.first.config().clone();
        // Threads get segments of their own unless the app preallocates in
        // the first one or may have no other.
        let thread_config = (c.additional_segment_size > 0
            && c.prealloc_fifo_pairs == 0
            && c.prealloc_fifo_headers == 0)
            .then_some(SegmentManagerConfig {
                first_segment_size: c.additional_segment_size,
                event_queue_slots: 0,
                first_alloc_percent: 100,
                ..c
            });
        Arc::new(Self {
            index: spec.index,
            app: spec.app,
            map_index: spec.map_index,
            fib: spec.fib,
            sink: spec.sink,
            counters: Arc::default(),
            api_client: spec.api_client,
            sessions: AtomicUsize::new(0),
            dying: AtomicBool::new(false),
            first: Mutex::new(spec.first),
            threads: (0..spec.threads).map(|_| Mutex::new(None)).collect(),
            thread_config,
            name: spec.name,
            segment_ids: spec.segment_ids,
            watermarks: spec.watermarks,
        })
    }

    /// The first segment's manager (control operations, `show`).
    pub fn first_segments(&self) -> MutexGuard<'_, SegmentManager> {
        lock(&self.first)
    }

    /// Sessions alive on any thread.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Whether the worker is being deleted.
    pub fn is_dying(&self) -> bool {
        self.dying.load(Ordering::SeqCst)
    }

    /// Marks the worker dying; true when it has no session left (free it
    /// now). A thread whose last session of it ends later says so through
    /// [`AppWorkerShare::session_ended`].
    pub fn mark_dying(&self) -> bool {
        self.dying.store(true, Ordering::SeqCst);
        self.sessions() == 0
    }

    /// Counts a new session.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a session that ended; true when it was the last one of a
    /// dying worker (the control thread must free it).
    pub fn session_ended(&self) -> bool {
        self.counters.closed.fetch_add(1, Relaxed);
        let before = self.sessions.fetch_sub(1, Ordering::SeqCst);
        before == 1 && self.is_dying()
    }

    /// Allocates a session's fifo pair: in the segments of stack thread
    /// `thread` (made on first use), or in the first segment for control
    /// operations (`None`) and for apps that preallocate. Segment changes
    /// are announced through `outbox` and `deferred`.
    pub fn alloc_fifos(
        self: &Arc<Self>,
        thread: Option<usize>,
        outbox: &AppSocketOutbox,
        deferred: &mut Vec<Deferred>,
    ) -> SessionResult<SessionFifos> {
        if self.is_dying() {
            return Err(SessionError::InvalidAppWorker(self.index.0));
        }
        let (origin, pair, fifos, events) = match (thread, &self.thread_config) {
            (Some(t), Some(config)) if t < self.threads.len() => {
                let mut slot = lock(&self.threads[t]);
                if slot.is_none() {
                    // Its first segment is news to the app: announced.
                    *slot = Some(SegmentManager::announced(
                        &format!("{}-t{t}", self.name),
                        config.clone(),
                        self.segment_ids.clone(),
                    )?);
                }
                let Some(m) = slot.as_mut() else {
                    return Err(SessionError::NoSpace("no segment manager".into()));
                };
                let (pair, fifos) = m.alloc_fifos()?;
                (PairOrigin::Thread(t), pair, fifos, m.take_events())
            }
            _ => {
                let mut m = lock(&self.first);
                let (pair, fifos) = m.alloc_fifos()?;
                (PairOrigin::First, pair, fifos, m.take_events())
            }
        };
        self.announce(events, outbox, deferred);
        self.set_tx_watermarks(&fifos.1)?;
        Ok(SessionFifos {
            fifos,
            location: location_of(&pair),
            owned: OwnedPair {
                share: self.clone(),
                pair,
                origin,
            },
        })
    }

    /// Sets the app's watermarks, in percent of the size, on a fifo it
    /// writes: crossing below low after going above high raises a tx-space
    /// event.
    pub fn set_tx_watermarks(&self, tx: &Fifo) -> SessionResult<()> {
        let size = u64::from(tx.size());
        let pct = |p: u8| (size * u64::from(p) / 100) as u32;
        Ok(tx.set_watermarks(pct(self.watermarks.0), pct(self.watermarks.1))?)
    }

    /// Frees a pair; returns the segment changes to announce.
    fn free_pair(&self, origin: &PairOrigin, pair: &FifoPair) -> Vec<SegmentEvent> {
        let freed = match origin {
            PairOrigin::First => {
                let mut m = lock(&self.first);
                m.free_fifo_pair(pair).map(|()| m.take_events())
            }
            PairOrigin::Thread(t) => match self.threads.get(*t).map(lock) {
                Some(mut slot) => match slot.as_mut() {
                    Some(m) => m.free_fifo_pair(pair).map(|()| m.take_events()),
                    None => Ok(Vec::new()),
                },
                None => Ok(Vec::new()),
            },
            // Freed by their own manager (see `OwnedPair::free`).
            PairOrigin::Shared(_) => Ok(Vec::new()),
        };
        match freed {
            Ok(events) if !self.is_dying() => events,
            // Segments of a dying worker are not announced.
            Ok(_) => Vec::new(),
            Err(e) => {
                warn!(worker = self.index.0, "freeing fifos: {e}");
                Vec::new()
            }
        }
    }

    /// Tells the app about added and removed segments: an event on its
    /// queue and the fd through the app socket, or its builtin callbacks.
    pub fn announce(
        &self,
        events: Vec<SegmentEvent>,
        outbox: &AppSocketOutbox,
        deferred: &mut Vec<Deferred>,
    ) {
        for ev in events {
            match &self.sink {
                EventSink::Builtin(cbs) => {
                    let (f, index, size) = match ev {
                        SegmentEvent::Added { index, size, .. } => (&cbs.add_segment, index, size),
                        SegmentEvent::Removed { index } => (&cbs.del_segment, index, 0),
                    };
                    if let Some(f) = f.clone() {
                        deferred.push(Box::new(move || f(index, size)));
                    }
                }
                EventSink::Queue(_) => {
                    let event = match &ev {
                        SegmentEvent::Added { index, size, .. } => AppEvent::SegmentAdded {
                            index: *index,
                            size: *size as u64,
                        },
                        SegmentEvent::Removed { index } => {
                            AppEvent::SegmentRemoved { index: *index }
                        }
                    };
                    // The fd first: the app waits for it when the event
                    // comes, never the other way round.
                    if let (SegmentEvent::Added { index, size, fd }, Some(client)) =
                        (ev, self.api_client)
                    {
                        outbox.push(PendingSegmentFd {
                            client,
                            worker: self.map_index.0,
                            index,
                            size: size as u64,
                            fd,
                        });
                    }
                    let _ = self.sink.post(&event, &self.counters);
                }
            }
        }
    }

    /// (segments, fifos, bytes in use) over all its segment managers.
    pub fn segment_totals(&self) -> (usize, usize, usize) {
        let mut t = {
            let m = lock(&self.first);
            (m.segment_count(), m.fifos_allocated(), m.bytes_in_use())
        };
        for slot in self.threads.iter() {
            if let Some(m) = lock(slot).as_ref() {
                t.0 += m.segment_count();
                t.1 += m.fifos_allocated();
                t.2 += m.bytes_in_use();
            }
        }
        t
    }
}

/// Where a pair is, as an external app is told.
pub fn location_of(pair: &FifoPair) -> FifoLocation {
    FifoLocation {
        segment: pair.segment_index,
        rx_offset: pair.rx_offset as u32,
        tx_offset: pair.tx_offset as u32,
    }
}

/// One worker of an application, as the control plane keeps it.
#[derive(Debug)]
pub struct AppWorker {
    /// What stack threads hold of it.
    pub share: Arc<AppWorkerShare>,
    /// Listeners it is part of.
    pub listeners: Vec<ListenerHandle>,
}

impl AppWorker {
    /// Global index.
    pub fn index(&self) -> AppWorkerIndex {
        self.share.index
    }

    /// Its app.
    pub fn app(&self) -> AppIndex {
        self.share.app
    }

    /// Its number inside the app.
    pub fn map_index(&self) -> WorkerMapIndex {
        self.share.map_index
    }

    /// Where its events go.
    pub fn sink(&self) -> &EventSink {
        &self.share.sink
    }

    /// Its counters.
    pub fn counters(&self) -> &Arc<AppWorkerCounters> {
        &self.share.counters
    }

    /// Api client that registered it.
    pub fn api_client(&self) -> Option<u32> {
        self.share.api_client
    }
}

impl EventSink {
    /// Delivers an event to an external app's queue, or postpones it
    /// behind the ones already waiting when the queue is full. Builtin
    /// events are dispatched by the session worker, not here. `Err` only
    /// when the event was dropped.
    pub fn post(&self, event: &AppEvent, counters: &AppWorkerCounters) -> SessionResult<()> {
        match self {
            Self::Builtin(_) => Ok(()),
            Self::Queue(q) => match q.post(event) {
                Ok(()) => {
                    counters.events.fetch_add(1, Relaxed);
                    Ok(())
                }
                Err(e) => {
                    counters.events_dropped.fetch_add(1, Relaxed);
                    crate::warn_limited!(
                        "app event queue refused an event",
                        "app event queue refused {event:?}: {e}"
                    );
                    Err(e.into())
                }
            },
        }
    }
}
