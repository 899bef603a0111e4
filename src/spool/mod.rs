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
//! <dir>/body/<name>       the rest of a large message's content, named by its record
//! <dir>/quarantine/       corrupt bytes cut out during recovery
//! <dir>/ctl/              requests from `smarthost queue` to the running relay
//! ```

pub mod codec;
pub mod ctl;
mod index;
mod journal;
mod recovery;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tracing::info;

use crate::message::{Envelope, Message, QueueId, SpooledBody};
use codec::{BodyFile, Record};
pub use codec::{DeliveryState, RcptState};
use index::{Index, IndexOp};
use journal::{Committer, Deferred, Job};
use recovery::recover;

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
    /// The rest of its content, for a large message.
    pub body: Option<SpooledBody>,
}

impl Entry {
    /// The size of its whole content.
    pub fn size(&self) -> u64 {
        u64::from(self.location.len) + self.body.as_ref().map_or(0, |b| b.len)
    }
}

/// The durable queue.
pub struct Spool {
    dir: PathBuf,
    body_dir: PathBuf,
    index: Arc<Mutex<Index>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Removals of finished messages, written with the committer's next batch.
    deferred: Arc<Mutex<Deferred>>,
    /// Joined on drop, so what the spool took is written before its lock is released.
    committer: Option<std::thread::JoinHandle<()>>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    _lock: File,
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Closing the channel ends the committer once it has written what it holds.
        drop(self.jobs.lock().map(|mut jobs| jobs.take()));
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spool({})", self.dir.display())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016x}.log"))
}

/// Where the body files are.
fn body_dir(dir: &Path) -> PathBuf {
    dir.join("body")
}

/// A body file's name, as its record keeps it.
fn body_name(body: &SpooledBody) -> &str {
    body.path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// Body files not named by any record and untouched this long belong to no message
/// (a session cut off while it sent content, or a crash before the record was written).
const ORPHAN_BODY_AGE: Duration = Duration::from_secs(15 * 60);

fn remove_body(body: &SpooledBody) {
    match fs::remove_file(&body.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %body.path.display(), error = %e, "cannot remove the body file of a finished message; it is removed at the next start")
        }
    }
}

