//! Crash safety of the event log, snapshots and journal: torn tails at every length are
//! discarded, damage elsewhere is an error, and every crash state of a checkpoint opens
//! to exactly the acknowledged events.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use taste_graph::log::{LOG_HEADER_LEN, LOG_RECORD_LEN};
use taste_graph::{
    Error, EventLog, GraphSnapshot, Interaction, InteractionKind, Interactions, ItemId, ItemMap,
    Journal, UserId, UserMap,
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!(
            "taste-graph-log-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ev(i: u64) -> Interaction {
    let kinds = [
        InteractionKind::View,
        InteractionKind::Click,
        InteractionKind::Save,
        InteractionKind::Hide,
    ];
    Interaction {
        user: UserId((i * 7 % 13) as u32),
        item: ItemId((i * 11 % 17 + (i << 20)) as u32),
        kind: kinds[(i % 4) as usize],
        weight: (i % 5) as f32 * 0.25,
        timestamp: 1_700_000_000_000 + i * 1_000 + (i << 40),
    }
}

fn evs(range: std::ops::Range<u64>) -> Vec<Interaction> {
    range.map(ev).collect()
}

fn collect(events: &[Interaction]) -> Interactions {
    let mut x = Interactions::new();
    for e in events {
        x.push(*e).unwrap();
    }
    x
}

/// Writes a snapshot of dense-id events (no id maps).
fn write_snapshot(path: impl AsRef<Path>, seq: u64, events: &Interactions) -> Result<(), Error> {
    GraphSnapshot::write(path, seq, events, &UserMap::new(), &ItemMap::new())
}

/// A log at `path` holding events 0..n (seqs 1..=n), synced; returns the file's bytes.
fn write_log(path: &Path, n: u64) -> Vec<u8> {
    let (mut log, replay) = EventLog::open(path).unwrap();
    assert!(replay.events().is_empty());
    for i in 0..n {
        assert_eq!(log.append(&ev(i)).unwrap(), i + 1);
    }
    assert_eq!(log.sync().unwrap(), n);
    drop(log);
    fs::read(path).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_and_continuation() {
    let dir = TempDir::new("roundtrip");
    let path = dir.path().join("events.log");
    let bytes = write_log(&path, 100);
    assert_eq!(bytes.len(), LOG_HEADER_LEN + 100 * LOG_RECORD_LEN);

    let (mut log, replay) = EventLog::open(&path).unwrap();
    assert_eq!(replay.first_seq, 1);
    assert_eq!(replay.events(), evs(0..100));
    assert_eq!(replay.discarded_bytes, 0);
    assert_eq!(replay.next_seq(), 101);
    assert_eq!(log.durable_seq(), 100);
    assert_eq!(log.append_sync(&ev(100)).unwrap(), 101);
    drop(log);
    let (_, replay) = EventLog::open(&path).unwrap();
    assert_eq!(replay.events(), evs(0..101));
}

#[test]
fn appends_are_buffered_until_sync_and_lost_without_it() {
    let dir = TempDir::new("buffered");
    let path = dir.path().join("events.log");
    let (mut log, _) = EventLog::open(&path).unwrap();
    assert_eq!(log.sync().unwrap(), 0, "empty log: nothing durable");
    // Group commit: many appends, nothing written, then one sync.
    for i in 0..10_000 {
        log.append(&ev(i)).unwrap();
    }
    assert_eq!(log.pending(), 10_000);
    assert_eq!(log.durable_seq(), 0);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        LOG_HEADER_LEN as u64,
        "append must not write"
    );
    assert_eq!(log.sync().unwrap(), 10_000);
    assert_eq!(log.pending(), 0);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        (LOG_HEADER_LEN + 10_000 * LOG_RECORD_LEN) as u64
    );
    // Appended but never synced: not acknowledged, gone after a "crash".
    log.append(&ev(10_000)).unwrap();
    log.append(&ev(10_001)).unwrap();
    drop(log);
    let (log, replay) = EventLog::open(&path).unwrap();
    assert_eq!(replay.events(), evs(0..10_000));
    assert_eq!(log.next_seq(), 10_001);
}

#[test]
fn torn_tail_at_every_length_is_discarded_and_appends_continue() {
    let dir = TempDir::new("torn");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 5);
    let four = LOG_HEADER_LEN + 4 * LOG_RECORD_LEN;
    for cut in 0..LOG_RECORD_LEN {
        fs::write(&path, &full[..four + cut]).unwrap();
        let (mut log, replay) = EventLog::open(&path).unwrap();
        assert_eq!(replay.events(), evs(0..4), "cut {cut}");
        assert_eq!(replay.discarded_bytes, cut as u64);
        assert_eq!(fs::metadata(&path).unwrap().len(), four as u64, "truncated");
        assert_eq!(log.append_sync(&ev(99)).unwrap(), 5);
        drop(log);
        let (_, replay) = EventLog::open(&path).unwrap();
        let mut want = evs(0..4);
        want.push(ev(99));
        assert_eq!(replay.events(), want, "cut {cut}");
    }
    // The full file still opens whole.
    fs::write(&path, &full).unwrap();
    assert_eq!(EventLog::open(&path).unwrap().1.events(), evs(0..5));
}

