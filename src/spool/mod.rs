//! Stage 2: the durable spool, the only owner of the disk layout.
//!
//! Accepted messages are appended to a journal of segment files (`seg-<seq>.log`) by
//! one committer thread. It takes every append that is waiting, writes them with one
//! `write`, and makes them durable with one `fdatasync` before anyone is told: that is
//! group commit, so concurrent sessions share fsyncs instead of paying one each. Only
//! then does the client hear `250`.
//!
//! Delivery state changes (attempts, next retry, per-recipient results) and removals are
//! appended the same way. On start the segments are replayed into an in-memory index of
//! small entries (no message content), torn tails are cut, corrupt regions are moved to
//! `quarantine/` with a log line, and delivery resumes. Segments whose messages are all
//! finished are deleted; long-waiting messages in old segments are copied forward so
//! old segments do not pile up. A lock file keeps two relays off one spool.
//!
//! ```text
//! <dir>/LOCK              held while a relay runs
//! <dir>/seg-<seq>.log     journal segments (see codec.rs for the record format)
//! <dir>/quarantine/       corrupt bytes cut out during recovery
//! <dir>/ctl/              requests from `smarthost queue` to the running relay
//! ```

pub mod codec;
pub mod ctl;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::message::{Envelope, Message, QueueId};
use codec::{DecodeError, Record};
pub use codec::{DeliveryState, RcptState};

/// A segment is closed and a new one started past this size or age.
const SEGMENT_MAX_BYTES: u64 = 32 * 1024 * 1024;
const SEGMENT_MAX_AGE: Duration = Duration::from_secs(60);
/// One committed batch holds at most this much.
const BATCH_MAX_BYTES: usize = 8 * 1024 * 1024;

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the lock.
    #[error(
        "spool {dir} is in use by another smarthost (lock file {dir}/LOCK); two relays must not share one spool"
    )]
    Locked {
        /// The spool directory.
        dir: String,
    },
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The committer thread is gone (after a fatal write error).
    #[error(
        "the spool writer has stopped (see the spool write error logged before this); fix the disk problem and restart smarthost"
    )]
    Stopped,
    /// No such message.
    #[error("no message {0} in the queue")]
    Unknown(QueueId),
}

impl SpoolError {
    /// Whether the file system is out of space or quota: the condition for which SMTP
    /// has its own reply (`452 4.3.1`), and which clears by itself once space returns.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a message's content lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the content in the segment.
    pub offset: u64,
    /// Content length.
    pub len: u32,
}

/// What the spool knows about a queued message (no content).
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its envelope.
    pub envelope: Envelope,
    /// When it was accepted.
    pub received_at: SystemTime,
    /// Its delivery state.
    pub state: DeliveryState,
    /// Where its content is.
    pub location: Location,
}

#[derive(Debug, Default)]
struct SegmentInfo {
    /// Messages whose current content record is in this segment.
    live: usize,
    /// Still being appended to.
    active: bool,
    /// When it stopped being active.
    closed_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Index {
    messages: HashMap<QueueId, Entry>,
    segments: BTreeMap<u64, SegmentInfo>,
}

impl Index {
    fn insert(&mut self, id: QueueId, entry: Entry) {
        self.segments
            .entry(entry.location.segment)
            .or_default()
            .live += 1;
        if let Some(old) = self.messages.insert(id, entry) {
            self.release(old.location.segment);
        }
    }

    fn remove(&mut self, id: QueueId) {
        if let Some(old) = self.messages.remove(&id) {
            self.release(old.location.segment);
        }
    }

