//! One-shot pruning of a safetensors state dict without libtorch, one tensor at a time.
//!
//! `training.epochs = 0` on a state dict needs no forward pass: each tensor is read from the
//! disk (`pread`, no memory map, so finished tensors leave no resident pages behind), ranked in
//! f32 with `prune_core::mask` (the functions the libtorch path calls, so masks are identical:
//! exact-k, ties to the lower index), masked in its own dtype, packed, and appended to a spool
//! file; the report's figures are accumulated on the way. Global scope takes two more reading
//! passes over the globally ranked tensors first ([`GlobalSelection`]), holding only two
//! histograms. At the end of each file the header (whose sizes are only known then) and the
//! spool are compressed into the artifact with the job's threads.
//!
//! A sharded checkpoint (Hugging Face's index + shards) is the same walk over every shard in
//! turn: selection and global scope see all tensors of all shards, and each shard becomes one
//! packed shard of the artifact, with a new index naming the packed tensors (`index.rs`).
//!
//! Memory: the tensor being handled plus, for element-wise masks (global scope included), a
//! few MiB: its values are ranked and masked in place a chunk at a time (`chunked.rs`). Block
//! and m-by-n masks take the whole tensor's f32 values and mask (3x its bytes for f32, 5x for
//! f16/bf16). Packing a tensor (bitmask) holds its non-zero values once more; then the
//! compressor's buffers.

mod chunked;
mod index;
mod select;
pub(crate) mod values;

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;

use prune_core::bitmask::{self, TensorData, SPARSE_BITMASK, SPARSITY_FORMAT_KEY};
use prune_core::compress::{self, GzipCounter, Settings};
use prune_core::files::write_atomically;
use prune_core::mask::GlobalSelection;
use prune_core::method::PruningMethod;
use prune_core::options::{ExportFormat, SparseFormat};
use prune_core::sharded::{Shard, ShardedCheckpoint};
use prune_core::tensorstream::{header_bytes, Entry, StreamedFile, TensorInfo};
use prune_core::Job;
use sha2::{Digest, Sha256};

pub use select::{select, Rule};

use crate::events::{Event, EventSink, MetricPoint, TensorSparsity};
use crate::export::{ArtifactFile, Report, TensorReport};
use crate::inputs::{JobInputs, JobOutcome, StopFlag};
use crate::EngineError;
use index::WrittenShard;

/// Whether [`run`] handles this job: one-shot, and the model is a sharded checkpoint or a file
/// holding a safetensors state dict.
pub fn applies(job: &Job, inputs: &JobInputs) -> bool {
    // Channel groups need every weight of a layer at once, and an analysis runs the model:
    // the libtorch path (which says why a state dict cannot be analysed).
    if job.training.epochs != 0
        || job.model.sequential.is_some()
        || matches!(job.pruning.method, PruningMethod::Channel { .. })
        || job.sensitivity.is_some()
        || job.pruning.budget.is_some()
    {
        return false;
    }
    if inputs.model_shards.is_some() {
        return true;
    }
    let Some(path) = &inputs.model_file else { return false };
    let mut head = [0u8; 9];
    // The libtorch path's test (`model::looks_like_safetensors`): a JSON header after the length.
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[8] == b'{'
}

fn model_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("state dict: {e}"))
}

/// The checkpoint being pruned: one safetensors file (a single shard, no index) or the
/// checked shards of a sharded one. The artifact mirrors it: one packed file per shard.
pub(crate) struct Source {
    shards: Vec<Shard>,
    sharded: bool,
}

impl Source {
    pub(crate) fn open(inputs: &JobInputs) -> Result<Source, EngineError> {
        if let Some(files) = &inputs.model_shards {
            let checkpoint = ShardedCheckpoint::open(&files.index, &files.shards)
                .map_err(|e| EngineError::Model(format!("sharded checkpoint: {e}")))?;
            return Ok(Source { shards: checkpoint.shards, sharded: true });
        }
        let path = inputs.model_file.as_deref().ok_or_else(|| EngineError::Model("no model file".into()))?;
        let file = StreamedFile::open(path).map_err(model_error)?;
        Ok(Source { shards: vec![Shard { name: SINGLE_FILE.into(), file }], sharded: false })
    }

    pub(crate) fn tensors(&self) -> impl Iterator<Item = (&Shard, &TensorInfo)> {
        self.shards.iter().flat_map(|s| s.file.tensors.iter().map(move |t| (s, t)))
    }

    /// The error for a tensor holding NaN or infinite values (worded as the libtorch path's).
    fn not_finite(&self, shard: &Shard, tensor: &str) -> EngineError {
        EngineError::Model(format!("parameter {} holds NaN or infinite values", self.describe(shard, tensor)))
    }

