//! The configuration the operator hands to the aggregator.
//!
//! It is written as JSON (or YAML-compatible JSON) into the aggregator's ConfigMap by the
//! operator, and read from a file by the aggregator. Every field has the original demo's default,
//! so `{}` is a complete configuration for local use.

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Everything one aggregator process needs to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Name of the writer, part of every output file name. Two writers that run at the same time
    /// must have different ids, or they would overwrite each other's files.
    #[serde(default = "default_writer_id")]
    pub writer_id: String,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub window: WindowConfig,
    #[serde(default)]
    pub grid: GridConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where per-shard checkpoints go when consuming a stream.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints while consuming a stream.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: String,
    /// How shards are split between replicas.
    #[serde(default)]
    pub replicas: ReplicasConfig,
}

/// How replicas split the shards.
///
/// * `ordinal` (default): replica `index` of `count` reads the shards whose stable hash modulo
///   `count` is `index` — no coordination, but a dead replica's shards wait for it to come back.
/// * `leases`: replicas take leases on shards in the checkpoint store (conditional writes) and
///   share them evenly among the replicas alive; a dead replica's shards are taken over once its
///   leases expire, and a new replica receives its share from the others. `count` and `index` are
///   not used.
///
/// With one replica it reads every shard either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicasConfig {
    #[serde(default = "default_replica_count")]
    pub count: u32,
    /// This replica's ordinal; usually set per pod from the environment rather than here.
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub assignment: ShardAssignment,
    /// How long a shard lease lasts without renewal (`leases`); renewed every third of it.
    #[serde(default = "default_lease_duration")]
    pub lease_duration: Duration,
}

/// How replicas split the shards (see [`ReplicasConfig`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ShardAssignment {
    #[default]
    Ordinal,
    Leases,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        ReplicasConfig {
            count: default_replica_count(),
            index: 0,
            assignment: ShardAssignment::default(),
            lease_duration: default_lease_duration(),
        }
    }
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(30)
}

fn default_replica_count() -> u32 {
    1
}

fn default_metrics_address() -> String {
    "127.0.0.1:9090".to_owned()
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            writer_id: default_writer_id(),
            source: SourceConfig::default(),
            window: WindowConfig::default(),
            grid: GridConfig::default(),
            output: OutputConfig::default(),
            limits: LimitsConfig::default(),
            checkpoint: CheckpointConfig::default(),
            metrics_address: default_metrics_address(),
            replicas: ReplicasConfig::default(),
        }
    }
}

fn default_writer_id() -> String {
    "local".to_owned()
}

/// Where click records come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Newline-delimited records read from standard input.
    #[default]
    Stdin,
    /// Newline-delimited records read from local files (a replay or backfill of the raw archive).
    Files { paths: Vec<String> },
    /// A Kinesis data stream: every shard, polled with GetRecords (shared throughput) or pushed
    /// through enhanced fan-out (dedicated throughput).
    #[serde(rename_all = "camelCase")]
    Kinesis(KinesisSourceConfig),
}

