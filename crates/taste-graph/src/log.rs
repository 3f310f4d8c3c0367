//! Crash-safe persistence of interaction events: an append-only [`EventLog`], atomic
//! [`GraphSnapshot`]s, and a [`Journal`] directory that ties them together.
//!
//! Guarantees:
//!
//! - an event is *acknowledged* once a `sync` that covers its sequence number has
//!   returned; acknowledged events survive a crash (of the process or of the machine) at
//!   any point, including in the middle of a write or of a checkpoint;
//! - a record that was being written when the crash happened (a torn or garbage tail of
//!   the newest log file) is discarded and the file truncated to its last valid record;
//! - damage anywhere else (a bad record followed by a good one, a bad header, a gap in
//!   the sequence numbers) is never skipped silently: it is an [`Error::Corrupt`] naming
//!   the file and the byte offset.
//!
//! A service that saves its model state elsewhere (a refresher state,
//! [`crate::Refresher::save`]) bounds the journal with [`Journal::drop_through`] instead of
//! [`Journal::checkpoint`]: the events up to the saved seq go, the id maps stay.
//!
//! External `u64` ids: a [`Journal`] assigns dense indices to external ids
//! ([`Journal::record_external`]) and logs each assignment as a record of its own,
//! before the first event that uses it and under the same sync, so a recovered journal
//! has every id map entry its recovered events need; snapshots hold the maps.
//!
//! All integers are little-endian. Log file (`LOG_HEADER_LEN` + n × `LOG_RECORD_LEN`
//! bytes):
//!
//! ```text
//! header  0..8   magic "MOSAICLG"      event   0..8   seq (u64)
//!         8..12  version = 2                   8..12  user (u32, dense)
//!        12..16  record length = 36           12..16  item (u32, dense)
//!        16..24  first seq (u64, >= 1)        16..24  timestamp (u64)
//!        24..28  crc32 of bytes 0..24         24..28  weight (f32 bits)
//!        28..32  zero                         28      kind code (1..=4)
//!                                             29..32  zero
//!                                             32..36  crc32 of bytes 0..32
//!
//!                                      id      0..8   seq (u64)
//!                                              8..12  dense index (u32): the next one
//!                                             12..16  zero
//!                                             16..24  external id (u64)
//!                                             24..28  zero
//!                                             28      0x81 user, 0x82 item
//!                                             29..32  zero
//!                                             32..36  crc32 of bytes 0..32
//! ```
//!
//! Record `k` of a log carries seq `first seq + k`. Snapshot file: magic `"MOSAICSN"`,
//! version (u32), entry length = 24 (u32), seq covered (u64), entry count (u64), then the
//! entries (bytes 8..32 of an event record each), then the user map (count u64, then
//! the external ids in dense order, u64 each) and the item map (the same), then a crc32
//! of everything before it. Version 1 files (before id records; snapshots without maps)
//! are read; new files are version 2.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ids::{DenseId, IdMap, ItemId, ItemMap, UserId, UserMap};
use crate::interactions::{Interaction, InteractionKind, Interactions};
use crate::snapshot::crc_trailer_holds;

const LOG_MAGIC: [u8; 8] = *b"MOSAICLG";
const SNAPSHOT_MAGIC: [u8; 8] = *b"MOSAICSN";
/// The version new files are written in; version 1 (no id records, snapshots without
/// id maps) is read too.
const VERSION: u32 = 2;
/// Snapshot format version: 3 adds the seq dropped through ([`Journal::drop_through`]).
const SNAPSHOT_VERSION: u32 = 3;
const USER_ID_CODE: u8 = 0x81;
const ITEM_ID_CODE: u8 = 0x82;

/// Length in bytes of an event log's header.
pub const LOG_HEADER_LEN: usize = 32;
/// Length in bytes of one event log record.
pub const LOG_RECORD_LEN: usize = 36;

/// Length of an encoded event (a log record without seq and crc; a snapshot entry).
pub(crate) const EVENT_LEN: usize = 24;
const SNAPSHOT_HEADER_LEN: usize = 32;
/// Pending appends are written to the file (not synced) once this many bytes are buffered.
const FLUSH_BYTES: usize = 1 << 20;

fn corrupt(path: &Path, offset: u64, message: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        message: message.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

pub(crate) fn encode_event(e: &Interaction, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.user.0.to_le_bytes());
    out.extend_from_slice(&e.item.0.to_le_bytes());
    out.extend_from_slice(&e.timestamp.to_le_bytes());
    out.extend_from_slice(&e.weight.to_bits().to_le_bytes());
    out.extend_from_slice(&[e.kind.code(), 0, 0, 0]);
}

/// One record of an event log: an interaction, or the assignment of the next dense index
/// to a new external id (logged before the first event that uses it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Record {
    /// An interaction between dense ids.
    Event(Interaction),
    /// A new user's external id; `user` is the next free user index.
    User {
        /// The application's id.
        external: u64,
        /// The dense index it was given.
        user: UserId,
    },
    /// A new item's external id; `item` is the next free item index.
    Item {
        /// The application's id.
        external: u64,
        /// The dense index it was given.
        item: ItemId,
    },
}

fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let (code, dense, external) = match *r {
        Record::Event(ref e) => return encode_event(e, out),
        Record::User { external, user } => (USER_ID_CODE, user.0, external),
        Record::Item { external, item } => (ITEM_ID_CODE, item.0, external),
    };
    out.extend_from_slice(&dense.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&external.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[code, 0, 0, 0]);
}

/// Decodes `EVENT_LEN` bytes of a log record; id records only if `ids` (version >= 2).
fn decode_record(b: &[u8], ids: bool) -> std::result::Result<Record, String> {
    let code = b[20];
    if code != USER_ID_CODE && code != ITEM_ID_CODE {
        return decode_event(b).map(Record::Event);
    }
    if !ids {
        return Err(format!(
            "id record (kind code {code:#x}) in a version 1 log"
        ));
    }
    if b[4..8] != [0; 4] || b[16..20] != [0; 4] || b[21..24] != [0; 3] {
        return Err("reserved bytes of the id record are not zero".into());
    }
    let dense = u32_at(b, 0);
    let external = u64_at(b, 8);
    Ok(if code == USER_ID_CODE {
        Record::User {
            external,
            user: UserId(dense),
        }
    } else {
        Record::Item {
            external,
            item: ItemId(dense),
        }
    })
}

