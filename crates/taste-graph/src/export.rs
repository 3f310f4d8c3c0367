//! Embeddings to and from [`embed_store`] generations.
//!
//! Export writes a table (users or items, row `k` = dense id `k`) under the external
//! ids of an [`IdMap`](crate::IdMap) (or the dense ids themselves) into a generation, in the
//! caller's transaction: export users and items, then [`embed_store::Writer::commit`]
//! once, and both appear atomically. Import reads a generation back into a dense table
//! in the order of given external ids, so embeddings trained elsewhere (loaded into
//! the store with [`embed_store::exchange::import_npy`] or `import_safetensors`) can
//! seed [`crate::LightGcn::from_embeddings`] or a ranker.

use embed_store::{GenerationSpec, ItemId as StoreId, Snapshot, StorageType, Writer};

use crate::error::{Error, Result};

/// Rows per `put_many` call (bounded memory per batch).
const CHUNK: usize = 16_384;

/// Writes `table` (`ids.len() × dim`, row `k` stored under `ids[k]`) into
/// `generation`, creating it with `storage` if it does not exist yet. Nothing is
/// visible until the caller commits `writer`.
pub fn export_table(
    writer: &mut Writer,
    generation: &str,
    storage: StorageType,
    table: &[f32],
    dim: usize,
    ids: &[u64],
) -> Result<()> {
    if dim == 0 || table.len() != ids.len() * dim {
        return Err(Error::Shape {
            message: format!(
                "exporting {} values as {} ids x dim {dim} into generation {generation:?}",
                table.len(),
                ids.len()
            ),
        });
    }
    match writer.dim_of(generation) {
        Ok(d) if d != dim => {
            return Err(Error::Shape {
                message: format!(
                    "generation {generation:?} holds {d}-wide vectors, the table is {dim} wide"
                ),
            });
        }
        Ok(_) => {}
        Err(_) => writer.create_generation(GenerationSpec::new(generation, dim, storage))?,
    }
    let ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
    for (rows, chunk_ids) in table.chunks(CHUNK * dim).zip(ids.chunks(CHUNK)) {
        writer.put_many(generation, chunk_ids, rows, None)?;
    }
    Ok(())
}

/// The dense ids `0..n` as external ids (for tables without an id map).
pub fn dense_ids(n: usize) -> Vec<u64> {
    (0..n as u64).collect()
}

/// Reads the vectors of `ids` from `snap` into a dense table (row `k` = `ids[k]`).
/// An id the generation lacks is an error naming it (no silent zero rows).
pub fn import_table(snap: &Snapshot, ids: &[u64]) -> Result<Vec<f32>> {
    let d = snap.dim();
    let store_ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
    let mut out = vec![0f32; ids.len() * d];
    let found = snap.get_many(&store_ids, &mut out)?;
    if let Some(k) = found.iter().position(|f| !f) {
        let missing = found.iter().filter(|f| !**f).count();
        return Err(Error::Graph {
            message: format!(
                "generation {:?} has no vector for id {} (row {k}); {missing} of {} ids are missing",
                snap.generation(),
                ids[k],
                ids.len()
            ),
        });
    }
    Ok(out)
}
