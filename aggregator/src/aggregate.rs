//! The aggregation step: records in, window outputs and dead letters out.
//!
//! [`Aggregator`] is synchronous and does no I/O, so every source (files, stdin, Kinesis, the
//! local embedded stream) drives the same code, and tests drive it directly.

use clickheatmap_crds::AggregatorConfig;

use crate::event::{ClickEvent, Limits, RecordVisitor, RejectReason, Rejection, parse_record};
use crate::grid::Grid;
use crate::sink::DeadLetterBatch;
use crate::window::{WindowOutput, Windows, WindowsSnapshot};

/// How far ahead of the aggregator's clock an event time may be. A single click stamped in the
/// far future would otherwise drag the watermark along and turn every real click into a late one.
pub const MAX_CLOCK_SKEW_MS: i64 = 24 * 3_600_000;

/// Counts of what went through an aggregator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub records: u64,
    pub clicks: u64,
    pub late_clicks: u64,
    pub rejected: [u64; RejectReason::ALL.len()],
}

impl Counters {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub fn rejected_by_reason(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .map(|reason| (*reason, self.rejected[reason.index()]))
    }
}

/// What is ready to be written.
#[derive(Debug, Default)]
pub struct Flush {
    pub windows: Vec<WindowOutput>,
    pub dead_letters: DeadLetterBatch,
}

impl Flush {
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.dead_letters.is_empty()
    }
}

pub struct Aggregator {
    grid: Grid,
    limits: Limits,
    windows: Windows,
    dead_letters: Option<DeadLetterBatch>,
    counters: Counters,
    latest_accepted_ms: i64,
}

