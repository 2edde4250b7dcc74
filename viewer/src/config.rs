//! Command-line flags (each also an environment variable) and building a [`Viewer`] from them.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use clickheatmap_crds::Duration;

use crate::engine::HeatmapEngine;
use crate::engine::athena::{AthenaEngine, AthenaSettings, SdkAthenaClient, valid_workgroup};
use crate::engine::local::{LocalEngine, LocalEngineError, LocalSettings};
use crate::live::{LiveClient, LiveError, MAX_GRID_SIDE};
use crate::server::Viewer;
use crate::sql::{Identifier, IdentifierError, TableName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// Run SQL with the embedded engine (DataFusion) on the curated Parquet files (a local
    /// folder or s3://).
    Local,
    /// Run SQL on Amazon Athena against the Glue table.
    Athena,
}

pub use clickheatmap_logging::LogFormat;

/// The heatmap viewer: pick a page and a time range, see where people click.
#[derive(Parser, Debug, Clone)]
#[command(name = "clickheatmap-viewer", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "CLICKHEATMAP_VIEWER_LISTEN",
        default_value = "127.0.0.1:8089"
    )]
    pub listen: SocketAddr,

    /// Where heatmaps come from.
    #[arg(long, value_enum, env = "CLICKHEATMAP_VIEWER_ENGINE", default_value_t = EngineKind::Local)]
    pub engine: EngineKind,

    /// Local engine: the curated root (a directory, file:// or s3://bucket/prefix) that holds
    /// the table's folder.
    #[arg(
        long,
        env = "CLICKHEATMAP_VIEWER_CURATED",
        default_value = "heatmap-out/curated"
    )]
    pub curated: String,

    /// The curated table (Glue table name; the local engine's folder name).
    #[arg(
        long,
        env = "CLICKHEATMAP_VIEWER_TABLE",
        default_value = "curated_heatmap"
    )]
    pub table: String,

    /// Glue database of the table.
    #[arg(
        long,
        env = "CLICKHEATMAP_VIEWER_DATABASE",
        default_value = "heatmap_demo"
    )]
    pub database: String,

    /// Athena workgroup queries run in.
    #[arg(
        long,
        env = "CLICKHEATMAP_VIEWER_WORKGROUP",
        default_value = "heatmap-demo-wg"
    )]
    pub workgroup: String,

    /// AWS region (default: the SDK's, e.g. AWS_REGION).
    #[arg(long, env = "CLICKHEATMAP_VIEWER_REGION")]
    pub region: Option<String>,

    /// Athena result location (s3://...), for workgroups that do not set one.
    #[arg(long, env = "CLICKHEATMAP_VIEWER_OUTPUT_LOCATION")]
    pub output_location: Option<String>,

    /// Grid columns of the heatmap (the aggregator's grid.columns).
    #[arg(long, env = "CLICKHEATMAP_VIEWER_COLUMNS", default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_GRID_SIDE)))]
    pub columns: u16,

    /// Grid rows of the heatmap (the aggregator's grid.rows).
    #[arg(long, env = "CLICKHEATMAP_VIEWER_ROWS", default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_GRID_SIDE)))]
    pub rows: u16,

    /// The aggregator's live endpoint (e.g. http://127.0.0.1:9090/v1/live); live mode is off
    /// without it. With several aggregator replicas, give each one's endpoint (repeat the flag,
    /// or separate them with commas): their answers are summed.
    #[arg(long, env = "CLICKHEATMAP_VIEWER_LIVE_URL", value_delimiter = ',')]
    pub live_url: Vec<String>,

    /// Allow running raw SQL typed in the UI (POST /api/sql): one query at a time, on either
    /// engine. Off by default: anyone who can reach the viewer could then read the whole table
    /// (and on Athena run any query the workgroup allows).
    #[arg(long, env = "CLICKHEATMAP_VIEWER_ALLOW_RAW_SQL")]
    pub allow_raw_sql: bool,

    /// How long a query may take before it is stopped.
    #[arg(long, env = "CLICKHEATMAP_VIEWER_QUERY_TIMEOUT", default_value = "60s")]
    pub query_timeout: Duration,

    /// The longest aggregation window in use. Partitions are named after the window start, so
    /// the scan begins this much before the range.
    #[arg(long, env = "CLICKHEATMAP_VIEWER_MAX_WINDOW", default_value = "1h")]
    pub max_window: Duration,

    /// Local engine: memory one query may use for its aggregations and sorts (bytes; k, M, G
    /// suffixes).
    #[arg(long, env = "CLICKHEATMAP_VIEWER_MEMORY_LIMIT", default_value = "512M",
          value_parser = parse_bytes)]
    pub memory_limit: usize,

    /// Log format.
    #[arg(long, value_enum, env = "CLICKHEATMAP_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Name(#[from] IdentifierError),
    #[error("--workgroup {0:?}: use 1 to 128 letters, digits, '.', '_' and '-'")]
    Workgroup(String),
    #[error("--output-location {0:?} must be an s3:// URL")]
    OutputLocation(String),
    #[error("--query-timeout must be at least 1s")]
    QueryTimeout,
    #[error("--max-window must be at most 1d")]
    MaxWindow,
    #[error("--curated: {0}")]
    Curated(#[from] LocalEngineError),
    #[error(transparent)]
    Live(#[from] LiveError),
}

impl Config {
    pub fn table_name(&self) -> Result<TableName, ConfigError> {
        Ok(TableName {
            database: Identifier::parse("--database", &self.database)?,
            table: Identifier::parse("--table", &self.table)?,
        })
    }

    /// Checks the flags and opens the engine (loading AWS configuration for Athena).
    pub async fn build(&self) -> Result<Viewer, ConfigError> {
        let table = self.table_name()?;
        let engine: Arc<dyn HeatmapEngine> = match self.engine {
            EngineKind::Local => Arc::new(LocalEngine::open(
                &self.curated,
                table.clone(),
                self.local_settings()?,
            )?),
            EngineKind::Athena => {
                let settings = self.athena_settings(table.clone())?;
                let client = SdkAthenaClient::from_env(self.region.clone()).await;
                Arc::new(AthenaEngine::new(Arc::new(client), settings))
            }
        };
        let live = if self.live_url.is_empty() {
            None
        } else {
            Some(LiveClient::with_endpoints(&self.live_url)?)
        };
        Ok(Viewer {
            engine,
            live,
            columns: self.columns,
            rows: self.rows,
            allow_raw_sql: self.allow_raw_sql,
            table,
        })
    }

    fn checked_limits(&self) -> Result<(std::time::Duration, i64), ConfigError> {
        if self.query_timeout.as_millis() < 1000 {
            return Err(ConfigError::QueryTimeout);
        }
        if self.max_window.as_millis() > 86_400_000 {
            return Err(ConfigError::MaxWindow);
        }
        let max_window_ms = i64::try_from(self.max_window.as_millis()).unwrap_or(86_400_000);
        Ok((self.query_timeout.as_std(), max_window_ms))
    }

    pub fn local_settings(&self) -> Result<LocalSettings, ConfigError> {
        let (query_timeout, max_window_ms) = self.checked_limits()?;
        Ok(LocalSettings {
            max_window_ms,
            query_timeout,
            memory_limit_bytes: self.memory_limit,
            ..LocalSettings::default()
        })
    }

    pub fn athena_settings(&self, table: TableName) -> Result<AthenaSettings, ConfigError> {
        if !valid_workgroup(&self.workgroup) {
            return Err(ConfigError::Workgroup(self.workgroup.clone()));
        }
        if let Some(location) = &self.output_location
            && !location.starts_with("s3://")
        {
            return Err(ConfigError::OutputLocation(location.clone()));
        }
        let (query_timeout, max_window_ms) = self.checked_limits()?;
        let mut settings = AthenaSettings::new(table, self.workgroup.clone());
        settings.output_location = self.output_location.clone();
        settings.query_timeout = query_timeout;
        settings.max_window_ms = max_window_ms;
        Ok(settings)
    }
}

/// `536870912`, `512M`, `2G`, `64k` (powers of 1024); at least 16 MiB.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 10),
        Some((at, 'm' | 'M')) => (&text[..at], 20),
        Some((at, 'g' | 'G')) => (&text[..at], 30),
        _ => (text, 0),
    };
    let bytes = digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1_usize << shift))
        .ok_or_else(|| format!("{text:?} is not a size (e.g. 512M, 2G)"))?;
    if bytes < 16 << 20 {
        return Err(format!("{text:?} is below the 16M minimum"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("clickheatmap-viewer").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_demo() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8089");
        assert_eq!(config.engine, EngineKind::Local);
        assert_eq!(config.curated, "heatmap-out/curated");
        assert_eq!(
            (
                config.database.as_str(),
                config.table.as_str(),
                config.workgroup.as_str()
            ),
            ("heatmap_demo", "curated_heatmap", "heatmap-demo-wg")
        );
        assert_eq!((config.columns, config.rows), (20, 20));
        assert!(!config.allow_raw_sql);
        assert!(config.live_url.is_empty());
        let settings = config
            .athena_settings(config.table_name().unwrap())
            .unwrap();
        assert_eq!(settings.query_timeout.as_secs(), 60);
        assert_eq!(settings.max_window_ms, 3_600_000);
        let local = config.local_settings().unwrap();
        assert_eq!(local.memory_limit_bytes, 512 << 20);
        assert_eq!(local.max_window_ms, 3_600_000);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("16777216"), Ok(16 << 20));
        for bad in ["", "M", "-1M", "1.5G", "1M", "99999999999999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["--columns", "0"]).is_err());
        assert!(parse(&["--engine", "presto"]).is_err());
        assert!(parse(&["--query-timeout", "soon"]).is_err());
        let config = parse(&["--table", "x;drop"]).unwrap();
        assert!(config.table_name().is_err());
        let config = parse(&["--workgroup", "a b"]).unwrap();
        assert!(
            config
                .athena_settings(config.table_name().unwrap())
                .is_err()
        );
        let config = parse(&["--output-location", "/tmp"]).unwrap();
        assert!(
            config
                .athena_settings(config.table_name().unwrap())
                .is_err()
        );
        let config = parse(&["--allow-raw-sql", "--engine", "athena"]).unwrap();
        assert!(config.allow_raw_sql);
    }

    #[test]
    fn one_live_endpoint_per_replica() {
        let config = parse(&[
            "--live-url",
            "http://agg-0.agg:9090/v1/live,http://agg-1.agg:9090/v1/live",
            "--live-url",
            "http://agg-2.agg:9090/v1/live",
        ])
        .unwrap();
        assert_eq!(config.live_url.len(), 3);
        assert_eq!(
            LiveClient::with_endpoints(&config.live_url)
                .unwrap()
                .urls()
                .len(),
            3
        );
    }
}
