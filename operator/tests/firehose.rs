//! The Firehose reconciler against a real moto server: the raw-archive delivery stream created
//! from nothing (Kinesis source + Extended S3 destination), a resync without writes, destination
//! drift repaired with UpdateDestination (carrying the current version id), a delivery stream of
//! another pipeline or with another source refused, adoption (keeping every setting the spec has
//! no field for), and both deletion policies.
//!
//! moto's Firehose never reads its Kinesis source (and does not check that the stream exists);
//! these tests check configuration only, which is all the operator manages.

mod common;

use aws_sdk_firehose::types::{
    BufferingHints, CloudWatchLoggingOptions, CompressionFormat,
    DeliveryStreamEncryptionConfigurationInput, DeliveryStreamType, EncryptionConfiguration,
    ExtendedS3DestinationConfiguration, ExtendedS3DestinationUpdate, KeyType,
    KinesisStreamSourceConfiguration, KmsEncryptionConfig, ProcessingConfiguration, Processor,
    ProcessorParameter, ProcessorParameterName, ProcessorType, S3BackupMode,
    S3DestinationConfiguration, Tag,
};
use clickheatmap_operator::aws::{Deletion, PartReconciler, firehose};
use clickheatmap_operator::{Error, Owner, Reason};
use common::{Env, assert_no_writes, pipeline, start, writes_since};

async fn reconcile(
    env: &Env,
    desired: &firehose::DesiredDeliveryStream,
) -> Result<Vec<firehose::Change>, Error> {
    let observed = firehose::observe(&env.clients.firehose, &desired.name).await?;
    let mut made = Vec::new();
    for change in firehose::RawArchive::diff(desired, observed.as_ref())? {
        firehose::apply(&env.clients.firehose, &change).await?;
        made.push(change);
    }
    Ok(made)
}

async fn desired(env: &Env, file: &str, adopt: bool) -> firehose::DesiredDeliveryStream {
    let mut pipeline = pipeline(file);
    pipeline.spec.adopt_existing = adopt;
    firehose::desired(&pipeline.spec, &env.names(&pipeline).await)
        .expect("valid")
        .expect("enabled")
}

/// A delivery stream made by someone else, from `source` to a bucket of their own.
async fn create_foreign(env: &Env, name: &str, source: &str, tags: Vec<(String, String)>) {
    let role = "arn:aws:iam::123456789012:role/someone";
    let tags = tags
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().expect("tag"))
        .collect();
    env.clients
        .firehose
        .create_delivery_stream()
        .delivery_stream_name(name)
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(
            KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn(source)
                .role_arn(role)
                .build()
                .expect("source"),
        )
        .extended_s3_destination_configuration(
            // AWS fills in the defaults; moto only echoes what it was given (and the SDK then
            // insists on a compression format), so they are spelled out here.
            ExtendedS3DestinationConfiguration::builder()
                .bucket_arn("arn:aws:s3:::someone-else")
                .role_arn(role)
                .compression_format(CompressionFormat::Uncompressed)
                .buffering_hints(
                    BufferingHints::builder()
                        .size_in_mbs(5)
                        .interval_in_seconds(300)
                        .build(),
                )
                .build()
                .expect("destination"),
        )
        .set_tags(Some(tags))
        .send()
        .await
        .expect("create");
}

#[tokio::test]
async fn delivery_stream_is_created_then_left_alone() {
    let env = start().await;
    let stream = desired(&env, "full", false).await;
    let made = reconcile(&env, &stream).await.expect("create");
    assert!(matches!(
        made.as_slice(),
        [firehose::Change::CreateDeliveryStream { .. }]
    ));

    let observed = firehose::observe(&env.clients.firehose, &stream.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(observed.stream_type, "KinesisStreamAsSource");
    assert_eq!(
        observed.source_stream_arn.as_deref(),
        Some(stream.stream_arn.as_str())
    );
    assert_eq!(
        observed.source_role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/shop-heatmap-firehose")
    );
    let destination = observed.destination.clone().expect("extended S3");
    assert_eq!(
        destination.bucket_arn,
        "arn:aws:s3:::shop-full-heatmap-raw-123456789012"
    );
    assert_eq!(destination.prefix, "raw/");
    assert_eq!(destination.buffer_size_mib, 64);
    assert_eq!(destination.buffer_interval_seconds, 60);
    assert_eq!(destination.compression, "GZIP");
    assert_eq!(
        observed.tags["clickheatmap.io/pipeline"],
        "analytics/shop-full"
    );

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &stream).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "delivery stream resync");
}

