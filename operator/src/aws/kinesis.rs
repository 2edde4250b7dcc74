//! The Kinesis data stream the clicks go to.
//!
//! Managed settings: capacity mode, shard count (provisioned mode), retention, server-side
//! encryption with KMS, the owner tags, and the aggregator's enhanced fan-out consumer
//! (`<pipeline>-aggregator`): registered while `aggregation.enhancedFanOut` asks for it,
//! deregistered when it no longer does (a consumer is billed per shard-hour).
//!
//! Kinesis makes most changes asynchronously (the stream goes `UPDATING`) and limits them, so
//! the reconciler moves in steps instead of asking for the impossible:
//!
//! * `UpdateShardCount` accepts a target between half and double the open shard count, so a
//!   change from 1 to 5 shards is planned as 1 → 2, then 2 → 4, then 4 → 5 on later reconciles
//!   ([`next_shard_count`]);
//! * after any call that leaves the stream `UPDATING` ([`Change::needs_settling`]) the
//!   remaining changes wait for the next reconcile, which re-observes and re-plans;
//! * nothing is changed while the stream is not `ACTIVE` ([`Error::Busy`], retried);
//! * AWS allows [`RESHARDS_PER_DAY`] `UpdateShardCount` calls per stream in a rolling 24 hours.
//!   The stream's description has no history, so after each call the operator records its time
//!   on the stream itself, in the tag [`RESIZED_AT_TAG`] (epoch seconds, the last 24 hours
//!   only). A tag rather than the pipeline's status: it lives and dies with the stream, survives
//!   a pipeline re-created over it (or a status lost), needs no CRD field, and is read with the
//!   tags the reconciler reads anyway. From it, [`resize_budget`] says before the quota is hit
//!   how far a resize gets today and when it goes on; with no call left, none is planned and
//!   the condition says when the next is allowed. Calls made by others are not recorded: the
//!   quota error stays the backstop ([`Error::Busy`]).
//!
//! `CreateStream` takes the tags, so a new stream is never untagged; the operator checks them
//! afterwards and adds them when an endpoint ignored them (moto does).

use std::collections::BTreeMap;
use std::fmt;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{EncryptionType, ScalingType, StreamMode, StreamModeDetails};
use clickheatmap_crds::{
    AggregationEngine, ClickHeatmapPipelineSpec, PipelineResources, StreamEncryption,
    StreamMode as SpecStreamMode, StreamSpec,
};
use serde::Serialize;

use super::{
    AwsClients, Deletion, PartReconciler, PlanInput, Readiness, SdkResultExt, Service, check_owner,
    left_in_place, paged_tags, tag_change,
};
use crate::error::{Error, from_sdk};
use crate::names::{Names, Owner};
use crate::pipeline::{DeleteStep, Part};

/// `StreamMode` as AWS spells it.
pub const PROVISIONED: &str = "PROVISIONED";
/// `StreamMode` as AWS spells it.
pub const ON_DEMAND: &str = "ON_DEMAND";
/// The AWS-managed Kinesis key, used when the spec asks for KMS without naming a key.
pub const DEFAULT_KMS_KEY: &str = "alias/aws/kinesis";

/// The stream as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredStream {
    pub name: String,
    pub arn: String,
    /// `PROVISIONED` or `ON_DEMAND`.
    pub mode: String,
    /// Open shards the spec asks for (provisioned mode only); `None` when it names none, and an
    /// existing stream keeps its count.
    pub shards: Option<i32>,
    /// Retention the spec asks for; `None` when it names none, and an existing stream keeps its
    /// own (a new one gets Kinesis's 24 hours).
    pub retention_hours: Option<i32>,
    /// The KMS key, when the stream is to be encrypted.
    pub kms_key_id: Option<String>,
    pub owner: Owner,
    pub adopt_existing: bool,
    pub tags: BTreeMap<String, String>,
    /// The aggregator's enhanced fan-out consumer, and whether the spec wants it.
    pub consumer: DesiredConsumer,
}

/// The enhanced fan-out consumer of the pipeline's aggregator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredConsumer {
    pub name: String,
    pub wanted: bool,
}

/// A registered stream consumer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedConsumer {
    pub arn: String,
    /// `CREATING`, `ACTIVE` or `DELETING`.
    pub status: String,
}

/// An existing stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedStream {
    pub name: String,
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `UPDATING` or `DELETING`.
    pub status: String,
    pub mode: String,
    pub open_shards: i32,
    pub retention_hours: i32,
    /// `NONE` or `KMS`.
    pub encryption_type: String,
    pub key_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The pipeline's consumer, when registered.
    pub consumer: Option<ObservedConsumer>,
    /// When the operator called `UpdateShardCount` on the stream (epoch seconds), from the tag
    /// [`RESIZED_AT_TAG`].
    pub resized_at: Vec<i64>,
    /// When the stream was read (epoch seconds): the resize budget is judged from then.
    pub observed_at: i64,
}

/// One Kinesis call the operator would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all_fields = "camelCase")]
pub enum Change {
    CreateStream {
        stream: String,
        mode: String,
        shards: Option<i32>,
        tags: BTreeMap<String, String>,
    },
    AddTagsToStream {
        stream: String,
        tags: BTreeMap<String, String>,
    },
    IncreaseStreamRetentionPeriod {
        stream: String,
        from: i32,
        to: i32,
    },
    DecreaseStreamRetentionPeriod {
        stream: String,
        from: i32,
        to: i32,
    },
    StartStreamEncryption {
        stream: String,
        key_id: String,
    },
    UpdateStreamMode {
        stream: String,
        stream_arn: String,
        from: String,
        to: String,
    },
    /// One step towards `target` (a step is at most double or half of `from`).
    UpdateShardCount {
        stream: String,
        from: i32,
        to: i32,
        target: i32,
        /// `UpdateShardCount` calls left in AWS's rolling 24-hour quota, this one included (as
        /// far as the operator recorded its calls).
        calls_left: u32,
        /// When the resize is too long for the calls left: when the quota allows the next call
        /// after them (RFC 3339).
        #[serde(skip_serializing_if = "Option::is_none")]
        more_from: Option<String>,
    },
    RegisterStreamConsumer {
        stream: String,
        stream_arn: String,
        consumer: String,
    },
    DeregisterStreamConsumer {
        stream: String,
        consumer: String,
        consumer_arn: String,
    },
}

