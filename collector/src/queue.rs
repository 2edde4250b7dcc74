//! The bounded outgoing buffer and the task that ships it to the sink.
//!
//! Accepted events are appended, as NDJSON lines, to an open record; a record is closed when the
//! next event would take it past the target size, or when its first event has waited a flush
//! interval. The shipper sends closed records in batches within the sink's limits, one call at a
//! time — while a call is in flight, more records close, so batches grow with the load.
//!
//! Admission is all or nothing per request, and an event counts against the capacity from the
//! moment it is accepted until the sink has taken its record: a full queue refuses the request
//! (503) instead of dropping anything. Records the sink does not take are retried with
//! exponential backoff and jitter, for as long as the process runs; after the retry budget they
//! are counted and logged at error level, and keep being retried. When every record of a call
//! fails, the whole shipper pauses with the same backoff, so a throttled or unreachable sink is
//! not hammered.
//!
//! On shutdown the open record is closed and everything is sent, until the queue is empty or a
//! deadline passes; what is still undelivered then is reported (and logged) by count.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::config::QueueConfig;
use crate::ingest::Batch;
use crate::metrics::Metrics;
use crate::sink::{PutError, PutResults, RecordSink, SinkLimits};

/// The shared buffer. The HTTP handlers push into it; [`run_shipper`] empties it.
#[derive(Debug)]
pub struct EventQueue {
    config: QueueConfig,
    sink_limits: SinkLimits,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    wake: Notify,
    drain: watch::Sender<Option<Instant>>,
}

#[derive(Debug)]
struct State {
    /// The record being filled.
    open: Vec<u8>,
    open_events: usize,
    open_since: Option<Instant>,
    /// Closed records waiting to be sent, failed ones (with their backoff) first.
    ready: VecDeque<Pending>,
    /// Events and bytes accepted and not yet taken by the sink (open, ready and in flight).
    events: usize,
    bytes: usize,
    events_over_budget: usize,
    consecutive_failed_calls: u32,
    paused_until: Option<Instant>,
    sink_healthy: bool,
    draining: bool,
    rng: u64,
}

#[derive(Debug)]
struct Pending {
    data: Bytes,
    events: usize,
    attempts: u32,
    not_before: Instant,
}

/// Why a request's events were not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the outgoing queue is full; retry after {retry_after:?}")]
    Full { retry_after: Duration },
    #[error("the collector is shutting down")]
    ShuttingDown,
}

/// The queue's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub events: usize,
    pub bytes: usize,
    pub capacity_events: usize,
    pub capacity_bytes: usize,
    pub records_waiting: usize,
    pub events_over_retry_budget: usize,
    pub sink_healthy: bool,
    pub draining: bool,
}

impl QueueStats {
    /// At least 90 % full (by events or bytes).
    pub fn nearly_full(&self) -> bool {
        self.events * 10 >= self.capacity_events * 9 || self.bytes * 10 >= self.capacity_bytes * 9
    }
}

/// What the final drain left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub undelivered_events: usize,
    pub undelivered_records: usize,
}

/// Records taken for one call.
struct Taken {
    records: Vec<Pending>,
    /// When there may be something to do next, if nothing arrives before.
    wake_at: Option<Instant>,
}

