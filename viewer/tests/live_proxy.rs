//! Live mode's server side: `/api/live` proxies a (fake) aggregator `GET /v1/live?page=`, checks
//! what comes back, and the PNG can include the open windows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct LiveQuery {
    page: String,
}

#[derive(Default)]
struct FakeAggregator {
    requests: AtomicUsize,
    pages: std::sync::Mutex<Vec<String>>,
}

async fn fake_live(
    State(fake): State<Arc<FakeAggregator>>,
    Query(query): Query<LiveQuery>,
) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    fake.pages.lock().unwrap().push(query.page.clone());
    let body = match query.page.as_str() {
        "home" => {
            r#"{"columns":20,"rows":20,"cells":[[3,4,12],[19,19,1]],"watermark_ms":1766919060000}"#
        }
        "other-grid" => r#"{"columns":10,"rows":10,"cells":[[3,4,5]],"watermark_ms":1}"#,
        "outside" => r#"{"columns":20,"rows":20,"cells":[[20,0,1]],"watermark_ms":1}"#,
        "negative" => r#"{"columns":20,"rows":20,"cells":[[0,0,-3]],"watermark_ms":1}"#,
        "garbage" => "<html>not json</html>",
        "missing" => return (StatusCode::NOT_FOUND, "no such page").into_response(),
        "slow" => {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            "{}"
        }
        _ => r#"{"columns":20,"rows":20,"cells":[],"watermark_ms":null}"#,
    };
    ([("content-type", "application/json")], body).into_response()
}

async fn fake_aggregator() -> (Arc<FakeAggregator>, TestServer) {
    let fake = Arc::new(FakeAggregator::default());
    let router = axum::Router::new()
        .route("/v1/live", get(fake_live))
        .with_state(fake.clone());
    (fake, serve_router(router).await)
}

#[tokio::test]
async fn live_counts_are_proxied_and_checked() {
    let (fake, aggregator) = fake_aggregator().await;
    let dir = tempfile::tempdir().unwrap();
    let viewer = with_live(
        local_viewer(&dir.path().join("curated")),
        &aggregator.url("/v1/live"),
    );
    let server = serve_viewer(viewer).await;

    let (status, config) = get_json(&server.url("/api/config")).await;
    assert_eq!(status, 200);
    assert_eq!(config["live"], true);

    let (status, body) = get_json(&server.url("/api/live?page=home")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "columns": 20, "rows": 20,
            "cells": [[3, 4, 12], [19, 19, 1]],
            "watermark_ms": 1766919060000_i64
        })
    );
    // The page id reached the aggregator encoded and intact.
    let (status, _) = get_json(&server.url("/api/live?page=%2Fshop%2Fcart%3A1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        fake.pages.lock().unwrap().as_slice(),
        ["home", "/shop/cart:1"]
    );

    // A different grid passes through (the UI says so); broken answers are 502s.
    let (status, _) = get_json(&server.url("/api/live?page=other-grid")).await;
    assert_eq!(status, 200);
    for page in ["outside", "negative", "garbage", "missing"] {
        let (status, body) = get_json(&server.url(&format!("/api/live?page={page}"))).await;
        assert_eq!(status, 502, "{page}: {body}");
        assert!(body["error"].as_str().unwrap().contains("live"), "{body}");
    }
    // Invalid page ids never reach the aggregator.
    let before = fake.requests.load(Ordering::SeqCst);
    let (status, body) = get_json(&server.url("/api/live?page=a%22b")).await;
    assert_eq!(status, 400);
    assert_eq!(body["param"], "page");
    let (status, _) = get_json(&server.url("/api/live")).await;
    assert_eq!(status, 400);
    assert_eq!(fake.requests.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn a_slow_live_endpoint_times_out_quickly() {
    let (_fake, aggregator) = fake_aggregator().await;
    let dir = tempfile::tempdir().unwrap();
    let viewer = with_live(
        local_viewer(&dir.path().join("curated")),
        &aggregator.url("/v1/live"),
    );
    let server = serve_viewer(viewer).await;
    let started = std::time::Instant::now();
    let (status, _) = get_json(&server.url("/api/live?page=slow")).await;
    assert_eq!(status, 502);
    // The viewer gives up after its 2 s; the bound leaves room for a loaded machine and is
    // still far from the minute the endpoint would take.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn an_unreachable_live_endpoint_is_a_502() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let viewer = with_live(
        local_viewer(&dir.path().join("curated")),
        &format!("http://127.0.0.1:{port}/v1/live"),
    );
    let server = serve_viewer(viewer).await;
    let (status, body) = get_json(&server.url("/api/live?page=home")).await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn the_png_can_include_the_open_windows() {
    let (_fake, aggregator) = fake_aggregator().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("curated");
    write_curated(&root, &[click("home", T0 + 1_000, 0.0, 0.0)], T0).await;
    let viewer = with_live(local_viewer(&root), &aggregator.url("/v1/live"));
    let server = serve_viewer(viewer).await;
    let range = format!("from={T0}&to={}", T0 + HOUR);

    let response = common::get(server.url(&format!(
        "/api/heatmap.png?page=home&{range}&width=200&height=200"
    )))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-heatmap-live"], "none");
    let stored_only = response.bytes().await.unwrap();

    let response = common::get(server.url(&format!(
        "/api/heatmap.png?page=home&{range}&width=200&height=200&live=1"
    )))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-heatmap-live"], "added");
    let with_live = response.bytes().await.unwrap();
    assert_ne!(stored_only, with_live);

    // The JSON heatmap stays the stored result; the UI adds live counts itself.
    let (_, body) = get_json(&server.url(&format!("/api/heatmap?page=home&{range}"))).await;
    assert_eq!(cells(&body), vec![(0, 0, 1)]);
}