impl Aggregator {
    pub fn new(config: &AggregatorConfig, keep_dead_letters: bool) -> Self {
        Aggregator {
            grid: Grid::from(config.grid),
            limits: Limits::from(&config.limits),
            windows: Windows::new(
                i64::try_from(config.window.size.as_millis()).unwrap_or(i64::MAX),
                i64::try_from(config.window.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
            ),
            dead_letters: keep_dead_letters.then(DeadLetterBatch::default),
            counters: Counters::default(),
            latest_accepted_ms: crate::time::now_ms().saturating_add(MAX_CLOCK_SKEW_MS),
        }
    }

    /// Moves the clock that bounds accepted event times; sources call it now and then.
    pub fn set_clock(&mut self, now_ms: i64) {
        self.latest_accepted_ms = now_ms.saturating_add(MAX_CLOCK_SKEW_MS);
    }

    pub fn counters(&self) -> Counters {
        Counters {
            late_clicks: self.windows.late_clicks(),
            ..self.counters.clone()
        }
    }

    pub fn grid(&self) -> Grid {
        self.grid
    }

    pub fn max_record_bytes(&self) -> usize {
        self.limits.max_record_bytes
    }

    pub fn window_size_ms(&self) -> i64 {
        self.windows.size_ms()
    }

    pub fn open_windows(&self) -> usize {
        self.windows.open_windows()
    }

    pub fn oldest_open_window(&self) -> Option<i64> {
        self.windows.oldest_open_window()
    }

    pub fn watermark(&self) -> Option<i64> {
        self.windows.watermark()
    }

    /// The page's counts in windows not yet written (open windows and waiting corrections), as
    /// `(grid_x, grid_y, clicks)`: what a live view adds to the curated table.
    pub fn live_cells(&self, page_id: &str) -> Vec<(u16, u16, i64)> {
        self.windows.open_cells(page_id)
    }

    /// [`Aggregator::live_cells`] of every page (for publishing to a live endpoint).
    pub fn all_live_cells(&self) -> Vec<crate::window::PageCells> {
        self.windows.all_open_cells()
    }

    /// Moves a partition's watermark without a click (see [`Windows::advance_clock`]).
    pub fn advance_clock(&mut self, partition: usize, time_ms: i64) {
        self.windows.advance_clock(partition, time_ms);
    }

    /// The window state, for a checkpoint.
    pub fn snapshot(&self) -> WindowsSnapshot {
        self.windows.snapshot()
    }

    /// Restores the window state of a checkpoint. Counters start over: they are metrics, not
    /// state.
    pub fn restore(&mut self, snapshot: &WindowsSnapshot) {
        self.windows.restore(snapshot);
    }

    /// Counts every click of one record from `partition` (a shard or an input file).
    pub fn process_record(&mut self, partition: usize, record: &[u8]) {
        self.counters.records += 1;
        let mut visit = Visit {
            partition,
            grid: self.grid,
            latest_accepted_ms: self.latest_accepted_ms,
            windows: &mut self.windows,
            counters: &mut self.counters,
            dead_letters: self.dead_letters.as_mut(),
        };
        parse_record(record, &self.limits, &mut visit);
    }

    /// Windows the watermark closed, with the corrections gathered so far when any closed.
    pub fn ready(&mut self) -> Flush {
        let mut windows = self.windows.close_ready();
        windows.extend(self.windows.take_corrections_due(CORRECTION_INTERVAL_MS));
        Flush {
            windows,
            dead_letters: self.take_dead_letters_if(|batch| {
                !batch.is_empty() && (batch.ndjson.len() >= DEAD_LETTER_FLUSH_BYTES)
            }),
        }
    }

    /// Whether something is waiting that a timed flush should write even if no window closed.
    pub fn has_pending_side_output(&self) -> bool {
        self.windows.has_corrections()
            || self
                .dead_letters
                .as_ref()
                .is_some_and(|batch| !batch.is_empty())
    }

    /// Corrections and dead letters, without closing windows (a timed flush).
    pub fn side_outputs(&mut self) -> Flush {
        Flush {
            windows: self.windows.take_corrections(),
            dead_letters: self.take_dead_letters_if(|batch| !batch.is_empty()),
        }
    }

    /// Every rejected record gathered so far. A checkpoint that moves past records must carry
    /// their dead letters along, since the buffer is not part of the window state.
    pub fn take_dead_letters(&mut self) -> DeadLetterBatch {
        self.take_dead_letters_if(|batch| !batch.is_empty())
    }

    /// Everything, open windows included: the input is complete.
    pub fn finish(&mut self) -> Flush {
        let mut windows = self.windows.close_all();
        windows.extend(self.windows.take_corrections());
        Flush {
            windows,
            dead_letters: self.take_dead_letters_if(|batch| !batch.is_empty()),
        }
    }

    fn take_dead_letters_if(&mut self, due: impl Fn(&DeadLetterBatch) -> bool) -> DeadLetterBatch {
        match &mut self.dead_letters {
            Some(batch) if due(batch) => std::mem::take(batch),
            _ => DeadLetterBatch::default(),
        }
    }
}

/// Late clicks are gathered for this long (in event time) before their correction rows are
/// written, so that late traffic makes a few files, not one per window.
pub const CORRECTION_INTERVAL_MS: i64 = 5 * 60_000;

/// Dead letters are written with the next window flush, or earlier once this many bytes wait.
pub const DEAD_LETTER_FLUSH_BYTES: usize = 8 * 1024 * 1024;

/// The dead-letter record of a click whose time is too far ahead of the clock. The parser hands
/// out fields, not the event's bytes; re-encoding is fine on this rare path.
pub(crate) fn too_far_ahead_record(event: &ClickEvent<'_>) -> String {
    serde_json::json!({
        "event_time_ms": event.event_time_ms,
        "page_id": &*event.page_id,
        "x": event.x,
        "y": event.y,
        "viewport_width": event.viewport_width,
        "viewport_height": event.viewport_height,
    })
    .to_string()
}

struct Visit<'s> {
    partition: usize,
    grid: Grid,
    latest_accepted_ms: i64,
    windows: &'s mut Windows,
    counters: &'s mut Counters,
    dead_letters: Option<&'s mut DeadLetterBatch>,
}

