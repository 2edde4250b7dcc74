//! The `ClickHeatmapPipeline` custom resource (`clickheatmap.io/v1alpha1`).
//!
//! One pipeline owns the whole chain: the Kinesis stream, the Firehose raw archive, the S3
//! buckets, the Glue catalog, the Athena workgroup and the aggregator (a Deployment, or a Managed
//! Service for Apache Flink application).
//!
//! Every optional field has the original demo's value as its serde default *and* as its schema
//! default, so the API server fills in exactly what the operator would assume: a manifest kept in
//! Git and synced by Argo CD shows no drift. Validation that the API server can do by itself
//! (enums, ranges, lengths, patterns, and a few CEL `x-kubernetes-validations` rules) lives in the
//! schema, so `kubectl apply` of a bad manifest fails with a message that names the field.
//!
//! [`crd_yaml`] renders the CustomResourceDefinition; the `crdgen` binary prints it and the
//! committed copy in the Helm chart is checked against it by a test.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The condition that sums up the whole pipeline (shown in the `Ready` printer column).
pub const READY_CONDITION: &str = "Ready";

/// An AWS region name such as `ap-northeast-2` or `us-gov-west-1`.
const REGION_PATTERN: &str = "^[a-z]{2}(-[a-z]+)+-[0-9]+$";
/// A Kinesis stream, Firehose delivery stream or Flink application name.
const AWS_NAME_PATTERN: &str = "^[a-zA-Z0-9_.-]+$";
/// A DNS-compatible S3 bucket name (lower case, digits, dots and hyphens).
const BUCKET_PATTERN: &str = "^[a-z0-9][a-z0-9.-]*[a-z0-9]$";
/// An IAM role ARN, in any partition (`aws`, `aws-cn`, `aws-us-gov`), with an optional path.
const IAM_ROLE_ARN_PATTERN: &str = "^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$";
/// A Glue database or table name that Athena can query without quoting tricks.
const GLUE_NAME_PATTERN: &str = "^[a-z0-9_]+$";
/// An Athena workgroup name.
const WORKGROUP_PATTERN: &str = "^[a-zA-Z0-9._-]+$";
/// A Managed Flink runtime environment such as `FLINK-1_18`.
const FLINK_RUNTIME_PATTERN: &str = "^FLINK-[0-9]+_[0-9]+$";
/// A Glue crawler schedule.
const CRON_PATTERN: &str = r"^cron\(.+\)$";
/// What [`Duration`] parses: `60s`, `5m`, `500ms`, `1m30s`.
const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";

/// Athena's smallest per-query scan limit (10 MiB).
const MIN_BYTES_SCANNED_CUTOFF: i64 = 10 * 1024 * 1024;

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Duration")
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A length bound keeps the CEL rules that parse durations within the API server's cost
        // budget.
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

