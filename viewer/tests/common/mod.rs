//! Shared test support: curated data written by the real pipeline, the viewer served on
//! 127.0.0.1, a fake live endpoint and a scriptable fake Athena.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_crds::AggregatorConfig;
use clickheatmap_viewer::engine::HeatmapEngine;
use clickheatmap_viewer::engine::athena::{
    AthenaCallError, AthenaClient, ExecutionStatus, QueryState, ResultPage, StartRequest,
};
use clickheatmap_viewer::engine::local::{LocalEngine, LocalSettings};
use clickheatmap_viewer::live::LiveClient;
use clickheatmap_viewer::server::{self, Viewer};
use clickheatmap_viewer::sql::{Identifier, TableName};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

/// 2025-12-28T10:00:00Z.
pub const T0: i64 = 1_766_916_000_000;
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;

/// One click in the demo's format on a 1000x500 viewport (20x20 grid: 50x25 px per cell).
pub fn click(page: &str, t: i64, x: f64, y: f64) -> String {
    format!(
        r#"{{"event_type":"click","event_time":"-","event_time_ms":{t},"page_id":"{page}","x":{x},"y":{y},"viewport_width":1000,"viewport_height":500,"dpr":1,"user_agent":"test"}}"#
    )
}

/// Aggregates NDJSON lines into `<root>/curated_heatmap/...` with the real pipeline.
pub async fn write_curated(root: &Path, lines: &[String], clock_ms: i64) {
    let mut config = AggregatorConfig::default();
    config.output.root = root.to_str().expect("utf-8 temp path").to_owned();
    let mut pipeline = Pipeline::open(&config).expect("pipeline opens");
    pipeline.aggregator().set_clock(clock_ms);
    let input = lines.join("\n");
    pipeline
        .consume(0, "test", input.as_bytes())
        .await
        .expect("pipeline consumes");
    pipeline.finish().await.expect("pipeline finishes");
}

pub fn table_name() -> TableName {
    TableName {
        database: Identifier::parse("database", "heatmap_demo").expect("valid"),
        table: Identifier::parse("table", "curated_heatmap").expect("valid"),
    }
}

pub fn local_viewer(root: &Path) -> Viewer {
    viewer_with(Arc::new(local_engine(root, LocalSettings::default())))
}

pub fn local_engine(root: &Path, settings: LocalSettings) -> LocalEngine {
    LocalEngine::open(root.to_str().expect("utf-8"), table_name(), settings).expect("opens")
}

pub fn viewer_with(engine: Arc<dyn HeatmapEngine>) -> Viewer {
    Viewer {
        engine,
        live: None,
        columns: 20,
        rows: 20,
        allow_raw_sql: false,
        table: table_name(),
    }
}

pub fn with_live(mut viewer: Viewer, url: &str) -> Viewer {
    viewer.live = Some(LiveClient::new(url).expect("live url"));
    viewer
}

/// A server on 127.0.0.1 with a free port, stopped when dropped.
pub struct TestServer {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

pub async fn serve_viewer(viewer: Viewer) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(listener, viewer, async move {
            let _ = stopped.await;
        })
        .await
        .expect("viewer serves");
    });
    TestServer {
        address,
        stop: Some(stop),
        task,
    }
}

pub async fn serve_router(router: axum::Router) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .expect("router serves");
    });
    TestServer {
        address,
        stop: Some(stop),
        task,
    }
}

/// GET returning status and JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = get(url).await.expect("request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

/// Cells of a heatmap response as (x, y, clicks).
pub fn cells(body: &serde_json::Value) -> Vec<(i64, i64, i64)> {
    body["cells"]
        .as_array()
        .expect("cells array")
        .iter()
        .map(|cell| {
            (
                cell[0].as_i64().expect("x"),
                cell[1].as_i64().expect("y"),
                cell[2].as_i64().expect("clicks"),
            )
        })
        .collect()
}

/// What a scripted execution does when polled.
#[derive(Clone, Debug)]
pub enum Script {
    /// These states in turn, then the last one for ever.
    States(Vec<QueryState>),
    /// RUNNING for ever.
    Never,
}

/// An [`AthenaClient`] that follows a script and records every call.
pub struct FakeAthena {
    pub script: Script,
    /// Result pages, chained by `NextToken` "page-1", "page-2", ...
    pub pages: Vec<ResultPage>,
    pub calls: Mutex<Vec<String>>,
    pub started: Mutex<Vec<StartRequest>>,
    polls: AtomicUsize,
    pub stops: Mutex<Vec<String>>,
    pub stop_notify: tokio::sync::Notify,
    pub fail_reason: Option<String>,
    pub status_delay: Duration,
}

