//! The training loop with tfmot's step semantics (see `docs/pruning-semantics.md`):
//! per batch `step += 1`, recompute due masks, `w *= mask`, forward/backward/update
//! (gradients unmasked), with masks re-applied at epoch ends, checkpoints and the end.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prune_core::domain::ChannelReport;
use prune_core::job::{DataSource, Training};
use prune_core::options::Loss;
use prune_core::Job;
use tch::{Device, Kind, Tensor};

use crate::analysis::budget::{self, Plan, Sizer};
use crate::checkpoint::{self, Saved, TrainState};
use crate::data::{self, Dataset};
use crate::evaluate::{self, evaluate, loss_and_correct};
use crate::events::{Event, EventSink, MetricPoint, TensorSparsity};
use crate::export::{self, Report};
use crate::inputs::{JobInputs, JobOutcome, StopFlag, StopReason};
use crate::masking::Masks;
use crate::model::{Model, Script, Sequential};
use crate::optim::Optimizer;
use crate::{analysis, device, rng, speed, EngineError};

/// Progress events are rate-limited so that per-step reporting never slows training.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub fn run(
    spec: &Job,
    inputs: &JobInputs,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
) -> Result<JobOutcome, EngineError> {
    if inputs.threads > 0 {
        tch::set_num_threads(inputs.threads as i32);
    }
    let device::Resolved { device, warning } = device::resolve(spec.training.device)?;
    let warnings: Vec<String> = warning.into_iter().collect();
    if device.is_cuda() {
        // cuDNN's autotuner picks kernels by timing, so two attempts could compute differently.
        tch::Cuda::cudnn_set_benchmark(false);
    }
    let t = &spec.training;
    let mut model =
        Model::load(&spec.model, inputs.model_file.as_deref(), inputs.weights_file.as_deref(), t.seed, device)?;
    // A sensitivity job measures the dense model: nothing is masked while it trains.
    let analysis_only = spec.sensitivity.is_some() && spec.pruning.budget.is_none();
    let mut masks = if analysis_only {
        Masks::new(vec![], model.params())
    } else {
        Masks::select(&spec.pruning, &model, spec.model.sequential.as_deref())?
    };
    let pruned: Vec<String> = masks.targets.iter().map(|t| t.name.clone()).collect();

    if t.epochs == 0 {
        if spec.sensitivity.is_some() || spec.pruning.budget.is_some() {
            if !model.can_train() {
                return Err(EngineError::Model(
                    "a sensitivity analysis or a budget measures the model on data, but a safetensors state dict has no forward pass: give a TorchScript model, or a model.sequential with model.weights".into(),
                ));
            }
            return one_shot_analysed(spec, inputs, model, masks, warnings, sink, stop, device);
        }
        one_shot(&mut model, &mut masks, &pruned, warnings, sink)?;
        let finished = finish(spec, inputs, &mut model, &masks, &pruned, None, device)?;
        return Ok(outcome(finished, None, None, None, 0));
    }
    if !model.can_train() {
        return Err(EngineError::Model(
            "a safetensors state dict cannot be trained: use training.epochs = 0 (one-shot)".into(),
        ));
    }
    let data_spec = spec
        .data
        .as_ref()
        .ok_or_else(|| EngineError::Data("no data given (data.file, data.blob or data.builtin)".into()))?;
    let split = data::load(data_spec, inputs.data_file.as_deref(), t.seed, device)?;
    check_fit(&model, &split.train, t.loss)?;
    let mut trainer = Trainer::new(t, model, masks, split.train, split.validation)?;
    trainer.budget = spec.pruning.budget;
    if let Some(path) = &inputs.resume_from {
        trainer.resume(path, device)?;
    }
    sink.emit(Event::Started {
        total_steps: trainer.total_steps(),
        steps_per_epoch: trainer.steps_per_epoch,
        epochs: t.epochs,
        start_step: trainer.state.step,
        pruned: pruned.clone(),
        warnings,
    })?;
    let dense_val_accuracy = trainer.train(spec, inputs, sink, stop)?;
    trainer.masks.apply(trainer.model.params());
    let samples = trainer.train.x.shallow_clone();
    let example = example_input(spec, Some(&samples), device);
    let measured = trainer.validation.as_ref().unwrap_or(&trainer.train);
    let extras = match (&trainer.plan, spec.pruning.budget) {
        (Some(plan), Some(budget)) => {
            let sizer = Sizer { job: spec, example: example.as_ref() };
            let report = budget::refine(plan, &budget, spec, &mut trainer.model, &mut trainer.masks, measured, &sizer)?;
            trainer.masks.apply(trainer.model.params());
            Extras::budget(plan, report)
        }
        _ if analysis_only => {
            let (probes, found) = analysis::measure(spec, &mut trainer.model, measured, trainer.state.step, stop)?;
            Extras::sensitivity(spec, &probes, found, inputs)?
        }
        (None, Some(_)) => {
            return Err(EngineError::Spec(format!(
                "pruning.budget: the schedule never prunes within the job's {} steps, so no budget was planned (move begin_step into the training)",
                trainer.state.step
            )))
        }
        _ => Extras::default(),
    };
    // A budget's further pruning changed the weights since the last epoch's validation.
    let (val_loss, val_accuracy) = if extras.budget.is_some() {
        evaluate(&mut trainer.model, measured, t.loss == Loss::CrossEntropy)?
    } else {
        trainer.evaluate_final()?
    };
    let finished = finish(spec, inputs, &mut trainer.model, &trainer.masks, &pruned, Some(&samples), device)?;
    let done = outcome(finished, Some(val_accuracy), Some(val_loss), dense_val_accuracy, trainer.state.step);
    Ok(extras.add_to(done))
}

