//! Interaction events: who did what to which item, how strongly, and when.

use crate::error::{Error, Result};
use crate::ids::{ItemId, UserId};

/// What a user did to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InteractionKind {
    /// The item was shown and looked at.
    View,
    /// The item was opened.
    Click,
    /// The item was saved (pinned, liked, bookmarked).
    Save,
    /// The user asked not to see the item again; removes the pair from the graph.
    Hide,
}

impl InteractionKind {
    /// Whether this kind adds the (user, item) pair to the training graph.
    pub fn is_positive(self) -> bool {
        !matches!(self, InteractionKind::Hide)
    }

    /// A stable one-byte code (for logs and snapshots).
    pub fn code(self) -> u8 {
        match self {
            InteractionKind::View => 1,
            InteractionKind::Click => 2,
            InteractionKind::Save => 3,
            InteractionKind::Hide => 4,
        }
    }

    /// The kind for a code written by [`InteractionKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => InteractionKind::View,
            2 => InteractionKind::Click,
            3 => InteractionKind::Save,
            4 => InteractionKind::Hide,
            _ => return None,
        })
    }
}

/// One interaction event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    /// The acting user.
    pub user: UserId,
    /// The item acted on.
    pub item: ItemId,
    /// What happened.
    pub kind: InteractionKind,
    /// How strong the signal is (finite, non-negative; kept for weighted graphs).
    pub weight: f32,
    /// When it happened, in the caller's clock (e.g. milliseconds since the epoch).
    pub timestamp: u64,
}

impl Interaction {
    /// `user` did `kind` to `item` at `timestamp`, with weight 1.
    pub fn new(user: UserId, item: ItemId, kind: InteractionKind, timestamp: u64) -> Self {
        Self {
            user,
            item,
            kind,
            weight: 1.0,
            timestamp,
        }
    }

    /// Whether this event, as the last of its (user, item) pair, puts the pair in the
    /// graph: a positive kind with weight > 0 (a hide or weight 0 removes it).
    pub(crate) fn adds_pair(&self) -> bool {
        self.kind.is_positive() && self.weight > 0.0
    }

    /// The weight must be finite and non-negative ([`Error::Graph`] naming the event).
    pub(crate) fn check_weight(&self) -> Result<()> {
        if self.weight.is_finite() && self.weight >= 0.0 {
            Ok(())
        } else {
            Err(Error::Graph {
                message: format!(
                    "interaction of user {} with item {} has weight {}, expected a finite value >= 0",
                    self.user.0, self.item.0, self.weight
                ),
            })
        }
    }
}

/// An in-memory collection of interaction events, validated on insertion.
#[derive(Debug, Clone, Default)]
pub struct Interactions {
    events: Vec<Interaction>,
    n_users: usize,
    n_items: usize,
}

impl Interactions {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event. The weight must be finite and non-negative.
    pub fn push(&mut self, event: Interaction) -> Result<()> {
        event.check_weight()?;
        self.n_users = self.n_users.max(event.user.index() + 1);
        self.n_items = self.n_items.max(event.item.index() + 1);
        self.events.push(event);
        Ok(())
    }

    /// The events in insertion order.
    pub fn events(&self) -> &[Interaction] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// One more than the largest user index seen.
    pub fn n_users(&self) -> usize {
        self.n_users
    }

    /// One more than the largest item index seen.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// The (user, item) pairs present in the graph: for every pair, the last event in
    /// timestamp order (insertion order among equal timestamps) decides — a positive
    /// kind with weight > 0 adds the pair, a [`InteractionKind::Hide`] (or weight 0)
    /// removes it. Sorted by user, then item.
    pub fn positive_pairs(&self) -> Vec<(UserId, ItemId)> {
        deciding_events(&self.events)
            .filter(|e| e.adds_pair())
            .map(|e| (e.user, e.item))
            .collect()
    }
}

/// The event that decides each (user, item) pair of `events`: its last in timestamp
/// order (order in `events` among equal timestamps), pairs sorted by user, then item.
pub(crate) fn deciding_events(events: &[Interaction]) -> impl Iterator<Item = &Interaction> {
    deciding_indices(events)
        .into_iter()
        .map(move |i| &events[i])
}

/// The indices in `events` of [`deciding_events`], in the same order.
pub(crate) fn deciding_indices(events: &[Interaction]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| {
        let e = &events[i];
        (e.user, e.item, e.timestamp, i)
    });
    let pair = |k: usize| (events[order[k]].user, events[order[k]].item);
    (0..order.len())
        .filter(|&k| k + 1 == order.len() || pair(k + 1) != pair(k))
        .map(|k| order[k])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(u: u32, i: u32, kind: InteractionKind, t: u64) -> Interaction {
        Interaction::new(UserId(u), ItemId(i), kind, t)
    }

    #[test]
    fn last_event_per_pair_decides() {
        let mut x = Interactions::new();
        x.push(ev(0, 1, InteractionKind::Save, 5)).unwrap();
        x.push(ev(0, 1, InteractionKind::Hide, 3)).unwrap(); // earlier: save wins
        x.push(ev(1, 2, InteractionKind::Click, 1)).unwrap();
        x.push(ev(1, 2, InteractionKind::Hide, 2)).unwrap(); // later: removed
        x.push(ev(2, 0, InteractionKind::View, 7)).unwrap();
        assert_eq!(
            x.positive_pairs(),
            vec![(UserId(0), ItemId(1)), (UserId(2), ItemId(0))]
        );
        assert_eq!((x.n_users(), x.n_items()), (3, 3));
    }

    #[test]
    fn bad_weights_are_rejected() {
        let mut x = Interactions::new();
        let mut e = ev(0, 0, InteractionKind::Save, 0);
        e.weight = f32::NAN;
        assert!(matches!(x.push(e), Err(Error::Graph { .. })));
        e.weight = -1.0;
        assert!(x.push(e).is_err());
        assert!(x.is_empty());
    }

    #[test]
    fn kind_codes_round_trip() {
        for k in [
            InteractionKind::View,
            InteractionKind::Click,
            InteractionKind::Save,
            InteractionKind::Hide,
        ] {
            assert_eq!(InteractionKind::from_code(k.code()), Some(k));
        }
        assert_eq!(InteractionKind::from_code(0), None);
    }
}
