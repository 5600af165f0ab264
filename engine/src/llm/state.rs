//! The layer-by-layer pass's checkpoints: after decoder layer i, two files.
//!
//! * `llm-layer-<i>.safetensors`: layer i's pruned Linear weights (f32), kept for the export and
//!   any later resume; published to the store, never reported as a checkpoint of its own.
//! * `llm-state-<i>.safetensors`: what enters layer i + 1 (the calibration activations and the
//!   evaluation streams through the dense and the pruned layers so far) with the pass's
//!   bookkeeping in its metadata: every layer file so far by key and sha256, the reconstruction
//!   errors, warnings, seconds. This is the checkpoint the server records; resuming from it
//!   continues at layer i + 1 with bit-identical inputs, so the final artifact is the same
//!   bytes. The previous state file is removed once the new one is reported: activations can
//!   be gigabytes.
//!
//! Both are written streamed (header, then each tensor's bytes in slices), never assembled in
//! memory, and atomically.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use prune_core::domain::LinearError;
use prune_core::files::write_atomically;
use prune_core::tensorstream::{header_bytes, Entry, StreamedFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::EngineError;

/// Metadata key of a state file.
const STATE_KEY: &str = "prune.llm_state";
/// Bumped when the layout changes: an older state is not resumed from.
const FORMAT: u32 = 1;

/// A stored file, by store key and content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The pass's bookkeeping, carried in each state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Layers done (the next layer to prune).
    pub layers_done: usize,
    /// `llm-layer-<i>` for every layer done, in order.
    pub layer_files: Vec<Stored>,
    pub reconstruction: Vec<LinearError>,
    pub warnings: Vec<String>,
    /// Seconds spent in the pass so far, over all attempts.
    pub prune_seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    progress: Progress,
}

/// What enters the next layer.
pub struct Streams {
    /// Calibration hidden states `[samples, seq_len, hidden]` (none for magnitude pruning).
    pub calibration: Option<Tensor>,
    /// Evaluation hidden states through the dense layers so far, and through the pruned ones.
    pub eval_dense: Option<Tensor>,
    pub eval_pruned: Option<Tensor>,
}

impl Streams {
    fn named(&self) -> Vec<(&'static str, &Tensor)> {
        [("calibration", &self.calibration), ("eval_dense", &self.eval_dense), ("eval_pruned", &self.eval_pruned)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
}

/// Writes layer `layer`'s pruned weights into `dir`; returns the file and its sha256.
pub fn write_layer(
    dir: &Path,
    layer: usize,
    weights: &[(String, Tensor)],
) -> Result<(std::path::PathBuf, String, u64), EngineError> {
    let path = dir.join(format!("llm-layer-{layer:05}.safetensors"));
    let named: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (sha256, bytes) = write_tensors(&path, &named, HashMap::new())?;
    Ok((path, sha256, bytes))
}

/// Writes the state after `progress.layers_done` layers into `dir`.
pub fn write_state(
    dir: &Path,
    progress: &Progress,
    streams: &Streams,
) -> Result<(std::path::PathBuf, String, u64), EngineError> {
    let path = dir.join(format!("llm-state-{:05}.safetensors", progress.layers_done));
    let meta = Meta { format: FORMAT, progress: progress.clone() };
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&meta).expect("serialises"))]);
    let (sha256, bytes) = write_tensors(&path, &streams.named(), metadata)?;
    Ok((path, sha256, bytes))
}

/// Reads a state file back.
pub fn read_state(path: &Path) -> Result<(Progress, Streams), EngineError> {
    let bad = |why: String| EngineError::Checkpoint(format!("{}: {why}", path.display()));
    let file = StreamedFile::open(path).map_err(|e| bad(e.to_string()))?;
    let meta = file
        .metadata
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| bad("not a language-model pass state (no prune.llm_state metadata)".into()))?;
    let meta: Meta = serde_json::from_str(meta).map_err(|e| bad(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(bad(format!("state format {} (this engine writes {FORMAT})", meta.format)));
    }
    let take = |name: &str| -> Result<Option<Tensor>, EngineError> {
        file.tensors.iter().find(|t| t.name == name).map(|t| read_f32(&file, t).map_err(&bad)).transpose()
    };
    let streams = Streams {
        calibration: take("calibration")?,
        eval_dense: take("eval_dense")?,
        eval_pruned: take("eval_pruned")?,
    };
    Ok((meta.progress, streams))
}

