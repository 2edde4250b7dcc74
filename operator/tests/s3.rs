//! The S3 reconciler against a real moto server: create from nothing, a resync that makes no
//! write (diff empty *and* no mutating call on the wire), drift repaired, a bucket of another
//! pipeline refused, adoption with and without `adoptExisting`, and both deletion policies.

mod common;

use std::collections::BTreeMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    NoncurrentVersionExpiration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};
use clickheatmap_operator::aws::{Deletion, PartReconciler, s3};
use clickheatmap_operator::{Error, Owner, Reason};
use common::{Env, assert_no_writes, pipeline, start, writes_since};

/// Observe, diff and apply every bucket; returns the changes made.
async fn reconcile(env: &Env, buckets: &[s3::DesiredBucket]) -> Result<Vec<s3::Change>, Error> {
    let mut made = Vec::new();
    for bucket in buckets {
        let observed = s3::observe(&env.clients.s3, bucket).await?;
        for change in s3::Buckets::diff(bucket, observed.as_ref())? {
            s3::apply(&env.clients.s3, &change).await?;
            made.push(change);
        }
    }
    Ok(made)
}

async fn desired(env: &Env, adopt: bool) -> Vec<s3::DesiredBucket> {
    let mut pipeline = pipeline("minimal");
    pipeline.spec.adopt_existing = adopt;
    s3::desired(&pipeline.spec, &env.names(&pipeline).await)
}

/// A customer's lifecycle rule with a field the operator's own vocabulary does not know.
fn users_rule() -> LifecycleRule {
    LifecycleRule::builder()
        .id("team-expire-exports")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("exports/").build())
        .expiration(LifecycleExpiration::builder().days(30).build())
        .noncurrent_version_expiration(
            NoncurrentVersionExpiration::builder()
                .noncurrent_days(3)
                .build(),
        )
        .build()
        .expect("rule")
}

/// The customer's settings: SSE-KMS and only their own lifecycle rule.
async fn customise(env: &Env, bucket: &str) {
    let client = env.s3();
    client
        .put_bucket_encryption()
        .bucket(bucket)
        .server_side_encryption_configuration(
            ServerSideEncryptionConfiguration::builder()
                .rules(
                    ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(
                            ServerSideEncryptionByDefault::builder()
                                .sse_algorithm(ServerSideEncryption::AwsKms)
                                .kms_master_key_id("alias/team-data")
                                .build()
                                .expect("default"),
                        )
                        .build(),
                )
                .build()
                .expect("encryption"),
        )
        .send()
        .await
        .expect("put encryption");
    client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(users_rule())
                .build()
                .expect("lifecycle"),
        )
        .send()
        .await
        .expect("put lifecycle");
}

/// The bucket still has the customer's KMS key and rule, exactly.
async fn assert_customer_settings_kept(env: &Env, bucket: &str) {
    let client = env.s3();
    let encryption = client
        .get_bucket_encryption()
        .bucket(bucket)
        .send()
        .await
        .expect("encryption");
    let default = encryption
        .server_side_encryption_configuration()
        .and_then(|c| c.rules().first())
        .and_then(|r| r.apply_server_side_encryption_by_default())
        .expect("default encryption");
    assert_eq!(default.sse_algorithm(), &ServerSideEncryption::AwsKms);
    assert_eq!(default.kms_master_key_id(), Some("alias/team-data"));
    let lifecycle = client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
        .expect("lifecycle");
    let theirs = lifecycle
        .rules()
        .iter()
        .find(|r| r.id() == Some("team-expire-exports"))
        .expect("the customer's rule is still there");
    assert_eq!(theirs, &users_rule(), "the customer's rule, field by field");
}

async fn create_foreign_bucket(env: &Env, bucket: &str, tags: &[(&str, &str)]) {
    let client = env.s3();
    client
        .create_bucket()
        .bucket(bucket)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(common::REGION))
                .build(),
        )
        .send()
        .await
        .expect("create bucket");
    if !tags.is_empty() {
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build().expect("tag"))
            .collect();
        client
            .put_bucket_tagging()
            .bucket(bucket)
            .tagging(
                Tagging::builder()
                    .set_tag_set(Some(tag_set))
                    .build()
                    .expect("tagging"),
            )
            .send()
            .await
            .expect("tag bucket");
    }
}

