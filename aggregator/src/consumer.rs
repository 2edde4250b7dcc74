//! The production consumer: every shard of a Kinesis stream, each with its own windows, sink
//! files and checkpoint.
//!
//! A shard is the unit of state: its windows, its watermark, its output files
//! (`<writer>-<shard>-...`) and its checkpoint move together, so a shard can be read by any
//! replica after a crash or a rebalance without losing or repeating a click. The driver is a loop
//! over shard tasks and a discovery tick; a parent shard is read to its end before its children
//! start (resharding keeps event order per key).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clickheatmap_crds::progress::{ProgressCounts, ShardProgress};
use clickheatmap_crds::{AggregatorConfig, KinesisSourceConfig, ReplicasConfig, ShardAssignment};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::aggregate::{Aggregator, Counters, Flush};
use crate::budget::{BudgetShare, ResponseBudget};
use crate::checkpoint::{
    CHECKPOINT_VERSION, CheckpointError, CheckpointStore, FlushIntent, ShardCheckpoint,
};
use crate::kinesis::{KinesisError, KinesisSource, ReadFrom, ShardInfo, ShardRecord};
use crate::lease::ShardLeases;
use crate::live::LiveBoard;
use crate::location::{Location, LocationError};
use crate::metrics::{Metrics, ShardGauges};
use crate::progress::{ProgressBoard, ProgressWriter, counts_of};
use crate::sink::{CuratedSink, DeadLetterTarget, FlushPlan, SinkError};
use crate::time::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
    #[error("the configuration's source is not a Kinesis stream")]
    NotKinesis,
}

/// Where output, dead letters and checkpoints go, opened once and shared by every shard.
#[derive(Clone, Debug)]
pub struct Targets {
    pub output: Location,
    pub dead_letters: Option<Location>,
    pub checkpoints: CheckpointStore,
    /// The stream's folder in the checkpoint location, where shard leases live.
    pub coordination: Location,
}

impl Targets {
    pub fn open(config: &AggregatorConfig, stream: &str) -> Result<Targets, ConsumerError> {
        let output = Location::open(&config.output.root)?;
        let dead_letters = Location::dead_letters(config, &output)?;
        let checkpoints = Location::checkpoints(config, &output)?;
        let coordination = Location {
            store: checkpoints.store.clone(),
            prefix: checkpoints.child(stream),
        };
        Ok(Targets {
            output,
            dead_letters,
            checkpoints: CheckpointStore::new(checkpoints, stream),
            coordination,
        })
    }

    /// Every object-store prefix a consumer of `config` writes below (the table, dead letters,
    /// checkpoints with their intents and shard leases), for least-privilege policies: the IAM
    /// contract test checks each against docs/iam/aggregator-policy.json.
    pub fn write_prefixes(&self, config: &AggregatorConfig) -> Vec<String> {
        let mut prefixes = vec![self.output.child(&config.output.table).to_string()];
        if let Some(dead_letters) = &self.dead_letters {
            prefixes.push(dead_letters.prefix.to_string());
        }
        prefixes.push(self.checkpoints.prefix().to_string());
        prefixes.push(self.coordination.prefix.to_string());
        prefixes
    }
}

/// One shard's aggregation state, sink and checkpoint.
pub struct ShardWorker {
    stream: String,
    shard_id: String,
    aggregator: Aggregator,
    sink: CuratedSink,
    checkpoints: CheckpointStore,
    epoch: u64,
    /// The last sequence number applied to the windows.
    position: Option<String>,
    committed_position: Option<String>,
    finished: bool,
    last_commit: Instant,
    /// When the live board last got this shard's cells, and the flush count then.
    live_published: Option<(Instant, u64)>,
    checkpoint_interval: Duration,
    /// A flush whose files are not all written yet; retried as it is.
    pending: Option<(Flush, FlushPlan)>,
    published: Counters,
    metrics: Arc<Metrics>,
    /// What the replica's progress report says about this shard, and what was counted since it
    /// was last handed to the board.
    progress: ShardProgress,
    unreported: ProgressCounts,
    board: Arc<ProgressBoard>,
}

