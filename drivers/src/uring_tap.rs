//! A TAP device (`IFF_TAP | IFF_NO_PI`) driven by `io_uring`: the datapath
//! for hosts without XDP.
//!
//! A fixed number of reads stay posted, each into a pool frame; a completed
//! read is a received frame. Transmits are writes from pool frames. All new
//! operations of one burst go to the kernel in one `io_uring_enter`. A frame
//! handed to the kernel is parked in `in_flight` (indexed by its pool index,
//! which is also the operation's `user_data`) until its completion arrives,
//! so its buffer outlives the operation.
//!
//! The ring's fd turns readable when a completion (a received frame) is
//! waiting, so it is what a worker sleeps on.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};
use tracing::{info, warn};

use crate::counters::DriverCounters;
use crate::error::{DriverError, DriverResult};
use crate::frame_pool::{FramePool, PoolFrame};
use crate::netdev::Netdev;
use crate::{DeviceInfo, FrameBuf, PacketIo, RxChecksumPolicy, sys};

/// Settings of one TAP queue.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// TAP device name (created when absent).
    pub ifname: String,
    /// Reads kept posted.
    pub rx_depth: u32,
    /// Frames in the pool (reads in flight + frames in hand + writes).
    pub frames: u32,
    /// Open with IFF_MULTI_QUEUE (one `TapQueue` per queue).
    pub multi_queue: bool,
    /// Queue index, for reporting.
    pub queue: u32,
}

impl TapConfig {
    /// Defaults for device `ifname`.
    pub fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.into(),
            rx_depth: 256,
            frames: 4096,
            multi_queue: false,
            queue: 0,
        }
    }
}

const WRITE_TAG: u64 = 1 << 32;

/// One TAP queue.
pub struct TapQueue {
    info: DeviceInfo,
    counters: Arc<DriverCounters>,
    ring: IoUring,
    tap: OwnedFd,
    pool: FramePool,
    /// Frames the kernel is reading into or writing from, by pool index.
    in_flight: Vec<Option<PoolFrame>>,
    reads_posted: u32,
    rx_depth: u32,
    unsubmitted: bool,
    /// Frames received while reaping write completions, for the next burst.
    early: VecDeque<PoolFrame>,
}

impl std::fmt::Debug for TapQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapQueue")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TapQueue {
    /// Opens (or creates) the TAP device, brings it up and posts the reads.
    pub fn open(cfg: &TapConfig) -> DriverResult<Self> {
        if cfg.rx_depth == 0 || cfg.frames < 2 * cfg.rx_depth {
            return Err(DriverError::InvalidConfig(format!(
                "TAP needs rx_depth > 0 and frames >= 2 * rx_depth (got {} and {})",
                cfg.rx_depth, cfg.frames
            )));
        }
        let tap = sys::open_tap(&cfg.ifname, cfg.multi_queue).map_err(|e| {
            DriverError::os(
                format!("opening TAP device '{}' (/dev/net/tun)", cfg.ifname),
                e,
            )
        })?;
        // io_uring arms its own poll on a blocking fd; a non-blocking one would
        // fail reads with EAGAIN instead.
        set_blocking(&tap)?;
        let dev = Netdev::lookup(&cfg.ifname)?;
        dev.set_up()?;
        let frame_size = (dev.mtu + 14).max(1514);
        let entries = (cfg.rx_depth * 2).next_power_of_two().max(64);
        let ring = IoUring::builder()
            .build(entries)
            .map_err(|e| DriverError::os("creating an io_uring", e))?;
        info!(ifname = %cfg.ifname, mtu = dev.mtu, "TAP queue open (io_uring)");
        let mut q = Self {
            info: DeviceInfo {
                name: cfg.ifname.clone(),
                queue: cfg.queue,
                // Our end needs its own address: the kernel side of the TAP
                // owns `dev.mac`.
                mac: stack_side_mac(dev.mac),
                mtu: dev.mtu,
                frame_capacity: frame_size,
                max_burst: 64,
                rx_checksum: RxChecksumPolicy::VerifyAll,
                mode: "io_uring TAP".into(),
            },
            counters: Arc::default(),
            ring,
            tap,
            pool: FramePool::new(cfg.frames, frame_size),
            in_flight: (0..cfg.frames).map(|_| None).collect(),
            reads_posted: 0,
            rx_depth: cfg.rx_depth,
            unsubmitted: false,
            early: VecDeque::new(),
        };
        q.post_reads();
        q.submit()?;
        Ok(q)
    }

    fn post_reads(&mut self) {
        while self.reads_posted < self.rx_depth {
            let Some(mut frame) = self.pool.alloc() else {
                break;
            };
            let buf = self.pool.buffer_mut(&mut frame);
            let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
            let idx = frame.index();
            let entry = opcode::Read::new(types::Fd(self.tap.as_raw_fd()), ptr, len)
                .build()
                .user_data(u64::from(idx));
            // SAFETY: the buffer belongs to `frame`, which is parked in
            // `in_flight` right below and stays there until this read's
            // completion is reaped, so it outlives the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.pool.free(frame);
                break;
            }
            self.in_flight[idx as usize] = Some(frame);
            self.reads_posted += 1;
            self.unsubmitted = true;
        }
    }

    fn submit(&mut self) -> DriverResult<()> {
        if self.unsubmitted {
            self.ring
                .submit()
                .map_err(|e| DriverError::os("submitting to the io_uring", e))?;
            self.unsubmitted = false;
            DriverCounters::bump(&self.counters.kicks, 1);
        }
        Ok(())
    }

    /// Reaps completions: reads become received frames, finished writes go
    /// back to the pool.
    fn reap(&mut self, out: Option<&mut VecDeque<PoolFrame>>, max: usize) -> usize {
        let mut out = out;
        let (mut n, mut bytes) = (0, 0);
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let tag = cqe.user_data();
            let idx = (tag & 0xffff_ffff) as usize;
            let Some(mut frame) = self.in_flight.get_mut(idx).and_then(Option::take) else {
                warn!(tag, "io_uring completion for no operation");
                continue;
            };
            if tag & WRITE_TAG != 0 {
                if cqe.result() < 0 {
                    DriverCounters::bump(&self.counters.tx_ring_full, 1);
                }
                self.pool.free(frame);
                continue;
            }
            self.reads_posted -= 1;
            let res = cqe.result();
            match (res, out.as_deref_mut()) {
                (len, Some(out)) if len > 0 => {
                    frame.set_len(len as usize);
                    bytes += len as usize;
                    out.push_back(frame);
                    n += 1;
                }
                (len, None) if len > 0 => {
                    // Reaped outside rx_burst: keep the frame for the next one.
                    frame.set_len(len as usize);
                    self.early.push_back(frame);
                }
                _ => {
                    if res < 0 && res != -libc::EAGAIN && res != -libc::EINTR {
                        warn!(ifname = %self.info.name, errno = -res, "TAP read failed");
                    }
                    self.pool.free(frame);
                }
            }
            if n >= max {
                break;
            }
        }
        drop(cq);
        self.counters.add_rx(n, bytes);
        n
    }
}

