//! One upstream's attempt within a walk: whether it may be tried now (budget, breaker),
//! the message prepared for it (sender policy, 7-bit conversion, DKIM; once per policy),
//! and what it did with the pending recipients, with its breaker and gauge updated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tracing::{info, warn};

use super::Reason;
use crate::cluster::ClusterBreaker;
use crate::deliver::breaker::Admission;
use crate::deliver::client::RcptReply;
use crate::deliver::outcome::{Failure, Scope, Unsuitable};
use crate::deliver::upstream::Partial;
use crate::deliver::{Progress, ProgressFuture, Upstream, UpstreamKind};
use crate::message::Message;
use crate::proto::{Address, Response, ReversePath};
use crate::transform::{TransformError, Transformer};

/// What one upstream did with the pending recipients.
pub(super) enum Attempt {
    /// Per pending recipient: accepted or not, and the reply (none for a Maildir; none
    /// and not accepted: not answered, see `unanswered`).
    Replies {
        /// In the order of the pending recipients.
        replies: Vec<(bool, Option<Response>)>,
        /// Why some recipients got no reply: the attempt ended after others were
        /// settled (they stay pending and go to the next upstream).
        unanswered: Option<Reason>,
    },
    /// Failed as a whole; the next upstream may succeed.
    Transient(Reason),
    /// Not tried: its circuit breaker is open. Not an attempt of the message, so its
    /// back-off does not grow while it waits for the upstream.
    Skipped(Reason),
    /// This upstream (named) cannot take this message (size, 8BITMIME, SMTPUTF8).
    Unsuitable(String, Unsuitable),
    /// The message itself was refused for good; no other upstream will differ.
    Permanent(Reason),
    /// The upstream's sending budget is used up until then.
    Held(SystemTime),
}

/// Whether `target` may be tried now: its sending budget and its circuit breaker.
/// Asked before the message is prepared for it, so a skipped upstream costs no signature.
pub(super) async fn admit(target: &Upstream, message: &Message) -> Result<Admission, Attempt> {
    let UpstreamKind::Smtp(up) = &target.kind else {
        return Ok(Admission::Allowed);
    };
    let skipped = || {
        info!(queue_id = %message.id, upstream = %up.name, "skipped: circuit breaker open");
        Err(Attempt::Skipped(Reason::Text(format!(
            "{}: skipped while its circuit breaker is open after repeated failures (the log has the errors)",
            up.name
        ))))
    };
    // The breaker is asked first, so skipping an upstream costs none of its budget.
    if up.breaker.is_cooling_down(Instant::now()) {
        return skipped();
    }
    // The other replicas' breaker, asked while this replica's own is closed.
    let cluster_probe = match (&up.shared_breaker, up.breaker.is_up()) {
        (Some(shared), true) => match shared.check().await {
            ClusterBreaker::Open => {
                info!(queue_id = %message.id, upstream = %up.name, "skipped: circuit breaker open on another replica");
                return Err(Attempt::Skipped(Reason::Text(format!(
                    "{}: skipped while its circuit breaker is open on another replica after repeated failures (that replica's log has the errors)",
                    up.name
                ))));
            }
            ClusterBreaker::Probe => true,
            ClusterBreaker::Closed => false,
        },
        _ => false,
    };
    if let Err(until) = up.take_budget().await {
        info!(queue_id = %message.id, upstream = %up.name, "held: sending budget of this upstream used up");
        return Err(Attempt::Held(until));
    }
    let admission = up.breaker.admit(Instant::now());
    if admission == Admission::Skip {
        return skipped();
    }
    Ok(if cluster_probe {
        Admission::Probe
    } else {
        admission
    })
}

/// The walk's [`Progress`] for one upstream: it hears indices into the pending
/// recipients and passes on indices into the message's, remembering which were
/// recorded and whether recording failed.
pub(super) struct Pending<'a> {
    pub(super) outer: &'a dyn Progress,
    /// Pending recipient → message recipient.
    pub(super) map: &'a [usize],
    pub(super) recorded: Mutex<Vec<usize>>,
    pub(super) failed: AtomicBool,
}

