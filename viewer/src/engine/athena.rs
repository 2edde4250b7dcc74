//! The Athena engine: parameterised SQL on the Glue table over the curated bucket.
//!
//! A query is `StartQueryExecution` in the configured workgroup, `GetQueryExecution` polled
//! with backoff until it finishes or the timeout passes, then `GetQueryResults` page by page
//! (the first row of the first page is Athena's header row and is skipped). Values travel as
//! `ExecutionParameters`, never as SQL text, and every query carries `dt`/`hour` partition
//! predicates derived from the time range so the scan stays bounded.
//!
//! Queries are stopped, not abandoned: on timeout the engine calls `StopQueryExecution`, and if
//! the future is dropped while the execution runs (the browser went away, the server shuts
//! down) a guard spawns `StopQueryExecution` for it.
//!
//! The AWS calls sit behind [`AthenaClient`], implemented by [`SdkAthenaClient`] (the AWS SDK)
//! and by fakes in tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_athena::error::DisplayErrorContext;
use aws_sdk_athena::types::{QueryExecutionContext, QueryExecutionState, ResultConfiguration};
use futures_util::future::BoxFuture;
use tokio::time::{sleep_until, timeout, timeout_at};

use super::{
    EngineError, HeatmapEngine, HeatmapQuery, HeatmapResult, PageSummary, PagesResult, QueryInfo,
    TableResult, elapsed_ms,
};
use crate::params::QueryRange;
use crate::sql::{self, Statement, TableName};

/// Rows asked for per `GetQueryResults` call (Athena's maximum).
pub const RESULT_PAGE_SIZE: i32 = 1000;

/// How long a `StopQueryExecution` may take before the engine gives up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call to Athena.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct AthenaCallError {
    pub operation: &'static str,
    pub message: String,
}

/// What `StartQueryExecution` is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub sql: String,
    /// Execution parameters, already written as SQL literals; empty for none.
    pub parameters: Vec<String>,
    pub database: String,
    pub workgroup: String,
    /// `s3://...` for results when the workgroup does not enforce its own.
    pub output_location: Option<String>,
}

/// A query execution's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// What `GetQueryExecution` says about an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionStatus {
    pub state: QueryState,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    pub scanned_bytes: Option<i64>,
}

/// One `GetQueryResults` page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultPage {
    /// Column names from the result metadata.
    pub columns: Vec<String>,
    /// Rows of text values (`None` is NULL); on the first page the first row is the header.
    pub rows: Vec<Vec<Option<String>>>,
    pub next_token: Option<String>,
}

/// The four Athena calls the engine makes.
pub trait AthenaClient: Send + Sync + 'static {
    /// `StartQueryExecution`; returns the execution id.
    fn start_query<'a>(
        &'a self,
        request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<String, AthenaCallError>>;

    /// `GetQueryExecution`.
    fn query_status<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<ExecutionStatus, AthenaCallError>>;

    /// `GetQueryResults`, one page.
    fn result_page<'a>(
        &'a self,
        execution_id: &'a str,
        next_token: Option<&'a str>,
        max_results: i32,
    ) -> BoxFuture<'a, Result<ResultPage, AthenaCallError>>;

    /// `StopQueryExecution`.
    fn stop_query<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<(), AthenaCallError>>;
}

/// [`AthenaClient`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkAthenaClient {
    client: aws_sdk_athena::Client,
}

impl SdkAthenaClient {
    pub fn new(client: aws_sdk_athena::Client) -> Self {
        SdkAthenaClient { client }
    }

    /// A client from the default AWS configuration chain (environment, IRSA / Pod Identity,
    /// `AWS_ENDPOINT_URL` for an emulator), with an optional region override.
    pub async fn from_env(region: Option<String>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(clickheatmap_tls::aws_http_client());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let config = loader.load().await;
        SdkAthenaClient::new(aws_sdk_athena::Client::new(&config))
    }
}