    /// How a tensor is named in errors: with its shard when there are several.
    fn describe(&self, shard: &Shard, tensor: &str) -> String {
        if self.sharded {
            format!("{tensor} (shard {})", shard.name)
        } else {
            tensor.to_string()
        }
    }
}

/// The artifact's base name for a single-file state dict.
const SINGLE_FILE: &str = "model.safetensors";

/// Prunes the model's tensors at each rule's final sparsity and writes the artifact: one file,
/// or for a sharded checkpoint one packed shard per input shard plus an index (and, packed,
/// compressed-tensors' `config.json`).
pub fn run(
    job: &Job,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
) -> Result<JobOutcome, EngineError> {
    let source = Source::open(inputs)?;
    if let Some((shard, t)) = source.tensors().find(|(_, t)| !values::is_supported(t.dtype)) {
        return Err(model_error(format!(
            "tensor {}: unsupported dtype {:?}",
            source.describe(shard, &t.name),
            t.dtype
        )));
    }
    if job.export.formats.contains(&ExportFormat::Torchscript) {
        return Err(EngineError::Spec(
            "export.formats: torchscript needs a TorchScript input model (model.file / model.blob of a .pt)".into(),
        ));
    }
    let infos: Vec<TensorInfo> = source.tensors().map(|(_, t)| t.clone()).collect();
    let rules = select(&job.pruning, &infos)?;
    drop(infos);
    let pruned: Vec<String> =
        source.tensors().zip(&rules).filter(|(_, r)| r.is_some()).map(|((_, t), _)| t.name.clone()).collect();
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
    let written = if inputs.masks_applied {
        // A tracked run's weights: its loop reported the steps, metrics and sparsity already,
        // which a one-shot job's step-0 events would overwrite.
        let selected = pruned.iter().map(String::as_str).collect();
        write_artifacts(job, inputs, &source, &rules, None, &AsUploaded::new(&source, selected), None, stop)?
    } else {
        sink.emit(Event::started_one_shot(pruned.clone(), warnings))?;
        let global = global_selection(&source, &rules, stop)?;
        let written = write_artifacts(job, inputs, &source, &rules, global, &NoReplacements, None, stop)?;
        sink.emit(Event::Metrics {
            points: written
                .sparsity
                .iter()
                .map(|s| MetricPoint { step: 0, name: format!("sparsity/{}", s.name), value: s.sparsity })
                .collect(),
        })?;
        let sparsity = written.sparsity.clone();
        sink.emit(Event::Progress { step: 0, total_steps: 0, epoch: 0, loss: f64::NAN, accuracy: f64::NAN, sparsity })?;
        written
    };
    let Written { artifacts, reports, dense_bytes, gzip_dense_bytes, kept_dense, .. } = written;

    let format = ExportFormat::Safetensors.as_str().to_string();
    let report = Report {
        tensors: reports,
        dense_bytes,
        gzip_dense_bytes,
        artifact_bytes: [(format, artifacts.iter().map(|a| a.bytes).sum())].into_iter().collect(),
        final_val_accuracy: None,
        final_val_loss: None,
        dense_val_accuracy: None,
        steps: 0,
        inference: vec![],
        inference_note: Some(prune_core::domain::NO_FORWARD_PASS.to_string()),
        channels: None,
        kept_dense,
        ..Default::default()
    };
    Ok(JobOutcome { artifacts, report })
}

/// Values pruned before the export (a language model's layer-by-layer pass): the export writes
/// them instead of the input's and masks nothing more in those tensors.
pub(crate) trait Replacements {
    /// The replacement bytes of `tensor` in its own dtype, if it is replaced.
    fn values(&self, tensor: &TensorInfo) -> Result<Option<Vec<u8>>, EngineError>;
}

/// Nothing replaced: every pruned tensor is masked by its rule.
pub(crate) struct NoReplacements;

/// A tracked run's weights, pruned in the client's own loop: each selected tensor is exported
/// as uploaded, its zeros being its mask (masking again by magnitude could pick other elements
/// where kept values tie with pruned zeros, or where the loop's schedule differs).
struct AsUploaded<'a> {
    shards: std::collections::HashMap<&'a str, &'a Shard>,
    source: &'a Source,
}

impl<'a> AsUploaded<'a> {
    fn new(source: &'a Source, selected: std::collections::HashSet<&str>) -> Self {
        let shards =
            source.tensors().filter(|(_, t)| selected.contains(t.name.as_str())).map(|(s, t)| (t.name.as_str(), s));
        AsUploaded { shards: shards.collect(), source }
    }
}

impl Replacements for AsUploaded<'_> {
    fn values(&self, tensor: &TensorInfo) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(shard) = self.shards.get(tensor.name.as_str()) else { return Ok(None) };
        let data = shard.file.read(tensor).map_err(model_error)?;
        if values::is_float(tensor.dtype) {
            chunked::each_chunk(tensor.dtype, &data, chunked::CHUNK, |_| {})
                .ok_or_else(|| self.source.not_finite(shard, &tensor.name))?;
        }
        Ok(Some(data))
    }
}

