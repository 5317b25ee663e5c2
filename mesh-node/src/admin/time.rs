//! RFC 3339 (UTC) rendering of Unix times, for JSON and tables.
use serde::Serializer;

/// `2024-05-01T12:00:00Z` for seconds since the epoch.
pub fn rfc3339(unix_seconds: i64) -> String {
    let (days, secs) = (unix_seconds.div_euclid(86_400), unix_seconds.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2024-05-01T12:00:00.123Z` for milliseconds since the epoch.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = rfc3339((unix_ms / 1000) as i64);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), unix_ms % 1000)
}

pub fn serialize_rfc3339<S: Serializer>(unix_seconds: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*unix_seconds))
}

/// Gregorian date of a day count from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_ms(1_714_564_800_042), "2024-05-01T12:00:00.042Z");
    }
}
