//! `make bench`: the engine's performance figures, each measured against a baseline in the
//! same run (this machine is shared and noisy; only ratios within one run mean anything).
//!
//! 1. Pruned epoch time / dense libtorch epoch time of the seed's MNIST-shaped CNN.
//! 2. Mask update time of one 4096x4096 tensor at 80% through the engine (host copy included).
//! 3. Artifact bytes at 50/80/90/95% sparsity for dense+gzip, dense+zstd and bitmask+zstd,
//!    against the N*H(s)/8 + 4*nnz bound, and the digits MLP at 80% against tfmot's .h5.

use std::time::{Duration, Instant};

use prune_core::validate;
use prune_engine::masking::{Masks, Target};
use prune_engine::{run_job, EngineError, Event, EventSink, JobInputs, Output, StopFlag};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const CNN_JOB: &str = r#"
[model]
sequential = [
  { type = "conv2d", in = 1, out = 12, kernel = 3 }, { type = "relu" }, { type = "maxpool2d", kernel = 2 },
  { type = "flatten" }, { type = "linear", in = 2028, out = 10 },
]
[data]
builtin = "synthetic"
shape = [1, 28, 28]
classes = 10
samples = 54000
[training]
epochs = 1
batch_size = 128
optimizer = "adam"
learning_rate = 0.001
checkpoint_every = 1000000
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 0, end_step = 844, frequency = 100 }
[export]
compression = "none"
"#;

/// Times the training part of a job: from `Started` to the epoch-end metrics.
struct Timer {
    started: Option<Instant>,
    epoch_end: Option<Duration>,
}

impl EventSink for Timer {
    fn emit(&mut self, event: Event) -> Result<(), EngineError> {
        match event {
            Event::Started { .. } => self.started = Some(Instant::now()),
            Event::Metrics { points } if points.iter().any(|p| p.name == "loss") => {
                self.epoch_end = self.started.map(|s| s.elapsed());
            }
            _ => {}
        }
        Ok(())
    }
}

/// A job's files in a scratch directory.
fn scratch_inputs(dir: &std::path::Path, model_file: Option<&std::path::Path>, threads: usize) -> JobInputs {
    JobInputs {
        model_file: model_file.map(|p| p.to_path_buf()),
        model_shards: None,
        weights_file: None,
        data_file: None,
        checkpoints: Output { dir: dir.join("c"), key_prefix: "checkpoints/bench/".into() },
        artifacts: Output { dir: dir.join("a"), key_prefix: "artifacts/bench/".into() },
        resume_from: None,
        threads,
        model_files: Default::default(),
        calibration_file: None,
        evaluation_file: None,
        store: None,
        masks_applied: false,
    }
}

fn pruned_epoch(threads: usize) -> f64 {
    let spec = validate::parse_toml(CNN_JOB).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = scratch_inputs(dir.path(), None, threads);
    let mut timer = Timer { started: None, epoch_end: None };
    run_job(&spec, &inputs, &mut timer, &StopFlag::default()).unwrap();
    timer.epoch_end.unwrap().as_secs_f64()
}

