//! The recommender's serving state: feedback into the taste graph and its durable log,
//! and the saved state a restarted service serves again.
//!
//! With a log attached ([`Recommender::with_log`], or [`crate::pipeline::restore`]),
//! [`Recommender::record`] returns once its event is in the feedback log, acknowledged
//! as the log's [`SyncPolicy`] says, and [`Recommender::checkpoint`] saves the state
//! (the refresher's, with the external item ids) into the log's directory and lets the
//! log drop what the state covers. Restart is that state plus the log's later events,
//! replayed in the order they were applied: the recommender a process that never died
//! would serve.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use embed_store::Snapshot;
use embed_store::hnsw::Hnsw;
use mosaic_durability::MmapDirectory;
use taste_graph::refresh::state::{RefresherState, Restored};
use taste_graph::{
    Feedback, FeedbackLock, FeedbackLog, Interaction, InteractionKind, InterestConfig, ItemId,
    Refresher, SyncPolicy, UserId, feedback::Replayed,
};

use super::{Attached, PREFIX_CHUNK, Recommender, State, no_refresher};
use crate::error::{Error, Result};
use crate::saved::{self, Prefix, PrefixScan, SavedIds};

/// One interaction for [`Recommender::record_batch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// The application's user id (a new one becomes the taste graph's next user).
    pub user: u64,
    /// The item's external id.
    pub item: u64,
    /// What the user did.
    pub kind: InteractionKind,
    /// When (the taste graph's time unit).
    pub time: u64,
}

/// What [`crate::pipeline::restore`] rebuilt.
#[derive(Debug)]
pub struct Reopened {
    /// The recommender, serving the saved state with the logged events replayed, its log
    /// attached.
    pub recommender: Recommender,
    /// The log seq the saved state covered.
    pub saved_seq: u64,
    /// What the log replayed on top of it.
    pub replayed: Replayed,
}

fn open_dir(dir: &Path) -> Result<MmapDirectory> {
    Ok(MmapDirectory::open(dir).map_err(taste_graph::Error::from)?)
}

/// Takes the feedback log's lock in `dir` (created if absent): held before the saved
/// state there is read or written, so that no other process (an old one still
/// finishing a checkpoint) replaces the state and cuts the log in between.
/// [`taste_graph::Error::Locked`] while another holder has it.
pub(crate) fn lock_dir(dir: &Path) -> Result<FeedbackLock> {
    Ok(FeedbackLog::lock(&open_dir(dir)?)?)
}

impl Recommender {
    /// Feeds an action back into the taste graph: the next `recommend` for `user`
    /// reflects it. An unknown external item id becomes a new item (it can be
    /// recommended once the store holds a vector for it), up to
    /// [`Recommender::max_live_items`] items added since the last refit
    /// ([`Error::LiveItemCap`] past it). `user` is the application's user id (a user's
    /// dense index unless [`Recommender::with_user_ids`] named them otherwise): an
    /// unknown one becomes the taste graph's next user ([`Recommender::user`] finds its
    /// dense id). With a log attached (it logs `user` as given), returns once the event is acknowledged by it
    /// (see [`SyncPolicy`]); after a failed log write or sync (that call's event was
    /// applied in memory, not acknowledged) every call fails, changing nothing, until
    /// the service restarts from its directory ([`crate::pipeline::restore`]).
    pub fn record(&self, user: u64, item: u64, kind: InteractionKind, time: u64) -> Result<()> {
        let logged = self.apply_and_log(user, item, kind, time)?;
        self.acknowledge(logged)
    }

    /// [`Recommender::record`] for each of `events` in order, acknowledged together: one
    /// sync of the log covers the batch. On an event that is refused, the events before
    /// it are recorded (and acknowledged) and [`Error::Batch`] says how many; the batch
    /// is not rolled back.
    pub fn record_batch(&self, events: &[Event]) -> Result<()> {
        let mut last = None;
        for (k, e) in events.iter().enumerate() {
            match self.apply_and_log(e.user, e.item, e.kind, e.time) {
                Ok(seq) => last = seq.or(last),
                Err(error) => {
                    self.acknowledge(last)?;
                    return Err(Error::Batch {
                        recorded: k,
                        source: Box::new(error),
                    });
                }
            }
        }
        self.acknowledge(last)
    }

