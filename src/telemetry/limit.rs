//! Rate limits for log lines that a peer can make repeat per frame or per
//! message (timestamp jumps, FFmpeg's per-frame warnings): a few lines per
//! interval, and the next line that gets out says how many were held back.
//! Sans-IO: the caller passes the time.

use std::time::{Duration, Instant};

/// How often repeated warnings of one stream may reach the log.
pub const REPEATED_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Lets `burst` lines through per `interval` and counts the rest.
///
/// Call [`LogLimiter::check`] for every occurrence; log only when it
/// returns `Some(suppressed)`, with `suppressed` as a field (how many
/// occurrences since the last logged one were not logged).
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// At most `burst` (at least 1) lines per `interval`.
    pub fn new(interval: Duration, burst: u32) -> Self {
        LogLimiter {
            interval,
            burst: burst.max(1),
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// One line per [`REPEATED_WARNING_INTERVAL`].
    pub fn per_interval() -> Self {
        Self::new(REPEATED_WARNING_INTERVAL, 1)
    }

    /// An occurrence at `now`: `Some(n)` to log it (standing for `n` more
    /// that were suppressed since the last logged one), `None` to drop it.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let open = self
            .window_start
            .is_some_and(|start| now.saturating_duration_since(start) < self.interval);
        if !open {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Occurrences dropped since the last logged one.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_count_of_the_dropped_ones() {
        let t0 = Instant::now();
        let mut l = LogLimiter::per_interval();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(l.check(ms(0)), Some(0));
        // 30 per second for 12 s: one line per 5 s.
        let mut logged = vec![(0, 0)];
        for i in 1..360u64 {
            if let Some(n) = l.check(ms(i * 33)) {
                logged.push((i * 33, n));
            }
        }
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert_eq!(logged[1].1 + logged[2].1 + 3 + l.suppressed(), 360);
        assert!(logged[1].0 >= 5000 && logged[2].0 >= 10_000, "{logged:?}");
        assert_eq!(logged[1].1, 151, "{logged:?}");
    }

    #[test]
    fn a_burst_passes_then_nothing_until_the_interval_ends() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(1), 3);
        let got: Vec<Option<u64>> = (0..6).map(|_| l.check(t0)).collect();
        assert_eq!(got, [Some(0), Some(0), Some(0), None, None, None]);
        assert_eq!(l.suppressed(), 3);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.check(later), Some(3));
        assert_eq!(l.check(later), Some(0));
        // Time going backwards (clock of another thread) opens nothing.
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0), None);
        // A zero burst still lets one line through.
        let mut z = LogLimiter::new(Duration::from_secs(1), 0);
        assert_eq!(z.check(t0), Some(0));
        assert_eq!(z.check(t0), None);
    }
}
