//! The three kinds of model a job can prune, behind one interface: named parameters (PyTorch's
//! dotted names, taken from the module itself), a forward pass, train/eval mode.

use std::collections::HashMap;
use std::path::Path;

use prune_core::spec::{LayerSpec, ModelSpec};
use tch::{CModule, Device, Kind, Tensor};

use crate::data::first_line;
use crate::{rng, tensors, EngineError};

/// A model's trainable parameters in the module's own order, with PyTorch's dotted names.
pub type NamedParams = Vec<(String, Tensor)>;

pub enum Model {
    Sequential(Sequential),
    Script(Script),
    /// A bare safetensors state dict: nothing to run, so one-shot pruning only.
    StateDict(NamedParams),
}

impl Model {
    pub fn load(
        spec: &ModelSpec,
        model_file: Option<&Path>,
        weights_file: Option<&Path>,
        seed: u64,
        device: Device,
    ) -> Result<Model, EngineError> {
        let model = Self::load_unchecked(spec, model_file, weights_file, seed, device)?;
        check_finite(model.params())?;
        Ok(model)
    }

    fn load_unchecked(
        spec: &ModelSpec,
        model_file: Option<&Path>,
        weights_file: Option<&Path>,
        seed: u64,
        device: Device,
    ) -> Result<Model, EngineError> {
        if let Some(layers) = &spec.sequential {
            let mut model = Sequential::new(layers, seed, device)?;
            if let Some(w) = weights_file {
                model.load_weights(w)?;
            }
            return Ok(Model::Sequential(model));
        }
        let path = model_file
            .ok_or_else(|| EngineError::Model("no model given (model.file, model.blob or model.sequential)".into()))?;
        let bytes = std::fs::read(path).map_err(|e| EngineError::Model(format!("cannot read model file: {e}")))?;
        if is_zip(&bytes) {
            Ok(Model::Script(Script::load(&bytes, device)?))
        } else if looks_like_safetensors(&bytes) {
            let (params, _) = tensors::read(&bytes).map_err(|e| EngineError::Model(format!("state dict: {e}")))?;
            let params = params.into_iter().map(|(n, t)| (n, t.to_device(device))).collect();
            Ok(Model::StateDict(params))
        } else {
            Err(EngineError::Model(
                "model file is neither TorchScript (a zip archive from torch.jit.save) nor safetensors".into(),
            ))
        }
    }
}

/// NaN or infinite weights make the magnitude ranking meaningless (and training diverge).
fn check_finite(params: &NamedParams) -> Result<(), EngineError> {
    for (name, t) in params {
        let finite = !t.is_floating_point() || t.isfinite().all().int64_value(&[]) == 1;
        if !finite {
            return Err(EngineError::Model(format!("parameter {name} holds NaN or infinite values")));
        }
    }
    Ok(())
}

impl Model {
    pub fn params(&self) -> &NamedParams {
        match self {
            Model::Sequential(m) => &m.params,
            Model::Script(m) => &m.params,
            Model::StateDict(p) => p,
        }
    }