#[test]
fn torn_header_is_an_interrupted_creation() {
    let dir = TempDir::new("torn-header");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 0);
    assert_eq!(full.len(), LOG_HEADER_LEN);
    for cut in 0..LOG_HEADER_LEN {
        fs::write(&path, &full[..cut]).unwrap();
        let (mut log, replay) = EventLog::open(&path).unwrap();
        assert!(replay.events().is_empty());
        assert_eq!(replay.discarded_bytes, cut as u64);
        assert_eq!(log.append_sync(&ev(1)).unwrap(), 1, "cut {cut}");
        drop(log);
        assert_eq!(EventLog::open(&path).unwrap().1.events(), vec![ev(1)]);
    }
    // Size reached the disk but not the data.
    fs::write(&path, [0u8; LOG_HEADER_LEN]).unwrap();
    let (_, replay) = EventLog::open(&path).unwrap();
    assert_eq!(replay.first_seq, 1);
    assert!(replay.events().is_empty());
}

#[test]
fn garbage_and_zero_tails_are_discarded() {
    let dir = TempDir::new("garbage");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 3);
    for tail in [vec![0xAB; 100], vec![0u8; 4096], vec![0u8; LOG_RECORD_LEN]] {
        let mut b = full.clone();
        b.extend_from_slice(&tail);
        fs::write(&path, &b).unwrap();
        let (_, replay) = EventLog::open(&path).unwrap();
        assert_eq!(replay.events(), evs(0..3));
        assert_eq!(replay.discarded_bytes, tail.len() as u64);
        assert_eq!(fs::read(&path).unwrap(), full);
    }
}

#[test]
fn any_flipped_byte_in_the_last_record_is_a_torn_tail() {
    let dir = TempDir::new("flip-last");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 5);
    let last = LOG_HEADER_LEN + 4 * LOG_RECORD_LEN;
    for at in last..full.len() {
        let mut b = full.clone();
        b[at] ^= 0x10;
        fs::write(&path, &b).unwrap();
        let (_, replay) = EventLog::open(&path).unwrap();
        assert_eq!(replay.events(), evs(0..4), "byte {at}");
        assert_eq!(replay.discarded_bytes, LOG_RECORD_LEN as u64);
    }
}

#[test]
fn flipped_byte_in_a_middle_record_is_an_error_naming_the_offset() {
    let dir = TempDir::new("flip-middle");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 5);
    let third = LOG_HEADER_LEN + 2 * LOG_RECORD_LEN;
    for at in third..third + LOG_RECORD_LEN {
        let mut b = full.clone();
        b[at] ^= 0x01;
        fs::write(&path, &b).unwrap();
        match EventLog::open(&path) {
            Err(Error::Corrupt {
                offset, path: p, ..
            }) => {
                assert_eq!(offset, third as u64, "byte {at}");
                assert_eq!(p, path);
            }
            other => panic!("byte {at}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            b,
            "a corrupt log is left untouched"
        );
    }
    // Two bad records then a good one: still damage inside the log.
    let mut b = full.clone();
    b[third + 1] ^= 1;
    b[third + LOG_RECORD_LEN + 1] ^= 1;
    fs::write(&path, &b).unwrap();
    assert!(matches!(
        EventLog::open(&path),
        Err(Error::Corrupt { offset, .. }) if offset == third as u64
    ));
}

#[test]
fn damaged_header_and_foreign_files_are_errors() {
    let dir = TempDir::new("header");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 2);
    for at in 0..LOG_HEADER_LEN {
        let mut b = full.clone();
        b[at] ^= 0x04;
        fs::write(&path, &b).unwrap();
        assert!(
            matches!(EventLog::open(&path), Err(Error::Corrupt { .. })),
            "header byte {at}"
        );
    }
    fs::write(&path, b"user item item item\n0 1 2 3\n1 4 5 6 7 8 9\n").unwrap();
    assert!(matches!(
        EventLog::open(&path),
        Err(Error::Corrupt { offset: 0, .. })
    ));
    fs::write(&path, b"hello").unwrap();
    assert!(matches!(
        EventLog::open(&path),
        Err(Error::Corrupt { offset: 0, .. })
    ));
}

