//! Property tests of the whole data path, files included: for random valid and invalid clicks in
//! any arrival order and any batching, the curated Parquet read back sums to exactly the valid
//! clicks per (page, window, cell), computed here independently, and rejections match by reason.

use std::collections::BTreeMap;

use clickheatmap_aggregator::event::RejectReason;
use clickheatmap_aggregator::location::Location;
use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_aggregator::query::{TimeRange, read_rows};
use clickheatmap_crds::{AggregatorConfig, Duration};
use proptest::prelude::*;

const BASE_MS: i64 = 1_766_919_000_000;
const COLUMNS: u16 = 20;
const ROWS: u16 = 12;

#[derive(Clone, Debug)]
struct Click {
    page: &'static str,
    t: i64,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

impl Click {
    fn json(&self) -> String {
        // `{}` prints the shortest text that reads back as the same double.
        format!(
            r#"{{"event_type":"click","event_time_ms":{},"page_id":"{}","x":{},"y":{},"viewport_width":{},"viewport_height":{},"user_agent":"Mozilla/5.0 \"x\" {{]"}}"#,
            self.t, self.page, self.x, self.y, self.width, self.height
        )
    }

    /// The contract's grid formula, written out independently of the aggregator.
    fn cell(&self) -> (i32, i32) {
        let axis = |cells: u16, position: f64, extent: f64| {
            let raw = (f64::from(cells) * position / extent).floor();
            raw.max(0.0).min(f64::from(cells) - 1.0) as i32
        };
        (
            axis(COLUMNS, self.x, self.width),
            axis(ROWS, self.y, self.height),
        )
    }
}

#[derive(Clone, Debug)]
enum Record {
    Valid(Click),
    Invalid(String, RejectReason),
}

fn coordinate() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..2000.0f64,
        Just(0.0),
        Just(-0.0),
        -50.0..0.0f64,
        Just(1280.0),
        5_000.0..9_999_999.0f64,
    ]
}

fn click() -> impl Strategy<Value = Click> {
    (
        prop::sample::select(vec!["home", "pricing", "caf\u{e9}/\u{fc}ber", "a b"]),
        0i64..(3 * 3_600_000),
        coordinate(),
        coordinate(),
        prop_oneof![Just(1280.0), Just(390.0), 1.0..4000.0f64, Just(0.001)],
        prop_oneof![Just(720.0), Just(844.0), 1.0..4000.0f64],
    )
        .prop_map(|(page, offset, x, y, width, height)| Click {
            page,
            t: BASE_MS + offset,
            x,
            y,
            width,
            height,
        })
}

