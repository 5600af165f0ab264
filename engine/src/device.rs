//! `training.device`: cpu | cuda | cuda:N | auto, on this machine.

use prune_core::options::Device as DeviceSpec;
use tch::Device;

use crate::EngineError;

/// A device chosen for a job, and a warning for the job when the choice is not the one asked
/// for (`auto` without a GPU).
pub struct Resolved {
    pub device: Device,
    pub warning: Option<String>,
}

/// The libtorch device for `spec`: `auto` is the first GPU if there is one, else the CPU (with
/// a warning); `cuda` is `cuda:0`; a GPU index this machine lacks is an error.
pub fn resolve(spec: DeviceSpec) -> Result<Resolved, EngineError> {
    resolve_with(spec, tch::Cuda::device_count() as usize)
}

fn resolve_with(spec: DeviceSpec, cuda_count: usize) -> Result<Resolved, EngineError> {
    let chosen = |device| Ok(Resolved { device, warning: None });
    match spec {
        DeviceSpec::Cpu => chosen(Device::Cpu),
        DeviceSpec::Auto if cuda_count > 0 => chosen(Device::Cuda(0)),
        DeviceSpec::Auto => Ok(Resolved {
            device: Device::Cpu,
            // With no device counted, libtorch may also lack CUDA altogether (a build without
            // PRUNE_CUDA=1): the same message either way.
            warning: Some(
                "training.device = \"auto\": no CUDA device on this node (or libtorch without CUDA), running on the CPU"
                    .into(),
            ),
        }),
        DeviceSpec::Cuda(index) => {
            let index = usize::from(index.unwrap_or(0));
            if index >= cuda_count {
                return Err(EngineError::Spec(format!(
                    "training.device: cuda:{index} requested but this machine has {cuda_count} CUDA device(s)"
                )));
            }
            chosen(Device::Cuda(index))
        }
    }
}

/// The devices a job can ask for on this machine: `cpu`, then `cuda:0`, `cuda:1`, ...
pub fn available() -> Vec<String> {
    let mut devices = vec!["cpu".to_string()];
    devices.extend((0..tch::Cuda::device_count()).map(|i| format!("cuda:{i}")));
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_the_cpu_and_says_so() {
        let r = resolve_with(DeviceSpec::Auto, 0).unwrap();
        assert_eq!(r.device, Device::Cpu);
        assert!(r.warning.unwrap().contains("running on the CPU"));
        let r = resolve_with(DeviceSpec::Auto, 2).unwrap();
        assert_eq!((r.device, r.warning), (Device::Cuda(0), None));
    }

    #[test]
    fn a_missing_gpu_is_an_error_naming_it() {
        let e = resolve_with(DeviceSpec::Cuda(Some(1)), 1).err().unwrap().to_string();
        assert!(e.contains("cuda:1 requested but this machine has 1 CUDA device(s)"), "{e}");
        assert!(resolve_with(DeviceSpec::Cuda(None), 0).is_err());
        assert_eq!(resolve_with(DeviceSpec::Cuda(None), 1).unwrap().device, Device::Cuda(0));
    }
}