fn encoded(record: &Record<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    codec::encode(record, &mut bytes);
    bytes
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Open (creating if needed) the spool in `dir`: take the lock, recover every
    /// segment, start the committer.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::create_dir_all(dir.join("ctl")).map_err(io_err(dir))?;
        fs::create_dir_all(body_dir(dir)).map_err(io_err(dir))?;
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
        let deferred = Arc::new(Mutex::new(Deferred::default()));
        let committer = Committer::start(dir, next_seq, index.clone(), deferred.clone())?;
        let committer = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(io_err(dir))?;
        let spool = Spool {
            dir: dir.to_owned(),
            body_dir: body_dir(dir),
            index,
            jobs: Mutex::new(Some(tx)),
            deferred,
            committer: Some(committer),
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

    /// Where the rest of a large message's content is written while it is received: a
    /// file there becomes a message's [`SpooledBody`] when it is put in the spool.
    pub fn body_dir(&self) -> &Path {
        &self.body_dir
    }

    /// Messages in the queue.
    pub fn len(&self) -> usize {
        self.index.lock().expect("spool index").messages.len()
    }

    /// The ids of every queued message, oldest first.
    pub fn ids(&self) -> Vec<QueueId> {
        let mut ids: Vec<QueueId> = self
            .index
            .lock()
            .expect("spool index")
            .messages
            .keys()
            .copied()
            .collect();
        ids.sort();
        ids
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

    /// Messages per `key` of their entry (entries where `key` gives `None` are left
    /// out), and when the oldest message was accepted: one pass under the index lock,
    /// nothing copied.
    pub fn tally<K: Ord>(
        &self,
        key: impl Fn(&Entry) -> Option<K>,
    ) -> (std::collections::BTreeMap<K, usize>, Option<SystemTime>) {
        let index = self.index.lock().expect("spool index");
        let mut counts = std::collections::BTreeMap::new();
        let mut oldest: Option<SystemTime> = None;
        for entry in index.messages.values() {
            oldest = Some(oldest.map_or(entry.received_at, |o| o.min(entry.received_at)));
            if let Some(k) = key(entry) {
                *counts.entry(k).or_insert(0) += 1;
            }
        }
        (counts, oldest)
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When each message is due (its recorded next attempt), without copying the
    /// entries: what the scheduler needs at start, however deep the queue.
    pub fn due_times(&self) -> Vec<(QueueId, SystemTime)> {
        let index = self.index.lock().expect("spool index");
        index
            .messages
            .iter()
            .map(|(id, e)| (*id, UNIX_EPOCH + Duration::from_secs(e.state.next_attempt)))
            .collect()
    }

    /// The body file of a queued message, if it has one: what a removal must delete,
    /// looked up without copying the rest of the entry (every finished message asks).
    fn body_of(&self, id: QueueId) -> Option<SpooledBody> {
        self.index
            .lock()
            .expect("spool index")
            .messages
            .get(&id)
            .and_then(|e| e.body.clone())
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

    /// Append one record; with `sync`, return only once it is on stable storage, else
    /// once it is written (it becomes durable with the next commit).
    async fn append(&self, bytes: Vec<u8>, op: IndexOp, sync: bool) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        {
            let jobs = self.jobs.lock().expect("spool jobs");
            let tx = jobs.as_ref().ok_or(SpoolError::Stopped)?;
            tx.send(Job {
                bytes,
                sync,
                op,
                done,
            })
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
        let body = message.body.as_ref().map(|b| BodyFile {
            name: body_name(b),
            len: b.len,
            eight_bit: b.eight_bit,
        });
        debug_assert!(
            message
                .body
                .as_ref()
                .is_none_or(|b| b.path.parent() == Some(self.body_dir())),
            "a body file outside the spool"
        );
        let content_at = codec::encode_message(
            message.id,
            message.received_at,
            &message.envelope,
            &state,
            (&message.content, body.as_ref()),
            &mut bytes,
        );
        let op = IndexOp::Insert {
            id: message.id,
            envelope: message.envelope.clone(),
            received_at: message.received_at,
            state,
            content_at,
            len: message.content.len() as u32,
            body: message.body.clone(),
        };
        self.append(bytes, op, true).await
    }

    /// Record a new delivery state durably.
    pub async fn update(&self, id: QueueId, state: DeliveryState) -> Result<(), SpoolError> {
        self.append(
            encoded(&Record::Update {
                id,
                state: state.clone(),
            }),
            IndexOp::Update { id, state },
            true,
        )
        .await
    }

    /// Remove a message for good (deleted by the operator): returns once the removal
    /// is on stable storage.
    pub async fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        let body = self.body_of(id);
        self.append(
            encoded(&Record::Remove { id }),
            IndexOp::Remove { id },
            true,
        )
        .await?;
        if let Some(body) = body {
            remove_body(&body);
        }
        Ok(())
    }

    /// Remove a message whose every recipient is settled (delivered, or failed with its
    /// bounce queued). Returns at once: the record is written with the committer's next
    /// batch and becomes durable with the next commit (at the latest when the spool is
    /// dropped or [`Spool::flush`]ed). A crash before that delivers the message once
    /// more, which at-least-once delivery allows; in return a delivery neither waits for
    /// the disk nor wakes the committer once per message.
    ///
    /// A large message's removal waits for its `fdatasync`: its body file is deleted
    /// next, and a record still naming a deleted file after a crash would be a message
    /// that cannot be sent.
    pub async fn finish(&self, id: QueueId) -> Result<(), SpoolError> {
        let Some(body) = self.body_of(id) else {
            return self.defer_removal(id);
        };
        self.append(
            encoded(&Record::Remove { id }),
            IndexOp::Remove { id },
            true,
        )
        .await?;
        remove_body(&body);
        Ok(())
    }

    /// Take `id` out of the index now and leave its removal record to the committer's
    /// next batch; the committer is woken only by the first record of a batch.
    fn defer_removal(&self, id: QueueId) -> Result<(), SpoolError> {
        let jobs = self.jobs.lock().expect("spool jobs");
        let tx = jobs.as_ref().ok_or(SpoolError::Stopped)?;
        self.index.lock().expect("spool index").remove(id);
        let mut deferred = self.deferred.lock().expect("spool deferred records");
        codec::encode(&Record::Remove { id }, &mut deferred.bytes);
        if !deferred.wake_sent {
            deferred.wake_sent = true;
            tx.send(Job::wake()).map_err(|_| SpoolError::Stopped)?;
        }
        Ok(())
    }

    /// Make every record taken so far durable, deferred removals included.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.append(Vec::new(), IndexOp::Flush, true).await
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
            body: entry.body,
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

    /// Delete body files that no message names and that nobody has written to for
    /// [`ORPHAN_BODY_AGE`] (content of a session that ended before its message was
    /// accepted). Blocking: call it off the reactor. Returns how many were deleted.
    pub fn sweep_bodies(&self) -> usize {
        let referenced = recovery::referenced_bodies(&self.index.lock().expect("spool index"));
        recovery::sweep_bodies(&self.dir, referenced, ORPHAN_BODY_AGE)
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
                route: None,
            },
            content: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
            body: None,
            received_at: SystemTime::now(),
        }
    }

    /// A large message: its head in the record, its body in a file of the spool.
    fn large(spool: &Spool, n: u8) -> (Message, Vec<u8>) {
        let mut m = message(n);
        m.content = format!("Subject: {n}\r\n\r\n").into_bytes();
        let body = format!("large body {n}\r\n").repeat(1000).into_bytes();
        let path = spool
            .body_dir()
            .join(format!("{:016x}", QueueId::generate().as_u64()));
        fs::write(&path, &body).unwrap();
        m.body = Some(SpooledBody {
            path,
            len: body.len() as u64,
            eight_bit: false,
        });
        (m, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_messages_keep_their_body_file_until_they_are_finished() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let (a, a_body) = large(&spool, 1);
        let (b, _) = large(&spool, 2);
        spool.put(&a).await.unwrap();
        spool.put(&b).await.unwrap();
        let orphan = spool.body_dir().join("00000000000000ff");
        fs::write(&orphan, b"content of a session that ended").unwrap();
        File::options()
            .write(true)
            .open(&orphan)
            .unwrap()
            .set_modified(SystemTime::now() - ORPHAN_BODY_AGE * 2)
            .unwrap();
        let receiving = spool.body_dir().join("0000000000000100");
        fs::write(&receiving, b"content of a session still sending").unwrap();
        drop(spool);

        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        assert!(
            !orphan.exists(),
            "a file no message names is removed at start"
        );
        let loaded = spool.load(a.id).unwrap();
        assert_eq!(loaded.content, a.content);
        assert_eq!(loaded.body, a.body);
        assert_eq!(spool.entry(a.id).unwrap().size(), a.size());
        assert_eq!(fs::read(&loaded.body.unwrap().path).unwrap(), a_body);

        // Copied forward by compaction, it still names its file.
        spool.maintain(Duration::ZERO).await.unwrap();
        assert_eq!(spool.load(a.id).unwrap().body, a.body);

        spool.finish(a.id).await.unwrap();
        assert!(!a.body.as_ref().unwrap().path.exists());
        spool.remove(b.id).await.unwrap();
        assert!(!b.body.as_ref().unwrap().path.exists());
        drop(spool);
        assert!(Spool::open(dir.path()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn finished_messages_are_removed_with_one_commit_and_stay_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (kept, done): (Vec<_>, Vec<_>) = (0..40u8)
            .map(message)
            .partition(|m| m.content.ends_with(b"0\r\n"));
        for m in kept.iter().chain(&done) {
            spool.put(m).await.unwrap();
        }
        let segment = segment_path(dir.path(), 1);
        let written = fs::metadata(&segment).unwrap().len();
        for m in &done {
            spool.finish(m.id).await.unwrap();
            assert!(spool.entry(m.id).is_none(), "out of the queue at once");
        }
        // The removals wait for the committer's next batch (here: the flush).
        spool.flush().await.unwrap();
        let removals = fs::metadata(&segment).unwrap().len() - written;
        assert_eq!(
            removals,
            done.len() as u64 * encoded(&Record::Remove { id: done[0].id }).len() as u64
        );
        // A removal not yet flushed is written before the spool lets go of its lock.
        let last = kept[0].id;
        spool.finish(last).await.unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), kept.len() - 1);
        assert!(
            done.iter()
                .chain([&kept[0]])
                .all(|m| spool.entry(m.id).is_none())
        );
    }

    #[tokio::test]
    async fn a_message_whose_body_file_is_lost_is_dropped_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (a, _) = large(&spool, 1);
        let b = message(2);
        spool.put(&a).await.unwrap();
        spool.put(&b).await.unwrap();
        drop(spool);
        fs::remove_file(&a.body.as_ref().unwrap().path).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.entry(a.id).is_none());
        assert!(spool.entry(b.id).is_some());
    }

    #[tokio::test]
    async fn recent_unnamed_body_files_are_left_to_their_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let receiving = spool.body_dir().join("0000000000000001");
        fs::write(&receiving, b"still arriving").unwrap();
        assert_eq!(spool.sweep_bodies(), 0);
        assert!(receiving.exists());
        assert_eq!(
            recovery::sweep_bodies(dir.path(), Default::default(), Duration::ZERO),
            1
        );
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
