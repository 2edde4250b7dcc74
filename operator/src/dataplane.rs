//! Is data flowing, how fresh is the table, what is rejected: the pipeline's data plane, judged
//! from the progress reports the aggregator replicas keep beside their checkpoints
//! (`clickheatmap_crds::progress`).
//!
//! [`read_reports`] is the only I/O (one S3 LIST and one GET per replica); [`assess`] is pure:
//! reports + spec + clock in, `status.dataPlane` and the `DataFlowing` / `Fresh` conditions out.
//! `Ready` stays about the control plane; these two say whether the pipeline does its job.

use std::collections::BTreeMap;

use clickheatmap_crds::progress::{
    PROGRESS_HEARTBEAT_MS, PROGRESS_VERSION, ProgressCounts, ReplicaProgress, ShardProgress,
};
use clickheatmap_crds::{DataPlaneStatus, HealthSpec};

use crate::error::{Error, from_sdk};

pub const DATA_FLOWING_CONDITION: &str = "DataFlowing";
pub const FRESH_CONDITION: &str = "Fresh";

/// A report older than this comes from a replica that is gone, or alive but unable to write.
pub const REPORT_STALE_AFTER_MS: i64 = 3 * PROGRESS_HEARTBEAT_MS;

/// A condition's three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::True => "True",
            State::False => "False",
            State::Unknown => "Unknown",
        }
    }
}

/// One of the two data-plane conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCondition {
    pub type_: &'static str,
    pub state: State,
    pub reason: &'static str,
    pub message: String,
}

/// What the aggregator workload is doing, as far as the reports are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// `aggregation.replicas: 0`: nothing reads the stream, on purpose.
    Paused,
    /// The aggregator is not Ready yet: reports may not exist yet.
    Starting,
    /// The aggregator has been Ready since this time (ms): its replicas must report.
    RunningSince(i64),
}

/// The numbers behind the conditions, for the operator's metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gauges {
    pub lag_seconds: Option<f64>,
    /// Now minus the end of the newest window in the table.
    pub table_age_seconds: Option<f64>,
    /// How long the most overdue open window has been waiting beyond its due time (0 when none).
    pub overdue_seconds: f64,
    pub accepted_per_minute: u64,
    pub rejected_per_minute: BTreeMap<String, u64>,
    /// Rejected / (accepted + rejected) over about the last minute; 0 without traffic.
    pub rejected_ratio: f64,
    /// Now minus the newest report, when there is one.
    pub report_age_seconds: Option<f64>,
}

/// Everything [`assess`] concludes.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// `None` until a replica has written a report.
    pub status: Option<DataPlaneStatus>,
    pub flowing: HealthCondition,
    pub fresh: HealthCondition,
    pub gauges: Gauges,
}

/// The window settings the aggregator runs with.
#[derive(Clone, Copy, Debug)]
pub struct WindowTiming {
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
}

