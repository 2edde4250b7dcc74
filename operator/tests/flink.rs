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

use std::collections::BTreeMap;
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
        flink.parallelism = Some(parallelism);
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

    // Untagged, on a fresh server, with a parallelism of its own.
    let env = start().await;
    let api = env.clients.flink.as_ref();
    api.apply(&flink::Change::CreateApplication {
        application: app.name.clone(),
        settings: flink::ApplicationSettings {
            parallelism: 4,
            parallelism_per_kpu: 2,
            ..app.settings.clone()
        },
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
    // The spec names no parallelism: the application keeps its 4 / 2 per KPU.
    let mut unset = pipeline("full");
    unset.spec.aggregation.engine = AggregationEngine::ManagedFlink;
    unset.spec.adopt_existing = true;
    if let Some(flink) = unset.spec.aggregation.flink.as_mut() {
        flink.parallelism = None;
        flink.parallelism_per_kpu = None;
    }
    let unset = flink::desired(&unset.spec, &env.names(&unset).await)
        .expect("valid")
        .expect("managed flink");
    let made = reconcile(api, &unset).await.expect("adopt");
    assert_eq!(ops(&made), ["TagResource"]);
    let before = env.calls.snapshot();
    assert_eq!(reconcile(api, &unset).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
    let adopted = api
        .observe(&app.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(
        (
            adopted.settings.parallelism,
            adopted.settings.parallelism_per_kpu
        ),
        (4, 2)
    );
    // A spec that names them sets them (planned only: moto's applications never leave
    // STARTING and it has no UpdateApplication; the fake tests below apply updates).
    let mut ready = adopted.clone();
    ready.status = "RUNNING".to_owned();
    let planned =
        flink::FlinkApplication::diff(&desired(&env, true).await, Some(&ready)).expect("diff");
    assert_eq!(ops(&planned), ["UpdateApplication"]);
    assert!(
        planned[0].to_string().contains("parallelism 4/2 → 2/1"),
        "{}",
        planned[0]
    );
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

/// An application made by hand on moto the way a team would: the spec's code, role and
/// parallelism, but a newer runtime, autoscaling, custom monitoring and checkpoints, snapshots,
/// an extra key in the operator's property group and a property group of its own; untagged.
async fn create_teams_application(env: &Env, app: &flink::DesiredApplication) {
    use aws_sdk_kinesisanalyticsv2::types::{
        ApplicationCodeConfiguration, ApplicationConfiguration, ApplicationSnapshotConfiguration,
        CheckpointConfiguration, CodeContent, CodeContentType, ConfigurationType,
        EnvironmentProperties, FlinkApplicationConfiguration, LogLevel, MetricsLevel,
        MonitoringConfiguration, ParallelismConfiguration, PropertyGroup, RuntimeEnvironment,
        S3ContentLocation,
    };
    let settings = &app.settings;
    let mut groups = settings.properties.clone();
    groups
        .entry(flink::PROPERTY_GROUP.to_owned())
        .or_default()
        .insert("LOG_SAMPLE".into(), "0.01".into());
    groups.insert(
        "TeamProperties".into(),
        BTreeMap::from([("ALERTS".into(), "on".into())]),
    );
    let groups = groups
        .into_iter()
        .map(|(id, map)| {
            PropertyGroup::builder()
                .property_group_id(id)
                .set_property_map(Some(map.into_iter().collect()))
                .build()
                .expect("group")
        })
        .collect();
    let configuration = ApplicationConfiguration::builder()
        .application_code_configuration(
            ApplicationCodeConfiguration::builder()
                .code_content_type(CodeContentType::Zipfile)
                .code_content(
                    CodeContent::builder()
                        .s3_content_location(
                            S3ContentLocation::builder()
                                .bucket_arn(&settings.code_bucket_arn)
                                .file_key(&settings.code_key)
                                .build()
                                .expect("code"),
                        )
                        .build(),
                )
                .build()
                .expect("code configuration"),
        )
        .flink_application_configuration(
            FlinkApplicationConfiguration::builder()
                .monitoring_configuration(
                    MonitoringConfiguration::builder()
                        .configuration_type(ConfigurationType::Custom)
                        .metrics_level(MetricsLevel::Operator)
                        .log_level(LogLevel::Warn)
                        .build()
                        .expect("monitoring"),
                )
                .checkpoint_configuration(
                    CheckpointConfiguration::builder()
                        .configuration_type(ConfigurationType::Custom)
                        .checkpointing_enabled(true)
                        .checkpoint_interval(30_000)
                        .build()
                        .expect("checkpoints"),
                )
                .parallelism_configuration(
                    ParallelismConfiguration::builder()
                        .configuration_type(ConfigurationType::Custom)
                        .parallelism(settings.parallelism)
                        .parallelism_per_kpu(settings.parallelism_per_kpu)
                        .auto_scaling_enabled(true)
                        .build()
                        .expect("parallelism"),
                )
                .build(),
        )
        .application_snapshot_configuration(
            ApplicationSnapshotConfiguration::builder()
                .snapshots_enabled(true)
                .build()
                .expect("snapshots"),
        )
        .environment_properties(
            EnvironmentProperties::builder()
                .set_property_groups(Some(groups))
                .build()
                .expect("properties"),
        )
        .build();
    let flink = aws_sdk_kinesisanalyticsv2::Client::from_conf(
        aws_sdk_kinesisanalyticsv2::config::Builder::from(&env.config).build(),
    );
    flink
        .create_application()
        .application_name(&app.name)
        .runtime_environment(RuntimeEnvironment::Flink120)
        .service_execution_role(&settings.role_arn)
        .application_configuration(configuration)
        .send()
        .await
        .expect("create");
}

const TEAMS_SETTINGS: &str = "Flink application shop-full-heatmap runtime FLINK-1_20 (the spec says FLINK-1_18; Managed Flink cannot downgrade in place), autoscaling, properties FlinkApplicationProperties [LOG_SAMPLE], property group TeamProperties, monitoring (metrics OPERATOR, logs WARN), checkpoints every 30000 ms, snapshots";

#[tokio::test]
async fn moto_adopting_an_application_keeps_its_own_settings() {
    let env = start().await;
    let app = desired(&env, true).await;
    create_teams_application(&env, &app).await;
    let api = env.clients.flink.as_ref();
    let observed = api
        .observe(&app.name)
        .await
        .expect("observe")
        .expect("exists");
    // Adoption only tags it: a newer runtime, autoscaling, other properties and settings the
    // spec has no field for are not drift (moto keeps the application STARTING, so the same is
    // checked for a RUNNING one).
    let made = reconcile(api, &app).await.expect("adopt");
    assert_eq!(ops(&made), ["TagResource"]);
    let mut running = observed.clone();
    running.status = "RUNNING".into();
    running.tags = app.tags.clone();
    assert_eq!(
        flink::FlinkApplication::diff(&app, Some(&running)),
        Ok(vec![])
    );
    assert_eq!(
        flink::FlinkApplication::kept(&app, Some(&observed)),
        [TEAMS_SETTINGS]
    );

    let before = env.calls.snapshot();
    assert_eq!(reconcile(api, &app).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
    let after = api
        .observe(&app.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(after.settings, observed.settings);
    assert_eq!(after.unmanaged, observed.unmanaged);
}

#[tokio::test]
async fn fake_an_update_of_an_adopted_application_keeps_its_own_settings() {
    // The application as moto describes the team's one, in the fake, RUNNING, with another
    // parallelism than the spec's: the update must change that and nothing else.
    let env = start().await;
    let app = desired(&env, true).await;
    create_teams_application(&env, &app).await;
    let mut teams = env
        .clients
        .flink
        .observe(&app.name)
        .await
        .expect("observe")
        .expect("exists");
    // (moto's description leaves the name out.)
    teams.name = app.name.clone();
    teams.status = "RUNNING".into();
    teams.settings.parallelism = 8;
    let fake = FakeFlink::new();
    fake.put(teams.clone());

    let made = reconcile(fake.as_ref(), &app).await.expect("adopt");
    assert_eq!(ops(&made), ["TagResource", "UpdateApplication"]);
    assert!(
        made[1].to_string().ends_with("parallelism 8/1 → 2/1"),
        "{}",
        made[1]
    );
    fake.settle();
    let updated = fake.app(&app.name).expect("exists");
    assert_eq!(updated.settings.parallelism, 2);
    assert_eq!(
        updated.settings,
        flink::ApplicationSettings {
            parallelism: 2,
            ..teams.settings.clone()
        }
    );
    assert_eq!(updated.unmanaged, teams.unmanaged);
    assert_eq!(
        flink::FlinkApplication::kept(&app, Some(&updated)),
        [TEAMS_SETTINGS]
    );
    assert_eq!(
        reconcile(fake.as_ref(), &app).await.expect("resync"),
        vec![]
    );
}