/// `epochs = 0` with a sensitivity analysis or a budget: the model as given is measured on the
/// job's data; a budget then prunes it one-shot to its plan and checks the artifact.
#[allow(clippy::too_many_arguments)]
fn one_shot_analysed(
    spec: &Job,
    inputs: &JobInputs,
    mut model: Model,
    mut masks: Masks,
    warnings: Vec<String>,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
    device: Device,
) -> Result<JobOutcome, EngineError> {
    let data_spec = spec.data.as_ref().ok_or_else(|| EngineError::Data("an analysis needs [data]".into()))?;
    let split = data::load(data_spec, inputs.data_file.as_deref(), spec.training.seed, device)?;
    check_fit(&model, &split.train, spec.training.loss)?;
    let measured = evaluate::measured_on(&split);
    let pruned: Vec<String> = masks.targets.iter().map(|t| t.name.clone()).collect();
    sink.emit(Event::started_one_shot(pruned.clone(), warnings))?;
    let cross_entropy = spec.training.loss == Loss::CrossEntropy;
    let (_, dense_accuracy) = evaluate(&mut model, measured, cross_entropy)?;
    let samples = split.train.x.shallow_clone();
    let example = example_input(spec, Some(&samples), device);
    let extras = match spec.pruning.budget {
        Some(budget) => {
            let sizer = Sizer { job: spec, example: example.as_ref() };
            let plan = budget::decide(&budget, spec, &mut model, &mut masks, measured, 0, stop, &sizer)?;
            masks.one_shot(model.params())?;
            masks.apply(model.params());
            let report = budget::refine(&plan, &budget, spec, &mut model, &mut masks, measured, &sizer)?;
            masks.apply(model.params());
            let sparsity = masks.sparsities()?;
            sink.emit(Event::Metrics { points: sparsity_points(0, &sparsity) })?;
            Extras::budget(&plan, report)
        }
        None => {
            let (probes, found) = analysis::measure(spec, &mut model, measured, 0, stop)?;
            Extras::sensitivity(spec, &probes, found, inputs)?
        }
    };
    let (val_loss, val_accuracy) = evaluate(&mut model, measured, cross_entropy)?;
    let finished = finish(spec, inputs, &mut model, &masks, &pruned, Some(&samples), device)?;
    let accuracy = |a: f64| cross_entropy.then_some(a);
    let done = outcome(finished, accuracy(val_accuracy), Some(val_loss), accuracy(dense_accuracy), 0);
    Ok(extras.add_to(done))
}

