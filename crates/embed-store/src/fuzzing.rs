//! Entry points for fuzzing the file parsers: each takes arbitrary bytes as one kind of
//! file, parses them the way [`crate::Store::open`] and [`Hnsw::load`] do, and when they
//! are accepted reads back everything the file claims to hold. Whatever the bytes, each
//! returns — a typed error for a bad file — and never panics: a panic is a bug.
//!
//! The cargo-fuzz targets in `crates/embed-store/fuzz/` call these (see
//! docs/embed-store.md, "Fuzzing"); `tests/parsers.rs` runs them in CI on thousands of
//! seeded mutations of valid files, with the checksums made to match again so that the
//! checks behind them are reached too.

use std::sync::{Arc, OnceLock};

use crate::directory::{Directory, FileBytes, RamDirectory};
use crate::error::{Error, Result};
use crate::hnsw::{Hnsw, HnswParams, Scratch};
use crate::manifest::Manifest;
use crate::search::Filter;
use crate::segment::Segment;
use crate::store::{GenerationSpec, Snapshot, Store};
use crate::tombstones::Tombstones;
use crate::types::{ItemId, Metric, StorageType};

/// `bytes` as a segment file: on success every row's vector, id and attributes are read.
pub fn segment(bytes: &[u8]) -> Result<()> {
    let s = Segment::open("fuzz.seg", FileBytes::from_vec(bytes.to_vec()))?;
    let mut row = vec![0f32; s.dim()];
    for (r, &id) in s.ids().iter().enumerate() {
        s.read_vector(r, &mut row)?;
        let _ = s.attrs(r);
        if s.find(id) != Some(r) {
            return Err(Error::corrupt(
                "fuzz.seg",
                format!("id {id} of row {r} is not found at its row"),
            ));
        }
    }
    Ok(())
}

/// `bytes` as a manifest: on success it must encode and decode back to itself.
pub fn manifest(bytes: &[u8]) -> Result<()> {
    let m = Manifest::decode(bytes)?;
    let again = Manifest::decode(&m.encode())?;
    if again.encode() != m.encode() {
        return Err(Error::corrupt(
            "fuzz manifest",
            "does not survive re-encoding".to_string(),
        ));
    }
    Ok(())
}

/// `bytes` as the tombstone file of a segment of `rows` rows: on success every row's
/// mark is read.
pub fn tombstones(bytes: &[u8], rows: usize) -> Result<()> {
    let t = Tombstones::decode("fuzz.del", &FileBytes::from_vec(bytes.to_vec()), rows)?;
    let marked = (0..rows).filter(|&r| t.is_deleted(r)).count();
    if marked != t.count() {
        return Err(Error::corrupt(
            "fuzz.del",
            format!("{marked} rows marked, the count says {}", t.count()),
        ));
    }
    Ok(())
}

/// The snapshot [`hnsw_index`] loads indexes against: 300 items of dim 8 in two
/// segments, two deleted, one attribute each (made once per process).
pub fn index_snapshot() -> Result<&'static Snapshot> {
    static SNAP: OnceLock<std::result::Result<(Arc<Store>, Snapshot), String>> = OnceLock::new();
    let build = || -> Result<(Arc<Store>, Snapshot)> {
        let store = Store::open(Arc::new(RamDirectory::new()))?;
        let mut w = store.writer()?;
        w.create_generation(GenerationSpec::new("fuzz", 8, StorageType::F32).attrs(1))?;
        for part in 0..2u64 {
            let ids: Vec<ItemId> = (part * 150..(part + 1) * 150).map(ItemId).collect();
            let v: Vec<f32> = ids
                .iter()
                .flat_map(|i| (0..8).map(move |j| ((i.0 * 31 + j * 7) % 17) as f32 - 8.0))
                .collect();
            let attrs: Vec<u32> = ids.iter().map(|i| (i.0 % 3) as u32).collect();
            w.put_many("fuzz", &ids, &v, Some(&attrs))?;
            w.commit()?;
        }
        w.delete("fuzz", &[ItemId(3), ItemId(200)])?;
        w.set_current("fuzz")?;
        w.commit()?;
        drop(w);
        let snap = store.snapshot().ok_or_else(|| Error::Query {
            message: "no current generation after set_current".into(),
        })?;
        Ok((store, snap))
    };
    match SNAP.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok((_, snap)) => Ok(snap),
        Err(message) => Err(Error::Query {
            message: format!("the fuzzing snapshot: {message}"),
        }),
    }
}

