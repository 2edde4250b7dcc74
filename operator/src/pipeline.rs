//! A whole pipeline: plan, apply and delete its AWS resources in the architecture's order.
//!
//! This is the API the Kubernetes controller calls; everything below it is per service.
//!
//! * [`plan_pipeline`] observes and diffs every part and returns the changes — no writes. The
//!   `plan` command prints it.
//! * [`apply_pipeline`] does the same and applies the changes part by part, in the reconcile
//!   order buckets → stream → Firehose → Glue → Athena → Flink, and returns one
//!   [`PartOutcome`] per part (a condition: type, status, reason, message) plus the names/ARNs
//!   for `status.resources`. A part whose inputs are not ready (Firehose needs an `ACTIVE`
//!   stream and the raw bucket) waits with reason `Provisioning` instead of failing.
//! * [`delete_pipeline`] honours `deletionPolicy` in the reverse order and says whether
//!   anything is left to wait for (the finalizer stays until it is finished).
//!
//! Every call works from the custom resource alone (spec, metadata, and the previous
//! `status.resources`, which records what the pipeline made so that switching a feature off —
//! the raw archive, the crawler, the Flink engine — removes what it had created). Steps are
//! idempotent: after a crash, the next reconcile observes and carries on.

use std::fmt;
use std::time::Duration as StdDuration;

use clickheatmap_crds::{
    AggregationEngine, ClickHeatmapPipeline, ClickHeatmapPipelineSpec, DeletionPolicy,
    PartitionDiscovery, PipelineResources, StreamMode,
};
use serde::Serialize;

use crate::aws::s3::BucketRole;
use crate::aws::{
    AwsClients, Change, Deletion, Readiness, Service, athena, firehose, flink, glue, kinesis, s3,
};
use crate::error::{Error, Reason};
use crate::names::{Names, Owner, delivery_stream_name};

/// The parts of a pipeline on AWS, in reconcile order. Each becomes a status condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Part {
    Buckets,
    Stream,
    RawArchive,
    Catalog,
    Query,
    /// The Managed Flink application (engine `ManagedFlink`). The Deployment engine's
    /// aggregator is the controller's, not this module's.
    FlinkApplication,
}

impl Part {
    /// Reconcile order.
    pub const ORDER: [Part; 6] = [
        Part::Buckets,
        Part::Stream,
        Part::RawArchive,
        Part::Catalog,
        Part::Query,
        Part::FlinkApplication,
    ];

    /// The status condition type of this part.
    pub fn condition_type(self) -> &'static str {
        match self {
            Part::Buckets => "BucketsReady",
            Part::Stream => "StreamReady",
            Part::RawArchive => "RawArchiveReady",
            Part::Catalog => "CatalogReady",
            Part::Query => "QueryReady",
            Part::FlinkApplication => "FlinkApplicationReady",
        }
    }

    /// The AWS service the part lives in.
    pub fn service(self) -> Service {
        match self {
            Part::Buckets => Service::S3,
            Part::Stream => Service::Kinesis,
            Part::RawArchive => Service::Firehose,
            Part::Catalog => Service::Glue,
            Part::Query => Service::Athena,
            Part::FlinkApplication => Service::KinesisAnalyticsV2,
        }
    }

    /// Parts that must be ready before this one is created or changed.
    pub fn depends_on(self) -> &'static [Part] {
        match self {
            Part::RawArchive | Part::FlinkApplication => &[Part::Buckets, Part::Stream],
            _ => &[],
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Buckets => "buckets",
            Part::Stream => "stream",
            Part::RawArchive => "raw archive",
            Part::Catalog => "catalog",
            Part::Query => "query workgroup",
            Part::FlinkApplication => "Flink application",
        })
    }
}

/// What one part needs.
#[derive(Clone, Debug)]
pub struct PartPlan {
    pub part: Part,
    /// The calls that would bring the part in line with the spec, in order.
    pub changes: Vec<Change>,
    /// Why the part cannot be planned (a conflict, a busy resource, a failed read). When set,
    /// `changes` may be incomplete and nothing of the part is applied.
    pub error: Option<Error>,
    /// Whether the part is usable as observed.
    pub readiness: Readiness,
    /// What to say when the part is in sync.
    pub summary: String,
    /// The part's names/ARNs once `changes` are applied (only this part's fields are set).
    pub resources: PipelineResources,
    /// Settings of the existing resource that are stronger than the spec asks and are kept (the
    /// operator never weakens a resource); said in the part's condition.
    pub kept: Vec<String>,
}

/// What a whole pipeline needs.
#[derive(Clone, Debug)]
pub struct PipelinePlan {
    pub names: Names,
    pub parts: Vec<PartPlan>,
}

