//! One aggregator wired to its sink, and the line-oriented file/stdin source.
//!
//! Files are read in large chunks cut at line ends; every line is one record (NDJSON, or a
//! Firehose archive object whose records were concatenated). Window flushes are checked after
//! every chunk, so memory stays bounded by the open windows, not by the input.

use std::io::Read;
use std::time::{Duration, Instant};

use clickheatmap_crds::AggregatorConfig;

use crate::aggregate::{Aggregator, Counters, Flush};
use crate::location::{Location, LocationError};
use crate::sink::{CuratedSink, DeadLetterTarget, SinkError, WriteReport};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("reading {input}: {source}")]
    Read {
        input: String,
        #[source]
        source: std::io::Error,
    },
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub counters: Counters,
    pub written: WriteReport,
    pub elapsed: Duration,
}

/// An aggregator and the sink its flushes go to.
pub struct Pipeline {
    aggregator: Aggregator,
    sink: CuratedSink,
    written: WriteReport,
    started: Instant,
}

impl Pipeline {
    /// Opens the configured output locations.
    pub fn open(config: &AggregatorConfig) -> Result<Pipeline, PipelineError> {
        let output = Location::open(&config.output.root)?;
        let table = output.child(&config.output.table);
        let dead_letters =
            Location::dead_letters(config, &output)?.map(|location| DeadLetterTarget {
                store: location.store,
                prefix: location.prefix,
            });
        let keep_dead_letters = dead_letters.is_some();
        let sink = CuratedSink::new(output.store, table, dead_letters, &config.writer_id);
        Ok(Pipeline::new(
            Aggregator::new(config, keep_dead_letters),
            sink,
        ))
    }

    pub fn new(aggregator: Aggregator, sink: CuratedSink) -> Self {
        Pipeline {
            aggregator,
            sink,
            written: WriteReport::default(),
            started: Instant::now(),
        }
    }

    pub fn aggregator(&mut self) -> &mut Aggregator {
        &mut self.aggregator
    }

    pub fn sink(&self) -> &CuratedSink {
        &self.sink
    }

    /// Feeds every line of `chunk` as one record.
    pub fn feed_lines(&mut self, partition: usize, chunk: &[u8]) {
        for line in chunk.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.aggregator.process_record(partition, line);
        }
    }

    /// Writes whatever the watermark has made final.
    pub async fn flush_ready(&mut self) -> Result<(), PipelineError> {
        let flush = self.aggregator.ready();
        self.write(flush).await
    }

    /// Writes everything: the input is complete.
    pub async fn finish(&mut self) -> Result<RunReport, PipelineError> {
        let flush = self.aggregator.finish();
        self.write(flush).await?;
        Ok(self.report())
    }

    pub fn report(&self) -> RunReport {
        RunReport {
            counters: self.aggregator.counters(),
            written: self.written.clone(),
            elapsed: self.started.elapsed(),
        }
    }

    async fn write(&mut self, flush: Flush) -> Result<(), PipelineError> {
        if flush.is_empty() {
            return Ok(());
        }
        let report = self.sink.write(&flush.windows, &flush.dead_letters).await?;
        self.written.add(&report);
        Ok(())
    }

    /// Reads `reader` to its end as partition `partition`, flushing as windows close.
    pub async fn consume<R: Read>(
        &mut self,
        partition: usize,
        name: &str,
        reader: R,
    ) -> Result<(), PipelineError> {
        let max_record = self.aggregator_limits_max_record();
        let mut chunks = LineChunks::new(reader, CHUNK_BYTES, max_record);
        loop {
            let chunk = chunks.next_chunk().map_err(|source| PipelineError::Read {
                input: name.to_owned(),
                source,
            })?;
            match chunk {
                None => break,
                Some(Chunk::Lines(lines)) => self.feed_lines(partition, lines),
                Some(Chunk::Oversized(prefix)) => {
                    // Counted and dead-lettered (truncated) like any other rejection.
                    self.aggregator.process_record(partition, prefix);
                }
            }
            self.flush_ready().await?;
        }
        Ok(())
    }

    fn aggregator_limits_max_record(&self) -> usize {
        self.aggregator.max_record_bytes()
    }
}

