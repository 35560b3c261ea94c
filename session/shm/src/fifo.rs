//! Single-producer single-consumer byte fifo in a shared-memory segment,
//! usable from two processes.
//!
//! This module owns the fifo's in-segment layout: a 192-byte `#[repr(C)]`
//! header at a 64-aligned offset, and a data area of `size` bytes (right
//! after the header, or anywhere else in the same segment).
//!
//! # Layout
//!
//! | bytes   | cache line | written by | fields |
//! |---------|------------|------------|--------|
//! | 0..64   | 0          | consumer   | `head` |
//! | 64..128 | 1          | both, rarely | magic, size, data offset, flags, high/low watermark |
//! | 128..192| 2          | producer   | `tail` |
//!
//! `head` and `tail` sit 128 bytes apart, so they never share a cache line
//! nor an adjacent-line prefetch pair (x86 pulls 128-byte pairs), whatever
//! the 64-byte alignment of the header.
//!
//! # Index scheme
//!
//! As in rtrb, `head` and `tail` run over `0..2 * size`: the fifo holds
//! `tail - head` bytes (modulo `2 * size`), so full (`size`) and empty (0)
//! differ without a wasted byte and `size` need not be a power of two. The
//! byte position of index `i` is `i` or `i - size`. Sizes are capped at
//! [`FIFO_MAX_SIZE`] so every index fits a `u32`.
//!
//! # Memory ordering
//!
//! The producer copies data in, then `tail.store(Release)`; the consumer
//! `tail.load(Acquire)` before copying out. Mirrored for `head`: the
//! consumer copies data out, then `head.store(Release)`; the producer
//! `head.load(Acquire)` before overwriting those bytes.
//!
//! # Trust
//!
//! The other side may be another process that writes anything anywhere in
//! the header. Size and data offset are read once, validated, and cached in
//! the handle ([`Fifo::attach`]); every later access uses the cached
//! values. `head` and `tail` are loaded and validated on every call: an
//! index out of `0..2 * size`, or a distance above `size`, gives
//! [`ShmError::Corrupted`] and nothing is read or written. A peer can
//! therefore garble the bytes of this fifo, never make this process touch
//! memory outside it, and never make a call hang (no call here waits).
//!
//! Payload moves only by copies between shared memory and this process's
//! buffers (`enqueue`, `dequeue`, `peek`). There are no `&[u8]` chunk views
//! into the data area: a peer may write those bytes at any time, and a Rust
//! shared slice must not change under its holder. In the stack's data path
//! the other end of every copy is a smoltcp socket buffer, so views would
//! not save a copy anyway.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::error::{ShmError, ShmResult};
use crate::segment::{SEGMENT_ALLOC_ALIGN, SharedRegion};

/// Size in bytes of a fifo header in shared memory.
pub const FIFO_HEADER_SIZE: usize = std::mem::size_of::<FifoHeader>();

/// Largest fifo data size, so that indices over `0..2 * size` fit a `u32`.
pub const FIFO_MAX_SIZE: u32 = 1 << 30;

/// Written last by [`Fifo::init_at`]; "HSFF" in little endian.
const FIFO_MAGIC: u32 = u32::from_le_bytes(*b"HSFF");

/// The producer wants to hear when the consumer makes room.
const FLAG_WANT_DEQUEUE_NOTIFICATION: u32 = 1 << 0;
/// An event about this fifo is queued for the consumer and not yet handled.
const FLAG_HAS_EVENT: u32 = 1 << 1;
/// Occupancy went above the high watermark and not yet below the low one.
const FLAG_ABOVE_HIGH_WATERMARK: u32 = 1 << 2;

/// A cache line holding one index.
#[repr(C, align(64))]
struct IndexLine {
    value: AtomicU32,
}

/// The cache line both sides touch only rarely.
#[repr(C, align(64))]
struct SharedLine {
    magic: AtomicU32,
    size: AtomicU32,
    /// Offset of the data area from the start of the segment.
    data_offset: AtomicU64,
    flags: AtomicU32,
    high_watermark: AtomicU32,
    low_watermark: AtomicU32,
}

/// The in-segment fifo header. Every field is an atomic: the memory is
/// shared with another process that may write it at any time.
#[repr(C, align(64))]
struct FifoHeader {
    head: IndexLine,
    shared: SharedLine,
    tail: IndexLine,
}

const _: () = assert!(std::mem::size_of::<FifoHeader>() == 192);
const _: () = assert!(std::mem::align_of::<FifoHeader>() == SEGMENT_ALLOC_ALIGN);

/// Bytes a fifo of `size` data bytes takes when its data follows its
/// header (what to ask the segment allocator for).
pub fn fifo_required_size(size: u32) -> usize {
    FIFO_HEADER_SIZE + size as usize
}

/// Number of bytes held between `head` and `tail`, or `None` if the pair is
/// not a valid state of a fifo of `size` bytes.
fn occupancy(size: u32, head: u32, tail: u32) -> Option<u32> {
    let wrap = 2 * size;
    if head >= wrap || tail >= wrap {
        return None;
    }
    let len = if tail >= head {
        tail - head
    } else {
        tail + wrap - head
    };
    (len <= size).then_some(len)
}

/// Index `pos + n` over `0..2 * size`; requires `pos < 2 * size` and
/// `n <= size`.
fn advance(size: u32, pos: u32, n: u32) -> u32 {
    debug_assert!(pos < 2 * size && n <= size);
    let next = pos + n;
    if next >= 2 * size {
        next - 2 * size
    } else {
        next
    }
}

/// Byte position in the data area of index `pos < 2 * size`.
fn data_index(size: u32, pos: u32) -> u32 {
    if pos >= size { pos - size } else { pos }
}

fn corrupted_indices(head: u32, tail: u32, size: u32) -> ShmError {
    ShmError::Corrupted(format!(
        "fifo indices head {head} tail {tail} invalid for size {size}"
    ))
}

