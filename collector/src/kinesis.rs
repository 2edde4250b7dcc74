//! The Kinesis Data Streams sink: one PutRecords call per batch (≤ 500 records, ≤ 5 MiB),
//! with a per-record outcome taken from the response's `ErrorCode`s.
//!
//! The SDK's own retries are turned off in [`KinesisSink::from_env`]: the queue retries failed
//! records itself (exponential backoff with jitter), counts the retries and never drops a
//! record, and an SDK retry underneath would multiply the attempts and hide them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use bytes::Bytes;

pub use crate::sink::PARTITION_KEY_LEN;
use crate::sink::{PutError, PutResults, RecordSink, SinkFuture};

/// Puts records into one Kinesis data stream.
#[derive(Debug)]
pub struct KinesisSink {
    client: Client,
    stream: StreamTarget,
    key_seed: u64,
    key_counter: AtomicU64,
}

#[derive(Debug)]
enum StreamTarget {
    Name(String),
    Arn(String),
}

impl KinesisSink {
    /// A sink over `client` for the stream named `stream` (or with that ARN, if it starts with
    /// `arn:`).
    pub fn new(client: Client, stream: &str) -> KinesisSink {
        let stream = if stream.starts_with("arn:") {
            StreamTarget::Arn(stream.to_owned())
        } else {
            StreamTarget::Name(stream.to_owned())
        };
        KinesisSink {
            client,
            stream,
            key_seed: crate::random_seed(),
            key_counter: AtomicU64::new(0),
        }
    }

    /// A sink using the SDK's default configuration chain (credentials from IRSA / Pod Identity /
    /// the environment; `AWS_ENDPOINT_URL` points it at an emulator), with SDK retries off and a
    /// 15-second limit per call.
    pub async fn from_env(stream: &str, region: Option<String>) -> KinesisSink {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(clickheatmap_tls::aws_http_client())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(15))
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let config = loader.load().await;
        KinesisSink::new(Client::new(&config), stream)
    }

    /// The stream this sink writes to, for logs.
    pub fn stream(&self) -> &str {
        match &self.stream {
            StreamTarget::Name(name) | StreamTarget::Arn(name) => name,
        }
    }

    /// A partition key per record: a counter scrambled with a per-process seed. Kinesis hashes
    /// keys with MD5, so distinct keys spread records evenly over the shards.
    fn partition_key(&self) -> String {
        let n = self.key_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", crate::splitmix64(self.key_seed.wrapping_add(n)))
    }
}

impl RecordSink for KinesisSink {
    fn put_records(&self, records: Vec<Bytes>) -> SinkFuture<'_, PutResults> {
        Box::pin(async move {
            let count = records.len();
            let mut entries = Vec::with_capacity(count);
            for data in records {
                let entry = PutRecordsRequestEntry::builder()
                    .data(Blob::new(data))
                    .partition_key(self.partition_key())
                    .build();
                match entry {
                    Ok(entry) => entries.push(entry),
                    Err(err) => {
                        return vec![Err(PutError::new("BuildRequest", err.to_string())); count];
                    }
                }
            }
            let request = self.client.put_records().set_records(Some(entries));
            let request = match &self.stream {
                StreamTarget::Name(name) => request.stream_name(name),
                StreamTarget::Arn(arn) => request.stream_arn(arn),
            };
            match request.send().await {
                Ok(output) => {
                    let results = output.records();
                    (0..count)
                        .map(|index| match results.get(index) {
                            Some(result) => match result.error_code() {
                                None => Ok(()),
                                Some(code) => {
                                    let message = result.error_message().unwrap_or_default();
                                    Err(if code == "ProvisionedThroughputExceededException" {
                                        PutError::throttled(code, message)
                                    } else {
                                        PutError::new(code, message)
                                    })
                                }
                            },
                            None => Err(PutError::new(
                                "MissingResult",
                                format!(
                                    "PutRecords answered {} results for {count} records",
                                    results.len()
                                ),
                            )),
                        })
                        .collect()
                }
                Err(err) => vec![Err(call_error(&err)); count],
            }
        })
    }

    fn probe(&self) -> SinkFuture<'_, Result<(), PutError>> {
        Box::pin(async move {
            let request = self.client.describe_stream_summary();
            let request = match &self.stream {
                StreamTarget::Name(name) => request.stream_name(name),
                StreamTarget::Arn(arn) => request.stream_arn(arn),
            };
            let output = request.send().await.map_err(|err| call_error(&err))?;
            match output
                .stream_description_summary()
                .map(|s| s.stream_status())
            {
                Some(StreamStatus::Active | StreamStatus::Updating) => Ok(()),
                status => Err(PutError::new(
                    "StreamNotActive",
                    format!("stream {} is {status:?}", self.stream()),
                )),
            }
        })
    }

    fn name(&self) -> &'static str {
        "kinesis"
    }
}

/// Maps a failed call to a [`PutError`] with the service's code, or one of ours for failures
/// that never reached the service.
fn call_error<E>(err: &SdkError<E>) -> PutError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = DisplayErrorContext(err).to_string();
    let code = match err {
        SdkError::ServiceError(service) => match service.err().code() {
            Some(code) => code.to_owned(),
            None => format!("HTTP{}", service.raw().status().as_u16()),
        },
        SdkError::TimeoutError(_) => "Timeout".to_owned(),
        SdkError::DispatchFailure(_) => "Transport".to_owned(),
        SdkError::ResponseError(_) => "BadResponse".to_owned(),
        SdkError::ConstructionFailure(_) => "BuildRequest".to_owned(),
        _ => "Unknown".to_owned(),
    };
    let throttled = code.contains("Throttl")
        || code == "ProvisionedThroughputExceededException"
        || code == "LimitExceededException"
        || code == "HTTP429";
    if throttled {
        PutError::throttled(code, message)
    } else {
        PutError::new(code, message)
    }
}
