//! 3-D (t, h, w) position ids, computed like the reference `get_rope_index`.
//!
//! Text tokens advance all three rows together. A run of visual placeholder tokens
//! takes the next visual grid (t, h, w in *merged* tokens) and gets
//! `T = t_idx + cur`, `H = h_idx + cur`, `W = w_idx + cur` over the grid in t, h, w
//! order; afterwards `cur += max(h, w)`. With left padding, positions are computed
//! over the unmasked tokens only and padded slots stay 0.

use crate::error::{Error, Result};

/// The layout of one item's visual tokens, in merged (LLM) tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisualGrid {
    /// Temporal extent (1 for a still image or a precomputed embedding).
    pub t: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
}

impl VisualGrid {
    /// A 1 x h x w grid.
    pub fn still(h: usize, w: usize) -> Self {
        Self { t: 1, h, w }
    }

    /// The most square `h x w = k` grid with `h <= w`, how K soft tokens of an
    /// adapter are laid out unless its header says otherwise.
    pub fn for_tokens(k: usize) -> Self {
        let mut h = (k as f64).sqrt() as usize;
        while h > 1 && !k.is_multiple_of(h) {
            h -= 1;
        }
        let h = h.max(1);
        Self::still(h, k / h)
    }

    /// Number of placeholder tokens this grid covers.
    pub fn tokens(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// Position ids of a batch: shape (3, batch, seq), rows t, h, w.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Row-major (3, batch, seq) data.
    pub data: Vec<i64>,
}

impl Positions {
    /// Position of `(row, b, s)`.
    pub fn get(&self, row: usize, b: usize, s: usize) -> i64 {
        self.data[(row * self.batch + b) * self.seq + s]
    }

    /// Positions for a decode step of one token per sequence: `cache_len + delta_b` on all rows.
    pub fn decode_step(cache_len: usize, deltas: &[i64]) -> Self {
        let batch = deltas.len();
        let mut data = Vec::with_capacity(3 * batch);
        for _ in 0..3 {
            data.extend(deltas.iter().map(|d| cache_len as i64 + d));
        }
        Self {
            batch,
            seq: 1,
            data,
        }
    }

