//! The pending list of one stack thread in interrupt mode: which app rx
//! message queues have work, in the order they got it.
//!
//! When a queue's eventfd fires and the queue is not empty and not already
//! pending, it joins the tail. The thread drains the list in order, a
//! bounded batch per queue; a queue that still has messages after its batch
//! goes back to the tail marked *postponed* — its eventfd is not read again
//! next time (the signal it might carry was already consumed; what matters
//! is the queue's content) — so one chatty app cannot starve the others.
//! The thread stays awake while the list is non-empty. A queue whose app
//! detaches is removed first, wherever it is in the list.
//!
//! Plain data: the caller owns the queues and the eventfds, and tells this
//! list what it saw.

use std::collections::VecDeque;

use hashbrown::HashMap;

/// Identifies one app rx queue on this thread (the caller's choice, e.g.
/// the app index).
pub type RxQueueId = u32;

/// What the thread should do with the queue it took from the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTurn {
    /// The queue.
    pub queue: RxQueueId,
    /// It was put back after an unfinished batch: do not read its eventfd.
    pub postponed: bool,
}

/// The pending list.
#[derive(Debug, Default)]
pub struct PendingRxQueues {
    order: VecDeque<RxQueueId>,
    /// Queues in `order`, with their postponed flag.
    state: HashMap<RxQueueId, bool>,
}

impl PendingRxQueues {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing waits (the thread may sleep).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// True when `queue` is on the list.
    pub fn contains(&self, queue: RxQueueId) -> bool {
        self.state.contains_key(&queue)
    }

    /// A queue's eventfd fired; `non_empty` is what the queue looked like.
    /// Returns true when it joined the list (the thread must run).
    pub fn signal(&mut self, queue: RxQueueId, non_empty: bool) -> bool {
        if !non_empty || self.state.contains_key(&queue) {
            return false;
        }
        self.state.insert(queue, false);
        self.order.push_back(queue);
        true
    }

    /// Takes the head of the list for a batch.
    pub fn pop(&mut self) -> Option<PendingTurn> {
        let queue = self.order.pop_front()?;
        let postponed = self.state.remove(&queue).unwrap_or(false);
        Some(PendingTurn { queue, postponed })
    }

    /// Ends a queue's batch: still non-empty means back to the tail,
    /// postponed; empty means off the list.
    pub fn finish(&mut self, queue: RxQueueId, still_non_empty: bool) {
        if still_non_empty && !self.state.contains_key(&queue) {
            self.state.insert(queue, true);
            self.order.push_back(queue);
        }
    }

    /// Removes a queue (its app detached), wherever it is.
    pub fn remove(&mut self, queue: RxQueueId) -> bool {
        if self.state.remove(&queue).is_none() {
            return false;
        }
        self.order.retain(|&q| q != queue);
        true
    }

    /// The queues in the order they will be served.
    pub fn iter(&self) -> impl Iterator<Item = PendingTurn> + '_ {
        self.order.iter().map(|&q| PendingTurn {
            queue: q,
            postponed: self.state.get(&q).copied().unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_order(p: &mut PendingRxQueues) -> Vec<(u32, bool)> {
        let mut v = Vec::new();
        while let Some(t) = p.pop() {
            v.push((t.queue, t.postponed));
        }
        v
    }

    #[test]
    fn queues_are_served_in_the_order_they_were_signalled() {
        let mut p = PendingRxQueues::new();
        assert!(p.signal(3, true));
        assert!(p.signal(1, true));
        assert!(p.signal(2, true));
        assert_eq!(
            drain_order(&mut p),
            vec![(3, false), (1, false), (2, false)]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn an_empty_or_already_pending_queue_does_not_join_again() {
        let mut p = PendingRxQueues::new();
        assert!(!p.signal(1, false), "an empty queue joined");
        assert!(p.signal(1, true));
        assert!(!p.signal(1, true), "a pending queue joined twice");
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn an_unfinished_batch_goes_to_the_tail_postponed() {
        let mut p = PendingRxQueues::new();
        p.signal(1, true);
        p.signal(2, true);
        let t = p.pop().unwrap();
        assert_eq!(
            t,
            PendingTurn {
                queue: 1,
                postponed: false
            }
        );
        p.finish(1, true);
        // 2 goes first now; 1 is behind it and postponed.
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            vec![
                PendingTurn {
                    queue: 2,
                    postponed: false
                },
                PendingTurn {
                    queue: 1,
                    postponed: true
                }
            ]
        );
        // A signal for a postponed queue does not change its place or flag.
        assert!(!p.signal(1, true));
        let t = p.pop().unwrap();
        p.finish(t.queue, false);
        assert_eq!(
            p.pop(),
            Some(PendingTurn {
                queue: 1,
                postponed: true
            })
        );
        p.finish(1, false);
        assert!(p.is_empty());
    }

    #[test]
    fn a_finished_queue_can_be_signalled_again_and_is_not_postponed() {
        let mut p = PendingRxQueues::new();
        p.signal(7, true);
        let t = p.pop().unwrap();
        p.finish(t.queue, true);
        let t = p.pop().unwrap();
        assert!(t.postponed);
        p.finish(7, false);
        assert!(p.signal(7, true));
        assert_eq!(
            p.pop(),
            Some(PendingTurn {
                queue: 7,
                postponed: false
            })
        );
    }

    #[test]
    fn removing_a_pending_queue_takes_it_out_wherever_it_is() {
        let mut p = PendingRxQueues::new();
        for q in [1, 2, 3] {
            p.signal(q, true);
        }
        assert!(p.remove(2));
        assert!(!p.remove(2));
        assert_eq!(drain_order(&mut p), vec![(1, false), (3, false)]);
    }

    #[test]
    fn removing_the_head_serves_the_next_one() {
        let mut p = PendingRxQueues::new();
        p.signal(1, true);
        p.signal(2, true);
        assert!(p.remove(1));
        assert_eq!(
            p.pop(),
            Some(PendingTurn {
                queue: 2,
                postponed: false
            })
        );
    }

    #[test]
    fn a_single_queue_cycles_alone_until_empty() {
        let mut p = PendingRxQueues::new();
        p.signal(9, true);
        for round in 0..5 {
            let t = p.pop().unwrap();
            assert_eq!(t.postponed, round > 0);
            p.finish(9, round < 4);
        }
        assert!(p.is_empty());
    }

    #[test]
    fn a_queue_removed_during_its_batch_is_not_requeued_by_finish_after_remove() {
        let mut p = PendingRxQueues::new();
        p.signal(4, true);
        let t = p.pop().unwrap();
        // Its app detached while the batch ran: the caller removes it and
        // must not finish it; finish of an unknown queue with no content is
        // a no-op either way.
        assert!(!p.remove(t.queue));
        p.finish(4, false);
        assert!(p.is_empty());
    }
}
