//! The receive buffer: in-order bytes for the application plus out-of-order reassembly.
//!
//! Bytes are stored at their distance from RCV.NXT in a chunk ring, whether they arrived in
//! order or ahead of a hole; the out-of-order map only records which ranges are present. When
//! a hole fills, RCV.NXT jumps over every range that now touches it. The map also remembers
//! which ranges changed most recently, because RFC 2018 wants the first SACK block to report
//! the newest data and the others to repeat recent blocks.

use crate::buffer::{ChunkPool, ChunkRing};
use crate::ranges::SeqRanges;
use crate::seqnum::SeqNum;

/// What one arriving segment did to the buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// New in-order bytes (RCV.NXT moved this far).
    pub(crate) advanced: usize,
    /// The segment landed beyond a hole.
    pub(crate) out_of_order: bool,
    /// It closed (part of) a hole, so the out-of-order map shrank.
    pub(crate) filled_hole: bool,
    /// Nothing in it was new.
    pub(crate) duplicate: bool,
}

/// Maximum SACK blocks we report.
pub(crate) const MAX_SACK_BLOCKS: usize = 3;

#[derive(Debug)]
pub(crate) struct RecvBuffer {
    ring: ChunkRing,
    nxt: SeqNum,
    len: usize,
    limit: usize,
    ooo: SeqRanges,
    recent: [Option<SeqNum>; MAX_SACK_BLOCKS],
}

impl RecvBuffer {
    pub(crate) fn new(nxt: SeqNum, limit: usize) -> Self {
        Self {
            ring: ChunkRing::default(),
            nxt,
            len: 0,
            limit,
            ooo: SeqRanges::default(),
            recent: [None; MAX_SACK_BLOCKS],
        }
    }

    /// RCV.NXT.
    pub(crate) fn nxt(&self) -> SeqNum {
        self.nxt
    }

    /// Readable in-order bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Free space from RCV.NXT on: the most we can advertise.
    pub(crate) fn free(&self) -> usize {
        self.limit.saturating_sub(self.len)
    }

    pub(crate) fn has_out_of_order(&self) -> bool {
        !self.ooo.is_empty()
    }

    /// Stores a segment's payload; bytes outside `[RCV.NXT, RCV.NXT + free)` are dropped.
    pub(crate) fn insert(&mut self, seq: SeqNum, data: &[u8], pool: &mut ChunkPool) -> Received {
        let mut out = Received::default();
        let (mut seq, mut data) = (seq, data);
        if seq.before(self.nxt) {
            let skip = self.nxt.distance_from(seq) as usize;
            if skip >= data.len() {
                out.duplicate = true;
                return out;
            }
            data = &data[skip..];
            seq = self.nxt;
        }
        let window_end = self.nxt + self.free() as u32;
        let room = window_end.distance_from(seq) as usize;
        let data = &data[..data.len().min(room)];
        if data.is_empty() {
            out.duplicate = true;
            return out;
        }
        let offset = self.len + seq.distance_from(self.nxt) as usize;
        self.ring.write_at(offset, data, pool);
        let end = seq + data.len() as u32;
        if seq == self.nxt {
            let before = self.nxt;
            self.nxt = end;
            while let Some(range_end) = self.ooo.pop_reaching(self.nxt) {
                out.filled_hole = true;
                self.nxt = self.nxt.latest(range_end);
            }
            out.advanced = self.nxt.distance_from(before) as usize;
            self.len += out.advanced;
            if self.ooo.is_empty() {
                self.recent = [None; MAX_SACK_BLOCKS];
                self.ooo.shrink_if_idle();
            }
        } else {
            let before = self.ooo_bytes();
            let merged = self.ooo.insert(seq, end);
            out.out_of_order = true;
            out.duplicate = self.ooo_bytes() == before;
            self.note_recent(merged);
        }
        out
    }

    fn ooo_bytes(&self) -> u64 {
        self.ooo
            .iter()
            .map(|(a, b)| u64::from(b.distance_from(a)))
            .sum()
    }

    fn note_recent(&mut self, merged: (SeqNum, SeqNum)) {
        let mut next = [Some(merged.0), None, None];
        let mut n = 1;
        for point in self.recent.into_iter().flatten() {
            if n == MAX_SACK_BLOCKS {
                break;
            }
            if !point.within(merged.0, merged.1) {
                next[n] = Some(point);
                n += 1;
            }
        }
        self.recent = next;
    }

    /// Up to three SACK blocks, the most recently changed first (RFC 2018 §4).
    pub(crate) fn sack_blocks(&self) -> [Option<(SeqNum, SeqNum)>; MAX_SACK_BLOCKS] {
        let mut blocks = [None; MAX_SACK_BLOCKS];
        let mut n = 0;
        for point in self.recent.into_iter().flatten() {
            if let Some(range) = self.ooo.containing(point) {
                if !blocks.contains(&Some(range)) {
                    blocks[n] = Some(range);
                    n += 1;
                }
            }
        }
        // Ranges not recently touched fill the rest, highest first.
        for range in self.ooo.iter().rev() {
            if n == MAX_SACK_BLOCKS {
                break;
            }
            if !blocks.contains(&Some(range)) {
                blocks[n] = Some(range);
                n += 1;
            }
        }
        blocks
    }

