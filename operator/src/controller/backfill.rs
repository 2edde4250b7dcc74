//! The `ClickHeatmapBackfill` controller: one Job of the project's image per backfill, running
//! `clickheatmap-aggregator backfill` with the pipeline's settings.
//!
//! A reconcile reads as a pipeline: dereference (the pipeline, the other backfills of it, the
//! Job, the backfill's state object in S3) → decide (pure: [`decide`]) → apply (the Job and its
//! ConfigMap by server-side apply, or their deletion) → status (server-side applied) and an
//! Event when the phase changes.
//!
//! * **One at a time per pipeline**: two backfills over the same windows would each correct the
//!   table against the other's half-written result. The oldest unfinished backfill of a pipeline
//!   runs; the others wait, `Pending` with the reason `WaitingForBackfill`.
//! * **Progress and result** come from the state object the backfill keeps beside the
//!   pipeline's checkpoints (`_backfills/<id>.json`): objects, bytes, clicks, partitions, ETA.
//!   A state that says finished is the result (`Succeeded`), whatever the Job's pods did after;
//!   a Job that failed (its retries used up) is `Failed`, with the pod's last words.
//! * **Resumable**: the Job retries a pod that died (`backoffLimit`), and a new pod resumes from
//!   the state object; killing a pod halfway costs the partition it was on, nothing else.
//! * **Cleanup**: once the status holds the result, the Job (and its pods) and the ConfigMap are
//!   deleted; the backfill object stays as the record until someone deletes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clickheatmap_crds::backfill_state::{BackfillState, valid_backfill_id};
use clickheatmap_crds::{
    AggregationEngine, BackfillPhase, BackfillProgressStatus, COMPLETE_CONDITION,
    ClickHeatmapBackfill, ClickHeatmapPipeline, GridConfig,
};
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::workload::{
    AGGREGATOR_BINARY, CONFIG_DIR, CONFIG_KEY, EmulatorAws, IMAGE_PULL_POLICY, MANAGER,
    aggregator_config, aggregator_name, config_mount, config_volume, env, restricted_container,
    restricted_pod,
};
use super::{Context, ControllerError, PipelineBackend};
use crate::error::Error;

/// The component label value of a backfill's objects.
pub const BACKFILL: &str = "backfill";
/// Names the backfill a Job, ConfigMap or pod belongs to.
pub const BACKFILL_LABEL: &str = "clickheatmap.io/backfill";
/// Names the pipeline a backfill rebuilds. Not the pipeline controller's label, whose orphan
/// cleanup would take the backfill's objects for its own.
pub const BACKFILL_OF_LABEL: &str = "clickheatmap.io/backfill-of";

/// Pods a Job may lose before it fails: each one resumes from the state object.
const BACKOFF_LIMIT: i32 = 6;
/// How often a running backfill's progress is read.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// The backfill's id: its name (cut to 54 characters) and the start of its uid, so that a
/// backfill deleted and created again under the same name starts a state of its own. Also the
/// name of its Job and ConfigMap.
pub fn backfill_id(backfill: &ClickHeatmapBackfill) -> Result<String, Error> {
    let name = backfill.name_any();
    let uid = backfill
        .metadata
        .uid
        .as_deref()
        .ok_or_else(|| Error::InvalidSpec("the backfill has no uid yet".to_owned()))?;
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    // A Kubernetes name may hold dots; a Job's pods' `job-name` label and the id may not.
    let stem: String = name
        .chars()
        .take(54)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let stem = stem.trim_matches('-');
    let id = if stem.is_empty() {
        format!("backfill-{uid}")
    } else {
        format!("{stem}-{uid}")
    };
    if !valid_backfill_id(&id) {
        return Err(Error::InvalidSpec(format!(
            "the backfill's uid {uid:?} cannot name its Job"
        )));
    }
    Ok(id)
}

