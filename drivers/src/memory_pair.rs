//! Two ends of an in-memory cable, like a veth with no kernel: what one port
//! transmits the other receives. For tests of the whole stack without root.
//!
//! Each port owns a [`FramePool`]; frames cross the cable as copies in
//! recycled buffers, so nothing is allocated per packet once warm. The cable
//! holds at most `capacity` frames per direction and drops beyond that, as a
//! full device ring would. Each port has an eventfd that turns readable when
//! the peer transmits.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use crate::counters::DriverCounters;
use crate::error::{DriverError, DriverResult};
use crate::frame_pool::{FramePool, PoolFrame};
use crate::{DeviceInfo, MacAddr, PacketIo, RxChecksumPolicy, sys};

/// Settings for [`memory_pair`].
#[derive(Debug, Clone)]
pub struct MemoryPairConfig {
    /// MTU of both ends.
    pub mtu: usize,
    /// Frames in each port's pool.
    pub frames: u32,
    /// Frames the cable holds per direction.
    pub capacity: usize,
    /// Ethernet addresses of the two ends.
    pub macs: [MacAddr; 2],
}

impl Default for MemoryPairConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            frames: 4096,
            capacity: 4096,
            macs: [[0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]],
        }
    }
}

#[derive(Debug)]
struct Direction {
    in_flight: Mutex<VecDeque<Vec<u8>>>,
    spare: Mutex<Vec<Vec<u8>>>,
    /// Signalled when the receiving port has frames waiting.
    wake: OwnedFd,
}

/// One end of an in-memory pair.
#[derive(Debug)]
pub struct MemoryPort {
    info: DeviceInfo,
    pool: FramePool,
    rx: Arc<Direction>,
    tx: Weak<Direction>,
    capacity: usize,
    counters: Arc<DriverCounters>,
}

