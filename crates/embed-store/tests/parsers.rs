//! Seeded mutation fuzzing of every file parser, through the entry points the cargo-fuzz
//! targets use (`embed_store::fuzzing`): thousands of damaged copies of valid files, as
//! damaged ("raw") and with their checksums made to match again ("re-sealed", so that
//! the checks behind the checksums are reached). None may panic; a raw change to a
//! checksummed file is always refused; re-sealed ones hit the structural checks.

use std::collections::BTreeSet;
use std::sync::Arc;

use embed_store::fuzzing;
use embed_store::manifest::MANIFEST;
use embed_store::segment::{Row, encode};
use embed_store::tombstones::Tombstones;
use embed_store::{GenerationSpec, ItemId, RamDirectory, Result, StorageType, Store};

/// xorshift64*: a fixed stream per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that make length and offset arithmetic misbehave.
fn interesting(rng: &mut Rng, len: usize) -> u64 {
    let pick = [
        0,
        1,
        7,
        8,
        63,
        64,
        len as u64,
        len as u64 + 1,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        i64::MAX as u64,
        u64::MAX,
        u64::MAX - 7,
        rng.next(),
    ];
    pick[rng.below(pick.len())]
}

/// One to three random damages: bit flips, byte and word overwrites, truncation,
/// appended bytes, a span copied elsewhere.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                b[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                b[at] = rng.next() as u8;
            }
            2 if len >= 4 => {
                let at = rng.below(len - 3);
                let v = interesting(rng, len) as u32;
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 8 => {
                let at = rng.below(len - 7) & !7;
                let v = interesting(rng, len);
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            4 => b.truncate(rng.below(len + 1)),
            5 => {
                let extra = 1 + rng.below(64);
                b.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ if len > 2 => {
                let (from, to) = (rng.below(len), rng.below(len));
                let n = rng.below(len - from.max(to)).min(32);
                b.copy_within(from..from + n, to);
            }
            _ => b.push(rng.next() as u8),
        }
    }
}

/// What the fuzzing runs saw: outcomes per mode and the distinct error messages (their
/// first words) of re-sealed inputs.
#[derive(Default, Debug)]
struct Tally {
    raw_accepted: usize,
    raw_refused: usize,
    sealed_accepted: usize,
    sealed_refused: usize,
    sealed_errors: BTreeSet<String>,
}

/// With `MOSAIC_FUZZ_SEEDS=DIR`, writes the valid files as `DIR/<target>/seed-N`: the
/// starting corpus of the cargo-fuzz target of that name (docs/embed-store.md).
fn save_seeds(target: &str, seeds: &[Vec<u8>]) {
    let Some(root) = std::env::var_os("MOSAIC_FUZZ_SEEDS").filter(|_| !target.is_empty()) else {
        return;
    };
    let dir = std::path::Path::new(&root).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
    }
}

/// `rounds` raw and `rounds` re-sealed mutations of each of `seeds`, parsed by `parse`;
/// `raw_ok` decides whether an accepted raw mutation is legitimate (for checksummed
/// formats: never, unless the bytes are unchanged).
fn fuzz(
    target: &str,
    seeds: &[Vec<u8>],
    rounds: usize,
    seed: u64,
    parse: impl Fn(&[u8]) -> Result<()>,
    reseal: impl Fn(&mut Vec<u8>),
    raw_ok: impl Fn(&[u8], &[u8]) -> bool,
) -> Tally {
    let mut rng = Rng(seed);
    let mut t = Tally::default();
    save_seeds(target, seeds);
    for orig in seeds {
        parse(orig).unwrap_or_else(|e| panic!("a valid seed file is refused: {e}"));
        for _ in 0..rounds {
            let mut b = orig.clone();
            mutate(&mut rng, &mut b);
            match parse(&b) {
                Ok(()) => {
                    assert!(
                        b == *orig || raw_ok(orig, &b),
                        "a damaged file was accepted ({} bytes, was {})",
                        b.len(),
                        orig.len()
                    );
                    t.raw_accepted += 1;
                }
                Err(_) => t.raw_refused += 1,
            }
            reseal(&mut b);
            match parse(&b) {
                Ok(()) => t.sealed_accepted += 1,
                Err(e) => {
                    t.sealed_refused += 1;
                    t.sealed_errors.insert(kind(&e));
                }
            }
        }
    }
    t
}

