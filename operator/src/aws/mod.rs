//! The AWS side of the operator: one module per service, each with one [`PartReconciler`] — the
//! same shape for every part of a pipeline:
//!
//! * `desired` — pure: what the spec asks for (unit-tested from the example manifests).
//! * `observe` — I/O, reads only: what exists, `None` when nothing does. A resource that belongs
//!   to someone else is read no further than its tags.
//! * `diff` — pure: the list of [`Change`]s (one AWS call each) that turn the observed state into
//!   the desired one. **Empty when in sync**, which is what makes a resync free of writes.
//!   Ownership is decided here too ([`check_owner`]): a resource tagged by another pipeline, or an
//!   untagged one while `adoptExisting` is off, is a terminal `Conflict`.
//! * `readiness`, `kept`, `resources` — pure: the part's condition and `status.resources`.
//! * `delete` — I/O: removes what this pipeline owns under `deletionPolicy: Delete` (the caller
//!   has already returned under `Retain`); a resource that is not the pipeline's is left in place
//!   ([`left_in_place`]).
//!
//! Each service module also has `apply(client, change)`, the I/O that makes one call, with the
//! SDK errors mapped the same way everywhere ([`SdkResultExt`]).
//!
//! Splitting the pure parts from the calls is what lets the `plan` command print exactly what a
//! reconcile would do, and lets the unit tests check every decision without an emulator. The
//! Kubernetes controller sits on top and only needs [`crate::pipeline`], which runs the parts in
//! order with one generic loop.

pub mod athena;
pub mod calls;
pub mod firehose;
pub mod flink;
pub mod glue;
pub mod kinesis;
pub mod s3;
pub mod throttle;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use clickheatmap_crds::{ClickHeatmapPipelineSpec, PipelineResources};
use serde::Serialize;
use tokio::sync::OnceCell;

pub use calls::CallCounter;

use crate::error::{Error, from_sdk, is_not_found};
use crate::names::{Account, MANAGED_BY_TAG, Names, Owner, Ownership, PIPELINE_TAG};
use crate::pipeline::{DeleteStep, Part};

/// The AWS service a part lives in, named as IAM names it (`kinesis`, `kinesisanalyticsv2`):
/// each reconciler declares its own ([`PartReconciler::SERVICE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Service(&'static str);

impl Service {
    /// The service with this IAM prefix.
    pub const fn new(iam_prefix: &'static str) -> Service {
        Service(iam_prefix)
    }

    /// The IAM prefix (`s3`, `kinesis`, …).
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One AWS call the operator would make, of any part (generated from the part table in
/// [`crate::pipeline`]).
pub use crate::pipeline::Change;

/// What a part's reconciler plans from: the spec, the pipeline's names, and the resources the
/// previous status recorded (so that a part switched off removes what it made).
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub spec: &'a ClickHeatmapPipelineSpec,
    pub names: &'a Names,
    pub previous: &'a PipelineResources,
}

/// What a part the spec no longer wants left behind (the raw archive switched off, the engine
/// changed away from `ManagedFlink`), found through the previous status.
#[derive(Clone, Debug)]
pub struct Leftover {
    /// What to say when there is nothing (more) to remove.
    pub summary: String,
    /// The resource when it still exists and is this pipeline's; `Err` when it could not be read.
    pub found: Result<Option<Removal>, Error>,
}

/// The removal of a leftover resource of this pipeline.
#[derive(Clone, Debug)]
pub struct Removal {
    /// The calls that remove it (none while it is already being deleted).
    pub changes: Vec<Change>,
    /// The part's message until it is gone.
    pub message: String,
    /// The part's fields of `status.resources` until it is gone.
    pub resources: PipelineResources,
}

/// One part of a pipeline (one status condition) and the AWS resources behind it, reconciled
/// the same way for every service. [`crate::pipeline`] runs the parts in [`Part::ORDER`]:
///
/// 1. [`desired`](PartReconciler::desired) — pure: one entry per resource the spec asks for;
///    none when the spec does not want the part (then [`leftover`](PartReconciler::leftover)
///    says what an earlier spec left to remove);
/// 2. [`observe`](PartReconciler::observe) each entry — reads only, `None` when nothing exists;
/// 3. [`diff`](PartReconciler::diff) — pure: the calls that bring it in line (empty when in
///    sync), or a terminal `Conflict` for a resource that is not the pipeline's;
/// 4. [`readiness`](PartReconciler::readiness), [`kept`](PartReconciler::kept) and
///    [`resources`](PartReconciler::resources) — pure: the condition and `status.resources`.
///
/// [`apply`](PartReconciler::apply) makes one call, and [`delete`](PartReconciler::delete)
/// removes the part under `deletionPolicy: Delete` (the caller has already returned under
/// `Retain`). A new part is one module with one implementation, plus its line in the part table
/// of [`crate::pipeline`] (and, for a service not called yet, its SDK client in [`AwsClients`]).
pub trait PartReconciler {
    const PART: Part;
    /// The status condition type, e.g. `StreamReady`.
    const CONDITION_TYPE: &'static str;
    /// How messages name the part, e.g. `stream`.
    const NAME: &'static str;
    const SERVICE: Service;
    /// Parts that must be ready before this one is created or changed.
    const DEPENDS_ON: &'static [Part] = &[];

