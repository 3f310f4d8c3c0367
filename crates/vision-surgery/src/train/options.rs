//! What a training run is given: its examples (target text, distillation teacher) and
//! its options (batches, epochs, rate, losses and their weights, checkpoints).

use std::path::PathBuf;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::prompt::{ITEM_MARKER, Prompt};

/// The distillation target of one item: the vision tower's tokens for its image pooled
/// to the adapter's grid.
#[derive(Debug, Clone)]
pub struct Teacher {
    /// (K, H) pooled merged tokens.
    pub tokens: Tensor,
    /// (K, H) pooled DeepStack features, one per level.
    pub deepstack: Vec<Tensor>,
}

/// One training item.
#[derive(Debug, Clone)]
pub struct TrainExample {
    /// The item's precomputed embedding (`in_dim` values).
    pub embedding: Vec<f32>,
    /// What the model should answer about the item (next-token objective).
    pub target: Option<String>,
    /// What the vision tower makes of the item's image (distillation objective).
    pub teacher: Option<Teacher>,
}

/// Distance used by the distillation objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillLoss {
    /// Mean squared error over every value.
    Mse,
    /// `1 - cosine similarity`, averaged over tokens.
    Cosine,
}

/// Hyper-parameters of a training run (builder methods; defaults in [`TrainOptions::new`]).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The user turn, with one `<item>` marker (or none: the item goes first).
    pub prompt: Prompt,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW (beta1, beta2).
    pub betas: (f64, f64),
    /// AdamW epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Weight of the next-token loss.
    pub next_token_weight: f64,
    /// Weight of the distillation loss.
    pub distill_weight: f64,
    /// Distance of the distillation loss.
    pub distill_loss: DistillLoss,
    /// Write a checkpoint every this many steps (and at the end) when a path is set.
    pub checkpoint_every: usize,
    /// Where checkpoints go: the adapter file; the optimiser state goes beside it
    /// ([`super::state_path`]).
    pub checkpoint_path: Option<PathBuf>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl TrainOptions {
    /// Defaults: prompt `"<item>Describe this item."`, batch 8, 10 epochs, lr 1e-3, weight
    /// decay 0, betas (0.9, 0.999), eps 1e-8, clipping at 1.0, seed 0, next-token weight
    /// 1, distillation weight 1 (MSE), checkpoint every 100 steps, no checkpoint path.
    pub fn new() -> Self {
        Self {
            prompt: Prompt::user(format!("{ITEM_MARKER}Describe this item.")),
            batch_size: 8,
            epochs: 10,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            seed: 0,
            next_token_weight: 1.0,
            distill_weight: 1.0,
            distill_loss: DistillLoss::Mse,
            checkpoint_every: 100,
            checkpoint_path: None,
        }
    }

    /// Set the prompt.
    pub fn prompt(mut self, p: Prompt) -> Self {
        self.prompt = p;
        self
    }

    /// Set the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Set the number of epochs.
    pub fn epochs(mut self, n: usize) -> Self {
        self.epochs = n;
        self
    }

    /// Set the learning rate.
    pub fn learning_rate(mut self, lr: f64) -> Self {
        self.learning_rate = lr;
        self
    }

    /// Set the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }

    /// Set (or disable) gradient clipping.
    pub fn max_grad_norm(mut self, n: Option<f64>) -> Self {
        self.max_grad_norm = n;
        self
    }

    /// Set the shuffle seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Set the objective weights (next-token, distillation).
    pub fn weights(mut self, next_token: f64, distill: f64) -> Self {
        self.next_token_weight = next_token;
        self.distill_weight = distill;
        self
    }

    /// Set the distillation distance.
    pub fn distill_loss(mut self, d: DistillLoss) -> Self {
        self.distill_loss = d;
        self
    }

    /// Checkpoint to `path` every `every` steps.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>, every: usize) -> Self {
        self.checkpoint_path = Some(path.into());
        self.checkpoint_every = every;
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |option: &'static str, message: String| Err(Error::Options { option, message });
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                format!("{} is not a positive number", self.learning_rate),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", format!("{} is negative", self.weight_decay));
        }
        let (b1, b2) = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad("betas", format!("({b1}, {b2}) must lie in [0, 1)"));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return bad("max_grad_norm", format!("{n} is not a positive number"));
        }
        for (option, w) in [
            ("next_token_weight", self.next_token_weight),
            ("distill_weight", self.distill_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return bad(option, format!("{w} is not a non-negative number"));
            }
        }
        if self.next_token_weight == 0.0 && self.distill_weight == 0.0 {
            return bad("weights", "both objectives have weight 0".into());
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "must be at least 1".into());
        }
        let markers = self.prompt.markers();
        if markers > 1 {
            return bad(
                "prompt",
                format!("has {markers} {ITEM_MARKER} markers, training uses one item per prompt"),
            );
        }
        Ok(())
    }
}