/// A record with a valid checksum whose content is wrong is not a torn tail.
#[test]
fn checksummed_but_invalid_records_are_typed_errors() {
    let dir = TempDir::new("invalid");
    let path = dir.path().join("events.log");
    let full = write_log(&path, 3);
    let last = LOG_HEADER_LEN + 2 * LOG_RECORD_LEN;
    let reseal = |b: &mut Vec<u8>| {
        let crc = crc32fast::hash(&b[last..last + 32]);
        b[last + 32..last + 36].copy_from_slice(&crc.to_le_bytes());
    };
    // (what, offset in the record, bytes written there)
    let cases: [(&str, usize, Vec<u8>); 5] = [
        ("kind", 28, vec![9]),
        ("weight", 24, f32::NAN.to_bits().to_le_bytes().to_vec()),
        (
            "negative weight",
            24,
            (-1.0f32).to_bits().to_le_bytes().to_vec(),
        ),
        ("sequence", 0, vec![7]),
        ("reserved", 30, vec![1]),
    ];
    for (what, at, bytes) in cases {
        let mut b = full.clone();
        b[last + at..last + at + bytes.len()].copy_from_slice(&bytes);
        reseal(&mut b);
        fs::write(&path, &b).unwrap();
        match EventLog::open(&path) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, last as u64, "{what}"),
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn invalid_appends_are_rejected_and_logs_are_exclusive() {
    let dir = TempDir::new("misc");
    let path = dir.path().join("events.log");
    let (mut log, _) = EventLog::open(&path).unwrap();
    for w in [f32::NAN, f32::INFINITY, -0.5] {
        let mut e = ev(1);
        e.weight = w;
        assert!(matches!(log.append(&e), Err(Error::Graph { .. })));
    }
    assert_eq!(log.next_seq(), 1);
    assert!(matches!(EventLog::open(&path), Err(Error::Locked { .. })));
    log.append_sync(&ev(1)).unwrap();
    drop(log);
    assert!(matches!(
        EventLog::open_from(&path, 5),
        Err(Error::Corrupt { .. })
    ));
    let (log, replay) = EventLog::open_from(dir.path().join("b.log"), 42).unwrap();
    assert_eq!(
        (log.first_seq(), log.next_seq(), log.durable_seq()),
        (42, 42, 41)
    );
    assert_eq!(replay.first_seq, 42);
    assert!(matches!(
        EventLog::open_from(dir.path().join("c.log"), 0),
        Err(Error::Config { .. })
    ));
}

#[test]
fn snapshot_round_trip_and_damage() {
    let dir = TempDir::new("snapshot");
    let path = dir.path().join("s.snap");
    let events = collect(&evs(0..1000));
    write_snapshot(&path, 1234, &events).unwrap();
    let s = GraphSnapshot::read(&path).unwrap();
    assert_eq!(s.seq, 1234);
    assert_eq!(s.events.events(), events.events());
    assert_eq!(names(dir.path()), vec!["s.snap"], "no temp file left");

    let good = fs::read(&path).unwrap();
    for at in [0, 9, 17, 25, 40, good.len() / 2, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x20;
        fs::write(&path, &b).unwrap();
        assert!(
            matches!(GraphSnapshot::read(&path), Err(Error::Corrupt { .. })),
            "byte {at}"
        );
    }
    for cut in [0, 10, 35, good.len() - 24, good.len() - 1] {
        fs::write(&path, &good[..cut]).unwrap();
        assert!(matches!(
            GraphSnapshot::read(&path),
            Err(Error::Corrupt { .. })
        ));
    }
    let empty = GraphSnapshot::default();
    empty.save(&path).unwrap();
    let back = GraphSnapshot::read(&path).unwrap();
    assert_eq!((back.seq, back.events.len()), (0, 0));
}

#[test]
fn journal_snapshot_plus_log_replay_is_the_full_sequence() {
    let dir = TempDir::new("journal");
    let mut all = Vec::new();
    let mut next = 0u64;
    for round in 0..4u64 {
        let (mut j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.events.events(), &all[..], "round {round}");
        assert_eq!(rec.last_seq, all.len() as u64);
        assert!(rec.skipped_snapshots.is_empty());
        for _ in 0..(30 + round * 7) {
            let seq = j.record(&ev(next)).unwrap();
            all.push(ev(next));
            next += 1;
            assert_eq!(seq, all.len() as u64);
        }
        assert_eq!(j.sync().unwrap(), all.len() as u64);
        if round % 2 == 0 {
            // Recorded but unsynced events are covered: checkpoint syncs first.
            j.record(&ev(next)).unwrap();
            all.push(ev(next));
            next += 1;
            let seq = j.checkpoint(&collect(&all)).unwrap();
            assert_eq!(seq, all.len() as u64);
            assert_eq!(j.snapshot_seq(), seq);
            assert_eq!(
                names(dir.path()),
                vec![
                    "LOCK".to_string(),
                    format!("log-{:020}.log", seq + 1),
                    format!("snapshot-{seq:020}.snap"),
                ]
            );
            for _ in 0..5 {
                j.record(&ev(next)).unwrap();
                all.push(ev(next));
                next += 1;
            }
            j.sync().unwrap();
        }
    }
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &all[..]);
    assert_eq!(j.last_seq(), all.len() as u64);
    assert_eq!(j.durable_seq(), all.len() as u64);
    assert_eq!(rec.snapshot_seq, j.snapshot_seq());
    assert!(rec.snapshot_seq > 0);
    assert!(matches!(
        Journal::open(dir.path()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn checkpoint_twice_and_empty_journal() {
    let dir = TempDir::new("twice");
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert!(rec.events.is_empty());
    assert_eq!(j.checkpoint(&Interactions::new()).unwrap(), 0);
    assert_eq!(j.checkpoint(&Interactions::new()).unwrap(), 0);
    j.record(&ev(0)).unwrap();
    j.sync().unwrap();
    assert_eq!(j.checkpoint(&collect(&evs(0..1))).unwrap(), 1);
    assert_eq!(j.checkpoint(&collect(&evs(0..1))).unwrap(), 1);
    drop(j);
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..1)[..]);
    assert_eq!(rec.snapshot_seq, 1);
}

/// Builds a journal with events 0..n acknowledged in `log-1`, no snapshot.
fn journal_with(dir: &Path, n: u64) {
    let (mut j, _) = Journal::open(dir).unwrap();
    for i in 0..n {
        j.record(&ev(i)).unwrap();
    }
    j.sync().unwrap();
}

#[test]
fn crash_states_of_a_checkpoint_open_to_the_acknowledged_events() {
    let n = 40;
    // 1. Crash while writing the snapshot: only a temp file.
    let dir = TempDir::new("crash1");
    journal_with(dir.path(), n);
    let tmp = dir.path().join(format!("snapshot-{n:020}.snap.tmp"));
    fs::write(&tmp, [0xEE; 77]).unwrap();
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..n)[..]);
    assert!(!tmp.exists(), "temp file removed");

    // 2. Snapshot durable, log not rotated: snapshot and the whole old log.
    let dir = TempDir::new("crash2");
    journal_with(dir.path(), n);
    write_snapshot(
        Journal::snapshot_path(dir.path(), n),
        n,
        &collect(&evs(0..n)),
    )
    .unwrap();
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..n)[..], "no duplicates");
    assert_eq!(rec.snapshot_seq, n);
    assert_eq!(j.record(&ev(n)).unwrap(), n + 1);
    j.sync().unwrap();
    drop(j);
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..n + 1)[..]);

    // 3. A snapshot in the middle of the log (e.g. from an earlier checkpoint whose
    //    old log was kept): replay only what follows it.
    let dir = TempDir::new("crash3");
    journal_with(dir.path(), n);
    write_snapshot(
        Journal::snapshot_path(dir.path(), 25),
        25,
        &collect(&evs(0..25)),
    )
    .unwrap();
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..n)[..]);
    assert_eq!(rec.snapshot_seq, 25);

    // 4. New log created (its header torn at every length), old log not yet deleted.
    for cut in 0..=LOG_HEADER_LEN {
        let dir = TempDir::new("crash4");
        journal_with(dir.path(), n);
        write_snapshot(
            Journal::snapshot_path(dir.path(), n),
            n,
            &collect(&evs(0..n)),
        )
        .unwrap();
        let new_log = Journal::log_path(dir.path(), n + 1);
        drop(EventLog::open_from(&new_log, n + 1).unwrap());
        let header = fs::read(&new_log).unwrap();
        fs::write(&new_log, &header[..cut]).unwrap();
        let (mut j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.events.events(), &evs(0..n)[..], "cut {cut}");
        assert_eq!(j.record(&ev(n)).unwrap(), n + 1);
        j.sync().unwrap();
        drop(j);
        let (mut j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.events.events(), &evs(0..n + 1)[..], "cut {cut}");
        // The next checkpoint removes the leftovers.
        j.checkpoint(&rec.events).unwrap();
        assert_eq!(
            names(dir.path()).len(),
            3,
            "cut {cut}: {:?}",
            names(dir.path())
        );
    }

    // 5. Deletion interrupted: old snapshot and old log of an earlier generation left.
    let dir = TempDir::new("crash5");
    journal_with(dir.path(), n);
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    fs::copy(
        Journal::log_path(dir.path(), 1),
        dir.path().join("saved.bin"),
    )
    .unwrap();
    j.checkpoint(&collect(&evs(0..n))).unwrap();
    j.record(&ev(n)).unwrap();
    j.sync().unwrap();
    drop(j);
    fs::rename(
        dir.path().join("saved.bin"),
        Journal::log_path(dir.path(), 1),
    )
    .unwrap();
    write_snapshot(
        Journal::snapshot_path(dir.path(), 10),
        10,
        &collect(&evs(0..10)),
    )
    .unwrap();
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..n + 1)[..]);
    assert_eq!(rec.snapshot_seq, n);
}

