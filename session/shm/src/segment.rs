//! Shared-memory segments: a memfd mapped `MAP_SHARED` into this process,
//! and the offset allocator that carves fifos and message queues out of it.
//!
//! This module owns the mapping (`mmap`/`munmap`) and the only raw base
//! pointer of a segment. Everything built inside a segment (the fifos of
//! [`crate::fifo`], the queues of [`crate::message_queue`]) addresses it by
//! byte offset through a [`SharedRegion`], whose crate-internal
//! `checked_ptr` is the single place where an offset becomes a pointer, and
//! it bounds- and alignment-checks every request. Process pointers are never
//! written into shared memory.
//!
//! The allocator's bookkeeping ([`SegmentAllocator`]) lives in this
//! process's heap, not in the segment, so a peer that maps the segment
//! cannot corrupt it.
//!
//! Segments are created sealed against shrinking and growing
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), and [`Segment::map`]
//! refuses an fd without the shrink seal: a peer that could truncate the
//! file would turn our next access into a SIGBUS.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use hashbrown::HashMap;
use memfd::{FileSeal, MemfdOptions};

use crate::error::{ShmError, ShmResult};

/// Alignment, in bytes, of every offset [`SegmentAllocator::allocate`]
/// returns (one cache line).
pub const SEGMENT_ALLOC_ALIGN: usize = 64;

/// One `mmap` of a segment; unmapped when the last [`SharedRegion`] that
/// refers to it is dropped.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all
// accesses through it go through atomics or raw byte copies in the modules
// that own a layout, which document their own synchronisation.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the base address and length.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned and were given;
        // this is the last owner, so no pointer into the mapping is live.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "munmap of a segment failed"
            );
        }
    }
}

/// A cheap, cloneable handle on a segment's mapping.
///
/// Fifos and message queues hold one, so the memory stays mapped for as
/// long as any of them exists, even after the [`Segment`] itself is
/// dropped.
#[derive(Debug, Clone)]
pub struct SharedRegion {
    mapping: Arc<Mapping>,
}

impl SharedRegion {
    /// Length of the mapped region in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len
    }

    /// Whether the region has no bytes (never true for a mapped segment).
    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    /// Whether both handles refer to the same mapping.
    pub fn same_mapping(&self, other: &SharedRegion) -> bool {
        Arc::ptr_eq(&self.mapping, &other.mapping)
    }

    /// Checks that `offset..offset + len` lies inside the region and that
    /// `offset` is a multiple of `align`, and returns a pointer to it.
    ///
    /// The pointer stays valid for `len` bytes for as long as `self` (or a
    /// clone) lives. What may be done through it is the caller's business:
    /// the memory is shared with other processes, so only atomics and raw
    /// byte copies are appropriate.
    pub(crate) fn checked_ptr(
        &self,
        offset: usize,
        len: usize,
        align: usize,
    ) -> ShmResult<NonNull<u8>> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| ShmError::Corrupted(format!("range {offset}+{len} overflows")))?;
        if end > self.mapping.len {
            return Err(ShmError::Corrupted(format!(
                "range {offset}..{end} is outside a region of {} bytes",
                self.mapping.len
            )));
        }
        if align == 0 || offset % align != 0 {
            return Err(ShmError::Corrupted(format!(
                "offset {offset} is not aligned to {align}"
            )));
        }
        // SAFETY: `offset <= len` of the mapping (checked above), so the
        // result stays inside (or one past the end of) the same mapping and
        // is non-null because `base` is.
        Ok(unsafe { self.mapping.base.add(offset) })
    }
}

/// First-fit allocator of byte ranges inside a segment, with coalescing of
/// free ranges. Offsets are multiples of [`SEGMENT_ALLOC_ALIGN`] and sizes
/// are rounded up to it. Its metadata is private to this process.
#[derive(Debug, Clone)]
pub struct SegmentAllocator {
    size: usize,
    /// Free ranges, start offset -> length; never two adjacent ones.
    free_ranges: BTreeMap<usize, usize>,
    /// Allocated ranges, start offset -> rounded length.
    allocated: HashMap<usize, usize>,
    bytes_used: usize,
}

