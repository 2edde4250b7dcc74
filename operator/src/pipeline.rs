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

use crate::aws::{
    AwsClients, Deletion, PartReconciler, PlanInput, Readiness, Service, athena, firehose, flink,
    glue, kinesis, s3,
};
use crate::error::{Error, Reason};
use crate::names::Names;

/// Generates, from the part table below, the [`Part`] enum in reconcile order, the [`Change`]
/// enum (one variant per part, holding that reconciler's call), and `with_reconciler!`, which
/// runs a generic body with `$r` naming the reconciler of a part. `$d` is a `$` passed in, so
/// that the generated macro can have metavariables of its own.
macro_rules! part_table {
    ($d:tt $($(#[$doc:meta])* $part:ident => $reconciler:ty),+ $(,)?) => {
        /// The parts of a pipeline on AWS, in reconcile order. Each becomes a status condition.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub enum Part {
            $($(#[$doc])* $part,)+
        }

        impl Part {
            /// Reconcile order.
            pub const ORDER: &'static [Part] = &[$(Part::$part),+];
        }

        /// One AWS call the operator would make, of any part. Serialises as the service's
        /// change (`{"op": "CreateBucket", "bucket": …}`); pair it with [`Change::service`].
        #[derive(Clone, Debug, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum Change {
            $($part(<$reconciler as PartReconciler>::Change),)+
        }

        $(impl From<<$reconciler as PartReconciler>::Change> for Change {
            fn from(change: <$reconciler as PartReconciler>::Change) -> Change {
                Change::$part(change)
            }
        })+

        impl Change {
            /// The part the call is for.
            pub fn part(&self) -> Part {
                match self {
                    $(Change::$part(_) => Part::$part,)+
                }
            }

            /// True when the resource goes through a transitional state after this call: further
            /// changes to it wait for the next reconcile.
            pub fn needs_settling(&self) -> bool {
                match self {
                    $(Change::$part(change) => <$reconciler as PartReconciler>::needs_settling(change),)+
                }
            }

            /// Makes the call.
            pub async fn apply(&self, clients: &AwsClients) -> Result<(), Error> {
                match self {
                    $(Change::$part(change) => <$reconciler as PartReconciler>::apply(clients, change).await,)+
                }
            }
        }

        impl fmt::Display for Change {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(Change::$part(change) => change.fmt(f),)+
                }
            }
        }

        macro_rules! with_reconciler {
            ($d target:expr, $d r:ident => $d body:expr) => {
                match $d target {
                    $(Part::$part => {
                        type $d r = $reconciler;
                        $d body
                    })+
                }
            };
        }
    };
}

// The part table: every part of a pipeline, in reconcile order, and the reconciler behind it. A
// new part is one module with a `PartReconciler` and one line here.
part_table! {$
    Buckets => s3::Buckets,
    Stream => kinesis::Stream,
    RawArchive => firehose::RawArchive,
    Catalog => glue::Catalog,
    Query => athena::Query,
    /// The Managed Flink application (engine `ManagedFlink`). The Deployment engine's
    /// aggregator is the controller's, not this module's.
    FlinkApplication => flink::FlinkApplication,
}

impl Change {
    /// The AWS service the call goes to.
    pub fn service(&self) -> Service {
        self.part().service()
    }
}

impl Part {
    /// The status condition type of this part.
    pub fn condition_type(self) -> &'static str {
        with_reconciler!(self, R => R::CONDITION_TYPE)
    }

    /// The AWS service the part lives in.
    pub fn service(self) -> Service {
        with_reconciler!(self, R => R::SERVICE)
    }

    /// Parts that must be ready before this one is created or changed.
    pub fn depends_on(self) -> &'static [Part] {
        with_reconciler!(self, R => R::DEPENDS_ON)
    }

    /// True when the spec itself wants the part (as opposed to a part with leftovers to remove).
    fn wanted(self, spec: &ClickHeatmapPipelineSpec) -> bool {
        with_reconciler!(self, R => R::wanted(spec))
    }

    /// Copies the fields of `status.resources` the part is responsible for.
    fn record(self, from: &PipelineResources, into: &mut PipelineResources) {
        with_reconciler!(self, R => R::record(from, into))
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(with_reconciler!(self, R => R::NAME))
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
    /// When nothing can be done before a known time (epoch seconds): reconcile again then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// The part this one waits for (its requeue is that part's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<Part>,
}

