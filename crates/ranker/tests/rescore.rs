//! Re-scoring by the surgered model on the committed tiny Qwen3-VL checkpoint and its
//! PyTorch-made adapter: batched log-odds equal the model's own continuation scores.

mod common;

use std::sync::Arc;

use common::{content, model};
use embed_store::{GenerationSpec, ItemId as StoreId, RamDirectory, Snapshot, StorageType, Store};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec};
use ranker::pipeline::{PipelineOptions, build};
use ranker::rescore::{RescoreOptions, Rescorer};
use ranker::{RecommendOptions, Sources};
use taste_graph::{LightGcnConfig, UserId};
use vision_surgery::{Prompt, SurgeredModel};

#[test]
fn batched_log_odds_equal_the_models_continuation_scores() {
    let (_s, snap) = content(16);
    let reference = model();
    // the reference scores without the prefix cache the rescorer uses
    reference.text_model().prefix_cache().set_max_bytes(0);
    let candidates = [3u64, 0, 7, 12, 5];
    let context = [1u64, 2];
    let q = "A user saved <item>, <item>. Would they also save <item>? Answer yes or no.";
    // Multi-token answers (two passes) and single-token ones (one pass).
    for (yes, no) in [("yes", "no"), ("y", "n")] {
        let tok = reference.tokenizer().unwrap();
        let single =
            tok.encode_text(yes).unwrap().len() == 1 && tok.encode_text(no).unwrap().len() == 1;
        eprintln!("answers {yes:?}/{no:?}: single tokens {single}");
        check_answers(&reference, &snap, &context, &candidates, q, yes, no);
    }
}

/// The half-precision path of the re-scorer (item rows cast to the model's dtype, logits
/// back to f32) on the CPU; `cuda.rs` runs the same comparison on a GPU.
#[test]
fn half_precision_rescoring_tracks_f32_on_the_cpu() {
    common::rescoring_tracks_cpu_f32(&candle_core::Device::Cpu);
}

fn check_answers(
    reference: &SurgeredModel,
    snap: &Snapshot,
    context: &[u64],
    candidates: &[u64],
    q: &str,
    yes: &str,
    no: &str,
) {
    let mut want = Vec::new();
    for &c in candidates {
        let mut rows = Vec::new();
        for id in context.iter().chain([&c]) {
            rows.extend(snap.get(StoreId(*id)).unwrap());
        }
        let items =
            candle_core::Tensor::from_vec(rows, (3, 32), &candle_core::Device::Cpu).unwrap();
        let s = reference
            .score(&Prompt::user(q), Some(&items), &[yes, no])
            .unwrap();
        want.push(s[0].total - s[1].total);
    }
    for batch in [1, 3, 8] {
        let opts = RescoreOptions::new().batch(batch).answers(yes, no);
        let r = Rescorer::new(model(), snap.clone(), opts).unwrap();
        let got = r.log_odds(context, candidates).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "batch {batch}: {got:?} vs {want:?}");
        }
        // the instruction before the first item was run once, then reused
        let prefixes = r.model().text_model().prefix_cache().stats();
        let prefills = candidates.len().div_ceil(batch) as u64
            * if single_tokens(reference, yes, no) {
                1
            } else {
                2
            };
        assert_eq!(prefixes.lookups, prefills, "{prefixes:?}");
        assert_eq!(prefixes.hits, prefills - 1, "{prefixes:?}");
        assert!(prefixes.computed_tokens > 0, "{prefixes:?}");
        assert_eq!(
            prefixes.reused_tokens,
            prefixes.hits * prefixes.computed_tokens,
            "each later prefill reuses the whole prefix: {prefixes:?}"
        );
    }
    // Not all equal: the candidate's embedding matters.
    assert!(want.iter().any(|w| (w - want[0]).abs() > 1e-4), "{want:?}");
}

fn single_tokens(m: &SurgeredModel, yes: &str, no: &str) -> bool {
    let tok = m.tokenizer().unwrap();
    tok.encode_text(yes).unwrap().len() == 1 && tok.encode_text(no).unwrap().len() == 1
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (_s, snap) = content(16);
    let r = Rescorer::new(model(), snap.clone(), RescoreOptions::new()).unwrap();
    let err = r.log_odds(&[1], &[99]).unwrap_err();
    assert!(
        err.to_string()
            .contains("candidate item 99 has no content embedding"),
        "{err}"
    );
    for bad in [
        RescoreOptions::new().question("Would they save <item>?"),
        RescoreOptions::new().question("{context} <item> <item>"),
        RescoreOptions::new().batch(0),
        RescoreOptions::new().answers("yes", "yes"),
    ] {
        assert!(Rescorer::new(model(), snap.clone(), bad).is_err());
    }
    // Content of the wrong width for the adapter.
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("c16", 16, StorageType::F32))
        .unwrap();
    w.put_many("c16", &[StoreId(0)], &[0.5; 16], None).unwrap();
    w.commit().unwrap();
    drop(w);
    let err = Rescorer::new(
        model(),
        store.generation("c16").unwrap(),
        RescoreOptions::new(),
    );
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("reads 32-wide embeddings")
    );
}

#[test]
fn recommendations_are_rescored_with_the_users_interests_as_context() {
    let cat = Catalogue::generate(CatalogueSpec {
        styles: 4,
        items_per_style: 6,
        users: 30,
        events_per_user: 8,
        dim: 8,
        seed: 2,
    })
    .unwrap();
    let (graph, _) = cat.split(0.75).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let opts = PipelineOptions {
        lightgcn: LightGcnConfig::new()
            .dim(8)
            .layers(2)
            .batch_size(64)
            .lr(0.05)
            .seed(1),
        epochs: 10,
        ..PipelineOptions::default()
    };
    let (rec, _) = build(&graph, None, None, &store, &opts, |_, _| {}).unwrap();
    let (_s, snap) = content(cat.n_items());
    let r = Rescorer::new(model(), snap, RescoreOptions::new().batch(4)).unwrap();
    let user = UserId(3);
    let top = rec
        .recommend(
            user,
            &RecommendOptions::new()
                .k(6)
                .candidates(12)
                .sources(Sources::default()),
        )
        .unwrap();
    let rescored = r.rescore(&rec, user, &top).unwrap();
    assert_eq!(rescored.len(), top.len());
    assert!(rescored.windows(2).all(|w| w[0].log_odds >= w[1].log_odds));
    let context: Vec<u64> = rec
        .interests(user, None)
        .unwrap()
        .iter()
        .map(|(m, _)| *m)
        .collect();
    let direct = r
        .log_odds(&context, &[rescored[0].recommendation.item])
        .unwrap();
    assert!((direct[0] - rescored[0].log_odds).abs() < 1e-4);
}
