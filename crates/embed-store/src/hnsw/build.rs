//! Building the graph: level draws, neighbour selection by the diversity heuristic,
//! serial then batched parallel insertion, incremental updates onto a newer snapshot,
//! and the breadth-first renumbering that puts neighbours side by side.

use super::*;

/// `n` level draws, `floor(-ln(U) / ln(m))` capped at 30, from a seeded xorshift.
fn draw_levels(n: usize, m: usize, seed: u64) -> Vec<u8> {
    let ml = 1.0 / (m as f64).ln();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            ((-u.ln() * ml).floor() as usize).min(30) as u8
        })
        .collect()
}

/// Nodes inserted one by one before a parallel build starts batching.
const SERIAL_PREFIX: usize = 4096;
/// Largest batch of a parallel build. Nodes of a batch do not see each other, which
/// costs links inside dense clusters: on a 300k x 96 set of unequal clusters, batches
/// of 1,024 gave recall@10 0.986 at ef 32 against 0.990 for 256 and for a serial
/// build (hnswlib 0.991); the 1M x 64 build took 71 s with 256, 75 s with 1,024.
const MAX_BATCH: usize = 256;

/// The links planned for one node being inserted.
struct Plan {
    i: u32,
    level: usize,
    /// Chosen neighbours per level `0..=min(level, max_level)`.
    links: Vec<Vec<u32>>,
}

impl Hnsw {
    /// Build over every live item of `snap`.
    pub fn build(snap: &Snapshot, metric: Metric, params: HnswParams) -> Result<Self> {
        if params.m < 2 || params.ef_construction == 0 {
            return Err(Error::Query {
                message: format!("HNSW needs m >= 2 and ef_construction >= 1, got {params:?}"),
            });
        }
        let d = snap.dim();
        let live: Vec<(ItemId, usize, usize)> = snap.iter_live().collect();
        let n = live.len();
        let mut vectors = vec![0f32; n * d];
        for (i, &(_, s, r)) in live.iter().enumerate() {
            let v = &mut vectors[i * d..(i + 1) * d];
            snap.segments()[s].segment.read_vector(r, v)?;
            if metric == Metric::Cosine {
                normalize(v);
            }
        }
        let levels = draw_levels(n, params.m, params.seed);
        let m0 = 2 * params.m;
        let stride = 1 + m0 + d;
        let mut level0 = vec![0u32; n * stride];
        for (rec, v) in level0.chunks_exact_mut(stride).zip(vectors.chunks_exact(d)) {
            rec[1 + m0..].copy_from_slice(bytemuck::cast_slice(v));
        }
        drop(vectors);
        let mut upper_start = Vec::with_capacity(n + 1);
        let mut total = 0u32;
        for &l in &levels {
            upper_start.push(total);
            total += l as u32 * (1 + params.m as u32);
        }
        upper_start.push(total);
        let mut h = Self {
            dim: d,
            metric,
            m: params.m,
            m0,
            int8: None,
            ids: live.iter().map(|r| r.0.0).collect::<Vec<_>>().into(),
            rows: live
                .iter()
                .map(|&(_, s, r)| [s as u32, r as u32])
                .collect::<Vec<_>>()
                .into(),
            levels: levels.into(),
            level0: level0.into(),
            stride,
            upper: vec![0; total as usize].into(),
            upper_start: upper_start.into(),
            entry: 0,
            max_level: 0,
            built_from: (snap.generation().to_string(), snap.version()),
            segments: segment_names(snap),
        };
        h.insert_nodes(0, params.ef_construction);
        h.reorder();
        Ok(h)
    }

