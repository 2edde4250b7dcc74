//! The embedded durable stream: an append-only NDJSON log, `<dir>/stream/clicks.log`.
//!
//! [`LogSink`] is the collector's [`RecordSink`]: every accepted event becomes one line. Writes
//! reach the operating system before `put_records` answers, and [`LogSink::sync`] (called on a
//! short interval, and at shutdown) makes them durable with `fsync`. [`LogTail`] reads the log
//! from its start and then follows it, handing out whole lines only, so a line being written is
//! never half-read.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clickheatmap_collector::{PutError, PutResults, RecordSink, SinkFuture, SinkLimits};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Bytes read from the log at a time.
const READ_BYTES: usize = 1024 * 1024;

/// The writing end of the log.
pub struct LogSink {
    path: PathBuf,
    file: Mutex<LogFile>,
}

struct LogFile {
    file: File,
    /// Written since the last `fsync`.
    dirty: bool,
}

impl LogSink {
    /// Opens (or creates) the log for appending. A last line without its newline — the process
    /// died while writing it — is ended, so that it stays one (rejected) record instead of
    /// merging with the next one.
    pub async fn open(path: &Path) -> io::Result<LogSink> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .await?;
        let len = file.metadata().await?.len();
        if len > 0 {
            file.seek(SeekFrom::Start(len - 1)).await?;
            let mut last = [0_u8; 1];
            file.read_exact(&mut last).await?;
            if last[0] != b'\n' {
                tracing::warn!(path = %path.display(), "the stream log ends in a torn line; ending it");
                file.write_all(b"\n").await?;
                file.flush().await?;
            }
        }
        file.sync_data().await?;
        Ok(LogSink {
            path: path.to_owned(),
            file: Mutex::new(LogFile { file, dirty: false }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes everything written so far durable.
    pub async fn sync(&self) -> io::Result<()> {
        let mut log = self.file.lock().await;
        if log.dirty {
            log.file.sync_data().await?;
            log.dirty = false;
        }
        Ok(())
    }
}

/// Every non-blank line of `records`, each ended by a newline.
fn lines_of(records: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for record in records {
        for line in record.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

impl RecordSink for LogSink {
    fn put_records(&self, records: Vec<Bytes>) -> SinkFuture<'_, PutResults> {
        Box::pin(async move {
            let bytes = lines_of(&records);
            let mut log = self.file.lock().await;
            log.dirty = true;
            let written = async {
                log.file.write_all(&bytes).await?;
                log.file.flush().await
            }
            .await;
            match written {
                Ok(()) => records.iter().map(|_| Ok(())).collect(),
                Err(error) => {
                    tracing::error!(path = %self.path.display(), %error, "appending to the stream log failed");
                    let failure = PutError::new("LogWrite", error.to_string());
                    records.iter().map(|_| Err(failure.clone())).collect()
                }
            }
        })
    }

    fn limits(&self) -> SinkLimits {
        // The same limits as Kinesis, so that local mode behaves like production.
        SinkLimits::KINESIS
    }

    fn name(&self) -> &'static str {
        "local-log"
    }
}

/// The reading end: follows the log from its first byte.
pub struct LogTail {
    file: File,
    /// Bytes read after the last complete line.
    pending: Vec<u8>,
    buf: Vec<u8>,
}

impl LogTail {
    pub async fn open(path: &Path) -> io::Result<LogTail> {
        Ok(LogTail {
            file: File::open(path).await?,
            pending: Vec::new(),
            buf: vec![0; READ_BYTES],
        })
    }

    /// Reads what was appended since the last call, up to [`READ_BYTES`]. `Ok(None)` when nothing
    /// new was there; otherwise the complete lines read (possibly none yet, when a long line is
    /// still arriving).
    pub async fn read_lines(&mut self) -> io::Result<Option<Vec<u8>>> {
        let read = self.file.read(&mut self.buf).await?;
        if read == 0 {
            return Ok(None);
        }
        self.pending.extend_from_slice(&self.buf[..read]);
        let Some(last_newline) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Ok(Some(Vec::new()));
        };
        let rest = self.pending.split_off(last_newline + 1);
        Ok(Some(std::mem::replace(&mut self.pending, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_one_line_per_event() {
        let records = vec![
            Bytes::from_static(b"{\"a\":1}\n{\"a\":2}\n"),
            Bytes::from_static(b"{\"a\":3}"),
            Bytes::from_static(b"\n \n"),
        ];
        assert_eq!(lines_of(&records), b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    }

    #[tokio::test]
    async fn the_tail_hands_out_whole_lines_and_torn_lines_are_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream/clicks.log");
        let sink = LogSink::open(&path).await.unwrap();
        let mut tail = LogTail::open(&path).await.unwrap();
        assert_eq!(tail.read_lines().await.unwrap(), None);
        let results = sink
            .put_records(vec![Bytes::from_static(b"one\ntwo\n")])
            .await;
        assert!(results.iter().all(Result::is_ok));
        sink.sync().await.unwrap();
        assert_eq!(
            tail.read_lines().await.unwrap().as_deref(),
            Some(&b"one\ntwo\n"[..])
        );
        drop(sink);
        // A crash in the middle of a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"tor"))
            .unwrap();
        assert_eq!(tail.read_lines().await.unwrap().as_deref(), Some(&b""[..]));
        let sink = LogSink::open(&path).await.unwrap();
        let _ = sink.put_records(vec![Bytes::from_static(b"three")]).await;
        assert_eq!(
            tail.read_lines().await.unwrap().as_deref(),
            Some(&b"tor\nthree\n"[..])
        );
    }
}
