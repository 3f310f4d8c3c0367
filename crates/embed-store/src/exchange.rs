//! Import and export of a generation as `.npy` files (vectors `(N, d)` + ids `(N,)`) or
//! one safetensors file (a `vectors` tensor and an `ids` tensor), streamed so that files
//! larger than memory work: reads go chunk by chunk into the writer, which spills to
//! staged segments ([`Writer::set_flush_bytes`]); writes go row by row.
//!
//! An import is one transaction: it commits at the end, and on any error (bad dtype,
//! wrong width, NaN/Inf, duplicate id) it rolls back, so nothing of the file is committed.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::store::Snapshot;
use crate::types::ItemId;
use crate::writer::Writer;

/// Rows handed to the writer per call while importing.
pub const CHUNK_ROWS: usize = 8192;

/// Element types understood in `.npy` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NpyType {
    F32,
    F16,
    F64,
    U64,
    I64,
    U32,
    I32,
}

impl NpyType {
    fn parse(descr: &str) -> Option<Self> {
        Some(match descr {
            "<f4" => NpyType::F32,
            "<f2" => NpyType::F16,
            "<f8" => NpyType::F64,
            "<u8" => NpyType::U64,
            "<i8" => NpyType::I64,
            "<u4" => NpyType::U32,
            "<i4" => NpyType::I32,
            _ => return None,
        })
    }

    fn size(&self) -> usize {
        match self {
            NpyType::F16 => 2,
            NpyType::F32 | NpyType::U32 | NpyType::I32 => 4,
            NpyType::F64 | NpyType::U64 | NpyType::I64 => 8,
        }
    }

    fn is_float(&self) -> bool {
        matches!(self, NpyType::F32 | NpyType::F16 | NpyType::F64)
    }
}

/// A `.npy` file opened for streaming reads.
struct NpyReader {
    reader: BufReader<File>,
    ty: NpyType,
    shape: Vec<usize>,
}

fn npy_err(path: &Path, m: impl std::fmt::Display) -> Error {
    Error::batch(format!("{}: {m}", path.display()))
}

