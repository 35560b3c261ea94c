//! An external app worker's event queue with its backlog: events that find
//! the shared-memory queue full are postponed, never dropped, and sent in
//! order as the app makes room (VPP's postponed event list).
//!
//! - [`PostponedEvents`]: the backlog as plain data (the waiting events in
//!   order, with when each was postponed, and the counts `show app mq`
//!   prints), unit-tested without shared memory.
//! - [`AppEventQueue`]: the message queue plus its backlog. Posting is
//!   lock-free while no backlog exists; once one does, every later event
//!   joins it so order holds.
//! - [`Backlogs`]: the queues that have a backlog, shared by every thread
//!   that posts. Stack threads retry them, oldest first; a poll with none
//!   costs one atomic load. An app gives no signal when it makes room, so
//!   each queue is retried 1 ms after it filled, then, while no event
//!   goes, at twice the last delay up to [`MAX_RETRY_DELAY`]: a stopped app
//!   costs a sleeping thread a few wakeups a second, not a thousand.
//!
//! When a backlog drains the app is told with an [`AppEvent::Backlog`]
//! (how many events waited, and the longest wait), so it learns it fell
//! behind. A backlog that outgrows [`MAX_POSTPONED`] means the app stopped
//! reading its queue: further events are counted as dropped and the stall
//! is reported for the control plane to act on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hoststack_app_proto::app_event::AppEvent;
use hoststack_shm::ShmError;
use hoststack_shm::message_queue::MessageQueue;

/// Events one app worker may have waiting before it counts as stalled.
pub const MAX_POSTPONED: usize = 1 << 18;

/// Counts of one app worker's postponed events, readable from anywhere.
#[derive(Debug, Default)]
pub struct PostponedCounters {
    /// Events that found the queue full and waited.
    pub postponed: AtomicU64,
    /// Events waiting now.
    pub waiting: AtomicU64,
    /// Longest any event waited, nanoseconds.
    pub max_wait_ns: AtomicU64,
    /// Events dropped: the backlog was full (the app stopped reading) or
    /// the queue is corrupted.
    pub dropped: AtomicU64,
}

/// The backlog of one queue, as plain data.
#[derive(Debug, Default)]
pub struct PostponedEvents {
    waiting: VecDeque<(AppEvent, Instant)>,
    /// Events postponed since the backlog last drained, and the longest
    /// wait among them: what the [`AppEvent::Backlog`] notice reports.
    episode_count: u32,
    episode_max_wait: Duration,
}

/// What [`PostponedEvents::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postponed {
    /// The event waits.
    Queued,
    /// The backlog is full; the event was not kept.
    Overflow,
}

impl PostponedEvents {
    /// Events waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Puts `event` at the back.
    pub fn push(&mut self, event: AppEvent, now: Instant) -> Postponed {
        if self.waiting.len() >= MAX_POSTPONED {
            return Postponed::Overflow;
        }
        self.waiting.push_back((event, now));
        self.episode_count = self.episode_count.saturating_add(1);
        Postponed::Queued
    }

    /// Sends waiting events in order through `send` until it refuses one
    /// (that one stays first) or none is left; once the backlog is empty,
    /// the notice of the episode is sent last (it waits too when refused).
    /// Returns the events sent and the longest wait among them.
    pub fn drain(
        &mut self,
        now: Instant,
        mut send: impl FnMut(&AppEvent) -> bool,
    ) -> (u64, Duration) {
        let (mut sent, mut longest) = (0, Duration::ZERO);
        while let Some((event, since)) = self.waiting.front() {
            let notice = matches!(event, AppEvent::Backlog { .. });
            if !send(event) {
                break;
            }
            if !notice {
                let wait = now.saturating_duration_since(*since);
                longest = longest.max(wait);
                self.episode_max_wait = self.episode_max_wait.max(wait);
                sent += 1;
            }
            self.waiting.pop_front();
            if self.waiting.is_empty() && !notice && self.episode_count > 0 {
                let notice = AppEvent::Backlog {
                    postponed: self.episode_count,
                    max_wait_us: u32::try_from(self.episode_max_wait.as_micros())
                        .unwrap_or(u32::MAX),
                };
                self.episode_count = 0;
                self.episode_max_wait = Duration::ZERO;
                self.waiting.push_back((notice, now));
            }
        }
        (sent, longest)
    }
}