/// A click-heatmap pipeline on AWS: clicks go into a Kinesis stream, Firehose archives them raw to
/// S3, an aggregator counts them per grid cell and time window into Parquet in the curated bucket,
/// and Glue and Athena make the result queryable.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
// Several printer columns share `type_ = "string"`; clippy takes them for one repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "clickheatmap.io",
    version = "v1alpha1",
    kind = "ClickHeatmapPipeline",
    namespaced,
    shortname = "chp",
    status = "ClickHeatmapPipelineStatus",
    derive = "PartialEq",
    doc = "A click-heatmap pipeline on AWS: Kinesis stream, Firehose raw archive, S3 buckets, Glue catalog, Athena workgroup and an aggregator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether every part of the pipeline exists and matches the spec"
    ),
    printcolumn(
        name = "Data",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="DataFlowing")].reason"#,
        description = "Whether clicks are flowing (DataFlowing's reason: ClicksAccepted, NoTraffic, AllRejected, Stalled…)"
    ),
    printcolumn(
        name = "Stream",
        type_ = "string",
        json_path = ".spec.stream.name",
        description = "Kinesis data stream the clicks go to"
    ),
    printcolumn(
        name = "Engine",
        type_ = "string",
        json_path = ".spec.aggregation.engine",
        description = "What runs the aggregation"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.aggregation) || !has(self.aggregation.allowedLateness) || self.aggregation.allowedLateness.contains('d') || duration(self.aggregation.allowedLateness).getSeconds() < (has(self.stream) && has(self.stream.retentionHours) ? self.stream.retentionHours : 24) * 3600",
    "message": "aggregation.allowedLateness must be shorter than stream.retentionHours: a window still open when its records leave the stream could not be recomputed after a restart"
}]))]
pub struct ClickHeatmapPipelineSpec {
    /// AWS region every resource of the pipeline lives in, e.g. `ap-northeast-2`. Immutable.
    #[schemars(length(min = 1, max = 32), pattern(REGION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "region is immutable: the pipeline's AWS resources live in the old region; create a new pipeline instead"
    }]))]
    pub region: String,

    /// What happens to the AWS resources when this pipeline is deleted: `Retain` leaves them (and
    /// the data) in place, `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over AWS resources of the same names that exist but carry no owner tag. Off by
    /// default: an untagged resource is then reported in a condition and left alone. A resource
    /// tagged by another pipeline is never touched.
    #[serde(default)]
    pub adopt_existing: bool,

    /// Tags added to every AWS resource the pipeline makes (buckets, stream, delivery stream,
    /// Glue database and crawler, workgroup, Flink application), e.g. for cost allocation. Keys
    /// under `clickheatmap.io/` are the operator's own. A key removed here stays on the resources
    /// (the operator never removes tags it did not put there itself).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40, "x-kubernetes-validations" = [{
        "rule": "self.all(key, !key.startsWith('clickheatmap.io/'))",
        "message": "tags under clickheatmap.io/ are the operator's own"
    }]))]
    pub tags: BTreeMap<String, String>,

    /// The Kinesis data stream the click events are written to.
    pub stream: StreamSpec,

    /// The S3 buckets of the pipeline.
    pub buckets: BucketsSpec,

    /// The Firehose delivery stream that copies every record, untouched, to the raw bucket.
    pub raw_archive: RawArchiveSpec,

    /// How clicks are turned into heatmap cells.
    #[serde(default)]
    pub aggregation: AggregationSpec,

    /// The Glue Data Catalog database and table over the curated data.
    #[serde(default)]
    pub catalog: CatalogSpec,

    /// The Athena workgroup the heatmap is queried through.
    #[serde(default)]
    pub query: QuerySpec,

    /// The click collector: an HTTP service in the cluster that browsers send clicks to, so that
    /// no AWS credentials ever live in a web page. Off by default.
    #[serde(default)]
    pub collector: CollectorSpec,

    /// The heatmap viewer: a web UI that queries the curated table through Athena, with a live
    /// mode fed by the aggregator replicas. Off by default.
    #[serde(default)]
    pub viewer: ViewerSpec,

    /// What a platform team sets on every pod the operator runs for this pipeline (aggregator,
    /// collector, viewer), on top of the operator's own settings.
    #[serde(default, skip_serializing_if = "WorkloadsSpec::is_empty")]
    pub workloads: WorkloadsSpec,

    /// How the operator judges the data plane (`status.dataPlane`, the `DataFlowing` and
    /// `Fresh` conditions) from the aggregator's progress reports.
    #[serde(default)]
    pub health: HealthSpec,
}

/// The data-plane checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.checkInterval) || self.checkInterval.contains('d') || duration(self.checkInterval).getSeconds() >= 10",
    "message": "health.checkInterval must be at least 10s (each check reads the progress reports from S3)"
}]))]
pub struct HealthSpec {
    /// `DataFlowing` turns False (`NoTraffic`, `AllRejected`) when no click was accepted for
    /// this long.
    #[serde(default = "default_quiet_period")]
    pub quiet_period: Duration,

    /// How often the operator reads the progress reports (one S3 LIST plus one GET per
    /// aggregator replica per check).
    #[serde(default = "default_check_interval")]
    pub check_interval: Duration,

