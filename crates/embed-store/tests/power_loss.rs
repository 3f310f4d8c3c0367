//! Power loss at every step of a store's life. A workload (commits of puts, replaces and
//! deletes, a compaction, an HNSW index save, a generation swap and drop, garbage
//! collection) runs on a [`SimDirectory`], which makes the n-th file-system step and
//! every later one fail; then the simulated machine loses power
//! ([`embed_store::sim::SimFs::power_loss`]): what was not synced is dropped, kept in
//! part or torn at a random byte, and an arbitrary prefix of the unsynced directory
//! changes survives. For every step n and several seeds of those choices the store must
//! open, hold every acknowledged commit exactly, show the commit that was in flight
//! whole or not at all, load any index it finds, and take new commits.
//!
//! The syncs it proves: `FsDirectory::atomic_write` syncs a file before renaming it
//! into place and the directory after. With either sync removed this test fails (checked
//! when it was written: without the file sync a manifest or segment reached its name
//! torn or empty and `Store::open` failed; without the directory sync an acknowledged
//! commit was lost).

use std::collections::BTreeMap;
use std::sync::Arc;

use embed_store::hnsw::{Hnsw, HnswParams};
use embed_store::sim::{SimDirectory, SimFs, Tail};
use embed_store::{FsDirectory, GenerationSpec, ItemId, Metric, StorageType, Store, Writer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIM: usize = 4;

/// What a store holds: generation -> id -> vector, and the current generation.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    generations: BTreeMap<String, BTreeMap<u64, Vec<f32>>>,
    current: Option<String>,
}

impl Model {
    fn read(store: &Store) -> Model {
        let mut m = Model {
            current: store.current(),
            ..Model::default()
        };
        for g in store.generations() {
            let snap = store.generation(&g).unwrap();
            let rows = snap
                .iter_live()
                .map(|(id, _, _)| (id.0, snap.get(id).unwrap()))
                .collect();
            m.generations.insert(g, rows);
        }
        m
    }
}

fn vector(id: u64, version: u64) -> Vec<f32> {
    (0..DIM)
        .map(|j| (id * 31 + version * 7 + j as u64) as f32 * 0.125)
        .collect()
}

/// Why the workload stopped.
enum Stop {
    /// It ran to its end.
    Done,
    /// A step failed outside a commit: the state is the acknowledged one.
    Failed,
    /// A commit failed: the state is the acknowledged one or this one.
    CommitFailed(Model),
}

/// The workload: every commit's expected state is computed first; `acked` is the
/// state of the last commit that returned `Ok`.
struct Run {
    store: Arc<Store>,
    acked: Model,
}

impl Run {
    /// Buffer `change` in the writer and in a copy of the model, then commit.
    fn commit(
        &mut self,
        w: &mut Writer,
        change: impl FnOnce(&mut Writer, &mut Model) -> embed_store::Result<()>,
    ) -> Result<(), Stop> {
        let mut next = self.acked.clone();
        change(w, &mut next).map_err(|_| Stop::Failed)?;
        match w.commit() {
            Ok(_) => {
                self.acked = next;
                Ok(())
            }
            Err(_) => Err(Stop::CommitFailed(next)),
        }
    }

    fn workload(&mut self, seed: u64) -> Result<(), Stop> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w = self.store.writer().map_err(|_| Stop::Failed)?;
        // buffered puts past 64 bytes go to staged segments before their commit
        w.set_flush_bytes(64);
        self.commit(&mut w, |w, m| {
            w.create_generation(GenerationSpec::new("a", DIM, StorageType::F32))?;
            let ids: Vec<ItemId> = (0..24).map(ItemId).collect();
            let v: Vec<f32> = (0..24).flat_map(|i| vector(i, 0)).collect();
            w.put_many("a", &ids, &v, None)?;
            w.set_current("a")?;
            m.generations
                .insert("a".into(), (0..24).map(|i| (i, vector(i, 0))).collect());
            m.current = Some("a".into());
            Ok(())
        })?;
        for round in 1..=4u64 {
            let puts: Vec<u64> = (0..4).map(|_| rng.random_range(0..40)).collect();
            let dels: Vec<u64> = (0..2).map(|_| rng.random_range(0..40)).collect();
            self.commit(&mut w, |w, m| {
                let g = m.generations.get_mut("a").unwrap();
                for &id in &puts {
                    w.put_many("a", &[ItemId(id)], &vector(id, round), None)?;
                    g.insert(id, vector(id, round));
                }
                let dels: Vec<u64> = dels.iter().copied().filter(|d| !puts.contains(d)).collect();
                let ids: Vec<ItemId> = dels.iter().copied().map(ItemId).collect();
                w.delete("a", &ids)?;
                for d in dels {
                    g.remove(&d);
                }
                Ok(())
            })?;
        }
        // compaction is a commit of its own: the same state, in one segment
        let same = self.acked.clone();
        w.compact("a").map_err(|_| Stop::CommitFailed(same))?;
        // an index saved beside the segments
        let snap = self.store.generation("a").map_err(|_| Stop::Failed)?;
        let params = HnswParams {
            m: 6,
            ef_construction: 16,
            seed,
        };
        let index = Hnsw::build(&snap, Metric::L2, params).map_err(|_| Stop::Failed)?;
        index
            .save(self.store.directory())
            .map_err(|_| Stop::Failed)?;
        // the generation swap: fill "b", make it current, drop "a"
        self.commit(&mut w, |w, m| {
            w.create_generation(GenerationSpec::new("b", DIM, StorageType::F32))?;
            let rows = m.generations["a"].clone();
            let ids: Vec<ItemId> = rows.keys().copied().map(ItemId).collect();
            let v: Vec<f32> = rows.values().flatten().copied().collect();
            w.put_many("b", &ids, &v, None)?;
            m.generations.insert("b".into(), rows);
            Ok(())
        })?;
        self.commit(&mut w, |w, m| {
            w.set_current("b")?;
            m.current = Some("b".into());
            Ok(())
        })?;
        self.commit(&mut w, |w, m| {
            w.drop_generation("a")?;
            m.generations.remove("a");
            Ok(())
        })?;
        self.commit(&mut w, |w, m| {
            w.put_many("b", &[ItemId(99)], &vector(99, 9), None)?;
            m.generations
                .get_mut("b")
                .unwrap()
                .insert(99, vector(99, 9));
            Ok(())
        })?;
        w.collect_garbage().map_err(|_| Stop::Failed)?;
        if let Some(e) = w.take_gc_error() {
            drop(e);
            return Err(Stop::Failed);
        }
        Ok(())
    }
}

