//! Evaluation exactly as in the LightGCN reference code: for every user with test
//! items, score all items, exclude the user's training items, take the top K, and
//! average Recall@K, Precision@K and NDCG@K over those users.
//!
//! Per user with test set `T` and hits `h_i ∈ {0, 1}` at ranks `i = 0..K`:
//! recall = Σh / |T|, precision = Σh / K,
//! NDCG = (Σ h_i / log2(i + 2)) / (Σ_{i < min(|T|, K)} 1 / log2(i + 2)).
//!
//! Scores are user·item dot products computed in blocks of users with candle's CPU
//! matrix multiply; top-K selection and metrics run in parallel over the block.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::UserId;

/// Averaged metrics at one cut-off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// The cut-off K.
    pub k: usize,
    /// Mean Recall@K.
    pub recall: f64,
    /// Mean Precision@K.
    pub precision: f64,
    /// Mean NDCG@K.
    pub ndcg: f64,
    /// Users averaged over (those with at least one test item).
    pub users: usize,
}

/// One user's metrics at one cut-off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserMetrics {
    /// Test items among the first K.
    pub hits: usize,
    /// hits / |test|.
    pub recall: f64,
    /// hits / K.
    pub precision: f64,
    /// DCG over the first K divided by the ideal DCG for min(|test|, K) hits.
    pub ndcg: f64,
}

/// Metrics of a ranking (best first, at least `k` long unless there are fewer items)
/// against a sorted test set, at cut-off `k`. An empty test set gives all zeros.
pub fn user_metrics(ranked: &[u32], test_sorted: &[u32], k: usize) -> UserMetrics {
    let mut hits = 0;
    let mut dcg = 0.0;
    for (i, item) in ranked.iter().take(k).enumerate() {
        if test_sorted.binary_search(item).is_ok() {
            hits += 1;
            dcg += 1.0 / ((i + 2) as f64).log2();
        }
    }
    let idcg: f64 = (0..test_sorted.len().min(k))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    UserMetrics {
        hits,
        recall: ratio(hits as f64, test_sorted.len() as f64),
        precision: ratio(hits as f64, k as f64),
        ndcg: ratio(dcg, idcg),
    }
}