    /// Extra time a window may take to reach the table beyond its length and the allowed
    /// lateness before `Fresh` turns False.
    #[serde(default = "default_freshness_margin")]
    pub freshness_margin: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            quiet_period: default_quiet_period(),
            check_interval: default_check_interval(),
            freshness_margin: default_freshness_margin(),
        }
    }
}

fn default_quiet_period() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_freshness_margin() -> Duration {
    Duration::from_secs(120)
}

/// Settings of every workload pod of a pipeline; the operator keeps them as it applies its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadsSpec {
    /// Extra environment variables of every container, e.g. `RUST_LOG` or `HTTPS_PROXY`. One with
    /// the name of a variable the operator sets replaces the operator's (on purpose: that is the
    /// escape hatch; see docs/install.md for what each workload reads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub extra_env: Vec<k8s_openapi::api::core::v1::EnvVar>,

    /// Extra annotations of every pod (the operator's own keys win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Extra labels of every pod (the operator's own keys, which its selectors use, win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,

    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}

impl WorkloadsSpec {
    pub fn is_empty(&self) -> bool {
        *self == WorkloadsSpec::default()
    }
}

/// What happens to the AWS resources when the pipeline is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// The Kinesis data stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.mode == 'Provisioned' || !has(self.shards) || self.shards == 1",
        "message": "stream.shards applies only to mode Provisioned: an OnDemand stream scales by itself, leave shards out"
    },
    {
        "rule": "self.encryption == 'Kms' || !has(self.kmsKeyId)",
        "message": "stream.kmsKeyId applies only to encryption Kms"
    }
]))]
pub struct StreamSpec {
    /// Stream name. Immutable: a new name would be a new, empty stream.
    #[schemars(length(min = 1, max = 128), pattern(AWS_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "stream.name is immutable: a new name would be a new, empty stream; create a new pipeline instead"
    }]))]
    pub name: String,

    /// Capacity mode.
    #[serde(default)]
    pub mode: StreamMode,

    /// Number of shards (1 MB/s or 1000 records/s of writes each). Only for mode `Provisioned`.
    /// Unset: a stream the operator creates gets 1; an existing stream it adopts keeps its count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 500))]
    pub shards: Option<i32>,

    /// How long records stay readable in the stream, in hours (24 to 8760). Unset: a stream the
    /// operator creates keeps them 24 hours; an existing stream it adopts keeps its retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 24, max = 8760))]
    pub retention_hours: Option<i32>,

    /// Server-side encryption of the stream.
    #[serde(default)]
    pub encryption: StreamEncryption,

    /// KMS key (id, ARN or alias) for encryption `Kms`. Defaults to the AWS-managed key
    /// `alias/aws/kinesis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
}

impl StreamSpec {
    /// Shards of a stream the operator creates when `shards` is unset.
    pub const DEFAULT_SHARDS: i32 = 1;
    /// Retention of a stream the operator creates when `retentionHours` is unset.
    pub const DEFAULT_RETENTION_HOURS: i32 = 24;

    /// The retention the spec asks for, or the default of a new stream.
    pub fn retention_hours_or_default(&self) -> i32 {
        self.retention_hours
            .unwrap_or(Self::DEFAULT_RETENTION_HOURS)
    }
}

/// Kinesis capacity mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StreamMode {
    #[default]
    Provisioned,
    OnDemand,
}

/// Kinesis server-side encryption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StreamEncryption {
    #[default]
    None,
    Kms,
}

/// S3 bucket names. Immutable: the operator would lose track of the data in the old buckets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "buckets are immutable: the data stays in the old buckets; create a new pipeline instead"
}]))]
pub struct BucketsSpec {
    /// Bucket of the raw archive (Firehose writes every record here).
    #[schemars(length(min = 3, max = 63), pattern(BUCKET_PATTERN))]
    pub raw: String,

    /// Bucket of the curated Parquet files the aggregator writes.
    #[schemars(length(min = 3, max = 63), pattern(BUCKET_PATTERN))]
    pub curated: String,

