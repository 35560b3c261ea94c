//! One worker: a thread pinned to a core that owns one NIC queue, one
//! smoltcp interface and its sockets, and the session layer's sessions of
//! that thread.
//!
//! Each loop iteration: pull a burst from the driver, count the SYNs in it
//! so listener pools can grow first, let smoltcp process the burst, turn
//! socket changes into transport events, let the session worker move data
//! between sockets and fifos and call apps, let smoltcp emit, flush the
//! transmit burst. A worker
//! in polling mode loops without pause; in interrupt mode it sleeps after a
//! run of idle iterations until the queue's fd, its control eventfd or the
//! transports' next timer wakes it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use std::net::IpAddr;

use hoststack_drivers::checksum::l4_checksum;
use hoststack_drivers::{GsoKind, PacketIo, TxOffload};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress};
use tracing::{debug, warn};

use crate::config::{StackConfig, TcpEngineKind, TcpTuning};
use crate::device::StackDevice;
use crate::error::{StackError, StackResult};
use crate::fault_injection::FaultInjection;
use crate::handoff::{HandOffCounters, Packet};
use crate::neighbors::{NeighborView, Routes};
use crate::queue_group::QueueShare;
use crate::sleeper::{Sleeper, WakeSource};
use crate::steering::{MAX_HOPS, Route, Router, Steering, tcp_tuple};
use crate::tcp_frames::{header_room, ip_packet, tcp_segment, write_headers};
use crate::tcp_listener::count_syns;
use crate::tcp_transport::EngineTcp;
use crate::transport::{EphemeralPorts, SmolTransportState, SmolTransports};
use hoststack_app_proto::endpoint::TransportProto;
use hoststack_drivers::MacAddr;
use hoststack_session::session_worker::{QueueChange, SessionWorker, TransportSet};
use hoststack_session::transport::Transport;
use hoststack_tcp::{ChecksumMode, TxChecksum};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::raw;
use smoltcp::wire::{IpProtocol, IpVersion};

/// How a worker waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerMode {
    /// Busy loop: lowest latency, one core at 100 %.
    #[default]
    Poll,
    /// Sleep until work arrives (NIC queue, app queues, timers, commands)
    /// as soon as a short run of loops found nothing to do.
    Interrupt,
    /// Poll while traffic keeps the worker busy; sleep like interrupt mode
    /// once it has been idle for the adaptive idle period.
    Adaptive,
}

impl std::str::FromStr for WorkerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poll" | "polling" => Ok(Self::Poll),
            "interrupt" => Ok(Self::Interrupt),
            "adaptive" => Ok(Self::Adaptive),
            _ => Err(format!(
                "unknown worker mode '{s}' (expected poll, interrupt or adaptive)"
            )),
        }
    }
}

impl std::fmt::Display for WorkerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Poll => "poll",
            Self::Interrupt => "interrupt",
            Self::Adaptive => "adaptive",
        })
    }
}

/// Idle loops before an interrupt-mode worker goes to sleep (a few
/// microseconds of spinning catch back-to-back work cheaply).
const IDLE_LOOPS_BEFORE_SLEEP: u32 = 64;

/// How long an adaptive worker keeps polling after its last work.
pub const ADAPTIVE_IDLE: Duration = Duration::from_millis(5);

/// The worker's clock: one monotonic read per loop, handed to smoltcp as
/// its `Instant` (smoltcp's own `Instant::now` reads the wall clock, which
/// costs more and can jump).
#[derive(Debug, Clone, Copy)]
struct LoopClock {
    base: StdInstant,
}

impl LoopClock {
    fn new() -> Self {
        Self {
            base: StdInstant::now(),
        }
    }

    /// smoltcp's time for monotonic instant `t`.
    fn smol(&self, t: StdInstant) -> Instant {
        Instant::from_micros(t.duration_since(self.base).as_micros() as i64)
    }
}

/// Listener pools are swept at least this often (loops) even without SYNs.
const ACCEPT_SWEEP_LOOPS: u64 = 256;
/// How long after a SYN the listener pools are checked on every burst: the
/// handshake's last ACK comes one round trip later, or after a retransmitted
/// SYN-ACK (smoltcp's first RTO is one second).
const HANDSHAKE_WINDOW: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1500);

