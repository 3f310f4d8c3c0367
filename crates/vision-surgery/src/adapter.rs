//! The embedding-to-token adapter: precomputed item embeddings in, decoder soft tokens out.
//!
//! An adapter is one safetensors file whose header metadata declares its format
//! (see `docs/adapter-format.md`):
//!
//! | key | value |
//! |---|---|
//! | `format` | `mosaic.embedding_adapter` |
//! | `format_version` | `1` |
//! | `in_dim` | width of the item embeddings |
//! | `tokens_per_item` | K, soft tokens per item |
//! | `hidden_size` | the decoder's H |
//! | `architecture` | `linear` or `mlp` |
//! | `activation` | `none` (linear) or `gelu`, `gelu_tanh`, `silu`, `relu` (mlp) |
//! | `deepstack_layers` | optional, DeepStack levels produced (default 0) |
//! | `token_grid` | optional, `HxW` layout of the K tokens (default: most square) |
//!
//! Tensors (PyTorch `nn.Linear` layout, weight `[out, in]`): `linear` has
//! `proj.weight [K*H, in_dim]` and `proj.bias [K*H]`; `mlp` has `fc1.weight [M, in_dim]`,
//! `fc1.bias [M]`, `fc2.weight [K*H, M]`, `fc2.bias [K*H]`. DeepStack level l adds
//! `deepstack.{l}.weight [K*H, D]` and `deepstack.{l}.bias [K*H]`, where D is the
//! trunk width (`in_dim` for linear, M for mlp).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::VisualInput;
use crate::position::VisualGrid;
use crate::weights::{Weights, st_dtype};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "mosaic.embedding_adapter";
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: &str = "1";
/// Widest `in_dim` or `hidden_size` a header may declare (Qwen3-VL's largest hidden
/// size is 8192).
pub const MAX_WIDTH: usize = 1 << 16;
/// Most soft tokens per item a header may declare.
pub const MAX_TOKENS_PER_ITEM: usize = 4096;
/// Most DeepStack levels a header may declare (Qwen3-VL uses 3).
pub const MAX_DEEPSTACK_LAYERS: usize = 64;

/// Non-linearity between the two layers of an MLP adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No activation (linear adapters only).
    None,
    /// Exact GELU (`nn.GELU()`).
    Gelu,
    /// Tanh-approximated GELU (`nn.GELU(approximate="tanh")`).
    GeluTanh,
    /// SiLU / swish.
    Silu,
    /// ReLU.
    Relu,
}

impl Activation {
    /// The metadata spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Relu => "relu",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "none" | "identity" => Activation::None,
            "gelu" => Activation::Gelu,
            "gelu_tanh" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::AdapterFormat {
                    field: "activation".into(),
                    message: format!(
                        "unknown activation {other:?} (expected none, gelu, gelu_tanh, silu or relu)"
                    ),
                });
            }
        })
    }

    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::None => Ok(x.clone()),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::Relu => x.relu(),
        }
    }
}

/// Shape of the adapter network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// One affine map `in_dim -> K*H`.
    Linear,
    /// `fc2(act(fc1(x)))` with `fc1: in_dim -> hidden`.
    Mlp {
        /// Width of the hidden layer.
        hidden: usize,
        /// Activation after `fc1`.
        activation: Activation,
    },
}

/// Everything the header declares about an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSpec {
    /// Width of the item embeddings.
    pub in_dim: usize,
    /// K: soft tokens per item.
    pub tokens_per_item: usize,
    /// The decoder width H.
    pub hidden_size: usize,
    /// Network shape.
    pub architecture: Architecture,
    /// DeepStack levels produced (0 = none).
    pub deepstack_layers: usize,
    /// Layout of the K tokens for the 3-D positions.
    pub grid: VisualGrid,
}

impl AdapterSpec {
    /// A linear adapter with the default (most square) token grid.
    pub fn linear(in_dim: usize, tokens_per_item: usize, hidden_size: usize) -> Self {
        Self {
            in_dim,
            tokens_per_item,
            hidden_size,
            architecture: Architecture::Linear,
            deepstack_layers: 0,
            grid: VisualGrid::for_tokens(tokens_per_item),
        }
    }

