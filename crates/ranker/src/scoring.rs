//! Scoring: each candidate's taste, interest and popularity parts, the blended
//! relevance (or a learned scorer's probability of engagement) normalised to a best of 1,
//! and the interest each candidate is nearest to (the soft quotas of the re-ranking).

use embed_store::kernels::dot;

use crate::options::{RecommendOptions, Relevance};
use crate::sources::Direction;
use crate::types::{Candidate, ScoreParts};

/// The candidates' score parts and nearest interests.
pub(crate) struct Scored {
    pub(crate) parts: Vec<ScoreParts>,
    pub(crate) group: Vec<Option<usize>>,
}

/// The user's side of the scoring.
pub(crate) struct Taste<'a> {
    /// The user's embedding and its norm.
    pub(crate) user: &'a [f32],
    pub(crate) user_norm: f32,
    /// The interests that retrieved candidates.
    pub(crate) directions: &'a [Direction],
    /// The largest engagement count of the catalogue (the popularity scale).
    pub(crate) max_count: u32,
}

/// Scores `cands`, whose vectors are `vecs` (`cands.len() × d`) and engagement counts
/// `counts`.
pub(crate) fn score(
    cands: &[Candidate],
    vecs: &[f32],
    d: usize,
    counts: &[u32],
    t: &Taste<'_>,
    opts: &RecommendOptions,
) -> Scored {
    let pop_den = (1.0 + t.max_count.max(1) as f32).ln();
    let user_dir: Vec<f32> = if t.user_norm > 0.0 {
        t.user.iter().map(|x| x / t.user_norm).collect()
    } else {
        vec![0.0; d]
    };
    let w_taste = if t.directions.is_empty() {
        1.0
    } else if t.user_norm == 0.0 {
        0.0
    } else {
        opts.taste_weight
    };
    let max_taste = vecs
        .chunks_exact(d)
        .map(|x| dot(&user_dir, x).abs())
        .fold(0f32, f32::max);
    let taste_scale = if max_taste > 0.0 {
        1.0 / max_taste
    } else {
        0.0
    };
    let mut parts = Vec::with_capacity(cands.len());
    let mut group = Vec::with_capacity(cands.len());
    for (k, x) in vecs.chunks_exact(d).enumerate() {
        let taste = dot(&user_dir, x) * taste_scale;
        let x_norm = dot(x, x).sqrt();
        let inv = if x_norm > 0.0 { 1.0 / x_norm } else { 0.0 };
        let mut interest = f32::NEG_INFINITY;
        let mut nearest = (f32::NEG_INFINITY, None);
        for (j, dir) in t.directions.iter().enumerate() {
            let c = dot(&dir.unit, x) * inv;
            interest = interest.max(dir.weight * c);
            if c > nearest.0 {
                nearest = (c, Some(j));
            }
        }
        group.push(nearest.1);
        let interest = if interest.is_finite() { interest } else { 0.0 };
        let popularity = (1.0 + counts[k] as f32).ln() / pop_den;
        let by_popularity = opts.relevance == Relevance::Popularity;
        let relevance = if by_popularity || (t.user_norm == 0.0 && t.directions.is_empty()) {
            popularity
        } else {
            w_taste * taste + (1.0 - w_taste) * interest
        };
        parts.push(ScoreParts {
            taste,
            interest,
            popularity,
            relevance,
            redundancy: 0.0,
        });
    }
    if let Some(scorer) = opts
        .scorer
        .as_ref()
        .filter(|_| opts.relevance == Relevance::Blend)
    {
        for (p, c) in parts.iter_mut().zip(cands) {
            p.relevance = scorer.probability(p, &c.source);
        }
    }
    // Relevance normalised to a best of 1, so that λ trades it against cosines.
    let top = parts.iter().map(|p| p.relevance.abs()).fold(0f32, f32::max);
    if top > 0.0 {
        parts.iter_mut().for_each(|p| p.relevance /= top);
    }
    Scored { parts, group }
}
