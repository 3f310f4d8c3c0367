//! The one snapshot format of the taste graph: a safetensors file whose tensors hold the
//! arrays (embeddings, optimizer moments, graph arrays, events) and whose header
//! metadata holds a serde JSON meta (the scalars), the snapshot's kind and format
//! version, and a crc32 over the meta and every tensor (safetensors has no checksum of
//! its own). Written in one atomic write (durability's [`Directory::atomic_write`]), so a
//! crash leaves the previous snapshot whole; read back with every size checked against
//! what the meta says before anything is allocated.
//!
//! Header metadata keys: `mosaic.kind` (e.g. `trainer`), `mosaic.version`, `mosaic.meta`
//! (the JSON), `mosaic.crc` (crc32, decimal, of the meta's bytes then each tensor's name
//! and little-endian data, tensors in name order).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use mosaic_durability::{Directory, MmapDirectory};
use safetensors::{Dtype, SafeTensors, View};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

const KIND: &str = "mosaic.kind";
const VERSION: &str = "mosaic.version";
const META: &str = "mosaic.meta";
const CRC: &str = "mosaic.crc";

/// One array of a snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    U8(&'a [u8]),
}

/// A named array as safetensors writes it (one dimension).
struct Tensor<'a> {
    data: Data<'a>,
    shape: [usize; 1],
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::U64(v) => v.len(),
            Data::U8(v) => v.len(),
        }
    }

    /// The little-endian bytes.
    fn bytes(&self) -> Cow<'_, [u8]> {
        fn le<T: bytemuck::Pod, const N: usize>(
            v: &[T],
            to: impl Fn(&T) -> [u8; N],
        ) -> Cow<'_, [u8]> {
            if cfg!(target_endian = "little") {
                Cow::Borrowed(bytemuck::cast_slice(v))
            } else {
                Cow::Owned(v.iter().flat_map(to).collect())
            }
        }
        match self {
            Data::F32(v) => le(v, |x| x.to_le_bytes()),
            Data::U32(v) => le(v, |x| x.to_le_bytes()),
            Data::U64(v) => le(v, |x| x.to_le_bytes()),
            Data::U8(v) => Cow::Borrowed(v),
        }
    }
}

impl View for &Tensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.data {
            Data::F32(_) => Dtype::F32,
            Data::U32(_) => Dtype::U32,
            Data::U64(_) => Dtype::U64,
            Data::U8(_) => Dtype::U8,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        self.data.bytes()
    }
    fn data_len(&self) -> usize {
        self.data.len()
            * match self.data {
                Data::U64(_) => 8,
                Data::U8(_) => 1,
                _ => 4,
            }
    }
}

fn checksum<'a>(meta: &str, tensors: impl Iterator<Item = (&'a str, Cow<'a, [u8]>)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(meta.as_bytes());
    for (name, data) in tensors {
        h.update(name.as_bytes());
        h.update(&data);
    }
    h.finalize()
}

