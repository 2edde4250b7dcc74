//! The Managed Service for Apache Flink application (`aggregation.engine: ManagedFlink`).
//!
//! The original demo's Java job ran on MSF; this keeps it available as an engine. The operator
//! creates the application with the spec's runtime (`FLINK-1_18` by default), code location,
//! parallelism and parallelism per KPU (autoscaling off, so the spec's numbers hold), and one
//! property group, `FlinkApplicationProperties`, carrying what the job needs to know:
//! `KINESIS_STREAM_ARN`, `CURATED_S3_PATH` and `AWS_REGION`.
//!
//! Lifecycle: the application runs while `aggregation.replicas > 0` (0 pauses the aggregation,
//! as for the Deployment engine): a `READY` application is started, a `RUNNING` one stopped when
//! paused. Configuration drift is corrected with `UpdateApplication`, which names the current
//! application version id (read by [`FlinkApi::observe`]) so a concurrent change fails instead
//! of being overwritten. Nothing is changed while the application is in a transitional state
//! (`STARTING`, `UPDATING`, …).
//!
//! **Only what the spec declares.** The spec declares the runtime, role, code location,
//! parallelism and parallelism per KPU, and the keys of the `FlinkApplicationProperties` group.
//! An existing application keeps the rest: `UpdateApplication` names no monitoring, checkpoint,
//! snapshot, rollback, VPC or logging setting (Managed Flink keeps what an update leaves out),
//! keeps autoscaling as it is (the operator only switches it off on applications it creates), and
//! writes the property groups back with the application's own groups and keys (the update
//! replaces the whole set). A runtime is only ever upgraded: Managed Flink upgrades in place but
//! cannot downgrade, so an application on a newer runtime than the spec's keeps it (said in the
//! condition, like everything else kept: [`FlinkApplication::kept`]).
//!
//! The calls go through the [`FlinkApi`] trait. moto implements only create/describe/list/tag
//! for this service, so the update, start, stop and delete paths are tested against a fake
//! implementation of the trait (see `operator/tests/flink.rs`); [`SdkFlink`] is the real one.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use aws_sdk_kinesisanalyticsv2::Client;
use aws_sdk_kinesisanalyticsv2::primitives::DateTime;
use aws_sdk_kinesisanalyticsv2::types::{
    ApplicationCodeConfiguration, ApplicationCodeConfigurationUpdate, ApplicationConfiguration,
    ApplicationConfigurationUpdate, CodeContent, CodeContentType, CodeContentUpdate,
    ConfigurationType, EnvironmentProperties, EnvironmentPropertyUpdates,
    FlinkApplicationConfiguration, FlinkApplicationConfigurationUpdate, MonitoringConfiguration,
    ParallelismConfiguration, ParallelismConfigurationUpdate, PropertyGroup, RuntimeEnvironment,
    S3ContentLocation, S3ContentLocationUpdate, Tag,
};
use clickheatmap_crds::{
    AggregationEngine, ClickHeatmapPipelineSpec, FlinkSpec, PipelineResources,
};
use serde::Serialize;

use super::{
    AwsClients, Deletion, Leftover, PartReconciler, PlanInput, Readiness, Removal, SdkResultExt,
    Service, check_owner, is_ours, left_in_place, tag_change,
};
use crate::error::Error;
use crate::names::{Names, Owner, curated_table_location, flink_application_name};
use crate::pipeline::{DeleteStep, Part};

/// The property group the job reads its settings from.
pub const PROPERTY_GROUP: &str = "FlinkApplicationProperties";

/// A boxed future, so that [`FlinkApi`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The Managed Flink calls the reconciler makes, behind a trait so that a fake can stand in
/// where the emulator has no implementation.
pub trait FlinkApi: Send + Sync {
    /// Reads the application and its tags; `None` when there is none of that name.
    fn observe<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedApplication>, Error>>;
    /// Makes one call.
    fn apply<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<(), Error>>;
}

/// The job's code, runtime and parallelism.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSettings {
    pub runtime: String,
    pub role_arn: String,
    pub code_bucket_arn: String,
    pub code_key: String,
    pub parallelism: i32,
    pub parallelism_per_kpu: i32,
    /// Off on the applications the operator creates (the spec's numbers hold); an existing
    /// application keeps its own (the spec has no field for it).
    pub auto_scaling: bool,
    /// Property groups by id.
    pub properties: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredApplication {
    pub name: String,
    pub arn: String,
    /// The settings of an application the operator creates (defaults in the fields the spec
    /// leaves unset).
    pub settings: ApplicationSettings,
    /// The spec leaves `parallelism` / `parallelismPerKpu` unset: an existing application keeps
    /// its own.
    pub parallelism_unset: bool,
    pub parallelism_per_kpu_unset: bool,
    /// Whether the application should run (`aggregation.replicas > 0`).
    pub running: bool,
    pub owner: Owner,
    pub adopt_existing: bool,
    pub tags: BTreeMap<String, String>,
}

impl DesiredApplication {
    /// The settings an existing application should have: the spec's, with the existing
    /// parallelism where the spec leaves it unset.
    fn settings_over(&self, existing: &ApplicationSettings) -> ApplicationSettings {
        let mut wanted = self.settings.clone();
        if self.parallelism_unset {
            wanted.parallelism = existing.parallelism;
        }
        if self.parallelism_per_kpu_unset {
            wanted.parallelism_per_kpu = existing.parallelism_per_kpu;
        }
        wanted
    }
}

