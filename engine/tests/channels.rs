//! Channel pruning (`pruning.structure = "channel"`): for every layer combination the slim
//! model (removed channels cut out of every dependent tensor) computes the masked model's
//! logits; exact-k per layer; global scope; a bitwise resume; user models get zeroed channels.

mod common;

use common::{inputs, spec, StoppingSink};
use prune_core::channels::ChannelGraph;
use prune_core::mask::keep_count;
use prune_core::spec::LayerSpec;
use prune_engine::export::read_artifact;
use prune_engine::model::Sequential;
use prune_engine::train::SLIM_LAYERS_KEY;
use prune_engine::{run_job, JobOutcome, StopFlag, VecSink};
use tch::{Device, Kind, Tensor};

/// A digits job on `layers` (inputs: 64 features), two short epochs with the channel schedule
/// rising to `sparsity`, exported uncompressed; `extra` lines go to `[pruning]`.
fn job(layers: &str, sparsity: f64, slim: bool, extra: &str) -> String {
    format!(
        r#"
[model]
sequential = [{}]
[data]
builtin = "digits"
validation_split = 0.2
[training]
epochs = 2
batch_size = 64
optimizer = "sgd"
momentum = 0.9
learning_rate = 0.05
seed = 3
checkpoint_every = 7
[pruning]
structure = "channel"
schedule = {{ kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = {sparsity}, begin_step = 2, end_step = 30, frequency = 4 }}
{extra}
[export]
compression = "none"
slim = {slim}
"#,
        layers.replace('\n', " ")
    )
}

/// Callers hold `common::one_job_at_a_time()` for the whole test: libtorch's RNG is global,
/// so a test drawing random inputs while another's job initialises would change that job.
fn run(toml: &str) -> (JobOutcome, Vec<(String, Tensor)>, std::collections::HashMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_job(&spec(toml), &inputs(dir.path()), &mut VecSink::default(), &StopFlag::default())
        .unwrap_or_else(|e| panic!("job failed: {e}"));
    let path = common::artifact_path(dir.path(), &outcome.artifacts[0]);
    let bytes = std::fs::read(&path).unwrap();
    let (_, metadata) = prune_engine::tensors::read(&bytes).unwrap();
    let tensors = read_artifact(&path).unwrap();
    (outcome, tensors, metadata)
}

fn layers_of(toml: &str) -> Vec<LayerSpec> {
    spec(toml).model.sequential.unwrap()
}

const CONV_CONV: &str = r#"{ type = "reshape", shape = [1, 8, 8] }, { type = "conv2d", in = 1, out = 6, kernel = 3, padding = 1 },
  { type = "relu" }, { type = "conv2d", in = 6, out = 8, kernel = 3, padding = 1 }, { type = "relu" },
  { type = "global_avgpool" }, { type = "linear", in = 8, out = 10 }"#;
const CONV_FLATTEN_LINEAR: &str = r#"{ type = "reshape", shape = [1, 8, 8] }, { type = "conv2d", in = 1, out = 6, kernel = 3, padding = 1 },
  { type = "relu" }, { type = "maxpool2d", kernel = 2 }, { type = "flatten" }, { type = "linear", in = 96, out = 16 },
  { type = "relu" }, { type = "linear", in = 16, out = 10 }"#;
/// Sigmoid maps a removed (zero) channel to 0.5, not 0: the next layer's columns must go too.
const LINEAR_LINEAR: &str = r#"{ type = "linear", in = 64, out = 32 }, { type = "tanh" }, { type = "linear", in = 32, out = 16 },
  { type = "sigmoid" }, { type = "dropout", p = 0.1 }, { type = "linear", in = 16, out = 10 }"#;
const BATCHNORM: &str = r#"{ type = "reshape", shape = [1, 8, 8] }, { type = "conv2d", in = 1, out = 6, kernel = 3, padding = 1, bias = false },
  { type = "batchnorm2d", features = 6 }, { type = "relu" }, { type = "avgpool2d", kernel = 2 }, { type = "flatten" },
  { type = "batchnorm1d", features = 96 }, { type = "linear", in = 96, out = 12 }, { type = "batchnorm1d", features = 12 },
  { type = "relu" }, { type = "linear", in = 12, out = 10 }"#;
const RESIDUAL: &str = r#"{ type = "reshape", shape = [1, 8, 8] }, { type = "conv2d", in = 1, out = 6, kernel = 3, padding = 1 },
  { type = "relu" }, { type = "residual", layers = [{ type = "conv2d", in = 6, out = 6, kernel = 3, padding = 1 },
  { type = "batchnorm2d", features = 6 }, { type = "relu" }, { type = "conv2d", in = 6, out = 6, kernel = 3, padding = 1 }] },
  { type = "relu" }, { type = "global_avgpool" }, { type = "linear", in = 6, out = 10 }"#;
