//! `prune._core`: the service's pruning code (`prune-core`) for the Python package.
//!
//! Only the numerics and the rules cross into Python: spec validation (`validate::validate`, so
//! a `[pruning]` table is accepted or rejected exactly as the service does, errors by field
//! path), selection (`select::Selector`), when masks are due (`PruningMethod::recompute_at`),
//! the masks themselves (`PruningMethod::mask`, `mask::global_masks`) and the artifact formats
//! (`tensorfile`, `bitmask`, `compress`). Tensors cross as little-endian host bytes (the
//! Python side sends `p.detach().cpu()` as f32), so nothing here links libtorch and a mask is
//! computed from the same f32 values by the same functions as in the engine.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use prune_core::compress::{self, Settings};
use prune_core::job::{Export, Pruning};
use prune_core::options::{BlockPooling, SparseFormat};
use prune_core::select::{Rule, SelectError, Selector, NOTHING_SELECTED};
use prune_core::spec::{DataSpec, ExportSpec, JobSpec, ModelSpec, PruningSpec, TrainingSpec};
use prune_core::tensorfile::{read_safetensors, write_safetensors, FormatError, TensorData};
use prune_core::validate::{self, parse_json, parse_toml, FieldError, SpecErrors};
use prune_core::{bitmask, PruningMethod, Schedule};
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha2::{Digest, Sha256};

mod tracking;

create_exception!(
    _core,
    SpecError,
    PyValueError,
    "A pruning spec the service would reject; one `field: reason` line per problem."
);
create_exception!(
    _core,
    ArtifactError,
    PyValueError,
    "A tensor file that cannot be written or read in the service's formats."
);

