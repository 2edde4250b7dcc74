//! Writing closed windows as curated Parquet files, and rejected records as dead letters.
//!
//! The layout is a contract (docs/ARCHITECTURE.md): `<table>/dt=YYYY-MM-DD/hour=HH/`, from the
//! window's start in UTC, with the demo's exact column names and types. File names are derived
//! from the writer, the window and — for corrections — a flush sequence number, so replaying the
//! same input rewrites the same files instead of adding copies. Every write goes through
//! `object_store`: a local directory today, S3 with the same code.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Int32Array, Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{WriterProperties, WriterVersion};

use crate::window::{WindowKind, WindowOutput};
pub use clickheatmap_table::schema::{curated_schema, partition_of};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("encoding Parquet for window {window_start}: {source}")]
    Encode {
        window_start: i64,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("building the Arrow batch for window {window_start}: {source}")]
    Batch {
        window_start: i64,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

/// Encodes the rows of one or more windows as one Parquet file.
pub fn encode_parquet(outputs: &[&WindowOutput]) -> Result<Bytes, SinkError> {
    let window_start = outputs.first().map_or(0, |o| o.window_start);
    let cells = || {
        outputs
            .iter()
            .flat_map(|o| o.cells.iter().map(move |c| (*o, c)))
    };
    // Collected first: the string builder needs an exact length, which a flat map cannot give.
    let page_ids: Vec<&str> = cells().map(|(_, c)| &*c.page_id).collect();
    let page_ids = StringArray::from(page_ids);
    let grid_x = Int32Array::from_iter_values(cells().map(|(_, c)| i32::from(c.grid_x)));
    let grid_y = Int32Array::from_iter_values(cells().map(|(_, c)| i32::from(c.grid_y)));
    let starts = Int64Array::from_iter_values(cells().map(|(o, _)| o.window_start));
    let ends = Int64Array::from_iter_values(cells().map(|(o, _)| o.window_end));
    let clicks = Int64Array::from_iter_values(cells().map(|(_, c)| c.clicks));
    let batch = RecordBatch::try_new(
        curated_schema(),
        vec![
            Arc::new(page_ids),
            Arc::new(grid_x),
            Arc::new(grid_y),
            Arc::new(starts),
            Arc::new(ends),
            Arc::new(clicks),
        ],
    )
    .map_err(|source| SinkError::Batch {
        window_start,
        source,
    })?;
    // Snappy and Parquet v1 pages: what Athena, Glue crawlers and Spark all read.
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_created_by(concat!("clickheatmap ", env!("CARGO_PKG_VERSION")).to_owned())
        .build();
    let encode = |source| SinkError::Encode {
        window_start,
        source,
    };
    let mut writer =
        ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties)).map_err(encode)?;
    writer.write(&batch).map_err(encode)?;
    let bytes = writer.into_inner().map_err(encode)?;
    Ok(Bytes::from(bytes))
}

/// The files of one flush, recorded before they are written so that an interrupted flush can be
/// undone.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushPlan {
    pub curated: Vec<String>,
    pub dead_letter: Option<String>,
}

/// What one flush wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    pub final_windows: u64,
    pub correction_windows: u64,
    pub dead_letter_records: u64,
}

impl WriteReport {
    pub fn add(&mut self, other: &WriteReport) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.rows += other.rows;
        self.final_windows += other.final_windows;
        self.correction_windows += other.correction_windows;
        self.dead_letter_records += other.dead_letter_records;
    }
}

/// Where rejected records go.
#[derive(Clone, Debug)]
pub struct DeadLetterTarget {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
}

/// Writes windows and dead letters of one writer.
pub struct CuratedSink {
    store: Arc<dyn ObjectStore>,
    table: Path,
    dead_letters: Option<DeadLetterTarget>,
    writer_id: String,
    /// Numbers the flushes that wrote something; it names correction and dead-letter files, so
    /// a replay of the same input names them the same.
    flush_sequence: u64,
}

