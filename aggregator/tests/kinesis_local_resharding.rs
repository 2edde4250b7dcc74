//! Resharding against kinesis-local (kinesis-mock from the npm registry), the emulator that
//! reshards faithfully (moto does not). kinesis-local listens on every interface, so it never
//! runs in the machine's network: the test re-executes itself under `unshare -rn`, in a user and
//! network namespace of its own that has nothing but a loopback, and starts kinesis-local there.
//!
//! In the namespace: a two-shard stream gets clicks, the aggregator process starts reading it,
//! the stream is split to four shards and two of the children are merged again, more clicks go
//! in after each step, and in the end the curated table (a local folder: S3 is the same code with
//! another store) holds exactly the input, SUM(clicks) per (page, window, cell). The aggregator's
//! log shows that each parent shard was read to its end before any of its children was started.
//!
//! The same scenario runs twice: with GetRecords polling, and with enhanced fan-out (a registered
//! stream consumer and SubscribeToShard event streams; kinesis-local implements them, moto does
//! not). kinesis-local never names child shards in its events, so in fan-out mode the parents are
//! finished by the aggregator's fallback (a shard that ListShards reports closed is read to its
//! end with GetRecords); against AWS the last event ends them.
//!
//! Skipped, with a message, without `unshare`, `ip` or the emulator (`npm ci --prefix
//! tests/kinesis-local`) — except under CI, where `.ci/run` installs them and a missing one fails.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType, StreamStatus};
use clickheatmap_aggregator::query::{TimeRange, read_rows};
use clickheatmap_aggregator::synth::Rng;
use clickheatmap_aggregator::time::now_ms;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

const INSIDE: &str = "CLICKHEATMAP_TEST_IN_NETNS";
const PORT: u16 = 4568;
const STREAM: &str = "reshard-clicks";
const METRICS_PORT: u16 = 9090;
/// Short windows, so that the test does not wait minutes for them to close.
const WINDOW_MS: i64 = 10_000;

type Sums = BTreeMap<(String, i64, i32, i32), i64>;

fn required() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty() && value != "false")
}

fn emulator() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/kinesis-local/node_modules/kinesis-local/main.js")
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    Polling,
    EnhancedFanOut,
}

#[test]
fn resharding_in_a_private_network() {
    in_a_private_network("resharding_in_a_private_network", Read::Polling);
}

#[test]
fn resharding_with_enhanced_fan_out_in_a_private_network() {
    in_a_private_network(
        "resharding_with_enhanced_fan_out_in_a_private_network",
        Read::EnhancedFanOut,
    );
}

fn in_a_private_network(test_name: &str, read: Read) {
    if std::env::var_os(INSIDE).is_some() {
        return inside_the_namespace(read);
    }
    let missing = if !emulator().is_file() {
        Some("kinesis-local is not installed (npm ci --prefix tests/kinesis-local)")
    } else if !found("unshare") || !found("ip") || !found("node") {
        Some("unshare, ip (iproute2) and node are needed to run kinesis-local in a namespace")
    } else {
        None
    };
    if let Some(message) = missing {
        assert!(!required(), "CI must run the resharding test: {message}");
        eprintln!("skipped: {message}");
        return;
    }
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the test in the namespace failed: {status}"
    );
}

