//! Parsing and validating job specs, with every error tied to the field it is about.
//!
//! Users write job files by hand, so a rejected job must say *which* field is wrong, what
//! is wrong with it and what is allowed, and must say it for every problem at once rather than
//! one per submit. Field paths use the job file's own spelling (`pruning.schedule.end_step`,
//! `pruning.overrides[1].match`, `model.sequential[2].in`).

use std::fmt;

use serde::Serialize;

use crate::compress::Compression;
use crate::schedule::Schedule;
use crate::spec::{
    DataSpec, ExportSpec, JobSpec, LayerSpec, ModelSpec, OverrideSpec, PruningSpec, TrainingSpec,
};

/// Longest job name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Most training epochs accepted: beyond this a job is a typo, not an experiment.
pub const MAX_EPOCHS: i64 = 100_000;
/// Largest batch size accepted.
pub const MAX_BATCH_SIZE: i64 = 1 << 20;
/// Most classes a synthetic data set may have.
pub const MAX_CLASSES: i64 = 1_000_000;
/// Most elements one tensor (a synthetic data set, a built-in layer's weight) may have, so a
/// typo cannot make the server allocate terabytes.
pub const MAX_ELEMENTS: i64 = 1 << 31;
/// Most intra-op threads a job may ask for.
pub const MAX_THREADS: i64 = 256;

pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw"];
pub const LOSSES: &[&str] = &["cross_entropy", "mse"];
pub const BUILTIN_DATA: &[&str] = &["digits", "synthetic"];
pub const BLOCK_POOLINGS: &[&str] = &["avg", "max"];
pub const SCOPES: &[&str] = &["layer", "global"];
pub const EXPORT_FORMATS: &[&str] = &["safetensors", "torchscript"];
pub const SPARSE_FORMATS: &[&str] = &["dense", "bitmask"];

const BLOB_PREFIX: &str = "sha256:";

/// One problem with a job spec. `field` is a path in the job file (`pruning.schedule.end_step`);
/// it is empty when the problem is with the document as a whole (a TOML syntax error).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Every problem found in a job spec; displays one `field: reason` line per problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct SpecErrors(pub Vec<FieldError>);

fn lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses a TOML job file. Errors name the field (`training.batch_size`), or the unknown or
/// missing key with where it is (`training.bacth_size`), plus the line and column.
pub fn parse_toml(text: &str) -> Result<JobSpec, SpecErrors> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let location = e.inner().span().map(|span| line_column(text, span.start));
        SpecErrors(vec![serde_field_error(
            &path_string(e.path()),
            e.inner().message(),
            location,
        )])
    })
}

/// Parses a JSON job spec (the gRPC and `--json` form) with the same error paths as TOML.
pub fn parse_json(text: &str) -> Result<JobSpec, SpecErrors> {
    let mut de = serde_json::Deserializer::from_str(text);
    let spec = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| SpecErrors(vec![json_field_error(&path_string(e.path()), e.inner())]))?;
    // Trailing text after the document belongs to no field.
    de.end()
        .map_err(|e| SpecErrors(vec![json_field_error("", &e)]))?;
    Ok(spec)
}

fn json_field_error(table: &str, e: &serde_json::Error) -> FieldError {
    // serde_json appends " at line L column C" to its message; strip it and add ours.
    let location = (e.line() > 0).then(|| (e.line(), e.column()));
    let text = e.to_string();
    let message = match location {
        Some((line, column)) => text
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    };
    serde_field_error(table, &message, location)
}

/// `training.batch_size`, `pruning.overrides[1]`; empty for the document root.
fn path_string(path: &serde_path_to_error::Path) -> String {
    if path.iter().next().is_none() {
        String::new()
    } else {
        path.to_string()
    }
}

/// Maps a serde error at path `table` to a field error, making sure an unknown or missing key
/// is the last element of the field path.
fn serde_field_error(table: &str, message: &str, location: Option<(usize, usize)>) -> FieldError {
    let key = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    let field = match key {
        // Plain structs already report an unknown key under its own name; buffered ones
        // (internally tagged enums) and missing keys report the table.
        Some(key) if table == key || table.ends_with(&format!(".{key}")) => table.to_string(),
        Some(key) if table.is_empty() => key.to_string(),
        Some(key) => format!("{table}.{key}"),
        None => table.to_string(),
    };
    let mut reason = one_line(&user_terms(message));
    if let Some((line, column)) = location {
        reason.push_str(&format!(" (line {line}, column {column})"));
    }
    FieldError::new(field, reason)
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    (0..=offset.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// Joins a multi-line message into one line, so each error stays one line of `SpecErrors`'
/// display.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// serde names the Rust type it expected (`expected struct ModelSpec`); users wrote a table.
fn user_terms(message: &str) -> String {
    match message.split_once("expected struct ") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            format!("{before}expected a table{rest}")
        }
        None => message.to_string(),
    }
}

/// The regex crate's error on one line. Its syntax errors echo the pattern with a caret under
/// the culprit and then `error: <cause>`; the field already names the pattern, so only the
/// cause is kept.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    let cause = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "));
    match (text.starts_with("regex parse error:"), cause) {
        (true, Some(cause)) => format!("regex parse error: {cause}"),
        _ => one_line(&text),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Checks every rule of `spec/job-spec.md` and collects all violations.
pub fn validate(spec: &JobSpec) -> Result<(), SpecErrors> {
    let mut e = Errors::default();
    if let Some(name) = &spec.name {
        let chars = name.chars().count();
        e.check(chars <= MAX_NAME_CHARS, "name", || {
            format!("must be at most {MAX_NAME_CHARS} characters (got {chars})")
        });
    }
    check_model(&mut e, &spec.model);
    check_data(&mut e, spec.data.as_ref(), spec.training.epochs);
    check_training(&mut e, &spec.training);
    check_pruning(&mut e, &spec.pruning);
    check_export(&mut e, &spec.export, &spec.model);
    e.into_result()
}

/// Collects field errors, with the checks every section shares.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    fn check(&mut self, ok: bool, field: impl Into<String>, reason: impl FnOnce() -> String) {
        if !ok {
            self.push(field, reason());
        }
    }

    fn one_of(&mut self, field: impl Into<String>, value: &str, allowed: &[&str]) {
        self.check(allowed.contains(&value), field, || {
            format!("`{value}` is not one of: {}", allowed.join(", "))
        });
    }

    fn at_least(&mut self, field: impl Into<String>, value: i64, min: i64) {
        self.check(value >= min, field, || {
            format!("must be >= {min} (got {value})")
        });
    }

    fn within(&mut self, field: impl Into<String>, value: i64, min: i64, max: i64) {
        self.check((min..=max).contains(&value), field, || {
            format!("must be between {min} and {max} (got {value})")
        });
    }

    /// A finite number in `[0, 1)`.
    fn fraction(&mut self, field: impl Into<String>, value: f64) {
        self.check((0.0..1.0).contains(&value), field, || {
            format!("must be a number in [0, 1) (got {value})")
        });
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
        let set: Vec<&str> = sources
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        let names: Vec<String> = sources
            .iter()
            .map(|(name, _)| format!("{field}.{name}"))
            .collect();
        if set.len() > 1 {
            self.push(
                field,
                format!(
                    "exactly one of {} may be set (found {})",
                    names.join(", "),
                    set.join(" and ")
                ),
            );
        } else if set.is_empty() && required {
            self.push(field, format!("one of {} must be set", names.join(", ")));
        }
    }

    fn into_result(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(self.0))
        }
    }
}

