//! The aggregator workload a pipeline wants in Kubernetes, as pure functions, and the building
//! blocks (labels, owner, restricted security contexts) that the collector and viewer share.
//!
//! With `spec.aggregation.engine: Deployment` a pipeline owns four objects, all named
//! `<name>-aggregator` and all owned by the custom resource (`controller: true`), so that
//! Kubernetes' garbage collector removes them with it:
//!
//! * a ConfigMap with `aggregator.json`, the serialised [`AggregatorConfig`];
//! * a ServiceAccount (annotated with `eks.amazonaws.com/role-arn` when the spec names a role);
//! * a headless Service that gives every replica a stable DNS name, which the viewer's live mode
//!   uses to ask each replica for the windows it holds open;
//! * a StatefulSet: replicas split the shards by their stable ordinal (`POD_NAME` ends in it),
//!   which a Deployment cannot give.
//!
//! With `ManagedFlink` none of them is wanted; [`desired`] returns `None` and the controller
//! deletes what is left by label.

use std::collections::BTreeMap;

use clickheatmap_crds::{
    AggregationEngine, AggregatorConfig, ClickHeatmapPipeline, Duration, EnhancedFanOutConfig,
    GridConfig, KinesisSourceConfig, OutputConfig, ReplicasConfig, ShardAssignment, SourceConfig,
    WindowConfig,
};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretEnvSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::error::Error;

/// The key of the aggregator configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "aggregator.json";
/// Where the ConfigMap is mounted in the aggregator container.
pub const CONFIG_DIR: &str = "/etc/clickheatmap";
/// The label every child of a pipeline carries (value: the pipeline's name).
pub const PIPELINE_LABEL: &str = "clickheatmap.io/pipeline";
/// The `app.kubernetes.io/managed-by` value, also the server-side apply field manager.
pub const MANAGER: &str = "clickheatmap-operator";
/// The metrics / health port of the aggregator.
pub const METRICS_PORT: i32 = 9090;
/// The non-root user the aggregator image runs as (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;
/// The annotation IRSA reads.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// Where the image keeps the aggregator binary (one image holds every binary; its entrypoint is
/// the operator).
pub const AGGREGATOR_BINARY: &str = "/usr/local/bin/clickheatmap-aggregator";

/// What `AggregatorReady` says while `replicas` is 0.
pub const PAUSED_NOTE: &str = "paused (aggregation.replicas is 0): clicks wait in the stream for \
    as long as it retains them, and raising replicas resumes from the checkpoints";

/// The workloads' image pull policy.
pub const IMAGE_PULL_POLICY: &str = "IfNotPresent";

/// The pod-template annotation that holds a hash of `aggregator.json`.
pub const CONFIG_HASH_ANNOTATION: &str = "clickheatmap.io/config-hash";

/// FNV-1a (64 bit) as hex: stable across builds and platforms, enough to notice a change.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// How the workloads reach an AWS emulator (LocalStack, moto, MinIO): the operator's
/// `--aws-endpoint-url` and `--aws-credentials-secret`. Empty (the default) against AWS, where the
/// SDK finds every endpoint and IRSA or Pod Identity gives each workload its role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmulatorAws {
    pub endpoint_url: Option<String>,
    /// A Secret in the pipeline's namespace with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret: Option<String>,
}

impl EmulatorAws {
    /// Adds the emulator's endpoint and credentials to every container of `pod`.
    pub fn apply_to(&self, pod: &mut PodSpec) {
        let mut env = Vec::new();
        if let Some(url) = &self.endpoint_url {
            env.push(super::workload::env("AWS_ENDPOINT_URL", url.clone()));
            // object_store (the aggregator's and viewer's S3 client) refuses plain HTTP unless
            // told; the AWS SDK needs no such flag.
            if url.starts_with("http://") {
                env.push(super::workload::env("AWS_ALLOW_HTTP", "true"));
            }
            // No instance metadata service to ask for credentials or a region.
            env.push(super::workload::env("AWS_EC2_METADATA_DISABLED", "true"));
        }
        for container in &mut pod.containers {
            container
                .env
                .get_or_insert_with(Vec::new)
                .extend(env.iter().cloned());
            if let Some(secret) = &self.credentials_secret {
                container
                    .env_from
                    .get_or_insert_with(Vec::new)
                    .push(EnvFromSource {
                        secret_ref: Some(SecretEnvSource {
                            name: secret.clone(),
                            optional: Some(false),
                        }),
                        ..EnvFromSource::default()
                    });
            }
        }
    }
}

