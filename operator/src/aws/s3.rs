//! The pipeline's S3 buckets: raw archive, curated data, Athena query results.
//!
//! Each bucket is private (all four public-access-block switches on), encrypted by default with
//! SSE-S3 (AES256), tagged with its owner, and has a small lifecycle configuration that keeps
//! costs down without touching the data the pipeline depends on:
//!
//! * raw bucket: objects under the raw prefix move to STANDARD_IA after
//!   [`RAW_TRANSITION_DAYS`] days (the raw archive is the replayable source of truth, so it is not
//!   expired; an expiry will become a spec field);
//! * query-results bucket: Athena results under the results prefix expire after
//!   [`QUERY_RESULTS_EXPIRATION_DAYS`] days;
//! * every bucket: incomplete multipart uploads are aborted after
//!   [`ABORT_INCOMPLETE_UPLOAD_DAYS`] days.
//!
//! The operator never weakens a bucket it adopts or repairs: it manages only what it declares.
//! Default encryption is set to SSE-S3 only when a bucket has none; a bucket encrypted with
//! SSE-KMS (or DSSE-KMS) keeps its key. Of the lifecycle rules it manages only its own, the
//! ones whose id starts with [`RULE_ID_PREFIX`]; S3 can only replace the whole configuration,
//! so every other rule is written back exactly as it was read (the SDK's own value, not the
//! operator's smaller vocabulary). Public access is only ever blocked, never opened.
//!
//! S3 has no "create with tags" for general-purpose buckets without an extra permission, so
//! [`Change::CreateBucket`] creates and then tags in one step. If the operator dies between the
//! two calls, the next reconcile finds an untagged bucket and reports a `Conflict` that asks for
//! `adoptExisting` — it fails closed rather than guessing that the bucket is its own.
//!
//! Buckets are never deleted by a reconcile, only by [`delete`] under `deletionPolicy: Delete`,
//! which empties them first (plain objects; the operator does not version buckets).

use std::collections::BTreeMap;
use std::fmt;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CreateBucketConfiguration, Delete, ExpirationStatus, LifecycleExpiration,
    LifecycleRule as SdkLifecycleRule, LifecycleRuleFilter, ObjectIdentifier,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging, Transition,
    TransitionStorageClass,
};
use clickheatmap_crds::{ClickHeatmapPipelineSpec, PipelineResources};
use serde::Serialize;

use super::{
    AwsClients, Deletion, PartReconciler, PlanInput, Readiness, SdkResultExt, Service, check_owner,
    left_in_place, may_manage, tag_change,
};
use crate::error::{Error, code_of, from_sdk, is_not_found};
use crate::names::{Names, Owner};
use crate::pipeline::{DeleteStep, Part};

/// Raw archive objects move to STANDARD_IA after this many days.
pub const RAW_TRANSITION_DAYS: i32 = 30;
/// Athena query results expire after this many days.
pub const QUERY_RESULTS_EXPIRATION_DAYS: i32 = 7;
/// Incomplete multipart uploads are aborted after this many days.
pub const ABORT_INCOMPLETE_UPLOAD_DAYS: i32 = 7;
/// The only default encryption the operator sets.
pub const SSE_ALGORITHM: &str = "AES256";
/// How many pages of 1000 objects one [`delete`] call removes before it reports progress.
const DELETE_PAGES_PER_CALL: usize = 20;

/// What a bucket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum BucketRole {
    Raw,
    Curated,
    QueryResults,
}

impl fmt::Display for BucketRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BucketRole::Raw => "raw",
            BucketRole::Curated => "curated",
            BucketRole::QueryResults => "query results",
        })
    }
}

/// The four public-access-block switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicAccessBlock {
    pub block_public_acls: bool,
    pub ignore_public_acls: bool,
    pub block_public_policy: bool,
    pub restrict_public_buckets: bool,
}

impl PublicAccessBlock {
    pub const ALL: PublicAccessBlock = PublicAccessBlock {
        block_public_acls: true,
        ignore_public_acls: true,
        block_public_policy: true,
        restrict_public_buckets: true,
    };
}

/// The id prefix of the lifecycle rules the operator manages; every other rule is the user's.
pub const RULE_ID_PREFIX: &str = "clickheatmap-";

/// Lifecycle rules that are not the operator's, kept verbatim (every field S3 returned) so that
/// writing the configuration back leaves them as they were.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OtherRules(pub Vec<SdkLifecycleRule>);

// The SDK type has no `Eq` only because of its generated derives; rules compare field by field.
impl Eq for OtherRules {}

impl OtherRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn ids(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|rule| rule.id().unwrap_or("(no id)"))
            .collect()
    }
}

impl Serialize for OtherRules {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ids())
    }
}