/// A handle on a fifo in a segment: the segment's mapping plus validated,
/// cached size and offsets. Cheap to clone; either process builds one from
/// the header offset with [`Fifo::attach`].
///
/// Byte movement goes through the [`FifoProducer`] and [`FifoConsumer`]
/// views. Exactly one producer and one consumer may exist for a fifo across
/// all processes; a violation garbles data but cannot cause memory
/// unsafety here.
#[derive(Debug, Clone)]
pub struct Fifo {
    region: SharedRegion,
    header: NonNull<FifoHeader>,
    data: NonNull<u8>,
    header_offset: usize,
    data_offset: usize,
    size: u32,
}

// SAFETY: the pointers point into the mapping that `region` keeps alive
// (an `Arc`, itself Send + Sync); the header is all atomics and the data
// area is only touched by raw byte copies, so no thread affinity exists.
unsafe impl Send for Fifo {}
// SAFETY: every `&self` method only performs atomic operations on the
// header or copies out of the data area.
unsafe impl Sync for Fifo {}

impl Fifo {
    /// Formats a fifo of `size` data bytes at `offset` (64-aligned) in
    /// `region`, its data right after the header. Stack side; the range
    /// must come from the segment allocator (`fifo_required_size(size)`
    /// bytes).
    pub fn init_at(region: &SharedRegion, offset: usize, size: u32) -> ShmResult<Self> {
        let data_offset = offset
            .checked_add(FIFO_HEADER_SIZE)
            .ok_or_else(|| ShmError::InvalidValue(format!("fifo offset {offset}")))?;
        Self::init_with_data_at(region, offset, data_offset, size)
    }

    /// Formats a fifo whose header is at `header_offset` (64-aligned) and
    /// whose `size` data bytes are at `data_offset`, both in `region`.
    pub fn init_with_data_at(
        region: &SharedRegion,
        header_offset: usize,
        data_offset: usize,
        size: u32,
    ) -> ShmResult<Self> {
        if size == 0 || size > FIFO_MAX_SIZE {
            return Err(ShmError::InvalidValue(format!(
                "fifo size {size} not in 1..={FIFO_MAX_SIZE}"
            )));
        }
        let fifo =
            Self::from_parts(region, header_offset, data_offset, size).map_err(|e| match e {
                ShmError::Corrupted(msg) => ShmError::InvalidValue(msg),
                other => other,
            })?;
        let header = fifo.header();
        header.head.value.store(0, Ordering::Relaxed);
        header.tail.value.store(0, Ordering::Relaxed);
        header.shared.size.store(size, Ordering::Relaxed);
        header
            .shared
            .data_offset
            .store(data_offset as u64, Ordering::Relaxed);
        header.shared.flags.store(0, Ordering::Relaxed);
        header.shared.high_watermark.store(size, Ordering::Relaxed);
        header.shared.low_watermark.store(0, Ordering::Relaxed);
        // Release: whoever sees the magic sees the fields above.
        header.shared.magic.store(FIFO_MAGIC, Ordering::Release);
        Ok(fifo)
    }

    /// Attaches to a fifo some other party formatted at `offset` in
    /// `region`. Validates the magic, the size, the data range and the
    /// current indices; `Corrupted` if any is wrong.
    pub fn attach(region: &SharedRegion, offset: usize) -> ShmResult<Self> {
        let header_ptr = region.checked_ptr(offset, FIFO_HEADER_SIZE, SEGMENT_ALLOC_ALIGN)?;
        // SAFETY: in bounds and 64-aligned (checked above) inside the live
        // mapping of `region`; the header is all atomics, so a shared
        // reference to memory another process writes is fine.
        let header = unsafe { header_ptr.cast::<FifoHeader>().as_ref() };
        if header.shared.magic.load(Ordering::Acquire) != FIFO_MAGIC {
            return Err(ShmError::Corrupted(format!(
                "no fifo header at offset {offset}"
            )));
        }
        let size = header.shared.size.load(Ordering::Relaxed);
        if size == 0 || size > FIFO_MAX_SIZE {
            return Err(ShmError::Corrupted(format!("fifo size {size}")));
        }
        let data_offset = usize::try_from(header.shared.data_offset.load(Ordering::Relaxed))
            .map_err(|_| ShmError::Corrupted("fifo data offset".into()))?;
        let fifo = Self::from_parts(region, offset, data_offset, size)?;
        fifo.positions()?;
        Ok(fifo)
    }

    /// Validates the ranges and builds the handle; does not touch memory.
    fn from_parts(
        region: &SharedRegion,
        header_offset: usize,
        data_offset: usize,
        size: u32,
    ) -> ShmResult<Self> {
        let header = region
            .checked_ptr(header_offset, FIFO_HEADER_SIZE, SEGMENT_ALLOC_ALIGN)?
            .cast::<FifoHeader>();
        let data = region.checked_ptr(data_offset, size as usize, 1)?;
        let header_end = header_offset + FIFO_HEADER_SIZE;
        let data_end = data_offset + size as usize;
        if data_offset < header_end && header_offset < data_end {
            return Err(ShmError::Corrupted(format!(
                "fifo data {data_offset}..{data_end} overlaps its header at {header_offset}"
            )));
        }
        Ok(Self {
            region: region.clone(),
            header,
            data,
            header_offset,
            data_offset,
            size,
        })
    }

    fn header(&self) -> &FifoHeader {
        // SAFETY: `header` was bounds- and alignment-checked in
        // `from_parts`, and `self.region` keeps the mapping alive as long as
        // `self`; all fields are atomics (see `attach`).
        unsafe { self.header.as_ref() }
    }

