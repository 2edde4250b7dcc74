//! The Kubernetes controller (`clickheatmap-operator run`).
//!
//! A thin loop over the AWS library: every `ClickHeatmapPipeline` is reconciled behind the
//! finalizer `clickheatmap.io/cleanup`.
//!
//! * **Apply**: [`PipelineBackend::apply`] (the AWS side, [`crate::apply_pipeline`]), then the
//!   Kubernetes children by server-side apply (field manager `clickheatmap-operator`, forced):
//!   the aggregator's ConfigMap, ServiceAccount, headless Service and StatefulSet when the engine
//!   is `Deployment` ([`workload`]), and the collector's and viewer's ServiceAccount, Service and
//!   Deployment when the spec enables them ([`frontends`]). Children the spec no longer wants are
//!   found by label and deleted. Last, the status subresource is server-side applied:
//!   `observedGeneration`, `Ready`, one condition per part plus `AggregatorReady` (and
//!   `CollectorReady` / `ViewerReady` when enabled), and `resources`. The spec is never written.
//! * **Cleanup**: [`PipelineBackend::delete`] until it is finished (`deletionPolicy: Retain`
//!   makes no AWS call); Kubernetes children go with their owner references.
//!
//! Retryable errors back off exponentially per object ([`error_policy`]); terminal ones become a
//! condition and a Warning Event and are retried slowly. One bad object never stops the others:
//! every error stays with its object.

pub mod backfill;
pub mod children;
pub mod frontends;
mod health;
pub mod leader;
pub mod metrics;
pub mod rollout;
pub mod stored;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickheatmap_crds::{
    AggregationEngine, ClickHeatmapPipeline, ClickHeatmapPipelineStatus, READY_CONDITION,
};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

use crate::aws::AwsClients;
use crate::error::{Error, Reason};
use crate::pipeline::{DeleteOutcome, PipelineOutcome};
use clickheatmap_crds::backfill_state::BackfillState;
use clickheatmap_crds::progress::ReplicaProgress;
use frontends::Frontend;
use metrics::Metrics;
use stored::StoredPipeline;
use workload::{MANAGER, Workload};

/// The workloads' image when neither the chart nor the spec names one: the operator's own
/// release, pinned by its version (never `:latest`, which would pull on every pod start and
/// could run a different version than the operator).
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/clickheatmap/clickheatmap:",
    env!("CARGO_PKG_VERSION")
);

/// The finalizer that guards AWS cleanup.
pub const FINALIZER: &str = "clickheatmap.io/cleanup";
/// The condition about the aggregator workload in Kubernetes.
pub const AGGREGATOR_CONDITION: &str = "AggregatorReady";
/// The condition about the collector (only while `collector.enabled`).
pub const COLLECTOR_CONDITION: &str = "CollectorReady";
/// The condition about the viewer (only while `viewer.enabled`).
pub const VIEWER_CONDITION: &str = "ViewerReady";

/// The options of the `run` subcommand (the Helm chart's contract, see docs/install.md).
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Serve /metrics, /healthz and /readyz on this port.
    #[arg(long, default_value_t = 8080)]
    pub metrics_port: u16,
    /// Watch only these namespaces (comma separated); absent or empty means all.
    #[arg(long, value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Take the Lease `clickheatmap-operator` in POD_NAMESPACE before reconciling.
    #[arg(long)]
    pub leader_election: bool,
    /// Image of the workloads the operator runs — aggregator, collector and viewer — which holds
    /// their binaries in /usr/local/bin (a pipeline's `image` fields override it).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub aggregator_image: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address the metrics port listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub metrics_bind_address: std::net::IpAddr,
    /// Seconds after which a pipeline that is in sync is reconciled again. Its Kubernetes
    /// children are compared with the watch cache, so a resync that finds nothing changed
    /// writes nothing.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
    /// Seconds between two looks at a pipeline's AWS resources (drift check) while its spec
    /// does not change. A spec change (new generation) or a failure re-plans at once; changes
    /// to the Kubernetes children never re-plan AWS.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub aws_drift_check_seconds: u64,
    /// Reconciles running at once (each may make dozens of AWS calls).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Client-side rate limits of AWS calls per service and region, `SERVICE=CALLS_PER_SECOND`
    /// (comma separated), over the defaults kinesis=5, firehose=5, glue=10, athena=5, s3=50,
    /// sts=10, kinesisanalyticsv2=5 (the AWS control-plane quotas).
    #[arg(long, value_delimiter = ',')]
    pub aws_rate_limit: Vec<String>,
    /// For AWS emulators only (LocalStack, moto, MinIO): the endpoint of every AWS service, for
    /// the operator's own clients and every workload it creates (AWS_ENDPOINT_URL there).
    #[arg(long)]
    pub aws_endpoint_url: Option<String>,
    /// For AWS emulators only: a Secret in each pipeline's namespace holding AWS_ACCESS_KEY_ID
    /// and AWS_SECRET_ACCESS_KEY, given to the workloads (envFrom).
    #[arg(long)]
    pub aws_credentials_secret: Option<String>,
}

pub use clickheatmap_logging::LogFormat;

/// The AWS side of a reconcile, behind a trait so that controller tests can fake it.
pub trait PipelineBackend: Send + Sync + 'static {
    fn apply(
        &self,
        pipeline: &ClickHeatmapPipeline,
    ) -> impl Future<Output = Result<PipelineOutcome, Error>> + Send;
    fn delete(
        &self,
        pipeline: &ClickHeatmapPipeline,
    ) -> impl Future<Output = Result<DeleteOutcome, Error>> + Send;
    /// The aggregator replicas' progress reports below `location` (`s3://bucket/prefix/`).
    fn progress(
        &self,
        pipeline: &ClickHeatmapPipeline,
        location: &str,
    ) -> impl Future<Output = Result<Vec<ReplicaProgress>, Error>> + Send;
    /// A backfill's state object at `location` (`s3://bucket/key`), if it has written one.
    fn backfill_state(
        &self,
        pipeline: &ClickHeatmapPipeline,
        location: &str,
    ) -> impl Future<Output = Result<Option<BackfillState>, Error>> + Send;
}

/// The real backend: one [`AwsClients`] per region, created on first use, each service
/// rate-limited per region and every call counted (for `/metrics`).
#[derive(Default)]
pub struct AwsBackend {
    clients: AsyncMutex<BTreeMap<String, AwsClients>>,
    options: crate::aws::ClientOptions,
}

impl AwsBackend {
    pub fn new(options: crate::aws::ClientOptions) -> AwsBackend {
        AwsBackend {
            clients: AsyncMutex::new(BTreeMap::new()),
            options,
        }
    }

