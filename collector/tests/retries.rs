//! Delivery guarantees with fake sinks: partial failures are retried, a down sink fills the
//! queue (503, not dropped events), and a shutdown drains what was accepted.
//!
//! moto's Kinesis cannot be told to fail some records of a PutRecords call (it has no
//! per-record fault injection), so the partial failures here come from a fake `RecordSink`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clickheatmap_collector::{
    CollectorConfig, PutError, PutResults, QueueConfig, RecordSink, RetryPolicy, SinkFuture,
};
use clickheatmap_testkit::eventually;
use common::{Running, array, assert_exactly_once};

/// Keeps what it takes; fails every other record the first time it sees it (as Kinesis does
/// with `ProvisionedThroughputExceededException` on a hot shard), and every record of every
/// call while `down` is set.
#[derive(Default)]
struct FlakySink {
    taken: Mutex<Vec<Bytes>>,
    seen: Mutex<HashSet<Bytes>>,
    calls: AtomicUsize,
    down: AtomicBool,
}

impl FlakySink {
    fn taken(&self) -> Vec<Bytes> {
        self.taken.lock().unwrap().clone()
    }
}

impl RecordSink for FlakySink {
    fn put_records(&self, records: Vec<Bytes>) -> SinkFuture<'_, PutResults> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                let error = PutError::new("InternalFailure", "down for the test");
                return vec![Err(error); records.len()];
            }
            let mut seen = self.seen.lock().unwrap();
            let mut taken = self.taken.lock().unwrap();
            records
                .into_iter()
                .enumerate()
                .map(|(index, record)| {
                    let first_time = seen.insert(record.clone());
                    if first_time && index % 2 == 1 {
                        Err(PutError::throttled(
                            "ProvisionedThroughputExceededException",
                            "Rate exceeded for shard shardId-000000000001",
                        ))
                    } else {
                        taken.push(record);
                        Ok(())
                    }
                })
                .collect()
        })
    }

    fn name(&self) -> &'static str {
        "flaky"
    }
}

fn fast_retries(queue: QueueConfig) -> QueueConfig {
    QueueConfig {
        flush_interval: Duration::from_millis(20),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            budget: 2,
        },
        ..queue
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partially_failed_records_are_retried_until_taken_exactly_once() {
    let sink = Arc::new(FlakySink::default());
    let config = CollectorConfig {
        rate_limit: None,
        // Small records, so that each call carries several and some fail.
        queue: fast_retries(QueueConfig {
            record_target_bytes: 2048,
            ..QueueConfig::default()
        }),
        ..CollectorConfig::default()
    };
    let server = Running::start(config, sink.clone()).await;
    let mut client = server.client().await;
    let mut accepted = Vec::new();
    for request in 0..20u64 {
        let seqs: Vec<u64> = (request * 50..request * 50 + 50).collect();
        let response = client
            .post(
                "/v1/clicks",
                "application/json",
                array(seqs.clone()).as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 202);
        accepted.extend(seqs);
    }
    let queue = server.queue.clone();
    eventually("the queue to empty", Duration::from_secs(60), || {
        let queue = queue.clone();
        async move { (queue.stats().events == 0).then_some(()) }
    })
    .await;
    let metrics = server.metrics.snapshot();
    assert!(metrics.put_record_failures > 0, "{metrics:?}");
    assert!(
        metrics.put_retries >= metrics.put_record_failures,
        "{metrics:?}"
    );
    assert_eq!(metrics.events_put, accepted.len() as u64);
    let report = server.stop().await;
    assert_eq!(report.undelivered_events, 0);
    assert_exactly_once(&sink.taken(), &accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_sink_fills_the_queue_then_everything_accepted_is_delivered() {
    let sink = Arc::new(FlakySink::default());
    sink.down.store(true, Ordering::SeqCst);
    let config = CollectorConfig {
        rate_limit: None,
        queue: fast_retries(QueueConfig {
            capacity_events: 300,
            ..QueueConfig::default()
        }),
        ..CollectorConfig::default()
    };
    let server = Running::start(config, sink.clone()).await;
    let mut client = server.client().await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for request in 0..100u64 {
        let seqs: Vec<u64> = (request * 50..request * 50 + 50).collect();
        let response = client
            .post(
                "/v1/clicks",
                "application/json",
                array(seqs.clone()).as_bytes(),
            )
            .await
            .unwrap();
        match response.status {
            202 => accepted.extend(seqs),
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    let refused = refused.expect("a full queue answers 503");
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    assert_eq!(accepted.len(), 300);

    let mut probe = server.client().await;
    assert_eq!(probe.get("/readyz").await.unwrap().status, 503);
    let metrics = server.metrics.clone();
    eventually(
        "records to use up the retry budget",
        Duration::from_secs(60),
        || {
            let metrics = metrics.clone();
            async move { (metrics.snapshot().records_over_retry_budget > 0).then_some(()) }
        },
    )
    .await;
    let text = probe.get("/metrics").await.unwrap().text();
    assert!(text.contains("collector_queue_events 300"), "{text}");

    // The sink comes back: every accepted event arrives, once.
    sink.down.store(false, Ordering::SeqCst);
    let queue = server.queue.clone();
    eventually("the queue to empty", Duration::from_secs(60), || {
        let queue = queue.clone();
        async move { (queue.stats().events == 0).then_some(()) }
    })
    .await;
    eventually("readiness", Duration::from_secs(30), || {
        let address = server.address;
        async move {
            let mut client = clickheatmap_collector::client::HttpClient::connect(address)
                .await
                .unwrap();
            (client.get("/readyz").await.unwrap().status == 200).then_some(())
        }
    })
    .await;
    let response = client
        .post(
            "/v1/clicks",
            "application/json",
            array(10_000..10_010).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202);
    accepted.extend(10_000..10_010);
    let report = server.stop().await;
    assert_eq!(report.undelivered_events, 0);
    assert_exactly_once(&sink.taken(), &accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_queue_and_reports_what_it_could_not_deliver() {
    // A long flush interval: only the drain sends these.
    let sink = Arc::new(FlakySink::default());
    let config = CollectorConfig {
        rate_limit: None,
        queue: QueueConfig {
            flush_interval: Duration::from_secs(3600),
            ..fast_retries(QueueConfig::default())
        },
        ..CollectorConfig::default()
    };
    let server = Running::start(config, sink.clone()).await;
    let mut client = server.client().await;
    let response = client
        .post("/v1/clicks", "application/json", array(0..40).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202);
    drop(client);
    let report = server.stop().await;
    assert_eq!(report.undelivered_events, 0);
    assert_exactly_once(&sink.taken(), &(0..40).collect::<Vec<_>>());

    // A sink that never comes back: the drain gives up at its deadline and says how many.
    let sink = Arc::new(FlakySink::default());
    sink.down.store(true, Ordering::SeqCst);
    let config = CollectorConfig {
        rate_limit: None,
        queue: fast_retries(QueueConfig::default()),
        drain_timeout: Duration::from_millis(300),
        ..CollectorConfig::default()
    };
    let server = Running::start(config, sink.clone()).await;
    let mut client = server.client().await;
    let response = client
        .post("/v1/clicks", "application/json", array(0..25).as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202);
    drop(client);
    let report = server.stop().await;
    assert_eq!(report.undelivered_events, 25);
    assert!(report.undelivered_records >= 1);
    assert!(sink.calls.load(Ordering::SeqCst) >= 1);
}