impl ShardWorker {
    /// Restores the shard from its checkpoint, undoing a flush that did not commit.
    pub async fn recover(
        config: &AggregatorConfig,
        targets: &Targets,
        stream: &str,
        shard_id: &str,
        metrics: Arc<Metrics>,
        board: Arc<ProgressBoard>,
    ) -> Result<ShardWorker, ConsumerError> {
        let dead_letters = targets
            .dead_letters
            .as_ref()
            .map(|location| DeadLetterTarget {
                store: location.store.clone(),
                prefix: location.prefix.clone(),
            });
        let mut sink = CuratedSink::new(
            targets.output.store.clone(),
            targets.output.child(&config.output.table),
            dead_letters.clone(),
            format!("{}-{shard_id}", config.writer_id),
        );
        let mut aggregator = Aggregator::new(config, dead_letters.is_some());
        let checkpoint = targets.checkpoints.load(shard_id).await?;
        let (epoch, position, finished) = match &checkpoint {
            Some(checkpoint) => {
                aggregator.restore(&checkpoint.windows);
                sink.set_flush_sequence(checkpoint.flush_sequence);
                (
                    checkpoint.epoch,
                    checkpoint.sequence_number.clone(),
                    checkpoint.shard_finished,
                )
            }
            None => (0, None, false),
        };
        if let Some(intent) = targets.checkpoints.load_intent(shard_id).await?
            && intent.epoch > epoch
        {
            tracing::warn!(
                shard = shard_id,
                epoch = intent.epoch,
                files = intent.plan.curated.len(),
                "undoing a flush that was interrupted before its checkpoint"
            );
            sink.remove(&intent.plan).await?;
        }
        tracing::info!(shard = shard_id, epoch, position = ?position, finished, "shard recovered");
        let published = aggregator.counters();
        let progress = ShardProgress {
            shard_id: shard_id.to_owned(),
            sequence_number: position.clone(),
            // Every window before this was handed out: the table is complete up to it, across
            // restarts (a restart must not look like a first window to the operator).
            last_committed_window_end_ms: checkpoint
                .as_ref()
                .map(|c| c.windows.closed_before)
                .filter(|end| *end > i64::MIN),
            watermark_ms: aggregator.watermark(),
            oldest_open_window_start_ms: aggregator.oldest_open_window(),
            window_size_ms: aggregator.window_size_ms(),
            ..ShardProgress::default()
        };
        Ok(ShardWorker {
            stream: stream.to_owned(),
            shard_id: shard_id.to_owned(),
            aggregator,
            sink,
            checkpoints: targets.checkpoints.clone(),
            epoch,
            committed_position: position.clone(),
            position,
            finished,
            last_commit: Instant::now(),
            live_published: None,
            checkpoint_interval: config.checkpoint.interval.as_std(),
            pending: None,
            published,
            metrics,
            progress,
            unreported: ProgressCounts::default(),
            board,
        })
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// Counts the clicks of a batch of records (they follow the current position).
    pub fn apply(&mut self, records: &[ShardRecord]) {
        self.aggregator.set_clock(now_ms());
        for record in records {
            self.aggregator.process_record(0, &record.data);
        }
        if let Some(last) = records.last() {
            self.position = Some(last.sequence_number.clone());
        }
        let counters = self.aggregator.counters();
        self.metrics.add_counters(&counters, &self.published);
        let read = counts_of(&counters).since(&counts_of(&self.published));
        let now = now_ms();
        if !records.is_empty() {
            self.progress.last_record_at_ms = Some(now);
        }
        if read.accepted > 0 {
            self.progress.last_accepted_at_ms = Some(now);
            self.progress.last_event_time_ms = self.aggregator.watermark();
        }
        self.progress.counts.add(&read);
        self.unreported.add(&read);
        self.published = counters;
    }

    /// Hands the shard's progress to the replica's report (once per read, never per event).
    pub fn report_progress(&mut self, millis_behind_latest: Option<i64>, committed: bool) {
        if millis_behind_latest.is_some() {
            self.progress.millis_behind_latest = millis_behind_latest;
        }
        self.progress.watermark_ms = self.aggregator.watermark();
        self.progress.oldest_open_window_start_ms = self.aggregator.oldest_open_window();
        let read = std::mem::take(&mut self.unreported);
        self.board.update(&self.progress, &read, committed);
    }

    /// Shows the shard's open windows on the live endpoint: right after a flush (so written
    /// windows leave the board as they land in the table), otherwise at most every
    /// [`LIVE_PUBLISH_INTERVAL`] — summing the open cells is not free with many pages.
    pub fn publish_live(&mut self, board: &LiveBoard) {
        let flushes = self.sink.flush_sequence();
        let due = match self.live_published {
            None => true,
            Some((at, seen)) => seen != flushes || at.elapsed() >= LIVE_PUBLISH_INTERVAL,
        };
        if due {
            board.publish(&self.shard_id, &self.aggregator);
            self.live_published = Some((Instant::now(), flushes));
        }
    }

    /// The shard is caught up and quiet: nothing older than `time_ms` is expected any more.
    pub fn advance_watermark(&mut self, time_ms: i64) {
        self.aggregator.advance_clock(0, time_ms);
    }

    pub fn gauges(&self, millis_behind_latest: i64) -> ShardGauges {
        ShardGauges {
            millis_behind_latest,
            watermark_lag_ms: self
                .aggregator
                .watermark()
                .map_or(0, |watermark| now_ms().saturating_sub(watermark)),
            open_windows: self.aggregator.open_windows() as u64,
        }
    }

    /// Writes what is final and commits; checkpoints anyway when the interval has passed.
    pub async fn flush(&mut self) -> Result<(), ConsumerError> {
        if self.pending.is_none() {
            let due = self.position != self.committed_position
                && self.last_commit.elapsed() >= self.checkpoint_interval;
            let mut flush = self.aggregator.ready();
            if (!flush.windows.is_empty() || due) && flush.dead_letters.is_empty() {
                flush.dead_letters = self.aggregator.take_dead_letters();
            }
            if flush.is_empty() {
                return if due { self.commit().await } else { Ok(()) };
            }
            let plan = self.sink.plan(&flush.windows, &flush.dead_letters);
            self.pending = Some((flush, plan));
        }
        self.write_pending().await
    }

    /// The shard was closed by resharding and read to its end: everything in it is final.
    pub async fn finish_shard(&mut self) -> Result<(), ConsumerError> {
        if self.pending.is_none() {
            let flush = self.aggregator.finish();
            let plan = self.sink.plan(&flush.windows, &flush.dead_letters);
            self.pending = Some((flush, plan));
        }
        self.finished = true;
        self.write_pending().await
    }

    /// Commits the current position and windows without writing windows (shutdown, rebalance).
    pub async fn checkpoint_now(&mut self) -> Result<(), ConsumerError> {
        if self.pending.is_none() {
            let dead_letters = self.aggregator.take_dead_letters();
            if !dead_letters.is_empty() {
                let flush = Flush {
                    windows: Vec::new(),
                    dead_letters,
                };
                let plan = self.sink.plan(&flush.windows, &flush.dead_letters);
                self.pending = Some((flush, plan));
            }
        }
        if self.pending.is_some() {
            self.write_pending().await
        } else if self.position != self.committed_position {
            self.commit().await
        } else {
            Ok(())
        }
    }

    async fn write_pending(&mut self) -> Result<(), ConsumerError> {
        let Some((flush, plan)) = &self.pending else {
            return Ok(());
        };
        self.checkpoints
            .save_intent(
                &self.shard_id,
                &FlushIntent {
                    epoch: self.epoch + 1,
                    plan: plan.clone(),
                },
            )
            .await?;
        let report = self.sink.write(&flush.windows, &flush.dead_letters).await?;
        self.metrics.add_written(&report);
        let newest_end = flush.windows.iter().map(|window| window.window_end).max();
        self.pending = None;
        self.commit().await?;
        // Only what is committed: an uncommitted flush is undone at the next start.
        self.progress.files_committed += report.files;
        if let Some(end) = newest_end {
            let newest = self
                .progress
                .last_committed_window_end_ms
                .get_or_insert(end);
            *newest = (*newest).max(end);
        }
        self.report_progress(None, true);
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let checkpoint = ShardCheckpoint {
            version: CHECKPOINT_VERSION,
            stream: self.stream.clone(),
            shard_id: self.shard_id.clone(),
            epoch: self.epoch + 1,
            sequence_number: self.position.clone(),
            shard_finished: self.finished,
            flush_sequence: self.sink.flush_sequence(),
            windows: self.aggregator.snapshot(),
        };
        self.checkpoints.save(&checkpoint).await?;
        self.epoch += 1;
        self.committed_position = self.position.clone();
        self.last_commit = Instant::now();
        self.metrics.checkpoint_written();
        self.progress.sequence_number = self.committed_position.clone();
        self.progress.last_commit_at_ms = Some(now_ms());
        self.report_progress(None, true);
        Ok(())
    }
}

/// Exponential backoff with jitter, capped.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
            seed: now_ms() as u64 | 1,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: between half and all of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_millis(self.seed % (half.as_millis() as u64 + 1))
    }
}