    /// Bucket Athena writes query results to.
    #[schemars(length(min = 3, max = 63), pattern(BUCKET_PATTERN))]
    pub query_results: String,
}

/// The Firehose raw archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.enabled || has(self.roleArn)",
        "message": "rawArchive.roleArn is required when rawArchive.enabled is true: Firehose needs an IAM role that can read the stream and write to the raw bucket"
    },
    {
        "rule": "has(self.deliveryStreamName) == has(oldSelf.deliveryStreamName) && (!has(self.deliveryStreamName) || self.deliveryStreamName == oldSelf.deliveryStreamName)",
        "message": "rawArchive.deliveryStreamName is immutable: the old delivery stream would keep archiving into the raw bucket beside the new one; create a new pipeline instead"
    }
]))]
pub struct RawArchiveSpec {
    /// Whether the raw archive exists at all.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Key prefix in the raw bucket.
    #[serde(default = "default_raw_prefix")]
    #[schemars(length(max = 1024))]
    pub prefix: String,

    /// Firehose writes a file when this much data is buffered (MiB, 1 to 128)... Unset: 5 on a
    /// delivery stream the operator creates; an adopted one keeps its own.
    #[serde(
        rename = "bufferSizeMiB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 128))]
    pub buffer_size_mib: Option<i32>,

    /// ...or when this much time has passed since the first buffered record (seconds, 0 to 900).
    /// Unset: 300 on a delivery stream the operator creates; an adopted one keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 900))]
    pub buffer_interval_seconds: Option<i32>,

    /// Compression of the archived files. Unset: `UNCOMPRESSED` on a delivery stream the
    /// operator creates; an adopted one keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Compression")]
    pub compression: Option<Compression>,

    /// IAM role Firehose assumes to read the stream and write to the raw bucket. Required when
    /// `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IAM_ROLE_ARN_PATTERN))]
    pub role_arn: Option<String>,

    /// Name of the delivery stream. Defaults to `<stream name>-raw`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(AWS_NAME_PATTERN))]
    pub delivery_stream_name: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_raw_prefix() -> String {
    "raw/".to_owned()
}

impl RawArchiveSpec {
    /// Buffering of a delivery stream the operator creates, for the fields left unset.
    pub const DEFAULT_BUFFER_SIZE_MIB: i32 = 5;
    pub const DEFAULT_BUFFER_INTERVAL_SECONDS: i32 = 300;
}

/// Compression of the files Firehose writes (Firehose's own names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Compression {
    #[default]
    #[serde(rename = "UNCOMPRESSED")]
    Uncompressed,
    #[serde(rename = "GZIP")]
    Gzip,
    #[serde(rename = "Snappy")]
    Snappy,
    #[serde(rename = "ZIP")]
    Zip,
    #[serde(rename = "HADOOP_SNAPPY")]
    HadoopSnappy,
}

/// How clicks are aggregated into heatmap cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.engine != 'ManagedFlink' || has(self.flink)",
    "message": "aggregation.flink (codeS3Bucket, codeS3Key, roleArn) is required when aggregation.engine is ManagedFlink"
}, {
    // CEL's duration() knows no `d` unit; a window is at most a day anyway.
    "rule": "!self.window.contains('d') && duration(self.window).getMilliseconds() > 0 && 86400000 % duration(self.window).getMilliseconds() == 0",
    "message": "aggregation.window must be above zero and divide a day evenly, in ms, s, m or h (e.g. 10s, 1m, 5m, 15m, 1h, 24h), so that windows line up with the hour and day partitions"
}]))]
pub struct AggregationSpec {
    /// What runs the aggregation: the Rust aggregator as a `Deployment`, or a Managed Service for
    /// Apache Flink application (`ManagedFlink`).
    #[serde(default)]
    pub engine: AggregationEngine,

    /// Length of the event-time tumbling windows, e.g. `60s`, `5m`. Must divide a day evenly.
    #[serde(default = "default_window")]
    pub window: Duration,

