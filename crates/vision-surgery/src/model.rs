//! Token sequences with visual soft tokens in, logits out: the multimodal glue around
//! the [`TextDecoder`] (placeholder replacement, 3-D positions, left padding,
//! DeepStack positions, cached continuation).

use std::sync::Arc;

use candle_core::{D, DType, Device, IndexOp, Tensor};

use crate::config::{Qwen3VlConfig, SpecialTokens};
use crate::decoder::{DecoderCache, DeepStack, TextDecoder};
use crate::error::{Error, Result};
use crate::position::{Positions, VisualGrid, rope_index_after, rope_index_batch};
use crate::prefix::PrefixCache;
use crate::quant::WeightFormat;
use crate::weights::Weights;

/// Visual inputs of one sequence, in placeholder order.
#[derive(Debug, Clone)]
pub struct VisualInput {
    /// Soft tokens replacing the placeholders: (n_placeholders, H).
    pub embeds: Tensor,
    /// DeepStack features, `deepstack[k]` of shape (n_placeholders, H), added after layer k.
    pub deepstack: Vec<Tensor>,
    /// One grid per visual run (item), in order.
    pub grids: Vec<VisualGrid>,
}

/// One prompt: token ids (with placeholders) and its visual inputs.
#[derive(Debug, Clone)]
pub struct SequenceInput {
    /// Token ids; every `<|image_pad|>` is a placeholder.
    pub ids: Vec<u32>,
    /// Soft tokens for the placeholders (required iff there are any).
    pub visual: Option<VisualInput>,
}

/// Which positions to return logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsScope {
    /// Only the last position of each sequence: (b, vocab).
    Last,
    /// Every position: (b, s, vocab).
    All,
    /// The last `n` positions of each sequence: (b, n, vocab).
    Tail(usize),
}

/// What a prefill returns.
#[derive(Debug, Clone)]
pub struct Prefill {
    /// Logits in f32, shaped per [`LogitsScope`].
    pub logits: Tensor,
    /// Per sequence, `rope_delta`: a token appended at cache slot `j` has position `j + delta`.
    pub deltas: Vec<i64>,
    /// Left padding applied to each sequence.
    pub padding: Vec<usize>,
    /// Leading tokens taken from the prefix cache ([`TextModel::prefill_cached`]; 0
    /// for [`TextModel::prefill`]).
    pub reused: usize,
}

/// Log-probabilities of one continuation (crosses a service's wire as JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContinuationScore {
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// `log P(token_i | prompt, tokens_<i)` for each token.
    pub token_logprobs: Vec<f32>,
    /// Their sum.
    pub total: f32,
}

/// First of the last `n` positions of a sequence of `len`.
fn tail_start(len: usize, n: usize) -> Result<usize> {
    if n == 0 || n > len {
        return Err(Error::Input {
            message: format!("cannot take logits of the last {n} of {len} positions"),
        });
    }
    Ok(len - n)
}

/// A batch laid out for the decoder.
struct Assembled {
    embeds: Tensor,
    pos: Positions,
    valid: Vec<Vec<bool>>,
    deepstack: Option<DeepStack>,
    deltas: Vec<i64>,
    padding: Vec<usize>,
    seq_len: usize,
}

/// The Qwen3-VL language model with its multimodal input handling.
#[derive(Debug, Clone)]
pub struct TextModel {
    decoder: TextDecoder,
    tokens: SpecialTokens,
    deepstack_levels: usize,
    prefixes: Arc<PrefixCache>,
}

impl TextModel {
    /// Build from a config and mapped weights (reads no vision tensor).
    pub fn new(
        cfg: &Qwen3VlConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::with_format(cfg, weights, dtype, device, WeightFormat::Dense)
    }

    /// [`TextModel::new`] with the decoder's projections and head held in `format`.
    pub fn with_format(
        cfg: &Qwen3VlConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        Ok(Self {
            decoder: TextDecoder::with_format(cfg, weights, dtype, device, format)?,
            tokens: cfg.tokens,
            deepstack_levels: cfg.deepstack_levels,
            prefixes: Arc::new(PrefixCache::default()),
        })
    }

    /// This model (its weights shared) with `cache` as its own prefix cache instead of
    /// the one it shares with its clones: to compare settings on one set of weights.
    pub fn with_prefix_cache(mut self, cache: PrefixCache) -> Self {
        self.prefixes = Arc::new(cache);
        self
    }

