//! Event-time tumbling windows of grid counts, closed by a watermark.
//!
//! Each source partition (a Kinesis shard, an input file) advances its own clock with the event
//! times it delivers; the watermark is the slowest partition's clock. A window `[start, end)` is
//! final once the watermark reaches `end + allowed_lateness`; it is then handed out exactly once.
//! A click for a window that was already handed out is not dropped: it is counted into a
//! *correction* for that window, handed out later as extra rows (queries always `SUM(clicks)`).
//!
//! Open windows live in a vector sorted by start (there are few, and most clicks go to the newest
//! one); each holds a hash map from a packed cell key to its count.

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// A page, column and row packed into one integer, so that a window's map hashes one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CellKey(u64);

impl CellKey {
    #[inline]
    fn new(page: u32, grid_x: u16, grid_y: u16) -> Self {
        CellKey((u64::from(page) << 32) | (u64::from(grid_x) << 16) | u64::from(grid_y))
    }

    fn page(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn grid_x(self) -> u16 {
        (self.0 >> 16) as u16
    }

    fn grid_y(self) -> u16 {
        self.0 as u16
    }
}

/// Interns page ids: every click names its page, but a site has few pages.
#[derive(Default)]
struct PageTable {
    index: FxHashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    last: Option<(Arc<str>, u32)>,
}

impl PageTable {
    #[inline]
    fn intern(&mut self, page_id: &str) -> u32 {
        // Clicks arrive in bursts from one page; skip the hash for a repeat.
        if let Some((name, index)) = &self.last
            && **name == *page_id
        {
            return *index;
        }
        let index = match self.index.get(page_id) {
            Some(&index) => index,
            None => {
                let name: Arc<str> = Arc::from(page_id);
                let index = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
                self.names.push(name.clone());
                self.index.insert(name, index);
                index
            }
        };
        self.last = Some((self.names[index as usize].clone(), index));
        index
    }

    fn name(&self, index: u32) -> Arc<str> {
        self.names
            .get(index as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

/// One page's cells as `(grid_x, grid_y, clicks)`.
pub type PageCells = (Arc<str>, Vec<(u16, u16, i64)>);

/// Whether a window output is the window's regular result or a later addition to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowKind {
    /// Everything that arrived before the window closed.
    Final,
    /// Clicks that arrived after the window closed.
    Correction,
}

/// One curated row before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellCount {
    pub page_id: Arc<str>,
    pub grid_x: u16,
    pub grid_y: u16,
    pub clicks: i64,
}

/// The counts of one window, sorted by page, row, column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowOutput {
    pub window_start: i64,
    pub window_end: i64,
    pub kind: WindowKind,
    pub cells: Vec<CellCount>,
}

impl WindowOutput {
    pub fn clicks(&self) -> i64 {
        self.cells.iter().map(|cell| cell.clicks).sum()
    }
}

type Counts = FxHashMap<CellKey, i64>;

/// A page table smaller than this is never pruned: a site's pages fit many times over.
const PRUNE_PAGES_FROM: usize = 4096;

/// The window state of one aggregator.
pub struct Windows {
    size_ms: i64,
    allowed_lateness_ms: i64,
    /// Open windows sorted by start.
    open: Vec<(i64, Counts)>,
    /// Late clicks of windows that were already handed out, by window start.
    corrections: Vec<(i64, Counts)>,
    /// Latest event time seen per partition; `None` until the partition delivered a click.
    clocks: Vec<Option<i64>>,
    /// Every window starting before this has been handed out.
    closed_before: i64,
    pages: PageTable,
    /// The page table is rebuilt from the windows still held once it has this many pages.
    prune_pages_at: usize,
    late_clicks: u64,
    /// The watermark when the oldest waiting correction arrived.
    corrections_since: Option<i64>,
}

impl Windows {
    /// `size_ms` must be positive; the configuration validation guarantees it.
    pub fn new(size_ms: i64, allowed_lateness_ms: i64) -> Self {
        Windows {
            size_ms: size_ms.max(1),
            allowed_lateness_ms: allowed_lateness_ms.max(0),
            open: Vec::new(),
            corrections: Vec::new(),
            clocks: Vec::new(),
            closed_before: i64::MIN,
            pages: PageTable::default(),
            prune_pages_at: PRUNE_PAGES_FROM,
            late_clicks: 0,
            corrections_since: None,
        }
    }

    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    #[inline]
    pub fn window_start(&self, event_time_ms: i64) -> i64 {
        event_time_ms - event_time_ms.rem_euclid(self.size_ms)
    }

