//! The app -> stack direction for external apps: one [`AppRxQueue`] per
//! (app, stack thread), all of an app's queues in one memfd segment of
//! their own ([`AppRxQueues`]).
//!
//! An app thread that wants a stack thread to do something posts to that
//! thread's queue: io notifications ([`IoMessage`]: "I wrote into a tx
//! fifo", "I drained an rx fifo you had stopped filling") on the events
//! ring, and control requests ([`ControlMessage`]: listen, connect, ...) on
//! the control ring. The stack thread receives with [`AppRxQueue::recv`].
//! In interrupt mode it sleeps on the queue's eventfd (see the module doc
//! of [`hoststack_shm::message_queue`] for why no wakeup is lost).
//!
//! # Layout
//!
//! Each queue is two [`MessageQueue`]s back to back, starting at the
//! queue's offset (the only number [`RxQueueInfo`] carries):
//!
//! | ring    | slots | payload per slot |
//! |---------|-------|------------------|
//! | events  | `N`   | [`IO_SLOT_SIZE`] (64) bytes |
//! | control | `N/2` | [`CONTROL_SLOT_SIZE`] (256) bytes |
//!
//! The control ring starts right after the events ring
//! (`offset + MessageQueue::required_size(N, 64)`). `N` comes from the
//! app's event-queue size through [`rx_queue_slots`].
//!
//! # One eventfd, two rings
//!
//! Both rings of a queue signal the same eventfd, each through its own
//! duplicate of it, and each only on its own empty→non-empty edge. The
//! consumer must check both rings before sleeping:
//! [`AppRxQueue::empty_before_sleep`] does, with the `SeqCst` fence each
//! ring's protocol needs.
//!
//! # Trust
//!
//! The app writes these bytes and may write anything. Every decoder is
//! bounds-checked and gives `Corrupted` for garbage, never a panic; a bad
//! message is dropped and the next one is still received.

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::endpoint::{Endpoint, TransportProto};
use crate::error::{SessionError, SessionResult};
use hoststack_shm::eventfd::EventFd;
use hoststack_shm::message_queue::{HeadState, MessageQueue};
use hoststack_shm::segment::{SEGMENT_ALLOC_ALIGN, Segment};

/// Most stack threads (and so rx queues) an attach reply may describe.
pub const MAX_THREADS: u32 = 1024;

/// Where one app -> stack rx queue starts in the rx-queues segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxQueueInfo {
    /// Offset of the queue (its events ring) in the segment.
    pub offset: u64,
}

/// The app's rx queues: one segment, one queue per stack thread.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RxQueuesInfo {
    /// Bytes of the rx-queues segment (0 when there are no queues).
    pub segment_size: u64,
    /// One per stack thread, in thread order, or none at all when the
    /// stack gives the app no private rx queues.
    pub queues: Vec<RxQueueInfo>,
}

/// Payload bytes of an events-ring slot.
pub const IO_SLOT_SIZE: u32 = 64;

/// Payload bytes of a control-ring slot.
pub const CONTROL_SLOT_SIZE: u32 = 256;

/// Fewest events-ring slots [`rx_queue_slots`] gives.
pub const MIN_RX_QUEUE_SLOTS: u32 = 128;

/// Most events-ring slots a queue may have.
pub const MAX_RX_QUEUE_SLOTS: u32 = 1 << 16;

/// Fewest events-ring slots [`AppRxQueues::create`] accepts (the control
/// ring needs two).
const MIN_SLOTS: u32 = 4;

/// Bytes of an encoded [`IoMessage`].
pub const IO_MESSAGE_LEN: usize = 9;

const IO_TX: u8 = 0x01;
const IO_DEQUEUE_NOTIFY: u8 = 0x02;
const IO_DISCONNECT: u8 = 0x03;
const IO_PING: u8 = 4;
const CONTROL_LISTEN: u8 = 0x11;
const CONTROL_UNLISTEN: u8 = 0x12;
const CONTROL_CONNECT: u8 = 0x13;
const CONTROL_DISCONNECT: u8 = 0x14;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Events-ring slots for an app whose event queue has `event_queue_size`
/// slots: at least [`MIN_RX_QUEUE_SLOTS`], at most
/// [`MAX_RX_QUEUE_SLOTS`], rounded up to a power of two.
pub fn rx_queue_slots(event_queue_size: u32) -> u32 {
    event_queue_size
        .clamp(MIN_RX_QUEUE_SLOTS, MAX_RX_QUEUE_SLOTS)
        .next_power_of_two()
}

fn control_slots(events_slots: u32) -> u32 {
    (events_slots / 2).max(2)
}

/// An io notification from an app (events ring, 64-byte slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMessage {
    /// The app wrote into the session's tx fifo.
    Tx {
        /// The session handle.
        session: u64,
    },
    /// The app drained an rx fifo the stack had stopped filling (it was
    /// full); the stack may go on receiving.
    DequeueNotify {
        /// The session handle.
        session: u64,
    },
    /// The app closes the session.
    Disconnect {
        /// The session handle.
        session: u64,
    },
    /// A probe with no effect but to be counted: measures how long a
    /// message waits for its stack thread (the stress and fairness tests
    /// of interrupt mode use it).
    Ping {
        /// The sender's CLOCK_MONOTONIC time, in nanoseconds.
        sent_ns: u64,
    },
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the
/// machine, for [`IoMessage::Ping`].
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

