//! Unit tests of `validate`: parsing, every rule, collection and warnings.

use super::*;
use crate::compress::Compression;
use crate::job::{DataSource, Override, OverrideRule};
use crate::method::PruningMethod;
use crate::options::{BlockPooling, Device, ExportFormat, Loss, Optimizer, Scope, SparseFormat};
use crate::schedule::Schedule;
use crate::spec::{DataSpec, JobSpec, LayerSpec, OverrideSpec};

/// The job file of `docs/job-spec.md`, verbatim.
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
        errors.iter().any(|e| e.field == field && e.reason.contains(phrase)),
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

const MINIMAL: &str =
    "[model]\nfile = \"m.pt\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";

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
    assert!(e.reason.contains("unknown field `bacth_size`") && e.reason.contains("line 6"), "{e}");
}

#[test]
fn unknown_key_inside_an_override_has_its_index() {
    let text =
        format!("{MINIMAL}[[pruning.overrides]]\nmatch = \"a\"\n[[pruning.overrides]]\nmatch = \"b\"\nskp = true\n");
    let e = parse_error(&text);
    assert_eq!(e.field, "pruning.overrides[1].skp");
}

#[test]
fn unknown_key_inside_a_schedule_names_the_schedule() {
    let text = MINIMAL.replace("target_sparsity = 0.5", "target_sparsity = 0.5, frequncy = 3");
    let e = parse_error(&text);
    assert_eq!(e.field, "pruning.schedule.frequncy");
}

#[test]
fn missing_key_names_the_key() {
    let e = parse_error("[model]\nfile = \"m.pt\"\n");
    assert_eq!(e.field, "pruning");
    assert!(e.reason.contains("missing field"), "{e}");
    let text = MINIMAL.replace(
        "kind = \"constant_sparsity\", target_sparsity = 0.5",
        "kind = \"polynomial_decay\", initial_sparsity = 0.1, final_sparsity = 0.5, begin_step = 0",
    );
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
    assert!(e.reason.starts_with("invalid type: integer `3`, expected a table (line 1"), "{e}");
}

#[test]
fn syntax_error_is_one_line_with_location() {
    let e = parse_error("[model\nfile = 1");
    assert_eq!(e.field, "");
    assert!(!e.reason.contains('\n') && e.reason.contains("line 1"), "{e}");
}

#[test]
fn json_errors_carry_paths() {
    let mut value = serde_json::to_value(example()).unwrap();
    value["pruning"]["overrides"][0]["sikp"] = true.into();
    let errors = parse_json(&value.to_string()).unwrap_err().0;
    assert_eq!(errors[0].field, "pruning.overrides[0].sikp");
    let errors = parse_json(
        "{\"model\": {}, \"pruning\": {\"schedule\": {\"kind\": \"constant_sparsity\", \"target_sparsity\": 0.5}}} x",
    )
    .unwrap_err()
    .0;
    assert!(errors[0].reason.contains("trailing characters"), "{:?}", errors);
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
        "one of model.file, model.blob, model.sequential, model.dir, model.index must be set",
    );
    assert_rejects(|s| s.model.blob = Some(BLOB.into()), "model", "found file and blob");
}

/// The example turned into a one-shot job on a sharded checkpoint, as the server sees it.
fn sharded(s: &mut JobSpec) {
    s.model.file = None;
    s.model.index = Some(BLOB.into());
    s.model.shards = Some([("model-00001-of-00002.safetensors".to_string(), BLOB.to_string())].into());
    s.training.epochs = 0;
}

#[test]
fn sharded_models_name_their_index_and_shards() {
    assert_accepts(sharded);
    assert_accepts(|s| {
        s.model.file = None;
        s.model.dir = Some("checkpoint/".into());
        s.training.epochs = 0;
    });
    assert_rejects(|s| s.model.dir = Some("shards/".into()), "model", "found file and dir");
    assert_rejects(
        |s| {
            sharded(s);
            s.model.shards = None;
        },
        "model.shards",
        "needs its shards",
    );
    assert_rejects(
        |s| {
            sharded(s);
            s.model.index = None;
            s.model.blob = Some(BLOB.into());
        },
        "model.shards",
        "only applies with model.index",
    );
    assert_rejects(
        |s| {
            sharded(s);
            s.model.shards = Some([("../x.safetensors".to_string(), BLOB.to_string())].into());
        },
        "model.shards.../x.safetensors",
        "not a plain file name",
    );
    assert_rejects(
        |s| {
            sharded(s);
            s.model.shards = Some([("a.safetensors".to_string(), "sha256:abc".to_string())].into());
        },
        "model.shards.a.safetensors",
        "not a blob id",
    );
    assert_rejects(
        |s| {
            sharded(s);
            s.training.epochs = 2;
        },
        "training.epochs",
        "a sharded checkpoint is pruned one-shot",
    );
    assert_rejects(
        |s| {
            sharded(s);
            s.export.formats = vec!["torchscript".into()];
        },
        "export.formats",
        "a sharded checkpoint is a safetensors state dict",
    );
}

#[test]
fn model_file_not_empty() {
    assert_rejects(|s| s.model.file = Some(String::new()), "model.file", "must not be empty");
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
    assert_rejects(|s| s.data.as_mut().unwrap().file = None, "data", "one of data.file");
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
    LayerSpec::Linear { in_features, out_features, bias: true }
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
    assert_rejects(sequential(vec![linear(4, -1)]), "model.sequential[0].out", ">= 1");
    let conv = LayerSpec::Conv2d { in_channels: 1, out_channels: 2, kernel: 0, stride: 0, padding: -1, bias: true };
    for field in ["kernel", "stride"] {
        assert_rejects(sequential(vec![conv.clone()]), &format!("model.sequential[0].{field}"), ">= 1");
    }
    assert_rejects(sequential(vec![conv]), "model.sequential[0].padding", ">= 0");
    assert_rejects(sequential(vec![LayerSpec::Maxpool2d { kernel: 0 }]), "model.sequential[0].kernel", ">= 1");
}

