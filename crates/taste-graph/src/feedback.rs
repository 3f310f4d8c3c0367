//! The feedback log: every interaction a service acknowledged, in the order it was
//! applied, on durability's write-ahead log ([`mosaic_durability::wal`]). A service
//! saves its model state now and then and keeps the log of what came after; restart is
//! the saved state plus the log's later records, replayed.
//!
//! A record is acknowledged when [`FeedbackLog::acknowledge`] returns, as the
//! [`SyncPolicy`] says: [`SyncPolicy::EachEvent`] (the default) has made it durable
//! against a power loss; [`SyncPolicy::Every`] has handed it to the operating system
//! (it survives the process being killed) and makes it durable at the first
//! acknowledgement (or [`FeedbackLog::sync`]) that period after the previous sync.
//!
//! Record payload (little-endian, 30 bytes): tag 1 (u8), user (u64), item (u64),
//! timestamp (u64), weight (f32 bits), kind code (u8). Ids are the caller's: the
//! ranker logs dense users and external item ids.

use std::time::{Duration, Instant};

use mosaic_durability::le::Reader;
use mosaic_durability::wal::{Recovered, Wal, WalLock, WalOptions};
use mosaic_durability::{FileSystem, FsDirectory, OsFs};

use crate::error::{Error, Result};
use crate::interactions::InteractionKind;

/// The log's name inside its directory (`feedback.*.wal`, `feedback.lock`).
pub const LOG_NAME: &str = "feedback";
const TAG_FEEDBACK: u8 = 1;
const PAYLOAD_LEN: usize = 30;

/// One acknowledged interaction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    /// The user (the caller's id).
    pub user: u64,
    /// The item (the caller's id).
    pub item: u64,
    /// What the user did.
    pub kind: InteractionKind,
    /// Its weight (finite, non-negative).
    pub weight: f32,
    /// When.
    pub timestamp: u64,
}

impl Feedback {
    fn encode(&self) -> [u8; PAYLOAD_LEN] {
        let mut out = [0u8; PAYLOAD_LEN];
        out[0] = TAG_FEEDBACK;
        out[1..9].copy_from_slice(&self.user.to_le_bytes());
        out[9..17].copy_from_slice(&self.item.to_le_bytes());
        out[17..25].copy_from_slice(&self.timestamp.to_le_bytes());
        out[25..29].copy_from_slice(&self.weight.to_bits().to_le_bytes());
        out[29] = self.kind.code();
        out
    }

    /// The record `payload` of log segment `file`, checked.
    fn decode(file: &str, seq: u64, payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(file, payload);
        let corrupt = |message: String| Error::Corrupt {
            path: file.into(),
            offset: 0,
            message: format!("record {seq}: {message}"),
        };
        let tag = r.array::<1>("tag")?[0];
        if tag != TAG_FEEDBACK || payload.len() != PAYLOAD_LEN {
            return Err(corrupt(format!(
                "record kind {tag} of {} bytes, expected feedback ({TAG_FEEDBACK}, {PAYLOAD_LEN} bytes)",
                payload.len()
            )));
        }
        let user = r.u64("user")?;
        let item = r.u64("item")?;
        let timestamp = r.u64("timestamp")?;
        let weight = r.f32("weight")?;
        let code = r.array::<1>("kind")?[0];
        let kind = InteractionKind::from_code(code)
            .ok_or_else(|| corrupt(format!("unknown interaction kind {code}")))?;
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(corrupt(format!("weight {weight}")));
        }
        Ok(Feedback {
            user,
            item,
            kind,
            weight,
            timestamp,
        })
    }
}

/// When an acknowledged record is made durable against a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Before [`FeedbackLog::append`] returns (one `fdatasync` per event).
    #[default]
    EachEvent,
    /// At the first append (or [`FeedbackLog::sync`]) this long after the previous sync;
    /// in between, a record survives the process dying but a power loss may take it.
    Every(Duration),
}

/// What [`FeedbackLog::open`] replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records passed to the caller (those after the saved state's seq).
    pub replayed: u64,
    /// Seqs the log holds, replayed or not.
    pub seqs: std::ops::Range<u64>,
    /// Bytes of torn tail cut off (a write the crash interrupted, never acknowledged).
    pub discarded_bytes: u64,
}

/// A replay's failure: the log's (a damaged record) or the caller's visitor's.
enum Visit<E> {
    Log(Error),
    Caller(E),
}

impl<E> From<mosaic_durability::Error> for Visit<E> {
    fn from(e: mosaic_durability::Error) -> Self {
        Visit::Log(e.into())
    }
}

/// Exclusive ownership of a directory's feedback log, and so of the saved state it
/// continues: take it ([`FeedbackLog::lock`]) before reading that state, so that no
/// other process (an old one still exiting, say) saves a newer state and cuts the log
/// between the read and [`FeedbackLog::open_locked`].
#[derive(Debug)]
pub struct FeedbackLock(WalLock);

/// The append side of the feedback log (see the module documentation).
#[derive(Debug)]
pub struct FeedbackLog<F: FileSystem + Clone = OsFs> {
    wal: Wal<F>,
    policy: SyncPolicy,
    last_sync: Instant,
}