/// `sha256:` followed by 64 lowercase hex digits: the id `prunectl upload` prints.
pub fn is_blob_id(value: &str) -> bool {
    value.strip_prefix(BLOB_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Product of `dims`, `None` on overflow.
fn element_count(dims: &[i64]) -> Option<i64> {
    dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d))
}

fn check_model(e: &mut Errors, model: &ModelSpec) {
    let sources = [
        ("file", model.file.is_some()),
        ("blob", model.blob.is_some()),
        ("sequential", model.sequential.is_some()),
    ];
    e.one_source("model", &sources, true);
    if let Some(file) = &model.file {
        e.non_empty("model.file", file);
    }
    if let Some(blob) = &model.blob {
        e.blob_id("model.blob", blob);
    }
    if let Some(layers) = &model.sequential {
        check_sequential(e, layers);
    }
    if let Some(weights) = &model.weights {
        e.check(model.sequential.is_some(), "model.weights", || {
            "initial weights only apply to model.sequential: a file or blob model carries its own"
                .to_string()
        });
        e.non_empty("model.weights", weights);
        if weights.starts_with(BLOB_PREFIX) {
            e.blob_id("model.weights", weights);
        }
    }
}

fn check_sequential(e: &mut Errors, layers: &[LayerSpec]) {
    e.check(!layers.is_empty(), "model.sequential", || {
        "must list at least one layer".to_string()
    });
    for (i, layer) in layers.iter().enumerate() {
        check_layer(e, &format!("model.sequential[{i}]"), layer);
    }
}

fn check_layer(e: &mut Errors, at: &str, layer: &LayerSpec) {
    match *layer {
        LayerSpec::Linear {
            in_features,
            out_features,
            ..
        } => {
            e.at_least(format!("{at}.in"), in_features, 1);
            e.at_least(format!("{at}.out"), out_features, 1);
            check_weight_size(e, at, &[out_features, in_features]);
        }
        LayerSpec::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            ..
        } => {
            e.at_least(format!("{at}.in"), in_channels, 1);
            e.at_least(format!("{at}.out"), out_channels, 1);
            e.at_least(format!("{at}.kernel"), kernel, 1);
            e.at_least(format!("{at}.stride"), stride, 1);
            e.at_least(format!("{at}.padding"), padding, 0);
            check_weight_size(e, at, &[out_channels, in_channels, kernel, kernel]);
        }
        LayerSpec::Maxpool2d { kernel } => e.at_least(format!("{at}.kernel"), kernel, 1),
        LayerSpec::Dropout { p } => e.fraction(format!("{at}.p"), p),
        LayerSpec::Reshape { ref shape } => check_reshape(e, at, shape),
        LayerSpec::Relu | LayerSpec::Tanh | LayerSpec::Sigmoid | LayerSpec::Flatten => {}
    }
}

/// A built-in layer's weight must stay under [`MAX_ELEMENTS`] (sizes below 1 are reported on
/// their own field).
fn check_weight_size(e: &mut Errors, at: &str, dims: &[i64]) {
    if dims.iter().all(|&d| d >= 1) {
        let ok = element_count(dims).is_some_and(|n| n <= MAX_ELEMENTS);
        e.check(ok, at, || {
            format!("its weight of shape {dims:?} has more than {MAX_ELEMENTS} elements")
        });
    }
}

fn check_reshape(e: &mut Errors, at: &str, shape: &[i64]) {
    let field = format!("{at}.shape");
    e.check(!shape.is_empty(), &field, || {
        "must list at least one dimension".to_string()
    });
    let inferred = shape.iter().filter(|&&d| d == -1).count();
    e.check(inferred <= 1, &field, || {
        format!("at most one dimension may be -1 (got {inferred})")
    });
    for (j, &d) in shape.iter().enumerate() {
        e.check(d >= 1 || d == -1, format!("{field}[{j}]"), || {
            format!("must be >= 1, or -1 to infer the dimension (got {d})")
        });
    }
}

fn check_data(e: &mut Errors, data: Option<&DataSpec>, epochs: i64) {
    let Some(data) = data else {
        e.check(epochs <= 0, "data", || {
            "training.epochs > 0 needs training data: add a [data] table with one of file, blob, builtin \
             (or set epochs = 0 for one-shot pruning)"
                .to_string()
        });
        return;
    };
    let sources = [
        ("file", data.file.is_some()),
        ("blob", data.blob.is_some()),
        ("builtin", data.builtin.is_some()),
    ];
    e.one_source("data", &sources, epochs > 0);
    if let Some(file) = &data.file {
        e.non_empty("data.file", file);
    }
    if let Some(blob) = &data.blob {
        e.blob_id("data.blob", blob);
    }
    if let Some(builtin) = &data.builtin {
        e.one_of("data.builtin", builtin, BUILTIN_DATA);
    }
    if data.builtin.as_deref() == Some("synthetic") {
        check_synthetic(e, data);
    } else {
        for (name, set) in [
            ("shape", data.shape.is_some()),
            ("classes", data.classes.is_some()),
            ("samples", data.samples.is_some()),
        ] {
            e.check(!set, format!("data.{name}"), || {
                "only applies to builtin = \"synthetic\"".to_string()
            });
        }
    }
    e.fraction("data.validation_split", data.validation_split);
}

fn check_synthetic(e: &mut Errors, data: &DataSpec) {
    let needs = |what: &str| format!("builtin = \"synthetic\" needs {what}");
    match &data.shape {
        None => e.push(
            "data.shape",
            needs("a per-sample shape, e.g. shape = [1, 28, 28]"),
        ),
        Some(shape) => {
            e.check(!shape.is_empty(), "data.shape", || {
                "must list at least one dimension".to_string()
            });
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
            let ok = element_count(shape)
                .and_then(|n| n.checked_mul(samples))
                .is_some_and(|n| n <= MAX_ELEMENTS);
            e.check(ok, "data.samples", || {
                format!("{samples} samples of shape {shape:?} exceed the limit of {MAX_ELEMENTS} elements")
            });
        }
    }
}

