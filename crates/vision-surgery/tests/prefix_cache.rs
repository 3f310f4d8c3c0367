//! The prefix cache: a batch whose prompts share leading text gives the logits, deltas
//! and cache a plain prefill gives (so decoding continues the same), whether the prefix
//! is computed, reused whole or reused in part; the counters say which.

mod common;

use candle_core::{DType, IndexOp, Tensor};
use common::{items, max_abs_diff};
use vision_surgery::model::{LogitsScope, SequenceInput};
use vision_surgery::{Prompt, SurgeredModel};

/// Fixture `fixture` with an adapter of up to 2 DeepStack levels (as many as it has).
fn model(fixture: &str) -> SurgeredModel {
    let config = common::fixture_model(fixture).join("config.json");
    let levels = vision_surgery::config::Qwen3VlConfig::from_file(&config)
        .unwrap()
        .deepstack_levels;
    common::model_with_adapter(fixture, levels.min(2))
}

const INSTRUCTION: &str = "You rank pictures for a visual discovery feed. Answer yes or no.";

/// Prompts that share the system turn and the instruction, then 1..=3 items each and a
/// question of its own length.
fn prompts(m: &SurgeredModel, seeds: &[u64]) -> Vec<SequenceInput> {
    seeds
        .iter()
        .map(|&seed| {
            let n = 1 + (seed as usize % 3);
            let marks = vec!["<item>"; n].join(" and ");
            let tail = "really ".repeat(seed as usize % 4);
            let p = Prompt::user(format!("The user saved {marks}. Is it {tail}a match?"))
                .with_system(INSTRUCTION);
            m.prepare(&p, Some(&items(n, seed))).unwrap()
        })
        .collect()
}

/// Logits of `scope`, the deltas, and the next step's logits after `next` per
/// sequence, one sequence at a time through the plain prefill.
fn one_by_one(
    m: &SurgeredModel,
    seqs: &[SequenceInput],
    scope: LogitsScope,
    next: u32,
) -> Vec<(Tensor, Tensor)> {
    let tm = m.text_model();
    seqs.iter()
        .map(|q| {
            let mut c = tm.new_cache(q.ids.len() + 1);
            let pre = tm.prefill(std::slice::from_ref(q), &mut c, scope).unwrap();
            let step = tm
                .extend(&[vec![next]], &pre.deltas, &mut c, LogitsScope::Last)
                .unwrap();
            (pre.logits.i(0).unwrap(), step.i(0).unwrap())
        })
        .collect()
}

fn check_batch(m: &SurgeredModel, seqs: &[SequenceInput], scope: LogitsScope, tol: f32) -> usize {
    let tm = m.text_model();
    let want = one_by_one(m, seqs, scope, 17);
    let mut cache = tm.new_cache(8);
    let pre = tm.prefill_cached(seqs, &mut cache, scope).unwrap();
    assert_eq!(pre.padding, vec![0; seqs.len()]);
    let next = vec![vec![17u32]; seqs.len()];
    let step = tm
        .extend(&next, &pre.deltas, &mut cache, LogitsScope::Last)
        .unwrap();
    for (b, (logits, next)) in want.iter().enumerate() {
        let got = pre.logits.i(b).unwrap();
        let d = max_abs_diff(&got, logits);
        assert!(d <= tol, "sequence {b}: prefill logits differ by {d}");
        let d = max_abs_diff(&step.i(b).unwrap(), next);
        assert!(
            d <= tol,
            "sequence {b}: the next step's logits differ by {d}"
        );
    }
    pre.reused
}

#[test]
fn a_cached_prefix_gives_what_the_plain_prefill_gives() {
    let m = model("tiny-s0");
    let tm = m.text_model();
    let seqs = prompts(&m, &[1, 2, 3, 6]);
    let shared = seqs[0]
        .ids
        .iter()
        .take_while(|&&t| !tm.is_placeholder(t))
        .count();

    // first batch: the prefix is computed once and kept
    let reused = check_batch(&m, &seqs, LogitsScope::Last, 1e-5);
    assert_eq!(reused, shared, "the text before the first item is shared");
    let s = tm.prefix_cache().stats();
    assert_eq!((s.lookups, s.hits, s.entries), (1, 0, 1));
    assert_eq!(s.computed_tokens, shared as u64);

    // the next request reuses it whole, with the yes/no tail scope too
    let reused = check_batch(&m, &prompts(&m, &[4, 5]), LogitsScope::Tail(2), 1e-5);
    assert_eq!(reused, shared);
    let s = tm.prefix_cache().stats();
    assert_eq!((s.lookups, s.hits), (2, 1));
    assert_eq!(s.computed_tokens, shared as u64, "nothing recomputed");
    assert_eq!(s.reused_tokens, shared as u64);
}

