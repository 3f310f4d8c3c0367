//! Candidate sources: the user's interests (each a nearest-neighbour search from its
//! medoid), the taste embedding, the popular pool and the fresh pool. Each fills its share
//! of the candidate budget; an item is kept once, under the first source that found it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use embed_store::hnsw::{Hnsw, Scratch};
use embed_store::kernels::dot;
use embed_store::{Filter, ItemId as StoreId, Metric, Snapshot};

use crate::error::Result;
use crate::options::RecommendOptions;
use crate::types::{Candidate, Source};

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// What candidates are drawn from: a generation, its index, its newest rows.
#[derive(Clone, Copy)]
pub(crate) struct Catalog<'a> {
    pub(crate) snap: &'a Snapshot,
    pub(crate) index: Option<&'a Hnsw>,
    /// The newest live rows (id, segment, row), newest first.
    pub(crate) fresh: &'a [(u64, usize, usize)],
}

/// One of the user's interests, as the sources need it.
pub(crate) struct Interest {
    /// The medoid's external id.
    pub(crate) medoid: u64,
    pub(crate) importance: f32,
    /// The medoid's live embedding (for a medoid the generation does not hold).
    pub(crate) live: Option<Vec<f32>>,
}

/// The unit direction of an interest that retrieved candidates, its weight in the
/// interest score and its importance.
pub(crate) struct Direction {
    pub(crate) unit: Vec<f32>,
    pub(crate) weight: f32,
    pub(crate) importance: f32,
}

/// The candidates of one request and the interest directions that found them.
pub(crate) struct Gathered {
    pub(crate) cands: Vec<Candidate>,
    pub(crate) directions: Vec<Direction>,
}

/// The user's side of a request.
pub(crate) struct Wants<'a> {
    pub(crate) user: &'a [f32],
    pub(crate) user_norm: f32,
    pub(crate) interests: &'a [Interest],
    /// Popular items (external id, engagements), most engaged first.
    pub(crate) popular: &'a [(u64, u32)],
}

/// Candidates deduplicated in arrival order.
struct Pool {
    cands: Vec<Candidate>,
    index_of: HashMap<u64, usize>,
}

impl Pool {
    fn push(&mut self, id: u64, source: Source) {
        if let Entry::Vacant(e) = self.index_of.entry(id) {
            e.insert(self.cands.len());
            self.cands.push(Candidate { id, source });
        }
    }
}

/// Each source's share of the budget (interests, taste, popular, fresh): a source that
/// has nothing to give passes its share on.
fn shares(w: &Wants<'_>, opts: &RecommendOptions) -> [f32; 4] {
    let s = opts.sources;
    let shares = [
        if w.interests.is_empty() {
            0.0
        } else {
            s.interests
        },
        if w.user_norm > 0.0 { s.taste } else { 0.0 },
        s.popular,
        s.fresh,
    ];
    let total: f32 = shares.iter().sum();
    if total > 0.0 {
        shares.map(|x| x / total)
    } else {
        [0.0, 0.0, 1.0, 0.0]
    }
}

fn quota(budget: f32, share: f32) -> usize {
    (budget * share).round().max(1.0) as usize
}

