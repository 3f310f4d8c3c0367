//! Device selection shared by every Mosaic crate.
//!
//! A [`DeviceSpec`] says where tensors should live — `auto`, `cpu` or `cuda[:N]` — and
//! [`DeviceSpec::select`] resolves it to a candle [`Device`] together with the reason
//! for the choice. Every crate takes devices the same way: parse a spec (from a flag
//! or a config file), select once at start-up, and hand the resulting `Device` to the
//! constructors that take one.
//!
//! - `cpu` is always available.
//! - `cuda:N` (or `cuda`, meaning `cuda:0`) needs the `cuda` cargo feature and a CUDA
//!   device `N`; otherwise [`DeviceError`] says which of the two is missing.
//! - `auto` takes `cuda:0` when the `cuda` feature is compiled in and a device answers,
//!   and otherwise falls back to the CPU, logging why (`tracing`, level `info`) and
//!   returning the reason in [`Selection::reason`].
//!
//! ```
//! use mosaic_device::DeviceSpec;
//! let spec: DeviceSpec = "cpu".parse().unwrap();
//! let sel = spec.select().unwrap();
//! assert!(sel.device().is_cpu());
//! ```

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

pub use candle_core::Device;

/// Where tensors should live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when compiled with `cuda` and one answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

/// Why a device could not be selected or a spec not parsed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The text is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device {input:?}: expected auto, cpu, cuda or cuda:N")]
    Parse {
        /// The text given.
        input: String,
    },
    /// A CUDA device was asked for in a build without the `cuda` feature.
    #[error("{spec} asked for, but this build has no CUDA support (enable the `cuda` feature)")]
    NotCompiled {
        /// The spec asked for.
        spec: DeviceSpec,
    },
    /// The CUDA device could not be opened (no driver, no such ordinal, ...).
    #[error("{spec} is not available: {source}")]
    Unavailable {
        /// The spec asked for.
        spec: DeviceSpec,
        /// The driver's answer.
        #[source]
        source: candle_core::Error,
    },
}

/// A resolved device and why it was chosen.
#[derive(Debug, Clone)]
pub struct Selection {
    device: Device,
    spec: DeviceSpec,
    reason: String,
}

impl Selection {
    /// The device to hand to constructors.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Gives up the selection, keeping the device.
    pub fn into_device(self) -> Device {
        self.device
    }

    /// The spec it was selected from.
    pub fn spec(&self) -> DeviceSpec {
        self.spec
    }

    /// What was chosen and why (for logs and examples' output), e.g.
    /// `cpu (auto: this build has no CUDA support)`.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the device is a CUDA device.
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }
}

impl DeviceSpec {
    /// Whether this build was compiled with the `cuda` feature.
    pub fn cuda_compiled() -> bool {
        candle_core::utils::cuda_is_available()
    }

