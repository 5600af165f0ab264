//! A language-model job from start to artifact: read the config, plan the selection, draw the
//! windows, run (or resume) the layer pass with a checkpoint after every layer, measure
//! perplexity, export the Hugging Face directory, report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prune_core::domain::{LanguageModelReport, LinearError, Perplexity};
use prune_core::job::Job;
use prune_core::llm::LlmConfig;
use prune_core::options::ExportFormat;
use prune_core::options::Scope;
use prune_core::spec::{CONFIG_FILE, TOKENIZER_FILE};
use prune_core::tensorstream::{StreamedFile, TensorInfo};
use tch::Tensor;

use super::head::{Embedding, Head};
use super::pass::Pass;
use super::plan::{decoder_linears, Plan};
use super::rope::Rope;
use super::state::{self, Progress, Stored, Streams};
use super::tokens::{self, Windows};
use super::weights::Checkpoint;
use crate::events::{Event, EventSink, MetricPoint, TensorSparsity};
use crate::export::Report;
use crate::inputs::{JobInputs, JobOutcome, StopFlag};
use crate::streamed::{self, Replacements, Source};
use crate::EngineError;

/// The artifact format of the reconstruction-error plot.
pub const RECONSTRUCTION_PLOT_FORMAT: &str = "reconstruction_plot";

/// Whether the job's model is a Hugging Face language model directory (it has a config).
pub fn applies(inputs: &JobInputs) -> bool {
    inputs.model_files.contains_key(CONFIG_FILE)
}

pub fn run(
    job: &Job,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
) -> Result<JobOutcome, EngineError> {
    if inputs.threads > 0 {
        tch::set_num_threads(inputs.threads as i32);
    }
    let _no_grad = tch::no_grad_guard();
    if job.export.formats.contains(&ExportFormat::Torchscript) {
        return Err(EngineError::Spec(
            "export.formats: torchscript needs a TorchScript input model, not a Hugging Face directory".into(),
        ));
    }
    let config_path = &inputs.model_files[CONFIG_FILE];
    let config_text =
        std::fs::read_to_string(config_path).map_err(|e| EngineError::Model(format!("{CONFIG_FILE}: {e}")))?;
    let config = LlmConfig::from_json(&config_text).map_err(|e| EngineError::Model(e.to_string()))?;
    let config_json: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| EngineError::Model(format!("{CONFIG_FILE}: {e}")))?;
    let source = Source::open(inputs)?;
    let infos: Vec<TensorInfo> = source.tensors().map(|(_, t)| t.clone()).collect();
    let linears: Vec<_> = (0..config.num_hidden_layers).map(decoder_linears).collect();
    let plan = Plan::new(job, &infos, &linears)?;
    let layered = job.pruning.criterion.is_calibrated() || job.evaluation.is_some();
    if layered {
        check_layered(job, &plan, &linears)?;
    }
    let tokenizer = inputs.model_files.get(TOKENIZER_FILE).map(PathBuf::as_path);
    let max_positions = config.max_seq_len();
    let evaluation = match (&job.evaluation, &inputs.evaluation_file) {
        (Some(x), Some(file)) => Some(tokens::evaluation(x, file, tokenizer, max_positions)?),
        (Some(_), None) => return Err(EngineError::Spec("evaluation.text: no file was given to the worker".into())),
        _ => None,
    };
    let mut warnings = vec![];
    let mut outcome_progress = Progress::default();
    let mut perplexity = None;
    if layered {
        let weights = open_weights(inputs)?;
        let (mut progress, mut streams) = match &inputs.resume_from {
            Some(path) => state::read_state(path)?,
            None => {
                let calibration = calibration_windows(job, inputs, tokenizer, max_positions)?;
                if let Some(w) = &calibration {
                    warnings.extend(w.warnings.iter().cloned());
                }
                let embedding = Embedding::load(&weights, &config)?;
                let calibration = calibration.map(|w| embedding.forward(&w.tokens)).transpose()?;
                let eval_dense = evaluation.as_ref().map(|w| embedding.forward(&w.tokens)).transpose()?;
                let eval_pruned = eval_dense.as_ref().map(Tensor::copy);
                let progress = Progress { warnings: warnings.clone(), ..Default::default() };
                (progress, Streams { calibration, eval_dense, eval_pruned })
            }
        };
        sink.emit(Event::Started {
            total_steps: config.num_hidden_layers as i64,
            steps_per_epoch: 0,
            epochs: 0,
            start_step: progress.layers_done as i64,
            pruned: plan.pruned.clone(),
            warnings: progress.warnings.clone(),
        })?;
        let pass = Pass {
            config: &config,
            weights: &weights,
            plan: &plan,
            criterion: job.pruning.criterion,
            calibration_rope: streams.calibration.as_ref().map(|c| Rope::new(&config, c.size()[1] as usize)),
            evaluation_rope: evaluation.as_ref().map(|w| Rope::new(&config, w.tokens.size()[1] as usize)),
        };
        run_layers(&pass, inputs, sink, stop, &mut progress, &mut streams)?;
        if let (Some(w), Some(dense), Some(pruned)) = (&evaluation, &streams.eval_dense, &streams.eval_pruned) {
            // The pass's freed activations stay in the heap (keep_freed_memory); the head and its
            // logits are the worker's largest tensors: give the heap back first.
            crate::allocator::release_freed_memory();
            let head = Head::load(&weights, &config)?;
            perplexity = Some(Perplexity {
                dense: windowed_perplexity(&head, &config, dense, &w.tokens),
                pruned: windowed_perplexity(&head, &config, pruned, &w.tokens),
                seq_len: w.tokens.size()[1] as u64,
                windows: w.count() as u64,
            });
        }
        outcome_progress = progress;
    } else {
        sink.emit(Event::started_one_shot(plan.pruned.clone(), vec![]))?;
    }
    export(job, inputs, sink, stop, &config, &config_json, &source, &plan, outcome_progress, perplexity)
}

