//! The three kinds of model a job can prune, behind one interface: named parameters (PyTorch's
//! dotted names, taken from the module itself), a forward pass, train/eval mode.

use std::path::Path;

use prune_core::spec::ModelSpec;
use tch::{CModule, Device, Tensor};

use crate::data::first_line;
pub use crate::sequential::Sequential;
use crate::{tensors, EngineError};

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
        check_finite(model.buffers())?;
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
fn check_finite(params: &[(String, Tensor)]) -> Result<(), EngineError> {
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

    /// Tensors of the state dict that are not parameters (BatchNorm's running statistics):
    /// checkpointed and exported, never trained or pruned. A TorchScript module keeps its own
    /// inside the module (checkpointed whole).
    pub fn buffers(&self) -> &[(String, Tensor)] {
        match self {
            Model::Sequential(m) => &m.buffers,
            Model::Script(_) | Model::StateDict(_) => &[],
        }
    }

    /// The whole state dict, parameters then buffers: what artifacts hold.
    pub fn state(&self) -> NamedParams {
        self.params().iter().chain(self.buffers()).map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
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
        module_bytes(&self.module, scratch_dir)
    }
}

/// A TorchScript module as the bytes `torch.jit.load` reads (libtorch saves to a path, so
/// through a scratch file in `scratch_dir`).
pub fn module_bytes(module: &CModule, scratch_dir: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::create_dir_all(scratch_dir)?;
    let tmp = scratch_dir.join(format!(".module-{}.pt.tmp", std::process::id()));
    module.save(&tmp)?;
    let bytes = std::fs::read(&tmp)?;
    let _ = std::fs::remove_file(&tmp);
    Ok(bytes)
}
