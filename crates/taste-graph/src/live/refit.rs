//! The per-event refit of a user's ego row ([`LiveConfig::refit`]): BPR steps against
//! the hardest of a few fresh unseen items, their rows prefetched before any is scored.

use super::*;

impl LiveModel {
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The configured BPR steps on `u`'s ego embedding (see [`LiveConfig::refit`]).
    pub(super) fn refit_user(&mut self, u: usize) {
        let (steps, lr, d) = (self.config.refit_steps, self.config.refit_lr, self.dim);
        let (n_pos, n_items) = (self.seen[u].len(), self.n_items());
        if steps == 0 || n_pos == 0 || n_pos >= n_items {
            return;
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        for _ in 0..steps {
            let r = self.next_random();
            let p = self.seen[u][(r % n_pos as u64) as usize] as usize;
            // Fresh candidates each step; the one the user scores highest now. All are
            // drawn (and their rows prefetched) before any is scored, so the draws'
            // unpredictable branches do not hold up the rows' loads.
            candidates.clear();
            for _ in 0..self.config.refit_negatives {
                let c = self.unseen_item(u);
                self.prefetch_item(c);
                candidates.push(c);
            }
            // At least one candidate: the configuration asks for 1..=1024.
            let Some((&first, rest)) = candidates.split_first() else {
                break;
            };
            let mut j = first;
            if !rest.is_empty() {
                let mut best = self.score(u, first);
                for &c in rest {
                    let sc = self.score(u, c);
                    if sc > best {
                        (j, best) = (c, sc);
                    }
                }
            }
            let (ep, ej) = (
                &self.item_final[p * d..(p + 1) * d],
                &self.item_final[j * d..(j + 1) * d],
            );
            let eu = &self.user_final[u * d..(u + 1) * d];
            let x: f32 = (0..d).map(|c| eu[c] * (ep[c] - ej[c])).sum();
            // d/dE0 of ln σ(x) = σ(−x) · (ego coefficient in e_u) · (e_p − e_j).
            let g = lr * (1.0 / (1.0 + x.exp())) * self.ego_coefficient(u) as f32;
            let ego = &mut self.user_ego[u * d..(u + 1) * d];
            for c in 0..d {
                ego[c] += g * (ep[c] - ej[c]);
            }
            self.refresh_user(u);
        }
        self.candidates = candidates;
    }

    /// Hints the CPU to fetch item `i`'s embedding row.
    #[inline(always)]
    fn prefetch_item(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let row = &self.item_final[i * self.dim..(i + 1) * self.dim];
            for k in (0..row.len()).step_by(16) {
                // SAFETY: a prefetch never faults, and `row[k]` is inside the
                // bounds-checked row.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        row[k..].as_ptr() as *const i8,
                        std::arch::x86_64::_MM_HINT_T0,
                    )
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// User `u`'s current score of item `i`.
    fn score(&self, u: usize, i: usize) -> f32 {
        let d = self.dim;
        let (eu, ei) = (
            &self.user_final[u * d..(u + 1) * d],
            &self.item_final[i * d..(i + 1) * d],
        );
        eu.iter().zip(ei).map(|(a, b)| a * b).sum()
    }

    /// An item `u` has not seen, drawn uniformly as the trainer's sampler draws
    /// negatives (up to 8 tries; the last draw is kept if all were seen).
    fn unseen_item(&mut self, u: usize) -> usize {
        let n_items = self.n_items() as u64;
        let mut c = (self.next_random() % n_items) as usize;
        for _ in 0..8 {
            if self.seen[u].binary_search(&(c as u32)).is_err() {
                break;
            }
            c = (self.next_random() % n_items) as usize;
        }
        c
    }
}
