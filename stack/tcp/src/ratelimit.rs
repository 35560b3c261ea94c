//! A token bucket for replies an attacker could otherwise multiply (RSTs, challenge ACKs).

use smoltcp::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    per_second: u32,
    tokens: u32,
    refilled_at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        Self {
            per_second,
            tokens: per_second,
            refilled_at: now,
        }
    }

    /// Takes a token if one is left.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if now > self.refilled_at {
            let elapsed = (now - self.refilled_at).total_micros();
            let new = elapsed.saturating_mul(u64::from(self.per_second)) / 1_000_000;
            if new > 0 {
                self.tokens = (u64::from(self.tokens) + new).min(u64::from(self.per_second)) as u32;
                self.refilled_at = now;
            }
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_rate_then_refills_over_time() {
        let t = Instant::from_millis;
        let mut rl = RateLimiter::new(10, t(0));
        assert_eq!((0..20).filter(|_| rl.allow(t(0))).count(), 10);
        assert!(!rl.allow(t(50)));
        assert!(rl.allow(t(100)));
        assert_eq!((0..20).filter(|_| rl.allow(t(5000))).count(), 10);
    }
}
