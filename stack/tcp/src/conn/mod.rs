//! One connection's transmission control block and the RFC 9293 state machine.
//!
//! The connection is sans-IO like the rest of the engine: the endpoint feeds it parsed
//! segments ([`Connection::on_segment`], in `input`), timer expiries ([`Connection::on_timer`],
//! in `timer`) and application commands (here), and pulls segments from it
//! ([`Connection::poll_segment`], in `output`). What it decides to tell the application is left
//! in a small event bit set the endpoint turns into [`crate::TcpEvent`]s; how it ended is the
//! [`Outcome`] of the call.
//!
//! The state is an enum whose handshake variants carry their own retry counts; the send and
//! receive halves, RTT estimator, congestion window, SACK scoreboard and RACK state are the
//! separate modules of this crate, composed here.

mod input;
mod output;
mod timer;

use core::net::SocketAddr;

use smoltcp::time::{Duration, Instant};

use crate::buffer::{ChunkPool, SendBuffer};
use crate::config::{ConnOptions, KeepaliveConfig, TcpConfig};
use crate::congestion::{Congestion, Prr};
use crate::counters::TcpCounters;
use crate::event::{ConnectFailure, ResetReason};
use crate::info::{ConnInfo, FlowTuple, TcpState};
use crate::rack::Rack;
use crate::ratelimit::RateLimiter;
use crate::reassembly::RecvBuffer;
use crate::rtt::RttEstimator;
use crate::scoreboard::Scoreboard;
use crate::seqnum::SeqNum;
use crate::wheel::TimerId;

/// Event bits a connection raises for the application.
pub(crate) const EV_CONNECTED: u8 = 1;
pub(crate) const EV_READABLE: u8 = 2;
pub(crate) const EV_WRITABLE: u8 = 4;
pub(crate) const EV_REMOTE_CLOSED: u8 = 8;

/// Segments acknowledged at once at the start of a connection (Linux's quick-ACK mode).
const QUICKACK_SEGMENTS: u8 = 16;
/// The default MSS when the peer sends no MSS option (RFC 9293 §3.7.1).
const DEFAULT_MSS_V4: u16 = 536;
const DEFAULT_MSS_V6: u16 = 1220;
/// RFC 7323 §5.5: a TS.Recent older than this may be stale and is not used for PAWS.
const PAWS_IDLE: Duration = Duration::from_secs(24 * 24 * 3600);

/// Handshake state: the only per-state data the machine keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handshaking {
    /// SYN (or SYN-ACK) retransmissions so far.
    pub(crate) retries: u8,
    /// When the first SYN went out, for an RTT sample if it is never retransmitted.
    pub(crate) first_sent: Option<Instant>,
}

/// RFC 9293 states of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    SynSent(Handshaking),
    /// Only reached by a simultaneous open; passive opens live as listener requests instead.
    SynReceived(Handshaking),
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
    Closed,
}

impl State {
    pub(crate) fn public(self) -> TcpState {
        match self {
            State::SynSent(_) => TcpState::SynSent,
            State::SynReceived(_) => TcpState::SynReceived,
            State::Established => TcpState::Established,
            State::FinWait1 => TcpState::FinWait1,
            State::FinWait2 => TcpState::FinWait2,
            State::Closing => TcpState::Closing,
            State::TimeWait => TcpState::TimeWait,
            State::CloseWait => TcpState::CloseWait,
            State::LastAck => TcpState::LastAck,
            State::Closed => TcpState::Closed,
        }
    }

    /// States in which the peer may still send us data.
    fn receives_data(self) -> bool {
        matches!(self, State::Established | State::FinWait1 | State::FinWait2)
    }

    /// States in which we may still send data.
    fn sends_data(self) -> bool {
        matches!(
            self,
            State::Established | State::CloseWait | State::FinWait1 | State::LastAck
        )
    }
}

/// How a call left the connection, for the endpoint to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Continue,
    Reset(ResetReason),
    ConnectFailed(ConnectFailure),
    /// Answer with a RST carrying this sequence number (an unacceptable ACK while
    /// handshaking, RFC 9293 §3.10.7.3).
    RstReply(SeqNum),
}