    /// A 2-layer MLP adapter with the default token grid.
    pub fn mlp(
        in_dim: usize,
        hidden: usize,
        activation: Activation,
        tokens_per_item: usize,
        hidden_size: usize,
    ) -> Self {
        Self {
            architecture: Architecture::Mlp { hidden, activation },
            ..Self::linear(in_dim, tokens_per_item, hidden_size)
        }
    }

    /// The same spec producing `n` DeepStack levels.
    pub fn with_deepstack(mut self, n: usize) -> Self {
        self.deepstack_layers = n;
        self
    }

    /// Width of the trunk output feeding the heads.
    pub fn trunk_dim(&self) -> usize {
        match self.architecture {
            Architecture::Linear => self.in_dim,
            Architecture::Mlp { hidden, .. } => hidden,
        }
    }

    /// Expected `(name, shape)` of every tensor.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let out = self.tokens_per_item * self.hidden_size;
        let mut v = match self.architecture {
            Architecture::Linear => vec![
                ("proj.weight".to_string(), vec![out, self.in_dim]),
                ("proj.bias".to_string(), vec![out]),
            ],
            Architecture::Mlp { hidden, .. } => vec![
                ("fc1.weight".to_string(), vec![hidden, self.in_dim]),
                ("fc1.bias".to_string(), vec![hidden]),
                ("fc2.weight".to_string(), vec![out, hidden]),
                ("fc2.bias".to_string(), vec![out]),
            ],
        };
        for l in 0..self.deepstack_layers {
            v.push((format!("deepstack.{l}.weight"), vec![out, self.trunk_dim()]));
            v.push((format!("deepstack.{l}.bias"), vec![out]));
        }
        v
    }

    /// The header metadata for this spec.
    pub fn metadata(&self) -> HashMap<String, String> {
        let (arch, act) = match self.architecture {
            Architecture::Linear => ("linear", Activation::None),
            Architecture::Mlp { activation, .. } => ("mlp", activation),
        };
        HashMap::from([
            ("format".into(), FORMAT.into()),
            ("format_version".into(), FORMAT_VERSION.into()),
            ("in_dim".into(), self.in_dim.to_string()),
            ("tokens_per_item".into(), self.tokens_per_item.to_string()),
            ("hidden_size".into(), self.hidden_size.to_string()),
            ("architecture".into(), arch.into()),
            ("activation".into(), act.as_str().into()),
            ("deepstack_layers".into(), self.deepstack_layers.to_string()),
            (
                "token_grid".into(),
                format!("{}x{}", self.grid.h, self.grid.w),
            ),
        ])
    }

    /// Parse and check header metadata; `hidden` is the MLP width read from `fc1.weight`.
    /// Every number is bounded ([`MAX_WIDTH`], [`MAX_TOKENS_PER_ITEM`],
    /// [`MAX_DEEPSTACK_LAYERS`]) before anything is sized by it.
    pub fn from_metadata(
        meta: &HashMap<String, String>,
        mlp_hidden: Option<usize>,
    ) -> Result<Self> {
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| Error::AdapterFormat {
                field: k.into(),
                message: "missing from the safetensors header metadata".into(),
            })
        };
        let num = |k: &str, max: usize| -> Result<usize> {
            let v = get(k)?;
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 && n <= max => Ok(n),
                _ => Err(Error::AdapterFormat {
                    field: k.into(),
                    message: format!("expected an integer in 1..={max}, found {v:?}"),
                }),
            }
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(Error::AdapterFormat {
                field: "format".into(),
                message: format!("expected {FORMAT:?}, found {format:?}"),
            });
        }
        let version = get("format_version")?;
        if version != FORMAT_VERSION {
            return Err(Error::AdapterFormat {
                field: "format_version".into(),
                message: format!(
                    "this build reads version {FORMAT_VERSION}, the file is version {version:?}"
                ),
            });
        }
        let in_dim = num("in_dim", MAX_WIDTH)?;
        let tokens_per_item = num("tokens_per_item", MAX_TOKENS_PER_ITEM)?;
        let hidden_size = num("hidden_size", MAX_WIDTH)?;
        let activation = Activation::parse(get("activation")?)?;
        let architecture = match get("architecture")?.as_str() {
            "linear" => {
                if activation != Activation::None {
                    return Err(Error::AdapterFormat {
                        field: "activation".into(),
                        message: format!(
                            "a linear adapter has no activation, found {:?}",
                            activation.as_str()
                        ),
                    });
                }
                Architecture::Linear
            }
            "mlp" => {
                if activation == Activation::None {
                    return Err(Error::AdapterFormat {
                        field: "activation".into(),
                        message:
                            "an mlp adapter needs an activation (gelu, gelu_tanh, silu or relu)"
                                .into(),
                    });
                }
                let hidden = mlp_hidden.ok_or_else(|| Error::AdapterFormat {
                    field: "architecture".into(),
                    message: "mlp adapter without an fc1.weight tensor".into(),
                })?;
                Architecture::Mlp { hidden, activation }
            }
            other => {
                return Err(Error::AdapterFormat {
                    field: "architecture".into(),
                    message: format!("expected \"linear\" or \"mlp\", found {other:?}"),
                });
            }
        };
        let deepstack_layers = match meta.get("deepstack_layers") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= MAX_DEEPSTACK_LAYERS)
                .ok_or_else(|| Error::AdapterFormat {
                    field: "deepstack_layers".into(),
                    message: format!(
                        "expected an integer in 0..={MAX_DEEPSTACK_LAYERS}, found {v:?}"
                    ),
                })?,
        };
        let grid = match meta.get("token_grid") {
            None => VisualGrid::for_tokens(tokens_per_item),
            Some(g) => {
                let parsed = g.split_once('x').and_then(|(h, w)| {
                    Some((
                        h.trim().parse::<usize>().ok()?,
                        w.trim().parse::<usize>().ok()?,
                    ))
                });
                match parsed {
                    Some((h, w)) if h.checked_mul(w) == Some(tokens_per_item) && h > 0 => {
                        VisualGrid::still(h, w)
                    }
                    _ => {
                        return Err(Error::AdapterFormat {
                            field: "token_grid".into(),
                            message: format!(
                                "expected \"HxW\" with H*W = tokens_per_item = {tokens_per_item}, found {g:?}"
                            ),
                        });
                    }
                }
            }
        };
        Ok(Self {
            in_dim,
            tokens_per_item,
            hidden_size,
            architecture,
            deepstack_layers,
            grid,
        })
    }
}

