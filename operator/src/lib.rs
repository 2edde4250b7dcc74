//! The clickheatmap operator's AWS side, as a library.
//!
//! One `ClickHeatmapPipeline` custom resource becomes S3 buckets, a Kinesis stream, a Firehose
//! raw archive, a Glue catalog, an Athena workgroup and optionally a Managed Flink application.
//! This crate holds everything that talks to AWS, so that the Kubernetes controller on top of it
//! stays a thin loop: read the resource, call [`pipeline::apply_pipeline`] (or
//! [`pipeline::delete_pipeline`] behind the finalizer), write the returned conditions and
//! resources into the status, requeue.
//!
//! * [`aws`] — one module per service, each `desired` (pure) / `observe` / `diff` (pure) /
//!   `apply` / `delete`, and [`aws::AwsClients`].
//! * [`pipeline`] — the whole pipeline in reconcile order: plan, apply, delete, outcomes.
//! * [`names`] — names, ARNs and ownership tags, derived in one place.
//! * [`error`] — the error type and its classification (retryable or terminal, condition
//!   reason, metric label).
//! * [`manifest`] — reading manifests for the `plan` command.
//! * [`controller`] — the Kubernetes controller (`run`): finalizer, aggregator workload,
//!   status, leader election, metrics.
//! * [`dataplane`] — the data plane's health (`status.dataPlane`, `DataFlowing`, `Fresh`) from
//!   the aggregator's progress reports.
//! * [`cli`] — the `clickheatmap-operator` command line.
//!
//! Every AWS resource is tagged `clickheatmap.io/pipeline=<namespace>/<name>` and
//! `clickheatmap.io/managed-by=clickheatmap-operator`. A resource tagged by another pipeline is
//! never modified (terminal `Conflict`); an untagged one is adopted only with
//! `spec.adoptExisting: true`. The operator never creates IAM roles: the spec names them.

pub mod aws;
pub mod cli;
pub mod controller;
pub mod dataplane;
pub mod error;
pub mod manifest;
pub mod names;
pub mod pipeline;

#[cfg(test)]
mod testing;

pub use aws::{AwsClients, CallCounter, Change, ClientOptions, Service};
pub use error::{Error, ErrorKind, Reason};
pub use names::{Account, Names, Owner};
pub use pipeline::{
    DeleteOutcome, PartOutcome, PipelineOutcome, PipelinePlan, apply_pipeline, delete_pipeline,
    plan_pipeline,
};
