//! Segment arrival (RFC 9293 §3.10.7) with the RFC 5961, RFC 7323 and RFC 6675 checks.

use smoltcp::time::Instant;

use super::{
    Connection, Ctx, EV_CONNECTED, EV_READABLE, EV_REMOTE_CLOSED, EV_WRITABLE, Handshaking,
    Outcome, PAWS_IDLE, Recovery, RecoveryKind, RtxTimer, State, send_mss,
};
use crate::congestion::{Congestion, Prr};
use crate::event::{ConnectFailure, ResetReason};
use crate::reassembly::RecvBuffer;
use crate::scoreboard::Delivery;
use crate::segment::Segment;
use crate::seqnum::SeqNum;

impl Connection {
    /// Processes one segment addressed to this connection.
    pub(crate) fn on_segment(
        &mut self,
        now: Instant,
        seg: &Segment<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        match self.state {
            State::SynSent(hs) => self.on_syn_sent(now, seg, hs, ctx),
            _ => self.on_synchronized(now, seg, ctx),
        }
    }

    fn on_syn_sent(
        &mut self,
        now: Instant,
        seg: &Segment<'_>,
        hs: Handshaking,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        let ack_ok = match seg.ack {
            Some(ack) => {
                if ack.before_eq(self.iss) || ack.after(self.snd_nxt) {
                    ctx.counters.bad_ack += 1;
                    return if seg.rst {
                        Outcome::Continue
                    } else {
                        Outcome::RstReply(ack)
                    };
                }
                true
            }
            None => false,
        };
        if seg.rst {
            if ack_ok {
                ctx.counters.rst_received += 1;
                return Outcome::ConnectFailed(ConnectFailure::Refused);
            }
            ctx.counters.rst_ignored += 1;
            return Outcome::Continue;
        }
        if !seg.syn {
            return Outcome::Continue;
        }
        self.irs = seg.seq;
        self.rcv = RecvBuffer::new(seg.seq + 1, self.rcv.limit());
        self.ack.last_sent = self.rcv.nxt();
        let ipv6 = self.tuple.local.is_ipv6();
        self.opts.mss = send_mss(self.opts.mss, seg.mss, ipv6);
        match seg.window_scale {
            Some(shift) if ctx.config.window_scaling => self.opts.snd_wscale = shift.min(14),
            _ => {
                self.opts.snd_wscale = 0;
                self.opts.rcv_wscale = 0;
                self.opts.window_scaling = false;
            }
        }
        self.opts.sack = ctx.config.sack && seg.sack_permitted;
        match seg.timestamp {
            Some((tsval, _)) if ctx.config.timestamps => {
                self.opts.timestamps = true;
                self.ts.recent = tsval;
                self.ts.recent_at = now;
            }
            _ => self.opts.timestamps = false,
        }
        self.rcv_adv = self.rcv.nxt() + self.rcv.free().min(0xFFFF) as u32;
        self.cc = Congestion::new(ctx.config.congestion, self.payload_mss());
        self.ack.rcv_mss = self.opts.mss.min(536);
        self.snd_wnd = u32::from(seg.window);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = seg.ack.unwrap_or(self.iss);
        match seg.ack {
            Some(ack) => {
                if hs.retries == 0 {
                    if let Some(sent) = hs.first_sent {
                        self.rtt.on_sample(now - sent);
                    }
                }
                self.snd_una = ack;
                self.snd_wl2 = ack;
                self.establish(now);
                self.ack.now = true;
            }
            None => {
                // Simultaneous open (RFC 9293 §3.5, figure 8): answer with SYN-ACK.
                self.state = State::SynReceived(Handshaking {
                    retries: 0,
                    first_sent: None,
                });
                self.pending.syn = true;
                self.rtx_timer = Some((now + self.rtt.rto(), RtxTimer::Handshake));
            }
        }
        Outcome::Continue
    }

    fn establish(&mut self, now: Instant) {
        self.state = if self.fin_queued {
            State::FinWait1
        } else {
            State::Established
        };
        self.events |= EV_CONNECTED;
        self.rtx_timer = None;
        self.rtt.reset_backoff();
        self.arm_keepalive(now);
    }