#[test]
fn torn_tail_of_the_journal_log_is_discarded() {
    let dir = TempDir::new("journal-torn");
    journal_with(dir.path(), 10);
    let log = Journal::log_path(dir.path(), 1);
    let mut b = fs::read(&log).unwrap();
    b.extend_from_slice(&[0x55; 20]);
    fs::write(&log, &b).unwrap();
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..10)[..]);
    assert_eq!(rec.discarded_bytes, 20);
}

#[test]
fn garbage_snapshot_falls_back_only_when_the_logs_cover_it() {
    // Logs still hold everything: the older state plus the logs replace it.
    let dir = TempDir::new("garbage-snap-ok");
    journal_with(dir.path(), 30);
    let bad = Journal::snapshot_path(dir.path(), 20);
    fs::write(
        &bad,
        b"definitely not a snapshot, just some bytes of garbage",
    )
    .unwrap();
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..30)[..]);
    assert_eq!(rec.snapshot_seq, 0);
    assert_eq!(rec.skipped_snapshots, vec![bad.clone()]);
    j.checkpoint(&rec.events).unwrap();
    assert!(!bad.exists(), "superseded by the checkpoint");

    // The snapshot's events exist nowhere else: an error naming it, never fewer events.
    let dir = TempDir::new("garbage-snap-bad");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..30 {
        j.record(&ev(i)).unwrap();
    }
    j.checkpoint(&collect(&evs(0..30))).unwrap();
    j.record(&ev(30)).unwrap();
    j.sync().unwrap();
    drop(j);
    let snap = Journal::snapshot_path(dir.path(), 30);
    let mut b = fs::read(&snap).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    fs::write(&snap, &b).unwrap();
    match Journal::open(dir.path()) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, snap),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A damaged snapshot claims more events than the logs hold: an error, not a
    // silent fallback to the shorter history.
    let dir = TempDir::new("garbage-snap-claim");
    journal_with(dir.path(), 20);
    let bad = Journal::snapshot_path(dir.path(), 30);
    fs::write(&bad, [0u8; 64]).unwrap();
    match Journal::open(dir.path()) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, bad),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A snapshot whose name disagrees with its header counts as damaged too.
    let dir = TempDir::new("garbage-snap-name");
    journal_with(dir.path(), 5);
    write_snapshot(
        Journal::snapshot_path(dir.path(), 3),
        4,
        &collect(&evs(0..4)),
    )
    .unwrap();
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..5)[..]);
    assert_eq!(rec.skipped_snapshots.len(), 1);
}