    /// Resolves the spec to a device. `auto` never fails: it falls back to the CPU and
    /// logs the reason.
    pub fn select(self) -> Result<Selection, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Selection {
                device: Device::Cpu,
                spec: self,
                reason: "cpu (asked for)".into(),
            }),
            DeviceSpec::Cuda(n) => {
                if !Self::cuda_compiled() {
                    return Err(DeviceError::NotCompiled { spec: self });
                }
                let device = Device::new_cuda(n)
                    .map_err(|source| DeviceError::Unavailable { spec: self, source })?;
                Ok(Selection {
                    device,
                    spec: self,
                    reason: format!("cuda:{n} (asked for)"),
                })
            }
            DeviceSpec::Auto => {
                let why = if !Self::cuda_compiled() {
                    "this build has no CUDA support".to_string()
                } else {
                    match Device::new_cuda(0) {
                        Ok(device) => {
                            return Ok(Selection {
                                device,
                                spec: self,
                                reason: "cuda:0 (auto: a CUDA device answered)".into(),
                            });
                        }
                        Err(e) => format!("no CUDA device answered ({e})"),
                    }
                };
                tracing::info!("device auto: falling back to the CPU: {why}");
                Ok(Selection {
                    device: Device::Cpu,
                    spec: self,
                    reason: format!("cpu (auto: {why})"),
                })
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || DeviceError::Parse { input: s.into() };
        match t.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = t
                    .strip_prefix("cuda:")
                    .or_else(|| t.strip_prefix("gpu:"))
                    .ok_or_else(bad)?;
                n.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

/// Helpers for the crates' custom candle ops (`CustomOp1`/`CustomOp2`).
pub mod ops {
    use candle_core::{CpuStorage, Layout, WithDType};

    /// The element range of a contiguous operand, or an error naming the layout.
    pub fn offsets(l: &Layout) -> candle_core::Result<(usize, usize)> {
        match l.contiguous_offsets() {
            Some(o) => Ok(o),
            None => candle_core::bail!("custom op: non-contiguous operand {l:?}"),
        }
    }

    /// The elements of a contiguous CPU operand.
    pub fn cpu_slice<'a, T: WithDType>(
        s: &'a CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<&'a [T]> {
        let (a, b) = offsets(l)?;
        Ok(&s.as_slice::<T>()?[a..b])
    }
}

/// Custom CUDA kernels for the crates' own ops: CUDA C source compiled once per
/// process with NVRTC (the driver's runtime compiler, so the PTX always suits the
/// installed driver) and loaded once per device by candle.
#[cfg(feature = "cuda")]
pub mod kernels {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use candle_core::cuda_backend::CudaDevice;
    use candle_core::cuda_backend::cudarc::driver::CudaFunction;
    use candle_core::cuda_backend::cudarc::nvrtc;

    /// Function `name` of the module `module` (a process-unique name) compiled from
    /// `source`; launch it with `device.cuda_stream().launch_builder(&func)`. A compile
    /// error names the module and carries NVRTC's log.
    pub fn function(
        device: &CudaDevice,
        module: &'static str,
        source: &'static str,
        name: &str,
    ) -> candle_core::Result<impl std::ops::Deref<Target = CudaFunction>> {
        static PTX: OnceLock<Mutex<HashMap<&'static str, Result<String, String>>>> =
            OnceLock::new();
        let ptx = {
            let mut cache = PTX
                .get_or_init(|| Mutex::new(HashMap::new()))
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache
                .entry(module)
                .or_insert_with(|| {
                    nvrtc::compile_ptx(source)
                        .map(|p| p.to_src())
                        .map_err(|e| format!("NVRTC could not compile {module}: {e:?}"))
                })
                .clone()
        };
        let ptx = ptx.map_err(candle_core::Error::Msg)?;
        device.get_or_load_custom_func(name, module, &ptx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("gpu:1", DeviceSpec::Cuda(1)),
        ] {
            let got: DeviceSpec = text.parse().unwrap();
            assert_eq!(got, spec, "{text}");
            assert_eq!(got.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(matches!(e, DeviceError::Parse { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("expected auto, cpu, cuda"));
        }
        assert_eq!(DeviceSpec::default(), DeviceSpec::Auto);
    }

    #[test]
    fn cpu_is_always_selected_and_auto_always_resolves() {
        let cpu = DeviceSpec::Cpu.select().unwrap();
        assert!(cpu.device().is_cpu() && !cpu.is_cuda());
        assert_eq!(cpu.spec(), DeviceSpec::Cpu);
        let auto = DeviceSpec::Auto.select().unwrap();
        if auto.is_cuda() {
            assert!(auto.reason().starts_with("cuda:0"));
        } else {
            assert!(
                auto.reason().starts_with("cpu (auto: "),
                "{}",
                auto.reason()
            );
        }
    }

    #[test]
    fn cuda_without_support_or_device_is_a_typed_error() {
        match DeviceSpec::Cuda(4096).select() {
            Err(DeviceError::NotCompiled { spec }) => {
                assert!(!DeviceSpec::cuda_compiled());
                assert_eq!(spec, DeviceSpec::Cuda(4096));
            }
            Err(DeviceError::Unavailable { spec, .. }) => {
                assert!(DeviceSpec::cuda_compiled());
                assert_eq!(spec, DeviceSpec::Cuda(4096));
            }
            other => panic!("cuda:4096 selected: {other:?}"),
        }
    }
}