    /// Counts one click.
    #[inline]
    pub fn add(
        &mut self,
        partition: usize,
        page_id: &str,
        grid_x: u16,
        grid_y: u16,
        event_time_ms: i64,
    ) {
        if partition >= self.clocks.len() {
            self.clocks.resize(partition + 1, None);
        }
        let clock = &mut self.clocks[partition];
        if clock.is_none_or(|seen| event_time_ms > seen) {
            *clock = Some(event_time_ms);
        }
        let start = self.window_start(event_time_ms);
        let key = CellKey::new(self.pages.intern(page_id), grid_x, grid_y);
        let windows = if start < self.closed_before {
            self.late_clicks += 1;
            if self.corrections_since.is_none() {
                self.corrections_since = self.watermark();
            }
            &mut self.corrections
        } else {
            &mut self.open
        };
        *counts_for(windows, start).entry(key).or_insert(0) += 1;
    }

    /// The slowest partition's clock, once any partition has delivered a click.
    pub fn watermark(&self) -> Option<i64> {
        self.clocks.iter().flatten().copied().min()
    }

    /// Clicks counted as corrections so far.
    pub fn late_clicks(&self) -> u64 {
        self.late_clicks
    }

    /// Number of windows still open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// The start of the oldest window still open.
    pub fn oldest_open_window(&self) -> Option<i64> {
        self.open.first().map(|(start, _)| *start)
    }

    /// Whether corrections are waiting to be handed out.
    pub fn has_corrections(&self) -> bool {
        !self.corrections.is_empty()
    }

    /// The counts of one page in every window not yet handed out — open windows plus corrections
    /// still gathering — summed per cell as `(grid_x, grid_y, clicks)`, sorted by row, column.
    /// This is what a live view adds on top of the curated table.
    pub fn open_cells(&self, page_id: &str) -> Vec<(u16, u16, i64)> {
        let Some(&page) = self.pages.index.get(page_id) else {
            return Vec::new();
        };
        let mut cells: FxHashMap<(u16, u16), i64> = FxHashMap::default();
        for (_, counts) in self.open.iter().chain(&self.corrections) {
            for (key, clicks) in counts {
                if key.page() == page {
                    *cells.entry((key.grid_x(), key.grid_y())).or_insert(0) += clicks;
                }
            }
        }
        let mut cells: Vec<(u16, u16, i64)> = cells
            .into_iter()
            .map(|((x, y), clicks)| (x, y, clicks))
            .collect();
        cells.sort_unstable_by_key(|&(x, y, _)| (y, x));
        cells
    }

    /// [`Windows::open_cells`] for every page at once, in one pass over the open state.
    pub fn all_open_cells(&self) -> Vec<PageCells> {
        let mut by_page: FxHashMap<u32, FxHashMap<(u16, u16), i64>> = FxHashMap::default();
        for (_, counts) in self.open.iter().chain(&self.corrections) {
            for (key, clicks) in counts {
                *by_page
                    .entry(key.page())
                    .or_default()
                    .entry((key.grid_x(), key.grid_y()))
                    .or_insert(0) += clicks;
            }
        }
        let mut pages: Vec<PageCells> = by_page
            .into_iter()
            .map(|(page, cells)| {
                let mut cells: Vec<(u16, u16, i64)> = cells
                    .into_iter()
                    .map(|((x, y), clicks)| (x, y, clicks))
                    .collect();
                cells.sort_unstable_by_key(|&(x, y, _)| (y, x));
                (self.pages.name(page), cells)
            })
            .collect();
        pages.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pages
    }