/// What the layer pass cannot do: global ranking, or measuring a pruned perplexity when
/// tensors outside the decoder layers are pruned too.
fn check_layered(
    job: &Job,
    plan: &Plan,
    linears: &[Vec<(String, prune_core::llm::config::Linear)>],
) -> Result<(), EngineError> {
    if job.pruning.scope == Scope::Global {
        return Err(EngineError::Spec(
            "pruning.scope: the layer-by-layer pass (evaluation or a calibrated method) ranks within each layer: use scope = \"layer\"".into(),
        ));
    }
    let decoder: std::collections::HashSet<&str> = linears.iter().flatten().map(|(full, _)| full.as_str()).collect();
    if let Some(other) = plan.pruned.iter().find(|n| !decoder.contains(n.as_str())) {
        return Err(EngineError::Spec(format!(
            "evaluation: perplexity is measured when only decoder Linears are pruned, but `{other}` is selected too (exclude it, or drop [evaluation])"
        )));
    }
    Ok(())
}

fn calibration_windows(
    job: &Job,
    inputs: &JobInputs,
    tokenizer: Option<&std::path::Path>,
    max_positions: usize,
) -> Result<Option<Windows>, EngineError> {
    let Some(c) = job.calibration.as_ref().filter(|_| job.pruning.criterion.is_calibrated()) else { return Ok(None) };
    let file = inputs
        .calibration_file
        .as_deref()
        .ok_or_else(|| EngineError::Spec("calibration: no file was given to the worker".into()))?;
    tokens::calibration(c, file, tokenizer, max_positions).map(Some)
}