/// Reads one f32 tensor of a file written here.
pub fn read_f32(file: &StreamedFile, t: &prune_core::tensorstream::TensorInfo) -> Result<Tensor, String> {
    if t.dtype != safetensors::Dtype::F32 {
        return Err(format!("tensor {} is {:?}, not f32", t.name, t.dtype));
    }
    let bytes = file.read(t).map_err(|e| e.to_string())?;
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(&bytes, &shape, Kind::Float).map_err(|e| e.to_string())
}

/// Bytes written per slice of a large tensor.
const SLICE_BYTES: usize = 16 << 20;

/// Writes f32 tensors as safetensors without assembling the file in memory; returns its
/// sha256 and size.
fn write_tensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(String, u64), EngineError> {
    let err = |e: std::io::Error| EngineError::Checkpoint(format!("cannot write {}: {e}", path.display()));
    let tensors: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (*n, t.to_kind(Kind::Float).contiguous())).collect();
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, t)| Entry {
            name: n.to_string(),
            dtype: safetensors::Dtype::F32,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            len: (t.numel() * 4) as u64,
        })
        .collect();
    let header = header_bytes(&entries, Some(metadata)).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut sha = Sha256::new();
    let mut total = 0u64;
    write_atomically(path, |f| {
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let mut put = |bytes: &[u8], out: &mut BufWriter<&mut std::fs::File>| {
            sha.update(bytes);
            total += bytes.len() as u64;
            out.write_all(bytes)
        };
        put(&header, &mut out)?;
        let mut buf = Vec::new();
        for (_, t) in &tensors {
            let flat = t.view([-1]);
            let numel = flat.numel();
            let per = (SLICE_BYTES / 4).max(1);
            let mut start = 0;
            while start < numel {
                let len = per.min(numel - start);
                buf.resize(len * 4, 0);
                flat.narrow(0, start as i64, len as i64).copy_data_u8(&mut buf, len);
                put(&buf, &mut out)?;
                start += len;
            }
        }
        out.flush()
    })
    .map_err(err)?;
    Ok((hex::encode(sha.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let calibration = {
            let _rng = crate::rng::global_generator_lock();
            Tensor::randn([3, 5, 4], (Kind::Float, tch::Device::Cpu))
        };
        let streams = Streams { calibration: Some(calibration.shallow_clone()), eval_dense: None, eval_pruned: None };
        let progress = Progress {
            layers_done: 2,
            layer_files: vec![Stored {
                key: "checkpoints/j/llm-layer-00000.safetensors".into(),
                sha256: "ab".into(),
                bytes: 9,
            }],
            reconstruction: vec![LinearError {
                tensor: "model.layers.0.mlp.up_proj.weight".into(),
                layer: 0,
                relative_error: 0.25,
            }],
            warnings: vec!["w".into()],
            prune_seconds: 1.5,
        };
        let (path, sha, bytes) = write_state(dir.path(), &progress, &streams).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(sha, prune_core::files::sha256_file(&path).unwrap());
        let (back, streams) = read_state(&path).unwrap();
        assert_eq!(back, progress);
        assert!(streams.calibration.unwrap().equal(&calibration));
        assert!(streams.eval_dense.is_none());
        let (layer, _, _) =
            write_layer(dir.path(), 0, &[("w".into(), Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu)))]).unwrap();
        let error = read_state(&layer).err().expect("a layer file is no state").to_string();
        assert!(error.contains("not a language-model pass state"), "{error}");
    }
}
