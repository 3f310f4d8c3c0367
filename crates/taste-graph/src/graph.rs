//! The user–item bipartite graph in CSR form, both directions, and its LightGCN
//! normalisation `D^-1/2 A D^-1/2`.

use crate::error::{Error, Result};
use crate::ids::{ItemId, UserId};
use crate::interactions::Interactions;
use crate::sparse::Csr;

/// An unweighted user–item graph: each user's items and each item's users, sorted and
/// without duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct BipartiteGraph {
    n_users: usize,
    n_items: usize,
    user_ptr: Vec<usize>,
    user_items: Vec<u32>,
    item_ptr: Vec<usize>,
    item_users: Vec<u32>,
}

/// Counting-sort CSR from (row, col) pairs; columns sorted and deduplicated per row.
fn build_csr(n_rows: usize, pairs: &[(u32, u32)]) -> (Vec<usize>, Vec<u32>) {
    let mut ptr = vec![0usize; n_rows + 1];
    for &(r, _) in pairs {
        ptr[r as usize + 1] += 1;
    }
    for r in 0..n_rows {
        ptr[r + 1] += ptr[r];
    }
    let mut fill = ptr.clone();
    let mut cols = vec![0u32; pairs.len()];
    for &(r, c) in pairs {
        cols[fill[r as usize]] = c;
        fill[r as usize] += 1;
    }
    // Sort and deduplicate each row, compacting in place.
    let mut out_ptr = vec![0usize; n_rows + 1];
    let mut w = 0;
    for r in 0..n_rows {
        let (s, e) = (ptr[r], ptr[r + 1]);
        cols[s..e].sort_unstable();
        let mut prev = None;
        for k in s..e {
            let c = cols[k];
            if prev != Some(c) {
                cols[w] = c;
                w += 1;
                prev = Some(c);
            }
        }
        out_ptr[r + 1] = w;
    }
    cols.truncate(w);
    (out_ptr, cols)
}

impl BipartiteGraph {
    /// Builds the graph from (user, item) edges; duplicates collapse into one edge.
    /// Every index must be below `n_users` / `n_items`.
    pub fn from_edges(
        n_users: usize,
        n_items: usize,
        edges: impl IntoIterator<Item = (UserId, ItemId)>,
    ) -> Result<Self> {
        if n_users > u32::MAX as usize || n_items > u32::MAX as usize {
            return Err(Error::Graph {
                message: format!("{n_users} users x {n_items} items exceeds u32 indices"),
            });
        }
        let mut ui = Vec::new();
        for (u, i) in edges {
            if u.index() >= n_users || i.index() >= n_items {
                return Err(Error::Graph {
                    message: format!(
                        "edge (user {}, item {}) out of range for {n_users} users and {n_items} items",
                        u.0, i.0
                    ),
                });
            }
            ui.push((u.0, i.0));
        }
        let (user_ptr, user_items) = build_csr(n_users, &ui);
        let iu: Vec<(u32, u32)> = (0..n_users)
            .flat_map(|u| {
                user_items[user_ptr[u]..user_ptr[u + 1]]
                    .iter()
                    .map(move |&i| (i, u as u32))
            })
            .collect();
        let (item_ptr, item_users) = build_csr(n_items, &iu);
        Ok(BipartiteGraph {
            n_users,
            n_items,
            user_ptr,
            user_items,
            item_ptr,
            item_users,
        })
    }

    /// The graph of an interaction collection's positive pairs (see
    /// [`Interactions::positive_pairs`]), sized to hold every user and item seen.
    pub fn from_interactions(interactions: &Interactions) -> Result<Self> {
        Self::from_edges(
            interactions.n_users(),
            interactions.n_items(),
            interactions.positive_pairs(),
        )
    }

    /// Number of users (including ones without edges).
    pub fn n_users(&self) -> usize {
        self.n_users
    }