/// Everything that can go wrong here, each mapped to the Python exception a user expects.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Spec(Vec<FieldError>),
    #[error("{0}")]
    Select(#[from] SelectError),
    #[error("{0}")]
    Value(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Spec(_) | Error::Select(_) => SpecError::new_err(e.to_string()),
            Error::Value(_) => PyValueError::new_err(e.to_string()),
            Error::Format(_) => ArtifactError::new_err(e.to_string()),
            Error::Io { .. } => PyOSError::new_err(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// The job document a `[pruning]` table from Python is validated in: the table itself plus a
/// stand-in for the sections that describe the service's own training (a TorchScript model
/// file, built-in data, one epoch), none of which constrain the pruning section, so the
/// section is checked by the service's own `validate` with the service's field paths.
fn stand_in_job(pruning: PruningSpec) -> JobSpec {
    JobSpec {
        model: ModelSpec { file: Some("in-process.pt".into()), ..ModelSpec::default() },
        data: Some(DataSpec { builtin: Some("digits".into()), ..DataSpec::default() }),
        training: TrainingSpec { epochs: 1, ..TrainingSpec::default() },
        pruning,
        ..JobSpec::default()
    }
}

/// What needs the service's own loop or model graph (the rules the service applies to a
/// tracked run's table too), refused with the reason.
fn refuse_whole_model_features(p: &PruningSpec) -> Result<()> {
    let errors = validate::outside_service_loop(p);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Spec(errors))
    }
}

/// The field errors of a document this crate generated: serde's line and column point into
/// that generated JSON, not into anything the user wrote, so they are dropped.
fn generated_document_errors(e: SpecErrors) -> Error {
    Error::Spec(
        e.0.into_iter()
            .map(|f| {
                let reason = match f.reason.rsplit_once(" (line ") {
                    Some((reason, rest)) if rest.ends_with(')') => reason.to_string(),
                    _ => f.reason,
                };
                FieldError { field: f.field, reason }
            })
            .collect(),
    )
}

/// The field errors with `prefix` taken off their paths (`pruning.block_size[0]` is the
/// `block_size` argument of `prune.mask`).
fn relative(e: Error, prefix: &str) -> Error {
    match e {
        Error::Spec(errors) => Error::Spec(
            errors
                .into_iter()
                .map(|f| FieldError { field: f.field.strip_prefix(prefix).unwrap_or(&f.field).to_string(), ..f })
                .collect(),
        ),
        other => other,
    }
}

/// A pruning table parsed and validated as the service does.
fn checked(spec: JobSpec) -> Result<(Pruning, JobSpec)> {
    refuse_whole_model_features(&spec.pruning)?;
    let job = validate::validate(&spec).map_err(|e| Error::Spec(e.0))?;
    Ok((job.pruning, spec))
}

fn pruning_from_json(table: &str) -> Result<(Pruning, JobSpec)> {
    // The table is placed into a document whose other sections are fixed, so every path that
    // serde reports is under `pruning.`.
    let stand_in = stand_in_job(PruningSpec::default());
    let mut doc = serde_json::to_value(&stand_in).map_err(|e| Error::Value(e.to_string()))?;
    let table: serde_json::Value = serde_json::from_str(table).map_err(|e| Error::Value(format!("pruning: {e}")))?;
    doc["pruning"] = table;
    let spec = parse_json(&doc.to_string()).map_err(generated_document_errors)?;
    checked(spec)
}

/// A validated `[pruning]` section: the typed rules the engine would run, the service's
/// submit-time warnings, and the table as the service stores it (for matching saved states).
#[pyclass(frozen, module = "prune._core")]
struct Spec {
    pruning: Pruning,
    document: JobSpec,
    /// The pruning table normalised (defaults filled in) as JSON.
    #[pyo3(get)]
    canonical: String,
}

impl Spec {
    fn new(pruning: Pruning, document: JobSpec) -> Result<Spec> {
        let canonical = serde_json::to_string(&document.pruning).map_err(|e| Error::Value(e.to_string()))?;
        Ok(Spec { pruning, document, canonical })
    }
}

#[pymethods]
impl Spec {
    /// A `[pruning]` table given as JSON (the Python dict, dumped).
    #[staticmethod]
    fn from_json(table: &str) -> PyResult<Spec> {
        let (pruning, document) = pruning_from_json(table)?;
        Ok(Spec::new(pruning, document)?)
    }

    /// A job file's text: a whole job (checked as `prunectl submit` checks it, errors with
    /// their lines) or a file with only a `[pruning]` table.
    #[staticmethod]
    fn from_toml(text: &str) -> PyResult<Spec> {
        let whole_job = text
            .parse::<toml::Table>()
            .map_err(|e| Error::Spec(vec![FieldError::new("", e.to_string().trim().replace('\n', " "))]))?;
        let (pruning, document) = if whole_job.contains_key("model") {
            checked(parse_toml(text).map_err(|e| Error::Spec(e.0))?)?
        } else {
            let table = whole_job
                .get("pruning")
                .ok_or_else(|| Error::Spec(vec![FieldError::new("pruning", "the job file has no [pruning] table")]))?;
            pruning_from_json(&serde_json::to_string(table).map_err(|e| Error::Value(e.to_string()))?)?
        };
        Ok(Spec::new(pruning, document)?)
    }

    /// The service's submit-time warnings (schedules that never prune or never reach their
    /// final sparsity, overrides that set nothing); `total_steps` when the loop knows it.
    #[pyo3(signature = (total_steps=None))]
    fn warnings(&self, total_steps: Option<i64>) -> Vec<String> {
        validate::warnings(&self.document, total_steps)
    }

    /// The targets among `params` (name, shape, dtype name, floating point), in their order.
    /// Nothing selected is the service's error; an explicit `include` of a parameter that is
    /// not floating point is an error naming it (the service would skip it silently).
    fn select(&self, params: Vec<(String, Vec<usize>, String, bool)>) -> PyResult<Targets> {
        let selector = Selector::new(&self.pruning).map_err(Error::from)?;
        let mut items = Vec::new();
        for (index, (name, shape, dtype, floating)) in params.into_iter().enumerate() {
            if !floating && selector.selected(&name, &shape) {
                if let Some(field) = selector.included_by(&name) {
                    return Err(Error::Spec(vec![FieldError::new(
                        field,
                        format!(
                            "selects parameter `{name}` of dtype {dtype}, which cannot be ranked by magnitude: \
                             only floating-point parameters are pruned (exclude it)"
                        ),
                    )])
                    .into());
                }
            }
            if let Some(rule) = selector.rule(&name, &shape, floating).map_err(Error::from)? {
                items.push(Target { name, param: index, shape, rule });
            }
        }
        if items.is_empty() {
            return Err(SpecError::new_err(NOTHING_SELECTED));
        }
        Ok(Targets { items })
    }

    /// One line per include/exclude/override pattern that matches none of `names`.
    fn unmatched(&self, names: Vec<String>) -> PyResult<Vec<String>> {
        let selector = Selector::new(&self.pruning).map_err(Error::from)?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(selector.unmatched(&names))
    }

    fn __repr__(&self) -> String {
        format!("Spec({})", self.canonical)
    }
}

struct Target {
    name: String,
    /// Index into the parameter list `Spec::select` was given.
    param: usize,
    shape: Vec<usize>,
    rule: Rule,
}

/// The pruned parameters and their rules: when each mask is due and what it is.
#[pyclass(frozen, module = "prune._core")]
struct Targets {
    items: Vec<Target>,
}

fn f32_values(bytes: &[u8], numel: usize, name: &str) -> Result<Vec<f32>> {
    if bytes.len() != numel * 4 {
        return Err(Error::Value(format!("{name}: {} bytes of f32 given for {numel} elements", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// A 0/1 f32 mask as one byte per element (numpy bool).
fn mask_bytes(mask: &[f32]) -> Vec<u8> {
    mask.iter().map(|&m| u8::from(m != 0.0)).collect()
}

#[pymethods]
impl Targets {
    fn __len__(&self) -> usize {
        self.items.len()
    }

    #[getter]
    fn names(&self) -> Vec<String> {
        self.items.iter().map(|t| t.name.clone()).collect()
    }

    /// Each target's index in the parameter list it was selected from.
    #[getter]
    fn params(&self) -> Vec<usize> {
        self.items.iter().map(|t| t.param).collect()
    }

    /// The targets whose mask is recomputed before the batch of training step `step` (tfmot's
    /// rule: the schedule's pruning steps; m-by-n masks once, at step 1).
    fn due(&self, step: i64) -> Vec<usize> {
        (0..self.items.len())
            .filter(|&i| self.items[i].rule.method.recompute_at(&self.items[i].rule.schedule, step))
            .collect()
    }

    /// Whether any mask is due at `step`.
    fn any_due(&self, step: i64) -> bool {
        self.items.iter().any(|t| t.rule.method.recompute_at(&t.rule.schedule, step))
    }

    /// The masks of targets `which` (as one byte per element, 1 = kept) from their weights
    /// (f32 little-endian bytes, same order) at training step `step`, or at each schedule's
    /// final sparsity when `step` is None (one-shot). Global targets are ranked together, the
    /// others each on its own, as the engine's `Masks::recompute` does.
    #[pyo3(signature = (which, weights, step=None))]
    fn compute<'py>(
        &self,
        py: Python<'py>,
        which: Vec<usize>,
        weights: Vec<Vec<u8>>,
        step: Option<i64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        if which.len() != weights.len() || which.iter().any(|&i| i >= self.items.len()) {
            return Err(PyValueError::new_err("compute: one weight per target index, each in range"));
        }
        let values = which
            .iter()
            .zip(&weights)
            .map(|(&i, w)| f32_values(w, self.items[i].shape.iter().product(), &self.items[i].name))
            .collect::<Result<Vec<_>>>()?;
        drop(weights);
        let masks = py.detach(|| self.masks(&which, &values, step));
        Ok(masks.iter().map(|m| PyBytes::new(py, &mask_bytes(m))).collect())
    }

    /// The sparsity each target's schedule gives at `step` (its final one when None).
    #[pyo3(signature = (step=None))]
    fn sparsities(&self, step: Option<i64>) -> Vec<f64> {
        self.items.iter().map(|t| f64::from(sparsity_of(&t.rule, step))).collect()
    }

    /// A line per target: name, shape, method, schedule, whether ranked globally.
    fn describe(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|t| {
                let global = if t.rule.in_global_selection() { ", global" } else { "" };
                format!("{} {:?}: {:?}, {:?}{global}", t.name, t.shape, t.rule.method, t.rule.schedule)
            })
            .collect()
    }
}

fn sparsity_of(rule: &Rule, step: Option<i64>) -> f32 {
    match step {
        Some(step) => rule.schedule.sparsity(step),
        None => rule.schedule.final_sparsity(),
    }
}

impl Targets {
    fn masks(&self, which: &[usize], values: &[Vec<f32>], step: Option<i64>) -> Vec<Vec<f32>> {
        let mut out: Vec<Option<Vec<f32>>> = vec![None; which.len()];
        let (global, local): (Vec<usize>, Vec<usize>) =
            (0..which.len()).partition(|&k| self.items[which[k]].rule.in_global_selection());
        if let Some(&first) = global.first() {
            // All global targets share the top-level schedule, so they update together.
            let slices: Vec<&[f32]> = global.iter().map(|&k| values[k].as_slice()).collect();
            let s = sparsity_of(&self.items[which[first]].rule, step);
            for (&k, m) in global.iter().zip(prune_core::mask::global_masks(&slices, s)) {
                out[k] = Some(m);
            }
        }
        for k in local {
            let t = &self.items[which[k]];
            out[k] = Some(t.rule.method.mask(&values[k], &t.shape, sparsity_of(&t.rule, step)));
        }
        out.into_iter().map(|m| m.expect("every target computed")).collect()
    }
}

/// A schedule table (`{"kind": "polynomial_decay", ...}`) parsed and checked as the service
/// does, errors relative to the table (`schedule.end_step: ...`).
fn schedule_from_json(table: &str) -> Result<Schedule> {
    let wrapped = format!("{{\"schedule\": {table}}}");
    let (pruning, _) = pruning_from_json(&wrapped).map_err(|e| relative(e, "pruning."))?;
    Ok(pruning.schedule)
}

/// The schedule's sparsity at `step` if masks are recomputed at that step, else None; with
/// `always`, its sparsity at `step` whether or not a mask is due.
#[pyfunction]
#[pyo3(signature = (schedule, step, always=false))]
fn schedule_sparsity(schedule: &str, step: i64, always: bool) -> PyResult<Option<f64>> {
    let s = schedule_from_json(schedule)?;
    Ok((always || s.should_prune(step)).then(|| f64::from(s.sparsity(step))))
}

/// The mask of one weight (f32 bytes, row-major `shape`) at `sparsity`, by the method the
/// three job-file fields name; validated as a `[pruning]` table's fields are.
#[pyfunction(name = "mask")]
#[pyo3(signature = (weights, shape, sparsity, block_size, block_pooling, m_by_n=None))]
fn weight_mask<'py>(
    py: Python<'py>,
    weights: Vec<u8>,
    shape: Vec<usize>,
    sparsity: f64,
    block_size: [i64; 2],
    block_pooling: String,
    m_by_n: Option<[i64; 2]>,
) -> PyResult<Bound<'py, PyBytes>> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(PyValueError::new_err(format!("sparsity must be a number in [0, 1] (got {sparsity})")));
    }
    let table = PruningSpec { block_size, block_pooling, m_by_n, ..PruningSpec::default() };
    let (pruning, _) = checked(stand_in_job(table)).map_err(|e| relative(e, "pruning."))?;
    let method: PruningMethod = pruning.method;
    method.check_shape("weight", &shape).map_err(Error::Value)?;
    let w = f32_values(&weights, shape.iter().product(), "weight")?;
    let m = py.detach(|| method.mask(&w, &shape, sparsity as f32));
    Ok(PyBytes::new(py, &mask_bytes(&m)))
}

fn dtype(name: &str, tensor: &str) -> Result<safetensors::Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| Error::Value(format!("tensor `{tensor}`: dtype {name} has no safetensors form")))
}

