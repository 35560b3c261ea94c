//! Packet I/O for hoststack: bursts of Ethernet frames in and out of one
//! NIC queue, with nothing above Ethernet except the receive checksum policy.
//!
//! Every backend implements [`PacketIo`]:
//!
//! - [`afxdp::XdpQueue`]: one AF_XDP socket (through `xsk-rs`) on one NIC
//!   queue, its UMEM frames reused for receive and transmit; all the queues
//!   of an interface share one XDP program and XSK map
//!   ([`xdp_program::XskProgram`]), and a NIC's Toeplitz RSS setup says
//!   which queue a flow lands on ([`rss::Rss`]);
//! - [`uring_tap::TapQueue`]: a TAP device (`IFF_TAP | IFF_NO_PI`) driven by
//!   `io_uring`, for hosts without XDP (`IFF_MULTI_QUEUE`: one fd and ring
//!   per queue; `IFF_VNET_HDR`: checksum and segmentation offloads,
//!   [`offload`]);
//! - [`memory_pair::MemoryPort`]: two ends of an in-memory cable, for tests
//!   with no kernel at all.
//!
//! A driver owns a fixed pool of frame buffers. The caller takes frames from
//! it ([`PacketIo::rx_burst`], [`PacketIo::alloc_tx`]), reads or fills them
//! through the driver ([`PacketIo::rx_bytes`], [`PacketIo::write_frame`]) and
//! hands them back ([`PacketIo::release`], [`PacketIo::tx_burst`]); nothing
//! is allocated per packet. A frame handle is not `Clone`: whoever holds it
//! is the only one who may touch its bytes, which is what makes the shared
//! borrow in `write_frame` sound.
//!
//! A device that offloads work says so through [`PacketIo::offloads`]:
//! received frames then carry an [`RxOffload`] (checksum partial or
//! verified, GSO super-frame) and frames to send may ask for a
//! [`TxOffload`] (complete the checksum, cut a super-frame into segments).
//!
//! This crate knows nothing of TCP, sessions or smoltcp. Only the modules
//! that own a kernel ring, a BPF object or a buffer layout (`afxdp`,
//! `xdp_program`, `uring_tap`, `frame_pool`, `sys`) use `unsafe`, each block with its safety argument.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod afxdp;
pub mod checksum;
pub mod counters;
pub mod error;
pub mod frame_pool;
pub mod memory_pair;
pub mod netdev;
pub mod offload;
pub mod rss;
mod sys;
pub mod uring_tap;
mod xdp_log;
pub mod xdp_program;

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

pub use checksum::{RxChecksumPolicy, RxChecksumVerdict};
pub use counters::{DriverCounters, DriverCountersSnapshot};
pub use error::{DriverError, DriverResult};
pub use offload::{GsoKind, Offloads, RxOffload, TxOffload};
pub use uring_tap::FlowSteering;

/// A 48-bit Ethernet address.
pub type MacAddr = [u8; 6];

/// What the layer above needs to know about a queue.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Interface name (or a label for the in-memory pair).
    pub name: String,
    /// Queue index on the interface.
    pub queue: u32,
    /// The interface's Ethernet address.
    pub mac: MacAddr,
    /// Largest IP packet (Ethernet payload) the queue carries.
    pub mtu: usize,
    /// Bytes a frame buffer holds (an Ethernet frame without FCS).
    pub frame_capacity: usize,
    /// How many frames one burst may move; the layer above must not queue
    /// more than this between two flushes.
    pub max_burst: usize,
    /// How receive L4 checksums must be treated on this medium.
    pub rx_checksum: RxChecksumPolicy,
    /// A short human description of how the queue runs (mode, copy/zero-copy).
    pub mode: String,
}

/// A frame buffer handed out by a driver.
pub trait FrameBuf {
    /// Bytes of frame data (received length, or the length written).
    fn len(&self) -> usize;
    /// True when the frame holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One NIC queue's packet I/O, in bursts.
///
/// Calling convention per loop iteration: [`rx_burst`](Self::rx_burst), then
/// process the frames (reading them with [`rx_bytes`](Self::rx_bytes) and
/// building replies in frames from [`alloc_tx`](Self::alloc_tx)), then
/// [`tx_burst`](Self::tx_burst) and [`release`](Self::release). Before
/// sleeping on [`poll_fd`](Self::poll_fd) call
/// [`prepare_sleep`](Self::prepare_sleep).
pub trait PacketIo: Send {
    /// The driver's frame handle: owned, never cloned.
    type Frame: FrameBuf + Send;

