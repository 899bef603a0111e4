//! Walking the upstreams for one message: by priority, by weight within a priority,
//! skipping open circuit breakers. A transient failure moves the still-pending
//! recipients to the next upstream; a permanent refusal settles a recipient; no
//! upstream sees the same message twice in one walk.
//!
//! This module is the walk ([`walk`], its state `Walk`) and what it reports; one
//! upstream's attempt within it (admission, preparation, sending) is in `attempt`.

mod attempt;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

use rand::Rng;
use tracing::{info, warn};

use super::outcome::{Unsuitable, is_throttling, is_too_many_recipients};
use super::{Progress, Upstream, UpstreamKind};
use crate::message::Message;
use crate::proto::{Address, Enhanced, Response};
use crate::transform::Transformer;
use attempt::{Attempt, Pending, PrepareError, admit, attempt, known_7bit, prepare};

/// What happened to one recipient.
#[derive(Clone, Debug)]
pub enum RcptOutcome {
    /// Accepted by this upstream with this reply.
    Delivered {
        /// The upstream's name.
        upstream: String,
        /// Its final reply, if it is an SMTP upstream.
        response: Option<Response>,
    },
    /// Refused for good.
    Failed(Reason),
    /// Not delivered yet; a later attempt may succeed.
    Deferred(Reason),
}

/// Why a recipient is not delivered.
#[derive(Clone, Debug)]
pub enum Reason {
    /// An upstream's own reply.
    Reply {
        /// Which upstream.
        upstream: String,
        /// What it said.
        response: Response,
    },
    /// Our description (connection failures, no upstream available).
    Text(String),
    /// Our own verdict with the status that names its cause (RFC 3463): no upstream
    /// can take the message.
    Local {
        /// SMTP reply code for passthrough (`552`, `554`).
        code: u16,
        /// Enhanced status code for the DSN and the reply.
        status: Enhanced,
        /// What happened.
        text: String,
    },
}

impl Reason {
    /// The upstream whose reply this is, if an upstream answered.
    pub fn upstream(&self) -> Option<&str> {
        match self {
            Reason::Reply { upstream, .. } => Some(upstream),
            Reason::Text(_) | Reason::Local { .. } => None,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Reply { upstream, response } => write!(f, "{upstream}: {response}"),
            Reason::Text(t) | Reason::Local { text: t, .. } => f.write_str(t),
        }
    }
}

/// The result of one walk over the upstreams.
#[derive(Debug)]
pub struct Report {
    /// Per recipient, in envelope order.
    pub recipients: Vec<(Address, RcptOutcome)>,
    /// Whether any upstream was actually tried (not skipped, held or unsuitable).
    pub attempted: bool,
    /// The earliest time a budget-held upstream may send again.
    pub held_until: Option<SystemTime>,
    /// Set when recipients are deferred because every upstream's circuit breaker is
    /// open: the earliest time one of them admits a probe. The queue lets such mail
    /// wait for the upstream, not for its own back-off.
    pub breakers_open_until: Option<SystemTime>,
    /// Set when recipients are deferred and no upstream answered for them: every
    /// attempt failed as a whole (connection, TLS, a timeout) or was skipped by a
    /// breaker. Such mail is sent again as soon as a breaker closes.
    pub waiting_for_upstream: bool,
    /// The upstreams whose attempt failed as a whole (connection, TLS, AUTH, a timeout,
    /// a refusal of the transaction), in the order tried.
    pub failed_attempts: Vec<String>,
}

impl Report {
    /// Every recipient delivered.
    pub fn all_delivered(&self) -> bool {
        self.recipients
            .iter()
            .all(|(_, s)| matches!(s, RcptOutcome::Delivered { .. }))
    }
}

/// The order to try the targets in: ascending priority; within one priority a weighted
/// random order (each position drawn with probability proportional to weight).
pub fn order<'a>(
    targets: impl IntoIterator<Item = &'a Upstream>,
    rng: &mut impl Rng,
) -> Vec<&'a Upstream> {
    let mut keyed: Vec<(i32, f64, &Upstream)> = targets
        .into_iter()
        .map(|t| {
            // Efraimidis–Spirakis: sorting by u^(1/w) descending samples by weight.
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (t.priority, u.powf(1.0 / f64::from(t.weight.max(1))), t)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, t)| t).collect()
}