impl IoMessage {
    /// The encoded message (kind, then the session handle, little endian).
    pub fn encode(&self) -> [u8; IO_MESSAGE_LEN] {
        let (kind, session) = match *self {
            Self::Tx { session } => (IO_TX, session),
            Self::DequeueNotify { session } => (IO_DEQUEUE_NOTIFY, session),
            Self::Disconnect { session } => (IO_DISCONNECT, session),
            Self::Ping { sent_ns } => (IO_PING, sent_ns),
        };
        let mut out = [0u8; IO_MESSAGE_LEN];
        out[0] = kind;
        out[1..].copy_from_slice(&session.to_le_bytes());
        out
    }

    /// Decodes exactly one message; anything else is `Corrupted`.
    pub fn decode(buf: &[u8]) -> SessionResult<Self> {
        let mut r = Reader { buf, at: 0 };
        let message = match r.u8()? {
            IO_TX => Self::Tx { session: r.u64()? },
            IO_DEQUEUE_NOTIFY => Self::DequeueNotify { session: r.u64()? },
            IO_DISCONNECT => Self::Disconnect { session: r.u64()? },
            IO_PING => Self::Ping { sent_ns: r.u64()? },
            k => return Err(bad(format_args!("unknown io message kind {k:#x}"))),
        };
        r.finish(message)
    }

    /// The session the message is about (0 for a ping).
    pub fn session(&self) -> u64 {
        match *self {
            Self::Tx { session }
            | Self::DequeueNotify { session }
            | Self::Disconnect { session } => session,
            Self::Ping { .. } => 0,
        }
    }
}

/// A control request from an app (control ring, 256-byte slot). The reply
/// comes back on the worker's event queue, tagged with `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage {
    /// Listen on an endpoint.
    Listen {
        /// The app worker's map index.
        worker: u32,
        /// Request id the reply will carry.
        request: u32,
        /// Transport.
        proto: TransportProto,
        /// Where to listen.
        endpoint: Endpoint,
    },
    /// Stop listening.
    Unlisten {
        /// The app worker's map index.
        worker: u32,
        /// Request id the reply will carry.
        request: u32,
        /// The listener handle.
        listener: u64,
    },
    /// Connect to a remote endpoint.
    Connect {
        /// The app worker's map index.
        worker: u32,
        /// Request id the reply will carry.
        request: u32,
        /// Transport.
        proto: TransportProto,
        /// The remote end.
        endpoint: Endpoint,
        /// A value the connected event hands back.
        opaque: u64,
    },
    /// Close a session.
    Disconnect {
        /// The app worker's map index.
        worker: u32,
        /// Request id the reply will carry.
        request: u32,
        /// The session handle.
        session: u64,
    },
}

impl ControlMessage {
    /// The encoded message: kind, worker, request, then the variant's
    /// fields (endpoints as family 4/6, port, 16 address bytes with IPv4
    /// mapped into IPv6).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(48);
        let (kind, worker, request) = match *self {
            Self::Listen {
                worker, request, ..
            } => (CONTROL_LISTEN, worker, request),
            Self::Unlisten {
                worker, request, ..
            } => (CONTROL_UNLISTEN, worker, request),
            Self::Connect {
                worker, request, ..
            } => (CONTROL_CONNECT, worker, request),
            Self::Disconnect {
                worker, request, ..
            } => (CONTROL_DISCONNECT, worker, request),
        };
        w.push(kind);
        w.extend_from_slice(&worker.to_le_bytes());
        w.extend_from_slice(&request.to_le_bytes());
        match self {
            Self::Listen {
                proto, endpoint, ..
            } => {
                w.push(proto_code(*proto));
                put_endpoint(&mut w, endpoint);
            }
            Self::Unlisten { listener, .. } => w.extend_from_slice(&listener.to_le_bytes()),
            Self::Connect {
                proto,
                endpoint,
                opaque,
                ..
            } => {
                w.push(proto_code(*proto));
                put_endpoint(&mut w, endpoint);
                w.extend_from_slice(&opaque.to_le_bytes());
            }
            Self::Disconnect { session, .. } => w.extend_from_slice(&session.to_le_bytes()),
        }
        w
    }

    /// Decodes exactly one message; anything else is `Corrupted`.
    pub fn decode(buf: &[u8]) -> SessionResult<Self> {
        let mut r = Reader { buf, at: 0 };
        let kind = r.u8()?;
        if !(CONTROL_LISTEN..=CONTROL_DISCONNECT).contains(&kind) {
            return Err(bad(format_args!("unknown control message kind {kind:#x}")));
        }
        let worker = r.u32()?;
        let request = r.u32()?;
        let message = match kind {
            CONTROL_LISTEN => Self::Listen {
                worker,
                request,
                proto: r.proto()?,
                endpoint: r.endpoint()?,
            },
            CONTROL_UNLISTEN => Self::Unlisten {
                worker,
                request,
                listener: r.u64()?,
            },
            CONTROL_CONNECT => Self::Connect {
                worker,
                request,
                proto: r.proto()?,
                endpoint: r.endpoint()?,
                opaque: r.u64()?,
            },
            _ => Self::Disconnect {
                worker,
                request,
                session: r.u64()?,
            },
        };
        r.finish(message)
    }

    /// The app worker the request comes from.
    pub fn worker(&self) -> u32 {
        match *self {
            Self::Listen { worker, .. }
            | Self::Unlisten { worker, .. }
            | Self::Connect { worker, .. }
            | Self::Disconnect { worker, .. } => worker,
        }
    }

    /// The request id the reply must carry.
    pub fn request(&self) -> u32 {
        match *self {
            Self::Listen { request, .. }
            | Self::Unlisten { request, .. }
            | Self::Connect { request, .. }
            | Self::Disconnect { request, .. } => request,
        }
    }
}

/// One message taken from an [`AppRxQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMessage {
    /// From the events ring.
    Io(IoMessage),
    /// From the control ring.
    Control(ControlMessage),
}

