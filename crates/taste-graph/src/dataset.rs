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

/// Indices are dense: the user (item) count, one more than the largest index, may exceed
/// the number of distinct users (items) present by at most this factor plus
/// [`INDEX_SLACK`]. Counts are sized from the file's largest index, so without this a
/// one-line file holding `2147483647` would allocate tens of GB.
pub const MAX_SPARSITY: usize = 2;
/// Absent indices always allowed on top of [`MAX_SPARSITY`] (small hand-made files).
pub const INDEX_SLACK: usize = 1024;

/// [`Error::Parse`] at the line of `max` when `count` indices are implied by largest
/// index `max` but only `present` distinct ones appear.
fn check_dense(what: &str, max: Option<(u32, &Path, usize)>, present: usize) -> Result<usize> {
    let Some((max, path, line)) = max else {
        return Ok(0);
    };
    let count = max as usize + 1;
    if count
        > present
            .saturating_mul(MAX_SPARSITY)
            .saturating_add(INDEX_SLACK)
    {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            line,
            message: format!(
                "{what} index {max} implies {count} {what}s, but only {present} distinct \
                 {what}s appear: indices must be dense (at most {MAX_SPARSITY}x + \
                 {INDEX_SLACK} the number present)"
            ),
        });
    }
    Ok(count)
}

/// One parsed file: (user, items) per non-blank line, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLines {
    /// The file they came from.
    pub path: PathBuf,
    /// `(user, items)` per line.
    pub lines: Vec<(u32, Vec<u32>)>,
    /// 1-based line number of each entry of `lines`.
    pub line_numbers: Vec<usize>,
}

/// Parses LightGCN-format text. `path` names the source in errors, which carry the
/// 1-based line number: a token that is not a non-negative integer ≤ [`MAX_INDEX`], or
/// a user that appears on two lines.
pub fn parse_lightgcn(text: &str, path: &Path) -> Result<UserLines> {
    let mut lines = Vec::new();
    let mut line_numbers = Vec::new();
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
        line_numbers.push(no);
    }
    Ok(UserLines {
        path: path.to_path_buf(),
        lines,
        line_numbers,
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
    /// Builds a dataset from parsed train and test lines. Indices must be dense (see
    /// [`MAX_SPARSITY`]): the counts are sized by the largest index.
    pub fn from_lines(train: &UserLines, test: &UserLines) -> Result<Self> {
        // (index, file, line) of each user and item
        let all = || {
            [train, test].into_iter().flat_map(|f| {
                f.lines
                    .iter()
                    .zip(&f.line_numbers)
                    .map(move |(l, &no)| (l, f.path.as_path(), no))
            })
        };
        let users: std::collections::HashSet<u32> = all().map(|((u, _), _, _)| *u).collect();
        let items: std::collections::HashSet<u32> = all()
            .flat_map(|((_, is), _, _)| is.iter().copied())
            .collect();
        let max_user = all().map(|((u, _), p, no)| (*u, p, no)).max_by_key(|x| x.0);
        let max_item = all()
            .filter_map(|((_, is), p, no)| is.iter().max().map(|&i| (i, p, no)))
            .max_by_key(|x| x.0);
        let n_users = check_dense("user", max_user, users.len())?;
        let n_items = check_dense("item", max_item, items.len())?;
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
    fn a_huge_index_is_an_error_naming_its_line_not_an_allocation() {
        let empty = parse_lightgcn("", Path::new("x/test.txt")).unwrap();
        for (text, what, line) in [
            ("0 1\n1 0\n0 2147483647\n", "user", 3),
            ("0 1\n1 0\n2 2147483647\n", "item", 3),
            ("2147483647\n", "user", 1),
        ] {
            // a repeated user is its own error: give each case distinct users
            let text = text.replacen("0 2147483647", "2147483647 0", 1);
            let train = parse_lightgcn(&text, Path::new("x/train.txt")).unwrap();
            let err = Dataset::from_lines(&train, &empty).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, Error::Parse { line: l, .. } if *l == line) && msg.contains(what),
                "{text:?}: {msg}"
            );
        }
        // dense enough: accepted
        let train = parse_lightgcn("0 1\n1 0\n3 1000\n", Path::new("x/train.txt")).unwrap();
        assert_eq!(Dataset::from_lines(&train, &empty).unwrap().n_items(), 1001);
    }

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
