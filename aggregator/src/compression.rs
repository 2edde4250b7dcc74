//! Reading the raw archive as Firehose writes it: every compression of `rawArchive.compression`
//! (`UNCOMPRESSED`, `GZIP`, `ZIP`, `Snappy`, `HADOOP_SNAPPY`), recognised from the bytes
//! themselves and decoded as a stream, so an object of any size is read in bounded memory.
//!
//! Recognition: GZIP, ZIP and framed Snappy start with magic bytes; Hadoop's Snappy (blocks of
//! length-prefixed raw Snappy chunks) has no magic and is recognised by a plausible first block
//! header that does not look like text; anything else is read as uncompressed records, so that a
//! damaged object's bytes are counted and dead-lettered as invalid records rather than lost.

use std::io::{self, BufRead, BufReader, Cursor, Read};

/// The compressions Firehose writes (the CRD's names in [`Compression::firehose_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zip,
    /// The Snappy framing format.
    Snappy,
    /// Hadoop's block format around raw Snappy.
    HadoopSnappy,
}

impl Compression {
    /// Firehose's name, as in `rawArchive.compression`.
    pub fn firehose_name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
            Compression::Zip => "ZIP",
            Compression::Snappy => "Snappy",
            Compression::HadoopSnappy => "HADOOP_SNAPPY",
        }
    }

    /// The compression Firehose calls `name` (as in `rawArchive.compression`).
    pub fn from_firehose_name(name: &str) -> Option<Compression> {
        [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zip,
            Compression::Snappy,
            Compression::HadoopSnappy,
        ]
        .into_iter()
        .find(|c| c.firehose_name().eq_ignore_ascii_case(name))
    }

    /// Recognises the compression from the first bytes of an object (12 of them, or the whole
    /// object when shorter).
    pub fn sniff(head: &[u8]) -> Compression {
        const SNAPPY_STREAM_IDENTIFIER: &[u8] = b"\xff\x06\x00\x00sNaPpY";
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Compression::Zip
        } else if head.starts_with(SNAPPY_STREAM_IDENTIFIER) {
            Compression::Snappy
        } else if looks_like_hadoop_snappy(head) {
            Compression::HadoopSnappy
        } else {
            Compression::Uncompressed
        }
    }
}

/// A Hadoop block header: the block's uncompressed length, then a first chunk no longer than the
/// raw Snappy bound of that length — and not text (an uncompressed archive starts with a record:
/// `{`, `[`, white space or a byte-order mark).
fn looks_like_hadoop_snappy(head: &[u8]) -> bool {
    let (Some(block), Some(chunk)) = (head.get(..4), head.get(4..8)) else {
        return false;
    };
    if matches!(
        head.first(),
        Some(b'{' | b'[' | b' ' | b'\t' | b'\r' | b'\n' | 0xef)
    ) {
        return false;
    }
    let block = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
    let chunk = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
    block > 0
        && block <= MAX_HADOOP_BLOCK
        && chunk > 0
        && chunk <= snap::raw::max_compress_len(block)
}

/// Hadoop's Snappy codec writes 256 KiB blocks by default; a header claiming more than this is
/// not one, and it bounds what one block may make the reader allocate.
const MAX_HADOOP_BLOCK: usize = 64 * 1024 * 1024;

/// A reader of the decoded bytes of `reader`, whose compression is recognised from its first
/// bytes (see the module comment). Errors are the input's own (I/O, or a damaged compressed
/// stream when read).
pub fn decoded<'a, R: Read + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = read_head(&mut reader, 12)?;
    let compression = Compression::sniff(&head);
    let reader = BufReader::with_capacity(256 * 1024, Cursor::new(head).chain(reader));
    Ok(decoder(reader, compression))
}

/// A reader of the decoded bytes of `reader`, compressed with `compression`.
pub fn decoder<'a, R: BufRead + 'a>(reader: R, compression: Compression) -> Box<dyn Read + 'a> {
    match compression {
        Compression::Uncompressed => Box::new(reader),
        // Concatenated members decode as one stream, as gunzip does.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zip => Box::new(ZipEntries::new(reader)),
        Compression::Snappy => Box::new(snap::read::FrameDecoder::new(reader)),
        Compression::HadoopSnappy => Box::new(HadoopSnappy::new(reader)),
    }
}