impl RxMessage {
    /// The encoded message: an [`IoMessage`] or a [`ControlMessage`],
    /// told apart by the kind byte they start with.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Io(m) => m.encode().to_vec(),
            Self::Control(m) => m.encode(),
        }
    }

    /// Decodes exactly one message of either kind; anything else is
    /// `Corrupted`.
    pub fn decode(buf: &[u8]) -> SessionResult<Self> {
        match buf.first() {
            Some(&k) if k < CONTROL_LISTEN => IoMessage::decode(buf).map(Self::Io),
            Some(_) => ControlMessage::decode(buf).map(Self::Control),
            None => Err(bad("empty message")),
        }
    }
}

fn proto_code(p: TransportProto) -> u8 {
    match p {
        TransportProto::Tcp => 0,
        TransportProto::Udp => 1,
    }
}

fn put_endpoint(w: &mut Vec<u8>, e: &Endpoint) {
    let (family, addr) = match e.ip {
        IpAddr::V4(a) => (FAMILY_V4, a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    };
    w.push(family);
    w.extend_from_slice(&e.port.to_le_bytes());
    w.extend_from_slice(&addr);
}

fn bad(what: impl std::fmt::Display) -> SessionError {
    SessionError::Corrupted(format!("app rx queue message: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> SessionResult<[u8; N]> {
        let bytes = self
            .buf
            .get(self.at..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or_else(|| bad("truncated"))?;
        self.at += N;
        Ok(*bytes)
    }
    fn u8(&mut self) -> SessionResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> SessionResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> SessionResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn proto(&mut self) -> SessionResult<TransportProto> {
        match self.u8()? {
            0 => Ok(TransportProto::Tcp),
            1 => Ok(TransportProto::Udp),
            p => Err(bad(format_args!("unknown protocol {p}"))),
        }
    }
    fn endpoint(&mut self) -> SessionResult<Endpoint> {
        let family = self.u8()?;
        let port = u16::from_le_bytes(self.array()?);
        let v6 = Ipv6Addr::from(self.array::<16>()?);
        let ip = match family {
            FAMILY_V4 => IpAddr::V4(
                v6.to_ipv4_mapped()
                    .ok_or_else(|| bad("IPv4 endpoint with a non-mapped address"))?,
            ),
            FAMILY_V6 => IpAddr::V6(v6),
            f => return Err(bad(format_args!("unknown address family {f}"))),
        };
        Ok(Endpoint { ip, port })
    }
    fn finish<T>(self, value: T) -> SessionResult<T> {
        if self.at != self.buf.len() {
            return Err(bad(format_args!(
                "{} trailing bytes",
                self.buf.len() - self.at
            )));
        }
        Ok(value)
    }
}

/// One app's rx queue towards one stack thread: an events ring, a control
/// ring and the eventfd both signal.
///
/// Producers (app threads) call [`AppRxQueue::send_io`] and
/// [`AppRxQueue::send_control`] through `&self`, from any number of
/// threads ([`AppRxQueue::try_clone`] gives more handles); the one consumer
/// (the stack thread) calls [`AppRxQueue::recv`].
#[derive(Debug)]
pub struct AppRxQueue {
    events: MessageQueue,
    control: MessageQueue,
    eventfd: EventFd,
    /// Which ring `recv` tries first next time.
    control_turn: bool,
}

impl AppRxQueue {
    /// Bytes one queue with `slots` events-ring slots takes in the segment.
    /// `InvalidValue` for a slot count out of range.
    pub fn required_size(slots: u32) -> SessionResult<usize> {
        if !(MIN_SLOTS..=MAX_RX_QUEUE_SLOTS).contains(&slots) {
            return Err(SessionError::InvalidValue(format!(
                "app rx queue slots {slots} not in {MIN_SLOTS}..={MAX_RX_QUEUE_SLOTS}"
            )));
        }
        Ok(MessageQueue::required_size(slots, IO_SLOT_SIZE)?
            + MessageQueue::required_size(control_slots(slots), CONTROL_SLOT_SIZE)?)
    }

    /// Formats an empty queue at `offset` (stack side).
    fn format(
        segment: &Segment,
        offset: usize,
        slots: u32,
        eventfd: EventFd,
    ) -> SessionResult<Self> {
        let region = segment.region();
        let events = MessageQueue::init_at(
            region,
            offset,
            slots,
            IO_SLOT_SIZE,
            Some(eventfd.try_clone()?),
        )?;
        let control_offset = offset + MessageQueue::required_size(slots, IO_SLOT_SIZE)?;
        let control = MessageQueue::init_at(
            region,
            control_offset,
            control_slots(slots),
            CONTROL_SLOT_SIZE,
            Some(eventfd.try_clone()?),
        )?;
        Ok(Self {
            events,
            control,
            eventfd,
            control_turn: true,
        })
    }

    /// Attaches to a queue someone else formatted at `offset` (app side),
    /// checking its geometry is what this module formats.
    fn attach_at(segment: &Segment, offset: usize, eventfd: EventFd) -> SessionResult<Self> {
        let region = segment.region();
        let events = MessageQueue::attach(region, offset, Some(eventfd.try_clone()?))?;
        let slots = events.capacity() as u32;
        if events.slot_size() != IO_SLOT_SIZE as usize
            || !(MIN_SLOTS..=MAX_RX_QUEUE_SLOTS).contains(&slots)
        {
            return Err(SessionError::Corrupted(format!(
                "rx queue at {offset}: events ring of {slots} slots of {} bytes",
                events.slot_size()
            )));
        }
        let control_offset = offset + MessageQueue::required_size(slots, IO_SLOT_SIZE)?;
        let control = MessageQueue::attach(region, control_offset, Some(eventfd.try_clone()?))?;
        if control.slot_size() != CONTROL_SLOT_SIZE as usize
            || control.capacity() != control_slots(slots) as usize
        {
            return Err(SessionError::Corrupted(format!(
                "rx queue at {offset}: control ring of {} slots of {} bytes",
                control.capacity(),
                control.slot_size()
            )));
        }
        Ok(Self {
            events,
            control,
            eventfd,
            control_turn: true,
        })
    }

    /// Eventfd writes (system calls) this handle made while sending.
    pub fn notifications(&self) -> u64 {
        self.events.notifications() + self.control.notifications()
    }

    /// Posts an io notification. `QueueFull` when the events ring is full
    /// (the stack thread is behind: retry later); signals the eventfd if
    /// the ring was empty.
    pub fn send_io(&self, message: &IoMessage) -> SessionResult<()> {
        Ok(self.events.try_send(&message.encode())?)
    }

    /// Posts a control request. `QueueFull` when the control ring is full;
    /// signals the eventfd if the ring was empty.
    pub fn send_control(&self, message: &ControlMessage) -> SessionResult<()> {
        Ok(self.control.try_send(&message.encode())?)
    }

    /// Takes the next message, `None` when both rings are empty.
    ///
    /// Fair between the rings: the calls take from the control ring and
    /// the events ring in turn (one each while both have messages; from
    /// whichever has messages otherwise). Each ring is FIFO; there is no
    /// order between the rings.
    ///
    /// `Corrupted` when the app wrote garbage: the bad message is dropped
    /// and the next call goes on (a ring whose state is broken keeps
    /// failing, but the other ring is still served).
    pub fn recv(&mut self) -> SessionResult<Option<RxMessage>> {
        let control_first = self.control_turn;
        self.control_turn = !control_first;
        if control_first {
            if let Some(m) = self.recv_control()? {
                return Ok(Some(m));
            }
            self.recv_io()
        } else {
            if let Some(m) = self.recv_io()? {
                return Ok(Some(m));
            }
            self.recv_control()
        }
    }

    fn recv_io(&mut self) -> SessionResult<Option<RxMessage>> {
        let mut buf = [0u8; IO_SLOT_SIZE as usize];
        match self.events.try_recv(&mut buf)? {
            Some(n) => Ok(Some(RxMessage::Io(IoMessage::decode(&buf[..n])?))),
            None => Ok(None),
        }
    }

    fn recv_control(&mut self) -> SessionResult<Option<RxMessage>> {
        let mut buf = [0u8; CONTROL_SLOT_SIZE as usize];
        match self.control.try_recv(&mut buf)? {
            Some(n) => Ok(Some(RxMessage::Control(ControlMessage::decode(&buf[..n])?))),
            None => Ok(None),
        }
    }

    /// The eventfd both rings signal (register it with the thread's poll
    /// set; drain it after waking).
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    /// Whether both rings are empty (a snapshot, for bookkeeping; use
    /// [`AppRxQueue::empty_before_sleep`] to decide whether to sleep).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.control.is_empty()
    }

    /// Consumer: whether either ring has a published message at its head
    /// (what `recv` returns next). A slot an app claimed and never
    /// published, or indices it rewrote, do not count: nothing spins on
    /// them.
    pub fn has_ready(&self) -> bool {
        self.events.has_ready() || self.control.has_ready()
    }

    /// Consumer: whether either ring's head slot holds a value no producer
    /// could have written (`recv` would fail on it).
    pub fn head_corrupted(&self) -> bool {
        self.events.head_corrupted() || self.control.head_corrupted()
    }

    /// Consumer: both rings' heads in one state (see
    /// [`MessageQueue::head_state`]): `Corrupted` if either is, else
    /// `Ready` if either is, else the first ring whose head slot is claimed
    /// and unpublished, else `Empty`. The control ring's positions are
    /// marked with the top bit so the two rings' stalls differ.
    pub fn head_state(&self) -> HeadState {
        let events = self.events.head_state();
        let control = match self.control.head_state() {
            HeadState::Unpublished(p) => HeadState::Unpublished(p | 1 << 63),
            other => other,
        };
        match (events, control) {
            (c @ HeadState::Corrupted(_), _) | (_, c @ HeadState::Corrupted(_)) => c,
            (HeadState::Ready, _) | (_, HeadState::Ready) => HeadState::Ready,
            (u @ HeadState::Unpublished(_), _) | (_, u @ HeadState::Unpublished(_)) => u,
            _ => HeadState::Empty,
        }
    }

    /// Messages waiting in both rings (a snapshot).
    pub fn len(&self) -> usize {
        self.events.len() + self.control.len()
    }

    /// Consumer, before sleeping on the eventfd: `true` if both rings are
    /// still empty and sleeping is safe, `false` if a message is ready.
    /// Each ring's check is fenced as [`MessageQueue::empty_before_sleep`]
    /// describes; a message either shows up here or its producer signals
    /// the eventfd.
    pub fn empty_before_sleep(&self) -> bool {
        let empty = self.control.empty_before_sleep() && self.events.empty_before_sleep();
        if !empty {
            self.awake();
        }
        empty
    }

    /// After a sleep (or an announced one not taken): producers stop
    /// writing the eventfd.
    pub fn awake(&self) {
        self.control.awake();
        self.events.awake();
    }

    /// Consumer: sleeps until a message may be ready or `timeout` passes.
    /// Returns `true` at once if a message is ready, otherwise whether the
    /// eventfd fired (it is then drained). Spurious `true` is possible, a
    /// lost wakeup is not.
    pub fn wait(&self, timeout: Option<Duration>) -> SessionResult<bool> {
        if !self.empty_before_sleep() {
            return Ok(true);
        }
        let woken = self.eventfd.wait(timeout);
        self.awake();
        let woken = woken?;
        if woken {
            self.eventfd.drain()?;
        }
        Ok(woken)
    }

    /// Offset of the queue (its events ring) in the segment.
    pub fn offset(&self) -> usize {
        self.events.offset()
    }

    /// Slots of the events ring.
    pub fn io_capacity(&self) -> usize {
        self.events.capacity()
    }

    /// Slots of the control ring.
    pub fn control_capacity(&self) -> usize {
        self.control.capacity()
    }

    /// Another handle on the same queue (for another producer thread); the
    /// eventfds are duplicated.
    pub fn try_clone(&self) -> SessionResult<Self> {
        Ok(Self {
            events: self.events.try_clone()?,
            control: self.control.try_clone()?,
            eventfd: self.eventfd.try_clone()?,
            control_turn: self.control_turn,
        })
    }
}

/// All of one app's rx queues, one per stack thread, in their segment.
#[derive(Debug)]
pub struct AppRxQueues {
    segment: Segment,
    queues: Vec<AppRxQueue>,
}

impl AppRxQueues {
    /// Stack side: creates a segment named `name` holding `threads` empty
    /// queues of `slots` events-ring slots (use [`rx_queue_slots`]), each
    /// with a fresh eventfd. `InvalidValue` for `threads` outside
    /// `1..=MAX_THREADS` or `slots` outside `4..=MAX_RX_QUEUE_SLOTS`.
    pub fn create(name: &str, threads: u32, slots: u32) -> SessionResult<Self> {
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(SessionError::InvalidValue(format!(
                "app rx queues for {threads} threads, expected 1..={MAX_THREADS}"
            )));
        }
        let queue_size = AppRxQueue::required_size(slots)?;
        let mut segment = Segment::create(name, queue_size * threads as usize)?;
        let mut queues = Vec::with_capacity(threads as usize);
        for _ in 0..threads {
            let offset = segment.allocate(queue_size)?;
            queues.push(AppRxQueue::format(
                &segment,
                offset,
                slots,
                EventFd::new()?,
            )?);
        }
        Ok(Self { segment, queues })
    }

    /// App side: attaches to the queues the stack described in `info`, in
    /// `segment` (mapped from the fd that came with the attach reply), with
    /// one eventfd per queue in queue order.
    ///
    /// `InvalidValue` when the segment's size differs from
    /// `info.segment_size`, there are no queues, or the eventfd count does
    /// not match; `Corrupted` when an offset is outside the segment or
    /// misaligned, two queues overlap, or a queue's header is not what
    /// [`AppRxQueues::create`] writes.
    pub fn attach(
        segment: Segment,
        info: &RxQueuesInfo,
        eventfds: Vec<OwnedFd>,
    ) -> SessionResult<Self> {
        if info.segment_size != segment.size() as u64 {
            return Err(SessionError::InvalidValue(format!(
                "rx queues segment is {} bytes, expected {}",
                segment.size(),
                info.segment_size
            )));
        }
        if info.queues.is_empty() || info.queues.len() > MAX_THREADS as usize {
            return Err(SessionError::InvalidValue(format!(
                "{} rx queues, expected 1..={MAX_THREADS}",
                info.queues.len()
            )));
        }
        if eventfds.len() != info.queues.len() {
            return Err(SessionError::InvalidValue(format!(
                "{} eventfds for {} rx queues",
                eventfds.len(),
                info.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(info.queues.len());
        for (q, fd) in info.queues.iter().zip(eventfds) {
            let offset = usize::try_from(q.offset)
                .ok()
                .filter(|&o| o < segment.size() && o % SEGMENT_ALLOC_ALIGN == 0)
                .ok_or_else(|| {
                    SessionError::Corrupted(format!(
                        "rx queue offset {} is outside or misaligned in a segment of {} bytes",
                        q.offset,
                        segment.size()
                    ))
                })?;
            queues.push(AppRxQueue::attach_at(
                &segment,
                offset,
                EventFd::from_owned_fd(fd)?,
            )?);
        }
        let mut ranges: Vec<(usize, usize)> = queues
            .iter()
            .map(|q| {
                let size = AppRxQueue::required_size(q.io_capacity() as u32).unwrap_or(0);
                (q.offset(), q.offset() + size)
            })
            .collect();
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(SessionError::Corrupted("rx queues overlap".into()));
        }
        Ok(Self { segment, queues })
    }

    /// The segment holding the queues.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The queues, index = stack thread (the main thread last).
    pub fn queues(&self) -> &[AppRxQueue] {
        &self.queues
    }

    /// The queues, mutably (to receive).
    pub fn queues_mut(&mut self) -> &mut [AppRxQueue] {
        &mut self.queues
    }

    /// The queue of one stack thread.
    pub fn queue(&self, thread: usize) -> Option<&AppRxQueue> {
        self.queues.get(thread)
    }

    /// What the attach reply tells the app.
    pub fn info(&self) -> RxQueuesInfo {
        RxQueuesInfo {
            segment_size: self.segment.size() as u64,
            queues: self
                .queues
                .iter()
                .map(|q| RxQueueInfo {
                    offset: q.offset() as u64,
                })
                .collect(),
        }
    }

    /// The queues' eventfds, in queue order.
    pub fn eventfds(&self) -> Vec<BorrowedFd<'_>> {
        self.queues.iter().map(|q| q.eventfd.as_fd()).collect()
    }

    /// The fds to send with the attach reply after the worker's: the
    /// segment, then one eventfd per queue (the order of
    /// [`crate::app_wire`]).
    pub fn fds_to_send(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.segment.fd())
            .chain(self.queues.iter().map(|q| q.eventfd.as_fd()))
            .collect()
    }

    /// Splits into the segment and the queues (e.g. to hand each queue to
    /// its thread; each keeps the mapping alive on its own).
    pub fn into_parts(self) -> (Segment, Vec<AppRxQueue>) {
        (self.segment, self.queues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::Instant;

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::from(sa)
    }

    fn control_messages() -> Vec<ControlMessage> {
        vec![
            ControlMessage::Listen {
                worker: 1,
                request: 2,
                proto: TransportProto::Tcp,
                endpoint: ep("0.0.0.0:80"),
            },
            ControlMessage::Listen {
                worker: 0,
                request: u32::MAX,
                proto: TransportProto::Udp,
                endpoint: ep("[fd00::1]:5353"),
            },
            ControlMessage::Unlisten {
                worker: 3,
                request: 4,
                listener: 0x1_0000_0005,
            },
            ControlMessage::Connect {
                worker: 5,
                request: 6,
                proto: TransportProto::Tcp,
                endpoint: ep("10.1.2.3:443"),
                opaque: 0xfeed,
            },
            ControlMessage::Connect {
                worker: 5,
                request: 7,
                proto: TransportProto::Udp,
                endpoint: ep("[::ffff:1.2.3.4]:53"),
                opaque: 0,
            },
            ControlMessage::Disconnect {
                worker: 7,
                request: 8,
                session: u64::MAX,
            },
        ]
    }

    fn io_messages() -> Vec<IoMessage> {
        vec![
            IoMessage::Tx { session: 0 },
            IoMessage::DequeueNotify { session: 42 },
            IoMessage::Disconnect { session: u64::MAX },
        ]
    }

    /// Stack side and app side of the same queues, the app side mapped
    /// from a duplicate of the segment fd as if it came over the socket.
    fn pair(threads: u32, slots: u32) -> (AppRxQueues, AppRxQueues) {
        let stack = AppRxQueues::create("hs-rxq-test", threads, slots).unwrap();
        let app = attach_app(&stack);
        (stack, app)
    }

    fn dup_eventfds(stack: &AppRxQueues) -> Vec<OwnedFd> {
        stack
            .eventfds()
            .into_iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect()
    }

    fn attach_app(stack: &AppRxQueues) -> AppRxQueues {
        let info = stack.info();
        let segment = Segment::map(
            stack.segment().try_clone_fd().unwrap(),
            info.segment_size as usize,
        )
        .unwrap();
        AppRxQueues::attach(segment, &info, dup_eventfds(stack)).unwrap()
    }

    fn try_attach(stack: &AppRxQueues, info: &RxQueuesInfo) -> SessionResult<AppRxQueues> {
        let segment = Segment::map(
            stack.segment().try_clone_fd().unwrap(),
            stack.segment().size(),
        )
        .unwrap();
        let mut fds = dup_eventfds(stack);
        fds.truncate(info.queues.len());
        AppRxQueues::attach(segment, info, fds)
    }

    #[test]
    fn io_and_control_messages_round_trip() {
        for m in io_messages() {
            assert_eq!(IoMessage::decode(&m.encode()).unwrap(), m);
        }
        for m in control_messages() {
            let bytes = m.encode();
            assert!(bytes.len() <= CONTROL_SLOT_SIZE as usize);
            assert_eq!(ControlMessage::decode(&bytes).unwrap(), m);
        }
        assert_eq!(control_messages()[3].worker(), 5);
        assert_eq!(control_messages()[3].request(), 6);
        assert_eq!(io_messages()[1].session(), 42);
    }

    #[test]
    fn malformed_messages_are_corrupted() {
        let corrupted = |r: SessionResult<ControlMessage>| {
            assert!(matches!(r, Err(SessionError::Corrupted(_))), "{r:?}");
        };
        let listen = control_messages()[0].encode();
        let mut m = listen.clone();
        m.push(0);
        corrupted(ControlMessage::decode(&m)); // trailing byte
        corrupted(ControlMessage::decode(&listen[..listen.len() - 1]));
        corrupted(ControlMessage::decode(&[]));
        let mut m = listen.clone();
        m[9] = 7; // protocol
        corrupted(ControlMessage::decode(&m));
        let mut m = listen.clone();
        m[10] = 5; // family
        corrupted(ControlMessage::decode(&m));
        let mut m = listen.clone();
        m[13] = 1; // an IPv4 endpoint whose address is not v4-mapped
        corrupted(ControlMessage::decode(&m));
        // An io message on the control ring and the other way round.
        corrupted(ControlMessage::decode(
            &IoMessage::Tx { session: 1 }.encode(),
        ));
        assert!(matches!(
            IoMessage::decode(&control_messages()[5].encode()),
            Err(SessionError::Corrupted(_))
        ));
        let tx = IoMessage::Tx { session: 1 }.encode();
        assert!(IoMessage::decode(&tx[..8]).is_err());
        assert!(IoMessage::decode(&[tx.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut rng = StdRng::seed_from_u64(0x5258);
        let mut ok = 0;
        for i in 0..20_000 {
            let len = rng.random_range(0..=CONTROL_SLOT_SIZE as usize);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 2 == 0 && !buf.is_empty() {
                // Plausible kinds reach deeper into the decoders.
                buf[0] = rng.random_range(0..0x16);
            }
            ok += usize::from(IoMessage::decode(&buf).is_ok());
            ok += usize::from(ControlMessage::decode(&buf).is_ok());
        }
        assert!(ok < 20_000);
    }

    #[test]
    fn slots_are_at_least_128_and_a_power_of_two() {
        assert_eq!(rx_queue_slots(0), 128);
        assert_eq!(rx_queue_slots(100), 128);
        assert_eq!(rx_queue_slots(129), 256);
        assert_eq!(rx_queue_slots(2048), 2048);
        assert_eq!(rx_queue_slots(u32::MAX), MAX_RX_QUEUE_SLOTS);
    }

    #[test]
    fn create_lays_out_one_queue_per_thread() {
        let stack = AppRxQueues::create("hs-rxq-layout", 3, 128).unwrap();
        let info = stack.info();
        assert_eq!(info.queues.len(), 3);
        let size = AppRxQueue::required_size(128).unwrap();
        assert_eq!(info.segment_size as usize, 3 * size);
        for (i, q) in stack.queues().iter().enumerate() {
            assert_eq!(q.offset(), i * size);
            assert_eq!(q.io_capacity(), 128);
            assert_eq!(q.control_capacity(), 64);
            assert!(q.is_empty());
        }
        let fds = stack.fds_to_send();
        assert_eq!(fds.len(), 4);
        assert_eq!(stack.eventfds().len(), 3);
        assert!(matches!(
            AppRxQueues::create("x", 0, 128),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(matches!(
            AppRxQueues::create("x", 1, 3),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(matches!(
            AppRxQueues::create("x", 1, MAX_RX_QUEUE_SLOTS + 1),
            Err(SessionError::InvalidValue(_))
        ));
    }

    #[test]
    fn messages_reach_the_queue_of_their_thread_only() {
        let (mut stack, app) = pair(3, 128);
        app.queue(1)
            .unwrap()
            .send_io(&IoMessage::Tx { session: 9 })
            .unwrap();
        app.queue(2)
            .unwrap()
            .send_control(&control_messages()[2])
            .unwrap();
        let queues = stack.queues_mut();
        assert_eq!(queues[0].recv().unwrap(), None);
        assert_eq!(
            queues[1].recv().unwrap(),
            Some(RxMessage::Io(IoMessage::Tx { session: 9 }))
        );
        assert_eq!(
            queues[2].recv().unwrap(),
            Some(RxMessage::Control(control_messages()[2]))
        );
        for q in queues.iter_mut() {
            assert_eq!(q.recv().unwrap(), None);
            assert!(q.is_empty());
        }
    }

    #[test]
    fn recv_alternates_between_the_rings() {
        let (mut stack, app) = pair(1, 128);
        let producer = app.queue(0).unwrap();
        for s in 0..3 {
            producer.send_io(&IoMessage::Tx { session: s }).unwrap();
        }
        for c in &control_messages()[..2] {
            producer.send_control(c).unwrap();
        }
        let q = &mut stack.queues_mut()[0];
        let got: Vec<RxMessage> = std::iter::from_fn(|| q.recv().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                RxMessage::Control(control_messages()[0]),
                RxMessage::Io(IoMessage::Tx { session: 0 }),
                RxMessage::Control(control_messages()[1]),
                RxMessage::Io(IoMessage::Tx { session: 1 }),
                RxMessage::Io(IoMessage::Tx { session: 2 }),
            ]
        );
    }

    #[test]
    fn each_ring_signals_the_shared_eventfd_on_its_empty_edge() {
        let (mut stack, app) = pair(1, 128);
        let producer = app.queue(0).unwrap();
        let q = &mut stack.queues_mut()[0];
        assert!(q.empty_before_sleep());
        producer.send_io(&IoMessage::Tx { session: 1 }).unwrap();
        producer.send_io(&IoMessage::Tx { session: 2 }).unwrap();
        assert_eq!(q.eventfd().drain().unwrap(), 1);
        producer.send_control(&control_messages()[0]).unwrap();
        producer.send_control(&control_messages()[1]).unwrap();
        assert_eq!(q.eventfd().drain().unwrap(), 1);
        assert!(!q.empty_before_sleep());
        while q.recv().unwrap().is_some() {}
        assert!(q.empty_before_sleep());
        producer.send_control(&control_messages()[2]).unwrap();
        assert_eq!(q.eventfd().drain().unwrap(), 1);
        assert!(q.wait(Some(Duration::from_secs(1))).unwrap());
        q.recv().unwrap().unwrap();
        assert!(!q.wait(Some(Duration::from_millis(10))).unwrap());
    }

    #[test]
    fn full_rings_report_queue_full_and_recover() {
        let (mut stack, app) = pair(1, 4);
        let producer = app.queue(0).unwrap();
        for s in 0..4 {
            producer.send_io(&IoMessage::Tx { session: s }).unwrap();
        }
        assert!(matches!(
            producer.send_io(&IoMessage::Tx { session: 4 }),
            Err(SessionError::QueueFull)
        ));
        for c in &control_messages()[..2] {
            producer.send_control(c).unwrap();
        }
        assert!(matches!(
            producer.send_control(&control_messages()[2]),
            Err(SessionError::QueueFull)
        ));
        let q = &mut stack.queues_mut()[0];
        assert!(q.recv().unwrap().is_some());
        assert!(q.recv().unwrap().is_some());
        producer.send_io(&IoMessage::Tx { session: 4 }).unwrap();
        producer.send_control(&control_messages()[2]).unwrap();
    }

    #[test]
    fn garbage_in_a_slot_is_corrupted_and_the_next_message_still_arrives() {
        let (mut stack, app) = pair(1, 128);
        let producer = app.queue(0).unwrap();
        producer.events.try_send(&[IO_TX, 1, 2]).unwrap();
        producer.send_io(&IoMessage::Tx { session: 5 }).unwrap();
        producer.control.try_send(&[0xff; 200]).unwrap();
        producer.send_control(&control_messages()[0]).unwrap();
        let q = &mut stack.queues_mut()[0];
        let mut got = Vec::new();
        let mut errors = 0;
        for _ in 0..8 {
            match q.recv() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => {}
                Err(SessionError::Corrupted(_)) => errors += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        // Turns: control (garbage), events (garbage), control, events.
        assert_eq!(errors, 2);
        assert_eq!(
            got,
            vec![
                RxMessage::Control(control_messages()[0]),
                RxMessage::Io(IoMessage::Tx { session: 5 }),
            ]
        );
    }

    #[test]
    fn attach_checks_the_info_against_the_segment() {
        let stack = AppRxQueues::create("hs-rxq-attach", 2, 128).unwrap();
        let good = stack.info();
        let size = AppRxQueue::required_size(128).unwrap() as u64;
        let check = |info: RxQueuesInfo, corrupted: bool| {
            let r = try_attach(&stack, &info);
            if corrupted {
                assert!(
                    matches!(r, Err(SessionError::Corrupted(_))),
                    "{info:?}: {r:?}"
                );
            } else {
                assert!(
                    matches!(r, Err(SessionError::InvalidValue(_))),
                    "{info:?}: {r:?}"
                );
            }
        };
        let with_offsets = |offsets: &[u64]| RxQueuesInfo {
            segment_size: good.segment_size,
            queues: offsets
                .iter()
                .map(|&offset| RxQueueInfo { offset })
                .collect(),
        };
        check(with_offsets(&[0, good.segment_size]), true); // outside
        check(with_offsets(&[0, u64::MAX]), true);
        check(with_offsets(&[0, size + 8]), true); // misaligned
        check(with_offsets(&[0, 0]), true); // overlapping
        check(with_offsets(&[0, 128]), true); // not a queue header
        check(with_offsets(&[0, size - 64]), true); // does not fit
        check(with_offsets(&[]), false);
        check(
            RxQueuesInfo {
                segment_size: good.segment_size + 1,
                ..good.clone()
            },
            false,
        );
        // Eventfd count mismatch.
        let segment = Segment::map(
            stack.segment().try_clone_fd().unwrap(),
            stack.segment().size(),
        )
        .unwrap();
        assert!(matches!(
            AppRxQueues::attach(segment, &good, Vec::new()),
            Err(SessionError::InvalidValue(_))
        ));
        // The good info attaches, queues in reverse order too.
        assert!(try_attach(&stack, &good).is_ok());
        assert!(try_attach(&stack, &with_offsets(&[size, 0])).is_ok());
    }

    #[test]
    fn a_producer_and_a_sleeping_consumer_lose_no_message() {
        const IO_PER_PRODUCER: u64 = 50_000;
        const CONTROL_PER_PRODUCER: u32 = 20_000;
        const PRODUCERS: u64 = 2;
        let (mut stack, app) = pair(1, 128);
        let app = Arc::new(app);
        let done = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let app = Arc::clone(&app);
                thread::spawn(move || {
                    let q = app.queue(0).unwrap();
                    let mut rng = StdRng::seed_from_u64(p);
                    let (mut io, mut control) = (0u64, 0u32);
                    while io < IO_PER_PRODUCER || control < CONTROL_PER_PRODUCER {
                        let send_io = control == CONTROL_PER_PRODUCER
                            || (io < IO_PER_PRODUCER && rng.random_bool(0.7));
                        let r = if send_io {
                            q.send_io(&IoMessage::Tx {
                                session: (p << 32) | io,
                            })
                        } else {
                            q.send_control(&ControlMessage::Disconnect {
                                worker: p as u32,
                                request: control,
                                session: 0,
                            })
                        };
                        match r {
                            Ok(()) if send_io => io += 1,
                            Ok(()) => control += 1,
                            Err(SessionError::QueueFull) => thread::yield_now(),
                            Err(e) => panic!("send failed: {e}"),
                        }
                        if rng.random_ratio(1, 5000) {
                            // Bursts and pauses, so the consumer sleeps.
                            thread::sleep(Duration::from_micros(rng.random_range(0..500)));
                        }
                    }
                })
            })
            .collect();
        let watcher = {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                for p in producers {
                    p.join().unwrap();
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let q = &mut stack.queues_mut()[0];
        let mut next_io = [0u64; PRODUCERS as usize];
        let mut next_control = [0u32; PRODUCERS as usize];
        let total = PRODUCERS * (IO_PER_PRODUCER + u64::from(CONTROL_PER_PRODUCER));
        let (mut received, mut sleeps) = (0u64, 0u64);
        let start = Instant::now();
        while received < total {
            match q.recv().unwrap() {
                Some(RxMessage::Io(IoMessage::Tx { session })) => {
                    let p = (session >> 32) as usize;
                    assert_eq!(
                        session & 0xffff_ffff,
                        next_io[p],
                        "io order of producer {p}"
                    );
                    next_io[p] += 1;
                    received += 1;
                }
                Some(RxMessage::Control(ControlMessage::Disconnect {
                    worker, request, ..
                })) => {
                    let p = worker as usize;
                    assert_eq!(request, next_control[p], "control order of producer {p}");
                    next_control[p] += 1;
                    received += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => {
                    if q.empty_before_sleep() {
                        sleeps += 1;
                        let woken = q.eventfd().wait(Some(Duration::from_secs(10))).unwrap();
                        assert!(
                            woken,
                            "lost wakeup: slept 10 s with {received} of {total} received"
                        );
                        q.eventfd().drain().unwrap();
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(120), "stuck");
        }
        watcher.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(q.recv().unwrap(), None);
        assert_eq!(next_io, [IO_PER_PRODUCER; PRODUCERS as usize]);
        assert_eq!(next_control, [CONTROL_PER_PRODUCER; PRODUCERS as usize]);
        assert!(sleeps > 0, "the consumer never slept");
    }
}
