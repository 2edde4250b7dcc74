//! Pods that really run: the project's image, built offline by `scripts/build-image.sh` from the
//! binaries `cargo test` built, imported into a single-node cluster (`../shared/kube/node-up.sh`),
//! the operator installed by the chart as a pod of that image, moto standing in for AWS; then a
//! pipeline with the collector and the viewer, clicks through the collector pod into the stream,
//! the aggregator pods and Parquet in the curated bucket, exact per (page, window, cell); the
//! viewer pod; aggregator pods deleted and SIGKILLed while clicks flow; rollouts of a new
//! window, grid and replica count.
//!
//! A test binary of its own (cargo runs test binaries one after the other), so that the node
//! never shares the machine's two cores with the control-plane suite's operators.
//!
//! Every client of the cluster runs inside the node's network namespace, so the test re-runs
//! this binary there (`in-node.sh`, test [`inside_the_node`]); the outer test builds the image,
//! starts and stops the node. The node has no cluster DNS and no kube-proxy: the operator pod
//! uses the host network to reach the API server, and the test stands in for cluster DNS by
//! giving the viewer `hostAliases` for the aggregator replicas' names.

// The control-plane suite's helpers (chart rendering, applying, waiting); this binary uses some.
#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clickheatmap_aggregator::location::Location;
use clickheatmap_aggregator::query::{TimeRange, read_rows};
use clickheatmap_crds::ClickHeatmapPipeline;
use clickheatmap_testkit::{MotoServer, free_port, workspace_root};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::harness::{USER, apply, condition, create_namespace, eventually, install_chart};

const IMAGE: &str = "localhost/clickheatmap:e2e";
const NAMESPACE: &str = "shop";
const PIPELINE: &str = "shop";
const CURATED: &str = "shop-curated";
const TABLE: &str = "curated_heatmap";
const COLUMNS: i64 = 20;
const ROWS: i64 = 20;
/// Pod start-ups on two busy cores: generous.
const WAIT: Duration = Duration::from_secs(240);

use clickheatmap_testkit::in_ci;

fn kube_dir() -> PathBuf {
    std::env::var_os("CLICKHEATMAP_KUBE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/kube"))
}

fn run(what: &str, command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops the node when the outer test ends, passing or not (`KEEP_NODE=1` keeps it).
struct Node {
    state: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_NODE").is_some() {
            eprintln!("node: kept at {}", self.state.display());
            return;
        }
        let _ = Command::new("bash")
            .arg(kube_dir().join("node-down.sh"))
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// Is the process of a pid file alive and still the program that wrote it (pids are reused
/// after a restart)?
fn daemon_alive(pid_file: &Path, program: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{}/comm", pid.trim()))
        .is_ok_and(|comm| program.starts_with(comm.trim()))
}

/// One node per machine: a run of this test that was killed (a machine restarted under it, a
/// cancelled CI job) leaves its state folder and the pods' cgroups behind, and `node-up.sh`
/// then refuses to start. Stop what such a run left when none of its daemons still runs; a node
/// that is still alive is another run's, and is left alone (node-up.sh then says so).
fn stop_leftover_nodes(kube: &Path) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let state = entry.path();
        let is_node = entry.file_name().to_string_lossy().starts_with("chm-node-")
            && state.join(".kube-node").exists();
        let alive = ["kubelet", "kube-apiserver", "containerd", "etcd"]
            .iter()
            .any(|daemon| daemon_alive(&state.join(format!("{daemon}.pid")), daemon));
        if is_node && !alive {
            eprintln!(
                "node: stopping what an interrupted run left in {}",
                state.display()
            );
            let _ = Command::new("bash")
                .arg(kube.join("node-down.sh"))
                .arg(&state)
                .stdin(Stdio::null())
                .status();
        }
    }
    // Pods' cgroups whose node left no state folder: removable once no process is in them.
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let pods = controller.path().join("kubepods");
        if pods.is_dir() && cgroup_tree_is_empty(&pods) {
            eprintln!("node: removing the empty pod cgroups {}", pods.display());
            remove_cgroup_tree(&pods);
        }
    }
}

fn cgroup_tree_is_empty(dir: &Path) -> bool {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs.trim().is_empty()
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().is_dir())
                .all(|entry| cgroup_tree_is_empty(&entry.path()))
        })
}