    /// RFC 9293's acceptability test against the window we advertised.
    fn acceptable(&self, seg: &Segment<'_>) -> bool {
        let nxt = self.rcv.nxt();
        let wnd = self.rcv_adv.distance_from(nxt);
        let len = seg.seq_len();
        let end = nxt + wnd;
        match (len, wnd) {
            (0, 0) => seg.seq == nxt,
            (0, _) => seg.seq.within(nxt, end),
            (_, 0) => false,
            _ => seg.seq.within(nxt, end) || (seg.seq + (len - 1)).within(nxt, end),
        }
    }

    /// An ACK that an attacker cannot use to learn or shift state: rate-limited across the
    /// endpoint (RFC 5961 §7).
    pub(crate) fn challenge_ack(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if ctx.challenge.allow(now) {
            ctx.counters.challenge_acks += 1;
            self.ack.now = true;
        } else {
            ctx.counters.challenge_acks_suppressed += 1;
        }
    }

    fn on_synchronized(&mut self, now: Instant, seg: &Segment<'_>, ctx: &mut Ctx<'_>) -> Outcome {
        // A simultaneous open's SYN-ACK, or the peer's retransmitted SYN.
        if let State::SynReceived(_) = self.state {
            if seg.syn && !seg.rst && seg.seq == self.irs {
                match seg.ack {
                    Some(ack) if ack == self.snd_nxt => {
                        self.snd_una = ack;
                        self.snd_wnd = u32::from(seg.window);
                        self.max_snd_wnd = self.snd_wnd;
                        self.snd_wl1 = seg.seq;
                        self.snd_wl2 = ack;
                        self.establish(now);
                        self.ack.now = true;
                    }
                    _ => self.pending.syn = true,
                }
                return Outcome::Continue;
            }
        }
        // PAWS (RFC 7323 §5.3).
        if self.opts.timestamps && !seg.rst {
            if let Some((tsval, _)) = seg.timestamp {
                let stale = SeqNum::new(tsval).before(SeqNum::new(self.ts.recent));
                if stale && now - self.ts.recent_at < PAWS_IDLE {
                    ctx.counters.paws_rejected += 1;
                    self.challenge_ack(now, ctx);
                    return Outcome::Continue;
                }
            }
        }
        if !self.acceptable(seg) {
            if seg.rst {
                ctx.counters.rst_ignored += 1;
                return Outcome::Continue;
            }
            ctx.counters.out_of_window += 1;
            if (seg.seq + seg.seq_len()).before_eq(self.rcv.nxt()) {
                // An old duplicate: our ACK was lost or their timer fired; answer at once,
                // telling a SACK peer which bytes it sent twice.
                self.ack.now = true;
                if self.opts.sack && !seg.payload.is_empty() {
                    self.ack.dsack = Some((seg.seq, seg.seq + seg.payload.len() as u32));
                }
            } else {
                self.challenge_ack(now, ctx);
            }
            return Outcome::Continue;
        }
        self.last_recv = now;
        self.probes = 0;
        // RFC 5961 §3: only an exact RST resets; an in-window one earns a challenge ACK.
        if seg.rst {
            if seg.seq == self.rcv.nxt() {
                ctx.counters.rst_received += 1;
                return match self.state {
                    State::SynReceived(_) => Outcome::ConnectFailed(ConnectFailure::Reset),
                    _ => Outcome::Reset(ResetReason::Peer),
                };
            }
            self.challenge_ack(now, ctx);
            return Outcome::Continue;
        }
        // RFC 5961 §4: any SYN in a synchronized state gets a challenge ACK.
        if seg.syn {
            self.challenge_ack(now, ctx);
            return Outcome::Continue;
        }
        let Some(ack) = seg.ack else {
            ctx.counters.missing_ack += 1;
            return Outcome::Continue;
        };
        // RFC 7323 §4.3: TS.Recent follows the segment that starts at or before Last.ACK.sent.
        if self.opts.timestamps {
            if let Some((tsval, _)) = seg.timestamp {
                if seg.seq.before_eq(self.ack.last_sent)
                    && SeqNum::new(tsval).after_eq(SeqNum::new(self.ts.recent))
                {
                    self.ts.recent = tsval;
                    self.ts.recent_at = now;
                }
            }
        }
        if let State::SynReceived(_) = self.state {
            if ack.after(self.snd_una) && ack.before_eq(self.snd_nxt) {
                self.snd_una = ack;
                self.establish(now);
            } else {
                return Outcome::RstReply(ack);
            }
        }
        if !self.on_ack(now, seg, ack, ctx) {
            return Outcome::Continue;
        }
        if !seg.payload.is_empty() && self.state.receives_data() {
            self.on_data(now, seg, ctx);
        }
        if seg.fin && self.state.receives_data() && self.peer_fin.is_none() {
            self.peer_fin = Some(seg.seq + seg.payload.len() as u32);
        }
        self.try_accept_fin(now, ctx);
        self.arm_keepalive(now);
        Outcome::Continue
    }

