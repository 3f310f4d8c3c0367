//! Hostile ids are typed errors, never allocations sized by them: a one-line dataset
//! holding index 2^31 - 1, and a feedback log whose replayed event names user 2^31 - 1
//! (valid checksums: the log stores ids as given) reaching a live model.

use mosaic_durability::MmapDirectory;
use taste_graph::{
    BipartiteGraph, Dataset, Error, Feedback, FeedbackLog, InteractionKind, ItemId, LightGcnConfig,
    LiveConfig, LiveModel, SyncPolicy, Trainer, UserId,
};

mod common;
use common::random_graph;

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
fn a_logged_event_with_a_huge_user_is_refused_by_the_live_model() {
    let dir = tempfile::tempdir().unwrap();
    let fs = MmapDirectory::open(dir.path()).unwrap();
    {
        let (mut log, _) =
            FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |_, _| Ok::<(), Error>(())).unwrap();
        let seq = log
            .append(&Feedback {
                user: i32::MAX as u64,
                item: 0,
                kind: InteractionKind::Click,
                weight: 1.0,
                timestamp: 5,
            })
            .unwrap();
        log.acknowledge(seq).unwrap();
    }
    let mut logged = Vec::new();
    FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |_, f| {
        logged.push(f);
        Ok::<(), Error>(())
    })
    .unwrap();
    let g: BipartiteGraph = random_graph(6, 5, 20, 3);
    let t = Trainer::new(&g, &LightGcnConfig::new().dim(4).layers(1).seed(1)).unwrap();
    let mut live = LiveModel::new(t.model(), &g, LiveConfig::new(), 10).unwrap();
    let f = logged[0];
    let err = live
        .observe(
            UserId(f.user as u32),
            ItemId(f.item as u32),
            f.kind,
            f.timestamp,
        )
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

/// The caller's own error type through a replay: its visitor's error comes back as it
/// was, the log's own (a damaged record) converted into it.
#[test]
fn a_replay_gives_back_the_callers_error() {
    #[derive(Debug)]
    enum Mine {
        Log(Error),
        Stop(u64),
    }
    impl From<Error> for Mine {
        fn from(e: Error) -> Self {
            Mine::Log(e)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = MmapDirectory::open(dir.path()).unwrap();
    {
        let (mut log, _) =
            FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |_, _| Ok::<(), Error>(())).unwrap();
        for k in 0..3 {
            let f = Feedback {
                user: k,
                item: 9,
                kind: InteractionKind::Click,
                weight: 1.0,
                timestamp: k,
            };
            let seq = log.append(&f).unwrap();
            log.acknowledge(seq).unwrap();
        }
    }
    let stopped = FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |seq, f| {
        if f.user == 1 {
            return Err(Mine::Stop(seq));
        }
        Ok(())
    });
    assert!(matches!(stopped, Err(Mine::Stop(2))), "{stopped:?}");
    // a saved state past the log's end: the log's error, in the caller's type
    let ahead = FeedbackLog::open(&fs, SyncPolicy::EachEvent, 10, |_, _| Ok::<(), Mine>(()));
    match ahead {
        Err(Mine::Log(Error::Corrupt { message, .. })) => {
            assert!(message.contains("ends at 3"), "{message}")
        }
        other => panic!("expected the log's error, got {other:?}"),
    }
}
