//! One delivery attempt of one queued message: load it, hand its pending recipients to
//! delivery (recording progress between transactions), settle each recipient, expire
//! and bounce what failed, and record the outcome with its next attempt time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::{debug, error, info, warn};

use super::outcomes::Outcome;
use super::{Ready, Scheduler};
use crate::deliver::failover::{RcptOutcome, Reason, Report};
use crate::deliver::{Progress, ProgressFuture};
use crate::message::{Message, QueueId};
use crate::proto::ReversePath;
use crate::queue::bounce::{FailedRecipient, bounce, status_of};
use crate::spool::{DeliveryState, Entry, RcptState, Spool};

impl Scheduler {
    /// One delivery attempt of one message, and its durable outcome.
    pub(super) async fn deliver(&self, ready: Ready) {
        let Some(entry) = self.inner.spool.entry(ready.id) else {
            return;
        };
        if self.unrecorded().outcomes.contains_key(&ready.id) {
            // Its last outcome is not on disk yet; the spool's entry is out of date.
            info!(queue_id = %ready.id, "not delivered again: its last outcome is waiting to be recorded");
            return;
        }
        let id = ready.id;
        let Some(message) = self.load(ready).await else {
            return;
        };
        let pending: Vec<usize> = (0..entry.state.rcpts.len())
            .filter(|i| entry.state.rcpts[*i] == RcptState::Pending)
            .collect();
        let recoveries = self.inner.deliverer.recoveries().count();
        let progress = Recorder {
            spool: self.inner.spool.clone(),
            id,
            pending: &pending,
            state: Mutex::new(entry.state.clone()),
        };
        let report = self
            .inner
            .deliverer
            .deliver_tracked(for_pending(&message, &entry, &pending), &progress)
            .await;

        let now = SystemTime::now();
        let mut state = entry.state.clone();
        // Held by a budget or skipped by open breakers: waiting, not trying.
        let waited = report.held_until.is_some() || report.breakers_open_until.is_some();
        if report.attempted || !waited {
            state.attempts += 1;
        }
        let mut failed = settle(&mut state, &pending, &report);
        let age = now.duration_since(entry.received_at).unwrap_or_default();
        if !state.is_complete() && age >= self.inner.settings.lifetime {
            failed.extend(expire(&mut state, &pending, &report, age));
            warn!(queue_id = %message.id, attempts = state.attempts, "expired: max_queue_lifetime reached, bouncing the remaining recipients");
        }
        if !failed.is_empty() && !self.queue_bounce(&message, &failed, now).await {
            // Without its bounce, a failure must not be recorded: the sender would
            // never hear of it. Those recipients stay pending and are tried again.
            for index in &pending {
                if state.rcpts[*index] == RcptState::Failed {
                    state.rcpts[*index] = RcptState::Pending;
                }
            }
        }
        let outcome = if state.is_complete() {
            Outcome::Finished
        } else {
            self.defer(message.id, state, &report, recoveries, now)
        };
        if let Err(e) = self.record(message.id, &outcome).await {
            self.keep_unrecorded(message.id, outcome, &e);
        }
    }

    /// The message's content: handed over with it, or read back from the spool. A
    /// message that cannot be read is tried again after `retry_max`.
    async fn load(&self, ready: Ready) -> Option<Arc<Message>> {
        if let Some(m) = ready.message {
            return Some(m);
        }
        let (spool, id) = (self.inner.spool.clone(), ready.id);
        match tokio::task::spawn_blocking(move || spool.load(id)).await {
            Ok(Ok(m)) => Some(Arc::new(m)),
            Ok(Err(e)) => {
                error!(queue_id = %ready.id, error = %e, "cannot read a queued message; retrying later");
                self.schedule(ready.id, SystemTime::now() + self.inner.settings.retry_max);
                None
            }
            Err(e) => {
                error!(queue_id = %ready.id, error = %e, "spool read task failed");
                None
            }
        }
    }

    /// Queue the DSN for the `failed` recipients of `message` (none for a null
    /// sender). False when it cannot be queued.
    async fn queue_bounce(
        &self,
        message: &Message,
        failed: &[FailedRecipient],
        now: SystemTime,
    ) -> bool {
        let Some(dsn) = bounce(message, failed, &self.inner.settings.hostname, now) else {
            if message.envelope.sender == ReversePath::Null {
                info!(queue_id = %message.id, "failed recipients of a null-sender message are not bounced");
            }
            return true;
        };
        let dsn_id = dsn.id;
        match self.inner.spool.put(&dsn).await {
            Ok(()) => {
                metrics::counter!(crate::telemetry::name::BOUNCED).increment(1);
                self.inner
                    .deliverer
                    .activity()
                    .bounced(&message.id.to_string());
                info!(queue_id = %message.id, bounce_id = %dsn_id, recipients = failed.len(), "bounce queued to the sender");
                self.enqueue(dsn_id, Some(Arc::new(dsn)));
                true
            }
            Err(e) => {
                error!(queue_id = %message.id, error = %e, "cannot queue the bounce; the failed recipients stay queued and are tried again later");
                false
            }
        }
    }
}