/// `data` compressed the way Firehose writes an object (one GZIP member, one deflated ZIP
/// entry, the Snappy framing format, or Hadoop's 256 KiB Snappy blocks), for writing archives
/// in tests, benchmarks and `generate --archive`.
pub fn encode(data: &[u8], compression: Compression) -> io::Result<Vec<u8>> {
    use std::io::Write;
    match compression {
        Compression::Uncompressed => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data)?;
            encoder.finish()
        }
        Compression::Snappy => {
            let mut encoder = snap::write::FrameEncoder::new(Vec::new());
            encoder.write_all(data)?;
            encoder.into_inner().map_err(|err| err.into_error())
        }
        Compression::HadoopSnappy => {
            const BLOCK: usize = 256 * 1024;
            let mut out = Vec::new();
            let mut encoder = snap::raw::Encoder::new();
            for block in data.chunks(BLOCK) {
                let compressed = encoder.compress_vec(block).map_err(snappy_error)?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        Compression::Zip => zip_one_entry(data, "records"),
    }
}

/// A ZIP archive of one deflated entry, with its CRC and the central directory, as `unzip`
/// expects (ZIP64 is not needed: Firehose objects stay far below 4 GiB).
fn zip_one_entry(data: &[u8], name: &str) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let too_large = || invalid("a ZIP entry over 4 GiB needs ZIP64");
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    let deflated = encoder.finish()?;
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let (crc, csize, usize_) = (
        crc.sum(),
        u32::try_from(deflated.len()).map_err(|_| too_large())?,
        u32::try_from(data.len()).map_err(|_| too_large())?,
    );
    let name_len = name.len() as u16;
    // Version 2.0, no flags, deflate, no time or date.
    let common = |out: &mut Vec<u8>| {
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&8u16.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&csize.to_le_bytes());
        out.extend_from_slice(&usize_.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
    };
    let mut out = Vec::with_capacity(deflated.len() + 128);
    out.extend_from_slice(&LOCAL_FILE_HEADER.to_le_bytes());
    common(&mut out);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&deflated);
    let central_at = u32::try_from(out.len()).map_err(|_| too_large())?;
    out.extend_from_slice(&CENTRAL_DIRECTORY.to_le_bytes());
    out.extend_from_slice(&20u16.to_le_bytes()); // made by
    common(&mut out);
    out.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
    out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    out.extend_from_slice(name.as_bytes());
    let central_len = out.len() as u32 - central_at;
    out.extend_from_slice(&END_OF_CENTRAL_DIRECTORY.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&central_len.to_le_bytes());
    out.extend_from_slice(&central_at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

/// The first `len` bytes of `reader` (fewer only at its end), however a pipe delivers them.
fn read_head<R: Read>(reader: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// The entries of a ZIP archive, one after another, read front to back through their local
/// headers (stored or deflated; sizes in the header or in a data descriptor after the data).
struct ZipEntries<R: BufRead> {
    state: ZipState<R>,
}

enum ZipState<R: BufRead> {
    /// At a header.
    Between(R),
    Stored {
        data: io::Take<R>,
        descriptor: bool,
    },
    Deflated {
        data: flate2::bufread::DeflateDecoder<R>,
        descriptor: bool,
    },
    Done,
    /// Between states, or after an error: the archive cannot be read further.
    Broken,
}

const LOCAL_FILE_HEADER: u32 = 0x0403_4b50;
const CENTRAL_DIRECTORY: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
/// Flag bit 3: sizes and CRC follow the data.
const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;

impl<R: BufRead> ZipEntries<R> {
    fn new(reader: R) -> Self {
        ZipEntries {
            state: ZipState::Between(reader),
        }
    }

    /// Reads the next local header; a central directory or the end of the input ends the
    /// archive.
    fn next_entry(mut reader: R) -> io::Result<ZipState<R>> {
        let mut signature = [0u8; 4];
        if !read_exact_or_eof(&mut reader, &mut signature)? {
            return Ok(ZipState::Done);
        }
        match u32::from_le_bytes(signature) {
            LOCAL_FILE_HEADER => {}
            // The central directory or the end record: no more entries.
            CENTRAL_DIRECTORY | END_OF_CENTRAL_DIRECTORY => return Ok(ZipState::Done),
            _ => {
                return Err(invalid(
                    "ZIP archive: no entry header where one should start",
                ));
            }
        }
        let mut header = [0u8; 26];
        reader.read_exact(&mut header)?;
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let flags = u16_at(2);
        let method = u16_at(4);
        let compressed_size = u32_at(14);
        let name_len = u64::from(u16_at(22));
        let extra_len = u64::from(u16_at(24));
        io::copy(
            &mut (&mut reader).take(name_len + extra_len),
            &mut io::sink(),
        )?;
        let descriptor = flags & FLAG_DATA_DESCRIPTOR != 0;
        match method {
            0 if !descriptor => Ok(ZipState::Stored {
                data: reader.take(u64::from(compressed_size)),
                descriptor,
            }),
            8 => Ok(ZipState::Deflated {
                data: flate2::bufread::DeflateDecoder::new(reader),
                descriptor,
            }),
            0 => Err(invalid(
                "ZIP entry stored with its size after the data: its end cannot be found while streaming",
            )),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "ZIP entry with compression method {other}: only stored and deflated entries are read"
                ),
            )),
        }
    }
}

