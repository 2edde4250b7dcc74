//! The curated output as Glue and Athena see it: the exact Parquet schema, the partition layout
//! from window_start in UTC, the demo query's numbers, replays that rewrite instead of adding, and
//! the command-line path (generate → run → query) through the real binary.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::process::{Command, Stdio};

use arrow_schema::DataType;
use clickheatmap_aggregator::location::Location;
use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_aggregator::query::{Heatmaps, TimeRange, read_rows};
use clickheatmap_crds::AggregatorConfig;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// 2025-12-28T23:58:00Z
const BEFORE_MIDNIGHT: i64 = 1_766_966_280_000;

fn click(page: &str, t: i64, x: f64, y: f64) -> String {
    format!(
        r#"{{"event_type":"click","event_time":"-","event_time_ms":{t},"page_id":"{page}","x":{x},"y":{y},"viewport_width":1000,"viewport_height":500,"dpr":2,"user_agent":"test"}}"#
    )
}

/// Every file below `root`, as sorted relative paths.
fn files_under(root: &FsPath) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// Aggregates the parts one after another (windows close between parts), then finishes.
async fn aggregate(root: &FsPath, parts: &[String]) {
    let mut config = AggregatorConfig::default();
    config.output.root = root.to_str().unwrap().to_owned();
    let mut pipeline = Pipeline::open(&config).unwrap();
    pipeline.aggregator().set_clock(BEFORE_MIDNIGHT);
    for part in parts {
        pipeline.consume(0, "test", part.as_bytes()).await.unwrap();
    }
    pipeline.finish().await.unwrap();
}

fn input() -> Vec<String> {
    let on_time = [
        click("home", BEFORE_MIDNIGHT + 1_000, 0.0, 0.0),
        click("home", BEFORE_MIDNIGHT + 2_000, 999.0, 499.0),
        click("home", BEFORE_MIDNIGHT + 2_500, 1000.0, 250.0),
        click("home", BEFORE_MIDNIGHT + 61_000, 525.0, 260.0),
        // Next day, hour 00.
        click("home", BEFORE_MIDNIGHT + 125_000, 525.0, 260.0),
        click("pricing", BEFORE_MIDNIGHT + 126_000, 10.0, 10.0),
    ];
    let late = [
        // Late: its window [23:58, 23:59) closed long ago; it must still be counted.
        click("home", BEFORE_MIDNIGHT + 3_000, 0.0, 0.0),
        "{broken".to_owned(),
    ];
    vec![on_time.join("\n"), late.join("\n")]
}

#[tokio::test]
async fn schema_partitions_and_the_demo_query() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("curated");
    aggregate(&root, &input()).await;

    let files = files_under(&root);
    let parquet: Vec<&String> = files.iter().filter(|f| f.ends_with(".parquet")).collect();
    assert_eq!(
        parquet,
        vec![
            "curated_heatmap/dt=2025-12-28/hour=23/local-1766966280000.parquet",
            "curated_heatmap/dt=2025-12-28/hour=23/local-1766966340000.parquet",
            "curated_heatmap/dt=2025-12-28/hour=23/local-late-00000001.parquet",
            "curated_heatmap/dt=2025-12-29/hour=00/local-1766966400000.parquet",
        ],
        "all files: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("dead_letter/") && f.ends_with(".ndjson")),
        "{files:?}"
    );

    for file in &parquet {
        let bytes = bytes::Bytes::from(std::fs::read(root.join(file)).unwrap());
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let fields: Vec<(String, DataType, bool)> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("page_id".into(), DataType::Utf8, false),
                ("grid_x".into(), DataType::Int32, false),
                ("grid_y".into(), DataType::Int32, false),
                ("window_start".into(), DataType::Int64, false),
                ("window_end".into(), DataType::Int64, false),
                ("clicks".into(), DataType::Int64, false),
            ],
            "{file}"
        );
    }

    let location = Location::open(root.to_str().unwrap()).unwrap();
    let table = location.child("curated_heatmap");
    let all = read_rows(&location.store, &table, &TimeRange::default())
        .await
        .unwrap();
    // Every row sits in the partition of its window_start.
    let mut late_row = None;
    for row in &all {
        assert_eq!(row.window_end - row.window_start, 60_000);
        if row.window_start == BEFORE_MIDNIGHT && row.grid_x == 0 && row.grid_y == 0 {
            late_row.get_or_insert(Vec::new()).push(row.clicks);
        }
    }
    // The on-time row and the correction row of the same cell: SUM gives 2.
    assert_eq!(late_row, Some(vec![1, 1]));

    let heatmaps = Heatmaps::from_rows(&all);
    assert_eq!(heatmaps.total("home"), 6);
    assert_eq!(heatmaps.total("pricing"), 1);
    // x == width and the right edge clamp into the last column; (525, 260) → (10, 10).
    assert_eq!(
        heatmaps.ranked("home"),
        vec![((0, 0), 2), ((10, 10), 2), ((19, 10), 1), ((19, 19), 1)]
    );

    // The demo query: windows that ended at or after 00:00 → only the 23:59 and 00:00 windows.
    let recent = read_rows(
        &location.store,
        &table,
        &TimeRange {
            from_ms: Some(BEFORE_MIDNIGHT + 120_000),
            to_ms: None,
        },
    )
    .await
    .unwrap();
    let heatmaps = Heatmaps::from_rows(&recent);
    assert_eq!(heatmaps.cells["home"], BTreeMap::from([((10, 10), 2)]));
    assert_eq!(heatmaps.total("pricing"), 1);
}