    pub fn can_train(&self) -> bool {
        !matches!(self, Model::StateDict(_))
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, EngineError> {
        match self {
            Model::Sequential(m) => m.forward(x, train),
            Model::Script(m) => Ok(m.module.forward_ts(&[x])?),
            Model::StateDict(_) => {
                Err(EngineError::Model("a safetensors state dict cannot be trained: use epochs = 0".into()))
            }
        }
    }

    pub fn set_train(&mut self, train: bool) -> Result<(), EngineError> {
        if let Model::Script(m) = self {
            if train {
                m.module.f_set_train()?
            } else {
                m.module.f_set_eval()?
            }
        }
        Ok(())
    }
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

/// A TorchScript module, trained in place: its parameter tensors are shared with the module,
/// so `save` writes the pruned weights.
pub struct Script {
    pub module: CModule,
    pub params: NamedParams,
}

impl Script {
    pub fn load(bytes: &[u8], device: Device) -> Result<Script, EngineError> {
        let module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
            .map_err(|e| EngineError::Model(format!("not a loadable TorchScript module: {}", first_line(&e))))?;
        let params = module.named_parameters()?;
        for (_, p) in &params {
            if p.is_floating_point() && !p.requires_grad() {
                let _ = p.set_requires_grad(true);
            }
        }
        Ok(Script { module, params })
    }

    /// The module as TorchScript bytes (what `torch.jit.load` reads).
    pub fn to_bytes(&self, scratch_dir: &Path) -> Result<Vec<u8>, EngineError> {
        std::fs::create_dir_all(scratch_dir)?;
        let tmp = scratch_dir.join(format!(".module-{}.pt.tmp", std::process::id()));
        self.module.save(&tmp)?;
        let bytes = std::fs::read(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        Ok(bytes)
    }
}

enum Layer {
    Linear { weight: usize, bias: Option<usize> },
    Conv2d { weight: usize, bias: Option<usize>, stride: i64, padding: i64 },
    Relu,
    Tanh,
    Sigmoid,
    MaxPool2d(i64),
    Flatten,
    Dropout(f64),
    Reshape(Vec<i64>),
}

/// The built-in `sequential` architecture, named like `torch.nn.Sequential` (`0.weight`, ...).
pub struct Sequential {
    layers: Vec<Layer>,
    pub params: NamedParams,
}

/// `relu -> maxpool2d` runs as `maxpool2d -> relu`: on the CPU the pool is the costliest layer
/// of a small CNN and relu then touches k*k times fewer values. Exact, forward and backward:
/// max commutes with relu, a window whose maximum is positive picks the same first index either
/// way, and one whose maximum is <= 0 gets a zero gradient either way.
fn swap_relu_before_pool(layers: &mut [Layer]) {
    let mut i = 0;
    while i + 1 < layers.len() {
        if matches!(layers[i], Layer::Relu) && matches!(layers[i + 1], Layer::MaxPool2d(_)) {
            layers.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
}

impl Sequential {
    /// Initialises like PyTorch's defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
    /// biases (kaiming_uniform with a = sqrt(5)), seeded by the job seed.
    pub fn new(specs: &[LayerSpec], seed: u64, device: Device) -> Result<Sequential, EngineError> {
        tch::manual_seed(rng::torch_seed(seed, rng::STREAM_INIT, 0));
        let mut params: NamedParams = Vec::new();
        let mut layers = Vec::with_capacity(specs.len());
        let mut add = |name: String, shape: &[i64], fan_in: i64| -> usize {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let t = Tensor::empty(shape, (Kind::Float, device)).uniform_(-bound, bound).set_requires_grad(true);
            params.push((name, t));
            params.len() - 1
        };
        for (i, spec) in specs.iter().enumerate() {
            let layer = match *spec {
                LayerSpec::Linear { in_features, out_features, bias } => Layer::Linear {
                    weight: add(format!("{i}.weight"), &[out_features, in_features], in_features),
                    bias: bias.then(|| add(format!("{i}.bias"), &[out_features], in_features)),
                },
                LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, bias } => {
                    let fan_in = in_channels * kernel * kernel;
                    Layer::Conv2d {
                        weight: add(format!("{i}.weight"), &[out_channels, in_channels, kernel, kernel], fan_in),
                        bias: bias.then(|| add(format!("{i}.bias"), &[out_channels], fan_in)),
                        stride,
                        padding,
                    }
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Tanh => Layer::Tanh,
                LayerSpec::Sigmoid => Layer::Sigmoid,
                LayerSpec::Maxpool2d { kernel } => Layer::MaxPool2d(kernel),
                LayerSpec::Flatten => Layer::Flatten,
                LayerSpec::Dropout { p } => Layer::Dropout(p),
                LayerSpec::Reshape { ref shape } => Layer::Reshape(shape.clone()),
            };
            layers.push(layer);
        }
        swap_relu_before_pool(&mut layers);
        Ok(Sequential { layers, params })
    }

    /// Initial weights from safetensors with `nn.Sequential` names; every parameter must be
    /// there with the right shape, and nothing else.
    pub fn load_weights(&mut self, path: &Path) -> Result<(), EngineError> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::Model(format!("cannot read model.weights: {e}")))?;
        let (loaded, _) = tensors::read(&bytes).map_err(|e| EngineError::Model(format!("model.weights: {e}")))?;
        let mut loaded: HashMap<String, Tensor> = loaded.into_iter().collect();
        for (name, p) in &self.params {
            let w = loaded
                .remove(name)
                .ok_or_else(|| EngineError::Model(format!("model.weights: missing tensor {name:?}")))?;
            if w.size() != p.size() {
                return Err(EngineError::Model(format!(
                    "model.weights: {name} has shape {:?}, the model needs {:?}",
                    w.size(),
                    p.size()
                )));
            }
            tch::no_grad(|| p.shallow_clone().copy_(&w.to_kind(Kind::Float)));
        }
        if let Some(extra) = loaded.keys().min() {
            return Err(EngineError::Model(format!("model.weights: tensor {extra:?} is not a parameter of the model")));
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, EngineError> {
        let p = |i: usize| &self.params[i].1;
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Linear { weight, bias } => h.f_linear(p(*weight), bias.map(p))?,
                Layer::Conv2d { weight, bias, stride, padding } => {
                    h.f_conv2d(p(*weight), bias.map(p), [*stride, *stride], [*padding, *padding], [1, 1], 1)?
                }
                Layer::Relu => h.relu(),
                Layer::Tanh => h.tanh(),
                Layer::Sigmoid => h.sigmoid(),
                Layer::MaxPool2d(k) => h.f_max_pool2d([*k, *k], [*k, *k], [0, 0], [1, 1], false)?,
                Layer::Flatten => h.f_flatten(1, -1)?,
                Layer::Dropout(rate) => h.f_dropout(*rate, train)?,
                Layer::Reshape(shape) => {
                    let mut full = vec![h.size()[0]];
                    full.extend(shape);
                    h.f_reshape(&full)?
                }
            };
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The swapped `maxpool -> relu` gives bit-identical outputs and gradients to the layers
    /// in the order the user wrote them (many ties at zero: half the conv outputs are negative).
    #[test]
    fn pooling_before_relu_is_exact_forward_and_backward() {
        let specs = [
            LayerSpec::Conv2d { in_channels: 1, out_channels: 4, kernel: 3, stride: 1, padding: 0, bias: true },
            LayerSpec::Relu,
            LayerSpec::Maxpool2d { kernel: 2 },
            LayerSpec::Flatten,
            LayerSpec::Linear { in_features: 4 * 13 * 13, out_features: 3, bias: true },
        ];
        let model = Sequential::new(&specs, 5, Device::Cpu).unwrap();
        assert!(matches!(model.layers[1], Layer::MaxPool2d(2)) && matches!(model.layers[2], Layer::Relu));
        tch::manual_seed(9);
        // Rounded inputs: equal values inside pooling windows, so ties are exercised too.
        let x = (Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0).round();
        let p = |i: usize| &model.params[i].1;
        let grads = |out: Tensor| -> Vec<Tensor> {
            for (_, t) in &model.params {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            (&out * &out).sum(Kind::Float).backward();
            model.params.iter().map(|(_, t)| t.grad().copy()).collect()
        };
        let reference = x
            .conv2d(p(0), Some(p(1)), [1, 1], [0, 0], [1, 1], 1)
            .relu()
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
            .flatten(1, -1)
            .linear(p(2), Some(p(3)));
        let swapped = model.forward(&x, true).unwrap();
        assert!(reference.equal(&swapped));
        let (a, b) = (grads(reference), grads(swapped));
        assert!(a.iter().zip(&b).all(|(a, b)| a.equal(b)), "gradients differ");
    }
}
