//! `clickheatmap-collector`: the HTTP endpoint for browser clicks (`serve`, the default), and its
//! loopback benchmark (`bench`). Every flag has an environment variable; `--help` lists them.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clickheatmap_collector::bench::{self, BenchOptions};
use clickheatmap_collector::{
    AllowedOrigins, Collector, CollectorConfig, KinesisSink, QueueConfig, RateLimitConfig,
    RecordSink, RetryPolicy, StdoutSink,
};
use clickheatmap_crds::Duration;
use clickheatmap_logging::LogFormat;
use clickheatmap_model::event::Limits;

#[derive(Parser)]
#[command(
    name = "clickheatmap-collector",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLICKHEATMAP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POST /v1/clicks and forward the clicks to the sink (the default).
    Serve(ServeArgs),
    /// Measure requests/s and events/s on loopback with an in-process sink, then stop.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum SinkKind {
    /// A Kinesis data stream (--stream-name).
    Kinesis,
    /// Standard output, one event per line (for debugging).
    Stdout,
}

#[derive(Args, Clone, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_LISTEN",
        default_value = "127.0.0.1:8088"
    )]
    listen: String,
    /// Where accepted clicks go.
    #[arg(long, value_enum, env = "CLICKHEATMAP_COLLECTOR_SINK", default_value_t = SinkKind::Kinesis)]
    sink: SinkKind,
    /// Kinesis stream name or ARN (for --sink kinesis).
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_STREAM")]
    stream_name: Option<String>,
    /// AWS region; the SDK's default chain (AWS_REGION, profile...) when absent.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_REGION")]
    region: Option<String>,
    /// Browser origins allowed to post clicks, exact (https://shop.example.com), comma-separated
    /// or repeated; `*` allows every origin and must be given explicitly.
    #[arg(
        long = "allowed-origin",
        env = "CLICKHEATMAP_COLLECTOR_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Events per second each client address may send (token bucket refill); 0 turns rate
    /// limiting off.
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_RATE_LIMIT",
        default_value_t = 20.0
    )]
    rate_limit: f64,
    /// Events a client may send at once (token bucket size).
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_RATE_BURST",
        default_value_t = 200.0
    )]
    rate_burst: f64,
    /// Trust X-Forwarded-For this many proxies deep (0: ignore it). Set it to the number of
    /// proxies in front of the collector (1 behind one load balancer), never more.
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_FORWARDED_FOR_HOPS",
        default_value_t = 0
    )]
    forwarded_for_hops: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Longest page_id, in bytes.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_MAX_PAGE_ID_BYTES", default_value_t = Limits::default().max_page_id_bytes)]
    max_page_id_bytes: usize,
    /// Largest single event, in bytes of JSON.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_MAX_EVENT_BYTES", default_value_t = Limits::default().max_event_bytes)]
    max_event_bytes: usize,
    /// Events held in memory (accepted, not yet taken by the sink) before requests get 503.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_QUEUE_EVENTS", default_value_t = QueueConfig::default().capacity_events)]
    queue_events: usize,
    /// Bytes held in memory before requests get 503.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_QUEUE_BYTES", default_value_t = QueueConfig::default().capacity_bytes)]
    queue_bytes: usize,
    /// Send a record at the latest this long after its first click (like 500ms, 2s).
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_FLUSH_INTERVAL",
        default_value = "500ms"
    )]
    flush_interval: Duration,
    /// Target size of one record (several events, NDJSON), in bytes.
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_RECORD_BYTES", default_value_t = QueueConfig::default().record_target_bytes)]
    record_bytes: usize,
    /// Attempts after which a failing record is reported at error level (it is still retried).
    #[arg(long, env = "CLICKHEATMAP_COLLECTOR_RETRY_BUDGET", default_value_t = RetryPolicy::default().budget)]
    retry_budget: u32,
    /// Longest wait between two attempts of a failing record.
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_MAX_BACKOFF",
        default_value = "10s"
    )]
    max_backoff: Duration,
    /// How long an idle keep-alive connection is kept open; keep it above the idle timeout of
    /// the load balancer in front (60 s on an AWS ALB).
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_IDLE_TIMEOUT",
        default_value = "75s"
    )]
    idle_timeout: Duration,
    /// Answer plain click posts on the collector's own HTTP/1.1 path (false: every request
    /// through hyper, slower; for ruling it out when diagnosing a client).
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_FAST_CLICK_PATH",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    fast_click_path: bool,
    /// On shutdown, how long to keep sending what is queued.
    #[arg(
        long,
        env = "CLICKHEATMAP_COLLECTOR_DRAIN_TIMEOUT",
        default_value = "20s"
    )]
    drain_timeout: Duration,
}

