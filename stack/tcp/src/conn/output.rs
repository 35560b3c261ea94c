//! Choosing and writing the next segment: handshake, loss repair, new data (with Nagle and
//! sender-side silly window avoidance), probes, and pure ACKs, in that order.

use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

use super::{Connection, Ctx, RtxTimer, State, ts_clock};
use crate::config::TxChecksum;
use crate::rack::probe_timeout;
use crate::segment::Header;

/// A segment written into the caller's buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Emitted {
    pub(crate) len: usize,
    /// Payload per segment when the device must split a TSO burst.
    pub(crate) segment_size: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    /// SYN, or SYN-ACK in a simultaneous open.
    Syn,
    /// Scoreboard record to send again.
    Retransmit(usize),
    NewData {
        len: u32,
        fin: bool,
    },
    /// SEG.SEQ = SND.UNA − 1, no data: a zero-window or keepalive probe.
    Probe,
    Ack,
}

impl Connection {
    /// Whether `poll_segment` would produce something now.
    pub(crate) fn wants_to_send(&mut self, tso: u16) -> bool {
        self.plan(u32::from(tso)).is_some()
    }

    fn plan(&mut self, tso: u32) -> Option<Plan> {
        match self.state {
            State::SynSent(_) => return self.pending.syn.then_some(Plan::Syn),
            State::SynReceived(_) => {
                if self.pending.syn {
                    return Some(Plan::Syn);
                }
                return self.ack.now.then_some(Plan::Ack);
            }
            State::Closed | State::TimeWait => return self.ack.now.then_some(Plan::Ack),
            _ => {}
        }
        let mss = self.payload_mss();
        if self.scoreboard.has_lost_to_send() {
            if let Some(i) = self.scoreboard.next_lost() {
                let pipe = self.pipe();
                if pipe + mss <= self.cc.cwnd() || pipe == 0 || self.pending.recovery_kick {
                    return Some(Plan::Retransmit(i));
                }
            }
        }
        if self.pending.tail_loss_probe {
            if let Some(plan) = self.new_data(mss, 1, true) {
                return Some(plan);
            }
            if !self.scoreboard.is_empty() {
                return Some(Plan::Retransmit(self.scoreboard.len() - 1));
            }
            self.pending.tail_loss_probe = false;
        }
        if let Some(plan) = self.new_data(mss, tso.max(1), false) {
            return Some(plan);
        }
        if self.pending.probe {
            return Some(Plan::Probe);
        }
        self.ack.now.then_some(Plan::Ack)
    }

    /// Bytes presumed in the network.
    fn pipe(&self) -> u32 {
        self.scoreboard.pipe().saturating_sub(self.dupack_credit)
    }

    /// Unsent bytes in the send buffer.
    pub(crate) fn unsent(&self) -> u32 {
        if self.fin_sent {
            return 0;
        }
        let sent = self.snd_nxt.distance_from(self.snd_una);
        (self.send.len() as u32).saturating_sub(sent)
    }

    fn new_data(&self, mss: u32, tso: u32, probing: bool) -> Option<Plan> {
        if self.fin_sent || !self.state.sends_data() {
            return None;
        }
        let unsent = self.unsent();
        if unsent == 0 {
            // A FIN takes no window (it is sent once everything before it is out).
            return self
                .fin_queued
                .then_some(Plan::NewData { len: 0, fin: true });
        }
        let wnd_left = (self.snd_una + self.snd_wnd).distance_from(self.snd_nxt);
        let cwnd_left = if probing {
            u32::MAX
        } else {
            self.cc.cwnd().saturating_sub(self.pipe())
        };
        let burst = mss.saturating_mul(tso);
        let mut len = unsent.min(wnd_left).min(cwnd_left).min(burst);
        if len == 0 {
            return None;
        }
        let idle = self.scoreboard.is_empty();
        let nagle_ok = self.nodelay || idle || self.fin_queued || probing;
        if len < mss {
            if len < unsent {
                // Cut short by a window: send a runt only if the receiver's window is small
                // for good (RFC 9293 §3.8.6.2.1) or nothing else would move.
                let by_window = wnd_left <= cwnd_left;
                if !(by_window && (2 * len >= self.max_snd_wnd || idle)) {
                    return None;
                }
            } else if !nagle_ok {
                return None;
            }
        } else if len > mss && len % mss != 0 && (len < unsent || !nagle_ok) {
            len -= len % mss;
        }
        Some(Plan::NewData {
            len,
            fin: self.fin_queued && len == unsent,
        })
    }

    /// The window free buffer space allows, in bytes, rounded to the scale.
    pub(crate) fn window_possible(&self) -> u32 {
        let shift = self.opts.rcv_wscale;
        let free = (self.rcv.free() as u64).min(0xFFFF_u64 << shift) as u32;
        (free >> shift) << shift
    }

