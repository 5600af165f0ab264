//! The gRPC `JobSpec` <-> `prune_core::JobSpec` (the TOML job file).
//!
//! Unset proto fields (`optional` scalars, empty repeated fields, absent messages) take the
//! TOML file's defaults, so a minimal spec from any gRPC client means what the same minimal
//! TOML file means. What serde would reject in TOML (a missing required key, a key that does
//! not belong to a layer type or schedule kind) is rejected here with the same field path.
//! Range and consistency rules are `prune_core::validate`'s job, not this module's.

use prune_core::schedule::Schedule;
use prune_core::spec::{
    BudgetSpec, CalibrationSpec, DataSpec, EvaluationSpec, ExportSpec, JobSpec, LayerSpec, ModelSpec, OverrideSpec,
    ProjectionSpec, PruningSpec, SensitivitySpec, SparseGptSpec, TrainingSpec,
};
use prune_core::validate::{FieldError, SpecErrors};
use prune_proto as pb;

const LAYER_TYPES: &[&str] = &[
    "linear",
    "conv2d",
    "relu",
    "tanh",
    "sigmoid",
    "maxpool2d",
    "flatten",
    "dropout",
    "reshape",
    "batchnorm1d",
    "batchnorm2d",
    "avgpool2d",
    "global_avgpool",
    "residual",
];
const SCHEDULE_KINDS: &[&str] = &["polynomial_decay", "constant_sparsity"];

/// Converts a gRPC spec, reporting every structural problem at once.
pub fn spec_from_proto(p: pb::JobSpec) -> Result<JobSpec, SpecErrors> {
    let mut errors = Vec::new();
    let model = p.model.map(|m| model_from_proto(m, &mut errors)).unwrap_or_default();
    let pruning = match p.pruning {
        Some(pruning) => pruning_from_proto(pruning, &mut errors),
        None => {
            errors.push(FieldError::new("pruning", "required"));
            PruningSpec::default()
        }
    };
    let spec = JobSpec {
        name: p.name,
        model,
        data: p.data.map(data_from_proto),
        training: p.training.map(training_from_proto).unwrap_or_default(),
        pruning,
        export: p.export.map(export_from_proto).unwrap_or_default(),
        sensitivity: p.sensitivity.map(sensitivity_from_proto),
        calibration: p.calibration.map(calibration_from_proto),
        evaluation: p.evaluation.map(|e| EvaluationSpec {
            text: e.text,
            seq_len: e.seq_len,
            max_windows: e.max_windows,
        }),
    };
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(SpecErrors(errors))
    }
}

fn model_from_proto(m: pb::ModelSpec, errors: &mut Vec<FieldError>) -> ModelSpec {
    let sequential = (!m.sequential.is_empty()).then(|| {
        m.sequential
            .into_iter()
            .enumerate()
            .filter_map(|(i, layer)| layer_from_proto(layer, &format!("model.sequential[{i}]"), errors))
            .collect()
    });
    // An empty map is "unset", like the other repeated fields.
    let shards = (!m.shards.is_empty()).then(|| m.shards.into_iter().collect());
    let files = (!m.files.is_empty()).then(|| m.files.into_iter().collect());
    ModelSpec { file: m.file, blob: m.blob, sequential, weights: m.weights, dir: m.dir, index: m.index, shards, files }
}

/// Checks which of a message's optional fields are set against what its kind allows.
struct Fields<'a> {
    at: &'a str,
    kind: &'a str,
    errors: &'a mut Vec<FieldError>,
}

impl Fields<'_> {
    fn required<T: Copy>(&mut self, name: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.errors.push(FieldError::new(format!("{}.{name}", self.at), format!("required for {}", self.kind)));
        }
        value
    }

    /// `set` lists (name, is set) of the fields the kind does not have.
    fn absent(&mut self, set: &[(&str, bool)]) {
        for (name, _) in set.iter().filter(|(_, on)| *on) {
            self.errors.push(FieldError::new(format!("{}.{name}", self.at), format!("not a field of {}", self.kind)));
        }
    }
}