    /// Hands out every window the watermark has closed, oldest first.
    pub fn close_ready(&mut self) -> Vec<WindowOutput> {
        let Some(watermark) = self.watermark() else {
            return Vec::new();
        };
        // Windows ending at or before the horizon are complete.
        let horizon = watermark.saturating_sub(self.allowed_lateness_ms);
        let boundary = self.window_start(horizon);
        self.close_before(boundary)
    }

    /// Hands out every open window: the input is complete (the end of a replayed file).
    pub fn close_all(&mut self) -> Vec<WindowOutput> {
        match self.open.last() {
            Some(&(start, _)) => self.close_before(start.saturating_add(self.size_ms)),
            None => Vec::new(),
        }
    }

    fn close_before(&mut self, boundary: i64) -> Vec<WindowOutput> {
        if boundary <= self.closed_before {
            return Vec::new();
        }
        self.closed_before = boundary;
        let closing = self.open.partition_point(|(start, _)| *start < boundary);
        let closed: Vec<(i64, Counts)> = self.open.drain(..closing).collect();
        let outputs = closed
            .into_iter()
            .map(|(start, counts)| self.output(start, WindowKind::Final, counts))
            .collect();
        self.prune_pages();
        outputs
    }

    /// Pages interned now (for tests and metrics).
    pub fn pages_interned(&self) -> usize {
        self.pages.names.len()
    }

    /// Rebuilds the page table from the pages of the windows still held, once it has grown past
    /// twice what the last rebuild kept: page ids come from untrusted clicks, and a stream of
    /// ever-new ids (a bot, a query string in the page id) must not grow it for ever.
    fn prune_pages(&mut self) {
        if self.pages.names.len() < self.prune_pages_at {
            return;
        }
        let old = std::mem::take(&mut self.pages);
        for (_, counts) in self.open.iter_mut().chain(self.corrections.iter_mut()) {
            *counts = std::mem::take(counts)
                .into_iter()
                .map(|(key, clicks)| {
                    let page = self.pages.intern(&old.name(key.page()));
                    (CellKey::new(page, key.grid_x(), key.grid_y()), clicks)
                })
                .collect();
        }
        self.prune_pages_at = (2 * self.pages.names.len()).max(PRUNE_PAGES_FROM);
    }

    /// Hands out the corrections once the watermark moved `wait_ms` past the oldest of them, so
    /// that a trickle of late clicks becomes a few files rather than one per window close.
    pub fn take_corrections_due(&mut self, wait_ms: i64) -> Vec<WindowOutput> {
        match (self.corrections_since, self.watermark()) {
            (Some(since), Some(watermark)) if watermark >= since.saturating_add(wait_ms) => {
                self.take_corrections()
            }
            _ => Vec::new(),
        }
    }

    /// Hands out the corrections gathered so far, oldest window first.
    pub fn take_corrections(&mut self) -> Vec<WindowOutput> {
        self.corrections_since = None;
        let corrections = std::mem::take(&mut self.corrections);
        let outputs = corrections
            .into_iter()
            .map(|(start, counts)| self.output(start, WindowKind::Correction, counts))
            .collect();
        self.prune_pages();
        outputs
    }

    fn output(&self, window_start: i64, kind: WindowKind, counts: Counts) -> WindowOutput {
        let mut cells: Vec<CellCount> = counts
            .into_iter()
            .map(|(key, clicks)| CellCount {
                page_id: self.pages.name(key.page()),
                grid_x: key.grid_x(),
                grid_y: key.grid_y(),
                clicks,
            })
            .collect();
        // A replay must produce byte-identical files, whatever the hash map's order.
        cells.sort_unstable_by(|a, b| {
            (&a.page_id, a.grid_y, a.grid_x).cmp(&(&b.page_id, b.grid_y, b.grid_x))
        });
        WindowOutput {
            window_start,
            window_end: window_start.saturating_add(self.size_ms),
            kind,
            cells,
        }
    }
}

/// The counts of one window in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowCounts {
    pub start: i64,
    /// `(page_id, grid_x, grid_y, clicks)`, sorted.
    pub cells: Vec<(String, u16, u16, i64)>,
}

