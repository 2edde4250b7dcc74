//! The collector binary as built with the rest of the workspace completes TLS handshakes: it
//! forwards clicks to Kinesis at an HTTPS endpoint (moto with a certificate of a test CA, trusted
//! through `SSL_CERT_FILE` as a system CA would be). A build with two rustls crypto providers
//! would panic here on the first request.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::ShardIteratorType;
use clickheatmap_collector::client::HttpClient;
use clickheatmap_testkit::{MotoServer, free_port, wait_for_port};

struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_clicks_to_kinesis_over_https() {
    let moto = MotoServer::start_https();
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

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_clickheatmap-collector"))
        .args(["--sink", "kinesis", "--stream-name", "tls-clicks"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--rate-limit",
            "0",
        ])
        .args(["--flush-interval", "50ms", "--allowed-origin", "*"])
        .envs(moto.aws_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the collector");
    let _child = Stopper(child);
    assert!(
        tokio::task::spawn_blocking(move || wait_for_port(port, Duration::from_secs(30)))
            .await
            .expect("join"),
        "the collector listens"
    );
    let mut client = HttpClient::connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let click = r#"{"event_type":"click","event_time_ms":1766919066968,"page_id":"tls","x":1,"y":2,"viewport_width":10,"viewport_height":10}"#;
    let response = client
        .request(
            "POST",
            "/v1/clicks",
            &[("content-type", "text/plain")],
            click.as_bytes(),
        )
        .await
        .expect("POST");
    assert_eq!(response.status, 202, "{}", response.text());

    let shard = kinesis
        .list_shards()
        .stream_name("tls-clicks")
        .send()
        .await
        .expect("ListShards")
        .shards()[0]
        .shard_id()
        .to_owned();
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name("tls-clicks")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator()
        .map(str::to_owned);
    let started = Instant::now();
    loop {
        let output = kinesis
            .get_records()
            .set_shard_iterator(iterator.clone())
            .send()
            .await
            .expect("GetRecords");
        if let Some(record) = output.records().first() {
            let data = String::from_utf8_lossy(record.data().as_ref()).into_owned();
            assert!(data.contains(r#""page_id":"tls""#), "{data}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the click never reached the stream over HTTPS"
        );
        iterator = output.next_shard_iterator().map(str::to_owned);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
