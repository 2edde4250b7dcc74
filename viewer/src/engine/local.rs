//! The local engine: the curated Parquet table read directly with
//! [`clickheatmap_aggregator::query`], from a folder or an `s3://` location.
//!
//! It takes typed parameters, never SQL; the SQL in its [`QueryInfo`] is the equivalent query,
//! shown for transparency. Partitions outside the time range are not opened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use clickheatmap_aggregator::location::{Location, LocationError};
use clickheatmap_aggregator::query::{Heatmaps, list_files, read_file};
use futures_util::future::BoxFuture;
use object_store::ObjectStore;
use object_store::path::Path;

use super::{
    EngineError, HeatmapEngine, HeatmapQuery, HeatmapResult, PageSummary, PagesResult, QueryInfo,
    elapsed_ms,
};
use crate::params::QueryRange;
use crate::sql::{self, MAX_PAGES, TableName};

/// Reads `<curated root>/<table>/dt=.../hour=.../*.parquet`.
pub struct LocalEngine {
    store: Arc<dyn ObjectStore>,
    table_path: Path,
    names: TableName,
}

impl LocalEngine {
    /// Opens the curated root (`s3://bucket/prefix`, `file:///dir` or a directory; a missing
    /// directory is created, as the aggregator would) and names the table in it.
    pub fn open(curated_root: &str, names: TableName) -> Result<LocalEngine, LocationError> {
        let location = Location::open(curated_root)?;
        let table_path = location.child(names.table.as_str());
        Ok(LocalEngine {
            store: location.store,
            table_path,
            names,
        })
    }

    /// Every row of the table whose window ends in the range, and how many files were read.
    async fn rows(
        &self,
        range: &QueryRange,
    ) -> Result<(Vec<clickheatmap_aggregator::query::CuratedRow>, usize), EngineError> {
        let range = range.time_range();
        let files = list_files(&self.store, &self.table_path, &range).await?;
        let mut rows = Vec::new();
        for file in &files {
            rows.extend(
                read_file(&self.store, &file.path)
                    .await?
                    .into_iter()
                    .filter(|row| range.contains(row.window_end)),
            );
        }
        Ok((rows, files.len()))
    }
}

impl HeatmapEngine for LocalEngine {
    fn name(&self) -> &'static str {
        "local"
    }

    fn pages(&self, range: QueryRange) -> BoxFuture<'_, Result<PagesResult, EngineError>> {
        Box::pin(async move {
            let started = Instant::now();
            let (rows, files) = self.rows(&range).await?;
            let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
            for row in &rows {
                let total = totals.entry(row.page_id.as_str()).or_insert(0);
                *total = total.saturating_add(row.clicks);
            }
            let mut pages: Vec<PageSummary> = totals
                .into_iter()
                .map(|(page_id, clicks)| PageSummary {
                    page_id: page_id.to_owned(),
                    clicks,
                })
                .collect();
            pages.sort_by(|a, b| b.clicks.cmp(&a.clicks).then(a.page_id.cmp(&b.page_id)));
            pages.truncate(MAX_PAGES);
            let query = QueryInfo {
                engine: "local",
                sql: sql::local_pages(&self.names, &range),
                parameters: Vec::new(),
                elapsed_ms: elapsed_ms(started),
                rows: pages.len(),
                execution_id: None,
                scanned_bytes: None,
                files_read: Some(files),
            };
            Ok(PagesResult { pages, query })
        })
    }

    fn heatmap<'a>(
        &'a self,
        query: &'a HeatmapQuery,
    ) -> BoxFuture<'a, Result<HeatmapResult, EngineError>> {
        Box::pin(async move {
            let started = Instant::now();
            let (rows, files) = self.rows(&query.range).await?;
            let page = query.page.as_str();
            let heatmaps = Heatmaps::from_rows(rows.iter().filter(|row| row.page_id == page));
            let cells: Vec<(i32, i32, i64)> = heatmaps
                .ranked(page)
                .into_iter()
                .map(|((x, y), clicks)| (x, y, clicks))
                .collect();
            let info = QueryInfo {
                engine: "local",
                sql: sql::local_heatmap(&self.names, &query.page, &query.range),
                parameters: Vec::new(),
                elapsed_ms: elapsed_ms(started),
                rows: cells.len(),
                execution_id: None,
                scanned_bytes: None,
                files_read: Some(files),
            };
            Ok(HeatmapResult { cells, query: info })
        })
    }
}
