//! The Firehose delivery stream that archives every record, untouched, to the raw bucket.
//!
//! Source: the pipeline's Kinesis stream (`KinesisStreamAsSource`), read with the IAM role from
//! `spec.rawArchive.roleArn`; destination: Extended S3 into the raw bucket under the raw prefix,
//! with the spec's buffering hints and compression, written with the same role.
//!
//! Firehose cannot change a delivery stream's source or type, so a delivery stream of the
//! pipeline's name that reads from somewhere else is a `Conflict` (delete it or choose another
//! `deliveryStreamName`). Destination settings are changed in place with `UpdateDestination`,
//! which needs the stream's current version id and the destination id: both are read by
//! [`observe`] and carried in [`Change::UpdateDestination`], so a concurrent change makes the
//! call fail (`ConcurrentModificationException`, retried) instead of overwriting it.
//!
//! **Only what the spec declares.** The update names the destination's bucket, role, prefix,
//! buffering hints and compression — the fields of `spec.rawArchive` — and nothing else. Firehose
//! merges an update into a destination of the same type (a parameter left out keeps its value),
//! so an adopted delivery stream keeps everything the spec has no field for: its server-side
//! encryption, the destination's KMS key, CloudWatch logging, a processing configuration, the
//! error output prefix, an S3 backup, dynamic partitioning, a format conversion. [`observe`]
//! lists them ([`ObservedDeliveryStream::unmanaged`]) and the condition says they are kept.

use std::collections::BTreeMap;
use std::fmt;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::types::{
    BufferingHints, CompressionFormat, DeliveryStreamType, ExtendedS3DestinationConfiguration,
    ExtendedS3DestinationUpdate, KinesisStreamSourceConfiguration, Tag,
};
use clickheatmap_crds::{ClickHeatmapPipelineSpec, Compression, PipelineResources, RawArchiveSpec};
use serde::Serialize;

use super::{
    AwsClients, Deletion, Leftover, PartReconciler, PlanInput, Readiness, Removal, SdkResultExt,
    Service, check_owner, is_ours, left_in_place, paged_tags, tag_change,
};
use crate::error::Error;
use crate::names::{Names, Owner, delivery_stream_name};
use crate::pipeline::{DeleteStep, Part};

/// Where and how Firehose writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    pub bucket_arn: String,
    pub role_arn: String,
    pub prefix: String,
    pub buffer_size_mib: i32,
    pub buffer_interval_seconds: i32,
    /// Firehose's name: `UNCOMPRESSED`, `GZIP`, `Snappy`, `ZIP`, `HADOOP_SNAPPY`.
    pub compression: String,
}

/// The delivery stream as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredDeliveryStream {
    pub name: String,
    pub arn: String,
    /// The Kinesis stream it reads.
    pub stream_arn: String,
    /// The role it reads the stream with (the same role writes to S3).
    pub role_arn: String,
    /// The destination of a delivery stream the operator creates (defaults in the fields the
    /// spec leaves unset).
    pub destination: S3Destination,
    /// The tuning fields the spec leaves unset: an existing delivery stream keeps its own.
    pub unset: UnsetTuning,
    pub owner: Owner,
    pub adopt_existing: bool,
    pub tags: BTreeMap<String, String>,
}

/// Which of `rawArchive`'s tuning fields the spec leaves unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnsetTuning {
    pub buffer_size: bool,
    pub buffer_interval: bool,
    pub compression: bool,
}

impl DesiredDeliveryStream {
    /// The destination an existing delivery stream should have: the spec's fields, and the
    /// existing values of the tuning fields the spec leaves unset.
    pub fn destination_over(&self, existing: &S3Destination) -> S3Destination {
        let mut wanted = self.destination.clone();
        if self.unset.buffer_size {
            wanted.buffer_size_mib = existing.buffer_size_mib;
        }
        if self.unset.buffer_interval {
            wanted.buffer_interval_seconds = existing.buffer_interval_seconds;
        }
        if self.unset.compression {
            wanted.compression.clone_from(&existing.compression);
        }
        wanted
    }
}

