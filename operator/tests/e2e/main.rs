//! End to end on a real Kubernetes control plane (kube-apiserver v1.26 over TLS, etcd,
//! kube-controller-manager from `../shared/kube`, started once for this test binary), with the
//! chart rendered by the real Helm library and applied, the operator **process** running with
//! the token of the chart's own ServiceAccount (so the chart's RBAC is what is tested), and moto
//! over HTTPS standing in for AWS.
//!
//! Each test has its own namespace, chart release (watching only that namespace), moto and
//! operator processes, so the tests run in parallel. `CLICKHEATMAP_E2E_KUBECONFIG` runs them
//! against a cluster of your own instead (kind, EKS: the audit-log checks are then skipped).
//! Without either, the tests say they were skipped — except under `CI=true`, where they fail.

mod harness;

use std::time::Duration;

use clickheatmap_crds::ClickHeatmapPipeline;
use clickheatmap_testkit::MotoServer;
use harness::{
    Installed, OperatorProcess, apply, aws_config, cluster, condition, create_namespace,
    eventually, example, install_chart,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Installs the chart into a new namespace watched by the operator.
async fn setup(client: &Client, namespace: &str, values: Value) -> Installed {
    create_namespace(client, namespace).await;
    let mut values = values;
    values["operator"]["watchNamespaces"] = json!([namespace]);
    install_chart(client, namespace, values).await
}

/// Applies an example manifest as it is, in `namespace`.
async fn apply_example(client: &Client, name: &str, namespace: &str) -> Value {
    let mut manifest = example(name);
    manifest["metadata"]["namespace"] = json!(namespace);
    apply(client, &manifest, Some(namespace)).await;
    manifest
}

async fn wait_ready(api: &Api<ClickHeatmapPipeline>, name: &str) -> ClickHeatmapPipeline {
    eventually(&format!("pipeline {name} Ready"), WAIT, || async {
        let pipeline = api.get(name).await.ok()?;
        let ready = condition(&pipeline, "Ready")?;
        (ready.status == "True"
            && pipeline.status.as_ref()?.observed_generation == pipeline.metadata.generation)
            .then_some(pipeline)
    })
    .await
}

/// The minimal example under another name, with AWS names of its own (stream, buckets, Glue
/// database, Athena workgroup), so that it can live beside the example in the same moto.
fn minimal_named(name: &str, namespace: &str) -> Value {
    let mut manifest = example("pipeline-minimal.yaml");
    manifest["metadata"]["name"] = json!(name);
    manifest["metadata"]["namespace"] = json!(namespace);
    manifest["spec"]["stream"]["name"] = json!(format!("{name}-clicks"));
    manifest["spec"]["catalog"] =
        json!({"database": format!("{}_heatmap", name.replace('-', "_"))});
    manifest["spec"]["query"] = json!({"workgroup": format!("{name}-wg")});
    for (bucket, suffix) in [
        ("raw", "raw"),
        ("curated", "curated"),
        ("queryResults", "athena"),
    ] {
        manifest["spec"]["buckets"][bucket] = json!(format!("{name}-{suffix}-123456789012"));
    }
    manifest
}

/// Every child the aggregator workload needs, owned by the pipeline (controller reference).
async fn assert_owned_children(client: &Client, namespace: &str, pipeline: &ClickHeatmapPipeline) {
    let uid = pipeline.uid().expect("uid");
    let name = format!("{}-aggregator", pipeline.name_any());
    fn owned<K: Resource>(object: &K, uid: &str) -> bool {
        object
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.uid == uid && owner.controller == Some(true))
    }
    let sts: StatefulSet = Api::namespaced(client.clone(), namespace)
        .get(&name)
        .await
        .expect("aggregator StatefulSet");
    assert!(owned(&sts, &uid), "StatefulSet owned by the pipeline");
    let cm: ConfigMap = Api::namespaced(client.clone(), namespace)
        .get(&name)
        .await
        .expect("aggregator ConfigMap");
    assert!(owned(&cm, &uid), "ConfigMap owned by the pipeline");
    let sa: ServiceAccount = Api::namespaced(client.clone(), namespace)
        .get(&name)
        .await
        .expect("aggregator ServiceAccount");
    assert!(owned(&sa, &uid), "ServiceAccount owned by the pipeline");
    let svc: Service = Api::namespaced(client.clone(), namespace)
        .get(&name)
        .await
        .expect("aggregator Service");
    assert!(owned(&svc, &uid), "Service owned by the pipeline");
}

