//! The Kinesis reconciler against a real moto server: a stream created and brought to the full
//! example's settings over several reconciles (create, then retention and KMS once it is
//! ACTIVE), a resync without writes, shard-count drift repaired in UpdateShardCount-sized steps,
//! retention and encryption drift repaired, a stream of another pipeline refused, adoption, and
//! both deletion policies.
//!
//! moto makes every stream ACTIVE at once, so "waiting for ACTIVE" is a plain next call here;
//! the waiting itself is unit-tested in `src/aws/kinesis.rs`. moto does not enforce the
//! half/double rule of UpdateShardCount; the steps are checked by what the operator asks for.

mod common;

use clickheatmap_operator::aws::{Deletion, PartReconciler, Readiness, kinesis};
use clickheatmap_operator::{Error, Owner, Reason};
use common::{Env, assert_no_writes, pipeline, start, writes_since};

/// One reconcile: observe, diff, apply until a change that needs the stream to settle.
async fn reconcile(
    env: &Env,
    desired: &kinesis::DesiredStream,
) -> Result<Vec<kinesis::Change>, Error> {
    let observed =
        kinesis::observe(&env.clients.kinesis, &desired.name, &desired.consumer.name).await?;
    let mut made = Vec::new();
    for change in kinesis::Stream::diff(desired, observed.as_ref())? {
        kinesis::apply(&env.clients.kinesis, &change).await?;
        let settle = change.needs_settling();
        made.push(change);
        if settle {
            break;
        }
    }
    Ok(made)
}

/// Reconciles until nothing changes; returns every change made, per round.
async fn converge(env: &Env, desired: &kinesis::DesiredStream) -> Vec<Vec<kinesis::Change>> {
    let mut rounds = Vec::new();
    for _ in 0..10 {
        let made = reconcile(env, desired).await.expect("reconcile");
        if made.is_empty() {
            return rounds;
        }
        rounds.push(made);
    }
    panic!("did not converge: {rounds:#?}");
}

async fn desired(env: &Env, file: &str, adopt: bool) -> kinesis::DesiredStream {
    let mut pipeline = pipeline(file);
    pipeline.spec.adopt_existing = adopt;
    kinesis::desired(&pipeline.spec, &env.names(&pipeline).await)
}