/// A timestamp as seconds and nanoseconds since the epoch (`DeleteApplication` needs the
/// creation time exactly as described).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedApplication {
    pub name: String,
    pub arn: String,
    /// `READY`, `STARTING`, `RUNNING`, `UPDATING`, `STOPPING`, `DELETING`, …
    pub status: String,
    pub version_id: i64,
    pub create_timestamp: Option<Timestamp>,
    pub settings: ApplicationSettings,
    /// The settings the spec has no field for and the operator never writes (custom monitoring
    /// or checkpointing, snapshots, VPC, logging, …), described.
    pub unmanaged: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// One Managed Flink call the operator would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all_fields = "camelCase")]
pub enum Change {
    CreateApplication {
        application: String,
        settings: ApplicationSettings,
        tags: BTreeMap<String, String>,
    },
    TagResource {
        application: String,
        resource_arn: String,
        tags: BTreeMap<String, String>,
    },
    /// UpdateApplication with the spec's settings (and the application's own property groups,
    /// keys and autoscaling); `changed` names what drifted.
    UpdateApplication {
        application: String,
        current_version_id: i64,
        settings: ApplicationSettings,
        changed: Vec<String>,
    },
    StartApplication {
        application: String,
    },
    StopApplication {
        application: String,
    },
    DeleteApplication {
        application: String,
        create_timestamp: Timestamp,
    },
}

impl Change {
    /// Every Flink call except tagging moves the application through a transitional state.
    pub fn needs_settling(&self) -> bool {
        !matches!(self, Change::TagResource { .. })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateApplication {
                application,
                settings,
                tags,
            } => write!(
                f,
                "create Flink application {application} ({}, code {}/{}, parallelism {} / {} per KPU), tagged {}",
                settings.runtime,
                settings.code_bucket_arn,
                settings.code_key,
                settings.parallelism,
                settings.parallelism_per_kpu,
                super::show_tags(tags)
            ),
            Change::TagResource {
                application, tags, ..
            } => write!(
                f,
                "tag Flink application {application} with {}",
                super::show_tags(tags)
            ),
            Change::UpdateApplication {
                application,
                current_version_id,
                changed,
                ..
            } => write!(
                f,
                "update Flink application {application} (version {current_version_id}): {}",
                changed.join(", ")
            ),
            Change::StartApplication { application } => {
                write!(f, "start Flink application {application}")
            }
            Change::StopApplication { application } => {
                write!(f, "stop Flink application {application}")
            }
            Change::DeleteApplication { application, .. } => {
                write!(f, "delete Flink application {application}")
            }
        }
    }
}

/// The application the spec asks for; `None` unless the engine is `ManagedFlink`.
pub fn desired(
    spec: &ClickHeatmapPipelineSpec,
    names: &Names,
) -> Result<Option<DesiredApplication>, Error> {
    if spec.aggregation.engine != AggregationEngine::ManagedFlink {
        return Ok(None);
    }
    let flink = spec.aggregation.flink.as_ref().ok_or_else(|| {
        Error::InvalidSpec(
            "aggregation.flink (codeS3Bucket, codeS3Key, roleArn) is required when aggregation.engine is ManagedFlink"
                .to_owned(),
        )
    })?;
    let name = flink_application_name(spec, &names.owner);
    let properties = BTreeMap::from([(
        PROPERTY_GROUP.to_owned(),
        BTreeMap::from([
            (
                "KINESIS_STREAM_ARN".to_owned(),
                names.stream_arn(&spec.stream.name),
            ),
            ("CURATED_S3_PATH".to_owned(), curated_table_location(spec)),
            ("AWS_REGION".to_owned(), names.region.clone()),
            // The aggregation the job must perform: the same window, lateness and grid as the
            // Rust aggregator (docs/ARCHITECTURE.md, the contracts).
            (
                "WINDOW_SIZE_MS".to_owned(),
                spec.aggregation.window.as_millis().to_string(),
            ),
            (
                "ALLOWED_LATENESS_MS".to_owned(),
                spec.aggregation.allowed_lateness.as_millis().to_string(),
            ),
            (
                "GRID_COLUMNS".to_owned(),
                spec.aggregation.grid.columns.to_string(),
            ),
            (
                "GRID_ROWS".to_owned(),
                spec.aggregation.grid.rows.to_string(),
            ),
        ]),
    )]);
    Ok(Some(DesiredApplication {
        arn: names.flink_application_arn(&name),
        name,
        settings: ApplicationSettings {
            runtime: flink.runtime.clone(),
            role_arn: flink.role_arn.clone(),
            code_bucket_arn: names.bucket_arn(&flink.code_s3_bucket),
            code_key: flink.code_s3_key.clone(),
            parallelism: flink.parallelism.unwrap_or(FlinkSpec::DEFAULT_PARALLELISM),
            parallelism_per_kpu: flink
                .parallelism_per_kpu
                .unwrap_or(FlinkSpec::DEFAULT_PARALLELISM_PER_KPU),
            auto_scaling: false,
            properties,
        },
        parallelism_unset: flink.parallelism.is_none(),
        parallelism_per_kpu_unset: flink.parallelism_per_kpu.is_none(),
        running: spec.aggregation.replicas > 0,
        owner: names.owner.clone(),
        adopt_existing: spec.adopt_existing,
        tags: crate::names::resource_tags(spec, &names.owner),
    }))
}

