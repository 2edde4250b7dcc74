//! The raw archive as a source: Firehose's `<prefix>YYYY/MM/DD/HH/` objects on S3 or in a local
//! folder, or one file (the local mode's stream log).
//!
//! Firehose names an object's folder after the hour it *started buffering* (UTC), so a folder
//! holds what arrived in that hour, plus up to one buffer interval more. Listing is per hour
//! folder, so a time range costs one LIST per hour, never a walk of the whole archive.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::compression::{Compression, encode};
use crate::location::{Location, LocationError};
use crate::time::civil_from_millis;

pub const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("listing the archive at {prefix}: {source}")]
    List {
        prefix: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path}: {problem}")]
    Path { path: String, problem: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("compressing an archive object: {0}")]
    Encode(#[source] io::Error),
}

/// One archive object and the arrival hour of its folder (`None` for a single-file archive,
/// whose arrival times are unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveObject {
    pub path: Path,
    pub size: u64,
    pub arrival_hour: Option<i64>,
}

/// Where archived records are read from.
#[derive(Clone, Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    layout: ArchiveLayout,
}

#[derive(Clone, Debug)]
enum ArchiveLayout {
    /// Firehose's hour folders below a prefix.
    Hourly { prefix: Path },
    /// One object holding everything (the local stream log, or one archive object).
    Single { path: Path },
}

impl Archive {
    /// Opens `s3://bucket/raw/`, a local folder in Firehose's layout, or a local file.
    pub fn open(location: &str) -> Result<Archive, ArchiveError> {
        let local = std::path::Path::new(location.strip_prefix("file://").unwrap_or(location));
        if !location.contains("://") || location.starts_with("file://") {
            if local.is_file() {
                let (Some(parent), Some(name)) = (local.parent(), local.file_name()) else {
                    return Err(ArchiveError::Path {
                        path: location.to_owned(),
                        problem: "not a file path".into(),
                    });
                };
                let name = name.to_str().ok_or_else(|| ArchiveError::Path {
                    path: location.to_owned(),
                    problem: "the file name is not UTF-8".into(),
                })?;
                let parent = parent.to_str().filter(|p| !p.is_empty()).unwrap_or(".");
                let opened = Location::open(parent)?;
                return Ok(Archive {
                    layout: ArchiveLayout::Single {
                        path: opened.child(name),
                    },
                    store: opened.store,
                });
            }
            if !local.is_dir() {
                return Err(ArchiveError::Path {
                    path: location.to_owned(),
                    problem: "no such file or folder".into(),
                });
            }
        }
        let opened = Location::open(location)?;
        Ok(Archive {
            layout: ArchiveLayout::Hourly {
                prefix: opened.prefix,
            },
            store: opened.store,
        })
    }