/// The minimal example, as a user applies it: Ready with every condition, its resources in
/// status and in moto, children owned, drift repaired, a steady state that writes nothing to
/// Kubernetes or AWS, and deletion with the default `Retain`.
#[tokio::test]
async fn minimal_pipeline_lifecycle() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-minimal";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    let operator = OperatorProcess::start(
        cluster,
        &installed,
        &client,
        &moto,
        "operator-0",
        &["--resync-seconds", "2", "--aws-drift-check-seconds", "5"],
    )
    .await;

    let mut manifest = example("pipeline-minimal.yaml");
    manifest["metadata"]["namespace"] = json!(namespace);
    let created = apply(&client, &manifest, Some(namespace)).await;
    let name = created.name_any();
    // Argo CD sees a new pipeline (no status yet) as Progressing; a Ready one whose aggregator
    // has not reported yet (no aggregator process runs in this suite: the stand-in kubelet only
    // marks its pod Ready) as Progressing too. `data_plane_health_*` takes it to Healthy.
    if let Some((health, message)) =
        harness::argo_health(&serde_json::to_value(&created).expect("json"))
    {
        assert_eq!(health, "Progressing", "{message}");
    }
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = wait_ready(&api, &name).await;
    let flowing = condition(&pipeline, "DataFlowing").expect("DataFlowing");
    assert_eq!(
        (flowing.status.as_str(), flowing.reason.as_str()),
        ("Unknown", "AwaitingReport"),
        "{}",
        flowing.message
    );
    if let Some((health, message)) =
        harness::argo_health(&serde_json::to_value(&pipeline).expect("json"))
    {
        assert_eq!(health, "Progressing", "{message}");
        assert!(message.contains("first progress report"), "{message}");
    }

    // Every condition true, the status names what was made.
    let status = pipeline.status.clone().expect("status");
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    for wanted in [
        "Ready",
        "BucketsReady",
        "StreamReady",
        "RawArchiveReady",
        "CatalogReady",
        "QueryReady",
        "AggregatorReady",
    ] {
        let found = condition(&pipeline, wanted)
            .unwrap_or_else(|| panic!("condition {wanted} in {types:?}"));
        assert_eq!(found.status, "True", "{wanted}: {}", found.message);
        assert_eq!(found.observed_generation, pipeline.metadata.generation);
    }
    let resources = &status.resources;
    assert!(
        resources
            .stream_arn
            .as_deref()
            .is_some_and(|arn| arn.ends_with("stream/shop-clicks"))
    );
    assert_eq!(
        resources.raw_bucket.as_deref(),
        Some("shop-heatmap-raw-123456789012")
    );
    assert_eq!(resources.glue_table.as_deref(), Some("curated_heatmap"));
    assert_eq!(
        resources.aggregator_deployment.as_deref(),
        Some("shop-aggregator")
    );
    assert!(
        pipeline
            .finalizers()
            .iter()
            .any(|f| f == "clickheatmap.io/cleanup")
    );
    assert_owned_children(&client, namespace, &pipeline).await;

    // The AWS resources exist in moto, reached over HTTPS by the operator.
    let aws = aws_config(&moto, "ap-northeast-2").await;
    let kinesis = aws_sdk_kinesis::Client::new(&aws);
    let summary = kinesis
        .describe_stream_summary()
        .stream_name("shop-clicks")
        .send()
        .await
        .expect("the stream exists in moto");
    assert_eq!(
        summary
            .stream_description_summary()
            .map(|s| s.open_shard_count()),
        Some(1)
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    for bucket in [
        "shop-heatmap-raw-123456789012",
        "shop-heatmap-curated-123456789012",
        "shop-heatmap-athena-123456789012",
    ] {
        s3.head_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("bucket {bucket} in moto: {e:?}"));
    }

    // Drift: a child deleted by hand comes back; a field changed by hand is put back.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let old_uid = config_maps
        .get("shop-aggregator")
        .await
        .expect("ConfigMap")
        .uid();
    config_maps
        .delete("shop-aggregator", &DeleteParams::default())
        .await
        .expect("deleting the ConfigMap");
    eventually("the ConfigMap to come back", WAIT, || async {
        let cm = config_maps.get("shop-aggregator").await.ok()?;
        (cm.uid() != old_uid).then_some(())
    })
    .await;
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    stateful_sets
        .patch(
            "shop-aggregator",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "shop-aggregator"},
                "spec": {"replicas": 3}
            })),
        )
        .await
        .expect("changing replicas by hand");
    eventually("replicas put back to 1", WAIT, || async {
        let sts = stateful_sets.get("shop-aggregator").await.ok()?;
        (sts.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    // The controller manager removes the extra pods at its own pace, and each step it reports is
    // a new AggregatorReady message the operator writes: the steady state starts once the
    // StatefulSet has settled and the pipeline says so.
    eventually("the StatefulSet settled at 1 ready pod", WAIT, || async {
        let sts = stateful_sets.get("shop-aggregator").await.ok()?;
        let status = sts.status?;
        let settled = status.observed_generation == sts.metadata.generation
            && status.replicas == 1
            && status.ready_replicas == Some(1);
        let pipeline = api.get(&name).await.ok()?;
        let aggregator = condition(&pipeline, "AggregatorReady")?;
        (settled && aggregator.status == "True").then_some(())
    })
    .await;

    // Steady state: with a resync every 2 s and an AWS drift check every 5 s, 12 s of quiet make
    // reconciles and AWS reads but no write to either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offset = cluster.audit_offset();
    let reconciles_before = operator.metric("clickheatmap_operator_reconciles_total", &[]);
    let aws_writes_before =
        operator.metric("clickheatmap_operator_aws_calls_total", &["kind=\"write\""]);
    let aws_reads_before =
        operator.metric("clickheatmap_operator_aws_calls_total", &["kind=\"read\""]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let reconciles =
        operator.metric("clickheatmap_operator_reconciles_total", &[]) - reconciles_before;
    let aws_writes = operator.metric("clickheatmap_operator_aws_calls_total", &["kind=\"write\""])
        - aws_writes_before;
    let aws_reads = operator.metric("clickheatmap_operator_aws_calls_total", &["kind=\"read\""])
        - aws_reads_before;
    assert!(reconciles >= 3, "resyncs happened: {reconciles}");
    assert!(aws_reads > 0, "an AWS drift check happened");
    assert_eq!(
        aws_writes,
        0,
        "AWS writes in a steady state:\n{}",
        operator.metrics()
    );
    if let Some(writes) = cluster.writes_by(&installed.user(), offset) {
        assert!(
            writes.is_empty(),
            "Kubernetes writes in a steady state: {writes:#?}"
        );
    }
    eprintln!(
        "e2e: steady state: {reconciles} reconciles, {aws_reads} AWS reads, 0 writes in 12 s"
    );

    // Deletion with the default Retain: the finalizer is released at once, the children go
    // with the real garbage collector, the AWS resources stay.
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("deleting the pipeline");
    eventually("the pipeline to be gone", WAIT, || async {
        match api.get(&name).await {
            Err(kube::Error::Api(status)) if status.code == 404 => Some(()),
            _ => None,
        }
    })
    .await;
    eventually("the children to be garbage-collected", WAIT, || async {
        let left = stateful_sets
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len()
            + config_maps
                .list(&ListParams::default().labels("clickheatmap.io/pipeline"))
                .await
                .ok()?
                .items
                .len();
        (left == 0).then_some(())
    })
    .await;
    kinesis
        .describe_stream_summary()
        .stream_name("shop-clicks")
        .send()
        .await
        .expect("Retain keeps the stream");
}

/// The full example with `deletionPolicy: Delete`: Ready with the collector and the viewer, and
/// a deletion that removes the AWS resources before the finalizer is released.
#[tokio::test]
async fn full_pipeline_is_deleted_with_its_aws_resources() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-full";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    let _operator =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-0", &[]).await;
    // The example's spec.workloads.priorityClassName names a class the cluster must have (pods of
    // an unknown class are refused at admission; the Deployment says so in ReplicaFailure).
    apply(
        &client,
        &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "analytics"}, "value": 1000}),
        None,
    )
    .await;

    let manifest = apply_example(&client, "pipeline-full.yaml", namespace).await;
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = wait_ready(&api, &name).await;
    for wanted in [
        "CollectorReady",
        "ViewerReady",
        "AggregatorReady",
        "CatalogReady",
    ] {
        let found = condition(&pipeline, wanted).unwrap_or_else(|| panic!("{wanted}"));
        assert_eq!(found.status, "True", "{wanted}: {}", found.message);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for child in [format!("{name}-collector"), format!("{name}-viewer")] {
        deployments
            .get(&child)
            .await
            .unwrap_or_else(|e| panic!("Deployment {child}: {e}"));
    }
    assert_owned_children(&client, namespace, &pipeline).await;

    api.delete(&name, &DeleteParams::default())
        .await
        .expect("deleting the pipeline");
    eventually(
        "the pipeline to be gone",
        Duration::from_secs(120),
        || async {
            match api.get(&name).await {
                Err(kube::Error::Api(status)) if status.code == 404 => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let aws = aws_config(&moto, "ap-northeast-2").await;
    let kinesis = aws_sdk_kinesis::Client::new(&aws);
    let stream = kinesis
        .describe_stream_summary()
        .stream_name("shop-full-clicks")
        .send()
        .await;
    assert!(stream.is_err(), "Delete removed the stream: {stream:?}");
    eventually("the Deployments to be garbage-collected", WAIT, || async {
        let children = ListParams::default().labels("clickheatmap.io/pipeline");
        (deployments.list(&children).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
}

/// Every schema and CEL rule, checked by the real API server with a server-side dry run: the
/// message is what a user reads from `kubectl apply`.
#[tokio::test]
async fn the_api_server_rejects_invalid_specs_with_clear_messages() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-schema";
    setup(&client, namespace, json!({})).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let base = example("pipeline-minimal.yaml");
    let create = |patch: Value| {
        let mut object = base.clone();
        object["metadata"]["namespace"] = json!(namespace);
        merge(&mut object, &patch);
        object
    };
    let valid: ClickHeatmapPipeline =
        serde_json::from_value(create(json!({}))).expect("the example deserialises");
    api.create(&dry_run, &valid)
        .await
        .expect("the example passes the API server's validation");

    let cases = [
        (
            json!({"spec": {"aggregation": {"window": "0s"}}}),
            "aggregation.window must be above zero",
        ),
        (
            json!({"spec": {"aggregation": {"window": "7m"}}}),
            "divide a day evenly",
        ),
        (
            json!({"spec": {"aggregation": {"window": "2d"}}}),
            "divide a day evenly",
        ),
        (
            json!({"spec": {"aggregation": {"window": "soon"}}}),
            "spec.aggregation.window",
        ),
        (
            json!({"spec": {"aggregation": {"allowedLateness": "25h"}}}),
            "allowedLateness must be shorter than stream.retentionHours",
        ),
        (
            json!({"spec": {"stream": {"mode": "OnDemand", "shards": 2}}}),
            "stream.shards applies only to mode Provisioned",
        ),
        (
            json!({"spec": {"stream": {"kmsKeyId": "alias/x"}}}),
            "stream.kmsKeyId applies only to encryption Kms",
        ),
        (
            json!({"spec": {"rawArchive": {"roleArn": null}}}),
            "rawArchive.roleArn is required",
        ),
        (
            json!({"spec": {"aggregation": {"engine": "ManagedFlink"}}}),
            "aggregation.flink",
        ),
        (
            json!({"spec": {"catalog": {"partitions": "Crawler"}}}),
            "catalog.crawler.roleArn is required",
        ),
        (
            json!({"spec": {"collector": {"enabled": true}}}),
            "collector.allowedOrigins is required",
        ),
        (
            json!({"spec": {"stream": {"retentionHours": 12}}}),
            "spec.stream.retentionHours",
        ),
        (
            json!({"spec": {"aggregation": {"grid": {"columns": 0}}}}),
            "spec.aggregation.grid.columns",
        ),
        (json!({"spec": {"region": "Not A Region"}}), "spec.region"),
    ];
    let mut failures = Vec::new();
    for (patch, wanted) in cases {
        // As raw JSON: some of these cannot even be held by the Rust type.
        match raw_create(&client, namespace, &create(patch.clone())).await {
            Err(kube::Error::Api(status)) if status.message.contains(wanted) => {}
            other => failures.push(format!(
                "{patch}: wanted an error with {wanted:?}, got {other:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Immutable fields, on a real update.
    let created = api
        .create(&PostParams::default(), &valid)
        .await
        .expect("creating the example");
    let mut renamed = created.clone();
    renamed.spec.stream.name = "other-clicks".to_owned();
    match api.replace(&created.name_any(), &dry_run, &renamed).await {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("stream.name is immutable"),
            "{}",
            status.message
        ),
        other => panic!("renaming the stream was accepted: {other:?}"),
    }
    // A defaulted name too: the API server defaults it first, then the transition rule holds.
    let mut renamed = created.clone();
    renamed.spec.catalog.table = "other_table".to_owned();
    match api.replace(&created.name_any(), &dry_run, &renamed).await {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("catalog.table is immutable"),
            "{}",
            status.message
        ),
        other => panic!("renaming the table was accepted: {other:?}"),
    }
}

/// Creates an object as raw JSON (for specs the Rust type cannot even hold).
async fn raw_create(client: &Client, namespace: &str, object: &Value) -> Result<(), kube::Error> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<ClickHeatmapPipeline>(&()),
    );
    let object: kube::api::DynamicObject =
        serde_json::from_value(object.clone()).expect("a dynamic object");
    api.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &object,
    )
    .await
    .map(|_| ())
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Two operator processes with `replicaCount: 2` (leader election, the chart's Lease rules):
/// one leads; SIGKILLed, the other takes the Lease within its duration and reconciles a new
/// pipeline; the one that waited reconciled nothing before.
#[tokio::test]
async fn leader_election_hands_over_after_a_kill() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-leader";
    let installed = setup(&client, namespace, json!({"replicaCount": 2})).await;
    assert!(
        installed
            .args()
            .iter()
            .any(|arg| arg == "--leader-election")
    );
    let moto = MotoServer::start_https();
    let mut first =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-a", &[]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    eventually("operator-a to hold the Lease", WAIT, || async {
        let lease = leases.get("clickheatmap-operator").await.ok()?;
        (lease.spec?.holder_identity.as_deref() == Some("operator-a")).then_some(())
    })
    .await;
    let mut second =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-b", &[]).await;

    apply_example(&client, "pipeline-minimal.yaml", namespace).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    wait_ready(&api, "shop").await;
    assert_eq!(
        second.metric("clickheatmap_operator_reconciles_total", &[]),
        0,
        "the operator that waits for the Lease reconciles nothing"
    );

    first.kill();
    let killed = std::time::Instant::now();
    eventually("operator-b to take the Lease", WAIT, || async {
        let lease = leases.get("clickheatmap-operator").await.ok()?;
        (lease.spec?.holder_identity.as_deref() == Some("operator-b")).then_some(())
    })
    .await;
    let lease = leases.get("clickheatmap-operator").await.expect("lease");
    let duration = lease
        .spec
        .and_then(|spec| spec.lease_duration_seconds)
        .expect("lease duration");
    // At worst the kill came just after a renewal, and the candidate's last try before the
    // lease ran out came just before it: the lease, one retry interval (5 s) after the end of
    // that try, and room for a loaded machine's API calls.
    assert!(
        killed.elapsed() <= Duration::from_secs(u64::try_from(duration).unwrap_or(15) + 15),
        "took over in {:?}, lease duration {duration} s",
        killed.elapsed()
    );
    let second_pipeline = minimal_named("second", namespace);
    apply(&client, &second_pipeline, Some(namespace)).await;
    wait_ready(&api, "second").await;
    assert!(second.is_running());
    assert!(!first.is_running());
}

/// Events of a problem a person must fix, as `kubectl describe` lists them (core/v1 Events
/// about the pipeline), and the condition that says the same.
#[tokio::test]
async fn a_foreign_resource_is_a_condition_and_a_warning_event() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-events";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    // A bucket of the same name exists already, not tagged by any pipeline.
    let aws = aws_config(&moto, "ap-northeast-2").await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket("shop-heatmap-raw-123456789012")
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::ApNortheast2)
                .build(),
        )
        .send()
        .await
        .expect("a bucket of someone else's");
    let _operator =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-0", &[]).await;
    apply_example(&client, "pipeline-minimal.yaml", namespace).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = eventually("BucketsReady False", WAIT, || async {
        let pipeline = api.get("shop").await.ok()?;
        let buckets = condition(&pipeline, "BucketsReady")?;
        (buckets.status == "False").then_some(pipeline)
    })
    .await;
    let buckets = condition(&pipeline, "BucketsReady").expect("BucketsReady");
    let degraded = eventually("Ready False with the Conflict", WAIT, || async {
        let pipeline = api.get("shop").await.ok()?;
        (condition(&pipeline, "Ready")?.reason == "Conflict").then_some(pipeline)
    })
    .await;
    if let Some((health, message)) =
        harness::argo_health(&serde_json::to_value(&degraded).expect("json"))
    {
        assert_eq!(health, "Degraded", "{message}");
    }
    assert!(
        buckets.message.contains("shop-heatmap-raw-123456789012"),
        "{}",
        buckets.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let event = eventually("a Warning Event about the pipeline", WAIT, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=shop"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|event| event.type_.as_deref() == Some("Warning"))
    })
    .await;
    assert_eq!(
        event.involved_object.kind.as_deref(),
        Some("ClickHeatmapPipeline")
    );
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("BucketsReady")),
        "{event:?}"
    );
    // Allowing adoption is a spec change, which is reconciled at once.
    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"adoptExisting": true}})),
    )
    .await
    .expect("allowing adoption");
    wait_ready(&api, "shop").await;
}

