//! App workers: one per thread of an application, each with its own
//! segment manager (the first segment protected), its event delivery (a
//! builtin app's callbacks, or an external app's shared-memory event queue
//! with an optional eventfd) and counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracing::warn;

use crate::app_callbacks::AppCallbacks;
use crate::app_event_queue::AppEventQueue;
use crate::segment_manager::SegmentManager;
use hoststack_app_proto::app_event::AppEvent;
use hoststack_app_proto::error::SessionResult;
use hoststack_app_proto::handle::{AppIndex, AppWorkerIndex, ListenerHandle, WorkerMapIndex};

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

/// One worker of an application.
#[derive(Debug)]
pub struct AppWorker {
    /// Global index.
    pub index: AppWorkerIndex,
    /// Its app.
    pub app: AppIndex,
    /// Its number inside the app.
    pub map_index: WorkerMapIndex,
    /// Its segments and fifos.
    pub segment_manager: SegmentManager,
    /// Where its events go.
    pub sink: EventSink,
    /// Listeners it is part of.
    pub listeners: Vec<ListenerHandle>,
    /// Sessions it owns (alive on some stack thread).
    pub sessions: usize,
    /// Api client that registered it (external apps).
    pub api_client: Option<u32>,
    /// Counters.
    pub counters: Arc<AppWorkerCounters>,
    /// Set when the worker is being deleted; freed once `sessions` is 0.
    pub dying: bool,
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
                    warn!("app event queue refused {event:?}: {e}");
                    Err(e.into())
                }
            },
        }
    }
}
