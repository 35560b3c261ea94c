//! Timer expiry: handshake retransmission, RTO (RFC 6298 §5), tail loss probe and RACK
//! reordering timeout (RFC 8985), persist (zero-window probes), delayed ACK and keepalive.
//! The connection keeps its deadlines as plain data; the endpoint's wheel holds one entry per
//! connection at the earliest of them.

use smoltcp::time::Instant;

use super::{Connection, Ctx, Outcome, Recovery, RecoveryKind, RtxTimer, State, ts_clock};
use crate::event::{ConnectFailure, ResetReason};

impl Connection {
    /// Earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.rtx_timer.map(|t| t.0),
            self.delack_at,
            self.keepalive_at,
            self.fin_wait2_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs every timer due by `now`; harmless when none is.
    pub(crate) fn on_timer(&mut self, now: Instant, ctx: &mut Ctx<'_>) -> Outcome {
        if let Some((at, kind)) = self.rtx_timer {
            if at <= now {
                self.rtx_timer = None;
                let outcome = match kind {
                    RtxTimer::Handshake => self.on_handshake_timeout(now, ctx),
                    RtxTimer::Rto => self.on_rto(now, ctx),
                    RtxTimer::TailLossProbe => {
                        self.on_probe_timeout(now, ctx);
                        Outcome::Continue
                    }
                    RtxTimer::Reorder => {
                        self.detect_losses(now, ctx);
                        self.rearm_retransmit(now);
                        Outcome::Continue
                    }
                    RtxTimer::Persist => self.on_persist(now, ctx),
                };
                if outcome != Outcome::Continue {
                    return outcome;
                }
            }
        }
        if self.delack_at.is_some_and(|at| at <= now) {
            self.delack_at = None;
            self.ack.now = true;
            ctx.counters.delayed_acks += 1;
        }
        if self.keepalive_at.is_some_and(|at| at <= now) {
            return self.on_keepalive(now, ctx);
        }
        if self.fin_wait2_at.is_some_and(|at| at <= now) {
            self.fin_wait2_at = None;
            if self.state == State::FinWait2 {
                // The peer never closed its side: give up on it, as Linux does.
                ctx.counters.fin_wait2_timeouts += 1;
                self.state = State::Closed;
                self.rtx_timer = None;
                self.delack_at = None;
                self.keepalive_at = None;
            }
        }
        Outcome::Continue
    }