/// Applies the spec's `workloads` settings to a pod template the operator built: extra
/// environment variables (replacing the operator's of the same name), pod labels and annotations
/// (the operator's own keys win: its selectors and the configuration hash depend on them), node
/// selector, tolerations and priority class.
pub fn apply_workload_settings(
    template: &mut PodTemplateSpec,
    settings: &clickheatmap_crds::WorkloadsSpec,
) {
    if settings.is_empty() {
        return;
    }
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    for (target, extra) in [
        (&mut metadata.labels, &settings.pod_labels),
        (&mut metadata.annotations, &settings.pod_annotations),
    ] {
        if extra.is_empty() {
            continue;
        }
        let mut merged = extra.clone();
        merged.extend(target.take().unwrap_or_default());
        *target = Some(merged);
    }
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    for container in &mut pod.containers {
        let env = container.env.get_or_insert_with(Vec::new);
        for extra in &settings.extra_env {
            match env.iter_mut().find(|var| var.name == extra.name) {
                Some(existing) => *existing = extra.clone(),
                None => env.push(extra.clone()),
            }
        }
    }
    if !settings.node_selector.is_empty() {
        pod.node_selector = Some(settings.node_selector.clone());
    }
    if !settings.tolerations.is_empty() {
        pod.tolerations = Some(settings.tolerations.clone());
    }
    if settings.priority_class_name.is_some() {
        pod.priority_class_name = settings.priority_class_name.clone();
    }
}

/// The aggregator objects of one pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub config_map: ConfigMap,
    pub service_account: ServiceAccount,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// The name of every aggregator object of a pipeline.
pub fn aggregator_name(pipeline_name: &str) -> String {
    format!("{pipeline_name}-{AGGREGATOR}")
}

/// The component name of the aggregator (label value and name suffix).
pub const AGGREGATOR: &str = "aggregator";

/// The labels of every aggregator object (and its pods).
pub fn labels(pipeline_name: &str) -> BTreeMap<String, String> {
    component_labels(pipeline_name, AGGREGATOR)
}

/// The labels of every object of one component (`aggregator`, `collector`, `viewer`).
pub fn component_labels(pipeline_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            format!("clickheatmap-{component}"),
        ),
        (
            "app.kubernetes.io/instance".to_owned(),
            pipeline_name.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (PIPELINE_LABEL.to_owned(), pipeline_name.to_owned()),
    ])
}

/// The label selector that finds every child of a pipeline (for orphan deletion).
pub fn children_selector(pipeline_name: &str) -> String {
    format!("{PIPELINE_LABEL}={pipeline_name},app.kubernetes.io/managed-by={MANAGER}")
}

/// The labels a component's selectors match (a stable subset of [`component_labels`]).
pub fn selector_labels(pipeline_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            format!("clickheatmap-{component}"),
        ),
        (PIPELINE_LABEL.to_owned(), pipeline_name.to_owned()),
    ])
}

/// The owner reference to the pipeline (controller, blocks owner deletion).
pub fn owner_reference(pipeline: &ClickHeatmapPipeline) -> Result<OwnerReference, Error> {
    pipeline.controller_owner_ref(&()).ok_or_else(|| {
        Error::InvalidSpec("the pipeline has no name or uid to own its aggregator".to_owned())
    })
}

/// The pipeline's name, which every child's name starts with.
pub(crate) fn pipeline_name(pipeline: &ClickHeatmapPipeline) -> Result<String, Error> {
    pipeline
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::InvalidSpec("the pipeline has no metadata.name".to_owned()))
}

/// Metadata of the child `<pipeline>-<component>`: labels, namespace, owner.
pub(crate) fn child_metadata(
    pipeline: &ClickHeatmapPipeline,
    owner: &OwnerReference,
    component: &str,
    annotations: Option<BTreeMap<String, String>>,
) -> Result<ObjectMeta, Error> {
    let name = pipeline_name(pipeline)?;
    Ok(ObjectMeta {
        name: Some(format!("{name}-{component}")),
        namespace: pipeline.metadata.namespace.clone(),
        labels: Some(component_labels(&name, component)),
        annotations,
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    })
}