#[tokio::test]
async fn a_replay_rewrites_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("curated");
    aggregate(&root, &input()).await;
    let first: Vec<(String, Vec<u8>)> = files_under(&root)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(root.join(&f)).unwrap();
            (f, bytes)
        })
        .collect();
    aggregate(&root, &input()).await;
    let second: Vec<(String, Vec<u8>)> = files_under(&root)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(root.join(&f)).unwrap();
            (f, bytes)
        })
        .collect();
    assert_eq!(
        first, second,
        "a replay must produce the same files, byte for byte"
    );
}

const BINARY: &str = env!("CARGO_BIN_EXE_clickheatmap-aggregator");

/// `generate`: synthetic clicks of `seed` into `path`.
fn generate(path: &FsPath, events: u32, seed: u32) {
    let status = Command::new(BINARY)
        .args([
            "generate",
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg("--output")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `query --all` over the curated output at `root`: its printed heatmap totals.
fn query_all(root: &FsPath) -> String {
    let query = Command::new(BINARY)
        .args(["query", "--all", "--output"])
        .arg(root)
        .output()
        .unwrap();
    assert!(query.status.success());
    String::from_utf8_lossy(&query.stdout).into_owned()
}

#[test]
fn the_command_line_path() {
    let binary = BINARY;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clicks.ndjson");
    generate(&input, 3000, 7);
    let root = dir.path().join("out");

    // Through stdin, as a backfill pipe would.
    let mut run = Command::new(binary)
        .args(["run", "--output"])
        .arg(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data = std::fs::read(&input).unwrap();
    std::io::Write::write_all(run.stdin.as_mut().unwrap(), &data).unwrap();
    drop(run.stdin.take());
    let output = run.wait_with_output().unwrap();
    assert!(output.status.success());
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("records: 3000"), "{summary}");

    let text = query_all(&root);
    let total: i64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("page "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    let counted: i64 = summary
        .split("clicks counted: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(counted > 2900, "{summary}");
    assert_eq!(total, counted, "query: {text}\nrun: {summary}");

    // A bad configuration is refused with a message naming the field.
    let config = dir.path().join("bad.json");
    std::fs::write(&config, r#"{"grid":{"columns":0}}"#).unwrap();
    let refused = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("grid.columns"));
}

/// Raw archive objects as Firehose compresses them go through `run <input>` and give exactly
/// the cells of the plain file.
#[test]
fn compressed_archive_objects_aggregate_like_the_plain_file() {
    use std::io::Write;

    let binary = BINARY;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("clicks.ndjson");
    generate(&plain, 2000, 11);
    let data = std::fs::read(&plain).unwrap();

    let gzip = {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&data).unwrap();
        encoder.finish().unwrap()
    };
    let snappy = {
        let mut encoder = snap::write::FrameEncoder::new(Vec::new());
        encoder.write_all(&data).unwrap();
        encoder.into_inner().unwrap()
    };
    let cells = |input: &FsPath, name: &str| -> String {
        let root = dir.path().join(format!("out-{name}"));
        let run = Command::new(binary)
            .args(["run", "--output"])
            .arg(&root)
            .arg(input)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        query_all(&root)
    };
    let expected = cells(&plain, "plain");
    assert!(expected.contains("page "), "{expected}");
    for (name, bytes) in [("gz", gzip), ("snappy", snappy)] {
        let path = dir.path().join(format!("clicks.{name}"));
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(cells(&path, name), expected, "{name}");
    }
    // Not an archive object: its bytes are records like any others — counted as rejected (and
    // dead-lettered), never dropped and never stopping the run.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, [0u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let run = Command::new(binary)
        .args(["run", "--output"])
        .arg(dir.path().join("out-junk"))
        .arg(&junk)
        .output()
        .unwrap();
    assert!(run.status.success());
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(summary.contains("rejected: 1"), "{summary}");
}
