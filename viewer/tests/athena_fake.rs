//! The Athena engine's control flow against a scripted fake [`AthenaClient`]: result paging
//! with NextToken, header skipping, failures, the timeout (StopQueryExecution), and
//! cancellation when the caller — or the browser — goes away.
//!
//! moto cannot page results (it ignores MaxResults) or hold a request open, so these paths are
//! tested here; `athena_moto.rs` runs the same engine against a real moto server.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clickheatmap_viewer::engine::athena::{AthenaEngine, AthenaSettings, QueryState};
use clickheatmap_viewer::engine::{EngineError, HeatmapEngine, HeatmapQuery};
use clickheatmap_viewer::params::{PageId, QueryRange};
use common::*;

fn settings() -> AthenaSettings {
    let mut settings = AthenaSettings::new(table_name(), "heatmap-demo-wg".into());
    settings.poll_initial = Duration::from_millis(10);
    settings.poll_max = Duration::from_millis(50);
    settings.query_timeout = Duration::from_secs(5);
    settings
}

fn query() -> HeatmapQuery {
    HeatmapQuery {
        page: PageId::parse(Some("home")).unwrap(),
        range: QueryRange {
            from_ms: T0,
            to_ms: T0 + HOUR,
        },
    }
}

const COLUMNS: [&str; 3] = ["grid_x", "grid_y", "clicks"];

#[tokio::test]
async fn results_are_paged_and_the_header_skipped_once() {
    let pages = vec![
        page(
            &COLUMNS,
            &[
                &["grid_x", "grid_y", "clicks"],
                &["0", "0", "30"],
                &["1", "0", "20"],
            ],
            Some("page-1"),
        ),
        // A later page's first row is data, even though it is first.
        page(
            &COLUMNS,
            &[&["2", "0", "10"], &["3", "0", "9"]],
            Some("page-2"),
        ),
        page(&COLUMNS, &[&["19", "19", "1"]], None),
    ];
    let fake = Arc::new(FakeAthena::new(
        Script::States(vec![
            QueryState::Queued,
            QueryState::Running,
            QueryState::Succeeded,
        ]),
        pages,
    ));
    let engine = AthenaEngine::new(fake.clone(), settings());
    let result = engine.heatmap(&query()).await.unwrap();
    assert_eq!(
        result.cells,
        vec![(0, 0, 30), (1, 0, 20), (2, 0, 10), (3, 0, 9), (19, 19, 1)]
    );
    assert_eq!(result.query.rows, 5);
    assert_eq!(result.query.engine, "athena");
    assert_eq!(result.query.execution_id.as_deref(), Some("exec-1"));
    assert_eq!(result.query.scanned_bytes, Some(1234));
    assert_eq!(
        fake.calls(),
        [
            "start",
            "status:exec-1",
            "status:exec-1",
            "status:exec-1",
            "results:exec-1:-:1000",
            "results:exec-1:page-1:1000",
            "results:exec-1:page-2:1000",
        ]
    );
    assert!(fake.stops().is_empty());

    // What was started: the statement with placeholders, values as execution parameters.
    let started = fake.started.lock().unwrap()[0].clone();
    assert_eq!(started.workgroup, "heatmap-demo-wg");
    assert_eq!(started.database, "heatmap_demo");
    assert_eq!(started.sql, result.query.sql);
    assert!(started.sql.contains("WHERE page_id = ?"));
    assert!(started.sql.contains("dt BETWEEN ? AND ?"));
    assert!(!started.sql.contains("home"));
    assert_eq!(started.parameters[0], "'home'");
    assert_eq!(started.parameters, result.query.parameters);
}

