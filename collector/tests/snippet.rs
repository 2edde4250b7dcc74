//! The browser snippet, run in Node with a fake browser (tests/js/snippet_harness.js): what it
//! sends with sendBeacon is accepted by the collector as it is. Skipped, saying so, when there
//! is no `node` on the PATH.

mod common;

use std::process::Command;
use std::sync::Arc;

use clickheatmap_collector::{ChannelSink, CollectorConfig};
use common::Running;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_snippet_sends_is_accepted() {
    if Command::new("node").arg("--version").output().is_err() {
        assert!(
            !clickheatmap_testkit::in_ci(),
            "no `node` on the PATH to run the snippet (.ci/run installs it)"
        );
        eprintln!("SKIPPED: no `node` on the PATH to run the snippet");
        return;
    }
    let (sink, mut records) = ChannelSink::new(16);
    let config = CollectorConfig {
        rate_limit: None,
        ..CollectorConfig::default()
    };
    let server = Running::start(config, Arc::new(sink)).await;
    let mut client = server.client().await;
    let snippet = client.get("/v1/snippet.js").await.unwrap();
    assert_eq!(snippet.status, 200);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("collector-snippet.js");
    std::fs::write(&path, &snippet.body).unwrap();
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/snippet_harness.js");

    let output = Command::new("node")
        .arg(harness)
        .arg(&path)
        .arg("checkout")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let beacons: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(beacons.len(), 1, "{stdout}");
    let beacon = &beacons[0];
    assert!(beacon["url"].as_str().unwrap().ends_with("/v1/clicks"));
    let content_type = beacon["type"].as_str().unwrap();
    assert!(
        content_type.starts_with("text/plain"),
        "no preflight: {content_type}"
    );
    let body = beacon["body"].as_str().unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["page_id"], "checkout");
    assert_eq!(
        (events[0]["x"].as_f64(), events[0]["y"].as_f64()),
        (Some(100.0), Some(50.0))
    );
    assert_eq!(events[1]["viewport_width"], 1280);
    assert!(events[0]["event_time_ms"].is_i64());
    assert!(events[0]["event_time"].as_str().unwrap().ends_with('Z'));

    let response = client
        .post("/v1/clicks", content_type, body.as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["accepted"], 2);
    server.stop().await;
    let record = records.recv().await.unwrap();
    assert_eq!(record.iter().filter(|b| **b == b'\n').count(), 2);
}
