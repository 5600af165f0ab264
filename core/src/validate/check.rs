//! The rules of each section but pruning's (see `pruning`), and the typed job they yield.

use std::fmt;
use std::str::FromStr;

use super::analysis::{check_budget, check_sensitivity};
use super::language::check_language;
use super::layers::{check_sequential, input_shape};
use super::pruning::check_pruning;
use super::{
    FieldError, SpecErrors, EXPORT_FORMATS, MAX_BATCH_SIZE, MAX_CLASSES, MAX_ELEMENTS, MAX_EPOCHS, MAX_NAME_CHARS,
    MAX_THREADS,
};
use crate::compress::Compression;
use crate::job::{Data, DataSource, Export, Job, Training};
use crate::options::Structure;
use crate::options::{BuiltinData, Device, ExportFormat, Loss, Optimizer, SparseFormat};
use crate::spec::{DataSpec, ExportSpec, JobSpec, ModelSpec, TrainingSpec};

const BLOB_PREFIX: &str = "sha256:";

/// Checks every rule of `docs/job-spec.md`, collecting all violations, and returns the typed
/// job: the one form the engine runs.
pub fn validate(spec: &JobSpec) -> Result<Job, SpecErrors> {
    let mut e = Errors::default();
    if let Some(name) = &spec.name {
        let chars = name.chars().count();
        e.check(chars <= MAX_NAME_CHARS, "name", || {
            format!("must be at most {MAX_NAME_CHARS} characters (got {chars})")
        });
    }
    check_model(&mut e, &spec.model, spec.data.as_ref());
    // A state dict has no forward pass to train: a sharded one is pruned one-shot, streamed.
    e.check(!spec.model.is_sharded() || spec.training.epochs == 0, "training.epochs", || {
        format!("a sharded checkpoint is pruned one-shot: set epochs = 0 (got {})", spec.training.epochs)
    });
    let data = check_data(&mut e, spec.data.as_ref(), spec.training.epochs);
    let training = check_training(&mut e, &spec.training);
    let mut pruning = check_pruning(&mut e, &spec.pruning);
    let (calibration, evaluation) = check_language(&mut e, spec, pruning.as_ref().map(|p| p.criterion));
    let budget = spec.pruning.budget.as_ref().map(|b| check_budget(&mut e, spec, b));
    let sensitivity = spec.sensitivity.as_ref().map(|s| check_sensitivity(&mut e, spec, s));
    let export = check_export(&mut e, &spec.export, &spec.model);
    check_channel_structure(&mut e, spec);
    if let (Some(p), Some(budget)) = (&mut pruning, budget) {
        p.budget = budget;
    }
    match (training, pruning, export) {
        (Some(training), Some(pruning), Some(export)) if e.0.is_empty() => Ok(Job {
            name: spec.name.clone(),
            model: spec.model.clone(),
            data,
            training,
            pruning,
            export,
            sensitivity: sensitivity.flatten(),
            calibration,
            evaluation,
        }),
        // A section is `None` only when one of its fields was reported.
        _ => {
            debug_assert!(!e.0.is_empty(), "a section failed to parse without an error");
            Err(SpecErrors(e.0))
        }
    }
}

