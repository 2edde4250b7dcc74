//! Backfill from the raw archive: the archive written as Firehose writes it (every compression),
//! rebuilt into the table and compared per (page, window, cell) with what the live path makes of
//! the same clicks; replacement that converges and leaves other windows alone; a stopped
//! backfill resuming; damaged objects; the live watermark; the local stream log through the
//! binary; and, on S3 (moto), readers that never see a mix while partitions are replaced.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clickheatmap_aggregator::aggregate::Aggregator;
use clickheatmap_aggregator::archive::{FirehoseWriter, HOUR_MS};
use clickheatmap_aggregator::backfill::{self, BackfillRequest};
use clickheatmap_aggregator::compression::{Compression, decoded};
use clickheatmap_aggregator::location::Location;
use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_aggregator::query::{TimeRange, read_rows};
use clickheatmap_aggregator::sink::CuratedSink;
use clickheatmap_aggregator::synth::{Generator, SynthOptions};
use clickheatmap_aggregator::time::now_ms;
use clickheatmap_crds::AggregatorConfig;
use clickheatmap_crds::backfill_state::BackfillState;
use clickheatmap_testkit::MotoServer;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

type Cells = BTreeMap<(String, i64, i32, i32), i64>;

const ALL: [Compression; 5] = [
    Compression::Uncompressed,
    Compression::Gzip,
    Compression::Zip,
    Compression::Snappy,
    Compression::HadoopSnappy,
];

/// An hour boundary two days back: old enough that the archive is complete.
fn start() -> i64 {
    (now_ms() - 2 * 86_400_000).div_euclid(HOUR_MS) * HOUR_MS
}

/// Synthetic records (1% invalid, some minutes late) with the time each reached the stream.
fn records(seed: u64, start_ms: i64, count: usize) -> Vec<(i64, Vec<u8>)> {
    let mut generator = Generator::new(SynthOptions {
        seed,
        start_ms,
        clicks_per_second: 5.0,
        late_share: 0.01,
        ..SynthOptions::default()
    });
    (0..count)
        .map(|_| {
            let record = generator.next().unwrap();
            let mut line = Vec::new();
            record.write_json(&mut line);
            line.push(b'\n');
            (generator.clock_ms(), line)
        })
        .collect()
}

async fn write_archive(location: Location, compression: Compression, records: &[(i64, Vec<u8>)]) {
    // Small buffers: many objects, several per hour folder.
    let mut writer = FirehoseWriter::new(location, "clicks", compression, 256 * 1024, 600_000);
    for (arrival, line) in records {
        writer.push(*arrival, line).await.unwrap();
    }
    writer.finish().await.unwrap();
}

fn config(root: &str) -> AggregatorConfig {
    let mut config = AggregatorConfig::default();
    config.output.root = root.to_owned();
    config
}

/// What the live file path writes for `input`, as a table below `root` by writer `writer`.
async fn live(store: Arc<dyn ObjectStore>, table: &str, writer: &str, input: &[u8]) {
    let config = AggregatorConfig::default();
    let sink = CuratedSink::new(store, Path::from(table), None, writer);
    let mut pipeline = Pipeline::new(Aggregator::new(&config, false), sink);
    pipeline.consume(0, "input", input).await.unwrap();
    pipeline.finish().await.unwrap();
}

async fn cells(store: &Arc<dyn ObjectStore>, table: &str) -> Cells {
    let mut cells = Cells::new();
    for row in read_rows(store, &Path::from(table), &TimeRange::default())
        .await
        .unwrap()
    {
        *cells
            .entry((row.page_id, row.window_start, row.grid_x, row.grid_y))
            .or_insert(0) += row.clicks;
    }
    cells.retain(|_, clicks| *clicks != 0);
    cells
}