/// An existing delivery stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedDeliveryStream {
    pub name: String,
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `DELETING`, …
    pub status: String,
    /// `KinesisStreamAsSource`, `DirectPut`, …
    pub stream_type: String,
    pub version_id: String,
    pub source_stream_arn: Option<String>,
    pub source_role_arn: Option<String>,
    pub destination_id: String,
    /// `None` when the destination is not Extended S3.
    pub destination: Option<S3Destination>,
    /// The settings the spec has no field for that the delivery stream has (the operator creates
    /// none of them), described: never written, so Firehose keeps them.
    pub unmanaged: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// One Firehose call the operator would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all_fields = "camelCase")]
pub enum Change {
    CreateDeliveryStream {
        delivery_stream: String,
        stream_arn: String,
        role_arn: String,
        destination: S3Destination,
        tags: BTreeMap<String, String>,
    },
    TagDeliveryStream {
        delivery_stream: String,
        tags: BTreeMap<String, String>,
    },
    UpdateDestination {
        delivery_stream: String,
        current_version_id: String,
        destination_id: String,
        destination: S3Destination,
    },
    /// Only for a delivery stream this pipeline made and no longer wants (raw archive switched
    /// off), or under `deletionPolicy: Delete`.
    DeleteDeliveryStream { delivery_stream: String },
}

impl Change {
    /// A new delivery stream is `CREATING` for a while, a deleted one `DELETING`.
    pub fn needs_settling(&self) -> bool {
        matches!(
            self,
            Change::CreateDeliveryStream { .. } | Change::DeleteDeliveryStream { .. }
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateDeliveryStream {
                delivery_stream,
                stream_arn,
                destination,
                tags,
                ..
            } => write!(
                f,
                "create delivery stream {delivery_stream} from {stream_arn} to {}/{} ({} MiB / {} s, {}), tagged {}",
                destination.bucket_arn,
                destination.prefix,
                destination.buffer_size_mib,
                destination.buffer_interval_seconds,
                destination.compression,
                super::show_tags(tags)
            ),
            Change::TagDeliveryStream {
                delivery_stream,
                tags,
            } => write!(
                f,
                "tag delivery stream {delivery_stream} with {}",
                super::show_tags(tags)
            ),
            Change::UpdateDestination {
                delivery_stream,
                current_version_id,
                destination,
                ..
            } => write!(
                f,
                "update destination of delivery stream {delivery_stream} (version {current_version_id}) to {}/{} ({} MiB / {} s, {})",
                destination.bucket_arn,
                destination.prefix,
                destination.buffer_size_mib,
                destination.buffer_interval_seconds,
                destination.compression
            ),
            Change::DeleteDeliveryStream { delivery_stream } => {
                write!(f, "delete delivery stream {delivery_stream}")
            }
        }
    }
}

/// Firehose's name of a compression.
pub fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::Uncompressed => "UNCOMPRESSED",
        Compression::Gzip => "GZIP",
        Compression::Snappy => "Snappy",
        Compression::Zip => "ZIP",
        Compression::HadoopSnappy => "HADOOP_SNAPPY",
    }
}