fn check_training(e: &mut Errors, t: &TrainingSpec) {
    e.within("training.epochs", t.epochs, 0, MAX_EPOCHS);
    e.within("training.batch_size", t.batch_size, 1, MAX_BATCH_SIZE);
    e.one_of("training.optimizer", &t.optimizer, OPTIMIZERS);
    e.check(
        t.learning_rate.is_finite() && t.learning_rate > 0.0,
        "training.learning_rate",
        || format!("must be a finite number > 0 (got {})", t.learning_rate),
    );
    e.fraction("training.momentum", t.momentum);
    e.check(
        t.weight_decay.is_finite() && t.weight_decay >= 0.0,
        "training.weight_decay",
        || format!("must be a finite number >= 0 (got {})", t.weight_decay),
    );
    e.one_of("training.loss", &t.loss, LOSSES);
    e.check(is_device(&t.device), "training.device", || {
        format!(
            "`{}` is not a device: expected cpu, cuda, cuda:N (N = GPU index) or auto",
            t.device
        )
    });
    e.at_least("training.checkpoint_every", t.checkpoint_every, 1);
    e.within("training.threads", t.threads, 0, MAX_THREADS);
}

/// `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn is_device(device: &str) -> bool {
    match device.strip_prefix("cuda:") {
        Some(index) => {
            !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit())
                && index.parse::<u16>().is_ok()
        }
        None => matches!(device, "cpu" | "cuda" | "auto"),
    }
}

fn check_pruning(e: &mut Errors, p: &PruningSpec) {
    check_schedule(e, "pruning.schedule", &p.schedule);
    check_block_size(e, "pruning.block_size", p.block_size);
    e.one_of("pruning.block_pooling", &p.block_pooling, BLOCK_POOLINGS);
    if let Some(m_by_n) = p.m_by_n {
        check_m_by_n(e, "pruning.m_by_n", m_by_n, p.block_size);
    }
    e.one_of("pruning.scope", &p.scope, SCOPES);
    let global = p.scope == "global";
    if global {
        check_element_wise(e, "pruning.scope", p.block_size, p.m_by_n);
    }
    for (list, patterns) in [("include", &p.include), ("exclude", &p.exclude)] {
        for (i, pattern) in patterns.iter().enumerate() {
            check_regex(e, format!("pruning.{list}[{i}]"), pattern);
        }
    }
    for (i, o) in p.overrides.iter().enumerate() {
        check_override(e, &format!("pruning.overrides[{i}]"), o, global);
    }
}

/// tfmot's schedule checks (its messages kept), reported under `at`.
fn check_schedule(e: &mut Errors, at: &str, schedule: &Schedule) {
    for (field, reason) in schedule.validate() {
        e.push(format!("{at}.{field}"), reason);
    }
    // tfmot does not check it, but a negative power makes (1 - p)^power grow without bound
    // (inf at end_step): sparsities outside [0, 1], never what was meant. 0 is tfmot's too: the
    // sparsity then stays at initial_sparsity.
    if let Schedule::PolynomialDecay { power, .. } = *schedule {
        e.check(power >= 0.0 || power.is_nan(), format!("{at}.power"), || {
            format!("must be a number >= 0 (got {power})")
        });
    }
}

fn check_block_size(e: &mut Errors, at: &str, block: [i64; 2]) {
    for (j, d) in block.into_iter().enumerate() {
        e.at_least(format!("{at}[{j}]"), d, 1);
    }
}

fn check_m_by_n(e: &mut Errors, field: &str, [m, n]: [i64; 2], block: [i64; 2]) {
    if n < 1 {
        e.push(
            field,
            format!("n (the group size) must be >= 1 (got [{m}, {n}])"),
        );
    } else if m < 0 || m >= n {
        e.push(
            field,
            format!("m zeros per group of n need 0 <= m < n; m >= n is rejected (got [{m}, {n}])"),
        );
    }
    e.check(block == [1, 1], field, || {
        format!("m_by_n cannot be combined with block_size {block:?}: use block_size = [1, 1]")
    });
}

/// Global scope ranks single weights across tensors: blocks and m-by-n groups have no place.
fn check_element_wise(e: &mut Errors, field: &str, block: [i64; 2], m_by_n: Option<[i64; 2]>) {
    e.check(block == [1, 1], field, || {
        format!("global scope is element-wise only: block_size must be [1, 1] (got {block:?})")
    });
    e.check(m_by_n.is_none(), field, || {
        "global scope is element-wise only: it cannot be combined with m_by_n".to_string()
    });
}

fn check_regex(e: &mut Errors, field: String, pattern: &str) {
    if let Err(err) = regex::Regex::new(pattern) {
        e.push(field, regex_reason(&err));
    }
}