/// Judges the data plane from the replicas' reports at `now_ms`. `location` names where the
/// reports live, for messages.
pub fn assess(
    reports: &[ReplicaProgress],
    health: &HealthSpec,
    timing: WindowTiming,
    expectation: Expectation,
    location: &str,
    now_ms: i64,
) -> Assessment {
    let readable: Vec<&ReplicaProgress> = reports
        .iter()
        .filter(|report| report.version == PROGRESS_VERSION)
        .collect();
    let recent: Vec<&ReplicaProgress> = readable
        .iter()
        .copied()
        .filter(|report| now_ms.saturating_sub(report.written_at_ms) <= REPORT_STALE_AFTER_MS)
        .collect();
    let newest_report = readable.iter().map(|report| report.written_at_ms).max();
    // A shard moves between replicas: the newest report that lists it speaks for it.
    let mut shards: BTreeMap<&str, (&ShardProgress, i64)> = BTreeMap::new();
    for report in &recent {
        for shard in &report.shards {
            let newer = shards
                .get(shard.shard_id.as_str())
                .is_none_or(|(_, at)| report.written_at_ms > *at);
            if newer {
                shards.insert(&shard.shard_id, (shard, report.written_at_ms));
            }
        }
    }
    let shards: Vec<&ShardProgress> = shards.into_values().map(|(shard, _)| shard).collect();
    let mut per_minute = ProgressCounts::default();
    let mut totals = ProgressCounts::default();
    let mut files = 0;
    for report in &recent {
        per_minute.add(&report.per_minute);
        totals.add(&report.totals);
    }
    for shard in &shards {
        files += shard.files_committed;
    }
    // Stale reports still say what reached the table.
    let newest_window_end = readable
        .iter()
        .flat_map(|report| &report.shards)
        .filter_map(|shard| shard.last_committed_window_end_ms)
        .max();
    let max_of =
        |field: fn(&ShardProgress) -> Option<i64>| shards.iter().filter_map(|s| field(s)).max();
    let last_accepted = max_of(|s| s.last_accepted_at_ms);
    let last_record = max_of(|s| s.last_record_at_ms);
    let lag = max_of(|s| s.millis_behind_latest);
    // Only what changes with the data: an idle pipeline's status stays the same from one check
    // to the next, so a check writes nothing.
    let status = (!readable.is_empty()).then(|| DataPlaneStatus {
        replicas_reporting: u32::try_from(recent.len()).unwrap_or(u32::MAX),
        shards: u32::try_from(shards.len()).unwrap_or(u32::MAX),
        last_event_time: max_of(|s| s.last_event_time_ms).and_then(rfc3339),
        watermark: shards
            .iter()
            .filter_map(|s| s.watermark_ms)
            .min()
            .and_then(rfc3339),
        lag_millis: lag,
        last_committed_window_end: newest_window_end.and_then(rfc3339),
        last_commit_time: max_of(|s| s.last_commit_at_ms).and_then(rfc3339),
        last_accepted_time: last_accepted.and_then(rfc3339),
        accepted_per_minute: per_minute.accepted,
        rejected_per_minute: per_minute.rejected.clone(),
        accepted_total: totals.accepted,
        rejected_total: totals.rejected_total(),
        files_committed: files,
    });

    let quiet_ms = millis(health.quiet_period);
    let traffic = last_accepted.is_some_and(|at| now_ms.saturating_sub(at) <= quiet_ms);
    // Paused on purpose comes first: the reports of the last minutes before the pause are
    // still recent, and a shard that stopped being read is not a stall.
    let flowing = if recent.is_empty() || expectation == Expectation::Paused {
        no_recent_report(expectation, newest_report, location, now_ms)
    } else if let Some(stalled) = stalled_shard(&shards, &recent, now_ms) {
        stalled
    } else if traffic {
        HealthCondition {
            type_: DATA_FLOWING_CONDITION,
            state: State::True,
            reason: "ClicksAccepted",
            message: format!(
                "{} clicks/min accepted, {} records/min rejected{}; the last click at {}",
                per_minute.accepted,
                per_minute.rejected_total(),
                top_reason(&per_minute)
                    .map(|reason| format!(" (mostly {reason})"))
                    .unwrap_or_default(),
                last_accepted.and_then(rfc3339).unwrap_or_default(),
            ),
        }
    } else if last_record.is_some_and(|at| now_ms.saturating_sub(at) <= quiet_ms) {
        let reason = top_reason(&per_minute)
            .or_else(|| top_reason(&totals))
            .unwrap_or_else(|| "unknown".to_owned());
        HealthCondition {
            type_: DATA_FLOWING_CONDITION,
            state: State::False,
            reason: "AllRejected",
            message: format!(
                "records arrive but none was a valid click for {}: the most frequent reason is {reason} ({} rejected in total); see the dead letters",
                health.quiet_period,
                totals.rejected_total()
            ),
        }
    } else {
        HealthCondition {
            type_: DATA_FLOWING_CONDITION,
            state: State::False,
            reason: "NoTraffic",
            message: format!(
                "no record arrived for {} and the aggregator is caught up with the stream: nothing is sending clicks",
                health.quiet_period
            ),
        }
    };

    let margin_ms = millis(health.freshness_margin);
    let overdue = shards
        .iter()
        .filter_map(|shard| {
            let start = shard.oldest_open_window_start_ms?;
            let window = if shard.window_size_ms > 0 {
                shard.window_size_ms
            } else {
                timing.window_ms
            };
            let end = start.saturating_add(window);
            let due = end
                .saturating_add(timing.allowed_lateness_ms)
                .saturating_add(margin_ms);
            (now_ms > due).then_some((shard, end, now_ms - due))
        })
        .max_by_key(|(_, _, late)| *late);
    let fresh = if recent.is_empty() || expectation == Expectation::Paused {
        match (expectation, newest_window_end) {
            (Expectation::Paused, _) | (_, None) => HealthCondition {
                type_: FRESH_CONDITION,
                state: State::Unknown,
                reason: if expectation == Expectation::Paused {
                    "Paused"
                } else {
                    "NoReport"
                },
                message: if expectation == Expectation::Paused {
                    "aggregation.replicas is 0: the table is not updated while paused".to_owned()
                } else {
                    "no recent progress report to judge the table by".to_owned()
                },
            },
            (_, Some(end)) => HealthCondition {
                type_: FRESH_CONDITION,
                state: State::False,
                reason: "Stale",
                message: format!(
                    "the newest window in the table ended at {}, and no aggregator replica reports progress",
                    rfc3339(end).unwrap_or_default()
                ),
            },
        }
    } else if let Some((shard, end, _)) = overdue {
        HealthCondition {
            type_: FRESH_CONDITION,
            state: State::False,
            reason: "Stale",
            message: format!(
                "shard {} still holds the window that ended at {} (expected in the table within window + allowed lateness + {} margin); the table lags by {} at the last check",
                shard.shard_id,
                rfc3339(end).unwrap_or_default(),
                health.freshness_margin,
                ago(now_ms, end)
            ),
        }
    } else if let Some(end) = newest_window_end {
        HealthCondition {
            type_: FRESH_CONDITION,
            state: State::True,
            reason: "Current",
            message: format!(
                "the newest window in the table ended at {}; no open window is overdue",
                rfc3339(end).unwrap_or_default()
            ),
        }
    } else if shards
        .iter()
        .any(|s| s.oldest_open_window_start_ms.is_some())
    {
        HealthCondition {
            type_: FRESH_CONDITION,
            state: State::Unknown,
            reason: "FirstWindowOpen",
            message: "clicks are being counted; the first window has not reached the table yet"
                .to_owned(),
        }
    } else {
        HealthCondition {
            type_: FRESH_CONDITION,
            state: State::Unknown,
            reason: "NoData",
            message: "no click has been accepted yet".to_owned(),
        }
    };

    let accepted = per_minute.accepted as f64;
    let rejected = per_minute.rejected_total() as f64;
    let gauges = Gauges {
        lag_seconds: lag.map(|ms| ms as f64 / 1000.0),
        table_age_seconds: newest_window_end.map(|end| (now_ms - end) as f64 / 1000.0),
        overdue_seconds: overdue.map_or(0.0, |(_, _, late)| late as f64 / 1000.0),
        accepted_per_minute: per_minute.accepted,
        rejected_per_minute: per_minute.rejected.clone(),
        rejected_ratio: if accepted + rejected > 0.0 {
            rejected / (accepted + rejected)
        } else {
            0.0
        },
        report_age_seconds: newest_report.map(|at| (now_ms - at) as f64 / 1000.0),
    };
    Assessment {
        status,
        flowing,
        fresh,
        gauges,
    }
}

