//! Datasets in the LightGCN line format (`train.txt` and `test.txt`, as in the
//! LightGCN-PyTorch repository): one line per user, `user item item ...`, integers
//! separated by spaces. Users and items are dense indices; the counts are one more than
//! the largest index in either file. Blank lines are skipped; a line with only a user
//! has no items.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::{ItemId, UserId};

/// Largest index accepted in a dataset file (guards against allocating for a typo).
pub const MAX_INDEX: u32 = (1 << 31) - 1;

/// One parsed file: (user, items) per non-blank line, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLines {
    /// The file they came from.
    pub path: PathBuf,
    /// `(user, items)` per line.
    pub lines: Vec<(u32, Vec<u32>)>,
}

/// Parses LightGCN-format text. `path` names the source in errors, which carry the
/// 1-based line number: a token that is not a non-negative integer ≤ [`MAX_INDEX`], or
/// a user that appears on two lines.
pub fn parse_lightgcn(text: &str, path: &Path) -> Result<UserLines> {
    let mut lines = Vec::new();
    let mut seen: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for (no, line) in text.lines().enumerate() {
        let no = no + 1;
        let err = |message: String| Error::Parse {
            path: path.to_path_buf(),
            line: no,
            message,
        };
        let mut tokens = line.split_ascii_whitespace().enumerate().map(|(k, t)| {
            t.parse::<u32>()
                .ok()
                .filter(|&v| v <= MAX_INDEX)
                .ok_or_else(|| {
                    err(format!(
                        "token {} is {t:?}, expected an integer in 0..={MAX_INDEX}",
                        k + 1
                    ))
                })
        });
        let Some(user) = tokens.next() else { continue };
        let user = user?;
        let items = tokens.collect::<Result<Vec<u32>>>()?;
        if let Some(prev) = seen.insert(user, no) {
            return Err(err(format!("user {user} already has a line (line {prev})")));
        }
        lines.push((user, items));
    }
    Ok(UserLines {
        path: path.to_path_buf(),
        lines,
    })
}

/// Reads and parses one LightGCN-format file.
pub fn read_lightgcn(path: &Path) -> Result<UserLines> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line,
                message: "not UTF-8 text".into(),
            });
        }
    };
    parse_lightgcn(text, path)
}

/// A train/test split over one set of users and items.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training interactions.
    pub train: BipartiteGraph,
    /// Held-out interactions (same user and item counts).
    pub test: BipartiteGraph,
}

impl Dataset {
    /// Builds a dataset from parsed train and test lines.
    pub fn from_lines(train: &UserLines, test: &UserLines) -> Result<Self> {
        let all = || train.lines.iter().chain(&test.lines);
        let n_users = all().map(|(u, _)| *u as usize + 1).max().unwrap_or(0);
        let n_items = all()
            .filter_map(|(_, items)| items.iter().max())
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0);
        let edges = |l: &UserLines| -> Vec<(UserId, ItemId)> {
            l.lines
                .iter()
                .flat_map(|(u, is)| is.iter().map(move |&i| (UserId(*u), ItemId(i))))
                .collect()
        };
        Ok(Dataset {
            train: BipartiteGraph::from_edges(n_users, n_items, edges(train))?,
            test: BipartiteGraph::from_edges(n_users, n_items, edges(test))?,
        })
    }

    /// Loads `train.txt` and `test.txt` from a directory.
    pub fn load_lightgcn(dir: &Path) -> Result<Self> {
        let train = read_lightgcn(&dir.join("train.txt"))?;
        let test = read_lightgcn(&dir.join("test.txt"))?;
        Self::from_lines(&train, &test)
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.train.n_users()
    }

    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.train.n_items()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_items_blank_and_item_less_lines() {
        let p = Path::new("x/train.txt");
        let u = parse_lightgcn("0 1 2 3\n\n2 5\n1\n", p).unwrap();
        assert_eq!(u.lines, vec![(0, vec![1, 2, 3]), (2, vec![5]), (1, vec![])]);
        let t = parse_lightgcn("0 4\n3 0\n", Path::new("x/test.txt")).unwrap();
        let d = Dataset::from_lines(&u, &t).unwrap();
        assert_eq!((d.n_users(), d.n_items()), (4, 6));
        assert_eq!(d.train.n_edges(), 4);
        assert_eq!(d.test.items_of(UserId(3)), &[0]);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let p = Path::new("data/train.txt");
        for (text, line, needle) in [
            ("0 1\n1 2 x3\n", 2, "x3"),
            ("0 1\n\n-1 2\n", 3, "-1"),
            ("0 1 99999999999\n", 1, "99999999999"),
            ("0 1\n0 2\n", 2, "already has a line (line 1)"),
        ] {
            let e = parse_lightgcn(text, p).unwrap_err();
            let Error::Parse {
                ref path,
                line: l,
                ref message,
            } = e
            else {
                panic!("expected a parse error, got {e:?}")
            };
            assert_eq!(path, p);
            assert_eq!(l, line, "{text:?}");
            assert!(message.contains(needle), "{message}");
            assert!(
                e.to_string()
                    .starts_with(&format!("data/train.txt:{line}:"))
            );
        }
    }

    #[test]
    fn missing_and_non_utf8_files_are_typed_errors() {
        let dir = std::env::temp_dir().join(format!("taste-graph-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            Dataset::load_lightgcn(&dir.join("nope")),
            Err(Error::Io { .. })
        ));
        let f = dir.join("bad.txt");
        std::fs::write(&f, b"0 1\n1 \xff\n").unwrap();
        assert!(matches!(
            read_lightgcn(&f),
            Err(Error::Parse { line: 2, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
