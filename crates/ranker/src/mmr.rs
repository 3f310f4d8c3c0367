//! Maximal Marginal Relevance (Carbonell & Goldstein, 1998) re-ranking with
//! per-attribute caps, and intra-list diversity.
//!
//! Greedy: repeatedly take the candidate maximising
//! `λ · relevance − (1 − λ) · max_{s ∈ selected} cos(x, s)`; each step updates every
//! candidate's redundancy with the newly selected item only (O(n · d) per step).

use crate::error::{Error, Result};
use crate::options::Cap;

/// One selected candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// Index into the candidate list.
    pub index: usize,
    /// Its MMR score when it was picked.
    pub score: f32,
    /// Its largest cosine to the items picked before it (0 for the first).
    pub redundancy: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales each `dim`-wide row of `rows` to unit length (zero rows stay zero).
pub fn normalize_rows(rows: &mut [f32], dim: usize) {
    for r in rows.chunks_exact_mut(dim.max(1)) {
        let n = dot(r, r).sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
}

/// Soft quotas: candidate `i` belongs to group `group[i]` (`None`: no group), and
/// group `g` may take `quota[g]` results while candidates outside full groups remain.
#[derive(Debug, Clone, Copy)]
pub struct Quotas<'q> {
    /// Group of each candidate.
    pub group: &'q [Option<usize>],
    /// Results each group may take before the others are exhausted.
    pub quota: &'q [usize],
}