fn metadata(
    pipeline: &ClickHeatmapPipeline,
    owner: &OwnerReference,
    annotations: Option<BTreeMap<String, String>>,
) -> Result<ObjectMeta, Error> {
    child_metadata(pipeline, owner, AGGREGATOR, annotations)
}

/// A component's ServiceAccount, annotated for IRSA when a role is given.
pub(crate) fn service_account(
    pipeline: &ClickHeatmapPipeline,
    owner: &OwnerReference,
    component: &str,
    role_arn: Option<&String>,
) -> Result<ServiceAccount, Error> {
    let annotations =
        role_arn.map(|arn| BTreeMap::from([(ROLE_ARN_ANNOTATION.to_owned(), arn.clone())]));
    Ok(ServiceAccount {
        metadata: child_metadata(pipeline, owner, component, annotations)?,
        ..ServiceAccount::default()
    })
}

/// The restricted Pod Security Standard for a container: non-root, read-only root filesystem,
/// no privilege escalation, no capabilities, RuntimeDefault seccomp.
pub(crate) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// The restricted Pod Security Standard for a pod.
pub(crate) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// An HTTP GET probe on a named container port.
pub(crate) fn http_probe(port: &str, path: &str, initial_delay_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay_seconds),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// A named TCP container port.
pub(crate) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// The read-only mount of `aggregator.json` at [`CONFIG_DIR`].
pub(crate) fn config_mount() -> VolumeMount {
    VolumeMount {
        name: "config".to_owned(),
        mount_path: CONFIG_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The volume of [`config_mount`]: the ConfigMap `config_map`.
pub(crate) fn config_volume(config_map: String) -> Volume {
    Volume {
        name: "config".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A plain environment variable.
pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The DNS name of aggregator replica `ordinal` through the headless Service.
pub fn aggregator_pod_host(pipeline_name: &str, namespace: &str, ordinal: i32) -> String {
    let aggregator = aggregator_name(pipeline_name);
    format!("{aggregator}-{ordinal}.{aggregator}.{namespace}.svc")
}

fn to_u16(value: i32, field: &str) -> Result<u16, Error> {
    u16::try_from(value).map_err(|_| {
        Error::InvalidSpec(format!("{field} must be between 0 and 65535, got {value}"))
    })
}

/// The aggregator configuration for a pipeline (validated).
pub fn aggregator_config(pipeline: &ClickHeatmapPipeline) -> Result<AggregatorConfig, Error> {
    let spec = &pipeline.spec;
    let name = pipeline
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::InvalidSpec("the pipeline has no metadata.name".to_owned()))?;
    let replicas = u32::try_from(spec.aggregation.replicas).map_err(|_| {
        Error::InvalidSpec(format!(
            "aggregation.replicas must not be negative, got {}",
            spec.aggregation.replicas
        ))
    })?;
    let defaults = AggregatorConfig::default();
    let enhanced_fan_out = spec
        .aggregation
        .enhanced_fan_out
        .then(|| EnhancedFanOutConfig {
            consumer_name: crate::names::fan_out_consumer_name(&name),
        });
    let config = AggregatorConfig {
        writer_id: name,
        source: SourceConfig::Kinesis(KinesisSourceConfig {
            stream_name: spec.stream.name.clone(),
            region: Some(spec.region.clone()),
            start_position: Default::default(),
            max_records_per_call: 10_000,
            response_budget_mib: KinesisSourceConfig::DEFAULT_RESPONSE_BUDGET_MIB,
            idle_poll_interval: Duration::from_secs(1),
            shard_discovery_interval: Duration::from_secs(30),
            idle_watermark_delay: Duration::from_secs(5),
            enhanced_fan_out,
        }),
        window: WindowConfig {
            size: spec.aggregation.window,
            allowed_lateness: spec.aggregation.allowed_lateness,
        },
        grid: GridConfig {
            columns: to_u16(spec.aggregation.grid.columns, "aggregation.grid.columns")?,
            rows: to_u16(spec.aggregation.grid.rows, "aggregation.grid.rows")?,
        },
        output: OutputConfig {
            root: format!("s3://{}/curated/", spec.buckets.curated),
            table: spec.catalog.table.clone(),
            dead_letter: None,
        },
        limits: defaults.limits,
        checkpoint: defaults.checkpoint,
        metrics_address: format!("0.0.0.0:{METRICS_PORT}"),
        // Leases: a replica that dies has its shards taken over by the others within
        // `leaseDuration`, instead of waiting for its pod to come back.
        replicas: ReplicasConfig {
            count: replicas.max(1),
            index: 0,
            assignment: ShardAssignment::Leases,
            ..ReplicasConfig::default()
        },
    };
    config
        .validate()
        .map_err(|error| Error::InvalidSpec(format!("aggregator configuration: {error}")))?;
    Ok(config)
}

/// The aggregator objects a pipeline wants; `None` when its engine is not `Deployment`.
pub fn desired(
    pipeline: &ClickHeatmapPipeline,
    default_image: &str,
) -> Result<Option<Workload>, Error> {
    if pipeline.spec.aggregation.engine != AggregationEngine::Deployment {
        return Ok(None);
    }
    let name = pipeline_name(pipeline)?;
    let owner = owner_reference(pipeline)?;
    let config = aggregator_config(pipeline)?;
    let json = serde_json::to_string_pretty(&config)
        .map_err(|error| Error::internal(format!("serialising the aggregator config: {error}")))?;

    let config_hash = fnv1a_hex(json.as_bytes());
    let config_map = ConfigMap {
        metadata: metadata(pipeline, &owner, None)?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), json)])),
        ..ConfigMap::default()
    };

    let service_account = service_account(
        pipeline,
        &owner,
        AGGREGATOR,
        pipeline.spec.aggregation.service_account_role_arn.as_ref(),
    )?;
    let service = Service {
        metadata: metadata(pipeline, &owner, None)?,
        spec: Some(ServiceSpec {
            // Headless: one DNS name per replica, no load balancing (each holds other shards).
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(&name, AGGREGATOR)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("metrics".to_owned()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let image = pipeline
        .spec
        .aggregation
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_owned());
    let container = Container {
        name: AGGREGATOR.to_owned(),
        image: Some(image),
        // Explicit: a version tag is pulled once per node, and a pre-loaded image runs offline.
        image_pull_policy: Some(IMAGE_PULL_POLICY.to_owned()),
        command: Some(vec![AGGREGATOR_BINARY.to_owned()]),
        args: Some(vec![
            "run".to_owned(),
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        env: Some(vec![
            EnvVar {
                name: "POD_NAME".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".to_owned(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            env("AWS_REGION", pipeline.spec.region.clone()),
            env("CLICKHEATMAP_LOG_FORMAT", "json"),
        ]),
        ports: Some(vec![container_port("metrics", METRICS_PORT)]),
        liveness_probe: Some(http_probe("metrics", "/healthz", 10)),
        readiness_probe: Some(http_probe("metrics", "/readyz", 5)),
        resources: pipeline.spec.aggregation.resources.clone(),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![config_mount()]),
        ..Container::default()
    };
    let aggregator = aggregator_name(&name);
    let stateful_set = StatefulSet {
        metadata: metadata(pipeline, &owner, None)?,
        spec: Some(StatefulSetSpec {
            // 0 pauses: no pod reads the stream, the checkpoints stay where they are.
            replicas: Some(pipeline.spec.aggregation.replicas.max(0)),
            // The headless Service above: stable DNS names for the live endpoint.
            service_name: Some(aggregator.clone()),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name, AGGREGATOR)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    // A changed configuration rolls the pods (the file is read at start).
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(aggregator.clone()),
                    automount_service_account_token: Some(true),
                    security_context: Some(restricted_pod()),
                    containers: vec![container],
                    volumes: Some(vec![config_volume(aggregator)]),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    Ok(Some(Workload {
        config_map,
        service_account,
        service,
        stateful_set,
    }))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use clickheatmap_crds::ClickHeatmapPipeline;

    /// An example manifest from `examples/`, as the API server would return it.
    pub(crate) fn fixture(file: &str) -> ClickHeatmapPipeline {
        let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("fixture readable");
        let mut pipeline: ClickHeatmapPipeline =
            serde_norway::from_str(&text).expect("fixture parses");
        pipeline
            .metadata
            .namespace
            .get_or_insert_with(|| "analytics".to_owned());
        pipeline.metadata.uid = Some("0000-uid".to_owned());
        pipeline.metadata.generation = Some(3);
        pipeline
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::fixture;
    use super::*;

    fn workload(file: &str) -> Workload {
        desired(&fixture(file), "registry.example.com/agg:default")
            .expect("desired")
            .expect("Deployment engine")
    }

    #[test]
    fn minimal_has_secure_defaults_labels_and_owner() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let w = workload("pipeline-minimal.yaml");
        let sts_spec = w.stateful_set.spec.as_ref().expect("spec");
        assert_eq!(sts_spec.replicas, Some(1));
        let pod = sts_spec.template.spec.as_ref().expect("pod spec");
        let pod_sc = pod.security_context.as_ref().expect("pod sc");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(pod_sc.run_as_user, Some(65532));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example.com/agg:default"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.args.as_deref(),
            Some(
                &[
                    "run".to_owned(),
                    "--config".to_owned(),
                    "/etc/clickheatmap/aggregator.json".to_owned()
                ][..]
            )
        );
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let env = c.env.as_ref().expect("env");
        assert!(env.iter().any(|e| {
            e.name == "POD_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str())
                    == Some("metadata.name")
        }));
        assert!(
            env.iter()
                .any(|e| e.name == "AWS_REGION" && e.value.as_deref() == Some("ap-northeast-2"))
        );
        assert_eq!(c.ports.as_ref().expect("ports")[0].container_port, 9090);
        let probe_path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(pod.service_account_name.as_deref(), Some("shop-aggregator"));
        assert!(w.service_account.metadata.annotations.is_none());

        for meta in [
            &w.config_map.metadata,
            &w.service_account.metadata,
            &w.stateful_set.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some("shop-aggregator"));
            assert_eq!(meta.namespace.as_deref(), Some("analytics"));
            let labels = meta.labels.as_ref().expect("labels");
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/component",
            ] {
                assert!(labels.contains_key(key), "{key}");
            }
            assert_eq!(labels.get(PIPELINE_LABEL).map(String::as_str), Some("shop"));
            let owners = meta.owner_references.as_ref().expect("owners");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "ClickHeatmapPipeline");
            assert_eq!(owners[0].name, "shop");
            assert_eq!(owners[0].uid, "0000-uid");
            assert_eq!(owners[0].controller, Some(true));
        }
        // The selector is a subset of the pod labels.
        let pod_labels = sts_spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("pod labels");
        for (k, v) in sts_spec.selector.match_labels.as_ref().expect("selector") {
            assert_eq!(pod_labels.get(k), Some(v));
        }
        let _ = pipeline;
    }

    #[test]
    fn config_json_round_trips_and_validates() {
        let w = workload("pipeline-minimal.yaml");
        let json = &w.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        let config = AggregatorConfig::from_json(json).expect("valid config");
        assert_eq!(config.writer_id, "shop");
        assert_eq!(config.metrics_address, "0.0.0.0:9090");
        assert_eq!(
            config.output.root,
            "s3://shop-heatmap-curated-123456789012/curated/"
        );
        assert_eq!(config.output.table, "curated_heatmap");
        assert_eq!(config.replicas.count, 1);
        assert_eq!(config.window.size, Duration::from_secs(60));
        assert_eq!((config.grid.columns, config.grid.rows), (20, 20));
        match &config.source {
            SourceConfig::Kinesis(k) => {
                assert_eq!(k.stream_name, "shop-clicks");
                assert_eq!(k.region.as_deref(), Some("ap-northeast-2"));
                assert_eq!(k.enhanced_fan_out, None);
            }
            other => panic!("unexpected source {other:?}"),
        }
    }

    #[test]
    fn full_uses_spec_image_role_replicas_and_resources() {
        let pipeline = fixture("pipeline-full.yaml");
        let w = workload("pipeline-full.yaml");
        let sts_spec = w.stateful_set.spec.as_ref().expect("spec");
        assert_eq!(sts_spec.replicas, Some(2));
        let c = &sts_spec.template.spec.as_ref().expect("pod").containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/clickheatmap/aggregator:0.1.0")
        );
        assert_eq!(c.resources, pipeline.spec.aggregation.resources);
        assert!(c.resources.is_some());
        assert_eq!(
            w.service_account
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROLE_ARN_ANNOTATION))
                .map(String::as_str),
            Some("arn:aws:iam::123456789012:role/shop-heatmap-aggregator")
        );
        let json = &w.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        let config = AggregatorConfig::from_json(json).expect("valid config");
        assert_eq!(config.replicas.count, 2);
        assert_eq!(config.window.size, Duration::from_secs(300));
        assert_eq!(config.window.allowed_lateness, Duration::from_secs(60));
        assert_eq!((config.grid.columns, config.grid.rows), (32, 18));
        let SourceConfig::Kinesis(kinesis) = &config.source else {
            panic!("unexpected source {:?}", config.source);
        };
        // The pipeline's own consumer, the one the IAM policy names.
        assert_eq!(
            kinesis
                .enhanced_fan_out
                .as_ref()
                .map(|fan_out| fan_out.consumer_name.as_str()),
            Some("shop-full-aggregator")
        );
    }

    #[test]
    fn a_config_change_changes_the_pod_template() {
        let hash = |w: &Workload| {
            w.stateful_set
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
                .expect("hash annotation")
        };
        let mut pipeline = fixture("pipeline-minimal.yaml");
        let before = desired(&pipeline, "img").expect("ok").expect("some");
        assert_eq!(
            hash(&before),
            hash(&desired(&pipeline, "img").expect("ok").expect("some"))
        );
        pipeline.spec.aggregation.grid.columns = 40;
        let after = desired(&pipeline, "img").expect("ok").expect("some");
        assert_ne!(hash(&before), hash(&after));
    }

    #[test]
    fn the_platform_teams_settings_reach_the_pods_without_breaking_the_operators() {
        let mut w = workload("pipeline-minimal.yaml");
        let settings: clickheatmap_crds::WorkloadsSpec = serde_norway::from_str(
            r"
extraEnv: [{name: RUST_LOG, value: debug}, {name: AWS_REGION, value: eu-west-1}]
podLabels: {team: web, app.kubernetes.io/name: hijack}
podAnnotations: {prometheus.io/scrape: 'true'}
nodeSelector: {pool: data}
tolerations: [{key: dedicated, operator: Equal, value: data, effect: NoSchedule}]
priorityClassName: heatmap
",
        )
        .expect("settings");
        let template = &mut w.stateful_set.spec.as_mut().expect("spec").template;
        apply_workload_settings(template, &settings);
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(labels["team"], "web");
        assert_eq!(
            labels["app.kubernetes.io/name"], "clickheatmap-aggregator",
            "ours win"
        );
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .expect("annotations");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        let pod = template.spec.as_ref().expect("pod");
        let env = pod.containers[0].env.as_ref().expect("env");
        let value = |name: &str| {
            let found: Vec<_> = env.iter().filter(|e| e.name == name).collect();
            assert_eq!(
                found.len(),
                1,
                "{name} once: server-side apply refuses duplicates"
            );
            found[0].value.clone()
        };
        assert_eq!(value("RUST_LOG").as_deref(), Some("debug"));
        assert_eq!(
            value("AWS_REGION").as_deref(),
            Some("eu-west-1"),
            "replaced on purpose"
        );
        assert_eq!(
            pod.node_selector.as_ref().map(|n| n["pool"].as_str()),
            Some("data")
        );
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        assert_eq!(pod.priority_class_name.as_deref(), Some("heatmap"));
    }

    #[test]
    fn zero_replicas_stop_every_pod() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.aggregation.replicas = 0;
        let w = desired(&pipeline, "img").expect("ok").expect("some");
        assert_eq!(
            w.stateful_set.spec.as_ref().and_then(|s| s.replicas),
            Some(0)
        );
    }

    #[test]
    fn an_emulator_endpoint_and_its_credentials_reach_every_container() {
        let mut w = workload("pipeline-minimal.yaml");
        let pod = w
            .stateful_set
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("pod");
        EmulatorAws::default().apply_to(pod);
        assert!(
            !pod.containers[0]
                .env
                .iter()
                .flatten()
                .any(|e| e.name.starts_with("AWS_ENDPOINT"))
        );
        EmulatorAws {
            endpoint_url: Some("http://10.88.0.1:5000".to_owned()),
            credentials_secret: Some("moto-credentials".to_owned()),
        }
        .apply_to(pod);
        let container = &pod.containers[0];
        let env = |name: &str| {
            container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env("AWS_ENDPOINT_URL").as_deref(),
            Some("http://10.88.0.1:5000")
        );
        assert_eq!(env("AWS_ALLOW_HTTP").as_deref(), Some("true"));
        let from = container.env_from.as_ref().expect("envFrom");
        assert_eq!(
            from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("moto-credentials")
        );
    }

    #[test]
    fn managed_flink_wants_no_workload() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
        assert_eq!(desired(&pipeline, "img").expect("ok"), None);
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.metadata.uid = None;
        assert!(desired(&pipeline, "img").is_err());
    }
}