/// `export.compression`, `export.sparse_format` and `export.level` checked as a job's.
fn export_settings(compression: String, sparse_format: String, level: Option<i64>) -> Result<Export> {
    let spec = JobSpec {
        export: ExportSpec { compression, sparse_format, level, ..ExportSpec::default() },
        ..stand_in_job(PruningSpec::default())
    };
    let job = validate::validate(&spec).map_err(|e| relative(Error::Spec(e.0), "export."))?;
    Ok(job.export)
}

/// Writes `tensors` (name, safetensors dtype, shape, raw bytes) as the service writes a
/// safetensors artifact: the deterministic file (`{"format": "pt"}`), bitmask-packed when asked,
/// compressed whole. Returns the artifact's size and sha256.
#[pyfunction]
#[pyo3(signature = (tensors, path, sparse_format, compression, level=None))]
fn export(
    py: Python<'_>,
    tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
    path: &str,
    sparse_format: String,
    compression: String,
    level: Option<i64>,
) -> PyResult<HashMap<String, String>> {
    let settings = export_settings(compression, sparse_format, level)?;
    let data = tensors
        .into_iter()
        .map(|(name, d, shape, bytes)| Ok(TensorData::new(name.clone(), dtype(&d, &name)?, shape, bytes)?))
        .collect::<Result<Vec<_>>>()?;
    let path = Path::new(path);
    let written: Result<(u64, String)> = py.detach(|| {
        let dense = write_safetensors(&data, Some(HashMap::from([("format".to_string(), "pt".to_string())])))?;
        drop(data);
        let raw = match settings.sparse_format {
            SparseFormat::Bitmask => bitmask::pack_safetensors(&dense)?,
            SparseFormat::Dense => dense,
        };
        let io = |source| Error::Io { path: path.display().to_string(), source };
        // One thread: the bytes depend on the level and the size class only (compress.rs).
        let s = Settings::for_artifact(settings.compression, settings.level, raw.len() as u64, 1);
        let mut bytes = Vec::new();
        compress::compress_stream_with(raw.as_slice(), &mut bytes, &s).map_err(io)?;
        prune_core::files::write_atomically(path, |f| f.write_all(&bytes)).map_err(io)?;
        Ok((bytes.len() as u64, hex::encode(Sha256::digest(&bytes))))
    });
    let (bytes, sha256) = written?;
    Ok(HashMap::from([
        ("bytes".to_string(), bytes.to_string()),
        ("sha256".to_string(), sha256),
        ("compression".to_string(), settings.compression.as_str().to_string()),
        ("sparse_format".to_string(), settings.sparse_format.as_str().to_string()),
    ]))
}

