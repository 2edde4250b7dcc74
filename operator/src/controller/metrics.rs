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
use crate::dataplane::{Gauges, HealthCondition, State as ConditionState};

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
    /// Reconciles whose AWS side was planned and applied, and ones that reused the last
    /// outcome (same generation, drift check not due).
    aws_plans: AtomicU64,
    aws_plans_skipped: AtomicU64,
    /// Server-side applies of children sent, and ones skipped because the child already held
    /// what the operator would write.
    child_applies: AtomicU64,
    child_applies_skipped: AtomicU64,
    /// Every AWS call by operation, when the backend counts them.
    aws_calls: Option<crate::aws::CallCounter>,
    /// The data plane of each pipeline (`namespace/name`) at its last check.
    data_planes: Mutex<BTreeMap<String, DataPlaneGauges>>,
}

/// At most this many reject reasons per pipeline (the aggregator has fewer than 20).
const MAX_REASONS: usize = 32;

/// A label value in the Prometheus text format: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// One pipeline's data-plane series.
#[derive(Clone, Debug)]
struct DataPlaneGauges {
    gauges: Gauges,
    flowing: (ConditionState, &'static str),
    fresh: ConditionState,
}

/// The names of the per-pipeline data-plane series, for the chart's alerts and dashboard (a
/// test checks that every name they use is one of these, and that a real operator exports them).
pub const DATA_PLANE_METRICS: [&str; 10] = [
    "clickheatmap_pipeline_data_flowing",
    "clickheatmap_pipeline_stalled",
    "clickheatmap_pipeline_fresh",
    "clickheatmap_pipeline_lag_seconds",
    "clickheatmap_pipeline_table_age_seconds",
    "clickheatmap_pipeline_overdue_seconds",
    "clickheatmap_pipeline_accepted_per_minute",
    "clickheatmap_pipeline_rejected_per_minute",
    "clickheatmap_pipeline_rejected_ratio",
    "clickheatmap_pipeline_report_age_seconds",
];

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

    /// Metrics that also report the AWS calls `calls` counts.
    pub fn with_aws_calls(calls: crate::aws::CallCounter) -> Metrics {
        Metrics {
            aws_calls: Some(calls),
            ..Metrics::default()
        }
    }