impl Change {
    /// True when the stream is `CREATING`/`UPDATING` after this call.
    pub fn needs_settling(&self) -> bool {
        matches!(
            self,
            Change::CreateStream { .. }
                | Change::StartStreamEncryption { .. }
                | Change::UpdateStreamMode { .. }
                | Change::UpdateShardCount { .. }
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateStream {
                stream,
                mode,
                shards,
                tags,
            } => {
                write!(f, "create stream {stream} ({mode}")?;
                if let Some(shards) = shards {
                    write!(f, ", {shards} shard{}", if *shards == 1 { "" } else { "s" })?;
                }
                write!(f, "), tagged {}", super::show_tags(tags))
            }
            Change::AddTagsToStream { stream, tags } => {
                write!(f, "tag stream {stream} with {}", super::show_tags(tags))
            }
            Change::IncreaseStreamRetentionPeriod { stream, from, to }
            | Change::DecreaseStreamRetentionPeriod { stream, from, to } => {
                write!(
                    f,
                    "change retention of stream {stream} from {from} h to {to} h"
                )
            }
            Change::StartStreamEncryption { stream, key_id } => {
                write!(f, "encrypt stream {stream} with KMS key {key_id}")
            }
            Change::UpdateStreamMode {
                stream, from, to, ..
            } => write!(f, "switch stream {stream} from {from} to {to}"),
            Change::UpdateShardCount {
                stream,
                from,
                to,
                target,
                calls_left,
                more_from,
            } => {
                write!(
                    f,
                    "change shard count of stream {stream} from {from} to {to}"
                )?;
                let steps = resize_steps(*from, *target);
                if let Some(more_from) = more_from {
                    write!(
                        f,
                        " ({}: {} shards today, the rest from {more_from}",
                        resize_needs(*from, *target, *calls_left),
                        shards_after(*from, *target, *calls_left)
                    )?;
                    if steps > RESHARDS_PER_DAY {
                        write!(
                            f,
                            "; at least {} days in all",
                            steps.div_ceil(RESHARDS_PER_DAY)
                        )?;
                    }
                    f.write_str(")")?;
                } else if to != target {
                    write!(f, " (step 1 of {steps} towards {target}")?;
                    if steps > RESHARDS_PER_DAY {
                        write!(
                            f,
                            "; AWS allows {RESHARDS_PER_DAY} resizes per stream per 24 hours, so \
                             this takes at least {} days",
                            steps.div_ceil(RESHARDS_PER_DAY)
                        )?;
                    }
                    f.write_str(")")?;
                }
                Ok(())
            }
            Change::RegisterStreamConsumer {
                stream, consumer, ..
            } => write!(
                f,
                "register enhanced fan-out consumer {consumer} on stream {stream}"
            ),
            Change::DeregisterStreamConsumer {
                stream, consumer, ..
            } => write!(
                f,
                "deregister enhanced fan-out consumer {consumer} from stream {stream}"
            ),
        }
    }
}

/// The stream the spec asks for.
pub fn desired(spec: &ClickHeatmapPipelineSpec, names: &Names) -> DesiredStream {
    let stream = &spec.stream;
    let (mode, shards) = match stream.mode {
        SpecStreamMode::Provisioned => (PROVISIONED, stream.shards),
        SpecStreamMode::OnDemand => (ON_DEMAND, None),
    };
    DesiredStream {
        name: stream.name.clone(),
        arn: names.stream_arn(&stream.name),
        mode: mode.to_owned(),
        shards,
        retention_hours: stream.retention_hours,
        kms_key_id: match stream.encryption {
            StreamEncryption::None => None,
            StreamEncryption::Kms => Some(
                stream
                    .kms_key_id
                    .clone()
                    .unwrap_or_else(|| DEFAULT_KMS_KEY.to_owned()),
            ),
        },
        owner: names.owner.clone(),
        adopt_existing: spec.adopt_existing,
        tags: crate::names::resource_tags(spec, &names.owner),
        consumer: DesiredConsumer {
            name: names.fan_out_consumer(),
            wanted: spec.aggregation.enhanced_fan_out
                && spec.aggregation.engine == AggregationEngine::Deployment,
        },
    }
}

/// `UpdateShardCount` calls AWS allows per stream in a rolling 24 hours.
pub const RESHARDS_PER_DAY: u32 = 10;

/// How many `UpdateShardCount` calls take the stream from `current` to `target` shards.
pub fn resize_steps(current: i32, target: i32) -> u32 {
    let (mut shards, mut steps) = (current, 0);
    while shards != target && steps < 64 {
        shards = next_shard_count(shards, target);
        steps += 1;
    }
    steps
}

/// The tag on the stream that records the operator's `UpdateShardCount` calls of the last 24
/// hours: epoch seconds, separated by spaces.
pub const RESIZED_AT_TAG: &str = "clickheatmap.io/resized-at";

const DAY_SECONDS: i64 = 24 * 60 * 60;

/// The times in [`RESIZED_AT_TAG`]'s value (anything else in it is ignored).
pub fn parse_resized_at(value: &str) -> Vec<i64> {
    value
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

/// The calls of `times` within the 24 hours before `now`, oldest first.
pub fn recent_resizes(times: &[i64], now: i64) -> Vec<i64> {
    let mut recent: Vec<i64> = times
        .iter()
        .copied()
        .filter(|time| *time > now - DAY_SECONDS && *time <= now)
        .collect();
    recent.sort_unstable();
    recent
}

/// How far a resize gets within the `UpdateShardCount` quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeBudget {
    /// Calls the whole resize needs.
    pub steps: u32,
    /// Calls left in the rolling 24 hours.
    pub calls_left: u32,
    /// The shard count after the calls left (the target when they suffice).
    pub reachable: i32,
    /// When they do not suffice: when the quota allows the next call after them (epoch
    /// seconds).
    pub more_from: Option<i64>,
}

