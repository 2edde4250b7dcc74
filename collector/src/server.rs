//! The HTTP side: routes, CORS, rate limiting, and the lifecycle (serve, then drain).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/clicks` | one event, a JSON array, or NDJSON; `application/json`, `text/plain` (sendBeacon) or `application/x-ndjson` |
//! | `OPTIONS /v1/clicks` | CORS preflight |
//! | `GET /v1/snippet.js` | the browser snippet |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | the sink is reachable, the queue is not nearly full, and no shutdown is under way |

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{AllowedOrigins, CollectorConfig, ConfigError};
use crate::ingest::{Batch, split_events};
use crate::metrics::Metrics;
use crate::queue::{DrainReport, EventQueue, QueueError, run_shipper};
use crate::ratelimit::RateLimiter;
use crate::sink::RecordSink;

/// The content types a click body may have.
const ACCEPTED_TYPES: [&str; 3] = ["application/json", "text/plain", "application/x-ndjson"];

/// A collector: configuration, queue, counters and sink, ready to serve.
pub struct Collector {
    shared: Arc<Shared>,
    sink: Arc<dyn RecordSink>,
}

struct Shared {
    config: CollectorConfig,
    queue: Arc<EventQueue>,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
}

/// A failure of the server itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("the shipper task failed: {0}")]
    Shipper(String),
}

impl Collector {
    /// Checks `config` against the sink's limits and sets everything up; nothing runs yet.
    pub fn new(config: CollectorConfig, sink: Arc<dyn RecordSink>) -> Result<Self, ConfigError> {
        config.validate(&sink.limits())?;
        let metrics = Arc::new(Metrics::new());
        let queue = Arc::new(EventQueue::new(
            config.queue.clone(),
            sink.limits(),
            Arc::clone(&metrics),
        ));
        let limiter = RateLimiter::new(config.rate_limit);
        Ok(Collector {
            shared: Arc::new(Shared {
                config,
                queue,
                metrics,
                limiter,
            }),
            sink,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    pub fn queue(&self) -> Arc<EventQueue> {
        Arc::clone(&self.shared.queue)
    }

    /// The routes, for embedding in another server. Serve them with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that clients are told apart,
    /// and run [`run_shipper`] beside them — or use [`Collector::serve`], which does both.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.shared))
    }

    /// Serves on `listener` until `shutdown` resolves, then stops taking requests (open ones get
    /// `http_grace` to finish), sends everything queued (within `drain_timeout`), and reports
    /// what could not be delivered.
    pub async fn serve<F>(
        self,
        listener: TcpListener,
        shutdown: F,
    ) -> Result<DrainReport, CollectorError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Collector { shared, sink } = self;
        let address = listener.local_addr().map_err(CollectorError::Serve)?;
        tracing::info!(%address, sink = sink.name(), "collector listening");
        if shared.config.allowed_origins.is_empty() {
            tracing::warn!(
                "no allowed origins: browsers on other sites will get 403 (set --allowed-origin)"
            );
        }
        let probe = {
            let (sink, queue) = (Arc::clone(&sink), Arc::clone(&shared.queue));
            tokio::spawn(async move {
                match sink.probe().await {
                    Ok(()) => tracing::info!(sink = sink.name(), "sink reachable"),
                    Err(error) => {
                        queue.set_sink_healthy(false);
                        tracing::warn!(sink = sink.name(), %error, "sink not reachable yet; clicks are queued meanwhile");
                    }
                }
            })
        };
        let shipper = tokio::spawn(run_shipper(Arc::clone(&shared.queue), Arc::clone(&sink)));

        let (stop, stopping) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            stop.send_replace(true);
        });
        let app = router(Arc::clone(&shared)).into_make_service_with_connect_info::<SocketAddr>();
        let mut graceful = stopping.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // An error means the signal's sender is gone: stop too.
                let _ = graceful.wait_for(|stop| *stop).await;
            })
            .into_future();
        let grace = shared.config.http_grace;
        let mut deadline = stopping;
        let served = tokio::select! {
            served = server => served,
            () = async move {
                let _ = deadline.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "connections still open after the grace period; closing them");
                Ok(())
            }
        };
        probe.abort();

        let drain_timeout = shared.config.drain_timeout;
        let queued = shared.queue.stats().events;
        tracing::info!(
            queued_events = queued,
            ?drain_timeout,
            "HTTP stopped; draining the queue"
        );
        shared.queue.start_drain(Instant::now() + drain_timeout);
        let report = shipper
            .await
            .map_err(|err| CollectorError::Shipper(err.to_string()))?;
        if report.undelivered_events > 0 {
            tracing::error!(
                events = report.undelivered_events,
                records = report.undelivered_records,
                "shutdown deadline passed with accepted events not confirmed by the sink; they are lost"
            );
        } else {
            tracing::info!("queue drained; every accepted event was delivered");
        }
        served.map_err(CollectorError::Serve)?;
        Ok(report)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/clicks", post(ingest).options(preflight))
        .route("/v1/snippet.js", get(snippet))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            count_responses,
        ))
        .with_state(shared)
}