impl Catalog<'_> {
    /// The `k` nearest items to `q` by cosine that `filter` admits (HNSW when built,
    /// else exact). Cosine, not the inner product: from an interest's medoid the inner
    /// product would return the largest-norm (most popular) items of any style.
    pub(crate) fn retrieve(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        filter: &Filter,
    ) -> Result<Vec<u64>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let hits = match self.index {
            Some(h) => SCRATCH.with(|cell| {
                let mut cell = cell.borrow_mut();
                // The scratch grows itself to the index it serves.
                let s = cell.get_or_insert_with(|| Scratch::new(h.len()));
                h.search(self.snap, q, k, ef.max(k), filter, s)
            })?,
            None => self.snap.search(q, k, Metric::Cosine, filter)?,
        };
        Ok(hits.iter().map(|h| h.id.0).collect())
    }

    /// Every source's candidates for one request.
    pub(crate) fn gather(
        &self,
        w: &Wants<'_>,
        filter: &Filter,
        opts: &RecommendOptions,
    ) -> Result<Gathered> {
        let shares = shares(w, opts);
        let budget = opts.candidates as f32;
        let mut pool = Pool {
            cands: Vec::with_capacity(opts.candidates + 16),
            index_of: HashMap::with_capacity(opts.candidates + 16),
        };
        let mut directions = Vec::new();
        if shares[0] > 0.0 {
            directions =
                self.interest_neighbours(w.interests, budget * shares[0], filter, opts, &mut pool)?;
        }
        if shares[1] > 0.0 {
            for id in self.retrieve(w.user, quota(budget, shares[1]), opts.ef, filter)? {
                pool.push(id, Source::Taste);
            }
        }
        if shares[2] > 0.0 {
            self.popular_admitted(w.popular, quota(budget, shares[2]), filter, &mut pool);
        }
        if shares[3] > 0.0 {
            self.fresh_by_taste(w.user, quota(budget, shares[3]), filter, &mut pool)?;
        }
        Ok(Gathered {
            cands: pool.cands,
            directions,
        })
    }

    /// Each interest's neighbours, its quota by importance; returns the directions of
    /// the interests that could search.
    fn interest_neighbours(
        &self,
        interests: &[Interest],
        budget: f32,
        filter: &Filter,
        opts: &RecommendOptions,
        pool: &mut Pool,
    ) -> Result<Vec<Direction>> {
        let max_imp = interests.iter().map(|i| i.importance).fold(0f32, f32::max);
        let mut directions = Vec::new();
        for (rank, it) in interests.iter().enumerate() {
            let Some(q) = self
                .snap
                .get(StoreId(it.medoid))
                .or_else(|| it.live.clone())
            else {
                continue;
            };
            let source = Source::Interest {
                rank,
                medoid: it.medoid,
                importance: it.importance,
            };
            let k = (budget * it.importance).round().max(1.0) as usize;
            for id in self.retrieve(&q, k, opts.ef, filter)? {
                pool.push(id, source);
            }
            let n = dot(&q, &q).sqrt();
            if n > 0.0 {
                let weight = if max_imp > 0.0 {
                    (it.importance / max_imp).powf(opts.importance_exponent)
                } else {
                    1.0
                };
                directions.push(Direction {
                    unit: q.iter().map(|x| x / n).collect(),
                    weight,
                    importance: it.importance,
                });
            }
        }
        Ok(directions)
    }

    /// The most engaged items the generation holds and the filter admits.
    fn popular_admitted(
        &self,
        popular: &[(u64, u32)],
        quota: usize,
        filter: &Filter,
        pool: &mut Pool,
    ) {
        let admitted = popular.iter().filter(|&&(id, _)| {
            self.snap.locate(StoreId(id)).is_some()
                && filter.admits(id, || self.snap.attrs(StoreId(id)).unwrap_or(&[]))
        });
        for &(id, _) in admitted.take(quota) {
            pool.push(id, Source::Popular);
        }
    }

    /// The fresh pool ranked by taste (newest first for a user without one).
    fn fresh_by_taste(
        &self,
        user: &[f32],
        quota: usize,
        filter: &Filter,
        pool: &mut Pool,
    ) -> Result<()> {
        let mut ranked: Vec<(f32, usize, u64)> = Vec::with_capacity(self.fresh.len());
        let mut row = vec![0f32; self.snap.dim()];
        for (age, &(id, seg, r)) in self.fresh.iter().enumerate() {
            let ls = &self.snap.segments()[seg];
            if filter.admits(id, || ls.segment.attrs(r)) {
                ls.segment.read_vector(r, &mut row)?;
                ranked.push((dot(&row, user), age, id));
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, _, id) in ranked.iter().take(quota) {
            pool.push(id, Source::Fresh);
        }
        Ok(())
    }
}