impl PipelinePlan {
    /// Every planned call with its service, in reconcile order.
    pub fn changes(&self) -> Vec<(Service, Change)> {
        self.parts
            .iter()
            .flat_map(|part| part.changes.iter().map(|c| (c.service(), c.clone())))
            .collect()
    }

    /// The parts that cannot be planned, with why.
    pub fn errors(&self) -> Vec<(Part, &Error)> {
        self.parts
            .iter()
            .filter_map(|part| part.error.as_ref().map(|error| (part.part, error)))
            .collect()
    }

    /// True when nothing needs to change and nothing is in the way.
    pub fn is_in_sync(&self) -> bool {
        self.parts
            .iter()
            .all(|part| part.changes.is_empty() && part.error.is_none())
    }
}

/// The result of reconciling one part: a status condition, and what was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartOutcome {
    pub part: Part,
    /// Condition status `True` when ready.
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    /// The calls made, in order.
    pub applied: Vec<Change>,
    /// The error behind a not-ready part, if any.
    #[serde(skip)]
    pub error: Option<Error>,
}

impl PartOutcome {
    pub fn condition_type(&self) -> &'static str {
        self.part.condition_type()
    }

    /// `"True"` or `"False"`.
    pub fn status(&self) -> &'static str {
        if self.ready { "True" } else { "False" }
    }
}

/// The `Ready` condition that sums up the AWS side of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReadySummary {
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
}

/// The result of reconciling a whole pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineOutcome {
    /// One per part that applies to the spec (or has something of an earlier spec to remove).
    /// Conditions of parts not listed should be removed from the status.
    pub parts: Vec<PartOutcome>,
    /// For `status.resources` (fields this module does not manage are copied from the previous
    /// status).
    pub resources: PipelineResources,
}

impl PipelineOutcome {
    pub fn is_ready(&self) -> bool {
        self.parts.iter().all(|part| part.ready)
    }

    /// The `Ready` condition: true when every part is; otherwise the first terminal problem in
    /// reconcile order, or else the first part that is not ready.
    pub fn ready_summary(&self) -> ReadySummary {
        let blocking = self
            .parts
            .iter()
            .find(|part| !part.ready && part.reason.is_terminal())
            .or_else(|| self.parts.iter().find(|part| !part.ready));
        match blocking {
            None => ReadySummary {
                ready: true,
                reason: Reason::Ready,
                message: "every AWS resource of the pipeline exists and matches the spec"
                    .to_owned(),
            },
            Some(part) => ReadySummary {
                ready: false,
                reason: part.reason,
                message: format!("{}: {}", part.part, part.message),
            },
        }
    }

    /// Every call made, with its service.
    pub fn applied(&self) -> Vec<(Service, Change)> {
        self.parts
            .iter()
            .flat_map(|part| part.applied.iter().map(|c| (c.service(), c.clone())))
            .collect()
    }

    /// When to reconcile again: soon while something settles, later after throttling or a
    /// transient failure (the controller adds its own backoff), slowly after a terminal
    /// problem (a person must act; a spec change triggers a reconcile anyway), and at the
    /// resync interval when everything is ready.
    pub fn requeue_after(&self) -> StdDuration {
        let reasons: Vec<Reason> = self
            .parts
            .iter()
            .filter(|part| !part.ready)
            .map(|part| part.reason)
            .collect();
        if reasons.is_empty() {
            StdDuration::from_secs(600)
        } else if reasons.contains(&Reason::Provisioning) {
            StdDuration::from_secs(10)
        } else if reasons
            .iter()
            .any(|r| matches!(r, Reason::Throttled | Reason::Retrying))
        {
            StdDuration::from_secs(30)
        } else {
            StdDuration::from_secs(300)
        }
    }
}