    /// The event applied to the taste graph and appended to the log (when attached),
    /// both locks held, so the log's order is the order of application; returns its seq.
    fn apply_and_log(
        &self,
        user: u64,
        item: u64,
        kind: InteractionKind,
        time: u64,
    ) -> Result<Option<u64>> {
        // the log first: a recorder waiting for it (another's sync) holds no lock that
        // readers need
        let mut log = self.log();
        if let Some(a) = log.as_ref() {
            a.log.check()?; // a failed log takes no event, not even in memory
        }
        let mut st = self.write();
        apply(&mut st, user, item, kind, time, Some(self.max_live_items))?;
        match log.as_mut() {
            Some(a) => Ok(Some(a.log.append(&Feedback {
                user,
                item,
                kind,
                weight: 1.0,
                timestamp: time,
            })?)),
            None => Ok(None),
        }
    }

    /// Returns once the log acknowledges `seq` (nothing to do without one). The sync runs
    /// outside the taste graph's lock: readers go on meanwhile, and one sync
    /// acknowledges every event logged before it (group commit).
    fn acknowledge(&self, seq: Option<u64>) -> Result<()> {
        if let Some(seq) = seq
            && let Some(a) = self.log().as_mut()
        {
            a.log.acknowledge(seq)?;
        }
        Ok(())
    }

    /// Items feedback may add to the taste graph between refits.
    pub fn max_live_items(&self) -> usize {
        self.max_live_items
    }

    /// Sets [`Recommender::max_live_items`] (default
    /// [`super::DEFAULT_MAX_LIVE_ITEMS`]).
    pub fn with_max_live_items(mut self, cap: usize) -> Self {
        self.max_live_items = cap;
        self
    }

    /// Makes feedback durable: saves this recommender's state into `dir` (which must
    /// hold no saved state: restart from one with [`crate::pipeline::restore`]) and
    /// attaches a new feedback log there (see the module documentation). Needs an
    /// attached refresher (the state saved is the refresher's). The log is shared with
    /// the recommenders this one was refreshed from and those its refits make, and is
    /// closed (its directory free to [`crate::pipeline::restore`]) when the last of them
    /// is dropped.
    pub fn with_log(self, dir: &Path, policy: SyncPolicy) -> Result<Self> {
        let lock = lock_dir(dir)?;
        self.with_log_locked(dir, lock, policy)
    }

    /// [`Recommender::with_log`] under `lock` ([`lock_dir`] on `dir`).
    pub(crate) fn with_log_locked(
        self,
        dir: &Path,
        lock: FeedbackLock,
        policy: SyncPolicy,
    ) -> Result<Self> {
        if Refresher::has_saved_state(dir) {
            return Err(Error::config(format!(
                "{} already holds a saved state: restart from it (pipeline::restore), or log to a new directory",
                dir.display()
            )));
        }
        let fs = open_dir(dir)?;
        // the state first: a log never exists without a state under it
        self.state(0)?.write(dir)?;
        let (log, replayed) =
            FeedbackLog::open_locked(&fs, lock, policy, 0, |_, _| Ok::<(), Error>(()))?;
        if !replayed.seqs.is_empty() {
            return Err(Error::config(format!(
                "{} holds a feedback log ({} events) but held no saved state",
                dir.display(),
                replayed.seqs.end - replayed.seqs.start
            )));
        }
        *self.log() = Some(Attached {
            log,
            dir: dir.to_path_buf(),
        });
        Ok(self)
    }

