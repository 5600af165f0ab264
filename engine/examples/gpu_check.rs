//! `make gpu-check` (scripts/gpu-check.sh builds with `PRUNE_CUDA=1` and runs this): what a GPU
//! node must get right, checked on `cuda:0`.
//!
//! 1. One-shot masks of weights held on the GPU equal the CPU masks of the same weights
//!    (element-wise with ties, global scope, block 1x4, 2:4): masks are computed on the host from
//!    the weights' values, so the tie rule is the same by construction; this proves the copies.
//! 2. A 4096x4096 mask update at 80% with the weight on the GPU (host round trip included),
//!    against the same update of a CPU weight.
//! 3. The seed job's epoch on the GPU through the engine (prints the time; the PyTorch eager
//!    loop on the same GPU is timed by the script, side by side).
//! 4. Bitwise resume on the GPU: the seed job stopped at a checkpoint and resumed gives the same
//!    artifact digest as the uninterrupted run (or says that it does not).
//!
//! Without a CUDA device it says so and exits 2: nothing here is a CPU figure.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prune_core::validate;
use prune_engine::masking::{select_targets, Masks};
use prune_engine::{run_job, EngineError, Event, EventSink, JobInputs, Output, StopFlag, StopReason};
use tch::{Device, Kind, Tensor};

fn seed_job(device: &str, samples: i64, epochs: i64) -> String {
    format!(
        r#"
[model]
sequential = [
  {{ type = "conv2d", in = 1, out = 12, kernel = 3 }}, {{ type = "relu" }}, {{ type = "maxpool2d", kernel = 2 }},
  {{ type = "flatten" }}, {{ type = "linear", in = 2028, out = 10 }},
]
[data]
builtin = "synthetic"
shape = [1, 28, 28]
classes = 10
samples = {samples}
[training]
epochs = {epochs}
batch_size = 128
optimizer = "adam"
learning_rate = 0.001
checkpoint_every = 100
device = "{device}"
[pruning]
schedule = {{ kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 0, end_step = 300, frequency = 100 }}
[export]
compression = "none"
"#
    )
}

fn inputs(dir: &Path) -> JobInputs {
    JobInputs {
        model_file: None,
        model_shards: None,
        weights_file: None,
        data_file: None,
        checkpoints: Output { dir: dir.join("c"), key_prefix: "checkpoints/gpu/".into() },
        artifacts: Output { dir: dir.join("a"), key_prefix: "artifacts/gpu/".into() },
        resume_from: None,
        threads: 0,
        model_files: Default::default(),
        calibration_file: None,
        evaluation_file: None,
        store: None,
        masks_applied: false,
    }
}

/// Masks of `weights` put on `device`, for a pruning section.
fn masks_on(pruning: &str, weights: &[(String, Tensor)], device: Device) -> Vec<Tensor> {
    let toml = format!("[model]\nfile = \"w.safetensors\"\n[training]\nepochs = 0\n[pruning]\n{pruning}\n");
    let job = validate::validate(&validate::parse_toml(&toml).unwrap()).unwrap();
    let params: Vec<(String, Tensor)> = weights.iter().map(|(n, t)| (n.clone(), t.to_device(device))).collect();
    let mut masks = Masks::new(select_targets(&job.pruning, &params).unwrap(), &params);
    masks.one_shot(&params).unwrap();
    masks.masks().iter().map(|m| m.to_device(Device::Cpu)).collect()
}

fn masks_match(gpu: Device) -> bool {
    tch::manual_seed(3);
    // Rounded values: many exact ties, where only the tie rule decides.
    let weights = vec![
        ("0.weight".to_string(), (Tensor::randn([256, 512], (Kind::Float, Device::Cpu)) * 8.0).round() / 8.0),
        ("1.weight".to_string(), (Tensor::randn([64, 32, 3, 3], (Kind::Float, Device::Cpu)) * 4.0).round() / 4.0),
    ];
    let cases = [
        ("element 0.8", "schedule = { kind = \"constant_sparsity\", target_sparsity = 0.8 }"),
        ("global 0.7", "scope = \"global\"\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.7 }"),
        ("block 1x4", "include = [\"^0\\\\.\"]\nblock_size = [1, 4]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }"),
        ("2:4", "m_by_n = [2, 4]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }"),
    ];
    let mut all = true;
    for (name, pruning) in cases {
        let cpu = masks_on(pruning, &weights, Device::Cpu);
        let cuda = masks_on(pruning, &weights, gpu);
        let same = cpu.len() == cuda.len() && cpu.iter().zip(&cuda).all(|(a, b)| a.equal(b));
        println!("one-shot masks, {name}: cuda == cpu: {}", if same { "yes" } else { "NO" });
        all &= same;
    }
    all
}

