//! A TAP device driven by `io_uring`: the datapath for hosts without XDP.
//!
//! One [`TapQueue`] is one TAP fd and one ring; a multi-queue TAP
//! (`IFF_MULTI_QUEUE`) gets one queue per worker, each fd attached to the
//! same device, and the kernel keeps each flow on the queue its frames were
//! last written from.
//!
//! # Receive
//!
//! The fd is non-blocking, so a read with nothing queued arms io_uring's
//! own poll on the TAP instead of parking a kernel worker thread in a
//! blocking read (which is what a blocking fd does: one `iou-wrk` thread per
//! posted read, all woken by every frame). Where the kernel has it (6.7+),
//! one multishot read stays armed over a provided buffer ring
//! ([`mem::BufRing`]): every frame the TAP queues becomes a completion
//! naming the buffer it landed in, with no resubmission. Elsewhere reads
//! stay posted, one per buffer ([`RxMode::SingleShot`]).
//!
//! Completions are produced by task work in the worker's own thread. With
//! `COOP_TASKRUN` (5.19+) the kernel does not interrupt a busy-polling
//! worker for them; it raises `IORING_SQ_TASKRUN` instead, which
//! [`PacketIo::rx_burst`] reads on every call and answers with one
//! `io_uring_enter`: a frame is in the transport within microseconds of its
//! arrival, and an idle poll loop makes no system call at all. A sleeping
//! worker is woken by the same task work (the sleep is an `io_uring_enter`
//! too), and the completion makes the ring's fd readable for the sleeper.
//!
//! # Transmit
//!
//! Frames are written from a pool of registered buffers (`WRITE_FIXED`) to
//! the registered TAP fd; every write of a burst goes to the kernel in one
//! `io_uring_enter`, where a TAP write completes at once. A frame stays out
//! of the pool until its completion is reaped.
//!
//! # Offloads
//!
//! With [`TapOffload::Auto`] or [`TapOffload::Checksum`] the TAP is opened
//! with `IFF_VNET_HDR` and `TUNSETOFFLOAD`: every frame carries a
//! `virtio_net_hdr` ([`crate::offload`]) in the bytes in front of it, which
//! [`PacketIo::rx_offload`] reads and [`PacketIo::set_tx_offload`] writes.
//! Received super-frames need 64 KB buffers, so with segmentation offloads
//! on the buffers grow from an MTU to 64 KB (and the pools shrink).

#![allow(unsafe_code)]

mod features;
mod mem;
mod steering;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use tracing::{debug, info, warn};

pub use features::{KernelVersion, RxMode, UringFeatures};
pub use steering::FlowSteering;

use crate::counters::DriverCounters;
use crate::error::{DriverError, DriverResult};
use crate::netdev::Netdev;
use crate::offload::{GsoKind, MAX_GSO_PACKET, Offloads, RxOffload, TxOffload, VNET_HDR_LEN};
use crate::{DeviceInfo, FrameBuf, PacketIo, RxChecksumPolicy, sys};
use mem::{Area, BufRing};
use steering::Steering;

/// Which offloads to ask the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TapOffload {
    /// Checksums and segmentation both ways (TSO4, TSO6) and UDP trains
    /// from the kernel (USO, 6.2+), as far as the kernel has them.
    #[default]
    Auto,
    /// Partial checksums both ways, no super-frames.
    Checksum,
    /// No vnet header: full frames with full checksums, as a plain TAP.
    Off,
}

impl std::str::FromStr for TapOffload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "on" => Ok(Self::Auto),
            "csum" | "checksum" => Ok(Self::Checksum),
            "off" | "none" => Ok(Self::Off),
            _ => Err(format!(
                "unknown offload setting '{s}' (expected auto, csum or off)"
            )),
        }
    }
}

impl std::fmt::Display for TapOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Checksum => "csum",
            Self::Off => "off",
        })
    }
}

/// Settings of one TAP queue.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// TAP device name (created when absent).
    pub ifname: String,
    /// Receive buffers (a power of two is used: rounded up).
    pub rx_buffers: u32,
    /// Transmit frames in the pool; `None` picks by frame size.
    pub tx_frames: Option<u32>,
    /// Queues of the device the stack serves, one `TapQueue` each; more
    /// than one opens with `IFF_MULTI_QUEUE` and steers flows (see
    /// [`FlowSteering`]).
    pub queues: u32,
    /// This queue's index.
    pub queue: u32,
    /// Offloads to ask for.
    pub offload: TapOffload,
    /// How frames are read.
    pub rx_mode: RxMode,
}

impl TapConfig {
    /// Defaults for device `ifname`.
    pub fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.into(),
            rx_buffers: 256,
            tx_frames: None,
            queues: 1,
            queue: 0,
            offload: TapOffload::Auto,
            rx_mode: RxMode::Auto,
        }
    }
}