/// A valid index file of [`index_snapshot`] (`quantized`: with int8 codes), to start
/// mutations from.
pub fn index_seed(quantized: bool) -> Result<Vec<u8>> {
    let snap = index_snapshot()?;
    let params = HnswParams {
        m: 4,
        ef_construction: 16,
        seed: 1,
    };
    let mut h = Hnsw::build(snap, Metric::L2, params)?;
    if quantized {
        h.quantize_int8();
    }
    let dir = RamDirectory::new();
    let name = h.save(&dir)?;
    Ok(dir.open_read(&name)?.as_slice().to_vec())
}

/// `bytes` as the L2 index file of [`index_snapshot`]: on success a few searches run on
/// it: plain, excluding ids, and filtered on the attribute.
pub fn hnsw_index(bytes: &[u8]) -> Result<()> {
    let snap = index_snapshot()?;
    let dir = RamDirectory::new();
    dir.atomic_write(
        &Hnsw::file_name(snap.generation(), snap.version(), Metric::L2),
        bytes,
    )?;
    let Some(h) = Hnsw::load(&dir, snap, Metric::L2)? else {
        return Err(Error::corrupt("fuzz index", "not found".to_string()));
    };
    let mut scratch = Scratch::new(h.len());
    let skip = [5u64, 6, 7];
    let odd = |a: &[u32]| a.first().is_some_and(|x| x % 2 == 1);
    let filters = [
        Filter::none(),
        Filter::none().exclude(&skip),
        Filter::none().with_attrs(&odd),
    ];
    for q in 0..4u32 {
        let query: Vec<f32> = (0..8).map(|j| ((q * 5 + j) % 11) as f32 - 5.0).collect();
        for f in &filters {
            h.search(snap, &query, 5, 12, f, &mut scratch)?;
        }
    }
    Ok(())
}

/// `bytes` as `.npy` import input: a little-endian u16 `n`, then `n` bytes of a vectors
/// file, then (when any bytes remain) an ids file; imported into a fresh generation of
/// dim 4 with [`crate::exchange::import_npy`].
pub fn npy(bytes: &[u8]) -> Result<()> {
    let n = bytes
        .get(..2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let rest = bytes.get(2..).unwrap_or(&[]);
    let (vectors, ids) = rest.split_at(n.min(rest.len()));
    let dir = std::env::temp_dir().join(format!("mosaic-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let (vp, ip) = (dir.join("vectors.npy"), dir.join("ids.npy"));
    std::fs::write(&vp, vectors).map_err(|e| Error::io(&vp, e))?;
    std::fs::write(&ip, ids).map_err(|e| Error::io(&ip, e))?;
    let store = Store::open(Arc::new(RamDirectory::new()))?;
    let mut w = store.writer()?;
    w.create_generation(GenerationSpec::new("fuzz", 4, StorageType::F16))?;
    w.commit()?;
    let ids = (!ids.is_empty()).then_some(ip.as_path());
    crate::exchange::import_npy(&mut w, "fuzz", &vp, ids)?;
    Ok(())
}

/// A version-1 `.npy` file with header `{'descr': descr, 'fortran_order': False,
/// 'shape': shape}` (padded as numpy pads it) and `data`: no check that they agree.
pub fn npy_file(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

/// A valid [`npy`] input: three 4-wide f32 vectors and their u64 ids.
pub fn npy_seed() -> Result<Vec<u8>> {
    let v: Vec<u8> = (0..12)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect();
    let ids: Vec<u8> = [7u64, 3, 11].iter().flat_map(|i| i.to_le_bytes()).collect();
    let vectors = npy_file("<f4", "(3, 4)", &v);
    let mut out = (vectors.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&vectors);
    out.extend_from_slice(&npy_file("<u8", "(3,)", &ids));
    Ok(out)
}
