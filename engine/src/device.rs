//! `training.device`: cpu | cuda | cuda:N | auto, on this machine.

use prune_core::options::Device as DeviceSpec;
use tch::Device;

use crate::EngineError;

/// The libtorch device for `spec`: `auto` is the first GPU if there is one, else the CPU;
/// `cuda` is `cuda:0`; a GPU index this machine lacks is an error.
pub fn resolve(spec: DeviceSpec) -> Result<Device, EngineError> {
    let cuda_count = || tch::Cuda::device_count() as usize;
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(if cuda_count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
        DeviceSpec::Cuda(index) => {
            let index = usize::from(index.unwrap_or(0));
            let count = cuda_count();
            if index >= count {
                return Err(EngineError::Spec(format!(
                    "training.device: cuda:{index} requested but this machine has {count} CUDA device(s)"
                )));
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// The devices a job can ask for on this machine: `cpu`, then `cuda:0`, `cuda:1`, ...
pub fn available() -> Vec<String> {
    let mut devices = vec!["cpu".to_string()];
    devices.extend((0..tch::Cuda::device_count()).map(|i| format!("cuda:{i}")));
    devices
}