/// Layers from `progress.layers_done` on, each followed by its checkpoint.
fn run_layers(
    pass: &Pass,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
    progress: &mut Progress,
    streams: &mut Streams,
) -> Result<(), EngineError> {
    let layers = pass.config.num_hidden_layers;
    let mut previous_state: Option<String> = None;
    for i in progress.layers_done..layers {
        // Between layers is where cancel and shutdown take effect: the last state is on disk.
        if let Some(reason) = stop.requested() {
            return Err(EngineError::Stopped { step: i as i64, reason });
        }
        let pruned = pass.layer(i, streams, progress)?;
        let dir = &inputs.checkpoints.dir;
        let (path, sha256, bytes) = state::write_layer(dir, i, &pruned)?;
        let key = inputs.keep_checkpoint_file(&path).map_err(EngineError::Checkpoint)?;
        progress.layer_files.push(Stored { key, sha256, bytes });
        let (path, sha256, bytes) = state::write_state(dir, progress, streams)?;
        let key = inputs.checkpoints.key(&path);
        sink.emit(Event::Checkpoint { key: key.clone(), step: (i + 1) as i64, epoch: 0, sha256, bytes })?;
        if let Some(old) = previous_state.replace(key) {
            inputs.drop_checkpoint_file(&old);
        }
        crash_if_asked(i + 1);
        // Each layer leaves its freed activations in the heap, and they do not fit the next
        // layer's allocations exactly: without this the heap grew by about a layer's weights per
        // layer (SmolLM2's worker ended at 0.9 GiB resident with 0.1 GiB in use).
        crate::allocator::release_freed_memory();
        let sparsity: Vec<TensorSparsity> =
            pruned.iter().map(|(name, w)| TensorSparsity { name: name.clone(), sparsity: zero_fraction(w) }).collect();
        let mut points: Vec<MetricPoint> = sparsity
            .iter()
            .map(|s| MetricPoint { step: (i + 1) as i64, name: format!("sparsity/{}", s.name), value: s.sparsity })
            .collect();
        points.extend(progress.reconstruction.iter().filter(|r| r.layer == i as u64).map(|r| MetricPoint {
            step: (i + 1) as i64,
            name: format!("reconstruction_error/{}", r.tensor),
            value: r.relative_error,
        }));
        sink.emit(Event::Metrics { points })?;
        sink.emit(Event::Progress {
            step: (i + 1) as i64,
            total_steps: layers as i64,
            epoch: 0,
            loss: f64::NAN,
            accuracy: f64::NAN,
            sparsity,
        })?;
    }
    Ok(())
}

/// The model's weights, read a tensor at a time: one safetensors file or an index and shards.
fn open_weights(inputs: &JobInputs) -> Result<Checkpoint, EngineError> {
    if let Some(files) = &inputs.model_shards {
        let sharded = prune_core::sharded::ShardedCheckpoint::open(&files.index, &files.shards)
            .map_err(|e| EngineError::Model(format!("sharded checkpoint: {e}")))?;
        return Ok(Checkpoint::from_sharded(sharded));
    }
    let file = inputs.model_file.as_deref().ok_or_else(|| EngineError::Model("no model file".into()))?;
    Checkpoint::from_file(file)
}

/// Bytes of logits (and their log-softmax) one perplexity batch may take: a vocabulary of 50k
/// makes them far larger than a decoder layer's activations.
const LOGITS_BYTES: i64 = 128 << 20;

/// exp(mean token NLL) of final hidden states `x` over windows `ids`, each window on its own,
/// in batches so the logits stay small.
fn windowed_perplexity(head: &Head, config: &LlmConfig, x: &Tensor, ids: &Tensor) -> f64 {
    let per_window = ids.size()[1] * config.vocab_size as i64 * 4 * 2;
    let batch = (LOGITS_BYTES / per_window.max(1)).max(1);
    let (mut nll, mut tokens) = (0.0, 0i64);
    for (xb, ib) in x.split(batch, 0).iter().zip(ids.split(batch, 0).iter()) {
        let (n, t) = head.nll(xb, ib);
        nll += n;
        tokens += t;
    }
    if tokens == 0 {
        return f64::NAN;
    }
    (nll / tokens as f64).exp()
}