/// Which job the retransmission timer is doing (one timer slot, as in Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RtxTimer {
    /// SYN or SYN-ACK retransmission.
    Handshake,
    Rto,
    TailLossProbe,
    /// RACK waits out the reordering window of the oldest suspect.
    Reorder,
    /// Zero-window probe.
    Persist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoveryKind {
    /// SACK/RACK or dupack-triggered fast recovery.
    Fast,
    /// After a retransmission timeout; `tsval` is ours at the timeout, for spurious detection.
    Timeout { tsval: Option<u32> },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovery {
    /// RFC 6675 RecoveryPoint (HighData at entry).
    pub(crate) point: SeqNum,
    pub(crate) kind: RecoveryKind,
}

/// Negotiated options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    /// Largest payload before options (min of ours and the peer's MSS).
    pub(crate) mss: u16,
    pub(crate) snd_wscale: u8,
    pub(crate) rcv_wscale: u8,
    /// Both sides sent the window scale option.
    pub(crate) window_scaling: bool,
    pub(crate) sack: bool,
    pub(crate) timestamps: bool,
}

/// What a passive open (half-open entry or cookie) hands to the new connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handshake {
    pub(crate) iss: SeqNum,
    pub(crate) irs: SeqNum,
    pub(crate) negotiated: Negotiated,
    pub(crate) ts_recent: u32,
    /// When the SYN-ACK was first sent, if it was never retransmitted (an RTT sample).
    pub(crate) synack_sent: Option<Instant>,
}

/// Per-flow timestamp clock and TS.Recent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timestamps {
    pub(crate) offset: u32,
    pub(crate) recent: u32,
    pub(crate) recent_at: Instant,
}

/// Timestamp clock in milliseconds plus the flow's offset.
pub(crate) fn ts_clock(now: Instant, offset: u32) -> u32 {
    (now.total_millis().max(0) as u32).wrapping_add(offset)
}

/// Smallest window-scale shift that lets `buffer` be advertised.
pub(crate) fn window_scale_for(buffer: u32) -> u8 {
    let mut shift = 0u8;
    while shift < 14 && (buffer >> shift) > 0xFFFF {
        shift += 1;
    }
    shift
}

/// The MSS to use when the peer offers `peer` (or nothing).
pub(crate) fn send_mss(ours: u16, peer: Option<u16>, ipv6: bool) -> u16 {
    let default = if ipv6 { DEFAULT_MSS_V6 } else { DEFAULT_MSS_V4 };
    ours.min(peer.unwrap_or(default)).max(64)
}

/// Where a new connection starts.
struct Start {
    tuple: FlowTuple,
    state: State,
    iss: SeqNum,
    irs: SeqNum,
    opts: Negotiated,
    ts: Timestamps,
}

/// Borrowed engine state a connection call needs.
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a TcpConfig,
    pub(crate) pool: &'a mut ChunkPool,
    pub(crate) counters: &'a mut TcpCounters,
    pub(crate) challenge: &'a mut RateLimiter,
}

/// Receive-side acknowledgement bookkeeping.
#[derive(Debug, Clone, Copy, Default)]
struct AckState {
    /// Send an ACK at the next opportunity.
    now: bool,
    /// In-order bytes received since our last ACK.
    unacked_bytes: u32,
    /// Remaining segments to acknowledge immediately.
    quick: u8,
    /// Largest payload seen from the peer (its MSS, as far as we know).
    rcv_mss: u16,
    /// RCV.NXT carried by our last ACK (RFC 7323's Last.ACK.sent).
    last_sent: SeqNum,
    /// The pending ACK is a window update after a read.
    window_update: bool,
    /// A duplicate range to report first in the next ACK (D-SACK, RFC 2883).
    dsack: Option<(SeqNum, SeqNum)>,
    /// Duplicate ACKs still owed for out-of-order segments that arrived in one batch: a peer
    /// without SACK counts them (RFC 5681 §4.2).
    dup_owed: u8,
}

