//! NewReno window arithmetic (RFC 5681 §3.1): one segment per window of data acknowledged,
//! halving on loss.

use smoltcp::time::{Duration, Instant};

use super::CongestionAlgorithm;

/// Bytes acknowledged in congestion avoidance since the window last grew.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewReno {
    acked_in_window: u32,
}

impl CongestionAlgorithm for NewReno {
    fn grow(
        &mut self,
        _now: Instant,
        acked: u32,
        mss: u32,
        cwnd: u32,
        _rtt: Option<Duration>,
    ) -> u32 {
        self.acked_in_window = self.acked_in_window.saturating_add(acked);
        if self.acked_in_window >= cwnd {
            self.acked_in_window -= cwnd;
            cwnd.saturating_add(mss)
        } else {
            cwnd
        }
    }

    fn reduce(&mut self, _now: Instant, mss: u32, cwnd: u32) -> u32 {
        self.acked_in_window = 0;
        (cwnd / 2).max(2 * mss)
    }

    fn on_timeout(&mut self) {
        self.acked_in_window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_one_segment_per_window() {
        let mut reno = NewReno::default();
        let mut cwnd = 10_000;
        for _ in 0..10 {
            cwnd = reno.grow(Instant::ZERO, 1000, 1000, cwnd, None);
        }
        assert_eq!(cwnd, 11_000);
        for _ in 0..10 {
            cwnd = reno.grow(Instant::ZERO, 1000, 1000, cwnd, None);
        }
        assert_eq!(cwnd, 11_000, "needs a full 11-segment window now");
        assert_eq!(reno.reduce(Instant::ZERO, 1000, 11_000), 5_500);
        assert_eq!(reno.reduce(Instant::ZERO, 1000, 3_000), 2_000);
    }
}
