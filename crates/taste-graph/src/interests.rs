//! Several interests per user (PinnerSage, Pal et al., KDD 2020): a user's recent items
//! are clustered with Ward agglomerative clustering over their (unit-normalised)
//! embeddings; each cluster is one interest, represented by its *medoid* item (an
//! actual item, so retrieval never drifts into an empty region between topics) and
//! weighted by the time-decayed weight of its members.

use crate::error::{Error, Result};
use crate::ids::{ItemId, UserId};
use crate::live::LiveModel;

/// Settings of [`interests`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InterestConfig {
    max_interests: usize,
    merge_threshold: f32,
    half_life: f64,
}

impl Default for InterestConfig {
    fn default() -> Self {
        Self {
            max_interests: 5,
            merge_threshold: 3.0,
            half_life: f64::INFINITY,
        }
    }
}

impl InterestConfig {
    /// At most 5 interests, merge threshold 3.0, no time decay.
    pub fn new() -> Self {
        Self::default()
    }
    /// Keep at most this many interests (the most important ones).
    pub fn max_interests(mut self, n: usize) -> Self {
        self.max_interests = n;
        self
    }
    /// Stop merging when the cheapest Ward merge costs more than this
    /// (Lance–Williams units on unit vectors: two single items at cosine `c` cost
    /// `2 − 2c`; larger thresholds give fewer, broader interests).
    pub fn merge_threshold(mut self, t: f32) -> Self {
        self.merge_threshold = t;
        self
    }
    /// Half-life of an item's importance, in the caller's time unit.
    pub fn half_life(mut self, h: f64) -> Self {
        self.half_life = h;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config { message: m });
        if self.max_interests == 0 {
            return bad("max_interests = 0, expected at least 1".into());
        }
        if !self.merge_threshold.is_finite() || self.merge_threshold < 0.0 {
            return bad(format!(
                "merge_threshold = {}, expected a finite value >= 0",
                self.merge_threshold
            ));
        }
        if self.half_life.is_nan() || self.half_life <= 0.0 {
            return bad(format!(
                "half_life = {}, expected a positive number of time units (or infinity)",
                self.half_life
            ));
        }
        Ok(())
    }
}

/// One interest of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct Interest {
    /// The cluster's medoid: the member nearest (in total squared distance) to the others.
    pub medoid: ItemId,
    /// Time-decayed weight of the members, normalised so a user's interests sum to 1.
    pub importance: f32,
    /// The cluster's items, most important first.
    pub members: Vec<ItemId>,
}

/// Most points [`ward`] accepts: a user's recent positives at most.
pub const MAX_WARD_POINTS: usize = crate::live::MAX_RECENT;

/// Ward agglomerative clustering of `n = points.len() / dim` points: a cluster label
/// (`0..clusters`) per point. Merging stops when the cheapest merge costs more than
/// `threshold` (Lance–Williams recurrence on squared Euclidean distances).
pub fn ward(points: &[f32], dim: usize, threshold: f32) -> Result<Vec<usize>> {
    if dim == 0 || !points.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            message: format!(
                "{} values are not a whole number of {dim}-wide points",
                points.len()
            ),
        });
    }
    let n = points.len() / dim;
    if n > MAX_WARD_POINTS {
        return Err(Error::Config {
            message: format!(
                "{n} points to cluster; Ward here is O(n^2) memory and O(n^3) time, at most {MAX_WARD_POINTS} are accepted (cluster a user's recent items, not a catalogue)"
            ),
        });
    }
    // Condensed symmetric distance matrix, full n×n for simple indexing (n is small).
    let mut dist = vec![0f32; n * n];
    for a in 0..n {
        for b in a + 1..n {
            let (x, y) = (
                &points[a * dim..(a + 1) * dim],
                &points[b * dim..(b + 1) * dim],
            );
            let d: f32 = x.iter().zip(y).map(|(x, y)| (x - y) * (x - y)).sum();
            dist[a * n + b] = d;
            dist[b * n + a] = d;
        }
    }
    let mut size = vec![1usize; n];
    let mut alive = vec![true; n];
    let mut parent: Vec<usize> = (0..n).collect();
    loop {
        let mut best = (f32::INFINITY, 0, 0);
        for a in (0..n).filter(|&a| alive[a]) {
            for b in (a + 1..n).filter(|&b| alive[b]) {
                if dist[a * n + b] < best.0 {
                    best = (dist[a * n + b], a, b);
                }
            }
        }
        let (cost, a, b) = best;
        if !cost.is_finite() || cost > threshold {
            break;
        }
        // Merge b into a: Lance–Williams update of d(k, a ∪ b).
        let (na, nb) = (size[a] as f32, size[b] as f32);
        for k in (0..n).filter(|&k| alive[k] && k != a && k != b) {
            let nk = size[k] as f32;
            let v = ((na + nk) * dist[k * n + a] + (nb + nk) * dist[k * n + b]
                - nk * dist[a * n + b])
                / (na + nb + nk);
            dist[k * n + a] = v;
            dist[a * n + k] = v;
        }
        size[a] += size[b];
        alive[b] = false;
        parent[b] = a;
    }
    // Resolve each point's root, then number the roots densely.
    let root = |mut p: usize| {
        while parent[p] != p {
            p = parent[p];
        }
        p
    };
    let mut label_of_root = vec![usize::MAX; n];
    let mut next = 0;
    let mut labels = vec![0usize; n];
    for (p, l) in labels.iter_mut().enumerate() {
        let r = root(p);
        if label_of_root[r] == usize::MAX {
            label_of_root[r] = next;
            next += 1;
        }
        *l = label_of_root[r];
    }
    Ok(labels)
}

