//! Hostile ids are typed errors, never allocations sized by them: a one-line dataset
//! holding index 2^31 - 1, and a journal whose recovered event names user 2^31 - 1
//! (valid checksums: the journal stores dense ids as given) reaching a live model.

use taste_graph::{
    BipartiteGraph, Dataset, Error, InteractionKind, ItemId, Journal, LightGcnConfig, LiveConfig,
    LiveModel, Trainer, UserId,
};

mod common;
use common::{ev, random_graph};

#[test]
fn a_one_line_dataset_with_a_huge_index_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.txt"), "0 2147483647\n").unwrap();
    std::fs::write(dir.path().join("test.txt"), "").unwrap();
    match Dataset::load_lightgcn(dir.path()) {
        Err(Error::Parse {
            line: 1, message, ..
        }) => {
            assert!(message.contains("2147483647"), "{message}")
        }
        other => panic!("expected a parse error at line 1, got {other:?}"),
    }
}

#[test]
fn a_recovered_event_with_a_huge_user_is_refused_by_the_live_model() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.record(&ev(i32::MAX as u32, 0, InteractionKind::Click, 5))
            .unwrap();
        j.sync().unwrap();
    }
    let (_, recovery) = Journal::open(dir.path()).unwrap();
    assert_eq!(
        recovery.events.n_users(),
        1 << 31,
        "counts are kept, nothing sized by them"
    );
    let g: BipartiteGraph = random_graph(6, 5, 20, 3);
    let t = Trainer::new(&g, &LightGcnConfig::new().dim(4).layers(1).seed(1)).unwrap();
    let mut live = LiveModel::new(t.model(), &g, LiveConfig::new(), 10).unwrap();
    let e = recovery.events.events()[0];
    let err = live
        .observe(e.user, e.item, e.kind, e.timestamp)
        .unwrap_err();
    assert!(
        err.to_string().contains("a new user must take id 6"),
        "{err}"
    );
    assert_eq!(live.n_users(), 6);
    // the next id is accepted
    live.observe(UserId(6), ItemId(0), InteractionKind::Click, 6)
        .unwrap();
}
