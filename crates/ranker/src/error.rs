//! The crate's error type: every failure names what is wrong and where.

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while recommending.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range.
    #[error("invalid ranker option: {message}")]
    Config {
        /// Which option and why.
        message: String,
    },
    /// A user or an item the ranker does not know.
    #[error("unknown {what}: {message}")]
    Unknown {
        /// "user" or "item".
        what: &'static str,
        /// Which id and what is known.
        message: String,
    },
    /// This recommender was replaced by [`crate::Recommender::refreshed`]: its vectors
    /// belong to an earlier model of the taste graph; serve from the refreshed one.
    #[error(
        "retired recommender: it serves refit generation {serves}, the taste graph is at {current}"
    )]
    Retired {
        /// The refit generation this recommender's vectors belong to.
        serves: u64,
        /// The taste graph's refit generation now.
        current: u64,
    },
    /// Feedback names an unknown item, and the items feedback added since the last refit
    /// reached the configured cap ([`crate::Recommender::max_live_items`]).
    #[error(
        "feedback names unknown item {item}, but {cap} items were added live since the last refit (the cap): refit, or raise the cap"
    )]
    LiveItemCap {
        /// The external id named.
        item: u64,
        /// The cap.
        cap: usize,
    },
    /// An event of a batch was refused; the events before it were recorded.
    #[error("event {recorded} of the batch: {source} (the {recorded} before it were recorded)")]
    Batch {
        /// Events recorded before the refused one (its index in the batch).
        recorded: usize,
        /// Why it was refused.
        source: Box<Error>,
    },
    /// A record of the feedback log does not replay on the restored state.
    #[error("replaying feedback log record {seq}: {source}")]
    Replay {
        /// The record's seq.
        seq: u64,
        /// Why it does not apply.
        source: Box<Error>,
    },
    /// A bounded queue is full: try again later.
    #[error("the {what} queue is full ({queue} waiting): try again later")]
    Overloaded {
        /// Which queue.
        what: &'static str,
        /// Its capacity.
        queue: usize,
    },
    /// A request's deadline passed before it was served.
    #[error("the {what} deadline passed before the request was served")]
    Deadline {
        /// What was waited for.
        what: &'static str,
    },
    /// A batched re-scoring round failed (every request of the round gets this).
    #[error("batched re-scoring failed: {message}")]
    Rescore {
        /// The model's error.
        message: String,
    },
    /// The shared store (a Redis Cluster) could not be read or written.
    #[error("shared store: {message}")]
    Shared {
        /// What failed, and why.
        message: String,
    },
    /// A log of the service (its names) failed.
    #[error("durability: {0}")]
    Durability(#[from] mosaic_durability::Error),
    /// The embedding store failed (search, lookup).
    #[error("embedding store: {0}")]
    Store(#[from] embed_store::Error),
    /// The taste graph refused an update or a query.
    #[error("taste graph: {0}")]
    Taste(#[from] taste_graph::Error),
    /// The surgered model failed while re-scoring.
    #[error("surgered model: {0}")]
    Surgery(#[from] vision_surgery::Error),
    /// A tensor operation failed while re-scoring.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The device asked for is not available.
    #[error("device: {0}")]
    Device(#[from] mosaic_device::DeviceError),
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }
}
