//! The retransmission queue and SACK scoreboard (RFC 6675).
//!
//! Every segment sent and not yet cumulatively acknowledged has a record: its sequence
//! range, when it was last sent, and whether the peer SACKed it, it is deemed lost, or a
//! retransmission of it is in flight. Byte totals of each class are kept as records change,
//! so the RFC 6675 `pipe` estimate costs nothing to read. Loss marking comes from two rules:
//! RFC 6675's IsLost (enough SACKed data above a hole) and RACK's time-based rule, whose
//! per-record send times live here too. Records are in sequence order; SACK blocks that cut a
//! record split it, which is rare because peers SACK whole segments.

use std::collections::VecDeque;

use smoltcp::time::{Duration, Instant};

use crate::seqnum::SeqNum;

const SACKED: u8 = 1;
const LOST: u8 = 2;
/// A retransmission of a lost record is in flight.
const RTX: u8 = 4;
/// Sent more than once (Karn: its ACK gives no RTT sample).
const RETRANSMITTED: u8 = 8;
const FIN: u8 = 16;

/// RFC 6675 DupThresh.
pub(crate) const DUP_THRESH: u32 = 3;

/// One transmitted segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentSegment {
    pub(crate) start: SeqNum,
    pub(crate) end: SeqNum,
    pub(crate) sent_at: Instant,
    flags: u8,
}

impl SentSegment {
    fn len(&self) -> u32 {
        self.end.distance_from(self.start)
    }

    pub(crate) fn has_fin(&self) -> bool {
        self.flags & FIN != 0
    }

    pub(crate) fn retransmitted(&self) -> bool {
        self.flags & RETRANSMITTED != 0
    }
}

/// What an ACK or SACK newly delivered, for RTT, RACK and congestion control.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Delivery {
    /// Bytes newly acknowledged or SACKed.
    pub(crate) bytes: u32,
    /// RTT sample from the newest never-retransmitted delivered record (Karn's rule).
    pub(crate) rtt_sample: Option<Duration>,
    /// Send time and end of the most recently sent delivered record whose delivery is not
    /// ambiguous (RFC 8985 §6.2 step 2).
    pub(crate) newest: Option<(Instant, SeqNum)>,
    /// A delivered record had been retransmitted.
    pub(crate) retransmitted: bool,
    /// A record below the highest SACKed one was delivered without being retransmitted.
    pub(crate) reordered: bool,
    /// The FIN was acknowledged.
    pub(crate) fin_acked: bool,
}

impl Delivery {
    fn note(&mut self, seg: &SentSegment, bytes: u32, now: Instant, min_rtt: Option<Duration>) {
        self.bytes += bytes;
        let retransmitted = seg.retransmitted();
        self.retransmitted |= retransmitted;
        if !retransmitted {
            self.rtt_sample = Some(now - seg.sent_at);
        }
        let ambiguous = retransmitted && min_rtt.is_some_and(|m| now - seg.sent_at < m);
        if !ambiguous {
            let newer = match self.newest {
                None => true,
                Some((at, end)) => seg.sent_at > at || (seg.sent_at == at && seg.end.after(end)),
            };
            if newer {
                self.newest = Some((seg.sent_at, seg.end));
            }
        }
    }
}

/// The scoreboard of one connection.
#[derive(Debug, Default)]
pub(crate) struct Scoreboard {
    segs: VecDeque<SentSegment>,
    outstanding: u32,
    sacked: u32,
    lost: u32,
    rtx: u32,
    sacked_segments: u32,
    /// Highest SACKed sequence number (SND.FACK), if anything is SACKed.
    fack: Option<SeqNum>,
    /// Lost records below this were all retransmitted already.
    rtx_scan_from: Option<SeqNum>,
}

