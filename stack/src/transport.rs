//! smoltcp's TCP and UDP sockets as session-layer transports.
//!
//! [`SmolTransportState`] is a worker's transport bookkeeping: listener
//! pools per listen, and every connection the session layer knows by
//! [`TransportConnId`]. After each smoltcp poll the worker calls
//! [`SmolTransportState::scan`], which turns socket state changes into
//! [`TransportEvent`]s (accepted, connected, peer closed, reset, closed);
//! then it hands the session worker a [`SmolTransports`] view (state +
//! sockets + interface) that implements the session layer's transport
//! traits for both protocols.

use std::collections::VecDeque;
use std::net::IpAddr;

use hashbrown::HashMap;
use hoststack_app_proto::endpoint::{Endpoint, FiveTuple, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{ListenerHandle, SessionHandle};
use hoststack_session::session_worker::TransportSet;
use hoststack_session::transport::{DatagramMeta, Transport, TransportConnId, TransportEvent};
use slab::Slab;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use tracing::debug;

use crate::config::TcpTuning;
use crate::tcp_listener::{SpareTcpSockets, TcpListenerPool};

/// The local ports of one worker's smoltcp sockets, and the choice of
/// ephemeral ones: O(1) per choice (random probes into a count of the
/// ports in use), a bounded sweep of the range only when it is nearly full,
/// and `None` when it is full.
#[derive(Debug)]
pub struct EphemeralPorts {
    state: u64,
    /// Sockets (connections, listeners) bound to each port.
    in_use: HashMap<u16, u32>,
    /// (this worker's position, workers): ephemeral ports are `pos` modulo
    /// `of`, so a reply on any queue names its owner.
    partition: (u16, u16),
}

/// The IANA dynamic range.
const EPHEMERAL_LOW: u16 = 49152;
/// Ports in it.
const EPHEMERAL_SPAN: u32 = (u16::MAX - EPHEMERAL_LOW) as u32 + 1;
/// Random tries before the sweep (all fail with odds 0.9^64 = 0.1 % when
/// nine ports in ten are taken).
const EPHEMERAL_PROBES: usize = 64;

impl EphemeralPorts {
    /// Seeds the choice.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            in_use: HashMap::new(),
            partition: (0, 1),
        }
    }

    /// Picks only ports that are `pos` modulo `of` (the worker's position
    /// among the `of` workers of its interface).
    pub fn partitioned(mut self, pos: u16, of: u16) -> Self {
        self.partition = (pos % of.max(1), of.max(1));
        self
    }

    /// The worker whose ports `port` is one of, when it is an ephemeral
    /// port.
    pub fn owner(&self, port: u16) -> Option<u16> {
        (port >= EPHEMERAL_LOW).then(|| port % self.partition.1)
    }

    /// The first port of this worker's share of the range.
    fn share_first(&self) -> u32 {
        let (pos, of) = (u32::from(self.partition.0), u32::from(self.partition.1));
        let low = u32::from(EPHEMERAL_LOW);
        low + (pos + of - low % of) % of
    }

    /// Ports in this worker's share of the range.
    fn share_len(&self) -> u32 {
        (u32::from(u16::MAX) - self.share_first()) / u32::from(self.partition.1) + 1
    }

    /// The `i`-th port of this worker's share, wrapping.
    fn share_port(&self, i: u32) -> u16 {
        (self.share_first() + (i % self.share_len()) * u32::from(self.partition.1)) as u16
    }

    fn random_index(&mut self) -> u32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % u64::from(EPHEMERAL_SPAN)) as u32
    }

    /// A free port of this worker's share of 49152..=65535, now counted as
    /// used; `None` when every one is.
    pub fn allocate(&mut self) -> Option<u16> {
        for _ in 0..EPHEMERAL_PROBES {
            let i = self.random_index();
            let port = self.share_port(i);
            if !self.in_use.contains_key(&port) {
                self.claim(port);
                return Some(port);
            }
        }
        let start = self.random_index();
        let port = (0..self.share_len())
            .map(|i| self.share_port(start + i))
            .find(|p| !self.in_use.contains_key(p))?;
        self.claim(port);
        Some(port)
    }

    /// Counts one more socket on `port` (0: none).
    pub fn claim(&mut self, port: u16) {
        if port != 0 {
            *self.in_use.entry(port).or_insert(0) += 1;
        }
    }

    /// Counts one socket less on `port`.
    pub fn release(&mut self, port: u16) {
        if let hashbrown::hash_map::Entry::Occupied(mut e) = self.in_use.entry(port) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Ports with at least one socket.
    pub fn ports_in_use(&self) -> usize {
        self.in_use.len()
    }
}

