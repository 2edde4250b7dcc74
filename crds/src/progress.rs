//! The aggregator's progress report: what the operator reads to tell whether data is flowing.
//!
//! Every aggregator replica that consumes a stream keeps one small JSON object,
//! `<checkpoint location>/<stream>/_progress/<replica>.json` (by default
//! `s3://<curated bucket>/curated/_checkpoints/<stream>/_progress/<replica>.json`), beside the
//! shard checkpoints and leases it already writes. It is rewritten after a commit, at most once
//! per [`PROGRESS_MIN_INTERVAL_MS`], and otherwise every [`PROGRESS_HEARTBEAT_MS`] so that a live
//! but idle replica stays distinguishable from a dead one: per replica, at most six PUTs a minute
//! under traffic and one a minute when idle, whatever the number of events. The operator lists
//! the folder and reads each replica's object (one LIST and one GET per replica per check).
//!
//! The format is versioned ([`PROGRESS_VERSION`]); a reader skips objects of another version.
//! Times are milliseconds since the Unix epoch (wall clock for `…AtMs`, event time otherwise).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PROGRESS_VERSION: u32 = 1;

/// The folder of the progress objects, below the stream's checkpoint folder.
pub const PROGRESS_FOLDER: &str = "_progress";

/// Shortest time between two progress writes of a replica.
pub const PROGRESS_MIN_INTERVAL_MS: i64 = 10_000;

/// Longest time between two progress writes of a live replica, with or without traffic.
pub const PROGRESS_HEARTBEAT_MS: i64 = 60_000;

/// One replica's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaProgress {
    pub version: u32,
    /// The replica's identity (pod name and process), as in its shard leases.
    pub replica: String,
    pub stream: String,
    /// When this report was written.
    pub written_at_ms: i64,
    /// When the replica started.
    pub started_at_ms: i64,
    /// The shards the replica reads now.
    pub shards: Vec<ShardProgress>,
    /// Everything the replica read since it started (shards handed over included).
    pub totals: ProgressCounts,
    /// The rate over about the last minute, as counts per minute.
    pub per_minute: ProgressCounts,
}

/// One shard, as its reader last saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardProgress {
    pub shard_id: String,
    /// The last committed sequence number.
    pub sequence_number: Option<String>,
    /// The latest event time the shard delivered (or the idle watermark, when later).
    pub last_event_time_ms: Option<i64>,
    /// Nothing older than this is expected any more; windows close behind it.
    pub watermark_ms: Option<i64>,
    /// Kinesis' `MillisBehindLatest` from the last read: 0 when caught up.
    pub millis_behind_latest: Option<i64>,
    /// The end of the newest window written to the table.
    pub last_committed_window_end_ms: Option<i64>,
    /// The start of the oldest window still open (not in the table yet); `None` when none is.
    #[serde(default)]
    pub oldest_open_window_start_ms: Option<i64>,
    /// The window length, to tell when an open window is overdue.
    #[serde(default)]
    pub window_size_ms: i64,
    /// When the shard last committed (files and checkpoint).
    pub last_commit_at_ms: Option<i64>,
    /// When the last record arrived, and the last valid click.
    pub last_record_at_ms: Option<i64>,
    pub last_accepted_at_ms: Option<i64>,
    /// Parquet files committed since the replica took the shard.
    pub files_committed: u64,
    /// Since the replica took the shard.
    pub counts: ProgressCounts,
}

/// Records read, clicks accepted (late ones included) and records rejected, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressCounts {
    pub records: u64,
    pub accepted: u64,
    pub late: u64,
    /// By the aggregator's reject reason (`malformed_json`, `missing_field`…); zeros omitted.
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
}

