//! The ranker's vocabulary: where a recommendation came from, how it was scored, what
//! a request returns. A leaf: it imports nothing of the crate. Each crosses the wire of a
//! service as JSON (serde).

use serde::{Deserialize, Serialize};

/// An id as a client gives it: an integer, or a name (a string) that a service maps to
/// an integer of its own ([`crate::service::names`]). On the wire: `7` or `"sku-7"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    /// An integer id.
    Id(u64),
    /// A name.
    Name(String),
}

impl From<u64> for Key {
    fn from(id: u64) -> Self {
        Key::Id(id)
    }
}

impl From<&str> for Key {
    fn from(name: &str) -> Self {
        Key::Name(name.to_string())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Id(id) => write!(f, "{id}"),
            Key::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// Where a recommendation came from (on the wire: `{"kind": "interest", "rank": 0, ...}`,
/// `{"kind": "taste"}`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A neighbour of one of the user's interests.
    Interest {
        /// Rank of the interest (0 = most important).
        rank: usize,
        /// The interest's medoid item (external id).
        medoid: u64,
        /// The interest's importance (the user's interests sum to 1).
        importance: f32,
    },
    /// A neighbour of the user's taste embedding.
    Taste,
    /// One of the most-engaged items.
    Popular,
    /// One of the newest items of the generation.
    Fresh,
}

/// How a recommendation's score was made.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ScoreParts {
    /// The item's projection on the user's unit taste direction (LightGCN's score up to
    /// the user's norm), divided by the largest among the candidates.
    pub taste: f32,
    /// The best importance-weighted cosine to an interest's medoid.
    pub interest: f32,
    /// `log(1 + engagements) / log(1 + max engagements)` of the item.
    pub popularity: f32,
    /// The blended relevance, normalised so the best candidate has 1.
    pub relevance: f32,
    /// Largest cosine to the results ranked above it (what MMR subtracted).
    pub redundancy: f32,
}

/// One recommended item with its explanation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The item's external id.
    pub item: u64,
    /// The final (MMR) score it was picked with.
    pub score: f32,
    /// Which source retrieved it first.
    pub source: Source,
    /// Its score parts.
    pub parts: ScoreParts,
}

/// A retrieved candidate: the item and the source that found it first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// The item's external id.
    pub(crate) id: u64,
    /// The source that retrieved it first.
    pub(crate) source: Source,
}