    async fn clients(&self, region: &str) -> Result<AwsClients, Error> {
        let mut clients = self.clients.lock().await;
        if let Some(existing) = clients.get(region) {
            return Ok(existing.clone());
        }
        let created = AwsClients::from_env(region, self.options.clone()).await?;
        clients.insert(region.to_owned(), created.clone());
        Ok(created)
    }
}

impl PipelineBackend for AwsBackend {
    async fn apply(&self, pipeline: &ClickHeatmapPipeline) -> Result<PipelineOutcome, Error> {
        let clients = self.clients(&pipeline.spec.region).await?;
        crate::pipeline::apply_pipeline(&clients, pipeline).await
    }

    async fn delete(&self, pipeline: &ClickHeatmapPipeline) -> Result<DeleteOutcome, Error> {
        let clients = self.clients(&pipeline.spec.region).await?;
        crate::pipeline::delete_pipeline(&clients, pipeline).await
    }

    async fn progress(
        &self,
        pipeline: &ClickHeatmapPipeline,
        location: &str,
    ) -> Result<Vec<ReplicaProgress>, Error> {
        let clients = self.clients(&pipeline.spec.region).await?;
        crate::dataplane::read_reports(&clients.s3, location).await
    }

    async fn backfill_state(
        &self,
        pipeline: &ClickHeatmapPipeline,
        location: &str,
    ) -> Result<Option<BackfillState>, Error> {
        let clients = self.clients(&pipeline.spec.region).await?;
        crate::dataplane::read_backfill_state(&clients.s3, location).await
    }
}

/// What the controllers of one process share (one controller per watched namespace, each with
/// its own watches and [`Context`]).
struct SharedContext {
    client: Client,
    backend: Arc<AwsBackend>,
    aggregator_image: String,
    emulator: workload::EmulatorAws,
    metrics: Arc<Metrics>,
    resync: Duration,
    aws_drift_check: Duration,
}

impl SharedContext {
    fn for_watch(&self, stores: children::Stores) -> Context<Arc<AwsBackend>> {
        Context::new(
            self.client.clone(),
            self.backend.clone(),
            self.aggregator_image.clone(),
            self.metrics.clone(),
        )
        .with_intervals(self.resync, self.aws_drift_check)
        .with_emulator(self.emulator.clone())
        .with_child_stores(stores)
    }
}

impl<B: PipelineBackend> PipelineBackend for Arc<B> {
    fn apply(
        &self,
        pipeline: &ClickHeatmapPipeline,
    ) -> impl Future<Output = Result<PipelineOutcome, Error>> + Send {
        self.as_ref().apply(pipeline)
    }

    fn delete(
        &self,
        pipeline: &ClickHeatmapPipeline,
    ) -> impl Future<Output = Result<DeleteOutcome, Error>> + Send {
        self.as_ref().delete(pipeline)
    }

    fn progress(
        &self,
        pipeline: &ClickHeatmapPipeline,
        location: &str,
    ) -> impl Future<Output = Result<Vec<ReplicaProgress>, Error>> + Send {
        self.as_ref().progress(pipeline, location)
    }

    fn backfill_state(
        &self,
        pipeline: &ClickHeatmapPipeline,
        location: &str,
    ) -> impl Future<Output = Result<Option<BackfillState>, Error>> + Send {
        self.as_ref().backfill_state(pipeline, location)
    }
}

/// What the controller fails with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// An AWS-side (or spec) problem, classified by [`Error`].
    #[error(transparent)]
    Pipeline(#[from] Error),
    /// A Kubernetes API call failed (retryable).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The AWS resources are still being deleted; the finalizer stays.
    #[error("deletion in progress: {0}")]
    DeletionInProgress(String),
    /// The finalizer machinery failed (adding or removing it, or the wrapped reconcile).
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<ControllerError>>),
    /// The object cannot be reconciled at all (e.g. no namespace).
    #[error("malformed object: {0}")]
    Malformed(String),
    /// Startup or serving failed.
    #[error("{0}")]
    Startup(String),
}

