//! hoststack's own TCP engine (`hoststack-tcp`) as the session layer's TCP
//! transport on one worker.
//!
//! [`EngineTcp`] owns the worker's [`TcpEndpoint`] and the few maps that
//! translate between the two vocabularies: the session layer's listener
//! handles and the engine's listener ids (a wildcard listen becomes one IPv4
//! and one IPv6 listener), connecting sessions by connection, and engine
//! events into transport events. A [`TransportConnId`] is the engine's
//! [`ConnHandle`] as a number, generation included, so a late call on an
//! ended connection is a stale handle to the engine, never another
//! connection. Frames in and out are the worker's business
//! (`tcp_frames`); this module never sees Ethernet or IP.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hashbrown::HashMap;
use hoststack_app_proto::endpoint::{Endpoint, FiveTuple, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{ListenerHandle, SessionHandle};
use hoststack_session::transport::{DatagramMeta, Transport, TransportConnId, TransportEvent};
use hoststack_tcp::{
    ConnHandle, ConnOptions, ConnectFailure, FlowTuple, Instant, ListenOptions, ListenerId,
    TcpConfig, TcpEndpoint, TcpError, TcpEvent,
};

use crate::flow_directory::Claim;
use crate::neighbors::Routes;
use crate::queue_group::QueueShare;

/// How a connect of one worker among several picks its port: which ports it
/// may use (those whose replies its own queue receives, where the NIC's hash
/// is known, else its share of the range), and the directory it claims the
/// tuple in before the SYN leaves.
pub struct ConnectSteering {
    share: QueueShare,
    /// The worker's share of the ports: `pos` modulo `workers`.
    partition: (u16, u16),
    /// Ports whose replies the worker's own queue receives, when known.
    port_ok: Option<PortFilter>,
}

/// Whether a connect from the first address to the second may use it.
pub type PortFilter = Box<dyn Fn(SocketAddr, SocketAddr) -> bool + Send>;

impl std::fmt::Debug for ConnectSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSteering")
            .field("pos", &self.share.pos)
            .finish_non_exhaustive()
    }
}

/// Candidate ports a connect tries before giving up on finding one that no
/// other worker holds.
const CONNECT_CLAIM_TRIES: usize = 16;

fn conn_id(c: ConnHandle) -> TransportConnId {
    TransportConnId(c.to_bits())
}

fn handle(c: TransportConnId) -> ConnHandle {
    ConnHandle::from_bits(c.0)
}

fn endpoint(a: SocketAddr) -> Endpoint {
    Endpoint {
        ip: a.ip(),
        port: a.port(),
    }
}

/// The engine listeners behind one session-layer listener: its own
/// address's, and a zero address's borrowed other-family wildcard.
#[derive(Debug, Default)]
struct EngineListeners {
    ids: Vec<ListenerId>,
    port: u16,
}

/// The engine of one worker, seen by the session layer.
#[derive(Debug)]
pub struct EngineTcp {
    engine: TcpEndpoint,
    table: u32,
    routes: Routes,
    listen: ListenOptions,
    connect: ConnOptions,
    listeners: HashMap<ListenerHandle, EngineListeners>,
    by_listener_id: HashMap<ListenerId, ListenerHandle>,
    /// The other family's wildcard that a zero-address listener holds
    /// while no listener of that family asks for it.
    borrowed: HashMap<SocketAddr, (ListenerHandle, ListenerId)>,
    connecting: HashMap<ConnHandle, SessionHandle>,
    steering: Option<ConnectSteering>,
    events: VecDeque<TransportEvent>,
    scratch: Vec<u8>,
    now: Instant,
}

impl EngineTcp {
    /// An engine for FIB `table`, sourcing connects from `routes`' addresses.
    pub fn new(
        config: TcpConfig,
        listen: ListenOptions,
        connect: ConnOptions,
        table: u32,
        routes: Routes,
        now: Instant,
    ) -> Self {
        Self {
            engine: TcpEndpoint::new(config, now),
            table,
            routes,
            listen,
            connect,
            listeners: HashMap::new(),
            by_listener_id: HashMap::new(),
            borrowed: HashMap::new(),
            connecting: HashMap::new(),
            steering: None,
            events: VecDeque::new(),
            scratch: vec![0u8; 64 << 10],
            now,
        }
    }

    /// This worker shares its interface with others (it is `share.pos` of
    /// `workers`): connects take only this worker's share of the ports and
    /// claim their tuple in the interface's flow directory, and the engine
    /// records the flows it drops so their entries go too.
    /// With `port_ok` (e.g. the ports whose RSS hash brings replies to this
    /// worker's queue), connects try those ports first.
    pub fn set_steering(&mut self, share: QueueShare, workers: usize, port_ok: Option<PortFilter>) {
        self.engine.set_flow_removal_log(true);
        let partition = (share.pos as u16, workers.max(1) as u16);
        self.steering = Some(ConnectSteering {
            share,
            partition,
            port_ok,
        });
    }

