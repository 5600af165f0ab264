//! `training.device`: cpu | cuda | cuda:N | auto.

use tch::Device;

use crate::EngineError;

pub fn resolve(name: &str) -> Result<Device, EngineError> {
    let cuda_count = || tch::Cuda::device_count() as usize;
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda_count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cuda" => resolve("cuda:0"),
        other => {
            let index: usize = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| EngineError::Spec(format!("training.device: unknown device {other:?} (cpu, cuda, cuda:N, auto)")))?;
            let count = cuda_count();
            if index >= count {
                return Err(EngineError::Spec(format!(
                    "training.device: {other} requested but this machine has {count} CUDA device(s)"
                )));
            }
            Ok(Device::Cuda(index))
        }
    }
}
