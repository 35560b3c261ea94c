//! A hostile app's view of its own shared memory, from outside: the memfd
//! mappings of a (stopped) process, found through `/proc/PID/maps`, read and
//! written through `/proc/PID/mem`, and the message queue and fifo headers
//! in them, found by their magic.
//!
//! The layouts are the ones `hoststack-shm` documents (message_queue.rs and
//! fifo.rs): every header is 192 bytes at a 64-aligned offset with its
//! magic at +64.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};

/// Message queue header: consumer's `head` (u64).
pub const MQ_HEAD: u64 = 0;
/// Message queue header: magic "HSMQ" (u32).
pub const MQ_MAGIC: u64 = 64;
/// Message queue header: slot count (u32).
pub const MQ_SLOTS: u64 = 68;
/// Message queue header: slot payload size (u32).
pub const MQ_SLOT_SIZE: u64 = 72;
/// Message queue header: producers' `tail` (u64).
pub const MQ_TAIL: u64 = 128;
/// Fifo header: consumer's `head` (u32).
pub const FIFO_HEAD: u64 = 0;
/// Fifo header: magic "HSFF" (u32).
pub const FIFO_MAGIC: u64 = 64;
/// Fifo header: data size (u32).
pub const FIFO_SIZE: u64 = 68;
/// Fifo header: data offset in the segment (u64).
pub const FIFO_DATA_OFFSET: u64 = 72;
/// Fifo header: flags (u32), then high and low watermarks (u32 each).
pub const FIFO_FLAGS: u64 = 80;
/// Fifo header: producer's `tail` (u32).
pub const FIFO_TAIL: u64 = 128;
/// Both headers' size; a queue's slots follow its header.
pub const HEADER_SIZE: u64 = 192;

/// One memfd mapping of the process: its address range.
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
}

/// What the process's mappings hold, by address.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// The memfd mappings.
    pub mappings: Vec<Mapping>,
    /// Message queue headers (address, slot count, slot size).
    pub queues: Vec<(u64, u32, u32)>,
    /// Fifo headers (address, size).
    pub fifos: Vec<(u64, u32)>,
}

/// A process's memory, to read and write (root; the process is best
/// stopped).
#[derive(Debug)]
pub struct ProcMem {
    mem: File,
    pid: u32,
}

impl ProcMem {
    /// Opens `/proc/PID/mem` read-write.
    pub fn open(pid: u32) -> Result<Self> {
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .with_context(|| format!("opening /proc/{pid}/mem"))?;
        Ok(Self { mem, pid })
    }

    /// The process's memfd mappings (paths `/memfd:...`).
    pub fn memfd_mappings(&self) -> Result<Vec<Mapping>> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let mut v = Vec::new();
        for line in maps.lines() {
            if !line.contains("/memfd:") {
                continue;
            }
            let range = line.split_whitespace().next().context("maps line")?;
            let (a, b) = range.split_once('-').context("maps range")?;
            v.push(Mapping {
                start: u64::from_str_radix(a, 16)?,
                end: u64::from_str_radix(b, 16)?,
            });
        }
        Ok(v)
    }

    /// `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_exact_at(&mut buf, addr)
            .with_context(|| format!("reading {len} bytes at {addr:#x}"))?;
        Ok(buf)
    }

    /// Writes `bytes` at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(bytes, addr)
            .with_context(|| format!("writing {} bytes at {addr:#x}", bytes.len()))
    }

    /// The u32 at `addr`.
    pub fn u32_at(&self, addr: u64) -> Result<u32> {
        let b = self.read(addr, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// The u64 at `addr`.
    pub fn u64_at(&self, addr: u64) -> Result<u64> {
        let b = self.read(addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Writes a u32 at `addr`.
    pub fn put_u32(&self, addr: u64, v: u32) -> Result<()> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Writes a u64 at `addr`.
    pub fn put_u64(&self, addr: u64, v: u64) -> Result<()> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Every queue and fifo header in the memfd mappings, found by magic at
    /// 64-aligned offsets.
    pub fn shared_state(&self) -> Result<SharedState> {
        let mappings = self.memfd_mappings()?;
        let (mut queues, mut fifos) = (Vec::new(), Vec::new());
        for m in &mappings {
            let bytes = self.read(m.start, (m.end - m.start) as usize)?;
            let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
            let mut at = 0;
            while at + HEADER_SIZE as usize <= bytes.len() {
                let magic = &bytes[at + 64..at + 68];
                if magic == b"HSMQ" {
                    queues.push((m.start + at as u64, word(at + 68), word(at + 72)));
                } else if magic == b"HSFF" {
                    fifos.push((m.start + at as u64, word(at + 68)));
                }
                at += 64;
            }
        }
        Ok(SharedState {
            mappings,
            queues,
            fifos,
        })
    }
}
