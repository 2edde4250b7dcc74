//! The aggregator binary as built with the rest of the workspace completes TLS handshakes with
//! both of its HTTPS stacks: the AWS SDK (Kinesis) and object_store (S3 checkpoints and Parquet).
//! moto serves HTTPS only, with a certificate of a test CA that the aggregator trusts through
//! `SSL_CERT_FILE`, as it would trust a system CA. A build with two rustls crypto providers
//! panics on its first request instead.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use clickheatmap_aggregator::time::now_ms;
use clickheatmap_testkit::{MotoServer, free_port};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An S3 request with curl over HTTPS, trusting the test CA; the response body.
fn s3(moto: &MotoServer, method: &str, path: &str) -> String {
    let ca = moto.ca().expect("https").ca_file();
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(&ca)
        .args(["-X", method, &format!("{}{path}", moto.endpoint())])
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        output.status.success(),
        "{method} {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_kinesis_into_s3_over_https() {
    let moto = MotoServer::start_https();
    s3(&moto, "PUT", "/tls-curated");
    let ca = moto.ca().expect("https").ca_pem();
    let kinesis = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .http_client(clickheatmap_tls::aws_http_client_trusting(&ca).expect("CA"))
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build(),
    );
    kinesis
        .create_stream()
        .stream_name("tls-clicks")
        .shard_count(1)
        .send()
        .await
        .expect("CreateStream over HTTPS");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Clicks of a window that closed minutes ago: the aggregator writes it once it is caught up.
    let at = now_ms() - 5 * 60_000;
    let data = (0..20)
        .map(|i| {
            format!(
                r#"{{"event_type":"click","event_time_ms":{},"page_id":"tls","x":{i},"y":5,"viewport_width":100,"viewport_height":100}}"#,
                at + i
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    kinesis
        .put_record()
        .stream_name("tls-clicks")
        .partition_key("k")
        .data(Blob::new(data))
        .send()
        .await
        .expect("PutRecord over HTTPS");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("aggregator.json");
    let metrics_port = free_port();
    std::fs::write(
        &config,
        serde_json::json!({
            "window": { "size": "1m" },
            "writerId": "agg",
            "source": {
                "type": "kinesis",
                "streamName": "tls-clicks",
                "idlePollInterval": "200ms",
                "shardDiscoveryInterval": "1s",
                "idleWatermarkDelay": "1s"
            },
            "output": { "root": "s3://tls-curated/curated/" },
            "checkpoint": { "interval": "1s" },
            "metricsAddress": format!("127.0.0.1:{metrics_port}")
        })
        .to_string(),
    )
    .expect("config");
    let _aggregator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_clickheatmap-aggregator"))
            .args(["run", "--config"])
            .arg(&config)
            .envs(moto.aws_env())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the aggregator"),
    );
    let started = Instant::now();
    loop {
        let listing = s3(&moto, "GET", "/tls-curated?list-type=2&prefix=curated/");
        if listing.contains(".parquet") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no Parquet file in the curated bucket over HTTPS: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The records came through the aggregator's own GetRecords decoder, over TLS.
    let metrics = scrape_metrics(metrics_port);
    assert!(
        metrics.contains("\nclickheatmap_get_records_decoded_by_sdk_total 0\n")
            && !metrics.contains("\nclickheatmap_get_records_calls_total 0\n"),
        "{metrics}"
    );
}

fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}