    /// Window to advertise, scaled, never moving the right edge left (RFC 9293 §3.8.6.2.2).
    fn advertise(&mut self) -> u16 {
        let shift = self.opts.rcv_wscale;
        let nxt = self.rcv.nxt();
        let mut wnd = self.window_possible();
        if (nxt + wnd).before(self.rcv_adv) {
            wnd = self.rcv_adv.distance_from(nxt);
        }
        self.rcv_adv = nxt + wnd;
        (wnd >> shift).min(0xFFFF) as u16
    }

    fn header(&mut self, now: Instant) -> Header {
        let mut h = Header {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq: self.snd_nxt,
            ack: Some(self.rcv.nxt()),
            window: self.advertise(),
            ..Header::default()
        };
        if self.opts.timestamps {
            h.timestamp = Some((ts_clock(now, self.ts.offset), self.ts.recent));
        }
        if self.opts.sack {
            let dsack = self.ack.dsack.take();
            if dsack.is_some() || self.rcv.has_out_of_order() {
                let blocks = self.rcv.sack_blocks();
                h.sack = match dsack {
                    // RFC 2883 §4: the duplicate first, then the usual blocks.
                    Some(d) => [Some(d), blocks[0], blocks[1]],
                    None => blocks,
                };
            }
        }
        h
    }

    /// Writes the next segment into `buf`, if any.
    pub(crate) fn poll_segment(
        &mut self,
        now: Instant,
        ctx: &mut Ctx<'_>,
        buf: &mut [u8],
    ) -> Option<Emitted> {
        if self.scoreboard.is_empty() && self.last_send.is_some_and(|at| now - at > self.rtt.rto())
        {
            self.cc.on_idle_restart(self.payload_mss());
            self.last_send = None;
        }
        let plan = self.plan(u32::from(ctx.config.max_tso_segments))?;
        let src = IpAddress::from(self.tuple.local.ip());
        let dst = IpAddress::from(self.tuple.remote.ip());
        let mut h = self.header(now);
        let mut segment_size = None;
        let len = match plan {
            Plan::Syn => self.emit_syn(now, ctx, &mut h, &src, &dst, buf)?,
            Plan::Ack | Plan::Probe => {
                if let Plan::Probe = plan {
                    h.seq = self.snd_una - 1;
                }
                let len = h.emit(&src, &dst, buf, 0, |_| {}, ctx.config.tx_checksum)?;
                self.pending.probe = false;
                len
            }
            Plan::Retransmit(i) => {
                let room = Self::room(&h, buf.len())?.min(self.per_segment(&h));
                if room == 0 {
                    return None;
                }
                self.scoreboard.limit_len(i, room);
                let rec = *self.scoreboard.get(i)?;
                let fin = rec.has_fin();
                let data = rec.end.distance_from(rec.start) - u32::from(fin);
                let offset = rec.start.distance_from(self.snd_una) as usize;
                h.seq = rec.start;
                h.fin = fin;
                h.psh = fin;
                let csum = ctx.config.tx_checksum;
                let len = self.emit_data(&h, (&src, &dst), buf, offset, data, csum)?;
                self.scoreboard.on_retransmit(i, now);
                self.pending.recovery_kick = false;
                self.on_any_data_sent(now, data.max(1));
                ctx.counters.retransmits += 1;
                ctx.counters.bytes_out += u64::from(data);
                self.retransmits += 1;
                if self.pending.tail_loss_probe {
                    self.pending.tail_loss_probe = false;
                    self.tlp_was_retransmit = true;
                    self.tlp_end = Some(self.snd_nxt);
                }
                len
            }
            Plan::NewData { len, fin } => {
                let per_segment = self.per_segment(&h);
                let tso = u32::from(ctx.config.max_tso_segments.max(1));
                let cap = Self::room(&h, buf.len())?.min(per_segment.saturating_mul(tso));
                let mut data = len.min(cap);
                if data < len && data > per_segment {
                    data -= data % per_segment;
                }
                let fin = fin && data == len;
                if data == 0 && !fin {
                    return None;
                }
                let offset = self.snd_nxt.distance_from(self.snd_una) as usize;
                h.seq = self.snd_nxt;
                h.fin = fin;
                h.psh = offset + data as usize == self.send.len();
                let csum = ctx.config.tx_checksum;
                let out = self.emit_data(&h, (&src, &dst), buf, offset, data, csum)?;
                if data > per_segment {
                    segment_size = Some(per_segment as u16);
                }
                self.on_new_data_sent(now, data, per_segment, fin);
                self.on_any_data_sent(now, data + u32::from(fin));
                ctx.counters.bytes_out += u64::from(data);
                out
            }
        };
        self.after_any_send(ctx);
        Some(Emitted { len, segment_size })
    }

