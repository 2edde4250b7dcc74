//! `clickheatmap-aggregator`: aggregate click records into curated Parquet, and the commands
//! around it (synthetic data, the local demo, the demo query, the benchmark).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path as FsPath, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use clickheatmap_aggregator::archive::FirehoseWriter;
use clickheatmap_aggregator::compression::Compression;
use clickheatmap_aggregator::live::LiveBoard;
use clickheatmap_aggregator::metrics::Metrics;
use clickheatmap_aggregator::pipeline::{Pipeline, RunReport};
use clickheatmap_aggregator::query::{Heatmaps, TimeRange, read_rows};
use clickheatmap_aggregator::render::{GridCounts, RenderOptions, encode_png, render_heatmap};
use clickheatmap_aggregator::synth::{Generator, SynthOptions};
use clickheatmap_aggregator::{consumer, location::Location, server, time};
use clickheatmap_crds::{AggregatorConfig, Duration, SourceConfig};
use clickheatmap_logging::LogFormat;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::watch;

mod bench;

#[derive(Parser)]
#[command(name = "clickheatmap-aggregator", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLICKHEATMAP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Aggregate click records into curated Parquet: from files or stdin, or — with a Kinesis
    /// source in the configuration — from every shard of a stream until SIGTERM.
    Run(RunArgs),
    /// Rebuild the curated windows of a time range from the raw archive (Firehose's
    /// YYYY/MM/DD/HH/ objects on S3 or on disk, or local mode's stream log), replacing what the
    /// table holds for them: resumable, and safe while readers query.
    Backfill(BackfillArgs),
    /// Write synthetic click records in the demo's format as NDJSON.
    Generate(GenerateArgs),
    /// Generate clicks, aggregate them, and draw a PNG heatmap per page: the whole path locally.
    Demo(DemoArgs),
    /// Print the demo's Athena query result (SUM(clicks) per cell) from curated data.
    Query(QueryArgs),
    /// Measure end-to-end throughput from NDJSON bytes to Parquet files.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Aggregator configuration (JSON); every field has a default.
    #[arg(long, env = "CLICKHEATMAP_CONFIG")]
    config: Option<PathBuf>,
    /// Input files; `-` or none reads standard input. Overrides the configured source.
    input: Vec<String>,
    /// Output root directory (overrides output.root).
    #[arg(long)]
    output: Option<String>,
    /// Window length, like 60s or 5m (overrides window.size).
    #[arg(long)]
    window: Option<Duration>,
    /// Allowed lateness, like 30s (overrides window.allowedLateness).
    #[arg(long)]
    allowed_lateness: Option<Duration>,
    /// This replica's ordinal when several split a stream (overrides replicas.index); in a
    /// StatefulSet it defaults to the number at the end of POD_NAME.
    #[arg(long, env = "CLICKHEATMAP_REPLICA_INDEX")]
    replica_index: Option<u32>,
}

#[derive(Args)]
struct BackfillArgs {
    /// Aggregator configuration (JSON): grid, window, limits, output and checkpoint locations.
    #[arg(long, env = "CLICKHEATMAP_CONFIG")]
    config: Option<PathBuf>,
    /// Names the backfill's files and its resumable state (lowercase letters, digits, '-').
    #[arg(long)]
    id: String,
    /// The raw archive: s3://bucket/raw/, a folder in Firehose's layout, or one file such as
    /// local mode's heatmap-local/stream/clicks.log.
    #[arg(long)]
    archive: String,
    /// Start of the event-time range (UTC: 2026-12-01T10:00Z, 2026-12-01, or epoch ms).
    #[arg(long, value_parser = parse_instant_arg)]
    from: i64,
    /// End of the range (exclusive); windows inside [from, to) are rewritten.
    #[arg(long, value_parser = parse_instant_arg)]
    to: i64,
    /// Output root directory or s3:// location (overrides output.root).
    #[arg(long)]
    output: Option<String>,
    /// Table directory (overrides output.table): a new name re-grids into a new table.
    #[arg(long)]
    table: Option<String>,
    /// Window length (overrides window.size).
    #[arg(long)]
    window: Option<Duration>,
    /// How long before its event time a click may have reached the archive (clocks ahead).
    #[arg(long, default_value = "1h")]
    early_arrivals: Duration,
    /// How long after its window a click may have reached the archive and still count.
    #[arg(long, default_value = "1h")]
    late_arrivals: Duration,
    /// Archive objects read at once (default: the number of CPUs).
    #[arg(long)]
    parallelism: Option<usize>,
}

