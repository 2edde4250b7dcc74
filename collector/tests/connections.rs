//! The collector's HTTP/1.1 connections on 127.0.0.1: plain click posts take the collector's own
//! path, everything else (other routes, chunked bodies, `Expect: 100-continue`) is handed to
//! hyper on the same connection, and both give the same answers; pipelining, `Connection:
//! close`, idle and stalled connections, and shutdown with connections open.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clickheatmap_collector::client::{HttpClient, HttpResponse};
use clickheatmap_collector::{AllowedOrigins, ChannelSink, CollectorConfig};
use common::{Running, assert_exactly_once, comparable, event};
use tokio::sync::mpsc;

/// Long enough for any machine; the tests wait for events, not for durations.
const PATIENCE: Duration = Duration::from_secs(30);

fn post(body: &str, extra_headers: &str) -> String {
    format!(
        "POST /v1/clicks HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The same request with a chunked body (which the collector's own path leaves to hyper).
fn post_chunked(body: &str, extra_headers: &str) -> String {
    let (first, second) = body.split_at(body.len() / 2);
    format!(
        "POST /v1/clicks HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\n{extra_headers}transfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    )
}

async fn read(client: &mut HttpClient) -> HttpResponse {
    tokio::time::timeout(PATIENCE, client.read_response())
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// Whether the server has closed the connection (after any answer still unread).
async fn closed(client: &mut HttpClient) -> bool {
    matches!(
        tokio::time::timeout(PATIENCE, client.read_response()).await,
        Ok(Err(error)) if matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        )
    )
}

async fn records(mut receiver: mpsc::Receiver<Bytes>) -> Vec<Bytes> {
    let mut records = Vec::new();
    while let Some(record) = receiver.recv().await {
        records.push(record);
    }
    records
}

fn config() -> CollectorConfig {
    CollectorConfig {
        rate_limit: None,
        allowed_origins: AllowedOrigins::parse(&["https://shop.example".to_owned()])
            .expect("an origin"),
        body_limit_bytes: 4096,
        ..CollectorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_other_routes_follow_on_the_same_connection() {
    let (sink, receiver) = ChannelSink::new(64);
    let server = Running::start(config(), Arc::new(sink)).await;
    let mut client = server.client().await;
    // Four requests in one write: two clicks, a route of hyper's, a click (now through hyper).
    let requests = [
        post(&event(1), ""),
        post(&event(2), ""),
        "GET /healthz HTTP/1.1\r\nhost: collector\r\n\r\n".to_owned(),
        post(&event(3), ""),
    ]
    .concat();
    client.write_raw(requests.as_bytes()).await.unwrap();
    for expected in [202, 202, 200, 202] {
        let response = read(&mut client).await;
        assert_eq!(response.status, expected, "{}", response.text());
    }
    // The connection goes on with hyper.
    let response = client
        .post("/v1/clicks", "application/json", event(4).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
    let metrics = client.get("/metrics").await.unwrap().text();
    assert!(metrics.contains("{status=\"202\"} 4\n"), "{metrics}");
    assert!(metrics.contains("{status=\"200\"} 1\n"), "{metrics}");

    server.stop().await;
    assert_exactly_once(&records(receiver).await, &[1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_expect_continue_bodies_are_served_by_hyper() {
    let (sink, receiver) = ChannelSink::new(64);
    let server = Running::start(config(), Arc::new(sink)).await;

    let mut chunked = server.client().await;
    chunked
        .write_raw(post_chunked(&event(1), "").as_bytes())
        .await
        .unwrap();
    let response = read(&mut chunked).await;
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["accepted"], 1);

    let mut expecting = server.client().await;
    let body = event(2);
    expecting
        .write_raw(
            format!(
                "POST /v1/clicks HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read(&mut expecting).await.status, 100);
    expecting.write_raw(body.as_bytes()).await.unwrap();
    let response = read(&mut expecting).await;
    assert_eq!(response.status, 202, "{}", response.text());

    server.stop().await;
    assert_exactly_once(&records(receiver).await, &[1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collectors_own_path_and_hyper_give_the_same_answers() {
    let (sink, receiver) = ChannelSink::new(64);
    let server = Running::start(config(), Arc::new(sink)).await;
    let valid = event(1);
    let too_large = format!("[{}]", vec![event(2); 40].join(","));
    let cases: [(&str, &str, &str); 7] = [
        ("accepted", &valid, ""),
        (
            "accepted, allowed origin",
            &valid,
            "origin: https://shop.example\r\n",
        ),
        ("same origin", &valid, "origin: http://collector\r\n"),
        (
            "other origin",
            &valid,
            "origin: https://elsewhere.example\r\n",
        ),
        ("nothing valid", "[1,2]", "origin: https://shop.example\r\n"),
        ("not JSON", "{\"x\":", ""),
        ("too large", &too_large, "origin: https://shop.example\r\n"),
    ];
    for (case, body, headers) in cases {
        let mut own = server.client().await;
        own.write_raw(post(body, headers).as_bytes()).await.unwrap();
        let own = read(&mut own).await;
        let mut hyper = server.client().await;
        hyper
            .write_raw(post_chunked(body, headers).as_bytes())
            .await
            .unwrap();
        let hyper = read(&mut hyper).await;
        assert!(own.header("date").is_some(), "{case}: {own:?}");
        assert_eq!(comparable(&own), comparable(&hyper), "{case}");
    }
    // The wrong content type, a 415 before the body is read (on both paths).
    let mut own = server.client().await;
    let response = own
        .request(
            "POST",
            "/v1/clicks",
            &[("content-type", "text/html")],
            valid.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 415);
    // The body was all there: the connection stays usable.
    let response = own
        .post("/v1/clicks", "text/plain", valid.as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());

    server.stop().await;
    // Three accepted cases on each path, and the post after the 415.
    let records = records(receiver).await;
    let lines = records
        .iter()
        .flat_map(|record| record.split(|byte| *byte == b'\n'))
        .filter(|line| !line.is_empty())
        .count();
    assert_eq!(lines, 3 * 2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_when_asked_when_a_body_is_not_sent_and_when_idle_or_stalled() {
    let (sink, receiver) = ChannelSink::new(64);
    let config = CollectorConfig {
        idle_timeout: Duration::from_secs(2),
        body_read_timeout: Duration::from_secs(2),
        ..config()
    };
    let server = Running::start(config, Arc::new(sink)).await;

    let mut asks = server.client().await;
    asks.write_raw(post(&event(1), "connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let response = read(&mut asks).await;
    assert_eq!(response.status, 202);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closed(&mut asks).await, "closed after the answer");

    // Refused on its head with the body not sent: answered, then closed (the body is not
    // waited for).
    let mut large = server.client().await;
    large
        .write_raw(
            b"POST /v1/clicks HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read(&mut large).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closed(&mut large).await);

    // Idle after a request, and idle from the start.
    let mut idle = server.client().await;
    let response = idle
        .post("/v1/clicks", "application/json", event(2).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202);
    let mut silent = server.client().await;
    let mut scraper = server.client().await;
    assert_eq!(scraper.get("/healthz").await.unwrap().status, 200);
    assert!(closed(&mut idle).await, "an idle connection is closed");
    assert!(closed(&mut silent).await, "a silent connection is closed");
    assert!(
        closed(&mut scraper).await,
        "an idle connection of hyper's is closed"
    );

    // A head that stops half-way is dropped.
    let mut stalled = server.client().await;
    stalled
        .write_raw(b"POST /v1/clicks HTTP/1.1\r\nhost: coll")
        .await
        .unwrap();
    assert!(closed(&mut stalled).await, "a stalled head is dropped");

    // So is one that trickles in a byte at a time, each well within the read timeout.
    let trickling = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    let (mut from_server, mut to_server) = trickling.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        to_server
            .write_all(b"POST /v1/clicks HTTP/1.1\r\nx-padding: ")
            .await?;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            to_server.write_all(b"a").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, async {
        use tokio::io::AsyncReadExt;
        from_server.read_to_end(&mut rest).await
    })
    .await;
    assert!(
        ended.is_ok(),
        "a trickling head is dropped once the head's deadline has passed"
    );
    writer.abort();

    // The server still serves.
    let mut client = server.client().await;
    let response = client
        .post("/v1/clicks", "application/json", event(3).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202);

    server.stop().await;
    assert_exactly_once(&records(receiver).await, &[1, 2, 3]);
}

/// Browsers send a body without waiting for an answer: a request refused on its head still
/// gets its answer (no reset under it), a small refused body is read and dropped so that the
/// connection goes on, and after a large one the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_whose_bodies_keep_coming_get_their_answers() {
    let (sink, receiver) = ChannelSink::new(64);
    let server = Running::start(config(), Arc::new(sink)).await;

    // 415 on the head; the body (within the limit) arrives after the head was judged.
    let mut small = server.client().await;
    let body = format!("[{}]", vec![event(9); 10].join(","));
    assert!(body.len() < 4096);
    small
        .write_raw(
            format!(
                "POST /v1/clicks HTTP/1.1\r\nhost: collector\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    small.write_raw(body.as_bytes()).await.unwrap();
    let response = read(&mut small).await;
    assert_eq!(response.status, 415, "{}", response.text());
    assert_eq!(response.header("connection"), None);
    let response = small
        .post("/v1/clicks", "application/json", event(1).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());

    // 413: 2.6 MB sent at once (more than the sockets' buffers hold), the limit is 4 KiB.
    let mut large = server.client().await;
    let huge = format!("[{}]", vec![event(9); 12_000].join(","));
    let response = tokio::time::timeout(
        PATIENCE,
        large.request(
            "POST",
            "/v1/clicks",
            &[("content-type", "application/json")],
            huge.as_bytes(),
        ),
    )
    .await
    .expect("an answer in time")
    .expect("the answer, not a reset");
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));

    server.stop().await;
    assert_exactly_once(&records(receiver).await, &[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_closes_idle_connections_on_both_paths_and_delivers_what_was_accepted() {
    let (sink, receiver) = ChannelSink::new(64);
    let config = CollectorConfig {
        // Far beyond the test's patience: the connections must close because of the shutdown.
        http_grace: Duration::from_secs(600),
        ..config()
    };
    let server = Running::start(config, Arc::new(sink)).await;
    let mut own = server.client().await;
    let response = own
        .post("/v1/clicks", "application/json", event(1).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202);
    let mut hyper = server.client().await;
    hyper
        .write_raw(post_chunked(&event(2), "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read(&mut hyper).await.status, 202);

    let report = tokio::time::timeout(PATIENCE, server.stop())
        .await
        .expect("idle keep-alive connections do not hold the shutdown for the grace period");
    assert_eq!(report.undelivered_events, 0);
    assert!(closed(&mut own).await);
    assert!(closed(&mut hyper).await);
    assert_exactly_once(&records(receiver).await, &[1, 2]);
}