impl FakeAthena {
    pub fn new(script: Script, pages: Vec<ResultPage>) -> FakeAthena {
        FakeAthena {
            script,
            pages,
            calls: Mutex::new(Vec::new()),
            started: Mutex::new(Vec::new()),
            polls: AtomicUsize::new(0),
            stops: Mutex::new(Vec::new()),
            stop_notify: tokio::sync::Notify::new(),
            fail_reason: None,
            status_delay: Duration::ZERO,
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }

    pub fn stops(&self) -> Vec<String> {
        self.stops.lock().expect("lock").clone()
    }

    /// Waits until a stop was recorded (or the timeout passes).
    pub async fn wait_for_stop(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.stop_notify.notified();
            if !self.stops().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.stops().is_empty();
            }
        }
    }
}

/// A result page from rows of strings.
pub fn page(columns: &[&str], rows: &[&[&str]], next_token: Option<&str>) -> ResultPage {
    ResultPage {
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        rows: rows
            .iter()
            .map(|row| row.iter().map(|v| Some((*v).to_owned())).collect())
            .collect(),
        next_token: next_token.map(str::to_owned),
    }
}

impl AthenaClient for FakeAthena {
    fn start_query<'a>(
        &'a self,
        request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<String, AthenaCallError>> {
        Box::pin(async move {
            self.calls.lock().expect("lock").push("start".into());
            self.started.lock().expect("lock").push(request.clone());
            Ok("exec-1".to_owned())
        })
    }

    fn query_status<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<ExecutionStatus, AthenaCallError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("status:{execution_id}"));
            if !self.status_delay.is_zero() {
                tokio::time::sleep(self.status_delay).await;
            }
            let poll = self.polls.fetch_add(1, Ordering::SeqCst);
            let state = match &self.script {
                Script::Never => QueryState::Running,
                Script::States(states) => states
                    .get(poll)
                    .or(states.last())
                    .copied()
                    .unwrap_or(QueryState::Succeeded),
            };
            Ok(ExecutionStatus {
                state,
                reason: (state == QueryState::Failed)
                    .then(|| self.fail_reason.clone().unwrap_or_default()),
                scanned_bytes: Some(1234),
            })
        })
    }

    fn result_page<'a>(
        &'a self,
        execution_id: &'a str,
        next_token: Option<&'a str>,
        max_results: i32,
    ) -> BoxFuture<'a, Result<ResultPage, AthenaCallError>> {
        Box::pin(async move {
            self.calls.lock().expect("lock").push(format!(
                "results:{execution_id}:{}:{max_results}",
                next_token.unwrap_or("-")
            ));
            let index = match next_token {
                None => 0,
                Some(token) => token
                    .strip_prefix("page-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| AthenaCallError {
                        operation: "GetQueryResults",
                        message: format!("bad token {token}"),
                    })?,
            };
            Ok(self.pages.get(index).cloned().unwrap_or_default())
        })
    }

    fn stop_query<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<(), AthenaCallError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("stop:{execution_id}"));
            self.stops
                .lock()
                .expect("lock")
                .push(execution_id.to_owned());
            self.stop_notify.notify_waiters();
            Ok(())
        })
    }
}

/// Counts calls per operation around another client.
pub struct Counting<C> {
    pub inner: C,
    pub counts: Mutex<VecDeque<&'static str>>,
}

impl<C> Counting<C> {
    pub fn new(inner: C) -> Self {
        Counting {
            inner,
            counts: Mutex::new(VecDeque::new()),
        }
    }

    pub fn count(&self, operation: &str) -> usize {
        self.counts
            .lock()
            .expect("lock")
            .iter()
            .filter(|o| **o == operation)
            .count()
    }

    fn record(&self, operation: &'static str) {
        self.counts.lock().expect("lock").push_back(operation);
    }
}

impl<C: AthenaClient> AthenaClient for Counting<C> {
    fn start_query<'a>(
        &'a self,
        request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<String, AthenaCallError>> {
        self.record("StartQueryExecution");
        self.inner.start_query(request)
    }

    fn query_status<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<ExecutionStatus, AthenaCallError>> {
        self.record("GetQueryExecution");
        self.inner.query_status(execution_id)
    }

    fn result_page<'a>(
        &'a self,
        execution_id: &'a str,
        next_token: Option<&'a str>,
        max_results: i32,
    ) -> BoxFuture<'a, Result<ResultPage, AthenaCallError>> {
        self.record("GetQueryResults");
        self.inner
            .result_page(execution_id, next_token, max_results)
    }

    fn stop_query<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<(), AthenaCallError>> {
        self.record("StopQueryExecution");
        self.inner.stop_query(execution_id)
    }
}

/// An HTTP client for requests to the viewer under test. reqwest is built without a crypto
/// provider of its own (the workspace has one, ring: see clickheatmap-tls), so the process
/// default is installed first, as the binaries do at start.
pub fn http_client() -> reqwest::Client {
    clickheatmap_tls::install_crypto_provider();
    reqwest::Client::new()
}

/// `reqwest::get` with [`http_client`].
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}