/// What an analysis adds to a job's outcome: its points, a sensitivity job's suggested
/// overrides and plot, a budget's report.
#[derive(Default)]
struct Extras {
    points: Vec<prune_core::domain::SensitivityPoint>,
    suggested_overrides: Option<String>,
    budget: Option<Box<prune_core::domain::BudgetReport>>,
    artifacts: Vec<prune_core::domain::ArtifactFile>,
}

impl Extras {
    fn budget(plan: &budget::Plan, report: prune_core::domain::BudgetReport) -> Extras {
        Extras { points: plan.analysis.points.clone(), budget: Some(Box::new(report)), ..Extras::default() }
    }

    fn sensitivity(
        spec: &Job,
        probes: &[analysis::Probe],
        found: analysis::Analysis,
        inputs: &JobInputs,
    ) -> Result<Extras, EngineError> {
        let target = spec.sensitivity.as_ref().map_or(0.01, |s| s.target_accuracy_drop);
        let overrides = analysis::overrides::suggest(&found, probes, spec.pruning.schedule, target);
        let title = spec.name.as_deref().unwrap_or("model");
        let artifacts = analysis::artifacts::write(&found, title, &overrides, &inputs.artifacts)?;
        Ok(Extras { points: found.points, suggested_overrides: Some(overrides), budget: None, artifacts })
    }

    fn add_to(self, mut done: JobOutcome) -> JobOutcome {
        // A budget's drop is measured against the model its analysis saw, just before the first
        // pruning step (the warm-up's last epoch ended up to one epoch earlier): one dense figure.
        if let Some(dense) = self.budget.as_ref().and_then(|b| b.dense_accuracy) {
            done.report.dense_val_accuracy = Some(dense);
        }
        done.report.sensitivity = self.points;
        done.report.suggested_overrides = self.suggested_overrides;
        done.report.budget = self.budget;
        done.artifacts.extend(self.artifacts);
        done
    }
}

/// What the end of a job produced: the exported files, the timing of the model they hold and,
/// under channel pruning, what was removed.
struct Finished {
    exported: export::Exported,
    speed: speed::Measured,
    channels: Option<Box<ChannelReport>>,
}

/// Exports the (masked) model and times it; under channel pruning with `export.slim` the
/// artifact and the timing are those of the slim model (its layer specs in the safetensors
/// metadata under [`SLIM_LAYERS_KEY`]).
fn finish(
    spec: &Job,
    inputs: &JobInputs,
    model: &mut Model,
    masks: &Masks,
    pruned: &[String],
    samples: Option<&Tensor>,
    device: Device,
) -> Result<Finished, EngineError> {
    let example = example_input(spec, samples, device);
    let example = example.as_ref();
    let Some(plan) = masks.channel_plan() else {
        let exported = export::export(&spec.export, model, pruned, &inputs.artifacts, example)?;
        let speed = speed::measure(spec, inputs, model, samples, device);
        return Ok(Finished { exported, speed, channels: None });
    };
    let layers = spec.model.sequential.as_deref();
    let state = model.state();
    let input_shape = match samples {
        Some(x) => Some(x.size()[1..].to_vec()),
        None => builtin_input_shape(spec),
    };
    let channels = plan.report(&state, layers, input_shape.as_deref(), spec.export.slim)?;
    let (Some(layers), true) = (layers, spec.export.slim) else {
        let exported = export::export(&spec.export, model, pruned, &inputs.artifacts, example)?;
        let speed = speed::measure(spec, inputs, model, samples, device);
        return Ok(Finished { exported, speed, channels: Some(Box::new(channels)) });
    };
    let slim_layers = plan.graph.slim_layers(layers, &plan.kept_counts());
    let mut slim = Model::Sequential(Sequential::from_state(&slim_layers, &plan.slim_state(&state)?, device)?);
    let spec_json = serde_json::to_string(&slim_layers).map_err(|e| EngineError::Export(e.to_string()))?;
    let metadata = HashMap::from([(SLIM_LAYERS_KEY.to_string(), spec_json)]);
    let exported = export::export_with(&spec.export, &slim, pruned, &inputs.artifacts, example, metadata)?;
    let speed = speed::measure(spec, inputs, &mut slim, samples, device);
    Ok(Finished { exported, speed, channels: Some(Box::new(channels)) })
}