/// The application name in an application ARN (`…:application/<name>`).
pub fn name_from_arn(arn: &str) -> Option<&str> {
    arn.rsplit_once(":application/").map(|(_, name)| name)
}

/// `FLINK-1_18` → `(1, 18)`; `None` for another form.
fn runtime_version(runtime: &str) -> Option<(u32, u32)> {
    let (major, minor) = runtime.strip_prefix("FLINK-")?.split_once('_')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// True when `observed` is a newer Flink runtime than `desired` (which the operator never
/// downgrades to).
fn is_newer_runtime(observed: &str, desired: &str) -> bool {
    matches!(
        (runtime_version(observed), runtime_version(desired)),
        (Some(observed), Some(desired)) if observed > desired
    )
}

/// True when every group and key of `desired` is in `observed` with the same value.
fn properties_contain(
    observed: &BTreeMap<String, BTreeMap<String, String>>,
    desired: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    desired.iter().all(|(id, map)| {
        observed
            .get(id)
            .is_some_and(|found| map.iter().all(|(key, value)| found.get(key) == Some(value)))
    })
}

/// The property groups to write: the observed ones with the desired groups' keys set.
fn merged_properties(
    observed: &BTreeMap<String, BTreeMap<String, String>>,
    desired: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut merged = observed.clone();
    for (id, map) in desired {
        merged.entry(id.clone()).or_default().extend(map.clone());
    }
    merged
}

/// The settings an update writes: the spec's, with what the application has of its own (see
/// the module comment).
fn settings_to_write(
    desired: &ApplicationSettings,
    observed: &ApplicationSettings,
) -> ApplicationSettings {
    ApplicationSettings {
        runtime: if is_newer_runtime(&observed.runtime, &desired.runtime) {
            observed.runtime.clone()
        } else {
            desired.runtime.clone()
        },
        auto_scaling: observed.auto_scaling,
        properties: merged_properties(&observed.properties, &desired.properties),
        ..desired.clone()
    }
}

fn changed_settings(desired: &ApplicationSettings, observed: &ApplicationSettings) -> Vec<String> {
    let mut changed = Vec::new();
    if desired.runtime != observed.runtime && !is_newer_runtime(&observed.runtime, &desired.runtime)
    {
        changed.push(format!(
            "runtime {} → {}",
            observed.runtime, desired.runtime
        ));
    }
    if desired.role_arn != observed.role_arn {
        changed.push("service role".to_owned());
    }
    if desired.code_bucket_arn != observed.code_bucket_arn || desired.code_key != observed.code_key
    {
        changed.push("code location".to_owned());
    }
    if desired.parallelism != observed.parallelism
        || desired.parallelism_per_kpu != observed.parallelism_per_kpu
    {
        changed.push(format!(
            "parallelism {}/{} → {}/{}",
            observed.parallelism,
            observed.parallelism_per_kpu,
            desired.parallelism,
            desired.parallelism_per_kpu
        ));
    }
    if !properties_contain(&observed.properties, &desired.properties) {
        changed.push("properties".to_owned());
    }
    changed
}

/// States in which the application takes no changes.
fn is_transitional(status: &str) -> bool {
    !matches!(status, "READY" | "RUNNING")
}

/// Deletes the application under `deletionPolicy: Delete` (or when the engine changed away from
/// `ManagedFlink`) if this pipeline owns it.
pub async fn delete(api: &dyn FlinkApi, name: &str, owner: &Owner) -> Result<Deletion, Error> {
    let Some(observed) = api.observe(name).await? else {
        return Ok(Deletion::Gone);
    };
    if let Some(kept) = left_in_place(&format!("Flink application {name}"), &observed.tags, owner) {
        return Ok(kept);
    }
    if observed.status == "DELETING" {
        return Ok(Deletion::InProgress(format!(
            "Flink application {name} is DELETING"
        )));
    }
    let create_timestamp = observed.create_timestamp.ok_or_else(|| {
        Error::internal(format!(
            "Flink application {name} has no creation time; DeleteApplication needs it"
        ))
    })?;
    api.apply(&Change::DeleteApplication {
        application: name.to_owned(),
        create_timestamp,
    })
    .await?;
    Ok(Deletion::InProgress(format!(
        "deleting Flink application {name}"
    )))
}

/// [`FlinkApi`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkFlink {
    client: Client,
}

