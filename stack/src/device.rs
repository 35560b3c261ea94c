//! The bridge between a burst driver and smoltcp's one-frame-at-a-time
//! `Device`.
//!
//! A worker pulls a burst from the driver into [`StackDevice::rx_ready`],
//! lets smoltcp consume it frame by frame, and flushes the frames smoltcp
//! filled in one [`PacketIo::tx_burst`]. Receive tokens borrow the driver
//! shared (to read UMEM/pool bytes) while transmit tokens fill frames taken
//! from a local stock, so neither token needs the driver mutably.
//!
//! Receive L4 checksums are checked here under the medium's policy (see
//! `hoststack_drivers::checksum`); smoltcp's own L4 receive verification is
//! off so a veth peer's partial checksums are not dropped.
//!
//! On a device with offloads (a TAP with vnet headers) the driver's word
//! about each frame is used: a partial checksum is checked by its seed and
//! place and, for a frame smoltcp will verify itself, completed in place; a
//! UDP GSO train is cut into its datagrams (in transmit-pool frames that
//! then travel the receive path); a TCP super-frame stays whole for the TCP
//! engine. Frames sent with [`StackDevice::send_frame_offloaded`] carry the
//! offload the engine asked for to the driver.

use std::collections::VecDeque;
use std::net::IpAddr;

use hoststack_drivers::counters::DriverCounters;
use hoststack_drivers::offload::UdpGso;
use hoststack_drivers::{GsoKind, PacketIo, RxChecksumVerdict, TxOffload, checksum};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use std::sync::Arc;

use crate::pcap::Capture;
use crate::zero_window::ZeroWindowGuard;

/// A driver queue as smoltcp sees it.
pub struct StackDevice<D: PacketIo> {
    driver: D,
    /// A burst as it comes from the driver, before the checks.
    incoming: VecDeque<D::Frame>,
    rx_ready: VecDeque<D::Frame>,
    spent: Vec<D::Frame>,
    tx_stock: Vec<D::Frame>,
    tx_filled: Vec<D::Frame>,
    max_burst: usize,
    guard: ZeroWindowGuard,
    rewritten: Vec<u8>,
    capture: Arc<Capture>,
    /// Frames handed to smoltcp that no queue received: another worker's
    /// hand-offs, answers built from the shared neighbour table.
    injected: VecDeque<Vec<u8>>,
    /// Buffers of consumed injected frames, for reuse.
    injected_free: Vec<Vec<u8>>,
    /// Injected frames dropped because too many waited.
    injected_dropped: u64,
    /// Addresses smoltcp sent an ARP request or neighbour solicitation for.
    solicited: Vec<IpAddr>,
    /// Frames for the datagrams of a UDP train (kept to reuse its memory).
    split_frames: Vec<D::Frame>,
    /// Complete partial TCP checksums too (smoltcp's TCP verifies them);
    /// UDP ones are always completed.
    complete_partial_tcp: bool,
    // Per-burst tallies, folded into the driver counters on flush.
    unverified: u64,
    bad_checksum: u64,
    malformed: u64,
    partial: u64,
    device_verified: u64,
    split: u64,
    split_dropped: u64,
    bad_offload: u64,
}

impl<D: PacketIo> StackDevice<D> {
    /// Wraps a driver queue.
    pub fn new(driver: D) -> Self {
        let max_burst = driver.info().max_burst;
        Self {
            driver,
            incoming: VecDeque::with_capacity(max_burst),
            rx_ready: VecDeque::with_capacity(max_burst),
            spent: Vec::with_capacity(max_burst),
            tx_stock: Vec::with_capacity(max_burst),
            tx_filled: Vec::with_capacity(max_burst * 2),
            max_burst,
            guard: ZeroWindowGuard::default(),
            rewritten: Vec::new(),
            capture: Arc::default(),
            injected: VecDeque::new(),
            injected_free: Vec::new(),
            injected_dropped: 0,
            solicited: Vec::new(),
            split_frames: Vec::new(),
            complete_partial_tcp: false,
            unverified: 0,
            bad_checksum: 0,
            malformed: 0,
            partial: 0,
            device_verified: 0,
            split: 0,
            split_dropped: 0,
            bad_offload: 0,
        }
    }

