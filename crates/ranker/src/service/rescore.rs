//! Re-scoring by the surgered model through the service ([`Service::rescore`]): the
//! request checked on the caller's thread, the user's context read from the taste
//! graph, the prompts built and scored on the [`Batcher`]'s thread together with those
//! of concurrent requests.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Service;
use super::names::Space;
use crate::error::{Error, Result};
use crate::rescore::Rescorer;
use crate::rescore::batch::{BatchOptions, Batcher, Job};
use crate::types::Key;

/// Candidates one [`Service::rescore`] call may carry at most.
pub const MAX_RESCORE_CANDIDATES: usize = 1_000;
/// Bytes a request's question may have at most.
pub const MAX_QUESTION_BYTES: usize = 4_096;

/// One request of [`Service::rescore`] (its JSON form, with the user beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescoreRequest {
    /// The items to score (each needs a content embedding).
    pub candidates: Vec<Key>,
    /// The question: `{context}` and one `<item>` marker (`None`: the rescorer's).
    #[serde(default)]
    pub question: Option<String>,
    /// The context items (`None`: the medoids of the user's top interests; none for a
    /// user the taste graph does not know).
    #[serde(default)]
    pub context: Option<Vec<Key>>,
}

/// One candidate's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// The candidate.
    pub item: Key,
    /// `log P(yes) − log P(no)` under the surgered model.
    pub log_odds: f32,
}

impl Service {
    /// Attaches the surgered model that [`Service::rescore`] uses, behind a batching
    /// queue of `options`. Once per service.
    pub fn attach_rescorer(&self, rescorer: Rescorer, options: BatchOptions) -> Result<()> {
        let batcher = Batcher::new(rescorer, options)?;
        self.rescorer
            .set(batcher)
            .map_err(|_| Error::config("a rescorer is already attached"))
    }

    /// The batching queue, when a rescorer is attached.
    pub fn batcher(&self) -> Option<&Batcher> {
        self.rescorer.get()
    }

    /// Scores `req.candidates` for `user` with the surgered model, batched with
    /// concurrent requests: checks the request (at most [`MAX_RESCORE_CANDIDATES`]
    /// candidates, a question of at most [`MAX_QUESTION_BYTES`] with its markers), reads
    /// the context, queues the job and returns; `done` gets the scores in the
    /// candidates' order on the batcher's thread (an item without a content embedding:
    /// [`Error::Unknown`]; a job still queued at `deadline`: [`Error::Deadline`]). A full
    /// queue is [`Error::Overloaded`] at once, `done` not called.
    pub fn rescore(
        &self,
        user: &Key,
        req: RescoreRequest,
        deadline: Instant,
        done: impl FnOnce(Result<Vec<ItemScore>>) + Send + 'static,
    ) -> Result<()> {
        let _span =
            tracing::debug_span!("rescore", %user, candidates = req.candidates.len()).entered();
        let batcher = self.rescorer.get().ok_or_else(|| {
            Error::config("no surgered model is attached to this service (attach_rescorer)")
        })?;
        if req.candidates.len() > MAX_RESCORE_CANDIDATES {
            return Err(Error::config(format!(
                "candidates: {} items, past the limit of {MAX_RESCORE_CANDIDATES}",
                req.candidates.len()
            )));
        }
        if let Some(q) = &req.question {
            if q.len() > MAX_QUESTION_BYTES {
                return Err(Error::config(format!(
                    "question: {} bytes, past the limit of {MAX_QUESTION_BYTES}",
                    q.len()
                )));
            }
            Rescorer::check_question(q)?;
        }
        let context = match &req.context {
            Some(c) => self.known_items(c, "context")?,
            None => match self.names.get(Space::User, user, "user")? {
                Some(u) => self.context_of(u)?,
                None => Vec::new(),
            },
        };
        let candidates = self.known_items(&req.candidates, "candidates")?;
        let ids = req.candidates;
        batcher.submit(Job {
            question: req.question,
            context,
            candidates,
            deadline,
            done: Box::new(move |scores| {
                done(scores.map(|s| {
                    ids.into_iter()
                        .zip(s)
                        .map(|(item, log_odds)| ItemScore { item, log_odds })
                        .collect()
                }))
            }),
        })
    }

    /// The integers of `keys`, each an item the service knows (`at` names the list).
    fn known_items(&self, keys: &[Key], at: &str) -> Result<Vec<u64>> {
        keys.iter()
            .enumerate()
            .map(|(k, key)| {
                let at = format!("{at}[{k}]");
                self.names
                    .get(Space::Item, key, &at)?
                    .ok_or_else(|| Error::Unknown {
                        what: "item",
                        message: format!("{at}: no item is named {key}"),
                    })
            })
            .collect()
    }

    /// The medoids of `user`'s interests, most important first (none for a user the
    /// taste graph does not know).
    fn context_of(&self, user: u64) -> Result<Vec<u64>> {
        self.on_current(|rec| match rec.user(user) {
            Some(dense) => Ok(rec
                .interests(dense, None)?
                .iter()
                .map(|(m, _)| *m)
                .collect()),
            None => Ok(Vec::new()),
        })
    }
}
