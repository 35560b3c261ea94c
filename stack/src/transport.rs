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
use hoststack_drivers::FlowSteering;
use hoststack_session::session_worker::TransportSet;
use hoststack_session::transport::{DatagramMeta, Transport, TransportConnId, TransportEvent};
use slab::Slab;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use tracing::debug;

use crate::config::TcpTuning;
use crate::tcp_listener::{SpareTcpSockets, TcpListenerPool};

/// Ephemeral TCP/UDP source ports of one worker.
#[derive(Debug)]
pub struct EphemeralPorts {
    state: u64,
    /// Where the device delivers each flow (a multi-queue TAP).
    steering: Option<FlowSteering>,
}

/// The IANA dynamic range.
const EPHEMERAL_LOW: u16 = 49152;

impl EphemeralPorts {
    /// Seeds the choice.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            steering: None,
        }
    }

    /// Picks only ports whose flows the device steers to this worker.
    pub fn set_flow_steering(&mut self, steering: Option<FlowSteering>) {
        self.steering = steering;
    }

    /// A port in 49152..=65535 no socket of `sockets` uses locally, and,
    /// when the device steers flows, one whose packets between `local` and
    /// `remote` (IP protocol `proto`) land on this worker.
    pub fn next(
        &mut self,
        sockets: &SocketSet<'static>,
        local: IpAddress,
        remote: IpEndpoint,
        proto: u8,
    ) -> u16 {
        loop {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let port =
                EPHEMERAL_LOW + (self.state % u64::from(u16::MAX - EPHEMERAL_LOW + 1)) as u16;
            if let Some(s) = self.steering {
                let here = std::net::SocketAddr::new(to_std(local), port);
                let there = std::net::SocketAddr::new(to_std(remote.addr), remote.port);
                if !s.is_ours(here, there, proto) {
                    continue;
                }
            }
            let used = sockets.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => {
                    t.local_endpoint().map(|e| e.port) == Some(port)
                        || t.listen_endpoint().port == port
                }
                smoltcp::socket::Socket::Udp(u) => u.endpoint().port == port,
                _ => false,
            });
            if !used {
                return port;
            }
        }
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
}

#[derive(Debug)]
struct Conn {
    socket: SocketHandle,
    proto: TransportProto,
    phase: Phase,
    /// A send took less than it was offered: report `Writable` once the
    /// socket has room.
    want_writable: bool,
}

/// Datagrams a UDP session socket buffers each way.
const UDP_PACKETS: usize = 1024;
/// Bytes a UDP session socket buffers each way.
const UDP_BYTES: usize = 2 << 20;

