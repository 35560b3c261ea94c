//! RACK-TLP (RFC 8985): time-based loss detection and tail loss probes.
//!
//! RACK remembers the most recently *sent* segment known delivered; anything sent before it
//! and still undelivered after one RTT plus a reordering window is lost. The window starts at
//! a quarter of the minimum RTT, is zero in recovery until reordering has been seen (so RACK
//! acts like DupThresh then), and never exceeds SRTT. A tail loss probe, sent one probe
//! timeout (about two SRTTs) after the last transmission, draws the ACK that lets RACK repair
//! a lost tail without waiting for the retransmission timeout.

use smoltcp::time::{Duration, Instant};

use crate::scoreboard::DUP_THRESH;
use crate::seqnum::SeqNum;

/// Worst-case delayed-ACK allowance when only one segment is in flight (RFC 8985 §7.2).
const WC_DEL_ACK: Duration = Duration::from_millis(200);
/// Smallest probe timeout, one timer tick above zero.
const MIN_PTO: Duration = Duration::from_millis(2);

/// RACK state of one connection.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rack {
    xmit_ts: Option<Instant>,
    end_seq: SeqNum,
    rtt: Duration,
    reordering_seen: bool,
}

impl Rack {
    /// RFC 8985 §6.2 step 2: remember the newest delivered segment.
    pub(crate) fn on_delivered(&mut self, sent_at: Instant, end: SeqNum, now: Instant) {
        let newer = match self.xmit_ts {
            None => true,
            Some(at) => sent_at > at || (sent_at == at && end.after(self.end_seq)),
        };
        if newer {
            self.xmit_ts = Some(sent_at);
            self.end_seq = end;
            self.rtt = now - sent_at;
        }
    }

    pub(crate) fn on_reordering(&mut self) {
        self.reordering_seen = true;
    }

    /// The newest delivered segment: send time, end, and its RTT.
    pub(crate) fn newest(&self) -> Option<(Instant, SeqNum, Duration)> {
        self.xmit_ts.map(|at| (at, self.end_seq, self.rtt))
    }

    /// RFC 8985 §6.2 step 4.
    pub(crate) fn reorder_window(
        &self,
        min_rtt: Option<Duration>,
        srtt: Option<Duration>,
        in_recovery: bool,
        sacked_segments: u32,
    ) -> Duration {
        if !self.reordering_seen && (in_recovery || sacked_segments >= DUP_THRESH) {
            return Duration::ZERO;
        }
        let quarter = min_rtt.map_or(Duration::ZERO, |m| m / 4);
        match srtt {
            Some(s) => quarter.min(s),
            None => quarter,
        }
    }
}

/// RFC 8985 §7.2: when to probe after the last transmission.
pub(crate) fn probe_timeout(
    srtt: Option<Duration>,
    flight_segments: usize,
    rto: Duration,
) -> Duration {
    let pto = match srtt {
        Some(srtt) => {
            let mut pto = srtt * 2;
            if flight_segments == 1 {
                pto += WC_DEL_ACK;
            }
            pto
        }
        None => Duration::from_secs(1),
    };
    pto.max(MIN_PTO).min(rto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_most_recently_sent_delivery() {
        let mut rack = Rack::default();
        let t = Instant::from_millis;
        rack.on_delivered(t(10), SeqNum::new(200), t(30));
        rack.on_delivered(t(5), SeqNum::new(100), t(31));
        assert_eq!(
            rack.newest(),
            Some((t(10), SeqNum::new(200), Duration::from_millis(20)))
        );
        rack.on_delivered(t(10), SeqNum::new(300), t(32));
        assert_eq!(rack.newest().unwrap().1, SeqNum::new(300));
    }

    #[test]
    fn reorder_window_is_quarter_min_rtt_capped_by_srtt_and_zero_in_recovery() {
        let mut rack = Rack::default();
        let min = Some(Duration::from_millis(40));
        let srtt = Some(Duration::from_millis(50));
        assert_eq!(
            rack.reorder_window(min, srtt, false, 0),
            Duration::from_millis(10)
        );
        assert_eq!(rack.reorder_window(min, srtt, true, 0), Duration::ZERO);
        assert_eq!(rack.reorder_window(min, srtt, false, 3), Duration::ZERO);
        rack.on_reordering();
        assert_eq!(
            rack.reorder_window(min, srtt, true, 5),
            Duration::from_millis(10)
        );
        assert_eq!(
            rack.reorder_window(min, Some(Duration::from_millis(5)), true, 5),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn probe_timeout_follows_rfc8985() {
        let rto = Duration::from_millis(300);
        let srtt = Some(Duration::from_millis(20));
        assert_eq!(probe_timeout(srtt, 5, rto), Duration::from_millis(40));
        assert_eq!(probe_timeout(srtt, 1, rto), Duration::from_millis(240));
        assert_eq!(probe_timeout(Some(Duration::from_millis(200)), 5, rto), rto);
        assert_eq!(probe_timeout(None, 5, rto), rto);
    }
}
