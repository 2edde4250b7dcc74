//! The Managed Flink reconciler.
//!
//! **What runs against moto and what against a fake.** moto implements only CreateApplication,
//! DescribeApplication, ListApplications and the tagging calls of kinesisanalyticsv2, and its
//! applications stay `STARTING` forever. So the moto tests cover the real SDK requests for
//! create, describe and tags (creation from nothing, a resync without writes, a conflict,
//! adoption), while UpdateApplication, StartApplication, StopApplication and DeleteApplication
//! are exercised through the [`FlinkApi`] trait against `common::fake_flink::FakeFlink`, an
//! in-memory stand-in that enforces version ids, creation timestamps and transitional states.
//! The SDK requests for those four calls are therefore not tested here.
//!
//! Another moto gap: DescribeApplication of a missing application answers HTTP 500 (a KeyError)
//! instead of ResourceNotFoundException, so the moto tests plan creation from `None` rather than
//! observing the absence.

mod common;

use std::sync::Arc;

use clickheatmap_crds::AggregationEngine;
use clickheatmap_operator::aws::flink::{self, FlinkApi};
use clickheatmap_operator::aws::{Deletion, PartReconciler, Readiness};
use clickheatmap_operator::{Error, Owner, Reason};
use common::fake_flink::FakeFlink;
use common::{Env, assert_no_writes, pipeline, start, writes_since};

