//! Sensitivity analysis and budgets on the shipped digits data: exact-k levels, the plot and
//! the suggested overrides, size and accuracy budgets met (or failed, saying how close), and a
//! bitwise-identical resume across the budget's decision.

mod common;

use common::{artifact_path, inputs, spec, StoppingSink};
use prune_core::job::{Data, DataSource};
use prune_core::mask::element_mask;
use prune_core::spec::LayerSpec;
use prune_engine::export::read_artifact;
use prune_engine::sequential::Sequential;
use prune_engine::{run_job, EngineError, JobOutcome, StopFlag, VecSink};
use tch::{Device, Kind};

const MLP: &str = r#"[model]
sequential = [ { type = "linear", in = 64, out = 128 }, { type = "relu" }, { type = "linear", in = 128, out = 10 } ]
[data]
builtin = "digits"
validation_split = 0.1
"#;

/// 1617 training samples / 32 = 51 steps per epoch.
const TRAINING: &str = r#"[training]
epochs = 40
batch_size = 32
optimizer = "sgd"
momentum = 0.9
learning_rate = 0.05
seed = 0
checkpoint_every = 400
"#;

const SCHEDULE: &str = r#"schedule = { kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 1020, end_step = 1275, power = 3, frequency = 51 }"#;

const BITMASK_ZSTD: &str =
    "[export]\nformats = [\"safetensors\"]\ncompression = \"zstd\"\nsparse_format = \"bitmask\"\n";

fn job(training: &str, pruning: &str, rest: &str) -> String {
    format!("{MLP}{training}[pruning]\n{SCHEDULE}\n{pruning}\n{rest}")
}

fn run(toml: &str) -> (tempfile::TempDir, Result<JobOutcome, EngineError>) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_job(&spec(toml), &inputs(dir.path()), &mut VecSink::default(), &StopFlag::default());
    (dir, out)
}

fn layers() -> Vec<LayerSpec> {
    spec(&job(TRAINING, "", "")).model.sequential.unwrap()
}

/// Accuracy of a safetensors artifact of the MLP, unpacked, on all 1797 digits.
fn accuracy_on_all_digits(path: &std::path::Path) -> f64 {
    let state = read_artifact(path).unwrap();
    let model = Sequential::from_state(&layers(), &state, Device::Cpu).unwrap();
    let data = Data { source: DataSource::Digits, validation_split: 0.0 };
    let all = prune_engine::data::load(&data, None, 0, Device::Cpu).unwrap().train;
    assert_eq!(all.len(), 1797);
    let out = tch::no_grad(|| model.forward(&all.x, false)).unwrap();
    let correct = out.argmax(-1, false).eq_tensor(&all.y).sum(Kind::Float);
    f64::try_from(correct).unwrap() / 1797.0
}