/// Where a connection is, as far as the session layer was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TCP connect under way for a session.
    Connecting(SessionHandle),
    /// Data flows.
    Established,
    /// The peer sent FIN; reported.
    RemoteClosed,
    /// We closed; waiting for the socket to finish.
    Closing,
    /// We aborted; the RST goes out with the next poll, then the socket goes.
    Aborted,
    /// A bound UDP socket.
    Bound,
    /// Closed by us and forgotten; its socket finishes TIME-WAIT on the
    /// lingering list.
    Lingering,
}

#[derive(Debug)]
struct Conn {
    /// Tells this connection from earlier ones in the same slot: an event
    /// queued for a closed one must not reach its successor.
    generation: u32,
    socket: SocketHandle,
    proto: TransportProto,
    phase: Phase,
    /// A send took less than it was offered: report `Writable` once the
    /// socket has room.
    want_writable: bool,
    /// The local port it claimed in [`EphemeralPorts`] (0: none, as for an
    /// accepted connection, which shares its listener's).
    port: u16,
}

/// Datagrams a UDP session socket buffers each way.
const UDP_PACKETS: usize = 1024;
/// Bytes a UDP session socket buffers each way.
const UDP_BYTES: usize = 2 << 20;

/// One worker's transport bookkeeping.
#[derive(Debug)]
pub struct SmolTransportState {
    tcp_listeners: HashMap<ListenerHandle, TcpListenerPool>,
    conns: Slab<Conn>,
    tcp_events: VecDeque<TransportEvent>,
    udp_events: VecDeque<TransportEvent>,
    /// Closed-by-us TCP sockets finishing (TIME-WAIT), no longer a
    /// connection of anyone, with the port each holds.
    lingering: Vec<(SocketHandle, u16)>,
    accepted: Vec<SocketHandle>,
    listener_scratch: Vec<ListenerHandle>,
    /// Closed TCP sockets for the next connections.
    spares: SpareTcpSockets,
    /// UDP sockets bound per local port.
    udp_ports: HashMap<u16, u32>,
    /// A socket was changed outside the interface's poll (data queued or
    /// taken, closed, added): the worker must poll it before trusting its
    /// cached next deadline.
    touched: bool,
    /// Local ports in use.
    ports: EphemeralPorts,
    /// The generation the next connection gets.
    next_generation: u32,
}

/// A connection's id: its slot, and the slot's generation above bit 32.
fn conn_id(index: usize, generation: u32) -> TransportConnId {
    TransportConnId((u64::from(generation) << 32) | index as u64)
}

/// (slot, generation) of an id.
fn conn_slot(c: TransportConnId) -> (usize, u32) {
    ((c.0 & u64::from(u32::MAX)) as usize, (c.0 >> 32) as u32)
}

fn to_std(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4(v4) => IpAddr::V4(v4),
        IpAddress::Ipv6(v6) => IpAddr::V6(v6),
    }
}

fn endpoint(e: IpEndpoint) -> Endpoint {
    Endpoint {
        ip: to_std(e.addr),
        port: e.port,
    }
}