    /// Writes `h` with `data` bytes of the send buffer from `offset` into `buf`.
    fn emit_data(
        &self,
        h: &Header,
        (src, dst): (&IpAddress, &IpAddress),
        buf: &mut [u8],
        offset: usize,
        data: u32,
        csum: TxChecksum,
    ) -> Option<usize> {
        let send = &self.send;
        h.emit(
            src,
            dst,
            buf,
            data as usize,
            |p| send.read_at(offset, p),
            csum,
        )
    }

    /// Payload that fits one MTU-sized segment with header `h` (options eat into the MSS).
    fn per_segment(&self, h: &Header) -> u32 {
        (u32::from(self.opts.mss) + 20)
            .saturating_sub(h.len() as u32)
            .max(1)
    }

    /// Payload that fits in a buffer of `buf_len` bytes after header `h`.
    fn room(h: &Header, buf_len: usize) -> Option<u32> {
        let room = buf_len.checked_sub(h.len())?;
        Some(room.min(u32::MAX as usize) as u32)
    }

    fn emit_syn(
        &mut self,
        now: Instant,
        ctx: &mut Ctx<'_>,
        h: &mut Header,
        src: &IpAddress,
        dst: &IpAddress,
        buf: &mut [u8],
    ) -> Option<usize> {
        let ipv6 = self.tuple.local.is_ipv6();
        let tsval = ts_clock(now, self.ts.offset);
        h.syn = true;
        h.seq = self.iss;
        h.sack = [None; 3];
        h.mss = Some(ctx.config.mss(ipv6));
        h.window = self.rcv.free().min(0xFFFF) as u16;
        match &mut self.state {
            State::SynSent(hs) => {
                h.ack = None;
                h.window_scale = ctx.config.window_scaling.then_some(self.opts.rcv_wscale);
                h.sack_permitted = ctx.config.sack;
                h.timestamp = ctx.config.timestamps.then_some((tsval, 0));
                if hs.first_sent.is_none() {
                    hs.first_sent = Some(now);
                }
            }
            _ => {
                h.window_scale = self.opts.window_scaling.then_some(self.opts.rcv_wscale);
                h.sack_permitted = self.opts.sack;
                h.timestamp = self.opts.timestamps.then_some((tsval, self.ts.recent));
            }
        }
        let len = h.emit(src, dst, buf, 0, |_| {}, ctx.config.tx_checksum)?;
        self.pending.syn = false;
        Some(len)
    }

    fn on_new_data_sent(&mut self, now: Instant, data: u32, per_segment: u32, fin: bool) {
        let mut start = self.snd_nxt;
        let mut left = data;
        while left > per_segment {
            self.scoreboard
                .on_sent(start, start + per_segment, now, false);
            start += per_segment;
            left -= per_segment;
        }
        let end = start + left + u32::from(fin);
        self.scoreboard.on_sent(start, end, now, fin);
        self.snd_nxt = end;
        if fin {
            self.fin_sent = true;
        }
        if self.pending.tail_loss_probe {
            self.pending.tail_loss_probe = false;
            self.tlp_was_retransmit = false;
            self.tlp_end = Some(self.snd_nxt);
        }
        match self.rtx_timer {
            None | Some((_, RtxTimer::Persist)) | Some((_, RtxTimer::TailLossProbe)) => {
                self.arm_probe_or_rto(now);
            }
            _ => {}
        }
    }

    fn on_any_data_sent(&mut self, now: Instant, bytes: u32) {
        self.last_send = Some(now);
        if let Some(prr) = &mut self.prr {
            prr.on_sent(bytes);
        }
    }

    fn after_any_send(&mut self, ctx: &mut Ctx<'_>) {
        if self.ack.window_update {
            ctx.counters.window_updates += 1;
        }
        self.ack.dup_owed = self.ack.dup_owed.saturating_sub(1);
        self.ack.now = self.ack.dup_owed > 0;
        self.ack.window_update = false;
        self.ack.unacked_bytes = 0;
        self.ack.last_sent = self.rcv.nxt();
        self.delack_at = None;
    }

    /// A tail loss probe may be scheduled (RFC 8985 §7.2) unless recovery or another probe
    /// is under way.
    fn tlp_allowed(&self) -> bool {
        self.recovery.is_none() && self.tlp_end.is_none() && !self.pending.tail_loss_probe
    }

    pub(crate) fn arm_probe_or_rto(&mut self, now: Instant) {
        let rto = self.rtt.rto();
        self.rtx_timer = if self.tlp_allowed() {
            let pto = probe_timeout(self.rtt.srtt(), self.scoreboard.len(), rto);
            Some((now + pto, RtxTimer::TailLossProbe))
        } else {
            Some((now + rto, RtxTimer::Rto))
        };
    }
}
