//! Small typed values shared across the crate.

use serde::{Deserialize, Serialize};

/// An item's external id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemId(pub u64);

impl From<u64> for ItemId {
    fn from(v: u64) -> Self {
        ItemId(v)
    }
}

/// How vectors are stored in a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// 4 bytes per value.
    F32,
    /// IEEE half precision, 2 bytes per value.
    F16,
    /// Symmetric int8 with one f32 scale per vector (`x ≈ scale * q`), 1 byte per value.
    Int8,
}

impl StorageType {
    /// Bytes per stored value.
    pub fn value_bytes(&self) -> usize {
        match self {
            StorageType::F32 => 4,
            StorageType::F16 => 2,
            StorageType::Int8 => 1,
        }
    }

    /// Code in segment headers.
    pub(crate) fn code(&self) -> u8 {
        match self {
            StorageType::F32 => 1,
            StorageType::F16 => 2,
            StorageType::Int8 => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(StorageType::F32),
            2 => Some(StorageType::F16),
            3 => Some(StorageType::Int8),
            _ => None,
        }
    }
}

/// Similarity used by search; larger scores are better for every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `q · x`.
    InnerProduct,
    /// `q · x / (|q| |x|)`.
    Cosine,
    /// `-|q - x|^2` (negated so larger is nearer).
    L2,
}