fn labels(backfill: &ClickHeatmapBackfill) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "clickheatmap-backfill".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            BACKFILL.to_owned(),
        ),
        (BACKFILL_LABEL.to_owned(), backfill.name_any()),
        (BACKFILL_OF_LABEL.to_owned(), backfill.spec.pipeline.clone()),
    ])
}

/// The Job and the ConfigMap with its configuration that run `backfill` for `pipeline`.
pub fn desired(
    backfill: &ClickHeatmapBackfill,
    pipeline: &ClickHeatmapPipeline,
    default_image: &str,
    emulator: &EmulatorAws,
) -> Result<(ConfigMap, Job), Error> {
    let spec = &pipeline.spec;
    if spec.aggregation.engine != AggregationEngine::Deployment {
        return Err(Error::InvalidSpec(
            "backfills run as the aggregator (engine Deployment), with its ServiceAccount; this pipeline's engine is ManagedFlink".to_owned(),
        ));
    }
    if !spec.raw_archive.enabled {
        return Err(Error::InvalidSpec(
            "the pipeline has no raw archive (rawArchive.enabled: false): there is nothing to backfill from".to_owned(),
        ));
    }
    let id = backfill_id(backfill)?;
    let mut config = aggregator_config(pipeline)?;
    if let Some(regrid) = &backfill.spec.regrid {
        if regrid.table == config.output.table {
            return Err(Error::InvalidSpec(format!(
                "regrid.table {} is the pipeline's own table; a re-grid goes into a new table",
                regrid.table
            )));
        }
        config.output.table = regrid.table.clone();
        config.grid = GridConfig {
            columns: regrid.columns.unwrap_or(config.grid.columns),
            rows: regrid.rows.unwrap_or(config.grid.rows),
        };
        if let Some(window) = regrid.window_size {
            config.window.size = window;
        }
        config
            .validate()
            .map_err(|error| Error::InvalidSpec(format!("regrid: {error}")))?;
    }
    let json = serde_json::to_string_pretty(&config)
        .map_err(|error| Error::internal(format!("serialising the backfill config: {error}")))?;
    let owner = backfill.controller_owner_ref(&()).ok_or_else(|| {
        Error::InvalidSpec("the backfill has no name or uid to own its Job".to_owned())
    })?;
    let metadata = ObjectMeta {
        name: Some(id.clone()),
        namespace: backfill.metadata.namespace.clone(),
        labels: Some(labels(backfill)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    let config_map = ConfigMap {
        metadata: metadata.clone(),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), json)])),
        ..ConfigMap::default()
    };
    let archive = format!(
        "s3://{}/{}",
        spec.buckets.raw,
        spec.raw_archive.prefix.trim_start_matches('/')
    );
    let request = &backfill.spec;
    let container = Container {
        name: BACKFILL.to_owned(),
        image: Some(
            spec.aggregation
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_owned()),
        ),
        image_pull_policy: Some(IMAGE_PULL_POLICY.to_owned()),
        command: Some(vec![AGGREGATOR_BINARY.to_owned()]),
        args: Some(vec![
            "backfill".to_owned(),
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            "--id".to_owned(),
            id.clone(),
            "--archive".to_owned(),
            archive,
            "--from".to_owned(),
            request.from.clone(),
            "--to".to_owned(),
            request.to.clone(),
            "--early-arrivals".to_owned(),
            request.early_arrivals.to_string(),
            "--late-arrivals".to_owned(),
            request.late_arrivals.to_string(),
            "--parallelism".to_owned(),
            request.parallelism.to_string(),
        ]),
        env: Some(vec![
            env("AWS_REGION", spec.region.clone()),
            env("CLICKHEATMAP_LOG_FORMAT", "json"),
        ]),
        resources: spec.aggregation.resources.clone(),
        security_context: Some(restricted_container()),
        // The error a failed run printed becomes the pod's termination message, and the status'.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        volume_mounts: Some(vec![config_mount()]),
        ..Container::default()
    };
    let mut pod = PodSpec {
        // The aggregator's identity (IRSA role): it writes the table and reads the archive.
        service_account_name: Some(aggregator_name(&pipeline.name_any())),
        automount_service_account_token: Some(true),
        security_context: Some(restricted_pod()),
        restart_policy: Some("OnFailure".to_owned()),
        containers: vec![container],
        volumes: Some(vec![config_volume(id)]),
        ..PodSpec::default()
    };
    emulator.apply_to(&mut pod);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(backfill)),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    };
    super::workload::apply_workload_settings(&mut template, &spec.workloads);
    let job = Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            template,
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    Ok((config_map, job))
}