#[tokio::test]
async fn too_many_rows_and_bad_rows_are_errors() {
    let fake = Arc::new(FakeAthena::new(
        Script::States(vec![QueryState::Succeeded]),
        vec![page(
            &COLUMNS,
            &[&["0", "0", "1"], &["1", "0", "1"], &["2", "0", "1"]],
            None,
        )],
    ));
    let mut limited = settings();
    limited.max_rows = 2;
    let engine = AthenaEngine::new(fake, limited);
    assert!(matches!(
        engine.heatmap(&query()).await,
        Err(EngineError::TooManyRows { limit: 2 })
    ));

    let fake = Arc::new(FakeAthena::new(
        Script::States(vec![QueryState::Succeeded]),
        vec![page(&COLUMNS, &[&["0", "x", "1"]], None)],
    ));
    let engine = AthenaEngine::new(fake, settings());
    assert!(matches!(
        engine.heatmap(&query()).await,
        Err(EngineError::BadResult(_))
    ));
}

#[tokio::test]
async fn a_failed_query_reports_athenas_reason() {
    let mut fake = FakeAthena::new(
        Script::States(vec![QueryState::Running, QueryState::Failed]),
        Vec::new(),
    );
    fake.fail_reason = Some("TABLE_NOT_FOUND: line 2:6: Table does not exist".into());
    let fake = Arc::new(fake);
    let engine = AthenaEngine::new(fake.clone(), settings());
    match engine.heatmap(&query()).await {
        Err(EngineError::Failed {
            reason,
            execution_id,
        }) => {
            assert!(reason.contains("TABLE_NOT_FOUND"));
            assert_eq!(execution_id, "exec-1");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // A finished (failed) execution is not stopped.
    assert!(fake.stops().is_empty());
}

#[tokio::test]
async fn a_query_that_never_finishes_is_stopped_at_the_timeout() {
    let fake = Arc::new(FakeAthena::new(Script::Never, Vec::new()));
    let mut short = settings();
    short.query_timeout = Duration::from_millis(400);
    let engine = AthenaEngine::new(fake.clone(), short);
    let started = std::time::Instant::now();
    let result = engine.heatmap(&query()).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(EngineError::Timeout { ref execution_id, .. }) if execution_id == "exec-1"),
        "{result:?}"
    );
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // Stopped exactly once, before the error was returned.
    assert_eq!(fake.stops(), ["exec-1"]);
    let polls = fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("status"))
        .count();
    assert!((3..=40).contains(&polls), "{polls} polls");
    // Nothing is stopped a second time later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.stops(), ["exec-1"]);
}

#[tokio::test]
async fn a_slow_status_call_still_honours_the_timeout() {
    let mut fake = FakeAthena::new(Script::Never, Vec::new());
    fake.status_delay = Duration::from_secs(30);
    let fake = Arc::new(fake);
    let mut short = settings();
    short.query_timeout = Duration::from_millis(300);
    let engine = AthenaEngine::new(fake.clone(), short);
    let started = std::time::Instant::now();
    assert!(matches!(
        engine.heatmap(&query()).await,
        Err(EngineError::Timeout { .. })
    ));
    // Far below the 30 s the status call would take, with room for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(fake.stops(), ["exec-1"]);
}

#[tokio::test]
async fn dropping_the_query_stops_the_execution() {
    let fake = Arc::new(FakeAthena::new(Script::Never, Vec::new()));
    let mut patient = settings();
    patient.query_timeout = Duration::from_secs(600);
    let engine = AthenaEngine::new(fake.clone(), patient);
    let query = query();
    // The caller gives up after 200 ms (the future is dropped mid-poll).
    let outcome = tokio::time::timeout(Duration::from_millis(200), engine.heatmap(&query)).await;
    assert!(outcome.is_err());
    assert!(
        fake.wait_for_stop(Duration::from_secs(5)).await,
        "StopQueryExecution was not called; calls: {:?}",
        fake.calls()
    );
    assert_eq!(fake.stops(), ["exec-1"]);
}

