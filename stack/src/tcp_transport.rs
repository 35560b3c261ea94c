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
    ConnHandle, ConnOptions, ConnectFailure, Instant, ListenOptions, ListenerId, TcpConfig,
    TcpEndpoint, TcpEvent,
};

use hoststack_drivers::FlowSteering;

use crate::neighbors::Routes;

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

/// The engine of one worker, seen by the session layer.
#[derive(Debug)]
pub struct EngineTcp {
    engine: TcpEndpoint,
    table: u32,
    routes: Routes,
    listen: ListenOptions,
    connect: ConnOptions,
    listeners: HashMap<ListenerHandle, Vec<ListenerId>>,
    by_listener_id: HashMap<ListenerId, ListenerHandle>,
    connecting: HashMap<ConnHandle, SessionHandle>,
    events: VecDeque<TransportEvent>,
    scratch: Vec<u8>,
    now: Instant,
    /// Where the device delivers each flow (a multi-queue TAP): connects
    /// pick ports whose packets come back to this worker.
    steering: Option<FlowSteering>,
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
            connecting: HashMap::new(),
            events: VecDeque::new(),
            scratch: vec![0u8; 64 << 10],
            now,
            steering: None,
        }
    }

    /// Makes connects pick local ports the device steers to this worker.
    pub fn set_flow_steering(&mut self, steering: Option<FlowSteering>) {
        self.steering = steering;
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
        for ids in std::mem::take(&mut self.listeners).into_values() {
            for id in ids {
                let _ = self.engine.unlisten(id);
            }
        }
        self.by_listener_id.clear();
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
        // A zero address listens on both families, as it does on smoltcp.
        let addrs: Vec<IpAddr> = if ep.is_zero_ip() {
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ]
        } else {
            vec![ep.ip]
        };
        let mut ids = Vec::new();
        for ip in addrs {
            match self
                .engine
                .listen(self.table, SocketAddr::new(ip, ep.port), self.listen)
            {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        let _ = self.engine.unlisten(id);
                    }
                    return Err(SessionError::Transport(format!("listen on {ep}: {e}")));
                }
            }
        }
        for &id in &ids {
            self.by_listener_id.insert(id, listener);
        }
        self.listeners.insert(listener, ids);
        Ok(())
    }

    fn unlisten(&mut self, listener: ListenerHandle) {
        for id in self.listeners.remove(&listener).unwrap_or_default() {
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
        let steering = self.steering;
        let ours = |port: u16| {
            steering.is_none_or(|s| s.is_ours(SocketAddr::new(local_ip, port), remote_addr, 6))
        };
        let port = self
            .engine
            .pick_local_port(self.table, local_ip, remote_addr, ours)
            .ok_or_else(|| {
                SessionError::Transport(format!("no free local port toward {remote}"))
            })?;
        let conn = self
            .engine
            .connect(
                self.now,
                self.table,
                SocketAddr::new(local_ip, port),
                remote_addr,
                self.connect,
            )
            .map_err(|e| SessionError::Transport(format!("connect to {remote}: {e}")))?;
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