impl ControllerError {
    /// The innermost error (through the finalizer's wrapping).
    pub fn inner(&self) -> &ControllerError {
        match self {
            ControllerError::Finalizer(boxed) => match boxed.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.inner()
                }
                _ => self,
            },
            other => other,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self.inner() {
            ControllerError::Pipeline(error) => error.is_retryable(),
            ControllerError::Malformed(_) => false,
            _ => true,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self.inner() {
            ControllerError::Pipeline(error) => error.metric_label(),
            ControllerError::Kube(_) => "kubernetes",
            ControllerError::DeletionInProgress(_) => "deletion_in_progress",
            ControllerError::Finalizer(_) => "finalizer",
            ControllerError::Malformed(_) => "malformed",
            ControllerError::Startup(_) => "startup",
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context<B> {
    pub client: Client,
    pub backend: B,
    pub recorder: Recorder,
    pub aggregator_image: String,
    /// An AWS emulator the workloads are pointed at (empty against AWS).
    pub emulator: workload::EmulatorAws,
    pub metrics: Arc<Metrics>,
    /// Consecutive retryable failures per object (`namespace/name`), for the backoff.
    failures: Mutex<BTreeMap<String, u32>>,
    /// How often a pipeline in sync is reconciled again.
    pub resync: Duration,
    /// How often the AWS side of an unchanged pipeline is re-observed.
    pub aws_drift_check: Duration,
    /// The last AWS outcome per object, reused while the generation stays and no drift check
    /// is due.
    aws_memo: Mutex<BTreeMap<String, AwsMemo>>,
    /// The children as the watches see them, to skip applies that would change nothing.
    children: Option<children::Stores>,
    /// Per child (`kind/namespace/name`), a hash of what was last applied.
    applied: Mutex<BTreeMap<String, u64>>,
    /// The last data-plane read and judgement per object.
    health_memo: Mutex<BTreeMap<String, health::HealthMemo>>,
}

/// An AWS outcome worth reusing.
struct AwsMemo {
    generation: Option<i64>,
    outcome: PipelineOutcome,
    planned_at: Instant,
}

impl<B: PipelineBackend> Context<B> {
    pub fn new(
        client: Client,
        backend: B,
        aggregator_image: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            backend,
            aggregator_image,
            emulator: workload::EmulatorAws::default(),
            metrics,
            failures: Mutex::new(BTreeMap::new()),
            resync: Duration::from_secs(300),
            aws_drift_check: Duration::from_secs(600),
            aws_memo: Mutex::new(BTreeMap::new()),
            children: None,
            applied: Mutex::new(BTreeMap::new()),
            health_memo: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the resync and AWS drift-check intervals.
    pub fn with_intervals(mut self, resync: Duration, aws_drift_check: Duration) -> Self {
        self.resync = resync;
        self.aws_drift_check = aws_drift_check;
        self
    }

    /// Points the workloads at an AWS emulator.
    pub fn with_emulator(mut self, emulator: workload::EmulatorAws) -> Self {
        self.emulator = emulator;
        self
    }

    /// Lets applies of unchanged children be skipped, comparing with these caches.
    pub fn with_child_stores(mut self, stores: children::Stores) -> Self {
        self.children = Some(stores);
        self
    }

    /// The last AWS outcome of `pipeline` if it can stand for a new plan: same generation,
    /// everything was ready, and the drift check is not due; with the time left until it is.
    fn reusable_outcome(
        &self,
        pipeline: &ClickHeatmapPipeline,
    ) -> Option<(PipelineOutcome, Duration)> {
        let memo = self.aws_memo.lock().ok()?;
        let memo = memo.get(&object_key(pipeline))?;
        let age = memo.planned_at.elapsed();
        (memo.generation == pipeline.metadata.generation && age < self.aws_drift_check)
            .then(|| (memo.outcome.clone(), self.aws_drift_check - age))
    }

    fn remember_outcome(&self, pipeline: &ClickHeatmapPipeline, outcome: &PipelineOutcome) {
        if let Ok(mut memo) = self.aws_memo.lock() {
            let key = object_key(pipeline);
            if outcome.is_ready() {
                memo.insert(
                    key,
                    AwsMemo {
                        generation: pipeline.metadata.generation,
                        outcome: outcome.clone(),
                        planned_at: Instant::now(),
                    },
                );
            } else {
                memo.remove(&key);
            }
        }
    }

    /// Drops what is remembered of `pipeline` (deleted, or its AWS side failed).
    fn forget(&self, pipeline: &ClickHeatmapPipeline) {
        let key = object_key(pipeline);
        if let Ok(mut memo) = self.aws_memo.lock() {
            memo.remove(&key);
        }
        if let Ok(mut memo) = self.health_memo.lock() {
            memo.remove(&key);
        }
        if let Ok(mut applied) = self.applied.lock() {
            let namespace = pipeline.namespace().unwrap_or_default();
            let name = pipeline.name_any();
            applied.retain(|child, _| !children::belongs_to(child, &namespace, &name));
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        match self.failures.lock() {
            Ok(mut failures) => {
                let count = failures.entry(key.to_owned()).or_insert(0);
                *count = count.saturating_add(1);
                *count
            }
            Err(_) => 1,
        }
    }

    fn reset_failures(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

fn object_key(pipeline: &ClickHeatmapPipeline) -> String {
    format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    )
}

/// Exponential backoff: 5 s, 10 s, 20 s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

/// How long to wait after a terminal problem (a person must act; a spec change reconciles anyway).
pub const TERMINAL_REQUEUE: Duration = Duration::from_secs(300);

/// One reconcile of a stored object: a pipeline that fits the type is reconciled; one that does
/// not gets a condition and an Event, and waits for a change.
pub async fn reconcile_stored<B: PipelineBackend>(
    stored: Arc<StoredPipeline>,
    ctx: Arc<Context<B>>,
) -> Result<Action, ControllerError> {
    match &stored.parsed {
        Ok(pipeline) => reconcile(pipeline.clone(), ctx).await,
        Err(reason) => {
            report_malformed(&stored, reason, &ctx).await?;
            Ok(Action::await_change())
        }
    }
}

/// The error policy of [`reconcile_stored`].
pub fn error_policy_stored<B: PipelineBackend>(
    stored: Arc<StoredPipeline>,
    error: &ControllerError,
    ctx: Arc<Context<B>>,
) -> Action {
    match &stored.parsed {
        Ok(pipeline) => error_policy(pipeline.clone(), error, ctx),
        Err(_) => {
            ctx.metrics.observe_error(error.metric_label());
            warn!(object = ?stored.metadata.name, %error, "cannot report a malformed object");
            Action::requeue(backoff(3))
        }
    }
}

/// Writes `Ready=False` (InvalidSpec) and a Warning Event for an object that does not fit the
/// type, once per distinct problem.
async fn report_malformed<B>(
    stored: &StoredPipeline,
    reason: &str,
    ctx: &Context<B>,
) -> Result<(), ControllerError> {
    let message: String = format!(
        "the stored object does not fit ClickHeatmapPipeline v1alpha1: {reason}. Fix the spec; \
         until then the operator neither changes nor deletes its AWS resources (to delete the \
         object anyway and leave them, remove the finalizer {FINALIZER})"
    )
    .chars()
    .take(2000)
    .collect();
    let invalid = Reason::InvalidSpec.as_str();
    if stored.says(invalid, &message) {
        return Ok(());
    }
    let namespace = stored
        .namespace()
        .ok_or_else(|| ControllerError::Malformed("a pipeline without a namespace".to_owned()))?;
    let name = stored.name_any();
    warn!(pipeline = %format!("{namespace}/{name}"), %reason, "malformed object");
    let api: Api<StoredPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": "clickheatmap.io/v1alpha1",
        "kind": "ClickHeatmapPipeline",
        "status": {
            "observedGeneration": stored.metadata.generation,
            "conditions": [{
                "type": READY_CONDITION,
                "status": "False",
                "reason": invalid,
                "message": message,
                "observedGeneration": stored.metadata.generation,
                "lastTransitionTime": Time(Timestamp::now()),
            }],
        },
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    publish(ctx, &stored.object_ref(&()), invalid, &message).await;
    Ok(())
}

/// One reconcile: the finalizer decides between apply and cleanup.
pub async fn reconcile<B: PipelineBackend>(
    pipeline: Arc<ClickHeatmapPipeline>,
    ctx: Arc<Context<B>>,
) -> Result<Action, ControllerError> {
    let started = Instant::now();
    let key = object_key(&pipeline);
    let result = reconcile_inner(pipeline, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.reset_failures(&key);
    }
    result
}

async fn reconcile_inner<B: PipelineBackend>(
    pipeline: Arc<ClickHeatmapPipeline>,
    ctx: &Context<B>,
) -> Result<Action, ControllerError> {
    let namespace = pipeline
        .namespace()
        .ok_or_else(|| ControllerError::Malformed("a pipeline without a namespace".to_owned()))?;
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            FinalizerEvent::Apply(pipeline) => apply(&api, &pipeline, ctx).await,
            FinalizerEvent::Cleanup(pipeline) => cleanup(&pipeline, ctx).await,
        }
    })
    .await
    .map_err(|error| ControllerError::Finalizer(Box::new(error)))
}

/// A condition to write: type, ready, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: String,
    pub ready: bool,
    /// Neither True nor False (`ready` is then false): the data plane cannot be judged yet.
    pub unknown: bool,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    fn new(type_: &str, ready: bool, reason: Reason, message: impl Into<String>) -> Self {
        DesiredCondition {
            unknown: false,
            type_: type_.to_owned(),
            ready,
            reason: reason.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// The status to write: conditions in the given order, `lastTransitionTime` kept from the
/// previous status when a condition's status did not change.
pub fn build_status(
    previous: Option<&ClickHeatmapPipelineStatus>,
    generation: Option<i64>,
    desired: &[DesiredCondition],
    resources: clickheatmap_crds::PipelineResources,
    now: Timestamp,
) -> ClickHeatmapPipelineStatus {
    let conditions = desired
        .iter()
        .map(|wanted| {
            let status = if wanted.unknown {
                "Unknown"
            } else if wanted.ready {
                "True"
            } else {
                "False"
            };
            let last_transition_time = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == wanted.type_))
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: wanted.type_.clone(),
                status: status.to_owned(),
                reason: wanted.reason.clone(),
                message: wanted.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    ClickHeatmapPipelineStatus {
        observed_generation: generation,
        conditions,
        resources,
        data_plane: previous.and_then(|p| p.data_plane.clone()),
    }
}

/// The conditions of an apply: `Ready` first, then every AWS part, then the Kubernetes
/// workloads (aggregator, collector, viewer).
pub fn conditions_of(
    outcome: &PipelineOutcome,
    workloads: &[DesiredCondition],
) -> Vec<DesiredCondition> {
    let summary = outcome.ready_summary();
    let failed_workload = workloads.iter().find(|condition| !condition.ready);
    let ready = if !summary.ready {
        DesiredCondition::new(READY_CONDITION, false, summary.reason, summary.message)
    } else if let Some(failed) = failed_workload {
        DesiredCondition {
            unknown: false,
            type_: READY_CONDITION.to_owned(),
            ready: false,
            reason: failed.reason.clone(),
            message: format!("{}: {}", failed.type_, failed.message),
        }
    } else {
        DesiredCondition::new(READY_CONDITION, true, Reason::Ready, summary.message)
    };
    let mut conditions = vec![ready];
    conditions.extend(outcome.parts.iter().map(|part| DesiredCondition {
        unknown: false,
        type_: part.condition_type().to_owned(),
        ready: part.ready,
        reason: part.reason.as_str().to_owned(),
        message: part.message.clone(),
    }));
    conditions.extend(workloads.iter().cloned());
    conditions
}

async fn apply<B: PipelineBackend>(
    api: &Api<ClickHeatmapPipeline>,
    pipeline: &ClickHeatmapPipeline,
    ctx: &Context<B>,
) -> Result<Action, ControllerError> {
    let name = pipeline.name_any();
    let previous = pipeline.status.as_ref();
    let generation = pipeline.metadata.generation;
    let reused = ctx.reusable_outcome(pipeline);
    ctx.metrics.observe_aws_plan(reused.is_none());
    let (outcome, drift_check_due) = match reused {
        Some(reused) => reused,
        None => match ctx.backend.apply(pipeline).await {
            Ok(outcome) => {
                // Throttling is AWS asking to slow down, not a problem of the pipeline: back off
                // (the error policy's exponential delay) and leave the status as it was.
                if let Some(throttled) = outcome
                    .parts
                    .iter()
                    .find(|part| part.reason == Reason::Throttled)
                {
                    ctx.forget(pipeline);
                    let error = throttled.error.clone().unwrap_or_else(|| Error::Throttled {
                        operation: throttled.part.to_string(),
                        message: throttled.message.clone(),
                    });
                    return Err(error.into());
                }
                ctx.remember_outcome(pipeline, &outcome);
                (outcome, ctx.aws_drift_check)
            }
            Err(error) if error.is_retryable() => {
                ctx.forget(pipeline);
                return Err(error.into());
            }
            Err(error) => {
                ctx.forget(pipeline);
                // Nothing could be planned: one terminal condition, an Event, a slow requeue.
                warn!(pipeline = %object_key(pipeline), %error, "terminal error");
                let reason = error.reason();
                let conditions = [DesiredCondition::new(
                    READY_CONDITION,
                    false,
                    reason,
                    error.to_string(),
                )];
                let status = build_status(
                    previous,
                    generation,
                    &conditions,
                    previous.map(|p| p.resources.clone()).unwrap_or_default(),
                    Timestamp::now(),
                );
                patch_status(api, &name, previous, &status).await?;
                publish(
                    ctx,
                    &pipeline.object_ref(&()),
                    reason.as_str(),
                    &error.to_string(),
                )
                .await;
                return Ok(Action::requeue(TERMINAL_REQUEUE));
            }
        },
    };

    let workloads = reconcile_children(pipeline, ctx).await?;
    let data_plane = health::data_plane(pipeline, ctx, &outcome, &workloads).await;
    let mut conditions = conditions_of(&outcome, &workloads);
    conditions.extend(data_plane.conditions);
    let mut resources = outcome.resources.clone();
    let ready = |type_: &str| workloads.iter().any(|c| c.type_ == type_ && c.ready);
    // `aggregatorDeployment` names the aggregator workload (a StatefulSet since the controller
    // exists; the field name predates it).
    resources.aggregator_deployment = (pipeline.spec.aggregation.engine
        == AggregationEngine::Deployment
        && ready(AGGREGATOR_CONDITION))
    .then(|| workload::aggregator_name(&name));
    resources.collector_service = (pipeline.spec.collector.enabled && ready(COLLECTOR_CONDITION))
        .then(|| format!("{name}-{}", frontends::COLLECTOR));
    resources.viewer_service = (pipeline.spec.viewer.enabled && ready(VIEWER_CONDITION))
        .then(|| format!("{name}-{}", frontends::VIEWER));
    let mut status = build_status(
        previous,
        generation,
        &conditions,
        resources,
        Timestamp::now(),
    );
    if let Some(observed) = data_plane.status {
        status.data_plane = Some(observed);
    }
    patch_status(api, &name, previous, &status).await?;
    for condition in conditions.iter().skip(1) {
        let terminal = !condition.ready
            && [
                Reason::InvalidSpec,
                Reason::Conflict,
                Reason::AccessDenied,
                Reason::NotFound,
            ]
            .iter()
            .any(|r| r.as_str() == condition.reason);
        // A stall is announced once, when it starts (its message counts the minutes).
        let stalled = condition.type_ == crate::dataplane::DATA_FLOWING_CONDITION
            && condition.reason == "Stalled"
            && !previous
                .into_iter()
                .flat_map(|p| &p.conditions)
                .any(|c| c.type_ == condition.type_ && c.reason == "Stalled");
        if terminal || stalled {
            let note = format!("{}: {}", condition.type_, condition.message);
            publish(ctx, &pipeline.object_ref(&()), &condition.reason, &note).await;
        }
    }
    let mut requeue = if outcome.is_ready() {
        // In sync: look again at the resync cadence, and at the latest when the AWS drift
        // check is due.
        ctx.resync.min(drift_check_due)
    } else {
        outcome.requeue_after().min(ctx.resync)
    };
    if workloads.iter().any(|condition| !condition.ready) {
        requeue = requeue.max(TERMINAL_REQUEUE);
    } else if let Some(recheck) = data_plane.recheck {
        // The data plane is read every `health.checkInterval`.
        requeue = requeue.min(recheck);
    }
    info!(pipeline = %object_key(pipeline), ready = outcome.is_ready(), ?requeue, "reconciled");
    Ok(Action::requeue(requeue))
}

async fn cleanup<B: PipelineBackend>(
    pipeline: &ClickHeatmapPipeline,
    ctx: &Context<B>,
) -> Result<Action, ControllerError> {
    ctx.forget(pipeline);
    ctx.metrics.forget_data_plane(&object_key(pipeline));
    let outcome = match ctx.backend.delete(pipeline).await {
        Ok(outcome) => outcome,
        Err(error) => {
            deletion_status(
                pipeline,
                ctx,
                error.reason().as_str(),
                &format!("the AWS resources cannot be deleted yet: {error}"),
            )
            .await;
            if !error.is_retryable() {
                publish(
                    ctx,
                    &pipeline.object_ref(&()),
                    error.reason().as_str(),
                    &error.to_string(),
                )
                .await;
            }
            return Err(error.into());
        }
    };
    if outcome.is_finished() {
        info!(pipeline = %object_key(pipeline), policy = ?outcome.policy, "cleanup finished");
        Ok(Action::await_change())
    } else {
        let waiting: Vec<String> = outcome
            .steps
            .iter()
            .filter(|step| !step.deletion.is_finished())
            .map(|step| step.resource.clone())
            .collect();
        deletion_status(
            pipeline,
            ctx,
            DELETING_REASON,
            &format!(
                "deleting the AWS resources: waiting for {}",
                waiting.join(", ")
            ),
        )
        .await;
        Err(ControllerError::DeletionInProgress(waiting.join(", ")))
    }
}

/// The `Ready` reason while the finalizer waits for AWS deletion to finish.
pub const DELETING_REASON: &str = "Deleting";

/// Says in the status why a deleted pipeline is still there (the finalizer stays until its AWS
/// resources are gone). Best effort: the object may be gone by now.
async fn deletion_status<B>(
    pipeline: &ClickHeatmapPipeline,
    ctx: &Context<B>,
    reason: &str,
    message: &str,
) {
    let Some(namespace) = pipeline.namespace() else {
        return;
    };
    let api: Api<ClickHeatmapPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = pipeline.status.as_ref();
    let condition = DesiredCondition {
        unknown: false,
        type_: READY_CONDITION.to_owned(),
        ready: false,
        reason: reason.to_owned(),
        message: message.to_owned(),
    };
    let status = build_status(
        previous,
        pipeline.metadata.generation,
        &[condition],
        previous.map(|p| p.resources.clone()).unwrap_or_default(),
        Timestamp::now(),
    );
    if let Err(error) = patch_status(&api, &pipeline.name_any(), previous, &status).await {
        info!(pipeline = %object_key(pipeline), %error, "cannot write the deletion status");
    }
}

/// Server-side applies the status subresource (never the spec), unless it already says that.
async fn patch_status(
    api: &Api<ClickHeatmapPipeline>,
    name: &str,
    previous: Option<&ClickHeatmapPipelineStatus>,
    status: &ClickHeatmapPipelineStatus,
) -> Result<(), ControllerError> {
    if previous.is_some_and(|previous| children::same_json(previous, status)) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "clickheatmap.io/v1alpha1",
        "kind": "ClickHeatmapPipeline",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish<B>(
    ctx: &Context<B>,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    note: &str,
) {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, object).await {
        warn!(%error, "cannot publish an event");
    }
}

/// Server-side applies a child, unless the watch cache shows that it already holds exactly
/// what the operator last applied (so a resync of a pipeline in sync writes nothing).
async fn apply_child<B, K>(
    ctx: &Context<B>,
    namespace: &str,
    object: &K,
) -> Result<K, ControllerError>
where
    K: children::Child,
{
    let client = &ctx.client;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object
        .meta()
        .name
        .clone()
        .ok_or_else(|| ControllerError::Malformed("a child without a name".to_owned()))?;
    let mut value = serde_json::to_value(object)
        .map_err(|error| Error::internal(format!("serialising {name}: {error}")))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), K::api_version(&()).into());
        map.insert("kind".to_owned(), K::kind(&()).into());
    }
    let key = children::key::<K>(namespace, &name);
    let hash = children::hash_of(&value);
    let applied_before = ctx
        .applied
        .lock()
        .ok()
        .and_then(|applied| applied.get(&key).copied());
    // Never take over an object of the same name that is not the pipeline's. Objects the
    // operator labelled are in the watch cache; any other is looked up once, before the first
    // apply of this process (a later apply finds it in the cache, labelled).
    if let Some(stores) = &ctx.children {
        let cached = K::store(stores).get(&ObjectRef::new(&name).within(namespace));
        let existing = match cached {
            Some(cached) => Some(cached.meta().clone()),
            None if applied_before.is_none() => {
                api.get_opt(&name).await?.map(|found| found.meta().clone())
            }
            None => None,
        };
        if let Some(existing) = existing {
            children::check_takeover::<K>(&existing, object.meta(), namespace)?;
        }
    }
    if applied_before == Some(hash)
        && let Some(live) = ctx
            .children
            .as_ref()
            .and_then(|stores| children::holding(K::store(stores), namespace, &name, &value))
    {
        ctx.metrics.observe_child_apply(false);
        return Ok(live.as_ref().clone());
    }
    let live = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?;
    ctx.metrics.observe_child_apply(true);
    if let Ok(mut applied) = ctx.applied.lock() {
        applied.insert(key, hash);
    }
    Ok(live)
}

/// The cached pods of one component of a pipeline (none without watch caches).
fn pods_of<B>(ctx: &Context<B>, namespace: &str, pipeline: &str, component: &str) -> Vec<Arc<Pod>> {
    ctx.children
        .as_ref()
        .map(|stores| {
            children::pods_matching(
                stores,
                namespace,
                &workload::selector_labels(pipeline, component),
            )
        })
        .unwrap_or_default()
}

/// The condition of a component from its live workload and pods.
fn rollout_condition<B>(
    ctx: &Context<B>,
    namespace: &str,
    pipeline: &str,
    (type_, component): (&str, &str),
    state: &rollout::RolloutState,
    paused_note: Option<&str>,
) -> DesiredCondition {
    let pods = pods_of(ctx, namespace, pipeline, component);
    let pods: Vec<&Pod> = pods.iter().map(Arc::as_ref).collect();
    rollout::condition(type_, state, &pods, paused_note)
}

/// Deletes the pipeline's children of kind `K` (found by label) whose names are not in `keep`.
///
/// With the watch caches, the children are looked up there: a LIST per kind and reconcile would
/// make every resync cost five API requests, each scanning every child in the namespace — with a
/// thousand pipelines the API server spends its time on those scans.
async fn delete_orphans<B, K: children::Child>(
    ctx: &Context<B>,
    namespace: &str,
    pipeline_name: &str,
    keep: &BTreeSet<String>,
) -> Result<usize, ControllerError> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let names: Vec<String> = match &ctx.children {
        Some(stores) => K::store(stores)
            .state()
            .iter()
            .filter(|child| {
                child.namespace().as_deref() == Some(namespace)
                    && child
                        .labels()
                        .get(workload::PIPELINE_LABEL)
                        .map(String::as_str)
                        == Some(pipeline_name)
            })
            .map(|child| child.name_any())
            .collect(),
        None => {
            let params = ListParams::default().labels(&workload::children_selector(pipeline_name));
            api.list(&params)
                .await?
                .into_iter()
                .map(|child| child.name_any())
                .collect()
        }
    };
    let mut deleted = 0;
    for name in names {
        if keep.contains(&name) {
            continue;
        }
        info!(kind = %K::kind(&()), %name, "deleting a child the pipeline no longer wants");
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(deleted)
}

/// The names to keep, per kind, while deleting children the pipeline no longer wants.
#[derive(Default)]
struct Keep {
    stateful_sets: BTreeSet<String>,
    deployments: BTreeSet<String>,
    services: BTreeSet<String>,
    config_maps: BTreeSet<String>,
    service_accounts: BTreeSet<String>,
}

impl Keep {
    /// Keeps every object a component may have, e.g. when its spec is invalid: what runs stays
    /// until the spec is fixed.
    fn component(&mut self, name: &str) {
        for set in [
            &mut self.stateful_sets,
            &mut self.deployments,
            &mut self.services,
            &mut self.config_maps,
            &mut self.service_accounts,
        ] {
            set.insert(name.to_owned());
        }
    }
}

fn name_of<K: Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

/// The condition of a component one of whose objects could not be applied because its name is
/// taken by an object the pipeline does not own (terminal: `Conflict`); any other error fails
/// the reconcile (and is retried).
fn refused(type_: &str, error: ControllerError) -> Result<DesiredCondition, ControllerError> {
    match error {
        ControllerError::Pipeline(error @ Error::Conflict(_)) => invalid(type_, error),
        other => Err(other),
    }
}

/// The condition of a component whose desired state could not be built.
fn invalid(type_: &str, error: Error) -> Result<DesiredCondition, ControllerError> {
    if error.is_retryable() {
        return Err(error.into());
    }
    Ok(DesiredCondition::new(
        type_,
        false,
        error.reason(),
        error.to_string(),
    ))
}

/// Applies the Kubernetes children the spec wants — aggregator, collector, viewer — and deletes
/// the ones it no longer wants; one condition per component.
async fn reconcile_children<B: PipelineBackend>(
    pipeline: &ClickHeatmapPipeline,
    ctx: &Context<B>,
) -> Result<Vec<DesiredCondition>, ControllerError> {
    let namespace = pipeline
        .namespace()
        .ok_or_else(|| ControllerError::Malformed("a pipeline without a namespace".to_owned()))?;
    let name = pipeline.name_any();
    let image = &ctx.aggregator_image;
    let mut keep = Keep::default();
    let mut conditions = Vec::new();

    let aggregator = match workload::desired(pipeline, image) {
        Ok(Some(Workload {
            config_map,
            service_account,
            service,
            mut stateful_set,
        })) => {
            if let Some(spec) = stateful_set.spec.as_mut() {
                // The spec's settings last: an extra variable replaces the operator's.
                if let Some(pod) = spec.template.spec.as_mut() {
                    ctx.emulator.apply_to(pod);
                }
                workload::apply_workload_settings(&mut spec.template, &pipeline.spec.workloads);
            }
            let applied = async {
                apply_child(ctx, &namespace, &config_map).await?;
                apply_child(ctx, &namespace, &service_account).await?;
                apply_child(ctx, &namespace, &service).await?;
                apply_child(ctx, &namespace, &stateful_set).await
            }
            .await;
            keep.config_maps.insert(name_of(&config_map));
            keep.service_accounts.insert(name_of(&service_account));
            keep.services.insert(name_of(&service));
            keep.stateful_sets.insert(name_of(&stateful_set));
            match applied {
                Ok(live) => rollout_condition(
                    ctx,
                    &namespace,
                    &name,
                    (AGGREGATOR_CONDITION, workload::AGGREGATOR),
                    &rollout::RolloutState::of_stateful_set(&live),
                    Some(workload::PAUSED_NOTE),
                ),
                Err(error) => refused(AGGREGATOR_CONDITION, error)?,
            }
        }
        Ok(None) => DesiredCondition::new(
            AGGREGATOR_CONDITION,
            true,
            Reason::Ready,
            format!(
                "engine {:?} runs no aggregator in Kubernetes",
                pipeline.spec.aggregation.engine
            ),
        ),
        Err(error) => {
            keep.component(&workload::aggregator_name(&name));
            invalid(AGGREGATOR_CONDITION, error)?
        }
    };
    conditions.push(aggregator);

    let components = [
        (
            COLLECTOR_CONDITION,
            frontends::COLLECTOR,
            frontends::desired_collector(pipeline, image),
        ),
        (
            VIEWER_CONDITION,
            frontends::VIEWER,
            frontends::desired_viewer(pipeline, image),
        ),
    ];
    for (type_, component, desired) in components {
        match desired {
            Ok(Some(Frontend {
                service_account,
                service,
                mut deployment,
            })) => {
                if let Some(spec) = deployment.spec.as_mut() {
                    if let Some(pod) = spec.template.spec.as_mut() {
                        ctx.emulator.apply_to(pod);
                    }
                    workload::apply_workload_settings(&mut spec.template, &pipeline.spec.workloads);
                }
                let applied = async {
                    apply_child(ctx, &namespace, &service_account).await?;
                    apply_child(ctx, &namespace, &service).await?;
                    apply_child(ctx, &namespace, &deployment).await
                }
                .await;
                keep.service_accounts.insert(name_of(&service_account));
                keep.services.insert(name_of(&service));
                keep.deployments.insert(name_of(&deployment));
                conditions.push(match applied {
                    Ok(live) => rollout_condition(
                        ctx,
                        &namespace,
                        &name,
                        (type_, component),
                        &rollout::RolloutState::of_deployment(&live),
                        None,
                    ),
                    Err(error) => refused(type_, error)?,
                });
            }
            Ok(None) => {}
            Err(error) => {
                keep.component(&format!("{name}-{component}"));
                conditions.push(invalid(type_, error)?);
            }
        }
    }

    let mut deleted = 0;
    deleted +=
        delete_orphans::<_, StatefulSet>(ctx, &namespace, &name, &keep.stateful_sets).await?;
    deleted += delete_orphans::<_, Deployment>(ctx, &namespace, &name, &keep.deployments).await?;
    deleted += delete_orphans::<_, Service>(ctx, &namespace, &name, &keep.services).await?;
    deleted += delete_orphans::<_, ConfigMap>(ctx, &namespace, &name, &keep.config_maps).await?;
    deleted +=
        delete_orphans::<_, ServiceAccount>(ctx, &namespace, &name, &keep.service_accounts).await?;
    if deleted > 0 {
        info!(pipeline = %object_key(pipeline), deleted, "removed children the spec no longer wants");
    }
    Ok(conditions)
}

/// What to do after a failed reconcile.
pub fn error_policy<B: PipelineBackend>(
    pipeline: Arc<ClickHeatmapPipeline>,
    error: &ControllerError,
    ctx: Arc<Context<B>>,
) -> Action {
    ctx.metrics.observe_error(error.metric_label());
    let key = object_key(&pipeline);
    if let ControllerError::DeletionInProgress(_) = error.inner() {
        return Action::requeue(Duration::from_secs(10));
    }
    if error.is_retryable() {
        let failures = ctx.record_failure(&key);
        let delay = backoff(failures);
        warn!(pipeline = %key, %error, ?delay, "reconcile failed; retrying");
        Action::requeue(delay)
    } else {
        warn!(pipeline = %key, %error, "reconcile failed (terminal)");
        Action::requeue(TERMINAL_REQUEUE)
    }
}

/// Runs one controller over `api` until the stream ends.
async fn run_controller(
    pipelines: Api<StoredPipeline>,
    client: Client,
    namespace: Option<String>,
    ctx: Arc<SharedContext>,
    concurrency: u16,
) -> Ended {
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // A child changed or deleted by hand is put back at once; the caches of these watches let a
    // resync skip applies that would change nothing.
    let (stateful_sets, stateful_set_events) =
        children::reflect(scoped::<StatefulSet>(&client, &namespace), owned.clone());
    let (deployments, deployment_events) =
        children::reflect(scoped::<Deployment>(&client, &namespace), owned.clone());
    let (services, service_events) =
        children::reflect(scoped::<Service>(&client, &namespace), owned.clone());
    let (config_maps, config_map_events) =
        children::reflect(scoped::<ConfigMap>(&client, &namespace), owned.clone());
    let (service_accounts, service_account_events) =
        children::reflect(scoped::<ServiceAccount>(&client, &namespace), owned.clone());
    // Pods belong to the StatefulSet or ReplicaSet, not to the pipeline: they are mapped to it
    // by label, so that a crash loop (which changes no workload status) still reaches the
    // workload's condition.
    let (pods, pod_events) = children::reflect(scoped::<Pod>(&client, &namespace), owned);
    let stores = children::Stores {
        stateful_sets,
        deployments,
        services,
        config_maps,
        service_accounts,
        pods,
    };
    let ctx = Arc::new(ctx.for_watch(stores));
    let ctx_for_backfills = ctx.clone();
    // Bounded concurrency: a thousand new pipelines must not open a thousand sets of AWS
    // connections at once. The debounce folds bursts of child events into one reconcile.
    let config = ControllerConfig::default()
        .concurrency(concurrency)
        .debounce(Duration::from_millis(500));
    // Watch failures come back at least every minute or so (the watcher's backoff) while they last; a run
    // of them spanning WATCH_STALL means the watches are not recovering. (Reconciles that
    // succeed say nothing: a resync in sync makes no API request.)
    let failures = Arc::new(Mutex::new(FailureRun::default()));
    let stalled = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let failures = failures.clone();
        let stalled = stalled.clone();
        move |queue_failed: bool| {
            if !queue_failed {
                return;
            }
            if let Ok(mut run) = failures.lock()
                && run.failed(Instant::now())
            {
                stalled.notify_one();
            }
        }
    };
    let controller = Controller::new(pipelines, watcher::Config::default().any_semantic())
        .with_config(config)
        .owns_stream(stateful_set_events)
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        .owns_stream(service_account_events)
        .watches_stream(pod_events, |pod: Pod| {
            let namespace = pod.metadata.namespace.clone()?;
            let pipeline = pod
                .metadata
                .labels
                .as_ref()?
                .get(workload::PIPELINE_LABEL)?;
            Some(ObjectRef::<StoredPipeline>::new(pipeline).within(&namespace))
        })
        .shutdown_on_signal()
        .run(reconcile_stored, error_policy_stored, ctx)
        .for_each(|result| {
            use kube::runtime::controller::Error as RunError;
            watch(matches!(result, Err(RunError::QueueError(_))));
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                    // A normal lifecycle, not a problem: a deletion waiting for AWS (the status says
                    // so), and requeues of an object that is gone.
                    Err(RunError::ReconcilerFailed(error, object))
                        if matches!(error.inner(), ControllerError::DeletionInProgress(_)) =>
                    {
                        tracing::debug!(%object, %error, "waiting for the AWS deletion")
                    }
                    Err(RunError::ObjectNotFound(object)) => {
                        tracing::debug!(%object, "requeued object is gone")
                    }
                    Err(error) => warn!(%error, "controller"),
                }
            }
        });
    // Backfills share the context (client, AWS backend, recorder, image, emulator).
    let backfills = backfill::run(client, namespace, ctx_for_backfills);
    tokio::select! {
        ((), ()) = futures_util::future::join(controller, backfills) => Ended::Stopped,
        () = stalled.notified() => Ended::WatchesStalled,
    }
}