/// Pending one-off transmissions.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    syn: bool,
    /// Probe with SEG.SEQ = SND.UNA − 1 (zero window or keepalive).
    probe: bool,
    tail_loss_probe: bool,
    /// Entering fast recovery retransmits the first lost segment whatever the pipe says
    /// (RFC 6675 §5 step 4.3).
    recovery_kick: bool,
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) tuple: FlowTuple,
    pub(crate) state: State,
    // Send half.
    iss: SeqNum,
    snd_una: SeqNum,
    snd_nxt: SeqNum,
    snd_wnd: u32,
    snd_wl1: SeqNum,
    snd_wl2: SeqNum,
    max_snd_wnd: u32,
    send: SendBuffer,
    /// The application closed its side; a FIN follows the queued data.
    fin_queued: bool,
    fin_sent: bool,
    // Receive half.
    irs: SeqNum,
    rcv: RecvBuffer,
    /// Right edge of the window we advertised last (never moves left).
    rcv_adv: SeqNum,
    /// Sequence number of the peer's FIN, once seen (it may be ahead of a hole).
    peer_fin: Option<SeqNum>,
    fin_received: bool,
    ack: AckState,
    // Options.
    opts: Negotiated,
    ts: Timestamps,
    // Loss recovery and congestion control.
    scoreboard: Scoreboard,
    rack: Rack,
    rtt: RttEstimator,
    cc: Congestion,
    recovery: Option<Recovery>,
    /// Rate reduction state while in fast recovery.
    prr: Option<Prr>,
    /// Last time new data or a retransmission went out (for the idle restart).
    last_send: Option<Instant>,
    /// SND.NXT when a tail loss probe went out, until an ACK passes it.
    tlp_end: Option<SeqNum>,
    tlp_was_retransmit: bool,
    dupacks: u8,
    /// Without SACK, each duplicate ACK in recovery means a segment left the network; this
    /// is taken off the pipe (the RFC 6582 window inflation, kept out of cwnd).
    dupack_credit: u32,
    reorder_wait: Option<Duration>,
    /// Consecutive retransmission timeouts.
    rto_count: u8,
    // Timers.
    rtx_timer: Option<(Instant, RtxTimer)>,
    delack_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    /// When FIN-WAIT-2 gives up on the peer's FIN.
    fin_wait2_at: Option<Instant>,
    pub(crate) wheel_id: Option<TimerId>,
    pub(crate) wheel_at: Option<Instant>,
    last_recv: Instant,
    /// Unanswered zero-window or keepalive probes.
    probes: u8,
    /// Zero-window probes since the window closed: the persist timer's backoff. Answers do
    /// not reset it (they still show a zero window), a reopened window does.
    persist_backoff: u8,
    pending: Pending,
    // Application side.
    nodelay: bool,
    keepalive: Option<KeepaliveConfig>,
    events: u8,
    read_armed: bool,
    write_armed: bool,
    /// Passive connections raise no events until accepted.
    pub(crate) accepted: bool,
    pub(crate) in_ready: bool,
    // Statistics.
    retransmits: u64,
    sack_blocks_received: u64,
}