    /// Makes partial TCP checksums complete before smoltcp sees them (set
    /// when smoltcp runs TCP: it verifies every checksum).
    pub fn set_complete_partial_tcp(&mut self, on: bool) {
        self.complete_partial_tcp = on;
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The driver, mutably.
    pub fn driver_mut(&mut self) -> &mut D {
        &mut self.driver
    }

    /// Pulls a burst from the driver, records it when a capture runs and
    /// drops the frames the medium's checksum policy refuses; returns how
    /// many frames are waiting.
    pub fn receive_burst(&mut self) -> hoststack_drivers::DriverResult<usize> {
        let room = self.max_burst.saturating_sub(self.rx_ready.len());
        if room > 0 {
            self.driver.rx_burst(&mut self.incoming, room)?;
            let policy = self.driver.info().rx_checksum;
            while let Some(mut frame) = self.incoming.pop_front() {
                let offload = self.driver.rx_offload(&frame);
                let bytes = self.driver.rx_bytes(&frame);
                if self.capture.is_active() {
                    self.capture.record(bytes);
                }
                let verdict = checksum::check_rx_hinted(bytes, policy, offload.checksum);
                match verdict {
                    RxChecksumVerdict::Bad => {
                        self.bad_checksum += 1;
                        self.spent.push(frame);
                        continue;
                    }
                    RxChecksumVerdict::Malformed => {
                        self.malformed += 1;
                        self.spent.push(frame);
                        continue;
                    }
                    RxChecksumVerdict::Unverified => self.unverified += 1,
                    RxChecksumVerdict::DeviceVerified => self.device_verified += 1,
                    RxChecksumVerdict::Partial => self.partial += 1,
                    RxChecksumVerdict::Verified | RxChecksumVerdict::NotApplicable => {}
                }
                if let Some((GsoKind::Udp, size)) = offload.gso {
                    self.split_udp(frame, size);
                    continue;
                }
                if verdict == RxChecksumVerdict::Partial
                    && (self.complete_partial_tcp || !checksum::is_tcp(bytes))
                {
                    // smoltcp verifies what it gets: hand it the full sum.
                    let completed = self
                        .driver
                        .rx_bytes_mut(&mut frame)
                        .is_some_and(checksum::complete_partial);
                    if !completed {
                        self.malformed += 1;
                        self.spent.push(frame);
                        continue;
                    }
                }
                self.rx_ready.push_back(frame);
            }
        }
        Ok(self.rx_ready.len())
    }

    /// Cuts a UDP GSO train into its datagrams, each in a frame of its own
    /// (from the transmit pool) queued where the train was; the train's own
    /// frame is spent.
    fn split_udp(&mut self, frame: D::Frame, gso_size: u16) {
        let train = match UdpGso::parse(self.driver.rx_bytes(&frame), gso_size) {
            Ok(t) => t,
            Err(_) => {
                self.bad_offload += 1;
                self.spent.push(frame);
                return;
            }
        };
        let mut segs = std::mem::take(&mut self.split_frames);
        let got = self.driver.alloc_tx(&mut segs, train.count());
        let bytes = self.driver.rx_bytes(&frame);
        for (i, mut seg) in segs.drain(..).enumerate() {
            let written = self
                .driver
                .write_frame(&mut seg, train.segment_len(i), |out| {
                    train.write_segment(bytes, i, out)
                });
            match written {
                Some(_) => {
                    self.split += 1;
                    self.rx_ready.push_back(seg);
                }
                None => {
                    self.split_dropped += 1;
                    self.spent.push(seg);
                }
            }
        }
        self.split_frames = segs;
        // Datagrams that found no frame are dropped, and counted.
        self.split_dropped += (train.count() - got) as u64;
        self.spent.push(frame);
    }

    /// Offers each waiting frame to `take` in order; a frame it takes (it
    /// returns true) is done, the others stay for smoltcp in their order.
    pub fn divert(&mut self, mut take: impl FnMut(&[u8]) -> bool) {
        for _ in 0..self.rx_ready.len() {
            let Some(frame) = self.rx_ready.pop_front() else {
                break;
            };
            if take(self.driver.rx_bytes(&frame)) {
                self.spent.push(frame);
            } else {
                self.rx_ready.push_back(frame);
            }
        }
    }

    /// Builds one frame with `fill` (given the whole frame buffer, it
    /// returns the bytes it wrote; 0 writes nothing) and queues it for the
    /// next flush. `None` when no frame was free; `Some(0)` when `fill`
    /// wrote nothing.
    pub fn send_frame(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> Option<usize> {
        self.send_frame_offloaded(|buf| (fill(buf), None))
    }

    /// [`send_frame`](Self::send_frame) for a frame that may ask the
    /// device for an offload (a partial checksum to complete, a super-frame
    /// to cut). The caller asks only for what [`PacketIo::offloads`] says is
    /// on; a frame the driver still refuses is completed here when it only
    /// lacks its checksum, and dropped (and counted) when it is a
    /// super-frame.
    pub fn send_frame_offloaded(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> (usize, Option<TxOffload>),
    ) -> Option<usize> {
        if self.tx_filled.len() >= self.max_burst {
            let _ = self.driver.tx_burst(&mut self.tx_filled);
        }
        if self.tx_stock.is_empty() {
            self.driver.alloc_tx(&mut self.tx_stock, self.max_burst);
        }
        let mut frame = self.tx_stock.pop()?;
        let mut offload = None;
        let n = self.driver.fill_frame(&mut frame, |buf| {
            let (n, o) = fill(buf);
            offload = o;
            n
        });
        if n == 0 {
            self.tx_stock.push(frame);
            return Some(0);
        }
        if let Some(o) = offload {
            if !self.driver.set_tx_offload(&mut frame, &o) {
                let completed = o.gso.is_none()
                    && self
                        .driver
                        .rx_bytes_mut(&mut frame)
                        .is_some_and(checksum::complete_partial);
                if !completed {
                    DriverCounters::bump(&self.driver.counters().tx_errors, 1);
                    self.tx_stock.push(frame);
                    return Some(0);
                }
            }
        }
        if self.capture.is_active() {
            self.capture.record(self.driver.rx_bytes(&frame));
        }
        self.tx_filled.push(frame);
        Some(n)
    }

    /// Frames received (or injected) and not yet given to smoltcp.
    pub fn rx_pending(&self) -> usize {
        self.rx_ready.len() + self.injected.len()
    }

    /// Queues `frame` for smoltcp as if it had been received (after the
    /// frames the driver delivered). Dropped and counted when
    /// [`MAX_INJECTED`] already wait.
    pub fn inject(&mut self, frame: &[u8]) {
        if self.injected.len() >= MAX_INJECTED {
            self.injected_dropped += 1;
            return;
        }
        let mut buf = self.injected_free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        // Not recorded by a capture: a handed-off frame was recorded on the
        // queue it arrived on, and an answer built from the neighbour table
        // never crossed the wire.
        self.injected.push_back(buf);
    }

    /// Injected frames dropped because too many waited.
    pub fn injected_dropped(&self) -> u64 {
        self.injected_dropped
    }

    /// Moves the addresses smoltcp asked for (ARP requests, neighbour
    /// solicitations) since the last call to `out`.
    pub fn take_solicited(&mut self, out: &mut Vec<IpAddr>) {
        out.append(&mut self.solicited);
    }

    /// Bytes of the waiting received frames, for inspection before smoltcp
    /// sees them (the listener pool tops itself up for incoming SYNs).
    pub fn pending_frames(&self) -> impl Iterator<Item = &[u8]> {
        self.rx_ready.iter().map(|f| self.driver.rx_bytes(f))
    }

    /// Makes sure a burst's worth of transmit frames is in stock.
    pub fn stock_tx(&mut self) {
        let want = self.max_burst.saturating_sub(self.tx_stock.len());
        if want > 0 {
            self.driver.alloc_tx(&mut self.tx_stock, want);
        }
    }

    /// Hands filled frames to the driver and returns spent ones; returns
    /// how many frames went out.
    pub fn flush(&mut self) -> hoststack_drivers::DriverResult<usize> {
        if !self.spent.is_empty() {
            self.driver.release(&mut self.spent);
        }
        let tallies = self.unverified
            + self.bad_checksum
            + self.malformed
            + self.partial
            + self.device_verified
            + self.split
            + self.split_dropped
            + self.bad_offload;
        if tallies > 0 {
            let c = self.driver.counters();
            let take = std::mem::take;
            DriverCounters::bump(&c.rx_checksum_unverified, take(&mut self.unverified));
            DriverCounters::bump(&c.rx_bad_checksum, take(&mut self.bad_checksum));
            DriverCounters::bump(&c.rx_malformed, take(&mut self.malformed));
            DriverCounters::bump(&c.rx_csum_partial, take(&mut self.partial));
            DriverCounters::bump(&c.rx_csum_device_verified, take(&mut self.device_verified));
            DriverCounters::bump(&c.rx_gso_split, take(&mut self.split));
            DriverCounters::bump(&c.rx_no_buffers, take(&mut self.split_dropped));
            DriverCounters::bump(&c.rx_bad_offload, take(&mut self.bad_offload));
        }
        // Called with nothing new too: the driver may still hold frames an
        // earlier kick did not get out.
        self.driver.tx_burst(&mut self.tx_filled)
    }

    /// Records frames into `capture` whenever it runs.
    pub fn set_capture(&mut self, capture: Arc<Capture>) {
        self.capture = capture;
    }

    /// Segments handed to smoltcp as bare ACKs because our window was zero.
    pub fn zero_window_acks(&self) -> u64 {
        self.guard.salvaged
    }

    /// Frames filled by smoltcp and not yet accepted by the driver.
    pub fn tx_backlog(&self) -> usize {
        self.tx_filled.len()
    }
}

/// Injected frames waiting for smoltcp at most.
pub const MAX_INJECTED: usize = 4096;
/// Solicited addresses remembered between two looks at most.
const MAX_SOLICITED: usize = 64;

/// smoltcp's capabilities for a driver queue: its MTU, its burst, and L4
/// receive checksums left to [`StackDevice`].
pub fn capabilities(info: &hoststack_drivers::DeviceInfo) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = info.mtu + 14;
    caps.max_burst_size = Some(info.max_burst);
    let mut csum = ChecksumCapabilities::default();
    csum.ipv4 = Checksum::Both;
    // Where every checksum must be verified, smoltcp verifies too, which
    // also covers reassembled fragments the pre-check skips; on a veth it
    // must not, or a peer's partial checksums would be dropped.
    let l4 = match info.rx_checksum {
        hoststack_drivers::RxChecksumPolicy::VerifyAll => Checksum::Both,
        hoststack_drivers::RxChecksumPolicy::TrustPartial => Checksum::Tx,
    };
    csum.tcp = l4;
    csum.udp = l4;
    csum.icmpv4 = Checksum::Both;
    csum.icmpv6 = Checksum::Both;
    caps.checksum = csum;
    caps
}

/// What a receive token hands smoltcp.
enum RxFrame<'a, D: PacketIo> {
    /// A driver frame, read in place (or its rewritten form, see
    /// `zero_window`).
    Driver {
        frame: D::Frame,
        spent: &'a mut Vec<D::Frame>,
        replacement: Option<&'a [u8]>,
    },
    /// An injected frame; its buffer goes back to the free list.
    Injected {
        bytes: Vec<u8>,
        free: &'a mut Vec<Vec<u8>>,
    },
}

