//! Memory-mapped safetensors files, single or sharded, read one named tensor at a time.
//!
//! Only the JSON header of a file is parsed when it is opened; a tensor's bytes are
//! touched when, and only when, [`Weights::tensor`] asks for it. Every name read is
//! logged, which is how the surgery proves that no `model.visual.*` tensor was read.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};

/// Where one tensor lives and what it is.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Storage dtype in the file.
    pub dtype: StDtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Index of the file in [`Weights::files`].
    pub file: usize,
    /// Byte range inside the file's data section.
    pub range: (usize, usize),
}

impl TensorEntry {
    /// Number of scalar parameters.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
    /// Number of bytes in the file.
    pub fn bytes(&self) -> u64 {
        (self.range.1 - self.range.0) as u64
    }
}

struct Mapped {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

/// A set of memory-mapped safetensors files seen as one name -> tensor map.
pub struct Weights {
    files: Vec<Mapped>,
    entries: BTreeMap<String, TensorEntry>,
    read_log: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.files().collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Open and parse the header of one safetensors file; the data pages are not read.
fn map_file(
    path: &Path,
) -> Result<(
    Mmap,
    usize,
    BTreeMap<String, safetensors::tensor::TensorInfo>,
)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; like every mmap-based model loader we
    // rely on the checkpoint not being truncated while it is mapped.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let infos = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    Ok((mmap, 8 + n, infos))
}

/// Header-only view of a safetensors file: its tensors' dtype, shape and size.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorEntry>> {
    let (_, _, infos) = map_file(path)?;
    Ok(infos
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                TensorEntry {
                    dtype: v.dtype,
                    shape: v.shape,
                    file: 0,
                    range: v.data_offsets,
                },
            )
        })
        .collect())
}

impl Weights {
    /// Map the given files. A name present in two files is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let (mmap, data_start, infos) = map_file(path)?;
            for (name, info) in infos {
                let entry = TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape,
                    file: i,
                    range: info.data_offsets,
                };
                if let Some(prev) = entries.insert(name.clone(), entry) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        message: format!(
                            "tensor {name} also appears in {}",
                            paths[prev.file].display()
                        ),
                    });
                }
            }
            files.push(Mapped {
                path: path.clone(),
                mmap,
                data_start,
            });
        }
        Ok(Self {
            files,
            entries,
            read_log: Mutex::new(Vec::new()),
        })
    }

    /// Let the kernel drop this process's mapping of the file pages touched so far
    /// (`MADV_DONTNEED`). The model's tensors are copies, so once they are built the
    /// mapped pages only inflate the resident set; a later read (saving a surgered
    /// checkpoint, say) maps them in again from the file.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        for f in &self.files {
            // SAFETY: the mapping is read-only and file-backed and is never written, so
            // MADV_DONTNEED only drops page-table entries; later reads fault the same
            // file contents back in.
            let _ = unsafe { f.mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Paths of the mapped files, in the order given to [`Weights::open`].
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Every tensor name with its entry.
    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// The entry for `name`, if present.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The raw little-endian bytes of `name`, logged as read.
    pub fn raw(&self, name: &str) -> Result<(&TensorEntry, &[u8])> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        let f = &self.files[entry.file];
        let bytes = &f.mmap[f.data_start + entry.range.0..f.data_start + entry.range.1];
        if let Ok(mut log) = self.read_log.lock() {
            log.push(name.to_string());
        }
        Ok((entry, bytes))
    }

    /// Load `name` onto `device` as `dtype`, checking its shape.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (entry, bytes) = self.raw(name)?;
        if entry.shape != shape {
            return Err(Error::TensorShape {
                name: name.into(),
                expected: shape.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        let file_dtype = candle_dtype(entry.dtype).ok_or_else(|| Error::TensorDtype {
            name: name.into(),
            dtype: format!("{:?}", entry.dtype),
        })?;
        let t = Tensor::from_raw_buffer(bytes, file_dtype, shape, &Device::Cpu)?;
        // from_raw_buffer copied the bytes: the mapped pages need not stay resident, so a
        // model's load peaks near its weights' size instead of twice that
        self.release_range(entry);
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// `MADV_DONTNEED` over the whole 64 KiB-aligned pages inside `entry`'s bytes.
    fn release_range(&self, entry: &TensorEntry) {
        #[cfg(unix)]
        if let Some(f) = self.files.get(entry.file) {
            const ALIGN: usize = 1 << 16;
            let start = (f.data_start + entry.range.0).next_multiple_of(ALIGN);
            let end = (f.data_start + entry.range.1) / ALIGN * ALIGN;
            if end > start {
                // SAFETY: as in `release_pages`: a read-only file mapping, never written.
                let _ = unsafe {
                    f.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    /// Names of all tensors read so far, in order.
    pub fn read_log(&self) -> Vec<String> {
        self.read_log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The candle dtype for a float safetensors dtype the decoder can use.
pub fn candle_dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::F64 => Some(DType::F64),
        _ => None,
    }
}

/// The safetensors dtype for a candle dtype.
pub fn st_dtype(d: DType) -> Option<StDtype> {
    match d {
        DType::F32 => Some(StDtype::F32),
        DType::F16 => Some(StDtype::F16),
        DType::BF16 => Some(StDtype::BF16),
        DType::F64 => Some(StDtype::F64),
        DType::U8 => Some(StDtype::U8),
        DType::U32 => Some(StDtype::U32),
        DType::I64 => Some(StDtype::I64),
        _ => None,
    }
}