/// How to read a Kinesis data stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KinesisSourceConfig {
    pub stream_name: String,
    /// AWS region; the SDK's default chain (AWS_REGION...) when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Where a shard without a checkpoint starts.
    #[serde(default)]
    pub start_position: StartPosition,
    /// Records per GetRecords call (1 to 10000): the most a call asks for; the response budget
    /// below may ask for fewer.
    #[serde(default = "default_max_records_per_call")]
    pub max_records_per_call: u32,
    /// Record data (MiB) the replica's GetRecords responses may hold at once, shared by the
    /// shards it reads: each call asks for as many records as its shard's share holds at that
    /// shard's recent record size, so memory stays bounded whatever the shard count (peak RSS
    /// ≈ 40 MiB + 2.5 × this; docs/BENCHMARKS.md). 1 to 1024.
    #[serde(rename = "responseBudgetMiB", default = "default_response_budget_mib")]
    pub response_budget_mib: u32,
    /// Pause between polls of a shard that returned nothing (Kinesis allows 5 calls/s per shard).
    #[serde(default = "default_idle_poll_interval")]
    pub idle_poll_interval: Duration,
    /// How often the shard list is refreshed, to pick up resharding.
    #[serde(default = "default_shard_discovery_interval")]
    pub shard_discovery_interval: Duration,
    /// When a shard is caught up and quiet, its watermark moves to the clock minus this, so that
    /// windows close without waiting for the next click.
    #[serde(default = "default_idle_watermark_delay")]
    pub idle_watermark_delay: Duration,
    /// Read with enhanced fan-out: a registered stream consumer subscribes to each shard
    /// (SubscribeToShard) and gets its own 2 MB/s per shard, with records pushed as they arrive.
    /// Absent: GetRecords polling, which shares each shard's 2 MB/s and 5 calls/s with every
    /// other reader of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced_fan_out: Option<EnhancedFanOutConfig>,
}

/// The stream consumer that enhanced fan-out reads through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnhancedFanOutConfig {
    /// The consumer's name: registered on the stream when missing, and shared by every replica
    /// (each shard has one subscription at a time, held by the replica that reads it).
    #[serde(default = "default_consumer_name")]
    pub consumer_name: String,
}

impl Default for EnhancedFanOutConfig {
    fn default() -> Self {
        EnhancedFanOutConfig {
            consumer_name: default_consumer_name(),
        }
    }
}

fn default_consumer_name() -> String {
    "clickheatmap-aggregator".to_owned()
}

/// A Kinesis stream consumer name: 1 to 128 letters, digits, `_`, `.` and `-`.
pub fn valid_consumer_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The starting point of a shard that has no checkpoint yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub enum StartPosition {
    /// The oldest record still retained.
    #[default]
    TrimHorizon,
    /// Only records written after the consumer started.
    Latest,
    /// Records from this time on (epoch milliseconds).
    #[serde(rename_all = "camelCase")]
    AtTimestamp { timestamp_ms: i64 },
}

fn default_max_records_per_call() -> u32 {
    10_000
}

fn default_response_budget_mib() -> u32 {
    KinesisSourceConfig::DEFAULT_RESPONSE_BUDGET_MIB
}

impl KinesisSourceConfig {
    /// `responseBudgetMiB` when unset.
    pub const DEFAULT_RESPONSE_BUDGET_MIB: u32 = 16;
}

fn default_idle_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_shard_discovery_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_watermark_delay() -> Duration {
    Duration::from_secs(5)
}

/// Per-shard checkpoints: the last sequence number whose effect is durable, and the window state
/// up to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `s3://bucket/prefix/` or a local directory. Defaults to `<output.root>/_checkpoints`
    /// (beside the table, never inside it), e.g. `s3://<curated bucket>/curated/_checkpoints/`.
    #[serde(default)]
    pub location: Option<String>,
    /// Longest time between two checkpoints of a shard that is making progress.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            location: None,
            interval: default_checkpoint_interval(),
        }
    }
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

/// Event-time tumbling windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length (the demo used one minute).
    #[serde(default = "default_window_size")]
    pub size: Duration,
    /// How long a window stays open after the watermark passed its end. Clicks later than that
    /// are still counted, as correction rows for their own window.
    #[serde(default = "default_allowed_lateness")]
    pub allowed_lateness: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size: default_window_size(),
            allowed_lateness: default_allowed_lateness(),
        }
    }
}

fn default_window_size() -> Duration {
    Duration::from_secs(60)
}

fn default_allowed_lateness() -> Duration {
    Duration::from_secs(30)
}

/// The grid every viewport is divided into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GridConfig {
    #[serde(default = "default_grid_side")]
    pub columns: u16,
    #[serde(default = "default_grid_side")]
    pub rows: u16,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            columns: default_grid_side(),
            rows: default_grid_side(),
        }
    }
}

fn default_grid_side() -> u16 {
    20
}

