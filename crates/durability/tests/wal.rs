//! The write-ahead log: replay, group commit, segments, torn tails, damage, and a power
//! loss at every step of a workload that appends, syncs, rotates and drops segments.

use mosaic_durability::sim::{SimDirectory, SimFs, Tail};
use mosaic_durability::wal::{Wal, WalOptions};
use mosaic_durability::{Error, FsDirectory, MmapDirectory};

type Records = Vec<(u64, Vec<u8>)>;

fn open<F: mosaic_durability::FileSystem + Clone>(
    dir: &FsDirectory<F>,
    options: WalOptions,
) -> mosaic_durability::Result<(Wal<F>, Records)> {
    let mut seen = Vec::new();
    let (wal, _) = Wal::open(dir, "events", 1, options, |seq, p| {
        seen.push((seq, p.to_vec()));
        Ok(())
    })?;
    Ok((wal, seen))
}

fn payload(seq: u64) -> Vec<u8> {
    // lengths vary 0..=40, so records straddle every boundary
    (0..seq % 41).map(|i| (seq * 31 + i) as u8).collect()
}

fn small() -> WalOptions {
    WalOptions { segment_bytes: 300 }
}

#[test]
fn records_come_back_in_order_after_a_reopen_and_appends_go_on() {
    let dir = SimDirectory::simulated();
    let (mut wal, seen) = open(&dir, small()).unwrap();
    assert!(seen.is_empty());
    for seq in 1..=40 {
        assert_eq!(wal.append(&payload(seq)).unwrap(), seq);
    }
    // starting a segment makes the records before it durable; the rest wait for sync
    assert!(wal.durable_seq() < 40);
    assert_eq!(wal.sync().unwrap(), 40);
    assert!(wal.segments() > 2, "300-byte segments: {}", wal.segments());
    drop(wal);
    let (mut wal, seen) = open(&dir, small()).unwrap();
    let want: Records = (1..=40).map(|s| (s, payload(s))).collect();
    assert_eq!(seen, want);
    assert_eq!(wal.append(b"next").unwrap(), 41);
    wal.sync().unwrap();
}

#[test]
fn records_a_dead_process_wrote_are_durable_once_replayed() {
    let fs = SimFs::default();
    let dir = FsDirectory::new(fs.clone());
    let (mut wal, _) = open(&dir, small()).unwrap();
    for seq in 1..=3 {
        wal.append(&payload(seq)).unwrap();
    }
    wal.flush().unwrap();
    drop(wal); // the process dies: the operating system keeps what was written
    let (_, seen) = open(&dir, small()).unwrap();
    assert_eq!(seen.len(), 3);
    // the service went on from these records; then the power fails
    let lost = FsDirectory::new(fs.power_loss(|k| k - 1, |_| Tail::Dropped));
    let (_, seen) = open(&lost, small()).unwrap();
    assert_eq!(seen.len(), 3, "replayed records were not made durable");
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_log() {
    let dir = SimDirectory::simulated();
    let (_wal, _) = open(&dir, small()).unwrap();
    assert!(matches!(open(&dir, small()), Err(Error::Locked { .. })));
}

#[test]
fn a_lock_taken_alone_holds_the_log_until_the_log_opened_under_it_is_dropped() {
    let dir = SimDirectory::simulated();
    let lock = Wal::lock(&dir, "events").unwrap();
    assert_eq!(lock.name(), "events");
    assert!(matches!(open(&dir, small()), Err(Error::Locked { .. })));
    assert!(matches!(
        Wal::lock(&dir, "events"),
        Err(Error::Locked { .. })
    ));
    // another log of the same directory is another lock
    drop(Wal::lock(&dir, "other").unwrap());
    let (wal, _) = Wal::open_locked(&dir, lock, 1, small(), |_, _| Ok::<(), Error>(())).unwrap();
    assert!(matches!(open(&dir, small()), Err(Error::Locked { .. })));
    drop(wal);
    drop(open(&dir, small()).unwrap());
    assert!(matches!(Wal::lock(&dir, "../x"), Err(Error::Invalid(_))));
}

#[test]
fn a_lock_opens_only_the_directory_it_was_taken_in() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let da = MmapDirectory::open(a.path()).unwrap();
    let db = MmapDirectory::open(b.path()).unwrap();
    let lock = Wal::lock(&da, "events").unwrap();
    let err = Wal::open_locked(&db, lock, 1, small(), |_, _| Ok::<(), Error>(()))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid(ref m) if m.contains("was taken in")),
        "{err}"
    );
}

