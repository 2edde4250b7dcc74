//! The Athena reconciler against a real moto server: the workgroup created from nothing (result
//! location, enforced configuration, scan limit, tags), a resync without writes, tag drift
//! repaired, a workgroup of another pipeline refused, adoption, and both deletion policies.
//!
//! moto gap: moto has no `UpdateWorkGroup` (HTTP 500). Configuration drift (made here by
//! re-creating the workgroup with other settings) is shown to be detected and planned as one
//! UpdateWorkGroup, and the failed apply to be classified as retryable; the UpdateWorkGroup
//! request itself is not exercised. moto also answers GetWorkGroup for a missing workgroup with
//! `{"WorkGroup": null}` where AWS sends InvalidRequestException; the reconciler handles both.

mod common;

use aws_sdk_athena::types::{
    EncryptionConfiguration, EncryptionOption, ResultConfiguration, Tag, WorkGroupConfiguration,
};
use clickheatmap_operator::aws::{Deletion, PartReconciler, athena};
use clickheatmap_operator::{Error, Owner, Reason};
use common::{Env, assert_no_writes, pipeline, start, writes_since};

async fn reconcile(
    env: &Env,
    desired: &athena::DesiredWorkgroup,
) -> Result<Vec<athena::Change>, Error> {
    let observed = athena::observe(&env.clients.athena, desired).await?;
    let mut made = Vec::new();
    for change in athena::Query::diff(desired, observed.as_ref())? {
        athena::apply(&env.clients.athena, &change).await?;
        made.push(change);
    }
    Ok(made)
}

async fn desired(env: &Env, file: &str, adopt: bool) -> athena::DesiredWorkgroup {
    let mut pipeline = pipeline(file);
    pipeline.spec.adopt_existing = adopt;
    athena::desired(&pipeline.spec, &env.names(&pipeline).await)
}

async fn create_foreign(env: &Env, name: &str, output: &str, tags: Vec<(String, String)>) {
    create_foreign_encrypted(env, name, output, tags, EncryptionOption::SseS3, None).await;
}

async fn create_foreign_encrypted(
    env: &Env,
    name: &str,
    output: &str,
    tags: Vec<(String, String)>,
    encryption: EncryptionOption,
    kms_key: Option<&str>,
) {
    env.clients
        .athena
        .create_work_group()
        .name(name)
        .configuration(
            WorkGroupConfiguration::builder()
                .result_configuration(
                    ResultConfiguration::builder()
                        .output_location(output)
                        .encryption_configuration(
                            EncryptionConfiguration::builder()
                                .encryption_option(encryption)
                                .set_kms_key(kms_key.map(str::to_owned))
                                .build()
                                .expect("encryption"),
                        )
                        .build(),
                )
                .enforce_work_group_configuration(true)
                .build(),
        )
        .set_tags(Some(
            tags.into_iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .send()
        .await
        .expect("create workgroup");
}

#[tokio::test]
async fn workgroup_is_created_then_left_alone() {
    let env = start().await;
    let workgroup = desired(&env, "full", false).await;
    assert_eq!(
        athena::observe(&env.clients.athena, &workgroup).await,
        Ok(None)
    );
    let made = reconcile(&env, &workgroup).await.expect("create");
    assert!(matches!(
        made.as_slice(),
        [athena::Change::CreateWorkGroup { .. }]
    ));
    let observed = athena::observe(&env.clients.athena, &workgroup)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(
        observed.output_location.as_deref(),
        Some("s3://shop-full-heatmap-athena-123456789012/athena-results/")
    );
    assert_eq!(observed.enforce_configuration, Some(true));
    assert_eq!(observed.bytes_scanned_cutoff_per_query, Some(1_073_741_824));
    assert_eq!(
        observed.tags["clickheatmap.io/pipeline"],
        "analytics/shop-full"
    );

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &workgroup).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "workgroup resync");
}