    /// `restored` (a state [`Refresher::load`]ed from `dir`, with the ranker's `saved`
    /// ids) served over `snap` and `index` (see [`Recommender::restore`]), with the events
    /// `dir`'s feedback log holds after the state replayed in order and the log attached
    /// ([`crate::pipeline::restore`] does it all), under `lock` ([`lock_dir`] on `dir`,
    /// taken before `restored` was read).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reopen(
        lock: FeedbackLock,
        restored: Restored,
        saved: SavedIds,
        dir: &Path,
        policy: SyncPolicy,
        snap: Snapshot,
        index: Option<Hnsw>,
        interests: InterestConfig,
    ) -> Result<Reopened> {
        let (rec, saved_seq) = Self::restore_with(restored, saved, snap, index, interests)?;
        let fs = open_dir(dir)?;
        let (log, replayed) = {
            let mut st = rec.write();
            FeedbackLog::open_locked(&fs, lock, policy, saved_seq, |seq, f| {
                replay(&mut st, f).map_err(|e| Error::Replay {
                    seq,
                    source: Box::new(e),
                })
            })?
        };
        *rec.log() = Some(Attached {
            log,
            dir: dir.to_path_buf(),
        });
        Ok(Reopened {
            recommender: rec,
            saved_seq,
            replayed,
        })
    }

    /// Saves the state into the log's directory, covering every event recorded so far,
    /// then lets the log drop the segments it covers; returns the log seq it covers.
    /// Takes the taste graph's read lock for the capture (see [`Recommender::state`]);
    /// one checkpoint runs at a time.
    pub fn checkpoint(&self) -> Result<u64> {
        let _one = self
            .durable
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.checkpoint_locked()
    }

    /// [`Recommender::checkpoint`], the caller holding the checkpoint lock.
    pub(super) fn checkpoint_locked(&self) -> Result<u64> {
        let prefix = self.saved_prefix();
        let (state, seq, dir) = {
            let mut log = self.log();
            let st = self.read_current()?;
            let a = log.as_mut().ok_or_else(no_log)?;
            let seq = a.log.last_seq();
            // durable through `seq` before a state that covers it is
            a.log.sync()?;
            (self.state_of(&st, prefix, seq)?, seq, a.dir.clone())
        };
        state.write(&dir)?;
        self.log()
            .as_mut()
            .ok_or_else(no_log)?
            .log
            .saved_through(seq)?;
        Ok(seq)
    }

    /// Whether a feedback log is attached.
    pub(super) fn has_log(&self) -> bool {
        self.log().is_some()
    }

    /// Makes every logged event durable now (with [`SyncPolicy::Every`], call it from a
    /// timer so that a quiet period leaves nothing unsynced); returns the highest durable
    /// seq.
    pub fn sync_feedback(&self) -> Result<u64> {
        Ok(self.log().as_mut().ok_or_else(no_log)?.log.sync()?)
    }

    /// The directory of the attached feedback log.
    pub fn log_dir(&self) -> Option<PathBuf> {
        self.log().as_ref().map(|a| a.dir.clone())
    }

    fn log(&self) -> MutexGuard<'_, Option<Attached>> {
        self.durable
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Captures what a restarted service needs to serve on (under the read lock; see
    /// [`Refresher::state`] for its cost): the attached refresher's state
    /// ([`Refresher::state_with`]) with the name of the store generation this recommender
    /// serves and its external item ids — those past the ones the generation's rows hold
    /// in the same order (for a pipeline-published model: the items added since; the
    /// first save on a generation compares the ids once, 65,536 at a time, each under its
    /// own short read lock). Write it with [`RefresherState::write`] outside
    /// any lock; [`Recommender::restore`] (or [`crate::pipeline::restore`]) serves it
    /// again. `through_seq`: the seq of the caller's own event log the state covers. With
    /// a feedback log attached use [`Recommender::checkpoint`], which knows it. Refused
    /// on a retired recommender (save the one serving).
    pub fn state(&self, through_seq: u64) -> Result<RefresherState> {
        let prefix = self.saved_prefix();
        let st = self.read_current()?;
        self.state_of(&st, prefix, through_seq)
    }

    fn state_of(&self, st: &State, prefix: Prefix, through_seq: u64) -> Result<RefresherState> {
        let r = st.refresher.as_ref().ok_or_else(no_refresher)?;
        let app = saved::encode(
            self.snap.generation(),
            prefix,
            st.items.externals(),
            st.users.externals(),
        );
        Ok(r.state_with(&st.live, through_seq, &app)?)
    }

    /// The leading external ids the generation's live rows hold, at most the shared cap
    /// ([`Recommender::replacing_rows`]), found once per recommender (again when the cap
    /// falls below it): compared [`PREFIX_CHUNK`] ids at a time, each chunk under its own
    /// read lock (the ids only grow, so what a chunk matched stays true), so that no lock
    /// is held for O(items).
    pub(super) fn saved_prefix(&self) -> Prefix {
        let cap = self.prefix_cap.load(Ordering::Acquire);
        let mut found = self
            .saved_prefix
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = *found
            && p.len <= cap
        {
            return p;
        }
        let mut rows = self.snap.iter_live().map(|(id, _, _)| id.0);
        let mut scan = PrefixScan::new();
        while !scan.done() {
            let st = self.read();
            let ids = st.items.externals().get(scan.len()..).unwrap_or(&[]);
            let take = ids.len().min(PREFIX_CHUNK).min(cap - scan.len());
            scan.feed(&mut rows, &ids[..take]);
        }
        let p = scan.prefix();
        *found = Some(p);
        p
    }

    /// A recommender serving a state saved through [`Recommender::state`] (loaded with
    /// [`Refresher::load`]) over `snap` — which must be the store generation it was
    /// saved serving — and `index` (built from `snap`, cosine); returns it with the
    /// seq the state covers (observe the later events through [`Recommender::record`];
    /// [`crate::pipeline::restore`] replays a feedback log). The refresher is attached again.
    pub fn restore(
        restored: Restored,
        snap: Snapshot,
        index: Option<Hnsw>,
        interests: InterestConfig,
    ) -> Result<(Recommender, u64)> {
        let saved = SavedIds::decode(&restored.app_data)?;
        Self::restore_with(restored, saved, snap, index, interests)
    }

    /// [`Recommender::restore`] with the ranker's saved data already decoded.
    pub(crate) fn restore_with(
        restored: Restored,
        saved: SavedIds,
        snap: Snapshot,
        index: Option<Hnsw>,
        interests: InterestConfig,
    ) -> Result<(Recommender, u64)> {
        if saved.generation != snap.generation() {
            return Err(Error::config(format!(
                "the saved taste graph was served over store generation {:?}, this snapshot is {:?}: restore over that generation, or publish the restored model's items to a new one",
                saved.generation,
                snap.generation()
            )));
        }
        let ids = saved.ids(&snap)?;
        let users = saved.user_ids(restored.live.n_users())?;
        let rec = Recommender::with_ids(
            snap,
            index,
            restored.live,
            Some(ids),
            Some(users),
            interests,
        )?
        .with_refresher(restored.refresher)?;
        Ok((rec, restored.through_seq))
    }
}

