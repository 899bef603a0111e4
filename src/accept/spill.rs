//! Content beyond memory: the body of a large message goes to a file in the spool's
//! `body/` directory as it arrives, and only its header block stays in memory (the
//! transform needs it; the body passes through untouched). So a session holds about
//! [`SPILL_AT`] of content at most, however large its message.
//!
//! What a session holds is taken from the relay's [`ContentMemory`]
//! (`spool.memory_limit`). When that is used up, the body goes to the file at once,
//! whatever its size; content that cannot be written there (a header block still
//! arriving, or a hand-off that takes whole messages only) goes over the limit if no
//! other session does, and otherwise the message is dropped as it arrives and refused
//! at its end with `452 4.3.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::message::{ContentMemory, QueueId, SpooledBody};

/// A message whose content reaches this size, and whose header block has ended, has
/// its body written to a file from then on.
pub const SPILL_AT: usize = 1024 * 1024;
/// Body content is written to the file in pieces of at least this size.
const SPILL_CHUNK: usize = 256 * 1024;

/// Where the content of one message beyond its header block goes.
#[derive(Debug, Default)]
pub struct Spill {
    state: State,
    /// The memory the content in memory is taken from, and how much of it is taken.
    memory: Option<Arc<ContentMemory>>,
    taken: u64,
    /// This session holds the pass to go over the limit (a header block larger than
    /// what is left).
    over_limit: bool,
}

/// Why a message could not be kept.
pub fn out_of_memory() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::OutOfMemory,
        "the memory for message content (spool.memory_limit) is in use and the message cannot go to the spool",
    )
}

#[derive(Debug)]
enum State {
    /// All content is in memory; the header block's end was looked for up to `scanned`.
    InMemory { scanned: usize },
    /// The body goes to `file`; the content buffer holds the header block (`head`
    /// octets) and body octets not written yet.
    Writing {
        file: Box<tokio::fs::File>,
        path: PathBuf,
        head: usize,
        written: u64,
        eight_bit: bool,
    },
    /// Writing failed: the rest of the content is dropped, and the message is refused
    /// at its end.
    Failed { error: std::io::Error },
    /// The file became a message's [`SpooledBody`].
    Taken,
}

impl Default for State {
    fn default() -> State {
        State::InMemory { scanned: 0 }
    }
}

/// Where the header block of `content` ends (after its empty line), if it has; the
/// first `scanned` octets are known to hold no end but the last three.
fn head_end(content: &[u8], scanned: usize) -> Option<usize> {
    if content.starts_with(b"\r\n") {
        return Some(2);
    }
    let from = scanned.saturating_sub(3);
    memchr::memmem::find(&content[from..], b"\r\n\r\n").map(|p| from + p + 4)
}

impl Spill {
    /// After more content arrived in `content`: start writing the body to a file in
    /// `dir` once the message is large enough, and move what has arrived of it there.
    /// Without `dir` (a hand-off that takes whole messages only) nothing happens.
    ///
    /// `memory` is what the content held in memory is taken from: when it has no room
    /// for more, the body goes to the file now, or the message is dropped.
    pub async fn absorb(
        &mut self,
        content: &mut Vec<u8>,
        dir: Option<&Path>,
        memory: Option<&Arc<ContentMemory>>,
    ) {
        if self.memory.is_none() {
            self.memory = memory.cloned();
        }
        let short = !self.cover(content.len());
        self.move_on(content, dir, short).await;
        self.settle(content.len());
    }

    /// Take memory for `len` octets in all; false if there is no room.
    fn cover(&mut self, len: usize) -> bool {
        let len = len as u64;
        let Some(memory) = &self.memory else {
            return true;
        };
        if len <= self.taken {
            return true;
        }
        let needed = len - self.taken;
        if self.over_limit {
            memory.force_take(needed);
        } else if !memory.try_take(needed) {
            return false;
        }
        self.taken = len;
        true
    }

