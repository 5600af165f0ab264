//! Whole-artifact compression for exports: none, gzip or zstd.
//!
//! Output is deterministic (same input, same bytes) so that artifact digests are stable across
//! runs and machines: gzip carries no timestamp or file name, zstd runs at a level fixed by the
//! job ([`Settings`]), single-threaded for small artifacts and with worker threads for big ones,
//! whose output depends on the level but not on the number of workers (zstd cuts the input into
//! jobs by size, never by thread count; `mt_output_does_not_depend_on_the_worker_count` checks
//! it). [`decompress`] sniffs the magic bytes, so readers never need to be told which codec
//! wrote a file.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use flate2::read::MultiGzDecoder;
use flate2::GzBuilder;

use crate::bitmask::MAX_HEADER_LEN;

/// zstd level for small exports: slow to write, but artifacts are written once and downloaded
/// often, and below [`SMALL_ARTIFACT`] even level 19 takes a few seconds at most.
pub const ZSTD_LEVEL: i32 = 19;
/// zstd level for big exports: level 19 runs at ~2 MB/s per core, minutes for a 1 GB model;
/// level 3 (zstd's own default) runs at hundreds of MB/s and loses ~10% of the size on weights.
pub const ZSTD_LEVEL_BIG: i32 = 3;
/// gzip levels, small and big, on the same reasoning.
pub const GZIP_LEVEL: i32 = 9;
pub const GZIP_LEVEL_BIG: i32 = 6;
/// Uncompressed artifacts up to this size get the strong default level, single-threaded (the
/// bytes earlier releases wrote); bigger ones the fast level with worker threads.
pub const SMALL_ARTIFACT: u64 = 16 << 20;
/// The levels `export.level` accepts for each codec.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
pub const GZIP_LEVELS: std::ops::RangeInclusive<i32> = 1..=9;
/// The report's gzip size of the dense model is measured only up to this size: gzip runs at
/// ~40 MB/s on one core, and the figure is a comparison, not part of the artifact.
pub const GZIP_REPORT_MAX: u64 = 128 << 20;

/// How one artifact is compressed: codec, level and zstd worker threads (0: single-threaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub compression: Compression,
    pub level: i32,
    pub workers: u32,
}

impl Settings {
    /// The settings for an artifact of `raw_len` uncompressed bytes: the job's `level`, or
    /// the size-dependent default; zstd worker threads (`threads`, at least one) above
    /// [`SMALL_ARTIFACT`] only. The bytes depend on the level and on whether the size is above
    /// [`SMALL_ARTIFACT`], never on `threads`.
    pub fn for_artifact(compression: Compression, level: Option<i32>, raw_len: u64, threads: usize) -> Settings {
        let small = raw_len <= SMALL_ARTIFACT;
        let level = level.unwrap_or(match (compression, small) {
            (Compression::Zstd, true) => ZSTD_LEVEL,
            (Compression::Zstd, false) => ZSTD_LEVEL_BIG,
            (Compression::Gzip, true) => GZIP_LEVEL,
            (Compression::Gzip, false) => GZIP_LEVEL_BIG,
            (Compression::None, _) => 0,
        });
        let workers = if small || compression != Compression::Zstd { 0 } else { threads.clamp(1, 64) as u32 };
        Settings { compression, level, workers }
    }

    /// The levels the codec accepts (`None` for no compression).
    pub fn levels(compression: Compression) -> Option<std::ops::RangeInclusive<i32>> {
        match compression {
            Compression::None => None,
            Compression::Gzip => Some(GZIP_LEVELS),
            Compression::Zstd => Some(ZSTD_LEVELS),
        }
    }
}

/// [`compress_stream`] with explicit [`Settings`]. Returns the bytes read.
pub fn compress_stream_with(mut input: impl Read, output: impl Write, s: &Settings) -> io::Result<u64> {
    let mut encoder = Encoder::new(output, s)?;
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()
}

/// A writer that compresses what it is given with [`Settings`]; [`Encoder::finish`] ends the
/// stream and returns the uncompressed byte count.
pub struct Encoder<'a, W: Write> {
    inner: EncoderKind<'a, W>,
    read: u64,
}

enum EncoderKind<'a, W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::Encoder<'a, W>),
}