    /// The cache of shared prompt prefixes [`TextModel::prefill_cached`] uses (shared
    /// by this model's clones; [`PrefixCache::set_max_bytes`] bounds or disables it).
    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.prefixes
    }

    /// The underlying decoder.
    pub fn decoder(&self) -> &TextDecoder {
        &self.decoder
    }

    /// Multimodal special tokens.
    pub fn tokens(&self) -> SpecialTokens {
        self.tokens
    }

    /// DeepStack levels the checkpoint was trained with.
    pub fn deepstack_levels(&self) -> usize {
        self.deepstack_levels
    }

    /// Whether `id` is a visual placeholder.
    pub fn is_placeholder(&self, id: u32) -> bool {
        id == self.tokens.image_token_id || id == self.tokens.video_token_id
    }

    /// A fresh cache for `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> DecoderCache {
        self.decoder.new_cache(capacity)
    }

    /// Run a batch of prompts (left-padded to the longest) into an empty `cache`.
    pub fn prefill(
        &self,
        seqs: &[SequenceInput],
        cache: &mut DecoderCache,
        scope: LogitsScope,
    ) -> Result<Prefill> {
        if !cache.is_empty() {
            return Err(Error::Input {
                message: "prefill needs an empty cache".into(),
            });
        }
        let a = self.assemble(seqs, 0)?;
        let hidden_states =
            self.decoder
                .forward(&a.embeds, &a.pos, &a.valid, a.deepstack.as_ref(), cache)?;
        let logits = match scope {
            LogitsScope::Last => {
                self.decoder
                    .logits(&hidden_states.i((.., a.seq_len - 1, ..))?)?
            }
            LogitsScope::All => self.decoder.logits(&hidden_states)?,
            LogitsScope::Tail(n) => {
                self.decoder
                    .logits(&hidden_states.i((.., tail_start(a.seq_len, n)?.., ..))?)?
            }
        };
        Ok(Prefill {
            logits,
            deltas: a.deltas,
            padding: a.padding,
            reused: 0,
        })
    }

    /// [`TextModel::prefill`] with the leading text every sequence shares (up to the
    /// first visual placeholder, leaving each sequence at least the positions `scope`
    /// asks logits for) taken from the [`PrefixCache`] where an entry covers it, and
    /// cached for the next call: the same logits, deltas and cache contents as
    /// [`TextModel::prefill`], except that the tokens after the prefix are right-padded
    /// (so `padding` is all 0; continue with the `deltas` as usual). [`LogitsScope::All`],
    /// or a cache bounded to 0 bytes, is a plain [`TextModel::prefill`].
    pub fn prefill_cached(
        &self,
        seqs: &[SequenceInput],
        cache: &mut DecoderCache,
        scope: LogitsScope,
    ) -> Result<Prefill> {
        let tail = match scope {
            LogitsScope::Last => 1,
            LogitsScope::Tail(n) => n,
            LogitsScope::All => 0,
        };
        let shared = if tail == 0 || self.prefixes.max_bytes() == 0 {
            0
        } else {
            self.shared_prefix(seqs, tail)
        };
        if shared == 0 {
            return self.prefill(seqs, cache, scope);
        }
        if !cache.is_empty() {
            return Err(Error::Input {
                message: "prefill needs an empty cache".into(),
            });
        }
        let state = self.prefix_state(&seqs[0].ids[..shared])?;
        let a = self.assemble(seqs, shared)?;
        let capacity = cache.capacity().max(shared + a.seq_len);
        *cache = state.prefix(shared, seqs.len(), capacity)?;
        let hidden =
            self.decoder
                .forward(&a.embeds, &a.pos, &a.valid, a.deepstack.as_ref(), cache)?;
        // each sequence's last `tail` new tokens: the head runs on those rows only
        let rows = seqs
            .iter()
            .enumerate()
            .map(|(b, q)| {
                let end = q.ids.len() - shared;
                hidden.i((b, end - tail..end, ..))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let logits = self.decoder.logits(&Tensor::stack(&rows, 0)?)?;
        let logits = match scope {
            LogitsScope::Last => logits.squeeze(1)?,
            _ => logits,
        };
        Ok(Prefill {
            logits,
            deltas: a.deltas,
            padding: a.padding,
            reused: shared,
        })
    }

    /// Length of the text every sequence of `seqs` starts with, before any visual
    /// placeholder, leaving each sequence at least `tail` tokens after it.
    fn shared_prefix(&self, seqs: &[SequenceInput], tail: usize) -> usize {
        let Some(first) = seqs.first() else {
            return 0;
        };
        let ids = &first.ids;
        let mut len = ids
            .iter()
            .position(|&t| self.is_placeholder(t))
            .unwrap_or(ids.len());
        for q in &seqs[1..] {
            len = len.min(ids.iter().zip(&q.ids).take_while(|(a, b)| a == b).count());
        }
        let shortest = seqs.iter().map(|q| q.ids.len()).min().unwrap_or(0);
        len.min(shortest.saturating_sub(tail))
    }

    /// The decoder state (one sequence) after the text `ids` (at least their length):
    /// from the prefix cache, the rest of them run and the result cached.
    fn prefix_state(&self, ids: &[u32]) -> Result<Arc<DecoderCache>> {
        let found = self.prefixes.longest(ids);
        let known = found.as_ref().map_or(0, |(_, l)| *l);
        if let Some((state, l)) = &found
            && *l == ids.len()
        {
            return Ok(Arc::clone(state));
        }
        let mut cache = match &found {
            Some((state, l)) => state.prefix(*l, 1, ids.len())?,
            None => self.new_cache(ids.len()),
        };
        let seq = SequenceInput {
            ids: ids.to_vec(),
            visual: None,
        };
        let a = self.assemble(std::slice::from_ref(&seq), known)?;
        self.decoder
            .forward(&a.embeds, &a.pos, &a.valid, None, &mut cache)?;
        Ok(self.prefixes.insert(seq.ids, cache, ids.len() - known))
    }

    /// Final hidden states (b, s, H) of a batch of prompts (left-padded to the longest)
    /// through [`TextDecoder::forward_differentiable`]: no cache, and gradients flow
    /// back to the soft tokens and DeepStack features. Returns the left padding too.
    pub fn forward_differentiable(&self, seqs: &[SequenceInput]) -> Result<(Tensor, Vec<usize>)> {
        let a = self.assemble(seqs, 0)?;
        let hidden = self.decoder.forward_differentiable(
            &a.embeds,
            &a.pos,
            &a.valid,
            a.deepstack.as_ref(),
        )?;
        Ok((hidden, a.padding))
    }

    /// Lay out a batch for the decoder: ids checked, placeholders replaced by soft
    /// tokens, 3-D positions, DeepStack positions. `offset` 0: whole sequences, left
    /// padded; otherwise the tokens after the first `offset` (a cached text prefix, no
    /// placeholder in it), right padded, at the positions they have in the whole
    /// sequence.
    fn assemble(&self, seqs: &[SequenceInput], offset: usize) -> Result<Assembled> {
        if seqs.is_empty() {
            return Err(Error::Input {
                message: "empty batch".into(),
            });
        }
        let cfg = self.decoder.config();
        let dev = self.decoder.device().clone();
        let hidden = cfg.hidden_size;
        let b = seqs.len();
        if let Some(bi) = seqs
            .iter()
            .position(|q| q.ids.len() <= offset && offset > 0)
        {
            return Err(Error::Input {
                message: format!(
                    "sequence {bi} has {} tokens, none after the {offset} cached",
                    seqs[bi].ids.len()
                ),
            });
        }
        let s = seqs.iter().map(|q| q.ids.len() - offset).max().unwrap_or(0);
        if s == 0 {
            return Err(Error::Input {
                message: "every sequence is empty".into(),
            });
        }
        let mut flat_ids = Vec::with_capacity(b * s);
        let mut valid = Vec::with_capacity(b);
        let mut padding = Vec::with_capacity(b);
        // gather index into [token embeddings (b*s rows); visual rows]
        let mut gather: Vec<u32> = Vec::with_capacity(b * s);
        let mut visual_positions: Vec<u32> = Vec::new();
        let mut visual_rows: Vec<Tensor> = Vec::new();
        let mut deep_rows: Vec<Vec<Tensor>> = Vec::new();
        let mut n_visual = 0usize;
        let mut levels: Option<usize> = None;
        for (bi, q) in seqs.iter().enumerate() {
            let (head, tail) = q.ids.split_at(offset);
            // where the sequence's first new token sits in its row: after the left
            // padding, or first (right padding after a cached prefix)
            let start = if offset == 0 { s - tail.len() } else { 0 };
            let real = start..start + tail.len();
            padding.push(start);
            valid.push((0..s).map(|i| real.contains(&i)).collect());
            let mut row = vec![0u32; s];
            row[real].copy_from_slice(tail);
            flat_ids.extend(row);
            if let Some(i) = head.iter().position(|&t| self.is_placeholder(t)) {
                return Err(Error::Input {
                    message: format!(
                        "sequence {bi}, token {i}: a visual placeholder inside the {offset} cached prefix tokens"
                    ),
                });
            }
            let n_ph = tail.iter().filter(|&&t| self.is_placeholder(t)).count();
            for (i, &t) in q.ids.iter().enumerate() {
                if t as usize >= cfg.vocab_size {
                    return Err(Error::Input {
                        message: format!(
                            "sequence {bi}, token {i}: id {t} is outside the vocabulary (size {})",
                            cfg.vocab_size
                        ),
                    });
                }
            }
            let base = (bi * s) as u32;
            gather.extend((0..s as u32).map(|i| base + i));
            match &q.visual {
                None if n_ph > 0 => {
                    return Err(Error::Input {
                        message: format!(
                            "sequence {bi} has {n_ph} visual placeholders but no visual input"
                        ),
                    });
                }
                None => {}
                Some(vis) => {
                    let (rows, width) = vis.embeds.dims2()?;
                    if width != hidden {
                        return Err(Error::Input {
                            message: format!(
                                "sequence {bi}: soft tokens are {width} wide, the decoder's hidden_size is {hidden}"
                            ),
                        });
                    }
                    if rows != n_ph {
                        return Err(Error::Input {
                            message: format!(
                                "sequence {bi} has {n_ph} visual placeholders but {rows} soft tokens"
                            ),
                        });
                    }
                    if *levels.get_or_insert(vis.deepstack.len()) != vis.deepstack.len() {
                        return Err(Error::Input {
                            message: format!(
                                "sequence {bi} has {} DeepStack levels, an earlier one {}",
                                vis.deepstack.len(),
                                levels.unwrap_or(0)
                            ),
                        });
                    }
                    if vis.deepstack.len() > self.deepstack_levels {
                        return Err(Error::Input {
                            message: format!(
                                "sequence {bi} has {} DeepStack levels, the model was trained with {}",
                                vis.deepstack.len(),
                                self.deepstack_levels
                            ),
                        });
                    }
                    for (k, d) in vis.deepstack.iter().enumerate() {
                        if d.dims2()? != (n_ph, hidden) {
                            return Err(Error::Input {
                                message: format!(
                                    "sequence {bi}: DeepStack level {k} has shape {:?}, expected ({n_ph}, {hidden})",
                                    d.dims()
                                ),
                            });
                        }
                    }
                    let mut k = 0u32;
                    for (i, &t) in tail.iter().enumerate() {
                        if self.is_placeholder(t) {
                            let p = (bi * s + start + i) as u32;
                            gather[p as usize] = (b * s) as u32 + n_visual as u32 + k;
                            visual_positions.push(p);
                            k += 1;
                        }
                    }
                    n_visual += n_ph;
                    visual_rows.push(vis.embeds.to_dtype(self.decoder.dtype())?.to_device(&dev)?);
                    deep_rows.push(vis.deepstack.clone());
                }
            }
        }
        let id_refs: Vec<&[u32]> = seqs.iter().map(|q| q.ids.as_slice()).collect();
        let grid_refs: Vec<&[VisualGrid]> = seqs
            .iter()
            .map(|q| q.visual.as_ref().map_or(&[][..], |v| v.grids.as_slice()))
            .collect();
        let is_visual = |t| self.is_placeholder(t);
        let (pos, deltas) = if offset == 0 {
            rope_index_batch(&id_refs, s, is_visual, &grid_refs)?
        } else {
            rope_index_after(&id_refs, offset, s, is_visual, &grid_refs)?
        };

        let ids = Tensor::from_vec(flat_ids, (b, s), &dev)?;
        let mut embeds = self.decoder.embed(&ids)?;
        let mut deepstack = None;
        if n_visual > 0 {
            let mut table = vec![embeds.reshape((b * s, hidden))?];
            table.extend(visual_rows);
            let table = Tensor::cat(&table, 0)?;
            let index = Tensor::from_vec(gather, b * s, &dev)?;
            embeds = table.index_select(&index, 0)?.reshape((b, s, hidden))?;
            let levels = levels.unwrap_or(0);
            if levels > 0 {
                let features = (0..levels)
                    .map(|k| {
                        let parts: Vec<&Tensor> = deep_rows.iter().map(|d| &d[k]).collect();
                        Tensor::cat(&parts, 0)?.to_device(&dev)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                deepstack = Some(DeepStack {
                    positions: Tensor::from_vec(visual_positions, n_visual, &dev)?,
                    features,
                });
            }
        }
        Ok(Assembled {
            embeds,
            pos,
            valid,
            deepstack,
            deltas,
            padding,
            seq_len: s,
        })
    }

    /// Append `ids[b]` (all the same length) to each cached sequence and return logits.
    /// Positions continue from the cache: slot `j` gets `j + deltas[b]` on all rows.
    pub fn extend(
        &self,
        ids: &[Vec<u32>],
        deltas: &[i64],
        cache: &mut DecoderCache,
        scope: LogitsScope,
    ) -> Result<Tensor> {
        let b = ids.len();
        let n = ids.first().map_or(0, Vec::len);
        if b == 0 || n == 0 || ids.iter().any(|v| v.len() != n) {
            return Err(Error::Input {
                message: "extend needs a non-empty batch of equally long token lists".into(),
            });
        }
        if deltas.len() != b || cache.batch() != b {
            return Err(Error::Input {
                message: format!(
                    "{b} sequences, {} deltas, {} cached sequences",
                    deltas.len(),
                    cache.batch()
                ),
            });
        }
        let vocab = self.decoder.config().vocab_size;
        if let Some(&bad) = ids
            .iter()
            .flatten()
            .find(|&&t| t as usize >= vocab || self.is_placeholder(t))
        {
            return Err(Error::Input {
                message: format!(
                    "token {bad} cannot be appended (outside the vocabulary or a visual placeholder)"
                ),
            });
        }
        let pos = Positions::continuation(cache.len(), n, deltas);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (b, n), self.decoder.device())?;
        let embeds = self.decoder.embed(&t)?;
        let valid = vec![vec![true; n]; b];
        let h = self.decoder.forward(&embeds, &pos, &valid, None, cache)?;
        match scope {
            LogitsScope::Last => self.decoder.logits(&h.i((.., n - 1, ..))?),
            LogitsScope::All => self.decoder.logits(&h),
            LogitsScope::Tail(k) => self.decoder.logits(&h.i((.., tail_start(n, k)?.., ..))?),
        }
    }

    /// Log-probabilities of each continuation (token ids) after the prompt `seq`. The
    /// prompt is run once; the continuations run as one batch on copies of its cache.
    pub fn score(
        &self,
        seq: SequenceInput,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<ContinuationScore>> {
        if continuations.is_empty() {
            return Ok(Vec::new());
        }
        self.check_continuations(continuations)?;
        if let [c] = continuations {
            return Ok(vec![self.score_one(seq, c)?]);
        }
        let longest = continuations.iter().map(Vec::len).max().unwrap_or(1);
        let prompt_len = seq.ids.len();
        let mut cache = self.new_cache(prompt_len);
        let pre = self.prefill_cached(&[seq], &mut cache, LogitsScope::Last)?;
        let first = TextDecoder::log_softmax(&pre.logits)?
            .i(0)?
            .to_vec1::<f32>()?;
        let b = continuations.len();
        let mut out: Vec<ContinuationScore> = continuations
            .iter()
            .map(|c| ContinuationScore {
                tokens: c.clone(),
                token_logprobs: vec![first[c[0] as usize]],
                total: 0.0,
            })
            .collect();
        if longest > 1 {
            // every continuation but its last token, right-padded with token 0: padding sits
            // after the real tokens, so causal attention keeps it out of every scored row
            let steps = longest - 1;
            let inputs: Vec<Vec<u32>> = continuations
                .iter()
                .map(|c| {
                    let mut v = c[..c.len() - 1].to_vec();
                    v.resize(steps, 0);
                    v
                })
                .collect();
            let mut batch_cache = cache.repeat(b, prompt_len + steps)?;
            let deltas = vec![pre.deltas[0]; b];
            let logits = self.extend(&inputs, &deltas, &mut batch_cache, LogitsScope::All)?;
            let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            for (bi, c) in continuations.iter().enumerate() {
                if c.len() < 2 {
                    continue;
                }
                let idx = Tensor::from_vec(c[1..].to_vec(), (c.len() - 1, 1), lp.device())?;
                let rows = lp.i((bi, 0..c.len() - 1, ..))?;
                let picked: Vec<f32> = rows.gather(&idx, 1)?.flatten_all()?.to_vec1()?;
                out[bi].token_logprobs.extend(picked);
            }
        }
        for s in &mut out {
            s.total = s.token_logprobs.iter().sum();
        }
        Ok(out)
    }

    /// Log-probabilities of each continuation after each prompt of a batch:
    /// `out[p][c]` for prompt `p` and continuation `c`. Continuations sharing all but
    /// their last token share one batched prefill of the prompts with those tokens
    /// appended ([`TextModel::prefill_cached`]: prompts of any lengths, their shared
    /// leading text from the prefix cache, the head only at the scored positions), so
    /// single-token answers such as "yes" / "no" cost one prefill together.
    pub fn score_batch(
        &self,
        seqs: &[SequenceInput],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Vec<ContinuationScore>>> {
        if seqs.is_empty() || continuations.is_empty() {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        self.check_continuations(continuations)?;
        // continuations by their tokens but the last, in first-seen order
        let mut groups: Vec<(&[u32], Vec<usize>)> = Vec::new();
        for (j, c) in continuations.iter().enumerate() {
            let lead = &c[..c.len() - 1];
            match groups.iter_mut().find(|(l, _)| *l == lead) {
                Some((_, members)) => members.push(j),
                None => groups.push((lead, vec![j])),
            }
        }
        let mut out: Vec<Vec<Option<ContinuationScore>>> =
            vec![vec![None; continuations.len()]; seqs.len()];
        for (lead, group) in groups {
            let batch: Vec<SequenceInput> = seqs
                .iter()
                .map(|q| {
                    let mut q = q.clone();
                    q.ids.extend_from_slice(lead);
                    q
                })
                .collect();
            let n = lead.len() + 1;
            let mut cache = self.new_cache(batch.iter().map(|q| q.ids.len()).max().unwrap_or(1));
            let pre = self.prefill_cached(&batch, &mut cache, LogitsScope::Tail(n))?;
            let lp = TextDecoder::log_softmax(&pre.logits)?;
            for &j in &group {
                let tokens = &continuations[j];
                let idx =
                    Tensor::from_vec(tokens.repeat(seqs.len()), (seqs.len(), n, 1), lp.device())?;
                let picked: Vec<Vec<f32>> = lp.gather(&idx, 2)?.squeeze(2)?.to_vec2()?;
                for (p, token_logprobs) in picked.into_iter().enumerate() {
                    out[p][j] = Some(ContinuationScore {
                        tokens: tokens.clone(),
                        total: token_logprobs.iter().sum(),
                        token_logprobs,
                    });
                }
            }
        }
        out.into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|s| {
                        s.ok_or_else(|| Error::Input {
                            message: "a continuation was left unscored".into(),
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Refuses an empty continuation or a token outside the vocabulary or a visual
    /// placeholder, naming which.
    fn check_continuations(&self, continuations: &[Vec<u32>]) -> Result<()> {
        let vocab = self.decoder.config().vocab_size;
        for (i, c) in continuations.iter().enumerate() {
            if c.is_empty() {
                return Err(Error::Prompt {
                    message: format!("continuation {i} is empty"),
                });
            }
            if let Some(&bad) = c
                .iter()
                .find(|&&t| t as usize >= vocab || self.is_placeholder(t))
            {
                return Err(Error::Input {
                    message: format!(
                        "continuation {i}: token {bad} is outside the vocabulary or a visual placeholder"
                    ),
                });
            }
        }
        Ok(())
    }

    /// One continuation in one pass: the prompt and the continuation (but its last token)
    /// are prefilled together and the head runs once, on the continuation's positions.
    /// `c` is checked ([`TextModel::check_continuations`]).
    fn score_one(&self, mut seq: SequenceInput, c: &[u32]) -> Result<ContinuationScore> {
        let n = c.len();
        seq.ids.extend_from_slice(&c[..n - 1]);
        let mut cache = self.new_cache(seq.ids.len());
        let pre = self.prefill_cached(&[seq], &mut cache, LogitsScope::Tail(n))?;
        let lp = candle_nn::ops::log_softmax(&pre.logits.i(0)?, D::Minus1)?;
        let idx = Tensor::from_vec(c.to_vec(), (n, 1), lp.device())?;
        let token_logprobs: Vec<f32> = lp.gather(&idx, 1)?.flatten_all()?.to_vec1()?;
        Ok(ContinuationScore {
            tokens: c.to_vec(),
            total: token_logprobs.iter().sum(),
            token_logprobs,
        })
    }
}
