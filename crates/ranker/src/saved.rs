//! The ranker's part of a saved state (the application bytes of taste-graph's
//! `Refresher::state_with`): the served generation's name, the external item ids and
//! the application's user ids.
//!
//! The ids are append-only (a new external id becomes the next dense item) and, for a
//! model the pipeline published, the served generation's live rows are the first items
//! in dense order. So what is saved is the length of the prefix the generation holds
//! and a digest of it, then only the ids after it — a few bytes per save instead of 8
//! per item. A restore rebuilds the prefix from the generation and checks the digest.
//!
//! User ids are most often the dense indices themselves: what is saved is how many
//! leading users are so named, then the ids of the rest.
//!
//! Layout (little-endian): magic `MOSRKID3`, name length (u32) and UTF-8 bytes, prefix
//! length (u64), prefix digest (u64), count of the item ids after it (u64), the ids (u64
//! each); then the count of leading users named by their index (u64), the count of the
//! user ids after them (u64), the ids (u64 each). `MOSRKID2` (no user part: every user
//! named by its index) is still read.

use embed_store::Snapshot;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"MOSRKID3";
/// The previous layout: no user part.
const MAGIC_V2: &[u8; 8] = b"MOSRKID2";

/// The leading external ids that `snap`'s live rows hold in the same order, and their
/// digest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Prefix {
    pub len: usize,
    pub digest: u64,
}

/// Finds a [`Prefix`] a chunk of ids at a time, so that a caller can read each chunk
/// under its own short lock (the ids are append-only: what a chunk matched stays true).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrefixScan {
    len: usize,
    digest: u64,
    done: bool,
}

impl PrefixScan {
    /// A scan at the first id.
    pub(crate) fn new() -> Self {
        PrefixScan {
            len: 0,
            digest: DIGEST_SEED,
            done: false,
        }
    }

    /// Ids matched so far (where the next chunk starts).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether a mismatch or an empty chunk ended the prefix.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Takes the next ids, `chunk`, while `rows` (the generation's live row ids, in
    /// order, continued from the previous chunk) repeat them.
    pub(crate) fn feed(&mut self, rows: &mut impl Iterator<Item = u64>, chunk: &[u64]) {
        if chunk.is_empty() {
            self.done = true;
        }
        for &id in chunk {
            if rows.next() != Some(id) {
                self.done = true;
                return;
            }
            self.digest = digest_step(self.digest, id);
            self.len += 1;
        }
    }

