//! The replica's progress report (format: `clickheatmap_crds::progress`), kept up to date by the
//! shard readers and written beside the checkpoints after commits, for the operator.
//!
//! Readers update a shared [`ProgressBoard`] as they read and commit (a mutex per read batch,
//! never per event); the supervision loop asks a [`ProgressWriter`] on every tick whether a write
//! is due: after a commit at most every `PROGRESS_MIN_INTERVAL_MS`, otherwise once per
//! `PROGRESS_HEARTBEAT_MS`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use clickheatmap_crds::progress::{
    PROGRESS_FOLDER, PROGRESS_HEARTBEAT_MS, PROGRESS_MIN_INTERVAL_MS, PROGRESS_VERSION,
    ProgressCounts, ReplicaProgress, ShardProgress, progress_file_name,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::aggregate::Counters;
use crate::location::Location;

/// Converts the aggregator's counters into the report's counts.
pub fn counts_of(counters: &Counters) -> ProgressCounts {
    ProgressCounts {
        records: counters.records,
        accepted: counters.clicks,
        late: counters.late_clicks,
        rejected: counters
            .rejected_by_reason()
            .filter(|(_, count)| *count > 0)
            .map(|(reason, count)| (reason.label().to_owned(), count))
            .collect(),
    }
}

#[derive(Debug, Default)]
struct BoardState {
    shards: BTreeMap<String, ShardProgress>,
    totals: ProgressCounts,
    /// A shard committed since the last write.
    committed: bool,
    /// A shard reader has reported at least once.
    updated: bool,
}

/// What the shard readers of one replica report, shared with the writer.
#[derive(Debug, Default)]
pub struct ProgressBoard {
    state: Mutex<BoardState>,
}

impl ProgressBoard {
    /// Records a shard's latest view, adding `read` (what it counted since its last update) to
    /// the replica's totals; `committed` when the update follows a commit.
    pub fn update(&self, shard: &ShardProgress, read: &ProgressCounts, committed: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.totals.add(read);
        state.committed |= committed;
        state.updated = true;
        match state.shards.get_mut(&shard.shard_id) {
            Some(entry) => entry.clone_from(shard),
            None => {
                state.shards.insert(shard.shard_id.clone(), shard.clone());
            }
        }
    }

    /// The shard is no longer read here (handed over, finished, or its reader failed).
    pub fn remove(&self, shard_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.shards.remove(shard_id);
    }

    fn take(&self) -> (Vec<ShardProgress>, ProgressCounts, bool, bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let committed = std::mem::take(&mut state.committed);
        (
            state.shards.values().cloned().collect(),
            state.totals.clone(),
            committed,
            state.updated,
        )
    }
}

/// Writes one replica's report.
pub struct ProgressWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    replica: String,
    stream: String,
    started_at_ms: i64,
    last_written_ms: Option<i64>,
    /// A commit was seen but not written yet (too soon after the last write).
    commit_pending: bool,
    /// Totals at earlier writes, for the per-minute rate (about the last minute of them).
    history: VecDeque<(i64, ProgressCounts)>,
}

