//! Backfill: rebuilding the curated table's windows in a time range from the raw archive.
//!
//! **Replace, don't add.** S3 cannot swap a set of objects at once, and the live aggregator's
//! files are its own (its checkpoints name them). So a backfill leaves them alone and writes, per
//! hour partition, one file `backfill-<id>.parquet` holding the *difference* between what the
//! archive holds for each (page, window, cell) of the range and what the partition's other files
//! already sum to (rows may be negative). One PUT — or one DELETE, when the others are already
//! exact — is atomic: a reader sees the partition before or after it, and the `SUM(clicks)` every
//! query computes (the demo's included) is then exactly the archive's count, never a mix and
//! never a double count. Rows of windows outside the range are never part of the difference, so
//! those windows are untouched. Running a backfill again (after a crash, or on purpose) computes
//! its file against the *other* files, so it converges to the same file instead of adding up.
//!
//! **Which clicks.** A window `[start, end)` is covered when it lies inside the requested range.
//! Its clicks are the ones in the archive's hour folders from `start - earlyArrivals` (clocks
//! ahead, Firehose naming a folder after the hour its buffer started) to `end + lateArrivals`,
//! checked per click; a click that reached the stream later than that is not in the backfill's
//! count (and a late click the
//! live aggregator counted after that horizon is replaced with the archive's count).
//!
//! **Never ahead of the live path.** The covered range stops where the archive may still be
//! incomplete (its last folder must be complete: one hour, Firehose's longest buffer and the live
//! aggregator's correction interval, after `end + lateArrivals`) and where the live aggregator
//! still holds windows open or corrections unwritten (its shard checkpoints); the state says where
//! it stopped. A failed download stops the backfill (to be resumed); only bytes that cannot be
//! decoded make an object damaged.
//!
//! **Streaming and resumable.** Objects are read in arrival order, up to `parallelism` at once on
//! blocking threads (download, decompression and parsing overlap), and merged in order. A
//! partition is rewritten as soon as every folder that can hold its clicks has been read, so
//! memory holds the counts of a few hours, whatever the range. The state object
//! ([`BackfillState`]) records the partitions done; a restart resumes at the first partition not
//! done, re-reading only the folders it needs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clickheatmap_crds::backfill_state::{
    ArchiveCounts, BACKFILL_STATE_VERSION, BackfillProgress, BackfillRequestKey, BackfillState,
    backfill_state_key, valid_backfill_id,
};
use clickheatmap_crds::{AggregatorConfig, SourceConfig};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rustc_hash::FxHashMap;

use crate::aggregate::{CORRECTION_INTERVAL_MS, MAX_CLOCK_SKEW_MS, too_far_ahead_record};
use crate::archive::{
    Archive, ArchiveError, ArchiveObject, DownloadError, HOUR_MS, ObjectReader, floor_hour,
};
use crate::checkpoint::ShardCheckpoint;
use crate::event::{ClickEvent, Limits, RecordVisitor, RejectReason, Rejection, parse_record};
use crate::grid::Grid;
use crate::location::{Location, LocationError};
use crate::pipeline::{CHUNK_BYTES, Chunk, LineChunks};
use crate::query::{QueryError, read_file};
use crate::sink::{DeadLetterBatch, SinkError, encode_parquet, partition_of};
use crate::time::{iso8601, now_ms};
use crate::window::{CellCount, WindowKind, WindowOutput};

/// Firehose's longest buffering interval: an hour folder can still grow this long after its hour.
pub const FIREHOSE_MAX_BUFFER_MS: i64 = 900_000;

/// How often the state is rewritten while objects are read (partitions done always write it).
const STATE_INTERVAL_MS: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "backfill id {id:?}: use lowercase letters, digits and '-' (at most 63 characters, not starting or ending with '-')"
    )]
    InvalidId { id: String },
    #[error("the range {from} .. {to} holds no whole window of {window_ms} ms")]
    EmptyRange {
        from: String,
        to: String,
        window_ms: i64,
    },
    #[error(
        "nothing to backfill yet: the range's first window ends after {ready}, before which the archive may be incomplete or the live aggregator still holds windows open ({why})"
    )]
    NotReady { ready: String, why: String },
    #[error(
        "backfill {id} was started with another request ({existing}); give this request another id"
    )]
    DifferentRequest { id: String, existing: String },
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{action} {path}: {source}")]
    Store {
        action: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("backfill state {path} is not valid: {source}")]
    State {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "backfill state {path} has version {found}; this aggregator reads version {BACKFILL_STATE_VERSION}"
    )]
    StateVersion { path: String, found: u32 },
    #[error("a reading thread failed: {0}")]
    Task(String),
    #[error("{path}: {message}; the backfill stops here and resumes when run again")]
    Download { path: String, message: String },
    #[error("{what} must be between 0 and 7 days")]
    Margin { what: &'static str },
}