/// smoltcp's receive token: one received (or injected) frame.
pub struct RxToken<'a, D: PacketIo> {
    driver: &'a D,
    frame: RxFrame<'a, D>,
}

/// smoltcp's transmit token: fills a frame from the stock.
pub struct TxToken<'a, D: PacketIo> {
    driver: &'a D,
    stock: &'a mut Vec<D::Frame>,
    filled: &'a mut Vec<D::Frame>,
    guard: &'a mut ZeroWindowGuard,
    capture: &'a Capture,
    solicited: &'a mut Vec<IpAddr>,
}

impl<D: PacketIo> phy::RxToken for RxToken<'_, D> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self.frame {
            RxFrame::Driver {
                frame,
                spent,
                replacement,
            } => {
                let r = match replacement {
                    Some(bytes) => f(bytes),
                    None => f(self.driver.rx_bytes(&frame)),
                };
                spent.push(frame);
                r
            }
            RxFrame::Injected { bytes, free } => {
                let r = f(&bytes);
                free.push(bytes);
                r
            }
        }
    }
}

impl<D: PacketIo> phy::TxToken for TxToken<'_, D> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // `transmit`/`receive` only hand out a token when the stock has a
        // frame, and smoltcp never asks for more than the MTU it was given.
        let mut frame = self.stock.pop().expect("tx token without a stocked frame");
        let mut f = Some(f);
        let guard = self.guard;
        let capture = self.capture;
        let solicited = self.solicited;
        let r = self.driver.write_frame(&mut frame, len, |buf| {
            let r = (f.take().expect("fill runs once"))(buf);
            guard.observe_tx(buf);
            if capture.is_active() {
                capture.record(buf);
            }
            if let Some(ip) = crate::neighbor_answers::solicited_target(buf) {
                if solicited.len() < MAX_SOLICITED && !solicited.contains(&ip) {
                    solicited.push(ip);
                }
            }
            r
        });
        match r {
            Some(r) => {
                self.filled.push(frame);
                r
            }
            None => {
                // Larger than a frame: smoltcp still wants its closure run.
                let mut scratch = vec![0u8; len];
                let r = (f.take().expect("fill not run"))(&mut scratch);
                self.stock.push(frame);
                tracing::warn!(
                    len,
                    "dropping an outgoing frame larger than the device frame"
                );
                r
            }
        }
    }
}

