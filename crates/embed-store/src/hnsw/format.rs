//! The index file: one write of a JSON header (format, version, the snapshot it was
//! built from, section offsets, a checksum) and the blocks it names; loading maps the
//! blocks in place and checks every section against the header and the snapshot.

use super::*;
use mosaic_durability::le;

const INDEX_MAGIC: &[u8; 8] = b"MOSAICHN";
/// 3: a checksum over the header (2: level-0 records hold the node's vector; 1: vectors
/// in their own section).
const INDEX_VERSION: u32 = 3;

/// The JSON header of an index file.
#[derive(Debug, Serialize, Deserialize)]
struct IndexHeader {
    format: String,
    version: u32,
    generation: String,
    /// The generation's content version (the field kept its first name: indexes saved
    /// before versions existed hold the opstamp, which legacy manifests read as version).
    opstamp: u64,
    metric: Metric,
    dim: usize,
    m: usize,
    m0: usize,
    nodes: usize,
    entry: u32,
    max_level: usize,
    quantized: bool,
    /// The segment names of the snapshot, in order.
    segments: Vec<String>,
    /// (name, byte offset from the data start, element count)
    sections: Vec<(String, usize, usize)>,
    crc32: u32,
}

impl Hnsw {
    /// Name of the file holding the index of `generation` at content `version`
    /// ([`Snapshot::version`]) for `metric` (generation names may hold any printable
    /// character, so they are hashed; the header keeps the full name).
    pub fn file_name(generation: &str, version: u64, metric: Metric) -> String {
        let tag = match metric {
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cos",
            Metric::L2 => "l2",
        };
        format!("{}{tag}.hnsw", Self::file_prefix(generation, version))
    }

    /// What every index file of `generation` at `version` starts with, whatever its
    /// metric.
    pub fn file_prefix(generation: &str, version: u64) -> String {
        crate::manifest::index_file_prefix(generation, version)
    }

    /// Write the index into `dir` (beside the store's segments) atomically, as a JSON
    /// header and 8-byte-aligned sections with a CRC32; returns the file name.
    pub fn save(&self, dir: &dyn Directory) -> Result<String> {
        fn push<T: Pod>(
            data: &mut Vec<u8>,
            sections: &mut Vec<(String, usize, usize)>,
            name: &str,
            v: &[T],
        ) {
            data.resize(data.len().next_multiple_of(8), 0);
            sections.push((name.to_string(), data.len(), v.len()));
            data.extend_from_slice(bytemuck::cast_slice(v));
        }
        let mut data = Vec::new();
        let mut sections = Vec::new();
        if let Some((codes, scales)) = &self.int8 {
            push(&mut data, &mut sections, "codes", codes);
            push(&mut data, &mut sections, "scales", scales);
        }
        push(&mut data, &mut sections, "ids", &self.ids);
        push(&mut data, &mut sections, "rows", &self.rows);
        push(&mut data, &mut sections, "levels", &self.levels);
        push(&mut data, &mut sections, "level0", &self.level0);
        push(&mut data, &mut sections, "upper", &self.upper);
        push(&mut data, &mut sections, "upper_start", &self.upper_start);
        let header = IndexHeader {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            generation: self.built_from.0.clone(),
            opstamp: self.built_from.1,
            metric: self.metric,
            dim: self.dim,
            m: self.m,
            m0: self.m0,
            nodes: self.len(),
            entry: self.entry,
            max_level: self.max_level,
            quantized: self.int8.is_some(),
            segments: self.segments.clone(),
            sections,
            crc32: crc32fast::hash(&data),
        };
        let json = serde_json::to_vec(&header)
            .map_err(|e| Error::corrupt("hnsw index", format!("header: {e}")))?;
        let mut file = Vec::with_capacity(16 + json.len() + 12 + data.len());
        file.extend_from_slice(INDEX_MAGIC);
        file.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        file.extend_from_slice(&(json.len() as u32).to_le_bytes());
        file.extend_from_slice(&json);
        file.extend_from_slice(&crc32fast::hash(&file).to_le_bytes());
        file.resize(file.len().next_multiple_of(8), 0);
        file.extend_from_slice(&data);
        let name = Self::file_name(&self.built_from.0, self.built_from.1, self.metric);
        dir.atomic_write(&name, &file)?;
        Ok(name)
    }