fn layer_from_proto(l: pb::LayerSpec, at: &str, errors: &mut Vec<FieldError>) -> Option<LayerSpec> {
    let kind = l.r#type.as_str();
    if !LAYER_TYPES.contains(&kind) {
        errors
            .push(FieldError::new(format!("{at}.type"), format!("`{kind}` is not one of: {}", LAYER_TYPES.join(", "))));
        return None;
    }
    let mut f = Fields { at, kind, errors };
    let all = [
        ("in", l.r#in.is_some()),
        ("out", l.out.is_some()),
        ("kernel", l.kernel.is_some()),
        ("stride", l.stride.is_some()),
        ("padding", l.padding.is_some()),
        ("bias", l.bias.is_some()),
        ("p", l.p.is_some()),
        ("shape", !l.shape.is_empty()),
        ("features", l.features.is_some()),
        ("layers", !l.layers.is_empty()),
        ("projection", l.projection.is_some()),
    ];
    let others =
        |own: &[&str]| -> Vec<(&str, bool)> { all.iter().copied().filter(|(n, _)| !own.contains(n)).collect() };
    let layer = match kind {
        "linear" => {
            f.absent(&others(&["in", "out", "bias"]));
            let (i, o) = (f.required("in", l.r#in), f.required("out", l.out));
            LayerSpec::Linear { in_features: i?, out_features: o?, bias: l.bias.unwrap_or(true) }
        }
        "conv2d" => {
            f.absent(&others(&["in", "out", "kernel", "stride", "padding", "bias"]));
            let (i, o, k) = (f.required("in", l.r#in), f.required("out", l.out), f.required("kernel", l.kernel));
            LayerSpec::Conv2d {
                in_channels: i?,
                out_channels: o?,
                kernel: k?,
                stride: l.stride.unwrap_or(1),
                padding: l.padding.unwrap_or(0),
                bias: l.bias.unwrap_or(true),
            }
        }
        "maxpool2d" => {
            f.absent(&others(&["kernel"]));
            LayerSpec::Maxpool2d { kernel: f.required("kernel", l.kernel)? }
        }
        "dropout" => {
            f.absent(&others(&["p"]));
            LayerSpec::Dropout { p: f.required("p", l.p)? }
        }
        "reshape" => {
            f.absent(&others(&["shape"]));
            if l.shape.is_empty() {
                f.errors.push(FieldError::new(format!("{at}.shape"), "required for reshape"));
                return None;
            }
            LayerSpec::Reshape { shape: l.shape }
        }
        "batchnorm1d" | "batchnorm2d" => {
            f.absent(&others(&["features"]));
            let features = f.required("features", l.features)?;
            if kind == "batchnorm1d" {
                LayerSpec::Batchnorm1d { features }
            } else {
                LayerSpec::Batchnorm2d { features }
            }
        }
        "avgpool2d" => {
            f.absent(&others(&["kernel", "stride"]));
            LayerSpec::Avgpool2d { kernel: f.required("kernel", l.kernel)?, stride: l.stride }
        }
        "residual" => {
            f.absent(&others(&["layers", "projection"]));
            if l.layers.is_empty() {
                f.errors.push(FieldError::new(format!("{at}.layers"), "required for residual"));
                return None;
            }
            let projection = match l.projection {
                Some(p) => Some(projection_from_proto(p, &format!("{at}.projection"), f.errors)?),
                None => None,
            };
            let mut complete = true;
            let mut layers = Vec::with_capacity(l.layers.len());
            for (j, inner) in l.layers.into_iter().enumerate() {
                match layer_from_proto(inner, &format!("{at}.layers[{j}]"), f.errors) {
                    Some(layer) => layers.push(layer),
                    None => complete = false,
                }
            }
            if !complete {
                return None;
            }
            LayerSpec::Residual { layers, projection }
        }
        "global_avgpool" => {
            f.absent(&others(&[]));
            LayerSpec::GlobalAvgpool
        }
        simple => {
            f.absent(&others(&[]));
            match simple {
                "relu" => LayerSpec::Relu,
                "tanh" => LayerSpec::Tanh,
                "sigmoid" => LayerSpec::Sigmoid,
                _ => LayerSpec::Flatten,
            }
        }
    };
    Some(layer)
}

fn projection_from_proto(p: pb::Projection, at: &str, errors: &mut Vec<FieldError>) -> Option<ProjectionSpec> {
    let mut f = Fields { at, kind: "projection", errors };
    let (i, o) = (f.required("in", p.r#in), f.required("out", p.out));
    Some(ProjectionSpec {
        in_channels: i?,
        out_channels: o?,
        stride: p.stride.unwrap_or(1),
        bias: p.bias.unwrap_or(true),
    })
}

fn data_from_proto(d: pb::DataSpec) -> DataSpec {
    DataSpec {
        file: d.file,
        blob: d.blob,
        builtin: d.builtin,
        shape: (!d.shape.is_empty()).then_some(d.shape),
        classes: d.classes,
        samples: d.samples,
        validation_split: d.validation_split.unwrap_or(0.0),
    }
}

fn training_from_proto(t: pb::TrainingSpec) -> TrainingSpec {
    let d = TrainingSpec::default();
    TrainingSpec {
        epochs: t.epochs.unwrap_or(d.epochs),
        batch_size: t.batch_size.unwrap_or(d.batch_size),
        optimizer: t.optimizer.unwrap_or(d.optimizer),
        learning_rate: t.learning_rate.unwrap_or(d.learning_rate),
        momentum: t.momentum.unwrap_or(d.momentum),
        weight_decay: t.weight_decay.unwrap_or(d.weight_decay),
        loss: t.loss.unwrap_or(d.loss),
        seed: t.seed.unwrap_or(d.seed),
        device: t.device.unwrap_or(d.device),
        checkpoint_every: t.checkpoint_every.unwrap_or(d.checkpoint_every),
        threads: t.threads.unwrap_or(d.threads),
        max_runtime_secs: t.max_runtime_secs.unwrap_or(d.max_runtime_secs),
        max_attempts: t.max_attempts.unwrap_or(d.max_attempts),
    }
}

fn pruning_from_proto(p: pb::PruningSpec, errors: &mut Vec<FieldError>) -> PruningSpec {
    let d = PruningSpec::default();
    let schedule = match p.schedule {
        Some(s) => schedule_from_proto(s, "pruning.schedule", errors),
        None => {
            errors.push(FieldError::new("pruning.schedule", "required"));
            None
        }
    };
    let overrides = p
        .overrides
        .into_iter()
        .enumerate()
        .map(|(i, o)| override_from_proto(o, &format!("pruning.overrides[{i}]"), errors))
        .collect();
    PruningSpec {
        schedule: schedule.unwrap_or(d.schedule),
        block_size: pair(p.block_size, "pruning.block_size", errors).unwrap_or(d.block_size),
        block_pooling: p.block_pooling.unwrap_or(d.block_pooling),
        m_by_n: pair(p.m_by_n, "pruning.m_by_n", errors),
        scope: p.scope.unwrap_or(d.scope),
        include: p.include,
        exclude: p.exclude,
        prune_bias: p.prune_bias.unwrap_or(d.prune_bias),
        overrides,
        structure: p.structure.unwrap_or(d.structure),
        channel_score: p.channel_score.unwrap_or(d.channel_score),
        budget: p.budget.map(|b| BudgetSpec { max_bytes: b.max_bytes, max_accuracy_drop: b.max_accuracy_drop }),
        method: p.method.unwrap_or(d.method),
        sparsegpt: p.sparsegpt.map(|g| {
            let d = SparseGptSpec::default();
            SparseGptSpec {
                block_size: g.block_size.unwrap_or(d.block_size),
                dampening: g.dampening.unwrap_or(d.dampening),
            }
        }),
    }
}

fn calibration_from_proto(c: pb::CalibrationSpec) -> CalibrationSpec {
    let d = CalibrationSpec::default();
    CalibrationSpec {
        text: c.text,
        tokens: c.tokens,
        samples: c.samples.unwrap_or(d.samples),
        seq_len: c.seq_len.unwrap_or(d.seq_len),
        seed: c.seed.unwrap_or(d.seed),
    }
}

fn sensitivity_from_proto(s: pb::SensitivitySpec) -> SensitivitySpec {
    let d = SensitivitySpec::default();
    SensitivitySpec {
        levels: if s.levels.is_empty() { d.levels } else { s.levels },
        include: s.include,
        exclude: s.exclude,
        target_accuracy_drop: s.target_accuracy_drop.unwrap_or(d.target_accuracy_drop),
    }
}

fn override_from_proto(o: pb::OverrideSpec, at: &str, errors: &mut Vec<FieldError>) -> OverrideSpec {
    OverrideSpec {
        schedule: o.schedule.and_then(|s| schedule_from_proto(s, &format!("{at}.schedule"), errors)),
        block_size: pair(o.block_size, &format!("{at}.block_size"), errors),
        m_by_n: pair(o.m_by_n, &format!("{at}.m_by_n"), errors),
        pattern: o.r#match,
        skip: o.skip.unwrap_or(false),
        block_pooling: o.block_pooling,
    }
}

/// A two-value array (`[rows, cols]`, `[m, n]`); empty is unset.
fn pair(values: Vec<i64>, at: &str, errors: &mut Vec<FieldError>) -> Option<[i64; 2]> {
    match values[..] {
        [] => None,
        [a, b] => Some([a, b]),
        _ => {
            errors.push(FieldError::new(at, format!("must have exactly 2 values (got {})", values.len())));
            None
        }
    }
}

fn schedule_from_proto(s: pb::Schedule, at: &str, errors: &mut Vec<FieldError>) -> Option<Schedule> {
    let kind = s.kind.as_str();
    let mut f = Fields { at, kind, errors };
    match kind {
        "polynomial_decay" => {
            f.absent(&[("target_sparsity", s.target_sparsity.is_some())]);
            let initial = f.required("initial_sparsity", s.initial_sparsity);
            let final_ = f.required("final_sparsity", s.final_sparsity);
            let begin = f.required("begin_step", s.begin_step);
            let end = f.required("end_step", s.end_step);
            Some(Schedule::PolynomialDecay {
                initial_sparsity: initial?,
                final_sparsity: final_?,
                begin_step: begin?,
                end_step: end?,
                power: s.power.unwrap_or(3.0),
                frequency: s.frequency.unwrap_or(100),
            })
        }
        "constant_sparsity" => {
            f.absent(&[
                ("initial_sparsity", s.initial_sparsity.is_some()),
                ("final_sparsity", s.final_sparsity.is_some()),
                ("power", s.power.is_some()),
            ]);
            Some(Schedule::ConstantSparsity {
                target_sparsity: f.required("target_sparsity", s.target_sparsity)?,
                begin_step: s.begin_step.unwrap_or(0),
                end_step: s.end_step.unwrap_or(-1),
                frequency: s.frequency.unwrap_or(100),
            })
        }
        _ => {
            f.errors.push(FieldError::new(
                format!("{at}.kind"),
                format!("`{kind}` is not one of: {}", SCHEDULE_KINDS.join(", ")),
            ));
            None
        }
    }
}

fn export_from_proto(e: pb::ExportSpec) -> ExportSpec {
    let d = ExportSpec::default();
    ExportSpec {
        formats: if e.formats.is_empty() { d.formats } else { e.formats },
        compression: e.compression.unwrap_or(d.compression),
        sparse_format: e.sparse_format.unwrap_or(d.sparse_format),
        level: e.level,
        slim: e.slim.unwrap_or(d.slim),
    }
}

// ---------------------------------------------------------------------------------------------
// core -> proto: the spec echo, with every default spelled out.

pub fn spec_to_proto(s: &JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        name: s.name.clone(),
        model: Some(pb::ModelSpec {
            file: s.model.file.clone(),
            blob: s.model.blob.clone(),
            sequential: s.model.sequential.iter().flatten().map(layer_to_proto).collect(),
            weights: s.model.weights.clone(),
            dir: s.model.dir.clone(),
            index: s.model.index.clone(),
            shards: s.model.shards.clone().unwrap_or_default().into_iter().collect(),
            files: s.model.files.clone().unwrap_or_default().into_iter().collect(),
        }),
        data: s.data.as_ref().map(|d| pb::DataSpec {
            file: d.file.clone(),
            blob: d.blob.clone(),
            builtin: d.builtin.clone(),
            shape: d.shape.clone().unwrap_or_default(),
            classes: d.classes,
            samples: d.samples,
            validation_split: Some(d.validation_split),
        }),
        training: Some(training_to_proto(&s.training)),
        pruning: Some(pb::PruningSpec {
            schedule: Some(schedule_to_proto(&s.pruning.schedule)),
            block_size: s.pruning.block_size.to_vec(),
            block_pooling: Some(s.pruning.block_pooling.clone()),
            m_by_n: s.pruning.m_by_n.map(|v| v.to_vec()).unwrap_or_default(),
            scope: Some(s.pruning.scope.clone()),
            include: s.pruning.include.clone(),
            exclude: s.pruning.exclude.clone(),
            prune_bias: Some(s.pruning.prune_bias),
            overrides: s.pruning.overrides.iter().map(override_to_proto).collect(),
            structure: Some(s.pruning.structure.clone()),
            channel_score: Some(s.pruning.channel_score.clone()),
            budget: s
                .pruning
                .budget
                .as_ref()
                .map(|b| pb::BudgetSpec { max_bytes: b.max_bytes, max_accuracy_drop: b.max_accuracy_drop }),
            method: Some(s.pruning.method.clone()),
            sparsegpt: s
                .pruning
                .sparsegpt
                .map(|g| pb::SparseGptSpec { block_size: Some(g.block_size), dampening: Some(g.dampening) }),
        }),
        export: Some(pb::ExportSpec {
            formats: s.export.formats.clone(),
            compression: Some(s.export.compression.clone()),
            sparse_format: Some(s.export.sparse_format.clone()),
            level: s.export.level,
            slim: Some(s.export.slim),
        }),
        sensitivity: s.sensitivity.as_ref().map(|x| pb::SensitivitySpec {
            levels: x.levels.clone(),
            include: x.include.clone(),
            exclude: x.exclude.clone(),
            target_accuracy_drop: Some(x.target_accuracy_drop),
        }),
        calibration: s.calibration.as_ref().map(|c| pb::CalibrationSpec {
            text: c.text.clone(),
            tokens: c.tokens.clone(),
            samples: Some(c.samples),
            seq_len: Some(c.seq_len),
            seed: Some(c.seed),
        }),
        // `seq_len` stays unset when it was: its default depends on `[calibration]`.
        evaluation: s.evaluation.as_ref().map(|e| pb::EvaluationSpec {
            text: e.text.clone(),
            seq_len: e.seq_len,
            max_windows: e.max_windows,
        }),
    }
}

fn layer_to_proto(l: &LayerSpec) -> pb::LayerSpec {
    let of = |kind: &str| pb::LayerSpec { r#type: kind.to_string(), ..Default::default() };
    match *l {
        LayerSpec::Linear { in_features, out_features, bias } => {
            pb::LayerSpec { r#in: Some(in_features), out: Some(out_features), bias: Some(bias), ..of("linear") }
        }
        LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, bias } => pb::LayerSpec {
            r#in: Some(in_channels),
            out: Some(out_channels),
            kernel: Some(kernel),
            stride: Some(stride),
            padding: Some(padding),
            bias: Some(bias),
            ..of("conv2d")
        },
        LayerSpec::Relu => of("relu"),
        LayerSpec::Tanh => of("tanh"),
        LayerSpec::Sigmoid => of("sigmoid"),
        LayerSpec::Maxpool2d { kernel } => pb::LayerSpec { kernel: Some(kernel), ..of("maxpool2d") },
        LayerSpec::Flatten => of("flatten"),
        LayerSpec::Dropout { p } => pb::LayerSpec { p: Some(p), ..of("dropout") },
        LayerSpec::Reshape { ref shape } => pb::LayerSpec { shape: shape.clone(), ..of("reshape") },
        LayerSpec::Batchnorm1d { features } => pb::LayerSpec { features: Some(features), ..of("batchnorm1d") },
        LayerSpec::Batchnorm2d { features } => pb::LayerSpec { features: Some(features), ..of("batchnorm2d") },
        LayerSpec::Avgpool2d { kernel, stride } => pb::LayerSpec { kernel: Some(kernel), stride, ..of("avgpool2d") },
        LayerSpec::GlobalAvgpool => of("global_avgpool"),
        LayerSpec::Residual { ref layers, ref projection } => pb::LayerSpec {
            layers: layers.iter().map(layer_to_proto).collect(),
            projection: projection.as_ref().map(|p| pb::Projection {
                r#in: Some(p.in_channels),
                out: Some(p.out_channels),
                stride: Some(p.stride),
                bias: Some(p.bias),
            }),
            ..of("residual")
        },
    }
}

fn training_to_proto(t: &TrainingSpec) -> pb::TrainingSpec {
    pb::TrainingSpec {
        epochs: Some(t.epochs),
        batch_size: Some(t.batch_size),
        optimizer: Some(t.optimizer.clone()),
        learning_rate: Some(t.learning_rate),
        momentum: Some(t.momentum),
        weight_decay: Some(t.weight_decay),
        loss: Some(t.loss.clone()),
        seed: Some(t.seed),
        device: Some(t.device.clone()),
        checkpoint_every: Some(t.checkpoint_every),
        threads: Some(t.threads),
        max_runtime_secs: Some(t.max_runtime_secs),
        max_attempts: Some(t.max_attempts),
    }
}

fn schedule_to_proto(s: &Schedule) -> pb::Schedule {
    match *s {
        Schedule::PolynomialDecay { initial_sparsity, final_sparsity, begin_step, end_step, power, frequency } => {
            pb::Schedule {
                kind: "polynomial_decay".into(),
                initial_sparsity: Some(initial_sparsity),
                final_sparsity: Some(final_sparsity),
                begin_step: Some(begin_step),
                end_step: Some(end_step),
                power: Some(power),
                frequency: Some(frequency),
                ..Default::default()
            }
        }
        Schedule::ConstantSparsity { target_sparsity, begin_step, end_step, frequency } => pb::Schedule {
            kind: "constant_sparsity".into(),
            target_sparsity: Some(target_sparsity),
            begin_step: Some(begin_step),
            end_step: Some(end_step),
            frequency: Some(frequency),
            ..Default::default()
        },
    }
}

fn override_to_proto(o: &OverrideSpec) -> pb::OverrideSpec {
    pb::OverrideSpec {
        r#match: o.pattern.clone(),
        skip: Some(o.skip),
        schedule: o.schedule.as_ref().map(schedule_to_proto),
        block_size: o.block_size.map(|v| v.to_vec()).unwrap_or_default(),
        block_pooling: o.block_pooling.clone(),
        m_by_n: o.m_by_n.map(|v| v.to_vec()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errors: SpecErrors) -> Vec<String> {
        errors.0.into_iter().map(|e| e.field).collect()
    }

    fn minimal() -> pb::JobSpec {
        pb::JobSpec {
            model: Some(pb::ModelSpec { blob: Some("sha256:ab".into()), ..Default::default() }),
            pruning: Some(pb::PruningSpec {
                schedule: Some(pb::Schedule {
                    kind: "constant_sparsity".into(),
                    target_sparsity: Some(0.5),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn minimal_spec_gets_the_toml_defaults() {
        let from_proto = spec_from_proto(minimal()).unwrap();
        let from_toml = prune_core::validate::parse_toml(
            "[model]\nblob = \"sha256:ab\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n",
        )
        .unwrap();
        assert_eq!(from_proto, from_toml);
        assert_eq!(from_proto.training.batch_size, 32);
        assert_eq!(from_proto.pruning.schedule.end_step(), -1);
        assert_eq!(from_proto.pruning.schedule.frequency(), 100);
    }

    #[test]
    fn full_spec_round_trips() {
        let toml = r#"
name = "round trip"
[model]
sequential = [
  { type = "reshape", shape = [1, 8, 8] },
  { type = "conv2d", in = 1, out = 4, kernel = 3, padding = 1 },
  { type = "batchnorm2d", features = 4 },
  { type = "residual", layers = [{ type = "conv2d", in = 4, out = 4, kernel = 3, padding = 1 }] },
  { type = "residual", layers = [{ type = "avgpool2d", kernel = 1 }], projection = { in = 4, out = 4, bias = false } },
  { type = "avgpool2d", kernel = 1, stride = 1 },
  { type = "maxpool2d", kernel = 2 }, { type = "flatten" }, { type = "dropout", p = 0.1 },
  { type = "batchnorm1d", features = 64 },
  { type = "linear", in = 64, out = 10, bias = false }, { type = "tanh" }, { type = "sigmoid" }, { type = "relu" },
]
weights = "sha256:cd"
[data]
builtin = "synthetic"
shape = [64]
classes = 10
samples = 100
validation_split = 0.2
[training]
epochs = 2
threads = 2
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.1, final_sparsity = 0.8, begin_step = 0, end_step = 10 }
m_by_n = [2, 4]
include = ["weight$"]
[[pruning.overrides]]
match = "^0"
skip = true
[[pruning.overrides]]
match = "^5"
schedule = { kind = "constant_sparsity", target_sparsity = 0.3, frequency = 5 }
block_size = [1, 4]
[export]
formats = ["safetensors", "torchscript"]
compression = "gzip"
sparse_format = "bitmask"
"#;
        let spec = prune_core::validate::parse_toml(toml).unwrap();
        assert_eq!(spec_from_proto(spec_to_proto(&spec)).unwrap(), spec);
    }

    /// `[sensitivity]` and `pruning.budget` are echoed as submitted, either way round.
    #[test]
    fn sensitivity_and_budget_round_trip() {
        let toml = r#"
[model]
blob = "sha256:ab"
[data]
builtin = "digits"
validation_split = 0.1
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.1, final_sparsity = 0.8, begin_step = 10, end_step = 100 }
budget = { max_bytes = 20000, max_accuracy_drop = 0.02 }
[sensitivity]
levels = [0.9, 0.5, 0.7]
include = ["weight$"]
exclude = ["^0\\."]
target_accuracy_drop = 0.005
"#;
        let spec = prune_core::validate::parse_toml(toml).unwrap();
        assert_eq!(spec_from_proto(spec_to_proto(&spec)).unwrap(), spec);

        let mut p = minimal();
        p.data = Some(pb::DataSpec { builtin: Some("digits".into()), ..Default::default() });
        p.pruning.as_mut().unwrap().budget = Some(pb::BudgetSpec { max_bytes: Some(20_000), max_accuracy_drop: None });
        p.sensitivity = Some(pb::SensitivitySpec {
            levels: vec![0.9, 0.5],
            include: vec!["weight$".into()],
            exclude: vec!["bias$".into()],
            target_accuracy_drop: Some(0.02),
        });
        let spec = spec_from_proto(p.clone()).unwrap();
        let budget = spec.pruning.budget.clone().unwrap();
        assert_eq!((budget.max_bytes, budget.max_accuracy_drop), (Some(20_000), None));
        assert_eq!(spec.sensitivity.as_ref().unwrap().levels, [0.9, 0.5]);
        let echoed = spec_to_proto(&spec);
        assert_eq!(echoed.sensitivity, p.sensitivity);
        assert_eq!(echoed.pruning.unwrap().budget, p.pruning.unwrap().budget);

        // Unset over the wire: the TOML defaults, and nothing when the message is absent.
        let mut p = minimal();
        p.sensitivity = Some(pb::SensitivitySpec::default());
        let spec = spec_from_proto(p).unwrap();
        assert_eq!(spec.sensitivity, Some(prune_core::spec::SensitivitySpec::default()));
        let spec = spec_from_proto(minimal()).unwrap();
        assert_eq!((spec.sensitivity, spec.pruning.budget), (None, None));
    }

    const BLOB_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BLOB_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// A language-model job as `prunectl submit` sends it (blob ids in every file field)
    /// survives proto -> JobSpec -> proto -> JobSpec, and is a valid job.
    #[test]
    fn language_model_spec_round_trips() {
        let toml = format!(
            r#"
[model]
index = "{BLOB_A}"
shards = {{ "model-00001-of-00001.safetensors" = "{BLOB_B}" }}
files = {{ "config.json" = "{BLOB_A}", "tokenizer.json" = "{BLOB_B}" }}
[training]
epochs = 0
[pruning]
schedule = {{ kind = "constant_sparsity", target_sparsity = 0.5 }}
method = "sparsegpt"
m_by_n = [2, 4]
sparsegpt = {{ block_size = 64, dampening = 0.05 }}
[calibration]
text = "{BLOB_A}"
samples = 32
seq_len = 256
seed = 7
[evaluation]
text = "{BLOB_B}"
seq_len = 512
max_windows = 8
"#
        );
        let spec = prune_core::validate::parse_toml(&toml).unwrap();
        prune_core::validate::validate(&spec).unwrap();
        let message = spec_to_proto(&spec);
        assert_eq!(message.model.as_ref().unwrap().files.len(), 2);
        assert_eq!(message.pruning.as_ref().unwrap().method.as_deref(), Some("sparsegpt"));
        let back = spec_from_proto(message.clone()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(spec_to_proto(&back), message);

        // `tokens` instead of `text`, and a single-file model with its files.
        let tokens = toml.replace(&format!("text = \"{BLOB_A}\""), &format!("tokens = \"{BLOB_B}\"")).replace(
            &format!("index = \"{BLOB_A}\"\nshards = {{ \"model-00001-of-00001.safetensors\" = \"{BLOB_B}\" }}"),
            &format!("blob = \"{BLOB_A}\""),
        );
        let spec = prune_core::validate::parse_toml(&tokens).unwrap();
        assert_eq!(spec.calibration.as_ref().unwrap().tokens.as_deref(), Some(BLOB_B));
        assert_eq!(spec.model.blob.as_deref(), Some(BLOB_A));
        assert_eq!(spec_from_proto(spec_to_proto(&spec)).unwrap(), spec);
    }

    /// Unset over the wire means what leaving the keys out of a TOML file means.
    #[test]
    fn unset_language_model_fields_get_the_toml_defaults() {
        let mut p = minimal();
        p.calibration = Some(pb::CalibrationSpec { text: Some(BLOB_A.into()), ..Default::default() });
        p.evaluation = Some(pb::EvaluationSpec { text: Some(BLOB_B.into()), ..Default::default() });
        p.pruning.as_mut().unwrap().sparsegpt = Some(pb::SparseGptSpec::default());
        let from_proto = spec_from_proto(p).unwrap();
        let from_toml = prune_core::validate::parse_toml(&format!(
            "[model]\nblob = \"sha256:ab\"\n[pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\nsparsegpt = {{}}\n[calibration]\ntext = \"{BLOB_A}\"\n[evaluation]\ntext = \"{BLOB_B}\"\n"
        ))
        .unwrap();
        assert_eq!(from_proto, from_toml);
        let calibration = from_proto.calibration.as_ref().unwrap();
        assert_eq!((calibration.samples, calibration.seq_len, calibration.seed), (128, 2048, 0));
        assert_eq!(from_proto.pruning.method, "magnitude");
        assert_eq!(from_proto.pruning.sparsegpt.map(|g| (g.block_size, g.dampening)), Some((128, 0.01)));
        // The evaluation's seq_len default follows [calibration], so the echo leaves it unset.
        assert_eq!(spec_to_proto(&from_proto).evaluation.unwrap().seq_len, None);

        // Absent messages and an empty files map are "unset", not empty sections.
        let spec = spec_from_proto(minimal()).unwrap();
        assert_eq!(
            (spec.calibration, spec.evaluation, spec.model.files, spec.pruning.sparsegpt),
            (None, None, None, None)
        );
    }

    #[test]
    fn structural_errors_name_their_fields() {
        let mut p = minimal();
        p.model.as_mut().unwrap().sequential = vec![
            pb::LayerSpec { r#type: "linear".into(), r#in: Some(4), kernel: Some(3), ..Default::default() },
            pb::LayerSpec { r#type: "lstm".into(), ..Default::default() },
            pb::LayerSpec {
                r#type: "residual".into(),
                layers: vec![pb::LayerSpec { r#type: "batchnorm2d".into(), p: Some(0.5), ..Default::default() }],
                ..Default::default()
            },
            pb::LayerSpec {
                r#type: "residual".into(),
                layers: vec![pb::LayerSpec { r#type: "relu".into(), ..Default::default() }],
                projection: Some(pb::Projection { out: Some(4), ..Default::default() }),
                ..Default::default()
            },
        ];
        let pruning = p.pruning.as_mut().unwrap();
        pruning.block_size = vec![1, 2, 3];
        pruning.schedule =
            Some(pb::Schedule { kind: "polynomial_decay".into(), target_sparsity: Some(0.1), ..Default::default() });
        assert_eq!(
            fields(spec_from_proto(p).unwrap_err()),
            [
                "model.sequential[0].kernel",
                "model.sequential[0].out",
                "model.sequential[1].type",
                "model.sequential[2].layers[0].p",
                "model.sequential[2].layers[0].features",
                "model.sequential[3].projection.in",
                "pruning.schedule.target_sparsity",
                "pruning.schedule.initial_sparsity",
                "pruning.schedule.final_sparsity",
                "pruning.schedule.begin_step",
                "pruning.schedule.end_step",
                "pruning.block_size",
            ]
        );
        assert_eq!(fields(spec_from_proto(pb::JobSpec::default()).unwrap_err()), ["pruning"]);
    }
}