/// A frame of a TAP queue: a receive buffer or a transmit pool frame.
#[derive(Debug)]
pub struct TapFrame {
    /// Receive buffer id, or transmit pool index with [`TX_SLOT`] set.
    slot: u32,
    len: u32,
    /// What the vnet header said (receive frames).
    offload: RxOffload,
}

const TX_SLOT: u32 = 1 << 31;

impl FrameBuf for TapFrame {
    fn len(&self) -> usize {
        self.len as usize
    }
}

// Completion tags: the kind in the top byte, a slot below.
const TAG_KIND: u64 = 0xff << 56;
const TAG_RX_MULTI: u64 = 1 << 56;
const TAG_RX: u64 = 2 << 56;
const TAG_TX: u64 = 3 << 56;

const BUFFER_GROUP: u16 = 0;
/// Fixed buffer indexes: the transmit pool, then the receive buffers.
const TX_BUF_INDEX: u16 = 0;
const RX_BUF_INDEX: u16 = 1;

const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

/// Room for an Ethernet header with a VLAN tag.
const L2_ROOM: usize = 18;

/// One TAP queue.
pub struct TapQueue {
    // Dropped first: the ring (and every registration on it) goes before
    // the memory it points into.
    ring: IoUring,
    tap: OwnedFd,
    info: DeviceInfo,
    counters: Arc<DriverCounters>,
    offloads: Offloads,
    features: UringFeatures,
    /// vnet header bytes in front of every frame (0 without offloads).
    hdr: usize,
    rx: Area,
    rx_size: usize,
    rx_count: u32,
    /// The multishot read's buffer ring.
    buf_ring: Option<BufRing>,
    /// Buffers the kernel holds (in the ring, or under a posted read).
    rx_with_kernel: u32,
    /// The multishot read is armed.
    rx_armed: bool,
    /// Single reads: buffers not posted yet.
    rx_idle: Vec<u32>,
    tx: Area,
    tx_size: usize,
    tx_free: Vec<u32>,
    /// Received frames reaped and not handed out yet.
    ready: VecDeque<TapFrame>,
    /// Completions of one reap (kept to reuse its memory).
    cqes: Vec<(u64, i32, u32)>,
    unsubmitted: bool,
    started: bool,
    /// The device's steering program (multi-queue only).
    steering: Option<Arc<Steering>>,
    flow_steering: Option<FlowSteering>,
}

impl std::fmt::Debug for TapQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapQueue")
            .field("info", &self.info)
            .field("offloads", &self.offloads)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// Opens the TAP fd, attaching to a multi-queue device when the device is
/// one even if a single queue was asked for.
fn attach(cfg: &TapConfig, vnet: bool) -> DriverResult<OwnedFd> {
    let what = || format!("opening TAP device '{}' (/dev/net/tun)", cfg.ifname);
    match sys::open_tap(&cfg.ifname, cfg.queues > 1, vnet) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if cfg.queues > 1 {
                return Err(DriverError::InvalidConfig(format!(
                    "TAP device '{0}' is not a multi-queue device, so it cannot take more than one queue: recreate it with `ip tuntap add dev {0} mode tap multi_queue` (`hoststack lab up --tap --queues N` does)",
                    cfg.ifname
                )));
            }
            // A persistent multi-queue device refuses a single-queue attach.
            sys::open_tap(&cfg.ifname, true, vnet).map_err(|e| DriverError::os(what(), e))
        }
        Err(e) => Err(DriverError::os(what(), e)),
    }
}

/// Asks for `cfg`'s offloads; returns what the kernel took.
fn negotiate(
    fd: &OwnedFd,
    mode: TapOffload,
    kernel: Option<KernelVersion>,
) -> DriverResult<Offloads> {
    if mode == TapOffload::Off {
        // The device keeps what an earlier user set: without a vnet header
        // a partial checksum or a super-frame could not be told apart.
        sys::tun_set_offload(fd, 0)
            .map_err(|e| DriverError::os("clearing the TAP's offloads (TUNSETOFFLOAD)", e))?;
        return Ok(Offloads::default());
    }
    sys::tun_set_vnet_hdr(fd, VNET_HDR_LEN)
        .map_err(|e| DriverError::os("setting the TAP's vnet header size", e))?;
    let mut flags = TUN_F_CSUM;
    if mode == TapOffload::Auto {
        flags |= TUN_F_TSO4 | TUN_F_TSO6;
        if UringFeatures::at_least(kernel, features::TUN_USO) {
            flags |= TUN_F_USO4 | TUN_F_USO6;
        }
    }
    let set = sys::tun_set_offload(fd, flags).or_else(|e| {
        // A kernel without USO refuses the whole set: try without it.
        if flags & TUN_F_USO4 != 0 && e.raw_os_error() == Some(libc::EINVAL) {
            flags &= !(TUN_F_USO4 | TUN_F_USO6);
            sys::tun_set_offload(fd, flags)
        } else {
            Err(e)
        }
    });
    set.map_err(|e| DriverError::os("setting the TAP's offloads (TUNSETOFFLOAD)", e))?;
    Ok(Offloads {
        vnet_hdr: true,
        checksum: flags & TUN_F_CSUM != 0,
        tso4: flags & TUN_F_TSO4 != 0,
        tso6: flags & TUN_F_TSO6 != 0,
        uso: flags & TUN_F_USO4 != 0,
    })
}

