//! A fixed pool of equal-sized frame buffers in one allocation, for the
//! in-memory pair. AF_XDP uses its UMEM, the TAP its registered areas
//! (`uring_tap`).
//!
//! A [`PoolFrame`] is the only handle to its buffer while it is out of the
//! pool; it is not `Clone`, and it remembers which pool it came from, so the
//! shared-reference accessors below can hand out `&mut [u8]` soundly.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::FrameBuf;

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// A frame taken out of a [`FramePool`].
#[derive(Debug)]
pub struct PoolFrame {
    index: u32,
    len: u32,
    pool: u32,
}

impl PoolFrame {
    /// Index of the frame inside its pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sets the data length (clamped by the pool on access).
    pub fn set_len(&mut self, len: usize) {
        self.len = len as u32;
    }
}

impl FrameBuf for PoolFrame {
    fn len(&self) -> usize {
        self.len as usize
    }
}

/// `count` buffers of `frame_size` bytes, handed out as [`PoolFrame`]s.
#[derive(Debug)]
pub struct FramePool {
    base: NonNull<u8>,
    bytes: usize,
    frame_size: usize,
    count: u32,
    id: u32,
    free: Vec<u32>,
}

// SAFETY: the pool owns its allocation; frames are handed out by value, and
// the raw pointer is never shared outside the pool's own accessors.
unsafe impl Send for FramePool {}

impl FramePool {
    /// Allocates `count` frames of `frame_size` bytes, all free.
    pub fn new(count: u32, frame_size: usize) -> Self {
        assert!(count > 0 && frame_size > 0, "empty frame pool");
        let bytes = count as usize * frame_size;
        let boxed: Box<[u8]> = vec![0u8; bytes].into_boxed_slice();
        let base = NonNull::new(Box::into_raw(boxed).cast::<u8>()).expect("Box is never null");
        Self {
            base,
            bytes,
            frame_size,
            count,
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            free: (0..count).rev().collect(),
        }
    }

    /// Bytes one frame holds.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Frames in the pool, free or not.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Frames currently free.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free frame.
    pub fn alloc(&mut self) -> Option<PoolFrame> {
        let index = self.free.pop()?;
        Some(PoolFrame {
            index,
            len: 0,
            pool: self.id,
        })
    }

    /// Returns a frame to the pool.
    pub fn free(&mut self, frame: PoolFrame) {
        assert_eq!(frame.pool, self.id, "frame returned to the wrong pool");
        self.free.push(frame.index);
    }

    fn frame_ptr(&self, frame: &PoolFrame) -> *mut u8 {
        assert_eq!(frame.pool, self.id, "frame used with the wrong pool");
        debug_assert!(frame.index < self.count);
        // SAFETY: index < count, so the offset stays inside the allocation.
        unsafe {
            self.base
                .as_ptr()
                .add(frame.index as usize * self.frame_size)
        }
    }

    /// The frame's bytes up to its length.
    pub fn bytes<'a>(&'a self, frame: &'a PoolFrame) -> &'a [u8] {
        let len = frame.len().min(self.frame_size);
        // SAFETY: the pointer addresses `frame_size` bytes owned by this pool
        // that only the holder of `frame` may touch; it is borrowed shared
        // here for as long as `frame` is.
        unsafe { std::slice::from_raw_parts(self.frame_ptr(frame), len) }
    }

    /// Sets the frame's length and lets `fill` write it.
    pub fn write<R>(
        &self,
        frame: &mut PoolFrame,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        if len > self.frame_size {
            return None;
        }
        frame.len = len as u32;
        // SAFETY: as in `bytes`; `frame` is borrowed exclusively, so no other
        // reference to these bytes exists while `fill` runs.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.frame_ptr(frame), len) };
        Some(fill(buf))
    }

    /// Lets `fill` write into the whole buffer and sets the frame's length
    /// to what it returns.
    pub fn fill(&self, frame: &mut PoolFrame, fill: impl FnOnce(&mut [u8]) -> usize) -> usize {
        let n = fill(self.buffer_mut(frame)).min(self.frame_size);
        frame.len = n as u32;
        n
    }

    /// The whole buffer of a frame, for a device to read into.
    pub fn buffer_mut<'a>(&'a self, frame: &'a mut PoolFrame) -> &'a mut [u8] {
        // SAFETY: as in `write`.
        unsafe { std::slice::from_raw_parts_mut(self.frame_ptr(frame), self.frame_size) }
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // SAFETY: `base` and `bytes` come from Box::into_raw of a boxed slice
        // of exactly `bytes` bytes in `new`, reclaimed exactly once here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.base.as_ptr(),
                self.bytes,
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_reused_not_allocated() {
        let mut pool = FramePool::new(4, 64);
        let mut taken: Vec<_> = (0..4).map(|_| pool.alloc().unwrap()).collect();
        assert!(pool.alloc().is_none(), "pool of 4 gave a fifth frame");
        let f = taken.pop().unwrap();
        let idx = f.index();
        pool.free(f);
        assert_eq!(pool.alloc().unwrap().index(), idx);
    }

    #[test]
    fn write_then_read_round_trips_and_rejects_oversize() {
        let mut pool = FramePool::new(2, 32);
        let mut f = pool.alloc().unwrap();
        assert!(pool.write(&mut f, 33, |_| ()).is_none());
        pool.write(&mut f, 5, |b| b.copy_from_slice(b"hello"))
            .unwrap();
        assert_eq!(pool.bytes(&f), b"hello");
    }

    #[test]
    #[should_panic(expected = "wrong pool")]
    fn a_frame_from_another_pool_is_refused() {
        let mut a = FramePool::new(1, 16);
        let b = FramePool::new(1, 16);
        let f = a.alloc().unwrap();
        let _ = b.bytes(&f);
    }
}