/// Deliver `message` by walking `targets`. Recipients accepted while more transactions
/// follow (the next of a split message, or the next upstream) are told to `progress`
/// first; if it cannot take them, the walk ends there and the rest stays deferred.
pub async fn walk(
    targets: &[&Upstream],
    transformer: &Arc<Transformer>,
    message: Arc<Message>,
    progress: &dyn Progress,
) -> Report {
    let ordered = order(targets.iter().copied(), &mut rand::rng());
    let mut walk = Walk::new(&message);
    for target in ordered {
        let Some(pending_at) = walk.pending() else {
            break;
        };
        if let Err(reason) = walk.record_earlier(progress, target, &message).await {
            walk.last_transient = Some(reason);
            break;
        }
        let tracker = Pending {
            outer: progress,
            map: &pending_at,
            recorded: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
        };
        let result = walk
            .try_target(target, transformer, &message, &pending_at, &tracker)
            .await;
        for i in tracker.recorded.into_inner().expect("recorded lock") {
            walk.recorded[i] = true;
        }
        // The queue cannot record what was accepted: nothing more is sent now.
        let stop = tracker.failed.into_inner();
        if walk.settle(target, result) == Flow::Stop || stop {
            break;
        }
    }
    walk.finish(targets)
}

/// Whether the walk goes on to the next upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Pending recipients (if any) go to the next upstream.
    Next,
    /// The message was refused for good: no other upstream is tried.
    Stop,
}

/// The state of one walk: per-recipient outcomes so far and what the upstreams said.
struct Walk {
    /// Per recipient, in envelope order; `None` while still pending.
    status: Vec<(Address, Option<RcptOutcome>)>,
    /// Accepted recipients already told to `progress`.
    recorded: Vec<bool>,
    /// One transformed copy per sender policy (and 7-bit conversion): failing over
    /// between upstreams with the same policy does not sign again.
    prepared: HashMap<(Option<String>, bool), Arc<Message>>,
    /// Whether the message has 8-bit content.
    eight_bit: bool,
    last_transient: Option<Reason>,
    unsuitable: Vec<(String, Unsuitable)>,
    /// Whether any upstream was actually tried (not skipped, held or unsuitable).
    attempted: bool,
    held_until: Option<SystemTime>,
    /// Whether any upstream got as far as answering for the recipients.
    answered: bool,
    failed_attempts: Vec<String>,
}

impl Walk {
    fn new(message: &Message) -> Walk {
        let status: Vec<(Address, Option<RcptOutcome>)> = message
            .envelope
            .recipients
            .iter()
            .map(|r| (r.clone(), None))
            .collect();
        Walk {
            recorded: vec![false; status.len()],
            status,
            prepared: HashMap::new(),
            eight_bit: message.has_eight_bit(),
            last_transient: None,
            unsuitable: Vec::new(),
            attempted: false,
            held_until: None,
            answered: false,
            failed_attempts: Vec::new(),
        }
    }

    /// The indices of the recipients still pending, or `None` when every one is settled.
    fn pending(&self) -> Option<Vec<usize>> {
        let at: Vec<usize> = (0..self.status.len())
            .filter(|i| self.status[*i].1.is_none())
            .collect();
        (!at.is_empty()).then_some(at)
    }

    /// Record the recipients an earlier upstream accepted before another one is tried:
    /// a crash during that try must not send them again.
    async fn record_earlier(
        &mut self,
        progress: &dyn Progress,
        target: &Upstream,
        message: &Message,
    ) -> Result<(), Reason> {
        let earlier: Vec<usize> = (0..self.status.len())
            .filter(|i| {
                !self.recorded[*i]
                    && matches!(self.status[*i].1, Some(RcptOutcome::Delivered { .. }))
            })
            .collect();
        if earlier.is_empty() {
            return Ok(());
        }
        if let Err(why) = progress.accepted(&earlier).await {
            warn!(queue_id = %message.id, upstream = %target.name, error = %why, "not tried: the recipients accepted so far cannot be recorded");
            return Err(Reason::Text(format!("not sent: {why}")));
        }
        for i in earlier {
            self.recorded[i] = true;
        }
        Ok(())
    }

