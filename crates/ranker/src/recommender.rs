//! The request path: retrieval from every source, filtering, scoring, MMR, and the
//! feedback loop into the taste graph.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use embed_store::hnsw::{Hnsw, Scratch};
use embed_store::kernels::dot;
use embed_store::{Filter, ItemId as StoreId, Snapshot};
use taste_graph::model::{ItemMap, UserMap};
use taste_graph::refresh::{Installed, Refit, RefitJob};
use taste_graph::{FeedbackLog, InterestConfig, ItemId, LiveModel, Refresher, UserId};

use crate::error::{Error, Result};
use crate::mmr::{Quotas, mmr, normalize_rows};
use crate::options::RecommendOptions;
use crate::popular::Popular;
use crate::saved::Prefix;
use crate::scoring::{self, Scored, Taste};
use crate::sources::{Catalog, Gathered, Interest, Wants};
use crate::types::{Candidate, Recommendation, ScoreParts, Source};

mod rows;
pub mod serving;

struct State {
    live: LiveModel,
    /// External (store) item ids of the taste graph's dense items.
    items: ItemMap,
    /// The application's user ids of the taste graph's dense users (as many).
    users: UserMap,
    /// The most engaged items, in order (kept so by every event).
    popular: Popular,
    /// Records every event for background refits, when attached.
    refresher: Option<Refresher>,
    /// Refits installed so far; a recommender serves one of them.
    generation: u64,
}

/// Ids compared per read lock when the first save finds the generation's prefix
/// (512 KiB of ids).
const PREFIX_CHUNK: usize = 65_536;
/// Newest rows considered by the fresh source.
const FRESH_POOL: usize = 2048;

/// Items feedback may add to the taste graph between refits, unless set otherwise
/// ([`Recommender::with_max_live_items`]).
pub const DEFAULT_MAX_LIVE_ITEMS: usize = 100_000;

/// The feedback log and the checkpoint lock, shared by a recommender and those its
/// refits make. Lock order: `checkpoint`, then `log`, then the taste graph's lock (so a
/// recorder waiting for the log, behind another's sync, blocks no reader).
#[derive(Default)]
struct Durable {
    log: Mutex<Option<Attached>>,
    /// One checkpoint at a time (states are written in the order they were captured).
    checkpoint: Mutex<()>,
}

/// A feedback log and the directory it and the saved state live in.
struct Attached {
    log: FeedbackLog,
    dir: PathBuf,
}

/// The external id map of `external` (dense item `k` is `external[k]`).
fn item_map(external: Vec<u64>) -> Result<ItemMap> {
    ItemMap::from_externals(external).map_err(|(k, e)| {
        Error::config(format!(
            "external item id {e} at row {k} appears earlier in the id list (or the list is past 2^32 ids)"
        ))
    })
}

/// The user map of `n` users: dense user `k` is `ids[k]` (`None`: each user's
/// application id is its dense index).
fn user_map(ids: Option<Vec<u64>>, n: usize) -> Result<UserMap> {
    let ids = ids.unwrap_or_else(|| (0..n as u64).collect());
    if ids.len() != n {
        return Err(Error::config(format!(
            "{} user ids for {n} users in the taste graph",
            ids.len()
        )));
    }
    UserMap::from_externals(ids).map_err(|(k, e)| {
        Error::config(format!(
            "user id {e} at row {k} appears earlier in the id list (or the list is past 2^32 ids)"
        ))
    })
}

/// `user_excluded` and the request's blocked ids, sorted and deduplicated (as
/// [`Filter::exclude`] takes them).
fn excluded(mut user_excluded: Vec<u64>, opts: &RecommendOptions) -> Vec<u64> {
    user_excluded.extend_from_slice(&opts.blocked);
    user_excluded.sort_unstable();
    user_excluded.dedup();
    user_excluded
}

/// The filter of a request: `exclude` (from [`excluded`]) and the attribute rule.
fn request_filter<'a>(exclude: &'a [u64], opts: &'a RecommendOptions) -> Filter<'a> {
    let filter = Filter::none().exclude(exclude);
    match opts.rule.as_deref() {
        Some(rule) => filter.with_attrs(rule),
        None => filter,
    }
}