#[tokio::test]
async fn a_browser_that_goes_away_stops_the_query() {
    let fake = Arc::new(FakeAthena::new(Script::Never, Vec::new()));
    // A timeout far beyond the test, so only the disconnect can stop the query.
    let mut patient = settings();
    patient.query_timeout = Duration::from_secs(600);
    let engine: Arc<dyn HeatmapEngine> = Arc::new(AthenaEngine::new(fake.clone(), patient));
    let server = serve_viewer(viewer_with(engine)).await;
    let address = server.address;

    // A raw HTTP/1.1 request whose connection is closed before the answer.
    let request = format!(
        "GET /api/heatmap?page=home&from={T0}&to={} HTTP/1.1\r\nHost: {address}\r\n\r\n",
        T0 + HOUR
    );
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(stream);
    });
    client.join().unwrap();
    assert!(
        fake.wait_for_stop(Duration::from_secs(5)).await,
        "StopQueryExecution was not called after the client left; calls: {:?}",
        fake.calls()
    );
    assert_eq!(fake.stops(), ["exec-1"]);
}

#[tokio::test]
async fn timeouts_and_failures_over_http() {
    let fake = Arc::new(FakeAthena::new(Script::Never, Vec::new()));
    let mut short = settings();
    short.query_timeout = Duration::from_millis(300);
    let engine: Arc<dyn HeatmapEngine> = Arc::new(AthenaEngine::new(fake.clone(), short));
    let server = serve_viewer(viewer_with(engine)).await;
    let (status, body) = get_json(&server.url(&format!(
        "/api/heatmap?page=home&from={T0}&to={}",
        T0 + HOUR
    )))
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("stopped"),
        "{body}"
    );
    assert_eq!(fake.stops(), ["exec-1"]);

    let mut failing = FakeAthena::new(Script::States(vec![QueryState::Failed]), Vec::new());
    failing.fail_reason = Some("SYNTAX_ERROR: mismatched input".into());
    let failing = Arc::new(failing);
    let mut viewer = viewer_with(Arc::new(AthenaEngine::new(failing, settings())));
    viewer.allow_raw_sql = true;
    let server = serve_viewer(viewer).await;
    let (status, body) =
        get_json(&server.url(&format!("/api/pages?from={T0}&to={}", T0 + HOUR))).await;
    assert_eq!(status, 502, "{body}");
    // The same failure from the user's own SQL is their mistake: 400.
    let response = common::http_client()
        .post(server.url("/api/sql"))
        .header("content-type", "application/json")
        .body(r#"{"sql":"SELECT nonsense FROM"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("SYNTAX_ERROR"),
        "{body}"
    );
}

#[tokio::test]
async fn raw_sql_runs_when_allowed() {
    let fake = Arc::new(FakeAthena::new(
        Script::States(vec![QueryState::Succeeded]),
        vec![page(
            &["page_id", "n"],
            &[&["page_id", "n"], &["home", "7"]],
            None,
        )],
    ));
    let mut viewer = viewer_with(Arc::new(AthenaEngine::new(fake.clone(), settings())));
    viewer.allow_raw_sql = true;
    let server = serve_viewer(viewer).await;
    let (_, config) = get_json(&server.url("/api/config")).await;
    assert_eq!(
        (config["engine"].as_str(), config["raw_sql"].as_bool()),
        (Some("athena"), Some(true))
    );
    let response = common::http_client()
        .post(server.url("/api/sql"))
        .header("content-type", "application/json")
        .body(r#"{"sql":"SELECT page_id, COUNT(*) AS n FROM curated_heatmap GROUP BY 1;"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["columns"], serde_json::json!(["page_id", "n"]));
    assert_eq!(body["rows"], serde_json::json!([["home", "7"]]));
    assert_eq!(body["query"]["engine"], "athena");
    let started = fake.started.lock().unwrap()[0].clone();
    assert_eq!(
        started.sql,
        "SELECT page_id, COUNT(*) AS n FROM curated_heatmap GROUP BY 1"
    );
    assert!(started.parameters.is_empty());
}
