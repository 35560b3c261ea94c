//! The rings between the workers of one interface: how a packet that
//! arrived on one queue reaches the worker that owns its flow.
//!
//! Every ordered pair of workers (from, to) has one slot: a batch of
//! packets behind a lock. A producer gathers a burst's hand-offs in batches
//! of its own ([`Outbox`]) and publishes each with one lock (swapping the
//! batch in when the slot is empty, so the bytes are copied once); the
//! consumer takes a whole slot with one lock each loop, and only when its
//! inbox counter says something waits. A slot holds at most [`SLOT_PACKETS`]
//! packets and [`SLOT_BYTES`] bytes: what does not fit is dropped and
//! counted (TCP retransmits it), never silently.
//!
//! A sleeping consumer (interrupt mode) is woken by the producer that
//! fills its inbox: the consumer announces its sleep, then checks the
//! inbox; the producer adds to the inbox, then checks the announcement
//! (both sequentially consistent), so no hand-off waits for a timer.
//!
//! Nothing here knows which driver moved the packets: the TAP driver's
//! queues hand off the same way AF_XDP's do.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Packets a slot holds at most.
pub const SLOT_PACKETS: usize = 4096;
/// Bytes a slot holds at most.
pub const SLOT_BYTES: usize = 8 << 20;

/// What a handed-off packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// A TCP segment (header and payload) for the owner's TCP engine.
    Tcp {
        /// IP source.
        src: IpAddr,
        /// IP destination.
        dst: IpAddr,
    },
    /// A whole Ethernet frame for the owner's smoltcp interface.
    Frame,
}

/// One packet in a batch.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    /// What it is.
    pub packet: Packet,
    /// Workers it has passed through before this one.
    pub hops: u8,
    start: u32,
    len: u32,
}

/// Packets and their bytes, one after the other.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

impl Batch {
    /// Packets held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, packet: Packet, hops: u8, bytes: &[u8]) {
        self.items.push(Item {
            packet,
            hops,
            start: self.bytes.len() as u32,
            len: bytes.len() as u32,
        });
        self.bytes.extend_from_slice(bytes);
    }

    /// Each packet with its bytes, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Item, &[u8])> {
        self.items.iter().map(|i| {
            let (s, l) = (i.start as usize, i.len as usize);
            (i, &self.bytes[s..s + l])
        })
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    /// Moves as much of `other` as fits the slot bounds to the end of
    /// this batch; returns how many packets did not fit.
    fn append_bounded(&mut self, other: &mut Batch) -> usize {
        let mut dropped = 0;
        for (item, bytes) in other.iter() {
            if self.items.len() >= SLOT_PACKETS || self.bytes.len() + bytes.len() > SLOT_BYTES {
                dropped += 1;
                continue;
            }
            self.push(item.packet, item.hops, bytes);
        }
        other.clear();
        dropped
    }
}

/// Counters of one worker's hand-offs.
#[derive(Debug, Default)]
pub struct HandOffCounters {
    /// Packets this worker handed to another.
    pub sent: AtomicU64,
    /// Packets another worker handed to this one.
    pub received: AtomicU64,
    /// Packets for this worker dropped because its slot was full.
    pub dropped: AtomicU64,
    /// Times a producer woke this worker from its sleep.
    pub wakeups: AtomicU64,
}

struct Inbox {
    waiting: AtomicUsize,
    asleep: AtomicBool,
    wake: Arc<dyn Fn() + Send + Sync>,
    counters: Arc<HandOffCounters>,
}

/// How the rings reach one worker.
pub struct HandOffPort {
    /// Wakes the worker from its sleep.
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// Its counters.
    pub counters: Arc<HandOffCounters>,
}

/// The rings of one interface's `n` workers.
pub struct HandOff {
    n: usize,
    slots: Box<[Mutex<Batch>]>,
    inboxes: Box<[Inbox]>,
}

impl std::fmt::Debug for HandOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOff").field("workers", &self.n).finish()
    }
}

impl HandOff {
    /// Rings between workers `0..ports.len()`.
    pub fn new(ports: Vec<HandOffPort>) -> Self {
        let n = ports.len();
        Self {
            n,
            slots: (0..n * n).map(|_| Mutex::default()).collect(),
            inboxes: ports
                .into_iter()
                .map(|p| Inbox {
                    waiting: AtomicUsize::new(0),
                    asleep: AtomicBool::new(false),
                    wake: p.wake,
                    counters: p.counters,
                })
                .collect(),
        }
    }