    fn on_data(&mut self, now: Instant, seg: &Segment<'_>, ctx: &mut Ctx<'_>) {
        let nxt = self.rcv.nxt();
        if self.opts.sack && seg.seq.before(nxt) {
            // The part below RCV.NXT arrived before: report it as a D-SACK block.
            let end = (seg.seq + seg.payload.len() as u32).earliest(nxt);
            self.ack.dsack = Some((seg.seq, end));
        }
        let got = self.rcv.insert(seg.seq, seg.payload, ctx.pool);
        self.ack.rcv_mss = self.ack.rcv_mss.max(seg.payload.len().min(0xFFFF) as u16);
        if got.advanced > 0 {
            ctx.counters.bytes_in += got.advanced as u64;
            if self.read_armed {
                self.events |= EV_READABLE;
                self.read_armed = false;
            }
        }
        if got.out_of_order {
            ctx.counters.out_of_order += 1;
        }
        if got.out_of_order || got.filled_hole || got.duplicate {
            // Duplicate ACKs with SACK blocks drive the sender's recovery (RFC 5681 §4.2).
            self.ack.now = true;
            if got.out_of_order && !self.opts.sack {
                self.ack.dup_owed = (self.ack.dup_owed + 1).min(3);
            }
            return;
        }
        self.ack.unacked_bytes += got.advanced as u32;
        let full = u32::from(self.ack.rcv_mss.max(1));
        if self.ack.quick > 0 {
            self.ack.quick -= 1;
            self.ack.now = true;
        } else if self.ack.unacked_bytes >= 2 * full
            || ctx.config.delayed_ack == smoltcp::time::Duration::ZERO
        {
            self.ack.now = true;
        } else if self.delack_at.is_none() {
            self.delack_at = Some(now + ctx.config.delayed_ack);
        }
    }

    fn try_accept_fin(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        let Some(fin) = self.peer_fin else {
            return;
        };
        if self.fin_received || fin != self.rcv.nxt() {
            return;
        }
        self.rcv.accept_fin();
        self.fin_received = true;
        self.ack.now = true;
        self.events |= EV_REMOTE_CLOSED;
        self.state = match self.state {
            State::Established => State::CloseWait,
            State::FinWait1 if self.our_fin_acked() => self.enter_time_wait(now, ctx),
            State::FinWait1 => State::Closing,
            State::FinWait2 => self.enter_time_wait(now, ctx),
            other => other,
        };
    }

    fn enter_time_wait(&mut self, _now: Instant, ctx: &mut Ctx<'_>) -> State {
        ctx.counters.time_wait_entered += 1;
        self.rtx_timer = None;
        self.fin_wait2_at = None;
        self.keepalive_at = None;
        State::TimeWait
    }

    fn our_fin_acked(&self) -> bool {
        self.fin_sent && self.snd_una == self.snd_nxt
    }