/// The `run` subcommand.
pub async fn run(args: RunArgs) -> Result<(), ControllerError> {
    let rate_limits = crate::aws::throttle::RateLimits::parse(&args.aws_rate_limit)
        .map_err(|error| ControllerError::Startup(format!("--aws-rate-limit {error}")))?;
    let calls = crate::aws::CallCounter::new();
    let metrics = Arc::new(Metrics::with_aws_calls(calls.clone()));
    let server = metrics::serve(
        args.metrics_bind_address,
        args.metrics_port,
        metrics.clone(),
    );
    let server = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the metrics server stopped");
        }
    });

    let client = Client::try_default()
        .await
        .map_err(|error| ControllerError::Startup(format!("kubernetes client: {error}")))?;

    if args.leader_election {
        let namespace = std::env::var("POD_NAMESPACE").map_err(|_| {
            ControllerError::Startup("--leader-election needs POD_NAMESPACE".to_owned())
        })?;
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{MANAGER}-{}", std::process::id()));
        let elector = leader::LeaderElector::new(client.clone(), &namespace, &identity);
        info!(%identity, "waiting for the leader lease");
        metrics.set_ready(true);
        elector.acquire().await?;
        info!(%identity, "leading");
        let lost = tokio::spawn(elector.keep());
        tokio::select! {
            result = run_controllers(&args, client, metrics, calls, rate_limits) => result,
            result = lost => match result {
                Ok(error) => Err(error),
                Err(join) => Err(ControllerError::Startup(format!("lease task: {join}"))),
            },
        }
    } else {
        metrics.set_ready(true);
        let result = run_controllers(&args, client, metrics, calls, rate_limits).await;
        server.abort();
        result
    }
}

