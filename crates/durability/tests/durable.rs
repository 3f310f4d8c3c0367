//! The durable write on a simulated file system: what survives a power loss at each
//! step of `atomic_write`, and what the simulation keeps or drops; concurrent writers of
//! one name on disk never share a temp file.

use std::sync::{Arc, Barrier};

use mosaic_durability::sim::{SimDirectory, SimFs, Tail};
use mosaic_durability::{Directory, FsDirectory, MmapDirectory};

/// Power loss after `steps` steps of writing `new` over `old`; `keep` entry changes
/// and `tail` for the unsynced bytes.
fn after(steps: u64, keep: usize, tail: Tail) -> Option<Vec<u8>> {
    let fs = SimFs::default();
    let dir = FsDirectory::new(fs.clone());
    dir.atomic_write("f", b"old").unwrap();
    fs.fail_after(fs.steps() + steps);
    let _ = dir.atomic_write("f", b"new contents");
    let lost = fs.power_loss(|k| keep.min(k - 1), |_| tail);
    let dir = FsDirectory::new(lost);
    dir.exists("f")
        .then(|| dir.open_read("f").unwrap().as_slice().to_vec())
}

#[test]
fn a_power_loss_at_any_step_leaves_the_old_file_or_the_new_one() {
    // the steps: create, write, sync file, rename, sync directory
    for steps in 0..=5 {
        for keep in 0..4 {
            for tail in [
                Tail::Dropped,
                Tail::Kept(usize::MAX),
                Tail::Kept(3),
                Tail::Torn(5),
            ] {
                let got = after(steps, keep, tail);
                assert!(
                    got.as_deref() == Some(b"old") || got.as_deref() == Some(b"new contents"),
                    "steps {steps}, keep {keep}, {tail:?}: {got:?}"
                );
            }
        }
    }
    // once the write returned, only the new file
    for keep in 0..4 {
        assert_eq!(
            after(6, keep, Tail::Dropped).as_deref(),
            Some(&b"new contents"[..])
        );
    }
}

#[test]
fn the_simulation_drops_what_was_not_synced() {
    let fs = SimFs::default();
    let dir: SimDirectory = FsDirectory::new(fs.clone());
    dir.atomic_write("kept", b"synced").unwrap();
    // a file renamed into place without a directory sync: gone when no change survives
    fs.fail_after(fs.steps() + 4);
    assert!(dir.atomic_write("late", b"x").is_err());
    assert!(dir.exists("late"), "the running process sees it");
    let lost = FsDirectory::new(fs.power_loss(|_| 0, |_| Tail::Dropped));
    assert!(!lost.exists("late"));
    assert_eq!(lost.open_read("kept").unwrap().as_slice(), b"synced");
    assert!(lost.list().unwrap().iter().all(|n| !n.ends_with(".tmp")));
}

#[test]
fn concurrent_saves_of_one_name_never_share_a_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path().join("new")).unwrap());
    let payload = |t: u8| vec![t; 1 << 20];
    let barrier = Arc::new(Barrier::new(2));
    let writers: Vec<_> = (1..=2u8)
        .map(|t| {
            let (dir, barrier) = (dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..40 {
                    dir.atomic_write("index.hnsw", &payload(t)).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let got = dir.open_read("index.hnsw").unwrap();
    assert!(got.as_slice() == payload(1) || got.as_slice() == payload(2));
    let left: Vec<String> = dir
        .list()
        .unwrap()
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[test]
fn replace_file_leaves_the_old_file_or_the_new_one_and_no_temp_file() {
    use mosaic_durability::{Error, replace_file};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    std::fs::write(&path, b"old").unwrap();
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // a writer that fails half-way: the old file stays, the temp file goes
    let failed: Result<(), Error> = replace_file(&path, |t| {
        std::fs::write(t, b"half").unwrap();
        Err(Error::Invalid("writer failed".into()))
    });
    assert!(failed.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(names(), ["model.safetensors"]);
    // a writer that succeeds replaces it whole
    replace_file::<Error>(&path, |t| {
        std::fs::write(t, b"new contents").map_err(|e| Error::io(t, e))
    })
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
    assert_eq!(names(), ["model.safetensors"]);
    // a path that names no file is refused before anything is written
    let err = replace_file::<Error>(tmp.path().join("..").as_path(), |_| Ok(())).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}
