//! Shared helpers: start a collector on 127.0.0.1 with a given sink, build events, wait for
//! conditions (never for fixed times: the machine may be slow).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clickheatmap_collector::client::HttpClient;
use clickheatmap_collector::metrics::Metrics;
use clickheatmap_collector::queue::EventQueue;
use clickheatmap_collector::{Collector, CollectorConfig, DrainReport, RecordSink};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A collector serving on 127.0.0.1 in this test's runtime.
pub struct Running {
    pub address: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub queue: Arc<EventQueue>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<DrainReport, clickheatmap_collector::CollectorError>>,
}

impl Running {
    pub async fn start(config: CollectorConfig, sink: Arc<dyn RecordSink>) -> Running {
        let collector = Collector::new(config, sink).expect("valid configuration");
        let metrics = collector.metrics();
        let queue = collector.queue();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(collector.serve(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            address,
            metrics,
            queue,
            stop,
            task,
        }
    }

    pub async fn client(&self) -> HttpClient {
        HttpClient::connect(self.address).await.expect("connect")
    }

    /// Shuts down (graceful HTTP stop, then the drain) and returns the drain report.
    pub async fn stop(self) -> DrainReport {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(120), self.task)
            .await
            .expect("the collector stops within 120 s")
            .expect("the serve task does not panic")
            .expect("serve succeeds")
    }
}

/// A valid click carrying a unique `seq` (an extra field the collector must keep).
pub fn event(seq: u64) -> String {
    format!(
        r#"{{"event_type":"click","event_time":"2025-12-28T10:51:06.968Z","event_time_ms":{},"page_id":"page-{}","x":{}.5,"y":{},"viewport_width":1280,"viewport_height":720,"dpr":2,"user_agent":"Mozilla/5.0 (test)","seq":{seq}}}"#,
        1_766_919_066_968 + seq,
        seq % 5,
        seq % 1280,
        seq % 720
    )
}

/// A JSON array of events with the given seqs.
pub fn array(seqs: impl IntoIterator<Item = u64>) -> String {
    let events: Vec<String> = seqs.into_iter().map(event).collect();
    format!("[{}]", events.join(","))
}

/// Counts each `seq` found in NDJSON records; panics on a line that is not a JSON object.
pub fn seqs_in(records: &[Bytes]) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for record in records {
        assert!(record.ends_with(b"\n"), "records are NDJSON lines");
        for line in record.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let value: serde_json::Value =
                serde_json::from_slice(line).expect("every forwarded line is JSON");
            let seq = value["seq"].as_u64().expect("the seq field is kept");
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    seen
}

/// Asserts that every expected seq arrived exactly once and nothing else did.
pub fn assert_exactly_once(records: &[Bytes], expected: &[u64]) {
    let seen = seqs_in(records);
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "delivered more than once: {duplicates:?}"
    );
    let mut expected_sorted = expected.to_vec();
    expected_sorted.sort_unstable();
    let delivered: Vec<u64> = seen.keys().copied().collect();
    assert_eq!(
        delivered.len(),
        expected_sorted.len(),
        "delivered {} events, accepted {}",
        delivered.len(),
        expected_sorted.len()
    );
    assert_eq!(
        delivered, expected_sorted,
        "delivered events differ from accepted ones"
    );
}

/// Status, headers and body of an answer, to compare the collector's own HTTP path with
/// hyper's: but the date, and `connection` (the own path closes a connection whose refused body
/// has not all arrived, hyper reads on).
pub fn comparable(
    response: &clickheatmap_collector::client::HttpResponse,
) -> (u16, BTreeMap<String, String>, String) {
    let headers = response
        .headers
        .iter()
        .filter(|(name, _)| name != "date" && name != "connection")
        .cloned()
        .collect();
    (response.status, headers, response.text())
}
