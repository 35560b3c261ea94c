//! Segments dedicated to the cut-through sessions between one server app
//! worker and one client app worker, as VPP's local sessions have.
//!
//! A cut-through pair of fifos is mapped by two apps. Placing it in either
//! worker's own segments would hand the other app that worker's event
//! queue and the fifos of all its other sessions, so each (server worker,
//! client worker) pair gets segments of its own that hold nothing but the
//! fifos of that pair's sessions. They are made on the pair's first
//! session, grow by added segments when full, and all go when the pair's
//! last session closes (both sides are told, as for any segment; a dying
//! worker is not). The same pair's next session starts a fresh set.
//!
//! Their memfds are named `hsct-SERVER-CLIENT-SET-INDEX` (an app's own
//! are `hs-NAME-...`), so an operator can tell them apart in
//! `/proc/PID/maps`.
//!
//! Segment indices come from the session layer's shared counter, so an
//! index names one segment whichever app maps it and never collides with
//! the workers' own.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::AppWorkerIndex;
use hoststack_shm::fifo::fifo_required_size;
use hoststack_shm::segment::SEGMENT_ALLOC_ALIGN;
use tracing::{debug, warn};

use crate::app_callbacks::Deferred;
use crate::app_socket_outbox::AppSocketOutbox;
use crate::app_worker::{AppWorkerShare, OwnedPair, PairOrigin, SessionFifos, SharedSegments};
use crate::segment_manager::{FifoPair, SegmentEvent, SegmentManager, SegmentManagerConfig};

/// The segments of one (server worker, client worker) pair.
pub struct CutThroughSegments {
    server: Weak<AppWorkerShare>,
    client: Weak<AppWorkerShare>,
    workers: (AppWorkerIndex, AppWorkerIndex),
    config: SegmentManagerConfig,
    name: String,
    ids: Arc<AtomicU32>,
    /// None while the pair has no session: no segment exists.
    manager: Mutex<Option<SegmentManager>>,
    /// Sets made so far (a fresh set's name differs from the last).
    generation: Mutex<u64>,
}

impl std::fmt::Debug for CutThroughSegments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CutThroughSegments")
            .field("server", &self.workers.0)
            .field("client", &self.workers.1)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sizes of a pair's segments: the server's fifo sizes, segments of
/// the server's additional size (its first segment's size when it adds
/// none), never smaller than one pair; no event queue, no preallocation.
fn config_for(server: &SegmentManagerConfig) -> SegmentManagerConfig {
    let pair = [server.rx_fifo_size, server.tx_fifo_size]
        .iter()
        .map(|&s| fifo_required_size(s).next_multiple_of(SEGMENT_ALLOC_ALIGN))
        .sum::<usize>();
    let size = match server.additional_segment_size {
        0 => server.first_segment_size,
        n => n,
    }
    .max(pair);
    SegmentManagerConfig {
        first_segment_size: size,
        additional_segment_size: size,
        prealloc_fifo_pairs: 0,
        prealloc_fifo_headers: 0,
        first_alloc_percent: 100,
        event_queue_slots: 0,
        ..server.clone()
    }
}

impl CutThroughSegments {
    /// The (so far empty) segments of `server`'s cut-through sessions with
    /// `client`; indices from `ids`.
    pub fn new(
        server: &Arc<AppWorkerShare>,
        client: &Arc<AppWorkerShare>,
        ids: Arc<AtomicU32>,
    ) -> Arc<Self> {
        let config = config_for(server.first_segments().config());
        Arc::new(Self {
            server: Arc::downgrade(server),
            client: Arc::downgrade(client),
            workers: (server.index, client.index),
            config,
            name: format!("hsct-{}-{}", server.index.0, client.index.0),
            ids,
            manager: Mutex::new(None),
            generation: Mutex::new(0),
        })
    }

    /// (server, client) app workers.
    pub fn workers(&self) -> (AppWorkerIndex, AppWorkerIndex) {
        self.workers
    }

    /// True when no segment exists (no session uses the pair).
    pub fn is_empty(&self) -> bool {
        lock(&self.manager).is_none()
    }

    /// True when either worker is gone or dying: no new session comes.
    pub fn is_dead(&self) -> bool {
        let gone = |w: &Weak<AppWorkerShare>| w.upgrade().is_none_or(|s| s.is_dying());
        gone(&self.server) || gone(&self.client)
    }