async fn tags_of(env: &Env, bucket: &str) -> BTreeMap<String, String> {
    env.s3()
        .get_bucket_tagging()
        .bucket(bucket)
        .send()
        .await
        .map(|out| {
            out.tag_set()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn buckets_are_created_configured_and_then_left_alone() {
    let env = start().await;
    let buckets = desired(&env, false).await;
    let made = reconcile(&env, &buckets).await.expect("create");
    assert_eq!(made.len(), 12, "4 calls per bucket: {made:#?}");

    let client = env.s3();
    for bucket in &buckets {
        let block = client
            .get_public_access_block()
            .bucket(&bucket.name)
            .send()
            .await
            .expect("public access block");
        let block = block.public_access_block_configuration().expect("config");
        assert_eq!(block.block_public_acls(), Some(true));
        assert_eq!(block.ignore_public_acls(), Some(true));
        assert_eq!(block.block_public_policy(), Some(true));
        assert_eq!(block.restrict_public_buckets(), Some(true));
        let encryption = client
            .get_bucket_encryption()
            .bucket(&bucket.name)
            .send()
            .await
            .expect("encryption");
        let algorithm = encryption
            .server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|r| r.apply_server_side_encryption_by_default())
            .map(|d| d.sse_algorithm().clone());
        assert_eq!(algorithm, Some(ServerSideEncryption::Aes256));
        let tags = tags_of(&env, &bucket.name).await;
        assert_eq!(tags["clickheatmap.io/pipeline"], "analytics/shop");
        assert_eq!(tags["clickheatmap.io/managed-by"], "clickheatmap-operator");
    }
    let raw = buckets
        .iter()
        .find(|b| b.roles == [s3::BucketRole::Raw])
        .expect("raw bucket");
    let rules = client
        .get_bucket_lifecycle_configuration()
        .bucket(&raw.name)
        .send()
        .await
        .expect("lifecycle");
    let ids: Vec<_> = rules.rules().iter().filter_map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [
            "clickheatmap-abort-incomplete-uploads",
            "clickheatmap-raw-archive"
        ]
    );

    // The resync: nothing to change, and nothing written.
    let before = env.calls.snapshot();
    let made = reconcile(&env, &buckets).await.expect("resync");
    assert_eq!(made, vec![], "diff is empty when in sync");
    assert_no_writes(&env.calls, &before, "bucket resync");
    // Exactly the reads: HeadBucket, tags, public access block, encryption, lifecycle.
    assert_eq!(env.calls.since(&before).values().sum::<u64>(), 15);
}

#[tokio::test]
async fn drift_is_repaired() {
    let env = start().await;
    let buckets = desired(&env, false).await;
    reconcile(&env, &buckets).await.expect("create");
    let bucket = &buckets[0].name;
    let client = env.s3();
    // Behind the operator's back: public access allowed (repaired), KMS encryption with the
    // team's key and a lifecycle configuration with only the team's rule (both kept, the
    // operator's rules added back), and an extra tag someone added (which must survive).
    client
        .delete_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .expect("delete block");
    customise(&env, bucket).await;
    let mut tags = tags_of(&env, bucket).await;
    tags.insert("team".into(), "web".into());
    let tag_set = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().expect("tag"))
        .collect();
    client
        .put_bucket_tagging()
        .bucket(bucket)
        .tagging(
            Tagging::builder()
                .set_tag_set(Some(tag_set))
                .build()
                .expect("tagging"),
        )
        .send()
        .await
        .expect("tag");

    let made = reconcile(&env, &buckets).await.expect("repair");
    let ops: Vec<_> = made
        .iter()
        .map(|c| serde_json::to_value(c).expect("json")["op"].clone())
        .collect();
    assert_eq!(
        ops,
        ["PutPublicAccessBlock", "PutBucketLifecycleConfiguration"]
    );
    let observed = s3::observe(&env.clients.s3, &buckets[0])
        .await
        .expect("observe")
        .expect("exists");
    let config = observed.config.expect("config");
    assert_eq!(config.public_access_block, s3::PublicAccessBlock::ALL);
    assert_eq!(config.lifecycle, buckets[0].lifecycle);
    assert_eq!(observed.tags["team"], "web");
    assert_customer_settings_kept(&env, bucket).await;

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &buckets).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after repair");
}