/// Decodes `EVENT_LEN` bytes; `Err` says what is invalid.
pub(crate) fn decode_event(b: &[u8]) -> std::result::Result<Interaction, String> {
    let kind = InteractionKind::from_code(b[20])
        .ok_or_else(|| format!("unknown interaction kind code {}", b[20]))?;
    if b[21..24] != [0, 0, 0] {
        return Err("reserved bytes of the event are not zero".into());
    }
    let weight = f32::from_bits(u32_at(b, 16));
    if !weight.is_finite() || weight < 0.0 {
        return Err(format!("weight {weight}, expected a finite value >= 0"));
    }
    Ok(Interaction {
        user: UserId(u32_at(b, 0)),
        item: ItemId(u32_at(b, 4)),
        kind,
        weight,
        timestamp: u64_at(b, 8),
    })
}

fn log_header(first_seq: u64) -> [u8; LOG_HEADER_LEN] {
    let mut h = [0u8; LOG_HEADER_LEN];
    h[0..8].copy_from_slice(&LOG_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(LOG_RECORD_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads until `buf` is full or the reader is exhausted; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// fsyncs a directory, so that entries created, renamed or removed in it are durable.
/// Removes the files of `dir` whose (UTF-8) names `obsolete` accepts, then syncs the
/// directory if any went; a file already gone is no error.
pub(crate) fn remove_files(dir: &Path, obsolete: impl Fn(&str) -> bool) -> Result<()> {
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if obsolete(&name) {
            let p = entry.path();
            match fs::remove_file(&p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

fn try_lock(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// The result of reading a log file: the valid records and where they end.
struct Scanned {
    /// `None` when the header itself is torn (the file was being created).
    first_seq: Option<u64>,
    /// The header's format version (meaningless when `first_seq` is `None`).
    version: u32,
    records: Vec<Record>,
    /// Bytes of header and valid records; everything after is a torn tail.
    valid_len: u64,
    file_len: u64,
}

/// Reads a whole log file from `file`, without modifying it.
fn scan_log(path: &Path, file: &File) -> Result<Scanned> {
    let io = |e| Error::io(path, e);
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut h = [0u8; LOG_HEADER_LEN];
    let n = read_full(&mut r, &mut h).map_err(io)?;
    let header_valid =
        n == LOG_HEADER_LEN && h[0..8] == LOG_MAGIC && crc32fast::hash(&h[0..24]) == u32_at(&h, 24);
    if file_len <= LOG_HEADER_LEN as u64 && !header_valid {
        // No record was ever appended. If what is there is the start of our header (or
        // zeros), a crash interrupted the file's creation; nothing was acknowledged.
        let m = n.min(LOG_MAGIC.len());
        if h[..m] == LOG_MAGIC[..m] || h[..m].iter().all(|&b| b == 0) {
            return Ok(Scanned {
                first_seq: None,
                version: VERSION,
                records: Vec::new(),
                valid_len: 0,
                file_len,
            });
        }
        return Err(corrupt(path, 0, "not a taste-graph event log (bad magic)"));
    }
    if n < LOG_HEADER_LEN || h[0..8] != LOG_MAGIC {
        return Err(corrupt(path, 0, "not a taste-graph event log (bad magic)"));
    }
    if crc32fast::hash(&h[0..24]) != u32_at(&h, 24) {
        return Err(corrupt(path, 24, "log header checksum mismatch"));
    }
    let version = u32_at(&h, 8);
    if !(1..=VERSION).contains(&version) {
        return Err(corrupt(
            path,
            8,
            format!("unsupported log version {version} (this build reads 1 to {VERSION})"),
        ));
    }
    let record_len = u32_at(&h, 12);
    if record_len as usize != LOG_RECORD_LEN {
        return Err(corrupt(
            path,
            12,
            format!("record length {record_len}, expected {LOG_RECORD_LEN}"),
        ));
    }
    if u32_at(&h, 28) != 0 {
        return Err(corrupt(path, 28, "reserved header bytes are not zero"));
    }
    let first_seq = u64_at(&h, 16);
    if first_seq == 0 {
        return Err(corrupt(path, 16, "first sequence number is 0"));
    }

    let mut records = Vec::new();
    let mut valid_len = LOG_HEADER_LEN as u64;
    let mut offset = LOG_HEADER_LEN as u64;
    let mut bad: Option<(u64, String)> = None;
    let mut rec = [0u8; LOG_RECORD_LEN];
    loop {
        let n = read_full(&mut r, &mut rec).map_err(io)?;
        if n < LOG_RECORD_LEN {
            break; // end of file, or a partial record: the torn tail
        }
        let crc_ok = crc32fast::hash(&rec[..32]) == u32_at(&rec, 32);
        if let Some((bad_offset, why)) = &bad {
            if crc_ok {
                return Err(corrupt(
                    path,
                    *bad_offset,
                    format!(
                        "{why}, but a valid record follows at byte {offset}: \
                         damage inside the log, not a torn tail"
                    ),
                ));
            }
        } else if !crc_ok {
            bad = Some((offset, "record checksum mismatch".to_string()));
        } else {
            let seq = u64_at(&rec, 0);
            let expected = first_seq.saturating_add(records.len() as u64);
            if seq != expected {
                return Err(corrupt(
                    path,
                    offset,
                    format!("record has sequence number {seq}, expected {expected}"),
                ));
            }
            let record =
                decode_record(&rec[8..32], version >= 2).map_err(|m| corrupt(path, offset, m))?;
            records.push(record);
            valid_len = offset + LOG_RECORD_LEN as u64;
        }
        offset += LOG_RECORD_LEN as u64;
    }
    Ok(Scanned {
        first_seq: Some(first_seq),
        version,
        records,
        valid_len,
        file_len,
    })
}

/// What [`EventLog::open`] read back from an existing file.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Sequence number of the file's first record; `records[i]` has seq `first_seq + i`.
    pub first_seq: u64,
    /// The valid records, in append order.
    pub records: Vec<Record>,
    /// Bytes of torn or garbage tail that were discarded (and truncated from the file).
    pub discarded_bytes: u64,
}

impl Replay {
    /// The sequence number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }

    /// The interaction records, in append order (id records left out).
    pub fn events(&self) -> Vec<Interaction> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(*e),
                _ => None,
            })
            .collect()
    }
}

/// An append-only file of fixed-size, checksummed interaction records.
///
/// Appends are buffered in memory; [`EventLog::sync`] writes them and fdatasyncs the
/// file, and only then are they acknowledged. Many appends and one sync (group commit)
/// cost one `write` and one `fdatasync`. Dropping the log does *not* write pending
/// appends: call `sync` first. After a failed write or sync the log refuses further
/// use (the kernel may have dropped the dirty pages); reopen it to recover.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: File,
    first_seq: u64,
    version: u32,
    next_seq: u64,
    durable_seq: u64,
    buf: Vec<u8>,
    failed: bool,
}

impl EventLog {
    /// Opens the log at `path`, creating it (first seq 1) if it does not exist, and
    /// returns the records it holds. A torn tail is discarded and truncated. An empty
    /// version 1 log is rewritten as version 2.
    pub fn open(path: impl AsRef<Path>) -> Result<(EventLog, Replay)> {
        Self::open_impl(path.as_ref(), 1, None)
    }

    /// Opens or creates the log at `path` whose first record has seq `first_seq`
    /// (>= 1); an existing file's header must say the same.
    pub fn open_from(path: impl AsRef<Path>, first_seq: u64) -> Result<(EventLog, Replay)> {
        Self::open_impl(path.as_ref(), first_seq, Some(first_seq))
    }

    fn open_impl(
        path: &Path,
        new_first_seq: u64,
        expected: Option<u64>,
    ) -> Result<(EventLog, Replay)> {
        if new_first_seq == 0 {
            return Err(Error::Config {
                message: "an event log's first sequence number must be >= 1".into(),
            });
        }
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        try_lock(&file, path)?;
        let scanned = scan_log(path, &file)?;
        if let (Some(first_seq), Some(want)) = (scanned.first_seq, expected)
            && want != first_seq
        {
            return Err(corrupt(
                path,
                16,
                format!("log starts at seq {first_seq}, expected {want}"),
            ));
        }
        let (first_seq, version, records, discarded_bytes) = match scanned.first_seq {
            Some(first_seq) if scanned.version < VERSION && scanned.records.is_empty() => {
                // An old-format log with no record: rewrite its header in the current
                // format (a crash in between leaves a torn header, re-initialised the
                // same way on the next open).
                file.set_len(LOG_HEADER_LEN as u64).map_err(io)?;
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                file.write_all(&log_header(first_seq)).map_err(io)?;
                file.sync_data().map_err(io)?;
                (
                    first_seq,
                    VERSION,
                    Vec::new(),
                    scanned.file_len - scanned.valid_len,
                )
            }
            Some(first_seq) => {
                if scanned.valid_len < scanned.file_len {
                    file.set_len(scanned.valid_len).map_err(io)?;
                }
                file.seek(SeekFrom::Start(scanned.valid_len)).map_err(io)?;
                file.sync_data().map_err(io)?;
                (
                    first_seq,
                    scanned.version,
                    scanned.records,
                    scanned.file_len - scanned.valid_len,
                )
            }
            None => {
                // New file, or one whose creation was interrupted: write the header.
                file.set_len(0).map_err(io)?;
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                file.write_all(&log_header(new_first_seq)).map_err(io)?;
                file.sync_data().map_err(io)?;
                sync_dir(parent_of(path))?;
                (new_first_seq, VERSION, Vec::new(), scanned.file_len)
            }
        };
        let next_seq = first_seq
            .checked_add(records.len() as u64)
            .ok_or_else(|| corrupt(path, 16, "sequence numbers overflow u64"))?;
        let log = EventLog {
            path: path.to_path_buf(),
            file,
            first_seq,
            version,
            next_seq,
            durable_seq: next_seq - 1,
            buf: Vec::new(),
            failed: false,
        };
        let replay = Replay {
            first_seq,
            records,
            discarded_bytes,
        };
        Ok((log, replay))
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::io(
                &self.path,
                std::io::Error::other("an earlier write or sync failed; reopen the log"),
            ));
        }
        Ok(())
    }

    /// Buffers `event` and returns its sequence number. Not durable until [`sync`].
    /// The weight must be finite and non-negative.
    ///
    /// [`sync`]: EventLog::sync
    pub fn append(&mut self, event: &Interaction) -> Result<u64> {
        self.append_record(&Record::Event(*event))
    }

    /// Buffers any record (an event, or an id assignment) and returns its sequence
    /// number; see [`EventLog::append`]. Id records need a version 2 log.
    pub fn append_record(&mut self, record: &Record) -> Result<u64> {
        self.check_usable()?;
        match record {
            Record::Event(event) => event.check_weight()?,
            Record::User { .. } | Record::Item { .. } if self.version < 2 => {
                return Err(Error::Graph {
                    message: format!(
                        "{} is a version {} log, which cannot hold id records; \
                         continue in a new log",
                        self.path.display(),
                        self.version
                    ),
                });
            }
            Record::User { .. } | Record::Item { .. } => {}
        }
        let seq = self.next_seq;
        let next = seq.checked_add(1).ok_or_else(|| Error::Graph {
            message: "event log sequence numbers exhausted".into(),
        })?;
        let start = self.buf.len();
        self.buf.extend_from_slice(&seq.to_le_bytes());
        encode_record(record, &mut self.buf);
        let crc = crc32fast::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.next_seq = next;
        if self.buf.len() >= FLUSH_BYTES {
            self.write_pending()?;
        }
        Ok(seq)
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            self.failed = true;
            return Err(Error::io(&self.path, e));
        }
        self.buf.clear();
        Ok(())
    }

    /// Writes pending appends and fdatasyncs the file; returns the highest durable
    /// (acknowledged) seq, `first_seq - 1` if the log is empty.
    pub fn sync(&mut self) -> Result<u64> {
        self.check_usable()?;
        if self.durable_seq + 1 == self.next_seq {
            return Ok(self.durable_seq);
        }
        self.write_pending()?;
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(Error::io(&self.path, e));
        }
        self.durable_seq = self.next_seq - 1;
        Ok(self.durable_seq)
    }

    /// [`append`](EventLog::append) then [`sync`](EventLog::sync); returns the event's seq.
    pub fn append_sync(&mut self, event: &Interaction) -> Result<u64> {
        let seq = self.append(event)?;
        self.sync()?;
        Ok(seq)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number of the file's first record.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The file's format version (1: events only; 2: events and id records).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest acknowledged seq (`first_seq - 1` when none is).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Number of appended records not yet synced.
    pub fn pending(&self) -> u64 {
        self.next_seq - 1 - self.durable_seq
    }
}

