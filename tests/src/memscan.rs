//! Searching another process's memory for bytes it must (or must not)
//! hold: its mappings from `/proc/PID/maps`, their bytes read with `pread`
//! on `/proc/PID/mem` (root, or the process's own user with ptrace
//! rights). Safe code only: the reads are file reads.
//!
//! A needle is indexed by every 8-byte window; the memory is looked at one
//! aligned 8-byte word at a time, so any copy of 39 or more contiguous
//! needle bytes, at any alignment and any offset into the needle, is
//! found (a hit is confirmed over 32 bytes).

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};
use std::collections::HashMap;

/// Bytes a hit must match, from the first aligned word on.
const CONFIRM: usize = 32;

/// One mapping of a process, as `/proc/PID/maps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// `rw-s` and the like.
    pub perms: String,
    /// The path column (`/memfd:hsct-3-5-0-7 (deleted)`, `[heap]`, empty).
    pub path: String,
}

impl Mapping {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Every mapping of process `pid`.
pub fn mappings(pid: u32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut cols = line.splitn(6, ' ');
        let (Some(range), Some(perms)) = (cols.next(), cols.next()) else {
            continue;
        };
        let path = cols.nth(3).unwrap_or("").trim().to_string();
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        out.push(Mapping {
            start: u64::from_str_radix(a, 16)?,
            end: u64::from_str_radix(b, 16)?,
            perms: perms.to_string(),
            path,
        });
    }
    Ok(out)
}

/// A needle ready to be searched for.
#[derive(Debug)]
pub struct Needle {
    bytes: Vec<u8>,
    /// 8-byte window -> its first offset in the needle.
    windows: HashMap<u64, u32>,
}

impl Needle {
    /// Indexes `bytes` (at least [`CONFIRM`] + 8 long).
    pub fn new(bytes: Vec<u8>) -> Self {
        let mut windows = HashMap::with_capacity(bytes.len());
        for (i, w) in bytes.windows(8).enumerate() {
            windows.entry(word(w)).or_insert(i as u32);
        }
        Self { bytes, windows }
    }

    /// The offset in `hay` (whose first byte is at an 8-aligned address)
    /// of the first copy of at least 32 needle bytes, if any.
    pub fn find_in(&self, hay: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at + CONFIRM <= hay.len() {
            if let Some(&j) = self.windows.get(&word(&hay[at..at + 8])) {
                let j = j as usize;
                let n = CONFIRM.min(self.bytes.len() - j);
                if n == CONFIRM && hay[at..at + n] == self.bytes[j..j + n] {
                    return Some(at);
                }
            }
            at += 8;
        }
        None
    }
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_ne_bytes(w)
}

/// Where a needle was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The mapping.
    pub mapping: Mapping,
    /// Its address.
    pub address: u64,
}

/// Searches every readable mapping of process `pid` that `filter` accepts
/// for `needle`; returns the hits (one per mapping at most) and the bytes
/// read. Mappings the kernel will not let us read (`[vvar]`, guard pages)
/// are skipped.
pub fn search(
    pid: u32,
    needle: &Needle,
    filter: impl Fn(&Mapping) -> bool,
) -> Result<(Vec<Hit>, u64)> {
    let mem = File::open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("opening /proc/{pid}/mem"))?;
    let mut hits = Vec::new();
    let mut read = 0u64;
    // Chunks overlap by a confirm window so a copy across a chunk's end is
    // still seen.
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    for m in mappings(pid)? {
        if !m.perms.starts_with('r') || !filter(&m) {
            continue;
        }
        let mut off = m.start;
        'mapping: while off < m.end {
            let n = ((m.end - off) as usize).min(CHUNK);
            let got = match mem.read_at(&mut buf[..n], off) {
                Ok(g) if g > 0 => g,
                _ => break 'mapping,
            };
            read += got as u64;
            if let Some(at) = needle.find_in(&buf[..got]) {
                hits.push(Hit {
                    mapping: m.clone(),
                    address: off + at as u64,
                });
                break 'mapping;
            }
            if got < n || off + (got as u64) >= m.end {
                break;
            }
            off += (got - CONFIRM - 8) as u64;
        }
    }
    Ok((hits, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn a_copy_at_any_alignment_and_offset_is_found_and_noise_is_not() {
        let mut rng = rand::rng();
        let mut needle = vec![0u8; 1 << 16];
        rng.fill_bytes(&mut needle);
        let n = Needle::new(needle.clone());
        for shift in 0..8 {
            let mut hay = vec![0u8; 1 << 14];
            rng.fill_bytes(&mut hay);
            assert_eq!(n.find_in(&hay), None);
            let from = 1000 + shift * 13;
            hay[333 + shift..333 + shift + 40].copy_from_slice(&needle[from..from + 40]);
            let at = n.find_in(&hay).expect("a 40-byte copy is found");
            assert!((333 + shift..333 + shift + 8).contains(&at), "{at}");
        }
    }

    #[test]
    fn this_process_finds_its_own_heap_bytes() {
        let mut rng = rand::rng();
        let mut needle = vec![0u8; 4096];
        rng.fill_bytes(&mut needle);
        let copy = needle.clone();
        let n = Needle::new(needle);
        let (hits, read) = search(std::process::id(), &n, |_| true).unwrap();
        assert!(read > 0);
        assert!(!hits.is_empty());
        drop(copy);
    }
}
