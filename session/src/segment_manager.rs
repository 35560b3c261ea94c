//! Per-app-worker segment manager: owns the worker's shared-memory
//! segments and carves rx/tx fifo pairs out of them.
//!
//! The first segment is created with the manager, holds the worker's event
//! message queue and any preallocated fifos, and is protected: it lives as
//! long as the manager. When no segment has room for a new pair, a segment
//! of the additional size is added (if that size is non-zero); an added
//! segment that becomes empty is deleted. Additions and removals are
//! recorded as [`SegmentEvent`]s that the caller drains with
//! [`SegmentManager::take_events`] and turns into "add segment" / "remove
//! segment" messages to the app (the `Added` event carries a duplicate of
//! the memfd, ready for SCM_RIGHTS).
//!
//! Everything here is safe code over [`Segment`], [`Fifo`] and the
//! process-private [`hoststack_shm::segment::SegmentAllocator`]; the app cannot
//! corrupt the manager's bookkeeping.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use hashbrown::HashMap;

use hoststack_app_proto::app_event::APP_EVENT_SIZE;
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::options::AppOptions;
use hoststack_shm::fifo::{FIFO_HEADER_SIZE, FIFO_MAX_SIZE, Fifo, fifo_required_size};
use hoststack_shm::message_queue::MessageQueue;
use hoststack_shm::segment::{SEGMENT_ALLOC_ALIGN, Segment};

/// Sizing and preallocation options of one app worker's segments; they
/// mirror the app attach options of VPP's session layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentManagerConfig {
    /// Size of the first (protected) segment, in bytes.
    pub first_segment_size: usize,
    /// Size of each segment added when the others are full; 0 = never add.
    pub additional_segment_size: usize,
    /// Default rx fifo size, in bytes.
    pub rx_fifo_size: u32,
    /// Default tx fifo size, in bytes.
    pub tx_fifo_size: u32,
    /// Largest fifo size a request may ask for.
    pub max_fifo_size: u32,
    /// Fifo pairs (default sizes) allocated up front in the first segment
    /// and kept on a free list. Exclusive with `prealloc_fifo_headers`.
    pub prealloc_fifo_pairs: u32,
    /// Fifo headers reserved up front in the first segment; pairs placed in
    /// the first segment take their headers from this pool. Exclusive with
    /// `prealloc_fifo_pairs`.
    pub prealloc_fifo_headers: u32,
    /// Share (0..=100 %) of the first segment the preallocated fifos or
    /// headers may use; the preallocation count is reduced to what fits.
    pub first_alloc_percent: u8,
    /// Slots of the worker's event message queue, reserved in the first
    /// segment; 0 = no event queue space.
    pub event_queue_slots: u32,
    /// Payload bytes per event queue slot.
    pub event_queue_slot_size: u32,
}

impl Default for SegmentManagerConfig {
    fn default() -> Self {
        Self {
            first_segment_size: 32 << 20,
            additional_segment_size: 32 << 20,
            rx_fifo_size: 64 << 10,
            tx_fifo_size: 64 << 10,
            max_fifo_size: 16 << 20,
            prealloc_fifo_pairs: 0,
            prealloc_fifo_headers: 0,
            first_alloc_percent: 100,
            event_queue_slots: 2048,
            event_queue_slot_size: 64,
        }
    }
}

impl SegmentManagerConfig {
    /// The settings of one worker of an app attached with `o`.
    pub fn for_app(o: &AppOptions) -> Self {
        Self {
            first_segment_size: o.segment_size,
            additional_segment_size: o.add_segment_size,
            rx_fifo_size: o.rx_fifo_size,
            tx_fifo_size: o.tx_fifo_size,
            max_fifo_size: o.max_fifo_size,
            prealloc_fifo_pairs: o.prealloc_fifo_pairs,
            prealloc_fifo_headers: o.prealloc_fifo_headers,
            first_alloc_percent: o.pct_first_alloc,
            event_queue_slots: o.event_queue_size,
            event_queue_slot_size: APP_EVENT_SIZE as u32,
        }
    }
}

/// Where a fifo pair lives: what the app needs to attach both fifos
/// (segment index and header offsets) plus their sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FifoPair {
    /// Index of the segment holding both fifos.
    pub segment_index: u32,
    /// Header offset of the rx fifo (stack → app).
    pub rx_offset: usize,
    /// Data size of the rx fifo.
    pub rx_size: u32,
    /// Header offset of the tx fifo (app → stack).
    pub tx_offset: usize,
    /// Data size of the tx fifo.
    pub tx_size: u32,
}

/// A change in the set of segments that the app must learn about.
#[derive(Debug)]
pub enum SegmentEvent {
    /// A segment was added; send `fd` to the app so it can map it.
    Added {
        /// The new segment's index.
        index: u32,
        /// A duplicate of the segment's memfd.
        fd: OwnedFd,
        /// The segment's size in bytes.
        size: usize,
    },
    /// An emptied segment was deleted; the app should unmap it.
    Removed {
        /// The deleted segment's index.
        index: u32,
    },
}

/// How one fifo's bytes were obtained, so they can be given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FifoStorage {
    /// One allocation: header then data.
    Contiguous { offset: usize },
    /// Header from the preallocated header pool, data allocated apart.
    PooledHeader { header: usize, data: usize },
}