    /// Links nodes `from..len()` (their vectors, levels and empty records already in
    /// place) into the graph; from an empty graph (`from == 0`) the first node becomes
    /// the entry point.
    ///
    /// One thread: nodes one by one (hnswlib's order). More: after a serial prefix,
    /// batches of up to 1/32 of the graph so far, at most [`MAX_BATCH`] — each batch's
    /// neighbour searches run in parallel on the graph before the batch, the
    /// reverse-link updates in parallel per target node, then everything is written.
    /// Nodes of one batch do not see each other while searching; at ≤ 3% of the graph
    /// and at most [`MAX_BATCH`] nodes that costs little recall (measured in
    /// tests/hnsw.rs and at [`MAX_BATCH`]). The graph depends only on whether more than
    /// one thread is available, not on scheduling.
    fn insert_nodes(&mut self, from: usize, ef: usize) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let mut next = from;
        if next == 0 {
            self.entry = 0;
            self.max_level = self.levels[0] as usize;
            next = 1;
        }
        let parallel = rayon::current_num_threads() > 1;
        let mut scratch = Scratch::new(n);
        let mut found = Vec::new();
        while next < n {
            let b = if parallel && next >= SERIAL_PREFIX {
                (next / 32).clamp(1, MAX_BATCH).min(n - next)
            } else {
                1
            };
            let plans: Vec<Plan> = if b == 1 {
                vec![self.plan(next as u32, ef, &mut scratch, &mut found)]
            } else {
                let h = &*self;
                (next..next + b)
                    .into_par_iter()
                    .map_init(
                        || (Scratch::new(n), Vec::new()),
                        |(s, f), i| h.plan(i as u32, ef, s, f),
                    )
                    .collect()
            };
            self.apply(plans, parallel && b > 1);
            next += b;
        }
    }

    /// The index of `newer` — a later commit of the generation this index was built
    /// from — made by inserting the rows `newer` added (appends and upserts) into a copy
    /// of this graph, without a rebuild. Rows deleted or replaced since stay in the
    /// graph as routing nodes and are never returned (the search checks tombstones).
    /// `ef_construction` as for [`Hnsw::build`]; new nodes' levels are drawn from
    /// `seed` and their position.
    ///
    /// Fails with [`Error::Query`] when `newer` is another generation or an older
    /// commit, when a segment the index was built on is gone from `newer` (compaction
    /// merged it: rebuild then), or when the index is quantised (update the f32 index,
    /// then quantise).
    pub fn update(&self, newer: &Snapshot, ef_construction: usize, seed: u64) -> Result<Self> {
        let err = |message: String| Err(Error::Query { message });
        if newer.generation() != self.built_from.0 || newer.version() < self.built_from.1 {
            return err(format!(
                "the index is of generation {:?} at version {}, the snapshot {:?} at version \
                 {}: an index is updated to a later version of its own generation",
                self.built_from.0,
                self.built_from.1,
                newer.generation(),
                newer.version()
            ));
        }
        if self.int8.is_some() {
            return err("the index is quantised: update the f32 index, then quantise".into());
        }
        if ef_construction == 0 {
            return err("ef_construction must be at least 1".into());
        }
        let names = segment_names(newer);
        let position = |name: &str| names.iter().position(|n| n == name);
        let mut remap = Vec::with_capacity(self.segments.len());
        for name in &self.segments {
            match position(name) {
                Some(p) => remap.push(p as u32),
                None => {
                    return err(format!(
                        "segment {name} of the indexed version is gone from version {} \
                         (merged by compaction): rebuild the index",
                        newer.version()
                    ));
                }
            }
        }
        let (d, n_old) = (self.dim, self.len());
        let mut ids = self.ids.to_vec();
        let mut rows = Vec::with_capacity(self.len());
        for &[s, r] in self.rows.iter() {
            let Some(&s) = remap.get(s as usize) else {
                return err(format!("a node names segment {s} of {}", remap.len()));
            };
            rows.push([s, r]);
        }
        let mut level0 = self.level0.to_vec();
        let mut buf = vec![0f32; d];
        for (si, ls) in newer.segments().iter().enumerate() {
            if remap.contains(&(si as u32)) {
                continue;
            }
            for (r, &id) in ls.segment.ids().iter().enumerate() {
                if ls.tombstones.is_deleted(r) {
                    continue;
                }
                ls.segment.read_vector(r, &mut buf)?;
                if self.metric == Metric::Cosine {
                    normalize(&mut buf);
                }
                ids.push(id);
                rows.push([si as u32, r as u32]);
                let at = level0.len();
                level0.resize(at + self.stride, 0);
                level0[at + 1 + self.m0..].copy_from_slice(bytemuck::cast_slice(&buf));
            }
        }
        let n = ids.len();
        if u32::try_from(n).is_err() {
            return err(format!("{n} nodes exceed the index's 32-bit node ids"));
        }
        let mut levels = self.levels.to_vec();
        levels.extend(draw_levels(
            n - n_old,
            self.m,
            seed ^ (n_old as u64).rotate_left(32),
        ));
        let mut upper_start = self.upper_start.to_vec();
        let mut total = upper_start.last().copied().unwrap_or(0);
        for &l in &levels[n_old..] {
            total += l as u32 * (1 + self.m as u32);
            upper_start.push(total);
        }
        let mut upper = self.upper.to_vec();
        upper.resize(total as usize, 0);
        let mut h = Self {
            dim: d,
            metric: self.metric,
            m: self.m,
            m0: self.m0,
            int8: None,
            ids: ids.into(),
            rows: rows.into(),
            levels: levels.into(),
            level0: level0.into(),
            stride: self.stride,
            upper: upper.into(),
            upper_start: upper_start.into(),
            entry: self.entry,
            max_level: self.max_level,
            built_from: (newer.generation().to_string(), newer.version()),
            segments: names,
        };
        h.insert_nodes(n_old, ef_construction);
        h.reorder();
        Ok(h)
    }

    /// Keep up to `m` of `cands` (sorted nearest first): a candidate is kept when it is
    /// nearer to the base than to every one kept so far (the diversity heuristic).
    fn select(&self, cands: &[(f32, u32)], m: usize, out: &mut Vec<u32>) {
        out.clear();
        for &(d, c) in cands {
            if out.len() >= m {
                break;
            }
            let cv = self.vector(c);
            if out.iter().all(|&k| self.dist(cv, k) > d) {
                out.push(c);
            }
        }
    }

    /// The links node `i` gets on each level `0..=min(level, max_level)`, from searches
    /// on the current graph (read-only).
    fn plan(&self, i: u32, ef: usize, s: &mut Scratch, found: &mut Vec<(f32, u32)>) -> Plan {
        let level = self.levels[i as usize] as usize;
        let q = self.vector(i);
        let mut ep = self.descend(q, self.entry, self.max_level, level + 1);
        let top = level.min(self.max_level);
        let mut links = vec![Vec::new(); top + 1];
        for l in (0..=top).rev() {
            self.search_layer(q, ep, ef, l, s, None);
            found.clear();
            found.extend(s.results.drain().map(|Near(d, n)| (d, n)));
            found.sort_by(|a, b| a.0.total_cmp(&b.0));
            ep = found.first().map_or(ep, |f| f.1);
            self.select(found, self.m, &mut links[l]);
        }
        Plan { i, level, links }
    }

    /// Writes the planned nodes' links and adds each as a reverse link of the nodes it
    /// chose, pruning with the diversity heuristic where a list overflows.
    fn apply(&mut self, plans: Vec<Plan>, parallel: bool) {
        let mut rev: Vec<(u32, u8, u32)> = Vec::new();
        for p in &plans {
            for (l, ls) in p.links.iter().enumerate() {
                rev.extend(ls.iter().map(|&n| (n, l as u8, p.i)));
            }
        }
        // Stable sort: a node's new links keep the batch order (the serial order).
        rev.sort_by_key(|&(n, l, _)| (n, l));
        let groups: Vec<&[(u32, u8, u32)]> =
            rev.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let update = |g: &&[(u32, u8, u32)]| -> (u32, usize, Vec<u32>) {
            let (n, l) = (g[0].0, g[0].1 as usize);
            let cap = if l == 0 { self.m0 } else { self.m };
            let mut links: Vec<u32> = self.links(n, l).to_vec();
            if links.len() + g.len() <= cap {
                links.extend(g.iter().map(|x| x.2));
                return (n, l, links);
            }
            let nv = self.vector(n);
            let mut cands: Vec<(f32, u32)> = links.iter().map(|&k| (self.dist(nv, k), k)).collect();
            cands.extend(g.iter().map(|x| (self.dist(nv, x.2), x.2)));
            cands.sort_by(|a, b| a.0.total_cmp(&b.0));
            self.select(&cands, cap, &mut links);
            (n, l, links)
        };
        let updates: Vec<(u32, usize, Vec<u32>)> = if parallel {
            groups.par_iter().map(update).collect()
        } else {
            groups.iter().map(update).collect()
        };
        for p in &plans {
            for (l, ls) in p.links.iter().enumerate() {
                self.set_links(p.i, l, ls);
            }
        }
        for (n, l, links) in updates {
            self.set_links(n, l, &links);
        }
        for p in plans {
            if p.level > self.max_level {
                self.max_level = p.level;
                self.entry = p.i;
            }
        }
    }

    /// Renumbers the nodes in breadth-first order of the level-0 graph from the entry
    /// point (nodes it does not reach follow in their old order), so that a node's
    /// neighbours mostly lie in records near it: an expansion reads memory that is
    /// closer together (3–15% more queries/s at 1M nodes in insertion order,
    /// docs/benchmarks.md). Search results are unchanged — the same graph under new
    /// node numbers. [`Hnsw::build`] and [`Hnsw::update`] end with it.
    pub fn reorder(&mut self) {
        if !self.is_empty() {
            let order = self.bfs_order();
            self.renumber(&order);
        }
    }

    /// Gives node `order[new]` the number `new` (`order`: a permutation of the nodes).
    pub(super) fn renumber(&mut self, order: &[u32]) {
        let n = self.len();
        let mut new_of = vec![u32::MAX; n];
        for (new, &old) in order.iter().enumerate() {
            new_of[old as usize] = new as u32;
        }
        let map = |links: &mut [u32]| {
            let count = links[0] as usize;
            for l in &mut links[1..1 + count] {
                *l = new_of[*l as usize];
            }
        };
        let mut level0 = vec![0u32; n * self.stride];
        for (rec, &old) in level0.chunks_exact_mut(self.stride).zip(order) {
            let at = old as usize * self.stride;
            rec.copy_from_slice(&self.level0[at..at + self.stride]);
            map(&mut rec[..1 + self.m0]);
        }
        let rec = 1 + self.m;
        let mut upper = Vec::with_capacity(self.upper.len());
        let mut upper_start = Vec::with_capacity(n + 1);
        for &old in order {
            upper_start.push(upper.len() as u32);
            let (s, e) = (
                self.upper_start[old as usize] as usize,
                self.upper_start[old as usize + 1] as usize,
            );
            let at = upper.len();
            upper.extend_from_slice(&self.upper[s..e]);
            for r in upper[at..].chunks_exact_mut(rec) {
                map(r);
            }
        }
        upper_start.push(upper.len() as u32);
        /// Rows of `width` values of `v`, in `order`.
        fn permute<T: Copy>(v: &[T], width: usize, order: &[u32]) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len());
            for &old in order {
                out.extend_from_slice(&v[old as usize * width..(old as usize + 1) * width]);
            }
            out
        }
        self.ids = permute(&self.ids, 1, order).into();
        self.rows = permute(&self.rows, 1, order).into();
        self.levels = permute(&self.levels, 1, order).into();
        if let Some((codes, scales)) = &self.int8 {
            self.int8 = Some((
                permute(codes, self.dim, order).into(),
                permute(scales, 1, order).into(),
            ));
        }
        self.level0 = level0.into();
        self.upper = upper.into();
        self.upper_start = upper_start.into();
        self.entry = new_of[self.entry as usize];
    }

    /// Nodes in breadth-first order of level 0 from the entry point, then those not
    /// reached from it (in their current order), as `order[new] = old`.
    fn bfs_order(&self) -> Vec<u32> {
        let n = self.len();
        let mut placed = vec![false; n];
        let mut order: Vec<u32> = Vec::with_capacity(n);
        let mut start = self.entry;
        let mut rest = 0usize;
        loop {
            placed[start as usize] = true;
            order.push(start);
            let mut head = order.len() - 1;
            while head < order.len() {
                let c = order[head];
                head += 1;
                for &nb in self.links(c, 0) {
                    if !placed[nb as usize] {
                        placed[nb as usize] = true;
                        order.push(nb);
                    }
                }
            }
            while rest < n && placed[rest] {
                rest += 1;
            }
            if rest == n {
                break;
            }
            start = rest as u32;
        }
        order
    }
}