/// Checks what the CRD schema checks, for manifests that never went through an API server (the
/// `plan` command) and for defence in depth.
pub fn validate(spec: &ClickHeatmapPipelineSpec) -> Result<(), Error> {
    let invalid = |message: String| Err(Error::InvalidSpec(message));
    let region_ok = !spec.region.is_empty()
        && spec
            .region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && spec.region.contains('-');
    if !region_ok {
        return invalid(format!(
            "region {:?} is not an AWS region name",
            spec.region
        ));
    }
    let stream = &spec.stream;
    if stream.name.is_empty() {
        return invalid("stream.name must not be empty".to_owned());
    }
    if stream.mode == StreamMode::Provisioned && !(1..=500).contains(&stream.shards) {
        return invalid(format!("stream.shards {} is outside 1..500", stream.shards));
    }
    if stream.mode == StreamMode::OnDemand && stream.shards != 1 {
        return invalid(
            "stream.shards applies only to mode Provisioned: an OnDemand stream scales by itself, leave shards out"
                .to_owned(),
        );
    }
    if !(24..=8760).contains(&stream.retention_hours) {
        return invalid(format!(
            "stream.retentionHours {} is outside 24..8760",
            stream.retention_hours
        ));
    }
    let archive = &spec.raw_archive;
    if archive.enabled && archive.role_arn.is_none() {
        return invalid(
            "rawArchive.roleArn is required when rawArchive.enabled is true: Firehose needs an IAM role that can read the stream and write to the raw bucket"
                .to_owned(),
        );
    }
    if !(1..=128).contains(&archive.buffer_size_mib) {
        return invalid(format!(
            "rawArchive.bufferSizeMiB {} is outside 1..128",
            archive.buffer_size_mib
        ));
    }
    if !(0..=900).contains(&archive.buffer_interval_seconds) {
        return invalid(format!(
            "rawArchive.bufferIntervalSeconds {} is outside 0..900",
            archive.buffer_interval_seconds
        ));
    }
    let window = spec.aggregation.window.as_millis();
    if window == 0 || 86_400_000 % window != 0 {
        return invalid(format!(
            "aggregation.window {} does not divide a day evenly",
            spec.aggregation.window
        ));
    }
    let retention_ms = u64::from(spec.stream.retention_hours.max(0).unsigned_abs()) * 3_600_000;
    if spec.aggregation.allowed_lateness.as_millis() >= retention_ms {
        return invalid(format!(
            "aggregation.allowedLateness {} must be shorter than stream.retentionHours {}",
            spec.aggregation.allowed_lateness, spec.stream.retention_hours
        ));
    }
    if spec.aggregation.engine == AggregationEngine::ManagedFlink {
        let Some(flink) = &spec.aggregation.flink else {
            return invalid(
                "aggregation.flink (codeS3Bucket, codeS3Key, roleArn) is required when aggregation.engine is ManagedFlink"
                    .to_owned(),
            );
        };
        if flink.parallelism < 1 || !(1..=8).contains(&flink.parallelism_per_kpu) {
            return invalid(
                "aggregation.flink.parallelism must be at least 1 and parallelismPerKpu 1..8"
                    .to_owned(),
            );
        }
    }
    if spec.catalog.partitions == PartitionDiscovery::Crawler
        && spec
            .catalog
            .crawler
            .as_ref()
            .and_then(|c| c.role_arn.as_ref())
            .is_none()
    {
        return invalid(
            "catalog.crawler.roleArn is required when catalog.partitions is Crawler".to_owned(),
        );
    }
    if let Some(limit) = spec.query.bytes_scanned_cutoff_per_query
        && limit < 10 * 1024 * 1024
    {
        return invalid(format!(
            "query.bytesScannedCutoffPerQuery {limit} is below Athena's minimum of 10 MiB"
        ));
    }
    Ok(())
}

struct Context<'a> {
    clients: &'a AwsClients,
    spec: &'a ClickHeatmapPipelineSpec,
    names: Names,
    previous: PipelineResources,
}

async fn context<'a>(
    clients: &'a AwsClients,
    pipeline: &'a ClickHeatmapPipeline,
) -> Result<Context<'a>, Error> {
    let spec = &pipeline.spec;
    validate(spec)?;
    if clients.region != spec.region {
        return Err(Error::internal(format!(
            "the AWS clients are for region {}, the pipeline is in {}",
            clients.region, spec.region
        )));
    }
    let account = clients.account().await?;
    Ok(Context {
        clients,
        spec,
        names: Names::for_pipeline(pipeline, account),
        previous: pipeline
            .status
            .as_ref()
            .map(|status| status.resources.clone())
            .unwrap_or_default(),
    })
}

fn part_plan(part: Part) -> PartPlan {
    PartPlan {
        part,
        changes: Vec::new(),
        error: None,
        readiness: Readiness::Ready,
        summary: String::new(),
        resources: PipelineResources::default(),
        kept: Vec::new(),
    }
}

/// Runs `diff` on a successful observation and records changes or the error.
fn record<T>(
    plan: &mut PartPlan,
    result: Result<Vec<T>, Error>,
    wrap: impl Fn(T) -> Change,
) -> bool {
    match result {
        Ok(changes) => {
            plan.changes.extend(changes.into_iter().map(wrap));
            true
        }
        Err(error) => {
            plan.error.get_or_insert(error);
            false
        }
    }
}

fn not_ready(plan: &mut PartPlan, readiness: Readiness) {
    if plan.readiness == Readiness::Ready {
        plan.readiness = readiness;
    }
}