#[test]
fn missing_or_damaged_logs_are_errors() {
    // A log between the snapshot and the newest log is missing.
    let dir = TempDir::new("gap");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..10 {
        j.record(&ev(i)).unwrap();
    }
    j.checkpoint(&collect(&evs(0..10))).unwrap();
    for i in 10..20 {
        j.record(&ev(i)).unwrap();
    }
    j.sync().unwrap();
    drop(j);
    // Hand-build a second log after log-11 and delete log-11.
    let (mut l, _) = EventLog::open_from(Journal::log_path(dir.path(), 21), 21).unwrap();
    l.append_sync(&ev(20)).unwrap();
    drop(l);
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(
        rec.events.events(),
        &evs(0..21)[..],
        "contiguous logs chain"
    );
    // The older log lost records that the newer one does not hold.
    let log11 = Journal::log_path(dir.path(), 11);
    let full11 = fs::read(&log11).unwrap();
    fs::write(&log11, &full11[..LOG_HEADER_LEN + 5 * LOG_RECORD_LEN + 3]).unwrap();
    assert!(matches!(
        Journal::open(dir.path()),
        Err(Error::Corrupt { .. })
    ));
    fs::write(&log11, &full11).unwrap();
    assert_eq!(Journal::open(dir.path()).unwrap().1.events.len(), 21);
    fs::remove_file(&log11).unwrap();
    assert!(matches!(
        Journal::open(dir.path()),
        Err(Error::Corrupt { .. })
    ));

    // Damage inside the journal's log.
    let dir = TempDir::new("journal-middle");
    journal_with(dir.path(), 10);
    let log = Journal::log_path(dir.path(), 1);
    let mut b = fs::read(&log).unwrap();
    b[LOG_HEADER_LEN + 3 * LOG_RECORD_LEN + 5] ^= 1;
    fs::write(&log, &b).unwrap();
    assert!(matches!(
        Journal::open(dir.path()),
        Err(Error::Corrupt { offset, .. }) if offset == (LOG_HEADER_LEN + 3 * LOG_RECORD_LEN) as u64
    ));
}

// ---- external ids ----

/// External user and item ids of the k-th event of the id tests: a few repeat, most
/// are new, spread over the whole u64 range.
fn external_pair(k: u64) -> (u64, u64) {
    let user = (k * 7 % 13).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xFFFF_0000_0000_0000;
    let item = u64::MAX - (k * 11 % 17 + k / 3 * 5);
    (user, item)
}

/// The dense index `id` gets in arrival order, appended to `seen` if new.
fn arrival_index(seen: &mut Vec<u64>, id: u64) -> u32 {
    match seen.iter().position(|&x| x == id) {
        Some(i) => i as u32,
        None => {
            seen.push(id);
            (seen.len() - 1) as u32
        }
    }
}

/// What a journal must hold after events `0..n` of [`external_pair`] were recorded.
struct Expected {
    users: Vec<u64>,
    items: Vec<u64>,
    events: Vec<Interaction>,
}