/// What a reconcile found.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// `None`: the pipeline does not exist (yet).
    pub pipeline_exists: bool,
    /// Why the Job cannot be built, if it cannot.
    pub invalid: Option<String>,
    /// An older unfinished backfill of the same pipeline, which goes first.
    pub waiting_for: Option<String>,
    pub job: Option<JobObserved>,
    pub state: Option<BackfillState>,
    /// The state could not be read (S3 down, no permission): reported, retried.
    pub state_error: Option<String>,
}

/// The parts of a Job's status that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobObserved {
    pub active: i32,
    pub failed: i32,
    pub succeeded: i32,
    /// The `Failed` condition's message, and the last pod's termination message.
    pub failure: Option<String>,
}

/// What to do, and what the status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub phase: BackfillPhase,
    pub reason: &'static str,
    pub message: String,
    pub run_job: bool,
    pub delete_job: bool,
}

/// Decides from what was observed (pure).
pub fn decide(previous: Option<BackfillPhase>, observed: &Observed) -> Decision {
    let decision = |phase, reason, message: String, run_job, delete_job| Decision {
        phase,
        reason,
        message,
        run_job,
        delete_job,
    };
    // A result, once recorded, is final: the Job is only cleaned up.
    match previous {
        Some(BackfillPhase::Succeeded) => {
            return decision(
                BackfillPhase::Succeeded,
                "Succeeded",
                "the backfill finished".to_owned(),
                false,
                true,
            );
        }
        Some(BackfillPhase::Failed) => {
            return decision(
                BackfillPhase::Failed,
                "Failed",
                "the backfill failed".to_owned(),
                false,
                true,
            );
        }
        _ => {}
    }
    if let Some(state) = &observed.state
        && state.finished_at_ms.is_some()
    {
        return decision(
            BackfillPhase::Succeeded,
            "Succeeded",
            summary(state),
            false,
            true,
        );
    }
    if let Some(job) = &observed.job
        && let Some(failure) = &job.failure
    {
        return decision(
            BackfillPhase::Failed,
            "JobFailed",
            failure.clone(),
            false,
            true,
        );
    }
    if let Some(job) = &observed.job
        && job.succeeded > 0
    {
        // The process ended well, so it wrote its final state; only reading it failed.
        return decision(
            BackfillPhase::Succeeded,
            "Succeeded",
            match &observed.state_error {
                Some(error) => format!("the Job succeeded; its result cannot be read: {error}"),
                None => "the Job succeeded".to_owned(),
            },
            false,
            true,
        );
    }
    if !observed.pipeline_exists {
        if observed.job.is_some() {
            // Its ServiceAccount and configuration went with the pipeline.
            return decision(
                BackfillPhase::Failed,
                "PipelineDeleted",
                "the pipeline was deleted while the backfill ran".to_owned(),
                false,
                true,
            );
        }
        return decision(
            BackfillPhase::Pending,
            "PipelineNotFound",
            "the pipeline does not exist in this namespace (yet)".to_owned(),
            false,
            false,
        );
    }
    if let Some(invalid) = &observed.invalid {
        return decision(
            BackfillPhase::Failed,
            "InvalidRequest",
            invalid.clone(),
            false,
            true,
        );
    }
    if let Some(other) = &observed.waiting_for {
        return decision(
            BackfillPhase::Pending,
            "WaitingForBackfill",
            format!("backfill {other} of the same pipeline runs first"),
            false,
            false,
        );
    }
    match (&observed.job, &observed.state) {
        (Some(job), Some(state)) if job.active > 0 => decision(
            BackfillPhase::Running,
            "Running",
            summary(state),
            true,
            false,
        ),
        (Some(job), _) if job.active > 0 => decision(
            BackfillPhase::Running,
            "Running",
            match &observed.state_error {
                Some(error) => format!("running; its progress cannot be read: {error}"),
                None => "running; no progress written yet".to_owned(),
            },
            true,
            false,
        ),
        (Some(job), _) if job.failed > 0 => decision(
            BackfillPhase::Running,
            "Retrying",
            format!(
                "{} pod(s) of the Job failed; the next one resumes from the saved state",
                job.failed
            ),
            true,
            false,
        ),
        // The Job exists but has no pod at the moment (one is being replaced).
        (Some(_), _) => decision(
            BackfillPhase::Running,
            "Running",
            "the Job's next pod is starting".to_owned(),
            true,
            false,
        ),
        _ => decision(
            BackfillPhase::Pending,
            "JobStarting",
            "the Job is starting".to_owned(),
            true,
            false,
        ),
    }
}

