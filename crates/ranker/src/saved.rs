//! The ranker's part of a saved state (the application bytes of taste-graph's
//! `Refresher::state_with`): the served generation's name and the external item ids.
//!
//! The ids are append-only (a new external id becomes the next dense item) and, for a
//! model the pipeline published, the served generation's live rows are the first items
//! in dense order. So what is saved is the length of the prefix the generation holds
//! and a digest of it, then only the ids after it — a few bytes per save instead of 8
//! per item. A restore rebuilds the prefix from the generation and checks the digest.
//!
//! Layout (little-endian): magic `MOSRKID2`, name length (u32) and UTF-8 bytes, prefix
//! length (u64), prefix digest (u64), count of the ids after it (u64), the ids (u64
//! each).

use embed_store::Snapshot;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"MOSRKID2";

/// The leading external ids that `snap`'s live rows hold in the same order, and their
/// digest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Prefix {
    pub len: usize,
    pub digest: u64,
}

impl Prefix {
    /// How many of `ids` the generation's live rows repeat, in order, from the first.
    pub(crate) fn of(snap: &Snapshot, ids: &[u64]) -> Prefix {
        let len = snap
            .iter_live()
            .zip(ids)
            .take_while(|((row, _, _), id)| row.0 == **id)
            .count();
        Prefix {
            len,
            digest: digest(ids[..len].iter().copied()),
        }
    }
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An order-sensitive 64-bit digest of a list of ids (stable across builds).
fn digest(ids: impl Iterator<Item = u64>) -> u64 {
    ids.fold(0x9E37_79B9_7F4A_7C15, |h, id| {
        mix(h ^ id).wrapping_add(0x9E37_79B9_7F4A_7C15)
    })
}

/// Encodes the ranker's part of a state: `generation` served, `ids` with the first
/// `prefix.len` held by the generation.
pub(crate) fn encode(generation: &str, prefix: Prefix, ids: &[u64]) -> Vec<u8> {
    let rest = &ids[prefix.len.min(ids.len())..];
    let mut out = Vec::with_capacity(8 + 4 + generation.len() + 24 + 8 * rest.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(generation.len() as u32).to_le_bytes());
    out.extend_from_slice(generation.as_bytes());
    for v in [prefix.len as u64, prefix.digest, rest.len() as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for id in rest {
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
}

impl SavedIds {
    /// Reads [`encode`]'s bytes back (the meta file's checksum already held).
    pub(crate) fn decode(b: &[u8]) -> Result<SavedIds> {
        let bad = |what: &str| {
            Error::config(format!(
                "the saved state holds no ranker data written by Recommender::state ({what})"
            ))
        };
        let rest = b
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("no ranker tag of this version"))?;
        let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("short"))?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (name, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| bad("short name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
        let (header, rest) = rest.split_at_checked(24).ok_or_else(|| bad("short"))?;
        let word = |k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&header[8 * k..8 * k + 8]);
            u64::from_le_bytes(w)
        };
        let (prefix_len, digest, n) = (word(0), word(1), word(2));
        if n.checked_mul(8) != Some(rest.len() as u64) {
            return Err(bad("item id count does not match its bytes"));
        }
        let prefix_len = usize::try_from(prefix_len).map_err(|_| bad("prefix length overflows"))?;
        let rest = rest
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(SavedIds {
            generation: name.to_string(),
            prefix: Prefix {
                len: prefix_len,
                digest,
            },
            rest,
        })
    }

    /// Every external item id, the prefix read from `snap` (the generation saved; a
    /// generation changed since, so that its first live rows differ, is refused).
    pub(crate) fn ids(self, snap: &Snapshot) -> Result<Vec<u64>> {
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
        ids.extend(self.rest);
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

    #[test]
    fn bytes_round_trip_and_damage_is_an_error() {
        let prefix = Prefix { len: 2, digest: 7 };
        let b = encode("gen", prefix, &[10, 11, 12, 13]);
        let back = SavedIds::decode(&b).unwrap();
        assert_eq!(back.generation, "gen");
        assert_eq!(back.prefix, prefix);
        assert_eq!(back.rest, vec![12, 13]);
        assert!(SavedIds::decode(&b[..b.len() - 1]).is_err());
        assert!(SavedIds::decode(b"MOSRKID1").is_err());
    }
}