impl Expected {
    fn new() -> Self {
        Expected {
            users: Vec::new(),
            items: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Records event `k` through `record_external` and checks the ids it was given.
    fn record(&mut self, j: &mut Journal, k: u64) {
        let (u, i) = external_pair(k);
        let kind = [InteractionKind::Click, InteractionKind::Save][(k % 2) as usize];
        let (_, e) = j.record_external(u, i, kind, 1.0, 1_000 + k).unwrap();
        let want = Interaction {
            user: UserId(arrival_index(&mut self.users, u)),
            item: ItemId(arrival_index(&mut self.items, i)),
            kind,
            weight: 1.0,
            timestamp: 1_000 + k,
        };
        assert_eq!(e, want, "event {k}");
        self.events.push(want);
    }

    fn check(&self, j: &Journal, rec: &taste_graph::Recovery, what: &str) {
        assert_eq!(j.users().externals(), &self.users[..], "{what}: users");
        assert_eq!(j.items().externals(), &self.items[..], "{what}: items");
        assert_eq!(rec.events.events(), &self.events[..], "{what}: events");
        for (d, &x) in self.users.iter().enumerate() {
            assert_eq!(j.users().get(x), Some(UserId(d as u32)), "{what}");
        }
    }
}

#[test]
fn external_ids_survive_reopening_checkpoints_and_replay() {
    let dir = TempDir::new("ids");
    let mut want = Expected::new();
    let mut k = 0;
    for round in 0..4 {
        let (mut j, rec) = Journal::open(dir.path()).unwrap();
        want.check(&j, &rec, &format!("round {round}"));
        for _ in 0..25 {
            want.record(&mut j, k);
            k += 1;
        }
        let seq = j.sync().unwrap();
        // id records take sequence numbers too
        assert_eq!(
            seq as usize,
            want.users.len() + want.items.len() + want.events.len()
        );
        if round % 2 == 1 {
            j.checkpoint(&collect(&want.events)).unwrap();
            let snap = GraphSnapshot::read(Journal::snapshot_path(dir.path(), seq)).unwrap();
            assert_eq!(snap.users.externals(), &want.users[..]);
            assert_eq!(snap.items.externals(), &want.items[..]);
            for _ in 0..5 {
                want.record(&mut j, k);
                k += 1;
            }
            j.sync().unwrap();
        }
    }
    let (j, rec) = Journal::open(dir.path()).unwrap();
    want.check(&j, &rec, "last");
    assert!(rec.snapshot_seq > 0);
    assert!(want.users.len() >= 13 && want.items.len() > 30);
}

#[test]
fn unsynced_id_assignments_are_lost_with_their_events() {
    let dir = TempDir::new("ids-unsynced");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let (_, a) = j
        .record_external(10, 20, InteractionKind::Click, 1.0, 1)
        .unwrap();
    j.sync().unwrap();
    let (_, b) = j
        .record_external(11, 21, InteractionKind::Click, 1.0, 2)
        .unwrap();
    assert_eq!((b.user, b.item), (UserId(1), ItemId(1)));
    drop(j); // never synced
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &[a][..]);
    assert_eq!(
        (j.users().externals(), j.items().externals()),
        (&[10][..], &[20][..])
    );
    // The lost assignment's index goes to the next new id.
    let (_, c) = j
        .record_external(12, 20, InteractionKind::Save, 2.0, 3)
        .unwrap();
    assert_eq!((c.user, c.item), (UserId(1), ItemId(0)));
}

/// A crash can cut the log anywhere inside the records of one `record_external` (new
/// user, new item, event): every cut opens to a consistent state in which each event's
/// ids are mapped, and recording the lost event again gives the same dense ids.
#[test]
fn torn_tail_inside_an_id_group_keeps_maps_and_events_consistent() {
    let dir = TempDir::new("ids-torn");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let mut want = Expected::new();
    for k in 0..6 {
        want.record(&mut j, k);
    }
    // A new user and a new item for the last event: three records.
    let (_, last) = j
        .record_external(7_777, 8_888, InteractionKind::Save, 1.0, 99)
        .unwrap();
    j.sync().unwrap();
    drop(j);
    let log = Journal::log_path(dir.path(), 1);
    let full = fs::read(&log).unwrap();
    let group_start = full.len() - 3 * LOG_RECORD_LEN;
    for cut in group_start..full.len() {
        fs::write(&log, &full[..cut]).unwrap();
        let (mut j, rec) = Journal::open(dir.path()).unwrap();
        let whole = (cut - LOG_HEADER_LEN) / LOG_RECORD_LEN;
        let kept = whole - (group_start - LOG_HEADER_LEN) / LOG_RECORD_LEN;
        assert_eq!(rec.events.events(), &want.events[..], "cut {cut}");
        assert_eq!(j.users().len(), want.users.len() + usize::from(kept >= 1));
        assert_eq!(j.items().len(), want.items.len() + usize::from(kept >= 2));
        let (_, again) = j
            .record_external(7_777, 8_888, InteractionKind::Save, 1.0, 99)
            .unwrap();
        assert_eq!(again, last, "cut {cut}");
        j.sync().unwrap();
        drop(j);
        let (j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.events.events().last(), Some(&last));
        assert_eq!(j.users().get(7_777), Some(last.user));
        assert_eq!(j.items().get(8_888), Some(last.item));
    }
}

#[test]
fn mixing_dense_and_external_ids_is_refused_and_logs_nothing() {
    // Dense events first: external ids would collide with the indices in use.
    let dir = TempDir::new("ids-mixed-dense");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.record(&ev(3)).unwrap();
    let before = j.last_seq();
    let err = j
        .record_external(1, 2, InteractionKind::Click, 1.0, 5)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Graph { message } if message.contains("no external id")),
        "{err}"
    );
    assert_eq!(j.last_seq(), before);
    assert!(j.users().is_empty() && j.items().is_empty());

    // External ids first: dense events must use indices the journal assigned.
    let dir = TempDir::new("ids-mixed-external");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let (_, e) = j
        .record_external(40, 50, InteractionKind::Click, 1.0, 5)
        .unwrap();
    let mut again = e;
    again.timestamp = 6;
    j.record(&again).unwrap();
    let mut stray = e;
    stray.user = UserId(1);
    let before = j.last_seq();
    assert!(matches!(j.record(&stray), Err(Error::Graph { .. })));
    assert!(matches!(
        j.checkpoint(&collect(&[e, stray])),
        Err(Error::Graph { .. })
    ));
    for w in [f32::NAN, -1.0, f32::INFINITY] {
        assert!(matches!(
            j.record_external(41, 51, InteractionKind::Click, w, 7),
            Err(Error::Graph { .. })
        ));
    }
    assert_eq!(j.last_seq(), before, "nothing logged for refused calls");
    assert_eq!(j.users().len(), 1);
    j.checkpoint(&collect(&[e, again])).unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &[e, again][..]);
    assert_eq!(j.users().externals(), &[40][..]);
}