fn call_error<E>(operation: &'static str) -> impl FnOnce(E) -> AthenaCallError
where
    E: std::error::Error,
{
    move |error| AthenaCallError {
        operation,
        message: DisplayErrorContext(&error).to_string(),
    }
}

impl AthenaClient for SdkAthenaClient {
    fn start_query<'a>(
        &'a self,
        request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<String, AthenaCallError>> {
        Box::pin(async move {
            let parameters = (!request.parameters.is_empty()).then(|| request.parameters.clone());
            let results = request.output_location.as_ref().map(|location| {
                ResultConfiguration::builder()
                    .output_location(location)
                    .build()
            });
            let output = self
                .client
                .start_query_execution()
                .query_string(&request.sql)
                .query_execution_context(
                    QueryExecutionContext::builder()
                        .database(&request.database)
                        .build(),
                )
                .work_group(&request.workgroup)
                .set_execution_parameters(parameters)
                .set_result_configuration(results)
                .send()
                .await
                .map_err(call_error("StartQueryExecution"))?;
            output
                .query_execution_id()
                .map(str::to_owned)
                .ok_or_else(|| AthenaCallError {
                    operation: "StartQueryExecution",
                    message: "no QueryExecutionId in the response".into(),
                })
        })
    }

    fn query_status<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<ExecutionStatus, AthenaCallError>> {
        Box::pin(async move {
            let output = self
                .client
                .get_query_execution()
                .query_execution_id(execution_id)
                .send()
                .await
                .map_err(call_error("GetQueryExecution"))?;
            let execution = output.query_execution();
            let status = execution.and_then(|e| e.status());
            let state = match status.and_then(|s| s.state()) {
                Some(QueryExecutionState::Succeeded) => QueryState::Succeeded,
                Some(QueryExecutionState::Failed) => QueryState::Failed,
                Some(QueryExecutionState::Cancelled) => QueryState::Cancelled,
                Some(QueryExecutionState::Queued) | None => QueryState::Queued,
                // Running, and any state added after this SDK was generated: keep waiting.
                Some(_) => QueryState::Running,
            };
            let reason = status.and_then(|s| {
                s.athena_error()
                    .and_then(|e| e.error_message())
                    .or(s.state_change_reason())
                    .map(str::to_owned)
            });
            let scanned_bytes = execution
                .and_then(|e| e.statistics())
                .and_then(|s| s.data_scanned_in_bytes());
            Ok(ExecutionStatus {
                state,
                reason,
                scanned_bytes,
            })
        })
    }

    fn result_page<'a>(
        &'a self,
        execution_id: &'a str,
        next_token: Option<&'a str>,
        max_results: i32,
    ) -> BoxFuture<'a, Result<ResultPage, AthenaCallError>> {
        Box::pin(async move {
            let output = self
                .client
                .get_query_results()
                .query_execution_id(execution_id)
                .max_results(max_results)
                .set_next_token(next_token.map(str::to_owned))
                .send()
                .await
                .map_err(call_error("GetQueryResults"))?;
            let result_set = output.result_set();
            let columns = result_set
                .and_then(|r| r.result_set_metadata())
                .map(|m| {
                    m.column_info()
                        .iter()
                        .map(|c| c.name().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let rows = result_set
                .map(|r| {
                    r.rows()
                        .iter()
                        .map(|row| {
                            row.data()
                                .iter()
                                .map(|datum| datum.var_char_value().map(str::to_owned))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(ResultPage {
                columns,
                rows,
                next_token: output.next_token().map(str::to_owned),
            })
        })
    }

    fn stop_query<'a>(
        &'a self,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<(), AthenaCallError>> {
        Box::pin(async move {
            self.client
                .stop_query_execution()
                .query_execution_id(execution_id)
                .send()
                .await
                .map_err(call_error("StopQueryExecution"))?;
            Ok(())
        })
    }
}

/// How the engine runs queries.
#[derive(Debug, Clone)]
pub struct AthenaSettings {
    pub table: TableName,
    pub workgroup: String,
    pub output_location: Option<String>,
    /// From `StartQueryExecution` to the last result page.
    pub query_timeout: Duration,
    /// First wait between `GetQueryExecution` calls; it doubles up to `poll_max`.
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// The longest aggregation window: partitions are chosen from `window_start`, so the scan
    /// starts this much before the range.
    pub max_window_ms: i64,
    /// Most result rows a heatmap or page list may have.
    pub max_rows: usize,
    /// Most result rows a raw SQL statement may have.
    pub max_raw_rows: usize,
}

impl AthenaSettings {
    pub fn new(table: TableName, workgroup: String) -> Self {
        AthenaSettings {
            table,
            workgroup,
            output_location: None,
            query_timeout: Duration::from_secs(60),
            poll_initial: Duration::from_millis(100),
            poll_max: Duration::from_secs(1),
            max_window_ms: 3_600_000,
            max_rows: 100_000,
            max_raw_rows: 10_000,
        }
    }
}

/// Checks a workgroup name: 1 to 128 letters, digits, `.`, `_` and `-`.
pub fn valid_workgroup(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Stops an execution if dropped while armed: the query's future went away before the
/// execution finished.
struct StopOnDrop {
    client: Arc<dyn AthenaClient>,
    execution_id: Option<String>,
}

impl StopOnDrop {
    fn arm(client: Arc<dyn AthenaClient>, execution_id: String) -> Self {
        StopOnDrop {
            client,
            execution_id: Some(execution_id),
        }
    }

    fn disarm(&mut self) {
        self.execution_id = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(execution_id) = self.execution_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%execution_id, "no runtime to stop the abandoned Athena query on");
            return;
        };
        let client = self.client.clone();
        runtime.spawn(async move {
            match timeout(STOP_TIMEOUT, client.stop_query(&execution_id)).await {
                Ok(Ok(())) => {
                    tracing::info!(%execution_id, "stopped an Athena query nobody waits for")
                }
                Ok(Err(error)) => {
                    tracing::warn!(%execution_id, %error, "could not stop an abandoned Athena query")
                }
                Err(_) => {
                    tracing::warn!(%execution_id, "StopQueryExecution timed out for an abandoned query")
                }
            }
        });
    }
}

/// A finished execution's rows.
struct Execution {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    info: QueryInfo,
}

/// Runs heatmap queries on Athena.
pub struct AthenaEngine {
    client: Arc<dyn AthenaClient>,
    settings: AthenaSettings,
}

impl AthenaEngine {
    pub fn new(client: Arc<dyn AthenaClient>, settings: AthenaSettings) -> Self {
        AthenaEngine { client, settings }
    }

    pub fn settings(&self) -> &AthenaSettings {
        &self.settings
    }

    fn timeout_error(&self, execution_id: &str) -> EngineError {
        EngineError::Timeout {
            seconds: self.settings.query_timeout.as_secs(),
            execution_id: execution_id.to_owned(),
        }
    }

    /// Starts, waits for and reads one statement.
    async fn execute(
        &self,
        statement: &Statement,
        max_rows: usize,
    ) -> Result<Execution, EngineError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.query_timeout;
        let request = StartRequest {
            sql: statement.sql.clone(),
            parameters: statement.literals(),
            database: self.settings.table.database.as_str().to_owned(),
            workgroup: self.settings.workgroup.clone(),
            output_location: self.settings.output_location.clone(),
        };
        let execution_id = timeout_at(deadline, self.client.start_query(&request))
            .await
            .map_err(|_| self.timeout_error("(not started)"))?
            .map_err(|e| EngineError::Athena(e.to_string()))?;
        tracing::debug!(%execution_id, "Athena query started");
        let mut guard = StopOnDrop::arm(self.client.clone(), execution_id.clone());

        let status = self.wait(&execution_id, deadline, &mut guard).await?;
        let (columns, rows) = self.read_results(&execution_id, deadline, max_rows).await?;
        tracing::info!(
            %execution_id,
            rows = rows.len(),
            scanned_bytes = status.scanned_bytes,
            elapsed_ms = elapsed_ms(started),
            "Athena query finished"
        );
        Ok(Execution {
            columns,
            info: QueryInfo {
                engine: "athena",
                sql: statement.sql.clone(),
                parameters: statement.literals(),
                elapsed_ms: elapsed_ms(started),
                rows: rows.len(),
                execution_id: Some(execution_id),
                scanned_bytes: status.scanned_bytes,
                files_read: None,
            },
            rows,
        })
    }

    /// Polls until the execution finishes; stops it when the deadline passes.
    async fn wait(
        &self,
        execution_id: &str,
        deadline: tokio::time::Instant,
        guard: &mut StopOnDrop,
    ) -> Result<ExecutionStatus, EngineError> {
        let mut delay = self.settings.poll_initial;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.stop_after_timeout(execution_id, guard).await);
            }
            let status = match timeout_at(deadline, self.client.query_status(execution_id)).await {
                Ok(status) => status.map_err(|e| EngineError::Athena(e.to_string()))?,
                Err(_) => return Err(self.stop_after_timeout(execution_id, guard).await),
            };
            match status.state {
                QueryState::Succeeded => {
                    guard.disarm();
                    return Ok(status);
                }
                QueryState::Failed => {
                    guard.disarm();
                    return Err(EngineError::Failed {
                        execution_id: execution_id.to_owned(),
                        reason: status.reason.unwrap_or_else(|| "no reason given".into()),
                    });
                }
                QueryState::Cancelled => {
                    guard.disarm();
                    return Err(EngineError::Cancelled {
                        execution_id: execution_id.to_owned(),
                    });
                }
                QueryState::Queued | QueryState::Running => {}
            }
            let wake = (tokio::time::Instant::now() + delay).min(deadline);
            sleep_until(wake).await;
            delay = (delay * 2).min(self.settings.poll_max);
        }
    }

    /// Stops a query that ran out of time. The guard stays armed until the stop call returns,
    /// so that dropping this future midway still stops the query.
    async fn stop_after_timeout(&self, execution_id: &str, guard: &mut StopOnDrop) -> EngineError {
        tracing::warn!(%execution_id, timeout_s = self.settings.query_timeout.as_secs(), "Athena query timed out; stopping it");
        match timeout(STOP_TIMEOUT, self.client.stop_query(execution_id)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%execution_id, %error, "could not stop the query"),
            Err(_) => tracing::warn!(%execution_id, "StopQueryExecution timed out"),
        }
        guard.disarm();
        self.timeout_error(execution_id)
    }

    /// Reads every result page, skipping the header row.
    async fn read_results(
        &self,
        execution_id: &str,
        deadline: tokio::time::Instant,
        max_rows: usize,
    ) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), EngineError> {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        let mut next_token: Option<String> = None;
        let mut first_page = true;
        loop {
            let page = timeout_at(
                deadline,
                self.client
                    .result_page(execution_id, next_token.as_deref(), RESULT_PAGE_SIZE),
            )
            .await
            .map_err(|_| self.timeout_error(execution_id))?
            .map_err(|e| EngineError::Athena(e.to_string()))?;
            let mut page_rows = page.rows.into_iter().peekable();
            if first_page {
                columns = page.columns;
                if page_rows
                    .peek()
                    .is_some_and(|row| is_header_row(row, &columns))
                {
                    page_rows.next();
                }
                first_page = false;
            }
            for row in page_rows {
                if rows.len() >= max_rows {
                    return Err(EngineError::TooManyRows { limit: max_rows });
                }
                rows.push(row);
            }
            match page.next_token {
                Some(token) if !token.is_empty() => {
                    if next_token.as_deref() == Some(token.as_str()) {
                        return Err(EngineError::BadResult(
                            "GetQueryResults returned the same NextToken twice".into(),
                        ));
                    }
                    next_token = Some(token);
                }
                _ => return Ok((columns, rows)),
            }
        }
    }
}

