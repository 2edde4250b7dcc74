//! The collector and the viewer a pipeline asks for, as pure functions.
//!
//! Each is a Deployment, a Service (port 80) and a ServiceAccount named `<name>-collector` or
//! `<name>-viewer`, owned by the pipeline like the aggregator. They run the binaries of the same
//! image as the aggregator and are configured through their documented environment variables:
//!
//! * the collector sends accepted clicks to the pipeline's stream, with CORS limited to
//!   `collector.allowedOrigins` and a per-address rate limit;
//! * the viewer queries the pipeline's Glue table through its Athena workgroup, and with `live`
//!   (engine `Deployment`) adds the open windows of every aggregator replica, which it reaches
//!   through the aggregator's headless Service.

use clickheatmap_crds::{AggregationEngine, ClickHeatmapPipeline, ViewerEngine};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements, Service, ServiceAccount,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::workload::{
    METRICS_PORT, aggregator_pod_host, child_metadata, component_labels, container_port, env,
    http_probe, owner_reference, pipeline_name, restricted_container, restricted_pod,
    selector_labels, service_account,
};
use crate::error::Error;

/// Component name of the collector (label value and name suffix).
pub const COLLECTOR: &str = "collector";
/// Component name of the viewer.
pub const VIEWER: &str = "viewer";
/// Where the image keeps the collector binary.
pub const COLLECTOR_BINARY: &str = "/usr/local/bin/clickheatmap-collector";
/// Where the image keeps the viewer binary.
pub const VIEWER_BINARY: &str = "/usr/local/bin/clickheatmap-viewer";
/// The port both listen on in their container.
pub const HTTP_PORT: i32 = 8080;
/// The port of their Services.
pub const SERVICE_PORT: i32 = 80;

/// The objects of one front-end component.
#[derive(Clone, Debug, PartialEq)]
pub struct Frontend {
    pub service_account: ServiceAccount,
    pub service: Service,
    pub deployment: Deployment,
}

/// What a component's Deployment differs in.
struct FrontendPlan<'a> {
    component: &'a str,
    binary: &'a str,
    replicas: i32,
    image: Option<&'a String>,
    role_arn: Option<&'a String>,
    resources: Option<&'a ResourceRequirements>,
    env: Vec<EnvVar>,
    readiness_path: &'a str,
}

