//! The collector's own HTTP/1.1 path against hyper, as a property: the same bytes — one to three
//! pipelined requests drawn from click posts with every framing, content type, origin and
//! connection option, other routes and methods, HTTP/1.0, chunked and `Expect` bodies, lengths
//! that cut a body short — are sent to a collector with the own path on and to one with it off
//! (every request through hyper and axum), and both must answer the same: the same statuses,
//! headers (but the date and `connection`) and bodies, in the same order, the connection
//! closing at the same point.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clickheatmap_collector::client::HttpClient;
use clickheatmap_collector::{AllowedOrigins, ChannelSink, CollectorConfig};
use common::{Running, comparable, event};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[derive(Clone, Debug)]
enum Framing {
    Length,
    /// A `Content-Length` this many bytes short: the rest of the body is read as the next
    /// request.
    ShortBy(usize),
    LengthWithLeadingZeros,
    LengthTwice,
    Chunked,
    /// Both, the request-smuggling shape.
    LengthAndChunked,
    Expect,
}

#[derive(Clone, Debug)]
struct Request {
    method: &'static str,
    path: &'static str,
    version: &'static str,
    content_type: Option<&'static str>,
    origin: Option<&'static str>,
    connection: Option<&'static str>,
    body: String,
    framing: Framing,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} {}\r\nhost: collector\r\n",
            self.method, self.path, self.version
        );
        let mut header = |name: &str, value: &str| head.push_str(&format!("{name}: {value}\r\n"));
        if let Some(value) = self.content_type {
            header("content-type", value);
        }
        if let Some(value) = self.origin {
            header("origin", value);
        }
        if let Some(value) = self.connection {
            header("connection", value);
        }
        let length = self.body.len();
        let chunked = || {
            let (first, second) = self.body.split_at(length / 2);
            let mut body = String::new();
            for piece in [first, second] {
                if !piece.is_empty() {
                    body.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
                }
            }
            body + "0\r\n\r\n"
        };
        let body = match &self.framing {
            Framing::Length => {
                header("content-length", &length.to_string());
                self.body.clone()
            }
            Framing::ShortBy(short) => {
                header("content-length", &length.saturating_sub(*short).to_string());
                self.body.clone()
            }
            Framing::LengthWithLeadingZeros => {
                header("content-length", &format!("00{length}"));
                self.body.clone()
            }
            Framing::LengthTwice => {
                header("content-length", &length.to_string());
                header("content-length", &length.to_string());
                self.body.clone()
            }
            Framing::Chunked => {
                header("transfer-encoding", "chunked");
                chunked()
            }
            Framing::LengthAndChunked => {
                header("content-length", &length.to_string());
                header("transfer-encoding", "chunked");
                chunked()
            }
            Framing::Expect => {
                header("expect", "100-continue");
                header("content-length", &length.to_string());
                self.body.clone()
            }
        };
        head.push_str("\r\n");
        [head.into_bytes(), body.into_bytes()].concat()
    }
}

fn request() -> impl Strategy<Value = Request> {
    let bodies = vec![
        event(1),
        format!("[{},{}]", event(2), event(3)),
        format!("{}\n{}\n", event(4), event(5)),
        "[1,2]".to_owned(),
        "{\"x\":".to_owned(),
        String::new(),
    ];
    (
        prop::sample::select(vec!["POST", "POST", "POST", "GET", "PUT"]),
        prop::sample::select(vec![
            "/v1/clicks",
            "/v1/clicks",
            "/v1/clicks",
            "/v1/clicks?x=1",
            "/healthz",
            "/nope",
        ]),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        prop::sample::select(vec![
            Some("application/json"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-ndjson"),
            Some("text/html"),
            None,
        ]),
        prop::sample::select(vec![
            None,
            None,
            Some("https://shop.example"),
            Some("https://elsewhere.example"),
            Some("http://collector"),
        ]),
        prop::sample::select(vec![
            None,
            None,
            Some("keep-alive"),
            Some("close"),
            Some("keep-alive, te"),
        ]),
        prop::sample::select(bodies),
        prop_oneof![
            6 => Just(Framing::Length),
            1 => (1..12usize).prop_map(Framing::ShortBy),
            1 => Just(Framing::LengthWithLeadingZeros),
            1 => Just(Framing::LengthTwice),
            2 => Just(Framing::Chunked),
            1 => Just(Framing::LengthAndChunked),
            1 => Just(Framing::Expect),
        ],
    )
        .prop_map(
            |(method, path, version, content_type, origin, connection, body, framing)| Request {
                method,
                path,
                version,
                content_type,
                origin,
                connection,
                body,
                framing,
            },
        )
}

/// Every answer on one connection, up to its close; the sequence ends with a request that
/// asks to close, so that a connection still open is closed by the server.
async fn answers(server: SocketAddr, bytes: &[u8]) -> Vec<(u16, BTreeMap<String, String>, String)> {
    let mut client = HttpClient::connect(server).await.expect("connect");
    client.write_raw(bytes).await.expect("write");
    let mut answers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), client.read_response()).await {
            Ok(Ok(response)) => answers.push(comparable(&response)),
            Ok(Err(_)) => return answers,
            Err(_) => panic!("no answer and no close within 30 s after {answers:?}"),
        }
    }
}

#[test]
fn the_own_path_and_hyper_answer_any_sequence_of_requests_alike() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let config = |fast_click_path| CollectorConfig {
        rate_limit: None,
        allowed_origins: AllowedOrigins::parse(&["https://shop.example".to_owned()])
            .expect("an origin"),
        body_limit_bytes: 4096,
        // Long enough that no case meets a timeout (no case leaves a body unfinished).
        body_read_timeout: Duration::from_secs(20),
        fast_click_path,
        ..CollectorConfig::default()
    };
    let (own, hyper, receivers) = runtime.block_on(async {
        let (own_sink, own_records) = ChannelSink::new(1 << 16);
        let (hyper_sink, hyper_records) = ChannelSink::new(1 << 16);
        (
            Running::start(config(true), Arc::new(own_sink)).await,
            Running::start(config(false), Arc::new(hyper_sink)).await,
            (own_records, hyper_records),
        )
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let outcome = runner.run(&prop::collection::vec(request(), 1..=3), |requests| {
        let mut bytes: Vec<u8> = requests.iter().flat_map(Request::bytes).collect();
        bytes.extend_from_slice(
            b"GET /healthz HTTP/1.1\r\nhost: collector\r\nconnection: close\r\n\r\n",
        );
        let (own_answers, hyper_answers) = runtime.block_on(async {
            tokio::join!(answers(own.address, &bytes), answers(hyper.address, &bytes))
        });
        if own_answers != hyper_answers {
            return Err(TestCaseError::fail(format!(
                "requests {:?}\nown path: {own_answers:#?}\nhyper: {hyper_answers:#?}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(())
    });
    let (own_records, hyper_records) = receivers;
    runtime.block_on(async {
        own.stop().await;
        hyper.stop().await;
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // Both delivered the same events.
    let lines = |mut records: tokio::sync::mpsc::Receiver<bytes::Bytes>| {
        let mut lines = Vec::new();
        while let Ok(record) = records.try_recv() {
            lines.extend(
                record
                    .split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(<[u8]>::to_vec),
            );
        }
        lines.sort();
        lines
    };
    assert_eq!(lines(own_records), lines(hyper_records));
}