/// `DataFlowing` when no replica reported within [`REPORT_STALE_AFTER_MS`].
fn no_recent_report(
    expectation: Expectation,
    newest_report: Option<i64>,
    location: &str,
    now_ms: i64,
) -> HealthCondition {
    let condition = |state, reason, message: String| HealthCondition {
        type_: DATA_FLOWING_CONDITION,
        state,
        reason,
        message,
    };
    match expectation {
        Expectation::Paused => condition(
            State::Unknown,
            "Paused",
            "aggregation.replicas is 0: nothing reads the stream".to_owned(),
        ),
        Expectation::RunningSince(since)
            if now_ms.saturating_sub(newest_report.unwrap_or(since).max(since))
                > REPORT_STALE_AFTER_MS =>
        {
            let last = match newest_report {
                Some(at) => format!("since {} ago", ago(now_ms, at)),
                None => format!("since it became Ready {} ago", ago(now_ms, since)),
            };
            condition(
                State::False,
                "Stalled",
                format!(
                    "no aggregator replica has reported progress {last} (reports go to {location}): the aggregator is down or cannot write to S3"
                ),
            )
        }
        _ => condition(
            State::Unknown,
            "AwaitingReport",
            format!("waiting for the aggregator's first progress report in {location}"),
        ),
    }
}

