//! `smarthost queue list|show|retry|delete|drain`: the spool of a running or stopped relay.
//!
//! Reading never changes the spool, so it is safe while `serve` runs. Retry and delete
//! are requests the running relay carries out within a second (or the next start does).
//! Drain is a request the running relay answers as it goes; with no relay running, the
//! command drains the spool itself (see `queue/drain.rs` for the design).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::message::QueueId;
use crate::proto::ReversePath;
use crate::queue::drain::{Summary, Target, hand_over};
use crate::spool::ctl::{self, Request};
use crate::spool::{Entry, RcptState, Spool, SpoolError};
use crate::transform::trace::rfc5322_date;

/// A queue command that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool cannot be read.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The id is not a queue id.
    #[error("{0:?} is not a queue id (16 hexadecimal digits, as in `250 2.0.0 queued as ID`)")]
    BadId(String),
    /// No such message.
    #[error("no message {0} in the queue (it may have been delivered already)")]
    Unknown(QueueId),
    /// `--to` is not `HOST:PORT`.
    #[error("--to {0:?} is not HOST:PORT (the relay to hand the queue to, e.g. relay-1.relay:25)")]
    BadTarget(String),
    /// The request could not be written.
    #[error("cannot leave the request in {dir}: {source}")]
    Request {
        /// The control directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

fn parse_id(text: &str) -> Result<QueueId, QueueError> {
    QueueId::parse(&text.to_ascii_uppercase()).ok_or_else(|| QueueError::BadId(text.to_owned()))
}

fn sender(entry: &Entry) -> String {
    match &entry.envelope.sender {
        ReversePath::Null => "<>".into(),
        ReversePath::Mailbox(a) => a.to_string(),
    }
}

fn when(secs: u64) -> String {
    if secs == 0 {
        return "now".into();
    }
    let at = UNIX_EPOCH + Duration::from_secs(secs);
    match at.duration_since(SystemTime::now()) {
        Ok(d) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(_) => "now".into(),
    }
}

/// One line per queued message: id, age, size, attempts, next attempt, sender → pending recipients.
pub fn list(spool_dir: &Path) -> Result<String, QueueError> {
    let entries = Spool::inspect(spool_dir)?;
    let mut out = String::new();
    let now = SystemTime::now();
    for (id, e) in &entries {
        let age = now.duration_since(e.received_at).unwrap_or_default();
        let pending: Vec<String> = e
            .envelope
            .recipients
            .iter()
            .zip(&e.state.rcpts)
            .filter(|(_, s)| **s == RcptState::Pending)
            .map(|(r, _)| r.to_string())
            .collect();
        let _ = writeln!(
            out,
            "{id}  age {}  {} bytes  attempts {}  next {}  {} -> {}{}",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            e.size(),
            e.state.attempts,
            when(e.state.next_attempt),
            sender(e),
            pending.join(", "),
            if e.state.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", e.state.last_error)
            },
        );
    }
    let _ = writeln!(out, "{} message(s) queued", entries.len());
    Ok(out)
}

/// Everything about one message: envelope, per-recipient state, last error, headers.
pub fn show(spool_dir: &Path, id: &str) -> Result<String, QueueError> {
    let id = parse_id(id)?;
    let entries = Spool::inspect(spool_dir)?;
    let (_, e) = entries
        .iter()
        .find(|(i, _)| *i == id)
        .ok_or(QueueError::Unknown(id))?;
    let mut out = String::new();
    let _ = writeln!(out, "queue id:    {id}");
    let _ = writeln!(out, "received:    {}", rfc5322_date(e.received_at));
    let _ = writeln!(out, "sender:      {}", sender(e));
    for (rcpt, state) in e.envelope.recipients.iter().zip(&e.state.rcpts) {
        let _ = writeln!(
            out,
            "recipient:   {rcpt} ({})",
            match state {
                RcptState::Pending => "pending",
                RcptState::Delivered => "delivered",
                RcptState::Failed => "failed",
            }
        );
    }
    let _ = writeln!(out, "attempts:    {}", e.state.attempts);
    let _ = writeln!(out, "next:        {}", when(e.state.next_attempt));
    if !e.state.last_error.is_empty() {
        let _ = writeln!(out, "last error:  {}", e.state.last_error);
    }
    let _ = writeln!(out, "size:        {} bytes", e.size());
    if let Some(body) = &e.body {
        let _ = writeln!(out, "body file:   {}", body.path.display());
    }
    let content = read_content(spool_dir, e)?;
    let header_end = memchr::memmem::find(&content, b"\r\n\r\n").map_or(content.len(), |i| i + 2);
    let _ = writeln!(out, "headers:");
    out.push_str(&String::from_utf8_lossy(&content[..header_end]).replace("\r\n", "\n"));
    Ok(out)
}

