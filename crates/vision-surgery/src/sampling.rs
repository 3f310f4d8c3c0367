//! Generation options and next-token sampling (greedy, temperature, top-k, top-p), with
//! repetition and presence penalties.

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token (lowest id on ties).
    Greedy,
    /// Sample from `softmax(logits / temperature)`, restricted by top-k then top-p.
    Sample {
        /// Softmax temperature, > 0.
        temperature: f32,
        /// Keep only the k most likely tokens.
        top_k: Option<usize>,
        /// Keep the smallest set of tokens whose probability reaches p (0 < p <= 1).
        top_p: Option<f32>,
        /// Seed of the random stream; the same seed gives the same output.
        seed: u64,
    },
}

/// Options of [`crate::SurgeredModel::generate`], built fluently.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Extra token ids that end generation.
    pub stop_tokens: Vec<u32>,
    /// Whether `<|im_end|>` and `<|endoftext|>` also end generation.
    pub default_stops: bool,
    /// Divides a positive logit (multiplies a negative one) of every token already in the
    /// prompt or the output, as the reference's `repetition_penalty`; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (the OpenAI and
    /// vLLM `presence_penalty`); 0 is off.
    pub presence_penalty: f32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            default_stops: true,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
        }
    }
}

impl GenerateOptions {
    /// Greedy decoding of at most 128 tokens, stopping at the end of the assistant turn.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the token budget.
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Greedy decoding.
    pub fn greedy(mut self) -> Self {
        self.sampling = Sampling::Greedy;
        self
    }

    /// Sample at `temperature` with `seed` (no top-k/top-p unless set after).
    pub fn sample(mut self, temperature: f32, seed: u64) -> Self {
        self.sampling = Sampling::Sample {
            temperature,
            top_k: None,
            top_p: None,
            seed,
        };
        self
    }

    /// Restrict sampling to the k most likely tokens (switches to sampling at T=1 if greedy).
    pub fn top_k(mut self, k: usize) -> Self {
        self.sampling = match self.sampling {
            Sampling::Sample {
                temperature,
                top_p,
                seed,
                ..
            } => Sampling::Sample {
                temperature,
                top_k: Some(k),
                top_p,
                seed,
            },
            Sampling::Greedy => Sampling::Sample {
                temperature: 1.0,
                top_k: Some(k),
                top_p: None,
                seed: 0,
            },
        };
        self
    }

    /// Nucleus sampling with mass `p` (switches to sampling at T=1 if greedy).
    pub fn top_p(mut self, p: f32) -> Self {
        self.sampling = match self.sampling {
            Sampling::Sample {
                temperature,
                top_k,
                seed,
                ..
            } => Sampling::Sample {
                temperature,
                top_k,
                top_p: Some(p),
                seed,
            },
            Sampling::Greedy => Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: Some(p),
                seed: 0,
            },
        };
        self
    }

    /// Add a stop token id.
    pub fn stop_token(mut self, id: u32) -> Self {
        self.stop_tokens.push(id);
        self
    }

    /// Set the repetition penalty (1 is off).
    pub fn repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }

    /// Set the presence penalty (0 is off).
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = p;
        self
    }

    /// Apply the penalties to one row of logits: `context` is every token so far (prompt
    /// and output), `generated` the output alone. Each distinct token is penalised once.
    pub fn penalize(&self, logits: &mut [f32], context: &[u32], generated: &[u32]) {
        if self.repetition_penalty != 1.0 {
            let p = self.repetition_penalty;
            for id in distinct(context) {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * p } else { *l / p };
                }
            }
        }
        if self.presence_penalty != 0.0 {
            for id in distinct(generated) {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= self.presence_penalty;
                }
            }
        }
    }

    /// Check every option, naming the first invalid one.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(Error::Options {
                option: "max_tokens",
                message: "must be > 0".into(),
            });
        }
        if let Some(&t) = self.stop_tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Options {
                option: "stop_tokens",
                message: format!("id {t} is outside the vocabulary (size {vocab})"),
            });
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::Options {
                option: "repetition_penalty",
                message: format!("must be finite and > 0, found {}", self.repetition_penalty),
            });
        }
        if !self.presence_penalty.is_finite() {
            return Err(Error::Options {
                option: "presence_penalty",
                message: format!("must be finite, found {}", self.presence_penalty),
            });
        }
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Options {
                    option: "temperature",
                    message: format!(
                        "must be finite and > 0, found {temperature} (use greedy for 0)"
                    ),
                });
            }
            if top_k == Some(0) {
                return Err(Error::Options {
                    option: "top_k",
                    message: "must be > 0".into(),
                });
            }
            if let Some(p) = top_p
                && !(p > 0.0 && p <= 1.0)
            {
                return Err(Error::Options {
                    option: "top_p",
                    message: format!("must be in (0, 1], found {p}"),
                });
            }
        }
        Ok(())
    }
}

