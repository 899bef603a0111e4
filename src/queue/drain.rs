//! `smarthost queue drain --to HOST:PORT`: hand every queued message to another relay
//! over SMTP, for a replica that is scaled down (a Kubernetes `preStop` hook).
//!
//! Nothing may be lost and nothing sent twice, so the rules are:
//!
//! - **One owner of the spool.** Only the process holding the spool's lock hands
//!   messages over. When a relay runs, `queue drain` asks it through a control request
//!   (`spool/ctl.rs`); its scheduler then closes the delivery gate (no delivery starts,
//!   and it waits for the ones under way), hands the queue over with [`hand_over`] and
//!   opens the gate again. Its own workers never send a message the drain is sending.
//!   When no relay runs, the command opens the spool itself (taking the lock, so a relay
//!   started meanwhile cannot) and calls the same [`hand_over`]. One code path does the
//!   work either way; the only difference is who holds the lock.
//! - **Removed only after `250`.** A message leaves the spool, durably (the removal is
//!   fsync'd), once the other relay answered `250` to the end of its data. A crash in
//!   between can only send it once more, never lose it (at least once, as everywhere).
//! - **Only what is still due.** The original envelope goes out (`MAIL FROM` with
//!   `SIZE`, `BODY=8BITMIME`, `SMTPUTF8` as the message needs), with the recipients that
//!   are still pending: those already delivered, or failed with their bounce queued,
//!   are not sent again. The stored content goes as it is, a large message's body file
//!   included.
//! - **Refusals.** Recipients the other relay refuses permanently (5xx) stay queued with
//!   the message, and the output says so; the drain goes on with the next message. When
//!   some recipients of a message were accepted and others refused, the accepted ones
//!   are recorded as delivered first. A temporary refusal (4xx) or a connection problem
//!   stops the drain with that error and leaves the rest queued, untouched; a message
//!   whose end-of-data reply never came stays queued too (it may arrive twice, never
//!   zero times).
//!
//! The connection is plaintext SMTP (the other relay is on the cluster network) and is
//! reused from one message to the next.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;

use crate::deliver::client::{ClientError, RcptReply, SmtpClient};
use crate::message::{Message, QueueId};
use crate::proto::{Capabilities, ReversePath};
use crate::spool::{RcptState, Spool};

/// The relay to hand the queue to.
#[derive(Clone, Debug)]
pub struct Target {
    /// `HOST:PORT`.
    pub addr: String,
    /// Our name for `EHLO`.
    pub helo: String,
    /// Bound for connecting and for every reply but the one to the end of data.
    pub timeout: Duration,
}

/// What a drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages handed over and removed from the spool.
    pub handed: usize,
    /// Messages still queued when the drain ended.
    pub left: usize,
    /// Why the drain stopped before it tried every message, if it did.
    pub stopped: Option<String>,
}

impl Summary {
    /// The closing line for the operator.
    pub fn text(&self, to: &str) -> String {
        let mut text = format!(
            "{} message(s) handed over to {to}; {} left in the queue",
            self.handed, self.left
        );
        if let Some(why) = &self.stopped {
            text.push_str(&format!(" (stopped: {why})"));
        }
        text
    }

    /// The machine-readable last line of a running relay's answer: `end HANDED LEFT`.
    pub fn end_line(&self) -> String {
        format!("end {} {}", self.handed, self.left)
    }

    /// Read an [`Summary::end_line`] back (the reason is in the lines before it).
    pub fn parse_end_line(line: &str) -> Option<Summary> {
        let mut words = line.strip_prefix("end ")?.split_whitespace();
        Some(Summary {
            handed: words.next()?.parse().ok()?,
            left: words.next()?.parse().ok()?,
            stopped: None,
        })
    }
}

/// What became of one message.
enum Outcome {
    /// Accepted for every pending recipient and removed from the spool.
    HandedOver(String),
    /// Left in the queue, for this reason; the drain goes on.
    Left(String),
}

/// One connection to the target.
struct Connection {
    client: SmtpClient<TcpStream>,
    caps: Capabilities,
}