/// A ring with the setup flags the kernel has, else a plain one.
fn build_ring(entries: u32, feats: &mut UringFeatures) -> DriverResult<IoUring> {
    if feats.coop_taskrun {
        let r = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 8)
            .build(entries);
        match r {
            Ok(r) => return Ok(r),
            Err(e) => {
                debug!("io_uring without COOP_TASKRUN ({e})");
                feats.coop_taskrun = false;
            }
        }
    }
    IoUring::builder()
        .setup_cqsize(entries * 8)
        .build(entries)
        .map_err(|e| DriverError::os("creating an io_uring", e))
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl TapQueue {
    /// Opens (or creates) the TAP device, negotiates offloads, brings it up
    /// and sets up the ring. Receiving starts on the first call that polls
    /// the queue, in that thread: io_uring runs a request's completion work
    /// in the thread that submitted it.
    pub fn open(cfg: &TapConfig) -> DriverResult<Self> {
        if cfg.rx_buffers == 0 || cfg.rx_buffers > 1 << 15 {
            return Err(DriverError::InvalidConfig(format!(
                "TAP receive buffers must be 1 to 32768, not {}",
                cfg.rx_buffers
            )));
        }
        if cfg.queues == 0 || cfg.queue >= cfg.queues {
            return Err(DriverError::InvalidConfig(format!(
                "TAP queue {} of {} does not exist",
                cfg.queue, cfg.queues
            )));
        }
        if cfg.tx_frames == Some(0) {
            return Err(DriverError::InvalidConfig(
                "TAP transmit frames must be at least 1".into(),
            ));
        }
        let kernel = sys::kernel_release()
            .ok()
            .and_then(|r| KernelVersion::parse(&r));
        let vnet = cfg.offload != TapOffload::Off;
        let (tap, steering) = if cfg.queues > 1 {
            let (fd, s) =
                Steering::queue_fd(&cfg.ifname, cfg.queues, cfg.queue, || attach(cfg, vnet))?;
            (fd, Some(s))
        } else {
            (attach(cfg, vnet)?, None)
        };
        let offloads = negotiate(&tap, cfg.offload, kernel)?;
        let dev = Netdev::lookup(&cfg.ifname)?;
        dev.set_up()?;
        let hdr = if offloads.vnet_hdr { VNET_HDR_LEN } else { 0 };
        let gso = offloads.tso4 || offloads.tso6 || offloads.uso;
        let frame_max = if gso {
            MAX_GSO_PACKET + L2_ROOM
        } else {
            dev.mtu + L2_ROOM
        };
        // Buffers start where the kernel writes the vnet header; a 10-byte
        // header puts the IP header at 24, 8-aligned.
        let rx_size = round_up(hdr + frame_max, 2048);
        let rx_count = cfg.rx_buffers.next_power_of_two();
        let tx_size = rx_size;
        let tx_count = cfg.tx_frames.unwrap_or(if gso { 256 } else { 1024 });
        let entries = 256u32;
        let mut feats = UringFeatures::plan(kernel, cfg.rx_mode, true);
        let ring = build_ring(entries, &mut feats)?;
        let mut probe = Probe::new();
        let probed = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::ReadMulti::CODE);
        feats.multishot &= probed;
        if cfg.rx_mode == RxMode::Multishot && !feats.multishot {
            return Err(DriverError::InvalidConfig(format!(
                "multishot reads need Linux 6.7 or later (this is {}): use the single-read mode",
                kernel.map_or("an unknown kernel".into(), |k| k.to_string())
            )));
        }
        let rx = Area::new(rx_size * rx_count as usize)?;
        let tx = Area::new(tx_size * tx_count as usize)?;
        let mut q = Self {
            ring,
            tap,
            info: DeviceInfo {
                name: cfg.ifname.clone(),
                queue: cfg.queue,
                // Our end needs its own address: the kernel side of the TAP
                // owns `dev.mac`.
                mac: stack_side_mac(dev.mac),
                mtu: dev.mtu,
                frame_capacity: tx_size - hdr,
                max_burst: 64,
                rx_checksum: RxChecksumPolicy::VerifyAll,
                mode: String::new(),
            },
            counters: Arc::default(),
            offloads,
            features: feats,
            hdr,
            rx,
            rx_size,
            rx_count,
            buf_ring: None,
            rx_with_kernel: 0,
            rx_armed: false,
            rx_idle: (0..rx_count).rev().collect(),
            tx,
            tx_size,
            tx_free: (0..tx_count).rev().collect(),
            ready: VecDeque::with_capacity(rx_count as usize),
            cqes: Vec::with_capacity(entries as usize * 8),
            unsubmitted: false,
            started: false,
            flow_steering: steering.as_ref().map(|s| FlowSteering {
                queue: cfg.queue,
                queues: s.queues(),
            }),
            steering,
        };
        q.register();
        q.info.mode = format!(
            "io_uring TAP ({}; offloads {})",
            q.features.describe(),
            q.offloads.describe()
        );
        info!(
            ifname = %cfg.ifname,
            queue = cfg.queue,
            mtu = dev.mtu,
            kernel = %kernel.map_or("unknown".into(), |k| k.to_string()),
            mode = %q.info.mode,
            "TAP queue open"
        );
        Ok(q)
    }

    /// Registers the fd, the buffers and the buffer ring, dropping each
    /// feature whose registration the kernel refuses.
    fn register(&mut self) {
        let sub = self.ring.submitter();
        if self.features.fixed_file {
            if let Err(e) = sub.register_files(&[self.tap.as_raw_fd()]) {
                debug!("TAP fd not registered ({e}): plain fd");
                self.features.fixed_file = false;
            }
        }
        if self.features.fixed_buffers {
            let iov = [
                libc::iovec {
                    iov_base: self.tx.base().cast(),
                    iov_len: self.tx.len(),
                },
                libc::iovec {
                    iov_base: self.rx.base().cast(),
                    iov_len: self.rx.len(),
                },
            ];
            // SAFETY: both areas live as long as the queue, and the ring
            // (with its registrations) is dropped before them.
            if let Err(e) = unsafe { sub.register_buffers(&iov) } {
                debug!("TAP buffers not registered ({e}): plain reads and writes");
                self.features.fixed_buffers = false;
            }
        }
        if self.features.multishot {
            match BufRing::new(self.rx_count as u16) {
                Ok(mut ring) => {
                    // SAFETY: the ring's memory lives in `self.buf_ring`,
                    // which outlives the io_uring (dropped first); it is
                    // unregistered with the ring.
                    let reg = unsafe {
                        sub.register_buf_ring_with_flags(
                            ring.addr(),
                            ring.entries(),
                            BUFFER_GROUP,
                            0,
                        )
                    };
                    match reg {
                        Ok(()) => {
                            for bid in std::mem::take(&mut self.rx_idle) {
                                let addr = self.rx_buffer(bid);
                                ring.push(bid as u16, addr, self.rx_size as u32);
                            }
                            ring.publish();
                            self.rx_with_kernel = self.rx_count;
                            self.buf_ring = Some(ring);
                        }
                        Err(e) => {
                            debug!("no buffer ring ({e}): single reads");
                            self.features.multishot = false;
                        }
                    }
                }
                Err(e) => {
                    debug!("no buffer ring ({e}): single reads");
                    self.features.multishot = false;
                }
            }
        }
    }

    /// The io_uring features the queue runs with.
    pub fn features(&self) -> &UringFeatures {
        &self.features
    }

    fn rx_buffer(&self, bid: u32) -> *mut u8 {
        self.rx
            .at(bid as usize * self.rx_size)
            .expect("receive buffer inside its area")
    }

    fn tx_buffer(&self, idx: u32) -> *mut u8 {
        self.tx
            .at(idx as usize * self.tx_size)
            .expect("transmit frame inside its area")
    }

    /// Start of a frame's buffer (its vnet header) and the buffer's size.
    fn buffer(&self, frame: &TapFrame) -> (*mut u8, usize) {
        if frame.slot & TX_SLOT != 0 {
            (self.tx_buffer(frame.slot & !TX_SLOT), self.tx_size)
        } else {
            (self.rx_buffer(frame.slot), self.rx_size)
        }
    }

    /// Where a frame's bytes start (after the vnet header) and how many of
    /// `len` fit its buffer.
    fn data_at(&self, frame: &TapFrame, len: usize) -> (*mut u8, usize) {
        let (base, size) = self.buffer(frame);
        // SAFETY: every buffer is `size >= hdr` bytes inside its area, so
        // the offset stays in bounds.
        (unsafe { base.add(self.hdr) }, len.min(size - self.hdr))
    }

    /// The frame's bytes after the vnet header, `len` of them (clamped to
    /// the buffer), to read.
    fn data<'a>(&'a self, frame: &'a TapFrame, len: usize) -> &'a [u8] {
        let (ptr, len) = self.data_at(frame, len);
        // SAFETY: `ptr..ptr + len` lies inside the frame's buffer. Only the
        // holder of `frame` (not Clone, never in the kernel's hands while
        // held) touches these bytes; the borrow is tied to the frame's.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The same bytes, to write: the frame is borrowed exclusively, so no
    /// other reference to them exists meanwhile.
    fn data_mut<'a>(&'a self, frame: &'a mut TapFrame, len: usize) -> &'a mut [u8] {
        let (ptr, len) = self.data_at(frame, len);
        // SAFETY: as in `data`, and `frame` is borrowed mutably for as long
        // as the returned slice lives.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// The vnet header in front of a frame (queues with `hdr > 0`).
    fn vnet(&self, frame: &TapFrame) -> [u8; VNET_HDR_LEN] {
        let (base, _) = self.buffer(frame);
        // SAFETY: every buffer of a queue with a vnet header starts with
        // VNET_HDR_LEN bytes for it; ownership as in `data`. Copied out.
        unsafe { *base.cast::<[u8; VNET_HDR_LEN]>() }
    }

    /// Writes the vnet header in front of a frame (queues with `hdr > 0`).
    fn set_vnet(&self, frame: &mut TapFrame, h: [u8; VNET_HDR_LEN]) {
        let (base, _) = self.buffer(frame);
        // SAFETY: as in `vnet`; `frame` is borrowed mutably, so nobody else
        // reads these bytes meanwhile.
        unsafe { *base.cast::<[u8; VNET_HDR_LEN]>() = h }
    }

    /// Pushes an entry, submitting first when the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> DriverResult<()> {
        // SAFETY: every entry built here points at a receive buffer the
        // queue keeps out of everyone's hands until the entry's completion
        // is reaped, or at no memory (the multishot read picks from the
        // registered buffer ring).
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            self.enter()?;
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                return Err(DriverError::InvalidConfig(
                    "the TAP ring's submission queue stays full".into(),
                ));
            }
        }
        self.unsubmitted = true;
        Ok(())
    }

    /// One `io_uring_enter`: submits what is queued and runs the task work
    /// that turns ready reads into completions.
    fn enter(&mut self) -> DriverResult<()> {
        match self.ring.submit() {
            Ok(_) => {}
            // Interrupted or busy: what was not taken stays queued.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(DriverError::os("submitting to the TAP's io_uring", e)),
        }
        self.unsubmitted = !self.ring.submission().is_empty();
        DriverCounters::bump(&self.counters.kicks, 1);
        Ok(())
    }

    /// Keeps the receive side armed: the multishot read (when it ended and
    /// buffers are back), or a read on every idle buffer.
    fn arm(&mut self) -> DriverResult<()> {
        self.started = true;
        if let Some(ring) = &mut self.buf_ring {
            ring.publish();
            if !self.rx_armed && self.rx_with_kernel > 0 {
                let entry = if self.features.fixed_file {
                    opcode::ReadMulti::new(types::Fixed(0), 0, BUFFER_GROUP).build()
                } else {
                    opcode::ReadMulti::new(types::Fd(self.tap.as_raw_fd()), 0, BUFFER_GROUP).build()
                };
                self.push(&entry.user_data(TAG_RX_MULTI))?;
                self.rx_armed = true;
            }
            return Ok(());
        }
        while let Some(bid) = self.rx_idle.pop() {
            let buf = self.rx_buffer(bid);
            let len = self.rx_size as u32;
            let entry = match (self.features.fixed_file, self.features.fixed_buffers) {
                (true, true) => {
                    opcode::ReadFixed::new(types::Fixed(0), buf, len, RX_BUF_INDEX).build()
                }
                (true, false) => opcode::Read::new(types::Fixed(0), buf, len).build(),
                (false, true) => {
                    opcode::ReadFixed::new(types::Fd(self.tap.as_raw_fd()), buf, len, RX_BUF_INDEX)
                        .build()
                }
                (false, false) => {
                    opcode::Read::new(types::Fd(self.tap.as_raw_fd()), buf, len).build()
                }
            };
            if let Err(e) = self.push(&entry.user_data(TAG_RX | u64::from(bid))) {
                self.rx_idle.push(bid);
                return Err(e);
            }
            self.rx_with_kernel += 1;
        }
        Ok(())
    }

    /// Gives a receive buffer back to the kernel's side.
    fn recycle_rx(&mut self, bid: u32) {
        match &mut self.buf_ring {
            Some(ring) => {
                let addr = self
                    .rx
                    .at(bid as usize * self.rx_size)
                    .expect("receive buffer inside its area");
                ring.push(bid as u16, addr, self.rx_size as u32);
                self.rx_with_kernel += 1;
            }
            None => self.rx_idle.push(bid),
        }
    }

    /// A received buffer of `res` bytes (vnet header included) as a frame,
    /// or `None` (and the buffer recycled, the reason counted) when it is
    /// not a frame the stack can take.
    fn received(&mut self, bid: u32, res: usize) -> Option<TapFrame> {
        if res < self.hdr + 14 {
            DriverCounters::bump(&self.counters.rx_malformed, 1);
            self.recycle_rx(bid);
            return None;
        }
        let len = res - self.hdr;
        let mut frame = TapFrame {
            slot: bid,
            len: len as u32,
            offload: RxOffload::default(),
        };
        if self.hdr > 0 {
            let parsed = crate::offload::VnetHdr::parse(&self.vnet(&frame))
                .and_then(|h| RxOffload::from_vnet(&h, len));
            match parsed {
                Ok(o) => frame.offload = o,
                Err(e) => {
                    debug!(ifname = %self.info.name, "dropping a frame: {e}");
                    DriverCounters::bump(&self.counters.rx_bad_offload, 1);
                    self.recycle_rx(bid);
                    return None;
                }
            }
            if let Some((kind, _)) = frame.offload.gso {
                let l4_payload = gso_payload(self.data(&frame, len), kind);
                DriverCounters::bump(&self.counters.rx_gso_frames, 1);
                DriverCounters::bump(
                    &self.counters.rx_gso_segments,
                    frame.offload.segments(l4_payload),
                );
            }
        }
        Some(frame)
    }

    /// Reaps every completion: reads become ready frames, finished writes
    /// go back to the pool.
    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.cqes);
        done.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(tag, res, flags) in &done {
            match tag & TAG_KIND {
                TAG_RX_MULTI => {
                    if !cqueue::more(flags) {
                        self.rx_armed = false;
                    }
                    let bid = cqueue::buffer_select(flags).map(u32::from);
                    if bid.is_some() {
                        self.rx_with_kernel -= 1;
                    }
                    match (res, bid) {
                        (n, Some(bid)) if n > 0 => {
                            if let Some(f) = self.received(bid, n as usize) {
                                self.ready.push_back(f);
                            }
                        }
                        (n, bid) => {
                            if let Some(bid) = bid {
                                self.recycle_rx(bid);
                            }
                            if n == -libc::ENOBUFS {
                                DriverCounters::bump(&self.counters.rx_no_buffers, 1);
                            } else if n < 0 && n != -libc::ECANCELED {
                                warn!(ifname = %self.info.name, errno = -n, "TAP multishot read ended");
                            }
                        }
                    }
                }
                TAG_RX => {
                    let bid = (tag & 0xffff_ffff) as u32;
                    self.rx_with_kernel -= 1;
                    if res > 0 {
                        if let Some(f) = self.received(bid, res as usize) {
                            self.ready.push_back(f);
                        }
                    } else {
                        if res < 0 && res != -libc::EAGAIN && res != -libc::ECANCELED {
                            warn!(ifname = %self.info.name, errno = -res, "TAP read failed");
                        }
                        self.rx_idle.push(bid);
                    }
                }
                TAG_TX => {
                    let slot = (tag & 0xffff_ffff) as u32;
                    if res < 0 {
                        DriverCounters::bump(&self.counters.tx_errors, 1);
                        debug!(ifname = %self.info.name, errno = -res, "TAP write failed");
                    }
                    if slot & TX_SLOT != 0 {
                        self.tx_free.push(slot & !TX_SLOT);
                    } else {
                        self.recycle_rx(slot);
                    }
                }
                _ => warn!(tag, "io_uring completion for no operation"),
            }
        }
        done.clear();
        self.cqes = done;
    }

    /// Runs pending task work when the kernel says there is some, then
    /// reaps.
    fn poll_completions(&mut self) -> DriverResult<()> {
        if self.unsubmitted || self.ring.submission().taskrun() {
            self.enter()?;
        }
        self.reap();
        Ok(())
    }
}