impl CuratedSink {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        table: Path,
        dead_letters: Option<DeadLetterTarget>,
        writer_id: impl Into<String>,
    ) -> Self {
        CuratedSink {
            store,
            table,
            dead_letters,
            writer_id: writer_id.into(),
            flush_sequence: 0,
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn table(&self) -> &Path {
        &self.table
    }

    /// The file of a window's final counts: one per window and writer.
    pub fn final_path(&self, window_start: i64) -> Path {
        let partition = partition_of(window_start);
        Path::from(format!(
            "{}/{partition}/{}-{window_start}.parquet",
            self.table, self.writer_id
        ))
    }

    /// The file of the corrections one flush writes into one partition.
    pub fn correction_path(&self, partition: &str, flush_sequence: u64) -> Path {
        Path::from(format!(
            "{}/{partition}/{}-late-{flush_sequence:08}.parquet",
            self.table, self.writer_id
        ))
    }

    /// The flush number the next write will use.
    pub fn flush_sequence(&self) -> u64 {
        self.flush_sequence
    }

    /// Continues numbering from a checkpoint.
    pub fn set_flush_sequence(&mut self, flush_sequence: u64) {
        self.flush_sequence = flush_sequence;
    }

    /// The files [`CuratedSink::write`] will write for this flush.
    pub fn plan(&self, windows: &[WindowOutput], dead_letters: &DeadLetterBatch) -> FlushPlan {
        let mut curated = Vec::new();
        let mut partitions = std::collections::BTreeSet::new();
        for output in windows.iter().filter(|o| !o.cells.is_empty()) {
            match output.kind {
                WindowKind::Final => curated.push(self.final_path(output.window_start).to_string()),
                WindowKind::Correction => {
                    partitions.insert(partition_of(output.window_start));
                }
            }
        }
        for partition in &partitions {
            curated.push(
                self.correction_path(partition, self.flush_sequence)
                    .to_string(),
            );
        }
        FlushPlan {
            curated,
            dead_letter: self.dead_letter_path(dead_letters).map(|p| p.to_string()),
        }
    }

    fn dead_letter_path(&self, dead_letters: &DeadLetterBatch) -> Option<Path> {
        let target = self.dead_letters.as_ref()?;
        (!dead_letters.is_empty()).then(|| {
            Path::from(format!(
                "{}/{}-{:08}.ndjson",
                target.prefix, self.writer_id, self.flush_sequence
            ))
        })
    }

    /// Removes the files of a flush that was never committed. Files that are not there are fine.
    pub async fn remove(&self, plan: &FlushPlan) -> Result<(), SinkError> {
        let curated = plan.curated.iter().map(|path| (&self.store, path));
        let dead_letter = plan.dead_letter.iter().filter_map(|path| {
            self.dead_letters
                .as_ref()
                .map(|target| (&target.store, path))
        });
        for (store, path) in curated.chain(dead_letter) {
            match store.delete(&Path::from(path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(SinkError::Write {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes one flush: each final window to its own file, the corrections to one file per
    /// partition, and the dead letters gathered since the previous flush. Nothing is skipped on
    /// error; the caller retries the same flush, which rewrites the same files.
    pub async fn write(
        &mut self,
        windows: &[WindowOutput],
        dead_letters: &DeadLetterBatch,
    ) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();
        if windows.is_empty() && dead_letters.is_empty() {
            return Ok(report);
        }
        let sequence = self.flush_sequence;
        let mut corrections: BTreeMap<String, Vec<&WindowOutput>> = BTreeMap::new();
        for output in windows.iter().filter(|o| !o.cells.is_empty()) {
            report.rows += output.cells.len() as u64;
            match output.kind {
                WindowKind::Final => {
                    report.final_windows += 1;
                    let path = self.final_path(output.window_start);
                    report.bytes += self.put(&path, encode_parquet(&[output])?).await?;
                    report.files += 1;
                }
                WindowKind::Correction => {
                    report.correction_windows += 1;
                    corrections
                        .entry(partition_of(output.window_start))
                        .or_default()
                        .push(output);
                }
            }
        }
        for (partition, outputs) in &corrections {
            let path = self.correction_path(partition, sequence);
            report.bytes += self.put(&path, encode_parquet(outputs)?).await?;
            report.files += 1;
        }
        if let (Some(target), Some(path)) =
            (&self.dead_letters, self.dead_letter_path(dead_letters))
        {
            let bytes = Bytes::from(dead_letters.ndjson.clone());
            report.bytes += bytes.len() as u64;
            report.files += 1;
            put(&target.store, &path, bytes).await?;
        }
        report.dead_letter_records = dead_letters.records;
        self.flush_sequence += 1;
        Ok(report)
    }

    async fn put(&self, path: &Path, bytes: Bytes) -> Result<u64, SinkError> {
        let length = bytes.len() as u64;
        put(&self.store, path, bytes).await?;
        tracing::debug!(%path, bytes = length, "wrote curated file");
        Ok(length)
    }
}

async fn put(store: &Arc<dyn ObjectStore>, path: &Path, bytes: Bytes) -> Result<(), SinkError> {
    store
        .put(path, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|source| SinkError::Write {
            path: path.to_string(),
            source,
        })
}

/// Rejected records gathered between two flushes, as NDJSON lines
/// `{"reason":..., "field":..., "record":...}`.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterBatch {
    pub ndjson: Vec<u8>,
    pub records: u64,
}

/// Longest stretch of a rejected record kept in a dead letter.
pub const MAX_DEAD_LETTER_BYTES: usize = 64 * 1024;

impl DeadLetterBatch {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn push(&mut self, reason: &str, field: Option<&str>, raw: &[u8]) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            reason: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
            record: std::borrow::Cow<'a, str>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            truncated: bool,
        }
        let truncated = raw.len() > MAX_DEAD_LETTER_BYTES;
        let kept = &raw[..raw.len().min(MAX_DEAD_LETTER_BYTES)];
        let line = Line {
            reason,
            field,
            record: String::from_utf8_lossy(kept),
            truncated,
        };
        // Serialising plain strings into a Vec cannot fail.
        if serde_json::to_writer(&mut self.ndjson, &line).is_ok() {
            self.ndjson.push(b'\n');
            self.records += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::CellCount;

    #[test]
    fn dead_letters_keep_the_record_and_reason() {
        let mut batch = DeadLetterBatch::default();
        batch.push("wrong_type", Some("x"), br#"{"x":"1"}"#);
        batch.push(
            "malformed_json",
            None,
            &vec![b'{'; MAX_DEAD_LETTER_BYTES + 1],
        );
        let text = String::from_utf8(batch.ndjson.clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["reason"], "wrong_type");
        assert_eq!(lines[0]["field"], "x");
        assert_eq!(lines[0]["record"], r#"{"x":"1"}"#);
        assert_eq!(lines[1]["truncated"], true);
        assert_eq!(batch.records, 2);
    }

    #[test]
    fn file_names_are_deterministic() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let sink = CuratedSink::new(store, Path::from("curated_heatmap"), None, "w-0");
        assert_eq!(
            sink.final_path(1_766_919_060_000).as_ref(),
            "curated_heatmap/dt=2025-12-28/hour=10/w-0-1766919060000.parquet"
        );
        assert_eq!(
            sink.correction_path("dt=2025-12-28/hour=10", 7).as_ref(),
            "curated_heatmap/dt=2025-12-28/hour=10/w-0-late-00000007.parquet"
        );
    }

    #[tokio::test]
    async fn corrections_of_one_flush_share_a_file_per_partition() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut sink = CuratedSink::new(store.clone(), Path::from("t"), None, "w");
        let window = |start: i64, kind| WindowOutput {
            window_start: start,
            window_end: start + 60_000,
            kind,
            cells: vec![CellCount {
                page_id: "p".into(),
                grid_x: 1,
                grid_y: 2,
                clicks: 3,
            }],
        };
        let hour = 1_766_916_000_000;
        let report = sink
            .write(
                &[
                    window(hour, WindowKind::Final),
                    window(hour, WindowKind::Correction),
                    window(hour + 60_000, WindowKind::Correction),
                    window(hour + 3_600_000, WindowKind::Correction),
                ],
                &DeadLetterBatch::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            (
                report.files,
                report.final_windows,
                report.correction_windows,
                report.rows
            ),
            (3, 1, 3, 4)
        );
        let rows = crate::query::read_file(
            &store,
            &Path::from("t/dt=2025-12-28/hour=10/w-late-00000000.parquet"),
        )
        .await
        .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.window_start).collect::<Vec<_>>(),
            vec![hour, hour + 60_000]
        );
    }
}