/// Counters of one worker, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Loop iterations.
    pub loops: AtomicU64,
    /// Times the worker went to sleep.
    pub sleeps: AtomicU64,
    /// Times it woke up.
    pub wakeups: AtomicU64,
    /// 1 while the worker is asleep or sleeping between polls (interrupt
    /// behaviour), 0 while busy polling.
    pub interrupt_state: AtomicU64,
    /// Segments handed to smoltcp as bare ACKs while our window was zero
    /// (see `zero_window`).
    pub zero_window_acks: AtomicU64,
    /// Frames `--inject-loss` dropped on receive and on transmit.
    pub injected_rx_drops: AtomicU64,
    /// See `injected_rx_drops`.
    pub injected_tx_drops: AtomicU64,
    /// Received TCP segments handed straight to hoststack's TCP engine.
    pub tcp_segments_in: AtomicU64,
    /// TCP segments the engine sent in frames built here.
    pub tcp_segments_out: AtomicU64,
    /// Engine segments handed to smoltcp because the next hop's Ethernet
    /// address was not known yet (smoltcp resolves it).
    pub tcp_segments_resolving: AtomicU64,
    /// Engine segments dropped: no route to the destination, or smoltcp's
    /// queue for unresolved next hops was full.
    pub tcp_segments_unsent: AtomicU64,
    /// Packets handed to and from the other workers of the interface.
    pub handoff: Arc<HandOffCounters>,
    /// Frames injected into smoltcp that no queue received (hand-offs,
    /// answers from the shared neighbour table) and those dropped because
    /// too many waited.
    pub injected_frames: AtomicU64,
    /// See `injected_frames`.
    pub injected_dropped: AtomicU64,
    /// smoltcp's ARP requests and neighbour solicitations answered from
    /// the interface's shared neighbour table.
    pub neighbor_answers: AtomicU64,
    /// hoststack's TCP engine as of the last publication (about once a
    /// second); `None` with smoltcp's TCP.
    pub tcp: std::sync::Mutex<Option<TcpSnapshot>>,
}

/// What `show interface` and the metrics show of a worker's TCP engine.
#[derive(Debug, Clone, Default)]
pub struct TcpSnapshot {
    /// Established and closing connections.
    pub connections: usize,
    /// Half-open (SYN-RECEIVED) entries.
    pub half_open: usize,
    /// TIME-WAIT entries.
    pub time_wait: usize,
    /// Buffer chunks in use.
    pub buffer_chunks: usize,
    /// Every engine counter.
    pub counters: hoststack_tcp::TcpCounters,
}

/// What other threads use to talk to a worker.
#[derive(Debug)]
pub struct WorkerControl {
    stop: AtomicBool,
    wake: OwnedFd,
}

impl WorkerControl {
    /// A control block with its eventfd.
    pub fn new() -> StackResult<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            wake: crate::sys::eventfd()?,
        })
    }

    /// Asks the worker to stop and wakes it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes the worker if it sleeps.
    pub fn wake(&self) {
        crate::sys::eventfd_signal(&self.wake);
    }

    /// True once a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What the worker needs to run hoststack's TCP engine beside smoltcp:
/// the engine, where frames go (routes and next hops' addresses), and
/// smoltcp raw sockets that carry a segment whose next hop must be
/// resolved first.
struct TcpPath {
    engine: EngineTcp,
    routes: Routes,
    mac: MacAddr,
    raw4: SocketHandle,
    raw6: SocketHandle,
    /// Whether the last segment was IPv6: where the next one is written.
    last_v6: bool,
    /// The engine writes partial checksums for the device to complete.
    offloads_checksum: bool,
    ip_id: u16,
    scratch: Vec<u8>,
    segments_in: u64,
    segments_out: u64,
    resolving: u64,
    unsent: u64,
}

impl TcpPath {
    /// Takes the TCP segments of the waiting burst for the engine (after
    /// learning next hops from every frame), handing those of flows
    /// another worker holds (and UDP datagrams for another worker's
    /// sessions) to their owners; returns how many segments it took.
    #[allow(clippy::too_many_arguments)]
    fn receive<D: PacketIo>(
        &mut self,
        device: &mut StackDevice<D>,
        neighbors: &mut NeighborView,
        mut steer: Option<Router<'_>>,
        udp: &SmolTransportState,
        now: Instant,
        mut faults: Option<&mut FaultInjection>,
    ) -> usize {
        let mut taken = 0;
        let table = self.engine.table();
        let Self {
            engine,
            routes,
            mac,
            ..
        } = self;
        device.divert(|bytes| {
            neighbors.observe(routes, bytes);
            let Some(t) = tcp_segment(bytes, mac, routes) else {
                // A UDP datagram for a session of another worker goes there
                // whole; everything else is smoltcp's, here.
                if let Some(st) = steer.as_mut() {
                    if let Some(to) = st.udp_owner(bytes, mac, routes, udp) {
                        st.hand_off(to, Packet::Frame, 0, bytes);
                        return true;
                    }
                }
                return false;
            };
            taken += 1;
            if faults.as_mut().is_some_and(|f| f.drop_frame(true)) {
                return true;
            }
            deliver_segment(
                engine,
                steer.as_mut(),
                now,
                table,
                (t.src, t.dst),
                t.segment,
                0,
            );
            true
        });
        self.segments_in += taken;
        taken as usize
    }

