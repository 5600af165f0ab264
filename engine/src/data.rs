//! Datasets: safetensors `x`/`y` files, the shipped digits set, and seeded synthetic data.
//! Everything is loaded to memory as tensors; Keras-style `validation_split` holds out the tail.

use std::path::Path;

use prune_core::job::{Data, DataSource};
use tch::{Device, Kind, Tensor};

use crate::EngineError;
use crate::{rng, tensors};

/// scikit-learn's 8x8 digits, generated once by `scripts/make_digits.py`.
const DIGITS: &[u8] = include_bytes!("../../data/digits.safetensors");
pub use prune_core::datasets::DIGITS_SAMPLES;

#[derive(Debug)]
pub struct Dataset {
    /// f32 `[N, ...]`.
    pub x: Tensor,
    /// i64 class ids `[N]`, or f32 regression targets `[N, ...]`.
    pub y: Tensor,
}

impl Dataset {
    pub fn len(&self) -> i64 {
        self.x.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `y` holds class ids (cross-entropy targets).
    pub fn has_class_labels(&self) -> bool {
        self.y.kind() == Kind::Int64
    }

    fn to_device(&self, device: Device) -> Dataset {
        Dataset { x: self.x.to_device(device), y: self.y.to_device(device) }
    }
}

#[derive(Debug)]
pub struct Split {
    pub train: Dataset,
    pub validation: Option<Dataset>,
}

/// Loads `spec`'s data set: a built-in one, or `file`, the local path of `data.file` /
/// `data.blob`.
pub fn load(spec: &Data, file: Option<&Path>, seed: u64, device: Device) -> Result<Split, EngineError> {
    let full = match (&spec.source, file) {
        (DataSource::Digits, _) => digits()?,
        (&DataSource::Synthetic { ref shape, classes, samples }, _) => synthetic(shape, classes, samples, seed)?,
        (DataSource::File(_) | DataSource::Blob(_), Some(path)) => from_safetensors(path)?,
        (DataSource::File(_) | DataSource::Blob(_), None) => {
            return Err(EngineError::Data("no data given (data.file, data.blob or data.builtin)".into()))
        }
    };
    check_values(&full)?;
    split(full, spec.validation_split)
        .map(|s| Split { train: s.train.to_device(device), validation: s.validation.map(|v| v.to_device(device)) })
}

fn digits() -> Result<Dataset, EngineError> {
    let (tensors, _) = tensors::read(DIGITS)?;
    let x = find(&tensors, "x", "digits")?.to_kind(Kind::Float) / 16.0;
    let y = find(&tensors, "y", "digits")?.to_kind(Kind::Int64);
    Ok(Dataset { x, y })
}

/// Learnable synthetic classification: `x ~ N(0, 1)`, `y = argmax(x · W)` for a seeded `W`.
fn synthetic(shape: &[i64], classes: i64, samples: i64, seed: u64) -> Result<Dataset, EngineError> {
    let mut full_shape = vec![samples];
    full_shape.extend(shape);
    let features: i64 = shape.iter().product();
    tch::manual_seed(rng::torch_seed(seed, rng::STREAM_SYNTHETIC, 0));
    let x = Tensor::randn(&full_shape, (Kind::Float, Device::Cpu));
    let w = Tensor::randn([features, classes], (Kind::Float, Device::Cpu));
    let y = x.reshape([samples, features]).matmul(&w).argmax(1, false);
    Ok(Dataset { x, y })
}

fn from_safetensors(path: &Path) -> Result<Dataset, EngineError> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::Data(format!("cannot read data file: {e}")))?;
    let (tensors, _) = tensors::read(&bytes).map_err(|e| EngineError::Data(e.to_string()))?;
    let x = find(&tensors, "x", "data file")?;
    let y = find(&tensors, "y", "data file")?;
    if !x.is_floating_point() {
        return Err(EngineError::Data(format!("data file: x must be floating point, got {:?}", x.kind())));
    }
    let y = match y.kind() {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => y.to_kind(Kind::Int64),
        k if y.is_floating_point() && k != Kind::Float => y.to_kind(Kind::Float),
        Kind::Float => y,
        k => {
            return Err(EngineError::Data(format!(
                "data file: y must be integer class ids or float targets, got {k:?}"
            )))
        }
    };
    let (xs, ys) = (x.size(), y.size());
    if xs.is_empty() || ys.is_empty() {
        return Err(EngineError::Data(format!("data file: x and y need a sample dimension, got x {xs:?} y {ys:?}")));
    }
    if xs[0] != ys[0] {
        return Err(EngineError::Data(format!("data file: x has {} samples but y has {}", xs[0], ys[0])));
    }
    if y.kind() == Kind::Int64 && ys.len() != 1 {
        return Err(EngineError::Data(format!("data file: integer y must be class ids of shape [N], got {ys:?}")));
    }
    Ok(Dataset { x: x.to_kind(Kind::Float), y })
}