async fn count_responses(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    shared.metrics.response(response.status().as_u16());
    response
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }))
}

fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

async fn ingest(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let allowed = match cors_origin(&shared.config.allowed_origins, &parts.headers) {
        Ok(allowed) => allowed,
        Err(()) => {
            return error(
                StatusCode::FORBIDDEN,
                "this origin may not send clicks here (it is not in the collector's allowed origins)",
            );
        }
    };
    let mut response = accept_clicks(&shared, &parts, body).await;
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    response
}

async fn accept_clicks(shared: &Shared, parts: &Parts, body: Body) -> Response {
    let config = &shared.config;
    // One clock reading per request (on some VMs each is a system call).
    let now = Instant::now();
    let client = client_ip(parts, config.forwarded_for_hops);
    if let Err(wait) = shared.limiter.check(client, now) {
        return rate_limited(wait);
    }
    if !content_type_accepted(&parts.headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send clicks as application/json, text/plain or application/x-ndjson",
        );
    }
    let limit = config.body_limit_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return too_large(limit);
    }
    let capacity = declared.map_or(0, |length| length as usize);
    let read = read_body(body, limit, capacity);
    tokio::pin!(read);
    // A small body is usually there with its headers: take it without arming a timer (a clock
    // reading and a timer-wheel entry per request); only a body still on its way gets the
    // timeout.
    let already_read = tokio::select! {
        biased;
        result = &mut read => Some(result),
        () = std::future::ready(()) => None,
    };
    let read = match already_read {
        Some(result) => Ok(result),
        None => tokio::time::timeout(config.body_read_timeout, read).await,
    };
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return too_large(limit),
        Ok(Err(BodyError::Read(why))) => {
            tracing::debug!(%why, "reading a click body failed");
            return error(StatusCode::BAD_REQUEST, "the body could not be read");
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            );
        }
    };
    shared.metrics.request_bytes(body.len());
    let batch = split_events(&body, &config.limits);
    if let Err(wait) = shared.limiter.charge(client, batch.total(), now) {
        return rate_limited(wait);
    }
    if let Err(problem) = shared.queue.push(&batch, now) {
        shared.limiter.refund(client, batch.total());
        let (message, wait) = match problem {
            QueueError::Full { retry_after } => (
                "the collector's outgoing queue is full; nothing was accepted, retry later",
                retry_after,
            ),
            QueueError::ShuttingDown => (
                "the collector is shutting down; nothing was accepted, retry later",
                Duration::from_secs(5),
            ),
        };
        return with_retry_after(error(StatusCode::SERVICE_UNAVAILABLE, message), wait);
    }
    shared.metrics.accepted(batch.accepted());
    for (reason, count) in batch.rejections() {
        shared.metrics.rejected(reason, count);
    }
    if batch.accepted() > 0 {
        return summary_response(StatusCode::ACCEPTED, &batch, None);
    }
    let message = if batch.rejected() == 0 {
        "the body holds no click events"
    } else {
        "no event was accepted: every event was rejected (see reasons)"
    };
    summary_response(StatusCode::BAD_REQUEST, &batch, Some(message))
}