/// Everything a [`Windows`] holds, for a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowsSnapshot {
    pub clocks: Vec<Option<i64>>,
    pub closed_before: i64,
    pub corrections_since: Option<i64>,
    pub late_clicks: u64,
    pub open: Vec<WindowCounts>,
    pub corrections: Vec<WindowCounts>,
}

impl Windows {
    /// Moves a partition's clock forward without a click: the source knows that nothing older is
    /// coming (a caught-up, quiet shard).
    pub fn advance_clock(&mut self, partition: usize, time_ms: i64) {
        if partition >= self.clocks.len() {
            self.clocks.resize(partition + 1, None);
        }
        let clock = &mut self.clocks[partition];
        if clock.is_none_or(|seen| time_ms > seen) {
            *clock = Some(time_ms);
        }
    }

    pub fn snapshot(&self) -> WindowsSnapshot {
        let counts = |windows: &[(i64, Counts)]| -> Vec<WindowCounts> {
            windows
                .iter()
                .map(|(start, counts)| WindowCounts {
                    start: *start,
                    cells: self
                        .output(*start, WindowKind::Final, counts.clone())
                        .cells
                        .into_iter()
                        .map(|c| (c.page_id.to_string(), c.grid_x, c.grid_y, c.clicks))
                        .collect(),
                })
                .collect()
        };
        WindowsSnapshot {
            clocks: self.clocks.clone(),
            closed_before: self.closed_before,
            corrections_since: self.corrections_since,
            late_clicks: self.late_clicks,
            open: counts(&self.open),
            corrections: counts(&self.corrections),
        }
    }

    /// Replaces the state with a snapshot's.
    pub fn restore(&mut self, snapshot: &WindowsSnapshot) {
        let mut rebuild = |windows: &[WindowCounts]| -> Vec<(i64, Counts)> {
            let mut rebuilt: Vec<(i64, Counts)> = windows
                .iter()
                .map(|window| {
                    let counts = window
                        .cells
                        .iter()
                        .map(|(page, x, y, clicks)| {
                            (CellKey::new(self.pages.intern(page), *x, *y), *clicks)
                        })
                        .collect();
                    (window.start, counts)
                })
                .collect();
            rebuilt.sort_by_key(|(start, _)| *start);
            rebuilt
        };
        self.open = rebuild(&snapshot.open);
        self.corrections = rebuild(&snapshot.corrections);
        self.clocks = snapshot.clocks.clone();
        self.closed_before = snapshot.closed_before;
        self.corrections_since = snapshot.corrections_since;
        self.late_clicks = snapshot.late_clicks;
    }
}

