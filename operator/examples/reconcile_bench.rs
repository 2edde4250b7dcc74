//! Reconcile benchmark against a real moto server (127.0.0.1, started and stopped here).
//!
//! ```sh
//! cargo run --release -p clickheatmap-operator --example reconcile_bench -- [pipelines] [rounds] [concurrency]
//! ```
//!
//! Creates `pipelines` (default 100) pipelines from `examples/pipeline-minimal.yaml` with
//! distinct names, alternating between two regions (moto, like AWS, allows 50 Firehose delivery
//! streams per region), converges them, then measures the steady state: `rounds` (default 3) resyncs
//! of every pipeline, one at a time and then `concurrency` (default 8) at a time. Reports
//! reconciles per second, AWS calls per resync (by operation; writes must be 0), the operator's
//! CPU seconds (from /proc/self/stat) and peak RSS (VmHWM from /proc/self/status). moto's own CPU
//! is not included: it runs in its own process, and it is what bounds the wall-clock figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::Credentials;
use clickheatmap_crds::{ClickHeatmapPipeline, ClickHeatmapPipelineStatus};
use clickheatmap_operator::aws::calls::CallCounts;
use clickheatmap_operator::manifest::parse_pipelines;
use clickheatmap_operator::{AwsClients, CallCounter, ClientOptions, apply_pipeline};
use clickheatmap_testkit::MotoServer;

fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let ticks_per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    (field(11) + field(12)) / ticks_per_second
}

/// Peak resident set size in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Two regions: at most 50 delivery streams per region.
const REGIONS: [&str; 2] = ["ap-northeast-2", "ap-northeast-1"];

/// Counted clients for every region of the benchmark.
#[derive(Clone)]
struct Clients(BTreeMap<String, AwsClients>);

impl Clients {
    fn get(&self, region: &str) -> &AwsClients {
        self.0
            .get(region)
            .unwrap_or_else(|| panic!("no clients for {region}"))
    }
}

fn pipelines(count: usize) -> Vec<ClickHeatmapPipeline> {
    let template = parse_pipelines(include_str!("../../examples/pipeline-minimal.yaml"))
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_else(|| panic!("the minimal example does not parse"));
    (0..count)
        .map(|i| {
            let mut p = template.clone();
            let name = format!("bench{i:03}");
            p.metadata.name = Some(name.clone());
            p.metadata.namespace = Some("bench".into());
            p.spec.stream.name = format!("{name}-clicks");
            p.spec.buckets.raw = format!("{name}-raw");
            p.spec.buckets.curated = format!("{name}-curated");
            p.spec.buckets.query_results = format!("{name}-athena");
            p.spec.catalog.database = format!("{name}_db");
            p.spec.query.workgroup = format!("{name}-wg");
            p.spec.region = REGIONS[i % REGIONS.len()].to_owned();
            p
        })
        .collect()
}

struct Round {
    wall: Duration,
    cpu: f64,
    calls: CallCounts,
    not_ready: usize,
}

