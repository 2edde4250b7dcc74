//! Least privilege, checked against the code: the S3 prefixes the aggregator writes are derived
//! from the configuration the operator gives it (`workload::aggregator_config`, opened the way
//! the aggregator opens it, `Targets::open`), and docs/iam/aggregator-policy.json must allow
//! every one of them and grant nothing else. A change of layout in the aggregator that the
//! policy does not follow fails here, not in a customer's account.

use std::path::PathBuf;

use clickheatmap_aggregator::consumer::Targets;
use clickheatmap_crds::{ClickHeatmapPipeline, SourceConfig};
use clickheatmap_operator::controller::workload::aggregator_config;
use serde_json::Value;

fn example(file: &str) -> ClickHeatmapPipeline {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("example");
    let mut pipeline: ClickHeatmapPipeline = serde_norway::from_str(&text).expect("pipeline");
    pipeline.metadata.namespace = Some("analytics".to_owned());
    pipeline
}

/// The policy with the pipeline's names in place of the placeholders.
fn policy(file: &str, pipeline: &ClickHeatmapPipeline) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/iam")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .expect("policy")
        .replace("<CURATED_BUCKET>", &pipeline.spec.buckets.curated)
        .replace("<GLUE_TABLE>", &pipeline.spec.catalog.table);
    serde_json::from_str(&text).expect("policy JSON")
}

/// IAM's wildcard match: `*` is any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|skip| glob(rest, &text[head.len() + skip..]))
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
    policy["Statement"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["Sid"] == sid))
        .unwrap_or_else(|| panic!("statement {sid}"))
}

#[test]
fn the_aggregator_policy_allows_exactly_the_prefixes_it_writes() {
    for file in ["pipeline-minimal.yaml", "pipeline-full.yaml"] {
        let pipeline = example(file);
        let config = aggregator_config(&pipeline).expect("aggregator config");
        let SourceConfig::Kinesis(source) = &config.source else {
            panic!("{file}: a Kinesis source");
        };
        let targets = Targets::open(&config, &source.stream_name).expect("targets");
        let prefixes = targets.write_prefixes(&config);
        let bucket = &pipeline.spec.buckets.curated;
        let policy = policy("aggregator-policy.json", &pipeline);

        let read_write = statement(&policy, "S3ReadWriteCuratedPrefixes");
        let actions = strings(&read_write["Action"]);
        for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
            assert!(actions.iter().any(|a| a == action), "{action}");
        }
        let resources = strings(&read_write["Resource"]);
        for prefix in &prefixes {
            let object = format!("arn:aws:s3:::{bucket}/{prefix}/some/object.json");
            assert!(
                resources.iter().any(|resource| glob(resource, &object)),
                "{file}: the aggregator writes {object}, which {resources:?} do not allow"
            );
        }
        for resource in &resources {
            assert!(
                prefixes.iter().any(|prefix| glob(
                    resource,
                    &format!("arn:aws:s3:::{bucket}/{prefix}/some/object.json")
                )),
                "{file}: {resource} is granted but the aggregator writes nothing there \
                 ({prefixes:?})"
            );
        }

        // Listing: the checkpoints and leases folders (and the table), nothing else.
        let list = statement(&policy, "S3ListCuratedPrefixes");
        assert_eq!(
            strings(&list["Resource"]),
            [format!("arn:aws:s3:::{bucket}")]
        );
        let allowed = strings(&list["Condition"]["StringLike"]["s3:prefix"]);
        for prefix in [
            targets.checkpoints.prefix().to_string(),
            targets.coordination.prefix.to_string(),
            targets.output.child(&config.output.table).to_string(),
        ] {
            let listed = format!("{prefix}/");
            assert!(
                allowed.iter().any(|pattern| glob(pattern, &listed)),
                "{file}: the aggregator lists {listed}, which {allowed:?} do not allow"
            );
        }
    }
}

#[test]
fn glob_is_iams() {
    assert!(glob("a/*", "a/b/c"));
    assert!(glob("a/*/c", "a/b/c"));
    assert!(!glob("a/*", "b/a"));
    assert!(glob("exact", "exact"));
    assert!(!glob("curated/t/*", "curated/_checkpoints/x"));
}

/// The operator reads the aggregator's progress reports where the aggregator writes them
/// (`AggregatorConfig::progress_location`, the same function on both sides), and its policy
/// allows reading exactly that folder: a report's key matches, a Parquet file's does not.
#[test]
fn the_operator_policy_reads_exactly_the_progress_reports() {
    for file in ["pipeline-minimal.yaml", "pipeline-full.yaml"] {
        let pipeline = example(file);
        let config = aggregator_config(&pipeline).expect("aggregator config");
        let location = config.progress_location(&pipeline.spec.stream.name);
        let bucket = &pipeline.spec.buckets.curated;
        let prefix = location
            .strip_prefix(&format!("s3://{bucket}/"))
            .unwrap_or_else(|| panic!("{file}: {location} is in the curated bucket"));
        let policy = policy("operator-policy.json", &pipeline);
        let read = statement(&policy, "S3ReadAggregatorProgress");
        assert_eq!(strings(&read["Action"]), ["s3:GetObject"]);
        let resources = strings(&read["Resource"]);
        let allowed = |key: &str| {
            let arn = format!("arn:aws:s3:::{bucket}/{key}");
            resources.iter().any(|pattern| glob(pattern, &arn))
        };
        assert!(
            allowed(&format!("{prefix}shop-aggregator-0.json")),
            "{file}: the policy must allow reading {prefix}*"
        );
        for elsewhere in [
            format!(
                "curated/{}/dt=2026-01-01/hour=00/x.parquet",
                pipeline.spec.catalog.table
            ),
            format!(
                "curated/_checkpoints/{}/shardId-000000000000.json",
                pipeline.spec.stream.name
            ),
        ] {
            assert!(
                !allowed(&elsewhere),
                "{file}: {elsewhere} must stay unreadable"
            );
        }
        // The folder is listed through s3:ListBucket on the bucket.
        let buckets = statement(&policy, "S3PipelineBuckets");
        assert!(strings(&buckets["Action"]).contains(&"s3:ListBucket".to_owned()));
        assert!(
            strings(&buckets["Resource"]).contains(&format!("arn:aws:s3:::{bucket}")),
            "{file}: ListBucket on the curated bucket"
        );
    }
}
