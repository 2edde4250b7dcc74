//! Validation of everything a browser sends: page ids, time ranges and image sizes.
//!
//! Every value is checked before an engine sees it, and every problem becomes a
//! [`ParamError`] that names the parameter, so the API can answer with a clear 400.

use std::fmt;

use clickheatmap_model::time::millis_from_civil_date;
pub use clickheatmap_model::time::now_ms;
use clickheatmap_table::schema::TimeRange;

/// Longest page id, in bytes (the aggregator's default `limits.maxPageIdBytes`).
pub const MAX_PAGE_ID_BYTES: usize = 256;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Longest time range one query may cover: a month of windows is plenty for a heatmap, and it
/// keeps an Athena scan (and a local read) bounded.
pub const MAX_RANGE_MS: i64 = 31 * DAY_MS;

/// The range used when the request names none: the demo query's last hour.
pub const DEFAULT_RANGE_MS: i64 = HOUR_MS;

/// Earliest instant a range may start at (2000-01-01T00:00:00Z): anything before is a typo.
pub const EARLIEST_MS: i64 = 946_684_800_000;

/// How far past the current time a range may end (clock skew between browser and server).
pub const FUTURE_SLACK_MS: i64 = DAY_MS;

/// Largest PNG side the viewer renders (the renderer allows more; this bounds memory per request).
pub const MAX_PNG_SIDE: u32 = 4096;

/// A request parameter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("the `page` parameter is required")]
    MissingPage,
    #[error("the page id is {bytes} bytes long; at most {MAX_PAGE_ID_BYTES} are allowed")]
    PageTooLong { bytes: usize },
    #[error(
        "the page id contains {found:?}; allowed are letters, digits and - _ . : / ~ @ + % = , !"
    )]
    PageCharacter { found: char },
    #[error(
        "`{name}` is {value:?}; write epoch milliseconds (1766919066968) or UTC ISO-8601 (2025-12-28T10:51:06Z)"
    )]
    BadInstant { name: &'static str, value: String },
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error("the time range covers {days:.1} days; at most 31 days are allowed")]
    RangeTooLong { days: f64 },
    #[error("`from` is before 2000-01-01T00:00:00Z")]
    TooEarly,
    #[error("`to` is more than a day in the future")]
    TooLate,
    #[error("`{name}` is {value:?}; it must be a whole number of pixels from 1 to {MAX_PNG_SIDE}")]
    BadImageSide { name: &'static str, value: String },
    #[error("`{name}` is {value:?}; write true or false")]
    BadFlag { name: &'static str, value: String },
}

impl ParamError {
    /// The request parameter the problem is about.
    pub fn param(&self) -> &'static str {
        match self {
            ParamError::MissingPage
            | ParamError::PageTooLong { .. }
            | ParamError::PageCharacter { .. } => "page",
            ParamError::BadInstant { name, .. }
            | ParamError::BadImageSide { name, .. }
            | ParamError::BadFlag { name, .. } => name,
            ParamError::EmptyRange | ParamError::RangeTooLong { .. } | ParamError::TooEarly => {
                "from"
            }
            ParamError::TooLate => "to",
        }
    }
}

/// A validated page id: 1 to [`MAX_PAGE_ID_BYTES`] bytes of letters, digits and a few URL-ish
/// punctuation characters. No quotes, backslashes, spaces or control characters, so a page id
/// is safe in a file name, a log line and (quoted) in a SQL literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageId(String);