    fn release(&mut self, segment: u64) {
        if let Some(info) = self.segments.get_mut(&segment) {
            info.live = info.live.saturating_sub(1);
        }
    }
}

/// How the index changes once an append is durable.
enum IndexOp {
    Insert {
        id: QueueId,
        envelope: Envelope,
        received_at: SystemTime,
        state: DeliveryState,
        content_at: usize,
        len: u32,
    },
    Update {
        id: QueueId,
        state: DeliveryState,
    },
    Remove {
        id: QueueId,
    },
}

struct Job {
    bytes: Vec<u8>,
    op: IndexOp,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// The durable queue.
pub struct Spool {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spool({})", self.dir.display())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016x}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let name = entry.map_err(io_err(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".log"))
            && let Ok(seq) = u64::from_str_radix(hex, 16)
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn encoded(record: &Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    codec::encode(record, &mut bytes);
    bytes
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replay one segment's bytes into `index`. Returns the length of the valid prefix
/// and the corrupt regions found (offset, bytes).
fn replay(seq: u64, bytes: &[u8], index: &mut Index) -> (usize, Vec<(usize, Vec<u8>)>) {
    let mut pos = 0;
    let mut valid_end = 0;
    let mut corrupt = Vec::new();
    while pos < bytes.len() {
        match codec::decode(&bytes[pos..]) {
            Ok((record, len)) => {
                apply(seq, pos, len, record, index);
                pos += len;
                valid_end = pos;
            }
            Err(e) => {
                // Skip to the next record marker that starts a valid record.
                let next = (pos + 1..bytes.len().saturating_sub(3))
                    .find(|&i| {
                        bytes[i..].starts_with(&codec::MAGIC) && codec::decode(&bytes[i..]).is_ok()
                    })
                    .unwrap_or(bytes.len());
                // A torn write is always the last thing in its segment (after a failed
                // write the committer moves to a new one). An "incomplete" record with
                // a valid one after it has a corrupt length: quarantine it, do not cut
                // the acknowledged records behind it.
                if e == DecodeError::Incomplete && next == bytes.len() {
                    break;
                }
                corrupt.push((pos, bytes[pos..next].to_vec()));
                pos = next;
                valid_end = pos;
            }
        }
    }
    (valid_end, corrupt)
}

fn apply(seq: u64, record_at: usize, record_len: usize, record: Record, index: &mut Index) {
    match record {
        Record::Message {
            id,
            received_at,
            envelope,
            state,
            content,
        } => {
            // The content is the last field of a message record.
            let offset = (record_at + record_len - content.len()) as u64;
            let location = Location {
                segment: seq,
                offset,
                len: content.len() as u32,
            };
            index.insert(
                id,
                Entry {
                    envelope,
                    received_at,
                    state,
                    location,
                },
            );
        }
        Record::Update { id, state } => {
            if let Some(entry) = index.messages.get_mut(&id) {
                entry.state = state;
            }
        }
        Record::Remove { id } => index.remove(id),
    }
}

impl Spool {
    /// Open (creating if needed) the spool in `dir`: take the lock, recover every
    /// segment, start the committer.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::create_dir_all(dir.join("ctl")).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    dir: dir.display().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let (index, last) = recover(dir, true)?;
        let next_seq = last.map_or(1, |s| s + 1);
        let index = Arc::new(Mutex::new(index));
        let (tx, rx) = mpsc::channel();
        let committer = Committer::start(dir, next_seq, index.clone())?;
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(io_err(dir))?;
        let spool = Spool {
            dir: dir.to_owned(),
            index,
            jobs: Mutex::new(Some(tx)),
            readers: Mutex::new(HashMap::new()),
            _lock: lock,
        };
        let count = spool.len();
        if count > 0 {
            info!(dir = %dir.display(), messages = count, "spool recovered");
        }
        Ok(spool)
    }

    /// Read the spool of a relay that may be running, without changing anything.
    pub fn inspect(dir: &Path) -> Result<Vec<(QueueId, Entry)>, SpoolError> {
        let (index, _) = recover(dir, false)?;
        let mut entries: Vec<_> = index.messages.into_iter().collect();
        entries.sort_by_key(|(id, _)| *id);
        Ok(entries)
    }

    /// Whether a relay holds the lock of the spool in `dir`.
    pub fn is_locked(dir: &Path) -> bool {
        match File::open(dir.join("LOCK")) {
            Ok(f) => matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Messages in the queue.
    pub fn len(&self) -> usize {
        self.index.lock().expect("spool index").messages.len()
    }

    /// When the oldest queued message was accepted.
    pub fn oldest(&self) -> Option<SystemTime> {
        self.index
            .lock()
            .expect("spool index")
            .messages
            .values()
            .map(|e| e.received_at)
            .min()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every entry (for the scheduler at start, and `queue list`).
    pub fn entries(&self) -> Vec<(QueueId, Entry)> {
        let index = self.index.lock().expect("spool index");
        let mut out: Vec<_> = index
            .messages
            .iter()
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// One entry.
    pub fn entry(&self, id: QueueId) -> Option<Entry> {
        self.index
            .lock()
            .expect("spool index")
            .messages
            .get(&id)
            .cloned()
    }

    async fn append(&self, bytes: Vec<u8>, op: IndexOp) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        {
            let jobs = self.jobs.lock().expect("spool jobs");
            let tx = jobs.as_ref().ok_or(SpoolError::Stopped)?;
            tx.send(Job { bytes, op, done })
                .map_err(|_| SpoolError::Stopped)?;
        }
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SpoolError::Io {
                path: self.dir.display().to_string(),
                source,
            }),
            Err(_) => Err(SpoolError::Stopped),
        }
    }

    /// Store a new message durably. When this returns `Ok`, the message survives a crash.
    pub async fn put(&self, message: &Message) -> Result<(), SpoolError> {
        let state = DeliveryState::new(message.envelope.recipients.len());
        self.put_with_state(message, state).await
    }

    /// Store a new message durably with a delivery state of its own (recipients already
    /// settled elsewhere, e.g. by a passthrough delivery).
    pub async fn put_with_state(
        &self,
        message: &Message,
        state: DeliveryState,
    ) -> Result<(), SpoolError> {
        let mut bytes = Vec::with_capacity(message.content.len() + 256);
        let content_at = codec::encode_message(
            message.id,
            message.received_at,
            &message.envelope,
            &state,
            &message.content,
            &mut bytes,
        );
        let op = IndexOp::Insert {
            id: message.id,
            envelope: message.envelope.clone(),
            received_at: message.received_at,
            state,
            content_at,
            len: message.content.len() as u32,
        };
        self.append(bytes, op).await
    }

    /// Record a new delivery state durably.
    pub async fn update(&self, id: QueueId, state: DeliveryState) -> Result<(), SpoolError> {
        self.append(
            encoded(&Record::Update {
                id,
                state: state.clone(),
            }),
            IndexOp::Update { id, state },
        )
        .await
    }

    /// Finish a message (delivered, bounced, or deleted by the operator).
    pub async fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        self.append(encoded(&Record::Remove { id }), IndexOp::Remove { id })
            .await
    }

    /// The whole message: envelope and content read back from its segment. Blocking:
    /// call it off the reactor.
    pub fn load(&self, id: QueueId) -> Result<Message, SpoolError> {
        let entry = self.entry(id).ok_or(SpoolError::Unknown(id))?;
        let file = self.reader(entry.location.segment)?;
        let mut content = vec![0; entry.location.len as usize];
        let path = segment_path(&self.dir, entry.location.segment);
        file.read_exact_at(&mut content, entry.location.offset)
            .map_err(io_err(&path))?;
        Ok(Message {
            id,
            envelope: entry.envelope,
            content,
            received_at: entry.received_at,
        })
    }

    fn reader(&self, segment: u64) -> Result<Arc<File>, SpoolError> {
        let mut readers = self.readers.lock().expect("spool readers");
        if let Some(f) = readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.dir, segment);
        let file = Arc::new(File::open(&path).map_err(io_err(&path))?);
        readers.insert(segment, file.clone());
        Ok(file)
    }

