//! The endpoint: every connection, listener, half-open and TIME-WAIT entry of one stack
//! worker, and the single place where segments, timers and application calls come in.
//!
//! Work per call is independent of how many connections exist: a hash map keyed by
//! [`FlowTuple`] finds the one entry a segment belongs to, a timer wheel holds one entry per
//! connection (at its earliest deadline), and only connections with something to send sit
//! on the ready list `poll_transmit` serves round robin. Replies that need no connection
//! (RSTs, challenge ACKs from TIME-WAIT, SYN-ACKs of half-open entries and cookies) wait in a
//! bounded queue that `poll_transmit` empties first.

use std::collections::VecDeque;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hashbrown::HashMap;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

use crate::arena::Arena;
use crate::buffer::ChunkPool;
use crate::config::{ConnOptions, KeepaliveConfig, ListenOptions, TcpConfig};
use crate::conn::{
    Connection, Ctx, EV_CONNECTED, EV_READABLE, EV_REMOTE_CLOSED, EV_WRITABLE, Handshake,
    Negotiated, Outcome, send_mss, window_scale_for,
};
use crate::cookie::{SequenceSecret, cookie_ts_options};
use crate::counters::TcpCounters;
use crate::error::TcpError;
use crate::event::{ConnHandle, ListenerId, TcpEvent};
use crate::info::{ConnInfo, FlowTuple};
use crate::listener::{Listener, Request, SynAckOffer, cookie_synack, negotiate, synack};
use crate::ratelimit::RateLimiter;
use crate::segment::{Header, ParseError, Segment, parse};
use crate::seqnum::SeqNum;
use crate::time_wait::{REUSE_ISN_GAP, TimeWait, TimeWaitAction};
use crate::wheel::TimerWheel;

/// Whether `handle_segment` must verify the TCP checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Verify it in software.
    Verify,
    /// The device or the caller already checked it.
    AlreadyVerified,
}

/// One segment written by [`TcpEndpoint::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// FIB index of the connection.
    pub table: u32,
    /// IP source for the IP header (the checksum already covers it).
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// Bytes written at the start of the buffer: TCP header, options, payload.
    pub len: usize,
    /// For TSO: the payload of each wire segment the device must cut this one into.
    pub segment_size: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Conn(u32),
    Request(u32),
    TimeWait(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKey {
    Conn(u32, u32),
    Request(u32, u32),
    TimeWait(u32, u32),
}

#[derive(Debug)]
struct Reply {
    table: u32,
    local: IpAddr,
    remote: IpAddr,
    header: Header,
}

/// A TCP endpoint: the engine of one stack worker.
///
/// # Calling convention
///
/// Inputs are [`handle_segment`](Self::handle_segment) for every TCP segment from the wire
/// and [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)'s
/// deadline passes (early or repeated calls do nothing). Application commands (`listen`,
/// `connect`, `send`, `recv`, `close`, ...) act on handles. Outputs are pulled: after any
/// input or command, call [`poll_transmit`](Self::poll_transmit) until it returns `None`,
/// then [`poll_event`](Self::poll_event) until `None`, then re-read `poll_timeout`.
///
/// Time is passed in and must never go backwards; commands without a `now` use the latest
/// time the endpoint was given.
#[derive(Debug)]
pub struct TcpEndpoint {
    config: TcpConfig,
    secret: SequenceSecret,
    conns: Arena<Box<Connection>>,
    requests: Arena<Request>,
    time_waits: Arena<TimeWait>,
    flows: HashMap<FlowTuple, Flow>,
    listeners: Arena<Listener>,
    listen_index: HashMap<(u32, SocketAddr), u32>,
    wheel: TimerWheel<TimerKey>,
    ready: VecDeque<(u32, u32)>,
    replies: VecDeque<Reply>,
    events: VecDeque<TcpEvent>,
    pool: ChunkPool,
    counters: TcpCounters,
    challenge: RateLimiter,
    rst_limit: RateLimiter,
    fired: Vec<TimerKey>,
    port_cursor: u32,
    /// Tuples whose entry went away since the last `take_removed_flows`,
    /// when the caller asked for them.
    removed_flows: Option<Vec<FlowTuple>>,
    now: Instant,
}

fn handle(index: u32, generation: u32) -> ConnHandle {
    ConnHandle { index, generation }
}

fn wildcard(local: SocketAddr) -> SocketAddr {
    let ip = if local.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, local.port())
}

