//! The HTTP app: the single-page UI, the JSON API, the PNG download and the live proxy.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the UI (`index.html`, `app.js`, `app.css`, embedded in the binary) |
//! | `GET /healthz` | `ok` |
//! | `GET /api/config` | engine, grid, whether live mode and raw SQL are on |
//! | `GET /api/pages?from=&to=` | pages with clicks in the range, busiest first |
//! | `GET /api/heatmap?page=&from=&to=` | `SUM(clicks)` per cell, and the query that ran |
//! | `GET /api/heatmap.png?page=&from=&to=&width=&height=&live=` | the same, rendered as PNG |
//! | `GET /api/live?page=` | the aggregator's open windows (with `--live-url`) |
//! | `POST /api/sql` | `{"sql": "..."}`: one query, on either engine (with `--allow-raw-sql`) |
//!
//! Every response carries a Content-Security-Policy that allows scripts and styles from this
//! origin only, `X-Content-Type-Options: nosniff` and friends; API errors are JSON
//! `{"error": "...", "param": "..."}` with a 4xx/5xx status.

use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clickheatmap_render::{GridCounts, RenderError, RenderOptions, encode_png, render_heatmap};
use serde::Deserialize;
use serde_json::json;

use crate::engine::{EngineError, HeatmapEngine, HeatmapQuery};
use crate::live::{LiveClient, LiveError, LiveSnapshot};
use crate::params::{
    DEFAULT_RANGE_MS, ImageSize, MAX_RANGE_MS, PageId, ParamError, QueryRange, now_ms, parse_flag,
};
use crate::sql::TableName;
use crate::sql::check_raw_sql;

/// Scripts and styles from this origin only, no inline code, no framing; images from anywhere
/// (the optional page screenshot may live on another host).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the viewer serves, shared by every request.
pub struct Viewer {
    pub engine: Arc<dyn HeatmapEngine>,
    pub live: Option<LiveClient>,
    pub columns: u16,
    pub rows: u16,
    pub allow_raw_sql: bool,
    pub table: TableName,
}

type AppState = Arc<Viewer>;

/// The router with its state; separate from the listener so tests can serve it anywhere.
pub fn router(viewer: Viewer) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/config", get(config))
        .route("/api/pages", get(pages))
        .route("/api/heatmap", get(heatmap))
        .route("/api/heatmap.png", get(heatmap_png))
        .route("/api/live", get(live))
        .route("/api/sql", post(raw_sql))
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(Arc::new(viewer))
}

/// Serves `viewer` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    viewer: Viewer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(viewer))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::NotFound(uri.path().chars().take(200).collect()).into_response()
}

/// Why a request failed; rendered as JSON with a fitting status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the SQL statement failed: {0}")]
    SqlFailed(String),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("live mode is off; start the viewer with --live-url")]
    LiveOff,
    #[error("raw SQL is off; start the viewer with --allow-raw-sql")]
    RawSqlOff,
    #[error("rendering the PNG: {0}")]
    Render(#[from] RenderError),
    #[error("rendering the PNG: {0}")]
    Task(String),
    #[error("no such path: {0}")]
    NotFound(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Param(_) | ApiError::BadRequest(_) | ApiError::SqlFailed(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Engine(error) => match error {
                EngineError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                EngineError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                EngineError::TooManyRows { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                EngineError::Local(_) => StatusCode::INTERNAL_SERVER_ERROR,
                EngineError::InvalidSql(_) => StatusCode::BAD_REQUEST,
                EngineError::Failed { .. }
                | EngineError::Cancelled { .. }
                | EngineError::Athena(_)
                | EngineError::BadResult(_) => StatusCode::BAD_GATEWAY,
            },
            ApiError::Live(_) => StatusCode::BAD_GATEWAY,
            ApiError::LiveOff | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RawSqlOff => StatusCode::FORBIDDEN,
            ApiError::Render(_) | ApiError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %message, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %message, "request refused");
        }
        let body = match &self {
            ApiError::Param(error) => json!({ "error": message, "param": error.param() }),
            _ => json!({ "error": message }),
        };
        (status, Json(body)).into_response()
    }
}

