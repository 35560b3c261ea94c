//! Round-trip time estimation and the retransmission timeout (RFC 6298).
//!
//! SRTT and RTTVAR follow the RFC's gains (1/8, 1/4); the RTO is SRTT + max(G, 4·RTTVAR),
//! held between a configurable floor and ceiling, and doubled per consecutive timeout
//! (exponential backoff) until a new sample arrives. The minimum RTT seen is kept for RACK's
//! reordering window.

use smoltcp::time::Duration;

/// Clock granularity term G of RFC 6298 (our timers tick in milliseconds).
const GRANULARITY: Duration = Duration::from_millis(1);

/// Per-connection RTT state.
#[derive(Clone, Debug)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    base_rto: Duration,
    backoff: u8,
    rto_min: Duration,
    rto_max: Duration,
}

impl RttEstimator {
    pub(crate) fn new(initial_rto: Duration, rto_min: Duration, rto_max: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
            base_rto: initial_rto.max(rto_min).min(rto_max),
            backoff: 0,
            rto_min,
            rto_max,
        }
    }

    /// Feeds one RTT measurement; clears the backoff (RFC 6298 §5, after Karn's rule has
    /// excluded retransmitted segments).
    pub(crate) fn on_sample(&mut self, rtt: Duration) {
        let rtt = rtt.max(Duration::from_micros(1));
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = if srtt > rtt { srtt - rtt } else { rtt - srtt };
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        self.base_rto = (srtt + (self.rttvar * 4).max(GRANULARITY))
            .max(self.rto_min)
            .min(self.rto_max);
        self.backoff = 0;
    }

    /// A retransmission timeout fired: double the timer.
    pub(crate) fn on_timeout(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    /// Clears backoff once the peer answers again without a usable RTT sample.
    pub(crate) fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// Current RTO including backoff.
    pub(crate) fn rto(&self) -> Duration {
        let shift = u32::from(self.backoff.min(31));
        let micros = self.base_rto.total_micros().saturating_mul(1u64 << shift);
        Duration::from_micros(micros).min(self.rto_max)
    }

    /// RTO with backoff `extra` steps further (persist and keepalive probes).
    pub(crate) fn backed_off(&self, steps: u8) -> Duration {
        let shift = u32::from(steps.min(31));
        let micros = self.base_rto.total_micros().saturating_mul(1u64 << shift);
        Duration::from_micros(micros).min(self.rto_max)
    }

    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub(crate) fn rttvar(&self) -> Duration {
        self.rttvar
    }

    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    #[cfg(test)]
    pub(crate) fn backoff(&self) -> u8 {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimator() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(200),
            Duration::from_secs(120),
        )
    }

    #[test]
    fn first_sample_sets_srtt_and_half_rttvar() {
        let mut rtt = estimator();
        assert_eq!(rtt.rto(), Duration::from_secs(1));
        rtt.on_sample(Duration::from_millis(100));
        assert_eq!(rtt.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(rtt.rttvar(), Duration::from_millis(50));
        assert_eq!(rtt.rto(), Duration::from_millis(300));
    }

    #[test]
    fn later_samples_use_the_rfc_gains() {
        let mut rtt = estimator();
        rtt.on_sample(Duration::from_millis(100));
        rtt.on_sample(Duration::from_millis(200));
        // rttvar = 3/4*50 + 1/4*100 = 62.5; srtt = 7/8*100 + 1/8*200 = 112.5
        assert_eq!(rtt.rttvar(), Duration::from_micros(62_500));
        assert_eq!(rtt.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(rtt.rto(), Duration::from_micros(362_500));
        assert_eq!(rtt.min_rtt(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn floor_applies_to_small_rtts() {
        let mut rtt = estimator();
        for _ in 0..20 {
            rtt.on_sample(Duration::from_micros(50));
        }
        assert_eq!(rtt.rto(), Duration::from_millis(200));
    }

    #[test]
    fn backoff_doubles_until_the_ceiling_and_a_sample_clears_it() {
        let mut rtt = estimator();
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push(rtt.rto().total_millis());
            rtt.on_timeout();
        }
        assert_eq!(
            seen,
            vec![
                1000, 2000, 4000, 8000, 16000, 32000, 64000, 120000, 120000, 120000
            ]
        );
        rtt.on_sample(Duration::from_millis(10));
        assert_eq!(rtt.backoff(), 0);
        assert_eq!(rtt.rto(), Duration::from_millis(200));
    }
}