fn tcp_tuple(s: &tcp::Socket<'_>) -> Option<FiveTuple> {
    let (l, r) = (s.local_endpoint()?, s.remote_endpoint()?);
    FiveTuple::new(TransportProto::Tcp, endpoint(l), endpoint(r)).ok()
}

impl SmolTransportState {
    /// Empty, with ephemeral ports chosen from `seed`.
    pub fn new(ports: EphemeralPorts) -> Self {
        Self {
            tcp_listeners: HashMap::new(),
            conns: Slab::new(),
            tcp_events: VecDeque::new(),
            udp_events: VecDeque::new(),
            lingering: Vec::new(),
            accepted: Vec::new(),
            listener_scratch: Vec::new(),
            spares: SpareTcpSockets::default(),
            touched: false,
            udp_ports: HashMap::new(),
            next_generation: 0,
            ports,
        }
    }

    /// The worker whose share of the ephemeral ports `port` is in.
    pub fn port_owner(&self, port: u16) -> Option<u16> {
        self.ports.owner(port)
    }

    /// Local ports its sockets hold.
    pub fn ports_in_use(&self) -> usize {
        self.ports.ports_in_use()
    }

    /// TCP ports with a listener pool (for the SYN pre-scan).
    pub fn tcp_listen_ports(&self, out: &mut Vec<(u16, usize)>) {
        out.clear();
        for p in self.tcp_listeners.values() {
            if !out.iter().any(|(port, _)| *port == p.port()) {
                out.push((p.port(), 0));
            }
        }
    }

    /// Grows the pools on ports that have SYNs in the coming burst.
    pub fn top_up_listeners(
        &mut self,
        syns: &[(u16, usize)],
        tuning: &TcpTuning,
        sockets: &mut SocketSet<'static>,
    ) {
        for pool in self.tcp_listeners.values_mut() {
            let n = syns
                .iter()
                .find(|(p, _)| *p == pool.port())
                .map_or(0, |(_, n)| *n);
            if n > 0 {
                if let Err(e) = pool.top_up(n, tuning, sockets, &mut self.spares) {
                    debug!("listener pool: {e}");
                }
            }
        }
    }

