//! Shared set-up for the moto-backed tests: a moto server on 127.0.0.1 (stopped when dropped),
//! SDK clients that count their calls, and the example manifests as fixtures.

#![allow(dead_code)]

pub mod fake_flink;
pub mod moto_timestamps;

use std::io::{Read, Write};
use std::net::TcpStream;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use clickheatmap_crds::ClickHeatmapPipeline;
use clickheatmap_operator::aws::calls::CallCounts;
use clickheatmap_operator::{AwsClients, CallCounter, ClientOptions, Names};
use clickheatmap_testkit::MotoServer;

/// The examples' region.
pub const REGION: &str = "ap-northeast-2";

pub struct Env {
    pub moto: MotoServer,
    pub config: SdkConfig,
    pub clients: AwsClients,
    pub calls: CallCounter,
}

/// Starts moto and builds counted clients for the examples' region. Retries are off: moto
/// answers at once, and a gap in moto (HTTP 500) then fails fast instead of backing off.
pub async fn start() -> Env {
    let moto = MotoServer::start();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(clickheatmap_tls::aws_http_client())
        .region(Region::new(REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    let config = config
        .to_builder()
        .http_client(moto_timestamps::FixTimestamps {
            inner: aws_smithy_http_client::Builder::new().build_http(),
        })
        .build();
    let calls = CallCounter::new();
    let clients = AwsClients::new(
        &config,
        &ClientOptions {
            s3_force_path_style: true,
            calls: Some(calls.clone()),
            rate_limits: None,
            ..ClientOptions::default()
        },
    )
    .expect("clients");
    Env {
        moto,
        config,
        clients,
        calls,
    }
}

impl Env {
    /// Names of `pipeline` in moto's account.
    pub async fn names(&self, pipeline: &ClickHeatmapPipeline) -> Names {
        let account = self.clients.account().await.expect("account");
        Names::for_pipeline(pipeline, account)
    }

    /// Plain SDK clients without the counter, for changing things behind the operator's back.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.config)
                .force_path_style(true)
                .build(),
        )
    }

    /// Sets a moto state-machine transition (e.g. keeps a Glue crawl RUNNING until told
    /// otherwise), so that tests never depend on timing.
    pub fn set_transition(&self, model: &str, transition: serde_json::Value) {
        let body = serde_json::json!({ "model_name": model, "transition": transition }).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.moto.port())).expect("connect");
        let request = format!(
            "POST /moto-api/state-manager/set-transition HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.moto.port(),
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(
            response.starts_with("HTTP/1.1 20"),
            "set-transition: {response}"
        );
    }
}

/// An example manifest, in namespace `analytics`.
pub fn pipeline(file: &str) -> ClickHeatmapPipeline {
    let text = match file {
        "minimal" => include_str!("../../../examples/pipeline-minimal.yaml"),
        "full" => include_str!("../../../examples/pipeline-full.yaml"),
        other => panic!("no example {other}"),
    };
    let mut pipeline = clickheatmap_operator::manifest::parse_pipelines(text)
        .expect("example parses")
        .remove(0);
    pipeline.metadata.namespace = Some("analytics".to_owned());
    pipeline
}

/// Asserts that no writing call happened since `before`.
pub fn assert_no_writes(calls: &CallCounter, before: &CallCounts, what: &str) {
    let writes = calls.mutating_since(before);
    assert!(writes.is_empty(), "{what}: unexpected writes {writes:?}");
    let reads = calls.since(before);
    assert!(
        !reads.is_empty(),
        "{what}: no calls at all — nothing was observed"
    );
}

/// The write operations made since `before`, as `service:Operation` names.
pub fn writes_since(calls: &CallCounter, before: &CallCounts) -> Vec<String> {
    calls.mutating_since(before).into_keys().collect()
}