/// Athena puts the column names in the first row of a SELECT's first result page.
fn is_header_row(row: &[Option<String>], columns: &[String]) -> bool {
    !columns.is_empty()
        && row.len() == columns.len()
        && row.iter().zip(columns).all(|(value, name)| {
            value
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case(name))
        })
}

fn integer(row: &[Option<String>], index: usize, name: &str) -> Result<i64, EngineError> {
    let value = row.get(index).and_then(Option::as_deref).ok_or_else(|| {
        EngineError::BadResult(format!("{name} is missing or NULL in a result row"))
    })?;
    value
        .trim()
        .parse()
        .map_err(|_| EngineError::BadResult(format!("{name} is {value:?}, not an integer")))
}

fn cell(row: &[Option<String>]) -> Result<(i32, i32, i64), EngineError> {
    let coordinate = |index, name| {
        i32::try_from(integer(row, index, name)?)
            .map_err(|_| EngineError::BadResult(format!("{name} does not fit in int32")))
    };
    Ok((
        coordinate(0, "grid_x")?,
        coordinate(1, "grid_y")?,
        integer(row, 2, "clicks")?,
    ))
}

impl HeatmapEngine for AthenaEngine {
    fn name(&self) -> &'static str {
        "athena"
    }

    fn pages(&self, range: QueryRange) -> BoxFuture<'_, Result<PagesResult, EngineError>> {
        Box::pin(async move {
            let statement = sql::pages(&self.settings.table, &range, self.settings.max_window_ms);
            let execution = self.execute(&statement, self.settings.max_rows).await?;
            let pages = execution
                .rows
                .iter()
                .map(|row| {
                    let page_id = row
                        .first()
                        .and_then(Option::as_deref)
                        .ok_or_else(|| EngineError::BadResult("page_id is NULL".into()))?;
                    Ok(PageSummary {
                        page_id: page_id.to_owned(),
                        clicks: integer(row, 1, "clicks")?,
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            Ok(PagesResult {
                pages,
                query: execution.info,
            })
        })
    }

    fn heatmap<'a>(
        &'a self,
        query: &'a HeatmapQuery,
    ) -> BoxFuture<'a, Result<HeatmapResult, EngineError>> {
        Box::pin(async move {
            let statement = sql::heatmap(
                &self.settings.table,
                &query.page,
                &query.range,
                self.settings.max_window_ms,
            );
            let execution = self.execute(&statement, self.settings.max_rows).await?;
            let cells = execution
                .rows
                .iter()
                .map(|row| cell(row))
                .collect::<Result<Vec<_>, EngineError>>()?;
            Ok(HeatmapResult {
                cells,
                query: execution.info,
            })
        })
    }

    fn supports_raw_sql(&self) -> bool {
        true
    }

    fn raw_sql<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<TableResult, EngineError>> {
        Box::pin(async move {
            let statement = Statement {
                sql: sql.to_owned(),
                values: Vec::new(),
            };
            let execution = self.execute(&statement, self.settings.max_raw_rows).await?;
            Ok(TableResult {
                columns: execution.columns,
                rows: execution.rows,
                query: execution.info,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rows() {
        let columns = vec!["grid_x".to_owned(), "clicks".to_owned()];
        assert!(is_header_row(
            &[Some("grid_x".into()), Some("CLICKS".into())],
            &columns
        ));
        assert!(!is_header_row(
            &[Some("1".into()), Some("2".into())],
            &columns
        ));
        assert!(!is_header_row(&[Some("grid_x".into())], &[]));
    }

    #[test]
    fn cells_parse() {
        let row = [
            Some("3".to_owned()),
            Some("4".to_owned()),
            Some("12".to_owned()),
        ];
        assert_eq!(cell(&row).unwrap(), (3, 4, 12));
        let null = [Some("3".to_owned()), None, Some("12".to_owned())];
        assert!(matches!(cell(&null), Err(EngineError::BadResult(_))));
        let big = [
            Some("9999999999".to_owned()),
            Some("1".to_owned()),
            Some("1".to_owned()),
        ];
        assert!(cell(&big).is_err());
    }

    #[test]
    fn workgroups() {
        assert!(valid_workgroup("heatmap-demo-wg"));
        assert!(valid_workgroup("primary"));
        assert!(!valid_workgroup(""));
        assert!(!valid_workgroup("a b"));
    }
}