#[test]
fn drop_through_deletes_only_segments_wholly_covered() {
    let dir = SimDirectory::simulated();
    let (mut wal, _) = open(&dir, WalOptions::default()).unwrap();
    for seq in 1..=10 {
        wal.append(&payload(seq)).unwrap();
        if seq % 3 == 0 {
            wal.rotate().unwrap(); // segments start at 1, 4, 7, 10
        }
    }
    wal.sync().unwrap();
    assert_eq!(wal.segments(), 4);
    assert_eq!(wal.drop_through(5).unwrap(), 1); // 1..=3 goes, 4..=6 holds 6
    assert_eq!(wal.first_seq(), 4);
    assert_eq!(wal.drop_through(100).unwrap(), 2); // never the segment appended to
    assert_eq!(wal.first_seq(), 10);
    drop(wal);
    let (wal, seen) = open(&dir, WalOptions::default()).unwrap();
    assert_eq!(seen, vec![(10, payload(10))]);
    assert_eq!(wal.next_seq(), 11);
}

#[test]
fn a_failed_sync_makes_the_log_refuse_until_reopened() {
    let fs = SimFs::default();
    let dir = FsDirectory::new(fs.clone());
    let (mut wal, _) = open(&dir, small()).unwrap();
    wal.append(b"a").unwrap();
    fs.fail_after(fs.steps() + 1); // the write goes through, the sync fails
    assert!(wal.sync().is_err());
    let err = wal.append(b"b").unwrap_err().to_string();
    assert!(err.contains("reopen"), "{err}");
}

#[test]
fn oversized_records_and_bad_names_are_refused() {
    let dir = SimDirectory::simulated();
    let (mut wal, _) = open(&dir, small()).unwrap();
    let big = vec![0u8; mosaic_durability::wal::MAX_RECORD + 1];
    assert!(matches!(wal.append(&big), Err(Error::Invalid(_))));
    let bad = Wal::open(&dir, "../x", 1, small(), |_, _| Ok(()));
    assert!(matches!(bad, Err(Error::Invalid(_))));
}

/// A log on disk of two segments, and the records in it.
fn on_disk() -> (tempfile::TempDir, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = MmapDirectory::open(tmp.path()).unwrap();
    let (mut wal, _) = open(&dir, WalOptions::default()).unwrap();
    for seq in 1..=6 {
        wal.append(&payload(seq + 10)).unwrap();
        if seq == 3 {
            wal.rotate().unwrap();
        }
    }
    wal.sync().unwrap();
    drop(wal);
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    (tmp, names)
}

#[test]
fn every_flipped_byte_is_refused_or_costs_at_most_the_last_record() {
    let (tmp, names) = on_disk();
    let all: Records = (1..=6).map(|s| (s, payload(s + 10))).collect();
    for name in &names {
        let path = tmp.path().join(name);
        let good = std::fs::read(&path).unwrap();
        let last_record_at = good.len() - 16 - payload(16).len();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let dir = MmapDirectory::open(tmp.path()).unwrap();
            match open(&dir, WalOptions::default()) {
                Err(Error::Corrupt { file, message }) => {
                    assert_eq!(&file, name, "{message}")
                }
                Err(e) => panic!("{name} byte {i}: {e}"),
                Ok((_, seen)) => {
                    // only a damaged last record of the newest segment reads as a torn
                    // tail (indistinguishable from a write the crash cut)
                    assert!(name == &names[1] && i >= last_record_at, "{name} byte {i}");
                    assert_eq!(seen, all[..5], "{name} byte {i}");
                }
            }
            std::fs::write(&path, &good).unwrap();
        }
    }
}