/// Flips the locally-administered bit pattern of the kernel's TAP address so
/// the two ends of the TAP never share one.
fn stack_side_mac(kernel: crate::MacAddr) -> crate::MacAddr {
    let mut mac = kernel;
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac[5] ^= 0x5a;
    mac
}

fn set_blocking(fd: &OwnedFd) -> DriverResult<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no pointers.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(DriverError::os(
                "setting the TAP fd blocking",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

impl PacketIo for TapQueue {
    type Frame = PoolFrame;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn counters(&self) -> &Arc<DriverCounters> {
        &self.counters
    }

    fn rx_burst(&mut self, out: &mut VecDeque<PoolFrame>, max: usize) -> DriverResult<usize> {
        let mut n = 0;
        while n < max {
            let Some(f) = self.early.pop_front() else {
                break;
            };
            out.push_back(f);
            n += 1;
        }
        n += self.reap(Some(out), max - n);
        self.post_reads();
        self.submit()?;
        Ok(n)
    }

    fn alloc_tx(&mut self, out: &mut Vec<PoolFrame>, n: usize) -> usize {
        // Keep enough frames back to re-post every read.
        let spare = self
            .pool
            .free_count()
            .saturating_sub((self.rx_depth - self.reads_posted) as usize);
        let take = n.min(spare);
        for _ in 0..take {
            if let Some(f) = self.pool.alloc() {
                out.push(f);
            }
        }
        take
    }

    fn release(&mut self, frames: &mut Vec<PoolFrame>) {
        for f in frames.drain(..) {
            self.pool.free(f);
        }
    }

    fn tx_burst(&mut self, frames: &mut Vec<PoolFrame>) -> DriverResult<usize> {
        self.reap(None, usize::MAX);
        let mut sent = 0;
        let mut bytes = 0;
        for frame in frames.iter() {
            let idx = frame.index();
            let entry = opcode::Write::new(
                types::Fd(self.tap.as_raw_fd()),
                self.pool.raw(frame),
                frame.len() as u32,
            )
            .build()
            .flags(squeue::Flags::empty())
            .user_data(WRITE_TAG | u64::from(idx));
            // SAFETY: the frame is moved into `in_flight` right below and stays
            // there until this write's completion is reaped, so its buffer
            // outlives the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                DriverCounters::bump(&self.counters.tx_ring_full, 1);
                break;
            }
            bytes += frame.len();
            sent += 1;
        }
        for frame in frames.drain(..sent) {
            let idx = frame.index() as usize;
            self.in_flight[idx] = Some(frame);
            self.unsubmitted = true;
        }
        self.submit()?;
        self.counters.add_tx(sent, bytes);
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
        // SAFETY: the ring's fd lives as long as `self.ring`, which outlives
        // the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    fn prepare_sleep(&mut self) -> DriverResult<()> {
        self.post_reads();
        self.submit()
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }
}