#[test]
fn sensitivity_levels_are_exact_k_one_shot_masks_with_a_plot_and_overrides() {
    let _one_job = common::one_job_at_a_time();
    let training = TRAINING.replace("epochs = 40", "epochs = 8");
    let toml = job(&training, "", "[sensitivity]\nlevels = [0.9, 0.5, 0.8]\n[export]\nformats = [\"safetensors\"]\n");
    let (dir, out) = run(&toml);
    let out = out.unwrap();
    let r = &out.report;
    // Tensor by tensor, levels ascending.
    let seen: Vec<(&str, f64)> = r.sensitivity.iter().map(|p| (p.tensor.as_str(), p.sparsity)).collect();
    assert_eq!(
        seen,
        [
            ("0.weight", 0.5),
            ("0.weight", 0.8),
            ("0.weight", 0.9),
            ("2.weight", 0.5),
            ("2.weight", 0.8),
            ("2.weight", 0.9)
        ]
    );
    // The dense model is exported: the levels are measured against its weights, exactly k each.
    let safetensors = out.artifacts.iter().find(|a| a.format == "safetensors").unwrap();
    let weights = read_artifact(&artifact_path(dir.path(), safetensors)).unwrap();
    for p in &r.sensitivity {
        let (_, w) = weights.iter().find(|(n, _)| *n == p.tensor).unwrap();
        let values = Vec::<f32>::try_from(w.flatten(0, -1)).unwrap();
        assert!(values.iter().all(|&v| v != 0.0), "the exported model is dense");
        let zeros = element_mask(&values, p.sparsity as f32).iter().filter(|&&m| m == 0.0).count() as u64;
        assert_eq!(p.params_removed, zeros, "{} at {}", p.tensor, p.sparsity);
        assert!(p.accuracy.unwrap() <= 1.0 && p.loss.is_finite());
    }
    let dense = r.dense_val_accuracy.unwrap();
    assert_eq!(r.final_val_accuracy, Some(dense), "the model is not pruned");
    // Pruning the 128 x 10 classifier to 90% costs more than the first layer to 50%.
    let at =
        |t: &str, s: f64| r.sensitivity.iter().find(|p| p.tensor == t && p.sparsity == s).unwrap().accuracy.unwrap();
    assert!(at("0.weight", 0.5) >= at("2.weight", 0.9), "{:?}", r.sensitivity);

    let plot = out.artifacts.iter().find(|a| a.format == "sensitivity_plot").expect("a plot artifact");
    assert_eq!(plot.compression, "none");
    let bytes = std::fs::read(artifact_path(dir.path(), plot)).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1000, 700));

    let suggested = r.suggested_overrides.as_deref().unwrap();
    let file = out.artifacts.iter().find(|a| a.format == "suggested_overrides").unwrap();
    assert_eq!(std::fs::read_to_string(artifact_path(dir.path(), file)).unwrap(), suggested);
    // Pasted under the job's [pruning], it is a valid job with one override per tensor.
    let pasted = spec(&job(TRAINING, suggested, ""));
    let patterns: Vec<&str> = pasted.pruning.overrides.iter().map(|o| o.pattern.as_str()).collect();
    assert_eq!(patterns, [r"^0\.weight$", r"^2\.weight$"]);
}

#[test]
fn a_size_budget_comes_back_within_it_and_accurate() {
    let _one_job = common::one_job_at_a_time();
    let (dir, out) = run(&job(TRAINING, "budget = { max_bytes = 5000 }", BITMASK_ZSTD));
    let out = out.unwrap();
    let budget = out.report.budget.as_deref().unwrap();
    eprintln!("{budget:#?}");
    let artifact = &out.artifacts[0];
    assert!(artifact.bytes <= 5000, "{} bytes", artifact.bytes);
    assert_eq!(budget.artifact_bytes, artifact.bytes);
    assert_eq!(budget.chosen.len(), 2);
    let accuracy = accuracy_on_all_digits(&artifact_path(dir.path(), artifact));
    eprintln!("accuracy on all digits {accuracy:.4}");
    assert!(accuracy >= 0.9, "{accuracy}");
    assert!(!out.report.sensitivity.is_empty());
}

#[test]
fn an_accuracy_budget_is_smaller_than_uniform_80_percent_within_one_point() {
    let _one_job = common::one_job_at_a_time();
    let (_, uniform) = run(&job(TRAINING, "", BITMASK_ZSTD));
    let uniform = uniform.unwrap();
    let (_, budgeted) = run(&job(TRAINING, "budget = { max_accuracy_drop = 0.01 }", BITMASK_ZSTD));
    let budgeted = budgeted.unwrap();
    let b = budgeted.report.budget.as_deref().unwrap();
    eprintln!("uniform {} bytes, budget {b:#?}", uniform.artifacts[0].bytes);
    assert!(budgeted.artifacts[0].bytes < uniform.artifacts[0].bytes);
    let (dense, final_acc) = (b.dense_accuracy.unwrap(), budgeted.report.final_val_accuracy.unwrap());
    assert!(final_acc >= dense - 0.01 - 1e-9, "{final_acc} vs dense {dense}");
    assert_eq!(b.accuracy, Some(final_acc));
    assert_eq!(budgeted.report.dense_val_accuracy, Some(dense), "one dense figure in the report");
    assert!(b.dense_loss.is_some_and(|l| l.is_finite() && l > 0.0), "{:?}", b.dense_loss);
}