/// A shard with records waiting in the stream that has committed nothing for
/// [`REPORT_STALE_AFTER_MS`].
fn stalled_shard(
    shards: &[&ShardProgress],
    reports: &[&ReplicaProgress],
    now_ms: i64,
) -> Option<HealthCondition> {
    let started = reports
        .iter()
        .map(|r| r.started_at_ms)
        .min()
        .unwrap_or(now_ms);
    shards.iter().find_map(|shard| {
        let behind = shard.millis_behind_latest.filter(|ms| *ms > 0)?;
        let since = shard.last_commit_at_ms.unwrap_or(started);
        (now_ms.saturating_sub(since) > REPORT_STALE_AFTER_MS).then(|| HealthCondition {
            type_: DATA_FLOWING_CONDITION,
            state: State::False,
            reason: "Stalled",
            message: format!(
                "shard {} is {} behind the stream but has committed nothing for {}: the aggregator cannot write (see its logs)",
                shard.shard_id,
                human(behind),
                ago(now_ms, since)
            ),
        })
    })
}

fn millis(duration: clickheatmap_crds::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn top_reason(counts: &ProgressCounts) -> Option<String> {
    counts.top_rejection().map(|(reason, _)| reason.to_owned())
}

pub(crate) fn rfc3339(ms: i64) -> Option<String> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_string())
}

fn ago(now_ms: i64, at_ms: i64) -> String {
    human(now_ms.saturating_sub(at_ms).max(0))
}

/// `45s`, `12m`, `3h 5m`.
fn human(ms: i64) -> String {
    let seconds = ms / 1000;
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bucket and key prefix of an `s3://bucket/prefix/` location.
pub fn split_s3(location: &str) -> Option<(&str, &str)> {
    let rest = location.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, prefix))
}

/// Reads a backfill's state object (`s3://bucket/key`); `None` until the backfill wrote one.
pub async fn read_backfill_state(
    s3: &aws_sdk_s3::Client,
    location: &str,
) -> Result<Option<clickheatmap_crds::backfill_state::BackfillState>, Error> {
    let (bucket, key) = split_s3(location)
        .ok_or_else(|| Error::internal(format!("{location} is not an s3:// location")))?;
    let object = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object,
        Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
            return Ok(None);
        }
        Err(error) => return Err(from_sdk("s3:GetObject", location, error)),
    };
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|error| Error::internal(format!("reading {location}: {error}")))?
        .into_bytes();
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| Error::internal(format!("{location} is not a backfill state: {error}")))
}

