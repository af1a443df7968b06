//! The gateway's `YYYY-MM-DD HH:MM:SS` timestamps, without a date library.

/// Milliseconds since the Unix epoch. Read as UTC because the gateway does not say its zone.
pub(crate) fn parse_utc(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let separators_ok = bytes.len() == 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b' ' | b'T')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return None;
    }
    let number = |start: usize, end: usize| -> Option<u64> {
        let digits = &bytes[start..end];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let valid = year >= 1970
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    valid.then(|| {
        let days = days_from_civil(year, month, day);
        ((days * 24 + hour) * 60 + minute) * 60 * 1000 + second * 1000
    })
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_instants() {
        assert_eq!(parse_utc("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_utc("2023-10-27 10:00:00"), Some(1_698_400_800_000));
        assert_eq!(parse_utc("2024-02-29 23:59:59"), Some(1_709_251_199_000));
        assert_eq!(parse_utc("2000-03-01T00:00:00"), Some(951_868_800_000));
    }

    #[test]
    fn rejects_malformed_and_impossible_dates() {
        for text in [
            "",
            "2023-10-27",
            "2023/10/27 10:00:00",
            "2023-10-27 10:00:00Z",
            "2023-1a-27 10:00:00",
            "2023-+1-27 10:00:00",
            "2023-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "1900-02-29 00:00:00",
            "2023-10-00 00:00:00",
            "2023-10-27 24:00:00",
            "1969-12-31 23:59:59",
        ] {
            assert_eq!(parse_utc(text), None, "{text}");
        }
    }
}