/// Rewrites the crc of the log record at `at`.
fn reseal_record(b: &mut [u8], at: usize) {
    let crc = crc32fast::hash(&b[at..at + 32]);
    b[at + 32..at + 36].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the log header's crc.
fn reseal_header(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn checksummed_but_inconsistent_id_records_are_corrupt_at_their_offset() {
    let dir = TempDir::new("ids-corrupt");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    // records: U0 I0 E, U1 I1 E, U2 E(item 0)
    j.record_external(100, 200, InteractionKind::Click, 1.0, 1)
        .unwrap();
    j.record_external(101, 201, InteractionKind::Click, 1.0, 2)
        .unwrap();
    j.record_external(102, 200, InteractionKind::Click, 1.0, 3)
        .unwrap();
    j.sync().unwrap();
    drop(j);
    let log = Journal::log_path(dir.path(), 1);
    let full = fs::read(&log).unwrap();
    let rec_at = |k: usize| LOG_HEADER_LEN + k * LOG_RECORD_LEN;
    // (what, record changed, byte in the record, new bytes, record reported)
    let cases: [(&str, usize, usize, Vec<u8>, usize); 4] = [
        ("index skips one", 3, 8, 2u32.to_le_bytes().to_vec(), 3),
        ("external id twice", 6, 16, 100u64.to_le_bytes().to_vec(), 6),
        ("reserved bytes", 4, 12, vec![1], 4),
        // item 0 is then assigned twice: the next record is the inconsistent one
        ("user record turned item", 0, 28, vec![0x82], 1),
    ];
    for (what, k, at, bytes, reported) in cases {
        let mut b = full.clone();
        b[rec_at(k) + at..rec_at(k) + at + bytes.len()].copy_from_slice(&bytes);
        reseal_record(&mut b, rec_at(k));
        fs::write(&log, &b).unwrap();
        match Journal::open(dir.path()) {
            Err(Error::Corrupt { offset, .. }) => {
                assert_eq!(offset, rec_at(reported) as u64, "{what}")
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }
    // An event whose ids were never assigned (its id records removed).
    let mut b = full.clone();
    b.truncate(rec_at(6));
    let mut event = full[rec_at(7)..rec_at(8)].to_vec();
    event[0..8].copy_from_slice(&7u64.to_le_bytes());
    reseal_record(&mut event, 0);
    b.extend_from_slice(&event);
    fs::write(&log, &b).unwrap();
    assert!(matches!(
        Journal::open(dir.path()),
        Err(Error::Corrupt { message, .. }) if message.contains("external ids")
    ));
    fs::write(&log, &full).unwrap();
    assert_eq!(Journal::open(dir.path()).unwrap().0.users().len(), 3);
}

#[test]
fn snapshot_id_maps_round_trip_and_damage_is_corrupt() {
    let dir = TempDir::new("ids-snapshot");
    let path = dir.path().join("s.snap");
    let events = collect(&evs(0..50));
    let users = UserMap::from_externals((0..13).map(|u| u * 1_000_003).collect()).unwrap();
    let items = ItemMap::from_externals((0..1000).map(|i| u64::MAX - i).collect()).unwrap();
    GraphSnapshot::write(&path, 77, &events, &users, &items).unwrap();
    let s = GraphSnapshot::read(&path).unwrap();
    assert_eq!(s.events.events(), events.events());
    assert_eq!(s.users.externals(), users.externals());
    assert_eq!(s.items.externals(), items.externals());

    let good = fs::read(&path).unwrap();
    let reseal = |b: &mut Vec<u8>| {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    };
    let users_at = 32 + 50 * 24;
    let items_at = users_at + 8 + 13 * 8;
    // A duplicate external id in the item map, a count past the end, trailing bytes.
    let mut b = good.clone();
    b[items_at + 8 + 5 * 8..items_at + 8 + 6 * 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    fs::write(&path, &b).unwrap();
    assert!(matches!(
        GraphSnapshot::read(&path),
        Err(Error::Corrupt { offset, .. }) if offset == (items_at + 8 + 5 * 8) as u64
    ));
    for count in [14u64, 1 << 61, u64::MAX] {
        let mut b = good.clone();
        b[users_at..users_at + 8].copy_from_slice(&count.to_le_bytes());
        reseal(&mut b);
        fs::write(&path, &b).unwrap();
        assert!(
            matches!(GraphSnapshot::read(&path), Err(Error::Corrupt { .. })),
            "count {count}"
        );
    }
    let mut b = good.clone();
    b.splice(b.len() - 4..b.len() - 4, [0u8; 8]);
    reseal(&mut b);
    fs::write(&path, &b).unwrap();
    assert!(matches!(
        GraphSnapshot::read(&path),
        Err(Error::Corrupt { .. })
    ));

    // A version 2 snapshot (no dropped seq) reads with none dropped; a version 1
    // snapshot (no maps either) with empty maps.
    let plain = dir.path().join("plain.snap");
    write_snapshot(&plain, 50, &events).unwrap();
    let mut b = fs::read(&plain).unwrap();
    let dropped_at = b.len() - 12;
    b.drain(dropped_at..dropped_at + 8);
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut b);
    fs::write(&plain, &b).unwrap();
    let s = GraphSnapshot::read(&plain).unwrap();
    assert_eq!((s.events.events(), s.dropped_through), (events.events(), 0));
    b.drain(users_at..users_at + 16);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut b);
    fs::write(&plain, &b).unwrap();
    let s = GraphSnapshot::read(&plain).unwrap();
    assert_eq!(s.events.events(), events.events());
    assert!(s.users.is_empty() && s.items.is_empty());
    // A dropped seq past the snapshot's is corrupt.
    let mut b = good.clone();
    let at = b.len() - 12;
    b[at..at + 8].copy_from_slice(&78u64.to_le_bytes());
    reseal(&mut b);
    fs::write(&path, &b).unwrap();
    assert!(matches!(
        GraphSnapshot::read(&path),
        Err(Error::Corrupt { .. })
    ));
}

/// A journal in `dir` with events `0..cut` of [`external_pair`] synced (the returned
/// seq), then events `cut..end` synced.
fn journal_with_cut(dir: &Path, cut: u64, end: u64) -> (Journal, Expected, u64) {
    let mut want = Expected::new();
    let (mut j, _) = Journal::open(dir).unwrap();
    for k in 0..cut {
        want.record(&mut j, k);
    }
    let seq = j.sync().unwrap();
    for k in cut..end {
        want.record(&mut j, k);
    }
    j.sync().unwrap();
    (j, want, seq)
}

/// A service that saves its state elsewhere drops the journal's events it covers: the
/// journal keeps the id maps and the events after, its old logs go, and every crash
/// state of the drop opens to the acknowledged events after it (or all of them).
#[test]
fn dropped_events_leave_the_id_maps_and_the_events_after() {
    let dir = TempDir::new("drop");
    // Ten events after the cut (new ids among them), then the drop through the cut: the
    // snapshot's maps hold their ids and their id records replay as no-ops.
    let (mut j, mut want, cut) = journal_with_cut(dir.path(), 30, 40);
    j.drop_through(cut).unwrap();
    assert_eq!(j.snapshot_seq(), cut);
    // Two more events after the drop, one with a new user.
    for k in 40..42 {
        want.record(&mut j, k);
    }
    j.sync().unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.dropped_through, cut);
    assert_eq!(rec.events.events(), &want.events[30..]);
    assert_eq!(rec.events_after(cut).unwrap(), &want.events[30..]);
    assert_eq!(j.users().externals(), &want.users[..]);
    assert_eq!(j.items().externals(), &want.items[..]);
    // The log holding the events after the cut stays (with the new one) until a later
    // drop passes it.
    let files = names(dir.path());
    let logs = files.iter().filter(|n| n.starts_with("log-")).count();
    let snapshots = files.iter().filter(|n| n.starts_with("snapshot-")).count();
    assert_eq!((logs, snapshots), (2, 1), "{files:?}");
    drop(j);

    // A later drop past every old record leaves one log; a checkpoint keeps the drop.
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let last = j.sync().unwrap();
    j.drop_through(last).unwrap();
    let logs: Vec<_> = names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with("log-"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    want.record(&mut j, 42);
    j.checkpoint(&collect(&want.events[42..])).unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.dropped_through, last);
    assert_eq!(rec.events.events(), &want.events[42..]);
    assert_eq!(j.users().externals(), &want.users[..]);
    // Refused: past the last seq, or below the snapshot.
    let mut j = j;
    let last = j.sync().unwrap();
    assert!(matches!(j.drop_through(last + 1), Err(Error::Graph { .. })));
    assert!(matches!(j.drop_through(1), Err(Error::Graph { .. })));
}

/// Every crash state of a drop: before the snapshot is renamed (the old files), after it
/// (old logs still there), after the new log: each opens to the acknowledged events
/// after the drop, or to all of them before the snapshot exists.
#[test]
fn crash_states_of_a_drop_open_to_the_acknowledged_events() {
    let dir = TempDir::new("drop-crash");
    let (mut j, want, cut) = journal_with_cut(dir.path(), 20, 30);
    let before: Vec<(String, Vec<u8>)> = names(dir.path())
        .into_iter()
        .filter(|n| n != "LOCK")
        .map(|n| {
            let b = fs::read(dir.path().join(&n)).unwrap();
            (n, b)
        })
        .collect();
    j.drop_through(cut).unwrap();
    drop(j);
    let after: Vec<String> = names(dir.path());
    // The crash after the snapshot but before the old files were removed: put them back.
    for (n, b) in &before {
        if !after.contains(n) {
            fs::write(dir.path().join(n), b).unwrap();
        }
    }
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &want.events[20..]);
    assert_eq!(j.users().externals(), &want.users[..]);
    drop(j);
    // Before the snapshot was renamed: only the old files (a temp file is removed).
    let snap = Journal::snapshot_path(dir.path(), cut);
    let mut tmp = snap.clone().into_os_string();
    tmp.push(".tmp");
    fs::rename(&snap, &tmp).unwrap();
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.dropped_through, 0);
    assert_eq!(rec.events.events(), &want.events[..]);
    assert_eq!(j.users().externals(), &want.users[..]);
}

