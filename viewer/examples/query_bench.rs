//! Measures the viewer's local engine (embedded DataFusion) on a curated folder: the page list
//! and the heatmap of the busiest page, over the whole table and over one hour of it.
//!
//! ```text
//! B=target/debug/clickheatmap-aggregator
//! $B generate --events 5000000 --clicks-per-second 60 --output /tmp/clicks.ndjson
//! $B run /tmp/clicks.ndjson --output /tmp/bench-curated
//! cargo run --release -p clickheatmap-viewer --example query_bench -- /tmp/bench-curated 20
//! ```
//!
//! Prints the median and slowest wall time of each query, the files it opened and the peak RSS.

use std::time::{Duration, Instant};

use clickheatmap_viewer::engine::local::{LocalEngine, LocalSettings};
use clickheatmap_viewer::engine::{HeatmapEngine, HeatmapQuery};
use clickheatmap_viewer::params::{PageId, QueryRange};
use clickheatmap_viewer::sql::{Identifier, TableName};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn report(what: &str, mut times: Vec<Duration>, files: Option<usize>, rows: usize) {
    times.sort();
    let median = times[times.len() / 2];
    let slowest = times[times.len() - 1];
    println!(
        "{what:<34} median {:>7.1} ms  slowest {:>7.1} ms  {:>5} files  {rows} rows",
        median.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0,
        files.unwrap_or(0),
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .ok_or("usage: query_bench <curated root> [repeats]")?;
    let repeats: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20);
    let table = TableName {
        database: Identifier::parse("database", "heatmap_demo")?,
        table: Identifier::parse("table", "curated_heatmap")?,
    };
    let engine = LocalEngine::open(
        &root,
        table,
        LocalSettings {
            max_window_ms: 60_000,
            ..LocalSettings::default()
        },
    )?;
    let everything = QueryRange {
        from_ms: 0,
        to_ms: 4_102_444_800_000,
    };

    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let started = Instant::now();
        last = Some(engine.pages(everything).await?);
        times.push(started.elapsed());
    }
    let pages = last.ok_or("no repeats")?;
    let top = pages.pages.first().ok_or("the table is empty")?;
    let total: i64 = pages.pages.iter().map(|page| page.clicks).sum();
    println!(
        "{} pages, {total} clicks; busiest {} ({} clicks)",
        pages.pages.len(),
        top.page_id,
        top.clicks
    );
    report(
        "page list, whole table",
        times,
        pages.query.files_read,
        pages.query.rows,
    );

    let page = PageId::parse(Some(&top.page_id))?;
    let measure = |range: QueryRange| {
        let query = HeatmapQuery {
            page: page.clone(),
            range,
        };
        let engine = &engine;
        async move {
            let mut times = Vec::new();
            let mut info = None;
            for _ in 0..repeats {
                let started = Instant::now();
                let result = engine.heatmap(&query).await?;
                times.push(started.elapsed());
                info = Some(result.query);
            }
            Ok::<_, Box<dyn std::error::Error>>((times, info))
        }
    };
    let (times, info) = measure(everything).await?;
    let info = info.ok_or("no repeats")?;
    report(
        "heatmap of one page, whole table",
        times,
        info.files_read,
        info.rows,
    );

    // The hour before the newest data: what the viewer asks for by default.
    let newest = engine
        .raw_sql("SELECT MAX(window_end) FROM curated_heatmap")
        .await?
        .rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .ok_or("no window_end")?
        .parse::<i64>()?;
    let (times, info) = measure(QueryRange {
        from_ms: newest - 3_600_000,
        to_ms: newest + 1,
    })
    .await?;
    let info = info.ok_or("no repeats")?;
    report(
        "heatmap of one page, last hour",
        times,
        info.files_read,
        info.rows,
    );
    println!("peak RSS {:.0} MiB", peak_rss_mib().unwrap_or(f64::NAN));
    Ok(())
}