async fn plan_buckets(ctx: &Context<'_>) -> PartPlan {
    let mut plan = part_plan(Part::Buckets);
    let desired = s3::desired(ctx.spec, &ctx.names);
    for bucket in &desired {
        let observed = match s3::observe(&ctx.clients.s3, bucket).await {
            Ok(observed) => observed,
            Err(error) => {
                plan.error.get_or_insert(error);
                continue;
            }
        };
        if record(&mut plan, s3::diff(bucket, observed.as_ref()), Change::S3) {
            for role in &bucket.roles {
                let field = match role {
                    BucketRole::Raw => &mut plan.resources.raw_bucket,
                    BucketRole::Curated => &mut plan.resources.curated_bucket,
                    BucketRole::QueryResults => &mut plan.resources.query_results_bucket,
                };
                *field = Some(bucket.name.clone());
            }
        }
        plan.kept.extend(s3::kept(bucket, observed.as_ref()));
        not_ready(&mut plan, s3::readiness(observed.as_ref()));
    }
    let names: Vec<&str> = desired.iter().map(|b| b.name.as_str()).collect();
    plan.summary = format!("buckets {} match the spec", names.join(", "));
    plan
}

async fn plan_stream(ctx: &Context<'_>) -> PartPlan {
    let mut plan = part_plan(Part::Stream);
    let desired = kinesis::desired(ctx.spec, &ctx.names);
    plan.summary = format!("stream {} is ACTIVE and matches the spec", desired.name);
    match kinesis::observe(&ctx.clients.kinesis, &desired.name, &desired.consumer.name).await {
        Ok(observed) => {
            if record(
                &mut plan,
                kinesis::diff(&desired, observed.as_ref()),
                Change::Kinesis,
            ) {
                plan.resources.stream_arn = Some(
                    observed
                        .as_ref()
                        .map(|o| o.arn.clone())
                        .unwrap_or_else(|| desired.arn.clone()),
                );
            }
            plan.kept.extend(kinesis::kept(&desired, observed.as_ref()));
            plan.readiness = kinesis::readiness(observed.as_ref());
        }
        Err(error) => plan.error = Some(error),
    }
    plan
}

async fn plan_raw_archive(ctx: &Context<'_>) -> Option<PartPlan> {
    let mut plan = part_plan(Part::RawArchive);
    let desired = match firehose::desired(ctx.spec, &ctx.names) {
        Ok(desired) => desired,
        Err(error) => {
            plan.error = Some(error);
            return Some(plan);
        }
    };
    let Some(desired) = desired else {
        // Switched off: remove the delivery stream this pipeline made, if any.
        let previous = ctx.previous.delivery_stream_arn.as_deref()?;
        let name = previous.rsplit('/').next().unwrap_or(previous).to_owned();
        plan.summary = "the raw archive is disabled".to_owned();
        match firehose::observe(&ctx.clients.firehose, &name).await {
            Ok(observed) => {
                plan.changes = firehose::cleanup(observed.as_ref(), &ctx.names.owner)
                    .into_iter()
                    .map(Change::Firehose)
                    .collect();
                if let Some(found) =
                    observed.filter(|o| crate::aws::is_ours(&o.tags, &ctx.names.owner))
                {
                    plan.resources.delivery_stream_arn = Some(found.arn);
                    plan.readiness = Readiness::Provisioning(format!(
                        "removing delivery stream {name} (the raw archive is disabled)"
                    ));
                }
            }
            Err(error) => plan.error = Some(error),
        }
        return Some(plan);
    };
    plan.summary = format!(
        "delivery stream {} is ACTIVE and matches the spec",
        desired.name
    );
    match firehose::observe(&ctx.clients.firehose, &desired.name).await {
        Ok(observed) => {
            if record(
                &mut plan,
                firehose::diff(&desired, observed.as_ref()),
                Change::Firehose,
            ) {
                plan.resources.delivery_stream_arn = Some(
                    observed
                        .as_ref()
                        .map(|o| o.arn.clone())
                        .unwrap_or_else(|| desired.arn.clone()),
                );
            }
            plan.readiness = firehose::readiness(observed.as_ref());
        }
        Err(error) => plan.error = Some(error),
    }
    Some(plan)
}

async fn plan_catalog(ctx: &Context<'_>) -> PartPlan {
    let mut plan = part_plan(Part::Catalog);
    let desired = match glue::desired(ctx.spec, &ctx.names, ctx.previous.crawler_name.as_deref()) {
        Ok(desired) => desired,
        Err(error) => {
            plan.error = Some(error);
            return plan;
        }
    };
    plan.summary = format!(
        "Glue table {}.{} matches the spec",
        desired.table.database, desired.table.name
    );
    match glue::observe(&ctx.clients.glue, &desired).await {
        Ok(observed) => {
            if record(&mut plan, glue::diff(&desired, &observed), Change::Glue) {
                plan.resources.glue_database = Some(desired.database.name.clone());
                plan.resources.glue_table = Some(desired.table.name.clone());
                plan.resources.crawler_name =
                    desired.crawler.as_ref().map(|c| c.definition.name.clone());
            }
            // A crawler that could not be removed yet stays recorded, so removal is retried.
            if plan.error.is_some()
                && let Some((name, _)) = &desired.crawler_to_remove
            {
                plan.resources.crawler_name = Some(name.clone());
            }
            plan.readiness = glue::readiness(&desired, &observed);
        }
        Err(error) => plan.error = Some(error),
    }
    plan
}