/// The first retry of a backlog, after its queue filled.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(1);

/// The longest wait between retries of a backlog none of whose events goes.
pub const MAX_RETRY_DELAY: Duration = Duration::from_millis(64);

/// When a backlog is tried next, and the delay that got it there.
#[derive(Debug, Default, Clone, Copy)]
struct RetryPacing {
    at: Option<Instant>,
    delay: Duration,
}

impl RetryPacing {
    /// After a retry at `now` that sent `sent` events: back to the first
    /// delay when some went, twice the last (at most the longest) when
    /// none did.
    fn after(&mut self, now: Instant, sent: u64) {
        self.delay = if sent > 0 {
            MIN_RETRY_DELAY
        } else {
            (self.delay * 2).clamp(MIN_RETRY_DELAY, MAX_RETRY_DELAY)
        };
        self.at = Some(now + self.delay);
    }
}

/// The queues with a backlog, shared by all posting threads.
#[derive(Debug, Default)]
pub struct Backlogs {
    any: AtomicBool,
    queues: Mutex<Vec<Arc<AppEventQueue>>>,
    /// The earliest time one of them is due.
    next: Mutex<Option<Instant>>,
}

impl Backlogs {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<AppEventQueue>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, q: Arc<AppEventQueue>) {
        let due = q.pacing().at.unwrap_or_else(Instant::now);
        self.lock().push(q);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next = Some(next.map_or(due, |n| n.min(due)));
        self.any.store(true, Ordering::Release);
    }

    /// When the earliest backlog is due for a retry (`None`: no backlog).
    pub fn next_retry(&self) -> Option<Instant> {
        if !self.any() {
            return None;
        }
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some queue has a backlog.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Retries every backlog once, oldest first; a queue whose backlog
    /// drained leaves the list. Another thread retrying at the same moment
    /// makes this one skip (the work is the same). Returns events sent.
    ///
    /// Only the queues that are due are tried (see [`MAX_RETRY_DELAY`]).
    pub fn retry(&self, now: Instant) -> u64 {
        if self.next_retry().is_none_or(|at| now < at) {
            return 0;
        }
        let Ok(mut queues) = self.queues.try_lock() else {
            return 0;
        };
        let mut sent = 0;
        queues.retain(|q| {
            sent += q.drain_backlog(now);
            q.has_backlog()
        });
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) =
            queues.iter().filter_map(|q| q.pacing().at).min();
        self.any.store(!queues.is_empty(), Ordering::Release);
        sent
    }
}

/// An app worker's event queue in shared memory, with its backlog.
#[derive(Debug)]
pub struct AppEventQueue {
    queue: MessageQueue,
    backlog: Mutex<PostponedEvents>,
    /// Set while the backlog is non-empty: posts must join it.
    backlogged: AtomicBool,
    counters: PostponedCounters,
    backlogs: Arc<Backlogs>,
    /// When its backlog is tried next.
    pacing: Mutex<RetryPacing>,
}

impl AppEventQueue {
    /// Wraps `queue`; its backlogs are retried through `backlogs`.
    pub fn new(queue: MessageQueue, backlogs: Arc<Backlogs>) -> Arc<Self> {
        Arc::new(Self {
            queue,
            backlog: Mutex::default(),
            backlogged: AtomicBool::new(false),
            counters: PostponedCounters::default(),
            backlogs,
            pacing: Mutex::default(),
        })
    }

