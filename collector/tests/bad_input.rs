//! Hostile and broken input against the real HTTP server on 127.0.0.1: every answer is a clear
//! JSON 4xx, the server keeps serving, and every event it accepted reaches the sink exactly once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clickheatmap_collector::client::HttpClient;
use clickheatmap_collector::{ChannelSink, CollectorConfig};
use common::{Running, array, assert_exactly_once, event};
use serde_json::{Value, json};

const CLICKS: &str = "/v1/clicks";

/// Posts and checks status, accepted and rejected counts and reasons; returns the response JSON.
async fn post_expect(
    client: &mut HttpClient,
    content_type: &str,
    body: &[u8],
    status: u16,
    accepted: u64,
    reasons: Value,
) -> Value {
    let response = client
        .post(CLICKS, content_type, body)
        .await
        .expect("response");
    let preview = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
    assert_eq!(response.status, status, "{preview}: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{preview}"
    );
    let answer = response.json();
    assert_eq!(
        answer["accepted"].as_u64(),
        Some(accepted),
        "{preview}: {answer}"
    );
    assert_eq!(answer["reasons"], reasons, "{preview}: {answer}");
    let rejected: u64 = reasons
        .as_object()
        .map(|r| r.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(answer["rejected"].as_u64(), Some(rejected), "{preview}");
    if status == 400 {
        assert!(
            answer["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    answer
}

async fn assert_error(response: clickheatmap_collector::client::HttpResponse, status: u16) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(
        response.json()["error"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        response.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_answers_and_accepted_events_arrive_exactly_once() {
    let (sink, mut receiver) = ChannelSink::new(64);
    let records = tokio::spawn(async move {
        let mut records: Vec<Bytes> = Vec::new();
        while let Some(record) = receiver.recv().await {
            records.push(record);
        }
        records
    });
    let config = CollectorConfig {
        rate_limit: None,
        ..CollectorConfig::default()
    };
    let limit = config.body_limit_bytes;
    let server = Running::start(config, Arc::new(sink)).await;
    let mut client = server.client().await;
    let mut accepted: Vec<u64> = Vec::new();
    let mut seq = 0u64;
    let mut next = |n: u64| {
        let range = seq..seq + n;
        seq += n;
        range
    };
    let json_type = "application/json";

    // One event, an array, NDJSON, and the sendBeacon content type.
    let s = next(1).start;
    post_expect(
        &mut client,
        json_type,
        event(s).as_bytes(),
        202,
        1,
        json!({}),
    )
    .await;
    accepted.push(s);
    let batch: Vec<u64> = next(3).collect();
    post_expect(
        &mut client,
        json_type,
        array(batch.clone()).as_bytes(),
        202,
        3,
        json!({}),
    )
    .await;
    accepted.extend(&batch);
    let lines: Vec<u64> = next(4).collect();
    let ndjson: String = lines.iter().map(|s| event(*s) + "\n").collect();
    post_expect(
        &mut client,
        "application/x-ndjson",
        ndjson.as_bytes(),
        202,
        4,
        json!({}),
    )
    .await;
    accepted.extend(&lines);
    let beacon: Vec<u64> = next(2).collect();
    post_expect(
        &mut client,
        "text/plain;charset=UTF-8",
        array(beacon.clone()).as_bytes(),
        202,
        2,
        json!({}),
    )
    .await;
    accepted.extend(&beacon);

    // Malformed JSON, empty bodies, NaN-like tokens, invalid UTF-8.
    for body in [
        "{not json",
        "[{\"event_type\":",
        "}",
        "{\"x\":NaN}",
        "\"unterminated",
    ] {
        post_expect(
            &mut client,
            json_type,
            body.as_bytes(),
            400,
            0,
            json!({"malformed_json": 1}),
        )
        .await;
    }
    for body in ["", "   \n", "[]"] {
        let answer = post_expect(&mut client, json_type, body.as_bytes(), 400, 0, json!({})).await;
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("no click events")
        );
    }
    let s = next(1).start;
    for token in [
        "NaN",
        "Infinity",
        "-Infinity",
        "nan",
        "undefined",
        "0x10",
        "+1",
        ".5",
        "1.",
    ] {
        let body = event(s).replace("\"x\":", &format!("\"x\":{token},\"_x\":"));
        post_expect(
            &mut client,
            json_type,
            body.as_bytes(),
            400,
            0,
            json!({"malformed_json": 1}),
        )
        .await;
    }
    let body = event(s).replace("\"x\":", "\"x\":1e999,\"_x\":");
    post_expect(
        &mut client,
        json_type,
        body.as_bytes(),
        400,
        0,
        json!({"out_of_range": 1}),
    )
    .await;
    let mut bad_utf8 = event(s).into_bytes();
    let at = bad_utf8.windows(7).position(|w| w == b"Mozilla").unwrap();
    bad_utf8[at] = 0xC3;
    bad_utf8[at + 1] = 0x28;
    post_expect(
        &mut client,
        json_type,
        &bad_utf8,
        400,
        0,
        json!({"malformed_json": 1}),
    )
    .await;

    // Wrong types and missing fields: the aggregator parser's reasons.
    let base = event(s);
    for (from, to, reason) in [
        ("\"x\":", "\"x\":\"12\",\"_x\":", "wrong_type"),
        ("\"y\":", "\"y\":[1],\"_y\":", "wrong_type"),
        ("\"y\":", "\"y\":true,\"_y\":", "wrong_type"),
        (
            "\"event_time_ms\":",
            "\"event_time_ms\":1.5,\"_t\":",
            "wrong_type",
        ),
        ("\"page_id\":", "\"page_id\":null,\"_p\":", "missing_field"),
        (
            "\"event_type\":\"click\"",
            "\"event_type\":\"scroll\"",
            "not_a_click",
        ),
        (
            "\"viewport_width\":1280",
            "\"viewport_width\":0",
            "non_positive_viewport",
        ),
        (
            "\"event_time_ms\":",
            "\"event_time_ms\":-5,\"_t\":",
            "out_of_range",
        ),
    ] {
        let body = base.replacen(from, to, 1);
        post_expect(
            &mut client,
            json_type,
            body.as_bytes(),
            400,
            0,
            json!({ reason: 1 }),
        )
        .await;
    }
    for body in ["42", "\"click\"", "null", "[1,\"a\",[]]"] {
        let count = if body.starts_with('[') { 3 } else { 1 };
        post_expect(
            &mut client,
            json_type,
            body.as_bytes(),
            400,
            0,
            json!({"not_an_object": count}),
        )
        .await;
    }

    // Hostile strings: control characters, a huge page_id, an oversized event, unicode.
    let control = base.replace("\"page-", "\"pa\\u0007ge-");
    post_expect(
        &mut client,
        json_type,
        control.as_bytes(),
        400,
        0,
        json!({"invalid_string": 1}),
    )
    .await;
    let raw_control = base.replace("\"page-", "\"pa\u{1b}ge-");
    post_expect(
        &mut client,
        json_type,
        raw_control.as_bytes(),
        400,
        0,
        json!({"malformed_json": 1}),
    )
    .await;
    let long_id = base.replace("\"page-", &format!("\"{}", "p".repeat(1000)));
    post_expect(
        &mut client,
        json_type,
        long_id.as_bytes(),
        400,
        0,
        json!({"page_id_too_long": 1}),
    )
    .await;
    let huge_event = base.replace("(test)", &"A".repeat(200_000));
    post_expect(
        &mut client,
        json_type,
        huge_event.as_bytes(),
        400,
        0,
        json!({"event_too_large": 1}),
    )
    .await;
    let s = next(1).start;
    let unicode = event(s).replace("\"page-", "\"장바구니/🛒/é\\u00e9-");
    post_expect(
        &mut client,
        json_type,
        unicode.as_bytes(),
        202,
        1,
        json!({}),
    )
    .await;
    accepted.push(s);

    // Deep nesting: at the top level, and inside an otherwise valid event.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    post_expect(
        &mut client,
        json_type,
        deep.as_bytes(),
        400,
        0,
        json!({"not_an_object": 1}),
    )
    .await;
    let deep_open = "{\"a\":".repeat(100_000);
    post_expect(
        &mut client,
        json_type,
        deep_open.as_bytes(),
        400,
        0,
        json!({"malformed_json": 1}),
    )
    .await;
    let deep_inside = base.replace(
        "\"dpr\":2",
        &format!("\"dpr\":{}{}", "[".repeat(1000), "]".repeat(1000)),
    );
    post_expect(
        &mut client,
        json_type,
        deep_inside.as_bytes(),
        400,
        0,
        json!({"malformed_json": 1}),
    )
    .await;

    // A mixed batch: the valid events are accepted, the rest counted.
    let good: Vec<u64> = next(3).collect();
    let mixed = format!(
        "[{},{},{},{},{}]",
        event(good[0]),
        base.replacen("\"x\":", "\"x\":\"1\",\"_x\":", 1),
        event(good[1]),
        "17",
        event(good[2])
    );
    post_expect(
        &mut client,
        json_type,
        mixed.as_bytes(),
        202,
        3,
        json!({"not_an_object": 1, "wrong_type": 1}),
    )
    .await;
    accepted.extend(&good);
    // A broken NDJSON line does not take its neighbours with it.
    let around: Vec<u64> = next(2).collect();
    let broken = format!(
        "{}\n{{\"event_type\":\"cl\n{}\n",
        event(around[0]),
        event(around[1])
    );
    post_expect(
        &mut client,
        "application/x-ndjson",
        broken.as_bytes(),
        202,
        2,
        json!({"malformed_json": 1}),
    )
    .await;
    accepted.extend(&around);
    // A big but allowed batch.
    let many: Vec<u64> = next(2000).collect();
    post_expect(
        &mut client,
        json_type,
        array(many.clone()).as_bytes(),
        202,
        2000,
        json!({}),
    )
    .await;
    accepted.extend(&many);

    // Content types, methods and paths.
    let s = next(1).start;
    for content_type in [
        "application/xml",
        "multipart/form-data; boundary=x",
        "image/png",
    ] {
        let response = client
            .post(CLICKS, content_type, event(s).as_bytes())
            .await
            .unwrap();
        assert_error(response, 415).await;
    }
    let response = client
        .request("POST", CLICKS, &[], event(s).as_bytes())
        .await
        .unwrap();
    assert_error(response, 415).await;
    assert_error(client.get(CLICKS).await.unwrap(), 405).await;
    assert_error(client.get("/v1/nothing-here").await.unwrap(), 404).await;

    // Bodies over the limit: declared (answered before the body is sent) and streamed.
    let head = format!(
        "POST {CLICKS} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        limit + 1
    );
    let mut big = server.client().await;
    big.write_raw(head.as_bytes()).await.unwrap();
    assert_error(big.read_response().await.unwrap(), 413).await;
    let mut streamed = server.client().await;
    let chunk = vec![b' '; 64 * 1024];
    let mut request = format!(
        "POST {CLICKS} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..(limit / chunk.len() + 2) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    streamed.write_raw(&request).await.unwrap();
    assert_error(streamed.read_response().await.unwrap(), 413).await;
    // Exactly at the limit is fine (whitespace around one event).
    let s = next(1).start;
    let one = event(s);
    let padded = format!("{one}{}", " ".repeat(limit - one.len()));
    post_expect(&mut client, json_type, padded.as_bytes(), 202, 1, json!({})).await;
    accepted.push(s);

    // Garbage that is not HTTP: the connection is refused or closed, the server lives on.
    let mut garbage = server.client().await;
    garbage
        .write_raw(b"\x00\x01GARBAGE \xff\r\n\r\n")
        .await
        .unwrap();
    if let Ok(response) = garbage.read_response().await {
        assert!((400..500).contains(&response.status));
    }

    // Still healthy, and the counters agree with the answers.
    let mut fresh = server.client().await;
    let health = fresh.get("/healthz").await.unwrap();
    assert_eq!(health.status, 200);
    let snapshot = server.metrics.snapshot();
    assert_eq!(snapshot.events_accepted, accepted.len() as u64);
    assert_eq!(snapshot.requests_with_status(413), 2);
    assert!(snapshot.requests_with_status(400) >= 30);
    let metrics = fresh.get("/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains(&format!(
            "collector_events_accepted_total {}",
            accepted.len()
        )),
        "{text}"
    );
    assert!(
        text.contains("collector_events_rejected_total{reason=\"wrong_type\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("collector_http_requests_total{status=\"415\"} 4"),
        "{text}"
    );

    let report = server.stop().await;
    assert_eq!(report.undelivered_events, 0);
    let records = records.await.unwrap();
    assert_exactly_once(&records, &accepted);
    // The unicode page id and every original field survive, on one line.
    let all: Vec<Value> = records
        .iter()
        .flat_map(|r| r.split(|b| *b == b'\n').filter(|l| !l.is_empty()))
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    assert!(all.iter().any(|v| {
        v["page_id"]
            .as_str()
            .is_some_and(|p| p.starts_with("장바구니/🛒/éé-"))
    }));
    assert!(
        all.iter()
            .all(|v| v["user_agent"] == "Mozilla/5.0 (test)" && v["dpr"] == 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_limited_while_another_passes() {
    let (sink, _receiver) = ChannelSink::new(1024);
    let config = CollectorConfig {
        rate_limit: Some(clickheatmap_collector::RateLimitConfig {
            events_per_second: 1.0,
            burst: 5.0,
        }),
        ..CollectorConfig::default()
    };
    let server = Running::start(config, Arc::new(sink)).await;
    let localhost = "127.0.0.1".parse().unwrap();
    let other = "127.0.0.2".parse().unwrap();
    let mut flooder = HttpClient::connect_from(localhost, server.address)
        .await
        .unwrap();
    let mut limited = None;
    for seq in 0..500 {
        // A forged X-Forwarded-For changes nothing: it is not trusted by default.
        let forged = format!("198.51.100.{}", seq % 250);
        let response = flooder
            .request(
                "POST",
                CLICKS,
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", &forged),
                ],
                event(seq).as_bytes(),
            )
            .await
            .unwrap();
        if response.status == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status, 202, "{}", response.text());
    }
    let limited = limited.expect("the flood was limited");
    assert!(
        limited
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().unwrap() >= 1)
    );
    assert!(limited.json()["error"].is_string());

    let mut neighbour = HttpClient::connect_from(other, server.address)
        .await
        .unwrap();
    let response = neighbour
        .post(CLICKS, "application/json", event(9999).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
    // The flooder is still limited; a big batch from it is refused as a whole.
    let response = flooder
        .post(CLICKS, "application/json", array(0..50).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 429);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_forwarded_for() {
    let (sink, _receiver) = ChannelSink::new(1024);
    let config = CollectorConfig {
        rate_limit: Some(clickheatmap_collector::RateLimitConfig {
            events_per_second: 1.0,
            burst: 3.0,
        }),
        forwarded_for_hops: 1,
        ..CollectorConfig::default()
    };
    let server = Running::start(config, Arc::new(sink)).await;
    let mut proxy = server.client().await;
    let mut statuses = Vec::new();
    for _ in 0..200 {
        // The client's own (forged) entry is on the left; the proxy appended the real one.
        let status = send_forwarded(&mut proxy, "10.9.9.9, 203.0.113.5").await;
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(
        send_forwarded(&mut proxy, "10.9.9.9, 198.51.100.7").await,
        202
    );
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .unwrap();
}

async fn send_forwarded(client: &mut HttpClient, forwarded: &str) -> u16 {
    client
        .request(
            "POST",
            CLICKS,
            &[
                ("content-type", "text/plain"),
                ("x-forwarded-for", forwarded),
            ],
            event(1).as_bytes(),
        )
        .await
        .unwrap()
        .status
}

/// A body that stops arriving is answered 408 once `body_read_timeout` has passed (a slow
/// sender cannot hold a request open), and a body that arrives in pieces within it is read
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_times_out_and_a_slow_one_is_read_whole() {
    let (sink, mut receiver) = ChannelSink::new(64);
    let config = CollectorConfig {
        rate_limit: None,
        // Room for a loaded machine between the slow body's pieces (150 ms of sleeps).
        body_read_timeout: Duration::from_secs(2),
        ..CollectorConfig::default()
    };
    let server = Running::start(config, Arc::new(sink)).await;
    let body = event(7);
    let head = format!(
        "POST {CLICKS} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );

    let mut stalled = server.client().await;
    stalled.write_raw(head.as_bytes()).await.unwrap();
    stalled.write_raw(&body.as_bytes()[..10]).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), stalled.read_response())
        .await
        .expect("answered before the test's own timeout")
        .unwrap();
    assert_error(response, 408).await;

    let mut slow = server.client().await;
    slow.write_raw(head.as_bytes()).await.unwrap();
    for piece in body.as_bytes().chunks(body.len() / 3 + 1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        slow.write_raw(piece).await.unwrap();
    }
    let response = slow.read_response().await.unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["accepted"], 1);
    server.stop().await;
    let record = receiver.recv().await.expect("the slow body's event");
    assert_eq!(record.iter().filter(|b| **b == b'\n').count(), 1);
}