fn parse_compression(text: &str) -> Result<Compression, String> {
    Compression::from_firehose_name(text)
        .ok_or_else(|| format!("{text:?}: use UNCOMPRESSED, GZIP, ZIP, Snappy or HADOOP_SNAPPY"))
}

fn parse_instant_arg(text: &str) -> Result<i64, String> {
    time::parse_instant(text).ok_or_else(|| {
        format!("{text:?} is not an instant: use 2026-12-01T10:00Z, 2026-12-01 or epoch ms (UTC)")
    })
}

#[derive(Args)]
struct GenerateArgs {
    /// Number of records.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Output file; standard output when absent.
    #[arg(long, conflicts_with = "archive")]
    output: Option<PathBuf>,
    /// Write a raw archive as Firehose would instead (s3://bucket/raw/ or a folder): objects in
    /// YYYY/MM/DD/HH/ folders of the clicks' arrival, cut by the buffer size and interval.
    #[arg(long)]
    archive: Option<String>,
    /// The archive's compression: UNCOMPRESSED, GZIP, ZIP, Snappy or HADOOP_SNAPPY.
    #[arg(long, default_value = "GZIP", value_parser = parse_compression)]
    compression: Compression,
    /// The archive's buffer interval (Firehose: 60s to 900s).
    #[arg(long, default_value = "300s")]
    buffer_interval: Duration,
    /// The archive's buffer size in MiB (Firehose: 1 to 128).
    #[arg(long, default_value_t = 5)]
    buffer_size_mib: usize,
    #[command(flatten)]
    synth: SynthArgs,
}

#[derive(Args, Clone)]
struct SynthArgs {
    /// Seed of the generator: the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event time of the first click in epoch ms; default: so that the last click is about now.
    #[arg(long)]
    start_ms: Option<i64>,
    /// Average clicks per second of event time.
    #[arg(long, default_value_t = 200.0)]
    clicks_per_second: f64,
    /// Share of records that are invalid.
    #[arg(long, default_value_t = 0.01)]
    invalid_share: f64,
    /// Share of clicks that arrive minutes late.
    #[arg(long, default_value_t = 0.002)]
    late_share: f64,
}

impl SynthArgs {
    fn options(&self, events: u64) -> SynthOptions {
        let span_ms = (events as f64 / self.clicks_per_second.max(1e-3) * 1000.0) as i64;
        SynthOptions {
            seed: self.seed,
            start_ms: self
                .start_ms
                .unwrap_or_else(|| time::now_ms() - span_ms - 60_000),
            clicks_per_second: self.clicks_per_second,
            invalid_share: self.invalid_share,
            late_share: self.late_share,
            ..SynthOptions::default()
        }
    }
}

#[derive(Args)]
struct DemoArgs {
    /// Working directory: input/, curated/ and heatmaps/ are written below it.
    #[arg(long, default_value = "heatmap-demo")]
    dir: PathBuf,
    /// Number of synthetic records.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[command(flatten)]
    synth: SynthArgs,
}