impl Progress for Pending<'_> {
    fn accepted<'a>(&'a self, accepted: &'a [usize]) -> ProgressFuture<'a> {
        Box::pin(async move {
            let mapped: Vec<usize> = accepted.iter().map(|i| self.map[*i]).collect();
            match self.outer.accepted(&mapped).await {
                Ok(()) => {
                    self.recorded.lock().expect("recorded lock").extend(mapped);
                    Ok(())
                }
                Err(why) => {
                    self.failed.store(true, Ordering::SeqCst);
                    Err(why)
                }
            }
        })
    }
}

/// Try one admitted target with the pending recipients.
pub(super) async fn attempt(
    target: &Upstream,
    admission: Admission,
    message: &Message,
    pending: &[Address],
    progress: &dyn Progress,
) -> Attempt {
    let up = match &target.kind {
        UpstreamKind::Maildir(maildir) => {
            let (maildir, msg) = (maildir.clone(), message.clone());
            return match tokio::task::spawn_blocking(move || maildir.deliver(&msg)).await {
                Ok(Ok(_)) => Attempt::Replies {
                    replies: pending.iter().map(|_| (true, None)).collect(),
                    unanswered: None,
                },
                Ok(Err(e)) => Attempt::Transient(Reason::Text(format!("{}: {e}", target.name))),
                Err(e) => Attempt::Transient(Reason::Text(format!(
                    "{}: delivery task failed: {e}",
                    target.name
                ))),
            };
        }
        UpstreamKind::Smtp(up) => up,
    };
    let as_pair = |r: RcptReply| match r {
        RcptReply::Accepted(resp) => (true, Some(resp)),
        RcptReply::Refused(resp) => (false, Some(resp)),
    };
    let (settled, failure) = match up.send(message, pending, progress).await {
        Ok(replies) => {
            let recovered = up.breaker.record_success();
            if recovered {
                info!(upstream = %up.name, "circuit breaker closed: the upstream works again");
            }
            if let Some(shared) = &up.shared_breaker
                && (recovered || admission == Admission::Probe)
            {
                shared.closed().await;
            }
            metrics::gauge!(crate::telemetry::name::UPSTREAM_UP, "upstream" => up.name.clone())
                .set(1.0);
            return Attempt::Replies {
                replies: replies.into_iter().map(as_pair).collect(),
                unanswered: None,
            };
        }
        Err(Partial { replies, failure }) => (replies, failure),
    };
    let (host, port, mode) = up.describe();
    let fix = failure.diagnosis(host, port, mode);
    let up_gauge =
        metrics::gauge!(crate::telemetry::name::UPSTREAM_UP, "upstream" => up.name.clone());
    if failure.scope() == Scope::Upstream {
        let opened = up.breaker.record_failure(admission, Instant::now());
        if opened {
            warn!(upstream = %up.name, "circuit breaker opened: skipping this upstream for a while");
        }
        if let Some(shared) = &up.shared_breaker
            && (opened || admission == Admission::Probe)
        {
            let cooldown = up.breaker.open_cooldown();
            shared
                .opened(cooldown.unwrap_or(up.breaker.base_cooldown()))
                .await;
        }
    } else if admission == Admission::Probe {
        // The upstream answered; it is up even if this message did not suit it.
        up.breaker.record_success();
        if let Some(shared) = &up.shared_breaker {
            shared.closed().await;
        }
    }
    up_gauge.set(if up.breaker.is_up() { 1.0 } else { 0.0 });
    warn!(queue_id = %message.id, upstream = %up.name, error = %failure, fix = fix.as_deref().unwrap_or(""), "attempt failed");
    up.note_failure(failure.to_string());
    let permanent = failure.is_permanent();
    let ended = match failure {
        Failure::Unsuitable(why) => Attempt::Unsuitable(up.name.clone(), why),
        Failure::Refused { response, .. } => {
            let reason = Reason::Reply {
                upstream: up.name.clone(),
                response,
            };
            if permanent {
                Attempt::Permanent(reason)
            } else {
                Attempt::Transient(reason)
            }
        }
        other => {
            let fix = fix.map(|f| format!(" ({f})")).unwrap_or_default();
            Attempt::Transient(Reason::Text(format!("{}: {other}{fix}", up.name)))
        }
    };
    if settled.iter().all(Option::is_none) {
        return ended;
    }
    // Some recipients were settled by earlier transactions of this attempt: they keep
    // their outcome (an accepted one is never sent again); the others stay pending.
    let reason = match ended {
        Attempt::Transient(r) | Attempt::Permanent(r) | Attempt::Skipped(r) => r,
        Attempt::Unsuitable(name, why) => Reason::Text(format!("{name}: {why}")),
        Attempt::Held(_) | Attempt::Replies { .. } => {
            unreachable!("a failed send is none of these")
        }
    };
    Attempt::Replies {
        replies: settled
            .into_iter()
            .map(|r| r.map_or((false, None), as_pair))
            .collect(),
        unanswered: Some(reason),
    }
}

