//! Reading a Kinesis data stream with the AWS SDK: shard discovery, GetRecords polling, and
//! enhanced fan-out (a registered stream consumer, SubscribeToShard event streams).
//!
//! Errors are classified so the caller can react: throttling backs off, an expired iterator is
//! renewed from the last sequence number, anything else is retried with backoff and counted.

use std::sync::Arc;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use bytes::Bytes;
use clickheatmap_crds::{KinesisSourceConfig, StartPosition};

use crate::get_records::{DecodedRecords, DecodingHttpClient, TakeDecodedRecords};

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
    /// The SDK decoded the records: the response was not one `get_records` recognises.
    pub decoded_by_sdk: bool,
}

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    AfterSequenceNumber(String),
    Start(StartPosition),
}

/// One event of a shard subscription (enhanced fan-out).
#[derive(Debug)]
pub struct FanOutEvent {
    pub records: Vec<ShardRecord>,
    pub millis_behind_latest: i64,
    /// The shard was closed by resharding and every record was delivered: the event names its
    /// children.
    pub shard_ended: bool,
}

/// A registered stream consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    pub arn: String,
    /// Whether it can subscribe yet (a new consumer is `CREATING` for a few seconds).
    pub active: bool,
}

/// An open SubscribeToShard event stream. Kinesis ends it after about five minutes (or at the
/// end of a closed shard); the reader then subscribes again from where it is.
#[derive(Debug)]
pub struct Subscription {
    output: aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput,
}

impl Subscription {
    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Result<Option<FanOutEvent>, KinesisError> {
        loop {
            let event = match self.output.event_stream.recv().await {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => event,
                // A kind of event this SDK version does not know: nothing to read in it.
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(err) => return Err(classify(err)),
            };
            return Ok(Some(FanOutEvent {
                millis_behind_latest: event.millis_behind_latest(),
                shard_ended: !event.child_shards().is_empty(),
                records: shard_records(event.records),
            }));
        }
    }
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
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(
            DecodingHttpClient::new(
                clickheatmap_tls::aws_http_client(),
                // Responses hold at most the budget of record data, base64 in the buffers.
                config.response_budget_mib as usize * (4 << 20) / 3,
            ),
        );
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
            let page = request.send().await.map_err(classify)?;
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
        let output = request.send().await.map_err(classify)?;
        output
            .shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| KinesisError::Other(format!("no iterator returned for {shard_id}")))
    }

    /// The stream's ARN (what the consumer calls take instead of its name).
    pub async fn stream_arn(&self) -> Result<String, KinesisError> {
        let summary = self
            .client
            .describe_stream_summary()
            .stream_name(&self.stream)
            .send()
            .await
            .map_err(classify)?;
        summary
            .stream_description_summary()
            .map(|description| description.stream_arn().to_owned())
            .ok_or_else(|| KinesisError::Other("DescribeStreamSummary returned no ARN".into()))
    }

    /// The stream consumer `name`, registered when missing. Call again until it is active.
    pub async fn register_consumer(
        &self,
        stream_arn: &str,
        name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        let described = self
            .client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await;
        match described.map_err(classify) {
            Ok(output) => {
                let consumer = output.consumer_description().ok_or_else(|| {
                    KinesisError::Other("DescribeStreamConsumer returned no consumer".into())
                })?;
                Ok(StreamConsumer {
                    arn: consumer.consumer_arn().to_owned(),
                    active: consumer.consumer_status() == &ConsumerStatus::Active,
                })
            }
            Err(KinesisError::NotFound(_)) => {
                tracing::info!(consumer = name, stream = %self.stream, "registering the stream consumer");
                // Another replica registering it at the same time makes this a ResourceInUse:
                // classified as "later", and the next call finds the consumer.
                let output = self
                    .client
                    .register_stream_consumer()
                    .stream_arn(stream_arn)
                    .consumer_name(name)
                    .send()
                    .await
                    .map_err(classify)?;
                let consumer = output.consumer().ok_or_else(|| {
                    KinesisError::Other("RegisterStreamConsumer returned no consumer".into())
                })?;
                Ok(StreamConsumer {
                    arn: consumer.consumer_arn().to_owned(),
                    active: consumer.consumer_status() == &ConsumerStatus::Active,
                })
            }
            Err(err) => Err(err),
        }
    }

    /// Opens a SubscribeToShard event stream for one shard through a registered consumer.
    pub async fn subscribe(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        from: &ReadFrom,
    ) -> Result<Subscription, KinesisError> {
        let position = match from {
            ReadFrom::AfterSequenceNumber(sequence) => StartingPosition::builder()
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(sequence),
            ReadFrom::Start(StartPosition::TrimHorizon) => {
                StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
            }
            ReadFrom::Start(StartPosition::Latest) => {
                StartingPosition::builder().r#type(ShardIteratorType::Latest)
            }
            ReadFrom::Start(StartPosition::AtTimestamp { timestamp_ms }) => {
                StartingPosition::builder()
                    .r#type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(*timestamp_ms))
            }
        }
        .build()
        .map_err(|err| KinesisError::Other(format!("starting position: {err}")))?;
        let output = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(position)
            .send()
            .await
            .map_err(classify)?;
        Ok(Subscription { output })
    }

    pub async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordBatch, KinesisError> {
        let take_decoded = TakeDecodedRecords::default();
        let decoded = take_decoded.slot();
        let output = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(10_000))
            .customize()
            .interceptor(take_decoded)
            .send()
            .await
            .map_err(classify)?;
        // The records the connector decoded, or (a response it left to the SDK, a client
        // without the connector) the SDK's.
        let decoded = decoded.lock().ok().and_then(|mut slot| slot.take());
        // The SDK's own records win whenever it found any (the decoder hands it an empty
        // array, so that only happens when the decoder stood aside).
        let decoded = decoded.filter(|_| output.records.is_empty());
        let decoded_by_sdk = decoded.is_none();
        let records = match decoded {
            Some(DecodedRecords(records)) => {
                Arc::try_unwrap(records).unwrap_or_else(|shared| shared.as_ref().clone())
            }
            None => shard_records(output.records),
        };
        Ok(RecordBatch {
            next_iterator: output.next_shard_iterator,
            millis_behind_latest: output.millis_behind_latest,
            records,
            decoded_by_sdk,
        })
    }
}