fn no_refresher() -> Error {
    Error::config("no refresher is attached (Recommender::with_refresher)")
}

/// Refuses an index that does not belong to `snap` (the search itself would too).
fn check_index(snap: &Snapshot, index: Option<&Hnsw>) -> Result<()> {
    if let Some(h) = index {
        let mut s = Scratch::new(h.len());
        h.search(snap, &vec![0.0; snap.dim()], 1, 1, &Filter::none(), &mut s)?;
    }
    Ok(())
}

/// The newest live rows of `snap` (id, segment, row), newest first.
fn fresh_rows(snap: &Snapshot) -> Vec<(u64, usize, usize)> {
    let mut fresh = Vec::with_capacity(FRESH_POOL);
    'segments: for (s, ls) in snap.segments().iter().enumerate().rev() {
        let ids = ls.segment.ids();
        for r in (0..ids.len()).rev() {
            if fresh.len() == FRESH_POOL {
                break 'segments;
            }
            if !ls.tombstones.is_deleted(r) {
                fresh.push((ids[r], s, r));
            }
        }
    }
    fresh
}

/// Recommendations over one embed-store generation (the item embeddings of the taste
/// graph's model) and the live taste graph. Cheap to share (`Arc`): `recommend` takes
/// `&self` and runs concurrently; `record` takes a short write lock. To serve a new
/// generation (a retrain), build a new `Recommender` and swap the `Arc`; for background
/// refits of the same taste graph, attach a [`Refresher`]
/// ([`Recommender::with_refresher`]) and see [`Recommender::refreshed`].
pub struct Recommender {
    snap: Snapshot,
    /// The newest live rows (id, segment, row), newest first.
    fresh: Vec<(u64, usize, usize)>,
    index: Option<Hnsw>,
    interests: InterestConfig,
    /// Shared with the recommenders that refits of this one make.
    state: Arc<RwLock<State>>,
    /// The refit generation whose item embeddings `snap` holds.
    serves: u64,
    /// The leading external ids `snap`'s rows hold (found by the first save).
    saved_prefix: Mutex<Option<Prefix>>,
    /// The most ids a save may take from the generation's rows: lowered before a
    /// commit moves one of them ([`Recommender::replacing_rows`]). Shared by the
    /// recommenders over commits of the same generation ([`Recommender::over`]).
    prefix_cap: Arc<AtomicUsize>,
    /// Shared with the recommenders that refits of this one make.
    durable: Arc<Durable>,
    /// Items feedback may add between refits.
    max_live_items: usize,
}

impl std::fmt::Debug for Recommender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommender")
            .field("generation", &self.snap.generation())
            .field("items", &self.snap.len())
            .field("index", &self.index)
            .finish()
    }
}

/// The scored candidates of one request.
struct Pool {
    cands: Vec<Candidate>,
    parts: Vec<ScoreParts>,
    /// Unit-normalised vectors, `cands.len() × dim`.
    unit: Vec<f32>,
    /// Each candidate's nearest interest (soft quota group).
    group: Vec<Option<usize>>,
    /// Importance of each interest that retrieved candidates.
    importances: Vec<f32>,
}

impl Recommender {
    /// A recommender over `snap` (vectors in the live model's space) and `live`.
    /// `item_ids[k]` is the external (store) id of the live model's item `k`
    /// (`None`: the dense ids themselves). `index`, when given, must be built from
    /// `snap` with [`embed_store::Metric::Cosine`]; without it retrieval is exact.
    pub fn new(
        snap: Snapshot,
        index: Option<Hnsw>,
        live: LiveModel,
        item_ids: Option<Vec<u64>>,
        interests: InterestConfig,
    ) -> Result<Self> {
        Self::with_ids(snap, index, live, item_ids, None, interests)
    }

