//! The collector's HTTP/1.1 connections. Plain click posts — `POST /v1/clicks`, HTTP/1.1, a
//! `Content-Length` body: what the snippet, `fetch` and `sendBeacon` send — are read, checked
//! and answered here directly. The first request that is anything else (another route, a
//! chunked or `Expect: 100-continue` body, an upgrade, HTTP/1.0, a query string, a head this
//! module does not take) hands the connection, with every byte already read, to hyper and the
//! full router for the rest of its life.
//!
//! Why: on the 2-vCPU VM of docs/BENCHMARKS.md ("Collector") a request costs the server about
//! 8.5–9 µs through hyper and axum and 6.5 µs through a bare read-parse-write loop; with a
//! click's own work (about 2 µs) only the second stays within the 10 µs that 100 K single-click
//! requests per core allow.
//!
//! Safety of the split: every request is interpreted by exactly one parser. This module takes a
//! request only when its framing is unambiguous (one `Content-Length` of plain digits, no
//! `Transfer-Encoding`); everything else goes to hyper *from its first byte*, so the two never
//! disagree about where a request ends. Heads are parsed by `httparse`, the parser hyper uses.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderValue;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower_service::Service;

use crate::server::{Answer, ClickHead, Shared, client_ip, content_length};

const CLICK_PATH: &str = "/v1/clicks";
/// Heads larger than this (cookies, long user agents...) are left to hyper and its limits.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers this path reads; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;
/// Bytes asked of the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// After the last answer on a connection, how long and how much of what the client still sends
/// is read and dropped before the socket is: closing a socket with unread data makes the kernel
/// send a reset, and a client still sending its body may lose the answer with it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Serves one accepted connection until the client closes it, it idles out, a shutdown
/// closes it between requests, or it is handed to hyper (which then serves it to its end).
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    router: Router,
    mut stopping: watch::Receiver<bool>,
) {
    // hyper's head timeout runs from the end of the previous request, so it is the idle
    // timeout too: the keep-alive timeout's value, so that a load balancer in front never
    // reuses a connection hyper has just closed.
    let header_timeout = shared.config().idle_timeout;
    if !shared.config().fast_click_path {
        let io = Replayed {
            buffered: Bytes::new(),
            stream,
        };
        serve_with_hyper(io, peer, router, header_timeout, stopping).await;
        return;
    }
    let mut connection = ClickConnection {
        stream,
        peer: peer.ip(),
        shared,
        buffer: Vec::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(512),
        date: DateHeader::default(),
    };
    match connection.serve(&mut stopping).await {
        Ok(Next::Close) => {}
        Ok(Next::HandOver) => {
            // A copy of the few bytes left, not the buffer: its allocation may be a large
            // body's, and hyper may keep the connection for a long time.
            let ClickConnection { stream, buffer, .. } = connection;
            let io = Replayed {
                buffered: Bytes::copy_from_slice(&buffer),
                stream,
            };
            serve_with_hyper(io, peer, router, header_timeout, stopping).await;
        }
        Err(error) => tracing::debug!(%error, %peer, "connection ended"),
    }
}

enum Next {
    Close,
    HandOver,
}

/// How a read of the rest of a request ended.
enum Arrival {
    Complete,
    Closed,
    TimedOut,
}

/// What to do with the bytes at the front of the buffer.
enum Step {
    /// The head is not all there yet.
    ReadHead,
    /// Not a request for this path.
    HandOver,
    /// Refused on its head; its body is not needed.
    Refuse {
        answer: Answer,
        request_bytes: usize,
        /// Whether the body is small enough to be read and dropped (the connection then stays
        /// open).
        within_limit: bool,
        now: Instant,
        close: bool,
    },
    /// Answered, body and all.
    Answer {
        answer: Answer,
        request_bytes: usize,
        now: Instant,
        close: bool,
    },
    /// Admitted; the rest of the body is on its way. Once it is all here the request is
    /// stepped through again, as one that came whole.
    ReadBody {
        allow_origin: Option<HeaderValue>,
        request_bytes: usize,
    },
}

