//! The streamed one-shot path (`prune_engine::streamed`, no libtorch) against the libtorch path
//! (`train::run`) on the same state dicts: identical masked tensors, byte for byte (signed zeros
//! included), identical reports and sparsities, for f32, bf16 and f16, with ties, under every
//! pruning method, overrides and global scope.

mod common;

use common::{inputs, one_job_at_a_time, spec};
use prune_core::bitmask::{read_safetensors, unpack_safetensors, write_safetensors, TensorData};
use prune_core::compress;
use prune_engine::{streamed, train, Event, JobInputs, JobOutcome, StopFlag, VecSink};
use safetensors::Dtype;

/// Values on a coarse grid (exact in bf16 and f16) so that many magnitudes tie.
fn grid(n: usize, salt: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + salt * 31) % 23) as f32 * 0.125 - 1.375).collect()
}

fn bytes(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect(),
        _ => unreachable!(),
    }
}

fn tensor(name: &str, dtype: Dtype, shape: &[usize], salt: usize) -> TensorData {
    let n = shape.iter().product();
    TensorData::new(name, dtype, shape.to_vec(), bytes(dtype, &grid(n, salt))).unwrap()
}

fn state_dict(dir: &std::path::Path) -> std::path::PathBuf {
    let tensors = vec![
        tensor("enc.weight", Dtype::F32, &[48, 64], 1),
        tensor("enc.bias", Dtype::F32, &[48], 2),
        tensor("mid.weight", Dtype::BF16, &[32, 48], 3),
        tensor("conv.weight", Dtype::F16, &[8, 12, 3, 3], 4),
        tensor("head.weight", Dtype::F16, &[10, 32], 5),
        TensorData::new("steps", Dtype::I64, vec![2], [3i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect())
            .unwrap(),
    ];
    let path = dir.join("model.safetensors");
    std::fs::write(&path, write_safetensors(&tensors, None).unwrap()).unwrap();
    path
}

fn job_inputs(dir: &std::path::Path, model: &std::path::Path) -> JobInputs {
    JobInputs { model_file: Some(model.to_path_buf()), ..inputs(dir) }
}

/// The artifact's tensors, decompressed and unpacked, sorted by name.
fn artifact_tensors(dir: &std::path::Path, outcome: &JobOutcome) -> Vec<TensorData> {
    let path = common::artifact_path(dir, &outcome.artifacts[0]);
    let raw = compress::decompress(&std::fs::read(path).unwrap()).unwrap();
    let (mut tensors, _) = read_safetensors(&unpack_safetensors(&raw).unwrap()).unwrap();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    tensors
}

fn sparsities(sink: &VecSink) -> Vec<(String, f64)> {
    sink.0
        .iter()
        .find_map(|e| match e {
            Event::Progress { sparsity, .. } => Some(sparsity.iter().map(|s| (s.name.clone(), s.sparsity)).collect()),
            _ => None,
        })
        .expect("a progress event")
}

fn both_paths_agree(pruning: &str, sparse_format: &str) {
    let _one = one_job_at_a_time();
    let toml = format!(
        "[model]\nfile = \"model.safetensors\"\n[training]\nepochs = 0\n{pruning}\n[export]\ncompression = \"zstd\"\nsparse_format = \"{sparse_format}\"\n"
    );
    let job = prune_core::validate::validate(&spec(&toml)).unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let model = state_dict(a.path());
    let streamed_inputs = job_inputs(a.path(), &model);
    assert!(streamed::applies(&job, &streamed_inputs));
    let mut streamed_sink = VecSink::default();
    let fast = streamed::run(&job, &streamed_inputs, &mut streamed_sink, &StopFlag::default()).unwrap();
    let mut torch_sink = VecSink::default();
    let slow = train::run(&job, &job_inputs(b.path(), &model), &mut torch_sink, &StopFlag::default()).unwrap();

    let (fast_tensors, slow_tensors) = (artifact_tensors(a.path(), &fast), artifact_tensors(b.path(), &slow));
    assert_eq!(fast_tensors.len(), slow_tensors.len());
    for (f, s) in fast_tensors.iter().zip(&slow_tensors) {
        assert_eq!((&f.name, f.dtype, &f.shape), (&s.name, s.dtype, &s.shape));
        assert!(f.data == s.data, "{pruning} {sparse_format}: tensor {} differs", f.name);
    }
    assert_eq!(fast.report.tensors, slow.report.tensors, "{pruning}");
    assert_eq!(sparsities(&streamed_sink), sparsities(&torch_sink), "{pruning}");
    assert!(fast.report.gzip_dense_bytes > 0);
    assert_eq!(fast.artifacts[0].sparse_format, slow.artifacts[0].sparse_format);
    // Something was actually pruned (a test of equal no-ops would prove nothing).
    assert!(fast.report.tensors.iter().filter(|t| t.pruned).all(|t| t.sparsity > 0.3), "{:?}", fast.report.tensors);
}

#[test]
fn element_wise_layer_scope_with_bias_and_ties() {
    let pruning = "[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.7 }\nprune_bias = true";
    both_paths_agree(pruning, "bitmask");
    both_paths_agree(pruning, "dense");
}

#[test]
fn global_scope_across_dtypes() {
    let pruning = "[pruning]\nscope = \"global\"\nschedule = { kind = \"polynomial_decay\", initial_sparsity = 0.1, final_sparsity = 0.65, begin_step = 0, end_step = 10 }";
    both_paths_agree(pruning, "bitmask");
    both_paths_agree(pruning, "dense");
}

#[test]
fn overrides_blocks_and_m_by_n() {
    let pruning = r#"[pruning]
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
[[pruning.overrides]]
match = "^mid"
block_size = [2, 4]
block_pooling = "max"
schedule = { kind = "constant_sparsity", target_sparsity = 0.75 }
[[pruning.overrides]]
match = "^conv"
m_by_n = [2, 4]
[[pruning.overrides]]
match = "^head"
skip = true"#;
    both_paths_agree(pruning, "bitmask");
}

#[test]
fn nan_weights_are_refused_like_the_libtorch_path() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut values = grid(64, 0);
    values[17] = f32::NAN;
    let t = TensorData::new("w.weight", Dtype::F32, vec![8, 8], bytes(Dtype::F32, &values)).unwrap();
    let model = dir.path().join("model.safetensors");
    std::fs::write(&model, write_safetensors(&[t], None).unwrap()).unwrap();
    let toml = "[model]\nfile = \"model.safetensors\"\n[training]\nepochs = 0\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";
    let job = prune_core::validate::validate(&spec(toml)).unwrap();
    let err = streamed::run(&job, &job_inputs(dir.path(), &model), &mut VecSink::default(), &StopFlag::default())
        .unwrap_err();
    assert!(err.to_string().contains("w.weight holds NaN"), "{err}");
    // Nothing half-written is left where artifacts are served from.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("artifacts")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_cancel_stops_between_tensors_and_publishes_nothing() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let model = state_dict(dir.path());
    let toml = "[model]\nfile = \"model.safetensors\"\n[training]\nepochs = 0\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";
    let job = prune_core::validate::validate(&spec(toml)).unwrap();
    let stop = StopFlag::default();
    stop.request(prune_engine::StopReason::Cancel);
    let err = streamed::run(&job, &job_inputs(dir.path(), &model), &mut VecSink::default(), &stop).unwrap_err();
    assert!(
        matches!(err, prune_engine::EngineError::Stopped { step: 0, reason: prune_engine::StopReason::Cancel }),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("artifacts")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A tracked run's weights (`masks_applied`): the selected tensors are exported exactly as
/// uploaded, whatever their zeros are (here every third element, which no magnitude mask at the
/// schedule's 0.9 would pick), reported as they are, and no step-0 events overwrite what the
/// run's loop reported.
#[test]
fn masks_applied_exports_the_uploaded_zeros() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let thirds = |n: usize| (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 + i as f32 }).collect::<Vec<f32>>();
    let tensors = vec![
        TensorData::new("fc.weight", Dtype::F32, vec![6, 8], bytes(Dtype::F32, &thirds(48))).unwrap(),
        TensorData::new("fc.bias", Dtype::F32, vec![6], bytes(Dtype::F32, &[0.5; 6])).unwrap(),
    ];
    let model = dir.path().join("model.safetensors");
    std::fs::write(&model, write_safetensors(&tensors, None).unwrap()).unwrap();
    let toml = "[model]\nfile = \"model.safetensors\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.9 }\n[export]\ncompression = \"zstd\"\nsparse_format = \"bitmask\"\n";
    let job = prune_core::validate::validate(&spec(toml)).unwrap();
    let inputs = JobInputs { masks_applied: true, ..job_inputs(dir.path(), &model) };
    let mut sink = VecSink::default();
    let outcome = streamed::run(&job, &inputs, &mut sink, &StopFlag::default()).unwrap();
    assert!(sink.0.is_empty(), "events: {:?}", sink.0);
    let exported = artifact_tensors(dir.path(), &outcome);
    let by_name = |name: &str| exported.iter().find(|t| t.name == name).unwrap().data.clone();
    assert_eq!(by_name("fc.weight"), tensors[0].data);
    assert_eq!(by_name("fc.bias"), tensors[1].data);
    let weight = outcome.report.tensors.iter().find(|t| t.name == "fc.weight").unwrap();
    assert!(weight.pruned);
    assert_eq!(weight.nonzero, 32);
    assert!((weight.sparsity - 16.0 / 48.0).abs() < 1e-12, "{weight:?}");

    // Without the flag the same job masks by magnitude at 0.9.
    let again = tempfile::tempdir().unwrap();
    let pruned =
        streamed::run(&job, &job_inputs(again.path(), &model), &mut VecSink::default(), &StopFlag::default()).unwrap();
    let weight = pruned.report.tensors.iter().find(|t| t.name == "fc.weight").unwrap();
    assert!(weight.sparsity > 0.85, "{weight:?}");
}

