//! Unwraps RTMP's 32-bit wrapping millisecond timestamps onto a monotonic-ish 64-bit timeline.
//! Each step is the signed wrapping difference from the previous raw value, so the 2^24 extended-timestamp
//! boundary and the 2^32 wrap (~49.7 days) are continuous; small backwards jitter passes through and large jumps are re-based.

use super::MediaError;

/// Result of unwrapping one raw timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwrapped {
    /// Position on the 64-bit millisecond timeline.
    pub ts: u64,
    /// `Some(step)` when the raw step exceeded the policy and the timeline was
    /// re-based (the signed raw step in ms, for logging and counting).
    pub jump_ms: Option<i64>,
}

/// Per-track timestamp unwrapper (design.md, "Timestamps").
///
/// The first timestamp maps to itself so a publish that starts near 2^24
/// keeps its values. Every later timestamp moves the timeline by
/// `ts.wrapping_sub(prev_raw) as i32`: RTMP timestamps are modulo 2^32, so
/// the shortest signed distance is the intended step, and crossing 2^32 (or
/// the 2^24 extended-timestamp threshold, which is not a wrap at all)
/// continues smoothly. Backwards steps up to `max_jump_ms` are jitter (B-frame
/// reordering by sloppy encoders, interleaving) and are returned as-is,
/// saturating at 0. Larger steps are discontinuities: the timeline holds its
/// previous value, reports the step, and continues from the new raw value.
#[derive(Debug, Clone)]
pub struct Timeline {
    max_jump_ms: u32,
    /// (last raw timestamp, its unwrapped value)
    last: Option<(u32, u64)>,
}

impl Timeline {
    /// A timeline that treats any step larger than `max_jump_ms` (either
    /// direction) as a discontinuity.
    pub fn new(max_jump_ms: u32) -> Self {
        Timeline {
            max_jump_ms,
            last: None,
        }
    }

    /// The policy this timeline enforces.
    pub fn max_jump_ms(&self) -> u32 {
        self.max_jump_ms
    }

    /// The last unwrapped value, if any timestamp was seen.
    pub fn last(&self) -> Option<u64> {
        self.last.map(|(_, ts)| ts)
    }

    /// Forgets history: the next timestamp maps to itself again.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Maps a raw 32-bit RTMP timestamp onto the 64-bit timeline.
    pub fn unwrap(&mut self, ts: u32) -> Unwrapped {
        let Some((prev_raw, prev)) = self.last else {
            self.last = Some((ts, u64::from(ts)));
            return Unwrapped {
                ts: u64::from(ts),
                jump_ms: None,
            };
        };
        // Reinterpreting the modular difference as i32 picks the shorter way
        // around the 2^32 circle.
        let step = ts.wrapping_sub(prev_raw) as i32;
        if step.unsigned_abs() > self.max_jump_ms {
            // Re-base: keep the timeline where it was; the next step is
            // measured from the new raw value.
            self.last = Some((ts, prev));
            return Unwrapped {
                ts: prev,
                jump_ms: Some(i64::from(step)),
            };
        }
        let next = if step >= 0 {
            prev.saturating_add(u64::from(step.unsigned_abs()))
        } else {
            prev.saturating_sub(u64::from(step.unsigned_abs()))
        };
        self.last = Some((ts, next));
        Unwrapped {
            ts: next,
            jump_ms: None,
        }
    }

