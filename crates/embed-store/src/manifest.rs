//! The manifest (`meta.json`): which generations exist, their segments and tombstone
//! files, and which generation is current. Written whole with
//! [`crate::directory::Directory::atomic_write`] on every commit; readers never see a
//! half-written one. The JSON body is followed by a line `#crc32=XXXXXXXX` over it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::StorageType;

/// Manifest file name.
pub const MANIFEST: &str = "meta.json";
/// Manifest format version written by this build.
pub const VERSION: u32 = 1;

/// One segment of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Segment file name.
    pub file: String,
    /// Rows in the segment.
    pub count: usize,
    /// Tombstone file (rows deleted or replaced since), if any.
    pub deletes: Option<String>,
    /// Rows marked deleted.
    pub deleted: usize,
}

/// One generation: vectors of one dimension and storage type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMeta {
    /// Vector width.
    pub dim: usize,
    /// Storage type.
    pub storage: StorageType,
    /// u32 attributes per item.
    pub n_attrs: usize,
    /// Segments, oldest first.
    pub segments: Vec<SegmentMeta>,
    /// Content version: the opstamp of the last commit that changed this generation's
    /// rows (indexes built from it are keyed by it, so commits to other generations leave
    /// them valid). Manifests written before it existed read as the manifest's opstamp.
    #[serde(default)]
    pub version: u64,
}

impl GenerationMeta {
    /// Live items (rows not deleted).
    pub fn live(&self) -> usize {
        self.segments.iter().map(|s| s.count - s.deleted).sum()
    }
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format_version: u32,
    /// Number of commits so far.
    pub opstamp: u64,
    /// The generation readers get by default.
    pub current: Option<String>,
    /// Every generation by name.
    pub generations: BTreeMap<String, GenerationMeta>,
    /// Counter for new file names.
    pub next_file: u64,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            format_version: VERSION,
            opstamp: 0,
            current: None,
            generations: BTreeMap::new(),
            next_file: 1,
        }
    }
}

impl Manifest {
    /// Serialize with the checksum line.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_string_pretty(self).unwrap_or_default();
        format!("{body}\n#crc32={:08x}\n", crc32fast::hash(body.as_bytes())).into_bytes()
    }

    /// Parse and verify.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::corrupt(MANIFEST, m);
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        let (body, tail) = text
            .trim_end_matches('\n')
            .rsplit_once("\n#crc32=")
            .ok_or_else(|| bad("no checksum line".into()))?;
        let want = u32::from_str_radix(tail.trim(), 16)
            .map_err(|_| bad(format!("malformed checksum {tail:?}")))?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err(bad("checksum mismatch".into()));
        }
        let mut m: Manifest = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        if m.format_version > VERSION {
            return Err(Error::Version {
                file: MANIFEST.into(),
                found: m.format_version,
                supported: VERSION,
            });
        }
        for g in m.generations.values_mut() {
            if g.version == 0 {
                g.version = m.opstamp;
            }
        }
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Every field within the bounds the writer enforces: generation names and shapes as
    /// [`check_generation`] accepts them, plain file names named once, row counts that
    /// add up, versions not ahead of the manifest's opstamp.
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(c) = &self.current
            && !self.generations.contains_key(c)
        {
            return Err(format!("current generation {c:?} is not listed"));
        }
        let mut files = std::collections::HashSet::new();
        for (name, g) in &self.generations {
            check_generation(name, g.dim, g.n_attrs)
                .map_err(|m| format!("generation {name:?}: {m}"))?;
            if g.version > self.opstamp {
                return Err(format!(
                    "generation {name:?} has version {} past the manifest's opstamp {}",
                    g.version, self.opstamp
                ));
            }
            for s in &g.segments {
                for f in std::iter::once(&s.file).chain(&s.deletes) {
                    check_file_name(f).map_err(|m| format!("generation {name:?}: {m}"))?;
                    if !files.insert(f.as_str()) {
                        return Err(format!("file {f:?} is named twice"));
                    }
                }
                if s.count == 0 || s.deleted > s.count || (s.deleted > 0) != s.deletes.is_some() {
                    return Err(format!(
                        "segment {:?} of generation {name:?}: {} rows, {} deleted, tombstones {:?}",
                        s.file, s.count, s.deleted, s.deletes
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What every index file of `generation` at content `version` starts with (`hnsw-`,
/// the version, a hash of the name; the metric follows): garbage collection keeps the
/// files of each generation's current version.
pub fn index_file_prefix(generation: &str, version: u64) -> String {
    let h = crc32fast::hash(generation.as_bytes());
    format!("hnsw-{version:016x}-{h:08x}-")
}

/// Most attributes per item a generation may declare.
pub const MAX_ATTRS: usize = 1024;
/// Widest vector a generation may declare.
pub const MAX_DIM: usize = 65_536;

/// The rules every generation obeys, checked when it is created and whenever a manifest
/// is read: a name of 1..=200 printable characters, `dim` in 1..=[`MAX_DIM`], at most
/// [`MAX_ATTRS`] attributes.
pub fn check_generation(name: &str, dim: usize, n_attrs: usize) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err("names must be 1..=200 printable characters".into());
    }
    if dim == 0 || dim > MAX_DIM {
        return Err(format!("dim must be in 1..={MAX_DIM}, got {dim}"));
    }
    if n_attrs > MAX_ATTRS {
        return Err(format!(
            "at most {MAX_ATTRS} attributes per item, got {n_attrs}"
        ));
    }
    Ok(())
}

/// A file name the store may open: a plain name inside its directory (no separator, not
/// `.` or `..`, no control character, at most 255 bytes).
pub fn check_file_name(f: &str) -> std::result::Result<(), String> {
    if f.is_empty()
        || f.len() > 255
        || f == "."
        || f == ".."
        || f.contains(['/', '\\'])
        || f.chars().any(char::is_control)
    {
        return Err(format!("{f:?} is not a plain file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_any_flip_is_detected() {
        let mut m = Manifest::default();
        m.generations.insert(
            "pinclip-2026-11-20".into(),
            GenerationMeta {
                dim: 64,
                storage: StorageType::Int8,
                n_attrs: 2,
                segments: vec![SegmentMeta {
                    file: "seg-1.seg".into(),
                    count: 10,
                    deletes: None,
                    deleted: 0,
                }],
                version: 3,
            },
        );
        m.opstamp = 3;
        m.current = Some("pinclip-2026-11-20".into());
        let b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        // a manifest from before per-generation versions reads its opstamp as the version
        let legacy = String::from_utf8(b.clone()).unwrap();
        let body = legacy
            .rsplit_once("\n#crc32=")
            .unwrap()
            .0
            .replace(",\n      \"version\": 3", "");
        assert!(!body.contains("\"version\""));
        let legacy = format!("{body}\n#crc32={:08x}\n", crc32fast::hash(body.as_bytes()));
        assert_eq!(Manifest::decode(legacy.as_bytes()).unwrap(), m);
        for pos in 0..b.len() {
            let mut c = b.clone();
            c[pos] ^= 0x01;
            // a flip either breaks the checksum or the syntax; it never yields another manifest
            if let Ok(other) = Manifest::decode(&c) {
                assert_eq!(other, m, "flip at {pos} changed the manifest");
            }
        }
    }
}
