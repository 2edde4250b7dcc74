//! The aggregator of local mode: the production [`Pipeline`] fed by the tail of the stream log,
//! publishing its still-open windows to the production live endpoint
//! ([`clickheatmap_aggregator::live`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickheatmap_aggregator::live::LiveBoard;
use clickheatmap_aggregator::pipeline::Pipeline;
use clickheatmap_aggregator::time::now_ms;
use tokio::sync::{Mutex, watch};

use crate::stream::LogTail;

/// How often the log is checked for new lines.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without new lines the watermark follows the wall clock.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How far behind the wall clock an idle watermark is put.
pub const IDLE_WATERMARK_LAG_MS: i64 = 2_000;

/// The name local mode's one log has on the live board.
const LIVE_PARTITION: &str = "local";

/// The pipeline, shared by the tailing task and the status reports, and the live board it
/// publishes to.
#[derive(Clone)]
pub struct SharedPipeline {
    pipeline: Arc<Mutex<Pipeline>>,
    board: Arc<LiveBoard>,
}

impl SharedPipeline {
    pub fn new(mut pipeline: Pipeline) -> Self {
        let grid = pipeline.aggregator().grid();
        SharedPipeline {
            board: LiveBoard::new(grid.columns(), grid.rows()),
            pipeline: Arc::new(Mutex::new(pipeline)),
        }
    }

    /// The board the live endpoint answers from.
    pub fn board(&self) -> Arc<LiveBoard> {
        self.board.clone()
    }

    /// Counters of the aggregator so far (records, clicks, rejections).
    pub async fn counters(&self) -> clickheatmap_aggregator::aggregate::Counters {
        self.pipeline.lock().await.aggregator().counters()
    }
}

/// Follows the log until `stop` turns true: feeds new lines to the pipeline, writes the windows
/// the watermark closed, and moves the watermark with the wall clock when the log is quiet so
/// that windows close without new clicks. Nothing is flushed at the end: the log is the durable
/// state, and the next start replays it.
pub async fn run(shared: SharedPipeline, mut tail: LogTail, mut stop: watch::Receiver<bool>) {
    let mut last_data = Instant::now();
    let mut caught_up_once = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut got_data = false;
        loop {
            match tail.read_lines().await {
                Ok(None) => break,
                Ok(Some(lines)) => {
                    got_data = true;
                    if !lines.is_empty() {
                        let mut pipeline = shared.pipeline.lock().await;
                        pipeline.aggregator().set_clock(now_ms());
                        pipeline.feed_lines(0, &lines);
                        flush(&mut pipeline, &shared.board).await;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "reading the stream log failed; retrying");
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
        if !caught_up_once {
            caught_up_once = true;
            let counters = shared.counters().await;
            tracing::info!(
                records = counters.records,
                clicks = counters.clicks,
                "replayed the stream log; following it"
            );
        }
        if got_data {
            last_data = Instant::now();
        } else if last_data.elapsed() >= IDLE_AFTER {
            let mut pipeline = shared.pipeline.lock().await;
            let aggregator = pipeline.aggregator();
            aggregator.set_clock(now_ms());
            aggregator.advance_clock(0, now_ms() - IDLE_WATERMARK_LAG_MS);
            flush(&mut pipeline, &shared.board).await;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn flush(pipeline: &mut Pipeline, board: &LiveBoard) {
    if let Err(error) = pipeline.flush_ready().await {
        // The windows are in the log: a restart rebuilds the curated data from it.
        tracing::error!(%error, "writing curated data failed; restart to rebuild it from the stream log");
    }
    board.publish(LIVE_PARTITION, pipeline.aggregator());
}
