//! The Kinesis sink against a real moto server on 127.0.0.1: clicks go in over HTTP, and are
//! read back from every shard with GetShardIterator / GetRecords, each exactly once.
//!
//! moto cannot fail single records of a PutRecords call, so partial failures are tested with a
//! fake sink in `retries.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use bytes::Bytes;
use clickheatmap_collector::{CollectorConfig, KinesisSink, QueueConfig, RecordSink};
use clickheatmap_testkit::MotoServer;
use common::{Running, array, assert_exactly_once, event};

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .http_client(clickheatmap_tls::aws_http_client())
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(config)
}

async fn create_stream(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream on moto");
    let started = Instant::now();
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("DescribeStreamSummary on moto");
        let status = summary
            .stream_description_summary()
            .map(|s| s.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stream never became active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of every shard, from the start, with the number of shards that held any.
async fn read_all(client: &Client, name: &str) -> (Vec<Bytes>, usize) {
    let shards = client
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .expect("ListShards");
    let mut records = Vec::new();
    let mut shards_with_data = 0;
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator()
            .map(str::to_owned);
        let before = records.len();
        // Bounded: moto returns everything in a few pages; an empty page at the tip ends it.
        for _ in 0..100 {
            let Some(current) = iterator.take() else {
                break;
            };
            let page = client
                .get_records()
                .shard_iterator(current)
                .limit(1000)
                .send()
                .await
                .expect("GetRecords");
            for record in page.records() {
                records.push(Bytes::copy_from_slice(record.data().as_ref()));
            }
            if page.records().is_empty() {
                break;
            }
            iterator = page.next_shard_iterator().map(str::to_owned);
        }
        shards_with_data += usize::from(records.len() > before);
    }
    (records, shards_with_data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_posted_over_http_arrive_in_kinesis_exactly_once() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto starts");
    let kinesis = client(&moto.endpoint());
    let stream = "collector-clicks";
    create_stream(&kinesis, stream, 2).await;

    let sink = KinesisSink::new(kinesis.clone(), stream);
    sink.probe().await.expect("the stream is reachable");
    let config = CollectorConfig {
        rate_limit: None,
        // Small records so that there are many, spread over both shards by partition key.
        queue: QueueConfig {
            record_target_bytes: 4096,
            ..QueueConfig::default()
        },
        ..CollectorConfig::default()
    };
    let server = Running::start(config, Arc::new(sink)).await;
    let mut http = server.client().await;
    let mut accepted = Vec::new();
    for request in 0..6u64 {
        let seqs: Vec<u64> = (request * 100..request * 100 + 100).collect();
        let response = http
            .post(
                "/v1/clicks",
                "application/json",
                array(seqs.clone()).as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 202, "{}", response.text());
        accepted.extend(seqs);
    }
    // A mixed NDJSON body: the invalid line is counted, not forwarded.
    let body = format!(
        "{}\n{{\"event_type\":\"click\"}}\n{}\n",
        event(5000),
        event(5001)
    );
    let response = http
        .post("/v1/clicks", "application/x-ndjson", body.as_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 202);
    assert_eq!(response.json()["reasons"]["missing_field"], 1);
    accepted.extend([5000, 5001]);
    drop(http);

    let report = server.stop().await;
    assert_eq!(report.undelivered_events, 0);
    let (records, shards_with_data) = read_all(&kinesis, stream).await;
    assert!(records.len() > 10, "{} records", records.len());
    assert!(
        records.iter().all(|r| r.len() <= 4096 + 1024),
        "records stay near the target size"
    );
    assert_eq!(
        shards_with_data, 2,
        "partition keys spread records over both shards"
    );
    assert_exactly_once(&records, &accepted);
    drop(moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_reported_with_its_code() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto starts");
    let kinesis = client(&moto.endpoint());
    let sink = KinesisSink::new(kinesis.clone(), "no-such-stream");
    let probe = sink.probe().await.expect_err("the stream does not exist");
    assert_eq!(probe.code, "ResourceNotFoundException");
    let results = sink.put_records(vec![Bytes::from(event(1) + "\n")]).await;
    assert_eq!(results.len(), 1);
    let error = results[0].clone().expect_err("no stream, no put");
    assert_eq!(error.code, "ResourceNotFoundException");
    drop(moto);
}
