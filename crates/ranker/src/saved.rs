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
use mosaic_durability::le::Reader;

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

/// A count of ids, then the ids (a count past what the bytes left can hold is damage,
/// not a size to allocate).
fn read_ids(r: &mut Reader<'_>, what: &str) -> mosaic_durability::Result<Vec<u64>> {
    let max = r.remaining().saturating_sub(8) / 8;
    let n = r.count(what, max as u64)?;
    (0..n).map(|_| r.u64(what)).collect()
}

impl SavedIds {
    /// Reads [`encode`]'s bytes back (the meta file's checksum already held).
    pub(crate) fn decode(b: &[u8]) -> Result<SavedIds> {
        let bad = |what: &dyn std::fmt::Display| {
            Error::config(format!(
                "the saved state holds no ranker data written by Recommender::state ({what})"
            ))
        };
        let mut r = Reader::new("the ranker's saved data", b);
        let v3 = match &r.array::<8>("the ranker tag").map_err(|e| bad(&e))? {
            m if m == MAGIC => true,
            m if m == MAGIC_V2 => false,
            _ => return Err(bad(&"no ranker tag of a known version")),
        };
        let len = r.u32("the name's length").map_err(|e| bad(&e))?;
        let name = r.bytes(len as usize, "the name").map_err(|e| bad(&e))?;
        let name = std::str::from_utf8(name).map_err(|_| bad(&"name is not UTF-8"))?;
        let prefix_len = r.u64("the prefix length").map_err(|e| bad(&e))?;
        let digest = r.u64("the prefix digest").map_err(|e| bad(&e))?;
        let rest = read_ids(&mut r, "item ids").map_err(|e| bad(&e))?;
        let users = if v3 {
            let named = r.u64("users named by index").map_err(|e| bad(&e))?;
            let ids = read_ids(&mut r, "user ids").map_err(|e| bad(&e))?;
            Some((named, ids))
        } else {
            None
        };
        r.finish().map_err(|e| bad(&e))?;
        let prefix_len =
            usize::try_from(prefix_len).map_err(|_| bad(&"prefix length overflows"))?;
        Ok(SavedIds {
            generation: name.to_string(),
            prefix: Prefix {
                len: prefix_len,
                digest,
            },
            rest,
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
