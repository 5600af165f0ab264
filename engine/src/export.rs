//! Strip and export: weights with the zeros baked in, no masks, no step, no optimizer state.

pub use prune_core::domain::{ArtifactFile, Report, TensorReport};

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use prune_core::bitmask;
use prune_core::compress;
use prune_core::files::write_atomically;
use prune_core::job::Export;
use prune_core::options::{ExportFormat, SparseFormat};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::inputs::Output;
use crate::model::{module_bytes, Model, NamedParams};
use crate::{tensors, EngineError};

/// The stripped model's files and the size measures of the report.
pub struct Exported {
    pub artifacts: Vec<ArtifactFile>,
    pub tensors: Vec<TensorReport>,
    pub dense_bytes: u64,
    pub gzip_dense_bytes: u64,
    /// Bitmask exports: weights stored dense, their packed form being larger.
    pub kept_dense: Vec<String>,
}

fn pytorch_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Writes every requested format of the (already masked) model into `out`. The report's
/// tensors are the artifact's: parameters, then buffers (never pruned).
/// `example` is one input batch, which a built-in model's TorchScript export traces.
pub fn export(
    spec: &Export,
    model: &Model,
    pruned: &[String],
    out: &Output,
    example: Option<&Tensor>,
) -> Result<Exported, EngineError> {
    export_with(spec, model, pruned, out, example, HashMap::new())
}

