//! AF_XDP: one XSK socket on one NIC queue, through `xsk-rs`.
//!
//! The queue owns a UMEM of `frame_count` frames. A frame is in exactly one
//! place at a time: the free list here, the fill ring, the rx ring, the
//! caller's hands (an [`XdpFrame`]), the tx ring or the completion ring.
//! Received frames come back through [`PacketIo::release`], transmitted ones
//! through the completion ring, so every buffer is reused in both
//! directions.
//!
//! Medium quirks handled here: `XDP_USE_NEED_WAKEUP` (kick the fill ring and
//! the tx ring only when the kernel asks), a bind that finds the queue busy
//! (the kernel keeps it ~150 ms after the previous socket closed: retried
//! with back-off), copy-mode transmit that moves at most a small batch per
//! `sendto` (kicked until the ring drains), and on a veth in generic mode a
//! peer whose TSO super-frames no XSK frame holds (detected, logged with the
//! fix). Every queue's socket goes into the one XSK map of the interface's
//! one XDP program ([`crate::xdp_program`]), attached by the first queue
//! opened and detached when the last one closes; libxdp only creates the
//! sockets (its own program loading is inhibited).

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::counters::DriverCounters;
use crate::error::{DriverError, DriverResult};
use crate::netdev::{Netdev, VethPeer};
use crate::xdp_program::XskProgram;
use crate::{DeviceInfo, FrameBuf, PacketIo, RxChecksumPolicy};

pub use crate::xdp_program::XdpAttachMode;

/// Whether the socket copies frames or shares the NIC's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpCopyMode {
    /// Zero-copy when the NIC supports it, copy otherwise.
    #[default]
    Auto,
    /// Always copy.
    Copy,
    /// Zero-copy or fail.
    ZeroCopy,
}

impl std::str::FromStr for XdpCopyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "copy" => Ok(Self::Copy),
            "zerocopy" | "zero-copy" | "zc" => Ok(Self::ZeroCopy),
            _ => Err(format!(
                "unknown copy mode '{s}' (expected auto, copy or zerocopy)"
            )),
        }
    }
}

/// Settings of one AF_XDP queue.
#[derive(Debug, Clone)]
pub struct XdpConfig {
    /// Interface name.
    pub ifname: String,
    /// Queue index.
    pub queue: u32,
    /// XDP attach mode.
    pub attach: XdpAttachMode,
    /// Copy or zero-copy.
    pub copy: XdpCopyMode,
    /// UMEM frames (power of two not required).
    pub frame_count: u32,
    /// Bytes per UMEM frame (power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Size of each of the four rings (power of two).
    pub ring_size: u32,
    /// How long to keep retrying a bind that finds the queue busy.
    pub busy_timeout: Duration,
}

impl XdpConfig {
    /// Defaults for `ifname` queue `queue`.
    pub fn new(ifname: &str, queue: u32) -> Self {
        Self {
            ifname: ifname.into(),
            queue,
            attach: XdpAttachMode::Auto,
            copy: XdpCopyMode::Auto,
            frame_count: 8192,
            frame_size: 4096,
            ring_size: 2048,
            busy_timeout: Duration::from_secs(3),
        }
    }
}

/// A UMEM frame in the caller's hands.
#[derive(Debug)]
pub struct XdpFrame(FrameDesc);

impl FrameBuf for XdpFrame {
    fn len(&self) -> usize {
        self.0.lengths().data()
    }
}

/// Max frames `sendto` moves per call in copy mode before it asks to be
/// called again; bounds the kick loop.
const MAX_TX_KICKS: usize = 64;

/// One AF_XDP socket bound to one queue.
pub struct XdpQueue {
    info: DeviceInfo,
    counters: Arc<DriverCounters>,
    // Field order is drop order: the map entry (and, for the last queue,
    // the program), then the rings, the UMEM last.
    _program: XskProgram,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    umem: Umem,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    /// Descriptors of one transmit burst; kept apart from `scratch` so a
    /// one-frame burst does not rewrite a whole ring's worth of it.
    tx_batch: Vec<FrameDesc>,
    ring_size: u32,
    /// Frames kept back from the fill ring so transmit never starves.
    tx_reserve: usize,
    generic: bool,
    veth_peer: Option<VethPeer>,
    last_stats: Option<xsk_rs::socket::XdpStatistics>,
    oversize_warned: bool,
}

