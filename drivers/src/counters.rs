//! Per-queue counters, written by the queue's worker and read by anyone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one driver queue. Updated with relaxed atomics once per burst
/// by the owning worker; `show interface` and the benchmarks read them.
#[derive(Debug, Default)]
pub struct DriverCounters {
    /// Frames received.
    pub rx_frames: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames transmitted.
    pub tx_frames: AtomicU64,
    /// Bytes transmitted.
    pub tx_bytes: AtomicU64,
    /// Frames the kernel dropped before we saw them (ring full, no fill
    /// frames, too large for a frame).
    pub rx_kernel_drops: AtomicU64,
    /// Frames dropped because they were not well-formed Ethernet/IP/L4.
    pub rx_malformed: AtomicU64,
    /// Frames dropped because their L4 checksum was wrong.
    pub rx_bad_checksum: AtomicU64,
    /// TCP/UDP frames accepted without verifying their checksum (a veth
    /// peer's partial checksum, which only the pseudo-header sum fills).
    pub rx_checksum_unverified: AtomicU64,
    /// Transmit attempts that found the device ring full.
    pub tx_ring_full: AtomicU64,
    /// Times the kernel had to be kicked (need-wakeup, io_uring submits).
    pub kicks: AtomicU64,
}

/// A plain copy of [`DriverCounters`] at one moment.
#[allow(missing_docs)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DriverCountersSnapshot {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_kernel_drops: u64,
    pub rx_malformed: u64,
    pub rx_bad_checksum: u64,
    pub rx_checksum_unverified: u64,
    pub tx_ring_full: u64,
    pub kicks: u64,
}

impl DriverCounters {
    /// Adds a burst of received frames.
    pub fn add_rx(&self, frames: usize, bytes: usize) {
        self.rx_frames.fetch_add(frames as u64, Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Adds a burst of transmitted frames.
    pub fn add_tx(&self, frames: usize, bytes: usize) {
        self.tx_frames.fetch_add(frames as u64, Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Adds `n` to one counter.
    pub fn bump(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> DriverCountersSnapshot {
        DriverCountersSnapshot {
            rx_frames: self.rx_frames.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_frames: self.tx_frames.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_kernel_drops: self.rx_kernel_drops.load(Relaxed),
            rx_malformed: self.rx_malformed.load(Relaxed),
            rx_bad_checksum: self.rx_bad_checksum.load(Relaxed),
            rx_checksum_unverified: self.rx_checksum_unverified.load(Relaxed),
            tx_ring_full: self.tx_ring_full.load(Relaxed),
            kicks: self.kicks.load(Relaxed),
        }
    }
}

impl DriverCountersSnapshot {
    /// Element-wise sum, for totals over queues.
    pub fn add(&mut self, o: &Self) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.rx_kernel_drops += o.rx_kernel_drops;
        self.rx_malformed += o.rx_malformed;
        self.rx_bad_checksum += o.rx_bad_checksum;
        self.rx_checksum_unverified += o.rx_checksum_unverified;
        self.tx_ring_full += o.tx_ring_full;
        self.kicks += o.kicks;
    }
}