    /// Loads and validates `(head, tail, occupancy)`. The header's magic,
    /// size and data offset must still be the ones attach cached (nothing
    /// rewrites them after `init_at`): a peer that changed them gets
    /// `Corrupted` here, on the next use, not a quietly ignored header.
    /// They share a cache line with the flags both sides touch anyway.
    fn positions(&self) -> ShmResult<(u32, u32, u32)> {
        let header = self.header();
        let shared = &header.shared;
        let (magic, size, data_offset) = (
            shared.magic.load(Ordering::Relaxed),
            shared.size.load(Ordering::Relaxed),
            shared.data_offset.load(Ordering::Relaxed),
        );
        if magic != FIFO_MAGIC || size != self.size || data_offset != self.data_offset as u64 {
            return Err(ShmError::Corrupted(format!(
                "fifo header rewritten: magic {magic:#x} size {size} data offset {data_offset} (attached with size {} data offset {})",
                self.size, self.data_offset
            )));
        }
        let head = header.head.value.load(Ordering::Acquire);
        let tail = header.tail.value.load(Ordering::Acquire);
        let len = occupancy(self.size, head, tail)
            .ok_or_else(|| corrupted_indices(head, tail, self.size))?;
        Ok((head, tail, len))
    }

    /// Copies `src` into the data area starting at index `pos`, wrapping.
    fn copy_in(&self, pos: u32, src: &[u8]) -> ShmResult<()> {
        let size = self.size as usize;
        let at = data_index(self.size, pos) as usize;
        if at >= size || src.len() > size {
            return Err(ShmError::Corrupted("fifo copy out of range".into()));
        }
        let first = src.len().min(size - at);
        // SAFETY: `at + first <= size` and `src.len() - first <= at`
        // (because `src.len() <= size`), so both copies stay inside the
        // `size`-byte data area checked in `from_parts`; `src` is private
        // memory, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(at), first);
            std::ptr::copy_nonoverlapping(
                src.as_ptr().add(first),
                self.data.as_ptr(),
                src.len() - first,
            );
        }
        Ok(())
    }

    /// Copies from the data area starting at index `pos` into `dst`,
    /// wrapping.
    fn copy_out(&self, pos: u32, dst: &mut [u8]) -> ShmResult<()> {
        let size = self.size as usize;
        let at = data_index(self.size, pos) as usize;
        if at >= size || dst.len() > size {
            return Err(ShmError::Corrupted("fifo copy out of range".into()));
        }
        let first = dst.len().min(size - at);
        // SAFETY: as in `copy_in`, both source ranges lie inside the data
        // area, and `dst` is private memory.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.as_ptr().add(at), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.data.as_ptr(),
                dst.as_mut_ptr().add(first),
                dst.len() - first,
            );
        }
        Ok(())
    }

    /// Data capacity in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Offset of the header in the segment (what the peer attaches with).
    pub fn header_offset(&self) -> usize {
        self.header_offset
    }

    /// Offset of the data area in the segment.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The segment mapping this fifo lives in.
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// Bytes ready to be dequeued (a snapshot).
    pub fn max_dequeue(&self) -> ShmResult<u32> {
        Ok(self.positions()?.2)
    }

    /// Bytes that can be enqueued now (a snapshot).
    pub fn max_enqueue(&self) -> ShmResult<u32> {
        Ok(self.size - self.positions()?.2)
    }

    /// Whether the fifo holds no bytes (a snapshot).
    pub fn is_empty(&self) -> ShmResult<bool> {
        Ok(self.max_dequeue()? == 0)
    }

    /// Whether the fifo has no room (a snapshot).
    pub fn is_full(&self) -> ShmResult<bool> {
        Ok(self.max_enqueue()? == 0)
    }

    /// Sets the watermarks, in bytes of occupancy; `low <= high <= size`,
    /// else `InvalidValue`. The defaults (`high = size`, `low = 0`) never
    /// trigger.
    pub fn set_watermarks(&self, high: u32, low: u32) -> ShmResult<()> {
        if low > high || high > self.size {
            return Err(ShmError::InvalidValue(format!(
                "watermarks high {high} low {low} for a fifo of {}",
                self.size
            )));
        }
        let shared = &self.header().shared;
        shared.high_watermark.store(high, Ordering::Relaxed);
        shared.low_watermark.store(low, Ordering::Relaxed);
        Ok(())
    }

    /// The current `(high, low)` watermarks, as stored in shared memory.
    pub fn watermarks(&self) -> (u32, u32) {
        let shared = &self.header().shared;
        (
            shared.high_watermark.load(Ordering::Relaxed),
            shared.low_watermark.load(Ordering::Relaxed),
        )
    }

    /// Marks "an event about this fifo is queued"; returns `true` if it was
    /// not marked before, i.e. the caller must post the event. Call after
    /// enqueueing.
    ///
    /// Ordering: the flag is a read-modify-write, so it is totally ordered
    /// with the consumer's [`Fifo::clear_event`]. If the clear comes first,
    /// this returns `true` and a new event goes out. If this comes first,
    /// the consumer's clear reads this write (`SeqCst` includes
    /// release/acquire), so the data enqueued before it is visible to the
    /// consumer's next dequeue. No event is lost either way.
    pub fn set_event(&self) -> bool {
        self.header()
            .shared
            .flags
            .fetch_or(FLAG_HAS_EVENT, Ordering::SeqCst)
            & FLAG_HAS_EVENT
            == 0
    }

    /// Clears the "event queued" mark. The consumer calls it when it
    /// handles the event, before dequeueing (see [`Fifo::set_event`]).
    pub fn clear_event(&self) {
        self.header()
            .shared
            .flags
            .fetch_and(!FLAG_HAS_EVENT, Ordering::SeqCst);
    }

    /// Whether an event is marked as queued.
    pub fn has_event(&self) -> bool {
        self.header().shared.flags.load(Ordering::Acquire) & FLAG_HAS_EVENT != 0
    }

    /// Whether the producer asked to be told when room is made.
    pub fn wants_dequeue_notification(&self) -> bool {
        self.header().shared.flags.load(Ordering::Acquire) & FLAG_WANT_DEQUEUE_NOTIFICATION != 0
    }

    /// The producer view (clones the handle).
    pub fn producer(&self) -> FifoProducer {
        FifoProducer { fifo: self.clone() }
    }

    /// The consumer view (clones the handle).
    pub fn consumer(&self) -> FifoConsumer {
        FifoConsumer { fifo: self.clone() }
    }
}

