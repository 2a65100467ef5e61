//! Segment file names, `YYYYMMDD-HHMMSS.ts` in UTC (`-1`, `-2`, … before
//! `.ts` when two segments start within one second), and the calendar
//! arithmetic behind them. Pure functions: retention and the listing
//! trust only names these parse, so nothing else in a directory is ever
//! deleted or listed.

/// Seconds in a day.
const DAY: u64 = 86_400;
/// Highest collision suffix tried (`-99`); past it a second holds too many
/// segments to be anything but a loop.
pub const MAX_SUFFIX: u32 = 99;

/// The file name of a segment starting at `unix_secs` (UTC), with the
/// collision `suffix` (0: none).
pub fn segment_name(unix_secs: u64, suffix: u32) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs);
    let stem = format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
    if suffix == 0 {
        format!("{stem}.ts")
    } else {
        format!("{stem}-{suffix}.ts")
    }
}

/// The start (Unix seconds, UTC) a segment's file name says, or `None` for
/// any other name (only exact `YYYYMMDD-HHMMSS[-N].ts` with a real date).
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".ts")?;
    let b = stem.as_bytes();
    if b.len() < 15 || b[8] != b'-' {
        return None;
    }
    match b.get(15) {
        None => {}
        Some(b'-') => {
            let n = &stem[16..];
            let ok = !n.is_empty()
                && n.len() <= 2
                && n.bytes().all(|c| c.is_ascii_digit())
                && !n.starts_with('0');
            if !ok {
                return None;
            }
        }
        Some(_) => return None,
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = stem.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if y < 1970 || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    Some(days as u64 * DAY + h * 3600 + mi * 60 + s)
}

/// `unix_secs` as RFC 3339 in UTC: `2026-12-01T08:30:05Z`.
pub fn rfc3339(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Year, month, day, hour, minute, second of a Unix time (UTC).
fn civil(unix_secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (unix_secs / DAY) as i64;
    let rem = unix_secs % DAY;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn is_leap(y: u64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `civil_from_days`, eras of 400 years).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times_round_trip() {
        assert_eq!(segment_name(0, 0), "19700101-000000.ts");
        // 2024-02-29 23:59:59 (a leap day), and 2100-03-01 (2100 is not leap).
        assert_eq!(segment_name(1_709_251_199, 0), "20240229-235959.ts");
        assert_eq!(segment_name(1_709_251_199, 2), "20240229-235959-2.ts");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
        for t in (0..5_000_000_000u64).step_by(7_777_777) {
            for suffix in [0, 1, 42] {
                let n = segment_name(t, suffix);
                assert_eq!(parse_segment_name(&n), Some(t), "{n}");
            }
        }
    }

    #[test]
    fn only_segment_names_parse() {
        for other in [
            "20240229-235959.mp4",
            "20240229-235959.ts.part",
            "x20240229-235959.ts",
            "20240230-000000.ts",
            "21000229-000000.ts",
            "20241301-000000.ts",
            "20240101-240000.ts",
            "20240101-006000.ts",
            "2024010-1000000.ts",
            "20240101-000000-.ts",
            "20240101-000000-0.ts",
            "20240101-000000-100.ts",
            "20240101-000000-1a.ts",
            "20240101_000000.ts",
            "+0240101-000000.ts",
            "19691231-235959.ts",
            ".ts",
            "",
            "sluice.toml",
        ] {
            assert_eq!(parse_segment_name(other), None, "{other:?}");
        }
        assert!(parse_segment_name("20000229-120000.ts").is_some());
        assert!(parse_segment_name("20240101-000000-99.ts").is_some());
    }
}