async fn plan_query(ctx: &Context<'_>) -> PartPlan {
    let mut plan = part_plan(Part::Query);
    let desired = athena::desired(ctx.spec, &ctx.names);
    plan.summary = format!("Athena workgroup {} matches the spec", desired.name);
    match athena::observe(&ctx.clients.athena, &desired).await {
        Ok(observed) => {
            if record(
                &mut plan,
                athena::diff(&desired, observed.as_ref()),
                Change::Athena,
            ) {
                plan.resources.workgroup = Some(desired.name.clone());
            }
            plan.kept.extend(athena::kept(&desired, observed.as_ref()));
            plan.readiness = athena::readiness(observed.as_ref());
        }
        Err(error) => plan.error = Some(error),
    }
    plan
}

async fn plan_flink(ctx: &Context<'_>) -> Option<PartPlan> {
    let mut plan = part_plan(Part::FlinkApplication);
    let desired = match flink::desired(ctx.spec, &ctx.names) {
        Ok(desired) => desired,
        Err(error) => {
            plan.error = Some(error);
            return Some(plan);
        }
    };
    let Some(desired) = desired else {
        // Engine switched away from ManagedFlink: remove the application this pipeline made.
        let previous = ctx.previous.flink_application_arn.as_deref()?;
        let name = flink::name_from_arn(previous)
            .unwrap_or(previous)
            .to_owned();
        plan.summary = "the aggregation does not run on Managed Flink".to_owned();
        match ctx.clients.flink.observe(&name).await {
            Ok(observed) => {
                plan.changes = flink::cleanup(observed.as_ref(), &ctx.names.owner)
                    .into_iter()
                    .map(Change::Flink)
                    .collect();
                if let Some(found) =
                    observed.filter(|o| crate::aws::is_ours(&o.tags, &ctx.names.owner))
                {
                    plan.resources.flink_application_arn = Some(found.arn);
                    plan.readiness = Readiness::Provisioning(format!(
                        "removing Flink application {name} (the engine is no longer ManagedFlink)"
                    ));
                }
            }
            Err(error) => plan.error = Some(error),
        }
        return Some(plan);
    };
    plan.summary = format!(
        "Flink application {} is {} and matches the spec",
        desired.name,
        if desired.running {
            "RUNNING"
        } else {
            "READY (paused)"
        }
    );
    match ctx.clients.flink.observe(&desired.name).await {
        Ok(observed) => {
            if record(
                &mut plan,
                flink::diff(&desired, observed.as_ref()),
                Change::Flink,
            ) {
                plan.resources.flink_application_arn = Some(
                    observed
                        .as_ref()
                        .map(|o| o.arn.clone())
                        .unwrap_or_else(|| desired.arn.clone()),
                );
            }
            plan.readiness = flink::readiness(&desired, observed.as_ref());
        }
        Err(error) => plan.error = Some(error),
    }
    Some(plan)
}

async fn plan_part(ctx: &Context<'_>, part: Part) -> Option<PartPlan> {
    match part {
        Part::Buckets => Some(plan_buckets(ctx).await),
        Part::Stream => Some(plan_stream(ctx).await),
        Part::RawArchive => plan_raw_archive(ctx).await,
        Part::Catalog => Some(plan_catalog(ctx).await),
        Part::Query => Some(plan_query(ctx).await),
        Part::FlinkApplication => plan_flink(ctx).await,
    }
}

/// True when the spec itself wants the part (as opposed to a part with leftovers to remove).
fn wanted(spec: &ClickHeatmapPipelineSpec, part: Part) -> bool {
    match part {
        Part::RawArchive => spec.raw_archive.enabled,
        Part::FlinkApplication => spec.aggregation.engine == AggregationEngine::ManagedFlink,
        _ => true,
    }
}

/// Observes every part of the pipeline and returns what [`apply_pipeline`] would change. Makes
/// no write.
pub async fn plan_pipeline(
    clients: &AwsClients,
    pipeline: &ClickHeatmapPipeline,
) -> Result<PipelinePlan, Error> {
    let ctx = context(clients, pipeline).await?;
    let mut parts = Vec::new();
    for part in Part::ORDER {
        if let Some(plan) = plan_part(&ctx, part).await {
            parts.push(plan);
        }
    }
    Ok(PipelinePlan {
        names: ctx.names,
        parts,
    })
}

