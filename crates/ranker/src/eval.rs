//! Offline evaluation of ranking variants on a held-out split: Recall@K and NDCG@K
//! (binary relevance, as the LightGCN reference code), intra-list diversity (mean
//! pairwise `1 − cos` of each list's item vectors) and catalogue coverage (distinct
//! items recommended to anyone / items in the generation). Train items are excluded by
//! the recommender itself (`exclude_seen`).

use std::collections::HashSet;
use std::time::Instant;

use embed_store::ItemId as StoreId;
use rayon::prelude::*;
use taste_graph::{BipartiteGraph, UserId};

use crate::error::{Error, Result};
use crate::mmr::intra_list_diversity;
use crate::options::{RecommendOptions, Relevance, Sources};
use crate::recommender::Recommender;
use crate::scorer::{Example, features};

/// A named set of options to evaluate.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Name in the table.
    pub name: String,
    /// The request options (its `k` is overridden by the evaluation's).
    pub options: RecommendOptions,
}

/// The variants of the ranker issue's table: pure popularity (the same list for
/// everyone), the popular pool re-ranked by the user's taste, a single taste embedding,
/// several interests, and several interests with MMR (relevance only for all but the
/// last).
pub fn standard_variants() -> Vec<Variant> {
    let plain = || RecommendOptions::new().lambda(1.0);
    vec![
        Variant {
            name: "popularity".into(),
            options: plain()
                .sources(Sources::popular_only())
                .relevance(Relevance::Popularity),
        },
        Variant {
            name: "popular pool, taste-ranked".into(),
            options: plain().sources(Sources::popular_only()),
        },
        Variant {
            name: "single embedding".into(),
            options: plain().sources(Sources::taste_only()).interest_slack(0.0),
        },
        Variant {
            name: "multi-interest".into(),
            options: plain().sources(Sources::interests_only()),
        },
        Variant {
            name: "multi-interest + MMR".into(),
            options: RecommendOptions::new().sources(Sources::interests_only()),
        },
    ]
}

/// The standard variants' last one with relevance from a learned scorer.
pub fn learned_variant(scorer: std::sync::Arc<crate::scorer::LearnedScorer>) -> Variant {
    Variant {
        name: "multi-interest + MMR + learned scorer".into(),
        options: RecommendOptions::new()
            .sources(Sources::interests_only())
            .scorer(scorer),
    }
}

/// Splits each user's items: every `every`-th (by position in the user's sorted item
/// list, from the `every`-th) goes to the second graph, e.g. a validation set for
/// fitting a [`crate::scorer::LearnedScorer`] without touching the test set.
pub fn split_every(
    graph: &BipartiteGraph,
    every: usize,
) -> Result<(BipartiteGraph, BipartiteGraph)> {
    if every < 2 {
        return Err(Error::config(format!(
            "split every = {every}, expected at least 2"
        )));
    }
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for u in 0..graph.n_users() as u32 {
        for (k, &i) in graph.items_of(UserId(u)).iter().enumerate() {
            let e = (UserId(u), taste_graph::ItemId(i));
            if (k + 1).is_multiple_of(every) {
                held.push(e);
            } else {
                keep.push(e);
            }
        }
    }
    let (nu, ni) = (graph.n_users(), graph.n_items());
    Ok((
        BipartiteGraph::from_edges(nu, ni, keep)?,
        BipartiteGraph::from_edges(nu, ni, held)?,
    ))
}

/// One row of the evaluation table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The variant's name.
    pub name: String,
    /// Mean Recall@K over evaluated users.
    pub recall: f64,
    /// Mean NDCG@K.
    pub ndcg: f64,
    /// Mean intra-list diversity.
    pub diversity: f64,
    /// Distinct recommended items / items in the generation.
    pub coverage: f64,
    /// Users evaluated.
    pub users: usize,
    /// Wall-clock seconds for the variant.
    pub seconds: f64,
}