/// The largest grid side: beyond it, a heatmap cell is smaller than a CSS pixel on most screens.
pub const MAX_GRID_SIDE: u16 = 1000;

/// Where curated Parquet files (and rejected records) are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputConfig {
    /// Root of the curated data: `s3://bucket/curated/` or a local directory. The table's files go
    /// to `<root>/<table>/dt=YYYY-MM-DD/hour=HH/`.
    #[serde(default = "default_output_root")]
    pub root: String,
    /// Table directory name under the root (the Glue table of the demo).
    #[serde(default = "default_table")]
    pub table: String,
    /// Where rejected records go, as NDJSON with their reason. Defaults to `<root>/dead_letter/`;
    /// the empty string turns the dead-letter output off (rejections are still counted).
    #[serde(default)]
    pub dead_letter: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            root: default_output_root(),
            table: default_table(),
            dead_letter: None,
        }
    }
}

fn default_output_root() -> String {
    "heatmap-out/curated".to_owned()
}

fn default_table() -> String {
    "curated_heatmap".to_owned()
}

/// Bounds on untrusted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest accepted `page_id`, in bytes.
    #[serde(default = "default_max_page_id_bytes")]
    pub max_page_id_bytes: u32,
    /// Largest accepted single click event, in bytes of JSON.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u32,
    /// Largest accepted record (one Kinesis record, or one line of a file). A Kinesis record is
    /// at most 1 MiB; files replayed from the Firehose archive may hold many records on one line.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_page_id_bytes: default_max_page_id_bytes(),
            max_event_bytes: default_max_event_bytes(),
            max_record_bytes: default_max_record_bytes(),
        }
    }
}

fn default_max_page_id_bytes() -> u32 {
    256
}

fn default_max_event_bytes() -> u32 {
    64 * 1024
}