/// Picks tokens from logits according to a [`Sampling`].
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: rand::rngs::StdRng,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler seeded from the options.
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            scratch: Vec::new(),
        }
    }

    /// Choose the next token from one row of logits.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling
        else {
            return argmax(logits);
        };
        let c = &mut self.scratch;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l / temperature, i as u32)),
        );
        if c.is_empty() {
            return 0;
        }
        // descending by logit, ascending id on ties
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if let Some(k) = top_k
            && k < c.len()
        {
            c.select_nth_unstable_by(k - 1, by_logit);
            c.truncate(k);
        }
        c.sort_unstable_by(by_logit);
        let max = c[0].0;
        let mut total = 0f64;
        for e in c.iter_mut() {
            e.0 = (e.0 - max).exp();
            total += e.0 as f64;
        }
        if let Some(p) = top_p {
            let mut acc = 0f64;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                acc += e.0 as f64 / total;
                if acc >= p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            total = c.iter().map(|e| e.0 as f64).sum();
        }
        let mut u = self.rng.random::<f64>() * total;
        for e in c.iter() {
            u -= e.0 as f64;
            if u <= 0.0 {
                return e.1;
            }
        }
        c[c.len() - 1].1
    }
}

/// The distinct ids of `ids`.
fn distinct(ids: &[u32]) -> Vec<u32> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Index of the largest value (lowest index on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best_v = x;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_top_p_and_seeds() {
        let logits = [0.0f32, 3.0, 1.0, 2.9, -1.0];
        assert_eq!(Sampler::new(Sampling::Greedy).next(&logits), 1);
        // top_k = 1 is greedy whatever the seed
        for seed in 0..20 {
            let mut s = Sampler::new(GenerateOptions::new().sample(5.0, seed).top_k(1).sampling);
            assert_eq!(s.next(&logits), 1);
        }
        // top_k = 2 only ever picks 1 or 3, and both show up
        let mut s = Sampler::new(GenerateOptions::new().sample(1.0, 3).top_k(2).sampling);
        let picks: Vec<u32> = (0..200).map(|_| s.next(&logits)).collect();
        assert!(picks.iter().all(|&p| p == 1 || p == 3));
        assert!(picks.contains(&1) && picks.contains(&3));
        // tiny top_p keeps only the best
        let mut s = Sampler::new(GenerateOptions::new().sample(1.0, 3).top_p(0.01).sampling);
        assert!((0..50).all(|_| s.next(&logits) == 1));
        // same seed, same stream
        let run = |seed| {
            let mut s = Sampler::new(GenerateOptions::new().sample(2.0, seed).sampling);
            (0..32).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn penalties_follow_the_reference_definitions() {
        let o = GenerateOptions::new().repetition_penalty(2.0);
        let mut row = [4.0f32, -4.0, 4.0, 1.0];
        // token 0 twice and token 1 in the context: each penalised once, by sign
        o.penalize(&mut row, &[0, 1, 0], &[]);
        assert_eq!(row, [2.0, -8.0, 4.0, 1.0]);
        let o = GenerateOptions::new().presence_penalty(1.5);
        let mut row = [4.0f32, -4.0, 4.0, 1.0];
        // presence counts only generated tokens, once each
        o.penalize(&mut row, &[0, 1, 2, 2], &[2, 2]);
        assert_eq!(row, [4.0, -4.0, 2.5, 1.0]);
        // ids beyond the row are ignored, defaults change nothing
        let mut row = [1.0f32, 2.0];
        GenerateOptions::new().penalize(&mut row, &[0, 1, 7], &[1, 9]);
        assert_eq!(row, [1.0, 2.0]);
        let e = GenerateOptions::new()
            .repetition_penalty(0.0)
            .validate(10)
            .unwrap_err();
        assert!(e.to_string().contains("repetition_penalty"), "{e}");
        let e = GenerateOptions::new()
            .presence_penalty(f32::NAN)
            .validate(10)
            .unwrap_err();
        assert!(e.to_string().contains("presence_penalty"), "{e}");
    }

    #[test]
    fn invalid_options_name_the_option() {
        let e = GenerateOptions::new()
            .sample(0.0, 1)
            .validate(10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("temperature"), "{e}");
        let e = GenerateOptions::new()
            .top_p(1.5)
            .validate(10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("top_p"), "{e}");
        let e = GenerateOptions::new()
            .stop_token(99)
            .validate(10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stop_tokens"), "{e}");
        let e = GenerateOptions::new()
            .max_tokens(0)
            .validate(10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_tokens"), "{e}");
    }
}