impl PartOutcome {
    /// A part in line with the spec.
    pub fn ready(part: Part, message: String, applied: Vec<Change>) -> PartOutcome {
        PartOutcome {
            part,
            ready: true,
            reason: Reason::Ready,
            message,
            applied,
            error: None,
            retry_at: None,
            waits_for: None,
        }
    }

    /// A part still being created or changed (reason `Provisioning`).
    pub fn provisioning(part: Part, message: String, applied: Vec<Change>) -> PartOutcome {
        PartOutcome {
            ready: false,
            reason: Reason::Provisioning,
            ..PartOutcome::ready(part, message, applied)
        }
    }

    /// A part that failed, with the error's reason.
    pub fn failed(part: Part, error: Error, message: String, applied: Vec<Change>) -> PartOutcome {
        PartOutcome {
            ready: false,
            reason: error.reason(),
            error: Some(error),
            ..PartOutcome::ready(part, message, applied)
        }
    }

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

    /// When to reconcile again: soon while something settles, at the time a deferred part can
    /// go on (at most 600 s away; the controller also caps it at its resync interval), later after throttling or a transient failure (the
    /// controller adds its own backoff), slowly after a terminal problem (a person must act; a
    /// spec change triggers a reconcile anyway), and at the resync interval when everything is
    /// ready.
    pub fn requeue_after(&self) -> StdDuration {
        self.requeue_after_at(k8s_openapi::jiff::Timestamp::now().as_second())
    }