/// `{"accepted":N,"rejected":M,"reasons":{...}}` (and `"error"`), written directly: this answer
/// goes out for every request, and building a JSON tree for it cost more than parsing a click.
fn summary_response(status: StatusCode, batch: &Batch, error: Option<&'static str>) -> Response {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(64);
    // Labels and messages are fixed ASCII text without quotes or backslashes.
    let _ = write!(
        body,
        "{{\"accepted\":{},\"rejected\":{},\"reasons\":{{",
        batch.accepted(),
        batch.rejected()
    );
    for (n, (reason, count)) in batch.rejections().enumerate() {
        let comma = if n == 0 { "" } else { "," };
        let _ = write!(body, "{comma}\"{}\":{count}", reason.label());
    }
    body.push('}');
    if let Some(message) = error {
        let _ = write!(body, ",\"error\":\"{message}\"");
    }
    body.push('}');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn rate_limited(wait: Duration) -> Response {
    with_retry_after(
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many events from this client; retry later",
        ),
        wait,
    )
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than {limit} bytes; send fewer events per request"),
    )
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_body(body: Body, limit: usize, capacity: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut next = async || match stream.next().await {
        Some(Ok(chunk)) if chunk.len() > limit => Err(BodyError::TooLarge),
        Some(Ok(chunk)) => Ok(Some(chunk)),
        Some(Err(err)) => Err(BodyError::Read(err.to_string())),
        None => Ok(None),
    };
    let Some(first) = next().await? else {
        return Ok(Bytes::new());
    };
    // A body that arrives in one piece (most do) is used as it is, without a copy.
    let Some(second) = next().await? else {
        return Ok(first);
    };
    let mut out = Vec::with_capacity(capacity.max(first.len() + second.len()).min(limit));
    out.extend_from_slice(&first);
    let mut chunk = Some(second);
    while let Some(piece) = chunk {
        if out.len() + piece.len() > limit {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&piece);
        chunk = next().await?;
    }
    Ok(Bytes::from(out))
}

fn content_type_accepted(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    ACCEPTED_TYPES
        .iter()
        .any(|accepted| essence.eq_ignore_ascii_case(accepted))
}

/// The client's address: the peer's, or the one `hops` proxies back in `X-Forwarded-For`.
fn client_ip(parts: &Parts, hops: usize) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if hops == 0 {
        return peer;
    }
    let forwarded: Vec<&str> = parts
        .headers
        .get_all(HeaderName::from_static("x-forwarded-for"))
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    // Each proxy appends the address it received the request from: the entry `hops` from the
    // end was written by our outermost trusted proxy. Anything further left is the client's
    // word and is not trusted.
    let Some(entry) = forwarded.get(forwarded.len().saturating_sub(hops)) else {
        return peer;
    };
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|address| address.ip()))
        .unwrap_or(peer)
}

/// The value for `Access-Control-Allow-Origin`: `Ok(None)` for requests that are not
/// cross-origin browser requests, `Err` for a browser origin that is not allowed.
fn cors_origin(allowed: &AllowedOrigins, headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let text = origin.to_str().map_err(|_| ())?;
    if same_origin(text, headers) || (allowed.allows(text) && !allowed.allows_any()) {
        return Ok(Some(origin.clone()));
    }
    if allowed.allows_any() {
        return Ok(Some(HeaderValue::from_static("*")));
    }
    Err(())
}

/// A page served by the collector itself posts with its own origin.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
}