const RESIDUAL_PROJECTION: &str = r#"{ type = "reshape", shape = [1, 8, 8] }, { type = "conv2d", in = 1, out = 6, kernel = 3, padding = 1 },
  { type = "batchnorm2d", features = 6 }, { type = "relu" },
  { type = "residual", layers = [{ type = "conv2d", in = 6, out = 8, kernel = 3, stride = 2, padding = 1 },
  { type = "batchnorm2d", features = 8 }, { type = "relu" }, { type = "conv2d", in = 8, out = 8, kernel = 3, padding = 1 }],
  projection = { in = 6, out = 8, stride = 2 } }, { type = "relu" }, { type = "global_avgpool" }, { type = "linear", in = 8, out = 10 }"#;

/// The slim artifact, loaded into the slim architecture its metadata names, gives the masked
/// model's logits: slimming removed exactly the masked channels and fixed every shape.
fn slim_equals_masked(layers: &str, sparsity: f64) {
    let _one_job = common::one_job_at_a_time();
    let (masked, masked_tensors, _) = run(&job(layers, sparsity, false, ""));
    let (slim, slim_tensors, metadata) = run(&job(layers, sparsity, true, ""));
    let dense_layers = layers_of(&job(layers, sparsity, false, ""));
    let slim_layers: Vec<LayerSpec> = serde_json::from_str(&metadata[SLIM_LAYERS_KEY]).unwrap();
    assert_ne!(slim_layers, dense_layers, "nothing was cut");
    let masked_model = Sequential::from_state(&dense_layers, &masked_tensors, Device::Cpu).unwrap();
    let slim_model = Sequential::from_state(&slim_layers, &slim_tensors, Device::Cpu).unwrap();
    tch::manual_seed(11);
    let x = Tensor::rand([200, 64], (Kind::Float, Device::Cpu)) * 16.0;
    let a = tch::no_grad(|| masked_model.forward(&x, false).unwrap());
    let b = tch::no_grad(|| slim_model.forward(&x, false).unwrap());
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = a.abs().max().double_value(&[]).max(1.0);
    assert!(diff <= 1e-5 * scale, "slim logits differ from masked ones by {diff} (scale {scale})");
    // The same training either way; the accuracy is the masked model's.
    assert_eq!(masked.report.final_val_accuracy, slim.report.final_val_accuracy);

    // Exact-k per pruned space, the classifier untouched; smaller in parameters and FLOPs.
    let report = slim.report.channels.as_ref().expect("a channel report");
    assert!(report.slim);
    let graph = ChannelGraph::of_sequential(&dense_layers);
    for layer in &report.layers {
        let link = graph.layers.iter().find(|l| l.layer == layer.layer).unwrap();
        let space = &graph.spaces[link.space.unwrap()];
        let removed = layer.removed.len();
        if space.pinned.is_some() {
            assert_eq!(removed, 0, "{} is pinned", layer.layer);
            assert_eq!(layer.shape_before[0], layer.shape_after[0]);
        } else {
            assert_eq!(space.channels - removed, keep_count(space.channels, sparsity as f32), "{}", layer.layer);
            assert!(layer.shape_after[0] < layer.shape_before[0], "{}: {:?}", layer.layer, layer);
        }
    }
    assert!(report.params_after < report.params_before, "{report:?}");
    // The report's shapes and counts are the slim artifact's.
    for layer in &report.layers {
        let (_, w) = slim_tensors.iter().find(|(n, _)| *n == format!("{}.weight", layer.layer)).unwrap();
        assert_eq!(layer.shape_after, w.size(), "{}", layer.layer);
    }
    assert_eq!(report.params_after, slim_tensors.iter().map(|(_, t)| t.numel() as u64).sum::<u64>());
    assert!(report.flops_after.unwrap() < report.flops_before.unwrap(), "{report:?}");
    assert!(slim.report.dense_bytes < masked.report.dense_bytes);
    // The masked artifact keeps the dense shapes with whole channels zeroed.
    let unpruned = masked_tensors.iter().find(|(n, _)| n.ends_with("weight")).unwrap();
    assert_eq!(unpruned.1.size()[0] as usize, graph.spaces[0].channels);
}

#[test]
fn conv_conv_slim_equals_masked() {
    slim_equals_masked(CONV_CONV, 0.5);
}

#[test]
fn conv_flatten_linear_slim_equals_masked() {
    slim_equals_masked(CONV_FLATTEN_LINEAR, 0.5);
}