    /// No room for a header block that has not ended (or content that cannot go to a
    /// file): go over the limit if no other session does, else drop the message.
    fn over_limit_or_fail(&mut self, content: &mut Vec<u8>) {
        if self
            .memory
            .as_ref()
            .is_some_and(|m| m.take_over_limit_pass())
        {
            self.over_limit = true;
        } else {
            self.fail(out_of_memory(), content);
        }
    }

    /// After the content shrank or must stay as it is: hold memory for exactly `len`.
    fn settle(&mut self, len: usize) {
        let len = len as u64;
        if let Some(memory) = &self.memory {
            match self.taken.cmp(&len) {
                std::cmp::Ordering::Greater => memory.give_back(self.taken - len),
                std::cmp::Ordering::Less => memory.force_take(len - self.taken),
                // The usual case after each read: nothing to change.
                std::cmp::Ordering::Equal => return,
            }
            self.taken = len;
        }
    }

    async fn move_on(&mut self, content: &mut Vec<u8>, dir: Option<&Path>, short: bool) {
        match &mut self.state {
            State::InMemory { scanned } => {
                let Some(dir) = dir else {
                    if short {
                        self.over_limit_or_fail(content);
                    }
                    return;
                };
                if content.len() < SPILL_AT && !short {
                    return;
                }
                // A header block longer than SPILL_AT stays in memory with what follows
                // it until it ends: the transform must see it whole.
                let Some(head) = head_end(content, *scanned) else {
                    *scanned = content.len();
                    if short {
                        self.over_limit_or_fail(content);
                    }
                    return;
                };
                let path = dir.join(format!("{:016x}", QueueId::generate().as_u64()));
                // The directory may not exist yet (passthrough mode opens the spool
                // only when it needs it).
                let opened = match tokio::fs::create_dir_all(dir).await {
                    Ok(()) => {
                        tokio::fs::OpenOptions::new()
                            .create_new(true)
                            .write(true)
                            .open(&path)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(file) => {
                        let reason = if short { "memory" } else { "size" };
                        metrics::counter!(crate::telemetry::name::SPOOLED_BODIES, "reason" => reason)
                            .increment(1);
                        self.state = State::Writing {
                            file: Box::new(file),
                            path,
                            head,
                            written: 0,
                            eight_bit: false,
                        };
                        self.write_body(content).await;
                    }
                    Err(error) => self.fail(error, content),
                }
            }
            State::Writing { head, .. } => {
                if content.len() - *head >= SPILL_CHUNK || short {
                    self.write_body(content).await;
                }
            }
            State::Failed { .. } => content.clear(),
            State::Taken => {}
        }
    }

    async fn write_body(&mut self, content: &mut Vec<u8>) {
        let State::Writing {
            file,
            head,
            written,
            eight_bit,
            ..
        } = &mut self.state
        else {
            return;
        };
        let body = &content[*head..];
        *eight_bit |= !body.is_ascii();
        match file.write_all(body).await {
            Ok(()) => {
                *written += body.len() as u64;
                content.truncate(*head);
                // The buffer grew to SPILL_AT before the body went to the file; from now
                // on it holds the header block and one piece of body.
                content.shrink_to(*head + 2 * SPILL_CHUNK);
            }
            Err(error) => self.fail(error, content),
        }
    }

    fn fail(&mut self, error: std::io::Error, content: &mut Vec<u8>) {
        if let Some(path) = self.path() {
            let _ = std::fs::remove_file(path);
        }
        if error.kind() == std::io::ErrorKind::OutOfMemory {
            tracing::warn!(
                limit = self.memory.as_ref().map(|m| m.limit()),
                "the memory for message content (spool.memory_limit) is in use: a message that cannot go to the spool is dropped as it arrives and refused with 452 4.3.1"
            );
        } else {
            tracing::warn!(error = %error, "cannot write message content to the spool; the message will be refused");
        }
        content.clear();
        self.state = State::Failed { error };
    }

    fn path(&self) -> Option<&Path> {
        match &self.state {
            State::Writing { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The content ended: write what is left of the body and make the file durable.
    /// Returns the body (`None` for a message held in memory whole), or why it could
    /// not be kept. `content` is left holding the header block.
    pub async fn finish(
        &mut self,
        content: &mut Vec<u8>,
    ) -> Result<Option<SpooledBody>, std::io::Error> {
        let result = self.end(content).await;
        self.settle(content.len());
        result
    }

    async fn end(&mut self, content: &mut Vec<u8>) -> Result<Option<SpooledBody>, std::io::Error> {
        if matches!(self.state, State::Writing { .. }) {
            // What is left of the body; this may turn the state into Failed.
            self.write_body(content).await;
        }
        match std::mem::replace(&mut self.state, State::Taken) {
            State::InMemory { .. } | State::Taken => Ok(None),
            State::Failed { error } => Err(error),
            State::Writing {
                file,
                path,
                written,
                eight_bit,
                ..
            } => {
                let durable = async {
                    let mut file = file;
                    file.flush().await?;
                    file.sync_data().await?;
                    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
                    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
                        .await
                        .map_err(std::io::Error::other)?
                };
                match durable.await {
                    Ok(()) => Ok(Some(SpooledBody {
                        path,
                        len: written,
                        eight_bit,
                    })),
                    Err(error) => {
                        let _ = std::fs::remove_file(&path);
                        Err(error)
                    }
                }
            }
        }
    }
}

impl Drop for Spill {
    /// Content of a message that was not accepted is not kept; the memory the session
    /// held for it is given back.
    fn drop(&mut self) {
        if let Some(path) = self.path() {
            let _ = std::fs::remove_file(path);
        }
        if let Some(memory) = &self.memory {
            memory.give_back(self.taken);
            if self.over_limit {
                memory.give_back_over_limit_pass();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body_lines: usize) -> Vec<u8> {
        let mut m = b"From: a@example.com\r\nSubject: big\r\n\r\n".to_vec();
        for i in 0..body_lines {
            m.extend_from_slice(
                format!("line {i} of a long body, some text to fill it\r\n").as_bytes(),
            );
        }
        m
    }

    async fn feed(spill: &mut Spill, whole: &[u8], dir: &Path) -> Vec<u8> {
        let mut content = Vec::new();
        for piece in whole.chunks(10_000) {
            content.extend_from_slice(piece);
            spill.absorb(&mut content, Some(dir), None).await;
            assert!(content.len() < SPILL_AT + SPILL_CHUNK + 10_000);
        }
        content
    }

    #[tokio::test]
    async fn a_large_body_goes_to_a_file_and_the_header_block_stays() {
        let dir = tempfile::tempdir().unwrap();
        let whole = message(100_000);
        let mut spill = Spill::default();
        let mut content = feed(&mut spill, &whole, dir.path()).await;
        let body = spill.finish(&mut content).await.unwrap().unwrap();
        let head = head_end(&whole, 0).unwrap();
        assert_eq!(content, &whole[..head]);
        assert_eq!(body.len as usize, whole.len() - head);
        assert!(!body.eight_bit);
        let mut back = content.clone();
        back.extend(std::fs::read(&body.path).unwrap());
        assert_eq!(back, whole);
        drop(spill);
        assert!(body.path.exists(), "a taken file is the message's");
    }

    #[tokio::test]
    async fn small_messages_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let whole = message(100);
        let mut spill = Spill::default();
        let mut content = feed(&mut spill, &whole, dir.path()).await;
        assert_eq!(spill.finish(&mut content).await.unwrap(), None);
        assert_eq!(content, whole);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn content_of_a_message_not_accepted_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut whole = message(100_000);
        whole.extend_from_slice("8-bit: é\r\n".as_bytes());
        let mut spill = Spill::default();
        feed(&mut spill, &whole, dir.path()).await;
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(spill);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn eight_bit_bodies_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let mut whole = message(100_000);
        whole.extend_from_slice("8-bit: é\r\n".as_bytes());
        let mut spill = Spill::default();
        let mut content = feed(&mut spill, &whole, dir.path()).await;
        assert!(spill.finish(&mut content).await.unwrap().unwrap().eight_bit);
    }

    #[tokio::test]
    async fn a_header_block_without_end_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut whole = Vec::new();
        for i in 0..40_000 {
            whole.extend_from_slice(format!("X-Filler-{i}: some header text\r\n").as_bytes());
        }
        let mut spill = Spill::default();
        let mut content = Vec::new();
        content.extend_from_slice(&whole);
        spill.absorb(&mut content, Some(dir.path()), None).await;
        assert_eq!(spill.finish(&mut content).await.unwrap(), None);
        assert_eq!(content, whole);
    }

    #[tokio::test]
    async fn without_room_in_memory_the_body_goes_to_the_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(ContentMemory::new(64 * 1024));
        let whole = message(5_000);
        let mut spill = Spill::default();
        let mut content = Vec::new();
        for piece in whole.chunks(10_000) {
            content.extend_from_slice(piece);
            spill
                .absorb(&mut content, Some(dir.path()), Some(&memory))
                .await;
            assert!(memory.used() <= 64 * 1024, "{}", memory.used());
        }
        let body = spill.finish(&mut content).await.unwrap().unwrap();
        assert!(whole.len() < SPILL_AT, "a message below the usual size");
        assert_eq!(content.len() as u64 + body.len, whole.len() as u64);
        assert_eq!(memory.used(), content.len() as u64);
        drop(spill);
        assert_eq!(
            memory.used(),
            0,
            "given back when the session is done with it"
        );
    }

    #[tokio::test]
    async fn without_room_and_without_a_spool_the_message_is_refused() {
        let memory = Arc::new(ContentMemory::new(64 * 1024));
        let other_session = 60 * 1024;
        assert!(memory.try_take(other_session));
        assert!(
            memory.take_over_limit_pass(),
            "another session is over the limit"
        );
        let whole = message(5_000);
        let mut spill = Spill::default();
        let mut content = Vec::new();
        for piece in whole.chunks(10_000) {
            content.extend_from_slice(piece);
            spill.absorb(&mut content, None, Some(&memory)).await;
        }
        let error = spill.finish(&mut content).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::OutOfMemory);
        drop(spill);
        assert_eq!(memory.used(), other_session);
    }

    #[tokio::test]
    async fn one_session_at_a_time_may_go_over_the_limit() {
        let memory = Arc::new(ContentMemory::new(64 * 1024));
        let whole = message(5_000);
        let mut first = Spill::default();
        let mut content = Vec::new();
        for piece in whole.chunks(10_000) {
            content.extend_from_slice(piece);
            first.absorb(&mut content, None, Some(&memory)).await;
        }
        assert_eq!(first.finish(&mut content).await.unwrap(), None);
        assert_eq!(content, whole, "kept whole, over the limit");
        assert_eq!(memory.used(), whole.len() as u64);

        let mut second = Spill::default();
        let mut other = Vec::new();
        for piece in whole.chunks(10_000) {
            other.extend_from_slice(piece);
            second.absorb(&mut other, None, Some(&memory)).await;
        }
        assert!(
            second.finish(&mut other).await.is_err(),
            "the pass is taken"
        );
        drop((first, second));
        assert_eq!(memory.used(), 0);
        assert!(memory.take_over_limit_pass(), "given back");
    }

    #[tokio::test]
    async fn a_write_failure_is_reported_at_the_end() {
        // A directory that cannot be made: its parent is a file.
        let file = tempfile::NamedTempFile::new().unwrap();
        let missing = file.path().join("body");
        let missing = missing.as_path();
        let whole = message(100_000);
        let mut spill = Spill::default();
        let mut content = Vec::new();
        for piece in whole.chunks(10_000) {
            content.extend_from_slice(piece);
            spill.absorb(&mut content, Some(missing), None).await;
        }
        assert!(spill.finish(&mut content).await.is_err());
    }
}
