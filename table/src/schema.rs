//! The curated table's schema and partitions: the contract every writer and reader of
//! `<table>/dt=YYYY-MM-DD/hour=HH/*.parquet` shares (docs/ARCHITECTURE.md).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clickheatmap_model::time::{civil_from_millis, parse_date};
use object_store::path::Path;

/// The curated table's Arrow schema: exactly the columns the demo's Glue table declares.
pub fn curated_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("page_id", DataType::Utf8, false),
        Field::new("grid_x", DataType::Int32, false),
        Field::new("grid_y", DataType::Int32, false),
        Field::new("window_start", DataType::Int64, false),
        Field::new("window_end", DataType::Int64, false),
        Field::new("clicks", DataType::Int64, false),
    ]))
}

/// `dt=YYYY-MM-DD/hour=HH` of a window, from its start in UTC.
pub fn partition_of(window_start_ms: i64) -> String {
    let civil = civil_from_millis(window_start_ms);
    format!(
        "dt={:04}-{:02}-{:02}/hour={:02}",
        civil.year, civil.month, civil.day, civil.hour
    )
}

/// Rows whose `window_end` lies in `[from_ms, to_ms)`; `None` leaves that side open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl TimeRange {
    pub fn contains(&self, window_end: i64) -> bool {
        self.from_ms.is_none_or(|from| window_end >= from)
            && self.to_ms.is_none_or(|to| window_end < to)
    }

    /// Whether a partition hour can hold a matching row. Windows are at most a day long, so a
    /// window starting in the hour ends before `hour + 1h + 1d`.
    pub fn may_match_hour(&self, hour_start_ms: i64) -> bool {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 86_400_000;
        self.from_ms
            .is_none_or(|from| hour_start_ms + HOUR + DAY > from)
            && self.to_ms.is_none_or(|to| hour_start_ms < to)
    }
}

/// Parses `.../dt=YYYY-MM-DD/hour=HH/...` into the hour's start.
pub fn partition_hour(path: &Path) -> Option<i64> {
    let mut date = None;
    let mut hour = None;
    for part in path.parts() {
        let part = part.as_ref();
        if let Some(value) = part.strip_prefix("dt=") {
            date = Some(parse_date(value)?);
        } else if let Some(value) = part.strip_prefix("hour=") {
            let value: i64 = value.parse().ok()?;
            if !(0..24).contains(&value) {
                return None;
            }
            hour = Some(value);
        }
    }
    Some(date? + hour? * 3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_come_from_window_start_in_utc() {
        assert_eq!(partition_of(0), "dt=1970-01-01/hour=00");
        // 2025-12-28T10:51:06.968Z
        assert_eq!(partition_of(1_766_919_066_968), "dt=2025-12-28/hour=10");
        // The last minute of a day stays in that day's hour 23.
        assert_eq!(partition_of(1_766_966_340_000), "dt=2025-12-28/hour=23");
        assert_eq!(partition_of(1_766_966_400_000), "dt=2025-12-29/hour=00");
    }

    #[test]
    fn partition_hours_parse() {
        let path = Path::from("curated_heatmap/dt=2025-12-28/hour=10/w-1.parquet");
        assert_eq!(partition_hour(&path), Some(1_766_916_000_000));
        assert_eq!(
            partition_hour(&Path::from("t/dt=2025-13-01/hour=10/x.parquet")),
            None
        );
        assert_eq!(
            partition_hour(&Path::from("t/dt=2025-12-01/hour=24/x.parquet")),
            None
        );
        // Not a day of that month (it would roll over into March).
        assert_eq!(
            partition_hour(&Path::from("t/dt=2025-02-30/hour=01/x.parquet")),
            None
        );
        assert_eq!(partition_hour(&Path::from("t/x.parquet")), None);
    }

    #[test]
    fn ranges_prune_hours_conservatively() {
        let range = TimeRange {
            from_ms: Some(10 * 3_600_000),
            to_ms: Some(12 * 3_600_000),
        };
        assert!(range.may_match_hour(11 * 3_600_000));
        assert!(!range.may_match_hour(12 * 3_600_000));
        // A day-long window starting 33 hours earlier could still end after `from`.
        assert!(range.may_match_hour(-14 * 3_600_000 + 1));
        assert!(!range.may_match_hour(-15 * 3_600_000));
    }
}
