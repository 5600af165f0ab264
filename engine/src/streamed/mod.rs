//! One-shot pruning of a safetensors state dict without libtorch, one tensor at a time.
//!
//! `training.epochs = 0` on a state dict needs no forward pass: each tensor is read from the
//! disk (`pread`, no memory map, so finished tensors leave no resident pages behind), ranked in
//! f32 with `prune_core::mask` (the functions the libtorch path calls, so masks are identical:
//! exact-k, ties to the lower index), masked in its own dtype, packed, and appended to a spool
//! file; the report's figures are accumulated on the way. Global scope takes two more reading
//! passes over the globally ranked tensors first ([`GlobalSelection`]), holding only two
//! histograms. At the end the header (whose sizes are only known then) and the spool are
//! compressed into the artifact with the job's threads.
//!
//! Memory: the tensor being handled, its f32 values and its mask (3x its bytes for f32, 5x for
//! f16/bf16, whose f32 copy is twice their size), plus the compressor's buffers.

mod select;
mod values;

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;

use prune_core::bitmask::{self, TensorData, SPARSE_BITMASK, SPARSITY_FORMAT_KEY};
use prune_core::compress::{self, GzipCounter, Settings};
use prune_core::files::write_atomically;
use prune_core::mask::GlobalSelection;
use prune_core::options::{ExportFormat, SparseFormat};
use prune_core::tensorstream::{header_bytes, Entry, StreamedFile, TensorInfo};
use prune_core::Job;
use sha2::{Digest, Sha256};

pub use select::{select, Rule};

use crate::events::{Event, EventSink, MetricPoint, TensorSparsity};
use crate::export::{ArtifactFile, Report, TensorReport};
use crate::inputs::{JobInputs, JobOutcome};
use crate::EngineError;

/// Whether [`run`] handles this job: one-shot, and the model file is a safetensors state dict.
pub fn applies(job: &Job, inputs: &JobInputs) -> bool {
    if job.training.epochs != 0 || job.model.sequential.is_some() {
        return false;
    }
    let Some(path) = &inputs.model_file else { return false };
    let mut head = [0u8; 9];
    // The libtorch path's test (`model::looks_like_safetensors`): a JSON header after the length.
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[8] == b'{'
}

fn model_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("state dict: {e}"))
}