/// Creates the two connected ports.
pub fn memory_pair(cfg: MemoryPairConfig) -> DriverResult<(MemoryPort, MemoryPort)> {
    if cfg.mtu < 576 || cfg.frames == 0 || cfg.capacity == 0 {
        return Err(DriverError::InvalidConfig(format!(
            "memory pair needs mtu >= 576 and non-zero frames and capacity, got {cfg:?}"
        )));
    }
    let dir = || -> DriverResult<Arc<Direction>> {
        Ok(Arc::new(Direction {
            in_flight: Mutex::new(VecDeque::with_capacity(cfg.capacity)),
            spare: Mutex::new(Vec::new()),
            wake: sys::eventfd().map_err(|e| DriverError::os("creating an eventfd", e))?,
        }))
    };
    let (a_to_b, b_to_a) = (dir()?, dir()?);
    let port = |i: usize, rx: &Arc<Direction>, tx: &Arc<Direction>| MemoryPort {
        info: DeviceInfo {
            name: format!("mem{i}"),
            queue: 0,
            mac: cfg.macs[i],
            mtu: cfg.mtu,
            frame_capacity: cfg.mtu + 14,
            max_burst: 64,
            rx_checksum: RxChecksumPolicy::VerifyAll,
            mode: "in-memory pair".into(),
        },
        pool: FramePool::new(cfg.frames, cfg.mtu + 14),
        rx: rx.clone(),
        tx: Arc::downgrade(tx),
        capacity: cfg.capacity,
        counters: Arc::default(),
    };
    let a = port(0, &b_to_a, &a_to_b);
    let b = port(1, &a_to_b, &b_to_a);
    Ok((a, b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned cable only means a test thread panicked mid-burst; the
    // queue itself is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PacketIo for MemoryPort {
    type Frame = PoolFrame;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn counters(&self) -> &Arc<DriverCounters> {
        &self.counters
    }

    fn rx_burst(&mut self, out: &mut VecDeque<PoolFrame>, max: usize) -> DriverResult<usize> {
        sys::eventfd_drain(self.rx.wake.as_raw_fd());
        let mut in_flight = lock(&self.rx.in_flight);
        let mut spare = Vec::new();
        let (mut n, mut bytes) = (0, 0);
        while n < max {
            let Some(mut frame) = self.pool.alloc() else {
                break;
            };
            let Some(buf) = in_flight.pop_front() else {
                self.pool.free(frame);
                break;
            };
            self.pool
                .write(&mut frame, buf.len(), |b| b.copy_from_slice(&buf));
            bytes += buf.len();
            spare.push(buf);
            out.push_back(frame);
            n += 1;
        }
        if !in_flight.is_empty() {
            // Frames left behind must wake the next sleep too.
            sys::eventfd_signal(self.rx.wake.as_raw_fd());
        }
        drop(in_flight);
        lock(&self.rx.spare).append(&mut spare);
        self.counters.add_rx(n, bytes);
        Ok(n)
    }

    fn alloc_tx(&mut self, out: &mut Vec<PoolFrame>, n: usize) -> usize {
        let mut got = 0;
        while got < n {
            let Some(f) = self.pool.alloc() else { break };
            out.push(f);
            got += 1;
        }
        got
    }

    fn release(&mut self, frames: &mut Vec<PoolFrame>) {
        for f in frames.drain(..) {
            self.pool.free(f);
        }
    }

    fn tx_burst(&mut self, frames: &mut Vec<PoolFrame>) -> DriverResult<usize> {
        let Some(tx) = self.tx.upgrade() else {
            // The cable is unplugged: frames are lost, as on a NIC whose
            // link went down.
            DriverCounters::bump(&self.counters.tx_ring_full, frames.len() as u64);
            self.release(frames);
            return Ok(0);
        };
        if frames.is_empty() {
            return Ok(0);
        }
        let mut spare = std::mem::take(&mut *lock(&tx.spare));
        let mut in_flight = lock(&tx.in_flight);
        let was_empty = in_flight.is_empty();
        let (mut sent, mut bytes, mut dropped) = (0, 0, 0);
        for f in frames.drain(..) {
            if in_flight.len() >= self.capacity {
                dropped += 1;
            } else {
                let data = self.pool.bytes(&f);
                let mut buf = spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(data);
                bytes += data.len();
                in_flight.push_back(buf);
                sent += 1;
            }
            self.pool.free(f);
        }
        drop(in_flight);
        lock(&tx.spare).append(&mut spare);
        if was_empty && sent > 0 {
            sys::eventfd_signal(tx.wake.as_raw_fd());
        }
        self.counters.add_tx(sent, bytes);
        DriverCounters::bump(&self.counters.tx_ring_full, dropped);
        Ok(sent)
    }

    fn rx_bytes<'a>(&'a self, frame: &'a PoolFrame) -> &'a [u8] {
        self.pool.bytes(frame)
    }

    fn write_frame<R>(
        &self,
        frame: &mut PoolFrame,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        self.pool.write(frame, len, fill)
    }

    fn fill_frame(&self, frame: &mut PoolFrame, fill: impl FnOnce(&mut [u8]) -> usize) -> usize {
        self.pool.fill(frame, fill)
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.rx.wake.as_fd()
    }

    fn prepare_sleep(&mut self) -> DriverResult<()> {
        if !lock(&self.rx.in_flight).is_empty() {
            sys::eventfd_signal(self.rx.wake.as_raw_fd());
        }
        Ok(())
    }
}

impl MemoryPort {
    /// Frames waiting on this port's receive side.
    pub fn pending(&self) -> usize {
        lock(&self.rx.in_flight).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameBuf;

    #[test]
    fn a_frame_sent_on_one_port_arrives_on_the_other() {
        let (mut a, mut b) = memory_pair(MemoryPairConfig::default()).unwrap();
        let mut tx = Vec::new();
        assert_eq!(a.alloc_tx(&mut tx, 1), 1);
        a.write_frame(&mut tx[0], 60, |buf| buf.fill(0xab)).unwrap();
        assert_eq!(a.tx_burst(&mut tx).unwrap(), 1);
        assert!(sys::poll_readable(b.poll_fd().as_raw_fd(), 0).unwrap());
        let mut rx = VecDeque::new();
        assert_eq!(b.rx_burst(&mut rx, 64).unwrap(), 1);
        assert_eq!(b.rx_bytes(&rx[0]), &[0xab; 60][..]);
        assert_eq!(rx[0].len(), 60);
        let mut spent: Vec<_> = rx.drain(..).collect();
        b.release(&mut spent);
        assert_eq!(a.counters().snapshot().tx_frames, 1);
        assert_eq!(b.counters().snapshot().rx_frames, 1);
    }

    #[test]
    fn a_full_cable_drops_and_counts() {
        let cfg = MemoryPairConfig {
            capacity: 2,
            ..Default::default()
        };
        let (mut a, b) = memory_pair(cfg).unwrap();
        let mut tx = Vec::new();
        a.alloc_tx(&mut tx, 3);
        for f in &mut tx {
            a.write_frame(f, 64, |_| ()).unwrap();
        }
        assert_eq!(a.tx_burst(&mut tx).unwrap(), 2);
        assert_eq!(a.counters().snapshot().tx_ring_full, 1);
        assert_eq!(b.pending(), 2);
    }

    #[test]
    fn transmitting_to_a_dropped_peer_drops_like_a_down_link() {
        let (mut a, b) = memory_pair(MemoryPairConfig::default()).unwrap();
        drop(b);
        let mut tx = Vec::new();
        a.alloc_tx(&mut tx, 1);
        assert_eq!(a.tx_burst(&mut tx).unwrap(), 0);
        assert!(tx.is_empty(), "frames were not returned to the pool");
        assert_eq!(a.counters().snapshot().tx_ring_full, 1);
    }
}