/// How long every watch may fail before the controllers start over with a new client.
pub const WATCH_STALL: Duration = Duration::from_secs(60);

/// Runs the controllers until they stop (SIGTERM). When their watches have failed for
/// [`WATCH_STALL`] without a single success, they start over with a new Kubernetes client: a
/// kube `Client` whose request buffer saw its connection fail while the API server restarted
/// fails every later request with the same error, forever (found by the scale benchmark's API
/// server restart), and a new client recovers where retrying the old one never does.
async fn run_controllers(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    calls: crate::aws::CallCounter,
    rate_limits: crate::aws::throttle::RateLimits,
) -> Result<(), ControllerError> {
    let backend = Arc::new(AwsBackend::new(crate::aws::ClientOptions {
        s3_force_path_style: false,
        calls: Some(calls),
        rate_limits: Some(rate_limits),
        endpoint_url: args.aws_endpoint_url.clone(),
    }));
    let mut client = client;
    loop {
        match run_controllers_with(args, client, metrics.clone(), backend.clone()).await {
            Ended::Stopped => return Ok(()),
            Ended::WatchesStalled => {
                warn!(
                    stalled_for = ?WATCH_STALL,
                    "every watch failed for a while; starting over with a new Kubernetes client"
                );
                metrics.observe_error("watch_stalled");
                client = Client::try_default().await.map_err(|error| {
                    ControllerError::Startup(format!("kubernetes client: {error}"))
                })?;
            }
        }
    }
}