/// The message as this attempt sends it: only the pending recipients are tried; when
/// that is all of them the message goes as it is, without a copy.
fn for_pending(message: &Arc<Message>, entry: &Entry, pending: &[usize]) -> Arc<Message> {
    if pending.len() == entry.envelope.recipients.len() {
        return message.clone();
    }
    let mut partial = (**message).clone();
    partial.envelope.recipients = pending
        .iter()
        .map(|i| entry.envelope.recipients[*i].clone())
        .collect();
    Arc::new(partial)
}

/// Apply `report` (for the recipients at `indices`, in order) to `state`: delivered
/// and failed recipients are settled, a deferral's reason becomes the last error.
/// Returns the failed recipients, for their bounce.
pub(super) fn settle(
    state: &mut DeliveryState,
    indices: &[usize],
    report: &Report,
) -> Vec<FailedRecipient> {
    let mut failed = Vec::new();
    for (index, (rcpt, status)) in indices.iter().zip(&report.recipients) {
        match status {
            RcptOutcome::Delivered { .. } => state.rcpts[*index] = RcptState::Delivered,
            RcptOutcome::Failed(reason) => {
                state.rcpts[*index] = RcptState::Failed;
                failed.push(failed_recipient(rcpt, reason, true));
            }
            RcptOutcome::Deferred(reason) => state.last_error = reason.to_string(),
        }
    }
    failed
}

/// `max_queue_lifetime` reached: the deferred recipients fail, their diagnosis saying
/// how long they were tried.
fn expire(
    state: &mut DeliveryState,
    pending: &[usize],
    report: &Report,
    age: Duration,
) -> Vec<FailedRecipient> {
    let mut failed = Vec::new();
    for (index, (rcpt, status)) in pending.iter().zip(&report.recipients) {
        if let RcptOutcome::Deferred(reason) = status {
            state.rcpts[*index] = RcptState::Failed;
            let mut f = failed_recipient(rcpt, reason, true);
            f.diagnostic = format!(
                "gave up after {} attempts over {}: {}",
                state.attempts,
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                f.diagnostic
            );
            failed.push(f);
        }
    }
    failed
}

/// Records, during one attempt, the recipients accepted by transactions that more
/// follow (see [`Progress`]): their state goes to the spool before the next transaction
/// starts, so a crash then never sends them again; only the transaction in flight can
/// be sent twice. The attempt count and next attempt time are left as they are (the
/// attempt is not over). Refused recipients are not recorded here: a failure is
/// recorded only with its bounce, at the end of the attempt (one DSN per message); a
/// crash before that tries them again, which sends no copy.
///
/// A write that fails ends the attempt before its next transaction; its outcome then
/// takes the usual way (kept in memory while the spool cannot record it, deliveries
/// paused).
struct Recorder<'a> {
    spool: Arc<Spool>,
    id: QueueId,
    /// Recipient of the attempt → recipient of the message.
    pending: &'a [usize],
    /// The state as last recorded.
    state: Mutex<DeliveryState>,
}

impl Progress for Recorder<'_> {
    fn accepted<'a>(&'a self, accepted: &'a [usize]) -> ProgressFuture<'a> {
        Box::pin(async move {
            let state = {
                let mut state = self.state.lock().expect("progress state lock");
                for i in accepted {
                    state.rcpts[self.pending[*i]] = RcptState::Delivered;
                }
                state.clone()
            };
            if self.spool.entry(self.id).is_none() {
                return Err("the message was deleted from the queue".into());
            }
            match self.spool.update(self.id, state).await {
                Ok(()) => {
                    debug!(queue_id = %self.id, accepted = accepted.len(), "recipients accepted so far recorded before the next transaction");
                    Ok(())
                }
                Err(e) => {
                    error!(queue_id = %self.id, error = %e, "cannot record the recipients accepted so far; the rest of this message waits (nothing more is sent that a crash could send twice)");
                    Err(format!("the spool cannot record delivery progress: {e}"))
                }
            }
        })
    }
}

pub(super) fn failed_recipient(
    rcpt: &crate::proto::Address,
    reason: &Reason,
    permanent: bool,
) -> FailedRecipient {
    let diagnostic = reason.to_string();
    let status = match reason {
        Reason::Reply { response, .. } => status_of(&response.text(), permanent),
        Reason::Local { status, .. } => status.to_string(),
        Reason::Text(_) => "5.0.0".into(),
    };
    FailedRecipient {
        address: rcpt.clone(),
        status,
        diagnostic,
    }
}