impl SdkFlink {
    pub fn new(client: Client) -> SdkFlink {
        SdkFlink { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn build_error(
    what: &str,
) -> impl FnOnce(aws_sdk_kinesisanalyticsv2::error::BuildError) -> Error + '_ {
    move |error| Error::internal(format!("building {what}: {error}"))
}

fn property_groups(settings: &ApplicationSettings) -> Result<Vec<PropertyGroup>, Error> {
    settings
        .properties
        .iter()
        .map(|(id, map)| {
            PropertyGroup::builder()
                .property_group_id(id)
                .set_property_map(Some(map.clone().into_iter().collect()))
                .build()
                .map_err(build_error("a property group"))
        })
        .collect()
}

/// The configuration part of `UpdateApplication`: code, parallelism (autoscaling as
/// `settings` says) and property groups. Nothing else is named, so the application keeps its
/// monitoring, checkpoint, snapshot and VPC settings.
fn configuration_update(
    settings: &ApplicationSettings,
) -> Result<ApplicationConfigurationUpdate, Error> {
    Ok(ApplicationConfigurationUpdate::builder()
        .application_code_configuration_update(
            ApplicationCodeConfigurationUpdate::builder()
                .code_content_type_update(CodeContentType::Zipfile)
                .code_content_update(
                    CodeContentUpdate::builder()
                        .s3_content_location_update(
                            S3ContentLocationUpdate::builder()
                                .bucket_arn_update(&settings.code_bucket_arn)
                                .file_key_update(&settings.code_key)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .flink_application_configuration_update(
            FlinkApplicationConfigurationUpdate::builder()
                .parallelism_configuration_update(
                    ParallelismConfigurationUpdate::builder()
                        .configuration_type_update(ConfigurationType::Custom)
                        .parallelism_update(settings.parallelism)
                        .parallelism_per_kpu_update(settings.parallelism_per_kpu)
                        .auto_scaling_enabled_update(settings.auto_scaling)
                        .build(),
                )
                .build(),
        )
        .environment_property_updates(
            EnvironmentPropertyUpdates::builder()
                .set_property_groups(Some(property_groups(settings)?))
                .build()
                .map_err(build_error("the environment properties"))?,
        )
        .build())
}

/// The settings of a described application that the spec has no field for, described (only
/// what differs from how the operator creates an application).
fn unmanaged_settings(
    configuration: Option<&aws_sdk_kinesisanalyticsv2::types::ApplicationConfigurationDescription>,
    detail: &aws_sdk_kinesisanalyticsv2::types::ApplicationDetail,
) -> Vec<String> {
    let mut unmanaged = Vec::new();
    let flink = configuration.and_then(|c| c.flink_application_configuration_description());
    if let Some(monitoring) = flink
        .and_then(|f| f.monitoring_configuration_description())
        .filter(|m| m.configuration_type() == Some(&ConfigurationType::Custom))
    {
        unmanaged.push(format!(
            "monitoring (metrics {}, logs {})",
            monitoring.metrics_level().map_or("-", |l| l.as_str()),
            monitoring.log_level().map_or("-", |l| l.as_str())
        ));
    }
    if let Some(checkpoints) = flink
        .and_then(|f| f.checkpoint_configuration_description())
        .filter(|c| c.configuration_type() == Some(&ConfigurationType::Custom))
    {
        unmanaged.push(if checkpoints.checkpointing_enabled() == Some(false) {
            "checkpointing off".to_owned()
        } else {
            format!(
                "checkpoints every {} ms",
                checkpoints.checkpoint_interval().unwrap_or_default()
            )
        });
    }
    if configuration
        .and_then(|c| c.application_snapshot_configuration_description())
        .is_some_and(|s| s.snapshots_enabled())
    {
        unmanaged.push("snapshots".to_owned());
    }
    if configuration
        .and_then(|c| c.application_system_rollback_configuration_description())
        .is_some_and(|r| r.rollback_enabled())
    {
        unmanaged.push("system rollback".to_owned());
    }
    if configuration.is_some_and(|c| !c.vpc_configuration_descriptions().is_empty()) {
        unmanaged.push("VPC configuration".to_owned());
    }
    if !detail.cloud_watch_logging_option_descriptions().is_empty() {
        unmanaged.push("CloudWatch logging".to_owned());
    }
    unmanaged
}

impl SdkFlink {
    async fn observe_inner(&self, name: &str) -> Result<Option<ObservedApplication>, Error> {
        let what = format!("Flink application {name}");
        let Some(output) = self
            .client
            .describe_application()
            .application_name(name)
            .send()
            .await
            .found("kinesisanalytics:DescribeApplication", &what)?
        else {
            return Ok(None);
        };
        let Some(detail) = output.application_detail() else {
            return Ok(None);
        };
        let configuration = detail.application_configuration_description();
        let code = configuration
            .and_then(|c| c.application_code_configuration_description())
            .and_then(|c| c.code_content_description())
            .and_then(|c| c.s3_application_code_location_description());
        let parallelism = configuration
            .and_then(|c| c.flink_application_configuration_description())
            .and_then(|c| c.parallelism_configuration_description());
        let properties = configuration
            .and_then(|c| c.environment_property_descriptions())
            .map(|e| {
                e.property_group_descriptions()
                    .iter()
                    .map(|group| {
                        (
                            group.property_group_id().to_owned(),
                            group
                                .property_map()
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let arn = detail.application_arn().to_owned();
        let tags = self
            .client
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_sdk("kinesisanalytics:ListTagsForResource", &what)?
            .tags()
            .iter()
            .map(|tag| {
                (
                    tag.key().to_owned(),
                    tag.value().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        Ok(Some(ObservedApplication {
            name: detail.application_name().to_owned(),
            arn,
            status: detail.application_status().as_str().to_owned(),
            version_id: detail.application_version_id(),
            create_timestamp: detail.create_timestamp().map(|t| Timestamp {
                seconds: t.secs(),
                nanos: t.subsec_nanos(),
            }),
            settings: ApplicationSettings {
                runtime: detail.runtime_environment().as_str().to_owned(),
                role_arn: detail
                    .service_execution_role()
                    .unwrap_or_default()
                    .to_owned(),
                code_bucket_arn: code.map(|c| c.bucket_arn().to_owned()).unwrap_or_default(),
                code_key: code.map(|c| c.file_key().to_owned()).unwrap_or_default(),
                parallelism: parallelism.and_then(|p| p.parallelism()).unwrap_or(1),
                parallelism_per_kpu: parallelism
                    .and_then(|p| p.parallelism_per_kpu())
                    .unwrap_or(1),
                auto_scaling: parallelism
                    .and_then(|p| p.auto_scaling_enabled())
                    .unwrap_or(false),
                properties,
            },
            unmanaged: unmanaged_settings(configuration, detail),
            tags,
        }))
    }

    async fn apply_inner(&self, change: &Change) -> Result<(), Error> {
        let client = &self.client;
        match change {
            Change::CreateApplication {
                application,
                settings,
                tags,
            } => {
                let code = ApplicationCodeConfiguration::builder()
                    .code_content_type(CodeContentType::Zipfile)
                    .code_content(
                        CodeContent::builder()
                            .s3_content_location(
                                S3ContentLocation::builder()
                                    .bucket_arn(&settings.code_bucket_arn)
                                    .file_key(&settings.code_key)
                                    .build()
                                    .map_err(build_error("the code location"))?,
                            )
                            .build(),
                    )
                    .build()
                    .map_err(build_error("the code configuration"))?;
                let flink = FlinkApplicationConfiguration::builder()
                    .monitoring_configuration(
                        MonitoringConfiguration::builder()
                            .configuration_type(ConfigurationType::Default)
                            .build()
                            .map_err(build_error("the monitoring configuration"))?,
                    )
                    .parallelism_configuration(
                        ParallelismConfiguration::builder()
                            .configuration_type(ConfigurationType::Custom)
                            .parallelism(settings.parallelism)
                            .parallelism_per_kpu(settings.parallelism_per_kpu)
                            .auto_scaling_enabled(false)
                            .build()
                            .map_err(build_error("the parallelism"))?,
                    )
                    .build();
                let configuration = ApplicationConfiguration::builder()
                    .application_code_configuration(code)
                    .flink_application_configuration(flink)
                    .environment_properties(
                        EnvironmentProperties::builder()
                            .set_property_groups(Some(property_groups(settings)?))
                            .build()
                            .map_err(build_error("the environment properties"))?,
                    )
                    .build();
                let tags = tags
                    .iter()
                    .map(|(key, value)| {
                        Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                            .map_err(build_error("a tag"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                client
                    .create_application()
                    .application_name(application)
                    .runtime_environment(RuntimeEnvironment::from(settings.runtime.as_str()))
                    .service_execution_role(&settings.role_arn)
                    .application_configuration(configuration)
                    .set_tags(Some(tags))
                    .send()
                    .await
                    .map_sdk(
                        "kinesisanalytics:CreateApplication",
                        format_args!("Flink application {application}"),
                    )?;
                Ok(())
            }
            Change::TagResource {
                application,
                resource_arn,
                tags,
            } => {
                let tags = tags
                    .iter()
                    .map(|(key, value)| {
                        Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                            .map_err(build_error("a tag"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                client
                    .tag_resource()
                    .resource_arn(resource_arn)
                    .set_tags(Some(tags))
                    .send()
                    .await
                    .map_sdk(
                        "kinesisanalytics:TagResource",
                        format_args!("Flink application {application}"),
                    )?;
                Ok(())
            }
            Change::UpdateApplication {
                application,
                current_version_id,
                settings,
                ..
            } => {
                let update = configuration_update(settings)?;
                client
                    .update_application()
                    .application_name(application)
                    .current_application_version_id(*current_version_id)
                    .service_execution_role_update(&settings.role_arn)
                    .runtime_environment_update(RuntimeEnvironment::from(settings.runtime.as_str()))
                    .application_configuration_update(update)
                    .send()
                    .await
                    .map_sdk(
                        "kinesisanalytics:UpdateApplication",
                        format_args!("Flink application {application}"),
                    )?;
                Ok(())
            }
            Change::StartApplication { application } => {
                client
                    .start_application()
                    .application_name(application)
                    .send()
                    .await
                    .map_sdk(
                        "kinesisanalytics:StartApplication",
                        format_args!("Flink application {application}"),
                    )?;
                Ok(())
            }
            Change::StopApplication { application } => {
                client
                    .stop_application()
                    .application_name(application)
                    .send()
                    .await
                    .map_sdk(
                        "kinesisanalytics:StopApplication",
                        format_args!("Flink application {application}"),
                    )?;
                Ok(())
            }
            Change::DeleteApplication {
                application,
                create_timestamp,
            } => {
                client
                    .delete_application()
                    .application_name(application)
                    .create_timestamp(DateTime::from_secs_and_nanos(
                        create_timestamp.seconds,
                        create_timestamp.nanos,
                    ))
                    .send()
                    .await
                    .map_sdk(
                        "kinesisanalytics:DeleteApplication",
                        format_args!("Flink application {application}"),
                    )?;
                Ok(())
            }
        }
    }
}

impl FlinkApi for SdkFlink {
    fn observe<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedApplication>, Error>> {
        Box::pin(self.observe_inner(name))
    }

    fn apply<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.apply_inner(change))
    }
}

/// The Flink application part (only for `aggregation.engine: ManagedFlink`).
pub struct FlinkApplication;

impl PartReconciler for FlinkApplication {
    const PART: Part = Part::FlinkApplication;
    const CONDITION_TYPE: &'static str = "FlinkApplicationReady";
    const NAME: &'static str = "Flink application";
    const SERVICE: Service = Service::new("kinesisanalyticsv2");
    const DEPENDS_ON: &'static [Part] = &[Part::Buckets, Part::Stream];

    type Desired = DesiredApplication;
    type Observed = ObservedApplication;
    type Change = Change;

    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        clients.flink.apply(change)
    }

    fn needs_settling(change: &Change) -> bool {
        change.needs_settling()
    }

    fn wanted(spec: &ClickHeatmapPipelineSpec) -> bool {
        spec.aggregation.engine == AggregationEngine::ManagedFlink
    }

    fn desired(input: PlanInput<'_>) -> Result<Vec<DesiredApplication>, Error> {
        Ok(desired(input.spec, input.names)?.into_iter().collect())
    }

    fn summary(desired: &[DesiredApplication]) -> String {
        desired
            .iter()
            .map(|app| {
                format!(
                    "Flink application {} is {} and matches the spec",
                    app.name,
                    if app.running {
                        "RUNNING"
                    } else {
                        "READY (paused)"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn observe(
        clients: &AwsClients,
        desired: &DesiredApplication,
    ) -> Result<Option<ObservedApplication>, Error> {
        clients.flink.observe(&desired.name).await
    }

    /// The calls that turn `observed` into `desired`. Empty when they match.
    fn diff(
        desired: &DesiredApplication,
        observed: Option<&ObservedApplication>,
    ) -> Result<Vec<Change>, Error> {
        let name = &desired.name;
        let Some(observed) = observed else {
            let mut changes = vec![Change::CreateApplication {
                application: name.clone(),
                settings: desired.settings.clone(),
                tags: desired.tags.clone(),
            }];
            if desired.running {
                changes.push(Change::StartApplication {
                    application: name.clone(),
                });
            }
            return Ok(changes);
        };
        let what = format!("Flink application {name}");
        check_owner(
            &what,
            &observed.tags,
            &desired.owner,
            desired.adopt_existing,
        )?;
        let mut changes = Vec::new();
        changes.extend(tag_change(&observed.tags, &desired.tags, |tags| {
            Change::TagResource {
                application: name.clone(),
                resource_arn: observed.arn.clone(),
                tags,
            }
        }));
        let wanted = desired.settings_over(&observed.settings);
        let changed = changed_settings(&wanted, &observed.settings);
        if !changed.is_empty() {
            changes.push(Change::UpdateApplication {
                application: name.clone(),
                current_version_id: observed.version_id,
                settings: settings_to_write(&wanted, &observed.settings),
                changed,
            });
        }
        if desired.running && observed.status == "READY" {
            changes.push(Change::StartApplication {
                application: name.clone(),
            });
        } else if !desired.running && observed.status == "RUNNING" {
            changes.push(Change::StopApplication {
                application: name.clone(),
            });
        }
        if !changes.is_empty() && is_transitional(&observed.status) {
            // Tags are metadata and can be set in any state (so adoption is not held up); the
            // rest waits.
            let tags: Vec<Change> = changes
                .iter()
                .filter(|c| matches!(c, Change::TagResource { .. }))
                .cloned()
                .collect();
            if !tags.is_empty() {
                return Ok(tags);
            }
            return Err(Error::Busy {
                resource: what,
                message: format!(
                    "it is {}; {} change(s) wait until it is READY or RUNNING",
                    observed.status,
                    changes.len()
                ),
            });
        }
        Ok(changes)
    }

    /// What the application has of its own: a newer runtime, autoscaling, other property groups
    /// and keys, and the settings the spec has no field for.
    fn kept(desired: &DesiredApplication, observed: Option<&ObservedApplication>) -> Vec<String> {
        let Some(observed) = observed else {
            return Vec::new();
        };
        let ours = &desired.settings;
        let theirs = &observed.settings;
        let mut said = Vec::new();
        if is_newer_runtime(&theirs.runtime, &ours.runtime) {
            said.push(format!(
                "runtime {} (the spec says {}; Managed Flink cannot downgrade in place)",
                theirs.runtime, ours.runtime
            ));
        }
        if theirs.auto_scaling {
            said.push("autoscaling".to_owned());
        }
        for (id, map) in &theirs.properties {
            match ours.properties.get(id) {
                None => said.push(format!("property group {id}")),
                Some(own) => {
                    let extra: Vec<&str> = map
                        .keys()
                        .filter(|key| !own.contains_key(*key))
                        .map(String::as_str)
                        .collect();
                    if !extra.is_empty() {
                        said.push(format!("properties {id} [{}]", extra.join(", ")));
                    }
                }
            }
        }
        said.extend(observed.unmanaged.iter().cloned());
        if said.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "Flink application {} {}",
            desired.name,
            said.join(", ")
        )]
    }

    /// Ready when running (or stopped, when paused on purpose).
    fn readiness(
        desired: &DesiredApplication,
        observed: Option<&ObservedApplication>,
    ) -> Readiness {
        let wanted = if desired.running { "RUNNING" } else { "READY" };
        match observed {
            Some(app) if app.status == wanted => Readiness::Ready,
            Some(app) => Readiness::Provisioning(format!(
                "Flink application {} is {} (waiting for {wanted})",
                app.name, app.status
            )),
            None => Readiness::Provisioning("the Flink application does not exist yet".to_owned()),
        }
    }

    fn resources(
        desired: &DesiredApplication,
        observed: Option<&ObservedApplication>,
        into: &mut PipelineResources,
    ) {
        into.flink_application_arn =
            Some(observed.map_or_else(|| desired.arn.clone(), |o| o.arn.clone()));
    }

    fn record(from: &PipelineResources, into: &mut PipelineResources) {
        into.flink_application_arn
            .clone_from(&from.flink_application_arn);
    }

    /// Engine switched away from `ManagedFlink`: the application this pipeline made is deleted
    /// (if it is still tagged by the pipeline and not already being deleted).
    async fn leftover(clients: &AwsClients, input: PlanInput<'_>) -> Option<Leftover> {
        let previous = input.previous.flink_application_arn.as_deref()?;
        let name = name_from_arn(previous).unwrap_or(previous);
        let found = clients.flink.observe(name).await.map(|observed| {
            observed
                .filter(|app| is_ours(&app.tags, &input.names.owner))
                .map(|app| Removal {
                    changes: match app.create_timestamp {
                        Some(create_timestamp) if app.status != "DELETING" => {
                            vec![
                                Change::DeleteApplication {
                                    application: app.name.clone(),
                                    create_timestamp,
                                }
                                .into(),
                            ]
                        }
                        _ => Vec::new(),
                    },
                    message: format!(
                        "removing Flink application {name} (the engine is no longer ManagedFlink)"
                    ),
                    resources: PipelineResources {
                        flink_application_arn: Some(app.arn),
                        ..PipelineResources::default()
                    },
                })
        });
        Some(Leftover {
            summary: "the aggregation does not run on Managed Flink".to_owned(),
            found,
        })
    }

    async fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        _done: &[DeleteStep],
    ) -> Result<Vec<(String, Deletion)>, Error> {
        let owner = &input.names.owner;
        let name = if Self::wanted(input.spec) {
            flink_application_name(input.spec, owner)
        } else {
            match input
                .previous
                .flink_application_arn
                .as_deref()
                .and_then(name_from_arn)
            {
                Some(name) => name.to_owned(),
                None => return Ok(Vec::new()),
            }
        };
        let deletion = delete(clients.flink.as_ref(), &name, owner).await?;
        Ok(vec![(format!("Flink application {name}"), deletion)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names_for};

    fn flink_pipeline() -> clickheatmap_crds::ClickHeatmapPipeline {
        let mut pipeline = fixture("pipeline-full.yaml");
        pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
        pipeline
    }

    fn in_sync(desired: &DesiredApplication) -> ObservedApplication {
        ObservedApplication {
            name: desired.name.clone(),
            arn: desired.arn.clone(),
            status: if desired.running { "RUNNING" } else { "READY" }.into(),
            version_id: 4,
            create_timestamp: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            settings: desired.settings.clone(),
            unmanaged: Vec::new(),
            tags: desired.tags.clone(),
        }
    }

    #[test]
    fn only_the_managed_flink_engine_wants_an_application() {
        let pipeline = fixture("pipeline-full.yaml");
        assert_eq!(desired(&pipeline.spec, &names_for(&pipeline)), Ok(None));
    }

    #[test]
    fn desired_from_the_full_example() {
        let pipeline = flink_pipeline();
        let app = desired(&pipeline.spec, &names_for(&pipeline))
            .expect("valid")
            .expect("flink");
        assert_eq!(app.name, "shop-full-heatmap");
        assert_eq!(
            app.arn,
            "arn:aws:kinesisanalytics:ap-northeast-2:123456789012:application/shop-full-heatmap"
        );
        assert_eq!(app.settings.runtime, "FLINK-1_18");
        assert_eq!(
            app.settings.code_bucket_arn,
            "arn:aws:s3:::shop-full-heatmap-code-123456789012"
        );
        assert_eq!(app.settings.code_key, "flink/heatmap-aggregator-1.0.jar");
        assert_eq!(app.settings.parallelism, 2);
        assert_eq!(app.settings.parallelism_per_kpu, 1);
        let group = &app.settings.properties[PROPERTY_GROUP];
        assert_eq!(
            group["KINESIS_STREAM_ARN"],
            "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-full-clicks"
        );
        assert_eq!(
            group["CURATED_S3_PATH"],
            "s3://shop-full-heatmap-curated-123456789012/curated/curated_heatmap/"
        );
        assert_eq!(group["AWS_REGION"], "ap-northeast-2");
        // The full example: 5-minute windows, 1 minute of lateness, a 32 x 18 grid.
        assert_eq!(group["WINDOW_SIZE_MS"], "300000");
        assert_eq!(group["ALLOWED_LATENESS_MS"], "60000");
        assert_eq!(
            (group["GRID_COLUMNS"].as_str(), group["GRID_ROWS"].as_str()),
            ("32", "18")
        );
        assert!(app.running);
        assert_eq!(name_from_arn(&app.arn), Some("shop-full-heatmap"));
    }

    #[test]
    fn default_name_and_missing_settings() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
        let error = desired(&pipeline.spec, &names_for(&pipeline)).expect_err("invalid");
        assert_eq!(error.reason(), crate::error::Reason::InvalidSpec);
        pipeline.spec.aggregation.flink = flink_pipeline().spec.aggregation.flink;
        if let Some(flink) = pipeline.spec.aggregation.flink.as_mut() {
            flink.application_name = None;
        }
        let app = desired(&pipeline.spec, &names_for(&pipeline))
            .expect("valid")
            .expect("flink");
        assert_eq!(app.name, "shop-aggregator");
    }

    #[test]
    fn lifecycle_decisions() {
        let pipeline = flink_pipeline();
        let app = desired(&pipeline.spec, &names_for(&pipeline))
            .expect("valid")
            .expect("flink");
        let ops = |changes: Vec<Change>| -> Vec<String> {
            changes
                .iter()
                .map(|c| {
                    serde_json::to_value(c).expect("json")["op"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(
            ops(FlinkApplication::diff(&app, None).expect("diff")),
            ["CreateApplication", "StartApplication"]
        );
        assert_eq!(
            FlinkApplication::diff(&app, Some(&in_sync(&app))),
            Ok(vec![])
        );
        let mut observed = in_sync(&app);
        observed.status = "READY".into();
        assert_eq!(
            ops(FlinkApplication::diff(&app, Some(&observed)).expect("diff")),
            ["StartApplication"]
        );
        let mut paused = app.clone();
        paused.running = false;
        observed.status = "RUNNING".into();
        assert_eq!(
            ops(FlinkApplication::diff(&paused, Some(&observed)).expect("diff")),
            ["StopApplication"]
        );
        observed.settings.parallelism = 8;
        let changes = FlinkApplication::diff(&app, Some(&observed)).expect("diff");
        assert_eq!(
            changes[0].to_string(),
            "update Flink application shop-full-heatmap (version 4): parallelism 8/1 → 2/1"
        );
        observed.status = "UPDATING".into();
        let error = FlinkApplication::diff(&app, Some(&observed)).expect_err("busy");
        assert!(error.is_retryable());
    }

    #[test]
    fn an_existing_applications_own_settings_are_kept() {
        let pipeline = flink_pipeline();
        let app = desired(&pipeline.spec, &names_for(&pipeline))
            .expect("valid")
            .expect("flink");
        let mut observed = in_sync(&app);
        observed.settings.runtime = "FLINK-1_20".into();
        observed.settings.auto_scaling = true;
        observed
            .settings
            .properties
            .entry(PROPERTY_GROUP.into())
            .or_default()
            .insert("LOG_SAMPLE".into(), "0.01".into());
        observed.settings.properties.insert(
            "TeamProperties".into(),
            BTreeMap::from([("ALERTS".into(), "on".into())]),
        );
        observed.unmanaged = vec!["snapshots".into()];
        // A newer runtime, autoscaling, other groups and keys: none of it is drift.
        assert_eq!(FlinkApplication::diff(&app, Some(&observed)), Ok(vec![]));
        assert_eq!(
            FlinkApplication::kept(&app, Some(&observed)),
            [
                "Flink application shop-full-heatmap runtime FLINK-1_20 (the spec says FLINK-1_18; Managed Flink cannot downgrade in place), autoscaling, properties FlinkApplicationProperties [LOG_SAMPLE], property group TeamProperties, snapshots"
            ]
        );
        // An older runtime is upgraded.
        let mut older = observed.clone();
        older.settings.runtime = "FLINK-1_15".into();
        let changes = FlinkApplication::diff(&app, Some(&older)).expect("diff");
        assert!(
            changes[0]
                .to_string()
                .ends_with("runtime FLINK-1_15 → FLINK-1_18")
        );
        // A declared setting drifts: the update writes it and keeps everything else.
        observed.settings.parallelism = 8;
        let changes = FlinkApplication::diff(&app, Some(&observed)).expect("diff");
        let [Change::UpdateApplication { settings, .. }] = changes.as_slice() else {
            panic!("{changes:?}");
        };
        assert_eq!(settings.parallelism, 2);
        assert_eq!(settings.runtime, "FLINK-1_20");
        assert!(settings.auto_scaling);
        assert_eq!(settings.properties[PROPERTY_GROUP]["LOG_SAMPLE"], "0.01");
        assert_eq!(
            settings.properties[PROPERTY_GROUP]["KINESIS_STREAM_ARN"],
            app.settings.properties[PROPERTY_GROUP]["KINESIS_STREAM_ARN"]
        );
        assert_eq!(settings.properties["TeamProperties"]["ALERTS"], "on");
        // The request names nothing the spec does not declare.
        let update = configuration_update(settings).expect("update");
        let flink = update
            .flink_application_configuration_update()
            .expect("flink");
        assert!(flink.monitoring_configuration_update().is_none());
        assert!(flink.checkpoint_configuration_update().is_none());
        assert_eq!(
            flink
                .parallelism_configuration_update()
                .and_then(|p| p.auto_scaling_enabled_update()),
            Some(true)
        );
        assert!(update.application_snapshot_configuration_update().is_none());
        assert!(update.vpc_configuration_updates().is_empty());
        assert!(
            update
                .application_system_rollback_configuration_update()
                .is_none()
        );
        assert_eq!(
            update
                .environment_property_updates()
                .map(|e| e.property_groups().len()),
            Some(2)
        );
    }

    #[test]
    fn a_foreign_application_conflicts() {
        let pipeline = flink_pipeline();
        let app = desired(&pipeline.spec, &names_for(&pipeline))
            .expect("valid")
            .expect("flink");
        let mut observed = in_sync(&app);
        observed.tags = Owner::new("default", "other").tags();
        let error = FlinkApplication::diff(&app, Some(&observed)).expect_err("conflict");
        assert_eq!(error.reason(), crate::error::Reason::Conflict);
    }
}