/// An error's kind: its message without the file name and with digits masked.
fn kind(e: &embed_store::Error) -> String {
    let text = e.to_string();
    let text = text
        .split_once(": ")
        .map_or(text.as_str(), |(_, rest)| rest);
    let masked: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    masked
        .split_whitespace()
        .take(5)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error kinds seen past the checksums (messages naming neither a checksum nor a
/// truncated or misnamed file).
fn structural(t: &Tally) -> Vec<&String> {
    t.sealed_errors
        .iter()
        .filter(|e| !e.contains("checksum"))
        .collect()
}

fn crc_at(b: &mut [u8], at: usize, over: std::ops::Range<usize>) {
    let c = crc32fast::hash(&b[over]);
    b[at..at + 4].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn damaged_segments_are_refused_and_never_panic() {
    let vectors: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
    let attrs: Vec<u32> = (0..20).collect();
    let mut seeds = Vec::new();
    for (storage, n_attrs) in [
        (StorageType::F32, 2),
        (StorageType::F16, 0),
        (StorageType::Int8, 1),
    ] {
        let mut rows: Vec<Row> = (0..10)
            .map(|i| Row {
                id: 100 - i as u64 * 7,
                vector: &vectors[i * 4..(i + 1) * 4],
                attrs: &attrs[i * n_attrs..(i + 1) * n_attrs],
            })
            .collect();
        seeds.push(encode(storage, 4, n_attrs, &mut rows));
    }
    let reseal = |b: &mut Vec<u8>| {
        if b.len() >= 128 {
            let n = b.len();
            crc_at(b, 72, 128..n);
            crc_at(b, 76, 0..76);
        }
    };
    let t = fuzz(
        "segment",
        &seeds,
        1500,
        11,
        fuzzing::segment,
        reseal,
        |_, _| false,
    );
    println!("segments: {t:?}");
    assert!(t.raw_refused > 4000 && t.sealed_refused > 2000, "{t:?}");
    assert!(structural(&t).len() >= 8, "too few checks reached: {t:?}");
}

#[test]
fn damaged_manifests_are_refused_and_never_panic() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("a", 3, StorageType::F16).attrs(2))
        .unwrap();
    w.create_generation(GenerationSpec::new("b", 2, StorageType::Int8))
        .unwrap();
    w.put_many("a", &[ItemId(1), ItemId(9)], &[0.5; 6], Some(&[1, 2, 3, 4]))
        .unwrap();
    w.put_many("b", &[ItemId(4)], &[1.0, -1.0], None).unwrap();
    w.set_current("a").unwrap();
    w.commit().unwrap();
    w.delete("a", &[ItemId(9)]).unwrap();
    w.commit().unwrap();
    let seed = store
        .directory()
        .open_read(MANIFEST)
        .unwrap()
        .as_slice()
        .to_vec();
    let reseal = |b: &mut Vec<u8>| {
        let Ok(text) = std::str::from_utf8(b) else {
            return;
        };
        let Some((body, _)) = text.trim_end_matches('\n').rsplit_once("\n#crc32=") else {
            return;
        };
        let fixed = format!("{body}\n#crc32={:08x}\n", crc32fast::hash(body.as_bytes()));
        *b = fixed.into_bytes();
    };
    // whitespace after the checksum line is tolerated: the manifest must then be the same
    let same = |orig: &[u8], got: &[u8]| {
        let trim = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
        trim(orig).split_whitespace().collect::<String>()
            == trim(got).split_whitespace().collect::<String>()
    };
    let t = fuzz(
        "manifest",
        &[seed],
        4000,
        12,
        fuzzing::manifest,
        reseal,
        same,
    );
    println!("manifests: {t:?}");
    assert!(t.raw_refused > 3500, "{t:?}");
    assert!(structural(&t).len() >= 20, "too few checks reached: {t:?}");
}

#[test]
fn damaged_tombstone_files_are_refused_and_never_panic() {
    let mut seeds = Vec::new();
    for rows in [1usize, 8, 13, 64] {
        let mut t = Tombstones::empty(rows);
        for r in (0..rows).step_by(3) {
            t.delete(r);
        }
        seeds.push((rows, t.encode()));
    }
    let reseal = |b: &mut Vec<u8>| {
        if b.len() >= 24 {
            let n = b.len();
            crc_at(b, 12, 24..n);
        }
    };
    // the fuzz target reads the row count from the first two bytes
    let framed: Vec<Vec<u8>> = seeds
        .iter()
        .map(|(rows, seed)| [&(*rows as u16).to_le_bytes()[..], seed].concat())
        .collect();
    save_seeds("tombstones", &framed);
    let mut total = Tally::default();
    for (i, (rows, seed)) in seeds.iter().enumerate() {
        let parse = |b: &[u8]| fuzzing::tombstones(b, *rows);
        let t = fuzz(
            "",
            std::slice::from_ref(seed),
            1000,
            13 + i as u64,
            parse,
            reseal,
            |_, _| false,
        );
        total.raw_refused += t.raw_refused;
        total.sealed_accepted += t.sealed_accepted;
        total.sealed_refused += t.sealed_refused;
        total.sealed_errors.extend(t.sealed_errors);
    }
    println!("tombstones: {total:?}");
    assert!(total.raw_refused > 3500, "{total:?}");
    assert!(
        structural(&total).len() >= 4,
        "too few checks reached: {total:?}"
    );
}

/// Rewrites an index file around its (possibly changed) JSON header and data: the data
/// checksum in the header, the header length and the header checksum made to match.
fn reseal_index(b: &mut Vec<u8>, header: impl FnOnce(&mut serde_json::Value)) {
    if b.len() < 16 {
        return;
    }
    let hlen = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    let data_start = (20 + hlen).next_multiple_of(8);
    let (Some(json), Some(data)) = (b.get(16..16 + hlen), b.get(data_start..)) else {
        return;
    };
    let Ok(mut h) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    header(&mut h);
    if let Some(c) = h.get_mut("crc32") {
        *c = crc32fast::hash(data).into();
    }
    let json = serde_json::to_vec(&h).unwrap();
    let mut out = b[..12].to_vec();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
    out.resize(out.len().next_multiple_of(8), 0);
    out.extend_from_slice(data);
    *b = out;
}

#[test]
fn damaged_hnsw_indexes_are_refused_and_never_panic() {
    let seeds = vec![
        fuzzing::index_seed(false).unwrap(),
        fuzzing::index_seed(true).unwrap(),
    ];
    // raw and re-sealed byte damage
    let t = fuzz(
        "hnsw_index",
        &seeds,
        1200,
        14,
        fuzzing::hnsw_index,
        |b| reseal_index(b, |_| {}),
        |_, _| false,
    );
    println!("hnsw bytes: {t:?}");
    assert!(t.raw_refused > 2000, "{t:?}");
    assert!(structural(&t).len() >= 12, "too few checks reached: {t:?}");
    // re-sealed damage to the header's numbers (sizes, offsets, entry point, levels)
    let mut rng = Rng(15);
    let mut errors = BTreeSet::new();
    for seed in &seeds {
        for _ in 0..1500 {
            let mut b = seed.clone();
            let len = b.len();
            let v = interesting(&mut rng, len);
            let small = rng.below(40) as u64;
            let which = rng.below(9);
            let pick = rng.below(8);
            reseal_index(&mut b, |h| {
                let value = if pick < 4 { small } else { v };
                let key = [
                    "nodes",
                    "dim",
                    "m",
                    "m0",
                    "entry",
                    "max_level",
                    "opstamp",
                    "sections",
                    "segments",
                ][which];
                match (key, h.get_mut(key)) {
                    ("sections", Some(serde_json::Value::Array(s))) if !s.is_empty() => {
                        let i = pick % s.len();
                        if let Some(serde_json::Value::Array(e)) = s.get_mut(i) {
                            e[1 + pick % 2] = value.into();
                        }
                    }
                    ("segments", Some(serde_json::Value::Array(s))) => {
                        s.pop();
                    }
                    (_, Some(x)) => *x = value.into(),
                    _ => {}
                }
            });
            if let Err(e) = fuzzing::hnsw_index(&b) {
                errors.insert(kind(&e));
            }
        }
    }
    println!("hnsw header errors: {errors:#?}");
    assert!(errors.len() >= 6, "too few checks reached: {errors:?}");
}

/// An index whose checksums are valid but whose `upper_start` does not start at 0 (alone,
/// and with every entry and the `upper` section shifted to stay consistent) is refused
/// at load, not a panic at load or search.
#[test]
fn an_index_with_upper_start_not_at_zero_is_refused() {
    let seed = fuzzing::index_seed(false).unwrap();
    let hlen = u32::from_le_bytes([seed[12], seed[13], seed[14], seed[15]]) as usize;
    let data_start = (20 + hlen).next_multiple_of(8);
    let h: serde_json::Value = serde_json::from_slice(&seed[16..16 + hlen]).unwrap();
    let section = |name: &str| {
        let s = h["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == name)
            .unwrap();
        (
            s[1].as_u64().unwrap() as usize,
            s[2].as_u64().unwrap() as usize,
        )
    };
    let (off, n) = section("upper_start");
    let at = |i: usize| data_start + off + 4 * i;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    // the first node with upper levels, and where its first upper record starts
    let (levels, _) = section("levels");
    let first = (0..n - 1)
        .find(|&i| seed[data_start + levels + i] > 0)
        .unwrap();
    let record = u32_at(&seed, at(first)) as usize;
    let (upper, _) = section("upper");
    let nodes = h["nodes"].as_u64().unwrap() as u32;
    for shift_all in [false, true] {
        let mut b = seed.clone();
        for i in 0..if shift_all { n } else { 1 } {
            let v = u32_at(&b, at(i)) + 1;
            b[at(i)..at(i) + 4].copy_from_slice(&v.to_le_bytes());
        }
        if shift_all {
            // read one value late, that record's count is its first link slot: make it a
            // valid node id far past m, so a reader trusting it slices past the record
            let slot = data_start + upper + 4 * (record + 1);
            b[slot..slot + 4].copy_from_slice(&(nodes - 1).to_le_bytes());
        }
        reseal_index(&mut b, |h| {
            if shift_all {
                for s in h["sections"].as_array_mut().unwrap() {
                    if s[0] == "upper" {
                        s[2] = (s[2].as_u64().unwrap() + 1).into();
                    }
                }
            }
        });
        let e = fuzzing::hnsw_index(&b).unwrap_err();
        assert!(matches!(e, embed_store::Error::Corrupt { .. }), "{e}");
    }
}
