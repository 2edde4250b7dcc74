//! Controller tests against a mock API server (tower-test). The AWS side is a fake
//! [`PipelineBackend`]: these tests check the Kubernetes calls, the moto tests the AWS ones.

use std::sync::Arc;

use clickheatmap_crds::{ClickHeatmapPipeline, PipelineResources};
use http::{Request, Response};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::pipeline::{DeleteOutcome, Part, PartOutcome, PipelineOutcome};

/// A fake AWS side with fixed answers.
struct FakeBackend {
    apply: Result<PipelineOutcome, Error>,
}

impl PipelineBackend for FakeBackend {
    async fn apply(&self, _: &ClickHeatmapPipeline) -> Result<PipelineOutcome, Error> {
        self.apply.clone()
    }

    async fn delete(&self, pipeline: &ClickHeatmapPipeline) -> Result<DeleteOutcome, Error> {
        Ok(DeleteOutcome {
            policy: pipeline.spec.deletion_policy,
            steps: Vec::new(),
        })
    }

    async fn progress(
        &self,
        _: &ClickHeatmapPipeline,
        _: &str,
    ) -> Result<Vec<clickheatmap_crds::progress::ReplicaProgress>, Error> {
        Ok(Vec::new())
    }

    async fn backfill_state(
        &self,
        _: &ClickHeatmapPipeline,
        _: &str,
    ) -> Result<Option<clickheatmap_crds::backfill_state::BackfillState>, Error> {
        Ok(None)
    }
}

fn ready_outcome() -> PipelineOutcome {
    PipelineOutcome {
        parts: vec![PartOutcome::ready(
            Part::Stream,
            "stream shop-clicks is active".to_owned(),
            Vec::new(),
        )],
        resources: PipelineResources {
            stream_arn: Some(
                "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks".to_owned(),
            ),
            ..PipelineResources::default()
        },
    }
}

fn pipeline(finalizer: bool) -> ClickHeatmapPipeline {
    let mut pipeline = workload::tests_support::fixture("pipeline-minimal.yaml");
    if finalizer {
        pipeline.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    }
    pipeline
}

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A reply key: echo the request's body with this `status` (a workload as its controller left it).
const ECHO_WITH_STATUS: &str = "$echoWithStatus";

/// The reply to a workload's apply: its controller rolled out every replica.
fn rolled_out(replicas: i32) -> Value {
    json!({ECHO_WITH_STATUS: {
        "observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
        "availableReplicas": replicas, "updatedReplicas": replicas,
        "currentRevision": "r1", "updateRevision": "r1"
    }})
}

/// The mock API server: a chain of expected calls, each checked and answered in order.
struct ApiServer {
    handle: ApiHandle,
}