fn find(tensors: &[(String, Tensor)], name: &str, what: &str) -> Result<Tensor, EngineError> {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.shallow_clone())
        .ok_or_else(|| EngineError::Data(format!("{what}: no tensor named {name:?}")))
}

fn check_values(data: &Dataset) -> Result<(), EngineError> {
    if data.is_empty() {
        return Err(EngineError::Data("the dataset is empty".into()));
    }
    if !bool::try_from(data.x.isfinite().all())? {
        return Err(EngineError::Data("x contains NaN or infinite values".into()));
    }
    if data.y.is_floating_point() && !bool::try_from(data.y.isfinite().all())? {
        return Err(EngineError::Data("y contains NaN or infinite values".into()));
    }
    if data.has_class_labels() && i64::try_from(data.y.min())? < 0 {
        return Err(EngineError::Data("y contains negative class ids".into()));
    }
    Ok(())
}

/// Keras: the last `validation_split` fraction (before any shuffling) is held out.
fn split(data: Dataset, validation_split: f64) -> Result<Split, EngineError> {
    let n = data.len();
    let train_n = ((n as f64) * (1.0 - validation_split)).floor() as i64;
    if train_n < 1 {
        return Err(EngineError::Data(format!(
            "validation_split {validation_split} leaves no training samples out of {n}"
        )));
    }
    if train_n == n {
        return Ok(Split { train: data, validation: None });
    }
    let validation = Dataset { x: data.x.narrow(0, train_n, n - train_n), y: data.y.narrow(0, train_n, n - train_n) };
    let train = Dataset { x: data.x.narrow(0, 0, train_n), y: data.y.narrow(0, 0, train_n) };
    Ok(Split { train, validation: Some(validation) })
}

pub(crate) fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_split_like_keras() {
        let _rng = crate::rng::global_generator_lock();
        let spec = Data { source: DataSource::Digits, validation_split: 0.1 };
        let s = load(&spec, None, 0, Device::Cpu).unwrap();
        assert_eq!(s.train.len(), 1617);
        assert_eq!(s.validation.as_ref().unwrap().len(), 180);
        assert_eq!(s.train.x.size(), vec![1617, 64]);
        assert!(f64::try_from(s.train.x.max()).unwrap() <= 1.0);
    }

    #[test]
    fn synthetic_is_seeded() {
        let _rng = crate::rng::global_generator_lock();
        let spec = Data {
            source: DataSource::Synthetic { shape: vec![3, 4], classes: 5, samples: 20 },
            validation_split: 0.0,
        };
        let a = load(&spec, None, 3, Device::Cpu).unwrap();
        let b = load(&spec, None, 3, Device::Cpu).unwrap();
        assert!(a.train.x.equal(&b.train.x) && a.train.y.equal(&b.train.y));
        assert_eq!(a.train.x.size(), vec![20, 3, 4]);
    }
}
