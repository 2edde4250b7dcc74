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

use std::future::Future;
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

pub(crate) struct Shared {
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
    /// and run [`run_shipper`] beside them — or use [`Collector::serve_http`] (the collector's
    /// own connection handling, with extra routes) or [`Collector::serve`], which does both.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.shared))
    }

    /// Serves HTTP on `listener` as [`Collector::serve`] does — the collector's routes and
    /// `extra` (an embedding server's own routes, e.g. local mode's demo page) — until
    /// `stopping` turns true, then gives open connections `http_grace`. The queue's shipper is
    /// the caller's to run ([`run_shipper`]), and so is its drain.
    pub fn serve_http(
        &self,
        listener: TcpListener,
        extra: Router,
        stopping: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let routes = router(Arc::clone(&shared)).merge(extra);
            accept_connections(listener, &shared, routes, stopping).await;
        }
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
        accept_connections(listener, &shared, router(Arc::clone(&shared)), stopping).await;
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
        Ok(report)
    }
}

/// Accepts connections until `stopping` turns true, then gives the open ones
/// `config.http_grace` to finish their requests (idle ones close at once) before closing them.
async fn accept_connections(
    listener: TcpListener,
    shared: &Arc<Shared>,
    router: Router,
    stopping: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = stopping.clone();
    loop {
        tokio::select! {
            // An error means the signal's sender is gone: stop too.
            () = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Each answer is one write; Nagle's algorithm would only delay it.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "setting TCP_NODELAY failed");
                    }
                    connections.spawn(crate::http1::serve_connection(
                        stream,
                        peer,
                        Arc::clone(shared),
                        router.clone(),
                        stopping.clone(),
                    ));
                }
                Err(error) if is_per_connection(&error) => {
                    tracing::debug!(%error, "a connection failed before it was accepted");
                }
                Err(error) => {
                    // Out of file descriptors or memory: wait instead of spinning.
                    tracing::warn!(%error, "accepting connections failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = ended {
                    tracing::error!(%error, "a connection task failed");
                }
            }
        }
    }
    // New connections are refused from here on (a load balancer moves on to other replicas).
    drop(listener);
    let grace = shared.config.http_grace;
    let finished = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            ?grace,
            open = connections.len(),
            "connections still open after the grace period; closing them"
        );
        connections.shutdown().await;
    }
}

/// Accept errors that concern one connection only (the listener is fine).
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
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

const ORIGIN_REFUSED: &str =
    "this origin may not send clicks here (it is not in the collector's allowed origins)";

/// What the click route reads from a request's head, whichever HTTP path parsed it (hyper's
/// through axum, or [`crate::http1`]'s own).
pub(crate) struct ClickHead<'a> {
    /// The client's address (the peer's, or the one a trusted proxy forwarded).
    pub client: IpAddr,
    pub origin: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    /// `Content-Length`, when the body has one.
    pub content_length: Option<u64>,
}

impl<'a> ClickHead<'a> {
    fn from_parts(parts: &'a Parts, hops: usize) -> Self {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        let header = |name| parts.headers.get(name).map(HeaderValue::as_bytes);
        ClickHead {
            client: client_ip(
                peer,
                hops,
                parts
                    .headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .map(HeaderValue::as_bytes),
            ),
            origin: header(header::ORIGIN),
            host: header(header::HOST),
            content_type: header(header::CONTENT_TYPE),
            content_length: header(header::CONTENT_LENGTH).and_then(content_length),
        }
    }
}

/// A `Content-Length` value: decimal digits only (no sign, no spaces, no list).
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0, |length, digit| length * 10 + u64::from(digit - b'0')),
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The click route's answer, before either HTTP path writes it: a JSON body, and the headers
/// every answer of the route carries (`Vary: Origin`, CORS for allowed origins, `Retry-After`).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    pub allow_origin: Option<HeaderValue>,
}

impl Answer {
    fn error(status: StatusCode, message: &str) -> Answer {
        Answer {
            status,
            body: json!({ "error": message }).to_string(),
            retry_after: None,
            allow_origin: None,
        }
    }