impl ApiServer {
    /// Expects one call; `check` sees the request and its JSON body; `reply` is the answer
    /// (`Null`: echo the request body).
    async fn expect(
        mut self,
        method: &str,
        path: &str,
        check: impl FnOnce(&Request<Body>, &Value),
        reply: Value,
    ) -> Self {
        let (request, send) = self.handle.next_request().await.expect("a request");
        assert_eq!(request.method().as_str(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("body");
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        let request = Request::from_parts(parts, Body::empty());
        check(&request, &value);
        // `Null` answers with the request's own body (what a server-side apply returns, roughly);
        // `{ECHO_WITH_STATUS: status}` with that body and this status.
        let reply = if reply.is_null() {
            value
        } else if let Some(status) = reply.get(ECHO_WITH_STATUS) {
            let mut value = value;
            value["status"] = status.clone();
            value["metadata"]["generation"] = json!(1);
            value
        } else {
            reply
        };
        let body = serde_json::to_vec(&reply).expect("reply");
        send.send_response(
            Response::builder()
                .body(Body::from(body))
                .expect("response"),
        );
        self
    }

    /// A server-side apply of a child: field manager, force, content type, owner reference.
    async fn expect_apply(self, path: &str, kind: &str) -> Self {
        let kind = kind.to_owned();
        self.expect(
            "PATCH",
            path,
            move |request, body| {
                assert_ssa(request);
                assert_eq!(body["kind"], kind);
                assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
                assert_eq!(
                    body["metadata"]["labels"]["clickheatmap.io/pipeline"],
                    "shop"
                );
            },
            Value::Null,
        )
        .await
    }

    /// A server-side apply of a workload (StatefulSet, Deployment), answered with `reply`.
    async fn expect_workload_apply(self, path: &str, kind: &str, reply: Value) -> Self {
        let kind = kind.to_owned();
        self.expect(
            "PATCH",
            path,
            move |request, body| {
                assert_ssa(request);
                assert_eq!(body["kind"], kind);
            },
            reply,
        )
        .await
    }

    /// A LIST of a pipeline's children by label, answered with objects of these names.
    async fn expect_children(self, path: &str, kind: &str, names: &[&str]) -> Self {
        let api_version = if path.starts_with("/apis/apps/") {
            "apps/v1"
        } else {
            "v1"
        };
        let items: Vec<Value> = names
            .iter()
            .map(|name| {
                json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"name": name, "namespace": "analytics"}})
            })
            .collect();
        self.expect(
            "GET",
            path,
            |request, _| {
                let query = request.uri().query().unwrap_or_default();
                assert!(
                    query.contains("labelSelector=clickheatmap.io%2Fpipeline%3Dshop"),
                    "{query}"
                );
            },
            json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {}, "items": items}),
        )
        .await
    }

    /// The orphan sweep after the applies: one LIST per kind, answered with these names.
    async fn expect_sweep(self, existing: [&[&str]; 5]) -> Self {
        let [stateful_sets, deployments, services, config_maps, accounts] = existing;
        self.expect_children(STATEFULSETS, "StatefulSet", stateful_sets)
            .await
            .expect_children(DEPLOYMENTS, "Deployment", deployments)
            .await
            .expect_children(SERVICES, "Service", services)
            .await
            .expect_children(CONFIGMAPS, "ConfigMap", config_maps)
            .await
            .expect_children(ACCOUNTS, "ServiceAccount", accounts)
            .await
    }

    async fn expect_delete(self, path: &str) -> Self {
        self.expect(
            "DELETE",
            path,
            |_, _| {},
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
        )
        .await
    }

    fn done(self) -> ApiHandle {
        self.handle
    }
}

fn assert_ssa(request: &Request<Body>) {
    let query = request.uri().query().unwrap_or_default();
    assert!(
        query.contains("fieldManager=clickheatmap-operator"),
        "{query}"
    );
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(
        request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/apply-patch+yaml")
    );
}

fn context(apply: Result<PipelineOutcome, Error>) -> (Arc<Context<FakeBackend>>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(
        client,
        FakeBackend { apply },
        "registry.example.com/agg:test".to_owned(),
        Arc::new(Metrics::default()),
    );
    (Arc::new(ctx), ApiServer { handle })
}

const PIPELINES: &str = "/apis/clickheatmap.io/v1alpha1/namespaces/analytics/clickheatmappipelines";
const STATEFULSETS: &str = "/apis/apps/v1/namespaces/analytics/statefulsets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/analytics/deployments";
const SERVICES: &str = "/api/v1/namespaces/analytics/services";
const CONFIGMAPS: &str = "/api/v1/namespaces/analytics/configmaps";
const ACCOUNTS: &str = "/api/v1/namespaces/analytics/serviceaccounts";

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn adds_the_finalizer_when_missing() {
    let (ctx, server) = context(Ok(ready_outcome()));
    let object = pipeline(false);
    let reply = serde_json::to_value(pipeline(true)).expect("json");
    let server = tokio::spawn(async move {
        server
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop"),
                |request, body| {
                    assert_eq!(
                        request
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok()),
                        Some("application/json-patch+json")
                    );
                    let text = body.to_string();
                    assert!(text.contains("/metadata/finalizers"), "{text}");
                    assert!(text.contains(FINALIZER), "{text}");
                },
                reply,
            )
            .await
            .done()
    });
    let action = within(reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    within(server).await.expect("server");
}