/// A point-in-time copy of the events and id maps, covering every log record up to `seq`.
#[derive(Debug, Clone, Default)]
pub struct GraphSnapshot {
    /// The last sequence number the snapshot covers (0: none).
    pub seq: u64,
    /// The events.
    pub events: Interactions,
    /// External user ids (empty when the application uses dense ids).
    pub users: UserMap,
    /// External item ids (empty when the application uses dense ids).
    pub items: ItemMap,
    /// Events up to this seq were dropped from the journal ([`Journal::drop_through`]):
    /// `events` holds those after it (0: none dropped).
    pub dropped_through: u64,
}

impl GraphSnapshot {
    /// Writes a snapshot of `events` and the id maps covering seq `seq` to `path`
    /// atomically: a temp file next to it, fsync, rename, fsync of the directory.
    pub fn write(
        path: impl AsRef<Path>,
        seq: u64,
        events: &Interactions,
        users: &UserMap,
        items: &ItemMap,
    ) -> Result<()> {
        Self::write_dropped(path.as_ref(), seq, events, users, items, 0)
    }

    /// [`GraphSnapshot::write`] of a journal whose events up to `dropped_through` were
    /// dropped.
    fn write_dropped(
        path: &Path,
        seq: u64,
        events: &Interactions,
        users: &UserMap,
        items: &ItemMap,
        dropped_through: u64,
    ) -> Result<()> {
        let name = path.file_name().ok_or_else(|| Error::Config {
            message: format!("snapshot path {} has no file name", path.display()),
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let io = |e| Error::io(&tmp, e);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        let mut crc = crc32fast::Hasher::new();
        let mut chunk = Vec::with_capacity(SNAPSHOT_HEADER_LEN);
        chunk.extend_from_slice(&SNAPSHOT_MAGIC);
        chunk.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        chunk.extend_from_slice(&(EVENT_LEN as u32).to_le_bytes());
        chunk.extend_from_slice(&seq.to_le_bytes());
        chunk.extend_from_slice(&(events.len() as u64).to_le_bytes());
        for e in events.events() {
            if chunk.len() >= 1 << 16 {
                crc.update(&chunk);
                w.write_all(&chunk).map_err(io)?;
                chunk.clear();
            }
            encode_event(e, &mut chunk);
        }
        for externals in [users.externals(), items.externals()] {
            chunk.extend_from_slice(&(externals.len() as u64).to_le_bytes());
            for id in externals {
                if chunk.len() >= 1 << 16 {
                    crc.update(&chunk);
                    w.write_all(&chunk).map_err(io)?;
                    chunk.clear();
                }
                chunk.extend_from_slice(&id.to_le_bytes());
            }
        }
        chunk.extend_from_slice(&dropped_through.to_le_bytes());
        crc.update(&chunk);
        chunk.extend_from_slice(&crc.finalize().to_le_bytes());
        w.write_all(&chunk).map_err(io)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(parent_of(path))
    }

    /// Writes this snapshot to `path` atomically (see [`GraphSnapshot::write`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Self::write_dropped(
            path.as_ref(),
            self.seq,
            &self.events,
            &self.users,
            &self.items,
            self.dropped_through,
        )
    }

