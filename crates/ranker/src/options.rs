//! What a [`crate::Recommender::recommend`] call may be asked for: size, candidate
//! sources and their shares, the relevance blend, the diversity trade-off, filters
//! and caps. Built with chained setters and checked by [`RecommendOptions::validate`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scorer::LearnedScorer;
use crate::types::Key;

/// A rule over an item's u32 attributes (e.g. "not category 7", "in stock"); items
/// failing it are never retrieved.
pub type AttrRule = Arc<dyn Fn(&[u32]) -> bool + Send + Sync>;

/// Shares of the candidate budget per source (normalised; zero turns a source off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sources {
    /// Nearest neighbours of each interest's medoid, split by interest importance.
    pub interests: f32,
    /// Nearest neighbours (inner product) of the user's taste embedding.
    pub taste: f32,
    /// The most-engaged items overall.
    pub popular: f32,
    /// The newest items of the generation (the rows of its latest segments) that best
    /// match the user's taste: new items get exposure before they have engagement.
    pub fresh: f32,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            interests: 0.6,
            taste: 0.3,
            popular: 0.1,
            fresh: 0.0,
        }
    }
}

impl Sources {
    /// Only the most popular items (the popularity baseline).
    pub fn popular_only() -> Self {
        Self {
            interests: 0.0,
            taste: 0.0,
            popular: 1.0,
            fresh: 0.0,
        }
    }
    /// Only the user's single taste embedding.
    pub fn taste_only() -> Self {
        Self {
            interests: 0.0,
            taste: 1.0,
            popular: 0.0,
            fresh: 0.0,
        }
    }
    /// Only the user's interests.
    pub fn interests_only() -> Self {
        Self {
            interests: 1.0,
            taste: 0.0,
            popular: 0.0,
            fresh: 0.0,
        }
    }
}

/// What a candidate's relevance is (on the wire: `"blend"`, `"popularity"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relevance {
    /// The user's taste and interests blended (`taste_weight`), or a learned scorer's
    /// probability when one is set.
    #[default]
    Blend,
    /// The item's popularity alone (`log(1 + engagements)`, scaled): the same ranking for
    /// every user, the baseline a personalised ranking must beat.
    Popularity,
}

/// A per-attribute cap: at most `max` results share the value of attribute `attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    /// Index of the attribute in the generation's attributes.
    pub attr: usize,
    /// Most results with one value of it.
    pub max: usize,
}

/// Options of one recommendation request.
#[derive(Clone)]
pub struct RecommendOptions {
    pub(crate) k: usize,
    pub(crate) candidates: usize,
    pub(crate) sources: Sources,
    pub(crate) taste_weight: f32,
    pub(crate) importance_exponent: f32,
    pub(crate) lambda: f32,
    pub(crate) interest_slack: f32,
    pub(crate) ef: usize,
    pub(crate) exclude_seen: bool,
    pub(crate) blocked: Vec<u64>,
    pub(crate) rule: Option<AttrRule>,
    pub(crate) caps: Vec<Cap>,
    pub(crate) now: Option<u64>,
    pub(crate) scorer: Option<Arc<LearnedScorer>>,
    pub(crate) relevance: Relevance,
}

impl std::fmt::Debug for RecommendOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecommendOptions")
            .field("k", &self.k)
            .field("candidates", &self.candidates)
            .field("sources", &self.sources)
            .field("taste_weight", &self.taste_weight)
            .field("importance_exponent", &self.importance_exponent)
            .field("lambda", &self.lambda)
            .field("interest_slack", &self.interest_slack)
            .field("ef", &self.ef)
            .field("exclude_seen", &self.exclude_seen)
            .field("blocked", &self.blocked.len())
            .field("rule", &self.rule.is_some())
            .field("caps", &self.caps)
            .field("now", &self.now)
            .field("scorer", &self.scorer)
            .field("relevance", &self.relevance)
            .finish()
    }
}

/// Most results one request may ask for.
pub const MAX_K: usize = 10_000;
/// Most candidates one request may retrieve before scoring.
pub const MAX_CANDIDATES: usize = 100_000;
/// Largest HNSW search list one request may use.
pub const MAX_EF: usize = 100_000;

impl Default for RecommendOptions {
    fn default() -> Self {
        Self {
            k: 20,
            candidates: 200,
            sources: Sources::default(),
            taste_weight: 0.3,
            importance_exponent: 0.5,
            lambda: 0.8,
            interest_slack: 1.0,
            ef: 64,
            exclude_seen: true,
            blocked: Vec::new(),
            rule: None,
            caps: Vec::new(),
            now: None,
            scorer: None,
            relevance: Relevance::Blend,
        }
    }
}