    /// Delete segments that hold no queued message any more, oldest first, and copy
    /// the messages of an old segment forward once it has been closed for `compact_after`,
    /// so it can go too. Returns how many segments were deleted.
    pub async fn maintain(self: &Arc<Self>, compact_after: Duration) -> Result<usize, SpoolError> {
        let mut deleted = 0;
        loop {
            let (seq, live, closed_at) = {
                let index = self.index.lock().expect("spool index");
                match index.segments.iter().next() {
                    Some((seq, info)) if !info.active => (*seq, info.live, info.closed_at),
                    _ => break,
                }
            };
            if live == 0 {
                let path = segment_path(&self.dir, seq);
                self.readers.lock().expect("spool readers").remove(&seq);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
                sync_dir(&self.dir).map_err(io_err(&self.dir))?;
                self.index
                    .lock()
                    .expect("spool index")
                    .segments
                    .remove(&seq);
                deleted += 1;
                continue;
            }
            if closed_at.is_some_and(|t| t.elapsed() >= compact_after) {
                let movers: Vec<(QueueId, DeliveryState)> = {
                    let index = self.index.lock().expect("spool index");
                    index
                        .messages
                        .iter()
                        .filter(|(_, e)| e.location.segment == seq)
                        .map(|(id, e)| (*id, e.state.clone()))
                        .collect()
                };
                for (id, state) in movers {
                    let this = self.clone();
                    let message = tokio::task::spawn_blocking(move || this.load(id))
                        .await
                        .map_err(|e| SpoolError::Io {
                            path: self.dir.display().to_string(),
                            source: std::io::Error::other(e),
                        })?;
                    match message {
                        Ok(message) => self.put_with_state(&message, state).await?,
                        Err(SpoolError::Unknown(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            break;
        }
        Ok(deleted)
    }
}

/// Read every segment into an index. With `repair`, cut torn tails and move corrupt
/// regions to `quarantine/` (only the lock holder may do that).
fn recover(dir: &Path, repair: bool) -> Result<(Index, Option<u64>), SpoolError> {
    let mut index = Index::default();
    let seqs = list_segments(dir)?;
    for &seq in &seqs {
        let path = segment_path(dir, seq);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !repair => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        index.segments.entry(seq).or_default().closed_at = Some(Instant::now());
        let (valid_end, corrupt) = replay(seq, &bytes, &mut index);
        if !repair {
            continue;
        }
        for (offset, region) in &corrupt {
            let qdir = dir.join("quarantine");
            fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
            let qpath = qdir.join(format!("seg-{seq:016x}-at-{offset}.bin"));
            fs::write(&qpath, region).map_err(io_err(&qpath))?;
            error!(segment = %path.display(), offset, bytes = region.len(), quarantined = %qpath.display(), "corrupt spool record skipped and quarantined");
        }
        if valid_end < bytes.len() {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(valid_end as u64)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
            warn!(segment = %path.display(), bytes = bytes.len() - valid_end, "cut a torn record at the end of a spool segment (a write interrupted by a crash, never acknowledged)");
        }
    }
    Ok((index, seqs.last().copied()))
}

/// The single writer of the journal.
struct Committer {
    dir: PathBuf,
    seq: u64,
    file: File,
    size: u64,
    opened: Instant,
    index: Arc<Mutex<Index>>,
}

impl Committer {
    fn start(dir: &Path, seq: u64, index: Arc<Mutex<Index>>) -> Result<Committer, SpoolError> {
        let (file, path) = Self::create(dir, seq)?;
        sync_dir(dir).map_err(io_err(&path))?;
        index
            .lock()
            .expect("spool index")
            .segments
            .entry(seq)
            .or_default()
            .active = true;
        Ok(Committer {
            dir: dir.to_owned(),
            seq,
            file,
            size: 0,
            opened: Instant::now(),
            index,
        })
    }

    fn create(dir: &Path, seq: u64) -> Result<(File, PathBuf), SpoolError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((file, path))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.seq + 1;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        let mut index = self.index.lock().expect("spool index");
        if let Some(info) = index.segments.get_mut(&self.seq) {
            info.active = false;
            info.closed_at = Some(Instant::now());
        }
        index.segments.entry(next).or_default().active = true;
        drop(index);
        self.seq = next;
        self.file = file;
        self.size = 0;
        self.opened = Instant::now();
        Ok(())
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        let mut needs_rotation = false;
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            let mut bytes = batch[0].bytes.len();
            while bytes < BATCH_MAX_BYTES {
                match jobs.try_recv() {
                    Ok(job) => {
                        bytes += job.bytes.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if needs_rotation
                || self.size >= SEGMENT_MAX_BYTES
                || (self.size > 0 && self.opened.elapsed() >= SEGMENT_MAX_AGE)
            {
                if let Err(e) = self.rotate() {
                    error!(error = %e, "cannot start a new spool segment");
                    for job in batch {
                        let _ = job
                            .done
                            .send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    }
                    continue;
                }
                needs_rotation = false;
            }
            let mut buf = Vec::with_capacity(bytes);
            let mut starts = Vec::with_capacity(batch.len());
            for job in &batch {
                starts.push(self.size + buf.len() as u64);
                buf.extend_from_slice(&job.bytes);
            }
            let result = self
                .file
                .write_all(&buf)
                .and_then(|()| self.file.sync_data());
            match result {
                Ok(()) => {
                    self.size += buf.len() as u64;
                    let mut index = self.index.lock().expect("spool index");
                    for (job, start) in batch.iter().zip(&starts) {
                        match &job.op {
                            IndexOp::Insert {
                                id,
                                envelope,
                                received_at,
                                state,
                                content_at,
                                len,
                            } => {
                                let location = Location {
                                    segment: self.seq,
                                    offset: start + *content_at as u64,
                                    len: *len,
                                };
                                index.insert(
                                    *id,
                                    Entry {
                                        envelope: envelope.clone(),
                                        received_at: *received_at,
                                        state: state.clone(),
                                        location,
                                    },
                                );
                            }
                            IndexOp::Update { id, state } => {
                                if let Some(entry) = index.messages.get_mut(id) {
                                    entry.state = state.clone();
                                }
                            }
                            IndexOp::Remove { id } => index.remove(*id),
                        }
                    }
                    drop(index);
                    for job in batch {
                        let _ = job.done.send(Ok(()));
                    }
                }
                Err(e) => {
                    // Cut what may have been written of this batch, so the segment ends
                    // on a whole record and can take the next batch; only if that fails
                    // does a fresh segment start (recovery would cut the torn tail).
                    // Rotating on every failure would leave an empty segment per batch
                    // while the disk stays full.
                    error!(error = %e, segment = self.seq, "spool write failed; nothing of this batch was acknowledged");
                    if self.file.set_len(self.size).is_err() {
                        needs_rotation = true;
                    }
                    for job in batch {
                        let _ = job
                            .done
                            .send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Address, ReversePath};

    fn message(n: u8) -> Message {
        Message {
            id: QueueId::generate(),
            envelope: Envelope {
                sender: ReversePath::Mailbox(Address::parse("a@example.com").unwrap()),
                recipients: vec![Address::parse("b@example.net").unwrap()],
                smtputf8: false,
                eight_bit: false,
            },
            content: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
            received_at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn messages_survive_a_restart_with_their_state() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (message(1), message(2), message(3));
        {
            let spool = Spool::open(dir.path()).unwrap();
            for m in [&a, &b, &c] {
                spool.put(m).await.unwrap();
            }
            let mut state = DeliveryState::new(1);
            state.attempts = 2;
            state.last_error = "451 later".into();
            spool.update(b.id, state).await.unwrap();
            spool.remove(c.id).await.unwrap();
        }
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.load(a.id).unwrap().content, a.content);
        assert_eq!(spool.entry(b.id).unwrap().state.attempts, 2);
        assert!(spool.entry(c.id).is_none());
    }

    #[tokio::test]
    async fn a_second_relay_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path()).unwrap();
        assert!(Spool::is_locked(dir.path()));
        let err = Spool::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another smarthost"), "{err}");
    }

    #[tokio::test]
    async fn torn_tails_are_cut_and_corrupt_records_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (message(1), message(2), message(3));
        {
            let spool = Spool::open(dir.path()).unwrap();
            for m in [&a, &b, &c] {
                spool.put(m).await.unwrap();
            }
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        // Corrupt b's record in the middle, and append half a record at the end.
        let b_at = bytes.windows(7).position(|w| w == b"body 2\r").unwrap();
        bytes[b_at] ^= 0xff;
        let mut torn = Vec::new();
        codec::encode(&Record::Remove { id: a.id }, &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() - 2]);
        fs::write(&seg, &bytes).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert!(
            spool.entry(a.id).is_some(),
            "the torn remove must not apply"
        );
        assert!(
            spool.entry(b.id).is_none(),
            "the corrupt record must not be used"
        );
        assert_eq!(
            spool.load(c.id).unwrap().content,
            c.content,
            "records after the damage are recovered"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            1
        );
        assert_eq!(
            fs::metadata(&seg).unwrap().len() as usize,
            bytes.len() - (torn.len() - 2)
        );
    }

    #[tokio::test]
    async fn a_corrupt_length_is_quarantined_not_taken_for_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (message(1), message(2), message(3));
        {
            let spool = Spool::open(dir.path()).unwrap();
            for m in [&a, &b, &c] {
                spool.put(m).await.unwrap();
            }
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let (_, a_len) = codec::decode(&bytes).unwrap();
        // b's length now reaches past the end of the file.
        bytes[a_len + 5..a_len + 9].copy_from_slice(&(1u32 << 29).to_le_bytes());
        fs::write(&seg, &bytes).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.entry(a.id).is_some());
        assert!(spool.entry(b.id).is_none());
        assert_eq!(
            spool.load(c.id).unwrap().content,
            c.content,
            "the records after the damage are not cut off"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            1
        );
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, bytes.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_segments_are_deleted_and_old_ones_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (message(1), message(2));
        {
            let spool = Spool::open(dir.path()).unwrap();
            spool.put(&a).await.unwrap();
            spool.put(&b).await.unwrap();
            spool.remove(a.id).await.unwrap();
        }
        // Reopening closes segment 1 and starts segment 2.
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        assert_eq!(
            spool.maintain(Duration::from_secs(3600)).await.unwrap(),
            0,
            "b still lives in segment 1"
        );
        spool.maintain(Duration::ZERO).await.unwrap();
        assert!(
            !segment_path(dir.path(), 1).exists(),
            "b was copied forward and segment 1 deleted"
        );
        assert_eq!(spool.load(b.id).unwrap().content, b.content);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 1);
        assert_eq!(spool.load(b.id).unwrap().content, b.content);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.put(&message(i as u8)).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(spool.len(), 200);
        assert_eq!(Spool::inspect(dir.path()).unwrap().len(), 200);
    }
}