    /// Reads and verifies a snapshot; any damage is an [`Error::Corrupt`].
    pub fn read(path: impl AsRef<Path>) -> Result<GraphSnapshot> {
        let path = path.as_ref();
        let b = fs::read(path).map_err(|e| Error::io(path, e))?;
        if b.len() < SNAPSHOT_HEADER_LEN + 4 || b[0..8] != SNAPSHOT_MAGIC {
            return Err(corrupt(path, 0, "not a taste-graph snapshot (bad magic)"));
        }
        let body_len = b.len() - 4;
        if !crc_trailer_holds(&b) {
            return Err(corrupt(path, body_len as u64, "snapshot checksum mismatch"));
        }
        let version = u32_at(&b, 8);
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(corrupt(
                path,
                8,
                format!(
                    "unsupported snapshot version {version} (this build reads 1 to {SNAPSHOT_VERSION})"
                ),
            ));
        }
        let entry_len = u32_at(&b, 12);
        if entry_len as usize != EVENT_LEN {
            return Err(corrupt(
                path,
                12,
                format!("entry length {entry_len}, expected {EVENT_LEN}"),
            ));
        }
        let seq = u64_at(&b, 16);
        let count = u64_at(&b, 24);
        let entries_end = count
            .checked_mul(EVENT_LEN as u64)
            .and_then(|n| n.checked_add(SNAPSHOT_HEADER_LEN as u64))
            .filter(|&end| end <= body_len as u64)
            .ok_or_else(|| {
                corrupt(
                    path,
                    24,
                    format!("{count} entries do not fit a file of {} bytes", b.len()),
                )
            })? as usize;
        let (users, items, dropped_through) = if version >= 2 {
            let (users, at) = read_id_map(path, &b[..body_len], entries_end, "user")?;
            let (items, mut at) = read_id_map(path, &b[..body_len], at, "item")?;
            let mut dropped_through = 0;
            if version >= 3 {
                if at + 8 > body_len {
                    return Err(corrupt(
                        path,
                        at as u64,
                        "the snapshot ends before its dropped seq",
                    ));
                }
                dropped_through = u64_at(&b, at);
                at += 8;
                if dropped_through > seq {
                    return Err(corrupt(
                        path,
                        at as u64 - 8,
                        format!(
                            "events dropped through seq {dropped_through}, past the snapshot's {seq}"
                        ),
                    ));
                }
            }
            if at != body_len {
                return Err(corrupt(
                    path,
                    at as u64,
                    format!("{} bytes after the item map", body_len - at),
                ));
            }
            (users, items, dropped_through)
        } else {
            if entries_end != body_len {
                return Err(corrupt(
                    path,
                    24,
                    format!("{count} entries do not fill a file of {} bytes", b.len()),
                ));
            }
            (UserMap::new(), ItemMap::new(), 0)
        };
        let mut events = Interactions::new();
        for (i, e) in b[SNAPSHOT_HEADER_LEN..entries_end]
            .chunks_exact(EVENT_LEN)
            .enumerate()
        {
            let offset = (SNAPSHOT_HEADER_LEN + i * EVENT_LEN) as u64;
            let event = decode_event(e).map_err(|m| corrupt(path, offset, m))?;
            events.push(event)?;
        }
        Ok(GraphSnapshot {
            seq,
            events,
            users,
            items,
            dropped_through,
        })
    }
}

