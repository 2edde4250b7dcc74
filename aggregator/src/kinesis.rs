//! Reading a Kinesis data stream with the AWS SDK: shard discovery and GetRecords polling.
//!
//! Errors are classified so the caller can react: throttling backs off, an expired iterator is
//! renewed from the last sequence number, anything else is retried with backoff and counted.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use clickheatmap_crds::{KinesisSourceConfig, StartPosition};

#[derive(Debug, thiserror::Error)]
pub enum KinesisError {
    #[error("Kinesis throttled the call: {0}")]
    Throttled(String),
    #[error("the shard iterator expired")]
    ExpiredIterator,
    #[error("stream or shard not found: {0}")]
    NotFound(String),
    #[error("Kinesis call failed: {0}")]
    Other(String),
}

/// A shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    /// Set once the shard was closed by resharding.
    pub closed: bool,
}

impl ShardInfo {
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id
            .iter()
            .chain(self.adjacent_parent_shard_id.iter())
            .map(String::as_str)
    }
}

/// One record of a shard.
#[derive(Clone, Debug)]
pub struct ShardRecord {
    pub sequence_number: String,
    pub data: Bytes,
}

/// The answer to one GetRecords call.
#[derive(Debug)]
pub struct RecordBatch {
    pub records: Vec<ShardRecord>,
    /// `None` when the shard is closed and fully read.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
}

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    AfterSequenceNumber(String),
    Start(StartPosition),
}

/// A Kinesis stream reader.
#[derive(Clone, Debug)]
pub struct KinesisSource {
    client: Client,
    stream: String,
}

impl KinesisSource {
    /// A client from the SDK's default chain (credentials, region, `AWS_ENDPOINT_URL`).
    pub async fn connect(config: &KinesisSourceConfig) -> KinesisSource {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let sdk_config = loader.load().await;
        KinesisSource {
            client: Client::new(&sdk_config),
            stream: config.stream_name.clone(),
        }
    }

    pub fn from_client(client: Client, stream: impl Into<String>) -> Self {
        KinesisSource {
            client,
            stream: stream.into(),
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Every shard of the stream, open and closed, paging through ListShards.
    pub async fn list_shards(&self) -> Result<Vec<ShardInfo>, KinesisError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // ListShards refuses the stream name together with a continuation token.
            let request = match &next_token {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let page = request.send().await.map_err(|err| {
                let message = format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&err));
                match err.into_service_error() {
                    e if e.is_resource_not_found_exception() => KinesisError::NotFound(message),
                    e if e.is_limit_exceeded_exception() => KinesisError::Throttled(message),
                    _ => KinesisError::Other(message),
                }
            })?;
            for shard in page.shards() {
                shards.push(ShardInfo {
                    shard_id: shard.shard_id().to_owned(),
                    parent_shard_id: shard.parent_shard_id().map(str::to_owned),
                    adjacent_parent_shard_id: shard.adjacent_parent_shard_id().map(str::to_owned),
                    closed: shard
                        .sequence_number_range()
                        .and_then(|range| range.ending_sequence_number())
                        .is_some(),
                });
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(shards),
            }
        }
    }

    pub async fn iterator(&self, shard_id: &str, from: &ReadFrom) -> Result<String, KinesisError> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard_id);
        let request = match from {
            ReadFrom::AfterSequenceNumber(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            ReadFrom::Start(StartPosition::TrimHorizon) => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            ReadFrom::Start(StartPosition::Latest) => {
                request.shard_iterator_type(ShardIteratorType::Latest)
            }
            ReadFrom::Start(StartPosition::AtTimestamp { timestamp_ms }) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*timestamp_ms)),
        };
        let output = request.send().await.map_err(classify_iterator_error)?;
        output
            .shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| KinesisError::Other(format!("no iterator returned for {shard_id}")))
    }

    pub async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordBatch, KinesisError> {
        let output = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(10_000))
            .send()
            .await
            .map_err(classify_get_records_error)?;
        Ok(RecordBatch {
            records: output
                .records()
                .iter()
                .map(|record| ShardRecord {
                    sequence_number: record.sequence_number().to_owned(),
                    data: Bytes::copy_from_slice(record.data().as_ref()),
                })
                .collect(),
            next_iterator: output.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: output.millis_behind_latest(),
        })
    }
}

fn classify_get_records_error<R>(err: SdkError<GetRecordsError, R>) -> KinesisError
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&err));
    match err.into_service_error() {
        GetRecordsError::ProvisionedThroughputExceededException(_)
        | GetRecordsError::KmsThrottlingException(_) => KinesisError::Throttled(message),
        GetRecordsError::ExpiredIteratorException(_) => KinesisError::ExpiredIterator,
        GetRecordsError::ResourceNotFoundException(_) => KinesisError::NotFound(message),
        _ => KinesisError::Other(message),
    }
}

fn classify_iterator_error<R>(err: SdkError<GetShardIteratorError, R>) -> KinesisError
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&err));
    match err.into_service_error() {
        GetShardIteratorError::ProvisionedThroughputExceededException(_) => {
            KinesisError::Throttled(message)
        }
        GetShardIteratorError::ResourceNotFoundException(_) => KinesisError::NotFound(message),
        _ => KinesisError::Other(message),
    }
}