impl PageId {
    pub fn parse(value: Option<&str>) -> Result<PageId, ParamError> {
        let value = value.ok_or(ParamError::MissingPage)?;
        if value.is_empty() {
            return Err(ParamError::MissingPage);
        }
        if value.len() > MAX_PAGE_ID_BYTES {
            return Err(ParamError::PageTooLong { bytes: value.len() });
        }
        if let Some(found) = value.chars().find(|c| !page_id_char(*c)) {
            return Err(ParamError::PageCharacter { found });
        }
        Ok(PageId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn page_id_char(c: char) -> bool {
    c.is_alphanumeric() || "-_.:/~@+%=,!".contains(c)
}

/// A validated time range: windows whose `window_end` lies in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl QueryRange {
    /// Parses `from`/`to`; a missing `to` is now, a missing `from` is an hour before `to`.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        now_ms: i64,
    ) -> Result<QueryRange, ParamError> {
        let to_ms = match to {
            Some(value) => parse_instant("to", value)?,
            None => now_ms,
        };
        let from_ms = match from {
            Some(value) => parse_instant("from", value)?,
            None => to_ms.saturating_sub(DEFAULT_RANGE_MS),
        };
        QueryRange::new(from_ms, to_ms, now_ms)
    }

    /// Checks an already parsed range.
    pub fn new(from_ms: i64, to_ms: i64, now_ms: i64) -> Result<QueryRange, ParamError> {
        if from_ms >= to_ms {
            return Err(ParamError::EmptyRange);
        }
        if from_ms < EARLIEST_MS {
            return Err(ParamError::TooEarly);
        }
        if to_ms > now_ms.saturating_add(FUTURE_SLACK_MS) {
            return Err(ParamError::TooLate);
        }
        let length = to_ms - from_ms;
        if length > MAX_RANGE_MS {
            return Err(ParamError::RangeTooLong {
                days: length as f64 / DAY_MS as f64,
            });
        }
        Ok(QueryRange { from_ms, to_ms })
    }

    pub fn time_range(&self) -> TimeRange {
        TimeRange {
            from_ms: Some(self.from_ms),
            to_ms: Some(self.to_ms),
        }
    }
}

/// Epoch milliseconds, or a UTC ISO-8601 instant `YYYY-MM-DDTHH:MM[:SS[.fff]]` ending in `Z` or
/// `+00:00`.
pub fn parse_instant(name: &'static str, value: &str) -> Result<i64, ParamError> {
    let bad = || ParamError::BadInstant {
        name,
        value: value.chars().take(64).collect(),
    };
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.len() <= 16 && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed.parse().map_err(|_| bad());
    }
    parse_iso(trimmed).ok_or_else(bad)
}

fn parse_iso(value: &str) -> Option<i64> {
    let body = value
        .strip_suffix('Z')
        .or_else(|| value.strip_suffix('z'))
        .or_else(|| value.strip_suffix("+00:00"))?;
    let (date, time) = body.split_once(['T', 't', ' '])?;
    let number = |text: &str, digits: usize| -> Option<u32> {
        (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let mut date_parts = date.split('-');
    let year = number(date_parts.next()?, 4)?;
    let month = number(date_parts.next()?, 2)?;
    let day = number(date_parts.next()?, 2)?;
    if date_parts.next().is_some() || !(1..=12).contains(&month) {
        return None;
    }
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut clock_parts = clock.split(':');
    let hour = number(clock_parts.next()?, 2)?;
    let minute = number(clock_parts.next()?, 2)?;
    let second = match clock_parts.next() {
        Some(text) => number(text, 2)?,
        None => 0,
    };
    if clock_parts.next().is_some() || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let millis = match fraction {
        None => 0,
        Some(text) if (1..=9).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) => {
            let padded: String = text.chars().chain("000".chars()).take(3).collect();
            padded.parse::<i64>().ok()?
        }
        Some(_) => return None,
    };
    if day == 0 || day > days_in_month(i64::from(year), month) {
        return None;
    }
    Some(
        millis_from_civil_date(i64::from(year), month, day)
            + i64::from(hour) * HOUR_MS
            + i64::from(minute) * MINUTE_MS
            + i64::from(second) * 1000
            + millis,
    )
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The size of a server-rendered PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub const DEFAULT: ImageSize = ImageSize {
        width: 1280,
        height: 720,
    };

    pub fn parse(width: Option<&str>, height: Option<&str>) -> Result<ImageSize, ParamError> {
        let side = |name: &'static str, value: Option<&str>, default: u32| match value {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|side| (1..=MAX_PNG_SIDE).contains(side))
                .ok_or_else(|| ParamError::BadImageSide {
                    name,
                    value: text.chars().take(32).collect(),
                }),
        };
        Ok(ImageSize {
            width: side("width", width, ImageSize::DEFAULT.width)?,
            height: side("height", height, ImageSize::DEFAULT.height)?,
        })
    }
}

