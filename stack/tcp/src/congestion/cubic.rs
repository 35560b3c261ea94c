//! CUBIC (RFC 9438): after a loss the window follows W(t) = C·(t − K)³ + W_max, so it climbs
//! back fast, flattens near the window where the loss happened, then probes beyond it; a
//! Reno-friendly estimate keeps it at least as aggressive as Reno on short-RTT paths.
//! Arithmetic is in segments as floating point, as in the RFC.

use smoltcp::time::{Duration, Instant};

use super::CongestionAlgorithm;

const C: f64 = 0.4;
const BETA: f64 = 0.7;

/// Window state between congestion events.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cubic {
    /// Window (segments) before the last reduction.
    w_max: f64,
    /// Time the current congestion-avoidance epoch began.
    epoch_start: Option<Instant>,
    /// Time (s) W(t) takes to return to `origin`.
    k: f64,
    /// The plateau the curve is centred on.
    origin: f64,
    /// Reno-friendly estimate (segments).
    w_est: f64,
}

impl Cubic {
    fn target(&self, t: f64) -> f64 {
        C * (t - self.k).powi(3) + self.origin
    }
}

impl CongestionAlgorithm for Cubic {
    fn grow(
        &mut self,
        now: Instant,
        acked: u32,
        mss: u32,
        cwnd: u32,
        rtt: Option<Duration>,
    ) -> u32 {
        let mss_f = f64::from(mss.max(1));
        let cwnd_seg = f64::from(cwnd) / mss_f;
        let acked_seg = f64::from(acked) / mss_f;
        let start = match self.epoch_start {
            Some(start) => start,
            None => {
                self.epoch_start = Some(now);
                if cwnd_seg < self.w_max {
                    self.k = ((self.w_max - cwnd_seg) / C).cbrt();
                    self.origin = self.w_max;
                } else {
                    self.k = 0.0;
                    self.origin = cwnd_seg;
                }
                self.w_est = cwnd_seg;
                now
            }
        };
        let rtt_s = rtt.map_or(0.1, |r| r.total_micros() as f64 / 1e6);
        let t = (now - start).total_micros() as f64 / 1e6;
        let target = self.target(t + rtt_s).clamp(cwnd_seg, 1.5 * cwnd_seg);
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * acked_seg / cwnd_seg;
        let next = if self.w_est > self.target(t) {
            self.w_est.max(cwnd_seg)
        } else {
            cwnd_seg + (target - cwnd_seg) / cwnd_seg * acked_seg
        };
        let bytes = (next * mss_f).min(f64::from(u32::MAX / 2));
        (bytes as u32).max(cwnd)
    }

    fn reduce(&mut self, _now: Instant, mss: u32, cwnd: u32) -> u32 {
        let cwnd_seg = f64::from(cwnd) / f64::from(mss.max(1));
        // Fast convergence: give up bandwidth sooner when the plateau keeps dropping.
        self.w_max = if cwnd_seg < self.w_max {
            cwnd_seg * (1.0 + BETA) / 2.0
        } else {
            cwnd_seg
        };
        self.epoch_start = None;
        (f64::from(cwnd) * BETA) as u32
    }

    fn on_timeout(&mut self) {
        self.epoch_start = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    #[test]
    fn reduces_by_beta_and_remembers_w_max() {
        let mut cubic = Cubic::default();
        assert_eq!(cubic.reduce(Instant::ZERO, MSS, 100 * MSS), 70 * MSS);
        assert!((cubic.w_max - 100.0).abs() < 1e-9);
        // A second loss below the old plateau triggers fast convergence.
        cubic.reduce(Instant::ZERO, MSS, 80 * MSS);
        assert!((cubic.w_max - 68.0).abs() < 1e-9);
    }

    #[test]
    fn window_returns_to_w_max_after_k_seconds_then_probes_beyond() {
        let mut cubic = Cubic::default();
        let ssthresh = cubic.reduce(Instant::ZERO, MSS, 100 * MSS);
        let rtt = Some(Duration::from_millis(100));
        let mut cwnd = ssthresh;
        let mut now = Instant::ZERO;
        // K = cbrt(100 * 0.3 / 0.4) ~ 4.2 s; feed one window of ACKs per RTT.
        let mut at_k = 0;
        for step in 0..100 {
            let segments = cwnd / MSS;
            for _ in 0..segments {
                cwnd = cubic.grow(now, MSS, MSS, cwnd, rtt);
            }
            now += Duration::from_millis(100);
            if step == 42 {
                at_k = cwnd;
            }
        }
        assert!(
            (95 * MSS..=110 * MSS).contains(&at_k),
            "near the plateau at K: {at_k}"
        );
        assert!(cwnd > 110 * MSS, "probes beyond w_max later: {cwnd}");
    }

    #[test]
    fn concave_growth_is_fast_then_flat() {
        let mut cubic = Cubic::default();
        let mut cwnd = cubic.reduce(Instant::ZERO, MSS, 100 * MSS);
        let rtt = Some(Duration::from_millis(100));
        let mut per_rtt = Vec::new();
        let mut now = Instant::ZERO;
        for _ in 0..40 {
            let before = cwnd;
            for _ in 0..cwnd / MSS {
                cwnd = cubic.grow(now, MSS, MSS, cwnd, rtt);
            }
            per_rtt.push(cwnd - before);
            now += Duration::from_millis(100);
        }
        assert!(per_rtt[0] > per_rtt[30], "{per_rtt:?}");
    }
}