fn default_max_record_bytes() -> u32 {
    128 * 1024 * 1024
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid aggregator configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid aggregator configuration: {field} {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl AggregatorConfig {
    /// Parses and validates a configuration document.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: AggregatorConfig = serde_json::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Where the replicas consuming `stream` keep their progress reports
    /// ([`crate::progress`]): `<checkpoint location>/<stream>/_progress/`.
    pub fn progress_location(&self, stream: &str) -> String {
        format!(
            "{}/{stream}/{}/",
            self.checkpoint_root(),
            crate::progress::PROGRESS_FOLDER
        )
    }

    /// The checkpoint location without a trailing `/`: `checkpoint.location`, by default
    /// `<output.root>/_checkpoints`.
    pub fn checkpoint_root(&self) -> String {
        match &self.checkpoint.location {
            Some(location) => location.trim_end_matches('/').to_owned(),
            None => format!("{}/_checkpoints", self.output.root.trim_end_matches('/')),
        }
    }

    /// Where the backfill `id` keeps its state ([`crate::backfill_state`]).
    pub fn backfill_state_location(&self, id: &str) -> String {
        format!(
            "{}/{}",
            self.checkpoint_root(),
            crate::backfill_state::backfill_state_key(id)
        )
    }

    /// Checks the rules the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                field,
                problem: problem.into(),
            }
        }
        if self.writer_id.is_empty()
            || !self
                .writer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid(
                "writerId",
                format!(
                    "must be non-empty and use only letters, digits, '-', '_' and '.', got {:?}",
                    self.writer_id
                ),
            ));
        }
        let window_ms = self.window.size.as_millis();
        if window_ms < 1000 || !86_400_000u64.is_multiple_of(window_ms) {
            return Err(invalid(
                "window.size",
                format!(
                    "must be at least 1s and divide a day evenly (1m, 5m, 1h...), got {}",
                    self.window.size
                ),
            ));
        }
        if self.window.allowed_lateness.as_millis() > 7 * 86_400_000 {
            return Err(invalid("window.allowedLateness", "must be at most 7d"));
        }
        for (field, side) in [
            ("grid.columns", self.grid.columns),
            ("grid.rows", self.grid.rows),
        ] {
            if side == 0 || side > MAX_GRID_SIDE {
                return Err(invalid(
                    field,
                    format!("must be between 1 and {MAX_GRID_SIDE}, got {side}"),
                ));
            }
        }
        if self.output.root.trim().is_empty() {
            return Err(invalid("output.root", "must not be empty"));
        }
        if self.output.table.is_empty()
            || !self
                .output
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "output.table",
                format!(
                    "must be a plain directory name (letters, digits, '_', '-'), got {:?}",
                    self.output.table
                ),
            ));
        }
        if self.limits.max_page_id_bytes == 0 {
            return Err(invalid("limits.maxPageIdBytes", "must be positive"));
        }
        if self.limits.max_event_bytes < 64 {
            return Err(invalid("limits.maxEventBytes", "must be at least 64"));
        }
        if self.limits.max_record_bytes < self.limits.max_event_bytes {
            return Err(invalid(
                "limits.maxRecordBytes",
                "must be at least limits.maxEventBytes",
            ));
        }
        match &self.source {
            SourceConfig::Files { paths } if paths.is_empty() => {
                return Err(invalid("source.paths", "must name at least one file"));
            }
            SourceConfig::Kinesis(kinesis) => {
                if kinesis.stream_name.is_empty() {
                    return Err(invalid("source.streamName", "must not be empty"));
                }
                if !(1..=10_000).contains(&kinesis.max_records_per_call) {
                    return Err(invalid(
                        "source.maxRecordsPerCall",
                        format!("must be 1 to 10000, got {}", kinesis.max_records_per_call),
                    ));
                }
                if !(1..=1024).contains(&kinesis.response_budget_mib) {
                    return Err(invalid(
                        "source.responseBudgetMiB",
                        format!("must be 1 to 1024, got {}", kinesis.response_budget_mib),
                    ));
                }
                if kinesis.idle_poll_interval.as_millis() < 200 {
                    return Err(invalid(
                        "source.idlePollInterval",
                        "must be at least 200ms (Kinesis allows 5 GetRecords calls per second per shard)",
                    ));
                }
                if let Some(fan_out) = &kinesis.enhanced_fan_out
                    && !valid_consumer_name(&fan_out.consumer_name)
                {
                    return Err(invalid(
                        "source.enhancedFanOut.consumerName",
                        format!(
                            "{:?}: use 1 to 128 letters, digits, '_', '.' and '-'",
                            fan_out.consumer_name
                        ),
                    ));
                }
            }
            _ => {}
        }
        if self.replicas.count == 0 || self.replicas.index >= self.replicas.count {
            return Err(invalid(
                "replicas",
                format!(
                    "index must be below count (count ≥ 1), got index {} of {}",
                    self.replicas.index, self.replicas.count
                ),
            ));
        }
        if self.replicas.assignment == ShardAssignment::Leases
            && self.replicas.lease_duration.as_millis() < 3000
        {
            return Err(invalid("replicas.leaseDuration", "must be at least 3s"));
        }
        if self.checkpoint.interval.as_millis() < 1000 {
            return Err(invalid("checkpoint.interval", "must be at least 1s"));
        }
        if self
            .metrics_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(invalid(
                "metricsAddress",
                format!(
                    "must be host:port like 0.0.0.0:9090, got {:?}",
                    self.metrics_address
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_the_demo_defaults() {
        let config = AggregatorConfig::from_json("{}").unwrap();
        assert_eq!(config.window.size, Duration::from_secs(60));
        assert_eq!(config.window.allowed_lateness, Duration::from_secs(30));
        assert_eq!((config.grid.columns, config.grid.rows), (20, 20));
        assert_eq!(config.output.table, "curated_heatmap");
        assert_eq!(config.source, SourceConfig::Stdin);
    }

    #[test]
    fn round_trips_through_json() {
        let config = AggregatorConfig {
            writer_id: "aggregator-0".into(),
            source: SourceConfig::Files {
                paths: vec!["a.ndjson".into()],
            },
            window: WindowConfig {
                size: Duration::from_secs(300),
                allowed_lateness: Duration::from_secs(10),
            },
            grid: GridConfig {
                columns: 32,
                rows: 18,
            },
            output: OutputConfig {
                root: "s3://bucket/curated/".into(),
                table: "curated_heatmap".into(),
                dead_letter: Some("s3://bucket/dead/".into()),
            },
            limits: LimitsConfig::default(),
            checkpoint: CheckpointConfig::default(),
            metrics_address: "0.0.0.0:9090".into(),
            replicas: ReplicasConfig {
                count: 3,
                index: 2,
                ..ReplicasConfig::default()
            },
        };
        let text = serde_json::to_string(&config).unwrap();
        assert!(text.contains(r#""size":"5m""#), "{text}");
        assert_eq!(AggregatorConfig::from_json(&text).unwrap(), config);
    }

    #[test]
    fn kinesis_source_defaults() {
        let config = AggregatorConfig::from_json(
            r#"{"source":{"type":"kinesis","streamName":"heatmap-demo-kds","startPosition":{"type":"AT_TIMESTAMP","timestampMs":5}}}"#,
        )
        .unwrap();
        let SourceConfig::Kinesis(kinesis) = config.source else {
            panic!("expected a Kinesis source");
        };
        assert_eq!(
            kinesis.start_position,
            StartPosition::AtTimestamp { timestamp_ms: 5 }
        );
        assert_eq!(kinesis.max_records_per_call, 10_000);
        assert_eq!(kinesis.enhanced_fan_out, None);
        let config = AggregatorConfig::from_json(
            r#"{"source":{"type":"kinesis","streamName":"s","enhancedFanOut":{}}}"#,
        )
        .unwrap();
        let SourceConfig::Kinesis(kinesis) = config.source else {
            panic!("expected a Kinesis source");
        };
        assert_eq!(
            kinesis.enhanced_fan_out.unwrap().consumer_name,
            "clickheatmap-aggregator"
        );
        assert_eq!(kinesis.idle_poll_interval, Duration::from_secs(1));
        assert_eq!(config.checkpoint.interval, Duration::from_secs(10));
    }

    #[test]
    fn rejects_what_would_break_the_output() {
        for (doc, field) in [
            (r#"{"window":{"size":"7s"}}"#, "window.size"),
            (r#"{"window":{"size":"500ms"}}"#, "window.size"),
            (r#"{"grid":{"columns":0}}"#, "grid.columns"),
            (r#"{"grid":{"rows":1001}}"#, "grid.rows"),
            (r#"{"writerId":"a/b"}"#, "writerId"),
            (r#"{"output":{"table":"../x"}}"#, "output.table"),
            (r#"{"source":{"type":"files","paths":[]}}"#, "source.paths"),
            (
                r#"{"source":{"type":"kinesis","streamName":""}}"#,
                "source.streamName",
            ),
            (
                r#"{"source":{"type":"kinesis","streamName":"s","idlePollInterval":"10ms"}}"#,
                "source.idlePollInterval",
            ),
            (
                r#"{"source":{"type":"kinesis","streamName":"s","enhancedFanOut":{"consumerName":"a b"}}}"#,
                "source.enhancedFanOut.consumerName",
            ),
            (r#"{"metricsAddress":"nowhere"}"#, "metricsAddress"),
            (r#"{"replicas":{"count":2,"index":2}}"#, "replicas"),
            (r#"{"replicas":{"count":0}}"#, "replicas"),
            (
                r#"{"replicas":{"assignment":"leases","leaseDuration":"1s"}}"#,
                "replicas.leaseDuration",
            ),
        ] {
            match AggregatorConfig::from_json(doc) {
                Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field, "{doc}"),
                other => panic!("{doc}: expected an error on {field}, got {other:?}"),
            }
        }
        let unknown = AggregatorConfig::from_json(r#"{"windw":{}}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
    }
}
