//! Reading curated data back with the semantics of the demo's Athena query:
//!
//! ```sql
//! SELECT grid_x, grid_y, SUM(clicks) AS clicks FROM curated_heatmap
//! WHERE from_unixtime(window_end / 1000) >= <from> GROUP BY 1, 2 ORDER BY clicks DESC;
//! ```
//!
//! Partitions (`dt=/hour=`) outside the time range are never opened. This is the local query
//! engine; the viewer's Athena engine runs the same query against Glue.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub use clickheatmap_table::schema::TimeRange;
use clickheatmap_table::schema::partition_hour;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("listing {prefix}: {source}")]
    List {
        prefix: String,
        #[source]
        source: object_store::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("decoding {path}: {source}")]
    Decode {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {problem}")]
    Schema { path: String, problem: String },
}

/// One curated row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CuratedRow {
    pub page_id: String,
    pub grid_x: i32,
    pub grid_y: i32,
    pub window_start: i64,
    pub window_end: i64,
    pub clicks: i64,
}

/// A curated file and the hour its partition covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CuratedFile {
    pub path: Path,
    pub hour_start_ms: i64,
}

/// The curated files of a table in the time range, in path order.
pub async fn list_files(
    store: &Arc<dyn ObjectStore>,
    table: &Path,
    range: &TimeRange,
) -> Result<Vec<CuratedFile>, QueryError> {
    let mut files: Vec<CuratedFile> = store
        .list(Some(table))
        .map_err(|source| QueryError::List {
            prefix: table.to_string(),
            source,
        })
        .try_filter_map(|meta| {
            let file = (meta.location.extension() == Some("parquet"))
                .then(|| partition_hour(&meta.location))
                .flatten()
                .filter(|hour| range.may_match_hour(*hour))
                .map(|hour_start_ms| CuratedFile {
                    path: meta.location,
                    hour_start_ms,
                });
            async move { Ok(file) }
        })
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Reads every row of one curated file, checking its schema.
pub async fn read_file(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Vec<CuratedRow>, QueryError> {
    let bytes = store
        .get(path)
        .await
        .map_err(|source| QueryError::Read {
            path: path.to_string(),
            source,
        })?
        .bytes()
        .await
        .map_err(|source| QueryError::Read {
            path: path.to_string(),
            source,
        })?;
    let decode = |source| QueryError::Decode {
        path: path.to_string(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(decode)?
        .build()
        .map_err(decode)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| QueryError::Decode {
            path: path.to_string(),
            source: source.into(),
        })?;
        let schema_problem = |problem: String| QueryError::Schema {
            path: path.to_string(),
            problem,
        };
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| schema_problem(format!("missing column {name}")))
        };
        let page_ids = column("page_id")?
            .as_string_opt::<i32>()
            .ok_or_else(|| schema_problem("page_id is not a string".into()))?;
        let int32 = |name: &str| {
            column(name)?
                .as_primitive_opt::<Int32Type>()
                .cloned()
                .ok_or_else(|| schema_problem(format!("{name} is not int32")))
        };
        let int64 = |name: &str| {
            column(name)?
                .as_primitive_opt::<Int64Type>()
                .cloned()
                .ok_or_else(|| schema_problem(format!("{name} is not int64")))
        };
        let (grid_x, grid_y) = (int32("grid_x")?, int32("grid_y")?);
        let (starts, ends, clicks) = (
            int64("window_start")?,
            int64("window_end")?,
            int64("clicks")?,
        );
        for row in 0..batch.num_rows() {
            rows.push(CuratedRow {
                page_id: page_ids.value(row).to_owned(),
                grid_x: grid_x.value(row),
                grid_y: grid_y.value(row),
                window_start: starts.value(row),
                window_end: ends.value(row),
                clicks: clicks.value(row),
            });
        }
    }
    Ok(rows)
}

/// Every row of the table whose window ends in the range.
pub async fn read_rows(
    store: &Arc<dyn ObjectStore>,
    table: &Path,
    range: &TimeRange,
) -> Result<Vec<CuratedRow>, QueryError> {
    let mut rows = Vec::new();
    for file in list_files(store, table, range).await? {
        rows.extend(
            read_file(store, &file.path)
                .await?
                .into_iter()
                .filter(|row| range.contains(row.window_end)),
        );
    }
    Ok(rows)
}

/// `SUM(clicks)` per page and cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heatmaps {
    pub cells: BTreeMap<String, BTreeMap<(i32, i32), i64>>,
}

impl Heatmaps {
    pub fn from_rows<'r>(rows: impl IntoIterator<Item = &'r CuratedRow>) -> Self {
        let mut heatmaps = Heatmaps::default();
        for row in rows {
            *heatmaps
                .cells
                .entry(row.page_id.clone())
                .or_default()
                .entry((row.grid_x, row.grid_y))
                .or_insert(0) += row.clicks;
        }
        heatmaps
    }

    pub fn total(&self, page_id: &str) -> i64 {
        self.cells
            .get(page_id)
            .map_or(0, |cells| cells.values().sum())
    }

    /// The page's grid as row-major counts (cells outside the grid are ignored).
    pub fn grid_counts(&self, page_id: &str, columns: u16, rows: u16) -> Vec<u64> {
        let mut counts = vec![0u64; usize::from(columns) * usize::from(rows)];
        if let Some(cells) = self.cells.get(page_id) {
            for (&(x, y), &clicks) in cells {
                if (0..i32::from(columns)).contains(&x) && (0..i32::from(rows)).contains(&y) {
                    let index = y as usize * usize::from(columns) + x as usize;
                    counts[index] += u64::try_from(clicks).unwrap_or(0);
                }
            }
        }
        counts
    }

    /// The demo query's result for one page: cells by clicks, highest first.
    pub fn ranked(&self, page_id: &str) -> Vec<((i32, i32), i64)> {
        let mut ranked: Vec<_> = self
            .cells
            .get(page_id)
            .map(|cells| {
                cells
                    .iter()
                    .map(|(cell, clicks)| (*cell, *clicks))
                    .collect()
            })
            .unwrap_or_default();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
    }
}
