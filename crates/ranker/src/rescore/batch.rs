//! A batching queue in front of a [`Rescorer`]: concurrent requests' prompts share
//! prefills. One thread owns the model; a request ([`Job`]) waits in a bounded queue
//! (a full one refuses at once: [`Error::Overloaded`]); the thread takes the first job,
//! gathers more for up to [`BatchOptions::max_wait`] or until
//! [`BatchOptions::max_prompts`] prompts, drops those whose deadline passed, builds
//! every prompt and scores them together ([`Rescorer::score_sequences`]), then hands
//! each job its scores through its callback. Runtime-agnostic: an async server's
//! callback sends on a oneshot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Rescorer;
use crate::error::{Error, Result};

/// Settings of a [`Batcher`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOptions {
    /// Jobs waiting at most (past it [`Batcher::submit`] refuses).
    pub queue: usize,
    /// Prompts gathered into one round at most (a larger job runs alone).
    pub max_prompts: usize,
    /// How long the first job of a round waits for others.
    pub max_wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            queue: 64,
            max_prompts: 32,
            max_wait: Duration::from_millis(2),
        }
    }
}

/// The scores of one job, in its candidates' order, or why it has none.
pub type Scores = Result<Vec<f32>>;

/// One re-scoring request.
pub struct Job {
    /// The question (`None`: the rescorer's).
    pub question: Option<String>,
    /// The context items (external ids), most important first.
    pub context: Vec<u64>,
    /// The candidates (external ids).
    pub candidates: Vec<u64>,
    /// Past this instant the job is dropped unscored ([`Error::Deadline`]).
    pub deadline: Instant,
    /// Called once, on the batcher's thread, with the job's scores.
    pub done: Box<dyn FnOnce(Scores) + Send>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("context", &self.context.len())
            .field("candidates", &self.candidates.len())
            .finish()
    }
}

/// Counters of a [`Batcher`].
#[derive(Debug, Default)]
struct Counts {
    waiting: AtomicUsize,
    rounds: AtomicU64,
    prompts: AtomicU64,
    expired: AtomicU64,
}

/// What a [`Batcher`] did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Jobs waiting in the queue now.
    pub waiting: usize,
    /// Rounds (shared prefill groups) run.
    pub rounds: u64,
    /// Prompts scored.
    pub prompts: u64,
    /// Jobs dropped because their deadline passed in the queue.
    pub expired: u64,
}

/// The batching queue (see the module documentation).
pub struct Batcher {
    sender: Mutex<Option<SyncSender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    counts: Arc<Counts>,
    options: BatchOptions,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("options", &self.options)
            .finish()
    }
}

impl Batcher {
    /// Starts the thread that owns `rescorer`.
    pub fn new(rescorer: Rescorer, options: BatchOptions) -> Result<Self> {
        if options.queue == 0 || options.max_prompts == 0 {
            return Err(Error::config(format!(
                "batching queue {} and max_prompts {}: both must be at least 1",
                options.queue, options.max_prompts
            )));
        }
        let (tx, rx) = mpsc::sync_channel(options.queue);
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        let worker = std::thread::Builder::new()
            .name("mosaic-rescore".into())
            .spawn(move || run(&rescorer, &rx, options, &c))
            .map_err(|e| Error::config(format!("cannot start the rescoring thread: {e}")))?;
        Ok(Self {
            sender: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            counts,
            options,
        })
    }

    /// Queues `job`; refuses it at once ([`Error::Overloaded`], its callback not called)
    /// when the queue is full or the batcher stopped.
    pub fn submit(&self, job: Job) -> Result<()> {
        let overloaded = || Error::Overloaded {
            what: "rescoring",
            queue: self.options.queue,
        };
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = sender.as_ref().ok_or_else(overloaded)?;
        self.counts.waiting.fetch_add(1, Ordering::AcqRel);
        // full, or the thread is gone (stopped): refused either way
        tx.try_send(job).map_err(|_: TrySendError<Job>| {
            self.counts.waiting.fetch_sub(1, Ordering::AcqRel);
            overloaded()
        })
    }

    /// What the batcher did so far, and the jobs waiting now.
    pub fn stats(&self) -> BatchStats {
        let c = &self.counts;
        BatchStats {
            waiting: c.waiting.load(Ordering::Acquire),
            rounds: c.rounds.load(Ordering::Relaxed),
            prompts: c.prompts.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// Stops taking jobs, scores those queued, and joins the thread.
    pub fn stop(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = h.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The batcher's thread: rounds until the sender is gone.
fn run(rescorer: &Rescorer, rx: &Receiver<Job>, options: BatchOptions, counts: &Counts) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut prompts = jobs[0].candidates.len();
        let until = Instant::now() + options.max_wait;
        while prompts < options.max_prompts {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    prompts += j.candidates.len();
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        counts.waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
        // a panic in the model drops this round's callbacks (their callers see the
        // channel closed); the thread goes on serving
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            round(rescorer, jobs, counts)
        }));
    }
}

/// One round: the live jobs' prompts built (a job whose prompts fail gets its own
/// error), scored together, and handed back.
fn round(rescorer: &Rescorer, jobs: Vec<Job>, counts: &Counts) {
    let now = Instant::now();
    let mut ready = Vec::with_capacity(jobs.len());
    let mut seqs = Vec::new();
    for job in jobs {
        if job.deadline <= now {
            counts.expired.fetch_add(1, Ordering::Relaxed);
            (job.done)(Err(Error::Deadline { what: "rescoring" }));
            continue;
        }
        match rescorer.sequences(job.question.as_deref(), &job.context, &job.candidates) {
            Ok(s) => {
                ready.push((job.done, s.len()));
                seqs.extend(s);
            }
            Err(e) => (job.done)(Err(e)),
        }
    }
    if ready.is_empty() {
        return;
    }
    counts.rounds.fetch_add(1, Ordering::Relaxed);
    counts
        .prompts
        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
    match rescorer.score_sequences(&seqs) {
        Ok(scores) => {
            let mut rest = &scores[..];
            for (done, n) in ready {
                let (mine, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                done(Ok(mine.to_vec()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (done, _) in ready {
                done(Err(Error::Rescore {
                    message: message.clone(),
                }));
            }
        }
    }
}