impl<W: Write> Encoder<'_, W> {
    pub fn new(output: W, s: &Settings) -> io::Result<Self> {
        let inner = match s.compression {
            Compression::None => EncoderKind::None(output),
            Compression::Gzip => {
                EncoderKind::Gzip(deterministic_gzip(output, flate2::Compression::new(s.level.clamp(0, 9) as u32)))
            }
            Compression::Zstd => {
                let mut encoder = zstd::stream::Encoder::new(output, s.level)?;
                if s.workers > 0 {
                    encoder.multithread(s.workers)?;
                }
                EncoderKind::Zstd(encoder)
            }
        };
        Ok(Encoder { inner, read: 0 })
    }

    pub fn finish(self) -> io::Result<u64> {
        match self.inner {
            EncoderKind::None(mut w) => w.flush()?,
            EncoderKind::Gzip(e) => e.finish()?.flush()?,
            EncoderKind::Zstd(e) => e.finish()?.flush()?,
        }
        Ok(self.read)
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            EncoderKind::None(w) => w.write(buf)?,
            EncoderKind::Gzip(e) => e.write(buf)?,
            EncoderKind::Zstd(e) => e.write(buf)?,
        };
        self.read += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            EncoderKind::None(w) => w.flush(),
            EncoderKind::Gzip(e) => e.flush(),
            EncoderKind::Zstd(e) => e.flush(),
        }
    }
}

/// Counts what gzip at the default level makes of a stream fed piece by piece: the report's
/// `gzip_dense_bytes` for a model that is never in memory whole.
pub struct GzipCounter(flate2::write::GzEncoder<Counter>);

struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Default for GzipCounter {
    fn default() -> Self {
        GzipCounter(deterministic_gzip(Counter(0), flate2::Compression::default()))
    }
}

impl GzipCounter {
    pub fn update(&mut self, data: &[u8]) {
        // Writing to a counter cannot fail.
        self.0.write_all(data).expect("counting gzip");
    }
    pub fn finish(self) -> u64 {
        self.0.finish().expect("counting gzip").0
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The `export.compression` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    None,
    Gzip,
    #[default]
    Zstd,
}

impl Compression {
    /// Every codec, in the order error messages list them.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// The job-spec spelling (`none`, `gzip`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// File-name suffix of a compressed artifact (`""`, `".gz"`, `".zst"`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// The codec whose magic bytes start `data` ([`Compression::None`] when neither does).
    pub fn detect(data: &[u8]) -> Compression {
        if data.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if data.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `export.compression` value that names no codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression `{0}`: expected one of none, gzip, zstd")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| UnknownCompression(s.to_string()))
    }
}

/// Compresses `data` in one go, deterministically (see the module docs).
pub fn compress(data: &[u8], c: Compression) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    compress_stream(data, &mut out, c)?;
    Ok(out)
}

/// Streaming [`compress`]: reads `input` to its end and writes the compressed stream to
/// `output`, so large artifacts need not sit in memory twice. Returns the bytes read.
pub fn compress_stream(mut input: impl Read, output: impl Write, c: Compression) -> io::Result<u64> {
    match c {
        Compression::None => {
            let mut output = output;
            io::copy(&mut input, &mut output)
        }
        Compression::Gzip => {
            let mut encoder = deterministic_gzip(output, flate2::Compression::best());
            let n = io::copy(&mut input, &mut encoder)?;
            encoder.finish()?;
            Ok(n)
        }
        Compression::Zstd => {
            let mut encoder = zstd::stream::Encoder::new(output, ZSTD_LEVEL)?;
            let n = io::copy(&mut input, &mut encoder)?;
            encoder.finish()?;
            Ok(n)
        }
    }
}

/// Undoes [`compress`] whatever the codec, detected from the magic bytes; data that starts with
/// neither magic is returned unchanged (an uncompressed artifact).
pub fn decompress(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_stream(data, &mut out)?;
    Ok(out)
}

/// Streaming [`decompress`]: sniffs the first bytes of `input` and writes the decompressed
/// stream to `output`. Returns the bytes written.
pub fn decompress_stream(input: impl Read, mut output: impl Write) -> io::Result<u64> {
    io::copy(&mut decoder(input)?, &mut output)
}