#[tokio::test]
async fn applies_the_workload_and_the_status() {
    let (ctx, server) = context(Ok(ready_outcome()));
    let object = pipeline(true);
    let reply = serde_json::to_value(&object).expect("json");
    let server = tokio::spawn(async move {
        server
            .expect_apply(
                "/api/v1/namespaces/analytics/configmaps/shop-aggregator",
                "ConfigMap",
            )
            .await
            .expect_apply(
                "/api/v1/namespaces/analytics/serviceaccounts/shop-aggregator",
                "ServiceAccount",
            )
            .await
            .expect_apply(
                "/api/v1/namespaces/analytics/services/shop-aggregator",
                "Service",
            )
            .await
            .expect_workload_apply(
                "/apis/apps/v1/namespaces/analytics/statefulsets/shop-aggregator",
                "StatefulSet",
                rolled_out(1),
            )
            .await
            // What exists is exactly what is wanted: nothing is deleted.
            .expect_sweep([
                &["shop-aggregator"],
                &[],
                &["shop-aggregator"],
                &["shop-aggregator"],
                &["shop-aggregator"],
            ])
            .await
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop/status"),
                |request, body| {
                    assert_ssa(request);
                    assert!(body.get("spec").is_none(), "the spec is never written");
                    let status = &body["status"];
                    assert_eq!(status["observedGeneration"], 3);
                    let conditions = status["conditions"].as_array().expect("conditions");
                    let types: Vec<&str> = conditions
                        .iter()
                        .filter_map(|c| c["type"].as_str())
                        .collect();
                    assert_eq!(
                        types,
                        [
                            "Ready",
                            "StreamReady",
                            AGGREGATOR_CONDITION,
                            "DataFlowing",
                            "Fresh"
                        ]
                    );
                    assert_eq!(conditions[0]["status"], "True");
                    // No bucket is ready in this fake outcome: nothing to judge the data by yet.
                    assert_eq!(conditions[3]["status"], "Unknown");
                    assert_eq!(conditions[3]["reason"], "AwaitingReport");
                    assert_eq!(
                        status["resources"]["streamArn"],
                        "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks"
                    );
                    assert_eq!(
                        status["resources"]["aggregatorDeployment"],
                        "shop-aggregator"
                    );
                },
                reply,
            )
            .await
            .done()
    });
    let action = within(reconcile(Arc::new(object), ctx.clone()))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    within(server).await.expect("server");
}

#[tokio::test]
async fn a_workload_whose_pods_are_not_ready_holds_ready_back() {
    let (ctx, server) = context(Ok(ready_outcome()));
    let object = pipeline(true);
    let reply = serde_json::to_value(&object).expect("json");
    let starting = json!({ECHO_WITH_STATUS: {
        "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
        "currentRevision": "r1", "updateRevision": "r1"
    }});
    let server = tokio::spawn(async move {
        server
            .expect_apply(&format!("{CONFIGMAPS}/shop-aggregator"), "ConfigMap")
            .await
            .expect_apply(&format!("{ACCOUNTS}/shop-aggregator"), "ServiceAccount")
            .await
            .expect_apply(&format!("{SERVICES}/shop-aggregator"), "Service")
            .await
            .expect_workload_apply(
                &format!("{STATEFULSETS}/shop-aggregator"),
                "StatefulSet",
                starting,
            )
            .await
            .expect_sweep([
                &["shop-aggregator"],
                &[],
                &["shop-aggregator"],
                &["shop-aggregator"],
                &["shop-aggregator"],
            ])
            .await
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop/status"),
                |_, body| {
                    let status = &body["status"];
                    let ready = &status["conditions"][0];
                    assert_eq!(ready["type"], "Ready");
                    assert_eq!(ready["status"], "False");
                    assert_eq!(ready["reason"], rollout::PODS_NOT_READY);
                    assert_eq!(
                        ready["message"],
                        "AggregatorReady: StatefulSet shop-aggregator: 0 of 1 pods ready"
                    );
                    assert!(status["resources"].get("aggregatorDeployment").is_none());
                },
                reply,
            )
            .await
            .done()
    });
    within(reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile");
    within(server).await.expect("server");
}

