//! Counting AWS calls by operation.
//!
//! The operator promises that a resync of a pipeline that is in sync makes **no write** to AWS.
//! A diff that comes back empty is one half of that proof; the other half is to watch the wire.
//! [`CallCounter`] is an SDK interceptor that records every operation a client executes (once
//! per operation, not per retry attempt) under `service:Operation`, so tests can assert that no
//! `Create*`/`Put*`/`Update*`/`Delete*`/`Tag*`/`Start*`/`Stop*` call happened, and the
//! benchmark can report AWS calls per resync. It is cheap enough to leave on in production as a
//! metrics source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::{ConfigBag, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Operation counts, keyed `service:Operation` (e.g. `Kinesis:DescribeStreamSummary`).
pub type CallCounts = BTreeMap<String, u64>;

/// An interceptor that counts operations. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<CallCounts>>,
}

impl CallCounter {
    pub fn new() -> CallCounter {
        CallCounter::default()
    }

    /// The counts so far.
    pub fn snapshot(&self) -> CallCounts {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// All calls so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// The calls made since `before` (a snapshot), with their counts.
    pub fn since(&self, before: &CallCounts) -> CallCounts {
        self.snapshot()
            .into_iter()
            .filter_map(|(operation, count)| {
                let earlier = before.get(&operation).copied().unwrap_or(0);
                (count > earlier).then(|| (operation, count - earlier))
            })
            .collect()
    }

    /// The writing calls made since `before`.
    pub fn mutating_since(&self, before: &CallCounts) -> CallCounts {
        self.since(before)
            .into_iter()
            .filter(|(operation, _)| is_mutating(operation))
            .collect()
    }

    fn record(&self, key: String) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(key).or_insert(0) += 1;
    }
}

/// True unless the operation only reads (`Get*`, `Describe*`, `List*`, `Head*`). Takes either
/// `Operation` or `service:Operation`.
pub fn is_mutating(operation: &str) -> bool {
    let name = operation.rsplit(':').next().unwrap_or(operation);
    !["Get", "Describe", "List", "Head"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "ClickheatmapCallCounter"
    }

    // Not `read_before_execution`: for client-level interceptors that hook runs before the
    // operation's configuration (which holds its name) is applied.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let key = match cfg.load::<Metadata>() {
            Some(metadata) => format!("{}:{}", metadata.service(), metadata.name()),
            None => "unknown:unknown".to_owned(),
        };
        self.record(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_operations_are_not_mutating() {
        for operation in [
            "Kinesis:DescribeStreamSummary",
            "S3:GetBucketTagging",
            "S3:HeadBucket",
            "Glue:GetTags",
            "Firehose:ListTagsForDeliveryStream",
            "STS:GetCallerIdentity",
        ] {
            assert!(!is_mutating(operation), "{operation}");
        }
        for operation in [
            "S3:CreateBucket",
            "S3:PutBucketTagging",
            "Kinesis:UpdateShardCount",
            "Kinesis:AddTagsToStream",
            "Kinesis:IncreaseStreamRetentionPeriod",
            "Glue:TagResource",
            "KinesisAnalyticsV2:StartApplication",
            "Athena:DeleteWorkGroup",
        ] {
            assert!(is_mutating(operation), "{operation}");
        }
    }

    #[test]
    fn since_subtracts_a_snapshot() {
        let counter = CallCounter::new();
        counter.record("S3:HeadBucket".into());
        let before = counter.snapshot();
        counter.record("S3:HeadBucket".into());
        counter.record("S3:CreateBucket".into());
        assert_eq!(
            counter.since(&before),
            CallCounts::from([("S3:CreateBucket".into(), 1), ("S3:HeadBucket".into(), 1)])
        );
        assert_eq!(
            counter.mutating_since(&before),
            CallCounts::from([("S3:CreateBucket".into(), 1)])
        );
        assert_eq!(counter.total(), 3);
    }
}
