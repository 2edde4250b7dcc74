//! The viewer's API over real HTTP on 127.0.0.1, against a curated table written by the real
//! aggregator pipeline: page list, heatmap sums, the PNG, validation errors, headers, the UI.

mod common;

use std::time::Duration;

use clickheatmap_viewer::engine::local::LocalSettings;
use clickheatmap_viewer::engine::{EngineError, HeatmapEngine};

use common::*;

/// Clicks around 2025-12-28T10:00Z; the first hour after T0 holds the windows ending in
/// [10:00, 11:00).
fn input() -> Vec<String> {
    vec![
        // home, window [10:00, 10:01): 3 clicks in (0,0), 1 in (19,19).
        click("home", T0 + 1_000, 0.0, 0.0),
        click("home", T0 + 2_000, 10.0, 5.0),
        click("home", T0 + 3_000, 49.0, 24.0),
        click("home", T0 + 4_000, 999.0, 499.0),
        // home, window [10:30, 10:31): 2 in (10,10).
        click("home", T0 + 30 * MINUTE, 525.0, 260.0),
        click("home", T0 + 30 * MINUTE + 500, 520.0, 255.0),
        // home, window [10:59, 11:00) ends at 11:00: outside [10:00, 11:00).
        click("home", T0 + 59 * MINUTE + 30_000, 525.0, 260.0),
        // home, two hours later.
        click("home", T0 + 2 * HOUR, 100.0, 100.0),
        // pricing, in the first hour: 1 click in (1,1).
        click("pricing", T0 + 10 * MINUTE, 60.0, 30.0),
        // A malformed record: rejected (and dead-lettered), never counted.
        "{broken".to_owned(),
    ]
}

async fn setup() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("curated");
    write_curated(&root, &input(), T0).await;
    let server = serve_viewer(local_viewer(&root)).await;
    (dir, server)
}

fn range(from: i64, to: i64) -> String {
    format!("from={from}&to={to}")
}