/// A schedule that prunes nothing, exported as bitmask: packing would make every weight larger,
/// so each is stored dense and the report names them; the artifact is no larger than the dense
/// file and unpacks to the input.
#[test]
fn weights_packing_would_enlarge_are_stored_dense_and_reported() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let model = state_dict(dir.path());
    let toml = "[model]\nfile = \"model.safetensors\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.0 }\n[export]\ncompression = \"none\"\nsparse_format = \"bitmask\"\n";
    let job = prune_core::validate::validate(&spec(toml)).unwrap();
    let outcome =
        streamed::run(&job, &job_inputs(dir.path(), &model), &mut VecSink::default(), &StopFlag::default()).unwrap();
    let weights = ["enc.weight", "mid.weight", "conv.weight", "head.weight"];
    let mut kept = outcome.report.kept_dense.clone();
    kept.sort();
    let mut expected = weights.map(String::from).to_vec();
    expected.sort();
    assert_eq!(kept, expected);
    assert!(outcome.artifacts[0].bytes <= outcome.report.dense_bytes + 64, "{:?}", outcome.artifacts[0]);
    let path = common::artifact_path(dir.path(), &outcome.artifacts[0]);
    let (tensors, _) = read_safetensors(&std::fs::read(path).unwrap()).unwrap();
    assert!(weights.iter().all(|w| tensors.iter().any(|t| &t.name == w)), "stored under their own names");
}