    /// Admit `target`, prepare the message for it and send to the pending recipients.
    /// 8-bit content for an upstream without 8BITMIME is converted before signing: at
    /// once when its last EHLO said so, else after it says so now.
    async fn try_target(
        &mut self,
        target: &Upstream,
        transformer: &Arc<Transformer>,
        message: &Arc<Message>,
        pending_at: &[usize],
        tracker: &Pending<'_>,
    ) -> Attempt {
        let pending: Vec<Address> = pending_at
            .iter()
            .map(|i| self.status[*i].0.clone())
            .collect();
        let mut seven_bit = self.eight_bit && known_7bit(target);
        let admission = match admit(target, message).await {
            Err(not_now) => return not_now,
            Ok(admission) => admission,
        };
        loop {
            let for_target = match self
                .prepared_for(target, transformer, message, seven_bit)
                .await
            {
                Ok(m) => m,
                Err(not_sent) => return not_sent,
            };
            let result = attempt(target, admission, &for_target, &pending, tracker).await;
            let needs_conversion = matches!(
                result,
                Attempt::Unsuitable(_, Unsuitable::NeedsConversion(_))
            );
            if self.eight_bit && !seven_bit && needs_conversion {
                info!(queue_id = %message.id, upstream = %target.name, "the upstream has no 8BITMIME: converting the 8-bit parts to 7 bits");
                seven_bit = true;
                continue;
            }
            return result;
        }
    }

    /// The message as `target` gets it, prepared once per sender policy and conversion.
    async fn prepared_for(
        &mut self,
        target: &Upstream,
        transformer: &Arc<Transformer>,
        message: &Arc<Message>,
        seven_bit: bool,
    ) -> Result<Arc<Message>, Attempt> {
        let key = (target.sender.clone(), seven_bit);
        if let Some(m) = self.prepared.get(&key) {
            return Ok(m.clone());
        }
        match prepare(transformer, message, target.sender.clone(), seven_bit).await {
            Ok(m) => {
                self.prepared.insert(key, m.clone());
                Ok(m)
            }
            Err(PrepareError::NotConvertible(why)) => Err(Attempt::Unsuitable(
                target.name.clone(),
                Unsuitable::NeedsConversion(why),
            )),
            Err(PrepareError::Failed(reason)) => {
                warn!(queue_id = %message.id, upstream = %target.name, error = %reason, "not sent: transformation failed");
                Err(Attempt::Transient(Reason::Text(reason)))
            }
        }
    }

    /// Take in what `target` did with the pending recipients.
    fn settle(&mut self, target: &Upstream, result: Attempt) -> Flow {
        self.attempted |= !matches!(
            result,
            Attempt::Held(_) | Attempt::Unsuitable(..) | Attempt::Skipped(_)
        );
        match result {
            Attempt::Replies {
                replies,
                unanswered,
            } => {
                self.answered = true;
                if let Some(reason) = unanswered {
                    self.last_transient = Some(reason);
                }
                self.settle_replies(target, replies);
            }
            Attempt::Transient(reason) => {
                self.failed_attempts.push(target.name.clone());
                self.last_transient = Some(reason)
            }
            Attempt::Skipped(reason) => self.last_transient = Some(reason),
            Attempt::Unsuitable(name, why) => self.unsuitable.push((name, why)),
            Attempt::Held(until) => {
                self.held_until = Some(self.held_until.map_or(until, |h| h.min(until)));
                self.last_transient.get_or_insert(Reason::Text(format!(
                    "{}: sending budget used up (rate_limit/daily_limit)",
                    target.name
                )));
            }
            Attempt::Permanent(reason) => {
                for (_, slot) in self.status.iter_mut().filter(|(_, s)| s.is_none()) {
                    *slot = Some(RcptOutcome::Failed(reason.clone()));
                }
                return Flow::Stop;
            }
        }
        Flow::Next
    }