/// The interests of a set of weighted items: `items[j] = (item, weight)` with the item's
/// embedding at row `item` of `table` (`dim` wide). Duplicate items add their weights.
pub fn cluster_items(
    items: &[(ItemId, f32)],
    table: &[f32],
    dim: usize,
    config: &InterestConfig,
) -> Result<Vec<Interest>> {
    config.validate()?;
    // Deduplicate, summing weights; keep positive weights only.
    let mut uniq: Vec<(ItemId, f32)> = Vec::with_capacity(items.len());
    for &(it, w) in items {
        if !w.is_finite() {
            return Err(Error::Graph {
                message: format!("item {} has weight {w}, expected a finite value", it.0),
            });
        }
        match uniq.iter_mut().find(|(i, _)| *i == it) {
            Some((_, acc)) => *acc += w,
            None => uniq.push((it, w)),
        }
    }
    uniq.retain(|&(_, w)| w > 0.0);
    if uniq.is_empty() {
        return Ok(Vec::new());
    }
    let mut points = vec![0f32; uniq.len() * dim];
    for (j, &(it, _)) in uniq.iter().enumerate() {
        let row = table
            .get(it.index() * dim..(it.index() + 1) * dim)
            .ok_or_else(|| Error::Graph {
                message: format!(
                    "item {} has no row in a table of {} items",
                    it.0,
                    table.len() / dim.max(1)
                ),
            })?;
        let p = &mut points[j * dim..(j + 1) * dim];
        p.copy_from_slice(row);
        let norm = p.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            p.iter_mut().for_each(|x| *x /= norm);
        }
    }
    let labels = ward(&points, dim, config.merge_threshold)?;
    let n_clusters = labels.iter().max().map_or(0, |m| m + 1);
    let mut out = Vec::with_capacity(n_clusters);
    let total: f32 = uniq.iter().map(|&(_, w)| w).sum();
    for c in 0..n_clusters {
        let mut members: Vec<usize> = (0..uniq.len()).filter(|&j| labels[j] == c).collect();
        let importance: f32 = members.iter().map(|&j| uniq[j].1).sum::<f32>() / total;
        let medoid = members
            .iter()
            .map(|&a| {
                let cost: f32 = members
                    .iter()
                    .map(|&b| {
                        let (x, y) = (
                            &points[a * dim..(a + 1) * dim],
                            &points[b * dim..(b + 1) * dim],
                        );
                        x.iter().zip(y).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
                    })
                    .sum();
                (cost, a)
            })
            .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
            .map(|(_, a)| a)
            .unwrap_or(members[0]);
        members.sort_by(|&a, &b| uniq[b].1.total_cmp(&uniq[a].1).then(a.cmp(&b)));
        out.push(Interest {
            medoid: uniq[medoid].0,
            importance,
            members: members.iter().map(|&j| uniq[j].0).collect(),
        });
    }
    out.sort_by(|a, b| {
        b.importance
            .total_cmp(&a.importance)
            .then(a.medoid.cmp(&b.medoid))
    });
    out.truncate(config.max_interests);
    let kept: f32 = out.iter().map(|i| i.importance).sum();
    if kept > 0.0 {
        out.iter_mut().for_each(|i| i.importance /= kept);
    }
    Ok(out)
}

/// A user's interests at time `now` from the live model's recent items, each weighted
/// by its kind weight times `2^(-(now - t) / half_life)`.
pub fn interests(
    live: &LiveModel,
    user: UserId,
    now: u64,
    config: &InterestConfig,
) -> Result<Vec<Interest>> {
    if user.index() >= live.n_users() {
        return Err(Error::Graph {
            message: format!("user {} is out of range: {} users", user.0, live.n_users()),
        });
    }
    let h = config.half_life;
    let items: Vec<(ItemId, f32)> = live
        .recent(user)
        .map(|r| {
            let age = now.saturating_sub(r.time) as f64;
            let f = if h.is_infinite() {
                1.0
            } else {
                (-age / h * std::f64::consts::LN_2).exp()
            };
            (r.item, (r.weight as f64 * f) as f32)
        })
        .collect();
    cluster_items(&items, live.items(), live.dim(), config)
}
