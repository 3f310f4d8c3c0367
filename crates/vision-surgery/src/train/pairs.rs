//! Training pairs from a JSON Lines file: an item's embedding (inline or a row of an
//! `.npy` matrix), its target text and its image.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// One line of a training-pairs file (JSON Lines).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    embedding: Option<Vec<f32>>,
    row: Option<usize>,
    text: Option<String>,
    image: Option<PathBuf>,
}

/// A record of a training-pairs file: the item's embedding, its target text and its
/// image (for distillation), paths resolved against the file's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRecord {
    /// The item's embedding.
    pub embedding: Vec<f32>,
    /// The target text.
    pub text: Option<String>,
    /// The item's image.
    pub image: Option<PathBuf>,
}

/// Read a JSON Lines pairs file: one object per line with the item's embedding, either
/// inline (`"embedding": [..]`) or as a row of the `.npy` matrix `embeddings`
/// (`"row": 17`), and a target `"text"` and/or an `"image"` path. Blank lines are
/// skipped; every other malformed line is an error naming the line.
pub fn load_pairs(path: &Path, embeddings: Option<&Path>) -> Result<Vec<PairRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let matrix: Option<ndarray::Array2<f32>> = match embeddings {
        Some(p) => Some(ndarray_npy::read_npy(p).map_err(|e| Error::Embeddings {
            message: format!("{}: {e}", p.display()),
        })?),
        None => None,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let bad = |message: String| Error::TrainingData {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawPair = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let embedding = match (raw.embedding, raw.row) {
            (Some(e), None) => e,
            (None, Some(r)) => {
                let m = matrix
                    .as_ref()
                    .ok_or_else(|| bad("\"row\" needs an embeddings .npy file".into()))?;
                if r >= m.nrows() {
                    return Err(bad(format!(
                        "row {r} is past the end of the embeddings ({} rows)",
                        m.nrows()
                    )));
                }
                m.row(r).to_vec()
            }
            (Some(_), Some(_)) => {
                return Err(bad("give \"embedding\" or \"row\", not both".into()));
            }
            (None, None) => return Err(bad("needs \"embedding\" or \"row\"".into())),
        };
        if raw.text.is_none() && raw.image.is_none() {
            return Err(bad("needs a \"text\" or an \"image\"".into()));
        }
        if let Some(j) = embedding.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("embedding value {j} is not finite")));
        }
        if let Some(first) = out.first().map(|r: &PairRecord| r.embedding.len())
            && first != embedding.len()
        {
            return Err(bad(format!(
                "embedding has {} values, earlier lines have {first}",
                embedding.len()
            )));
        }
        out.push(PairRecord {
            embedding,
            text: raw.text,
            image: raw
                .image
                .map(|p| if p.is_absolute() { p } else { base.join(p) }),
        });
    }
    if out.is_empty() {
        return Err(Error::TrainingData {
            path: path.to_path_buf(),
            line: 0,
            message: "no record".into(),
        });
    }
    Ok(out)
}