impl<D: PacketIo> phy::Device for StackDevice<D> {
    type RxToken<'a>
        = RxToken<'a, D>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.tx_stock.is_empty() {
            // No frame for a reply: leave the rest of the burst for later.
            return None;
        }
        // Frames were checked and recorded when they arrived.
        let frame = match self.rx_ready.pop_front() {
            Some(frame) => {
                let rewritten = self
                    .guard
                    .rewrite_rx(self.driver.rx_bytes(&frame), &mut self.rewritten);
                RxFrame::Driver {
                    frame,
                    spent: &mut self.spent,
                    replacement: rewritten.then_some(self.rewritten.as_slice()),
                }
            }
            None => RxFrame::Injected {
                bytes: self.injected.pop_front()?,
                free: &mut self.injected_free,
            },
        };
        Some((
            RxToken {
                driver: &self.driver,
                frame,
            },
            TxToken {
                driver: &self.driver,
                stock: &mut self.tx_stock,
                filled: &mut self.tx_filled,
                guard: &mut self.guard,
                capture: &self.capture,
                solicited: &mut self.solicited,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx_filled.len() >= self.max_burst {
            // A bulk sender fills many frames in one poll: hand them over in
            // bursts rather than holding the whole window.
            let _ = self.driver.tx_burst(&mut self.tx_filled);
        }
        if self.tx_stock.is_empty() {
            self.driver.alloc_tx(&mut self.tx_stock, self.max_burst);
            if self.tx_stock.is_empty() {
                return None;
            }
        }
        Some(TxToken {
            driver: &self.driver,
            stock: &mut self.tx_stock,
            filled: &mut self.tx_filled,
            guard: &mut self.guard,
            capture: &self.capture,
            solicited: &mut self.solicited,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.driver.info())
    }
}
