//! Evaluation exactly as in the LightGCN reference code: for every user with test
//! items, score all items, exclude the user's training items, take the top K, and
//! average Recall@K, Precision@K and NDCG@K over those users.
//!
//! Per user with test set `T` and hits `h_i ∈ {0, 1}` at ranks `i = 0..K`:
//! recall = Σh / |T|, precision = Σh / K,
//! NDCG = (Σ h_i / log2(i + 2)) / (Σ_{i < min(|T|, K)} 1 / log2(i + 2)).
//!
//! Scores are user·item dot products from a small register-blocked kernel (4 users x
//! 16 items per call, item tiles kept in L2 while groups of users reuse them, AVX2+FMA
//! when the CPU has it); tasks of 32 users run in parallel and reuse their buffers.

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

/// Items per packed tile: one 16-wide accumulator row (two AVX2 registers).
const LANES: usize = 16;
/// Users per micro-kernel call.
const GROUP: usize = 4;
/// Users per parallel task (their score rows are one reusable buffer).
const TASK_USERS: usize = 32;
/// Tiles scored per pass over a task's users: 64 tiles x 16 items x 64 dims x 4 bytes
/// = 256 KiB, which stays in the core's L2 while every user group reuses it.
const CHUNK_TILES: usize = 64;

/// Item embeddings packed for scoring: tile `t`, dimension `j`, lane `l` holds item
/// `16 t + l` (zero past the last item).
struct PackedItems {
    tiles: usize,
    dim: usize,
    data: Vec<f32>,
}

fn pack_items(items: &[f32], n_items: usize, dim: usize) -> PackedItems {
    let tiles = n_items.div_ceil(LANES);
    let mut data = vec![0f32; tiles * dim * LANES];
    for i in 0..n_items {
        let (t, l) = (i / LANES, i % LANES);
        for j in 0..dim {
            data[(t * dim + j) * LANES + l] = items[i * dim + j];
        }
    }
    PackedItems { tiles, dim, data }
}

/// Dot products of `GROUP` users (row-major, `dim` wide) with the 16 items of a tile.
#[inline(always)]
fn micro<const FMA: bool>(users: &[f32], tile: &[f32], dim: usize) -> [[f32; LANES]; GROUP] {
    let (lanes, _) = tile.as_chunks::<LANES>();
    let mut acc = [[0f32; LANES]; GROUP];
    for (j, t) in lanes.iter().enumerate().take(dim) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let b = users[r * dim + j];
            for l in 0..LANES {
                acc[l] = if FMA {
                    b.mul_add(t[l], acc[l])
                } else {
                    acc[l] + b * t[l]
                };
            }
        }
    }
    acc
}

/// Scores of a task's users (`ub`, a multiple of `GROUP` rows) against every packed
/// item; `out` row `r` holds user `r`'s scores at stride `tiles * LANES`.
#[inline(always)]
fn score_task_body<const FMA: bool>(ub: &[f32], items: &PackedItems, out: &mut [f32]) {
    let (d, stride) = (items.dim, items.tiles * LANES);
    let tile_len = d * LANES;
    let groups = ub.len() / (GROUP * d);
    for start in (0..items.tiles).step_by(CHUNK_TILES) {
        let end = (start + CHUNK_TILES).min(items.tiles);
        for g in 0..groups {
            let urows = &ub[g * GROUP * d..(g + 1) * GROUP * d];
            for t in start..end {
                let acc = micro::<FMA>(urows, &items.data[t * tile_len..(t + 1) * tile_len], d);
                for (r, a) in acc.iter().enumerate() {
                    let o = (g * GROUP + r) * stride + t * LANES;
                    out[o..o + LANES].copy_from_slice(a);
                }
            }
        }
    }
}