    /// The prefix found.
    pub(crate) fn prefix(&self) -> Prefix {
        Prefix {
            len: self.len,
            digest: self.digest,
        }
    }
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const DIGEST_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// One id into the digest.
fn digest_step(h: u64, id: u64) -> u64 {
    mix(h ^ id).wrapping_add(DIGEST_SEED)
}

/// An order-sensitive 64-bit digest of a list of ids (stable across builds).
fn digest(ids: impl Iterator<Item = u64>) -> u64 {
    ids.fold(DIGEST_SEED, digest_step)
}

/// Encodes the ranker's part of a state: `generation` served, `ids` with the first
/// `prefix.len` held by the generation, and `users`.
pub(crate) fn encode(generation: &str, prefix: Prefix, ids: &[u64], users: &[u64]) -> Vec<u8> {
    let rest = &ids[prefix.len.min(ids.len())..];
    let named = users
        .iter()
        .enumerate()
        .take_while(|&(k, &u)| k as u64 == u)
        .count();
    let users_rest = &users[named..];
    let mut out =
        Vec::with_capacity(8 + 4 + generation.len() + 40 + 8 * (rest.len() + users_rest.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(generation.len() as u32).to_le_bytes());
    out.extend_from_slice(generation.as_bytes());
    for v in [prefix.len as u64, prefix.digest, rest.len() as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for id in rest {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for v in [named as u64, users_rest.len() as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for id in users_rest {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The ranker's part of a saved state, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SavedIds {
    /// The generation the state was saved serving.
    pub generation: String,
    prefix: Prefix,
    rest: Vec<u64>,
    /// Leading users named by their index, and the ids of the rest (`None`: a
    /// `MOSRKID2` state, every user named by its index).
    users: Option<(u64, Vec<u64>)>,
}

/// `n` little-endian u64s from the front of `b`, and what follows.
fn words(b: &[u8], n: u64) -> Option<(Vec<u64>, &[u8])> {
    let bytes = usize::try_from(n.checked_mul(8)?).ok()?;
    let (w, rest) = b.split_at_checked(bytes)?;
    let w = w
        .chunks_exact(8)
        .map(|c| {
            let mut x = [0u8; 8];
            x.copy_from_slice(c);
            u64::from_le_bytes(x)
        })
        .collect();
    Some((w, rest))
}

impl SavedIds {
    /// Reads [`encode`]'s bytes back (the meta file's checksum already held).
    pub(crate) fn decode(b: &[u8]) -> Result<SavedIds> {
        let bad = |what: &str| {
            Error::config(format!(
                "the saved state holds no ranker data written by Recommender::state ({what})"
            ))
        };
        let (v3, rest) = match (
            b.strip_prefix(MAGIC.as_slice()),
            b.strip_prefix(MAGIC_V2.as_slice()),
        ) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => return Err(bad("no ranker tag of a known version")),
        };
        let (len, rest) = words_u32(rest).ok_or_else(|| bad("short"))?;
        let (name, rest) = rest
            .split_at_checked(len as usize)
            .ok_or_else(|| bad("short name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
        let (header, rest) = words(rest, 3).ok_or_else(|| bad("short"))?;
        let (prefix_len, digest, n) = (header[0], header[1], header[2]);
        // each id is 8 bytes of what is left: a count past that is damage, not a size
        if n > (rest.len() / 8) as u64 {
            return Err(bad("item id count does not match its bytes"));
        }
        let (ids, rest) = words(rest, n).ok_or_else(|| bad("short item ids"))?;
        let (users, rest) = if v3 {
            let (h, rest) = words(rest, 2).ok_or_else(|| bad("short user part"))?;
            if h[1] > (rest.len() / 8) as u64 {
                return Err(bad("user id count does not match its bytes"));
            }
            let (u, rest) = words(rest, h[1]).ok_or_else(|| bad("short user ids"))?;
            (Some((h[0], u)), rest)
        } else {
            (None, rest)
        };
        if !rest.is_empty() {
            return Err(bad("bytes after the ids"));
        }
        let prefix_len = usize::try_from(prefix_len).map_err(|_| bad("prefix length overflows"))?;
        Ok(SavedIds {
            generation: name.to_string(),
            prefix: Prefix {
                len: prefix_len,
                digest,
            },
            rest: ids,
            users,
        })
    }

    /// The application's ids of the `n` users of the saved taste graph.
    pub(crate) fn user_ids(&self, n: usize) -> Result<Vec<u64>> {
        let Some((named, rest)) = &self.users else {
            return Ok((0..n as u64).collect());
        };
        if named.checked_add(rest.len() as u64) != Some(n as u64) {
            return Err(Error::config(format!(
                "the saved state names {} users, its taste graph has {n}",
                named.saturating_add(rest.len() as u64)
            )));
        }
        Ok((0..*named).chain(rest.iter().copied()).collect())
    }

    /// Every external item id, the prefix read from `snap` (the generation saved; a
    /// generation changed since, so that its first live rows differ, is refused).
    pub(crate) fn ids(&self, snap: &Snapshot) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = snap
            .iter_live()
            .take(self.prefix.len)
            .map(|(id, _, _)| id.0)
            .collect();
        if ids.len() != self.prefix.len || digest(ids.iter().copied()) != self.prefix.digest {
            return Err(Error::config(format!(
                "generation {:?} changed since the state was saved: its first {} live items are not the ones saved",
                snap.generation(),
                self.prefix.len
            )));
        }
        ids.extend_from_slice(&self.rest);
        Ok(ids)
    }
}

/// A little-endian u32 from the front of `b`, and what follows.
fn words_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (w, rest) = b.split_at_checked(4)?;
    Some((u32::from_le_bytes([w[0], w[1], w[2], w[3]]), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_sees_order_and_values() {
        let a = digest([1u64, 2, 3].into_iter());
        assert_ne!(a, digest([2u64, 1, 3].into_iter()));
        assert_ne!(a, digest([1u64, 2, 4].into_iter()));
        assert_ne!(a, digest([1u64, 2].into_iter()));
        assert_eq!(a, digest([1u64, 2, 3].into_iter()));
    }

    /// Chunk by chunk, the scan stops at the first id the rows do not repeat, or at an
    /// empty chunk, and digests what it matched as `digest` does.
    #[test]
    fn the_scan_matches_chunk_by_chunk() {
        let ids = [5u64, 6, 7, 8, 9, 10, 11];
        for chunk in 1..=8 {
            for (rows, want) in [
                (vec![5u64, 6, 7, 8, 9, 10, 11], 7),
                (vec![5, 6, 7, 0, 9], 3),
            ] {
                let mut rows_it = rows.into_iter();
                let mut scan = PrefixScan::new();
                while !scan.done() {
                    let next = &ids[scan.len().min(ids.len())..];
                    scan.feed(&mut rows_it, &next[..next.len().min(chunk)]);
                }
                assert_eq!(scan.prefix().len, want, "chunk {chunk}");
                assert_eq!(scan.prefix().digest, digest(ids[..want].iter().copied()));
            }
        }
    }

    #[test]
    fn bytes_round_trip_and_damage_is_an_error() {
        let prefix = Prefix { len: 2, digest: 7 };
        let users = [0u64, 1, 2, 900, 5];
        let b = encode("gen", prefix, &[10, 11, 12, 13], &users);
        let back = SavedIds::decode(&b).unwrap();
        assert_eq!(back.generation, "gen");
        assert_eq!(back.prefix, prefix);
        assert_eq!(back.rest, vec![12, 13]);
        assert_eq!(back.users, Some((3, vec![900, 5])));
        assert_eq!(back.user_ids(5).unwrap(), users);
        assert!(back.user_ids(4).is_err());
        for cut in 0..b.len() {
            assert!(SavedIds::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(SavedIds::decode(&longer).is_err());
        assert!(SavedIds::decode(b"MOSRKID1").is_err());
    }

    /// A state saved before user ids were kept names every user by its index.
    #[test]
    fn a_v2_state_names_users_by_index() {
        let mut b = MAGIC_V2.to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"gen");
        for v in [0u64, 0, 1, 42] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let back = SavedIds::decode(&b).unwrap();
        assert_eq!(back.rest, vec![42]);
        assert_eq!(back.user_ids(3).unwrap(), [0, 1, 2]);
    }
}
