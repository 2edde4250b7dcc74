//! The live endpoint: `GET /v1/live?page=<id>` answers the counts of windows the aggregator holds
//! and has not written yet, so that a viewer can add them to the curated table and show a click
//! within a couple of seconds instead of a window length later.
//!
//! ```json
//! {"columns":20,"rows":20,"cells":[[3,4,12],[0,0,1]],"watermark_ms":1766919060000}
//! ```
//!
//! Each shard's reader publishes its open cells to a [`LiveBoard`] right after a flush, so cells of
//! a window that was just written leave the board at the same time as they land in the table, and
//! otherwise at most twice a second. The answer
//! sums the shards this replica reads; a viewer sums the answers of every replica.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregator;

/// What one shard (or, in local mode, the one log) holds open.
#[derive(Debug, Default)]
struct PartitionCells {
    pages: FxHashMap<Arc<str>, Vec<(u16, u16, i64)>>,
    watermark_ms: Option<i64>,
}

/// The open cells of every shard this process reads.
#[derive(Debug)]
pub struct LiveBoard {
    columns: u16,
    rows: u16,
    partitions: Mutex<BTreeMap<String, PartitionCells>>,
}

/// The answer for one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveView {
    pub columns: u16,
    pub rows: u16,
    /// `[grid_x, grid_y, clicks]`, sorted by row, then column.
    pub cells: Vec<(u16, u16, i64)>,
    /// The lowest watermark of the shards: windows ending after it are still open.
    pub watermark_ms: Option<i64>,
}

impl LiveBoard {
    pub fn new(columns: u16, rows: u16) -> Arc<LiveBoard> {
        Arc::new(LiveBoard {
            columns,
            rows,
            partitions: Mutex::new(BTreeMap::new()),
        })
    }

    fn partitions(&self) -> MutexGuard<'_, BTreeMap<String, PartitionCells>> {
        // The map is replaced whole per shard, so a panic elsewhere cannot leave it half-written.
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces what `partition` (a shard id) holds open with the aggregator's current state.
    pub fn publish(&self, partition: &str, aggregator: &Aggregator) {
        let cells = PartitionCells {
            pages: aggregator.all_live_cells().into_iter().collect(),
            watermark_ms: aggregator.watermark(),
        };
        self.partitions().insert(partition.to_owned(), cells);
    }

    /// Forgets a shard this process no longer reads (finished, stopped or handed over).
    pub fn remove(&self, partition: &str) {
        self.partitions().remove(partition);
    }

    /// The open counts of `page`, summed over every shard.
    pub fn view(&self, page: &str) -> LiveView {
        let partitions = self.partitions();
        let mut cells: FxHashMap<(u16, u16), i64> = FxHashMap::default();
        let mut watermark_ms: Option<i64> = None;
        for partition in partitions.values() {
            if let Some(watermark) = partition.watermark_ms {
                watermark_ms = Some(watermark_ms.map_or(watermark, |w| w.min(watermark)));
            }
            for &(x, y, clicks) in partition.pages.get(page).into_iter().flatten() {
                *cells.entry((x, y)).or_insert(0) += clicks;
            }
        }
        let mut cells: Vec<(u16, u16, i64)> = cells
            .into_iter()
            .map(|((x, y), clicks)| (x, y, clicks))
            .collect();
        cells.sort_unstable_by_key(|&(x, y, _)| (y, x));
        LiveView {
            columns: self.columns,
            rows: self.rows,
            cells,
            watermark_ms,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct LiveParams {
    page: Option<String>,
}

/// `GET /v1/live?page=<id>`.
pub fn router(board: Arc<LiveBoard>) -> Router {
    Router::new().route("/v1/live", get(live)).with_state(board)
}

async fn live(State(board): State<Arc<LiveBoard>>, Query(params): Query<LiveParams>) -> Response {
    match params.page.as_deref() {
        Some(page) if !page.is_empty() => Json(board.view(page)).into_response(),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "give the page: /v1/live?page=<id>" })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickheatmap_crds::AggregatorConfig;

    fn aggregator() -> Aggregator {
        Aggregator::new(&AggregatorConfig::default(), false)
    }

    fn click(page: &str, x: f64, time: i64) -> String {
        format!(
            r#"{{"event_type":"click","page_id":"{page}","x":{x},"y":1,"viewport_width":100,"viewport_height":100,"event_time_ms":{time}}}"#
        )
    }

    #[test]
    fn shards_are_summed_and_replaced_and_removed() {
        let board = LiveBoard::new(20, 20);
        let mut first = aggregator();
        first.process_record(0, click("p", 1.0, 1_000).as_bytes());
        first.process_record(0, click("p", 99.0, 1_000).as_bytes());
        first.process_record(0, click("q", 1.0, 1_000).as_bytes());
        let mut second = aggregator();
        second.process_record(0, click("p", 1.0, 61_000).as_bytes());
        board.publish("shard-1", &first);
        board.publish("shard-2", &second);

        let view = board.view("p");
        assert_eq!((view.columns, view.rows), (20, 20));
        assert_eq!(view.cells, vec![(0, 0, 2), (19, 0, 1)]);
        assert_eq!(view.watermark_ms, first.watermark().min(second.watermark()));
        assert_eq!(board.view("q").cells, vec![(0, 0, 1)]);
        assert!(board.view("nobody").cells.is_empty());

        // A newer state of a shard replaces the old one; a removed shard no longer counts.
        second.process_record(0, click("p", 1.0, 61_500).as_bytes());
        board.publish("shard-2", &second);
        assert_eq!(board.view("p").cells, vec![(0, 0, 3), (19, 0, 1)]);
        board.remove("shard-1");
        assert_eq!(board.view("p").cells, vec![(0, 0, 2)]);
        assert!(board.view("q").cells.is_empty());
    }

    #[tokio::test]
    async fn the_endpoint_needs_a_page() {
        let board = LiveBoard::new(20, 20);
        let mut aggregator = aggregator();
        aggregator.process_record(0, click("p", 1.0, 1_000).as_bytes());
        board.publish("s", &aggregator);
        let ask = |page: Option<&str>| {
            live(
                State(board.clone()),
                Query(LiveParams {
                    page: page.map(str::to_owned),
                }),
            )
        };
        let response = ask(Some("p")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(view["cells"], serde_json::json!([[0, 0, 1]]));
        assert_eq!(view["columns"], 20);
        for page in [None, Some("")] {
            assert_eq!(ask(page).await.status(), StatusCode::BAD_REQUEST);
        }
    }
}
