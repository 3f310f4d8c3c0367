//! The hand-written LightGCN gradient against central finite differences of an
//! independent dense f64 implementation of the loss.

use taste_graph::model::Triple;
use taste_graph::{BipartiteGraph, ItemId, LightGcn, UserId};

mod common;
use common::Lcg;

/// The reference model: dense `Â` in f64 over `n` nodes (`nu` users first), width `d`,
/// `k` layers.
struct DenseModel {
    a: Vec<f64>,
    n: usize,
    nu: usize,
    d: usize,
    k: usize,
}

/// The reference loss: explicit layer powers and layer mean, all in f64.
fn dense_loss(m: &DenseModel, ego: &[f64], batch: &[Triple], decay: f64) -> f64 {
    let DenseModel { ref a, n, nu, d, k } = *m;
    let mut fin = ego.to_vec();
    let mut cur = ego.to_vec();
    for _ in 0..k {
        let mut next = vec![0.0; n * d];
        for r in 0..n {
            for c in 0..n {
                let w = a[r * n + c];
                if w != 0.0 {
                    for j in 0..d {
                        next[r * d + j] += w * cur[c * d + j];
                    }
                }
            }
        }
        for (f, x) in fin.iter_mut().zip(&next) {
            *f += x;
        }
        cur = next;
    }
    for f in &mut fin {
        *f /= (k + 1) as f64;
    }
    let row = |m: &[f64], i: usize| m[i * d..(i + 1) * d].to_vec();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut bpr = 0.0;
    let mut sq = 0.0;
    for t in batch {
        let (u, p, q) = (t.user as usize, nu + t.pos as usize, nu + t.neg as usize);
        let x = dot(&row(&fin, u), &row(&fin, p)) - dot(&row(&fin, u), &row(&fin, q));
        bpr += (1.0 + (-x).exp()).ln();
        for i in [u, p, q] {
            sq += dot(&row(ego, i), &row(ego, i));
        }
    }
    let b = batch.len() as f64;
    bpr / b + decay * 0.5 * sq / b
}

fn check(layers: usize, seed: u64) {
    let (nu, ni, d) = (9usize, 11usize, 5usize);
    let mut rng = Lcg(seed);
    let mut edges = Vec::new();
    for u in 0..nu as u32 {
        for i in 0..ni as u32 {
            if rng.unit() < 0.3 {
                edges.push((UserId(u), ItemId(i)));
            }
        }
    }
    let g = BipartiteGraph::from_edges(nu, ni, edges).unwrap();
    let n = nu + ni;
    // Large-ish embeddings so the BPR gradient is far from zero.
    let ego: Vec<f32> = (0..n * d)
        .map(|_| (rng.unit() - 0.5) as f32 * 1.5)
        .collect();
    let model = LightGcn::from_embeddings(&g, layers, d, ego.clone()).unwrap();
    // Repeated users and items, and an item that is positive in one triple and negative
    // in another, to exercise accumulation.
    let batch = [
        Triple {
            user: 0,
            pos: 1,
            neg: 2,
        },
        Triple {
            user: 3,
            pos: 2,
            neg: 7,
        },
        Triple {
            user: 0,
            pos: 5,
            neg: 10,
        },
        Triple {
            user: 8,
            pos: 1,
            neg: 9,
        },
        Triple {
            user: 3,
            pos: 2,
            neg: 7,
        },
        // a caller's triple whose positive is its negative (a constant loss term)
        Triple {
            user: 6,
            pos: 4,
            neg: 4,
        },
    ];
    let decay = 0.05f32;
    let (loss, grad) = model.batch_loss_and_grad(&batch, decay).unwrap();

    let a: Vec<f64> = g
        .normalized_adjacency()
        .to_dense()
        .into_iter()
        .map(f64::from)
        .collect();
    let e64: Vec<f64> = ego.iter().map(|&x| x as f64).collect();
    let dense = DenseModel {
        a,
        n,
        nu,
        d,
        k: layers,
    };
    let f = |e: &[f64]| dense_loss(&dense, e, &batch, decay as f64);
    let reference = f(&e64);
    assert!(
        (loss.total() - reference).abs() < 1e-5,
        "K={layers}: loss {} vs dense f64 {reference}",
        loss.total()
    );
    let h = 1e-5;
    let mut worst = 0f64;
    let mut nonzero = 0;
    for p in 0..n * d {
        let mut plus = e64.clone();
        plus[p] += h;
        let mut minus = e64.clone();
        minus[p] -= h;
        let fd = (f(&plus) - f(&minus)) / (2.0 * h);
        let err = (grad[p] as f64 - fd).abs() / (1e-3 + fd.abs());
        worst = worst.max(err);
        if fd.abs() > 1e-4 {
            nonzero += 1;
        }
        assert!(
            err < 1e-3,
            "K={layers}: d loss / d ego[{p}] analytic {} vs finite difference {fd}",
            grad[p]
        );
    }
    // The check must not pass vacuously on an all-zero gradient.
    assert!(
        nonzero > n * d / 3,
        "K={layers}: only {nonzero} non-zero gradient entries"
    );
    eprintln!("K={layers}: worst relative error {worst:.2e}, {nonzero} non-zero entries");
}

#[test]
fn gradient_matches_finite_differences_for_0_to_4_layers() {
    for layers in 0..=4 {
        check(layers, 11 + layers as u64);
    }
}