    /// How long a window stays open after the watermark passed its end. Later clicks still count,
    /// as correction rows for their window.
    #[serde(default = "default_allowed_lateness")]
    pub allowed_lateness: Duration,

    /// The grid every viewport is divided into.
    #[serde(default)]
    pub grid: GridSpec,

    /// Aggregator replicas (engine `Deployment`). They split the shards; more replicas than
    /// shards stay idle. 0 pauses the aggregation.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Read the stream with enhanced fan-out (engine `Deployment`): the operator registers the
    /// stream consumer `<name>-aggregator` and the aggregator subscribes to each shard through
    /// it, getting its own 2 MB/s per shard and records within milliseconds instead of sharing
    /// each shard's throughput and 5 reads/s with the raw archive and every other reader.
    /// Billed per consumer-shard hour and per GB; turning it off deregisters the consumer.
    #[serde(default)]
    pub enhanced_fan_out: bool,

    /// Aggregator container image (engine `Deployment`). Defaults to the image that matches the
    /// operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// IAM role for the aggregator's service account (IRSA annotation), engine `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IAM_ROLE_ARN_PATTERN))]
    pub service_account_role_arn: Option<String>,

    /// Compute resources of the aggregator container (engine `Deployment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The Managed Flink application. Required when engine is `ManagedFlink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink: Option<FlinkSpec>,
}

impl Default for AggregationSpec {
    fn default() -> Self {
        AggregationSpec {
            engine: AggregationEngine::default(),
            window: default_window(),
            allowed_lateness: default_allowed_lateness(),
            grid: GridSpec::default(),
            replicas: default_replicas(),
            enhanced_fan_out: false,
            image: None,
            service_account_role_arn: None,
            resources: None,
            flink: None,
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

fn default_allowed_lateness() -> Duration {
    Duration::from_secs(30)
}

fn default_replicas() -> i32 {
    1
}

/// What runs the viewer's queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ViewerEngine {
    #[default]
    Athena,
    Embedded,
}

/// What runs the aggregation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AggregationEngine {
    #[default]
    Deployment,
    ManagedFlink,
}

/// The heatmap grid: `grid_x = clamp(floor(columns * x / viewport_width), 0, columns - 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GridSpec {
    /// Cells across the viewport.
    #[serde(default = "default_grid_side")]
    #[schemars(range(min = 1, max = 1000))]
    pub columns: i32,

    /// Cells down the viewport.
    #[serde(default = "default_grid_side")]
    #[schemars(range(min = 1, max = 1000))]
    pub rows: i32,
}

impl Default for GridSpec {
    fn default() -> Self {
        GridSpec {
            columns: default_grid_side(),
            rows: default_grid_side(),
        }
    }
}

fn default_grid_side() -> i32 {
    20
}

/// A Managed Service for Apache Flink application running the aggregation job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.applicationName) == has(oldSelf.applicationName) && (!has(self.applicationName) || self.applicationName == oldSelf.applicationName)",
    "message": "aggregation.flink.applicationName is immutable: the old application would keep running beside the new one; create a new pipeline instead"
}]))]
pub struct FlinkSpec {
    /// Application name. Defaults to `<pipeline name>-aggregator`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(AWS_NAME_PATTERN))]
    pub application_name: Option<String>,

    /// Flink runtime environment.
    #[serde(default = "default_flink_runtime")]
    #[schemars(pattern(FLINK_RUNTIME_PATTERN))]
    pub runtime: String,

    /// Total parallelism of the job. Unset: 1 on an application the operator creates; an adopted
    /// one keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<i32>,

    /// Parallel tasks per KPU (1 to 8). Unset: 1 on an application the operator creates; an
    /// adopted one keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub parallelism_per_kpu: Option<i32>,

    /// Bucket holding the application's code (JAR or ZIP).
    #[schemars(length(min = 3, max = 63), pattern(BUCKET_PATTERN))]
    pub code_s3_bucket: String,

    /// Key of the application's code in that bucket.
    #[schemars(length(min = 1, max = 1024))]
    pub code_s3_key: String,

