//! The `clickheatmap.io` API types.
//!
//! This crate is the one place where the contracts between the operator and the aggregator live:
//!
//! * [`aggregator_config`]: the configuration the operator hands to the aggregator (stream,
//!   window, grid, output location, limits). The operator serialises it into the aggregator's
//!   ConfigMap and the aggregator deserialises it, so there are never two copies that can drift.
//! * [`duration`]: the human-readable duration format (`60s`, `5m`, `500ms`) used by both the
//!   custom resource and the aggregator configuration.
//! * `pipeline` (cargo feature `resource`): the `ClickHeatmapPipeline` custom resource
//!   (`clickheatmap.io/v1alpha1`, short name `chp`) — its spec with the original demo's defaults,
//!   the schema validation the API server enforces, the status the operator writes, and
//!   `crd_yaml()`, which renders the CustomResourceDefinition (printed by the `crdgen` binary).
//! * `backfill` (feature `resource`): the `ClickHeatmapBackfill` custom resource (short name
//!   `chb`), a one-shot request to rebuild a pipeline's windows from its raw archive.
//! * [`backfill_state`]: a backfill's checkpoint and progress report, written by the aggregator
//!   and read by the operator.
//! * [`progress`]: the progress report each aggregator replica keeps beside its checkpoints and
//!   the operator reads for the pipeline's data-plane status.
//!
//! The `resource` feature pulls in `kube` (derive only, no client), `k8s-openapi` and `schemars`;
//! it is off by default so the aggregator, which only needs [`AggregatorConfig`], never compiles
//! them. Nothing in this crate performs I/O; the dependency picture stays
//! operator → crds ← aggregator.

pub mod aggregator_config;
#[cfg(feature = "resource")]
pub mod backfill;
pub mod backfill_state;
pub mod duration;
#[cfg(feature = "resource")]
pub mod pipeline;
pub mod progress;

pub use aggregator_config::{
    AggregatorConfig, CheckpointConfig, ConfigError, EnhancedFanOutConfig, GridConfig,
    KinesisSourceConfig, LimitsConfig, OutputConfig, ReplicasConfig, ShardAssignment, SourceConfig,
    StartPosition, WindowConfig,
};
#[cfg(feature = "resource")]
pub use backfill::{
    BackfillPhase, BackfillProgressStatus, COMPLETE_CONDITION, ClickHeatmapBackfill,
    ClickHeatmapBackfillSpec, ClickHeatmapBackfillStatus, RegridSpec, backfill_crd_yaml,
};
pub use duration::{Duration, DurationParseError};
#[cfg(feature = "resource")]
pub use pipeline::{
    AggregationEngine, AggregationSpec, BucketsSpec, CatalogSpec, ClickHeatmapPipeline,
    ClickHeatmapPipelineSpec, ClickHeatmapPipelineStatus, CollectorSpec, Compression, CrawlerSpec,
    DataPlaneStatus, DeletionPolicy, FlinkSpec, GridSpec, HealthSpec, PartitionDiscovery,
    PipelineResources, QuerySpec, READY_CONDITION, RawArchiveSpec, ResultsEncryption,
    StreamEncryption, StreamMode, StreamSpec, ViewerEngine, ViewerSpec, WorkloadsSpec, crd_yaml,
};
