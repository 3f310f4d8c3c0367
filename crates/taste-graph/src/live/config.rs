//! The live model's settings: kind weights, time decay, recent items, refit.

use crate::error::{Error, Result};
use crate::interactions::InteractionKind;

/// Most recent positives kept per user ([`LiveConfig::recent`]): the interests are a
/// Ward clustering of them, O(n²) in memory.
pub const MAX_RECENT: usize = 4096;

/// Fold-in weight of each interaction kind (hide is negative: it pushes away).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KindWeights {
    /// Weight of a view.
    pub view: f32,
    /// Weight of a click.
    pub click: f32,
    /// Weight of a save.
    pub save: f32,
    /// Weight of a hide (≤ 0).
    pub hide: f32,
}

impl Default for KindWeights {
    fn default() -> Self {
        Self {
            view: 0.5,
            click: 1.0,
            save: 2.0,
            hide: -1.0,
        }
    }
}

impl KindWeights {
    /// The weight of `kind`.
    pub fn of(&self, kind: InteractionKind) -> f32 {
        match kind {
            InteractionKind::View => self.view,
            InteractionKind::Click => self.click,
            InteractionKind::Save => self.save,
            InteractionKind::Hide => self.hide,
        }
    }
}

/// Settings of a [`super::LiveModel`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveConfig {
    pub(super) half_life: f64,
    pub(super) weights: KindWeights,
    pub(super) recent: usize,
    pub(super) refit_steps: usize,
    pub(super) refit_lr: f32,
    pub(super) refit_negatives: usize,
    pub(super) item_updates: bool,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            half_life: f64::INFINITY,
            weights: KindWeights::default(),
            recent: 64,
            refit_steps: 0,
            refit_lr: 0.0,
            refit_negatives: 1,
            item_updates: false,
        }
    }
}

impl LiveConfig {
    /// No time decay, default kind weights, 64 recent items per user.
    pub fn new() -> Self {
        Self::default()
    }
    /// Half-life of an interaction's weight, in the caller's time unit
    /// (`f64::INFINITY`: no decay).
    pub fn half_life(mut self, half_life: f64) -> Self {
        self.half_life = half_life;
        self
    }
    /// Fold-in weight of each kind.
    pub fn weights(mut self, weights: KindWeights) -> Self {
        self.weights = weights;
        self
    }
    /// How many recent positive interactions each user keeps (for [`crate::interests`](mod@crate::interests)).
    pub fn recent(mut self, recent: usize) -> Self {
        self.recent = recent;
        self
    }
    /// After each positive event, `steps` BPR gradient steps (learning rate `lr`) on the
    /// user's ego embedding, each against one of the user's positives drawn uniformly and
    /// one uniformly drawn unseen item, with the items' embeddings fixed: a local,
    /// O(steps × dim) stand-in for retraining the user's row. 0 steps (the default): the
    /// fold-in alone.
    pub fn refit(mut self, steps: usize, lr: f32) -> Self {
        self.refit_steps = steps;
        self.refit_lr = lr;
        self
    }
    /// Each refit step draws this many unseen candidates and goes against the one the
    /// user scores highest (a hard negative, whose gradient is not vanishingly small);
    /// 1 (the default): one uniform negative per step, as the trainer draws them.
    pub fn refit_negatives(mut self, candidates: usize) -> Self {
        self.refit_negatives = candidates;
        self
    }
    /// Also fold each event into the trained item's embedding (the item side of the
    /// update rule, see the module docs), so every user's scores of that item move, not
    /// only the acting user's. Off by default; on, the model keeps one more row per user
    /// and two more per item. An index built from an earlier export of the items (an
    /// embed-store generation) sees the moved items at the next export.
    pub fn item_updates(mut self, on: bool) -> Self {
        self.item_updates = on;
        self
    }
    /// The configured half-life.
    pub fn half_life_value(&self) -> f64 {
        self.half_life
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config { message: m });
        if self.half_life.is_nan() || self.half_life <= 0.0 {
            return bad(format!(
                "half_life = {}, expected a positive number of time units (or infinity)",
                self.half_life
            ));
        }
        let w = self.weights;
        for (name, v) in [("view", w.view), ("click", w.click), ("save", w.save)] {
            if !v.is_finite() || v <= 0.0 {
                return bad(format!(
                    "weight of {name} = {v}, expected a finite value > 0"
                ));
            }
        }
        if !w.hide.is_finite() || w.hide > 0.0 {
            return bad(format!(
                "weight of hide = {}, expected a finite value <= 0",
                w.hide
            ));
        }
        if self.refit_steps > 0 && !(self.refit_lr.is_finite() && self.refit_lr > 0.0) {
            return bad(format!(
                "refit learning rate = {}, expected a finite value > 0 with {} steps",
                self.refit_lr, self.refit_steps
            ));
        }
        if self.refit_negatives == 0 || self.refit_negatives > 1024 {
            return bad(format!(
                "refit negatives = {}, expected 1..=1024 candidates per step",
                self.refit_negatives
            ));
        }
        if self.recent == 0 || self.recent > MAX_RECENT {
            return bad(format!(
                "recent = {}, expected 1..={MAX_RECENT} items per user",
                self.recent
            ));
        }
        Ok(())
    }
}
