//! Searching: the greedy descent through the upper levels, the best-first search of a
//! layer (a fast path fixed at compile time for each vector kind), and the public
//! [`Hnsw::search`] with filters.

use super::*;

impl Hnsw {
    /// Greedy walk from `ep` through levels `top` down to `bottom`: the nearest node
    /// found on `bottom` (`ep` itself when `top < bottom`).
    pub(super) fn descend(&self, q: &[f32], ep: u32, top: usize, bottom: usize) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
            return match self.int8 {
                Some(_) => unsafe { self.descend_avx2::<INT8>(q, ep, top, bottom) },
                None => unsafe { self.descend_avx2::<F32>(q, ep, top, bottom) },
            };
        }
        self.descend_with::<ANY>(q, ep, top, bottom)
    }

    /// [`Self::descend`] compiled for AVX2+FMA (the f32 or int8 distance inlined).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn descend_avx2<const KIND: u8>(
        &self,
        q: &[f32],
        ep: u32,
        top: usize,
        bottom: usize,
    ) -> u32 {
        self.descend_with::<KIND>(q, ep, top, bottom)
    }

    /// The greedy walk itself, distances by [`Hnsw::dist_as`]; neighbours'
    /// vectors are prefetched as in the level-0 walk.
    #[inline(always)]
    fn descend_with<const KIND: u8>(
        &self,
        q: &[f32],
        mut ep: u32,
        top: usize,
        bottom: usize,
    ) -> u32 {
        if top < bottom {
            return ep;
        }
        let mut best = self.dist_as::<KIND>(q, ep);
        for level in (bottom..=top).rev() {
            loop {
                let mut moved = false;
                self.for_each_prefetched(self.links(ep, level), |n| {
                    let d = self.dist_as::<KIND>(q, n);
                    if d < best {
                        best = d;
                        ep = n;
                        moved = true;
                    }
                });
                if !moved {
                    break;
                }
            }
        }
        ep
    }

    /// The distance of kind `KIND` ([`F32`], [`INT8`]: inlined into the AVX2-compiled
    /// walks, so it is computed in their own body with their instruction set and no
    /// per-distance branch — a closure passed in was compiled as a separate function;
    /// [`ANY`]: [`Hnsw::dist`], for the portable walks).
    #[inline(always)]
    fn dist_as<const KIND: u8>(&self, q: &[f32], i: u32) -> f32 {
        match KIND {
            F32 => self.f32_dist(q, i),
            INT8 => self.int8_dist(q, i),
            _ => self.dist(q, i),
        }
    }

    /// The distance of `q` to node `i`'s f32 vector, inlined into its caller (see
    /// [`Hnsw::dist`] for the convention).
    #[inline(always)]
    fn f32_dist(&self, q: &[f32], i: u32) -> f32 {
        let x = self.vector(i);
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => -crate::kernels::dot_body(q, x, true),
            Metric::L2 => crate::kernels::l2_body(q, x, true),
        }
    }

    /// The `ef` nearest admissible nodes on `level`, starting from `ep`, into `s.results`.
    pub(super) fn search_layer(
        &self,
        q: &[f32],
        ep: u32,
        ef: usize,
        level: usize,
        s: &mut Scratch,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
            return match self.int8 {
                Some(_) => unsafe { self.search_layer_avx2::<INT8>(q, ep, ef, level, s, admit) },
                None => unsafe { self.search_layer_avx2::<F32>(q, ep, ef, level, s, admit) },
            };
        }
        self.search_layer_with::<ANY>(q, ep, ef, level, s, admit);
    }

    /// [`Self::search_layer`] compiled for AVX2+FMA so that the (f32 or int8) distance
    /// is inlined into the walk (no dispatch per distance).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn search_layer_avx2<const KIND: u8>(
        &self,
        q: &[f32],
        ep: u32,
        ef: usize,
        level: usize,
        s: &mut Scratch,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) {
        self.search_layer_with::<KIND>(q, ep, ef, level, s, admit);
    }

    /// The walk itself, distances by [`Hnsw::dist_as`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn search_layer_with<const KIND: u8>(
        &self,
        q: &[f32],
        ep: u32,
        ef: usize,
        level: usize,
        s: &mut Scratch,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) {
        let filtered = admit.is_some();
        let admit = |i: u32| admit.is_none_or(|f| f(i));
        s.reset(self.len());
        s.visit(ep);
        let d0 = self.dist_as::<KIND>(q, ep);
        s.candidates.push(Far(d0, ep));
        let mut bound = f32::INFINITY;
        if admit(ep) {
            s.results.push(Near(d0, ep));
            bound = d0;
        }
        while let Some(Far(d, c)) = s.candidates.pop() {
            if d > bound && (s.results.len() >= ef || !filtered) {
                break;
            }
            // Mark the unvisited neighbours first (rows already visited are never
            // fetched), then walk them with the vector loads a few nodes ahead of the
            // distances: the walk is bound by fetching rows from memory, not arithmetic.
            let mut fresh = std::mem::take(&mut s.fresh);
            fresh.clear();
            for &n in self.links(c, level) {
                if s.visit(n) {
                    fresh.push(n);
                }
            }
            self.for_each_prefetched(&fresh, |n| {
                let dn = self.dist_as::<KIND>(q, n);
                if s.results.len() < ef || dn < bound {
                    s.candidates.push(Far(dn, n));
                    if admit(n) {
                        s.results.push(Near(dn, n));
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                        bound = s.results.peek().map_or(f32::INFINITY, |t| t.0);
                    }
                }
            });
            s.fresh = fresh;
            // The next node to expand: its links are read first thing next round.
            if let (0, Some(&Far(_, next))) = (level, s.candidates.peek()) {
                self.prefetch_links(next);
            }
        }
    }

    /// The `k` nearest admissible items to `query`, exploring `ef` candidates (≥ k).
    /// Scores follow [`Snapshot::search`]'s convention (larger is better).
    pub fn search(
        &self,
        snap: &Snapshot,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &Filter,
        scratch: &mut Scratch,
    ) -> Result<Vec<Hit>> {
        if query.len() != self.dim {
            return Err(Error::Query {
                message: format!(
                    "query has {} values, the index's dim is {}",
                    query.len(),
                    self.dim
                ),
            });
        }
        if (snap.generation(), snap.version()) != (self.built_from.0.as_str(), self.built_from.1) {
            return Err(Error::Query {
                message: format!(
                    "the index was built from generation {:?} at version {}, the snapshot is {:?} at version {}",
                    self.built_from.0,
                    self.built_from.1,
                    snap.generation(),
                    snap.version()
                ),
            });
        }
        crate::search::check_k("k", k)?;
        crate::search::check_k("ef", ef)?;
        crate::search::check_finite(query)?;
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let mut q = query.to_vec();
        if self.metric == Metric::Cosine {
            normalize(&mut q);
        }
        let segs = snap.segments();
        let filtered = !filter.exclude_sorted.is_empty() || filter.attrs.is_some();
        let admit = |i: u32| {
            let [s, r] = self.rows[i as usize];
            let Some(ls) = segs.get(s as usize) else {
                return false;
            };
            !ls.tombstones.is_deleted(r as usize)
                && filter.admits(self.ids[i as usize], || ls.segment.attrs(r as usize))
        };
        let ep = self.descend(&q, self.entry, self.max_level, 1);
        let any_deleted = snap.segments().iter().any(|s| s.tombstones.count() > 0);
        let admit: Option<&dyn Fn(u32) -> bool> = (filtered || any_deleted).then_some(&admit);
        self.search_layer(&q, ep, ef.max(k), 0, scratch, admit);
        if self.int8.is_some() {
            // rerank the ef candidates found on the codes with exact distances
            let Scratch {
                results,
                row,
                reranked,
                ..
            } = scratch;
            reranked.clear();
            for Near(_, n) in results.drain() {
                reranked.push((self.exact_dist(segs, &q, n, row)?, n));
            }
            reranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            reranked.truncate(k);
            let mut out: Vec<Hit> = reranked
                .iter()
                .map(|&(d, n)| Hit {
                    id: ItemId(self.ids[n as usize]),
                    score: -d,
                })
                .collect();
            out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            return Ok(out);
        }
        let mut out: Vec<Hit> = scratch
            .results
            .drain()
            .map(|Near(d, n)| Hit {
                id: ItemId(self.ids[n as usize]),
                score: -d,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        out.truncate(k);
        Ok(out)
    }
}
