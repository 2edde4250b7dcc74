//! The aggregator of local mode: the production [`Pipeline`] fed by the tail of the stream log,
//! and the live endpoint (`GET /v1/live?page=`) that shows its still-open windows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_aggregator::time::now_ms;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, watch};

use crate::stream::LogTail;

/// How often the log is checked for new lines.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without new lines the watermark follows the wall clock.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How far behind the wall clock an idle watermark is put.
pub const IDLE_WATERMARK_LAG_MS: i64 = 2_000;

/// The pipeline, shared by the tailing task and the live endpoint.
#[derive(Clone)]
pub struct SharedPipeline {
    pipeline: Arc<Mutex<Pipeline>>,
}

impl SharedPipeline {
    pub fn new(pipeline: Pipeline) -> Self {
        SharedPipeline {
            pipeline: Arc::new(Mutex::new(pipeline)),
        }
    }

    /// The live answer for one page.
    pub async fn live(&self, page: &str) -> serde_json::Value {
        let mut pipeline = self.pipeline.lock().await;
        let aggregator = pipeline.aggregator();
        let grid = aggregator.grid();
        let cells = aggregator.live_cells(page);
        json!({
            "columns": grid.columns(),
            "rows": grid.rows(),
            "cells": cells,
            "watermark_ms": aggregator.watermark(),
        })
    }

    /// Counters of the aggregator so far (records, clicks, rejections).
    pub async fn counters(&self) -> clickheatmap_aggregator::aggregate::Counters {
        self.pipeline.lock().await.aggregator().counters()
    }
}

/// Follows the log until `stop` turns true: feeds new lines to the pipeline, writes the windows
/// the watermark closed, and moves the watermark with the wall clock when the log is quiet so
/// that windows close without new clicks. Nothing is flushed at the end: the log is the durable
/// state, and the next start replays it.
pub async fn run(shared: SharedPipeline, mut tail: LogTail, mut stop: watch::Receiver<bool>) {
    let mut last_data = Instant::now();
    let mut caught_up_once = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut got_data = false;
        loop {
            match tail.read_lines().await {
                Ok(None) => break,
                Ok(Some(lines)) => {
                    got_data = true;
                    if !lines.is_empty() {
                        let mut pipeline = shared.pipeline.lock().await;
                        pipeline.aggregator().set_clock(now_ms());
                        pipeline.feed_lines(0, &lines);
                        flush(&mut pipeline).await;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "reading the stream log failed; retrying");
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
        if !caught_up_once {
            caught_up_once = true;
            let counters = shared.counters().await;
            tracing::info!(
                records = counters.records,
                clicks = counters.clicks,
                "replayed the stream log; following it"
            );
        }
        if got_data {
            last_data = Instant::now();
        } else if last_data.elapsed() >= IDLE_AFTER {
            let mut pipeline = shared.pipeline.lock().await;
            let aggregator = pipeline.aggregator();
            aggregator.set_clock(now_ms());
            aggregator.advance_clock(0, now_ms() - IDLE_WATERMARK_LAG_MS);
            flush(&mut pipeline).await;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn flush(pipeline: &mut Pipeline) {
    if let Err(error) = pipeline.flush_ready().await {
        // The windows are in the log: a restart rebuilds the curated data from it.
        tracing::error!(%error, "writing curated data failed; restart to rebuild it from the stream log");
    }
}

#[derive(Debug, Default, Deserialize)]
struct LiveParams {
    page: Option<String>,
}

/// `GET /v1/live?page=<id>`: `{"columns","rows","cells":[[x,y,clicks]],"watermark_ms"}`.
pub fn live_router(shared: SharedPipeline) -> Router {
    Router::new()
        .route("/v1/live", get(live))
        .with_state(shared)
}

async fn live(State(shared): State<SharedPipeline>, Query(params): Query<LiveParams>) -> Response {
    match params.page.as_deref() {
        Some(page) if !page.is_empty() => Json(shared.live(page).await).into_response(),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "give the page: /v1/live?page=<id>" })),
        )
            .into_response(),
    }
}
