//! kinesis-local (kinesis-mock from the npm registry) for the tests that need what moto lacks:
//! faithful resharding and enhanced fan-out (SubscribeToShard). kinesis-local listens on every
//! interface, so it never runs in the machine's network: a test re-executes itself under
//! `unshare -rn`, in a user and network namespace of its own that has nothing but a loopback,
//! and starts kinesis-local there.
//!
//! Skipped, with a message, without `unshare`, `ip` or the emulator (`npm ci --prefix
//! tests/kinesis-local`) — except under CI, where `.ci/run` installs them and a missing one fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpStream;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use clickheatmap_aggregator::synth::Rng;
use clickheatmap_aggregator::time::now_ms;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

const INSIDE: &str = "CLICKHEATMAP_TEST_IN_NETNS";
pub const PORT: u16 = 4568;
pub const STREAM: &str = "local-clicks";
pub const METRICS_PORT: u16 = 9090;
/// Short windows, so that a test does not wait minutes for them to close.
pub const WINDOW_MS: i64 = 10_000;

pub use crate::common::Sums;

/// How the aggregator reads the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Polling,
    EnhancedFanOut,
}

use clickheatmap_testkit::in_ci as required;

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

/// Runs `scenario` (given a scratch directory) inside a private network namespace with
/// kinesis-local on 127.0.0.1:`PORT`. `test_name` is the calling test's own name: the test
/// binary runs again, in the namespace, with only that test.
pub fn in_a_private_network<Scenario, Fut>(test_name: &str, scenario: Scenario)
where
    Scenario: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    if std::env::var_os(INSIDE).is_some() {
        return inside_the_namespace(scenario);
    }
    let missing = if !emulator().is_file() {
        Some("kinesis-local is not installed (npm ci --prefix tests/kinesis-local)")
    } else if !found("unshare") || !found("ip") || !found("node") {
        Some("unshare, ip (iproute2) and node are needed to run kinesis-local in a namespace")
    } else {
        None
    };
    if let Some(message) = missing {
        assert!(!required(), "CI must run {test_name}: {message}");
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

/// Kills the process when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inside_the_namespace<Scenario, Fut>(scenario: Scenario)
where
    Scenario: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
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
            .env("LOG_LEVEL", "ERROR")
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
        .block_on(scenario(dir.path().to_owned()));
    drop(emulator);
}

pub fn client() -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .http_client(clickheatmap_tls::aws_http_client())
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{PORT}"))
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

pub async fn create_stream(client: &aws_sdk_kinesis::Client, shards: i32) {
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(client).await;
}

pub async fn wait_active(client: &aws_sdk_kinesis::Client) {
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
/// these tests' topic. The lateness is generous so that a loaded machine does not make them
/// late.) Adds them to `expected`.
pub async fn put_clicks(
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

pub fn curated_store(dir: &FsPath) -> Arc<dyn ObjectStore> {
    let curated = dir.join("curated");
    std::fs::create_dir_all(&curated).unwrap();
    Arc::new(LocalFileSystem::new_with_prefix(&curated).unwrap())
}

/// SUM(clicks) per (page, window, cell) in the curated table.
pub async fn curated_sums(store: &Arc<dyn ObjectStore>) -> Sums {
    crate::common::curated_sums(store, "curated_heatmap").await
}

/// Waits (at most two minutes) for the curated table to hold `expected`; then compares, with
/// what is missing per window and the aggregator's metrics and log tail on failure.
pub async fn assert_curated_equals(dir: &FsPath, expected: &Sums, log: &FsPath) {
    let store = curated_store(dir);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sums = Sums::new();
    while Instant::now() < deadline {
        sums = curated_sums(&store).await;
        if &sums == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut missing_by_window: BTreeMap<i64, i64> = BTreeMap::new();
    for (key, clicks) in expected {
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
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(
        sums.values().sum::<i64>(),
        expected.values().sum::<i64>(),
        "clicks in the curated table vs put; log:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(&sums, expected, "SUM(clicks) per (page, window, cell)");
}

/// Writes the aggregator's configuration: short windows, quick polls, the curated table and
/// checkpoints in `dir`.
pub fn write_config(dir: &FsPath, read: Read) -> PathBuf {
    let mut source = serde_json::json!({
        "type": "kinesis",
        "streamName": STREAM,
        "maxRecordsPerCall": 50,
        "idlePollInterval": "200ms",
        "shardDiscoveryInterval": "500ms",
        "idleWatermarkDelay": "1s"
    });
    if read == Read::EnhancedFanOut {
        source["enhancedFanOut"] = serde_json::json!({ "consumerName": "test-aggregator" });
    }
    let path = dir.join("aggregator.json");
    std::fs::write(
        &path,
        serde_json::json!({
            "writerId": "agg",
            "window": { "size": "10s", "allowedLateness": "20s" },
            "source": source,
            "output": { "root": dir.join("curated").to_str().unwrap() },
            "checkpoint": { "interval": "1s", "location": dir.join("checkpoints").to_str().unwrap() },
            "metricsAddress": format!("127.0.0.1:{METRICS_PORT}")
        })
        .to_string(),
    )
    .unwrap();
    path
}

/// Starts the aggregator binary on `config`, its JSON log appended to `log`.
pub fn start_aggregator(config: &FsPath, log: &FsPath) -> KillOnDrop {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_clickheatmap-aggregator"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
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
    )
}

/// SIGTERM, and a clean exit.
pub fn terminate(aggregator: &mut KillOnDrop) {
    let stopped = Command::new("kill")
        .args(["-TERM", &aggregator.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let exit = aggregator.0.wait().unwrap();
    assert!(exit.success(), "graceful shutdown: {exit:?}");
}

/// What the aggregator logs once its enhanced fan-out consumer is active and subscriptions can
/// start.
pub const FAN_OUT_STARTED: &str = "reading with enhanced fan-out";

/// Waits (up to a minute) until the log holds `count` lines containing `message`.
pub async fn wait_for_log_lines(log: &FsPath, message: &str, count: usize) {
    let what = format!("{count} log lines with {message:?} in {}", log.display());
    clickheatmap_testkit::eventually(&what, Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        (text.matches(message).count() >= count).then_some(())
    })
    .await;
}

/// Shard ids in `"shard":"..."` of the JSON log lines holding `message`, in log order.
pub fn shards_logged(log: &str, message: &str) -> Vec<String> {
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

/// The aggregator's /metrics.
pub fn metrics() -> Option<String> {
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
pub fn counter(name: &str) -> Option<f64> {
    metrics()?.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
