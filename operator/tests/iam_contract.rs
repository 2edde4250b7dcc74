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
    // As the API server stores it: children are owned through the uid.
    pipeline.metadata.uid = Some("3f1c2b9e-0000-4000-8000-000000000001".to_owned());
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
        .replace("<GLUE_TABLE>", &pipeline.spec.catalog.table)
        .replace("<RAW_BUCKET>", &pipeline.spec.buckets.raw)
        .replace("<RAW_PREFIX>", &pipeline.spec.raw_archive.prefix);
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
        // A backfill's state, where its progress is.
        let state = config.backfill_state_location("fix-1a2b3c4d");
        let state_key = state
            .strip_prefix(&format!("s3://{bucket}/"))
            .expect("in the curated bucket");
        assert!(
            allowed(state_key),
            "{file}: the policy must allow reading {state_key}"
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

/// The operations of an AWS SDK crate (`aws-sdk-kinesis`…), by the SDK's own list: the modules
/// of its `src/operation/` folder in cargo's registry, at the version Cargo.lock pins.
fn sdk_operations(sdk: &str) -> Vec<String> {
    let lock =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
            .expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|package| package.contains(&format!("name = \"{sdk}\"\n")))
        .and_then(|package| package.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("{sdk} in Cargo.lock"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).expect("cargo registry");
    for registry in registries.flatten() {
        let folder = registry
            .path()
            .join(format!("{sdk}-{version}/src/operation"));
        if let Ok(entries) = std::fs::read_dir(&folder) {
            let mut operations: Vec<String> = entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".rs")
                        .map(str::to_owned)
                })
                .collect();
            operations.sort();
            assert!(operations.len() > 5, "{}", folder.display());
            return operations;
        }
    }
    panic!(
        "{sdk} {version} is not in {}",
        cargo_home.join("registry/src").display()
    );
}

/// The IAM actions of the SDK calls a crate's sources make: every `.operation()` of `sdk` that
/// appears in `crate_dir/src` (`put_records` → `kinesis:PutRecords`).
fn actions_called(crate_dir: &str, sdk: &str, prefix: &str) -> Vec<String> {
    let mut sources = String::new();
    let mut folders =
        vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../{crate_dir}/src"))];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("sources").flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).expect("source"));
            }
        }
    }
    let mut actions: Vec<String> = sdk_operations(sdk)
        .into_iter()
        .filter(|operation| sources.contains(&format!(".{operation}()")))
        .map(|operation| {
            let pascal: String = operation
                .split('_')
                .map(|word| {
                    let mut chars = word.chars();
                    chars
                        .next()
                        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect();
            format!("{prefix}:{pascal}")
        })
        .collect();
    actions.sort();
    actions
}

/// A policy with its placeholders filled in.
fn policy_with(file: &str, values: &[(&str, &str)]) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/iam")
        .join(file);
    let mut text = std::fs::read_to_string(&path).expect("policy");
    for (placeholder, value) in values {
        text = text.replace(placeholder, value);
    }
    assert!(!text.contains("<"), "{file}: a placeholder is left: {text}");
    serde_json::from_str(&text).expect("policy JSON")
}

/// The environment the operator gives a front end's container.
fn env_of(
    frontend: &clickheatmap_operator::controller::frontends::Frontend,
) -> Vec<(String, String)> {
    frontend
        .deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .map(|pod| &pod.containers[0])
        .and_then(|container| container.env.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|var| Some((var.name, var.value?)))
        .collect()
}

fn allows(policy: &Value, action: &str, resource: &str) -> bool {
    policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|statement| {
            strings(&statement["Action"]).iter().any(|a| a == action)
                && strings(&statement["Resource"])
                    .iter()
                    .any(|r| glob(r, resource))
        })
}

const ACCOUNT: &str = "123456789012";

