//! Hierarchical timer wheel.
//!
//! Deadlines are kept in ticks of [`TICK_US`] microseconds on [`LEVELS`] levels of 64 slots
//! each; level `n` slots are `64^n` ticks wide. A timer lives in the lowest level whose slot
//! still separates it from the wheel's current tick, and moves down a level when its slot comes
//! due. Insert, cancel and firing are O(1); finding the next deadline is O(levels) thanks to a
//! per-level occupancy bitmap, so a clock that jumps hours ahead costs nothing per empty slot.
//!
//! Timers are nodes in one vector linked into their slot's doubly-linked list, so cancelling
//! never searches and freed nodes are reused: no allocation once the wheel has grown to its
//! working size. A deadline rounds up to the next tick and fires once the clock reaches it.

use smoltcp::time::Instant;

/// Width of one tick in microseconds.
pub(crate) const TICK_US: u64 = 1000;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels: with 1 ms ticks the top level reaches about 2 years.
pub(crate) const LEVELS: usize = 7;
const NIL: u32 = u32::MAX;
/// The farthest a deadline can be placed; later ones are parked at the edge and cascade.
const MAX_SPAN: u64 = (1u64 << (SLOT_BITS as usize * LEVELS)) - 1;

/// A scheduled timer; stale ids (fired or cancelled) are ignored by [`TimerWheel::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Node<T> {
    deadline: u64,
    prev: u32,
    next: u32,
    /// `level * 64 + slot`, or NIL while the node is free.
    bucket: u32,
    generation: u32,
    key: Option<T>,
}

/// The wheel; `T` is whatever the owner needs back when a timer fires.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    /// All slots before this tick have fired.
    elapsed: u64,
    heads: Vec<u32>,
    occupied: [u64; LEVELS],
    nodes: Vec<Node<T>>,
    free_head: u32,
    len: usize,
}

/// Converts a deadline to the first tick at or after it.
pub(crate) fn deadline_tick(at: Instant) -> u64 {
    let us = at.total_micros().max(0) as u64;
    us.div_ceil(TICK_US)
}

/// Converts the current time to the last tick that has fully begun.
pub(crate) fn now_tick(now: Instant) -> u64 {
    now.total_micros().max(0) as u64 / TICK_US
}

/// The instant a tick starts.
pub(crate) fn tick_instant(tick: u64) -> Instant {
    Instant::from_micros(tick.saturating_mul(TICK_US).min(i64::MAX as u64) as i64)
}