    /// Sends what the engine has, in frames built here, or through smoltcp
    /// when the next hop is not resolved yet; returns (frames built,
    /// whether smoltcp got segments to send).
    fn transmit<D: PacketIo>(
        &mut self,
        device: &mut StackDevice<D>,
        sockets: &mut SocketSet<'static>,
        neighbors: &mut NeighborView,
        now: Instant,
        mut faults: Option<&mut FaultInjection>,
    ) -> (usize, bool) {
        let (mut built, mut to_smoltcp) = (0, false);
        loop {
            let mut done = false;
            let Self {
                engine,
                routes,
                mac,
                last_v6,
                ip_id,
                scratch,
                raw4,
                raw6,
                resolving,
                unsent,
                offloads_checksum,
                ..
            } = self;
            let partial = *offloads_checksum;
            let r = device.send_frame_offloaded(|buf| {
                let room = header_room(*last_v6);
                if buf.len() <= room {
                    done = true;
                    return (0, None);
                }
                // A super-segment's IP packet must fit the 16-bit length.
                let end = buf.len().min(room + MAX_SEGMENT);
                let Some(t) = engine.endpoint().poll_transmit(now, &mut buf[room..end]) else {
                    done = true;
                    return (0, None);
                };
                let v6 = t.dst.is_ipv6();
                let need = header_room(v6);
                if need != room {
                    // Wrong guess of the family: move the segment.
                    if need + t.len > buf.len() {
                        *unsent += 1;
                        return (0, None);
                    }
                    buf.copy_within(room..room + t.len, need);
                    *last_v6 = v6;
                }
                *ip_id = ip_id.wrapping_add(1);
                if faults.as_mut().is_some_and(|f| f.drop_frame(false)) {
                    return (0, None);
                }
                let Some(hop) = routes.next_hop(t.dst) else {
                    *unsent += 1;
                    return (0, None);
                };
                match neighbors.lookup(hop) {
                    Some(dst_mac) => {
                        let n = write_headers(buf, mac, &dst_mac, t.src, t.dst, t.len, *ip_id);
                        (
                            n,
                            tx_offload(&buf[need..need + t.len], v6, need, partial, t.segment_size),
                        )
                    }
                    None => {
                        // smoltcp resolves the next hop and sends it; its
                        // answer teaches us the address for the rest. It
                        // sends what it is given, whole: a super-segment
                        // cannot go (the engine repairs it as a loss), a
                        // partial checksum is completed first.
                        if t.segment_size.is_some() {
                            *unsent += 1;
                            return (0, None);
                        }
                        let segment = &mut buf[need..need + t.len];
                        if partial {
                            complete_tcp_checksum(t.src, t.dst, segment);
                        }
                        ip_packet(t.src, t.dst, segment, *ip_id, scratch);
                        let socket = if v6 { *raw6 } else { *raw4 };
                        match sockets
                            .get_mut::<raw::Socket<'_>>(socket)
                            .send_slice(scratch)
                        {
                            Ok(()) => {
                                *resolving += 1;
                                to_smoltcp = true;
                            }
                            Err(_) => *unsent += 1,
                        }
                        (0, None)
                    }
                }
            });
            match r {
                // No free frame: the engine keeps the rest for the next loop.
                None => break,
                Some(0) if done => break,
                Some(0) => {}
                Some(_) => built += 1,
            }
        }
        self.segments_out += built as u64;
        (built, to_smoltcp)
    }

    fn publish(&self, stats: &WorkerStats) {
        let e = self.engine.endpoint_ref();
        *stats.tcp.lock().unwrap_or_else(|p| p.into_inner()) = Some(TcpSnapshot {
            connections: e.connection_count(),
            half_open: e.half_open_count(),
            time_wait: e.time_wait_count(),
            buffer_chunks: e.buffer_chunks_in_use(),
            counters: e.counters().clone(),
        });
        stats
            .tcp_segments_in
            .store(self.segments_in, Ordering::Relaxed);
        stats
            .tcp_segments_out
            .store(self.segments_out, Ordering::Relaxed);
        stats
            .tcp_segments_resolving
            .store(self.resolving, Ordering::Relaxed);
        stats
            .tcp_segments_unsent
            .store(self.unsent, Ordering::Relaxed);
    }
}

/// Feeds a TCP segment from `src` to `dst` to `engine`, or hands it to the
/// worker whose engine holds its flow (`hops`: hand-offs so far).
fn deliver_segment(
    engine: &mut EngineTcp,
    mut steer: Option<&mut Router<'_>>,
    now: Instant,
    table: u32,
    (src, dst): (std::net::IpAddr, std::net::IpAddr),
    segment: &[u8],
    hops: u8,
) {
    let routed = match (steer.as_deref(), tcp_tuple(table, src, dst, segment)) {
        (Some(st), Some(tuple)) => Some((st.route_tcp(engine.endpoint_ref(), &tuple), tuple)),
        _ => None,
    };
    if let (Some((Route::To(owner), _)), Some(st)) = (routed, steer.as_deref_mut()) {
        if hops < MAX_HOPS {
            st.hand_off(owner, Packet::Tcp { src, dst }, hops + 1, segment);
            return;
        }
    }
    engine.endpoint().handle_segment(
        now,
        table,
        src,
        dst,
        segment,
        // The receiving device checked the checksum under the medium's
        // policy.
        ChecksumMode::AlreadyVerified,
    );
    if let (Some((Route::Local { claimed }, tuple)), Some(st)) = (routed, steer) {
        st.settle(engine.endpoint_ref(), &tuple, claimed);
    }
}

