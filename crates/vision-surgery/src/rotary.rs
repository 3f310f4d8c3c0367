//! Interleaved multimodal rotary embedding (Qwen3VLTextRotaryEmbedding).
//!
//! `inv_freq[j] = theta^(-2j/hd)` for `j < hd/2`. Frequency j takes its position from
//! row H when `j % 3 == 1 && j < 3 * sec[1]`, from row W when `j % 3 == 2 && j < 3 * sec[2]`,
//! and from row T otherwise. The rotation is NeoX style (halves, not adjacent pairs).

use candle_core::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::error::Result;
use crate::position::Positions;

/// Precomputed frequencies and their row assignment.
#[derive(Debug, Clone)]
pub struct MRope {
    inv_freq: Vec<f32>,
    row: Vec<usize>,
}

impl MRope {
    /// Frequencies for the decoder described by `cfg`.
    pub fn new(cfg: &TextConfig) -> Self {
        let half = cfg.head_dim / 2;
        let base = cfg.rope.rope_theta as f32;
        let inv_freq = (0..half)
            .map(|j| 1.0f32 / base.powf((2 * j) as f32 / cfg.head_dim as f32))
            .collect();
        let [_, sh, sw] = cfg.rope.mrope_section;
        let row = (0..half)
            .map(|j| {
                if j % 3 == 1 && j < 3 * sh {
                    1
                } else if j % 3 == 2 && j < 3 * sw {
                    2
                } else {
                    0
                }
            })
            .collect();
        Self { inv_freq, row }
    }

    /// `cos` and `sin` of shape (batch, seq, hd/2) for `pos`, in `dtype` on `device`.
    pub fn cos_sin(
        &self,
        pos: &Positions,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let n = pos.batch * pos.seq;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for b in 0..pos.batch {
            for s in 0..pos.seq {
                let p = [pos.get(0, b, s), pos.get(1, b, s), pos.get(2, b, s)];
                for (f, &r) in self.inv_freq.iter().zip(&self.row) {
                    let a = p[r] as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape = (pos.batch, pos.seq, half);
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeParameters;

    fn cfg(hd: usize, sec: [usize; 3]) -> TextConfig {
        TextConfig {
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: hd,
            rms_norm_eps: 1e-6,
            attention_bias: false,
            max_position_embeddings: 64,
            rope: RopeParameters {
                rope_theta: 5e6,
                mrope_section: sec,
            },
            moe: None,
        }
    }

    #[test]
    fn real_sections_give_the_documented_layout() {
        let m = MRope::new(&cfg(128, [24, 20, 20]));
        let rows = |r: usize| (0..64).filter(|&j| m.row[j] == r).collect::<Vec<_>>();
        let mut t: Vec<usize> = (0..58).step_by(3).collect();
        t.extend(60..64);
        assert_eq!(rows(0), t);
        assert_eq!(rows(1), (1..59).step_by(3).collect::<Vec<_>>());
        assert_eq!(rows(2), (2..60).step_by(3).collect::<Vec<_>>());
    }
}