#[derive(Args)]
struct QueryArgs {
    /// Output root the aggregator wrote to.
    #[arg(long, default_value = "heatmap-out/curated")]
    output: String,
    /// Table directory.
    #[arg(long, default_value = "curated_heatmap")]
    table: String,
    /// Only this page (all pages when absent).
    #[arg(long)]
    page: Option<String>,
    /// Windows that ended within this long before now, like the demo's `-1 hour`.
    #[arg(long, default_value = "1h", conflicts_with = "all")]
    last: Duration,
    /// Every window, whenever it ended.
    #[arg(long)]
    all: bool,
    /// Rows to print per page.
    #[arg(long, default_value_t = 10)]
    limit: usize,
}

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
            Command::Run(args) => run(args).await,
            Command::Backfill(args) => backfill(args).await,
            Command::Generate(args) => generate(args).await,
            Command::Demo(args) => demo(args).await,
            Command::Query(args) => query(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&*err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

async fn run(args: RunArgs) -> CliResult {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(output) = args.output {
        config.output.root = output;
    }
    if let Some(window) = args.window {
        config.window.size = window;
    }
    if let Some(lateness) = args.allowed_lateness {
        config.window.allowed_lateness = lateness;
    }
    let ordinal_from_pod_name = || {
        std::env::var("POD_NAME")
            .ok()
            .and_then(|name| name.rsplit_once('-').and_then(|(_, n)| n.parse().ok()))
    };
    if let Some(index) = args.replica_index.or_else(|| {
        (config.replicas.count > 1)
            .then(ordinal_from_pod_name)
            .flatten()
    }) {
        config.replicas.index = index;
    }
    let inputs: Vec<String> = if !args.input.is_empty() {
        args.input
    } else {
        match &config.source {
            SourceConfig::Files { paths } => paths.clone(),
            SourceConfig::Stdin => vec!["-".to_owned()],
            SourceConfig::Kinesis(_) => {
                config.validate()?;
                return consume(config).await;
            }
        }
    };
    config.validate()?;
    let report = aggregate_inputs(&config, &inputs).await?;
    print_report(&report);
    Ok(())
}

/// Consumes the configured Kinesis stream until SIGTERM or SIGINT, serving metrics and health.
async fn consume(config: AggregatorConfig) -> CliResult {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_sender, stop) = watch::channel(false);
    let board = LiveBoard::new(config.grid.columns, config.grid.rows);
    let address: std::net::SocketAddr = config.metrics_address.parse()?;
    let server = tokio::spawn(server::serve(
        address,
        metrics.clone(),
        ready.clone(),
        board.clone(),
        stop.clone(),
    ));
    tokio::spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_sender.send(true);
    });
    consumer::consume(&config, metrics, ready, board, stop).await?;
    match server.await {
        Ok(result) => result?,
        Err(err) => tracing::error!(error = %err, "the metrics server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the consumer");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Aggregates the inputs one after another as one stream: replayed archive files are read in
/// time order, so they share one watermark.
async fn aggregate_inputs(
    config: &AggregatorConfig,
    inputs: &[String],
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let mut pipeline = Pipeline::open(config)?;
    for input in inputs {
        tracing::info!(input = %input, "reading");
        // Raw archive objects are read as Firehose wrote them, in any of its compressions.
        if input == "-" {
            let reader = clickheatmap_aggregator::compression::decoded(std::io::stdin().lock())
                .map_err(|err| format!("reading stdin: {err}"))?;
            pipeline.consume(0, "stdin", reader).await?;
        } else {
            let file = File::open(input).map_err(|err| format!("opening {input}: {err}"))?;
            let reader = clickheatmap_aggregator::compression::decoded(file)
                .map_err(|err| format!("reading {input}: {err}"))?;
            pipeline.consume(0, input, reader).await?;
        }
    }
    Ok(pipeline.finish().await?)
}

fn print_report(report: &RunReport) {
    let counters = &report.counters;
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "records: {}  clicks counted: {}  late clicks (corrections): {}  rejected: {}",
        counters.records,
        counters.clicks,
        counters.late_clicks,
        counters.rejected_total()
    );
    for (reason, count) in counters.rejected_by_reason().filter(|(_, n)| *n > 0) {
        println!("  rejected {:<22} {count}", reason.label());
    }
    let written = &report.written;
    println!(
        "written: {} files ({} final windows, {} corrections, {} dead letters), {} rows, {:.1} KiB in {:.2}s ({:.0} records/s)",
        written.files,
        written.final_windows,
        written.correction_windows,
        written.dead_letter_records,
        written.rows,
        written.bytes as f64 / 1024.0,
        seconds,
        counters.records as f64 / seconds,
    );
}

fn load_config(path: Option<&FsPath>) -> Result<AggregatorConfig, Box<dyn std::error::Error>> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("reading {}: {err}", path.display()))?;
            Ok(AggregatorConfig::from_json(&text)?)
        }
        None => Ok(AggregatorConfig::default()),
    }
}

