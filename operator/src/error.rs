//! One error type for everything the reconcilers do, classified for the controller.
//!
//! The controller needs three answers from an error, and this module gives each one a single
//! place: *should it retry soon* ([`Error::kind`] / [`Error::is_retryable`]), *what does the
//! condition say* ([`Error::reason`], one of the fixed [`Reason`] strings the Argo CD health check
//! and the docs know), and *which counter goes up* ([`Error::metric_label`]).
//!
//! AWS errors are turned into this type in [`from_sdk`], by error code first and HTTP status
//! second, so that a new SDK version or an emulator with slightly different codes still lands in
//! a sensible class. The SDK error itself is not kept: it is neither `Clone` nor serialisable and
//! the controller only ever needs the operation, the code and the message.

use std::fmt;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use serde::Serialize;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    /// Throttling, 5xx, a resource that is busy or not ready yet: back off and retry.
    Retryable,
    /// A bad spec, a name clash, a missing permission or a missing referenced thing: a person
    /// must act. The controller reports it and retries only slowly (or on a spec change).
    Terminal,
}

/// The `reason` of a status condition. These strings are a contract: the Argo CD health check
/// (`deploy/argocd/health.lua`) treats the first four as terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// The part exists and matches the spec (condition status `True`).
    Ready,
    /// The spec asks for something impossible (terminal).
    InvalidSpec,
    /// A resource of the same name belongs to someone else (terminal).
    Conflict,
    /// The operator's role may not do what it must (terminal).
    AccessDenied,
    /// Something the spec refers to does not exist (terminal).
    NotFound,
    /// AWS throttled the operator; it backs off (non-terminal).
    Throttled,
    /// A transient failure (5xx, network, a running crawl); it retries (non-terminal).
    Retrying,
    /// Resources are being created or changed; the operator checks again soon (non-terminal).
    Provisioning,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Conflict => "Conflict",
            Reason::AccessDenied => "AccessDenied",
            Reason::NotFound => "NotFound",
            Reason::Throttled => "Throttled",
            Reason::Retrying => "Retrying",
            Reason::Provisioning => "Provisioning",
        }
    }

    /// True for the reasons a person must act on.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Reason::InvalidSpec | Reason::Conflict | Reason::AccessDenied | Reason::NotFound
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong while planning, applying or deleting.
///
/// `operation` fields name the AWS call as IAM spells it, e.g. `kinesis:UpdateShardCount`, so a
/// message about a denied call can be pasted into a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The spec cannot be reconciled as written.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A resource of the pipeline's name is owned by another pipeline, or by nobody while
    /// `adoptExisting` is off. It is never modified.
    #[error("{0}")]
    Conflict(String),

    /// AWS refused the operator's credentials the call.
    #[error("{operation} denied: {message}")]
    AccessDenied { operation: String, message: String },

    /// A thing the spec refers to (KMS key, IAM role, code object, …) does not exist.
    #[error("{operation}: not found: {message}")]
    NotFound { operation: String, message: String },

    /// AWS rejected the request's content (validation): usually a value from the spec that AWS
    /// does not accept.
    #[error("{operation} rejected: {message}")]
    Rejected {
        operation: String,
        code: String,
        message: String,
    },

    /// AWS throttled the call or a rate limit (like Kinesis' resharding quota) was reached.
    #[error("{operation} throttled: {message}")]
    Throttled { operation: String, message: String },

    /// The resource is being created, updated or deleted and cannot take this change yet.
    #[error("{resource} is busy: {message}")]
    Busy { resource: String, message: String },

    /// A Glue crawler is crawling; the operator never updates a running crawler.
    #[error("crawler {crawler} is running; its update waits until the crawl has finished")]
    CrawlerRunning { crawler: String },

    /// A server-side failure (5xx) or an error code the operator does not know.
    #[error("{operation} failed: {message}")]
    Service {
        operation: String,
        code: Option<String>,
        status: Option<u16>,
        message: String,
    },

    /// The request did not get an answer: timeout, connection failure, unreadable response.
    #[error("{operation}: {message}")]
    Transport { operation: String, message: String },

    /// A manifest could not be read or parsed (the `plan` command).
    #[error("manifest: {0}")]
    Manifest(String),

    /// A bug in the operator (a request it could not even build). Retried, because a terminal
    /// condition would wrongly blame the spec; the message says what to report.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        if self.reason().is_terminal() {
            ErrorKind::Terminal
        } else {
            ErrorKind::Retryable
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }

    /// The condition reason this error shows as.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidSpec(_) | Error::Rejected { .. } | Error::Manifest(_) => {
                Reason::InvalidSpec
            }
            Error::Conflict(_) => Reason::Conflict,
            Error::AccessDenied { .. } => Reason::AccessDenied,
            Error::NotFound { .. } => Reason::NotFound,
            Error::Throttled { .. } => Reason::Throttled,
            Error::Busy { .. } => Reason::Provisioning,
            Error::CrawlerRunning { .. }
            | Error::Service { .. }
            | Error::Transport { .. }
            | Error::Internal(_) => Reason::Retrying,
        }
    }

    /// A stable, low-cardinality label for an error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Conflict(_) => "conflict",
            Error::AccessDenied { .. } => "access_denied",
            Error::NotFound { .. } => "not_found",
            Error::Rejected { .. } => "rejected",
            Error::Throttled { .. } => "throttled",
            Error::Busy { .. } => "busy",
            Error::CrawlerRunning { .. } => "crawler_running",
            Error::Service { .. } => "service",
            Error::Transport { .. } => "transport",
            Error::Manifest(_) => "manifest",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn internal(what: impl fmt::Display) -> Error {
        Error::Internal(what.to_string())
    }
}

