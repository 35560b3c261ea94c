//! The sessions of one stack thread that have work: bytes arrived from the
//! transport, the app wrote into a tx fifo, a full rx fifo drained, a close
//! waits for its data to drain. A poll services only these, so its cost
//! follows what happened, not how many sessions exist.
//!
//! Plain data: a FIFO of session indices and a bit per index that keeps a
//! session in the FIFO at most once. A session freed while marked stays in
//! the FIFO and is skipped by the caller (its slot is empty, or a new
//! session there gets one harmless extra look).

use std::collections::VecDeque;

/// Sessions waiting to be serviced, in the order they were marked.
#[derive(Debug, Default)]
pub struct DirtySessions {
    queue: VecDeque<u32>,
    marked: Vec<u64>,
}

impl DirtySessions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks session `idx`; false when it was marked already.
    pub fn mark(&mut self, idx: u32) -> bool {
        let (word, bit) = (idx as usize / 64, 1u64 << (idx % 64));
        if word >= self.marked.len() {
            self.marked.resize(word + 1, 0);
        }
        if self.marked[word] & bit != 0 {
            return false;
        }
        self.marked[word] |= bit;
        self.queue.push_back(idx);
        true
    }

    /// The oldest marked session, unmarked (it may be marked again while
    /// it is serviced, and then comes round once more).
    pub fn pop(&mut self) -> Option<u32> {
        let idx = self.queue.pop_front()?;
        self.marked[idx as usize / 64] &= !(1u64 << (idx % 64));
        Some(idx)
    }

    /// Sessions marked now: a poll services this many, so work marked
    /// during the round waits for the next one and a session that stays
    /// busy cannot hold the thread.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no session is marked.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether `idx` is marked.
    pub fn is_marked(&self, idx: u32) -> bool {
        self.marked
            .get(idx as usize / 64)
            .is_some_and(|w| w & (1u64 << (idx % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_queued_once_however_often_it_is_marked() {
        let mut d = DirtySessions::new();
        assert!(d.mark(7));
        assert!(!d.mark(7));
        assert!(d.mark(700));
        assert_eq!(d.len(), 2);
        assert_eq!(d.pop(), Some(7));
        assert_eq!(d.pop(), Some(700));
        assert_eq!(d.pop(), None);
        assert!(d.is_empty());
    }

    #[test]
    fn sessions_come_out_in_marking_order_and_can_be_marked_again() {
        let mut d = DirtySessions::new();
        for i in [5, 3, 9, 0] {
            d.mark(i);
        }
        assert_eq!(d.pop(), Some(5));
        assert!(!d.is_marked(5));
        assert!(d.mark(5), "a popped session can be marked again");
        let order: Vec<u32> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(order, vec![3, 9, 0, 5]);
    }

    #[test]
    fn a_round_is_what_was_marked_before_it_started() {
        let mut d = DirtySessions::new();
        d.mark(1);
        d.mark(2);
        let round = d.len();
        let mut seen = Vec::new();
        for _ in 0..round {
            let i = d.pop().unwrap();
            seen.push(i);
            // Servicing marks more work (the session itself, a peer).
            d.mark(i);
            d.mark(10 + i);
        }
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(
            d.len(),
            4,
            "work marked during the round waits for the next"
        );
    }

    #[test]
    fn a_high_index_is_found_alone_after_a_hundred_thousand_marks() {
        let mut d = DirtySessions::new();
        for i in 0..100_000 {
            d.mark(i);
        }
        while d.pop().is_some() {}
        d.mark(99_999);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop(), Some(99_999));
    }
}