/// Why a message could not be prepared for an upstream.
pub(super) enum PrepareError {
    /// It has 8-bit content that cannot be made 7-bit (for an upstream without 8BITMIME).
    NotConvertible(String),
    /// Anything else (signing failed): try again later.
    Failed(String),
}

/// The message as an upstream with `sender` policy gets it: 8-bit parts made 7-bit if
/// `seven_bit`, sender policy, DKIM signature, and the envelope sender.
pub(super) async fn prepare(
    transformer: &Arc<Transformer>,
    message: &Arc<Message>,
    sender: Option<String>,
    seven_bit: bool,
) -> Result<Arc<Message>, PrepareError> {
    let inline = message.body.is_none() && transformer.signs_cheaply();
    let (transformer, original) = (transformer.clone(), message.clone());
    let work = move || {
        // An 8-bit body in a spool file is read in to be converted; any other stays
        // in its file and is sent from there.
        let whole;
        let (content, body) = match &original.body {
            Some(body) if seven_bit && body.eight_bit => {
                whole = read_whole(&original).map_err(PrepareError::Failed)?;
                (&whole[..], None)
            }
            body => (&original.content[..], body.as_ref()),
        };
        let content = match transformer
            .for_upstream_with(content, body, sender.as_deref(), seven_bit)
            .map_err(|e| match e {
                TransformError::NotConvertible(e) => PrepareError::NotConvertible(e.to_string()),
                other => PrepareError::Failed(other.to_string()),
            })? {
            // Nothing to rewrite or sign: the upstream gets the message as it is.
            std::borrow::Cow::Borrowed(_) if sender.is_none() && body == original.body.as_ref() => {
                return Ok(original);
            }
            content => content.into_owned(),
        };
        let mut envelope = original.envelope.clone();
        if let (Some(account), ReversePath::Mailbox(_)) = (&sender, &envelope.sender) {
            let account = Address::parse(account)
                .map_err(|e| PrepareError::Failed(format!("sender {account:?}: {e}")))?;
            envelope.sender = ReversePath::Mailbox(account);
        }
        Ok(Arc::new(Message {
            id: original.id,
            envelope,
            content,
            body: body.cloned(),
            received_at: original.received_at,
        }))
    };
    // A message held in memory whose signature is cheap is prepared right here: the
    // hand-off to the blocking pool costs two context switches, more than an Ed25519
    // signature (the full job went from 544 to 398 us of CPU per message). An rsa-2048
    // signature (about 0.7 ms) would hold up the worker's other sessions, and inline it
    // cost more CPU in total (1,300 against 1,220 us per message); a body in a spool
    // file is read from disk. Both go to the blocking pool.
    if inline {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PrepareError::Failed(format!("transformation task failed: {e}")))?
}

/// A large message's whole content in memory: its head and its body file.
fn read_whole(message: &Message) -> Result<Vec<u8>, String> {
    let mut whole = message.content.clone();
    if let Some(body) = &message.body {
        let mut file = std::fs::File::open(&body.path)
            .map_err(|e| format!("opening the body file {}: {e}", body.path.display()))?;
        std::io::Read::read_to_end(&mut file, &mut whole)
            .map_err(|e| format!("reading the body file {}: {e}", body.path.display()))?;
    }
    Ok(whole)
}

/// Whether `target` is known to lack 8BITMIME (from its last EHLO).
pub(super) fn known_7bit(target: &Upstream) -> bool {
    match &target.kind {
        UpstreamKind::Smtp(up) => up.offers_8bitmime() == Some(false),
        UpstreamKind::Maildir(_) => false,
    }
}
