//! The clickheatmap data plane.
//!
//! Modules follow the data: [`event`] parses click records, [`grid`] maps clicks onto the
//! heatmap grid, [`window`] counts them in event-time tumbling windows, [`aggregate`] ties those
//! together (and counts rejections), [`sink`] writes windows as curated Parquet, and
//! [`pipeline`] drives it all from files or stdin. [`consumer`] is the production driver: every
//! shard of a Kinesis stream ([`kinesis`], its GetRecords responses decoded by `get_records`) with its own windows and [`checkpoint`], observable
//! through [`metrics`] and [`server`]. [`query`] reads the curated data back the way
//! the demo's Athena query does, [`backfill`] rebuilds windows from the raw [`archive`], [`render`] draws heatmaps, and [`synth`] makes realistic
//! synthetic clicks for demos, tests and benchmarks.

pub mod aggregate;
pub mod archive;
pub mod backfill;
pub mod budget;
pub mod checkpoint;
pub mod compression;
#[cfg(feature = "kinesis")]
pub mod consumer;
#[cfg(feature = "kinesis")]
mod get_records;
#[cfg(feature = "kinesis")]
pub mod kinesis;
#[cfg(feature = "kinesis")]
pub mod lease;
pub mod live;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod query;
pub mod server;
pub mod sink;
pub mod synth;
pub mod window;

// The shared event model, the curated table's locations and the renderer, under the paths they
// always had here.
pub use clickheatmap_model::{event, grid, time};
pub use clickheatmap_render as render;
pub use clickheatmap_table::location;
