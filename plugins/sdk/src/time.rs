//! The time formats providers send, read and written without a date library. Every instant
//! is milliseconds since the Unix epoch; instants before 1970 are not representable.

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_DAY: u64 = 86_400_000;

/// Unix time in whichever unit a provider used: numbers below 10^11 are seconds (until the
/// year 5138), larger ones milliseconds.
pub fn unix_time_ms(value: u64) -> Option<u64> {
    if value < 100_000_000_000 {
        Some(value * 1000)
    } else {
        Some(value)
    }
}

/// A timestamp as Unix seconds or milliseconds in digits, or as a date and time that
/// [`parse_datetime`] reads; a time without a zone is taken as UTC.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return unix_time_ms(text.parse().ok()?);
    }
    parse_datetime(text, 0)
}

/// Reads `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.fraction]]` (or `T` between date and time) and
/// `DD.MM.YYYY HH:MM[:SS]`, followed by an optional zone: `Z`, `UTC`, `GMT`, `+HH:MM`, `+HHMM`
/// or `+HH`. A time without a zone is local time at `assumed_offset_minutes` east of UTC.
pub fn parse_datetime(text: &str, assumed_offset_minutes: i32) -> Option<u64> {
    let text = text.trim();
    let (date, rest) = split_date(text)?;
    let (year, month, day) = date;
    let rest = rest.trim_start_matches(['T', 't', ' ']);
    let (clock, zone) = split_zone(rest);
    let (hour, minute, second, millis) = parse_clock(clock.trim())?;
    let offset_minutes = match zone.trim() {
        "" => i64::from(assumed_offset_minutes),
        zone => parse_offset(zone)?,
    };
    let valid = year >= 1970
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !valid {
        return None;
    }
    let local = days_from_civil(year, month, day) * MS_PER_DAY
        + ((hour * 60 + minute) * 60 + second.min(59)) * 1000
        + millis;
    let utc = i64::try_from(local).ok()? - offset_minutes * MS_PER_MINUTE;
    u64::try_from(utc).ok()
}

/// `(year, month, day)` and what follows the date.
fn split_date(text: &str) -> Option<((u64, u64, u64), &str)> {
    let bytes = text.as_bytes();
    let field = |range: std::ops::Range<usize>| text.get(range).and_then(digits);
    let date = if bytes.get(4) == Some(&b'-') && bytes.get(7) == Some(&b'-') {
        (field(0..4)?, field(5..7)?, field(8..10)?)
    } else if bytes.get(2) == Some(&b'.') && bytes.get(5) == Some(&b'.') {
        (field(6..10)?, field(3..5)?, field(0..2)?)
    } else {
        return None;
    };
    Some((date, text.get(10..)?))
}

/// Splits `12:00:00.5+02:00` into the clock and the zone.
fn split_zone(rest: &str) -> (&str, &str) {
    let zone_start = rest
        .char_indices()
        .find(|(_, c)| matches!(c, '+' | '-' | 'Z' | 'z' | 'U' | 'G' | ' '))
        .map_or(rest.len(), |(index, _)| index);
    rest.split_at(zone_start)
}

/// `HH:MM[:SS[.fraction]]`, or nothing for midnight.
fn parse_clock(clock: &str) -> Option<(u64, u64, u64, u64)> {
    if clock.is_empty() {
        return Some((0, 0, 0, 0));
    }
    let (clock, fraction) = clock.split_once(['.', ',']).unwrap_or((clock, ""));
    let mut parts = clock.split(':');
    let hour = digits(parts.next()?)?;
    let minute = digits(parts.next()?)?;
    let second = parts.next().map(digits).unwrap_or(Some(0))?;
    if parts.next().is_some() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |n, digit| n * 10 + u64::from(digit - b'0'));
    Some((hour, minute, second, millis))
}

/// Minutes east of UTC.
fn parse_offset(zone: &str) -> Option<i64> {
    if ["Z", "z", "UTC", "GMT"].contains(&zone) {
        return Some(0);
    }
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let (hours, minutes) = match (rest.len(), rest.split_once(':')) {
        (_, Some((hours, minutes))) => (hours, minutes),
        (4, None) => (rest.get(..2)?, rest.get(2..)?),
        (1 | 2, None) => (rest, "00"),
        _ => return None,
    };
    let (hours, minutes) = (digits(hours)?, digits(minutes)?);
    (hours <= 14 && minutes < 60).then(|| sign * i64::try_from(hours * 60 + minutes).unwrap_or(0))
}