fn build(
    pipeline: &ClickHeatmapPipeline,
    default_image: &str,
    plan: FrontendPlan<'_>,
) -> Result<Frontend, Error> {
    let name = pipeline_name(pipeline)?;
    let owner: OwnerReference = owner_reference(pipeline)?;
    let component = plan.component;
    let child = format!("{name}-{component}");
    let service_account = service_account(pipeline, &owner, component, plan.role_arn)?;
    let service = Service {
        metadata: child_metadata(pipeline, &owner, component, None)?,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name, component)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let container = Container {
        name: component.to_owned(),
        image: Some(
            plan.image
                .cloned()
                .unwrap_or_else(|| default_image.to_owned()),
        ),
        image_pull_policy: Some(super::workload::IMAGE_PULL_POLICY.to_owned()),
        command: Some(vec![plan.binary.to_owned()]),
        env: Some(plan.env),
        ports: Some(vec![container_port("http", HTTP_PORT)]),
        liveness_probe: Some(http_probe("http", "/healthz", 5)),
        readiness_probe: Some(http_probe("http", plan.readiness_path, 2)),
        resources: plan.resources.cloned(),
        security_context: Some(restricted_container()),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: child_metadata(pipeline, &owner, component, None)?,
        spec: Some(DeploymentSpec {
            replicas: Some(plan.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name, component)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(component_labels(&name, component)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(child),
                    // Only IRSA needs the projected token; the API server is never called.
                    automount_service_account_token: Some(plan.role_arn.is_some()),
                    security_context: Some(restricted_pod()),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    Ok(Frontend {
        service_account,
        service,
        deployment,
    })
}

fn listen() -> String {
    format!("0.0.0.0:{HTTP_PORT}")
}

/// The collector a pipeline asks for; `None` when `collector.enabled` is false.
pub fn desired_collector(
    pipeline: &ClickHeatmapPipeline,
    default_image: &str,
) -> Result<Option<Frontend>, Error> {
    let spec = &pipeline.spec.collector;
    if !spec.enabled {
        return Ok(None);
    }
    if spec.allowed_origins.is_empty() {
        return Err(Error::InvalidSpec(
            "collector.allowedOrigins is empty: list the sites whose pages send clicks, or \"*\""
                .to_owned(),
        ));
    }
    let env = vec![
        env("CLICKHEATMAP_COLLECTOR_LISTEN", listen()),
        env("CLICKHEATMAP_COLLECTOR_SINK", "kinesis"),
        env("CLICKHEATMAP_COLLECTOR_STREAM", &pipeline.spec.stream.name),
        env("CLICKHEATMAP_COLLECTOR_REGION", &pipeline.spec.region),
        env(
            "CLICKHEATMAP_COLLECTOR_ALLOWED_ORIGINS",
            spec.allowed_origins.join(","),
        ),
        env(
            "CLICKHEATMAP_COLLECTOR_RATE_LIMIT",
            spec.rate_limit_per_second.to_string(),
        ),
        env(
            "CLICKHEATMAP_COLLECTOR_FORWARDED_FOR_HOPS",
            spec.forwarded_for_hops.max(0).to_string(),
        ),
        env("AWS_REGION", &pipeline.spec.region),
        env("CLICKHEATMAP_LOG_FORMAT", "json"),
    ];
    build(
        pipeline,
        default_image,
        FrontendPlan {
            component: COLLECTOR,
            binary: COLLECTOR_BINARY,
            replicas: spec.replicas,
            image: spec.image.as_ref(),
            role_arn: spec.service_account_role_arn.as_ref(),
            resources: spec.resources.as_ref(),
            env,
            readiness_path: "/readyz",
        },
    )
    .map(Some)
}

/// The live endpoints of every aggregator replica, through the headless Service.
pub fn live_endpoints(pipeline: &ClickHeatmapPipeline) -> Result<Vec<String>, Error> {
    let spec = &pipeline.spec;
    if !spec.viewer.live || spec.aggregation.engine != AggregationEngine::Deployment {
        return Ok(Vec::new());
    }
    let name = pipeline_name(pipeline)?;
    let namespace = pipeline
        .metadata
        .namespace
        .as_deref()
        .ok_or_else(|| Error::InvalidSpec("the pipeline has no namespace".to_owned()))?;
    Ok((0..spec.aggregation.replicas.max(0))
        .map(|ordinal| {
            let host = aggregator_pod_host(&name, namespace, ordinal);
            format!("http://{host}:{METRICS_PORT}/v1/live")
        })
        .collect())
}

/// The viewer a pipeline asks for; `None` when `viewer.enabled` is false.
pub fn desired_viewer(
    pipeline: &ClickHeatmapPipeline,
    default_image: &str,
) -> Result<Option<Frontend>, Error> {
    let spec = &pipeline.spec;
    if !spec.viewer.enabled {
        return Ok(None);
    }
    let mut env_vars = vec![env("CLICKHEATMAP_VIEWER_LISTEN", listen())];
    match spec.viewer.engine {
        ViewerEngine::Athena => {
            let results = format!(
                "s3://{}/{}",
                spec.buckets.query_results,
                spec.query.results_prefix.trim_start_matches('/')
            );
            env_vars.extend([
                env("CLICKHEATMAP_VIEWER_ENGINE", "athena"),
                env("CLICKHEATMAP_VIEWER_DATABASE", &spec.catalog.database),
                env("CLICKHEATMAP_VIEWER_TABLE", &spec.catalog.table),
                env("CLICKHEATMAP_VIEWER_WORKGROUP", &spec.query.workgroup),
                env("CLICKHEATMAP_VIEWER_REGION", &spec.region),
                env("CLICKHEATMAP_VIEWER_OUTPUT_LOCATION", results),
            ]);
        }
        ViewerEngine::Embedded => env_vars.extend([
            // The aggregator's output root (see workload::aggregator_config), read directly.
            env("CLICKHEATMAP_VIEWER_ENGINE", "local"),
            env(
                "CLICKHEATMAP_VIEWER_CURATED",
                format!("s3://{}/curated/", spec.buckets.curated),
            ),
            env("CLICKHEATMAP_VIEWER_TABLE", &spec.catalog.table),
        ]),
    }
    env_vars.extend([
        env(
            "CLICKHEATMAP_VIEWER_COLUMNS",
            spec.aggregation.grid.columns.to_string(),
        ),
        env(
            "CLICKHEATMAP_VIEWER_ROWS",
            spec.aggregation.grid.rows.to_string(),
        ),
        // Partitions are named after window starts: the viewer widens its partition range by
        // the longest window in use (at least its default hour, which older data may have).
        env(
            "CLICKHEATMAP_VIEWER_MAX_WINDOW",
            spec.aggregation
                .window
                .max(clickheatmap_crds::Duration::from_secs(3600))
                .to_string(),
        ),
        env("AWS_REGION", &spec.region),
        env("CLICKHEATMAP_LOG_FORMAT", "json"),
    ]);
    let live = live_endpoints(pipeline)?;
    if !live.is_empty() {
        env_vars.push(env("CLICKHEATMAP_VIEWER_LIVE_URL", live.join(",")));
    }
    if spec.viewer.allow_raw_sql && spec.viewer.engine == ViewerEngine::Athena {
        env_vars.push(env("CLICKHEATMAP_VIEWER_ALLOW_RAW_SQL", "true"));
    }
    build(
        pipeline,
        default_image,
        FrontendPlan {
            component: VIEWER,
            binary: VIEWER_BINARY,
            replicas: spec.viewer.replicas,
            image: spec.viewer.image.as_ref(),
            role_arn: spec.viewer.service_account_role_arn.as_ref(),
            resources: spec.viewer.resources.as_ref(),
            env: env_vars,
            readiness_path: "/healthz",
        },
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::workload::tests_support::fixture;
    use crate::controller::workload::{PIPELINE_LABEL, ROLE_ARN_ANNOTATION};
    use std::collections::BTreeMap;

    /// The value of one environment variable of a Deployment's first container.
    fn env_value<'a>(deployment: &'a Deployment, name: &str) -> Option<&'a str> {
        deployment
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .first()?
            .env
            .as_ref()?
            .iter()
            .find(|var| var.name == name)?
            .value
            .as_deref()
    }

    /// Every label of a component, for tests that compare selectors with pod labels.
    fn labels_of(deployment: &Deployment) -> BTreeMap<String, String> {
        deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.template.metadata.as_ref())
            .and_then(|meta| meta.labels.clone())
            .unwrap_or_default()
    }

    fn with_frontends() -> ClickHeatmapPipeline {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.collector.enabled = true;
        pipeline.spec.collector.allowed_origins = vec!["https://shop.example.com".to_owned()];
        pipeline.spec.viewer.enabled = true;
        pipeline
    }

    #[test]
    fn nothing_unless_enabled() {
        let pipeline = fixture("pipeline-minimal.yaml");
        assert_eq!(desired_collector(&pipeline, "img").unwrap(), None);
        assert_eq!(desired_viewer(&pipeline, "img").unwrap(), None);
    }

    #[test]
    fn collector_sends_to_the_stream_with_cors_and_secure_defaults() {
        let pipeline = with_frontends();
        let collector = desired_collector(&pipeline, "registry.example.com/chm:1")
            .unwrap()
            .unwrap();
        let deployment = &collector.deployment;
        assert_eq!(deployment.metadata.name.as_deref(), Some("shop-collector"));
        let value = |name| env_value(deployment, name);
        assert_eq!(value("CLICKHEATMAP_COLLECTOR_STREAM"), Some("shop-clicks"));
        assert_eq!(
            value("CLICKHEATMAP_COLLECTOR_REGION"),
            Some("ap-northeast-2")
        );
        assert_eq!(
            value("CLICKHEATMAP_COLLECTOR_ALLOWED_ORIGINS"),
            Some("https://shop.example.com")
        );
        assert_eq!(value("CLICKHEATMAP_COLLECTOR_LISTEN"), Some("0.0.0.0:8080"));
        assert_eq!(value("CLICKHEATMAP_COLLECTOR_RATE_LIMIT"), Some("50"));
        assert_eq!(
            value("CLICKHEATMAP_COLLECTOR_FORWARDED_FOR_HOPS"),
            Some("0")
        );

        let spec = deployment.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&[COLLECTOR_BINARY.to_owned()][..])
        );
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example.com/chm:1")
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("shop-collector"));

        // The Service and the Deployment select the pods, and only the collector's.
        let pod_labels = labels_of(deployment);
        for selector in [
            spec.selector.match_labels.clone().unwrap(),
            collector.service.spec.clone().unwrap().selector.unwrap(),
        ] {
            for (key, value) in &selector {
                assert_eq!(pod_labels.get(key), Some(value));
            }
            assert_eq!(
                selector.get("app.kubernetes.io/name").map(String::as_str),
                Some("clickheatmap-collector")
            );
        }
        assert_eq!(
            pod_labels.get(PIPELINE_LABEL).map(String::as_str),
            Some("shop")
        );
        let port = &collector
            .service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!(port.port, 80);
        for meta in [
            &collector.deployment.metadata,
            &collector.service.metadata,
            &collector.service_account.metadata,
        ] {
            assert_eq!(meta.owner_references.as_ref().unwrap()[0].name, "shop");
            assert_eq!(meta.namespace.as_deref(), Some("analytics"));
        }
    }

    #[test]
    fn a_collector_without_origins_is_refused() {
        let mut pipeline = with_frontends();
        pipeline.spec.collector.allowed_origins.clear();
        assert!(matches!(
            desired_collector(&pipeline, "img"),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn viewer_queries_athena_and_reaches_every_aggregator_replica() {
        let mut pipeline = with_frontends();
        pipeline.spec.aggregation.replicas = 2;
        pipeline.spec.viewer.service_account_role_arn =
            Some("arn:aws:iam::123456789012:role/viewer".to_owned());
        let viewer = desired_viewer(&pipeline, "img").unwrap().unwrap();
        let value = |name| env_value(&viewer.deployment, name);
        assert_eq!(value("CLICKHEATMAP_VIEWER_ENGINE"), Some("athena"));
        assert_eq!(value("CLICKHEATMAP_VIEWER_DATABASE"), Some("heatmap_demo"));
        assert_eq!(value("CLICKHEATMAP_VIEWER_TABLE"), Some("curated_heatmap"));
        assert_eq!(
            value("CLICKHEATMAP_VIEWER_WORKGROUP"),
            Some("heatmap-demo-wg")
        );
        assert_eq!(
            value("CLICKHEATMAP_VIEWER_OUTPUT_LOCATION"),
            Some("s3://shop-heatmap-athena-123456789012/athena-results/")
        );
        assert_eq!(value("CLICKHEATMAP_VIEWER_COLUMNS"), Some("20"));
        assert_eq!(
            value("CLICKHEATMAP_VIEWER_LIVE_URL"),
            Some(
                "http://shop-aggregator-0.shop-aggregator.analytics.svc:9090/v1/live,\
                 http://shop-aggregator-1.shop-aggregator.analytics.svc:9090/v1/live"
            )
        );
        assert_eq!(value("CLICKHEATMAP_VIEWER_ALLOW_RAW_SQL"), None);
        assert_eq!(
            viewer
                .service_account
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROLE_ARN_ANNOTATION))
                .map(String::as_str),
            Some("arn:aws:iam::123456789012:role/viewer")
        );
        let pod = viewer
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(
            pod.containers[0].command.as_deref(),
            Some(&[VIEWER_BINARY.to_owned()][..])
        );

        pipeline.spec.viewer.live = false;
        pipeline.spec.viewer.allow_raw_sql = true;
        let viewer = desired_viewer(&pipeline, "img").unwrap().unwrap();
        assert_eq!(
            env_value(&viewer.deployment, "CLICKHEATMAP_VIEWER_LIVE_URL"),
            None
        );
        assert_eq!(
            env_value(&viewer.deployment, "CLICKHEATMAP_VIEWER_ALLOW_RAW_SQL"),
            Some("true")
        );
    }

    #[test]
    fn the_viewer_knows_the_longest_window_and_the_collector_its_proxies() {
        let mut pipeline = with_frontends();
        pipeline.spec.aggregation.window = clickheatmap_crds::Duration::from_secs(2 * 3600);
        pipeline.spec.collector.forwarded_for_hops = 1;
        let viewer = desired_viewer(&pipeline, "img").expect("ok").expect("on");
        assert_eq!(
            env_value(&viewer.deployment, "CLICKHEATMAP_VIEWER_MAX_WINDOW"),
            Some("2h")
        );
        pipeline.spec.aggregation.window = clickheatmap_crds::Duration::from_secs(60);
        let viewer = desired_viewer(&pipeline, "img").expect("ok").expect("on");
        assert_eq!(
            env_value(&viewer.deployment, "CLICKHEATMAP_VIEWER_MAX_WINDOW"),
            Some("1h")
        );
        let collector = desired_collector(&pipeline, "img")
            .expect("ok")
            .expect("on");
        assert_eq!(
            env_value(
                &collector.deployment,
                "CLICKHEATMAP_COLLECTOR_FORWARDED_FOR_HOPS"
            ),
            Some("1")
        );
    }

    #[test]
    fn an_embedded_viewer_reads_the_curated_bucket_without_athena() {
        let mut pipeline = with_frontends();
        pipeline.spec.viewer.engine = ViewerEngine::Embedded;
        pipeline.spec.viewer.allow_raw_sql = true;
        let viewer = desired_viewer(&pipeline, "img")
            .expect("ok")
            .expect("enabled");
        let deployment = &viewer.deployment;
        assert_eq!(
            env_value(deployment, "CLICKHEATMAP_VIEWER_ENGINE"),
            Some("local")
        );
        assert_eq!(
            env_value(deployment, "CLICKHEATMAP_VIEWER_CURATED"),
            Some("s3://shop-heatmap-curated-123456789012/curated/")
        );
        assert_eq!(
            env_value(deployment, "CLICKHEATMAP_VIEWER_TABLE"),
            Some("curated_heatmap")
        );
        for athena_only in [
            "CLICKHEATMAP_VIEWER_WORKGROUP",
            "CLICKHEATMAP_VIEWER_OUTPUT_LOCATION",
            "CLICKHEATMAP_VIEWER_ALLOW_RAW_SQL",
        ] {
            assert_eq!(env_value(deployment, athena_only), None, "{athena_only}");
        }
    }

    #[test]
    fn no_live_mode_without_aggregator_pods() {
        let mut pipeline = with_frontends();
        pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
        assert!(live_endpoints(&pipeline).unwrap().is_empty());
        pipeline.spec.aggregation.engine = AggregationEngine::Deployment;
        pipeline.spec.aggregation.replicas = 0;
        assert!(live_endpoints(&pipeline).unwrap().is_empty());
    }
}
