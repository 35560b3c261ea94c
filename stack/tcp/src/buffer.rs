//! Byte storage: an engine-wide pool of fixed-size chunks and the rings built from them.
//!
//! A connection's buffers hold only the chunks their bytes occupy; they grow on demand up to
//! the connection's limit and hand chunks back to the pool as data is acknowledged or read, so
//! an idle connection holds no buffer memory at all. The pool keeps a bounded number of free
//! chunks so steady traffic allocates nothing.

use std::collections::VecDeque;

/// Size of one buffer chunk.
pub(crate) const CHUNK_SIZE: usize = 4096;

type Chunk = Box<[u8]>;

/// Free chunks shared by every connection of an endpoint.
#[derive(Debug)]
pub(crate) struct ChunkPool {
    free: Vec<Chunk>,
    max_idle: usize,
    in_use: usize,
}

impl ChunkPool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            free: Vec::new(),
            max_idle,
            in_use: 0,
        }
    }

    fn take(&mut self) -> Chunk {
        self.in_use += 1;
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; CHUNK_SIZE].into_boxed_slice())
    }

    fn give(&mut self, chunk: Chunk) {
        self.in_use -= 1;
        if self.free.len() < self.max_idle {
            self.free.push(chunk);
        }
    }

    /// Chunks held by buffers right now.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use
    }
}

/// Bytes at offsets from a moving head, stored in chunks.
#[derive(Debug, Default)]
pub(crate) struct ChunkRing {
    chunks: VecDeque<Chunk>,
    /// Offset of logical byte 0 inside the first chunk.
    head: usize,
}

impl ChunkRing {
    /// Writes `data` at logical `offset`, allocating chunks up to its end.
    pub(crate) fn write_at(&mut self, offset: usize, data: &[u8], pool: &mut ChunkPool) {
        let end = self.head + offset + data.len();
        while self.chunks.len() * CHUNK_SIZE < end {
            self.chunks.push_back(pool.take());
        }
        let mut pos = self.head + offset;
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = &mut self.chunks[pos / CHUNK_SIZE];
            let at = pos % CHUNK_SIZE;
            let n = rest.len().min(CHUNK_SIZE - at);
            chunk[at..at + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            pos += n;
        }
    }

    /// Copies bytes from logical `offset` into `out` (which the caller sized within the data).
    pub(crate) fn read_at(&self, offset: usize, out: &mut [u8]) {
        let mut pos = self.head + offset;
        let mut done = 0;
        while done < out.len() {
            let Some(chunk) = self.chunks.get(pos / CHUNK_SIZE) else {
                return;
            };
            let at = pos % CHUNK_SIZE;
            let n = (out.len() - done).min(CHUNK_SIZE - at);
            out[done..done + n].copy_from_slice(&chunk[at..at + n]);
            done += n;
            pos += n;
        }
    }

    /// The contiguous bytes starting at logical `offset`, at most `max` of them.
    pub(crate) fn slice_at(&self, offset: usize, max: usize) -> &[u8] {
        let pos = self.head + offset;
        match self.chunks.get(pos / CHUNK_SIZE) {
            Some(chunk) => {
                let at = pos % CHUNK_SIZE;
                &chunk[at..(at + max).min(CHUNK_SIZE)]
            }
            None => &[],
        }
    }

    /// Drops `n` bytes from the front; `live` is how far data still extends after that, so
    /// chunks past it can go back to the pool.
    pub(crate) fn consume(&mut self, n: usize, live: usize, pool: &mut ChunkPool) {
        self.head += n;
        while self.head >= CHUNK_SIZE {
            match self.chunks.pop_front() {
                Some(chunk) => pool.give(chunk),
                None => break,
            }
            self.head -= CHUNK_SIZE;
        }
        if live == 0 {
            self.release_all(pool);
        }
    }

    /// Returns every chunk to the pool.
    pub(crate) fn release_all(&mut self, pool: &mut ChunkPool) {
        for chunk in self.chunks.drain(..) {
            pool.give(chunk);
        }
        self.head = 0;
        if self.chunks.capacity() > 64 {
            self.chunks = VecDeque::new();
        }
    }

    /// Chunks held.
    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
}

/// Data the application queued and the peer has not yet acknowledged, from SND.UNA on.
#[derive(Debug)]
pub(crate) struct SendBuffer {
    ring: ChunkRing,
    len: usize,
    limit: usize,
}

impl SendBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            ring: ChunkRing::default(),
            len: 0,
            limit,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn space(&self) -> usize {
        self.limit.saturating_sub(self.len)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Appends as much of `data` as fits; returns the bytes taken.
    pub(crate) fn write(&mut self, data: &[u8], pool: &mut ChunkPool) -> usize {
        let n = data.len().min(self.space());
        self.ring.write_at(self.len, &data[..n], pool);
        self.len += n;
        n
    }

    /// Copies queued bytes starting `offset` bytes after SND.UNA.
    pub(crate) fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.ring.read_at(offset, out);
    }

    /// Drops `n` acknowledged bytes.
    pub(crate) fn ack(&mut self, n: usize, pool: &mut ChunkPool) {
        let n = n.min(self.len);
        self.len -= n;
        self.ring.consume(n, self.len, pool);
    }

    pub(crate) fn release(&mut self, pool: &mut ChunkPool) {
        self.ring.release_all(pool);
        self.len = 0;
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.ring.chunk_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, salt: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect()
    }

    #[test]
    fn send_buffer_spans_chunks_and_returns_them_when_acked() {
        let mut pool = ChunkPool::new(16);
        let mut buf = SendBuffer::new(20_000);
        let data = pattern(30_000, 1);
        assert_eq!(buf.write(&data, &mut pool), 20_000);
        assert_eq!(buf.space(), 0);
        assert_eq!(pool.in_use(), 5);
        let mut out = vec![0; 5000];
        buf.read_at(3000, &mut out);
        assert_eq!(out, data[3000..8000]);
        buf.ack(9000, &mut pool);
        assert_eq!(pool.in_use(), 3);
        buf.read_at(0, &mut out);
        assert_eq!(out, data[9000..14000]);
        assert_eq!(buf.write(&data[20_000..], &mut pool), 9000);
        buf.ack(buf.len(), &mut pool);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(buf.chunk_count(), 0);
    }

    #[test]
    fn pool_reuses_chunks_and_bounds_idle_ones() {
        let mut pool = ChunkPool::new(2);
        let mut a = SendBuffer::new(1 << 20);
        a.write(&pattern(5 * CHUNK_SIZE, 2), &mut pool);
        a.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.free.len(), 2);
    }

    #[test]
    fn slices_stop_at_chunk_edges() {
        let mut pool = ChunkPool::new(4);
        let mut ring = ChunkRing::default();
        let data = pattern(CHUNK_SIZE + 100, 3);
        ring.write_at(0, &data, &mut pool);
        assert_eq!(ring.slice_at(CHUNK_SIZE - 10, 50).len(), 10);
        assert_eq!(
            ring.slice_at(CHUNK_SIZE, 50),
            &data[CHUNK_SIZE..CHUNK_SIZE + 50]
        );
    }
}