fn check_override(e: &mut Errors, at: &str, o: &OverrideSpec, global: bool) {
    check_regex(e, format!("{at}.match"), &o.pattern);
    if o.skip {
        let settings: Vec<&str> = [
            ("schedule", o.schedule.is_some()),
            ("block_size", o.block_size.is_some()),
            ("block_pooling", o.block_pooling.is_some()),
            ("m_by_n", o.m_by_n.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        e.check(settings.is_empty(), format!("{at}.skip"), || {
            format!("skip = true leaves matching parameters unpruned, so {} would be ignored: remove one or the other", settings.join(", "))
        });
    }
    if let Some(schedule) = &o.schedule {
        check_schedule(e, &format!("{at}.schedule"), schedule);
    }
    let block = o.block_size.unwrap_or([1, 1]);
    if let Some(b) = o.block_size {
        check_block_size(e, &format!("{at}.block_size"), b);
    }
    if let Some(pooling) = &o.block_pooling {
        e.one_of(format!("{at}.block_pooling"), pooling, BLOCK_POOLINGS);
    }
    if let Some(m_by_n) = o.m_by_n {
        check_m_by_n(e, &format!("{at}.m_by_n"), m_by_n, block);
    }
    if global {
        check_element_wise(e, at, block, o.m_by_n);
    }
}

fn check_export(e: &mut Errors, x: &ExportSpec, model: &ModelSpec) {
    e.check(!x.formats.is_empty(), "export.formats", || {
        format!("must list at least one of: {}", EXPORT_FORMATS.join(", "))
    });
    for (i, format) in x.formats.iter().enumerate() {
        let field = format!("export.formats[{i}]");
        e.one_of(&field, format, EXPORT_FORMATS);
        e.check(!x.formats[..i].contains(format), field, || {
            format!("`{format}` is listed twice")
        });
    }
    if x.formats.iter().any(|f| f == "torchscript") {
        if let Some(why) = not_torchscript(model) {
            e.push(
                "export.formats",
                format!("torchscript export needs a TorchScript model (model.file ending in .pt, .pth or .ts, or a blob): {why}"),
            );
        }
    }
    if let Err(err) = x.compression.parse::<Compression>() {
        e.push("export.compression", err.to_string());
    }
    e.one_of("export.sparse_format", &x.sparse_format, SPARSE_FORMATS);
}

/// Why the model is known not to be TorchScript, if it is; blobs and unknown extensions are
/// let through for the engine to check once it has loaded them.
fn not_torchscript(model: &ModelSpec) -> Option<String> {
    if model.sequential.is_some() {
        return Some("model.sequential builds an nn.Sequential state dict".into());
    }
    let file = model.file.as_deref()?.to_ascii_lowercase();
    file.ends_with(".safetensors")
        .then(|| "model.file is a safetensors state dict".into())
}

// ---------------------------------------------------------------------------------------------
// Warnings and step arithmetic
// ---------------------------------------------------------------------------------------------

/// Submit-time warnings: schedules that would silently do nothing or never reach their final
/// sparsity (tfmot #973/#975), for the main schedule and every override's, and overrides that
/// change nothing. `total_steps` is the job's number of training batches, when known.
///
/// One-shot jobs (`epochs = 0`) get no schedule warnings: they prune once at the final
/// sparsity, whatever the steps. m-by-n masks ignore the schedule, so theirs are skipped too.
pub fn warnings(spec: &JobSpec, total_steps: Option<i64>) -> Vec<String> {
    let p = &spec.pruning;
    let mut out: Vec<String> = p
        .overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.skip && o.schedule.is_none() && o.block_size.is_none() && o.block_pooling.is_none() && o.m_by_n.is_none())
        .map(|(i, o)| {
            format!(
                "pruning.overrides[{i}]: sets nothing, so parameters matching `{}` get the top-level settings \
                 and no later override",
                o.pattern
            )
        })
        .collect();
    if spec.training.epochs == 0 {
        return out;
    }
    // `Schedule::warnings` takes a negative count as "unknown".
    let total = total_steps.unwrap_or(-1);
    if p.m_by_n.is_none() {
        out.extend(schedule_warnings("pruning.schedule", &p.schedule, total));
    }
    for (i, o) in p.overrides.iter().enumerate() {
        if let (Some(schedule), false, None) = (&o.schedule, o.skip, o.m_by_n) {
            out.extend(schedule_warnings(
                &format!("pruning.overrides[{i}].schedule"),
                schedule,
                total,
            ));
        }
    }
    out
}

fn schedule_warnings(at: &str, schedule: &Schedule, total_steps: i64) -> Vec<String> {
    schedule
        .warnings(total_steps)
        .into_iter()
        .map(|w| format!("{at}: {w}"))
        .collect()
}

/// Training steps in one epoch: `ceil(train_samples / batch_size)`, since the last partial
/// batch is a step too (as in Keras). 0 when either count is not positive.
pub fn steps_per_epoch(train_samples: i64, batch_size: i64) -> i64 {
    if train_samples <= 0 || batch_size <= 0 {
        return 0;
    }
    train_samples / batch_size + i64::from(train_samples % batch_size != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job file of `spec/job-spec.md`, verbatim.
    const SPEC_EXAMPLE: &str = r#"
name = "digits-mlp-80"                 # optional, free text

[model]                                # exactly one source
file = "model.pt"                      # local path, uploaded by prunectl: TorchScript (.pt) or safetensors state dict
# blob = "sha256:<hex>"                # an already-uploaded blob (prunectl upload FILE prints the id)
# sequential = [                       # built-in architecture, PyTorch nn.Sequential naming ("0.weight", ...)
#   { type = "linear", in = 64, out = 128 }, { type = "relu" }, { type = "linear", in = 128, out = 10 },
# ]                                    # also: conv2d{in,out,kernel,stride?,padding?}, maxpool2d{kernel},
#                                      # flatten, dropout{p}, reshape{shape}
# weights = "pretrained.safetensors"   # optional initial weights for `sequential`

[data]                                 # not needed when training.epochs = 0
file = "train.safetensors"             # tensors "x" (f32, [N, ...]) and "y" (i64 class ids [N], or f32 targets)
# builtin = "digits"                   # sklearn's 8x8 digits, shipped with the project
# builtin = "synthetic"                # seeded random data: shape = [...], classes = 10, samples = N
validation_split = 0.1                 # last fraction held out, as in Keras

[training]
epochs = 2                             # 0 = one-shot: masks computed once at the schedule's final
                                       # (or constant) sparsity, no data needed
batch_size = 128
optimizer = "adam"                     # sgd | adam | adamw
learning_rate = 0.001
momentum = 0.0                         # sgd
weight_decay = 0.0
loss = "cross_entropy"                 # cross_entropy | mse
seed = 0
device = "cpu"                         # cpu | cuda | cuda:N | auto
checkpoint_every = 100                 # steps

[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 0, end_step = 844, power = 3, frequency = 100 }
# schedule = { kind = "constant_sparsity", target_sparsity = 0.5, begin_step = 0, end_step = -1, frequency = 100 }
block_size = [1, 1]
block_pooling = "avg"                  # avg | max
# m_by_n = [2, 4]
scope = "layer"                        # layer | global
include = []                           # regexes on parameter names; empty = every weight of rank >= 2
exclude = []
prune_bias = false

[[pruning.overrides]]                  # first match wins
match = "^0\\.weight$"
skip = true                            # or: schedule = {...}, block_size = [...], m_by_n = [...]

[export]
formats = ["safetensors"]              # safetensors | torchscript (TorchScript input only)
compression = "zstd"                   # none | gzip | zstd
sparse_format = "dense"                # dense | bitmask (compressed-tensors sparse_bitmask layout)
"#;

    const BLOB: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn example() -> JobSpec {
        parse_toml(SPEC_EXAMPLE).unwrap()
    }

    fn poly(begin: i64, end: i64, frequency: i64) -> Schedule {
        Schedule::PolynomialDecay {
            initial_sparsity: 0.5,
            final_sparsity: 0.8,
            begin_step: begin,
            end_step: end,
            power: 3.0,
            frequency,
        }
    }

    /// Validates `example()` changed by `change`, which must fail with an error on `field`
    /// whose reason contains `phrase`.
    #[track_caller]
    fn assert_rejects(change: impl FnOnce(&mut JobSpec), field: &str, phrase: &str) {
        let mut spec = example();
        change(&mut spec);
        let errors = validate(&spec).expect_err("spec should be rejected").0;
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(phrase)),
            "no error on {field} containing {phrase:?}; got {errors:#?}"
        );
    }

    #[track_caller]
    fn assert_accepts(change: impl FnOnce(&mut JobSpec)) {
        let mut spec = example();
        change(&mut spec);
        if let Err(e) = validate(&spec) {
            panic!("spec should be valid, got:\n{e}");
        }
    }

    #[track_caller]
    fn parse_error(text: &str) -> FieldError {
        let mut errors = parse_toml(text).expect_err("should not parse").0;
        assert_eq!(errors.len(), 1);
        errors.remove(0)
    }

    const MINIMAL: &str = "[model]\nfile = \"m.pt\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";

    // --- the spec's own example ---------------------------------------------------------------

    #[test]
    fn spec_example_parses_and_validates() {
        let spec = example();
        assert_eq!(spec.name.as_deref(), Some("digits-mlp-80"));
        assert_eq!(spec.model.file.as_deref(), Some("model.pt"));
        assert_eq!(spec.data.as_ref().unwrap().validation_split, 0.1);
        assert_eq!((spec.training.epochs, spec.training.batch_size), (2, 128));
        assert_eq!(spec.pruning.schedule, poly(0, 844, 100));
        assert_eq!(spec.pruning.overrides[0].pattern, "^0\\.weight$");
        assert!(spec.pruning.overrides[0].skip);
        assert_eq!(spec.export.compression, "zstd");
        validate(&spec).unwrap();
    }

    #[test]
    fn json_form_parses_to_the_same_spec() {
        let spec = example();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(parse_json(&json).unwrap(), spec);
    }

    #[test]
    fn minimal_spec_takes_defaults() {
        let spec = parse_toml(MINIMAL).unwrap();
        validate(&spec).unwrap();
        assert_eq!(spec.training.epochs, 0);
        assert_eq!(spec.export.formats, ["safetensors"]);
    }

    // --- parse errors -------------------------------------------------------------------------

    #[test]
    fn unknown_key_names_key_and_table() {
        let e = parse_error(&format!("{MINIMAL}[training]\nbacth_size = 3\n"));
        assert_eq!(e.field, "training.bacth_size");
        assert!(
            e.reason.contains("unknown field `bacth_size`") && e.reason.contains("line 6"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_inside_an_override_has_its_index() {
        let text = format!("{MINIMAL}[[pruning.overrides]]\nmatch = \"a\"\n[[pruning.overrides]]\nmatch = \"b\"\nskp = true\n");
        let e = parse_error(&text);
        assert_eq!(e.field, "pruning.overrides[1].skp");
    }

    #[test]
    fn unknown_key_inside_a_schedule_names_the_schedule() {
        let text = MINIMAL.replace(
            "target_sparsity = 0.5",
            "target_sparsity = 0.5, frequncy = 3",
        );
        let e = parse_error(&text);
        assert_eq!(e.field, "pruning.schedule.frequncy");
    }

    #[test]
    fn missing_key_names_the_key() {
        let e = parse_error("[model]\nfile = \"m.pt\"\n");
        assert_eq!(e.field, "pruning");
        assert!(e.reason.contains("missing field"), "{e}");
        let text = MINIMAL.replace("kind = \"constant_sparsity\", target_sparsity = 0.5", "kind = \"polynomial_decay\", initial_sparsity = 0.1, final_sparsity = 0.5, begin_step = 0");
        assert_eq!(parse_error(&text).field, "pruning.schedule.end_step");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_error(&format!("{MINIMAL}[training]\nbatch_size = \"big\"\n"));
        assert_eq!(e.field, "training.batch_size");
        let e = parse_error("[model]\nsequential = [{ type = \"linear\", in = 2, out = 3 }, { type = \"linear\", in = \"x\", out = 3 }]\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n");
        assert!(e.field.starts_with("model.sequential[1]"), "{e}");
    }

    #[test]
    fn type_errors_speak_of_tables_not_rust_types() {
        let e = parse_error("model = 3");
        assert_eq!(e.field, "model");
        assert!(
            e.reason
                .starts_with("invalid type: integer `3`, expected a table (line 1"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_is_one_line_with_location() {
        let e = parse_error("[model\nfile = 1");
        assert_eq!(e.field, "");
        assert!(
            !e.reason.contains('\n') && e.reason.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn json_errors_carry_paths() {
        let mut value = serde_json::to_value(example()).unwrap();
        value["pruning"]["overrides"][0]["sikp"] = true.into();
        let errors = parse_json(&value.to_string()).unwrap_err().0;
        assert_eq!(errors[0].field, "pruning.overrides[0].sikp");
        let errors = parse_json("{\"model\": {}, \"pruning\": {\"schedule\": {\"kind\": \"constant_sparsity\", \"target_sparsity\": 0.5}}} x").unwrap_err().0;
        assert!(
            errors[0].reason.contains("trailing characters"),
            "{:?}",
            errors
        );
        let errors = parse_json("{\"model\": {\"file\": 3}}").unwrap_err().0;
        assert_eq!(errors[0].field, "model.file");
        assert!(errors[0].reason.contains("(line 1, column"), "{:?}", errors);
    }

    // --- validation: model --------------------------------------------------------------------

    #[test]
    fn model_needs_exactly_one_source() {
        assert_rejects(
            |s| s.model.file = None,
            "model",
            "one of model.file, model.blob, model.sequential must be set",
        );
        assert_rejects(
            |s| s.model.blob = Some(BLOB.into()),
            "model",
            "found file and blob",
        );
    }

    #[test]
    fn model_file_not_empty() {
        assert_rejects(
            |s| s.model.file = Some(String::new()),
            "model.file",
            "must not be empty",
        );
    }

    #[test]
    fn blob_ids_are_checked() {
        assert_accepts(|s| {
            s.model.file = None;
            s.model.blob = Some(BLOB.into());
        });
        let upper = BLOB.to_uppercase().replace("SHA256", "sha256");
        assert_rejects(
            |s| {
                s.model.file = None;
                s.model.blob = Some(upper);
            },
            "model.blob",
            "64 lowercase hex",
        );
        assert_rejects(
            |s| {
                s.model.file = None;
                s.model.blob = Some("sha256:abc".into());
            },
            "model.blob",
            "not a blob id",
        );
        assert_rejects(
            |s| s.data.as_mut().unwrap().file = None,
            "data",
            "one of data.file",
        );
        assert_rejects(
            |s| {
                let d = s.data.as_mut().unwrap();
                d.file = None;
                d.blob = Some("md5:x".into());
            },
            "data.blob",
            "not a blob id",
        );
    }

    #[test]
    fn weights_only_with_sequential() {
        assert_rejects(
            |s| s.model.weights = Some("w.safetensors".into()),
            "model.weights",
            "only apply to model.sequential",
        );
        assert_accepts(|s| {
            s.model.file = None;
            s.model.sequential = Some(vec![LayerSpec::Flatten]);
            s.model.weights = Some(BLOB.into());
        });
    }

    fn sequential(layers: Vec<LayerSpec>) -> impl FnOnce(&mut JobSpec) {
        move |s| {
            s.model.file = None;
            s.model.sequential = Some(layers);
        }
    }

    fn linear(in_features: i64, out_features: i64) -> LayerSpec {
        LayerSpec::Linear {
            in_features,
            out_features,
            bias: true,
        }
    }

    #[test]
    fn sequential_must_not_be_empty() {
        assert_rejects(sequential(vec![]), "model.sequential", "at least one layer");
    }

    #[test]
    fn layer_sizes_at_least_one() {
        assert_rejects(
            sequential(vec![LayerSpec::Relu, LayerSpec::Relu, linear(0, 4)]),
            "model.sequential[2].in",
            "must be >= 1 (got 0)",
        );
        assert_rejects(
            sequential(vec![linear(4, -1)]),
            "model.sequential[0].out",
            ">= 1",
        );
        let conv = LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 2,
            kernel: 0,
            stride: 0,
            padding: -1,
            bias: true,
        };
        for field in ["kernel", "stride"] {
            assert_rejects(
                sequential(vec![conv.clone()]),
                &format!("model.sequential[0].{field}"),
                ">= 1",
            );
        }
        assert_rejects(
            sequential(vec![conv]),
            "model.sequential[0].padding",
            ">= 0",
        );
        assert_rejects(
            sequential(vec![LayerSpec::Maxpool2d { kernel: 0 }]),
            "model.sequential[0].kernel",
            ">= 1",
        );
    }

    #[test]
    fn layer_weights_have_a_size_limit() {
        assert_rejects(
            sequential(vec![linear(1 << 20, 1 << 20)]),
            "model.sequential[0]",
            "more than 2147483648 elements",
        );
        assert_rejects(
            sequential(vec![linear(i64::MAX, 3)]),
            "model.sequential[0]",
            "more than",
        );
    }

    #[test]
    fn dropout_p_in_unit_interval() {
        assert_rejects(
            sequential(vec![LayerSpec::Dropout { p: 1.0 }]),
            "model.sequential[0].p",
            "[0, 1)",
        );
        assert_rejects(
            sequential(vec![LayerSpec::Dropout { p: f64::NAN }]),
            "model.sequential[0].p",
            "[0, 1)",
        );
        assert_accepts(sequential(vec![LayerSpec::Dropout { p: 0.0 }]));
    }

    #[test]
    fn reshape_entries() {
        assert_accepts(sequential(vec![LayerSpec::Reshape {
            shape: vec![-1, 1, 8, 8],
        }]));
        assert_rejects(
            sequential(vec![LayerSpec::Reshape { shape: vec![-1, 0] }]),
            "model.sequential[0].shape[1]",
            "or -1",
        );
        assert_rejects(
            sequential(vec![LayerSpec::Reshape {
                shape: vec![-1, -1],
            }]),
            "model.sequential[0].shape",
            "at most one dimension may be -1",
        );
        assert_rejects(
            sequential(vec![LayerSpec::Reshape { shape: vec![] }]),
            "model.sequential[0].shape",
            "at least one dimension",
        );
    }

    // --- validation: data ---------------------------------------------------------------------

    #[test]
    fn data_needed_only_when_training() {
        assert_rejects(
            |s| s.data = None,
            "data",
            "training.epochs > 0 needs training data",
        );
        assert_accepts(|s| {
            s.data = None;
            s.training.epochs = 0;
        });
        assert_rejects(
            |s| s.data.as_mut().unwrap().builtin = Some("digits".into()),
            "data",
            "found file and builtin",
        );
    }

    #[test]
    fn builtin_names() {
        let builtin = |name: &str| {
            let name = name.to_string();
            move |s: &mut JobSpec| {
                let d = s.data.as_mut().unwrap();
                d.file = None;
                d.builtin = Some(name);
            }
        };
        assert_accepts(builtin("digits"));
        assert_rejects(
            builtin("mnist"),
            "data.builtin",
            "`mnist` is not one of: digits, synthetic",
        );
    }

    fn synthetic(
        shape: Option<Vec<i64>>,
        classes: Option<i64>,
        samples: Option<i64>,
    ) -> impl FnOnce(&mut JobSpec) {
        move |s| {
            s.data = Some(DataSpec {
                builtin: Some("synthetic".into()),
                shape,
                classes,
                samples,
                ..DataSpec::default()
            });
        }
    }

    #[test]
    fn synthetic_needs_its_parameters() {
        assert_accepts(synthetic(Some(vec![1, 28, 28]), Some(10), Some(1000)));
        assert_rejects(
            synthetic(None, Some(10), Some(10)),
            "data.shape",
            "needs a per-sample shape",
        );
        assert_rejects(
            synthetic(Some(vec![4, 0]), Some(10), Some(10)),
            "data.shape[1]",
            ">= 1",
        );
        assert_rejects(
            synthetic(Some(vec![4]), None, Some(10)),
            "data.classes",
            "needs classes",
        );
        assert_rejects(
            synthetic(Some(vec![4]), Some(0), Some(10)),
            "data.classes",
            "between 1 and 1000000",
        );
        assert_rejects(
            synthetic(Some(vec![4]), Some(2_000_000), Some(10)),
            "data.classes",
            "between 1 and 1000000",
        );
        assert_rejects(
            synthetic(Some(vec![4]), Some(10), Some(0)),
            "data.samples",
            ">= 1",
        );
    }

    #[test]
    fn synthetic_size_limit() {
        assert_rejects(
            synthetic(Some(vec![1 << 20]), Some(10), Some(1 << 12)),
            "data.samples",
            "exceed the limit",
        );
        assert_rejects(
            synthetic(Some(vec![i64::MAX, 2]), Some(10), Some(2)),
            "data.samples",
            "exceed the limit",
        );
    }

    #[test]
    fn synthetic_parameters_only_for_synthetic() {
        assert_rejects(
            |s| s.data.as_mut().unwrap().classes = Some(3),
            "data.classes",
            "only applies to builtin = \"synthetic\"",
        );
    }

    #[test]
    fn validation_split_range() {
        assert_rejects(
            |s| s.data.as_mut().unwrap().validation_split = 1.0,
            "data.validation_split",
            "[0, 1)",
        );
        assert_rejects(
            |s| s.data.as_mut().unwrap().validation_split = f64::INFINITY,
            "data.validation_split",
            "[0, 1)",
        );
    }

    // --- validation: training -----------------------------------------------------------------

    #[test]
    fn training_ranges() {
        assert_rejects(
            |s| s.training.epochs = -1,
            "training.epochs",
            "between 0 and 100000",
        );
        assert_rejects(
            |s| s.training.epochs = 100_001,
            "training.epochs",
            "between 0 and 100000",
        );
        assert_rejects(
            |s| s.training.batch_size = 0,
            "training.batch_size",
            "between 1 and 1048576",
        );
        assert_rejects(
            |s| s.training.batch_size = (1 << 20) + 1,
            "training.batch_size",
            "between 1 and 1048576",
        );
        assert_rejects(
            |s| s.training.checkpoint_every = 0,
            "training.checkpoint_every",
            ">= 1",
        );
        assert_rejects(
            |s| s.training.threads = 257,
            "training.threads",
            "between 0 and 256",
        );
        assert_rejects(
            |s| s.training.threads = -1,
            "training.threads",
            "between 0 and 256",
        );
    }

    #[test]
    fn training_names() {
        assert_rejects(
            |s| s.training.optimizer = "rmsprop".into(),
            "training.optimizer",
            "`rmsprop` is not one of: sgd, adam, adamw",
        );
        assert_rejects(
            |s| s.training.loss = "hinge".into(),
            "training.loss",
            "cross_entropy, mse",
        );
    }

    #[test]
    fn training_numbers() {
        assert_rejects(
            |s| s.training.learning_rate = 0.0,
            "training.learning_rate",
            "finite number > 0",
        );
        assert_rejects(
            |s| s.training.learning_rate = f64::NAN,
            "training.learning_rate",
            "finite number > 0",
        );
        assert_rejects(|s| s.training.momentum = 1.0, "training.momentum", "[0, 1)");
        assert_rejects(
            |s| s.training.weight_decay = -0.1,
            "training.weight_decay",
            "finite number >= 0",
        );
        assert_rejects(
            |s| s.training.weight_decay = f64::INFINITY,
            "training.weight_decay",
            "finite number >= 0",
        );
    }

    #[test]
    fn devices() {
        for ok in ["cpu", "cuda", "cuda:0", "cuda:12", "auto"] {
            assert!(is_device(ok), "{ok}");
        }
        for bad in [
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda:x",
            "cuda:99999999",
            "CPU",
        ] {
            assert!(!is_device(bad), "{bad}");
        }
        assert_rejects(
            |s| s.training.device = "gpu".into(),
            "training.device",
            "expected cpu, cuda, cuda:N",
        );
    }

    // --- validation: pruning ------------------------------------------------------------------

    #[test]
    fn schedule_errors_keep_tfmot_messages() {
        assert_rejects(
            |s| s.pruning.schedule = poly(0, -1, 100),
            "pruning.schedule.end_step",
            "end_step cannot be -1.",
        );
        assert_rejects(
            |s| s.pruning.schedule = poly(-5, 10, 100),
            "pruning.schedule.begin_step",
            "begin_step should be >= 0",
        );
        assert_rejects(
            |s| s.pruning.schedule = poly(0, 10, 0),
            "pruning.schedule.frequency",
            "frequency should be > 0",
        );
        assert_rejects(
            |s| {
                s.pruning.schedule = Schedule::ConstantSparsity {
                    target_sparsity: 1.0,
                    begin_step: 0,
                    end_step: -1,
                    frequency: 1,
                }
            },
            "pruning.schedule.target_sparsity",
            "target_sparsity must be in range [0,1)",
        );
    }

    #[test]
    fn power_must_not_be_negative() {
        for power in [-0.5, -2.0] {
            assert_rejects(
                |s| {
                    s.pruning.schedule = Schedule::PolynomialDecay {
                        initial_sparsity: 0.2,
                        final_sparsity: 0.8,
                        begin_step: 0,
                        end_step: 10,
                        power,
                        frequency: 1,
                    }
                },
                "pruning.schedule.power",
                "must be a number >= 0",
            );
        }
    }

    #[test]
    fn block_size_entries() {
        assert_rejects(
            |s| s.pruning.block_size = [1, 0],
            "pruning.block_size[1]",
            ">= 1",
        );
        assert_accepts(|s| s.pruning.block_size = [1, 4]);
    }

    #[test]
    fn block_pooling_names() {
        assert_rejects(
            |s| s.pruning.block_pooling = "mean".into(),
            "pruning.block_pooling",
            "avg, max",
        );
    }

    #[test]
    fn m_by_n_rules() {
        assert_accepts(|s| s.pruning.m_by_n = Some([2, 4]));
        assert_accepts(|s| s.pruning.m_by_n = Some([0, 1]));
        assert_rejects(
            |s| s.pruning.m_by_n = Some([4, 4]),
            "pruning.m_by_n",
            "m >= n is rejected",
        );
        assert_rejects(
            |s| s.pruning.m_by_n = Some([-1, 4]),
            "pruning.m_by_n",
            "0 <= m < n",
        );
        assert_rejects(
            |s| s.pruning.m_by_n = Some([0, 0]),
            "pruning.m_by_n",
            "n (the group size) must be >= 1",
        );
        assert_rejects(
            |s| {
                s.pruning.m_by_n = Some([2, 4]);
                s.pruning.block_size = [2, 2];
            },
            "pruning.m_by_n",
            "cannot be combined with block_size [2, 2]",
        );
    }

    #[test]
    fn scope_rules() {
        assert_rejects(
            |s| s.pruning.scope = "model".into(),
            "pruning.scope",
            "layer, global",
        );
        assert_accepts(|s| s.pruning.scope = "global".into());
        assert_rejects(
            |s| {
                s.pruning.scope = "global".into();
                s.pruning.block_size = [1, 2];
            },
            "pruning.scope",
            "element-wise only: block_size must be [1, 1]",
        );
        assert_rejects(
            |s| {
                s.pruning.scope = "global".into();
                s.pruning.m_by_n = Some([2, 4]);
            },
            "pruning.scope",
            "cannot be combined with m_by_n",
        );
    }

    #[test]
    fn regexes_must_compile() {
        assert_rejects(
            |s| s.pruning.include = vec!["ok".into(), "(".into()],
            "pruning.include[1]",
            "unclosed group",
        );
        assert_rejects(
            |s| s.pruning.exclude = vec!["[z-a]".into()],
            "pruning.exclude[0]",
            "regex parse error",
        );
        let mut spec = example();
        spec.pruning.include = vec!["(".into()];
        let reason = &validate(&spec).unwrap_err().0[0].reason;
        assert_eq!(reason, "regex parse error: unclosed group");
    }

    fn with_override(o: OverrideSpec) -> impl FnOnce(&mut JobSpec) {
        move |s| s.pruning.overrides.push(o)
    }

    fn override_on(pattern: &str) -> OverrideSpec {
        OverrideSpec {
            pattern: pattern.into(),
            ..OverrideSpec::default()
        }
    }

    #[test]
    fn override_match_must_compile() {
        assert_rejects(
            with_override(override_on("a(")),
            "pruning.overrides[1].match",
            "unclosed group",
        );
    }

    #[test]
    fn override_skip_excludes_settings() {
        let o = OverrideSpec {
            skip: true,
            block_size: Some([2, 2]),
            m_by_n: Some([2, 4]),
            ..override_on("x")
        };
        assert_rejects(
            with_override(o),
            "pruning.overrides[1].skip",
            "block_size, m_by_n would be ignored",
        );
    }

    #[test]
    fn override_settings_are_validated() {
        let o = OverrideSpec {
            schedule: Some(poly(10, 5, 1)),
            ..override_on("x")
        };
        assert_rejects(
            with_override(o),
            "pruning.overrides[1].schedule.end_step",
            "begin_step should be <= end_step",
        );
        let o = OverrideSpec {
            block_size: Some([0, 1]),
            ..override_on("x")
        };
        assert_rejects(
            with_override(o),
            "pruning.overrides[1].block_size[0]",
            ">= 1",
        );
        let o = OverrideSpec {
            block_pooling: Some("sum".into()),
            ..override_on("x")
        };
        assert_rejects(
            with_override(o),
            "pruning.overrides[1].block_pooling",
            "avg, max",
        );
        let o = OverrideSpec {
            m_by_n: Some([5, 4]),
            ..override_on("x")
        };
        assert_rejects(with_override(o), "pruning.overrides[1].m_by_n", "m >= n");
        let o = OverrideSpec {
            m_by_n: Some([2, 4]),
            block_size: Some([1, 2]),
            ..override_on("x")
        };
        assert_rejects(
            with_override(o),
            "pruning.overrides[1].m_by_n",
            "cannot be combined with block_size",
        );
        let o = OverrideSpec {
            block_size: Some([2, 2]),
            ..override_on("x")
        };
        assert_rejects(
            |s| {
                s.pruning.scope = "global".into();
                with_override(o)(s);
            },
            "pruning.overrides[1]",
            "global scope is element-wise only",
        );
    }

    // --- validation: export and name ----------------------------------------------------------

    #[test]
    fn export_formats() {
        assert_rejects(
            |s| s.export.formats.clear(),
            "export.formats",
            "at least one of: safetensors, torchscript",
        );
        assert_rejects(
            |s| s.export.formats = vec!["onnx".into()],
            "export.formats[0]",
            "`onnx` is not one of",
        );
        assert_rejects(
            |s| s.export.formats = vec!["safetensors".into(), "safetensors".into()],
            "export.formats[1]",
            "listed twice",
        );
    }

    #[test]
    fn torchscript_export_needs_torchscript_input() {
        let torchscript =
            |s: &mut JobSpec| s.export.formats = vec!["safetensors".into(), "torchscript".into()];
        assert_accepts(torchscript);
        assert_accepts(|s| {
            torchscript(s);
            s.model.file = Some("model.bin".into());
        });
        assert_accepts(|s| {
            torchscript(s);
            s.model.file = None;
            s.model.blob = Some(BLOB.into());
        });
        assert_rejects(
            |s| {
                torchscript(s);
                s.model.file = Some("model.safetensors".into());
            },
            "export.formats",
            "safetensors state dict",
        );
        assert_rejects(
            |s| {
                torchscript(s);
                sequential(vec![LayerSpec::Flatten])(s);
            },
            "export.formats",
            "needs a TorchScript model",
        );
    }

    #[test]
    fn export_names() {
        assert_rejects(
            |s| s.export.compression = "lz4".into(),
            "export.compression",
            "expected one of none, gzip, zstd",
        );
        assert_rejects(
            |s| s.export.sparse_format = "csr".into(),
            "export.sparse_format",
            "dense, bitmask",
        );
        assert_accepts(|s| {
            s.export.compression = "none".into();
            s.export.sparse_format = "bitmask".into();
        });
    }

    #[test]
    fn name_length() {
        assert_accepts(|s| s.name = Some("é".repeat(256)));
        assert_rejects(
            |s| s.name = Some("x".repeat(257)),
            "name",
            "at most 256 characters (got 257)",
        );
    }

    // --- collection and display ---------------------------------------------------------------

    #[test]
    fn collects_every_error() {
        let mut spec = example();
        spec.training.batch_size = 0;
        spec.training.optimizer = "x".into();
        spec.pruning.schedule = poly(0, -1, 0);
        spec.export.compression = "x".into();
        let errors = validate(&spec).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "training.batch_size",
                "training.optimizer",
                "pruning.schedule.end_step",
                "pruning.schedule.frequency",
                "export.compression"
            ]
        );
        let text = errors.to_string();
        assert_eq!(text.lines().count(), 5);
        assert!(
            text.starts_with("training.batch_size: must be between 1 and"),
            "{text}"
        );
    }

    #[test]
    fn single_error_displays_on_one_line() {
        let errors = SpecErrors(vec![FieldError::new("model", "bad")]);
        assert_eq!(errors.to_string(), "model: bad");
    }

    // --- warnings and steps -------------------------------------------------------------------

    #[test]
    fn warns_about_schedules_with_their_field() {
        let mut spec = example();
        spec.pruning.schedule = poly(0, 250, 100);
        spec.pruning.overrides.push(OverrideSpec {
            schedule: Some(Schedule::ConstantSparsity {
                target_sparsity: 0.5,
                begin_step: 5000,
                end_step: -1,
                frequency: 100,
            }),
            ..override_on("x")
        });
        let w = warnings(&spec, Some(1000));
        assert!(
            w.iter()
                .any(|w| w.starts_with("pruning.schedule: ") && w.contains("never applied")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.starts_with("pruning.overrides[1].schedule: ")
                    && w.contains("pruning would do nothing")),
            "{w:?}"
        );
    }

    #[test]
    fn unknown_step_count_skips_step_warnings() {
        let mut spec = example();
        spec.pruning.schedule = Schedule::ConstantSparsity {
            target_sparsity: 0.5,
            begin_step: 5000,
            end_step: -1,
            frequency: 100,
        };
        assert!(warnings(&spec, None).is_empty());
        assert!(!warnings(&spec, Some(10)).is_empty());
    }

    #[test]
    fn one_shot_and_m_by_n_get_no_schedule_warnings() {
        let mut spec = example();
        spec.pruning.schedule = poly(0, 250, 100);
        spec.training.epochs = 0;
        assert!(warnings(&spec, Some(0)).is_empty());
        spec.training.epochs = 1;
        spec.pruning.m_by_n = Some([2, 4]);
        assert!(warnings(&spec, Some(10)).is_empty());
    }

    #[test]
    fn warns_about_overrides_that_set_nothing() {
        let w = warnings(
            &{
                let mut s = example();
                s.pruning.overrides.push(override_on("fc"));
                s
            },
            Some(10_000),
        );
        let overrides: Vec<&String> = w
            .iter()
            .filter(|w| w.starts_with("pruning.overrides"))
            .collect();
        assert_eq!(overrides.len(), 1, "{w:?}");
        assert!(
            overrides[0].starts_with("pruning.overrides[1]: sets nothing"),
            "{w:?}"
        );
    }

    #[test]
    fn steps_per_epoch_counts_the_partial_batch() {
        assert_eq!(steps_per_epoch(1617, 32), 51);
        assert_eq!(steps_per_epoch(1600, 32), 50);
        assert_eq!(steps_per_epoch(1, 128), 1);
        assert_eq!(steps_per_epoch(0, 32), 0);
        assert_eq!(steps_per_epoch(10, 0), 0);
        assert_eq!(steps_per_epoch(i64::MAX, 2), i64::MAX / 2 + 1);
    }
}