/// One worker's transport bookkeeping.
#[derive(Debug, Default)]
pub struct SmolTransportState {
    tcp_listeners: HashMap<ListenerHandle, TcpListenerPool>,
    conns: Slab<Conn>,
    tcp_events: VecDeque<TransportEvent>,
    udp_events: VecDeque<TransportEvent>,
    /// Closed-by-us TCP sockets finishing (TIME-WAIT), no longer a
    /// connection of anyone.
    lingering: Vec<SocketHandle>,
    accepted: Vec<SocketHandle>,
    listener_scratch: Vec<ListenerHandle>,
    /// Closed TCP sockets for the next connections.
    spares: SpareTcpSockets,
    /// A socket was changed outside the interface's poll (data queued or
    /// taken, closed, added): the worker must poll it before trusting its
    /// cached next deadline.
    touched: bool,
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
    ) -> TransportConnId {
        TransportConnId(self.conns.insert(Conn {
            socket,
            proto,
            phase,
            want_writable: false,
        }) as u64)
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
                        let conn = self.new_conn(h, TransportProto::Tcp, Phase::Established);
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
            let conn = TransportConnId(i as u64);
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
                        self.lingering.push(c.socket);
                        c.phase = Phase::Aborted; // forgotten below without removing the socket
                        gone.push(i);
                    }
                    _ => {}
                },
                Phase::Aborted => gone.push(i),
                Phase::Bound => {}
            }
        }
        for i in gone {
            let c = self.conns.remove(i);
            if !self.lingering.contains(&c.socket) {
                self.spares.recycle(sockets, c.socket);
            }
        }
        let spares = &mut self.spares;
        self.lingering.retain(|&h| {
            let closed = sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Closed;
            if closed {
                spares.recycle(sockets, h);
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
    /// Ephemeral ports.
    pub ports: &'a mut EphemeralPorts,
    proto: TransportProto,
}

impl<'a> SmolTransports<'a> {
    /// A view over the worker's parts.
    pub fn new(
        state: &'a mut SmolTransportState,
        sockets: &'a mut SocketSet<'static>,
        iface: &'a mut Interface,
        tuning: &'a TcpTuning,
        ports: &'a mut EphemeralPorts,
    ) -> Self {
        Self {
            state,
            sockets,
            iface,
            tuning,
            ports,
            proto: TransportProto::Tcp,
        }
    }

    /// The socket set for a change; marks the worker's deadline stale.
    fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        self.state.touched = true;
        self.sockets
    }

    fn conn(&self, c: TransportConnId) -> Option<&Conn> {
        self.state
            .conns
            .get(c.0 as usize)
            .filter(|x| x.proto == self.proto)
    }

    fn conn_mut(&mut self, c: TransportConnId) -> Option<&mut Conn> {
        let proto = self.proto;
        self.state
            .conns
            .get_mut(c.0 as usize)
            .filter(|x| x.proto == proto)
    }

    fn tcp(&mut self, c: TransportConnId) -> Option<&mut tcp::Socket<'static>> {
        let h = self.conn(c)?.socket;
        Some(self.sockets.get_mut::<tcp::Socket<'static>>(h))
    }

    fn udp(&mut self, c: TransportConnId) -> Option<&mut udp::Socket<'static>> {
        let h = self.conn(c)?.socket;
        Some(self.sockets.get_mut::<udp::Socket<'static>>(h))
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
                self.state.tcp_listeners.insert(listener, pool);
            }
            TransportProto::Udp => {
                let h = self.new_udp_socket(listen_endpoint(ep))?;
                let conn = self.state.new_conn(h, TransportProto::Udp, Phase::Bound);
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
            self.state.touched = true;
        }
    }

    fn connect(
        &mut self,
        session: SessionHandle,
        remote: Endpoint,
    ) -> SessionResult<TransportConnId> {
        let remote_ep = IpEndpoint::new(IpAddress::from(remote.ip), remote.port);
        let local_ip = self
            .iface
            .get_source_address(&remote_ep.addr)
            .ok_or_else(|| {
                SessionError::Transport(format!("no source address to reach {remote}"))
            })?;
        match self.proto {
            TransportProto::Tcp => {
                let mut s = self.state.spares.take(self.tuning);
                let port = self.ports.next(self.sockets, local_ip, remote_ep, 6);
                s.connect(self.iface.context(), remote_ep, port)
                    .map_err(|e| SessionError::Transport(format!("connect to {remote}: {e}")))?;
                let h = self.sockets_mut().add(s);
                Ok(self
                    .state
                    .new_conn(h, TransportProto::Tcp, Phase::Connecting(session)))
            }
            TransportProto::Udp => {
                let port = self.ports.next(self.sockets, local_ip, remote_ep, 17);
                let h = self.new_udp_socket(IpListenEndpoint {
                    addr: Some(local_ip),
                    port,
                })?;
                let conn = self.state.new_conn(h, TransportProto::Udp, Phase::Bound);
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
                let c = self.state.conns.remove(conn.0 as usize);
                self.sockets_mut().remove(c.socket);
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
                let c = self.state.conns.remove(conn.0 as usize);
                self.sockets_mut().remove(c.socket);
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