/// L4 payload bytes of a super-frame (for counting its segments).
fn gso_payload(frame: &[u8], kind: GsoKind) -> usize {
    let ip = 14;
    let Some(&first) = frame.get(ip) else {
        return 0;
    };
    let (l4, end) = if first >> 4 == 4 {
        let ihl = usize::from(first & 0x0f) * 4;
        let total = frame
            .get(ip + 2..ip + 4)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        (ip + ihl, ip + total)
    } else {
        let payload = frame
            .get(ip + 4..ip + 6)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        (ip + 40, ip + 40 + payload)
    };
    let l4_header = match kind {
        GsoKind::Udp => 8,
        GsoKind::Tcp4 | GsoKind::Tcp6 => frame.get(l4 + 12).map_or(20, |b| usize::from(b >> 4) * 4),
    };
    end.saturating_sub(l4 + l4_header)
}

/// Flips the locally-administered bit pattern of the kernel's TAP address so
/// the two ends of the TAP never share one.
fn stack_side_mac(kernel: crate::MacAddr) -> crate::MacAddr {
    let mut mac = kernel;
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac[5] ^= 0x5a;
    mac
}

impl PacketIo for TapQueue {
    type Frame = TapFrame;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn counters(&self) -> &Arc<DriverCounters> {
        &self.counters
    }