/// A Kubernetes object with a child's name that the pipeline does not own is never taken over:
/// the component's condition says `Conflict` and names it, a Warning Event says the same, and the
/// object stays exactly as it was; once it is gone the pipeline makes its own.
#[tokio::test]
async fn a_foreign_object_with_a_childs_name_is_not_taken_over() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-takeover";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shop-aggregator", "namespace": namespace},
        "data": {"owner": "the web team"}});
    apply(&client, &theirs, Some(namespace)).await;
    let _operator =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-0", &[]).await;
    apply_example(&client, "pipeline-minimal.yaml", namespace).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = eventually("AggregatorReady False with Conflict", WAIT, || async {
        let pipeline = api.get("shop").await.ok()?;
        let aggregator = condition(&pipeline, "AggregatorReady")?;
        (aggregator.reason == "Conflict").then_some(pipeline)
    })
    .await;
    let aggregator = condition(&pipeline, "AggregatorReady").expect("AggregatorReady");
    assert_eq!(aggregator.status, "False");
    assert!(
        aggregator.message.contains(&format!(
            "ConfigMap {namespace}/shop-aggregator already exists"
        )),
        "{}",
        aggregator.message
    );
    // Once the AWS side is ready, the refused component is what holds Ready back.
    eventually("Ready False with the Conflict", WAIT, || async {
        let pipeline = api.get("shop").await.ok()?;
        (condition(&pipeline, "Ready")?.reason == "Conflict").then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    eventually("a Warning Event naming the ConfigMap", WAIT, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=shop"))
            .await
            .ok()?;
        list.items.into_iter().find(|event| {
            event.type_.as_deref() == Some("Warning")
                && event
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("ConfigMap") && m.contains("shop-aggregator"))
        })
    })
    .await;
    let untouched = config_maps.get("shop-aggregator").await.expect("theirs");
    assert_eq!(
        untouched
            .data
            .as_ref()
            .and_then(|d| d.get("owner"))
            .map(String::as_str),
        Some("the web team")
    );
    assert!(untouched.metadata.owner_references.is_none(), "not adopted");
    assert!(
        untouched
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .all(|field| field.manager.as_deref() != Some("clickheatmap-operator")),
        "the operator wrote nothing to it"
    );
    // The team removes theirs; a change of the pipeline reconciles and makes the operator's own.
    config_maps
        .delete("shop-aggregator", &DeleteParams::default())
        .await
        .expect("deleting theirs");
    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"e2e/retry": "1"}}})),
    )
    .await
    .expect("touching the pipeline");
    wait_ready(&api, "shop").await;
}

