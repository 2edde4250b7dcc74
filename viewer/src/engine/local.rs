//! The local engine: SQL on the curated Parquet table, run by an embedded DataFusion over a
//! folder or an `s3://` location.
//!
//! It runs the very statements the Athena engine sends (bound to `$1, $2, ...` instead of `?`),
//! against a table registered under the same `"database"."table"` name with the same `dt` and
//! `hour` partition columns, so the partition predicates prune directories before a file is
//! opened. Raw SQL (when the viewer allows it) runs here too, limited to queries: no DDL, no
//! DML, no statements that change the session, within a memory limit and a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickheatmap_table::location::{Location, LocationError};
use clickheatmap_table::schema::curated_schema;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;

use super::{
    EngineError, HeatmapEngine, HeatmapQuery, HeatmapResult, PageSummary, PagesResult, QueryInfo,
    TableResult, elapsed_ms,
};
use crate::params::QueryRange;
use crate::sql::{self, SqlValue, Statement, TableName};

mod date_add;

/// The catalog name Athena gives the Glue Data Catalog; the local engine uses it too so that
/// fully qualified names written for Athena resolve here.
const CATALOG: &str = "awsdatacatalog";

/// The object store URL the curated table is registered under (any scheme works; this one
/// cannot clash with a real one).
const STORE_URL: &str = "curated://table/";

/// Limits and settings of the local engine.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSettings {
    /// The longest aggregation window in use (partitions are named after the window start).
    pub max_window_ms: i64,
    /// A query still running after this is stopped.
    pub query_timeout: Duration,
    /// Most rows a heatmap or page list may return.
    pub max_rows: usize,
    /// Most rows a raw SQL statement may return.
    pub max_raw_rows: usize,
    /// Memory the engine may use for one query's sorts, joins and aggregations.
    pub memory_limit_bytes: usize,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            max_window_ms: 3_600_000,
            query_timeout: Duration::from_secs(60),
            max_rows: 100_000,
            max_raw_rows: 10_000,
            memory_limit_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalEngineError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("setting up the SQL engine: {0}")]
    Setup(#[from] DataFusionError),
}

/// SQL over `<curated root>/<table>/dt=.../hour=.../*.parquet`.
pub struct LocalEngine {
    context: SessionContext,
    names: TableName,
    settings: LocalSettings,
}

impl LocalEngine {
    /// Opens the curated root (`s3://bucket/prefix`, `file:///dir` or a directory; a missing
    /// directory is created, as the aggregator would) and registers the table in it as
    /// `"database"."table"`, the database being the default schema as in an Athena workgroup.
    pub fn open(
        curated_root: &str,
        names: TableName,
        settings: LocalSettings,
    ) -> Result<LocalEngine, LocalEngineError> {
        let location = Location::open(curated_root)?;
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, names.database.as_str())
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(settings.memory_limit_bytes, 1.0)
            .build_arc()?;
        let context = SessionContext::new_with_config_rt(config, runtime);
        context.register_udf(ScalarUDF::from(date_add::TrinoDateAdd::new()));

