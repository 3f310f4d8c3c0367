//! Dense user and item indices, and the maps from external `u64` ids to them.
//!
//! Training works on dense indices `0..n`; applications talk in their own `u64` ids.
//! An [`IdMap`] assigns the next dense index to every new external id, in arrival
//! order, and never reuses or reorders one.

use std::collections::HashMap;
use std::marker::PhantomData;

/// A user's dense index (row in the user embedding table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u32);

/// An item's dense index (row in the item embedding table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(pub u32);

impl UserId {
    /// The index as a `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl ItemId {
    /// The index as a `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A dense index type that an [`IdMap`] can hand out.
pub trait DenseId: Copy {
    /// Wraps a dense index.
    fn from_index(i: u32) -> Self;
    /// Unwraps the dense index.
    fn to_index(self) -> u32;
}

impl DenseId for UserId {
    fn from_index(i: u32) -> Self {
        UserId(i)
    }
    fn to_index(self) -> u32 {
        self.0
    }
}

impl DenseId for ItemId {
    fn from_index(i: u32) -> Self {
        ItemId(i)
    }
    fn to_index(self) -> u32 {
        self.0
    }
}

/// A bijection between external `u64` ids and dense indices `0..len()`.
#[derive(Debug, Clone)]
pub struct IdMap<T> {
    to_dense: HashMap<u64, u32>,
    to_external: Vec<u64>,
    _kind: PhantomData<T>,
}

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        IdMap {
            to_dense: HashMap::new(),
            to_external: Vec::new(),
            _kind: PhantomData,
        }
    }
}

/// External user ids to [`UserId`]s.
pub type UserMap = IdMap<UserId>;
/// External item ids to [`ItemId`]s.
pub type ItemMap = IdMap<ItemId>;

impl<T: DenseId> IdMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dense index of `external`, assigning the next free one if it is new.
    /// Returns `None` only when all 2³² indices are taken.
    pub fn get_or_insert(&mut self, external: u64) -> Option<T> {
        if let Some(&i) = self.to_dense.get(&external) {
            return Some(T::from_index(i));
        }
        let i = u32::try_from(self.to_external.len()).ok()?;
        self.to_dense.insert(external, i);
        self.to_external.push(external);
        Some(T::from_index(i))
    }

    /// A map holding `externals` in dense order (`externals[i]` gets index `i`), as
    /// [`IdMap::externals`] returned them. `Err((i, id))`: `externals[i] == id` appeared
    /// earlier too, or there are more than 2³² ids (then `id` is the first one too many).
    pub fn from_externals(externals: Vec<u64>) -> std::result::Result<Self, (usize, u64)> {
        let mut to_dense = HashMap::with_capacity(externals.len());
        for (i, &id) in externals.iter().enumerate() {
            let dense = u32::try_from(i).map_err(|_| (i, id))?;
            if to_dense.insert(id, dense).is_some() {
                return Err((i, id));
            }
        }
        Ok(IdMap {
            to_dense,
            to_external: externals,
            _kind: PhantomData,
        })
    }

    /// The dense index of `external`, if known.
    pub fn get(&self, external: u64) -> Option<T> {
        self.to_dense.get(&external).map(|&i| T::from_index(i))
    }

    /// The external id of a dense index, if it is in range.
    pub fn external(&self, id: T) -> Option<u64> {
        self.to_external.get(id.to_index() as usize).copied()
    }

    /// How many ids are mapped.
    pub fn len(&self) -> usize {
        self.to_external.len()
    }

    /// Whether no id is mapped.
    pub fn is_empty(&self) -> bool {
        self.to_external.is_empty()
    }

    /// External ids in dense order.
    pub fn externals(&self) -> &[u64] {
        &self.to_external
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_in_arrival_order_and_stable() {
        let mut m = UserMap::new();
        assert_eq!(m.get_or_insert(900), Some(UserId(0)));
        assert_eq!(m.get_or_insert(5), Some(UserId(1)));
        assert_eq!(m.get_or_insert(900), Some(UserId(0)));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(5), Some(UserId(1)));
        assert_eq!(m.get(6), None);
        assert_eq!(m.external(UserId(1)), Some(5));
        assert_eq!(m.external(UserId(2)), None);
        assert_eq!(m.externals(), &[900, 5]);
        let back = UserMap::from_externals(m.externals().to_vec()).unwrap();
        assert_eq!(
            (back.get(900), back.get(5)),
            (Some(UserId(0)), Some(UserId(1)))
        );
        assert_eq!(UserMap::from_externals(vec![3, 4, 3]).unwrap_err(), (2, 3));
    }
}