/// Skips a data descriptor: an optional signature, the CRC, and both sizes.
fn skip_descriptor<R: BufRead>(reader: &mut R) -> io::Result<()> {
    let mut first = [0u8; 4];
    reader.read_exact(&mut first)?;
    // Signed: CRC and sizes follow; unsigned: that was the CRC, the sizes follow.
    let rest = if u32::from_le_bytes(first) == DATA_DESCRIPTOR {
        12
    } else {
        8
    };
    let mut skipped = [0u8; 12];
    reader.read_exact(&mut skipped[..rest])
}

/// Fills `buf`; `false` at a clean end of input before the first byte.
fn read_exact_or_eof<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

impl<R: BufRead> Read for ZipEntries<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let read = match &mut self.state {
                ZipState::Done => return Ok(0),
                ZipState::Broken => {
                    return Err(invalid("ZIP archive: unreadable after an earlier error"));
                }
                ZipState::Between(_) => 0,
                ZipState::Stored { data, .. } => {
                    let read = data.read(buf)?;
                    if read == 0 && data.limit() > 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    read
                }
                ZipState::Deflated { data, .. } => data.read(buf)?,
            };
            if read > 0 {
                return Ok(read);
            }
            // The entry is over (or none has begun): on to the next header. An error leaves the
            // state Broken, so that a retry does not take it for the end.
            self.state = match std::mem::replace(&mut self.state, ZipState::Broken) {
                ZipState::Between(reader) => Self::next_entry(reader)?,
                ZipState::Stored { data, descriptor } => {
                    let mut reader = data.into_inner();
                    if descriptor {
                        skip_descriptor(&mut reader)?;
                    }
                    ZipState::Between(reader)
                }
                ZipState::Deflated { data, descriptor } => {
                    let mut reader = data.into_inner();
                    if descriptor {
                        skip_descriptor(&mut reader)?;
                    }
                    ZipState::Between(reader)
                }
                ZipState::Done => ZipState::Done,
                ZipState::Broken => ZipState::Broken,
            };
        }
    }
}

/// Hadoop's Snappy block format: each block is its uncompressed length (big-endian u32), then
/// chunks — a compressed length (big-endian u32) and that many bytes of raw Snappy — until the
/// block's bytes are out.
struct HadoopSnappy<R: Read> {
    reader: R,
    decoder: snap::raw::Decoder,
    /// Uncompressed bytes of the current block still to come from its chunks.
    block_left: usize,
    compressed: Vec<u8>,
    decoded: Vec<u8>,
    position: usize,
}

impl<R: Read> HadoopSnappy<R> {
    fn new(reader: R) -> Self {
        HadoopSnappy {
            reader,
            decoder: snap::raw::Decoder::new(),
            block_left: 0,
            compressed: Vec::new(),
            decoded: Vec::new(),
            position: 0,
        }
    }