impl<T: Copy> TimerWheel<T> {
    /// An empty wheel whose clock starts at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            elapsed: now_tick(now),
            heads: vec![NIL; SLOTS * LEVELS],
            occupied: [0; LEVELS],
            nodes: Vec::new(),
            free_head: NIL,
            len: 0,
        }
    }

    /// Number of scheduled timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Schedules `key` to fire at `at`.
    pub(crate) fn insert(&mut self, at: Instant, key: T) -> TimerId {
        let index = if self.free_head != NIL {
            let index = self.free_head;
            self.free_head = self.nodes[index as usize].next;
            index
        } else {
            self.nodes.push(Node {
                deadline: 0,
                prev: NIL,
                next: NIL,
                bucket: NIL,
                generation: 0,
                key: None,
            });
            (self.nodes.len() - 1) as u32
        };
        let node = &mut self.nodes[index as usize];
        node.deadline = deadline_tick(at);
        node.key = Some(key);
        let generation = node.generation;
        self.link(index);
        self.len += 1;
        TimerId { index, generation }
    }

    /// Removes a timer; harmless for one that already fired or was cancelled.
    pub(crate) fn cancel(&mut self, id: TimerId) {
        let Some(node) = self.nodes.get(id.index as usize) else {
            return;
        };
        if node.generation != id.generation || node.bucket == NIL {
            return;
        }
        self.unlink(id.index);
        self.release(id.index);
    }

    /// Moves a live timer to a new deadline, or schedules a new one if `id` is stale.
    pub(crate) fn reschedule(&mut self, id: Option<TimerId>, at: Instant, key: T) -> TimerId {
        if let Some(id) = id {
            if let Some(node) = self.nodes.get(id.index as usize) {
                if node.generation == id.generation && node.bucket != NIL {
                    self.unlink(id.index);
                    self.nodes[id.index as usize].deadline = deadline_tick(at);
                    self.nodes[id.index as usize].key = Some(key);
                    self.link(id.index);
                    return id;
                }
            }
        }
        self.insert(at, key)
    }

    /// The earliest instant at which [`TimerWheel::advance`] may fire something. For timers on
    /// upper levels this is the start of their slot (when they cascade), so it can be early.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next_slot().map(|(_, _, start)| tick_instant(start))
    }

    /// Advances the clock to `now`, appending the keys of every timer due by then to `fired`.
    pub(crate) fn advance(&mut self, now: Instant, fired: &mut Vec<T>) {
        let now = now_tick(now);
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now {
                break;
            }
            self.elapsed = self.elapsed.max(start);
            let bucket = level * SLOTS + slot;
            let mut index = self.heads[bucket];
            self.heads[bucket] = NIL;
            self.occupied[level] &= !(1u64 << slot);
            while index != NIL {
                let next = self.nodes[index as usize].next;
                if self.nodes[index as usize].deadline <= now {
                    if let Some(key) = self.nodes[index as usize].key {
                        fired.push(key);
                    }
                    self.release(index);
                } else {
                    self.link(index);
                }
                index = next;
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let shift = SLOT_BITS as usize * level;
            let digit = ((self.elapsed >> shift) & (SLOTS as u64 - 1)) as u32;
            let bits = self.occupied[level] & (u64::MAX << digit);
            if bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                let block = shift + SLOT_BITS as usize;
                let base = if block >= 64 {
                    0
                } else {
                    self.elapsed & !((1u64 << block) - 1)
                };
                return Some((level, slot, base + ((slot as u64) << shift)));
            }
        }
        None
    }

    fn link(&mut self, index: u32) {
        let deadline = self.nodes[index as usize].deadline;
        let target = deadline
            .max(self.elapsed)
            .min(self.elapsed.saturating_add(MAX_SPAN));
        let masked = (self.elapsed ^ target) | (SLOTS as u64 - 1);
        let significant = 63 - masked.leading_zeros() as usize;
        let level = (significant / SLOT_BITS as usize).min(LEVELS - 1);
        let slot = ((target >> (SLOT_BITS as usize * level)) & (SLOTS as u64 - 1)) as usize;
        let bucket = level * SLOTS + slot;
        let head = self.heads[bucket];
        {
            let node = &mut self.nodes[index as usize];
            node.prev = NIL;
            node.next = head;
            node.bucket = bucket as u32;
        }
        if head != NIL {
            self.nodes[head as usize].prev = index;
        }
        self.heads[bucket] = index;
        self.occupied[level] |= 1u64 << slot;
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next, bucket) = {
            let node = &self.nodes[index as usize];
            (node.prev, node.next, node.bucket as usize)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.heads[bucket] = next;
            if next == NIL {
                self.occupied[bucket / SLOTS] &= !(1u64 << (bucket % SLOTS));
            }
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn release(&mut self, index: u32) {
        let node = &mut self.nodes[index as usize];
        node.bucket = NIL;
        node.key = None;
        node.generation = node.generation.wrapping_add(1);
        node.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::time::Duration;

    fn ms(v: i64) -> Instant {
        Instant::from_millis(v)
    }

    #[test]
    fn fires_in_deadline_order_across_levels() {
        let mut wheel = TimerWheel::new(ms(0));
        for (i, at) in [5i64, 70, 4_000, 300_000, 1, 63, 64].iter().enumerate() {
            wheel.insert(ms(*at), i);
        }
        let mut fired = Vec::new();
        let mut order = Vec::new();
        while let Some(next) = wheel.next_deadline() {
            wheel.advance(next, &mut fired);
            order.extend(fired.drain(..).map(|i| (i, next)));
        }
        let keys: Vec<usize> = order.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![4, 0, 5, 6, 1, 2, 3]);
        for (key, at) in order {
            let want = [5i64, 70, 4_000, 300_000, 1, 63, 64][key];
            assert!(at >= ms(want), "timer {key} fired at {at} before {want} ms");
        }
    }

    #[test]
    fn never_fires_early_and_fires_once_due() {
        let mut wheel = TimerWheel::new(ms(0));
        wheel.insert(Instant::from_micros(10_500), 'a');
        let mut fired = Vec::new();
        wheel.advance(Instant::from_micros(10_999), &mut fired);
        assert!(fired.is_empty());
        wheel.advance(ms(11), &mut fired);
        assert_eq!(fired, vec!['a']);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn cancel_and_reschedule() {
        let mut wheel = TimerWheel::new(ms(0));
        let a = wheel.insert(ms(10), 1);
        let b = wheel.insert(ms(10), 2);
        wheel.cancel(a);
        wheel.cancel(a);
        let b = wheel.reschedule(Some(b), ms(500), 2);
        let mut fired = Vec::new();
        wheel.advance(ms(100), &mut fired);
        assert!(fired.is_empty());
        wheel.advance(ms(500), &mut fired);
        assert_eq!(fired, vec![2]);
        // A stale id schedules afresh instead of touching a reused node.
        let c = wheel.insert(ms(600), 3);
        wheel.cancel(b);
        assert_eq!(wheel.len(), 1);
        wheel.cancel(c);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn a_big_jump_skips_empty_slots() {
        let mut wheel = TimerWheel::new(ms(0));
        wheel.insert(ms(2 * 3600 * 1000), 'k');
        wheel.insert(ms(3), 'x');
        let mut fired = Vec::new();
        wheel.advance(ms(10 * 3600 * 1000), &mut fired);
        assert_eq!(fired, vec!['x', 'k']);
        assert!(wheel.next_deadline().is_none());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut wheel = TimerWheel::new(ms(1000));
        wheel.insert(ms(10), 1);
        assert_eq!(wheel.next_deadline(), Some(ms(1000)));
        let mut fired = Vec::new();
        wheel.advance(ms(1000), &mut fired);
        assert_eq!(fired, vec![1]);
    }

    #[test]
    fn matches_a_sorted_model_under_random_use() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut wheel = TimerWheel::new(ms(0));
        let mut model: Vec<(u64, u32, TimerId)> = Vec::new();
        let mut now = ms(0);
        let mut fired = Vec::new();
        for round in 0..5_000u32 {
            match next() % 4 {
                0 | 1 => {
                    let delay = match next() % 3 {
                        0 => next() % 100,
                        1 => next() % 10_000,
                        _ => next() % 10_000_000,
                    };
                    let at = now + Duration::from_millis(delay);
                    let id = wheel.insert(at, round);
                    model.push((deadline_tick(at), round, id));
                }
                2 if !model.is_empty() => {
                    let victim = (next() % model.len() as u64) as usize;
                    let (_, _, id) = model.swap_remove(victim);
                    wheel.cancel(id);
                }
                _ => {
                    now += Duration::from_millis(next() % 5_000);
                    wheel.advance(now, &mut fired);
                    let due = now_tick(now);
                    let mut want: Vec<u32> =
                        model.iter().filter(|m| m.0 <= due).map(|m| m.1).collect();
                    model.retain(|m| m.0 > due);
                    want.sort_unstable();
                    fired.sort_unstable();
                    assert_eq!(fired, want);
                    fired.clear();
                }
            }
            assert_eq!(wheel.len(), model.len());
            if let Some(next_at) = wheel.next_deadline() {
                let earliest = model.iter().map(|m| m.0).min().unwrap();
                assert!(deadline_tick(next_at) <= earliest.max(now_tick(now)));
            }
        }
    }
}