impl ProgressWriter {
    /// The writer of `replica`'s report in the stream's checkpoint folder (`coordination`).
    pub fn new(coordination: &Location, stream: &str, replica: &str, now_ms: i64) -> Self {
        ProgressWriter {
            store: coordination.store.clone(),
            path: coordination
                .child(PROGRESS_FOLDER)
                .join(progress_file_name(replica).as_str()),
            replica: replica.to_owned(),
            stream: stream.to_owned(),
            started_at_ms: now_ms,
            last_written_ms: None,
            commit_pending: false,
            history: VecDeque::from([(now_ms, ProgressCounts::default())]),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the report when due; returns whether it wrote. A failed write is retried at the
    /// next call.
    pub async fn write_if_due(
        &mut self,
        board: &ProgressBoard,
        now_ms: i64,
    ) -> Result<bool, object_store::Error> {
        let (shards, totals, committed, updated) = board.take();
        self.commit_pending |= committed;
        // Before any shard has been read, a report would say "no shard, no traffic": wait for
        // the first read, or a heartbeat's time (a replica with no shard to read still beats).
        let since_last = self.last_written_ms.map_or_else(
            || {
                if updated || now_ms.saturating_sub(self.started_at_ms) >= PROGRESS_HEARTBEAT_MS {
                    i64::MAX
                } else {
                    0
                }
            },
            |at| now_ms.saturating_sub(at),
        );
        let due = since_last >= PROGRESS_HEARTBEAT_MS
            || (self.commit_pending && since_last >= PROGRESS_MIN_INTERVAL_MS);
        if !due {
            return Ok(false);
        }
        let report = self.report(shards, totals.clone(), now_ms);
        let body = serde_json::to_vec(&report).map_err(|source| object_store::Error::Generic {
            store: "progress",
            source: Box::new(source),
        })?;
        self.store.put(&self.path, PutPayload::from(body)).await?;
        self.last_written_ms = Some(now_ms);
        self.commit_pending = false;
        self.history.push_back((now_ms, totals));
        // Keep the newest entry that is at least a minute old as the base of the rate.
        while self.history.len() > 2
            && self
                .history
                .get(1)
                .is_some_and(|(at, _)| now_ms.saturating_sub(*at) >= 60_000)
        {
            self.history.pop_front();
        }
        Ok(true)
    }

    fn report(
        &self,
        shards: Vec<ShardProgress>,
        totals: ProgressCounts,
        now_ms: i64,
    ) -> ReplicaProgress {
        let per_minute = match self.history.front() {
            Some((at, earlier)) => totals.since(earlier).per_minute(now_ms.saturating_sub(*at)),
            None => ProgressCounts::default(),
        };
        ReplicaProgress {
            version: PROGRESS_VERSION,
            replica: self.replica.clone(),
            stream: self.stream.clone(),
            written_at_ms: now_ms,
            started_at_ms: self.started_at_ms,
            shards,
            totals,
            per_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn location() -> Location {
        Location {
            store: Arc::new(InMemory::new()),
            prefix: Path::from("curated/_checkpoints/clicks"),
        }
    }

    async fn read(writer: &ProgressWriter) -> ReplicaProgress {
        let bytes = writer
            .store
            .get(writer.path())
            .await
            .expect("written")
            .bytes()
            .await
            .expect("read");
        serde_json::from_slice(&bytes).expect("valid report")
    }

    fn shard(id: &str, accepted_at: i64) -> ShardProgress {
        ShardProgress {
            shard_id: id.to_owned(),
            last_accepted_at_ms: Some(accepted_at),
            ..ShardProgress::default()
        }
    }

    fn read_counts(accepted: u64, malformed: u64) -> ProgressCounts {
        ProgressCounts {
            records: accepted + malformed,
            accepted,
            late: 0,
            rejected: BTreeMap::from([("malformed_json".to_owned(), malformed)]),
        }
    }

    #[tokio::test]
    async fn writes_after_commits_at_most_every_interval_and_beats_when_idle() {
        let location = location();
        let board = ProgressBoard::default();
        let start = 1_000_000;
        let mut writer = ProgressWriter::new(&location, "clicks", "shop-aggregator-0/1", start);
        assert_eq!(
            writer.path().as_ref(),
            "curated/_checkpoints/clicks/_progress/shop-aggregator-0_1.json"
        );
        // Nothing read yet: no report that would say "no shard, no traffic"…
        assert!(!writer.write_if_due(&board, start).await.unwrap());
        // …until a heartbeat's time (a replica with no shard still beats), or the first read.
        let idle = ProgressBoard::default();
        let mut lonely = ProgressWriter::new(&location, "clicks", "shop-aggregator-9", start);
        assert!(lonely.write_if_due(&idle, start + 60_000).await.unwrap());
        board.update(&shard("s-0", start + 1), &read_counts(0, 0), false);
        assert!(writer.write_if_due(&board, start).await.unwrap());
        board.update(&shard("s-0", start + 1), &read_counts(30, 0), true);
        // A commit right after a write waits for the minimum interval…
        assert!(!writer.write_if_due(&board, start + 5_000).await.unwrap());
        // …and is not forgotten by then.
        assert!(writer.write_if_due(&board, start + 10_000).await.unwrap());
        let report = read(&writer).await;
        assert_eq!(report.shards, vec![shard("s-0", start + 1)]);
        assert_eq!(report.totals.accepted, 30);
        // 30 clicks in 10 s since the start: 180 a minute.
        assert_eq!(report.per_minute.accepted, 180);
        // Reading without a commit does not write before the heartbeat.
        board.update(&shard("s-0", start + 20_000), &read_counts(0, 6), false);
        assert!(!writer.write_if_due(&board, start + 30_000).await.unwrap());
        assert!(writer.write_if_due(&board, start + 70_000).await.unwrap());
        let report = read(&writer).await;
        assert_eq!(report.totals.rejected["malformed_json"], 6);
        assert_eq!(report.written_at_ms, start + 70_000);
        board.remove("s-0");
        assert!(writer.write_if_due(&board, start + 130_000).await.unwrap());
        let report = read(&writer).await;
        assert!(report.shards.is_empty());
        // The rate covers about the last minute: nothing was read in it.
        assert_eq!(report.per_minute.accepted, 0);
        assert_eq!(report.totals.accepted, 30);
    }
}
