//! A backfill's state: its checkpoint, which is also its progress report.
//!
//! A backfill keeps one JSON object, `<checkpoint location>/_backfills/<id>.json` (by default
//! `s3://<curated bucket>/curated/_checkpoints/_backfills/<id>.json`). The aggregator rewrites it
//! after every hour partition it has rewritten, and at most every few seconds while it reads; a
//! restarted backfill resumes from it, and the operator reads it for the `ClickHeatmapBackfill`'s
//! status. Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

pub const BACKFILL_STATE_VERSION: u32 = 1;

/// The folder of backfill states, below the checkpoint location.
pub const BACKFILL_FOLDER: &str = "_backfills";

/// Everything a backfill knows about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillState {
    pub version: u32,
    pub id: String,
    /// What was asked for; a resumed backfill must be the same request.
    pub request: BackfillRequestKey,
    /// The windows rewritten: every window that starts at or after `fromMs` and ends at or
    /// before `toMs`. The requested range, cut to whole windows, and cut where the archive or the
    /// live aggregator is not complete yet (see `stoppedAtMs`).
    pub covered_from_ms: i64,
    pub covered_to_ms: i64,
    /// The requested end, when the backfill had to stop before it: windows after this point are
    /// still open in the live aggregator, or their clicks may still be on their way to the
    /// archive.
    pub stopped_at_ms: Option<i64>,
    /// The archive's arrival hours read: `[fromMs, toMs)`.
    pub arrival_from_ms: i64,
    pub arrival_to_ms: i64,
    /// Every hour partition before this one has been rewritten.
    pub next_partition_ms: i64,
    /// Reading resumes at this arrival hour; `settled` counts everything before it.
    pub resume_arrival_ms: i64,
    pub settled: ArchiveCounts,
    /// What has been read and written so far (including `settled`).
    pub progress: BackfillProgress,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// The parts of a request that decide its result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillRequestKey {
    pub archive: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub window_ms: i64,
    pub grid_columns: u16,
    pub grid_rows: u16,
    pub early_arrivals_ms: i64,
    pub late_arrivals_ms: i64,
    pub table: String,
}

/// What was read from the archive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveCounts {
    pub objects: u64,
    pub bytes: u64,
    pub records: u64,
    /// Valid clicks in the covered windows.
    pub clicks: u64,
    /// Valid clicks read but not counted: their window is outside the covered range, or they
    /// reached the archive outside the window's arrival margins (read because they shared an
    /// object with counted ones).
    pub outside_range: u64,
    /// By reject reason (`malformed_json`…); zeros omitted.
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Objects that could not be decoded (truncated or damaged compression): none of their
    /// records count, and the object is copied to the dead-letter location.
    pub corrupt_objects: u64,
}

impl ArchiveCounts {
    pub fn add(&mut self, other: &ArchiveCounts) {
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.records += other.records;
        self.clicks += other.clicks;
        self.outside_range += other.outside_range;
        self.corrupt_objects += other.corrupt_objects;
        for (reason, count) in &other.rejected {
            *self.rejected.entry(reason.clone()).or_insert(0) += count;
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Progress for people: how far, how fast, how long still.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillProgress {
    pub objects_total: u64,
    pub bytes_total: u64,
    pub read: ArchiveCounts,
    pub partitions_total: u64,
    pub partitions_done: u64,
    /// Partitions whose backfill file was written or removed (the others already held exactly
    /// the archive's counts).
    pub partitions_changed: u64,
    /// Windows with clicks in the archive or rows in the table, among the partitions done.
    pub windows_rewritten: u64,
    /// Rows of the backfill files written.
    pub rows_written: u64,
    /// Seconds left at the current rate, once there is a rate.
    pub eta_seconds: Option<u64>,
}

/// The object key of a backfill's state below the checkpoint location.
pub fn backfill_state_key(id: &str) -> String {
    format!("{BACKFILL_FOLDER}/{id}.json")
}

/// Whether `id` can name a backfill: it becomes part of object keys and a Kubernetes name.
pub fn valid_backfill_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_labels() {
        assert!(valid_backfill_id("fix-2026-12-01"));
        for bad in ["", "-a", "a-", "A", "a/b", "a.b", &"a".repeat(64)] {
            assert!(!valid_backfill_id(bad), "{bad}");
        }
        assert_eq!(backfill_state_key("x"), "_backfills/x.json");
    }

    #[test]
    fn the_state_reads_back() {
        let mut state = BackfillState {
            version: BACKFILL_STATE_VERSION,
            id: "x".into(),
            ..BackfillState::default()
        };
        state.settled.rejected.insert("malformed_json".into(), 2);
        let mut more = state.settled.clone();
        more.clicks = 5;
        state.progress.read.add(&more);
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"nextPartitionMs\""), "{json}");
        let back: BackfillState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.progress.read.rejected_total(), 2);
    }
}
