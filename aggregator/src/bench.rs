//! The end-to-end throughput benchmark: NDJSON bytes on disk → parse → grid → windows →
//! Parquet files, single-threaded. Prints events/s per CPU second (per core) and peak RSS.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_aggregator::synth::SynthOptions;
use clickheatmap_crds::AggregatorConfig;

use crate::{CliResult, path_string, write_synthetic};

#[derive(Args)]
pub struct BenchArgs {
    /// Number of records in the generated dataset.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Where the dataset and the output go (the dataset is kept and reused).
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Runs over the same data; the best is reported too.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Clicks per second of event time: how many one-minute windows the records span (200:
    /// hours of windows, a quiet site; 6400: two Kinesis shards at their write limit).
    #[arg(long, default_value_t = 200)]
    clicks_per_second: u32,
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s on every architecture we run on.
    Some((user + system) / 100.0)
}

/// Peak resident set size in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn run(args: BenchArgs) -> CliResult {
    std::fs::create_dir_all(&args.dir)
        .map_err(|err| format!("creating {}: {err}", args.dir.display()))?;
    let data = match args.clicks_per_second {
        200 => args.dir.join(format!("clicks-{}.ndjson", args.events)),
        rate => args
            .dir
            .join(format!("clicks-{}-{rate}-per-s.ndjson", args.events)),
    };
    if !data.exists() {
        println!(
            "generating {} records into {} ...",
            args.events,
            data.display()
        );
        // A fixed start keeps the dataset identical between runs and machines.
        let options = SynthOptions {
            start_ms: 1_766_919_000_000,
            clicks_per_second: f64::from(args.clicks_per_second),
            ..SynthOptions::default()
        };
        let partial = data.with_extension("partial");
        let file = File::create(&partial)
            .map_err(|err| format!("creating {}: {err}", partial.display()))?;
        write_synthetic(options, args.events, file)?;
        std::fs::rename(&partial, &data)
            .map_err(|err| format!("renaming {}: {err}", partial.display()))?;
    }
    let bytes = std::fs::metadata(&data)
        .map_err(|err| format!("reading {}: {err}", data.display()))?
        .len();
    let out = args.dir.join("out");
    println!(
        "dataset: {} ({} records, {:.0} MiB, {:.0} bytes/record)",
        data.display(),
        args.events,
        bytes as f64 / 1048576.0,
        bytes as f64 / args.events.max(1) as f64
    );
    let mut best = 0.0f64;
    for run in 1..=args.runs.max(1) {
        if out.exists() {
            std::fs::remove_dir_all(&out)
                .map_err(|err| format!("clearing {}: {err}", out.display()))?;
        }
        let mut config = AggregatorConfig::default();
        config.output.root = path_string(&out)?;
        let mut pipeline = Pipeline::open(&config)?;
        // The dataset is from a fixed date; its clock must not reject it as "from the future".
        pipeline.aggregator().set_clock(1_766_919_000_000);
        let file = File::open(&data).map_err(|err| format!("opening {}: {err}", data.display()))?;
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        pipeline.consume(0, "bench", file).await?;
        let report = pipeline.finish().await?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = match (cpu_before, cpu_seconds()) {
            (Some(before), Some(after)) if after > before => after - before,
            _ => wall,
        };
        let per_core = report.counters.records as f64 / cpu;
        best = best.max(per_core);
        println!(
            "run {run}: {:.2}s wall, {:.2} CPU s: {:.2} M events/s per core ({:.0} MB/s), {:.2} M events/s wall; \
             {} clicks, {} rejected, {} late; {} files, {:.1} MiB written; peak RSS {:.0} MiB",
            wall,
            cpu,
            per_core / 1e6,
            bytes as f64 / cpu / 1e6,
            report.counters.records as f64 / wall / 1e6,
            report.counters.clicks,
            report.counters.rejected_total(),
            report.counters.late_clicks,
            report.written.files,
            report.written.bytes as f64 / 1048576.0,
            peak_rss_mib().unwrap_or(f64::NAN),
        );
    }
    println!("best: {:.2} M events/s per core", best / 1e6);
    Ok(())
}