#[test]
fn version_1_logs_are_read_and_continued_in_version_2() {
    // A journal whose log is in version 1 (events only).
    let dir = TempDir::new("ids-v1");
    journal_with(dir.path(), 10);
    let log = Journal::log_path(dir.path(), 1);
    let mut b = fs::read(&log).unwrap();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal_header(&mut b);
    fs::write(&log, &b).unwrap();
    let (_, replay) = EventLog::open(&log).unwrap();
    assert_eq!(replay.events(), evs(0..10));
    let (mut l, _) = EventLog::open(&log).unwrap();
    assert_eq!(l.version(), 1);
    assert!(matches!(
        l.append_record(&taste_graph::Record::User {
            external: 1,
            user: UserId(0)
        }),
        Err(Error::Graph { .. })
    ));
    drop(l);
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..10)[..]);
    assert!(names(dir.path()).contains(&format!("log-{:020}.log", 11)));
    j.record(&ev(10)).unwrap();
    j.sync().unwrap();
    drop(j);
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.events(), &evs(0..11)[..]);

    // Id records in a version 1 file cannot be: corrupt at the first one.
    let dir2 = TempDir::new("ids-v1-ids");
    let (mut j, _) = Journal::open(dir2.path()).unwrap();
    j.record_external(5, 6, InteractionKind::Click, 1.0, 1)
        .unwrap();
    j.sync().unwrap();
    drop(j);
    let log = Journal::log_path(dir2.path(), 1);
    let mut b = fs::read(&log).unwrap();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal_header(&mut b);
    fs::write(&log, &b).unwrap();
    assert!(matches!(
        EventLog::open(&log),
        Err(Error::Corrupt { offset, .. }) if offset == LOG_HEADER_LEN as u64
    ));

    // An empty version 1 log is rewritten as version 2 when opened.
    let path = dir.path().join("empty.log");
    drop(EventLog::open_from(&path, 9).unwrap());
    let mut b = fs::read(&path).unwrap();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal_header(&mut b);
    fs::write(&path, &b).unwrap();
    let (mut l, replay) = EventLog::open_from(&path, 9).unwrap();
    assert_eq!((l.version(), replay.first_seq), (2, 9));
    l.append_sync(&ev(1)).unwrap();
    drop(l);
    assert_eq!(&fs::read(&path).unwrap()[8..12], &2u32.to_le_bytes());
}