async fn resync_all(
    clients: &Clients,
    calls: &CallCounter,
    pipelines: &[ClickHeatmapPipeline],
    concurrency: usize,
) -> Round {
    let before = calls.snapshot();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut not_ready = 0;
    for chunk in pipelines.chunks(concurrency.max(1)) {
        let mut tasks = tokio::task::JoinSet::new();
        for pipeline in chunk {
            let clients = clients.get(&pipeline.spec.region).clone();
            let pipeline = pipeline.clone();
            tasks.spawn(async move { apply_pipeline(&clients, &pipeline).await });
        }
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(outcome)) if outcome.is_ready() && outcome.applied().is_empty() => {}
                _ => not_ready += 1,
            }
        }
    }
    Round {
        wall: started.elapsed(),
        cpu: cpu_seconds() - cpu,
        calls: calls.since(&before),
        not_ready,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count = arg(1, 100);
    let rounds = arg(2, 3);
    let concurrency = arg(3, 8);
    let moto = MotoServer::start();
    let calls = CallCounter::new();
    let mut clients = BTreeMap::new();
    for region in REGIONS {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(clickheatmap_tls::aws_http_client())
            .region(Region::new(region))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .load()
            .await;
        let regional = AwsClients::new(
            &config,
            &ClientOptions {
                s3_force_path_style: true,
                calls: Some(calls.clone()),
                rate_limits: None,
                ..ClientOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("clients: {e}"));
        clients.insert(region.to_owned(), regional);
    }
    let clients = Clients(clients);
    let mut pipelines = pipelines(count);

    // Create: reconcile every pipeline until all are ready (the Firehose part waits one round
    // for its stream).
    let started = Instant::now();
    let cpu = cpu_seconds();
    let before = calls.snapshot();
    let mut create_reconciles = 0;
    for round in 0..6 {
        let mut pending = 0;
        for pipeline in pipelines.iter_mut() {
            let outcome = apply_pipeline(clients.get(&pipeline.spec.region), pipeline)
                .await
                .unwrap_or_else(|e| panic!("apply: {e}"));
            create_reconciles += 1;
            pipeline.status = Some(ClickHeatmapPipelineStatus {
                resources: outcome.resources.clone(),
                ..ClickHeatmapPipelineStatus::default()
            });
            if !(outcome.is_ready() && outcome.applied().is_empty()) {
                pending += 1;
            }
        }
        if pending == 0 {
            println!("converged after {} rounds", round + 1);
            break;
        }
        if round == 5 {
            println!("not converged: {pending} pipelines still changing");
        }
    }
    let create_wall = started.elapsed();
    let create_cpu = cpu_seconds() - cpu;
    let create_calls: u64 = calls.since(&before).values().sum();
    let create_writes: u64 = calls.mutating_since(&before).values().sum();

    println!(
        "create: {count} pipelines, {create_reconciles} reconciles in {:.2} s ({:.1} reconciles/s), {create_calls} AWS calls ({create_writes} writes), operator CPU {:.2} s",
        create_wall.as_secs_f64(),
        create_reconciles as f64 / create_wall.as_secs_f64(),
        create_cpu
    );

    let pipelines = Arc::new(pipelines);
    for (label, parallel) in [("sequential", 1), ("concurrent", concurrency)] {
        let mut total_wall = Duration::ZERO;
        let mut total_cpu = 0.0;
        let mut by_operation: BTreeMap<String, u64> = BTreeMap::new();
        let mut not_ready = 0;
        for _ in 0..rounds {
            let round = resync_all(&clients, &calls, &pipelines, parallel).await;
            total_wall += round.wall;
            total_cpu += round.cpu;
            not_ready += round.not_ready;
            for (operation, n) in round.calls {
                *by_operation.entry(operation).or_insert(0) += n;
            }
        }
        let resyncs = (count * rounds) as f64;
        let total_calls: u64 = by_operation.values().sum();
        let writes: u64 = by_operation
            .iter()
            .filter(|(op, _)| clickheatmap_operator::aws::calls::is_mutating(op))
            .map(|(_, n)| *n)
            .sum();
        println!(
            "resync ({label}, {parallel} in flight): {} resyncs in {:.2} s = {:.1} reconciles/s; {:.1} AWS calls per resync, {writes} writes, {not_ready} not ready; operator CPU {:.3} s total = {:.2} ms per resync",
            count * rounds,
            total_wall.as_secs_f64(),
            resyncs / total_wall.as_secs_f64(),
            total_calls as f64 / resyncs,
            total_cpu,
            total_cpu * 1000.0 / resyncs
        );
        if label == "sequential" {
            for (operation, n) in &by_operation {
                println!("    {operation:<45} {:.2} per resync", *n as f64 / resyncs);
            }
        }
    }
    println!("peak RSS (VmHWM): {:.1} MiB", peak_rss_mib());
    drop(moto);
}