fn within(cells: &Cells, from: i64, to: i64) -> Cells {
    cells
        .iter()
        .filter(|((_, start, _, _), _)| *start >= from && *start + 60_000 <= to)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn ndjson(records: &[(i64, Vec<u8>)]) -> Vec<u8> {
    records.iter().flat_map(|(_, line)| line.clone()).collect()
}

fn local(dir: &std::path::Path) -> Location {
    Location::open(dir.to_str().unwrap()).unwrap()
}

fn request(id: &str, archive: &str, from_ms: i64, to_ms: i64) -> BackfillRequest {
    BackfillRequest {
        id: id.to_owned(),
        archive: archive.to_owned(),
        from_ms,
        to_ms,
        early_arrivals_ms: BackfillRequest::DEFAULT_EARLY_ARRIVALS_MS,
        late_arrivals_ms: BackfillRequest::DEFAULT_LATE_ARRIVALS_MS,
        parallelism: 3,
    }
}

async fn run(config: &AggregatorConfig, request: &BackfillRequest) -> BackfillState {
    backfill::run(config, request, |_| ControlFlow::Continue(()))
        .await
        .unwrap()
}

#[tokio::test]
async fn every_compression_rebuilds_exactly_what_the_live_path_writes() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let input = records(1, start, 40_000);
    let expected_store = local(&dir.path().join("live")).store;
    live(expected_store.clone(), "t", "live", &ndjson(&input)).await;
    let expected = cells(&expected_store, "t").await;
    assert!(expected.len() > 1_000);
    for compression in ALL {
        let name = compression.firehose_name();
        let archive = dir.path().join(format!("raw-{name}"));
        write_archive(local(&archive), compression, &input).await;
        let out = dir.path().join(format!("out-{name}"));
        let config = config(out.to_str().unwrap());
        let state = run(
            &config,
            &request(
                "all",
                archive.to_str().unwrap(),
                start - HOUR_MS,
                start + 6 * HOUR_MS,
            ),
        )
        .await;
        let store = local(&out).store;
        assert_eq!(cells(&store, "curated_heatmap").await, expected, "{name}");
        let read = &state.progress.read;
        assert_eq!(read.records, 40_000, "{name}");
        assert_eq!(read.corrupt_objects, 0);
        assert!(
            read.rejected_total() > 200,
            "the 1% invalid records are counted"
        );
        assert_eq!(read.clicks + read.rejected_total(), read.records);
        assert!(state.finished_at_ms.is_some());
        // Rejected records are dead-lettered with their reason, as on the live path.
        let dead: usize = std::fs::read_dir(out.join("dead_letter"))
            .unwrap()
            .map(|entry| {
                std::fs::read_to_string(entry.unwrap().path())
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        assert_eq!(dead as u64, read.rejected_total(), "{name}");
    }
}

#[tokio::test]
async fn replacement_is_exact_converges_and_leaves_other_windows_alone() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let input = records(2, start, 30_000);
    let archive = dir.path().join("raw");
    write_archive(local(&archive), Compression::Gzip, &input).await;
    let expected_store = local(&dir.path().join("expected")).store;
    live(expected_store.clone(), "t", "live", &ndjson(&input)).await;
    let expected = cells(&expected_store, "t").await;

    // The table a buggy aggregator left: everything counted twice (two writers), and one
    // window's file lost.
    let out = dir.path().join("out");
    let store = local(&out).store;
    live(store.clone(), "curated_heatmap", "a", &ndjson(&input)).await;
    live(store.clone(), "curated_heatmap", "b", &ndjson(&input)).await;
    let lost = store
        .list(Some(&Path::from("curated_heatmap")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|meta| meta.location)
        .filter(|path| path.filename().unwrap().starts_with("a-"))
        .nth(40)
        .unwrap();
    store.delete(&lost).await.unwrap();
    let before = cells(&store, "curated_heatmap").await;

    // Rebuild the middle, from half past the first hour to half past the second: windows
    // outside it share its two partitions.
    let (from, to) = (start + HOUR_MS / 2, start + 3 * HOUR_MS / 2);
    let config = config(out.to_str().unwrap());
    let first = run(
        &config,
        &request("fix", archive.to_str().unwrap(), from, to),
    )
    .await;
    assert_eq!(
        (first.covered_from_ms, first.covered_to_ms),
        (from, to),
        "minute-aligned requests cover whole windows"
    );
    assert_eq!(first.progress.partitions_done, 2);
    assert_eq!(first.progress.partitions_changed, 2);
    let after = cells(&store, "curated_heatmap").await;
    assert_eq!(within(&after, from, to), within(&expected, from, to));
    // Outside the range nothing moved: still doubled.
    let outside = |cells: &Cells| -> Cells {
        cells
            .iter()
            .filter(|((_, s, _, _), _)| *s < from || *s >= to)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(outside(&after), outside(&before));

    // The same request again with another id finds nothing to change.
    let again = run(
        &config,
        &request("again", archive.to_str().unwrap(), from, to),
    )
    .await;
    assert_eq!(again.progress.partitions_changed, 0);
    assert_eq!(cells(&store, "curated_heatmap").await, after);
    // A finished backfill run again is done already; one started over converges to its file.
    let done = run(
        &config,
        &request("fix", archive.to_str().unwrap(), from, to),
    )
    .await;
    assert_eq!(done.finished_at_ms, first.finished_at_ms);
    std::fs::remove_file(out.join("_checkpoints/_backfills/fix.json")).unwrap();
    run(
        &config,
        &request("fix", archive.to_str().unwrap(), from, to),
    )
    .await;
    assert_eq!(cells(&store, "curated_heatmap").await, after);
    // The same id with another range is refused.
    let other = backfill::run(
        &config,
        &request("fix", archive.to_str().unwrap(), from, to + HOUR_MS),
        |_| ControlFlow::Continue(()),
    )
    .await
    .unwrap_err();
    assert!(other.to_string().contains("another request"), "{other}");

    // The whole range: the table equals the live path's output everywhere.
    run(
        &config,
        &request(
            "whole",
            archive.to_str().unwrap(),
            start - HOUR_MS,
            start + 4 * HOUR_MS,
        ),
    )
    .await;
    assert_eq!(cells(&store, "curated_heatmap").await, expected);
}

#[tokio::test]
async fn a_stopped_backfill_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let input = records(3, start, 40_000);
    let archive = dir.path().join("raw");
    write_archive(local(&archive), Compression::Snappy, &input).await;
    let expected_store = local(&dir.path().join("expected")).store;
    live(expected_store.clone(), "t", "live", &ndjson(&input)).await;
    let expected = cells(&expected_store, "t").await;

    let out = dir.path().join("out");
    let config = config(out.to_str().unwrap());
    let whole = request(
        "resume",
        archive.to_str().unwrap(),
        start - HOUR_MS,
        start + 4 * HOUR_MS,
    );
    let stopped = backfill::run(&config, &whole, |state| {
        if state.progress.partitions_done >= 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await
    .unwrap();
    assert!(stopped.finished_at_ms.is_none());
    assert_eq!(stopped.progress.partitions_done, 2);
    assert!(stopped.progress.read.objects < stopped.progress.objects_total);
    let finished = run(&config, &whole).await;
    assert!(finished.finished_at_ms.is_some());
    assert_eq!(cells(&local(&out).store, "curated_heatmap").await, expected);
    // Progress counts every object and record once, across the two runs.
    let read = &finished.progress.read;
    assert_eq!(read.objects, finished.progress.objects_total);
    assert_eq!(read.records, 40_000);
    assert_eq!(
        finished.progress.partitions_done,
        finished.progress.partitions_total
    );
}

#[tokio::test]
async fn damaged_objects_are_counted_kept_and_the_rest_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let input = records(4, start, 30_000);
    let archive = dir.path().join("raw");
    write_archive(local(&archive), Compression::Gzip, &input).await;
    // Truncate one object halfway, as an interrupted upload would leave it.
    let mut objects: Vec<_> = walk(&archive);
    objects.sort();
    let damaged = objects[objects.len() / 2].clone();
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    // The live path's output over every other object.
    let mut intact = Vec::new();
    for object in objects.iter().filter(|o| **o != damaged) {
        let file = std::fs::File::open(object).unwrap();
        std::io::Read::read_to_end(&mut decoded(file).unwrap(), &mut intact).unwrap();
    }
    let expected_store = local(&dir.path().join("expected")).store;
    live(expected_store.clone(), "t", "live", &intact).await;
    let expected = cells(&expected_store, "t").await;

    let out = dir.path().join("out");
    let state = run(
        &config(out.to_str().unwrap()),
        &request(
            "damaged",
            archive.to_str().unwrap(),
            start - HOUR_MS,
            start + 4 * HOUR_MS,
        ),
    )
    .await;
    assert_eq!(state.progress.read.corrupt_objects, 1);
    assert_eq!(cells(&local(&out).store, "curated_heatmap").await, expected);
    let kept = out
        .join("dead_letter/backfill-damaged-objects")
        .join(damaged.file_name().unwrap());
    assert_eq!(std::fs::read(kept).unwrap(), bytes[..bytes.len() / 2]);
}

#[tokio::test]
async fn the_range_stops_where_the_live_aggregator_still_holds_windows_open() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let archive = dir.path().join("raw");
    write_archive(
        local(&archive),
        Compression::Gzip,
        &records(5, start, 5_000),
    )
    .await;
    let out = dir.path().join("out");
    let mut config = config(out.to_str().unwrap());
    config.source = serde_json::from_value(serde_json::json!({
        "type": "kinesis", "streamName": "clicks"
    }))
    .unwrap();
    let open_from = start + HOUR_MS + 30 * 60_000;
    let checkpoint = serde_json::json!({
        "version": 1, "stream": "clicks", "shardId": "shardId-000000000001", "epoch": 7,
        "sequenceNumber": "1", "shardFinished": false, "flushSequence": 3,
        "windows": { "clocks": [], "closedBefore": open_from, "correctionsSince": null,
                     "lateClicks": 0, "open": [], "corrections": [] }
    });
    std::fs::create_dir_all(out.join("_checkpoints/clicks")).unwrap();
    std::fs::write(
        out.join("_checkpoints/clicks/shardId-000000000001.json"),
        checkpoint.to_string(),
    )
    .unwrap();
    let state = run(
        &config,
        &request(
            "capped",
            archive.to_str().unwrap(),
            start,
            start + 3 * HOUR_MS,
        ),
    )
    .await;
    assert_eq!(state.covered_to_ms, open_from);
    assert_eq!(state.stopped_at_ms, Some(start + 3 * HOUR_MS));
    let error = backfill::run(
        &config,
        &request(
            "later",
            archive.to_str().unwrap(),
            open_from,
            start + 3 * HOUR_MS,
        ),
        |_| ControlFlow::Continue(()),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("nothing to backfill yet"),
        "{error}"
    );
}

/// A click counts only from the folders of its window's arrival margins: one stamped hours ahead
/// of its arrival is not counted (whichever folder a resumed run starts at, the count is the same).
#[tokio::test]
async fn clicks_outside_their_arrival_margins_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let click = |t: i64| {
        format!(
            r#"{{"event_type":"click","event_time_ms":{t},"page_id":"p","x":1,"y":1,"viewport_width":10,"viewport_height":10}}"#
        )
        .into_bytes()
    };
    let archive = dir.path().join("raw");
    let mut writer = FirehoseWriter::new(
        local(&archive),
        "clicks",
        Compression::Gzip,
        1 << 20,
        60_000,
    );
    // Arrives in the first hour; one stamped 30 minutes later, one three hours ahead.
    writer
        .push(start + 60_000, &click(start + 30 * 60_000))
        .await
        .unwrap();
    writer
        .push(start + 60_000, &click(start + 3 * HOUR_MS))
        .await
        .unwrap();
    writer.finish().await.unwrap();
    let out = dir.path().join("out");
    let state = run(
        &config(out.to_str().unwrap()),
        &request(
            "margins",
            archive.to_str().unwrap(),
            start,
            start + 4 * HOUR_MS,
        ),
    )
    .await;
    assert_eq!(
        (
            state.progress.read.clicks,
            state.progress.read.outside_range
        ),
        (1, 1)
    );
    let counted = cells(&local(&out).store, "curated_heatmap").await;
    assert_eq!(counted.values().sum::<i64>(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clickheatmap-aggregator"))
}

#[tokio::test]
async fn local_mode_s_stream_log_is_backfilled_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let start = start();
    let input = records(6, start, 20_000);
    // Local mode's stream log: one NDJSON file, records in arrival order.
    let log = dir.path().join("stream/clicks.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, ndjson(&input)).unwrap();
    let expected_store = local(&dir.path().join("expected")).store;
    live(expected_store.clone(), "t", "live", &ndjson(&input)).await;
    let expected = cells(&expected_store, "t").await;

    let out = dir.path().join("curated");
    let output = binary()
        .args(["backfill", "--id", "local", "--archive"])
        .arg(&log)
        .arg("--output")
        .arg(&out)
        .args([
            "--from",
            &clickheatmap_aggregator::time::iso8601(start - HOUR_MS),
            "--to",
            &(start + 4 * HOUR_MS).to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("read: 1 objects"), "{stdout}");
    assert_eq!(cells(&local(&out).store, "curated_heatmap").await, expected);

    // A re-grid into a new table: five-minute windows, the same clicks in all.
    let regrid = binary()
        .args([
            "backfill",
            "--id",
            "five-minutes",
            "--table",
            "by_five_minutes",
            "--window",
            "5m",
        ])
        .arg("--archive")
        .arg(&log)
        .arg("--output")
        .arg(&out)
        .args([
            "--from",
            &(start - HOUR_MS).to_string(),
            "--to",
            &(start + 4 * HOUR_MS).to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        regrid.status.success(),
        "{}",
        String::from_utf8_lossy(&regrid.stderr)
    );
    let regridded = cells(&local(&out).store, "by_five_minutes").await;
    assert!(
        regridded
            .keys()
            .all(|(_, start, _, _)| start % 300_000 == 0)
    );
    assert_eq!(
        regridded.values().sum::<i64>(),
        expected.values().sum::<i64>()
    );

    let bad = binary()
        .args(["backfill", "--id", "Bad_Id", "--archive"])
        .arg(&log)
        .args(["--from", "2026-12-01", "--to", "yesterday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not an instant"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

fn s3(moto: &MotoServer, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
    )
}

/// Per hour partition, the sum of its clicks, listing and reading the way the viewer does.
async fn partition_sums(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, i64> {
    let mut sums = BTreeMap::new();
    for row in read_rows(
        store,
        &Path::from("curated/curated_heatmap"),
        &TimeRange::default(),
    )
    .await
    .unwrap()
    {
        *sums
            .entry(clickheatmap_aggregator::sink::partition_of(
                row.window_start,
            ))
            .or_insert(0) += row.clicks;
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_every_compression_replaces_partitions_that_readers_never_see_half_done() {
    let moto = MotoServer::start();
    moto.create_bucket("raw");
    moto.create_bucket("curated");
    let raw = s3(&moto, "raw");
    let curated = s3(&moto, "curated");
    let start = start();
    let input = records(7, start, 30_000);
    // One archive with objects of every compression, as a stream whose compression setting
    // changed over time would leave it.
    let per_compression = input.len() / ALL.len() + 1;
    for (chunk, compression) in input.chunks(per_compression).zip(ALL) {
        write_archive(
            Location {
                store: raw.clone(),
                prefix: Path::from("raw"),
            },
            compression,
            chunk,
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let expected_store = local(&dir.path().join("expected")).store;
    live(expected_store.clone(), "t", "live", &ndjson(&input)).await;
    let expected = cells(&expected_store, "t").await;

    // The table counts everything twice.
    live(
        curated.clone(),
        "curated/curated_heatmap",
        "a",
        &ndjson(&input),
    )
    .await;
    live(
        curated.clone(),
        "curated/curated_heatmap",
        "b",
        &ndjson(&input),
    )
    .await;
    let doubled = partition_sums(&curated).await;

    // A reader sums each partition over and over while the backfill replaces them.
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (curated, done, doubled) = (curated.clone(), done.clone(), doubled.clone());
        async move {
            let mut reads = 0;
            let mut replaced_seen = 0;
            while !done.load(Ordering::Relaxed) {
                for (partition, sum) in partition_sums(&curated).await {
                    let old = doubled[&partition];
                    assert!(
                        sum == old || sum * 2 == old,
                        "{partition}: a reader saw {sum}, neither {old} nor {}",
                        old / 2
                    );
                    replaced_seen += usize::from(sum * 2 == old);
                }
                reads += 1;
            }
            (reads, replaced_seen)
        }
    });
    let config = serde_json::json!({ "output": { "root": "s3://curated/curated/" } });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = binary()
        .args([
            "--log-format",
            "json",
            "backfill",
            "--id",
            "s3",
            "--archive",
            "s3://raw/raw/",
        ])
        .arg("--config")
        .arg(&config_path)
        .args([
            "--from",
            &(start - HOUR_MS).to_string(),
            "--to",
            &(start + 4 * HOUR_MS).to_string(),
            "--parallelism",
            "4",
        ])
        .envs(moto.aws_env())
        .output()
        .unwrap();
    done.store(true, Ordering::Relaxed);
    let (reads, _) = reader.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(reads > 0);
    assert!(stdout.contains("0 damaged objects"), "{stdout}");
    assert_eq!(cells(&curated, "curated/curated_heatmap").await, expected);
    // The state, where the operator reads progress, says it finished.
    let state: BackfillState = serde_json::from_slice(
        &curated
            .get(&Path::from("curated/_checkpoints/_backfills/s3.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(state.finished_at_ms.is_some());
    assert_eq!(state.progress.read.records, 30_000);
}