impl RecommendOptions {
    /// 20 results from 200 candidates, default sources, MMR λ = 0.8.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of results.
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }
    /// What relevance is (default [`Relevance::Blend`]).
    pub fn relevance(mut self, relevance: Relevance) -> Self {
        self.relevance = relevance;
        self
    }
    /// Candidates retrieved over all sources before scoring (≥ k).
    pub fn candidates(mut self, n: usize) -> Self {
        self.candidates = n;
        self
    }
    /// Shares of the candidate budget per source.
    pub fn sources(mut self, sources: Sources) -> Self {
        self.sources = sources;
        self
    }
    /// Relevance blend: `w · taste + (1 − w) · interest` (see [`crate::ScoreParts`]:
    /// taste is the item's projection on the user's direction, scaled to a best of 1;
    /// interest the best importance-weighted cosine to an interest's medoid).
    pub fn taste_weight(mut self, w: f32) -> Self {
        self.taste_weight = w;
        self
    }
    /// Interest `j` weighs `(importance_j / max importance)^e` in the interest score;
    /// 0 treats all interests alike, 1 proportionally to their importance.
    pub fn importance_exponent(mut self, e: f32) -> Self {
        self.importance_exponent = e;
        self
    }
    /// MMR trade-off: `λ · relevance − (1 − λ) · max cosine to the results so far`;
    /// 1 ranks by relevance alone, lower values favour lateral exploration.
    pub fn lambda(mut self, lambda: f32) -> Self {
        self.lambda = lambda;
        self
    }
    /// Soft per-interest quotas in the list: interest `j` takes at most
    /// `ceil(k · importance_j · slack)` results while other candidates remain, so a
    /// small new interest is not crowded out by a large old one (0 turns them off).
    pub fn interest_slack(mut self, slack: f32) -> Self {
        self.interest_slack = slack;
        self
    }
    /// HNSW candidate list size per query (raised to the query's quota when smaller).
    pub fn ef(mut self, ef: usize) -> Self {
        self.ef = ef;
        self
    }
    /// Whether items the user already engaged with or hid are excluded (default true;
    /// hidden items are excluded either way).
    pub fn exclude_seen(mut self, yes: bool) -> Self {
        self.exclude_seen = yes;
        self
    }
    /// External item ids never to return.
    pub fn blocked(mut self, ids: impl IntoIterator<Item = u64>) -> Self {
        self.blocked = ids.into_iter().collect();
        self
    }
    /// A rule over item attributes that every result must pass.
    pub fn rule(mut self, rule: AttrRule) -> Self {
        self.rule = Some(rule);
        self
    }
    /// At most `max` results share a value of attribute `attr`.
    pub fn cap(mut self, attr: usize, max: usize) -> Self {
        self.caps.push(Cap { attr, max });
        self
    }
    /// The request time for interest decay (default: the user's latest event).
    pub fn now(mut self, t: u64) -> Self {
        self.now = Some(t);
        self
    }
    /// Relevance from a learned scorer (the probability of engagement) instead of the
    /// fixed taste/interest blend.
    pub fn scorer(mut self, scorer: Arc<LearnedScorer>) -> Self {
        self.scorer = Some(scorer);
        self
    }
    /// The number of results asked for.
    pub fn k_value(&self) -> usize {
        self.k
    }

    /// Checks every option; the error names the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(m));
        if self.k == 0 {
            return bad("k = 0, expected at least 1 result".into());
        }
        // a request sizes its buffers by these: past the caps they are refused, not
        // allocated
        for (name, v, cap) in [
            ("k", self.k, MAX_K),
            ("candidates", self.candidates, MAX_CANDIDATES),
            ("ef", self.ef, MAX_EF),
        ] {
            if v > cap {
                return bad(format!("{name} = {v} is past the limit of {cap}"));
            }
        }
        if self.candidates < self.k {
            return bad(format!(
                "candidates = {} is below k = {}: MMR needs at least k candidates",
                self.candidates, self.k
            ));
        }
        let s = self.sources;
        for (name, v) in [
            ("interests", s.interests),
            ("taste", s.taste),
            ("popular", s.popular),
            ("fresh", s.fresh),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!(
                    "source share {name} = {v}, expected a finite value >= 0"
                ));
            }
        }
        if s.interests + s.taste + s.popular + s.fresh <= 0.0 {
            return bad("every source share is 0: no candidate could be retrieved".into());
        }
        if !(0.0..=1.0).contains(&self.taste_weight) {
            return bad(format!(
                "taste_weight = {}, expected 0..=1",
                self.taste_weight
            ));
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return bad(format!("lambda = {}, expected 0..=1", self.lambda));
        }
        if !self.importance_exponent.is_finite() || self.importance_exponent < 0.0 {
            return bad(format!(
                "importance_exponent = {}, expected a finite value >= 0",
                self.importance_exponent
            ));
        }
        if !self.interest_slack.is_finite() || self.interest_slack < 0.0 {
            return bad(format!(
                "interest_slack = {}, expected a finite value >= 0",
                self.interest_slack
            ));
        }
        if self.ef == 0 {
            return bad("ef = 0, expected at least 1".into());
        }
        if let Some(c) = self.caps.iter().find(|c| c.max == 0) {
            return bad(format!(
                "cap on attribute {} is 0, expected at least 1",
                c.attr
            ));
        }
        Ok(())
    }
}