impl Scoreboard {
    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.segs.len()
    }

    /// Bytes sent and not cumulatively acknowledged.
    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding
    }

    pub(crate) fn sacked_bytes(&self) -> u32 {
        self.sacked
    }

    pub(crate) fn sacked_segments(&self) -> u32 {
        self.sacked_segments
    }

    /// RFC 6675 pipe: bytes presumed in the network.
    pub(crate) fn pipe(&self) -> u32 {
        (self.outstanding - self.sacked - self.lost) + self.rtx
    }

    /// Something is marked lost and not yet retransmitted.
    pub(crate) fn has_lost_to_send(&self) -> bool {
        self.lost > self.rtx
    }

    pub(crate) fn last(&self) -> Option<&SentSegment> {
        self.segs.back()
    }

    /// Records a first transmission of `[start, end)`.
    pub(crate) fn on_sent(&mut self, start: SeqNum, end: SeqNum, now: Instant, fin: bool) {
        let seg = SentSegment {
            start,
            end,
            sent_at: now,
            flags: if fin { FIN } else { 0 },
        };
        self.outstanding += seg.len();
        self.segs.push_back(seg);
    }

    fn account(&mut self, flags: u8, len: u32, add: bool) {
        let apply = |v: &mut u32| {
            if add { *v += len } else { *v -= len }
        };
        if flags & SACKED != 0 {
            apply(&mut self.sacked);
            if add {
                self.sacked_segments += 1;
            } else {
                self.sacked_segments -= 1;
            }
        } else if flags & LOST != 0 {
            apply(&mut self.lost);
            if flags & RTX != 0 {
                apply(&mut self.rtx);
            }
        }
    }

    fn set_flags(&mut self, i: usize, flags: u8) {
        let seg = self.segs[i];
        self.account(seg.flags, seg.len(), false);
        self.account(flags, seg.len(), true);
        self.segs[i].flags = flags;
    }

    /// Splits record `i` at `at` (strictly inside it); both halves keep its state.
    fn split(&mut self, i: usize, at: SeqNum) {
        let seg = self.segs[i];
        self.account(seg.flags, seg.len(), false);
        let mut head = seg;
        head.end = at;
        head.flags &= !FIN;
        let mut tail = seg;
        tail.start = at;
        self.account(head.flags, head.len(), true);
        self.account(tail.flags, tail.len(), true);
        self.segs[i] = head;
        self.segs.insert(i + 1, tail);
    }

    /// Cuts record `i` so it is at most `len` bytes, for a retransmission that must be smaller.
    pub(crate) fn limit_len(&mut self, i: usize, len: u32) {
        let seg = self.segs[i];
        if seg.len() > len && len > 0 {
            self.split(i, seg.start + len);
        }
    }

    /// Cumulative ACK up to `ack`.
    pub(crate) fn on_ack(
        &mut self,
        ack: SeqNum,
        now: Instant,
        min_rtt: Option<Duration>,
    ) -> Delivery {
        let mut d = Delivery::default();
        while let Some(seg) = self.segs.front().copied() {
            if seg.end.before_eq(ack) {
                self.segs.pop_front();
                self.account(seg.flags, seg.len(), false);
                self.outstanding -= seg.len();
                if seg.flags & SACKED == 0 {
                    d.note(&seg, seg.len(), now, min_rtt);
                    if self.fack.is_some_and(|f| seg.end.before(f)) && !seg.retransmitted() {
                        d.reordered = true;
                    }
                }
                d.fin_acked |= seg.has_fin();
            } else if seg.start.before(ack) {
                // Partly acknowledged: keep the rest.
                let acked = ack.distance_from(seg.start);
                self.account(seg.flags, seg.len(), false);
                self.outstanding -= acked;
                self.segs[0].start = ack;
                let rest = self.segs[0];
                self.account(rest.flags, rest.len(), true);
                if seg.flags & SACKED == 0 {
                    d.note(&seg, acked, now, min_rtt);
                }
                break;
            } else {
                break;
            }
        }
        if self.segs.is_empty() {
            self.fack = None;
            self.rtx_scan_from = None;
            if self.segs.capacity() > 1024 {
                self.segs = VecDeque::new();
            }
        } else if self.sacked == 0 {
            self.fack = None;
        }
        d
    }

    /// Marks one SACK block; blocks outside what is outstanding are ignored.
    pub(crate) fn on_sack(
        &mut self,
        start: SeqNum,
        end: SeqNum,
        now: Instant,
        min_rtt: Option<Duration>,
        d: &mut Delivery,
    ) {
        let (Some(first), Some(last)) = (self.segs.front(), self.segs.back()) else {
            return;
        };
        let start = start.latest(first.start);
        let end = end.earliest(last.end);
        if !start.before(end) {
            return;
        }
        let mut i = self.segs.partition_point(|s| s.end.before_eq(start));
        while i < self.segs.len() && self.segs[i].start.before(end) {
            let seg = self.segs[i];
            if seg.start.before(start) {
                self.split(i, start);
                i += 1;
                continue;
            }
            if end.before(seg.end) {
                self.split(i, end);
            }
            let seg = self.segs[i];
            if seg.flags & SACKED == 0 {
                d.note(&seg, seg.len(), now, min_rtt);
                if self.fack.is_some_and(|f| seg.end.before(f)) && !seg.retransmitted() {
                    d.reordered = true;
                }
                self.set_flags(i, (seg.flags & (RETRANSMITTED | FIN)) | SACKED);
                self.fack = Some(self.fack.map_or(seg.end, |f| f.latest(seg.end)));
            }
            i += 1;
        }
    }

    fn mark_lost(&mut self, i: usize) -> u32 {
        let seg = self.segs[i];
        self.set_flags(i, (seg.flags & (RETRANSMITTED | FIN)) | LOST);
        self.rtx_scan_from = Some(match self.rtx_scan_from {
            Some(from) => from.earliest(seg.start),
            None => seg.start,
        });
        seg.len()
    }

    fn awaiting_retransmit(seg: &SentSegment) -> bool {
        seg.flags & SACKED == 0 && seg.flags & LOST != 0 && seg.flags & RTX == 0
    }

    /// RFC 6675 IsLost for every hole: a record is lost when more than (DupThresh − 1)·SMSS
    /// bytes or DupThresh discontiguous SACKed records lie above it. Returns bytes newly lost.
    pub(crate) fn mark_lost_by_sack(&mut self, mss: u32) -> u32 {
        if self.sacked == 0 {
            return 0;
        }
        let mut sacked_above = 0u32;
        let mut blocks_above = 0u32;
        let mut in_block = false;
        let mut newly = 0;
        // Nothing above the highest SACKed byte can be lost by this rule.
        let top = match self.fack {
            Some(fack) => self.segs.partition_point(|s| s.end.before_eq(fack)),
            None => self.segs.len(),
        };
        for i in (0..top).rev() {
            let seg = self.segs[i];
            if seg.flags & SACKED != 0 {
                sacked_above += seg.len();
                if !in_block {
                    blocks_above += 1;
                    in_block = true;
                }
                continue;
            }
            in_block = false;
            if seg.flags & LOST != 0 {
                continue;
            }
            if sacked_above > (DUP_THRESH - 1) * mss || blocks_above >= DUP_THRESH {
                newly += self.mark_lost(i);
            }
        }
        newly
    }

    /// RACK's rule (RFC 8985 §6.2 step 5): a record sent before the newest delivered one is
    /// lost once `rtt + reo_wnd` has passed since it was sent. Returns bytes newly lost and
    /// how long until the next record would qualify.
    pub(crate) fn mark_lost_by_time(
        &mut self,
        now: Instant,
        rack_xmit: Instant,
        rack_end: SeqNum,
        rack_rtt: Duration,
        reo_wnd: Duration,
    ) -> (u32, Option<Duration>) {
        let mut newly = 0;
        let mut wait: Option<Duration> = None;
        for i in 0..self.segs.len() {
            let seg = self.segs[i];
            let sent_after =
                seg.sent_at > rack_xmit || (seg.sent_at == rack_xmit && seg.end.after(rack_end));
            if sent_after && !seg.retransmitted() {
                // First transmissions go out in sequence order, so every later record was
                // (first) sent later still: none of them can be judged yet.
                break;
            }
            if sent_after || seg.flags & SACKED != 0 || Self::awaiting_retransmit(&seg) {
                continue;
            }
            let due = seg.sent_at + rack_rtt + reo_wnd;
            if due <= now {
                newly += self.mark_lost(i);
            } else {
                let left = due - now;
                wait = Some(wait.map_or(left, |w| w.max(left)));
            }
        }
        (newly, wait)
    }

    /// After a retransmission timeout every record not SACKed is presumed lost
    /// (RFC 6675 §5.1). Returns bytes newly lost.
    pub(crate) fn mark_all_lost(&mut self) -> u32 {
        let mut newly = 0;
        for i in 0..self.segs.len() {
            let seg = self.segs[i];
            if seg.flags & SACKED == 0 && (seg.flags & LOST == 0 || seg.flags & RTX != 0) {
                newly += self.mark_lost(i);
            }
        }
        newly
    }

    /// Marks the first outstanding record lost (three duplicate ACKs or a NewReno partial
    /// ACK, RFC 6582). Returns bytes newly lost.
    pub(crate) fn mark_first_lost(&mut self) -> u32 {
        match self.segs.front() {
            Some(seg) if seg.flags & SACKED == 0 && !Self::awaiting_retransmit(seg) => {
                self.mark_lost(0)
            }
            _ => 0,
        }
    }

    /// Forgets every loss mark: the retransmission timeout that set them was spurious.
    pub(crate) fn clear_lost(&mut self) {
        for i in 0..self.segs.len() {
            let seg = self.segs[i];
            if seg.flags & LOST != 0 {
                self.set_flags(i, seg.flags & !(LOST | RTX));
            }
        }
        self.rtx_scan_from = None;
    }

    /// The first record awaiting retransmission (RFC 6675 NextSeg rule 1).
    pub(crate) fn next_lost(&mut self) -> Option<usize> {
        let from = self.rtx_scan_from?;
        let mut i = self.segs.partition_point(|s| s.end.before_eq(from));
        while i < self.segs.len() {
            if Self::awaiting_retransmit(&self.segs[i]) {
                self.rtx_scan_from = Some(self.segs[i].start);
                return Some(i);
            }
            i += 1;
        }
        self.rtx_scan_from = None;
        None
    }

    pub(crate) fn get(&self, i: usize) -> Option<&SentSegment> {
        self.segs.get(i)
    }

    /// Notes that record `i` was sent again at `now`.
    pub(crate) fn on_retransmit(&mut self, i: usize, now: Instant) {
        let seg = self.segs[i];
        let flags = if seg.flags & LOST != 0 && seg.flags & SACKED == 0 {
            seg.flags | RTX | RETRANSMITTED
        } else {
            seg.flags | RETRANSMITTED
        };
        self.set_flags(i, flags);
        self.segs[i].sent_at = now;
    }

    #[cfg(test)]
    /// Forgets every SACK mark (the peer may renege, RFC 2018 §8; used after an RTO).
    pub(crate) fn clear_sacks(&mut self) {
        for i in 0..self.segs.len() {
            let seg = self.segs[i];
            if seg.flags & SACKED != 0 {
                self.set_flags(i, seg.flags & !SACKED);
            }
        }
        self.fack = None;
    }

    /// Empties the board (connection reset or closed).
    pub(crate) fn clear(&mut self) {
        *self = Scoreboard::default();
    }

    /// Recomputes the totals from the records; for tests and debug checks.
    pub(crate) fn check_invariants(&self) {
        let mut board = Scoreboard::default();
        let mut prev: Option<SeqNum> = None;
        for seg in &self.segs {
            assert!(seg.start.before(seg.end), "empty record {seg:?}");
            if let Some(p) = prev {
                assert_eq!(p, seg.start, "records must be contiguous");
            }
            prev = Some(seg.end);
            board.outstanding += seg.len();
            board.account(seg.flags, seg.len(), true);
        }
        assert_eq!(board.outstanding, self.outstanding);
        assert_eq!(board.sacked, self.sacked);
        assert_eq!(board.lost, self.lost);
        assert_eq!(board.rtx, self.rtx);
        assert_eq!(board.sacked_segments, self.sacked_segments);
        assert!(self.pipe() <= self.outstanding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 100;

    fn board(n: u32) -> Scoreboard {
        let mut b = Scoreboard::default();
        for k in 0..n {
            let at = Instant::from_millis(i64::from(k));
            b.on_sent(SeqNum::new(k * MSS), SeqNum::new((k + 1) * MSS), at, false);
        }
        b
    }

    fn sack(b: &mut Scoreboard, from: u32, to: u32, now: Instant) -> Delivery {
        let mut d = Delivery::default();
        b.on_sack(SeqNum::new(from), SeqNum::new(to), now, None, &mut d);
        b.check_invariants();
        d
    }

    #[test]
    fn cumulative_ack_pops_records_and_samples_rtt() {
        let mut b = board(5);
        let now = Instant::from_millis(50);
        let d = b.on_ack(SeqNum::new(250), now, None);
        b.check_invariants();
        assert_eq!(d.bytes, 250);
        assert_eq!(d.rtt_sample, Some(Duration::from_millis(48)));
        assert_eq!(b.outstanding(), 250);
        assert_eq!(b.get(0).unwrap().start, SeqNum::new(250));
    }

    #[test]
    fn rfc6675_is_lost_needs_three_segments_sacked_above() {
        let mut b = board(10);
        let now = Instant::from_millis(20);
        // Segment 0 lost; 1 and 2 SACKed: only 200 bytes above, not yet lost.
        sack(&mut b, 100, 300, now);
        assert_eq!(b.mark_lost_by_sack(MSS), 0);
        // A third SACKed segment makes more than (DupThresh-1)*SMSS above the hole.
        sack(&mut b, 300, 400, now);
        assert_eq!(b.mark_lost_by_sack(MSS), 100);
        b.check_invariants();
        assert_eq!(b.sacked_bytes(), 300);
        // pipe = outstanding - sacked - lost = 1000 - 300 - 100
        assert_eq!(b.pipe(), 600);
        let i = b.next_lost().unwrap();
        assert_eq!(b.get(i).unwrap().start, SeqNum::new(0));
        b.on_retransmit(i, now);
        b.check_invariants();
        assert_eq!(b.pipe(), 700);
        assert!(b.next_lost().is_none());
        // The cumulative ACK for the repaired hole releases everything below the SACKs.
        let d = b.on_ack(SeqNum::new(400), now, None);
        assert!(d.retransmitted);
        assert_eq!(d.rtt_sample, None, "Karn: no sample from a retransmission");
        b.check_invariants();
        assert_eq!(b.pipe(), 600);
    }

    #[test]
    fn sack_blocks_split_records() {
        let mut b = board(3);
        let now = Instant::from_millis(10);
        let d = sack(&mut b, 150, 250, now);
        assert_eq!(d.bytes, 100);
        assert_eq!(b.len(), 5);
        assert_eq!(b.sacked_bytes(), 100);
        // Blocks outside the outstanding range are clipped away.
        let d = sack(&mut b, 250, 9000, now);
        assert_eq!(d.bytes, 50);
    }

    #[test]
    fn rack_time_rule_marks_older_segments_after_the_reorder_window() {
        let mut b = board(4);
        // The newest segment (sent at 3 ms) is delivered at 10 ms: RACK.rtt = 7 ms.
        let now = Instant::from_millis(10);
        let d = sack(&mut b, 300, 400, now);
        let (xmit, end) = d.newest.unwrap();
        let rtt = now - xmit;
        let reo = Duration::from_millis(2);
        let (lost, wait) = b.mark_lost_by_time(now, xmit, end, rtt, reo);
        // Segment 0 sent at 0: due at 0+7+2 = 9 <= 10: lost. Segment 1 due at 10: lost.
        // Segment 2 due at 11: wait 1 ms.
        assert_eq!(lost, 200);
        assert_eq!(wait, Some(Duration::from_millis(1)));
        b.check_invariants();
        let later = Instant::from_millis(11);
        let (lost, wait) = b.mark_lost_by_time(later, xmit, end, rtt, reo);
        assert_eq!(lost, 100);
        assert_eq!(wait, None);
    }

    #[test]
    fn timeout_marks_everything_unsacked_lost_again() {
        let mut b = board(4);
        let now = Instant::from_millis(5);
        sack(&mut b, 200, 300, now);
        assert_eq!(b.mark_all_lost(), 300);
        let i = b.next_lost().unwrap();
        b.on_retransmit(i, now);
        b.check_invariants();
        // A second timeout re-marks the in-flight retransmission.
        assert_eq!(b.mark_all_lost(), 100);
        b.check_invariants();
        assert_eq!(b.pipe(), 0);
        b.clear_sacks();
        b.check_invariants();
        assert_eq!(b.sacked_bytes(), 0);
    }

    #[test]
    fn reordering_is_detected_when_a_lower_segment_arrives_late() {
        let mut b = board(4);
        let now = Instant::from_millis(5);
        sack(&mut b, 200, 300, now);
        let d = sack(&mut b, 100, 200, now);
        assert!(d.reordered);
    }
}