/// Kills the process (and so the namespace's only server) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inside_the_namespace(read: Read) {
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(lo.success(), "bringing up the namespace's loopback");
    let dir = tempfile::tempdir().unwrap();
    let emulator_dir = emulator().parent().unwrap().to_owned();
    let emulator = KillOnDrop(
        Command::new("node")
            .arg("main.js")
            .current_dir(&emulator_dir)
            .env("KINESIS_MOCK_PLAIN_PORT", PORT.to_string())
            .env("KINESIS_MOCK_TLS_PORT", (PORT - 1).to_string())
            .env("LOG_LEVEL", "WARN")
            .env("CREATE_STREAM_DURATION", "200ms")
            .env("UPDATE_SHARD_COUNT_DURATION", "200ms")
            .env("MERGE_SHARDS_DURATION", "200ms")
            .env("REGISTER_STREAM_CONSUMER_DURATION", "200ms")
            .env("SHOULD_PERSIST_DATA", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", PORT)).is_err() {
        assert!(Instant::now() < deadline, "kinesis-local did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(reshard_while_consuming(dir.path(), read));
    drop(emulator);
}

fn client() -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{PORT}"))
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

async fn wait_active(client: &aws_sdk_kinesis::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(STREAM)
            .send()
            .await
            .unwrap();
        if summary
            .stream_description_summary()
            .unwrap()
            .stream_status()
            == &StreamStatus::Active
        {
            return;
        }
        assert!(Instant::now() < deadline, "the stream never became ACTIVE");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The grid formula, written out here independently of the aggregator.
fn cell(x: u32, width: u32) -> i32 {
    ((20 * x) / width).min(19) as i32
}

/// Puts `count` clicks, one per record with distinct partition keys (so every shard gets some),
/// stamped like live traffic: in order over the last two seconds. (Clicks older than the shard's
/// watermark minus the allowed lateness would be corrections, which wait minutes by design; not
/// this test's topic. The lateness is generous so that a loaded machine does not make them late.)
/// Adds them to `expected`.
async fn put_clicks(
    client: &aws_sdk_kinesis::Client,
    rng: &mut Rng,
    batch: u32,
    count: u32,
    expected: &mut Sums,
) {
    let start = now_ms() - 2_000;
    let step = 2_000 / i64::from(count);
    let mut entries = Vec::new();
    for index in 0..count {
        let page = format!("page-{}", rng.below(3));
        let (x, y) = (rng.below(1280) as u32, rng.below(720) as u32);
        let time = start + i64::from(index) * step;
        let window = time - time.rem_euclid(WINDOW_MS);
        *expected
            .entry((page.clone(), window, cell(x, 1280), cell(y, 720)))
            .or_insert(0) += 1;
        let event = serde_json::json!({
            "event_type": "click", "page_id": page, "x": x, "y": y,
            "viewport_width": 1280, "viewport_height": 720, "event_time_ms": time,
        });
        entries.push(
            PutRecordsRequestEntry::builder()
                .data(Blob::new(event.to_string()))
                .partition_key(format!("batch-{batch}-{index}"))
                .build()
                .unwrap(),
        );
    }
    for chunk in entries.chunks(250) {
        let output = client
            .put_records()
            .stream_name(STREAM)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(output.failed_record_count(), Some(0));
    }
}

async fn curated_sums(store: &Arc<dyn ObjectStore>) -> Sums {
    let rows = read_rows(store, &Path::from("curated_heatmap"), &TimeRange::default())
        .await
        .unwrap_or_default();
    let mut sums = Sums::new();
    for row in rows {
        *sums
            .entry((row.page_id, row.window_start, row.grid_x, row.grid_y))
            .or_insert(0) += row.clicks;
    }
    sums
}

/// Shard ids in `"shard":"..."` of the JSON log lines holding `message`, in log order.
fn shards_logged(log: &str, message: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| {
            let shard = &line["fields"]["shard"];
            shard
                .as_str()
                .or_else(|| line["shard"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

/// The aggregator's /metrics, for a failure message.
fn metrics() -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", METRICS_PORT)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A counter's value in the aggregator's /metrics.
fn counter(name: &str) -> Option<f64> {
    metrics()?.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn reshard_while_consuming(dir: &FsPath, read: Read) {
    let client = client();
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    wait_active(&client).await;
    let mut rng = Rng::new(now_ms() as u64);
    let mut expected = Sums::new();
    put_clicks(&client, &mut rng, 0, 400, &mut expected).await;

    let curated = dir.join("curated");
    std::fs::create_dir_all(&curated).unwrap();
    let config = dir.join("aggregator.json");
    let mut source = serde_json::json!({
        "type": "kinesis",
        "streamName": STREAM,
        "maxRecordsPerCall": 50,
        "idlePollInterval": "200ms",
        "shardDiscoveryInterval": "500ms",
        "idleWatermarkDelay": "1s"
    });
    if read == Read::EnhancedFanOut {
        source["enhancedFanOut"] = serde_json::json!({ "consumerName": "reshard-aggregator" });
    }
    std::fs::write(
        &config,
        serde_json::json!({
            "writerId": "agg",
            "window": { "size": "10s", "allowedLateness": "20s" },
            "source": source,
            "output": { "root": curated.to_str().unwrap() },
            "checkpoint": { "interval": "1s", "location": dir.join("checkpoints").to_str().unwrap() },
            "metricsAddress": format!("127.0.0.1:{METRICS_PORT}")
        })
        .to_string(),
    )
    .unwrap();
    let log_path = dir.join("aggregator.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut aggregator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_clickheatmap-aggregator"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{PORT}"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Split: every open shard gets two children.
    client
        .update_shard_count()
        .stream_name(STREAM)
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    wait_active(&client).await;
    put_clicks(&client, &mut rng, 1, 400, &mut expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Merge two adjacent open shards back into one.
    let shards = client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap();
    let mut open: Vec<_> = shards
        .shards()
        .iter()
        .filter(|shard| {
            shard
                .sequence_number_range()
                .is_some_and(|range| range.ending_sequence_number().is_none())
        })
        .collect();
    open.sort_by_key(|shard| {
        shard
            .hash_key_range()
            .map(|range| range.starting_hash_key().parse::<u128>().unwrap_or(0))
    });
    assert_eq!(open.len(), 4, "four open shards after the split");
    client
        .merge_shards()
        .stream_name(STREAM)
        .shard_to_merge(open[0].shard_id())
        .adjacent_shard_to_merge(open[1].shard_id())
        .send()
        .await
        .unwrap();
    wait_active(&client).await;
    put_clicks(&client, &mut rng, 2, 400, &mut expected).await;

    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&curated).unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sums = Sums::new();
    while Instant::now() < deadline {
        sums = curated_sums(&store).await;
        if sums == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if sums != expected {
        let mut missing_by_window: BTreeMap<i64, i64> = BTreeMap::new();
        for (key, clicks) in &expected {
            let found = sums.get(key).copied().unwrap_or(0);
            if found != *clicks {
                *missing_by_window.entry(key.1).or_insert(0) += clicks - found;
            }
        }
        eprintln!(
            "missing clicks by window start: {missing_by_window:?} (now {})",
            now_ms()
        );
        eprintln!("{}", metrics().unwrap_or_default());
    }
    assert_eq!(
        sums.values().sum::<i64>(),
        expected.values().sum::<i64>(),
        "clicks in the curated table vs put; log:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(sums, expected, "SUM(clicks) per (page, window, cell)");

    // Every parent was read to its end before any of its children started.
    let all = client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap();
    let closed = shards_logged(&log, "shard closed and fully read");
    let recovered = shards_logged(&log, "shard recovered");
    let line_of = |message: &str, shard: &str| {
        log.lines()
            .position(|line| line.contains(message) && line.contains(&format!("\"{shard}\"")))
    };
    let mut parents_checked = 0;
    for shard in all.shards() {
        for parent in [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
        {
            assert!(
                closed.iter().any(|s| s == parent),
                "parent {parent} not finished: {closed:?}"
            );
            let parent_done = line_of("shard closed and fully read", parent).unwrap();
            let child_started = line_of("shard recovered", shard.shard_id()).unwrap_or_else(|| {
                panic!("child {} never started: {recovered:?}", shard.shard_id())
            });
            assert!(
                parent_done < child_started,
                "child {} started before its parent {parent} was finished",
                shard.shard_id()
            );
            parents_checked += 1;
        }
    }
    // Two split parents (one child pair each, so four links) and one merge (two parents).
    assert_eq!(parents_checked, 6, "{recovered:?}");

    let fan_out_records = counter("clickheatmap_fan_out_records_total").unwrap_or(0.0);
    match read {
        Read::Polling => assert_eq!(fan_out_records, 0.0),
        Read::EnhancedFanOut => {
            // The consumer was registered and used: at least the last 400 clicks, which went
            // to shards that stayed open, arrived through subscriptions.
            let consumers = client
                .list_stream_consumers()
                .stream_arn(
                    client
                        .describe_stream_summary()
                        .stream_name(STREAM)
                        .send()
                        .await
                        .unwrap()
                        .stream_description_summary()
                        .unwrap()
                        .stream_arn(),
                )
                .send()
                .await
                .unwrap();
            let names: Vec<&str> = consumers
                .consumers()
                .iter()
                .map(|consumer| consumer.consumer_name())
                .collect();
            assert_eq!(names, ["reshard-aggregator"]);
            assert!(
                fan_out_records >= 400.0,
                "records through fan-out: {fan_out_records}; {}",
                metrics().unwrap_or_default()
            );
            assert!(counter("clickheatmap_subscribe_to_shard_calls_total").unwrap_or(0.0) >= 5.0);
        }
    }

    let stopped = Command::new("kill")
        .args(["-TERM", &aggregator.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let exit = aggregator.0.wait().unwrap();
    assert!(exit.success(), "graceful shutdown: {exit:?}");
    assert_eq!(curated_sums(&store).await, expected);
}