/// One stored object that does not fit the Rust type (here a lateness the schema admits but a
/// 64-bit duration cannot hold) gets its own condition and Warning Event; the watch goes on and
/// the other pipelines are reconciled.
#[tokio::test]
async fn a_malformed_object_does_not_stop_the_others() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-malformed";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    let mut broken = example("pipeline-minimal.yaml");
    broken["metadata"]["name"] = json!("broken");
    broken["metadata"]["namespace"] = json!(namespace);
    broken["spec"]["aggregation"] = json!({"allowedLateness": "99999999999999999999999d"});
    apply(&client, &broken, Some(namespace)).await;
    let _operator =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-0", &[]).await;
    apply_example(&client, "pipeline-minimal.yaml", namespace).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    wait_ready(&api, "shop").await;

    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<ClickHeatmapPipeline>(&()),
    );
    let message = eventually("the malformed object's condition", WAIT, || async {
        let object = raw.get("broken").await.ok()?;
        let conditions = object.data["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| {
                c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "InvalidSpec"
            })
            .and_then(|c| c["message"].as_str().map(str::to_owned))
    })
    .await;
    assert!(message.contains("does not fit"), "{message}");
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    eventually(
        "a Warning Event about the malformed object",
        WAIT,
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=broken"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|e| e.type_.as_deref() == Some("Warning"))
                .then_some(())
        },
    )
    .await;
    // Argo CD calls it Degraded; a new pipeline after it is still reconciled.
    let object = raw.get("broken").await.expect("broken");
    if let Some((health, _)) = harness::argo_health(&serde_json::to_value(&object).expect("json")) {
        assert_eq!(health, "Degraded");
    }
    let third = minimal_named("third", namespace);
    apply(&client, &third, Some(namespace)).await;
    wait_ready(&api, "third").await;
}