/// A tensor as Python receives it: name, safetensors dtype name, shape, raw bytes.
type RawTensor<'py> = (String, String, Vec<usize>, Bound<'py, PyBytes>);

/// Reads an artifact back as `prunectl unpack` does (compression detected, bitmask weights
/// unpacked, every part checked): its tensors in file order and its metadata.
#[pyfunction]
fn read_artifact<'py>(py: Python<'py>, path: &str) -> PyResult<(Vec<RawTensor<'py>>, HashMap<String, String>)> {
    let io = |source| Error::Io { path: path.to_string(), source };
    let served = std::fs::read(path).map_err(io)?;
    let limit = compress::memory_available().unwrap_or(u64::MAX);
    let (tensors, metadata) = py.detach(|| -> Result<_> {
        let bytes = compress::decompress_safetensors(&served, limit).map_err(io)?;
        let dense = bitmask::unpack_safetensors(&bytes)?;
        Ok(read_safetensors(&dense)?)
    })?;
    let tensors = tensors
        .into_iter()
        .map(|t| {
            let dtype = serde_json::to_value(t.dtype).ok().and_then(|v| v.as_str().map(str::to_string));
            (t.name, dtype.unwrap_or_default(), t.shape, PyBytes::new(py, &t.data))
        })
        .collect();
    Ok((tensors, metadata.unwrap_or_default()))
}

/// The names of `block_pooling` the service accepts (for messages).
#[pyfunction]
fn block_poolings() -> Vec<&'static str> {
    BlockPooling::NAMES.to_vec()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SpecError", m.py().get_type::<SpecError>())?;
    m.add("ArtifactError", m.py().get_type::<ArtifactError>())?;
    m.add("NOTHING_SELECTED", NOTHING_SELECTED)?;
    m.add_class::<Spec>()?;
    m.add_class::<Targets>()?;
    m.add_function(wrap_pyfunction!(schedule_sparsity, m)?)?;
    m.add_function(wrap_pyfunction!(weight_mask, m)?)?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add_function(wrap_pyfunction!(read_artifact, m)?)?;
    m.add_function(wrap_pyfunction!(block_poolings, m)?)?;
    m.add("TrackingError", m.py().get_type::<tracking::TrackingError>())?;
    m.add_class::<tracking::ServiceClient>()?;
    m.add_class::<tracking::Run>()?;
    m.add_function(wrap_pyfunction!(tracking::tracked_spec, m)?)?;
    Ok(())
}
