//! The write-ahead log: an append-only sequence of records, each numbered (its seq),
//! kept in segment files of a [`FsDirectory`] and replayed on open.
//!
//! Guarantees:
//!
//! - a record is *written* once [`Wal::flush`] covering it returned (it survives the
//!   process dying: the operating system has it) and *durable* once [`Wal::sync`] did
//!   (it survives a power loss too). Many appends and one sync share one `fdatasync`
//!   (group commit);
//! - seqs are consecutive across segments; a gap, a record out of sequence, or a
//!   damaged record that a valid one follows is an [`Error::Corrupt`] naming the file and
//!   the byte offset, never skipped;
//! - a record cut short or garbled at the very end of the newest segment (a crash while
//!   it was written, so it was never durable) is discarded and the file cut back to the
//!   last whole record; open syncs what it replayed, so a record a dead process had
//!   written is durable before anything is built on it;
//! - after a failed write or sync the log refuses every call (the kernel may have
//!   dropped the dirty pages): reopen it to find out what is on disk;
//! - one process holds a log at a time (the lock file `{name}.lock`). [`Wal::lock`]
//!   takes it alone, so that a caller reads what the log guards (a snapshot the log
//!   continues) only once no other process can change it, then opens the log under it
//!   ([`Wal::open_locked`]).
//!
//! Segment `{name}.{first seq, 20 digits}.wal`: a [`frame`] header (magic `MOSWAL01`,
//! version 1, body: the first seq, u64), then the records: payload length (u32),
//! crc32 of the length, seq and payload (u32), seq (u64), the payload. A new segment is
//! started by [`Wal::rotate`] (and by an append once the current one exceeds
//! [`WalOptions::segment_bytes`]); [`Wal::drop_through`] deletes segments a snapshot
//! covers.

use std::ops::Range;

use crate::directory::{FileSystem, FsDirectory, LockGuard};
use crate::error::{Error, Result};
use crate::frame;

/// The largest payload a record may have.
pub const MAX_RECORD: usize = 16 << 20;

const MAGIC: &[u8; 8] = b"MOSWAL01";
const VERSION: u32 = 1;
/// Bytes of a segment's header.
const HEADER_LEN: usize = frame::HEADER_LEN + 8 + frame::TRAILER_LEN;
/// Bytes of a record before its payload.
const RECORD_HEADER: usize = 16;
/// Appends are handed to the operating system once this many bytes are buffered.
const FLUSH_BYTES: usize = 1 << 20;

/// Settings of a [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// An append that would take the current segment past this many bytes starts a new
    /// one (a segment holds at least one record, whatever its size).
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    /// 64 MiB segments.
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Seqs of the records replayed (empty when the log held none).
    pub seqs: Range<u64>,
    /// Bytes of torn tail discarded from the newest segment.
    pub discarded_bytes: u64,
}

/// Exclusive ownership of log `name` in one directory (its lock file), held from
/// [`Wal::lock`] until the [`Wal`] opened under it is dropped.
pub struct WalLock {
    name: String,
    dir: std::path::PathBuf,
    _guard: Box<dyn LockGuard>,
}

impl WalLock {
    /// The log's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for WalLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalLock")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// An open write-ahead log (see the module documentation).
pub struct Wal<F: FileSystem> {
    dir: FsDirectory<F>,
    name: String,
    /// First seq of each segment, ascending; the last is being appended to.
    segments: Vec<u64>,
    file: F::Writing,
    segment_len: u64,
    next_seq: u64,
    written_seq: u64,
    durable_seq: u64,
    buf: Vec<u8>,
    failed: bool,
    options: WalOptions,
    _lock: WalLock,
}

impl<F: FileSystem> std::fmt::Debug for Wal<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir.fs().describe())
            .field("name", &self.name)
            .field("segments", &self.segments)
            .field("next_seq", &self.next_seq)
            .field("durable_seq", &self.durable_seq)
            .finish_non_exhaustive()
    }
}

fn segment_name(name: &str, first_seq: u64) -> String {
    format!("{name}.{first_seq:020}.wal")
}