/// `partitions 12/48, objects 130/520, ETA 4m`.
pub fn summary(state: &BackfillState) -> String {
    let progress = &state.progress;
    let mut text = format!(
        "partitions {}/{}, objects {}/{}, {} clicks",
        progress.partitions_done,
        progress.partitions_total,
        progress.read.objects,
        progress.objects_total,
        progress.read.clicks
    );
    if state.finished_at_ms.is_some() {
        text.push_str(&format!(
            ", {} partitions changed, {} windows rebuilt",
            progress.partitions_changed, progress.windows_rewritten
        ));
    } else if let Some(eta) = progress.eta_seconds {
        text.push_str(&format!(
            ", ETA {}",
            clickheatmap_crds::Duration::from_secs(eta)
        ));
    }
    text
}

fn progress_status(state: &BackfillState) -> BackfillProgressStatus {
    let progress = &state.progress;
    BackfillProgressStatus {
        summary: summary(state),
        objects_read: progress.read.objects,
        objects_total: progress.objects_total,
        bytes_read: progress.read.bytes,
        bytes_total: progress.bytes_total,
        records: progress.read.records,
        clicks: progress.read.clicks,
        rejected: progress.read.rejected_total(),
        damaged_objects: progress.read.corrupt_objects,
        partitions_done: progress.partitions_done,
        partitions_total: progress.partitions_total,
        partitions_changed: progress.partitions_changed,
        windows_rewritten: progress.windows_rewritten,
        eta_seconds: progress.eta_seconds,
    }
}

fn iso(ms: i64) -> Option<String> {
    crate::dataplane::rfc3339(ms)
}