/// Collects field errors, with the checks every section shares.
#[derive(Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    pub(super) fn check(&mut self, ok: bool, field: impl Into<String>, reason: impl FnOnce() -> String) {
        if !ok {
            self.push(field, reason());
        }
    }

    /// `value` parsed as one of a closed set (an enum of `crate::options`), or an error on
    /// `field` saying what is allowed.
    pub(super) fn parse<T: FromStr>(&mut self, field: impl Into<String>, value: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        value.parse().map_err(|err: T::Err| self.push(field, err.to_string())).ok()
    }

    /// Errors found so far.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn at_least(&mut self, field: impl Into<String>, value: i64, min: i64) {
        self.check(value >= min, field, || format!("must be >= {min} (got {value})"));
    }

    /// The fields of the errors so far, in order (for tests).
    #[cfg(test)]
    pub(super) fn into_fields(self) -> Vec<String> {
        self.0.into_iter().map(|f| f.field).collect()
    }

    fn within(&mut self, field: impl Into<String>, value: i64, min: i64, max: i64) {
        self.check((min..=max).contains(&value), field, || format!("must be between {min} and {max} (got {value})"));
    }

    /// A finite number in `[0, 1)`.
    pub(super) fn fraction(&mut self, field: impl Into<String>, value: f64) {
        self.check((0.0..1.0).contains(&value), field, || format!("must be a number in [0, 1) (got {value})"));
    }

    fn non_empty(&mut self, field: impl Into<String>, value: &str) {
        self.check(!value.is_empty(), field, || "must not be empty".to_string());
    }

    fn blob_id(&mut self, field: impl Into<String>, value: &str) {
        self.check(is_blob_id(value), field, || {
            format!("`{value}` is not a blob id: expected `sha256:` followed by 64 lowercase hex digits")
        });
    }

    /// At most (or, when `required`, exactly) one of `sources` is set.
    fn one_source(&mut self, field: &str, sources: &[(&str, bool)], required: bool) {
        let set: Vec<&str> = sources.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        let names: Vec<String> = sources.iter().map(|(name, _)| format!("{field}.{name}")).collect();
        if set.len() > 1 {
            self.push(field, format!("exactly one of {} may be set (found {})", names.join(", "), set.join(" and ")));
        } else if set.is_empty() && required {
            self.push(field, format!("one of {} must be set", names.join(", ")));
        }
    }
}

/// `sha256:` followed by 64 lowercase hex digits: the id `prunectl upload` prints.
pub fn is_blob_id(value: &str) -> bool {
    value
        .strip_prefix(BLOB_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Product of `dims`, `None` on overflow.
pub(super) fn element_count(dims: &[i64]) -> Option<i64> {
    dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d))
}

fn check_model(e: &mut Errors, model: &ModelSpec, data: Option<&DataSpec>) {
    let sources = [
        ("file", model.file.is_some()),
        ("blob", model.blob.is_some()),
        ("sequential", model.sequential.is_some()),
        ("dir", model.dir.is_some()),
        ("index", model.index.is_some()),
    ];
    e.one_source("model", &sources, true);
    check_sharded(e, model);
    if let Some(file) = &model.file {
        e.non_empty("model.file", file);
    }
    if let Some(blob) = &model.blob {
        e.blob_id("model.blob", blob);
    }
    if let Some(layers) = &model.sequential {
        check_sequential(e, layers, input_shape(data));
    }
    if let Some(weights) = &model.weights {
        e.check(model.sequential.is_some(), "model.weights", || {
            "initial weights only apply to model.sequential: a file or blob model carries its own".to_string()
        });
        e.non_empty("model.weights", weights);
        if weights.starts_with(BLOB_PREFIX) {
            e.blob_id("model.weights", weights);
        }
    }
}

/// The typed data section: `None` without a data source (valid only for one-shot jobs).
fn check_data(e: &mut Errors, data: Option<&DataSpec>, epochs: i64) -> Option<Data> {
    let Some(data) = data else {
        e.check(epochs <= 0, "data", || {
            "training.epochs > 0 needs training data: add a [data] table with one of file, blob, builtin \
             (or set epochs = 0 for one-shot pruning)"
                .to_string()
        });
        return None;
    };
    let sources = [("file", data.file.is_some()), ("blob", data.blob.is_some()), ("builtin", data.builtin.is_some())];
    e.one_source("data", &sources, epochs > 0);
    if let Some(file) = &data.file {
        e.non_empty("data.file", file);
    }
    if let Some(blob) = &data.blob {
        e.blob_id("data.blob", blob);
    }
    let builtin = data.builtin.as_deref().and_then(|b| e.parse::<BuiltinData>("data.builtin", b));
    if builtin == Some(BuiltinData::Synthetic) {
        check_synthetic(e, data);
    } else {
        for (name, set) in
            [("shape", data.shape.is_some()), ("classes", data.classes.is_some()), ("samples", data.samples.is_some())]
        {
            e.check(!set, format!("data.{name}"), || "only applies to builtin = \"synthetic\"".to_string());
        }
    }
    e.fraction("data.validation_split", data.validation_split);
    let source = match (&data.file, &data.blob, builtin) {
        (Some(file), _, _) => DataSource::File(file.clone()),
        (None, Some(blob), _) => DataSource::Blob(blob.clone()),
        (None, None, Some(BuiltinData::Digits)) => DataSource::Digits,
        (None, None, Some(BuiltinData::Synthetic)) => {
            DataSource::Synthetic { shape: data.shape.clone()?, classes: data.classes?, samples: data.samples? }
        }
        (None, None, None) => return None,
    };
    Some(Data { source, validation_split: data.validation_split })
}