/// The adapter's output for N items.
#[derive(Debug, Clone)]
pub struct SoftTokens {
    /// (N, K, H) soft tokens.
    pub tokens: Tensor,
    /// DeepStack features, each (N, K, H).
    pub deepstack: Vec<Tensor>,
}

/// A loaded embedding-to-token adapter.
#[derive(Debug, Clone)]
pub struct EmbeddingAdapter {
    spec: AdapterSpec,
    fc1: Option<Linear>,
    head: Linear,
    deepstack: Vec<Linear>,
}

fn mismatch(
    field: &'static str,
    expected_what: &str,
    expected: impl ToString,
    actual_what: &str,
    actual: impl ToString,
) -> Error {
    Error::AdapterMismatch {
        field,
        expected_what: expected_what.into(),
        expected: expected.to_string(),
        actual_what: actual_what.into(),
        actual: actual.to_string(),
    }
}

impl EmbeddingAdapter {
    /// Load an adapter file onto `device`, in `dtype`, validating header against tensors.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let weights = Weights::open(&[path.to_path_buf()])?;
        let meta = read_metadata(path)?;
        let mlp_hidden = weights
            .entry("fc1.weight")
            .and_then(|e| e.shape.first().copied());
        let spec = AdapterSpec::from_metadata(&meta, mlp_hidden)?;
        let expected = spec.tensor_shapes();
        let mut tensors = HashMap::new();
        for (name, shape) in &expected {
            let entry = weights.entry(name).ok_or_else(|| Error::AdapterFormat {
                field: name.clone(),
                message: format!("tensor missing from {}", path.display()),
            })?;
            if &entry.shape != shape {
                return Err(shape_error(&spec, name, shape, &entry.shape));
            }
            tensors.insert(name.clone(), weights.tensor(name, shape, dtype, device)?);
        }
        if let Some(extra) = weights
            .entries()
            .keys()
            .find(|k| !expected.iter().any(|(n, _)| n == *k))
        {
            return Err(Error::AdapterFormat {
                field: extra.clone(),
                message: format!(
                    "unexpected tensor for a {} adapter with {} DeepStack layers",
                    if spec.architecture == Architecture::Linear {
                        "linear"
                    } else {
                        "mlp"
                    },
                    spec.deepstack_layers
                ),
            });
        }
        Self::from_tensors(spec, tensors)
    }

    /// Build from a spec and its tensors (names and shapes as in [`AdapterSpec::tensor_shapes`]).
    pub fn from_tensors(spec: AdapterSpec, mut tensors: HashMap<String, Tensor>) -> Result<Self> {
        for (name, shape) in spec.tensor_shapes() {
            let t = tensors.get(&name).ok_or_else(|| Error::AdapterFormat {
                field: name.clone(),
                message: "tensor missing".into(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(shape_error(&spec, &name, &shape, t.dims()));
            }
        }
        let mut take = |w_name: &str, b_name: &str| -> Result<Linear> {
            match (tensors.remove(w_name), tensors.remove(b_name)) {
                (Some(w), Some(b)) => Ok(Linear::new(w, Some(b))),
                _ => Err(Error::AdapterFormat {
                    field: w_name.into(),
                    message: "tensor missing".into(),
                }),
            }
        };
        let (fc1, head) = match spec.architecture {
            Architecture::Linear => (None, take("proj.weight", "proj.bias")?),
            Architecture::Mlp { .. } => (
                Some(take("fc1.weight", "fc1.bias")?),
                take("fc2.weight", "fc2.bias")?,
            ),
        };
        let deepstack = (0..spec.deepstack_layers)
            .map(|l| {
                take(
                    &format!("deepstack.{l}.weight"),
                    &format!("deepstack.{l}.bias"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            spec,
            fc1,
            head,
            deepstack,
        })
    }

    /// A freshly initialised adapter (PyTorch's `nn.Linear` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
    /// deterministic in `seed`. The starting point for training.
    pub fn init(spec: AdapterSpec, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        // tensor_shapes() lists each weight right before its bias, which shares its fan-in
        let mut fan_in = 1;
        for (name, shape) in spec.tensor_shapes() {
            if let [_, inputs] = shape.as_slice() {
                fan_in = *inputs;
            }
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            let t = Tensor::from_vec(data, shape.as_slice(), device)?.to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Self::from_tensors(spec, tensors)
    }

    /// The header this adapter was loaded with.
    pub fn spec(&self) -> &AdapterSpec {
        &self.spec
    }

    /// The tensors, by format name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        let mut push = |w: &str, b: &str, l: &Linear| {
            v.push((w.to_string(), l.weight().clone()));
            if let Some(bias) = l.bias() {
                v.push((b.to_string(), bias.clone()));
            }
        };
        match &self.fc1 {
            None => push("proj.weight", "proj.bias", &self.head),
            Some(fc1) => {
                push("fc1.weight", "fc1.bias", fc1);
                push("fc2.weight", "fc2.bias", &self.head);
            }
        }
        for (l, d) in self.deepstack.iter().enumerate() {
            push(
                &format!("deepstack.{l}.weight"),
                &format!("deepstack.{l}.bias"),
                d,
            );
        }
        v
    }

    /// Check the adapter fits a decoder of width `hidden_size` trained with `deepstack_levels`.
    pub fn validate_for(&self, hidden_size: usize, deepstack_levels: usize) -> Result<()> {
        if self.spec.hidden_size != hidden_size {
            return Err(mismatch(
                "hidden_size",
                "the decoder's hidden_size",
                hidden_size,
                "the adapter's hidden_size",
                self.spec.hidden_size,
            ));
        }
        if self.spec.deepstack_layers > deepstack_levels {
            return Err(mismatch(
                "deepstack_layers",
                "the decoder's DeepStack levels (at most)",
                deepstack_levels,
                "the adapter's deepstack_layers",
                self.spec.deepstack_layers,
            ));
        }
        Ok(())
    }

    /// The visual input of a prompt about `items` (N, in_dim): [`EmbeddingAdapter::forward`]
    /// laid out as N x K placeholder rows in item order, one grid per item.
    pub fn visual_input(&self, items: &Tensor) -> Result<VisualInput> {
        let soft = self.forward(items)?;
        let n = soft.tokens.dim(0)?;
        let (k, h) = (self.spec.tokens_per_item, self.spec.hidden_size);
        Ok(VisualInput {
            embeds: soft.tokens.reshape((n * k, h))?,
            deepstack: soft
                .deepstack
                .iter()
                .map(|d| d.reshape((n * k, h)))
                .collect::<candle_core::Result<Vec<_>>>()?,
            grids: vec![self.spec.grid; n],
        })
    }

    /// Map item embeddings (N, in_dim) to soft tokens (N, K, H) and DeepStack features.
    /// Rejects a wrong width and non-finite values, naming the first bad row and column.
    pub fn forward(&self, items: &Tensor) -> Result<SoftTokens> {
        let (n, d) = match items.dims() {
            [n, d] => (*n, *d),
            dims => {
                return Err(Error::Embeddings {
                    message: format!("expected a 2-D (items, in_dim) tensor, got shape {dims:?}"),
                });
            }
        };
        if d != self.spec.in_dim {
            return Err(mismatch(
                "in_dim",
                "the adapter's in_dim",
                self.spec.in_dim,
                "the item embeddings' width",
                d,
            ));
        }
        check_finite(items)?;
        let dtype = self.head.weight().dtype();
        let device = self.head.weight().device();
        let x = items.to_dtype(dtype)?.to_device(device)?;
        let trunk = match &self.fc1 {
            None => x,
            Some(fc1) => {
                let act = match self.spec.architecture {
                    Architecture::Mlp { activation, .. } => activation,
                    Architecture::Linear => Activation::None,
                };
                act.apply(&fc1.forward(&x)?)?
            }
        };
        let (k, h) = (self.spec.tokens_per_item, self.spec.hidden_size);
        let tokens = self.head.forward(&trunk)?.reshape((n, k, h))?;
        let deepstack = self
            .deepstack
            .iter()
            .map(|l| l.forward(&trunk)?.reshape((n, k, h)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(SoftTokens { tokens, deepstack })
    }

    /// Write the adapter in the documented format.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_adapter(path, &self.spec, &self.tensors())
    }
}

fn shape_error(spec: &AdapterSpec, name: &str, expected: &[usize], actual: &[usize]) -> Error {
    // Name the header field the disagreeing axis is derived from.
    let out_axis_differs = expected.first() != actual.first();
    let field: &'static str = if expected.len() != actual.len() {
        "tensor rank"
    } else if name.starts_with("fc1.") {
        if out_axis_differs {
            "architecture (mlp width)"
        } else {
            "in_dim"
        }
    } else if out_axis_differs {
        "tokens_per_item * hidden_size"
    } else if name == "proj.weight" {
        "in_dim"
    } else {
        "architecture (trunk width)"
    };
    Error::AdapterMismatch {
        field,
        expected_what: format!(
            "shape of {name} implied by the header (in_dim {}, tokens_per_item {}, hidden_size {})",
            spec.in_dim, spec.tokens_per_item, spec.hidden_size
        ),
        expected: format!("{expected:?}"),
        actual_what: format!("shape of tensor {name}"),
        actual: format!("{actual:?}"),
    }
}

/// Reject NaN/Inf item embeddings, naming the first offending row and column.
pub fn check_finite(items: &Tensor) -> Result<()> {
    let flat: Vec<f32> = items.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let width = items.dims().last().copied().unwrap_or(1).max(1);
    if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
        return Err(Error::Embeddings {
            message: format!(
                "value {} at item {}, column {} is not finite",
                flat[i],
                i / width,
                i % width
            ),
        });
    }
    Ok(())
}

/// Read the `__metadata__` map of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a file we do not modify.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// A tensor as raw bytes for the safetensors writer.
pub(crate) struct RawView<'a> {
    pub(crate) dtype: safetensors::Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: std::borrow::Cow<'a, [u8]>,
}

