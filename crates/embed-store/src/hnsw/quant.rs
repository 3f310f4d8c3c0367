//! int8 quantisation of the stored vectors (per-node scale), and the exact f32
//! distances that re-rank a quantised search.

use super::*;

impl Hnsw {
    /// Whether the graph is traversed on int8 codes (see [`Hnsw::quantize_int8`]).
    pub fn is_quantized(&self) -> bool {
        self.int8.is_some()
    }

    /// Replace the index's f32 vectors by int8 codes with one scale per node (about 4x
    /// less vector memory). Searches then walk the graph on the codes and rerank the
    /// `ef` candidates with exact distances on the snapshot's stored vectors.
    pub fn quantize_int8(&mut self) {
        if self.int8.is_some() {
            return;
        }
        let d = self.dim;
        let n = self.len();
        let links = 1 + self.m0;
        let mut codes = vec![0i8; n * d];
        let mut scales = Vec::with_capacity(n);
        let mut level0 = vec![0u32; n * links];
        for (i, (c, rec)) in codes
            .chunks_exact_mut(d)
            .zip(level0.chunks_exact_mut(links))
            .enumerate()
        {
            scales.push(crate::segment::quantize_int8(self.vector(i as u32), c));
            let at = i * self.stride;
            rec.copy_from_slice(&self.level0[at..at + links]);
        }
        self.level0 = level0.into();
        self.stride = links;
        self.int8 = Some((codes.into(), scales.into()));
    }

    /// [`Hnsw::dist`] on node `i`'s int8 codes (the index is quantised), inlined into
    /// its caller.
    #[inline(always)]
    pub(super) fn int8_dist(&self, q: &[f32], i: u32) -> f32 {
        let Some((codes, scales)) = &self.int8 else {
            return f32::INFINITY;
        };
        let (i, d) = (i as usize, self.dim);
        let (c, s) = (&codes[i * d..(i + 1) * d], scales[i]);
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => -s * crate::search::dot_i8(q, c),
            Metric::L2 => q
                .iter()
                .zip(c)
                .map(|(a, &b)| {
                    let e = a - s * b as f32;
                    e * e
                })
                .sum(),
        }
    }

    /// Exact distance of `q` to node `i`, from the snapshot's stored vector.
    pub(super) fn exact_dist(
        &self,
        segs: &[crate::store::LiveSegment],
        q: &[f32],
        i: u32,
        row: &mut Vec<f32>,
    ) -> Result<f32> {
        let [s, r] = self.rows[i as usize];
        row.resize(self.dim, 0.0);
        let seg = segs.get(s as usize).ok_or_else(|| Error::Query {
            message: format!(
                "the index names segment {s}, the snapshot has {}",
                segs.len()
            ),
        })?;
        seg.segment.read_vector(r as usize, row)?;
        if self.metric == Metric::Cosine {
            normalize(row);
        }
        Ok(f32_distance(self.metric, q, row))
    }

    /// Bytes of the vectors held by the index.
    pub fn vector_bytes(&self) -> usize {
        4 * (self.level0.len() - self.len() * (1 + self.m0))
            + self
                .int8
                .as_ref()
                .map_or(0, |(c, sc)| c.len() + 4 * sc.len())
    }
}
