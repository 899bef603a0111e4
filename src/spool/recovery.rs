//! Recovery: reading the segments back into the index at start, cutting torn tails and
//! moving corrupt regions to `quarantine/` with a log line, never a crash.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::codec::{self, DecodeError, Record};
use super::index::Index;
use super::{Entry, Location, SpoolError, body_dir, io_err, segment_path};
use crate::message::SpooledBody;

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
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

/// Replay one segment's bytes into `index`. Returns the length of the valid prefix
/// and the corrupt regions found (offset, bytes).
pub(super) fn replay(
    dir: &Path,
    seq: u64,
    bytes: &[u8],
    index: &mut Index,
) -> (usize, Vec<(usize, Vec<u8>)>) {
    let mut pos = 0;
    let mut valid_end = 0;
    let mut corrupt = Vec::new();
    while pos < bytes.len() {
        match codec::decode(&bytes[pos..]) {
            Ok((record, len)) => {
                apply(dir, (seq, pos, len), record, index);
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

/// Apply one record, found at `(segment, offset, length)`, to the index.
pub(super) fn apply(
    dir: &Path,
    (seq, record_at, record_len): (u64, usize, usize),
    record: Record<'_>,
    index: &mut Index,
) {
    match record {
        Record::Message {
            id,
            received_at,
            envelope,
            state,
            content,
            body,
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
                    body: body.map(|b| SpooledBody {
                        path: body_dir(dir).join(b.name),
                        len: b.len,
                        eight_bit: b.eight_bit,
                    }),
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

/// Read every segment into an index. With `repair`, cut torn tails and move corrupt
/// regions to `quarantine/` (only the lock holder may do that).
pub(super) fn recover(dir: &Path, repair: bool) -> Result<(Index, Option<u64>), SpoolError> {
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
        let (valid_end, corrupt) = replay(dir, seq, &bytes, &mut index);
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
    if repair {
        drop_missing_bodies(&mut index);
        // Only old files: in passthrough mode the spool is opened while sessions may be
        // writing bodies of messages not accepted yet.
        sweep_bodies(dir, referenced_bodies(&index), super::ORPHAN_BODY_AGE);
    }
    Ok((index, seqs.last().copied()))
}

/// A message whose body file is gone cannot be sent: say so, and forget it (the file
/// is only deleted after the message's removal is durable, so this takes a lost or
/// damaged file system).
fn drop_missing_bodies(index: &mut Index) {
    let missing: Vec<_> = index
        .messages
        .iter()
        .filter_map(|(id, e)| {
            let body = e.body.as_ref()?;
            (!body.path.exists()).then(|| (*id, body.path.clone()))
        })
        .collect();
    for (id, path) in missing {
        error!(queue_id = %id, file = %path.display(), "a queued message's body file is missing; the message cannot be delivered and is dropped (restore the file from a backup and restart to keep it)");
        index.remove(id);
    }
}

/// The names of the body files that queued messages use.
pub(super) fn referenced_bodies(index: &Index) -> HashSet<OsString> {
    index
        .messages
        .values()
        .filter_map(|e| e.body.as_ref()?.path.file_name().map(OsString::from))
        .collect()
}

/// Delete the body files not in `referenced` that were last written more than `age`
/// ago. Returns how many were deleted.
pub(super) fn sweep_bodies(dir: &Path, referenced: HashSet<OsString>, age: Duration) -> usize {
    let Ok(files) = fs::read_dir(body_dir(dir)) else {
        return 0;
    };
    let mut deleted = 0;
    for file in files.flatten() {
        if referenced.contains(&file.file_name()) {
            continue;
        }
        let idle = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if idle >= age && fs::remove_file(file.path()).is_ok() {
            deleted += 1;
        }
    }
    if deleted > 0 {
        warn!(dir = %body_dir(dir).display(), files = deleted, "removed body files that belong to no queued message (content of sessions that ended before their message was accepted)");
    }
    deleted
}