impl<'a> RecordVisitor<'a> for Visit<'_> {
    #[inline]
    fn click(&mut self, event: ClickEvent<'a>) {
        if event.event_time_ms > self.latest_accepted_ms {
            let raw = too_far_ahead_record(&event);
            self.reject(Rejection {
                reason: RejectReason::OutOfRange,
                field: Some("event_time_ms"),
                raw: raw.as_bytes(),
            });
            return;
        }
        let (grid_x, grid_y) = self.grid.cell(
            event.x,
            event.y,
            event.viewport_width,
            event.viewport_height,
        );
        self.windows.add(
            self.partition,
            &event.page_id,
            grid_x,
            grid_y,
            event.event_time_ms,
        );
        self.counters.clicks += 1;
    }

    fn reject(&mut self, rejection: Rejection<'_>) {
        self.counters.rejected[rejection.reason.index()] += 1;
        if let Some(batch) = self.dead_letters.as_deref_mut() {
            batch.push(rejection.reason.label(), rejection.field, rejection.raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(page: &str, t: i64, x: f64) -> String {
        format!(
            r#"{{"event_type":"click","event_time_ms":{t},"page_id":"{page}","x":{x},"y":10,"viewport_width":100,"viewport_height":100}}"#
        )
    }

    #[test]
    fn counts_clicks_windows_and_rejections() {
        let mut aggregator = Aggregator::new(&AggregatorConfig::default(), true);
        aggregator.set_clock(10 * 60_000);
        aggregator.process_record(0, click("a", 1_000, 5.0).as_bytes());
        aggregator.process_record(
            0,
            format!("[{},{}]", click("a", 2_000, 5.0), click("b", 3_000, 99.0)).as_bytes(),
        );
        aggregator.process_record(0, b"garbage");
        assert!(aggregator.ready().windows.is_empty());
        aggregator.process_record(0, click("a", 100_000, 5.0).as_bytes());
        let flush = aggregator.ready();
        assert_eq!(flush.windows.len(), 1);
        assert_eq!(flush.windows[0].clicks(), 3);
        assert!(
            flush.dead_letters.is_empty(),
            "dead letters wait for a bigger batch"
        );
        let rest = aggregator.finish();
        assert_eq!(rest.windows.len(), 1);
        assert_eq!(rest.dead_letters.records, 1);
        let counters = aggregator.counters();
        assert_eq!((counters.records, counters.clicks), (4, 4));
        assert_eq!(counters.rejected[RejectReason::MalformedJson.index()], 1);
    }

    #[test]
    fn live_cells_show_what_is_not_written_yet() {
        let mut aggregator = Aggregator::new(&AggregatorConfig::default(), false);
        aggregator.set_clock(10 * 60_000);
        aggregator.process_record(0, click("a", 1_000, 5.0).as_bytes());
        aggregator.process_record(0, click("a", 2_000, 5.0).as_bytes());
        aggregator.process_record(0, click("b", 2_000, 99.0).as_bytes());
        assert_eq!(aggregator.live_cells("a"), vec![(1, 2, 2)]);
        assert_eq!(aggregator.live_cells("b"), vec![(19, 2, 1)]);
        aggregator.advance_clock(0, 5 * 60_000);
        assert_eq!(aggregator.ready().windows.len(), 1);
        assert!(aggregator.live_cells("a").is_empty());
    }

    #[test]
    fn far_future_clicks_are_rejected_not_allowed_to_move_the_watermark() {
        let mut aggregator = Aggregator::new(&AggregatorConfig::default(), true);
        aggregator.set_clock(1_000_000);
        aggregator.process_record(0, click("a", 1_000, 1.0).as_bytes());
        aggregator.process_record(
            0,
            click("a", 1_000_000 + MAX_CLOCK_SKEW_MS + 1, 1.0).as_bytes(),
        );
        assert_eq!(aggregator.watermark(), Some(1_000));
        let counters = aggregator.counters();
        assert_eq!(counters.rejected[RejectReason::OutOfRange.index()], 1);
        let flush = aggregator.finish();
        let text = String::from_utf8(flush.dead_letters.ndjson).unwrap();
        assert!(text.contains("\"field\":\"event_time_ms\""), "{text}");
    }
}