#[derive(Args, Clone, Debug)]
struct BenchArgs {
    /// Requests to send in all.
    #[arg(long, default_value_t = BenchOptions::default().requests)]
    requests: u64,
    /// Events in each request (a JSON array).
    #[arg(long, default_value_t = BenchOptions::default().events_per_request)]
    events_per_request: usize,
    /// Keep-alive connections sending at once.
    #[arg(long, default_value_t = BenchOptions::default().connections)]
    connections: usize,
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // One TLS provider for every HTTPS client of the process (see clickheatmap-tls).
    clickheatmap_tls::install_crypto_provider();
    let cli: Cli = match clickheatmap_logging::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    clickheatmap_logging::init(cli.log_format, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::Bench(args)) => run_bench(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: &ServeArgs) -> Result<CollectorConfig, Box<dyn std::error::Error>> {
    let rate_limit = (args.rate_limit > 0.0).then_some(RateLimitConfig {
        events_per_second: args.rate_limit,
        burst: args.rate_burst,
    });
    let defaults = CollectorConfig::default();
    Ok(CollectorConfig {
        body_limit_bytes: args.body_limit,
        limits: Limits {
            max_page_id_bytes: args.max_page_id_bytes,
            max_event_bytes: args.max_event_bytes,
            max_record_bytes: args.body_limit,
        },
        allowed_origins: AllowedOrigins::parse(&args.allowed_origins)?,
        rate_limit,
        forwarded_for_hops: args.forwarded_for_hops,
        queue: QueueConfig {
            capacity_events: args.queue_events,
            capacity_bytes: args.queue_bytes,
            record_target_bytes: args.record_bytes,
            flush_interval: args.flush_interval.as_std(),
            retry: RetryPolicy {
                max_backoff: args.max_backoff.as_std(),
                budget: args.retry_budget,
                ..RetryPolicy::default()
            },
        },
        idle_timeout: args.idle_timeout.as_std(),
        fast_click_path: args.fast_click_path,
        drain_timeout: args.drain_timeout.as_std(),
        ..defaults
    })
}

async fn serve(args: ServeArgs) -> CliResult {
    let config = config(&args)?;
    let sink: Arc<dyn RecordSink> = match args.sink {
        SinkKind::Stdout => Arc::new(StdoutSink::new()),
        SinkKind::Kinesis => {
            let stream = args
                .stream_name
                .as_deref()
                .filter(|name| !name.is_empty())
                .ok_or("--sink kinesis needs --stream-name (or CLICKHEATMAP_COLLECTOR_STREAM)")?;
            let sink = KinesisSink::from_env(stream, args.region.clone()).await;
            tracing::info!(stream = sink.stream(), "forwarding clicks to Kinesis");
            Arc::new(sink)
        }
    };
    let collector = Collector::new(config, sink)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|err| format!("listening on {}: {err}", args.listen))?;
    let report = collector.serve(listener, shutdown_signal()).await?;
    if report.undelivered_events > 0 {
        return Err(format!(
            "{} accepted events were not delivered before the drain deadline",
            report.undelivered_events
        )
        .into());
    }
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("listening for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!("listening for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

async fn run_bench(args: BenchArgs) -> CliResult {
    let options = BenchOptions {
        requests: args.requests,
        events_per_request: args.events_per_request,
        connections: args.connections,
    };
    let report = bench::run(options).await?;
    println!("{report}");
    Ok(())
}