/// Reads an id map section (count, then the external ids) at `at` of a snapshot body;
/// returns it and the offset after it.
fn read_id_map<T: DenseId>(
    path: &Path,
    body: &[u8],
    at: usize,
    what: &str,
) -> Result<(IdMap<T>, usize)> {
    let Some(count_end) = at.checked_add(8).filter(|&e| e <= body.len()) else {
        return Err(corrupt(
            path,
            at as u64,
            format!("the snapshot ends before its {what} map"),
        ));
    };
    let count = u64_at(body, at);
    let end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(count_end as u64))
        .filter(|&end| end <= body.len() as u64)
        .ok_or_else(|| {
            corrupt(
                path,
                at as u64,
                format!("{count} {what} ids do not fit the snapshot"),
            )
        })? as usize;
    let externals = body[count_end..end]
        .chunks_exact(8)
        .map(|c| u64_at(c, 0))
        .collect();
    let map = IdMap::from_externals(externals).map_err(|(i, id)| {
        corrupt(
            path,
            (count_end + 8 * i) as u64,
            format!("{what} id {id} is mapped twice"),
        )
    })?;
    Ok((map, end))
}

/// What [`Journal::open`] recovered (the id maps stay in the journal:
/// [`Journal::users`], [`Journal::items`]).
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Every acknowledged event (and possibly later ones that reached the disk): the
    /// snapshot's events followed by the log records after it.
    pub events: Interactions,
    /// The seq covered by the snapshot that was loaded (0: none).
    pub snapshot_seq: u64,
    /// Events up to this seq were dropped ([`Journal::drop_through`]; 0: none): `events`
    /// holds only those after it.
    pub dropped_through: u64,
    /// The seq of the last recovered event (0: none).
    pub last_seq: u64,
    /// Bytes of torn tail discarded from log files.
    pub discarded_bytes: u64,
    /// Snapshot files that were unreadable and passed over for an older one.
    pub skipped_snapshots: Vec<PathBuf>,
    /// Index in `events` of the first event replayed from a log (the snapshot's come
    /// before it).
    log_from: usize,
    /// The seq of each event replayed from a log, in order.
    log_seqs: Vec<u64>,
}

impl Recovery {
    /// The recovered events with a seq above `seq`, oldest first: what a component that
    /// saved its state through `seq` (e.g. [`crate::Refresher::save`]) has not seen.
    ///
    /// Refused when `seq` is below the loaded snapshot's (those events are in the
    /// snapshot without their seqs, or were dropped: save such state before
    /// [`Journal::checkpoint`], and drop only what a written state covers) or
    /// above the last recovered event (the state has seen events the journal lost: save
    /// it with an acknowledged seq, [`Journal::sync`]).
    pub fn events_after(&self, seq: u64) -> Result<&[Interaction]> {
        if seq < self.snapshot_seq {
            return Err(Error::Graph {
                message: format!(
                    "events after seq {seq} are wanted, but the journal's snapshot covers \
                     up to seq {} and does not keep seqs{}: save state before checkpointing \
                     the journal",
                    self.snapshot_seq,
                    if self.dropped_through > seq {
                        " (events up to it were dropped after a later save)"
                    } else {
                        ""
                    }
                ),
            });
        }
        if seq > self.last_seq {
            return Err(Error::Graph {
                message: format!(
                    "events after seq {seq} are wanted, but the journal ends at seq {}: the \
                     state was saved with events the journal did not acknowledge",
                    self.last_seq
                ),
            });
        }
        let start = self.log_from + self.log_seqs.partition_point(|&s| s <= seq);
        self.events.events().get(start..).ok_or_else(|| Error::Graph {
            message: format!(
                "the recovery's events were changed: {} left, the logs replayed {} from index {}",
                self.events.len(),
                self.log_seqs.len(),
                self.log_from
            ),
        })
    }
}

/// A directory holding snapshots and event logs: `snapshot-<seq>.snap` covers events up
/// to `seq`; `log-<first seq>.log` holds the events from `first seq` on (seqs written
/// as 20 digits). Exclusive while open (a `LOCK` file).
///
/// Events carry dense ids. An application with its own `u64` ids records through
/// [`Journal::record_external`], which assigns dense indices in arrival order and logs
/// every new assignment; a journal uses external ids for all users (items) or for none.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    log: EventLog,
    snapshot_seq: u64,
    /// Events up to this seq were dropped ([`Journal::drop_through`]).
    dropped_through: u64,
    users: UserMap,
    items: ItemMap,
    /// One more than the largest user index any recorded event uses (0: none).
    seen_users: u64,
    /// One more than the largest item index any recorded event uses (0: none).
    seen_items: u64,
    _lock: File,
}

