//! Crash safety: a writer process is SIGKILLed at random moments over hundreds of
//! commits; after each kill the store must open at the last committed state, with
//! every vector read back exactly as written.
//!
//! The writer is this same test binary, re-run with `MOSAIC_CRASH_CHILD=<dir>`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_store::{GenerationSpec, ItemId, MmapDirectory, StorageType, Store};

const DIM: usize = 16;
const GEN: &str = "crash-gen";
const TARGET_COMMITS: u64 = 220;
/// Holds `[c; DIM]` after data commit c: how the child resumes and the parent checks.
const META_ID: u64 = 1 << 40;

/// Deterministic vector of `id` as written by commit `c`.
fn vector(c: u64, id: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| ((c * 131 + id * 17 + j * 7) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

/// What commit `c` does: puts 40 ids and deletes 5.
fn commit_ops(c: u64) -> (Vec<u64>, Vec<u64>) {
    let start = (c * 37) % 400;
    let puts = (start..start + 40).collect();
    let del_start = (c * 53 + 11) % 440;
    let dels = (del_start..del_start + 5)
        .filter(|d| !(start..start + 40).contains(d))
        .collect();
    (puts, dels)
}

/// The expected contents after commits 1..=n: id -> commit that last wrote it.
fn expected(n: u64) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for c in 1..=n {
        let (puts, dels) = commit_ops(c);
        for d in dels {
            m.remove(&d);
        }
        for p in puts {
            m.insert(p, c);
        }
    }
    m
}

fn child(dir: &str) -> ! {
    let store = Store::open(Arc::new(MmapDirectory::open(dir).unwrap())).unwrap();
    let mut w = store.writer().unwrap();
    if store.generations().is_empty() {
        w.create_generation(GenerationSpec::new(GEN, DIM, StorageType::F32))
            .unwrap();
        w.set_current(GEN).unwrap();
        w.commit().unwrap(); // opstamp 1 = empty generation
    }
    println!("\nready");
    loop {
        let last = store
            .snapshot()
            .and_then(|s| s.get(ItemId(META_ID)))
            .map_or(0, |v| v[0] as u64);
        let c = last + 1;
        let (puts, dels) = commit_ops(c);
        let mut vecs: Vec<f32> = puts.iter().flat_map(|&id| vector(c, id)).collect();
        let mut ids: Vec<ItemId> = puts.iter().map(|&i| ItemId(i)).collect();
        ids.push(ItemId(META_ID));
        vecs.extend(std::iter::repeat_n(c as f32, DIM));
        let del_ids: Vec<ItemId> = dels.iter().map(|&i| ItemId(i)).collect();
        w.delete(GEN, &del_ids).unwrap();
        w.put_many(GEN, &ids, &vecs, None).unwrap();
        if c.is_multiple_of(25) {
            w.commit().unwrap();
            w.compact(GEN).unwrap();
        } else {
            w.commit().unwrap();
        }
        println!("committed {c}");
    }
}

/// Verify the store in `dir`; returns the data commits it holds.
fn verify(dir: &std::path::Path, acked: u64) -> u64 {
    let store =
        Store::open(Arc::new(MmapDirectory::open(dir).unwrap())).expect("store opens after a kill");
    let Some(snap) = store.snapshot() else {
        assert_eq!(acked, 0, "generation lost");
        return 0;
    };
    let n = snap.get(ItemId(META_ID)).map_or(0, |v| v[0] as u64);
    assert!(
        n >= acked,
        "acknowledged commit {acked} lost: store holds {n}"
    );
    assert!(
        n <= acked + 1,
        "store holds {n} commits, only {acked} (+1 in flight) were made"
    );
    let exp = expected(n);
    assert_eq!(
        snap.len(),
        exp.len() + (n > 0) as usize,
        "item count after commit {n}"
    );
    for (id, c) in &exp {
        assert_eq!(
            snap.get(ItemId(*id)),
            Some(vector(*c, *id)),
            "item {id} after commit {n}"
        );
    }
    n
}

/// The commit number of a `committed N` line.
fn committed(line: &str) -> Option<u64> {
    line.rsplit_once("committed ")
        .and_then(|(_, n)| n.trim().parse().ok())
}

#[test]
fn sigkill_at_random_moments_never_loses_or_corrupts_a_commit() {
    if let Ok(dir) = std::env::var("MOSAIC_CRASH_CHILD") {
        child(&dir);
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng: u64 = 0x9E3779B97F4A7C15;
    let mut kills = 0;
    let mut data_commits = 0u64;
    let start = Instant::now();
    while data_commits < TARGET_COMMITS && start.elapsed() < Duration::from_secs(600) {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_at_random_moments_never_loses_or_corrupts_a_commit",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MOSAIC_CRASH_CHILD", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // kill after a random number of acknowledged commits (0..=2) plus a random delay
        let commits_before_kill = (rng >> 60) % 3;
        let delay_us = (rng >> 20) % 2000;
        let mut acked = data_commits;
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = out.lines();
        // start the clock once the child has opened the store and taken the lock
        // (the test harness may print its own text on the same line, so match the end)
        for l in lines.by_ref() {
            match l {
                Ok(l) if l.ends_with("ready") => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        for _ in 0..commits_before_kill {
            match lines
                .next()
                .and_then(|l| l.ok())
                .as_deref()
                .and_then(committed)
            {
                Some(c) => acked = acked.max(c),
                None => break,
            }
        }
        std::thread::sleep(Duration::from_micros(delay_us));
        child.kill().unwrap(); // SIGKILL
        // lines printed before the kill landed are acknowledged too
        for l in lines.map_while(|l| l.ok()) {
            if let Some(c) = committed(&l) {
                acked = acked.max(c);
            }
        }
        child.wait().unwrap();
        kills += 1;
        data_commits = verify(tmp.path(), acked);
    }
    println!(
        "{kills} kills, {data_commits} commits verified in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        data_commits >= TARGET_COMMITS,
        "only {data_commits} commits in the time limit"
    );
    assert!(kills >= 100, "only {kills} kills");
}