/// Hand every message in `spool` to `target`, oldest first, until the queue is empty,
/// `should_stop` gives a reason, or `until` passes. Messages for which `skip` gives a
/// reason are left alone. Each message handed over or left gets one line through `say`
/// (so does the reason for stopping early). Messages queued meanwhile are handed over
/// too.
///
/// The caller must own the spool for the duration: no other delivery of these messages
/// may run (see the module doc).
pub async fn hand_over(
    spool: &Arc<Spool>,
    target: &Target,
    until: SystemTime,
    skip: &(dyn Fn(QueueId) -> Option<String> + Sync),
    should_stop: &(dyn Fn() -> Option<String> + Sync),
    say: &mut (dyn FnMut(&str) + Send),
) -> Summary {
    let mut summary = Summary::default();
    let mut tried: HashSet<QueueId> = HashSet::new();
    let mut connection: Option<Connection> = None;
    'rounds: loop {
        let ids: Vec<QueueId> = spool
            .ids()
            .into_iter()
            .filter(|id| !tried.contains(id))
            .collect();
        if ids.is_empty() {
            break;
        }
        for id in ids {
            if let Some(why) = should_stop() {
                summary.stopped = Some(why);
                break 'rounds;
            }
            if SystemTime::now() >= until {
                summary.stopped = Some("the time limit was reached".into());
                break 'rounds;
            }
            tried.insert(id);
            if let Some(why) = skip(id) {
                say(&format!("left {id}: {why}"));
                continue;
            }
            match hand_over_one(spool, target, &mut connection, id).await {
                Ok(Outcome::HandedOver(line)) => {
                    summary.handed += 1;
                    say(&format!("handed over {id}: {line}"));
                }
                Ok(Outcome::Left(why)) => say(&format!("left {id}: {why}")),
                Err(why) => {
                    say(&format!("stopped at {id}: {why}"));
                    summary.stopped = Some(why);
                    break 'rounds;
                }
            }
        }
    }
    if let Some(c) = connection {
        c.client.quit().await;
    }
    summary.left = spool.len();
    summary
}

/// `MAIL FROM` and `RCPT TO` for the pending recipients of `message`, then the content.
/// `Err` stops the drain (the message stays queued as it was, unless some recipients
/// were accepted: those are recorded as delivered first).
async fn hand_over_one(
    spool: &Arc<Spool>,
    target: &Target,
    connection: &mut Option<Connection>,
    id: QueueId,
) -> Result<Outcome, String> {
    let Some(entry) = spool.entry(id) else {
        return Ok(Outcome::Left("no longer queued".into()));
    };
    let pending: Vec<usize> = (0..entry.state.rcpts.len())
        .filter(|i| entry.state.rcpts[*i] == RcptState::Pending)
        .collect();
    if pending.is_empty() {
        // Every recipient is settled; only the removal was missing.
        spool
            .finish(id)
            .await
            .map_err(|e| format!("cannot remove it from the spool: {e}"))?;
        return Ok(Outcome::HandedOver("no recipient was pending".into()));
    }
    let message = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || spool.load(id))
            .await
            .map_err(|e| format!("cannot read it from the spool: {e}"))?
            .map_err(|e| format!("cannot read it from the spool: {e}"))?
    };
    let recipients: Vec<String> = pending
        .iter()
        .map(|i| entry.envelope.recipients[*i].to_string())
        .collect();
    if connection.is_none() {
        *connection = Some(connect(target).await?);
    }
    let conn = connection.as_mut().expect("connected above");
    let mail_from = match mail_from(&message, &conn.caps) {
        Ok(m) => m,
        Err(why) => return Ok(Outcome::Left(why)),
    };
    let pipelining = conn.caps.has("PIPELINING");
    let result = conn
        .client
        .transaction(
            &mail_from,
            &recipients,
            (&message.content, message.body.as_ref()),
            pipelining,
        )
        .await;
    conn.client.reset_before_next();
    let replies = match result {
        Ok(replies) => replies,
        Err(e) => {
            let sent = conn.client.reached_data();
            *connection = None;
            return Err(if sent {
                format!(
                    "{}: {e}; the message stays queued (if {} took it after all, it arrives there twice)",
                    target.addr, target.addr
                )
            } else {
                format!("{}: {e}", target.addr)
            });
        }
    };
    let sender = match &entry.envelope.sender {
        ReversePath::Null => "<>".to_owned(),
        ReversePath::Mailbox(a) => a.to_string(),
    };
    match settle(spool, id, &entry.state, &pending, &recipients, &replies).await? {
        Outcome::HandedOver(line) => Ok(Outcome::HandedOver(format!("{sender} -> {line}"))),
        left => Ok(left),
    }
}