/// Why a shard task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ShardOutcome {
    /// Read to its end (closed by resharding) and fully written.
    Finished,
    /// Asked to stop; its state is checkpointed.
    Stopped,
}

/// How a shard is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// GetRecords polling.
    Poll,
    /// Enhanced fan-out: SubscribeToShard through the registered consumer.
    Subscribe { consumer_arn: String },
}

/// What every shard reader of a replica shares.
#[derive(Clone, Debug)]
pub struct ShardServices {
    pub source: KinesisSource,
    pub settings: KinesisSourceConfig,
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveBoard>,
    /// The record data GetRecords responses may hold at once (polling only).
    pub budget: Arc<ResponseBudget>,
}

/// Reads one shard until it ends or `stop` turns true.
pub async fn run_shard(
    mut worker: ShardWorker,
    services: ShardServices,
    mode: ReadMode,
    mut stop: watch::Receiver<bool>,
) -> (String, Result<ShardOutcome, ConsumerError>) {
    let shard_id = worker.shard_id().to_owned();
    let ShardServices {
        source,
        settings,
        metrics,
        live,
        budget,
    } = services;
    let mut reader = ShardReader {
        worker: &mut worker,
        source: &source,
        settings: &settings,
        stop: &mut stop,
        metrics: &metrics,
        live: &live,
    };
    let outcome = match &mode {
        ReadMode::Poll => reader.poll(budget.join()).await,
        ReadMode::Subscribe { consumer_arn } => reader.subscribe(consumer_arn).await,
    };
    metrics.remove_shard(&shard_id);
    live.remove(&shard_id);
    (shard_id, outcome)
}

/// How often a shard's open cells reach the live board when nothing was flushed (the viewer polls
/// every second).
pub const LIVE_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// Kinesis allows five GetRecords calls per second per shard, shared by all its consumers.
const MIN_POLL_SPACING: Duration = Duration::from_millis(200);

/// What reading one shard needs, whichever way it is read.
struct ShardReader<'a> {
    worker: &'a mut ShardWorker,
    source: &'a KinesisSource,
    settings: &'a KinesisSourceConfig,
    stop: &'a mut watch::Receiver<bool>,
    metrics: &'a Metrics,
    live: &'a LiveBoard,
}