/// A reader of `input` decompressed with the codec its magic bytes name (or passed through).
fn decoder<'a>(mut input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let head = read_head(&mut input, ZSTD_MAGIC.len())?;
    let codec = Compression::detect(&head);
    let whole = io::Cursor::new(head).chain(input);
    Ok(match codec {
        Compression::None => Box::new(whole),
        // Multi-member: `cat a.gz b.gz` is a valid gzip file and must not be cut short.
        Compression::Gzip => Box::new(MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(zstd::stream::Decoder::new(whole)?),
    })
}

/// [`decompress`] for a safetensors file (an artifact), bounded by what the file itself declares.
///
/// A few kilobytes of zstd can expand to terabytes, so decompressing a whole file into memory
/// must not trust the stream: the header (read first) gives the exact size of the file, which
/// must be at most `max_bytes`, and the stream may not run past it. Either way the error names
/// the sizes instead of the process dying in the OOM killer. Whether the header is otherwise
/// valid is left to the safetensors reader.
pub fn decompress_safetensors(data: &[u8], max_bytes: u64) -> io::Result<Vec<u8>> {
    let mut stream = decoder(data)?;
    let mut prefix = [0u8; 8];
    stream.read_exact(&mut prefix).map_err(|e| truncated(e, "its 8-byte header length"))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN as u64 {
        // What a log file or any other text looks like read as a safetensors file.
        return Err(invalid(format!(
            "not a safetensors file: its first 8 bytes, read as the header length a safetensors file starts \
             with, say {header_len} bytes, over the limit of {MAX_HEADER_LEN}"
        )));
    }
    let mut header = Vec::with_capacity(header_len as usize);
    stream.by_ref().take(header_len).read_to_end(&mut header)?;
    if header.len() as u64 != header_len {
        return Err(invalid(format!("the file ends inside its {header_len}-byte safetensors header")));
    }
    let body_len = declared_body_len(&header)?;
    // Saturating: offsets near u64::MAX must meet the limit check, not overflow.
    let total = (8 + header_len).saturating_add(body_len);
    if total > max_bytes {
        return Err(invalid(format!(
            "its safetensors header declares {total} bytes, over the limit of {max_bytes} bytes"
        )));
    }
    // Reserve what is declared, up to 1 GiB: a header that lies low costs nothing, one that lies
    // high is caught by the stream running dry before memory is touched.
    let mut out = Vec::with_capacity(total.min(1 << 30) as usize);
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&header);
    // One byte past the declared end is enough to tell a lying stream.
    stream.take(body_len.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > total {
        return Err(invalid(format!("it holds more bytes than the {total} its safetensors header declares")));
    }
    Ok(out)
}

/// The end of the last tensor's `data_offsets` in a safetensors header: the body's length.
fn declared_body_len(header: &[u8]) -> io::Result<u64> {
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| invalid(format!("safetensors header is not a JSON object: {e}")))?;
    header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(name, info)| {
            info.get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| invalid(format!("safetensors tensor {name:?} has no valid data_offsets")))
        })
        .try_fold(0u64, |end, e| Ok(end.max(e?)))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn truncated(e: io::Error, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid(format!("the file ends before {what}"))
    } else {
        e
    }
}

