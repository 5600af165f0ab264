//! The files that make a sharded artifact a Hugging Face checkpoint directory again: the index
//! of the packed shards and, for bitmask packing, the `config.json` from which
//! compressed-tensors' `ModelCompressor` learns how to decompress them.

use std::io::{self, Write};
use std::path::Path;

use prune_core::bitmask::SPARSE_BITMASK;
use prune_core::files::write_atomically;
use prune_core::method::PruningMethod;
use prune_core::options::{ExportFormat, SparseFormat};
use prune_core::sharded::{ShardIndex, CONFIG_FILE, INDEX_FILE};
use prune_core::Job;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::export::{ArtifactFile, TensorReport};
use crate::inputs::Output;

/// The compressed-tensors release whose `sparse-bitmask` layout and config keys the artifact
/// follows (the last with sparsity compressors; `make test` checks the artifact with it).
pub const COMPRESSED_TENSORS_VERSION: &str = "0.14.0.1";

/// One packed shard as written: the names of the tensors it holds and their data bytes.
pub struct WrittenShard {
    /// The input shard's file name, which the packed shard keeps once decompressed.
    pub name: String,
    pub tensors: Vec<String>,
    pub data_len: u64,
}

/// Writes the index of a sharded artifact and the config (the model's own, `model_config`,
/// and/or, when packed, compressed-tensors' sparsity config) next to the shards; uncompressed,
/// since they are small and tools read them as they are.
pub fn write(
    dir: &Path,
    output: &Output,
    job: &Job,
    shards: &[WrittenShard],
    reports: &[TensorReport],
    sharded: bool,
    model_config: Option<&serde_json::Value>,
) -> io::Result<Vec<ArtifactFile>> {
    let total_size = shards.iter().map(|s| s.data_len).sum::<u64>();
    let index = ShardIndex {
        metadata: Some([("total_size".to_string(), json!(total_size))].into_iter().collect()),
        weight_map: shards.iter().flat_map(|s| s.tensors.iter().map(|t| (t.clone(), s.name.clone()))).collect(),
    };
    let mut files = Vec::with_capacity(2);
    if sharded {
        files.push(write_json(dir, output, job, INDEX_FILE, &serde_json::to_value(&index)?)?);
    }
    let packed = (job.export.sparse_format == SparseFormat::Bitmask).then(|| compressed_tensors_config(job, reports));
    let config = match (model_config, packed) {
        // The model's config keeps every key; compressed-tensors reads its quantization_config.
        (Some(base), Some(packed)) => {
            let mut merged = base.clone();
            if let (Some(m), Some(p)) = (merged.as_object_mut(), packed.as_object()) {
                m.extend(p.clone());
            }
            Some(merged)
        }
        (Some(base), None) => Some(base.clone()),
        (None, packed) => packed,
    };
    if let Some(config) = config {
        files.push(write_json(dir, output, job, CONFIG_FILE, &config)?);
    }
    Ok(files)
}

/// compressed-tensors' `quantization_config` with only a `sparsity_config` (its
/// `ModelCompressor.from_compression_config` reads exactly this): the format, the sparsity of
/// the pruned tensors together, their structure and the modules whose weights were packed.
fn compressed_tensors_config(job: &Job, reports: &[TensorReport]) -> serde_json::Value {
    let pruned = reports.iter().filter(|t| t.pruned);
    let (numel, nonzero) = pruned.clone().fold((0u64, 0u64), |(n, z), t| (n + t.numel, z + t.nonzero));
    let global_sparsity = if numel == 0 { 0.0 } else { 1.0 - nonzero as f64 / numel as f64 };
    let structure = match job.pruning.method {
        PruningMethod::MByN { m: 2, n: 4 } => "2:4",
        _ => "unstructured",
    };
    let targets: Vec<&str> = pruned.filter_map(|t| t.name.strip_suffix(".weight")).collect();
    json!({
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "version": COMPRESSED_TENSORS_VERSION,
            "sparsity_config": {
                "format": SPARSE_BITMASK,
                "global_sparsity": global_sparsity,
                "sparsity_structure": structure,
                "targets": targets,
                "ignore": [],
            },
        },
    })
}

fn write_json(
    dir: &Path,
    output: &Output,
    job: &Job,
    name: &str,
    value: &serde_json::Value,
) -> io::Result<ArtifactFile> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    let path = dir.join(name);
    write_atomically(&path, |f| f.write_all(&text))?;
    Ok(ArtifactFile {
        format: ExportFormat::Safetensors.as_str().to_string(),
        key: output.key(&path),
        compression: "none".to_string(),
        sparse_format: job.export.sparse_format.as_str().to_string(),
        bytes: text.len() as u64,
        sha256: hex::encode(Sha256::digest(&text)),
    })
}