/// The scale benchmark (not run by default; figures go to docs/BENCHMARKS.md):
///
/// ```sh
/// SCALE_PIPELINES=1000 cargo test --release -p clickheatmap-operator --test e2e -- \
///     --ignored scale_benchmark --nocapture
/// ```
///
/// Applies N pipelines at once (raw archive off: moto caps Firehose per region), waits until
/// all are Ready and prints the time, the operator's peak RSS and CPU, AWS calls per created
/// pipeline, Kubernetes and AWS requests per resync, then restarts the API server and checks
/// that the operator's watches recover without a restart of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored scale_benchmark --nocapture"]
async fn scale_benchmark() {
    let Some(cluster) = cluster() else { return };
    let count: usize = std::env::var("SCALE_PIPELINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let client = cluster.admin().await;
    let namespace = "e2e-scale";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    // moto is local: the AWS quotas' default rates would make this a benchmark of the limits.
    let operator = OperatorProcess::start(
        cluster,
        &installed,
        &client,
        &moto,
        "operator-0",
        &[
            "--resync-seconds",
            "60",
            "--aws-rate-limit",
            "kinesis=200,firehose=200,glue=200,athena=200,s3=400,sts=100",
        ],
    )
    .await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let started = std::time::Instant::now();
    for index in 0..count {
        let mut manifest = minimal_named(&format!("p{index:04}"), namespace);
        manifest["spec"]["rawArchive"] = json!({"enabled": false});
        apply(&client, &manifest, Some(namespace)).await;
    }
    let applied = started.elapsed();
    let ready_count = |list: &[ClickHeatmapPipeline]| {
        list.iter()
            .filter(|p| condition(p, "Ready").is_some_and(|c| c.status == "True"))
            .count()
    };
    eventually(
        &format!("{count} pipelines Ready"),
        Duration::from_secs(3600),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?.items;
            (ready_count(&list) == count).then_some(())
        },
    )
    .await;
    let all_ready = started.elapsed();
    let usage = operator.usage();
    let aws_calls = operator.metric("clickheatmap_operator_aws_calls_total", &[]);
    let aws_writes = operator.metric("clickheatmap_operator_aws_calls_total", &["kind=\"write\""]);
    let planned = operator.metric(
        "clickheatmap_operator_aws_plans_total",
        &["result=\"planned\""],
    );
    let reused = operator.metric(
        "clickheatmap_operator_aws_plans_total",
        &["result=\"reused\""],
    );
    eprintln!(
        "scale: reconciles until all Ready: {} planned the AWS side, {} reused the last plan \
         (each reuse saves a plan of about 25 AWS calls; before, every reconcile planned)",
        planned, reused
    );
    eprintln!(
        "scale: {count} pipelines applied in {:.1} s, all Ready after {:.1} s; operator peak RSS \
         {} MiB, CPU {:.1} s; AWS calls per created pipeline {:.1} ({:.1} writes)",
        applied.as_secs_f64(),
        all_ready.as_secs_f64(),
        usage.peak_rss_kib / 1024,
        usage.cpu_seconds,
        aws_calls as f64 / count as f64,
        aws_writes as f64 / count as f64,
    );

    // A resync round (every pipeline once, at --resync-seconds 60): requests per resync.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let offset = cluster.audit_offset();
    let reconciles = operator.metric("clickheatmap_operator_reconciles_total", &[]);
    let aws_before = operator.metric("clickheatmap_operator_aws_calls_total", &[]);
    tokio::time::sleep(Duration::from_secs(65)).await;
    let resyncs = operator.metric("clickheatmap_operator_reconciles_total", &[]) - reconciles;
    let aws = operator.metric("clickheatmap_operator_aws_calls_total", &[]) - aws_before;
    let kube = cluster
        .requests_by(&installed.user(), offset)
        .map_or(0, |requests| requests.len());
    eprintln!(
        "scale: resync round: {resyncs} reconciles, {:.2} Kubernetes requests and {:.2} AWS \
         calls per resync (AWS drift checks every 600 s), peak RSS {} MiB",
        kube as f64 / resyncs.max(1) as f64,
        aws as f64 / resyncs.max(1) as f64,
        operator.usage().peak_rss_kib / 1024,
    );

    // The API server restarts; the operator's watches must recover by themselves.
    let down = std::time::Instant::now();
    cluster.restart_apiserver();
    eprintln!(
        "scale: API server restarted in {:.1} s",
        down.elapsed().as_secs_f64()
    );
    let client = cluster.admin().await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let mut after = minimal_named("after-restart", namespace);
    after["spec"]["rawArchive"] = json!({"enabled": false});
    apply(&client, &after, Some(namespace)).await;
    let recovered = std::time::Instant::now();
    // The watches back off while the API server is down (up to 30 s between tries).
    eventually("after-restart Ready", Duration::from_secs(600), || async {
        let pipeline = api.get("after-restart").await.ok()?;
        (condition(&pipeline, "Ready")?.status == "True").then_some(())
    })
    .await;
    eprintln!(
        "scale: a pipeline created after the restart was Ready {:.1} s later (same operator process)",
        recovered.elapsed().as_secs_f64()
    );
}