/// Prunes `inputs.model_file` at each rule's final sparsity and writes the artifact.
pub fn run(job: &Job, inputs: &JobInputs, sink: &mut dyn EventSink) -> Result<JobOutcome, EngineError> {
    let path = inputs.model_file.as_deref().ok_or_else(|| EngineError::Model("no model file".into()))?;
    let file = StreamedFile::open(path).map_err(model_error)?;
    if let Some(t) = file.tensors.iter().find(|t| !values::is_supported(t.dtype)) {
        return Err(model_error(format!("tensor {}: unsupported dtype {:?}", t.name, t.dtype)));
    }
    if job.export.formats.contains(&ExportFormat::Torchscript) {
        return Err(EngineError::Spec(
            "export.formats: torchscript needs a TorchScript input model (model.file / model.blob of a .pt)".into(),
        ));
    }
    let rules = select(&job.pruning, &file.tensors)?;
    let pruned: Vec<String> =
        file.tensors.iter().zip(&rules).filter(|(_, r)| r.is_some()).map(|(t, _)| t.name.clone()).collect();
    if pruned.is_empty() {
        return Err(EngineError::Spec(
            "pruning: no parameter is selected for pruning (check include/exclude/overrides)".into(),
        ));
    }
    // Nothing here runs on a GPU: masks are computed on the host whatever the device.
    let warnings = match job.training.device {
        prune_core::options::Device::Cpu => vec![],
        device => vec![format!(
            "training.device = \"{device}\": a one-shot safetensors state dict is pruned on the CPU, streamed a tensor at a time"
        )],
    };
    sink.emit(Event::Started {
        total_steps: 0,
        steps_per_epoch: 0,
        epochs: 0,
        start_step: 0,
        pruned: pruned.clone(),
        warnings,
    })?;

    let mut global = global_selection(&file, &rules)?;
    let dir = inputs.artifacts.dir.as_path();
    let io_error = |e: io::Error| EngineError::Export(format!("cannot write artifacts in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let sparse = job.export.sparse_format;
    let mut spool = Spool::new(dir).map_err(io_error)?;

    let dense_entries: Vec<Entry> = file
        .tensors
        .iter()
        .map(|t| Entry { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), len: t.len as u64 })
        .collect();
    let dense_header = header_bytes(&dense_entries, None).map_err(model_error)?;
    let dense_bytes = dense_header.len() as u64 + dense_entries.iter().map(|e| e.len).sum::<u64>();
    let mut gzip = (dense_bytes <= compress::GZIP_REPORT_MAX).then(GzipCounter::default);
    if let Some(g) = &mut gzip {
        g.update(&dense_header);
    }

    let mut reports = Vec::with_capacity(file.tensors.len());
    let mut sparsity = Vec::with_capacity(pruned.len());
    for (info, rule) in file.tensors.iter().zip(&rules) {
        let mut data = file.read(info).map_err(model_error)?;
        if values::is_float(info.dtype) {
            let f32s = values::to_f32(info.dtype, &data)
                .ok_or_else(|| EngineError::Model(format!("parameter {} holds NaN or infinite values", info.name)))?;
            if let Some(rule) = rule {
                let mask = match &mut global {
                    Some(g) if rule.in_global_selection() => g.next_mask(&f32s),
                    _ => rule.method.mask(&f32s, &info.shape, rule.schedule.final_sparsity()),
                };
                drop(f32s);
                values::apply_mask(&mut data, info.dtype.bitsize() / 8, &mask);
                sparsity.push(TensorSparsity { name: info.name.clone(), sparsity: reported_sparsity(&mask) });
            }
        }
        if let Some(g) = &mut gzip {
            g.update(&data);
        }
        reports.push(tensor_report(info, rule.is_some(), &data));
        let tensor = TensorData { name: info.name.clone(), dtype: info.dtype, shape: info.shape.clone(), data };
        let parts = match sparse {
            SparseFormat::Dense => vec![tensor],
            SparseFormat::Bitmask => bitmask::pack_one(tensor).map_err(|e| EngineError::Export(e.to_string()))?,
        };
        for part in parts {
            spool.push(part).map_err(io_error)?;
        }
    }

    sink.emit(Event::Metrics {
        points: sparsity
            .iter()
            .map(|s| MetricPoint { step: 0, name: format!("sparsity/{}", s.name), value: s.sparsity })
            .collect(),
    })?;
    sink.emit(Event::Progress { step: 0, total_steps: 0, epoch: 0, loss: f64::NAN, accuracy: f64::NAN, sparsity })?;

    let mut metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    if sparse == SparseFormat::Bitmask {
        metadata.insert(SPARSITY_FORMAT_KEY.into(), SPARSE_BITMASK.into());
    }
    let header = header_bytes(&spool.entries, Some(metadata)).map_err(|e| EngineError::Export(e.to_string()))?;
    let compression = job.export.compression;
    let raw_len = header.len() as u64 + spool.len;
    let settings = Settings::for_artifact(compression, job.export.level, raw_len, inputs.threads.max(1));
    let artifact_path = dir.join(format!("model.safetensors{}", compression.extension()));
    let (bytes, sha256) = spool.compress_into(&header, &artifact_path, &settings).map_err(io_error)?;
    let artifact = ArtifactFile {
        format: ExportFormat::Safetensors.as_str().to_string(),
        key: inputs.artifacts.key(&artifact_path),
        compression: compression.as_str().to_string(),
        sparse_format: sparse.as_str().to_string(),
        bytes,
        sha256,
    };
    let report = Report {
        tensors: reports,
        dense_bytes,
        gzip_dense_bytes: gzip.map_or(0, GzipCounter::finish),
        artifact_bytes: [(artifact.format.clone(), artifact.bytes)].into_iter().collect(),
        final_val_accuracy: None,
        final_val_loss: None,
        dense_val_accuracy: None,
        steps: 0,
        inference: vec![],
        inference_note: Some(prune_core::domain::NO_FORWARD_PASS.to_string()),
    };
    Ok(JobOutcome { artifacts: vec![artifact], report })
}

/// The global threshold, when some tensors are ranked together: two passes reading only them.
fn global_selection(file: &StreamedFile, rules: &[Option<Rule>]) -> Result<Option<GlobalSelection>, EngineError> {
    let ranked: Vec<(&TensorInfo, &Rule)> = file
        .tensors
        .iter()
        .zip(rules)
        .filter_map(|(t, r)| r.as_ref().filter(|r| r.in_global_selection()).map(|r| (t, r)))
        .collect();
    let Some((_, first)) = ranked.first() else { return Ok(None) };
    let total = ranked.iter().map(|(t, _)| t.numel()).sum();
    let selection = GlobalSelection::find(total, first.schedule.final_sparsity(), |visit| {
        for (t, _) in &ranked {
            let data = file.read(t).map_err(model_error)?;
            let f32s = values::to_f32(t.dtype, &data)
                .ok_or_else(|| EngineError::Model(format!("parameter {} holds NaN or infinite values", t.name)))?;
            drop(data);
            visit(&f32s);
        }
        Ok::<_, EngineError>(())
    })?;
    Ok(Some(selection))
}

/// `1 - mean(mask)` as the libtorch path computes it (`Masks::sparsities`: the mean in f32),
/// so both paths report the same figures: the kept count is exact in f32 up to 2^24 elements,
/// and the division is f32's.
fn reported_sparsity(mask: &[f32]) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    let kept = mask.iter().filter(|&&m| m != 0.0).count();
    1.0 - f64::from(kept as f32 / mask.len() as f32)
}

