//! Prometheus metrics of a running aggregator, rendered in the text exposition format.
//!
//! Counters are atomics updated once per batch (not per click), so the hot path does not pay for
//! them; per-shard gauges sit behind a mutex that is touched once per poll.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::aggregate::Counters;
use crate::event::RejectReason;
use crate::sink::WriteReport;

#[derive(Debug, Default)]
pub struct Metrics {
    records: AtomicU64,
    clicks: AtomicU64,
    late_clicks: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    final_windows: AtomicU64,
    correction_windows: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    checkpoints: AtomicU64,
    get_records_calls: AtomicU64,
    get_records_decoded_by_sdk: AtomicU64,
    subscriptions: AtomicU64,
    fan_out_events: AtomicU64,
    fan_out_records: AtomicU64,
    throttled: AtomicU64,
    source_errors: AtomicU64,
    sink_errors: AtomicU64,
    shards: Mutex<BTreeMap<String, ShardGauges>>,
}

/// What is known about one shard right now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardGauges {
    pub millis_behind_latest: i64,
    /// Wall clock minus the shard's watermark, in milliseconds.
    pub watermark_lag_ms: i64,
    pub open_windows: u64,
}

impl Metrics {
    /// Adds what an aggregator counted since `previous`.
    pub fn add_counters(&self, now: &Counters, previous: &Counters) {
        let add = |counter: &AtomicU64, now: u64, before: u64| {
            counter.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
        };
        add(&self.records, now.records, previous.records);
        add(&self.clicks, now.clicks, previous.clicks);
        add(&self.late_clicks, now.late_clicks, previous.late_clicks);
        for (index, counter) in self.rejected.iter().enumerate() {
            add(counter, now.rejected[index], previous.rejected[index]);
        }
    }

    pub fn add_written(&self, report: &WriteReport) {
        self.final_windows
            .fetch_add(report.final_windows, Ordering::Relaxed);
        self.correction_windows
            .fetch_add(report.correction_windows, Ordering::Relaxed);
        self.files.fetch_add(report.files, Ordering::Relaxed);
        self.bytes.fetch_add(report.bytes, Ordering::Relaxed);
    }

    pub fn checkpoint_written(&self) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get_records_called(&self, decoded_by_sdk: bool) {
        self.get_records_calls.fetch_add(1, Ordering::Relaxed);
        if decoded_by_sdk {
            self.get_records_decoded_by_sdk
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fan_out_event(&self, records: usize) {
        self.fan_out_events.fetch_add(1, Ordering::Relaxed);
        self.fan_out_records.fetch_add(
            u64::try_from(records).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn source_error(&self) {
        self.source_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sink_error(&self) {
        self.sink_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_shard(&self, shard_id: &str, gauges: ShardGauges) {
        if let Ok(mut shards) = self.shards.lock() {
            shards.insert(shard_id.to_owned(), gauges);
        }
    }

    pub fn remove_shard(&self, shard_id: &str) {
        if let Ok(mut shards) = self.shards.lock() {
            shards.remove(shard_id);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "clickheatmap_records_total",
            "Records read from the source.",
            load(&self.records),
        );
        counter(
            "clickheatmap_clicks_total",
            "Valid clicks counted.",
            load(&self.clicks),
        );
        counter(
            "clickheatmap_late_clicks_total",
            "Clicks that arrived after their window was written; counted as corrections.",
            load(&self.late_clicks),
        );
        counter(
            "clickheatmap_windows_flushed_total",
            "Windows written as final.",
            load(&self.final_windows),
        );
        counter(
            "clickheatmap_correction_windows_total",
            "Windows that received correction rows.",
            load(&self.correction_windows),
        );
        counter(
            "clickheatmap_files_written_total",
            "Files written (Parquet and dead letters).",
            load(&self.files),
        );
        counter(
            "clickheatmap_bytes_written_total",
            "Bytes written.",
            load(&self.bytes),
        );
        counter(
            "clickheatmap_checkpoints_total",
            "Shard checkpoints committed.",
            load(&self.checkpoints),
        );
        counter(
            "clickheatmap_get_records_calls_total",
            "GetRecords calls.",
            load(&self.get_records_calls),
        );
        counter(
            "clickheatmap_get_records_decoded_by_sdk_total",
            "GetRecords responses the aggregator's own decoder did not recognise, decoded by the \
             AWS SDK instead (same records, more CPU).",
            load(&self.get_records_decoded_by_sdk),
        );
        counter(
            "clickheatmap_subscribe_to_shard_calls_total",
            "SubscribeToShard calls that opened a subscription (enhanced fan-out).",
            load(&self.subscriptions),
        );
        counter(
            "clickheatmap_fan_out_events_total",
            "SubscribeToShardEvents received (enhanced fan-out).",
            load(&self.fan_out_events),
        );
        counter(
            "clickheatmap_fan_out_records_total",
            "Records received through enhanced fan-out subscriptions.",
            load(&self.fan_out_records),
        );
        counter(
            "clickheatmap_throttled_total",
            "Calls throttled by Kinesis.",
            load(&self.throttled),
        );
        counter(
            "clickheatmap_source_errors_total",
            "Failed source calls (retried).",
            load(&self.source_errors),
        );
        counter(
            "clickheatmap_sink_errors_total",
            "Failed writes (retried).",
            load(&self.sink_errors),
        );
        let _ = writeln!(
            out,
            "# HELP clickheatmap_rejected_total Records or events not counted, by reason.\n# TYPE clickheatmap_rejected_total counter"
        );
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "clickheatmap_rejected_total{{reason=\"{}\"}} {}",
                reason.label(),
                load(&self.rejected[reason.index()])
            );
        }
        if let Ok(shards) = self.shards.lock() {
            for (name, help, pick) in [
                (
                    "clickheatmap_millis_behind_latest",
                    "How far the shard's reader is behind the tip of the stream.",
                    (|g: &ShardGauges| g.millis_behind_latest) as fn(&ShardGauges) -> i64,
                ),
                (
                    "clickheatmap_watermark_lag_milliseconds",
                    "Wall clock minus the shard's watermark.",
                    |g: &ShardGauges| g.watermark_lag_ms,
                ),
                (
                    "clickheatmap_open_windows",
                    "Windows not yet written.",
                    |g: &ShardGauges| g.open_windows as i64,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (shard, gauges) in shards.iter() {
                    let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", pick(gauges));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_reasons_and_shard_gauges() {
        let metrics = Metrics::default();
        let mut now = Counters {
            records: 5,
            clicks: 7,
            ..Counters::default()
        };
        now.rejected[RejectReason::WrongType.index()] = 2;
        metrics.add_counters(&now, &Counters::default());
        metrics.add_counters(&now, &now);
        metrics.set_shard(
            "shardId-000000000001",
            ShardGauges {
                millis_behind_latest: 1500,
                watermark_lag_ms: 3000,
                open_windows: 2,
            },
        );
        let text = metrics.render();
        assert!(text.contains("clickheatmap_clicks_total 7\n"), "{text}");
        assert!(text.contains("clickheatmap_rejected_total{reason=\"wrong_type\"} 2\n"));
        assert!(text.contains("clickheatmap_rejected_total{reason=\"malformed_json\"} 0\n"));
        assert!(
            text.contains(
                "clickheatmap_millis_behind_latest{shard=\"shardId-000000000001\"} 1500\n"
            )
        );
        metrics.remove_shard("shardId-000000000001");
        assert!(!metrics.render().contains("shardId-000000000001"));
    }
}