        let store_url = url::Url::parse(STORE_URL)
            .map_err(|e| DataFusionError::Configuration(format!("{STORE_URL}: {e}")))?;
        context.register_object_store(&store_url, location.store.clone());
        let mut table_url = store_url;
        table_url.set_path(&format!("/{}/", location.child(names.table.as_str())));
        let table_url = ListingTableUrl::try_new(table_url, None)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("dt".to_owned(), DataType::Utf8),
                ("hour".to_owned(), DataType::Utf8),
            ]);
        let table = ListingTable::try_new(
            ListingTableConfig::new(table_url)
                .with_listing_options(options)
                // The aggregator's own schema: the partition columns come from the directories.
                .with_schema(curated_schema()),
        )?;
        context.register_table(names.table.as_str(), Arc::new(table))?;
        Ok(LocalEngine {
            context,
            names,
            settings,
        })
    }

    /// Plans and runs one read-only statement; at most `max_rows` rows come back.
    async fn run(
        &self,
        sql_text: &str,
        values: &[SqlValue],
        max_rows: usize,
    ) -> Result<Output, EngineError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let work = async {
            let mut frame = self
                .context
                .sql_with_options(sql_text, options)
                .await
                .map_err(rejected)?;
            if !values.is_empty() {
                let bound: Vec<ScalarValue> = values
                    .iter()
                    .map(|value| match value {
                        SqlValue::Text(text) => ScalarValue::Utf8(Some(text.clone())),
                        SqlValue::Integer(number) => ScalarValue::Int64(Some(*number)),
                    })
                    .collect();
                frame = frame.with_param_values(bound).map_err(rejected)?;
            }
            // Physical planning lists the table's files: a storage failure is the engine's.
            let plan = frame.create_physical_plan().await.map_err(engine_failure)?;
            let files = files_scanned(plan.as_ref());
            let schema = plan.schema();
            let mut stream =
                execute_stream(plan, self.context.task_ctx()).map_err(engine_failure)?;
            let mut batches = Vec::new();
            let mut rows = 0_usize;
            while let Some(batch) = stream.try_next().await.map_err(engine_failure)? {
                rows += batch.num_rows();
                if rows > max_rows {
                    return Err(EngineError::TooManyRows { limit: max_rows });
                }
                batches.push(batch);
            }
            Ok(Output {
                schema,
                batches,
                rows,
                files,
            })
        };
        // Dropping the stream on timeout stops every task the query spawned.
        tokio::time::timeout(self.settings.query_timeout, work)
            .await
            .map_err(|_| EngineError::Timeout {
                seconds: self.settings.query_timeout.as_secs(),
                execution_id: "local".to_owned(),
            })?
    }

    /// Runs one of the viewer's own statements and describes it for the query box.
    async fn run_statement(
        &self,
        statement: &Statement,
    ) -> Result<(Vec<RecordBatch>, QueryInfo), EngineError> {
        let started = Instant::now();
        let numbered = statement.numbered_sql();
        let Output {
            batches,
            rows,
            files,
            ..
        } = self
            .run(&numbered, &statement.values, self.settings.max_rows)
            .await?;
        tracing::debug!(rows, files, "local query finished");
        let info = QueryInfo {
            engine: "local",
            sql: numbered,
            parameters: statement.literals(),
            elapsed_ms: elapsed_ms(started),
            rows,
            execution_id: None,
            scanned_bytes: None,
            files_read: Some(files),
        };
        Ok((batches, info))
    }
}

/// What a statement returned.
struct Output {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Files the scans opened (after partition pruning).
    files: usize,
}

/// A statement DataFusion could not plan: the user's (or, for the viewer's own statements, a
/// table that does not match the curated schema).
fn rejected(error: DataFusionError) -> EngineError {
    EngineError::InvalidSql(error.strip_backtrace().to_string())
}

/// A failure while the query ran: the statement's own (a bad argument, an overflow) or the
/// engine's (reading files, memory).
fn engine_failure(error: DataFusionError) -> EngineError {
    match error.find_root() {
        DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_) => rejected(error),
        DataFusionError::ResourcesExhausted(reason) => EngineError::Local(format!(
            "the query needs more memory than the engine may use ({reason})"
        )),
        _ => EngineError::Local(error.strip_backtrace().to_string()),
    }
}

/// How many files the plan's scans will open (after partition pruning).
fn files_scanned(plan: &dyn ExecutionPlan) -> usize {
    let own = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        .map_or(0, |scan| {
            scan.file_groups.iter().map(|group| group.len()).sum()
        });
    own + plan
        .children()
        .into_iter()
        .map(|child| files_scanned(child.as_ref()))
        .sum::<usize>()
}

