//! The batching queue in front of the re-scorer: concurrent jobs with different
//! questions and context lengths share one round (prompts of different lengths,
//! left-padded) and get the scores each would get alone; a bad job fails alone; a job
//! past its deadline is dropped; a full queue refuses at once.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{content, model};
use ranker::Error;
use ranker::rescore::batch::{BatchOptions, Batcher, Job, Scores};
use ranker::rescore::{RescoreOptions, Rescorer};

fn rescorer() -> Rescorer {
    let (_s, snap) = content(16);
    Rescorer::new(model(), snap, RescoreOptions::new().batch(4)).unwrap()
}

fn job(
    question: Option<&str>,
    context: &[u64],
    candidates: &[u64],
    deadline: Instant,
    tx: mpsc::Sender<(usize, Scores)>,
    k: usize,
) -> Job {
    Job {
        question: question.map(str::to_string),
        context: context.to_vec(),
        candidates: candidates.to_vec(),
        deadline,
        done: Box::new(move |s| tx.send((k, s)).unwrap()),
    }
}

#[test]
fn concurrent_jobs_share_a_round_and_score_as_alone() {
    let alone = rescorer();
    let q2 = "They liked {context}. Is <item> for them? Answer yes or no.";
    let cases: [(Option<&str>, &[u64], &[u64]); 3] = [
        (None, &[1, 2], &[3, 0, 7]),
        (Some(q2), &[], &[5, 12]),
        (None, &[4], &[9, 99, 2]),
    ];
    let want: Vec<Option<Vec<f32>>> = cases
        .iter()
        .map(|(q, c, cand)| {
            alone
                .sequences(*q, c, cand)
                .and_then(|s| alone.score_sequences(&s))
                .ok()
        })
        .collect();
    assert!(want[2].is_none(), "item 99 has no content embedding");
    let b = Batcher::new(
        rescorer(),
        BatchOptions {
            queue: 8,
            max_prompts: 64,
            max_wait: Duration::from_millis(500),
        },
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (k, (q, c, cand)) in cases.iter().enumerate() {
        b.submit(job(*q, c, cand, deadline, tx.clone(), k)).unwrap();
    }
    let mut got: Vec<(usize, Scores)> = (0..3).map(|_| rx.recv().unwrap()).collect();
    got.sort_by_key(|g| g.0);
    for ((k, scores), want) in got.into_iter().zip(&want) {
        match (scores, want) {
            (Ok(s), Some(w)) => {
                assert_eq!(s.len(), w.len());
                for (a, b) in s.iter().zip(w) {
                    assert!((a - b).abs() < 1e-4, "job {k}: {s:?} vs {w:?}");
                }
            }
            (Err(Error::Unknown { message, .. }), None) => {
                assert!(message.contains("item 99"), "{message}")
            }
            (other, _) => panic!("job {k}: {other:?}"),
        }
    }
    let st = b.stats();
    assert_eq!(
        (st.rounds, st.prompts, st.waiting),
        (1, 5, 0),
        "one round of the two good jobs' prompts: {st:?}"
    );
}

#[test]
fn a_job_past_its_deadline_is_dropped_and_a_full_queue_refuses_at_once() {
    let b = Batcher::new(
        rescorer(),
        BatchOptions {
            queue: 1,
            max_prompts: 1,
            max_wait: Duration::ZERO,
        },
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let past = Instant::now();
    b.submit(job(None, &[1], &[2], past, tx.clone(), 0))
        .unwrap();
    let (_, s) = rx.recv().unwrap();
    assert!(matches!(s, Err(Error::Deadline { .. })), "{s:?}");
    assert_eq!(b.stats().expired, 1);
    // the thread is held inside a job's callback: one more fills the queue of one
    let gate = Arc::new(Barrier::new(2));
    let g = Arc::clone(&gate);
    let later = Instant::now() + Duration::from_secs(60);
    b.submit(Job {
        done: Box::new(move |_| {
            g.wait();
        }),
        ..job(None, &[1], &[2], later, tx.clone(), 1)
    })
    .unwrap();
    while b.stats().waiting > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    b.submit(job(None, &[1], &[3], later, tx.clone(), 2))
        .unwrap();
    let refused = b.submit(job(None, &[1], &[4], later, tx.clone(), 3));
    assert!(
        matches!(refused, Err(Error::Overloaded { queue: 1, .. })),
        "{refused:?}"
    );
    gate.wait();
    assert_eq!(rx.recv().unwrap().0, 2, "the queued job is served");
}