/// `deletionPolicy: Delete` while AWS cannot be reached: the finalizer stays and the status says
/// why; once AWS answers again the deletion finishes and the object goes.
#[tokio::test]
async fn deletion_waits_for_aws_and_says_so() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-deleting";
    let installed = setup(&client, namespace, json!({})).await;
    let mut moto = MotoServer::start_https();
    let _operator =
        OperatorProcess::start(cluster, &installed, &client, &moto, "operator-0", &[]).await;
    let mut manifest = example("pipeline-minimal.yaml");
    manifest["metadata"]["namespace"] = json!(namespace);
    manifest["spec"]["deletionPolicy"] = json!("Delete");
    apply(&client, &manifest, Some(namespace)).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    wait_ready(&api, "shop").await;

    moto.stop();
    api.delete("shop", &DeleteParams::default())
        .await
        .expect("deleting the pipeline");
    let waiting = eventually(
        "a condition saying why the deletion waits",
        WAIT,
        || async {
            let pipeline = api.get("shop").await.ok()?;
            let ready = condition(&pipeline, "Ready")?;
            (pipeline.metadata.deletion_timestamp.is_some() && ready.status == "False")
                .then_some(pipeline)
        },
    )
    .await;
    let ready = condition(&waiting, "Ready").expect("Ready");
    assert!(
        ready.message.contains("cannot be deleted yet") || ready.message.contains("waiting for"),
        "{}",
        ready.message
    );
    assert!(
        waiting
            .finalizers()
            .iter()
            .any(|f| f == "clickheatmap.io/cleanup")
    );

    // AWS is back (empty: nothing left to delete), and the finalizer is released.
    moto.restart();
    eventually(
        "the pipeline to be gone",
        Duration::from_secs(120),
        || async {
            match api.get("shop").await {
                Err(kube::Error::Api(status)) if status.code == 404 => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

/// What an aggregator replica writes (`clickheatmap_crds::progress`), at the place the operator
/// computes for the pipeline: `s3://<curated>/curated/_checkpoints/<stream>/_progress/`.
async fn put_progress(
    s3: &aws_sdk_s3::Client,
    pipeline: &ClickHeatmapPipeline,
    report: &clickheatmap_crds::progress::ReplicaProgress,
) {
    let config = clickheatmap_operator::controller::workload::aggregator_config(pipeline)
        .expect("aggregator config");
    let location = config.progress_location(&pipeline.spec.stream.name);
    let rest = location.strip_prefix("s3://").expect("an S3 location");
    let (bucket, prefix) = rest.split_once('/').expect("bucket/prefix");
    s3.put_object()
        .bucket(bucket)
        .key(format!(
            "{prefix}{}",
            clickheatmap_crds::progress::progress_file_name(&report.replica)
        ))
        .body(serde_json::to_vec(report).expect("json").into())
        .send()
        .await
        .expect("writing a progress report to moto");
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// `status.dataPlane`, `DataFlowing` and `Fresh` from the aggregator's progress reports in S3,
/// read by the real operator over HTTPS (with the chart's IAM-less moto and RBAC): awaiting the
/// first report, flowing and fresh (Argo CD Healthy), all rejected, stalled (Argo CD Degraded),
/// paused (Suspended); the per-pipeline metrics the chart's alerts and dashboard use are on the
/// operator's /metrics, and go when the pipeline goes.
#[tokio::test]
async fn data_plane_health_from_the_aggregators_reports() {
    use clickheatmap_crds::progress::{
        PROGRESS_VERSION, ProgressCounts, ReplicaProgress, ShardProgress,
    };
    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-dataplane";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    let operator = OperatorProcess::start(
        cluster,
        &installed,
        &client,
        &moto,
        "operator-0",
        &["--resync-seconds", "2"],
    )
    .await;
    let mut manifest = minimal_named("flow", namespace);
    // The shortest check interval the CRD allows, so that the test does not wait a minute.
    manifest["spec"]["health"] = json!({"checkInterval": "10s", "quietPeriod": "5m"});
    apply(&client, &manifest, Some(namespace)).await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = wait_ready(&api, "flow").await;
    let flowing = condition(&pipeline, "DataFlowing").expect("DataFlowing");
    assert_eq!(flowing.reason, "AwaitingReport", "{}", flowing.message);
    assert!(
        pipeline
            .status
            .as_ref()
            .and_then(|s| s.data_plane.as_ref())
            .is_none(),
        "no report, no dataPlane"
    );

    let aws = aws_config(&moto, "ap-northeast-2").await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    let counts = |accepted: u64, rejected: &[(&str, u64)]| ProgressCounts {
        records: accepted + rejected.iter().map(|(_, n)| n).sum::<u64>(),
        accepted,
        late: 0,
        rejected: rejected
            .iter()
            .map(|(reason, n)| ((*reason).to_owned(), *n))
            .collect(),
    };
    let report = |shard: ShardProgress, per_minute: ProgressCounts, totals: ProgressCounts| {
        ReplicaProgress {
            version: PROGRESS_VERSION,
            replica: "flow-aggregator-0".to_owned(),
            stream: "flow-clicks".to_owned(),
            written_at_ms: now_ms(),
            started_at_ms: now_ms() - 3_600_000,
            shards: vec![shard],
            totals,
            per_minute,
        }
    };
    let now = now_ms();
    let window_start = now - now.rem_euclid(60_000);
    let healthy_shard = ShardProgress {
        shard_id: "shardId-000000000000".to_owned(),
        sequence_number: Some(
            "49650000000000000000000000000000000000000000000000000002".to_owned(),
        ),
        last_event_time_ms: Some(now - 1_500),
        watermark_ms: Some(now - 1_500),
        millis_behind_latest: Some(0),
        last_committed_window_end_ms: Some(window_start),
        oldest_open_window_start_ms: Some(window_start),
        window_size_ms: 60_000,
        last_commit_at_ms: Some(now - 4_000),
        last_record_at_ms: Some(now - 1_000),
        last_accepted_at_ms: Some(now - 1_000),
        files_committed: 12,
        counts: counts(5_000, &[("malformed_json", 40)]),
    };
    put_progress(
        &s3,
        &pipeline,
        &report(
            healthy_shard.clone(),
            counts(120, &[("malformed_json", 3)]),
            counts(5_000, &[("malformed_json", 40)]),
        ),
    )
    .await;
    let flowing = eventually("DataFlowing True from the report", WAIT, || async {
        let pipeline = api.get("flow").await.ok()?;
        let fresh = condition(&pipeline, "Fresh")?;
        (condition(&pipeline, "DataFlowing")?.status == "True" && fresh.status == "True")
            .then_some(pipeline)
    })
    .await;
    let data_plane = flowing
        .status
        .as_ref()
        .and_then(|s| s.data_plane.clone())
        .expect("status.dataPlane");
    assert_eq!(data_plane.accepted_per_minute, 120);
    assert_eq!(data_plane.rejected_per_minute["malformed_json"], 3);
    assert_eq!(data_plane.accepted_total, 5_000);
    assert_eq!(data_plane.files_committed, 12);
    assert_eq!((data_plane.replicas_reporting, data_plane.shards), (1, 1));
    assert_eq!(data_plane.lag_millis, Some(0));
    assert!(data_plane.last_committed_window_end.is_some());
    let message = &condition(&flowing, "DataFlowing")
        .expect("DataFlowing")
        .message;
    assert!(
        message.contains("120 clicks/min accepted, 3 records/min rejected (mostly malformed_json)"),
        "{message}"
    );
    if let Some((health, message)) =
        harness::argo_health(&serde_json::to_value(&flowing).expect("json"))
    {
        assert_eq!(health, "Healthy", "{message}");
    }
    let labels = ["namespace=\"e2e-dataplane\"", "pipeline=\"flow\""];
    eventually("the per-pipeline gauges", WAIT, || async {
        (operator.metric("clickheatmap_pipeline_accepted_per_minute", &labels) == 120
            && operator.metric("clickheatmap_pipeline_fresh", &labels) == 1)
            .then_some(())
    })
    .await;
    // Every series the chart's alerts and dashboard use is on the running operator's page.
    let page = operator.metrics();
    let rendered = harness::render_chart(
        namespace,
        &json!({"metrics": {"prometheusRule": {"enabled": true}, "grafanaDashboard": {"enabled": true}}}),
    );
    let mut referenced = std::collections::BTreeSet::new();
    for object in rendered["objects"].as_array().expect("objects") {
        let text = match object["kind"].as_str() {
            Some("PrometheusRule") => object["spec"].to_string(),
            Some("ConfigMap") => object["data"].to_string(),
            _ => continue,
        };
        let mut rest = text.as_str();
        while let Some(at) = rest.find("clickheatmap_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            referenced.insert(name);
        }
    }
    assert!(referenced.len() >= 8, "{referenced:?}");
    for name in &referenced {
        assert!(
            page.lines()
                .any(|line| line.starts_with(&format!("# TYPE {name} "))),
            "{name} is used by the chart but not exported:\n{page}"
        );
    }

    // All rejected: records arrive, none is a click.
    let mut rejecting = healthy_shard.clone();
    rejecting.last_accepted_at_ms = Some(now_ms() - 20 * 60_000);
    rejecting.last_record_at_ms = Some(now_ms() - 2_000);
    rejecting.oldest_open_window_start_ms = None;
    put_progress(
        &s3,
        &pipeline,
        &report(
            rejecting,
            counts(0, &[("not_a_click", 50)]),
            counts(5_000, &[("malformed_json", 40), ("not_a_click", 900)]),
        ),
    )
    .await;
    let rejected = eventually("DataFlowing AllRejected", WAIT, || async {
        let pipeline = api.get("flow").await.ok()?;
        let flowing = condition(&pipeline, "DataFlowing")?;
        (flowing.reason == "AllRejected").then_some(flowing.message.clone())
    })
    .await;
    assert!(rejected.contains("not_a_click"), "{rejected}");

    // Stalled: records wait in the stream, nothing committed for ten minutes.
    let mut stuck = healthy_shard.clone();
    stuck.millis_behind_latest = Some(600_000);
    stuck.last_commit_at_ms = Some(now_ms() - 10 * 60_000);
    put_progress(
        &s3,
        &pipeline,
        &report(stuck, counts(30, &[]), counts(5_030, &[])),
    )
    .await;
    let stalled = eventually("DataFlowing Stalled", WAIT, || async {
        let pipeline = api.get("flow").await.ok()?;
        (condition(&pipeline, "DataFlowing")?.reason == "Stalled").then_some(pipeline)
    })
    .await;
    // Ready stays about the control plane; Argo CD says Degraded.
    assert_eq!(condition(&stalled, "Ready").expect("Ready").status, "True");
    if let Some((health, message)) =
        harness::argo_health(&serde_json::to_value(&stalled).expect("json"))
    {
        assert_eq!(health, "Degraded", "{message}");
        assert!(
            message.contains("shardId-000000000000 is 10m behind"),
            "{message}"
        );
    }
    // Announced once, as a Warning Event on the pipeline.
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    eventually("a Stalled event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Stalled")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("flow")
            })
            .then_some(())
    })
    .await;
    eventually("the stalled gauge", WAIT, || async {
        (operator.metric("clickheatmap_pipeline_stalled", &labels) == 1).then_some(())
    })
    .await;

    // Paused on purpose: nothing to judge.
    api.patch(
        "flow",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"aggregation": {"replicas": 0}}})),
    )
    .await
    .expect("pausing");
    eventually("DataFlowing Paused, Argo CD Suspended", WAIT, || async {
        let pipeline = api.get("flow").await.ok()?;
        let suspended = harness::argo_health(&serde_json::to_value(&pipeline).ok()?)
            .is_none_or(|(health, _)| health == "Suspended");
        (condition(&pipeline, "DataFlowing")?.reason == "Paused" && suspended).then_some(())
    })
    .await;

    // The pipeline's series leave the operator's page with it.
    api.delete("flow", &DeleteParams::default())
        .await
        .expect("deleting the pipeline");
    eventually("the pipeline's series to go", WAIT, || async {
        (!operator.metrics().contains("pipeline=\"flow\"")).then_some(())
    })
    .await;
}