/// The state rebuilt while replaying: events and id maps.
struct Recovered {
    events: Interactions,
    users: UserMap,
    items: ItemMap,
    /// The seq of each event replayed from a log.
    seqs: Vec<u64>,
    /// The snapshot is a [`Journal::drop_through`]'s: its id maps already hold the ids
    /// that records after it assign (each must then match).
    ids_ahead: bool,
}

impl Recovered {
    /// Applies one replayed record with seq `seq`, read at `offset` of `path`.
    fn apply(&mut self, record: &Record, seq: u64, path: &Path, offset: u64) -> Result<()> {
        match *record {
            Record::Event(e) => {
                self.events.push(e)?;
                self.seqs.push(seq);
                Ok(())
            }
            Record::User { external, user } => {
                assign(&mut self.users, external, user.0, self.ids_ahead, "user")
                    .map_err(|m| corrupt(path, offset, m))
            }
            Record::Item { external, item } => {
                assign(&mut self.items, external, item.0, self.ids_ahead, "item")
                    .map_err(|m| corrupt(path, offset, m))
            }
        }
    }
}

/// Replays an id record: `external` must be new and `dense` the next index, or, when
/// the map is `ahead` of the records (a dropped journal's snapshot), already at `dense`.
fn assign<T: DenseId>(
    map: &mut IdMap<T>,
    external: u64,
    dense: u32,
    ahead: bool,
    what: &str,
) -> std::result::Result<(), String> {
    if let Some(existing) = map.get(external) {
        if ahead && existing.to_index() == dense {
            return Ok(());
        }
        return Err(format!(
            "{what} id {external} is assigned again (it has index {})",
            existing.to_index()
        ));
    }
    if dense as usize != map.len() {
        return Err(format!(
            "{what} id {external} is given index {dense}, expected the next one, {}",
            map.len()
        ));
    }
    map.get_or_insert(external)
        .map(|_| ())
        .ok_or_else(|| format!("all 2^32 {what} indices are taken"))
}

/// One more than the largest user and item index in `events`.
fn seen_counts(events: &Interactions) -> (u64, u64) {
    events.events().iter().fold((0, 0), |(u, i), e| {
        (u.max(e.user.0 as u64 + 1), i.max(e.item.0 as u64 + 1))
    })
}

/// `Err` unless `index` has an external id in `map` or `map` is empty (dense ids).
fn check_mapped<T: DenseId>(map: &IdMap<T>, index: u32, what: &str) -> Result<()> {
    if map.is_empty() || (index as usize) < map.len() {
        return Ok(());
    }
    Err(Error::Graph {
        message: format!(
            "{what} index {index} has no external id, but this journal maps external {what} \
             ids ({} so far): record events with record_external or with the indices it \
             assigned",
            map.len()
        ),
    })
}