/// Evaluates each variant on the users of `test` with at least one held-out item
/// (`max_users`: the first that many of them), `k` results each. `test` uses the
/// taste graph's dense item ids.
pub fn evaluate(
    rec: &Recommender,
    test: &BipartiteGraph,
    variants: &[Variant],
    k: usize,
    max_users: Option<usize>,
) -> Result<Vec<Row>> {
    if k == 0 {
        return Err(Error::config(
            "evaluation cut-off k = 0, expected at least 1",
        ));
    }
    let users: Vec<u32> = (0..test.n_users() as u32)
        .filter(|&u| !test.items_of(UserId(u)).is_empty() && (u as usize) < rec.n_users())
        .take(max_users.unwrap_or(usize::MAX))
        .collect();
    let dim = rec.snapshot().dim();
    let n_items = rec.snapshot().len().max(1);
    let mut rows = Vec::with_capacity(variants.len());
    for v in variants {
        let opts = v
            .options
            .clone()
            .k(k)
            .candidates(v.options.candidates.max(k));
        let t = Instant::now();
        let per_user: Vec<(f64, f64, f64, Vec<u64>)> = users
            .par_iter()
            .map(|&u| -> Result<(f64, f64, f64, Vec<u64>)> {
                let recs = rec.recommend(UserId(u), &opts)?;
                let truth = test.items_of(UserId(u));
                let ids: Vec<u64> = recs.iter().map(|r| r.item).collect();
                let mut dcg = 0.0;
                let mut hits = 0usize;
                for (rank, &ext) in ids.iter().enumerate() {
                    let hit = rec
                        .dense_id(ext)
                        .is_some_and(|d| truth.binary_search(&d.0).is_ok());
                    if hit {
                        hits += 1;
                        dcg += 1.0 / (rank as f64 + 2.0).log2();
                    }
                }
                let ideal: f64 = (0..truth.len().min(k))
                    .map(|r| 1.0 / (r as f64 + 2.0).log2())
                    .sum();
                let store_ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
                let mut vecs = vec![0f32; ids.len() * dim];
                rec.snapshot().get_many(&store_ids, &mut vecs)?;
                let ild = intra_list_diversity(&vecs, dim) as f64;
                Ok((hits as f64 / truth.len() as f64, dcg / ideal, ild, ids))
            })
            .collect::<Result<_>>()?;
        let n = per_user.len().max(1) as f64;
        let mut seen = HashSet::new();
        for (_, _, _, ids) in &per_user {
            seen.extend(ids.iter().copied());
        }
        rows.push(Row {
            name: v.name.clone(),
            recall: per_user.iter().map(|x| x.0).sum::<f64>() / n,
            ndcg: per_user.iter().map(|x| x.1).sum::<f64>() / n,
            diversity: per_user.iter().map(|x| x.2).sum::<f64>() / n,
            coverage: seen.len() as f64 / n_items as f64,
            users: per_user.len(),
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row], k: usize) -> String {
    let mut s = format!(
        "| variant | Recall@{k} | NDCG@{k} | intra-list diversity | coverage | users | s |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {:.4} | {:.4} | {:.3} | {:.3} | {} | {:.1} |\n",
            r.name, r.recall, r.ndcg, r.diversity, r.coverage, r.users, r.seconds
        );
    }
    s
}

/// Labelled candidates: for each user with items in `engaged` (at most `max_users`),
/// the candidates `rec` retrieves under `opts` (without a scorer), positive when the
/// user engaged with the item. `engaged` uses the taste graph's dense item ids.
pub fn scorer_examples(
    rec: &Recommender,
    engaged: &BipartiteGraph,
    opts: &RecommendOptions,
    max_users: usize,
) -> Result<Vec<Example>> {
    let mut opts = opts.clone();
    opts.scorer = None;
    let mut out = Vec::new();
    let users = (0..engaged.n_users().min(rec.n_users()) as u32)
        .filter(|&u| !engaged.items_of(UserId(u)).is_empty())
        .take(max_users);
    for u in users {
        let truth = engaged.items_of(UserId(u));
        for c in rec.candidates(UserId(u), &opts)? {
            let positive = rec
                .dense_id(c.item)
                .is_some_and(|d| truth.binary_search(&d.0).is_ok());
            out.push(Example {
                features: features(&c.parts, &c.source),
                positive,
            });
        }
    }
    Ok(out)
}