/// Error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSThrottlingException",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
];

/// Error codes that mean "the caller may not".
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "AuthorizationError",
    "KMSAccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
];

/// Error codes that mean "the resource is in a state that does not take this call now".
const BUSY_CODES: &[&str] = &[
    "ResourceInUseException",
    "ConcurrentModificationException",
    "OperationAbortedException",
    "OperationAborted",
    "SchedulerTransitioningException",
    "ResourceNotReadyException",
    "BucketAlreadyOwnedByYou",
];

/// Error codes that mean "something named in the request does not exist".
const NOT_FOUND_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "EntityNotFoundException",
    "NoSuchBucket",
    "NoSuchKey",
    "NotFound",
    "KMSNotFoundException",
    "NoSuchEntity",
];

/// Error codes that mean "the request's content is not acceptable".
const REJECTED_CODES: &[&str] = &[
    "InvalidArgumentException",
    "InvalidArgument",
    "ValidationException",
    "ValidationError",
    "InvalidRequestException",
    "InvalidInputException",
    "InvalidParameterException",
    "InvalidParameterValue",
    "InvalidBucketName",
    "MalformedXML",
    "InvalidApplicationConfigurationException",
    "CodeValidationException",
    "UnsupportedOperationException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSOptInRequired",
    "InvalidLocationConstraint",
    "IllegalLocationConstraintException",
];

/// Turns an SDK error of any service into an [`Error`]. `operation` is the IAM action name,
/// `resource` what the call was about (for the messages).
pub(crate) fn from_sdk<E>(operation: &str, resource: &str, error: SdkError<E, Response>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    match &error {
        SdkError::ConstructionFailure(_) => {
            return Error::Internal(format!(
                "{operation}: could not build the request: {}",
                display_chain(&error)
            ));
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            return Error::Transport {
                operation: operation.to_owned(),
                message: display_chain(&error),
            };
        }
        SdkError::ResponseError(_) => {
            return Error::Transport {
                operation: operation.to_owned(),
                message: format!("unreadable response: {}", display_chain(&error)),
            };
        }
        _ => {}
    }
    let code = error.code().map(str::to_owned);
    let message = error
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| display_chain(&error));
    classify(operation, resource, code, status, message)
}

/// The classification itself, separate from the SDK types so that it is unit-tested.
pub(crate) fn classify(
    operation: &str,
    resource: &str,
    code: Option<String>,
    status: Option<u16>,
    message: String,
) -> Error {
    let operation = operation.to_owned();
    let is = |codes: &[&str]| code.as_deref().is_some_and(|c| codes.contains(&c));
    if code.as_deref() == Some("CrawlerRunningException") {
        return Error::CrawlerRunning {
            crawler: resource.to_owned(),
        };
    }
    if code.as_deref() == Some("BucketAlreadyExists") {
        return Error::Conflict(format!(
            "bucket {resource} already exists in another AWS account: bucket names are global, choose another name"
        ));
    }
    if is(THROTTLING_CODES) || status == Some(429) {
        return Error::Throttled { operation, message };
    }
    if is(ACCESS_DENIED_CODES) || (code.is_none() && status == Some(403)) {
        return Error::AccessDenied { operation, message };
    }
    if is(BUSY_CODES) {
        return Error::Busy {
            resource: resource.to_owned(),
            message: format!("{operation}: {message}"),
        };
    }
    if is(NOT_FOUND_CODES) || (code.is_none() && status == Some(404)) {
        return Error::NotFound { operation, message };
    }
    if is(REJECTED_CODES) {
        return Error::Rejected {
            operation,
            code: code.unwrap_or_default(),
            message,
        };
    }
    Error::Service {
        operation,
        code,
        status,
        message,
    }
}

