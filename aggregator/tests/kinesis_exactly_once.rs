//! The production path against a real emulator (moto server on 127.0.0.1): the aggregator
//! process consumes every shard of a Kinesis stream into S3, is killed with SIGKILL at random
//! moments several times and restarted, and in the end the curated table holds exactly the
//! valid input — SUM(clicks) per (page, window, cell) — and the dead letters exactly the invalid
//! records: no loss, no double count. A last SIGTERM must stop it cleanly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use clickheatmap_aggregator::synth::{Generator, Rng, SynthOptions, SynthRecord};
use clickheatmap_aggregator::time::now_ms;
use clickheatmap_testkit::{MotoServer, free_port};
use common::Sums;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

const STREAM: &str = "heatmap-demo-kds";
const BUCKET: &str = "heatmap-demo-curated";

fn kinesis_client(moto: &MotoServer) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .http_client(clickheatmap_tls::aws_http_client())
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .endpoint_url(moto.endpoint())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

fn s3(moto: &MotoServer) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
    )
}

/// The grid formula, written out here independently of the aggregator.
fn cell(x: f64, y: f64, width: u32, height: u32) -> (i32, i32) {
    let axis = |cells: f64, position: f64, extent: f64| {
        (cells * position / extent).floor().clamp(0.0, cells - 1.0) as i32
    };
    (
        axis(20.0, x, f64::from(width)),
        axis(20.0, y, f64::from(height)),
    )
}

/// Puts the synthetic records into the stream, several events per record; returns the expected
/// sums and the number of invalid records.
async fn fill_stream(client: &aws_sdk_kinesis::Client) -> (Sums, usize) {
    let options = SynthOptions {
        seed: 42,
        // About an hour of one-minute windows per shard: many flushes for the kills to hit.
        start_ms: now_ms() - 90 * 60_000,
        clicks_per_second: 1.0,
        invalid_share: 0.03,
        late_share: 0.01,
        ..SynthOptions::default()
    };
    let mut expected = Sums::new();
    let mut invalid = 0;
    let mut rng = Rng::new(7);
    let mut generator = Generator::new(options);
    let mut entries = Vec::new();
    for record_index in 0..1200 {
        let mut data = Vec::new();
        for _ in 0..1 + rng.below(5) {
            let Some(record) = generator.next() else {
                break;
            };
            match &record {
                SynthRecord::Click(click) => {
                    let (x, y) = click.json_coordinates();
                    let (gx, gy) = cell(x, y, click.viewport_width, click.viewport_height);
                    let window = click.event_time_ms - click.event_time_ms.rem_euclid(60_000);
                    *expected
                        .entry((click.page_id.to_owned(), window, gx, gy))
                        .or_insert(0) += 1;
                }
                SynthRecord::Invalid { .. } => invalid += 1,
            }
            record.write_json(&mut data);
            data.push(b'\n');
            // A malformed event spoils the rest of its line, so it always ends the record.
            if matches!(record, SynthRecord::Invalid { reason, .. } if reason == clickheatmap_aggregator::event::RejectReason::MalformedJson)
            {
                break;
            }
        }
        entries.push(
            PutRecordsRequestEntry::builder()
                .data(Blob::new(data))
                .partition_key(format!("key-{record_index}"))
                .build()
                .unwrap(),
        );
    }
    for chunk in entries.chunks(400) {
        let output = client
            .put_records()
            .stream_name(STREAM)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(output.failed_record_count(), Some(0));
    }
    (expected, invalid)
}

async fn curated_sums(store: &Arc<dyn ObjectStore>) -> Sums {
    common::curated_sums(store, "curated/curated_heatmap").await
}