    /// [`PipelineOutcome::requeue_after`] at `now` (epoch seconds).
    pub fn requeue_after_at(&self, now: i64) -> StdDuration {
        const SETTLING: u64 = 10;
        const RESYNC: u64 = 600;
        self.parts
            .iter()
            .filter(|part| !part.ready && part.waits_for.is_none())
            .map(|part| match (part.reason, part.retry_at) {
                (Reason::Provisioning, Some(at)) => u64::try_from(at.saturating_sub(now))
                    .map_or(SETTLING, |wait| {
                        wait.saturating_add(1).clamp(SETTLING, RESYNC)
                    }),
                (Reason::Provisioning, None) => SETTLING,
                (Reason::Throttled | Reason::Retrying, _) => 30,
                _ => 300,
            })
            .min()
            .map_or(StdDuration::from_secs(RESYNC), StdDuration::from_secs)
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
    if let Some(shards) = stream.shards
        && stream.mode == StreamMode::Provisioned
        && !(1..=500).contains(&shards)
    {
        return invalid(format!("stream.shards {shards} is outside 1..500"));
    }
    if stream.mode == StreamMode::OnDemand && stream.shards.is_some_and(|shards| shards != 1) {
        return invalid(
            "stream.shards applies only to mode Provisioned: an OnDemand stream scales by itself, leave shards out"
                .to_owned(),
        );
    }
    if let Some(hours) = stream.retention_hours
        && !(24..=8760).contains(&hours)
    {
        return invalid(format!("stream.retentionHours {hours} is outside 24..8760"));
    }
    let archive = &spec.raw_archive;
    if archive.enabled && archive.role_arn.is_none() {
        return invalid(
            "rawArchive.roleArn is required when rawArchive.enabled is true: Firehose needs an IAM role that can read the stream and write to the raw bucket"
                .to_owned(),
        );
    }
    if let Some(size) = archive.buffer_size_mib
        && !(1..=128).contains(&size)
    {
        return invalid(format!("rawArchive.bufferSizeMiB {size} is outside 1..128"));
    }
    if let Some(interval) = archive.buffer_interval_seconds
        && !(0..=900).contains(&interval)
    {
        return invalid(format!(
            "rawArchive.bufferIntervalSeconds {interval} is outside 0..900"
        ));
    }
    let window = spec.aggregation.window.as_millis();
    if window == 0 || 86_400_000 % window != 0 {
        return invalid(format!(
            "aggregation.window {} does not divide a day evenly",
            spec.aggregation.window
        ));
    }
    // Unset, the retention is judged as a new stream's 24 hours (as the CRD's rule does): an
    // adopted stream's own retention is not known before it is read.
    let retention_hours = spec.stream.retention_hours_or_default();
    let retention_ms = u64::from(retention_hours.max(0).unsigned_abs()) * 3_600_000;
    if spec.aggregation.allowed_lateness.as_millis() >= retention_ms {
        return invalid(format!(
            "aggregation.allowedLateness {} must be shorter than stream.retentionHours {retention_hours}{}",
            spec.aggregation.allowed_lateness,
            if spec.stream.retention_hours.is_none() {
                " (unset: a new stream's 24 hours; set it to keep records longer)"
            } else {
                ""
            }
        ));
    }
    if spec.aggregation.engine == AggregationEngine::ManagedFlink {
        let Some(flink) = &spec.aggregation.flink else {
            return invalid(
                "aggregation.flink (codeS3Bucket, codeS3Key, roleArn) is required when aggregation.engine is ManagedFlink"
                    .to_owned(),
            );
        };
        if flink.parallelism.is_some_and(|p| p < 1)
            || flink
                .parallelism_per_kpu
                .is_some_and(|p| !(1..=8).contains(&p))
        {
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

impl Context<'_> {
    fn input(&self) -> PlanInput<'_> {
        PlanInput {
            spec: self.spec,
            names: &self.names,
            previous: &self.previous,
        }
    }
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

/// Plans one part: observes and diffs each resource the spec wants (a failed read or diff is
/// recorded and the next resource is still planned), or, when the spec does not want the part,
/// what an earlier spec left to remove. `None` when there is neither.
async fn plan<R: PartReconciler>(clients: &AwsClients, input: PlanInput<'_>) -> Option<PartPlan> {
    let mut plan = part_plan(R::PART);
    let desired = match R::desired(input) {
        Ok(desired) => desired,
        Err(error) => {
            plan.error = Some(error);
            return Some(plan);
        }
    };
    if desired.is_empty() {
        let leftover = R::leftover(clients, input).await?;
        plan.summary = leftover.summary;
        match leftover.found {
            Ok(Some(removal)) => {
                plan.changes = removal.changes;
                plan.readiness = Readiness::Provisioning(removal.message);
                plan.resources = removal.resources;
            }
            Ok(None) => {}
            Err(error) => plan.error = Some(error),
        }
        return Some(plan);
    }
    for resource in &desired {
        let observed = match R::observe(clients, resource).await {
            Ok(observed) => observed,
            Err(error) => {
                plan.error.get_or_insert(error);
                continue;
            }
        };
        let observed = observed.as_ref();
        match R::diff(resource, observed) {
            Ok(changes) => {
                plan.changes.extend(changes.into_iter().map(Into::into));
                R::resources(resource, observed, &mut plan.resources);
            }
            Err(error) => {
                plan.error.get_or_insert(error);
                R::resources_when_blocked(resource, &mut plan.resources);
            }
        }
        plan.kept.extend(R::kept(resource, observed));
        if plan.readiness == Readiness::Ready {
            plan.readiness = R::readiness(resource, observed);
        }
    }
    plan.summary = R::summary(&desired);
    Some(plan)
}

async fn plan_part(ctx: &Context<'_>, part: Part) -> Option<PartPlan> {
    with_reconciler!(part, R => plan::<R>(ctx.clients, ctx.input()).await)
}

/// Observes every part of the pipeline and returns what [`apply_pipeline`] would change. Makes
/// no write.
pub async fn plan_pipeline(
    clients: &AwsClients,
    pipeline: &ClickHeatmapPipeline,
) -> Result<PipelinePlan, Error> {
    let ctx = context(clients, pipeline).await?;
    let mut parts = Vec::new();
    for &part in Part::ORDER {
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
    change.apply(clients).await
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
        let message = error.to_string();
        return PartOutcome::failed(part, error, message, Vec::new());
    }
    if plan.changes.is_empty() {
        part.record(&plan.resources, resources);
        return match plan.readiness {
            Readiness::Ready => {
                PartOutcome::ready(part, format!("{}{kept}", plan.summary), Vec::new())
            }
            Readiness::Provisioning(message) => {
                PartOutcome::provisioning(part, message, Vec::new())
            }
            Readiness::Deferred { message, until } => PartOutcome {
                retry_at: Some(until),
                ..PartOutcome::provisioning(part, message, Vec::new())
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
                part.record(&plan.resources, resources);
            }
            let message = if applied.is_empty() {
                error.to_string()
            } else {
                format!("{error} (after: {})", describe_changes(&applied))
            };
            return PartOutcome::failed(part, error, message, applied);
        }
        applied.push(change.clone());
        if change.needs_settling() {
            settling = true;
            break;
        }
    }
    part.record(&plan.resources, resources);
    let done = describe_changes(&applied);
    if settling {
        let left = total - applied.len();
        let mut message = format!("applied: {done}; waiting for it to settle");
        if left > 0 {
            message.push_str(&format!(" before {left} more change(s)"));
        }
        PartOutcome::provisioning(part, message, applied)
    } else {
        PartOutcome::ready(part, format!("applied: {done}{kept}"), applied)
    }
}

/// The part `part` must wait for: a dependency that is not ready. A deferred part (a resize
/// waiting for the resharding quota) is usable as it is and holds nothing back.
fn blocker_of(part: Part, outcomes: &[PartOutcome]) -> Option<&PartOutcome> {
    part.depends_on().iter().find_map(|dependency| {
        outcomes
            .iter()
            .find(|o| o.part == *dependency && !o.ready && o.retry_at.is_none())
    })
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
    for &part in Part::ORDER {
        if part.wanted(ctx.spec)
            && let Some(blocker) = blocker_of(part, &outcomes)
        {
            outcomes.push(PartOutcome {
                waits_for: Some(blocker.part),
                ..PartOutcome::provisioning(
                    part,
                    format!("waiting for the {}: {}", blocker.part, blocker.message),
                    Vec::new(),
                )
            });
            continue;
        }
        let Some(plan) = plan_part(&ctx, part).await else {
            // Neither wanted nor anything left to remove.
            part.record(&PipelineResources::default(), &mut resources);
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
    let previous = pipeline
        .status
        .as_ref()
        .map(|status| status.resources.clone())
        .unwrap_or_default();
    let input = PlanInput {
        spec,
        names: &names,
        previous: &previous,
    };
    let mut steps = Vec::new();
    for &part in Part::ORDER.iter().rev() {
        let deletions = with_reconciler!(part, R => R::delete(clients, input, &steps).await?);
        steps.extend(
            deletions
                .into_iter()
                .map(|(resource, deletion)| DeleteStep {
                    part,
                    resource,
                    deletion,
                }),
        );
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
            (Box::new(|s| s.stream.shards = Some(0)), "stream.shards"),
            (
                Box::new(|s| s.stream.retention_hours = Some(12)),
                "retentionHours",
            ),
            (
                Box::new(|s| s.raw_archive.role_arn = None),
                "rawArchive.roleArn",
            ),
            (
                Box::new(|s| s.raw_archive.buffer_size_mib = Some(200)),
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
            ready,
            reason,
            ..PartOutcome::ready(part, format!("{part} message"), Vec::new())
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
    fn a_deferred_part_is_reconciled_again_when_it_can_go_on() {
        const NOW: i64 = 1_750_000_000;
        let mut stream = outcome(Part::Stream, false, Reason::Provisioning);
        stream.retry_at = Some(NOW + 120);
        let mut archive = outcome(Part::RawArchive, false, Reason::Provisioning);
        archive.waits_for = Some(Part::Stream);
        let deferred = PipelineOutcome {
            parts: vec![outcome(Part::Buckets, true, Reason::Ready), stream, archive],
            resources: PipelineResources::default(),
        };
        // Not every 10 s: at the time the quota allows the next call (the part waiting for the
        // stream follows the stream).
        assert_eq!(deferred.requeue_after_at(NOW), StdDuration::from_secs(121));
        // Never later than the resync, never sooner than settling.
        assert_eq!(
            deferred.requeue_after_at(NOW - 86_400),
            StdDuration::from_secs(600)
        );
        assert_eq!(
            deferred.requeue_after_at(NOW + 3_600),
            StdDuration::from_secs(10)
        );
        // A terminal problem of the stream: its dependants do not make it a 10 s loop.
        let conflict = PipelineOutcome {
            parts: vec![
                outcome(Part::Stream, false, Reason::Conflict),
                PartOutcome {
                    waits_for: Some(Part::Stream),
                    ..outcome(Part::RawArchive, false, Reason::Provisioning)
                },
            ],
            resources: PipelineResources::default(),
        };
        assert_eq!(conflict.requeue_after_at(NOW), StdDuration::from_secs(300));
    }

    #[test]
    fn a_deferred_stream_holds_nothing_back() {
        let provisioning = outcome(Part::Stream, false, Reason::Provisioning);
        let blocked = [
            outcome(Part::Buckets, true, Reason::Ready),
            provisioning.clone(),
        ];
        assert_eq!(
            blocker_of(Part::RawArchive, &blocked).map(|o| o.part),
            Some(Part::Stream)
        );
        let deferred = [
            outcome(Part::Buckets, true, Reason::Ready),
            PartOutcome {
                retry_at: Some(1_750_000_000),
                ..provisioning
            },
        ];
        assert_eq!(blocker_of(Part::RawArchive, &deferred), None);
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