#[test]
fn a_prefix_is_reused_in_part_and_a_text_prompt_keeps_its_tail() {
    let m = model("tiny-s0");
    let tm = m.text_model();
    // a text-only prompt: everything but the scored last token is prefix
    let a = m
        .prepare(&Prompt::user("tell me about red shoes"), None)
        .unwrap();
    check_batch(&m, std::slice::from_ref(&a), LogitsScope::Last, 1e-5);
    assert_eq!(
        tm.prefix_cache().stats().computed_tokens,
        (a.ids.len() - 1) as u64
    );
    // another prompt sharing only the first words: the entry is reused in part
    let b = m
        .prepare(&Prompt::user("tell me about blue hats"), None)
        .unwrap();
    let common = a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count();
    assert!(common > 2 && common < a.ids.len() - 1);
    check_batch(&m, std::slice::from_ref(&b), LogitsScope::Tail(3), 1e-5);
    let s = tm.prefix_cache().stats();
    assert_eq!(s.hits, 1);
    assert_eq!(s.reused_tokens, common as u64);
    assert_eq!(
        s.computed_tokens,
        (a.ids.len() - 1 + b.ids.len() - 3 - common) as u64
    );
    assert_eq!(s.entries, 2, "neither prompt extends the other");
}

#[test]
fn a_disabled_cache_or_all_positions_is_the_plain_prefill() {
    let m = model("tiny-s0");
    let tm = m.text_model();
    let seqs = prompts(&m, &[1, 2]);
    let mut c = tm.new_cache(8);
    let all = tm.prefill_cached(&seqs, &mut c, LogitsScope::All).unwrap();
    assert_eq!(all.reused, 0);
    tm.prefix_cache().set_max_bytes(0);
    let mut c = tm.new_cache(8);
    assert_eq!(
        tm.prefill_cached(&seqs, &mut c, LogitsScope::Last)
            .unwrap()
            .reused,
        0
    );
    assert_eq!(tm.prefix_cache().stats().entries, 0);
}

#[test]
fn bad_input_is_refused_with_the_cache_as_without() {
    let m = model("tiny-s0");
    let tm = m.text_model();
    let vocab = m.config().text.vocab_size as u32;
    let mut seqs = prompts(&m, &[1, 2]);
    seqs[0].ids[2] = vocab;
    seqs[1].ids[2] = vocab;
    let mut c = tm.new_cache(8);
    let err = tm
        .prefill_cached(&seqs, &mut c, LogitsScope::Last)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let mut full = tm.new_cache(8);
    tm.prefill_cached(&prompts(&m, &[1]), &mut full, LogitsScope::Last)
        .unwrap();
    let err = tm
        .prefill_cached(&prompts(&m, &[1]), &mut full, LogitsScope::Last)
        .unwrap_err();
    assert!(err.to_string().contains("empty cache"), "{err}");
}

#[test]
fn half_precision_and_mixture_of_experts_checkpoints_agree_too() {
    for (fixture, tol) in [("tiny-s4-moe", 1e-5), ("tiny-s5-bf16", 0.05)] {
        let m = model(fixture);
        assert!(fixture != "tiny-s5-bf16" || m.dtype() == DType::BF16);
        let seqs = prompts(&m, &[1, 2, 3]);
        let reused = check_batch(&m, &seqs, LogitsScope::Tail(2), tol);
        assert!(reused > 0, "{fixture}");
    }
}

#[test]
fn score_batch_gives_each_prompts_own_scores() {
    let m = model("tiny-s0");
    let reference = model("tiny-s0");
    reference.text_model().prefix_cache().set_max_bytes(0);
    let seqs = prompts(&m, &[1, 2, 3]);
    // two single-token answers (one prefill together) and two sharing their first token
    let continuations = vec![vec![5u32], vec![9], vec![7, 3], vec![7, 11, 2]];
    let got = m.text_model().score_batch(&seqs, &continuations).unwrap();
    assert_eq!(got.len(), seqs.len());
    for (p, q) in seqs.iter().enumerate() {
        let want = reference
            .text_model()
            .score(q.clone(), &continuations)
            .unwrap();
        for (c, (g, w)) in got[p].iter().zip(&want).enumerate() {
            assert_eq!(g.tokens, w.tokens);
            for (a, b) in g.token_logprobs.iter().zip(&w.token_logprobs) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "prompt {p}, continuation {c}: {g:?} vs {w:?}"
                );
            }
        }
    }
    // 3 prefills: [5] and [9] together, [7, 3] alone, [7, 11, 2] alone
    assert_eq!(m.text_model().prefix_cache().stats().lookups, 3);
    let vocab = m.config().text.vocab_size as u32;
    let err = m
        .text_model()
        .score_batch(&seqs, &[vec![1], vec![]])
        .unwrap_err();
    assert!(err.to_string().contains("continuation 1 is empty"), "{err}");
    let err = m
        .text_model()
        .score_batch(&seqs, &[vec![1, vocab]])
        .unwrap_err();
    assert!(err.to_string().contains("continuation 0: token"), "{err}");
}