/// One lifecycle rule, in the small vocabulary the operator uses. Rules the operator does not
/// write are read into this shape too (features it does not know are dropped), which is enough
/// to see that they differ from the desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRule {
    pub id: String,
    /// Key prefix the rule applies to ("" = the whole bucket).
    pub prefix: String,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition_days: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition_storage_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_days: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_incomplete_upload_days: Option<i32>,
}

/// A bucket as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredBucket {
    pub name: String,
    /// What the bucket is for (several roles when the spec names one bucket twice).
    pub roles: Vec<BucketRole>,
    pub region: String,
    pub owner: Owner,
    pub adopt_existing: bool,
    pub tags: BTreeMap<String, String>,
    pub public_access_block: PublicAccessBlock,
    pub encryption: String,
    /// Sorted by id.
    pub lifecycle: Vec<LifecycleRule>,
}

/// The settings of an existing bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketConfig {
    pub public_access_block: PublicAccessBlock,
    /// Default encryption algorithm (`AES256`, `aws:kms`, …), if any.
    pub encryption: Option<String>,
    /// The operator's own rules ([`RULE_ID_PREFIX`]), sorted by id.
    pub lifecycle: Vec<LifecycleRule>,
    /// Everyone else's rules, kept as they are.
    #[serde(skip_serializing_if = "OtherRules::is_empty")]
    pub other_rules: OtherRules,
}

/// An existing bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedBucket {
    pub name: String,
    /// The bucket's region, when S3 said.
    pub region: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Not read when the bucket belongs to someone else (the operator reads nothing more of a
    /// resource it will not touch).
    pub config: Option<BucketConfig>,
}

/// One S3 call the operator would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all_fields = "camelCase")]
pub enum Change {
    /// CreateBucket, then PutBucketTagging with the owner tags.
    CreateBucket {
        bucket: String,
        region: String,
        tags: BTreeMap<String, String>,
    },
    /// PutBucketTagging with the complete tag set (S3 replaces all tags, so the bucket's other
    /// tags are carried over).
    PutBucketTagging {
        bucket: String,
        tags: BTreeMap<String, String>,
    },
    PutPublicAccessBlock {
        bucket: String,
        config: PublicAccessBlock,
    },
    PutBucketEncryption {
        bucket: String,
        algorithm: String,
    },
    /// The operator's rules, and the bucket's other rules written back unchanged.
    PutBucketLifecycleConfiguration {
        bucket: String,
        rules: Vec<LifecycleRule>,
        #[serde(skip_serializing_if = "OtherRules::is_empty")]
        kept: OtherRules,
    },
}