impl<F: FileSystem + Clone> FeedbackLog<F> {
    /// Opens the log in `dir` (created empty if absent) and passes `visit` each record
    /// after `after_seq`, the seq a saved state covers, in order. Refused when the log
    /// no longer holds the records right after `after_seq` (a state older than the log).
    ///
    /// `visit`'s error is the caller's own (the ranker's, say) and comes back as it was;
    /// the log's own errors come back converted into it.
    pub fn open<E: From<Error>>(
        dir: &FsDirectory<F>,
        policy: SyncPolicy,
        after_seq: u64,
        visit: impl FnMut(u64, Feedback) -> std::result::Result<(), E>,
    ) -> std::result::Result<(Self, Replayed), E> {
        let lock = Self::lock(dir)?;
        Self::open_locked(dir, lock, policy, after_seq, visit)
    }

    /// Takes the log's lock in `dir`, or fails at once with [`Error::Locked`] while
    /// another holder has it; held until the log opened under it is dropped.
    pub fn lock(dir: &FsDirectory<F>) -> Result<FeedbackLock> {
        Ok(FeedbackLock(Wal::lock(dir, LOG_NAME)?))
    }

    /// [`FeedbackLog::open`] under `lock`, taken by [`FeedbackLog::lock`] on `dir`.
    pub fn open_locked<E: From<Error>>(
        dir: &FsDirectory<F>,
        lock: FeedbackLock,
        policy: SyncPolicy,
        after_seq: u64,
        mut visit: impl FnMut(u64, Feedback) -> std::result::Result<(), E>,
    ) -> std::result::Result<(Self, Replayed), E> {
        let mut replayed = 0;
        let start = after_seq.checked_add(1).ok_or_else(|| Error::Config {
            message: "saved seq u64::MAX leaves no room for a log".into(),
        })?;
        let name = format!("{LOG_NAME} log");
        let opened = Wal::open_locked(dir, lock.0, start, WalOptions::default(), |seq, p| {
            if seq > after_seq {
                let f = Feedback::decode(&name, seq, p).map_err(Visit::Log)?;
                visit(seq, f).map_err(Visit::Caller)?;
                replayed += 1;
            }
            Ok(())
        });
        let (
            wal,
            Recovered {
                seqs,
                discarded_bytes,
            },
        ) = opened.map_err(|e| match e {
            Visit::Log(e) => E::from(e),
            Visit::Caller(e) => e,
        })?;
        if wal.next_seq() < start {
            // a saved state is written only after the log is durable through its seq
            return Err(E::from(Error::Corrupt {
                path: dir.fs().describe(),
                offset: 0,
                message: format!(
                    "the saved state covers events up to seq {after_seq}, the feedback log ends at {}: acknowledged records are missing from the log",
                    wal.next_seq() - 1
                ),
            }));
        }
        if wal.first_seq() > start {
            return Err(E::from(Error::Corrupt {
                path: dir.fs().describe(),
                offset: 0,
                message: format!(
                    "the saved state covers events up to seq {after_seq}, the feedback log starts at {}: events {start}..{} are in neither",
                    wal.first_seq(),
                    wal.first_seq()
                ),
            }));
        }
        let log = FeedbackLog {
            wal,
            policy,
            last_sync: Instant::now(),
        };
        let replayed = Replayed {
            replayed,
            seqs,
            discarded_bytes,
        };
        Ok((log, replayed))
    }

    /// Logs `feedback` (handed to the operating system: it survives the process dying)
    /// and returns its seq; [`acknowledge`](FeedbackLog::acknowledge) it before telling
    /// anyone it is saved. Two steps, so that a caller can append under its own lock (the
    /// log's order is the order events were applied) and sync outside it.
    pub fn append(&mut self, feedback: &Feedback) -> Result<u64> {
        if !(feedback.weight.is_finite() && feedback.weight >= 0.0) {
            return Err(Error::Graph {
                message: format!(
                    "feedback of user {} on item {} has weight {}, expected a finite value >= 0",
                    feedback.user, feedback.item, feedback.weight
                ),
            });
        }
        let seq = self.wal.append(&feedback.encode())?;
        self.wal.flush()?;
        Ok(seq)
    }

    /// Returns once record `seq` is acknowledged as the [`SyncPolicy`] says: durable
    /// ([`SyncPolicy::EachEvent`]; a sync since it was appended covers it too, so
    /// concurrent callers share one), or written and synced if the period is up.
    pub fn acknowledge(&mut self, seq: u64) -> Result<()> {
        let due = match self.policy {
            SyncPolicy::EachEvent => self.wal.durable_seq() < seq,
            SyncPolicy::Every(period) => self.last_sync.elapsed() >= period,
        };
        if due {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every logged record durable; returns the highest durable seq.
    pub fn sync(&mut self) -> Result<u64> {
        let seq = self.wal.sync()?;
        self.last_sync = Instant::now();
        Ok(seq)
    }

    /// After a state covering every record up to `seq` was saved (call [`sync`] before
    /// writing it, so the log is never behind a saved state): starts a new segment and
    /// deletes the segments the state covers.
    ///
    /// [`sync`]: FeedbackLog::sync
    pub fn saved_through(&mut self, seq: u64) -> Result<()> {
        self.wal.rotate()?;
        self.wal.drop_through(seq)?;
        Ok(())
    }

    /// An error if a write or sync failed (the log refuses every call until reopened):
    /// check before applying an event that is then to be logged.
    pub fn check(&self) -> Result<()> {
        Ok(self.wal.check_usable()?)
    }

    /// The seq of the newest record logged (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.wal.next_seq() - 1
    }

    /// The highest seq durable against a power loss.
    pub fn durable_seq(&self) -> u64 {
        self.wal.durable_seq()
    }

    /// The sync policy.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }
}
