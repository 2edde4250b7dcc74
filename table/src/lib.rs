//! The curated click table as a contract between its writer (the aggregator) and its readers
//! (the viewer's local engine, the aggregator's `query`): [`schema`] holds the Arrow schema, the
//! `dt=/hour=` partitions and time ranges, and [`location`] turns a configured location (a
//! directory, `file://` or `s3://`) into an object store.

pub mod location;
pub mod schema;