impl Change {
    /// True when the resource is still settling after this change (never for S3: every call
    /// takes effect before it returns).
    pub fn needs_settling(&self) -> bool {
        false
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateBucket {
                bucket,
                region,
                tags,
            } => write!(
                f,
                "create bucket {bucket} in {region}, tagged {}",
                super::show_tags(tags)
            ),
            Change::PutBucketTagging { bucket, tags } => {
                write!(
                    f,
                    "set the tags of bucket {bucket} to {}",
                    super::show_tags(tags)
                )
            }
            Change::PutPublicAccessBlock { bucket, .. } => {
                write!(f, "block all public access to bucket {bucket}")
            }
            Change::PutBucketEncryption { bucket, algorithm } => {
                write!(
                    f,
                    "set default encryption of bucket {bucket} to {algorithm}"
                )
            }
            Change::PutBucketLifecycleConfiguration {
                bucket,
                rules,
                kept,
            } => {
                let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
                write!(
                    f,
                    "set the operator's lifecycle rules of bucket {bucket} to [{}]",
                    ids.join(", ")
                )?;
                if !kept.is_empty() {
                    write!(f, ", keeping the bucket's own [{}]", kept.ids().join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// The buckets the spec asks for, one entry per distinct name, sorted by name.
pub fn desired(spec: &ClickHeatmapPipelineSpec, names: &Names) -> Vec<DesiredBucket> {
    let abort = LifecycleRule {
        id: "clickheatmap-abort-incomplete-uploads".to_owned(),
        prefix: String::new(),
        enabled: true,
        abort_incomplete_upload_days: Some(ABORT_INCOMPLETE_UPLOAD_DAYS),
        ..LifecycleRule::default()
    };
    let raw = LifecycleRule {
        id: "clickheatmap-raw-archive".to_owned(),
        prefix: spec.raw_archive.prefix.clone(),
        enabled: true,
        transition_days: Some(RAW_TRANSITION_DAYS),
        transition_storage_class: Some("STANDARD_IA".to_owned()),
        ..LifecycleRule::default()
    };
    let results = LifecycleRule {
        id: "clickheatmap-athena-results".to_owned(),
        prefix: spec.query.results_prefix.clone(),
        enabled: true,
        expiration_days: Some(QUERY_RESULTS_EXPIRATION_DAYS),
        ..LifecycleRule::default()
    };
    let wanted = [
        (&spec.buckets.raw, BucketRole::Raw, Some(raw)),
        (&spec.buckets.curated, BucketRole::Curated, None),
        (
            &spec.buckets.query_results,
            BucketRole::QueryResults,
            Some(results),
        ),
    ];
    let mut buckets: BTreeMap<String, DesiredBucket> = BTreeMap::new();
    for (name, role, rule) in wanted {
        let bucket = buckets
            .entry(name.clone())
            .or_insert_with(|| DesiredBucket {
                name: name.clone(),
                roles: Vec::new(),
                region: names.region.clone(),
                owner: names.owner.clone(),
                adopt_existing: spec.adopt_existing,
                tags: crate::names::resource_tags(spec, &names.owner),
                public_access_block: PublicAccessBlock::ALL,
                encryption: SSE_ALGORITHM.to_owned(),
                lifecycle: vec![abort.clone()],
            });
        bucket.roles.push(role);
        if let Some(rule) = rule {
            bucket.lifecycle.push(rule);
        }
    }
    buckets
        .into_values()
        .map(|mut bucket| {
            bucket.lifecycle.sort();
            bucket
        })
        .collect()
}

/// Reads a bucket: existence and region, tags, and — only when the operator may manage it —
/// its public access block, encryption and lifecycle rules. `None` when there is no such bucket.
pub async fn observe(
    client: &Client,
    desired: &DesiredBucket,
) -> Result<Option<ObservedBucket>, Error> {
    let bucket = desired.name.as_str();
    let what = format!("bucket {bucket}");
    let region = match client.head_bucket().bucket(bucket).send().await {
        Ok(output) => output.bucket_region().map(str::to_owned),
        Err(error) => {
            let status = error.raw_response().map(|r| r.status().as_u16());
            let header_region = error
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"))
                .map(str::to_owned);
            if status == Some(301) {
                return Err(Error::Conflict(format!(
                    "bucket {bucket} exists in region {}, not in the pipeline's region {}",
                    header_region.as_deref().unwrap_or("(another)"),
                    desired.region
                )));
            }
            if status == Some(403) {
                return Err(Error::AccessDenied {
                    operation: "s3:HeadBucket".to_owned(),
                    message: format!(
                        "bucket {bucket} exists but cannot be read: it belongs to another AWS account (bucket names are global), or the operator lacks s3:ListBucket on it"
                    ),
                });
            }
            if is_not_found(&error) {
                return Ok(None);
            }
            return Err(from_sdk("s3:HeadBucket", &what, error));
        }
    };
    let tags = match client.get_bucket_tagging().bucket(bucket).send().await {
        Ok(output) => output
            .tag_set()
            .iter()
            .map(|tag| (tag.key().to_owned(), tag.value().to_owned()))
            .collect(),
        Err(error) if code_of(&error) == Some("NoSuchTagSet") => BTreeMap::new(),
        Err(error) => return Err(from_sdk("s3:GetBucketTagging", &what, error)),
    };
    let config = if may_manage(&tags, &desired.owner, desired.adopt_existing) {
        Some(read_config(client, bucket, &what).await?)
    } else {
        None
    };
    Ok(Some(ObservedBucket {
        name: bucket.to_owned(),
        region,
        tags,
        config,
    }))
}

async fn read_config(client: &Client, bucket: &str, what: &str) -> Result<BucketConfig, Error> {
    let public_access_block = match client.get_public_access_block().bucket(bucket).send().await {
        Ok(output) => output
            .public_access_block_configuration()
            .map(|c| PublicAccessBlock {
                block_public_acls: c.block_public_acls().unwrap_or(false),
                ignore_public_acls: c.ignore_public_acls().unwrap_or(false),
                block_public_policy: c.block_public_policy().unwrap_or(false),
                restrict_public_buckets: c.restrict_public_buckets().unwrap_or(false),
            })
            .unwrap_or_default(),
        Err(error) if code_of(&error) == Some("NoSuchPublicAccessBlockConfiguration") => {
            PublicAccessBlock::default()
        }
        Err(error) => return Err(from_sdk("s3:GetPublicAccessBlock", what, error)),
    };
    let encryption = match client.get_bucket_encryption().bucket(bucket).send().await {
        Ok(output) => output
            .server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|rule| rule.apply_server_side_encryption_by_default())
            .map(|default| default.sse_algorithm().as_str().to_owned()),
        Err(error) if code_of(&error) == Some("ServerSideEncryptionConfigurationNotFoundError") => {
            None
        }
        Err(error) => return Err(from_sdk("s3:GetBucketEncryption", what, error)),
    };
    let rules = match client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(output) => output.rules().to_vec(),
        Err(error) if code_of(&error) == Some("NoSuchLifecycleConfiguration") => Vec::new(),
        Err(error) => return Err(from_sdk("s3:GetBucketLifecycleConfiguration", what, error)),
    };
    let (ours, others): (Vec<_>, Vec<_>) = rules
        .into_iter()
        .partition(|rule| rule.id().is_some_and(|id| id.starts_with(RULE_ID_PREFIX)));
    let mut lifecycle: Vec<LifecycleRule> = ours.iter().map(rule_from_sdk).collect();
    lifecycle.sort();
    Ok(BucketConfig {
        public_access_block,
        encryption,
        lifecycle,
        other_rules: OtherRules(others),
    })
}

fn rule_from_sdk(rule: &SdkLifecycleRule) -> LifecycleRule {
    #[allow(deprecated)]
    let legacy_prefix = rule.prefix();
    let prefix = rule
        .filter()
        .and_then(|filter| filter.prefix())
        .or(legacy_prefix)
        .unwrap_or_default()
        .to_owned();
    let transition = rule.transitions().first();
    LifecycleRule {
        id: rule.id().unwrap_or_default().to_owned(),
        prefix,
        enabled: *rule.status() == ExpirationStatus::Enabled,
        transition_days: transition.and_then(Transition::days),
        transition_storage_class: transition
            .and_then(Transition::storage_class)
            .map(|class| class.as_str().to_owned()),
        expiration_days: rule.expiration().and_then(LifecycleExpiration::days),
        abort_incomplete_upload_days: rule
            .abort_incomplete_multipart_upload()
            .and_then(AbortIncompleteMultipartUpload::days_after_initiation),
    }
}

fn build_error(what: impl fmt::Display) -> impl FnOnce(aws_sdk_s3::error::BuildError) -> Error {
    move |error| Error::internal(format!("building {what}: {error}"))
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Result<Vec<Tag>, Error> {
    tags.iter()
        .map(|(key, value)| {
            Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(build_error("an S3 tag"))
        })
        .collect()
}

fn sdk_rule(rule: &LifecycleRule) -> Result<SdkLifecycleRule, Error> {
    let mut builder = SdkLifecycleRule::builder()
        .id(&rule.id)
        .filter(LifecycleRuleFilter::builder().prefix(&rule.prefix).build())
        .status(if rule.enabled {
            ExpirationStatus::Enabled
        } else {
            ExpirationStatus::Disabled
        });
    if let Some(days) = rule.transition_days {
        let mut transition = Transition::builder().days(days);
        if let Some(class) = &rule.transition_storage_class {
            transition = transition.storage_class(TransitionStorageClass::from(class.as_str()));
        }
        builder = builder.transitions(transition.build());
    }
    if let Some(days) = rule.expiration_days {
        builder = builder.expiration(LifecycleExpiration::builder().days(days).build());
    }
    if let Some(days) = rule.abort_incomplete_upload_days {
        builder = builder.abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(days)
                .build(),
        );
    }
    builder.build().map_err(build_error("a lifecycle rule"))
}

async fn put_tags(
    client: &Client,
    bucket: &str,
    tags: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let tagging = Tagging::builder()
        .set_tag_set(Some(sdk_tags(tags)?))
        .build()
        .map_err(build_error("the bucket tagging"))?;
    client
        .put_bucket_tagging()
        .bucket(bucket)
        .tagging(tagging)
        .send()
        .await
        .map_sdk("s3:PutBucketTagging", format_args!("bucket {bucket}"))?;
    Ok(())
}

/// Makes one S3 call (two for [`Change::CreateBucket`]).
pub async fn apply(client: &Client, change: &Change) -> Result<(), Error> {
    match change {
        Change::CreateBucket {
            bucket,
            region,
            tags,
        } => {
            let mut request = client.create_bucket().bucket(bucket);
            // us-east-1 is the one region that must not be named as a location constraint.
            if region != "us-east-1" {
                request = request.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region.as_str()))
                        .build(),
                );
            }
            request.send().await.map_sdk("s3:CreateBucket", bucket)?;
            put_tags(client, bucket, tags).await
        }
        Change::PutBucketTagging { bucket, tags } => put_tags(client, bucket, tags).await,
        Change::PutPublicAccessBlock { bucket, config } => {
            client
                .put_public_access_block()
                .bucket(bucket)
                .public_access_block_configuration(
                    PublicAccessBlockConfiguration::builder()
                        .block_public_acls(config.block_public_acls)
                        .ignore_public_acls(config.ignore_public_acls)
                        .block_public_policy(config.block_public_policy)
                        .restrict_public_buckets(config.restrict_public_buckets)
                        .build(),
                )
                .send()
                .await
                .map_sdk("s3:PutPublicAccessBlock", format_args!("bucket {bucket}"))?;
            Ok(())
        }
        Change::PutBucketEncryption { bucket, algorithm } => {
            let default = ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::from(algorithm.as_str()))
                .build()
                .map_err(build_error("the default encryption"))?;
            let configuration = ServerSideEncryptionConfiguration::builder()
                .rules(
                    ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(default)
                        .build(),
                )
                .build()
                .map_err(build_error("the encryption configuration"))?;
            client
                .put_bucket_encryption()
                .bucket(bucket)
                .server_side_encryption_configuration(configuration)
                .send()
                .await
                .map_sdk("s3:PutBucketEncryption", format_args!("bucket {bucket}"))?;
            Ok(())
        }
        Change::PutBucketLifecycleConfiguration {
            bucket,
            rules,
            kept,
        } => {
            let mut rules = rules.iter().map(sdk_rule).collect::<Result<Vec<_>, _>>()?;
            rules.extend(kept.0.iter().cloned());
            let configuration = BucketLifecycleConfiguration::builder()
                .set_rules(Some(rules))
                .build()
                .map_err(build_error("the lifecycle configuration"))?;
            client
                .put_bucket_lifecycle_configuration()
                .bucket(bucket)
                .lifecycle_configuration(configuration)
                .send()
                .await
                .map_sdk(
                    "s3:PutBucketLifecycleConfiguration",
                    format_args!("bucket {bucket}"),
                )?;
            Ok(())
        }
    }
}

