//! Multi-producer single-consumer queue of fixed-size messages in a
//! shared-memory segment, with an optional eventfd to wake the consumer.
//!
//! This module owns the queue's in-segment layout. Several stack threads
//! post events to one app worker's queue; several app threads post control
//! messages to one stack thread's queue.
//!
//! # Layout
//!
//! A 192-byte header at a 64-aligned offset, then `slots` slots:
//!
//! | bytes    | written by | fields |
//! |----------|------------|--------|
//! | 0..64    | consumer   | `head` (u64 position) |
//! | 64..128  | creator    | magic, slot count, slot size |
//! | 128..192 | producers (CAS) | `tail` (u64 position) |
//!
//! Each slot is `slot_stride(slot_size)` bytes, a multiple of 64 so no two
//! slots share a cache line: a `u64` sequence number, a `u32` payload
//! length, 4 reserved bytes, then `slot_size` payload bytes.
//!
//! # Algorithm (Vyukov's bounded queue)
//!
//! Positions are `u64` and only grow (2^64 messages never happen); position
//! `p` lives in slot `p % slots`, so no position read from shared memory can
//! address outside the ring. Slot `i` starts with sequence `i`. A producer
//! loads `tail = p`; if the slot's sequence is `p` the slot is free and it
//! claims it with a CAS `tail: p -> p + 1`, writes the payload, and
//! publishes with `sequence = p + 1` (Release). The consumer at `head = p`
//! reads when the sequence is `p + 1` (Acquire), then frees the slot for
//! the next lap with `sequence = p + slots` and stores `head = p + 1`. At
//! least two slots are required: with one, "published" and "free for the
//! next lap" would be the same sequence.
//!
//! # Wakeups
//!
//! A producer signals the eventfd only when its message is the one at the
//! consumer's head, i.e. on the queue's empty→non-empty edge, never once
//! per message. That is a store→load pattern on both sides (the producer
//! stores the sequence then loads head; the consumer stores head then loads
//! the sequence), which Acquire/Release cannot order; both sides put a
//! `fence(SeqCst)` between their store and their load. See
//! [`MessageQueue::try_send`] and [`MessageQueue::empty_before_sleep`].
//!
//! # Trust
//!
//! The peer may write anything into the header or the slots. Slot count and
//! slot size are read and validated once at [`MessageQueue::attach`] and
//! cached. The consumer keeps its head privately (read from the header
//! once, at attach) and only stores it there for producers, so a peer that
//! rewrites `head` or `tail` cannot make the consumer skip, repeat or wait
//! for messages; what the consumer looks at is the slot at its own head. A producer retries a bounded number of times and then reports
//! `QueueFull` or `Corrupted`; it never spins forever. The consumer reports
//! a sequence number that is neither "empty" nor "ready" as `Corrupted`,
//! and drops (and reports) a message whose length exceeds the slot size.
//! A peer can stall its own queue (claim a slot and never publish it), not
//! make this process hang or touch memory outside the queue.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use crate::error::{ShmError, ShmResult};
use crate::eventfd::EventFd;
use crate::segment::{SEGMENT_ALLOC_ALIGN, SharedRegion};

/// Size in bytes of a message queue header in shared memory.
pub const MESSAGE_QUEUE_HEADER_SIZE: usize = std::mem::size_of::<QueueHeader>();

/// Most slots a queue may have.
pub const MESSAGE_QUEUE_MAX_SLOTS: u32 = 1 << 20;

/// Largest payload a slot may hold.
pub const MESSAGE_QUEUE_MAX_SLOT_SIZE: u32 = 1 << 16;

/// Bytes before a slot's payload: sequence (8), length (4), reserved (4).
const SLOT_HEADER_SIZE: usize = std::mem::size_of::<SlotHeader>();

/// Written last by `init_at`; "HSMQ" in little endian.
const MESSAGE_QUEUE_MAGIC: u32 = u32::from_le_bytes(*b"HSMQ");

/// How many times a producer re-reads a moving tail before giving up with
/// `QueueFull`. Each retry means another producer made progress, so this
/// is only reached under extreme contention or a peer rewriting `tail`.
const MAX_SEND_ATTEMPTS: u32 = 1024;

#[repr(C, align(64))]
struct PositionLine {
    value: AtomicU64,
}

#[repr(C, align(64))]
struct ConfigLine {
    magic: AtomicU32,
    slot_count: AtomicU32,
    slot_size: AtomicU32,
    /// 1 while the consumer is (about to be) asleep on the eventfd:
    /// producers write the eventfd only then.
    sleeping: AtomicU32,
}

/// The in-segment queue header; all atomics, as the peer may write it.
#[repr(C, align(64))]
struct QueueHeader {
    head: PositionLine,
    config: ConfigLine,
    tail: PositionLine,
}

/// The start of every slot; the payload follows.
#[repr(C)]
struct SlotHeader {
    sequence: AtomicU64,
    len: AtomicU32,
    reserved: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<QueueHeader>() == 192);
const _: () = assert!(std::mem::align_of::<QueueHeader>() == SEGMENT_ALLOC_ALIGN);
const _: () = assert!(SLOT_HEADER_SIZE == 16);

/// Bytes one slot takes for a payload of `slot_size` bytes: the slot header
/// plus the payload, rounded up to a cache line.
pub fn slot_stride(slot_size: u32) -> usize {
    (SLOT_HEADER_SIZE + slot_size as usize).next_multiple_of(SEGMENT_ALLOC_ALIGN)
}