#[inline]
fn counts_for(windows: &mut Vec<(i64, Counts)>, start: i64) -> &mut Counts {
    // Most clicks belong to the newest window.
    let position = match windows.last() {
        Some((last, _)) if *last == start => windows.len() - 1,
        _ => match windows.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(found) => found,
            Err(insert_at) => {
                windows.insert(insert_at, (start, Counts::default()));
                insert_at
            }
        },
    };
    &mut windows[position].1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn totals(outputs: &[WindowOutput]) -> Vec<(i64, WindowKind, i64)> {
        outputs
            .iter()
            .map(|o| (o.window_start, o.kind, o.clicks()))
            .collect()
    }

    #[test]
    fn windows_close_when_the_watermark_passes_end_plus_lateness() {
        let mut windows = Windows::new(MIN, 30_000);
        windows.add(0, "p", 1, 2, 10_000);
        windows.add(0, "p", 1, 2, 59_999);
        windows.add(0, "p", 3, 4, 61_000);
        assert!(windows.close_ready().is_empty());
        windows.add(0, "p", 0, 0, 89_999);
        assert!(windows.close_ready().is_empty(), "lateness keeps it open");
        windows.add(0, "p", 0, 0, 90_000);
        let closed = windows.close_ready();
        assert_eq!(totals(&closed), vec![(0, WindowKind::Final, 2)]);
        assert_eq!(closed[0].window_end, MIN);
        assert_eq!(closed[0].cells[0].grid_x, 1);
        assert_eq!(windows.open_windows(), 1);
        let rest = windows.close_all();
        assert_eq!(totals(&rest), vec![(MIN, WindowKind::Final, 3)]);
    }

    #[test]
    fn late_clicks_become_corrections_for_their_own_window() {
        let mut windows = Windows::new(MIN, 0);
        windows.add(0, "p", 0, 0, 1_000);
        windows.add(0, "p", 0, 0, 2 * MIN + 5);
        let closed = windows.close_ready();
        assert_eq!(totals(&closed), vec![(0, WindowKind::Final, 1)]);
        // Window [1m, 2m) had no clicks but is closed too: a click for it now is late.
        windows.add(0, "p", 0, 0, MIN + 7);
        windows.add(0, "p", 0, 0, 3);
        windows.add(0, "q", 0, 0, 4);
        assert_eq!(windows.late_clicks(), 3);
        let corrections = windows.take_corrections();
        assert_eq!(
            totals(&corrections),
            vec![
                (0, WindowKind::Correction, 2),
                (MIN, WindowKind::Correction, 1)
            ]
        );
        assert!(!windows.has_corrections());
    }

    #[test]
    fn corrections_wait_for_the_watermark_to_move_on() {
        let mut windows = Windows::new(MIN, 0);
        windows.add(0, "p", 0, 0, 2 * MIN);
        windows.close_ready();
        windows.add(0, "p", 0, 0, 5);
        assert!(windows.take_corrections_due(5 * MIN).is_empty());
        windows.add(0, "p", 0, 0, 7 * MIN - 1);
        assert!(windows.take_corrections_due(5 * MIN).is_empty());
        windows.add(0, "p", 0, 0, 7 * MIN);
        assert_eq!(
            totals(&windows.take_corrections_due(5 * MIN)),
            vec![(0, WindowKind::Correction, 1)]
        );
        assert!(windows.take_corrections_due(0).is_empty());
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark() {
        let mut windows = Windows::new(MIN, 0);
        windows.add(0, "p", 0, 0, 10 * MIN);
        windows.add(1, "p", 0, 0, 5);
        assert_eq!(windows.watermark(), Some(5));
        assert!(windows.close_ready().is_empty());
        windows.add(1, "p", 0, 0, 11 * MIN);
        assert_eq!(windows.watermark(), Some(10 * MIN));
        assert_eq!(
            totals(&windows.close_ready()),
            vec![(0, WindowKind::Final, 1)]
        );
    }

    #[test]
    fn a_restored_snapshot_continues_where_the_original_would() {
        let mut original = Windows::new(MIN, 0);
        original.add(0, "p", 1, 1, 5);
        original.add(0, "q", 2, 3, MIN + 5);
        original.add(0, "p", 1, 1, 2 * MIN + 1);
        original.close_ready();
        original.add(0, "p", 4, 4, 7);
        let snapshot = original.snapshot();
        let text = serde_json::to_string(&snapshot).unwrap();
        let mut restored = Windows::new(MIN, 0);
        restored.restore(&serde_json::from_str(&text).unwrap());
        assert_eq!(restored.snapshot(), snapshot);
        for windows in [&mut original, &mut restored] {
            windows.add(0, "p", 1, 1, 3 * MIN);
        }
        assert_eq!(original.close_ready(), restored.close_ready());
        assert_eq!(original.take_corrections(), restored.take_corrections());
        assert_eq!(original.close_all(), restored.close_all());
    }

    #[test]
    fn an_advanced_clock_closes_windows_without_clicks() {
        let mut windows = Windows::new(MIN, 0);
        windows.add(0, "p", 0, 0, 5);
        windows.advance_clock(0, 1);
        assert!(windows.close_ready().is_empty(), "clocks never move back");
        windows.advance_clock(0, MIN);
        assert_eq!(
            totals(&windows.close_ready()),
            vec![(0, WindowKind::Final, 1)]
        );
    }

    #[test]
    fn open_cells_sum_open_windows_and_corrections_of_one_page() {
        let mut windows = Windows::new(MIN, 0);
        assert!(windows.open_cells("p").is_empty());
        windows.add(0, "p", 1, 2, 5);
        windows.add(0, "p", 0, 0, 2 * MIN + 1);
        windows.add(0, "q", 1, 2, 2 * MIN + 2);
        // Window [0, 1m) closes; its click is in the curated table now, not live.
        assert_eq!(
            totals(&windows.close_ready()),
            vec![(0, WindowKind::Final, 1)]
        );
        windows.add(0, "p", 0, 0, 2 * MIN + 3);
        windows.add(0, "p", 1, 2, 7); // late: a correction, not yet written
        assert_eq!(windows.open_cells("p"), vec![(0, 0, 2), (1, 2, 1)]);
        assert_eq!(windows.open_cells("q"), vec![(1, 2, 1)]);
        assert!(windows.open_cells("unknown").is_empty());
        let all = windows.all_open_cells();
        let names: Vec<&str> = all.iter().map(|(page, _)| &**page).collect();
        assert_eq!(names, ["p", "q"]);
        assert_eq!(all[0].1, windows.open_cells("p"));
        assert_eq!(all[1].1, windows.open_cells("q"));
        windows.take_corrections();
        windows.close_all();
        assert!(windows.open_cells("p").is_empty());
    }

    #[test]
    fn the_page_table_is_pruned_to_the_pages_still_held() {
        let mut windows = Windows::new(60_000, 0);
        // A new page id on every click (a bot), one window after another.
        for minute in 0..100_i64 {
            for click in 0..100 {
                let page = format!("page-{minute}-{click}");
                windows.add(0, &page, 1, 2, minute * 60_000 + click);
            }
            let closed = windows.close_ready();
            for output in &closed {
                // Every closed cell keeps its own page name through the rebuilds.
                let minute = output.window_start / 60_000;
                assert_eq!(output.cells.len(), 100);
                assert!(
                    output
                        .cells
                        .iter()
                        .all(|cell| cell.page_id.starts_with(&format!("page-{minute}-")))
                );
            }
            assert!(
                windows.pages_interned() <= 2 * PRUNE_PAGES_FROM,
                "{} pages after minute {minute}",
                windows.pages_interned()
            );
        }
        // The open window's cells are still right.
        let open = windows.all_open_cells();
        assert_eq!(open.len(), 100);
        assert!(open.iter().all(|(page, _)| page.starts_with("page-99-")));
        assert_eq!(windows.open_cells("page-99-7"), vec![(1, 2, 1)]);
    }

    #[test]
    fn negative_times_and_sorting() {
        let mut windows = Windows::new(MIN, 0);
        assert_eq!(windows.window_start(-1), -MIN);
        windows.add(0, "b", 2, 1, 5);
        windows.add(0, "a", 3, 1, 5);
        windows.add(0, "a", 1, 2, 5);
        windows.add(0, "a", 2, 1, 5);
        let out = windows.close_all();
        let order: Vec<(&str, u16, u16)> = out[0]
            .cells
            .iter()
            .map(|c| (&*c.page_id, c.grid_x, c.grid_y))
            .collect();
        assert_eq!(
            order,
            vec![("a", 2, 1), ("a", 3, 1), ("a", 1, 2), ("b", 2, 1)]
        );
    }
}
