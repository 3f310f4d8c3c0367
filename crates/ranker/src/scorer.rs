//! An optional small learned scorer: logistic regression over a candidate's score parts
//! and source, trained from interactions — for each user, the retrieved candidates
//! ([`crate::Recommender::candidates`]) labelled by whether the user later engaged with
//! them ([`crate::eval::scorer_examples`]).
//! Fitted by Newton's method (IRLS) with an L2 penalty: a handful of features, exact
//! and deterministic.

use crate::error::{Error, Result};
use crate::types::{ScoreParts, Source};

/// Number of features (bias excluded).
pub const N_FEATURES: usize = 6;

/// The features of a candidate: taste, interest, popularity, taste × interest, and
/// whether it came from an interest or from the taste embedding (popular and fresh are
/// the base).
pub fn features(parts: &ScoreParts, source: &Source) -> [f32; N_FEATURES] {
    let (from_interest, from_taste) = match source {
        Source::Interest { .. } => (1.0, 0.0),
        Source::Taste => (0.0, 1.0),
        Source::Popular | Source::Fresh => (0.0, 0.0),
    };
    [
        parts.taste,
        parts.interest,
        parts.popularity,
        parts.taste * parts.interest,
        from_interest,
        from_taste,
    ]
}

/// One labelled candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    /// Its features.
    pub features: [f32; N_FEATURES],
    /// Whether the user engaged with it.
    pub positive: bool,
}

/// Logistic regression weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedScorer {
    /// One weight per feature.
    pub weights: [f32; N_FEATURES],
    /// The intercept.
    pub bias: f32,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Solves the symmetric positive definite system `a x = b` (Cholesky).
fn solve_spd(
    a: &[[f64; N_FEATURES + 1]; N_FEATURES + 1],
    b: &[f64; N_FEATURES + 1],
) -> Option<[f64; N_FEATURES + 1]> {
    const M: usize = N_FEATURES + 1;
    let mut l = [[0f64; M]; M];
    for i in 0..M {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i][j] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    let mut y = [0f64; M];
    for i in 0..M {
        y[i] = (b[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = [0f64; M];
    for i in (0..M).rev() {
        x[i] = (y[i] - (i + 1..M).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    Some(x)
}

impl LearnedScorer {
    /// Fits the weights to `examples` by Newton's method on the L2-penalised
    /// log-likelihood (`l2` on the weights, not the bias), at most 50 iterations.
    pub fn fit(examples: &[Example], l2: f64) -> Result<Self> {
        let positives = examples.iter().filter(|e| e.positive).count();
        if positives == 0 || positives == examples.len() {
            return Err(Error::config(format!(
                "{} examples with {positives} positives: the scorer needs both labels",
                examples.len()
            )));
        }
        if !l2.is_finite() || l2 < 0.0 {
            return Err(Error::config(format!(
                "l2 = {l2}, expected a finite value >= 0"
            )));
        }
        if let Some(e) = examples
            .iter()
            .find(|e| e.features.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::config(format!(
                "a non-finite feature in {:?}",
                e.features
            )));
        }
        const M: usize = N_FEATURES + 1;
        let row = |e: &Example| {
            let mut x = [1f64; M];
            for (k, v) in e.features.iter().enumerate() {
                x[k] = *v as f64;
            }
            x
        };
        let mut w = [0f64; M];
        for _ in 0..50 {
            let mut grad = [0f64; M];
            let mut hess = [[0f64; M]; M];
            for e in examples {
                let x = row(e);
                let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
                let p = sigmoid(z);
                let y = if e.positive { 1.0 } else { 0.0 };
                let s = (p * (1.0 - p)).max(1e-12);
                for i in 0..M {
                    grad[i] += (p - y) * x[i];
                    for j in 0..M {
                        hess[i][j] += s * x[i] * x[j];
                    }
                }
            }
            for i in 0..N_FEATURES {
                grad[i] += l2 * w[i];
                hess[i][i] += l2;
            }
            // A tiny ridge keeps the Hessian definite when a feature is constant.
            for (i, h) in hess.iter_mut().enumerate() {
                h[i] += 1e-9;
            }
            let Some(step) = solve_spd(&hess, &grad) else {
                return Err(Error::config(
                    "the scorer's Hessian is singular: features are degenerate",
                ));
            };
            let mut moved = 0f64;
            for i in 0..M {
                w[i] -= step[i];
                moved = moved.max(step[i].abs());
            }
            if moved < 1e-8 {
                break;
            }
        }
        let mut weights = [0f32; N_FEATURES];
        for (k, v) in weights.iter_mut().enumerate() {
            *v = w[k] as f32;
        }
        Ok(Self {
            weights,
            bias: w[N_FEATURES] as f32,
        })
    }

    /// The logit of a candidate.
    pub fn logit(&self, parts: &ScoreParts, source: &Source) -> f32 {
        let f = features(parts, source);
        self.bias + f.iter().zip(&self.weights).map(|(a, b)| a * b).sum::<f32>()
    }

    /// The probability of engagement of a candidate.
    pub fn probability(&self, parts: &ScoreParts, source: &Source) -> f32 {
        sigmoid(self.logit(parts, source) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newton_recovers_a_separating_direction_and_refuses_one_label() {
        // Positives have high taste, negatives low; the other features are noise.
        let mut ex = Vec::new();
        for k in 0..400 {
            let t = (k % 20) as f32 / 20.0;
            let noise = ((k * 7919) % 13) as f32 / 13.0;
            ex.push(Example {
                features: [t, noise, 0.5, t * noise, 1.0, 0.0],
                positive: t + 0.1 * noise > 0.6,
            });
        }
        let s = LearnedScorer::fit(&ex, 1e-3).unwrap();
        assert!(s.weights[0] > 0.0, "{s:?}");
        let parts = |t: f32| ScoreParts {
            taste: t,
            interest: 0.5,
            popularity: 0.5,
            relevance: 0.0,
            redundancy: 0.0,
        };
        let src = Source::Taste;
        assert!(s.probability(&parts(0.9), &src) > s.probability(&parts(0.2), &src));
        let all_pos: Vec<Example> = ex
            .iter()
            .map(|e| Example {
                positive: true,
                ..*e
            })
            .collect();
        assert!(LearnedScorer::fit(&all_pos, 1e-3).is_err());
        assert!(LearnedScorer::fit(&ex, -1.0).is_err());
    }
}