#[test]
fn layer_weights_have_a_size_limit() {
    assert_rejects(sequential(vec![linear(1 << 20, 1 << 20)]), "model.sequential[0]", "more than 2147483648 elements");
    assert_rejects(sequential(vec![linear(i64::MAX, 3)]), "model.sequential[0]", "more than");
}

#[test]
fn dropout_p_in_unit_interval() {
    assert_rejects(sequential(vec![LayerSpec::Dropout { p: 1.0 }]), "model.sequential[0].p", "[0, 1)");
    assert_rejects(sequential(vec![LayerSpec::Dropout { p: f64::NAN }]), "model.sequential[0].p", "[0, 1)");
    assert_accepts(sequential(vec![LayerSpec::Dropout { p: 0.0 }]));
}

/// The shapes of a CNN on the builtin digits, checked through the data section: the input
/// is `[64]`, so each mismatch is found at submit and named by its field path.
#[test]
fn digits_cnn_shapes_chain() {
    let toml = |layers: &str| -> JobSpec {
        parse_toml(&format!(
            "[model]\nsequential = [{layers}]\n[data]\nbuiltin = \"digits\"\n[training]\nepochs = 1\n\
             [pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\n"
        ))
        .unwrap()
    };
    let fields = |layers: &str| -> Vec<(String, String)> {
        match validate(&toml(layers)) {
            Ok(_) => vec![],
            Err(e) => e.0.into_iter().map(|e| (e.field, e.reason)).collect(),
        }
    };
    let stem =
        r#"{ type = "reshape", shape = [1, 8, 8] }, { type = "conv2d", in = 1, out = 8, kernel = 3, padding = 1 }"#;
    let good = format!(
        r#"{stem}, {{ type = "batchnorm2d", features = 8 }}, {{ type = "relu" }},
        {{ type = "residual", layers = [{{ type = "conv2d", in = 8, out = 8, kernel = 3, padding = 1 }}] }},
        {{ type = "residual", layers = [
           {{ type = "conv2d", in = 8, out = 16, kernel = 3, stride = 2, padding = 1 }},
        ], projection = {{ in = 8, out = 16, stride = 2 }} }},
        {{ type = "avgpool2d", kernel = 2 }}, {{ type = "global_avgpool" }}, {{ type = "batchnorm1d", features = 16 }},
        {{ type = "linear", in = 16, out = 10 }}"#
    );
    assert_eq!(fields(&good), vec![]);
    let bad = [
        (
            r#"{ type = "batchnorm2d", features = 4 }"#,
            "model.sequential[2].features",
            "previous layer gives 8 channels",
        ),
        (
            r#"{ type = "residual", layers = [{ type = "relu" }, { type = "conv2d", in = 4, out = 8, kernel = 3, padding = 1 }] }"#,
            "model.sequential[2].layers[1].in",
            "is 4 but the previous layer gives 8 channels",
        ),
        (
            r#"{ type = "residual", layers = [{ type = "conv2d", in = 8, out = 16, kernel = 3, padding = 1 }] }"#,
            "model.sequential[2]",
            "turn [8, 8, 8] into [16, 8, 8]",
        ),
        (
            r#"{ type = "residual", layers = [{ type = "conv2d", in = 8, out = 16, kernel = 1 }], projection = { in = 8, out = 12 } }"#,
            "model.sequential[2].projection.out",
            "is 12 but the residual's layers give 16 channels",
        ),
        (
            r#"{ type = "global_avgpool" }, { type = "linear", in = 64, out = 10 }"#,
            "model.sequential[3].in",
            "gives 8 features",
        ),
    ];
    for (tail, field, phrase) in bad {
        let errors = fields(&format!("{stem}, {tail}"));
        assert!(errors.iter().any(|(f, r)| f == field && r.contains(phrase)), "{tail}: {errors:?}");
    }
    // Digits are flat: a conv2d straight on them needs a reshape first.
    let errors = fields(r#"{ type = "conv2d", in = 1, out = 8, kernel = 3 }"#);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0 == "model.sequential[0]" && errors[0].1.contains("gives [64]"), "{errors:?}");
}

#[test]
fn reshape_entries() {
    assert_accepts(sequential(vec![LayerSpec::Reshape { shape: vec![-1, 1, 8, 8] }]));
    assert_rejects(
        sequential(vec![LayerSpec::Reshape { shape: vec![-1, 0] }]),
        "model.sequential[0].shape[1]",
        "or -1",
    );
    assert_rejects(
        sequential(vec![LayerSpec::Reshape { shape: vec![-1, -1] }]),
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
    assert_rejects(|s| s.data = None, "data", "training.epochs > 0 needs training data");
    assert_accepts(|s| {
        s.data = None;
        s.training.epochs = 0;
    });
    assert_rejects(|s| s.data.as_mut().unwrap().builtin = Some("digits".into()), "data", "found file and builtin");
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
    assert_rejects(builtin("mnist"), "data.builtin", "`mnist` is not one of: digits, synthetic");
}

fn synthetic(shape: Option<Vec<i64>>, classes: Option<i64>, samples: Option<i64>) -> impl FnOnce(&mut JobSpec) {
    move |s| {
        s.data = Some(DataSpec { builtin: Some("synthetic".into()), shape, classes, samples, ..DataSpec::default() });
    }
}

#[test]
fn synthetic_needs_its_parameters() {
    assert_accepts(synthetic(Some(vec![1, 28, 28]), Some(10), Some(1000)));
    assert_rejects(synthetic(None, Some(10), Some(10)), "data.shape", "needs a per-sample shape");
    assert_rejects(synthetic(Some(vec![4, 0]), Some(10), Some(10)), "data.shape[1]", ">= 1");
    assert_rejects(synthetic(Some(vec![4]), None, Some(10)), "data.classes", "needs classes");
    assert_rejects(synthetic(Some(vec![4]), Some(0), Some(10)), "data.classes", "between 1 and 1000000");
    assert_rejects(synthetic(Some(vec![4]), Some(2_000_000), Some(10)), "data.classes", "between 1 and 1000000");
    assert_rejects(synthetic(Some(vec![4]), Some(10), Some(0)), "data.samples", ">= 1");
}

#[test]
fn synthetic_size_limit() {
    assert_rejects(synthetic(Some(vec![1 << 20]), Some(10), Some(1 << 12)), "data.samples", "exceed the limit");
    assert_rejects(synthetic(Some(vec![i64::MAX, 2]), Some(10), Some(2)), "data.samples", "exceed the limit");
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
    assert_rejects(|s| s.data.as_mut().unwrap().validation_split = 1.0, "data.validation_split", "[0, 1)");
    assert_rejects(|s| s.data.as_mut().unwrap().validation_split = f64::INFINITY, "data.validation_split", "[0, 1)");
}

// --- validation: training -----------------------------------------------------------------

#[test]
fn training_ranges() {
    assert_rejects(|s| s.training.epochs = -1, "training.epochs", "between 0 and 100000");
    assert_rejects(|s| s.training.epochs = 100_001, "training.epochs", "between 0 and 100000");
    assert_rejects(|s| s.training.batch_size = 0, "training.batch_size", "between 1 and 1048576");
    assert_rejects(|s| s.training.batch_size = (1 << 20) + 1, "training.batch_size", "between 1 and 1048576");
    assert_rejects(|s| s.training.checkpoint_every = 0, "training.checkpoint_every", ">= 1");
    assert_rejects(|s| s.training.threads = 257, "training.threads", "between 0 and 256");
    assert_rejects(|s| s.training.threads = -1, "training.threads", "between 0 and 256");
}

#[test]
fn training_names() {
    assert_rejects(
        |s| s.training.optimizer = "rmsprop".into(),
        "training.optimizer",
        "`rmsprop` is not one of: sgd, adam, adamw",
    );
    assert_rejects(|s| s.training.loss = "hinge".into(), "training.loss", "cross_entropy, mse");
}

#[test]
fn training_numbers() {
    assert_rejects(|s| s.training.learning_rate = 0.0, "training.learning_rate", "finite number > 0");
    assert_rejects(|s| s.training.learning_rate = f64::NAN, "training.learning_rate", "finite number > 0");
    assert_rejects(|s| s.training.momentum = 1.0, "training.momentum", "[0, 1)");
    assert_rejects(|s| s.training.weight_decay = -0.1, "training.weight_decay", "finite number >= 0");
    assert_rejects(|s| s.training.weight_decay = f64::INFINITY, "training.weight_decay", "finite number >= 0");
}

#[test]
fn devices() {
    for ok in ["cpu", "cuda", "cuda:0", "cuda:12", "auto"] {
        assert!(is_device(ok), "{ok}");
    }
    for bad in ["gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cuda:99999999", "CPU"] {
        assert!(!is_device(bad), "{bad}");
    }
    assert_rejects(|s| s.training.device = "gpu".into(), "training.device", "expected cpu, cuda, cuda:N");
}

// --- validation: pruning ------------------------------------------------------------------

#[test]
fn schedule_errors_keep_tfmot_messages() {
    assert_rejects(|s| s.pruning.schedule = poly(0, -1, 100), "pruning.schedule.end_step", "end_step cannot be -1.");
    assert_rejects(
        |s| s.pruning.schedule = poly(-5, 10, 100),
        "pruning.schedule.begin_step",
        "begin_step should be >= 0",
    );
    assert_rejects(|s| s.pruning.schedule = poly(0, 10, 0), "pruning.schedule.frequency", "frequency should be > 0");
    assert_rejects(
        |s| {
            s.pruning.schedule =
                Schedule::ConstantSparsity { target_sparsity: 1.0, begin_step: 0, end_step: -1, frequency: 1 }
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
    assert_rejects(|s| s.pruning.block_size = [1, 0], "pruning.block_size[1]", ">= 1");
    assert_accepts(|s| s.pruning.block_size = [1, 4]);
}

#[test]
fn block_pooling_names() {
    assert_rejects(|s| s.pruning.block_pooling = "mean".into(), "pruning.block_pooling", "avg, max");
}

#[test]
fn m_by_n_rules() {
    assert_accepts(|s| s.pruning.m_by_n = Some([2, 4]));
    assert_accepts(|s| s.pruning.m_by_n = Some([0, 1]));
    assert_rejects(|s| s.pruning.m_by_n = Some([4, 4]), "pruning.m_by_n", "m >= n is rejected");
    assert_rejects(|s| s.pruning.m_by_n = Some([-1, 4]), "pruning.m_by_n", "0 <= m < n");
    assert_rejects(|s| s.pruning.m_by_n = Some([0, 0]), "pruning.m_by_n", "n (the group size) must be >= 1");
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
    assert_rejects(|s| s.pruning.scope = "model".into(), "pruning.scope", "layer, global");
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
    assert_rejects(|s| s.pruning.include = vec!["ok".into(), "(".into()], "pruning.include[1]", "unclosed group");
    assert_rejects(|s| s.pruning.exclude = vec!["[z-a]".into()], "pruning.exclude[0]", "regex parse error");
    let mut spec = example();
    spec.pruning.include = vec!["(".into()];
    let reason = &validate(&spec).unwrap_err().0[0].reason;
    assert_eq!(reason, "regex parse error: unclosed group");
}

fn with_override(o: OverrideSpec) -> impl FnOnce(&mut JobSpec) {
    move |s| s.pruning.overrides.push(o)
}

fn override_on(pattern: &str) -> OverrideSpec {
    OverrideSpec { pattern: pattern.into(), ..OverrideSpec::default() }
}

#[test]
fn override_match_must_compile() {
    assert_rejects(with_override(override_on("a(")), "pruning.overrides[1].match", "unclosed group");
}

#[test]
fn override_skip_excludes_settings() {
    let o = OverrideSpec { skip: true, block_size: Some([2, 2]), m_by_n: Some([2, 4]), ..override_on("x") };
    assert_rejects(with_override(o), "pruning.overrides[1].skip", "block_size, m_by_n would be ignored");
}

#[test]
fn override_settings_are_validated() {
    let o = OverrideSpec { schedule: Some(poly(10, 5, 1)), ..override_on("x") };
    assert_rejects(with_override(o), "pruning.overrides[1].schedule.end_step", "begin_step should be <= end_step");
    let o = OverrideSpec { block_size: Some([0, 1]), ..override_on("x") };
    assert_rejects(with_override(o), "pruning.overrides[1].block_size[0]", ">= 1");
    let o = OverrideSpec { block_pooling: Some("sum".into()), ..override_on("x") };
    assert_rejects(with_override(o), "pruning.overrides[1].block_pooling", "avg, max");
    let o = OverrideSpec { m_by_n: Some([5, 4]), ..override_on("x") };
    assert_rejects(with_override(o), "pruning.overrides[1].m_by_n", "m >= n");
    let o = OverrideSpec { m_by_n: Some([2, 4]), block_size: Some([1, 2]), ..override_on("x") };
    assert_rejects(with_override(o), "pruning.overrides[1].m_by_n", "cannot be combined with block_size");
    let o = OverrideSpec { block_size: Some([2, 2]), ..override_on("x") };
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
    assert_rejects(|s| s.export.formats.clear(), "export.formats", "at least one of: safetensors, torchscript");
    assert_rejects(|s| s.export.formats = vec!["onnx".into()], "export.formats[0]", "`onnx` is not one of");
    assert_rejects(
        |s| s.export.formats = vec!["safetensors".into(), "safetensors".into()],
        "export.formats[1]",
        "listed twice",
    );
}

#[test]
fn export_level_is_checked_against_the_codec() {
    assert_accepts(|s| s.export.level = Some(3));
    assert_accepts(|s| {
        s.export.compression = "gzip".into();
        s.export.level = Some(9);
    });
    assert_rejects(|s| s.export.level = Some(20), "export.level", "outside zstd's levels 1-19");
    assert_rejects(|s| s.export.level = Some(0), "export.level", "outside zstd's levels 1-19");
    assert_rejects(
        |s| {
            s.export.compression = "gzip".into();
            s.export.level = Some(19);
        },
        "export.level",
        "outside gzip's levels 1-9",
    );
    assert_rejects(
        |s| {
            s.export.compression = "none".into();
            s.export.level = Some(3);
        },
        "export.level",
        "has no level",
    );
    let job = validate(&{
        let mut s = example();
        s.export.level = Some(7);
        s
    })
    .unwrap();
    assert_eq!(job.export.level, Some(7));
}

#[test]
fn torchscript_export_needs_torchscript_input() {
    let torchscript = |s: &mut JobSpec| s.export.formats = vec!["safetensors".into(), "torchscript".into()];
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
    // A built-in model is traced.
    assert_accepts(|s| {
        torchscript(s);
        sequential(vec![LayerSpec::Linear { in_features: 64, out_features: 10, bias: true }])(s);
        s.data = Some(DataSpec { builtin: Some("digits".into()), ..Default::default() });
    });
}

#[test]
fn export_names() {
    assert_rejects(|s| s.export.compression = "lz4".into(), "export.compression", "expected one of none, gzip, zstd");
    assert_rejects(|s| s.export.sparse_format = "csr".into(), "export.sparse_format", "dense, bitmask");
    assert_accepts(|s| {
        s.export.compression = "none".into();
        s.export.sparse_format = "bitmask".into();
    });
}

#[test]
fn name_length() {
    assert_accepts(|s| s.name = Some("é".repeat(256)));
    assert_rejects(|s| s.name = Some("x".repeat(257)), "name", "at most 256 characters (got 257)");
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
    assert!(text.starts_with("training.batch_size: must be between 1 and"), "{text}");
}

#[test]
fn single_error_displays_on_one_line() {
    let errors = SpecErrors(vec![FieldError::new("model", "bad")]);
    assert_eq!(errors.to_string(), "model: bad");
}

// --- the typed job -------------------------------------------------------------------------

#[test]
fn validate_parses_into_the_typed_job() {
    let job = validate(&example()).unwrap();
    assert_eq!(job.name.as_deref(), Some("digits-mlp-80"));
    assert_eq!(job.training.optimizer, Optimizer::Adam);
    assert_eq!(job.training.loss, Loss::CrossEntropy);
    assert_eq!(job.training.device, Device::Cpu);
    assert_eq!(job.pruning.schedule, poly(0, 844, 100));
    assert_eq!(job.pruning.method, PruningMethod::ElementWise);
    assert_eq!(job.pruning.scope, Scope::Layer);
    assert_eq!(job.pruning.overrides, [Override { pattern: "^0\\.weight$".into(), rule: OverrideRule::Skip }]);
    assert_eq!(job.export.formats, [ExportFormat::Safetensors]);
    assert_eq!(job.export.compression, Compression::Zstd);
    assert_eq!(job.export.sparse_format, SparseFormat::Dense);
    let data = job.data.unwrap();
    assert_eq!(data.source, DataSource::File("train.safetensors".into()));
    assert_eq!(data.validation_split, 0.1);
}

#[test]
fn methods_resolve_per_rule_with_inheritance() {
    let mut spec = example();
    spec.pruning.block_size = [2, 4];
    spec.pruning.block_pooling = "max".into();
    spec.pruning.overrides = vec![
        OverrideSpec { m_by_n: Some([2, 4]), block_size: Some([1, 1]), ..override_on("conv") },
        OverrideSpec { block_pooling: Some("avg".into()), ..override_on("fc") },
        OverrideSpec { schedule: Some(poly(0, 10, 1)), ..override_on("head") },
        OverrideSpec { skip: true, ..override_on("skip") },
        override_on("rest"),
    ];
    let job = validate(&spec).unwrap();
    let top = spec.pruning.schedule;
    let block = |pooling| PruningMethod::Block { size: [2, 4], pooling };
    assert_eq!(job.pruning.method, block(BlockPooling::Max));
    let rules: Vec<OverrideRule> = job.pruning.overrides.into_iter().map(|o| o.rule).collect();
    assert_eq!(
        rules,
        [
            OverrideRule::Prune { schedule: top, method: PruningMethod::MByN { m: 2, n: 4 } },
            OverrideRule::Prune { schedule: top, method: block(BlockPooling::Avg) },
            OverrideRule::Prune { schedule: poly(0, 10, 1), method: block(BlockPooling::Max) },
            OverrideRule::Skip,
            OverrideRule::Inherit,
        ]
    );
}

#[test]
fn top_level_m_by_n_reaches_overrides_that_set_a_block() {
    // As the engine always did: an override's own block size does not undo an inherited m_by_n.
    let mut spec = example();
    spec.pruning.m_by_n = Some([1, 2]);
    spec.pruning.overrides.push(OverrideSpec { block_size: Some([2, 2]), ..override_on("x") });
    let job = validate(&spec).unwrap();
    assert_eq!(job.pruning.method, PruningMethod::MByN { m: 1, n: 2 });
    assert_eq!(
        job.pruning.overrides[1].rule,
        OverrideRule::Prune { schedule: spec.pruning.schedule, method: PruningMethod::MByN { m: 1, n: 2 } }
    );
}

#[test]
fn devices_and_data_sources_are_typed() {
    let mut spec = example();
    spec.training.device = "cuda:3".into();
    spec.training.optimizer = "sgd".into();
    spec.pruning.scope = "global".into();
    spec.export.formats = vec!["safetensors".into(), "torchscript".into()];
    synthetic(Some(vec![4]), Some(3), Some(10))(&mut spec);
    let job = validate(&spec).unwrap();
    assert_eq!(job.training.device, Device::Cuda(Some(3)));
    assert_eq!(job.training.optimizer, Optimizer::Sgd);
    assert_eq!(job.pruning.scope, Scope::Global);
    assert_eq!(job.export.formats, [ExportFormat::Safetensors, ExportFormat::Torchscript]);
    assert_eq!(job.data.unwrap().source, DataSource::Synthetic { shape: vec![4], classes: 3, samples: 10 });
    spec.training.epochs = 0;
    spec.data = None;
    assert_eq!(validate(&spec).unwrap().data, None);
}

#[test]
fn unknown_names_are_reported_with_every_other_error() {
    let mut spec = example();
    spec.training.loss = "hinge".into();
    spec.training.device = "tpu".into();
    spec.pruning.block_pooling = "sum".into();
    spec.pruning.overrides.push(OverrideSpec { block_pooling: Some("min".into()), ..override_on("x") });
    spec.pruning.scope = "model".into();
    spec.export.formats = vec!["onnx".into()];
    spec.export.sparse_format = "csr".into();
    let errors = validate(&spec).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "training.loss",
            "training.device",
            "pruning.block_pooling",
            "pruning.scope",
            "pruning.overrides[1].block_pooling",
            "export.formats[0]",
            "export.sparse_format"
        ]
    );
    assert_eq!(errors[2].reason, "`sum` is not one of: avg, max");
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
    assert!(w.iter().any(|w| w.starts_with("pruning.schedule: ") && w.contains("never applied")), "{w:?}");
    assert!(
        w.iter().any(|w| w.starts_with("pruning.overrides[1].schedule: ") && w.contains("pruning would do nothing")),
        "{w:?}"
    );
}

#[test]
fn unknown_step_count_skips_step_warnings() {
    let mut spec = example();
    spec.pruning.schedule =
        Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: 5000, end_step: -1, frequency: 100 };
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
fn a_sensitivity_job_gets_no_schedule_warnings_but_a_budget_does() {
    let mut spec = example();
    spec.pruning.schedule = poly(0, 250, 100);
    spec.training.epochs = 1;
    assert!(!warnings(&spec, Some(10)).is_empty(), "the schedule ends after the job");
    spec.sensitivity = Some(crate::spec::SensitivitySpec::default());
    assert!(warnings(&spec, Some(10)).is_empty());
    spec.pruning.budget = Some(crate::spec::BudgetSpec { max_bytes: Some(5000), max_accuracy_drop: None });
    assert!(!warnings(&spec, Some(10)).is_empty());
}

#[test]
fn a_budget_that_plans_before_one_epoch_of_dense_training_is_warned_about() {
    let mut spec = example();
    spec.training.epochs = 2;
    spec.pruning.budget = Some(crate::spec::BudgetSpec { max_bytes: Some(5000), max_accuracy_drop: None });
    // 100 steps, 50 per epoch: pruning from step 10 analyses a barely trained model.
    spec.pruning.schedule = poly(0, 80, 10);
    let w = warnings(&spec, Some(100));
    let budget_warning = |w: &[String]| w.iter().find(|w| w.starts_with("pruning.budget: ")).cloned();
    let text = budget_warning(&w).unwrap_or_else(|| panic!("{w:?}"));
    assert!(text.starts_with("pruning.budget: the schedule first prunes at step 10, before one epoch"), "{text}");
    assert!(!text.contains("max_accuracy_drop"), "only a size bound: {text}");
    spec.pruning.budget = Some(crate::spec::BudgetSpec { max_bytes: None, max_accuracy_drop: Some(0.01) });
    let text = budget_warning(&warnings(&spec, Some(100))).unwrap();
    assert!(text.contains("max_accuracy_drop is measured from that model's accuracy"), "{text}");
    spec.pruning.schedule = poly(50, 90, 10);
    assert!(warnings(&spec, Some(100)).iter().all(|w| !w.starts_with("pruning.budget")));
    // Without a budget the same early schedule is no budget matter.
    spec.pruning.schedule = poly(0, 80, 10);
    spec.pruning.budget = None;
    assert!(warnings(&spec, Some(100)).iter().all(|w| !w.starts_with("pruning.budget")));
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
    let overrides: Vec<&String> = w.iter().filter(|w| w.starts_with("pruning.overrides")).collect();
    assert_eq!(overrides.len(), 1, "{w:?}");
    assert!(overrides[0].starts_with("pruning.overrides[1]: sets nothing"), "{w:?}");
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

// --- channel pruning ------------------------------------------------------------------------

fn channel(spec: &mut JobSpec) {
    spec.pruning.structure = "channel".into();
}

#[test]
fn channel_structure_resolves_to_the_channel_method() {
    use crate::options::ChannelScore;
    let mut spec = example();
    channel(&mut spec);
    spec.pruning.channel_score = "l1".into();
    spec.pruning.scope = "global".into();
    spec.pruning.overrides =
        vec![OverrideSpec { pattern: "^2\\.".into(), schedule: Some(poly(0, 10, 1)), ..Default::default() }];
    let job = validate(&spec).unwrap();
    assert_eq!(job.pruning.method, PruningMethod::Channel { score: ChannelScore::L1 });
    assert_eq!(
        job.pruning.overrides[0].rule,
        OverrideRule::Prune { schedule: poly(0, 10, 1), method: PruningMethod::Channel { score: ChannelScore::L1 } }
    );
    // Element-wise stays the default, and the default spelling is not echoed.
    let job = validate(&example()).unwrap();
    assert_eq!(job.pruning.method, PruningMethod::ElementWise);
    assert!(!serde_json::to_string(&example()).unwrap().contains("structure"));
}

#[test]
fn channel_structure_rejects_blocks_m_by_n_and_unknown_names() {
    assert_rejects(|s| s.pruning.structure = "filter".into(), "pruning.structure", "not one of: element, channel");
    assert_rejects(
        |s| {
            channel(s);
            s.pruning.channel_score = "l3".into();
        },
        "pruning.channel_score",
        "not one of: l2, l1",
    );
    assert_rejects(
        |s| {
            channel(s);
            s.pruning.m_by_n = Some([2, 4]);
        },
        "pruning.m_by_n",
        "pruning.structure = \"channel\"",
    );
    assert_rejects(
        |s| {
            channel(s);
            s.pruning.block_size = [2, 2];
        },
        "pruning.block_size",
        "pruning.structure = \"channel\"",
    );
    assert_rejects(
        |s| {
            channel(s);
            s.pruning.overrides =
                vec![OverrideSpec { pattern: "x".into(), m_by_n: Some([1, 4]), ..Default::default() }];
        },
        "pruning.overrides[0].m_by_n",
        "removes whole channels",
    );
    assert_rejects(
        |s| {
            channel(s);
            s.model = crate::spec::ModelSpec {
                index: Some(BLOB.into()),
                shards: Some([("a.safetensors".to_string(), BLOB.to_string())].into()),
                ..Default::default()
            };
            s.training.epochs = 0;
        },
        "pruning.structure",
        "sharded checkpoint",
    );
}

#[test]
fn slim_export_needs_channels_of_a_sequential_model() {
    let sequential = |s: &mut JobSpec| {
        s.model = crate::spec::ModelSpec {
            sequential: Some(vec![
                LayerSpec::Linear { in_features: 64, out_features: 8, bias: true },
                LayerSpec::Relu,
                LayerSpec::Linear { in_features: 8, out_features: 10, bias: true },
            ]),
            ..Default::default()
        };
        s.data = Some(DataSpec { builtin: Some("digits".into()), ..Default::default() });
    };
    assert_accepts(|s| {
        sequential(s);
        channel(s);
        s.export.slim = true;
    });
    assert_rejects(
        |s| {
            sequential(s);
            s.export.slim = true;
        },
        "export.slim",
        "needs pruning.structure = \"channel\"",
    );
    // A TorchScript model: no layer graph to cut.
    assert_rejects(
        |s| {
            channel(s);
            s.export.slim = true;
        },
        "export.slim",
        "only a model.sequential",
    );
}

// --- sensitivity analysis and budgets ------------------------------------------------------

fn sensitivity(spec: &mut JobSpec) -> &mut crate::spec::SensitivitySpec {
    spec.sensitivity.get_or_insert_with(Default::default)
}

fn budget(spec: &mut JobSpec) -> &mut crate::spec::BudgetSpec {
    // The example's override skips `0.weight`; it sets no schedule, so a budget may keep it.
    spec.pruning.budget.get_or_insert_with(Default::default)
}

#[test]
fn sensitivity_section_parses_with_defaults_and_validates_sorted() {
    let text = format!("{SPEC_EXAMPLE}\n[sensitivity]\nlevels = [0.9, 0.5, 0.7]\ninclude = [\"weight$\"]\n");
    let spec = parse_toml(&text).unwrap();
    let job = validate(&spec).unwrap();
    let s = job.sensitivity.as_ref().expect("a typed [sensitivity]");
    assert_eq!(s.levels, vec![0.5, 0.7, 0.9]);
    assert_eq!(s.include, vec!["weight$".to_string()]);
    assert!(s.exclude.is_empty());
    assert_eq!(s.target_accuracy_drop, 0.01);
    assert_eq!(job.analysis_levels(), vec![0.5, 0.7, 0.9]);

    // An empty section takes the documented levels.
    let spec = parse_toml(&format!("{SPEC_EXAMPLE}\n[sensitivity]\n")).unwrap();
    let job = validate(&spec).unwrap();
    assert_eq!(job.sensitivity.unwrap().levels, crate::spec::DEFAULT_SENSITIVITY_LEVELS.to_vec());
    // Without the section: no analysis, and a budget would measure the built-in levels.
    let job = validate(&example()).unwrap();
    assert!(job.sensitivity.is_none());
    assert!(job.pruning.budget.is_none());
    assert_eq!(job.analysis_levels(), crate::job::BUDGET_LEVELS.to_vec());
    // m-by-n is allowed: it measures one point per tensor at m/n.
    assert_accepts(|s| {
        s.pruning.m_by_n = Some([2, 4]);
        sensitivity(s);
    });
}

#[test]
fn sensitivity_rejects_bad_levels() {
    assert_rejects(|s| sensitivity(s).levels = vec![], "sensitivity.levels", "at least one sparsity");
    for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert_rejects(|s| sensitivity(s).levels = vec![0.5, bad], "sensitivity.levels[1]", "in (0, 1)");
    }
    assert_rejects(|s| sensitivity(s).levels = vec![0.5, 0.7, 0.5], "sensitivity.levels[2]", "0.5 is listed twice");
    let too_many: Vec<f64> = (1..=MAX_LEVELS + 1).map(|i| i as f64 / (MAX_LEVELS + 2) as f64).collect();
    assert_rejects(|s| sensitivity(s).levels = too_many, "sensitivity.levels", "at most 64 levels (got 65)");
    let most: Vec<f64> = (1..=MAX_LEVELS).map(|i| i as f64 / (MAX_LEVELS + 1) as f64).collect();
    assert_accepts(|s| sensitivity(s).levels = most);
}

#[test]
fn sensitivity_rejects_bad_patterns_and_drops() {
    assert_rejects(
        |s| sensitivity(s).include = vec!["ok".into(), "(".into()],
        "sensitivity.include[1]",
        "unclosed group",
    );
    assert_rejects(|s| sensitivity(s).exclude = vec!["[".into()], "sensitivity.exclude[0]", "regex parse error");
    for bad in [-0.01, 1.01, f64::NAN] {
        assert_rejects(
            |s| sensitivity(s).target_accuracy_drop = bad,
            "sensitivity.target_accuracy_drop",
            "a fraction in [0, 1]",
        );
    }
    assert_accepts(|s| sensitivity(s).target_accuracy_drop = 0.0);
    assert_accepts(|s| sensitivity(s).target_accuracy_drop = 1.0);
}

#[test]
fn sensitivity_needs_data_and_the_whole_model() {
    assert_rejects(
        |s| {
            sensitivity(s);
            s.data = None;
            s.training.epochs = 0;
        },
        "sensitivity",
        "give the job [data]",
    );
    assert_rejects(
        |s| {
            sharded(s);
            sensitivity(s);
        },
        "sensitivity",
        "a sharded checkpoint",
    );
    // Taken as given (no training), but still measured on the data.
    assert_accepts(|s| {
        sensitivity(s);
        s.training.epochs = 0;
    });
}

#[test]
fn budget_validates_to_its_typed_form() {
    let text = SPEC_EXAMPLE.replace(
        "prune_bias = false\n",
        "prune_bias = false\nbudget = { max_bytes = 20000, max_accuracy_drop = 0.02 }\n",
    );
    let spec = parse_toml(&text).unwrap();
    let b = spec.pruning.budget.as_ref().unwrap();
    assert_eq!((b.max_bytes, b.max_accuracy_drop), (Some(20_000), Some(0.02)));
    let job = validate(&spec).unwrap();
    assert_eq!(job.pruning.budget, Some(crate::job::Budget { max_bytes: Some(20_000), max_accuracy_drop: Some(0.02) }));
    // Either bound alone; a size bound does not need accuracy.
    let job = validate(&{
        let mut s = example();
        budget(&mut s).max_bytes = Some(1);
        s.training.loss = "mse".into();
        s
    })
    .unwrap();
    assert_eq!(job.pruning.budget, Some(crate::job::Budget { max_bytes: Some(1), max_accuracy_drop: None }));
    assert_accepts(|s| budget(s).max_accuracy_drop = Some(0.0));
    // With [sensitivity] the budget measures its levels.
    let mut spec = example();
    budget(&mut spec).max_bytes = Some(10_000);
    sensitivity(&mut spec).levels = vec![0.8, 0.4];
    let job = validate(&spec).unwrap();
    assert_eq!(job.analysis_levels(), vec![0.4, 0.8]);
    // Not set: absent from the echoed spec.
    assert!(!serde_json::to_string(&example()).unwrap().contains("budget"));
}

#[test]
fn budget_rejects_missing_and_bad_bounds() {
    assert_rejects(
        |s| {
            budget(s);
        },
        "pruning.budget",
        "give max_bytes, max_accuracy_drop or both",
    );
    for bad in [0, -5] {
        assert_rejects(|s| budget(s).max_bytes = Some(bad), "pruning.budget.max_bytes", "must be >= 1 byte");
    }
    for bad in [-0.1, 1.5, f64::NAN] {
        assert_rejects(
            |s| budget(s).max_accuracy_drop = Some(bad),
            "pruning.budget.max_accuracy_drop",
            "a fraction in [0, 1]",
        );
    }
    assert_rejects(
        |s| {
            budget(s).max_accuracy_drop = Some(0.01);
            s.training.loss = "mse".into();
        },
        "pruning.budget.max_accuracy_drop",
        "training.loss = \"cross_entropy\" (got \"mse\")",
    );
}

#[test]
fn budget_rejects_whatever_fixes_a_sparsity() {
    let bytes = |s: &mut JobSpec| budget(s).max_bytes = Some(10_000);
    assert_rejects(
        |s| {
            bytes(s);
            s.pruning.m_by_n = Some([2, 4]);
        },
        "pruning.m_by_n",
        "pruning.budget chooses them",
    );
    assert_rejects(
        |s| {
            bytes(s);
            s.pruning.scope = "global".into();
        },
        "pruning.scope",
        "use scope = \"layer\"",
    );
    assert_rejects(
        |s| {
            bytes(s);
            channel(s);
        },
        "pruning.structure",
        "not available with structure = \"channel\"",
    );
    assert_rejects(
        |s| {
            bytes(s);
            s.pruning.overrides.push(OverrideSpec {
                pattern: "^2\\.".into(),
                schedule: Some(poly(0, 10, 1)),
                ..Default::default()
            });
        },
        "pruning.overrides[1].schedule",
        "contradicts pruning.budget",
    );
    assert_rejects(
        |s| {
            bytes(s);
            s.pruning.overrides =
                vec![OverrideSpec { pattern: "^2\\.".into(), m_by_n: Some([2, 4]), ..Default::default() }];
        },
        "pruning.overrides[0].m_by_n",
        "contradicts pruning.budget",
    );
    // Overrides that skip tensors or set their block size stay allowed.
    assert_accepts(|s| {
        bytes(s);
        s.pruning.overrides.push(OverrideSpec {
            pattern: "^2\\.".into(),
            block_size: Some([1, 4]),
            ..Default::default()
        });
    });
}

#[test]
fn budget_needs_data_and_the_whole_model() {
    assert_rejects(
        |s| {
            budget(s).max_bytes = Some(10_000);
            s.data = None;
            s.training.epochs = 0;
        },
        "pruning.budget",
        "give the job [data]",
    );
    assert_rejects(
        |s| {
            sharded(s);
            budget(s).max_bytes = Some(10_000);
        },
        "pruning.budget",
        "a sharded checkpoint",
    );
}

#[test]
fn every_shipped_example_is_a_valid_job() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let spec = parse_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            validate(&spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} examples found in {}", dir.display());
}

/// A Wanda job on an uploaded language model (one safetensors file and its config).
fn language_model(s: &mut JobSpec) {
    s.model = crate::spec::ModelSpec {
        blob: Some(BLOB.into()),
        files: Some([("config.json".to_string(), BLOB.to_string())].into()),
        ..Default::default()
    };
    s.data = None;
    s.training.epochs = 0;
    s.pruning.method = "wanda".into();
    s.calibration = Some(crate::spec::CalibrationSpec { text: Some(BLOB.into()), ..Default::default() });
}

#[test]
fn calibrated_methods_resolve_with_their_settings() {
    let mut s = example();
    language_model(&mut s);
    s.pruning.method = "sparsegpt".into();
    s.pruning.sparsegpt = Some(crate::spec::SparseGptSpec { block_size: 64, dampening: 0.05 });
    s.evaluation = Some(crate::spec::EvaluationSpec { text: Some(BLOB.into()), ..Default::default() });
    let job = validate(&s).unwrap();
    assert_eq!(job.pruning.criterion, crate::job::Criterion::SparseGpt { block_size: 64, dampening: 0.05 });
    let calibration = job.calibration.unwrap();
    assert_eq!((calibration.samples, calibration.seq_len), (128, 2048));
    assert_eq!(calibration.source, crate::job::TokenSource::Text(BLOB.into()));
    // Evaluation windows default to the calibration's length.
    assert_eq!(job.evaluation.unwrap().seq_len, 2048);
    // The default stays magnitude, spelled nowhere.
    let job = validate(&example()).unwrap();
    assert_eq!(job.pruning.criterion, crate::job::Criterion::Magnitude);
    assert!(!toml::to_string(&example()).unwrap().contains("method"));
}

#[test]
fn calibrated_methods_name_what_they_miss() {
    assert_rejects(|s| s.pruning.method = "obs".into(), "pruning.method", "not one of: magnitude, wanda, sparsegpt");
    assert_rejects(
        |s| {
            language_model(s);
            s.calibration = None;
        },
        "calibration",
        "needs a [calibration] table",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.model = crate::spec::ModelSpec { blob: Some(BLOB.into()), ..Default::default() };
        },
        "model",
        "config.json",
    );
    assert_rejects(|s| s.pruning.method = "wanda".into(), "training.epochs", "prunes one-shot");
    assert_rejects(
        |s| {
            language_model(s);
            s.pruning.block_size = [1, 16];
        },
        "pruning.block_size",
        "single weights or m_by_n groups",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.pruning.scope = "global".into();
        },
        "pruning.scope",
        "within each layer",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.pruning.sparsegpt = Some(Default::default());
        },
        "pruning.sparsegpt",
        "applies only to pruning.method = \"sparsegpt\"",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.pruning.method = "sparsegpt".into();
            s.pruning.sparsegpt = Some(crate::spec::SparseGptSpec { block_size: 0, dampening: 0.01 });
        },
        "pruning.sparsegpt.block_size",
        "between 1 and",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.pruning.method = "sparsegpt".into();
            s.pruning.sparsegpt = Some(crate::spec::SparseGptSpec { block_size: 128, dampening: f64::NAN });
        },
        "pruning.sparsegpt.dampening",
        "finite",
    );
}