/// The collector calls what its code calls (found in its sources against the SDK's operation
/// list), on the stream the operator configures it with; the policy grants exactly that.
#[test]
fn the_collector_policy_allows_exactly_what_the_collector_calls() {
    let pipeline = example("pipeline-full.yaml");
    let collector =
        clickheatmap_operator::controller::frontends::desired_collector(&pipeline, "img")
            .expect("collector")
            .expect("enabled in the full example");
    let env = env_of(&collector);
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name}"))
    };
    let (stream, region) = (
        value("CLICKHEATMAP_COLLECTOR_STREAM"),
        value("CLICKHEATMAP_COLLECTOR_REGION"),
    );
    let called = actions_called("collector", "aws-sdk-kinesis", "kinesis");
    assert_eq!(
        called,
        ["kinesis:DescribeStreamSummary", "kinesis:PutRecords"]
    );
    let policy = policy_with(
        "collector-policy.json",
        &[
            ("<REGION>", &region),
            ("<ACCOUNT_ID>", ACCOUNT),
            ("<STREAM_NAME>", &stream),
        ],
    );
    let granted: Vec<String> = policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    assert_eq!(
        granted, called,
        "the policy grants what the code calls, nothing else"
    );
    let arn = format!("arn:aws:kinesis:{region}:{ACCOUNT}:stream/{stream}");
    for action in &called {
        assert!(allows(&policy, action, &arn), "{action} on {arn}");
        assert!(
            !allows(&policy, action, &format!("{arn}-other")),
            "{action} on another stream"
        );
    }
}

/// The viewer's Athena calls (found in its sources) on the workgroup the operator gives it, and
/// what Athena reads and writes on the caller's behalf for them: the Glue database and table,
/// the curated table's objects, the results location; with the embedded engine, the curated
/// objects themselves.
#[test]
fn the_viewer_policy_allows_what_the_viewer_and_athena_for_it_touch() {
    let mut pipeline = example("pipeline-full.yaml");
    let spec = pipeline.spec.clone();
    let region = spec.region.clone();
    let results_prefix = spec.query.results_prefix.trim_start_matches('/').to_owned();
    let policy = policy_with(
        "viewer-policy.json",
        &[
            ("<REGION>", &region),
            ("<ACCOUNT_ID>", ACCOUNT),
            ("<WORKGROUP>", &spec.query.workgroup),
            ("<GLUE_DATABASE>", &spec.catalog.database),
            ("<GLUE_TABLE>", &spec.catalog.table),
            ("<CURATED_BUCKET>", &spec.buckets.curated),
            ("<QUERY_RESULTS_BUCKET>", &spec.buckets.query_results),
            ("<RESULTS_PREFIX>", &results_prefix),
        ],
    );
    let viewer = clickheatmap_operator::controller::frontends::desired_viewer(&pipeline, "img")
        .expect("viewer")
        .expect("enabled in the full example");
    let env = env_of(&viewer);
    let value = |env: &[(String, String)], name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name}"))
    };
    let workgroup = value(&env, "CLICKHEATMAP_VIEWER_WORKGROUP");
    let workgroup_arn = format!("arn:aws:athena:{region}:{ACCOUNT}:workgroup/{workgroup}");
    let called = actions_called("viewer", "aws-sdk-athena", "athena");
    assert!(
        called.contains(&"athena:StartQueryExecution".to_owned()),
        "{called:?}"
    );
    for action in &called {
        assert!(
            allows(&policy, action, &workgroup_arn),
            "{action} on {workgroup_arn}"
        );
    }
    // Athena reads the table's definition and data as the caller.
    let (database, table) = (
        value(&env, "CLICKHEATMAP_VIEWER_DATABASE"),
        value(&env, "CLICKHEATMAP_VIEWER_TABLE"),
    );
    for action in ["glue:GetDatabase", "glue:GetTable", "glue:GetPartitions"] {
        for resource in [
            format!("arn:aws:glue:{region}:{ACCOUNT}:catalog"),
            format!("arn:aws:glue:{region}:{ACCOUNT}:database/{database}"),
            format!("arn:aws:glue:{region}:{ACCOUNT}:table/{database}/{table}"),
        ] {
            assert!(allows(&policy, action, &resource), "{action} on {resource}");
        }
    }
    let curated = &spec.buckets.curated;
    let object = format!("arn:aws:s3:::{curated}/curated/{table}/dt=2026-01-01/hour=00/w.parquet");
    assert!(allows(&policy, "s3:GetObject", &object), "{object}");
    assert!(allows(
        &policy,
        "s3:ListBucket",
        &format!("arn:aws:s3:::{curated}")
    ));
    let output = value(&env, "CLICKHEATMAP_VIEWER_OUTPUT_LOCATION");
    let (bucket, prefix) = output
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .expect("an S3 output location");
    let result = format!("arn:aws:s3:::{bucket}/{prefix}abc.csv");
    for action in ["s3:PutObject", "s3:GetObject"] {
        assert!(allows(&policy, action, &result), "{action} on {result}");
    }
    // Nothing else: the checkpoints and the dead letters stay unreadable.
    for private in ["curated/_checkpoints/x.json", "raw/2026/01/01/00/x"] {
        let arn = format!("arn:aws:s3:::{curated}/{private}");
        assert!(!allows(&policy, "s3:GetObject", &arn), "{arn}");
    }

    // The embedded engine reads the curated objects below the location it is given.
    pipeline.spec.viewer.engine = clickheatmap_crds::ViewerEngine::Embedded;
    let embedded = clickheatmap_operator::controller::frontends::desired_viewer(&pipeline, "img")
        .expect("viewer")
        .expect("enabled");
    let env = env_of(&embedded);
    let location = value(&env, "CLICKHEATMAP_VIEWER_CURATED");
    let (bucket, prefix) = location
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .expect("an S3 curated location");
    let table = value(&env, "CLICKHEATMAP_VIEWER_TABLE");
    let object = format!("arn:aws:s3:::{bucket}/{prefix}{table}/dt=2026-01-01/hour=00/w.parquet");
    assert!(allows(&policy, "s3:GetObject", &object), "{object}");
    assert!(allows(
        &policy,
        "s3:ListBucket",
        &format!("arn:aws:s3:::{bucket}")
    ));
}

