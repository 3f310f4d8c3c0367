//! The optional last stage: the top-N re-scored by the surgered Qwen3-VL. Each
//! candidate is asked about as soft tokens next to the user's context items (by
//! default the medoids of their top interests), all as precomputed content embeddings
//! through the embedding-to-token adapter — no image is decoded or encoded. The score
//! is the answer's log-odds, `log P(yes) − log P(no)`, exact for multi-token answers.
//!
//! Candidates run as batches of one prefill each (prompts left-padded to the longest):
//! one pass when both answers are single tokens, two (one per answer, the answer's
//! tokens but its last appended) otherwise. [`batch::Batcher`] gathers the prompts of
//! concurrent requests into shared prefills.

pub mod batch;

use candle_core::Tensor;
use embed_store::{ItemId as StoreId, Snapshot};
use taste_graph::UserId;
use vision_surgery::model::{SequenceInput, TextModel};
use vision_surgery::{Prompt, SurgeredModel};

use crate::error::{Error, Result};
use crate::recommender::Recommender;
use crate::types::Recommendation;

/// Settings of a [`Rescorer`].
#[derive(Debug, Clone, PartialEq)]
pub struct RescoreOptions {
    question: String,
    context_items: usize,
    yes: String,
    no: String,
    batch: usize,
}

impl Default for RescoreOptions {
    fn default() -> Self {
        Self {
            question: "A user saved {context}. Would they also save <item>? Answer yes or no."
                .into(),
            context_items: 2,
            yes: "yes".into(),
            no: "no".into(),
            batch: 8,
        }
    }
}

impl RescoreOptions {
    /// The default question, two context items, answers "yes" / "no", batches of 8.
    pub fn new() -> Self {
        Self::default()
    }
    /// The user message: `{context}` becomes the context items' markers (joined by
    /// ", "), and exactly one `<item>` marks the candidate.
    pub fn question(mut self, q: impl Into<String>) -> Self {
        self.question = q.into();
        self
    }
    /// At most this many context items (the user's top interests' medoids).
    pub fn context_items(mut self, n: usize) -> Self {
        self.context_items = n;
        self
    }
    /// The positive and negative answers whose log-odds is the score.
    pub fn answers(mut self, yes: impl Into<String>, no: impl Into<String>) -> Self {
        self.yes = yes.into();
        self.no = no.into();
        self
    }
    /// Candidates per prefill.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }
}

/// A candidate with its model score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescored {
    /// The recommendation as the ranker made it.
    pub recommendation: Recommendation,
    /// `log P(yes) − log P(no)` under the surgered model.
    pub log_odds: f32,
}

/// Re-scores candidates with a surgered model and a generation of content embeddings
/// (the adapter's input, keyed by the same external item ids as the ranker's).
pub struct Rescorer {
    model: SurgeredModel,
    content: Snapshot,
    options: RescoreOptions,
    yes: Vec<u32>,
    no: Vec<u32>,
}

impl std::fmt::Debug for Rescorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rescorer")
            .field("content", &self.content.generation())
            .field("options", &self.options)
            .finish()
    }
}

impl Rescorer {
    /// Checks that the model has a tokenizer and an adapter whose input width is the
    /// content generation's, that the question has `{context}` and one `<item>`, and
    /// that both answers tokenize.
    pub fn new(model: SurgeredModel, content: Snapshot, options: RescoreOptions) -> Result<Self> {
        let adapter = model.adapter().ok_or_else(|| {
            Error::config(
                "the surgered model has no adapter attached: it cannot read item embeddings",
            )
        })?;
        if adapter.spec().in_dim != content.dim() {
            return Err(Error::config(format!(
                "the adapter reads {}-wide embeddings, generation {:?} holds {}-wide vectors",
                adapter.spec().in_dim,
                content.generation(),
                content.dim()
            )));
        }
        Self::check_question(&options.question)?;
        if options.batch == 0 {
            return Err(Error::config("rescoring batch = 0, expected at least 1"));
        }
        let tok = model
            .tokenizer()
            .ok_or_else(|| Error::config("the surgered model has no tokenizer"))?;
        let yes = tok.encode_text(&options.yes)?;
        let no = tok.encode_text(&options.no)?;
        if yes.is_empty() || no.is_empty() || yes == no {
            return Err(Error::config(format!(
                "answers {:?} and {:?} must be non-empty and different",
                options.yes, options.no
            )));
        }
        Ok(Self {
            model,
            content,
            options,
            yes,
            no,
        })
    }