    /// Processes the ACK field; false means drop the rest of the segment.
    fn on_ack(&mut self, now: Instant, seg: &Segment<'_>, ack: SeqNum, ctx: &mut Ctx<'_>) -> bool {
        if ack.after(self.snd_nxt) {
            // RFC 9293: an ACK for data not yet sent is answered and dropped.
            ctx.counters.bad_ack += 1;
            self.challenge_ack(now, ctx);
            return false;
        }
        if ack.before(self.snd_una - self.max_snd_wnd.max(1)) {
            // RFC 5961 §5.2: too old to be real; blind data injection is refused here.
            ctx.counters.bad_ack += 1;
            self.challenge_ack(now, ctx);
            return false;
        }
        let window = u32::from(seg.window) << self.opts.snd_wscale;
        let old_wnd = self.snd_wnd;
        if self.snd_wl1.before(seg.seq) || (self.snd_wl1 == seg.seq && self.snd_wl2.before_eq(ack))
        {
            self.snd_wnd = window;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = ack;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            if old_wnd == 0 && window > 0 {
                self.probes = 0;
                self.persist_backoff = 0;
                if self.rtx_timer.is_some_and(|t| t.1 == RtxTimer::Persist) {
                    self.rtx_timer = None;
                }
            }
        }
        let outstanding_before = self.scoreboard.outstanding();
        let cwnd_limited = {
            let cwnd = self.cc.cwnd();
            let mss = self.payload_mss();
            outstanding_before + mss >= cwnd
                || (self.cc.in_slow_start() && 2 * outstanding_before >= cwnd)
        };
        let min_rtt = self.rtt.min_rtt();
        let advanced = ack.after(self.snd_una);
        let mut delivery = Delivery::default();
        if advanced {
            let space_before = self.send.space();
            delivery = self.scoreboard.on_ack(ack, now, min_rtt);
            let seq_acked = ack.distance_from(self.snd_una);
            let data_acked = seq_acked - u32::from(delivery.fin_acked);
            self.send.ack(data_acked as usize, ctx.pool);
            self.snd_una = ack;
            self.rto_count = 0;
            self.dupacks = 0;
            self.dupack_credit = 0;
            if self.write_armed && self.send.space() > space_before && self.send_space() > 0 {
                self.events |= EV_WRITABLE;
                self.write_armed = false;
            }
            if self.tlp_end.is_some_and(|end| ack.after_eq(end)) {
                self.tlp_end = None;
                if self.tlp_was_retransmit && self.recovery.is_none() {
                    // RFC 8985 §7.4: the probe repaired a real tail loss; react once.
                    self.cc.on_congestion_event(now, self.payload_mss());
                }
            }
        }
        if self.opts.sack {
            for (start, end) in seg.sack.iter().flatten() {
                self.sack_blocks_received += 1;
                if start.before(ack) {
                    // D-SACK (RFC 2883): something arrived twice; nothing new to mark.
                    ctx.counters.dsacks_received += 1;
                    continue;
                }
                self.scoreboard
                    .on_sack(*start, *end, now, min_rtt, &mut delivery);
            }
        }
        if let Some(sample) = delivery.rtt_sample {
            self.rtt.on_sample(sample);
        } else if advanced {
            self.rtt.reset_backoff();
        }
        if let Some((sent_at, end)) = delivery.newest {
            self.rack.on_delivered(sent_at, end, now);
        }
        if delivery.reordered {
            self.rack.on_reordering();
        }
        if advanced {
            self.check_spurious_timeout(seg, ctx);
        }
        // Without SACK: three duplicate ACKs, then NewReno partial ACKs (RFC 6582).
        if !self.opts.sack && outstanding_before > 0 {
            let duplicate = !advanced && seg.payload.is_empty() && !seg.fin && window == old_wnd;
            if duplicate {
                self.dupacks = self.dupacks.saturating_add(1);
                if self.recovery.is_some() {
                    self.dupack_credit = self.dupack_credit.saturating_add(self.payload_mss());
                }
                if self.dupacks == 3 {
                    let lost = self.scoreboard.mark_first_lost();
                    ctx.counters.sack_lost_bytes += u64::from(lost);
                }
            } else if advanced
                && matches!(self.recovery, Some(r) if r.kind == RecoveryKind::Fast && ack.before(r.point))
            {
                let lost = self.scoreboard.mark_first_lost();
                ctx.counters.sack_lost_bytes += u64::from(lost);
            }
        }
        self.detect_losses(now, ctx);
        if let Some(recovery) = self.recovery {
            if ack.after_eq(recovery.point) {
                self.recovery = None;
                if self.prr.take().is_some() {
                    // RFC 6937: leave recovery at ssthresh.
                    self.cc.set_cwnd(self.cc.ssthresh());
                }
            }
        }
        let mss = self.payload_mss();
        if let Some(prr) = &mut self.prr {
            // Without SACK a duplicate ACK stands for one delivered segment.
            let credit = if !self.opts.sack && !advanced { mss } else { 0 };
            let pipe = self.scoreboard.pipe().saturating_sub(self.dupack_credit);
            let cwnd = prr.on_ack(delivery.bytes + credit, pipe, self.cc.ssthresh(), mss);
            self.cc.set_cwnd(cwnd);
        }
        let grows = match self.recovery {
            None => true,
            Some(r) => matches!(r.kind, RecoveryKind::Timeout { .. }),
        };
        if grows && delivery.bytes > 0 {
            let srtt = self.rtt.srtt();
            self.cc
                .on_ack(now, delivery.bytes, self.payload_mss(), srtt, cwnd_limited);
        }
        if self.fin_sent && ack == self.snd_nxt {
            match self.state {
                State::FinWait1 => {
                    self.state = State::FinWait2;
                    self.fin_wait2_at = Some(now + ctx.config.fin_wait2_timeout);
                }
                State::Closing => self.state = self.enter_time_wait(now, ctx),
                State::LastAck => {
                    self.state = State::Closed;
                    self.rtx_timer = None;
                    self.keepalive_at = None;
                }
                _ => {}
            }
        }
        if advanced || self.reorder_wait.is_some() {
            self.rearm_retransmit(now);
        }
        true
    }

