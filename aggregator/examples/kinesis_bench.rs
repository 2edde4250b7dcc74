//! Benchmark: the aggregator consuming a Kinesis stream from the emulator (moto server on
//! 127.0.0.1) into S3 — CPU seconds per million events and peak RSS of the aggregator process.
//!
//! ```sh
//! cargo build --release -p clickheatmap-aggregator
//! cargo run --release -p clickheatmap-aggregator --example kinesis_bench -- [EVENTS] [SHARDS]
//! ```
//!
//! The emulator is much slower than the aggregator, so wall time says little; the figures that
//! matter are the aggregator's own CPU time and memory, read from /proc when it has consumed
//! every record.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use clickheatmap_aggregator::synth::{Generator, SynthOptions};
use clickheatmap_aggregator::time::now_ms;
use clickheatmap_testkit::{MotoServer, free_port};

const STREAM: &str = "bench-clicks";
const BUCKET: &str = "bench-curated";
const EVENTS_PER_RECORD: usize = 100;

fn proc_stat(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, hwm_kib / 1024.0))
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let shards: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("clickheatmap-aggregator")))
        .filter(|path| path.exists())
        .expect("build the aggregator first: cargo build --release -p clickheatmap-aggregator");

    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let client = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .http_client(clickheatmap_tls::aws_http_client())
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                "testing", "testing", None, None, "bench",
            ))
            .build(),
    );
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");

    println!("putting {events} events ({EVENTS_PER_RECORD} per record) into {shards} shards ...");
    let mut generator = Generator::new(SynthOptions {
        start_ms: now_ms() - 3 * 3_600_000,
        ..SynthOptions::default()
    });
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    for index in 0..events.div_ceil(EVENTS_PER_RECORD) {
        let mut data = Vec::with_capacity(EVENTS_PER_RECORD * 330);
        for record in generator.by_ref().take(EVENTS_PER_RECORD) {
            record.write_json(&mut data);
            data.push(b'\n');
        }
        bytes += data.len();
        entries.push(
            PutRecordsRequestEntry::builder()
                .data(Blob::new(data))
                .partition_key(format!("k{index}"))
                .build()
                .expect("entry"),
        );
    }
    let records = entries.len() as u64;
    for chunk in entries.chunks(100) {
        client
            .put_records()
            .stream_name(STREAM)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .expect("put records");
    }

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("kinesis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "source": {"type": "kinesis", "streamName": STREAM, "idlePollInterval": "200ms"},
            "output": {"root": format!("s3://{BUCKET}/curated/")},
            "metricsAddress": format!("127.0.0.1:{port}")
        })
        .to_string(),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .envs(moto.aws_env())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start aggregator");
    let pid = child.id();
    loop {
        let text = scrape(port);
        if metric(&text, "clickheatmap_records_total") >= records {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            eprintln!("gave up after 30 minutes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu, rss) = proc_stat(pid).unwrap_or((f64::NAN, f64::NAN));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{events} events ({:.0} MiB in {records} records, {shards} shards) consumed in {wall:.1}s wall: \
         aggregator CPU {cpu:.2}s = {:.2} CPU s per million events; peak RSS {rss:.0} MiB",
        bytes as f64 / 1048576.0,
        cpu / (events as f64 / 1e6),
    );
}