    /// IAM role the application runs as.
    #[schemars(pattern(IAM_ROLE_ARN_PATTERN))]
    pub role_arn: String,
}

impl FlinkSpec {
    /// Parallelism of an application the operator creates, for the fields left unset.
    pub const DEFAULT_PARALLELISM: i32 = 1;
    pub const DEFAULT_PARALLELISM_PER_KPU: i32 = 1;
}

fn default_flink_runtime() -> String {
    "FLINK-1_18".to_owned()
}

/// The Glue Data Catalog over the curated data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.partitions != 'Crawler' || (has(self.crawler) && has(self.crawler.roleArn))",
    "message": "catalog.crawler.roleArn is required when catalog.partitions is Crawler"
}]))]
pub struct CatalogSpec {
    /// Glue database. Immutable.
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 255), pattern(GLUE_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "catalog.database is immutable: the old database and table would stay behind, registered over the same data; create a new pipeline instead"
    }]))]
    pub database: String,

    /// Glue table over the curated Parquet files. Immutable.
    #[serde(default = "default_table")]
    #[schemars(length(min = 1, max = 255), pattern(GLUE_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "catalog.table is immutable: the old table would stay registered over the same data; create a new pipeline instead"
    }]))]
    pub table: String,

    /// How partitions become visible: `Projection` (Athena partition projection, no crawler,
    /// new hours are queryable at once) or `Crawler` (a scheduled Glue crawler, as in the demo).
    #[serde(default)]
    pub partitions: PartitionDiscovery,

    /// The Glue crawler, for partitions `Crawler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crawler: Option<CrawlerSpec>,
}

impl Default for CatalogSpec {
    fn default() -> Self {
        CatalogSpec {
            database: default_database(),
            table: default_table(),
            partitions: PartitionDiscovery::default(),
            crawler: None,
        }
    }
}

fn default_database() -> String {
    "heatmap_demo".to_owned()
}

fn default_table() -> String {
    "curated_heatmap".to_owned()
}

/// How new partitions of the curated table become visible to Athena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PartitionDiscovery {
    #[default]
    Projection,
    Crawler,
}

/// A Glue crawler that adds the curated table's partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)",
    "message": "catalog.crawler.name is immutable: the old crawler would keep running beside the new one; create a new pipeline instead"
}]))]
pub struct CrawlerSpec {
    /// Crawler name. Defaults to `<pipeline name>-curated`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,

    /// When the crawler runs (Glue cron syntax).
    #[serde(default = "default_crawler_schedule")]
    #[schemars(pattern(CRON_PATTERN))]
    pub schedule: String,

    /// IAM role the crawler runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IAM_ROLE_ARN_PATTERN))]
    pub role_arn: Option<String>,
}

fn default_crawler_schedule() -> String {
    "cron(0/30 * * * ? *)".to_owned()
}

/// The Athena workgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.resultsEncryption) || self.resultsEncryption != 'SseKms' || has(self.resultsKmsKeyId)",
        "message": "query.resultsKmsKeyId is required when query.resultsEncryption is SseKms"
    },
    {
        "rule": "!has(self.resultsKmsKeyId) || (has(self.resultsEncryption) && self.resultsEncryption == 'SseKms')",
        "message": "query.resultsKmsKeyId applies only to resultsEncryption SseKms"
    }
]))]
pub struct QuerySpec {
    /// Workgroup name. Immutable.
    #[serde(default = "default_workgroup")]
    #[schemars(length(min = 1, max = 128), pattern(WORKGROUP_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "query.workgroup is immutable: the old workgroup and its settings would stay behind; create a new pipeline instead"
    }]))]
    pub workgroup: String,

    /// Key prefix for query results in the query-results bucket.
    #[serde(default = "default_results_prefix")]
    #[schemars(length(max = 1024))]
    pub results_prefix: String,

    /// Cancel a query once it has scanned this many bytes (at least 10 MiB). Unlimited if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_BYTES_SCANNED_CUTOFF))]
    pub bytes_scanned_cutoff_per_query: Option<i64>,

    /// Encryption of the query results Athena writes: `SseS3` (the default) or `SseKms` with
    /// `resultsKmsKeyId`. A workgroup that already encrypts more strongly keeps its setting.
    #[serde(default)]
    pub results_encryption: ResultsEncryption,

    /// KMS key (ARN or alias) of `resultsEncryption: SseKms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub results_kms_key_id: Option<String>,
}

