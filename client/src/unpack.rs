//! `prunectl unpack`, offline: a bitmask-packed safetensors file (optionally gzip/zstd
//! compressed, as served) back to a plain dense safetensors file.

use std::io::Write;
use std::path::{Path, PathBuf};

use prune_core::{bitmask, compress};
use serde::Serialize;

use crate::error::{ClientError, Result};
use prune_core::files::write_atomically;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unpacked {
    pub path: PathBuf,
    /// Bytes of the dense file written.
    pub bytes: u64,
}

/// Reads `input` (compression detected from its magic bytes), unpacks every packed weight and
/// writes the dense file to `output` atomically. Unpacked tensors pass through unchanged, so a
/// dense input gives an equivalent dense output.
pub fn unpack_file(input: &Path, output: &Path) -> Result<Unpacked> {
    let served = std::fs::read(input).map_err(|e| ClientError::io(input, e))?;
    let limit = compress::memory_available().unwrap_or(u64::MAX);
    let bytes = compress::decompress_safetensors(&served, limit)
        .map_err(|e| ClientError::Format { path: input.into(), reason: e.to_string() })?;
    let dense = bitmask::unpack_safetensors(&bytes)
        .map_err(|e| ClientError::Format { path: input.into(), reason: e.to_string() })?;
    write_atomically(output, |f| f.write_all(&dense)).map_err(|e| ClientError::io(output, e))?;
    Ok(Unpacked { path: output.to_path_buf(), bytes: dense.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_core::bitmask::TensorData;
    use safetensors::Dtype;

    fn dense_file() -> Vec<u8> {
        let values: Vec<f32> = vec![0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 3.0, 0.0];
        let weight =
            TensorData::new("0.weight", Dtype::F32, vec![2, 4], values.iter().flat_map(|v| v.to_le_bytes()).collect())
                .unwrap();
        let bias = TensorData::new(
            "0.bias",
            Dtype::F32,
            vec![2],
            [0.5f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
        .unwrap();
        bitmask::write_safetensors(&[weight, bias], None).unwrap()
    }

    #[test]
    fn unpacks_a_compressed_packed_file_to_the_dense_one() {
        let dir = tempfile::tempdir().unwrap();
        let dense = dense_file();
        let packed = bitmask::pack_safetensors(&dense).unwrap();
        let input = dir.path().join("packed.safetensors.zst");
        std::fs::write(&input, compress::compress(&packed, compress::Compression::Zstd).unwrap()).unwrap();
        let output = dir.path().join("dense.safetensors");

        unpack_file(&input, &output).unwrap();
        let (got, _) = bitmask::read_safetensors(&std::fs::read(&output).unwrap()).unwrap();
        let (want, _) = bitmask::read_safetensors(&dense).unwrap();
        let sorted = |mut v: Vec<TensorData>| {
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        assert_eq!(sorted(got), sorted(want));
    }

    #[test]
    fn garbage_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("junk.safetensors");
        std::fs::write(&input, b"not a safetensors file").unwrap();
        let err = unpack_file(&input, &dir.path().join("out")).unwrap_err();
        assert!(err.to_string().starts_with(&input.display().to_string()), "{err}");
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_writing() {
        // A valid file followed by 256 MiB of zeros the header does not declare: a few hundred
        // kilobytes of zstd that must not be inflated into memory.
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.write_all(&dense_file()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            encoder.write_all(&zeros).unwrap();
        }
        let input = dir.path().join("bomb.safetensors.zst");
        std::fs::write(&input, encoder.finish().unwrap()).unwrap();
        let err = unpack_file(&input, &dir.path().join("out")).unwrap_err().to_string();
        assert!(err.contains("more bytes than the"), "{err}");
        assert!(!dir.path().join("out").exists());
    }
}
