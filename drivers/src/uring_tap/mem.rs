//! The memory a TAP queue shares with the kernel: page-aligned frame areas
//! and the provided buffer ring (`IORING_REGISTER_PBUF_RING`) the multishot
//! read picks its buffers from.
//!
//! A buffer ring is an array of `{addr: u64, len: u32, bid: u16, resv: u16}`
//! entries; the 16-bit tail the application advances overlays the `resv`
//! field of entry 0, and the kernel keeps its head to itself. The
//! application writes entries at `tail & mask`, then publishes the new tail
//! with a release store; the kernel consumes entries from its head and
//! hands each buffer back in a completion (`IORING_CQE_F_BUFFER`, the
//! buffer id in the upper 16 bits of the flags). A buffer is returned to
//! the ring only once its frame is released, so the ring never holds more
//! entries than buffers exist and never overwrites one the kernel has not
//! consumed.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::error::{DriverError, DriverResult};

const PAGE: usize = 4096;

/// A zeroed, page-aligned allocation the kernel reads or writes.
#[derive(Debug)]
pub(crate) struct Area {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the area is plain memory owned by this value; access goes through
// the owning queue, which is used by one thread at a time.
unsafe impl Send for Area {}

impl Area {
    /// `len` bytes (rounded up to a page), zeroed.
    pub(crate) fn new(len: usize) -> DriverResult<Self> {
        let len = len.max(1).div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(len, PAGE)
            .map_err(|_| DriverError::InvalidConfig(format!("{len} bytes of frame memory")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| {
            DriverError::InvalidConfig(format!("cannot allocate {} MiB of frame memory", len >> 20))
        })?;
        Ok(Self { base, layout })
    }

    /// Start of the area.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Bytes in the area.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// Address of byte `offset`; `None` past the end.
    pub(crate) fn at(&self, offset: usize) -> Option<*mut u8> {
        // SAFETY: `offset` is inside the allocation (checked), so the
        // resulting pointer stays in bounds.
        (offset < self.len()).then(|| unsafe { self.base.as_ptr().add(offset) })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with exactly this layout
        // and is freed once, here.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// One entry of a buffer ring, as the kernel lays it out.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const ENTRY: usize = std::mem::size_of::<RingEntry>();
/// Offset of the tail inside the ring: entry 0's `resv`.
const TAIL_AT: usize = 14;

/// A provided buffer ring over `count` buffers of `size` bytes each.
#[derive(Debug)]
pub(crate) struct BufRing {
    ring: Area,
    entries: u16,
    /// The tail as written here, ahead of the published one until
    /// [`publish`](Self::publish).
    tail: u16,
    published: u16,
}

impl BufRing {
    /// A ring of `entries` slots (a power of two, at most 32768).
    pub(crate) fn new(entries: u16) -> DriverResult<Self> {
        if !entries.is_power_of_two() || entries > 1 << 15 {
            return Err(DriverError::InvalidConfig(format!(
                "a buffer ring needs a power-of-two size up to 32768, not {entries}"
            )));
        }
        Ok(Self {
            ring: Area::new(usize::from(entries) * ENTRY)?,
            entries,
            tail: 0,
            published: 0,
        })
    }

    /// Address of the ring, for `IORING_REGISTER_PBUF_RING`.
    pub(crate) fn addr(&self) -> u64 {
        self.ring.base() as u64
    }

    /// Slots in the ring.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Queues buffer `bid` at `addr` of `len` bytes for the kernel; it is
    /// seen after the next [`publish`](Self::publish). The caller hands in
    /// only buffers the kernel is not holding.
    pub(crate) fn push(&mut self, bid: u16, addr: *mut u8, len: u32) {
        let slot = usize::from(self.tail & (self.entries - 1));
        let entry = self.ring.at(slot * ENTRY).expect("slot inside the ring");
        let entry = entry.cast::<RingEntry>();
        // SAFETY: `entry` is an aligned, in-bounds slot of the ring. The
        // kernel reads only slots between its head and the published tail,
        // and this slot is past the published tail (the ring never holds
        // more buffers than it has slots), so nobody reads it now. Writing
        // the three fields one by one leaves `resv` alone: in slot 0 it is
        // the tail.
        unsafe {
            std::ptr::addr_of_mut!((*entry).addr).write(addr as u64);
            std::ptr::addr_of_mut!((*entry).len).write(len);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel.
    pub(crate) fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        let tail = self.ring.at(TAIL_AT).expect("tail inside the ring");
        // SAFETY: offset 14 is the 2-aligned `resv` field of slot 0, which
        // the kernel reads as the ring's tail (and never writes); viewing it
        // as an atomic lets the release store order the entry writes above
        // before the kernel's acquire load of the tail.
        let tail = unsafe { AtomicU16::from_ptr(tail.cast::<u16>()) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_are_page_aligned_zeroed_and_bounded() {
        let a = Area::new(10).unwrap();
        assert_eq!(a.len(), PAGE);
        assert_eq!(a.base() as usize % PAGE, 0);
        assert!(a.at(PAGE - 1).is_some() && a.at(PAGE).is_none());
        // SAFETY: the area is PAGE bytes long, all of them readable.
        let bytes = unsafe { std::slice::from_raw_parts(a.base(), PAGE) };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn pushes_fill_slots_in_order_and_publish_moves_the_tail() {
        let mut r = BufRing::new(4).unwrap();
        assert!(BufRing::new(6).is_err());
        let data = Area::new(4 * 64).unwrap();
        for bid in 0..4u16 {
            r.push(bid, data.at(usize::from(bid) * 64).unwrap(), 64);
        }
        assert_eq!(r.tail.wrapping_sub(r.published), 4);
        r.publish();
        assert_eq!(r.published, 4);
        // SAFETY: the ring area is a page; the entries and the tail lie in
        // its first 64 bytes and nothing else writes them in this test.
        let raw = unsafe { std::slice::from_raw_parts(r.ring.base(), 64) };
        let entry = |i: usize| &raw[i * ENTRY..(i + 1) * ENTRY];
        assert_eq!(u16::from_ne_bytes([raw[14], raw[15]]), 4, "tail");
        for i in 0..4 {
            let e = entry(i);
            assert_eq!(u32::from_ne_bytes(e[8..12].try_into().unwrap()), 64);
            assert_eq!(u16::from_ne_bytes([e[12], e[13]]), i as u16, "bid");
        }
        // The fifth push wraps to slot 0 without touching the tail.
        r.push(9, data.at(0).unwrap(), 32);
        // SAFETY: as above.
        let raw = unsafe { std::slice::from_raw_parts(r.ring.base(), 64) };
        assert_eq!(u16::from_ne_bytes([raw[12], raw[13]]), 9);
        assert_eq!(u16::from_ne_bytes([raw[14], raw[15]]), 4, "tail untouched");
    }
}