/// How Athena encrypts query results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ResultsEncryption {
    #[default]
    SseS3,
    SseKms,
}

impl Default for QuerySpec {
    fn default() -> Self {
        QuerySpec {
            workgroup: default_workgroup(),
            results_prefix: default_results_prefix(),
            bytes_scanned_cutoff_per_query: None,
            results_encryption: ResultsEncryption::default(),
            results_kms_key_id: None,
        }
    }
}

fn default_workgroup() -> String {
    "heatmap-demo-wg".to_owned()
}

fn default_results_prefix() -> String {
    "athena-results/".to_owned()
}

/// The click collector Deployment and Service (`<pipeline name>-collector`, port 80).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.enabled || size(self.allowedOrigins) > 0",
    "message": "collector.allowedOrigins is required when collector.enabled is true: list the sites whose pages send clicks (https://shop.example.com), or [\"*\"] to accept any origin"
}]))]
pub struct CollectorSpec {
    /// Whether the pipeline runs a collector.
    #[serde(default)]
    pub enabled: bool,

    /// Collector replicas; each batches clicks into Kinesis PutRecords calls on its own.
    #[serde(default = "default_frontend_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// Browser origins allowed to post clicks (CORS), exact, like `https://shop.example.com`;
    /// `*` allows every origin.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub allowed_origins: Vec<String>,

    /// Clicks per second each client address may send (token bucket); 0 turns the limit off.
    #[serde(default = "default_rate_limit")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub rate_limit_per_second: i32,

    /// How many proxies in front of the collector (an Ingress controller, a cloud load
    /// balancer) append to `X-Forwarded-For`: the client address, for the rate limit, is read
    /// that many hops back. 0 (the default) ignores the header; behind an Ingress leave it at
    /// 0 and every browser shares the proxy's one rate-limit bucket. Never set it higher than
    /// the proxies you run: clients could then choose their own address.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub forwarded_for_hops: i32,

    /// Container image. Defaults to the image that matches the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// IAM role for the collector's service account (IRSA annotation): `kinesis:PutRecords` on
    /// the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IAM_ROLE_ARN_PATTERN))]
    pub service_account_role_arn: Option<String>,

    /// Compute resources of the collector container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for CollectorSpec {
    fn default() -> Self {
        CollectorSpec {
            enabled: false,
            replicas: default_frontend_replicas(),
            allowed_origins: Vec::new(),
            rate_limit_per_second: default_rate_limit(),
            forwarded_for_hops: 0,
            image: None,
            service_account_role_arn: None,
            resources: None,
        }
    }
}

fn default_frontend_replicas() -> i32 {
    1
}

fn default_rate_limit() -> i32 {
    50
}

/// The heatmap viewer Deployment and Service (`<pipeline name>-viewer`, port 80).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ViewerSpec {
    /// Whether the pipeline runs a viewer.
    #[serde(default)]
    pub enabled: bool,

    /// Viewer replicas.
    #[serde(default = "default_frontend_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// Live mode: add the counts the aggregator replicas still hold open (engine `Deployment`).
    #[serde(default = "default_true")]
    pub live: bool,

    /// What runs the viewer's SQL: `Athena` (the pipeline's workgroup over the Glue table) or
    /// `Embedded` (an SQL engine inside the viewer reading the curated Parquet in S3 directly:
    /// no Athena charges, suited to small sites, and the choice for AWS emulators without
    /// Athena). Both run the same queries on the same table layout.
    #[serde(default)]
    pub engine: ViewerEngine,

    /// Let users run their own SQL on Athena from the UI. Off by default: only the viewer's
    /// parameterised queries run.
    #[serde(default)]
    pub allow_raw_sql: bool,

    /// Container image. Defaults to the image that matches the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// IAM role for the viewer's service account (IRSA annotation): Athena queries in the
    /// workgroup, Glue reads of the table, S3 reads of the curated data and the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IAM_ROLE_ARN_PATTERN))]
    pub service_account_role_arn: Option<String>,

    /// Compute resources of the viewer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ViewerSpec {
    fn default() -> Self {
        ViewerSpec {
            enabled: false,
            replicas: default_frontend_replicas(),
            live: true,
            engine: ViewerEngine::default(),
            allow_raw_sql: false,
            image: None,
            service_account_role_arn: None,
            resources: None,
        }
    }
}