/// The writing side of a fifo. Only one may be used per fifo.
#[derive(Debug)]
pub struct FifoProducer {
    fifo: Fifo,
}

impl FifoProducer {
    /// The underlying fifo handle.
    pub fn fifo(&self) -> &Fifo {
        &self.fifo
    }

    /// Copies as much of `data` as fits; returns the number of bytes
    /// enqueued (0 when full).
    pub fn enqueue(&mut self, data: &[u8]) -> ShmResult<usize> {
        let (_, tail, len) = self.fifo.positions()?;
        let free = self.fifo.size - len;
        let n = data.len().min(free as usize);
        if n == 0 {
            return Ok(0);
        }
        // Acquire on head (in `positions`) ordered the consumer's reads of
        // these bytes before our writes.
        self.fifo.copy_in(tail, &data[..n])?;
        let next = advance(self.fifo.size, tail, n as u32);
        // Release: the consumer's Acquire load of tail sees the bytes.
        self.fifo.header().tail.value.store(next, Ordering::Release);
        Ok(n)
    }

    /// Bytes that can be enqueued now.
    pub fn max_enqueue(&self) -> ShmResult<u32> {
        self.fifo.max_enqueue()
    }

    /// Asks the consumer to notify when it dequeues, and returns the room
    /// available *after* the request is published: if it is non-zero, the
    /// caller should go on writing rather than wait (the consumer may have
    /// made room before it could see the request).
    ///
    /// Fence pairing (store→load on both sides, so Acquire/Release is not
    /// enough): here, store flag → `fence(SeqCst)` → load head. In
    /// [`FifoConsumer::take_dequeue_notification_request`]: store head (in
    /// `dequeue`) → `fence(SeqCst)` → load flag. The two fences are
    /// totally ordered; whichever comes second sees the other side's
    /// store, so either this call sees the new room or the consumer sees
    /// the request. A wakeup cannot be lost.
    pub fn request_dequeue_notification(&mut self) -> ShmResult<u32> {
        self.fifo
            .header()
            .shared
            .flags
            .fetch_or(FLAG_WANT_DEQUEUE_NOTIFICATION, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.fifo.max_enqueue()
    }

    /// After an enqueue: `true` exactly once each time occupancy goes above
    /// the high watermark (re-armed only when the consumer sees it go
    /// below the low watermark), so the layer above notifies once per
    /// crossing.
    pub fn crossed_above_high_watermark(&mut self) -> ShmResult<bool> {
        let len = self.fifo.max_dequeue()?;
        let shared = &self.fifo.header().shared;
        if len <= shared.high_watermark.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let before = shared
            .flags
            .fetch_or(FLAG_ABOVE_HIGH_WATERMARK, Ordering::AcqRel);
        Ok(before & FLAG_ABOVE_HIGH_WATERMARK == 0)
    }
}

/// The reading side of a fifo. Only one may be used per fifo.
#[derive(Debug)]
pub struct FifoConsumer {
    fifo: Fifo,
}

impl FifoConsumer {
    /// The underlying fifo handle.
    pub fn fifo(&self) -> &Fifo {
        &self.fifo
    }

    /// Moves up to `buf.len()` bytes out; returns how many (0 when empty).
    pub fn dequeue(&mut self, buf: &mut [u8]) -> ShmResult<usize> {
        let (head, _, len) = self.fifo.positions()?;
        let n = buf.len().min(len as usize);
        if n == 0 {
            return Ok(0);
        }
        // Acquire on tail (in `positions`) made the producer's bytes
        // visible.
        self.fifo.copy_out(head, &mut buf[..n])?;
        self.store_head(advance(self.fifo.size, head, n as u32));
        Ok(n)
    }

    /// Copies up to `buf.len()` bytes starting `offset` bytes past the
    /// head, without consuming; returns how many (0 if `offset` is at or
    /// past the end of the data).
    pub fn peek(&self, offset: u32, buf: &mut [u8]) -> ShmResult<usize> {
        let (head, _, len) = self.fifo.positions()?;
        if offset >= len {
            return Ok(0);
        }
        let n = buf.len().min((len - offset) as usize);
        let start = advance(self.fifo.size, head, offset);
        self.fifo.copy_out(start, &mut buf[..n])?;
        Ok(n)
    }

    /// Consumes up to `n` bytes without copying them (after a `peek`);
    /// returns how many were dropped.
    pub fn drop_bytes(&mut self, n: u32) -> ShmResult<u32> {
        let (head, _, len) = self.fifo.positions()?;
        let n = n.min(len);
        if n > 0 {
            self.store_head(advance(self.fifo.size, head, n));
        }
        Ok(n)
    }

    fn store_head(&self, head: u32) {
        // Release: our reads of the freed bytes happen before the
        // producer's Acquire load of head lets it overwrite them.
        self.fifo.header().head.value.store(head, Ordering::Release);
    }

    /// Bytes ready to be dequeued.
    pub fn max_dequeue(&self) -> ShmResult<u32> {
        self.fifo.max_dequeue()
    }

    /// After a dequeue that made room: returns `true` (once) if the
    /// producer asked to be notified, clearing the request; the caller then
    /// notifies the producer. See
    /// [`FifoProducer::request_dequeue_notification`] for the fence this
    /// pairs with.
    pub fn take_dequeue_notification_request(&mut self) -> bool {
        // Pairs with the fence in `request_dequeue_notification`: our head
        // store (in `dequeue`/`drop_bytes`) is ordered before the flag load.
        fence(Ordering::SeqCst);
        let flags = &self.fifo.header().shared.flags;
        if flags.load(Ordering::Relaxed) & FLAG_WANT_DEQUEUE_NOTIFICATION == 0 {
            return false;
        }
        flags.fetch_and(!FLAG_WANT_DEQUEUE_NOTIFICATION, Ordering::AcqRel)
            & FLAG_WANT_DEQUEUE_NOTIFICATION
            != 0
    }