    /// Connections (and listener pools) alive.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn new_conn(
        &mut self,
        socket: SocketHandle,
        proto: TransportProto,
        phase: Phase,
        port: u16,
    ) -> TransportConnId {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let index = self.conns.insert(Conn {
            generation,
            socket,
            proto,
            phase,
            want_writable: false,
            port,
        });
        conn_id(index, generation)
    }

    fn new_udp_conn(&mut self, socket: SocketHandle, port: u16) -> TransportConnId {
        let conn = self.new_conn(socket, TransportProto::Udp, Phase::Bound, port);
        *self.udp_ports.entry(port).or_insert(0) += 1;
        conn
    }

    fn remove_udp_conn(&mut self, conn: TransportConnId) -> Option<SocketHandle> {
        let (index, generation) = conn_slot(conn);
        if self.conns.get(index)?.generation != generation {
            return None;
        }
        let c = self.conns.try_remove(index)?;
        self.ports.release(c.port);
        if let Some(n) = self.udp_ports.get_mut(&c.port) {
            *n -= 1;
            if *n == 0 {
                self.udp_ports.remove(&c.port);
            }
        }
        Some(c.socket)
    }

    /// Whether a UDP socket of this worker is bound to local `port`.
    pub fn udp_bound(&self, port: u16) -> bool {
        self.udp_ports.contains_key(&port)
    }

    /// Turns socket state changes since the last scan into events. The
    /// listener pools are only looked at with `check_listeners` (a SYN
    /// arrived lately, or the periodic sweep): a busy worker need not walk
    /// its idle listening sockets on every loop.
    pub fn scan(
        &mut self,
        sockets: &mut SocketSet<'static>,
        tuning: &TcpTuning,
        check_listeners: bool,
    ) {
        // New connections on the listener pools.
        let mut listeners = std::mem::take(&mut self.listener_scratch);
        listeners.clear();
        if check_listeners {
            listeners.extend(self.tcp_listeners.keys().copied());
            listeners.sort_unstable_by_key(|l| l.as_u64());
        }
        for &lh in &listeners {
            let mut accepted = std::mem::take(&mut self.accepted);
            accepted.clear();
            if let Some(pool) = self.tcp_listeners.get_mut(&lh) {
                pool.take_accepted(sockets, &mut accepted);
                if !accepted.is_empty() {
                    let _ = pool.top_up(0, tuning, sockets, &mut self.spares);
                }
            }
            for &h in &accepted {
                let s = sockets.get::<tcp::Socket<'_>>(h);
                match tcp_tuple(s) {
                    Some(tuple) => {
                        let conn = self.new_conn(h, TransportProto::Tcp, Phase::Established, 0);
                        self.tcp_events.push_back(TransportEvent::Accepted {
                            listener: lh,
                            conn,
                            tuple,
                        });
                    }
                    None => self.spares.recycle(sockets, h),
                }
            }
            self.accepted = accepted;
        }
        self.listener_scratch = listeners;
        // State changes of known TCP connections.
        let mut gone = Vec::new();
        for (i, c) in self.conns.iter_mut() {
            let conn = conn_id(i, c.generation);
            if c.proto == TransportProto::Udp {
                let s = sockets.get::<udp::Socket<'_>>(c.socket);
                if s.can_recv() {
                    self.udp_events.push_back(TransportEvent::Readable { conn });
                }
                if c.want_writable && s.can_send() {
                    c.want_writable = false;
                    self.udp_events.push_back(TransportEvent::Writable { conn });
                }
                continue;
            }
            let s = sockets.get::<tcp::Socket<'_>>(c.socket);
            // smoltcp keeps no edges: report what each socket holds now
            // (this scan only runs after frames, timers or socket changes).
            if s.recv_queue() > 0 {
                self.tcp_events.push_back(TransportEvent::Readable { conn });
            }
            if c.want_writable && s.send_queue() < s.send_capacity() {
                c.want_writable = false;
                self.tcp_events.push_back(TransportEvent::Writable { conn });
            }
            let state = s.state();
            match c.phase {
                Phase::Connecting(session) => match state {
                    tcp::State::Established | tcp::State::CloseWait => {
                        if let Some(tuple) = tcp_tuple(s) {
                            c.phase = Phase::Established;
                            self.tcp_events.push_back(TransportEvent::Connected {
                                session,
                                conn,
                                tuple,
                            });
                        }
                    }
                    tcp::State::Closed => {
                        self.tcp_events.push_back(TransportEvent::ConnectFailed {
                            session,
                            reason: "connection refused or timed out".into(),
                        });
                        gone.push(i);
                    }
                    _ => {}
                },
                Phase::Established => match state {
                    tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing => {
                        c.phase = Phase::RemoteClosed;
                        self.tcp_events
                            .push_back(TransportEvent::RemoteClosed { conn });
                    }
                    tcp::State::Closed | tcp::State::TimeWait => {
                        self.tcp_events.push_back(TransportEvent::Reset { conn });
                        gone.push(i);
                    }
                    _ => {}
                },
                Phase::RemoteClosed => {
                    if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                        self.tcp_events.push_back(TransportEvent::Reset { conn });
                        gone.push(i);
                    }
                }
                Phase::Closing => match state {
                    tcp::State::Closed => {
                        self.tcp_events.push_back(TransportEvent::Closed { conn });
                        gone.push(i);
                    }
                    tcp::State::TimeWait => {
                        self.tcp_events.push_back(TransportEvent::Closed { conn });
                        // Forgotten below, but the socket finishes on the
                        // lingering list, which holds its port.
                        self.lingering.push((c.socket, c.port));
                        c.port = 0;
                        c.phase = Phase::Lingering;
                        gone.push(i);
                    }
                    _ => {}
                },
                Phase::Aborted => gone.push(i),
                Phase::Bound | Phase::Lingering => {}
            }
        }
        for i in gone {
            let c = self.conns.remove(i);
            self.ports.release(c.port);
            if c.phase != Phase::Lingering {
                self.spares.recycle(sockets, c.socket);
            }
        }
        let (spares, ports) = (&mut self.spares, &mut self.ports);
        self.lingering.retain(|&(h, port)| {
            let closed = sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Closed;
            if closed {
                spares.recycle(sockets, h);
                ports.release(port);
            }
            !closed
        });
    }

    /// Whether the session layer changed a socket since the last call.
    pub fn take_touched(&mut self) -> bool {
        std::mem::take(&mut self.touched)
    }

    /// Closes everything (worker shutdown).
    pub fn shutdown(&mut self, sockets: &mut SocketSet<'static>) {
        for (_, mut pool) in self.tcp_listeners.drain() {
            pool.close(sockets, &mut self.spares);
        }
        for (_, c) in self.conns.iter() {
            match c.proto {
                TransportProto::Tcp => sockets.get_mut::<tcp::Socket<'_>>(c.socket).abort(),
                TransportProto::Udp => sockets.get_mut::<udp::Socket<'_>>(c.socket).close(),
            }
        }
    }
}

