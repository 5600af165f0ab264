//! Measured inference latency for the report: the model as the job started against the pruned
//! model, on the job's device and threads, so users see what pruning did to speed and not only
//! to size (element-wise zeros do not make dense kernels faster).
//!
//! The dense model is loaded again from the job's inputs (the initial or `model.weights`
//! weights, the TorchScript file): it is defined the same way for a resumed attempt, and
//! nothing has to be kept through training. Latency of dense kernels does not depend on the
//! weights' values, so its initial weights time what the final weights without masks would.

use std::time::{Duration, Instant};

use prune_core::domain::{InferenceTiming, NO_FORWARD_PASS};
use prune_core::spec::LayerSpec;
use prune_core::Job;
use tch::{Device, Kind, Tensor};

use crate::inputs::JobInputs;
use crate::model::Model;
use crate::{data, EngineError};

/// Untimed runs of each model first (allocator, kernel selection, caches).
const WARMUP_RUNS: usize = 3;
/// Timed runs of each model per batch size; the median is reported.
const RUNS: usize = 20;
/// A model too slow for [`RUNS`] within [`BUDGET`] gets this many, no fewer.
const MIN_RUNS: usize = 3;
/// Wall-clock cap on the timed runs of one batch size (both models), so a big model adds
/// seconds to its job, not minutes.
const BUDGET: Duration = Duration::from_secs(1);

/// The report's `inference` and `inference_note`.
pub struct Measured {
    pub timings: Vec<InferenceTiming>,
    pub note: Option<String>,
}

impl Measured {
    fn skipped(note: impl Into<String>) -> Measured {
        Measured { timings: Vec::new(), note: Some(note.into()) }
    }
}

/// Times the dense and the pruned model at batch 1 and at the training batch size. `samples`
/// are inputs of the job's data (rows repeat to fill a batch); without them a one-shot job's
/// data is loaded, if it has some. A failure to measure is reported in the note, not as the
/// job's failure: the pruned model is already exported.
pub fn measure(
    job: &Job,
    inputs: &JobInputs,
    pruned: &mut Model,
    samples: Option<&Tensor>,
    device: Device,
) -> Measured {
    if !pruned.can_train() {
        return Measured::skipped(NO_FORWARD_PASS);
    }
    let samples = match samples {
        Some(x) => x.shallow_clone(),
        None => match one_shot_samples(job, inputs, device) {
            Ok(Some(x)) => x,
            Ok(None) => return Measured::skipped(
                "no inference measured: a one-shot job without [data] gives no input shape (add data to measure it)",
            ),
            Err(e) => return Measured::skipped(format!("no inference measured: {e}")),
        },
    };
    let t = &job.training;
    let dense = Model::load(&job.model, inputs.model_file.as_deref(), inputs.weights_file.as_deref(), t.seed, device);
    let result = dense.and_then(|mut dense| compare(&mut dense, pruned, &samples, &batch_sizes(t.batch_size), device));
    match result {
        Ok(timings) => Measured { timings, note: None },
        Err(e) => Measured::skipped(format!("no inference measured: {e}")),
    }
}

/// Batch 1 and the training batch size.
fn batch_sizes(batch_size: i64) -> Vec<i64> {
    if batch_size > 1 {
        vec![1, batch_size]
    } else {
        vec![1]
    }
}

/// Inputs for a job trained on no data: its data set when it names one, else zeros of the
/// first layer's input when a built-in model starts with a linear layer.
fn one_shot_samples(job: &Job, inputs: &JobInputs, device: Device) -> Result<Option<Tensor>, EngineError> {
    if let Some(spec) = &job.data {
        let split = data::load(spec, inputs.data_file.as_deref(), job.training.seed, device)?;
        return Ok(Some(split.train.x));
    }
    Ok(first_linear_input(job, device))
}

/// Without data: one row of zeros for a built-in model that starts with a linear layer (its
/// width is the input's), `None` otherwise.
pub(crate) fn first_linear_input(job: &Job, device: Device) -> Option<Tensor> {
    match job.model.sequential.as_deref() {
        Some([LayerSpec::Linear { in_features, .. }, ..]) => {
            Some(Tensor::zeros([1, *in_features], (Kind::Float, device)))
        }
        _ => None,
    }
}