    /// After a dequeue: `true` exactly once when occupancy drops below the
    /// low watermark after having gone above the high one (see
    /// [`FifoProducer::crossed_above_high_watermark`]).
    pub fn crossed_below_low_watermark(&mut self) -> ShmResult<bool> {
        let len = self.fifo.max_dequeue()?;
        let shared = &self.fifo.header().shared;
        if len >= shared.low_watermark.load(Ordering::Relaxed)
            || shared.flags.load(Ordering::Relaxed) & FLAG_ABOVE_HIGH_WATERMARK == 0
        {
            return Ok(false);
        }
        let before = shared
            .flags
            .fetch_and(!FLAG_ABOVE_HIGH_WATERMARK, Ordering::AcqRel);
        Ok(before & FLAG_ABOVE_HIGH_WATERMARK != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Segment;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    fn segment(size: usize) -> Segment {
        Segment::create("hs-fifo-test", size).unwrap()
    }

    fn fifo_in(seg: &Segment, offset: usize, size: u32) -> Fifo {
        Fifo::init_at(seg.region(), offset, size).unwrap()
    }

    /// Fills the whole segment with `byte`.
    fn fill(seg: &Segment, byte: u8) {
        let p = seg.region().checked_ptr(0, seg.size(), 1).unwrap();
        // SAFETY: the whole mapping, single-threaded test.
        unsafe { std::ptr::write_bytes(p.as_ptr(), byte, seg.size()) };
    }

    fn read_byte(seg: &Segment, offset: usize) -> u8 {
        let p = seg.region().checked_ptr(offset, 1, 1).unwrap();
        // SAFETY: in bounds, single-threaded test.
        unsafe { p.as_ptr().read() }
    }

    fn is_corrupted<T: std::fmt::Debug>(r: ShmResult<T>) -> bool {
        matches!(r, Err(ShmError::Corrupted(_)))
    }

    #[test]
    fn new_fifo_is_empty_with_full_room() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 1000);
        assert_eq!(fifo.size(), 1000);
        assert!(fifo.is_empty().unwrap());
        assert!(!fifo.is_full().unwrap());
        assert_eq!(fifo.max_enqueue().unwrap(), 1000);
        assert_eq!(fifo.data_offset(), FIFO_HEADER_SIZE);
    }