impl std::fmt::Debug for XdpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpQueue")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn io_source<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    err.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
}

/// What the kernel reports about the program on `ifindex`: the attach mode
/// name, or None when no program is attached.
pub fn attached_mode(ifindex: u32) -> Option<&'static str> {
    crate::xdp_program::attached(ifindex).map(|p| p.mode)
}

fn zero_copy(fd: i32) -> bool {
    let mut opts = libxdp_sys::xdp_options { flags: 0 };
    let mut len = std::mem::size_of::<libxdp_sys::xdp_options>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `opts`.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libxdp_sys::XDP_OPTIONS as i32,
            (&raw mut opts).cast(),
            &mut len,
        )
    };
    ret == 0 && opts.flags & libxdp_sys::XDP_OPTIONS_ZEROCOPY != 0
}

impl XdpQueue {
    /// Creates the UMEM, binds the socket (retrying while the queue is
    /// busy) and stocks the fill ring.
    pub fn open(cfg: &XdpConfig) -> DriverResult<Self> {
        crate::xdp_log::install();
        let dev = Netdev::lookup(&cfg.ifname)?;
        if cfg.queue >= dev.rx_queues {
            return Err(DriverError::NoSuchQueue {
                ifname: dev.name,
                queue: cfg.queue,
                available: dev.rx_queues,
            });
        }
        if !cfg.ring_size.is_power_of_two() || cfg.frame_count < 2 * cfg.ring_size {
            return Err(DriverError::InvalidConfig(format!(
                "ring size {} must be a power of two and frame count {} at least twice it",
                cfg.ring_size, cfg.frame_count
            )));
        }
        let bad = |what: &str| DriverError::InvalidConfig(what.to_string());
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| bad(&e.to_string()))?)
            .fill_queue_size(QueueSize::new(cfg.ring_size).map_err(|e| bad(&e.to_string()))?)
            .comp_queue_size(QueueSize::new(cfg.ring_size).map_err(|e| bad(&e.to_string()))?)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let frame_capacity = umem_cfg.mtu() as usize;
        if dev.mtu + 14 > frame_capacity {
            return Err(DriverError::MtuTooLarge {
                ifname: dev.name,
                mtu: dev.mtu,
                frame: frame_capacity,
                max: frame_capacity - 14,
            });
        }
        let frame_count = NonZeroU32::new(cfg.frame_count).ok_or_else(|| bad("zero frames"))?;
        let (umem, descs) = Umem::new(umem_cfg, frame_count, false).map_err(|e| {
            let source = io_source(&e)
                .and_then(std::io::Error::raw_os_error)
                .map_or_else(
                    || std::io::Error::other(e.to_string()),
                    std::io::Error::from_raw_os_error,
                );
            DriverError::os(format!("creating the UMEM for {}", cfg.ifname), source)
        })?;

        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        match cfg.copy {
            XdpCopyMode::Auto => {}
            XdpCopyMode::Copy => bind |= BindFlags::XDP_COPY,
            XdpCopyMode::ZeroCopy => bind |= BindFlags::XDP_ZEROCOPY,
        }
        // The interface's one program is attached by XskProgram below; libxdp
        // must not load one per socket.
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(cfg.ring_size).map_err(|e| bad(&e.to_string()))?)
            .tx_queue_size(QueueSize::new(cfg.ring_size).map_err(|e| bad(&e.to_string()))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let iface: Interface = cfg
            .ifname
            .parse()
            .map_err(|_| DriverError::NoSuchInterface(cfg.ifname.clone()))?;

        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let (tx, rx, rings) = loop {
            // SAFETY: the UMEM is not shared with another socket (each queue
            // creates its own), so the shared-UMEM contract does not apply;
            // program loading is inhibited anyway.
            match unsafe { Socket::new(sock_cfg, &umem, &iface, cfg.queue) } {
                Ok(s) => break s,
                Err(e) => {
                    let errno = io_source(&e).and_then(|io| io.raw_os_error());
                    match errno {
                        Some(libc::EBUSY) if started.elapsed() < cfg.busy_timeout => {
                            debug!(ifname = %cfg.ifname, queue = cfg.queue, "queue busy, retrying bind");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_millis(200));
                        }
                        Some(libc::EBUSY) => {
                            return Err(DriverError::QueueBusy {
                                ifname: cfg.ifname.clone(),
                                queue: cfg.queue,
                            });
                        }
                        Some(libc::EPERM) | Some(libc::EACCES) => {
                            return Err(DriverError::PermissionDenied {
                                what: format!("an AF_XDP socket on '{}'", cfg.ifname),
                            });
                        }
                        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                            if cfg.attach == XdpAttachMode::Native =>
                        {
                            return Err(DriverError::XdpModeUnsupported {
                                ifname: cfg.ifname.clone(),
                                mode: "native".into(),
                                detail: e.to_string(),
                            });
                        }
                        Some(libc::EOPNOTSUPP) if cfg.copy == XdpCopyMode::ZeroCopy => {
                            return Err(DriverError::InvalidConfig(format!(
                                "'{}' does not support zero-copy AF_XDP (use copy mode)",
                                cfg.ifname
                            )));
                        }
                        _ => {
                            let source = io_source(&e)
                                .map(|io| {
                                    std::io::Error::from_raw_os_error(
                                        io.raw_os_error().unwrap_or(0),
                                    )
                                })
                                .unwrap_or_else(|| std::io::Error::other(e.to_string()));
                            return Err(DriverError::os(
                                format!(
                                    "creating an AF_XDP socket on {} queue {}: {e}",
                                    cfg.ifname, cfg.queue
                                ),
                                source,
                            ));
                        }
                    }
                }
            }
        };
        let (fill, comp) = rings.ok_or_else(|| {
            DriverError::InvalidConfig(
                "libxdp returned no fill/completion rings for a fresh UMEM".into(),
            )
        })?;

        let mut program = XskProgram::acquire(&dev.name, dev.ifindex, dev.rx_queues, cfg.attach)?;
        program.insert(cfg.queue, rx.fd().as_raw_fd())?;
        let mode_name = program.mode();
        let zc = zero_copy(rx.fd().as_raw_fd());
        let generic = mode_name == "generic";
        let veth_peer = dev.veth_peer();
        let rx_checksum = if dev.is_veth() {
            RxChecksumPolicy::TrustPartial
        } else {
            RxChecksumPolicy::VerifyAll
        };
        info!(
            ifname = %cfg.ifname, queue = cfg.queue, mode = mode_name,
            copy = if zc { "zero-copy" } else { "copy" }, driver = %dev.driver,
            "AF_XDP socket bound"
        );
        if generic && dev.is_veth() {
            match &veth_peer {
                Some(VethPeer::Here { name, tso: true }) => warn!(
                    "generic XDP on veth '{}': its peer '{name}' has TSO on and will send super-frames no XSK frame holds; fix: ethtool -K {name} tso off",
                    cfg.ifname
                ),
                Some(VethPeer::Elsewhere { ifindex }) => info!(
                    "generic XDP on veth '{}': if its peer (ifindex {ifindex} in another namespace) has TSO on, its super-frames are lost; fix: ethtool -K PEER tso off (in that namespace)",
                    cfg.ifname
                ),
                _ => {}
            }
        }

        let ring_size = cfg.ring_size;
        let mut q = Self {
            info: DeviceInfo {
                name: cfg.ifname.clone(),
                queue: cfg.queue,
                mac: dev.mac,
                mtu: dev.mtu,
                frame_capacity,
                max_burst: 64,
                rx_checksum,
                mode: format!(
                    "AF_XDP {mode_name} {}",
                    if zc { "zero-copy" } else { "copy" }
                ),
            },
            counters: Arc::default(),
            _program: program,
            rx,
            tx,
            fill,
            comp,
            umem,
            free: descs,
            scratch: vec![FrameDesc::default(); ring_size as usize],
            tx_batch: Vec::with_capacity(ring_size as usize),
            ring_size,
            tx_reserve: (cfg.frame_count - ring_size) as usize / 2,
            generic,
            veth_peer,
            last_stats: None,
            oversize_warned: false,
        };
        q.refill();
        Ok(q)
    }

    /// Moves free frames into the fill ring, keeping the transmit reserve.
    fn refill(&mut self) {
        let spare = self.free.len().saturating_sub(self.tx_reserve);
        if spare == 0 {
            return;
        }
        let room = self.fill.nb_free(self.ring_size) as usize;
        let n = room.min(spare);
        if n == 0 {
            return;
        }
        let start = self.free.len() - n;
        // SAFETY: every descriptor on the free list belongs to this UMEM and
        // is owned by nobody else; once produced it is the kernel's until
        // it comes back on the rx ring.
        let done = unsafe { self.fill.produce(&self.free[start..]) };
        self.free.truncate(self.free.len() - done);
        if self.fill.needs_wakeup() {
            DriverCounters::bump(&self.counters.kicks, 1);
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// Takes completed transmissions back onto the free list.
    fn reap_completions(&mut self) {
        // SAFETY: completion-ring descriptors are frames of this UMEM that the
        // kernel has finished sending; they become ours again.
        let n = unsafe { self.comp.consume(&mut self.scratch) };
        self.free.extend_from_slice(&self.scratch[..n]);
    }

    /// Kicks the tx ring until it is drained or the kernel stops taking.
    /// Copy mode sends a bounded batch per `sendto`, so one kick may not do.
    fn kick_tx(&mut self) -> DriverResult<()> {
        let mut kicks = 0;
        while kicks < MAX_TX_KICKS {
            let pending = self.ring_size - self.tx.nb_free_exact();
            if pending == 0 || !self.tx.needs_wakeup() {
                break;
            }
            self.tx.wakeup().map_err(|e| {
                DriverError::os(format!("kicking the tx ring of {}", self.info.name), e)
            })?;
            kicks += 1;
            if self.ring_size - self.tx.nb_free_exact() == pending {
                break;
            }
        }
        DriverCounters::bump(&self.counters.kicks, kicks as u64);
        Ok(())
    }

    /// Descriptors in the tx ring the kernel has not taken yet.
    pub fn tx_pending(&mut self) -> u32 {
        self.ring_size - self.tx.nb_free_exact()
    }

    /// The veth peer found at open, for messages.
    pub fn veth_peer(&self) -> Option<&VethPeer> {
        self.veth_peer.as_ref()
    }
}

impl PacketIo for XdpQueue {
    type Frame = XdpFrame;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn counters(&self) -> &Arc<DriverCounters> {
        &self.counters
    }

    fn rx_burst(&mut self, out: &mut VecDeque<XdpFrame>, max: usize) -> DriverResult<usize> {
        let max = max.min(self.scratch.len());
        // SAFETY: rx-ring descriptors are frames of this UMEM the kernel has
        // filled and handed back; they become ours.
        let n = unsafe { self.rx.consume(&mut self.scratch[..max]) };
        let mut bytes = 0;
        for d in &self.scratch[..n] {
            bytes += d.lengths().data();
            out.push_back(XdpFrame(*d));
        }
        if n > 0 {
            self.counters.add_rx(n, bytes);
        }
        self.refill();
        Ok(n)
    }

    fn alloc_tx(&mut self, out: &mut Vec<XdpFrame>, n: usize) -> usize {
        if self.free.len() < n {
            self.reap_completions();
        }
        let take = n.min(self.free.len());
        let start = self.free.len() - take;
        out.extend(self.free.drain(start..).map(XdpFrame));
        take
    }

    fn release(&mut self, frames: &mut Vec<XdpFrame>) {
        self.free.extend(frames.drain(..).map(|f| f.0));
    }

    fn tx_burst(&mut self, frames: &mut Vec<XdpFrame>) -> DriverResult<usize> {
        if frames.is_empty() {
            // The idle loop's call: only push out what an earlier kick left.
            self.kick_tx()?;
            self.reap_completions();
            return Ok(0);
        }
        self.reap_completions();
        let room = self.tx.nb_free(self.ring_size) as usize;
        let n = room.min(frames.len());
        if n < frames.len() {
            DriverCounters::bump(&self.counters.tx_ring_full, 1);
        }
        let mut bytes = 0;
        let mut sent = 0;
        if n > 0 {
            self.tx_batch.clear();
            for f in &frames[..n] {
                bytes += f.0.lengths().data();
                self.tx_batch.push(f.0);
            }
            // SAFETY: the frames are ours (XdpFrame handles, taken out of
            // `frames` right below) and belong to this UMEM; the kernel owns
            // them until they show up on the completion ring.
            sent = unsafe { self.tx.produce(&self.tx_batch) };
            frames.drain(..sent);
        }
        // Kick even when nothing new was queued: frames a previous kick left
        // in the ring would otherwise wait for the next transmission, which
        // for a sender waiting on their ACKs is a retransmission timeout.
        self.kick_tx()?;
        self.counters.add_tx(sent, bytes);
        self.reap_completions();
        Ok(sent)
    }

    fn rx_bytes<'a>(&'a self, frame: &'a XdpFrame) -> &'a [u8] {
        // SAFETY: `frame` is a descriptor of this UMEM held only by the
        // caller (XdpFrame is not Clone), so neither the kernel nor anyone
        // else writes these bytes while the borrow lives.
        unsafe { self.umem.data(&frame.0) }.contents()
    }

    fn write_frame<R>(
        &self,
        frame: &mut XdpFrame,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        if len > self.info.frame_capacity {
            return None;
        }
        // SAFETY: as in `rx_bytes`, and the exclusive borrow of `frame` rules
        // out any other reference to its bytes while `fill` runs.
        let mut data = unsafe { self.umem.data_mut(&mut frame.0) };
        data.cursor().set_pos(len);
        Some(fill(data.contents_mut()))
    }

    fn fill_frame(&self, frame: &mut XdpFrame, fill: impl FnOnce(&mut [u8]) -> usize) -> usize {
        // SAFETY: as in `write_frame`.
        let mut data = unsafe { self.umem.data_mut(&mut frame.0) };
        data.cursor().set_pos(self.info.frame_capacity);
        let n = fill(data.contents_mut()).min(self.info.frame_capacity);
        data.cursor().set_pos(n);
        n
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket fd lives as long as `self.rx`, which outlives
        // the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }

    fn prepare_sleep(&mut self) -> DriverResult<()> {
        self.kick_tx()?;
        self.reap_completions();
        self.refill();
        if self.fill.needs_wakeup() {
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
        Ok(())
    }

    fn debug_state(&mut self) -> String {
        let stats = self.rx.fd().xdp_statistics().ok();
        format!(
            "free={} fill_free={} rx_avail={} tx_pending={} comp_avail={} stats={:?}",
            self.free.len(),
            self.fill.nb_free_exact(),
            self.rx.nb_avail_exact(),
            self.ring_size - self.tx.nb_free_exact(),
            self.comp.nb_avail_exact(),
            stats
        )
    }

    fn refresh_stats(&mut self) {
        let Ok(stats) = self.rx.fd().xdp_statistics() else {
            return;
        };
        let dropped = |s: &xsk_rs::socket::XdpStatistics| {
            s.rx_dropped() + s.rx_ring_full() + s.rx_invalid_descs()
        };
        let before = self.last_stats.as_ref().map_or(0, dropped);
        let before_too_big = self.last_stats.as_ref().map_or(0, |s| s.rx_dropped());
        DriverCounters::bump(
            &self.counters.rx_kernel_drops,
            dropped(&stats).saturating_sub(before),
        );
        let too_big = stats.rx_dropped().saturating_sub(before_too_big);
        if too_big > 0 && self.generic && !self.oversize_warned {
            self.oversize_warned = true;
            let peer = match &self.veth_peer {
                Some(VethPeer::Here { name, .. }) => name.clone(),
                _ => "PEER".into(),
            };
            error!(
                "{too_big} frame(s) on '{}' were dropped by the kernel before hoststack saw them: in generic XDP mode a veth peer with TSO on sends super-frames no XSK frame holds; fix: ethtool -K {peer} tso off (in the peer's namespace), or use --xdp-mode native",
                self.info.name
            );
        }
        self.last_stats = Some(stats);
    }
}