/// The quota for a resize from `current` to `target` shards at `now`, given the operator's
/// earlier calls (`resized_at`, epoch seconds). A call leaves the rolling window 24 hours after
/// it was made, so once the calls left are used the next one is allowed 24 hours after the
/// oldest call in the window (or after now, when there is none).
pub fn resize_budget(current: i32, target: i32, resized_at: &[i64], now: i64) -> ResizeBudget {
    let recent = recent_resizes(resized_at, now);
    let used = u32::try_from(recent.len()).unwrap_or(u32::MAX);
    let calls_left = RESHARDS_PER_DAY.saturating_sub(used);
    let steps = resize_steps(current, target);
    ResizeBudget {
        steps,
        calls_left,
        reachable: shards_after(current, target, calls_left),
        more_from: (steps > calls_left)
            .then(|| recent.first().copied().unwrap_or(now) + DAY_SECONDS),
    }
}

/// The shard count after at most `calls` steps from `current` towards `target`.
fn shards_after(current: i32, target: i32, calls: u32) -> i32 {
    let mut shards = current;
    for _ in 0..calls {
        if shards == target {
            break;
        }
        shards = next_shard_count(shards, target);
    }
    shards
}

/// `resizing 1 → 64 shards needs 6 UpdateShardCount calls; 3 are left in the 24 h quota`.
fn resize_needs(current: i32, target: i32, calls_left: u32) -> String {
    let left = match calls_left {
        0 => "none is".to_owned(),
        1 => "1 is".to_owned(),
        n => format!("{n} are"),
    };
    format!(
        "resizing {current} → {target} shards needs {} UpdateShardCount calls; {left} left in the \
         24 h quota",
        resize_steps(current, target)
    )
}

/// Epoch seconds as RFC 3339.
fn rfc3339(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|time| time.to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

fn now_seconds() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// The next shard count on the way from `current` to `target` that `UpdateShardCount` accepts:
/// at most double, at least half (rounded up) of the current count.
pub fn next_shard_count(current: i32, target: i32) -> i32 {
    if current <= 0 {
        return target;
    }
    if target > current {
        target.min(current.saturating_mul(2))
    } else {
        target.max((current + 1) / 2)
    }
}

/// Reads the stream, its tags and the pipeline's consumer; `None` when there is no such stream.
pub async fn observe(
    client: &Client,
    name: &str,
    consumer: &str,
) -> Result<Option<ObservedStream>, Error> {
    let what = format!("stream {name}");
    let Some(output) = client
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .found("kinesis:DescribeStreamSummary", &what)?
    else {
        return Ok(None);
    };
    let Some(summary) = output.stream_description_summary() else {
        return Ok(None);
    };
    let tags = paged_tags(|start| {
        let request = client
            .list_tags_for_stream()
            .stream_name(name)
            .set_exclusive_start_tag_key(start);
        let what = &what;
        async move {
            let page = request
                .send()
                .await
                .map_sdk("kinesis:ListTagsForStream", what)?;
            Ok((tag_pairs(page.tags()).collect(), page.has_more_tags()))
        }
    })
    .await?;
    let consumer = observe_consumer(client, summary.stream_arn(), consumer).await?;
    Ok(Some(ObservedStream {
        name: summary.stream_name().to_owned(),
        arn: summary.stream_arn().to_owned(),
        status: summary.stream_status().as_str().to_owned(),
        mode: summary
            .stream_mode_details()
            .map(|details| details.stream_mode().as_str().to_owned())
            .unwrap_or_else(|| PROVISIONED.to_owned()),
        open_shards: summary.open_shard_count(),
        retention_hours: summary.retention_period_hours(),
        encryption_type: summary
            .encryption_type()
            .map(|kind| kind.as_str().to_owned())
            .unwrap_or_else(|| "NONE".to_owned()),
        key_id: summary.key_id().map(str::to_owned),
        resized_at: tags
            .get(RESIZED_AT_TAG)
            .map(|value| parse_resized_at(value))
            .unwrap_or_default(),
        observed_at: now_seconds(),
        tags,
        consumer,
    }))
}

fn tag_pairs(tags: &[aws_sdk_kinesis::types::Tag]) -> impl Iterator<Item = (String, String)> + '_ {
    tags.iter().map(|tag| {
        (
            tag.key().to_owned(),
            tag.value().unwrap_or_default().to_owned(),
        )
    })
}

async fn observe_consumer(
    client: &Client,
    stream_arn: &str,
    name: &str,
) -> Result<Option<ObservedConsumer>, Error> {
    let output = client
        .describe_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
        .found(
            "kinesis:DescribeStreamConsumer",
            format_args!("consumer {name}"),
        )?;
    Ok(output
        .as_ref()
        .and_then(|output| output.consumer_description())
        .map(|consumer| ObservedConsumer {
            arn: consumer.consumer_arn().to_owned(),
            status: consumer.consumer_status().as_str().to_owned(),
        }))
}

fn build_error(what: &str) -> impl FnOnce(aws_sdk_kinesis::error::BuildError) -> Error + '_ {
    move |error| Error::internal(format!("building {what}: {error}"))
}