impl ShardReader<'_> {
    /// Where reading resumes: after the last record taken, or at the configured start.
    fn read_from(&self) -> ReadFrom {
        match self.worker.position() {
            Some(sequence) => ReadFrom::AfterSequenceNumber(sequence.to_owned()),
            None => ReadFrom::Start(self.settings.start_position.clone()),
        }
    }

    /// Takes what one read returned and writes what it closed. `Ok(true)`: the shard has ended
    /// and everything in it is written.
    async fn take(
        &mut self,
        records: &[ShardRecord],
        millis_behind_latest: Option<i64>,
        shard_ended: bool,
    ) -> Result<bool, ConsumerError> {
        let quiet = records.is_empty();
        self.worker.apply(records);
        let behind = millis_behind_latest.unwrap_or(0);
        if quiet && behind == 0 {
            let delay =
                i64::try_from(self.settings.idle_watermark_delay.as_millis()).unwrap_or(i64::MAX);
            self.worker
                .advance_watermark(now_ms().saturating_sub(delay));
        }
        self.metrics
            .set_shard(self.worker.shard_id(), self.worker.gauges(behind));
        self.worker.report_progress(millis_behind_latest, false);
        if shard_ended {
            flush_with_retry(self.worker, self.stop, self.metrics, true).await?;
            tracing::info!(
                shard = self.worker.shard_id(),
                "shard closed and fully read"
            );
            return Ok(true);
        }
        flush_with_retry(self.worker, self.stop, self.metrics, false).await?;
        // After the flush: a window just written leaves the board as it lands.
        self.worker.publish_live(self.live);
        Ok(false)
    }

    async fn stopped(&mut self) -> Result<ShardOutcome, ConsumerError> {
        self.worker.checkpoint_now().await?;
        Ok(ShardOutcome::Stopped)
    }

    async fn pause(&mut self, pause: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// GetRecords polling, within the per-shard call limit.
    async fn poll(&mut self, mut share: BudgetShare) -> Result<ShardOutcome, ConsumerError> {
        if self.worker.is_finished() {
            return Ok(ShardOutcome::Finished);
        }
        // Windows restored from the checkpoint are open too.
        self.worker.publish_live(self.live);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut iterator: Option<String> = None;
        loop {
            if *self.stop.borrow() {
                return self.stopped().await;
            }
            let mut pause = MIN_POLL_SPACING;
            let polled = match &iterator {
                Some(current) => self
                    .source
                    .get_records(current, share.limit(self.settings.max_records_per_call))
                    .await
                    .map(Some),
                None => self
                    .source
                    .iterator(self.worker.shard_id(), &self.read_from())
                    .await
                    .map(|fresh| {
                        iterator = Some(fresh);
                        None
                    }),
            };
            match polled {
                Ok(None) => continue,
                Ok(Some(batch)) => {
                    self.metrics.get_records_called(batch.decoded_by_sdk);
                    backoff.reset();
                    share.observe(
                        batch.records.len(),
                        batch.records.iter().map(|record| record.data.len()).sum(),
                    );
                    let ended = batch.next_iterator.is_none();
                    if self
                        .take(&batch.records, batch.millis_behind_latest, ended)
                        .await?
                    {
                        return Ok(ShardOutcome::Finished);
                    }
                    iterator = batch.next_iterator;
                    if batch.records.is_empty() {
                        pause = self
                            .settings
                            .idle_poll_interval
                            .as_std()
                            .max(MIN_POLL_SPACING);
                    }
                }
                Err(KinesisError::ExpiredIterator) => {
                    tracing::info!(shard = self.worker.shard_id(), "iterator expired; renewing");
                    iterator = None;
                    continue;
                }
                Err(KinesisError::Throttled(message)) => {
                    self.metrics.throttled();
                    pause = backoff.next_delay();
                    tracing::debug!(shard = self.worker.shard_id(), ?pause, %message, "throttled");
                }
                Err(err) => {
                    self.metrics.source_error();
                    pause = backoff.next_delay();
                    tracing::warn!(shard = self.worker.shard_id(), ?pause, error = %err, "reading the shard failed; retrying");
                    iterator = None;
                }
            }
            self.pause(pause).await;
        }
    }

    /// Enhanced fan-out: one subscription after another, each resuming after the last record
    /// taken. A subscription that ends normally (Kinesis closes them after five minutes) is
    /// renewed at once; refusals back off.
    async fn subscribe(&mut self, consumer_arn: &str) -> Result<ShardOutcome, ConsumerError> {
        if self.worker.is_finished() {
            return Ok(ShardOutcome::Finished);
        }
        self.worker.publish_live(self.live);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            if *self.stop.borrow() {
                return self.stopped().await;
            }
            let from = self.read_from();
            let failure = match self
                .source
                .subscribe(consumer_arn, self.worker.shard_id(), &from)
                .await
            {
                Ok(mut subscription) => {
                    self.metrics.subscribed();
                    tracing::debug!(
                        shard = self.worker.shard_id(),
                        ?from,
                        "subscribed to the shard"
                    );
                    loop {
                        let next = tokio::select! {
                            next = subscription.next() => next,
                            _ = self.stop.changed() => break None,
                        };
                        match next {
                            Ok(Some(event)) => {
                                self.metrics.fan_out_event(event.records.len());
                                backoff.reset();
                                if self
                                    .take(
                                        &event.records,
                                        Some(event.millis_behind_latest),
                                        event.shard_ended,
                                    )
                                    .await?
                                {
                                    return Ok(ShardOutcome::Finished);
                                }
                            }
                            Ok(None) => break None,
                            Err(err) => break Some(err),
                        }
                    }
                }
                Err(err) => Some(err),
            };
            match failure {
                None => {}
                Some(KinesisError::Throttled(message)) => {
                    self.metrics.throttled();
                    let pause = backoff.next_delay();
                    tracing::debug!(shard = self.worker.shard_id(), ?pause, %message, "subscription refused for now");
                    self.pause(pause).await;
                }
                Some(err) => {
                    self.metrics.source_error();
                    let pause = backoff.next_delay();
                    tracing::warn!(shard = self.worker.shard_id(), ?pause, error = %err, "the shard subscription failed; subscribing again");
                    self.pause(pause).await;
                }
            }
        }
    }
}