fn invalid() -> impl Strategy<Value = Record> {
    click().prop_flat_map(|c| {
        let valid = c.json();
        prop_oneof![
            Just(Record::Invalid(
                valid[..30].to_owned(),
                RejectReason::MalformedJson
            )),
            Just(Record::Invalid(
                valid.replace(r#""click""#, r#""hover""#),
                RejectReason::NotAClick
            )),
            Just(Record::Invalid(
                valid.replace(r#""x":"#, r#""x":"1","was":"#),
                RejectReason::WrongType
            )),
            Just(Record::Invalid(
                valid.replace(r#""y":"#, r#""why":"#),
                RejectReason::MissingField
            )),
            Just(Record::Invalid(
                valid.replace(r#""viewport_height":"#, r#""viewport_height":-1,"h":"#),
                RejectReason::NonPositiveViewport
            )),
            Just(Record::Invalid(
                valid.replace(&format!(r#""page_id":"{}""#, c.page), r#""page_id":"""#),
                RejectReason::EmptyPageId
            )),
            Just(Record::Invalid(
                valid.replace(r#""x":"#, r#""x":1e999,"was":"#),
                RejectReason::OutOfRange
            )),
            Just(Record::Invalid(
                r#""not an object""#.to_owned(),
                RejectReason::NotAnObject
            )),
        ]
    })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![8 => click().prop_map(Record::Valid), 1 => invalid()]
}

/// Groups records into lines the way producers do: alone, as a JSON array, or several on one
/// line (Firehose concatenation). Malformed records always end their line: a broken value makes
/// the rest of its line unreadable, by design.
fn lines(records: &[Record], grouping: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut index = 0;
    let mut group = grouping.iter().cycle();
    while index < records.len() {
        let size = usize::from(*group.next().unwrap_or(&1)).clamp(1, 4);
        let mut batch: Vec<&Record> = Vec::new();
        while batch.len() < size && index < records.len() {
            let record = &records[index];
            index += 1;
            let breaks = matches!(record, Record::Invalid(_, RejectReason::MalformedJson));
            if breaks && !batch.is_empty() {
                index -= 1;
                break;
            }
            batch.push(record);
            if breaks {
                break;
            }
        }
        let json: Vec<String> = batch
            .iter()
            .map(|r| match r {
                Record::Valid(c) => c.json(),
                Record::Invalid(json, _) => json.clone(),
            })
            .collect();
        let malformed = batch
            .iter()
            .any(|r| matches!(r, Record::Invalid(_, RejectReason::MalformedJson)));
        lines.push(if json.len() > 1 && size % 2 == 0 && !malformed {
            format!("[{}]", json.join(","))
        } else {
            json.concat()
        });
    }
    lines
}

/// SUM(clicks) per (page, window_start, grid_x, grid_y).
type Sums = BTreeMap<(String, i64, i32, i32), i64>;

fn run(
    records: &[Record],
    grouping: &[u8],
    lateness_s: u64,
) -> (Sums, BTreeMap<RejectReason, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AggregatorConfig::default();
    config.output.root = dir.path().join("curated").to_str().unwrap().to_owned();
    config.grid.columns = COLUMNS;
    config.grid.rows = ROWS;
    config.window.allowed_lateness = Duration::from_secs(lateness_s);
    let input = lines(records, grouping);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut pipeline = Pipeline::open(&config).unwrap();
        pipeline.aggregator().set_clock(BASE_MS);
        // A few lines at a time, so that windows close (and late clicks happen) during the run.
        for group in input.chunks(3) {
            pipeline.feed_lines(0, group.join("\n").as_bytes());
            pipeline.flush_ready().await.unwrap();
        }
        let report = pipeline.finish().await.unwrap();
        let location = Location::open(&config.output.root).unwrap();
        let rows = read_rows(
            &location.store,
            &location.child("curated_heatmap"),
            &TimeRange::default(),
        )
        .await
        .unwrap();
        let mut sums = BTreeMap::new();
        for row in rows {
            assert_eq!(row.window_end - row.window_start, 60_000);
            assert_eq!(row.window_start.rem_euclid(60_000), 0);
            *sums
                .entry((row.page_id, row.window_start, row.grid_x, row.grid_y))
                .or_insert(0) += row.clicks;
        }
        let rejected = report
            .counters
            .rejected_by_reason()
            .filter(|(_, n)| *n > 0)
            .collect();
        (sums, rejected)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sums_match_the_valid_input_in_any_order(
        records in prop::collection::vec(record(), 1..300),
        grouping in prop::collection::vec(1u8..5, 1..8),
        lateness_s in prop_oneof![Just(0u64), Just(30), 0u64..300],
        seed in any::<u64>(),
    ) {
        let mut shuffled = records.clone();
        // Arrival order is arbitrary: shuffle with the case's seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut expected = BTreeMap::new();
        let mut expected_rejected = BTreeMap::new();
        for record in &shuffled {
            match record {
                Record::Valid(c) => {
                    let (x, y) = c.cell();
                    let window = c.t - c.t.rem_euclid(60_000);
                    *expected.entry((c.page.to_owned(), window, x, y)).or_insert(0) += 1;
                }
                Record::Invalid(_, reason) => *expected_rejected.entry(*reason).or_insert(0) += 1,
            }
        }
        let (sums, rejected) = run(&shuffled, &grouping, lateness_s);
        prop_assert_eq!(sums, expected);
        prop_assert_eq!(rejected, expected_rejected);
    }
}
