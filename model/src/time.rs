//! UTC calendar arithmetic for partition names and timestamps, without a date-time dependency.

/// A UTC date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
}

const MS_PER_DAY: i64 = 86_400_000;

/// The UTC calendar fields of an epoch-millisecond instant (proleptic Gregorian).
pub fn civil_from_millis(epoch_ms: i64) -> Civil {
    let days = epoch_ms.div_euclid(MS_PER_DAY);
    let in_day = epoch_ms.rem_euclid(MS_PER_DAY);
    // Days to civil date, counting in 400-year eras that start on March 1st so that the leap
    // day falls at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (in_day / 3_600_000) as u32,
        minute: (in_day / 60_000 % 60) as u32,
        second: (in_day / 1000 % 60) as u32,
        millisecond: (in_day % 1000) as u32,
    }
}

/// Epoch milliseconds of the start of a UTC date.
pub fn millis_from_civil_date(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era - 719_468) * MS_PER_DAY
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the demo's `event_time` format.
pub fn iso8601(epoch_ms: i64) -> String {
    let c = civil_from_millis(epoch_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millisecond
    )
}

/// Parses an instant given by a person: epoch milliseconds, a UTC date (`2026-12-01`), or a UTC
/// date and time (`2026-12-01T10:00Z`, `2026-12-01T10:00:30.5Z`, `+00:00` instead of `Z`).
pub fn parse_instant(text: &str) -> Option<i64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let midnight = parse_date(date)?;
    let Some(time) = time else {
        return Some(midnight);
    };
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let mut parts = time.splitn(3, ':');
    let hour: i64 = parts.next()?.parse().ok()?;
    let minute: i64 = parts.next()?.parse().ok()?;
    let seconds: f64 = match parts.next() {
        Some(seconds) => seconds.parse().ok()?,
        None => 0.0,
    };
    if !(0..24).contains(&hour) || !(0..60).contains(&minute) || !(0.0..60.0).contains(&seconds) {
        return None;
    }
    Some(midnight + hour * 3_600_000 + minute * 60_000 + (seconds * 1000.0).round() as i64)
}

/// Parses a UTC date, `YYYY-MM-DD`, into its midnight in epoch milliseconds; `None` for anything
/// else, a day past its month's end included (it would otherwise roll over into the next month).
pub fn parse_date(date: &str) -> Option<i64> {
    let mut fields = date.splitn(3, '-');
    let year: i64 = fields.next()?.parse().ok()?;
    let month: u32 = fields.next()?.parse().ok()?;
    let day: u32 = fields.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let midnight = millis_from_civil_date(year, month, day);
    (civil_from_millis(midnight).day == day).then_some(midnight)
}

/// The current time in epoch milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_766_919_066_968), "2025-12-28T10:51:06.968Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso8601(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn instants_parse_the_way_people_write_them() {
        assert_eq!(parse_instant("1766919066968"), Some(1_766_919_066_968));
        assert_eq!(
            parse_instant("2025-12-28T10:51:06.968Z"),
            Some(1_766_919_066_968)
        );
        assert_eq!(parse_instant("2025-12-28T10:51Z"), Some(1_766_919_060_000));
        assert_eq!(
            parse_instant("2025-12-28 10:51:00+00:00"),
            Some(1_766_919_060_000)
        );
        assert_eq!(parse_instant("2025-12-28"), Some(1_766_880_000_000));
        for bad in [
            "",
            "2025-02-30",
            "2025-13-01",
            "2025-12-28T10:51",
            "2025-12-28T24:00Z",
            "yesterday",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_round_trip_for_every_day_of_four_centuries() {
        let mut ms = millis_from_civil_date(1900, 1, 1);
        let end = millis_from_civil_date(2300, 1, 1);
        let mut previous = civil_from_millis(ms - MS_PER_DAY);
        while ms < end {
            let civil = civil_from_millis(ms);
            assert_eq!(
                millis_from_civil_date(civil.year, civil.month, civil.day),
                ms
            );
            assert_ne!(
                (civil.year, civil.month, civil.day),
                (previous.year, previous.month, previous.day)
            );
            previous = civil;
            ms += MS_PER_DAY;
        }
    }
}