impl FifoStorage {
    fn header_offset(self) -> usize {
        match self {
            Self::Contiguous { offset } => offset,
            Self::PooledHeader { header, .. } => header,
        }
    }

    fn data_offset(self) -> usize {
        match self {
            Self::Contiguous { offset } => offset + FIFO_HEADER_SIZE,
            Self::PooledHeader { data, .. } => data,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PairRecord {
    segment_index: u32,
    rx: FifoStorage,
    rx_size: u32,
    tx: FifoStorage,
    tx_size: u32,
    preallocated: bool,
}

impl PairRecord {
    fn pair(&self) -> FifoPair {
        FifoPair {
            segment_index: self.segment_index,
            rx_offset: self.rx.header_offset(),
            rx_size: self.rx_size,
            tx_offset: self.tx.header_offset(),
            tx_size: self.tx_size,
        }
    }

    fn bytes(&self) -> usize {
        2 * FIFO_HEADER_SIZE + self.rx_size as usize + self.tx_size as usize
    }
}

/// Owns one app worker's segments and the fifo pairs allocated in them.
#[derive(Debug)]
pub struct SegmentManager {
    config: SegmentManagerConfig,
    name_prefix: String,
    segments: BTreeMap<u32, Segment>,
    first_segment_index: u32,
    next_segment_index: u32,
    /// Where segment indices come from when they must be unique across
    /// managers (a process may map segments of several app workers).
    ids: Option<Arc<AtomicU32>>,
    event_queue_offset: Option<usize>,
    free_preallocated_pairs: Vec<PairRecord>,
    free_pooled_headers: Vec<usize>,
    /// Live pairs, by (segment index, rx header offset).
    live_pairs: HashMap<(u32, usize), PairRecord>,
    events: Vec<SegmentEvent>,
    bytes_in_use: usize,
    /// The segment the last pair went to.
    last_placed: Option<u32>,
}

impl SegmentManager {
    /// Validates `config`, creates the first segment (named
    /// `{name_prefix}-0`), reserves the event queue space and performs the
    /// preallocation.
    ///
    /// `UnsupportedConfig` when both preallocation kinds are asked for;
    /// `InvalidValue` for zero or out-of-range sizes.
    pub fn new(name_prefix: &str, config: SegmentManagerConfig) -> SessionResult<Self> {
        Self::with_ids(name_prefix, config, None)
    }

    /// Like [`with_ids`](Self::with_ids), and the first segment is recorded
    /// as [`SegmentEvent::Added`] too: for a manager made after the app
    /// attached, whose first segment the app has not heard of.
    pub fn announced(
        name_prefix: &str,
        config: SegmentManagerConfig,
        ids: Arc<AtomicU32>,
    ) -> SessionResult<Self> {
        let mut m = Self::with_ids(name_prefix, config, Some(ids))?;
        let first = m.first_segment();
        let (index, fd, size) = (m.first_segment_index, first.try_clone_fd()?, first.size());
        m.events.push(SegmentEvent::Added { index, fd, size });
        Ok(m)
    }

    /// Like [`new`](Self::new), with segment indices taken from `ids`
    /// (shared by every manager of a session layer, so an index names one
    /// segment whichever app maps it).
    pub fn with_ids(
        name_prefix: &str,
        config: SegmentManagerConfig,
        ids: Option<Arc<AtomicU32>>,
    ) -> SessionResult<Self> {
        validate_config(&config)?;
        let first_segment_index = ids
            .as_ref()
            .map_or(0, |a| a.fetch_add(1, AtomicOrdering::Relaxed));
        let first = Segment::create(
            &segment_name(name_prefix, first_segment_index),
            config.first_segment_size,
        )?;
        let mut manager = Self {
            name_prefix: name_prefix.to_owned(),
            segments: BTreeMap::from([(first_segment_index, first)]),
            first_segment_index,
            next_segment_index: first_segment_index + 1,
            ids,
            event_queue_offset: None,
            free_preallocated_pairs: Vec::new(),
            free_pooled_headers: Vec::new(),
            live_pairs: HashMap::new(),
            events: Vec::new(),
            bytes_in_use: 0,
            last_placed: None,
            config,
        };
        if manager.config.event_queue_slots > 0 {
            let size = MessageQueue::required_size(
                manager.config.event_queue_slots,
                manager.config.event_queue_slot_size,
            )?;
            let offset = manager.first_segment_mut().allocate(size).map_err(|_| {
                SessionError::InvalidValue(format!(
                    "event queue of {size} bytes does not fit the first segment"
                ))
            })?;
            manager.event_queue_offset = Some(offset);
        }
        manager.preallocate();
        Ok(manager)
    }

    fn preallocate(&mut self) {
        let budget = (self.config.first_segment_size as u128
            * u128::from(self.config.first_alloc_percent)
            / 100) as usize;
        let (rx, tx) = (self.config.rx_fifo_size, self.config.tx_fifo_size);
        if self.config.prealloc_fifo_pairs > 0 {
            let per_pair = aligned(fifo_required_size(rx)) + aligned(fifo_required_size(tx));
            let count = (self.config.prealloc_fifo_pairs as usize).min(budget / per_pair);
            for _ in 0..count {
                let first = self.first_segment_index;
                let Some(record) = self.place_contiguous(first, rx, tx) else {
                    break;
                };
                self.free_preallocated_pairs.push(PairRecord {
                    preallocated: true,
                    ..record
                });
            }
            if self.free_preallocated_pairs.len() < self.config.prealloc_fifo_pairs as usize {
                tracing::debug!(
                    asked = self.config.prealloc_fifo_pairs,
                    got = self.free_preallocated_pairs.len(),
                    "fifo pair preallocation reduced to the first allocation share"
                );
            }
            // Hand them out lowest offset first.
            self.free_preallocated_pairs.reverse();
        } else if self.config.prealloc_fifo_headers > 0 {
            let mut count = (self.config.prealloc_fifo_headers as usize)
                .min(budget / FIFO_HEADER_SIZE)
                .min(self.first_segment().allocator().largest_free_range() / FIFO_HEADER_SIZE);
            if count == 0 {
                return;
            }
            let block = loop {
                match self.first_segment_mut().allocate(count * FIFO_HEADER_SIZE) {
                    Ok(block) => break block,
                    Err(_) if count > 1 => count /= 2,
                    Err(_) => return,
                }
            };
            self.free_pooled_headers = (0..count)
                .rev()
                .map(|i| block + i * FIFO_HEADER_SIZE)
                .collect();
        }
    }

    /// Allocates a pair of the configured default sizes.
    pub fn alloc_fifo_pair(&mut self) -> SessionResult<FifoPair> {
        self.alloc_fifo_pair_sized(self.config.rx_fifo_size, self.config.tx_fifo_size)
    }

    /// Allocates and formats an rx/tx fifo pair: from the preallocated free
    /// list if the sizes are the defaults, else in the first segment with
    /// room, else in a newly added segment (recorded as
    /// [`SegmentEvent::Added`]). `InvalidValue` for a size of zero or above
    /// the maximum; `NoSpace` when nothing fits and no segment may be
    /// added.
    pub fn alloc_fifo_pair_sized(&mut self, rx_size: u32, tx_size: u32) -> SessionResult<FifoPair> {
        Ok(self.alloc_fifos_sized(rx_size, tx_size)?.0)
    }

    /// Allocates a pair of the configured sizes and returns it with the
    /// stack's (rx, tx) handles: the ones formatting made, whose geometry
    /// the stack keeps privately. Never re-attach from the header, which
    /// the app may have rewritten.
    pub fn alloc_fifos(&mut self) -> SessionResult<(FifoPair, (Fifo, Fifo))> {
        self.alloc_fifos_sized(self.config.rx_fifo_size, self.config.tx_fifo_size)
    }

    /// [`SegmentManager::alloc_fifos`] with explicit sizes.
    pub fn alloc_fifos_sized(
        &mut self,
        rx_size: u32,
        tx_size: u32,
    ) -> SessionResult<(FifoPair, (Fifo, Fifo))> {
        for size in [rx_size, tx_size] {
            if size == 0 || size > self.config.max_fifo_size {
                return Err(SessionError::InvalidValue(format!(
                    "fifo size {size} not in 1..={}",
                    self.config.max_fifo_size
                )));
            }
        }
        let defaults = rx_size == self.config.rx_fifo_size && tx_size == self.config.tx_fifo_size;
        let record = match self.free_preallocated_pairs.pop() {
            Some(record) if defaults => record,
            other => {
                if let Some(record) = other {
                    self.free_preallocated_pairs.push(record);
                }
                self.place_anywhere(rx_size, tx_size)?
            }
        };
        let fifos = match self.format(&record) {
            Ok(f) => f,
            Err(e) => {
                self.release(record)?;
                return Err(e);
            }
        };
        self.live_pairs
            .insert((record.segment_index, record.rx.header_offset()), record);
        self.bytes_in_use += record.bytes();
        Ok((record.pair(), fifos))
    }

    fn place_anywhere(&mut self, rx_size: u32, tx_size: u32) -> SessionResult<PairRecord> {
        // The segment that took the last pair usually takes this one too, so
        // a pair costs O(1) however many segments exist; only when it is
        // full are the others tried, newest first.
        if let Some(index) = self.last_placed {
            if let Some(record) = self.place_in(index, rx_size, tx_size) {
                return Ok(record);
            }
        }
        let indices: Vec<u32> = self
            .segments
            .keys()
            .rev()
            .copied()
            .filter(|&i| Some(i) != self.last_placed)
            .collect();
        for index in indices {
            if let Some(record) = self.place_in(index, rx_size, tx_size) {
                self.last_placed = Some(index);
                return Ok(record);
            }
        }
        let needed = aligned(fifo_required_size(rx_size)) + aligned(fifo_required_size(tx_size));
        let size = self.config.additional_segment_size;
        if size == 0 || needed > size {
            return Err(SessionError::NoSpace(format!(
                "no room for a fifo pair of {rx_size}+{tx_size} bytes in {} segments",
                self.segments.len()
            )));
        }
        let index = self.add_segment(size)?;
        match self.place_in(index, rx_size, tx_size) {
            Some(record) => {
                self.last_placed = Some(index);
                Ok(record)
            }
            None => {
                self.remove_segment_if_empty(index);
                Err(SessionError::NoSpace("new segment too small".into()))
            }
        }
    }

    fn place_in(&mut self, index: u32, rx_size: u32, tx_size: u32) -> Option<PairRecord> {
        if index == self.first_segment_index && self.free_pooled_headers.len() >= 2 {
            if let Some(record) = self.place_with_pooled_headers(rx_size, tx_size) {
                return Some(record);
            }
        }
        self.place_contiguous(index, rx_size, tx_size)
    }

    fn place_contiguous(&mut self, index: u32, rx_size: u32, tx_size: u32) -> Option<PairRecord> {
        let segment = self.segments.get_mut(&index)?;
        let rx = segment.allocate(fifo_required_size(rx_size)).ok()?;
        let Ok(tx) = segment.allocate(fifo_required_size(tx_size)) else {
            let _ = segment.free(rx);
            return None;
        };
        Some(PairRecord {
            segment_index: index,
            rx: FifoStorage::Contiguous { offset: rx },
            rx_size,
            tx: FifoStorage::Contiguous { offset: tx },
            tx_size,
            preallocated: false,
        })
    }

    fn place_with_pooled_headers(&mut self, rx_size: u32, tx_size: u32) -> Option<PairRecord> {
        let index = self.first_segment_index;
        let segment = self.segments.get_mut(&index)?;
        let rx_data = segment.allocate(rx_size as usize).ok()?;
        let Ok(tx_data) = segment.allocate(tx_size as usize) else {
            let _ = segment.free(rx_data);
            return None;
        };
        let rx_header = self.free_pooled_headers.pop()?;
        let tx_header = self.free_pooled_headers.pop()?;
        Some(PairRecord {
            segment_index: index,
            rx: FifoStorage::PooledHeader {
                header: rx_header,
                data: rx_data,
            },
            rx_size,
            tx: FifoStorage::PooledHeader {
                header: tx_header,
                data: tx_data,
            },
            tx_size,
            preallocated: false,
        })
    }

    /// Writes fresh fifo headers for both fifos of `record`; the (rx, tx)
    /// handles, with the geometry given here.
    fn format(&self, record: &PairRecord) -> SessionResult<(Fifo, Fifo)> {
        let segment = self
            .segments
            .get(&record.segment_index)
            .ok_or_else(|| SessionError::InvalidValue("segment vanished".into()))?;
        let init = |storage: FifoStorage, size| {
            Fifo::init_with_data_at(
                segment.region(),
                storage.header_offset(),
                storage.data_offset(),
                size,
            )
        };
        Ok((
            init(record.rx, record.rx_size)?,
            init(record.tx, record.tx_size)?,
        ))
    }

    /// Frees a pair [`SegmentManager::alloc_fifo_pair`] returned. A
    /// preallocated pair goes back to the free list; otherwise its memory
    /// returns to its segment, and an added segment left empty is deleted
    /// (recorded as [`SegmentEvent::Removed`]). `InvalidValue` for a pair
    /// that is not live.
    pub fn free_fifo_pair(&mut self, pair: &FifoPair) -> SessionResult<()> {
        let key = (pair.segment_index, pair.rx_offset);
        match self.live_pairs.get(&key) {
            Some(record) if record.pair() == *pair => {}
            _ => {
                return Err(SessionError::InvalidValue(format!(
                    "{pair:?} is not a live fifo pair"
                )));
            }
        }
        let Some(record) = self.live_pairs.remove(&key) else {
            return Err(SessionError::InvalidValue("fifo pair vanished".into()));
        };
        self.bytes_in_use -= record.bytes();
        self.release(record)
    }

    fn release(&mut self, record: PairRecord) -> SessionResult<()> {
        if record.preallocated {
            self.free_preallocated_pairs.push(record);
            return Ok(());
        }
        let index = record.segment_index;
        let segment = self
            .segments
            .get_mut(&index)
            .ok_or_else(|| SessionError::InvalidValue(format!("no segment {index}")))?;
        for storage in [record.rx, record.tx] {
            match storage {
                FifoStorage::Contiguous { offset } => segment.free(offset)?,
                FifoStorage::PooledHeader { header, data } => {
                    segment.free(data)?;
                    self.free_pooled_headers.push(header);
                }
            }
        }
        self.remove_segment_if_empty(index);
        Ok(())
    }

    fn add_segment(&mut self, size: usize) -> SessionResult<u32> {
        let index = match &self.ids {
            Some(a) => a.fetch_add(1, AtomicOrdering::Relaxed),
            None => self.next_segment_index,
        };
        let next = index
            .checked_add(1)
            .ok_or_else(|| SessionError::NoSpace("segment indices exhausted".into()))?;
        let segment = Segment::create(&segment_name(&self.name_prefix, index), size)?;
        let fd = segment.try_clone_fd()?;
        self.next_segment_index = next;
        self.segments.insert(index, segment);
        self.events.push(SegmentEvent::Added { index, fd, size });
        tracing::debug!(index, size, prefix = %self.name_prefix, "segment added");
        Ok(index)
    }

    fn remove_segment_if_empty(&mut self, index: u32) {
        if index == self.first_segment_index {
            return;
        }
        if self.segments.get(&index).is_some_and(Segment::is_empty) {
            self.segments.remove(&index);
            if self.last_placed == Some(index) {
                self.last_placed = None;
            }
            self.events.push(SegmentEvent::Removed { index });
            tracing::debug!(index, prefix = %self.name_prefix, "empty segment removed");
        }
    }

    /// Attaches handles on both fifos of a live pair, `(rx, tx)`, from their
    /// headers as the app would (tests; the stack keeps the handles
    /// [`SegmentManager::alloc_fifos`] returned).
    pub fn fifos(&self, pair: &FifoPair) -> SessionResult<(Fifo, Fifo)> {
        let segment = self.segment(pair.segment_index).ok_or_else(|| {
            SessionError::InvalidValue(format!("no segment {}", pair.segment_index))
        })?;
        Ok((
            Fifo::attach(segment.region(), pair.rx_offset)?,
            Fifo::attach(segment.region(), pair.tx_offset)?,
        ))
    }

    /// Drains the recorded segment additions and removals, oldest first.
    pub fn take_events(&mut self) -> Vec<SegmentEvent> {
        std::mem::take(&mut self.events)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SegmentManagerConfig {
        &self.config
    }

    /// Index of the protected first segment.
    pub fn first_segment_index(&self) -> u32 {
        self.first_segment_index
    }

    /// The protected first segment.
    pub fn first_segment(&self) -> &Segment {
        &self.segments[&self.first_segment_index]
    }

    fn first_segment_mut(&mut self) -> &mut Segment {
        self.segments
            .get_mut(&self.first_segment_index)
            .expect("the first segment lives as long as the manager")
    }

    /// Offset in the first segment of the space reserved for the worker's
    /// event queue (format it with [`MessageQueue::init_at`]), if any.
    pub fn event_queue_offset(&self) -> Option<usize> {
        self.event_queue_offset
    }

    /// The segment with that index.
    pub fn segment(&self, index: u32) -> Option<&Segment> {
        self.segments.get(&index)
    }

    /// The memfd of the segment with that index (to send with SCM_RIGHTS).
    pub fn segment_fd(&self, index: u32) -> Option<BorrowedFd<'_>> {
        self.segments.get(&index).map(Segment::fd)
    }

    /// All segments, by index.
    pub fn segments(&self) -> impl Iterator<Item = (u32, &Segment)> {
        self.segments
            .iter()
            .map(|(&index, segment)| (index, segment))
    }

    /// Number of segments (at least 1: the first).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Fifos handed out and not yet freed (two per live pair).
    pub fn fifos_allocated(&self) -> usize {
        2 * self.live_pairs.len()
    }

    /// Bytes (headers plus data) of the fifos handed out and not yet
    /// freed; preallocated fifos on the free list do not count.
    pub fn bytes_in_use(&self) -> usize {
        self.bytes_in_use
    }

    /// Preallocated pairs waiting on the free list.
    pub fn free_preallocated_pairs(&self) -> usize {
        self.free_preallocated_pairs.len()
    }

    /// Preallocated fifo headers not in use.
    pub fn free_pooled_headers(&self) -> usize {
        self.free_pooled_headers.len()
    }
}

fn validate_config(config: &SegmentManagerConfig) -> SessionResult<()> {
    if config.prealloc_fifo_pairs > 0 && config.prealloc_fifo_headers > 0 {
        return Err(SessionError::UnsupportedConfig(
            "prealloc fifo pairs and prealloc fifo headers are mutually exclusive".into(),
        ));
    }
    if config.first_segment_size == 0 {
        return Err(SessionError::InvalidValue(
            "first segment size must be non-zero".into(),
        ));
    }
    if config.max_fifo_size == 0 || config.max_fifo_size > FIFO_MAX_SIZE {
        return Err(SessionError::InvalidValue(format!(
            "max fifo size {} not in 1..={FIFO_MAX_SIZE}",
            config.max_fifo_size
        )));
    }
    for (what, size) in [("rx", config.rx_fifo_size), ("tx", config.tx_fifo_size)] {
        if size == 0 || size > config.max_fifo_size {
            return Err(SessionError::InvalidValue(format!(
                "{what} fifo size {size} not in 1..={}",
                config.max_fifo_size
            )));
        }
    }
    if config.first_alloc_percent > 100 {
        return Err(SessionError::InvalidValue(format!(
            "first allocation percentage {} above 100",
            config.first_alloc_percent
        )));
    }
    Ok(())
}

fn segment_name(prefix: &str, index: u32) -> String {
    format!("{prefix}-{index}")
}

fn aligned(size: usize) -> usize {
    size.next_multiple_of(SEGMENT_ALLOC_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Small sizes so tests exercise growth quickly.
    fn small_config() -> SegmentManagerConfig {
        SegmentManagerConfig {
            first_segment_size: 64 << 10,
            additional_segment_size: 32 << 10,
            rx_fifo_size: 4096,
            tx_fifo_size: 4096,
            max_fifo_size: 16 << 10,
            prealloc_fifo_pairs: 0,
            prealloc_fifo_headers: 0,
            first_alloc_percent: 100,
            event_queue_slots: 16,
            event_queue_slot_size: 64,
        }
    }

    fn pair_bytes(rx: u32, tx: u32) -> usize {
        aligned(fifo_required_size(rx)) + aligned(fifo_required_size(tx))
    }

    #[test]
    fn the_stacks_fifo_handles_keep_their_geometry_when_the_app_rewrites_the_header() {
        use std::os::unix::fs::FileExt;
        let mut sm = SegmentManager::new("hs-sm-geom", small_config()).unwrap();
        let (pair, (rx, _tx)) = sm.alloc_fifos().unwrap();
        // The app writes through its own mapping of the memfd: size and
        // data offset (bytes 68..80 of the header) made huge.
        let file = std::fs::File::from(
            sm.segment(pair.segment_index)
                .unwrap()
                .try_clone_fd()
                .unwrap(),
        );
        file.write_all_at(&[0xff; 12], pair.rx_offset as u64 + 68)
            .unwrap();
        assert_eq!(rx.size(), 4096);
        assert_eq!(rx.data_offset(), pair.rx_offset + FIFO_HEADER_SIZE);
        // The next use finds the header rewritten: corruption (the verdict
        // on the app), never a fifo aliasing others.
        let mut p = rx.producer();
        assert!(matches!(
            p.enqueue(b"still mine"),
            Err(hoststack_shm::ShmError::Corrupted(_))
        ));
        // Attaching from the header now fails, as it would for the app.
        assert!(sm.fifos(&pair).is_err());
    }

    #[test]
    fn both_preallocation_kinds_are_unsupported() {
        let config = SegmentManagerConfig {
            prealloc_fifo_pairs: 2,
            prealloc_fifo_headers: 2,
            ..small_config()
        };
        assert!(matches!(
            SegmentManager::new("hs-sm", config),
            Err(SessionError::UnsupportedConfig(_))
        ));
    }

    #[test]
    fn out_of_range_config_values_are_invalid() {
        let bad = [
            SegmentManagerConfig {
                first_segment_size: 0,
                ..small_config()
            },
            SegmentManagerConfig {
                rx_fifo_size: 32 << 10,
                ..small_config()
            },
            SegmentManagerConfig {
                tx_fifo_size: 0,
                ..small_config()
            },
            SegmentManagerConfig {
                first_alloc_percent: 101,
                ..small_config()
            },
            SegmentManagerConfig {
                max_fifo_size: FIFO_MAX_SIZE + 1,
                ..small_config()
            },
            SegmentManagerConfig {
                event_queue_slots: 100_000,
                ..small_config()
            },
        ];
        for config in bad {
            assert!(
                matches!(
                    SegmentManager::new("hs-sm", config.clone()),
                    Err(SessionError::InvalidValue(_))
                ),
                "{config:?}"
            );
        }
    }

    #[test]
    fn fifo_size_above_max_is_invalid() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        assert!(matches!(
            sm.alloc_fifo_pair_sized(16 << 10, (16 << 10) + 1),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(matches!(
            sm.alloc_fifo_pair_sized(0, 1),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(sm.alloc_fifo_pair_sized(16 << 10, 16 << 10).is_ok());
    }

    #[test]
    fn allocated_fifos_are_formatted_and_usable_from_another_mapping() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        let pair = sm.alloc_fifo_pair().unwrap();
        assert_eq!(pair.segment_index, sm.first_segment_index());
        assert_eq!((pair.rx_size, pair.tx_size), (4096, 4096));
        let (rx, _tx) = sm.fifos(&pair).unwrap();
        rx.producer().enqueue(b"to the app").unwrap();
        let fd = sm.first_segment().try_clone_fd().unwrap();
        let app_view = Segment::map(fd, sm.first_segment().size()).unwrap();
        let app_rx = Fifo::attach(app_view.region(), pair.rx_offset).unwrap();
        let app_tx = Fifo::attach(app_view.region(), pair.tx_offset).unwrap();
        assert!(app_tx.is_empty().unwrap());
        let mut buf = [0; 16];
        let n = app_rx.consumer().dequeue(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to the app");
    }

    #[test]
    fn event_queue_space_is_reserved_in_the_first_segment() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        let offset = sm.event_queue_offset().unwrap();
        let pair = sm.alloc_fifo_pair().unwrap();
        let mut mq =
            MessageQueue::init_at(sm.first_segment().region(), offset, 16, 64, None).unwrap();
        mq.try_send(b"event").unwrap();
        let (rx, tx) = sm.fifos(&pair).unwrap();
        assert!(
            rx.is_empty().unwrap() && tx.is_empty().unwrap(),
            "no overlap"
        );
        let mut buf = [0; 64];
        assert_eq!(mq.try_recv(&mut buf).unwrap(), Some(5));
        let none = SegmentManager::new(
            "hs-sm",
            SegmentManagerConfig {
                event_queue_slots: 0,
                ..small_config()
            },
        )
        .unwrap();
        assert_eq!(none.event_queue_offset(), None);
    }

    #[test]
    fn full_segments_grow_by_an_added_segment_that_is_reported() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        let mut pairs = Vec::new();
        while sm.segment_count() == 1 {
            pairs.push(sm.alloc_fifo_pair().unwrap());
        }
        let added = pairs.last().unwrap().segment_index;
        assert_ne!(added, sm.first_segment_index());
        let events = sm.take_events();
        assert_eq!(events.len(), 1);
        let SegmentEvent::Added { index, fd, size } = &events[0] else {
            panic!("expected an Added event, got {events:?}");
        };
        assert_eq!((*index, *size), (added, 32 << 10));
        // The fd is ready to be mapped by the app.
        let fd = fd.try_clone().unwrap();
        let mapped = Segment::map(fd, *size).unwrap();
        assert!(Fifo::attach(mapped.region(), pairs.last().unwrap().rx_offset).is_ok());
        assert!(sm.segment_fd(added).is_some());
        assert!(sm.take_events().is_empty());
    }

    #[test]
    fn no_additional_segment_size_means_no_space() {
        let mut sm = SegmentManager::new(
            "hs-sm",
            SegmentManagerConfig {
                additional_segment_size: 0,
                ..small_config()
            },
        )
        .unwrap();
        let err = loop {
            if let Err(e) = sm.alloc_fifo_pair() {
                break e;
            }
        };
        assert!(matches!(err, SessionError::NoSpace(_)));
        assert_eq!(sm.segment_count(), 1);
        assert!(sm.take_events().is_empty());
    }

    #[test]
    fn pair_larger_than_the_additional_segment_is_no_space() {
        let mut sm = SegmentManager::new(
            "hs-sm",
            SegmentManagerConfig {
                first_segment_size: 8192,
                event_queue_slots: 0,
                ..small_config()
            },
        )
        .unwrap();
        assert!(matches!(
            sm.alloc_fifo_pair_sized(16 << 10, 16 << 10),
            Err(SessionError::NoSpace(_))
        ));
        assert_eq!(sm.segment_count(), 1);
    }

    #[test]
    fn emptied_added_segment_is_removed_but_the_first_is_protected() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        let mut pairs = Vec::new();
        while sm.segment_count() == 1 {
            pairs.push(sm.alloc_fifo_pair().unwrap());
        }
        let added = pairs.last().unwrap().segment_index;
        sm.take_events();
        let last = pairs.pop().unwrap();
        sm.free_fifo_pair(&last).unwrap();
        let events = sm.take_events();
        assert!(matches!(events[..], [SegmentEvent::Removed { index }] if index == added));
        assert_eq!(sm.segment_count(), 1);
        for pair in pairs {
            sm.free_fifo_pair(&pair).unwrap();
        }
        assert_eq!(sm.segment_count(), 1, "first segment is protected");
        assert!(sm.take_events().is_empty());
    }

    #[test]
    fn counters_return_to_zero_after_everything_is_freed() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        let baseline_used = sm.first_segment().bytes_used();
        let mut pairs = Vec::new();
        for i in 0..40 {
            let size = 1024 * (i % 8 + 1);
            pairs.push(sm.alloc_fifo_pair_sized(size, size / 2).unwrap());
        }
        assert!(sm.segment_count() > 1);
        assert_eq!(sm.fifos_allocated(), 80);
        let expected: usize = pairs
            .iter()
            .map(|p| 2 * FIFO_HEADER_SIZE + (p.rx_size + p.tx_size) as usize)
            .sum();
        assert_eq!(sm.bytes_in_use(), expected);
        for pair in &pairs {
            sm.free_fifo_pair(pair).unwrap();
        }
        assert_eq!(sm.fifos_allocated(), 0);
        assert_eq!(sm.bytes_in_use(), 0);
        assert_eq!(sm.segment_count(), 1);
        assert_eq!(sm.first_segment().bytes_used(), baseline_used);
        let removed = sm
            .take_events()
            .iter()
            .filter(|e| matches!(e, SegmentEvent::Removed { .. }))
            .count();
        assert!(removed >= 1);
    }

    #[test]
    fn freeing_an_unknown_or_already_freed_pair_is_invalid() {
        let mut sm = SegmentManager::new("hs-sm", small_config()).unwrap();
        let pair = sm.alloc_fifo_pair().unwrap();
        let forged = FifoPair {
            tx_offset: pair.tx_offset + 64,
            ..pair
        };
        assert!(matches!(
            sm.free_fifo_pair(&forged),
            Err(SessionError::InvalidValue(_))
        ));
        sm.free_fifo_pair(&pair).unwrap();
        assert!(matches!(
            sm.free_fifo_pair(&pair),
            Err(SessionError::InvalidValue(_))
        ));
    }

    #[test]
    fn preallocated_pairs_are_reduced_to_the_first_allocation_share() {
        let config = SegmentManagerConfig {
            first_segment_size: 1 << 20,
            prealloc_fifo_pairs: 1000,
            first_alloc_percent: 50,
            ..small_config()
        };
        let sm = SegmentManager::new("hs-sm", config).unwrap();
        let expected = (1 << 19) / pair_bytes(4096, 4096);
        assert_eq!(sm.free_preallocated_pairs(), expected);
        assert!(sm.first_segment().bytes_used() <= (1 << 19) + 64 * 1024);
    }

    #[test]
    fn preallocated_pairs_are_handed_out_then_reused() {
        let config = SegmentManagerConfig {
            prealloc_fifo_pairs: 3,
            ..small_config()
        };
        let mut sm = SegmentManager::new("hs-sm", config).unwrap();
        assert_eq!(sm.free_preallocated_pairs(), 3);
        let used_before = sm.first_segment().bytes_used();
        let a = sm.alloc_fifo_pair().unwrap();
        assert_eq!(
            sm.first_segment().bytes_used(),
            used_before,
            "no new allocation"
        );
        assert_eq!(sm.free_preallocated_pairs(), 2);
        // Dirty it, free it, get it back clean.
        let (rx, _) = sm.fifos(&a).unwrap();
        rx.producer().enqueue(b"stale").unwrap();
        sm.free_fifo_pair(&a).unwrap();
        assert_eq!(sm.free_preallocated_pairs(), 3);
        let b = sm.alloc_fifo_pair().unwrap();
        assert_eq!(a, b);
        assert!(sm.fifos(&b).unwrap().0.is_empty().unwrap(), "reformatted");
        // Non-default sizes do not take preallocated pairs.
        let c = sm.alloc_fifo_pair_sized(1024, 1024).unwrap();
        assert_eq!(sm.free_preallocated_pairs(), 2);
        sm.free_fifo_pair(&b).unwrap();
        sm.free_fifo_pair(&c).unwrap();
        assert_eq!((sm.bytes_in_use(), sm.fifos_allocated()), (0, 0));
        assert_eq!(sm.first_segment().bytes_used(), used_before);
    }

    #[test]
    fn preallocated_headers_serve_first_segment_pairs() {
        let config = SegmentManagerConfig {
            prealloc_fifo_headers: 4,
            ..small_config()
        };
        let mut sm = SegmentManager::new("hs-sm", config).unwrap();
        assert_eq!(sm.free_pooled_headers(), 4);
        let a = sm.alloc_fifo_pair().unwrap();
        let b = sm.alloc_fifo_pair().unwrap();
        assert_eq!(sm.free_pooled_headers(), 0);
        let c = sm.alloc_fifo_pair().unwrap();
        for pair in [a, b, c] {
            let (rx, tx) = sm.fifos(&pair).unwrap();
            assert_eq!((rx.size(), tx.size()), (4096, 4096));
        }
        let (rx_a, _) = sm.fifos(&a).unwrap();
        assert_ne!(rx_a.data_offset(), rx_a.header_offset() + FIFO_HEADER_SIZE);
        let (rx_c, _) = sm.fifos(&c).unwrap();
        assert_eq!(rx_c.data_offset(), rx_c.header_offset() + FIFO_HEADER_SIZE);
        sm.free_fifo_pair(&a).unwrap();
        assert_eq!(sm.free_pooled_headers(), 2);
        sm.free_fifo_pair(&b).unwrap();
        sm.free_fifo_pair(&c).unwrap();
        assert_eq!(sm.free_pooled_headers(), 4);
        assert_eq!(sm.bytes_in_use(), 0);
    }

    #[test]
    fn preallocated_headers_are_reduced_to_the_first_allocation_share() {
        let config = SegmentManagerConfig {
            prealloc_fifo_headers: 10_000,
            first_alloc_percent: 10,
            ..small_config()
        };
        let sm = SegmentManager::new("hs-sm", config).unwrap();
        assert_eq!(sm.free_pooled_headers(), (64 << 10) / 10 / FIFO_HEADER_SIZE);
    }

    #[test]
    fn random_alloc_free_keeps_fifos_disjoint_and_counters_exact() {
        let mut rng = StdRng::seed_from_u64(11);
        let config = SegmentManagerConfig {
            prealloc_fifo_headers: 6,
            ..small_config()
        };
        let mut sm = SegmentManager::new("hs-sm", config).unwrap();
        let baseline = sm.first_segment().bytes_used();
        let mut live: Vec<FifoPair> = Vec::new();
        for step in 0..3000 {
            if live.is_empty() || rng.random_bool(0.5) {
                let rx = rng.random_range(1..=8 << 10);
                let tx = rng.random_range(1..=8 << 10);
                let pair = sm.alloc_fifo_pair_sized(rx, tx).unwrap();
                // Tag both fifos so overlap would show as a wrong byte.
                let (rxf, txf) = sm.fifos(&pair).unwrap();
                rxf.producer().enqueue(&[step as u8; 1]).unwrap();
                txf.producer().enqueue(&[!(step as u8); 1]).unwrap();
                live.push(pair);
            } else {
                let pair = live.swap_remove(rng.random_range(0..live.len()));
                sm.free_fifo_pair(&pair).unwrap();
            }
            assert_eq!(sm.fifos_allocated(), 2 * live.len());
        }
        // Live fifos (headers and data) never overlap.
        let mut ranges: Vec<(u32, usize, usize)> = Vec::new();
        for pair in &live {
            let (rx, tx) = sm.fifos(pair).unwrap();
            for fifo in [rx, tx] {
                let h = fifo.header_offset();
                let d = fifo.data_offset();
                ranges.push((pair.segment_index, h, h + FIFO_HEADER_SIZE));
                if d != h + FIFO_HEADER_SIZE {
                    ranges.push((pair.segment_index, d, d + fifo.size() as usize));
                } else {
                    ranges.last_mut().unwrap().2 += fifo.size() as usize;
                }
            }
        }
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].0 != w[1].0 || w[0].2 <= w[1].1, "overlap {w:?}");
        }
        // Every live fifo still holds exactly its one tag byte.
        for pair in &live {
            let (rx, tx) = sm.fifos(pair).unwrap();
            assert_eq!(rx.max_dequeue().unwrap(), 1);
            assert_eq!(tx.max_dequeue().unwrap(), 1);
            let (mut a, mut b) = ([0u8], [0u8]);
            rx.consumer().peek(0, &mut a).unwrap();
            tx.consumer().peek(0, &mut b).unwrap();
            assert_eq!(a[0], !b[0]);
        }
        for pair in live.drain(..) {
            sm.free_fifo_pair(&pair).unwrap();
        }
        assert_eq!((sm.bytes_in_use(), sm.fifos_allocated()), (0, 0));
        assert_eq!(sm.segment_count(), 1);
        assert_eq!(sm.first_segment().bytes_used(), baseline);
        assert_eq!(sm.free_pooled_headers(), 6);
    }
}
