//! The built-in `model.sequential` architecture, named exactly like the PyTorch module that
//! `docs/job-spec.md` documents for each layer (`torch.nn.Sequential` indices, a residual's
//! `layers` and `projection` submodules, BatchNorm's buffers), so weights move between the two
//! with `load_state_dict(strict=True)`.

use std::collections::HashMap;
use std::path::Path;

use prune_core::spec::{LayerSpec, ProjectionSpec};
use tch::{Device, Kind, Tensor};

use crate::model::NamedParams;
use crate::{rng, tensors, EngineError};

/// PyTorch's BatchNorm defaults (`momentum=0.1`, `eps=1e-5`).
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

#[derive(Clone)]
enum Layer {
    Linear { weight: usize, bias: Option<usize> },
    Conv2d(Conv),
    BatchNorm(BatchNorm),
    Relu,
    Tanh,
    Sigmoid,
    MaxPool2d(i64),
    AvgPool2d { kernel: i64, stride: i64 },
    GlobalAvgPool,
    Flatten,
    Dropout(f64),
    Reshape(Vec<i64>),
    Residual { layers: Vec<Layer>, projection: Option<Conv> },
}

/// A conv2d's parameter indices and geometry (a residual's projection is a 1x1 one).
#[derive(Clone)]
struct Conv {
    weight: usize,
    bias: Option<usize>,
    stride: i64,
    padding: i64,
}

/// `weight` and `bias` index the parameters; the statistics index the buffers.
#[derive(Clone)]
struct BatchNorm {
    weight: usize,
    bias: usize,
    running_mean: usize,
    running_var: usize,
    num_batches_tracked: usize,
}

/// The built-in architecture: its trainable parameters and its buffers (BatchNorm's running
/// statistics), each in PyTorch's `state_dict()` order and naming.
pub struct Sequential {
    layers: Vec<Layer>,
    pub params: NamedParams,
    /// Not trained, not pruned; checkpointed and exported with the parameters.
    pub buffers: NamedParams,
}