/// Records as the SDK returns them (GetRecords and SubscribeToShard alike), taken over without
/// copying their data (a response can hold 10 MiB).
fn shard_records(records: Vec<aws_sdk_kinesis::types::Record>) -> Vec<ShardRecord> {
    records
        .into_iter()
        .map(|record| ShardRecord {
            sequence_number: record.sequence_number,
            data: Bytes::from(record.data.into_inner()),
        })
        .collect()
}

/// Sorts a failed call by what the caller should do. Kinesis names its errors the same way in
/// every operation, so the error code decides.
fn classify<E, R>(err: SdkError<E, R>) -> KinesisError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&err));
    match err.as_service_error().and_then(ProvideErrorMetadata::code) {
        Some("ExpiredIteratorException") => KinesisError::ExpiredIterator,
        Some("ResourceNotFoundException") => KinesisError::NotFound(message),
        // Too many calls, or (ResourceInUse) not now: a consumer still being created, a
        // previous subscription to the shard still open, a concurrent registration.
        Some(
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "ResourceInUseException",
        ) => KinesisError::Throttled(message),
        _ => KinesisError::Other(message),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::error::ErrorMetadata;
    use aws_sdk_kinesis::operation::get_records::GetRecordsError;
    use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardError;

    use super::*;

    fn get_records_error(code: &str) -> SdkError<GetRecordsError, ()> {
        SdkError::service_error(
            GetRecordsError::generic(ErrorMetadata::builder().code(code).build()),
            (),
        )
    }

    fn subscribe_error(code: &str) -> SdkError<SubscribeToShardError, ()> {
        SdkError::service_error(
            SubscribeToShardError::generic(ErrorMetadata::builder().code(code).build()),
            (),
        )
    }

    #[test]
    fn errors_are_sorted_by_their_code() {
        assert!(matches!(
            classify(get_records_error("ExpiredIteratorException")),
            KinesisError::ExpiredIterator
        ));
        for code in [
            "ProvisionedThroughputExceededException",
            "KMSThrottlingException",
            "LimitExceededException",
        ] {
            assert!(
                matches!(
                    classify(get_records_error(code)),
                    KinesisError::Throttled(_)
                ),
                "{code}"
            );
        }
        assert!(matches!(
            classify(get_records_error("AccessDeniedException")),
            KinesisError::Other(_)
        ));
        assert!(matches!(
            classify(subscribe_error("ResourceInUseException")),
            KinesisError::Throttled(_)
        ));
        assert!(matches!(
            classify(subscribe_error("ResourceNotFoundException")),
            KinesisError::NotFound(_)
        ));
        // No answer at all (a connection failure) is retried like any other error.
        let timeout = SdkError::<GetRecordsError, ()>::timeout_error("no answer");
        assert!(matches!(classify(timeout), KinesisError::Other(_)));
    }
}