    #[test]
    fn full_fifo_uses_every_byte_and_refuses_more() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 100);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        assert_eq!(tx.enqueue(&[7; 100]).unwrap(), 100);
        assert!(fifo.is_full().unwrap());
        assert_eq!(tx.enqueue(&[1]).unwrap(), 0);
        let mut buf = [0; 200];
        assert_eq!(rx.dequeue(&mut buf).unwrap(), 100);
        assert!(buf[..100].iter().all(|&b| b == 7));
        assert!(fifo.is_empty().unwrap());
        assert_eq!(rx.dequeue(&mut buf).unwrap(), 0);
    }

    #[test]
    fn partial_write_takes_only_the_free_room() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 10);
        let mut tx = fifo.producer();
        assert_eq!(tx.enqueue(&[1; 6]).unwrap(), 6);
        assert_eq!(tx.enqueue(&[2; 6]).unwrap(), 4);
        let mut buf = [0; 10];
        assert_eq!(fifo.consumer().dequeue(&mut buf).unwrap(), 10);
        assert_eq!(buf, [1, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn data_wraps_around_the_end_of_the_buffer() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 7);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        let mut next = 0u8;
        let mut expect = 0u8;
        // Many rounds of odd sizes cross the end (and the 2*size index wrap).
        for round in 0..100 {
            let chunk: Vec<u8> = (0..(round % 5 + 1))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            assert_eq!(tx.enqueue(&chunk).unwrap(), chunk.len());
            let mut buf = vec![0; chunk.len()];
            assert_eq!(rx.dequeue(&mut buf).unwrap(), chunk.len());
            for b in buf {
                expect = expect.wrapping_add(1);
                assert_eq!(b, expect);
            }
        }
    }

    #[test]
    fn peek_then_drop_consumes_like_dequeue() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 16);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        tx.enqueue(&[0; 12]).unwrap();
        rx.drop_bytes(12).unwrap();
        tx.enqueue(b"hello, world").unwrap(); // wraps
        let mut buf = [0; 5];
        assert_eq!(rx.peek(7, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"world");
        assert_eq!(rx.peek(12, &mut buf).unwrap(), 0);
        assert_eq!(rx.peek(10, &mut buf).unwrap(), 2);
        assert_eq!(rx.max_dequeue().unwrap(), 12, "peek does not consume");
        assert_eq!(rx.drop_bytes(7).unwrap(), 7);
        let mut rest = [0; 16];
        assert_eq!(rx.dequeue(&mut rest).unwrap(), 5);
        assert_eq!(&rest[..5], b"world");
        assert_eq!(rx.drop_bytes(3).unwrap(), 0);
    }

    #[test]
    fn random_operations_match_a_vecdeque_model() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let seg = segment(1 << 16);
        for case in 0..20 {
            let size = rng.random_range(1..3000u32);
            let fifo = fifo_in(&seg, 0, size);
            let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
            let mut model: VecDeque<u8> = VecDeque::new();
            for _ in 0..2000 {
                match rng.random_range(0..4) {
                    0 => {
                        let len = rng.random_range(0..=size as usize + 10);
                        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        let n = tx.enqueue(&data).unwrap();
                        assert_eq!(n, len.min(size as usize - model.len()), "case {case}");
                        model.extend(&data[..n]);
                    }
                    1 => {
                        let mut buf = vec![0; rng.random_range(0..=size as usize + 10)];
                        let n = rx.dequeue(&mut buf).unwrap();
                        assert_eq!(n, buf.len().min(model.len()));
                        let expect: Vec<u8> = model.drain(..n).collect();
                        assert_eq!(&buf[..n], &expect[..]);
                    }
                    2 => {
                        let off = rng.random_range(0..=size);
                        let mut buf = vec![0; rng.random_range(0..=size as usize)];
                        let n = rx.peek(off, &mut buf).unwrap();
                        let avail = model.len().saturating_sub(off as usize);
                        assert_eq!(n, buf.len().min(avail));
                        let expect: Vec<u8> =
                            model.iter().skip(off as usize).take(n).copied().collect();
                        assert_eq!(&buf[..n], &expect[..]);
                    }
                    _ => {
                        let want = rng.random_range(0..=size + 10);
                        let n = rx.drop_bytes(want).unwrap();
                        assert_eq!(n as usize, (want as usize).min(model.len()));
                        model.drain(..n as usize);
                    }
                }
                assert_eq!(fifo.max_dequeue().unwrap() as usize, model.len());
                assert_eq!(
                    fifo.max_enqueue().unwrap() as usize,
                    size as usize - model.len()
                );
            }
        }
    }

    #[test]
    fn two_threads_stream_256_mib_byte_identical() {
        const TOTAL: usize = 256 << 20;
        let seg = segment(1 << 20);
        let fifo = fifo_in(&seg, 0, (1 << 20) - FIFO_HEADER_SIZE as u32);
        // A pattern of prime length so chunk boundaries never line up with it.
        let mut rng = StdRng::seed_from_u64(42);
        let pattern: std::sync::Arc<Vec<u8>> =
            std::sync::Arc::new((0..1_000_003).map(|_| rng.random()).collect());
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut tx = fifo.producer();
        let producer_pattern = std::sync::Arc::clone(&pattern);
        let producer = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(1);
            let mut sent = 0usize;
            while sent < TOTAL {
                let at = sent % producer_pattern.len();
                let len = rng
                    .random_range(1..=65536)
                    .min(producer_pattern.len() - at)
                    .min(TOTAL - sent);
                let n = tx.enqueue(&producer_pattern[at..at + len]).unwrap();
                if n == 0 {
                    assert!(Instant::now() < deadline, "producer stalled");
                    std::thread::yield_now();
                }
                sent += n;
            }
        });
        let mut rx = fifo.consumer();
        let mut rng = StdRng::seed_from_u64(2);
        let mut buf = vec![0u8; 65536];
        let mut received = 0usize;
        while received < TOTAL {
            let at = received % pattern.len();
            let want = rng.random_range(1..=65536).min(pattern.len() - at);
            let n = rx.dequeue(&mut buf[..want]).unwrap();
            if n == 0 {
                assert!(Instant::now() < deadline, "consumer stalled");
                std::thread::yield_now();
                continue;
            }
            assert!(
                buf[..n] == pattern[at..at + n],
                "mismatch at byte {received}"
            );
            received += n;
        }
        producer.join().unwrap();
        assert!(fifo.is_empty().unwrap());
    }

    #[test]
    fn attach_sees_the_same_fifo_through_another_mapping() {
        let seg = segment(8192);
        let fifo = fifo_in(&seg, 128, 500);
        fifo.producer().enqueue(b"across mappings").unwrap();
        let other = Segment::map(seg.try_clone_fd().unwrap(), 8192).unwrap();
        let attached = Fifo::attach(other.region(), 128).unwrap();
        assert_eq!(attached.size(), 500);
        let mut buf = [0; 32];
        let n = attached.consumer().dequeue(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"across mappings");
        assert!(fifo.is_empty().unwrap());
    }

    #[test]
    fn init_rejects_bad_size_and_ranges() {
        let seg = segment(4096);
        let r = seg.region();
        assert!(matches!(
            Fifo::init_at(r, 0, 0),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(matches!(
            Fifo::init_at(r, 0, FIFO_MAX_SIZE + 1),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(matches!(
            Fifo::init_at(r, 0, 4096),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(matches!(
            Fifo::init_at(r, 32, 100),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(matches!(
            Fifo::init_with_data_at(r, 0, 100, 100),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(Fifo::init_with_data_at(r, 1024, 0, 1024).is_ok());
    }

    /// A change a hostile peer makes to a header.
    type HeaderEdit<'a> = &'a dyn Fn();

    /// The header of `fifo`, for tests that play a hostile peer.
    fn hostile_header(fifo: &Fifo) -> &FifoHeader {
        fifo.header()
    }

    #[test]
    fn corrupted_header_fields_make_attach_fail() {
        let seg = segment(8192);
        let fifo = fifo_in(&seg, 0, 1000);
        let h = hostile_header(&fifo);
        let cases: [(HeaderEdit<'_>, HeaderEdit<'_>); 5] = [
            (&|| h.shared.magic.store(0xdead, Ordering::Relaxed), &|| {
                h.shared.magic.store(FIFO_MAGIC, Ordering::Relaxed)
            }),
            (&|| h.shared.size.store(0, Ordering::Relaxed), &|| {
                h.shared.size.store(1000, Ordering::Relaxed)
            }),
            (&|| h.shared.size.store(8001, Ordering::Relaxed), &|| {
                h.shared.size.store(1000, Ordering::Relaxed)
            }),
            (
                &|| h.shared.data_offset.store(u64::MAX - 10, Ordering::Relaxed),
                &|| h.shared.data_offset.store(192, Ordering::Relaxed),
            ),
            (&|| h.head.value.store(5000, Ordering::Relaxed), &|| {
                h.head.value.store(0, Ordering::Relaxed)
            }),
        ];
        for (corrupt, repair) in cases {
            corrupt();
            assert!(is_corrupted(Fifo::attach(seg.region(), 0)));
            repair();
            assert!(Fifo::attach(seg.region(), 0).is_ok());
        }
        assert!(is_corrupted(Fifo::attach(seg.region(), 8192)));
        assert!(is_corrupted(Fifo::attach(seg.region(), 4096)));
    }

    #[test]
    fn a_header_rewritten_after_attach_is_corrupted_on_next_use() {
        let seg = segment(8192);
        let fifo = fifo_in(&seg, 0, 1000);
        let h = hostile_header(&fifo);
        let edits: [(HeaderEdit<'_>, HeaderEdit<'_>); 3] = [
            (&|| h.shared.magic.store(0, Ordering::Relaxed), &|| {
                h.shared.magic.store(FIFO_MAGIC, Ordering::Relaxed)
            }),
            (&|| h.shared.size.store(500, Ordering::Relaxed), &|| {
                h.shared.size.store(1000, Ordering::Relaxed)
            }),
            (
                &|| h.shared.data_offset.store(256, Ordering::Relaxed),
                &|| h.shared.data_offset.store(192, Ordering::Relaxed),
            ),
        ];
        for (corrupt, repair) in edits {
            corrupt();
            assert!(is_corrupted(fifo.positions()));
            repair();
            assert!(fifo.positions().is_ok());
        }
    }

    #[test]
    fn corrupted_indices_give_corrupted_and_touch_nothing_outside() {
        let seg = segment(8192);
        fill(&seg, 0xEE);
        // Fifo header at 1024, data 1216..1316; everything else is a guard.
        let fifo = fifo_in(&seg, 1024, 100);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        let h = hostile_header(&fifo);
        let bad_pairs = [
            (200, 0),
            (0, 200),
            (u32::MAX, 5),
            (5, u32::MAX),
            (0, 150),  // 150 bytes in a 100-byte fifo
            (150, 99), // tail behind head by more than size
        ];
        let mut buf = [0u8; 300];
        for (head, tail) in bad_pairs {
            h.head.value.store(head, Ordering::Relaxed);
            h.tail.value.store(tail, Ordering::Relaxed);
            assert!(is_corrupted(tx.enqueue(&[1; 300])));
            assert!(is_corrupted(rx.dequeue(&mut buf)));
            assert!(is_corrupted(rx.peek(0, &mut buf)));
            assert!(is_corrupted(rx.drop_bytes(10)));
            assert!(is_corrupted(fifo.max_dequeue()));
            assert!(is_corrupted(fifo.max_enqueue()));
            assert!(is_corrupted(tx.request_dequeue_notification()));
            assert_eq!(h.head.value.load(Ordering::Relaxed), head, "no write");
            assert_eq!(h.tail.value.load(Ordering::Relaxed), tail, "no write");
        }
        for off in (0..1024).chain(1024 + FIFO_HEADER_SIZE + 100..8192) {
            assert_eq!(read_byte(&seg, off), 0xEE, "guard byte {off} changed");
        }
    }

    #[test]
    fn random_hostile_indices_never_escape_the_fifo() {
        let mut rng = StdRng::seed_from_u64(99);
        let seg = segment(8192);
        fill(&seg, 0xEE);
        let fifo = fifo_in(&seg, 1024, 333);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        let h = hostile_header(&fifo);
        let mut buf = [0u8; 1000];
        for _ in 0..20_000 {
            // Mostly near-valid values, sometimes anything.
            let pick = |rng: &mut StdRng| {
                if rng.random_bool(0.8) {
                    rng.random_range(0..700)
                } else {
                    rng.random()
                }
            };
            h.head.value.store(pick(&mut rng), Ordering::Relaxed);
            h.tail.value.store(pick(&mut rng), Ordering::Relaxed);
            let len = rng.random_range(0..1000);
            let _ = tx.enqueue(&buf[..len]);
            let _ = rx.dequeue(&mut buf[..len]);
            let _ = rx.peek(rng.random(), &mut buf[..len]);
            let _ = rx.drop_bytes(rng.random());
            if let Ok(n) = fifo.max_dequeue() {
                assert!(n <= 333);
            }
        }
        for off in (0..1024).chain(1024 + FIFO_HEADER_SIZE + 333..8192) {
            assert_eq!(read_byte(&seg, off), 0xEE, "guard byte {off} changed");
        }
    }

    #[test]
    fn set_event_reports_only_the_first_mark() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 64);
        assert!(!fifo.has_event());
        assert!(fifo.set_event());
        assert!(!fifo.set_event());
        assert!(fifo.has_event());
        fifo.clear_event();
        assert!(fifo.set_event());
    }

    #[test]
    fn dequeue_notification_is_requested_once_and_taken_once() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 8);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        tx.enqueue(&[0; 8]).unwrap();
        assert!(!rx.take_dequeue_notification_request());
        assert_eq!(tx.request_dequeue_notification().unwrap(), 0);
        assert!(fifo.wants_dequeue_notification());
        rx.drop_bytes(3).unwrap();
        assert!(rx.take_dequeue_notification_request());
        assert!(!rx.take_dequeue_notification_request());
        assert!(!fifo.wants_dequeue_notification());
        // Requested while room exists: the caller learns it right away.
        assert_eq!(tx.request_dequeue_notification().unwrap(), 3);
    }

    #[test]
    fn producer_blocked_on_full_fifo_is_always_woken() {
        // The flow-control loop the stack runs: write until full, request
        // a notification, sleep until notified or room shows up. A lost
        // wakeup shows as the producer waiting out its whole timeout.
        let seg = segment(1 << 16);
        let fifo = fifo_in(&seg, 0, 256);
        let efd = std::sync::Arc::new(crate::eventfd::EventFd::new().unwrap());
        const TOTAL: usize = 4 << 20;
        let mut rx = fifo.consumer();
        let consumer_efd = std::sync::Arc::clone(&efd);
        let consumer = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(3);
            let mut buf = [0u8; 300];
            let mut got = 0;
            while got < TOTAL {
                let want = rng.random_range(1..300);
                let n = rx.dequeue(&mut buf[..want]).unwrap();
                got += n;
                if n > 0 && rx.take_dequeue_notification_request() {
                    consumer_efd.notify().unwrap();
                }
                if n == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut tx = fifo.producer();
        let data = [9u8; 1000];
        let mut sent = 0;
        let start = Instant::now();
        while sent < TOTAL {
            let n = tx.enqueue(&data[..(TOTAL - sent).min(1000)]).unwrap();
            sent += n;
            if n == 0 && tx.request_dequeue_notification().unwrap() == 0 {
                assert!(
                    efd.wait(Some(Duration::from_secs(2))).unwrap(),
                    "lost dequeue notification"
                );
                efd.drain().unwrap();
            }
        }
        consumer.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn watermark_crossings_are_reported_once_each() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 100);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        assert!(matches!(
            fifo.set_watermarks(101, 0),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(matches!(
            fifo.set_watermarks(10, 20),
            Err(ShmError::InvalidValue(_))
        ));
        fifo.set_watermarks(80, 20).unwrap();
        assert_eq!(fifo.watermarks(), (80, 20));
        tx.enqueue(&[0; 80]).unwrap();
        assert!(
            !tx.crossed_above_high_watermark().unwrap(),
            "80 is not above 80"
        );
        tx.enqueue(&[0; 5]).unwrap();
        assert!(tx.crossed_above_high_watermark().unwrap());
        tx.enqueue(&[0; 5]).unwrap();
        assert!(
            !tx.crossed_above_high_watermark().unwrap(),
            "once per crossing"
        );
        rx.drop_bytes(50).unwrap(); // 40 left: below high, not below low
        assert!(!rx.crossed_below_low_watermark().unwrap());
        tx.enqueue(&[0; 50]).unwrap(); // 90 again: still the same crossing
        assert!(!tx.crossed_above_high_watermark().unwrap());
        rx.drop_bytes(75).unwrap(); // 15 < 20
        assert!(rx.crossed_below_low_watermark().unwrap());
        assert!(!rx.crossed_below_low_watermark().unwrap());
        tx.enqueue(&[0; 70]).unwrap(); // 85 > 80: a new crossing
        assert!(tx.crossed_above_high_watermark().unwrap());
    }

    #[test]
    fn default_watermarks_never_trigger() {
        let seg = segment(4096);
        let fifo = fifo_in(&seg, 0, 10);
        let (mut tx, mut rx) = (fifo.producer(), fifo.consumer());
        tx.enqueue(&[0; 10]).unwrap();
        assert!(!tx.crossed_above_high_watermark().unwrap());
        rx.drop_bytes(10).unwrap();
        assert!(!rx.crossed_below_low_watermark().unwrap());
    }

    const CHILD_FD_ENV: &str = "HOSTSTACK_FIFO_TEST_CHILD_FD";
    const CROSS_PROCESS_SEGMENT: usize = 1 << 16;
    const CROSS_PROCESS_BYTES: usize = 8 << 20;
    const CROSS_PROCESS_FIFO_OFFSET: usize = 4096;

    fn cross_process_byte(i: usize) -> u8 {
        (i.wrapping_mul(2_654_435_761) >> 13) as u8
    }

    /// Child half of `cross_process_stream_is_byte_identical`: maps the
    /// inherited memfd, attaches and consumes.
    fn cross_process_child(fd: &str) {
        let raw: i32 = fd.parse().unwrap();
        // SAFETY: the parent passed us this inherited fd and nothing else in
        // this process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let seg = Segment::map(owned, CROSS_PROCESS_SEGMENT).unwrap();
        let fifo = Fifo::attach(seg.region(), CROSS_PROCESS_FIFO_OFFSET).unwrap();
        let mut rx = fifo.consumer();
        let mut buf = vec![0u8; 5000];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while got < CROSS_PROCESS_BYTES {
            let n = rx.dequeue(&mut buf).unwrap();
            for (i, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, cross_process_byte(got + i), "byte {}", got + i);
            }
            got += n;
            if n == 0 {
                assert!(Instant::now() < deadline, "child stalled");
                std::thread::yield_now();
            }
        }
    }

    #[test]
    fn cross_process_stream_is_byte_identical() {
        if let Ok(fd) = std::env::var(CHILD_FD_ENV) {
            cross_process_child(&fd);
            return;
        }
        let seg = segment(CROSS_PROCESS_SEGMENT);
        let fifo = fifo_in(&seg, CROSS_PROCESS_FIFO_OFFSET, 10_007);
        // The segment fd is close-on-exec; the child gets a plain dup.
        // SAFETY: dup of an fd we own; the result is checked and owned below.
        let inheritable = unsafe { libc::dup(seg.fd().as_raw_fd()) };
        assert!(inheritable >= 0);
        // SAFETY: `inheritable` is a fresh fd nothing else owns.
        let inheritable = unsafe { OwnedFd::from_raw_fd(inheritable) };
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fifo::tests::cross_process_stream_is_byte_identical",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD_FD_ENV, inheritable.as_raw_fd().to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        drop(inheritable);
        let mut tx = fifo.producer();
        let mut sent = 0;
        let mut chunk = vec![0u8; 7000];
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent < CROSS_PROCESS_BYTES {
            let len = chunk.len().min(CROSS_PROCESS_BYTES - sent);
            for (i, b) in chunk[..len].iter_mut().enumerate() {
                *b = cross_process_byte(sent + i);
            }
            let n = tx.enqueue(&chunk[..len]).unwrap();
            sent += n;
            if n == 0 {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("child exited early: {status}");
                }
                assert!(Instant::now() < deadline, "parent stalled");
                std::thread::yield_now();
            }
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
        assert!(fifo.is_empty().unwrap());
    }
}