#[tokio::test]
async fn destination_drift_is_repaired_with_the_current_version() {
    let env = start().await;
    // The full example names every field of the destination (fields a spec leaves unset are
    // the delivery stream's own: see the adoption test).
    let stream = desired(&env, "full", false).await;
    reconcile(&env, &stream).await.expect("create");
    let observed = firehose::observe(&env.clients.firehose, &stream.name)
        .await
        .expect("observe")
        .expect("exists");
    // Behind the operator's back: bigger buffers, GZIP, another prefix.
    env.clients
        .firehose
        .update_destination()
        .delivery_stream_name(&stream.name)
        .current_delivery_stream_version_id(&observed.version_id)
        .destination_id(&observed.destination_id)
        .extended_s3_destination_update(
            ExtendedS3DestinationUpdate::builder()
                .prefix("elsewhere/")
                .buffering_hints(
                    BufferingHints::builder()
                        .size_in_mbs(128)
                        .interval_in_seconds(900)
                        .build(),
                )
                .compression_format(CompressionFormat::Gzip)
                .build(),
        )
        .send()
        .await
        .expect("drift");
    let drifted = firehose::observe(&env.clients.firehose, &stream.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_ne!(drifted.version_id, observed.version_id);

    let made = reconcile(&env, &stream).await.expect("repair");
    assert_eq!(
        made,
        vec![firehose::Change::UpdateDestination {
            delivery_stream: stream.name.clone(),
            current_version_id: drifted.version_id.clone(),
            destination_id: drifted.destination_id.clone(),
            destination: stream.destination.clone(),
        }]
    );
    let repaired = firehose::observe(&env.clients.firehose, &stream.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!(repaired.destination.as_ref(), Some(&stream.destination));

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &stream).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after repair");
}

#[tokio::test]
async fn foreign_or_wrongly_sourced_delivery_streams_are_refused() {
    let env = start().await;
    let stream = desired(&env, "full", true).await;
    create_foreign(
        &env,
        &stream.name,
        &stream.stream_arn,
        Owner::new("analytics", "other")
            .tags()
            .into_iter()
            .collect(),
    )
    .await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &stream).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(error.to_string().contains("analytics/other"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    assert!(matches!(
        firehose::delete(&env.clients.firehose, &stream.name, &stream.owner).await,
        Ok(Deletion::Kept(_))
    ));

    // Ours by its tags, but reading another stream: Firehose cannot change a source.
    let env = start().await;
    create_foreign(
        &env,
        &stream.name,
        "arn:aws:kinesis:ap-northeast-2:123456789012:stream/other",
        stream.tags.clone().into_iter().collect(),
    )
    .await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &stream).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(error.to_string().contains("cannot change"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
}

#[tokio::test]
async fn an_untagged_delivery_stream_is_adopted_only_when_asked() {
    let env = start().await;
    let without = desired(&env, "minimal", false).await;
    create_foreign(&env, &without.name, &without.stream_arn, Vec::new()).await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &without).await.expect_err("conflict");
    assert!(error.to_string().contains("adoptExisting"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());

    let with = desired(&env, "minimal", true).await;
    let made = reconcile(&env, &with).await.expect("adopt");
    let ops: Vec<_> = made
        .iter()
        .map(|c| serde_json::to_value(c).expect("json")["op"].clone())
        .collect();
    assert_eq!(ops, ["TagDeliveryStream", "UpdateDestination"]);
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &without).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
}

#[tokio::test]
async fn deletion_policies() {
    let env = start().await;
    let stream = desired(&env, "minimal", false).await;
    reconcile(&env, &stream).await.expect("create");
    assert!(matches!(
        firehose::delete(&env.clients.firehose, &stream.name, &stream.owner).await,
        Ok(Deletion::InProgress(_))
    ));
    assert_eq!(
        firehose::delete(&env.clients.firehose, &stream.name, &stream.owner).await,
        Ok(Deletion::Gone)
    );
}

/// The settings of an adopted delivery stream that the spec has no field for, as Firehose
/// describes them.
async fn own_settings(env: &Env, name: &str) -> Vec<String> {
    let description = env
        .clients
        .firehose
        .describe_delivery_stream()
        .delivery_stream_name(name)
        .send()
        .await
        .expect("describe")
        .delivery_stream_description
        .expect("description");
    let s3 = description.destinations()[0]
        .extended_s3_destination_description()
        .expect("extended S3")
        .clone();
    vec![
        format!(
            "{:?}",
            description.delivery_stream_encryption_configuration()
        ),
        format!("{:?}", s3.encryption_configuration()),
        format!("{:?}", s3.cloud_watch_logging_options()),
        format!("{:?}", s3.processing_configuration()),
        format!("{:?}", s3.error_output_prefix()),
        format!("{:?}", s3.s3_backup_mode()),
        format!("{:?}", s3.s3_backup_description().map(|b| b.bucket_arn())),
    ]
}

#[tokio::test]
async fn adopting_a_delivery_stream_keeps_its_own_settings() {
    let env = start().await;
    let stream = desired(&env, "minimal", true).await;
    let role = stream.role_arn.clone();
    let key = "arn:aws:kms:ap-northeast-2:123456789012:key/team-key";
    // Made by hand the way a team would: the spec's bucket and prefix but smaller buffers, plus
    // settings the spec has no field for.
    env.clients
        .firehose
        .create_delivery_stream()
        .delivery_stream_name(&stream.name)
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(
            KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn(&stream.stream_arn)
                .role_arn(&role)
                .build()
                .expect("source"),
        )
        .delivery_stream_encryption_configuration_input(
            DeliveryStreamEncryptionConfigurationInput::builder()
                .key_type(KeyType::CustomerManagedCmk)
                .key_arn(key)
                .build()
                .expect("sse"),
        )
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .bucket_arn(&stream.destination.bucket_arn)
                .role_arn(&role)
                .prefix(&stream.destination.prefix)
                .error_output_prefix("errors/")
                .compression_format(CompressionFormat::Uncompressed)
                .buffering_hints(
                    BufferingHints::builder()
                        .size_in_mbs(1)
                        .interval_in_seconds(60)
                        .build(),
                )
                .encryption_configuration(
                    EncryptionConfiguration::builder()
                        .kms_encryption_config(
                            KmsEncryptionConfig::builder()
                                .awskms_key_arn(key)
                                .build()
                                .expect("kms"),
                        )
                        .build(),
                )
                .cloud_watch_logging_options(
                    CloudWatchLoggingOptions::builder()
                        .enabled(true)
                        .log_group_name("/aws/kinesisfirehose/team")
                        .log_stream_name("S3Delivery")
                        .build(),
                )
                .processing_configuration(
                    ProcessingConfiguration::builder()
                        .enabled(true)
                        .processors(
                            Processor::builder()
                                .r#type(ProcessorType::Lambda)
                                .parameters(
                                    ProcessorParameter::builder()
                                        .parameter_name(ProcessorParameterName::LambdaArn)
                                        .parameter_value(
                                            "arn:aws:lambda:ap-northeast-2:123456789012:function:scrub",
                                        )
                                        .build()
                                        .expect("parameter"),
                                )
                                .build()
                                .expect("processor"),
                        )
                        .build(),
                )
                .s3_backup_mode(S3BackupMode::Enabled)
                .s3_backup_configuration(
                    S3DestinationConfiguration::builder()
                        .bucket_arn("arn:aws:s3:::team-backup")
                        .role_arn(&role)
                        .compression_format(CompressionFormat::Gzip)
                        .buffering_hints(
                            BufferingHints::builder()
                                .size_in_mbs(5)
                                .interval_in_seconds(300)
                                .build(),
                        )
                        .build()
                        .expect("backup"),
                )
                .build()
                .expect("destination"),
        )
        .send()
        .await
        .expect("create");
    let settings = own_settings(&env, &stream.name).await;

    let made = reconcile(&env, &stream).await.expect("adopt");
    let ops: Vec<_> = made
        .iter()
        .map(|c| serde_json::to_value(c).expect("json")["op"].clone())
        .collect();
    // The minimal spec names no buffering or compression: the team's 1 MiB / 60 s stay.
    assert_eq!(ops, ["TagDeliveryStream"]);
    let adopted = firehose::observe(&env.clients.firehose, &stream.name)
        .await
        .expect("observe")
        .expect("exists");
    let destination = adopted.destination.clone().expect("destination");
    assert_eq!(
        (
            destination.buffer_size_mib,
            destination.buffer_interval_seconds,
            destination.compression.as_str()
        ),
        (1, 60, "UNCOMPRESSED")
    );
    assert_eq!(own_settings(&env, &stream.name).await, settings);
    let kept = firehose::RawArchive::kept(&stream, Some(&adopted));
    assert_eq!(
        kept,
        [
            format!(
                "delivery stream shop-clicks-raw server-side encryption (CUSTOMER_MANAGED_CMK with key {key})"
            ),
            format!("delivery stream shop-clicks-raw destination encryption with KMS key {key}"),
            "delivery stream shop-clicks-raw CloudWatch logging to /aws/kinesisfirehose/team/S3Delivery"
                .to_owned(),
            "delivery stream shop-clicks-raw record processing (1 processor(s))".to_owned(),
            "delivery stream shop-clicks-raw error output prefix errors/".to_owned(),
            "delivery stream shop-clicks-raw S3 backup to arn:aws:s3:::team-backup".to_owned(),
        ]
    );

    // A resync plans nothing, writes nothing, and changes nothing of the team's.
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &stream).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
    assert_eq!(own_settings(&env, &stream.name).await, settings);

    // A spec that names the buffer size changes that and nothing else.
    let mut pipeline = pipeline("minimal");
    pipeline.spec.adopt_existing = true;
    pipeline.spec.raw_archive.buffer_size_mib = Some(8);
    let sized = firehose::desired(&pipeline.spec, &env.names(&pipeline).await)
        .expect("valid")
        .expect("enabled");
    let made = reconcile(&env, &sized).await.expect("resize buffer");
    assert_eq!(made.len(), 1, "{made:?}");
    let destination = firehose::observe(&env.clients.firehose, &stream.name)
        .await
        .expect("observe")
        .expect("exists")
        .destination
        .expect("destination");
    assert_eq!(
        (
            destination.buffer_size_mib,
            destination.buffer_interval_seconds,
            destination.compression.as_str()
        ),
        (8, 60, "UNCOMPRESSED")
    );
    assert_eq!(own_settings(&env, &stream.name).await, settings);
}