/// cgroup folders go with rmdir, children first (their files cannot be deleted).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The outer test: image, node, then the real test inside the node's network namespace.
#[test]
fn the_image_runs_the_whole_pipeline_as_pods_in_a_node() {
    let kube = kube_dir();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if !kube.join("node-up.sh").exists() || !root {
        let message = format!(
            "no single-node cluster: needs root and {}/node-up.sh (set CLICKHEATMAP_KUBE_DIR)",
            kube.display()
        );
        assert!(!in_ci(), "{message}");
        eprintln!("SKIP node e2e: {message}");
        return;
    }
    // The four binaries of this `cargo test` run (dev profile): no second, release build.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_clickheatmap-operator"))
        .parent()
        .expect("target/debug")
        .to_owned();
    for binary in [
        "clickheatmap-aggregator",
        "clickheatmap-collector",
        "clickheatmap-viewer",
    ] {
        assert!(
            bin_dir.join(binary).exists(),
            "{} is missing: run `cargo test --workspace` (it builds every binary) or \
             `cargo build --bins` first",
            bin_dir.join(binary).display()
        );
    }
    let archive = bin_dir
        .parent()
        .expect("target")
        .join("image/clickheatmap-e2e.tar");
    let started = Instant::now();
    let built = run(
        "scripts/build-image.sh",
        Command::new("bash")
            .arg(workspace_root().join("scripts/build-image.sh"))
            .args(["--profile", "dev", "--name", IMAGE, "--out"])
            .arg(&archive)
            .env("CARGO_TARGET_DIR", bin_dir.parent().expect("target")),
    );
    eprintln!(
        "node: image built in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        built.trim()
    );
    check_archive(&archive);

    stop_leftover_nodes(&kube);
    let state = PathBuf::from(format!("/tmp/chm-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let started = Instant::now();
    let node = Node {
        state: state.clone(),
    };
    run(
        "node-up.sh",
        Command::new("bash")
            .arg(kube.join("node-up.sh"))
            .arg(&state),
    );
    eprintln!("node: up in {:.1} s", started.elapsed().as_secs_f64());
    run(
        "load-image.sh",
        Command::new("bash")
            .arg(kube.join("load-image.sh"))
            .arg(&state)
            .arg(&archive)
            .arg(IMAGE),
    );

    // Moto's port inside the namespace (a fresh network: any port is free there).
    let moto_port = free_port();
    let status = Command::new("bash")
        .arg(kube.join("in-node.sh"))
        .arg(&state)
        .arg(std::env::current_exe().expect("this test binary"))
        .args([
            "inside_the_node",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CLICKHEATMAP_NODE_STATE", &state)
        .env("CLICKHEATMAP_NODE_MOTO_PORT", moto_port.to_string())
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{moto_port}"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .status()
        .expect("running the test inside the node");
    if !status.success() {
        eprintln!(
            "node: the component logs are in {}/logs (KEEP_NODE=1 keeps them)",
            state.display()
        );
    }
    assert!(status.success(), "the test inside the node failed");
    drop(node);
}

/// The built archive holds the four binaries and runs as the Dockerfile's user and entrypoint.
fn check_archive(archive: &Path) {
    let dir = tempfile::tempdir().expect("temp dir");
    run(
        "unpacking the image archive",
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir.path()),
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest");
    let config_file = manifest[0]["Config"].as_str().expect("config file");
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(config_file)).expect("config"))
            .expect("config json");
    let dockerfile =
        std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
    let last = |keyword: &str| {
        dockerfile
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(keyword))
            .map(str::trim)
            .map(str::to_owned)
    };
    assert_eq!(
        config["config"]["User"].as_str().map(str::to_owned),
        last("USER ")
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(&last("ENTRYPOINT ").expect("ENTRYPOINT")).expect("exec form");
    assert_eq!(
        config["config"]["Entrypoint"],
        json!(entrypoint),
        "the entrypoint of the Dockerfile"
    );
    let mut files = Vec::new();
    for layer in manifest[0]["Layers"].as_array().expect("layers") {
        let listing = run(
            "listing a layer",
            Command::new("tar")
                .arg("-tf")
                .arg(dir.path().join(layer.as_str().expect("layer"))),
        );
        files.extend(listing.lines().map(str::to_owned));
    }
    for binary in [
        "clickheatmap-operator",
        "clickheatmap-aggregator",
        "clickheatmap-collector",
        "clickheatmap-viewer",
    ] {
        let path = format!("usr/local/bin/{binary}");
        assert!(files.contains(&path), "{path} in the image");
        assert!(
            dockerfile.contains(&format!("/usr/local/bin/{binary}")),
            "the Dockerfile installs {binary} too"
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f == "etc/ssl/certs/ca-certificates.crt")
    );
    assert!(!files.iter().any(|f| f.ends_with("bin/sh")), "no shell");
}

// ---- inside the node's network namespace ---------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One HTTP/1.1 request to `ip:port`; the status and body.
fn http(method: &str, ip: &str, port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((ip, port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nOrigin: https://shop.example.com\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    // Chunked bodies (axum's JSON is not): keep it simple and accept only whole ones.
    Some((status, body.to_owned()))
}

/// Clicks as the JavaScript snippet sends them, and what they must add up to.
#[derive(Default)]
struct Clicks {
    /// (page, window start, grid x, grid y) -> clicks.
    expected: BTreeMap<(String, i64, i64, i64), i64>,
    sent: i64,
}

impl Clicks {
    /// A batch of `count` clicks on `page` at `event_time_ms`, spread over the viewport; the
    /// JSON array the snippet posts (text/plain).
    fn batch(
        &mut self,
        page: &str,
        count: usize,
        event_time_ms: i64,
        window_ms: i64,
        (columns, rows): (i64, i64),
    ) -> String {
        let events: Vec<Value> = (0..count)
            .map(|i| {
                let (width, height) = (1280.0_f64, 800.0_f64);
                let x = (i as f64 * 97.0) % width;
                let y = (i as f64 * 61.0) % height;
                let grid_x = ((columns as f64 * x / width).floor() as i64).clamp(0, columns - 1);
                let grid_y = ((rows as f64 * y / height).floor() as i64).clamp(0, rows - 1);
                let window = event_time_ms - event_time_ms.rem_euclid(window_ms);
                *self
                    .expected
                    .entry((page.to_owned(), window, grid_x, grid_y))
                    .or_default() += 1;
                self.sent += 1;
                json!({
                    "event_type": "click",
                    "event_time": "2026-12-03T00:00:00.000Z",
                    "event_time_ms": event_time_ms,
                    "page_id": page,
                    "x": x, "y": y,
                    "viewport_width": width, "viewport_height": height,
                    "dpr": 1, "user_agent": "node-e2e"
                })
            })
            .collect();
        Value::Array(events).to_string()
    }
}

async fn pods(client: &Client, component: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector =
        format!("clickheatmap.io/pipeline={PIPELINE},app.kubernetes.io/component={component}");
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items)
        .unwrap_or_default()
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

async fn ready_pod_ip(client: &Client, component: &str) -> String {
    eventually(&format!("a Ready {component} pod"), WAIT, || async {
        pods(client, component)
            .await
            .iter()
            .find(|p| is_ready(p))
            .map(pod_ip)
    })
    .await
}

/// Waits until the pipeline's current generation is Ready (every workload rolled out).
async fn wait_ready(api: &Api<ClickHeatmapPipeline>, what: &str) -> ClickHeatmapPipeline {
    eventually(what, WAIT, || async {
        let pipeline = api.get(PIPELINE).await.ok()?;
        let ready = condition(&pipeline, "Ready")?;
        (ready.status == "True" && ready.observed_generation == pipeline.metadata.generation)
            .then_some(pipeline)
    })
    .await
}

/// Every curated row in moto's S3, summed per (page, window start, cell).
async fn curated() -> BTreeMap<(String, i64, i64, i64), i64> {
    let mut sums = BTreeMap::new();
    let Ok(location) = Location::open(&format!("s3://{CURATED}/curated/")) else {
        return sums;
    };
    let table = location.child(TABLE);
    let Ok(rows) = read_rows(&location.store, &table, &TimeRange::default()).await else {
        return sums;
    };
    sum_cells(&mut sums, rows);
    sums
}

/// Adds each row's clicks to its (page, window start, x, y).
fn sum_cells(
    sums: &mut BTreeMap<(String, i64, i64, i64), i64>,
    rows: Vec<clickheatmap_aggregator::query::CuratedRow>,
) {
    for row in rows {
        *sums
            .entry((
                row.page_id,
                row.window_start,
                i64::from(row.grid_x),
                i64::from(row.grid_y),
            ))
            .or_insert(0) += row.clicks;
    }
}

/// Every click in the stream, per page, read from the start of every shard: tells a loss before
/// the stream (collector, emulator) from one after it (aggregator).
async fn stream_clicks() -> BTreeMap<String, i64> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(clickheatmap_tls::aws_http_client())
        .load()
        .await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let mut pages = BTreeMap::new();
    let Ok(shards) = kinesis
        .list_shards()
        .stream_name("shop-clicks")
        .send()
        .await
    else {
        return pages;
    };
    for shard in shards.shards() {
        let Ok(start) = kinesis
            .get_shard_iterator()
            .stream_name("shop-clicks")
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
        else {
            continue;
        };
        let mut iterator = start.shard_iterator().map(str::to_owned);
        while let Some(current) = iterator.take() {
            let Ok(batch) = kinesis.get_records().shard_iterator(current).send().await else {
                break;
            };
            for record in batch.records() {
                for line in String::from_utf8_lossy(record.data().as_ref()).lines() {
                    if let Ok(event) = serde_json::from_str::<Value>(line)
                        && let Some(page) = event["page_id"].as_str()
                    {
                        *pages.entry(page.to_owned()).or_insert(0) += 1;
                    }
                }
            }
            if batch.records().is_empty() {
                break;
            }
            iterator = batch.next_shard_iterator().map(str::to_owned);
        }
    }
    pages
}

/// What the workloads say about the clicks, for a failure report: the collector's and every
/// aggregator replica's counters, and the dead letters.
async fn click_accounting(client: &Client) -> String {
    let mut report = String::new();
    for (component, port) in [("collector", 8080), ("aggregator", 9090)] {
        for pod in pods(client, component).await {
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let metrics = http("GET", &ip, port, "/metrics", "")
                .map(|(_, body)| body)
                .unwrap_or_default();
            let lines: Vec<&str> = metrics
                .lines()
                .filter(|line| {
                    !line.starts_with('#')
                        && [
                            "events_accepted",
                            "events_put",
                            "events_rejected",
                            "put_record_failures",
                            "records_over_retry",
                            "clickheatmap_records_total",
                            "clickheatmap_clicks_total",
                            "late_clicks",
                            "rejected_total",
                            "checkpoints_total",
                        ]
                        .iter()
                        .any(|name| line.contains(name))
                })
                .collect();
            report.push_str(&format!("\n  {}: {}", pod.name_any(), lines.join("; ")));
        }
    }
    // The aggregators' own story: leases, recoveries, shutdowns (this and the previous
    // container of each pod).
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for pod in pods(client, "aggregator").await {
        for previous in [true, false] {
            let params = kube::api::LogParams {
                previous,
                ..kube::api::LogParams::default()
            };
            let Ok(log) = pod_api.logs(&pod.name_any(), &params).await else {
                continue;
            };
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| !line.contains("\"DEBUG\""))
                .collect();
            report.push_str(&format!(
                "\n  --- {} ({}):\n    {}",
                pod.name_any(),
                if previous {
                    "previous container"
                } else {
                    "current container"
                },
                lines.join("\n    ")
            ));
        }
    }
    report.push_str(&format!(
        "\n  clicks per page in the stream itself: {:?}",
        stream_clicks().await
    ));
    if let Ok(location) = Location::open(&format!("s3://{CURATED}/curated/")) {
        use futures_util::TryStreamExt;
        let dead: Vec<_> = location
            .store
            .list(Some(&location.child("dead_letter")))
            .try_collect()
            .await
            .unwrap_or_default();
        report.push_str(&format!("\n  dead-letter objects: {}", dead.len()));
        let files: Vec<_> = location
            .store
            .list(Some(&location.child(TABLE)))
            .try_collect()
            .await
            .unwrap_or_default();
        let names: Vec<String> = files.iter().map(|f| f.location.to_string()).collect();
        report.push_str(&format!("\n  curated files: {names:?}"));
    }
    report
}

/// Waits until the curated table holds exactly `clicks` (no click lost, none counted twice).
async fn wait_exact_in(client: Option<&Client>, clicks: &Clicks, what: &str) {
    let started = Instant::now();
    let mut last = BTreeMap::new();
    while started.elapsed() < WAIT {
        last = curated().await;
        if last == clicks.expected {
            eprintln!(
                "node: {what}: {} clicks exact in the curated table after {:.1} s",
                clicks.sent,
                started.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let total: i64 = last.values().sum();
    let missing: Vec<_> = clicks
        .expected
        .iter()
        .filter(|(key, count)| last.get(*key) != Some(count))
        .take(5)
        .collect();
    let actual: Vec<_> = missing
        .iter()
        .map(|(key, _)| (key, last.get(*key)))
        .collect();
    let extra: Vec<_> = last
        .iter()
        .filter(|(key, _)| !clicks.expected.contains_key(*key))
        .take(5)
        .collect();
    let accounting = match client {
        Some(client) => click_accounting(client).await,
        None => String::new(),
    };
    panic!(
        "{what}: the curated table holds {total} clicks, {} were sent; first differences \
         (expected): {missing:?}; found there: {actual:?}; unexpected keys: {extra:?}{accounting}",
        clicks.sent
    );
}

async fn post_clicks(collector: &str, body: &str) {
    let mut tries = 0;
    loop {
        match http("POST", collector, 8080, "/v1/clicks", body) {
            Some((status, _)) if (200..300).contains(&status) => return,
            other => {
                tries += 1;
                assert!(tries < 30, "the collector refused clicks: {other:?}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn patch_spec(api: &Api<ClickHeatmapPipeline>, spec: Value) {
    api.patch(
        PIPELINE,
        &PatchParams::apply(USER).force(),
        &Patch::Apply(json!({
            "apiVersion": "clickheatmap.io/v1alpha1",
            "kind": "ClickHeatmapPipeline",
            "metadata": {"name": PIPELINE},
            "spec": spec,
        })),
    )
    .await
    .expect("changing the pipeline");
}

fn pipeline_spec(window: &str, columns: i64, replicas: i64) -> Value {
    json!({
        "region": "us-east-1",
        "stream": {"name": "shop-clicks", "shards": 2},
        "buckets": {"raw": "shop-raw", "curated": CURATED, "queryResults": "shop-athena"},
        "rawArchive": {"roleArn": "arn:aws:iam::123456789012:role/shop-firehose"},
        "aggregation": {
            "window": window,
            "allowedLateness": "5s",
            "grid": {"columns": columns, "rows": ROWS},
            "replicas": replicas
        },
        "collector": {"enabled": true, "allowedOrigins": ["https://shop.example.com"]},
        "viewer": {"enabled": true, "engine": "Embedded", "live": true},
        // The shortest data-plane check the CRD allows: the test reads the conditions soon.
        "health": {"checkInterval": "10s"}
    })
}

/// Stands in for cluster DNS: the viewer resolves the aggregator replicas' names
/// (`shop-aggregator-N.shop-aggregator.shop.svc`) through `hostAliases` with their pod IPs.
async fn point_viewer_at_aggregators(client: &Client) -> Vec<String> {
    let aggregators = eventually("Ready aggregator pods", WAIT, || async {
        let pods = pods(client, "aggregator").await;
        (!pods.is_empty() && pods.iter().all(is_ready)).then_some(pods)
    })
    .await;
    let aliases: Vec<Value> = aggregators
        .iter()
        .map(|pod| {
            let name = pod.name_any();
            json!({"ip": pod_ip(pod), "hostnames": [format!("{name}.shop-aggregator.{NAMESPACE}.svc")]})
        })
        .collect();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .patch(
            "shop-viewer",
            &PatchParams::apply("e2e-dns-stand-in").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "shop-viewer"},
                "spec": {"template": {"spec": {"hostAliases": aliases}}}
            })),
        )
        .await
        .expect("hostAliases for the viewer");
    aggregators.iter().map(pod_ip).collect()
}

fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// RSS of each workload's container process, found through containerd (the host sees them).
fn workload_rss(state: &str) -> Vec<(String, u64)> {
    let Ok(output) = Command::new("ctr")
        .args([
            "--address",
            &format!("{state}/run/containerd.sock"),
            "-n",
            "k8s.io",
            "tasks",
            "ls",
        ])
        .output()
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let command = String::from_utf8_lossy(&cmdline);
        if let Some(name) = command
            .split('\0')
            .next()
            .and_then(|c| c.strip_prefix("/usr/local/bin/"))
            && let Some(rss) = rss_kib(pid)
        {
            found.push((name.to_owned(), rss));
        }
    }
    found.sort();
    found
}

/// SIGKILL through the container runtime (what the OOM killer or a node failure does).
fn sigkill_container(state: &str, pod: &Pod) {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .expect("a running container");
    let id = id.trim_start_matches("containerd://");
    run(
        "ctr tasks kill",
        Command::new("ctr").args([
            "--address",
            &format!("{state}/run/containerd.sock"),
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "--signal",
            "SIGKILL",
            id,
        ]),
    );
}

#[tokio::test]
#[ignore = "runs inside the node's network namespace; started by \
            the_image_runs_the_whole_pipeline_as_pods_in_a_node"]
async fn inside_the_node() {
    let Ok(state) = std::env::var("CLICKHEATMAP_NODE_STATE") else {
        eprintln!("SKIP: only the_image_runs_the_whole_pipeline_as_pods_in_a_node runs this");
        return;
    };
    let moto_port: u16 = std::env::var("CLICKHEATMAP_NODE_MOTO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("CLICKHEATMAP_NODE_MOTO_PORT");
    // On every address of the namespace: the node's 10.88.0.1 is where pods reach it.
    let _moto = MotoServer::start_on("0.0.0.0", moto_port);
    let endpoint_for_pods = format!("http://10.88.0.1:{moto_port}");
    let client = Client::try_default()
        .await
        .expect("kube client (KUBECONFIG)");
    let kubeconfig = std::fs::read_to_string(format!("{state}/kubeconfig")).expect("kubeconfig");
    let apiserver_port = kubeconfig
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .expect("apiserver port")
        .to_owned();

    // The operator: the chart, as a pod of the image. Host network + the API server's address
    // (no kube-proxy here), the emulator flags for itself and its workloads.
    let operator_ns = "clickheatmap-system";
    create_namespace(&client, operator_ns).await;
    let values = json!({
        "image": {"repository": "localhost/clickheatmap", "tag": "e2e", "pullPolicy": "Never"},
        "hostNetwork": true,
        "operator": {
            "logFormat": "text",
            "awsEmulator": {"endpointUrl": endpoint_for_pods, "credentialsSecret": "moto-credentials"},
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": apiserver_port},
                {"name": "AWS_ACCESS_KEY_ID", "value": "testing"},
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "testing"},
                {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
                {"name": "RUST_LOG", "value": "info"}
            ]
        }
    });
    install_chart(&client, operator_ns, values).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), operator_ns);
    eventually("the operator pod Ready", WAIT, || async {
        let deployment = deployments.get("clickheatmap-operator").await.ok()?;
        (deployment.status?.available_replicas? >= 1).then_some(())
    })
    .await;
    eprintln!("node: the operator runs as a pod of {IMAGE}");

    // The pipeline, with the credentials its workloads use for the emulator.
    create_namespace(&client, NAMESPACE).await;
    apply(
        &client,
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "moto-credentials", "namespace": NAMESPACE},
                "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}}),
        Some(NAMESPACE),
    )
    .await;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), NAMESPACE);
    let applied_at = Instant::now();
    apply(
        &client,
        &json!({"apiVersion": "clickheatmap.io/v1alpha1", "kind": "ClickHeatmapPipeline",
                "metadata": {"name": PIPELINE, "namespace": NAMESPACE},
                "spec": pipeline_spec("10s", COLUMNS, 1)}),
        Some(NAMESPACE),
    )
    .await;
    let pipeline = wait_ready(&api, "the pipeline Ready with its pods").await;
    let ready_after = applied_at.elapsed();
    for type_ in ["AggregatorReady", "CollectorReady", "ViewerReady"] {
        let c = condition(&pipeline, type_).unwrap_or_else(|| panic!("{type_}"));
        assert_eq!(c.status, "True", "{type_}: {}", c.message);
        assert!(
            c.message.contains("1 of 1 pods ready"),
            "{type_}: {}",
            c.message
        );
    }
    let collector = ready_pod_ip(&client, "collector").await;

    // The first click, timed from `kubectl apply` to the curated table.
    let mut clicks = Clicks::default();
    let window_ms = 10_000;
    let body = clicks.batch("home", 1, now_ms(), window_ms, (COLUMNS, ROWS));
    post_clicks(&collector, &body).await;
    wait_exact_in(Some(&client), &clicks, "the first click").await;
    let first_click = applied_at.elapsed();
    eprintln!(
        "node: kubectl apply -> Ready {:.1} s, -> first click queryable {:.1} s",
        ready_after.as_secs_f64(),
        first_click.as_secs_f64()
    );

    // Steady load: pages, cells and windows; exact per (page, window, cell).
    for round in 0..10 {
        for page in ["home", "pricing", "docs"] {
            let body = clicks.batch(page, 40 + round, now_ms(), window_ms, (COLUMNS, ROWS));
            post_clicks(&collector, &body).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("node: pod RSS under load (KiB): {:?}", workload_rss(&state));
    wait_exact_in(Some(&client), &clicks, "steady clicks").await;

    // The data plane as the operator pod reads it from the aggregator pod's progress report in
    // moto's S3: flowing, fresh, every click counted, Argo CD Healthy.
    let sent = u64::try_from(clicks.sent).expect("clicks");
    let flowing = eventually(
        "DataFlowing and Fresh from the aggregator's report",
        WAIT,
        || async {
            let pipeline = api.get(PIPELINE).await.ok()?;
            let data_plane = pipeline.status.as_ref()?.data_plane.clone()?;
            (condition(&pipeline, "DataFlowing")?.reason == "ClicksAccepted"
                && condition(&pipeline, "Fresh")?.status == "True"
                && data_plane.accepted_total == sent)
                .then_some(pipeline)
        },
    )
    .await;
    let data_plane = flowing
        .status
        .as_ref()
        .and_then(|s| s.data_plane.clone())
        .expect("dataPlane");
    assert_eq!(data_plane.replicas_reporting, 1, "{data_plane:?}");
    assert_eq!(data_plane.shards, 2, "{data_plane:?}");
    assert!(data_plane.files_committed > 0, "{data_plane:?}");
    assert_eq!(data_plane.rejected_total, 0, "{data_plane:?}");
    assert!(
        data_plane.last_committed_window_end.is_some(),
        "{data_plane:?}"
    );
    let health = harness::argo_health(&serde_json::to_value(&flowing).expect("json"));
    assert_eq!(health.map(|(status, _)| status).as_deref(), Some("Healthy"));
    eprintln!("node: data plane from the aggregator's report: {data_plane:?}");

    // The viewer pod: closed windows from the table (embedded engine over S3).
    let viewer = ready_pod_ip(&client, "viewer").await;
    let (from, to) = (now_ms() - 3_600_000, now_ms() + 60_000);
    let home_total: i64 = clicks
        .expected
        .iter()
        .filter(|((page, ..), _)| page == "home")
        .map(|(_, count)| count)
        .sum();
    let served = eventually("the viewer serves the heatmap", WAIT, || async {
        let (status, body) = http(
            "GET",
            &viewer,
            8080,
            &format!("/api/heatmap?page=home&from={from}&to={to}"),
            "",
        )?;
        let json: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && json["total"].as_i64() == Some(home_total)).then_some(json)
    })
    .await;
    let mut per_cell: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for ((page, _, x, y), count) in &clicks.expected {
        if page == "home" {
            *per_cell.entry((*x, *y)).or_default() += count;
        }
    }
    let cells: BTreeMap<(i64, i64), i64> = served["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| {
            (
                (c[0].as_i64().unwrap_or(-1), c[1].as_i64().unwrap_or(-1)),
                c[2].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(cells, per_cell, "the viewer's cells are the table's");

    // Live: the open window, from the aggregator replicas through the viewer.
    point_viewer_at_aggregators(&client).await;
    // A click is live only until its window closes (10-20 s): the viewer's new pod must be
    // serving before the click is posted, not still starting.
    let has_aliases = |pod: &Pod| pod.spec.as_ref().is_some_and(|s| s.host_aliases.is_some());
    eventually(
        "the viewer pod with the aggregators' names Ready",
        WAIT,
        || async {
            let viewers = pods(&client, "viewer").await;
            viewers
                .iter()
                .any(|p| is_ready(p) && has_aliases(p))
                .then_some(())
        },
    )
    .await;
    let live_before = now_ms();
    let body = clicks.batch("live", 7, live_before, window_ms, (COLUMNS, ROWS));
    post_clicks(&collector, &body).await;
    eventually(
        "the viewer's live mode shows the open window",
        WAIT,
        || async {
            let viewer = pods(&client, "viewer")
                .await
                .into_iter()
                .find(|p| is_ready(p) && has_aliases(p))?;
            let (status, body) = http("GET", &pod_ip(&viewer), 8080, "/api/live?page=live", "")?;
            let json: Value = serde_json::from_str(&body).ok()?;
            let total: i64 = json["cells"]
                .as_array()?
                .iter()
                .filter_map(|c| c[2].as_i64())
                .sum();
            (status == 200 && total >= 1).then_some(())
        },
    )
    .await;
    wait_exact_in(
        Some(&client),
        &clicks,
        "live clicks, once their window closed",
    )
    .await;

    // Rollout: replicas 1 -> 2. The viewer follows (its live endpoints name both replicas).
    patch_spec(&api, pipeline_spec("10s", COLUMNS, 2)).await;
    let pipeline = wait_ready(&api, "two aggregator replicas Ready").await;
    let aggregator = condition(&pipeline, "AggregatorReady").expect("AggregatorReady");
    assert!(
        aggregator.message.contains("2 of 2 pods ready"),
        "{}",
        aggregator.message
    );
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);

    // Pods deleted and SIGKILLed while clicks flow: the StatefulSet brings them back, and not a
    // click is lost or counted twice.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for batch in 0..30 {
        let body = clicks.batch("chaos", 25, now_ms(), window_ms, (COLUMNS, ROWS));
        post_clicks(&collector, &body).await;
        if batch == 5 {
            pod_api
                .delete("shop-aggregator-0", &DeleteParams::default())
                .await
                .expect("deleting an aggregator pod");
            eprintln!("node: deleted shop-aggregator-0 while clicks flow");
        }
        if batch == 10 {
            let victim = pod_api.get("shop-aggregator-1").await.expect("pod 1");
            sigkill_container(&state, &victim);
            eprintln!("node: SIGKILLed the container of shop-aggregator-1 while clicks flow");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The kubelet may report pod 1 ready before it has noticed its container died: the restart
    // is waited for, not read once.
    eventually(
        "both aggregator pods back, the SIGKILLed container restarted in place",
        WAIT,
        || async {
            let set = stateful_sets.get("shop-aggregator").await.ok()?;
            let restarted = pod_api.get("shop-aggregator-1").await.ok()?;
            let restarts = restarted
                .status?
                .container_statuses?
                .first()
                .map(|c| c.restart_count)?;
            (set.status?.ready_replicas? == 2 && restarts >= 1).then_some(())
        },
    )
    .await;
    wait_exact_in(
        Some(&client),
        &clicks,
        "clicks across a deleted and a SIGKILLed pod",
    )
    .await;

    // Rollout: a new window (20 s). The pods restart with it; windows already written keep
    // their size; new clicks fall in 20 s windows.
    let hash_before = template_hash(&stateful_sets).await;
    patch_spec(&api, pipeline_spec("20s", COLUMNS, 2)).await;
    wait_ready(&api, "the new window rolled out").await;
    assert_ne!(
        template_hash(&stateful_sets).await,
        hash_before,
        "a new pod template"
    );
    let window_ms = 20_000;
    let body = clicks.batch("after-window", 30, now_ms(), window_ms, (COLUMNS, ROWS));
    post_clicks(&ready_pod_ip(&client, "collector").await, &body).await;
    wait_exact_in(Some(&client), &clicks, "clicks in 20 s windows").await;

    // Rollout: a new grid (10 columns). The viewer follows it too.
    let columns = 10;
    patch_spec(&api, pipeline_spec("20s", columns, 2)).await;
    wait_ready(&api, "the new grid rolled out").await;
    let body = clicks.batch("after-grid", 30, now_ms(), window_ms, (columns, ROWS));
    post_clicks(&ready_pod_ip(&client, "collector").await, &body).await;
    wait_exact_in(Some(&client), &clicks, "clicks on the 10-column grid").await;
    let viewer_env = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("shop-viewer")
        .await
        .expect("viewer")
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        viewer_env
            .iter()
            .any(|e| e.name == "CLICKHEATMAP_VIEWER_COLUMNS" && e.value.as_deref() == Some("10"))
    );

    // Rollout: replicas 0 pauses the aggregator (no pod), Ready stays True, Argo CD says
    // Suspended; clicks wait in the stream and are counted once replicas come back.
    patch_spec(&api, pipeline_spec("20s", columns, 0)).await;
    let paused = wait_ready(&api, "the aggregator paused").await;
    let aggregator = condition(&paused, "AggregatorReady").expect("AggregatorReady");
    assert_eq!(aggregator.reason, "Paused", "{}", aggregator.message);
    assert!(
        pods(&client, "aggregator").await.is_empty(),
        "no aggregator pod while paused"
    );
    let health = harness::argo_health(&serde_json::to_value(&paused).expect("json"));
    assert_eq!(
        health.map(|(status, _)| status).as_deref(),
        Some("Suspended")
    );
    eventually("DataFlowing Paused", WAIT, || async {
        let pipeline = api.get(PIPELINE).await.ok()?;
        (condition(&pipeline, "DataFlowing")?.reason == "Paused").then_some(())
    })
    .await;
    let body = clicks.batch("while-paused", 20, now_ms(), window_ms, (columns, ROWS));
    post_clicks(&ready_pod_ip(&client, "collector").await, &body).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    patch_spec(&api, pipeline_spec("20s", columns, 1)).await;
    wait_ready(&api, "the aggregator resumed").await;
    wait_exact_in(Some(&client), &clicks, "clicks sent while paused").await;
    eprintln!(
        "node: all {} clicks exact through every rollout",
        clicks.sent
    );

    backfill_survives_a_killed_pod(&client, &state, &api).await;
}

/// A `ClickHeatmapBackfill` as users run it: the raw archive (written here as Firehose would,
/// GZIP, three days back) rebuilt by a Job pod of the image; its pod is SIGKILLed and then
/// deleted halfway, the Job's next container and pod resume from the saved state, and the table
/// ends exactly as the file path computes it from the same records.
async fn backfill_survives_a_killed_pod(
    client: &Client,
    state: &str,
    pipelines: &Api<ClickHeatmapPipeline>,
) {
    use clickheatmap_aggregator::aggregate::Aggregator;
    use clickheatmap_aggregator::archive::{FirehoseWriter, HOUR_MS};
    use clickheatmap_aggregator::compression::Compression;
    use clickheatmap_aggregator::pipeline::Pipeline;
    use clickheatmap_aggregator::sink::CuratedSink;
    use clickheatmap_aggregator::synth::{Generator, SynthOptions};
    use clickheatmap_crds::backfill_state::BackfillState;
    use clickheatmap_crds::{BackfillPhase, ClickHeatmapBackfill};
    use clickheatmap_operator::controller::backfill::backfill_id;
    use object_store::ObjectStoreExt;

    let pipeline = pipelines.get(PIPELINE).await.expect("pipeline");
    let config =
        clickheatmap_operator::controller::workload::aggregator_config(&pipeline).expect("config");
    let start = (now_ms() - 3 * 86_400_000).div_euclid(HOUR_MS) * HOUR_MS;
    let mut generator = Generator::new(SynthOptions {
        seed: 42,
        start_ms: start,
        clicks_per_second: 1.5,
        ..SynthOptions::default()
    });
    // Small objects, so that reading them takes long enough to be interrupted.
    let raw = Location::open("s3://shop-raw/raw/").expect("raw bucket");
    let mut writer = FirehoseWriter::new(raw, "shop-clicks", Compression::Gzip, 48 * 1024, 300_000);
    let mut records = Vec::new();
    for _ in 0..120_000 {
        let record = generator.next().expect("a record");
        let mut line = Vec::new();
        record.write_json(&mut line);
        line.push(b'\n');
        writer
            .push(generator.clock_ms(), &line)
            .await
            .expect("archive write");
        records.extend_from_slice(&line);
    }
    let (objects, _) = writer.finish().await.expect("archive write");
    // What the live path makes of the same records, with the pipeline's window and grid.
    let expected_dir = tempfile::tempdir().expect("temp dir");
    let expected_store = Location::open(expected_dir.path().to_str().expect("utf-8"))
        .expect("local")
        .store;
    let mut live = Pipeline::new(
        Aggregator::new(&config, false),
        CuratedSink::new(expected_store.clone(), "t".into(), None, "live"),
    );
    live.consume(0, "records", records.as_slice())
        .await
        .expect("live path");
    live.finish().await.expect("live path");
    let mut expected = BTreeMap::new();
    sum_cells(
        &mut expected,
        read_rows(&expected_store, &"t".into(), &TimeRange::default())
            .await
            .expect("rows"),
    );

    let (from, to) = (start - HOUR_MS, start + 24 * HOUR_MS);
    let iso = |ms: i64| clickheatmap_aggregator::time::iso8601(ms).replace(".000Z", "Z");
    apply(
        client,
        &json!({
            "apiVersion": "clickheatmap.io/v1alpha1",
            "kind": "ClickHeatmapBackfill",
            "metadata": {"name": "replay", "namespace": NAMESPACE},
            "spec": {"pipeline": PIPELINE, "from": iso(from), "to": iso(to), "parallelism": 1}
        }),
        Some(NAMESPACE),
    )
    .await;
    let started = Instant::now();
    let backfills: Api<ClickHeatmapBackfill> = Api::namespaced(client.clone(), NAMESPACE);
    let id = backfill_id(&backfills.get("replay").await.expect("backfill")).expect("id");
    let state_location = Location::open(&format!(
        "{}/",
        config
            .backfill_state_location(&id)
            .rsplit_once('/')
            .expect("key")
            .0
    ))
    .expect("checkpoints");
    let state_key = state_location.child(&format!("{id}.json"));
    let partitions_done = || async {
        let bytes = state_location
            .store
            .get(&state_key)
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let state: BackfillState = serde_json::from_slice(&bytes).ok()?;
        Some(state.progress.partitions_done)
    };
    let job_pod = || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        pods.list(&ListParams::default().labels(&format!("job-name={id}")))
            .await
            .ok()?
            .items
            .into_iter()
            .find(|pod| {
                pod.metadata.deletion_timestamp.is_none()
                    && pod
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .and_then(|c| c.first())
                        .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            })
    };
    // SIGKILL the container after a few partitions (the Job restarts it in place)...
    eventually("the backfill's first partitions", WAIT, || async {
        (partitions_done().await? >= 3).then_some(())
    })
    .await;
    let pod = eventually("the backfill's running pod", WAIT, job_pod).await;
    sigkill_container(state, &pod);
    eprintln!(
        "node: backfill container SIGKILLed after {:?}",
        partitions_done().await
    );
    // ...then delete its pod after a few more (the Job makes a new one).
    eventually("more partitions after the restart", WAIT, || async {
        (partitions_done().await? >= 10).then_some(())
    })
    .await;
    let pod = eventually("the backfill's running pod", WAIT, job_pod).await;
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .expect("deleting the backfill pod");
    eprintln!(
        "node: backfill pod deleted after {:?}",
        partitions_done().await
    );
    let done = eventually("the backfill succeeded", WAIT, || async {
        let backfill = backfills.get("replay").await.ok()?;
        let status = backfill.status.clone()?;
        match status.phase? {
            BackfillPhase::Succeeded => Some(status),
            BackfillPhase::Failed => panic!("the backfill failed: {:?}", status.conditions),
            _ => None,
        }
    })
    .await;
    eprintln!(
        "node: backfill of {objects} archive objects (120,000 records) done in {:.1} s through a SIGKILL and a pod deletion",
        started.elapsed().as_secs_f64()
    );
    let progress = done.progress.expect("progress");
    assert_eq!(progress.objects_read, progress.objects_total);
    assert_eq!(
        progress.records, 120_000,
        "every record counted once across the restarts"
    );
    let rebuilt: BTreeMap<_, _> = curated()
        .await
        .into_iter()
        .filter(|((_, window_start, _, _), clicks)| {
            *window_start >= from && *window_start < to && *clicks != 0
        })
        .collect();
    assert_eq!(
        rebuilt, expected,
        "the rebuilt windows equal the file path's output"
    );
    eventually("the Job is cleaned up", WAIT, || async {
        let jobs: Api<k8s_openapi::api::batch::v1::Job> =
            Api::namespaced(client.clone(), NAMESPACE);
        jobs.get_opt(&id).await.ok()?.is_none().then_some(())
    })
    .await;
}

async fn template_hash(stateful_sets: &Api<StatefulSet>) -> Option<String> {
    stateful_sets
        .get("shop-aggregator")
        .await
        .ok()?
        .spec?
        .template
        .metadata?
        .annotations?
        .get("clickheatmap.io/config-hash")
        .cloned()
}