    fn retry_after(mut self, wait: Duration) -> Answer {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub(crate) fn with_origin(mut self, allow_origin: Option<HeaderValue>) -> Answer {
        self.allow_origin = allow_origin;
        self
    }

    fn rate_limited(wait: Duration) -> Answer {
        Answer::error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many events from this client; retry later",
        )
        .retry_after(wait)
    }

    pub(crate) fn too_large(limit: usize) -> Answer {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {limit} bytes; send fewer events per request"),
        )
    }

    pub(crate) fn body_timed_out() -> Answer {
        Answer::error(
            StatusCode::REQUEST_TIMEOUT,
            "the body took too long to arrive",
        )
    }

    /// `{"accepted":N,"rejected":M,"reasons":{...}}` (and `"error"`), written directly: this
    /// answer goes out for every request, and building a JSON tree for it cost more than parsing
    /// a click.
    fn summary(status: StatusCode, batch: &Batch, error: Option<&'static str>) -> Answer {
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
        Answer {
            status,
            body,
            retry_after: None,
            allow_origin: None,
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = self.allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl Shared {
    /// The checks made on a click request's head, before its body is read: the origin, the
    /// client's rate, the content type and the declared length. `Ok` holds the value for
    /// `Access-Control-Allow-Origin`; a refusal already carries it.
    pub(crate) fn admit(
        &self,
        head: &ClickHead<'_>,
        now: Instant,
    ) -> Result<Option<HeaderValue>, Answer> {
        let config = &self.config;
        let Ok(allow_origin) = cors_origin(&config.allowed_origins, head.origin, head.host) else {
            return Err(Answer::error(StatusCode::FORBIDDEN, ORIGIN_REFUSED));
        };
        let refusal = if let Err(wait) = self.limiter.check(head.client, now) {
            Answer::rate_limited(wait)
        } else if !content_type_accepted(head.content_type) {
            Answer::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send clicks as application/json, text/plain or application/x-ndjson",
            )
        } else if head
            .content_length
            .is_some_and(|length| length > config.body_limit_bytes as u64)
        {
            Answer::too_large(config.body_limit_bytes)
        } else {
            return Ok(allow_origin);
        };
        Err(refusal.with_origin(allow_origin))
    }

    /// A click request's body, read whole: its events are checked, charged to the client and
    /// queued, and the answer says how many were accepted and why others were not.
    pub(crate) fn take(&self, client: IpAddr, body: &[u8], now: Instant) -> Answer {
        self.metrics.request_bytes(body.len());
        let batch = split_events(body, &self.config.limits);
        if let Err(wait) = self.limiter.charge(client, batch.total(), now) {
            return Answer::rate_limited(wait);
        }
        if let Err(problem) = self.queue.push(&batch, now) {
            self.limiter.refund(client, batch.total());
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
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(wait);
        }
        self.metrics.accepted(batch.accepted());
        for (reason, count) in batch.rejections() {
            self.metrics.rejected(reason, count);
        }
        if batch.accepted() > 0 {
            return Answer::summary(StatusCode::ACCEPTED, &batch, None);
        }
        let message = if batch.rejected() == 0 {
            "the body holds no click events"
        } else {
            "no event was accepted: every event was rejected (see reasons)"
        };
        Answer::summary(StatusCode::BAD_REQUEST, &batch, Some(message))
    }

    pub(crate) fn config(&self) -> &CollectorConfig {
        &self.config
    }

    pub(crate) fn count_response(&self, status: StatusCode) {
        self.metrics.response(status.as_u16());
    }
}

/// `POST /v1/clicks` when hyper read the request (see [`crate::http1`] for the common case).
async fn ingest(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // One clock reading per request (on some VMs each is a system call).
    let now = Instant::now();
    let head = ClickHead::from_parts(&parts, shared.config.forwarded_for_hops);
    let allow_origin = match shared.admit(&head, now) {
        Ok(allow_origin) => allow_origin,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match read_body_in_time(&shared.config, body, head.content_length).await {
        Ok(body) => body,
        Err(answer) => return answer.with_origin(allow_origin).into_response(),
    };
    shared
        .take(head.client, &body, now)
        .with_origin(allow_origin)
        .into_response()
}

async fn read_body_in_time(
    config: &CollectorConfig,
    body: Body,
    declared: Option<u64>,
) -> Result<Bytes, Answer> {
    let limit = config.body_limit_bytes;
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
    match read {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(BodyError::TooLarge)) => Err(Answer::too_large(limit)),
        Ok(Err(BodyError::Read(why))) => {
            tracing::debug!(%why, "reading a click body failed");
            Err(Answer::error(
                StatusCode::BAD_REQUEST,
                "the body could not be read",
            ))
        }
        Err(_) => Err(Answer::body_timed_out()),
    }
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

fn content_type_accepted(value: Option<&[u8]>) -> bool {
    let Some(value) = value.and_then(|value| std::str::from_utf8(value).ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    ACCEPTED_TYPES
        .iter()
        .any(|accepted| essence.eq_ignore_ascii_case(accepted))
}

/// The client's address: the peer's, or the one `hops` proxies back in `X-Forwarded-For`
/// (`forwarded`: the header's values, in order).
pub(crate) fn client_ip<'a>(
    peer: IpAddr,
    hops: usize,
    forwarded: impl Iterator<Item = &'a [u8]>,
) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let forwarded: Vec<&str> = forwarded
        .filter_map(|value| std::str::from_utf8(value).ok())
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
fn cors_origin(
    allowed: &AllowedOrigins,
    origin: Option<&[u8]>,
    host: Option<&[u8]>,
) -> Result<Option<HeaderValue>, ()> {
    let Some(origin) = origin else {
        return Ok(None);
    };
    // Visible ASCII, as `HeaderValue::to_str` requires.
    if !origin.iter().all(|byte| (0x20..0x7f).contains(byte)) {
        return Err(());
    }
    let text = std::str::from_utf8(origin).map_err(|_| ())?;
    if same_origin(text, host) || (allowed.allows(text) && !allowed.allows_any()) {
        return HeaderValue::from_bytes(origin).map(Some).map_err(|_| ());
    }
    if allowed.allows_any() {
        return Ok(Some(HeaderValue::from_static("*")));
    }
    Err(())
}

/// A page served by the collector itself posts with its own origin.
fn same_origin(origin: &str, host: Option<&[u8]>) -> bool {
    let Some(host) = host.and_then(|host| std::str::from_utf8(host).ok()) else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
}

async fn preflight(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let header = |name| headers.get(name).map(HeaderValue::as_bytes);
    let allowed = match cors_origin(
        &shared.config.allowed_origins,
        header(header::ORIGIN),
        header(header::HOST),
    ) {
        Ok(allowed) => allowed,
        Err(()) => return error(StatusCode::FORBIDDEN, ORIGIN_REFUSED),
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
        let response = Answer::summary(StatusCode::ACCEPTED, &batch, None).into_response();
        assert_eq!(
            body_json(response).await,
            json!({"accepted": 2, "rejected": 2, "reasons": {"not_an_object": 1, "missing_field": 1}})
        );
        let empty = split_events(b"[]", &limits);
        let response =
            Answer::summary(StatusCode::BAD_REQUEST, &empty, Some("none")).into_response();
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
        let client = |parts: &Parts, hops| ClickHead::from_parts(parts, hops).client.to_string();
        let request = parts("10.0.0.1:5000", &["203.0.113.9, 198.51.100.1", "192.0.2.3"]);
        assert_eq!(client(&request, 0), "10.0.0.1");
        assert_eq!(client(&request, 1), "192.0.2.3");
        assert_eq!(client(&request, 2), "198.51.100.1");
        assert_eq!(client(&request, 9), "203.0.113.9");
        let junk = parts("10.0.0.1:5000", &["not an address"]);
        assert_eq!(client(&junk, 1), "10.0.0.1");
        let none = parts("[2001:db8::1]:5000", &[]);
        assert_eq!(client(&none, 1), "2001:db8::1");
    }

    #[test]
    fn content_lengths_are_plain_digits() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1234"), Some(1234));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1,1",
            b"0x10",
            b"12345678901234567890",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_types() {
        assert!(!content_type_accepted(None));
        for (value, ok) in [
            ("application/json", true),
            ("text/plain;charset=UTF-8", true),
            ("Application/X-NDJSON", true),
            ("application/xml", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            assert_eq!(content_type_accepted(Some(value.as_bytes())), ok, "{value}");
        }
    }
}