impl Connection {
    fn base(start: Start, config: &TcpConfig, conn_opts: &ConnOptions, now: Instant) -> Self {
        let Start {
            tuple,
            state,
            iss,
            irs,
            opts,
            ts,
        } = start;
        let send_limit = conn_opts.send_buffer.unwrap_or(config.send_buffer) as usize;
        let recv_limit = conn_opts.recv_buffer.unwrap_or(config.recv_buffer) as usize;
        let rcv = RecvBuffer::new(irs + 1, recv_limit);
        let rcv_adv = rcv.nxt() + rcv.free().min(0xFFFF) as u32;
        let payload_mss = u32::from(opts.mss);
        Self {
            tuple,
            state,
            iss,
            snd_una: iss,
            snd_nxt: iss + 1,
            snd_wnd: 0,
            snd_wl1: irs,
            snd_wl2: iss,
            max_snd_wnd: 0,
            send: SendBuffer::new(send_limit),
            fin_queued: false,
            fin_sent: false,
            irs,
            rcv,
            rcv_adv,
            peer_fin: None,
            fin_received: false,
            ack: AckState {
                quick: QUICKACK_SEGMENTS,
                rcv_mss: opts.mss.min(DEFAULT_MSS_V4),
                last_sent: irs + 1,
                ..AckState::default()
            },
            opts,
            ts,
            scoreboard: Scoreboard::default(),
            rack: Rack::default(),
            rtt: RttEstimator::new(config.initial_rto, config.rto_min, config.rto_max),
            cc: Congestion::new(config.congestion, payload_mss),
            recovery: None,
            prr: None,
            last_send: None,
            tlp_end: None,
            tlp_was_retransmit: false,
            dupacks: 0,
            dupack_credit: 0,
            reorder_wait: None,
            rto_count: 0,
            rtx_timer: None,
            delack_at: None,
            keepalive_at: None,
            fin_wait2_at: None,
            wheel_id: None,
            wheel_at: None,
            last_recv: now,
            probes: 0,
            persist_backoff: 0,
            pending: Pending::default(),
            nodelay: conn_opts.nodelay,
            keepalive: conn_opts.keepalive.or(config.keepalive),
            events: 0,
            read_armed: true,
            write_armed: false,
            accepted: true,
            in_ready: false,
            retransmits: 0,
            sack_blocks_received: 0,
        }
    }

    /// An active open: SYN-SENT with the SYN pending.
    pub(crate) fn connect(
        tuple: FlowTuple,
        iss: SeqNum,
        ts_offset: u32,
        config: &TcpConfig,
        conn_opts: &ConnOptions,
        now: Instant,
    ) -> Self {
        let ipv6 = tuple.local.is_ipv6();
        let recv_limit = conn_opts.recv_buffer.unwrap_or(config.recv_buffer);
        let opts = Negotiated {
            mss: config.mss(ipv6),
            snd_wscale: 0,
            rcv_wscale: if config.window_scaling {
                window_scale_for(recv_limit)
            } else {
                0
            },
            window_scaling: config.window_scaling,
            sack: config.sack,
            timestamps: config.timestamps,
        };
        let ts = Timestamps {
            offset: ts_offset,
            recent: 0,
            recent_at: now,
        };
        let start = Start {
            tuple,
            state: State::SynSent(Handshaking {
                retries: 0,
                first_sent: None,
            }),
            iss,
            irs: SeqNum::new(0),
            opts,
            ts,
        };
        let mut conn = Self::base(start, config, conn_opts, now);
        conn.accepted = true;
        conn.pending.syn = true;
        conn.rtx_timer = Some((now + conn.rtt.rto(), RtxTimer::Handshake));
        conn
    }

    /// A passive open completed by the final ACK (or a valid cookie): ESTABLISHED.
    pub(crate) fn accepted(
        tuple: FlowTuple,
        hs: &Handshake,
        ts_offset: u32,
        peer_window: u16,
        config: &TcpConfig,
        conn_opts: &ConnOptions,
        now: Instant,
    ) -> Self {
        let ts = Timestamps {
            offset: ts_offset,
            recent: hs.ts_recent,
            recent_at: now,
        };
        let start = Start {
            tuple,
            state: State::Established,
            iss: hs.iss,
            irs: hs.irs,
            opts: hs.negotiated,
            ts,
        };
        let mut conn = Self::base(start, config, conn_opts, now);
        conn.snd_una = hs.iss + 1;
        conn.snd_wnd = u32::from(peer_window) << hs.negotiated.snd_wscale;
        conn.max_snd_wnd = conn.snd_wnd;
        conn.snd_wl1 = hs.irs + 1;
        conn.snd_wl2 = hs.iss + 1;
        conn.accepted = false;
        if let Some(sent) = hs.synack_sent {
            conn.rtt.on_sample(now - sent);
        }
        conn.arm_keepalive(now);
        conn
    }

    pub(crate) fn take_events(&mut self) -> u8 {
        if !self.accepted {
            return 0;
        }
        core::mem::take(&mut self.events)
    }