fn check_synthetic(e: &mut Errors, data: &DataSpec) {
    let needs = |what: &str| format!("builtin = \"synthetic\" needs {what}");
    match &data.shape {
        None => e.push("data.shape", needs("a per-sample shape, e.g. shape = [1, 28, 28]")),
        Some(shape) => {
            e.check(!shape.is_empty(), "data.shape", || "must list at least one dimension".to_string());
            for (j, &d) in shape.iter().enumerate() {
                e.at_least(format!("data.shape[{j}]"), d, 1);
            }
        }
    }
    match data.classes {
        None => e.push("data.classes", needs("classes = N")),
        Some(classes) => e.within("data.classes", classes, 1, MAX_CLASSES),
    }
    match data.samples {
        None => e.push("data.samples", needs("samples = N")),
        Some(samples) => e.at_least("data.samples", samples, 1),
    }
    if let (Some(shape), Some(samples)) = (&data.shape, data.samples) {
        if samples >= 1 && shape.iter().all(|&d| d >= 1) {
            let ok = element_count(shape).and_then(|n| n.checked_mul(samples)).is_some_and(|n| n <= MAX_ELEMENTS);
            e.check(ok, "data.samples", || {
                format!("{samples} samples of shape {shape:?} exceed the limit of {MAX_ELEMENTS} elements")
            });
        }
    }
}

fn check_training(e: &mut Errors, t: &TrainingSpec) -> Option<Training> {
    e.within("training.epochs", t.epochs, 0, MAX_EPOCHS);
    e.within("training.batch_size", t.batch_size, 1, MAX_BATCH_SIZE);
    let optimizer = e.parse::<Optimizer>("training.optimizer", &t.optimizer);
    e.check(t.learning_rate.is_finite() && t.learning_rate > 0.0, "training.learning_rate", || {
        format!("must be a finite number > 0 (got {})", t.learning_rate)
    });
    e.fraction("training.momentum", t.momentum);
    e.check(t.weight_decay.is_finite() && t.weight_decay >= 0.0, "training.weight_decay", || {
        format!("must be a finite number >= 0 (got {})", t.weight_decay)
    });
    let loss = e.parse::<Loss>("training.loss", &t.loss);
    let device = e.parse::<Device>("training.device", &t.device);
    e.at_least("training.checkpoint_every", t.checkpoint_every, 1);
    e.within("training.threads", t.threads, 0, MAX_THREADS);
    e.within("training.max_runtime_secs", t.max_runtime_secs, 0, 366 * 24 * 3600);
    e.within("training.max_attempts", t.max_attempts, 0, 100);
    Some(Training {
        epochs: t.epochs,
        batch_size: t.batch_size,
        optimizer: optimizer?,
        learning_rate: t.learning_rate,
        momentum: t.momentum,
        weight_decay: t.weight_decay,
        loss: loss?,
        seed: t.seed,
        device: device?,
        checkpoint_every: t.checkpoint_every,
        threads: t.threads,
    })
}

/// `cpu`, `cuda`, `cuda:N` or `auto` (see [`Device`]).
pub fn is_device(device: &str) -> bool {
    device.parse::<Device>().is_ok()
}