#[tokio::test]
async fn a_bucket_of_another_pipeline_is_refused_and_untouched() {
    let env = start().await;
    let buckets = desired(&env, true).await;
    let name = buckets[0].name.clone();
    let other = Owner::new("analytics", "other").tags();
    let other: Vec<(&str, &str)> = other
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    create_foreign_bucket(&env, &name, &other).await;

    let before = env.calls.snapshot();
    let error = reconcile(&env, &buckets[..1]).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(error.to_string().contains("analytics/other"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    // Not even its settings were read.
    assert!(
        !env.calls
            .since(&before)
            .keys()
            .any(|op| op.contains("Lifecycle")),
        "{:?}",
        env.calls.since(&before)
    );
    assert_eq!(
        tags_of(&env, &name).await["clickheatmap.io/pipeline"],
        "analytics/other"
    );

    // Deletion leaves it too.
    let deletion = s3::delete(&env.clients.s3, &buckets[0])
        .await
        .expect("delete");
    assert!(matches!(deletion, Deletion::Kept(_)), "{deletion:?}");
    assert!(env.s3().head_bucket().bucket(&name).send().await.is_ok());
}

#[tokio::test]
async fn an_untagged_bucket_is_adopted_only_when_asked() {
    let env = start().await;
    let name = desired(&env, false).await[0].name.clone();
    create_foreign_bucket(&env, &name, &[("team", "web")]).await;

    let without = desired(&env, false).await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &without[..1]).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(error.to_string().contains("adoptExisting"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());

    let with = desired(&env, true).await;
    let made = reconcile(&env, &with[..1]).await.expect("adopt");
    assert!(
        matches!(&made[0], s3::Change::PutBucketTagging { tags, .. } if tags["team"] == "web"),
        "the owner tags come first and keep the others: {made:#?}"
    );
    let tags = tags_of(&env, &name).await;
    assert_eq!(tags["clickheatmap.io/pipeline"], "analytics/shop");
    assert_eq!(tags["team"], "web");
    // Once adopted it is the pipeline's: even without adoptExisting it is in sync.
    let before = env.calls.snapshot();
    assert_eq!(
        reconcile(&env, &without[..1]).await.expect("resync"),
        vec![]
    );
    assert_no_writes(&env.calls, &before, "resync after adoption");
}

#[tokio::test]
async fn deletion_policies() {
    let env = start().await;
    let buckets = desired(&env, false).await;
    reconcile(&env, &buckets).await.expect("create");
    let client = env.s3();
    for key in ["raw/2024/01/01/a", "raw/2024/01/01/b", "other/c"] {
        client
            .put_object()
            .bucket(&buckets[0].name)
            .key(key)
            .body(ByteStream::from_static(b"{}"))
            .send()
            .await
            .expect("put object");
    }

    assert!(
        client
            .head_bucket()
            .bucket(&buckets[0].name)
            .send()
            .await
            .is_ok()
    );

    for bucket in &buckets {
        let mut rounds = 0;
        loop {
            let deletion = s3::delete(&env.clients.s3, bucket).await.expect("delete");
            if deletion == Deletion::Gone {
                break;
            }
            rounds += 1;
            assert!(rounds < 5, "{deletion:?}");
        }
        assert!(
            client
                .head_bucket()
                .bucket(&bucket.name)
                .send()
                .await
                .is_err()
        );
    }
    // Deleting again finds nothing and succeeds.
    assert_eq!(
        s3::delete(&env.clients.s3, &buckets[0]).await,
        Ok(Deletion::Gone)
    );
}

#[tokio::test]
async fn adopting_a_bucket_never_weakens_it() {
    let env = start().await;
    let buckets = desired(&env, true).await;
    let bucket = buckets[0].name.clone();
    create_foreign_bucket(&env, &bucket, &[("team", "web")]).await;
    customise(&env, &bucket).await;

    let made = reconcile(&env, &buckets[..1]).await.expect("adopt");
    let ops: Vec<_> = made
        .iter()
        .map(|c| serde_json::to_value(c).expect("json")["op"].clone())
        .collect();
    // Tagged as the pipeline's, public access blocked, the operator's rules added: no
    // encryption call, and the team's rule written back verbatim.
    assert_eq!(
        ops,
        [
            "PutBucketTagging",
            "PutPublicAccessBlock",
            "PutBucketLifecycleConfiguration"
        ]
    );
    assert!(
        made[2]
            .to_string()
            .ends_with("keeping the bucket's own [team-expire-exports]"),
        "{}",
        made[2]
    );
    assert_customer_settings_kept(&env, &bucket).await;

    // A resync changes nothing of the customer's, and writes nothing at all.
    let before = env.calls.snapshot();
    assert_eq!(
        reconcile(&env, &buckets[..1]).await.expect("resync"),
        vec![]
    );
    assert_no_writes(&env.calls, &before, "resync after adopting");
    assert_customer_settings_kept(&env, &bucket).await;
}