fn no_log() -> Error {
    Error::config("no feedback log is attached (Recommender::with_log, pipeline::restore)")
}

/// One logged event applied again, as [`Recommender::record`] applied it (no live-item
/// cap: the event was acknowledged under the cap in force then).
fn replay(st: &mut State, f: Feedback) -> Result<()> {
    apply(st, f.user, f.item, f.kind, f.timestamp, None)
}

/// The event into the taste graph (and the refresher, when attached): validated before
/// anything changes, so an error leaves the state as it was.
fn apply(
    st: &mut State,
    external_user: u64,
    item: u64,
    kind: InteractionKind,
    time: u64,
    cap: Option<usize>,
) -> Result<()> {
    let dense = match st.items.get(item) {
        Some(d) => d.0,
        None => {
            let added = st.live.n_items() - st.live.n_trained_items();
            if let Some(cap) = cap
                && added >= cap
            {
                return Err(Error::LiveItemCap { item, cap });
            }
            st.live.n_items() as u32
        }
    };
    // a new user is the next dense one (the map and the taste graph grow together)
    debug_assert_eq!(st.users.len(), st.live.n_users());
    let user = match st.users.get(external_user) {
        Some(u) => u,
        None => UserId(u32::try_from(st.users.len()).map_err(|_| {
            Error::config(format!(
                "user {external_user} would be past the taste graph's 2^32 users"
            ))
        })?),
    };
    match &mut st.refresher {
        Some(r) => {
            let event = Interaction {
                user,
                item: ItemId(dense),
                kind,
                weight: 1.0,
                timestamp: time,
            };
            r.observe(&mut st.live, event)?
        }
        None => st.live.observe(user, ItemId(dense), kind, time)?,
    }
    if dense as usize == st.items.len() {
        // `dense` is a u32, so the map has room for it
        st.items.get_or_insert(item);
    }
    if user.index() == st.users.len() {
        st.users.get_or_insert(external_user);
    }
    st.popular.bump(st.live.item_counts(), dense);
    Ok(())
}
