//! What flows down the pipeline: a queue id, the envelope, and the message content.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::pin::Pin;

use crate::proto::{Address, Reply, ReversePath};

/// Identifies one accepted message from `250 2.0.0 queued as ID` to the last log line.
///
/// The value is microseconds since the Unix epoch, bumped to stay unique within the
/// process, so ids sort by acceptance time and never repeat after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u64);

static LAST_ID: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// A new id, later than every id handed out before in this process.
    pub fn generate() -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = LAST_ID.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match LAST_ID.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// The numeric value (for the spool's encoding).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// From the numeric value.
    pub fn from_u64(value: u64) -> QueueId {
        QueueId(value)
    }

    /// Parse the text form (16 hex digits).
    pub fn parse(text: &str) -> Option<QueueId> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok().map(QueueId))
            .flatten()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// Who handed us the message.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// The client's address.
    pub ip: IpAddr,
    /// The name it gave in EHLO/HELO.
    pub helo: String,
    /// Whether it used EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// Negotiated TLS version and cipher suite, if the session used STARTTLS.
    pub tls: Option<String>,
    /// The user it authenticated as (SMTP AUTH), if it did.
    pub user: Option<String>,
}

/// The SMTP envelope: who sends, who receives, and what the body needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `MAIL FROM`.
    pub sender: ReversePath,
    /// `RCPT TO`, each once, in the order given.
    pub recipients: Vec<Address>,
    /// The client declared `SMTPUTF8`: addresses or headers may be UTF-8.
    pub smtputf8: bool,
    /// The client declared `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// The `[[route]]` chosen at MAIL FROM: the upstreams the message may use. `None`
    /// without routes.
    pub route: Option<String>,
}

/// The part of a large message's content that is kept in a file of the spool instead of
/// in memory: everything after the first part of its body. It is received into the file
/// as it arrives and sent from it, so a message's size does not decide the relay's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledBody {
    /// The file (in the spool's `body/` directory).
    pub path: PathBuf,
    /// Its length in octets.
    pub len: u64,
    /// Whether it has 8-bit octets.
    pub eight_bit: bool,
}

/// Memory for message content (`spool.memory_limit`): what sessions hold of the messages
/// they receive, and what the queue keeps of accepted messages for their first delivery.
/// A session that finds it used up writes its message's body to the spool at once, or,
/// if it cannot, refuses the message with `452 4.3.1`; the queue reads content back from
/// disk instead.
///
/// A header block has to be in memory whole (the transform reads it), and one larger
/// than what is left may still be legitimate (issue 9's 24 MiB display name); one
/// session at a time may go over the limit for it, so the bound is the limit plus one
/// message.
#[derive(Debug)]
pub struct ContentMemory {
    limit: u64,
    used: AtomicU64,
    /// A session holds the one pass to go over the limit.
    over_limit: std::sync::atomic::AtomicBool,
}

impl ContentMemory {
    /// `limit` octets in all.
    pub fn new(limit: u64) -> ContentMemory {
        ContentMemory {
            limit,
            used: AtomicU64::new(0),
            over_limit: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Take `bytes` if that stays within the limit.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .is_ok()
    }

    /// Take `bytes` whatever the limit (content already in memory that must stay).
    pub fn force_take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Give back `bytes` taken before.
    pub fn give_back(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Take the one pass to go over the limit, if no session holds it.
    pub fn take_over_limit_pass(&self) -> bool {
        self.over_limit
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Give the pass back.
    pub fn give_back_over_limit_pass(&self) {
        self.over_limit.store(false, Ordering::SeqCst);
    }

    /// Octets in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// An accepted message on its way to delivery.
#[derive(Clone, Debug)]
pub struct Message {
    /// Its queue id.
    pub id: QueueId,
    /// Its envelope.
    pub envelope: Envelope,
    /// The content with CRLF line endings, our `Received` header first: all of it, or for
    /// a large message the header block and the start of the body, the rest in `body`.
    pub content: Vec<u8>,
    /// The rest of a large message's content, in a spool file.
    pub body: Option<SpooledBody>,
    /// When it was accepted.
    pub received_at: SystemTime,
}

impl Message {
    /// The size of the whole content in octets.
    pub fn size(&self) -> u64 {
        self.content.len() as u64 + self.body.as_ref().map_or(0, |b| b.len)
    }

    /// Whether the content has 8-bit octets anywhere.
    pub fn has_eight_bit(&self) -> bool {
        !self.content.is_ascii() || self.body.as_ref().is_some_and(|b| b.eight_bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_memory_is_taken_within_its_limit() {
        let memory = ContentMemory::new(100);
        assert!(memory.try_take(60));
        assert!(!memory.try_take(41));
        assert!(memory.try_take(40));
        memory.give_back(50);
        assert_eq!(memory.used(), 50);
        memory.force_take(80);
        assert!(!memory.try_take(1));
        memory.give_back(1000);
        assert_eq!(memory.used(), 0);
        assert!(memory.take_over_limit_pass());
        assert!(!memory.take_over_limit_pass(), "one session at a time");
        memory.give_back_over_limit_pass();
        assert!(memory.take_over_limit_pass());
    }

    #[test]
    fn ids_are_unique_increasing_and_round_trip() {
        let ids: Vec<QueueId> = (0..1000).map(|_| QueueId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let text = ids[0].to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(QueueId::parse(&text), Some(ids[0]));
        assert_eq!(QueueId::parse("xyz"), None);
    }
}

// ---- the contract between accept and the next stage ----

/// Why the next stage did not take a message.
#[derive(Debug)]
pub enum HandoffError {
    /// The message is refused with this reply (e.g. an upstream's answer in passthrough mode).
    Refused(Reply),
    /// A local failure (disk, configuration); the client hears a generic `451 4.3.0`, the
    /// detail goes to the log.
    Unavailable(String),
    /// The spool has no room (disk full, or above `spool.max_disk_usage`); the client
    /// hears `452 4.3.1`, the detail goes to the log.
    NoStorage(String),
}

/// A future returned by [`Handoff::submit`].
pub type HandoffFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandoffError>> + Send + 'a>>;

/// Where accepted messages go. `Ok` means the message is safe: durable, or delivered.
pub trait Handoff: Send + Sync + 'static {
    /// Take responsibility for `message`. A message with a [`SpooledBody`] in
    /// [`Handoff::body_dir`] becomes the next stage's, file included, when this returns
    /// `Ok`; otherwise the caller removes the file.
    fn submit(&self, message: Message) -> HandoffFuture<'_>;

    /// Where the content of a large message goes while it is received, if this stage
    /// takes messages whose content is partly in a file (a [`SpooledBody`]). Without
    /// one, content is held in memory whole.
    fn body_dir(&self) -> Option<&Path> {
        None
    }

    /// The memory for message content that sessions take from, if this stage bounds it.
    fn content_memory(&self) -> Option<&std::sync::Arc<ContentMemory>> {
        None
    }

    /// Where acceptance records the messages it hands over, for the status page.
    fn activity(&self) -> Option<&std::sync::Arc<crate::telemetry::activity::Activity>> {
        None
    }
}