#[tokio::test]
async fn drift_is_repaired_or_planned() {
    let env = start().await;
    let workgroup = desired(&env, "minimal", false).await;
    reconcile(&env, &workgroup).await.expect("create");
    // Tag drift: someone removed the managed-by tag.
    env.clients
        .athena
        .untag_resource()
        .resource_arn(&workgroup.arn)
        .tag_keys("clickheatmap.io/managed-by")
        .send()
        .await
        .expect("untag");
    let made = reconcile(&env, &workgroup).await.expect("repair");
    assert_eq!(
        made,
        vec![athena::Change::TagResource {
            workgroup: workgroup.name.clone(),
            resource_arn: workgroup.arn.clone(),
            tags: [(
                "clickheatmap.io/managed-by".to_owned(),
                "clickheatmap-operator".to_owned()
            )]
            .into(),
        }]
    );
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &workgroup).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after tag repair");

    // Configuration drift: results going elsewhere (re-created, as moto cannot update).
    env.clients
        .athena
        .delete_work_group()
        .work_group(&workgroup.name)
        .send()
        .await
        .expect("delete");
    create_foreign(
        &env,
        &workgroup.name,
        "s3://elsewhere/",
        workgroup.tags.clone().into_iter().collect(),
    )
    .await;
    let observed = athena::observe(&env.clients.athena, &workgroup)
        .await
        .expect("observe")
        .expect("exists");
    let changes = athena::Query::diff(&workgroup, Some(&observed)).expect("diff");
    assert_eq!(
        changes,
        vec![athena::Change::UpdateWorkGroup {
            workgroup: workgroup.name.clone(),
            settings: workgroup.settings.clone(),
            enable: false,
        }]
    );
    let error = athena::apply(&env.clients.athena, &changes[0])
        .await
        .expect_err("moto has no UpdateWorkGroup");
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn a_workgroup_of_another_pipeline_is_refused() {
    let env = start().await;
    let workgroup = desired(&env, "full", true).await;
    create_foreign(
        &env,
        &workgroup.name,
        "s3://theirs/",
        Owner::new("analytics", "other")
            .tags()
            .into_iter()
            .collect(),
    )
    .await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &workgroup).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    assert!(matches!(
        athena::delete(&env.clients.athena, &workgroup).await,
        Ok(Deletion::Kept(_))
    ));
    assert!(
        athena::observe(&env.clients.athena, &workgroup)
            .await
            .expect("observe")
            .is_some()
    );
}

#[tokio::test]
async fn an_untagged_workgroup_is_adopted_only_when_asked() {
    let env = start().await;
    let without = desired(&env, "minimal", false).await;
    // Same settings as the spec: adoption then only needs the tags (moto cannot update).
    create_foreign(
        &env,
        &without.name,
        &without.settings.output_location,
        Vec::new(),
    )
    .await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &without).await.expect_err("conflict");
    assert!(error.to_string().contains("adoptExisting"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());

    let with = desired(&env, "minimal", true).await;
    let made = reconcile(&env, &with).await.expect("adopt");
    assert!(
        matches!(made.as_slice(), [athena::Change::TagResource { .. }]),
        "{made:?}"
    );
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &without).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
}

#[tokio::test]
async fn deletion_policies() {
    let env = start().await;
    let workgroup = desired(&env, "minimal", false).await;
    reconcile(&env, &workgroup).await.expect("create");
    assert_eq!(
        athena::delete(&env.clients.athena, &workgroup).await,
        Ok(Deletion::Gone)
    );
    assert_eq!(
        athena::observe(&env.clients.athena, &workgroup).await,
        Ok(None)
    );
}

#[tokio::test]
async fn adopting_a_workgroup_keeps_its_kms_result_encryption() {
    let env = start().await;
    let with = desired(&env, "minimal", true).await;
    create_foreign_encrypted(
        &env,
        &with.name,
        &with.settings.output_location,
        Vec::new(),
        EncryptionOption::SseKms,
        Some("alias/team-results"),
    )
    .await;
    let made = reconcile(&env, &with).await.expect("adopt");
    assert!(
        matches!(made.as_slice(), [athena::Change::TagResource { .. }]),
        "only the owner tags: {made:?}"
    );
    let observed = athena::observe(&env.clients.athena, &with)
        .await
        .expect("observe")
        .expect("exists");
    let encryption = observed.results_encryption.clone().expect("encrypted");
    assert_eq!(
        (encryption.option.as_str(), encryption.kms_key.as_deref()),
        ("SSE_KMS", Some("alias/team-results"))
    );
    let kept = athena::Query::kept(&with, Some(&observed));
    assert!(kept[0].contains("alias/team-results"), "{kept:?}");
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &with).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
}