    /// Allocates a fifo pair for a new session, making the first segment
    /// when the pair has none (announced to both workers, like every
    /// segment added later). The handles are the server's (rx, tx), the
    /// ones formatting made.
    pub fn alloc_fifos(
        self: &Arc<Self>,
        outbox: &AppSocketOutbox,
        deferred: &mut Vec<Deferred>,
    ) -> SessionResult<SessionFifos> {
        let (server, client) = match (self.server.upgrade(), self.client.upgrade()) {
            (Some(s), Some(c)) if !s.is_dying() && !c.is_dying() => (s, c),
            (s, _) => {
                let index = s.map_or(self.workers.0, |s| s.index);
                return Err(SessionError::InvalidAppWorker(index.0));
            }
        };
        let (pair, fifos, events) = {
            let mut slot = lock(&self.manager);
            if slot.is_none() {
                let mut generation = lock(&self.generation);
                *slot = Some(SegmentManager::announced(
                    &format!("{}-{}", self.name, *generation),
                    self.config.clone(),
                    self.ids.clone(),
                )?);
                *generation += 1;
            }
            let Some(m) = slot.as_mut() else {
                return Err(SessionError::NoSpace("no segment manager".into()));
            };
            let (pair, fifos) = m.alloc_fifos()?;
            (pair, fifos, m.take_events())
        };
        self.announce(events, outbox, deferred);
        let watermarks = server
            .set_tx_watermarks(&fifos.1)
            .and_then(|()| client.set_tx_watermarks(&fifos.0));
        let owned = OwnedPair {
            share: server,
            pair,
            origin: PairOrigin::Shared(self.clone()),
        };
        if let Err(e) = watermarks {
            owned.free(outbox, deferred);
            return Err(e);
        }
        Ok(SessionFifos {
            fifos,
            location: crate::app_worker::location_of(&pair),
            owned,
        })
    }

    /// Tells both workers (those still alive and not dying) about added
    /// and removed segments.
    fn announce(
        &self,
        events: Vec<SegmentEvent>,
        outbox: &AppSocketOutbox,
        deferred: &mut Vec<Deferred>,
    ) {
        let live = |w: &Weak<AppWorkerShare>| w.upgrade().filter(|s| !s.is_dying());
        let (server, client) = (live(&self.server), live(&self.client));
        let mut for_client = Vec::new();
        if client.is_some() {
            for ev in &events {
                match duplicate(ev) {
                    Ok(ev) => for_client.push(ev),
                    Err(e) => warn!("cut-through segment fd for the client: {e}"),
                }
            }
        }
        if let Some(s) = server {
            s.announce(events, outbox, deferred);
        }
        if let Some(c) = client {
            c.announce(for_client, outbox, deferred);
        }
    }

    /// (segments, fifos, bytes in use).
    pub fn totals(&self) -> (usize, usize, usize) {
        lock(&self.manager).as_ref().map_or((0, 0, 0), |m| {
            (m.segment_count(), m.fifos_allocated(), m.bytes_in_use())
        })
    }

    /// Indices of its segments (for `show` and tests).
    pub fn segment_indices(&self) -> Vec<u32> {
        lock(&self.manager)
            .as_ref()
            .map(|m| m.segments().map(|(i, _)| i).collect())
            .unwrap_or_default()
    }
}

impl SharedSegments for CutThroughSegments {
    /// Frees a session's pair; the pair's last one takes every segment
    /// with it.
    fn free(&self, pair: &FifoPair, outbox: &AppSocketOutbox, deferred: &mut Vec<Deferred>) {
        let events = {
            let mut slot = lock(&self.manager);
            let Some(m) = slot.as_mut() else {
                warn!(?pair, "freeing a cut-through pair with no segments");
                return;
            };
            if let Err(e) = m.free_fifo_pair(pair) {
                warn!("freeing cut-through fifos: {e}");
                return;
            }
            let mut events = m.take_events();
            if m.fifos_allocated() == 0 {
                events.extend(
                    m.segments()
                        .map(|(index, _)| SegmentEvent::Removed { index }),
                );
                *slot = None;
                debug!(
                    server = self.workers.0.0,
                    client = self.workers.1.0,
                    "cut-through segments freed"
                );
            }
            events
        };
        self.announce(events, outbox, deferred);
    }
}