fn query_params<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params
        .map(|Query(params)| params)
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
}

#[derive(Debug, Default, Deserialize)]
struct RangeParams {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HeatmapParams {
    page: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PngParams {
    page: Option<String>,
    from: Option<String>,
    to: Option<String>,
    width: Option<String>,
    height: Option<String>,
    live: Option<String>,
    grid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct LiveParams {
    page: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SqlBody {
    sql: String,
}

async fn config(State(viewer): State<AppState>) -> Response {
    Json(json!({
        "engine": viewer.engine.name(),
        "columns": viewer.columns,
        "rows": viewer.rows,
        "live": viewer.live.is_some(),
        "raw_sql": viewer.allow_raw_sql && viewer.engine.supports_raw_sql(),
        "table": viewer.table.quoted(),
        "max_range_ms": MAX_RANGE_MS,
        "default_range_ms": DEFAULT_RANGE_MS,
    }))
    .into_response()
}

async fn pages(
    State(viewer): State<AppState>,
    params: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_params(params)?;
    let range = QueryRange::parse(params.from.as_deref(), params.to.as_deref(), now_ms())?;
    let result = viewer.engine.pages(range).await?;
    Ok(Json(json!({
        "from": range.from_ms,
        "to": range.to_ms,
        "pages": result.pages,
        "query": result.query,
    }))
    .into_response())
}

/// A heatmap query's result laid onto the viewer's grid.
struct GridResult {
    cells: Vec<(i32, i32, i64)>,
    total: i64,
    outside_grid_clicks: i64,
    query: crate::engine::QueryInfo,
}

async fn run_heatmap(viewer: &Viewer, query: &HeatmapQuery) -> Result<GridResult, ApiError> {
    let result = viewer.engine.heatmap(query).await?;
    let (columns, rows) = (i32::from(viewer.columns), i32::from(viewer.rows));
    let (inside, outside): (Vec<_>, Vec<_>) = result
        .cells
        .into_iter()
        .partition(|&(x, y, _)| (0..columns).contains(&x) && (0..rows).contains(&y));
    let sum = |cells: &[(i32, i32, i64)]| {
        cells
            .iter()
            .fold(0_i64, |total, &(_, _, clicks)| total.saturating_add(clicks))
    };
    Ok(GridResult {
        total: sum(&inside),
        outside_grid_clicks: sum(&outside),
        cells: inside,
        query: result.query,
    })
}

fn heatmap_query(
    page: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<HeatmapQuery, ApiError> {
    let page = PageId::parse(page)?;
    let range = QueryRange::parse(from, to, now_ms())?;
    Ok(HeatmapQuery { page, range })
}

async fn heatmap(
    State(viewer): State<AppState>,
    params: Result<Query<HeatmapParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_params(params)?;
    let query = heatmap_query(
        params.page.as_deref(),
        params.from.as_deref(),
        params.to.as_deref(),
    )?;
    let result = run_heatmap(&viewer, &query).await?;
    Ok(Json(json!({
        "page": query.page.as_str(),
        "from": query.range.from_ms,
        "to": query.range.to_ms,
        "columns": viewer.columns,
        "rows": viewer.rows,
        "cells": result.cells,
        "total": result.total,
        "outside_grid_clicks": result.outside_grid_clicks,
        "query": result.query,
    }))
    .into_response())
}

/// Adds a live snapshot's counts to `counts` (row-major on the viewer's grid) when the grids
/// match; returns whether they did.
fn add_live(counts: &mut [u64], columns: u16, rows: u16, snapshot: &LiveSnapshot) -> bool {
    if snapshot.columns != columns || snapshot.rows != rows {
        return false;
    }
    for &(x, y, clicks) in &snapshot.cells {
        let (Ok(x), Ok(y)) = (usize::try_from(x), usize::try_from(y)) else {
            continue;
        };
        if let Some(count) = counts.get_mut(y * usize::from(columns) + x) {
            *count = count.saturating_add(u64::try_from(clicks).unwrap_or(0));
        }
    }
    true
}

/// A page id as part of a file name.
fn file_name_part(page: &PageId) -> String {
    page.as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect()
}

async fn heatmap_png(
    State(viewer): State<AppState>,
    params: Result<Query<PngParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_params(params)?;
    let query = heatmap_query(
        params.page.as_deref(),
        params.from.as_deref(),
        params.to.as_deref(),
    )?;
    let size = ImageSize::parse(params.width.as_deref(), params.height.as_deref())?;
    let with_live = parse_flag("live", params.live.as_deref())?;
    let grid_lines = match params.grid.as_deref() {
        None => true,
        value => parse_flag("grid", value)?,
    };
    let live = match (&viewer.live, with_live) {
        (Some(client), true) => Some(client.fetch(&query.page).await?),
        (None, true) => return Err(ApiError::LiveOff),
        _ => None,
    };
    let result = run_heatmap(&viewer, &query).await?;

    let (columns, rows) = (viewer.columns, viewer.rows);
    let mut counts = vec![0_u64; usize::from(columns) * usize::from(rows)];
    for &(x, y, clicks) in &result.cells {
        // `run_heatmap` kept only cells on the grid, so the coordinates are non-negative.
        let index = y as usize * usize::from(columns) + x as usize;
        if let Some(count) = counts.get_mut(index) {
            *count = count.saturating_add(u64::try_from(clicks).unwrap_or(0));
        }
    }
    let live_added = live
        .as_ref()
        .is_some_and(|snapshot| add_live(&mut counts, columns, rows, snapshot));
    let options = RenderOptions {
        width: size.width,
        height: size.height,
        draw_grid_lines: grid_lines,
    };
    let png = tokio::task::spawn_blocking(move || {
        let grid = GridCounts {
            columns,
            rows,
            counts: &counts,
        };
        render_heatmap(&grid, &options).and_then(|image| encode_png(&image))
    })
    .await
    .map_err(|error| ApiError::Task(error.to_string()))??;

    let file_name = format!(
        "heatmap-{}-{}-{}.png",
        file_name_part(&query.page),
        query.range.from_ms,
        query.range.to_ms
    );
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
        .map_err(|error| ApiError::Task(error.to_string()))?;
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))],
        png,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(
        HeaderName::from_static("x-heatmap-total"),
        HeaderValue::from(result.total),
    );
    headers.insert(
        HeaderName::from_static("x-heatmap-live"),
        HeaderValue::from_static(if live_added { "added" } else { "none" }),
    );
    Ok(response)
}

async fn live(
    State(viewer): State<AppState>,
    params: Result<Query<LiveParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_params(params)?;
    let client = viewer.live.as_ref().ok_or(ApiError::LiveOff)?;
    let page = PageId::parse(params.page.as_deref())?;
    let snapshot = client.fetch(&page).await?;
    Ok(Json(snapshot).into_response())
}

async fn raw_sql(
    State(viewer): State<AppState>,
    body: Result<Json<SqlBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    if !viewer.allow_raw_sql {
        return Err(ApiError::RawSqlOff);
    }
    let Json(body) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let statement = check_raw_sql(&body.sql).map_err(ApiError::BadRequest)?;
    let result = viewer
        .engine
        .raw_sql(&statement)
        .await
        .map_err(|error| match error {
            EngineError::Failed { reason, .. } | EngineError::InvalidSql(reason) => {
                ApiError::SqlFailed(reason)
            }
            other => ApiError::Engine(other),
        })?;
    Ok(Json(result).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_counts_add_on_matching_grids() {
        let mut counts = vec![0_u64; 4];
        let snapshot = LiveSnapshot {
            columns: 2,
            rows: 2,
            cells: vec![(1, 1, 5), (0, 1, 2)],
            watermark_ms: None,
        };
        assert!(add_live(&mut counts, 2, 2, &snapshot));
        assert_eq!(counts, [0, 0, 2, 5]);
        assert!(!add_live(&mut counts, 3, 2, &snapshot));
    }

    #[test]
    fn file_names_are_plain() {
        let page = PageId::parse(Some("/shop/cart.html")).unwrap();
        assert_eq!(file_name_part(&page), "_shop_cart_html");
    }
}