/// A `ClickHeatmapBackfill` on the real control plane, with the chart's RBAC: the API server
/// rejects a reversed range and a changed spec; the operator runs the oldest backfill of a
/// pipeline as a Job of the aggregator image (the others wait), reports the progress the
/// backfill writes to S3, records the result, publishes Events and removes the Job and its
/// ConfigMap; a backfill of a missing pipeline waits for it.
#[tokio::test]
async fn backfills_run_as_jobs_one_at_a_time_and_report_progress() {
    use clickheatmap_crds::backfill_state::{BACKFILL_STATE_VERSION, BackfillState};
    use clickheatmap_crds::{BackfillPhase, ClickHeatmapBackfill};
    use clickheatmap_operator::controller::backfill::backfill_id;
    use k8s_openapi::api::batch::v1::Job;

    let Some(cluster) = cluster() else { return };
    let client = cluster.admin().await;
    let namespace = "e2e-backfill";
    let installed = setup(&client, namespace, json!({})).await;
    let moto = MotoServer::start_https();
    let operator = OperatorProcess::start(
        cluster,
        &installed,
        &client,
        &moto,
        "operator-0",
        &["--resync-seconds", "2"],
    )
    .await;
    apply(&client, &minimal_named("bf", namespace), Some(namespace)).await;
    let pipelines: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = wait_ready(&pipelines, "bf").await;

    let request = |name: &str, pipeline: &str| {
        json!({
            "apiVersion": "clickheatmap.io/v1alpha1",
            "kind": "ClickHeatmapBackfill",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pipeline": pipeline, "from": "2026-12-01T00:00:00Z", "to": "2026-12-01T10:00:00Z"}
        })
    };
    // The schema's rules, from the API server itself.
    let backfills_dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<ClickHeatmapBackfill>(&()),
    );
    let mut reversed = request("reversed", "bf");
    reversed["spec"]["to"] = json!("2026-11-30T00:00:00Z");
    let error = backfills_dynamic
        .create(
            &PostParams::default(),
            &serde_json::from_value(reversed).expect("object"),
        )
        .await
        .expect_err("a reversed range is refused");
    assert!(
        error.to_string().contains("from must be before to"),
        "{error}"
    );

    apply(&client, &request("first", "bf"), Some(namespace)).await;
    // Created later: waits for the first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply(&client, &request("second", "bf"), Some(namespace)).await;
    apply(&client, &request("orphan", "nowhere"), Some(namespace)).await;
    let backfills: Api<ClickHeatmapBackfill> = Api::namespaced(client.clone(), namespace);
    let first = backfills.get("first").await.expect("first");
    let id = backfill_id(&first).expect("id");
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job = eventually("the first backfill's Job", WAIT, || async {
        jobs.get_opt(&id).await.ok().flatten()
    })
    .await;
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(
        args.starts_with(&format!("backfill --config /etc/clickheatmap/aggregator.json --id {id} --archive s3://bf-raw-123456789012/raw/")),
        "{args}"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("bf-aggregator"));
    assert_eq!(
        job.owner_references()[0].uid,
        first.uid().expect("uid"),
        "the Job belongs to the backfill"
    );
    let phase_of = |backfill: &ClickHeatmapBackfill| {
        let status = backfill.status.as_ref()?;
        let complete = status.conditions.iter().find(|c| c.type_ == "Complete")?;
        Some((status.phase?, complete.reason.clone()))
    };
    eventually("the second backfill waits", WAIT, || async {
        let second = backfills.get("second").await.ok()?;
        (phase_of(&second)? == (BackfillPhase::Pending, "WaitingForBackfill".to_owned()))
            .then_some(())
    })
    .await;
    eventually(
        "the orphan backfill waits for its pipeline",
        WAIT,
        || async {
            let orphan = backfills.get("orphan").await.ok()?;
            (phase_of(&orphan)?.1 == "PipelineNotFound").then_some(())
        },
    )
    .await;
    assert!(
        jobs.get_opt(&backfill_id(&backfills.get("second").await.expect("second")).expect("id"))
            .await
            .expect("get")
            .is_none(),
        "one backfill at a time per pipeline"
    );
    // The spec is immutable.
    let changed = backfills
        .patch(
            "first",
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&request("first", "other")),
        )
        .await
        .expect_err("a changed spec is refused");
    assert!(changed.to_string().contains("immutable"), "{changed}");

    // The backfill's pod writes its state beside the checkpoints; the operator reads it.
    let aws = aws_config(&moto, "ap-northeast-2").await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    let config =
        clickheatmap_operator::controller::workload::aggregator_config(&pipeline).expect("config");
    let location = config.backfill_state_location(&id);
    let (bucket, key) = location
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .expect("s3 location");
    let mut state = BackfillState {
        version: BACKFILL_STATE_VERSION,
        id: id.clone(),
        covered_from_ms: 1_764_547_200_000,
        covered_to_ms: 1_764_583_200_000,
        ..BackfillState::default()
    };
    state.progress.partitions_total = 10;
    state.progress.partitions_done = 3;
    state.progress.objects_total = 120;
    state.progress.read.objects = 40;
    state.progress.read.clicks = 81_000;
    state.progress.eta_seconds = Some(120);
    let put_state = |state: &BackfillState| {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(serde_json::to_vec(state).expect("json").into())
            .send()
    };
    put_state(&state).await.expect("state written");
    let running = eventually("progress in the status", WAIT, || async {
        let first = backfills.get("first").await.ok()?;
        let progress = first.status.as_ref()?.progress.clone()?;
        (progress.partitions_done == 3).then_some(first)
    })
    .await;
    let status = running.status.expect("status");
    assert_eq!(status.phase, Some(BackfillPhase::Running));
    let progress = status.progress.expect("progress");
    assert_eq!(
        progress.summary,
        "partitions 3/10, objects 40/120, 81000 clicks, ETA 2m"
    );
    assert_eq!(status.covered_from.as_deref(), Some("2025-12-01T00:00:00Z"));

    state.progress.partitions_done = 10;
    state.progress.read.objects = 120;
    state.finished_at_ms = Some(now_ms());
    put_state(&state).await.expect("state written");
    let done = eventually("the first backfill succeeded", WAIT, || async {
        let first = backfills.get("first").await.ok()?;
        (phase_of(&first)?.0 == BackfillPhase::Succeeded).then_some(first)
    })
    .await;
    let complete = done
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Complete").cloned())
        .expect("Complete");
    assert_eq!(complete.status, "True");
    assert!(
        done.status
            .as_ref()
            .and_then(|s| s.completion_time.clone())
            .is_some()
    );
    eventually("the Job and ConfigMap are removed", WAIT, || async {
        let job_gone = jobs.get_opt(&id).await.ok()?.is_none();
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let config_gone = config_maps.get_opt(&id).await.ok()?.is_none();
        (job_gone && config_gone).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    eventually("Started and Succeeded events", WAIT, || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("first"))
            .filter_map(|e| e.reason)
            .collect();
        (reasons.iter().any(|r| r == "Started") && reasons.iter().any(|r| r == "Succeeded"))
            .then_some(())
    })
    .await;
    // The second one goes now.
    let second_id = backfill_id(&backfills.get("second").await.expect("second")).expect("id");
    eventually("the second backfill's Job", WAIT, || async {
        jobs.get_opt(&second_id).await.ok().flatten()
    })
    .await;
    drop(operator);
}
