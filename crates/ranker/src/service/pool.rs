//! A bounded pool of worker threads for a service's CPU work: a fixed number of threads
//! and a fixed queue; a job offered when the queue is full is refused at once
//! ([`Overloaded`]) instead of waiting, so an overloaded service answers "busy" in
//! microseconds and never builds an unbounded backlog. Runtime-agnostic: an async
//! server hands each job a channel (e.g. a oneshot) to send its answer on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A job refused because the queue was full (or the pool is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work queue is full ({queue} jobs waiting): try again later")]
pub struct Overloaded {
    /// The queue's capacity.
    pub queue: usize,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Worker threads taking jobs from one bounded queue (see the module documentation).
pub struct WorkPool {
    name: String,
    sender: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    queue: usize,
    /// Jobs queued and not started.
    waiting: Arc<AtomicUsize>,
}

impl std::fmt::Debug for WorkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkPool")
            .field("threads", &self.workers.len())
            .field("queue", &self.queue)
            .finish()
    }
}

impl WorkPool {
    /// `threads` workers (at least 1) behind a queue of `queue` jobs (at least 1).
    pub fn new(name: &str, threads: usize, queue: usize) -> std::io::Result<Self> {
        let queue = queue.max(1);
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let waiting = Arc::new(AtomicUsize::new(0));
        let workers = (0..threads.max(1))
            .map(|k| {
                let rx = Arc::clone(&receiver);
                let waiting = Arc::clone(&waiting);
                std::thread::Builder::new()
                    .name(format!("{name}-{k}"))
                    .spawn(move || work(&rx, &waiting))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            name: name.to_string(),
            sender: Some(sender),
            workers,
            queue,
            waiting,
        })
    }

    /// Queues `job`, or refuses it at once when the queue is full.
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Overloaded> {
        let overloaded = Overloaded { queue: self.queue };
        let sender = self.sender.as_ref().ok_or(overloaded)?;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        sender.try_send(Box::new(job)).map_err(|e| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            match e {
                TrySendError::Full(_) | TrySendError::Disconnected(_) => overloaded,
            }
        })
    }

    /// Jobs queued now, not started yet.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// The pool's name (its threads are `<name>-<k>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's capacity.
    pub fn queue(&self) -> usize {
        self.queue
    }
}

/// A worker: runs jobs until the pool is dropped. A panicking job is contained (its
/// caller sees its answer channel closed) and the worker goes on.
fn work(rx: &Mutex<Receiver<Job>>, waiting: &AtomicUsize) {
    loop {
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => {
                waiting.fetch_sub(1, Ordering::AcqRel);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

impl Drop for WorkPool {
    /// Lets the queued jobs finish, then joins the workers.
    fn drop(&mut self) {
        self.sender = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn a_full_queue_refuses_at_once_and_queued_jobs_run() {
        let pool = WorkPool::new("test", 1, 2).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let (tx, rx) = mpsc::channel();
        // the worker holds the first job until the gate opens; two more fill the queue
        let g = Arc::clone(&gate);
        pool.try_run(move || {
            g.wait();
        })
        .unwrap();
        // wait until the worker took the first job off the queue
        std::thread::sleep(std::time::Duration::from_millis(50));
        for k in 0..2 {
            let tx = tx.clone();
            pool.try_run(move || tx.send(k).unwrap()).unwrap();
        }
        assert_eq!(pool.try_run(|| {}), Err(Overloaded { queue: 2 }));
        assert_eq!(pool.depth(), 2, "the refused job is not counted");
        gate.wait();
        let mut got: Vec<i32> = (0..2).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, [0, 1]);
    }

    #[test]
    fn a_panicking_job_leaves_the_worker_serving() {
        let pool = WorkPool::new("test", 1, 4).unwrap();
        pool.try_run(|| panic!("job panics")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.try_run(move || tx.send(7).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