impl TcpEndpoint {
    /// An endpoint with no connections. The configuration should have passed
    /// [`TcpConfig::validate`]; out-of-range values are clamped where they would misbehave.
    pub fn new(config: TcpConfig, now: Instant) -> Self {
        Self {
            secret: SequenceSecret::new(config.secret),
            conns: Arena::default(),
            requests: Arena::default(),
            time_waits: Arena::default(),
            flows: HashMap::new(),
            listeners: Arena::default(),
            listen_index: HashMap::new(),
            wheel: TimerWheel::new(now),
            ready: VecDeque::new(),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            pool: ChunkPool::new(config.idle_chunks),
            counters: TcpCounters::default(),
            challenge: RateLimiter::new(config.challenge_ack_limit, now),
            rst_limit: RateLimiter::new(config.rst_limit, now),
            fired: Vec::new(),
            port_cursor: 0,
            removed_flows: None,
            now,
            config,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Counters since creation.
    pub fn counters(&self) -> &TcpCounters {
        &self.counters
    }

    /// Live connections (half-open and TIME-WAIT entries not included).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Lightweight TIME-WAIT entries.
    pub fn time_wait_count(&self) -> usize {
        self.time_waits.len()
    }

    /// Half-open (SYN-RECEIVED) entries across all listeners.
    pub fn half_open_count(&self) -> usize {
        self.requests.len()
    }

    /// Buffer chunks currently held by connections.
    pub fn buffer_chunks_in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// Whether a connection, half-open or TIME-WAIT entry holds `tuple`.
    pub fn has_flow(&self, tuple: &FlowTuple) -> bool {
        self.flows.contains_key(tuple)
    }

    /// Starts (or stops) recording the tuples whose entry goes away, for a
    /// caller that mirrors which tuples this endpoint holds (a multi-queue
    /// stack's flow directory). A tuple may be recorded and then held
    /// again (a connection entering TIME-WAIT, a half-open entry promoted):
    /// check [`has_flow`](Self::has_flow) when reading the record.
    pub fn set_flow_removal_log(&mut self, on: bool) {
        self.removed_flows = on.then(Vec::new);
    }

    /// Moves the recorded tuples to `out` (see `set_flow_removal_log`).
    pub fn take_removed_flows(&mut self, out: &mut Vec<FlowTuple>) {
        if let Some(log) = &mut self.removed_flows {
            out.append(log);
        }
    }

    fn forget_flow(&mut self, tuple: &FlowTuple) {
        self.flows.remove(tuple);
        if let Some(log) = &mut self.removed_flows {
            log.push(*tuple);
        }
    }

    fn advance_clock(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    // Listeners.

    /// Listens on `local` in `table`; an unspecified IP listens on every address of the
    /// family. One listener per table, address and port.
    pub fn listen(
        &mut self,
        table: u32,
        local: SocketAddr,
        opts: ListenOptions,
    ) -> Result<ListenerId, TcpError> {
        opts.validate()?;
        if local.port() == 0 {
            return Err(TcpError::InvalidAddress);
        }
        if self.listen_index.contains_key(&(table, local)) {
            return Err(TcpError::AlreadyListening);
        }
        let (index, generation) = self.listeners.insert(Listener::new(table, local, opts));
        self.listen_index.insert((table, local), index);
        Ok(ListenerId { index, generation })
    }

    /// Stops listening. Connections not yet accepted are reset; half-open entries are
    /// refused when their final ACK arrives or time out.
    pub fn unlisten(&mut self, id: ListenerId) -> Result<(), TcpError> {
        let Some(listener) = self.listeners.remove(id.index, id.generation) else {
            self.counters.stale_handle += 1;
            return Err(TcpError::StaleListener);
        };
        self.listen_index.remove(&(listener.table, listener.local));
        for conn in listener.accept_queue {
            if self.conns.get(conn.index, conn.generation).is_some() {
                self.abort_inner(conn, false);
            }
        }
        Ok(())
    }

    /// Takes the next established connection from the listener's accept queue.
    pub fn accept(&mut self, id: ListenerId) -> Result<Option<ConnHandle>, TcpError> {
        let Some(listener) = self.listeners.get_mut(id.index, id.generation) else {
            self.counters.stale_handle += 1;
            return Err(TcpError::StaleListener);
        };
        while let Some(h) = listener.accept_queue.pop_front() {
            if let Some(conn) = self.conns.get_mut(h.index, h.generation) {
                conn.on_accept();
                self.flush_events(h);
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// Connections waiting in a listener's accept queue.
    pub fn accept_queue_len(&self, id: ListenerId) -> Result<usize, TcpError> {
        self.listeners
            .get(id.index, id.generation)
            .map(|l| l.accept_queue.len())
            .ok_or(TcpError::StaleListener)
    }

    // Active opens.

    /// Picks a free ephemeral port for `local_ip` → `remote` in `table` that `accept` likes
    /// (e.g. one whose RSS hash lands on the caller's queue). Starts at a keyed hash of the
    /// addresses plus a moving cursor, so consecutive calls take consecutive candidates;
    /// examines each port of the range at most once.
    pub fn pick_local_port(
        &mut self,
        table: u32,
        local_ip: IpAddr,
        remote: SocketAddr,
        accept: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        let (lo, hi) = self.config.ephemeral_ports;
        if lo == 0 || lo > hi {
            return None;
        }
        let span = u32::from(hi - lo) + 1;
        let base = self
            .secret
            .port_offset(SocketAddr::new(local_ip, 0), remote)
            .wrapping_add(self.port_cursor);
        for step in 0..span {
            let port = lo + ((base.wrapping_add(step)) % span) as u16;
            if !accept(port) {
                continue;
            }
            let local = SocketAddr::new(local_ip, port);
            let tuple = FlowTuple {
                table,
                local,
                remote,
            };
            if self.flows.contains_key(&tuple)
                || self.listen_index.contains_key(&(table, local))
                || self.listen_index.contains_key(&(table, wildcard(local)))
            {
                continue;
            }
            self.port_cursor = self.port_cursor.wrapping_add(step + 1);
            return Some(port);
        }
        None
    }

    /// Opens a connection from `local` to `remote`. A local port of 0 picks an ephemeral
    /// one. The handle is usable at once: data sent before `Connected` waits in the buffer.
    pub fn connect(
        &mut self,
        now: Instant,
        table: u32,
        local: SocketAddr,
        remote: SocketAddr,
        opts: ConnOptions,
    ) -> Result<ConnHandle, TcpError> {
        self.advance_clock(now);
        opts.validate()?;
        if local.ip().is_unspecified()
            || remote.ip().is_unspecified()
            || remote.port() == 0
            || local.is_ipv4() != remote.is_ipv4()
            || remote.ip().is_multicast()
        {
            return Err(TcpError::InvalidAddress);
        }
        let local = if local.port() == 0 {
            let port = self
                .pick_local_port(table, local.ip(), remote, |_| true)
                .ok_or(TcpError::NoFreePort)?;
            SocketAddr::new(local.ip(), port)
        } else {
            local
        };
        let tuple = FlowTuple {
            table,
            local,
            remote,
        };
        if self.flows.contains_key(&tuple) {
            return Err(TcpError::AddressInUse);
        }
        let iss = self.secret.isn(now, local, remote);
        let ts_offset = self.secret.ts_offset(local, remote);
        let conn = Connection::connect(tuple, iss, ts_offset, &self.config, &opts, now);
        let (index, generation) = self.conns.insert(Box::new(conn));
        self.flows.insert(tuple, Flow::Conn(index));
        self.counters.active_opens += 1;
        self.after_conn(index, generation, Outcome::Continue);
        Ok(handle(index, generation))
    }

    // Wire input.

    /// Feeds one TCP segment (header and payload) that arrived from `src` for `dst` in
    /// `table`.
    pub fn handle_segment(
        &mut self,
        now: Instant,
        table: u32,
        src: IpAddr,
        dst: IpAddr,
        segment: &[u8],
        checksum: ChecksumMode,
    ) {
        self.advance_clock(now);
        self.counters.segments_in += 1;
        if src.is_ipv4() != dst.is_ipv4() {
            self.counters.malformed += 1;
            return;
        }
        let verify = checksum == ChecksumMode::Verify;
        let seg = match parse(
            &IpAddress::from(src),
            &IpAddress::from(dst),
            segment,
            verify,
        ) {
            Ok(seg) => seg,
            Err(ParseError::BadChecksum) => {
                self.counters.bad_checksum += 1;
                return;
            }
            Err(ParseError::Malformed) => {
                self.counters.malformed += 1;
                return;
            }
        };
        let tuple = FlowTuple {
            table,
            local: SocketAddr::new(dst, seg.dst_port),
            remote: SocketAddr::new(src, seg.src_port),
        };
        match self.flows.get(&tuple).copied() {
            Some(Flow::Conn(index)) => {
                let (conns, mut ctx) = self.parts();
                let Some((conn, generation)) = conns.get_index_mut(index) else {
                    return;
                };
                let outcome = conn.on_segment(now, &seg, &mut ctx);
                self.after_conn(index, generation, outcome);
            }
            Some(Flow::Request(index)) => self.segment_to_request(now, index, tuple, &seg),
            Some(Flow::TimeWait(index)) => self.segment_to_time_wait(now, index, tuple, &seg),
            None => self.segment_to_listener(now, tuple, &seg, None),
        }
    }

    fn find_listener(&self, tuple: &FlowTuple) -> Option<u32> {
        self.listen_index
            .get(&(tuple.table, tuple.local))
            .or_else(|| self.listen_index.get(&(tuple.table, wildcard(tuple.local))))
            .copied()
    }

    fn segment_to_listener(
        &mut self,
        now: Instant,
        tuple: FlowTuple,
        seg: &Segment<'_>,
        isn: Option<SeqNum>,
    ) {
        if seg.rst {
            return;
        }
        let Some(index) = self.find_listener(&tuple) else {
            self.counters.no_listener += 1;
            self.reply_rst(now, &tuple, seg);
            return;
        };
        if seg.syn && seg.ack.is_none() {
            self.on_syn(now, index, tuple, seg, isn);
        } else if seg.ack.is_some() && !seg.syn {
            self.on_cookie_ack(now, index, tuple, seg);
        } else {
            self.reply_rst(now, &tuple, seg);
        }
    }

    fn on_syn(
        &mut self,
        now: Instant,
        index: u32,
        tuple: FlowTuple,
        seg: &Segment<'_>,
        isn: Option<SeqNum>,
    ) {
        let Some((listener, generation)) = self.listeners.get_index_mut(index) else {
            return;
        };
        let recv_limit = listener.recv_limit(&self.config);
        let negotiated = negotiate(&self.config, seg, tuple.local, recv_limit);
        let ts_offset = self.secret.ts_offset(tuple.local, tuple.remote);
        let recv_window = recv_limit.min(0xFFFF) as u16;
        if listener.syn_queue >= listener.opts.syn_backlog {
            listener.last_overflow = Some(now);
            let peer_mss = seg
                .mss
                .unwrap_or(if tuple.local.is_ipv6() { 1220 } else { 536 });
            let (cookie, _) =
                self.secret
                    .make_cookie(now, tuple.local, tuple.remote, seg.seq, peer_mss);
            let offer = SynAckOffer {
                negotiated,
                ts_offset,
                recv_window,
            };
            let header = cookie_synack(&tuple, seg, cookie, &offer, now, &self.config);
            self.counters.syn_cookies_sent += 1;
            self.push_reply(&tuple, header);
            return;
        }
        listener.syn_queue += 1;
        let iss = isn.unwrap_or_else(|| self.secret.isn(now, tuple.local, tuple.remote));
        let request = Request {
            tuple,
            listener: ListenerId { index, generation },
            iss,
            irs: seg.seq,
            negotiated,
            ts_recent: seg.timestamp.map_or(0, |t| t.0),
            ts_offset,
            recv_window,
            retries: 0,
            first_sent: now,
            timer: None,
        };
        let header = synack(&request, now, &self.config);
        let (rindex, rgen) = self.requests.insert(request);
        let timer = self.wheel.insert(
            now + self.config.initial_rto,
            TimerKey::Request(rindex, rgen),
        );
        if let Some(req) = self.requests.get_mut(rindex, rgen) {
            req.timer = Some(timer);
        }
        self.flows.insert(tuple, Flow::Request(rindex));
        self.push_reply(&tuple, header);
    }

    fn on_cookie_ack(&mut self, now: Instant, index: u32, tuple: FlowTuple, seg: &Segment<'_>) {
        let Some((listener, _)) = self.listeners.get_index(index) else {
            return;
        };
        let Some(ack) = seg.ack else {
            return;
        };
        if !listener.cookies_recent(now) {
            self.counters.no_listener += 1;
            self.reply_rst(now, &tuple, seg);
            return;
        }
        let iss = ack - 1;
        let irs = seg.seq - 1;
        let Some(mss) = self
            .secret
            .check_cookie(now, tuple.local, tuple.remote, irs, iss)
        else {
            self.counters.bad_cookies += 1;
            self.reply_rst(now, &tuple, seg);
            return;
        };
        let ipv6 = tuple.local.is_ipv6();
        let (peer_wscale, sack, ts_recent) = match seg.timestamp {
            Some((tsval, tsecr)) if self.config.timestamps => {
                let (ws, sack) = cookie_ts_options(tsecr);
                (ws, sack, Some(tsval))
            }
            _ => (None, false, None),
        };
        let window_scaling = peer_wscale.is_some() && self.config.window_scaling;
        let negotiated = Negotiated {
            mss: send_mss(self.config.mss(ipv6), Some(mss), ipv6),
            snd_wscale: if window_scaling {
                peer_wscale.unwrap_or(0)
            } else {
                0
            },
            rcv_wscale: if window_scaling {
                window_scale_for(listener.recv_limit(&self.config))
            } else {
                0
            },
            window_scaling,
            sack: sack && self.config.sack,
            timestamps: ts_recent.is_some(),
        };
        if listener.accept_queue_full() {
            self.counters.accept_queue_full += 1;
            return;
        }
        self.counters.syn_cookies_accepted += 1;
        let hs = Handshake {
            iss,
            irs,
            negotiated,
            ts_recent: ts_recent.unwrap_or(0),
            synack_sent: None,
        };
        self.promote(now, index, tuple, &hs, seg);
    }

    fn segment_to_request(
        &mut self,
        now: Instant,
        index: u32,
        tuple: FlowTuple,
        seg: &Segment<'_>,
    ) {
        let Some((req, rgen)) = self.requests.get_index(index) else {
            return;
        };
        if seg.rst {
            if seg.seq == req.irs + 1 {
                self.counters.rst_received += 1;
                self.drop_request(index, rgen);
            } else {
                self.counters.rst_ignored += 1;
            }
            return;
        }
        if seg.syn && seg.ack.is_none() {
            if seg.seq == req.irs {
                // The SYN-ACK was lost: send it again.
                let header = synack(req, now, &self.config);
                self.push_reply(&tuple, header);
            }
            return;
        }
        let Some(ack) = seg.ack else {
            return;
        };
        if seg.syn || ack != req.iss + 1 {
            self.counters.bad_ack += 1;
            self.reply_rst(now, &tuple, seg);
            return;
        }
        let window = u32::from(req.recv_window);
        if !seg.seq.within(req.irs + 1, req.irs + 1 + window.max(1)) {
            self.counters.out_of_window += 1;
            return;
        }
        if req.negotiated.timestamps {
            if let Some((tsval, _)) = seg.timestamp {
                if SeqNum::new(tsval).before(SeqNum::new(req.ts_recent)) {
                    self.counters.paws_rejected += 1;
                    return;
                }
            }
        }
        let listener = req.listener;
        let Some(l) = self.listeners.get(listener.index, listener.generation) else {
            self.drop_request(index, rgen);
            self.reply_rst(now, &tuple, seg);
            return;
        };
        if l.accept_queue_full() {
            // The peer retransmits; the entry stays until then or until it times out.
            self.counters.accept_queue_full += 1;
            return;
        }
        let hs = Handshake {
            iss: req.iss,
            irs: req.irs,
            negotiated: req.negotiated,
            ts_recent: seg.timestamp.map_or(req.ts_recent, |t| t.0),
            synack_sent: (req.retries == 0).then_some(req.first_sent),
        };
        self.drop_request(index, rgen);
        self.promote(now, listener.index, tuple, &hs, seg);
    }

    fn drop_request(&mut self, index: u32, generation: u32) {
        if let Some(req) = self.requests.remove(index, generation) {
            if let Some(timer) = req.timer {
                self.wheel.cancel(timer);
            }
            self.forget_flow(&req.tuple);
            if let Some(l) = self
                .listeners
                .get_mut(req.listener.index, req.listener.generation)
            {
                l.syn_queue = l.syn_queue.saturating_sub(1);
            }
        }
    }

    /// The handshake completed: a connection joins the listener's accept queue and the rest
    /// of the segment (data, FIN) is processed by it.
    fn promote(
        &mut self,
        now: Instant,
        listener: u32,
        tuple: FlowTuple,
        hs: &Handshake,
        seg: &Segment<'_>,
    ) {
        let Some((l, _)) = self.listeners.get_index_mut(listener) else {
            return;
        };
        let ts_offset = self.secret.ts_offset(tuple.local, tuple.remote);
        let conn = Connection::accepted(
            tuple,
            hs,
            ts_offset,
            seg.window,
            &self.config,
            &l.opts.conn,
            now,
        );
        let (index, generation) = self.conns.insert(Box::new(conn));
        self.flows.insert(tuple, Flow::Conn(index));
        let was_empty = l.accept_queue.is_empty();
        l.accept_queue.push_back(handle(index, generation));
        let (lindex, lgen) = (
            listener,
            self.listeners.get_index(listener).map_or(0, |x| x.1),
        );
        if was_empty {
            self.events.push_back(TcpEvent::AcceptReady {
                listener: ListenerId {
                    index: lindex,
                    generation: lgen,
                },
            });
        }
        self.counters.passive_opens += 1;
        let (conns, mut ctx) = self.parts();
        let outcome = match conns.get_mut(index, generation) {
            Some(conn) => conn.on_segment(now, seg, &mut ctx),
            None => Outcome::Continue,
        };
        self.after_conn(index, generation, outcome);
    }

    fn segment_to_time_wait(
        &mut self,
        now: Instant,
        index: u32,
        tuple: FlowTuple,
        seg: &Segment<'_>,
    ) {
        let Some((tw, generation)) = self.time_waits.get_index(index) else {
            return;
        };
        self.counters.time_wait_segments += 1;
        match tw.classify(seg) {
            TimeWaitAction::Drop => {}
            TimeWaitAction::Paws => {
                self.counters.paws_rejected += 1;
                self.time_wait_ack(now, index, generation, true);
            }
            TimeWaitAction::Ack { fin } => {
                if fin {
                    if let Some(tw) = self.time_waits.get_mut(index, generation) {
                        tw.timer = Some(self.wheel.reschedule(
                            tw.timer,
                            now + self.config.time_wait,
                            TimerKey::TimeWait(index, generation),
                        ));
                    }
                }
                self.time_wait_ack(now, index, generation, !fin);
            }
            TimeWaitAction::Reuse => {
                let isn = tw.snd_nxt + REUSE_ISN_GAP;
                self.drop_time_wait(index, generation);
                self.counters.time_wait_reused += 1;
                self.segment_to_listener(now, tuple, seg, Some(isn));
            }
        }
    }

    fn time_wait_ack(&mut self, now: Instant, index: u32, generation: u32, limited: bool) {
        let Some(tw) = self.time_waits.get(index, generation) else {
            return;
        };
        if limited {
            if !self.challenge.allow(now) {
                self.counters.challenge_acks_suppressed += 1;
                return;
            }
            self.counters.challenge_acks += 1;
        }
        let header = tw.ack(now);
        let tuple = tw.tuple;
        self.push_reply(&tuple, header);
    }

    fn drop_time_wait(&mut self, index: u32, generation: u32) {
        if let Some(tw) = self.time_waits.remove(index, generation) {
            if let Some(timer) = tw.timer {
                self.wheel.cancel(timer);
            }
            self.forget_flow(&tw.tuple);
        }
    }

    fn reply_rst(&mut self, now: Instant, tuple: &FlowTuple, seg: &Segment<'_>) {
        if seg.rst {
            return;
        }
        if !self.rst_limit.allow(now) {
            self.counters.rst_suppressed += 1;
            return;
        }
        let mut header = Header {
            src_port: tuple.local.port(),
            dst_port: tuple.remote.port(),
            rst: true,
            ..Header::default()
        };
        match seg.ack {
            Some(ack) => header.seq = ack,
            None => {
                header.seq = SeqNum::new(0);
                header.ack = Some(seg.seq + seg.seq_len());
            }
        }
        self.counters.rst_sent += 1;
        self.push_reply(tuple, header);
    }

    fn push_reply(&mut self, tuple: &FlowTuple, header: Header) {
        if self.replies.len() >= self.config.reply_queue {
            self.counters.reply_queue_full += 1;
            return;
        }
        self.replies.push_back(Reply {
            table: tuple.table,
            local: tuple.local.ip(),
            remote: tuple.remote.ip(),
            header,
        });
    }

    // Timers.

    /// The next instant `handle_timeout` has work (possibly early), if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    /// Runs every timer due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_clock(now);
        let mut fired = core::mem::take(&mut self.fired);
        self.wheel.advance(now, &mut fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn(index, generation) => {
                    let (conns, mut ctx) = self.parts();
                    let Some(conn) = conns.get_mut(index, generation) else {
                        continue;
                    };
                    conn.wheel_id = None;
                    conn.wheel_at = None;
                    let outcome = conn.on_timer(now, &mut ctx);
                    self.after_conn(index, generation, outcome);
                }
                TimerKey::Request(index, generation) => {
                    self.on_request_timer(now, index, generation)
                }
                TimerKey::TimeWait(index, generation) => {
                    if let Some(tw) = self.time_waits.get_mut(index, generation) {
                        tw.timer = None;
                    }
                    self.drop_time_wait(index, generation);
                }
            }
        }
        self.fired = fired;
    }

    fn on_request_timer(&mut self, now: Instant, index: u32, generation: u32) {
        let Some(req) = self.requests.get_mut(index, generation) else {
            return;
        };
        req.timer = None;
        if req.retries >= self.config.max_synack_retries {
            self.counters.half_open_timeouts += 1;
            self.drop_request(index, generation);
            return;
        }
        req.retries += 1;
        let backoff = self
            .config
            .initial_rto
            .total_micros()
            .saturating_mul(1 << req.retries.min(20));
        let wait = Duration::from_micros(backoff).min(self.config.rto_max);
        req.timer = Some(
            self.wheel
                .insert(now + wait, TimerKey::Request(index, generation)),
        );
        let header = synack(req, now, &self.config);
        let tuple = req.tuple;
        self.counters.synack_retransmits += 1;
        self.push_reply(&tuple, header);
    }

    // Output.

    /// Writes the next segment into `buf`. Call until `None`; never writes past `buf`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.advance_clock(now);
        if let Some(reply) = self.replies.front() {
            let src = IpAddress::from(reply.local);
            let dst = IpAddress::from(reply.remote);
            // A buffer too small for a bare header leaves the reply queued for the next call.
            let len = reply
                .header
                .emit(&src, &dst, buf, 0, |_| {}, self.config.tx_checksum)?;
            let transmit = Transmit {
                table: reply.table,
                src: reply.local,
                dst: reply.remote,
                len,
                segment_size: None,
            };
            self.replies.pop_front();
            self.counters.segments_out += 1;
            return Some(transmit);
        }
        let tso = self.config.max_tso_segments;
        while let Some(&(index, generation)) = self.ready.front() {
            self.ready.pop_front();
            let (conns, mut ctx) = self.parts();
            let Some(conn) = conns.get_mut(index, generation) else {
                continue;
            };
            let emitted = conn.poll_segment(now, &mut ctx, buf);
            let more = emitted.is_some() && conn.wants_to_send(tso);
            conn.in_ready = more;
            let (table, src, dst) = (conn.tuple.table, conn.local().ip(), conn.remote().ip());
            if more {
                self.ready.push_back((index, generation));
            }
            self.schedule(index, generation);
            if let Some(e) = emitted {
                self.counters.segments_out += 1;
                return Some(Transmit {
                    table,
                    src,
                    dst,
                    len: e.len,
                    segment_size: e.segment_size,
                });
            }
        }
        None
    }

    /// The next event for the application, in order.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<TcpEvent> {
        self.events.pop_front()
    }

    // Connection bookkeeping.

    /// The connection table and the engine state a connection call borrows, split so both
    /// can be used at once.
    fn parts(&mut self) -> (&mut Arena<Box<Connection>>, Ctx<'_>) {
        let ctx = Ctx {
            config: &self.config,
            pool: &mut self.pool,
            counters: &mut self.counters,
            challenge: &mut self.challenge,
        };
        (&mut self.conns, ctx)
    }

    fn schedule(&mut self, index: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(index, generation) else {
            return;
        };
        match conn.next_deadline() {
            None => {
                if let Some(id) = conn.wheel_id.take() {
                    self.wheel.cancel(id);
                }
                conn.wheel_at = None;
            }
            Some(at) => {
                // Later deadlines leave the entry where it is: it fires early and re-arms.
                if conn.wheel_at.is_none_or(|w| at < w) {
                    conn.wheel_id = Some(self.wheel.reschedule(
                        conn.wheel_id,
                        at,
                        TimerKey::Conn(index, generation),
                    ));
                    conn.wheel_at = Some(at);
                }
            }
        }
    }

    fn flush_events(&mut self, h: ConnHandle) {
        let Some(conn) = self.conns.get_mut(h.index, h.generation) else {
            return;
        };
        let bits = conn.take_events();
        for (bit, event) in [
            (EV_CONNECTED, TcpEvent::Connected { conn: h }),
            (EV_READABLE, TcpEvent::Readable { conn: h }),
            (EV_WRITABLE, TcpEvent::Writable { conn: h }),
            (EV_REMOTE_CLOSED, TcpEvent::RemoteClosed { conn: h }),
        ] {
            if bits & bit != 0 {
                self.events.push_back(event);
            }
        }
    }

    /// After anything touched a connection: act on the outcome, raise events, end or shrink
    /// it, re-arm its timer and put it on the ready list.
    fn after_conn(&mut self, index: u32, generation: u32, outcome: Outcome) {
        let h = handle(index, generation);
        match outcome {
            Outcome::Continue => {}
            Outcome::Reset(reason) => {
                self.flush_events(h);
                self.terminate(h, TcpEvent::Reset { conn: h, reason });
                return;
            }
            Outcome::ConnectFailed(reason) => {
                self.counters.connect_failed += 1;
                self.terminate(h, TcpEvent::ConnectFailed { conn: h, reason });
                return;
            }
            Outcome::RstReply(seq) => {
                if let Some(conn) = self.conns.get(index, generation) {
                    let tuple = conn.tuple;
                    let header = Header {
                        src_port: tuple.local.port(),
                        dst_port: tuple.remote.port(),
                        seq,
                        rst: true,
                        ..Header::default()
                    };
                    self.push_reply(&tuple, header);
                }
            }
        }
        self.flush_events(h);
        let Some(conn) = self.conns.get_mut(index, generation) else {
            return;
        };
        if conn.finished() {
            self.terminate(h, TcpEvent::Closed { conn: h });
            return;
        }
        if conn.ready_for_time_wait() {
            self.enter_time_wait(h);
            return;
        }
        if !conn.in_ready && conn.wants_to_send(self.config.max_tso_segments) {
            conn.in_ready = true;
            self.ready.push_back((index, generation));
        }
        self.schedule(index, generation);
    }

    fn remove_conn(&mut self, h: ConnHandle) -> Option<Box<Connection>> {
        let mut conn = self.conns.remove(h.index, h.generation)?;
        self.forget_flow(&conn.tuple);
        if let Some(id) = conn.wheel_id.take() {
            self.wheel.cancel(id);
        }
        conn.release(&mut self.pool);
        Some(conn)
    }

    fn terminate(&mut self, h: ConnHandle, event: TcpEvent) {
        if let Some(conn) = self.remove_conn(h) {
            if conn.accepted {
                self.events.push_back(event);
            } else {
                self.counters.reset_before_accept += 1;
            }
        }
    }

    fn enter_time_wait(&mut self, h: ConnHandle) {
        let Some(conn) = self.remove_conn(h) else {
            return;
        };
        let (snd_nxt, rcv_nxt, ts, window) = conn.time_wait_fields();
        let tuple = conn.tuple;
        let (index, generation) = self.time_waits.insert(TimeWait {
            tuple,
            snd_nxt,
            rcv_nxt,
            ts,
            window,
            timer: None,
        });
        let timer = self.wheel.insert(
            self.now + self.config.time_wait,
            TimerKey::TimeWait(index, generation),
        );
        if let Some(tw) = self.time_waits.get_mut(index, generation) {
            tw.timer = Some(timer);
        }
        self.flows.insert(tuple, Flow::TimeWait(index));
        if conn.accepted {
            self.events.push_back(TcpEvent::Closed { conn: h });
        }
    }

    fn with_conn<R>(
        &mut self,
        h: ConnHandle,
        f: impl FnOnce(&mut Connection, &mut Ctx<'_>, Instant) -> R,
    ) -> Result<R, TcpError> {
        let now = self.now;
        let (conns, mut ctx) = self.parts();
        let Some(conn) = conns.get_mut(h.index, h.generation) else {
            ctx.counters.stale_handle += 1;
            return Err(TcpError::StaleHandle);
        };
        let result = f(conn, &mut ctx, now);
        self.after_conn(h.index, h.generation, Outcome::Continue);
        Ok(result)
    }

    // Application commands.

    /// Copies as much of `data` as fits into the send buffer; returns the bytes taken. A short
    /// count arms a `Writable` event for when space reopens.
    pub fn send(&mut self, conn: ConnHandle, data: &[u8]) -> Result<usize, TcpError> {
        self.with_conn(conn, |c, ctx, now| {
            let n = c.send(data, ctx.pool)?;
            c.arm_persist_if_blocked(now);
            Ok(n)
        })?
    }

    /// Arms a `Writable` event for when send space next reopens, as a short `send` does: for
    /// a caller that offered less than it had because the buffer was full.
    pub fn want_writable(&mut self, conn: ConnHandle) -> Result<(), TcpError> {
        self.with_conn(conn, |c, _, _| c.want_writable())
    }

    /// Free space in the send buffer (0 once closed).
    pub fn send_space(&self, conn: ConnHandle) -> Result<usize, TcpError> {
        self.conns
            .get(conn.index, conn.generation)
            .map(|c| c.send_space())
            .ok_or(TcpError::StaleHandle)
    }

    /// Copies readable bytes into `buf`; returns how many (0: nothing now, or end of stream
    /// after `RemoteClosed`).
    pub fn recv(&mut self, conn: ConnHandle, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.with_conn(conn, |c, ctx, now| c.recv(buf, now, ctx.pool))
    }

    /// Offers readable bytes in place, a contiguous slice at a time; `f` returns how many it
    /// consumed (fewer than offered stops the walk).
    pub fn recv_with(
        &mut self,
        conn: ConnHandle,
        f: impl FnMut(&[u8]) -> usize,
    ) -> Result<usize, TcpError> {
        self.with_conn(conn, |c, ctx, now| c.recv_with(f, now, ctx.pool))
    }

    /// Readable bytes.
    pub fn recv_available(&self, conn: ConnHandle) -> Result<usize, TcpError> {
        self.conns
            .get(conn.index, conn.generation)
            .map(|c| c.recv_available())
            .ok_or(TcpError::StaleHandle)
    }

    /// Closes our direction: a FIN follows the queued data. Reading stays allowed until
    /// `Closed`. Closing a connection still in SYN-SENT ends it at once.
    pub fn close(&mut self, conn: ConnHandle) -> Result<(), TcpError> {
        let immediate = self.with_conn(conn, |c, _, _| c.close())?;
        if immediate {
            self.terminate(conn, TcpEvent::Closed { conn });
        }
        Ok(())
    }

    /// Resets the connection (RST to the peer) and ends it; `Closed` follows.
    pub fn abort(&mut self, conn: ConnHandle) -> Result<(), TcpError> {
        if self.conns.get(conn.index, conn.generation).is_none() {
            self.counters.stale_handle += 1;
            return Err(TcpError::StaleHandle);
        }
        self.abort_inner(conn, true);
        Ok(())
    }

    fn abort_inner(&mut self, conn: ConnHandle, event: bool) {
        let Some(c) = self.conns.get(conn.index, conn.generation) else {
            return;
        };
        if !matches!(c.state.public(), crate::info::TcpState::SynSent) {
            let (seq, ack) = c.abort_fields();
            let tuple = c.tuple;
            let header = Header {
                src_port: tuple.local.port(),
                dst_port: tuple.remote.port(),
                seq,
                ack,
                rst: true,
                ..Header::default()
            };
            self.push_reply(&tuple, header);
        }
        self.counters.aborts += 1;
        if event {
            self.terminate(conn, TcpEvent::Closed { conn });
        } else {
            self.remove_conn(conn);
        }
    }

    /// Turns Nagle's algorithm off (`true`) or on.
    pub fn set_nodelay(&mut self, conn: ConnHandle, nodelay: bool) -> Result<(), TcpError> {
        self.with_conn(conn, |c, _, _| c.set_nodelay(nodelay))
    }

    /// Enables (`Some`) or disables keepalive probing.
    pub fn set_keepalive(
        &mut self,
        conn: ConnHandle,
        keepalive: Option<KeepaliveConfig>,
    ) -> Result<(), TcpError> {
        if let Some(k) = &keepalive {
            crate::config::validate_keepalive(k)?;
        }
        self.with_conn(conn, |c, _, now| c.set_keepalive(keepalive, now))
    }

    /// A snapshot of the connection, or `None` for a stale handle.
    pub fn info(&self, conn: ConnHandle) -> Option<ConnInfo> {
        self.conns
            .get(conn.index, conn.generation)
            .map(|c| c.info())
    }

    /// Checks internal invariants of every connection; panics on a violation. For tests
    /// and fuzzing, not for production paths (it visits every connection).
    #[doc(hidden)]
    pub fn debug_check_invariants(&self) {
        for (_, _, conn) in self.conns.iter() {
            conn.check_invariants();
        }
        for (index, generation, conn) in self.conns.iter() {
            assert_eq!(
                self.flows.get(&conn.tuple),
                Some(&Flow::Conn(index)),
                "{generation}"
            );
        }
        let chunks: usize = self.conns.iter().map(|(_, _, c)| c.chunk_count()).sum();
        assert_eq!(
            chunks,
            self.pool.in_use(),
            "every chunk in use belongs to a connection"
        );
        assert_eq!(
            self.flows.len(),
            self.conns.len() + self.requests.len() + self.time_waits.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_costs_well_under_two_kilobytes() {
        let conn = core::mem::size_of::<Connection>();
        let slot = core::mem::size_of::<Option<Box<Connection>>>() + 4;
        let flow = core::mem::size_of::<(FlowTuple, Flow)>() + 1;
        let total = conn + slot + flow;
        assert!(
            total < 1024,
            "connection {conn} + slot {slot} + flow entry {flow} = {total}"
        );
    }

    #[test]
    fn a_time_wait_entry_is_small() {
        let entry = core::mem::size_of::<TimeWait>() + core::mem::size_of::<(FlowTuple, Flow)>();
        assert!(entry <= 256, "{entry}");
    }
}