    /// Level-triggered view for a connection the application just accepted.
    pub(crate) fn on_accept(&mut self) {
        self.accepted = true;
        self.events = 0;
        if self.rcv.len() > 0 {
            self.events |= EV_READABLE;
            self.read_armed = false;
        }
        if self.fin_received {
            self.events |= EV_REMOTE_CLOSED;
        }
    }

    pub(crate) fn local(&self) -> SocketAddr {
        self.tuple.local
    }

    pub(crate) fn remote(&self) -> SocketAddr {
        self.tuple.remote
    }

    /// Bytes of payload per segment after options we always send.
    fn payload_mss(&self) -> u32 {
        let ts = if self.opts.timestamps { 12 } else { 0 };
        u32::from(self.opts.mss).saturating_sub(ts).max(1)
    }

    // Application commands.

    /// Queues data; returns how much was taken.
    pub(crate) fn send(
        &mut self,
        data: &[u8],
        pool: &mut ChunkPool,
    ) -> Result<usize, crate::TcpError> {
        if self.fin_queued || !(self.state.sends_data() || self.is_handshaking()) {
            return Err(crate::TcpError::Closing);
        }
        let n = self.send.write(data, pool);
        if n < data.len() {
            self.write_armed = true;
        }
        Ok(n)
    }

    pub(crate) fn want_writable(&mut self) {
        self.write_armed = true;
    }

    pub(crate) fn send_space(&self) -> usize {
        if self.fin_queued || !(self.state.sends_data() || self.is_handshaking()) {
            0
        } else {
            self.send.space()
        }
    }

    fn is_handshaking(&self) -> bool {
        matches!(self.state, State::SynSent(_) | State::SynReceived(_))
    }

    pub(crate) fn recv(&mut self, out: &mut [u8], now: Instant, pool: &mut ChunkPool) -> usize {
        let n = self.rcv.read(out, pool);
        self.after_read(now);
        n
    }

    pub(crate) fn recv_with(
        &mut self,
        f: impl FnMut(&[u8]) -> usize,
        now: Instant,
        pool: &mut ChunkPool,
    ) -> usize {
        let n = self.rcv.read_with(f, pool);
        self.after_read(now);
        n
    }

    pub(crate) fn recv_available(&self) -> usize {
        self.rcv.len()
    }

    /// Re-arms the readable edge and sends a window update if the window opened enough
    /// (receiver-side silly window avoidance, RFC 9293 §3.8.6.2.2).
    fn after_read(&mut self, _now: Instant) {
        self.read_armed = true;
        if !self.state.receives_data() {
            return;
        }
        // As Linux: only when the advertised window had fallen to half the buffer or less
        // and at least doubles; a reader keeping up sends no extra segments.
        let advertised = self.rcv_adv.distance_from(self.rcv.nxt());
        let possible = self.window_possible();
        let mss = u32::from(self.ack.rcv_mss.max(1));
        let clamp = (self.rcv.limit() as u32).min(0xFFFF << self.opts.rcv_wscale);
        if 2 * advertised <= clamp && possible >= 2 * advertised && possible - advertised >= mss {
            self.ack.now = true;
            self.ack.window_update = true;
        }
    }

    /// Closes our sending side: FIN after the queued data.
    pub(crate) fn close(&mut self) -> bool {
        match self.state {
            State::SynSent(_) => return true,
            // Still handshaking: the FIN waits for ESTABLISHED (see `establish`).
            State::SynReceived(_) => {}
            State::Established => self.state = State::FinWait1,
            State::CloseWait => self.state = State::LastAck,
            _ => {}
        }
        self.fin_queued = true;
        false
    }

    pub(crate) fn set_nodelay(&mut self, nodelay: bool) {
        self.nodelay = nodelay;
    }

    pub(crate) fn set_keepalive(&mut self, keepalive: Option<KeepaliveConfig>, now: Instant) {
        self.keepalive = keepalive;
        self.keepalive_at = None;
        self.arm_keepalive(now);
    }