/// What the operator observed and made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClickHeatmapPipelineStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, plus one condition per part of the pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,

    /// Names and ARNs of the resources the pipeline made.
    #[serde(default, skip_serializing_if = "PipelineResources::is_empty")]
    pub resources: PipelineResources,

    /// What the aggregator reports about the data: is it flowing, how fresh is the table, what
    /// is rejected (engine `Deployment`; read from its progress reports every
    /// `health.checkInterval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane: Option<DataPlaneStatus>,
}

/// The data plane as the aggregator replicas last reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneStatus {
    /// Replicas whose report is recent (written within the last three minutes).
    pub replicas_reporting: u32,
    /// Shards being read.
    pub shards: u32,
    /// The latest event time any shard delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<String>,
    /// The slowest shard's watermark: windows ending before it are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// The largest `MillisBehindLatest` of the shards' last reads: how far the aggregator is
    /// behind the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_millis: Option<i64>,
    /// The end of the newest window in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_committed_window_end: Option<String>,
    /// When a shard last committed files and a checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_time: Option<String>,
    /// When the last valid click was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted_time: Option<String>,
    /// Clicks accepted per minute (over about the last minute).
    pub accepted_per_minute: u64,
    /// Records rejected per minute, by reason (`malformed_json`, `missing_field`…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected_per_minute: BTreeMap<String, u64>,
    /// Since the reporting replicas started: clicks accepted, records rejected, and Parquet
    /// files committed.
    pub accepted_total: u64,
    pub rejected_total: u64,
    pub files_committed: u64,
}

/// Names and ARNs of the resources a pipeline made; a field is set once the resource exists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineResources {
    /// Kinesis data stream ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_arn: Option<String>,
    /// Firehose delivery stream ARN (raw archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_stream_arn: Option<String>,
    /// Raw archive bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_bucket: Option<String>,
    /// Curated data bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curated_bucket: Option<String>,
    /// Athena query results bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_results_bucket: Option<String>,
    /// Glue database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue_database: Option<String>,
    /// Glue table name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue_table: Option<String>,
    /// Glue crawler name (partitions `Crawler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crawler_name: Option<String>,
    /// Athena workgroup name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workgroup: Option<String>,
    /// Aggregator Deployment name (engine `Deployment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator_deployment: Option<String>,
    /// Managed Flink application ARN (engine `ManagedFlink`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink_application_arn: Option<String>,
    /// Collector Service name (`collector.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_service: Option<String>,
    /// Viewer Service name (`viewer.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewer_service: Option<String>,
}

impl PipelineResources {
    /// True when nothing has been made yet.
    pub fn is_empty(&self) -> bool {
        *self == PipelineResources::default()
    }
}

/// The header of the generated CRD file.
const CRD_HEADER: &str = "# Generated by `cargo run -p clickheatmap-crds --features resource --bin crdgen`.\n\
# Do not edit by hand: change crds/src/pipeline.rs and regenerate.\n";

/// The `clickheatmappipelines.clickheatmap.io` CustomResourceDefinition as YAML, exactly as
/// committed in the Helm chart.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(&ClickHeatmapPipeline::crd())?;
    Ok(format!("{CRD_HEADER}{body}"))
}

#[cfg(test)]
mod tests;