#[tokio::test]
async fn managed_flink_deletes_orphans_by_label() {
    let (ctx, server) = context(Ok(ready_outcome()));
    let mut object = pipeline(true);
    object.spec.aggregation.engine = AggregationEngine::ManagedFlink;
    let reply = serde_json::to_value(&object).expect("json");
    let server = tokio::spawn(async move {
        server
            .expect_children(STATEFULSETS, "StatefulSet", &["shop-aggregator"])
            .await
            .expect_delete(&format!("{STATEFULSETS}/shop-aggregator"))
            .await
            .expect_children(DEPLOYMENTS, "Deployment", &[])
            .await
            .expect_children(SERVICES, "Service", &["shop-aggregator"])
            .await
            .expect_delete(&format!("{SERVICES}/shop-aggregator"))
            .await
            .expect_children(CONFIGMAPS, "ConfigMap", &[])
            .await
            .expect_children(ACCOUNTS, "ServiceAccount", &[])
            .await
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop/status"),
                |_, body| {
                    let conditions = body["status"]["conditions"].as_array().expect("conditions");
                    let aggregator = conditions
                        .iter()
                        .find(|c| c["type"] == AGGREGATOR_CONDITION)
                        .expect("aggregator condition");
                    assert_eq!(aggregator["status"], "True");
                    assert!(
                        aggregator["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("ManagedFlink")
                    );
                },
                reply,
            )
            .await
            .done()
    });
    within(reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile");
    within(server).await.expect("server");
}

#[tokio::test]
async fn collector_applied_and_a_disabled_viewer_removed() {
    let (ctx, server) = context(Ok(ready_outcome()));
    let mut object = pipeline(true);
    object.spec.collector.enabled = true;
    object.spec.collector.allowed_origins = vec!["https://shop.example.com".to_owned()];
    let reply = serde_json::to_value(&object).expect("json");
    let server = tokio::spawn(async move {
        server
            .expect_apply(&format!("{CONFIGMAPS}/shop-aggregator"), "ConfigMap")
            .await
            .expect_apply(&format!("{ACCOUNTS}/shop-aggregator"), "ServiceAccount")
            .await
            .expect_apply(&format!("{SERVICES}/shop-aggregator"), "Service")
            .await
            .expect_workload_apply(
                &format!("{STATEFULSETS}/shop-aggregator"),
                "StatefulSet",
                rolled_out(1),
            )
            .await
            .expect_apply(&format!("{ACCOUNTS}/shop-collector"), "ServiceAccount")
            .await
            .expect_apply(&format!("{SERVICES}/shop-collector"), "Service")
            .await
            .expect(
                "PATCH",
                &format!("{DEPLOYMENTS}/shop-collector"),
                |request, body| {
                    assert_ssa(request);
                    assert_eq!(body["kind"], "Deployment");
                    let container = &body["spec"]["template"]["spec"]["containers"][0];
                    assert_eq!(container["command"][0], frontends::COLLECTOR_BINARY);
                    assert_eq!(container["image"], "registry.example.com/agg:test");
                },
                rolled_out(1),
            )
            .await
            // The viewer was enabled before: its objects go.
            .expect_children(STATEFULSETS, "StatefulSet", &["shop-aggregator"])
            .await
            .expect_children(
                DEPLOYMENTS,
                "Deployment",
                &["shop-collector", "shop-viewer"],
            )
            .await
            .expect_delete(&format!("{DEPLOYMENTS}/shop-viewer"))
            .await
            .expect_children(
                SERVICES,
                "Service",
                &["shop-aggregator", "shop-collector", "shop-viewer"],
            )
            .await
            .expect_delete(&format!("{SERVICES}/shop-viewer"))
            .await
            .expect_children(CONFIGMAPS, "ConfigMap", &["shop-aggregator"])
            .await
            .expect_children(
                ACCOUNTS,
                "ServiceAccount",
                &["shop-aggregator", "shop-collector", "shop-viewer"],
            )
            .await
            .expect_delete(&format!("{ACCOUNTS}/shop-viewer"))
            .await
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop/status"),
                |_, body| {
                    let status = &body["status"];
                    let types: Vec<&str> = status["conditions"]
                        .as_array()
                        .expect("conditions")
                        .iter()
                        .filter_map(|c| c["type"].as_str())
                        .collect();
                    assert_eq!(
                        types,
                        [
                            "Ready",
                            "StreamReady",
                            AGGREGATOR_CONDITION,
                            COLLECTOR_CONDITION,
                            "DataFlowing",
                            "Fresh"
                        ]
                    );
                    assert_eq!(status["conditions"][0]["status"], "True");
                    assert_eq!(status["resources"]["collectorService"], "shop-collector");
                    assert!(status["resources"].get("viewerService").is_none());
                },
                reply,
            )
            .await
            .done()
    });
    within(reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile");
    within(server).await.expect("server");
}

#[tokio::test]
async fn terminal_error_writes_a_condition_and_an_event() {
    let (ctx, server) = context(Err(Error::InvalidSpec(
        "stream.shards must be positive".to_owned(),
    )));
    let object = pipeline(true);
    let reply = serde_json::to_value(&object).expect("json");
    let server = tokio::spawn(async move {
        let mut server = server
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop/status"),
                |_, body| {
                    let condition = &body["status"]["conditions"][0];
                    assert_eq!(condition["type"], "Ready");
                    assert_eq!(condition["status"], "False");
                    assert_eq!(condition["reason"], "InvalidSpec");
                },
                reply,
            )
            .await
            .done();
        // The Event (events.k8s.io/v1).
        let (request, send) = server.next_request().await.expect("event request");
        assert_eq!(request.method(), http::Method::POST);
        assert!(
            request.uri().path().contains("/events"),
            "{}",
            request.uri()
        );
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let event: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(event["reason"], "InvalidSpec");
        assert_eq!(event["type"], "Warning");
        send.send_response(
            Response::builder()
                .body(Body::from(bytes.to_vec()))
                .expect("response"),
        );
    });
    let action = within(reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(TERMINAL_REQUEUE));
    within(server).await.expect("server");
}

