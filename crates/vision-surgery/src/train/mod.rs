//! Training an [`EmbeddingAdapter`] with the decoder frozen.
//!
//! Two objectives, usable together:
//! - **next-token**: the adapter's soft tokens, placed in the chat template, should make
//!   the frozen decoder say the item's target text (cross-entropy on the answer tokens
//!   and the closing `<|im_end|>`);
//! - **distillation**: the soft tokens should match what the vision tower produces for the
//!   item's image, pooled to the adapter's token grid ([`crate::full::FullModel::pooled_tokens`]),
//!   by MSE or cosine distance (DeepStack features included where both sides have them).
//!
//! Gradients flow through the decoder's differentiable kernels
//! ([`crate::decoder::Kernels::Differentiable`]) to the adapter's weights only, which
//! [`AdamW`] updates after global-norm clipping. Batches are drawn by a shuffle seeded per
//! epoch, so a run resumed from a checkpoint sees exactly the batches it would have seen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, IndexOp, Tensor, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::adapter::{AdapterSpec, EmbeddingAdapter, write_adapter};
use crate::error::{Error, Result};
use crate::model::{SequenceInput, TextModel, VisualInput};
use crate::prompt::PromptTokenizer;
use crate::surgered::SurgeredModel;

mod adamw;
mod options;
mod pairs;

pub use adamw::AdamW;
pub use options::{DistillLoss, Teacher, TrainExample, TrainOptions};
pub use pairs::{PairRecord, load_pairs};

/// Value of the `format` metadata key of a trainer-state file.
pub const STATE_FORMAT: &str = "mosaic.adapter_trainer";

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// 1-based global step.
    pub step: u64,
    /// 0-based epoch.
    pub epoch: usize,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Weighted total loss.
    pub loss: f32,
    /// Next-token cross-entropy (mean per answer token), when the batch had targets.
    pub next_token: Option<f32>,
    /// Distillation loss, when the batch had teachers.
    pub distill: Option<f32>,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Whether a checkpoint was written after this step.
    pub checkpointed: bool,
}

/// An example turned into tensors and token ids.
struct Prepared {
    embedding: Vec<f32>,
    /// Prompt + answer + `<|im_end|>`, `None` without a target.
    sequence: Option<Vec<u32>>,
    teacher: Option<Teacher>,
}

/// Trains an adapter against a frozen decoder.
pub struct AdapterTrainer<'m> {
    model: &'m TextModel,
    tokenizer: &'m PromptTokenizer,
    spec: AdapterSpec,
    names: Vec<String>,
    adapter: EmbeddingAdapter,
    opt: AdamW,
    opts: TrainOptions,
    prompt_ids: Vec<u32>,
    im_end: u32,
}

impl std::fmt::Debug for AdapterTrainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterTrainer")
            .field("spec", &self.spec)
            .field("step", &self.opt.step)
            .finish()
    }
}

/// Where the optimiser state of the checkpoint at `adapter_path` lives:
/// `adapter.safetensors` -> `adapter.trainer.safetensors`.
pub fn state_path(adapter_path: &Path) -> PathBuf {
    let stem = adapter_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    adapter_path.with_file_name(format!("{stem}.trainer.safetensors"))
}