#[tokio::test]
async fn stream_is_created_then_configured_then_left_alone() {
    let env = start().await;
    let stream = desired(&env, "full", false).await;
    let rounds = converge(&env, &stream).await;
    let ops: Vec<Vec<String>> = rounds
        .iter()
        .map(|round| {
            round
                .iter()
                .map(|c| {
                    serde_json::to_value(c).expect("json")["op"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            vec!["CreateStream".to_owned()],
            vec![
                "RegisterStreamConsumer".to_owned(),
                "IncreaseStreamRetentionPeriod".to_owned(),
                "StartStreamEncryption".to_owned()
            ],
        ]
    );
    let observed = kinesis::observe(&env.clients.kinesis, &stream.name, &stream.consumer.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(observed.open_shards, 2);
    assert_eq!(observed.retention_hours, 48);
    assert_eq!(observed.encryption_type, "KMS");
    assert_eq!(observed.key_id.as_deref(), Some("alias/shop-heatmap"));
    assert_eq!(observed.arn, stream.arn);
    assert_eq!(
        observed.tags["clickheatmap.io/pipeline"],
        "analytics/shop-full"
    );
    assert_eq!(
        observed.tags["clickheatmap.io/managed-by"],
        "clickheatmap-operator"
    );
    assert_eq!(
        kinesis::Stream::readiness(&stream, Some(&observed)),
        Readiness::Ready
    );

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &stream).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "stream resync");
    assert_eq!(
        env.calls.since(&before).into_keys().collect::<Vec<_>>(),
        [
            "Kinesis:DescribeStreamConsumer",
            "Kinesis:DescribeStreamSummary",
            "Kinesis:ListTagsForStream"
        ]
    );
}

#[tokio::test]
async fn the_fan_out_consumer_follows_the_spec() {
    let env = start().await;
    let mut stream = desired(&env, "full", false).await;
    assert!(stream.consumer.wanted);
    converge(&env, &stream).await;
    let observe = |stream: kinesis::DesiredStream| {
        let client = env.clients.kinesis.clone();
        async move {
            kinesis::observe(&client, &stream.name, &stream.consumer.name)
                .await
                .expect("observe")
                .expect("exists")
        }
    };
    let consumer = observe(stream.clone()).await.consumer.expect("registered");
    assert!(
        consumer
            .arn
            .contains(":stream/shop-full-clicks/consumer/shop-full-aggregator"),
        "{consumer:?}"
    );

    // Turned off: deregistered (it is billed per shard-hour), then nothing more to do.
    stream.consumer.wanted = false;
    let made = reconcile(&env, &stream).await.expect("reconcile");
    assert!(
        matches!(made.as_slice(), [kinesis::Change::DeregisterStreamConsumer { consumer, .. }] if consumer == "shop-full-aggregator"),
        "{made:?}"
    );
    assert_eq!(observe(stream.clone()).await.consumer, None);
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &stream).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync without a consumer");

    // On again: registered again.
    stream.consumer.wanted = true;
    let made = reconcile(&env, &stream).await.expect("reconcile");
    assert!(
        matches!(
            made.as_slice(),
            [kinesis::Change::RegisterStreamConsumer { .. }]
        ),
        "{made:?}"
    );
    assert!(observe(stream).await.consumer.is_some());
}

#[tokio::test]
async fn drift_is_repaired_in_allowed_steps() {
    let env = start().await;
    let stream = desired(&env, "full", false).await;
    converge(&env, &stream).await;
    let client = &env.clients.kinesis;
    // Behind the operator's back: 8 shards (in two allowed steps: moto's resharding is only
    // faithful within UpdateShardCount's limits), a week of retention, no encryption.
    for target in [4, 8] {
        client
            .update_shard_count()
            .stream_name(&stream.name)
            .target_shard_count(target)
            .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
            .send()
            .await
            .expect("reshard");
    }
    client
        .increase_stream_retention_period()
        .stream_name(&stream.name)
        .retention_period_hours(168)
        .send()
        .await
        .expect("retention");
    client
        .stop_stream_encryption()
        .stream_name(&stream.name)
        .encryption_type(aws_sdk_kinesis::types::EncryptionType::Kms)
        .key_id("alias/shop-heatmap")
        .send()
        .await
        .expect("stop encryption");

    let rounds = converge(&env, &stream).await;
    let flat: Vec<kinesis::Change> = rounds.into_iter().flatten().collect();
    assert_eq!(
        flat,
        vec![
            kinesis::Change::DecreaseStreamRetentionPeriod {
                stream: stream.name.clone(),
                from: 168,
                to: 48
            },
            kinesis::Change::StartStreamEncryption {
                stream: stream.name.clone(),
                key_id: "alias/shop-heatmap".into()
            },
            kinesis::Change::UpdateShardCount {
                stream: stream.name.clone(),
                from: 8,
                to: 4,
                target: 2,
                calls_left: 10,
                more_from: None,
            },
            kinesis::Change::UpdateShardCount {
                stream: stream.name.clone(),
                from: 4,
                to: 2,
                target: 2,
                calls_left: 9,
                more_from: None,
            },
        ]
    );
    let observed = kinesis::observe(client, &stream.name, &stream.consumer.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(
        (
            observed.open_shards,
            observed.retention_hours,
            observed.encryption_type.as_str()
        ),
        (2, 48, "KMS")
    );
}

#[tokio::test]
async fn a_stream_of_another_pipeline_is_refused() {
    let env = start().await;
    let stream = desired(&env, "full", true).await;
    env.clients
        .kinesis
        .create_stream()
        .stream_name(&stream.name)
        .shard_count(1)
        .send()
        .await
        .expect("create");
    let mut tag = env
        .clients
        .kinesis
        .add_tags_to_stream()
        .stream_name(&stream.name);
    for (key, value) in Owner::new("analytics", "other").tags() {
        tag = tag.tags(key, value);
    }
    tag.send().await.expect("tag");

    let before = env.calls.snapshot();
    let error = reconcile(&env, &stream).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(!error.is_retryable());
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    let observed = kinesis::observe(&env.clients.kinesis, &stream.name, &stream.consumer.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(observed.open_shards, 1, "not resharded");
    assert_eq!(observed.retention_hours, 24, "not changed");

    let deletion = kinesis::delete(&env.clients.kinesis, &stream)
        .await
        .expect("delete");
    assert!(matches!(deletion, Deletion::Kept(_)), "{deletion:?}");
}

#[tokio::test]
async fn an_untagged_stream_is_adopted_only_when_asked() {
    let env = start().await;
    let without = desired(&env, "minimal", false).await;
    env.clients
        .kinesis
        .create_stream()
        .stream_name(&without.name)
        .shard_count(3)
        .send()
        .await
        .expect("create");
    env.clients
        .kinesis
        .increase_stream_retention_period()
        .stream_name(&without.name)
        .retention_period_hours(72)
        .send()
        .await
        .expect("retention");

    let before = env.calls.snapshot();
    let error = reconcile(&env, &without).await.expect_err("conflict");
    assert!(error.to_string().contains("adoptExisting"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());

    let with = desired(&env, "minimal", true).await;
    assert_eq!(
        reconcile(&env, &with).await.expect("adopt"),
        vec![kinesis::Change::AddTagsToStream {
            stream: with.name.clone(),
            tags: with.tags.clone()
        }]
    );
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &without).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
    // The minimal spec names neither shards nor retention: the team's stream keeps both.
    let adopted = kinesis::observe(&env.clients.kinesis, &with.name, &with.consumer.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!((adopted.open_shards, adopted.retention_hours), (3, 72));
}

#[tokio::test]
async fn adopting_an_encrypted_stream_never_stops_its_encryption() {
    let env = start().await;
    // The minimal example asks for no encryption; the team's stream has their KMS key.
    let stream = desired(&env, "minimal", true).await;
    let client = &env.clients.kinesis;
    client
        .create_stream()
        .stream_name(&stream.name)
        .shard_count(1)
        .send()
        .await
        .expect("create");
    converge_until_active(&env, &stream).await;
    client
        .start_stream_encryption()
        .stream_name(&stream.name)
        .encryption_type(aws_sdk_kinesis::types::EncryptionType::Kms)
        .key_id("alias/team-streams")
        .send()
        .await
        .expect("encrypt");

    let rounds = converge(&env, &stream).await;
    let flat: Vec<kinesis::Change> = rounds.into_iter().flatten().collect();
    assert_eq!(
        flat,
        vec![kinesis::Change::AddTagsToStream {
            stream: stream.name.clone(),
            tags: stream.tags.clone()
        }],
        "only the owner tags: the encryption stays"
    );
    let observed = kinesis::observe(client, &stream.name, &stream.consumer.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(observed.encryption_type, "KMS");
    assert_eq!(observed.key_id.as_deref(), Some("alias/team-streams"));
    let kept = kinesis::Stream::kept(&stream, Some(&observed));
    assert!(kept[0].contains("alias/team-streams"), "{kept:?}");
}

/// Waits until the stream is ACTIVE (moto makes it so at once; the wait is for AWS parity).
async fn converge_until_active(env: &Env, stream: &kinesis::DesiredStream) {
    for _ in 0..50 {
        let observed = kinesis::observe(&env.clients.kinesis, &stream.name, &stream.consumer.name)
            .await
            .expect("observe");
        if observed.is_some_and(|o| o.status == "ACTIVE") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("stream {} never became ACTIVE", stream.name);
}

#[tokio::test]
async fn deletion_policies() {
    let env = start().await;
    let stream = desired(&env, "minimal", false).await;
    converge(&env, &stream).await;
    let first = kinesis::delete(&env.clients.kinesis, &stream)
        .await
        .expect("delete");
    assert!(matches!(first, Deletion::InProgress(_)), "{first:?}");
    assert_eq!(
        kinesis::delete(&env.clients.kinesis, &stream).await,
        Ok(Deletion::Gone)
    );
    assert_eq!(
        kinesis::observe(&env.clients.kinesis, &stream.name, &stream.consumer.name).await,
        Ok(None)
    );
}

/// The operator's record of its resizes, from the stream's tags.
async fn resized_at(env: &Env, stream: &str) -> Vec<i64> {
    kinesis::observe(&env.clients.kinesis, stream, "none")
        .await
        .expect("observe")
        .expect("exists")
        .resized_at
}

#[tokio::test]
async fn resizes_are_recorded_and_the_quota_is_said_before_it_runs_out() {
    let env = start().await;
    let mut stream = desired(&env, "full", false).await;
    converge(&env, &stream).await;
    assert_eq!(resized_at(&env, &stream.name).await, Vec::<i64>::new());

    // Seven resizes recorded in the last hours (by an earlier reconcile): 3 calls are left.
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let seven: Vec<i64> = (1..=7).map(|h| now - h * 3600).collect();
    let value = seven
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    env.clients
        .kinesis
        .add_tags_to_stream()
        .stream_name(&stream.name)
        .tags(kinesis::RESIZED_AT_TAG, value)
        .send()
        .await
        .expect("tag");
    stream.shards = Some(64);
    let made = reconcile(&env, &stream).await.expect("resize");
    let [
        kinesis::Change::UpdateShardCount {
            from: 2,
            to: 4,
            target: 64,
            calls_left: 3,
            more_from: Some(more_from),
            ..
        },
    ] = made.as_slice()
    else {
        panic!("{made:?}");
    };
    let expected = k8s_openapi::jiff::Timestamp::from_second(now - 7 * 3600 + 24 * 3600)
        .expect("time")
        .to_string();
    assert_eq!(more_from, &expected);
    assert!(
        made[0].to_string().ends_with(&format!(
            "(resizing 2 → 64 shards needs 5 UpdateShardCount calls; 3 are left in the 24 h \
             quota: 16 shards today, the rest from {expected})"
        )),
        "{}",
        made[0]
    );
    // The call is recorded beside the earlier ones.
    let recorded = resized_at(&env, &stream.name).await;
    assert_eq!(recorded.len(), 8);
    assert_eq!(
        recorded[..7],
        seven.iter().rev().copied().collect::<Vec<_>>()[..]
    );
    assert!(recorded[7] >= now);

    // Two more calls use the quota up; then none is planned and the stream says until when.
    let rounds = converge(&env, &stream).await;
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    let observed = kinesis::observe(&env.clients.kinesis, &stream.name, "none")
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!((observed.open_shards, observed.resized_at.len()), (16, 10));
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &stream).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "no call left");
    let Readiness::Deferred { message, until } =
        kinesis::Stream::readiness(&stream, Some(&observed))
    else {
        panic!("a resize past the quota is deferred");
    };
    assert_eq!(
        message,
        format!(
            "stream {}: resizing 16 → 64 shards needs 2 UpdateShardCount calls; none is left in \
             the 24 h quota: the next from {expected}",
            stream.name
        )
    );
    // The operator comes back then (the requeue follows `until`).
    assert_eq!(
        until,
        observed.resized_at.iter().min().copied().unwrap() + 86_400
    );
}