    /// One resource as the spec wants it.
    type Desired: Send + Sync;
    /// One existing resource.
    type Observed: Send + Sync;
    /// One call of the service (one variant of [`Change`]).
    type Change: Clone
        + fmt::Debug
        + fmt::Display
        + PartialEq
        + Eq
        + Serialize
        + Send
        + Sync
        + Into<Change>;

    /// True when the spec itself wants the part (as opposed to a part with leftovers to
    /// remove). A wanted part waits for [`PartReconciler::DEPENDS_ON`].
    fn wanted(_spec: &ClickHeatmapPipelineSpec) -> bool {
        true
    }

    /// The resources the spec asks for, in the order they are reconciled; empty when the spec
    /// does not want the part.
    fn desired(input: PlanInput<'_>) -> Result<Vec<Self::Desired>, Error>;

    /// What the part's condition says when it is in sync.
    fn summary(desired: &[Self::Desired]) -> String;

    /// Reads one resource; `None` when it does not exist.
    fn observe(
        clients: &AwsClients,
        desired: &Self::Desired,
    ) -> impl Future<Output = Result<Option<Self::Observed>, Error>> + Send;

    /// The calls that turn `observed` into `desired`, in order. Empty when they match.
    fn diff(
        desired: &Self::Desired,
        observed: Option<&Self::Observed>,
    ) -> Result<Vec<Self::Change>, Error>;

    /// Whether the resource can be used as observed.
    fn readiness(desired: &Self::Desired, observed: Option<&Self::Observed>) -> Readiness;

    /// Settings of the existing resource that are stronger than the spec asks and are kept
    /// (the operator never weakens a resource).
    fn kept(_desired: &Self::Desired, _observed: Option<&Self::Observed>) -> Vec<String> {
        Vec::new()
    }

    /// Records the resource's names/ARNs once the diff's calls are made.
    fn resources(
        desired: &Self::Desired,
        observed: Option<&Self::Observed>,
        into: &mut PipelineResources,
    );

    /// What stays recorded when the diff failed (nothing, unless a removal must be retried).
    fn resources_when_blocked(_desired: &Self::Desired, _into: &mut PipelineResources) {}

    /// Copies the fields of `status.resources` this part is responsible for.
    fn record(from: &PipelineResources, into: &mut PipelineResources);

    /// When the spec does not want the part: what an earlier spec left to remove; `None` when
    /// nothing was recorded.
    fn leftover(
        _clients: &AwsClients,
        _input: PlanInput<'_>,
    ) -> impl Future<Output = Option<Leftover>> + Send {
        async { None }
    }

    /// Makes one call.
    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Self::Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;

    /// True when the resource goes through a transitional state after this call (a Kinesis
    /// stream `UPDATING`, a Flink application `STARTING`): further changes to it wait for the
    /// next reconcile.
    fn needs_settling(_change: &Self::Change) -> bool {
        false
    }

    /// Removes what this pipeline owns of the part (`deletionPolicy: Delete`), one entry per
    /// resource; `done` are the steps of the parts removed before (the reverse reconcile order).
    fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        done: &[DeleteStep],
    ) -> impl Future<Output = Result<Vec<(String, Deletion)>, Error>> + Send;
}

/// Whether an existing resource can take traffic/changes, judged from its observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still being created or changed; the message says what it waits for.
    Provisioning(String),
    /// Not in line with the spec, and nothing can be done before `until` (epoch seconds), e.g.
    /// a resize past AWS's daily resharding quota; the message says so.
    Deferred {
        message: String,
        until: i64,
    },
}