impl<'m> AdapterTrainer<'m> {
    /// Start training `adapter` (from [`EmbeddingAdapter::init`], say) against `model`,
    /// which must have a tokenizer. The adapter is trained in f32 on the model's device.
    pub fn new(
        model: &'m SurgeredModel,
        adapter: EmbeddingAdapter,
        opts: TrainOptions,
    ) -> Result<Self> {
        opts.validate()?;
        let cfg = model.config();
        adapter.validate_for(cfg.text.hidden_size, cfg.deepstack_levels)?;
        let tokenizer = model.tokenizer().ok_or_else(|| Error::Tokenizer {
            message: "training needs the checkpoint's tokenizer.json".into(),
        })?;
        let text = model.text_model();
        let device = text.decoder().device().clone();
        let spec = adapter.spec().clone();
        let mut names = Vec::new();
        let mut vars = Vec::new();
        let mut tensors = HashMap::new();
        for (name, t) in adapter.tensors() {
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&device)?)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            names.push(name);
            vars.push(var);
        }
        let adapter = EmbeddingAdapter::from_tensors(spec.clone(), tensors)?;
        let opt = AdamW::new(vars, &opts)?;
        let prompt_ids = tokenizer.encode_prompt(&opts.prompt, 1, spec.tokens_per_item)?;
        let im_end = tokenizer.default_stop_tokens()[0];
        Ok(Self {
            model: text,
            tokenizer,
            spec,
            names,
            adapter,
            opt,
            opts,
            prompt_ids,
            im_end,
        })
    }

    /// Resume from the checkpoint at `adapter_path` (the adapter and its optimiser state
    /// written by an earlier run with the same options).
    pub fn resume(
        model: &'m SurgeredModel,
        adapter_path: &Path,
        opts: TrainOptions,
    ) -> Result<Self> {
        let device = model.text_model().decoder().device().clone();
        let adapter = EmbeddingAdapter::load(adapter_path, DType::F32, &device)?;
        let mut me = Self::new(model, adapter, opts)?;
        let sp = state_path(adapter_path);
        let state = candle_core::safetensors::load(&sp, &device).map_err(|e| Error::Training {
            message: format!("cannot read optimiser state {}: {e}", sp.display()),
        })?;
        let meta = crate::adapter::read_metadata(&sp)?;
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(Error::Training {
                message: format!("{} is not a {STATE_FORMAT} file", sp.display()),
            });
        }
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Training {
                message: format!("{} has no valid step", sp.display()),
            })?;
        for (key, want) in [
            ("seed", me.opts.seed.to_string()),
            ("batch_size", me.opts.batch_size.to_string()),
        ] {
            if meta.get(key) != Some(&want) {
                return Err(Error::Training {
                    message: format!(
                        "checkpoint was trained with {key} = {}, this run asks for {want}",
                        meta.get(key).map_or("?", String::as_str)
                    ),
                });
            }
        }
        for (i, name) in me.names.iter().enumerate() {
            for (slot, prefix) in [(0, "m."), (1, "v.")] {
                let key = format!("{prefix}{name}");
                let t = state.get(&key).ok_or_else(|| Error::Training {
                    message: format!("{} lacks {key}", sp.display()),
                })?;
                if t.dims() != me.opt.vars[i].dims() {
                    return Err(Error::Training {
                        message: format!(
                            "{key} has shape {:?}, the adapter's {name} {:?}",
                            t.dims(),
                            me.opt.vars[i].dims()
                        ),
                    });
                }
                let t = t.to_dtype(DType::F32)?;
                if slot == 0 {
                    me.opt.m[i] = t;
                } else {
                    me.opt.v[i] = t;
                }
            }
        }
        me.opt.step = step;
        Ok(me)
    }

    /// Steps taken so far (including those of a resumed run).
    pub fn steps(&self) -> u64 {
        self.opt.step
    }

    /// A copy of the adapter as trained so far, independent of the trainer.
    pub fn adapter(&self) -> Result<EmbeddingAdapter> {
        let tensors = self
            .adapter
            .tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.detach().copy()?)))
            .collect::<Result<HashMap<_, _>>>()?;
        EmbeddingAdapter::from_tensors(self.spec.clone(), tensors)
    }

    /// Write the adapter to `path` and the optimiser state beside it, each replaced
    /// whole (durability's [`mosaic_durability::replace_file`]): the state first, so an
    /// adapter file is never newer than the state beside it.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            tensors.push((format!("m.{name}"), self.opt.m[i].clone()));
            tensors.push((format!("v.{name}"), self.opt.v[i].clone()));
        }
        let meta: HashMap<String, String> = [
            ("format", STATE_FORMAT.to_string()),
            ("step", self.opt.step.to_string()),
            ("seed", self.opts.seed.to_string()),
            ("batch_size", self.opts.batch_size.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        mosaic_durability::replace_file(&state_path(path), |tmp| {
            crate::adapter::write_tensors(tmp, &tensors, meta)
        })?;
        mosaic_durability::replace_file(path, |tmp| {
            write_adapter(tmp, &self.spec, &self.adapter.tensors())
        })
    }

    fn prepare(&self, examples: &[TrainExample]) -> Result<Vec<Prepared>> {
        let (k, h) = (self.spec.tokens_per_item, self.spec.hidden_size);
        examples
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                let bad = |message: String| Error::Training {
                    message: format!("example {i}: {message}"),
                };
                if ex.embedding.len() != self.spec.in_dim {
                    return Err(bad(format!(
                        "embedding has {} values, the adapter's in_dim is {}",
                        ex.embedding.len(),
                        self.spec.in_dim
                    )));
                }
                if let Some(j) = ex.embedding.iter().position(|v| !v.is_finite()) {
                    return Err(bad(format!("embedding value {j} is {}", ex.embedding[j])));
                }
                if ex.target.is_none() && ex.teacher.is_none() {
                    return Err(bad("has neither a target text nor a teacher".into()));
                }
                let sequence = match &ex.target {
                    Some(text) => {
                        let mut seq = self.prompt_ids.clone();
                        seq.extend(self.tokenizer.encode_text(text)?);
                        seq.push(self.im_end);
                        Some(seq)
                    }
                    None => None,
                };
                if let Some(t) = &ex.teacher {
                    if t.tokens.dims() != [k, h] {
                        return Err(bad(format!(
                            "teacher tokens have shape {:?}, the adapter makes ({k}, {h})",
                            t.tokens.dims()
                        )));
                    }
                    if let Some(d) = t.deepstack.iter().find(|d| d.dims() != [k, h]) {
                        return Err(bad(format!(
                            "a teacher DeepStack level has shape {:?}, expected ({k}, {h})",
                            d.dims()
                        )));
                    }
                }
                Ok(Prepared {
                    embedding: ex.embedding.clone(),
                    sequence,
                    teacher: ex.teacher.clone(),
                })
            })
            .collect()
    }

    /// Train for the configured epochs (continuing from [`AdapterTrainer::steps`] when
    /// resumed), calling `on_step` after every step. Checkpoints are written every
    /// `checkpoint_every` steps and after the last when a checkpoint path is set.
    pub fn fit(
        &mut self,
        examples: &[TrainExample],
        mut on_step: impl FnMut(&StepStats),
    ) -> Result<Vec<StepStats>> {
        if examples.is_empty() {
            return Err(Error::Training {
                message: "no training example".into(),
            });
        }
        let prepared = self.prepare(examples)?;
        let bs = self.opts.batch_size;
        let per_epoch = prepared.len().div_ceil(bs) as u64;
        let total = per_epoch * self.opts.epochs as u64;
        let mut history = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let mut order_epoch = usize::MAX;
        while self.opt.step < total {
            let epoch = (self.opt.step / per_epoch) as usize;
            let within = (self.opt.step % per_epoch) as usize;
            if epoch != order_epoch {
                order = (0..prepared.len()).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    self.opts.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                order.shuffle(&mut rng);
                order_epoch = epoch;
            }
            let end = ((within + 1) * bs).min(prepared.len());
            let batch: Vec<&Prepared> = order[within * bs..end]
                .iter()
                .map(|&i| &prepared[i])
                .collect();
            let mut stats = self.step(&batch)?;
            stats.epoch = epoch;
            stats.total_steps = total;
            if let Some(path) = self.opts.checkpoint_path.clone()
                && (stats.step.is_multiple_of(self.opts.checkpoint_every as u64)
                    || stats.step == total)
            {
                self.save_checkpoint(&path)?;
                stats.checkpointed = true;
            }
            on_step(&stats);
            history.push(stats);
        }
        Ok(history)
    }

    /// The loss of `examples` under the current adapter, without updating it
    /// (`(next-token, distillation)`, each `None` when no example has that objective).
    pub fn evaluate(&self, examples: &[TrainExample]) -> Result<(Option<f32>, Option<f32>)> {
        let prepared = self.prepare(examples)?;
        let batch: Vec<&Prepared> = prepared.iter().collect();
        let (nt, d) = self.losses(&batch)?;
        Ok((scalar(&nt)?, scalar(&d)?))
    }

    fn losses(&self, batch: &[&Prepared]) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let device = self.model.decoder().device().clone();
        let h = self.spec.hidden_size;
        let n = batch.len();
        let flat: Vec<f32> = batch
            .iter()
            .flat_map(|p| p.embedding.iter().copied())
            .collect();
        let items = Tensor::from_vec(flat, (n, self.spec.in_dim), &device)?;
        let soft = self.adapter.forward(&items)?;

        let with_target: Vec<usize> = (0..n).filter(|&i| batch[i].sequence.is_some()).collect();
        let next_token = if with_target.is_empty() || self.opts.next_token_weight == 0.0 {
            None
        } else {
            let mut seqs = Vec::with_capacity(with_target.len());
            for &i in &with_target {
                let seq = batch[i].sequence.as_deref().unwrap_or_default();
                seqs.push(SequenceInput {
                    ids: seq[..seq.len() - 1].to_vec(),
                    visual: Some(VisualInput {
                        embeds: soft.tokens.i(i)?,
                        deepstack: soft
                            .deepstack
                            .iter()
                            .map(|d| d.i(i))
                            .collect::<candle_core::Result<Vec<_>>>()?,
                        grids: vec![self.spec.grid],
                    }),
                });
            }
            let (hidden, padding) = self.model.forward_differentiable(&seqs)?;
            let (b, s, _) = hidden.dims3()?;
            let mut rows = Vec::new();
            let mut targets = Vec::new();
            let p = self.prompt_ids.len();
            for (bi, &i) in with_target.iter().enumerate() {
                let seq = batch[i].sequence.as_deref().unwrap_or_default();
                for j in p - 1..seq.len() - 1 {
                    rows.push((bi * s + padding[bi] + j) as u32);
                    targets.push(seq[j + 1]);
                }
            }
            let nrows = rows.len();
            let rows = Tensor::from_vec(rows, nrows, &device)?;
            let picked = hidden.reshape((b * s, h))?.index_select(&rows, 0)?;
            let logits = self.model.decoder().logits(&picked)?;
            let targets = Tensor::from_vec(targets, nrows, &device)?;
            Some(candle_nn::loss::cross_entropy(&logits, &targets)?)
        };

        let with_teacher: Vec<usize> = (0..n).filter(|&i| batch[i].teacher.is_some()).collect();
        let distill = if with_teacher.is_empty() || self.opts.distill_weight == 0.0 {
            None
        } else {
            let idx = Tensor::from_vec(
                with_teacher.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                with_teacher.len(),
                &device,
            )?;
            let teachers: Vec<&Teacher> = with_teacher
                .iter()
                .filter_map(|&i| batch[i].teacher.as_ref())
                .collect();
            let target = |level: Option<usize>| -> Result<Option<Tensor>> {
                let mut parts = Vec::with_capacity(teachers.len());
                for t in &teachers {
                    let part = match level {
                        None => Some(&t.tokens),
                        Some(l) => t.deepstack.get(l),
                    };
                    match part {
                        Some(p) => parts.push(p.to_dtype(DType::F32)?.to_device(&device)?),
                        None => return Ok(None),
                    }
                }
                Ok(Some(Tensor::stack(&parts, 0)?))
            };
            let mut terms = Vec::new();
            if let Some(t) = target(None)? {
                terms.push(self.distance(&soft.tokens.index_select(&idx, 0)?, &t)?);
            }
            for (l, d) in soft.deepstack.iter().enumerate() {
                if let Some(t) = target(Some(l))? {
                    terms.push(self.distance(&d.index_select(&idx, 0)?, &t)?);
                }
            }
            let count = terms.len();
            Some((Tensor::stack(&terms, 0)?.sum_all()? / count as f64)?)
        };
        Ok((next_token, distill))
    }

    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let a = a.to_dtype(DType::F32)?;
        Ok(match self.opts.distill_loss {
            DistillLoss::Mse => (a - b)?.sqr()?.mean_all()?,
            DistillLoss::Cosine => {
                let dot = (&a * b)?.sum(candle_core::D::Minus1)?;
                let na = a.sqr()?.sum(candle_core::D::Minus1)?.sqrt()?;
                let nb = b.sqr()?.sum(candle_core::D::Minus1)?.sqrt()?;
                let cos = (dot / ((na * nb)? + 1e-8)?)?;
                (1.0 - cos.mean_all()?.to_dtype(DType::F32)?)?
            }
        })
    }

    fn step(&mut self, batch: &[&Prepared]) -> Result<StepStats> {
        let (nt, d) = self.losses(batch)?;
        let mut loss: Option<Tensor> = None;
        for (part, w) in [
            (&nt, self.opts.next_token_weight),
            (&d, self.opts.distill_weight),
        ] {
            if let Some(p) = part {
                let term = (p * w)?;
                loss = Some(match loss {
                    None => term,
                    Some(l) => (l + term)?,
                });
            }
        }
        let loss = loss.ok_or_else(|| Error::Training {
            message: "the batch has no example with a weighted objective".into(),
        })?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(Error::Training {
                message: format!(
                    "loss became {loss_value} at step {} (lower the learning rate?)",
                    self.opt.step + 1
                ),
            });
        }
        let grads = loss.backward()?;
        let mut gs = Vec::with_capacity(self.opt.vars.len());
        let mut sq = 0f64;
        for var in &self.opt.vars {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var.zeros_like()?,
            };
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            gs.push(g);
        }
        let norm = sq.sqrt();
        if let Some(max) = self.opts.max_grad_norm
            && norm > max
        {
            let scale = max / (norm + 1e-6);
            gs = gs
                .iter()
                .map(|g| g * scale)
                .collect::<candle_core::Result<Vec<_>>>()?;
        }
        self.opt.update(&gs)?;
        Ok(StepStats {
            step: self.opt.step,
            epoch: 0,
            total_steps: 0,
            loss: loss_value,
            next_token: scalar(&nt)?,
            distill: scalar(&d)?,
            grad_norm: norm as f32,
            checkpointed: false,
        })
    }
}

/// The value of an optional scalar loss.
fn scalar(t: &Option<Tensor>) -> Result<Option<f32>> {
    Ok(match t {
        Some(t) => Some(t.to_scalar::<f32>()?),
        None => None,
    })
}