#[tokio::test]
async fn pages_and_heatmaps_sum_the_curated_rows() {
    let (_dir, server) = setup().await;

    let (status, body) =
        get_json(&server.url(&format!("/api/pages?{}", range(T0, T0 + HOUR)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pages"],
        serde_json::json!([
            {"page_id": "home", "clicks": 6},
            {"page_id": "pricing", "clicks": 1}
        ])
    );
    assert_eq!(body["query"]["engine"], "local");
    assert!(
        body["query"]["sql"]
            .as_str()
            .unwrap()
            .contains("GROUP BY 1")
    );

    let (status, body) =
        get_json(&server.url(&format!("/api/heatmap?page=home&{}", range(T0, T0 + HOUR)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["columns"].as_i64(), body["rows"].as_i64()),
        (Some(20), Some(20))
    );
    // Ordered like the demo query: clicks descending.
    assert_eq!(cells(&body), vec![(0, 0, 3), (10, 10, 2), (19, 19, 1)]);
    assert_eq!(body["total"], 6);
    assert_eq!(body["outside_grid_clicks"], 0);
    assert_eq!(body["page"], "home");
    assert_eq!(
        (body["from"].as_i64(), body["to"].as_i64()),
        (Some(T0), Some(T0 + HOUR))
    );
    let query = &body["query"];
    assert_eq!(query["engine"], "local");
    assert_eq!(query["rows"], 3);
    assert!(query["elapsed_ms"].as_u64().is_some());
    // The partition predicates pruned hour=12: only the four windows of hour 10 were opened.
    assert_eq!(query["files_read"], 4);
    let sql = query["sql"].as_str().unwrap();
    assert!(
        sql.contains("FROM \"heatmap_demo\".\"curated_heatmap\""),
        "{sql}"
    );
    // The statement Athena runs, with numbered placeholders; values never enter the text.
    assert!(sql.contains("WHERE page_id = $1"), "{sql}");
    assert!(sql.contains("dt BETWEEN $2 AND $3"), "{sql}");
    assert!(
        sql.contains("window_end >= $8 AND window_end < $9"),
        "{sql}"
    );
    assert_eq!(query["parameters"][0], "'home'");
    assert_eq!(query["parameters"][7], T0.to_string());
    assert_eq!(query["parameters"][8], (T0 + HOUR).to_string());

    // One more minute takes in the window ending at 11:00.
    let (_, body) = get_json(&server.url(&format!(
        "/api/heatmap?page=home&{}",
        range(T0, T0 + HOUR + MINUTE)
    )))
    .await;
    // Ties are ordered by cell.
    assert_eq!(cells(&body), vec![(0, 0, 3), (10, 10, 3), (19, 19, 1)]);
    assert_eq!(body["total"], 7);

    // ISO-8601 works too, and a page with no clicks in the range is an empty result.
    let (status, body) = get_json(
        &server.url("/api/heatmap?page=pricing&from=2025-12-28T12:00:00Z&to=2025-12-28T13:00:00Z"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cells(&body), vec![]);
    assert_eq!(body["total"], 0);

    // The whole day: everything.
    let (_, body) = get_json(&server.url(&format!(
        "/api/pages?{}",
        range(T0 - 10 * HOUR, T0 + 10 * HOUR)
    )))
    .await;
    assert_eq!(
        body["pages"][0],
        serde_json::json!({"page_id": "home", "clicks": 8})
    );
}

#[tokio::test]
async fn a_smaller_viewer_grid_reports_cells_outside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("curated");
    write_curated(&root, &input(), T0).await;
    let mut viewer = local_viewer(&root);
    viewer.columns = 10;
    viewer.rows = 10;
    let server = serve_viewer(viewer).await;
    let (_, body) =
        get_json(&server.url(&format!("/api/heatmap?page=home&{}", range(T0, T0 + HOUR)))).await;
    assert_eq!(cells(&body), vec![(0, 0, 3)]);
    assert_eq!(body["total"], 3);
    assert_eq!(body["outside_grid_clicks"], 3);
}

#[tokio::test]
async fn the_png_is_the_same_query_rendered() {
    let (_dir, server) = setup().await;
    let response = common::get(server.url(&format!(
        "/api/heatmap.png?page=home&{}&width=320&height=180",
        range(T0, T0 + HOUR)
    )))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-heatmap-total"], "6");
    assert_eq!(
        headers["content-disposition"],
        format!(
            "attachment; filename=\"heatmap-home-{T0}-{}.png\"",
            T0 + HOUR
        )
    );
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    // IHDR: width and height, big-endian, at bytes 16..24.
    assert_eq!(&bytes[16..20], &320_u32.to_be_bytes());
    assert_eq!(&bytes[20..24], &180_u32.to_be_bytes());

    for bad in ["width=0", "height=5000", "width=abc", "grid=maybe"] {
        let (status, body) = get_json(&server.url(&format!(
            "/api/heatmap.png?page=home&{}&{bad}",
            range(T0, T0 + HOUR)
        )))
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Live was asked for but is off.
    let (status, body) = get_json(&server.url(&format!(
        "/api/heatmap.png?page=home&{}&live=1",
        range(T0, T0 + HOUR)
    )))
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn bad_parameters_are_clear_400s() {
    let (_dir, server) = setup().await;
    let long_page = "p".repeat(257);
    let cases: Vec<(String, &str)> = vec![
        (format!("/api/heatmap?{}", range(T0, T0 + HOUR)), "page"),
        (
            format!("/api/heatmap?page=&{}", range(T0, T0 + HOUR)),
            "page",
        ),
        (
            format!("/api/heatmap?page={long_page}&{}", range(T0, T0 + HOUR)),
            "page",
        ),
        (
            format!("/api/heatmap?page=a%27b&{}", range(T0, T0 + HOUR)),
            "page",
        ),
        (
            format!("/api/heatmap?page=a%20b&{}", range(T0, T0 + HOUR)),
            "page",
        ),
        (
            format!("/api/heatmap?page=%3Cscript%3E&{}", range(T0, T0 + HOUR)),
            "page",
        ),
        ("/api/heatmap?page=home&from=yesterday".to_owned(), "from"),
        (format!("/api/heatmap?page=home&from={T0}&to=soon"), "to"),
        (
            format!("/api/heatmap?page=home&{}", range(T0 + HOUR, T0)),
            "from",
        ),
        (format!("/api/heatmap?page=home&{}", range(T0, T0)), "from"),
        (
            format!("/api/heatmap?page=home&{}", range(T0 - 32 * 24 * HOUR, T0)),
            "from",
        ),
        ("/api/heatmap?page=home&from=5&to=10".to_owned(), "from"),
        ("/api/heatmap?page=home&to=99999999999999".to_owned(), "to"),
        (
            format!("/api/pages?{}", range(T0, T0 + 40 * 24 * HOUR)),
            "from",
        ),
        ("/api/pages?from=2025-02-30T00:00:00Z".to_owned(), "from"),
        ("/api/live?page=home".to_owned(), ""),
    ];
    for (path, param) in cases {
        let (status, body) = get_json(&server.url(&path)).await;
        let error = body["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{path}: {body}");
        if param.is_empty() {
            // Live mode is off: not found, with a hint.
            assert_eq!(status, 404, "{path}: {body}");
            assert!(error.contains("--live-url"), "{error}");
        } else {
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(body["param"], param, "{path}: {body}");
        }
    }
    // Query strings that cannot be decoded at all.
    let (status, body) = get_json(&server.url("/api/heatmap?page=%FF")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_json(&server.url("/api/nothing")).await;
    assert_eq!(status, 404, "{body}");
}

async fn post_sql(server: &TestServer, sql: &str) -> (u16, serde_json::Value) {
    let response = common::http_client()
        .post(server.url("/api/sql"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (status, body)
}

#[tokio::test]
async fn raw_sql_is_off_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_viewer(local_viewer(&dir.path().join("curated"))).await;
    let (status, body) = post_sql(&server, "SELECT 1").await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("--allow-raw-sql"));
    let (_, config) = get_json(&server.url("/api/config")).await;
    assert_eq!(config["raw_sql"], false);
}

#[tokio::test]
async fn raw_sql_runs_queries_on_the_embedded_engine() {
    let (dir, _) = setup().await;
    let mut viewer = local_viewer(&dir.path().join("curated"));
    viewer.allow_raw_sql = true;
    let server = serve_viewer(viewer).await;
    let (_, config) = get_json(&server.url("/api/config")).await;
    assert_eq!(config["raw_sql"], true);

    // The whole table, as the demo's first query reads it, with its partition columns.
    let (status, body) = post_sql(
        &server,
        r#"SELECT page_id, dt, hour, SUM(clicks) AS clicks FROM "heatmap_demo"."curated_heatmap"
           GROUP BY 1, 2, 3 ORDER BY 1, 3"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["columns"],
        serde_json::json!(["page_id", "dt", "hour", "clicks"])
    );
    assert_eq!(
        body["rows"],
        serde_json::json!([
            ["home", "2025-12-28", "10", "7"],
            ["home", "2025-12-28", "12", "1"],
            ["pricing", "2025-12-28", "10", "1"]
        ])
    );
    assert_eq!(body["query"]["engine"], "local");
    assert_eq!(body["query"]["rows"], 3);
    assert_eq!(body["query"]["files_read"], 5);

    // The unqualified name resolves in the default database, as in the Athena workgroup; NULL
    // stays NULL.
    let (status, body) = post_sql(
        &server,
        "SELECT COUNT(*) AS n, MAX(CASE WHEN page_id = 'none' THEN 1 END) AS missing FROM curated_heatmap",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], serde_json::json!([["6", null]]));

    // An empty result still names its columns.
    let (status, body) = post_sql(
        &server,
        "SELECT grid_x, grid_y FROM curated_heatmap WHERE page_id = 'nobody'",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["columns"], serde_json::json!(["grid_x", "grid_y"]));
    assert_eq!(body["rows"], serde_json::json!([]));

    // Mistakes are the user's: 400 with the engine's reason.
    let (status, body) = post_sql(&server, "SELECT nope FROM curated_heatmap").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    let (status, _) = post_sql(&server, "SELEC 1").await;
    assert_eq!(status, 400);
    let (status, _) = post_sql(&server, "DROP TABLE curated_heatmap").await;
    assert_eq!(status, 400);
    let response = common::http_client()
        .post(server.url("/api/sql"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn the_engine_itself_refuses_everything_but_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("curated");
    write_curated(&root, &input(), T0).await;
    let engine = local_engine(&root, LocalSettings::default());
    let copied = dir.path().join("copied.csv");
    // These get past the first-keyword check only when called directly: the engine's own
    // guard must refuse them.
    for statement in [
        "CREATE TABLE t AS SELECT 1".to_owned(),
        "CREATE EXTERNAL TABLE etc STORED AS CSV LOCATION '/etc/passwd'".to_owned(),
        format!("COPY (SELECT 1) TO '{}'", copied.display()),
        "INSERT INTO curated_heatmap VALUES ('x', 0, 0, 0, 0, 1, '2025-12-28', '10')".to_owned(),
        "SET datafusion.execution.batch_size = 1".to_owned(),
        "DROP TABLE curated_heatmap".to_owned(),
    ] {
        let error = engine.raw_sql(&statement).await.expect_err(&statement);
        assert!(
            matches!(error, EngineError::InvalidSql(_)),
            "{statement}: {error}"
        );
    }
    assert!(!copied.exists());
    // The table is still there and unchanged.
    let result = engine
        .raw_sql("SELECT SUM(clicks) FROM curated_heatmap")
        .await
        .unwrap();
    assert_eq!(result.rows, vec![vec![Some("9".to_owned())]]);
}

#[tokio::test]
async fn raw_sql_limits_rows_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("curated");
    let engine = local_engine(
        &root,
        LocalSettings {
            max_raw_rows: 10,
            query_timeout: Duration::from_secs(1),
            ..LocalSettings::default()
        },
    );
    let error = engine.raw_sql("SELECT * FROM range(11)").await.unwrap_err();
    assert!(
        matches!(error, EngineError::TooManyRows { limit: 10 }),
        "{error}"
    );
    assert_eq!(
        engine
            .raw_sql("SELECT * FROM range(10)")
            .await
            .unwrap()
            .rows
            .len(),
        10
    );
    // Hundreds of billions of rows: far more than a second's work, so it is stopped.
    let error = engine
        .raw_sql("SELECT SUM(value % 7) FROM range(500000000000)")
        .await
        .unwrap_err();
    assert!(
        matches!(error, EngineError::Timeout { seconds: 1, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn the_default_range_is_the_last_hour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("curated");
    let now = clickheatmap_viewer::params::now_ms();
    // Ten minutes ago counts; two hours ago does not (the demo query's last hour).
    let lines = vec![
        click("recent", now - 10 * MINUTE, 500.0, 250.0),
        click("recent", now - 2 * HOUR, 0.0, 0.0),
    ];
    write_curated(&root, &lines, now).await;
    let server = serve_viewer(local_viewer(&root)).await;
    let (status, body) = get_json(&server.url("/api/heatmap?page=recent")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cells(&body), vec![(10, 10, 1)]);
    let (_, body) = get_json(&server.url("/api/pages")).await;
    assert_eq!(
        body["pages"],
        serde_json::json!([{"page_id": "recent", "clicks": 1}])
    );
}

#[tokio::test]
async fn the_demo_query_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("curated");
    let now = clickheatmap_viewer::params::now_ms();
    let lines = vec![
        click("demo", now - 10 * MINUTE, 500.0, 250.0),
        click("demo", now - 10 * MINUTE + 1, 510.0, 255.0),
        click("demo", now - 3 * HOUR, 0.0, 0.0),
    ];
    write_curated(&root, &lines, now).await;
    let mut viewer = local_viewer(&root);
    viewer.allow_raw_sql = true;
    let server = serve_viewer(viewer).await;
    // The original post's Athena query, Trino functions and all.
    let demo = r#"SELECT grid_x, grid_y, SUM(clicks) AS clicks
FROM "heatmap_demo"."curated_heatmap"
WHERE from_unixtime(window_end / 1000) >= date_add('hour', -1, current_timestamp)
GROUP BY 1, 2
ORDER BY clicks DESC;"#;
    let (status, body) = post_sql(&server, demo).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], serde_json::json!([["10", "10", "2"]]));
    // Its half-hour variant, and a longer look back that takes in the old click.
    let (_, body) = post_sql(&server, &demo.replace("'hour', -1", "'minute', -30")).await;
    assert_eq!(body["rows"], serde_json::json!([["10", "10", "2"]]));
    let (_, body) = post_sql(&server, &demo.replace("'hour', -1", "'day', -1")).await;
    assert_eq!(
        body["rows"],
        serde_json::json!([["10", "10", "2"], ["0", "0", "1"]])
    );
    let (status, body) = post_sql(&server, &demo.replace("'hour'", "'fortnight'")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown unit"),
        "{body}"
    );
}

#[tokio::test]
async fn the_ui_is_served_with_secure_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_viewer(local_viewer(&dir.path().join("curated"))).await;

    let response = common::get(server.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = response.text().await.unwrap();
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));
    // No inline scripts, styles or event handlers: the CSP would block them anyway.
    let lower = html.to_ascii_lowercase();
    assert_eq!(lower.matches("<script").count(), 1);
    assert!(!lower.contains("<style"));
    assert!(!lower.contains(" style="));
    assert!(!lower.contains("javascript:"));
    for handler in [
        " onclick",
        " onload",
        " onchange",
        " oninput",
        " onerror",
        " onsubmit",
    ] {
        assert!(!lower.contains(handler), "inline handler {handler}");
    }

    for (path, content_type) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let response = common::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }

    let response = common::get(server.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");

    let (status, config) = get_json(&server.url("/api/config")).await;
    assert_eq!(status, 200);
    assert_eq!(config["engine"], "local");
    assert_eq!(config["columns"], 20);
    assert_eq!(config["live"], false);
    assert_eq!(config["raw_sql"], false);
    assert_eq!(config["table"], "\"heatmap_demo\".\"curated_heatmap\"");
}

#[tokio::test]
async fn a_damaged_file_is_the_engine_s_error_not_the_user_s() {
    let (dir, _) = setup().await;
    let root = dir.path().join("curated");
    let partition = root.join("curated_heatmap/dt=2025-12-28/hour=10");
    std::fs::write(partition.join("damaged.parquet"), b"not parquet at all").unwrap();
    let server = serve_viewer(local_viewer(&root)).await;
    let (status, body) =
        get_json(&server.url(&format!("/api/heatmap?page=home&{}", range(T0, T0 + HOUR)))).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("the local engine"),
        "{body}"
    );
    // Partitions outside the range are not opened, so other hours still answer.
    let (status, body) = get_json(&server.url(&format!(
        "/api/heatmap?page=home&{}",
        range(T0 + 2 * HOUR, T0 + 3 * HOUR)
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1);
}
