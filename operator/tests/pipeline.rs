//! Whole pipelines against a real moto server, through the API the controller uses
//! (`plan_pipeline`, `apply_pipeline`, `delete_pipeline`), and the `plan` command.
//!
//! A pipeline converges over a few reconciles (the Firehose part waits for an ACTIVE stream),
//! then a resync plans nothing and makes no write. The ManagedFlink engine runs against the fake
//! Managed Flink of `common::fake_flink` (moto lacks start/stop/update/delete for it).

mod common;

use std::process::Command;

use clickheatmap_crds::{
    AggregationEngine, ClickHeatmapPipeline, ClickHeatmapPipelineStatus, DeletionPolicy,
    PartitionDiscovery,
};
use clickheatmap_operator::aws::{Deletion, Readiness};
use clickheatmap_operator::pipeline::{Part, PipelineOutcome};
use clickheatmap_operator::{
    AwsClients, Owner, Reason, apply_pipeline, delete_pipeline, plan_pipeline,
};
use common::fake_flink::FakeFlink;
use common::{assert_no_writes, pipeline, start, writes_since};

/// Reconciles like the controller would (writing `status.resources` back) until every part is
/// ready and a round changes nothing. `between` runs between rounds (the fake's clock).
async fn converge(
    clients: &AwsClients,
    pipeline: &mut ClickHeatmapPipeline,
    between: &dyn Fn(),
) -> Vec<PipelineOutcome> {
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let outcome = apply_pipeline(clients, pipeline).await.expect("apply");
        pipeline.status = Some(ClickHeatmapPipelineStatus {
            resources: outcome.resources.clone(),
            ..ClickHeatmapPipelineStatus::default()
        });
        let done = outcome.is_ready() && outcome.applied().is_empty();
        outcomes.push(outcome);
        if done {
            return outcomes;
        }
        between();
    }
    panic!("did not converge: {outcomes:#?}");
}

#[tokio::test]
async fn minimal_pipeline_converges_and_resyncs_without_writes() {
    let env = start().await;
    let mut pipeline = pipeline("minimal");

    let plan = plan_pipeline(&env.clients, &pipeline).await.expect("plan");
    assert!(plan.errors().is_empty(), "{:?}", plan.errors());
    let planned: Vec<String> = plan
        .changes()
        .iter()
        .map(|(s, c)| format!("{s}: {c}"))
        .collect();
    assert!(
        planned
            .iter()
            .any(|c| c.starts_with("kinesis: create stream shop-clicks")),
        "{planned:#?}"
    );
    assert!(
        planned
            .iter()
            .any(|c| c.starts_with("firehose: create delivery stream shop-clicks-raw"))
    );
    assert!(
        planned
            .iter()
            .any(|c| c.starts_with("glue: create table heatmap_demo.curated_heatmap"))
    );
    assert!(
        planned
            .iter()
            .any(|c| c.starts_with("athena: create Athena workgroup heatmap-demo-wg"))
    );
    assert_eq!(
        writes_since(&env.calls, &Default::default()),
        Vec::<String>::new(),
        "plan writes nothing"
    );

    let outcomes = converge(&env.clients, &mut pipeline, &|| {}).await;
    // Round 1: the stream is created and the Firehose part waits for it to be ACTIVE.
    let first = &outcomes[0];
    let raw = first
        .parts
        .iter()
        .find(|p| p.part == Part::RawArchive)
        .expect("raw archive");
    assert!(!raw.ready);
    assert_eq!(raw.reason, Reason::Provisioning);
    assert!(
        raw.message.starts_with("waiting for the stream"),
        "{}",
        raw.message
    );
    assert_eq!(first.ready_summary().reason, Reason::Provisioning);

    let last = outcomes.last().expect("outcome");
    assert!(last.ready_summary().ready);
    let conditions: Vec<_> = last
        .parts
        .iter()
        .map(|p| (p.condition_type(), p.status(), p.reason.as_str()))
        .collect();
    assert_eq!(
        conditions,
        [
            ("BucketsReady", "True", "Ready"),
            ("StreamReady", "True", "Ready"),
            ("RawArchiveReady", "True", "Ready"),
            ("CatalogReady", "True", "Ready"),
            ("QueryReady", "True", "Ready"),
        ]
    );
    let resources = &last.resources;
    assert_eq!(
        resources.stream_arn.as_deref(),
        Some("arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks")
    );
    assert_eq!(
        resources.delivery_stream_arn.as_deref(),
        Some("arn:aws:firehose:ap-northeast-2:123456789012:deliverystream/shop-clicks-raw")
    );
    assert_eq!(
        resources.raw_bucket.as_deref(),
        Some("shop-heatmap-raw-123456789012")
    );
    assert_eq!(resources.glue_table.as_deref(), Some("curated_heatmap"));
    assert_eq!(resources.workgroup.as_deref(), Some("heatmap-demo-wg"));
    assert_eq!(resources.crawler_name, None);

    // The resync: nothing planned, nothing written.
    let before = env.calls.snapshot();
    let plan = plan_pipeline(&env.clients, &pipeline).await.expect("plan");
    assert!(plan.is_in_sync(), "{:?}", plan.changes());
    let outcome = apply_pipeline(&env.clients, &pipeline)
        .await
        .expect("resync");
    assert!(outcome.is_ready());
    assert_eq!(outcome.applied(), vec![]);
    assert_no_writes(&env.calls, &before, "pipeline resync");
}