/// The safetensors metadata key of a slim artifact's `model.sequential` (JSON layer specs, the
/// job file's spelling): the architecture its tensors load into.
pub const SLIM_LAYERS_KEY: &str = "prune.slim_sequential";

/// One input sample for tracing a built-in model: the data's first, else zeros of the built-in
/// data set's shape or of the first linear layer's inputs.
fn example_input(spec: &Job, samples: Option<&Tensor>, device: Device) -> Option<Tensor> {
    if let Some(x) = samples {
        return Some(x.narrow(0, 0, 1).copy());
    }
    let Some(shape) = builtin_input_shape(spec) else { return speed::first_linear_input(spec, device) };
    let mut full = vec![1];
    full.extend(shape);
    Some(Tensor::zeros(&full, (Kind::Float, device)))
}

/// The per-sample input shape of a built-in data set, for FLOPs without loaded data.
fn builtin_input_shape(spec: &Job) -> Option<Vec<i64>> {
    match &spec.data.as_ref()?.source {
        DataSource::Digits => Some(vec![prune_core::datasets::DIGITS_FEATURES]),
        DataSource::Synthetic { shape, .. } => Some(shape.clone()),
        DataSource::File(_) | DataSource::Blob(_) => None,
    }
}

fn outcome(
    Finished { exported, speed, channels }: Finished,
    final_val_accuracy: Option<f64>,
    final_val_loss: Option<f64>,
    dense_val_accuracy: Option<f64>,
    steps: i64,
) -> JobOutcome {
    let report = Report {
        tensors: exported.tensors,
        dense_bytes: exported.dense_bytes,
        gzip_dense_bytes: exported.gzip_dense_bytes,
        kept_dense: exported.kept_dense,
        artifact_bytes: exported.artifacts.iter().map(|a| (a.format.clone(), a.bytes)).collect(),
        final_val_accuracy,
        final_val_loss,
        dense_val_accuracy,
        steps,
        inference: speed.timings,
        inference_note: speed.note,
        channels,
        ..Default::default()
    };
    JobOutcome { artifacts: exported.artifacts, report }
}

/// `epochs = 0`: masks at the schedules' final sparsity, applied once, no data needed.
fn one_shot(
    model: &mut Model,
    masks: &mut Masks,
    pruned: &[String],
    warnings: Vec<String>,
    sink: &mut dyn EventSink,
) -> Result<(), EngineError> {
    sink.emit(Event::started_one_shot(pruned.to_vec(), warnings))?;
    masks.one_shot(model.params())?;
    masks.apply(model.params());
    let sparsity = masks.sparsities()?;
    sink.emit(Event::Metrics { points: sparsity_points(0, &sparsity) })?;
    sink.emit(Event::Progress { step: 0, total_steps: 0, epoch: 0, loss: f64::NAN, accuracy: f64::NAN, sparsity })
}

/// A dry forward pass on two samples, so a dataset that does not fit the model fails with a
/// clear message before any training.
fn check_fit(model: &Model, train: &Dataset, loss: Loss) -> Result<(), EngineError> {
    let n = train.len().min(2);
    let out = model
        .forward(&train.x.narrow(0, 0, n), false)
        .map_err(|e| EngineError::Data(format!("x of shape {:?} does not fit the model: {e}", train.x.size())))?;
    if loss == Loss::CrossEntropy {
        if !train.has_class_labels() {
            return Err(EngineError::Data("cross_entropy needs integer class ids in y".into()));
        }
        let classes = *out.size().last().unwrap_or(&0);
        let max_label = i64::try_from(train.y.max())?;
        if out.dim() != 2 || max_label >= classes {
            return Err(EngineError::Data(format!(
                "labels go up to {max_label} but the model outputs {:?} (needs [batch, classes > {max_label}])",
                out.size()
            )));
        }
    } else if train.y.is_floating_point() {
        let want: Vec<i64> = train.y.size()[1..].to_vec();
        if out.size()[1..] != want[..] {
            return Err(EngineError::Data(format!(
                "mse: model output {:?} does not match y {:?}",
                out.size(),
                train.y.size()
            )));
        }
    } else {
        return Err(EngineError::Data("mse needs float targets in y".into()));
    }
    Ok(())
}