/// Reads every replica's report below `location` (`s3://bucket/prefix/`): one LIST, one GET per
/// object. Unreadable objects are skipped with a warning (a replica writing a newer format must
/// not blind the operator to the others).
pub async fn read_reports(
    s3: &aws_sdk_s3::Client,
    location: &str,
) -> Result<Vec<ReplicaProgress>, Error> {
    let (bucket, prefix) = split_s3(location)
        .ok_or_else(|| Error::internal(format!("{location} is not an s3:// location")))?;
    let what = format!("s3://{bucket}/{prefix}");
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await;
        let page = match page {
            Ok(page) => page,
            // The bucket may not exist yet (the first reconcile creates it).
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_no_such_bucket()) =>
            {
                return Ok(Vec::new());
            }
            Err(error) => return Err(from_sdk("s3:ListObjectsV2", &what, error)),
        };
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|object| object.key())
                .filter(|key| key.ends_with(".json"))
                .map(str::to_owned),
        );
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => break,
        }
    }
    let mut reports = Vec::with_capacity(keys.len());
    for key in keys {
        let object = match s3.get_object().bucket(bucket).key(&key).send().await {
            Ok(object) => object,
            // Deleted between the LIST and the GET.
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                continue;
            }
            Err(error) => {
                return Err(from_sdk(
                    "s3:GetObject",
                    &format!("s3://{bucket}/{key}"),
                    error,
                ));
            }
        };
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|error| Error::internal(format!("reading s3://{bucket}/{key}: {error}")))?
            .into_bytes();
        match serde_json::from_slice::<ReplicaProgress>(&bytes) {
            Ok(report) => reports.push(report),
            Err(error) => {
                tracing::warn!(object = %format!("s3://{bucket}/{key}"), %error, "skipping an unreadable progress report");
            }
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const MINUTE: i64 = 60_000;

    fn timing() -> WindowTiming {
        WindowTiming {
            window_ms: MINUTE,
            allowed_lateness_ms: 30_000,
        }
    }

    fn counts(accepted: u64, rejected: &[(&str, u64)]) -> ProgressCounts {
        ProgressCounts {
            records: accepted + rejected.iter().map(|(_, n)| n).sum::<u64>(),
            accepted,
            late: 0,
            rejected: rejected
                .iter()
                .map(|(reason, n)| ((*reason).to_owned(), *n))
                .collect(),
        }
    }

    fn shard(id: &str) -> ShardProgress {
        ShardProgress {
            shard_id: id.to_owned(),
            millis_behind_latest: Some(0),
            window_size_ms: MINUTE,
            last_commit_at_ms: Some(NOW - 5_000),
            ..ShardProgress::default()
        }
    }

    fn report(replica: &str, written: i64, shards: Vec<ShardProgress>) -> ReplicaProgress {
        ReplicaProgress {
            version: PROGRESS_VERSION,
            replica: replica.to_owned(),
            stream: "clicks".to_owned(),
            written_at_ms: written,
            started_at_ms: NOW - 60 * MINUTE,
            shards,
            totals: ProgressCounts::default(),
            per_minute: ProgressCounts::default(),
        }
    }

    fn judge(reports: &[ReplicaProgress], expectation: Expectation) -> Assessment {
        assess(
            reports,
            &HealthSpec::default(),
            timing(),
            expectation,
            "s3://curated/curated/_checkpoints/clicks/_progress/",
            NOW,
        )
    }

    fn running() -> Expectation {
        Expectation::RunningSince(NOW - 30 * MINUTE)
    }

    #[test]
    fn flowing_and_fresh_with_traffic() {
        let mut a = shard("s-0");
        a.last_accepted_at_ms = Some(NOW - 2_000);
        a.last_record_at_ms = Some(NOW - 2_000);
        a.last_committed_window_end_ms = Some(NOW - 50_000);
        a.oldest_open_window_start_ms = Some(NOW - 40_000);
        a.last_event_time_ms = Some(NOW - 2_500);
        a.files_committed = 7;
        let mut b = shard("s-1");
        b.millis_behind_latest = Some(1_200);
        let mut replica = report("r-0", NOW - 3_000, vec![a, b]);
        replica.per_minute = counts(600, &[("malformed_json", 6)]);
        replica.totals = counts(90_000, &[("malformed_json", 40)]);
        let judged = judge(&[replica], running());
        assert_eq!(judged.flowing.state, State::True, "{judged:?}");
        assert_eq!(judged.flowing.reason, "ClicksAccepted");
        assert!(
            judged.flowing.message.contains(
                "600 clicks/min accepted, 6 records/min rejected (mostly malformed_json)"
            ),
            "{}",
            judged.flowing.message
        );
        assert_eq!(judged.fresh.state, State::True);
        assert_eq!(judged.status.as_ref().expect("status").shards, 2);
        assert_eq!(
            judged.status.as_ref().expect("status").lag_millis,
            Some(1_200)
        );
        assert_eq!(judged.status.as_ref().expect("status").files_committed, 7);
        assert_eq!(
            judged.status.as_ref().expect("status").accepted_total,
            90_000
        );
        assert_eq!(
            judged.status.as_ref().expect("status").rejected_per_minute["malformed_json"],
            6
        );
        assert!(
            judged
                .status
                .as_ref()
                .expect("status")
                .last_committed_window_end
                .is_some()
        );
        assert!((judged.gauges.rejected_ratio - 6.0 / 606.0).abs() < 1e-9);
        assert_eq!(judged.gauges.lag_seconds, Some(1.2));
        assert_eq!(judged.gauges.table_age_seconds, Some(50.0));
    }

    #[test]
    fn quiet_stream_is_no_traffic_and_rejections_only_are_all_rejected() {
        let mut idle = shard("s-0");
        idle.last_accepted_at_ms = Some(NOW - 20 * MINUTE);
        idle.last_record_at_ms = Some(NOW - 20 * MINUTE);
        idle.last_committed_window_end_ms = Some(NOW - 19 * MINUTE);
        let judged = judge(&[report("r-0", NOW - 1_000, vec![idle.clone()])], running());
        assert_eq!(
            (judged.flowing.state, judged.flowing.reason),
            (State::False, "NoTraffic")
        );
        // No open window: the table holds every accepted click.
        assert_eq!(judged.fresh.state, State::True);

        let mut rejecting = idle;
        rejecting.last_record_at_ms = Some(NOW - 5_000);
        let mut replica = report("r-0", NOW - 1_000, vec![rejecting]);
        replica.per_minute = counts(0, &[("not_a_click", 3), ("missing_field", 80)]);
        let judged = judge(&[replica], running());
        assert_eq!(
            (judged.flowing.state, judged.flowing.reason),
            (State::False, "AllRejected")
        );
        assert!(
            judged.flowing.message.contains("missing_field"),
            "{}",
            judged.flowing.message
        );
        assert_eq!(judged.gauges.rejected_ratio, 1.0);
    }

    /// An idle pipeline checked again a minute later (its replica beat in between) gets the
    /// same status and conditions: a check of a quiet pipeline writes nothing.
    #[test]
    fn an_idle_pipeline_judged_twice_is_unchanged() {
        let mut idle = shard("s-0");
        idle.last_accepted_at_ms = Some(NOW - 40 * MINUTE);
        idle.last_record_at_ms = Some(NOW - 40 * MINUTE);
        idle.last_committed_window_end_ms = Some(NOW - 39 * MINUTE);
        let mut replica = report("r-0", NOW - 1_000, vec![idle]);
        replica.totals = counts(5_000, &[("missing_field", 2)]);
        let first = judge(std::slice::from_ref(&replica), running());
        replica.written_at_ms += MINUTE;
        let later = assess(
            &[replica],
            &HealthSpec::default(),
            timing(),
            running(),
            "s3://curated/curated/_checkpoints/clicks/_progress/",
            NOW + MINUTE,
        );
        assert_eq!(first.status, later.status);
        assert_eq!(first.flowing, later.flowing);
        assert_eq!(first.fresh, later.fresh);
        assert_eq!(
            judge(&[], running()).status,
            None,
            "nothing reported, nothing to show"
        );
    }

    #[test]
    fn records_waiting_without_commits_is_stalled() {
        let mut stuck = shard("s-0");
        stuck.millis_behind_latest = Some(90_000);
        stuck.last_commit_at_ms = Some(NOW - 10 * MINUTE);
        stuck.last_accepted_at_ms = Some(NOW - 1_000);
        let judged = judge(&[report("r-0", NOW - 1_000, vec![stuck])], running());
        assert_eq!(
            (judged.flowing.state, judged.flowing.reason),
            (State::False, "Stalled")
        );
        assert!(
            judged.flowing.message.contains("shard s-0 is 90s behind"),
            "{}",
            judged.flowing.message
        );
    }

    #[test]
    fn silent_replicas_are_stalled_once_the_aggregator_should_report() {
        // Never reported, Ready for 30 minutes.
        let judged = judge(&[], running());
        assert_eq!(
            (judged.flowing.state, judged.flowing.reason),
            (State::False, "Stalled")
        );
        assert!(
            judged
                .flowing
                .message
                .contains("since it became Ready 30m ago"),
            "{}",
            judged.flowing.message
        );
        // Just became Ready: waiting, which Argo CD shows as Progressing.
        let judged = judge(&[], Expectation::RunningSince(NOW - 10_000));
        assert_eq!(
            (judged.flowing.state, judged.flowing.reason),
            (State::Unknown, "AwaitingReport")
        );
        let judged = judge(&[], Expectation::Starting);
        assert_eq!(judged.flowing.reason, "AwaitingReport");
        // Reported once, then silent for ten minutes.
        let mut old = shard("s-0");
        old.last_committed_window_end_ms = Some(NOW - 11 * MINUTE);
        let judged = judge(
            &[report("r-0", NOW - 10 * MINUTE, vec![old.clone()])],
            running(),
        );
        assert_eq!(judged.flowing.reason, "Stalled");
        assert!(
            judged.flowing.message.contains("since 10m ago"),
            "{}",
            judged.flowing.message
        );
        assert_eq!(
            (judged.fresh.state, judged.fresh.reason),
            (State::False, "Stale")
        );
        assert_eq!(
            judged.status.as_ref().expect("status").replicas_reporting,
            0
        );
        // Paused right after a stall was reported: the pause wins.
        let mut stuck = shard("s-1");
        stuck.millis_behind_latest = Some(60_000);
        stuck.last_commit_at_ms = Some(NOW - 10 * MINUTE);
        let judged = judge(
            &[report("r-0", NOW - 1_000, vec![stuck])],
            Expectation::Paused,
        );
        assert_eq!(
            (judged.flowing.reason, judged.fresh.reason),
            ("Paused", "Paused")
        );
        // Paused on purpose: nothing to worry about.
        let judged = judge(
            &[report("r-0", NOW - 10 * MINUTE, vec![old])],
            Expectation::Paused,
        );
        assert_eq!(
            (judged.flowing.state, judged.flowing.reason),
            (State::Unknown, "Paused")
        );
        assert_eq!(judged.fresh.reason, "Paused");
    }

    #[test]
    fn an_overdue_window_is_stale_and_a_first_window_is_awaited() {
        let mut lagging = shard("s-0");
        lagging.last_accepted_at_ms = Some(NOW - 1_000);
        lagging.last_committed_window_end_ms = Some(NOW - 30 * MINUTE);
        // Open since 20 minutes: due after 1 m window + 30 s lateness + 2 m margin.
        lagging.oldest_open_window_start_ms = Some(NOW - 20 * MINUTE);
        let judged = judge(&[report("r-0", NOW - 1_000, vec![lagging])], running());
        assert_eq!(
            (judged.fresh.state, judged.fresh.reason),
            (State::False, "Stale")
        );
        assert!(
            judged.fresh.message.contains("the table lags by 19m"),
            "{}",
            judged.fresh.message
        );
        assert_eq!(judged.gauges.overdue_seconds, (19.0 * 60.0) - 150.0);

        let mut first = shard("s-0");
        first.last_accepted_at_ms = Some(NOW - 1_000);
        first.oldest_open_window_start_ms = Some(NOW - 30_000);
        let judged = judge(&[report("r-0", NOW - 1_000, vec![first])], running());
        assert_eq!(
            (judged.fresh.state, judged.fresh.reason),
            (State::Unknown, "FirstWindowOpen")
        );
        assert_eq!(judged.flowing.state, State::True);
    }

    #[test]
    fn the_newest_report_speaks_for_a_shard_that_moved() {
        let mut before = shard("s-0");
        before.millis_behind_latest = Some(50_000);
        before.files_committed = 3;
        let mut after = shard("s-0");
        after.millis_behind_latest = Some(0);
        after.files_committed = 1;
        let reports = [
            report("r-0", NOW - 30_000, vec![before]),
            report("r-1", NOW - 2_000, vec![after]),
            // A replica that was scaled away long ago does not count.
            report("r-2", NOW - 60 * MINUTE, vec![shard("s-9")]),
        ];
        let judged = judge(&reports, running());
        assert_eq!(judged.status.as_ref().expect("status").shards, 1);
        assert_eq!(
            judged.status.as_ref().expect("status").replicas_reporting,
            2
        );
        assert_eq!(judged.status.as_ref().expect("status").lag_millis, Some(0));
        assert_eq!(judged.status.as_ref().expect("status").files_committed, 1);
    }

    #[test]
    fn s3_locations_split_into_bucket_and_prefix() {
        assert_eq!(
            split_s3("s3://shop-curated/curated/_checkpoints/clicks/_progress/"),
            Some(("shop-curated", "curated/_checkpoints/clicks/_progress/"))
        );
        assert_eq!(split_s3("/tmp/x"), None);
        assert_eq!(human(3_700_000), "1h 1m");
    }
}