    /// Whether the archive is Firehose's hour folders (not one file).
    pub fn is_hourly(&self) -> bool {
        matches!(self.layout, ArchiveLayout::Hourly { .. })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Every object that arrived in the hours `[from_hour, to_hour)` (hour starts in epoch ms),
    /// in arrival order: by hour, then by key (Firehose's keys end in the object's creation
    /// time). A single-file archive is that one file, whatever the range.
    pub async fn list(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> Result<Vec<ArchiveObject>, ArchiveError> {
        match &self.layout {
            ArchiveLayout::Single { path } => {
                let meta = self
                    .store
                    .head(path)
                    .await
                    .map_err(|source| ArchiveError::List {
                        prefix: path.to_string(),
                        source,
                    })?;
                Ok(vec![ArchiveObject {
                    path: meta.location,
                    size: meta.size,
                    arrival_hour: None,
                }])
            }
            ArchiveLayout::Hourly { prefix } => {
                let mut objects = Vec::new();
                let mut hour = from_hour;
                while hour < to_hour {
                    let folder = Path::from(format!("{prefix}/{}", hour_folder(hour)));
                    let mut listing = self.store.list(Some(&folder));
                    let mut in_hour = Vec::new();
                    while let Some(meta) = listing.next().await {
                        let meta = meta.map_err(|source| ArchiveError::List {
                            prefix: folder.to_string(),
                            source,
                        })?;
                        in_hour.push(ArchiveObject {
                            path: meta.location,
                            size: meta.size,
                            arrival_hour: Some(hour),
                        });
                    }
                    in_hour.sort_by(|a, b| a.path.cmp(&b.path));
                    objects.extend(in_hour);
                    hour += HOUR_MS;
                }
                Ok(objects)
            }
        }
    }
}

/// Writes records into an archive the way Firehose does: records concatenated as they arrive
/// into one buffer until it holds `buffer_bytes` or has been open `buffer_ms`, then compressed
/// and put at `<prefix>/YYYY/MM/DD/HH/<stream>-1-YYYY-MM-DD-HH-MM-SS-<n>`, after the time the
/// buffer opened. For tests, benchmarks and `generate --archive`.
pub struct FirehoseWriter {
    location: Location,
    stream: String,
    compression: Compression,
    buffer_bytes: usize,
    buffer_ms: i64,
    buffer: Vec<u8>,
    opened_at: Option<i64>,
    objects: u64,
    bytes: u64,
}

impl FirehoseWriter {
    pub fn new(
        location: Location,
        stream: &str,
        compression: Compression,
        buffer_bytes: usize,
        buffer_ms: i64,
    ) -> Self {
        FirehoseWriter {
            location,
            stream: stream.to_owned(),
            compression,
            buffer_bytes: buffer_bytes.max(1),
            buffer_ms: buffer_ms.max(1),
            buffer: Vec::new(),
            opened_at: None,
            objects: 0,
            bytes: 0,
        }
    }

    /// Adds a record that arrived at `arrival_ms` (arrivals must not go back in time).
    pub async fn push(&mut self, arrival_ms: i64, record: &[u8]) -> Result<(), ArchiveError> {
        if self
            .opened_at
            .is_some_and(|opened| arrival_ms >= opened + self.buffer_ms)
        {
            self.flush().await?;
        }
        self.opened_at.get_or_insert(arrival_ms);
        self.buffer.extend_from_slice(record);
        if self.buffer.len() >= self.buffer_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is buffered; returns the objects and compressed bytes written in all.
    pub async fn finish(&mut self) -> Result<(u64, u64), ArchiveError> {
        self.flush().await?;
        Ok((self.objects, self.bytes))
    }

    async fn flush(&mut self) -> Result<(), ArchiveError> {
        let Some(opened) = self.opened_at.take() else {
            return Ok(());
        };
        let data = std::mem::take(&mut self.buffer);
        let encoded = encode(&data, self.compression).map_err(ArchiveError::Encode)?;
        let civil = civil_from_millis(opened);
        let path = Path::from(format!(
            "{}/{}/{}-1-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{:08x}{}",
            self.location.prefix,
            hour_folder(opened),
            self.stream,
            civil.year,
            civil.month,
            civil.day,
            civil.hour,
            civil.minute,
            civil.second,
            self.objects,
            extension(self.compression)
        ));
        self.bytes += encoded.len() as u64;
        self.location
            .store
            .put(&path, PutPayload::from(encoded))
            .await
            .map_err(|source| ArchiveError::Write {
                path: path.to_string(),
                source,
            })?;
        self.objects += 1;
        Ok(())
    }
}

/// The file name extension Firehose gives an object of each compression.
fn extension(compression: Compression) -> &'static str {
    match compression {
        Compression::Uncompressed => "",
        Compression::Gzip => ".gz",
        Compression::Zip => ".zip",
        Compression::Snappy => ".snappy",
        Compression::HadoopSnappy => ".hsnappy",
    }
}

/// `YYYY/MM/DD/HH`, Firehose's default folder of an hour.
pub fn hour_folder(hour_start_ms: i64) -> String {
    let civil = civil_from_millis(hour_start_ms);
    format!(
        "{:04}/{:02}/{:02}/{:02}",
        civil.year, civil.month, civil.day, civil.hour
    )
}

/// The start of the hour holding `time_ms`.
pub fn floor_hour(time_ms: i64) -> i64 {
    time_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// An object could not be downloaded (as opposed to decoded): a transient failure of the store,
/// which must stop a backfill (to be retried), never be taken for a damaged object.
#[derive(Debug, thiserror::Error)]
#[error("downloading the object: {0}")]
pub struct DownloadError(#[source] pub object_store::Error);

impl DownloadError {
    /// Whether `error` (as it comes out of the decoders, which pass reader errors through) is a
    /// download failure.
    pub fn is_download_failure(error: &io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.is::<DownloadError>())
    }
}

/// A blocking reader of an object's bytes as they are downloaded, for the decoders (which are
/// `Read`). It must run on a thread where blocking is allowed (`spawn_blocking`).
pub struct ObjectReader {
    runtime: tokio::runtime::Handle,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl ObjectReader {
    /// Starts downloading `path`.
    pub fn open(
        runtime: tokio::runtime::Handle,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
    ) -> io::Result<ObjectReader> {
        let result = runtime
            .block_on(store.get(path))
            .map_err(|err| io::Error::other(DownloadError(err)))?;
        Ok(ObjectReader {
            runtime,
            stream: result.into_stream(),
            chunk: Bytes::new(),
        })
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(err)) => return Err(io::Error::other(DownloadError(err))),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_folders_are_firehose_s() {
        // 2026-12-04T10:00:00Z
        let hour = 1_796_378_400_000;
        assert_eq!(hour_folder(hour), "2026/12/04/10");
        assert_eq!(floor_hour(hour + 59 * 60_000), hour);
        assert_eq!(floor_hour(-1), -HOUR_MS);
    }

    #[tokio::test]
    async fn lists_hour_folders_in_arrival_order_and_single_files() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 1_796_378_400_000;
        for (folder, name) in [
            ("2026/12/04/10", "s-1-2026-12-04-10-30-00-b"),
            ("2026/12/04/10", "s-1-2026-12-04-10-05-00-a"),
            ("2026/12/04/11", "s-1-2026-12-04-11-00-00-c"),
            ("2026/12/04/12", "s-1-2026-12-04-12-00-00-d"),
        ] {
            let folder = dir.path().join("raw").join(folder);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join(name), b"{}\n").unwrap();
        }
        let archive = Archive::open(dir.path().join("raw").to_str().unwrap()).unwrap();
        let listed = archive.list(hour, hour + 2 * HOUR_MS).await.unwrap();
        let names: Vec<_> = listed
            .iter()
            .map(|o| (o.path.filename().unwrap().to_owned(), o.arrival_hour))
            .collect();
        assert_eq!(
            names,
            [
                ("s-1-2026-12-04-10-05-00-a".to_owned(), Some(hour)),
                ("s-1-2026-12-04-10-30-00-b".to_owned(), Some(hour)),
                ("s-1-2026-12-04-11-00-00-c".to_owned(), Some(hour + HOUR_MS)),
            ]
        );

        let log = dir.path().join("clicks.log");
        std::fs::write(&log, b"{}\n{}\n").unwrap();
        let single = Archive::open(log.to_str().unwrap()).unwrap();
        let listed = single.list(0, 0).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].size, listed[0].arrival_hour), (6, None));
        assert!(Archive::open(dir.path().join("missing").to_str().unwrap()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_failed_download_is_told_apart_from_damaged_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::open(dir.path().to_str().unwrap()).unwrap();
        std::fs::write(dir.path().join("damaged.gz"), [0x1f, 0x8b, 8, 0, 0]).unwrap();
        let runtime = tokio::runtime::Handle::current();
        let store = location.store.clone();
        let (missing, damaged) = tokio::task::spawn_blocking(move || {
            let missing = ObjectReader::open(runtime.clone(), &store, &Path::from("gone.gz"))
                .err()
                .unwrap();
            let mut out = Vec::new();
            let damaged = ObjectReader::open(runtime, &store, &Path::from("damaged.gz"))
                .and_then(crate::compression::decoded)
                .and_then(|mut reader| reader.read_to_end(&mut out))
                .unwrap_err();
            (missing, damaged)
        })
        .await
        .unwrap();
        assert!(DownloadError::is_download_failure(&missing), "{missing}");
        assert!(!DownloadError::is_download_failure(&damaged), "{damaged}");
    }

    #[tokio::test]
    async fn the_writer_cuts_objects_by_interval_and_size_into_hour_folders() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::open(dir.path().to_str().unwrap()).unwrap();
        let hour = 1_796_378_400_000;
        let mut writer = FirehoseWriter::new(location, "clicks", Compression::Gzip, 100, 300_000);
        // 10:59:00 and 10:59:30 share a buffer (folder 10); 11:04:10 opens the next one.
        writer.push(hour + 59 * 60_000, b"{}\n").await.unwrap();
        writer
            .push(hour + 59 * 60_000 + 30_000, b"{}\n")
            .await
            .unwrap();
        writer
            .push(hour + 64 * 60_000 + 10_000, &[b' '; 150])
            .await
            .unwrap();
        writer
            .push(hour + 64 * 60_000 + 20_000, b"{}\n")
            .await
            .unwrap();
        assert_eq!(writer.finish().await.unwrap().0, 3);
        let archive = Archive::open(dir.path().to_str().unwrap()).unwrap();
        let listed = archive.list(hour, hour + 2 * HOUR_MS).await.unwrap();
        let names: Vec<String> = listed.iter().map(|o| o.path.to_string()).collect();
        assert_eq!(
            names,
            [
                "2026/12/04/10/clicks-1-2026-12-04-10-59-00-00000000.gz",
                "2026/12/04/11/clicks-1-2026-12-04-11-04-10-00000001.gz",
                "2026/12/04/11/clicks-1-2026-12-04-11-04-20-00000002.gz",
            ]
        );
    }
}