fn check_geometry(slots: u32, slot_size: u32) -> Result<(), String> {
    if !(2..=MESSAGE_QUEUE_MAX_SLOTS).contains(&slots) {
        return Err(format!(
            "message queue slots {slots} not in 2..={MESSAGE_QUEUE_MAX_SLOTS}"
        ));
    }
    if !(1..=MESSAGE_QUEUE_MAX_SLOT_SIZE).contains(&slot_size) {
        return Err(format!(
            "message queue slot size {slot_size} not in 1..={MESSAGE_QUEUE_MAX_SLOT_SIZE}"
        ));
    }
    Ok(())
}

/// What a consumer finds at its head ([`MessageQueue::head_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadState {
    /// A published message: `try_recv` returns it.
    Ready,
    /// Nothing posted.
    Empty,
    /// `tail` is past the head but the head slot (at this position) is not
    /// published: a producer is between claim and publish, or a peer moved
    /// `tail` (or claimed and never published).
    Unpublished(u64),
    /// A value no producer could have written.
    Corrupted(String),
}

/// A handle on a message queue in a segment: the mapping, the validated
/// geometry, and this side's eventfd (if any).
///
/// `try_send` takes `&self` and may be called from many threads and
/// processes at once (share the handle, or [`MessageQueue::try_clone`]
/// it). `try_recv` takes `&mut self`: there is one consumer per queue.
#[derive(Debug)]
pub struct MessageQueue {
    region: SharedRegion,
    header: NonNull<QueueHeader>,
    slots: NonNull<u8>,
    offset: usize,
    slot_count: u32,
    slot_size: u32,
    stride: usize,
    eventfd: Option<EventFd>,
    /// Eventfd writes this handle made (each one a system call).
    notifications: std::sync::atomic::AtomicU64,
    /// The consumer's head, kept here (private memory; an atomic only so
    /// `&self` checks can read it); the header's copy is for producers.
    head: AtomicU64,
}

// SAFETY: the pointers point into the mapping `region` keeps alive; the
// header and slot headers are atomics and payloads are only touched by
// raw copies, ordered by the slot sequence protocol.
unsafe impl Send for MessageQueue {}
// SAFETY: `&self` methods (`try_send`, queries) are the multi-producer
// side of the protocol and only do atomics and copies into slots they
// claimed with a CAS.
unsafe impl Sync for MessageQueue {}

impl MessageQueue {
    /// Bytes a queue of `slots` slots of `slot_size` payload bytes takes
    /// (what to ask the segment allocator for). `InvalidValue` for a
    /// geometry out of range.
    pub fn required_size(slots: u32, slot_size: u32) -> ShmResult<usize> {
        check_geometry(slots, slot_size).map_err(ShmError::InvalidValue)?;
        slot_stride(slot_size)
            .checked_mul(slots as usize)
            .and_then(|ring| ring.checked_add(MESSAGE_QUEUE_HEADER_SIZE))
            .ok_or_else(|| ShmError::InvalidValue("message queue too large".into()))
    }

    /// Formats an empty queue at `offset` (64-aligned) in `region`. The
    /// eventfd, if given, is signalled on the empty→non-empty edge; the
    /// other side gets its own copy of it (e.g. over SCM_RIGHTS).
    pub fn init_at(
        region: &SharedRegion,
        offset: usize,
        slots: u32,
        slot_size: u32,
        eventfd: Option<EventFd>,
    ) -> ShmResult<Self> {
        let queue =
            Self::from_parts(region, offset, slots, slot_size, eventfd).map_err(|e| match e {
                ShmError::Corrupted(msg) => ShmError::InvalidValue(msg),
                other => other,
            })?;
        let header = queue.header();
        queue.head.store(0, Ordering::Relaxed);
        header.head.value.store(0, Ordering::Relaxed);
        header.tail.value.store(0, Ordering::Relaxed);
        header.config.slot_count.store(slots, Ordering::Relaxed);
        header.config.slot_size.store(slot_size, Ordering::Relaxed);
        for index in 0..slots {
            let slot = queue.slot_header(u64::from(index));
            slot.sequence.store(u64::from(index), Ordering::Relaxed);
            slot.len.store(0, Ordering::Relaxed);
            slot.reserved.store(0, Ordering::Relaxed);
        }
        // Release: whoever sees the magic sees the initialised queue.
        header
            .config
            .magic
            .store(MESSAGE_QUEUE_MAGIC, Ordering::Release);
        Ok(queue)
    }