fn score_task_portable(ub: &[f32], items: &PackedItems, out: &mut [f32]) {
    score_task_body::<false>(ub, items, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn score_task_avx2(ub: &[f32], items: &PackedItems, out: &mut [f32]) {
    score_task_body::<true>(ub, items, out)
}

type ScoreKernel = fn(&[f32], &PackedItems, &mut [f32]);

fn score_kernel() -> ScoreKernel {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("MOSAIC_PORTABLE_KERNELS").is_none_or(|v| v != "1")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: selected only after the CPU reported both AVX2 and FMA.
        return |ub, items, out| unsafe { score_task_avx2(ub, items, out) };
    }
    score_task_portable
}

/// Scores every item for the given users: row `k` of the result is user `users_idx[k]`'s
/// dot product with each item (`users` and `items` row-major, `dim` wide).
pub fn score_all(
    users: &[f32],
    items: &[f32],
    dim: usize,
    users_idx: &[u32],
) -> Result<Vec<Vec<f32>>> {
    if dim == 0 || !users.len().is_multiple_of(dim) || !items.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            message: format!(
                "{} user and {} item values are not rows of width {dim}",
                users.len(),
                items.len()
            ),
        });
    }
    let nu = users.len() / dim;
    if let Some(u) = users_idx.iter().find(|&&u| u as usize >= nu) {
        return Err(Error::Shape {
            message: format!("user {u} out of range for {nu} users"),
        });
    }
    let ni = items.len() / dim;
    let packed = pack_items(items, ni, dim);
    let kernel = score_kernel();
    let stride = packed.tiles * LANES;
    Ok(users_idx
        .par_chunks(TASK_USERS)
        .flat_map_iter(|block| {
            let used = block.len().div_ceil(GROUP) * GROUP;
            let mut ub = vec![0f32; used * dim];
            let mut out = vec![0f32; used * stride];
            fill_and_score(kernel, users, dim, block, &packed, &mut ub, &mut out);
            (0..block.len())
                .map(|r| out[r * stride..r * stride + ni].to_vec())
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Gathers a block's user rows into `ub` (zero rows pad the last group) and scores them.
fn fill_and_score(
    kernel: ScoreKernel,
    users: &[f32],
    dim: usize,
    block: &[u32],
    packed: &PackedItems,
    ub: &mut [f32],
    out: &mut [f32],
) {
    ub.fill(0.0);
    for (k, &u) in block.iter().enumerate() {
        let u = u as usize;
        ub[k * dim..(k + 1) * dim].copy_from_slice(&users[u * dim..(u + 1) * dim]);
    }
    kernel(ub, packed, out);
}

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
    let packed = pack_items(items, ni, dim);
    let kernel = score_kernel();
    let stride = packed.tiles * LANES;
    let rows = TASK_USERS.div_ceil(GROUP) * GROUP;
    let zero = || vec![[0f64; 3]; ks.len()];
    let sums = eval_users
        .par_chunks(TASK_USERS)
        .map_init(
            // One user and score buffer per rayon job, reused across its blocks.
            || (vec![0f32; rows * dim], vec![0f32; rows * stride]),
            |(ub, out), block| {
                let used = block.len().div_ceil(GROUP) * GROUP;
                fill_and_score(
                    kernel,
                    users,
                    dim,
                    block,
                    &packed,
                    &mut ub[..used * dim],
                    &mut out[..used * stride],
                );
                let mut sums = zero();
                for (r, &u) in block.iter().enumerate() {
                    let row = &mut out[r * stride..r * stride + ni];
                    for &i in train.items_of(UserId(u)) {
                        row[i as usize] = f32::NEG_INFINITY;
                    }
                    let ranked = top_k(row, kmax);
                    let t = test.items_of(UserId(u));
                    for (s, &k) in sums.iter_mut().zip(ks) {
                        let m = user_metrics(&ranked, t, k);
                        s[0] += m.recall;
                        s[1] += m.precision;
                        s[2] += m.ndcg;
                    }
                }
                sums
            },
        )
        .reduce(zero, |mut a, b| {
            for (a, b) in a.iter_mut().zip(b) {
                for j in 0..3 {
                    a[j] += b[j];
                }
            }
            a
        });
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
    fn packed_scores_equal_dot_products_for_odd_sizes() {
        for (nu, ni, d) in [
            (37usize, 53usize, 13usize),
            (5, 16, 64),
            (1, 1, 1),
            (70, 33, 64),
        ] {
            let users: Vec<f32> = (0..nu * d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let items: Vec<f32> = (0..ni * d)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let idx: Vec<u32> = (0..nu as u32).rev().collect();
            let got = score_all(&users, &items, d, &idx).unwrap();
            assert_eq!(got.len(), nu);
            for (row, &u) in got.iter().zip(&idx) {
                assert_eq!(row.len(), ni);
                for (i, &s) in row.iter().enumerate() {
                    let want: f32 = (0..d)
                        .map(|j| users[u as usize * d + j] * items[i * d + j])
                        .sum();
                    assert!(
                        (s - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{nu}x{ni}x{d} u{u} i{i}: {s} vs {want}"
                    );
                }
            }
        }
        assert!(score_all(&[0.0; 6], &[0.0; 6], 3, &[2]).is_err());
        assert!(score_all(&[0.0; 6], &[0.0; 5], 3, &[0]).is_err());
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