/// Segments smoltcp holds for next hops it is resolving, per family.
const RESOLVING_SEGMENTS: usize = 64;

/// The largest TCP segment in one frame: an IPv4 packet's 16-bit length
/// less its header (IPv6's payload length leaves the same room and more).
const MAX_SEGMENT: usize = 65_535 - 20;

/// TSO bursts, in segments, when the device cuts super-segments (64 KB of
/// 1448-byte segments is 45; the buffer bounds it either way).
const TSO_SEGMENTS: u16 = 64;

/// What the device must do for a segment the engine wrote at `l4` in a
/// frame: complete its partial checksum, and cut it into `segment_size`
/// payloads when it is a super-segment.
fn tx_offload(
    segment: &[u8],
    v6: bool,
    l4: usize,
    partial: bool,
    segment_size: Option<u16>,
) -> Option<TxOffload> {
    if !partial {
        return None;
    }
    let tcp_header = segment.get(12).map_or(20, |b| usize::from(b >> 4) * 4);
    let gso = segment_size.map(|size| {
        let kind = if v6 { GsoKind::Tcp6 } else { GsoKind::Tcp4 };
        (kind, size, (l4 + tcp_header) as u16)
    });
    Some(TxOffload {
        checksum: Some((l4 as u16, 16)),
        gso,
    })
}

/// Replaces a segment's partial checksum with the full one.
fn complete_tcp_checksum(src: IpAddr, dst: IpAddr, segment: &mut [u8]) {
    if segment.len() < 20 {
        return;
    }
    segment[16..18].copy_from_slice(&[0, 0]);
    let c = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => l4_checksum(&s.octets(), &d.octets(), 6, segment),
        (s, d) => l4_checksum(&v6_octets(s), &v6_octets(d), 6, segment),
    };
    segment[16..18].copy_from_slice(&c.to_be_bytes());
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn raw_socket(version: IpVersion, mtu: usize) -> raw::Socket<'static> {
    // Incoming TCP never reaches smoltcp's raw sockets (it goes to the
    // engine), so their receive side is minimal.
    raw::Socket::new(
        Some(version),
        Some(IpProtocol::Tcp),
        raw::PacketBuffer::new(vec![raw::PacketMetadata::EMPTY; 1], vec![0u8; 64]),
        raw::PacketBuffer::new(
            vec![raw::PacketMetadata::EMPTY; RESOLVING_SEGMENTS],
            vec![0u8; RESOLVING_SEGMENTS * (mtu + 60)],
        ),
    )
}

/// The session layer's transports on a worker: TCP from hoststack's engine
/// or smoltcp's, UDP from smoltcp.
struct WorkerTransports<'a> {
    tcp: Option<&'a mut EngineTcp>,
    smol: SmolTransports<'a>,
}

impl TransportSet for WorkerTransports<'_> {
    fn transport(&mut self, proto: TransportProto) -> Option<&mut dyn Transport> {
        match (proto, self.tcp.as_deref_mut()) {
            (TransportProto::Tcp, Some(engine)) => Some(engine),
            _ => self.smol.transport(proto),
        }
    }
}

/// A worker and everything it owns.
pub struct Worker<D: PacketIo> {
    index: usize,
    device: StackDevice<D>,
    iface: Interface,
    sockets: SocketSet<'static>,
    tuning: TcpTuning,
    syn_counts: Vec<(u16, usize)>,
    /// Until when arriving frames may complete a handshake on a listener
    /// pool (set by SYNs); the pools are checked after each burst till then.
    accept_until: smoltcp::time::Instant,
    loops: u64,
    /// When smoltcp next needs a poll with nothing arriving (None: now).
    next_poll: Option<smoltcp::time::Instant>,
    /// The last loop changed sockets outside a full poll: look at their
    /// states again.
    rescan: bool,
    clock: LoopClock,
    /// `--inject-loss`: smoltcp's fault injector around the device.
    faults: Option<FaultInjection>,
    transport: SmolTransportState,
    /// hoststack's TCP engine, unless smoltcp's TCP was chosen.
    tcp: Option<TcpPath>,
    /// The interface's subnets and gateways.
    routes: Routes,
    mac: MacAddr,
    /// Next hops' Ethernet addresses, shared with the interface's other
    /// workers.
    neighbors: NeighborView,
    /// With other workers on the interface: where arriving packets of
    /// their flows go, and what they hand over.
    steer: Option<Steering>,
    /// Addresses smoltcp asked for since the last look.
    solicited: Vec<std::net::IpAddr>,
    /// Entries of the shared table to give smoltcp.
    fresh: Vec<(std::net::IpAddr, MacAddr)>,
    neighbor_answers: u64,
    injected_frames: u64,
    session: SessionWorker,
    sleeper: Option<Sleeper>,
    fired: Vec<WakeSource>,
    mode: WorkerMode,
    control: Arc<WorkerControl>,
    stats: Arc<WorkerStats>,
}