/// [`export`] with `metadata` added to the safetensors header's (a slim model's layer specs).
pub fn export_with(
    spec: &Export,
    model: &Model,
    pruned: &[String],
    out: &Output,
    example: Option<&Tensor>,
    metadata: HashMap<String, String>,
) -> Result<Exported, EngineError> {
    let dir = out.dir.as_path();
    let io = |e: std::io::Error| EngineError::Export(format!("cannot write artifacts in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let compression = spec.compression;
    // Parameters and buffers: the whole state dict, so the artifact loads with strict=True.
    let state = model.state();
    let mut header = pytorch_metadata();
    header.extend(metadata);
    let dense = tensors::write(&state, header)?;
    let mut artifacts = Vec::new();
    let mut kept_dense = Vec::new();
    for &format in &spec.formats {
        let Rendered { file, raw, sparse_format, kept_dense: kept } =
            render(spec, format, model, &dense, dir, example)?;
        kept_dense.extend(kept);
        let bytes = compressed(spec, &raw).map_err(io)?;
        let path = dir.join(format!("{file}{}", compression.extension()));
        write_atomically(&path, |f| f.write_all(&bytes)).map_err(io)?;
        artifacts.push(ArtifactFile {
            format: format.as_str().to_string(),
            key: out.key(&path),
            compression: compression.as_str().to_string(),
            sparse_format: sparse_format.as_str().to_string(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    Ok(Exported {
        artifacts,
        tensors: tensor_reports(&state, pruned)?,
        dense_bytes: dense.len() as u64,
        gzip_dense_bytes: gzip_dense_bytes(&dense),
        kept_dense,
    })
}

/// The bytes the first of `spec.formats` would be stored as, for the model as it is now,
/// computed in memory (no artifact written, no report): what a budget is checked on.
/// `scratch` holds a TorchScript module while it is serialised.
pub fn stored_size(spec: &Export, model: &Model, example: Option<&Tensor>, scratch: &Path) -> Result<u64, EngineError> {
    let format = *spec.formats.first().ok_or_else(|| EngineError::Spec("export.formats is empty".into()))?;
    let dense = tensors::write(&model.state(), pytorch_metadata())?;
    let rendered = render(spec, format, model, &dense, scratch, example)?;
    let bytes = compressed(spec, &rendered.raw).map_err(|e| EngineError::Export(format!("compressing: {e}")))?;
    Ok(bytes.len() as u64)
}

/// One format's file name and uncompressed bytes.
struct Rendered {
    file: &'static str,
    raw: Vec<u8>,
    sparse_format: SparseFormat,
    kept_dense: Vec<String>,
}

/// The uncompressed file of `format`: the safetensors `dense` state dict (bitmask-packed when
/// asked), or the TorchScript module (saved whole; a built-in model traced on `example`).
fn render(
    spec: &Export,
    format: ExportFormat,
    model: &Model,
    dense: &[u8],
    dir: &Path,
    example: Option<&Tensor>,
) -> Result<Rendered, EngineError> {
    let mut kept_dense = Vec::new();
    let (file, raw, sparse_format) = match format {
        ExportFormat::Safetensors => match spec.sparse_format {
            SparseFormat::Bitmask => {
                let (packed, kept) =
                    bitmask::pack_safetensors_reporting(dense).map_err(|e| EngineError::Export(e.to_string()))?;
                kept_dense = kept;
                ("model.safetensors", packed, SparseFormat::Bitmask)
            }
            SparseFormat::Dense => ("model.safetensors", dense.to_vec(), SparseFormat::Dense),
        },
        // A TorchScript module is saved whole: its weights are always dense.
        ExportFormat::Torchscript => {
            match model {
                Model::Script(script) => ("model.pt", script.to_bytes(dir)?, SparseFormat::Dense),
                Model::Sequential(seq) => {
                    let example = example.ok_or_else(|| EngineError::Export(
                    "torchscript export of a model.sequential traces one input: give the job [data] (or start the model with a linear layer)".into(),
                ))?;
                    ("model.pt", module_bytes(&seq.trace(example)?, dir)?, SparseFormat::Dense)
                }
                _ => return Err(EngineError::Spec(
                    "export.formats: torchscript needs a TorchScript input model (model.file / model.blob of a .pt)"
                        .into(),
                )),
            }
        }
    };
    Ok(Rendered { file, raw, sparse_format, kept_dense })
}

/// `raw` compressed as the job asks; the job's threads (train::run set them) compress big
/// artifacts in parallel.
fn compressed(spec: &Export, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
    let settings = compress::Settings::for_artifact(spec.compression, spec.level, raw.len() as u64, threads);
    let mut bytes = Vec::new();
    compress::compress_stream_with(raw, &mut bytes, &settings)?;
    Ok(bytes)
}

/// The report's gzip size of the dense model, 0 (not measured) above
/// [`compress::GZIP_REPORT_MAX`].
fn gzip_dense_bytes(dense: &[u8]) -> u64 {
    if dense.len() as u64 <= compress::GZIP_REPORT_MAX {
        compress::gzip_size(dense) as u64
    } else {
        0
    }
}

fn tensor_reports(params: &NamedParams, pruned: &[String]) -> Result<Vec<TensorReport>, EngineError> {
    params
        .iter()
        .map(|(name, t)| {
            let numel = t.numel() as u64;
            let nonzero = i64::try_from(t.count_nonzero(None::<i64>))? as u64;
            Ok(TensorReport {
                name: name.clone(),
                shape: t.size(),
                pruned: pruned.contains(name),
                numel,
                nonzero,
                sparsity: if numel == 0 { 0.0 } else { 1.0 - nonzero as f64 / numel as f64 },
            })
        })
        .collect()
}

/// The stripped weights of a safetensors artifact (any compression, dense or bitmask-packed).
pub fn read_artifact(path: &Path) -> Result<Vec<(String, Tensor)>, EngineError> {
    let raw = std::fs::read(path)?;
    let packed = compress::decompress_safetensors(&raw, compress::memory_available().unwrap_or(u64::MAX))
        .map_err(|e| EngineError::Format(format!("{}: {e}", path.display())))?;
    let dense = bitmask::unpack_safetensors(&packed).map_err(|e| EngineError::Export(e.to_string()))?;
    let (tensors, _) = tensors::read(&dense)?;
    Ok(tensors)
}