    /// Positions for `n` further tokens per sequence after `cache_len` cached ones.
    pub fn continuation(cache_len: usize, n: usize, deltas: &[i64]) -> Self {
        let batch = deltas.len();
        let mut data = Vec::with_capacity(3 * batch * n);
        for _ in 0..3 {
            for d in deltas {
                data.extend((0..n).map(|i| (cache_len + i) as i64 + d));
            }
        }
        Self {
            batch,
            seq: n,
            data,
        }
    }
}

/// Compute 3-D positions for one unpadded sequence. `is_visual(id)` marks placeholder
/// tokens; each maximal run of them consumes the next grid of `grids`.
/// Returns the (3, len) rows and `rope_delta = max + 1 - len`.
pub fn rope_index_one(
    ids: &[u32],
    is_visual: impl Fn(u32) -> bool,
    grids: &[VisualGrid],
) -> Result<([Vec<i64>; 3], i64)> {
    let n = ids.len();
    let mut rows = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    let mut cur: i64 = 0;
    let mut next_grid = 0usize;
    let mut i = 0usize;
    while i < n {
        let visual = is_visual(ids[i]);
        let mut j = i;
        while j < n && is_visual(ids[j]) == visual {
            j += 1;
        }
        let run = j - i;
        if !visual {
            for r in &mut rows {
                r.extend((0..run as i64).map(|k| cur + k));
            }
            cur += run as i64;
        } else {
            let g = grids.get(next_grid).ok_or_else(|| Error::Input {
                message: format!(
                    "visual run #{next_grid} at token {i} has no grid: only {} grids were given",
                    grids.len()
                ),
            })?;
            if g.tokens() != run {
                return Err(Error::Input {
                    message: format!(
                        "visual run #{next_grid} at token {i} has {run} placeholder tokens but its grid {}x{}x{} covers {}",
                        g.t,
                        g.h,
                        g.w,
                        g.tokens()
                    ),
                });
            }
            for t in 0..g.t {
                for h in 0..g.h {
                    for w in 0..g.w {
                        rows[0].push(cur + t as i64);
                        rows[1].push(cur + h as i64);
                        rows[2].push(cur + w as i64);
                    }
                }
            }
            cur += g.h.max(g.w) as i64;
            next_grid += 1;
        }
        i = j;
    }
    if next_grid != grids.len() {
        return Err(Error::Input {
            message: format!(
                "{} visual grids were given but the tokens hold {next_grid} visual runs",
                grids.len()
            ),
        });
    }
    let max = rows.iter().flatten().copied().max().unwrap_or(-1);
    Ok((rows, max + 1 - n as i64))
}

/// Compute positions for a left-padded batch: `ids[b]` are the real tokens of
/// sequence b, placed at the right end of a row of length `seq`.
/// Returns the positions and each sequence's rope delta (relative to `seq`).
pub fn rope_index_batch(
    ids: &[&[u32]],
    seq: usize,
    is_visual: impl Fn(u32) -> bool + Copy,
    grids: &[&[VisualGrid]],
) -> Result<(Positions, Vec<i64>)> {
    laid_out(ids, seq, is_visual, grids, |b, len| {
        let pad = seq.checked_sub(len).ok_or_else(|| Error::Input {
            message: format!("sequence {b} has {len} tokens, more than {seq}"),
        })?;
        // the reference measures the delta against the padded length
        Ok((0, pad, -(pad as i64)))
    })
}

/// Positions of the tokens after the first `offset` of each sequence (a cached shared
/// prefix), right-padded to `seq`: each sequence's positions are those of its whole
/// `ids[b]` (so the same as without the cache), from token `offset` on. Returns the
/// positions and each sequence's rope delta relative to `offset + seq` cached slots.
pub fn rope_index_after(
    ids: &[&[u32]],
    offset: usize,
    seq: usize,
    is_visual: impl Fn(u32) -> bool + Copy,
    grids: &[&[VisualGrid]],
) -> Result<(Positions, Vec<i64>)> {
    laid_out(ids, seq, is_visual, grids, |b, len| {
        let rest = len.checked_sub(offset).filter(|&r| r <= seq);
        let rest = rest.ok_or_else(|| Error::Input {
            message: format!(
                "sequence {b} has {len} tokens: not {offset} cached plus at most {seq} new"
            ),
        })?;
        Ok((offset, 0, -((seq - rest) as i64)))
    })
}

/// Positions of a batch laid out by `layout(b, len)` = (the first of sequence b's
/// tokens placed, the column it goes to, the shift of its rope delta): the rows of
/// [`rope_index_one`] over each whole sequence, copied into place.
fn laid_out(
    ids: &[&[u32]],
    seq: usize,
    is_visual: impl Fn(u32) -> bool + Copy,
    grids: &[&[VisualGrid]],
    layout: impl Fn(usize, usize) -> Result<(usize, usize, i64)>,
) -> Result<(Positions, Vec<i64>)> {
    let batch = ids.len();
    if grids.len() != batch {
        return Err(Error::Input {
            message: format!("{batch} sequences but {} grid lists", grids.len()),
        });
    }
    let mut data = vec![0i64; 3 * batch * seq];
    let mut deltas = Vec::with_capacity(batch);
    for (b, (seq_ids, seq_grids)) in ids.iter().zip(grids).enumerate() {
        let (from, at, shift) = layout(b, seq_ids.len())?;
        let (rows, delta) = rope_index_one(seq_ids, is_visual, seq_grids)?;
        for (r, row) in rows.iter().enumerate() {
            let start = (r * batch + b) * seq + at;
            data[start..start + row.len() - from].copy_from_slice(&row[from..]);
        }
        deltas.push(delta + shift);
    }
    Ok((Positions { batch, seq, data }, deltas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_worked_example_of_the_notes() {
        // 4 text tokens, a 3x4 merged grid, then 2 text tokens
        let mut ids = vec![1, 2, 3, 4];
        ids.extend([9; 12]);
        ids.extend([5, 6]);
        let (rows, delta) = rope_index_one(&ids, |t| t == 9, &[VisualGrid::still(3, 4)]).unwrap();
        assert!(rows[0][4..16].iter().all(|&p| p == 4));
        assert_eq!(&rows[1][4..16], &[4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6]);
        assert_eq!(&rows[2][4..8], &[4, 5, 6, 7]);
        assert_eq!(rows[0][16], 8);
        assert_eq!(delta, 10 - 18);
    }

    #[test]
    fn padded_batch_positions() {
        let a = [1u32, 9, 9, 2];
        let b = [3u32, 4];
        let g = [VisualGrid::still(1, 2)];
        let (p, d) = rope_index_batch(&[&a, &b], 4, |t| t == 9, &[&g, &[]]).unwrap();
        // a: text 0, visual (t=1,h=1,w=0..1) -> 1,1 / 1,1 / 1,2 ; cur=1+2=3 ; text 3
        assert_eq!(
            (0..4).map(|s| p.get(2, 0, s)).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            (0..4).map(|s| p.get(1, 0, s)).collect::<Vec<_>>(),
            vec![0, 1, 1, 3]
        );
        // b: padded twice
        assert_eq!(
            (0..4).map(|s| p.get(0, 1, s)).collect::<Vec<_>>(),
            vec![0, 0, 0, 1]
        );
        assert_eq!(d, vec![0, 2 - 4]);
        // the next token of b sits at position 2
        assert_eq!(Positions::decode_step(4, &d).get(0, 1, 0), 2);
    }

    #[test]
    fn grid_count_mismatch_is_an_error() {
        let ids = [1u32, 9, 9, 2];
        assert!(rope_index_one(&ids, |t| t == 9, &[]).is_err());
        assert!(rope_index_one(&ids, |t| t == 9, &[VisualGrid::still(2, 2)]).is_err());
        assert_eq!(VisualGrid::for_tokens(8), VisualGrid::still(2, 4));
        assert_eq!(VisualGrid::for_tokens(7), VisualGrid::still(1, 7));
    }
}
