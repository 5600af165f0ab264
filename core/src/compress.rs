//! Whole-artifact compression for exports: none, gzip or zstd.
//!
//! Output is deterministic (same input, same bytes) so that artifact digests are stable across
//! runs and machines: gzip carries no timestamp or file name, zstd runs single-threaded at a
//! fixed level. [`decompress`] sniffs the magic bytes, so readers never need to be told which
//! codec wrote a file.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use flate2::read::MultiGzDecoder;
use flate2::GzBuilder;

/// zstd level for exports: slow to write, but artifacts are written once and downloaded often.
pub const ZSTD_LEVEL: i32 = 19;

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
        Compression::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCompression(s.to_string()))
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
pub fn compress_stream(
    mut input: impl Read,
    output: impl Write,
    c: Compression,
) -> io::Result<u64> {
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
pub fn decompress_stream(mut input: impl Read, mut output: impl Write) -> io::Result<u64> {
    let head = read_head(&mut input, ZSTD_MAGIC.len())?;
    let mut whole = io::Cursor::new(head.clone()).chain(input);
    match Compression::detect(&head) {
        Compression::None => io::copy(&mut whole, &mut output),
        // Multi-member: `cat a.gz b.gz` is a valid gzip file and must not be cut short.
        Compression::Gzip => io::copy(&mut MultiGzDecoder::new(whole), &mut output),
        Compression::Zstd => io::copy(&mut zstd::stream::Decoder::new(whole)?, &mut output),
    }
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
fn deterministic_gzip<W: Write>(
    output: W,
    level: flate2::Compression,
) -> flate2::write::GzEncoder<W> {
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
        (0..10_000u32)
            .flat_map(|i| ((i % 97) as f32 * 0.25).to_le_bytes())
            .collect()
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
            assert_eq!(
                compress(&data, c).unwrap(),
                compress(&data, c).unwrap(),
                "{c}"
            );
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
        for data in [
            &b""[..],
            b"\x1f",
            b"{\"not\": \"compressed\"}",
            b"\x28\xb5\x2f",
        ] {
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

    #[test]
    fn streaming_matches_one_shot() {
        let data = sample();
        for c in Compression::ALL {
            let mut streamed = Vec::new();
            assert_eq!(
                compress_stream(&data[..], &mut streamed, c).unwrap(),
                data.len() as u64
            );
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
        assert!(
            err.contains("`lz4`") && err.contains("none, gzip, zstd"),
            "{err}"
        );
    }

    #[test]
    fn gzip_size_uses_default_level() {
        let data = sample();
        let best = compress(&data, Compression::Gzip).unwrap().len();
        let default = gzip_size(&data);
        assert!(
            default >= best && default < data.len(),
            "default {default}, best {best}"
        );
    }
}