/// The same model and data trained by a plain hand-written tch loop with libtorch's own Adam.
fn dense_epoch() -> f64 {
    tch::manual_seed(0);
    let x = Tensor::randn([54000, 1, 28, 28], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([784, 10], (Kind::Float, Device::Cpu));
    let y = x.reshape([54000, 784]).matmul(&w).argmax(1, false);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::conv2d(&root / "0", 1, 12, 3, Default::default()))
        .add_fn(|t| t.relu().max_pool2d_default(2))
        .add_fn(|t| t.flatten(1, -1))
        .add(nn::linear(&root / "4", 2028, 10, Default::default()));
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let start = Instant::now();
    let order = Tensor::randperm(54000, (Kind::Int64, Device::Cpu));
    for b in 0..422 {
        let idx = order.narrow(0, b * 128, 128.min(54000 - b * 128));
        let loss = net.forward(&x.index_select(0, &idx)).cross_entropy_for_logits(&y.index_select(0, &idx));
        opt.backward_step(&loss);
        let _ = f64::try_from(&loss).unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn epoch_ratio() {
    let threads = tch::get_num_threads().max(1) as usize;
    // Interleave and keep the best of each, so background noise hits both sides alike.
    let (mut best_dense, mut best_pruned) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        best_dense = best_dense.min(dense_epoch());
        best_pruned = best_pruned.min(pruned_epoch(threads));
    }
    println!(
        "epoch (CNN 1->12 3x3, 54000x28x28, batch 128, Adam, {threads} threads): dense libtorch {best_dense:.2} s | pruned engine {best_pruned:.2} s | ratio {:.3} (goal <= 1.05)",
        best_pruned / best_dense
    );
}

fn mask_update() {
    tch::manual_seed(1);
    let w = Tensor::randn([4096, 4096], (Kind::Float, Device::Cpu));
    let params = vec![("0.weight".to_string(), w)];
    let schedule =
        prune_core::Schedule::ConstantSparsity { target_sparsity: 0.8, begin_step: 0, end_step: -1, frequency: 1 };
    let target = Target {
        name: "0.weight".into(),
        param: 0,
        shape: vec![4096, 4096],
        schedule,
        method: prune_core::PruningMethod::ElementWise,
        global: false,
    };
    let mut masks = Masks::new(vec![target], &params);
    let mut best = f64::MAX;
    for step in 1..=5 {
        let start = Instant::now();
        masks.update(step, &params).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let kth = Instant::now();
    let _ = params[0].1.abs().reshape([-1]).kthvalue((0.8 * 4096.0 * 4096.0) as i64, 0, false);
    let kth = kth.elapsed().as_secs_f64();
    println!("mask update 4096x4096 @0.80 in the engine (incl. tensor copies): {best:.3} s (goal <= 0.1) | libtorch kthvalue alone {kth:.3} s");
}

fn entropy_bound(n: f64, s: f64) -> f64 {
    let h = if s <= 0.0 || s >= 1.0 { 0.0 } else { -(s * s.log2() + (1.0 - s) * (1.0 - s).log2()) };
    n * h / 8.0 + 4.0 * n * (1.0 - s)
}

fn one_shot_bytes(
    model_toml: &str,
    weights: Option<&std::path::Path>,
    sparsity: f64,
    compression: &str,
    sparse: &str,
) -> (u64, u64) {
    let toml = format!(
        "{model_toml}\n[training]\nepochs = 0\n[pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = {sparsity} }}\n[export]\ncompression = \"{compression}\"\nsparse_format = \"{sparse}\"\n"
    );
    let spec = validate::parse_toml(&toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = scratch_inputs(dir.path(), weights, 0);
    let out = run_job(&spec, &inputs, &mut prune_engine::VecSink::default(), &StopFlag::default()).unwrap();
    (out.artifacts[0].bytes, out.report.gzip_dense_bytes)
}

fn artifact_sizes() {
    // One 1024x1024 f32 weight with normal values, as a safetensors state dict.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    tch::manual_seed(2);
    let w = Tensor::randn([1024, 1024], (Kind::Float, Device::Cpu));
    let bytes = prune_engine::tensors::write(&[("0.weight".to_string(), w)], Default::default()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let model = "[model]\nfile = \"w.safetensors\"";
    println!("artifact bytes, one 1024x1024 f32 weight (N = 1048576):");
    println!("  sparsity | dense+gzip | dense+zstd | bitmask+zstd | N*H(s)/8+4*nnz | bitmask+zstd / bound");
    for s in [0.5, 0.8, 0.9, 0.95] {
        let (gz, _) = one_shot_bytes(model, Some(&path), s, "gzip", "dense");
        let (zst, _) = one_shot_bytes(model, Some(&path), s, "zstd", "dense");
        let (bm, _) = one_shot_bytes(model, Some(&path), s, "zstd", "bitmask");
        let bound = entropy_bound(1048576.0, s);
        println!("  {s:>8} | {gz:>10} | {zst:>10} | {bm:>12} | {bound:>14.0} | {:.3}", bm as f64 / bound);
    }
}

/// The seed's digits MLP (64 -> 128 -> 10), trained then pruned to 80% by the demo job
/// (`examples/digits_demo.toml`: bitmask + zstd); tfmot's gzipped .h5 of the same model: 13,473 B.
fn digits_mlp() {
    const TFMOT_H5_GZ: f64 = 13473.0;
    let toml = include_str!("../../examples/digits_demo.toml");
    let spec = validate::parse_toml(toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = scratch_inputs(dir.path(), None, 0);
    let out = run_job(&spec, &inputs, &mut prune_engine::VecSink::default(), &StopFlag::default()).unwrap();
    let bytes = out.artifacts[0].bytes as f64;
    println!(
        "digits MLP @80%: bitmask+zstd {bytes} B | gzip(dense) {} B | tfmot .h5.gz 13473 B | ratio to tfmot {:.3} (goal <= 0.65) | val acc dense {:.4} -> pruned {:.4}",
        out.report.gzip_dense_bytes,
        bytes / TFMOT_H5_GZ,
        out.report.dense_val_accuracy.unwrap_or(f64::NAN),
        out.report.final_val_accuracy.unwrap_or(f64::NAN)
    );
}

/// `cargo run --example bench [NAME...]` runs the sections whose name contains one of NAMEs.
fn main() {
    // As prune-worker does; the dense baseline below runs in this process too.
    prune_engine::allocator::keep_freed_memory();
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let sections: [(&str, fn()); 4] =
        [("mask", mask_update), ("artifacts", artifact_sizes), ("digits", digits_mlp), ("epoch", epoch_ratio)];
    for (name, run) in sections {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            run();
        }
    }
}
