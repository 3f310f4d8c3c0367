//! Shared by the integration tests: a seeded generator and random graphs drawn with it.
#![allow(dead_code)] // each test binary uses a part of it

use taste_graph::{BipartiteGraph, Interaction, InteractionKind, ItemId, Refresher, UserId};

/// Knuth's MMIX linear congruential generator; outputs the state's high 31 bits.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next 31-bit value.
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
    /// A standard normal value (Box–Muller, cosine branch).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// A graph of `users` × `items` with `edges` uniformly drawn (user, item) pairs (a
/// repeated pair is one edge), seeded by `seed`.
pub fn random_graph(users: usize, items: usize, edges: usize, seed: u64) -> BipartiteGraph {
    let mut rng = Lcg(seed);
    let e: Vec<(UserId, ItemId)> = (0..edges)
        .map(|_| {
            (
                UserId(rng.below(users as u64) as u32),
                ItemId(rng.below(items as u64) as u32),
            )
        })
        .collect();
    BipartiteGraph::from_edges(users, items, e).unwrap()
}

/// Every (user, item) edge of `graph`, user by user.
pub fn edges_of(graph: &BipartiteGraph) -> Vec<(UserId, ItemId)> {
    (0..graph.n_users() as u32)
        .flat_map(|u| {
            graph
                .items_of(UserId(u))
                .iter()
                .map(move |&i| (UserId(u), ItemId(i)))
        })
        .collect()
}

/// An event of weight 1 between dense ids.
pub fn ev(u: u32, i: u32, kind: InteractionKind, t: u64) -> Interaction {
    Interaction::new(UserId(u), ItemId(i), kind, t)
}

/// The first item `u` has no edge to in `g`.
pub fn first_non_edge(g: &BipartiteGraph, u: u32) -> u32 {
    (0..g.n_items() as u32)
        .find(|&i| !g.has_edge(UserId(u), ItemId(i)))
        .expect("a user without an edge to every item")
}

/// The refresher's pending events, collected.
pub fn pending(r: &Refresher) -> Vec<Interaction> {
    let out: Vec<Interaction> = r.pending().copied().collect();
    assert_eq!(out.len(), r.pending_len());
    // Every suffix reached by skipping blocks is the same as the one walked to.
    for from in [
        0,
        out.len() / 3,
        out.len() / 2,
        out.len().saturating_sub(1),
        out.len(),
    ] {
        let tail: Vec<Interaction> = r.pending_from(from).copied().collect();
        assert_eq!(tail, out[from..], "pending_from({from}) of {}", out.len());
    }
    out
}