/// TEST HOOK, for tests/language_models.rs only; never set it in production.
/// `PRUNE_TEST_CRASH_AFTER_LAYER=<n>` aborts the worker process right after the checkpoint of
/// layer n (1-based) is reported, as a kill -9 there would: the next attempt must resume at
/// layer n + 1. The server passes its environment on to its workers.
pub const TEST_CRASH_AFTER_LAYER_ENV: &str = "PRUNE_TEST_CRASH_AFTER_LAYER";

fn crash_if_asked(layers_done: usize) {
    let asked = std::env::var(TEST_CRASH_AFTER_LAYER_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok());
    if asked == Some(layers_done) {
        eprintln!("{TEST_CRASH_AFTER_LAYER_ENV}={layers_done}: aborting after layer {layers_done}");
        std::process::abort();
    }
}

fn zero_fraction(w: &Tensor) -> f64 {
    let numel = w.numel();
    if numel == 0 {
        return 0.0;
    }
    let nonzero = i64::try_from(w.count_nonzero(None::<i64>)).unwrap_or(0);
    1.0 - nonzero as f64 / numel as f64
}

/// The pruned layers' weights for the export, read from their checkpoint files (checked against
/// the sha256 each was recorded with) and cast to the input tensor's dtype.
struct LayerFiles {
    by_name: BTreeMap<String, (usize, TensorInfo)>,
    files: Vec<StreamedFile>,
}

impl LayerFiles {
    fn open(inputs: &JobInputs, stored: &[Stored]) -> Result<LayerFiles, EngineError> {
        let mut by_name = BTreeMap::new();
        let mut files = Vec::with_capacity(stored.len());
        for (i, s) in stored.iter().enumerate() {
            let path = inputs.checkpoint_file(&s.key).map_err(EngineError::Checkpoint)?;
            let sha256 = prune_core::files::sha256_file(&path)
                .map_err(|e| EngineError::Checkpoint(format!("{}: {e}", path.display())))?;
            if sha256 != s.sha256 {
                return Err(EngineError::Checkpoint(format!(
                    "{} does not hold what was written (sha256 {sha256}, recorded {})",
                    s.key, s.sha256
                )));
            }
            let file = StreamedFile::open(&path).map_err(|e| EngineError::Checkpoint(format!("{}: {e}", s.key)))?;
            for t in &file.tensors {
                by_name.insert(t.name.clone(), (i, t.clone()));
            }
            files.push(file);
        }
        Ok(LayerFiles { by_name, files })
    }
}

impl Replacements for LayerFiles {
    fn values(&self, tensor: &TensorInfo) -> Result<Option<Vec<u8>>, EngineError> {
        let Some((i, info)) = self.by_name.get(&tensor.name) else { return Ok(None) };
        let values = state::read_f32(&self.files[*i], info).map_err(EngineError::Checkpoint)?;
        let kind = crate::tensors::kind_of(tensor.dtype).ok_or_else(|| {
            EngineError::Model(format!("tensor {}: unsupported dtype {:?}", tensor.name, tensor.dtype))
        })?;
        let cast = values.to_kind(kind).contiguous();
        let mut bytes = vec![0u8; cast.numel() * kind.elt_size_in_bytes()];
        cast.f_copy_data_u8(&mut bytes, cast.numel())?;
        Ok(Some(bytes))
    }
}

