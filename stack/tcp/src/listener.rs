//! Listeners and their half-open ("request") entries.
//!
//! A SYN to a listener creates a lightweight request: just what the SYN-ACK and the final ACK
//! need (sequence numbers and negotiated options), no buffers. The final ACK promotes it to a
//! full connection on the accept queue. When the SYN queue is full the listener answers with
//! a SYN cookie instead and keeps nothing. Both queues are bounded by the listener's options.

use std::collections::VecDeque;

use core::net::SocketAddr;

use smoltcp::time::{Duration, Instant};

use crate::config::{ListenOptions, TcpConfig};
use crate::conn::{Negotiated, send_mss, ts_clock, window_scale_for};
use crate::cookie::cookie_tsval;
use crate::event::{ConnHandle, ListenerId};
use crate::info::FlowTuple;
use crate::segment::{Header, Segment};
use crate::seqnum::SeqNum;
use crate::wheel::TimerId;

/// Cookies are checked only this long after the SYN queue last overflowed (two cookie
/// counter ticks), so ACKs to a listener that never sent cookies are simply answered by RST.
pub(crate) const COOKIE_WINDOW: Duration = Duration::from_secs(128);

#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) table: u32,
    pub(crate) local: SocketAddr,
    pub(crate) opts: ListenOptions,
    /// Live half-open entries.
    pub(crate) syn_queue: u32,
    pub(crate) accept_queue: VecDeque<ConnHandle>,
    pub(crate) last_overflow: Option<Instant>,
}

impl Listener {
    pub(crate) fn new(table: u32, local: SocketAddr, opts: ListenOptions) -> Self {
        Self {
            table,
            local,
            opts,
            syn_queue: 0,
            accept_queue: VecDeque::new(),
            last_overflow: None,
        }
    }

    pub(crate) fn recv_limit(&self, config: &TcpConfig) -> u32 {
        self.opts.conn.recv_buffer.unwrap_or(config.recv_buffer)
    }

    pub(crate) fn accept_queue_full(&self) -> bool {
        self.accept_queue.len() >= self.opts.accept_backlog as usize
    }

    pub(crate) fn cookies_recent(&self, now: Instant) -> bool {
        self.last_overflow
            .is_some_and(|at| now - at <= COOKIE_WINDOW)
    }
}

/// A SYN-RECEIVED entry.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) tuple: FlowTuple,
    pub(crate) listener: ListenerId,
    pub(crate) iss: SeqNum,
    pub(crate) irs: SeqNum,
    pub(crate) negotiated: Negotiated,
    pub(crate) ts_recent: u32,
    pub(crate) ts_offset: u32,
    pub(crate) recv_window: u16,
    pub(crate) retries: u8,
    pub(crate) first_sent: Instant,
    pub(crate) timer: Option<TimerId>,
}

/// Options agreed from a SYN, given our configuration and receive buffer.
pub(crate) fn negotiate(
    config: &TcpConfig,
    seg: &Segment<'_>,
    local: SocketAddr,
    recv_limit: u32,
) -> Negotiated {
    let ipv6 = local.is_ipv6();
    let window_scaling = config.window_scaling && seg.window_scale.is_some();
    Negotiated {
        mss: send_mss(config.mss(ipv6), seg.mss, ipv6),
        snd_wscale: if window_scaling {
            seg.window_scale.unwrap_or(0).min(14)
        } else {
            0
        },
        rcv_wscale: if window_scaling {
            window_scale_for(recv_limit)
        } else {
            0
        },
        window_scaling,
        sack: config.sack && seg.sack_permitted,
        timestamps: config.timestamps && seg.timestamp.is_some(),
    }
}

/// The SYN-ACK of a SYN-RECEIVED entry.
pub(crate) fn synack(req: &Request, now: Instant, config: &TcpConfig) -> Header {
    let n = &req.negotiated;
    Header {
        src_port: req.tuple.local.port(),
        dst_port: req.tuple.remote.port(),
        seq: req.iss,
        ack: Some(req.irs + 1),
        syn: true,
        window: req.recv_window,
        mss: Some(config.mss(req.tuple.local.is_ipv6())),
        window_scale: n.window_scaling.then_some(n.rcv_wscale),
        sack_permitted: n.sack,
        timestamp: n
            .timestamps
            .then(|| (ts_clock(now, req.ts_offset), req.ts_recent)),
        ..Header::default()
    }
}

/// What a SYN-ACK offers besides its sequence numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SynAckOffer {
    pub(crate) negotiated: Negotiated,
    pub(crate) ts_offset: u32,
    pub(crate) recv_window: u16,
}

/// The SYN-ACK that carries a cookie: window scale and SACK are offered only when the
/// timestamp can carry them back (RFC 4987 §3.6).
pub(crate) fn cookie_synack(
    tuple: &FlowTuple,
    seg: &Segment<'_>,
    cookie: SeqNum,
    offer: &SynAckOffer,
    now: Instant,
    config: &TcpConfig,
) -> Header {
    let SynAckOffer {
        negotiated,
        ts_offset,
        recv_window,
    } = offer;
    let (ts_offset, recv_window) = (*ts_offset, *recv_window);
    let mut h = Header {
        src_port: tuple.local.port(),
        dst_port: tuple.remote.port(),
        seq: cookie,
        ack: Some(seg.seq + 1),
        syn: true,
        window: recv_window,
        mss: Some(config.mss(tuple.local.is_ipv6())),
        ..Header::default()
    };
    if let (true, Some((tsval, _))) = (negotiated.timestamps, seg.timestamp) {
        let peer_wscale = negotiated.window_scaling.then_some(negotiated.snd_wscale);
        let ours = cookie_tsval(ts_clock(now, ts_offset), peer_wscale, negotiated.sack);
        h.timestamp = Some((ours, tsval));
        h.window_scale = negotiated.window_scaling.then_some(negotiated.rcv_wscale);
        h.sack_permitted = negotiated.sack;
    }
    h
}
