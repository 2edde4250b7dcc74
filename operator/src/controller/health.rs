//! The data-plane part of a reconcile: read the aggregator's progress reports at most once per
//! `health.checkInterval`, judge them ([`crate::dataplane::assess`]), and hand back the
//! `DataFlowing` and `Fresh` conditions, `status.dataPlane` and the next time to look.
//!
//! The judgement is made once per read, at the time of the read, and reused by the reconciles in
//! between (pod status changes, the status write itself): the status then stays byte-for-byte
//! the same until the next read, so a status write never triggers another one.

use std::time::{Duration, Instant};

use clickheatmap_crds::progress::ReplicaProgress;
use clickheatmap_crds::{AggregationEngine, ClickHeatmapPipeline, DataPlaneStatus};
use kube::ResourceExt;

use super::{AGGREGATOR_CONDITION, Context, DesiredCondition, PipelineBackend, object_key};
use crate::dataplane::{
    self, Assessment, DATA_FLOWING_CONDITION, Expectation, FRESH_CONDITION, HealthCondition, State,
    WindowTiming,
};
use crate::pipeline::{Part, PipelineOutcome};

/// A read and its judgement, kept until the next check is due.
pub(super) struct HealthMemo {
    read_at: Instant,
    expectation: Expectation,
    generation: Option<i64>,
    result: Result<Assessment, String>,
}

/// What the data plane adds to a reconcile.
pub(super) struct DataPlane {
    pub conditions: Vec<DesiredCondition>,
    /// `None`: keep what the status holds.
    pub status: Option<DataPlaneStatus>,
    /// When to look again.
    pub recheck: Option<Duration>,
}

fn condition(from: &HealthCondition) -> DesiredCondition {
    DesiredCondition {
        unknown: from.state == State::Unknown,
        type_: from.type_.to_owned(),
        ready: from.state == State::True,
        reason: from.reason.to_owned(),
        message: from.message.clone(),
    }
}

fn unknown(type_: &str, reason: &str, message: impl Into<String>) -> DesiredCondition {
    DesiredCondition {
        unknown: true,
        type_: type_.to_owned(),
        ready: false,
        reason: reason.to_owned(),
        message: message.into(),
    }
}

/// The aggregator's state for the judgement, from this reconcile's workload conditions and
/// when the previous status saw it become Ready.
fn expectation(pipeline: &ClickHeatmapPipeline, workloads: &[DesiredCondition]) -> Expectation {
    if pipeline.spec.aggregation.replicas == 0 {
        return Expectation::Paused;
    }
    let ready = workloads
        .iter()
        .any(|c| c.type_ == AGGREGATOR_CONDITION && c.ready);
    if !ready {
        return Expectation::Starting;
    }
    let since = pipeline
        .status
        .as_ref()
        .and_then(|status| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == AGGREGATOR_CONDITION && c.status == "True")
        })
        .map(|c| c.last_transition_time.0.as_millisecond());
    Expectation::RunningSince(since.unwrap_or_else(now_ms))
}

fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// The data plane of `pipeline` for this reconcile.
pub(super) async fn data_plane<B: PipelineBackend>(
    pipeline: &ClickHeatmapPipeline,
    ctx: &Context<B>,
    outcome: &PipelineOutcome,
    workloads: &[DesiredCondition],
) -> DataPlane {
    let spec = &pipeline.spec;
    if spec.aggregation.engine == AggregationEngine::ManagedFlink {
        return managed_flink(outcome);
    }
    let buckets_ready = outcome
        .parts
        .iter()
        .any(|part| part.part == Part::Buckets && part.ready);
    let expectation = expectation(pipeline, workloads);
    if !buckets_ready {
        return DataPlane {
            conditions: vec![
                unknown(
                    DATA_FLOWING_CONDITION,
                    "AwaitingReport",
                    "the curated bucket, where the aggregator reports its progress, is not ready",
                ),
                unknown(FRESH_CONDITION, "NoReport", "no progress report yet"),
            ],
            status: None,
            recheck: None,
        };
    }
    let interval = spec.health.check_interval.as_std();
    let key = object_key(pipeline);
    let cached = ctx.health_memo.lock().ok().and_then(|memo| {
        memo.get(&key)
            .filter(|m| {
                m.read_at.elapsed() < interval
                    && m.expectation == expectation
                    && m.generation == pipeline.metadata.generation
            })
            .map(|m| {
                (
                    m.result.clone(),
                    interval.saturating_sub(m.read_at.elapsed()),
                )
            })
    });
    let (result, recheck) = match cached {
        Some(cached) => cached,
        None => {
            let result = read_and_assess(pipeline, ctx, expectation).await;
            if let Ok(assessment) = &result {
                ctx.metrics.set_data_plane(
                    &key,
                    &assessment.gauges,
                    &assessment.flowing,
                    &assessment.fresh,
                );
            }
            if let Ok(mut memo) = ctx.health_memo.lock() {
                memo.insert(
                    key,
                    HealthMemo {
                        read_at: Instant::now(),
                        expectation,
                        generation: pipeline.metadata.generation,
                        result: result.clone(),
                    },
                );
            }
            (result, interval)
        }
    };
    // Paused needs no watching; otherwise look again when the next read is due.
    let recheck =
        (expectation != Expectation::Paused).then_some(recheck.max(Duration::from_secs(1)));
    match result {
        Ok(assessment) => DataPlane {
            conditions: vec![condition(&assessment.flowing), condition(&assessment.fresh)],
            status: assessment.status,
            recheck,
        },
        Err(message) => DataPlane {
            conditions: vec![
                unknown(DATA_FLOWING_CONDITION, "ReportUnreadable", message.clone()),
                unknown(FRESH_CONDITION, "ReportUnreadable", message),
            ],
            status: None,
            recheck,
        },
    }
}

async fn read_and_assess<B: PipelineBackend>(
    pipeline: &ClickHeatmapPipeline,
    ctx: &Context<B>,
    expectation: Expectation,
) -> Result<Assessment, String> {
    let config = super::workload::aggregator_config(pipeline).map_err(|e| e.to_string())?;
    let location = config.progress_location(&pipeline.spec.stream.name);
    let reports: Vec<ReplicaProgress> = ctx
        .backend
        .progress(pipeline, &location)
        .await
        .map_err(|error| {
            tracing::warn!(pipeline = %pipeline.name_any(), %error, "reading the progress reports failed");
            format!("reading the aggregator's progress reports in {location}: {error}")
        })?;
    Ok(dataplane::assess(
        &reports,
        &pipeline.spec.health,
        WindowTiming {
            window_ms: i64::try_from(config.window.size.as_millis()).unwrap_or(i64::MAX),
            allowed_lateness_ms: i64::try_from(config.window.allowed_lateness.as_millis())
                .unwrap_or(i64::MAX),
        },
        expectation,
        &location,
        now_ms(),
    ))
}

/// With Managed Flink the application's status is what the operator can see: its data-plane
/// metrics are in CloudWatch, which the operator does not read.
fn managed_flink(outcome: &PipelineOutcome) -> DataPlane {
    let flink = outcome
        .parts
        .iter()
        .find(|part| part.part == Part::FlinkApplication);
    let flowing = match flink {
        Some(part) if part.ready => unknown(
            DATA_FLOWING_CONDITION,
            "ApplicationRunning",
            format!(
                "{}; Managed Flink reports records and lag to CloudWatch (KPUs, numRecordsInPerSecond, millisBehindLatest), not to the operator",
                part.message
            ),
        ),
        Some(part) if part.error.is_some() && part.reason.is_terminal() => DesiredCondition {
            unknown: false,
            type_: DATA_FLOWING_CONDITION.to_owned(),
            ready: false,
            reason: "Stalled".to_owned(),
            message: format!("the Flink application is not running: {}", part.message),
        },
        // A throttled or failed call says nothing about the application itself.
        Some(part) if part.error.is_some() => unknown(
            DATA_FLOWING_CONDITION,
            "Retrying",
            format!("the Flink application could not be read: {}", part.message),
        ),
        _ => unknown(
            DATA_FLOWING_CONDITION,
            "AwaitingReport",
            "the Flink application is starting",
        ),
    };
    DataPlane {
        conditions: vec![
            flowing,
            unknown(
                FRESH_CONDITION,
                "NotReported",
                "Managed Flink does not report the windows it commits to the operator",
            ),
        ],
        status: None,
        recheck: None,
    }
}