/// Reconciles one backfill.
pub async fn reconcile<B: PipelineBackend>(
    backfill: Arc<ClickHeatmapBackfill>,
    ctx: Arc<Context<B>>,
) -> Result<Action, ControllerError> {
    let namespace = backfill
        .namespace()
        .ok_or_else(|| ControllerError::Malformed("a backfill without a namespace".to_owned()))?;
    let name = backfill.name_any();
    let client = &ctx.client;
    let backfills: Api<ClickHeatmapBackfill> = Api::namespaced(client.clone(), &namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let pipelines: Api<ClickHeatmapPipeline> = Api::namespaced(client.clone(), &namespace);
    let previous = backfill.status.clone().unwrap_or_default();
    let id = backfill_id(&backfill)?;

    // Dereference.
    let mut observed = Observed::default();
    let pipeline = match previous.phase {
        Some(BackfillPhase::Succeeded | BackfillPhase::Failed) => None,
        _ => pipelines.get_opt(&backfill.spec.pipeline).await?,
    };
    observed.pipeline_exists = pipeline.is_some();
    if !matches!(
        previous.phase,
        Some(BackfillPhase::Succeeded | BackfillPhase::Failed)
    ) && let Some(job) = jobs.get_opt(&id).await?
    {
        observed.job = Some(observe_job(client, &namespace, &job).await?);
    }
    let mut built = None;
    if let Some(pipeline) = &pipeline {
        match desired(&backfill, pipeline, &ctx.aggregator_image, &ctx.emulator) {
            Ok(objects) => built = Some(objects),
            Err(error) => observed.invalid = Some(error.to_string()),
        }
        // A backfill whose Job runs keeps running; another one goes first only before that.
        if observed.job.is_none() {
            observed.waiting_for = first_in_line(&backfills, &backfill).await?;
        }
        // The state sits beside the checkpoints, whatever table a re-grid writes.
        if let Ok(config) = aggregator_config(pipeline) {
            let location = config.backfill_state_location(&id);
            match ctx.backend.backfill_state(pipeline, &location).await {
                Ok(state) => observed.state = state,
                Err(error) => observed.state_error = Some(error.to_string()),
            }
        }
    }

    // Decide, then apply.
    let decision = decide(previous.phase, &observed);
    // Created once: a Job's template is immutable, and its pods read the ConfigMap at start.
    if decision.run_job
        && observed.job.is_none()
        && let Some((config_map, job)) = &built
    {
        apply(&config_maps, config_map).await?;
        apply(&jobs, job).await?;
        info!(backfill = %format!("{namespace}/{name}"), job = %id, "backfill Job created");
    }
    if decision.delete_job {
        let background = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        for result in [
            jobs.delete(&id, &background).await.map(|_| ()),
            config_maps.delete(&id, &background).await.map(|_| ()),
        ] {
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    // Status.
    let now = Time(Timestamp::now());
    let mut status = previous.clone();
    status.observed_generation = backfill.metadata.generation;
    status.job = Some(id.clone());
    if let Some(state) = &observed.state {
        status.covered_from = iso(state.covered_from_ms);
        status.covered_to = iso(state.covered_to_ms);
        status.stopped_before_end = state.stopped_at_ms.map(|_| true);
        status.progress = Some(progress_status(state));
    }
    if decision.phase == BackfillPhase::Running && status.start_time.is_none() {
        status.start_time = Some(now.0.to_string());
    }
    let finished = matches!(
        decision.phase,
        BackfillPhase::Succeeded | BackfillPhase::Failed
    );
    if finished && status.completion_time.is_none() {
        status.completion_time = Some(now.0.to_string());
    }
    let keep_message = finished && previous.phase == Some(decision.phase);
    let condition = Condition {
        type_: COMPLETE_CONDITION.to_owned(),
        status: if decision.phase == BackfillPhase::Succeeded {
            "True"
        } else {
            "False"
        }
        .to_owned(),
        reason: decision.reason.to_owned(),
        message: decision.message.clone(),
        observed_generation: backfill.metadata.generation,
        last_transition_time: now.clone(),
    };
    let old_condition = previous
        .conditions
        .iter()
        .find(|c| c.type_ == COMPLETE_CONDITION)
        .cloned();
    status.conditions = vec![match old_condition {
        Some(old) if keep_message => old,
        Some(old) if old.status == condition.status => Condition {
            last_transition_time: old.last_transition_time,
            ..condition
        },
        _ => condition,
    }];
    status.phase = Some(decision.phase);
    if status != previous {
        let patch = json!({
            "apiVersion": "clickheatmap.io/v1alpha1",
            "kind": "ClickHeatmapBackfill",
            "status": status,
        });
        backfills
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    if previous.phase != Some(decision.phase) {
        let (type_, reason) = match decision.phase {
            BackfillPhase::Failed => (EventType::Warning, "Failed"),
            BackfillPhase::Succeeded => (EventType::Normal, "Succeeded"),
            BackfillPhase::Running => (EventType::Normal, "Started"),
            BackfillPhase::Pending => (EventType::Normal, decision.reason),
        };
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(decision.message.chars().take(1000).collect()),
            action: "Backfill".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx
            .recorder
            .publish(&event, &backfill.object_ref(&()))
            .await
        {
            warn!(%error, "cannot publish an event");
        }
    }
    Ok(match decision.phase {
        BackfillPhase::Succeeded | BackfillPhase::Failed => Action::await_change(),
        BackfillPhase::Running => Action::requeue(PROGRESS_INTERVAL),
        BackfillPhase::Pending => Action::requeue(Duration::from_secs(15)),
    })
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), ControllerError>
where
    K: Resource<DynamicType = ()> + serde::Serialize + Clone + std::fmt::Debug,
    K: serde::de::DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(object)
        .map_err(|error| Error::internal(format!("serialising {name}: {error}")))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), K::api_version(&()).into());
        map.insert("kind".to_owned(), K::kind(&()).into());
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(())
}

/// Another unfinished backfill of the same pipeline that goes first: one that runs already, or
/// else the oldest one older than this.
async fn first_in_line(
    api: &Api<ClickHeatmapBackfill>,
    backfill: &ClickHeatmapBackfill,
) -> Result<Option<String>, ControllerError> {
    let key = |b: &ClickHeatmapBackfill| (b.metadata.creation_timestamp.clone(), b.name_any());
    let mine = key(backfill);
    let others: Vec<ClickHeatmapBackfill> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|other| {
            other.spec.pipeline == backfill.spec.pipeline
                && other.name_any() != backfill.name_any()
                && !matches!(
                    other.status.as_ref().and_then(|s| s.phase),
                    Some(BackfillPhase::Succeeded | BackfillPhase::Failed)
                )
        })
        .collect();
    let running = others
        .iter()
        .find(|other| other.status.as_ref().and_then(|s| s.phase) == Some(BackfillPhase::Running));
    let first = running.or_else(|| {
        others
            .iter()
            .filter(|other| key(other) < mine)
            .min_by_key(|other| key(other))
    });
    Ok(first.map(ResourceExt::name_any))
}