/// The transports of one worker for one session-layer poll.
pub struct SmolTransports<'a> {
    /// Bookkeeping.
    pub state: &'a mut SmolTransportState,
    /// The worker's sockets.
    pub sockets: &'a mut SocketSet<'static>,
    /// The worker's interface.
    pub iface: &'a mut Interface,
    /// TCP tuning for new sockets.
    pub tuning: &'a TcpTuning,
    proto: TransportProto,
}

impl<'a> SmolTransports<'a> {
    /// A view over the worker's parts.
    pub fn new(
        state: &'a mut SmolTransportState,
        sockets: &'a mut SocketSet<'static>,
        iface: &'a mut Interface,
        tuning: &'a TcpTuning,
    ) -> Self {
        Self {
            state,
            sockets,
            iface,
            tuning,
            proto: TransportProto::Tcp,
        }
    }

    /// The socket set for a change; marks the worker's deadline stale.
    fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        self.state.touched = true;
        self.sockets
    }

    fn conn(&self, c: TransportConnId) -> Option<&Conn> {
        let (index, generation) = conn_slot(c);
        self.state
            .conns
            .get(index)
            .filter(|x| x.proto == self.proto && x.generation == generation)
    }

    fn conn_mut(&mut self, c: TransportConnId) -> Option<&mut Conn> {
        let proto = self.proto;
        let (index, generation) = conn_slot(c);
        self.state
            .conns
            .get_mut(index)
            .filter(|x| x.proto == proto && x.generation == generation)
    }

    fn tcp(&mut self, c: TransportConnId) -> Option<&mut tcp::Socket<'static>> {
        let h = self.conn(c)?.socket;
        Some(self.sockets.get_mut::<tcp::Socket<'static>>(h))
    }

    fn udp(&mut self, c: TransportConnId) -> Option<&mut udp::Socket<'static>> {
        let h = self.conn(c)?.socket;
        Some(self.sockets.get_mut::<udp::Socket<'static>>(h))
    }

    /// A free ephemeral port, claimed.
    fn ephemeral_port(&mut self) -> SessionResult<u16> {
        self.state.ports.allocate().ok_or_else(|| {
            SessionError::Transport("every ephemeral port (49152-65535) is in use".into())
        })
    }

    fn new_udp_socket(&mut self, bind: IpListenEndpoint) -> SessionResult<SocketHandle> {
        let meta = || vec![udp::PacketMetadata::EMPTY; UDP_PACKETS];
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0u8; UDP_BYTES]),
            udp::PacketBuffer::new(meta(), vec![0u8; UDP_BYTES]),
        );
        s.bind(bind)
            .map_err(|e| SessionError::Transport(format!("UDP bind to {}: {e}", bind.port)))?;
        Ok(self.sockets_mut().add(s))
    }
}

