//! Conversions between libtorch tensors and the safetensors data of `prune_core::bitmask`, so
//! every file the engine reads or writes goes through one validated safetensors codec.

use std::collections::HashMap;

use prune_core::bitmask::{self, TensorData};
use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use crate::EngineError;

pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

pub fn to_tensor(t: &TensorData) -> Result<Tensor, EngineError> {
    let kind = kind_of(t.dtype)
        .ok_or_else(|| EngineError::Format(format!("tensor {}: unsupported dtype {:?}", t.name, t.dtype)))?;
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(&t.data, &shape, kind)?)
}

pub fn to_data(name: &str, t: &Tensor) -> Result<TensorData, EngineError> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind())
        .ok_or_else(|| EngineError::Export(format!("tensor {name}: unsupported kind {:?}", t.kind())))?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(TensorData { name: name.to_string(), dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
}

/// Named tensors and the file's metadata.
pub type Contents = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Parses safetensors bytes (lying headers are rejected by the codec, never trusted).
pub fn read(bytes: &[u8]) -> Result<Contents, EngineError> {
    let (tensors, meta) = bitmask::read_safetensors(bytes).map_err(|e| EngineError::Format(e.to_string()))?;
    let tensors =
        tensors.iter().map(|t| Ok((t.name.clone(), to_tensor(t)?))).collect::<Result<Vec<_>, EngineError>>()?;
    Ok((tensors, meta.unwrap_or_default()))
}

pub fn write(tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>, EngineError> {
    let data = tensors.iter().map(|(n, t)| to_data(n, t)).collect::<Result<Vec<_>, _>>()?;
    bitmask::write_safetensors(&data, Some(metadata)).map_err(|e| EngineError::Export(e.to_string()))
}