/// True when an observe call's error means "there is no such resource".
pub(crate) fn is_not_found<E>(error: &SdkError<E, Response>) -> bool
where
    E: ProvideErrorMetadata,
{
    let code = error.code();
    if code.is_some_and(|c| NOT_FOUND_CODES.contains(&c)) {
        return true;
    }
    code.is_none() && error.raw_response().map(|r| r.status().as_u16()) == Some(404)
}

/// The error code of an SDK error, if the service sent one.
pub(crate) fn code_of<E>(error: &SdkError<E, Response>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    error.code()
}

/// An error and its sources on one line (the SDK's top-level Display is often just "service
/// error").
fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: Option<&str>, status: Option<u16>) -> Error {
        classify(
            "kinesis:UpdateShardCount",
            "stream shop-clicks",
            code.map(str::to_owned),
            status,
            "message".to_owned(),
        )
    }

    #[test]
    fn throttling_is_retryable_and_says_throttled() {
        for code in ["ThrottlingException", "LimitExceededException", "SlowDown"] {
            let error = class(Some(code), Some(400));
            assert_eq!(error.reason(), Reason::Throttled, "{code}");
            assert!(error.is_retryable());
            assert_eq!(error.metric_label(), "throttled");
        }
        assert_eq!(class(None, Some(429)).reason(), Reason::Throttled);
    }

    #[test]
    fn server_errors_retry() {
        let error = class(Some("InternalFailure"), Some(500));
        assert_eq!(error.reason(), Reason::Retrying);
        assert_eq!(error.kind(), ErrorKind::Retryable);
        let error = class(None, Some(503));
        assert_eq!(error.reason(), Reason::Retrying);
    }

    #[test]
    fn busy_resources_are_provisioning() {
        let error = class(Some("ResourceInUseException"), Some(400));
        assert_eq!(error.reason(), Reason::Provisioning);
        assert!(error.is_retryable());
    }

    #[test]
    fn running_crawler_is_retryable() {
        let error = class(Some("CrawlerRunningException"), Some(400));
        assert_eq!(
            error,
            Error::CrawlerRunning {
                crawler: "stream shop-clicks".into()
            }
        );
        assert_eq!(error.reason(), Reason::Retrying);
        assert!(error.is_retryable());
    }

    #[test]
    fn terminal_classes() {
        assert_eq!(
            class(Some("AccessDeniedException"), Some(400)).reason(),
            Reason::AccessDenied
        );
        assert_eq!(class(None, Some(403)).reason(), Reason::AccessDenied);
        assert_eq!(
            class(Some("KMSNotFoundException"), Some(400)).reason(),
            Reason::NotFound
        );
        assert_eq!(
            class(Some("InvalidArgumentException"), Some(400)).reason(),
            Reason::InvalidSpec
        );
        assert_eq!(
            class(Some("BucketAlreadyExists"), Some(409)).reason(),
            Reason::Conflict
        );
        for code in [
            "AccessDeniedException",
            "KMSNotFoundException",
            "ValidationException",
        ] {
            assert_eq!(class(Some(code), Some(400)).kind(), ErrorKind::Terminal);
        }
    }

    #[test]
    fn reasons_are_the_documented_strings() {
        let all = [
            Reason::Ready,
            Reason::InvalidSpec,
            Reason::Conflict,
            Reason::AccessDenied,
            Reason::NotFound,
            Reason::Throttled,
            Reason::Retrying,
            Reason::Provisioning,
        ];
        let names: Vec<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "Ready",
                "InvalidSpec",
                "Conflict",
                "AccessDenied",
                "NotFound",
                "Throttled",
                "Retrying",
                "Provisioning"
            ]
        );
        let terminal: Vec<_> = all.iter().filter(|r| r.is_terminal()).collect();
        assert_eq!(terminal.len(), 4);
    }

    #[test]
    fn manifest_and_spec_errors_are_terminal() {
        assert_eq!(Error::InvalidSpec("x".into()).kind(), ErrorKind::Terminal);
        assert_eq!(Error::Manifest("x".into()).kind(), ErrorKind::Terminal);
        assert_eq!(Error::Internal("x".into()).kind(), ErrorKind::Retryable);
    }
}