impl TransportSet for SmolTransports<'_> {
    fn transport(&mut self, proto: TransportProto) -> Option<&mut dyn Transport> {
        self.proto = proto;
        Some(self)
    }
}

fn listen_endpoint(e: Endpoint) -> IpListenEndpoint {
    IpListenEndpoint {
        addr: if e.is_zero_ip() {
            None
        } else {
            Some(IpAddress::from(e.ip))
        },
        port: e.port,
    }
}

impl Transport for SmolTransports<'_> {
    fn proto(&self) -> TransportProto {
        self.proto
    }

    fn listen(&mut self, listener: ListenerHandle, ep: Endpoint) -> SessionResult<()> {
        match self.proto {
            TransportProto::Tcp => {
                let pool = TcpListenerPool::open(
                    listen_endpoint(ep),
                    self.tuning,
                    self.sockets,
                    &mut self.state.spares,
                )
                .map_err(|e| SessionError::Transport(e.to_string()))?;
                self.state.ports.claim(ep.port);
                self.state.tcp_listeners.insert(listener, pool);
            }
            TransportProto::Udp => {
                let h = self.new_udp_socket(listen_endpoint(ep))?;
                self.state.ports.claim(ep.port);
                let conn = self.state.new_udp_conn(h, ep.port);
                let remote = Endpoint {
                    ip: hoststack_app_proto::endpoint::IpFamily::of(&ep.ip).zero_addr(),
                    port: 0,
                };
                let tuple = FiveTuple::new(TransportProto::Udp, ep, remote)?;
                self.state.udp_events.push_back(TransportEvent::Accepted {
                    listener,
                    conn,
                    tuple,
                });
            }
        }
        Ok(())
    }

    fn unlisten(&mut self, listener: ListenerHandle) {
        if let Some(mut pool) = self.state.tcp_listeners.remove(&listener) {
            pool.close(self.sockets, &mut self.state.spares);
            self.state.ports.release(pool.port());
            self.state.touched = true;
        }
    }

    fn connect(
        &mut self,
        session: SessionHandle,
        remote: Endpoint,
    ) -> SessionResult<TransportConnId> {
        let remote_ep = IpEndpoint::new(IpAddress::from(remote.ip), remote.port);
        match self.proto {
            TransportProto::Tcp => {
                let port = self.ephemeral_port()?;
                let mut s = self.state.spares.take(self.tuning);
                if let Err(e) = s.connect(self.iface.context(), remote_ep, port) {
                    self.state.ports.release(port);
                    return Err(SessionError::Transport(format!("connect to {remote}: {e}")));
                }
                let h = self.sockets_mut().add(s);
                Ok(self
                    .state
                    .new_conn(h, TransportProto::Tcp, Phase::Connecting(session), port))
            }
            TransportProto::Udp => {
                let local_ip = self
                    .iface
                    .get_source_address(&remote_ep.addr)
                    .ok_or_else(|| {
                        SessionError::Transport(format!("no source address to reach {remote}"))
                    })?;
                let port = self.ephemeral_port()?;
                let h = match self.new_udp_socket(IpListenEndpoint {
                    addr: Some(local_ip),
                    port,
                }) {
                    Ok(h) => h,
                    Err(e) => {
                        self.state.ports.release(port);
                        return Err(e);
                    }
                };
                let conn = self.state.new_udp_conn(h, port);
                let tuple = FiveTuple::new(
                    TransportProto::Udp,
                    Endpoint {
                        ip: to_std(local_ip),
                        port,
                    },
                    remote,
                )?;
                self.state.udp_events.push_back(TransportEvent::Connected {
                    session,
                    conn,
                    tuple,
                });
                Ok(conn)
            }
        }
    }

    fn recv_available(&self, conn: TransportConnId) -> usize {
        match self.conn(conn) {
            Some(c) if c.proto == TransportProto::Tcp => {
                self.sockets.get::<tcp::Socket<'_>>(c.socket).recv_queue()
            }
            _ => 0,
        }
    }

    fn recv(
        &mut self,
        conn: TransportConnId,
        max: usize,
        sink: &mut dyn FnMut(&[u8]) -> usize,
    ) -> usize {
        let Some(s) = self.tcp(conn) else { return 0 };
        let n = s
            .recv(|buf| {
                let n = sink(&buf[..buf.len().min(max)]);
                (n, n)
            })
            .unwrap_or(0);
        // Taking data may reopen the window: an update is due.
        self.state.touched |= n > 0;
        n
    }

    fn send_space(&self, conn: TransportConnId) -> usize {
        match self.conn(conn) {
            Some(c) if c.proto == TransportProto::Tcp => {
                let s = self.sockets.get::<tcp::Socket<'_>>(c.socket);
                if s.may_send() {
                    s.send_capacity() - s.send_queue()
                } else {
                    0
                }
            }
            _ => 0,
        }
    }

    fn send(
        &mut self,
        conn: TransportConnId,
        max: usize,
        source: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> usize {
        let Some(s) = self.tcp(conn) else { return 0 };
        let n = s
            .send(|buf| {
                let l = buf.len().min(max);
                let n = source(&mut buf[..l]);
                (n, n)
            })
            .unwrap_or(0);
        self.state.touched |= n > 0;
        if n < max {
            if let Some(c) = self.conn_mut(conn) {
                c.want_writable = true;
            }
        }
        n
    }

    fn recv_datagram(
        &mut self,
        conn: TransportConnId,
        sink: &mut dyn FnMut(DatagramMeta, &[u8]) -> bool,
    ) -> bool {
        let Some(s) = self.udp(conn) else {
            return false;
        };
        let local_default = s.endpoint();
        let taken = match s.peek() {
            Ok((payload, meta)) => {
                let local_ip = meta
                    .local_address
                    .or(local_default.addr)
                    .map(to_std)
                    .unwrap_or(match meta.endpoint.addr {
                        IpAddress::Ipv4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                        IpAddress::Ipv6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    });
                let m = DatagramMeta {
                    remote: endpoint(meta.endpoint),
                    local: Endpoint {
                        ip: local_ip,
                        port: local_default.port,
                    },
                };
                sink(m, payload)
            }
            Err(_) => return false,
        };
        if taken {
            let _ = s.recv();
        }
        self.state.touched |= taken;
        taken
    }

    fn send_datagram(&mut self, conn: TransportConnId, meta: DatagramMeta, payload: &[u8]) -> bool {
        let Some(s) = self.udp(conn) else {
            return false;
        };
        let md = udp::UdpMetadata {
            endpoint: IpEndpoint::new(IpAddress::from(meta.remote.ip), meta.remote.port),
            local_address: if meta.local.is_zero_ip() {
                None
            } else {
                Some(IpAddress::from(meta.local.ip))
            },
            meta: Default::default(),
        };
        let sent = s.send_slice(payload, md).is_ok();
        self.state.touched |= sent;
        if !sent {
            if let Some(c) = self.conn_mut(conn) {
                c.want_writable = true;
            }
        }
        sent
    }

    fn close(&mut self, conn: TransportConnId) {
        let proto = self.proto;
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        match proto {
            TransportProto::Tcp => {
                c.phase = Phase::Closing;
                let h = c.socket;
                self.sockets_mut().get_mut::<tcp::Socket<'_>>(h).close();
            }
            TransportProto::Udp => {
                if let Some(h) = self.state.remove_udp_conn(conn) {
                    self.sockets_mut().remove(h);
                }
                self.state
                    .udp_events
                    .push_back(TransportEvent::Closed { conn });
            }
        }
    }

    fn reset(&mut self, conn: TransportConnId) {
        let proto = self.proto;
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        match proto {
            TransportProto::Tcp => {
                c.phase = Phase::Aborted;
                let h = c.socket;
                self.sockets_mut().get_mut::<tcp::Socket<'_>>(h).abort();
            }
            TransportProto::Udp => {
                if let Some(h) = self.state.remove_udp_conn(conn) {
                    self.sockets_mut().remove(h);
                }
            }
        }
    }

    fn poll_event(&mut self) -> Option<TransportEvent> {
        match self.proto {
            TransportProto::Tcp => self.state.tcp_events.pop_front(),
            TransportProto::Udp => self.state.udp_events.pop_front(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_in_a_reused_slot_has_an_id_of_its_own() {
        let mut sockets = SocketSet::new(vec![]);
        let udp = || {
            udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 64]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 64]),
            )
        };
        let mut st = SmolTransportState::new(EphemeralPorts::new(5));
        let first = st.new_udp_conn(sockets.add(udp()), 50_000);
        assert!(st.remove_udp_conn(first).is_some());
        let second = st.new_udp_conn(sockets.add(udp()), 50_001);
        assert_eq!(
            conn_slot(first).0,
            conn_slot(second).0,
            "the slot is reused"
        );
        assert_ne!(first, second);
        // An event or call still naming the first reaches nothing.
        assert!(st.remove_udp_conn(first).is_none());
        assert_eq!(st.conns.len(), 1);
        assert!(st.remove_udp_conn(second).is_some());
    }

    #[test]
    fn ephemeral_ports_are_distinct_in_range_and_come_back_when_released() {
        let mut p = EphemeralPorts::new(7);
        let mut seen = hashbrown::HashSet::new();
        for _ in 0..1000 {
            let port = p.allocate().unwrap();
            assert!(port >= EPHEMERAL_LOW);
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        assert_eq!(p.ports_in_use(), 1000);
        for &port in &seen {
            p.release(port);
        }
        assert_eq!(p.ports_in_use(), 0);
    }

    #[test]
    fn a_claimed_listener_port_is_never_handed_out() {
        let mut p = EphemeralPorts::new(3);
        // Every port but one taken by listeners: the sweep finds the last.
        for port in EPHEMERAL_LOW..=u16::MAX {
            if port != 60000 {
                p.claim(port);
            }
        }
        assert_eq!(p.allocate(), Some(60000));
        // Full: an answer, not a spin.
        assert_eq!(p.allocate(), None);
        p.release(50000);
        assert_eq!(p.allocate(), Some(50000));
    }

    #[test]
    fn a_port_shared_by_two_sockets_stays_taken_until_both_release_it() {
        let mut p = EphemeralPorts::new(11);
        p.claim(0); // no port: nothing counted
        assert_eq!(p.ports_in_use(), 0);
        p.claim(50001);
        p.claim(50001);
        p.release(50001);
        assert_eq!(p.ports_in_use(), 1);
        p.release(50001);
        assert_eq!(p.ports_in_use(), 0);
        // Releasing what is not held changes nothing.
        p.release(50001);
        assert_eq!(p.ports_in_use(), 0);
    }

    #[test]
    fn partitioned_ports_name_their_worker_and_fill_their_share() {
        for pos in 0..3u16 {
            let mut p = EphemeralPorts::new(7 + u64::from(pos)).partitioned(pos, 3);
            let share = p.share_len();
            let mut seen = hashbrown::HashSet::new();
            while let Some(port) = p.allocate() {
                assert!(port >= EPHEMERAL_LOW, "{port}");
                assert_eq!(p.owner(port), Some(pos), "{port}");
                assert!(seen.insert(port), "port {port} handed out twice");
            }
            assert_eq!(
                seen.len() as u32,
                share,
                "every port of the share, then None"
            );
        }
        let p = EphemeralPorts::new(1);
        assert_eq!(p.owner(80), None, "not an ephemeral port");
        assert_eq!(p.owner(50_000), Some(0), "one worker owns them all");
    }
}