async fn observe_job(
    client: &Client,
    namespace: &str,
    job: &Job,
) -> Result<JobObserved, ControllerError> {
    let status = job.status.clone().unwrap_or_default();
    let failed_condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    let failure = match failed_condition {
        None => None,
        Some(condition) => {
            // The last words of the job's pods (FallbackToLogsOnError).
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let selector = format!("job-name={}", job.name_any());
            let words = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .into_iter()
                .filter_map(|pod| {
                    pod.status?.container_statuses?.into_iter().find_map(|c| {
                        c.last_state
                            .and_then(|s| s.terminated)
                            .or_else(|| c.state.and_then(|s| s.terminated))
                            .and_then(|t| t.message)
                    })
                })
                .next_back();
            Some(match words {
                Some(words) => format!(
                    "{}: {}",
                    condition.message.unwrap_or_default(),
                    words.trim()
                ),
                None => condition
                    .message
                    .unwrap_or_else(|| condition.reason.unwrap_or_default()),
            })
        }
    };
    Ok(JobObserved {
        active: status.active.unwrap_or(0),
        failed: status.failed.unwrap_or(0),
        succeeded: status.succeeded.unwrap_or(0),
        failure,
    })
}

pub fn error_policy<B: PipelineBackend>(
    backfill: Arc<ClickHeatmapBackfill>,
    error: &ControllerError,
    _: Arc<Context<B>>,
) -> Action {
    warn!(backfill = %backfill.name_any(), %error, "reconciling a backfill failed");
    Action::requeue(if error.is_retryable() {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(300)
    })
}

