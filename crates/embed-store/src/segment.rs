//! Immutable segment files: one batch of vectors of one generation, sorted by id.
//!
//! Layout (little-endian, sections aligned to 64 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MOSAICSG` |
//! | 8 | 4 | format version (1) |
//! | 12 | 1 | storage type (1 f32, 2 f16, 3 int8) |
//! | 13 | 3 | zero |
//! | 16 | 4 | dim |
//! | 20 | 4 | attributes per item |
//! | 24 | 8 | count |
//! | 32 | 8 x 5 | offsets of ids, vectors, scales, attributes, end |
//! | 72 | 4 | CRC-32 of bytes 128..end |
//! | 76 | 4 | CRC-32 of bytes 0..76 |
//! | 128 | | ids (u64, ascending, unique), vectors, scales (int8 only, f32), attributes (u32) |

use half::f16;
use mosaic_durability::le;

use crate::directory::FileBytes;
use crate::error::{Error, Result};
use crate::types::StorageType;

#[cfg(not(target_endian = "little"))]
compile_error!("embed-store's file formats are little-endian and read in place");

/// Segment magic.
pub const MAGIC: &[u8; 8] = b"MOSAICSG";
/// Segment format version written by this build.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 128;
const ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// One row to write.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Item id.
    pub id: u64,
    /// The vector, `dim` values.
    pub vector: &'a [f32],
    /// `n_attrs` attribute values.
    pub attrs: &'a [u32],
}

