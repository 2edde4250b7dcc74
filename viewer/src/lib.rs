//! The clickheatmap viewer: a small web app for product and UX people to see where visitors
//! click.
//!
//! Pick a page and a time range (the last 15 minutes, hour, 6 hours, day, or any range up to 31
//! days) and the viewer draws the page's heatmap in the browser — Gaussian splats per grid
//! cell, summed and normalised, on the same inferno-like scale as
//! [`clickheatmap_render`] — optionally over a screenshot of the page. Under the
//! picture it shows the query that produced it. "Download PNG" fetches the same query rendered
//! on the server.
//!
//! Modules:
//!
//! * [`server`] — the axum app: the single-page UI (embedded, no build step), the JSON API, the
//!   PNG endpoint, the live proxy, secure headers.
//! * [`engine`] — where the numbers come from, behind [`engine::HeatmapEngine`]: the
//!   [`engine::local`] engine reads the curated Parquet table directly (local mode, or
//!   `s3://`), the [`engine::athena`] engine runs parameterised SQL on Athena with partition
//!   predicates, a timeout and cancellation.
//! * [`live`] — the aggregator's still-open windows, polled by the UI in live mode so a click
//!   shows within two seconds.
//! * [`params`] and [`sql`] — validation of everything a request carries, and the SQL texts.
//! * [`config`] — flags and environment.

#[cfg(feature = "athena")]
pub mod config;
pub mod engine;
pub mod live;
pub mod params;
pub mod server;
pub mod sql;