/// Runs the backfill controller until shutdown: backfills and the Jobs they own, in
/// `namespace` or everywhere.
pub async fn run<B: PipelineBackend>(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context<B>>,
) {
    let (backfills, jobs): (Api<ClickHeatmapBackfill>, Api<Job>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let owned = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={MANAGER},app.kubernetes.io/component={BACKFILL}"
    ));
    Controller::new(backfills, watcher::Config::default().any_semantic())
        .owns(jobs, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "backfill controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::workload::tests_support::fixture;

    fn backfill(yaml: &str) -> ClickHeatmapBackfill {
        let mut backfill: ClickHeatmapBackfill = serde_norway::from_str(yaml).unwrap();
        backfill.metadata.namespace = Some("analytics".to_owned());
        backfill.metadata.uid = Some("1A2B3C4D-0000".to_owned());
        backfill
    }

    const REQUEST: &str = r#"
apiVersion: clickheatmap.io/v1alpha1
kind: ClickHeatmapBackfill
metadata:
  name: fix-december
spec:
  pipeline: shop
  from: "2026-12-01T00:00:00Z"
  to: "2026-12-02T00:00:00Z"
"#;

    #[test]
    fn the_job_runs_the_aggregator_image_with_the_pipeline_s_settings() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let (config_map, job) = desired(
            &backfill(REQUEST),
            &pipeline,
            "registry.example.com/agg:1",
            &EmulatorAws::default(),
        )
        .unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("fix-december-1a2b3c4d"));
        assert_eq!(config_map.metadata.name, job.metadata.name);
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ClickHeatmapBackfill", Some(true))
        );
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[BACKFILL_OF_LABEL], "shop");
        assert!(
            !labels.contains_key(super::super::workload::PIPELINE_LABEL),
            "the pipeline controller must not take the Job for an orphan of its own"
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(BACKOFF_LIMIT));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(pod.service_account_name.as_deref(), Some("shop-aggregator"));
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example.com/agg:1")
        );
        let args = container.args.as_ref().unwrap().join(" ");
        assert_eq!(
            args,
            "backfill --config /etc/clickheatmap/aggregator.json --id fix-december-1a2b3c4d \
             --archive s3://shop-heatmap-raw-123456789012/raw/ \
             --from 2026-12-01T00:00:00Z --to 2026-12-02T00:00:00Z \
             --early-arrivals 1h --late-arrivals 1h --parallelism 4"
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let config = clickheatmap_crds::AggregatorConfig::from_json(
            &config_map.data.as_ref().unwrap()[CONFIG_KEY],
        )
        .unwrap();
        assert_eq!(config.output.table, "curated_heatmap");
    }

    #[test]
    fn a_regrid_goes_into_a_new_table_with_its_own_grid() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let mut request = backfill(REQUEST);
        request.spec.regrid = Some(clickheatmap_crds::RegridSpec {
            table: "curated_heatmap_40".to_owned(),
            columns: Some(40),
            rows: None,
            window_size: Some(clickheatmap_crds::Duration::from_secs(300)),
        });
        let (config_map, _) = desired(&request, &pipeline, "img", &EmulatorAws::default()).unwrap();
        let config = clickheatmap_crds::AggregatorConfig::from_json(
            &config_map.data.as_ref().unwrap()[CONFIG_KEY],
        )
        .unwrap();
        assert_eq!(config.output.table, "curated_heatmap_40");
        assert_eq!((config.grid.columns, config.grid.rows), (40, 20));
        assert_eq!(config.window.size.as_millis(), 300_000);
        request.spec.regrid.as_mut().unwrap().table = "curated_heatmap".to_owned();
        let error = desired(&request, &pipeline, "img", &EmulatorAws::default()).unwrap_err();
        assert!(error.to_string().contains("new table"), "{error}");
    }

    #[test]
    fn any_kubernetes_name_makes_a_valid_id() {
        let mut request = backfill(REQUEST);
        request.metadata.name = Some("fix.2026.12.01".to_owned());
        assert_eq!(backfill_id(&request).unwrap(), "fix-2026-12-01-1a2b3c4d");
        request.metadata.name = Some("a".repeat(200));
        let id = backfill_id(&request).unwrap();
        assert!(id.len() <= 63 && valid_backfill_id(&id), "{id}");
    }

    #[test]
    fn the_example_is_a_valid_request_for_the_minimal_pipeline() {
        let text = std::fs::read_to_string(format!(
            "{}/../examples/backfill.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let request = backfill(&text);
        let pipeline = fixture("pipeline-minimal.yaml");
        assert_eq!(request.spec.pipeline, pipeline.name_any());
        desired(&request, &pipeline, "img", &EmulatorAws::default()).unwrap();
    }

    fn state(finished: bool) -> BackfillState {
        let mut state = BackfillState::default();
        state.progress.partitions_total = 24;
        state.progress.partitions_done = 6;
        state.progress.eta_seconds = Some(90);
        state.finished_at_ms = finished.then_some(1);
        state
    }

    #[test]
    fn decisions_follow_the_job_and_the_state() {
        let running_job = JobObserved {
            active: 1,
            ..JobObserved::default()
        };
        let base = Observed {
            pipeline_exists: true,
            ..Observed::default()
        };
        let fresh = decide(None, &base);
        assert_eq!((fresh.phase, fresh.run_job), (BackfillPhase::Pending, true));
        let running = decide(
            Some(BackfillPhase::Pending),
            &Observed {
                job: Some(running_job.clone()),
                state: Some(state(false)),
                ..base.clone()
            },
        );
        assert_eq!(running.phase, BackfillPhase::Running);
        assert!(
            running.message.contains("partitions 6/24"),
            "{}",
            running.message
        );
        assert!(running.message.contains("ETA 90s"), "{}", running.message);
        // A finished state is the result, whatever the Job says now.
        let done = decide(
            Some(BackfillPhase::Running),
            &Observed {
                job: Some(running_job.clone()),
                state: Some(state(true)),
                ..base.clone()
            },
        );
        assert_eq!(
            (done.phase, done.delete_job),
            (BackfillPhase::Succeeded, true)
        );
        let failed = decide(
            Some(BackfillPhase::Running),
            &Observed {
                job: Some(JobObserved {
                    failed: 7,
                    failure: Some("BackoffLimitExceeded: error: reading s3://raw".to_owned()),
                    ..JobObserved::default()
                }),
                ..base.clone()
            },
        );
        assert_eq!(
            (failed.phase, failed.reason),
            (BackfillPhase::Failed, "JobFailed")
        );
        let waiting = decide(
            None,
            &Observed {
                waiting_for: Some("older".to_owned()),
                ..base.clone()
            },
        );
        assert_eq!(
            (waiting.phase, waiting.reason, waiting.run_job),
            (BackfillPhase::Pending, "WaitingForBackfill", false)
        );
        let missing = decide(None, &Observed::default());
        assert_eq!(missing.reason, "PipelineNotFound");
        // A pod being replaced does not make a running backfill look new again.
        let replacing = decide(
            Some(BackfillPhase::Running),
            &Observed {
                job: Some(JobObserved::default()),
                ..base.clone()
            },
        );
        assert_eq!(replacing.phase, BackfillPhase::Running);
        // A Job that succeeded is the result even when its state cannot be read.
        let succeeded = decide(
            Some(BackfillPhase::Running),
            &Observed {
                job: Some(JobObserved {
                    succeeded: 1,
                    ..JobObserved::default()
                }),
                state_error: Some("AccessDenied".to_owned()),
                ..base.clone()
            },
        );
        assert_eq!(succeeded.phase, BackfillPhase::Succeeded);
        assert!(succeeded.message.contains("AccessDenied"));
        // The pipeline deleted under a running Job: failed, and the Job goes.
        let orphaned = decide(
            Some(BackfillPhase::Running),
            &Observed {
                job: Some(running_job.clone()),
                ..Observed::default()
            },
        );
        assert_eq!(
            (orphaned.phase, orphaned.reason, orphaned.delete_job),
            (BackfillPhase::Failed, "PipelineDeleted", true)
        );
        // Recorded results stay; only the cleanup goes on.
        let after = decide(Some(BackfillPhase::Succeeded), &base);
        assert_eq!(
            (after.phase, after.run_job, after.delete_job),
            (BackfillPhase::Succeeded, false, true)
        );
    }
}
