use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::*;

const MINIMAL: &str = include_str!("../../../examples/pipeline-minimal.yaml");
const FULL: &str = include_str!("../../../examples/pipeline-full.yaml");

const CRD_PATH: &str =
    "charts/clickheatmap-operator/crds/clickheatmap.io_clickheatmappipelines.yaml";

fn parse(manifest: &str) -> ClickHeatmapPipeline {
    serde_norway::from_str(manifest).unwrap()
}

fn as_json(manifest: &str) -> Value {
    serde_norway::from_str(manifest).unwrap()
}

fn crd() -> CustomResourceDefinition {
    ClickHeatmapPipeline::crd()
}

/// The `openAPIV3Schema` of the only version, as JSON.
fn schema() -> Value {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// The schema of `spec.<path>` (a dotted path of property names).
fn spec_schema(path: &str) -> Value {
    let mut node = schema()["properties"]["spec"].clone();
    for key in path.split('.').filter(|k| !k.is_empty()) {
        node = node["properties"][key].clone();
        assert!(!node.is_null(), "no schema for spec.{path}");
    }
    node
}

fn rules(node: &Value) -> Vec<(String, String)> {
    node["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap().to_owned(),
                        r["message"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the CEL rules like the API server does on create (`old` = None) or update.
fn cel(object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    Validator::new()
        .validate(&schema(), object, old)
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
}

fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = object.pointer_mut(parent).unwrap();
    parent
        .as_object_mut()
        .unwrap()
        .insert(key.to_owned(), value);
}

fn remove(object: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = object.pointer_mut(parent).unwrap();
    parent.as_object_mut().unwrap().remove(key);
}

#[test]
fn minimal_example_gets_the_demo_defaults() {
    let pipeline = parse(MINIMAL);
    assert_eq!(pipeline.metadata.name.as_deref(), Some("shop"));
    let spec = &pipeline.spec;
    assert_eq!(spec.region, "ap-northeast-2");
    assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
    assert!(!spec.adopt_existing);

    assert_eq!(spec.stream.name, "shop-clicks");
    assert_eq!(spec.stream.mode, StreamMode::Provisioned);
    assert_eq!(
        spec.stream.shards, None,
        "unset: 1 on create, kept on adoption"
    );
    assert_eq!(spec.stream.retention_hours, None);
    assert_eq!(spec.stream.retention_hours_or_default(), 24);
    assert_eq!(spec.stream.encryption, StreamEncryption::None);
    assert_eq!(spec.stream.kms_key_id, None);

    assert_eq!(spec.buckets.raw, "shop-heatmap-raw-123456789012");
    assert_eq!(spec.buckets.curated, "shop-heatmap-curated-123456789012");
    assert_eq!(
        spec.buckets.query_results,
        "shop-heatmap-athena-123456789012"
    );

    let raw = &spec.raw_archive;
    assert!(raw.enabled);
    assert_eq!(raw.prefix, "raw/");
    assert_eq!(raw.buffer_size_mib, None);
    assert_eq!(raw.buffer_interval_seconds, None);
    assert_eq!(raw.compression, None);
    assert_eq!(
        raw.role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/shop-heatmap-firehose")
    );
    assert_eq!(raw.delivery_stream_name, None);

    let aggregation = &spec.aggregation;
    assert_eq!(*aggregation, AggregationSpec::default());
    assert_eq!(aggregation.engine, AggregationEngine::Deployment);
    assert_eq!(aggregation.window, Duration::from_secs(60));
    assert_eq!(aggregation.allowed_lateness, Duration::from_secs(30));
    assert_eq!(
        aggregation.grid,
        GridSpec {
            columns: 20,
            rows: 20
        }
    );
    assert_eq!(aggregation.replicas, 1);
    assert_eq!(aggregation.flink, None);

    assert_eq!(spec.catalog, CatalogSpec::default());
    assert_eq!(spec.catalog.database, "heatmap_demo");
    assert_eq!(spec.catalog.table, "curated_heatmap");
    assert_eq!(spec.catalog.partitions, PartitionDiscovery::Projection);
    assert_eq!(spec.catalog.crawler, None);

    assert_eq!(spec.query, QuerySpec::default());
    assert_eq!(spec.query.workgroup, "heatmap-demo-wg");
    assert_eq!(spec.query.results_prefix, "athena-results/");
    assert_eq!(spec.query.bytes_scanned_cutoff_per_query, None);

    assert_eq!(pipeline.status, None);
}

#[test]
fn full_example_sets_every_option() {
    let pipeline = parse(FULL);
    let spec = &pipeline.spec;
    assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
    assert!(spec.adopt_existing);
    assert_eq!(spec.stream.shards, Some(2));
    assert_eq!(spec.stream.retention_hours, Some(48));
    assert_eq!(spec.stream.encryption, StreamEncryption::Kms);
    assert_eq!(
        spec.stream.kms_key_id.as_deref(),
        Some("alias/shop-heatmap")
    );
    assert_eq!(spec.raw_archive.buffer_size_mib, Some(64));
    assert_eq!(spec.raw_archive.buffer_interval_seconds, Some(60));
    assert_eq!(spec.raw_archive.compression, Some(Compression::Gzip));
    assert_eq!(
        spec.raw_archive.delivery_stream_name.as_deref(),
        Some("shop-full-clicks-raw")
    );
    assert_eq!(spec.aggregation.window, Duration::from_secs(300));
    assert_eq!(spec.aggregation.allowed_lateness, Duration::from_secs(60));
    assert_eq!(
        spec.aggregation.grid,
        GridSpec {
            columns: 32,
            rows: 18
        }
    );
    assert_eq!(spec.aggregation.replicas, 2);
    let resources = spec.aggregation.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "250m");
    let flink = spec.aggregation.flink.as_ref().unwrap();
    assert_eq!(flink.runtime, "FLINK-1_18");
    assert_eq!(flink.parallelism, Some(2));
    assert_eq!(flink.code_s3_key, "flink/heatmap-aggregator-1.0.jar");
    assert_eq!(spec.catalog.partitions, PartitionDiscovery::Crawler);
    let crawler = spec.catalog.crawler.as_ref().unwrap();
    assert_eq!(crawler.schedule, "cron(0/15 * * * ? *)");
    assert_eq!(
        spec.query.bytes_scanned_cutoff_per_query,
        Some(1024 * 1024 * 1024)
    );
    assert!(spec.collector.enabled);
    assert_eq!(spec.collector.allowed_origins.len(), 2);
    assert!(spec.viewer.enabled && spec.viewer.live && !spec.viewer.allow_raw_sql);

    // "Every option" stays true when a field is added: each property of the spec schema must be
    // written in the full example (ResourceRequirements is Kubernetes' own type, not ours).
    let mut missing = Vec::new();
    missing_properties(
        &schema()["properties"]["spec"],
        &as_json(FULL)["spec"],
        "spec",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "examples/pipeline-full.yaml does not set {missing:?}"
    );

    // Nothing in the example is silently dropped by the types.
    let round_trip = serde_json::to_value(&pipeline.spec).unwrap();
    assert_eq!(round_trip, as_json(FULL)["spec"]);
}

fn missing_properties(schema: &Value, value: &Value, path: &str, missing: &mut Vec<String>) {
    if path.ends_with(".resources") {
        return;
    }
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (key, property) in properties {
        let child = format!("{path}.{key}");
        match value.get(key) {
            None => missing.push(child),
            Some(value) => missing_properties(property, value, &child, missing),
        }
    }
}

#[test]
fn serde_defaults_match_the_default_impls_and_the_schema_defaults() {
    assert_eq!(
        serde_json::from_str::<AggregationSpec>("{}").unwrap(),
        AggregationSpec::default()
    );
    assert_eq!(
        serde_json::from_str::<CatalogSpec>("{}").unwrap(),
        CatalogSpec::default()
    );
    assert_eq!(
        serde_json::from_str::<QuerySpec>("{}").unwrap(),
        QuerySpec::default()
    );
    assert_eq!(
        serde_json::from_str::<GridSpec>("{}").unwrap(),
        GridSpec::default()
    );
    // What the API server fills in for a missing section is what the operator assumes.
    let aggregation: AggregationSpec =
        serde_json::from_value(spec_schema("aggregation")["default"].clone()).unwrap();
    assert_eq!(aggregation, AggregationSpec::default());
    let catalog: CatalogSpec =
        serde_json::from_value(spec_schema("catalog")["default"].clone()).unwrap();
    assert_eq!(catalog, CatalogSpec::default());
    let query: QuerySpec = serde_json::from_value(spec_schema("query")["default"].clone()).unwrap();
    assert_eq!(query, QuerySpec::default());
    for (section, expected) in [
        (
            "collector",
            serde_json::to_value(CollectorSpec::default()).unwrap(),
        ),
        (
            "viewer",
            serde_json::to_value(ViewerSpec::default()).unwrap(),
        ),
    ] {
        assert_eq!(spec_schema(section)["default"], expected, "{section}");
    }
    assert_eq!(
        serde_json::from_str::<CollectorSpec>("{}").unwrap(),
        CollectorSpec::default()
    );
    let viewer = serde_json::from_str::<ViewerSpec>("{}").unwrap();
    assert_eq!(viewer, ViewerSpec::default());
    assert!(!viewer.enabled && viewer.live && !viewer.allow_raw_sql);
}

#[test]
fn schema_carries_the_demo_defaults() {
    for (path, default) in [
        ("deletionPolicy", json!("Retain")),
        ("adoptExisting", json!(false)),
        ("stream.mode", json!("Provisioned")),
        ("stream.encryption", json!("None")),
        ("rawArchive.enabled", json!(true)),
        ("rawArchive.prefix", json!("raw/")),
        ("aggregation.engine", json!("Deployment")),
        ("aggregation.allowedLateness", json!("30s")),
        ("aggregation.grid.columns", json!(20)),
        ("aggregation.grid.rows", json!(20)),
        ("aggregation.replicas", json!(1)),
        ("aggregation.flink.runtime", json!("FLINK-1_18")),
        ("catalog.database", json!("heatmap_demo")),
        ("catalog.table", json!("curated_heatmap")),
        ("catalog.partitions", json!("Projection")),
        ("catalog.crawler.schedule", json!("cron(0/30 * * * ? *)")),
        ("query.workgroup", json!("heatmap-demo-wg")),
        ("query.resultsPrefix", json!("athena-results/")),
    ] {
        assert_eq!(
            spec_schema(path)["default"],
            default,
            "default of spec.{path}"
        );
    }
    // Durations are written in their canonical form ("1m" for 60 s); it parses to the same value.
    let window: Duration =
        serde_json::from_value(spec_schema("aggregation.window")["default"].clone()).unwrap();
    assert_eq!(window, Duration::from_secs(60));
    assert_eq!(
        spec_schema("aggregation.window")["pattern"],
        "^([0-9]+(ms|s|m|h|d))+$"
    );

    // Settings of an AWS resource that an adopted resource keeps when the spec leaves them out
    // have no schema default (the default applies when the operator creates the resource, and
    // the description says which it is).
    for (path, on_create) in [
        ("stream.shards", "gets 1"),
        ("stream.retentionHours", "24 hours"),
        ("rawArchive.bufferSizeMiB", "5 on a"),
        ("rawArchive.bufferIntervalSeconds", "300 on a"),
        ("rawArchive.compression", "`UNCOMPRESSED` on a"),
        ("aggregation.flink.parallelism", "1 on an"),
        ("aggregation.flink.parallelismPerKpu", "1 on an"),
    ] {
        let schema = spec_schema(path);
        assert_eq!(schema["default"], Value::Null, "spec.{path} has no default");
        let description = schema["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(on_create) && description.contains("keeps"),
            "spec.{path}: {description}"
        );
    }

    // Sections the user must write have no default.
    for path in ["region", "stream", "stream.name", "buckets", "rawArchive"] {
        assert!(spec_schema(path).get("default").is_none(), "spec.{path}");
    }
    let required = &schema()["properties"]["spec"]["required"];
    assert_eq!(
        *required,
        json!(["buckets", "rawArchive", "region", "stream"])
    );
}

#[test]
fn schema_carries_enums_ranges_and_patterns() {
    for (path, values) in [
        ("deletionPolicy", json!(["Retain", "Delete"])),
        ("stream.mode", json!(["Provisioned", "OnDemand"])),
        ("stream.encryption", json!(["None", "Kms"])),
        (
            "rawArchive.compression",
            json!(["UNCOMPRESSED", "GZIP", "Snappy", "ZIP", "HADOOP_SNAPPY"]),
        ),
        ("aggregation.engine", json!(["Deployment", "ManagedFlink"])),
        ("catalog.partitions", json!(["Projection", "Crawler"])),
    ] {
        assert_eq!(spec_schema(path)["enum"], values, "enum of spec.{path}");
    }
    for (path, min, max) in [
        ("stream.shards", 1.0, Some(500.0)),
        ("stream.retentionHours", 24.0, Some(8760.0)),
        ("rawArchive.bufferSizeMiB", 1.0, Some(128.0)),
        ("rawArchive.bufferIntervalSeconds", 0.0, Some(900.0)),
        ("aggregation.grid.columns", 1.0, Some(1000.0)),
        ("aggregation.grid.rows", 1.0, Some(1000.0)),
        ("aggregation.replicas", 0.0, None),
        ("query.bytesScannedCutoffPerQuery", 10_485_760.0, None),
    ] {
        let node = spec_schema(path);
        assert_eq!(
            node["minimum"].as_f64(),
            Some(min),
            "minimum of spec.{path}"
        );
        assert_eq!(node["maximum"].as_f64(), max, "maximum of spec.{path}");
    }
    for (path, min, max) in [
        ("stream.name", 1, 128),
        ("buckets.raw", 3, 63),
        ("buckets.curated", 3, 63),
        ("buckets.queryResults", 3, 63),
    ] {
        let node = spec_schema(path);
        assert_eq!(node["minLength"], min, "minLength of spec.{path}");
        assert_eq!(node["maxLength"], max, "maxLength of spec.{path}");
        assert!(node["pattern"].is_string(), "pattern of spec.{path}");
    }
    for path in [
        "rawArchive.roleArn",
        "aggregation.serviceAccountRoleArn",
        "aggregation.flink.roleArn",
        "catalog.crawler.roleArn",
    ] {
        assert_eq!(
            spec_schema(path)["pattern"],
            IAM_ROLE_ARN_PATTERN,
            "spec.{path}"
        );
    }
}

#[test]
fn schema_carries_the_cel_rules() {
    let has_rule = |path: &str, rule: &str, message_part: &str| {
        let found = rules(&spec_schema(path));
        assert!(
            found
                .iter()
                .any(|(r, m)| r == rule && m.contains(message_part)),
            "spec.{path} should have the rule {rule:?}, has {found:?}"
        );
    };
    has_rule("region", "self == oldSelf", "region is immutable");
    has_rule("stream.name", "self == oldSelf", "stream.name is immutable");
    has_rule("buckets", "self == oldSelf", "buckets are immutable");
    has_rule(
        "stream",
        "self.mode == 'Provisioned' || !has(self.shards) || self.shards == 1",
        "stream.shards applies only to mode Provisioned",
    );
    has_rule(
        "stream",
        "self.encryption == 'Kms' || !has(self.kmsKeyId)",
        "stream.kmsKeyId",
    );
    has_rule(
        "rawArchive",
        "!self.enabled || has(self.roleArn)",
        "rawArchive.roleArn is required",
    );
    has_rule(
        "aggregation",
        "self.engine != 'ManagedFlink' || has(self.flink)",
        "aggregation.flink",
    );
    has_rule(
        "catalog",
        "self.partitions != 'Crawler' || (has(self.crawler) && has(self.crawler.roleArn))",
        "catalog.crawler.roleArn is required",
    );
}

#[test]
fn crd_names_columns_and_subresources() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("clickheatmappipelines.clickheatmap.io")
    );
    assert_eq!(crd.spec.group, "clickheatmap.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "ClickHeatmapPipeline");
    assert_eq!(crd.spec.names.plural, "clickheatmappipelines");
    assert_eq!(crd.spec.names.short_names, Some(vec!["chp".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<(&str, &str, &str)> = version
        .additional_printer_columns
        .as_deref()
        .unwrap()
        .iter()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            (
                "Ready",
                "string",
                r#".status.conditions[?(@.type=="Ready")].status"#
            ),
            (
                "Data",
                "string",
                r#".status.conditions[?(@.type=="DataFlowing")].reason"#
            ),
            ("Stream", "string", ".spec.stream.name"),
            ("Engine", "string", ".spec.aggregation.engine"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
    assert_eq!(READY_CONDITION, "Ready");
}

#[test]
fn schema_is_structural() {
    // The API server rejects a CRD whose schema is not structural; the usual culprits from
    // generated schemas are references and type-less or combinator nodes.
    fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(object) = node.as_object() else {
            return;
        };
        for forbidden in [
            "$ref",
            "$schema",
            "definitions",
            "$defs",
            "oneOf",
            "anyOf",
            "allOf",
        ] {
            if object.contains_key(forbidden) {
                problems.push(format!("{path}: {forbidden}"));
            }
        }
        let int_or_string = object.get("x-kubernetes-int-or-string") == Some(&json!(true));
        if !object.contains_key("type") && !int_or_string {
            problems.push(format!("{path}: no type"));
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (key, child) in properties {
                walk(child, &format!("{path}.{key}"), problems);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = object.get(key).filter(|c| c.is_object()) {
                walk(child, &format!("{path}[{key}]"), problems);
            }
        }
    }
    let mut problems = Vec::new();
    walk(&schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn examples_pass_the_cel_rules() {
    for (name, manifest) in [("minimal", MINIMAL), ("full", FULL)] {
        let object = as_json(manifest);
        assert_eq!(cel(&object, None), Ok(()), "{name}");
        assert_eq!(cel(&object, Some(&object)), Ok(()), "{name} (update)");
    }
}

#[test]
fn schema_defaults_pass_the_cel_rules() {
    // The API server checks every default against the CEL rules of its own node when the CRD is
    // created, as it stands (nested defaults are not applied first) and as an update from itself.
    fn walk(node: &Value, path: &str, failures: &mut Vec<String>) {
        if let Some(default) = node.get("default") {
            let mut bare = node.clone();
            if let Some(object) = bare.as_object_mut() {
                object.remove("default");
            }
            if let Err(errors) = Validator::new().validate(&bare, default, Some(default)) {
                failures.push(format!("{path}: {errors}"));
            }
        }
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            for (key, child) in properties {
                walk(child, &format!("{path}.{key}"), failures);
            }
        }
    }
    let mut failures = Vec::new();
    walk(&schema(), "", &mut failures);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn cel_rules_reject_inconsistent_specs() {
    let minimal = as_json(MINIMAL);
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, Option<&str>); 15] = [
        (
            "collector without allowed origins",
            |o| set(o, "/spec/collector", json!({"enabled": true})),
            Some("collector.allowedOrigins is required when collector.enabled is true"),
        ),
        (
            "collector with an origin",
            |o| {
                set(
                    o,
                    "/spec/collector",
                    json!({"enabled": true, "allowedOrigins": ["https://shop.example.com"]}),
                )
            },
            None,
        ),
        (
            "disabled collector needs no origins",
            |o| set(o, "/spec/collector", json!({"enabled": false})),
            None,
        ),
        (
            "raw archive without a role",
            |o| remove(o, "/spec/rawArchive/roleArn"),
            Some("rawArchive.roleArn is required when rawArchive.enabled is true"),
        ),
        (
            "disabled raw archive needs no role",
            |o| {
                remove(o, "/spec/rawArchive/roleArn");
                set(o, "/spec/rawArchive/enabled", json!(false));
            },
            None,
        ),
        (
            "shards on an on-demand stream",
            |o| {
                set(o, "/spec/stream/mode", json!("OnDemand"));
                set(o, "/spec/stream/shards", json!(4));
            },
            Some("stream.shards applies only to mode Provisioned"),
        ),
        (
            "on-demand stream with the default shards",
            |o| set(o, "/spec/stream/mode", json!("OnDemand")),
            None,
        ),
        (
            "provisioned stream with more shards",
            |o| set(o, "/spec/stream/shards", json!(8)),
            None,
        ),
        (
            "KMS key without KMS encryption",
            |o| set(o, "/spec/stream/kmsKeyId", json!("alias/x")),
            Some("stream.kmsKeyId applies only to encryption Kms"),
        ),
        (
            "KMS encryption with the AWS-managed key",
            |o| set(o, "/spec/stream/encryption", json!("Kms")),
            None,
        ),
        (
            "Managed Flink without its settings",
            |o| set(o, "/spec/aggregation", json!({"engine": "ManagedFlink"})),
            Some("aggregation.flink (codeS3Bucket, codeS3Key, roleArn) is required"),
        ),
        (
            "Managed Flink with its settings",
            |o| {
                set(
                    o,
                    "/spec/aggregation",
                    json!({"engine": "ManagedFlink", "flink": {
                        "codeS3Bucket": "code-bucket",
                        "codeS3Key": "job.jar",
                        "roleArn": "arn:aws:iam::123456789012:role/flink",
                    }}),
                )
            },
            None,
        ),
        (
            "crawler partitions without a crawler",
            |o| set(o, "/spec/catalog", json!({"partitions": "Crawler"})),
            Some("catalog.crawler.roleArn is required when catalog.partitions is Crawler"),
        ),
        (
            "crawler without a role",
            |o| {
                set(
                    o,
                    "/spec/catalog",
                    json!({"partitions": "Crawler", "crawler": {"name": "c"}}),
                )
            },
            Some("catalog.crawler.roleArn is required when catalog.partitions is Crawler"),
        ),
        (
            "crawler with a role",
            |o| {
                set(
                    o,
                    "/spec/catalog",
                    json!({"partitions": "Crawler", "crawler": {
                        "roleArn": "arn:aws:iam::123456789012:role/crawler",
                    }}),
                )
            },
            None,
        ),
    ];
    for (name, edit, expected) in cases {
        let mut object = minimal.clone();
        edit(&mut object);
        let result = cel(&object, None);
        match expected {
            None => assert_eq!(result, Ok(()), "{name}"),
            Some(message) => {
                let errors = result.expect_err(name);
                assert!(
                    errors.iter().any(|e| e.contains(message)),
                    "{name}: expected {message:?}, got {errors:?}"
                );
            }
        }
    }
}

#[test]
fn cel_rules_keep_identities_immutable() {
    let old = as_json(MINIMAL);
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, Option<&str>); 5] = [
        (
            "stream name",
            |o| set(o, "/spec/stream/name", json!("other-clicks")),
            Some("stream.name is immutable"),
        ),
        (
            "raw bucket",
            |o| set(o, "/spec/buckets/raw", json!("other-raw-bucket")),
            Some("buckets are immutable"),
        ),
        (
            "region",
            |o| set(o, "/spec/region", json!("eu-west-1")),
            Some("region is immutable"),
        ),
        (
            "shard count",
            |o| set(o, "/spec/stream/shards", json!(3)),
            None,
        ),
        (
            "window",
            |o| set(o, "/spec/aggregation", json!({"window": "5m"})),
            None,
        ),
    ];
    for (name, edit, expected) in cases {
        let mut new = old.clone();
        edit(&mut new);
        let result = cel(&new, Some(&old));
        match expected {
            None => assert_eq!(result, Ok(()), "{name}"),
            Some(message) => {
                let errors = result.expect_err(name);
                assert!(
                    errors.iter().any(|e| e.contains(message)),
                    "{name}: expected {message:?}, got {errors:?}"
                );
            }
        }
    }
}

#[test]
fn cel_rules_keep_aws_names_immutable() {
    // The full example names every resource itself.
    let old = as_json(FULL);
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, Option<&str>); 8] = [
        (
            "delivery stream renamed",
            |o| set(o, "/spec/rawArchive/deliveryStreamName", json!("other-raw")),
            Some("rawArchive.deliveryStreamName is immutable"),
        ),
        (
            "delivery stream name dropped (back to the default name)",
            |o| remove(o, "/spec/rawArchive/deliveryStreamName"),
            Some("rawArchive.deliveryStreamName is immutable"),
        ),
        (
            "database",
            |o| set(o, "/spec/catalog/database", json!("other_db")),
            Some("catalog.database is immutable"),
        ),
        (
            "table",
            |o| set(o, "/spec/catalog/table", json!("other_table")),
            Some("catalog.table is immutable"),
        ),
        (
            "workgroup",
            |o| set(o, "/spec/query/workgroup", json!("other-wg")),
            Some("query.workgroup is immutable"),
        ),
        (
            "flink application",
            |o| {
                set(
                    o,
                    "/spec/aggregation/flink/applicationName",
                    json!("other-app"),
                )
            },
            Some("aggregation.flink.applicationName is immutable"),
        ),
        (
            "crawler",
            |o| set(o, "/spec/catalog/crawler/name", json!("other-crawler")),
            Some("catalog.crawler.name is immutable"),
        ),
        (
            "the crawler's schedule is not a name",
            |o| {
                set(
                    o,
                    "/spec/catalog/crawler/schedule",
                    json!("cron(0/5 * * * ? *)"),
                )
            },
            None,
        ),
    ];
    for (name, edit, expected) in cases {
        let mut new = old.clone();
        edit(&mut new);
        let result = cel(&new, Some(&old));
        match expected {
            None => assert_eq!(result, Ok(()), "{name}"),
            Some(message) => {
                let errors = result.expect_err(name);
                assert!(
                    errors.iter().any(|e| e.contains(message)),
                    "{name}: expected {message:?}, got {errors:?}"
                );
            }
        }
    }
}

#[test]
fn status_round_trips_with_conditions_and_resources() {
    let status: ClickHeatmapPipelineStatus = serde_json::from_value(json!({
        "observedGeneration": 3,
        "conditions": [{
            "type": "Ready",
            "status": "False",
            "reason": "StreamCreating",
            "message": "waiting for the stream to become ACTIVE",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "observedGeneration": 3,
        }],
        "resources": {
            "streamArn": "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks",
            "rawBucket": "shop-heatmap-raw-123456789012",
        },
    }))
    .unwrap();
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.conditions[0].type_, READY_CONDITION);
    assert_eq!(status.conditions[0].status, "False");
    assert_eq!(
        status.resources.raw_bucket.as_deref(),
        Some("shop-heatmap-raw-123456789012")
    );
    let back: ClickHeatmapPipelineStatus =
        serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
    assert_eq!(back, status);

    // An empty status is written as `{}`, not a list of nulls.
    assert_eq!(
        serde_json::to_value(ClickHeatmapPipelineStatus::default()).unwrap(),
        json!({})
    );
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn committed_crd_matches_the_generator() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CRD_PATH);
    let regenerate = format!(
        "regenerate it from the workspace root with:\n  \
         cargo run -p clickheatmap-crds --features resource --bin crdgen > {CRD_PATH}"
    );
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}; {regenerate}", path.display()));
    let generated = crd_yaml().unwrap();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!("{CRD_PATH} is out of date (first difference at line {line}); {regenerate}");
    }
    // The committed YAML is a CRD the types can read back.
    let parsed: CustomResourceDefinition = serde_norway::from_str(&committed).unwrap();
    assert_eq!(parsed, crd());
}