    fn rx_burst(&mut self, out: &mut VecDeque<TapFrame>, max: usize) -> DriverResult<usize> {
        if !self.started {
            self.arm()?;
        }
        self.poll_completions()?;
        let n = max.min(self.ready.len());
        let mut bytes = 0;
        for f in self.ready.drain(..n) {
            bytes += f.len();
            out.push_back(f);
        }
        self.counters.add_rx(n, bytes);
        self.arm()?;
        if self.unsubmitted {
            self.enter()?;
        }
        Ok(n)
    }

    fn alloc_tx(&mut self, out: &mut Vec<TapFrame>, n: usize) -> usize {
        if self.tx_free.len() < n {
            self.reap();
        }
        let take = n.min(self.tx_free.len());
        for _ in 0..take {
            let Some(idx) = self.tx_free.pop() else {
                break;
            };
            let mut frame = TapFrame {
                slot: idx | TX_SLOT,
                len: 0,
                offload: RxOffload::default(),
            };
            if self.hdr > 0 {
                // No offload unless the stack asks for one.
                self.set_vnet(&mut frame, [0; VNET_HDR_LEN]);
            }
            out.push(frame);
        }
        take
    }

    fn release(&mut self, frames: &mut Vec<TapFrame>) {
        for f in frames.drain(..) {
            if f.slot & TX_SLOT != 0 {
                self.tx_free.push(f.slot & !TX_SLOT);
            } else {
                self.recycle_rx(f.slot);
            }
        }
        if let Some(ring) = &mut self.buf_ring {
            ring.publish();
        }
    }