impl safetensors::View for RawView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Little-endian bytes of a tensor, for writing.
pub(crate) fn tensor_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let dtype = st_dtype(t.dtype()).ok_or_else(|| Error::Input {
        message: format!("cannot write dtype {:?}", t.dtype()),
    })?;
    let flat = t.flatten_all()?;
    let bytes = match t.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(Error::Input {
                message: format!("cannot write dtype {other:?}"),
            });
        }
    };
    Ok((dtype, bytes))
}

/// Write an adapter file: `tensors` must match `spec` (checked), metadata from `spec`.
pub fn write_adapter(path: &Path, spec: &AdapterSpec, tensors: &[(String, Tensor)]) -> Result<()> {
    let expected = spec.tensor_shapes();
    if tensors.len() != expected.len() {
        return Err(Error::AdapterFormat {
            field: "tensors".into(),
            message: format!(
                "{} tensors given, the spec needs {}",
                tensors.len(),
                expected.len()
            ),
        });
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape) in &expected {
        let t = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::AdapterFormat {
                field: name.clone(),
                message: "tensor missing".into(),
            })?;
        if t.dims() != shape.as_slice() {
            return Err(shape_error(spec, name, shape, t.dims()));
        }
        views.push((name.clone(), t.clone()));
    }
    write_tensors(path, &views, spec.metadata())
}

