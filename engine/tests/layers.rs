//! Jobs on models with BatchNorm and residual blocks: a bitwise-identical resume (the running
//! statistics are checkpointed), buffers exported and never pruned, and inference timings in
//! the report.

mod common;

use common::{inputs, spec, StoppingSink};
use prune_engine::export::read_artifact;
use prune_engine::{run_job, StopFlag, VecSink};

/// 1617 training samples / batch 50 = 33 steps per epoch, 99 steps; checkpoints every 10.
/// Dropout inside the residual block makes the run depend on the per-step random streams too.
const BN_JOB: &str = r#"
[model]
sequential = [
  { type = "reshape", shape = [1, 8, 8] },
  { type = "conv2d", in = 1, out = 6, kernel = 3, padding = 1, bias = false },
  { type = "batchnorm2d", features = 6 },
  { type = "relu" },
  { type = "residual", layers = [
    { type = "conv2d", in = 6, out = 8, kernel = 3, stride = 2, padding = 1 },
    { type = "batchnorm2d", features = 8 },
    { type = "dropout", p = 0.1 },
  ], projection = { in = 6, out = 8, stride = 2, bias = false } },
  { type = "avgpool2d", kernel = 2 },
  { type = "global_avgpool" },
  { type = "batchnorm1d", features = 8 },
  { type = "linear", in = 8, out = 10 },
]
[data]
builtin = "digits"
validation_split = 0.1
[training]
epochs = 3
batch_size = 50
optimizer = "sgd"
momentum = 0.9
learning_rate = 0.05
seed = 7
checkpoint_every = 10
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.3, final_sparsity = 0.6, begin_step = 5, end_step = 65, frequency = 10 }
[export]
compression = "none"
"#;

#[test]
fn resume_with_batchnorm_is_bitwise_identical() {
    let _one_job = common::one_job_at_a_time();
    let job = spec(BN_JOB);
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = run_job(&job, &inputs(whole_dir.path()), &mut VecSink::default(), &StopFlag::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let stop = StopFlag::default();
    let mut sink = StoppingSink { dir: dir.path().to_path_buf(), events: vec![], stop_at: 40, stop: stop.clone() };
    let err = run_job(&job, &inputs(dir.path()), &mut sink, &stop).unwrap_err();
    assert!(matches!(err, prune_engine::EngineError::Stopped { .. }), "{err}");
    let (step, path) = sink.last_checkpoint().unwrap();
    assert_eq!(step, 40, "a mid-epoch checkpoint");
    let mut resumed_inputs = inputs(dir.path());
    resumed_inputs.resume_from = Some(path);
    let resumed = run_job(&job, &resumed_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
    assert_eq!(whole.artifacts[0].sha256, resumed.artifacts[0].sha256, "resumed artifact differs");

    // The artifact holds the running statistics as trained: every step counted, means moved.
    let tensors = read_artifact(&common::artifact_path(dir.path(), &resumed.artifacts[0])).unwrap();
    let get = |name: &str| &tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1;
    assert_eq!(get("2.num_batches_tracked").int64_value(&[]), 99);
    assert_eq!(get("4.layers.1.num_batches_tracked").int64_value(&[]), 99);
    assert!(get("2.running_mean").abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
    assert_eq!(get("4.projection.weight").size(), [8, 6, 1, 1]);

    // Buffers are reported, never pruned; BatchNorm weights are rank 1, so not by default.
    let report = &resumed.report;
    let pruned: Vec<&str> = report.tensors.iter().filter(|t| t.pruned).map(|t| t.name.as_str()).collect();
    assert_eq!(pruned, ["1.weight", "4.layers.0.weight", "4.projection.weight", "8.weight"]);
    for t in report.tensors.iter().filter(|t| t.pruned) {
        assert!((t.sparsity - 0.6).abs() < 0.02, "{} at {}", t.name, t.sparsity);
    }
    let running_var = report.tensors.iter().find(|t| t.name == "7.running_var").expect("buffers are reported");
    assert!(!running_var.pruned && running_var.sparsity == 0.0);

    // Timed at batch 1 and 50; the figures are the machine's, so only their presence is checked.
    let sizes: Vec<i64> = report.inference.iter().map(|t| t.batch_size).collect();
    assert_eq!(sizes, [1, 50], "{:?}", report.inference_note);
    assert!(report.inference.iter().all(|t| t.runs >= 3 && t.dense_ms > 0.0 && t.pruned_ms > 0.0));
}

/// An `include` that matches everything selects BatchNorm's weights and biases (parameters)
/// but never its running statistics (buffers, which no rule sees).
#[test]
fn include_everything_prunes_parameters_not_buffers() {
    let _one_job = common::one_job_at_a_time();
    let job = spec(
        r#"
[model]
sequential = [ { type = "linear", in = 64, out = 16 }, { type = "batchnorm1d", features = 16 }, { type = "linear", in = 16, out = 10 } ]
[pruning]
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
include = [".*"]
[export]
compression = "none"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run_job(&job, &inputs(dir.path()), &mut VecSink::default(), &StopFlag::default()).unwrap();
    let pruned: Vec<&str> = out.report.tensors.iter().filter(|t| t.pruned).map(|t| t.name.as_str()).collect();
    assert_eq!(pruned, ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]);
    let buffers: Vec<&str> = out.report.tensors[6..].iter().map(|t| t.name.as_str()).collect();
    assert_eq!(buffers, ["1.running_mean", "1.running_var", "1.num_batches_tracked"]);
    // running_var starts at 1 and one-shot pruning does not touch it.
    assert_eq!(out.report.tensors[7].nonzero, 16);
    // A one-shot job without data, starting with a linear layer: timed on zeros of [64].
    assert_eq!(out.report.inference.len(), 2, "{:?}", out.report.inference_note);
}
