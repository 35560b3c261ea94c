//! Proportional Rate Reduction (RFC 6937): how much may be sent on each ACK during fast
//! recovery. While the pipe is above ssthresh, sending follows deliveries scaled by
//! ssthresh / flight-at-entry, so the window falls smoothly instead of stalling then bursting;
//! once the pipe is below ssthresh (heavy loss), slow-start reduction bound (PRR-SSRB) lets it
//! grow back by at most one segment more than was delivered.

/// Per-episode PRR state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prr {
    /// Bytes delivered (acked or SACKed) since recovery began.
    delivered: u32,
    /// Bytes sent since recovery began.
    out: u32,
    /// Flight size when recovery began.
    recover_fs: u32,
}

impl Prr {
    pub(crate) fn start(flight: u32) -> Self {
        Self {
            delivered: 0,
            out: 0,
            recover_fs: flight.max(1),
        }
    }

    pub(crate) fn on_sent(&mut self, bytes: u32) {
        self.out = self.out.saturating_add(bytes);
    }

    /// The window for the ACK that just delivered `delivered` bytes: pipe plus what may be
    /// sent now.
    pub(crate) fn on_ack(&mut self, delivered: u32, pipe: u32, ssthresh: u32, mss: u32) -> u32 {
        self.delivered = self.delivered.saturating_add(delivered);
        let sndcnt = if pipe > ssthresh {
            let target = (u64::from(self.delivered) * u64::from(ssthresh))
                .div_ceil(u64::from(self.recover_fs));
            (target.min(u64::from(u32::MAX)) as u32).saturating_sub(self.out)
        } else {
            let limit = self
                .delivered
                .saturating_sub(self.out)
                .max(delivered)
                .saturating_add(mss);
            (ssthresh - pipe).min(limit)
        };
        pipe.saturating_add(sndcnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    #[test]
    fn sends_in_proportion_to_deliveries_while_the_pipe_is_above_ssthresh() {
        // RFC 6937 §3 example: 20 segments in flight, ssthresh 10 (halving), one lost.
        let mut prr = Prr::start(20 * MSS);
        let mut sent = 0;
        let mut pipe = 19 * MSS;
        for _ in 0..19 {
            let cwnd = prr.on_ack(MSS, pipe, 10 * MSS, MSS);
            let can = cwnd.saturating_sub(pipe);
            let n = (can / MSS) * MSS;
            prr.on_sent(n);
            sent += n;
            pipe = pipe - MSS + n;
        }
        // About one segment for every two delivered.
        assert!((9 * MSS..=10 * MSS).contains(&sent), "{sent}");
    }

    #[test]
    fn slow_start_reduction_bound_regrows_after_heavy_loss() {
        let mut prr = Prr::start(20 * MSS);
        // Pipe fell to 4 segments, far below ssthresh 10: at most delivered + 1 MSS.
        let cwnd = prr.on_ack(2 * MSS, 4 * MSS, 10 * MSS, MSS);
        assert_eq!(cwnd, 4 * MSS + 3 * MSS);
        prr.on_sent(3 * MSS);
        // Never past ssthresh.
        let cwnd = prr.on_ack(20 * MSS, 9 * MSS, 10 * MSS, MSS);
        assert_eq!(cwnd, 10 * MSS);
    }
}