    /// [`Recommender::new`] with the users' application ids too
    /// ([`Recommender::with_user_ids`]; `None`: their dense indices).
    pub(crate) fn with_ids(
        snap: Snapshot,
        index: Option<Hnsw>,
        live: LiveModel,
        item_ids: Option<Vec<u64>>,
        user_ids: Option<Vec<u64>>,
        interests: InterestConfig,
    ) -> Result<Self> {
        if snap.dim() != live.dim() {
            return Err(Error::config(format!(
                "generation {:?} holds {}-wide vectors, the taste graph's embeddings are {} wide",
                snap.generation(),
                snap.dim(),
                live.dim()
            )));
        }
        let external = item_ids.unwrap_or_else(|| (0..live.n_items() as u64).collect());
        if external.len() != live.n_items() {
            return Err(Error::config(format!(
                "{} external item ids for {} items in the taste graph",
                external.len(),
                live.n_items()
            )));
        }
        check_index(&snap, index.as_ref())?;
        let popular = Popular::from_counts(live.item_counts());
        Ok(Self {
            fresh: fresh_rows(&snap),
            snap,
            index,
            interests,
            state: Arc::new(RwLock::new(State {
                users: user_map(user_ids, live.n_users())?,
                live,
                items: item_map(external)?,
                popular,
                refresher: None,
                generation: 0,
            })),
            serves: 0,
            saved_prefix: Mutex::default(),
            prefix_cap: Arc::new(AtomicUsize::new(usize::MAX)),
            durable: Arc::default(),
            max_live_items: DEFAULT_MAX_LIVE_ITEMS,
        })
    }

    /// Attaches `refresher` (built from the trainer and graph of the live model this
    /// recommender serves): from now on [`Recommender::record`] also records every event
    /// for background refits ([`Recommender::plan_refit`]).
    pub fn with_refresher(self, refresher: Refresher) -> Result<Self> {
        {
            let mut st = self.write();
            let trained = (st.live.n_users(), st.live.n_trained_items());
            let graph = (refresher.graph().n_users(), refresher.graph().n_items());
            if graph.0 > trained.0 || graph.1 != trained.1 {
                return Err(Error::config(format!(
                    "the refresher's graph has {} users and {} items, the live model {} users and {} trained items: not the graph it was built on",
                    graph.0, graph.1, trained.0, trained.1
                )));
            }
            st.refresher = Some(refresher);
        }
        Ok(self)
    }

    /// A background refit of `epochs` epochs over the events recorded so far (see
    /// [`Refresher::plan`]); run it off the request path, export its item embeddings
    /// ([`crate::pipeline::refreshed`] does it all) and pass it to
    /// [`Recommender::refreshed`]. Needs an attached refresher.
    pub fn plan_refit(&self, epochs: usize) -> Result<RefitJob> {
        let st = self.read();
        let r = st.refresher.as_ref().ok_or_else(no_refresher)?;
        Ok(r.plan(&st.live, epochs)?)
    }

    /// The external ids of the live model's first `n` items (e.g. those of a refit's
    /// model, to export its embeddings under).
    pub fn external_ids(&self, n: usize) -> Result<Vec<u64>> {
        let st = self.read();
        st.items
            .externals()
            .get(..n)
            .map(<[u64]>::to_vec)
            .ok_or_else(|| {
                Error::config(format!(
                    "{n} item ids asked for, the taste graph has {}",
                    st.items.len()
                ))
            })
    }