/// Runs the workload until step `fail_at` fails, loses power with `seed`'s choices, and
/// checks what the restarted store holds. Returns the steps the workload took.
fn crash_and_check(fail_at: u64, seed: u64) -> u64 {
    let fs = SimFs::default();
    fs.fail_after(fail_at);
    let dir = Arc::new(FsDirectory::new(fs.clone()));
    let store = Store::open(dir).expect("an empty store opens");
    let mut run = Run {
        store,
        acked: Model::default(),
    };
    let stop = match run.workload(seed) {
        Ok(()) => Stop::Done,
        Err(s) => s,
    };
    let steps = fs.steps();
    let acked = run.acked.clone();
    drop(run);

    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (fail_at << 20));
    let mut tails = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(31) ^ fail_at);
    let after = fs.power_loss(
        |k| rng.random_range(0..k),
        |len| match tails.random_range(0..4) {
            0 => Tail::Dropped,
            1 => Tail::Kept(len),
            2 => Tail::Kept(tails.random_range(0..=len)),
            _ => Tail::Torn(tails.random_range(0..=len)),
        },
    );
    let ctx = format!("power loss at step {fail_at} (seed {seed})");
    let dir: Arc<SimDirectory> = Arc::new(FsDirectory::new(after));
    let store = Store::open(dir.clone()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    let found = Model::read(&store);
    match &stop {
        Stop::CommitFailed(inflight) => assert!(
            found == acked || found == *inflight,
            "{ctx}: neither the acknowledged state nor the one in flight:\n\
             found {found:?}\nacked {acked:?}\ninflight {inflight:?}"
        ),
        Stop::Done | Stop::Failed => assert_eq!(found, acked, "{ctx}"),
    }
    // an index the store finds is whole, or refused as stale; never garbage
    for g in store.generations() {
        let snap = store.generation(&g).unwrap();
        if let Err(e) = Hnsw::load(dir.as_ref(), &snap, Metric::L2) {
            panic!("{ctx}: index of {g:?}: {e}");
        }
    }
    // and it takes new commits
    let mut w = store
        .writer()
        .unwrap_or_else(|e| panic!("{ctx}: writer: {e}"));
    if let Some(g) = found.current.clone() {
        w.put_many(&g, &[ItemId(1000)], &vector(1000, 1), None)
            .unwrap();
        w.commit()
            .unwrap_or_else(|e| panic!("{ctx}: commit after restart: {e}"));
        assert_eq!(
            store.snapshot().unwrap().get(ItemId(1000)),
            Some(vector(1000, 1))
        );
    }
    steps
}

#[test]
fn every_acknowledged_commit_survives_power_loss_at_every_step() {
    // the steps a whole run takes
    let total = crash_and_check(u64::MAX, 0);
    assert!(total > 100, "the workload took only {total} steps");
    // more with MOSAIC_POWER_LOSS_SEEDS=N
    let seeds: u64 = std::env::var("MOSAIC_POWER_LOSS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut runs = 0;
    for seed in 0..seeds {
        for fail_at in 0..=total {
            crash_and_check(fail_at, seed);
            runs += 1;
        }
    }
    println!("{runs} power losses over {total} steps x {seeds} seeds");
    assert!(runs >= 2000 || seeds < 16, "{runs} power losses");
}