#[allow(clippy::too_many_arguments)]
fn export(
    job: &Job,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
    config: &LlmConfig,
    config_json: &serde_json::Value,
    source: &Source,
    plan: &Plan,
    progress: Progress,
    perplexity: Option<Perplexity>,
) -> Result<JobOutcome, EngineError> {
    let replacements = LayerFiles::open(inputs, &progress.layer_files)?;
    let global = if replacements.by_name.is_empty() {
        streamed::global_selection(source, &plan.export_rules, stop)?
    } else {
        None
    };
    let written = streamed::write_artifacts(
        job,
        inputs,
        source,
        &plan.export_rules,
        global,
        &replacements,
        Some(config_json),
        stop,
    )?;
    let mut artifacts = written.artifacts;
    for (name, path) in &inputs.model_files {
        if name == CONFIG_FILE {
            continue; // written with the weights (and compressed-tensors' sparsity config)
        }
        let bytes = std::fs::read(path).map_err(|e| EngineError::Model(format!("model.files.{name}: {e}")))?;
        artifacts.push(crate::analysis::artifacts::file(
            &inputs.artifacts,
            ExportFormat::Safetensors.as_str(),
            name,
            &bytes,
        )?);
    }
    if let Some(plot) = reconstruction_plot(job, config, &progress.reconstruction)? {
        artifacts.push(crate::analysis::artifacts::file(
            &inputs.artifacts,
            RECONSTRUCTION_PLOT_FORMAT,
            "reconstruction.png",
            &plot,
        )?);
    }
    let sparsity = written.sparsity;
    sink.emit(Event::Metrics {
        points: sparsity
            .iter()
            .map(|s| MetricPoint { step: 0, name: format!("sparsity/{}", s.name), value: s.sparsity })
            .collect(),
    })?;
    let layers = config.num_hidden_layers as i64;
    sink.emit(Event::Progress {
        step: layers,
        total_steps: layers,
        epoch: 0,
        loss: f64::NAN,
        accuracy: f64::NAN,
        sparsity,
    })?;
    let safetensors = ExportFormat::Safetensors.as_str().to_string();
    let model_bytes = artifacts.iter().filter(|a| a.format == safetensors).map(|a| a.bytes).sum();
    let calibrated = job.pruning.criterion.is_calibrated();
    let calibration = job.calibration.as_ref().filter(|_| calibrated);
    let language_model = LanguageModelReport {
        method: job.pruning.criterion.name().to_string(),
        architecture: config.architecture.class_name().to_string(),
        layers: progress.layers_done as u64,
        calibration_samples: calibration.map_or(0, |c| c.samples as u64),
        calibration_seq_len: calibration.map_or(0, |c| c.seq_len as u64),
        perplexity,
        reconstruction: progress.reconstruction,
        peak_memory_bytes: crate::allocator::peak_resident_bytes().unwrap_or(0),
        prune_seconds: progress.prune_seconds,
        warnings: progress.warnings,
    };
    let report = Report {
        tensors: written.reports,
        kept_dense: written.kept_dense,
        dense_bytes: written.dense_bytes,
        gzip_dense_bytes: written.gzip_dense_bytes,
        artifact_bytes: [(safetensors, model_bytes)].into_iter().collect(),
        inference_note: Some(
            "no inference measured: a language model's latency depends on the serving stack".to_string(),
        ),
        language_model: Some(Box::new(language_model)),
        ..Default::default()
    };
    Ok(JobOutcome { artifacts, report })
}

/// The per-layer reconstruction errors as a PNG, one line per Linear kind.
fn reconstruction_plot(job: &Job, config: &LlmConfig, errors: &[LinearError]) -> Result<Option<Vec<u8>>, EngineError> {
    if errors.is_empty() {
        return Ok(None);
    }
    let mut series: Vec<prune_plot::reconstruction::LayerSeries> = Vec::new();
    for e in errors {
        let stem = e.tensor.strip_suffix(".weight").unwrap_or(&e.tensor);
        let kind = stem.rsplit('.').next().unwrap_or(stem);
        match series.iter_mut().find(|s| s.name == kind) {
            Some(s) => s.points.push((e.layer as u32, e.relative_error)),
            None => series.push(prune_plot::reconstruction::LayerSeries {
                name: kind.to_string(),
                points: vec![(e.layer as u32, e.relative_error)],
            }),
        }
    }
    let name = job.name.clone().unwrap_or_else(|| config.architecture.class_name().to_string());
    let title = format!("{name}: {} reconstruction error per layer", job.pruning.criterion.name());
    prune_plot::reconstruction::png(&title, &series).map(Some).map_err(|e| EngineError::Export(e.to_string()))
}
