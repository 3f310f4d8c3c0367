//! Tombstone files: which rows of one immutable segment are deleted (or replaced by a
//! newer row). A new file is written whenever the set grows; segments never change.
//!
//! Layout: magic `MOSAICDL`, version u32, CRC-32 of the bitset u32, rows u64, then the
//! bitset (bit r of byte r/8 = row r deleted).

use mosaic_durability::le;

use crate::directory::FileBytes;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"MOSAICDL";
const VERSION: u32 = 1;
const HEADER: usize = 24;

/// Deleted rows of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstones {
    bits: Vec<u8>,
    rows: usize,
    count: usize,
}

impl Tombstones {
    /// Nothing deleted in a segment of `rows` rows.
    pub fn empty(rows: usize) -> Self {
        Self {
            bits: vec![0; rows.div_ceil(8)],
            rows,
            count: 0,
        }
    }

    /// Whether row `r` is deleted.
    #[inline]
    pub fn is_deleted(&self, r: usize) -> bool {
        self.bits[r / 8] & (1 << (r % 8)) != 0
    }

    /// Mark row `r`; returns whether it was live.
    pub fn delete(&mut self, r: usize) -> bool {
        let was_live = !self.is_deleted(r);
        self.bits[r / 8] |= 1 << (r % 8);
        self.count += was_live as usize;
        was_live
    }

    /// Rows deleted.
    pub fn count(&self) -> usize {
        self.count
    }

    /// File bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.bits.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&self.bits).to_le_bytes());
        b.extend_from_slice(&(self.rows as u64).to_le_bytes());
        b.extend_from_slice(&self.bits);
        b
    }

    /// Parse and verify a tombstone file for a segment of `rows` rows.
    pub fn decode(name: &str, bytes: &FileBytes, rows: usize) -> Result<Self> {
        let b = bytes.as_slice();
        let bad = |m: String| Error::corrupt(name, m);
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err(bad("not a tombstone file".into()));
        }
        let mut r = le::Reader::new(name, &b[8..HEADER]);
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(Error::Version {
                file: name.into(),
                found: version,
                supported: VERSION,
            });
        }
        let (crc, file_rows) = (r.u32("checksum")?, r.u64("rows")?);
        if file_rows != rows as u64 || b.len() != HEADER + rows.div_ceil(8) {
            return Err(bad(format!(
                "covers {file_rows} rows in {} bytes, the segment has {rows}",
                b.len()
            )));
        }
        let bits = b[HEADER..].to_vec();
        if crc32fast::hash(&bits) != crc {
            return Err(bad("checksum mismatch".into()));
        }
        if !rows.is_multiple_of(8) && bits.last().is_some_and(|l| l >> (rows % 8) != 0) {
            return Err(bad("bits set past the last row".into()));
        }
        let count = bits.iter().map(|x| x.count_ones() as usize).sum();
        Ok(Self { bits, rows, count })
    }
}