    fn tx_burst(&mut self, frames: &mut Vec<TapFrame>) -> DriverResult<usize> {
        if frames.is_empty() {
            if self.unsubmitted {
                self.enter()?;
            }
            return Ok(0);
        }
        let (mut sent, mut bytes) = (0, 0);
        let (mut gso, mut segments, mut csum) = (0, 0, 0);
        if let Some(st) = &self.steering {
            // The answer to an address request must reach this worker.
            if frames
                .iter()
                .any(|f| steering::asks_for_address(self.data(f, 64)))
            {
                match st.asked_by(self.info.queue) {
                    Ok(()) => {
                        debug!(ifname = %self.info.name, queue = self.info.queue, "address answers steered here")
                    }
                    Err(e) => debug!(ifname = %self.info.name, "steering map update failed: {e}"),
                }
            }
        }
        for frame in frames.iter() {
            let (base, _) = self.buffer(frame);
            let len = (self.hdr + frame.len()) as u32;
            let tag = TAG_TX | u64::from(frame.slot);
            let fd = self.tap.as_raw_fd();
            let entry = match (self.features.fixed_file, self.features.fixed_buffers) {
                (true, true) => {
                    let index = if frame.slot & TX_SLOT != 0 {
                        TX_BUF_INDEX
                    } else {
                        RX_BUF_INDEX
                    };
                    opcode::WriteFixed::new(types::Fixed(0), base, len, index).build()
                }
                (true, false) => opcode::Write::new(types::Fixed(0), base, len).build(),
                (false, true) => {
                    let index = if frame.slot & TX_SLOT != 0 {
                        TX_BUF_INDEX
                    } else {
                        RX_BUF_INDEX
                    };
                    opcode::WriteFixed::new(types::Fd(fd), base, len, index).build()
                }
                (false, false) => opcode::Write::new(types::Fd(fd), base, len).build(),
            }
            .user_data(tag);
            // SAFETY: the frame moves out of `frames` right below (only the
            // completion, reaped by tag, gives its slot back), so its buffer
            // outlives the write.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                // A full submission queue: hand over what is there first.
                self.enter()?;
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    DriverCounters::bump(&self.counters.tx_ring_full, 1);
                    break;
                }
            }
            if self.hdr > 0 {
                let h = self.vnet(frame);
                if h[0] & 1 != 0 {
                    csum += 1;
                }
                if h[1] != 0 {
                    gso += 1;
                    let size = usize::from(u16::from_le_bytes([h[4], h[5]])).max(1);
                    let hdr_len = usize::from(u16::from_le_bytes([h[2], h[3]]));
                    segments += frame.len().saturating_sub(hdr_len).div_ceil(size) as u64;
                }
            }
            bytes += frame.len();
            sent += 1;
        }
        // The frames now belong to their writes.
        frames.drain(..sent);
        self.unsubmitted = true;
        self.enter()?;
        self.counters.add_tx(sent, bytes);
        DriverCounters::bump(&self.counters.tx_csum_offloaded, csum);
        DriverCounters::bump(&self.counters.tx_gso_frames, gso);
        DriverCounters::bump(&self.counters.tx_gso_segments, segments);
        Ok(sent)
    }

    fn rx_bytes<'a>(&'a self, frame: &'a TapFrame) -> &'a [u8] {
        self.data(frame, frame.len())
    }

    fn write_frame<R>(
        &self,
        frame: &mut TapFrame,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        let (_, size) = self.buffer(frame);
        if len > size - self.hdr {
            return None;
        }
        frame.len = len as u32;
        Some(fill(self.data_mut(frame, len)))
    }

    fn fill_frame(&self, frame: &mut TapFrame, fill: impl FnOnce(&mut [u8]) -> usize) -> usize {
        let (_, size) = self.buffer(frame);
        let cap = size - self.hdr;
        let n = fill(self.data_mut(frame, cap)).min(cap);
        frame.len = n as u32;
        n
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's fd lives as long as `self.ring`, which outlives
        // the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    fn prepare_sleep(&mut self) -> DriverResult<()> {
        self.reap();
        self.arm()?;
        if self.unsubmitted {
            self.enter()?;
        }
        Ok(())
    }

    fn offloads(&self) -> Offloads {
        self.offloads
    }

    fn rx_offload(&self, frame: &TapFrame) -> RxOffload {
        frame.offload
    }

    fn rx_bytes_mut<'a>(&'a self, frame: &'a mut TapFrame) -> Option<&'a mut [u8]> {
        let len = frame.len();
        Some(self.data_mut(frame, len))
    }

    fn flow_steering(&self) -> Option<FlowSteering> {
        self.flow_steering
    }

    fn set_tx_offload(&self, frame: &mut TapFrame, offload: &TxOffload) -> bool {
        if self.hdr == 0 {
            return *offload == TxOffload::default();
        }
        if offload.checksum.is_some() && !self.offloads.checksum {
            return false;
        }
        let allowed = match offload.gso {
            None => true,
            Some((GsoKind::Tcp4, ..)) => self.offloads.tso4,
            Some((GsoKind::Tcp6, ..)) => self.offloads.tso6,
            // UDP trains are taken from the kernel, never sent to it.
            Some((GsoKind::Udp, ..)) => false,
        };
        if !allowed {
            return false;
        }
        let mut h = [0u8; VNET_HDR_LEN];
        offload.vnet().write(&mut h);
        self.set_vnet(frame, h);
        true
    }

    fn debug_state(&mut self) -> String {
        format!(
            "rx buffers with kernel {}/{}, ready {}, multishot armed {}, tx free {}",
            self.rx_with_kernel,
            self.rx_count,
            self.ready.len(),
            self.rx_armed,
            self.tx_free.len()
        )
    }
}