/// An optional boolean flag: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
pub fn parse_flag(name: &'static str, value: Option<&str>) -> Result<bool, ParamError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "false" | "0" | "no" | "off") => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some(_) => Err(ParamError::BadFlag {
            name,
            value: value.unwrap_or_default().chars().take(32).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_766_919_066_968; // 2025-12-28T10:51:06.968Z

    #[test]
    fn page_ids() {
        assert_eq!(
            PageId::parse(Some("demo-page")).unwrap().as_str(),
            "demo-page"
        );
        assert!(PageId::parse(Some("/shop/cart?x=1")).is_err());
        assert!(PageId::parse(Some("/shop/cart_2.html")).is_ok());
        assert!(PageId::parse(Some("상품-페이지")).is_ok());
        assert_eq!(PageId::parse(None), Err(ParamError::MissingPage));
        assert_eq!(PageId::parse(Some("")), Err(ParamError::MissingPage));
        assert_eq!(
            PageId::parse(Some("a'b")),
            Err(ParamError::PageCharacter { found: '\'' })
        );
        assert!(PageId::parse(Some("a b")).is_err());
        assert!(PageId::parse(Some("a\nb")).is_err());
        assert!(PageId::parse(Some(&"x".repeat(256))).is_ok());
        assert_eq!(
            PageId::parse(Some(&"x".repeat(257))),
            Err(ParamError::PageTooLong { bytes: 257 })
        );
    }

    #[test]
    fn instants() {
        assert_eq!(parse_instant("from", "1766919066968"), Ok(NOW));
        assert_eq!(parse_instant("from", "2025-12-28T10:51:06.968Z"), Ok(NOW));
        assert_eq!(parse_instant("from", "2025-12-28T10:51:06Z"), Ok(NOW - 968));
        assert_eq!(
            parse_instant("from", "2025-12-28T10:51+00:00"),
            Ok(NOW - 6968)
        );
        assert_eq!(
            parse_instant("from", "2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
        for bad in [
            "",
            "yesterday",
            "-5",
            "2025-12-28T10:51:06",
            "2025-02-29T00:00:00Z",
            "2025-12-28T24:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-12-28T10:51:06.Z",
            "99999999999999999999",
        ] {
            assert!(parse_instant("from", bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ranges() {
        let range = QueryRange::parse(None, None, NOW).unwrap();
        assert_eq!(range.to_ms - range.from_ms, DEFAULT_RANGE_MS);
        assert_eq!(range.to_ms, NOW);
        assert_eq!(
            QueryRange::parse(Some("5"), Some("5"), NOW),
            Err(ParamError::EmptyRange)
        );
        assert_eq!(
            QueryRange::parse(Some("5"), Some("6"), NOW),
            Err(ParamError::TooEarly)
        );
        let month_ago = (NOW - MAX_RANGE_MS).to_string();
        assert!(QueryRange::parse(Some(&month_ago), None, NOW).is_ok());
        let too_long = (NOW - MAX_RANGE_MS - 1).to_string();
        assert!(matches!(
            QueryRange::parse(Some(&too_long), None, NOW),
            Err(ParamError::RangeTooLong { .. })
        ));
        let future = (NOW + 2 * DAY_MS).to_string();
        assert_eq!(
            QueryRange::parse(None, Some(&future), NOW),
            Err(ParamError::TooLate)
        );
        assert_eq!(ParamError::TooLate.param(), "to");
    }

    #[test]
    fn image_sizes_and_flags() {
        assert_eq!(ImageSize::parse(None, None), Ok(ImageSize::DEFAULT));
        assert_eq!(
            ImageSize::parse(Some("640"), Some("360")),
            Ok(ImageSize {
                width: 640,
                height: 360
            })
        );
        for bad in ["0", "4097", "-1", "1.5", "big"] {
            assert!(ImageSize::parse(Some(bad), None).is_err(), "{bad}");
        }
        assert_eq!(parse_flag("live", Some("1")), Ok(true));
        assert_eq!(parse_flag("live", None), Ok(false));
        assert!(parse_flag("live", Some("maybe")).is_err());
    }
}
