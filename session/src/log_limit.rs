//! Rate-limited warnings, for every message an app or the network can
//! trigger: at most one line per reason per interval, carrying the count
//! of the lines suppressed since the last one, so a hostile peer can make
//! the log grow by a bounded number of lines, not by its message rate.
//!
//! [`warn_limited!`](crate::warn_limited) is the way to write one; the
//! limiter behind it is process-wide (a lock taken only on these error
//! paths). [`LogLimiter`] is the plain-data state, testable on its own.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// One line per reason at most this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Reasons tracked at most; past it, unknown reasons share one slot (so a
/// caller that builds reasons from input cannot grow the table).
const MAX_REASONS: usize = 256;
const OVERFLOW_REASON: &str = "other";

#[derive(Debug, Clone, Copy)]
struct Reason {
    /// When the next line may be written.
    next: Instant,
    /// Lines not written since the last one.
    suppressed: u64,
}

/// Which lines may be written now.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    reasons: HashMap<&'static str, Reason>,
    suppressed_total: u64,
}

impl LogLimiter {
    /// At most one line per reason per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            reasons: HashMap::new(),
            suppressed_total: 0,
        }
    }

    /// `Some(n)` when a line for `reason` may be written at `now`, `n`
    /// lines having been suppressed since the last one; `None` when this
    /// one is suppressed (and counted).
    pub fn allow(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        let key = if self.reasons.len() < MAX_REASONS || self.reasons.contains_key(reason) {
            reason
        } else {
            OVERFLOW_REASON
        };
        let r = self.reasons.entry(key).or_insert(Reason {
            next: now,
            suppressed: 0,
        });
        if now >= r.next {
            let n = r.suppressed;
            r.suppressed = 0;
            r.next = now + self.interval;
            Some(n)
        } else {
            r.suppressed += 1;
            self.suppressed_total += 1;
            None
        }
    }

    /// Lines suppressed so far, all reasons.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }
}

fn global() -> &'static Mutex<LogLimiter> {
    static LIMITER: OnceLock<Mutex<LogLimiter>> = OnceLock::new();
    LIMITER.get_or_init(|| Mutex::new(LogLimiter::new(LOG_INTERVAL)))
}

/// The process-wide limiter's verdict for `reason` now (see
/// [`LogLimiter::allow`]).
pub fn allow(reason: &'static str) -> Option<u64> {
    global()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(reason, Instant::now())
}

/// Lines the process-wide limiter suppressed so far (for metrics).
pub fn suppressed_total() -> u64 {
    global()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .suppressed_total()
}

/// `tracing::warn!` at most once per second per `reason` (a `&'static
/// str`), with `suppressed = N` for the lines dropped since the last one:
///
/// ```ignore
/// warn_limited!("app rx queue corrupted", app = 3, "app rx queue: {e}");
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($reason:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $crate::log_limit::allow($reason) {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_with_the_count_of_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.allow("a", t0 + Duration::from_micros(i)), None);
        }
        // Another reason is not held back by the first.
        assert_eq!(l.allow("b", t0), Some(0));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(1)), Some(1000));
        assert_eq!(l.allow("a", t0 + Duration::from_millis(1500)), None);
        assert_eq!(l.suppressed_total(), 1001);
    }

    #[test]
    fn the_reason_table_is_bounded() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let names: Vec<&'static str> = (0..MAX_REASONS + 50)
            .map(|i| &*Box::leak(format!("r{i}").into_boxed_str()))
            .collect();
        let allowed = names.iter().filter(|n| l.allow(n, t0).is_some()).count();
        assert!(l.reasons.len() <= MAX_REASONS + 1);
        // The overflow reasons share one slot: one line for all of them.
        assert_eq!(allowed, MAX_REASONS + 1);
    }
}