    /// Open the index saved for `snap` and `metric`, if there is one. With an
    /// [`crate::MmapDirectory`] the blocks are views of the mapped file (no copy). The
    /// whole file is verified (CRC, section sizes, every link in range) before use.
    pub fn load(dir: &dyn Directory, snap: &Snapshot, metric: Metric) -> Result<Option<Self>> {
        let name = Self::file_name(snap.generation(), snap.version(), metric);
        if !dir.exists(&name) {
            return Ok(None);
        }
        let h = Self::open_bytes(&name, dir.open_read(&name)?)?;
        if (h.built_from.0.as_str(), h.built_from.1, h.metric)
            != (snap.generation(), snap.version(), metric)
        {
            return Err(Error::corrupt(
                &name,
                format!(
                    "holds the index of {:?} at version {} ({:?})",
                    h.built_from.0, h.built_from.1, h.metric
                ),
            ));
        }
        // searches read the snapshot's rows by these values without further checks
        let segs = snap.segments();
        if h.segments != segment_names(snap) || h.dim != snap.dim() {
            return Err(Error::corrupt(
                &name,
                "names other segments or another dimension than its snapshot".to_string(),
            ));
        }
        if let Some(i) = h.rows.iter().position(|&[s, r]| {
            segs.get(s as usize)
                .is_none_or(|ls| r as usize >= ls.segment.len())
        }) {
            return Err(Error::corrupt(
                &name,
                format!("node {i} points past its segment's rows"),
            ));
        }
        Ok(Some(h))
    }