/// Picks up to `k` of the `relevance.len()` candidates by MMR. `unit` holds the
/// candidates' unit-normalised vectors (`n × dim`); `attrs(i)` their attributes for
/// `caps` (hard: a candidate missing a capped attribute is never capped); `quotas`
/// are soft (filled past only when nothing else is left). Relevance should be on a
/// scale comparable to cosines (e.g. normalised to a maximum of 1).
#[allow(clippy::too_many_arguments)]
pub fn mmr<'a>(
    relevance: &[f32],
    unit: &[f32],
    dim: usize,
    k: usize,
    lambda: f32,
    caps: &[Cap],
    quotas: Option<Quotas<'_>>,
    attrs: impl Fn(usize) -> Option<&'a [u32]>,
) -> Result<Vec<Pick>> {
    let n = relevance.len();
    if dim == 0 || unit.len() != n * dim {
        return Err(Error::config(format!(
            "MMR got {n} relevances and {} vector values, expected {n} x dim {dim}",
            unit.len()
        )));
    }
    if let Some(q) = quotas
        && q.group.len() != n
    {
        return Err(Error::config(format!(
            "MMR got {n} candidates but {} quota groups",
            q.group.len()
        )));
    }
    let mut redundancy = vec![f32::NEG_INFINITY; n];
    let mut taken = vec![false; n];
    let mut counts: Vec<(usize, u32, usize)> = Vec::new();
    let mut out = Vec::with_capacity(k.min(n));
    let capped = |i: usize, counts: &[(usize, u32, usize)]| {
        caps.iter().any(|c| {
            let Some(v) = attrs(i).and_then(|a| a.get(c.attr)).copied() else {
                return false;
            };
            counts
                .iter()
                .any(|&(a, val, cnt)| a == c.attr && val == v && cnt >= c.max)
        })
    };
    let mut used = vec![0usize; quotas.map_or(0, |q| q.quota.len())];
    let over_quota = |i: usize, used: &[usize]| {
        quotas.is_some_and(|q| {
            q.group.get(i).copied().flatten().is_some_and(|g| {
                used.get(g).copied().unwrap_or(0) >= q.quota.get(g).copied().unwrap_or(0)
            })
        })
    };
    let mut soft = quotas.is_some();
    while out.len() < k {
        let mut best: Option<(f32, usize)> = None;
        for i in 0..n {
            if taken[i] || capped(i, &counts) || (soft && over_quota(i, &used)) {
                continue;
            }
            let red = if out.is_empty() { 0.0 } else { redundancy[i] };
            let s = lambda * relevance[i] - (1.0 - lambda) * red;
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        let Some((score, i)) = best else {
            if soft {
                soft = false; // every group is full: fill with the best of the rest
                continue;
            }
            break;
        };
        if let Some(g) = quotas.and_then(|q| q.group.get(i).copied().flatten())
            && let Some(u) = used.get_mut(g)
        {
            *u += 1;
        }
        taken[i] = true;
        out.push(Pick {
            index: i,
            score,
            redundancy: if out.is_empty() { 0.0 } else { redundancy[i] },
        });
        for c in caps {
            if let Some(v) = attrs(i).and_then(|a| a.get(c.attr)).copied() {
                match counts
                    .iter_mut()
                    .find(|(a, val, _)| *a == c.attr && *val == v)
                {
                    Some(e) => e.2 += 1,
                    None => counts.push((c.attr, v, 1)),
                }
            }
        }
        let xi = &unit[i * dim..(i + 1) * dim];
        for j in 0..n {
            if !taken[j] {
                let s = dot(xi, &unit[j * dim..(j + 1) * dim]);
                if s > redundancy[j] {
                    redundancy[j] = s;
                }
            }
        }
    }
    Ok(out)
}

/// Intra-list diversity: the mean of `1 − cos` over all pairs of the `n × dim` rows
/// (0 for fewer than two rows).
pub fn intra_list_diversity(rows: &[f32], dim: usize) -> f32 {
    let mut unit = rows.to_vec();
    normalize_rows(&mut unit, dim);
    let n = unit.len() / dim.max(1);
    if n < 2 {
        return 0.0;
    }
    let mut sum = 0f64;
    for a in 0..n {
        for b in a + 1..n {
            sum += 1.0 - dot(&unit[a * dim..(a + 1) * dim], &unit[b * dim..(b + 1) * dim]) as f64;
        }
    }
    (sum / (n * (n - 1) / 2) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two near-duplicates of high relevance and one orthogonal item of lower relevance.
    fn setup() -> (Vec<f32>, Vec<f32>) {
        let rel = vec![1.0, 0.99, 0.6];
        let mut unit = vec![1.0, 0.0, 0.999, 0.045, 0.0, 1.0];
        normalize_rows(&mut unit, 2);
        (rel, unit)
    }

    #[test]
    fn lambda_one_is_relevance_order_and_lower_lambda_diversifies() {
        let (rel, unit) = setup();
        let order = |l: f32| -> Vec<usize> {
            mmr(&rel, &unit, 2, 3, l, &[], None, |_| None)
                .unwrap()
                .iter()
                .map(|p| p.index)
                .collect()
        };
        assert_eq!(order(1.0), vec![0, 1, 2]);
        assert_eq!(order(0.5), vec![0, 2, 1]);
        let picks = mmr(&rel, &unit, 2, 2, 0.5, &[], None, |_| None).unwrap();
        assert_eq!(picks[0].redundancy, 0.0);
        assert!(
            picks[1].redundancy.abs() < 1e-6,
            "orthogonal to the first pick"
        );
    }

    #[test]
    fn caps_limit_results_per_attribute_value() {
        let (rel, unit) = setup();
        let attrs = [[7u32], [7], [8]];
        let caps = [Cap { attr: 0, max: 1 }];
        let picks = mmr(&rel, &unit, 2, 3, 1.0, &caps, None, |i| Some(&attrs[i][..])).unwrap();
        let idx: Vec<usize> = picks.iter().map(|p| p.index).collect();
        assert_eq!(idx, vec![0, 2], "the second item of value 7 is capped out");
    }

    #[test]
    fn soft_quotas_make_room_for_other_groups_and_then_fill() {
        let (rel, unit) = setup();
        let group = [Some(0), Some(0), Some(1)];
        let q = Quotas {
            group: &group,
            quota: &[1, 1],
        };
        let idx = |k| -> Vec<usize> {
            mmr(&rel, &unit, 2, k, 1.0, &[], Some(q), |_| None)
                .unwrap()
                .iter()
                .map(|p| p.index)
                .collect()
        };
        assert_eq!(idx(2), vec![0, 2], "group 0 is full after one pick");
        assert_eq!(idx(3), vec![0, 2, 1], "then the rest fills in");
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let (rel, unit) = setup();
        assert!(mmr(&rel, &unit[..4], 2, 2, 1.0, &[], None, |_| None).is_err());
        assert!(mmr(&rel, &unit, 0, 2, 1.0, &[], None, |_| None).is_err());
        let q = Quotas {
            group: &[Some(0)],
            quota: &[1],
        };
        assert!(mmr(&rel, &unit, 2, 2, 1.0, &[], Some(q), |_| None).is_err());
    }

    #[test]
    fn diversity_is_zero_for_duplicates_and_one_for_orthogonal_rows() {
        assert_eq!(intra_list_diversity(&[1.0, 0.0, 2.0, 0.0], 2), 0.0);
        assert!((intra_list_diversity(&[1.0, 0.0, 0.0, 3.0], 2) - 1.0).abs() < 1e-6);
        assert_eq!(intra_list_diversity(&[1.0, 0.0], 2), 0.0);
    }
}
