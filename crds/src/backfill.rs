//! The `ClickHeatmapBackfill` custom resource (`clickheatmap.io/v1alpha1`): a one-shot request
//! to rebuild a pipeline's curated windows in a time range from its raw archive.
//!
//! Why a resource of its own rather than `spec.backfills[]` on the pipeline: a backfill is a
//! job with a lifecycle (pending, running, done or failed), progress and a result, requested by
//! someone at some moment — not desired state that a GitOps tool keeps in sync. As its own
//! object it can be created and deleted without touching the pipeline's manifest (no drift in
//! Argo CD), has its own RBAC (who may rewrite history is not who may change the pipeline), its
//! own status and Events, and many can queue up for one pipeline. Its spec is immutable: a
//! different request is a new object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The condition that sums up a backfill (`True` once it finished, `False` while it waits or
/// runs, with the reason saying which).
pub const COMPLETE_CONDITION: &str = "Complete";

/// An RFC 3339 UTC instant, as `kubectl` users write them: `2026-12-01T10:00:00Z`.
const INSTANT_PATTERN: &str =
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$";
/// A Glue table name.
const TABLE_PATTERN: &str = "^[a-z0-9_]+$";

/// A request to rebuild a pipeline's curated windows in `[from, to)` from its raw archive.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "clickheatmap.io",
    version = "v1alpha1",
    kind = "ClickHeatmapBackfill",
    namespaced,
    shortname = "chb",
    status = "ClickHeatmapBackfillStatus",
    derive = "PartialEq",
    doc = "A request to rebuild a ClickHeatmapPipeline's curated windows in a time range from its raw archive.",
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".spec.pipeline",
        description = "The pipeline whose table is rebuilt"
    ),
    printcolumn(name = "From", type_ = "string", json_path = ".spec.from"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.to"),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded or Failed"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.summary",
        description = "Partitions done, objects read, time left"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "a backfill's spec is immutable: create a new ClickHeatmapBackfill for another request"
    },
    {
        "rule": "timestamp(self.from) < timestamp(self.to)",
        "message": "from must be before to"
    }
]))]
pub struct ClickHeatmapBackfillSpec {
    /// The `ClickHeatmapPipeline` (in this namespace) whose curated table is rebuilt from its raw
    /// archive.
    #[schemars(length(min = 1, max = 253))]
    pub pipeline: String,

    /// Start of the event-time range, RFC 3339 in UTC (`2026-12-01T10:00:00Z`). Windows that lie
    /// entirely inside `[from, to)` are rebuilt; windows the live aggregator still holds open are
    /// not (the status says where it stopped).
    #[schemars(length(max = 40), pattern(INSTANT_PATTERN))]
    pub from: String,

    /// End of the range (exclusive), RFC 3339 in UTC.
    #[schemars(length(max = 40), pattern(INSTANT_PATTERN))]
    pub to: String,

    /// How long before its event time a click may have reached the archive (clocks running
    /// ahead, Firehose naming a folder after the hour its buffer opened).
    #[serde(default = "one_hour")]
    #[schemars(default = "one_hour")]
    pub early_arrivals: Duration,

    /// How long after its window a click may have reached the archive and still count. Clicks
    /// that arrived later are not part of the rebuilt windows.
    #[serde(default = "one_hour")]
    #[schemars(default = "one_hour")]
    pub late_arrivals: Duration,

    /// Archive objects read at once by the backfill's pod.
    #[serde(default = "default_parallelism")]
    #[schemars(default = "default_parallelism", range(min = 1, max = 64))]
    pub parallelism: u32,

    /// Rebuild into a new table with another grid or window instead of the pipeline's own table
    /// (a re-grid). The new table's files go beside the pipeline's, under `<table>/`; the catalog
    /// is not changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regrid: Option<RegridSpec>,
}

/// A rebuild into a new table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegridSpec {
    /// The new table's folder name (and Glue table name, if you add one).
    #[schemars(length(min = 1, max = 255), pattern(TABLE_PATTERN))]
    pub table: String,
    /// Grid columns; the pipeline's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub columns: Option<u16>,
    /// Grid rows; the pipeline's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub rows: Option<u16>,
    /// Window length; the pipeline's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_size: Option<Duration>,
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

fn default_parallelism() -> u32 {
    4
}

/// What the operator reports about a backfill.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClickHeatmapBackfillStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackfillPhase>,
    /// `Complete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// The Job that runs (or ran) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The windows rebuilt: the requested range cut to whole windows, and cut where the live
    /// aggregator still holds windows open or the archive may be incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_to: Option<String>,
    /// True when the backfill stopped before `to`: later windows were still open in the live
    /// aggregator, or their clicks could still be on their way to the archive. A new backfill
    /// from `coveredTo` later rebuilds the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_before_end: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackfillProgressStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// Where a backfill is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackfillPhase {
    /// Waiting: for its pipeline, for another backfill of the same pipeline, or for its Job.
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// The backfill's own report, read from its state object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillProgressStatus {
    /// One line for `kubectl get`: `partitions 12/48, objects 130/520, ETA 4m`.
    pub summary: String,
    pub objects_read: u64,
    pub objects_total: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
    /// Records read, clicks in the range, records rejected (by reason in the dead letters) and
    /// objects that could not be decoded.
    pub records: u64,
    pub clicks: u64,
    pub rejected: u64,
    pub damaged_objects: u64,
    pub partitions_done: u64,
    pub partitions_total: u64,
    pub partitions_changed: u64,
    pub windows_rewritten: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// The header of the generated CRD file.
const CRD_HEADER: &str = "# Generated by `cargo run -p clickheatmap-crds --features resource --bin crdgen -- backfills`.\n\
# Do not edit by hand: change crds/src/backfill.rs and regenerate.\n";

/// The `clickheatmapbackfills.clickheatmap.io` CustomResourceDefinition as YAML, exactly as
/// committed in the Helm chart.
pub fn backfill_crd_yaml() -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(&ClickHeatmapBackfill::crd())?;
    Ok(format!("{CRD_HEADER}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRD_PATH: &str =
        "charts/clickheatmap-operator/crds/clickheatmap.io_clickheatmapbackfills.yaml";

    #[test]
    fn committed_crd_matches_the_generator() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(CRD_PATH);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == backfill_crd_yaml().unwrap(),
            "{CRD_PATH} is not what the generator writes; regenerate it from the workspace root with:\n  \
             cargo run -p clickheatmap-crds --features resource --bin crdgen -- backfills > {CRD_PATH}"
        );
    }

    #[test]
    fn defaults_fill_what_a_minimal_manifest_leaves_out() {
        let backfill: ClickHeatmapBackfillSpec = serde_json::from_value(serde_json::json!({
            "pipeline": "shop", "from": "2026-12-01T00:00:00Z", "to": "2026-12-02T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(backfill.early_arrivals, Duration::from_secs(3600));
        assert_eq!(backfill.parallelism, 4);
        let schema = serde_json::to_value(ClickHeatmapBackfill::crd()).unwrap();
        let spec =
            &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["lateArrivals"]["default"], "1h");
        assert_eq!(
            spec["required"],
            serde_json::json!(["from", "pipeline", "to"])
        );
    }
}