    /// The worker's time this loop: what a connect starts at.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// The engine, for segments in and out, timers and counters.
    pub fn endpoint(&mut self) -> &mut TcpEndpoint {
        &mut self.engine
    }

    /// The engine, read-only.
    pub fn endpoint_ref(&self) -> &TcpEndpoint {
        &self.engine
    }

    /// The FIB index its connections live in.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// Moves the engine's events into transport events.
    fn translate(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            match ev {
                TcpEvent::AcceptReady { listener } => {
                    let Some(&lh) = self.by_listener_id.get(&listener) else {
                        continue;
                    };
                    while let Ok(Some(conn)) = self.engine.accept(listener) {
                        let Some(info) = self.engine.info(conn) else {
                            continue;
                        };
                        let t = info.tuple;
                        match FiveTuple::new(
                            TransportProto::Tcp,
                            endpoint(t.local),
                            endpoint(t.remote),
                        ) {
                            Ok(tuple) => self.events.push_back(TransportEvent::Accepted {
                                listener: lh,
                                conn: conn_id(conn),
                                tuple,
                            }),
                            Err(_) => {
                                let _ = self.engine.abort(conn);
                            }
                        }
                    }
                }
                TcpEvent::Connected { conn } => {
                    let Some(session) = self.connecting.remove(&conn) else {
                        let _ = self.engine.abort(conn);
                        continue;
                    };
                    let tuple = self.engine.info(conn).and_then(|i| {
                        FiveTuple::new(
                            TransportProto::Tcp,
                            endpoint(i.tuple.local),
                            endpoint(i.tuple.remote),
                        )
                        .ok()
                    });
                    match tuple {
                        Some(tuple) => self.events.push_back(TransportEvent::Connected {
                            session,
                            conn: conn_id(conn),
                            tuple,
                        }),
                        None => {
                            let _ = self.engine.abort(conn);
                            self.events.push_back(TransportEvent::ConnectFailed {
                                session,
                                reason: "connected with an unusable address".into(),
                            });
                        }
                    }
                }
                TcpEvent::ConnectFailed { conn, reason } => {
                    if let Some(session) = self.connecting.remove(&conn) {
                        let reason = match reason {
                            ConnectFailure::Refused => "connection refused",
                            ConnectFailure::TimedOut => "connection timed out",
                            ConnectFailure::Reset => "connection reset during the handshake",
                        };
                        self.events.push_back(TransportEvent::ConnectFailed {
                            session,
                            reason: reason.into(),
                        });
                    }
                }
                TcpEvent::Readable { conn } => self.events.push_back(TransportEvent::Readable {
                    conn: conn_id(conn),
                }),
                TcpEvent::Writable { conn } => self.events.push_back(TransportEvent::Writable {
                    conn: conn_id(conn),
                }),
                TcpEvent::RemoteClosed { conn } => {
                    self.events.push_back(TransportEvent::RemoteClosed {
                        conn: conn_id(conn),
                    })
                }
                TcpEvent::Reset { conn, .. } => self.events.push_back(TransportEvent::Reset {
                    conn: conn_id(conn),
                }),
                TcpEvent::Closed { conn } => self.events.push_back(TransportEvent::Closed {
                    conn: conn_id(conn),
                }),
            }
        }
    }

    /// Closes every connection and listener (worker shutdown): peers get
    /// a RST.
    pub fn shutdown(&mut self) {
        for l in std::mem::take(&mut self.listeners).into_values() {
            for id in l.ids {
                let _ = self.engine.unlisten(id);
            }
        }
        self.by_listener_id.clear();
        self.borrowed.clear();
        while let Some(ev) = self.events.pop_front() {
            let conn = match ev {
                TransportEvent::Accepted { conn, .. } | TransportEvent::Connected { conn, .. } => {
                    conn
                }
                _ => continue,
            };
            let _ = self.engine.abort(handle(conn));
        }
    }
}

impl Transport for EngineTcp {
    fn proto(&self) -> TransportProto {
        TransportProto::Tcp
    }