fn ops(changes: &[flink::Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            serde_json::to_value(c).expect("json")["op"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// One reconcile through any [`FlinkApi`]: observe, diff, apply until a change that must settle.
async fn reconcile(
    api: &dyn FlinkApi,
    desired: &flink::DesiredApplication,
) -> Result<Vec<flink::Change>, Error> {
    let observed = api.observe(&desired.name).await?;
    let mut made = Vec::new();
    for change in flink::FlinkApplication::diff(desired, observed.as_ref())? {
        api.apply(&change).await?;
        let settle = change.needs_settling();
        made.push(change);
        if settle {
            break;
        }
    }
    Ok(made)
}

async fn desired(env: &Env, adopt: bool) -> flink::DesiredApplication {
    let mut pipeline = pipeline("full");
    pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
    pipeline.spec.adopt_existing = adopt;
    flink::desired(&pipeline.spec, &env.names(&pipeline).await)
        .expect("valid")
        .expect("managed flink")
}

fn desired_offline(replicas: i32, parallelism: i32) -> flink::DesiredApplication {
    let mut pipeline = pipeline("full");
    pipeline.spec.aggregation.engine = AggregationEngine::ManagedFlink;
    pipeline.spec.aggregation.replicas = replicas;
    if let Some(flink) = pipeline.spec.aggregation.flink.as_mut() {
        flink.parallelism = parallelism;
    }
    let names = clickheatmap_operator::Names::for_pipeline(
        &pipeline,
        clickheatmap_operator::Account::new("123456789012", "aws"),
    );
    flink::desired(&pipeline.spec, &names)
        .expect("valid")
        .expect("managed flink")
}

#[tokio::test]
async fn moto_creates_describes_and_leaves_alone() {
    let env = start().await;
    let app = desired(&env, false).await;
    let api = env.clients.flink.as_ref();
    let changes = flink::FlinkApplication::diff(&app, None).expect("diff");
    assert_eq!(ops(&changes), ["CreateApplication", "StartApplication"]);
    api.apply(&changes[0]).await.expect("create on moto");

    let observed = api
        .observe(&app.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(observed.arn, app.arn);
    assert_eq!(
        observed.settings, app.settings,
        "runtime, role, code, parallelism, properties"
    );
    assert_eq!(observed.settings.runtime, "FLINK-1_18");
    assert_eq!(
        observed.settings.properties[flink::PROPERTY_GROUP]["KINESIS_STREAM_ARN"],
        "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-full-clicks"
    );
    assert_eq!(
        observed.tags["clickheatmap.io/pipeline"],
        "analytics/shop-full"
    );
    assert_eq!(observed.version_id, 1);
    assert!(observed.create_timestamp.is_some());
    // moto leaves every application STARTING: nothing to do, and not ready yet.
    assert_eq!(observed.status, "STARTING");
    assert!(matches!(
        flink::FlinkApplication::readiness(&app, Some(&observed)),
        Readiness::Provisioning(_)
    ));

    let before = env.calls.snapshot();
    assert_eq!(reconcile(api, &app).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "Flink resync");
}

#[tokio::test]
async fn moto_refuses_another_pipelines_application_and_adopts_on_request() {
    let env = start().await;
    let api = env.clients.flink.as_ref();
    let app = desired(&env, false).await;
    // Made by another pipeline (same settings, other owner).
    api.apply(&flink::Change::CreateApplication {
        application: app.name.clone(),
        settings: app.settings.clone(),
        tags: Owner::new("analytics", "other").tags(),
    })
    .await
    .expect("create");
    let before = env.calls.snapshot();
    let error = reconcile(api, &desired(&env, true).await)
        .await
        .expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    assert!(matches!(
        flink::delete(api, &app.name, &app.owner).await,
        Ok(Deletion::Kept(_))
    ));

    // Untagged, on a fresh server.
    let env = start().await;
    let api = env.clients.flink.as_ref();
    api.apply(&flink::Change::CreateApplication {
        application: app.name.clone(),
        settings: app.settings.clone(),
        tags: Default::default(),
    })
    .await
    .expect("create untagged");
    let before = env.calls.snapshot();
    let error = reconcile(api, &desired(&env, false).await)
        .await
        .expect_err("conflict");
    assert!(error.to_string().contains("adoptExisting"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    let made = reconcile(api, &desired(&env, true).await)
        .await
        .expect("adopt");
    assert_eq!(ops(&made), ["TagResource"]);
    let before = env.calls.snapshot();
    assert_eq!(
        reconcile(api, &desired(&env, false).await)
            .await
            .expect("resync"),
        vec![]
    );
    assert_no_writes(&env.calls, &before, "resync after adoption");
}

#[tokio::test]
async fn fake_lifecycle_create_start_update_stop_delete() {
    let fake = FakeFlink::new();
    let api: &dyn FlinkApi = fake.as_ref();
    let app = desired_offline(1, 2);

    assert_eq!(
        ops(&reconcile(api, &app).await.expect("create")),
        ["CreateApplication"]
    );
    assert_eq!(
        ops(&reconcile(api, &app).await.expect("start")),
        ["StartApplication"]
    );
    // STARTING: nothing to do until it settles.
    assert_eq!(reconcile(api, &app).await.expect("wait"), vec![]);
    fake.settle();
    let running = fake.app(&app.name).expect("app");
    assert_eq!(running.status, "RUNNING");
    assert_eq!(
        flink::FlinkApplication::readiness(&app, Some(&running)),
        Readiness::Ready
    );
    let calls = fake.calls().len();
    assert_eq!(reconcile(api, &app).await.expect("resync"), vec![]);
    assert_eq!(fake.calls().len(), calls, "a resync makes no call");

    // The spec's parallelism changes: one update naming the current version.
    let wider = desired_offline(1, 4);
    let made = reconcile(api, &wider).await.expect("update");
    assert_eq!(
        made[0].to_string(),
        "update Flink application shop-full-heatmap (version 1): parallelism 2/1 → 4/1"
    );
    assert_eq!(
        fake.app(&app.name).map(|a| a.status),
        Some("UPDATING".into())
    );
    assert_eq!(reconcile(api, &wider).await.expect("updating"), vec![]);
    fake.settle();
    let updated = fake.app(&app.name).expect("app");
    assert_eq!((updated.version_id, updated.settings.parallelism), (2, 4));

    // replicas: 0 pauses the aggregation, replicas: 1 resumes it.
    let paused = desired_offline(0, 4);
    assert_eq!(
        ops(&reconcile(api, &paused).await.expect("stop")),
        ["StopApplication"]
    );
    fake.settle();
    assert_eq!(fake.app(&app.name).map(|a| a.status), Some("READY".into()));
    assert_eq!(reconcile(api, &paused).await.expect("paused"), vec![]);
    assert_eq!(
        ops(&reconcile(api, &wider).await.expect("resume")),
        ["StartApplication"]
    );
    fake.settle();

    // Deletion (Retain never reaches the service: `delete_pipeline` returns first) names the
    // creation time.
    assert!(matches!(
        flink::delete(api, &app.name, &app.owner).await,
        Ok(Deletion::InProgress(_))
    ));
    assert!(matches!(
        flink::delete(api, &app.name, &app.owner).await,
        Ok(Deletion::InProgress(_))
    ));
    fake.settle();
    assert_eq!(
        flink::delete(api, &app.name, &app.owner).await,
        Ok(Deletion::Gone)
    );
}

#[tokio::test]
async fn fake_concurrent_change_is_retryable_and_then_reconciled() {
    let fake = FakeFlink::new();
    let api: &dyn FlinkApi = fake.as_ref();
    let app = desired_offline(1, 2);
    reconcile(api, &app).await.expect("create");
    reconcile(api, &app).await.expect("start");
    fake.settle();
    // The operator planned an update against version 1, but someone changed the application
    // in the meantime: the call fails retryably, and the next reconcile uses the new version.
    let observed = fake.app(&app.name).expect("app");
    let wider = desired_offline(1, 4);
    let stale = flink::FlinkApplication::diff(&wider, Some(&observed)).expect("diff");
    let mut drifted = observed.clone();
    drifted.version_id = 2;
    drifted.settings.parallelism = 3;
    fake.put(drifted);
    let error = api.apply(&stale[0]).await.expect_err("stale version");
    assert!(error.is_retryable());
    let made = reconcile(api, &wider).await.expect("update");
    assert!(
        matches!(
            &made[0],
            flink::Change::UpdateApplication {
                current_version_id: 2,
                ..
            }
        ),
        "{made:?}"
    );
    fake.settle();
    assert_eq!(fake.app(&app.name).map(|a| a.settings.parallelism), Some(4));
}

#[tokio::test]
async fn fake_leaves_a_foreign_application_alone() {
    let fake = FakeFlink::new();
    let api: &dyn FlinkApi = fake.as_ref();
    let app = desired_offline(1, 2);
    reconcile(api, &app).await.expect("create");
    let mut theirs = fake.app(&app.name).expect("app");
    theirs.tags = Owner::new("analytics", "other").tags();
    theirs.status = "RUNNING".into();
    fake.put(theirs);
    let calls = fake.calls().len();
    let paused = desired_offline(0, 8);
    assert_eq!(
        reconcile(api, &paused).await.map_err(|e| e.reason()),
        Err(Reason::Conflict)
    );
    assert!(matches!(
        flink::delete(api, &app.name, &app.owner).await,
        Ok(Deletion::Kept(_))
    ));
    assert_eq!(
        fake.calls().len(),
        calls,
        "no call to someone else's application"
    );
    let _ = Arc::clone(&fake);
}