/// What a `delete` call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Deletion {
    /// `deletionPolicy: Retain`: nothing was touched.
    Retained,
    /// The resource does not exist (any more).
    Gone,
    /// Deletion started or continues; call again.
    InProgress(String),
    /// The resource exists but is not this pipeline's; it was left alone.
    Kept(String),
}

impl Deletion {
    /// True when there is nothing left to wait for.
    pub fn is_finished(&self) -> bool {
        !matches!(self, Deletion::InProgress(_))
    }
}

/// The error mapping every SDK call shares: an SDK error becomes an [`Error`] that names the IAM
/// action and the resource (see [`crate::error::from_sdk`]).
pub(crate) trait SdkResultExt<T> {
    /// `operation` is the IAM action (`kinesis:CreateStream`), `what` the resource the call was
    /// about (`stream shop-clicks`).
    fn map_sdk(self, operation: &str, what: impl fmt::Display) -> Result<T, Error>;

    /// As [`SdkResultExt::map_sdk`], for a read: `None` when the service says there is no such
    /// resource.
    fn found(self, operation: &str, what: impl fmt::Display) -> Result<Option<T>, Error>;
}

impl<T, E> SdkResultExt<T> for Result<T, SdkError<E, Response>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn map_sdk(self, operation: &str, what: impl fmt::Display) -> Result<T, Error> {
        self.map_err(|error| from_sdk(operation, &what.to_string(), error))
    }

    fn found(self, operation: &str, what: impl fmt::Display) -> Result<Option<T>, Error> {
        match self {
            Ok(output) => Ok(Some(output)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(from_sdk(operation, &what.to_string(), error)),
        }
    }
}

/// The change that adds the desired tags an existing resource lacks (or holds with another
/// value), made by `change` from those tags; `None` when it has them all.
pub(crate) fn tag_change<C>(
    observed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    change: impl FnOnce(BTreeMap<String, String>) -> C,
) -> Option<C> {
    let missing = missing_tags(observed, desired);
    (!missing.is_empty()).then(|| change(missing))
}

/// True when the operator may read and change a resource with these tags: it is `owner`'s, or
/// untagged and `adopt` is on. (A resource that is not is read no further than its tags.)
pub(crate) fn may_manage(tags: &BTreeMap<String, String>, owner: &Owner, adopt: bool) -> bool {
    match Ownership::of(tags, owner) {
        Ownership::Ours => true,
        Ownership::Unowned => adopt,
        Ownership::Foreign(_) => false,
    }
}

/// Decides whether a resource with these tags may be managed by `owner`.
///
/// `Ok` when it is the owner's, or untagged with `adopt` on; a terminal `Conflict` otherwise.
pub(crate) fn check_owner(
    what: &str,
    tags: &BTreeMap<String, String>,
    owner: &Owner,
    adopt: bool,
) -> Result<(), Error> {
    match Ownership::of(tags, owner) {
        Ownership::Ours => Ok(()),
        Ownership::Foreign(other) => Err(Error::Conflict(format!(
            "{what} is tagged by pipeline {other} ({PIPELINE_TAG}); pipeline {} does not touch it",
            owner.tag_value()
        ))),
        Ownership::Unowned if adopt => Ok(()),
        Ownership::Unowned => Err(Error::Conflict(format!(
            "{what} already exists and has no {PIPELINE_TAG} tag; set spec.adoptExisting: true to let pipeline {} take it over, or choose another name",
            owner.tag_value()
        ))),
    }
}