impl SegmentAllocator {
    /// An allocator managing `size` bytes starting at offset 0.
    pub fn new(size: usize) -> Self {
        let mut free_ranges = BTreeMap::new();
        if size > 0 {
            free_ranges.insert(0, size);
        }
        Self {
            size,
            free_ranges,
            allocated: HashMap::new(),
            bytes_used: 0,
        }
    }

    /// Allocates `size` bytes (rounded up to [`SEGMENT_ALLOC_ALIGN`]) at the
    /// lowest free offset that fits. `NoSpace` when nothing fits,
    /// `InvalidValue` for a zero size.
    pub fn allocate(&mut self, size: usize) -> ShmResult<usize> {
        if size == 0 {
            return Err(ShmError::InvalidValue(
                "cannot allocate zero bytes in a segment".into(),
            ));
        }
        let rounded = size
            .checked_next_multiple_of(SEGMENT_ALLOC_ALIGN)
            .ok_or_else(|| ShmError::NoSpace(format!("{size} bytes is too large")))?;
        let (start, len) = self
            .free_ranges
            .iter()
            .find(|&(_, &len)| len >= rounded)
            .map(|(&start, &len)| (start, len))
            .ok_or_else(|| {
                ShmError::NoSpace(format!(
                    "no free range of {rounded} bytes in a segment of {} ({} free)",
                    self.size,
                    self.bytes_free()
                ))
            })?;
        self.free_ranges.remove(&start);
        if len > rounded {
            self.free_ranges.insert(start + rounded, len - rounded);
        }
        self.allocated.insert(start, rounded);
        self.bytes_used += rounded;
        Ok(start)
    }

    /// Returns the range that starts at `offset` (a value
    /// [`SegmentAllocator::allocate`] returned) and merges it with free
    /// neighbours. `InvalidValue` for an offset that is not allocated.
    pub fn free(&mut self, offset: usize) -> ShmResult<()> {
        let len = self
            .allocated
            .remove(&offset)
            .ok_or_else(|| ShmError::InvalidValue(format!("offset {offset} is not allocated")))?;
        self.bytes_used -= len;
        let mut start = offset;
        let mut end = offset + len;
        if let Some((&prev_start, &prev_len)) = self.free_ranges.range(..offset).next_back() {
            if prev_start + prev_len == offset {
                self.free_ranges.remove(&prev_start);
                start = prev_start;
            }
        }
        if let Some(next_len) = self.free_ranges.remove(&end) {
            end += next_len;
        }
        self.free_ranges.insert(start, end - start);
        Ok(())
    }

    /// Length (rounded) of the allocation starting at `offset`, if any.
    pub fn allocation_len(&self, offset: usize) -> Option<usize> {
        self.allocated.get(&offset).copied()
    }

    /// Total bytes managed.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes handed out (after rounding).
    pub fn bytes_used(&self) -> usize {
        self.bytes_used
    }

    /// Bytes not handed out (possibly fragmented).
    pub fn bytes_free(&self) -> usize {
        self.size - self.bytes_used
    }

    /// Length of the largest free range: the biggest allocation that can
    /// succeed right now.
    pub fn largest_free_range(&self) -> usize {
        self.free_ranges.values().copied().max().unwrap_or(0)
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocated.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
    }
}

/// A shared-memory segment: a sealed memfd mapped read-write `MAP_SHARED`,
/// plus the allocator of its bytes.
///
/// The stack creates segments with [`Segment::create`] and sends the fd to
/// the app, which maps it with [`Segment::map`]. Unmapped when the segment
/// and every [`SharedRegion`] cloned from it are dropped.
#[derive(Debug)]
pub struct Segment {
    name: String,
    file: File,
    region: SharedRegion,
    allocator: SegmentAllocator,
}