/// Makes one call of any service.
pub async fn apply_change(clients: &AwsClients, change: &Change) -> Result<(), Error> {
    match change {
        Change::S3(change) => s3::apply(&clients.s3, change).await,
        Change::Kinesis(change) => kinesis::apply(&clients.kinesis, change).await,
        Change::Firehose(change) => firehose::apply(&clients.firehose, change).await,
        Change::Glue(change) => glue::apply(&clients.glue, change).await,
        Change::Athena(change) => athena::apply(&clients.athena, change).await,
        Change::Flink(change) => clients.flink.apply(change).await,
    }
}

/// Copies the fields `part` is responsible for.
fn assign_resources(part: Part, from: &PipelineResources, into: &mut PipelineResources) {
    match part {
        Part::Buckets => {
            into.raw_bucket.clone_from(&from.raw_bucket);
            into.curated_bucket.clone_from(&from.curated_bucket);
            into.query_results_bucket
                .clone_from(&from.query_results_bucket);
        }
        Part::Stream => into.stream_arn.clone_from(&from.stream_arn),
        Part::RawArchive => into
            .delivery_stream_arn
            .clone_from(&from.delivery_stream_arn),
        Part::Catalog => {
            into.glue_database.clone_from(&from.glue_database);
            into.glue_table.clone_from(&from.glue_table);
            into.crawler_name.clone_from(&from.crawler_name);
        }
        Part::Query => into.workgroup.clone_from(&from.workgroup),
        Part::FlinkApplication => into
            .flink_application_arn
            .clone_from(&from.flink_application_arn),
    }
}

fn describe_changes(changes: &[Change]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Applies a part's plan; records its resources.
async fn execute(
    clients: &AwsClients,
    plan: PartPlan,
    resources: &mut PipelineResources,
) -> PartOutcome {
    let part = plan.part;
    let kept = if plan.kept.is_empty() {
        String::new()
    } else {
        format!("; kept as they are: {}", plan.kept.join("; "))
    };
    if let Some(error) = plan.error {
        tracing::warn!(part = %part, reason = %error.reason(), error = %error, "part not reconciled");
        return PartOutcome {
            part,
            ready: false,
            reason: error.reason(),
            message: error.to_string(),
            applied: Vec::new(),
            error: Some(error),
        };
    }
    if plan.changes.is_empty() {
        assign_resources(part, &plan.resources, resources);
        return match plan.readiness {
            Readiness::Ready => PartOutcome {
                part,
                ready: true,
                reason: Reason::Ready,
                message: format!("{}{kept}", plan.summary),
                applied: Vec::new(),
                error: None,
            },
            Readiness::Provisioning(message) => PartOutcome {
                part,
                ready: false,
                reason: Reason::Provisioning,
                message,
                applied: Vec::new(),
                error: None,
            },
        };
    }
    let mut applied = Vec::new();
    let mut settling = false;
    let total = plan.changes.len();
    for change in &plan.changes {
        tracing::info!(part = %part, service = %change.service(), change = %change, "applying");
        if let Err(error) = apply_change(clients, change).await {
            tracing::warn!(part = %part, change = %change, error = %error, "change failed");
            if !applied.is_empty() {
                assign_resources(part, &plan.resources, resources);
            }
            let message = if applied.is_empty() {
                error.to_string()
            } else {
                format!("{error} (after: {})", describe_changes(&applied))
            };
            return PartOutcome {
                part,
                ready: false,
                reason: error.reason(),
                message,
                applied,
                error: Some(error),
            };
        }
        applied.push(change.clone());
        if change.needs_settling() {
            settling = true;
            break;
        }
    }
    assign_resources(part, &plan.resources, resources);
    let done = describe_changes(&applied);
    if settling {
        let left = total - applied.len();
        let mut message = format!("applied: {done}; waiting for it to settle");
        if left > 0 {
            message.push_str(&format!(" before {left} more change(s)"));
        }
        PartOutcome {
            part,
            ready: false,
            reason: Reason::Provisioning,
            message,
            applied,
            error: None,
        }
    } else {
        PartOutcome {
            part,
            ready: true,
            reason: Reason::Ready,
            message: format!("applied: {done}{kept}"),
            applied,
            error: None,
        }
    }
}

/// Reconciles the pipeline's AWS resources: observe, create what is missing, change only what
/// drifted (no write when in sync), in reconcile order. Returns one outcome per part; `Err`
/// only when nothing could be planned (an invalid spec, or the account could not be looked up).
pub async fn apply_pipeline(
    clients: &AwsClients,
    pipeline: &ClickHeatmapPipeline,
) -> Result<PipelineOutcome, Error> {
    let ctx = context(clients, pipeline).await?;
    let mut resources = ctx.previous.clone();
    let mut outcomes: Vec<PartOutcome> = Vec::new();
    for part in Part::ORDER {
        if wanted(ctx.spec, part) {
            let blocker = part
                .depends_on()
                .iter()
                .find_map(|dependency| outcomes.iter().find(|o| o.part == *dependency && !o.ready));
            if let Some(blocker) = blocker {
                outcomes.push(PartOutcome {
                    part,
                    ready: false,
                    reason: Reason::Provisioning,
                    message: format!("waiting for the {}: {}", blocker.part, blocker.message),
                    applied: Vec::new(),
                    error: None,
                });
                continue;
            }
        }
        let Some(plan) = plan_part(&ctx, part).await else {
            // Neither wanted nor anything left to remove.
            assign_resources(part, &PipelineResources::default(), &mut resources);
            continue;
        };
        outcomes.push(execute(clients, plan, &mut resources).await);
    }
    Ok(PipelineOutcome {
        parts: outcomes,
        resources,
    })
}

/// One resource's fate in [`delete_pipeline`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteStep {
    pub part: Part,
    pub resource: String,
    pub deletion: Deletion,
}