/// Flushes, retrying storage failures with backoff; a stop request ends the retries (the
/// checkpoint then still holds the last committed state, so nothing is lost).
async fn flush_with_retry(
    worker: &mut ShardWorker,
    stop: &mut watch::Receiver<bool>,
    metrics: &Metrics,
    finish: bool,
) -> Result<(), ConsumerError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let result = if finish {
            worker.finish_shard().await
        } else {
            worker.flush().await
        };
        match result {
            Ok(()) => return Ok(()),
            Err(err) if *stop.borrow() => return Err(err),
            Err(err) => {
                metrics.sink_error();
                let pause = backoff.next_delay();
                tracing::warn!(shard = worker.shard_id(), ?pause, error = %err, "writing failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// A hash of a shard id that never changes between versions or machines (FNV-1a), so every
/// replica agrees on who owns which shard.
pub fn stable_shard_hash(shard_id: &str) -> u64 {
    shard_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether replica `index` of `count` reads this shard.
pub fn owns_shard(shard_id: &str, replicas: ReplicasConfig) -> bool {
    replicas.count <= 1
        || stable_shard_hash(shard_id) % u64::from(replicas.count) == u64::from(replicas.index)
}

/// Which shards can start now: not running, not finished, and with every parent finished (or
/// gone from the stream, aged out by retention).
pub fn startable_shards<'s>(
    shards: &'s [ShardInfo],
    running: &BTreeSet<String>,
    finished: &BTreeSet<String>,
) -> Vec<&'s ShardInfo> {
    let known: BTreeSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    shards
        .iter()
        .filter(|shard| !running.contains(&shard.shard_id) && !finished.contains(&shard.shard_id))
        .filter(|shard| {
            shard
                .parents()
                .all(|parent| finished.contains(parent) || !known.contains(parent))
        })
        .collect()
}

/// Consumes a Kinesis stream until `stop` turns true; then every shard checkpoints and returns.
pub async fn consume(
    config: &AggregatorConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    live: Arc<LiveBoard>,
    stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let clickheatmap_crds::SourceConfig::Kinesis(settings) = &config.source else {
        return Err(ConsumerError::NotKinesis);
    };
    let source = KinesisSource::connect(settings).await;
    consume_from(config, settings, source, metrics, ready, live, stop).await
}

/// Longest a progress report write may hold up the supervision loop.
const PROGRESS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn consume_from(
    config: &AggregatorConfig,
    settings: &KinesisSourceConfig,
    source: KinesisSource,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    live: Arc<LiveBoard>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let targets = Targets::open(config, source.stream())?;
    let mut leases = match config.replicas.assignment {
        ShardAssignment::Ordinal => None,
        ShardAssignment::Leases => {
            let holder = replica_identity(&config.writer_id);
            tracing::info!(%holder, "splitting shards by leases");
            Some(ShardLeases::new(
                &targets.coordination,
                &holder,
                i64::try_from(config.replicas.lease_duration.as_millis()).unwrap_or(i64::MAX),
            ))
        }
    };
    let mut tick = settings.shard_discovery_interval.as_std();
    if leases.is_some() {
        tick = tick.min(config.replicas.lease_duration.as_std() / 3);
    }
    let tick_ms = i64::try_from(tick.as_millis()).unwrap_or(i64::MAX);
    let consumer_arn = match &settings.enhanced_fan_out {
        None => None,
        Some(fan_out) => {
            match active_consumer(&source, &fan_out.consumer_name, &mut stop, &metrics).await {
                Some(arn) => Some(arn),
                None => return Ok(()),
            }
        }
    };
    let mut readers = ShardReaders {
        config,
        targets: &targets,
        services: ShardServices {
            source: source.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            live,
            budget: ResponseBudget::mib(settings.response_budget_mib),
        },
        board: Arc::new(ProgressBoard::default()),
        consumer_arn,
        tasks: JoinSet::new(),
        running: BTreeMap::new(),
        subscribed: BTreeSet::new(),
        finished: BTreeSet::new(),
        releasing: BTreeSet::new(),
        retry_at: BTreeMap::new(),
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
    };
    let mut discovery = tokio::time::interval(tick);
    let mut progress = ProgressWriter::new(
        &targets.coordination,
        source.stream(),
        &replica_identity(&config.writer_id),
        now_ms(),
    );
    let mut progress_tick = tokio::time::interval(Duration::from_secs(2));
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = discovery.tick() => {}
            _ = progress_tick.tick() => {
                // The operator's view of this replica; a failure only delays it. Bounded, so that
                // a slow store never holds up lease renewal or shutdown in this loop.
                match tokio::time::timeout(PROGRESS_WRITE_TIMEOUT, progress.write_if_due(&readers.board, now_ms())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => tracing::warn!(path = %progress.path(), error = %err, "writing the progress report failed; retrying"),
                    Err(_) => tracing::warn!(path = %progress.path(), "writing the progress report timed out; retrying"),
                }
                continue;
            }
            Some(joined) = readers.tasks.join_next(), if !readers.tasks.is_empty() => {
                readers.ended(joined, leases.as_mut()).await;
                if *stop.borrow() && readers.tasks.is_empty() {
                    resign(&mut leases).await;
                    return Ok(());
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    readers.stop_all().await;
                    resign(&mut leases).await;
                    return Ok(());
                }
            }
        }
        if *stop.borrow() {
            continue;
        }
        let shards = match source.list_shards().await {
            Ok(shards) => {
                ready.store(true, Ordering::Relaxed);
                shards
            }
            Err(err) => {
                metrics.source_error();
                tracing::warn!(error = %err, "listing shards failed; retrying at the next tick");
                if let Some(leases) = leases.as_mut() {
                    readers.stop_fenced(leases, now_ms(), tick_ms);
                }
                continue;
            }
        };
        readers.finish_closed_subscriptions(&shards);
        readers.learn_finished_parents(&shards).await;
        let running = readers.running_ids();
        let startable = startable_shards(&shards, &running, &readers.finished);
        // What this replica should be reading now.
        let wanted: BTreeSet<String> = match leases.as_mut() {
            None => startable
                .iter()
                .filter(|shard| owns_shard(&shard.shard_id, config.replicas))
                .map(|shard| shard.shard_id.clone())
                .chain(running.iter().cloned())
                .collect(),
            Some(leases) => {
                let readable: Vec<String> = startable
                    .iter()
                    .map(|shard| shard.shard_id.clone())
                    .chain(running.iter().cloned())
                    .collect();
                match leases.tick(&readable, now_ms()).await {
                    Ok(assignment) => {
                        for shard_id in assignment.release {
                            readers.hand_over(shard_id, leases).await;
                        }
                        assignment.owned
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "renewing shard leases failed; retrying at the next tick");
                        readers.stop_fenced(leases, now_ms(), tick_ms);
                        running.clone()
                    }
                }
            }
        };
        readers.stop_unwanted(&wanted);
        readers.start(startable, &wanted).await;
    }
}

/// The shard readers of one replica: which run (each with its own stop switch, since a shard can
/// be handed to another replica), which are read through a subscription, which are finished or
/// being handed over, and when a failed one may start again.
struct ShardReaders<'a> {
    config: &'a AggregatorConfig,
    targets: &'a Targets,
    services: ShardServices,
    board: Arc<ProgressBoard>,
    /// The enhanced fan-out consumer, when shards are read through subscriptions.
    consumer_arn: Option<String>,
    tasks: JoinSet<(String, Result<ShardOutcome, ConsumerError>)>,
    running: BTreeMap<String, watch::Sender<bool>>,
    /// Shards read through a subscription: when one closes, its reader is stopped and it is
    /// finished with GetRecords (Kinesis names the children in the last event, but not every
    /// implementation does; polling a closed shard ends unambiguously).
    subscribed: BTreeSet<String>,
    finished: BTreeSet<String>,
    /// Shards whose lease goes back once their reader has stopped and checkpointed.
    releasing: BTreeSet<String>,
    retry_at: BTreeMap<String, Instant>,
    backoff: Backoff,
}