    /// Eifel-style detection (RFC 3522 idea, via timestamps): after a timeout, an ACK echoing
    /// a TSval from before the timeout acknowledges the original transmission.
    fn check_spurious_timeout(&mut self, seg: &Segment<'_>, ctx: &mut Ctx<'_>) {
        let Some(Recovery {
            kind: RecoveryKind::Timeout { tsval: Some(at) },
            ..
        }) = self.recovery
        else {
            return;
        };
        let Some((_, tsecr)) = seg.timestamp else {
            return;
        };
        if SeqNum::new(tsecr).before(SeqNum::new(at)) && self.cc.undo() {
            ctx.counters.spurious_retransmits += 1;
            self.scoreboard.clear_lost();
            self.recovery = None;
            self.prr = None;
            self.rtt.reset_backoff();
        }
    }

    /// Runs RFC 6675's and RACK's loss rules and enters fast recovery on a new loss.
    pub(crate) fn detect_losses(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        self.reorder_wait = None;
        if self.scoreboard.is_empty() {
            return;
        }
        let mss = self.payload_mss();
        let mut lost = 0;
        if self.opts.sack && self.scoreboard.sacked_bytes() > 0 {
            let n = self.scoreboard.mark_lost_by_sack(mss);
            ctx.counters.sack_lost_bytes += u64::from(n);
            lost += n;
        }
        let suspect = self.scoreboard.sacked_bytes() > 0 || self.recovery.is_some();
        if let (true, Some((xmit, end, rack_rtt))) = (suspect, self.rack.newest()) {
            let reo_wnd = self.rack.reorder_window(
                self.rtt.min_rtt(),
                self.rtt.srtt(),
                self.recovery.is_some(),
                self.scoreboard.sacked_segments(),
            );
            let (n, wait) = self
                .scoreboard
                .mark_lost_by_time(now, xmit, end, rack_rtt, reo_wnd);
            ctx.counters.rack_lost_bytes += u64::from(n);
            lost += n;
            self.reorder_wait = wait;
        }
        let lost_pending = lost > 0 || self.scoreboard.has_lost_to_send();
        if lost_pending && self.recovery.is_none() {
            ctx.counters.fast_recoveries += 1;
            self.cc.on_congestion_event(now, mss);
            self.recovery = Some(Recovery {
                point: self.snd_nxt,
                kind: RecoveryKind::Fast,
            });
            self.prr = Some(Prr::start(self.scoreboard.outstanding()));
            self.pending.recovery_kick = true;
        }
    }
}
