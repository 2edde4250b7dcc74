//! The Athena engine against a real moto server through the AWS SDK: a workgroup is created,
//! query results are preset through moto's API (`/moto-api/static/athena/query-results`), and
//! moto's state manager makes every execution go QUEUED -> RUNNING -> SUCCEEDED over several
//! `GetQueryExecution` calls, so the engine really polls. A query that never finishes is made
//! the same way (a transition that needs a million polls): the engine's timeout stops it, and
//! moto reports it CANCELLED.
//!
//! moto does not page results (it ignores MaxResults); paging is covered in `athena_fake.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_athena::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_athena::types::QueryExecutionState;
use clickheatmap_testkit::{MotoServer, eventually};
use clickheatmap_viewer::engine::athena::{AthenaEngine, AthenaSettings, SdkAthenaClient};
use clickheatmap_viewer::engine::{EngineError, HeatmapEngine, HeatmapQuery};
use clickheatmap_viewer::params::{PageId, QueryRange};
use common::*;
use serde_json::json;

const WORKGROUP: &str = "heatmap-demo-wg";

fn sdk_client(moto: &MotoServer) -> aws_sdk_athena::Client {
    let config = aws_sdk_athena::Config::builder()
        .http_client(clickheatmap_tls::aws_http_client())
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(moto.endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    aws_sdk_athena::Client::from_conf(config)
}

async fn moto_api(moto: &MotoServer, path: &str, body: serde_json::Value) {
    let response = common::http_client()
        .post(format!("{}{path}", moto.endpoint()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

/// Every execution needs `polls` GetQueryExecution calls per state change.
async fn set_polls_per_state(moto: &MotoServer, polls: u64) {
    moto_api(
        moto,
        "/moto-api/state-manager/set-transition",
        json!({
            "model_name": "athena::execution",
            "transition": {"progression": "manual", "times": polls}
        }),
    )
    .await;
}

fn column(name: &str, kind: &str) -> serde_json::Value {
    json!({
        "CatalogName": "hive", "SchemaName": "", "TableName": "",
        "Name": name, "Label": name, "Type": kind,
        "Precision": 10, "Scale": 0, "Nullable": "UNKNOWN", "CaseSensitive": false
    })
}

fn row(values: &[&str]) -> serde_json::Value {
    json!({ "Data": values.iter().map(|v| json!({"VarCharValue": v})).collect::<Vec<_>>() })
}

/// Queues the result of the next execution, with Athena's header row first.
async fn preset_result(moto: &MotoServer, columns: &[(&str, &str)], rows: &[&[&str]]) {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let mut all_rows = vec![row(&names)];
    all_rows.extend(rows.iter().map(|r| row(r)));
    moto_api(
        moto,
        "/moto-api/static/athena/query-results",
        json!({
            "region": "us-east-1",
            "results": [{
                "rows": all_rows,
                "column_info": columns.iter().map(|(n, t)| column(n, t)).collect::<Vec<_>>(),
            }]
        }),
    )
    .await;
}

async fn start_moto() -> (MotoServer, aws_sdk_athena::Client) {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto starts");
    let client = sdk_client(&moto);
    client
        .create_work_group()
        .name(WORKGROUP)
        .send()
        .await
        .expect("workgroup created");
    (moto, client)
}

fn settings() -> AthenaSettings {
    let mut settings = AthenaSettings::new(table_name(), WORKGROUP.into());
    settings.output_location = Some("s3://athena-results/viewer/".into());
    settings.poll_initial = Duration::from_millis(20);
    settings.poll_max = Duration::from_millis(100);
    settings.query_timeout = Duration::from_secs(30);
    settings
}

/// The state moto reports for an execution.
async fn execution_state(
    client: &aws_sdk_athena::Client,
    execution_id: &str,
) -> Option<QueryExecutionState> {
    let execution = client
        .get_query_execution()
        .query_execution_id(execution_id)
        .send()
        .await
        .unwrap();
    execution.query_execution()?.status()?.state().cloned()
}

fn query() -> HeatmapQuery {
    HeatmapQuery {
        page: PageId::parse(Some("demo-page")).unwrap(),
        range: QueryRange {
            from_ms: T0,
            to_ms: T0 + HOUR,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heatmaps_and_pages_run_on_moto_athena() {
    let (moto, client) = start_moto().await;
    set_polls_per_state(&moto, 2).await;
    let counting = Arc::new(Counting::new(SdkAthenaClient::new(client.clone())));
    let engine = AthenaEngine::new(counting.clone(), settings());

    preset_result(
        &moto,
        &[
            ("grid_x", "integer"),
            ("grid_y", "integer"),
            ("clicks", "bigint"),
        ],
        &[&["10", "10", "42"], &["0", "0", "7"], &["19", "19", "1"]],
    )
    .await;
    let result = engine.heatmap(&query()).await.expect("heatmap query");
    assert_eq!(result.cells, vec![(10, 10, 42), (0, 0, 7), (19, 19, 1)]);
    assert_eq!(result.query.rows, 3);
    assert_eq!(counting.count("StartQueryExecution"), 1);
    // QUEUED -> RUNNING -> SUCCEEDED at two polls per step.
    assert!(
        counting.count("GetQueryExecution") >= 4,
        "{} polls",
        counting.count("GetQueryExecution")
    );
    assert_eq!(counting.count("GetQueryResults"), 1);
    assert_eq!(counting.count("StopQueryExecution"), 0);

    // What moto recorded is exactly what the engine meant to run.
    let execution_id = result.query.execution_id.clone().expect("execution id");
    let execution = client
        .get_query_execution()
        .query_execution_id(&execution_id)
        .send()
        .await
        .unwrap();
    let execution = execution.query_execution().expect("execution");
    assert_eq!(execution.query(), Some(result.query.sql.as_str()));
    assert_eq!(execution.work_group(), Some(WORKGROUP));
    assert_eq!(
        execution
            .query_execution_context()
            .and_then(|c| c.database()),
        Some("heatmap_demo")
    );
    assert_eq!(
        execution.execution_parameters(),
        result.query.parameters.as_slice()
    );
    assert_eq!(
        execution.execution_parameters(),
        [
            "'demo-page'",
            "'2025-12-28'",
            "'2025-12-28'",
            "'2025-12-28'",
            "'09'",
            "'2025-12-28'",
            "'10'",
            "1766916000000",
            "1766919600000",
        ]
    );
    assert!(
        execution
            .result_configuration()
            .and_then(|c| c.output_location())
            .is_some_and(|l| l.starts_with("s3://athena-results/viewer/"))
    );
    assert_eq!(
        execution.status().and_then(|s| s.state()),
        Some(&QueryExecutionState::Succeeded)
    );

    // The page list.
    preset_result(
        &moto,
        &[("page_id", "varchar"), ("clicks", "bigint")],
        &[&["demo-page", "50"], &["/pricing", "3"]],
    )
    .await;
    let pages = engine.pages(query().range).await.expect("pages query");
    assert_eq!(
        pages
            .pages
            .iter()
            .map(|p| (p.page_id.as_str(), p.clicks))
            .collect::<Vec<_>>(),
        [("demo-page", 50), ("/pricing", 3)]
    );
    assert!(
        pages
            .query
            .sql
            .starts_with("SELECT page_id, SUM(clicks) AS clicks")
    );

    // And over HTTP, as the browser sees it.
    preset_result(
        &moto,
        &[
            ("grid_x", "integer"),
            ("grid_y", "integer"),
            ("clicks", "bigint"),
        ],
        &[&["3", "4", "12"]],
    )
    .await;
    let engine: Arc<dyn HeatmapEngine> = Arc::new(AthenaEngine::new(
        Arc::new(SdkAthenaClient::new(client.clone())),
        settings(),
    ));
    let server = serve_viewer(viewer_with(engine)).await;
    let (status, body) = get_json(&server.url(&format!(
        "/api/heatmap?page=demo-page&from={T0}&to={}",
        T0 + HOUR
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cells(&body), vec![(3, 4, 12)]);
    assert_eq!(body["total"], 12);
    assert_eq!(body["query"]["engine"], "athena");
    assert!(body["query"]["execution_id"].as_str().is_some());
    assert_eq!(body["query"]["parameters"][0], "'demo-page'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_never_finishes_is_stopped_on_moto() {
    let (moto, client) = start_moto().await;
    // A million polls per state change: the execution stays QUEUED for the whole test.
    set_polls_per_state(&moto, 1_000_000).await;
    let counting = Arc::new(Counting::new(SdkAthenaClient::new(client.clone())));
    let mut short = settings();
    short.query_timeout = Duration::from_millis(1500);
    let engine = AthenaEngine::new(counting.clone(), short);

    let result = engine.heatmap(&query()).await;
    let execution_id = match result {
        Err(EngineError::Timeout { execution_id, .. }) => execution_id,
        other => panic!("expected a timeout, got {other:?}"),
    };
    assert!(counting.count("GetQueryExecution") >= 3);
    assert_eq!(counting.count("StopQueryExecution"), 1);
    assert_eq!(counting.count("GetQueryResults"), 0);
    assert_eq!(
        execution_state(&client, &execution_id).await,
        Some(QueryExecutionState::Cancelled)
    );

    // The same when the caller goes away instead: the drop guard stops the execution. The
    // caller leaves once the execution has started and is being polled (not while moto still
    // answers StartQueryExecution: there would be nothing to stop yet).
    let patient = AthenaEngine::new(counting.clone(), settings());
    let query = query();
    let polls_before = counting.count("GetQueryExecution");
    let polled = eventually(
        "the query to be polled",
        Duration::from_secs(30),
        || async { (counting.count("GetQueryExecution") > polls_before).then_some(()) },
    );
    tokio::select! {
        result = patient.heatmap(&query) => panic!("a QUEUED query finished: {result:?}"),
        () = polled => {}
    }
    eventually(
        "the abandoned query to be stopped",
        Duration::from_secs(10),
        || async { (counting.count("StopQueryExecution") >= 2).then_some(()) },
    )
    .await;
    let executions = client
        .list_query_executions()
        .work_group(WORKGROUP)
        .send()
        .await
        .unwrap();
    let ids = executions.query_execution_ids();
    assert_eq!(ids.len(), 2);
    // The drop guard's stop runs in a task of its own: every execution ends up cancelled.
    for id in ids {
        eventually(
            &format!("{id} cancelled"),
            Duration::from_secs(30),
            || async {
                (execution_state(&client, id).await == Some(QueryExecutionState::Cancelled))
                    .then_some(())
            },
        )
        .await;
    }
}