    /// Installs `refit` into the shared taste graph ([`Refresher::install`]; the events
    /// recorded since its plan are replayed, most of them outside the write lock
    /// ([`Refit::catch_up`])) and returns the recommender that serves it
    /// over `snap` (the refit's item embeddings, exported under
    /// [`Recommender::external_ids`]) and `index` (built from `snap`, cosine). Swap it in
    /// for this one: from the install on, this one's `recommend` answers
    /// [`Error::Retired`] (its vectors belong to the previous model), while `record`
    /// through either reaches the same taste graph, so no event is lost in between.
    pub fn refreshed(
        &self,
        refit: Refit,
        snap: Snapshot,
        index: Option<Hnsw>,
    ) -> Result<(Recommender, Installed)> {
        if snap.dim() != refit.live().dim() {
            return Err(Error::config(format!(
                "generation {:?} holds {}-wide vectors, the refit's embeddings are {} wide",
                snap.generation(),
                snap.dim(),
                refit.live().dim()
            )));
        }
        check_index(&snap, index.as_ref())?;
        // Events recorded during the refit are copied under the read lock and replayed
        // outside any lock; the install replays only those that arrive meanwhile.
        let copy = {
            let st = self.read();
            let r = st.refresher.as_ref().ok_or_else(no_refresher)?;
            r.catch_up(&refit, &st.live)?
        };
        let refit = refit.catch_up(copy)?;
        // The new model's popular pool, ranked outside the lock (O(items)); the install
        // only grows the counts of the items its replayed events touch, and adds items.
        let popular = Popular::from_counts(refit.live().item_counts());
        let ranked_items = refit.live().n_items() as u32;
        let (installed, replaced, serves) = {
            let mut st = self.write();
            let st = &mut *st;
            let r = st.refresher.as_mut().ok_or_else(no_refresher)?;
            let (installed, replaced) = r.install(refit, &mut st.live)?;
            st.generation += 1;
            let replayed = r.pending_from(r.pending_len().saturating_sub(installed.replayed));
            let touched = replayed.map(|e| e.item.0);
            let added = ranked_items..st.live.n_items() as u32;
            st.popular = popular.repair(st.live.item_counts(), touched.chain(added));
            debug_assert_eq!(st.popular, Popular::from_counts(st.live.item_counts()));
            (installed, replaced, st.generation)
        };
        // The previous model's tables are freed outside the lock.
        drop(replaced);
        let uncapped = Arc::new(AtomicUsize::new(usize::MAX));
        Ok((self.sibling(snap, index, serves, uncapped), installed))
    }