/// A second copy of a segment event (the fd duplicated).
fn duplicate(ev: &SegmentEvent) -> SessionResult<SegmentEvent> {
    Ok(match ev {
        SegmentEvent::Added { index, fd, size } => SegmentEvent::Added {
            index: *index,
            fd: fd
                .try_clone()
                .map_err(|e| hoststack_shm::ShmError::os("segment fd dup", &e))?,
            size: *size,
        },
        SegmentEvent::Removed { index } => SegmentEvent::Removed { index: *index },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_callbacks::AppCallbacks;
    use crate::app_worker::{AppWorkerSpec, EventSink};
    use hoststack_app_proto::handle::{AppIndex, FibIndex, WorkerMapIndex};
    use std::sync::atomic::Ordering::Relaxed;

    /// Segments a builtin worker heard of: (added, removed) indices.
    type Heard = Arc<Mutex<(Vec<u32>, Vec<u32>)>>;

    fn worker(
        index: u32,
        config: SegmentManagerConfig,
        ids: &Arc<AtomicU32>,
    ) -> (Arc<AppWorkerShare>, Heard) {
        let heard: Heard = Arc::default();
        let (a, r) = (heard.clone(), heard.clone());
        let cbs = AppCallbacks {
            add_segment: Some(Arc::new(move |i, _| lock(&a).0.push(i))),
            del_segment: Some(Arc::new(move |i, _| lock(&r).1.push(i))),
            ..Default::default()
        };
        let first =
            SegmentManager::with_ids(&format!("hs-w{index}"), config, Some(ids.clone())).unwrap();
        let share = AppWorkerShare::new(AppWorkerSpec {
            index: AppWorkerIndex(index),
            app: AppIndex(index),
            map_index: WorkerMapIndex(0),
            fib: FibIndex(0),
            sink: EventSink::Builtin(Arc::new(cbs)),
            api_client: None,
            first,
            threads: 1,
            name: format!("hs-w{index}"),
            segment_ids: ids.clone(),
            watermarks: (0, 0),
        });
        (share, heard)
    }

    #[test]
    fn a_pair_grows_by_segments_of_its_own_and_its_last_session_frees_them_all() {
        let ids = Arc::new(AtomicU32::new(0));
        let small = SegmentManagerConfig {
            first_segment_size: 1 << 20,
            additional_segment_size: 3 * 8192 + 4096,
            rx_fifo_size: 4096,
            tx_fifo_size: 4096,
            event_queue_slots: 0,
            ..SegmentManagerConfig::default()
        };
        let (server, s_heard) = worker(0, small.clone(), &ids);
        let (client, c_heard) = worker(1, small, &ids);
        let own = [
            server.first_segments().first_segment_index(),
            client.first_segments().first_segment_index(),
        ];
        let ct = CutThroughSegments::new(&server, &client, ids.clone());
        let outbox = AppSocketOutbox::default();
        let mut deferred = Vec::new();
        let pairs: Vec<SessionFifos> = (0..10)
            .map(|_| ct.alloc_fifos(&outbox, &mut deferred).unwrap())
            .collect();
        for d in deferred.drain(..) {
            d();
        }
        let segments = ct.segment_indices();
        assert!(segments.len() > 1, "never grew: {segments:?}");
        assert!(
            segments.iter().all(|i| !own.contains(i)),
            "{segments:?} {own:?}"
        );
        assert_eq!(ct.totals().1, 20);
        // Both workers heard of every segment, and only of those.
        for heard in [&s_heard, &c_heard] {
            let mut added = lock(heard).0.clone();
            added.sort();
            assert_eq!(added, segments);
        }
        for f in pairs {
            f.owned.free(&outbox, &mut deferred);
        }
        for d in deferred.drain(..) {
            d();
        }
        assert!(ct.is_empty());
        assert_eq!(ct.totals(), (0, 0, 0));
        for heard in [&s_heard, &c_heard] {
            let mut removed = lock(heard).1.clone();
            removed.sort();
            assert_eq!(removed, segments);
        }
        // The next session starts a fresh set, with new indices.
        let again = ct.alloc_fifos(&outbox, &mut deferred).unwrap();
        let fresh = ct.segment_indices();
        assert!(fresh.iter().all(|i| !segments.contains(i)), "{fresh:?}");
        // A dying worker hears nothing more, and no pair is made for it.
        client.mark_dying();
        assert!(ct.is_dead());
        again.owned.free(&outbox, &mut deferred);
        for d in deferred.drain(..) {
            d();
        }
        assert!(!lock(&c_heard).1.contains(&fresh[0]));
        assert!(lock(&s_heard).1.contains(&fresh[0]));
        assert!(ct.alloc_fifos(&outbox, &mut deferred).is_err());
        assert_eq!(ids.load(Relaxed) as usize, 2 + segments.len() + fresh.len());
    }

    #[test]
    fn a_pair_segment_holds_at_least_one_pair_and_no_event_queue() {
        let server = SegmentManagerConfig {
            first_segment_size: 4096,
            additional_segment_size: 0,
            rx_fifo_size: 1 << 20,
            tx_fifo_size: 1 << 20,
            prealloc_fifo_pairs: 4,
            ..SegmentManagerConfig::default()
        };
        let c = config_for(&server);
        assert!(c.first_segment_size >= 2 * (1 << 20));
        assert_eq!(c.additional_segment_size, c.first_segment_size);
        assert_eq!((c.event_queue_slots, c.prealloc_fifo_pairs), (0, 0));
        assert_eq!((c.rx_fifo_size, c.tx_fifo_size), (1 << 20, 1 << 20));
        let mut m = SegmentManager::new("hsct-test", c).unwrap();
        m.alloc_fifos().unwrap();
    }
}