/// Removes a bucket of this pipeline under `deletionPolicy: Delete`: empties it (up to
/// 20,000 objects per call; call again while it reports [`Deletion::InProgress`]) and deletes it.
/// A bucket that is not tagged by this pipeline is left alone.
pub async fn delete(client: &Client, desired: &DesiredBucket) -> Result<Deletion, Error> {
    let bucket = desired.name.as_str();
    let what = format!("bucket {bucket}");
    // Observe as if adoption were off: only a bucket tagged by this pipeline is deleted.
    let probe = DesiredBucket {
        adopt_existing: false,
        ..desired.clone()
    };
    let Some(observed) = observe(client, &probe).await? else {
        return Ok(Deletion::Gone);
    };
    if let Some(kept) = left_in_place(&what, &observed.tags, &desired.owner) {
        return Ok(kept);
    }
    let mut token: Option<String> = None;
    let mut removed = 0usize;
    for _ in 0..DELETE_PAGES_PER_CALL {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_sdk("s3:ListBucket", &what)?;
        let objects = page
            .contents()
            .iter()
            .filter_map(|object| object.key())
            .map(|key| {
                ObjectIdentifier::builder()
                    .key(key)
                    .build()
                    .map_err(build_error("an object identifier"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !objects.is_empty() {
            removed += objects.len();
            let batch = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(build_error("a delete batch"))?;
            let output = client
                .delete_objects()
                .bucket(bucket)
                .delete(batch)
                .send()
                .await
                .map_sdk("s3:DeleteObject", &what)?;
            if let Some(failure) = output.errors().first() {
                return Err(from_code(
                    "s3:DeleteObject",
                    &what,
                    failure.code(),
                    failure.message().unwrap_or_default(),
                ));
            }
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    if token.is_some() {
        return Ok(Deletion::InProgress(format!(
            "emptying {what}: {removed} objects removed so far"
        )));
    }
    client
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_sdk("s3:DeleteBucket", &what)?;
    Ok(Deletion::Gone)
}

fn from_code(operation: &str, what: &str, code: Option<&str>, message: &str) -> Error {
    crate::error::classify(
        operation,
        what,
        code.map(str::to_owned),
        None,
        message.to_owned(),
    )
}

/// The buckets part: one entry per distinct bucket.
pub struct Buckets;

impl PartReconciler for Buckets {
    const PART: Part = Part::Buckets;
    const CONDITION_TYPE: &'static str = "BucketsReady";
    const NAME: &'static str = "buckets";
    const SERVICE: Service = Service::new("s3");

    type Desired = DesiredBucket;
    type Observed = ObservedBucket;
    type Change = Change;

    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        apply(&clients.s3, change)
    }

    fn needs_settling(change: &Change) -> bool {
        change.needs_settling()
    }

    fn desired(input: PlanInput<'_>) -> Result<Vec<DesiredBucket>, Error> {
        Ok(desired(input.spec, input.names))
    }

    fn summary(desired: &[DesiredBucket]) -> String {
        let names: Vec<&str> = desired.iter().map(|b| b.name.as_str()).collect();
        format!("buckets {} match the spec", names.join(", "))
    }

    async fn observe(
        clients: &AwsClients,
        desired: &DesiredBucket,
    ) -> Result<Option<ObservedBucket>, Error> {
        observe(&clients.s3, desired).await
    }

    /// The calls that turn `observed` into `desired`. Empty when they match.
    fn diff(
        desired: &DesiredBucket,
        observed: Option<&ObservedBucket>,
    ) -> Result<Vec<Change>, Error> {
        let bucket = &desired.name;
        let Some(observed) = observed else {
            return Ok(vec![
                Change::CreateBucket {
                    bucket: bucket.clone(),
                    region: desired.region.clone(),
                    tags: desired.tags.clone(),
                },
                Change::PutPublicAccessBlock {
                    bucket: bucket.clone(),
                    config: desired.public_access_block,
                },
                Change::PutBucketEncryption {
                    bucket: bucket.clone(),
                    algorithm: desired.encryption.clone(),
                },
                Change::PutBucketLifecycleConfiguration {
                    bucket: bucket.clone(),
                    rules: desired.lifecycle.clone(),
                    kept: OtherRules::default(),
                },
            ]);
        };
        let what = format!("bucket {bucket}");
        check_owner(
            &what,
            &observed.tags,
            &desired.owner,
            desired.adopt_existing,
        )?;
        if let Some(region) = &observed.region
            && *region != desired.region
        {
            return Err(Error::Conflict(format!(
                "bucket {bucket} is in region {region}, not in the pipeline's region {}",
                desired.region
            )));
        }
        let mut changes = Vec::new();
        // S3 replaces the whole tag set: the bucket's other tags are written back with the missing.
        changes.extend(tag_change(&observed.tags, &desired.tags, |missing| {
            let mut tags = observed.tags.clone();
            tags.extend(missing);
            Change::PutBucketTagging {
                bucket: bucket.clone(),
                tags,
            }
        }));
        let config = observed.config.clone().unwrap_or_default();
        // Only ever more blocked: a switch the spec wants on is turned on (the others are on too).
        if config.public_access_block != desired.public_access_block {
            changes.push(Change::PutPublicAccessBlock {
                bucket: bucket.clone(),
                config: desired.public_access_block,
            });
        }
        // SSE-S3 where there is no default encryption; an existing one (SSE-KMS with the user's
        // key, DSSE-KMS, or SSE-S3) is at least as strong and stays.
        if config.encryption.is_none() {
            changes.push(Change::PutBucketEncryption {
                bucket: bucket.clone(),
                algorithm: desired.encryption.clone(),
            });
        }
        if config.lifecycle != desired.lifecycle {
            changes.push(Change::PutBucketLifecycleConfiguration {
                bucket: bucket.clone(),
                rules: desired.lifecycle.clone(),
                kept: config.other_rules.clone(),
            });
        }
        Ok(changes)
    }

    /// What the bucket has beyond what the operator manages, and keeps: a stronger default
    /// encryption than SSE-S3, lifecycle rules of its own.
    fn kept(desired: &DesiredBucket, observed: Option<&ObservedBucket>) -> Vec<String> {
        let Some(config) = observed.and_then(|o| o.config.as_ref()) else {
            return Vec::new();
        };
        let bucket = &desired.name;
        let mut kept = Vec::new();
        if let Some(algorithm) = &config.encryption
            && *algorithm != desired.encryption
        {
            kept.push(format!("bucket {bucket} default encryption {algorithm}"));
        }
        if !config.other_rules.is_empty() {
            kept.push(format!(
                "bucket {bucket} lifecycle rules [{}]",
                config.other_rules.ids().join(", ")
            ));
        }
        kept
    }

    /// A bucket is ready as soon as it exists: S3 has no provisioning states.
    fn readiness(_desired: &DesiredBucket, observed: Option<&ObservedBucket>) -> Readiness {
        match observed {
            Some(_) => Readiness::Ready,
            None => Readiness::Provisioning("bucket does not exist yet".to_owned()),
        }
    }

    fn resources(
        desired: &DesiredBucket,
        _observed: Option<&ObservedBucket>,
        into: &mut PipelineResources,
    ) {
        for role in &desired.roles {
            let field = match role {
                BucketRole::Raw => &mut into.raw_bucket,
                BucketRole::Curated => &mut into.curated_bucket,
                BucketRole::QueryResults => &mut into.query_results_bucket,
            };
            *field = Some(desired.name.clone());
        }
    }

    fn record(from: &PipelineResources, into: &mut PipelineResources) {
        into.raw_bucket.clone_from(&from.raw_bucket);
        into.curated_bucket.clone_from(&from.curated_bucket);
        into.query_results_bucket
            .clone_from(&from.query_results_bucket);
    }

    /// Buckets are emptied and removed once nothing writes to them any more: the parts that
    /// depend on them (the delivery stream, the Flink application) are gone.
    async fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        done: &[DeleteStep],
    ) -> Result<Vec<(String, Deletion)>, Error> {
        let writers_gone = done
            .iter()
            .filter(|step| step.part.depends_on().contains(&Part::Buckets))
            .all(|step| step.deletion.is_finished());
        let mut steps = Vec::new();
        for bucket in desired(input.spec, input.names) {
            let deletion = if writers_gone {
                delete(&clients.s3, &bucket).await?
            } else {
                Deletion::InProgress(format!(
                    "bucket {} waits until the delivery stream and the Flink application are deleted",
                    bucket.name
                ))
            };
            steps.push((format!("bucket {}", bucket.name), deletion));
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names_for};

    #[test]
    fn desired_buckets_from_the_minimal_example() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let buckets = desired(&pipeline.spec, &names_for(&pipeline));
        let names: Vec<_> = buckets.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop-heatmap-athena-123456789012",
                "shop-heatmap-curated-123456789012",
                "shop-heatmap-raw-123456789012"
            ]
        );
        for bucket in &buckets {
            assert_eq!(bucket.public_access_block, PublicAccessBlock::ALL);
            assert_eq!(bucket.encryption, "AES256");
            assert_eq!(bucket.region, "ap-northeast-2");
            assert_eq!(bucket.tags["clickheatmap.io/pipeline"], "default/shop");
            assert_eq!(
                bucket.tags["clickheatmap.io/managed-by"],
                "clickheatmap-operator"
            );
            assert!(!bucket.adopt_existing);
        }
        let raw = &buckets[2];
        assert_eq!(raw.roles, [BucketRole::Raw]);
        let rule = raw
            .lifecycle
            .iter()
            .find(|r| r.id == "clickheatmap-raw-archive")
            .expect("raw rule");
        assert_eq!(rule.prefix, "raw/");
        assert_eq!(rule.transition_days, Some(30));
        assert_eq!(rule.expiration_days, None);
        let results = &buckets[0];
        let rule = results
            .lifecycle
            .iter()
            .find(|r| r.id == "clickheatmap-athena-results")
            .expect("results rule");
        assert_eq!(rule.prefix, "athena-results/");
        assert_eq!(rule.expiration_days, Some(7));
        assert_eq!(buckets[1].lifecycle.len(), 1, "curated: abort rule only");
    }

    #[test]
    fn the_full_example_adopts() {
        let pipeline = fixture("pipeline-full.yaml");
        let buckets = desired(&pipeline.spec, &names_for(&pipeline));
        assert_eq!(buckets.len(), 3);
        assert!(buckets.iter().all(|b| b.adopt_existing));
    }

    #[test]
    fn one_bucket_named_twice_gets_both_roles_and_rules() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.buckets.query_results = pipeline.spec.buckets.raw.clone();
        let buckets = desired(&pipeline.spec, &names_for(&pipeline));
        assert_eq!(buckets.len(), 2);
        let shared = buckets
            .iter()
            .find(|b| b.name == pipeline.spec.buckets.raw)
            .expect("shared bucket");
        assert_eq!(shared.roles, [BucketRole::Raw, BucketRole::QueryResults]);
        assert_eq!(shared.lifecycle.len(), 3);
    }

    fn in_sync(desired: &DesiredBucket) -> ObservedBucket {
        ObservedBucket {
            name: desired.name.clone(),
            region: Some(desired.region.clone()),
            tags: desired.tags.clone(),
            config: Some(BucketConfig {
                public_access_block: desired.public_access_block,
                encryption: Some(desired.encryption.clone()),
                lifecycle: desired.lifecycle.clone(),
                other_rules: OtherRules::default(),
            }),
        }
    }

    #[test]
    fn missing_bucket_is_created_and_configured() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let bucket = desired(&pipeline.spec, &names_for(&pipeline)).remove(0);
        let changes = Buckets::diff(&bucket, None).expect("diff");
        assert!(matches!(changes[0], Change::CreateBucket { .. }));
        assert_eq!(changes.len(), 4);
        assert_eq!(
            changes[0].to_string(),
            "create bucket shop-heatmap-athena-123456789012 in ap-northeast-2, tagged clickheatmap.io/managed-by=clickheatmap-operator, clickheatmap.io/pipeline=default/shop"
        );
    }

    #[test]
    fn in_sync_bucket_needs_nothing() {
        let pipeline = fixture("pipeline-minimal.yaml");
        for bucket in desired(&pipeline.spec, &names_for(&pipeline)) {
            assert_eq!(Buckets::diff(&bucket, Some(&in_sync(&bucket))), Ok(vec![]));
        }
    }

    #[test]
    fn drift_is_repaired_setting_by_setting() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let bucket = desired(&pipeline.spec, &names_for(&pipeline)).remove(0);
        let mut observed = in_sync(&bucket);
        let config = observed.config.as_mut().expect("config");
        config.public_access_block.block_public_policy = false;
        config.encryption = None;
        config.lifecycle.clear();
        let changes = Buckets::diff(&bucket, Some(&observed)).expect("diff");
        let ops: Vec<_> = changes
            .iter()
            .map(|c| serde_json::to_value(c).expect("json")["op"].clone())
            .collect();
        assert_eq!(
            ops,
            [
                "PutPublicAccessBlock",
                "PutBucketEncryption",
                "PutBucketLifecycleConfiguration"
            ]
        );
    }

    #[test]
    fn the_specs_tags_go_on_every_bucket_and_cannot_replace_the_owner() {
        let mut pipeline = fixture("pipeline-full.yaml");
        pipeline
            .spec
            .tags
            .insert("clickheatmap.io/pipeline".into(), "forged".into());
        for bucket in desired(&pipeline.spec, &names_for(&pipeline)) {
            assert_eq!(bucket.tags["team"], "web");
            assert_eq!(bucket.tags["cost-center"], "4711");
            assert_eq!(bucket.tags["clickheatmap.io/pipeline"], "default/shop-full");
        }
    }

    #[test]
    fn a_stronger_encryption_and_the_users_rules_are_kept() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let bucket = desired(&pipeline.spec, &names_for(&pipeline)).remove(0);
        let mut observed = in_sync(&bucket);
        let config = observed.config.as_mut().expect("config");
        config.encryption = Some("aws:kms".into());
        let users = SdkLifecycleRule::builder()
            .id("expire-logs")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .expiration(LifecycleExpiration::builder().days(7).build())
            .build()
            .expect("rule");
        config.other_rules = OtherRules(vec![users.clone()]);
        // KMS and the user's rule alone: nothing to do.
        assert_eq!(Buckets::diff(&bucket, Some(&observed)), Ok(vec![]));
        // The operator's own rules drifted: they are written, the user's rule with them.
        observed.config.as_mut().expect("config").lifecycle.clear();
        let changes = Buckets::diff(&bucket, Some(&observed)).expect("diff");
        assert_eq!(changes.len(), 1, "{changes:?}");
        let Change::PutBucketLifecycleConfiguration { kept, rules, .. } = &changes[0] else {
            panic!("{changes:?}");
        };
        assert_eq!(kept, &OtherRules(vec![users]));
        assert_eq!(rules, &bucket.lifecycle);
        assert!(
            changes[0]
                .to_string()
                .ends_with("keeping the bucket's own [expire-logs]")
        );
    }

    #[test]
    fn foreign_and_untagged_buckets_conflict() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let bucket = desired(&pipeline.spec, &names_for(&pipeline)).remove(0);
        let mut observed = in_sync(&bucket);
        observed.tags = Owner::new("default", "other").tags();
        let error = Buckets::diff(&bucket, Some(&observed)).expect_err("conflict");
        assert_eq!(error.reason(), crate::error::Reason::Conflict);
        assert!(error.to_string().contains("default/other"), "{error}");

        observed.tags = BTreeMap::from([("team".to_owned(), "web".to_owned())]);
        let error = Buckets::diff(&bucket, Some(&observed)).expect_err("conflict");
        assert!(error.to_string().contains("adoptExisting"), "{error}");
    }

    #[test]
    fn adoption_keeps_foreign_tags() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let mut bucket = desired(&pipeline.spec, &names_for(&pipeline)).remove(0);
        bucket.adopt_existing = true;
        let mut observed = in_sync(&bucket);
        observed.tags = BTreeMap::from([("team".to_owned(), "web".to_owned())]);
        let changes = Buckets::diff(&bucket, Some(&observed)).expect("diff");
        let Change::PutBucketTagging { tags, .. } = &changes[0] else {
            panic!("expected tagging first: {changes:?}");
        };
        assert_eq!(tags["team"], "web");
        assert_eq!(tags["clickheatmap.io/pipeline"], "default/shop");
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn bucket_in_another_region_conflicts() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let bucket = desired(&pipeline.spec, &names_for(&pipeline)).remove(0);
        let mut observed = in_sync(&bucket);
        observed.region = Some("eu-west-1".into());
        let error = Buckets::diff(&bucket, Some(&observed)).expect_err("conflict");
        assert!(error.to_string().contains("eu-west-1"));
    }
}