async fn dead_letter_lines(store: &Arc<dyn ObjectStore>) -> usize {
    let files: Vec<_> = store
        .list(Some(&Path::from("curated/dead_letter")))
        .try_collect()
        .await
        .unwrap();
    let mut lines = 0;
    for file in files {
        let bytes = store
            .get(&file.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        lines += bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    lines
}

fn start_aggregator(moto: &MotoServer, config: &std::path::Path) -> KillOnDrop {
    start_replica(moto, config, None)
}

fn start_replica(moto: &MotoServer, config: &std::path::Path, index: Option<u32>) -> KillOnDrop {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickheatmap-aggregator"));
    if let Some(index) = index {
        command.env("CLICKHEATMAP_REPLICA_INDEX", index.to_string());
    }
    command
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .envs(moto.aws_env())
        .env(
            "RUST_LOG",
            std::env::var("AGGREGATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(KillOnDrop)
        .unwrap()
}

async fn scrape(port: u16) -> String {
    get(port, "/metrics").await.unwrap()
}

/// A GET on the aggregator's port; the whole response (head and body), or `None` when nothing
/// listens yet.
async fn get(port: u16, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await
    .unwrap()
}

/// The cells of `/v1/live?page=` as `(x, y) -> clicks` (empty while the replica is not up).
async fn live_cells(port: u16, page: &str) -> BTreeMap<(i64, i64), i64> {
    let Some(response) = get(port, &format!("/v1/live?page={page}")).await else {
        return BTreeMap::new();
    };
    let Some((_, body)) = response.split_once("\r\n\r\n") else {
        return BTreeMap::new();
    };
    let Ok(view) = serde_json::from_str::<serde_json::Value>(body) else {
        return BTreeMap::new();
    };
    view["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cell| Some(((cell[0].as_i64()?, cell[1].as_i64()?), cell[2].as_i64()?)))
        .collect()
}

fn add_cells(total: &mut BTreeMap<(i64, i64), i64>, cells: BTreeMap<(i64, i64), i64>) {
    for (cell, clicks) in cells {
        *total.entry(cell).or_insert(0) += clicks;
    }
}

/// The shards a running aggregator reads, from its per-shard gauge.
fn shards_in(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("clickheatmap_millis_behind_latest{shard=\""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Polls the curated table until it equals the input; fails with a sample of the difference.
async fn wait_for_sums(store: &Arc<dyn ObjectStore>, expected: &Sums, children: &mut [KillOnDrop]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sums = Sums::new();
    while Instant::now() < deadline {
        sums = curated_sums(store).await;
        if sums == *expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for child in children {
        let _ = child.kill();
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| sums.get(*k) != Some(v))
        .take(5)
        .collect();
    let extra: Vec<_> = sums
        .iter()
        .filter(|(k, v)| expected.get(*k) != Some(v))
        .take(5)
        .collect();
    panic!(
        "curated sums differ from the input: {} expected cells, {} found; expected vs found e.g. {missing:?} / {extra:?}",
        expected.len(),
        sums.len()
    );
}

/// SIGTERM, and a clean exit.
fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exit status {exit:?}");
}

fn write_config(path: &std::path::Path, metrics_port: u16, max_records: u32, replicas: u32) {
    write_config_with_window(path, metrics_port, max_records, replicas, "1m");
}

fn write_config_with_window(
    path: &std::path::Path,
    metrics_port: u16,
    max_records: u32,
    replicas: u32,
    window: &str,
) {
    std::fs::write(
        path,
        serde_json::json!({
            "window": { "size": window },
            "writerId": "agg",
            "source": {
                "type": "kinesis",
                "streamName": STREAM,
                "maxRecordsPerCall": max_records,
                "idlePollInterval": "200ms",
                "shardDiscoveryInterval": "1s",
                "idleWatermarkDelay": "1s"
            },
            "output": { "root": format!("s3://{BUCKET}/curated/") },
            "checkpoint": { "interval": "1s" },
            "metricsAddress": format!("127.0.0.1:{metrics_port}"),
            "replicas": { "count": replicas }
        })
        .to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_click_counted_once_across_sigkill_restarts() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let client = kinesis_client(&moto);
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    let (expected, invalid) = fill_stream(&client).await;
    assert!(expected.values().sum::<i64>() > 2500 && invalid > 50);

    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aggregator.json");
    write_config(&config, metrics_port, 25, 1);

    // Kill it hard, at random moments, several times.
    let mut rng = Rng::new(now_ms() as u64);
    for _ in 0..5 {
        let mut child = start_aggregator(&moto, &config);
        tokio::time::sleep(Duration::from_millis(300 + rng.below(2500) as u64)).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }

    let mut child = start_aggregator(&moto, &config);
    let store = s3(&moto);
    wait_for_sums(&store, &expected, std::slice::from_mut(&mut child)).await;
    assert_eq!(
        dead_letter_lines(&store).await,
        invalid,
        "each invalid record dead-lettered once"
    );

    // Observable while running.
    let metrics = scrape(metrics_port).await;
    assert!(
        metrics.contains("clickheatmap_checkpoints_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clickheatmap_millis_behind_latest{shard=\"shardId-"),
        "{metrics}"
    );
    // moto's responses went through the aggregator's own GetRecords decoder, not the SDK's.
    assert!(
        metrics.contains("\nclickheatmap_get_records_decoded_by_sdk_total 0\n"),
        "{metrics}"
    );

    // SIGTERM: checkpoint and leave cleanly.
    terminate(&mut child);
    assert_eq!(curated_sums(&store).await, expected);
    assert_eq!(dead_letter_lines(&store).await, invalid);
}

/// Two replicas split the shards of one stream by stable ordinal: each shard is read by exactly
/// one of them, and together they produce exactly the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_shards() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let client = kinesis_client(&moto);
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(4)
        .send()
        .await
        .unwrap();
    let (expected, _) = fill_stream(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut children: Vec<KillOnDrop> = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let path = dir.path().join(format!("replica-{index}.json"));
        write_config(&path, *port, 100, 2);
        children.push(start_replica(&moto, &path, Some(index as u32)));
    }
    let store = s3(&moto);
    wait_for_sums(&store, &expected, &mut children).await;
    let first = shards_in(&scrape(ports[0]).await);
    let second = shards_in(&scrape(ports[1]).await);
    assert!(
        !first.is_empty() && !second.is_empty(),
        "{first:?} {second:?}"
    );
    assert!(
        first.is_disjoint(&second),
        "a shard read by both: {first:?} {second:?}"
    );
    assert_eq!(first.len() + second.len(), 4, "{first:?} {second:?}");
    for child in &mut children {
        terminate(child);
    }
    assert_eq!(curated_sums(&store).await, expected);
}

/// The live endpoint of two replicas: each shows the open windows of the shards it reads, their
/// sum is every click not yet written, and a replica stopped with SIGTERM shows its windows
/// again after a restart (restored from its checkpoint), without having written them as final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_endpoints_show_every_open_click_across_replicas_and_restarts() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let client = kinesis_client(&moto);
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(4)
        .send()
        .await
        .unwrap();
    // Day-long windows, and every click at the next noon (UTC): less than a day ahead (the
    // aggregator refuses clicks more than 24 h ahead of its clock) and at least half a day before
    // its window ends, so nothing closes during the test, whatever the time of day.
    const DAY: i64 = 86_400_000;
    let now = now_ms();
    let noon_today = now - now.rem_euclid(DAY) + DAY / 2;
    let next_noon = if noon_today > now {
        noon_today
    } else {
        noon_today + DAY
    };
    let mut sums = Sums::new();
    put_clicks(&client, "live-page", 300, next_noon, DAY, &mut sums).await;
    // Every window stays open: the live answer is the sum over windows, per cell.
    let mut expected: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for ((_, _, x, y), clicks) in sums {
        *expected.entry((i64::from(x), i64::from(y))).or_insert(0) += clicks;
    }

    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let paths: Vec<_> = (0..2)
        .map(|index| dir.path().join(format!("replica-{index}.json")))
        .collect();
    let mut children: Vec<KillOnDrop> = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        write_config_with_window(&paths[index], *port, 100, 2, "1d");
        children.push(start_replica(&moto, &paths[index], Some(index as u32)));
    }

    let wait_for_live = |expected: BTreeMap<(i64, i64), i64>| async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let first = live_cells(ports[0], "live-page").await;
            let second = live_cells(ports[1], "live-page").await;
            let mut total = BTreeMap::new();
            add_cells(&mut total, first.clone());
            add_cells(&mut total, second.clone());
            if total == expected {
                return (first, second);
            }
            assert!(
                Instant::now() < deadline,
                "live cells {total:?} never reached {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (first, second) = wait_for_live(expected.clone()).await;
    // Each replica shows only its own shards' clicks.
    let clicks = |cells: &BTreeMap<(i64, i64), i64>| cells.values().sum::<i64>();
    assert!(
        clicks(&first) > 0 && clicks(&second) > 0,
        "{first:?} {second:?}"
    );
    assert_eq!(clicks(&first) + clicks(&second), 300);
    assert!(live_cells(ports[0], "another-page").await.is_empty());

    // A graceful stop checkpoints the open windows; the restarted replica shows them again.
    terminate(&mut children[1]);
    children[1] = start_replica(&moto, &paths[1], Some(1));
    wait_for_live(expected).await;
    let store = s3(&moto);
    assert!(
        curated_sums(&store).await.is_empty(),
        "open windows were written as final"
    );
    for child in &mut children {
        terminate(child);
    }
}

/// Shard leases in S3 (conditional writes on moto): one replica takes every shard; a second one
/// joins and receives half; the first is killed with SIGKILL and the second takes its shards
/// over once their leases expire. The curated table holds exactly the input in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_move_shards_when_a_replica_joins_or_dies() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let client = kinesis_client(&moto);
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(4)
        .send()
        .await
        .unwrap();
    let (mut expected, _) = fill_stream(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let start = |index: usize| {
        let path = dir.path().join(format!("replica-{index}.json"));
        write_config(&path, ports[index], 100, 1);
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["replicas"] = serde_json::json!({ "assignment": "leases", "leaseDuration": "3s" });
        std::fs::write(&path, config.to_string()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_clickheatmap-aggregator"));
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .envs(moto.aws_env())
            .env("CLICKHEATMAP_REPLICA_ID", format!("replica-{index}"))
            .env(
                "RUST_LOG",
                std::env::var("AGGREGATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let shards_of = |index: usize| async move {
        match get(ports[index], "/metrics").await {
            Some(metrics) => shards_in(&metrics),
            None => BTreeSet::new(),
        }
    };
    let wait_for = |what: &'static str, check: Box<SplitCheck>| async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (first, second) = (shards_of(0).await, shards_of(1).await);
            if check(&first, &second) {
                return (first, second);
            }
            if Instant::now() >= deadline {
                for port in ports {
                    eprintln!("{}", get(port, "/metrics").await.unwrap_or_default());
                }
                panic!("{what}: {first:?} / {second:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    let mut first = KillOnDrop(start(0));
    wait_for(
        "one replica takes every shard",
        Box::new(|a, _| a.len() == 4),
    )
    .await;
    let mut second = KillOnDrop(start(1));
    let (a, b) = wait_for(
        "a second replica receives half",
        Box::new(|a, b| a.len() == 2 && b.len() == 2 && a.is_disjoint(b)),
    )
    .await;
    assert_eq!(a.union(&b).count(), 4);

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // Fresh clicks after the death, for the survivor to count.
    put_clicks(
        &client,
        "after",
        300,
        now_ms() - 1_000,
        60_000,
        &mut expected,
    )
    .await;
    wait_for(
        "the survivor takes the dead replica's shards",
        Box::new(|_, b| b.len() == 4),
    )
    .await;
    let store = s3(&moto);
    wait_for_sums(&store, &expected, std::slice::from_mut(&mut second)).await;
    terminate(&mut second.0);
    assert_eq!(curated_sums(&store).await, expected);
}

/// A condition on the shards two replicas read.
type SplitCheck = dyn Fn(&BTreeSet<String>, &BTreeSet<String>) -> bool + Send;

/// Puts `count` clicks of `page`, one per record, at `first_ms`, `first_ms + 1`... and adds
/// them to `expected` (windows of `window_ms`, the 20×20 grid over a 1000×500 viewport).
async fn put_clicks(
    client: &aws_sdk_kinesis::Client,
    page: &str,
    count: u32,
    first_ms: i64,
    window_ms: i64,
    expected: &mut Sums,
) {
    let mut rng = Rng::new(first_ms as u64);
    let mut entries = Vec::new();
    for index in 0..count {
        let (x, y) = (rng.below(1000) as u32, rng.below(500) as u32);
        let time = first_ms + i64::from(index);
        let (gx, gy) = cell(f64::from(x), f64::from(y), 1000, 500);
        *expected
            .entry((page.to_owned(), time - time.rem_euclid(window_ms), gx, gy))
            .or_insert(0) += 1;
        let event = serde_json::json!({
            "event_type": "click", "page_id": page, "x": x, "y": y,
            "viewport_width": 1000, "viewport_height": 500, "event_time_ms": time,
        });
        entries.push(
            PutRecordsRequestEntry::builder()
                .data(Blob::new(event.to_string()))
                .partition_key(format!("{page}-{index}"))
                .build()
                .unwrap(),
        );
    }
    let output = client
        .put_records()
        .stream_name(STREAM)
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(output.failed_record_count(), Some(0));
}

/// Kills the process when dropped: a failed assertion must not leave it running (it would go on
/// writing to the test's stderr, which keeps whoever reads the test output waiting).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