    /// The RST that aborts this connection: SEQ = SND.NXT, acknowledging what we received.
    pub(crate) fn abort_fields(&self) -> (SeqNum, Option<SeqNum>) {
        match self.state {
            State::SynSent(_) => (self.snd_nxt, None),
            _ => (self.snd_nxt, Some(self.rcv.nxt())),
        }
    }

    /// Done with: both directions closed and the application read everything.
    pub(crate) fn finished(&self) -> bool {
        matches!(self.state, State::Closed) && self.rcv.len() == 0
    }

    /// In TIME-WAIT with nothing left to read: ready to shrink into a TIME-WAIT entry.
    pub(crate) fn ready_for_time_wait(&self) -> bool {
        matches!(self.state, State::TimeWait) && self.rcv.len() == 0
    }

    /// What a TIME-WAIT entry needs to answer for this connection.
    pub(crate) fn time_wait_fields(&self) -> (SeqNum, SeqNum, Option<Timestamps>, u16) {
        let ts = self.opts.timestamps.then_some(self.ts);
        let window =
            (self.rcv.free().min(0xFFFF << self.opts.rcv_wscale) >> self.opts.rcv_wscale) as u16;
        (self.snd_nxt, self.rcv.nxt(), ts, window)
    }

    pub(crate) fn release(&mut self, pool: &mut ChunkPool) {
        self.send.release(pool);
        self.rcv.release(pool);
        self.scoreboard.clear();
    }

    pub(crate) fn info(&self) -> ConnInfo {
        ConnInfo {
            state: self.state.public(),
            tuple: self.tuple,
            cwnd: self.cc.cwnd(),
            ssthresh: self.cc.ssthresh(),
            srtt: self.rtt.srtt(),
            rttvar: self.rtt.rttvar(),
            min_rtt: self.rtt.min_rtt(),
            rto: self.rtt.rto(),
            bytes_in_flight: self.scoreboard.pipe(),
            bytes_unacked: self.scoreboard.outstanding(),
            retransmits: self.retransmits,
            sack_blocks_received: self.sack_blocks_received,
            snd_wnd: self.snd_wnd,
            rcv_wnd: self.rcv_adv.distance_from(self.rcv.nxt()),
            mss: self.payload_mss() as u16,
            snd_wscale: self.opts.snd_wscale,
            rcv_wscale: self.opts.rcv_wscale,
            timestamps: self.opts.timestamps,
            sack: self.opts.sack,
            in_recovery: self.recovery.is_some(),
            send_queued: self.send.len(),
            recv_queued: self.rcv.len(),
            iss: self.iss.get(),
            irs: self.irs.get(),
        }
    }

    /// Buffer chunks held, for memory accounting in tests.
    pub(crate) fn chunk_count(&self) -> usize {
        self.send.chunk_count() + self.rcv.chunk_count()
    }

    /// Checks the invariants a fuzzer should never break.
    pub(crate) fn check_invariants(&self) {
        assert!(
            self.snd_una.before_eq(self.snd_nxt),
            "snd_una after snd_nxt"
        );
        if !self.is_handshaking() {
            let in_flight = self.snd_nxt.distance_from(self.snd_una);
            assert_eq!(
                in_flight,
                self.scoreboard.outstanding(),
                "scoreboard covers SND.UNA..SND.NXT"
            );
            let fin = u32::from(
                self.fin_sent && self.scoreboard.outstanding() > 0 && self.fin_in_flight(),
            );
            assert!(
                in_flight - fin <= self.send.len() as u32,
                "unacked data is buffered"
            );
        }
        assert!(self.send.len() <= self.send.limit());
        assert!(self.rcv.len() <= self.rcv.limit());
        assert!(self.scoreboard.pipe() <= self.scoreboard.outstanding());
        self.scoreboard.check_invariants();
        assert!(self.rcv_adv.after_eq(self.rcv.nxt()) || self.fin_received);
    }

    fn fin_in_flight(&self) -> bool {
        self.scoreboard.last().is_some_and(|s| s.has_fin())
    }
}
