//! Checks of a write batch shared by every backend (the embedded store's writer and the
//! Redis backend): a leaf module, so neither imports the other for it.

use std::collections::HashSet;

use half::f16;

use crate::error::{Error, Result};
use crate::types::{ItemId, StorageType};

/// Check a write batch: `vectors` holds `ids.len()` rows of `dim` finite values that
/// `storage` represents (f16 holds magnitudes up to 65504; past that it would store
/// infinity) and no id repeats. The error names the row, id and column at fault.
pub fn validate_batch(
    dim: usize,
    storage: StorageType,
    ids: &[ItemId],
    vectors: &[f32],
) -> Result<()> {
    let n = ids.len();
    if vectors.len() != n * dim {
        return Err(Error::batch(format!(
            "{n} ids with dim {dim} need {} values, got {}",
            n * dim,
            vectors.len()
        )));
    }
    let at = |i: usize, what: &str| {
        Error::batch(format!(
            "value {} at row {} (id {}), column {} {what}",
            vectors[i],
            i / dim,
            ids[i / dim].0,
            i % dim
        ))
    };
    if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
        return Err(at(i, "is not finite"));
    }
    let f16_max = f16::MAX.to_f32();
    if storage == StorageType::F16
        && let Some(i) = vectors.iter().position(|v| v.abs() > f16_max)
    {
        return Err(at(i, &format!("is past f16's range (|x| <= {f16_max})")));
    }
    let mut seen = HashSet::with_capacity(n);
    if let Some(dup) = ids.iter().find(|id| !seen.insert(id.0)) {
        return Err(Error::batch(format!(
            "id {} appears twice in the batch",
            dup.0
        )));
    }
    Ok(())
}