#[test]
fn linear_linear_slim_equals_masked() {
    slim_equals_masked(LINEAR_LINEAR, 0.7);
}

#[test]
fn batchnorm_slim_equals_masked() {
    slim_equals_masked(BATCHNORM, 0.5);
}

#[test]
fn residual_slim_equals_masked() {
    slim_equals_masked(RESIDUAL, 0.5);
}

#[test]
fn residual_with_projection_slim_equals_masked() {
    slim_equals_masked(RESIDUAL_PROJECTION, 0.6);
}

#[test]
fn global_scope_ranks_channels_across_layers_and_keeps_one_per_layer() {
    let _one_job = common::one_job_at_a_time();
    let extra = "scope = \"global\"\nchannel_score = \"l1\"";
    let (outcome, _, _) = run(&job(CONV_FLATTEN_LINEAR, 0.9, true, extra));
    let report = outcome.report.channels.unwrap();
    let pruned: Vec<_> = report.layers.iter().filter(|l| l.layer != "7").collect();
    let total: usize = pruned.iter().map(|l| l.shape_before[0] as usize).sum();
    let removed: usize = pruned.iter().map(|l| l.removed.len()).sum();
    assert_eq!(total - removed, keep_count(total, 0.9), "{report:?}");
    assert!(pruned.iter().all(|l| l.shape_after[0] >= 1));
}