    /// The shared-memory queue.
    pub fn queue(&self) -> &MessageQueue {
        &self.queue
    }

    /// Postponement counts.
    pub fn counters(&self) -> &PostponedCounters {
        &self.counters
    }

    fn lock(&self) -> MutexGuard<'_, PostponedEvents> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pacing(&self) -> RetryPacing {
        *self.pacing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether events wait.
    pub fn has_backlog(&self) -> bool {
        self.backlogged.load(Ordering::Acquire)
    }

    /// Sends `event`, or postpones it behind the ones already waiting.
    /// `Err` only when the event was dropped: the backlog is full or the
    /// queue is corrupted (counted in [`PostponedCounters::dropped`]).
    pub fn post(self: &Arc<Self>, event: &AppEvent) -> Result<(), ShmError> {
        if !self.has_backlog() {
            match self.queue.try_send(&event.encode()) {
                Ok(()) => return Ok(()),
                Err(ShmError::QueueFull) => {}
                Err(e) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        let mut backlog = self.lock();
        // The backlog may have drained since the check: an empty one means
        // the queue can be tried again first.
        if backlog.is_empty() && self.queue.try_send(&event.encode()).is_ok() {
            return Ok(());
        }
        match backlog.push(event.clone(), Instant::now()) {
            Postponed::Queued => {
                self.counters.postponed.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .waiting
                    .store(backlog.len() as u64, Ordering::Relaxed);
                if !self.backlogged.swap(true, Ordering::AcqRel) {
                    drop(backlog);
                    self.backlogs.add(self.clone());
                }
                Ok(())
            }
            Postponed::Overflow => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Err(ShmError::QueueFull)
            }
        }
    }

    /// Sends what waits, in order, as far as the queue has room; returns
    /// the events sent.
    /// Not before its retry is due; a drained backlog starts over at the
    /// first delay next time.
    fn drain_backlog(&self, now: Instant) -> u64 {
        let mut pacing = self.pacing.lock().unwrap_or_else(|p| p.into_inner());
        if pacing.at.is_some_and(|at| now < at) {
            return 0;
        }
        let mut backlog = self.lock();
        let (sent, longest) = backlog.drain(now, |e| self.queue.try_send(&e.encode()).is_ok());
        self.counters
            .waiting
            .store(backlog.len() as u64, Ordering::Relaxed);
        self.counters
            .max_wait_ns
            .fetch_max(longest.as_nanos() as u64, Ordering::Relaxed);
        self.backlogged
            .store(!backlog.is_empty(), Ordering::Release);
        if backlog.is_empty() {
            *pacing = RetryPacing::default();
        } else {
            pacing.after(now, sent);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoststack_app_proto::handle::SessionHandle;

    fn rx(i: u32) -> AppEvent {
        AppEvent::Rx {
            session: SessionHandle::new(0, i),
        }
    }

    #[test]
    fn postponed_events_leave_in_order_as_room_appears() {
        let mut p = PostponedEvents::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(p.push(rx(i), t0), Postponed::Queued);
        }
        let mut out = Vec::new();
        let mut room = 2;
        let (sent, _) = p.drain(t0, |e| {
            if room == 0 {
                return false;
            }
            room -= 1;
            out.push(e.clone());
            true
        });
        assert_eq!((sent, out.clone()), (2, vec![rx(0), rx(1)]));
        assert_eq!(p.len(), 3);
        let (sent, _) = p.drain(t0 + Duration::from_millis(3), |e| {
            out.push(e.clone());
            true
        });
        assert_eq!(sent, 3);
        assert_eq!(&out[..5], &[rx(0), rx(1), rx(2), rx(3), rx(4)]);
        assert!(
            matches!(out[5], AppEvent::Backlog { postponed: 5, max_wait_us } if max_wait_us >= 3000),
            "{:?}",
            out[5]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn the_notice_waits_too_when_the_queue_is_full_again() {
        let mut p = PostponedEvents::default();
        let t0 = Instant::now();
        p.push(rx(1), t0);
        let mut first = true;
        p.drain(t0, |_| std::mem::take(&mut first));
        assert_eq!(p.len(), 1, "the notice is still waiting");
        let mut got = Vec::new();
        p.drain(t0, |e| {
            got.push(e.clone());
            true
        });
        assert!(matches!(got[..], [AppEvent::Backlog { postponed: 1, .. }]));
        assert!(p.is_empty(), "a notice is not itself announced");
    }

    #[test]
    fn a_full_backlog_overflows_instead_of_growing_without_bound() {
        let mut p = PostponedEvents::default();
        let t0 = Instant::now();
        for i in 0..MAX_POSTPONED as u32 {
            assert_eq!(p.push(rx(i), t0), Postponed::Queued);
        }
        assert_eq!(p.push(rx(0), t0), Postponed::Overflow);
        assert_eq!(p.len(), MAX_POSTPONED);
    }

    #[test]
    fn a_full_queue_postpones_and_a_retry_delivers_in_order() {
        let seg = hoststack_shm::segment::Segment::create("hs-postpone-test", 1 << 20).unwrap();
        let mq = MessageQueue::init_at(seg.region(), 0, 4, 96, None).unwrap();
        let reader = MessageQueue::attach(seg.region(), 0, None).unwrap();
        let backlogs = Arc::new(Backlogs::default());
        let q = AppEventQueue::new(mq, backlogs.clone());
        for i in 0..10 {
            q.post(&rx(i)).unwrap();
        }
        assert!(q.has_backlog() && backlogs.any());
        assert_eq!(q.counters().postponed.load(Ordering::Relaxed), 6);
        let (mut got, mut buf) = (Vec::new(), [0u8; 96]);
        let mut reader = reader;
        let mut now = Instant::now();
        for _ in 0..100 {
            while let Ok(Some(n)) = reader.try_recv(&mut buf) {
                got.push(AppEvent::decode(&buf[..n]).unwrap());
            }
            if got.len() >= 11 {
                break;
            }
            now += MAX_RETRY_DELAY;
            backlogs.retry(now);
        }
        let expected: Vec<AppEvent> = (0..10).map(rx).collect();
        assert_eq!(&got[..10], &expected[..]);
        assert!(matches!(got[10], AppEvent::Backlog { postponed: 6, .. }));
        assert!(!q.has_backlog());
        backlogs.retry(now + MAX_RETRY_DELAY);
        assert!(!backlogs.any(), "a drained queue leaves the retry list");
    }

    #[test]
    fn a_queue_nobody_drains_is_retried_ever_less_often() {
        let seg = hoststack_shm::segment::Segment::create("hs-aeq-pace", 1 << 20).unwrap();
        let mq = MessageQueue::init_at(seg.region(), 0, 4, 96, None).unwrap();
        let backlogs = Arc::new(Backlogs::default());
        let q = AppEventQueue::new(mq, backlogs.clone());
        for i in 0..6 {
            q.post(&rx(i)).unwrap();
        }
        let mut at = backlogs.next_retry().unwrap();
        assert!(at <= Instant::now(), "the first retry is due at once");
        let mut gaps = Vec::new();
        for _ in 0..10 {
            backlogs.retry(at);
            let next = backlogs.next_retry().unwrap();
            gaps.push(next - at);
            // Not due yet: nothing is tried, nothing moves.
            backlogs.retry(next - Duration::from_micros(1));
            assert_eq!(backlogs.next_retry(), Some(next));
            at = next;
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            gaps,
            [
                ms(1),
                ms(2),
                ms(4),
                ms(8),
                ms(16),
                ms(32),
                ms(64),
                ms(64),
                ms(64),
                ms(64)
            ]
        );
        assert!(q.has_backlog() && backlogs.any());
    }
}