/// The delivery stream the spec asks for; `None` when the raw archive is disabled.
pub fn desired(
    spec: &ClickHeatmapPipelineSpec,
    names: &Names,
) -> Result<Option<DesiredDeliveryStream>, Error> {
    let archive = &spec.raw_archive;
    if !archive.enabled {
        return Ok(None);
    }
    let role_arn = archive.role_arn.clone().ok_or_else(|| {
        Error::InvalidSpec(
            "rawArchive.roleArn is required when rawArchive.enabled is true".to_owned(),
        )
    })?;
    let name = delivery_stream_name(spec);
    Ok(Some(DesiredDeliveryStream {
        arn: names.delivery_stream_arn(&name),
        name,
        stream_arn: names.stream_arn(&spec.stream.name),
        role_arn: role_arn.clone(),
        destination: S3Destination {
            bucket_arn: names.bucket_arn(&spec.buckets.raw),
            role_arn,
            prefix: archive.prefix.clone(),
            buffer_size_mib: archive
                .buffer_size_mib
                .unwrap_or(RawArchiveSpec::DEFAULT_BUFFER_SIZE_MIB),
            buffer_interval_seconds: archive
                .buffer_interval_seconds
                .unwrap_or(RawArchiveSpec::DEFAULT_BUFFER_INTERVAL_SECONDS),
            compression: compression_name(archive.compression.unwrap_or_default()).to_owned(),
        },
        unset: UnsetTuning {
            buffer_size: archive.buffer_size_mib.is_none(),
            buffer_interval: archive.buffer_interval_seconds.is_none(),
            compression: archive.compression.is_none(),
        },
        owner: names.owner.clone(),
        adopt_existing: spec.adopt_existing,
        tags: crate::names::resource_tags(spec, &names.owner),
    }))
}