    fn on_handshake_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) -> Outcome {
        let (State::SynSent(hs) | State::SynReceived(hs)) = &mut self.state else {
            return Outcome::Continue;
        };
        if hs.retries >= ctx.config.max_syn_retries {
            return Outcome::ConnectFailed(ConnectFailure::TimedOut);
        }
        hs.retries += 1;
        ctx.counters.syn_retransmits += 1;
        self.rtt.on_timeout();
        self.pending.syn = true;
        self.rtx_timer = Some((now + self.rtt.rto(), RtxTimer::Handshake));
        Outcome::Continue
    }

    fn on_rto(&mut self, now: Instant, ctx: &mut Ctx<'_>) -> Outcome {
        if self.scoreboard.is_empty() {
            self.rearm_retransmit(now);
            return Outcome::Continue;
        }
        self.rto_count = self.rto_count.saturating_add(1);
        if self.rto_count > ctx.config.max_retransmits {
            ctx.counters.retransmit_timeouts += 1;
            return Outcome::Reset(ResetReason::RetransmitTimeout);
        }
        ctx.counters.rto_timeouts += 1;
        let previous = self.recovery.and_then(|r| match r.kind {
            RecoveryKind::Timeout { tsval } => Some(tsval),
            RecoveryKind::Fast => None,
        });
        let first = previous.is_none();
        let mss = self.payload_mss();
        self.cc.on_timeout(now, mss, first);
        self.rtt.on_timeout();
        self.scoreboard.mark_all_lost();
        let tsval = match previous {
            Some(tsval) => tsval,
            None => self.opts.timestamps.then(|| ts_clock(now, self.ts.offset)),
        };
        self.recovery = Some(Recovery {
            point: self.snd_nxt,
            kind: RecoveryKind::Timeout { tsval },
        });
        self.tlp_end = None;
        self.prr = None;
        self.pending.tail_loss_probe = false;
        self.rtx_timer = Some((now + self.rtt.rto(), RtxTimer::Rto));
        Outcome::Continue
    }

    fn on_probe_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.scoreboard.is_empty() {
            self.rearm_retransmit(now);
            return;
        }
        ctx.counters.tlp_probes += 1;
        self.pending.tail_loss_probe = true;
        self.rtx_timer = Some((now + self.rtt.rto(), RtxTimer::Rto));
    }

    fn on_persist(&mut self, now: Instant, ctx: &mut Ctx<'_>) -> Outcome {
        if !self.scoreboard.is_empty() || self.unsent() == 0 || self.snd_wnd > 0 {
            self.rearm_retransmit(now);
            return Outcome::Continue;
        }
        if self.probes > ctx.config.max_retransmits {
            // Probes went unanswered as long as retransmissions would have.
            ctx.counters.retransmit_timeouts += 1;
            return Outcome::Reset(ResetReason::RetransmitTimeout);
        }
        self.probes = self.probes.saturating_add(1);
        self.persist_backoff = self.persist_backoff.saturating_add(1);
        self.pending.probe = true;
        ctx.counters.zero_window_probes += 1;
        let wait = self.rtt.backed_off(self.persist_backoff);
        self.rtx_timer = Some((now + wait, RtxTimer::Persist));
        Outcome::Continue
    }

    fn on_keepalive(&mut self, now: Instant, ctx: &mut Ctx<'_>) -> Outcome {
        self.keepalive_at = None;
        let Some(k) = self.keepalive else {
            return Outcome::Continue;
        };
        if !self.scoreboard.is_empty() || self.unsent() > 0 {
            // Retransmission timers already watch a busy connection.
            self.keepalive_at = Some(now + k.idle);
            return Outcome::Continue;
        }
        if self.probes >= k.probes {
            ctx.counters.keepalive_timeouts += 1;
            return Outcome::Reset(ResetReason::KeepaliveTimeout);
        }
        self.probes += 1;
        self.pending.probe = true;
        ctx.counters.keepalive_probes += 1;
        self.keepalive_at = Some(now + k.interval);
        Outcome::Continue
    }

    /// Schedules keepalive from the last segment received.
    pub(crate) fn arm_keepalive(&mut self, _now: Instant) {
        self.keepalive_at = match (self.keepalive, self.state) {
            (Some(k), State::Established | State::CloseWait) if self.probes == 0 => {
                Some(self.last_recv + k.idle)
            }
            (Some(_), State::Established | State::CloseWait) => self.keepalive_at,
            _ => None,
        };
    }

    /// After an ACK moved SND.UNA (or RACK asked to wait): the retransmission timer restarts
    /// (RFC 6298 §5.3), becomes a probe timer, a reorder timer, or the persist timer.
    pub(crate) fn rearm_retransmit(&mut self, now: Instant) {
        if matches!(self.state, State::SynSent(_) | State::SynReceived(_)) {
            return;
        }
        if self.scoreboard.is_empty() {
            self.rtx_timer = None;
            self.arm_persist_if_blocked(now);
            return;
        }
        if let Some(wait) = self.reorder_wait {
            self.rtx_timer = Some((now + wait, RtxTimer::Reorder));
            return;
        }
        self.arm_probe_or_rto(now);
    }

    /// Starts the persist timer when data waits on a zero window with nothing in flight.
    pub(crate) fn arm_persist_if_blocked(&mut self, now: Instant) {
        let blocked = self.snd_wnd == 0 && self.unsent() > 0 && self.scoreboard.is_empty();
        if blocked && self.rtx_timer.is_none() && self.state.sends_data() {
            let wait = self.rtt.backed_off(self.persist_backoff);
            self.rtx_timer = Some((now + wait, RtxTimer::Persist));
        }
    }
}