impl Segment {
    /// Creates a memfd named `name` of `size` bytes, seals it against
    /// shrinking and growing, and maps it.
    pub fn create(name: &str, size: usize) -> ShmResult<Self> {
        if size == 0 {
            return Err(ShmError::InvalidValue(
                "segment size must be non-zero".into(),
            ));
        }
        let memfd = MemfdOptions::new()
            .allow_sealing(true)
            .close_on_exec(true)
            .create(name)
            .map_err(|e| memfd_error("memfd create", e))?;
        let len = u64::try_from(size)
            .map_err(|_| ShmError::InvalidValue(format!("segment size {size} too large")))?;
        memfd
            .as_file()
            .set_len(len)
            .map_err(|e| ShmError::os("segment set size", &e))?;
        memfd
            .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
            .map_err(|e| memfd_error("segment seal", e))?;
        let file = memfd.into_file();
        let mapping = map_shared(&file, size)?;
        Ok(Self {
            name: name.to_owned(),
            file,
            region: SharedRegion {
                mapping: Arc::new(mapping),
            },
            allocator: SegmentAllocator::new(size),
        })
    }

    /// Maps a segment fd received from another process.
    ///
    /// Refuses (`InvalidValue`) an fd that is not a memfd, is not sealed
    /// against shrinking, or whose real size (fstat) is smaller than
    /// `expected_size`. Only `expected_size` bytes are mapped.
    ///
    /// The allocator of a mapped segment starts empty and knows nothing of
    /// the creator's allocations: only the creating side allocates.
    pub fn map(fd: OwnedFd, expected_size: usize) -> ShmResult<Self> {
        if expected_size == 0 {
            return Err(ShmError::InvalidValue(
                "segment size must be non-zero".into(),
            ));
        }
        let name = memfd_name(&fd);
        let memfd = memfd::Memfd::try_from_fd(fd)
            .map_err(|_| ShmError::InvalidValue("segment fd is not a memfd".into()))?;
        let seals = memfd
            .seals()
            .map_err(|e| memfd_error("segment get seals", e))?;
        if !seals.contains(&FileSeal::SealShrink) {
            return Err(ShmError::InvalidValue(
                "segment fd is not sealed against shrinking".into(),
            ));
        }
        let file = memfd.into_file();
        let real_size = file
            .metadata()
            .map_err(|e| ShmError::os("segment fstat", &e))?
            .len();
        if real_size < expected_size as u64 {
            return Err(ShmError::InvalidValue(format!(
                "segment is {real_size} bytes, expected {expected_size}"
            )));
        }
        let mapping = map_shared(&file, expected_size)?;
        Ok(Self {
            name,
            file,
            region: SharedRegion {
                mapping: Arc::new(mapping),
            },
            allocator: SegmentAllocator::new(expected_size),
        })
    }

    /// The memfd, e.g. to send it with SCM_RIGHTS.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A new owned duplicate of the memfd (close-on-exec).
    pub fn try_clone_fd(&self) -> ShmResult<OwnedFd> {
        self.fd()
            .try_clone_to_owned()
            .map_err(|e| ShmError::os("segment fd clone", &e))
    }

    /// Mapped size in bytes.
    pub fn size(&self) -> usize {
        self.region.len()
    }

    /// The memfd's name (as given to `create`, or as the kernel reports it
    /// for a mapped fd; empty if unknown).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mapping, for building fifos and message queues at offsets.
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The allocator of this segment's bytes.
    pub fn allocator(&self) -> &SegmentAllocator {
        &self.allocator
    }

    /// See [`SegmentAllocator::allocate`].
    pub fn allocate(&mut self, size: usize) -> ShmResult<usize> {
        self.allocator.allocate(size)
    }

    /// See [`SegmentAllocator::free`].
    pub fn free(&mut self, offset: usize) -> ShmResult<()> {
        self.allocator.free(offset)
    }

    /// Bytes allocated in this segment.
    pub fn bytes_used(&self) -> usize {
        self.allocator.bytes_used()
    }

    /// Bytes not allocated in this segment.
    pub fn bytes_free(&self) -> usize {
        self.allocator.bytes_free()
    }

    /// Whether nothing is allocated in this segment.
    pub fn is_empty(&self) -> bool {
        self.allocator.is_empty()
    }
}

fn memfd_error(context: &'static str, err: memfd::Error) -> ShmError {
    let io = match err {
        memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => e,
    };
    ShmError::os(context, &io)
}