async fn backfill(args: BackfillArgs) -> CliResult {
    use clickheatmap_aggregator::backfill::{self, BackfillRequest};
    use std::ops::ControlFlow;
    use std::sync::atomic::Ordering;

    let mut config = load_config(args.config.as_deref())?;
    if let Some(output) = args.output {
        config.output.root = output;
    }
    if let Some(table) = args.table {
        config.output.table = table;
    }
    if let Some(window) = args.window {
        config.window.size = window;
    }
    config.validate()?;
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let request = BackfillRequest {
        id: args.id,
        archive: args.archive,
        from_ms: args.from,
        to_ms: args.to,
        early_arrivals_ms: millis(args.early_arrivals),
        late_arrivals_ms: millis(args.late_arrivals),
        parallelism: args.parallelism.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        }),
    };
    // SIGTERM (a Job's pod being deleted) stops at the next progress point; the state is saved.
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wait_for_shutdown_signal().await;
            tracing::info!("shutdown requested; the backfill stops at its next progress point");
            stop.store(true, Ordering::Relaxed);
        }
    });
    let state = backfill::run(&config, &request, |state| {
        let progress = &state.progress;
        tracing::info!(
            partitions = format!("{}/{}", progress.partitions_done, progress.partitions_total),
            objects = format!("{}/{}", progress.read.objects, progress.objects_total),
            bytes = progress.read.bytes,
            clicks = progress.read.clicks,
            windows = progress.windows_rewritten,
            eta_seconds = progress.eta_seconds,
            "backfill progress"
        );
        if stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
    let progress = &state.progress;
    let read = &progress.read;
    println!(
        "backfill {}: windows {} .. {}{}",
        state.id,
        time::iso8601(state.covered_from_ms),
        time::iso8601(state.covered_to_ms),
        state
            .stopped_at_ms
            .map(|to| format!(
                " (stopped before the requested end {}: later windows are not complete yet)",
                time::iso8601(to)
            ))
            .unwrap_or_default()
    );
    println!(
        "read: {} objects, {:.1} MiB, {} records, {} clicks in range, {} outside, {} rejected, {} damaged objects",
        read.objects,
        read.bytes as f64 / (1024.0 * 1024.0),
        read.records,
        read.clicks,
        read.outside_range,
        read.rejected_total(),
        read.corrupt_objects
    );
    for (reason, count) in &read.rejected {
        println!("  rejected {reason:<22} {count}");
    }
    println!(
        "partitions: {}/{} done, {} changed; {} windows, {} rows written",
        progress.partitions_done,
        progress.partitions_total,
        progress.partitions_changed,
        progress.windows_rewritten,
        progress.rows_written
    );
    if state.finished_at_ms.is_none() {
        return Err("stopped before the end; run the same command again to resume".into());
    }
    Ok(())
}

async fn generate(args: GenerateArgs) -> CliResult {
    let options = args.synth.options(args.events);
    if let Some(archive) = &args.archive {
        let mut writer = FirehoseWriter::new(
            Location::open(archive)?,
            "clicks",
            args.compression,
            args.buffer_size_mib.max(1) * 1024 * 1024,
            i64::try_from(args.buffer_interval.as_millis()).unwrap_or(i64::MAX),
        );
        let mut generator = Generator::new(options);
        let mut line = Vec::with_capacity(512);
        for _ in 0..args.events {
            let Some(record) = generator.next() else {
                break;
            };
            line.clear();
            record.write_json(&mut line);
            line.push(b'\n');
            // A click reaches the stream when it is the newest: late ones arrive with the others.
            writer.push(generator.clock_ms(), &line).await?;
        }
        let (objects, bytes) = writer.finish().await?;
        eprintln!(
            "wrote {} records into {objects} {} objects ({:.1} MiB) below {archive}",
            args.events,
            args.compression.firehose_name(),
            bytes as f64 / (1024.0 * 1024.0)
        );
        return Ok(());
    }
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).map_err(|err| format!("creating {}: {err}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    write_synthetic(options, args.events, sink)?;
    Ok(())
}

fn write_synthetic(options: SynthOptions, events: u64, sink: impl Write) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let mut line = Vec::with_capacity(512);
    for record in Generator::new(options).take(events as usize) {
        line.clear();
        record.write_json(&mut line);
        line.push(b'\n');
        out.write_all(&line)?;
    }
    out.flush()
}

async fn demo(args: DemoArgs) -> CliResult {
    let input_dir = args.dir.join("input");
    let curated_dir = args.dir.join("curated");
    let heatmap_dir = args.dir.join("heatmaps");
    for dir in [&input_dir, &heatmap_dir] {
        std::fs::create_dir_all(dir).map_err(|err| format!("creating {}: {err}", dir.display()))?;
    }
    // The demo owns this folder; yesterday's run would otherwise add up with today's.
    if curated_dir.exists() {
        std::fs::remove_dir_all(&curated_dir)
            .map_err(|err| format!("clearing {}: {err}", curated_dir.display()))?;
    }
    let input = input_dir.join("clicks.ndjson");
    let options = args.synth.options(args.events);
    let file =
        File::create(&input).map_err(|err| format!("creating {}: {err}", input.display()))?;
    write_synthetic(options, args.events, file)?;
    println!(
        "generated {} synthetic records into {}",
        args.events,
        input.display()
    );

    let mut config = AggregatorConfig::default();
    config.output.root = path_string(&curated_dir)?;
    let report = aggregate_inputs(&config, &[path_string(&input)?]).await?;
    print_report(&report);

    // The demo's query: everything whose window ended within the last hour.
    let location = Location::open(&config.output.root)?;
    let table = location.child(&config.output.table);
    let range = TimeRange {
        from_ms: Some(time::now_ms() - 3_600_000),
        to_ms: None,
    };
    let rows = read_rows(&location.store, &table, &range).await?;
    let heatmaps = Heatmaps::from_rows(&rows);
    println!(
        "\nSUM(clicks) per page over the last hour ({} curated rows):",
        rows.len()
    );
    for page in heatmaps.cells.keys() {
        let counts = heatmaps.grid_counts(page, config.grid.columns, config.grid.rows);
        let image = render_heatmap(
            &GridCounts {
                columns: config.grid.columns,
                rows: config.grid.rows,
                counts: &counts,
            },
            &RenderOptions {
                width: 960,
                height: 540,
                draw_grid_lines: true,
            },
        )?;
        let png = heatmap_dir.join(format!("{}.png", safe_file_name(page)));
        std::fs::write(&png, encode_png(&image)?)
            .map_err(|err| format!("writing {}: {err}", png.display()))?;
        let top: Vec<String> = heatmaps
            .ranked(page)
            .iter()
            .take(3)
            .map(|((x, y), clicks)| format!("({x},{y})={clicks}"))
            .collect();
        println!(
            "  {page:<10} {:>8} clicks  hottest cells {}  -> {}",
            heatmaps.total(page),
            top.join(" "),
            png.display()
        );
    }
    println!(
        "\ncurated Parquet: {}/{}/dt=YYYY-MM-DD/hour=HH/  dead letters: {}/dead_letter/",
        curated_dir.display(),
        config.output.table,
        curated_dir.display()
    );
    Ok(())
}

async fn query(args: QueryArgs) -> CliResult {
    let location = Location::open(&args.output)?;
    let table = location.child(&args.table);
    let range = if args.all {
        TimeRange::default()
    } else {
        let last = i64::try_from(args.last.as_millis()).unwrap_or(i64::MAX);
        TimeRange {
            from_ms: Some(time::now_ms().saturating_sub(last)),
            to_ms: None,
        }
    };
    let rows = read_rows(&location.store, &table, &range).await?;
    let heatmaps = Heatmaps::from_rows(&rows);
    let mut out = std::io::stdout().lock();
    match print_heatmaps(&mut out, &heatmaps, args.page.as_deref(), args.limit) {
        // `query | head` closes the pipe early: that is the reader's choice, not an error.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

fn print_heatmaps(
    out: &mut impl Write,
    heatmaps: &Heatmaps,
    only_page: Option<&str>,
    limit: usize,
) -> std::io::Result<()> {
    for page in heatmaps.cells.keys() {
        if only_page.is_some_and(|wanted| wanted != page) {
            continue;
        }
        writeln!(out, "page {page}: {} clicks", heatmaps.total(page))?;
        writeln!(out, "  grid_x grid_y   clicks")?;
        for ((x, y), clicks) in heatmaps.ranked(page).into_iter().take(limit) {
            writeln!(out, "  {x:>6} {y:>6} {clicks:>8}")?;
        }
    }
    if heatmaps.cells.is_empty() {
        writeln!(out, "no curated rows in the range")?;
    }
    out.flush()
}

fn path_string(path: &FsPath) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))
}

/// A page id made safe as a file name.
fn safe_file_name(page_id: &str) -> String {
    page_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