#[test]
fn a_missing_middle_segment_is_a_gap_not_a_shorter_log() {
    let (tmp, names) = on_disk();
    let dir = MmapDirectory::open(tmp.path()).unwrap();
    let (mut wal, _) = open(&dir, WalOptions::default()).unwrap();
    wal.rotate().unwrap(); // a third segment, so the second is in the middle
    drop(wal);
    std::fs::remove_file(tmp.path().join(&names[1])).unwrap();
    let err = open(&dir, WalOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("starts at seq 7") && err.contains("ends at 4"),
        "{err}"
    );
}

/// A small deterministic generator for the crash choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Appends in groups of 1..=4 records, syncing each group (some only flushed), rotating
/// and dropping now and then; returns the highest seq made durable and the highest one
/// the log was allowed to drop.
fn workload(dir: &SimDirectory) -> (u64, u64) {
    let mut durable = 0;
    let mut dropped = 0;
    let Ok((mut wal, _)) = open(dir, small()) else {
        return (0, 0);
    };
    let mut seq = 1;
    for group in 0..14u64 {
        for _ in 0..(group % 4 + 1) {
            if wal.append(&payload(seq)).is_err() {
                return (durable, dropped);
            }
            seq += 1;
        }
        let done = if group % 5 == 4 {
            wal.flush().map(|_| durable)
        } else {
            wal.sync()
        };
        match done {
            Ok(d) => durable = d,
            Err(_) => return (durable, dropped),
        }
        if group % 6 == 5 {
            if wal.rotate().is_err() {
                return (durable, dropped);
            }
            durable = wal.durable_seq();
            // once asked, any prefix of the drop may have happened
            dropped = durable - 3;
            if wal.drop_through(dropped).is_err() {
                return (durable, dropped);
            }
        }
    }
    (durable, dropped)
}

#[test]
fn a_power_loss_at_any_step_keeps_every_durable_record_and_nothing_else() {
    let total_steps = {
        let fs = SimFs::default();
        workload(&FsDirectory::new(fs.clone()));
        fs.steps()
    };
    assert!(total_steps > 30, "{total_steps}");
    let mut crashes = 0;
    for step in 0..=total_steps {
        for seed in 0..8u64 {
            let fs = SimFs::default();
            fs.fail_after(step);
            let (durable, dropped) = workload(&FsDirectory::new(fs.clone()));
            let mut rng = Rng(seed * 7919 + step);
            let lost = fs.power_loss(
                |k| rng.below(k),
                |_| match seed % 4 {
                    0 => Tail::Dropped,
                    1 => Tail::Kept(usize::MAX),
                    2 => Tail::Kept(seed as usize * 13),
                    _ => Tail::Torn(seed as usize * 9 + 1),
                },
            );
            let dir = FsDirectory::new(lost);
            let (mut wal, seen) = open(&dir, small())
                .unwrap_or_else(|e| panic!("step {step} seed {seed}: reopen failed: {e}"));
            let first = seen.first().map_or(wal.next_seq(), |r| r.0);
            assert!(
                first <= dropped + 1,
                "step {step} seed {seed}: records after {dropped} were dropped (first {first})"
            );
            for (i, (s, p)) in seen.iter().enumerate() {
                assert_eq!(*s, first + i as u64, "step {step} seed {seed}");
                assert_eq!(p, &payload(*s), "step {step} seed {seed}: seq {s}");
            }
            assert!(
                wal.next_seq() > durable,
                "step {step} seed {seed}: durable {durable}, found up to {}",
                wal.next_seq() - 1
            );
            let next = wal.append(b"after").unwrap();
            wal.sync().unwrap();
            drop(wal);
            let (_, again) = open(&dir, small()).unwrap();
            assert_eq!(again.last().map(|r| r.0), Some(next));
            crashes += 1;
        }
    }
    assert!(crashes > 400);
}