    /// Settle the pending recipients `target` answered for, in their order.
    fn settle_replies(&mut self, target: &Upstream, replies: Vec<(bool, Option<Response>)>) {
        let open = self
            .status
            .iter_mut()
            .filter(|(_, s)| s.is_none())
            .map(|(_, s)| s);
        for (slot, (accepted, response)) in open.zip(replies) {
            match response {
                _ if accepted => {
                    *slot = Some(RcptOutcome::Delivered {
                        upstream: target.name.clone(),
                        response,
                    })
                }
                Some(response)
                    if response.is_permanent()
                        && !is_throttling(&response)
                        && !is_too_many_recipients(&response) =>
                {
                    *slot = Some(RcptOutcome::Failed(Reason::Reply {
                        upstream: target.name.clone(),
                        response,
                    }));
                }
                Some(response) => {
                    self.last_transient = Some(Reason::Reply {
                        upstream: target.name.clone(),
                        response,
                    })
                }
                None => {}
            }
        }
    }

    /// The outcome of the recipients no upstream settled.
    fn leftover(&mut self) -> RcptOutcome {
        if let Some(reason) = self.last_transient.take() {
            return RcptOutcome::Deferred(reason);
        }
        let Some((_, first)) = self.unsuitable.first() else {
            return RcptOutcome::Deferred(Reason::Text("no upstream is available".into()));
        };
        // Every upstream that answered lacked what the message needs.
        // The first upstream's reason names the status (the most preferred one).
        let (code, status) = first.status();
        let each: Vec<String> = self
            .unsuitable
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        RcptOutcome::Failed(Reason::Local {
            code,
            status,
            text: format!("no upstream can take this message: {}", each.join("; ")),
        })
    }

    /// The report of the walk over `targets`.
    fn finish(mut self, targets: &[&Upstream]) -> Report {
        let leftover = self.leftover();
        let deferred = self.status.iter().any(|(_, s)| s.is_none())
            && !matches!(leftover, RcptOutcome::Failed(_));
        Report {
            attempted: self.attempted,
            held_until: self.held_until,
            breakers_open_until: if deferred {
                breakers_open_until(targets)
            } else {
                None
            },
            waiting_for_upstream: deferred && !self.answered && self.held_until.is_none(),
            failed_attempts: self.failed_attempts,
            recipients: self
                .status
                .into_iter()
                .map(|(a, s)| (a, s.unwrap_or_else(|| leftover.clone())))
                .collect(),
        }
    }
}

/// When every target is an SMTP upstream with an open breaker, the earliest time one
/// of them admits a probe.
fn breakers_open_until(targets: &[&Upstream]) -> Option<SystemTime> {
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    let mut earliest: Option<Instant> = None;
    for target in targets {
        let UpstreamKind::Smtp(up) = &target.kind else {
            return None;
        };
        let at = up.breaker.next_admission()?;
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    earliest.map(|at| now_wall + at.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::maildir::Maildir;
    use rand::SeedableRng;

    fn target(name: &str, priority: i32, weight: u32, dir: &std::path::Path) -> Upstream {
        Upstream {
            name: name.into(),
            priority,
            weight,
            sender: None,
            kind: UpstreamKind::Maildir(Maildir::open(&dir.join(name), "h").unwrap()),
        }
    }

    #[test]
    fn orders_by_priority_then_weight() {
        let dir = tempfile::tempdir().unwrap();
        let targets = vec![
            target("backup", 10, 1, dir.path()),
            target("heavy", 0, 9, dir.path()),
            target("light", 0, 1, dir.path()),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut heavy_first = 0;
        for _ in 0..1000 {
            let names: Vec<&str> = order(&targets, &mut rng)
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            assert_eq!(names[2], "backup");
            if names[0] == "heavy" {
                heavy_first += 1;
            }
        }
        // Expect 90 %; allow wide statistical slack.
        assert!(
            (820..=970).contains(&heavy_first),
            "heavy first {heavy_first} times of 1000"
        );
    }
}