    /// The surgered model.
    pub fn model(&self) -> &SurgeredModel {
        &self.model
    }

    fn vector(&self, id: u64, role: &str) -> Result<Vec<f32>> {
        self.content.get(StoreId(id)).ok_or_else(|| Error::Unknown {
            what: "item",
            message: format!(
                "{role} item {id} has no content embedding in generation {:?}",
                self.content.generation()
            ),
        })
    }

    /// Log-odds of each candidate given the context items (external ids), in the
    /// candidates' order.
    pub fn log_odds(&self, context: &[u64], candidates: &[u64]) -> Result<Vec<f32>> {
        let seqs = self.sequences(None, context, candidates)?;
        self.score_sequences(&seqs)
    }

    /// Refuses a question without one `{context}` and exactly one item marker.
    pub fn check_question(question: &str) -> Result<()> {
        if !question.contains("{context}")
            || question.matches(vision_surgery::ITEM_MARKER).count() != 1
        {
            return Err(Error::config(format!(
                "question {question:?} needs one {{context}} and exactly one {} for the candidate",
                vision_surgery::ITEM_MARKER
            )));
        }
        Ok(())
    }

    /// The prompt of each candidate — `question` (checked as
    /// [`Rescorer::check_question`]; `None`: the options') with the first
    /// [`RescoreOptions::context_items`] of `context` and the candidate as soft tokens —
    /// ready for [`Rescorer::score_sequences`].
    pub fn sequences(
        &self,
        question: Option<&str>,
        context: &[u64],
        candidates: &[u64],
    ) -> Result<Vec<SequenceInput>> {
        let question = question.unwrap_or(&self.options.question);
        Self::check_question(question)?;
        let context = &context[..context.len().min(self.options.context_items)];
        let markers = vec![vision_surgery::ITEM_MARKER; context.len()].join(", ");
        let markers = if markers.is_empty() {
            "nothing yet".to_string()
        } else {
            markers
        };
        let prompt = Prompt::user(question.replace("{context}", &markers));
        let d = self.content.dim();
        let mut ctx = Vec::with_capacity(context.len() * d);
        for &c in context {
            ctx.extend(self.vector(c, "context")?);
        }
        let device = self.model.text_model().decoder().device().clone();
        let mut seqs = Vec::with_capacity(candidates.len());
        for &c in candidates {
            let mut rows = ctx.clone();
            rows.extend(self.vector(c, "candidate")?);
            let items = Tensor::from_vec(rows, (context.len() + 1, d), &device)?;
            seqs.push(self.model.prepare(&prompt, Some(&items))?);
        }
        Ok(seqs)
    }

    /// The log-odds of each prompt (from [`Rescorer::sequences`], of any lengths),
    /// [`RescoreOptions::batch`] prompts per batch: `log P(yes) - log P(no)` by
    /// [`TextModel::score_batch`] (one prefill for single-token answers, the prompts'
    /// shared instructions from the model's prefix cache).
    pub fn score_sequences(&self, seqs: &[SequenceInput]) -> Result<Vec<f32>> {
        let tm: &TextModel = self.model.text_model();
        let answers = [self.yes.clone(), self.no.clone()];
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(self.options.batch) {
            for s in tm.score_batch(chunk, &answers)? {
                out.push(s[0].total - s[1].total);
            }
        }
        Ok(out)
    }

    /// The recommendations re-scored for `user` (context: the medoids of the user's
    /// top interests), sorted by log-odds, best first.
    pub fn rescore(
        &self,
        ranker: &Recommender,
        user: UserId,
        candidates: &[Recommendation],
    ) -> Result<Vec<Rescored>> {
        let context: Vec<u64> = ranker
            .interests(user, None)?
            .iter()
            .map(|(m, _)| *m)
            .collect();
        let ids: Vec<u64> = candidates.iter().map(|r| r.item).collect();
        let scores = self.log_odds(&context, &ids)?;
        let mut out: Vec<Rescored> = candidates
            .iter()
            .zip(scores)
            .map(|(r, s)| Rescored {
                recommendation: *r,
                log_odds: s,
            })
            .collect();
        out.sort_by(|a, b| b.log_odds.total_cmp(&a.log_odds));
        Ok(out)
    }
}