    /// Workers.
    pub fn workers(&self) -> usize {
        self.n
    }

    /// Worker `w`'s counters.
    pub fn counters(&self, w: usize) -> &HandOffCounters {
        &self.inboxes[w].counters
    }

    fn slot(&self, from: usize, to: usize) -> std::sync::MutexGuard<'_, Batch> {
        self.slots[from * self.n + to]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `batch` from worker `from` to worker `to` (leaving it
    /// empty) and wakes `to` if it sleeps.
    fn publish(&self, from: usize, to: usize, batch: &mut Batch) {
        if batch.is_empty() || to >= self.n {
            batch.clear();
            return;
        }
        let n = batch.len();
        let dropped = {
            let mut slot = self.slot(from, to);
            if slot.is_empty() {
                std::mem::swap(&mut *slot, batch);
                batch.clear();
                0
            } else {
                slot.append_bounded(batch)
            }
        };
        let inbox = &self.inboxes[to];
        if dropped > 0 {
            inbox
                .counters
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        self.inboxes[from]
            .counters
            .sent
            .fetch_add((n - dropped) as u64, Ordering::Relaxed);
        if n > dropped {
            inbox.waiting.fetch_add(n - dropped, Ordering::SeqCst);
            if inbox.asleep.load(Ordering::SeqCst) {
                inbox.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                (inbox.wake)();
            }
        }
    }

    /// Whether anything waits for worker `me`.
    pub fn has_waiting(&self, me: usize) -> bool {
        self.inboxes[me].waiting.load(Ordering::SeqCst) > 0
    }

    /// Hands every packet waiting for worker `me` to `each`, slot by slot;
    /// `scratch` is the batch the slots are swapped into (kept for reuse).
    /// Returns how many packets there were.
    pub fn drain(
        &self,
        me: usize,
        scratch: &mut Batch,
        mut each: impl FnMut(&Item, &[u8]),
    ) -> usize {
        let inbox = &self.inboxes[me];
        if inbox.waiting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        let mut total = 0;
        for from in (0..self.n).filter(|&f| f != me) {
            scratch.clear();
            {
                let mut slot = self.slot(from, me);
                if slot.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *slot, scratch);
            }
            for (item, bytes) in scratch.iter() {
                each(item, bytes);
            }
            total += scratch.len();
            inbox.waiting.fetch_sub(scratch.len(), Ordering::SeqCst);
        }
        scratch.clear();
        inbox
            .counters
            .received
            .fetch_add(total as u64, Ordering::Relaxed);
        total
    }

    /// Worker `me` is about to sleep: true when it may (nothing waits),
    /// after which a producer wakes it. Call [`awake`](Self::awake) after
    /// the sleep either way.
    pub fn prepare_sleep(&self, me: usize) -> bool {
        let inbox = &self.inboxes[me];
        inbox.asleep.store(true, Ordering::SeqCst);
        if inbox.waiting.load(Ordering::SeqCst) > 0 {
            inbox.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Worker `me` is awake again.
    pub fn awake(&self, me: usize) {
        self.inboxes[me].asleep.store(false, Ordering::SeqCst);
    }
}

/// One worker's outgoing hand-offs of the current burst, by destination.
#[derive(Debug)]
pub struct Outbox {
    me: usize,
    batches: Vec<Batch>,
    pending: bool,
}

impl Outbox {
    /// The outbox of worker `me` among `n`.
    pub fn new(me: usize, n: usize) -> Self {
        Self {
            me,
            batches: (0..n).map(|_| Batch::default()).collect(),
            pending: false,
        }
    }

    /// Queues `bytes` for worker `to`.
    pub fn push(&mut self, to: usize, packet: Packet, hops: u8, bytes: &[u8]) {
        if let Some(b) = self.batches.get_mut(to) {
            b.push(packet, hops, bytes);
            self.pending = true;
        }
    }

    /// Publishes everything queued.
    pub fn flush(&mut self, rings: &HandOff) {
        if !self.pending {
            return;
        }
        for (to, b) in self.batches.iter_mut().enumerate() {
            if !b.is_empty() {
                rings.publish(self.me, to, b);
            }
        }
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rings(n: usize) -> (HandOff, Arc<AtomicUsize>) {
        let woken = Arc::new(AtomicUsize::new(0));
        let ports = (0..n)
            .map(|_| {
                let w = woken.clone();
                HandOffPort {
                    wake: Arc::new(move || {
                        w.fetch_add(1, Ordering::SeqCst);
                    }),
                    counters: Arc::default(),
                }
            })
            .collect();
        (HandOff::new(ports), woken)
    }

    fn tcp() -> Packet {
        Packet::Tcp {
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn packets_arrive_in_order_with_their_bytes_and_are_counted() {
        let (r, _) = rings(3);
        let mut out0 = Outbox::new(0, 3);
        let mut out2 = Outbox::new(2, 3);
        out0.push(1, tcp(), 0, b"one");
        out0.push(1, Packet::Frame, 0, b"two");
        out2.push(1, tcp(), 1, b"three");
        out0.flush(&r);
        out0.push(1, tcp(), 0, b"four");
        out0.flush(&r);
        out2.flush(&r);
        assert!(r.has_waiting(1) && !r.has_waiting(0));
        let mut got = Vec::new();
        let mut scratch = Batch::default();
        let n = r.drain(1, &mut scratch, |i, b| {
            got.push((i.packet, i.hops, b.to_vec()))
        });
        assert_eq!(n, 4);
        assert_eq!(
            got,
            vec![
                (tcp(), 0, b"one".to_vec()),
                (Packet::Frame, 0, b"two".to_vec()),
                (tcp(), 0, b"four".to_vec()),
                (tcp(), 1, b"three".to_vec()),
            ]
        );
        assert!(!r.has_waiting(1));
        assert_eq!(r.counters(0).sent.load(Ordering::Relaxed), 3);
        assert_eq!(r.counters(2).sent.load(Ordering::Relaxed), 1);
        assert_eq!(r.counters(1).received.load(Ordering::Relaxed), 4);
        assert_eq!(r.drain(1, &mut scratch, |_, _| {}), 0);
    }

    #[test]
    fn a_full_slot_drops_and_counts_what_does_not_fit() {
        let (r, _) = rings(2);
        let mut out = Outbox::new(0, 2);
        for _ in 0..SLOT_PACKETS {
            out.push(1, Packet::Frame, 0, &[0; 8]);
        }
        out.flush(&r);
        for _ in 0..10 {
            out.push(1, Packet::Frame, 0, &[0; 8]);
        }
        out.flush(&r);
        assert_eq!(r.counters(1).dropped.load(Ordering::Relaxed), 10);
        let mut scratch = Batch::default();
        assert_eq!(r.drain(1, &mut scratch, |_, _| {}), SLOT_PACKETS);
    }

    #[test]
    fn a_sleeping_consumer_is_woken_and_an_awake_one_is_not() {
        let (r, woken) = rings(2);
        let mut out = Outbox::new(0, 2);
        out.push(1, Packet::Frame, 0, b"x");
        out.flush(&r);
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        // Something waits: the consumer may not sleep.
        assert!(!r.prepare_sleep(1));
        let mut scratch = Batch::default();
        r.drain(1, &mut scratch, |_, _| {});
        assert!(r.prepare_sleep(1));
        out.push(1, Packet::Frame, 0, b"y");
        out.flush(&r);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        r.awake(1);
        out.push(1, Packet::Frame, 0, b"z");
        out.flush(&r);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_producers_lose_nothing() {
        let (r, _) = rings(3);
        let r = Arc::new(r);
        let producers: Vec<_> = [0usize, 2]
            .into_iter()
            .map(|me| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut out = Outbox::new(me, 3);
                    for i in 0..20_000u32 {
                        out.push(1, Packet::Frame, 0, &i.to_le_bytes());
                        if i % 16 == 0 {
                            out.flush(&r);
                            while r.has_waiting(1) && i % 1024 == 0 {
                                std::thread::yield_now();
                            }
                        }
                    }
                    out.flush(&r);
                })
            })
            .collect();
        let mut scratch = Batch::default();
        let mut got = 0;
        let mut dropped = 0;
        while got + dropped < 40_000 {
            got += r.drain(1, &mut scratch, |_, _| {});
            dropped = r.counters(1).dropped.load(Ordering::Relaxed) as usize;
            std::thread::yield_now();
        }
        for p in producers {
            p.join().unwrap();
        }
        got += r.drain(1, &mut scratch, |_, _| {});
        assert_eq!(got + dropped, 40_000);
        assert_eq!(got, 40_000, "the consumer kept up: nothing should drop");
    }
}