    /// Static facts about the queue.
    fn info(&self) -> &DeviceInfo;

    /// The queue's counters (shared, readable from other threads).
    fn counters(&self) -> &std::sync::Arc<DriverCounters>;

    /// Moves up to `max` received frames to the back of `out`. Never
    /// blocks; returns how many were moved.
    fn rx_burst(&mut self, out: &mut VecDeque<Self::Frame>, max: usize) -> DriverResult<usize>;

    /// Takes up to `n` free frames for transmission, appending them to
    /// `out`; returns how many were taken (fewer when the pool is short).
    fn alloc_tx(&mut self, out: &mut Vec<Self::Frame>, n: usize) -> usize;

    /// Gives back frames the caller is done with (spent received frames,
    /// unused transmit frames). Drains `frames`.
    fn release(&mut self, frames: &mut Vec<Self::Frame>);

    /// Hands filled frames to the device and kicks it. Frames the device
    /// could not take stay in `frames` (front first) for the next call;
    /// returns how many were sent.
    fn tx_burst(&mut self, frames: &mut Vec<Self::Frame>) -> DriverResult<usize>;

    /// The bytes of a received (or filled) frame.
    fn rx_bytes<'a>(&'a self, frame: &'a Self::Frame) -> &'a [u8];

    /// Sets the frame's length to `len` and lets `fill` write its bytes.
    /// `None` when `len` exceeds the frame capacity.
    fn write_frame<R>(
        &self,
        frame: &mut Self::Frame,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R>;

    /// Lets `fill` write into the frame's whole buffer and return how many
    /// bytes it wrote, which becomes the frame's length (0 leaves it empty,
    /// for a caller that found nothing to send).
    fn fill_frame(&self, frame: &mut Self::Frame, fill: impl FnOnce(&mut [u8]) -> usize) -> usize;

    /// The fd that turns readable when frames arrive.
    fn poll_fd(&self) -> BorrowedFd<'_>;

    /// Makes sure the kernel will wake [`poll_fd`](Self::poll_fd) for new
    /// frames (AF_XDP need-wakeup: kicks the fill ring), and completes
    /// outstanding transmissions. Call before sleeping.
    fn prepare_sleep(&mut self) -> DriverResult<()>;

    /// The offloads the queue has on; none unless the device negotiated
    /// them (a TAP with vnet headers).
    fn offloads(&self) -> Offloads {
        Offloads::default()
    }

    /// What the device said about a received frame: whether its L4
    /// checksum is partial or verified, whether it is a GSO super-frame.
    fn rx_offload(&self, _frame: &Self::Frame) -> RxOffload {
        RxOffload::default()
    }

    /// The bytes of a received frame, writable (to complete a partial
    /// checksum in place); `None` where the stack may only read them.
    fn rx_bytes_mut<'a>(&'a self, _frame: &'a mut Self::Frame) -> Option<&'a mut [u8]> {
        None
    }

    /// How the device spreads flows over its queues, when the stack can
    /// compute it (a multi-queue TAP): a connection opened here then picks
    /// a local port whose packets land on this queue. `None`: one queue, or
    /// a hash the stack cannot know.
    fn flow_steering(&self) -> Option<FlowSteering> {
        None
    }

    /// Asks the device to complete the frame's checksum and/or cut it into
    /// wire segments when it is sent. False when the device cannot (no such
    /// offload on): the frame is then sent as it is and must be complete.
    fn set_tx_offload(&self, _frame: &mut Self::Frame, _offload: &TxOffload) -> bool {
        false
    }

    /// Reads kernel-side statistics into the counters and reports problems
    /// only the kernel can see (for AF_XDP: frames dropped as too large).
    /// Cheap enough to call about once a second.
    fn refresh_stats(&mut self) {}

    /// A one-line description of the queue's internal state, for debug
    /// logs (free frames, ring fill levels).
    fn debug_state(&mut self) -> String {
        String::new()
    }
}