#[test]
fn an_unreachable_size_fails_with_the_smallest_size_reached() {
    let _one_job = common::one_job_at_a_time();
    let training = TRAINING.replace("epochs = 40", "epochs = 0");
    let (_, out) = run(&job(&training, "budget = { max_bytes = 200 }", BITMASK_ZSTD));
    let err = out.unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, EngineError::Budget(_)), "{text}");
    assert!(text.contains("max_bytes = 200 cannot be met") && text.contains("smallest"), "{text}");
}

#[test]
fn a_budget_job_resumes_bitwise_across_its_plan() {
    let _one_job = common::one_job_at_a_time();
    let toml = job(TRAINING, "budget = { max_bytes = 5000 }", BITMASK_ZSTD);
    let job = spec(&toml);
    let (whole_dir, whole) = run(&toml);
    let whole = whole.unwrap();
    // Stopped after the plan (step 1020): the checkpoint at 1200 carries it.
    let dir = tempfile::tempdir().unwrap();
    let stop = StopFlag::default();
    let mut sink = StoppingSink { dir: dir.path().to_path_buf(), events: vec![], stop_at: 1200, stop: stop.clone() };
    let err = run_job(&job, &inputs(dir.path()), &mut sink, &stop).unwrap_err();
    assert!(matches!(err, EngineError::Stopped { .. }), "{err}");
    let (step, path) = sink.last_checkpoint().unwrap();
    assert_eq!(step, 1200);
    let mut resumed_inputs = inputs(dir.path());
    resumed_inputs.resume_from = Some(path);
    let resumed = run_job(&job, &resumed_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
    assert_eq!(whole.report.budget, resumed.report.budget);
    let a = std::fs::read(artifact_path(whole_dir.path(), &whole.artifacts[0])).unwrap();
    let b = std::fs::read(artifact_path(dir.path(), &resumed.artifacts[0])).unwrap();
    assert_eq!(a, b, "resumed artifact differs");
}

#[test]
fn each_method_measures_its_own_masks() {
    let _one_job = common::one_job_at_a_time();
    let one_shot = TRAINING.replace("epochs = 40", "epochs = 0");
    let sensitivity = "[sensitivity]\nlevels = [0.5, 0.75]\n[export]\nformats = [\"safetensors\"]\n";
    let removed = |pruning: &str| -> Vec<(String, f64, u64)> {
        let (_, out) = run(&job(&one_shot, pruning, sensitivity));
        out.unwrap().report.sensitivity.into_iter().map(|p| (p.tensor, p.sparsity, p.params_removed)).collect()
    };
    // m-by-n ignores the levels: one point per tensor at m/n.
    assert_eq!(
        removed("m_by_n = [2, 4]"),
        [("0.weight".to_string(), 0.5, 128 * 64 / 2), ("2.weight".to_string(), 0.5, 10 * 128 / 2)]
    );
    // Blocks of 1 x 16: whole blocks removed, exactly k of them.
    for (tensor, sparsity, n) in removed("block_size = [1, 16]") {
        let blocks = if tensor == "0.weight" { 128 * 64 / 16 } else { 10 * 128 / 16 };
        let kept = prune_core::mask::keep_count(blocks, sparsity as f32) as u64;
        assert_eq!(n, (blocks as u64 - kept) * 16, "{tensor} at {sparsity}");
    }
    // Channels: whole output rows.
    for (tensor, sparsity, n) in removed("structure = \"channel\"") {
        let (rows, cols) = if tensor == "0.weight" { (128, 64) } else { (10, 128) };
        let kept = prune_core::mask::keep_count(rows, sparsity as f32) as u64;
        assert_eq!(n, (rows as u64 - kept) * cols, "{tensor} at {sparsity}");
    }
}