    /// Another recommender over the same taste graph, feedback log and settings: over
    /// `snap` and `index` (checked by the caller), serving refit generation `serves`,
    /// its saves' prefix capped by `prefix_cap`.
    fn sibling(
        &self,
        snap: Snapshot,
        index: Option<Hnsw>,
        serves: u64,
        prefix_cap: Arc<AtomicUsize>,
    ) -> Recommender {
        Recommender {
            fresh: fresh_rows(&snap),
            snap,
            index,
            interests: self.interests,
            state: Arc::clone(&self.state),
            serves,
            saved_prefix: Mutex::default(),
            prefix_cap,
            durable: Arc::clone(&self.durable),
            max_live_items: self.max_live_items,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way
        // that breaks invariants (observe validates before mutating), so keep serving.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, if this recommender's vectors still belong to its model.
    fn read_current(&self) -> Result<RwLockReadGuard<'_, State>> {
        let st = self.read();
        if st.generation != self.serves {
            return Err(Error::Retired {
                serves: self.serves,
                current: st.generation,
            });
        }
        Ok(st)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The snapshot recommendations are drawn from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Number of users the taste graph knows.
    pub fn n_users(&self) -> usize {
        self.read().live.n_users()
    }

    /// Runs `f` on the live taste graph (e.g. to read a user's embedding).
    pub fn with_live<T>(&self, f: impl FnOnce(&LiveModel) -> T) -> T {
        f(&self.read().live)
    }

    /// The external id of the live model's dense item `item`.
    pub fn external_id(&self, item: ItemId) -> Option<u64> {
        self.read().items.external(item)
    }

    /// The live model's dense id of external item `item`.
    pub fn dense_id(&self, item: u64) -> Option<ItemId> {
        self.read().items.get(item)
    }

    /// The dense id of the application's user id `user`, if the taste graph knows it.
    pub fn user(&self, user: u64) -> Option<UserId> {
        self.read().users.get(user)
    }

    /// The application's id of dense user `user`.
    pub fn external_user(&self, user: UserId) -> Option<u64> {
        self.read().users.external(user)
    }

    /// Names the taste graph's users with the application's ids: `ids[k]` is dense user
    /// `k`'s (by default a user's id is its dense index). Distinct, one per user.
    pub fn with_user_ids(self, ids: Vec<u64>) -> Result<Self> {
        {
            let mut st = self.write();
            st.users = user_map(Some(ids), st.live.n_users())?;
        }
        Ok(self)
    }

    /// The user's interests now (most important first), with external medoid ids.
    pub fn interests(&self, user: UserId, now: Option<u64>) -> Result<Vec<(u64, f32)>> {
        let st = self.read_current()?;
        let now = now.unwrap_or_else(|| st.live.last_time(user).unwrap_or(0));
        let found = taste_graph::interests(&st.live, user, now, &self.interests)?;
        Ok(found
            .iter()
            .map(|i| (st.items.externals()[i.medoid.index()], i.importance))
            .collect())
    }

    /// The top `opts.k` items for `user`, best first, each with its explanation.
    pub fn recommend(&self, user: UserId, opts: &RecommendOptions) -> Result<Vec<Recommendation>> {
        opts.validate()?;
        let Some(pool) = self.pool(user, opts)? else {
            return Ok(Vec::new());
        };
        let d = self.snap.dim();
        let relevance: Vec<f32> = pool.parts.iter().map(|p| p.relevance).collect();
        let quota: Vec<usize> = pool
            .importances
            .iter()
            .map(|imp| (opts.k as f32 * imp * opts.interest_slack).ceil().max(1.0) as usize)
            .collect();
        let quotas = (opts.interest_slack > 0.0 && !quota.is_empty()).then_some(Quotas {
            group: &pool.group,
            quota: &quota,
        });
        let picks = mmr(
            &relevance,
            &pool.unit,
            d,
            opts.k,
            opts.lambda,
            &opts.caps,
            quotas,
            |i| self.snap.attrs(StoreId(pool.cands[i].id)),
        )?;
        Ok(picks
            .iter()
            .map(|p| {
                let mut parts = pool.parts[p.index];
                parts.redundancy = p.redundancy;
                Recommendation {
                    item: pool.cands[p.index].id,
                    score: p.score,
                    source: pool.cands[p.index].source,
                    parts,
                }
            })
            .collect())
    }

    /// The answer for a user the taste graph does not know yet (cold start): the most
    /// engaged items by decreasing engagement, every fourth slot given to the newest
    /// item of the generation not listed yet (new items get exposure), `opts.blocked`
    /// and `opts.rule` applied; `opts.k` results at most. Scores are the popularity
    /// part (`log(1 + engagements) / log(1 + max)`); the same list for every such user.
    pub fn cold_start(&self, opts: &RecommendOptions) -> Result<Vec<Recommendation>> {
        opts.validate()?;
        let st = self.read_current()?;
        let counts = st.live.item_counts();
        let max = st.popular.ids().next().map_or(0, |i| counts[i as usize]);
        let popularity = |c: u32| {
            if max == 0 {
                0.0
            } else {
                (c as f32).ln_1p() / (max as f32).ln_1p()
            }
        };
        let exclude = excluded(Vec::new(), opts);
        let filter = request_filter(&exclude, opts);
        // in the generation (retrievable) and admitted by the request's filter
        let allowed = |id: u64| {
            self.snap
                .attrs(StoreId(id))
                .is_some_and(|a| filter.admits(id, || a))
        };
        let mut popular = st.popular.ids().filter_map(|i| {
            let id = st.items.externals()[i as usize];
            allowed(id).then_some((id, popularity(counts[i as usize]), Source::Popular))
        });
        let mut fresh = self.fresh.iter().filter_map(|&(id, _, _)| {
            let c = st.items.get(id).map_or(0, |i| counts[i.index()]);
            allowed(id).then_some((id, popularity(c), Source::Fresh))
        });
        let mut out: Vec<Recommendation> = Vec::with_capacity(opts.k);
        let mut listed = std::collections::HashSet::with_capacity(opts.k);
        while out.len() < opts.k {
            let next = if out.len() % 4 == 3 {
                fresh
                    .find(|f| !listed.contains(&f.0))
                    .or_else(|| popular.next())
            } else {
                popular.next().or_else(|| fresh.next())
            };
            let Some((item, score, source)) = next else {
                break;
            };
            if !listed.insert(item) {
                continue;
            }
            out.push(Recommendation {
                item,
                score,
                source,
                parts: ScoreParts {
                    popularity: score,
                    relevance: score,
                    ..ScoreParts::default()
                },
            });
        }
        Ok(out)
    }

    /// Every retrieved candidate for `user` with its score parts, by decreasing
    /// relevance, before diversity re-ranking (`score` = relevance, no redundancy): for
    /// inspection and for training a [`crate::scorer::LearnedScorer`].
    pub fn candidates(&self, user: UserId, opts: &RecommendOptions) -> Result<Vec<Recommendation>> {
        opts.validate()?;
        let Some(pool) = self.pool(user, opts)? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Recommendation> = pool
            .cands
            .iter()
            .zip(&pool.parts)
            .map(|(c, p)| Recommendation {
                item: c.id,
                score: p.relevance,
                source: c.source,
                parts: *p,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        Ok(out)
    }

    /// Retrieval, filtering and scoring: the candidate pool of one request.
    fn pool(&self, user: UserId, opts: &RecommendOptions) -> Result<Option<Pool>> {
        let r = self.request(user, opts)?;
        let exclude = excluded(r.exclude, opts);
        let filter = request_filter(&exclude, opts);
        let user_norm = dot(&r.user, &r.user).sqrt();
        let wants = Wants {
            user: &r.user,
            user_norm,
            interests: &r.interests,
            popular: &r.popular,
        };
        let Gathered { cands, directions } = self.catalog().gather(&wants, &filter, opts)?;
        if cands.is_empty() {
            return Ok(None);
        }
        let d = self.snap.dim();
        let ids: Vec<StoreId> = cands.iter().map(|c| StoreId(c.id)).collect();
        let mut vecs = vec![0f32; ids.len() * d];
        self.snap.get_many(&ids, &mut vecs)?;
        let counts = self.engagements(&cands)?;
        let taste = Taste {
            user: &r.user,
            user_norm,
            directions: &directions,
            max_count: r.max_count,
        };
        let Scored { parts, group } = scoring::score(&cands, &vecs, d, &counts, &taste, opts);
        let mut unit = vecs;
        normalize_rows(&mut unit, d);
        Ok(Some(Pool {
            cands,
            parts,
            unit,
            group,
            importances: directions.iter().map(|dir| dir.importance).collect(),
        }))
    }

    /// What the candidate sources are drawn from.
    fn catalog(&self) -> Catalog<'_> {
        Catalog {
            snap: &self.snap,
            index: self.index.as_ref(),
            fresh: &self.fresh,
        }
    }

    /// Everything a request needs from the live state, under one short read lock.
    fn request(&self, user: UserId, opts: &RecommendOptions) -> Result<Request> {
        let st = self.read_current()?;
        let Some(u) = st.live.user(user) else {
            return Err(Error::Unknown {
                what: "user",
                message: format!(
                    "user {} (the taste graph has {})",
                    user.0,
                    st.live.n_users()
                ),
            });
        };
        let ext = |i: &u32| st.items.externals()[*i as usize];
        let interests = if opts.sources.interests > 0.0 {
            let now = opts
                .now
                .unwrap_or_else(|| st.live.last_time(user).unwrap_or(0));
            taste_graph::interests(&st.live, user, now, &self.interests)?
                .into_iter()
                .map(|i| Interest {
                    medoid: ext(&i.medoid.0),
                    importance: i.importance,
                    live: st.live.item(i.medoid).map(<[f32]>::to_vec),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut exclude: Vec<u64> = st.live.hidden(user).iter().map(ext).collect();
        if opts.exclude_seen {
            exclude.extend(st.live.seen(user).iter().map(ext));
        }
        let counts = st.live.item_counts();
        let popular = if opts.sources.popular > 0.0 {
            st.popular
                .ids()
                .map(|i| (ext(&i), counts[i as usize]))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Request {
            user: u.to_vec(),
            interests,
            exclude,
            popular,
            max_count: st.popular.ids().next().map_or(0, |i| counts[i as usize]),
        })
    }

    /// Each candidate's engagement count in the live taste graph (0 for an item it
    /// does not know).
    fn engagements(&self, cands: &[Candidate]) -> Result<Vec<u32>> {
        let st = self.read_current()?;
        let c = st.live.item_counts();
        Ok(cands
            .iter()
            .map(|x| st.items.get(x.id).map_or(0, |k| c[k.index()]))
            .collect())
    }
}

/// What a request reads from the live state.
struct Request {
    user: Vec<f32>,
    interests: Vec<Interest>,
    /// Hidden (and, when asked, seen) items, by external id.
    exclude: Vec<u64>,
    /// The popular pool: (external id, engagements), most engaged first.
    popular: Vec<(u64, u32)>,
    max_count: u32,
}