/// A sharded checkpoint: `dir` on the client, `index` with its `shards` on the server.
fn check_sharded(e: &mut Errors, model: &ModelSpec) {
    if let Some(dir) = &model.dir {
        e.non_empty("model.dir", dir);
    }
    if let Some(index) = &model.index {
        e.blob_id("model.index", index);
    }
    match (&model.index, &model.shards) {
        (Some(_), None) => {
            e.push("model.shards", "a sharded model (model.index) needs its shards: file name -> blob id")
        }
        (None, Some(_)) => e.push("model.shards", "only applies with model.index (the shards' index)"),
        (Some(_), Some(shards)) if shards.is_empty() => e.push("model.shards", "must name at least one shard"),
        _ => {}
    }
    for (name, blob) in model.shards.iter().flatten() {
        let field = format!("model.shards.{name}");
        if let Some(problem) = crate::sharded::shard_name_problem(name) {
            e.push(field.clone(), problem);
        }
        e.blob_id(field, blob);
    }
}

fn check_export(e: &mut Errors, x: &ExportSpec, model: &ModelSpec) -> Option<Export> {
    e.check(!x.formats.is_empty(), "export.formats", || {
        format!("must list at least one of: {}", EXPORT_FORMATS.join(", "))
    });
    let mut formats = Vec::with_capacity(x.formats.len());
    for (i, format) in x.formats.iter().enumerate() {
        let field = format!("export.formats[{i}]");
        formats.push(e.parse::<ExportFormat>(&field, format));
        e.check(!x.formats[..i].contains(format), field, || format!("`{format}` is listed twice"));
    }
    if formats.contains(&Some(ExportFormat::Torchscript)) {
        if let Some(why) = not_torchscript(model) {
            e.push(
                "export.formats",
                format!("torchscript export needs a TorchScript model (model.file ending in .pt, .pth or .ts, or a blob) or a model.sequential: {why}"),
            );
        }
    }
    let compression = e.parse::<Compression>("export.compression", &x.compression);
    let sparse_format = e.parse::<SparseFormat>("export.sparse_format", &x.sparse_format);
    let level = match (x.level, compression) {
        (None, _) => None,
        (Some(level), Some(c)) => match crate::compress::Settings::levels(c) {
            Some(range) if i32::try_from(level).is_ok_and(|l| range.contains(&l)) => Some(level as i32),
            Some(range) => {
                e.push("export.level", format!("{level} is outside {c}'s levels {}-{}", range.start(), range.end()));
                None
            }
            None => {
                e.push("export.level", "compression `none` has no level: remove export.level".to_string());
                None
            }
        },
        (Some(_), None) => None,
    };
    Some(Export {
        formats: formats.into_iter().collect::<Option<_>>()?,
        compression: compression?,
        sparse_format: sparse_format?,
        level,
        slim: x.slim,
    })
}

/// What channel pruning and `export.slim` need of the model: a sharded checkpoint is streamed
/// tensor by tensor (no channel groups), and only a built-in model's layers can be cut.
fn check_channel_structure(e: &mut Errors, spec: &JobSpec) {
    let channel = spec.pruning.structure == Structure::Channel.as_str();
    if channel && spec.model.is_sharded() {
        e.push(
            "pruning.structure",
            "channel pruning needs the whole model at once: a sharded checkpoint is pruned tensor by tensor (element-wise, blocks or m-by-n)",
        );
    }
    if spec.export.slim {
        e.check(channel, "export.slim", || {
            format!(
                "a slim export cuts out removed channels: it needs pruning.structure = \"channel\" (got \"{}\")",
                spec.pruning.structure
            )
        });
        e.check(spec.model.sequential.is_some(), "export.slim", || {
            "only a model.sequential can be cut to its kept channels (a TorchScript or state-dict model has no layer graph to follow): its channels are zeroed, and the report lists them; remove export.slim".to_string()
        });
    }
}

/// Why the model is known not to be TorchScript, if it is; blobs and unknown extensions are
/// let through for the engine to check once it has loaded them.
fn not_torchscript(model: &ModelSpec) -> Option<String> {
    // A model.sequential is traced (its slim form with export.slim).
    if model.is_sharded() {
        return Some("a sharded checkpoint is a safetensors state dict".into());
    }
    let file = model.file.as_deref()?.to_ascii_lowercase();
    file.ends_with(".safetensors").then(|| "model.file is a safetensors state dict".into())
}

// ---------------------------------------------------------------------------------------------
// Warnings and step arithmetic
// ---------------------------------------------------------------------------------------------