/// `relu -> maxpool2d` runs as `maxpool2d -> relu`: on the CPU the pool is the costliest layer
/// of a small CNN and relu then touches k*k times fewer values. Exact, forward and backward:
/// max commutes with relu, a window whose maximum is positive picks the same first index either
/// way, and one whose maximum is <= 0 gets a zero gradient either way.
fn swap_relu_before_pool(layers: &mut [Layer]) {
    let mut i = 0;
    while i < layers.len() {
        if let Layer::Residual { layers: inner, .. } = &mut layers[i] {
            swap_relu_before_pool(inner);
        }
        if i + 1 < layers.len() && matches!(layers[i], Layer::Relu) && matches!(layers[i + 1], Layer::MaxPool2d(_)) {
            layers.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
}

/// Creates the tensors in module order, so the seeded initialisation is a function of the
/// spec alone.
struct Builder {
    device: Device,
    params: NamedParams,
    buffers: NamedParams,
}

impl Builder {
    /// A parameter initialised like PyTorch's defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    /// (kaiming_uniform with a = sqrt(5) for weights, the same bound for biases).
    fn uniform(&mut self, name: String, shape: &[i64], fan_in: i64) -> usize {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let t = Tensor::empty(shape, (Kind::Float, self.device)).uniform_(-bound, bound);
        self.param(name, t)
    }

    fn param(&mut self, name: String, t: Tensor) -> usize {
        self.params.push((name, t.set_requires_grad(true)));
        self.params.len() - 1
    }

    fn buffer(&mut self, name: String, t: Tensor) -> usize {
        self.buffers.push((name, t));
        self.buffers.len() - 1
    }

    fn conv(&mut self, at: &str, shape: [i64; 4], bias: bool, stride: i64, padding: i64) -> Conv {
        let fan_in = shape[1] * shape[2] * shape[3];
        Conv {
            weight: self.uniform(format!("{at}weight"), &shape, fan_in),
            bias: bias.then(|| self.uniform(format!("{at}bias"), &shape[..1], fan_in)),
            stride,
            padding,
        }
    }

    /// BatchNorm's state as `reset_parameters` leaves it: weight 1, bias 0, mean 0, var 1.
    fn batch_norm(&mut self, at: &str, features: i64) -> BatchNorm {
        let opts = (Kind::Float, self.device);
        BatchNorm {
            weight: self.param(format!("{at}weight"), Tensor::ones([features], opts)),
            bias: self.param(format!("{at}bias"), Tensor::zeros([features], opts)),
            running_mean: self.buffer(format!("{at}running_mean"), Tensor::zeros([features], opts)),
            running_var: self.buffer(format!("{at}running_var"), Tensor::ones([features], opts)),
            num_batches_tracked: self
                .buffer(format!("{at}num_batches_tracked"), Tensor::zeros([0i64; 0], (Kind::Int64, self.device))),
        }
    }

    /// The layers of one sequence; `prefix` is the dotted path of the module holding them
    /// (`""` at the top, `"3.layers."` in the residual at index 3).
    fn layers(&mut self, prefix: &str, specs: &[LayerSpec]) -> Vec<Layer> {
        let mut layers = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("{prefix}{i}.");
            let layer = match *spec {
                LayerSpec::Linear { in_features, out_features, bias } => Layer::Linear {
                    weight: self.uniform(format!("{at}weight"), &[out_features, in_features], in_features),
                    bias: bias.then(|| self.uniform(format!("{at}bias"), &[out_features], in_features)),
                },
                LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, bias } => {
                    Layer::Conv2d(self.conv(&at, [out_channels, in_channels, kernel, kernel], bias, stride, padding))
                }
                LayerSpec::Batchnorm1d { features } | LayerSpec::Batchnorm2d { features } => {
                    Layer::BatchNorm(self.batch_norm(&at, features))
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Tanh => Layer::Tanh,
                LayerSpec::Sigmoid => Layer::Sigmoid,
                LayerSpec::Maxpool2d { kernel } => Layer::MaxPool2d(kernel),
                LayerSpec::Avgpool2d { kernel, stride } => {
                    Layer::AvgPool2d { kernel, stride: stride.unwrap_or(kernel) }
                }
                LayerSpec::GlobalAvgpool => Layer::GlobalAvgPool,
                LayerSpec::Flatten => Layer::Flatten,
                LayerSpec::Dropout { p } => Layer::Dropout(p),
                LayerSpec::Reshape { ref shape } => Layer::Reshape(shape.clone()),
                LayerSpec::Residual { ref layers, ref projection } => {
                    // Submodules in PyTorch's registration order: `layers`, then `projection`.
                    let layers = self.layers(&format!("{at}layers."), layers);
                    let projection =
                        projection.as_ref().map(|&ProjectionSpec { in_channels, out_channels, stride, bias }| {
                            self.conv(&format!("{at}projection."), [out_channels, in_channels, 1, 1], bias, stride, 0)
                        });
                    Layer::Residual { layers, projection }
                }
            };
            layers.push(layer);
        }
        layers
    }
}

impl Sequential {
    /// Initialises like PyTorch's defaults, seeded by the job seed.
    pub fn new(specs: &[LayerSpec], seed: u64, device: Device) -> Result<Sequential, EngineError> {
        tch::manual_seed(rng::torch_seed(seed, rng::STREAM_INIT, 0));
        let mut builder = Builder { device, params: Vec::new(), buffers: Vec::new() };
        let mut layers = builder.layers("", specs);
        swap_relu_before_pool(&mut layers);
        Ok(Sequential { layers, params: builder.params, buffers: builder.buffers })
    }

    /// Initial weights from safetensors with the module's `state_dict()` names: every
    /// parameter and buffer must be there with the right shape, and nothing else
    /// (`load_state_dict(strict=True)`).
    pub fn load_weights(&mut self, path: &Path) -> Result<(), EngineError> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::Model(format!("cannot read model.weights: {e}")))?;
        let (loaded, _) = tensors::read(&bytes).map_err(|e| EngineError::Model(format!("model.weights: {e}")))?;
        self.load_state(loaded, "model.weights")
    }

    /// The model of `specs` holding `state` (a slim model's cut tensors), names and shapes
    /// checked as `load_state_dict(strict=True)` does.
    pub fn from_state(specs: &[LayerSpec], state: &NamedParams, device: Device) -> Result<Sequential, EngineError> {
        let mut model = Sequential::new(specs, 0, device)?;
        let state = state.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        model.load_state(state, "slim model")?;
        Ok(model)
    }

    fn load_state(&mut self, loaded: NamedParams, what: &str) -> Result<(), EngineError> {
        let mut loaded: HashMap<String, Tensor> = loaded.into_iter().collect();
        for (name, p) in self.params.iter().chain(&self.buffers) {
            let w =
                loaded.remove(name).ok_or_else(|| EngineError::Model(format!("{what}: missing tensor {name:?}")))?;
            if w.size() != p.size() {
                return Err(EngineError::Model(format!(
                    "{what}: {name} has shape {:?}, the model needs {:?}",
                    w.size(),
                    p.size()
                )));
            }
            tch::no_grad(|| p.shallow_clone().copy_(&w.to_kind(p.kind())));
        }
        if let Some(extra) = loaded.keys().min() {
            return Err(EngineError::Model(format!("{what}: tensor {extra:?} is not in the model's state dict")));
        }
        Ok(())
    }

    /// The same model over detached tensors (sharing their storage): what tracing records as
    /// constants (TorchScript refuses constants that require grad).
    pub fn detached(&self) -> Sequential {
        let detach = |v: &NamedParams| v.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
        Sequential { layers: self.layers.clone(), params: detach(&self.params), buffers: detach(&self.buffers) }
    }

    /// A TorchScript module of the model in eval mode (`torch.jit.trace` of its forward pass on
    /// `example`, one input batch): what `torch.jit.load` runs, weights baked in as constants.
    pub fn trace(&self, example: &Tensor) -> Result<tch::CModule, EngineError> {
        let frozen = self.detached();
        // Surfaces a shape error as an error; the traced closure cannot return one.
        let _ = tch::no_grad(|| frozen.forward(example, false))?;
        let mut failed = None;
        let mut forward = |inputs: &[Tensor]| match tch::no_grad(|| frozen.forward(&inputs[0], false)) {
            Ok(out) => vec![out],
            Err(e) => {
                failed = Some(e);
                vec![inputs[0].shallow_clone()]
            }
        };
        let module =
            tch::CModule::create_by_tracing("PrunedSequential", "forward", &[example.shallow_clone()], &mut forward)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(module),
        }
    }

    /// `train`: dropout active and BatchNorm normalising by the batch's statistics (and
    /// updating its running ones), as `module.train()`; otherwise `module.eval()`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, EngineError> {
        self.run(&self.layers, x, train)
    }

    fn run(&self, layers: &[Layer], x: &Tensor, train: bool) -> Result<Tensor, EngineError> {
        let p = |i: usize| &self.params[i].1;
        let conv = |h: &Tensor, c: &Conv| {
            h.f_conv2d(p(c.weight), c.bias.map(p), [c.stride, c.stride], [c.padding, c.padding], [1, 1], 1)
        };
        let mut h = x.shallow_clone();
        for layer in layers {
            h = match layer {
                Layer::Linear { weight, bias } => h.f_linear(p(*weight), bias.map(p))?,
                Layer::Conv2d(c) => conv(&h, c)?,
                Layer::BatchNorm(bn) => self.batch_norm(&h, bn, train)?,
                Layer::Relu => h.relu(),
                Layer::Tanh => h.tanh(),
                Layer::Sigmoid => h.sigmoid(),
                Layer::MaxPool2d(k) => h.f_max_pool2d([*k, *k], [*k, *k], [0, 0], [1, 1], false)?,
                Layer::AvgPool2d { kernel, stride } => {
                    h.f_avg_pool2d([*kernel, *kernel], [*stride, *stride], [0, 0], false, true, None::<i64>)?
                }
                // nn.AdaptiveAvgPool2d(1) then nn.Flatten(): the same kernel as PyTorch's.
                Layer::GlobalAvgPool => h.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?,
                Layer::Flatten => h.f_flatten(1, -1)?,
                Layer::Dropout(rate) => h.f_dropout(*rate, train)?,
                // Per sample, in row-major order, as `x.reshape(x.shape[0], *shape)`; spelled
                // without the batch size so that a traced module takes any batch.
                Layer::Reshape(shape) => h.f_flatten(1, -1)?.f_unflatten(1, shape.as_slice())?,
                Layer::Residual { layers, projection } => {
                    let shortcut = match projection {
                        Some(c) => conv(&h, c)?,
                        None => h.shallow_clone(),
                    };
                    self.run(layers, &h, train)?.f_add(&shortcut)?
                }
            };
        }
        Ok(h)
    }

    /// `nn.BatchNorm1d/2d.forward`: in training, count the batch and normalise by its
    /// statistics, updating the running ones in place; in eval, normalise by the running ones.
    fn batch_norm(&self, h: &Tensor, bn: &BatchNorm, train: bool) -> Result<Tensor, EngineError> {
        let b = |i: usize| &self.buffers[i].1;
        if train {
            let _ = tch::no_grad(|| b(bn.num_batches_tracked).shallow_clone().f_add_scalar_(1i64))?;
        }
        Ok(h.f_batch_norm(
            Some(&self.params[bn.weight].1),
            Some(&self.params[bn.bias].1),
            Some(b(bn.running_mean)),
            Some(b(bn.running_var)),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )?)
    }
}

#[cfg(test)]
#[path = "sequential_tests.rs"]
mod tests;
