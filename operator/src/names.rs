//! Who owns what, and what everything is called.
//!
//! Every name and ARN the reconcilers use is derived here, once, from the pipeline's identity
//! (namespace/name), its spec and the AWS account the operator runs in. Keeping this pure and in
//! one place means the `desired` functions stay pure too, the `plan` command can show complete
//! requests (a Firehose source ARN) before anything exists, and the defaults documented in the
//! CRD (`<stream>-raw`, `<pipeline>-curated`, `<pipeline>-aggregator`) have exactly one
//! implementation.

use std::collections::BTreeMap;

use clickheatmap_crds::{ClickHeatmapPipeline, ClickHeatmapPipelineSpec};
use serde::Serialize;

/// Tag key carrying the owning pipeline, `<namespace>/<name>`.
pub const PIPELINE_TAG: &str = "clickheatmap.io/pipeline";
/// Tag key saying which program manages the resource.
pub const MANAGED_BY_TAG: &str = "clickheatmap.io/managed-by";
/// Value of [`MANAGED_BY_TAG`].
pub const MANAGED_BY: &str = "clickheatmap-operator";

/// Directory of the curated data inside the curated bucket (the aggregator's output root).
pub const CURATED_ROOT: &str = "curated";

/// The enhanced fan-out consumer of a pipeline's aggregator, on the pipeline's stream.
pub fn fan_out_consumer_name(pipeline: &str) -> String {
    format!("{pipeline}-aggregator")
}

/// The pipeline a resource belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
}

impl Owner {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Owner {
        Owner {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The owner of a custom resource; a manifest without a namespace is in `default`, as
    /// `kubectl apply` would put it.
    pub fn of(pipeline: &ClickHeatmapPipeline) -> Owner {
        Owner::new(
            pipeline
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            pipeline.metadata.name.clone().unwrap_or_default(),
        )
    }

    /// The value of the [`PIPELINE_TAG`] tag.
    pub fn tag_value(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The tags every resource of this pipeline carries.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (PIPELINE_TAG.to_owned(), self.tag_value()),
            (MANAGED_BY_TAG.to_owned(), MANAGED_BY.to_owned()),
        ])
    }
}

/// The AWS account and partition the operator's credentials belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: String,
    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
}

impl Account {
    pub fn new(id: impl Into<String>, partition: impl Into<String>) -> Account {
        Account {
            id: id.into(),
            partition: partition.into(),
        }
    }
}

/// The tags of every AWS resource of a pipeline: the spec's own, then the owner tags (which win).
pub fn resource_tags(
    spec: &clickheatmap_crds::ClickHeatmapPipelineSpec,
    owner: &Owner,
) -> BTreeMap<String, String> {
    let mut tags = spec.tags.clone();
    tags.extend(owner.tags());
    tags
}

/// Everything that names the pipeline's resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Names {
    pub owner: Owner,
    pub account: Account,
    pub region: String,
}

impl Names {
    pub fn new(owner: Owner, account: Account, region: impl Into<String>) -> Names {
        Names {
            owner,
            account,
            region: region.into(),
        }
    }

    /// Names for a pipeline in the given account (the region is the spec's).
    pub fn for_pipeline(pipeline: &ClickHeatmapPipeline, account: Account) -> Names {
        Names::new(Owner::of(pipeline), account, pipeline.spec.region.clone())
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.account.partition, self.region, self.account.id
        )
    }

    pub fn fan_out_consumer(&self) -> String {
        fan_out_consumer_name(&self.owner.name)
    }

    pub fn stream_arn(&self, stream: &str) -> String {
        self.arn("kinesis", &format!("stream/{stream}"))
    }

    pub fn delivery_stream_arn(&self, delivery_stream: &str) -> String {
        self.arn("firehose", &format!("deliverystream/{delivery_stream}"))
    }

    pub fn bucket_arn(&self, bucket: &str) -> String {
        format!("arn:{}:s3:::{bucket}", self.account.partition)
    }

    pub fn glue_database_arn(&self, database: &str) -> String {
        self.arn("glue", &format!("database/{database}"))
    }

    pub fn glue_crawler_arn(&self, crawler: &str) -> String {
        self.arn("glue", &format!("crawler/{crawler}"))
    }

    pub fn workgroup_arn(&self, workgroup: &str) -> String {
        self.arn("athena", &format!("workgroup/{workgroup}"))
    }

    pub fn flink_application_arn(&self, application: &str) -> String {
        self.arn("kinesisanalytics", &format!("application/{application}"))
    }
}

/// The Firehose delivery stream's name: the spec's, or `<stream name>-raw`.
pub fn delivery_stream_name(spec: &ClickHeatmapPipelineSpec) -> String {
    spec.raw_archive
        .delivery_stream_name
        .clone()
        .unwrap_or_else(|| format!("{}-raw", spec.stream.name))
}