/// Bytes read per chunk: large enough that per-chunk work disappears, small enough for caches.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A piece of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Whole lines (the last one may lack its newline at the end of input).
    Lines(&'a [u8]),
    /// The start of a line longer than the record limit (one byte over the limit, so that it is
    /// rejected as too large); the rest of that line is skipped.
    Oversized(&'a [u8]),
}

/// Cuts a byte stream into chunks of whole lines.
pub struct LineChunks<R> {
    reader: R,
    buf: Vec<u8>,
    filled: usize,
    consumed: usize,
    chunk_bytes: usize,
    max_line: usize,
    eof: bool,
    skipping_oversized: bool,
}

impl<R: Read> LineChunks<R> {
    pub fn new(reader: R, chunk_bytes: usize, max_line: usize) -> Self {
        LineChunks {
            reader,
            buf: Vec::new(),
            filled: 0,
            consumed: 0,
            chunk_bytes: chunk_bytes.max(1),
            max_line,
            eof: false,
            skipping_oversized: false,
        }
    }

    /// Reads until `target` bytes are buffered or the input ends.
    fn fill_to(&mut self, target: usize) -> std::io::Result<()> {
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        while self.filled < target && !self.eof {
            match self.reader.read(&mut self.buf[self.filled..target]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    pub fn next_chunk(&mut self) -> std::io::Result<Option<Chunk<'_>>> {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        let mut target = self.chunk_bytes;
        loop {
            self.fill_to(target.max(self.filled))?;
            if self.skipping_oversized {
                match memchr::memchr(b'\n', &self.buf[..self.filled]) {
                    Some(newline) => {
                        self.buf.copy_within(newline + 1..self.filled, 0);
                        self.filled -= newline + 1;
                        self.skipping_oversized = false;
                    }
                    None if self.eof => {
                        self.filled = 0;
                        return Ok(None);
                    }
                    None => self.filled = 0,
                }
                continue;
            }
            if self.filled == 0 && self.eof {
                return Ok(None);
            }
            let data = &self.buf[..self.filled];
            if let Some(last_newline) = memchr::memrchr(b'\n', data) {
                // The line ending here may itself be over the limit; the parser rejects it then.
                self.consumed = last_newline + 1;
                return Ok(Some(Chunk::Lines(&self.buf[..last_newline])));
            }
            if self.eof {
                self.consumed = self.filled;
                return Ok(Some(Chunk::Lines(&self.buf[..self.filled])));
            }
            if self.filled > self.max_line {
                self.skipping_oversized = true;
                let keep = self.max_line.saturating_add(1).min(self.filled);
                self.consumed = self.filled;
                return Ok(Some(Chunk::Oversized(&self.buf[..keep])));
            }
            // One line longer than the buffer: grow, up to just past the record limit.
            target = (self.filled * 2).min(self.max_line.saturating_add(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], chunk: usize, max_line: usize) -> Vec<String> {
        let mut chunks = LineChunks::new(input, chunk, max_line);
        let mut out = Vec::new();
        while let Some(c) = chunks.next_chunk().unwrap() {
            out.push(match c {
                Chunk::Lines(l) => format!("L:{}", String::from_utf8_lossy(l)),
                Chunk::Oversized(p) => format!("O:{}", p.len()),
            });
        }
        out
    }

    #[test]
    fn chunks_end_on_line_boundaries() {
        assert_eq!(collect(b"ab\ncd\nef", 4, 100), vec!["L:ab", "L:cd", "L:ef"]);
        assert_eq!(collect(b"ab\ncd\n", 100, 100), vec!["L:ab\ncd"]);
        assert_eq!(collect(b"", 4, 100), Vec::<String>::new());
        assert_eq!(
            collect(b"abcdefghij\nk", 4, 100),
            vec!["L:abcdefghij", "L:k"]
        );
    }

    #[test]
    fn oversized_lines_are_cut_and_skipped() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(collect(&input, 4, 10), vec!["O:11", "L:ok"]);
        assert_eq!(collect(&[b'y'; 30], 4, 10), vec!["O:11"]);
    }
}