/// Reads the delivery stream and its tags; `None` when there is none of that name.
pub async fn observe(client: &Client, name: &str) -> Result<Option<ObservedDeliveryStream>, Error> {
    let what = format!("delivery stream {name}");
    let Some(output) = client
        .describe_delivery_stream()
        .delivery_stream_name(name)
        .send()
        .await
        .found("firehose:DescribeDeliveryStream", &what)?
    else {
        return Ok(None);
    };
    let Some(description) = output.delivery_stream_description() else {
        return Ok(None);
    };
    let source = description
        .source()
        .and_then(|source| source.kinesis_stream_source_description());
    let first = description.destinations().first();
    let destination = first
        .and_then(|d| d.extended_s3_destination_description())
        .map(|s3| S3Destination {
            bucket_arn: s3.bucket_arn().to_owned(),
            role_arn: s3.role_arn().to_owned(),
            prefix: s3.prefix().unwrap_or_default().to_owned(),
            buffer_size_mib: s3
                .buffering_hints()
                .and_then(|hints| hints.size_in_mbs())
                .unwrap_or(5),
            buffer_interval_seconds: s3
                .buffering_hints()
                .and_then(|hints| hints.interval_in_seconds())
                .unwrap_or(300),
            compression: s3.compression_format().as_str().to_owned(),
        });
    let mut unmanaged = Vec::new();
    if let Some(encryption) = description.delivery_stream_encryption_configuration()
        && encryption.status().map_or(
            // An emulator may leave the status out; a key type then says it is on.
            encryption.key_type().is_some(),
            |status| status.as_str() != "DISABLED",
        )
    {
        unmanaged.push(format!(
            "server-side encryption ({}{})",
            encryption
                .key_type()
                .map_or("AWS_OWNED_CMK", |key| key.as_str()),
            encryption
                .key_arn()
                .map(|key| format!(" with key {key}"))
                .unwrap_or_default()
        ));
    }
    if let Some(s3) = first.and_then(|d| d.extended_s3_destination_description()) {
        unmanaged.extend(unmanaged_destination_settings(s3));
    }
    let tags = paged_tags(|start| {
        let request = client
            .list_tags_for_delivery_stream()
            .delivery_stream_name(name)
            .set_exclusive_start_tag_key(start);
        let what = &what;
        async move {
            let page = request
                .send()
                .await
                .map_sdk("firehose:ListTagsForDeliveryStream", what)?;
            let entries = page
                .tags()
                .iter()
                .map(|tag| {
                    (
                        tag.key().to_owned(),
                        tag.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            Ok((entries, page.has_more_tags()))
        }
    })
    .await?;
    Ok(Some(ObservedDeliveryStream {
        name: description.delivery_stream_name().to_owned(),
        arn: description.delivery_stream_arn().to_owned(),
        status: description.delivery_stream_status().as_str().to_owned(),
        stream_type: description.delivery_stream_type().as_str().to_owned(),
        version_id: description.version_id().to_owned(),
        source_stream_arn: source
            .and_then(|s| s.kinesis_stream_arn())
            .map(str::to_owned),
        source_role_arn: source.and_then(|s| s.role_arn()).map(str::to_owned),
        destination_id: first
            .map(|d| d.destination_id().to_owned())
            .unwrap_or_default(),
        destination,
        unmanaged,
        tags,
    }))
}

/// The destination settings the spec has no field for, described (see the module comment).
fn unmanaged_destination_settings(
    s3: &aws_sdk_firehose::types::ExtendedS3DestinationDescription,
) -> Vec<String> {
    let mut unmanaged = Vec::new();
    if let Some(key) = s3
        .encryption_configuration()
        .and_then(|e| e.kms_encryption_config())
    {
        unmanaged.push(format!(
            "destination encryption with KMS key {}",
            key.awskms_key_arn()
        ));
    }
    if let Some(logging) = s3
        .cloud_watch_logging_options()
        .filter(|l| l.enabled() == Some(true))
    {
        unmanaged.push(format!(
            "CloudWatch logging to {}/{}",
            logging.log_group_name().unwrap_or_default(),
            logging.log_stream_name().unwrap_or_default()
        ));
    }
    if let Some(processing) = s3
        .processing_configuration()
        .filter(|p| p.enabled() == Some(true))
    {
        unmanaged.push(format!(
            "record processing ({} processor(s))",
            processing.processors().len()
        ));
    }
    if let Some(prefix) = s3.error_output_prefix().filter(|p| !p.is_empty()) {
        unmanaged.push(format!("error output prefix {prefix}"));
    }
    if s3
        .s3_backup_mode()
        .is_some_and(|mode| mode.as_str() == "Enabled")
    {
        unmanaged.push(format!(
            "S3 backup to {}",
            s3.s3_backup_description()
                .map(|b| b.bucket_arn())
                .unwrap_or("(unknown)")
        ));
    }
    if s3
        .dynamic_partitioning_configuration()
        .is_some_and(|d| d.enabled() == Some(true))
    {
        unmanaged.push("dynamic partitioning".to_owned());
    }
    if s3
        .data_format_conversion_configuration()
        .is_some_and(|d| d.enabled() == Some(true))
    {
        unmanaged.push("record format conversion".to_owned());
    }
    unmanaged
}

fn build_error(what: &str) -> impl FnOnce(aws_sdk_firehose::error::BuildError) -> Error + '_ {
    move |error| Error::internal(format!("building {what}: {error}"))
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Result<Vec<Tag>, Error> {
    tags.iter()
        .map(|(key, value)| {
            Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(build_error("a Firehose tag"))
        })
        .collect()
}

fn hints(destination: &S3Destination) -> BufferingHints {
    BufferingHints::builder()
        .size_in_mbs(destination.buffer_size_mib)
        .interval_in_seconds(destination.buffer_interval_seconds)
        .build()
}

/// Makes one Firehose call.
pub async fn apply(client: &Client, change: &Change) -> Result<(), Error> {
    match change {
        Change::CreateDeliveryStream {
            delivery_stream,
            stream_arn,
            role_arn,
            destination,
            tags,
        } => {
            let source = KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn(stream_arn)
                .role_arn(role_arn)
                .build()
                .map_err(build_error("the Kinesis source"))?;
            let s3 = ExtendedS3DestinationConfiguration::builder()
                .bucket_arn(&destination.bucket_arn)
                .role_arn(&destination.role_arn)
                .prefix(&destination.prefix)
                .buffering_hints(hints(destination))
                .compression_format(CompressionFormat::from(destination.compression.as_str()))
                .build()
                .map_err(build_error("the S3 destination"))?;
            client
                .create_delivery_stream()
                .delivery_stream_name(delivery_stream)
                .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
                .kinesis_stream_source_configuration(source)
                .extended_s3_destination_configuration(s3)
                .set_tags(Some(sdk_tags(tags)?))
                .send()
                .await
                .map_sdk(
                    "firehose:CreateDeliveryStream",
                    format_args!("delivery stream {delivery_stream}"),
                )?;
            Ok(())
        }
        Change::TagDeliveryStream {
            delivery_stream,
            tags,
        } => {
            client
                .tag_delivery_stream()
                .delivery_stream_name(delivery_stream)
                .set_tags(Some(sdk_tags(tags)?))
                .send()
                .await
                .map_sdk(
                    "firehose:TagDeliveryStream",
                    format_args!("delivery stream {delivery_stream}"),
                )?;
            Ok(())
        }
        Change::UpdateDestination {
            delivery_stream,
            current_version_id,
            destination_id,
            destination,
        } => {
            // Only the spec's fields: Firehose keeps every parameter an update leaves out.
            let update = ExtendedS3DestinationUpdate::builder()
                .bucket_arn(&destination.bucket_arn)
                .role_arn(&destination.role_arn)
                .prefix(&destination.prefix)
                .buffering_hints(hints(destination))
                .compression_format(CompressionFormat::from(destination.compression.as_str()))
                .build();
            client
                .update_destination()
                .delivery_stream_name(delivery_stream)
                .current_delivery_stream_version_id(current_version_id)
                .destination_id(destination_id)
                .extended_s3_destination_update(update)
                .send()
                .await
                .map_sdk(
                    "firehose:UpdateDestination",
                    format_args!("delivery stream {delivery_stream}"),
                )?;
            Ok(())
        }
        Change::DeleteDeliveryStream { delivery_stream } => {
            client
                .delete_delivery_stream()
                .delivery_stream_name(delivery_stream)
                .send()
                .await
                .map_sdk(
                    "firehose:DeleteDeliveryStream",
                    format_args!("delivery stream {delivery_stream}"),
                )?;
            Ok(())
        }
    }
}

/// Deletes the delivery stream under `deletionPolicy: Delete` if this pipeline owns it. Also
/// used when the raw archive is switched off.
pub async fn delete(client: &Client, name: &str, owner: &Owner) -> Result<Deletion, Error> {
    let Some(observed) = observe(client, name).await? else {
        return Ok(Deletion::Gone);
    };
    if let Some(kept) = left_in_place(&format!("delivery stream {name}"), &observed.tags, owner) {
        return Ok(kept);
    }
    if observed.status.starts_with("DELETING") {
        return Ok(Deletion::InProgress(format!(
            "delivery stream {name} is {}",
            observed.status
        )));
    }
    apply(
        client,
        &Change::DeleteDeliveryStream {
            delivery_stream: name.to_owned(),
        },
    )
    .await?;
    Ok(Deletion::InProgress(format!(
        "deleting delivery stream {name}"
    )))
}

/// The raw archive part: the Firehose delivery stream (only while `rawArchive.enabled`).
pub struct RawArchive;

impl PartReconciler for RawArchive {
    const PART: Part = Part::RawArchive;
    const CONDITION_TYPE: &'static str = "RawArchiveReady";
    const NAME: &'static str = "raw archive";
    const SERVICE: Service = Service::new("firehose");
    const DEPENDS_ON: &'static [Part] = &[Part::Buckets, Part::Stream];

    type Desired = DesiredDeliveryStream;
    type Observed = ObservedDeliveryStream;
    type Change = Change;

    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        apply(&clients.firehose, change)
    }

    fn needs_settling(change: &Change) -> bool {
        change.needs_settling()
    }

    fn wanted(spec: &ClickHeatmapPipelineSpec) -> bool {
        spec.raw_archive.enabled
    }

    fn desired(input: PlanInput<'_>) -> Result<Vec<DesiredDeliveryStream>, Error> {
        Ok(desired(input.spec, input.names)?.into_iter().collect())
    }

    fn summary(desired: &[DesiredDeliveryStream]) -> String {
        let names: Vec<&str> = desired.iter().map(|d| d.name.as_str()).collect();
        format!(
            "delivery stream {} is ACTIVE and matches the spec",
            names.join(", ")
        )
    }

    async fn observe(
        clients: &AwsClients,
        desired: &DesiredDeliveryStream,
    ) -> Result<Option<ObservedDeliveryStream>, Error> {
        observe(&clients.firehose, &desired.name).await
    }

    /// The calls that turn `observed` into `desired`. Empty when they match.
    fn diff(
        desired: &DesiredDeliveryStream,
        observed: Option<&ObservedDeliveryStream>,
    ) -> Result<Vec<Change>, Error> {
        let name = &desired.name;
        let Some(observed) = observed else {
            return Ok(vec![Change::CreateDeliveryStream {
                delivery_stream: name.clone(),
                stream_arn: desired.stream_arn.clone(),
                role_arn: desired.role_arn.clone(),
                destination: desired.destination.clone(),
                tags: desired.tags.clone(),
            }]);
        };
        let what = format!("delivery stream {name}");
        check_owner(
            &what,
            &observed.tags,
            &desired.owner,
            desired.adopt_existing,
        )?;
        if observed.stream_type != "KinesisStreamAsSource"
            || observed.source_stream_arn.as_deref() != Some(desired.stream_arn.as_str())
        {
            return Err(Error::Conflict(format!(
                "{what} reads from {}, not from {}; Firehose cannot change a delivery stream's source: delete it or set rawArchive.deliveryStreamName to another name",
                observed
                    .source_stream_arn
                    .as_deref()
                    .unwrap_or(observed.stream_type.as_str()),
                desired.stream_arn
            )));
        }
        let mut changes = Vec::new();
        changes.extend(tag_change(&observed.tags, &desired.tags, |tags| {
            Change::TagDeliveryStream {
                delivery_stream: name.clone(),
                tags,
            }
        }));
        let wanted = observed.destination.as_ref().map_or_else(
            || desired.destination.clone(),
            |existing| desired.destination_over(existing),
        );
        if observed.destination.as_ref() != Some(&wanted) {
            changes.push(Change::UpdateDestination {
                delivery_stream: name.clone(),
                current_version_id: observed.version_id.clone(),
                destination_id: observed.destination_id.clone(),
                destination: wanted,
            });
        }
        if !changes.is_empty() && observed.status != "ACTIVE" {
            return Err(Error::Busy {
                resource: what,
                message: format!(
                    "it is {}; {} change(s) wait until it is ACTIVE",
                    observed.status,
                    changes.len()
                ),
            });
        }
        Ok(changes)
    }

    /// The delivery stream's own settings, which no update touches.
    fn kept(
        desired: &DesiredDeliveryStream,
        observed: Option<&ObservedDeliveryStream>,
    ) -> Vec<String> {
        observed.map_or_else(Vec::new, |observed| {
            observed
                .unmanaged
                .iter()
                .map(|setting| format!("delivery stream {} {setting}", desired.name))
                .collect()
        })
    }

    /// A delivery stream is ready when it is `ACTIVE`.
    fn readiness(
        _desired: &DesiredDeliveryStream,
        observed: Option<&ObservedDeliveryStream>,
    ) -> Readiness {
        match observed {
            Some(stream) if stream.status == "ACTIVE" => Readiness::Ready,
            Some(stream) => Readiness::Provisioning(format!(
                "delivery stream {} is {}",
                stream.name, stream.status
            )),
            None => Readiness::Provisioning("the delivery stream does not exist yet".to_owned()),
        }
    }

    fn resources(
        desired: &DesiredDeliveryStream,
        observed: Option<&ObservedDeliveryStream>,
        into: &mut PipelineResources,
    ) {
        into.delivery_stream_arn =
            Some(observed.map_or_else(|| desired.arn.clone(), |o| o.arn.clone()));
    }

    fn record(from: &PipelineResources, into: &mut PipelineResources) {
        into.delivery_stream_arn
            .clone_from(&from.delivery_stream_arn);
    }

    /// Switched off: the delivery stream this pipeline made is deleted (if it is still tagged
    /// by the pipeline and not already being deleted).
    async fn leftover(clients: &AwsClients, input: PlanInput<'_>) -> Option<Leftover> {
        let name = name_from_arn(input.previous.delivery_stream_arn.as_deref()?);
        let found = observe(&clients.firehose, name).await.map(|observed| {
            observed
                .filter(|stream| is_ours(&stream.tags, &input.names.owner))
                .map(|stream| Removal {
                    changes: if stream.status.starts_with("DELETING") {
                        Vec::new()
                    } else {
                        vec![
                            Change::DeleteDeliveryStream {
                                delivery_stream: stream.name.clone(),
                            }
                            .into(),
                        ]
                    },
                    message: format!(
                        "removing delivery stream {name} (the raw archive is disabled)"
                    ),
                    resources: PipelineResources {
                        delivery_stream_arn: Some(stream.arn),
                        ..PipelineResources::default()
                    },
                })
        });
        Some(Leftover {
            summary: "the raw archive is disabled".to_owned(),
            found,
        })
    }

    async fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        _done: &[DeleteStep],
    ) -> Result<Vec<(String, Deletion)>, Error> {
        let name = if input.spec.raw_archive.enabled {
            delivery_stream_name(input.spec)
        } else {
            match input.previous.delivery_stream_arn.as_deref() {
                Some(arn) => name_from_arn(arn).to_owned(),
                None => return Ok(Vec::new()),
            }
        };
        let deletion = delete(&clients.firehose, &name, &input.names.owner).await?;
        Ok(vec![(format!("delivery stream {name}"), deletion)])
    }
}

/// The delivery stream name in a delivery stream ARN (`…:deliverystream/<name>`).
fn name_from_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names_for};

    fn in_sync(desired: &DesiredDeliveryStream) -> ObservedDeliveryStream {
        ObservedDeliveryStream {
            name: desired.name.clone(),
            arn: desired.arn.clone(),
            status: "ACTIVE".into(),
            stream_type: "KinesisStreamAsSource".into(),
            version_id: "3".into(),
            source_stream_arn: Some(desired.stream_arn.clone()),
            source_role_arn: Some(desired.role_arn.clone()),
            destination_id: "destinationId-000000000001".into(),
            destination: Some(desired.destination.clone()),
            unmanaged: Vec::new(),
            tags: desired.tags.clone(),
        }
    }

    #[test]
    fn desired_from_the_examples() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal))
            .expect("valid")
            .expect("enabled");
        assert_eq!(stream.name, "shop-clicks-raw");
        assert_eq!(
            stream.stream_arn,
            "arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks"
        );
        assert_eq!(
            stream.role_arn,
            "arn:aws:iam::123456789012:role/shop-heatmap-firehose"
        );
        assert_eq!(
            stream.destination,
            S3Destination {
                bucket_arn: "arn:aws:s3:::shop-heatmap-raw-123456789012".into(),
                role_arn: "arn:aws:iam::123456789012:role/shop-heatmap-firehose".into(),
                prefix: "raw/".into(),
                buffer_size_mib: 5,
                buffer_interval_seconds: 300,
                compression: "UNCOMPRESSED".into(),
            }
        );

        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full))
            .expect("valid")
            .expect("enabled");
        assert_eq!(stream.destination.buffer_size_mib, 64);
        assert_eq!(stream.destination.buffer_interval_seconds, 60);
        assert_eq!(stream.destination.compression, "GZIP");
    }

    #[test]
    fn disabled_archive_wants_nothing_and_missing_role_is_invalid() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.raw_archive.enabled = false;
        assert_eq!(desired(&pipeline.spec, &names_for(&pipeline)), Ok(None));
        pipeline.spec.raw_archive.enabled = true;
        pipeline.spec.raw_archive.role_arn = None;
        let error = desired(&pipeline.spec, &names_for(&pipeline)).expect_err("invalid");
        assert_eq!(error.reason(), crate::error::Reason::InvalidSpec);
    }

    #[test]
    fn in_sync_needs_nothing_and_drift_updates_with_the_version() {
        let full = fixture("pipeline-full.yaml");
        let stream = desired(&full.spec, &names_for(&full))
            .expect("valid")
            .expect("enabled");
        assert_eq!(
            RawArchive::diff(&stream, Some(&in_sync(&stream))),
            Ok(vec![])
        );
        let mut observed = in_sync(&stream);
        if let Some(destination) = observed.destination.as_mut() {
            destination.buffer_interval_seconds = 900;
        }
        let changes = RawArchive::diff(&stream, Some(&observed)).expect("diff");
        assert_eq!(
            changes,
            vec![Change::UpdateDestination {
                delivery_stream: "shop-full-clicks-raw".into(),
                current_version_id: "3".into(),
                destination_id: "destinationId-000000000001".into(),
                destination: stream.destination.clone(),
            }]
        );
        assert!(changes[0].to_string().contains("(version 3)"));
    }

    #[test]
    fn settings_the_spec_does_not_declare_are_kept_and_said() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal))
            .expect("valid")
            .expect("enabled");
        let mut observed = in_sync(&stream);
        observed.unmanaged = vec!["error output prefix errors/".into()];
        // Not drift: nothing to change, and the update would not name it anyway.
        assert_eq!(RawArchive::diff(&stream, Some(&observed)), Ok(vec![]));
        assert_eq!(
            RawArchive::kept(&stream, Some(&observed)),
            ["delivery stream shop-clicks-raw error output prefix errors/"]
        );
        assert!(RawArchive::kept(&stream, Some(&in_sync(&stream))).is_empty());
    }

    #[test]
    fn another_source_is_a_conflict() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal))
            .expect("valid")
            .expect("enabled");
        let mut observed = in_sync(&stream);
        observed.source_stream_arn = Some("arn:aws:kinesis:x:1:stream/other".into());
        let error = RawArchive::diff(&stream, Some(&observed)).expect_err("conflict");
        assert_eq!(error.reason(), crate::error::Reason::Conflict);
        observed.source_stream_arn = None;
        observed.stream_type = "DirectPut".into();
        assert!(RawArchive::diff(&stream, Some(&observed)).is_err());
    }

    #[test]
    fn missing_stream_is_created() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal))
            .expect("valid")
            .expect("enabled");
        let changes = RawArchive::diff(&stream, None).expect("diff");
        assert_eq!(changes.len(), 1);
        assert!(changes[0].needs_settling());
        assert!(changes[0].to_string().starts_with(
            "create delivery stream shop-clicks-raw from arn:aws:kinesis:ap-northeast-2:123456789012:stream/shop-clicks to arn:aws:s3:::shop-heatmap-raw-123456789012/raw/ (5 MiB / 300 s, UNCOMPRESSED)"
        ));
    }

    #[test]
    fn a_creating_stream_waits() {
        let minimal = fixture("pipeline-minimal.yaml");
        let stream = desired(&minimal.spec, &names_for(&minimal))
            .expect("valid")
            .expect("enabled");
        let mut observed = in_sync(&stream);
        observed.status = "CREATING".into();
        observed.tags.clear();
        let mut adopting = stream.clone();
        adopting.adopt_existing = true;
        let error = RawArchive::diff(&adopting, Some(&observed)).expect_err("busy");
        assert!(error.is_retryable());
    }
}