    /// Decodes the next chunk into `decoded`; `false` at the end of the input.
    fn next_chunk(&mut self) -> io::Result<bool> {
        let mut length = [0u8; 4];
        while self.block_left == 0 {
            if !read_exact_or_eof(&mut self.reader, &mut length)? {
                return Ok(false);
            }
            self.block_left = u32::from_be_bytes(length) as usize;
            if self.block_left > MAX_HADOOP_BLOCK {
                return Err(invalid("a HADOOP_SNAPPY block claims more than 64 MiB"));
            }
        }
        self.reader.read_exact(&mut length)?;
        let compressed = u32::from_be_bytes(length) as usize;
        if compressed > snap::raw::max_compress_len(self.block_left) {
            return Err(invalid(
                "a HADOOP_SNAPPY chunk is longer than its block allows",
            ));
        }
        self.compressed.resize(compressed, 0);
        self.reader.read_exact(&mut self.compressed)?;
        let len = snap::raw::decompress_len(&self.compressed).map_err(snappy_error)?;
        if len > self.block_left {
            return Err(invalid("a HADOOP_SNAPPY chunk decodes past its block"));
        }
        self.decoded.resize(len, 0);
        self.decoder
            .decompress(&self.compressed, &mut self.decoded)
            .map_err(snappy_error)?;
        self.block_left -= len;
        self.position = 0;
        Ok(true)
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn snappy_error(err: snap::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<R: Read> Read for HadoopSnappy<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.decoded.len() {
            if buf.is_empty() || !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.decoded.len() - self.position);
        buf[..n].copy_from_slice(&self.decoded[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Click records as Firehose archives them: concatenated, newline-separated here.
    fn records(count: usize) -> Vec<u8> {
        let mut text = String::new();
        for i in 0..count {
            text.push_str(&format!(
                r#"{{"event_type":"click","event_time_ms":{},"page_id":"p{}","x":{},"y":{},"viewport_width":1280,"viewport_height":720}}"#,
                1_766_919_066_968_i64 + i as i64,
                i % 3,
                i % 1280,
                i % 720
            ));
            text.push('\n');
        }
        text.into_bytes()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn snappy_framed(data: &[u8]) -> Vec<u8> {
        let mut encoder = snap::write::FrameEncoder::new(Vec::new());
        encoder.write_all(data).unwrap();
        encoder.into_inner().unwrap()
    }

    /// Hadoop's format, with small blocks and chunks so that several of each are exercised.
    fn hadoop_snappy(data: &[u8], block: usize, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = snap::raw::Encoder::new();
        for block_data in data.chunks(block) {
            out.extend_from_slice(&(block_data.len() as u32).to_be_bytes());
            for piece in block_data.chunks(chunk) {
                let compressed = encoder.compress_vec(piece).unwrap();
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
        }
        out
    }

    /// A ZIP archive of `entries`, deflated, sizes in the headers or (`descriptor`) after the
    /// data, with a central directory at the end as every ZIP writer leaves one.
    fn zip(entries: &[&[u8]], descriptor: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, data) in entries.iter().enumerate() {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).unwrap();
            let deflated = encoder.finish().unwrap();
            let name = format!("part-{index}.json");
            let flags: u16 = if descriptor { FLAG_DATA_DESCRIPTOR } else { 0 };
            let (csize, usize_) = if descriptor {
                (0, 0)
            } else {
                (deflated.len() as u32, data.len() as u32)
            };
            out.extend_from_slice(&LOCAL_FILE_HEADER.to_le_bytes());
            out.extend_from_slice(&20u16.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&8u16.to_le_bytes());
            out.extend_from_slice(&[0; 4]); // time, date
            out.extend_from_slice(&[0; 4]); // crc (not checked)
            out.extend_from_slice(&csize.to_le_bytes());
            out.extend_from_slice(&usize_.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&4u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&[0xca, 0xfe, 0, 0]); // an extra field
            out.extend_from_slice(&deflated);
            if descriptor {
                out.extend_from_slice(&DATA_DESCRIPTOR.to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&(deflated.len() as u32).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            }
        }
        out.extend_from_slice(&0x0201_4b50_u32.to_le_bytes());
        out.extend_from_slice(&[0; 42]);
        out
    }

    fn decode(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decoded(bytes).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn what_encode_writes_decodes_to_the_same_bytes() {
        let data = records(20_000);
        for compression in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zip,
            Compression::Snappy,
            Compression::HadoopSnappy,
        ] {
            let encoded = encode(&data, compression).unwrap();
            assert_eq!(Compression::sniff(&encoded), compression);
            assert_eq!(decode(&encoded), data, "{compression:?}");
        }
        // The ZIP is one a ZIP reader would list: the central directory points at the entry.
        let zip = encode(b"{}", Compression::Zip).unwrap();
        let end = zip.len() - 22;
        assert_eq!(&zip[end..end + 4], &END_OF_CENTRAL_DIRECTORY.to_le_bytes());
        let central_at = u32::from_le_bytes(zip[end + 16..end + 20].try_into().unwrap()) as usize;
        assert_eq!(
            &zip[central_at..central_at + 4],
            &CENTRAL_DIRECTORY.to_le_bytes()
        );
    }

    #[test]
    fn every_firehose_compression_is_recognised_and_decoded() {
        let data = records(5_000);
        let cases = [
            (Compression::Uncompressed, data.clone()),
            (Compression::Gzip, gzip(&data)),
            (Compression::Snappy, snappy_framed(&data)),
            (
                Compression::HadoopSnappy,
                hadoop_snappy(&data, 64 * 1024, 16 * 1024),
            ),
            (Compression::Zip, zip(&[&data], false)),
        ];
        for (compression, bytes) in cases {
            assert_eq!(Compression::sniff(&bytes), compression, "{compression:?}");
            assert_eq!(decode(&bytes), data, "{compression:?}");
        }
        // A byte-order mark or a first line that is not JSON: uncompressed records (the parser
        // counts what is invalid), never refused as a whole.
        for text in [&b"\xef\xbb\xbf{\"a\":1}\n"[..], b"garbage line\n{}\n", b""] {
            assert_eq!(Compression::sniff(text), Compression::Uncompressed);
            assert_eq!(decode(text), text);
        }
    }

    #[test]
    fn concatenated_gzip_members_and_several_zip_entries_read_as_one_stream() {
        let (first, second) = (records(100), records(200));
        let mut members = gzip(&first);
        members.extend(gzip(&second));
        let both = [first.clone(), second.clone()].concat();
        assert_eq!(decode(&members), both);
        for descriptor in [false, true] {
            assert_eq!(
                decode(&zip(&[&first, &second], descriptor)),
                both,
                "{descriptor}"
            );
        }
        // An empty archive (only the end record) is no records.
        let mut empty = 0x0605_4b50_u32.to_le_bytes().to_vec();
        empty.extend_from_slice(&[0; 18]);
        assert_eq!(decode(&empty), Vec::<u8>::new());
    }

    #[test]
    fn small_reads_see_every_byte() {
        let data = records(2_000);
        let bytes = hadoop_snappy(&data, 10_000, 3_000);
        let mut reader = decoded(&bytes[..]).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data);
    }

    #[test]
    fn damaged_objects_are_errors_not_silence() {
        let data = records(1_000);
        // Truncated in the middle of the compressed data.
        for bytes in [
            gzip(&data),
            snappy_framed(&data),
            hadoop_snappy(&data, 64 * 1024, 16 * 1024),
            zip(&[&data], false),
            zip_stored(&data),
        ] {
            let cut = &bytes[..bytes.len() / 2];
            let mut out = Vec::new();
            let result = decoded(cut).and_then(|mut reader| reader.read_to_end(&mut out));
            assert!(
                result.is_err(),
                "a truncated {:?} object must fail",
                Compression::sniff(&bytes)
            );
        }
        // Garbage after an entry is not a silent end of the archive, and a retry is no EOF.
        let mut garbled = zip(&[&data], false);
        let entry_end = garbled.len() - 46;
        garbled[entry_end..entry_end + 4].copy_from_slice(b"JUNK");
        let mut reader = decoded(&garbled[..]).unwrap();
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).is_err());
        assert!(reader.read(&mut [0u8; 16]).is_err());
    }

    /// One stored (uncompressed) ZIP entry with its sizes in the header.
    fn zip_stored(data: &[u8]) -> Vec<u8> {
        let mut out = LOCAL_FILE_HEADER.to_le_bytes().to_vec();
        out.extend_from_slice(&10u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&[0; 8]); // time, date, crc
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.push(b'a');
        out.extend_from_slice(data);
        out.extend_from_slice(&END_OF_CENTRAL_DIRECTORY.to_le_bytes());
        out.extend_from_slice(&[0; 18]);
        out
    }

    #[test]
    fn a_stored_entry_and_unsigned_descriptors_are_read() {
        let data = records(300);
        assert_eq!(decode(&zip_stored(&data)), data);
        // The archive of `zip(.., true)` with descriptors that lack their signature.
        let signed = zip(&[&data, &data], true);
        let signature = DATA_DESCRIPTOR.to_le_bytes();
        let mut unsigned = Vec::new();
        let mut at = 0;
        while at < signed.len() {
            if signed[at..].starts_with(&signature) {
                at += 4;
            } else {
                unsigned.push(signed[at]);
                at += 1;
            }
        }
        assert_eq!(decode(&unsigned), [data.clone(), data].concat());
    }
}
