//! Artifact decompression: arbitrary bytes through `decompress_stream` into a writer capped at
//! 16 MiB and through `decompress_safetensors` with a 16 MiB limit (the plain `decompress` has no
//! size bound: a small zstd/gzip bomb would be fuzzer OOM noise, not a finding), and every
//! `Compression` variant's compress -> decompress round trip.
//!
//! zstd compression at the export level (19) sets up a large context per call and runs at a few
//! executions per second under ASan, so the zstd round trip runs on one input in 32 (by length);
//! decoding and the other codecs' round trips run on every input.
#![no_main]

use std::io::{self, Write};

use libfuzzer_sys::fuzz_target;
use prune_core::compress::{compress, decompress, decompress_safetensors, decompress_stream, Compression};

const CAP: u64 = 16 << 20;

/// Counts bytes and fails once more than `CAP` arrive.
struct Capped(u64);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        if self.0 > CAP {
            return Err(io::Error::other("output cap reached"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Capped(0);
    let _ = decompress_stream(data, &mut out);
    // The header-bounded form: never more than the header declares, and never over the cap.
    if let Ok(file) = decompress_safetensors(data, CAP) {
        assert!(file.len() as u64 <= CAP);
        let header_len = u64::from_le_bytes(file[..8].try_into().unwrap());
        assert!(8 + header_len <= file.len() as u64);
    }

    for c in Compression::ALL {
        if c == Compression::Zstd && data.len() % 32 != 0 {
            continue;
        }
        let packed = compress(data, c).expect("compressing to memory cannot fail");
        // Uncompressed bytes that happen to start with a gzip or zstd magic are sniffed as that
        // codec (a known limitation of magic sniffing, reported separately), so `None` only
        // round-trips for data that does not look compressed.
        if c == Compression::None && Compression::detect(data) != Compression::None {
            continue;
        }
        assert_eq!(Compression::detect(&packed), if c == Compression::None { Compression::None } else { c });
        let back = decompress(&packed).unwrap_or_else(|e| panic!("{c} round trip failed: {e}"));
        assert_eq!(back, data, "{c} round trip changed the data");
    }
});
