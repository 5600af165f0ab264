//! End to end on the shipped digits data: accuracy after pruning, exact sparsity, and a
//! bitwise-identical resume from a checkpoint.

mod common;

use common::{inputs, spec, StoppingSink};
use prune_engine::{run_job, Event, StopFlag, VecSink};

/// The seed guide's recipe on digits: train dense, then PolynomialDecay 0.5 -> 0.8, fine-tune.
/// 1437 training samples / batch 32 = 45 steps per epoch; 20 dense epochs (900 steps), pruning
/// from step 900 to 1125 every 45 steps, then 15 more epochs at 80%.
const DIGITS_JOB: &str = r#"
[model]
sequential = [ { type = "linear", in = 64, out = 128 }, { type = "relu" }, { type = "linear", in = 128, out = 10 } ]
[data]
builtin = "digits"
validation_split = 0.2
[training]
epochs = 40
batch_size = 32
optimizer = "sgd"
momentum = 0.9
learning_rate = 0.05
seed = 1
checkpoint_every = 500
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 900, end_step = 1125, power = 3, frequency = 45 }
[export]
formats = ["safetensors"]
compression = "zstd"
sparse_format = "bitmask"
"#;

#[test]
fn digits_keeps_accuracy_at_80_percent() {
    let _one_job = common::one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = VecSink::default();
    let out = run_job(&spec(DIGITS_JOB), &inputs(dir.path()), &mut sink, &StopFlag::default()).unwrap();
    let r = &out.report;
    let dense = r.dense_val_accuracy.expect("dense warm-up accuracy");
    let pruned = r.final_val_accuracy.unwrap();
    eprintln!("dense {dense:.4} pruned {pruned:.4} gzip(dense) {} artifact {:?}", r.gzip_dense_bytes, r.artifact_bytes);
    assert!(dense > 0.93, "dense model trains: {dense}");
    assert!(pruned >= dense - 0.01, "pruned accuracy {pruned} within 1 point of dense {dense}");
    for t in r.tensors.iter().filter(|t| t.pruned) {
        assert!((t.sparsity - 0.8).abs() < 1e-3, "{} at {}", t.name, t.sparsity);
    }
    let pruned_names: Vec<_> = r.tensors.iter().filter(|t| t.pruned).map(|t| t.name.as_str()).collect();
    assert_eq!(pruned_names, ["0.weight", "2.weight"]);
    assert!(
        (r.artifact_bytes["safetensors"] as f64) < 0.8 * r.gzip_dense_bytes as f64,
        "bitmask+zstd is well under gzip(dense)"
    );
    // Sparsity metrics recorded at each mask update, with that step.
    let updates: Vec<i64> = sink
        .0
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { points } => points
                .iter()
                .find(|p| p.name == "sparsity/0.weight" && p.step % 45 == 0 && p.step >= 900)
                .map(|p| p.step),
            _ => None,
        })
        .collect();
    assert!(updates.contains(&900) && updates.contains(&1125), "{updates:?}");
}

/// Dropout makes the run depend on the per-step random streams too.
const RESUME_JOB: &str = r#"
[model]
sequential = [ { type = "linear", in = 64, out = 48 }, { type = "relu" }, { type = "dropout", p = 0.2 }, { type = "linear", in = 48, out = 10 } ]
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
schedule = { kind = "polynomial_decay", initial_sparsity = 0.3, final_sparsity = 0.7, begin_step = 5, end_step = 65, frequency = 10 }
[export]
compression = "none"
"#;

#[test]
fn resume_is_bitwise_identical() {
    let _one_job = common::one_job_at_a_time();
    for optimizer in ["sgd", "adam", "adamw"] {
        let job = spec(
            &RESUME_JOB.replace("optimizer = \"sgd\"", &format!("optimizer = \"{optimizer}\"\nweight_decay = 0.01")),
        );
        let whole_dir = tempfile::tempdir().unwrap();
        let whole = run_job(&job, &inputs(whole_dir.path()), &mut VecSink::default(), &StopFlag::default()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let stop = StopFlag::default();
        let mut sink = StoppingSink { dir: dir.path().to_path_buf(), events: vec![], stop_at: 40, stop: stop.clone() };
        let err = run_job(&job, &inputs(dir.path()), &mut sink, &stop).unwrap_err();
        assert!(matches!(err, prune_engine::EngineError::Stopped { .. }), "{err}");
        let (step, path) = sink.last_checkpoint().unwrap();
        assert_eq!(step, 40);
        let mut resumed_inputs = inputs(dir.path());
        resumed_inputs.resume_from = Some(path);
        let resumed = run_job(&job, &resumed_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
        assert_eq!(whole.artifacts[0].sha256, resumed.artifacts[0].sha256, "{optimizer}: resumed artifact differs");
        let a = std::fs::read(common::artifact_path(whole_dir.path(), &whole.artifacts[0])).unwrap();
        let b = std::fs::read(common::artifact_path(dir.path(), &resumed.artifacts[0])).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn stop_with_checkpoint_writes_the_current_step() {
    let _one_job = common::one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let stop = StopFlag::default();
    stop.request(prune_engine::StopReason::Checkpoint);
    let mut sink =
        StoppingSink { dir: dir.path().to_path_buf(), events: vec![], stop_at: i64::MAX, stop: stop.clone() };
    let err = run_job(&spec(RESUME_JOB), &inputs(dir.path()), &mut sink, &stop).unwrap_err();
    assert!(matches!(err, prune_engine::EngineError::Stopped { step: 0, .. }), "{err}");
    assert_eq!(sink.last_checkpoint().unwrap().0, 0);
}