fn read_content(spool_dir: &Path, e: &Entry) -> Result<Vec<u8>, QueueError> {
    use std::os::unix::fs::FileExt;
    let path = spool_dir.join(format!("seg-{:016x}.log", e.location.segment));
    let file = std::fs::File::open(&path).map_err(|source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut content = vec![0; e.location.len as usize];
    file.read_exact_at(&mut content, e.location.offset)
        .map_err(|source| SpoolError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(content)
}

/// Ask for a retry of one message (`Some`) or all (`None`). Returns what to tell the user.
pub fn retry(spool_dir: &Path, id: Option<&str>) -> Result<String, QueueError> {
    let request = match id {
        Some(id) => {
            let id = parse_id(id)?;
            ensure_queued(spool_dir, id)?;
            Request::Retry(id)
        }
        None => Request::RetryAll,
    };
    submit(spool_dir, request)
}

/// Ask for a message to be removed without delivery or bounce.
pub fn delete(spool_dir: &Path, id: &str) -> Result<String, QueueError> {
    let id = parse_id(id)?;
    ensure_queued(spool_dir, id)?;
    submit(spool_dir, Request::Delete(id))
}

fn ensure_queued(spool_dir: &Path, id: QueueId) -> Result<(), QueueError> {
    if Spool::inspect(spool_dir)?.iter().any(|(i, _)| *i == id) {
        Ok(())
    } else {
        Err(QueueError::Unknown(id))
    }
}

fn submit(spool_dir: &Path, request: Request) -> Result<String, QueueError> {
    ctl::submit(spool_dir, request).map_err(|source| QueueError::Request {
        dir: spool_dir.join("ctl").display().to_string(),
        source,
    })?;
    Ok(if Spool::is_locked(spool_dir) {
        "requested; the running relay carries it out within a second".into()
    } else {
        "requested; no relay is running on this spool, so it is carried out when `smarthost serve` starts".into()
    })
}

/// Bound for connecting to the other relay and for each of its replies (but the one to
/// the end of data, which gets the usual ten minutes).
const TARGET_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the running relay's answer is read.
const POLL: Duration = Duration::from_millis(100);

/// How long past its time limit the running relay's last lines are awaited (a message
/// under way when the limit passes is finished first).
const ANSWER_GRACE: Duration = Duration::from_secs(30);

/// `queue drain --to HOST:PORT`: hand every queued message to the relay at `to`, within
/// `wait`. Each line of progress goes to `say` as it happens, the summary last. Returns
/// whether the queue is empty at the end.
pub async fn drain(
    spool_dir: &Path,
    hostname: &str,
    to: &str,
    wait: Duration,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, QueueError> {
    match to.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => return Err(QueueError::BadTarget(to.to_owned())),
    }
    let target = Target {
        addr: to.to_owned(),
        helo: hostname.to_owned(),
        timeout: TARGET_TIMEOUT,
    };
    let until = SystemTime::now() + wait;
    if !Spool::is_locked(spool_dir)
        && let Some(empty) = drain_here(spool_dir, &target, until, say).await?
    {
        return Ok(empty);
    }
    let token = QueueId::generate();
    let until_secs = until.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ctl::submit(
        spool_dir,
        Request::Drain {
            token,
            to: to.to_owned(),
            until: until_secs,
        },
    )
    .map_err(|source| QueueError::Request {
        dir: spool_dir.join("ctl").display().to_string(),
        source,
    })?;
    say(&format!(
        "asked the running relay to hand its queue over to {to}"
    ));
    let output = ctl::drain_output(spool_dir, token);
    let mut shown = 0;
    let give_up = until + ANSWER_GRACE;
    loop {
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        let lines: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        for line in lines.get(shown..).unwrap_or_default() {
            let line = line.trim_end();
            if let Some(summary) = Summary::parse_end_line(line) {
                let _ = std::fs::remove_file(&output);
                return Ok(summary.left == 0);
            }
            say(line);
        }
        shown = lines.len();
        if !Spool::is_locked(spool_dir) {
            // The relay stopped before it finished: nobody owns the spool now, so the
            // rest is drained from here.
            say("the running relay stopped before it finished; draining the rest from here");
            let _ = std::fs::remove_file(&output);
            if let Some(empty) = drain_here(spool_dir, &target, until, say).await? {
                return Ok(empty);
            }
        }
        if SystemTime::now() >= give_up {
            let left = Spool::inspect(spool_dir)?.len();
            say(&format!(
                "the running relay did not finish within {}; {left} message(s) left in the queue",
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            ));
            return Ok(left == 0);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Drain with the spool opened here (no relay runs). `None` if a relay took the spool
/// meanwhile.
async fn drain_here(
    spool_dir: &Path,
    target: &Target,
    until: SystemTime,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Option<bool>, QueueError> {
    let spool = match Spool::open(spool_dir) {
        Ok(spool) => Arc::new(spool),
        Err(SpoolError::Locked { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    apply_left_requests(&spool).await;
    let summary = hand_over(&spool, target, until, &|_| None, &|| None, say).await;
    say(&summary.text(&target.addr));
    Ok(Some(summary.left == 0))
}

/// Requests left for a relay that is not running: a deletion wins over the drain (the
/// operator did not want that message sent); retries are left for the next start;
/// drain requests nobody answered are void.
async fn apply_left_requests(spool: &Spool) {
    for request in ctl::take(spool.dir()) {
        match request {
            Request::Delete(id) => {
                if spool.entry(id).is_some()
                    && let Err(e) = spool.remove(id).await
                {
                    tracing::error!(queue_id = %id, error = %e, "cannot delete");
                }
            }
            Request::Drain { .. } => {}
            other => {
                let _ = ctl::submit(spool.dir(), other);
            }
        }
    }
}
