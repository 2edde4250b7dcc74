//! Local mode: the whole clickheatmap pipeline in one process on a laptop, with no AWS and no
//! cluster, all on 127.0.0.1.
//!
//! * the **collector** (the real [`clickheatmap_collector`]) takes clicks on
//!   `POST /v1/clicks` and appends them to an embedded durable stream, the append-only log
//!   `<dir>/stream/clicks.log` ([`stream::LogSink`], fsynced on a short interval); its `GET /`
//!   is a demo page to click on ([`demo`]);
//! * the **aggregator** (the real [`clickheatmap_aggregator::pipeline::Pipeline`]) follows the
//!   log and writes curated Parquet to `<dir>/curated` in the production layout
//!   ([`aggregate`]); when the log is quiet its watermark follows the wall clock so that windows
//!   close without new clicks. At start the curated folder — derived data — is cleared and the
//!   whole log replayed, so a restart loses nothing;
//! * the **viewer** (the real [`clickheatmap_viewer`]) reads `<dir>/curated` with its local
//!   engine; its port also serves the aggregator's live endpoint `GET /v1/live?page=`, which the
//!   viewer's live mode polls;
//! * optionally, **synthetic clicks** POSTed to the collector ([`synthetic`]).
//!
//! [`start`] runs it all and hands back a [`Running`] to [`Running::stop`].

pub mod aggregate;
pub mod demo;
pub mod stream;
pub mod synthetic;

use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use clickheatmap_aggregator::pipeline::{Pipeline, PipelineError};
use clickheatmap_collector::queue::run_shipper;
use clickheatmap_collector::{
    AllowedOrigins, Collector, CollectorConfig, RateLimitConfig, RecordSink,
};
use clickheatmap_crds::AggregatorConfig;
use clickheatmap_crds::aggregator_config::{OutputConfig, WindowConfig};
use clickheatmap_viewer::engine::local::{LocalEngine, LocalSettings};
use clickheatmap_viewer::live::{LiveClient, LiveError};
use clickheatmap_viewer::server::Viewer;
use clickheatmap_viewer::sql::{Identifier, IdentifierError, TableName};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregate::SharedPipeline;
use crate::stream::{LogSink, LogTail};

/// How often the stream log is fsynced.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// How long servers may take to finish open requests at shutdown.
const HTTP_GRACE: Duration = Duration::from_secs(3);

/// Runs the whole click heatmap pipeline locally: collector with a demo page, an embedded
/// durable stream, the aggregator and the viewer, all on 127.0.0.1.
#[derive(Parser, Debug, Clone)]
#[command(name = "clickheatmap", version, about)]
pub struct Options {
    /// Working directory: stream/clicks.log (the durable state) and curated/ (derived; rebuilt
    /// from the log at every start).
    #[arg(long, default_value = "heatmap-local")]
    pub dir: PathBuf,

    /// Also send this many synthetic clicks per second to the collector.
    #[arg(long, value_name = "RATE")]
    pub synthetic: Option<f64>,

    /// Port of the collector and the demo page (0 picks a free one).
    #[arg(long, default_value_t = 8088)]
    pub port_collector: u16,

    /// Port of the viewer and the live endpoint (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    pub port_viewer: u16,

    /// Aggregation window (must divide a day: 1m, 5m, 1h...).
    #[arg(long, default_value = "60s")]
    pub window: clickheatmap_crds::Duration,

    /// How long a window stays open after the watermark passed its end.
    #[arg(long, default_value = "5s")]
    pub lateness: clickheatmap_crds::Duration,

    /// Another browser origin allowed to post clicks (e.g. http://localhost:3000, where your
    /// own page runs); repeatable. The demo page's origin is always allowed.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// Let the viewer run SQL typed in its page (one query at a time, on the embedded engine,
    /// over the curated table `"heatmap_demo"."curated_heatmap"`).
    #[arg(long)]
    pub allow_raw_sql: bool,
}

impl Options {
    /// The defaults, for `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Options {
        let mut options = Options::parse_from(["clickheatmap"]);
        options.dir = dir.into();
        options
    }
}