/// The Glue crawler's name: the spec's, or `<pipeline name>-curated`.
pub fn crawler_name(spec: &ClickHeatmapPipelineSpec, owner: &Owner) -> String {
    spec.catalog
        .crawler
        .as_ref()
        .and_then(|crawler| crawler.name.clone())
        .unwrap_or_else(|| format!("{}-curated", owner.name))
}

/// The Managed Flink application's name: the spec's, or `<pipeline name>-aggregator`.
pub fn flink_application_name(spec: &ClickHeatmapPipelineSpec, owner: &Owner) -> String {
    spec.aggregation
        .flink
        .as_ref()
        .and_then(|flink| flink.application_name.clone())
        .unwrap_or_else(|| format!("{}-aggregator", owner.name))
}

/// `s3://<curated bucket>/curated/<table>/`: where the curated table's files live (the
/// aggregator writes `<root>/<table>/dt=…/hour=…/`).
pub fn curated_table_location(spec: &ClickHeatmapPipelineSpec) -> String {
    format!(
        "s3://{}/{CURATED_ROOT}/{}/",
        spec.buckets.curated, spec.catalog.table
    )
}

/// `s3://<query results bucket>/<results prefix>`.
pub fn query_results_location(spec: &ClickHeatmapPipelineSpec) -> String {
    let prefix = spec.query.results_prefix.trim_start_matches('/');
    format!("s3://{}/{prefix}", spec.buckets.query_results)
}

/// The partition of a region: what goes after `arn:`.
pub fn partition_of_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Whose a resource is, judged from its tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Tagged by this pipeline.
    Ours,
    /// Carries no pipeline tag.
    Unowned,
    /// Tagged by another pipeline (the tag's value).
    Foreign(String),
}

impl Ownership {
    pub fn of(tags: &BTreeMap<String, String>, owner: &Owner) -> Ownership {
        match tags.get(PIPELINE_TAG) {
            None => Ownership::Unowned,
            Some(value) if *value == owner.tag_value() => Ownership::Ours,
            Some(value) => Ownership::Foreign(value.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture;

    #[test]
    fn defaults_follow_the_crd_docs() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let owner = Owner::of(&pipeline);
        assert_eq!(owner, Owner::new("default", "shop"));
        assert_eq!(owner.tag_value(), "default/shop");
        assert_eq!(delivery_stream_name(&pipeline.spec), "shop-clicks-raw");
        assert_eq!(crawler_name(&pipeline.spec, &owner), "shop-curated");
        assert_eq!(
            flink_application_name(&pipeline.spec, &owner),
            "shop-aggregator"
        );
        assert_eq!(
            curated_table_location(&pipeline.spec),
            "s3://shop-heatmap-curated-123456789012/curated/curated_heatmap/"
        );
        assert_eq!(
            query_results_location(&pipeline.spec),
            "s3://shop-heatmap-athena-123456789012/athena-results/"
        );
    }

    #[test]
    fn names_from_the_full_example() {
        let pipeline = fixture("pipeline-full.yaml");
        let owner = Owner::of(&pipeline);
        assert_eq!(delivery_stream_name(&pipeline.spec), "shop-full-clicks-raw");
        assert_eq!(crawler_name(&pipeline.spec, &owner), "shop-full-curated");
        assert_eq!(
            flink_application_name(&pipeline.spec, &owner),
            "shop-full-heatmap"
        );
        let names = Names::for_pipeline(&pipeline, Account::new("123456789012", "aws"));
        assert_eq!(
            names.stream_arn("shop-full-clicks"),
            "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-full-clicks"
        );
        assert_eq!(
            names.workgroup_arn("shop-heatmap-wg"),
            "arn:aws:athena:ap-northeast-2:123456789012:workgroup/shop-heatmap-wg"
        );
        assert_eq!(names.bucket_arn("b"), "arn:aws:s3:::b");
    }

    #[test]
    fn ownership_from_tags() {
        let owner = Owner::new("analytics", "shop");
        assert_eq!(Ownership::of(&owner.tags(), &owner), Ownership::Ours);
        assert_eq!(Ownership::of(&BTreeMap::new(), &owner), Ownership::Unowned);
        let other = Owner::new("analytics", "other").tags();
        assert_eq!(
            Ownership::of(&other, &owner),
            Ownership::Foreign("analytics/other".into())
        );
    }

    #[test]
    fn partitions() {
        assert_eq!(partition_of_region("ap-northeast-2"), "aws");
        assert_eq!(partition_of_region("cn-north-1"), "aws-cn");
        assert_eq!(partition_of_region("us-gov-west-1"), "aws-us-gov");
    }
}