impl ShardReaders<'_> {
    fn running_ids(&self) -> BTreeSet<String> {
        self.running.keys().cloned().collect()
    }

    /// A reader has ended: records how (a failed one restarts from its checkpoint after a
    /// backoff) and gives its lease back if it was being handed over.
    async fn ended(
        &mut self,
        joined: Result<(String, Result<ShardOutcome, ConsumerError>), tokio::task::JoinError>,
        leases: Option<&mut ShardLeases>,
    ) {
        let (shard_id, outcome) = match joined {
            Ok(ended) => ended,
            Err(err) => {
                tracing::error!(error = %err, "a shard task panicked");
                return;
            }
        };
        self.running.remove(&shard_id);
        self.board.remove(&shard_id);
        self.subscribed.remove(&shard_id);
        match outcome {
            Ok(ShardOutcome::Finished) => {
                self.finished.insert(shard_id.clone());
            }
            Ok(ShardOutcome::Stopped) => {}
            Err(err) => {
                tracing::error!(shard = %shard_id, error = %err, "shard task failed; restarting it from its checkpoint");
                self.retry_at
                    .insert(shard_id.clone(), Instant::now() + self.backoff.next_delay());
            }
        }
        if self.releasing.remove(&shard_id)
            && let Some(leases) = leases
            && let Err(err) = leases.release(&shard_id).await
        {
            // It expires by itself; another replica then takes it.
            tracing::warn!(shard = %shard_id, error = %err, "giving the lease back failed");
        }
    }

    /// Stops every reader and waits until each has checkpointed.
    async fn stop_all(&mut self) {
        tracing::info!(
            shards = self.running.len(),
            "stopping: checkpointing every shard"
        );
        for switch in self.running.values() {
            switch.send_replace(true);
        }
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok((shard_id, Err(err))) = joined {
                tracing::error!(shard = %shard_id, error = %err, "checkpoint at shutdown failed; the last committed one stands");
            }
        }
    }

    /// A subscribed shard that ListShards reports closed is finished with GetRecords.
    fn finish_closed_subscriptions(&mut self, shards: &[ShardInfo]) {
        for shard in shards.iter().filter(|shard| shard.closed) {
            if self.subscribed.remove(&shard.shard_id)
                && let Some(switch) = self.running.get(&shard.shard_id)
            {
                tracing::info!(shard = %shard.shard_id, "the shard was closed; finishing it with GetRecords");
                switch.send_replace(true);
            }
        }
    }

    /// A parent read by another replica counts as finished once its checkpoint says so.
    async fn learn_finished_parents(&mut self, shards: &[ShardInfo]) {
        for shard in shards {
            if !self.finished.contains(&shard.shard_id)
                && !self.running.contains_key(&shard.shard_id)
                && shards
                    .iter()
                    .any(|child| child.parents().any(|p| p == shard.shard_id))
                && matches!(self.targets.checkpoints.load(&shard.shard_id).await, Ok(Some(c)) if c.shard_finished)
            {
                self.finished.insert(shard.shard_id.clone());
            }
        }
    }

    /// The lease of a shard goes back: at once when it is not read here, else once its reader
    /// has stopped and checkpointed.
    async fn hand_over(&mut self, shard_id: String, leases: &mut ShardLeases) {
        if self.running.contains_key(&shard_id) {
            self.releasing.insert(shard_id);
        } else if let Err(err) = leases.release(&shard_id).await {
            tracing::warn!(shard = %shard_id, error = %err, "giving the lease back failed");
        }
    }

    /// Stops the readers of shards whose leases could not be renewed in time: another replica
    /// may take them any moment.
    fn stop_fenced(&mut self, leases: &mut ShardLeases, now: i64, tick_ms: i64) {
        for shard_id in leases.fence(now, tick_ms) {
            tracing::warn!(shard = %shard_id, "the lease could not be renewed in time; stopping the reader");
            if let Some(switch) = self.running.get(&shard_id) {
                switch.send_replace(true);
            }
            self.releasing.remove(&shard_id);
        }
    }

    /// Stops the readers of shards this replica must let go of (they checkpoint first).
    fn stop_unwanted(&self, wanted: &BTreeSet<String>) {
        for (shard_id, switch) in &self.running {
            if !wanted.contains(shard_id) || self.releasing.contains(shard_id) {
                if !*switch.borrow() {
                    tracing::info!(shard = %shard_id, "handing the shard over");
                }
                switch.send_replace(true);
            }
        }
    }

    /// Starts a reader, from its checkpoint, for every wanted shard that can start now.
    async fn start(&mut self, startable: Vec<&ShardInfo>, wanted: &BTreeSet<String>) {
        let now = Instant::now();
        for shard in startable {
            let shard_id = &shard.shard_id;
            if !wanted.contains(shard_id) || self.releasing.contains(shard_id) {
                continue;
            }
            if self.retry_at.get(shard_id).is_some_and(|at| *at > now) {
                continue;
            }
            self.retry_at.remove(shard_id);
            let worker = match ShardWorker::recover(
                self.config,
                self.targets,
                self.services.source.stream(),
                shard_id,
                self.services.metrics.clone(),
                self.board.clone(),
            )
            .await
            {
                Ok(worker) => worker,
                Err(err) => {
                    tracing::error!(shard = %shard_id, error = %err, "recovering the shard failed; retrying later");
                    self.retry_at
                        .insert(shard_id.clone(), now + self.backoff.next_delay());
                    continue;
                }
            };
            let mode = match &self.consumer_arn {
                Some(arn) if !shard.closed => {
                    self.subscribed.insert(shard_id.clone());
                    ReadMode::Subscribe {
                        consumer_arn: arn.clone(),
                    }
                }
                _ => ReadMode::Poll,
            };
            let (switch, shard_stop) = watch::channel(false);
            self.running.insert(shard_id.clone(), switch);
            self.tasks
                .spawn(run_shard(worker, self.services.clone(), mode, shard_stop));
        }
    }
}