async fn preflight(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let allowed = match cors_origin(&shared.config.allowed_origins, &headers) {
        Ok(allowed) => allowed,
        Err(()) => {
            return error(
                StatusCode::FORBIDDEN,
                "this origin may not send clicks here (it is not in the collector's allowed origins)",
            );
        }
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    out.insert(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    if let Some(origin) = allowed {
        // Credentials are never allowed: no Access-Control-Allow-Credentials, ever.
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

async fn snippet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                "cross-origin",
            ),
        ],
        crate::SNIPPET_JS,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics.render(&shared.queue.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.queue.stats();
    let problem = if stats.draining {
        Some("shutting down")
    } else if !stats.sink_healthy {
        Some("the sink is not taking records")
    } else if stats.nearly_full() {
        Some("the outgoing queue is nearly full")
    } else {
        None
    };
    match problem {
        None => "ready\n".into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; clicks go to POST /v1/clicks",
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, forwarded: &[&str]) -> Parts {
        let mut builder = axum::http::Request::builder();
        for value in forwarded {
            builder = builder.header("x-forwarded-for", *value);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        parts
    }

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn summaries_are_json_with_every_reason() {
        let limits = clickheatmap_model::event::Limits::default();
        let event = r#"{"event_type":"click","event_time_ms":1766919066968,"page_id":"p","x":1,"y":2,"viewport_width":10,"viewport_height":10}"#;
        let batch = split_events(format!("[{event},1,{event},{{}}]").as_bytes(), &limits);
        let response = summary_response(StatusCode::ACCEPTED, &batch, None);
        assert_eq!(
            body_json(response).await,
            json!({"accepted": 2, "rejected": 2, "reasons": {"not_an_object": 1, "missing_field": 1}})
        );
        let empty = split_events(b"[]", &limits);
        let response = summary_response(StatusCode::BAD_REQUEST, &empty, Some("none"));
        assert_eq!(
            body_json(response).await,
            json!({"accepted": 0, "rejected": 0, "reasons": {}, "error": "none"})
        );
    }

    fn chunked(pieces: &[&'static str]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> = pieces
            .iter()
            .map(|piece| Ok(Bytes::from_static(piece.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn bodies_are_read_whole_within_the_limit() {
        let read = |pieces, limit| read_body(chunked(pieces), limit, 0);
        assert_eq!(read(&[], 10).await.ok(), Some(Bytes::new()));
        assert_eq!(read(&["0123"], 10).await.ok(), Some(Bytes::from("0123")));
        assert_eq!(
            read(&["01", "23", "456"], 10).await.ok(),
            Some(Bytes::from("0123456"))
        );
        assert_eq!(
            read(&["0123456789"], 10).await.ok().map(|b| b.len()),
            Some(10)
        );
        for pieces in [
            &["0123456789a"][..],
            &["01234", "56789a"],
            &["0", "1", "234567890"],
        ] {
            assert!(matches!(read(pieces, 10).await, Err(BodyError::TooLarge)));
        }
    }

    #[test]
    fn forwarded_for_is_trusted_only_as_far_as_configured() {
        let request = parts("10.0.0.1:5000", &["203.0.113.9, 198.51.100.1", "192.0.2.3"]);
        assert_eq!(client_ip(&request, 0).to_string(), "10.0.0.1");
        assert_eq!(client_ip(&request, 1).to_string(), "192.0.2.3");
        assert_eq!(client_ip(&request, 2).to_string(), "198.51.100.1");
        assert_eq!(client_ip(&request, 9).to_string(), "203.0.113.9");
        let junk = parts("10.0.0.1:5000", &["not an address"]);
        assert_eq!(client_ip(&junk, 1).to_string(), "10.0.0.1");
        let none = parts("[2001:db8::1]:5000", &[]);
        assert_eq!(client_ip(&none, 1).to_string(), "2001:db8::1");
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert!(!content_type_accepted(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("text/plain;charset=UTF-8", true),
            ("Application/X-NDJSON", true),
            ("application/xml", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(content_type_accepted(&headers), ok, "{value}");
        }
    }
}