/// The snapshot file of `kind` (format `version`) holding `meta` and `tensors`.
pub(crate) fn encode<M: Serialize>(
    kind: &str,
    version: u32,
    meta: &M,
    tensors: &[(&str, Data<'_>)],
) -> Result<Vec<u8>> {
    let json = serde_json::to_string(meta).map_err(|e| Error::Config {
        message: format!("{kind} snapshot meta: {e}"),
    })?;
    let mut sorted: Vec<(&str, Tensor<'_>)> = tensors
        .iter()
        .map(|&(n, data)| {
            let shape = [data.len()];
            (n, Tensor { data, shape })
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let crc = checksum(&json, sorted.iter().map(|(n, t)| (*n, t.data.bytes())));
    let info = HashMap::from([
        (KIND.to_string(), kind.to_string()),
        (VERSION.to_string(), version.to_string()),
        (META.to_string(), json),
        (CRC.to_string(), crc.to_string()),
    ]);
    safetensors::serialize(sorted.iter().map(|(n, t)| (*n, t)), Some(info)).map_err(|e| {
        Error::Config {
            message: format!("{kind} snapshot: {e}"),
        }
    })
}

/// A snapshot read back: its meta, format version and arrays.
pub(crate) struct Snapshot<'a, M> {
    pub(crate) meta: M,
    file: PathBuf,
    tensors: SafeTensors<'a>,
}

/// Decodes snapshot `bytes` (from `file`) of `kind` in a version of `versions`: the
/// metadata, the checksum and the meta checked.
pub(crate) fn decode<'a, M: DeserializeOwned>(
    file: &Path,
    bytes: &'a [u8],
    kind: &str,
    versions: RangeInclusive<u32>,
) -> Result<Snapshot<'a, M>> {
    let corrupt = |message: String| Error::Corrupt {
        path: file.to_path_buf(),
        offset: 0,
        message,
    };
    let tensors =
        SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("not a snapshot: {e}")))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("not a snapshot: {e}")))?;
    let info = header.metadata().as_ref();
    let get = |key: &str| {
        info.and_then(|m| m.get(key))
            .ok_or_else(|| corrupt(format!("no {key} in the header: not a Mosaic snapshot")))
    };
    let found = get(KIND)?;
    if found != kind {
        return Err(corrupt(format!("a {found:?} snapshot, expected {kind:?}")));
    }
    let version: u32 = get(VERSION)?
        .parse()
        .map_err(|_| corrupt(format!("{VERSION} is not a number")))?;
    if !versions.contains(&version) {
        return Err(corrupt(format!(
            "{kind} snapshot format {version}, this build reads {} to {}",
            versions.start(),
            versions.end()
        )));
    }
    let json = get(META)?;
    let mut names: Vec<&str> = tensors.names();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for n in &names {
        let view = tensors
            .tensor(n)
            .map_err(|e| corrupt(format!("tensor {n}: {e}")))?;
        views.push((*n, Cow::Borrowed(view.data())));
    }
    let crc = checksum(json, views.into_iter());
    if get(CRC)?.parse::<u32>().ok() != Some(crc) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let meta = serde_json::from_str(json).map_err(|e| corrupt(format!("{kind} meta: {e}")))?;
    Ok(Snapshot {
        meta,
        file: file.to_path_buf(),
        tensors,
    })
}

impl<M> Snapshot<'_, M> {
    fn raw(&self, name: &str, dtype: Dtype, len: usize) -> Result<&[u8]> {
        let corrupt = |message: String| Error::Corrupt {
            path: self.file.clone(),
            offset: 0,
            message: format!("tensor {name}: {message}"),
        };
        let t = self
            .tensors
            .tensor(name)
            .map_err(|_| corrupt("missing".into()))?;
        if t.dtype() != dtype || t.shape() != [len] {
            return Err(corrupt(format!(
                "{:?} of shape {:?}, expected {dtype:?} of shape [{len}]",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data())
    }

    /// Array `name`, which must be `len` f32s.
    pub(crate) fn f32(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let b = self.raw(name, Dtype::F32, len)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Array `name`, which must be `len` u32s.
    pub(crate) fn u32(&self, name: &str, len: usize) -> Result<Vec<u32>> {
        let b = self.raw(name, Dtype::U32, len)?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Array `name`, which must be `len` u64s.
    pub(crate) fn u64(&self, name: &str, len: usize) -> Result<Vec<u64>> {
        let b = self.raw(name, Dtype::U64, len)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// Array `name`, which must be `len` bytes.
    pub(crate) fn u8(&self, name: &str, len: usize) -> Result<Vec<u8>> {
        Ok(self.raw(name, Dtype::U8, len)?.to_vec())
    }

    /// The length of array `name` (to size what the meta does not say).
    pub(crate) fn len_of(&self, name: &str) -> Result<usize> {
        let t = self.tensors.tensor(name).map_err(|_| Error::Corrupt {
            path: self.file.clone(),
            offset: 0,
            message: format!("tensor {name}: missing"),
        })?;
        Ok(t.shape().iter().product())
    }
}

/// The directory of `path` and its file name.
fn split(path: &Path) -> Result<(MmapDirectory, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config {
            message: format!("{}: not a file path", path.display()),
        })?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = MmapDirectory::open(parent.unwrap_or(Path::new(".")))?;
    Ok((dir, name.to_string()))
}

/// Writes `bytes` to `path` atomically (a temp file of its own, synced, renamed over
/// `path`, the directory synced: durability's one durable write).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    Ok(dir.atomic_write(&name, bytes)?)
}

/// The bytes of the file at `path` (mapped).
pub(crate) fn read_file(path: &Path) -> Result<mosaic_durability::FileBytes> {
    if !path.is_file() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        return Err(Error::io(path, missing));
    }
    let (dir, name) = split(path)?;
    Ok(dir.open_read(&name)?)
}
