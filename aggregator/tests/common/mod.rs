//! What the aggregator's integration tests share: the curated table summed the way the tests
//! compare it with their input.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use clickheatmap_aggregator::query::{TimeRange, read_rows};
use object_store::ObjectStore;
use object_store::path::Path;

/// SUM(clicks) per (page, window start, grid_x, grid_y).
pub type Sums = BTreeMap<(String, i64, i32, i32), i64>;

/// The table at `table` in `store`, summed; empty while nothing can be read yet (the tests poll
/// until it equals their input).
pub async fn curated_sums(store: &Arc<dyn ObjectStore>, table: &str) -> Sums {
    let rows = read_rows(store, &Path::from(table), &TimeRange::default())
        .await
        .unwrap_or_default();
    let mut sums = Sums::new();
    for row in rows {
        *sums
            .entry((row.page_id, row.window_start, row.grid_x, row.grid_y))
            .or_insert(0) += row.clicks;
    }
    sums
}