/// Makes one Kinesis call.
pub async fn apply(client: &Client, change: &Change) -> Result<(), Error> {
    match change {
        Change::RegisterStreamConsumer {
            stream_arn,
            consumer,
            ..
        } => {
            client
                .register_stream_consumer()
                .stream_arn(stream_arn)
                .consumer_name(consumer)
                .send()
                .await
                .map_sdk(
                    "kinesis:RegisterStreamConsumer",
                    format_args!("consumer {consumer}"),
                )?;
            Ok(())
        }
        Change::DeregisterStreamConsumer {
            consumer,
            consumer_arn,
            ..
        } => {
            client
                .deregister_stream_consumer()
                .consumer_arn(consumer_arn)
                .send()
                .await
                .map_sdk(
                    "kinesis:DeregisterStreamConsumer",
                    format_args!("consumer {consumer}"),
                )?;
            Ok(())
        }
        Change::CreateStream {
            stream,
            mode,
            shards,
            tags,
        } => {
            let what = format!("stream {stream}");
            let details = StreamModeDetails::builder()
                .stream_mode(StreamMode::from(mode.as_str()))
                .build()
                .map_err(build_error("the stream mode"))?;
            let mut request = client
                .create_stream()
                .stream_name(stream)
                .stream_mode_details(details)
                .set_shard_count(*shards);
            for (key, value) in tags {
                request = request.tags(key, value);
            }
            request
                .send()
                .await
                .map_sdk("kinesis:CreateStream", &what)?;
            // Some endpoints ignore CreateStream's tags; without them the next reconcile would
            // take the stream for someone else's. Reading them back is best effort: if the new
            // stream cannot be read yet, AWS has applied the tags with the create.
            let Ok(current) = client
                .list_tags_for_stream()
                .stream_name(stream)
                .send()
                .await
            else {
                return Ok(());
            };
            let current: BTreeMap<String, String> = tag_pairs(current.tags()).collect();
            if let Some(missing) = tag_change(&current, tags, |missing| missing) {
                add_tags(client, stream, &missing).await?;
            }
            Ok(())
        }
        Change::AddTagsToStream { stream, tags } => add_tags(client, stream, tags).await,
        Change::IncreaseStreamRetentionPeriod { stream, to, .. } => {
            client
                .increase_stream_retention_period()
                .stream_name(stream)
                .retention_period_hours(*to)
                .send()
                .await
                .map_sdk(
                    "kinesis:IncreaseStreamRetentionPeriod",
                    format_args!("stream {stream}"),
                )?;
            Ok(())
        }
        Change::DecreaseStreamRetentionPeriod { stream, to, .. } => {
            client
                .decrease_stream_retention_period()
                .stream_name(stream)
                .retention_period_hours(*to)
                .send()
                .await
                .map_sdk(
                    "kinesis:DecreaseStreamRetentionPeriod",
                    format_args!("stream {stream}"),
                )?;
            Ok(())
        }
        Change::StartStreamEncryption { stream, key_id } => {
            client
                .start_stream_encryption()
                .stream_name(stream)
                .encryption_type(EncryptionType::Kms)
                .key_id(key_id)
                .send()
                .await
                .map_sdk(
                    "kinesis:StartStreamEncryption",
                    format_args!("stream {stream}"),
                )?;
            Ok(())
        }
        Change::UpdateStreamMode {
            stream,
            stream_arn,
            to,
            ..
        } => {
            let details = StreamModeDetails::builder()
                .stream_mode(StreamMode::from(to.as_str()))
                .build()
                .map_err(build_error("the stream mode"))?;
            client
                .update_stream_mode()
                .stream_arn(stream_arn)
                .stream_mode_details(details)
                .send()
                .await
                .map_sdk("kinesis:UpdateStreamMode", format_args!("stream {stream}"))?;
            Ok(())
        }
        Change::UpdateShardCount {
            stream, to, target, ..
        } => {
            client
                .update_shard_count()
                .stream_name(stream)
                .target_shard_count(*to)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await
                .map_err(|e| {
                    let error =
                        from_sdk("kinesis:UpdateShardCount", &format!("stream {stream}"), e);
                    // The resharding quota, not a throttle: say so in the condition (a throttle
                    // only backs off and leaves the status as it was) and try again later.
                    if matches!(error, Error::Throttled { .. }) {
                        Error::Busy {
                            resource: format!("stream {stream}"),
                            message: format!(
                                "AWS's resharding quota is used up ({RESHARDS_PER_DAY} \
                                 UpdateShardCount calls per stream per rolling 24 hours); the \
                                 resize to {target} shards continues when it allows"
                            ),
                        }
                    } else {
                        error
                    }
                })?;
            record_resize(client, stream).await;
            Ok(())
        }
    }
}

/// Adds this call's time to [`RESIZED_AT_TAG`] (keeping the last 24 hours). The resize is made
/// whatever happens here: a failure is logged, and the quota error stays the backstop.
async fn record_resize(client: &Client, stream: &str) {
    let now = now_seconds();
    let what = format!("stream {stream}");
    let previous = paged_tags(|start| {
        let request = client
            .list_tags_for_stream()
            .stream_name(stream)
            .set_exclusive_start_tag_key(start);
        let what = &what;
        async move {
            let page = request
                .send()
                .await
                .map_sdk("kinesis:ListTagsForStream", what)?;
            Ok((tag_pairs(page.tags()).collect(), page.has_more_tags()))
        }
    })
    .await
    .map(|tags| {
        tags.get(RESIZED_AT_TAG)
            .map(|value| parse_resized_at(value))
            .unwrap_or_default()
    });
    let mut times = match previous {
        Ok(times) => recent_resizes(&times, now),
        Err(error) => {
            tracing::warn!(stream, error = %error, "could not read the resize record");
            Vec::new()
        }
    };
    times.push(now);
    let keep = usize::try_from(RESHARDS_PER_DAY).unwrap_or(usize::MAX);
    let skip = times.len().saturating_sub(keep);
    let value = times[skip..]
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let tags = BTreeMap::from([(RESIZED_AT_TAG.to_owned(), value)]);
    if let Err(error) = add_tags(client, stream, &tags).await {
        tracing::warn!(stream, error = %error, "could not record the resize");
    }
}

async fn add_tags(
    client: &Client,
    stream: &str,
    tags: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut request = client.add_tags_to_stream().stream_name(stream);
    for (key, value) in tags {
        request = request.tags(key, value);
    }
    request
        .send()
        .await
        .map_sdk("kinesis:AddTagsToStream", format_args!("stream {stream}"))?;
    Ok(())
}

