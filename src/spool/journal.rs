//! The journal's single writer: group commit. Every append waiting is written with one
//! `write` and made durable with one `fdatasync` before any of them is acknowledged;
//! segments rotate by size and age.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::error;

use super::index::{Index, IndexOp};
use super::{
    BATCH_MAX_BYTES, Entry, Location, SEGMENT_MAX_AGE, SEGMENT_MAX_BYTES, SpoolError, io_err,
    segment_path, sync_dir,
};

/// A lone record is copied next to the deferred records (one `write` instead of two)
/// only below this size: a large message's head is not copied once more.
const BATCH_COPY_MAX: usize = 64 * 1024;

pub(super) struct Job {
    pub(super) bytes: Vec<u8>,
    /// Whether the job is acknowledged only once its record is on stable storage.
    pub(super) sync: bool,
    pub(super) op: IndexOp,
    pub(super) done: oneshot::Sender<std::io::Result<()>>,
}

impl Job {
    /// No record of its own: it wakes the committer to write the deferred ones.
    pub(super) fn wake() -> Job {
        Job {
            bytes: Vec::new(),
            sync: false,
            op: IndexOp::Flush,
            done: oneshot::channel().0,
        }
    }
}

/// How long a commit waits for more records before its `fdatasync` when the previous
/// one was shared (several clients are sending). Each `fdatasync` costs several context
/// switches and device round trips; with 32 clients at 2,000 messages/s it was shared
/// by little more than one message, and waiting this long cut the committer's context
/// switches per message by a quarter. Those clients' `250` come that much later, which
/// is small next to the time a message takes anyway; a lone client sending one message
/// at a time never waits.
const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_micros(500);

/// How often deferred records that could not be written are tried again.
const DEFERRED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Records that wait for the committer's next batch instead of being sent one by one
/// (removals of finished messages): written after that batch's own records.
#[derive(Default)]
pub(super) struct Deferred {
    pub(super) bytes: Vec<u8>,
    /// Whether a job is on its way to wake the committer for these records.
    pub(super) wake_sent: bool,
}

/// The single writer of the journal.
pub(super) struct Committer {
    pub(super) dir: PathBuf,
    pub(super) seq: u64,
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) opened: Instant,
    pub(super) index: Arc<Mutex<Index>>,
    pub(super) deferred: Arc<Mutex<Deferred>>,
}