    /// Attaches to a queue formatted by someone else at `offset`.
    /// `Corrupted` if the magic or the geometry is wrong or the ring does
    /// not fit in the region.
    pub fn attach(
        region: &SharedRegion,
        offset: usize,
        eventfd: Option<EventFd>,
    ) -> ShmResult<Self> {
        let header_ptr =
            region.checked_ptr(offset, MESSAGE_QUEUE_HEADER_SIZE, SEGMENT_ALLOC_ALIGN)?;
        // SAFETY: in bounds and 64-aligned in the live mapping (checked
        // above); the header is all atomics.
        let header = unsafe { header_ptr.cast::<QueueHeader>().as_ref() };
        if header.config.magic.load(Ordering::Acquire) != MESSAGE_QUEUE_MAGIC {
            return Err(ShmError::Corrupted(format!(
                "no message queue at offset {offset}"
            )));
        }
        let slots = header.config.slot_count.load(Ordering::Relaxed);
        let slot_size = header.config.slot_size.load(Ordering::Relaxed);
        check_geometry(slots, slot_size).map_err(ShmError::Corrupted)?;
        let queue = Self::from_parts(region, offset, slots, slot_size, eventfd)?;
        // The one read of the shared head: where a consumer starts.
        queue.head.store(
            queue.header().head.value.load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        Ok(queue)
    }

    fn from_parts(
        region: &SharedRegion,
        offset: usize,
        slots: u32,
        slot_size: u32,
        eventfd: Option<EventFd>,
    ) -> ShmResult<Self> {
        let total = Self::required_size(slots, slot_size).map_err(|e| match e {
            ShmError::InvalidValue(msg) => ShmError::Corrupted(msg),
            other => other,
        })?;
        let base = region.checked_ptr(offset, total, SEGMENT_ALLOC_ALIGN)?;
        // SAFETY: `total` bytes from `base` are in the mapping (checked
        // above) and `total >= MESSAGE_QUEUE_HEADER_SIZE`.
        let slots_ptr = unsafe { base.add(MESSAGE_QUEUE_HEADER_SIZE) };
        Ok(Self {
            region: region.clone(),
            header: base.cast(),
            slots: slots_ptr,
            offset,
            slot_count: slots,
            slot_size,
            stride: slot_stride(slot_size),
            eventfd,
            notifications: std::sync::atomic::AtomicU64::new(0),
            head: AtomicU64::new(0),
        })
    }

    fn header(&self) -> &QueueHeader {
        // SAFETY: checked in `from_parts` (bounds, alignment); the mapping
        // lives as long as `self.region`; all fields are atomics.
        unsafe { self.header.as_ref() }
    }

    /// Pointer to the slot that holds position `position`.
    fn slot_ptr(&self, position: u64) -> NonNull<u8> {
        let index = (position % u64::from(self.slot_count)) as usize;
        // SAFETY: `index < slot_count`, and `from_parts` checked that
        // `slot_count * stride` bytes follow the header in the mapping.
        unsafe { self.slots.add(index * self.stride) }
    }

    fn slot_header(&self, position: u64) -> &SlotHeader {
        // SAFETY: `slot_ptr` is in bounds for `stride >= 16` bytes and
        // 64-aligned (header size and stride are multiples of 64); the slot
        // header is all atomics.
        unsafe { self.slot_ptr(position).cast::<SlotHeader>().as_ref() }
    }

    /// Posts one message (at most `slot_size()` bytes, else
    /// `InvalidValue`). `QueueFull` when no slot is free; `Corrupted` when
    /// the shared state cannot be a valid queue.
    ///
    /// After publishing, if this message is the one at the consumer's head
    /// (the queue was empty for the consumer), signals the eventfd. The
    /// `fence(SeqCst)` between publishing (store sequence) and loading
    /// `head` pairs with the fence in [`MessageQueue::empty_before_sleep`]
    /// (store head, fence, load sequence): the fences are totally ordered,
    /// so either the consumer's re-check sees this message, or this load
    /// sees the consumer's head at this message and signals. A consumer
    /// that sleeps with a message ready is impossible.
    pub fn try_send(&self, message: &[u8]) -> ShmResult<()> {
        if message.len() > self.slot_size as usize {
            return Err(ShmError::InvalidValue(format!(
                "message of {} bytes exceeds slot size {}",
                message.len(),
                self.slot_size
            )));
        }
        let tail = &self.header().tail.value;
        let mut position = tail.load(Ordering::Relaxed);
        for _ in 0..MAX_SEND_ATTEMPTS {
            let slot = self.slot_header(position);
            let sequence = slot.sequence.load(Ordering::Acquire);
            let lag = sequence.wrapping_sub(position) as i64;
            if lag == 0 {
                // Free slot: claim it.
                match tail.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.write_payload(position, message);
                        slot.len.store(message.len() as u32, Ordering::Relaxed);
                        // Release: the consumer's Acquire of the sequence
                        // sees payload and length.
                        slot.sequence
                            .store(position.wrapping_add(1), Ordering::Release);
                        return self.notify_if_first(position);
                    }
                    Err(current) => position = current,
                }
            } else if lag < 0 {
                // The slot still holds last lap's message (or is claimed
                // for it): the ring is full.
                return Err(ShmError::QueueFull);
            } else {
                // Another producer took this position; move to the current
                // tail. Its CAS happened before the sequence store we just
                // acquired, so a tail that has not moved means the sequence
                // was not written by a producer.
                let current = tail.load(Ordering::Relaxed);
                if current == position {
                    return Err(ShmError::Corrupted(format!(
                        "slot sequence {sequence} ahead of tail {position}"
                    )));
                }
                position = current;
            }
        }
        Err(ShmError::QueueFull)
    }

    fn write_payload(&self, position: u64, message: &[u8]) {
        // SAFETY: the payload area is `slot_size` bytes after the slot
        // header, inside the slot (stride >= 16 + slot_size);
        // `message.len() <= slot_size` was checked by `try_send`; we own
        // this slot until we publish its sequence.
        unsafe {
            let payload = self.slot_ptr(position).add(SLOT_HEADER_SIZE);
            std::ptr::copy_nonoverlapping(message.as_ptr(), payload.as_ptr(), message.len());
        }
    }

    fn notify_if_first(&self, position: u64) -> ShmResult<()> {
        let Some(eventfd) = &self.eventfd else {
            return Ok(());
        };
        // Store (sequence, above) -> fence -> load (sleeping, head): pairs
        // with the fence in `empty_before_sleep`. Only the message that
        // made the queue non-empty while the consumer sleeps signals: a
        // busy consumer costs producers no system call.
        fence(Ordering::SeqCst);
        let header = self.header();
        if header.config.sleeping.load(Ordering::Relaxed) != 0
            && header.head.value.load(Ordering::Relaxed) == position
        {
            eventfd.notify()?;
            self.notifications.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Eventfd writes (system calls) this handle made when sending: one per
    /// empty-to-non-empty edge it caused, none otherwise.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Takes the next message into `buf` (which must hold `slot_size()`
    /// bytes, else `InvalidValue`); returns its length, or `None` when no
    /// message is ready.
    ///
    /// `Corrupted` when the slot at the head has a sequence number no
    /// producer could have written (the queue is then unusable; the peer
    /// broke it), or when a message claims a length above the slot size
    /// (that message is dropped, the next call goes on).
    pub fn try_recv(&mut self, buf: &mut [u8]) -> ShmResult<Option<usize>> {
        if buf.len() < self.slot_size as usize {
            return Err(ShmError::InvalidValue(format!(
                "receive buffer of {} bytes is smaller than slot size {}",
                buf.len(),
                self.slot_size
            )));
        }
        let position = self.head.load(Ordering::Relaxed);
        let slot = self.slot_header(position);
        let sequence = slot.sequence.load(Ordering::Acquire);
        if sequence == position {
            return Ok(None);
        }
        if sequence != position.wrapping_add(1) {
            return Err(ShmError::Corrupted(format!(
                "slot sequence {sequence} at head {position}"
            )));
        }
        let len = slot.len.load(Ordering::Relaxed) as usize;
        let valid = len <= self.slot_size as usize;
        if valid {
            // SAFETY: `len <= slot_size`, so the source is inside the
            // slot's payload and the destination inside `buf`
            // (`buf.len() >= slot_size`); the Acquire above ordered the
            // producer's writes before this read.
            unsafe {
                let payload = self.slot_ptr(position).add(SLOT_HEADER_SIZE);
                std::ptr::copy_nonoverlapping(payload.as_ptr(), buf.as_mut_ptr(), len);
            }
        }
        // Free the slot for the producer one lap ahead, then move head.
        slot.sequence.store(
            position.wrapping_add(u64::from(self.slot_count)),
            Ordering::Release,
        );
        self.head.store(position.wrapping_add(1), Ordering::Relaxed);
        self.header()
            .head
            .value
            .store(position.wrapping_add(1), Ordering::Release);
        if !valid {
            return Err(ShmError::Corrupted(format!(
                "message length {len} exceeds slot size {}",
                self.slot_size
            )));
        }
        Ok(Some(len))
    }

    /// Consumer, before sleeping on the eventfd: announces the sleep and
    /// returns `true` if the queue is still empty and sleeping is safe,
    /// `false` if a message is ready (receive it instead; the announcement
    /// is withdrawn). After a sleep, call [`awake`](Self::awake).
    ///
    /// Our stores of `sleeping` and (in `try_recv`) `head` ->
    /// `fence(SeqCst)` -> load of the head slot's sequence. This pairs with
    /// the producer's publish -> fence -> loads of `sleeping` and `head` in
    /// [`MessageQueue::try_send`]: if this check misses a message, its
    /// producer's later loads see us sleeping with our head at that message
    /// and signal the eventfd, which then stays readable until drained, so
    /// the sleep returns at once.
    pub fn empty_before_sleep(&self) -> bool {
        self.header().config.sleeping.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let empty = !self.has_ready();
        if !empty {
            self.awake();
        }
        empty
    }

    /// Consumer: whether the slot at its head holds a published message,
    /// the one `try_recv` returns next (a snapshot). A slot claimed and
    /// never published, a `tail` the peer moved, or a corrupted sequence
    /// (which `try_recv` reports) is not ready, so nothing spins on it.
    pub fn has_ready(&self) -> bool {
        let position = self.head.load(Ordering::Relaxed);
        self.slot_header(position).sequence.load(Ordering::Acquire) == position.wrapping_add(1)
    }

    /// Consumer: whether the slot at its head holds something that is
    /// neither empty nor a published message (a peer broke the queue;
    /// `try_recv` would report `Corrupted`).
    pub fn head_corrupted(&self) -> bool {
        let position = self.head.load(Ordering::Relaxed);
        let sequence = self.slot_header(position).sequence.load(Ordering::Acquire);
        sequence != position && sequence != position.wrapping_add(1)
    }

    /// Consumer: what its head looks like, in one look (three loads):
    /// a published message, nothing, a slot a producer claimed (`tail`
    /// past the head) and has not published yet, or a value no producer
    /// could have written: a bad sequence in the head slot, or a `head`
    /// in the header other than the one this consumer stored there (only
    /// the consumer writes it).
    ///
    /// An honest producer publishes a claimed slot microseconds after its
    /// claim; one that stays [`HeadState::Unpublished`] at the same
    /// position for long is a peer that stalled the queue on purpose (or
    /// died mid-send).
    pub fn head_state(&self) -> HeadState {
        let config = &self.header().config;
        let (magic, slots, slot_size) = (
            config.magic.load(Ordering::Relaxed),
            config.slot_count.load(Ordering::Relaxed),
            config.slot_size.load(Ordering::Relaxed),
        );
        if magic != MESSAGE_QUEUE_MAGIC || slots != self.slot_count || slot_size != self.slot_size {
            return HeadState::Corrupted(format!(
                "header rewritten: magic {magic:#x} slots {slots} slot size {slot_size} (attached with {} and {})",
                self.slot_count, self.slot_size
            ));
        }
        let position = self.head.load(Ordering::Relaxed);
        let shared = self.header().head.value.load(Ordering::Relaxed);
        if shared != position {
            return HeadState::Corrupted(format!(
                "head rewritten to {shared} (the consumer's is {position})"
            ));
        }
        let sequence = self.slot_header(position).sequence.load(Ordering::Acquire);
        if sequence == position.wrapping_add(1) {
            return HeadState::Ready;
        }
        if sequence != position {
            return HeadState::Corrupted(format!("slot sequence {sequence} at head {position}"));
        }
        if self.header().tail.value.load(Ordering::Relaxed) != position {
            return HeadState::Unpublished(position);
        }
        HeadState::Empty
    }

    /// Consumer, after a sleep (or an announced sleep it did not take):
    /// producers stop writing the eventfd.
    pub fn awake(&self) {
        self.header().config.sleeping.store(0, Ordering::Relaxed);
    }

    /// Consumer: sleeps until a message may be ready or `timeout` passes.
    /// Returns `true` at once if a message is ready, otherwise whether the
    /// eventfd fired (it is drained). Spurious `true` is possible; a lost
    /// wakeup is not. `InvalidValue` if the queue has no eventfd.
    pub fn wait(&mut self, timeout: Option<Duration>) -> ShmResult<bool> {
        let Some(eventfd) = &self.eventfd else {
            return Err(ShmError::InvalidValue(
                "message queue has no eventfd to wait on".into(),
            ));
        };
        if !self.empty_before_sleep() {
            return Ok(true);
        }
        let woken = eventfd.wait(timeout);
        self.awake();
        let woken = woken?;
        if woken {
            eventfd.drain()?;
        }
        Ok(woken)
    }

    /// Messages posted and not yet received (claimed slots included), a
    /// snapshot clamped to `0..=capacity()`.
    pub fn len(&self) -> usize {
        let head = self.header().head.value.load(Ordering::Acquire);
        let tail = self.header().tail.value.load(Ordering::Acquire);
        let len = tail.wrapping_sub(head);
        if len > u64::from(self.slot_count) {
            // A head past the tail (or a wild tail) is not a valid state;
            // report the nearest bound rather than a huge number.
            if (len as i64) < 0 { 0 } else { self.capacity() }
        } else {
            len as usize
        }
    }

    /// Whether no message is posted (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slot_count as usize
    }

    /// Largest payload of one message.
    pub fn slot_size(&self) -> usize {
        self.slot_size as usize
    }

    /// Offset of the queue in its segment.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// This side's eventfd, if any (to add to a poll set).
    pub fn eventfd(&self) -> Option<&EventFd> {
        self.eventfd.as_ref()
    }

    /// Another handle on the same queue (a producer for another thread);
    /// the eventfd is duplicated.
    pub fn try_clone(&self) -> ShmResult<Self> {
        let eventfd = self.eventfd.as_ref().map(EventFd::try_clone).transpose()?;
        Ok(Self {
            region: self.region.clone(),
            header: self.header,
            slots: self.slots,
            offset: self.offset,
            slot_count: self.slot_count,
            slot_size: self.slot_size,
            stride: self.stride,
            eventfd,
            notifications: std::sync::atomic::AtomicU64::new(0),
            head: AtomicU64::new(self.head.load(Ordering::Relaxed)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Segment;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    fn queue(slots: u32, slot_size: u32, eventfd: Option<EventFd>) -> (Segment, MessageQueue) {
        let size = MessageQueue::required_size(slots, slot_size).unwrap() + 4096;
        let seg = Segment::create("hs-mq-test", size).unwrap();
        let mq = MessageQueue::init_at(seg.region(), 0, slots, slot_size, eventfd).unwrap();
        (seg, mq)
    }

    fn recv(mq: &mut MessageQueue) -> Option<Vec<u8>> {
        let mut buf = vec![0; mq.slot_size()];
        mq.try_recv(&mut buf).unwrap().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn a_peer_rewriting_head_and_tail_cannot_make_the_consumer_skip_or_repeat() {
        let (_seg, mut mq) = queue(8, 64, None);
        for m in [b"a", b"b", b"c"] {
            mq.try_send(m).unwrap();
        }
        assert_eq!(recv(&mut mq).unwrap(), b"a");
        mq.header().head.value.store(100, Ordering::Relaxed);
        mq.header().tail.value.store(5000, Ordering::Relaxed);
        assert!(mq.has_ready());
        assert_eq!(recv(&mut mq).unwrap(), b"b");
        assert_eq!(recv(&mut mq).unwrap(), b"c");
        assert_eq!(recv(&mut mq), None);
        assert!(!mq.has_ready());
        assert!(!mq.head_corrupted());
    }

    #[test]
    fn a_slot_claimed_and_never_published_is_not_ready_and_lets_the_consumer_sleep() {
        let (_seg, mut mq) = queue(8, 64, None);
        // A producer's claim without the publish: tail one past head.
        mq.header().tail.value.store(1, Ordering::Relaxed);
        assert!(!mq.is_empty(), "the claim shows in the snapshot");
        assert!(!mq.has_ready());
        assert!(mq.empty_before_sleep());
        mq.awake();
        assert_eq!(recv(&mut mq), None);
    }

    #[test]
    fn head_state_tells_ready_empty_unpublished_and_corrupted_apart() {
        let (_seg, mut mq) = queue(8, 64, None);
        assert_eq!(mq.head_state(), HeadState::Empty);
        mq.try_send(b"a").unwrap();
        assert_eq!(mq.head_state(), HeadState::Ready);
        assert_eq!(recv(&mut mq).unwrap(), b"a");
        assert_eq!(mq.head_state(), HeadState::Empty);
        // A claim without the publish, at position 1.
        mq.header().tail.value.store(2, Ordering::Relaxed);
        assert_eq!(mq.head_state(), HeadState::Unpublished(1));
        // A tail moved behind the head is no producer's either.
        mq.header().tail.value.store(0, Ordering::Relaxed);
        assert_eq!(mq.head_state(), HeadState::Unpublished(1));
        mq.header().tail.value.store(1, Ordering::Relaxed);
        assert_eq!(mq.head_state(), HeadState::Empty);
        // Only the consumer writes head.
        mq.header().head.value.store(5, Ordering::Relaxed);
        assert!(matches!(mq.head_state(), HeadState::Corrupted(_)));
        mq.header().head.value.store(1, Ordering::Relaxed);
        mq.slot_header(1).sequence.store(99, Ordering::Relaxed);
        assert!(matches!(mq.head_state(), HeadState::Corrupted(_)));
        mq.slot_header(1).sequence.store(1, Ordering::Relaxed);
        assert_eq!(mq.head_state(), HeadState::Empty);
        // The geometry and the magic are never rewritten after init.
        mq.header().config.slot_size.store(32, Ordering::Relaxed);
        assert!(matches!(mq.head_state(), HeadState::Corrupted(_)));
        mq.header().config.slot_size.store(64, Ordering::Relaxed);
        mq.header().config.magic.store(0, Ordering::Relaxed);
        assert!(matches!(mq.head_state(), HeadState::Corrupted(_)));
    }

    #[test]
    fn a_broken_sequence_at_the_head_is_reported_not_ready() {
        let (_seg, mut mq) = queue(8, 64, None);
        mq.slot_header(0).sequence.store(77, Ordering::Relaxed);
        assert!(!mq.has_ready());
        assert!(mq.head_corrupted());
        let mut buf = vec![0; 64];
        assert!(matches!(mq.try_recv(&mut buf), Err(ShmError::Corrupted(_))));
    }

    #[test]
    fn messages_come_out_in_order_with_their_lengths() {
        let (_seg, mut mq) = queue(8, 64, None);
        assert!(mq.is_empty());
        mq.try_send(b"one").unwrap();
        mq.try_send(b"").unwrap();
        mq.try_send(&[7; 64]).unwrap();
        assert_eq!(mq.len(), 3);
        assert_eq!(recv(&mut mq).unwrap(), b"one");
        assert_eq!(recv(&mut mq).unwrap(), b"");
        assert_eq!(recv(&mut mq).unwrap(), vec![7; 64]);
        assert_eq!(recv(&mut mq), None);
    }

    #[test]
    fn full_queue_gives_queue_full_and_recovers() {
        let (_seg, mut mq) = queue(4, 16, None);
        for round in 0..10u8 {
            for i in 0..4 {
                mq.try_send(&[round, i]).unwrap();
            }
            assert_eq!(mq.try_send(&[0]), Err(ShmError::QueueFull));
            assert_eq!(mq.len(), 4);
            for i in 0..4 {
                assert_eq!(recv(&mut mq).unwrap(), vec![round, i]);
            }
        }
    }

    #[test]
    fn geometry_out_of_range_is_invalid() {
        assert!(MessageQueue::required_size(1, 64).is_err());
        assert!(MessageQueue::required_size(2, 0).is_err());
        assert!(MessageQueue::required_size(MESSAGE_QUEUE_MAX_SLOTS + 1, 64).is_err());
        assert!(MessageQueue::required_size(2, MESSAGE_QUEUE_MAX_SLOT_SIZE + 1).is_err());
        assert_eq!(MessageQueue::required_size(4, 48).unwrap(), 192 + 4 * 64);
        assert_eq!(MessageQueue::required_size(4, 64).unwrap(), 192 + 4 * 128);
        let seg = Segment::create("hs-mq-small", 1024).unwrap();
        assert!(matches!(
            MessageQueue::init_at(seg.region(), 0, 64, 64, None),
            Err(ShmError::InvalidValue(_))
        ));
    }

    #[test]
    fn oversized_message_and_short_buffer_are_invalid() {
        let (_seg, mut mq) = queue(4, 16, None);
        assert!(matches!(
            mq.try_send(&[0; 17]),
            Err(ShmError::InvalidValue(_))
        ));
        mq.try_send(&[1]).unwrap();
        let mut small = [0; 15];
        assert!(matches!(
            mq.try_recv(&mut small),
            Err(ShmError::InvalidValue(_))
        ));
        assert_eq!(recv(&mut mq).unwrap(), vec![1], "nothing was consumed");
    }

    #[test]
    fn attach_through_another_mapping_shares_the_queue() {
        let (seg, mq) = queue(16, 256, None);
        let other = Segment::map(seg.try_clone_fd().unwrap(), seg.size()).unwrap();
        let mut attached = MessageQueue::attach(other.region(), 0, None).unwrap();
        assert_eq!(attached.capacity(), 16);
        assert_eq!(attached.slot_size(), 256);
        mq.try_send(b"control message").unwrap();
        assert_eq!(recv(&mut attached).unwrap(), b"control message");
        assert!(mq.is_empty());
    }

    #[test]
    fn eventfd_is_signalled_only_on_the_empty_to_non_empty_edge_of_a_sleeping_consumer() {
        let efd = EventFd::new().unwrap();
        let watcher = efd.try_clone().unwrap();
        let (_seg, mut mq) = queue(8, 64, Some(efd));
        // An awake (polling) consumer costs producers no eventfd write.
        mq.try_send(b"a").unwrap();
        assert_eq!(
            watcher.drain().unwrap(),
            0,
            "signalled a consumer that never slept"
        );
        while recv(&mut mq).is_some() {}
        assert!(mq.empty_before_sleep());
        mq.try_send(b"a").unwrap();
        mq.try_send(b"b").unwrap();
        mq.try_send(b"c").unwrap();
        assert_eq!(watcher.drain().unwrap(), 1, "one signal for three messages");
        mq.awake();
        recv(&mut mq).unwrap();
        assert!(!mq.empty_before_sleep(), "messages are waiting");
        mq.try_send(b"d").unwrap();
        assert_eq!(
            watcher.drain().unwrap(),
            0,
            "queue was not empty and the consumer is awake"
        );
        while recv(&mut mq).is_some() {}
        assert!(mq.empty_before_sleep());
        mq.try_send(b"e").unwrap();
        assert_eq!(watcher.drain().unwrap(), 1);
        assert_eq!(mq.notifications(), 2);
    }

    #[test]
    fn wait_returns_at_once_when_a_message_is_ready() {
        let (_seg, mut mq) = queue(4, 64, Some(EventFd::new().unwrap()));
        mq.try_send(b"x").unwrap();
        mq.eventfd().unwrap().drain().unwrap();
        assert!(mq.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(!mq.empty_before_sleep());
        recv(&mut mq).unwrap();
        assert!(mq.empty_before_sleep());
        assert!(!mq.wait(Some(Duration::from_millis(10))).unwrap());
        let (_seg2, mut no_efd) = queue(4, 64, None);
        assert!(matches!(no_efd.wait(None), Err(ShmError::InvalidValue(_))));
    }

    #[test]
    fn sleeping_consumer_receives_every_message_from_bursty_producers() {
        const PRODUCERS: u64 = 4;
        const PER_PRODUCER: u64 = 50_000;
        let (_seg, mut mq) = queue(64, 64, Some(EventFd::new().unwrap()));
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|id| {
                let producer = mq.try_clone().unwrap();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(id);
                    let mut next = 0u64;
                    while next < PER_PRODUCER {
                        let burst = rng.random_range(1..100);
                        for _ in 0..burst {
                            if next == PER_PRODUCER {
                                break;
                            }
                            let mut msg = [0u8; 16];
                            msg[..8].copy_from_slice(&id.to_le_bytes());
                            msg[8..].copy_from_slice(&next.to_le_bytes());
                            loop {
                                match producer.try_send(&msg) {
                                    Ok(()) => break,
                                    Err(ShmError::QueueFull) => std::thread::yield_now(),
                                    Err(e) => panic!("send failed: {e}"),
                                }
                                if stop.load(Ordering::Relaxed) {
                                    return;
                                }
                            }
                            next += 1;
                        }
                        // Random gaps, often long enough for the consumer
                        // to find the queue empty and go to sleep.
                        let gap = rng.random_range(0..300);
                        std::thread::sleep(Duration::from_micros(gap));
                    }
                })
            })
            .collect();
        let mut expected_next = [0u64; PRODUCERS as usize];
        let mut received = 0u64;
        let mut sleeps = 0u64;
        let mut buf = [0u8; 64];
        while received < PRODUCERS * PER_PRODUCER {
            while let Some(n) = mq.try_recv(&mut buf).unwrap() {
                assert_eq!(n, 16);
                let id = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
                let seq = u64::from_le_bytes(buf[8..16].try_into().unwrap());
                assert_eq!(seq, expected_next[id], "per-producer order");
                expected_next[id] += 1;
                received += 1;
            }
            if received == PRODUCERS * PER_PRODUCER {
                break;
            }
            // The queue looked empty: sleep. A lost wakeup shows up as this
            // wait timing out while a message is ready.
            sleeps += 1;
            // Producers never pause for more than a fraction of a
            // millisecond and only stop on a full queue, so a wait that
            // times out while messages are still due is a lost wakeup.
            let woken = mq.wait(Some(Duration::from_secs(2))).unwrap();
            if !woken {
                stop.store(true, Ordering::Relaxed);
                panic!("lost wakeup: slept 2 s with {received} messages received");
            }
            if start.elapsed() > Duration::from_secs(30) {
                stop.store(true, Ordering::Relaxed);
                panic!("stalled after {received} messages");
            }
        }
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(received, PRODUCERS * PER_PRODUCER);
        assert_eq!(expected_next, [PER_PRODUCER; PRODUCERS as usize]);
        assert!(
            sleeps > 0,
            "the consumer never slept; the test proved nothing"
        );
        assert!(mq.is_empty());
    }

    fn hostile_header(mq: &MessageQueue) -> &QueueHeader {
        mq.header()
    }

    #[test]
    fn corrupted_sequence_makes_producers_fail_fast_not_spin() {
        let (_seg, mq) = queue(8, 64, None);
        // Every slot claims to be far ahead of the tail.
        for p in 0..8 {
            mq.slot_header(p)
                .sequence
                .store(p + 1000, Ordering::Relaxed);
        }
        let start = Instant::now();
        assert!(matches!(mq.try_send(b"x"), Err(ShmError::Corrupted(_))));
        // Every slot claims to be behind: looks full.
        for p in 0..8 {
            mq.slot_header(p)
                .sequence
                .store(p.wrapping_sub(1000), Ordering::Relaxed);
        }
        assert_eq!(mq.try_send(b"x"), Err(ShmError::QueueFull));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn corrupted_sequence_at_head_is_reported_to_the_consumer() {
        let (_seg, mut mq) = queue(8, 64, None);
        mq.slot_header(0).sequence.store(77, Ordering::Relaxed);
        let mut buf = [0; 64];
        assert!(matches!(mq.try_recv(&mut buf), Err(ShmError::Corrupted(_))));
    }

    #[test]
    fn oversized_length_drops_that_message_and_keeps_the_next() {
        let (_seg, mut mq) = queue(8, 64, None);
        mq.try_send(b"first").unwrap();
        mq.try_send(b"second").unwrap();
        mq.slot_header(0).len.store(100_000, Ordering::Relaxed);
        let mut buf = [0; 64];
        assert!(matches!(mq.try_recv(&mut buf), Err(ShmError::Corrupted(_))));
        assert_eq!(recv(&mut mq).unwrap(), b"second");
    }

    #[test]
    fn corrupted_geometry_makes_attach_fail() {
        let (seg, mq) = queue(8, 64, None);
        let h = hostile_header(&mq);
        h.config.slot_count.store(1 << 24, Ordering::Relaxed);
        assert!(matches!(
            MessageQueue::attach(seg.region(), 0, None),
            Err(ShmError::Corrupted(_))
        ));
        h.config.slot_count.store(1000, Ordering::Relaxed); // valid but does not fit
        assert!(matches!(
            MessageQueue::attach(seg.region(), 0, None),
            Err(ShmError::Corrupted(_))
        ));
        h.config.slot_count.store(8, Ordering::Relaxed);
        h.config.magic.store(0, Ordering::Relaxed);
        assert!(matches!(
            MessageQueue::attach(seg.region(), 0, None),
            Err(ShmError::Corrupted(_))
        ));
        assert!(matches!(
            MessageQueue::attach(seg.region(), seg.size(), None),
            Err(ShmError::Corrupted(_))
        ));
    }

    #[test]
    fn random_hostile_state_never_hangs_or_escapes_the_queue() {
        let mut rng = StdRng::seed_from_u64(5);
        let slots = 8u32;
        let total = MessageQueue::required_size(slots, 32).unwrap();
        let seg = Segment::create("hs-mq-hostile", total + 8192).unwrap();
        let guard = seg.region().checked_ptr(0, seg.size(), 1).unwrap();
        // SAFETY: whole mapping, single-threaded.
        unsafe { std::ptr::write_bytes(guard.as_ptr(), 0xEE, seg.size()) };
        let mut mq = MessageQueue::init_at(seg.region(), 4096, slots, 32, None).unwrap();
        let header = mq.header;
        let slot0 = mq.slots;
        let stride = mq.stride;
        // SAFETY: the header pointer was validated by `init_at` and the
        // segment outlives this test body; all fields are atomics.
        let h = unsafe { header.as_ref() };
        let hostile_slot = |p: u64| -> &SlotHeader {
            let index = (p % u64::from(slots)) as usize;
            // SAFETY: index < slots, so the slot is inside the validated
            // ring; slot headers are atomics and 64-aligned.
            unsafe { slot0.add(index * stride).cast::<SlotHeader>().as_ref() }
        };
        let start = Instant::now();
        let mut buf = [0u8; 32];
        for _ in 0..20_000 {
            let near = |rng: &mut StdRng| -> u64 {
                if rng.random_bool(0.8) {
                    rng.random_range(0..40)
                } else {
                    rng.random()
                }
            };
            h.head.value.store(near(&mut rng), Ordering::Relaxed);
            h.tail.value.store(near(&mut rng), Ordering::Relaxed);
            let p = near(&mut rng);
            hostile_slot(p)
                .sequence
                .store(near(&mut rng), Ordering::Relaxed);
            hostile_slot(p)
                .len
                .store(rng.random_range(0..64), Ordering::Relaxed);
            let _ = mq.try_send(&buf[..rng.random_range(0..=32)]);
            if let Ok(Some(n)) = mq.try_recv(&mut buf) {
                assert!(n <= 32);
            }
            assert!(mq.len() <= mq.capacity());
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        for off in (0..4096).chain(4096 + total..seg.size()) {
            let p = seg.region().checked_ptr(off, 1, 1).unwrap();
            // SAFETY: in bounds, single-threaded.
            assert_eq!(unsafe { p.as_ptr().read() }, 0xEE, "guard byte {off}");
        }
    }
}