impl Drop for TapQueue {
    fn drop(&mut self) {
        if self.features.sync_cancel && self.started {
            // Reads in flight end before the memory they point at goes.
            let _ = self.ring.submitter().register_sync_cancel(
                Some(types::Timespec::new().nsec(100_000_000)),
                types::CancelBuilder::any(),
            );
        }
        if self.buf_ring.is_some() {
            let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        }
        if let Some(s) = self.steering.take() {
            Steering::release(s, &self.tap);
        }
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_settings_parse_and_print() {
        assert_eq!("auto".parse::<TapOffload>(), Ok(TapOffload::Auto));
        assert_eq!("csum".parse::<TapOffload>(), Ok(TapOffload::Checksum));
        assert_eq!("off".parse::<TapOffload>(), Ok(TapOffload::Off));
        assert!("tso".parse::<TapOffload>().is_err());
        assert_eq!(TapOffload::Checksum.to_string(), "csum");
    }

    #[test]
    fn super_frame_payload_is_counted_from_its_headers() {
        let mut f = vec![0u8; 14 + 20 + 32 + 4000];
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 32 + 4000) as u16).to_be_bytes());
        f[14 + 20 + 12] = 8 << 4;
        assert_eq!(gso_payload(&f, GsoKind::Tcp4), 4000);
        let mut g = vec![0u8; 14 + 40 + 8 + 3000];
        g[14] = 0x60;
        g[18..20].copy_from_slice(&((8 + 3000) as u16).to_be_bytes());
        assert_eq!(gso_payload(&g, GsoKind::Udp), 3000);
        assert_eq!(gso_payload(&[0u8; 10], GsoKind::Tcp4), 0);
    }
}
