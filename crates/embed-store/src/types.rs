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

impl std::str::FromStr for StorageType {
    type Err = String;

    /// `f32`, `f16` or `int8` (the names the manifest stores).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(StorageType::F32),
            "f16" => Ok(StorageType::F16),
            "int8" => Ok(StorageType::Int8),
            other => Err(format!("storage type {other:?}: expected f32, f16 or int8")),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_types_parse_by_their_manifest_names() {
        for t in [StorageType::F32, StorageType::F16, StorageType::Int8] {
            let name = serde_json::to_string(&t).unwrap();
            assert_eq!(name.trim_matches('"').parse::<StorageType>(), Ok(t));
        }
        let err = "bf16".parse::<StorageType>().unwrap_err();
        assert!(err.contains("\"bf16\"") && err.contains("int8"), "{err}");
    }
}
