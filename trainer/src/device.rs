//! Where training and inference run: Burn's flex backend on the CPU (always built), or a
//! CUDA GPU when the trainer is built with `--features cuda` (Burn's CUDA backend takes 30+
//! minutes to build on two cores, and downloads an LLVM bundle while it builds, so it stays
//! out of the default build and of CI).

use anyhow::{Result, bail};
use burn::prelude::Device;

/// The device asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when built in and a GPU answers, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("{other:?}: expected auto, cpu or cuda")),
        }
    }
}

/// The Burn device for a choice, with a line saying which it is.
pub fn select_device(choice: DeviceChoice) -> Result<(Device, &'static str)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), "cpu (flex)")),
        DeviceChoice::Cuda => match cuda_device() {
            Some(device) => Ok((device, "cuda:0")),
            None if cfg!(feature = "cuda") => {
                bail!("--device cuda: no CUDA GPU answered (driver and CUDA 12 runtime needed)")
            }
            None => bail!("--device cuda: this fracmap-train was built without CUDA; rebuild with `--features cuda`"),
        },
        DeviceChoice::Auto => Ok(cuda_device().map_or((Device::flex(), "cpu (flex)"), |d| (d, "cuda:0"))),
    }
}

/// The first CUDA GPU, if the backend is built in and a small computation succeeds on it.
#[cfg(feature = "cuda")]
fn cuda_device() -> Option<Device> {
    use burn::prelude::Tensor;
    // The backend panics, rather than erring, when there is no driver or device.
    std::panic::catch_unwind(|| {
        let device = Device::cuda(0usize);
        let sum: f32 = Tensor::<1>::ones([4], &device).sum().into_scalar();
        (sum == 4.0).then_some(device)
    })
    .ok()
    .flatten()
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Option<Device> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_auto_falls_back_to_it() {
        assert_eq!(select_device(DeviceChoice::Cpu).unwrap().1, "cpu (flex)");
        if !cfg!(feature = "cuda") {
            assert_eq!(select_device(DeviceChoice::Auto).unwrap().1, "cpu (flex)");
            let err = select_device(DeviceChoice::Cuda).unwrap_err();
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn choices_parse_and_a_typo_is_named() {
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda));
        assert!("gpu".parse::<DeviceChoice>().unwrap_err().contains("\"gpu\""));
    }
}
