//! The click event model shared by the collector, the aggregator and the viewer.
//!
//! [`event`] parses click records (the original demo's JSON) within byte limits and sorts every
//! rejection by reason, [`grid`] maps a click onto the heatmap grid, and [`time`] does the
//! event-time arithmetic of windows and partitions (UTC civil dates without a time-zone
//! database). The contracts they implement are in docs/ARCHITECTURE.md.

pub mod event;
pub mod grid;
pub mod time;