impl<D: PacketIo> Worker<D> {
    /// Builds the worker's interface over `driver` with the config's
    /// addresses; `share` is its part of the interface's queue group.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        driver: D,
        cfg: &StackConfig,
        mode: WorkerMode,
        session: SessionWorker,
        control: Arc<WorkerControl>,
        stats: Arc<WorkerStats>,
        share: QueueShare,
    ) -> StackResult<Self> {
        let mac = driver.info().mac;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(StackError::Config(format!(
                "interface address {mac:02x?} is not a unicast Ethernet address"
            )));
        }
        let mut device = StackDevice::new(driver);
        let faults = if cfg.inject_loss > 0 {
            Some(FaultInjection::new(
                cfg.inject_loss,
                cfg.seed ^ 0x5eed ^ index as u64,
                device.driver().info().mtu,
            )?)
        } else {
            None
        };
        let seed = if cfg.seed != 0 {
            cfg.seed.wrapping_add(index as u64)
        } else {
            StdInstant::now().elapsed().as_nanos() as u64
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                ^ ((index as u64) << 48)
        };
        let mut icfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        icfg.random_seed = seed;
        let clock = LoopClock::new();
        let mut iface = Interface::new(icfg, &mut device, clock.smol(StdInstant::now()));
        let mut too_many = false;
        iface.update_ip_addrs(|addrs| {
            for a in &cfg.addresses {
                if addrs.push(a.cidr()).is_err() {
                    too_many = true;
                }
            }
        });
        if too_many {
            return Err(StackError::Config(
                "too many addresses for one interface".into(),
            ));
        }
        if let Some(gw) = cfg.gateway {
            let res = match IpAddress::from(gw) {
                IpAddress::Ipv4(v4) => iface.routes_mut().add_default_ipv4_route(v4).map(|_| ()),
                IpAddress::Ipv6(v6) => iface.routes_mut().add_default_ipv6_route(v6).map(|_| ()),
            };
            res.map_err(|_| StackError::Config(format!("cannot add default route via {gw}")))?;
        }
        let mut sockets = SocketSet::new(Vec::new());
        let tcp = match cfg.tcp.engine {
            TcpEngineKind::Smoltcp => None,
            TcpEngineKind::Hoststack => {
                let mtu = device.driver().info().mtu;
                let routes = Routes::new(&cfg.addresses, cfg.gateway);
                let offloads = device.driver().offloads();
                let mut engine_cfg = cfg.tcp.engine_config(mtu, cfg.tcp_secret()?);
                if offloads.checksum {
                    engine_cfg.tx_checksum = TxChecksum::Partial;
                }
                // One engine serves both families: super-segments only when
                // the device cuts both.
                if offloads.checksum && offloads.tso4 && offloads.tso6 {
                    engine_cfg.max_tso_segments = TSO_SEGMENTS;
                }
                let engine = EngineTcp::new(
                    engine_cfg,
                    cfg.tcp.listen_options(),
                    cfg.tcp.conn_options(),
                    cfg.table,
                    routes.clone(),
                    clock.smol(StdInstant::now()),
                );
                Some(TcpPath {
                    engine,
                    routes,
                    mac,
                    raw4: sockets.add(raw_socket(IpVersion::Ipv4, mtu)),
                    raw6: sockets.add(raw_socket(IpVersion::Ipv6, mtu)),
                    last_v6: false,
                    offloads_checksum: offloads.checksum,
                    ip_id: (seed >> 16) as u16,
                    scratch: Vec::new(),
                    segments_in: 0,
                    segments_out: 0,
                    resolving: 0,
                    unsent: 0,
                })
            }
        };
        // smoltcp's TCP verifies every checksum it is given.
        device.set_complete_partial_tcp(tcp.is_none());
        let routes = Routes::new(&cfg.addresses, cfg.gateway);
        let neighbors = NeighborView::new(share.group.neighbors.clone());
        let n = share.group.workers();
        let ports = EphemeralPorts::new(seed).partitioned(share.pos as u16, n as u16);
        let mut tcp = tcp;
        let steer = if share.is_shared() {
            let tcp = tcp.as_mut().ok_or_else(|| {
                StackError::Config(
                    "several queues on one interface need the hoststack TCP engine".into(),
                )
            })?;
            // Ports whose replies the NIC's RSS (or the TAP's steering
            // program) brings to this worker's queue.
            let flows = device.driver().flow_steering();
            let port_ok = share.group.rss.clone().map(|rss| {
                let q = share.pos as u32;
                Box::new(
                    move |local: std::net::SocketAddr, remote: std::net::SocketAddr| {
                        // The reply comes from the remote to us.
                        rss.queue(remote.ip(), local.ip(), remote.port(), local.port()) == Some(q)
                    },
                ) as crate::tcp_transport::PortFilter
            });
            let port_ok = port_ok.or_else(|| {
                flows.map(|s| {
                    Box::new(
                        move |local: std::net::SocketAddr, remote: std::net::SocketAddr| {
                            s.is_ours(local, remote, 6)
                        },
                    ) as crate::tcp_transport::PortFilter
                })
            });
            tcp.engine.set_steering(share.clone(), n, port_ok);
            Some(Steering::new(share))
        } else {
            None
        };
        let sleeper = match mode {
            WorkerMode::Poll => None,
            _ => Some(Sleeper::new(
                device.driver().poll_fd().as_raw_fd(),
                control.wake.as_raw_fd(),
            )?),
        };
        Ok(Self {
            index,
            device,
            iface,
            sockets,
            tuning: cfg.tcp.clone(),
            syn_counts: Vec::new(),
            accept_until: smoltcp::time::Instant::ZERO,
            loops: 0,
            next_poll: None,
            rescan: true,
            clock,
            faults,
            transport: SmolTransportState::new(ports),
            tcp,
            routes,
            mac,
            neighbors,
            steer,
            solicited: Vec::new(),
            fresh: Vec::new(),
            neighbor_answers: 0,
            injected_frames: 0,
            session,
            sleeper,
            fired: Vec::new(),
            mode,
            control,
            stats,
        })
    }

    /// The driver queue.
    pub fn device(&self) -> &StackDevice<D> {
        &self.device
    }

    /// The driver queue, mutably (to attach a capture).
    pub fn device_mut(&mut self) -> &mut StackDevice<D> {
        &mut self.device
    }

    /// smoltcp's full poll, through the fault injector when there is one.
    fn poll_iface(&mut self, now: smoltcp::time::Instant) {
        match &mut self.faults {
            None => self.iface.poll(now, &mut self.device, &mut self.sockets),
            Some(f) => f.poll(&mut self.iface, now, &mut self.device, &mut self.sockets),
        };
    }

    fn publish_device_stats(&self) {
        if let Some(tcp) = &self.tcp {
            tcp.publish(&self.stats);
        }
        self.stats
            .zero_window_acks
            .store(self.device.zero_window_acks(), Ordering::Relaxed);
        self.stats
            .injected_frames
            .store(self.injected_frames, Ordering::Relaxed);
        self.stats
            .injected_dropped
            .store(self.device.injected_dropped(), Ordering::Relaxed);
        self.stats
            .neighbor_answers
            .store(self.neighbor_answers, Ordering::Relaxed);
        if let Some(f) = &self.faults {
            let (rx, tx) = f.dropped();
            self.stats.injected_rx_drops.store(rx, Ordering::Relaxed);
            self.stats.injected_tx_drops.store(tx, Ordering::Relaxed);
        }
    }

    /// One loop iteration at monotonic time `at`; returns true when
    /// anything happened.
    pub fn poll_once(&mut self, at: StdInstant) -> StackResult<bool> {
        let now = self.clock.smol(at);
        self.loops += 1;
        let received = self.device.receive_burst()?;
        self.neighbors.refresh();
        let mut work = received > 0;
        if let Some(tcp) = &mut self.tcp {
            tcp.engine.set_now(now);
            if received > 0 {
                tcp.receive(
                    &mut self.device,
                    &mut self.neighbors,
                    self.steer.as_mut().map(Steering::router),
                    &self.transport,
                    now,
                    self.faults.as_mut(),
                );
            }
            if let Some(st) = &mut self.steer {
                work |=
                    Self::take_handoffs(st, tcp, &mut self.device, now, &mut self.injected_frames)
                        > 0;
                st.flush();
            }
            if tcp
                .engine
                .endpoint_ref()
                .poll_timeout()
                .is_some_and(|t| now >= t)
            {
                tcp.engine.endpoint().handle_timeout(now);
            }
        } else if received > 0 {
            self.prescan_syns(now);
        }
        self.device.stock_tx();
        // smoltcp walks every socket in a poll; with no frame left for it
        // and no socket changed since the last one, only a due timer
        // needs it.
        let polled = self.device.rx_pending() > 0 || self.next_poll.is_none_or(|t| now >= t);
        if polled {
            self.poll_iface(now);
        }
        let check_listeners = self.tcp.is_none()
            && ((received > 0 && now <= self.accept_until) || self.loops % ACCEPT_SWEEP_LOOPS == 0);
        if polled || check_listeners || self.rescan {
            self.transport
                .scan(&mut self.sockets, &self.tuning, check_listeners);
        }
        let mut tp = WorkerTransports {
            tcp: self.tcp.as_mut().map(|t| &mut t.engine),
            smol: SmolTransports::new(
                &mut self.transport,
                &mut self.sockets,
                &mut self.iface,
                &self.tuning,
            ),
        };
        work |= self.session.poll(&mut tp);
        if let Some(sl) = &mut self.sleeper {
            for change in self.session.take_queue_changes() {
                match change {
                    QueueChange::Added { id, fd } => sl.add_queue(id, fd)?,
                    QueueChange::Removed { id } => sl.remove_queue(id)?,
                }
            }
        }
        let mut resolving = false;
        if let Some(tcp) = &mut self.tcp {
            let (built, to_smoltcp) = tcp.transmit(
                &mut self.device,
                &mut self.sockets,
                &mut self.neighbors,
                now,
                self.faults.as_mut(),
            );
            work |= built > 0;
            resolving = to_smoltcp;
            if let Some(st) = &mut self.steer {
                st.sync_removed(tcp.engine.endpoint());
                // Segments to other queues' flows that the session layer's
                // calls produced go out now too.
                st.flush();
            }
        }
        let touched = self.transport.take_touched() || resolving;
        if work || touched {
            match &mut self.faults {
                None => self
                    .iface
                    .poll_egress(now, &mut self.device, &mut self.sockets),
                Some(f) => f.poll_egress(&mut self.iface, now, &mut self.device, &mut self.sockets),
            };
        }
        if polled || work || touched {
            // `Some(0)` when a socket still has something to send; None
            // when no socket waits on a timer.
            self.next_poll = Some(
                self.iface
                    .poll_at(now, &self.sockets)
                    .unwrap_or(now + smoltcp::time::Duration::from_millis(100)),
            );
        }
        self.rescan = work || touched;
        if self.sync_neighbors() {
            // smoltcp reads the answers on its next poll.
            self.next_poll = None;
            work = true;
        }
        let sent = self.device.flush()?;
        self.stats.loops.fetch_add(1, Ordering::Relaxed);
        Ok(work || sent > 0 || self.device.tx_backlog() > 0)
    }

    /// Takes what the interface's other workers handed over: TCP segments
    /// go to the engine (or on to their owner), frames to smoltcp. Returns
    /// how many packets there were.
    fn take_handoffs(
        st: &mut Steering,
        tcp: &mut TcpPath,
        device: &mut StackDevice<D>,
        now: Instant,
        injected: &mut u64,
    ) -> usize {
        if !st.has_waiting() {
            return 0;
        }
        let table = tcp.engine.table();
        let engine = &mut tcp.engine;
        let mut segments = 0;
        let n = st.drain(|router, item, bytes| match item.packet {
            Packet::Tcp { src, dst } => {
                segments += 1;
                deliver_segment(
                    engine,
                    Some(router),
                    now,
                    table,
                    (src, dst),
                    bytes,
                    item.hops,
                );
            }
            Packet::Frame => {
                *injected += 1;
                device.inject(bytes);
            }
        });
        tcp.segments_in += segments;
        n
    }

    /// Keeps smoltcp's neighbour cache in step with the interface's shared
    /// table: an entry any worker learned (or saw move) is given to smoltcp
    /// as an answer, and so is the answer to each ARP request or neighbour
    /// solicitation smoltcp sent for an address the table knows (another
    /// queue may receive the real answer, and smoltcp rate-limits its
    /// requests to one a second). True when it injected any.
    fn sync_neighbors(&mut self) -> bool {
        self.device.take_solicited(&mut self.solicited);
        let mut fresh = std::mem::take(&mut self.fresh);
        self.neighbors.take_fresh(&mut fresh);
        for ip in self.solicited.drain(..) {
            if !fresh.iter().any(|(i, _)| *i == ip) {
                if let Some(mac) = self.neighbors.lookup(ip) {
                    fresh.push((ip, mac));
                }
            }
        }
        let mut answered = false;
        for (ip, peer_mac) in fresh.drain(..) {
            let Some(us) = self.routes.source_for(ip) else {
                continue;
            };
            if let Some(frame) = crate::neighbor_answers::answer(self.mac, us, peer_mac, ip) {
                self.device.inject(&frame);
                self.neighbor_answers += 1;
                self.injected_frames += 1;
                answered = true;
            }
        }
        self.fresh = fresh;
        answered
    }

    /// Counts the SYNs of the waiting burst per listened port and grows the
    /// listener pools before smoltcp sees them.
    fn prescan_syns(&mut self, now: Instant) {
        self.transport.tcp_listen_ports(&mut self.syn_counts);
        if self.syn_counts.is_empty() {
            return;
        }
        count_syns(self.device.pending_frames(), &mut self.syn_counts);
        if self.syn_counts.iter().any(|c| c.1 > 0) {
            // The handshake completes over the next loops: watch the pools.
            self.accept_until = now + HANDSHAKE_WINDOW;
            self.transport
                .top_up_listeners(&self.syn_counts, &self.tuning, &mut self.sockets);
        }
    }

    fn log_state(&mut self) {
        debug!(worker = self.index, driver = %self.device.driver_mut().debug_state(), rx_pending = self.device.rx_pending(), tx_backlog = self.device.tx_backlog(), "queue");
        for (h, s) in self.sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(t) = s {
                if t.state() != smoltcp::socket::tcp::State::Listen {
                    debug!(worker = self.index, socket = %h, state = %t.state(), recv_queue = t.recv_queue(), send_queue = t.send_queue(), "tcp");
                }
            }
        }
        for i in self.session.session_infos() {
            debug!(worker = self.index, session = %i.handle, state = %i.state, rx_fill = i.rx_fill, tx_fill = i.tx_fill, "session");
        }
    }

    /// Sleeps until the queue, the control eventfd, an app queue or the
    /// next transport timer needs the worker.
    fn sleep(&mut self) -> StackResult<()> {
        let now = self.clock.smol(StdInstant::now());
        let delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map_or(Duration::from_millis(1000), |d| {
                Duration::from_micros(d.total_micros())
            })
            .min(Duration::from_millis(1000))
            .min(self.session.retry_delay().unwrap_or(Duration::MAX))
            .min(self.tcp.as_ref().map_or(Duration::MAX, |t| {
                t.engine
                    .endpoint_ref()
                    .poll_timeout()
                    .map_or(Duration::MAX, |at| {
                        Duration::from_micros((at - now.min(at)).total_micros())
                    })
            }));
        if delay.is_zero() || self.session.has_pending_work() {
            return Ok(());
        }
        self.device.driver_mut().prepare_sleep()?;
        if self.device.rx_pending() > 0 || !self.session.queues_empty_before_sleep() {
            return Ok(());
        }
        if self.steer.as_ref().is_some_and(|st| !st.prepare_sleep()) {
            return Ok(());
        }
        let Some(sleeper) = &mut self.sleeper else {
            if let Some(st) = &self.steer {
                st.awake();
            }
            return Ok(());
        };
        self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        self.fired.clear();
        let slept = sleeper.sleep(delay, &mut self.fired);
        self.session.queues_awake();
        if let Some(st) = &self.steer {
            st.awake();
        }
        slept?;
        if !self.fired.is_empty() {
            self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        self.handle_wakes();
        Ok(())
    }

    /// Acts on what woke the worker (or fired while it was awake).
    fn handle_wakes(&mut self) {
        for w in std::mem::take(&mut self.fired) {
            match w {
                WakeSource::Control => crate::sys::eventfd_drain(&self.control.wake),
                WakeSource::Device => {}
                WakeSource::AppQueue(id) => self.session.queue_signalled(id),
            }
        }
    }

    /// Runs until a stop is requested, then closes every socket.
    pub fn run(mut self) -> StackResult<()> {
        let mut idle = 0u32;
        let mut last_stats = StdInstant::now();
        let mut last_work = StdInstant::now();
        let result = loop {
            if self.control.stop_requested() {
                break Ok(());
            }
            let at = StdInstant::now();
            match self.poll_once(at) {
                Ok(true) => {
                    idle = 0;
                    last_work = at;
                }
                Ok(false) => idle = idle.saturating_add(1),
                Err(e) => break Err(e),
            }
            if at.duration_since(last_stats) >= Duration::from_secs(1) {
                self.device.driver_mut().refresh_stats();
                self.publish_device_stats();
                // A polling worker never takes the pre-sleep look at its
                // app queues' heads: once a second instead.
                if self.mode != WorkerMode::Interrupt {
                    self.session.judge_idle_queues();
                }
                last_stats = StdInstant::now();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    self.log_state();
                }
            }
            let sleepy = match self.mode {
                WorkerMode::Poll => false,
                WorkerMode::Interrupt => idle >= IDLE_LOOPS_BEFORE_SLEEP,
                WorkerMode::Adaptive => {
                    idle >= IDLE_LOOPS_BEFORE_SLEEP && at.duration_since(last_work) >= ADAPTIVE_IDLE
                }
            };
            self.stats
                .interrupt_state
                .store(u64::from(sleepy), Ordering::Relaxed);
            if sleepy {
                if let Err(e) = self.sleep() {
                    break Err(e);
                }
                idle = 0;
            } else if self.mode != WorkerMode::Poll {
                // Awake: sources that fired meanwhile still feed the pending
                // list, so no app queue signal is lost.
                if let Some(s) = &mut self.sleeper {
                    if let Err(e) = s.reap(&mut self.fired) {
                        break Err(e);
                    }
                    self.handle_wakes();
                }
            }
        };
        if let Err(e) = &result {
            warn!(worker = self.index, "worker stopping on error: {e}");
        }
        self.transport.shutdown(&mut self.sockets);
        if let Some(tcp) = &mut self.tcp {
            tcp.engine.shutdown();
        }
        // Let aborts (RSTs) and closes go out before the queue closes.
        for _ in 0..4 {
            let now = self.clock.smol(StdInstant::now());
            if let Some(tcp) = &mut self.tcp {
                tcp.transmit(
                    &mut self.device,
                    &mut self.sockets,
                    &mut self.neighbors,
                    now,
                    None,
                );
            }
            self.poll_iface(now);
            let _ = self.device.flush();
        }
        self.device.driver_mut().refresh_stats();
        self.publish_device_stats();
        debug!(worker = self.index, "worker stopped");
        result
    }
}
