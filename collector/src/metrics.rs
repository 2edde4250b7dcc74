//! Counters, rendered by hand in the Prometheus text format (version 0.0.4) at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use clickheatmap_model::event::RejectReason;

use crate::queue::QueueStats;

/// Response statuses counted one by one; everything else is `other`.
const STATUSES: [u16; 14] = [
    200, 202, 204, 400, 403, 404, 405, 408, 413, 415, 429, 500, 503, 504,
];

const REASONS: usize = RejectReason::ALL.len();

/// The collector's counters. All are monotonic; gauges come from the queue when rendering.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; STATUSES.len() + 1],
    request_bytes: AtomicU64,
    events_accepted: AtomicU64,
    events_rejected: [AtomicU64; REASONS],
    put_calls: AtomicU64,
    records_put: AtomicU64,
    record_bytes_put: AtomicU64,
    events_put: AtomicU64,
    put_record_failures: AtomicU64,
    put_retries: AtomicU64,
    records_over_retry_budget: AtomicU64,
}

/// A copy of the counters at one moment, for tests and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub requests_by_status: Vec<(u16, u64)>,
    pub request_bytes: u64,
    pub events_accepted: u64,
    pub events_rejected: Vec<(RejectReason, u64)>,
    pub put_calls: u64,
    pub records_put: u64,
    pub record_bytes_put: u64,
    pub events_put: u64,
    pub put_record_failures: u64,
    pub put_retries: u64,
    pub records_over_retry_budget: u64,
}

impl MetricsSnapshot {
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.requests_by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.events_rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    pub(crate) fn response(&self, status: u16) {
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        add(&self.requests[slot], 1);
    }

    pub(crate) fn request_bytes(&self, n: usize) {
        add(&self.request_bytes, n as u64);
    }

    pub(crate) fn accepted(&self, n: usize) {
        add(&self.events_accepted, n as u64);
    }

    pub(crate) fn rejected(&self, reason: RejectReason, n: u64) {
        add(&self.events_rejected[reason.index()], n);
    }

    pub(crate) fn put_call(&self) {
        add(&self.put_calls, 1);
    }

    pub(crate) fn record_put(&self, bytes: usize, events: usize) {
        add(&self.records_put, 1);
        add(&self.record_bytes_put, bytes as u64);
        add(&self.events_put, events as u64);
    }

    pub(crate) fn put_record_failure(&self) {
        add(&self.put_record_failures, 1);
    }

    pub(crate) fn put_retry(&self) {
        add(&self.put_retries, 1);
    }

    pub(crate) fn over_retry_budget(&self, records: u64) {
        add(&self.records_over_retry_budget, records);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests_by_status: STATUSES
                .iter()
                .zip(&self.requests)
                .map(|(status, n)| (*status, get(n)))
                .collect(),
            request_bytes: get(&self.request_bytes),
            events_accepted: get(&self.events_accepted),
            events_rejected: RejectReason::ALL
                .iter()
                .map(|reason| (*reason, get(&self.events_rejected[reason.index()])))
                .collect(),
            put_calls: get(&self.put_calls),
            records_put: get(&self.records_put),
            record_bytes_put: get(&self.record_bytes_put),
            events_put: get(&self.events_put),
            put_record_failures: get(&self.put_record_failures),
            put_retries: get(&self.put_retries),
            records_over_retry_budget: get(&self.records_over_retry_budget),
        }
    }

    /// The Prometheus text exposition of every counter and of the queue's gauges.
    pub fn render(&self, queue: &QueueStats) -> String {
        let mut out = String::with_capacity(4096);
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        header(
            &mut out,
            "collector_http_requests_total",
            "counter",
            "HTTP responses by status code.",
        );
        for (status, counter) in STATUSES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "collector_http_requests_total{{status=\"{status}\"}} {}",
                get(counter)
            );
        }
        let _ = writeln!(
            out,
            "collector_http_requests_total{{status=\"other\"}} {}",
            get(&self.requests[STATUSES.len()])
        );
        counter(
            &mut out,
            "collector_request_body_bytes_total",
            "Bytes of click request bodies read.",
            get(&self.request_bytes),
        );
        counter(
            &mut out,
            "collector_events_accepted_total",
            "Click events accepted and queued.",
            get(&self.events_accepted),
        );
        header(
            &mut out,
            "collector_events_rejected_total",
            "counter",
            "Click events rejected, by reason (the aggregator's reason labels).",
        );
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "collector_events_rejected_total{{reason=\"{}\"}} {}",
                reason.label(),
                get(&self.events_rejected[reason.index()])
            );
        }
        counter(
            &mut out,
            "collector_put_calls_total",
            "Calls to the sink (PutRecords for Kinesis).",
            get(&self.put_calls),
        );
        counter(
            &mut out,
            "collector_records_put_total",
            "Records the sink took.",
            get(&self.records_put),
        );
        counter(
            &mut out,
            "collector_record_bytes_put_total",
            "Bytes of records the sink took.",
            get(&self.record_bytes_put),
        );
        counter(
            &mut out,
            "collector_events_put_total",
            "Events in records the sink took.",
            get(&self.events_put),
        );
        counter(
            &mut out,
            "collector_put_record_failures_total",
            "Records the sink did not take on one attempt (each is retried).",
            get(&self.put_record_failures),
        );
        counter(
            &mut out,
            "collector_put_retries_total",
            "Records sent again after a failure.",
            get(&self.put_retries),
        );
        counter(
            &mut out,
            "collector_records_over_retry_budget_total",
            "Records that used up the retry budget (they keep being retried).",
            get(&self.records_over_retry_budget),
        );
        gauge(
            &mut out,
            "collector_queue_events",
            "Events accepted and not yet taken by the sink.",
            queue.events as u64,
        );
        gauge(
            &mut out,
            "collector_queue_bytes",
            "Bytes accepted and not yet taken by the sink.",
            queue.bytes as u64,
        );
        gauge(
            &mut out,
            "collector_queue_capacity_events",
            "Events the queue holds before requests get 503.",
            queue.capacity_events as u64,
        );
        gauge(
            &mut out,
            "collector_queue_capacity_bytes",
            "Bytes the queue holds before requests get 503.",
            queue.capacity_bytes as u64,
        );
        gauge(
            &mut out,
            "collector_queue_records_waiting",
            "Closed records waiting to be sent or retried.",
            queue.records_waiting as u64,
        );
        gauge(
            &mut out,
            "collector_queue_events_over_retry_budget",
            "Events in records that used up the retry budget and are still being retried.",
            queue.events_over_retry_budget as u64,
        );
        gauge(
            &mut out,
            "collector_sink_healthy",
            "1 when the sink's last call took at least one record (or its probe passed).",
            u64::from(queue.sink_healthy),
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}