impl NpyReader {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut pre = [0u8; 8];
        r.read_exact(&mut pre).map_err(|e| Error::io(path, e))?;
        if &pre[..6] != b"\x93NUMPY" {
            return Err(npy_err(path, "not a .npy file"));
        }
        let hlen = match pre[6] {
            1 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b).map_err(|e| Error::io(path, e))?;
                u16::from_le_bytes(b) as usize
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                r.read_exact(&mut b).map_err(|e| Error::io(path, e))?;
                u32::from_le_bytes(b) as usize
            }
            v => return Err(npy_err(path, format!("unsupported .npy version {v}"))),
        };
        let file_len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let header_total = 8 + if pre[6] == 1 { 2 } else { 4 } + hlen;
        if header_total as u64 > file_len {
            return Err(npy_err(
                path,
                format!("header of {hlen} bytes is longer than the file ({file_len} bytes)"),
            ));
        }
        let mut h = vec![0u8; hlen];
        r.read_exact(&mut h).map_err(|e| Error::io(path, e))?;
        let h = String::from_utf8(h).map_err(|_| npy_err(path, "header is not text"))?;
        let value = |key: &str| -> Option<String> {
            let i = h.find(&format!("'{key}'"))?;
            let rest = h[i + key.len() + 2..]
                .trim_start()
                .strip_prefix(':')?
                .trim_start();
            Some(rest.to_string())
        };
        let descr = value("descr").ok_or_else(|| npy_err(path, "header has no descr"))?;
        let descr = descr
            .trim_start_matches('\'')
            .split('\'')
            .next()
            .unwrap_or("");
        let ty = NpyType::parse(descr)
            .ok_or_else(|| npy_err(path, format!("unsupported dtype {descr:?}")))?;
        if value("fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(npy_err(path, "Fortran-order arrays are not supported"));
        }
        let shape_txt = value("shape").ok_or_else(|| npy_err(path, "header has no shape"))?;
        let inner = shape_txt
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| npy_err(path, "malformed shape"))?;
        let shape = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| npy_err(path, format!("malformed shape ({inner})")))
            })
            .collect::<Result<Vec<_>>>()?;
        let expected = shape
            .iter()
            .try_fold(ty.size() as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| {
                npy_err(
                    path,
                    format!("shape {shape:?} of {descr} overflows 64 bits of bytes"),
                )
            })?;
        let data_len = file_len - header_total as u64;
        if data_len != expected {
            return Err(npy_err(
                path,
                format!("holds {data_len} data bytes, shape {shape:?} of {descr} needs {expected}"),
            ));
        }
        Ok(Self {
            reader: r,
            ty,
            shape,
        })
    }

    /// Read `n` float elements as f32.
    fn read_f32(&mut self, path: &Path, n: usize, out: &mut Vec<f32>) -> Result<()> {
        let mut buf = vec![0u8; n * self.ty.size()];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        out.clear();
        match self.ty {
            NpyType::F32 => out.extend(
                buf.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            NpyType::F16 => out.extend(
                buf.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            NpyType::F64 => out.extend(buf.chunks_exact(8).map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })),
            _ => return Err(npy_err(path, "expected floating-point vectors")),
        }
        Ok(())
    }

    fn read_ids(&mut self, path: &Path, n: usize, out: &mut Vec<u64>) -> Result<()> {
        let mut buf = vec![0u8; n * self.ty.size()];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        out.clear();
        for c in buf.chunks_exact(self.ty.size()) {
            let v = match self.ty {
                NpyType::U64 | NpyType::I64 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    let v = u64::from_le_bytes(a);
                    if self.ty == NpyType::I64 && (v as i64) < 0 {
                        return Err(npy_err(path, format!("negative id {}", v as i64)));
                    }
                    v
                }
                NpyType::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64,
                NpyType::I32 => {
                    let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    u64::try_from(v).map_err(|_| npy_err(path, format!("negative id {v}")))?
                }
                _ => return Err(npy_err(path, "ids must be an integer array")),
            };
            out.push(v);
        }
        Ok(())
    }
}

fn check_width(w: &Writer, generation: &str, d: usize, path: &Path) -> Result<()> {
    let want = w.dim_of(generation)?;
    if d != want {
        return Err(Error::batch(format!(
            "{}: vectors are {d} wide, generation {generation:?} has dim {want}",
            path.display()
        )));
    }
    Ok(())
}

fn check_fresh(w: &Writer) -> Result<()> {
    if w.has_pending() {
        return Err(Error::batch(
            "commit or roll back pending changes before importing",
        ));
    }
    Ok(())
}

/// Run `body` as one transaction: commit on success, roll back on error.
fn transaction(
    w: &mut Writer,
    body: impl FnOnce(&mut Writer) -> Result<usize>,
) -> Result<(usize, u64)> {
    check_fresh(w)?;
    match body(w).and_then(|n| Ok((n, w.commit()?))) {
        Ok(r) => Ok(r),
        Err(e) => {
            w.rollback();
            Err(e)
        }
    }
}

fn put_chunk(
    w: &mut Writer,
    generation: &str,
    seen: &mut HashSet<u64>,
    ids: &[u64],
    vecs: &[f32],
    first_row: usize,
) -> Result<()> {
    if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !seen.insert(**id)) {
        return Err(Error::batch(format!(
            "id {id} at row {} appears earlier in the file",
            first_row + i
        )));
    }
    let ids: Vec<ItemId> = ids.iter().map(|&i| ItemId(i)).collect();
    w.put_many(generation, &ids, vecs, None)
        .map_err(|e| match e {
            Error::Batch { message } => Error::batch(format!("rows {first_row}..: {message}")),
            other => other,
        })
}