/// The indices of the `k` largest scores, best first; ties go to the lower index,
/// `-inf` and NaN scores are never chosen.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return Vec::new();
    }
    for (i, &s) in scores.iter().enumerate() {
        if s == f32::NEG_INFINITY || s.is_nan() {
            continue;
        }
        if best.len() == k && s <= best[k - 1].0 {
            continue;
        }
        let pos = best.partition_point(|&(b, _)| b >= s);
        best.insert(pos, (s, i as u32));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// Users scored per matrix multiply: 128 × 41k items is a 21 MB score block, under
/// glibc's largest mmap threshold, so the block's memory is reused instead of being
/// mapped (and page-faulted) afresh every time.
const USER_BLOCK: usize = 128;

/// Evaluates final user and item embeddings (row-major, `dim` wide) at each cut-off in
/// `ks`, excluding `train` items from every user's ranking and averaging over users
/// with at least one `test` item.
pub fn evaluate(
    users: &[f32],
    items: &[f32],
    dim: usize,
    train: &BipartiteGraph,
    test: &BipartiteGraph,
    ks: &[usize],
) -> Result<Vec<Metrics>> {
    let (nu, ni) = (train.n_users(), train.n_items());
    if test.n_users() != nu || test.n_items() != ni {
        return Err(Error::Shape {
            message: format!(
                "train is {nu} x {ni} but test is {} x {}",
                test.n_users(),
                test.n_items()
            ),
        });
    }
    if dim == 0 || users.len() != nu * dim || items.len() != ni * dim {
        return Err(Error::Shape {
            message: format!(
                "embeddings have {} user and {} item values, expected {nu} x {dim} and {ni} x {dim}",
                users.len(),
                items.len()
            ),
        });
    }
    let kmax = ks.iter().copied().max().unwrap_or(0);
    let eval_users: Vec<u32> = (0..nu as u32)
        .filter(|&u| !test.items_of(UserId(u)).is_empty())
        .collect();
    let item_t = Tensor::from_slice(items, (ni, dim), &Device::Cpu)?.t()?;
    let mut sums = vec![[0f64; 3]; ks.len()];
    for block in eval_users.chunks(USER_BLOCK) {
        let mut ub = Vec::with_capacity(block.len() * dim);
        for &u in block {
            ub.extend_from_slice(&users[u as usize * dim..(u as usize + 1) * dim]);
        }
        let ut = Tensor::from_slice(&ub, (block.len(), dim), &Device::Cpu)?;
        let mut scores = ut.matmul(&item_t)?.flatten_all()?.to_vec1::<f32>()?;
        let part: Vec<Vec<[f64; 3]>> = scores
            .par_chunks_mut(ni)
            .zip(block.par_iter())
            .map(|(row, &u)| {
                for &i in train.items_of(UserId(u)) {
                    row[i as usize] = f32::NEG_INFINITY;
                }
                let ranked = top_k(row, kmax);
                let t = test.items_of(UserId(u));
                ks.iter()
                    .map(|&k| {
                        let m = user_metrics(&ranked, t, k);
                        [m.recall, m.precision, m.ndcg]
                    })
                    .collect()
            })
            .collect();
        for per_user in part {
            for (s, m) in sums.iter_mut().zip(per_user) {
                for j in 0..3 {
                    s[j] += m[j];
                }
            }
        }
    }
    let n = eval_users.len().max(1) as f64;
    Ok(ks
        .iter()
        .zip(sums)
        .map(|(&k, s)| Metrics {
            k,
            recall: s[0] / n,
            precision: s[1] / n,
            ndcg: s[2] / n,
            users: eval_users.len(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ItemId;

    #[test]
    fn hand_computed_user_metrics() {
        // ranking 7 3 9 1 5, test {1, 3, 8}; K = 3: hit at rank 1 only.
        let m = user_metrics(&[7, 3, 9, 1, 5], &[1, 3, 8], 3);
        assert_eq!(m.hits, 1);
        assert!((m.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.precision - 1.0 / 3.0).abs() < 1e-12);
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((m.ndcg - (1.0 / 3f64.log2()) / idcg).abs() < 1e-12);
        // K = 5: hits at ranks 1 and 3; ideal DCG over min(3, 5) = 3 positions.
        let m = user_metrics(&[7, 3, 9, 1, 5], &[1, 3, 8], 5);
        assert_eq!(m.hits, 2);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision - 0.4).abs() < 1e-12);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        assert!((m.ndcg - dcg / idcg).abs() < 1e-12);
        // perfect ranking: NDCG 1 with fewer test items than K.
        let m = user_metrics(&[4, 2, 0], &[2, 4], 3);
        assert!((m.ndcg - 1.0).abs() < 1e-12 && (m.recall - 1.0).abs() < 1e-12);
        assert_eq!(user_metrics(&[1], &[], 1).recall, 0.0);
    }

    #[test]
    fn top_k_orders_breaks_ties_low_and_skips_masked() {
        let s = [0.5, 2.0, f32::NEG_INFINITY, 2.0, f32::NAN, -1.0, 3.0];
        assert_eq!(top_k(&s, 3), vec![6, 1, 3]);
        assert_eq!(top_k(&s, 10), vec![6, 1, 3, 0, 5]);
        assert_eq!(top_k(&s, 0), Vec::<u32>::new());
    }

    #[test]
    fn evaluate_masks_train_items_and_averages_over_test_users() {
        // 3 users, 4 items, dim 1: item scores for every user are the item values
        // (user embedding 1), so the ranking is items 3, 2, 1, 0 minus train items.
        let users = [1.0f32, 1.0, 1.0];
        let items = [0.1f32, 0.2, 0.3, 0.4];
        let e = |p: &[(u32, u32)]| {
            BipartiteGraph::from_edges(3, 4, p.iter().map(|&(u, i)| (UserId(u), ItemId(i))))
                .unwrap()
        };
        let train = e(&[(0, 3), (1, 0)]);
        let test = e(&[(0, 2), (1, 0)]); // user 2 has no test items: not averaged
        let m = evaluate(&users, &items, 1, &train, &test, &[1, 2]).unwrap();
        // user 0: ranking 2, 1, 0 -> hit at rank 0. user 1: item 0 is masked (train) -> no hit.
        assert_eq!(m[0].users, 2);
        assert!((m[0].recall - 0.5).abs() < 1e-12);
        assert!((m[0].precision - 0.5).abs() < 1e-12);
        assert!((m[0].ndcg - 0.5).abs() < 1e-12);
        assert!((m[1].precision - 0.25).abs() < 1e-12);
        assert!(evaluate(&users, &items, 2, &train, &test, &[1]).is_err());
    }
}
