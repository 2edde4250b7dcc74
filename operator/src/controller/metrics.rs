//! `/metrics` (Prometheus text), `/healthz` and `/readyz` of the controller.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::ControllerError;

/// Upper bounds (seconds) of the reconcile duration histogram: a resync that makes only reads
/// takes tens of milliseconds; creating a stream or waiting on AWS takes seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The controller's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles_ok: AtomicU64,
    reconciles_failed: AtomicU64,
    duration_micros: AtomicU64,
    /// Reconciles per bucket of [`DURATION_BUCKETS`] (not cumulative; the last is +Inf).
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    errors: Mutex<BTreeMap<&'static str, u64>>,
    ready: AtomicBool,
}

impl Metrics {
    pub fn observe_reconcile(&self, elapsed: Duration, ok: bool) {
        let counter = if ok {
            &self.reconciles_ok
        } else {
            &self.reconciles_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_micros.fetch_add(micros, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_error(&self, label: &'static str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(label).or_insert(0) += 1;
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let ok = self.reconciles_ok.load(Ordering::Relaxed);
        let failed = self.reconciles_failed.load(Ordering::Relaxed);
        let seconds = self.duration_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# HELP clickheatmap_operator_reconciles_total Reconciles by result.\n\
             # TYPE clickheatmap_operator_reconciles_total counter\n\
             clickheatmap_operator_reconciles_total{{result=\"ok\"}} {ok}\n\
             clickheatmap_operator_reconciles_total{{result=\"error\"}} {failed}\n\
             # HELP clickheatmap_operator_reconcile_duration_seconds Time spent reconciling.\n\
             # TYPE clickheatmap_operator_reconcile_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (index, count) in self.duration_buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = DURATION_BUCKETS
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), |bound| bound.to_string());
            let _ = writeln!(
                text,
                "clickheatmap_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "clickheatmap_operator_reconcile_duration_seconds_sum {seconds}\n\
             clickheatmap_operator_reconcile_duration_seconds_count {}\n\
             # HELP clickheatmap_operator_reconcile_errors_total Reconcile errors by class.\n\
             # TYPE clickheatmap_operator_reconcile_errors_total counter",
            ok + failed
        );
        if let Ok(errors) = self.errors.lock() {
            for (label, count) in errors.iter() {
                let _ = writeln!(
                    text,
                    "clickheatmap_operator_reconcile_errors_total{{error=\"{label}\"}} {count}"
                );
            }
        }
        text
    }
}

/// The router of the metrics port.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(metrics)
}

/// Serves the router on `0.0.0.0:port` until the process ends.
pub async fn serve(port: u16, metrics: Arc<Metrics>) -> Result<(), ControllerError> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|error| ControllerError::Startup(format!("metrics port {port}: {error}")))?;
    axum::serve(listener, router(metrics))
        .await
        .map_err(|error| ControllerError::Startup(format!("metrics server: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_error_labels() {
        let metrics = Metrics::default();
        metrics.observe_reconcile(Duration::from_millis(500), true);
        metrics.observe_reconcile(Duration::from_millis(500), false);
        metrics.observe_reconcile(Duration::from_millis(3), true);
        metrics.observe_reconcile(Duration::from_secs(60), true);
        metrics.observe_error("throttled");
        let text = metrics.render();
        assert!(text.contains("# TYPE clickheatmap_operator_reconcile_duration_seconds histogram"));
        for (bound, count) in [
            ("0.005", 1),
            ("0.25", 1),
            ("0.5", 3),
            ("10", 3),
            ("+Inf", 4),
        ] {
            let line = format!(
                "clickheatmap_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains("clickheatmap_operator_reconcile_duration_seconds_count 4"));
        assert!(text.contains("clickheatmap_operator_reconciles_total{result=\"ok\"} 3"));
        assert!(
            text.contains("clickheatmap_operator_reconcile_errors_total{error=\"throttled\"} 1")
        );
    }
}