/// A result column as `T`, cast if the engine chose another representation (e.g. string views).
fn column_as(batch: &RecordBatch, index: usize, to: &DataType) -> Result<ArrayRef, EngineError> {
    let column = batch
        .columns()
        .get(index)
        .ok_or_else(|| EngineError::BadResult(format!("no column {index}")))?;
    cast(column, to).map_err(|e| EngineError::BadResult(format!("column {index}: {e}")))
}

impl HeatmapEngine for LocalEngine {
    fn name(&self) -> &'static str {
        "local"
    }

    fn pages(&self, range: QueryRange) -> BoxFuture<'_, Result<PagesResult, EngineError>> {
        Box::pin(async move {
            let statement = sql::pages(&self.names, &range, self.settings.max_window_ms);
            let (batches, query) = self.run_statement(&statement).await?;
            let mut pages = Vec::with_capacity(query.rows);
            for batch in &batches {
                let ids = column_as(batch, 0, &DataType::Utf8)?;
                let clicks = column_as(batch, 1, &DataType::Int64)?;
                let (ids, clicks) = (ids.as_string::<i32>(), clicks.as_primitive::<Int64Type>());
                for row in 0..batch.num_rows() {
                    if ids.is_null(row) {
                        return Err(EngineError::BadResult("page_id is NULL".into()));
                    }
                    pages.push(PageSummary {
                        page_id: ids.value(row).to_owned(),
                        clicks: clicks.value(row),
                    });
                }
            }
            Ok(PagesResult { pages, query })
        })
    }

    fn heatmap<'a>(
        &'a self,
        query: &'a HeatmapQuery,
    ) -> BoxFuture<'a, Result<HeatmapResult, EngineError>> {
        Box::pin(async move {
            let statement = sql::heatmap(
                &self.names,
                &query.page,
                &query.range,
                self.settings.max_window_ms,
            );
            let (batches, info) = self.run_statement(&statement).await?;
            let mut cells = Vec::with_capacity(info.rows);
            for batch in &batches {
                let xs = column_as(batch, 0, &DataType::Int32)?;
                let ys = column_as(batch, 1, &DataType::Int32)?;
                let clicks = column_as(batch, 2, &DataType::Int64)?;
                let (xs, ys) = (
                    xs.as_primitive::<Int32Type>(),
                    ys.as_primitive::<Int32Type>(),
                );
                let clicks = clicks.as_primitive::<Int64Type>();
                for row in 0..batch.num_rows() {
                    cells.push((xs.value(row), ys.value(row), clicks.value(row)));
                }
            }
            Ok(HeatmapResult { cells, query: info })
        })
    }

    fn supports_raw_sql(&self) -> bool {
        true
    }

    fn raw_sql<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<TableResult, EngineError>> {
        Box::pin(async move {
            let started = Instant::now();
            let Output {
                schema,
                batches,
                rows,
                files,
            } = self.run(sql, &[], self.settings.max_raw_rows).await?;
            let columns = schema
                .fields()
                .iter()
                .map(|field| field.name().clone())
                .collect();
            let mut table = Vec::with_capacity(rows);
            let options = FormatOptions::default();
            for batch in &batches {
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| EngineError::BadResult(e.to_string()))?;
                for row in 0..batch.num_rows() {
                    table.push(
                        batch
                            .columns()
                            .iter()
                            .zip(&formatters)
                            .map(|(column, formatter)| {
                                (!column.is_null(row)).then(|| formatter.value(row).to_string())
                            })
                            .collect(),
                    );
                }
            }
            Ok(TableResult {
                columns,
                rows: table,
                query: QueryInfo {
                    engine: "local",
                    sql: sql.to_owned(),
                    parameters: Vec::new(),
                    elapsed_ms: elapsed_ms(started),
                    rows,
                    execution_id: None,
                    scanned_bytes: None,
                    files_read: Some(files),
                },
            })
        })
    }
}