/// Import `vectors` (`(N, d)` f32/f16/f64 `.npy`) with `ids` (`(N,)` u64/i64/u32/i32 `.npy`,
/// or row numbers when `None`) into `generation`, as one commit. Returns (rows, opstamp).
pub fn import_npy(
    w: &mut Writer,
    generation: &str,
    vectors: &Path,
    ids: Option<&Path>,
) -> Result<(usize, u64)> {
    transaction(w, |w| {
        let mut vr = NpyReader::open(vectors)?;
        if !vr.ty.is_float() || vr.shape.len() != 2 {
            return Err(npy_err(
                vectors,
                format!(
                    "expected a 2-D float array, found {:?} {:?}",
                    vr.ty, vr.shape
                ),
            ));
        }
        let (n, d) = (vr.shape[0], vr.shape[1]);
        check_width(w, generation, d, vectors)?;
        let mut ir = match ids {
            Some(p) => {
                let r = NpyReader::open(p)?;
                if r.ty.is_float() || r.shape != [n] {
                    return Err(npy_err(
                        p,
                        format!("expected {n} integer ids, found {:?} {:?}", r.ty, r.shape),
                    ));
                }
                Some((p, r))
            }
            None => None,
        };
        let mut seen = HashSet::with_capacity(n);
        let (mut vbuf, mut ibuf) = (Vec::new(), Vec::new());
        let mut row = 0;
        while row < n {
            let m = CHUNK_ROWS.min(n - row);
            vr.read_f32(vectors, m * d, &mut vbuf)?;
            match &mut ir {
                Some((p, r)) => r.read_ids(p, m, &mut ibuf)?,
                None => {
                    ibuf.clear();
                    ibuf.extend(row as u64..(row + m) as u64);
                }
            }
            put_chunk(w, generation, &mut seen, &ibuf, &vbuf, row)?;
            row += m;
        }
        Ok(n)
    })
}

fn st_err(path: &Path, m: impl std::fmt::Display) -> Error {
    Error::batch(format!("{}: {m}", path.display()))
}

/// Import a safetensors file holding `vectors` (`[N, d]` F32/F16/BF16) and `ids`
/// (`[N]` U64/I64/U32/I32) into `generation`, as one commit. Returns (rows, opstamp).
pub fn import_safetensors(w: &mut Writer, generation: &str, path: &Path) -> Result<(usize, u64)> {
    transaction(w, |w| {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a file this process does not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| Error::corrupt(path.display().to_string(), e.to_string()))?;
        let v = st
            .tensor("vectors")
            .map_err(|_| st_err(path, "no tensor named \"vectors\""))?;
        let i = st
            .tensor("ids")
            .map_err(|_| st_err(path, "no tensor named \"ids\""))?;
        let [n, d] = v.shape() else {
            return Err(st_err(
                path,
                format!("vectors must be 2-D, found shape {:?}", v.shape()),
            ));
        };
        let (n, d) = (*n, *d);
        check_width(w, generation, d, path)?;
        if i.shape() != [n] {
            return Err(st_err(
                path,
                format!("ids must have shape [{n}], found {:?}", i.shape()),
            ));
        }
        let vsize = match v.dtype() {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => return Err(st_err(path, format!("unsupported vectors dtype {other:?}"))),
        };
        let isize = match i.dtype() {
            Dtype::U64 | Dtype::I64 => 8,
            Dtype::U32 | Dtype::I32 => 4,
            other => return Err(st_err(path, format!("unsupported ids dtype {other:?}"))),
        };
        let (vdata, idata) = (v.data(), i.data());
        let mut seen = HashSet::with_capacity(n);
        let (mut vbuf, mut ibuf) = (Vec::new(), Vec::new());
        let mut row = 0;
        while row < n {
            let m = CHUNK_ROWS.min(n - row);
            let vb = &vdata[row * d * vsize..(row + m) * d * vsize];
            vbuf.clear();
            match v.dtype() {
                Dtype::F32 => vbuf.extend(
                    vb.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
                Dtype::F16 => vbuf.extend(
                    vb.chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
                ),
                _ => vbuf.extend(
                    vb.chunks_exact(2)
                        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                ),
            }
            ibuf.clear();
            for c in idata[row * isize..(row + m) * isize].chunks_exact(isize) {
                let id = match i.dtype() {
                    Dtype::U64 => u64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                    Dtype::I64 => {
                        let x = i64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                        u64::try_from(x).map_err(|_| st_err(path, format!("negative id {x}")))?
                    }
                    Dtype::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64,
                    _ => {
                        let x = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        u64::try_from(x).map_err(|_| st_err(path, format!("negative id {x}")))?
                    }
                };
                ibuf.push(id);
            }
            put_chunk(w, generation, &mut seen, &ibuf, &vbuf, row)?;
            row += m;
        }
        Ok(n)
    })
}

fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_txt = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(path).map_err(|e| Error::io(path, e))?,
    ))
}

fn finish(path: &Path, w: BufWriter<File>) -> Result<()> {
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Write the live items of `snap` as `vectors` (`(N, d)` `<f4`) and `ids` (`(N,)` `<u8`)
/// `.npy` files, ordered by id. Returns N.
pub fn export_npy(snap: &Snapshot, vectors: &Path, ids: &Path) -> Result<usize> {
    let rows = live_sorted(snap);
    let d = snap.dim();
    let mut vw = create(vectors)?;
    let mut iw = create(ids)?;
    vw.write_all(&npy_header("<f4", &[rows.len(), d]))
        .map_err(|e| Error::io(vectors, e))?;
    iw.write_all(&npy_header("<u8", &[rows.len()]))
        .map_err(|e| Error::io(ids, e))?;
    let mut buf = vec![0f32; d];
    for &(id, s, r) in &rows {
        snap.segments()[s].segment.read_vector(r, &mut buf)?;
        vw.write_all(bytemuck::cast_slice(&buf))
            .map_err(|e| Error::io(vectors, e))?;
        iw.write_all(&id.0.to_le_bytes())
            .map_err(|e| Error::io(ids, e))?;
    }
    finish(vectors, vw)?;
    finish(ids, iw)?;
    Ok(rows.len())
}

fn live_sorted(snap: &Snapshot) -> Vec<(ItemId, usize, usize)> {
    let mut rows: Vec<_> = snap.iter_live().collect();
    rows.sort_unstable_by_key(|r| r.0);
    rows
}

/// Write the live items of `snap` as one safetensors file (`ids` `[N]` U64 and `vectors`
/// `[N, d]` F32, ordered by id; the generation's name in the metadata). Returns N.
pub fn export_safetensors(snap: &Snapshot, path: &Path) -> Result<usize> {
    let rows = live_sorted(snap);
    let (n, d) = (rows.len(), snap.dim());
    let header = serde_json::json!({
        "__metadata__": {"generation": snap.generation()},
        "ids": {"dtype": "U64", "shape": [n], "data_offsets": [0, 8 * n]},
        "vectors": {"dtype": "F32", "shape": [n, d], "data_offsets": [8 * n, 8 * n + 4 * n * d]},
    })
    .to_string();
    let mut h = header.into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut w = create(path)?;
    w.write_all(&(h.len() as u64).to_le_bytes())
        .map_err(|e| Error::io(path, e))?;
    w.write_all(&h).map_err(|e| Error::io(path, e))?;
    for &(id, _, _) in &rows {
        w.write_all(&id.0.to_le_bytes())
            .map_err(|e| Error::io(path, e))?;
    }
    let mut buf = vec![0f32; d];
    for &(_, s, r) in &rows {
        snap.segments()[s].segment.read_vector(r, &mut buf)?;
        w.write_all(bytemuck::cast_slice(&buf))
            .map_err(|e| Error::io(path, e))?;
    }
    finish(path, w)?;
    Ok(n)
}