/// A run of watch failures: when it began and when the last one came.
#[derive(Debug, Default)]
struct FailureRun {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl FailureRun {
    /// Longer than the watcher's largest backoff between two tries (about a minute, measured
    /// against a restarting API server): a gap this long means the watches recovered in between.
    const GAP: Duration = Duration::from_secs(120);

    /// Records a failure at `now`; true when the run spans [`WATCH_STALL`].
    fn failed(&mut self, now: Instant) -> bool {
        let continues = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) <= Self::GAP);
        if !continues {
            self.first = Some(now);
        }
        self.last = Some(now);
        self.first
            .is_some_and(|first| now.saturating_duration_since(first) >= WATCH_STALL)
    }
}

/// Why the controllers of one client ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Shut down (signal) or the stream ended.
    Stopped,
    /// Every watch failed for [`WATCH_STALL`].
    WatchesStalled,
}

async fn run_controllers_with(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    backend: Arc<AwsBackend>,
) -> Ended {
    let ctx = Arc::new(SharedContext {
        client: client.clone(),
        backend,
        aggregator_image: args.aggregator_image.clone(),
        emulator: workload::EmulatorAws {
            endpoint_url: args.aws_endpoint_url.clone(),
            credentials_secret: args.aws_credentials_secret.clone(),
        },
        metrics,
        resync: Duration::from_secs(args.resync_seconds),
        aws_drift_check: Duration::from_secs(args.aws_drift_check_seconds),
    });
    let concurrency = args.max_concurrent_reconciles;
    let namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .collect();
    if namespaces.is_empty() {
        info!("watching ClickHeatmapPipelines in every namespace");
        run_controller(Api::all(client.clone()), client, None, ctx, concurrency).await
    } else {
        info!(?namespaces, "watching ClickHeatmapPipelines");
        let controllers = namespaces.into_iter().map(|ns| {
            Box::pin(run_controller(
                Api::namespaced(client.clone(), &ns),
                client.clone(),
                Some(ns),
                ctx.clone(),
                concurrency,
            ))
        });
        // The first to end decides: a stall starts them all over with a new client; the others
        // are dropped here.
        let (ended, _, _) = futures_util::future::select_all(controllers).await;
        ended
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod stall_tests {
    use super::*;

    #[test]
    fn the_default_image_is_this_release_not_latest() {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = Args::parse_from(["clickheatmap-operator"]);
        assert_eq!(
            args.run.aggregator_image,
            format!(
                "ghcr.io/clickheatmap/clickheatmap:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn a_run_of_watch_failures_spanning_a_minute_is_a_stall() {
        let start = Instant::now();
        let mut run = FailureRun::default();
        // Failures every 30 s: a stall once they span a minute.
        assert!(!run.failed(start));
        assert!(!run.failed(start + Duration::from_secs(30)));
        assert!(run.failed(start + Duration::from_secs(60)));
    }

    #[test]
    fn failures_with_a_long_quiet_gap_start_a_new_run() {
        let start = Instant::now();
        let mut run = FailureRun::default();
        assert!(!run.failed(start));
        // Over two minutes of quiet: the watches recovered in between.
        assert!(!run.failed(start + Duration::from_secs(130)));
        assert!(!run.failed(start + Duration::from_secs(170)));
        assert!(run.failed(start + Duration::from_secs(190)));
    }
}