impl BackfillError {
    fn store(action: &'static str, path: &Path, source: object_store::Error) -> Self {
        BackfillError::Store {
            action,
            path: path.to_string(),
            source,
        }
    }
}

/// What to backfill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillRequest {
    /// Names the backfill's files and state: lowercase letters, digits and `-`.
    pub id: String,
    /// `s3://bucket/raw/`, a local folder in Firehose's layout, or one file (the local stream
    /// log).
    pub archive: String,
    /// Event-time range; covered windows lie inside it.
    pub from_ms: i64,
    pub to_ms: i64,
    pub early_arrivals_ms: i64,
    pub late_arrivals_ms: i64,
    /// Objects read at once.
    pub parallelism: usize,
}

impl BackfillRequest {
    pub const DEFAULT_EARLY_ARRIVALS_MS: i64 = HOUR_MS;
    pub const DEFAULT_LATE_ARRIVALS_MS: i64 = HOUR_MS;
}

/// Runs a backfill to its end (or resumes it), reporting its state after every change.
/// `on_progress` may answer [`ControlFlow::Break`] to stop it there (a shutdown): the state is
/// saved, `finishedAtMs` stays empty, and the next run resumes.
pub async fn run(
    config: &AggregatorConfig,
    request: &BackfillRequest,
    mut on_progress: impl FnMut(&BackfillState) -> ControlFlow<()>,
) -> Result<BackfillState, BackfillError> {
    if !valid_backfill_id(&request.id) {
        return Err(BackfillError::InvalidId {
            id: request.id.clone(),
        });
    }
    const MAX_MARGIN_MS: i64 = 7 * 86_400_000;
    for (what, margin) in [
        ("earlyArrivals", request.early_arrivals_ms),
        ("lateArrivals", request.late_arrivals_ms),
    ] {
        if !(0..=MAX_MARGIN_MS).contains(&margin) {
            return Err(BackfillError::Margin { what });
        }
    }
    let archive = Archive::open(&request.archive)?;
    let output = Location::open(&config.output.root)?;
    let table = output.child(&config.output.table);
    let dead_letters = Location::dead_letters(config, &output)?;
    let checkpoints = Location::checkpoints(config, &output)?;
    let state_path = Path::from(format!(
        "{}/{}",
        checkpoints.prefix,
        backfill_state_key(&request.id)
    ));
    let key = request_key(config, request);
    let mut state = match load_state(&checkpoints.store, &state_path).await? {
        Some(state) if state.request != key => {
            return Err(BackfillError::DifferentRequest {
                id: request.id.clone(),
                existing: format!(
                    "{} .. {} from {}",
                    iso8601(state.request.from_ms),
                    iso8601(state.request.to_ms),
                    state.request.archive
                ),
            });
        }
        Some(state) => {
            tracing::info!(id = %request.id, next_partition = %iso8601(state.next_partition_ms), "resuming the backfill");
            state
        }
        None => plan(config, request, key, &archive, &checkpoints).await?,
    };
    if state.finished_at_ms.is_some() {
        tracing::info!(id = %request.id, "the backfill has already finished");
        let _ = on_progress(&state);
        return Ok(state);
    }

    let objects = archive
        .list(state.resume_arrival_ms, state.arrival_to_ms)
        .await?;
    if state.progress.objects_total == 0 {
        state.progress.objects_total = objects.len() as u64;
        state.progress.bytes_total = objects.iter().map(|o| o.size).sum();
    }
    let mut job = Job {
        request,
        hourly: archive.is_hourly(),
        counting: Arc::new(Counting::new(config, &state, &dead_letters)),
        store: archive.store().clone(),
        output: output.store.clone(),
        table,
        dead_letters,
        checkpoints: checkpoints.store.clone(),
        state_path,
        pending: BTreeMap::new(),
        unsettled: BTreeMap::new(),
        dead_letter_batch: DeadLetterBatch::default(),
        read_this_run: ArchiveCounts::default(),
        started: Instant::now(),
        last_state_write_ms: now_ms(),
    };
    if job.read(&mut state, objects, &mut on_progress).await? == Stop::Stopped
        || job
            .finish_partitions(&mut state, None, &mut on_progress)
            .await?
            == Stop::Stopped
    {
        tracing::info!(id = %request.id, next_partition = %iso8601(state.next_partition_ms), "the backfill stopped; it resumes from here");
        return Ok(state);
    }
    state.finished_at_ms = Some(now_ms());
    state.progress.eta_seconds = Some(0);
    job.save(&mut state).await?;
    let _ = on_progress(&state);
    Ok(state)
}