    /// Consumes the FIN's sequence number once every byte before it is in.
    pub(crate) fn accept_fin(&mut self) {
        self.nxt += 1;
    }

    /// Copies readable bytes into `out`.
    pub(crate) fn read(&mut self, out: &mut [u8], pool: &mut ChunkPool) -> usize {
        let n = out.len().min(self.len);
        self.ring.read_at(0, &mut out[..n]);
        self.consume(n, pool);
        n
    }

    /// Offers readable bytes in contiguous slices; `f` returns how many it took.
    pub(crate) fn read_with(
        &mut self,
        mut f: impl FnMut(&[u8]) -> usize,
        pool: &mut ChunkPool,
    ) -> usize {
        let mut total = 0;
        while self.len > 0 {
            let slice = self.ring.slice_at(0, self.len);
            let offered = slice.len();
            let taken = f(slice).min(offered);
            self.consume(taken, pool);
            total += taken;
            if taken < offered || taken == 0 {
                break;
            }
        }
        total
    }

    fn consume(&mut self, n: usize, pool: &mut ChunkPool) {
        self.len -= n;
        let beyond = self
            .ooo
            .last_end()
            .map_or(0, |end| end.distance_from(self.nxt) as usize);
        self.ring.consume(n, self.len + beyond, pool);
    }

    pub(crate) fn release(&mut self, pool: &mut ChunkPool) {
        self.ring.release_all(pool);
        self.len = 0;
        self.ooo.clear();
        self.recent = [None; MAX_SACK_BLOCKS];
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.ring.chunk_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8) ^ salt).collect()
    }

    fn block(a: u32, b: u32) -> Option<(SeqNum, SeqNum)> {
        Some((SeqNum::new(a), SeqNum::new(b)))
    }

    #[test]
    fn reassembles_out_of_order_segments() {
        let mut pool = ChunkPool::new(8);
        let start = SeqNum::new(u32::MAX - 100);
        let mut rb = RecvBuffer::new(start, 64 * 1024);
        let all = data(6000, 0x5a);
        let r = rb.insert(start + 3000, &all[3000..4500], &mut pool);
        assert!(r.out_of_order && r.advanced == 0);
        let r = rb.insert(start + 1000, &all[1000..2000], &mut pool);
        assert!(r.out_of_order);
        let r = rb.insert(start, &all[..1000], &mut pool);
        assert_eq!(r.advanced, 2000);
        assert!(r.filled_hole);
        let r = rb.insert(start + 2000, &all[2000..6000], &mut pool);
        assert_eq!(r.advanced, 4000);
        assert!(!rb.has_out_of_order());
        let mut out = vec![0; 6000];
        assert_eq!(rb.read(&mut out, &mut pool), 6000);
        assert_eq!(out, all);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn trims_duplicates_and_data_beyond_the_window() {
        let mut pool = ChunkPool::new(8);
        let start = SeqNum::new(1000);
        let mut rb = RecvBuffer::new(start, 4096);
        let all = data(8000, 1);
        assert_eq!(rb.insert(start, &all[..100], &mut pool).advanced, 100);
        assert!(rb.insert(start, &all[..100], &mut pool).duplicate);
        let r = rb.insert(start + 50, &all[50..8000], &mut pool);
        assert_eq!(r.advanced, 3996);
        assert_eq!(rb.free(), 0);
        assert!(
            rb.insert(start + 4096, &all[4096..4200], &mut pool)
                .duplicate
        );
        let mut taken = Vec::new();
        rb.read_with(
            |s| {
                taken.extend_from_slice(s);
                s.len()
            },
            &mut pool,
        );
        assert_eq!(taken, all[..4096]);
    }

    #[test]
    fn sack_blocks_report_the_newest_first() {
        let mut pool = ChunkPool::new(8);
        let mut rb = RecvBuffer::new(SeqNum::new(0), 1 << 20);
        let d = data(100, 2);
        rb.insert(SeqNum::new(200), &d, &mut pool);
        rb.insert(SeqNum::new(400), &d, &mut pool);
        rb.insert(SeqNum::new(600), &d, &mut pool);
        assert_eq!(
            rb.sack_blocks(),
            [block(600, 700), block(400, 500), block(200, 300)]
        );
        rb.insert(SeqNum::new(800), &d, &mut pool);
        assert_eq!(
            rb.sack_blocks(),
            [block(800, 900), block(600, 700), block(400, 500)]
        );
        // Extending an old block moves it to the front.
        rb.insert(SeqNum::new(150), &d[..50], &mut pool);
        assert_eq!(
            rb.sack_blocks(),
            [block(150, 300), block(800, 900), block(600, 700)]
        );
        rb.insert(SeqNum::new(0), &[0u8; 150], &mut pool);
        assert_eq!(rb.nxt(), SeqNum::new(300));
        assert_eq!(
            rb.sack_blocks(),
            [block(800, 900), block(600, 700), block(400, 500)]
        );
    }
}