/// A backfill runs as the aggregator: its role reads the raw archive hour folders the Job names
/// (and nothing else of the raw bucket), and writes only where the aggregator writes.
#[test]
fn the_aggregator_policy_reads_the_raw_archive_a_backfill_reads() {
    for file in ["pipeline-minimal.yaml", "pipeline-full.yaml"] {
        let pipeline = example(file);
        let policy = policy("aggregator-policy.json", &pipeline);
        let raw = &pipeline.spec.buckets.raw;
        let prefix = &pipeline.spec.raw_archive.prefix;
        let read = statement(&policy, "S3ReadRawArchiveForBackfills");
        let resources = strings(&read["Resource"]);
        let object =
            format!("arn:aws:s3:::{raw}/{prefix}2026/12/04/10/clicks-1-2026-12-04-10-00-00-x.gz");
        assert!(
            resources.iter().any(|r| glob(r, &object)),
            "{file}: {object} is not readable by {resources:?}"
        );
        assert!(
            !resources
                .iter()
                .any(|r| glob(r, &format!("arn:aws:s3:::{raw}/errors/x"))),
            "{file}: only the archive prefix is readable"
        );
        let list = statement(&policy, "S3ListRawArchiveForBackfills");
        let listed = format!("{prefix}2026/12/04/10/");
        assert!(
            strings(&list["Condition"]["StringLike"]["s3:prefix"])
                .iter()
                .any(|pattern| glob(pattern, &listed)),
            "{file}: the backfill lists {listed}"
        );
    }
}
