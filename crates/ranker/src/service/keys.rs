//! The service's requests and answers as clients name users and items ([`Key`]:
//! integers or names): names resolved through the service's [`Names`] on the way in,
//! integers turned back into names on the way out.

use serde::Serialize;
use taste_graph::InteractionKind;

use super::names::{Names, Space};
use crate::types::{Key, Recommendation, ScoreParts, Source};

/// One interaction as a client sends it ([`super::Service::record`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedEvent {
    /// The user (a new one becomes a new user).
    pub user: Key,
    /// The item (a new one becomes a live item).
    pub item: Key,
    /// What the user did.
    pub kind: InteractionKind,
    /// When (the taste graph's time unit).
    pub time: u64,
}

/// A recommendation with its items named as the client names them (on the wire as
/// [`Recommendation`], the ids integers or strings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// The item.
    pub item: Key,
    /// The final (MMR) score it was picked with.
    pub score: f32,
    /// Which source retrieved it first.
    pub source: RankedSource,
    /// Its score parts.
    pub parts: ScoreParts,
}

/// [`Source`] with the medoid named as the client names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RankedSource {
    /// A neighbour of one of the user's interests.
    Interest {
        /// Rank of the interest (0 = most important).
        rank: usize,
        /// The interest's medoid item.
        medoid: Key,
        /// The interest's importance.
        importance: f32,
    },
    /// A neighbour of the user's taste embedding.
    Taste,
    /// One of the most-engaged items.
    Popular,
    /// One of the newest items of the generation.
    Fresh,
}

impl Names {
    /// `r` with its items named as the client names them.
    pub fn ranked(&self, r: &Recommendation) -> Ranked {
        let source = match r.source {
            Source::Interest {
                rank,
                medoid,
                importance,
            } => RankedSource::Interest {
                rank,
                medoid: self.key(Space::Item, medoid),
                importance,
            },
            Source::Taste => RankedSource::Taste,
            Source::Popular => RankedSource::Popular,
            Source::Fresh => RankedSource::Fresh,
        };
        Ranked {
            item: self.key(Space::Item, r.item),
            score: r.score,
            source,
            parts: r.parts,
        }
    }
}
