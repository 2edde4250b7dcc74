//! Durations written the way people write them in manifests: `60s`, `1m`, `500ms`, `2h`, `1m30s`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration with millisecond precision.
///
/// Serialised as the shortest exact string (`60000 ms` → `"1m"`), parsed from any sequence of
/// `<integer><unit>` parts with units `ms`, `s`, `m`, `h`, `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    millis: u64,
}

impl Duration {
    pub const ZERO: Duration = Duration { millis: 0 };

    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            millis: secs * 1000,
        }
    }

    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationParseError {
    #[error("empty duration: write it like 60s, 5m, 500ms or 1h")]
    Empty,
    #[error("invalid duration {input:?}: write it like 60s, 5m, 500ms or 1h")]
    Syntax { input: String },
    #[error("unknown unit {unit:?} in duration {input:?}: use ms, s, m, h or d")]
    Unit { input: String, unit: String },
    #[error("duration {input:?} is too large")]
    Overflow { input: String },
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl FromStr for Duration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(DurationParseError::Empty);
        }
        let syntax = || DurationParseError::Syntax {
            input: input.to_owned(),
        };
        let overflow = || DurationParseError::Overflow {
            input: input.to_owned(),
        };
        let mut millis: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(syntax());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| overflow())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            if unit_len == 0 {
                return Err(syntax());
            }
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| DurationParseError::Unit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                })?;
            millis = value
                .checked_mul(scale)
                .and_then(|part| millis.checked_add(part))
                .ok_or_else(overflow)?;
        }
        Ok(Duration { millis })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (name, scale) in UNITS {
            // Whole seconds read better as "90s" than "1m30s"; only use a bigger unit when exact.
            if rest >= scale && (rest.is_multiple_of(scale) || scale == 1) {
                let count = rest / scale;
                rest -= count * scale;
                write!(f, "{count}{name}")?;
            }
        }
        if rest != 0 {
            write!(f, "{rest}ms")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("60s".parse(), Ok(Duration::from_secs(60)));
        assert_eq!("1m".parse(), Ok(Duration::from_secs(60)));
        assert_eq!("1m30s".parse(), Ok(Duration::from_secs(90)));
        assert_eq!("500ms".parse(), Ok(Duration::from_millis(500)));
        assert_eq!("2h".parse(), Ok(Duration::from_secs(7200)));
        assert_eq!("0s".parse(), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_forms_with_a_reason() {
        assert_eq!("".parse::<Duration>(), Err(DurationParseError::Empty));
        assert!(matches!(
            "60".parse::<Duration>(),
            Err(DurationParseError::Syntax { .. })
        ));
        assert!(matches!(
            "5y".parse::<Duration>(),
            Err(DurationParseError::Unit { .. })
        ));
        assert!(matches!(
            "-5s".parse::<Duration>(),
            Err(DurationParseError::Syntax { .. })
        ));
        assert!(matches!(
            "99999999999999999999d".parse::<Duration>(),
            Err(DurationParseError::Overflow { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for ms in [
            0, 1, 999, 1000, 60_000, 90_000, 3_600_000, 86_400_000, 61_500,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(d.to_string().parse(), Ok(d), "{d}");
        }
        assert_eq!(Duration::from_secs(60).to_string(), "1m");
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(Duration::from_secs(90).to_string(), "90s");
    }
}