impl Committer {
    pub(super) fn start(
        dir: &Path,
        seq: u64,
        index: Arc<Mutex<Index>>,
        deferred: Arc<Mutex<Deferred>>,
    ) -> Result<Committer, SpoolError> {
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
            deferred,
        })
    }

    pub(super) fn create(dir: &Path, seq: u64) -> Result<(File, PathBuf), SpoolError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((file, path))
    }

    pub(super) fn rotate(&mut self) -> std::io::Result<()> {
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

    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) {
        let mut needs_rotation = false;
        // Deferred records that could not be written are tried again this often, even
        // with nothing else to write (a full disk that gets room again).
        let mut retry_deferred = false;
        // Whether the previous commit was shared: other clients are sending too.
        let mut shared = false;
        loop {
            let first = if retry_deferred {
                match jobs.recv_timeout(DEFERRED_RETRY) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => Job::wake(),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            // Under load, more records are on their way: waiting a moment for them
            // shares one `fdatasync` among more messages.
            if first.sync && shared {
                std::thread::sleep(COMMIT_WINDOW);
            }
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
            let mut starts = Vec::with_capacity(batch.len());
            let mut at = self.size;
            for job in &batch {
                starts.push(at);
                at += job.bytes.len() as u64;
            }
            let deferred = self.take_deferred();
            let batch_len = at - self.size + deferred.len() as u64;
            // One write for the batch and the deferred records after it. A lone record
            // goes out as it is, without a copy, when nothing is deferred or it is large
            // (a large message is always alone in its batch); `write_all` of nothing
            // makes no system call.
            let mut result = match batch.as_slice() {
                [job] if deferred.is_empty() || job.bytes.len() >= BATCH_COPY_MAX => self
                    .file
                    .write_all(&job.bytes)
                    .and_then(|()| self.file.write_all(&deferred)),
                _ => {
                    let mut joined = Vec::with_capacity(bytes + deferred.len());
                    for job in &batch {
                        joined.extend_from_slice(&job.bytes);
                    }
                    joined.extend_from_slice(&deferred);
                    self.file.write_all(&joined)
                }
            };
            // Jobs that need no fsync are acknowledged once written; the others once
            // `fdatasync` returns, and a batch of the first kind only needs none.
            let (lazy, durable): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .zip(starts)
                .partition(|(job, _)| !job.sync);
            let written = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            self.acknowledge(lazy, written);
            if result.is_ok() && !durable.is_empty() {
                result = self.file.sync_data();
                shared = durable.len() > 1;
            }
            match result {
                Ok(()) => {
                    self.size += batch_len;
                    retry_deferred = false;
                    self.acknowledge(durable, Ok(()));
                }
                Err(e) => {
                    // The deferred records go with the next batch.
                    retry_deferred = !deferred.is_empty();
                    self.put_back(deferred);
                    // Removals of finished messages in this batch were acknowledged
                    // before the fsync; cutting them loses nothing but their record, so
                    // such a message is delivered again after a restart (at-least-once).
                    // Cut what may have been written of this batch, so the segment ends
                    // on a whole record and can take the next batch; only if that fails
                    // does a fresh segment start (recovery would cut the torn tail).
                    // Rotating on every failure would leave an empty segment per batch
                    // while the disk stays full.
                    error!(error = %e, segment = self.seq, "spool write failed; no record of this batch that waits for fsync was acknowledged");
                    if self.file.set_len(self.size).is_err() {
                        needs_rotation = true;
                    }
                    self.acknowledge(durable, Err(e));
                }
            }
        }
        self.finish();
    }

    /// Write and sync what is still deferred: the last thing the committer does.
    fn finish(mut self) {
        let deferred = self.take_deferred();
        if deferred.is_empty() {
            return;
        }
        if let Err(e) = self
            .file
            .write_all(&deferred)
            .and_then(|()| self.file.sync_data())
        {
            error!(error = %e, segment = self.seq, "cannot write the last removals of finished messages; those messages are delivered again after the restart. Check the spool disk: free space, or the I/O error above");
        }
    }

    fn take_deferred(&self) -> Vec<u8> {
        let mut deferred = self.deferred.lock().expect("spool deferred records");
        deferred.wake_sent = false;
        std::mem::take(&mut deferred.bytes)
    }

    /// Return records that could not be written, ahead of any deferred since.
    fn put_back(&self, mut records: Vec<u8>) {
        if records.is_empty() {
            return;
        }
        let mut deferred = self.deferred.lock().expect("spool deferred records");
        records.append(&mut deferred.bytes);
        deferred.bytes = records;
    }

    /// Apply the index changes of `jobs` if `result` is `Ok`, then answer each job.
    /// `jobs` carry where their record starts in the current segment.
    fn acknowledge(&self, jobs: Vec<(Job, u64)>, result: std::io::Result<()>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = result {
            for (job, _) in jobs {
                let _ = job
                    .done
                    .send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            return;
        }
        let mut index = self.index.lock().expect("spool index");
        for (job, start) in &jobs {
            match &job.op {
                IndexOp::Insert {
                    id,
                    envelope,
                    received_at,
                    state,
                    content_at,
                    len,
                    body,
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
                            body: body.clone(),
                        },
                    );
                }
                IndexOp::Update { id, state } => {
                    if let Some(entry) = index.messages.get_mut(id) {
                        entry.state = state.clone();
                    }
                }
                IndexOp::Remove { id } => index.remove(*id),
                IndexOp::Flush => {}
            }
        }
        drop(index);
        for (job, _) in jobs {
            let _ = job.done.send(Ok(()));
        }
    }
}