fn request_key(config: &AggregatorConfig, request: &BackfillRequest) -> BackfillRequestKey {
    BackfillRequestKey {
        archive: request.archive.clone(),
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        window_ms: window_ms(config),
        grid_columns: config.grid.columns,
        grid_rows: config.grid.rows,
        early_arrivals_ms: request.early_arrivals_ms,
        late_arrivals_ms: request.late_arrivals_ms,
        table: config.output.table.clone(),
    }
}

fn window_ms(config: &AggregatorConfig) -> i64 {
    i64::try_from(config.window.size.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// The windows a new backfill covers, and the archive hours it reads.
async fn plan(
    config: &AggregatorConfig,
    request: &BackfillRequest,
    key: BackfillRequestKey,
    archive: &Archive,
    checkpoints: &Location,
) -> Result<BackfillState, BackfillError> {
    let window = key.window_ms;
    let from = request
        .from_ms
        .div_euclid(window)
        .saturating_add(i64::from(request.from_ms.rem_euclid(window) != 0))
        .saturating_mul(window);
    let requested_to = request.to_ms.div_euclid(window).saturating_mul(window);
    if from >= requested_to {
        return Err(BackfillError::EmptyRange {
            from: iso8601(request.from_ms),
            to: iso8601(request.to_ms),
            window_ms: window,
        });
    }
    let now = now_ms();
    // A window's clicks may reach the archive until `lateArrivals` after it; the last folder
    // read must be complete (Firehose adds to a folder until its buffer closes), and the live
    // aggregator must have written the corrections for the clicks in it.
    let mut limit = if archive.is_hourly() {
        floor_hour(now - FIREHOSE_MAX_BUFFER_MS - CORRECTION_INTERVAL_MS)
    } else {
        now - CORRECTION_INTERVAL_MS
    }
    .saturating_sub(request.late_arrivals_ms);
    let mut why = format!(
        "clicks may reach the archive up to {} ms after their window, and its last folder must be complete",
        request.late_arrivals_ms
    );
    if let Some((closed_before, shard)) = live_closed_before(config, checkpoints).await?
        && closed_before < limit
    {
        limit = closed_before;
        why =
            format!("shard {shard} of the live aggregator holds windows or corrections from there");
    }
    let to = requested_to.min(limit.div_euclid(window).saturating_mul(window));
    if from >= to {
        return Err(BackfillError::NotReady {
            ready: iso8601(limit),
            why,
        });
    }
    let stopped_at_ms = (to < requested_to).then_some(request.to_ms);
    if stopped_at_ms.is_some() {
        tracing::warn!(stopped_at = %iso8601(to), %why, "the backfill stops before the requested end");
    }
    let arrival_from = floor_hour(from.saturating_sub(request.early_arrivals_ms));
    let arrival_to = floor_hour(to.saturating_add(request.late_arrivals_ms) - 1) + HOUR_MS;
    let first_partition = floor_hour(from);
    Ok(BackfillState {
        version: BACKFILL_STATE_VERSION,
        id: request.id.clone(),
        request: key,
        covered_from_ms: from,
        covered_to_ms: to,
        stopped_at_ms,
        arrival_from_ms: arrival_from,
        arrival_to_ms: arrival_to,
        next_partition_ms: first_partition,
        resume_arrival_ms: arrival_from,
        settled: ArchiveCounts::default(),
        progress: BackfillProgress {
            partitions_total: ((to - 1 - first_partition) / HOUR_MS + 1) as u64,
            ..BackfillProgress::default()
        },
        started_at_ms: now,
        updated_at_ms: now,
        finished_at_ms: None,
    })
}

/// The earliest point before which every live shard has written all its windows, and the shard
/// that sets it; `None` without a Kinesis source or shard checkpoints.
async fn live_closed_before(
    config: &AggregatorConfig,
    checkpoints: &Location,
) -> Result<Option<(i64, String)>, BackfillError> {
    let SourceConfig::Kinesis(kinesis) = &config.source else {
        return Ok(None);
    };
    let folder = checkpoints.child(&kinesis.stream_name);
    let listing = match checkpoints.store.list_with_delimiter(Some(&folder)).await {
        Ok(listing) => listing,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(BackfillError::store("listing", &folder, source)),
    };
    let mut earliest: Option<(i64, String)> = None;
    for meta in listing.objects {
        let name = meta.location.filename().unwrap_or_default();
        if !name.ends_with(".json") || name.ends_with(".intent.json") {
            continue;
        }
        let Some(bytes) = get_bytes(&checkpoints.store, &meta.location).await? else {
            continue;
        };
        let Ok(checkpoint) = serde_json::from_slice::<ShardCheckpoint>(&bytes) else {
            tracing::debug!(object = %meta.location, "not a shard checkpoint");
            continue;
        };
        if checkpoint.shard_finished {
            continue;
        }
        // Windows still open, and corrections not written yet, would land beside the backfill.
        let closed_before = checkpoint
            .windows
            .corrections
            .iter()
            .map(|window| window.start)
            .fold(checkpoint.windows.closed_before, i64::min);
        if earliest.as_ref().is_none_or(|(t, _)| closed_before < *t) {
            earliest = Some((closed_before, checkpoint.shard_id));
        }
    }
    Ok(earliest)
}

/// An object's bytes; `None` when it is not there.
async fn get_bytes(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<Bytes>, BackfillError> {
    match store.get(path).await {
        Ok(result) => result.bytes().await.map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(source),
    }
    .map_err(|source| BackfillError::store("reading", path, source))
}

async fn load_state(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<BackfillState>, BackfillError> {
    let Some(bytes) = get_bytes(store, path).await? else {
        return Ok(None);
    };
    let state: BackfillState =
        serde_json::from_slice(&bytes).map_err(|source| BackfillError::State {
            path: path.to_string(),
            source,
        })?;
    if state.version != BACKFILL_STATE_VERSION {
        return Err(BackfillError::StateVersion {
            path: path.to_string(),
            found: state.version,
        });
    }
    Ok(Some(state))
}

/// `(window_start, grid_x, grid_y)`.
type WindowCell = (i64, u16, u16);

/// Counts per page, then per window and cell.
#[derive(Debug, Default)]
struct CellCounts {
    pages: FxHashMap<Box<str>, FxHashMap<WindowCell, i64>>,
}

impl CellCounts {
    fn add(&mut self, page_id: &str, key: WindowCell, clicks: i64) {
        let cells = match self.pages.get_mut(page_id) {
            Some(cells) => cells,
            None => self.pages.entry(page_id.into()).or_default(),
        };
        *cells.entry(key).or_insert(0) += clicks;
    }

    /// Moves every count into `by_partition`, split by the hour of the window's start; counts of
    /// partitions before `from_partition` (done already) are dropped.
    fn merge_into(self, by_partition: &mut BTreeMap<i64, CellCounts>, from_partition: i64) {
        for (page, cells) in self.pages {
            for (key, clicks) in cells {
                let partition = floor_hour(key.0);
                if partition >= from_partition {
                    by_partition
                        .entry(partition)
                        .or_default()
                        .add(&page, key, clicks);
                }
            }
        }
    }
}

/// What the reading threads need: how to parse, grid and window clicks, and which windows count.
struct Counting {
    grid: Grid,
    limits: Limits,
    window_ms: i64,
    early_arrivals_ms: i64,
    late_arrivals_ms: i64,
    covered_from: i64,
    covered_to: i64,
    keep_dead_letters: bool,
}

impl Counting {
    fn new(
        config: &AggregatorConfig,
        state: &BackfillState,
        dead_letters: &Option<Location>,
    ) -> Self {
        Counting {
            grid: Grid::from(config.grid),
            limits: Limits::from(&config.limits),
            window_ms: state.request.window_ms,
            early_arrivals_ms: state.request.early_arrivals_ms,
            late_arrivals_ms: state.request.late_arrivals_ms,
            covered_from: state.covered_from_ms,
            covered_to: state.covered_to_ms,
            keep_dead_letters: dead_letters.is_some(),
        }
    }
}

/// What reading one object produced. A damaged object counts nothing but itself.
struct ObjectResult {
    object: ArchiveObject,
    counts: ArchiveCounts,
    cells: CellCounts,
    dead_letters: DeadLetterBatch,
    failure: Option<Failure>,
}

enum Failure {
    /// The bytes cannot be decoded: the object is damaged for good.
    Damaged(String),
    /// The store failed to deliver them: try again later.
    Download(String),
}

/// Reads one object on a blocking thread.
fn read_object(
    runtime: tokio::runtime::Handle,
    store: Arc<dyn ObjectStore>,
    object: ArchiveObject,
    counting: Arc<Counting>,
) -> ObjectResult {
    // A click may be up to a day ahead of the clock that read it, as on the live path; here the
    // clock is the end of the hour the object arrived in.
    let reject_after = object
        .arrival_hour
        .map_or_else(now_ms, |hour| hour + HOUR_MS)
        .saturating_add(MAX_CLOCK_SKEW_MS);
    let mut visit = CountVisit {
        counting: &counting,
        arrival_hour: object.arrival_hour,
        reject_after,
        counts: ArchiveCounts::default(),
        rejected: [0; RejectReason::ALL.len()],
        cells: CellCounts::default(),
        dead_letters: DeadLetterBatch::default(),
    };
    let outcome = ObjectReader::open(runtime, &store, &object.path)
        .and_then(crate::compression::decoded)
        .and_then(|reader| visit.read_records(reader));
    let mut counts = ArchiveCounts {
        objects: 1,
        bytes: object.size,
        ..ArchiveCounts::default()
    };
    match outcome {
        Ok(()) => {
            visit.counts.rejected = RejectReason::ALL
                .iter()
                .filter(|reason| visit.rejected[reason.index()] > 0)
                .map(|reason| (reason.label().to_owned(), visit.rejected[reason.index()]))
                .collect();
            counts.add(&visit.counts);
            ObjectResult {
                object,
                counts,
                cells: visit.cells,
                dead_letters: visit.dead_letters,
                failure: None,
            }
        }
        Err(err) => {
            let failure = if DownloadError::is_download_failure(&err) {
                Failure::Download(err.to_string())
            } else {
                counts.corrupt_objects = 1;
                Failure::Damaged(err.to_string())
            };
            ObjectResult {
                object,
                counts,
                cells: CellCounts::default(),
                dead_letters: DeadLetterBatch::default(),
                failure: Some(failure),
            }
        }
    }
}

struct CountVisit<'c> {
    counting: &'c Counting,
    /// The folder the object came from (`None`: a single-file archive, arrival unknown).
    arrival_hour: Option<i64>,
    reject_after: i64,
    counts: ArchiveCounts,
    rejected: [u64; RejectReason::ALL.len()],
    cells: CellCounts,
    dead_letters: DeadLetterBatch,
}

impl CountVisit<'_> {
    fn read_records(&mut self, reader: impl Read) -> std::io::Result<()> {
        let limits = self.counting.limits;
        let mut chunks = LineChunks::new(reader, CHUNK_BYTES, limits.max_record_bytes);
        while let Some(chunk) = chunks.next_chunk()? {
            match chunk {
                Chunk::Lines(lines) => {
                    for line in lines.split(|b| *b == b'\n') {
                        if !line.iter().all(u8::is_ascii_whitespace) {
                            self.counts.records += 1;
                            parse_record(line, &limits, self);
                        }
                    }
                }
                Chunk::Oversized(prefix) => {
                    self.counts.records += 1;
                    parse_record(prefix, &limits, self);
                }
            }
        }
        Ok(())
    }
}

impl<'a> RecordVisitor<'a> for CountVisit<'_> {
    fn click(&mut self, event: ClickEvent<'a>) {
        if event.event_time_ms > self.reject_after {
            let raw = too_far_ahead_record(&event);
            self.reject(Rejection {
                reason: RejectReason::OutOfRange,
                field: Some("event_time_ms"),
                raw: raw.as_bytes(),
            });
            return;
        }
        let counting = self.counting;
        let start = event.event_time_ms - event.event_time_ms.rem_euclid(counting.window_ms);
        if start < counting.covered_from || start >= counting.covered_to {
            self.counts.outside_range += 1;
            return;
        }
        // Only the folders of the window's arrival margins count, so that every run — a resumed
        // one too, which starts at a later folder — counts the same clicks.
        if let Some(hour) = self.arrival_hour {
            let first = floor_hour(start - counting.early_arrivals_ms);
            let last = floor_hour(start + counting.window_ms + counting.late_arrivals_ms - 1);
            if hour < first || hour > last {
                self.counts.outside_range += 1;
                return;
            }
        }
        let (grid_x, grid_y) = counting.grid.cell(
            event.x,
            event.y,
            event.viewport_width,
            event.viewport_height,
        );
        self.cells.add(&event.page_id, (start, grid_x, grid_y), 1);
        self.counts.clicks += 1;
    }

    fn reject(&mut self, rejection: Rejection<'a>) {
        self.rejected[rejection.reason.index()] += 1;
        if self.counting.keep_dead_letters {
            self.dead_letters
                .push(rejection.reason.label(), rejection.field, rejection.raw);
        }
    }
}

/// A running backfill.
struct Job<'r> {
    request: &'r BackfillRequest,
    /// Firehose's hour folders (a single file has no arrival hours to resume from).
    hourly: bool,
    counting: Arc<Counting>,
    store: Arc<dyn ObjectStore>,
    output: Arc<dyn ObjectStore>,
    table: Path,
    dead_letters: Option<Location>,
    checkpoints: Arc<dyn ObjectStore>,
    state_path: Path,
    /// Counts of partitions not rewritten yet.
    pending: BTreeMap<i64, CellCounts>,
    /// What each arrival hour read that `state.settled` does not hold yet.
    unsettled: BTreeMap<i64, ArchiveCounts>,
    /// Dead letters of the arrival hour being read.
    dead_letter_batch: DeadLetterBatch,
    read_this_run: ArchiveCounts,
    started: Instant,
    last_state_write_ms: i64,
}