/// The options of one request as they come over the wire (JSON): every field optional,
/// unknown fields refused; [`RequestOptions::apply`] turns them into
/// [`RecommendOptions`] over a service's defaults. A learned scorer or an arbitrary
/// attribute rule cannot come over the wire; `allow` keeps the items whose attribute
/// `attr` is one of `values`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestOptions {
    /// Results (see [`RecommendOptions::k`]).
    pub k: Option<usize>,
    /// Candidates retrieved before scoring.
    pub candidates: Option<usize>,
    /// Shares of the candidate budget per source.
    pub sources: Option<Sources>,
    /// Weight of the taste part in the relevance blend.
    pub taste_weight: Option<f32>,
    /// MMR trade-off (1 = relevance only).
    pub lambda: Option<f32>,
    /// HNSW search list length.
    pub ef: Option<usize>,
    /// Leave out the items the user interacted with.
    pub exclude_seen: Option<bool>,
    /// Items never to return (integers, or names a service resolves:
    /// [`RequestOptions::apply_with`]).
    pub blocked: Vec<Key>,
    /// Per-attribute caps.
    pub caps: Vec<Cap>,
    /// Keep only items whose attribute `attr` is one of `values`.
    pub allow: Option<AllowRule>,
    /// The request's time (defaults to the user's latest event).
    pub now: Option<u64>,
    /// What relevance is.
    pub relevance: Option<Relevance>,
}

/// An attribute filter that can cross the wire ([`RequestOptions::allow`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Index of the attribute.
    pub attr: usize,
    /// The values kept.
    pub values: Vec<u32>,
}

/// Most blocked ids or allowed values one request may carry.
pub const MAX_REQUEST_LIST: usize = 10_000;

impl RequestOptions {
    /// `base` with every field this request sets, validated
    /// ([`RecommendOptions::validate`]; errors name the field). A named blocked item is
    /// an error here: resolve names with [`RequestOptions::apply_with`].
    pub fn apply(&self, base: RecommendOptions) -> Result<RecommendOptions> {
        self.apply_with(base, |key, k| match key {
            Key::Id(id) => Ok(Some(*id)),
            Key::Name(n) => Err(Error::config(format!(
                "blocked[{k}]: {n:?} is a name, and no names are resolved here"
            ))),
        })
    }

    /// [`RequestOptions::apply`], `resolve(key, index)` giving the integer of each
    /// blocked item (`None`: no such item, nothing to block).
    pub fn apply_with(
        &self,
        base: RecommendOptions,
        resolve: impl Fn(&Key, usize) -> Result<Option<u64>>,
    ) -> Result<RecommendOptions> {
        let mut o = base;
        let long = [
            ("blocked", self.blocked.len()),
            ("caps", self.caps.len()),
            (
                "allow.values",
                self.allow.as_ref().map_or(0, |a| a.values.len()),
            ),
        ];
        if let Some((name, n)) = long.iter().find(|(_, n)| *n > MAX_REQUEST_LIST) {
            return Err(Error::config(format!(
                "{name} has {n} entries, past the limit of {MAX_REQUEST_LIST}"
            )));
        }
        if let Some(k) = self.k {
            o = o.k(k);
            if self.candidates.is_none() && o.candidates < k {
                o = o.candidates(k.saturating_mul(10).min(MAX_CANDIDATES));
            }
        }
        if let Some(v) = self.candidates {
            o = o.candidates(v);
        }
        if let Some(v) = self.sources {
            o = o.sources(v);
        }
        if let Some(v) = self.taste_weight {
            o = o.taste_weight(v);
        }
        if let Some(v) = self.lambda {
            o = o.lambda(v);
        }
        if let Some(v) = self.ef {
            o = o.ef(v);
        }
        if let Some(v) = self.exclude_seen {
            o = o.exclude_seen(v);
        }
        if !self.blocked.is_empty() {
            let mut ids = Vec::with_capacity(self.blocked.len());
            for (k, key) in self.blocked.iter().enumerate() {
                ids.extend(resolve(key, k)?);
            }
            o = o.blocked(ids);
        }
        for c in &self.caps {
            o = o.cap(c.attr, c.max);
        }
        if let Some(a) = &self.allow {
            // the rule runs for every candidate a search visits: sorted, then searched
            let (attr, mut values) = (a.attr, a.values.clone());
            values.sort_unstable();
            values.dedup();
            o = o.rule(Arc::new(move |attrs: &[u32]| {
                attrs
                    .get(attr)
                    .is_some_and(|v| values.binary_search(v).is_ok())
            }));
        }
        if let Some(v) = self.now {
            o = o.now(v);
        }
        if let Some(v) = self.relevance {
            o = o.relevance(v);
        }
        o.validate()?;
        Ok(o)
    }
}