    /// The error describing a jump reported in [`Unwrapped::jump_ms`], for
    /// logging: "timestamp jumped by N ms; policy allows at most M ms".
    pub fn jump_error(&self, jump_ms: i64) -> MediaError {
        MediaError::TimestampJump {
            jump_ms,
            max_jump_ms: self.max_jump_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u32 = 3_600_000;

    #[test]
    fn first_timestamp_maps_to_itself() {
        let mut t = Timeline::new(10_000);
        assert_eq!(t.last(), None);
        let u = t.unwrap(0x00FF_F830);
        assert_eq!(
            u,
            Unwrapped {
                ts: 0x00FF_F830,
                jump_ms: None
            }
        );
        assert_eq!(t.last(), Some(0x00FF_F830));
    }

    #[test]
    fn crossing_the_extended_timestamp_boundary_is_continuous() {
        // 2^24 is where RTMP switches to the extended timestamp field; the
        // values themselves do not wrap there.
        let mut t = Timeline::new(10_000);
        let start = 0x00FF_FFFF - 1000;
        let mut raw = start;
        let mut prev = None;
        while raw <= 0x00FF_FFFF + 2000 {
            let u = t.unwrap(raw);
            assert_eq!(u.ts, u64::from(raw));
            assert_eq!(u.jump_ms, None);
            if let Some(p) = prev {
                assert_eq!(u.ts - p, 33);
            }
            prev = Some(u.ts);
            raw += 33;
        }
        assert!(prev.unwrap() > 1 << 24);
    }

    #[test]
    fn wrapping_past_2_pow_32_continues_upwards() {
        let mut t = Timeline::new(10_000);
        assert_eq!(t.unwrap(u32::MAX - 9).ts, (1u64 << 32) - 10);
        let u = t.unwrap(5);
        assert_eq!(
            u,
            Unwrapped {
                ts: (1u64 << 32) + 5,
                jump_ms: None
            }
        );
        assert_eq!(t.unwrap(40).ts, (1u64 << 32) + 40);
    }

    #[test]
    fn starting_at_0xffff_fff0_wraps_smoothly() {
        let mut t = Timeline::new(1_000);
        let mut raw: u32 = 0xFFFF_FFF0;
        let mut expect: u64 = 0xFFFF_FFF0;
        for _ in 0..10 {
            let u = t.unwrap(raw);
            assert_eq!(u.ts, expect);
            assert_eq!(u.jump_ms, None);
            raw = raw.wrapping_add(7);
            expect += 7;
        }
        assert!(expect > 1 << 32);
    }

    #[test]
    fn small_backwards_jitter_passes_through() {
        let mut t = Timeline::new(1_000);
        assert_eq!(t.unwrap(1_000).ts, 1_000);
        assert_eq!(t.unwrap(1_033).ts, 1_033);
        let u = t.unwrap(1_028);
        assert_eq!(
            u,
            Unwrapped {
                ts: 1_028,
                jump_ms: None
            }
        );
        assert_eq!(t.unwrap(1_066).ts, 1_066);
    }

    #[test]
    fn backwards_jitter_near_zero_saturates() {
        let mut t = Timeline::new(1_000);
        assert_eq!(t.unwrap(3).ts, 3);
        // 3 -> u32::MAX - 1 is a step of -5; the timeline cannot go below 0.
        assert_eq!(t.unwrap(u32::MAX - 1).ts, 0);
        // Continues from the new raw value: +10.
        assert_eq!(t.unwrap(8).ts, 10);
    }

    #[test]
    fn one_hour_forward_jump_is_rebased_and_reported() {
        let mut t = Timeline::new(10_000);
        assert_eq!(t.unwrap(5_000).ts, 5_000);
        assert_eq!(t.unwrap(5_033).ts, 5_033);
        let u = t.unwrap(5_033 + HOUR_MS);
        assert_eq!(
            u,
            Unwrapped {
                ts: 5_033,
                jump_ms: Some(i64::from(HOUR_MS))
            }
        );
        // The stream continues smoothly from the new raw base.
        assert_eq!(t.unwrap(5_066 + HOUR_MS).ts, 5_066);
        assert_eq!(
            t.jump_error(u.jump_ms.unwrap()).to_string(),
            "timestamp jumped by 3600000 ms; policy allows at most 10000 ms"
        );
    }

    #[test]
    fn one_hour_backward_jump_is_rebased_and_reported() {
        let mut t = Timeline::new(10_000);
        let base = 2 * HOUR_MS;
        assert_eq!(t.unwrap(base).ts, u64::from(base));
        let u = t.unwrap(base - HOUR_MS);
        assert_eq!(
            u,
            Unwrapped {
                ts: u64::from(base),
                jump_ms: Some(-i64::from(HOUR_MS))
            }
        );
        assert_eq!(t.unwrap(base - HOUR_MS + 40).ts, u64::from(base) + 40);
        assert_eq!(
            t.jump_error(-3_600_000).to_string(),
            "timestamp jumped by -3600000 ms; policy allows at most 10000 ms"
        );
    }

    #[test]
    fn step_equal_to_policy_is_not_a_jump() {
        let mut t = Timeline::new(100);
        t.unwrap(0);
        assert_eq!(t.unwrap(100).jump_ms, None);
        assert_eq!(t.unwrap(201).jump_ms, Some(101));
    }

    #[test]
    fn extreme_steps_never_panic() {
        let mut t = Timeline::new(u32::MAX);
        let mut x: u32 = 0x9E37_79B9;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let _ = t.unwrap(x);
        }
        let mut t = Timeline::new(0);
        for raw in [0, u32::MAX, 0x8000_0000, 0x7FFF_FFFF, 1] {
            let _ = t.unwrap(raw);
        }
        t.reset();
        assert_eq!(t.unwrap(42).ts, 42);
    }
}