/// The first seq a file name of log `name` carries, if it is one of its segments.
fn parse_segment(name: &str, file: &str) -> Option<u64> {
    let digits = file
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn record_crc(len: &[u8], seq_and_payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(seq_and_payload);
    h.finalize()
}

/// The record at `at` of `bytes`, if it is whole and its checksum holds: its seq and
/// payload.
fn record_at(bytes: &[u8], at: usize) -> Option<(u64, &[u8])> {
    let rest = bytes.get(at..)?;
    let head = rest.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let body = rest.get(8..RECORD_HEADER + len)?;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if record_crc(&head[0..4], body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(head[8..16].try_into().ok()?);
    Some((seq, &body[8..]))
}

/// Whether a valid record with a seq at or after `expected` starts anywhere after
/// `from`: then the damage at `from` is inside the log, not a torn tail.
fn valid_record_after(bytes: &[u8], from: usize, expected: u64) -> Option<usize> {
    let plausible = expected..expected.saturating_add(bytes.len() as u64);
    (from..bytes.len().saturating_sub(RECORD_HEADER - 1)).find(|&at| {
        let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or([0; 8]));
        plausible.contains(&seq) && record_at(bytes, at).is_some()
    })
}

/// How a segment's scan ended.
struct Scanned {
    next_seq: u64,
    /// Length of the header and whole records; the rest is a torn tail.
    valid_len: usize,
    /// The header itself is torn: the segment's creation was interrupted.
    torn_header: bool,
}

impl<F: FileSystem + Clone> Wal<F> {
    /// Opens log `name` in `dir` (creating it, first seq `start_seq` ≥ 1, if it has no
    /// segment) and passes every record it holds to `visit`, in seq order; an error from
    /// `visit` ends the open with that error. A torn tail is cut off (see the module).
    /// [`Wal::lock`] then [`Wal::open_locked`].
    pub fn open<E: From<Error>>(
        dir: &FsDirectory<F>,
        name: &str,
        start_seq: u64,
        options: WalOptions,
        visit: impl FnMut(u64, &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(Self, Recovered), E> {
        let lock = Self::lock(dir, name)?;
        Self::open_locked(dir, lock, start_seq, options, visit)
    }

    /// Takes log `name`'s lock in `dir`, or fails at once with [`Error::Locked`] while
    /// another holder (this process or another) has it.
    pub fn lock(dir: &FsDirectory<F>, name: &str) -> Result<WalLock> {
        check_name(name)?;
        let guard = dir.fs().try_lock(&format!("{name}.lock"))?;
        Ok(WalLock {
            name: name.to_string(),
            dir: dir.fs().describe(),
            _guard: guard,
        })
    }

    /// Opens the log `lock` holds (taken by [`Wal::lock`] on the same directory) as
    /// [`Wal::open`] does.
    pub fn open_locked<E: From<Error>>(
        dir: &FsDirectory<F>,
        lock: WalLock,
        start_seq: u64,
        options: WalOptions,
        mut visit: impl FnMut(u64, &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(Self, Recovered), E> {
        if lock.dir != dir.fs().describe() {
            return Err(Error::Invalid(format!(
                "the lock of log {:?} was taken in {}, not in {}",
                lock.name,
                lock.dir.display(),
                dir.fs().describe().display()
            ))
            .into());
        }
        if start_seq == 0 {
            return Err(Error::Invalid("a log's first seq must be at least 1".into()).into());
        }
        let name = lock.name.clone();
        let name = name.as_str();
        let mut segments: Vec<u64> = list(dir, name)?;
        let first = segments.first().copied().unwrap_or(start_seq);
        let mut next_seq = first;
        let mut last_scan = None;
        for (i, &seg) in segments.iter().enumerate() {
            let file = segment_name(name, seg);
            if seg != next_seq {
                return Err(Error::corrupt(
                    file,
                    format!("starts at seq {seg}, but the segment before ends at {next_seq}"),
                )
                .into());
            }
            let bytes = dir.fs().read(&file)?;
            let last = i + 1 == segments.len();
            let scan = scan(&file, bytes.as_slice(), seg, last, &mut visit)?;
            next_seq = scan.next_seq;
            if last {
                last_scan = Some((scan, bytes.as_slice().len()));
            }
        } // every mapping is dropped here, before anything is cut
        let fs = dir.fs();
        let seg = *segments.last().unwrap_or(&start_seq);
        let file_name = segment_name(name, seg);
        let io = |e| Error::io(fs.describe().join(&file_name), e);
        let (file, segment_len, discarded) = match last_scan {
            Some((scan, len)) if !scan.torn_header => {
                let mut file = fs.open_append(&file_name).map_err(io)?;
                if scan.valid_len < len {
                    fs.truncate(&mut file, scan.valid_len as u64).map_err(io)?;
                }
                // what was replayed may have been written and not synced by a process
                // that died: make it durable before anything is built on it
                fs.sync_file(&file).map_err(io)?;
                let discarded = (len - scan.valid_len) as u64;
                (file, scan.valid_len as u64, discarded)
            }
            other => {
                let discarded = other.as_ref().map_or(0, |(_, len)| *len as u64);
                if other.is_some() {
                    fs.remove(&file_name).map_err(io)?;
                } else {
                    segments.push(seg);
                }
                (create_segment(fs, name, seg)?, HEADER_LEN as u64, discarded)
            }
        };
        let wal = Wal {
            dir: dir.clone(),
            name: name.to_string(),
            segments,
            file,
            segment_len,
            next_seq,
            written_seq: next_seq - 1,
            durable_seq: next_seq - 1,
            buf: Vec::new(),
            failed: false,
            options,
            _lock: lock,
        };
        let recovered = Recovered {
            seqs: first..next_seq,
            discarded_bytes: discarded,
        };
        Ok((wal, recovered))
    }

    /// Buffers a record and returns its seq: written by the next [`flush`](Wal::flush),
    /// durable after the next [`sync`](Wal::sync).
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        self.check_usable()?;
        if payload.len() > MAX_RECORD {
            return Err(Error::Invalid(format!(
                "a log record of {} bytes; at most {MAX_RECORD} fit",
                payload.len()
            )));
        }
        let seq = self.next_seq;
        let next = seq
            .checked_add(1)
            .ok_or_else(|| Error::Invalid("log seqs exhausted".into()))?;
        let size = (RECORD_HEADER + payload.len()) as u64;
        let in_segment = self.segment_len + self.buf.len() as u64;
        if in_segment > HEADER_LEN as u64 && in_segment + size > self.options.segment_bytes {
            self.rotate()?;
        }
        let len = (payload.len() as u32).to_le_bytes();
        let start = self.buf.len();
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(payload);
        let crc = record_crc(&len, &self.buf[start + 8..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.next_seq = next;
        if self.buf.len() >= FLUSH_BYTES {
            self.write_pending()?;
        }
        Ok(seq)
    }

    /// Hands buffered records to the operating system (they survive the process dying)
    /// and returns the highest written seq.
    pub fn flush(&mut self) -> Result<u64> {
        self.check_usable()?;
        self.write_pending()?;
        Ok(self.written_seq)
    }

    /// Writes buffered records and makes every record durable (`fdatasync`); returns the
    /// highest durable seq (`first seq - 1` while the log is empty).
    pub fn sync(&mut self) -> Result<u64> {
        self.flush()?;
        if self.durable_seq < self.written_seq {
            if let Err(e) = self.dir.fs().sync_file(&self.file) {
                return Err(self.fail(e));
            }
            self.durable_seq = self.written_seq;
        }
        Ok(self.durable_seq)
    }

    /// Makes every record durable and starts a new segment at the next seq (nothing
    /// happens while the current segment holds no record), so that a snapshot taken now
    /// lets [`drop_through`](Wal::drop_through) delete everything before it.
    pub fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        if self.segments.last() == Some(&self.next_seq) {
            return Ok(());
        }
        let file = match create_segment(self.dir.fs(), &self.name, self.next_seq) {
            Ok(f) => f,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        self.file = file;
        self.segment_len = HEADER_LEN as u64;
        self.segments.push(self.next_seq);
        Ok(())
    }

    /// Deletes the segments whose every record has a seq up to `seq` (never the one being
    /// appended to) and syncs the directory; returns how many went.
    pub fn drop_through(&mut self, seq: u64) -> Result<usize> {
        self.check_usable()?;
        let droppable = self
            .segments
            .windows(2)
            .take_while(|w| w[1] - 1 <= seq)
            .count();
        let fs = self.dir.fs();
        let mut removed = 0;
        let result = self.segments[..droppable].iter().try_for_each(|&first| {
            let file = segment_name(&self.name, first);
            fs.remove(&file)
                .map_err(|e| Error::io(fs.describe().join(&file), e))?;
            removed += 1;
            Ok(())
        });
        self.segments.drain(..removed);
        result?;
        if removed > 0 {
            fs.sync_dir().map_err(|e| Error::io(fs.describe(), e))?;
        }
        Ok(removed)
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest durable seq.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The highest seq handed to the operating system.
    pub fn written_seq(&self) -> u64 {
        self.written_seq
    }

    /// The seq of the oldest record the log keeps.
    pub fn first_seq(&self) -> u64 {
        self.segments.first().copied().unwrap_or(self.next_seq)
    }

    /// Segment files the log has.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// An error if a write or sync failed: the log then refuses every call (the kernel
    /// may have dropped the dirty pages) until it is reopened.
    pub fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::io(
                self.dir.fs().describe().join(&self.name),
                std::io::Error::other("an earlier write or sync of this log failed; reopen it"),
            ));
        }
        Ok(())
    }

    fn fail(&mut self, e: std::io::Error) -> Error {
        self.failed = true;
        let seg = self.segments.last().copied().unwrap_or(self.next_seq);
        Error::io(
            self.dir.fs().describe().join(segment_name(&self.name, seg)),
            e,
        )
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.dir.fs().write(&mut self.file, &self.buf) {
            return Err(self.fail(e));
        }
        self.segment_len += self.buf.len() as u64;
        self.buf.clear();
        self.written_seq = self.next_seq - 1;
        Ok(())
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "log name {name:?}: 1 to 64 of A-Z a-z 0-9 - _"
        )))
    }
}

/// The first seqs of log `name`'s segments in `dir`, ascending.
fn list<F: FileSystem>(dir: &FsDirectory<F>, name: &str) -> Result<Vec<u64>> {
    let fs = dir.fs();
    let names = fs.list().map_err(|e| Error::io(fs.describe(), e))?;
    let mut segs: Vec<u64> = names
        .iter()
        .filter_map(|f| parse_segment(name, f))
        .collect();
    segs.sort_unstable();
    Ok(segs)
}

/// Creates segment `first_seq` with its header; its directory entry is durable.
fn create_segment<F: FileSystem>(fs: &F, name: &str, first_seq: u64) -> Result<F::Writing> {
    let file = segment_name(name, first_seq);
    let io = |e| Error::io(fs.describe().join(&file), e);
    let mut w = fs.create_locked(&file).map_err(io)?;
    fs.write(
        &mut w,
        &frame::encode(MAGIC, VERSION, &first_seq.to_le_bytes()),
    )
    .map_err(io)?;
    // the entry is durable before any record in it is; the header needs no sync of its
    // own: the sync that makes the first record durable covers it, and a header lost
    // before then reads as a segment nothing was acknowledged in
    fs.sync_dir().map_err(io)?;
    Ok(w)
}

/// Reads segment `file` (first seq `first`), passing each record to `visit`.
fn scan<E: From<Error>>(
    file: &str,
    bytes: &[u8],
    first: u64,
    last: bool,
    visit: &mut impl FnMut(u64, &[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<Scanned, E> {
    let header = bytes.get(..HEADER_LEN.min(bytes.len())).unwrap_or(&[]);
    let body = match frame::decode(file, header, MAGIC, VERSION..=VERSION) {
        Ok((_, body)) if bytes.len() >= HEADER_LEN => body,
        Err(_) | Ok(_) if last && bytes.len() <= HEADER_LEN => {
            // created, then the crash came before its header was durable: nothing in it
            // was ever acknowledged
            return Ok(Scanned {
                next_seq: first,
                valid_len: 0,
                torn_header: true,
            });
        }
        Ok(_) => return Err(Error::corrupt(file, "segment header cut short").into()),
        Err(e) => return Err(e.into()),
    };
    let in_header = u64::from_le_bytes(body.try_into().unwrap_or([0; 8]));
    if in_header != first {
        return Err(Error::corrupt(
            file,
            format!("header says first seq {in_header}, the name {first}"),
        )
        .into());
    }
    let mut at = HEADER_LEN;
    let mut seq = first;
    while at < bytes.len() {
        let Some((found, payload)) = record_at(bytes, at) else {
            let damaged = format!("at byte {at}: record cut short or damaged");
            if !last {
                return Err(
                    Error::corrupt(file, format!("{damaged}, not in the newest segment")).into(),
                );
            }
            if let Some(next) = valid_record_after(bytes, at + 1, seq) {
                return Err(Error::corrupt(
                    file,
                    format!("{damaged}, but a valid record follows at byte {next}"),
                )
                .into());
            }
            break; // the torn tail of the last write
        };
        if found != seq {
            return Err(Error::corrupt(
                file,
                format!("at byte {at}: record seq {found}, expected {seq}"),
            )
            .into());
        }
        visit(seq, payload)?;
        seq += 1;
        at += RECORD_HEADER + payload.len();
    }
    Ok(Scanned {
        next_seq: seq,
        valid_len: at.min(bytes.len()),
        torn_header: false,
    })
}