/// The result of [`delete_pipeline`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteOutcome {
    pub policy: DeletionPolicy,
    pub steps: Vec<DeleteStep>,
}

impl DeleteOutcome {
    /// True when nothing is left to wait for: the finalizer can go.
    pub fn is_finished(&self) -> bool {
        self.steps.iter().all(|step| step.deletion.is_finished())
    }
}

/// The catalog's names for deletion, even from a spec whose crawler has no role (deletion needs
/// only names).
fn catalog_for_deletion(
    names: &Names,
    spec: &ClickHeatmapPipelineSpec,
    previous: &PipelineResources,
) -> Result<glue::DesiredCatalog, Error> {
    let mut spec = spec.clone();
    if spec.catalog.partitions == PartitionDiscovery::Crawler {
        let crawler = spec
            .catalog
            .crawler
            .get_or_insert(clickheatmap_crds::CrawlerSpec {
                name: None,
                schedule: "cron(0/30 * * * ? *)".to_owned(),
                role_arn: None,
            });
        crawler.role_arn.get_or_insert_with(String::new);
    }
    glue::desired(&spec, names, previous.crawler_name.as_deref())
}

/// Honours `deletionPolicy` for a pipeline that is being deleted. `Retain` makes no AWS call.
/// `Delete` removes, in reverse reconcile order, every resource tagged by this pipeline (others
/// are reported as kept); buckets are emptied and removed once nothing writes to them any more.
/// Call again until [`DeleteOutcome::is_finished`].
pub async fn delete_pipeline(
    clients: &AwsClients,
    pipeline: &ClickHeatmapPipeline,
) -> Result<DeleteOutcome, Error> {
    let spec = &pipeline.spec;
    let policy = spec.deletion_policy;
    if policy == DeletionPolicy::Retain {
        return Ok(DeleteOutcome {
            policy,
            steps: vec![DeleteStep {
                part: Part::Buckets,
                resource: "all AWS resources".to_owned(),
                deletion: Deletion::Retained,
            }],
        });
    }
    let account = clients.account().await?;
    let names = Names::for_pipeline(pipeline, account);
    let owner: &Owner = &names.owner;
    let previous = pipeline
        .status
        .as_ref()
        .map(|status| status.resources.clone())
        .unwrap_or_default();
    let mut steps = Vec::new();

    let flink_name = if spec.aggregation.engine == AggregationEngine::ManagedFlink {
        Some(crate::names::flink_application_name(spec, owner))
    } else {
        previous
            .flink_application_arn
            .as_deref()
            .and_then(flink::name_from_arn)
            .map(str::to_owned)
    };
    if let Some(name) = flink_name {
        let deletion = flink::delete(clients.flink.as_ref(), &name, owner).await?;
        steps.push(DeleteStep {
            part: Part::FlinkApplication,
            resource: format!("Flink application {name}"),
            deletion,
        });
    }

    let workgroup = athena::desired(spec, &names);
    let deletion = athena::delete(&clients.athena, &workgroup).await?;
    steps.push(DeleteStep {
        part: Part::Query,
        resource: format!("Athena workgroup {}", workgroup.name),
        deletion,
    });

    let catalog = catalog_for_deletion(&names, spec, &previous)?;
    for (resource, deletion) in glue::delete(&clients.glue, &catalog).await? {
        steps.push(DeleteStep {
            part: Part::Catalog,
            resource,
            deletion,
        });
    }

    let firehose_name = if spec.raw_archive.enabled {
        Some(delivery_stream_name(spec))
    } else {
        previous
            .delivery_stream_arn
            .as_deref()
            .map(|arn| arn.rsplit('/').next().unwrap_or(arn).to_owned())
    };
    if let Some(name) = firehose_name {
        let deletion = firehose::delete(&clients.firehose, &name, owner).await?;
        steps.push(DeleteStep {
            part: Part::RawArchive,
            resource: format!("delivery stream {name}"),
            deletion,
        });
    }

    let stream = kinesis::desired(spec, &names);
    let deletion = kinesis::delete(&clients.kinesis, &stream).await?;
    steps.push(DeleteStep {
        part: Part::Stream,
        resource: format!("stream {}", stream.name),
        deletion,
    });

    // Firehose and Flink write into the buckets: empty them only once those are gone.
    let writers_gone = steps
        .iter()
        .filter(|s| matches!(s.part, Part::RawArchive | Part::FlinkApplication))
        .all(|s| s.deletion.is_finished());
    for bucket in s3::desired(spec, &names) {
        let deletion = if writers_gone {
            s3::delete(&clients.s3, &bucket).await?
        } else {
            Deletion::InProgress(format!(
                "bucket {} waits until the delivery stream and the Flink application are deleted",
                bucket.name
            ))
        };
        steps.push(DeleteStep {
            part: Part::Buckets,
            resource: format!("bucket {}", bucket.name),
            deletion,
        });
    }
    Ok(DeleteOutcome { policy, steps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture;

    #[test]
    fn the_examples_are_valid() {
        for file in ["pipeline-minimal.yaml", "pipeline-full.yaml"] {
            assert_eq!(validate(&fixture(file).spec), Ok(()), "{file}");
        }
    }

    #[test]
    fn invalid_specs_say_which_field() {
        let base = fixture("pipeline-minimal.yaml");
        type Edit = Box<dyn Fn(&mut ClickHeatmapPipelineSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.region = "Seoul".into()), "region"),
            (Box::new(|s| s.stream.shards = 0), "stream.shards"),
            (
                Box::new(|s| s.stream.retention_hours = 12),
                "retentionHours",
            ),
            (
                Box::new(|s| s.raw_archive.role_arn = None),
                "rawArchive.roleArn",
            ),
            (
                Box::new(|s| s.raw_archive.buffer_size_mib = 200),
                "bufferSizeMiB",
            ),
            (
                Box::new(|s| s.aggregation.window = clickheatmap_crds::Duration::from_secs(7 * 60)),
                "aggregation.window",
            ),
            (
                Box::new(|s| s.aggregation.engine = AggregationEngine::ManagedFlink),
                "aggregation.flink",
            ),
            (
                Box::new(|s| s.catalog.partitions = PartitionDiscovery::Crawler),
                "catalog.crawler.roleArn",
            ),
            (
                Box::new(|s| s.query.bytes_scanned_cutoff_per_query = Some(1024)),
                "bytesScannedCutoffPerQuery",
            ),
        ];
        for (change, field) in cases {
            let mut spec = base.spec.clone();
            change(&mut spec);
            let error = validate(&spec).expect_err(field);
            assert_eq!(error.reason(), Reason::InvalidSpec);
            assert!(
                error.to_string().contains(field),
                "{error} should name {field}"
            );
        }
    }

    fn outcome(part: Part, ready: bool, reason: Reason) -> PartOutcome {
        PartOutcome {
            part,
            ready,
            reason,
            message: format!("{part} message"),
            applied: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn ready_summary_prefers_terminal_problems() {
        let all_ready = PipelineOutcome {
            parts: vec![
                outcome(Part::Buckets, true, Reason::Ready),
                outcome(Part::Stream, true, Reason::Ready),
            ],
            resources: PipelineResources::default(),
        };
        assert!(all_ready.ready_summary().ready);
        assert_eq!(all_ready.requeue_after(), StdDuration::from_secs(600));
        let mixed = PipelineOutcome {
            parts: vec![
                outcome(Part::Buckets, true, Reason::Ready),
                outcome(Part::Stream, false, Reason::Provisioning),
                outcome(Part::Query, false, Reason::Conflict),
            ],
            resources: PipelineResources::default(),
        };
        let summary = mixed.ready_summary();
        assert!(!summary.ready);
        assert_eq!(summary.reason, Reason::Conflict);
        assert_eq!(summary.message, "query workgroup: query workgroup message");
        assert_eq!(mixed.requeue_after(), StdDuration::from_secs(10));
    }

    #[test]
    fn condition_types() {
        let types: Vec<_> = Part::ORDER.iter().map(|p| p.condition_type()).collect();
        assert_eq!(
            types,
            [
                "BucketsReady",
                "StreamReady",
                "RawArchiveReady",
                "CatalogReady",
                "QueryReady",
                "FlinkApplicationReady"
            ]
        );
    }
}