#[test]
fn calibration_and_evaluation_sections() {
    assert_rejects(
        |s| {
            language_model(s);
            s.calibration.as_mut().unwrap().tokens = Some(BLOB.into());
        },
        "calibration",
        "found both",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.calibration.as_mut().unwrap().text = None;
        },
        "calibration",
        "must be set",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.calibration.as_mut().unwrap().seq_len = 0;
        },
        "calibration.seq_len",
        "between 1 and",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.calibration.as_mut().unwrap().samples = -3;
        },
        "calibration.samples",
        "between 1 and",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.evaluation = Some(Default::default());
        },
        "evaluation.text",
        "must be set",
    );
    assert_rejects(
        |s| s.evaluation = Some(crate::spec::EvaluationSpec { text: Some(BLOB.into()), ..Default::default() }),
        "evaluation",
        "needs a Hugging Face language model",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.model.files = Some([("../config.json".to_string(), BLOB.to_string())].into());
        },
        "model.files.../config.json",
        "file name",
    );
    assert_rejects(
        |s| {
            language_model(s);
            s.pruning.method = "magnitude".into();
            s.training.epochs = 2;
        },
        "training.epochs",
        "pruned one-shot",
    );
}

#[test]
fn calibration_without_a_calibrated_method_is_a_warning() {
    let mut s = example();
    language_model(&mut s);
    s.pruning.method = "magnitude".into();
    let job = validate(&s).unwrap();
    assert_eq!(job.calibration, None);
    assert!(warnings(&s, None).iter().any(|w| w.contains("magnitude pruning ignores it")), "{:?}", warnings(&s, None));
}

#[test]
fn language_model_sections_round_trip_through_toml() {
    let text = r#"
[model]
dir = "smollm2"
[pruning]
method = "sparsegpt"
m_by_n = [2, 4]
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
sparsegpt = { block_size = 64 }
[calibration]
text = "calib.txt"
samples = 32
seq_len = 256
seed = 7
[evaluation]
text = "eval.txt"
max_windows = 10
"#;
    let spec = parse_toml(text).unwrap();
    let job = validate(&spec).unwrap();
    assert_eq!(job.pruning.criterion, crate::job::Criterion::SparseGpt { block_size: 64, dampening: 0.01 });
    assert_eq!(job.pruning.method, PruningMethod::MByN { m: 2, n: 4 });
    let evaluation = job.evaluation.unwrap();
    assert_eq!((evaluation.seq_len, evaluation.max_windows), (256, Some(10)));
    let again = parse_toml(&toml::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
}