/// Why local mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is in use by another clickheatmap process")]
    Locked(PathBuf),
    #[error("--dir {0:?} must be a UTF-8 path")]
    NotUtf8(PathBuf),
    #[error("--synthetic must be a rate above 0 and at most 100000 clicks/s, got {0}")]
    SyntheticRate(f64),
    #[error(transparent)]
    AggregatorConfig(#[from] clickheatmap_crds::aggregator_config::ConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("collector: {0}")]
    Collector(#[from] clickheatmap_collector::ConfigError),
    #[error("viewer: {0}")]
    ViewerName(#[from] IdentifierError),
    #[error("viewer: {0}")]
    ViewerLive(#[from] LiveError),
    #[error("viewer: {0}")]
    ViewerEngine(#[from] clickheatmap_viewer::engine::local::LocalEngineError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// Everything local mode runs; [`Running::stop`] ends it.
pub struct Running {
    pub collector_addr: SocketAddr,
    pub viewer_addr: SocketAddr,
    pub log_path: PathBuf,
    pub curated_path: PathBuf,
    stop: watch::Sender<bool>,
    sink: Arc<LogSink>,
    queue: Arc<clickheatmap_collector::queue::EventQueue>,
    drain_timeout: Duration,
    collector_http: JoinHandle<()>,
    shipper: JoinHandle<clickheatmap_collector::DrainReport>,
    viewer_http: JoinHandle<std::io::Result<()>>,
    others: Vec<JoinHandle<()>>,
    /// Held while running.
    _lock: std::fs::File,
}

impl Running {
    pub fn collector_url(&self) -> String {
        format!("http://{}", self.collector_addr)
    }

    pub fn viewer_url(&self) -> String {
        format!("http://{}", self.viewer_addr)
    }

    /// Stops everything: HTTP first, then the collector's queue drains into the log, which is
    /// fsynced. The open windows are not flushed: the log is the durable state and the next
    /// start replays it.
    pub async fn stop(self) -> Result<(), LocalError> {
        self.stop.send_replace(true);
        join_within("collector HTTP", self.collector_http, HTTP_GRACE).await;
        self.queue.start_drain(Instant::now() + self.drain_timeout);
        match self.shipper.await {
            Ok(report) if report.undelivered_events > 0 => tracing::error!(
                events = report.undelivered_events,
                "clicks accepted by the collector could not be written to the stream log"
            ),
            Ok(_) => tracing::info!("collector queue drained into the stream log"),
            Err(error) => tracing::error!(%error, "the collector's shipper failed"),
        }
        self.sink
            .sync()
            .await
            .map_err(io(format!("syncing {}", self.log_path.display())))?;
        join_within("viewer HTTP", self.viewer_http, HTTP_GRACE).await;
        for task in self.others {
            join_within("task", task, HTTP_GRACE).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn join_within<T>(what: &str, task: JoinHandle<T>, limit: Duration) {
    let abort = task.abort_handle();
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(what, %error, "task ended abnormally"),
        Err(_) => {
            tracing::warn!(
                what,
                ?limit,
                "still running after the grace period; stopping it"
            );
            abort.abort();
        }
    }
}

fn utf8(path: &Path) -> Result<&str, LocalError> {
    path.to_str()
        .ok_or_else(|| LocalError::NotUtf8(path.to_owned()))
}

async fn bind(port: u16, what: &str) -> Result<TcpListener, LocalError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(io(format!("listening on 127.0.0.1:{port} ({what})")))
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Starts local mode. Returns once everything listens; the replay of the log runs on in the
/// background.
pub async fn start(options: &Options) -> Result<Running, LocalError> {
    if let Some(rate) = options.synthetic
        && !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0)
    {
        return Err(LocalError::SyntheticRate(rate));
    }
    // Checked now, before anything is touched; used below.
    AllowedOrigins::parse(&options.allowed_origins)?;
    let dir = &options.dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io(format!("creating {}", dir.display())))?;
    // One process per directory: an advisory lock the operating system drops when the process
    // ends, however it ends.
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(LocalError::Locked(dir.clone())),
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(io(format!("locking {}", lock_path.display()))(error));
        }
    }
    let curated_path = dir.join("curated");
    let log_path = dir.join("stream").join("clicks.log");

    // The aggregator's configuration first: nothing is touched when it is invalid.
    let config = AggregatorConfig {
        writer_id: "local".to_owned(),
        window: WindowConfig {
            size: options.window,
            allowed_lateness: options.lateness,
        },
        output: OutputConfig {
            root: utf8(&curated_path)?.to_owned(),
            ..OutputConfig::default()
        },
        ..AggregatorConfig::default()
    };
    config.validate()?;

    // The curated folder is derived from the log: rebuild it.
    match tokio::fs::remove_dir_all(&curated_path).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(format!("clearing {}", curated_path.display()))(error)),
    }
    let sink = Arc::new(
        LogSink::open(&log_path)
            .await
            .map_err(io(format!("opening {}", log_path.display())))?,
    );
    let tail = LogTail::open(&log_path)
        .await
        .map_err(io(format!("reading {}", log_path.display())))?;
    let shared = SharedPipeline::new(Pipeline::open(&config)?);

    let collector_listener = bind(options.port_collector, "collector").await?;
    let viewer_listener = bind(options.port_viewer, "viewer").await?;
    let collector_addr = collector_listener
        .local_addr()
        .map_err(io("the collector's address"))?;
    let viewer_addr = viewer_listener
        .local_addr()
        .map_err(io("the viewer's address"))?;
    let collector_url = format!("http://{collector_addr}");
    let viewer_url = format!("http://{viewer_addr}");

    // Viewer: the local engine over the curated folder, live mode from our own endpoint.
    let table = TableName {
        database: Identifier::parse("--database", "heatmap_demo")?,
        table: Identifier::parse("--table", &config.output.table)?,
    };
    let viewer = Viewer {
        engine: Arc::new(LocalEngine::open(
            &config.output.root,
            table.clone(),
            LocalSettings {
                max_window_ms: i64::try_from(config.window.size.as_millis()).unwrap_or(86_400_000),
                ..LocalSettings::default()
            },
        )?),
        live: Some(LiveClient::new(&format!("{viewer_url}/v1/live"))?),
        columns: config.grid.columns,
        rows: config.grid.rows,
        allow_raw_sql: options.allow_raw_sql,
        table,
    };
    let viewer_app = clickheatmap_viewer::server::router(viewer)
        .merge(clickheatmap_aggregator::live::router(shared.board()));

    // Collector: the demo page's origin (both spellings of loopback) may post.
    let port = collector_addr.port();
    let mut origins = vec![
        collector_url.clone(),
        format!("http://localhost:{port}"),
        viewer_url.clone(),
    ];
    origins.extend(options.allowed_origins.iter().cloned());
    let rate = options.synthetic.unwrap_or(0.0);
    let collector_config = CollectorConfig {
        allowed_origins: AllowedOrigins::parse(&origins)?,
        // Everything comes from 127.0.0.1 here: leave room for the synthetic clicks.
        rate_limit: Some(RateLimitConfig {
            events_per_second: (rate * 2.0).max(200.0),
            burst: (rate * 4.0).max(2000.0),
        }),
        http_grace: HTTP_GRACE,
        drain_timeout: Duration::from_secs(10),
        ..CollectorConfig::default()
    };
    let drain_timeout = collector_config.drain_timeout;
    let record_sink: Arc<dyn RecordSink> = sink.clone();
    let collector = Collector::new(collector_config, Arc::clone(&record_sink))?;
    let queue = collector.queue();

    let (stop, stopping) = watch::channel(false);
    let shipper = tokio::spawn(run_shipper(Arc::clone(&queue), record_sink));
    // The collector's own connection handling, as in production, with the demo page beside.
    let collector_http = tokio::spawn(collector.serve_http(
        collector_listener,
        demo::router(&viewer_url),
        stopping.clone(),
    ));
    let viewer_http = tokio::spawn(
        axum::serve(viewer_listener, viewer_app)
            .with_graceful_shutdown(stopped(stopping.clone()))
            .into_future(),
    );
    let mut others = vec![tokio::spawn(aggregate::run(shared, tail, stopping.clone()))];
    others.push(tokio::spawn({
        let (sink, mut stopping) = (Arc::clone(&sink), stopping.clone());
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SYNC_INTERVAL) => {}
                    _ = stopping.changed() => {}
                }
                if let Err(error) = sink.sync().await {
                    tracing::error!(path = %sink.path().display(), %error, "fsync of the stream log failed");
                }
                if *stopping.borrow() {
                    break;
                }
            }
        }
    }));
    if let Some(rate) = options.synthetic {
        others.push(tokio::spawn(synthetic::run(
            collector_addr,
            rate,
            stopping.clone(),
        )));
    }
    tracing::info!(
        collector = %collector_url,
        viewer = %viewer_url,
        log = %log_path.display(),
        curated = %curated_path.display(),
        "local mode running"
    );
    Ok(Running {
        collector_addr,
        viewer_addr,
        log_path,
        curated_path,
        stop,
        sink,
        queue,
        drain_timeout,
        collector_http,
        shipper,
        viewer_http,
        others,
        _lock: lock,
    })
}