/// Registers the enhanced fan-out consumer if needed and waits until it is active; `None` when
/// asked to stop first. Failures are retried with backoff (the aggregator stays not ready).
async fn active_consumer(
    source: &KinesisSource,
    name: &str,
    stop: &mut watch::Receiver<bool>,
    metrics: &Metrics,
) -> Option<String> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut stream_arn: Option<String> = None;
    loop {
        if *stop.borrow() {
            return None;
        }
        // The stream's ARN is asked for once; only the consumer is polled until it is active.
        let found = match &stream_arn {
            Some(arn) => source.register_consumer(arn, name).await.map(Some),
            None => source.stream_arn().await.map(|arn| {
                stream_arn = Some(arn);
                None
            }),
        };
        let pause = match found {
            // The ARN just arrived: ask for the consumer right away.
            Ok(None) => continue,
            Ok(Some(consumer)) if consumer.active => {
                tracing::info!(consumer = name, arn = %consumer.arn, "reading with enhanced fan-out");
                return Some(consumer.arn);
            }
            Ok(Some(_)) => {
                tracing::info!(
                    consumer = name,
                    "waiting for the stream consumer to become active"
                );
                Duration::from_millis(500)
            }
            Err(KinesisError::Throttled(message)) => {
                metrics.throttled();
                tracing::debug!(consumer = name, %message, "registering the consumer: throttled");
                backoff.next_delay()
            }
            Err(err) => {
                metrics.source_error();
                let pause = backoff.next_delay();
                tracing::warn!(consumer = name, ?pause, error = %err, "registering the stream consumer failed; retrying");
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn resign(leases: &mut Option<ShardLeases>) {
    if let Some(leases) = leases.as_mut()
        && let Err(err) = leases.resign().await
    {
        tracing::warn!(error = %err, "giving the leases back at shutdown failed; they expire by themselves");
    }
}

/// A name for this replica among the others: the pod name in Kubernetes, else host-less but
/// unique enough for processes on one machine.
pub fn replica_identity(writer_id: &str) -> String {
    let raw = std::env::var("CLICKHEATMAP_REPLICA_ID")
        .or_else(|_| std::env::var("POD_NAME"))
        .unwrap_or_else(|_| format!("{writer_id}-{}-{}", std::process::id(), now_ms()));
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parent.map(Into::into),
            adjacent_parent_shard_id: adjacent.map(Into::into),
            closed: false,
        }
    }

    fn ids(shards: Vec<&ShardInfo>) -> Vec<&str> {
        shards.iter().map(|s| s.shard_id.as_str()).collect()
    }

    #[test]
    fn parents_are_read_before_children() {
        let shards = vec![
            shard("a", None, None),
            shard("b", None, None),
            shard("c", Some("a"), None),
            shard("d", Some("a"), Some("b")),
        ];
        let none = BTreeSet::new();
        assert_eq!(ids(startable_shards(&shards, &none, &none)), vec!["a", "b"]);
        let running = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert!(startable_shards(&shards, &running, &none).is_empty());
        let finished = BTreeSet::from(["a".to_owned()]);
        let running = BTreeSet::from(["b".to_owned()]);
        assert_eq!(
            ids(startable_shards(&shards, &running, &finished)),
            vec!["c"]
        );
        let finished = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            ids(startable_shards(&shards, &none, &finished)),
            vec!["c", "d"]
        );
    }

    #[test]
    fn parents_aged_out_of_the_stream_do_not_block() {
        let shards = vec![shard("c", Some("gone"), None)];
        let none = BTreeSet::new();
        assert_eq!(ids(startable_shards(&shards, &none, &none)), vec!["c"]);
    }

    fn record(sequence: u64, page: &str, t: i64) -> ShardRecord {
        ShardRecord {
            sequence_number: format!("{sequence:020}"),
            data: bytes::Bytes::from(format!(
                r#"{{"event_type":"click","event_time_ms":{t},"page_id":"{page}","x":1,"y":1,"viewport_width":10,"viewport_height":10}}"#
            )),
        }
    }

    fn parquet_files(dir: &std::path::Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    found.push(path.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    /// The progress a shard hands to the replica's report: counts by reason, the newest
    /// committed window, files and the commit time, at the path the operator reads.
    #[tokio::test]
    async fn a_commit_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AggregatorConfig::default();
        config.output.root = dir.path().join("out").to_str().unwrap().to_owned();
        config.window.allowed_lateness = clickheatmap_crds::Duration::ZERO;
        let targets = Targets::open(&config, "clicks").unwrap();
        // (A local store's paths are relative to its root; an S3 one's to the bucket.)
        let written = format!("{}/", targets.coordination.child("_progress"));
        assert!(
            config.progress_location("clicks").ends_with(&written),
            "the operator reads where the aggregator writes: {written}"
        );
        let board = Arc::new(ProgressBoard::default());
        let metrics = Arc::new(Metrics::default());
        const T: i64 = 1_766_919_000_000;
        let mut worker = ShardWorker::recover(
            &config,
            &targets,
            "clicks",
            "shard-0",
            metrics,
            board.clone(),
        )
        .await
        .unwrap();
        worker.aggregator.set_clock(T);
        let mut bad = record(3, "a", T + 2);
        bad.data = bytes::Bytes::from_static(b"{not json");
        worker.apply(&[record(1, "a", T + 1), bad, record(4, "a", T + 60_001)]);
        worker.report_progress(Some(1_500), false);
        worker.flush().await.unwrap();

        let mut writer = ProgressWriter::new(&targets.coordination, "clicks", "replica-0", T);
        assert!(writer.write_if_due(&board, T).await.unwrap());
        let bytes = std::fs::read(
            dir.path()
                .join("out/_checkpoints/clicks/_progress/replica-0.json"),
        )
        .unwrap();
        let report: clickheatmap_crds::progress::ReplicaProgress =
            serde_json::from_slice(&bytes).unwrap();
        assert_eq!(report.shards.len(), 1);
        let shard = &report.shards[0];
        assert_eq!(shard.shard_id, "shard-0");
        assert_eq!(
            shard.sequence_number.as_deref(),
            Some("00000000000000000004")
        );
        assert_eq!(shard.millis_behind_latest, Some(1_500));
        assert_eq!(shard.last_committed_window_end_ms, Some(T + 60_000));
        // The window's Parquet file and the dead letter of the malformed record.
        assert_eq!(shard.files_committed, 2);
        assert!(shard.last_commit_at_ms.is_some() && shard.last_accepted_at_ms.is_some());
        assert_eq!(shard.last_event_time_ms, Some(T + 60_001));
        // The second click's window is still open (the watermark is inside it).
        assert_eq!(shard.oldest_open_window_start_ms, Some(T + 60_000));
        assert_eq!(shard.window_size_ms, 60_000);
        assert_eq!(shard.counts.accepted, 2);
        assert_eq!(shard.counts.records, 3);
        assert_eq!(shard.counts.rejected["malformed_json"], 1);
        assert_eq!(report.totals, shard.counts);
    }

    /// A crash after a flush's files were written but before its checkpoint: the restart deletes
    /// those files, resumes from the committed position with the committed windows, and the
    /// replayed records produce each click exactly once.
    #[tokio::test]
    async fn an_uncommitted_flush_is_undone_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AggregatorConfig::default();
        config.output.root = dir.path().join("out").to_str().unwrap().to_owned();
        config.checkpoint.location = Some(dir.path().join("ckpt").to_str().unwrap().to_owned());
        config.window.allowed_lateness = clickheatmap_crds::Duration::ZERO;
        let targets = Targets::open(&config, "s").unwrap();
        let metrics = Arc::new(Metrics::default());
        const T: i64 = 1_766_919_000_000;

        let mut worker = ShardWorker::recover(
            &config,
            &targets,
            "s",
            "shard-0",
            metrics.clone(),
            Default::default(),
        )
        .await
        .unwrap();
        worker.aggregator.set_clock(T);
        worker.apply(&[record(1, "a", T + 1), record(2, "a", T + 60_001)]);
        worker.flush().await.unwrap();
        assert_eq!(
            parquet_files(dir.path()),
            vec!["local-shard-0-1766919000000.parquet"]
        );
        let checkpoint_file = dir.path().join("ckpt/s/shard-0.json");
        let committed = std::fs::read(&checkpoint_file).unwrap();

        // The next flush writes its intent and its file, then the checkpoint write fails.
        let batch = [record(3, "a", T + 60_002), record(4, "b", T + 120_001)];
        worker.apply(&batch);
        std::fs::remove_file(&checkpoint_file).unwrap();
        std::fs::create_dir(&checkpoint_file).unwrap();
        assert!(worker.flush().await.is_err());
        assert_eq!(
            parquet_files(dir.path()).len(),
            2,
            "the uncommitted file was written"
        );
        drop(worker);
        std::fs::remove_dir(&checkpoint_file).unwrap();
        std::fs::write(&checkpoint_file, committed).unwrap();

        let mut worker = ShardWorker::recover(
            &config,
            &targets,
            "s",
            "shard-0",
            metrics,
            Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(worker.position(), Some("00000000000000000002"));
        assert_eq!(
            parquet_files(dir.path()),
            vec!["local-shard-0-1766919000000.parquet"],
            "undone"
        );
        worker.aggregator.set_clock(T);
        worker.apply(&batch);
        worker.flush().await.unwrap();
        worker.finish_shard().await.unwrap();

        let location = Location::open(&config.output.root).unwrap();
        let rows = crate::query::read_rows(
            &location.store,
            &location.child("curated_heatmap"),
            &Default::default(),
        )
        .await
        .unwrap();
        let total: BTreeMap<(String, i64), i64> =
            rows.iter().fold(BTreeMap::new(), |mut acc, row| {
                *acc.entry((row.page_id.clone(), row.window_start))
                    .or_insert(0) += row.clicks;
                acc
            });
        assert_eq!(
            total,
            BTreeMap::from([
                (("a".to_owned(), T), 1),
                (("a".to_owned(), T + 60_000), 2),
                (("b".to_owned(), T + 120_000), 1),
            ])
        );
        let restored = targets.checkpoints.load("shard-0").await.unwrap().unwrap();
        assert!(restored.shard_finished);
        assert_eq!(
            restored.sequence_number.as_deref(),
            Some("00000000000000000004")
        );
    }

    #[test]
    fn every_shard_has_exactly_one_owner() {
        for count in 1..6u32 {
            for n in 0..200 {
                let shard = format!("shardId-{n:012}");
                let owners = (0..count)
                    .filter(|&index| {
                        owns_shard(
                            &shard,
                            ReplicasConfig {
                                count,
                                index,
                                ..ReplicasConfig::default()
                            },
                        )
                    })
                    .count();
                assert_eq!(owners, 1, "{shard} with {count} replicas");
            }
        }
        // The hash is part of the on-disk contract: it must not change between versions.
        assert_eq!(stable_shard_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_shard_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, step) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            assert!(*delay >= Duration::from_millis(step / 2), "{delays:?}");
            assert!(*delay <= Duration::from_millis(step), "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