#[test]
fn resume_with_channel_pruning_is_bitwise_identical() {
    let toml = job(BATCHNORM, 0.5, true, "");
    let job = spec(&toml);
    let _one_job = common::one_job_at_a_time();
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = run_job(&job, &inputs(whole_dir.path()), &mut VecSink::default(), &StopFlag::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = StopFlag::default();
    let mut sink = StoppingSink { dir: dir.path().to_path_buf(), events: vec![], stop_at: 14, stop: stop.clone() };
    let err = run_job(&job, &inputs(dir.path()), &mut sink, &stop).unwrap_err();
    assert!(matches!(err, prune_engine::EngineError::Stopped { .. }), "{err}");
    let (step, path) = sink.last_checkpoint().unwrap();
    assert_eq!(step, 14, "a checkpoint after channels were removed");
    let mut resumed_inputs = inputs(dir.path());
    resumed_inputs.resume_from = Some(path);
    let resumed = run_job(&job, &resumed_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
    assert_eq!(whole.artifacts[0].sha256, resumed.artifacts[0].sha256, "resumed artifact differs");
    assert_eq!(whole.report.channels, resumed.report.channels);
}

/// Ties: identical channels; the lower index is kept.
#[test]
fn one_shot_ties_keep_the_lower_channels() {
    let _one_job = common::one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Row scores (x8) 1, 3, 1, 3, 1, 1, 3, 1: at 50% the three 3s stay and one of the five tied
    // 1s, the lowest index.
    let w0: Vec<f32> = (0..8).flat_map(|r| vec![[1.0, 3.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0][r]; 64]).collect();
    let tensors = vec![
        ("0.weight".to_string(), Tensor::from_slice(&w0).reshape([8, 64])),
        ("0.bias".to_string(), Tensor::zeros([8], (Kind::Float, Device::Cpu))),
        ("2.weight".to_string(), Tensor::ones([10, 8], (Kind::Float, Device::Cpu))),
        ("2.bias".to_string(), Tensor::zeros([10], (Kind::Float, Device::Cpu))),
    ];
    let weights = dir.path().join("w.safetensors");
    std::fs::write(&weights, prune_engine::tensors::write(&tensors, Default::default()).unwrap()).unwrap();
    let toml = r#"
[model]
sequential = [{ type = "linear", in = 64, out = 8 }, { type = "relu" }, { type = "linear", in = 8, out = 10 }]
weights = "w.safetensors"
[pruning]
structure = "channel"
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
[export]
compression = "none"
slim = true
"#;
    let mut job_inputs = inputs(dir.path());
    job_inputs.weights_file = Some(weights);
    let outcome = run_job(&spec(toml), &job_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
    let report = outcome.report.channels.unwrap();
    assert_eq!(report.layers[0].removed, [2, 4, 5, 7]);
    assert_eq!(report.layers[1].shape_after, [10, 4]);
    assert_eq!(report.flops_before, None, "no data, no input shape");
}

/// A TorchScript-free user model: a state dict pruned one-shot gets whole rows zeroed, its
/// last weight (the classifier) kept, and the report lists what could be cut.
#[test]
fn state_dict_channels_are_zeroed_and_listed() {
    let _one_job = common::one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(5);
    let tensors = vec![
        ("body.weight".to_string(), Tensor::randn([6, 4, 3, 3], (Kind::Float, Device::Cpu))),
        ("body.bias".to_string(), Tensor::randn([6], (Kind::Float, Device::Cpu))),
        ("head.weight".to_string(), Tensor::randn([3, 6], (Kind::Float, Device::Cpu))),
    ];
    let model = dir.path().join("m.safetensors");
    std::fs::write(&model, prune_engine::tensors::write(&tensors, Default::default()).unwrap()).unwrap();
    let toml = r#"
[model]
file = "m.safetensors"
[pruning]
structure = "channel"
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
[export]
compression = "none"
"#;
    let mut job_inputs = inputs(dir.path());
    job_inputs.model_file = Some(model);
    let outcome = run_job(&spec(toml), &job_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
    let report = outcome.report.channels.clone().unwrap();
    assert!(report.note.as_deref().unwrap().contains("zeroed"));
    assert_eq!(report.layers.len(), 2);
    assert_eq!(report.layers[0].removed.len(), 3);
    assert!(report.layers[1].removed.is_empty(), "the classifier is kept");
    let out = read_artifact(&common::artifact_path(dir.path(), &outcome.artifacts[0])).unwrap();
    let get = |name: &str| &out.iter().find(|(n, _)| n == name).unwrap().1;
    let (body, bias) = (get("body.weight"), get("body.bias"));
    for c in 0..6i64 {
        let row_zero = body.get(c).abs().sum(Kind::Float).double_value(&[]) == 0.0;
        assert_eq!(row_zero, report.layers[0].removed.contains(&c), "channel {c}");
        assert_eq!(bias.double_value(&[c]) == 0.0, row_zero, "bias {c}");
    }
    assert_eq!(get("head.weight").count_nonzero(None::<i64>).int64_value(&[]), 18);
}

/// With `formats = ["safetensors", "torchscript"]` a slim built-in model is also traced: the
/// TorchScript module computes what the slim safetensors model does.
#[test]
fn slim_model_traces_to_torchscript() {
    let _one_job = common::one_job_at_a_time();
    let toml = job(RESIDUAL_PROJECTION, 0.5, true, "")
        .replace("[export]", "[export]\nformats = [\"safetensors\", \"torchscript\"]");
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_job(&spec(&toml), &inputs(dir.path()), &mut VecSink::default(), &StopFlag::default()).unwrap();
    let formats: Vec<&str> = outcome.artifacts.iter().map(|a| a.format.as_str()).collect();
    assert_eq!(formats, ["safetensors", "torchscript"]);
    let path = common::artifact_path(dir.path(), &outcome.artifacts[0]);
    let (_, metadata) = prune_engine::tensors::read(&std::fs::read(&path).unwrap()).unwrap();
    let slim_layers: Vec<LayerSpec> = serde_json::from_str(&metadata[SLIM_LAYERS_KEY]).unwrap();
    let slim = Sequential::from_state(&slim_layers, &read_artifact(&path).unwrap(), Device::Cpu).unwrap();
    let module = tch::CModule::load(common::artifact_path(dir.path(), &outcome.artifacts[1])).unwrap();
    tch::manual_seed(4);
    let x = Tensor::rand([50, 64], (Kind::Float, Device::Cpu)) * 16.0;
    let a = tch::no_grad(|| slim.forward(&x, false).unwrap());
    let b = tch::no_grad(|| module.forward_ts(&[&x]).unwrap());
    assert_eq!(b.size(), [50, 10]);
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "traced module differs by {diff}");
}

/// A sparsity that would empty a layer keeps one channel in each (exact-k's floor of one), and
/// the slim model still runs.
#[test]
fn near_total_sparsity_keeps_one_channel_per_layer() {
    let _one_job = common::one_job_at_a_time();
    let toml = job(RESIDUAL_PROJECTION, 0.99, true, "");
    let (outcome, tensors, metadata) = run(&toml);
    let report = outcome.report.channels.unwrap();
    for layer in report.layers.iter().filter(|l| l.layer != "7") {
        assert_eq!(layer.shape_after[0], 1, "{layer:?}");
    }
    let slim_layers: Vec<LayerSpec> = serde_json::from_str(&metadata[SLIM_LAYERS_KEY]).unwrap();
    let slim = Sequential::from_state(&slim_layers, &tensors, Device::Cpu).unwrap();
    let out = tch::no_grad(|| slim.forward(&Tensor::ones([3, 64], (Kind::Float, Device::Cpu)), false).unwrap());
    assert_eq!(out.size(), [3, 10]);
}