/// The dense index a new external id gets, refused when dense-only events already use
/// indices without external ids.
fn next_index<T: DenseId>(map: &IdMap<T>, seen: u64, what: &str) -> Result<u32> {
    let len = map.len();
    if (len as u64) < seen {
        return Err(Error::Graph {
            message: format!(
                "this journal holds events with {what} indices up to {} that have no \
                 external id: a journal uses external {what} ids for all {what}s or for none",
                seen - 1
            ),
        });
    }
    u32::try_from(len).map_err(|_| Error::Graph {
        message: format!("all 2^32 {what} indices are taken"),
    })
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Journal {
    /// The path of the snapshot covering events up to `seq` in `dir`.
    pub fn snapshot_path(dir: impl AsRef<Path>, seq: u64) -> PathBuf {
        dir.as_ref().join(format!("snapshot-{seq:020}.snap"))
    }

    /// The path of the log whose first record has seq `first_seq` in `dir`.
    pub fn log_path(dir: impl AsRef<Path>, first_seq: u64) -> PathBuf {
        dir.as_ref().join(format!("log-{first_seq:020}.log"))
    }

    /// Opens (creating if needed) the journal in `dir`: loads the newest readable
    /// snapshot and replays the log records after it.
    ///
    /// An unreadable snapshot is passed over for an older one (or none) only if the
    /// logs still hold every event since that older one, up to at least the bad
    /// snapshot's seq (it is then listed in [`Recovery::skipped_snapshots`]); otherwise
    /// opening fails with
    /// [`Error::Corrupt`] rather than return fewer events than were acknowledged.
    pub fn open(dir: impl AsRef<Path>) -> Result<(Journal, Recovery)> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        try_lock(&lock, &lock_path)?;

        let mut snapshots = Vec::new();
        let mut logs = Vec::new();
        let mut removed_tmp = false;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(seq) = parse_name(&name, "snapshot-", ".snap") {
                snapshots.push((seq, entry.path()));
            } else if let Some(seq) = parse_name(&name, "log-", ".log") {
                logs.push((seq, entry.path()));
            } else if name.starts_with("snapshot-") && name.ends_with(".snap.tmp") {
                // An interrupted snapshot write: never renamed, so never relied upon.
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                removed_tmp = true;
            }
        }
        if removed_tmp {
            sync_dir(&dir)?;
        }
        snapshots.sort_by_key(|s| std::cmp::Reverse(s.0));
        logs.sort_by_key(|l| l.0);

        let newest_claim = snapshots.first().map_or(0, |s| s.0);
        let mut skipped = Vec::new();
        let mut snapshot = GraphSnapshot::default();
        for (seq, path) in &snapshots {
            match GraphSnapshot::read(path) {
                Ok(s) if s.seq == *seq => {
                    snapshot = s;
                    break;
                }
                // A snapshot whose header disagrees with its name is damaged too.
                Ok(_) | Err(Error::Corrupt { .. }) => skipped.push(path.clone()),
                Err(e) => return Err(e),
            }
        }
        let with_context = |e: Error| -> Error {
            match (&e, skipped.first()) {
                (Error::Corrupt { .. }, Some(bad)) => corrupt(
                    bad,
                    0,
                    format!("snapshot is unreadable and the logs cannot replace it ({e})"),
                ),
                _ => e,
            }
        };
        let from = snapshot.seq.checked_add(1).ok_or_else(|| {
            corrupt(
                &Journal::snapshot_path(&dir, snapshot.seq),
                16,
                "snapshot seq is u64::MAX",
            )
        })?;
        let log_from = snapshot.events.len();
        let mut state = Recovered {
            events: snapshot.events,
            users: snapshot.users,
            items: snapshot.items,
            seqs: Vec::new(),
            ids_ahead: snapshot.seq > 0 && snapshot.dropped_through == snapshot.seq,
        };
        let replayed = replay_logs(&dir, &logs, from, &mut state).map_err(&with_context)?;
        let last_seq = replayed.log.next_seq() - 1;
        if last_seq < newest_claim {
            return Err(with_context(corrupt(
                &dir,
                0,
                format!(
                    "a snapshot claims events up to seq {newest_claim}, \
                     but only {last_seq} can be recovered"
                ),
            )));
        }
        let (seen_users, seen_items) = seen_counts(&state.events);
        for (what, len, seen) in [
            ("user", state.users.len(), seen_users),
            ("item", state.items.len(), seen_items),
        ] {
            if len > 0 && (len as u64) < seen {
                return Err(corrupt(
                    &dir,
                    0,
                    format!(
                        "the events use {what} index {} but only {len} {what}s have external ids",
                        seen - 1
                    ),
                ));
            }
        }
        let mut log = replayed.log;
        if log.version() < VERSION {
            // A log from before id records (it holds records, or it would have been
            // rewritten when opened): continue in a new one.
            let next = log.next_seq();
            drop(log);
            log = EventLog::open_from(Journal::log_path(&dir, next), next)?.0;
        }
        let recovery = Recovery {
            events: state.events,
            snapshot_seq: snapshot.seq,
            dropped_through: snapshot.dropped_through,
            last_seq,
            discarded_bytes: replayed.discarded_bytes,
            skipped_snapshots: skipped,
            log_from,
            log_seqs: state.seqs,
        };
        let journal = Journal {
            dir,
            log,
            snapshot_seq: snapshot.seq,
            dropped_through: snapshot.dropped_through,
            users: state.users,
            items: state.items,
            seen_users,
            seen_items,
            _lock: lock,
        };
        Ok((journal, recovery))
    }

    /// Appends `event` to the log (buffered, see [`EventLog::append`]); returns its seq.
    ///
    /// Once the journal maps external ids of users (items), the event's user (item)
    /// must be an index it assigned.
    pub fn record(&mut self, event: &Interaction) -> Result<u64> {
        check_mapped(&self.users, event.user.0, "user")?;
        check_mapped(&self.items, event.item.0, "item")?;
        let seq = self.log.append(event)?;
        self.seen_users = self.seen_users.max(event.user.0 as u64 + 1);
        self.seen_items = self.seen_items.max(event.item.0 as u64 + 1);
        Ok(seq)
    }

    /// Records an interaction between external ids: a user or item seen for the first
    /// time gets the next dense index, logged before the event (the same
    /// [`sync`](Journal::sync) makes both durable). Returns the event's seq and the event
    /// in dense ids. The weight must be finite and non-negative; nothing is logged
    /// otherwise.
    ///
    /// Refused (an error, nothing logged) when the journal already holds events whose
    /// dense user (item) indices have no external id: a journal uses external ids for
    /// all or for none.
    pub fn record_external(
        &mut self,
        user: u64,
        item: u64,
        kind: InteractionKind,
        weight: f32,
        timestamp: u64,
    ) -> Result<(u64, Interaction)> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::Graph {
                message: format!(
                    "interaction of external user {user} with external item {item} has \
                     weight {weight}, expected a finite value >= 0"
                ),
            });
        }
        // Both indices are settled before anything is logged, so a refusal logs nothing.
        let (user_id, new_user) = match self.users.get(user) {
            Some(id) => (id, false),
            None => (
                UserId(next_index(&self.users, self.seen_users, "user")?),
                true,
            ),
        };
        let (item_id, new_item) = match self.items.get(item) {
            Some(id) => (id, false),
            None => (
                ItemId(next_index(&self.items, self.seen_items, "item")?),
                true,
            ),
        };
        if new_user {
            self.log.append_record(&Record::User {
                external: user,
                user: user_id,
            })?;
            self.users.get_or_insert(user);
        }
        if new_item {
            self.log.append_record(&Record::Item {
                external: item,
                item: item_id,
            })?;
            self.items.get_or_insert(item);
        }
        let event = Interaction {
            user: user_id,
            item: item_id,
            kind,
            weight,
            timestamp,
        };
        // `record` checks the (now mapped) ids, appends and tracks the indices in use.
        Ok((self.record(&event)?, event))
    }

    /// External user ids, in dense order (empty when the application uses dense ids).
    pub fn users(&self) -> &UserMap {
        &self.users
    }

    /// External item ids, in dense order (empty when the application uses dense ids).
    pub fn items(&self) -> &ItemMap {
        &self.items
    }

    /// Makes every recorded event durable; returns the highest acknowledged seq.
    pub fn sync(&mut self) -> Result<u64> {
        self.log.sync()
    }

    /// Writes a snapshot of `events` (and the id maps) and starts a new log after it;
    /// returns the snapshot's seq.
    ///
    /// `events` must be the state after *every* event recorded so far (what
    /// [`Journal::open`] returned plus everything passed to [`Journal::record`]; after a
    /// [`Journal::drop_through`], every event after the dropped ones), since the snapshot
    /// replaces them. Steps, each durable before the next: sync the log;
    /// write the snapshot (atomic rename); create the new log; delete older logs and
    /// snapshots. A crash anywhere opens to the same events; an error after the snapshot
    /// is written leaves obsolete files that the next checkpoint removes.
    pub fn checkpoint(&mut self, events: &Interactions) -> Result<u64> {
        for e in events.events() {
            check_mapped(&self.users, e.user.0, "user")?;
            check_mapped(&self.items, e.item.0, "item")?;
        }
        let seq = self.log.sync()?;
        GraphSnapshot::write_dropped(
            &Self::snapshot_path(&self.dir, seq),
            seq,
            events,
            &self.users,
            &self.items,
            self.dropped_through,
        )?;
        self.snapshot_seq = seq;
        if self.log.first_seq() != seq + 1 {
            let (log, _) = EventLog::open_from(Self::log_path(&self.dir, seq + 1), seq + 1)?;
            self.log = log;
        }
        remove_files(&self.dir, |name| {
            parse_name(name, "snapshot-", ".snap").is_some_and(|s| s < seq)
                || parse_name(name, "log-", ".log").is_some_and(|s| s <= seq)
        })?;
        Ok(seq)
    }

    /// Drops the events up to `seq` from the journal, keeping the id maps: for a service
    /// that saved its state through `seq` elsewhere (a refresher state,
    /// [`crate::Refresher::save`], written before this), so that the journal's files and
    /// its replay at [`Journal::open`] grow with the events since the last save, not with
    /// the whole history ([`Journal::checkpoint`] rewrites every event).
    ///
    /// Steps, each durable before the next: sync the log; write a snapshot at `seq` with
    /// no events and the id maps (ids assigned after `seq` included; their records are
    /// replayed as no-ops); start a new log; delete the logs that end at or before `seq`
    /// and older snapshots. A crash anywhere opens to the events after `seq` (or, before
    /// the snapshot is renamed, to all of them). From then on [`Journal::open`] recovers
    /// the events after the newest drop ([`Recovery::dropped_through`]). Refused when
    /// `seq` is past the last recorded seq or below the newest snapshot's.
    pub fn drop_through(&mut self, seq: u64) -> Result<()> {
        let last = self.log.sync()?;
        if seq > last || seq < self.snapshot_seq {
            return Err(Error::Graph {
                message: format!(
                    "cannot drop the journal's events through seq {seq}: it holds seqs {} to {last}",
                    self.snapshot_seq + 1
                ),
            });
        }
        GraphSnapshot::write_dropped(
            &Self::snapshot_path(&self.dir, seq),
            seq,
            &Interactions::new(),
            &self.users,
            &self.items,
            seq,
        )?;
        self.snapshot_seq = seq;
        self.dropped_through = seq;
        let next = last + 1;
        if self.log.first_seq() != next {
            let (log, _) = EventLog::open_from(Self::log_path(&self.dir, next), next)?;
            self.log = log;
        }
        // A log ends where the next one starts; the current one (from `next`) stays.
        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            if let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(|n| parse_name(n, "log-", ".log"))
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let obsolete: Vec<u64> = firsts
            .windows(2)
            .filter(|w| w[1] - 1 <= seq)
            .map(|w| w[0])
            .collect();
        remove_files(&self.dir, |name| {
            parse_name(name, "snapshot-", ".snap").is_some_and(|s| s < seq)
                || parse_name(name, "log-", ".log").is_some_and(|f| obsolete.contains(&f))
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seq covered by the newest snapshot (0: none).
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot_seq
    }

    /// The seq of the last recorded event, synced or not (0: none).
    pub fn last_seq(&self) -> u64 {
        self.log.next_seq() - 1
    }

    /// The highest acknowledged seq.
    pub fn durable_seq(&self) -> u64 {
        self.log.durable_seq()
    }
}

struct ReplayedLogs {
    discarded_bytes: u64,
    /// The log new events go to.
    log: EventLog,
}

/// Replays the records with seq >= `from` from `logs` (sorted by first seq) into
/// `state` and opens the log to append to. Logs wholly before `from` are ignored.
fn replay_logs(
    dir: &Path,
    logs: &[(u64, PathBuf)],
    from: u64,
    state: &mut Recovered,
) -> Result<ReplayedLogs> {
    // The last log starting at or before `from` holds `from` (or ends just before it).
    let start = logs.iter().rposition(|(first, _)| *first <= from);
    let Some(start) = start else {
        if let Some((first, path)) = logs.first() {
            return Err(corrupt(
                path,
                0,
                format!(
                    "events {from}..{} are missing: no log holds them",
                    first - 1
                ),
            ));
        }
        let (log, _) = EventLog::open_from(Journal::log_path(dir, from), from)?;
        return Ok(ReplayedLogs {
            discarded_bytes: 0,
            log,
        });
    };
    let mut discarded_bytes = 0;
    // The seq the next recovered event must have.
    let mut cursor = from;
    let last = logs.len() - 1;
    let mut current = None;
    for (k, (first, path)) in logs.iter().enumerate().skip(start) {
        if *first > cursor {
            return Err(corrupt(
                path,
                0,
                format!(
                    "events {cursor}..{} are missing: the previous log ends early",
                    first - 1
                ),
            ));
        }
        let (log_events, next_seq) = if k == last {
            let (log, replay) = EventLog::open_from(path, *first)?;
            discarded_bytes += replay.discarded_bytes;
            let next = replay.next_seq();
            current = Some(log);
            (replay.records, next)
        } else {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let scanned = scan_log(path, &file)?;
            let scanned_first = scanned.first_seq.unwrap_or(*first);
            if scanned_first != *first {
                return Err(corrupt(
                    path,
                    16,
                    format!("log starts at seq {scanned_first}, expected {first}"),
                ));
            }
            discarded_bytes += scanned.file_len - scanned.valid_len;
            let next = first.saturating_add(scanned.records.len() as u64);
            (scanned.records, next)
        };
        if k != start && *first < cursor && next_seq > *first {
            return Err(corrupt(
                path,
                0,
                format!(
                    "log starts at seq {first}, overlapping the previous log (up to {})",
                    cursor - 1
                ),
            ));
        }
        let skip = (cursor - first).min(log_events.len() as u64) as usize;
        for (i, r) in log_events.iter().enumerate().skip(skip) {
            let offset = (LOG_HEADER_LEN + i * LOG_RECORD_LEN) as u64;
            state.apply(r, first + i as u64, path, offset)?;
        }
        cursor = cursor.max(next_seq);
    }
    let mut log = match current {
        Some(log) => log,
        None => {
            return Err(corrupt(dir, 0, "internal: no current log"));
        }
    };
    if log.next_seq() < cursor {
        // The newest log ends before the snapshot: continue in a fresh log.
        let (fresh, _) = EventLog::open_from(Journal::log_path(dir, cursor), cursor)?;
        log = fresh;
    }
    Ok(ReplayedLogs {
        discarded_bytes,
        log,
    })
}
