//! Wall-clock helpers: Unix seconds now, and RFC 3339 UTC timestamps in config and policies.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (or `+00:00`, optional fraction) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// (year, month, day) of Unix seconds, UTC (civil from days, Howard Hinnant's algorithm).
pub fn civil(unix: u64) -> (i64, u32, u32) {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month) of Unix seconds, UTC.
pub fn year_month(unix: u64) -> (i64, u32) {
    let (y, m, _) = civil(unix);
    (y, m)
}

/// `YYYY-MM-DD` of Unix seconds, UTC.
pub fn date(unix: u64) -> String {
    let (y, m, d) = civil(unix);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds (what `parse_rfc3339` reads back).
pub fn rfc3339(unix: u64) -> String {
    let s = unix % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(unix),
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses() {
        assert_eq!(super::parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        for t in [0, 59, 86_399, 951_782_400, 1_798_761_599] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(t)), Some(t));
        }
        assert_eq!(super::rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(
            super::parse_rfc3339("2027-01-01T00:00:00Z"),
            Some(1_798_761_600)
        );
        assert_eq!(
            super::parse_rfc3339("2024-02-29T12:30:15.25+00:00"),
            Some(1_709_209_815)
        );
        assert_eq!(super::parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(super::date(1_709_209_815), "2024-02-29");
        assert_eq!(super::date(1_798_761_599), "2026-12-31");
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::parse_rfc3339("2024-01-01T00:00:00+02:00"), None);
    }
}