/// A run of 1 to 4 ASCII digits.
fn digits(text: &str) -> Option<u64> {
    ((1..=4).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD HH:MM:SS` at `offset_minutes` east of UTC, as SmsGateway24 and Ejoin write it.
pub fn format_datetime(ms: u64, offset_minutes: i32) -> String {
    let local = i64::try_from(ms / 1000)
        .unwrap_or(i64::MAX / 2)
        .saturating_add(i64::from(offset_minutes) * 60)
        .max(0)
        .unsigned_abs();
    let (days, seconds) = (local / 86_400, local % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's IMF-fixdate).
pub fn parse_http_date(text: &str) -> Option<u64> {
    let mut fields = text.split_whitespace();
    let _weekday = fields.next()?;
    let day = digits(fields.next()?)?;
    let month = fields.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name.eq_ignore_ascii_case(month))?;
    let year = fields.next()?;
    let clock = fields.next()?;
    let zone = fields.next()?;
    if year.len() != 4 || fields.next().is_some() || !zone.eq_ignore_ascii_case("GMT") {
        return None;
    }
    parse_datetime(&format!("{year}-{:02}-{day:02} {clock}Z", month + 1), 0)
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`, for years from 1970 on).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Counting years from March puts the leap day at the end of the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`] (Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_datetime("1970-01-01 00:00:00", 0), Some(0));
        assert_eq!(
            parse_datetime("2023-10-27 10:00:00", 0),
            Some(1_698_400_800_000)
        );
        assert_eq!(
            parse_datetime("2024-02-29 23:59:59", 0),
            Some(1_709_251_199_000)
        );
        assert_eq!(
            parse_datetime("2000-03-01T00:00:00", 0),
            Some(951_868_800_000)
        );
        assert_eq!(parse_datetime("2000-03-01", 0), Some(951_868_800_000));
    }

    #[test]
    fn provider_formats() {
        let noon = Some(1_773_230_400_000);
        // GotSMS
        assert_eq!(parse_datetime("2026-03-11T12:00:00+00:00", 0), noon);
        assert_eq!(parse_datetime("2026-03-11T14:00:00+02:00", 0), noon);
        assert_eq!(parse_datetime("2026-03-11T07:00:00-0500", 0), noon);
        assert_eq!(parse_datetime("2026-03-11T12:00:00Z", 0), noon);
        // SmsGateway24: microseconds, and the `humanformat` day-first form
        assert_eq!(parse_datetime("2026-03-11 12:00:00.000000", 0), noon);
        assert_eq!(
            parse_datetime("2026-03-11 12:00:00.250", 0),
            Some(1_773_230_400_250)
        );
        assert_eq!(parse_datetime("11.03.2026 12:00:00", 0), noon);
        // a local time without zone, at the offset the caller knows
        assert_eq!(parse_datetime("2026-03-11 13:00:00", 60), noon);
        assert_eq!(
            parse_datetime("2026-03-11 13:00:00 UTC", 60),
            Some(1_773_234_000_000)
        );
        assert_eq!(parse_datetime("2026-03-11 12:00", 0), noon);
    }

    #[test]
    fn rejects_malformed_and_impossible_dates() {
        for text in [
            "",
            "2023/10/27 10:00:00",
            "2023-10-27 10:00:00Q",
            "2023-1a-27 10:00:00",
            "2023-+1-27 10:00:00",
            "2023-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "1900-02-29 00:00:00",
            "2023-10-00 00:00:00",
            "2023-10-27 24:00:00",
            "2023-10-27 10:00:00:00",
            "2023-10-27 10:00:00.5x",
            "2023-10-27 10:00:00+25:00",
            "1969-12-31 23:59:59",
            "1970-01-01 00:30:00+01:00",
            "yesterday",
            "2023-10-2",
        ] {
            assert_eq!(parse_datetime(text, 0), None, "{text}");
        }
    }

    #[test]
    fn timestamps_in_any_unit() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp(" 1700000000123 "), Some(1_700_000_000_123));
        assert_eq!(
            parse_timestamp("2023-10-27 10:00:00"),
            Some(1_698_400_800_000)
        );
        assert_eq!(parse_timestamp("99999999999999999999999"), None);
        assert_eq!(parse_timestamp("-5"), None);
        assert_eq!(unix_time_ms(0), Some(0));
    }

    #[test]
    fn formats_local_times() {
        assert_eq!(format_datetime(1_698_400_800_000, 0), "2023-10-27 10:00:00");
        assert_eq!(
            format_datetime(1_698_400_800_999, 120),
            "2023-10-27 12:00:00"
        );
        assert_eq!(format_datetime(0, -60), "1970-01-01 00:00:00");
        assert_eq!(format_datetime(1_709_251_199_000, 0), "2024-02-29 23:59:59");
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_http_date("120"), None);
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(seconds in 0u64..8_000_000_000, offset in -840i32..=840) {
            let ms = seconds * 1000;
            let written = format_datetime(ms, offset);
            prop_assert_eq!(parse_datetime(&written, offset), Some(ms), "{}", written);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,40}", offset in any::<i32>()) {
            let _ = parse_datetime(&text, offset);
            let _ = parse_timestamp(&text);
            let _ = parse_http_date(&text);
        }

        #[test]
        fn date_shaped_text_never_panics(text in "[0-9]{2,4}[-.][0-9]{1,2}[-.][0-9]{1,4}[ T]?[0-9:.,+Z-]{0,16}") {
            let _ = parse_datetime(&text, 0);
        }
    }
}