/// The memory the system reports as available now (Linux `MemAvailable`), if it says: a sensible
/// `max_bytes` for [`decompress_safetensors`] when the caller has no better bound.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The size of `data` gzipped at zlib's default level (6): the seed's "gzipped model size"
/// measure, so that reported sizes compare with tfmot's numbers.
pub fn gzip_size(data: &[u8]) -> usize {
    let mut encoder = deterministic_gzip(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    encoder.write_all(data).expect("in-memory gzip");
    encoder.finish().expect("in-memory gzip").len()
}

/// A gzip writer without timestamp or file name, so equal inputs give equal bytes.
fn deterministic_gzip<W: Write>(output: W, level: flate2::Compression) -> flate2::write::GzEncoder<W> {
    GzBuilder::new().mtime(0).write(output, level)
}

/// Reads up to `n` bytes (fewer only at end of input), retrying short reads.
fn read_head(input: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    input.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..10_000u32).flat_map(|i| ((i % 97) as f32 * 0.25).to_le_bytes()).collect()
    }

    #[test]
    fn round_trips_every_codec() {
        let data = sample();
        for c in Compression::ALL {
            let packed = compress(&data, c).unwrap();
            assert_eq!(Compression::detect(&packed), c, "{c}");
            assert_eq!(decompress(&packed).unwrap(), data, "{c}");
        }
    }

    #[test]
    fn output_is_deterministic() {
        let data = sample();
        for c in Compression::ALL {
            assert_eq!(compress(&data, c).unwrap(), compress(&data, c).unwrap(), "{c}");
        }
    }

    #[test]
    fn gzip_header_has_no_timestamp_or_name() {
        let packed = compress(b"hello", Compression::Gzip).unwrap();
        assert_eq!(&packed[..2], &GZIP_MAGIC);
        assert_eq!(packed[3] & 0x08, 0, "FNAME flag must be clear");
        assert_eq!(&packed[4..8], &[0, 0, 0, 0], "mtime must be 0");
    }

    #[test]
    fn compresses_better_than_nothing() {
        let data = sample();
        assert!(compress(&data, Compression::Zstd).unwrap().len() < data.len() / 4);
        assert!(compress(&data, Compression::Gzip).unwrap().len() < data.len() / 4);
        assert_eq!(compress(&data, Compression::None).unwrap(), data);
    }

    #[test]
    fn decompress_passes_plain_data_through() {
        for data in [&b""[..], b"\x1f", b"{\"not\": \"compressed\"}", b"\x28\xb5\x2f"] {
            assert_eq!(decompress(data).unwrap(), data);
        }
    }

    #[test]
    fn decompress_reads_concatenated_gzip_members() {
        let mut both = compress(b"abc", Compression::Gzip).unwrap();
        both.extend(compress(b"def", Compression::Gzip).unwrap());
        assert_eq!(decompress(&both).unwrap(), b"abcdef");
    }

    #[test]
    fn corrupt_streams_are_errors_not_panics() {
        let mut gz = compress(&sample(), Compression::Gzip).unwrap();
        gz.truncate(gz.len() / 2);
        assert!(decompress(&gz).is_err());
        let mut zst = compress(&sample(), Compression::Zstd).unwrap();
        zst[10] ^= 0xff;
        zst.truncate(zst.len() / 2);
        assert!(decompress(&zst).is_err());
    }

    fn safetensors_file(values: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = format!(
            r#"{{"__metadata__":{{"k":"v"}},"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
            values.len(),
            data.len()
        );
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend(data);
        file
    }

    #[test]
    fn safetensors_decompression_round_trips_every_codec() {
        let file = safetensors_file(&[0.0; 5000]);
        for c in Compression::ALL {
            let packed = compress(&file, c).unwrap();
            assert_eq!(decompress_safetensors(&packed, file.len() as u64).unwrap(), file, "{c}");
        }
    }

    #[test]
    fn safetensors_decompression_refuses_what_exceeds_the_limit() {
        let file = safetensors_file(&[0.0; 5000]);
        let packed = compress(&file, Compression::Zstd).unwrap();
        let err = decompress_safetensors(&packed, file.len() as u64 - 1).unwrap_err().to_string();
        assert!(err.contains(&format!("declares {} bytes", file.len())), "{err}");
        assert!(err.contains(&format!("limit of {} bytes", file.len() - 1)), "{err}");
    }

    #[test]
    fn a_bomb_behind_a_small_header_stops_at_the_declared_size() {
        // A header declaring 16 bytes, then a gigabyte of zeros: ~1 MB of zstd.
        let mut file = safetensors_file(&[1.0; 4]);
        let declared = file.len();
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.write_all(&file).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        let err = decompress_safetensors(&bomb, u64::MAX).unwrap_err().to_string();
        assert!(err.contains(&format!("more bytes than the {declared}")), "{err}");
        // The same without the trailing zeros is fine.
        file.truncate(declared);
        assert_eq!(decompress_safetensors(&compress(&file, Compression::Gzip).unwrap(), u64::MAX).unwrap(), file);
    }

    #[test]
    fn safetensors_decompression_names_a_broken_header() {
        let cases: [(&[u8], &str); 5] = [
            (b"\x05\0\0", "ends before its 8-byte header length"),
            (&[0xff; 8], "not a safetensors file: its first 8 bytes"),
            (b"2026-12-07 INFO job started\n", "not a safetensors file"),
            (b"\x10\0\0\0\0\0\0\0{}", "ends inside its 16-byte safetensors header"),
            (b"\x05\0\0\0\0\0\0\0{\"w\":", "not a JSON object"),
        ];
        for (bytes, expected) in cases {
            let err = decompress_safetensors(bytes, u64::MAX).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
        let no_offsets = br#"{"w":{"dtype":"F32","shape":[1]}}"#;
        let mut file = (no_offsets.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(no_offsets);
        let err = decompress_safetensors(&file, u64::MAX).unwrap_err().to_string();
        assert!(err.contains("\"w\" has no valid data_offsets"), "{err}");
    }

    #[test]
    fn offsets_near_u64_max_meet_the_limit_without_overflow() {
        let header = format!(r#"{{"w":{{"dtype":"F32","shape":[1],"data_offsets":[0,{}]}}}}"#, u64::MAX);
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        let err = decompress_safetensors(&file, 1 << 40).unwrap_err().to_string();
        assert!(err.contains(&format!("declares {} bytes", u64::MAX)), "{err}");
    }

    #[test]
    fn memory_available_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(memory_available().is_some_and(|m| m > 0));
        }
    }

    #[test]
    fn streaming_matches_one_shot() {
        let data = sample();
        for c in Compression::ALL {
            let mut streamed = Vec::new();
            assert_eq!(compress_stream(&data[..], &mut streamed, c).unwrap(), data.len() as u64);
            assert_eq!(streamed, compress(&data, c).unwrap());
            let mut back = Vec::new();
            decompress_stream(&streamed[..], &mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn names_parse_and_print() {
        for c in Compression::ALL {
            assert_eq!(c.as_str().parse::<Compression>().unwrap(), c);
        }
        assert_eq!(Compression::Zstd.extension(), ".zst");
        assert_eq!(Compression::Gzip.extension(), ".gz");
        assert_eq!(Compression::None.extension(), "");
        let err = "lz4".parse::<Compression>().unwrap_err().to_string();
        assert!(err.contains("`lz4`") && err.contains("none, gzip, zstd"), "{err}");
    }

    #[test]
    fn mt_output_does_not_depend_on_the_worker_count() {
        // Several MT jobs' worth of compressible, non-trivial data.
        let data: Vec<u8> =
            (0..24u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 27) as u8 & (i as u8 | 0x0f)).collect();
        let run = |workers| {
            let s = Settings { compression: Compression::Zstd, level: 3, workers };
            let mut out = Vec::new();
            compress_stream_with(&data[..], &mut out, &s).unwrap();
            out
        };
        let one = run(1);
        assert_eq!(decompress(&one).unwrap(), data);
        for workers in [2, 3, 4] {
            assert!(run(workers) == one, "{workers} workers wrote other bytes than one");
        }
        assert!(run(2) == run(2));
    }

    #[test]
    fn settings_follow_the_size_and_the_job() {
        let small = Settings::for_artifact(Compression::Zstd, None, 1 << 20, 8);
        assert_eq!(small, Settings { compression: Compression::Zstd, level: ZSTD_LEVEL, workers: 0 });
        let big = Settings::for_artifact(Compression::Zstd, None, 1 << 30, 2);
        assert_eq!(big, Settings { compression: Compression::Zstd, level: ZSTD_LEVEL_BIG, workers: 2 });
        assert_eq!(Settings::for_artifact(Compression::Zstd, Some(7), 1 << 30, 0).level, 7);
        assert_eq!(Settings::for_artifact(Compression::Zstd, None, 1 << 30, 0).workers, 1);
        assert_eq!(Settings::for_artifact(Compression::Gzip, None, 1 << 30, 4).workers, 0);
        // The old entry point and the small default write the same bytes.
        let data = sample();
        let mut out = Vec::new();
        compress_stream_with(&data[..], &mut out, &small).unwrap();
        assert_eq!(out, compress(&data, Compression::Zstd).unwrap());
    }

    #[test]
    fn gzip_counter_counts_what_gzip_size_measures() {
        let data = sample();
        let mut counter = GzipCounter::default();
        data.chunks(1000).for_each(|c| counter.update(c));
        assert_eq!(counter.finish(), gzip_size(&data) as u64);
    }

    #[test]
    fn gzip_size_uses_default_level() {
        let data = sample();
        let best = compress(&data, Compression::Gzip).unwrap().len();
        let default = gzip_size(&data);
        assert!(default >= best && default < data.len(), "default {default}, best {best}");
    }
}