    pub fn observe_aws_plan(&self, planned: bool) {
        let counter = if planned {
            &self.aws_plans
        } else {
            &self.aws_plans_skipped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_child_apply(&self, sent: bool) {
        let counter = if sent {
            &self.child_applies
        } else {
            &self.child_applies_skipped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_error(&self, label: &'static str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(label).or_insert(0) += 1;
        }
    }

    /// Records the judgement of a pipeline's data plane.
    pub fn set_data_plane(
        &self,
        pipeline: &str,
        gauges: &Gauges,
        flowing: &HealthCondition,
        fresh: &HealthCondition,
    ) {
        if let Ok(mut planes) = self.data_planes.lock() {
            planes.insert(
                pipeline.to_owned(),
                DataPlaneGauges {
                    gauges: gauges.clone(),
                    flowing: (flowing.state, flowing.reason),
                    fresh: fresh.state,
                },
            );
        }
    }

    /// The pipeline is gone: its series go too.
    pub fn forget_data_plane(&self, pipeline: &str) {
        if let Ok(mut planes) = self.data_planes.lock() {
            planes.remove(pipeline);
        }
    }

    fn render_data_planes(&self, text: &mut String) {
        let Ok(planes) = self.data_planes.lock() else {
            return;
        };
        let help = [
            (
                "gauge",
                "1 when clicks were accepted within health.quietPeriod (DataFlowing=True), 0 otherwise; `reason` is the condition's reason.",
            ),
            (
                "gauge",
                "1 when records wait in the stream (or the aggregator stopped reporting) and nothing is committed (DataFlowing reason Stalled).",
            ),
            (
                "gauge",
                "1 when no open window is overdue (Fresh=True), 0 otherwise.",
            ),
            (
                "gauge",
                "The largest MillisBehindLatest of the shards' last reads, in seconds.",
            ),
            (
                "gauge",
                "Now minus the end of the newest window in the curated table, in seconds.",
            ),
            (
                "gauge",
                "How long the most overdue open window has waited beyond window + allowed lateness + margin, in seconds.",
            ),
            (
                "gauge",
                "Clicks accepted per minute (over about the last minute).",
            ),
            ("gauge", "Records rejected per minute, by reason."),
            (
                "gauge",
                "Rejected records / (accepted clicks + rejected records) over about the last minute.",
            ),
            (
                "gauge",
                "Now minus the newest progress report of any aggregator replica, in seconds.",
            ),
        ];
        for (name, (kind, about)) in DATA_PLANE_METRICS.iter().zip(help) {
            let _ = writeln!(text, "# HELP {name} {about}\n# TYPE {name} {kind}");
            for (pipeline, plane) in planes.iter() {
                let (namespace, pipeline_name) = pipeline.split_once('/').unwrap_or(("", pipeline));
                let labels = format!(
                    "namespace=\"{}\",pipeline=\"{}\"",
                    escape_label(namespace),
                    escape_label(pipeline_name)
                );
                let gauges = &plane.gauges;
                let bool_value = |value: bool| if value { 1.0 } else { 0.0 };
                let value = match *name {
                    "clickheatmap_pipeline_data_flowing" => {
                        let _ = writeln!(
                            text,
                            "{name}{{{labels},reason=\"{}\"}} {}",
                            escape_label(plane.flowing.1),
                            bool_value(plane.flowing.0 == ConditionState::True)
                        );
                        continue;
                    }
                    "clickheatmap_pipeline_rejected_per_minute" => {
                        // The reasons come from the reports in S3: escaped, and a bounded set.
                        for (reason, count) in gauges.rejected_per_minute.iter().take(MAX_REASONS) {
                            let _ = writeln!(
                                text,
                                "{name}{{{labels},reason=\"{}\"}} {count}",
                                escape_label(reason)
                            );
                        }
                        continue;
                    }
                    "clickheatmap_pipeline_stalled" => {
                        Some(bool_value(plane.flowing.1 == "Stalled"))
                    }
                    "clickheatmap_pipeline_fresh" => {
                        Some(bool_value(plane.fresh == ConditionState::True))
                    }
                    "clickheatmap_pipeline_lag_seconds" => gauges.lag_seconds,
                    "clickheatmap_pipeline_table_age_seconds" => gauges.table_age_seconds,
                    "clickheatmap_pipeline_overdue_seconds" => Some(gauges.overdue_seconds),
                    "clickheatmap_pipeline_accepted_per_minute" => {
                        Some(gauges.accepted_per_minute as f64)
                    }
                    "clickheatmap_pipeline_rejected_ratio" => Some(gauges.rejected_ratio),
                    // A paused pipeline's last report ages on purpose.
                    _ if plane.flowing.1 == "Paused" => None,
                    _ => gauges.report_age_seconds,
                };
                if let Some(value) = value {
                    let _ = writeln!(text, "{name}{{{labels}}} {value}");
                }
            }
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
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "# HELP clickheatmap_operator_aws_plans_total Reconciles by what they did on the AWS side: planned (observe, diff, apply) or reused (same generation, drift check not due).\n\
             # TYPE clickheatmap_operator_aws_plans_total counter\n\
             clickheatmap_operator_aws_plans_total{{result=\"planned\"}} {}\n\
             clickheatmap_operator_aws_plans_total{{result=\"reused\"}} {}\n\
             # HELP clickheatmap_operator_child_applies_total Server-side applies of Kubernetes children: sent, or skipped because the child already held the desired fields.\n\
             # TYPE clickheatmap_operator_child_applies_total counter\n\
             clickheatmap_operator_child_applies_total{{result=\"sent\"}} {}\n\
             clickheatmap_operator_child_applies_total{{result=\"skipped\"}} {}",
            load(&self.aws_plans),
            load(&self.aws_plans_skipped),
            load(&self.child_applies),
            load(&self.child_applies_skipped),
        );
        self.render_data_planes(&mut text);
        if let Some(calls) = &self.aws_calls {
            let _ = writeln!(
                text,
                "# HELP clickheatmap_operator_aws_calls_total AWS API calls by operation (kind: read or write).\n\
                 # TYPE clickheatmap_operator_aws_calls_total counter"
            );
            for (operation, count) in calls.snapshot() {
                let (service, name) = operation.split_once(':').unwrap_or(("", &operation));
                let kind = if crate::aws::calls::is_mutating(&operation) {
                    "write"
                } else {
                    "read"
                };
                let _ = writeln!(
                    text,
                    "clickheatmap_operator_aws_calls_total{{service=\"{service}\",operation=\"{name}\",kind=\"{kind}\"}} {count}"
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

/// Serves the router on `address:port` until the process ends.
pub async fn serve(
    address: std::net::IpAddr,
    port: u16,
    metrics: Arc<Metrics>,
) -> Result<(), ControllerError> {
    let listener = tokio::net::TcpListener::bind((address, port))
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

#[cfg(test)]
mod data_plane_tests {
    use super::*;
    use crate::dataplane::{Gauges, HealthCondition, State};

    fn condition(state: State, reason: &'static str) -> HealthCondition {
        HealthCondition {
            type_: "DataFlowing",
            state,
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn reasons_from_reports_are_escaped_and_a_paused_report_does_not_age() {
        let metrics = Metrics::default();
        let gauges = Gauges {
            rejected_per_minute: [("bad\"reason\n".to_owned(), 3)].into(),
            report_age_seconds: Some(900.0),
            ..Gauges::default()
        };
        metrics.set_data_plane(
            "shop/web",
            &gauges,
            &condition(State::False, "AllRejected"),
            &condition(State::True, "Current"),
        );
        let page = metrics.render();
        assert!(
            page.contains(r#"clickheatmap_pipeline_rejected_per_minute{namespace="shop",pipeline="web",reason="bad\"reason\n"} 3"#),
            "{page}"
        );
        assert!(page.contains(
            "clickheatmap_pipeline_report_age_seconds{namespace=\"shop\",pipeline=\"web\"} 900"
        ));
        metrics.set_data_plane(
            "shop/web",
            &gauges,
            &condition(State::Unknown, "Paused"),
            &condition(State::Unknown, "Paused"),
        );
        assert!(
            !metrics
                .render()
                .contains("clickheatmap_pipeline_report_age_seconds{")
        );
        metrics.forget_data_plane("shop/web");
        assert!(!metrics.render().contains("pipeline=\"web\""));
    }
}
