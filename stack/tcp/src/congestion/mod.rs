//! Congestion control: one window, two algorithms behind one trait.
//!
//! [`Congestion`] owns cwnd and ssthresh and the parts every algorithm shares: slow start with
//! appropriate byte counting (RFC 3465, L = 2), no growth while in loss recovery or when the
//! application rather than the window limits sending, the loss window of one segment after a
//! timeout (RFC 5681 §3.1). The algorithm decides only how the window grows in congestion
//! avoidance and how far it falls on a congestion event: CUBIC (RFC 9438, the default) or
//! NewReno (RFC 5681 / RFC 6582).

mod cubic;
mod newreno;
mod prr;

pub(crate) use cubic::Cubic;
pub(crate) use newreno::NewReno;
pub(crate) use prr::Prr;

use smoltcp::time::{Duration, Instant};

use crate::config::CongestionAlgorithmKind;

/// Initial window in segments (RFC 6928).
const INITIAL_WINDOW_SEGMENTS: u32 = 10;

/// What an algorithm decides; the shared parts live in [`Congestion`].
pub(crate) trait CongestionAlgorithm {
    /// New cwnd after `acked` bytes were delivered in congestion avoidance.
    fn grow(&mut self, now: Instant, acked: u32, mss: u32, cwnd: u32, rtt: Option<Duration>)
    -> u32;
    /// New ssthresh after a congestion event with the window at `cwnd`.
    fn reduce(&mut self, now: Instant, mss: u32, cwnd: u32) -> u32;
    /// A retransmission timeout collapsed the window.
    fn on_timeout(&mut self);
}

/// The configured algorithm, dispatched without a box.
#[derive(Clone, Debug)]
pub(crate) enum Algorithm {
    Cubic(Cubic),
    NewReno(NewReno),
}

impl Algorithm {
    fn get(&mut self) -> &mut dyn CongestionAlgorithm {
        match self {
            Algorithm::Cubic(c) => c,
            Algorithm::NewReno(r) => r,
        }
    }
}

/// A connection's congestion window.
#[derive(Clone, Debug)]
pub(crate) struct Congestion {
    cwnd: u32,
    ssthresh: u32,
    algorithm: Algorithm,
    /// State saved at the last reduction, restored if it proves spurious.
    undo: Option<(u32, u32)>,
}

impl Congestion {
    pub(crate) fn new(kind: CongestionAlgorithmKind, mss: u32) -> Self {
        let algorithm = match kind {
            CongestionAlgorithmKind::Cubic => Algorithm::Cubic(Cubic::default()),
            CongestionAlgorithmKind::NewReno => Algorithm::NewReno(NewReno::default()),
        };
        Self {
            cwnd: INITIAL_WINDOW_SEGMENTS * mss,
            ssthresh: u32::MAX,
            algorithm,
            undo: None,
        }
    }

    pub(crate) fn cwnd(&self) -> u32 {
        self.cwnd
    }

    pub(crate) fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    pub(crate) fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// Bytes newly delivered outside recovery; `cwnd_limited` says the window, not the
    /// application, bounded what was in flight.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        acked: u32,
        mss: u32,
        rtt: Option<Duration>,
        cwnd_limited: bool,
    ) {
        if !cwnd_limited || acked == 0 {
            return;
        }
        if self.cwnd < self.ssthresh {
            let grown = self.cwnd.saturating_add(acked.min(2 * mss));
            self.cwnd = grown.min(self.ssthresh.max(self.cwnd));
            if self.cwnd < grown && self.cwnd >= self.ssthresh {
                // Leftover bytes past ssthresh count towards congestion avoidance.
                let rest = grown - self.cwnd;
                self.cwnd = self.algorithm.get().grow(now, rest, mss, self.cwnd, rtt);
            }
        } else {
            self.cwnd = self.algorithm.get().grow(now, acked, mss, self.cwnd, rtt);
        }
    }

    /// Entering loss recovery (RFC 6675 §5 step 4 / RFC 9438 §4.6).
    pub(crate) fn on_congestion_event(&mut self, now: Instant, mss: u32) {
        self.undo = Some((self.cwnd, self.ssthresh));
        self.ssthresh = self
            .algorithm
            .get()
            .reduce(now, mss, self.cwnd)
            .max(2 * mss);
        self.cwnd = self.ssthresh;
    }

    /// A retransmission timeout: ssthresh falls as for a loss (once per episode) and the
    /// window collapses to one segment.
    pub(crate) fn on_timeout(&mut self, now: Instant, mss: u32, first_in_episode: bool) {
        if first_in_episode {
            self.undo = Some((self.cwnd, self.ssthresh));
            self.ssthresh = self
                .algorithm
                .get()
                .reduce(now, mss, self.cwnd)
                .max(2 * mss);
        }
        self.algorithm.get().on_timeout();
        self.cwnd = mss;
    }

    /// Sets the window directly: PRR during fast recovery, ssthresh when it ends.
    pub(crate) fn set_cwnd(&mut self, cwnd: u32) {
        self.cwnd = cwnd;
    }

    /// After an idle period longer than the RTO the window restarts from the initial
    /// window (RFC 5681 §4.1), as Linux does by default.
    pub(crate) fn on_idle_restart(&mut self, mss: u32) {
        self.cwnd = self.cwnd.min(INITIAL_WINDOW_SEGMENTS * mss);
    }

    /// The last reduction was caused by a spurious retransmission: restore the window.
    pub(crate) fn undo(&mut self) -> bool {
        match self.undo.take() {
            Some((cwnd, ssthresh)) => {
                self.cwnd = self.cwnd.max(cwnd);
                self.ssthresh = ssthresh;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    #[test]
    fn slow_start_grows_by_at_most_two_segments_per_ack() {
        let mut cc = Congestion::new(CongestionAlgorithmKind::NewReno, MSS);
        assert_eq!(cc.cwnd(), 10 * MSS);
        cc.on_ack(Instant::ZERO, 5 * MSS, MSS, None, true);
        assert_eq!(cc.cwnd(), 12 * MSS);
        cc.on_ack(Instant::ZERO, MSS, MSS, None, false);
        assert_eq!(cc.cwnd(), 12 * MSS, "no growth when application limited");
    }

    #[test]
    fn timeout_collapses_to_one_segment_and_undo_restores() {
        let mut cc = Congestion::new(CongestionAlgorithmKind::Cubic, MSS);
        cc.on_timeout(Instant::ZERO, MSS, true);
        assert_eq!(cc.cwnd(), MSS);
        assert_eq!(cc.ssthresh(), 7 * MSS);
        assert!(cc.undo());
        assert_eq!(cc.cwnd(), 10 * MSS);
        assert_eq!(cc.ssthresh(), u32::MAX);
    }

    #[test]
    fn loss_sets_cwnd_to_the_new_ssthresh() {
        let mut cc = Congestion::new(CongestionAlgorithmKind::NewReno, MSS);
        cc.on_congestion_event(Instant::ZERO, MSS);
        assert_eq!(cc.ssthresh(), 5 * MSS);
        assert_eq!(cc.cwnd(), 5 * MSS);
        assert!(!cc.in_slow_start());
    }
}
