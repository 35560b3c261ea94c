//! The reproducible byte stream hoststack's transfer apps send and check:
//! the builtin transfer client, the external throughput client and the
//! tests all agree on it, so either end can verify what the other sent
//! without keeping a copy.

/// A reproducible byte stream: the same seed gives the same bytes, in any
/// chunking.
#[derive(Debug, Clone)]
pub struct PatternStream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl PatternStream {
    /// Starts the stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut out = out;
        // Finish the current word byte by byte, then go a word at a time.
        while self.used < 8 && !out.is_empty() {
            out[0] = self.word[self.used];
            self.used += 1;
            out = &mut out[1..];
        }
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word();
            let n = rest.len();
            rest.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_in_any_chunking() {
        let mut a = PatternStream::new(42);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = PatternStream::new(42);
        let mut pieces = Vec::new();
        for len in [1, 7, 8, 9, 100, 875] {
            let mut p = vec![0u8; len];
            b.fill(&mut p);
            pieces.extend_from_slice(&p);
        }
        assert_eq!(whole, pieces);
        let mut c = PatternStream::new(43);
        let mut other = vec![0u8; 1000];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }
}