/// The desired tags that the observed tags lack or hold with another value.
pub(crate) fn missing_tags(
    observed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    desired
        .iter()
        .filter(|(key, value)| observed.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// `k=v, k=v` for messages.
pub(crate) fn show_tags(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// True when the tags say the resource is managed by this operator for `owner`.
pub(crate) fn is_ours(tags: &BTreeMap<String, String>, owner: &Owner) -> bool {
    Ownership::of(tags, owner) == Ownership::Ours
}

/// What deleting a resource that this pipeline does not own comes to: it is left in place.
/// `None` when the pipeline owns it (the deletion goes on).
pub(crate) fn left_in_place(
    what: &str,
    tags: &BTreeMap<String, String>,
    owner: &Owner,
) -> Option<Deletion> {
    (!is_ours(tags, owner)).then(|| {
        Deletion::Kept(format!(
            "{what} is not tagged by pipeline {}; left in place",
            owner.tag_value()
        ))
    })
}

/// Reads tags that come in pages, each page starting after the last key of the one before:
/// `page(start)` returns one page's tags and whether more follow.
pub(crate) async fn paged_tags<Page, Fut>(mut page: Page) -> Result<BTreeMap<String, String>, Error>
where
    Page: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<(String, String)>, bool), Error>>,
{
    let mut tags = BTreeMap::new();
    let mut start = None;
    loop {
        let (entries, more) = page(start.take()).await?;
        let last = entries.last().map(|(key, _)| key.clone());
        tags.extend(entries);
        match last {
            Some(last) if more => start = Some(last),
            _ => return Ok(tags),
        }
    }
}

/// The tag keys of the operator, for documentation and tests.
pub const OWNER_TAG_KEYS: [&str; 2] = [PIPELINE_TAG, MANAGED_BY_TAG];

/// One client per service, all for one region, plus the account they act in.
///
/// Build it once per region and share it: the SDK clients are cheap to clone and pool their
/// connections. The account id (for ARNs) is looked up once with STS `GetCallerIdentity`, which
/// needs no IAM permission.
#[derive(Clone)]
pub struct AwsClients {
    pub region: String,
    pub s3: aws_sdk_s3::Client,
    pub kinesis: aws_sdk_kinesis::Client,
    pub firehose: aws_sdk_firehose::Client,
    pub glue: aws_sdk_glue::Client,
    pub athena: aws_sdk_athena::Client,
    pub sts: aws_sdk_sts::Client,
    /// Managed Flink, behind a trait so that the paths the emulator lacks can be tested.
    pub flink: Arc<dyn flink::FlinkApi>,
    account: Arc<OnceCell<Account>>,
}

impl fmt::Debug for AwsClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsClients")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// How to build [`AwsClients`].
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Address S3 buckets in the path (`http://host/bucket`) instead of the host name. Needed by
    /// emulators on `127.0.0.1`; never by AWS.
    pub s3_force_path_style: bool,
    /// Count every AWS call (see [`CallCounter`]).
    pub calls: Option<CallCounter>,
    /// Client-side rate limits per service (see [`throttle`]); none when absent.
    pub rate_limits: Option<throttle::RateLimits>,
    /// An AWS emulator's endpoint for every service (`--aws-endpoint-url`); emulators only.
    pub endpoint_url: Option<String>,
}

impl AwsClients {
    /// Clients from an SDK configuration, which must name a region.
    pub fn new(config: &SdkConfig, options: &ClientOptions) -> Result<AwsClients, Error> {
        let region = config
            .region()
            .map(|region| region.as_ref().to_owned())
            .ok_or_else(|| Error::internal("the AWS SDK configuration names no region"))?;
        let calls = options.calls.clone();
        // One bucket per service of this region: AWS counts the quota per account and region.
        let limited = |service: &str| {
            let rate = options.rate_limits.as_ref()?.rate(service)?;
            let base = config.http_client()?;
            Some(throttle::RateLimitedHttpClient::new(
                base,
                Arc::new(throttle::TokenBucket::new(rate)),
            ))
        };
        macro_rules! client {
            ($sdk:ident, $service:literal) => {
                client!($sdk, $service, |builder| builder)
            };
            ($sdk:ident, $service:literal, $customise:expr) => {{
                let mut builder = $customise($sdk::config::Builder::from(config));
                if let Some(calls) = &calls {
                    builder = builder.interceptor(calls.clone());
                }
                if let Some(http) = limited($service) {
                    builder = builder.http_client(http);
                }
                $sdk::Client::from_conf(builder.build())
            }};
        }
        let path_style = options.s3_force_path_style;
        Ok(AwsClients {
            region,
            s3: client!(aws_sdk_s3, "s3", |builder: aws_sdk_s3::config::Builder| {
                builder.force_path_style(path_style)
            }),
            kinesis: client!(aws_sdk_kinesis, "kinesis"),
            firehose: client!(aws_sdk_firehose, "firehose"),
            glue: client!(aws_sdk_glue, "glue"),
            athena: client!(aws_sdk_athena, "athena"),
            sts: client!(aws_sdk_sts, "sts"),
            flink: Arc::new(flink::SdkFlink::new(client!(
                aws_sdk_kinesisanalyticsv2,
                "kinesisanalyticsv2"
            ))),
            account: Arc::new(OnceCell::new()),
        })
    }

    /// Clients from the SDK's default chain (environment, profile, IRSA / Pod Identity) for
    /// `region`. When `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3` points at an emulator, S3 uses
    /// path-style addressing, which emulators on `127.0.0.1` need.
    pub async fn from_env(region: &str, options: ClientOptions) -> Result<AwsClients, Error> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(clickheatmap_tls::aws_http_client())
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        let emulated = options.endpoint_url.is_some()
            || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                .iter()
                .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        AwsClients::new(
            &config,
            &ClientOptions {
                s3_force_path_style: emulated || options.s3_force_path_style,
                ..options
            },
        )
    }

    /// Replaces the Managed Flink API (tests use a fake).
    pub fn with_flink(mut self, flink: Arc<dyn flink::FlinkApi>) -> AwsClients {
        self.flink = flink;
        self
    }

    /// The account and partition of the credentials, looked up once.
    pub async fn account(&self) -> Result<Account, Error> {
        self.account
            .get_or_try_init(|| async {
                let identity = self
                    .sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_sdk("sts:GetCallerIdentity", "the caller")?;
                let id = identity
                    .account()
                    .ok_or_else(|| Error::internal("sts:GetCallerIdentity returned no account"))?;
                let partition = identity
                    .arn()
                    .and_then(|arn| arn.split(':').nth(1))
                    .filter(|partition| !partition.is_empty())
                    .map(str::to_owned)
                    .unwrap_or_else(|| crate::names::partition_of_region(&self.region).to_owned());
                Ok(Account::new(id, partition))
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tags_lists_absent_and_changed_values() {
        let owner = Owner::new("a", "b");
        let mut observed = BTreeMap::from([("x".to_owned(), "1".to_owned())]);
        assert_eq!(missing_tags(&observed, &owner.tags()), owner.tags());
        observed.extend(owner.tags());
        assert!(missing_tags(&observed, &owner.tags()).is_empty());
        observed.insert(MANAGED_BY_TAG.to_owned(), "someone".to_owned());
        assert_eq!(missing_tags(&observed, &owner.tags()).len(), 1);
    }

    #[tokio::test]
    async fn tags_are_read_page_after_page() {
        let pages = [vec![("a", "1"), ("b", "2")], vec![("c", "3")]];
        let mut starts = Vec::new();
        let tags = paged_tags(|start: Option<String>| {
            starts.push(start.clone());
            let index = usize::from(start.is_some());
            let entries = pages[index]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            async move { Ok((entries, index == 0)) }
        })
        .await
        .unwrap();
        assert_eq!(starts, [None, Some("b".to_owned())]);
        assert_eq!(tags.len(), 3);
        assert_eq!(tags["c"], "3");
    }

    #[test]
    fn foreign_resources_are_left_in_place() {
        let owner = Owner::new("analytics", "shop");
        assert_eq!(left_in_place("stream s", &owner.tags(), &owner), None);
        let other = Owner::new("analytics", "other");
        assert!(matches!(
            left_in_place("stream s", &other.tags(), &owner),
            Some(Deletion::Kept(message)) if message.contains("stream s is not tagged by pipeline")
        ));
    }

    #[test]
    fn ownership_decisions() {
        let owner = Owner::new("analytics", "shop");
        assert_eq!(
            check_owner("stream s", &owner.tags(), &owner, false),
            Ok(())
        );
        let untagged = BTreeMap::new();
        assert_eq!(check_owner("stream s", &untagged, &owner, true), Ok(()));
        let error = check_owner("stream s", &untagged, &owner, false).expect_err("conflict");
        assert!(error.to_string().contains("set spec.adoptExisting: true"));
        let foreign = Owner::new("analytics", "other").tags();
        for adopt in [false, true] {
            let error = check_owner("stream s", &foreign, &owner, adopt).expect_err("conflict");
            assert_eq!(
                error.to_string(),
                "stream s is tagged by pipeline analytics/other (clickheatmap.io/pipeline); pipeline analytics/shop does not touch it"
            );
        }
    }
}