/// Write `tensors` (any dtype the format knows) with header `metadata` to `path`.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, bytes) = tensor_bytes(t)?;
        views.push((
            name.clone(),
            RawView {
                dtype,
                shape: t.dims().to_vec(),
                data: bytes.into(),
            },
        ));
    }
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_errors_name_the_field() {
        let spec = AdapterSpec::mlp(24, 40, Activation::GeluTanh, 4, 64).with_deepstack(2);
        let meta = spec.metadata();
        assert_eq!(AdapterSpec::from_metadata(&meta, Some(40)).unwrap(), spec);

        let mut bad = meta.clone();
        bad.insert("tokens_per_item".into(), "zero".into());
        let e = AdapterSpec::from_metadata(&bad, Some(40)).unwrap_err();
        assert!(e.to_string().contains("tokens_per_item"), "{e}");

        let mut bad = meta.clone();
        bad.insert("format_version".into(), "7".into());
        assert!(
            AdapterSpec::from_metadata(&bad, Some(40))
                .unwrap_err()
                .to_string()
                .contains("format_version")
        );

        // numbers that would size allocations are bounded first
        for (field, value) in [
            ("deepstack_layers", "100000000000"),
            ("in_dim", "18446744073709551615"),
            ("hidden_size", "4294967296"),
            ("tokens_per_item", "1000000"),
            ("token_grid", "4294967296x4294967296"),
        ] {
            let mut bad = meta.clone();
            bad.insert(field.into(), value.into());
            let e = AdapterSpec::from_metadata(&bad, Some(40)).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }

        let mut bad = meta;
        bad.insert("token_grid".into(), "3x3".into());
        assert!(
            AdapterSpec::from_metadata(&bad, Some(40))
                .unwrap_err()
                .to_string()
                .contains("token_grid")
        );
    }

    #[test]
    fn forward_shapes_and_bad_input() {
        let spec = AdapterSpec::linear(8, 3, 16).with_deepstack(1);
        let a = EmbeddingAdapter::init(spec, 7, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::ones((5, 8), DType::F32, &Device::Cpu).unwrap();
        let out = a.forward(&x).unwrap();
        assert_eq!(out.tokens.dims(), &[5, 3, 16]);
        assert_eq!(out.deepstack.len(), 1);
        assert_eq!(out.deepstack[0].dims(), &[5, 3, 16]);

        let wide = Tensor::ones((5, 9), DType::F32, &Device::Cpu).unwrap();
        let e = a.forward(&wide).unwrap_err().to_string();
        assert!(
            e.contains("in_dim") && e.contains('8') && e.contains('9'),
            "{e}"
        );

        let mut v = vec![0.5f32; 16];
        v[11] = f32::NAN;
        let nan = Tensor::from_vec(v, (2, 8), &Device::Cpu).unwrap();
        let e = a.forward(&nan).unwrap_err().to_string();
        assert!(e.contains("item 1, column 3"), "{e}");

        let e = a.validate_for(32, 2).unwrap_err().to_string();
        assert!(
            e.contains("hidden_size") && e.contains("32") && e.contains("16"),
            "{e}"
        );
        let e = a.validate_for(16, 0).unwrap_err().to_string();
        assert!(e.contains("deepstack_layers"), "{e}");
        a.validate_for(16, 1).unwrap();
    }
}