fn mask_update(gpu: Device) {
    tch::manual_seed(1);
    let w = Tensor::randn([4096, 4096], (Kind::Float, Device::Cpu));
    let time = |device: Device| {
        let params = vec![("0.weight".to_string(), w.to_device(device))];
        let job = validate::validate(
            &validate::parse_toml(
                "[model]\nfile = \"w.safetensors\"\n[training]\nepochs = 0\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.8, frequency = 1 }\n",
            )
            .unwrap(),
        )
        .unwrap();
        let mut masks = Masks::new(select_targets(&job.pruning, &params).unwrap(), &params);
        let mut best = f64::MAX;
        for step in 1..=5 {
            let start = Instant::now();
            masks.update(step, &params).unwrap();
            masks.apply(&params);
            if device != Device::Cpu {
                tch::Cuda::synchronize(0);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        best
    };
    let (cpu, cuda) = (time(Device::Cpu), time(gpu));
    println!("mask update + apply 4096x4096 @0.80 (best of 5): cuda {cuda:.3} s | cpu {cpu:.3} s");
}

struct EpochTimer {
    started: Option<Instant>,
    epochs: Vec<f64>,
}

impl EventSink for EpochTimer {
    fn emit(&mut self, event: Event) -> Result<(), EngineError> {
        match event {
            Event::Started { .. } => self.started = Some(Instant::now()),
            Event::Metrics { points } if points.iter().any(|p| p.name == "loss") => {
                if let Some(s) = self.started.replace(Instant::now()) {
                    self.epochs.push(s.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn seed_epoch() {
    let spec = validate::parse_toml(&seed_job("cuda", 60000, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut timer = EpochTimer { started: None, epochs: vec![] };
    let out = run_job(&spec, &inputs(dir.path()), &mut timer, &StopFlag::default()).unwrap();
    let epochs: Vec<String> = timer.epochs.iter().map(|s| format!("{s:.2} s")).collect();
    println!(
        "seed job on cuda through the engine (60000 samples, batch 128, 2 epochs): epochs {} | val accuracy {:.4}",
        epochs.join(", "),
        out.report.final_val_accuracy.unwrap_or(f64::NAN)
    );
}

/// Stops the job (as a cancel does) once a checkpoint at or after `at` is written.
struct StopAt {
    at: i64,
    stop: StopFlag,
    last: Option<(i64, String)>,
}

impl EventSink for StopAt {
    fn emit(&mut self, event: Event) -> Result<(), EngineError> {
        if let Event::Checkpoint { step, key, .. } = event {
            self.last = Some((step, key));
            if step >= self.at {
                self.stop.request(StopReason::Cancel);
            }
        }
        Ok(())
    }
}

fn resume_is_bitwise() -> bool {
    let spec = validate::parse_toml(&seed_job("cuda", 12800, 3)).unwrap();
    let whole_dir = tempfile::tempdir().unwrap();
    let whole =
        run_job(&spec, &inputs(whole_dir.path()), &mut prune_engine::VecSink::default(), &StopFlag::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = StopFlag::default();
    let mut sink = StopAt { at: 150, stop: stop.clone(), last: None };
    let _ = run_job(&spec, &inputs(dir.path()), &mut sink, &stop).unwrap_err();
    let (step, key) = sink.last.unwrap();
    let mut resumed_inputs = inputs(dir.path());
    let path: PathBuf = resumed_inputs.checkpoints.path(&key).unwrap();
    resumed_inputs.resume_from = Some(path);
    let resumed = run_job(&spec, &resumed_inputs, &mut prune_engine::VecSink::default(), &StopFlag::default()).unwrap();
    let same = whole.artifacts[0].sha256 == resumed.artifacts[0].sha256;
    println!(
        "bitwise resume on cuda (stopped at step {step} of 300, resumed): {}",
        if same { "yes, same artifact digest" } else { "NO, the artifacts differ" }
    );
    same
}

fn main() {
    // What prune-server's launcher sets for every worker: deterministic cuBLAS.
    std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    prune_engine::allocator::keep_freed_memory();
    if !tch::Cuda::is_available() {
        println!("no CUDA device here (tch::Cuda::is_available() is false): no GPU figure measured");
        std::process::exit(2);
    }
    println!("cuda devices: {} | cudnn: {}", tch::Cuda::device_count(), tch::Cuda::cudnn_is_available());
    let gpu = Device::Cuda(0);
    let masks_ok = masks_match(gpu);
    mask_update(gpu);
    seed_epoch();
    let resume_ok = resume_is_bitwise();
    if !masks_ok {
        std::process::exit(1);
    }
    if !resume_ok {
        println!("(documented in docs/gpu.md: what is and is not reproducible on a GPU)");
    }
}