#[tokio::test]
async fn retryable_error_backs_off_exponentially() {
    let (ctx, _server) = context(Ok(ready_outcome()));
    let object = Arc::new(pipeline(true));
    let error = ControllerError::Pipeline(Error::Throttled {
        operation: "kinesis:DescribeStreamSummary".to_owned(),
        message: "slow down".to_owned(),
    });
    let first = error_policy(object.clone(), &error, ctx.clone());
    let second = error_policy(object.clone(), &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    let terminal = ControllerError::Pipeline(Error::InvalidSpec("bad".to_owned()));
    assert_eq!(
        error_policy(object, &terminal, ctx.clone()),
        Action::requeue(TERMINAL_REQUEUE)
    );
    assert!(ctx.metrics.render().contains("error=\"throttled\"} 2"));
    assert_eq!(backoff(100), Duration::from_secs(300));
}

#[tokio::test]
async fn a_retryable_aws_error_is_returned_without_writing() {
    let (ctx, server) = context(Err(Error::Throttled {
        operation: "kinesis:DescribeStreamSummary".to_owned(),
        message: "slow down".to_owned(),
    }));
    let error = within(reconcile(Arc::new(pipeline(true)), ctx))
        .await
        .expect_err("retryable error");
    assert!(error.is_retryable());
    assert_eq!(error.metric_label(), "throttled");
    // No API call was made: the mock has nothing pending.
    let mut handle = server.done();
    let pending = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
    assert!(pending.is_err() || matches!(pending, Ok(None)));
}

#[tokio::test]
async fn cleanup_removes_the_finalizer_once_aws_is_done() {
    let (ctx, server) = context(Ok(ready_outcome()));
    let mut object = pipeline(true);
    object.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_000).expect("time")));
    let reply = serde_json::to_value(&object).expect("json");
    let server = tokio::spawn(async move {
        server
            .expect(
                "PATCH",
                &format!("{PIPELINES}/shop"),
                |_, body| {
                    let text = body.to_string();
                    assert!(text.contains("\"remove\""), "{text}");
                    assert!(text.contains("/metadata/finalizers/0"), "{text}");
                },
                reply,
            )
            .await
            .done()
    });
    let action = within(reconcile(Arc::new(object), ctx))
        .await
        .expect("cleanup");
    assert_eq!(action, Action::await_change());
    within(server).await.expect("server");
}

#[test]
fn status_keeps_transition_time_when_unchanged() {
    let earlier = Timestamp::from_second(1_000).expect("time");
    let now = Timestamp::from_second(2_000).expect("time");
    let conditions = vec![
        DesiredCondition::new(READY_CONDITION, true, Reason::Ready, "ok"),
        DesiredCondition::new("StreamReady", false, Reason::Provisioning, "creating"),
    ];
    let first = build_status(
        None,
        Some(1),
        &conditions,
        PipelineResources::default(),
        earlier,
    );
    let mut changed = conditions.clone();
    changed[1] = DesiredCondition::new("StreamReady", true, Reason::Ready, "active");
    let second = build_status(
        Some(&first),
        Some(2),
        &changed,
        PipelineResources::default(),
        now,
    );
    assert_eq!(second.observed_generation, Some(2));
    assert_eq!(second.conditions[0].last_transition_time, Time(earlier));
    assert_eq!(second.conditions[1].last_transition_time, Time(now));
    assert_eq!(second.conditions[1].status, "True");
}

#[test]
fn malformed_object_is_terminal_and_labelled() {
    let error = ControllerError::Finalizer(Box::new(finalizer::Error::ApplyFailed(
        ControllerError::Malformed("x".to_owned()),
    )));
    assert!(!error.is_retryable());
    assert_eq!(error.metric_label(), "malformed");
    let _ = ClickHeatmapPipeline::kind(&());
}
