//! Query engines: where the viewer gets `SUM(clicks)` per cell from.
//!
//! [`HeatmapEngine`] is the one interface the HTTP layer uses. Both engines run the same SQL
//! over the same files: [`local::LocalEngine`] with an embedded DataFusion over the curated
//! Parquet table (a local folder or `s3://`), [`athena::AthenaEngine`] on Athena against the
//! Glue table.

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::params::{PageId, QueryRange};

#[cfg(feature = "athena")]
pub mod athena;
pub mod local;

/// What ran, for the "query" box under the heatmap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryInfo {
    /// `local` or `athena`.
    pub engine: &'static str,
    /// The SQL text that ran.
    pub sql: String,
    /// Values of the placeholders (`?` on Athena, `$1, $2, ...` locally), in order, as SQL
    /// literals.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// Wall time of the whole query, including polling and paging.
    pub elapsed_ms: u64,
    /// Result rows (header excluded).
    pub rows: usize,
    /// Athena's query execution id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Bytes Athena scanned (what it bills by).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned_bytes: Option<i64>,
    /// Curated files the local engine read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_read: Option<usize>,
}

/// One page's heatmap query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeatmapQuery {
    pub page: PageId,
    pub range: QueryRange,
}

/// `SUM(clicks)` per cell, busiest first, as the demo query orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeatmapResult {
    /// `(grid_x, grid_y, clicks)`.
    pub cells: Vec<(i32, i32, i64)>,
    pub query: QueryInfo,
}

/// A page and its clicks in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageSummary {
    pub page_id: String,
    pub clicks: i64,
}

/// The pages with clicks in a range, busiest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesResult {
    pub pages: Vec<PageSummary>,
    pub query: QueryInfo,
}

/// The result of a raw SQL statement: column names and rows of text values (`None` is NULL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub query: QueryInfo,
}

/// Why a query produced no result.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "the query did not finish within {seconds} s and was stopped (execution {execution_id})"
    )]
    Timeout { seconds: u64, execution_id: String },
    #[error("the query failed (execution {execution_id}): {reason}")]
    Failed {
        execution_id: String,
        reason: String,
    },
    #[error("the query was cancelled (execution {execution_id})")]
    Cancelled { execution_id: String },
    #[error("Athena: {0}")]
    Athena(String),
    #[error("unexpected query result: {0}")]
    BadResult(String),
    #[error("the result has more than {limit} rows; narrow the query")]
    TooManyRows { limit: usize },
    #[error("the local engine: {0}")]
    Local(String),
    #[error("the statement cannot run: {0}")]
    InvalidSql(String),
}

/// A source of heatmap data. Futures are boxed so the HTTP layer can hold any engine as
/// `Arc<dyn HeatmapEngine>`; dropping a future cancels the query (the Athena engine then stops
/// the execution it started).
pub trait HeatmapEngine: Send + Sync + 'static {
    /// `local` or `athena`.
    fn name(&self) -> &'static str;

    /// Pages with clicks in the range, busiest first.
    fn pages(&self, range: QueryRange) -> BoxFuture<'_, Result<PagesResult, EngineError>>;

    /// `SUM(clicks)` per cell of one page in the range.
    fn heatmap<'a>(
        &'a self,
        query: &'a HeatmapQuery,
    ) -> BoxFuture<'a, Result<HeatmapResult, EngineError>>;

    /// Whether [`HeatmapEngine::raw_sql`] can run anything.
    fn supports_raw_sql(&self) -> bool {
        false
    }

    /// Runs a user's SQL statement (only reachable with `--allow-raw-sql`).
    fn raw_sql<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<TableResult, EngineError>> {
        let _ = sql;
        Box::pin(async move {
            Err(EngineError::Unsupported(format!(
                "the {} engine runs parameterised queries only",
                self.name()
            )))
        })
    }
}

/// Milliseconds since `started`, saturating.
pub(crate) fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
