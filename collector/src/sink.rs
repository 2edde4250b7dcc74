//! Where accepted clicks go: a [`RecordSink`] takes records (NDJSON, several events each) and
//! says, per record, whether it took it. The queue retries what it did not take.
//!
//! [`crate::kinesis::KinesisSink`] is the production sink; [`ChannelSink`] hands records to
//! another task in the same process (tests, the benchmark, and the local mode's embedded
//! stream); [`StdoutSink`] prints them, for debugging.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, mpsc};

/// The outcome of one `put_records` call: one entry per record, in order.
pub type PutResults = Vec<Result<(), PutError>>;

/// A boxed future, so that sinks can be used as `Arc<dyn RecordSink>`.
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A destination for records.
pub trait RecordSink: Send + Sync + 'static {
    /// Puts a batch of records (within [`RecordSink::limits`]). Returns one result per record, in
    /// the order given; a call that fails as a whole fails every record with the same error.
    fn put_records(&self, records: Vec<Bytes>) -> SinkFuture<'_, PutResults>;

    /// Size limits of one record and of one call.
    fn limits(&self) -> SinkLimits {
        SinkLimits::KINESIS
    }

    /// Whether the sink can be reached (used at start-up and by `/readyz`).
    fn probe(&self) -> SinkFuture<'_, Result<(), PutError>> {
        Box::pin(async { Ok(()) })
    }

    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// Length of the partition keys the Kinesis sink makes (16 hex digits), counted against the
/// record and call size limits.
pub const PARTITION_KEY_LEN: usize = 16;

/// Size limits of a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkLimits {
    /// Largest record, in bytes of data.
    pub max_record_bytes: usize,
    /// Most records in one call.
    pub max_records_per_call: usize,
    /// Most bytes of data in one call.
    pub max_bytes_per_call: usize,
}

impl SinkLimits {
    /// Kinesis PutRecords: 500 records, 1 MiB per record and 5 MiB per call, partition keys
    /// included (the Kinesis sink's keys are [`PARTITION_KEY_LEN`] bytes long).
    pub const KINESIS: SinkLimits = SinkLimits {
        max_record_bytes: 1024 * 1024 - PARTITION_KEY_LEN,
        max_records_per_call: 500,
        max_bytes_per_call: 5 * 1024 * 1024 - 500 * PARTITION_KEY_LEN,
    };
}

/// Why a record was not taken. Every failure is retried; `throttled` only changes the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PutError {
    /// A short code: the service's error code (`ProvisionedThroughputExceededException`...) or
    /// one of ours (`Timeout`, `Transport`, `ChannelClosed`...).
    pub code: String,
    pub message: String,
    /// The service said to slow down.
    pub throttled: bool,
}

impl PutError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        PutError {
            code: code.into(),
            message: message.into(),
            throttled: false,
        }
    }

    pub fn throttled(code: impl Into<String>, message: impl Into<String>) -> Self {
        PutError {
            throttled: true,
            ..PutError::new(code, message)
        }
    }
}

/// Sends each record into a Tokio channel; the receiving side is the consumer. A full channel
/// makes `put_records` wait (back-pressure reaches the HTTP side through the queue); a closed
/// one fails the records, which are then retried like any other failure.
#[derive(Clone, Debug)]
pub struct ChannelSink {
    sender: mpsc::Sender<Bytes>,
}

impl ChannelSink {
    /// A sink and the receiver of its records; `capacity` records may wait in the channel.
    pub fn new(capacity: usize) -> (ChannelSink, mpsc::Receiver<Bytes>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (ChannelSink { sender }, receiver)
    }

    pub fn from_sender(sender: mpsc::Sender<Bytes>) -> ChannelSink {
        ChannelSink { sender }
    }
}

impl RecordSink for ChannelSink {
    fn put_records(&self, records: Vec<Bytes>) -> SinkFuture<'_, PutResults> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(records.len());
            for record in records {
                results.push(self.sender.send(record).await.map_err(|_| {
                    PutError::new("ChannelClosed", "the receiving side of the channel is gone")
                }));
            }
            results
        })
    }

    fn limits(&self) -> SinkLimits {
        // The local stream takes what Kinesis takes, so that local mode behaves the same.
        SinkLimits::KINESIS
    }

    fn probe(&self) -> SinkFuture<'_, Result<(), PutError>> {
        let closed = self.sender.is_closed();
        Box::pin(async move {
            if closed {
                Err(PutError::new(
                    "ChannelClosed",
                    "the receiving side of the channel is gone",
                ))
            } else {
                Ok(())
            }
        })
    }

    fn name(&self) -> &'static str {
        "channel"
    }
}

/// Writes every record to standard output (records are NDJSON, so the output is too). For
/// debugging: `clickheatmap-collector --sink stdout | jq .`
#[derive(Debug, Default)]
pub struct StdoutSink {
    out: Mutex<Option<tokio::io::Stdout>>,
}

impl StdoutSink {
    pub fn new() -> Self {
        StdoutSink::default()
    }
}

impl RecordSink for StdoutSink {
    fn put_records(&self, records: Vec<Bytes>) -> SinkFuture<'_, PutResults> {
        Box::pin(async move {
            let mut out = self.out.lock().await;
            let out = out.get_or_insert_with(tokio::io::stdout);
            let mut results = Vec::with_capacity(records.len());
            for record in records {
                let mut written = out.write_all(&record).await;
                if written.is_ok() {
                    written = out.flush().await;
                }
                results.push(written.map_err(|err| PutError::new("Stdout", err.to_string())));
            }
            results
        })
    }

    fn name(&self) -> &'static str {
        "stdout"
    }
}