/// Apply the replies for the `pending` recipients (in order, named `recipients`).
async fn settle(
    spool: &Arc<Spool>,
    id: QueueId,
    state: &crate::spool::DeliveryState,
    pending: &[usize],
    recipients: &[String],
    replies: &[RcptReply],
) -> Result<Outcome, String> {
    let mut accepted = Vec::new();
    let mut temporary = Vec::new();
    let mut permanent = Vec::new();
    let mut last = None;
    for ((index, rcpt), reply) in pending.iter().zip(recipients).zip(replies) {
        match reply {
            RcptReply::Accepted(r) => {
                accepted.push(*index);
                last = Some(r.to_string());
            }
            RcptReply::Refused(r) if r.is_permanent() => permanent.push(format!("<{rcpt}>: {r}")),
            RcptReply::Refused(r) => temporary.push(format!("<{rcpt}>: {r}")),
        }
    }
    if accepted.len() == pending.len() {
        spool.remove(id).await.map_err(|e| {
            format!("handed over, but it cannot be removed from the spool ({e}): it would be sent again, so the drain stops")
        })?;
        return Ok(Outcome::HandedOver(format!(
            "{} ({})",
            recipients.join(", "),
            last.unwrap_or_default()
        )));
    }
    if !accepted.is_empty() {
        let mut state = state.clone();
        for index in &accepted {
            state.rcpts[*index] = RcptState::Delivered;
        }
        spool.update(id, state).await.map_err(|e| {
            format!("some recipients were handed over, but that cannot be recorded ({e}): the drain stops")
        })?;
    }
    let refused = temporary
        .iter()
        .chain(&permanent)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if !temporary.is_empty() {
        return Err(format!("refused for now: {refused}; the rest stays queued"));
    }
    Ok(Outcome::Left(format!(
        "refused: {refused}{}",
        if accepted.is_empty() {
            String::new()
        } else {
            format!(
                " (the {} other recipient(s) were handed over)",
                accepted.len()
            )
        }
    )))
}

/// Connect, read the greeting, say EHLO.
async fn connect(target: &Target) -> Result<Connection, String> {
    let stream = tokio::time::timeout(target.timeout, TcpStream::connect(&target.addr))
        .await
        .map_err(|_| {
            format!(
                "cannot connect to {}: no answer within {:?}",
                target.addr, target.timeout
            )
        })?
        .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
    let mut client = SmtpClient::new(stream, target.timeout);
    let smtp = |e: ClientError| format!("{}: {e}", target.addr);
    client.greeting().await.map_err(smtp)?;
    let caps = client.ehlo(&target.helo).await.map_err(smtp)?;
    Ok(Connection { client, caps })
}

/// `<sender>` with the parameters the message needs, or why the target cannot take it
/// as it is.
fn mail_from(message: &Message, caps: &Capabilities) -> Result<String, String> {
    let mut line = match &message.envelope.sender {
        ReversePath::Null => "<>".to_owned(),
        ReversePath::Mailbox(a) => format!("<{a}>"),
    };
    if caps.has("SIZE") {
        line.push_str(&format!(" SIZE={}", message.size()));
    }
    let eight_bit = message.envelope.eight_bit
        || message.body.as_ref().is_some_and(|b| b.eight_bit)
        || !message.content.is_ascii();
    if eight_bit {
        if !caps.has("8BITMIME") {
            return Err("the message is 8-bit and the target does not offer 8BITMIME".into());
        }
        line.push_str(" BODY=8BITMIME");
    }
    let utf8 = message.envelope.smtputf8
        || !line.is_ascii()
        || message
            .envelope
            .recipients
            .iter()
            .any(|r| !r.to_string().is_ascii());
    if utf8 {
        if !caps.has("SMTPUTF8") {
            return Err("the message needs SMTPUTF8 and the target does not offer it".into());
        }
        line.push_str(" SMTPUTF8");
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_lines_round_trip() {
        let s = Summary {
            handed: 3,
            left: 1,
            stopped: Some("x".into()),
        };
        let back = Summary::parse_end_line(&s.end_line()).unwrap();
        assert_eq!((back.handed, back.left), (3, 1));
        assert_eq!(Summary::parse_end_line("handed over"), None);
        assert!(
            s.text("r:25")
                .contains("3 message(s) handed over to r:25; 1 left")
        );
    }
}
