//! A `ClickHeatmapPipeline` as the API server stores it, which may not fit the Rust type.
//!
//! The controller's watch deserialises every object of the kind. With the typed
//! `ClickHeatmapPipeline`, one object that does not fit (written through another version of the
//! CRD, under a looser schema, or with a value the schema admits but the type cannot hold) fails
//! the whole list, and the watch retries forever: every other pipeline stops being reconciled.
//! [`StoredPipeline`] always deserialises — metadata, the parsed pipeline or why it could not be
//! parsed, and the raw status — so the malformed object gets a condition and an Event of its own
//! and the others go on.

use std::borrow::Cow;
use std::sync::Arc;

use clickheatmap_crds::ClickHeatmapPipeline;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One stored object of the kind.
#[derive(Clone, Debug)]
pub struct StoredPipeline {
    pub metadata: ObjectMeta,
    /// The pipeline, or the reason it does not fit the type.
    pub parsed: Result<Arc<ClickHeatmapPipeline>, String>,
    /// The status as stored (to avoid rewriting the same condition).
    pub status: Option<Value>,
}

impl<'de> Deserialize<'de> for StoredPipeline {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let metadata: ObjectMeta =
            serde_json::from_value(value.get("metadata").cloned().unwrap_or(Value::Null))
                .map_err(D::Error::custom)?;
        let status = value.get("status").cloned();
        let parsed = serde_json::from_value::<ClickHeatmapPipeline>(value)
            .map(Arc::new)
            .map_err(|error| error.to_string());
        Ok(StoredPipeline {
            metadata,
            parsed,
            status,
        })
    }
}

impl Resource for StoredPipeline {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ClickHeatmapPipeline::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ClickHeatmapPipeline::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ClickHeatmapPipeline::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ClickHeatmapPipeline::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl StoredPipeline {
    /// Whether the stored status already has a `Ready` condition with this reason and message.
    pub fn says(&self, reason: &str, message: &str) -> bool {
        self.status
            .as_ref()
            .and_then(|status| status.get("conditions"))
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions.iter().any(|condition| {
                    condition["type"] == "Ready"
                        && condition["status"] == "False"
                        && condition["reason"] == reason
                        && condition["message"] == message
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(lateness: &str) -> Value {
        json!({
            "apiVersion": "clickheatmap.io/v1alpha1",
            "kind": "ClickHeatmapPipeline",
            "metadata": {"name": "shop", "namespace": "analytics", "uid": "u1"},
            "spec": {
                "region": "ap-northeast-2",
                "stream": {"name": "shop-clicks"},
                "buckets": {"raw": "r-123", "curated": "c-123", "queryResults": "q-123"},
                "rawArchive": {"roleArn": "arn:aws:iam::123456789012:role/firehose"},
                "aggregation": {"allowedLateness": lateness}
            },
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": "m", "lastTransitionTime": "2026-12-03T00:00:00Z"}]}
        })
    }

    #[test]
    fn a_pipeline_that_fits_is_parsed() {
        let object: StoredPipeline = serde_json::from_value(stored("30s")).expect("stored");
        assert_eq!(object.metadata.name.as_deref(), Some("shop"));
        assert!(object.parsed.is_ok());
    }

    #[test]
    fn one_that_does_not_fit_keeps_its_metadata_and_the_reason() {
        let object: StoredPipeline =
            serde_json::from_value(stored("99999999999999999999999d")).expect("stored");
        assert_eq!(object.metadata.uid.as_deref(), Some("u1"));
        let reason = object.parsed.as_ref().expect_err("does not fit");
        assert!(reason.contains("99999999999999999999999"), "{reason}");
        assert!(object.says("InvalidSpec", "m"));
        assert!(!object.says("InvalidSpec", "other"));
    }
}