impl Job<'_> {
    async fn read(
        &mut self,
        state: &mut BackfillState,
        objects: Vec<ArchiveObject>,
        on_progress: &mut impl FnMut(&BackfillState) -> ControlFlow<()>,
    ) -> Result<Stop, BackfillError> {
        let runtime = tokio::runtime::Handle::current();
        let parallelism = self.request.parallelism.max(1);
        let mut queue = objects.into_iter().peekable();
        let mut in_flight = FuturesOrdered::new();
        // The arrival hours of the objects in flight, in order.
        let mut in_flight_hours = VecDeque::new();
        loop {
            while in_flight.len() < parallelism {
                let Some(object) = queue.next() else { break };
                in_flight_hours.push_back(object.arrival_hour);
                let (runtime, store, counting) =
                    (runtime.clone(), self.store.clone(), self.counting.clone());
                in_flight.push_back(tokio::task::spawn_blocking(move || {
                    read_object(runtime, store, object, counting)
                }));
            }
            let Some(result) = in_flight.next().await else {
                break;
            };
            let result = result.map_err(|err| BackfillError::Task(err.to_string()))?;
            in_flight_hours.pop_front();
            let hour = result.object.arrival_hour;
            self.merge(state, result).await?;
            // After the last object of its hour, every folder up to this one has been read.
            let next_hour = in_flight_hours
                .front()
                .copied()
                .or_else(|| queue.peek().map(|o| o.arrival_hour));
            if let Some(hour) = hour
                && next_hour != Some(Some(hour))
            {
                self.end_of_arrival_hour(Some(hour)).await?;
                if self
                    .finish_partitions(state, Some(hour), on_progress)
                    .await?
                    == Stop::Stopped
                {
                    return Ok(Stop::Stopped);
                }
            } else if now_ms() - self.last_state_write_ms >= STATE_INTERVAL_MS {
                self.update_progress(state);
                self.save(state).await?;
                if on_progress(state).is_break() {
                    // Dropping the futures leaves their threads to finish on their own.
                    return Ok(Stop::Stopped);
                }
            }
        }
        // A single-file archive's dead letters.
        self.end_of_arrival_hour(None).await?;
        Ok(Stop::Continue)
    }

    async fn merge(
        &mut self,
        state: &BackfillState,
        result: ObjectResult,
    ) -> Result<(), BackfillError> {
        let ObjectResult {
            object,
            counts,
            cells,
            dead_letters,
            failure,
        } = result;
        match failure {
            Some(Failure::Download(message)) => {
                return Err(BackfillError::Download {
                    path: object.path.to_string(),
                    message,
                });
            }
            Some(Failure::Damaged(failure)) => {
                tracing::warn!(object = %object.path, %failure, "the archive object cannot be decoded; none of its records count");
                self.keep_damaged_object(&object).await?;
            }
            None => {}
        }
        cells.merge_into(&mut self.pending, state.next_partition_ms);
        let hour = object.arrival_hour.unwrap_or(state.arrival_from_ms);
        self.unsettled.entry(hour).or_default().add(&counts);
        self.read_this_run.add(&counts);
        if !dead_letters.is_empty() {
            self.dead_letter_batch
                .ndjson
                .extend_from_slice(&dead_letters.ndjson);
            self.dead_letter_batch.records += dead_letters.records;
        }
        Ok(())
    }

    /// Copies an object that cannot be decoded to `<dead letters>/backfill-<id>-objects/`.
    async fn keep_damaged_object(&self, object: &ArchiveObject) -> Result<(), BackfillError> {
        let Some(target) = &self.dead_letters else {
            return Ok(());
        };
        let name = object.path.filename().unwrap_or("object");
        let path = Path::from(format!(
            "{}/backfill-{}-objects/{name}",
            target.prefix, self.request.id
        ));
        // Gone since it was read: nothing left to keep.
        let Some(bytes) = get_bytes(&self.store, &object.path).await? else {
            return Ok(());
        };
        target
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| BackfillError::store("writing", &path, source))?;
        Ok(())
    }

    /// Writes the dead letters of one arrival hour (of the whole archive when it is one file),
    /// under a name the hour decides, so that a resumed backfill rewrites the same file.
    async fn end_of_arrival_hour(&mut self, hour: Option<i64>) -> Result<(), BackfillError> {
        let batch = std::mem::take(&mut self.dead_letter_batch);
        let Some(target) = &self.dead_letters else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        let suffix = hour.map_or_else(String::new, |hour| {
            let civil = crate::time::civil_from_millis(hour);
            format!(
                "-{:04}{:02}{:02}{:02}",
                civil.year, civil.month, civil.day, civil.hour
            )
        });
        let path = Path::from(format!(
            "{}/backfill-{}{suffix}.ndjson",
            target.prefix, self.request.id
        ));
        target
            .store
            .put(&path, PutPayload::from(Bytes::from(batch.ndjson)))
            .await
            .map_err(|source| BackfillError::store("writing", &path, source))?;
        Ok(())
    }

    /// Rewrites every partition whose clicks have all been read once the arrival hour `read_up_to`
    /// is (all remaining ones when `None`: the archive is read to its end).
    async fn finish_partitions(
        &mut self,
        state: &mut BackfillState,
        read_up_to: Option<i64>,
        on_progress: &mut impl FnMut(&BackfillState) -> ControlFlow<()>,
    ) -> Result<Stop, BackfillError> {
        let mut changed = false;
        while state.next_partition_ms < state.covered_to_ms {
            let partition = state.next_partition_ms;
            // The last folder that can hold a click of the partition's last window.
            let window = state.request.window_ms;
            let last_start = (partition + HOUR_MS - 1).div_euclid(window) * window;
            let latest_end = last_start.saturating_add(window).min(state.covered_to_ms);
            let last_arrival = floor_hour(latest_end + self.request.late_arrivals_ms - 1);
            if read_up_to.is_some_and(|read| last_arrival > read) {
                break;
            }
            let counts = self.pending.remove(&partition).unwrap_or_default();
            let outcome = self.rewrite_partition(state, partition, counts).await?;
            state.progress.partitions_done += 1;
            state.progress.partitions_changed += u64::from(outcome.changed);
            state.progress.windows_rewritten += outcome.windows;
            state.progress.rows_written += outcome.rows;
            state.next_partition_ms = partition + HOUR_MS;
            changed = true;
        }
        if changed {
            self.settle(state);
            self.update_progress(state);
            self.save(state).await?;
            if on_progress(state).is_break() {
                return Ok(Stop::Stopped);
            }
        }
        Ok(Stop::Continue)
    }

    /// Moves the counts of arrival hours a resumed run will not read again into `settled`.
    fn settle(&mut self, state: &mut BackfillState) {
        if !self.hourly {
            // A single file is read again from its start.
            return;
        }
        let resume = floor_hour(
            state
                .next_partition_ms
                .saturating_sub(self.request.early_arrivals_ms),
        )
        .clamp(state.resume_arrival_ms, state.arrival_to_ms);
        let later = self.unsettled.split_off(&resume);
        for counts in std::mem::replace(&mut self.unsettled, later).values() {
            state.settled.add(counts);
        }
        state.resume_arrival_ms = resume;
    }

    fn update_progress(&self, state: &mut BackfillState) {
        let mut read = state.settled.clone();
        for counts in self.unsettled.values() {
            read.add(counts);
        }
        state.progress.read = read;
        let elapsed = self.started.elapsed().as_secs_f64();
        let bytes_left = state
            .progress
            .bytes_total
            .saturating_sub(state.progress.read.bytes);
        state.progress.eta_seconds = (self.read_this_run.bytes > 0 && elapsed > 0.0).then(|| {
            let rate = self.read_this_run.bytes as f64 / elapsed;
            (bytes_left as f64 / rate).ceil() as u64
        });
        state.updated_at_ms = now_ms();
    }

    async fn save(&mut self, state: &mut BackfillState) -> Result<(), BackfillError> {
        state.updated_at_ms = now_ms();
        let json = serde_json::to_vec_pretty(state).map_err(|source| BackfillError::State {
            path: self.state_path.to_string(),
            source,
        })?;
        self.checkpoints
            .put(&self.state_path, PutPayload::from(Bytes::from(json)))
            .await
            .map_err(|source| BackfillError::store("writing", &self.state_path, source))?;
        self.last_state_write_ms = now_ms();
        Ok(())
    }

    /// Makes one partition's covered windows sum to `counts`, with one PUT or DELETE.
    async fn rewrite_partition(
        &self,
        state: &BackfillState,
        partition: i64,
        counts: CellCounts,
    ) -> Result<PartitionOutcome, BackfillError> {
        let folder = Path::from(format!("{}/{}", self.table, partition_of(partition)));
        let own = Path::from(format!("{folder}/backfill-{}.parquet", self.request.id));
        let mut listing = self.output.list(Some(&folder));
        let mut others = Vec::new();
        let mut own_exists = false;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|source| BackfillError::store("listing", &folder, source))?;
            if meta.location == own {
                own_exists = true;
            } else if meta.location.extension() == Some("parquet")
                && !meta
                    .location
                    .filename()
                    .is_some_and(|name| name.starts_with(['_', '.']))
            {
                others.push(meta.location);
            }
        }
        others.sort();
        // (page, start, end, x, y) → wanted minus present.
        let mut difference: BTreeMap<(Arc<str>, i64, i64, u16, u16), i64> = BTreeMap::new();
        let mut pages: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut intern = |page: &str| -> Arc<str> {
            match pages.get(page) {
                Some(page) => page.clone(),
                None => {
                    let page: Arc<str> = page.into();
                    pages.insert(page.clone());
                    page
                }
            }
        };
        let window = state.request.window_ms;
        for (page, cells) in counts.pages {
            let page = intern(&page);
            for ((start, x, y), clicks) in cells {
                *difference
                    .entry((page.clone(), start, start + window, x, y))
                    .or_insert(0) += clicks;
            }
        }
        for path in &others {
            for row in read_file(&self.output, path).await? {
                let covered = row.window_start >= state.covered_from_ms
                    && row.window_end <= state.covered_to_ms;
                let (Ok(x), Ok(y)) = (u16::try_from(row.grid_x), u16::try_from(row.grid_y)) else {
                    continue;
                };
                if covered {
                    *difference
                        .entry((intern(&row.page_id), row.window_start, row.window_end, x, y))
                        .or_insert(0) -= row.clicks;
                }
            }
        }
        let windows: BTreeSet<(i64, i64)> = difference
            .keys()
            .map(|(_, start, end, _, _)| (*start, *end))
            .collect();
        let mut outputs: BTreeMap<(i64, i64), Vec<CellCount>> = BTreeMap::new();
        for ((page_id, start, end, grid_x, grid_y), clicks) in difference {
            if clicks != 0 {
                outputs.entry((start, end)).or_default().push(CellCount {
                    page_id,
                    grid_x,
                    grid_y,
                    clicks,
                });
            }
        }
        let outputs: Vec<WindowOutput> = outputs
            .into_iter()
            .map(|((window_start, window_end), cells)| WindowOutput {
                window_start,
                window_end,
                kind: WindowKind::Correction,
                cells,
            })
            .collect();
        let rows: u64 = outputs.iter().map(|o| o.cells.len() as u64).sum();
        let changed = if outputs.is_empty() {
            if own_exists {
                match self.output.delete(&own).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => return Err(BackfillError::store("deleting", &own, source)),
                }
            }
            own_exists
        } else {
            let parquet = encode_parquet(&outputs.iter().collect::<Vec<_>>())?;
            self.output
                .put(&own, PutPayload::from(parquet))
                .await
                .map_err(|source| BackfillError::store("writing", &own, source))?;
            true
        };
        tracing::info!(
            partition = %partition_of(partition),
            windows = windows.len(),
            rows,
            changed,
            "partition rewritten"
        );
        Ok(PartitionOutcome {
            changed,
            windows: windows.len() as u64,
            rows,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Continue,
    Stopped,
}

struct PartitionOutcome {
    changed: bool,
    windows: u64,
    rows: u64,
}