/// Best-effort name of a memfd from `/proc/self/fd`: the link reads
/// `/memfd:NAME (deleted)`.
fn memfd_name(fd: &OwnedFd) -> String {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let Ok(link) = link else {
        return String::new();
    };
    let link = link.to_string_lossy();
    let name = link.strip_prefix("/memfd:").unwrap_or(&link);
    name.strip_suffix(" (deleted)").unwrap_or(name).to_owned()
}

fn map_shared(file: &File, len: usize) -> ShmResult<Mapping> {
    // SAFETY: a fresh shared mapping chosen by the kernel (null hint) of a
    // file we hold open; no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(ShmError::os(
            "segment mmap",
            &std::io::Error::last_os_error(),
        ));
    }
    let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
        ShmError::os(
            "segment mmap",
            &std::io::Error::from(std::io::ErrorKind::AddrNotAvailable),
        )
    })?;
    Ok(Mapping { base, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn create_maps_the_requested_size_and_name() {
        let seg = Segment::create("hs-test-create", 1 << 20).unwrap();
        assert_eq!(seg.size(), 1 << 20);
        assert_eq!(seg.name(), "hs-test-create");
        assert!(seg.is_empty());
        assert_eq!(seg.bytes_free(), 1 << 20);
    }

    #[test]
    fn zero_size_segment_is_invalid() {
        assert!(matches!(
            Segment::create("hs-zero", 0),
            Err(ShmError::InvalidValue(_))
        ));
    }

    #[test]
    fn map_of_a_cloned_fd_sees_the_same_bytes() {
        let seg = Segment::create("hs-test-share", 4096).unwrap();
        let other = Segment::map(seg.try_clone_fd().unwrap(), 4096).unwrap();
        assert_eq!(other.name(), "hs-test-share");
        let a = seg.region().checked_ptr(100, 1, 1).unwrap();
        let b = other.region().checked_ptr(100, 1, 1).unwrap();
        assert_ne!(a, b, "two distinct mappings");
        // SAFETY: both pointers are in bounds of live mappings; single
        // threaded test.
        unsafe {
            a.as_ptr().write(0xAB);
            assert_eq!(b.as_ptr().read(), 0xAB);
        }
    }

    #[test]
    fn map_refuses_an_fd_smaller_than_expected() {
        let seg = Segment::create("hs-test-small", 4096).unwrap();
        assert!(matches!(
            Segment::map(seg.try_clone_fd().unwrap(), 8192),
            Err(ShmError::InvalidValue(_))
        ));
    }

    #[test]
    fn map_refuses_an_fd_that_is_not_sealed_against_shrinking() {
        let memfd = MemfdOptions::new().create("hs-unsealed").unwrap();
        memfd.as_file().set_len(4096).unwrap();
        let fd = OwnedFd::from(memfd.into_file());
        assert!(matches!(
            Segment::map(fd, 4096),
            Err(ShmError::InvalidValue(_))
        ));
    }

    #[test]
    fn map_refuses_an_fd_that_is_not_a_memfd() {
        let file = File::open("/proc/self/status").unwrap();
        assert!(matches!(
            Segment::map(OwnedFd::from(file), 16),
            Err(ShmError::InvalidValue(_))
        ));
    }

    #[test]
    fn created_segment_cannot_be_shrunk_by_a_peer() {
        let seg = Segment::create("hs-test-seal", 8192).unwrap();
        let peer = File::from(seg.try_clone_fd().unwrap());
        assert!(peer.set_len(0).is_err());
        assert!(peer.set_len(1 << 20).is_err());
    }

    #[test]
    fn checked_ptr_rejects_out_of_bounds_and_misaligned_ranges() {
        let seg = Segment::create("hs-test-bounds", 4096).unwrap();
        let region = seg.region();
        assert!(region.checked_ptr(0, 4096, 64).is_ok());
        assert!(region.checked_ptr(4096, 0, 1).is_ok());
        assert!(matches!(
            region.checked_ptr(1, 4096, 1),
            Err(ShmError::Corrupted(_))
        ));
        assert!(matches!(
            region.checked_ptr(usize::MAX, 2, 1),
            Err(ShmError::Corrupted(_))
        ));
        assert!(matches!(
            region.checked_ptr(8, 8, 64),
            Err(ShmError::Corrupted(_))
        ));
    }

    #[test]
    fn region_outlives_the_segment() {
        let seg = Segment::create("hs-test-outlive", 4096).unwrap();
        let region = seg.region().clone();
        drop(seg);
        let p = region.checked_ptr(0, 1, 1).unwrap();
        // SAFETY: the region keeps the mapping alive; single threaded.
        unsafe { p.as_ptr().write(7) };
    }

    #[test]
    fn allocations_are_aligned_and_first_fit() {
        let mut alloc = SegmentAllocator::new(4096);
        let a = alloc.allocate(1).unwrap();
        let b = alloc.allocate(65).unwrap();
        let c = alloc.allocate(64).unwrap();
        assert_eq!((a, b, c), (0, 64, 192));
        assert_eq!(alloc.bytes_used(), 256);
        alloc.free(b).unwrap();
        // A 64-byte request goes to the first hole (b's), not the tail.
        assert_eq!(alloc.allocate(64).unwrap(), 64);
        assert_eq!(alloc.allocation_count(), 3);
    }

    #[test]
    fn freeing_coalesces_neighbours_back_to_one_range() {
        let mut alloc = SegmentAllocator::new(1024);
        let offsets: Vec<usize> = (0..16).map(|_| alloc.allocate(64).unwrap()).collect();
        assert!(alloc.allocate(1).is_err());
        for &o in offsets.iter().step_by(2) {
            alloc.free(o).unwrap();
        }
        assert_eq!(alloc.largest_free_range(), 64);
        for &o in offsets.iter().skip(1).step_by(2) {
            alloc.free(o).unwrap();
        }
        assert!(alloc.is_empty());
        assert_eq!(alloc.largest_free_range(), 1024);
        assert_eq!(alloc.allocate(1024).unwrap(), 0);
    }

    #[test]
    fn allocation_larger_than_any_free_range_is_no_space() {
        let mut alloc = SegmentAllocator::new(1000);
        assert!(matches!(alloc.allocate(1001), Err(ShmError::NoSpace(_))));
        assert!(matches!(
            alloc.allocate(usize::MAX),
            Err(ShmError::NoSpace(_))
        ));
        // The unaligned tail is usable: 1000 rounds to 1024 > 1000, but 960 fits.
        assert_eq!(alloc.allocate(960).unwrap(), 0);
    }

    #[test]
    fn freeing_an_unknown_or_double_freed_offset_is_invalid() {
        let mut alloc = SegmentAllocator::new(4096);
        let a = alloc.allocate(100).unwrap();
        assert!(matches!(alloc.free(64), Err(ShmError::InvalidValue(_))));
        alloc.free(a).unwrap();
        assert!(matches!(alloc.free(a), Err(ShmError::InvalidValue(_))));
        assert!(matches!(alloc.allocate(0), Err(ShmError::InvalidValue(_))));
    }

    #[test]
    fn random_alloc_free_never_overlaps_and_returns_to_empty() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut alloc = SegmentAllocator::new(64 * 1024);
        let mut live: Vec<(usize, usize)> = Vec::new();
        for _ in 0..5000 {
            if live.is_empty() || rng.random_bool(0.55) {
                let size = rng.random_range(1..4096);
                if let Ok(off) = alloc.allocate(size) {
                    assert_eq!(off % SEGMENT_ALLOC_ALIGN, 0);
                    let len = alloc.allocation_len(off).unwrap();
                    assert!(off + len <= alloc.size());
                    for &(o, l) in &live {
                        assert!(off + len <= o || o + l <= off, "overlap");
                    }
                    live.push((off, len));
                }
            } else {
                let i = rng.random_range(0..live.len());
                let (off, _) = live.swap_remove(i);
                alloc.free(off).unwrap();
            }
            let used: usize = live.iter().map(|&(_, l)| l).sum();
            assert_eq!(alloc.bytes_used(), used);
        }
        for (off, _) in live {
            alloc.free(off).unwrap();
        }
        assert!(alloc.is_empty());
        assert_eq!(alloc.largest_free_range(), 64 * 1024);
    }
}
