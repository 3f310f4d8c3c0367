//! String ids ("names") for users and items: each name a service is given is mapped to
//! an integer of its own, in the upper half of `u64` ([`NAMED`] and up, in the order
//! names arrive, users and items counted apart), so that everything below the service
//! (the taste graph, the feedback log, the store) keeps working on integers. Integer
//! ids stay themselves and must be below [`NAMED`].
//!
//! Durability: a new name is appended to a write-ahead log (`names`, beside the
//! feedback log) and synced before its integer is used, so every event, upsert or
//! saved state naming it comes after it; a restart replays the log and maps every name
//! to the same integer. A name logged but never used (the process died in between)
//! keeps its integer, unused.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};

use mosaic_durability::wal::{Wal, WalOptions};
use mosaic_durability::{MmapDirectory, OsFs};

use crate::error::{Error, Result};
use crate::types::Key;

/// The first integer given to a name; integer ids must be below it.
pub const NAMED: u64 = 1 << 63;
/// Bytes a name may have at most.
pub const MAX_NAME_BYTES: usize = 256;
/// The name of the log in the service's directory.
const LOG: &str = "names";

/// What a name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// A user.
    User,
    /// An item.
    Item,
}

impl Space {
    fn tag(self) -> u8 {
        match self {
            Space::User => 1,
            Space::Item => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Space> {
        match tag {
            1 => Some(Space::User),
            2 => Some(Space::Item),
            _ => None,
        }
    }
}

/// One space's names both ways.
#[derive(Debug, Default)]
struct Table {
    ids: HashMap<String, u64>,
    /// `names[k]` has the integer `NAMED + k`.
    names: Vec<String>,
}

impl Table {
    fn insert(&mut self, name: String) -> u64 {
        let id = NAMED + self.names.len() as u64;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        id
    }
}

/// The names of a service (see the module documentation).
pub struct Names {
    wal: Mutex<Wal<OsFs>>,
    users: RwLock<Table>,
    items: RwLock<Table>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("users", &self.table(Space::User).names.len())
            .field("items", &self.table(Space::Item).names.len())
            .finish()
    }
}

/// Checks a name: non-empty, at most [`MAX_NAME_BYTES`].
fn check(name: &str, at: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::config(format!(
            "{at}: a name of {} bytes (1 to {MAX_NAME_BYTES})",
            name.len()
        )));
    }
    Ok(())
}

/// An integer id given by a client: below [`NAMED`].
fn check_id(id: u64, at: &str) -> Result<u64> {
    if id >= NAMED {
        return Err(Error::config(format!(
            "{at}: {id} is past the integer ids (below 2^63; the upper half is the service's names)"
        )));
    }
    Ok(id)
}

impl Names {
    /// Opens (or creates) the names log in `dir`, replaying every name in it.
    pub fn open(dir: &MmapDirectory) -> Result<Names> {
        let mut users = Table::default();
        let mut items = Table::default();
        let (wal, _) = Wal::open(dir, LOG, 1, WalOptions::default(), |seq, p| {
            let bad = |m: &str| Error::config(format!("names log record {seq}: {m}"));
            let (&tag, name) = p.split_first().ok_or_else(|| bad("empty"))?;
            let name = std::str::from_utf8(name).map_err(|_| bad("the name is not UTF-8"))?;
            check(name, "a logged name").map_err(|_| bad("the name's length is out of range"))?;
            let table = match Space::from_tag(tag) {
                Some(Space::User) => &mut users,
                Some(Space::Item) => &mut items,
                None => return Err(bad(&format!("unknown space tag {tag}"))),
            };
            if table.ids.contains_key(name) {
                return Err(bad(&format!("{name:?} is logged twice")));
            }
            table.insert(name.to_string());
            Ok::<(), Error>(())
        })?;
        Ok(Names {
            wal: Mutex::new(wal),
            users: RwLock::new(users),
            items: RwLock::new(items),
        })
    }

    fn table_lock(&self, space: Space) -> &RwLock<Table> {
        match space {
            Space::User => &self.users,
            Space::Item => &self.items,
        }
    }

    fn table(&self, space: Space) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table_lock(space)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The integer of `key` in `space`, if it has one (`at` names the field in errors):
    /// an integer is itself; a name is looked up, `None` when it is new.
    pub fn get(&self, space: Space, key: &Key, at: &str) -> Result<Option<u64>> {
        match key {
            Key::Id(id) => check_id(*id, at).map(Some),
            Key::Name(n) => {
                check(n, at)?;
                Ok(self.table(space).ids.get(n).copied())
            }
        }
    }

    /// The integers of `keys` in `space`, giving each new name the next one: the new
    /// names are logged and synced (one sync) before this returns. `at(k)` names
    /// `keys[k]` in errors; a bad key fails the call before anything is logged.
    pub fn get_or_insert(
        &self,
        space: Space,
        keys: &[&Key],
        at: impl Fn(usize) -> String,
    ) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut unknown = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            let found = self.get(space, key, &at(k))?;
            if found.is_none() {
                unknown.push(k);
            }
            out.push(found.unwrap_or(0));
        }
        if unknown.is_empty() {
            return Ok(out);
        }
        // one writer at a time: the log's order is the order integers are given, and
        // the table cannot grow until this call inserts
        let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        let mut added: HashMap<&str, u64> = HashMap::with_capacity(unknown.len());
        let mut order: Vec<&str> = Vec::with_capacity(unknown.len());
        {
            let table = self.table(space);
            let base = NAMED + table.names.len() as u64;
            for k in unknown {
                // only a name can be unknown
                let Key::Name(name) = keys[k] else { continue };
                let known = table.ids.get(name).or_else(|| added.get(name.as_str()));
                out[k] = match known {
                    Some(&id) => id,
                    None => {
                        let id = base + order.len() as u64;
                        let mut record = Vec::with_capacity(1 + name.len());
                        record.push(space.tag());
                        record.extend_from_slice(name.as_bytes());
                        wal.append(&record)?;
                        added.insert(name, id);
                        order.push(name);
                        id
                    }
                };
            }
        }
        // durable before anyone is given the integers
        wal.sync()?;
        let mut table = self
            .table_lock(space)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for name in order {
            let id = table.insert(name.to_string());
            debug_assert_eq!(Some(&id), added.get(name));
        }
        Ok(out)
    }

    /// How a client names integer `id` of `space`: its name when it is one, else itself.
    pub fn key(&self, space: Space, id: u64) -> Key {
        match id.checked_sub(NAMED) {
            Some(k) => self
                .table(space)
                .names
                .get(k as usize)
                .map_or(Key::Id(id), |n| Key::Name(n.clone())),
            None => Key::Id(id),
        }
    }

    /// Names known in `space`.
    pub fn len(&self, space: Space) -> usize {
        self.table(space).names.len()
    }
}