struct Trainer {
    model: Model,
    masks: Masks,
    optimizer: Optimizer,
    train: Dataset,
    validation: Option<Dataset>,
    state: TrainState,
    seed: u64,
    epochs: i64,
    batch_size: i64,
    steps_per_epoch: i64,
    checkpoint_every: i64,
    cross_entropy: bool,
    /// The validation loss and accuracy measured at this step's epoch end, for the final report
    /// (the weights have not changed since).
    last_validation: Option<(i64, f64, f64)>,
    /// `pruning.budget`, planned at the first pruning step into `plan`.
    budget: Option<prune_core::job::Budget>,
    plan: Option<Plan>,
}

impl Trainer {
    fn new(
        t: &Training,
        model: Model,
        masks: Masks,
        train: Dataset,
        validation: Option<Dataset>,
    ) -> Result<Trainer, EngineError> {
        let optimizer = Optimizer::new(t, model.params().len());
        let steps_per_epoch = (train.len() + t.batch_size - 1) / t.batch_size;
        Ok(Trainer {
            model,
            masks,
            optimizer,
            train,
            validation,
            state: TrainState::default(),
            seed: t.seed,
            epochs: t.epochs,
            batch_size: t.batch_size,
            steps_per_epoch,
            checkpoint_every: t.checkpoint_every.max(1),
            cross_entropy: t.loss == Loss::CrossEntropy,
            last_validation: None,
            budget: None,
            plan: None,
        })
    }

    fn total_steps(&self) -> i64 {
        self.epochs * self.steps_per_epoch
    }

