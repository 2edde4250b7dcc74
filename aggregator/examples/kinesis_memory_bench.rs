//! Benchmark of the production path without the emulator's cost: the aggregator binary consumes
//! a Kinesis stream served by a responder in this process that answers `ListShards`,
//! `GetShardIterator` and `GetRecords` (the AWS JSON 1.1 protocol the SDK speaks) with responses
//! encoded before the clock starts, at memory speed. Output and checkpoints go to a local
//! directory. The figures are the aggregator process's own: CPU seconds per million events (user +
//! system from /proc), events per CPU second, and peak RSS, once it has read every record.
//!
//! ```sh
//! cargo build --release -p clickheatmap-aggregator --bins --examples
//! ./target/release/examples/kinesis_memory_bench [EVENTS] [SHARDS] [RECORDS_PER_RESPONSE] [BUDGET_MIB] [CLICKS_PER_SECOND]
//! ```
//!
//! Records carry 100 events each as NDJSON (the original demo's format, user agent included), as
//! in `kinesis_bench` (the moto variant); a response holds as many records as the call's `Limit`
//! asks for, up to RECORDS_PER_RESPONSE (250 by default, about 8 MiB: real Kinesis caps a
//! response at 10 MiB). The aggregator runs with `responseBudgetMiB` BUDGET_MIB (16 by default).
//! CLICKS_PER_SECOND of event time (200 by default, as the file path's `bench`) sets how many
//! one-minute windows the records span: at 200 each shard closes a window every few records'
//! worth of reading and writes its files, intent and checkpoint for it; a stream read at the
//! shards' write limit (about 3,200 clicks/s per shard) closes one a minute.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clickheatmap_aggregator::synth::{Generator, SynthOptions};
use clickheatmap_aggregator::time::now_ms;
use clickheatmap_testkit::free_port;

const EVENTS_PER_RECORD: usize = 100;

/// Standard base64 with padding (what the protocol uses for blobs).
fn base64(data: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(char::from(ALPHABET[(n >> 18) as usize & 63]));
        out.push(char::from(ALPHABET[(n >> 12) as usize & 63]));
        out.push(if chunk.len() > 1 {
            char::from(ALPHABET[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            char::from(ALPHABET[n as usize & 63])
        } else {
            '='
        });
    }
}

/// Every record of every shard, encoded up front as the JSON object of a GetRecords response.
struct Stream {
    shards: Vec<String>,
    /// Per shard, the records in order (their index is their sequence number).
    records: BTreeMap<String, Vec<Bytes>>,
    /// The most records one response holds (Kinesis caps a response at 10 MiB).
    per_response: usize,
}

fn json_response(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        body,
    )
        .into_response()
}

fn field<'a>(request: &'a serde_json::Value, name: &str) -> &'a str {
    request[name].as_str().unwrap_or_default()
}