    fn open_bytes(name: &str, bytes: FileBytes) -> Result<Self> {
        let bad = |m: String| Error::corrupt(name, m);
        let b = bytes.as_slice();
        if b.len() < 16 || &b[..8] != INDEX_MAGIC {
            return Err(bad("not an HNSW index file".into()));
        }
        let mut r = le::Reader::new(name, &b[8..16]);
        let version = r.u32("version")?;
        if version != INDEX_VERSION {
            return Err(Error::Version {
                file: name.to_string(),
                found: version,
                supported: INDEX_VERSION,
            });
        }
        let hlen = r.u32("header length")? as usize;
        let (json_end, data_start) = (16 + hlen, (20 + hlen).next_multiple_of(8));
        let (Some(json), Some(hcrc), Some(pad), Some(data)) = (
            b.get(16..json_end),
            b.get(json_end..json_end + 4),
            b.get(json_end + 4..data_start),
            b.get(data_start..),
        ) else {
            return Err(bad("header is truncated".into()));
        };
        if crc32fast::hash(&b[..json_end]).to_le_bytes() != hcrc || pad.iter().any(|&x| x != 0) {
            return Err(bad("header checksum mismatch".into()));
        }
        let h: IndexHeader =
            serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
        if h.format != INDEX_FORMAT {
            return Err(bad(format!("format {:?}", h.format)));
        }
        if crc32fast::hash(data) != h.crc32 {
            return Err(bad("checksum mismatch".into()));
        }
        let n = h.nodes;
        if n > b.len() / 8 || h.dim == 0 || h.dim > 1 << 20 || h.m > 4096 || h.m0 > 8192 {
            return Err(bad(format!(
                "implausible header: {n} nodes, dim {}, m {}, m0 {}",
                h.dim, h.m, h.m0
            )));
        }
        let section = |what: &str, want: usize| -> Result<usize> {
            let (_, off, len) = h
                .sections
                .iter()
                .find(|s| s.0 == what)
                .ok_or_else(|| bad(format!("section {what} is missing")))?;
            if *len != want {
                return Err(bad(format!(
                    "section {what} has {len} values, expected {want}"
                )));
            }
            data_start
                .checked_add(*off)
                .ok_or_else(|| bad(format!("section {what} is out of bounds")))
        };
        let int8 = if h.quantized {
            Some((
                Block::mapped(&bytes, section("codes", n * h.dim)?, n * h.dim, "codes")?,
                Block::mapped(&bytes, section("scales", n)?, n, "scales")?,
            ))
        } else {
            None
        };
        let ids: Block<u64> = Block::mapped(&bytes, section("ids", n)?, n, "ids")?;
        let rows: Block<[u32; 2]> = Block::mapped(&bytes, section("rows", n)?, n, "rows")?;
        let levels: Block<u8> = Block::mapped(&bytes, section("levels", n)?, n, "levels")?;
        let stride = 1 + h.m0 + if h.quantized { 0 } else { h.dim };
        let l0_len = n * stride;
        let level0: Block<u32> =
            Block::mapped(&bytes, section("level0", l0_len)?, l0_len, "level0")?;
        let upper_start: Block<u32> =
            Block::mapped(&bytes, section("upper_start", n + 1)?, n + 1, "upper_start")?;
        let up_len = upper_start.last().copied().unwrap_or(0) as usize;
        let upper: Block<u32> = Block::mapped(&bytes, section("upper", up_len)?, up_len, "upper")?;
        // structure checks: searches index by these values without further checks
        if let Some(&s) = upper_start.first()
            && s != 0
        {
            return Err(bad(format!("upper_start[0] is {s}, not 0")));
        }
        if rows.iter().any(|&[s, _]| s as usize >= h.segments.len()) {
            return Err(bad("a node names a segment the header does not list".into()));
        }
        if n > 0 && h.entry as usize >= n {
            return Err(bad(format!("entry node {} of {n}", h.entry)));
        }
        for i in 0..n {
            let l = levels[i] as usize;
            if l > h.max_level
                || upper_start[i + 1].checked_sub(upper_start[i]) != Some((l * (1 + h.m)) as u32)
            {
                return Err(bad(format!("node {i}: inconsistent levels")));
            }
        }
        let check_records = |block: &[u32], stride: usize, cap: usize| -> Result<()> {
            for rec in block.chunks_exact(stride) {
                let c = rec[0] as usize;
                if c > cap || rec[1..1 + c].iter().any(|&x| x as usize >= n) {
                    return Err(bad("a link record is out of range".into()));
                }
            }
            Ok(())
        };
        check_records(&level0, stride, h.m0)?;
        check_records(&upper, 1 + h.m, h.m)?;
        // an upper-level link must lead to a node that exists on that level
        for i in 0..n {
            for l in 1..=levels[i] as usize {
                // in range and record-aligned by the checks above; looked up, not
                // indexed, all the same
                let st = upper_start[i] as usize + (l - 1) * (1 + h.m);
                let links = upper
                    .get(st..st + 1 + h.m)
                    .and_then(|rec| rec.get(1..1 + rec[0] as usize))
                    .ok_or_else(|| bad(format!("node {i}: level {l} record out of range")))?;
                if links
                    .iter()
                    .any(|&x| levels.get(x as usize).is_none_or(|&lx| (lx as usize) < l))
                {
                    return Err(bad(format!("node {i} links below its level {l}")));
                }
            }
        }
        if n > 0 && levels[h.entry as usize] as usize != h.max_level {
            return Err(bad("the entry node is not on the top level".into()));
        }
        Ok(Self {
            dim: h.dim,
            metric: h.metric,
            m: h.m,
            m0: h.m0,
            int8,
            ids,
            rows,
            levels,
            level0,
            stride,
            upper,
            upper_start,
            entry: h.entry,
            max_level: h.max_level,
            built_from: (h.generation, h.opstamp),
            segments: h.segments,
        })
    }
}