impl ProgressCounts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ProgressCounts) {
        self.records += other.records;
        self.accepted += other.accepted;
        self.late += other.late;
        for (reason, count) in &other.rejected {
            *self.rejected.entry(reason.clone()).or_insert(0) += count;
        }
    }

    /// `self - earlier`, saturating (counters only grow within one replica).
    pub fn since(&self, earlier: &ProgressCounts) -> ProgressCounts {
        ProgressCounts {
            records: self.records.saturating_sub(earlier.records),
            accepted: self.accepted.saturating_sub(earlier.accepted),
            late: self.late.saturating_sub(earlier.late),
            rejected: self
                .rejected
                .iter()
                .map(|(reason, count)| {
                    let before = earlier.rejected.get(reason).copied().unwrap_or(0);
                    (reason.clone(), count.saturating_sub(before))
                })
                .filter(|(_, count)| *count > 0)
                .collect(),
        }
    }

    /// The counts scaled from `elapsed_ms` to one minute, rounded.
    pub fn per_minute(&self, elapsed_ms: i64) -> ProgressCounts {
        let elapsed = elapsed_ms.max(1) as f64;
        let scale = |count: u64| (count as f64 * 60_000.0 / elapsed).round() as u64;
        ProgressCounts {
            records: scale(self.records),
            accepted: scale(self.accepted),
            late: scale(self.late),
            rejected: self
                .rejected
                .iter()
                .map(|(reason, count)| (reason.clone(), scale(*count)))
                .filter(|(_, count)| *count > 0)
                .collect(),
        }
    }

    /// The reason with the most rejections, if any.
    pub fn top_rejection(&self) -> Option<(&str, u64)> {
        self.rejected
            .iter()
            .filter(|(_, count)| **count > 0)
            .max_by_key(|(reason, count)| (**count, std::cmp::Reverse(reason.as_str())))
            .map(|(reason, count)| (reason.as_str(), *count))
    }
}

/// The object key of a replica's report below the stream's checkpoint folder.
pub fn progress_file_name(replica: &str) -> String {
    // Replica identities are pod names plus a process id: safe in a key, but never let a path
    // separator through.
    let safe: String = replica
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    format!("{safe}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(records: u64, accepted: u64, rejected: &[(&str, u64)]) -> ProgressCounts {
        ProgressCounts {
            records,
            accepted,
            late: 0,
            rejected: rejected
                .iter()
                .map(|(reason, count)| ((*reason).to_owned(), *count))
                .collect(),
        }
    }

    #[test]
    fn rates_are_differences_scaled_to_a_minute() {
        let earlier = counts(100, 90, &[("malformed_json", 10)]);
        let now = counts(400, 360, &[("malformed_json", 30), ("missing_field", 10)]);
        let delta = now.since(&earlier);
        assert_eq!(
            delta,
            counts(300, 270, &[("malformed_json", 20), ("missing_field", 10)])
        );
        let rate = delta.per_minute(30_000);
        assert_eq!(
            rate,
            counts(600, 540, &[("malformed_json", 40), ("missing_field", 20)])
        );
        assert_eq!(rate.top_rejection(), Some(("malformed_json", 40)));
        assert_eq!(rate.rejected_total(), 60);
    }

    #[test]
    fn the_report_reads_back_and_tolerates_absent_reasons() {
        let report = ReplicaProgress {
            version: PROGRESS_VERSION,
            replica: "shop-aggregator-0/7".to_owned(),
            stream: "clicks".to_owned(),
            written_at_ms: 2,
            started_at_ms: 1,
            shards: vec![ShardProgress {
                shard_id: "shardId-000000000000".to_owned(),
                millis_behind_latest: Some(0),
                ..ShardProgress::default()
            }],
            totals: counts(3, 2, &[("not_a_click", 1)]),
            per_minute: ProgressCounts::default(),
        };
        let json = serde_json::to_string(&report).expect("serialises");
        assert!(json.contains("\"millisBehindLatest\":0"), "{json}");
        let back: ReplicaProgress = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, report);
        let minimal: ProgressCounts =
            serde_json::from_str(r#"{"records":1,"accepted":1,"late":0}"#).expect("reads");
        assert!(minimal.rejected.is_empty());
        assert_eq!(progress_file_name("a/b"), "a_b.json");
    }
}