fn tensor_report(info: &TensorInfo, pruned: bool, data: &[u8]) -> TensorReport {
    let numel = info.numel() as u64;
    let nonzero = values::count_nonzero(info.dtype, data);
    TensorReport {
        name: info.name.clone(),
        shape: info.shape.iter().map(|&d| d as i64).collect(),
        pruned,
        numel,
        nonzero,
        sparsity: if numel == 0 { 0.0 } else { 1.0 - nonzero as f64 / numel as f64 },
    }
}

/// The artifact's tensor data, in order, in an unnamed temporary file next to the artifact
/// (removed by the OS however the job ends), with the header entries that describe it.
struct Spool {
    file: BufWriter<File>,
    entries: Vec<Entry>,
    names: std::collections::HashSet<String>,
    len: u64,
}

impl Spool {
    fn new(dir: &Path) -> io::Result<Spool> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(Spool {
            file: BufWriter::with_capacity(1 << 20, file),
            entries: Vec::new(),
            names: Default::default(),
            len: 0,
        })
    }

    fn push(&mut self, t: TensorData) -> io::Result<()> {
        // Packed parts must not collide with a tensor kept as it was (`bitmask::pack`'s check).
        if !self.names.insert(t.name.clone()) {
            return Err(io::Error::other(format!("tensor `{}` appears more than once in the packed file", t.name)));
        }
        self.file.write_all(&t.data)?;
        self.len += t.data.len() as u64;
        self.entries.push(Entry { name: t.name, dtype: t.dtype, shape: t.shape, len: t.data.len() as u64 });
        Ok(())
    }

    /// Writes `header` then the spooled data through the compressor into `path`, atomically.
    /// Returns the artifact's size and sha256.
    fn compress_into(self, header: &[u8], path: &Path, settings: &Settings) -> io::Result<(u64, String)> {
        let mut spool = self.file.into_inner().map_err(|e| e.into_error())?;
        spool.rewind()?;
        let mut result = (0, String::new());
        write_atomically(path, |out| {
            let mut hashed = Hashed { out: BufWriter::with_capacity(1 << 20, out), sha: Sha256::new(), bytes: 0 };
            let mut encoder = compress::Encoder::new(&mut hashed, settings)?;
            encoder.write_all(header)?;
            io::copy(&mut spool, &mut encoder)?;
            encoder.finish()?;
            hashed.out.flush()?;
            result = (hashed.bytes, hex::encode(hashed.sha.finalize()));
            Ok(())
        })?;
        Ok(result)
    }
}

/// A writer that hashes and counts what passes through.
struct Hashed<W: Write> {
    out: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