async fn answer(stream: Arc<Stream>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match target.rsplit('.').next().unwrap_or_default() {
        "ListShards" => {
            let shards: Vec<serde_json::Value> = stream
                .shards
                .iter()
                .enumerate()
                .map(|(index, id)| {
                    let width = u128::MAX / stream.shards.len() as u128;
                    let start = width * index as u128;
                    serde_json::json!({
                        "ShardId": id,
                        "HashKeyRange": {
                            "StartingHashKey": start.to_string(),
                            "EndingHashKey": (start + width - 1).to_string()
                        },
                        "SequenceNumberRange": {"StartingSequenceNumber": "0"}
                    })
                })
                .collect();
            json_response(Bytes::from(
                serde_json::json!({ "Shards": shards }).to_string(),
            ))
        }
        // `<shard>:<next record>`.
        "GetShardIterator" => {
            let shard = field(&request, "ShardId");
            let next = match field(&request, "ShardIteratorType") {
                "AFTER_SEQUENCE_NUMBER" => field(&request, "StartingSequenceNumber")
                    .parse::<usize>()
                    .map_or(0, |sequence| sequence + 1),
                _ => 0,
            };
            json_response(Bytes::from(
                serde_json::json!({ "ShardIterator": format!("{shard}:{next}") }).to_string(),
            ))
        }
        // As many records as the call's Limit asks for, up to the response cap: the response
        // is the pre-encoded records joined (a memory copy, on the responder's side).
        "GetRecords" => {
            let iterator = field(&request, "ShardIterator");
            let (shard, index) = iterator.rsplit_once(':').unwrap_or((iterator, "0"));
            let index: usize = index.parse().unwrap_or(0);
            let limit = request["Limit"]
                .as_u64()
                .map_or(10_000, |limit| limit as usize)
                .min(stream.per_response);
            let all = stream.records.get(shard).map_or(&[][..], Vec::as_slice);
            let end = (index + limit).min(all.len()).max(index.min(all.len()));
            let taken = &all[index.min(all.len())..end];
            let mut body = Vec::with_capacity(
                taken.iter().map(|record| record.len() + 1).sum::<usize>() + 120,
            );
            body.extend_from_slice(br#"{"Records":["#);
            for (offset, record) in taken.iter().enumerate() {
                if offset > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(record);
            }
            let behind = if end < all.len() { 60_000 } else { 0 };
            body.extend_from_slice(
                format!(r#"],"NextShardIterator":"{shard}:{end}","MillisBehindLatest":{behind}}}"#)
                    .as_bytes(),
            );
            json_response(Bytes::from(body))
        }
        other => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
            format!(r#"{{"__type":"InvalidArgumentException","message":"{other} is not served"}}"#),
        )
            .into_response(),
    }
}

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

fn records_read(port: u16) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|line| {
            line.strip_prefix("clickheatmap_records_total")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let shards: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let per_response: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(250);
    let budget_mib: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let clicks_per_second: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200.0);
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("clickheatmap-aggregator")))
        .filter(|path| path.exists())
        .expect("build the aggregator first: cargo build --release -p clickheatmap-aggregator");

    println!(
        "encoding {events} events ({EVENTS_PER_RECORD} per record) into {shards} shards, {per_response} records per response ..."
    );
    let mut generator = Generator::new(SynthOptions {
        // Ending about now, whatever the rate (so the windows close as the records are read).
        start_ms: now_ms() - (events as f64 / clicks_per_second * 1000.0) as i64 - 60_000,
        clicks_per_second,
        ..SynthOptions::default()
    });
    let shard_ids: Vec<String> = (0..shards)
        .map(|index| format!("shardId-{index:012}"))
        .collect();
    let mut records_of: Vec<Vec<Vec<u8>>> = vec![Vec::new(); shards];
    let mut bytes = 0usize;
    let records = events.div_ceil(EVENTS_PER_RECORD);
    for index in 0..records {
        let mut data = Vec::with_capacity(EVENTS_PER_RECORD * 330);
        for record in generator.by_ref().take(EVENTS_PER_RECORD) {
            record.write_json(&mut data);
            data.push(b'\n');
        }
        bytes += data.len();
        records_of[index % shards].push(data);
    }
    let arrival = now_ms() as f64 / 1000.0;
    let mut encoded_records = BTreeMap::new();
    for (shard, records) in shard_ids.iter().zip(records_of) {
        let encoded: Vec<Bytes> = records
            .iter()
            .enumerate()
            .map(|(sequence, data)| {
                let mut json = String::with_capacity(data.len() * 4 / 3 + 120);
                json.push_str(&format!(
                    r#"{{"SequenceNumber":"{sequence:020}","ApproximateArrivalTimestamp":{arrival},"PartitionKey":"k","Data":""#
                ));
                base64(data, &mut json);
                json.push_str(r#""}"#);
                Bytes::from(json)
            })
            .collect();
        encoded_records.insert(shard.clone(), encoded);
    }
    let stream = Arc::new(Stream {
        shards: shard_ids,
        records: encoded_records,
        per_response,
    });

    let responder_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", responder_port))
        .await
        .expect("responder port");
    let app = Router::new().route(
        "/",
        post({
            let stream = stream.clone();
            move |headers: HeaderMap, body: Bytes| answer(stream.clone(), headers, body)
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let metrics_port = free_port();
    let dir = std::env::temp_dir().join(format!("kinesis-memory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "source": {"type": "kinesis", "streamName": "bench", "region": "us-east-1",
                       "idlePollInterval": "200ms", "responseBudgetMiB": budget_mib},
            "output": {"root": dir.join("curated").to_string_lossy()},
            "metricsAddress": format!("127.0.0.1:{metrics_port}")
        })
        .to_string(),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{responder_port}"),
        )
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start aggregator");
    let pid = child.id();
    let records = records as u64;
    loop {
        if records_read(metrics_port) >= records {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up after 10 minutes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
         aggregator CPU {cpu:.2}s = {:.2} CPU s per million events = {:.0} events per CPU second; peak RSS {rss:.0} MiB",
        bytes as f64 / 1048576.0,
        cpu / (events as f64 / 1e6),
        events as f64 / cpu,
    );
}