    /// Number of items (including ones without edges).
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// Number of distinct (user, item) edges.
    pub fn n_edges(&self) -> usize {
        self.user_items.len()
    }

    /// A user's items, sorted ascending. Empty for an out-of-range user.
    pub fn items_of(&self, user: UserId) -> &[u32] {
        let u = user.index();
        if u >= self.n_users {
            return &[];
        }
        &self.user_items[self.user_ptr[u]..self.user_ptr[u + 1]]
    }

    /// An item's users, sorted ascending. Empty for an out-of-range item.
    pub fn users_of(&self, item: ItemId) -> &[u32] {
        let i = item.index();
        if i >= self.n_items {
            return &[];
        }
        &self.item_users[self.item_ptr[i]..self.item_ptr[i + 1]]
    }

    /// Whether the edge (user, item) exists.
    pub fn has_edge(&self, user: UserId, item: ItemId) -> bool {
        self.items_of(user).binary_search(&item.0).is_ok()
    }

    /// A node order with locality for the propagation (users `0..n_users`, items
    /// `n_users + i`): reverse Cuthill–McKee — breadth-first from a lowest-degree node
    /// of each component, neighbours by ascending degree, the whole order reversed.
    /// Rows processed one after another then gather mostly the same rows, which stay
    /// in the core's cache (about 20 % faster products on Gowalla).
    pub fn locality_order(&self) -> Vec<u32> {
        let nu = self.n_users;
        let n = nu + self.n_items;
        let neighbours = |v: usize| -> Box<dyn Iterator<Item = usize> + '_> {
            if v < nu {
                Box::new(
                    self.items_of(UserId(v as u32))
                        .iter()
                        .map(move |&i| nu + i as usize),
                )
            } else {
                Box::new(
                    self.users_of(ItemId((v - nu) as u32))
                        .iter()
                        .map(|&u| u as usize),
                )
            }
        };
        let degree = |v: usize| {
            if v < nu {
                self.user_ptr[v + 1] - self.user_ptr[v]
            } else {
                self.item_ptr[v - nu + 1] - self.item_ptr[v - nu]
            }
        };
        let mut starts: Vec<usize> = (0..n).collect();
        starts.sort_by_key(|&v| (degree(v), v));
        let mut seen = vec![false; n];
        let mut order: Vec<u32> = Vec::with_capacity(n);
        let mut next = Vec::new();
        for s in starts {
            if seen[s] {
                continue;
            }
            seen[s] = true;
            let mut head = order.len();
            order.push(s as u32);
            while head < order.len() {
                let v = order[head] as usize;
                head += 1;
                next.clear();
                next.extend(neighbours(v).filter(|&w| !seen[w]));
                next.sort_by_key(|&w| (degree(w), w));
                for &w in &next {
                    seen[w] = true;
                    order.push(w as u32);
                }
            }
        }
        order.reverse();
        order
    }

    /// The symmetric LightGCN propagation matrix over `n_users + n_items` nodes (users
    /// first, then items): `Â = D^-1/2 A D^-1/2` with `A = [[0, R], [Rᵀ, 0]]`;
    /// isolated nodes get an empty row.
    pub fn normalized_adjacency(&self) -> Csr {
        let nu = self.n_users;
        let n = nu + self.n_items;
        let inv_sqrt = |d: usize| if d == 0 { 0.0 } else { 1.0 / (d as f64).sqrt() };
        let du: Vec<f64> = (0..nu)
            .map(|u| inv_sqrt(self.user_ptr[u + 1] - self.user_ptr[u]))
            .collect();
        let di: Vec<f64> = (0..self.n_items)
            .map(|i| inv_sqrt(self.item_ptr[i + 1] - self.item_ptr[i]))
            .collect();
        let nnz = 2 * self.n_edges();
        let mut row_ptr = Vec::with_capacity(n + 1);
        let mut col = Vec::with_capacity(nnz);
        let mut val = Vec::with_capacity(nnz);
        row_ptr.push(0);
        for (u, &su) in du.iter().enumerate() {
            for &i in &self.user_items[self.user_ptr[u]..self.user_ptr[u + 1]] {
                col.push(nu as u32 + i);
                val.push((su * di[i as usize]) as f32);
            }
            row_ptr.push(col.len());
        }
        for (i, &si) in di.iter().enumerate() {
            for &u in &self.item_users[self.item_ptr[i]..self.item_ptr[i + 1]] {
                col.push(u);
                val.push((du[u as usize] * si) as f32);
            }
            row_ptr.push(col.len());
        }
        // Well formed by construction: sorted rows, columns < n, row_ptr monotone.
        Csr::from_parts_unchecked(n, n, row_ptr, col, val)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_sorted_deduplicated_and_mirrored() {
        let g = BipartiteGraph::from_edges(
            3,
            4,
            [(0, 3), (0, 1), (0, 3), (2, 1), (2, 0)].map(|(u, i)| (UserId(u), ItemId(i))),
        )
        .unwrap();
        assert_eq!(g.n_edges(), 4);
        assert_eq!(g.items_of(UserId(0)), &[1, 3]);
        assert_eq!(g.items_of(UserId(1)), &[] as &[u32]);
        assert_eq!(g.users_of(ItemId(1)), &[0, 2]);
        assert_eq!(g.users_of(ItemId(2)), &[] as &[u32]);
        assert!(g.has_edge(UserId(2), ItemId(0)));
        assert!(!g.has_edge(UserId(1), ItemId(0)));
        assert!(!g.has_edge(UserId(9), ItemId(0)));
    }

    #[test]
    fn out_of_range_edges_are_errors() {
        let e = BipartiteGraph::from_edges(2, 2, [(UserId(0), ItemId(2))]);
        assert!(matches!(e, Err(Error::Graph { .. })));
    }

    #[test]
    fn normalisation_is_symmetric_with_inverse_sqrt_degrees() {
        // user 0: items 0, 1; user 1: item 0. deg u0=2, u1=1, i0=2, i1=1, i2=0.
        let g = BipartiteGraph::from_edges(
            2,
            3,
            [(0, 0), (0, 1), (1, 0)].map(|(u, i)| (UserId(u), ItemId(i))),
        )
        .unwrap();
        let a = g.normalized_adjacency();
        let dense = a.to_dense();
        let n = 5;
        for r in 0..n {
            for c in 0..n {
                assert_eq!(dense[r * n + c], dense[c * n + r]);
            }
        }
        assert!((dense[2] - 0.5).abs() < 1e-7); // u0-i0: 1/sqrt(2*2)
        assert!((dense[3] - 1.0 / 2f32.sqrt()).abs() < 1e-7); // u0-i1: 1/sqrt(2*1)
        assert!((dense[n + 2] - 1.0 / 2f32.sqrt()).abs() < 1e-7); // u1-i0
        assert_eq!(a.row_range(4), 6..6); // isolated item 2: empty row
    }

    #[test]
    fn locality_order_is_a_permutation_grouping_components() {
        // two components: {u0, u1, i0, i1} and {u2, i2}, plus isolated item 3.
        let g = BipartiteGraph::from_edges(
            3,
            4,
            [(0, 0), (0, 1), (1, 1), (2, 2)].map(|(u, i)| (UserId(u), ItemId(i))),
        )
        .unwrap();
        let order = g.locality_order();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..7).collect::<Vec<u32>>());
        let pos = |v: u32| order.iter().position(|&x| x == v).unwrap();
        // each component occupies consecutive positions
        let comp = [pos(0), pos(1), pos(3), pos(4)];
        assert_eq!(comp.iter().max().unwrap() - comp.iter().min().unwrap(), 3);
        assert_eq!(pos(2).abs_diff(pos(5)), 1);
    }
}