    fn listen(&mut self, listener: ListenerHandle, ep: Endpoint) -> SessionResult<()> {
        if ep.port == 0 {
            return Err(SessionError::Transport("cannot listen on port 0".into()));
        }
        let own = SocketAddr::new(ep.ip, ep.port);
        // A listener of this family's wildcard takes it back from the
        // other family's zero-address listener that borrowed it.
        if let Some((holder, id)) = self.borrowed.remove(&own) {
            let _ = self.engine.unlisten(id);
            self.by_listener_id.remove(&id);
            if let Some(l) = self.listeners.get_mut(&holder) {
                l.ids.retain(|&x| x != id);
            }
        }
        let id = self
            .engine
            .listen(self.table, own, self.listen)
            .map_err(|e| match e {
                TcpError::AlreadyListening => SessionError::AlreadyListening(ep.to_string()),
                e => SessionError::Transport(format!("listen on {ep}: {e}")),
            })?;
        let mut ids = vec![id];
        // A zero address also takes the other family's connections, as on
        // smoltcp, while that family's wildcard is free.
        if ep.is_zero_ip() {
            let other_ip = match ep.ip {
                IpAddr::V4(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            let other = SocketAddr::new(other_ip, ep.port);
            if let Ok(oid) = self.engine.listen(self.table, other, self.listen) {
                ids.push(oid);
                self.borrowed.insert(other, (listener, oid));
            }
        }
        for &id in &ids {
            self.by_listener_id.insert(id, listener);
        }
        self.listeners
            .insert(listener, EngineListeners { ids, port: ep.port });
        Ok(())
    }

    fn unlisten(&mut self, listener: ListenerHandle) {
        let l = self.listeners.remove(&listener).unwrap_or_default();
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let wildcard = SocketAddr::new(ip, l.port);
            if self
                .borrowed
                .get(&wildcard)
                .is_some_and(|b| b.0 == listener)
            {
                self.borrowed.remove(&wildcard);
            }
        }
        for id in l.ids {
            self.by_listener_id.remove(&id);
            let _ = self.engine.unlisten(id);
        }
    }

    fn connect(
        &mut self,
        session: SessionHandle,
        remote: Endpoint,
    ) -> SessionResult<TransportConnId> {
        let remote_addr = SocketAddr::new(remote.ip, remote.port);
        let local_ip = self.routes.source_for(remote.ip).ok_or_else(|| {
            SessionError::Transport(format!("no source address to reach {remote}"))
        })?;
        let no_port = || SessionError::Transport(format!("no free local port toward {remote}"));
        let mut claimed = None;
        let port = match &self.steering {
            None => self
                .engine
                .pick_local_port(self.table, local_ip, remote_addr, |_| true)
                .ok_or_else(no_port)?,
            Some(st) => {
                let mut found = None;
                let (pos, n) = st.partition;
                for _ in 0..CONNECT_CLAIM_TRIES {
                    // Replies on our own queue if the NIC's hash says so,
                    // else our share of the range.
                    let steered = st.port_ok.as_ref().and_then(|ok| {
                        self.engine
                            .pick_local_port(self.table, local_ip, remote_addr, |p| {
                                ok(SocketAddr::new(local_ip, p), remote_addr)
                            })
                    });
                    let port = match steered {
                        Some(p) => p,
                        None => self
                            .engine
                            .pick_local_port(self.table, local_ip, remote_addr, |p| p % n == pos)
                            .ok_or_else(no_port)?,
                    };
                    let tuple = FlowTuple {
                        table: self.table,
                        local: SocketAddr::new(local_ip, port),
                        remote: remote_addr,
                    };
                    // Claimed before the SYN leaves: the SYN-ACK may land on
                    // another queue, whose worker must find us.
                    let me = st.share.pos as u16;
                    if st.share.group.directory.claim(&tuple, me) == Claim::Mine {
                        claimed = Some((tuple, me));
                        found = Some(port);
                        break;
                    }
                }
                found.ok_or_else(no_port)?
            }
        };
        let conn = self.engine.connect(
            self.now,
            self.table,
            SocketAddr::new(local_ip, port),
            remote_addr,
            self.connect,
        );
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if let (Some((tuple, me)), Some(st)) = (claimed, &self.steering) {
                    st.share.group.directory.release(&tuple, me);
                }
                return Err(SessionError::Transport(format!("connect to {remote}: {e}")));
            }
        };
        self.connecting.insert(conn, session);
        Ok(conn_id(conn))
    }

    fn recv_available(&self, conn: TransportConnId) -> usize {
        self.engine.recv_available(handle(conn)).unwrap_or(0)
    }

    fn recv(
        &mut self,
        conn: TransportConnId,
        max: usize,
        sink: &mut dyn FnMut(&[u8]) -> usize,
    ) -> usize {
        let mut left = max;
        self.engine
            .recv_with(handle(conn), |data| {
                let take = data.len().min(left);
                let n = sink(&data[..take]);
                left -= n;
                n
            })
            .unwrap_or(0)
    }

    fn send_space(&self, conn: TransportConnId) -> usize {
        self.engine.send_space(handle(conn)).unwrap_or(0)
    }

    fn send(
        &mut self,
        conn: TransportConnId,
        max: usize,
        source: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> usize {
        let h = handle(conn);
        let space = self.engine.send_space(h).unwrap_or(0);
        let want = max.min(space).min(self.scratch.len());
        let n = if want == 0 {
            0
        } else {
            source(&mut self.scratch[..want])
        };
        let sent = if n > 0 {
            self.engine.send(h, &self.scratch[..n]).unwrap_or(0)
        } else {
            0
        };
        if sent < max {
            let _ = self.engine.want_writable(h);
        }
        sent
    }

    fn recv_datagram(
        &mut self,
        _conn: TransportConnId,
        _sink: &mut dyn FnMut(DatagramMeta, &[u8]) -> bool,
    ) -> bool {
        false
    }

    fn send_datagram(&mut self, _conn: TransportConnId, _meta: DatagramMeta, _p: &[u8]) -> bool {
        false
    }

    fn close(&mut self, conn: TransportConnId) {
        let _ = self.engine.close(handle(conn));
    }

    fn reset(&mut self, conn: TransportConnId) {
        let h = handle(conn);
        self.connecting.remove(&h);
        let _ = self.engine.abort(h);
    }

    fn poll_event(&mut self) -> Option<TransportEvent> {
        if self.events.is_empty() {
            self.translate();
        }
        self.events.pop_front()
    }

    fn conn_details(&self, conn: TransportConnId) -> Vec<(&'static str, String)> {
        let Some(i) = self.engine.info(handle(conn)) else {
            return Vec::new();
        };
        let us = |d: hoststack_tcp::Duration| format!("{}us", d.total_micros());
        vec![
            ("state", i.state.to_string()),
            ("cwnd", i.cwnd.to_string()),
            (
                "ssthresh",
                if i.ssthresh == u32::MAX {
                    "-".into()
                } else {
                    i.ssthresh.to_string()
                },
            ),
            ("srtt", i.srtt.map_or("-".into(), us)),
            ("rttvar", us(i.rttvar)),
            ("rto", us(i.rto)),
            ("in-flight", i.bytes_in_flight.to_string()),
            ("retransmits", i.retransmits.to_string()),
            ("sack-blocks", i.sack_blocks_received.to_string()),
            ("snd-wnd", i.snd_wnd.to_string()),
            ("rcv-wnd", i.rcv_wnd.to_string()),
            ("mss", i.mss.to_string()),
            ("recovery", i.in_recovery.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn engine() -> EngineTcp {
        EngineTcp::new(
            TcpConfig::default(),
            ListenOptions::default(),
            ConnOptions::default(),
            0,
            Routes::new(&[], None),
            Instant::from_millis(0),
        )
    }

    fn zero(ip: IpAddr, port: u16) -> Endpoint {
        Endpoint { ip, port }
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

    #[test]
    fn a_zero_v4_listener_lends_the_v6_wildcard_until_a_v6_listener_takes_it() {
        let mut e = engine();
        let (a, b) = (ListenerHandle::new(0, 1), ListenerHandle::new(0, 2));
        e.listen(a, zero(V4, 80)).expect("0.0.0.0:80");
        assert_eq!(e.listeners[&a].ids.len(), 2, "borrows [::]:80");
        e.listen(b, zero(V6, 80))
            .expect("[::]:80 takes the borrowed wildcard");
        assert_eq!(e.listeners[&a].ids.len(), 1);
        assert_eq!(
            e.listeners[&b].ids.len(),
            1,
            "borrows nothing: 0.0.0.0 is A's"
        );
        assert!(e.borrowed.is_empty());
        assert_eq!(e.by_listener_id[&e.listeners[&a].ids[0]], a);
        assert_eq!(e.by_listener_id[&e.listeners[&b].ids[0]], b);
        assert_eq!(e.by_listener_id.len(), 2);
        e.unlisten(b);
        e.unlisten(a);
        assert!(e.listeners.is_empty() && e.by_listener_id.is_empty() && e.borrowed.is_empty());
        e.listen(b, zero(V6, 80)).expect("everything was released");
    }

    #[test]
    fn a_listener_of_the_same_address_is_refused_as_already_listening() {
        let mut e = engine();
        let (a, b) = (ListenerHandle::new(0, 1), ListenerHandle::new(0, 2));
        e.listen(a, zero(V6, 81)).expect("[::]:81");
        assert!(matches!(
            e.listen(b, zero(V6, 81)),
            Err(SessionError::AlreadyListening(_))
        ));
        // The borrowed 0.0.0.0:81 goes to a v4 listener, and comes back
        // to nobody when A leaves: B's own stays.
        e.listen(b, zero(V4, 81)).expect("0.0.0.0:81 taken back");
        e.unlisten(a);
        assert!(e.borrowed.is_empty());
        assert_eq!(e.listeners[&b].ids.len(), 1);
    }
}