impl EventQueue {
    pub fn new(config: QueueConfig, sink_limits: SinkLimits, metrics: Arc<Metrics>) -> Self {
        let (drain, _) = watch::channel(None);
        EventQueue {
            state: Mutex::new(State {
                open: Vec::new(),
                open_events: 0,
                open_since: None,
                ready: VecDeque::new(),
                events: 0,
                bytes: 0,
                events_over_budget: 0,
                consecutive_failed_calls: 0,
                paused_until: None,
                sink_healthy: true,
                draining: false,
                rng: crate::random_seed(),
            }),
            config,
            sink_limits,
            metrics,
            wake: Notify::new(),
            drain,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues every accepted event of `batch`, or none of them; `now` is when its request
    /// arrived.
    pub fn push(&self, batch: &Batch, now: Instant) -> Result<(), QueueError> {
        let (events, bytes) = (batch.accepted(), batch.bytes());
        if events == 0 {
            return Ok(());
        }
        let target = self.config.record_target_bytes;
        let mut wake = false;
        {
            let mut state = self.lock();
            if state.draining {
                return Err(QueueError::ShuttingDown);
            }
            // An empty queue takes any one body, so a body bigger than the capacity in events is
            // not refused forever (the byte capacity is at least one body).
            let fits = state.events + events <= self.config.capacity_events
                && state.bytes + bytes <= self.config.capacity_bytes;
            if state.events > 0 && !fits {
                let retry_after = state
                    .paused_until
                    .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
                    .max(Duration::from_secs(1));
                return Err(QueueError::Full { retry_after });
            }
            for line in batch.lines() {
                if !state.open.is_empty() && state.open.len() + line.len() > target {
                    state.seal();
                    wake = true;
                }
                if state.open.is_empty() {
                    state.open.reserve(target.min(64 * 1024));
                }
                state.open.extend_from_slice(line);
                state.open_events += 1;
                if state.open_since.is_none() {
                    state.open_since = Some(now);
                    wake = true;
                }
            }
            state.events += events;
            state.bytes += bytes;
        }
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub fn stats(&self) -> QueueStats {
        let state = self.lock();
        QueueStats {
            events: state.events,
            bytes: state.bytes,
            capacity_events: self.config.capacity_events,
            capacity_bytes: self.config.capacity_bytes,
            records_waiting: state.ready.len(),
            events_over_retry_budget: state.events_over_budget,
            sink_healthy: state.sink_healthy,
            draining: state.draining,
        }
    }

    /// Records the outcome of a sink probe (start-up check).
    pub fn set_sink_healthy(&self, healthy: bool) {
        self.lock().sink_healthy = healthy;
    }

    /// Stops accepting events and tells the shipper to send everything before `deadline`.
    pub fn start_drain(&self, deadline: Instant) {
        self.lock().draining = true;
        self.drain.send_replace(Some(deadline));
        self.wake.notify_one();
    }

    fn take(&self, now: Instant) -> Taken {
        let mut state = self.lock();
        if let Some(since) = state.open_since
            && (state.draining || now >= since + self.config.flush_interval)
        {
            state.seal();
        }
        if let Some(until) = state.paused_until
            && until > now
        {
            return Taken {
                records: Vec::new(),
                wake_at: Some(until),
            };
        }
        let limits = self.sink_limits;
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut index = 0;
        while index < state.ready.len() && records.len() < limits.max_records_per_call {
            let record = &state.ready[index];
            let due = record.not_before <= now;
            let fits = bytes + record.data.len() <= limits.max_bytes_per_call;
            if due && fits {
                bytes += record.data.len();
                if let Some(record) = state.ready.remove(index) {
                    if record.attempts > 0 {
                        self.metrics.put_retry();
                    }
                    records.push(record);
                }
            } else if due {
                break;
            } else {
                index += 1;
            }
        }
        let flush_at = state
            .open_since
            .map(|since| since + self.config.flush_interval);
        let retry_at = state.ready.iter().map(|record| record.not_before).min();
        let wake_at = [flush_at, retry_at].into_iter().flatten().min();
        Taken { records, wake_at }
    }

    /// Applies a call's results: taken records leave the queue, failed ones go back with a
    /// backoff.
    fn complete(&self, records: Vec<Pending>, results: PutResults, now: Instant) {
        let retry = &self.config.retry;
        let count = records.len();
        let mut results = results.into_iter();
        let mut failed: Vec<Pending> = Vec::new();
        let mut first_error: Option<PutError> = None;
        let mut throttled = 0usize;
        let mut newly_over_budget = (0usize, 0usize);
        let mut state = self.lock();
        for mut record in records {
            let result = results.next().unwrap_or_else(|| {
                Err(PutError::new(
                    "MissingResult",
                    "the sink answered fewer results than records",
                ))
            });
            match result {
                Ok(()) => {
                    self.metrics.record_put(record.data.len(), record.events);
                    state.events = state.events.saturating_sub(record.events);
                    state.bytes = state.bytes.saturating_sub(record.data.len());
                    if record.attempts >= retry.budget {
                        state.events_over_budget =
                            state.events_over_budget.saturating_sub(record.events);
                    }
                }
                Err(error) => {
                    self.metrics.put_record_failure();
                    throttled += usize::from(error.throttled);
                    first_error.get_or_insert(error);
                    record.attempts = record.attempts.saturating_add(1);
                    if record.attempts == retry.budget {
                        state.events_over_budget += record.events;
                        newly_over_budget.0 += 1;
                        newly_over_budget.1 += record.events;
                    }
                    let delay = state.backoff(record.attempts, retry);
                    record.not_before = now + delay;
                    failed.push(record);
                }
            }
        }
        let failures = failed.len();
        if failures == count && count > 0 {
            state.consecutive_failed_calls = state.consecutive_failed_calls.saturating_add(1);
            let attempt = state.consecutive_failed_calls;
            let pause = state.backoff(attempt, retry);
            state.paused_until = Some(now + pause);
            state.sink_healthy = false;
        } else {
            state.consecutive_failed_calls = 0;
            state.paused_until = None;
            state.sink_healthy = true;
        }
        for record in failed.into_iter().rev() {
            state.ready.push_front(record);
        }
        let queued = state.events;
        drop(state);
        if let Some(error) = first_error {
            tracing::warn!(
                failed = failures,
                records = count,
                throttled,
                code = %error.code,
                error = %error.message,
                queued_events = queued,
                "the sink did not take every record; retrying them with backoff"
            );
        }
        if newly_over_budget.0 > 0 {
            self.metrics.over_retry_budget(newly_over_budget.0 as u64);
            tracing::error!(
                records = newly_over_budget.0,
                events = newly_over_budget.1,
                attempts = retry.budget,
                "records still failing after the retry budget; they are kept and retried while the collector runs"
            );
        }
    }

    fn undelivered(&self) -> DrainReport {
        let state = self.lock();
        DrainReport {
            undelivered_events: state.events,
            undelivered_records: state.ready.len() + usize::from(!state.open.is_empty()),
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().events == 0
    }
}

impl State {
    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let data = Bytes::from(std::mem::take(&mut self.open));
        self.ready.push_back(Pending {
            data,
            events: std::mem::take(&mut self.open_events),
            attempts: 0,
            // Due at once; `take` compares with its own `now`, which is never earlier.
            not_before: self.open_since.take().unwrap_or_else(Instant::now),
        });
    }

    /// Exponential backoff with "equal jitter": half the delay fixed, half random.
    fn backoff(&mut self, attempt: u32, retry: &crate::config::RetryPolicy) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let delay = retry
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(retry.max_backoff);
        self.rng = crate::splitmix64(self.rng);
        let half = delay / 2;
        let jitter = half.mul_f64((self.rng >> 11) as f64 / (1u64 << 53) as f64);
        half + jitter
    }
}

/// Sends the queue's records to `sink` until a drain started with
/// [`EventQueue::start_drain`] has emptied the queue or passed its deadline.
pub async fn run_shipper(queue: Arc<EventQueue>, sink: Arc<dyn RecordSink>) -> DrainReport {
    let mut drain = queue.drain.subscribe();
    loop {
        let now = Instant::now();
        let taken = queue.take(now);
        let deadline = *drain.borrow_and_update();
        if taken.records.is_empty() {
            if let Some(deadline) = deadline {
                if queue.is_empty() {
                    return DrainReport::default();
                }
                if now >= deadline {
                    return queue.undelivered();
                }
            }
            let wake_at = [taken.wake_at, deadline].into_iter().flatten().min();
            tokio::select! {
                () = queue.wake.notified() => {}
                () = sleep_until(wake_at) => {}
                _ = drain.changed() => {}
            }
            continue;
        }
        let data: Vec<Bytes> = taken.records.iter().map(|r| r.data.clone()).collect();
        let count = data.len();
        queue.metrics.put_call();
        let put = sink.put_records(data);
        let results = tokio::select! {
            results = put => results,
            () = drain_deadline(drain.clone()) => {
                vec![Err(PutError::new("DrainDeadline", "the shutdown deadline passed during the call")); count]
            }
        };
        queue.complete(taken.records, results, Instant::now());
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a drain deadline is set and has passed.
async fn drain_deadline(mut drain: watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *drain.borrow_and_update();
        match deadline {
            Some(deadline) => {
                tokio::time::sleep_until(deadline.into()).await;
                return;
            }
            None => {
                if drain.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickheatmap_model::event::Limits;

    fn event(n: usize) -> String {
        format!(
            r#"{{"event_type":"click","event_time_ms":{n},"page_id":"p","x":1,"y":2,"viewport_width":10,"viewport_height":10}}"#
        )
    }

    fn batch(from: usize, count: usize) -> Batch {
        let body: String = (from..from + count).map(|n| event(n) + "\n").collect();
        crate::ingest::split_events(body.as_bytes(), &Limits::default())
    }

    fn queue(config: QueueConfig) -> EventQueue {
        EventQueue::new(config, SinkLimits::KINESIS, Arc::new(Metrics::new()))
    }

    #[test]
    fn records_close_at_the_target_size_and_keep_every_event() {
        let queue = queue(QueueConfig {
            record_target_bytes: 1000,
            ..QueueConfig::default()
        });
        queue.push(&batch(0, 100), Instant::now()).unwrap();
        let taken = queue.take(Instant::now() + Duration::from_secs(10));
        assert!(taken.records.len() > 5);
        let mut events = 0;
        for record in &taken.records {
            assert!(record.data.len() <= 1000);
            assert_eq!(
                record.data.iter().filter(|b| **b == b'\n').count(),
                record.events
            );
            events += record.events;
        }
        assert_eq!(events, 100);
        assert_eq!(queue.stats().events, 100, "in flight still counts");
        let results = vec![Ok(()); taken.records.len()];
        queue.complete(taken.records, results, Instant::now());
        assert_eq!(queue.stats().events, 0);
        assert_eq!(queue.stats().bytes, 0);
    }

    #[test]
    fn a_call_stays_within_the_sink_limits() {
        let limits = SinkLimits {
            max_record_bytes: 1000,
            max_records_per_call: 3,
            max_bytes_per_call: 2500,
        };
        let queue = EventQueue::new(
            QueueConfig {
                record_target_bytes: 1000,
                ..QueueConfig::default()
            },
            limits,
            Arc::new(Metrics::new()),
        );
        queue.push(&batch(0, 100), Instant::now()).unwrap();
        let now = Instant::now() + Duration::from_secs(10);
        let mut calls = 0;
        let mut events = 0;
        loop {
            let taken = queue.take(now);
            if taken.records.is_empty() {
                break;
            }
            calls += 1;
            assert!(taken.records.len() <= 3);
            assert!(taken.records.iter().map(|r| r.data.len()).sum::<usize>() <= 2500);
            events += taken.records.iter().map(|r| r.events).sum::<usize>();
            let results = vec![Ok(()); taken.records.len()];
            queue.complete(taken.records, results, now);
        }
        assert_eq!(events, 100);
        assert!(calls > 3);
        assert_eq!(queue.stats().events, 0);
    }

    #[test]
    fn a_full_queue_refuses_whole_requests_but_an_empty_one_takes_any() {
        let queue = queue(QueueConfig {
            capacity_events: 10,
            ..QueueConfig::default()
        });
        queue.push(&batch(0, 25), Instant::now()).unwrap();
        assert!(matches!(
            queue.push(&batch(25, 1), Instant::now()),
            Err(QueueError::Full { .. })
        ));
        assert_eq!(queue.stats().events, 25);
        queue.start_drain(Instant::now());
        assert_eq!(
            queue.push(&batch(26, 1), Instant::now()),
            Err(QueueError::ShuttingDown)
        );
    }

    #[test]
    fn failed_records_come_back_after_a_backoff() {
        let queue = queue(QueueConfig::default());
        queue.push(&batch(0, 3), Instant::now()).unwrap();
        let now = Instant::now() + Duration::from_secs(1);
        let taken = queue.take(now);
        assert_eq!(taken.records.len(), 1);
        queue.complete(
            taken.records,
            vec![Err(PutError::throttled(
                "ProvisionedThroughputExceededException",
                "slow down",
            ))],
            now,
        );
        assert!(!queue.stats().sink_healthy);
        assert!(queue.take(now).records.is_empty(), "paused");
        let later = now + Duration::from_secs(60);
        let taken = queue.take(later);
        assert_eq!(taken.records.len(), 1);
        assert_eq!(taken.records[0].attempts, 1);
        queue.complete(taken.records, vec![Ok(())], later);
        assert_eq!(queue.stats().events, 0);
        assert!(queue.stats().sink_healthy);
        let metrics = queue.metrics.snapshot();
        assert_eq!(
            (
                metrics.put_retries,
                metrics.put_record_failures,
                metrics.events_put
            ),
            (1, 1, 3)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = crate::config::RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            budget: 3,
        };
        let queue = queue(QueueConfig::default());
        let mut state = queue.lock();
        for attempt in 1..40 {
            let delay = state.backoff(attempt, &policy);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(2));
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
        }
    }
}