#[tokio::test]
async fn full_pipeline_with_managed_flink_and_switching_features_off() {
    let env = start().await;
    let fake = FakeFlink::new();
    let clients = env.clients.clone().with_flink(fake.clone());
    let mut pipeline = pipeline("full");
    pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
    let settle = || fake.settle();

    let outcomes = converge(&clients, &mut pipeline, &settle).await;
    let last = outcomes.last().expect("outcome");
    let flink = last
        .parts
        .iter()
        .find(|p| p.part == Part::FlinkApplication)
        .expect("flink part");
    assert!(flink.ready, "{flink:?}");
    assert_eq!(
        last.resources.flink_application_arn.as_deref(),
        Some("arn:aws:kinesisanalytics:ap-northeast-2:123456789012:application/shop-full-heatmap")
    );
    assert_eq!(
        last.resources.crawler_name.as_deref(),
        Some("shop-full-curated")
    );
    assert_eq!(
        fake.app("shop-full-heatmap").map(|a| a.status),
        Some("RUNNING".into())
    );

    let before = env.calls.snapshot();
    let calls = fake.calls().len();
    let outcome = apply_pipeline(&clients, &pipeline).await.expect("resync");
    assert!(outcome.is_ready() && outcome.applied().is_empty());
    assert_no_writes(&env.calls, &before, "full pipeline resync");
    assert_eq!(fake.calls().len(), calls, "no Flink call either");

    // Switch the raw archive off, the engine to Deployment and partitions to projection: what
    // the pipeline made for them goes (status.resources says what that was).
    pipeline.spec.raw_archive.enabled = false;
    pipeline.spec.aggregation.engine = AggregationEngine::Deployment;
    pipeline.spec.catalog.partitions = PartitionDiscovery::Projection;
    let plan = plan_pipeline(&clients, &pipeline).await.expect("plan");
    let planned: Vec<String> = plan.changes().iter().map(|(_, c)| c.to_string()).collect();
    assert!(
        planned.contains(&"delete delivery stream shop-full-clicks-raw".to_owned()),
        "{planned:#?}"
    );
    assert!(
        planned.contains(&"delete Flink application shop-full-heatmap".to_owned()),
        "{planned:#?}"
    );
    assert!(
        planned
            .iter()
            .any(|c| c.starts_with("delete crawler shop-full-curated")),
        "{planned:#?}"
    );

    let outcomes = converge(&clients, &mut pipeline, &settle).await;
    let last = outcomes.last().expect("outcome");
    // The round that finds them gone still reports the parts as ready ("disabled"); from the
    // next round on they are not reported at all.
    let raw = last
        .parts
        .iter()
        .find(|p| p.part == Part::RawArchive)
        .expect("raw");
    assert_eq!(raw.message, "the raw archive is disabled");
    let last = apply_pipeline(&clients, &pipeline).await.expect("resync");
    let parts: Vec<Part> = last.parts.iter().map(|p| p.part).collect();
    assert_eq!(
        parts,
        [Part::Buckets, Part::Stream, Part::Catalog, Part::Query],
        "switched-off parts are no longer reported once cleaned up"
    );
    assert_eq!(last.resources.delivery_stream_arn, None);
    assert_eq!(last.resources.flink_application_arn, None);
    assert_eq!(last.resources.crawler_name, None);
    assert!(fake.app("shop-full-heatmap").is_none());
    assert!(
        env.clients
            .firehose
            .describe_delivery_stream()
            .delivery_stream_name("shop-full-clicks-raw")
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_conflict_is_terminal_and_touches_nothing() {
    let env = start().await;
    let mut pipeline = pipeline("minimal");
    let mut create = env
        .clients
        .kinesis
        .create_stream()
        .stream_name("shop-clicks")
        .shard_count(1);
    for (key, value) in Owner::new("analytics", "other").tags() {
        create = create.tags(key, value);
    }
    create.send().await.expect("create");
    // moto ignores CreateStream's tags; tag it explicitly.
    let mut tag = env
        .clients
        .kinesis
        .add_tags_to_stream()
        .stream_name("shop-clicks");
    for (key, value) in Owner::new("analytics", "other").tags() {
        tag = tag.tags(key, value);
    }
    tag.send().await.expect("tag");

    let outcome = apply_pipeline(&env.clients, &pipeline)
        .await
        .expect("apply");
    let stream = outcome
        .parts
        .iter()
        .find(|p| p.part == Part::Stream)
        .expect("stream");
    assert!(!stream.ready);
    assert_eq!(stream.reason, Reason::Conflict);
    assert!(
        stream.message.contains("analytics/other"),
        "{}",
        stream.message
    );
    let raw = outcome
        .parts
        .iter()
        .find(|p| p.part == Part::RawArchive)
        .expect("raw");
    assert_eq!(raw.reason, Reason::Provisioning, "waits for the stream");
    let summary = outcome.ready_summary();
    assert_eq!(summary.reason, Reason::Conflict);
    assert!(
        summary.message.starts_with("stream: "),
        "{}",
        summary.message
    );
    assert!(outcome.requeue_after() >= std::time::Duration::from_secs(10));
    assert!(
        outcome
            .applied()
            .iter()
            .all(|(service, _)| service.as_str() != "kinesis")
    );
    // The other parts went ahead.
    assert!(
        outcome
            .parts
            .iter()
            .find(|p| p.part == Part::Buckets)
            .is_some_and(|p| p.ready)
    );

    pipeline.status = Some(ClickHeatmapPipelineStatus {
        resources: outcome.resources.clone(),
        ..ClickHeatmapPipelineStatus::default()
    });
    let before = env.calls.snapshot();
    let again = apply_pipeline(&env.clients, &pipeline)
        .await
        .expect("again");
    assert_eq!(again.ready_summary().reason, Reason::Conflict);
    assert_no_writes(&env.calls, &before, "a conflicted pipeline's resync");
}

#[tokio::test]
async fn deletion_under_each_policy() {
    let env = start().await;
    let mut pipeline = pipeline("minimal");
    converge(&env.clients, &mut pipeline, &|| {}).await;

    // Retain: no AWS call at all.
    let before = env.calls.snapshot();
    let outcome = delete_pipeline(&env.clients, &pipeline)
        .await
        .expect("retain");
    assert!(outcome.is_finished());
    assert_eq!(outcome.steps[0].deletion, Deletion::Retained);
    assert!(
        env.calls.since(&before).is_empty(),
        "{:?}",
        env.calls.since(&before)
    );

    // Delete: repeat until finished; everything tagged by the pipeline is gone.
    pipeline.spec.deletion_policy = DeletionPolicy::Delete;
    env.s3()
        .put_object()
        .bucket("shop-heatmap-raw-123456789012")
        .key("raw/2024/01/01/00/x")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}"))
        .send()
        .await
        .expect("put");
    let mut rounds = 0;
    loop {
        let outcome = delete_pipeline(&env.clients, &pipeline)
            .await
            .expect("delete");
        if outcome.is_finished() {
            assert!(
                outcome.steps.iter().all(|s| s.deletion == Deletion::Gone),
                "{outcome:#?}"
            );
            break;
        }
        rounds += 1;
        assert!(rounds < 5, "{outcome:#?}");
    }
    let plan = plan_pipeline(&env.clients, &pipeline).await.expect("plan");
    assert!(
        plan.parts
            .iter()
            .all(|p| !p.changes.is_empty() && p.readiness != Readiness::Ready),
        "everything would be created again"
    );
}

#[tokio::test]
async fn plan_command_prints_changes_then_in_sync() {
    let env = start().await;
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipeline-minimal.yaml"
    );
    let binary = env!("CARGO_BIN_EXE_clickheatmap-operator");
    let plan = |extra: &[&str]| {
        let output = Command::new(binary)
            .args(["plan", "-f", manifest])
            .args(extra)
            .envs(env.moto.aws_env())
            .env_remove("AWS_PROFILE")
            .output()
            .expect("run plan");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = plan(&["--detailed-exitcode"]);
    assert_eq!(code, Some(2), "changes pending: {stdout}\n{stderr}");
    assert!(
        stdout.starts_with("Pipeline default/shop (region ap-northeast-2, account 123456789012):"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ create bucket shop-heatmap-raw-123456789012 in ap-northeast-2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ create stream shop-clicks (PROVISIONED, 1 shard)"),
        "{stdout}"
    );
    let (code, json, _) = plan(&["-o", "json"]);
    assert_eq!(code, Some(0));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed[0]["inSync"], false);
    assert_eq!(
        parsed[0]["parts"][0]["changes"][0]["call"]["op"],
        "CreateBucket"
    );
    assert_eq!(
        writes_since(&env.calls, &Default::default()),
        Vec::<String>::new()
    );

    // Apply as the same pipeline (the manifest has no namespace: `default`).
    let mut applied = pipeline("minimal");
    applied.metadata.namespace = Some("default".into());
    converge(&env.clients, &mut applied, &|| {}).await;
    let (code, stdout, stderr) = plan(&["--detailed-exitcode"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("in sync, no changes"), "{stdout}");
    assert!(
        stdout.contains("= stream shop-clicks is ACTIVE and matches the spec"),
        "{stdout}"
    );

    // `run` takes the chart's flags, and says clearly when there is no cluster to talk to.
    let output = Command::new(binary)
        .args(["run", "--help"])
        .output()
        .expect("run --help");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--metrics-port",
        "--watch-namespaces",
        "--leader-election",
        "--aggregator-image",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{help}");
    }
    let output = Command::new(binary)
        .args(["run", "--metrics-port", "0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("kubernetes client"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
