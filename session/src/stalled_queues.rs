//! App rx queues whose head slot an app claimed and did not publish.
//!
//! A producer claims a slot (moves `tail`) and publishes it (stores its
//! sequence) microseconds apart. A head slot that stays claimed and
//! unpublished is an app that stalled its queue: by hand (a hostile app
//! moving `tail`), or stopped between the two stores. Nothing spins on such
//! a queue (it is not ready), but it must not stay attached for ever
//! either: once the same head position has been seen unpublished for
//! longer than the limit, that is a corruption verdict.
//!
//! Only queues seen in that state are kept here (seen when the thread
//! looks at its queues anyway: an eventfd that fired for nothing, the
//! check before a sleep), so the cost is per suspicious queue, never per
//! queue. The thread wakes for [`StalledQueues::next_deadline`] and then
//! asks [`StalledQueues::expired`] which suspects to look at again.
//!
//! Plain data: the caller reads the queues and the clock.

use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// How long a head slot may stay claimed and unpublished (an honest app
/// takes microseconds).
pub const UNPUBLISHED_LIMIT: Duration = Duration::from_millis(500);

/// The suspects of one thread, by queue id.
#[derive(Debug)]
pub struct StalledQueues {
    limit: Duration,
    /// Queue id -> (the head position seen unpublished, when first seen).
    suspects: HashMap<u32, (u64, Instant)>,
}

impl Default for StalledQueues {
    fn default() -> Self {
        Self::new(UNPUBLISHED_LIMIT)
    }
}

/// What one more look at a suspect says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallCheck {
    /// Not stalled (any more), or stalled for less than the limit.
    Fine,
    /// The same head position has been unpublished for longer than the
    /// limit: the verdict, with how long.
    Stalled(Duration),
}

impl StalledQueues {
    /// A watch with its own limit (tests use a short one).
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            suspects: HashMap::new(),
        }
    }

    /// Queue `id` was looked at `now`: `Some(position)` when its head slot
    /// at `position` is claimed and unpublished, `None` when it is not
    /// (ready, empty, or gone). A new position restarts the clock.
    pub fn observe(&mut self, id: u32, unpublished: Option<u64>, now: Instant) -> StallCheck {
        let Some(position) = unpublished else {
            self.suspects.remove(&id);
            return StallCheck::Fine;
        };
        let (seen, since) = self.suspects.entry(id).or_insert((position, now));
        if *seen != position {
            (*seen, *since) = (position, now);
        }
        let stalled = now.saturating_duration_since(*since);
        if stalled > self.limit {
            self.suspects.remove(&id);
            StallCheck::Stalled(stalled)
        } else {
            StallCheck::Fine
        }
    }

    /// Stops watching queue `id` (its app went).
    pub fn forget(&mut self, id: u32) {
        self.suspects.remove(&id);
    }

    /// Whether no queue is suspect.
    pub fn is_empty(&self) -> bool {
        self.suspects.is_empty()
    }

    /// When the earliest suspect's limit passes (the thread must be awake
    /// then to look again).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.suspects
            .values()
            .map(|&(_, since)| since + self.limit + Duration::from_millis(1))
            .min()
    }

    /// The suspects whose limit has passed at `now`, to look at again with
    /// [`StalledQueues::observe`].
    pub fn expired(&self, now: Instant) -> Vec<u32> {
        self.suspects
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) > self.limit)
            .map(|(&id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_same_position_unpublished_past_the_limit_is_a_verdict() {
        let mut w = StalledQueues::new(100 * MS);
        let t0 = Instant::now();
        assert_eq!(w.observe(7, Some(3), t0), StallCheck::Fine);
        assert_eq!(w.next_deadline(), Some(t0 + 101 * MS));
        assert!(w.expired(t0 + 50 * MS).is_empty());
        assert_eq!(w.observe(7, Some(3), t0 + 50 * MS), StallCheck::Fine);
        assert_eq!(w.expired(t0 + 101 * MS), vec![7]);
        assert_eq!(
            w.observe(7, Some(3), t0 + 101 * MS),
            StallCheck::Stalled(101 * MS)
        );
        assert!(w.is_empty(), "reported once");
    }

    #[test]
    fn a_head_that_moves_or_clears_is_not_a_stall() {
        let mut w = StalledQueues::new(100 * MS);
        let t0 = Instant::now();
        w.observe(1, Some(3), t0);
        // Published and consumed, the next claim caught mid-way: a new
        // position restarts the clock.
        assert_eq!(w.observe(1, Some(4), t0 + 90 * MS), StallCheck::Fine);
        assert_eq!(w.observe(1, Some(4), t0 + 150 * MS), StallCheck::Fine);
        assert_eq!(w.observe(1, None, t0 + 150 * MS), StallCheck::Fine);
        assert!(w.is_empty());
        w.observe(2, Some(0), t0);
        w.forget(2);
        assert_eq!(w.next_deadline(), None);
    }
}