/// Quantize one vector to int8 with a per-vector scale.
pub fn quantize_int8(v: &[f32], out: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Serialize rows (sorted here by id; ids must be unique) into segment bytes.
pub fn encode(storage: StorageType, dim: usize, n_attrs: usize, rows: &mut [Row<'_>]) -> Vec<u8> {
    rows.sort_unstable_by_key(|r| r.id);
    let n = rows.len();
    let ids_off = HEADER_LEN;
    let vec_off = align(ids_off + 8 * n);
    let scale_off = align(vec_off + n * dim * storage.value_bytes());
    let attr_off = align(
        scale_off
            + if storage == StorageType::Int8 {
                4 * n
            } else {
                0
            },
    );
    let end = attr_off + 4 * n * n_attrs;
    let mut b = vec![0u8; end];
    for (i, r) in rows.iter().enumerate() {
        b[ids_off + 8 * i..ids_off + 8 * i + 8].copy_from_slice(&r.id.to_le_bytes());
        match storage {
            StorageType::F32 => {
                let dst = &mut b[vec_off + i * dim * 4..vec_off + (i + 1) * dim * 4];
                dst.copy_from_slice(bytemuck::cast_slice(r.vector));
            }
            StorageType::F16 => {
                for (j, x) in r.vector.iter().enumerate() {
                    let o = vec_off + (i * dim + j) * 2;
                    b[o..o + 2].copy_from_slice(&f16::from_f32(*x).to_le_bytes());
                }
            }
            StorageType::Int8 => {
                let mut q = vec![0i8; dim];
                let s = quantize_int8(r.vector, &mut q);
                b[vec_off + i * dim..vec_off + (i + 1) * dim]
                    .copy_from_slice(bytemuck::cast_slice(&q));
                b[scale_off + 4 * i..scale_off + 4 * i + 4].copy_from_slice(&s.to_le_bytes());
            }
        }
        for (j, a) in r.attrs.iter().enumerate() {
            let o = attr_off + 4 * (i * n_attrs + j);
            b[o..o + 4].copy_from_slice(&a.to_le_bytes());
        }
    }
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12] = storage.code();
    b[16..20].copy_from_slice(&(dim as u32).to_le_bytes());
    b[20..24].copy_from_slice(&(n_attrs as u32).to_le_bytes());
    b[24..32].copy_from_slice(&(n as u64).to_le_bytes());
    for (k, off) in [ids_off, vec_off, scale_off, attr_off, end]
        .iter()
        .enumerate()
    {
        b[32 + 8 * k..40 + 8 * k].copy_from_slice(&(*off as u64).to_le_bytes());
    }
    let data_crc = crc32fast::hash(&b[HEADER_LEN..end]);
    b[72..76].copy_from_slice(&data_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&b[..76]);
    b[76..80].copy_from_slice(&header_crc.to_le_bytes());
    b
}

/// A validated, read-only segment.
#[derive(Debug, Clone)]
pub struct Segment {
    name: String,
    bytes: FileBytes,
    storage: StorageType,
    dim: usize,
    n_attrs: usize,
    count: usize,
    offs: [usize; 5],
}

impl Segment {
    /// Parse and fully verify (both checksums, layout, id order) the segment `name`.
    pub fn open(name: &str, bytes: FileBytes) -> Result<Self> {
        let b = bytes.as_slice();
        let bad = |m: String| Error::corrupt(name, m);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            )));
        }
        let mut r = le::Reader::new(name, &b[..HEADER_LEN]);
        if r.bytes(8, "magic")? != MAGIC {
            return Err(bad("bad magic (not a segment file)".into()));
        }
        let version = r.u32("version")?;
        let [code, ..] = r.array::<4>("storage type")?;
        let (dim, n_attrs) = (r.u32("dim")? as usize, r.u32("attributes")? as usize);
        let count = usize::try_from(r.u64("count")?).map_err(|_| bad("count overflows".into()))?;
        let mut offs = [0usize; 5];
        for o in offs.iter_mut() {
            *o = usize::try_from(r.u64("offset")?).map_err(|_| bad("offset overflows".into()))?;
        }
        let (data_crc, header_crc) = (r.u32("data checksum")?, r.u32("header checksum")?);
        if crc32fast::hash(&b[..76]) != header_crc {
            return Err(bad("header checksum mismatch".into()));
        }
        if b[80..HEADER_LEN].iter().any(|&x| x != 0) {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        if version > VERSION || version == 0 {
            return Err(Error::Version {
                file: name.into(),
                found: version,
                supported: VERSION,
            });
        }
        let storage = StorageType::from_code(code)
            .ok_or_else(|| bad(format!("unknown storage type code {code}")))?;
        // the layout must be exactly what encode() writes for these parameters
        // every step checked: a crafted header must not overflow the arithmetic
        let checked = |a: usize, m: usize| a.checked_mul(m);
        let after = |start: Option<usize>, len: Option<usize>| {
            start.zip(len).and_then(|(a, l)| a.checked_add(l))
        };
        let aligned = |n: Option<usize>| n.and_then(|n| n.checked_next_multiple_of(ALIGN));
        let expect_vec = aligned(after(Some(HEADER_LEN), checked(count, 8)));
        let vec_bytes = checked(count, dim).and_then(|x| checked(x, storage.value_bytes()));
        let expect_scale = aligned(after(expect_vec, vec_bytes));
        let scale_bytes = if storage == StorageType::Int8 {
            checked(count, 4)
        } else {
            Some(0)
        };
        let expect_attr = aligned(after(expect_scale, scale_bytes));
        let attr_bytes = checked(count, n_attrs).and_then(|x| checked(x, 4));
        let expect_end = after(expect_attr, attr_bytes);
        let expected = [
            Some(HEADER_LEN),
            expect_vec,
            expect_scale,
            expect_attr,
            expect_end,
        ];
        if expected.iter().zip(&offs).any(|(e, o)| *e != Some(*o)) || dim == 0 {
            return Err(bad(format!(
                "inconsistent layout: dim {dim}, count {count}, offsets {offs:?}"
            )));
        }
        if offs[4] != b.len() {
            return Err(bad(format!(
                "file is {} bytes, the header says {}",
                b.len(),
                offs[4]
            )));
        }
        if crc32fast::hash(&b[HEADER_LEN..offs[4]]) != data_crc {
            return Err(bad("data checksum mismatch".into()));
        }
        let seg = Self {
            name: name.into(),
            bytes,
            storage,
            dim,
            n_attrs,
            count,
            offs,
        };
        if seg.ids().windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("ids are not strictly ascending".into()));
        }
        Ok(seg)
    }

    /// File name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.count
    }
    /// Whether it has no row.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Storage type.
    pub fn storage(&self) -> StorageType {
        self.storage
    }
    /// Attributes per row.
    pub fn n_attrs(&self) -> usize {
        self.n_attrs
    }
    /// Bytes of the file.
    pub fn byte_len(&self) -> usize {
        self.offs[4]
    }

    fn section(&self, k: usize) -> &[u8] {
        &self.bytes.as_slice()[self.offs[k]..self.offs[k + 1]]
    }

    /// Ids, ascending.
    pub fn ids(&self) -> &[u64] {
        bytemuck::cast_slice(&self.section(0)[..8 * self.count])
    }

    /// Row of `id`, if present.
    pub fn find(&self, id: u64) -> Option<usize> {
        self.ids().binary_search(&id).ok()
    }

    /// All f32 vectors (F32 storage only), row-major.
    pub fn f32_data(&self) -> Option<&[f32]> {
        (self.storage == StorageType::F32)
            .then(|| bytemuck::cast_slice(&self.section(1)[..4 * self.count * self.dim]))
    }

    /// All f16 vectors (F16 storage only).
    pub fn f16_data(&self) -> Option<&[f16]> {
        (self.storage == StorageType::F16)
            .then(|| bytemuck::cast_slice(&self.section(1)[..2 * self.count * self.dim]))
    }

    /// All int8 codes and per-row scales (Int8 storage only).
    pub fn int8_data(&self) -> Option<(&[i8], &[f32])> {
        (self.storage == StorageType::Int8).then(|| {
            (
                bytemuck::cast_slice(&self.section(1)[..self.count * self.dim]),
                bytemuck::cast_slice(&self.section(2)[..4 * self.count]),
            )
        })
    }

    /// Decode row `row` into `out`, which must hold exactly `dim` values.
    pub fn read_vector(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let d = self.dim;
        if row >= self.count || out.len() != d {
            return Err(Error::Query {
                message: format!(
                    "read_vector(row {row}, buffer of {}) on segment {} with {} rows of dim {d}",
                    out.len(),
                    self.name,
                    self.count
                ),
            });
        }
        match self.storage {
            StorageType::F32 => {
                out.copy_from_slice(&self.f32_data().unwrap_or(&[])[row * d..(row + 1) * d])
            }
            StorageType::F16 => {
                let src = &self.f16_data().unwrap_or(&[])[row * d..(row + 1) * d];
                for (o, x) in out.iter_mut().zip(src) {
                    *o = x.to_f32();
                }
            }
            StorageType::Int8 => {
                let (q, s) = self.int8_data().unwrap_or((&[], &[]));
                let scale = s[row];
                for (o, x) in out.iter_mut().zip(&q[row * d..(row + 1) * d]) {
                    *o = *x as f32 * scale;
                }
            }
        }
        Ok(())
    }

    /// Attributes of `row` (empty past the last row).
    pub fn attrs(&self, row: usize) -> &[u32] {
        let all: &[u32] = bytemuck::cast_slice(self.section(3));
        all.get(row * self.n_attrs..(row + 1) * self.n_attrs)
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_storage_type_and_detect_every_flipped_byte() {
        for storage in [StorageType::F32, StorageType::F16, StorageType::Int8] {
            let vecs: Vec<Vec<f32>> = (0..5)
                .map(|i| (0..3).map(|j| (i * 3 + j) as f32 * 0.25 - 1.0).collect())
                .collect();
            let attrs: Vec<Vec<u32>> = (0..5).map(|i| vec![i, 100 + i]).collect();
            let mut rows: Vec<Row> = (0..5)
                .rev()
                .map(|i| Row {
                    id: 10 * i as u64 + 7,
                    vector: &vecs[i],
                    attrs: &attrs[i],
                })
                .collect();
            let bytes = encode(storage, 3, 2, &mut rows);
            let seg = Segment::open("s", FileBytes::from_vec(bytes.clone())).unwrap();
            assert_eq!(seg.ids(), &[7, 17, 27, 37, 47]);
            let mut out = [0f32; 3];
            for i in 0..5 {
                let row = seg.find(10 * i as u64 + 7).unwrap();
                seg.read_vector(row, &mut out).unwrap();
                let tol = match storage {
                    StorageType::F32 => 0.0,
                    StorageType::F16 => 1e-3,
                    StorageType::Int8 => 0.02,
                };
                for (a, b) in out.iter().zip(&vecs[i]) {
                    assert!((a - b).abs() <= tol, "{storage:?} {a} {b}");
                }
                assert_eq!(seg.attrs(row), &attrs[i][..]);
            }
            // misuse is an error, not a panic
            assert!(seg.read_vector(5, &mut out).is_err());
            assert!(seg.read_vector(0, &mut [0.0; 2]).is_err());
            assert!(seg.attrs(5).is_empty());
            for pos in 0..bytes.len() {
                let mut b = bytes.clone();
                b[pos] ^= 0x40;
                assert!(
                    Segment::open("s", FileBytes::from_vec(b)).is_err(),
                    "{storage:?}: flip at {pos} went unnoticed"
                );
            }
            assert!(
                Segment::open("s", FileBytes::from_vec(bytes[..bytes.len() - 1].to_vec())).is_err()
            );
        }
    }
}
