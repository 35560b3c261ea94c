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
    /// Received frames whose partial checksum (the device's word: TAP
    /// `NEEDS_CSUM`) was checked by its seed and place instead of summed.
    pub rx_csum_partial: AtomicU64,
    /// Received frames whose checksum the device had verified (TAP
    /// `DATA_VALID`).
    pub rx_csum_device_verified: AtomicU64,
    /// Frames sent with a partial checksum for the device to complete.
    pub tx_csum_offloaded: AtomicU64,
    /// GSO super-frames received (one TCP segment or UDP train standing
    /// for many wire segments).
    pub rx_gso_frames: AtomicU64,
    /// Wire segments those super-frames stood for.
    pub rx_gso_segments: AtomicU64,
    /// GSO super-frames sent for the device to segment.
    pub tx_gso_frames: AtomicU64,
    /// Wire segments those super-frames became.
    pub tx_gso_segments: AtomicU64,
    /// UDP datagrams cut out of received UDP GSO trains.
    pub rx_gso_split: AtomicU64,
    /// Received frames dropped because their vnet header was malformed
    /// (unknown GSO type, a checksum offset outside the frame, a broken
    /// UDP train).
    pub rx_bad_offload: AtomicU64,
    /// Times the device found no receive buffer (the multishot read
    /// stopped until buffers came back), and datagrams of a UDP train that
    /// found no frame to be cut into (dropped).
    pub rx_no_buffers: AtomicU64,
    /// Transmissions the device refused (a write that failed).
    pub tx_errors: AtomicU64,
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
    pub rx_csum_partial: u64,
    pub rx_csum_device_verified: u64,
    pub tx_csum_offloaded: u64,
    pub rx_gso_frames: u64,
    pub rx_gso_segments: u64,
    pub tx_gso_frames: u64,
    pub tx_gso_segments: u64,
    pub rx_gso_split: u64,
    pub rx_bad_offload: u64,
    pub rx_no_buffers: u64,
    pub tx_errors: u64,
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
            rx_csum_partial: self.rx_csum_partial.load(Relaxed),
            rx_csum_device_verified: self.rx_csum_device_verified.load(Relaxed),
            tx_csum_offloaded: self.tx_csum_offloaded.load(Relaxed),
            rx_gso_frames: self.rx_gso_frames.load(Relaxed),
            rx_gso_segments: self.rx_gso_segments.load(Relaxed),
            tx_gso_frames: self.tx_gso_frames.load(Relaxed),
            tx_gso_segments: self.tx_gso_segments.load(Relaxed),
            rx_gso_split: self.rx_gso_split.load(Relaxed),
            rx_bad_offload: self.rx_bad_offload.load(Relaxed),
            rx_no_buffers: self.rx_no_buffers.load(Relaxed),
            tx_errors: self.tx_errors.load(Relaxed),
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
        self.rx_csum_partial += o.rx_csum_partial;
        self.rx_csum_device_verified += o.rx_csum_device_verified;
        self.tx_csum_offloaded += o.tx_csum_offloaded;
        self.rx_gso_frames += o.rx_gso_frames;
        self.rx_gso_segments += o.rx_gso_segments;
        self.tx_gso_frames += o.tx_gso_frames;
        self.tx_gso_segments += o.tx_gso_segments;
        self.rx_gso_split += o.rx_gso_split;
        self.rx_bad_offload += o.rx_bad_offload;
        self.rx_no_buffers += o.rx_no_buffers;
        self.tx_errors += o.tx_errors;
    }
}
