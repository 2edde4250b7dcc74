//! Local mode end to end: clicks POSTed to the collector reach the stream log, the aggregator,
//! the curated Parquet and the viewer (stored and live), and survive a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clickheatmap_aggregator::time::now_ms;
use clickheatmap_collector::client::HttpClient;
use clickheatmap_local::{Options, Running, start};
use clickheatmap_testkit::eventually;
use serde_json::Value;

/// Generous: nothing here asserts timing.
const PATIENCE: Duration = Duration::from_secs(90);

fn options(dir: &Path, window: &str, lateness: &str) -> Options {
    let mut options = Options::in_dir(dir);
    options.port_collector = 0;
    options.port_viewer = 0;
    options.window = window.parse().unwrap();
    options.lateness = lateness.parse().unwrap();
    options
}

fn click(page: &str, x: f64, y: f64) -> String {
    format!(
        r#"{{"event_type":"click","event_time_ms":{},"page_id":"{page}","x":{x},"y":{y},"viewport_width":1000,"viewport_height":1000}}"#,
        now_ms()
    )
}

async fn get_json(server: SocketAddr, path: &str) -> Value {
    let mut client = HttpClient::connect(server).await.unwrap();
    let response = client.get(path).await.unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

async fn post_clicks(running: &Running, body: &str) {
    let mut client = HttpClient::connect(running.collector_addr).await.unwrap();
    let response = client
        .post("/v1/clicks", "application/x-ndjson", body.as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
}

fn sum(cells: &Value) -> i64 {
    cells
        .as_array()
        .map(|cells| cells.iter().map(|cell| cell[2].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

async fn heatmap(running: &Running, page: &str) -> Value {
    get_json(running.viewer_addr, &format!("/api/heatmap?page={page}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_reach_the_curated_table_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&options(dir.path(), "2s", "1s")).await.unwrap();
    // Cells (1, 2) three times, (19, 19) twice, on a 20x20 grid.
    let body = [
        click("restart-page", 60.0, 110.0),
        click("restart-page", 60.0, 120.0),
        click("restart-page", 99.0, 149.0),
        click("restart-page", 999.0, 999.0),
        click("restart-page", 960.0, 955.0),
    ]
    .join("\n");
    post_clicks(&running, &body).await;

    let result = eventually("the clicks in /api/heatmap", PATIENCE, || async {
        let result = heatmap(&running, "restart-page").await;
        (result["total"] == 5).then_some(result)
    })
    .await;
    let mut cells: Vec<(i64, i64, i64)> = result["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_i64().unwrap(),
                c[1].as_i64().unwrap(),
                c[2].as_i64().unwrap(),
            )
        })
        .collect();
    cells.sort_unstable();
    assert_eq!(cells, vec![(1, 2, 3), (19, 19, 2)]);
    let live = get_json(running.viewer_addr, "/api/live?page=restart-page").await;
    assert_eq!(
        sum(&live["cells"]),
        0,
        "closed windows are not live: {live}"
    );
    // One process per directory.
    assert!(start(&options(dir.path(), "2s", "1s")).await.is_err());
    let log_path = running.log_path.clone();
    running.stop().await.unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(log.ends_with('\n'));

    // The curated folder is rebuilt from the log: the clicks are back, counted once.
    let running = start(&options(dir.path(), "2s", "1s")).await.unwrap();
    eventually("the replayed clicks in /api/heatmap", PATIENCE, || async {
        (heatmap(&running, "restart-page").await["total"] == 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(heatmap(&running, "restart-page").await["total"], 5);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_windows_show_live_and_the_demo_page_is_served() {
    let dir = tempfile::tempdir().unwrap();
    // A day-long window stays open for the whole test.
    let running = start(&options(dir.path(), "1d", "5s")).await.unwrap();

    let mut client = HttpClient::connect(running.collector_addr).await.unwrap();
    let page = client.get("/").await.unwrap();
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains(r#"<script src="/v1/snippet.js""#), "{html}");
    assert!(html.contains(r#"data-page-id="demo-page""#));
    assert!(html.contains(&running.viewer_url()));
    assert_eq!(client.get("/v1/snippet.js").await.unwrap().status, 200);
    // A browser on the demo page posts with its origin.
    let origin = running.collector_url();
    let response = client
        .request(
            "POST",
            "/v1/clicks",
            &[("content-type", "text/plain"), ("origin", &origin)],
            format!("[{}]", click("demo-page", 10.0, 10.0)).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());

    post_clicks(
        &running,
        &[click("live-page", 1.0, 1.0), click("live-page", 2.0, 2.0)].join("\n"),
    )
    .await;
    let live = eventually("the clicks in /api/live", PATIENCE, || async {
        let live = get_json(running.viewer_addr, "/api/live?page=live-page").await;
        (sum(&live["cells"]) == 2).then_some(live)
    })
    .await;
    assert_eq!(
        (live["columns"].clone(), live["rows"].clone()),
        (20.into(), 20.into())
    );
    assert_eq!(live["cells"], serde_json::json!([[0, 0, 2]]));
    let demo = get_json(running.viewer_addr, "/v1/live?page=demo-page").await;
    assert_eq!(sum(&demo["cells"]), 1, "{demo}");
    assert!(demo["watermark_ms"].as_i64().is_some());
    // Not in the curated table yet: the window is open.
    assert_eq!(heatmap(&running, "live-page").await["total"], 0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_clicks_flow_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path(), "1d", "5s");
    options.synthetic = Some(50.0);
    let running = start(&options).await.unwrap();
    let pages = eventually("synthetic clicks in the log", PATIENCE, || async {
        let log = std::fs::read_to_string(&running.log_path).unwrap_or_default();
        let line = log.lines().next()?.to_owned();
        Some(serde_json::from_str::<Value>(&line).unwrap())
    })
    .await;
    let page = pages["page_id"].as_str().unwrap().to_owned();
    eventually("synthetic clicks live", PATIENCE, || async {
        let live = get_json(running.viewer_addr, &format!("/api/live?page={page}")).await;
        (sum(&live["cells"]) > 0).then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn bad_options_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad_rate = options(dir.path(), "1m", "5s");
    bad_rate.synthetic = Some(-1.0);
    assert!(start(&bad_rate).await.is_err());
    assert!(start(&options(dir.path(), "7s", "5s")).await.is_err());
    let mut bad_origin = options(dir.path(), "1m", "5s");
    bad_origin.allowed_origins = vec!["localhost:3000".to_owned()];
    assert!(start(&bad_origin).await.is_err());
    assert!(!dir.path().join("stream").exists());
}