struct ClickConnection {
    stream: TcpStream,
    peer: IpAddr,
    shared: Arc<Shared>,
    /// Bytes read and not yet consumed: the front is the next request.
    buffer: Vec<u8>,
    /// The answer being written (kept to reuse its allocation).
    out: Vec<u8>,
    date: DateHeader,
}

impl ClickConnection {
    async fn serve(&mut self, stopping: &mut watch::Receiver<bool>) -> io::Result<Next> {
        let idle_timeout = self.shared.config().idle_timeout;
        let read_timeout = self.shared.config().body_read_timeout;
        // One timer per connection, moved on only when it fires: re-arming it for every request
        // would cost a timer-wheel entry each time.
        let mut last_request = Instant::now();
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // When the head being read must be complete: a deadline for the whole head, not a
        // timeout per read, or a client sending a byte at a time could hold the connection.
        let mut head_deadline = None;
        loop {
            if self.buffer.is_empty() {
                if *stopping.borrow() {
                    return Ok(Next::Close);
                }
                tokio::select! {
                    biased;
                    read = self.stream.read_buf(&mut self.buffer) => {
                        if read? == 0 {
                            return Ok(Next::Close);
                        }
                    }
                    _ = stopping.changed() => return Ok(Next::Close),
                    () = &mut idle => {
                        let due = last_request + idle_timeout;
                        if Instant::now() < due {
                            idle.as_mut().reset(due.into());
                            continue;
                        }
                        return Ok(Next::Close);
                    }
                }
            }
            let step = self.step();
            if !matches!(step, Step::ReadHead) {
                head_deadline = None;
            }
            match step {
                Step::ReadHead => {
                    if self.buffer.len() > MAX_HEAD_BYTES {
                        return Ok(Next::HandOver);
                    }
                    let deadline = *head_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + read_timeout);
                    match tokio::time::timeout_at(deadline, self.read_more()).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) | Err(_) => return Ok(Next::Close),
                        Ok(Err(error)) => return Err(error),
                    }
                }
                Step::HandOver => return Ok(Next::HandOver),
                Step::Answer {
                    answer,
                    request_bytes,
                    now,
                    close,
                } => {
                    last_request = now;
                    self.consume(request_bytes);
                    if !self
                        .answer(answer, now, close || *stopping.borrow())
                        .await?
                    {
                        return Ok(Next::Close);
                    }
                }
                Step::Refuse {
                    answer,
                    request_bytes,
                    within_limit,
                    mut now,
                    close,
                } => {
                    // A client may send its body without waiting for an answer (browsers do):
                    // a small one is read and dropped, so that the connection stays usable;
                    // after a large one's answer the connection closes (with a linger).
                    let mut close = close || *stopping.borrow();
                    if self.buffer.len() < request_bytes {
                        if within_limit && !close {
                            match self.read_until(request_bytes, read_timeout).await? {
                                Arrival::Complete => now = Instant::now(),
                                Arrival::Closed => return Ok(Next::Close),
                                Arrival::TimedOut => close = true,
                            }
                        } else {
                            close = true;
                        }
                    }
                    if self.buffer.len() >= request_bytes {
                        self.consume(request_bytes);
                    }
                    last_request = now;
                    if !self.answer(answer, now, close).await? {
                        return Ok(Next::Close);
                    }
                }
                Step::ReadBody {
                    allow_origin,
                    request_bytes,
                } => match self.read_until(request_bytes, read_timeout).await? {
                    // Stepped again: the head is parsed and checked once more (with the clock
                    // read after the wait, for the rate, the idle timer and the date), which
                    // only a body slower than its head costs.
                    Arrival::Complete => {}
                    // The client left mid-body: nobody to answer.
                    Arrival::Closed => return Ok(Next::Close),
                    Arrival::TimedOut => {
                        let answer = Answer::body_timed_out().with_origin(allow_origin);
                        self.answer(answer, Instant::now(), true).await?;
                        return Ok(Next::Close);
                    }
                },
            }
        }
    }

    /// Reads the head at the front of the buffer and decides what it needs.
    fn step(&mut self) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let head_bytes = match request.parse(&self.buffer) {
            Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
            Ok(httparse::Status::Partial) => return Step::ReadHead,
            // Too many headers or a malformed head: hyper answers those as it always does.
            Err(_) => return Step::HandOver,
        };
        let config = self.shared.config();
        let Some((head, close)) = click_head(&request, self.peer, config.forwarded_for_hops) else {
            return Step::HandOver;
        };
        // Framing was checked: a click head always has a length.
        let body_bytes = head.content_length.unwrap_or(0);
        // One clock reading per request (on some VMs each is a system call).
        let now = Instant::now();
        let allow_origin = match self.shared.admit(&head, now) {
            Ok(allow_origin) => allow_origin,
            Err(answer) => {
                return Step::Refuse {
                    answer,
                    request_bytes: head_bytes
                        .saturating_add(usize::try_from(body_bytes).unwrap_or(usize::MAX)),
                    within_limit: body_bytes <= config.body_limit_bytes as u64,
                    now,
                    close,
                };
            }
        };
        // Admitted, so the length is within the body limit.
        let body_bytes = body_bytes as usize;
        let request_bytes = head_bytes + body_bytes;
        if self.buffer.len() < request_bytes {
            return Step::ReadBody {
                allow_origin,
                request_bytes,
            };
        }
        let answer = self
            .shared
            .take(head.client, &self.buffer[head_bytes..request_bytes], now)
            .with_origin(allow_origin);
        Step::Answer {
            answer,
            request_bytes,
            now,
            close,
        }
    }

    /// Reads what the socket has into the buffer; `false` when the client has closed it.
    async fn read_more(&mut self) -> io::Result<bool> {
        self.buffer.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buffer).await? > 0)
    }

    /// Reads until the buffer holds `request_bytes`, within `limit` for all of it.
    async fn read_until(&mut self, request_bytes: usize, limit: Duration) -> io::Result<Arrival> {
        self.buffer
            .reserve(request_bytes.saturating_sub(self.buffer.len()));
        let arrived = tokio::time::timeout(limit, async {
            while self.buffer.len() < request_bytes {
                if !self.read_more().await? {
                    return Ok(Arrival::Closed);
                }
            }
            Ok::<_, io::Error>(Arrival::Complete)
        })
        .await;
        arrived.unwrap_or(Ok(Arrival::TimedOut))
    }

    /// Drops the request at the front of the buffer; a large body's allocation is not kept for
    /// the connection's life.
    fn consume(&mut self, request_bytes: usize) {
        self.buffer.drain(..request_bytes);
        if self.buffer.capacity() > 4 * READ_CHUNK && self.buffer.len() <= READ_CHUNK {
            self.buffer.shrink_to(READ_CHUNK);
        }
    }

    /// Writes `answer` and counts it; `false` when the connection is to close after it.
    async fn answer(&mut self, answer: Answer, now: Instant, close: bool) -> io::Result<bool> {
        self.out.clear();
        let date = self.date.at(now);
        write_answer(&mut self.out, &answer, date, close);
        // The answer usually fits the socket's buffer at once: no timer for that. A client
        // that stops reading its answers gets the read timeout.
        let write = self.stream.write_all(&self.out);
        tokio::pin!(write);
        let written = tokio::select! {
            biased;
            written = &mut write => Some(written),
            () = std::future::ready(()) => None,
        };
        match written {
            Some(written) => written?,
            None => tokio::time::timeout(self.shared.config().body_read_timeout, write)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not read its answer",
                    )
                })??,
        }
        self.shared.count_response(answer.status);
        if close {
            // Our side is done; the client sees the end after the answer.
            let _ = self.stream.shutdown().await;
            self.linger().await;
        }
        Ok(!close)
    }

    /// Reads and drops what the client still sends, for a while, before the socket is dropped
    /// (see [`LINGER`]).
    async fn linger(&mut self) {
        let mut dropped = 0;
        let _ = tokio::time::timeout(LINGER, async {
            while dropped < LINGER_BYTES {
                self.buffer.clear();
                match self.read_more().await {
                    Ok(true) => dropped += self.buffer.len(),
                    Ok(false) | Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// The head of a request this path takes, and whether the client asked to close after it;
/// `None` for everything else (left to hyper).
fn click_head<'b>(
    request: &httparse::Request<'_, 'b>,
    peer: IpAddr,
    forwarded_for_hops: usize,
) -> Option<(ClickHead<'b>, bool)> {
    if request.method != Some("POST") || request.path != Some(CLICK_PATH) {
        return None;
    }
    // HTTP/1.0 has other keep-alive rules: hyper's.
    if request.version != Some(1) {
        return None;
    }
    let mut head = ClickHead {
        client: peer,
        origin: None,
        host: None,
        content_type: None,
        content_length: None,
    };
    let mut close = false;
    let mut lengths = 0;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            head.content_length = Some(content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("host") {
            head.host.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type.get_or_insert(value);
        }
    }
    if lengths != 1 {
        return None;
    }
    if forwarded_for_hops > 0 {
        let forwarded = request
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|header| header.value);
        head.client = client_ip(peer, forwarded_for_hops, forwarded);
    }
    Some((head, close))
}

/// The answer as HTTP/1.1 bytes, with the headers hyper and axum give the same answer.
fn write_answer(out: &mut Vec<u8>, answer: &Answer, date: &[u8], close: bool) {
    let mut number = [0; 20];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(answer.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        answer
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nvary: origin\r\n");
    if let Some(origin) = &answer.allow_origin {
        out.extend_from_slice(b"access-control-allow-origin: ");
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(b"\r\naccess-control-expose-headers: retry-after\r\n");
    }
    if let Some(seconds) = answer.retry_after {
        out.extend_from_slice(b"retry-after: ");
        out.extend_from_slice(format_u64(&mut number, seconds));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(format_u64(&mut number, answer.body.len() as u64));
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(answer.body.as_bytes());
}

/// `value` in decimal, written at the end of `buffer`.
fn format_u64(buffer: &mut [u8; 20], mut value: u64) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

/// The `Date` header's value, formatted once per second.
#[derive(Default)]
struct DateHeader {
    text: String,
    valid_until: Option<Instant>,
}

impl DateHeader {
    /// The value at `now` (the request's clock reading: no reading of its own but once a
    /// second).
    fn at(&mut self, now: Instant) -> &[u8] {
        if self.valid_until.is_none_or(|until| now >= until) {
            let wall = SystemTime::now();
            let into_second = wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos());
            self.text = httpdate::fmt_http_date(wall);
            self.valid_until =
                Some(now + Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
        }
        self.text.as_bytes()
    }
}

/// The rest of a connection, served by hyper with the full router (every route, chunked
/// bodies, `Expect: 100-continue`...).
async fn serve_with_hyper(
    io: Replayed,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // The connection first: its first poll takes the replayed request in, so that a shutdown
    // already under way lets it finish (a graceful shutdown of a connection that has read
    // nothing closes it at once, and the request would be lost).
    let served = tokio::select! {
        biased;
        served = connection.as_mut() => served,
        () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, %peer, "connection ended");
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Replayed {
    buffered: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buffered.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.buffered.len().min(buf.remaining());
        buf.put_slice(&self.buffered[..n]);
        self.buffered.advance(n);
        if self.buffered.is_empty() {
            self.buffered = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn parse(head: &str) -> Option<(String, Option<u64>, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = request.parse(head.as_bytes()) else {
            panic!("not a complete head: {head:?}");
        };
        click_head(&request, IpAddr::from([10, 0, 0, 1]), 0).map(|(head, close)| {
            (
                String::from_utf8_lossy(head.content_type.unwrap_or_default()).into_owned(),
                head.content_length,
                close,
            )
        })
    }

    #[test]
    fn only_plainly_framed_click_posts_are_taken() {
        let click = |extra: &str| {
            parse(&format!(
                "POST /v1/clicks HTTP/1.1\r\nhost: c\r\ncontent-type: text/plain\r\n{extra}\r\n"
            ))
        };
        assert_eq!(
            click("content-length: 12\r\n"),
            Some(("text/plain".into(), Some(12), false))
        );
        assert_eq!(
            click("Content-Length: 0\r\nConnection: close\r\n"),
            Some(("text/plain".into(), Some(0), true))
        );
        assert_eq!(
            click("content-length: 1\r\nconnection: Keep-Alive\r\n"),
            Some(("text/plain".into(), Some(1), false))
        );
        for left_to_hyper in [
            // no length, two lengths, a length that is not plain digits
            "",
            "content-length: 1\r\ncontent-length: 1\r\n",
            "content-length: +1\r\n",
            "content-length: 1, 1\r\n",
            // another framing or handshake
            "content-length: 1\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: chunked\r\n",
            "content-length: 1\r\nexpect: 100-continue\r\n",
            "content-length: 1\r\nupgrade: h2c\r\nconnection: upgrade\r\n",
            "content-length: 1\r\nconnection: keep-alive, te\r\n",
        ] {
            assert_eq!(click(left_to_hyper), None, "{left_to_hyper:?}");
        }
        for other in [
            "GET /v1/clicks HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v1/clicks?x=1 HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v1/clicks/ HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /metrics HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v1/clicks HTTP/1.0\r\ncontent-length: 1\r\n\r\n",
        ] {
            assert_eq!(parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn answers_are_written_as_hyper_would() {
        let answer = Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: "{}".into(),
            retry_after: Some(3),
            allow_origin: Some(HeaderValue::from_static("https://shop.example")),
        };
        let mut out = Vec::new();
        write_answer(&mut out, &answer, b"Fri, 04 Dec 2026 19:00:00 GMT", true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\n\
             content-type: application/json\r\n\
             vary: origin\r\n\
             access-control-allow-origin: https://shop.example\r\n\
             access-control-expose-headers: retry-after\r\n\
             retry-after: 3\r\n\
             connection: close\r\n\
             content-length: 2\r\n\
             date: Fri, 04 Dec 2026 19:00:00 GMT\r\n\r\n{}"
        );
    }

    /// A request handed to hyper just as a shutdown begins is answered, not dropped: hyper
    /// must take the replayed bytes in before it is told to shut down. (Which of the two a
    /// `select!` without order polls first is random: twenty rounds.)
    #[tokio::test]
    async fn a_request_handed_over_during_a_shutdown_is_answered() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let (_stop, stopping) = watch::channel(true);
        for _ in 0..20 {
            let mut client = TcpStream::connect(address).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let io = Replayed {
                buffered: Bytes::from_static(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"),
                stream,
            };
            let timeout = Duration::from_secs(5);
            serve_with_hyper(io, peer, router.clone(), timeout, stopping.clone()).await;
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.ends_with("ok\n"), "{answer}");
        }
    }

    #[test]
    fn numbers_and_dates() {
        let mut buffer = [0; 20];
        for value in [0, 7, 10, 202, 1_048_576, u64::MAX] {
            assert_eq!(format_u64(&mut buffer, value), value.to_string().as_bytes());
        }
        let mut date = DateHeader::default();
        let text = String::from_utf8(date.at(Instant::now()).to_vec()).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
        assert_eq!(text.len(), 29);
    }
}