impl Replacements for NoReplacements {
    fn values(&self, _: &TensorInfo) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(None)
    }
}

/// What [`write_artifacts`] wrote and measured.
pub(crate) struct Written {
    pub artifacts: Vec<ArtifactFile>,
    pub reports: Vec<TensorReport>,
    /// Per pruned tensor, in order.
    pub sparsity: Vec<TensorSparsity>,
    pub dense_bytes: u64,
    pub gzip_dense_bytes: u64,
    /// Bitmask exports: weights stored dense, their packed form being larger.
    pub kept_dense: Vec<String>,
}

/// Writes the artifact of `source`: each tensor masked by its rule (or taken from
/// `replacements`), packed and compressed as the job's export says, one file per input shard,
/// plus the index of a sharded checkpoint. `model_config`: a Hugging Face model's
/// `config.json`, written next to the weights (with compressed-tensors' sparsity config when
/// packed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_artifacts(
    job: &Job,
    inputs: &JobInputs,
    source: &Source,
    rules: &[Option<Rule>],
    global: Option<GlobalSelection>,
    replacements: &dyn Replacements,
    model_config: Option<&serde_json::Value>,
    stop: &StopFlag,
) -> Result<Written, EngineError> {
    let dir = inputs.artifacts.dir.as_path();
    let io_error = |e: io::Error| EngineError::Export(format!("cannot write artifacts in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let sparse = job.export.sparse_format;
    let compression = job.export.compression;

    let mut dense_bytes = 0;
    let mut dense_headers = Vec::with_capacity(source.shards.len());
    for shard in &source.shards {
        let entries: Vec<Entry> = shard
            .file
            .tensors
            .iter()
            .map(|t| Entry { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), len: t.len as u64 })
            .collect();
        let header = header_bytes(&entries, None).map_err(model_error)?;
        dense_bytes += header.len() as u64 + entries.iter().map(|e| e.len).sum::<u64>();
        dense_headers.push(header);
    }
    let mut gzip = (dense_bytes <= compress::GZIP_REPORT_MAX).then(GzipCounter::default);

    let mut reports = Vec::with_capacity(rules.len());
    let mut kept_dense = Vec::new();
    let mut sparsity = Vec::with_capacity(rules.iter().flatten().count());
    let mut rules = rules.iter();
    let mut global = global;
    let mut written = Vec::with_capacity(source.shards.len());
    let mut artifacts = Vec::with_capacity(source.shards.len() + 2);
    for (shard, dense_header) in source.shards.iter().zip(&dense_headers) {
        if let Some(g) = &mut gzip {
            g.update(dense_header);
        }
        let mut spool = Spool::new(dir).map_err(io_error)?;
        for info in &shard.file.tensors {
            // Between tensors is the one place a cancel can take effect: no partial output is
            // published (the spool is an unnamed file, the artifact appears only when whole).
            if let Some(reason) = stop.requested() {
                return Err(EngineError::Stopped { step: 0, reason });
            }
            let rule = rules.next().expect("one rule per tensor");
            let replaced = replacements.values(info)?;
            let was_replaced = replaced.is_some();
            let mut data = match replaced {
                Some(data) => data,
                None => shard.file.read(info).map_err(model_error)?,
            };
            if was_replaced {
                // Pruned elsewhere (a language model's layer pass): reported as it is.
                let kept = values::count_nonzero(info.dtype, &data) as usize;
                sparsity
                    .push(TensorSparsity { name: info.name.clone(), sparsity: reported_sparsity(kept, info.numel()) });
            } else if values::is_float(info.dtype) {
                let not_finite = || source.not_finite(shard, &info.name);
                match rule {
                    // Element-wise (the common case for big checkpoints): chunk by chunk, in
                    // place, so a tensor costs its own bytes and a few MiB.
                    Some(rule) if rule.method == PruningMethod::ElementWise => {
                        let kept = match &mut global {
                            Some(g) if rule.in_global_selection() => {
                                chunked::mask_in_place(info.dtype, &mut data, chunked::CHUNK, |v| g.next_mask(v))
                            }
                            _ => chunked::element_wise(
                                info.dtype,
                                &mut data,
                                rule.schedule.final_sparsity(),
                                chunked::CHUNK,
                            ),
                        }
                        .ok_or_else(not_finite)?;
                        let sparsity_value = reported_sparsity(kept, info.numel());
                        sparsity.push(TensorSparsity { name: info.name.clone(), sparsity: sparsity_value });
                    }
                    // Blocks and m-by-n groups need the whole tensor's values.
                    Some(rule) => {
                        let f32s = values::to_f32(info.dtype, &data).ok_or_else(not_finite)?;
                        let mask = rule.method.mask(&f32s, &info.shape, rule.schedule.final_sparsity());
                        drop(f32s);
                        values::apply_mask(&mut data, info.dtype.bitsize() / 8, &mask);
                        let kept = mask.iter().filter(|&&m| m != 0.0).count();
                        sparsity.push(TensorSparsity {
                            name: info.name.clone(),
                            sparsity: reported_sparsity(kept, mask.len()),
                        });
                    }
                    None => chunked::each_chunk(info.dtype, &data, chunked::CHUNK, |_| {}).ok_or_else(not_finite)?,
                }
            }
            if let Some(g) = &mut gzip {
                g.update(&data);
            }
            reports.push(tensor_report(info, rule.is_some(), &data));
            let tensor = TensorData { name: info.name.clone(), dtype: info.dtype, shape: info.shape.clone(), data };
            let parts = match sparse {
                SparseFormat::Dense => vec![tensor],
                SparseFormat::Bitmask => {
                    let packable = bitmask::is_packable(&tensor);
                    let parts = bitmask::pack_one(tensor).map_err(|e| EngineError::Export(e.to_string()))?;
                    if packable && parts.len() == 1 {
                        kept_dense.push(info.name.clone());
                    }
                    parts
                }
            };
            for part in parts {
                spool.push(part).map_err(io_error)?;
            }
        }
        let mut metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        if sparse == SparseFormat::Bitmask {
            metadata.insert(SPARSITY_FORMAT_KEY.into(), SPARSE_BITMASK.into());
        }
        let header = header_bytes(&spool.entries, Some(metadata)).map_err(|e| EngineError::Export(e.to_string()))?;
        let raw_len = header.len() as u64 + spool.len;
        let settings = Settings::for_artifact(compression, job.export.level, raw_len, inputs.threads.max(1));
        let path = dir.join(format!("{}{}", shard.name, compression.extension()));
        let names: Vec<String> = spool.entries.iter().map(|e| e.name.clone()).collect();
        let data_len = spool.len;
        let (bytes, sha256) = spool.compress_into(&header, &path, &settings).map_err(io_error)?;
        written.push(WrittenShard { name: shard.name.clone(), tensors: names, data_len });
        let artifact = ArtifactFile {
            format: ExportFormat::Safetensors.as_str().to_string(),
            key: inputs.artifacts.key(&path),
            compression: compression.as_str().to_string(),
            sparse_format: sparse.as_str().to_string(),
            bytes,
            sha256,
        };
        artifacts.push(artifact);
    }
    if source.sharded || model_config.is_some() {
        artifacts.extend(
            index::write(dir, &inputs.artifacts, job, &written, &reports, source.sharded, model_config)
                .map_err(io_error)?,
        );
    }
    let gzip_dense_bytes = gzip.map_or(0, GzipCounter::finish);
    Ok(Written { artifacts, reports, sparsity, dense_bytes, gzip_dense_bytes, kept_dense })
}

/// The global threshold, when some tensors are ranked together: two passes reading only them,
/// shard after shard, holding one tensor and two histograms at a time.
pub(crate) fn global_selection(
    source: &Source,
    rules: &[Option<Rule>],
    stop: &StopFlag,
) -> Result<Option<GlobalSelection>, EngineError> {
    let ranked: Vec<(&Shard, &TensorInfo, &Rule)> = source
        .tensors()
        .zip(rules)
        .filter_map(|((s, t), r)| r.as_ref().filter(|r| r.in_global_selection()).map(|r| (s, t, r)))
        .collect();
    let Some((_, _, first)) = ranked.first() else { return Ok(None) };
    let total = ranked.iter().map(|(_, t, _)| t.numel()).sum();
    let selection = GlobalSelection::find(total, first.schedule.final_sparsity(), |visit| {
        for (shard, t, _) in &ranked {
            if let Some(reason) = stop.requested() {
                return Err(EngineError::Stopped { step: 0, reason });
            }
            let data = shard.file.read(t).map_err(model_error)?;
            chunked::each_chunk(t.dtype, &data, chunked::CHUNK, &mut *visit)
                .ok_or_else(|| source.not_finite(shard, &t.name))?;
        }
        Ok::<_, EngineError>(())
    })?;
    Ok(Some(selection))
}

/// `1 - mean(mask)` as the libtorch path computes it (`Masks::sparsities`: the mean in f32),
/// so both paths report the same figures: the kept count is exact in f32 up to 2^24 elements,
/// and the division is f32's.
fn reported_sparsity(kept: usize, len: usize) -> f64 {
    if len == 0 {
        return 0.0;
    }
    1.0 - f64::from(kept as f32 / len as f32)
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