/// Deletes the stream under `deletionPolicy: Delete` if this pipeline owns it.
pub async fn delete(client: &Client, desired: &DesiredStream) -> Result<Deletion, Error> {
    let stream = &desired.name;
    let Some(observed) = observe(client, stream, &desired.consumer.name).await? else {
        return Ok(Deletion::Gone);
    };
    if let Some(kept) = left_in_place(&format!("stream {stream}"), &observed.tags, &desired.owner) {
        return Ok(kept);
    }
    if observed.status == "DELETING" {
        return Ok(Deletion::InProgress(format!("stream {stream} is DELETING")));
    }
    client
        .delete_stream()
        .stream_name(stream)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .map_sdk("kinesis:DeleteStream", format_args!("stream {stream}"))?;
    Ok(Deletion::InProgress(format!("deleting stream {stream}")))
}

/// The stream part: the pipeline's Kinesis data stream.
pub struct Stream;

impl PartReconciler for Stream {
    const PART: Part = Part::Stream;
    const CONDITION_TYPE: &'static str = "StreamReady";
    const NAME: &'static str = "stream";
    const SERVICE: Service = Service::new("kinesis");

    type Desired = DesiredStream;
    type Observed = ObservedStream;
    type Change = Change;

    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        apply(&clients.kinesis, change)
    }

    fn needs_settling(change: &Change) -> bool {
        change.needs_settling()
    }

    fn desired(input: PlanInput<'_>) -> Result<Vec<DesiredStream>, Error> {
        Ok(vec![desired(input.spec, input.names)])
    }

    fn summary(desired: &[DesiredStream]) -> String {
        let names: Vec<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        format!("stream {} is ACTIVE and matches the spec", names.join(", "))
    }

    async fn observe(
        clients: &AwsClients,
        desired: &DesiredStream,
    ) -> Result<Option<ObservedStream>, Error> {
        observe(&clients.kinesis, &desired.name, &desired.consumer.name).await
    }

    /// The calls that turn `observed` into `desired`, in the order they can be made. Empty when
    /// they match.
    fn diff(
        desired: &DesiredStream,
        observed: Option<&ObservedStream>,
    ) -> Result<Vec<Change>, Error> {
        let stream = &desired.name;
        let Some(observed) = observed else {
            let mut changes = vec![Change::CreateStream {
                stream: stream.clone(),
                mode: desired.mode.clone(),
                shards: (desired.mode == PROVISIONED)
                    .then(|| desired.shards.unwrap_or(StreamSpec::DEFAULT_SHARDS)),
                tags: desired.tags.clone(),
            }];
            // A new stream keeps records 24 hours and is not encrypted; these follow once it is
            // ACTIVE (shown by `plan`, applied by a later reconcile).
            if let Some(hours) = desired.retention_hours
                && hours > StreamSpec::DEFAULT_RETENTION_HOURS
            {
                changes.push(Change::IncreaseStreamRetentionPeriod {
                    stream: stream.clone(),
                    from: StreamSpec::DEFAULT_RETENTION_HOURS,
                    to: hours,
                });
            }
            if let Some(key_id) = &desired.kms_key_id {
                changes.push(Change::StartStreamEncryption {
                    stream: stream.clone(),
                    key_id: key_id.clone(),
                });
            }
            if desired.consumer.wanted {
                changes.push(Change::RegisterStreamConsumer {
                    stream: stream.clone(),
                    stream_arn: desired.arn.clone(),
                    consumer: desired.consumer.name.clone(),
                });
            }
            return Ok(changes);
        };
        check_owner(
            &format!("stream {stream}"),
            &observed.tags,
            &desired.owner,
            desired.adopt_existing,
        )?;
        let mut changes = Vec::new();
        changes.extend(tag_change(&observed.tags, &desired.tags, |tags| {
            Change::AddTagsToStream {
                stream: stream.clone(),
                tags,
            }
        }));
        // The consumer first: registering one does not make the stream UPDATING, so it does not
        // wait behind the changes that do.
        match (&observed.consumer, desired.consumer.wanted) {
            (None, true) => changes.push(Change::RegisterStreamConsumer {
                stream: stream.clone(),
                stream_arn: observed.arn.clone(),
                consumer: desired.consumer.name.clone(),
            }),
            (Some(consumer), false) if consumer.status != "DELETING" => {
                changes.push(Change::DeregisterStreamConsumer {
                    stream: stream.clone(),
                    consumer: desired.consumer.name.clone(),
                    consumer_arn: consumer.arn.clone(),
                });
            }
            _ => {}
        }
        match desired.retention_hours {
            Some(hours) if hours > observed.retention_hours => {
                changes.push(Change::IncreaseStreamRetentionPeriod {
                    stream: stream.clone(),
                    from: observed.retention_hours,
                    to: hours,
                });
            }
            Some(hours) if hours < observed.retention_hours => {
                changes.push(Change::DecreaseStreamRetentionPeriod {
                    stream: stream.clone(),
                    from: observed.retention_hours,
                    to: hours,
                });
            }
            _ => {}
        }
        let encrypted = observed.encryption_type == "KMS";
        match &desired.kms_key_id {
            Some(key_id) if !encrypted || observed.key_id.as_deref() != Some(key_id.as_str()) => {
                changes.push(Change::StartStreamEncryption {
                    stream: stream.clone(),
                    key_id: key_id.clone(),
                });
            }
            // Never weakened: a stream encrypted with KMS stays encrypted when the spec says
            // `None` (see [`kept`]); stopping encryption is for a person to do on purpose.
            _ => {}
        }
        if observed.mode != desired.mode {
            changes.push(Change::UpdateStreamMode {
                stream: stream.clone(),
                stream_arn: observed.arn.clone(),
                from: observed.mode.clone(),
                to: desired.mode.clone(),
            });
        }
        if let Some(target) = desired.shards
            && observed.open_shards != target
        {
            let budget = resize_budget(
                observed.open_shards,
                target,
                &observed.resized_at,
                observed.observed_at,
            );
            // With no call left in the quota none is planned; `readiness` says until when.
            if budget.calls_left > 0 {
                changes.push(Change::UpdateShardCount {
                    stream: stream.clone(),
                    from: observed.open_shards,
                    to: next_shard_count(observed.open_shards, target),
                    target,
                    calls_left: budget.calls_left,
                    more_from: budget.more_from.map(rfc3339),
                });
            }
        }
        if !changes.is_empty() && observed.status != "ACTIVE" {
            return Err(Error::Busy {
                resource: format!("stream {stream}"),
                message: format!(
                    "it is {}; {} change(s) wait until it is ACTIVE",
                    observed.status,
                    changes.len()
                ),
            });
        }
        Ok(changes)
    }

    /// What the stream has that is stronger than the spec asks, and keeps: KMS encryption while
    /// the spec says `encryption: None`.
    fn kept(desired: &DesiredStream, observed: Option<&ObservedStream>) -> Vec<String> {
        match observed {
            Some(observed) if observed.encryption_type == "KMS" && desired.kms_key_id.is_none() => {
                vec![format!(
                    "stream {} server-side encryption with KMS key {} (the spec says None; stop it \
                     yourself if that is really wanted)",
                    desired.name,
                    observed.key_id.as_deref().unwrap_or("(unknown)")
                )]
            }
            _ => Vec::new(),
        }
    }

    /// A stream is ready when it is `ACTIVE`.
    fn readiness(desired: &DesiredStream, observed: Option<&ObservedStream>) -> Readiness {
        match observed {
            Some(stream) if stream.status == "ACTIVE" => match desired.shards {
                Some(target) if stream.open_shards != target => {
                    let budget = resize_budget(
                        stream.open_shards,
                        target,
                        &stream.resized_at,
                        stream.observed_at,
                    );
                    match budget.more_from {
                        Some(from) if budget.calls_left == 0 => Readiness::Deferred {
                            message: format!(
                                "stream {}: {}: the next from {}",
                                stream.name,
                                resize_needs(stream.open_shards, target, 0),
                                rfc3339(from)
                            ),
                            until: from,
                        },
                        _ => Readiness::Ready,
                    }
                }
                _ => Readiness::Ready,
            },
            Some(stream) => {
                Readiness::Provisioning(format!("stream {} is {}", stream.name, stream.status))
            }
            None => Readiness::Provisioning("the stream does not exist yet".to_owned()),
        }
    }

    fn resources(
        desired: &DesiredStream,
        observed: Option<&ObservedStream>,
        into: &mut PipelineResources,
    ) {
        into.stream_arn = Some(observed.map_or_else(|| desired.arn.clone(), |o| o.arn.clone()));
    }

    fn record(from: &PipelineResources, into: &mut PipelineResources) {
        into.stream_arn.clone_from(&from.stream_arn);
    }

    async fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        _done: &[DeleteStep],
    ) -> Result<Vec<(String, Deletion)>, Error> {
        let stream = desired(input.spec, input.names);
        let deletion = delete(&clients.kinesis, &stream).await?;
        Ok(vec![(format!("stream {}", stream.name), deletion)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names_for};

    fn in_sync(desired: &DesiredStream) -> ObservedStream {
        ObservedStream {
            name: desired.name.clone(),
            arn: desired.arn.clone(),
            status: "ACTIVE".into(),
            mode: desired.mode.clone(),
            open_shards: desired.shards.unwrap_or(4),
            retention_hours: desired.retention_hours.unwrap_or(24),
            encryption_type: if desired.kms_key_id.is_some() {
                "KMS".into()
            } else {
                "NONE".into()
            },
            key_id: desired.kms_key_id.clone(),
            tags: desired.tags.clone(),
            consumer: desired.consumer.wanted.then(|| ObservedConsumer {
                arn: format!("{}/consumer/{}:1", desired.arn, desired.consumer.name),
                status: "ACTIVE".into(),
            }),
            resized_at: Vec::new(),
            observed_at: NOW,
        }
    }

    #[test]
    fn desired_from_the_examples() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal));
        assert_eq!(stream.name, "shop-clicks");
        assert_eq!(stream.mode, "PROVISIONED");
        // The minimal example names neither: 1 shard and 24 h on create, kept on adoption.
        assert_eq!(stream.shards, None);
        assert_eq!(stream.retention_hours, None);
        assert_eq!(stream.kms_key_id, None);
        assert_eq!(
            stream.arn,
            "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks"
        );

        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full));
        assert_eq!(stream.shards, Some(2));
        assert_eq!(stream.retention_hours, Some(48));
        assert_eq!(stream.kms_key_id.as_deref(), Some("alias/shop-heatmap"));
        assert!(stream.adopt_existing);
    }

    #[test]
    fn kms_without_a_key_uses_the_aws_managed_key() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.stream.encryption = StreamEncryption::Kms;
        let stream = desired(&pipeline.spec, &names_for(&pipeline));
        assert_eq!(stream.kms_key_id.as_deref(), Some("alias/aws/kinesis"));
    }

    #[test]
    fn on_demand_has_no_shard_count() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.stream.mode = SpecStreamMode::OnDemand;
        let stream = desired(&pipeline.spec, &names_for(&pipeline));
        assert_eq!(stream.mode, "ON_DEMAND");
        assert_eq!(stream.shards, None);
        let mut observed = in_sync(&stream);
        observed.open_shards = 7;
        assert_eq!(Stream::diff(&stream, Some(&observed)), Ok(vec![]));
    }

    #[test]
    fn shard_steps_stay_within_update_shard_count_limits() {
        assert_eq!(next_shard_count(1, 5), 2);
        assert_eq!(next_shard_count(2, 5), 4);
        assert_eq!(next_shard_count(4, 5), 5);
        assert_eq!(next_shard_count(8, 1), 4);
        assert_eq!(next_shard_count(4, 1), 2);
        assert_eq!(next_shard_count(3, 1), 2);
        assert_eq!(next_shard_count(2, 1), 1);
        assert_eq!(next_shard_count(3, 3), 3);
        // Every step of every path is accepted by UpdateShardCount and ends at the target.
        for from in 1..=40 {
            for target in 1..=40 {
                let mut current = from;
                let mut steps = 0;
                while current != target {
                    let next = next_shard_count(current, target);
                    assert!(
                        next <= current * 2 && next * 2 >= current,
                        "{current} -> {next}"
                    );
                    current = next;
                    steps += 1;
                    assert!(steps < 10, "{from} -> {target} does not converge");
                }
            }
        }
    }

    #[test]
    fn create_plans_the_follow_ups() {
        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full));
        let changes = Stream::diff(&stream, None).expect("diff");
        assert_eq!(changes.len(), 4);
        assert!(changes[0].needs_settling());
        assert_eq!(
            changes[0].to_string(),
            "create stream shop-full-clicks (PROVISIONED, 2 shards), tagged clickheatmap.io/managed-by=clickheatmap-operator, clickheatmap.io/pipeline=default/shop-full, cost-center=4711, team=web"
        );
        assert_eq!(
            changes[1],
            Change::IncreaseStreamRetentionPeriod {
                stream: "shop-full-clicks".into(),
                from: 24,
                to: 48
            }
        );
        assert_eq!(
            changes[2],
            Change::StartStreamEncryption {
                stream: "shop-full-clicks".into(),
                key_id: "alias/shop-heatmap".into()
            }
        );
        assert_eq!(
            changes[3].to_string(),
            "register enhanced fan-out consumer shop-full-aggregator on stream shop-full-clicks"
        );
    }

    #[test]
    fn in_sync_stream_needs_nothing() {
        for file in ["pipeline-minimal.yaml", "pipeline-full.yaml"] {
            let pipeline = fixture(file);
            let stream = desired(&pipeline.spec, &names_for(&pipeline));
            assert_eq!(
                Stream::diff(&stream, Some(&in_sync(&stream))),
                Ok(vec![]),
                "{file}"
            );
        }
    }

    #[test]
    fn the_consumer_is_registered_and_deregistered_with_the_spec() {
        let full = fixture("pipeline-full.yaml");
        let mut stream = desired(&full.spec, &names_for(&full));
        assert_eq!(stream.consumer.name, "shop-full-aggregator");
        assert!(stream.consumer.wanted);
        let mut observed = in_sync(&stream);
        observed.consumer = None;
        assert!(matches!(
            Stream::diff(&stream, Some(&observed)).unwrap().as_slice(),
            [Change::RegisterStreamConsumer { consumer, stream_arn, .. }]
                if consumer == "shop-full-aggregator" && *stream_arn == stream.arn
        ));
        // A new stream's plan ends with it.
        assert!(matches!(
            Stream::diff(&stream, None).unwrap().last(),
            Some(Change::RegisterStreamConsumer { .. })
        ));
        stream.consumer.wanted = false;
        let observed = in_sync(&desired(&full.spec, &names_for(&full)));
        assert!(matches!(
            Stream::diff(&stream, Some(&observed)).unwrap().as_slice(),
            [Change::DeregisterStreamConsumer { .. }]
        ));
        // Already on its way out: nothing to do.
        let mut deleting = observed.clone();
        if let Some(consumer) = deleting.consumer.as_mut() {
            consumer.status = "DELETING".into();
        }
        assert_eq!(Stream::diff(&stream, Some(&deleting)), Ok(vec![]));
        // Managed Flink reads the stream itself: no consumer for the aggregator.
        let mut flink = full.clone();
        flink.spec.aggregation.engine = AggregationEngine::ManagedFlink;
        assert!(!desired(&flink.spec, &names_for(&flink)).consumer.wanted);
    }

    #[test]
    fn drift_in_every_setting() {
        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full));
        let mut observed = in_sync(&stream);
        observed.retention_hours = 72;
        observed.encryption_type = "NONE".into();
        observed.key_id = None;
        observed.mode = "ON_DEMAND".into();
        observed.open_shards = 8;
        let changes = Stream::diff(&stream, Some(&observed)).expect("diff");
        assert_eq!(
            changes,
            vec![
                Change::DecreaseStreamRetentionPeriod {
                    stream: "shop-full-clicks".into(),
                    from: 72,
                    to: 48
                },
                Change::StartStreamEncryption {
                    stream: "shop-full-clicks".into(),
                    key_id: "alias/shop-heatmap".into()
                },
                Change::UpdateStreamMode {
                    stream: "shop-full-clicks".into(),
                    stream_arn: stream.arn.clone(),
                    from: "ON_DEMAND".into(),
                    to: "PROVISIONED".into()
                },
                Change::UpdateShardCount {
                    stream: "shop-full-clicks".into(),
                    from: 8,
                    to: 4,
                    target: 2,
                    calls_left: 10,
                    more_from: None,
                },
            ]
        );
        assert_eq!(
            changes[3].to_string(),
            "change shard count of stream shop-full-clicks from 8 to 4 (step 1 of 2 towards 2)"
        );
    }

    #[test]
    fn a_resize_beyond_a_days_quota_says_how_long_it_takes() {
        assert_eq!(resize_steps(1, 1), 0);
        assert_eq!(resize_steps(1, 2), 1);
        assert_eq!(resize_steps(1, 4096), 12);
        let change = Change::UpdateShardCount {
            stream: "s".into(),
            from: 1,
            to: 2,
            target: 4096,
            calls_left: 10,
            more_from: None,
        };
        assert_eq!(
            change.to_string(),
            "change shard count of stream s from 1 to 2 (step 1 of 12 towards 4096; AWS allows \
             10 resizes per stream per 24 hours, so this takes at least 2 days)"
        );
        // As planned from the quota: 10 calls today.
        let budget = resize_budget(1, 4096, &[], NOW);
        let change = Change::UpdateShardCount {
            stream: "s".into(),
            from: 1,
            to: 2,
            target: 4096,
            calls_left: budget.calls_left,
            more_from: budget.more_from.map(rfc3339),
        };
        assert_eq!(
            change.to_string(),
            "change shard count of stream s from 1 to 2 (resizing 1 → 4096 shards needs 12 \
             UpdateShardCount calls; 10 are left in the 24 h quota: 1024 shards today, the rest \
             from 2025-06-16T12:00:00Z; at least 2 days in all)"
        );
    }

    /// 2025-06-15T12:00:00Z.
    const NOW: i64 = 1_749_988_800;

    #[test]
    fn the_resize_budget_counts_the_calls_of_the_last_24_hours() {
        let hour = 3600;
        assert_eq!(parse_resized_at("12 x 7  9"), [12, 7, 9]);
        // Calls older than 24 hours (or in the future) no longer count.
        let times = [NOW - 25 * hour, NOW - 3 * hour, NOW - 5 * hour, NOW + hour];
        assert_eq!(
            recent_resizes(&times, NOW),
            [NOW - 5 * hour, NOW - 3 * hour]
        );
        // Nothing recorded: the whole quota.
        assert_eq!(
            resize_budget(1, 64, &[], NOW),
            ResizeBudget {
                steps: 6,
                calls_left: 10,
                reachable: 64,
                more_from: None
            }
        );
        // Seven calls in the last 24 hours: 1 → 2 → 4 → 8 today, the rest once the oldest of
        // them is 24 hours old.
        let seven: Vec<i64> = (1..=7).map(|h| NOW - h * hour).collect();
        assert_eq!(
            resize_budget(1, 64, &seven, NOW),
            ResizeBudget {
                steps: 6,
                calls_left: 3,
                reachable: 8,
                more_from: Some(NOW - 7 * hour + 24 * hour)
            }
        );
        assert_eq!(
            resize_needs(1, 64, 3),
            "resizing 1 → 64 shards needs 6 UpdateShardCount calls; 3 are left in the 24 h quota"
        );
        // Shrinking counts the same way; exactly enough calls is enough.
        assert_eq!(resize_budget(64, 8, &seven, NOW).more_from, None);
        // None left: nothing is planned and the condition says until when.
        let ten: Vec<i64> = (1..=10).map(|h| NOW - h * hour).collect();
        let budget = resize_budget(1, 64, &ten, NOW);
        assert_eq!((budget.calls_left, budget.reachable), (0, 1));
        assert_eq!(budget.more_from, Some(NOW + 14 * hour));
    }

    #[test]
    fn a_resize_past_the_quota_says_so_before_running_into_it() {
        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full));
        let mut observed = in_sync(&stream);
        observed.open_shards = 1;
        let mut wide = stream.clone();
        wide.shards = Some(64);
        let hour = 3600;
        observed.resized_at = (1..=7).map(|h| NOW - h * hour).collect();
        let changes = Stream::diff(&wide, Some(&observed)).expect("diff");
        assert_eq!(
            changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "change shard count of stream shop-full-clicks from 1 to 2 (resizing 1 → 64 shards \
              needs 6 UpdateShardCount calls; 3 are left in the 24 h quota: 8 shards today, the \
              rest from 2025-06-16T05:00:00Z)"
            ]
        );
        assert_eq!(Stream::readiness(&wide, Some(&observed)), Readiness::Ready);
        // All ten used: no call at all, and the condition says when the next is allowed.
        observed.resized_at = (1..=10).map(|h| NOW - h * hour).collect();
        assert_eq!(Stream::diff(&wide, Some(&observed)), Ok(vec![]));
        assert_eq!(
            Stream::readiness(&wide, Some(&observed)),
            Readiness::Deferred {
                message:
                    "stream shop-full-clicks: resizing 1 → 64 shards needs 6 UpdateShardCount \
                          calls; none is left in the 24 h quota: the next from \
                          2025-06-16T02:00:00Z"
                        .into(),
                until: NOW - 10 * hour + 24 * hour,
            }
        );
    }

    #[test]
    fn encryption_is_never_stopped_only_reported_as_kept() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal));
        let mut observed = in_sync(&stream);
        observed.encryption_type = "KMS".into();
        observed.key_id = Some("alias/x".into());
        assert_eq!(Stream::diff(&stream, Some(&observed)), Ok(vec![]));
        let kept = Stream::kept(&stream, Some(&observed));
        assert_eq!(kept.len(), 1);
        assert!(kept[0].contains("KMS key alias/x"), "{kept:?}");
    }

    #[test]
    fn a_busy_stream_is_not_changed() {
        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full));
        let mut observed = in_sync(&stream);
        observed.status = "UPDATING".into();
        assert_eq!(Stream::diff(&stream, Some(&observed)), Ok(vec![]));
        assert!(matches!(
            Stream::readiness(&stream, Some(&observed)),
            Readiness::Provisioning(_)
        ));
        observed.open_shards = 3;
        let error = Stream::diff(&stream, Some(&observed)).expect_err("busy");
        assert_eq!(error.reason(), crate::error::Reason::Provisioning);
        assert!(error.is_retryable());
    }

    #[test]
    fn ownership_is_checked_before_anything_else() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal));
        let mut observed = in_sync(&stream);
        observed.tags = Owner::new("other", "pipeline").tags();
        observed.status = "UPDATING".into();
        observed.open_shards = 3;
        let error = Stream::diff(&stream, Some(&observed)).expect_err("conflict");
        assert_eq!(error.reason(), crate::error::Reason::Conflict);
    }

    #[test]
    fn adoption_adds_only_the_missing_tags() {
        let mut full = fixture("pipeline-full.yaml");
        full.spec.adopt_existing = true;
        let stream = desired(&full.spec, &names_for(&full));
        let mut observed = in_sync(&stream);
        // The team's own tag is there already (with the spec's value): only the rest is added.
        observed.tags = BTreeMap::from([("team".into(), "web".into())]);
        let mut missing = stream.tags.clone();
        missing.remove("team");
        assert_eq!(
            Stream::diff(&stream, Some(&observed)),
            Ok(vec![Change::AddTagsToStream {
                stream: "shop-full-clicks".into(),
                tags: missing
            }])
        );
    }
}