/// Both models in eval mode without gradients, each batch size timed with the two models
/// alternating run by run, so a slow phase of the machine slows both alike.
pub fn compare(
    dense: &mut Model,
    pruned: &mut Model,
    samples: &Tensor,
    batch_sizes: &[i64],
    device: Device,
) -> Result<Vec<InferenceTiming>, EngineError> {
    dense.set_train(false)?;
    pruned.set_train(false)?;
    tch::no_grad(|| {
        batch_sizes
            .iter()
            .map(|&batch_size| -> Result<InferenceTiming, EngineError> {
                let x = rows(samples, batch_size)?;
                for _ in 0..WARMUP_RUNS {
                    let _ = dense.forward(&x, false)?;
                    let _ = pruned.forward(&x, false)?;
                }
                let (mut d, mut p) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
                let start = Instant::now();
                while d.len() < RUNS && (d.len() < MIN_RUNS || start.elapsed() < BUDGET) {
                    d.push(time(dense, &x, device)?);
                    p.push(time(pruned, &x, device)?);
                }
                let (dense_ms, pruned_ms) = (median(&mut d), median(&mut p));
                Ok(InferenceTiming {
                    batch_size,
                    dense_ms,
                    pruned_ms,
                    speedup: if pruned_ms > 0.0 { dense_ms / pruned_ms } else { 1.0 },
                    runs: d.len() as u32,
                })
            })
            .collect()
    })
}

/// `batch_size` rows of `samples`, repeating them when there are fewer.
fn rows(samples: &Tensor, batch_size: i64) -> Result<Tensor, EngineError> {
    let n = samples.size().first().copied().unwrap_or(0);
    if n == 0 {
        return Err(EngineError::Data("no samples to time inference on".into()));
    }
    let index = Tensor::arange(batch_size, (Kind::Int64, samples.device())).remainder(n);
    Ok(samples.f_index_select(0, &index)?)
}

/// One forward pass in milliseconds, finished on the device before the clock stops.
fn time(model: &Model, x: &Tensor, device: Device) -> Result<f64, EngineError> {
    sync(device);
    let start = Instant::now();
    let out = model.forward(x, false)?;
    sync(device);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    drop(out);
    Ok(ms)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sequential;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn rows_repeat_to_fill_a_batch() {
        let _rng = crate::rng::global_generator_lock();
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([3, 1]);
        let batch = rows(&x, 7).unwrap();
        assert_eq!(Vec::<f32>::try_from(batch.flatten(0, -1)).unwrap(), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]);
    }

    /// One entry per batch size, each with its runs; the figures themselves are the machine's.
    #[test]
    fn compares_both_models_at_each_batch_size() {
        let _rng = crate::rng::global_generator_lock();
        let layers = [
            LayerSpec::Linear { in_features: 8, out_features: 16, bias: true },
            LayerSpec::Batchnorm1d { features: 16 },
            LayerSpec::Relu,
            LayerSpec::Linear { in_features: 16, out_features: 4, bias: true },
        ];
        let model = || Model::Sequential(Sequential::new(&layers, 0, Device::Cpu).unwrap());
        let (mut dense, mut pruned) = (model(), model());
        let x = Tensor::ones([5, 8], (Kind::Float, Device::Cpu));
        let timings = compare(&mut dense, &mut pruned, &x, &batch_sizes(32), Device::Cpu).unwrap();
        assert_eq!(timings.iter().map(|t| t.batch_size).collect::<Vec<_>>(), [1, 32]);
        for t in &timings {
            assert!((MIN_RUNS..=RUNS).contains(&(t.runs as usize)), "{t:?}");
            assert!(t.dense_ms > 0.0 && t.pruned_ms > 0.0 && t.speedup > 0.0, "{t:?}");
        }
        // Eval mode: timing did not touch the BatchNorm statistics.
        let Model::Sequential(m) = &pruned else { unreachable!() };
        assert_eq!(m.buffers[2].1.int64_value(&[]), 0);
        assert_eq!(batch_sizes(1), [1]);
    }
}