    fn resume(&mut self, path: &Path, device: Device) -> Result<(), EngineError> {
        let saved = checkpoint::read(path)?;
        if let (Some(bytes), Model::Script(_)) = (&saved.script, &self.model) {
            self.model = Model::Script(Script::load(bytes, device)?);
        }
        let params = self.model.params();
        if saved.params.len() != params.len() {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint has {} parameters, the model {}",
                saved.params.len(),
                params.len()
            )));
        }
        let buffers = self.model.buffers();
        if saved.buffers.len() != buffers.len() {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint has {} buffers, the model {}",
                saved.buffers.len(),
                buffers.len()
            )));
        }
        tch::no_grad(|| -> Result<(), EngineError> {
            let pairs = params.iter().zip(&saved.params).chain(buffers.iter().zip(&saved.buffers));
            for ((name, p), (saved_name, s)) in pairs {
                if name != saved_name || p.size() != s.size() {
                    return Err(EngineError::Checkpoint(format!(
                        "checkpoint tensor {saved_name} does not match {name}"
                    )));
                }
                p.shallow_clone().copy_(s);
            }
            Ok(())
        })?;
        if let Some(plan) = saved.plan {
            plan.apply(&mut self.masks)?;
            self.plan = Some(plan);
        }
        self.masks.restore(saved.masks)?;
        let optim = saved.optim.into_iter().map(|(n, t)| (n, t.to_device(device))).collect::<Vec<_>>();
        self.optimizer.restore(saved.state.optim_steps, &optim)?;
        self.state = saved.state;
        Ok(())
    }

    fn checkpoint(&mut self, inputs: &JobInputs, sink: &mut dyn EventSink) -> Result<(), EngineError> {
        self.masks.apply(self.model.params());
        self.state.optim_steps = self.optimizer.steps;
        let script = match &self.model {
            Model::Script(s) => Some(s.to_bytes(&inputs.checkpoints.dir)?),
            _ => None,
        };
        let saved = Saved {
            state: self.state,
            params: self.model.params().iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
            buffers: self.model.buffers().iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
            masks: self.masks.masks().iter().map(|m| m.shallow_clone()).collect(),
            optim: self.optimizer.state_tensors(),
            script,
            plan: self.plan.clone(),
        };
        let written = checkpoint::write(&inputs.checkpoints.dir, &saved)?;
        let sparsity = self.masks.sparsities()?;
        sink.emit(Event::Metrics { points: sparsity_points(self.state.step, &sparsity) })?;
        sink.emit(Event::Checkpoint {
            key: inputs.checkpoints.key(&written.path),
            step: self.state.step,
            epoch: self.state.epoch,
            sha256: written.sha256,
            bytes: written.bytes,
        })
    }

    /// Trains from the current state to the end. Returns the validation accuracy of the last
    /// epoch that ended before any mask was applied (the dense warm-up), if there was one.
    fn train(
        &mut self,
        spec: &Job,
        inputs: &JobInputs,
        sink: &mut dyn EventSink,
        stop: &StopFlag,
    ) -> Result<Option<f64>, EngineError> {
        let mut dense_val_accuracy = None;
        let mut last_progress = Instant::now() - PROGRESS_EVERY;
        let first_prune = self.masks.targets.iter().map(first_pruning_step).min().unwrap_or(i64::MAX);
        self.model.set_train(true)?;
        while self.state.epoch < self.epochs {
            let epoch_started = Instant::now();
            let order = Tensor::from_slice(&rng::epoch_permutation(
                self.train.len() as usize,
                self.seed,
                self.state.epoch as u64,
            ))
            .to_device(self.train.x.device());
            while self.state.batch < self.steps_per_epoch {
                if let Some(reason) = stop.requested() {
                    if reason == StopReason::Checkpoint {
                        self.checkpoint(inputs, sink)?;
                    }
                    return Err(EngineError::Stopped { step: self.state.step, reason });
                }
                self.state.step += 1;
                if self.budget.is_some() && self.plan.is_none() && self.state.step >= first_prune {
                    self.plan_budget(spec, stop)?;
                }
                if self.masks.update(self.state.step, self.model.params())? {
                    let sparsity = self.masks.sparsities()?;
                    sink.emit(Event::Metrics { points: sparsity_points(self.state.step, &sparsity) })?;
                    last_progress = Instant::now() - PROGRESS_EVERY;
                }
                self.masks.apply(self.model.params());
                let start = self.state.batch * self.batch_size;
                let len = self.batch_size.min(self.train.len() - start);
                let index = order.narrow(0, start, len);
                let (loss, correct) = self.train_batch(&index)?;
                self.state.loss_sum += loss * len as f64;
                self.state.correct += correct;
                self.state.seen += len;
                self.state.batch += 1;
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    last_progress = Instant::now();
                    self.progress(sink)?;
                }
                if self.state.step % self.checkpoint_every == 0 && self.state.batch < self.steps_per_epoch {
                    self.checkpoint(inputs, sink)?;
                }
            }
            let ended = self.end_epoch(sink, epoch_started)?;
            if self.state.step < first_prune {
                dense_val_accuracy = ended;
            }
            self.checkpoint(inputs, sink)?;
        }
        Ok(dense_val_accuracy)
    }

    /// A budget job's decision at its first pruning step: the dense model analysed on the
    /// validation data, each target's final sparsity planned and its schedule scaled to it.
    fn plan_budget(&mut self, spec: &Job, stop: &StopFlag) -> Result<(), EngineError> {
        let Some(budget) = self.budget else { return Ok(()) };
        let data = self.validation.as_ref().unwrap_or(&self.train);
        let example = self.train.x.narrow(0, 0, 1).copy();
        let sizer = Sizer { job: spec, example: Some(&example) };
        let step = self.state.step;
        self.plan = Some(budget::decide(&budget, spec, &mut self.model, &mut self.masks, data, step, stop, &sizer)?);
        Ok(())
    }

    fn train_batch(&mut self, index: &Tensor) -> Result<(f64, f64), EngineError> {
        let x = self.train.x.index_select(0, index);
        let y = self.train.y.index_select(0, index);
        // Dropout and any other randomness: a function of (seed, step) only.
        tch::manual_seed(rng::torch_seed(self.seed, rng::STREAM_STEP, self.state.step as u64));
        let out = self.model.forward(&x, true)?;
        let (loss, correct) = loss_and_correct(self.cross_entropy, &out, &y)?;
        for (_, p) in self.model.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.f_backward()?;
        let params: Vec<&Tensor> = self.model.params().iter().map(|(_, p)| p).collect();
        self.optimizer.step(&params);
        Ok((f64::try_from(&loss)?, correct))
    }

    fn progress(&self, sink: &mut dyn EventSink) -> Result<(), EngineError> {
        let seen = self.state.seen.max(1) as f64;
        sink.emit(Event::Progress {
            step: self.state.step,
            total_steps: self.total_steps(),
            epoch: self.state.epoch,
            loss: self.state.loss_sum / seen,
            accuracy: self.state.correct / seen,
            sparsity: self.masks.sparsities()?,
        })
    }

    /// Epoch end: masks applied, training and validation metrics recorded, counters reset.
    fn end_epoch(&mut self, sink: &mut dyn EventSink, started: Instant) -> Result<Option<f64>, EngineError> {
        self.masks.apply(self.model.params());
        let step = self.state.step;
        let seen = self.state.seen.max(1) as f64;
        let mut points = vec![
            MetricPoint { step, name: "loss".into(), value: self.state.loss_sum / seen },
            MetricPoint { step, name: "learning_rate".into(), value: self.optimizer.learning_rate() },
        ];
        if self.cross_entropy {
            points.push(MetricPoint { step, name: "accuracy".into(), value: self.state.correct / seen });
        }
        let mut val_accuracy = None;
        if let Some(v) = &self.validation {
            let (loss, acc) = evaluate(&mut self.model, v, self.cross_entropy)?;
            self.last_validation = Some((step, loss, acc));
            points.push(MetricPoint { step, name: "val_loss".into(), value: loss });
            if self.cross_entropy {
                points.push(MetricPoint { step, name: "val_accuracy".into(), value: acc });
                val_accuracy = Some(acc);
            }
        }
        // One line per epoch in the job's log (`prunectl logs`): what a person scrolls through.
        let sparsities = self.masks.sparsities()?;
        let mean = |s: &[TensorSparsity]| s.iter().map(|t| t.sparsity).sum::<f64>() / s.len().max(1) as f64;
        let figures: Vec<String> =
            points.iter().filter(|p| p.name != "learning_rate").map(|p| format!("{} {:.4}", p.name, p.value)).collect();
        tracing::info!(
            "epoch {}/{} (step {step}): {}, mean sparsity {:.4}, {:.1} s",
            self.state.epoch + 1,
            self.epochs,
            figures.join(", "),
            mean(&sparsities),
            started.elapsed().as_secs_f64()
        );
        sink.emit(Event::Metrics { points })?;
        // The epoch's own figures, before the counters restart: the last progress of a job.
        self.progress(sink)?;
        self.state.epoch += 1;
        self.state.batch = 0;
        self.state.loss_sum = 0.0;
        self.state.correct = 0.0;
        self.state.seen = 0;
        Ok(val_accuracy)
    }

    /// Loss and accuracy on the validation data, or on the training data without a split.
    fn evaluate_final(&mut self) -> Result<(f64, f64), EngineError> {
        if let Some((step, loss, acc)) = self.last_validation {
            if step == self.state.step {
                return Ok((loss, acc));
            }
        }
        let data = self.validation.as_ref().unwrap_or(&self.train);
        evaluate(&mut self.model, data, self.cross_entropy)
    }
}

/// `sparsity/<param>` points (1 - mean(mask), as tfmot's PruningSummaries) at `step`.
fn sparsity_points(step: i64, sparsity: &[TensorSparsity]) -> Vec<MetricPoint> {
    sparsity.iter().map(|s| MetricPoint { step, name: format!("sparsity/{}", s.name), value: s.sparsity }).collect()
}

/// The first step >= 1 at which a target's mask is computed (m-by-n: step 1).
fn first_pruning_step(t: &crate::masking::Target) -> i64 {
    t.method.first_recompute_step(&t.schedule)
}
